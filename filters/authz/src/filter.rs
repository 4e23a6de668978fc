//! The proxy-wasm glue: one [`AuthzFilter`] per request.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::{Action, Context, Filter, HttpContext, LogLevel, MetricType, weft};

use crate::config::Config;
use crate::eval::{Request, evaluate};

/// Istio's (Envoy RBAC's) denial body.
const DENIED_BODY: &[u8] = b"RBAC: access denied";

thread_local! {
    /// Metric ids (defined on first use): allowed, denied, audited.
    static METRICS: Cell<Option<[u32; 3]>> = const { Cell::new(None) };
}

#[derive(Clone, Copy)]
enum Metric {
    Allowed = 0,
    Denied = 1,
    Audited = 2,
}

fn count(metric: Metric) {
    let ids = METRICS.with(|cell| {
        if let Some(ids) = cell.get() {
            return ids;
        }
        let names = ["authz_allowed_total", "authz_denied_total", "authz_audited_total"];
        let ids = names.map(|name| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0));
        cell.set(Some(ids));
        ids
    });
    let _ = hostcalls::increment_metric(ids[metric as usize], 1);
}

/// The authz filter of one request.
pub struct AuthzFilter {
    config: Rc<Config>,
}

impl Filter for AuthzFilter {
    type Config = Config;

    fn new(config: Rc<Config>, _context_id: u32) -> Self {
        AuthzFilter { config }
    }
}

impl Context for AuthzFilter {}

impl AuthzFilter {
    fn request(&self) -> Request {
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in self.get_http_request_headers_bytes() {
            headers.push((name, String::from_utf8_lossy(&value).into_owned()));
        }
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let address = |path: &[&str]| {
            weft::string_property(path)
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.ip())
        };
        let claims = self
            .get_property(vec!["weft", "jwt", "claims"])
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        Request {
            method: pseudo(":method"),
            path: pseudo(":path"),
            host: pseudo(":authority"),
            source_ip: address(&["source", "address"]),
            destination_ip: address(&["destination", "address"]),
            destination_port: weft::int_property(&["destination", "port"]).and_then(|p| u16::try_from(p).ok()),
            source_principal: weft::peer_principal(),
            request_principal: weft::string_property(&["request", "auth", "principal"]).filter(|p| !p.is_empty()),
            claims,
            sni: weft::string_property(&["connection", "requested_server_name"]).filter(|s| !s.is_empty()),
            headers: headers.into_iter().filter(|(n, _)| !n.starts_with(':')).collect(),
        }
    }
}

impl HttpContext for AuthzFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let request = self.request();
        let decision = evaluate(&self.config, &request);
        for policy in &decision.audited {
            count(Metric::Audited);
            let message = format!(
                "authz: audit: policy {policy} matched {} {}",
                request.method, request.path
            );
            let _ = hostcalls::log(LogLevel::Info, &message);
        }
        if decision.allowed {
            count(Metric::Allowed);
            return Action::Continue;
        }
        count(Metric::Denied);
        let message = format!("authz: {} {}: {}", request.method, request.path, decision.reason);
        let _ = hostcalls::log(LogLevel::Debug, &message);
        self.send_http_response(403, vec![], Some(DENIED_BODY));
        Action::Pause
    }
}

weft_sdk::filter!(AuthzFilter, capabilities: [request_headers, properties]);
