//! `test_callout`: an HTTP-callout authorizer.
//!
//! Plugin configuration (JSON object): `{"cluster": "<cluster name>", "timeout_ms": N}`;
//! `cluster` is required, `timeout_ms` defaults to 1000 and must be an integer in `0..=u32::MAX`.
//! Anything else (empty, not an object, wrong types) is rejected; unknown keys are ignored.
//!
//! - request headers: `dispatch_http_call(cluster, [(":method","GET"), (":path","/check"),
//!   (":authority","authz"), ("x-user", <request x-user or "">)], no body, no trailers,
//!   timeout)` and Pause. If the dispatch fails: local reply 500 `callout dispatch failed\n`.
//! - call response with `:status` `200`: add request header `x-authz: <response body>` (lossy
//!   UTF-8, surrounding ASCII whitespace trimmed) and resume the request.
//! - call response with another `:status`: local reply 403 with header
//!   `x-authz-status: <status>` (`none` if the status is empty), body `callout denied\n`.
//! - call response without `:status` (timeout, connect failure, ...): local reply 503
//!   `callout failed\n`.
//!
//! With `"grpc_service"` and `"grpc_method"` set, a unary gRPC call instead:
//! `dispatch_grpc_call(cluster, service, method, [("x-tenant", <x-user>)], message, timeout)`
//! where the message is a protobuf message whose string field 1 is the request's `x-user`
//! (at most 127 bytes), and Pause; a refused dispatch is the local reply 500 above. With
//! `"grpc_cancel": true` the call is cancelled at once and the request goes on with header
//! `x-grpc-cancelled: 1`.
//! - status OK: add request headers `x-authz: <hex of the response message>` and
//!   `x-served-by: <initial metadata x-served-by, or "">`, and resume the request.
//! - another status: local reply 403 with header `x-grpc-status: <code>`, body
//!   `<code> <status message>\n`.
//!
//! With `"grpc_stream": true` as well, a gRPC stream instead: `open_grpc_stream` with the same
//! metadata, one message (field 1 the `x-user`, field 2 the count 3, and field 3 the request's
//! `x-fail-after` when it is a number) sent with `end_stream`, and Pause. As it ends, the
//! request resumes with headers `x-stream-replies: <hex of each message, comma-separated>`,
//! `x-stream-metadata: <initial metadata x-stream>`, `x-stream-total: <trailing metadata
//! x-total>`, `x-stream-status: <status>` and `x-stream-message: <status message>`.

use std::time::Duration;

use log::warn;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

#[allow(dead_code)]
#[path = "../../../common/flat_json.rs"]
mod flat_json;

const DEFAULT_TIMEOUT_MS: u64 = 1000;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(CalloutRoot { config: None })
    });
}}

#[derive(Clone)]
struct Config {
    cluster: String,
    timeout: Duration,
    /// (service, method) of a unary gRPC call, instead of the HTTP callout.
    grpc: Option<(String, String)>,
    grpc_cancel: bool,
    /// A gRPC stream to (service, method) instead of a call.
    grpc_stream: bool,
}

fn parse_config(config: &[u8]) -> Result<Config, String> {
    let mut cluster = None;
    let mut timeout_ms = DEFAULT_TIMEOUT_MS;
    let (mut service, mut method, mut grpc_cancel, mut grpc_stream) = (None, None, false, false);
    for (key, value) in flat_json::parse_object(config)? {
        match key.as_str() {
            "grpc_service" | "grpc_method" => match value {
                flat_json::Value::Str(s) if !s.is_empty() => {
                    if key == "grpc_service" {
                        service = Some(s);
                    } else {
                        method = Some(s);
                    }
                }
                _ => return Err(format!("\"{key}\" must be a non-empty string")),
            },
            "grpc_cancel" | "grpc_stream" => match value {
                flat_json::Value::Bool(b) if key == "grpc_cancel" => grpc_cancel = b,
                flat_json::Value::Bool(b) => grpc_stream = b,
                _ => return Err(format!("\"{key}\" must be a boolean")),
            },
            "cluster" => match value {
                flat_json::Value::Str(s) if !s.is_empty() => cluster = Some(s),
                _ => return Err("\"cluster\" must be a non-empty string".to_string()),
            },
            "timeout_ms" => match value.as_u64() {
                Some(ms) if ms <= u64::from(u32::MAX) => timeout_ms = ms,
                _ => return Err("\"timeout_ms\" must be an integer in 0..=4294967295".to_string()),
            },
            _ => {}
        }
    }
    let grpc = match (service, method) {
        (Some(service), Some(method)) => Some((service, method)),
        (None, None) => None,
        _ => return Err("\"grpc_service\" and \"grpc_method\" go together".to_string()),
    };
    Ok(Config {
        cluster: cluster.ok_or_else(|| "\"cluster\" is required".to_string())?,
        timeout: Duration::from_millis(timeout_ms),
        grpc,
        grpc_cancel,
        grpc_stream,
    })
}

struct CalloutRoot {
    config: Option<Config>,
}

impl Context for CalloutRoot {}

impl RootContext for CalloutRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match parse_config(&config) {
            Ok(config) => {
                self.config = Some(config);
                true
            }
            Err(why) => {
                warn!("test_callout: rejecting configuration: {why}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Callout {
            config: self.config.clone(),
            stream: StreamSeen::default(),
        }))
    }
}

