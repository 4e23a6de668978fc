//! `test_deny`: answers requests whose `:path` starts with `/forbidden` with a local reply
//! `403`, header `x-denied-by: test_deny`, body `denied by wasm\n`, and pauses the request.
//! Other requests Continue untouched. The plugin configuration is ignored.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(DenyRoot) });
}}

struct DenyRoot;

impl Context for DenyRoot {}

impl RootContext for DenyRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // Read (and ignore) the configuration, so the host's buffer path is exercised.
        let _ = self.get_plugin_configuration();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Deny))
    }
}

struct Deny;

impl Context for Deny {}

impl HttpContext for Deny {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.starts_with("/forbidden") {
            self.send_http_response(403, vec![("x-denied-by", "test_deny")], Some(b"denied by wasm\n"));
            return Action::Pause;
        }
        Action::Continue
    }
}
