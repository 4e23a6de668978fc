//! `bench_rw`: one header read and one header write per request, for measuring the cost of a
//! minimal real filter (`proxy-core/benches/wasm_filter.rs`). Request headers: reads `x-user`
//! and sets request header `x-seen: <x-user value, or "-" if absent>`; Continue. Every other
//! callback is the SDK default (Continue), and the module declares that it uses only the request
//! headers phase, so Weft calls no other. The plugin configuration is ignored (not even read).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

/// Weft's capability declaration, written by hand (a filter built with `weft-sdk` uses
/// `weft_sdk::capabilities!`): only the request headers phase is called.
#[used]
#[cfg_attr(target_arch = "wasm32", unsafe(link_section = "weft.capabilities"))]
static WEFT_CAPABILITIES: [u8; 15] = *b"request_headers";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ReadSetRoot) });
}}

struct ReadSetRoot;

impl Context for ReadSetRoot {}

impl RootContext for ReadSetRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ReadSet))
    }
}

struct ReadSet;

impl Context for ReadSet {}

impl HttpContext for ReadSet {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let user = self.get_http_request_header("x-user");
        self.set_http_request_header("x-seen", Some(user.as_deref().unwrap_or("-")));
        Action::Continue
    }
}