struct Callout {
    /// `None` only if the host created a stream without a successful `on_configure`.
    config: Option<Config>,
    stream: StreamSeen,
}

/// What a gRPC stream delivered so far.
#[derive(Default)]
struct StreamSeen {
    replies: Vec<String>,
    metadata: String,
    total: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Context for Callout {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        if status_code == 0 {
            let message = self.get_grpc_call_response_body(0, response_size).unwrap_or_default();
            let hex = hex(&message);
            let served_by = self
                .get_grpc_stream_initial_metadata_value("x-served-by")
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            self.add_http_request_header("x-authz", &hex);
            self.add_http_request_header("x-served-by", &served_by);
            self.resume_http_request();
        } else {
            let (code, message) = self.get_grpc_status();
            let body = format!("{code} {}\n", message.unwrap_or_default());
            let code = code.to_string();
            self.send_http_response(403, vec![("x-grpc-status", &code)], Some(body.as_bytes()));
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token_id: u32, _num_elements: u32) {
        let value = self
            .get_grpc_stream_initial_metadata_value("x-stream")
            .unwrap_or_default();
        self.stream.metadata = String::from_utf8_lossy(&value).into_owned();
    }

    fn on_grpc_stream_message(&mut self, _token_id: u32, message_size: usize) {
        let message = self.get_grpc_stream_message(0, message_size).unwrap_or_default();
        self.stream.replies.push(hex(&message));
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token_id: u32, _num_elements: u32) {
        let value = self
            .get_grpc_stream_trailing_metadata_value("x-total")
            .unwrap_or_default();
        self.stream.total = String::from_utf8_lossy(&value).into_owned();
    }

    fn on_grpc_stream_close(&mut self, _token_id: u32, status_code: u32) {
        let replies = self.stream.replies.join(",");
        let (metadata, total) = (self.stream.metadata.clone(), self.stream.total.clone());
        self.add_http_request_header("x-stream-replies", &replies);
        self.add_http_request_header("x-stream-metadata", &metadata);
        self.add_http_request_header("x-stream-total", &total);
        self.add_http_request_header("x-stream-status", &status_code.to_string());
        let (_, message) = self.get_grpc_status();
        self.add_http_request_header("x-stream-message", &message.unwrap_or_default());
        self.resume_http_request();
    }

    fn on_http_call_response(&mut self, _token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        match self.get_http_call_response_header(":status") {
            None => {
                self.send_http_response(503, vec![], Some(b"callout failed\n"));
            }
            Some(status) if status == "200" => {
                let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
                let body = String::from_utf8_lossy(&body);
                self.add_http_request_header("x-authz", body.trim_ascii());
                self.resume_http_request();
            }
            Some(status) => {
                let status = if status.is_empty() { "none" } else { &status };
                self.send_http_response(403, vec![("x-authz-status", status)], Some(b"callout denied\n"));
            }
        }
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = &self.config else {
            self.send_http_response(500, vec![], Some(b"callout dispatch failed\n"));
            return Action::Pause;
        };
        let user = self.get_http_request_header("x-user").unwrap_or_default();
        if let Some((service, method)) = &config.grpc {
            // A protobuf message: field 1, length-delimited.
            let mut message = vec![0x0a, user.len().min(127) as u8];
            message.extend_from_slice(&user.as_bytes()[..user.len().min(127)]);
            let metadata = vec![("x-tenant", user.as_bytes())];
            if config.grpc_stream {
                message.extend_from_slice(&[0x10, 3]);
                let fail_after = self
                    .get_http_request_header("x-fail-after")
                    .and_then(|v| v.parse::<u8>().ok());
                if let Some(n) = fail_after.filter(|n| *n < 128) {
                    message.extend_from_slice(&[0x18, n]);
                }
                match self.open_grpc_stream(&config.cluster, service, method, metadata) {
                    Ok(token) => self.send_grpc_stream_message(token, Some(&message), true),
                    Err(status) => {
                        warn!("test_callout: gRPC stream to {:?} failed: {status:?}", config.cluster);
                        self.send_http_response(500, vec![], Some(b"callout dispatch failed\n"));
                    }
                }
                return Action::Pause;
            }
            match self.dispatch_grpc_call(
                &config.cluster,
                service,
                method,
                metadata,
                Some(&message),
                config.timeout,
            ) {
                Ok(token) if config.grpc_cancel => {
                    self.cancel_grpc_call(token);
                    self.add_http_request_header("x-grpc-cancelled", "1");
                    return Action::Continue;
                }
                Ok(_) => {}
                Err(status) => {
                    warn!("test_callout: gRPC dispatch to {:?} failed: {status:?}", config.cluster);
                    self.send_http_response(500, vec![], Some(b"callout dispatch failed\n"));
                }
            }
            return Action::Pause;
        }
        let dispatched = self.dispatch_http_call(
            &config.cluster,
            vec![
                (":method", "GET"),
                (":path", "/check"),
                (":authority", "authz"),
                ("x-user", &user),
            ],
            None,
            vec![],
            config.timeout,
        );
        if let Err(status) = dispatched {
            warn!("test_callout: dispatch to {:?} failed: {status:?}", config.cluster);
            self.send_http_response(500, vec![], Some(b"callout dispatch failed\n"));
        }
        Action::Pause
    }
}
