//! `test_loop`: on request headers, if `:path` starts with `/loop`, spins forever (a loop the
//! optimizer cannot remove; only the host's epoch/fuel interruption ends it). Other requests get
//! request header `x-loop-filter: alive` and Continue.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(LoopRoot) });
}}

struct LoopRoot;

impl Context for LoopRoot {}

impl RootContext for LoopRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let _ = self.get_plugin_configuration();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Spin))
    }
}

struct Spin;

impl Context for Spin {}

/// Never returns: `black_box` makes every iteration observable to the optimizer.
#[inline(never)]
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        core::hint::black_box(&mut x);
        x = x.wrapping_add(1);
    }
}

impl HttpContext for Spin {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.starts_with("/loop") {
            spin();
        }
        self.add_http_request_header("x-loop-filter", "alive");
        Action::Continue
    }
}
