//! `test_alloc`: on request headers, if `:path` starts with `/alloc`, allocates without bound:
//! 1 MiB chunks filled with `0xA5` are pushed into a global that is never freed, until an
//! allocation fails. Rust's allocation-failure handler then writes `memory allocation of N
//! bytes failed` to stderr (WASI `fd_write` on fd 2) and aborts, i.e. the module traps. (A host
//! whose memory limiter traps on `memory.grow` instead of failing it traps earlier, inside the
//! allocator.) Other requests get request header `x-alloc-filter: alive` and Continue.

use std::sync::Mutex;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

const CHUNK: usize = 1 << 20;

/// Everything allocated by `/alloc` requests; never freed.
static HOG: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AllocRoot) });
}}

struct AllocRoot;

impl Context for AllocRoot {}

impl RootContext for AllocRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let _ = self.get_plugin_configuration();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Alloc))
    }
}

struct Alloc;

impl Context for Alloc {}

/// Never returns: grows `HOG` until an allocation fails (which aborts).
#[inline(never)]
fn hog() -> ! {
    let mut hog = HOG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let chunk = core::hint::black_box(vec![0xA5u8; CHUNK]);
        hog.push(chunk);
        core::hint::black_box(&mut *hog);
    }
}

impl HttpContext for Alloc {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.starts_with("/alloc") {
            hog();
        }
        self.add_http_request_header("x-alloc-filter", "alive");
        Action::Continue
    }
}
