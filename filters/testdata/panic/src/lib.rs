//! `test_panic`: on request headers, if `:path` starts with `/panic`, calls
//! `panic!("test_panic: boom")`. The SDK's panic hook first logs the panic message at Critical
//! through `proxy_log` (`panicked at ...:\ntest_panic: boom`); the panic then aborts, i.e. the
//! module traps (`unreachable`). Other requests get request header `x-panic-filter: alive` and
//! Continue.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PanicRoot) });
}}

struct PanicRoot;

impl Context for PanicRoot {}

impl RootContext for PanicRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let _ = self.get_plugin_configuration();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Panic))
    }
}

struct Panic;

impl Context for Panic {}

impl HttpContext for Panic {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.starts_with("/panic") {
            panic!("test_panic: boom");
        }
        self.add_http_request_header("x-panic-filter", "alive");
        Action::Continue
    }
}
