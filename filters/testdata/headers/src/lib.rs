//! `test_headers`: adds and removes request and response headers.
//!
//! Plugin configuration: empty, or a JSON object whose values are all strings. Its `"name"`
//! (default `"headers"`) is the value of the headers this filter adds. The configuration is
//! rejected (`on_configure` returns false) when it is non-empty and not such an object, when it
//! has a key `"reject"`, or when `"name"` contains CR, LF or NUL (not a valid header value).
//!
//! - request headers: add `x-wasm-request: <name>`, remove `x-remove-me`; Continue.
//! - response headers: add `x-wasm-response: <name>`, remove `x-upstream-secret`; Continue.

use log::warn;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

#[allow(dead_code)]
#[path = "../../../common/flat_json.rs"]
mod flat_json;

const DEFAULT_NAME: &str = "headers";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(HeadersRoot { name: DEFAULT_NAME.to_string() })
    });
}}

struct HeadersRoot {
    name: String,
}

/// Returns the configured name, or why the configuration is rejected.
fn parse_config(config: &[u8]) -> Result<String, String> {
    if config.is_empty() {
        return Ok(DEFAULT_NAME.to_string());
    }
    let members = flat_json::parse_object(config)?;
    let mut name = DEFAULT_NAME.to_string();
    for (key, value) in members {
        let flat_json::Value::Str(value) = value else {
            return Err(format!("value of {key:?} is not a string"));
        };
        if key == "reject" {
            return Err("configuration has key \"reject\"".to_string());
        }
        if key == "name" {
            if value.contains(['\r', '\n', '\0']) {
                return Err("\"name\" is not a valid header value".to_string());
            }
            name = value;
        }
    }
    Ok(name)
}

impl Context for HeadersRoot {}

impl RootContext for HeadersRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match parse_config(&config) {
            Ok(name) => {
                self.name = name;
                true
            }
            Err(why) => {
                warn!("test_headers: rejecting configuration: {why}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers {
            name: self.name.clone(),
        }))
    }
}

struct Headers {
    name: String,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_request_header("x-wasm-request", &self.name);
        self.remove_http_request_header("x-remove-me");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-wasm-response", &self.name);
        self.remove_http_response_header("x-upstream-secret");
        Action::Continue
    }
}
