//! `test_logs`: exercises logging, WASI stdio, the environment and the clock.
//!
//! The SDK log level is set to Trace, so every line reaches the host's `proxy_log` (the host does
//! its own level filtering). On request headers, with `<path>` the request's `:path` (empty if
//! absent), it:
//! - logs `test_logs trace <path>`, `... debug <path>`, `... info <path>`, `... warn <path>`,
//!   `... error <path>` (through the `log` crate) and `test_logs critical <path>` (directly
//!   through `proxy_log`, the `log` crate has no critical level), one line per level;
//! - writes `test_logs stdout <path>\n` to stdout and `test_logs stderr <path>\n` to stderr (WASI
//!   `fd_write` on fds 1 and 2);
//! - logs at info `test_logs env TEST_LOGS_ENV=<value>` (`(unset)` if the variable is not in
//!   the module's WASI environment; WASI `environ_sizes_get`/`environ_get`);
//! - logs at info `test_logs time <ns>` with `proxy_get_current_time_nanoseconds`;
//! - Continues.

use std::time::UNIX_EPOCH;

use log::{debug, error, info, trace, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// The environment variable reported by `test_logs env`.
const ENV_VAR: &str = "TEST_LOGS_ENV";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(LogsRoot) });
}}

struct LogsRoot;

impl Context for LogsRoot {}

impl RootContext for LogsRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let _ = self.get_plugin_configuration();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Logs))
    }
}

struct Logs;

impl Context for Logs {}

impl HttpContext for Logs {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        trace!("test_logs trace {path}");
        debug!("test_logs debug {path}");
        info!("test_logs info {path}");
        warn!("test_logs warn {path}");
        error!("test_logs error {path}");
        let _ = hostcalls::log(LogLevel::Critical, &format!("test_logs critical {path}"));

        println!("test_logs stdout {path}");
        eprintln!("test_logs stderr {path}");

        let env = std::env::var(ENV_VAR).unwrap_or_else(|_| "(unset)".to_string());
        info!("test_logs env {ENV_VAR}={env}");

        let nanos = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        info!("test_logs time {nanos}");
        Action::Continue
    }
}
