//! `test_body`: buffers and rewrites bodies.
//!
//! - request body: Pause until `end_of_stream`, then replace the whole body (`body_size` bytes,
//!   as reported by the end-of-stream callback) with its ASCII-uppercased copy.
//! - response headers: remove `content-length` (the response body grows); Continue.
//! - response body: Pause until `end_of_stream`, then replace the whole body with the original
//!   bytes followed by `"\n-- rewritten by wasm\n"` (a response its headers end has no body
//!   phase, so it stays empty).
//!
//! The host must report, in the end-of-stream body callback, the size of everything buffered so
//! far (Envoy's semantics for a paused body), since this filter reads and replaces
//! `[0, body_size)`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

const SUFFIX: &[u8] = b"\n-- rewritten by wasm\n";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BodyRoot) });
}}

struct BodyRoot;

impl Context for BodyRoot {}

impl RootContext for BodyRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let _ = self.get_plugin_configuration();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Body))
    }
}

struct Body;

impl Context for Body {}

impl HttpContext for Body {
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let upper = body.to_ascii_uppercase();
        self.set_http_request_body(0, body_size, &upper);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.remove_http_response_header("content-length");
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let mut body = self.get_http_response_body(0, body_size).unwrap_or_default();
        body.extend_from_slice(SUFFIX);
        self.set_http_response_body(0, body_size, &body);
        Action::Continue
    }
}
