//! `test_mark`: stamps its plugin configuration on requests and responses (for hot-swap tests).
//!
//! Plugin configuration: a plain string (not JSON), e.g. `v1`, used verbatim. Rejected when
//! empty/absent, not UTF-8, or containing CR, LF or NUL (not a valid header value).
//!
//! - request headers: add request header `x-mark: <config>`; Continue.
//! - response headers: add response header `x-mark: <config>`; Continue.

use log::warn;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(MarkRoot { mark: String::new() })
    });
}}

fn parse_mark(config: Vec<u8>) -> Result<String, &'static str> {
    let mark = String::from_utf8(config).map_err(|_| "configuration is not UTF-8")?;
    if mark.is_empty() {
        return Err("configuration is empty");
    }
    if mark.contains(['\r', '\n', '\0']) {
        return Err("configuration is not a valid header value");
    }
    Ok(mark)
}

struct MarkRoot {
    mark: String,
}

impl Context for MarkRoot {}

impl RootContext for MarkRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match parse_mark(self.get_plugin_configuration().unwrap_or_default()) {
            Ok(mark) => {
                self.mark = mark;
                true
            }
            Err(why) => {
                warn!("test_mark: rejecting configuration: {why}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Mark {
            mark: self.mark.clone(),
        }))
    }
}

struct Mark {
    mark: String,
}

impl Context for Mark {}

impl HttpContext for Mark {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_request_header("x-mark", &self.mark);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-mark", &self.mark);
        Action::Continue
    }
}
