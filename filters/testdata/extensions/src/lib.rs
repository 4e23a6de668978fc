//! `test_extensions`: exercises Weft's host extensions.
//!
//! - Request header `x-pick-cluster: NAME` → `weft.set_upstream {"cluster": NAME}`;
//!   `x-pick-version: V` → `weft.set_upstream {"subset": {"version": V}}`.
//! - Request header `x-retry-5xx: N` → on a 5xx response, `weft.retry` up to N times.
//! - Every response gets `x-attempts: <responses seen>` and
//!   `x-extension-status: <last extension call result: ok | error N>`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Extensions {
            retries_left: 0,
            attempts: 0,
            status: "none".to_owned(),
        }))
    }
}

struct Extensions {
    retries_left: u32,
    attempts: u32,
    status: String,
}

impl Extensions {
    fn call(&mut self, name: &str, args: &str) {
        self.status = match hostcalls::call_foreign_function(name, Some(args.as_bytes())) {
            Ok(_) => "ok".to_owned(),
            Err(status) => format!("error {}", status as u32),
        };
    }
}

impl Context for Extensions {}

impl HttpContext for Extensions {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(cluster) = self.get_http_request_header("x-pick-cluster") {
            self.call("weft.set_upstream", &format!("{{\"cluster\":\"{cluster}\"}}"));
        }
        if let Some(version) = self.get_http_request_header("x-pick-version") {
            self.call(
                "weft.set_upstream",
                &format!("{{\"subset\":{{\"version\":\"{version}\"}}}}"),
            );
        }
        self.retries_left = self
            .get_http_request_header("x-retry-5xx")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.attempts += 1;
        let status = self.get_http_response_header(":status").unwrap_or_default();
        if status.starts_with('5') && self.retries_left > 0 {
            self.retries_left -= 1;
            self.call("weft.retry", "{}");
        }
        self.set_http_response_header("x-attempts", Some(&self.attempts.to_string()));
        let status = self.status.clone();
        self.set_http_response_header("x-extension-status", Some(&status));
        Action::Continue
    }
}
