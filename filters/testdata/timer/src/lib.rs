//! `test_timer`: a root-context tick counter published through shared data.
//!
//! Plugin configuration: empty, or a JSON object `{"period_ms": N}` (default 50; an integer in
//! `0..=u32::MAX`; unknown keys ignored). Anything else is rejected.
//!
//! - `on_configure`: `set_tick_period(period_ms)`.
//! - `on_tick`: increment the root's own counter, store it (decimal) in shared data key
//!   `test_timer.ticks` with a plain (cas 0) write, log at info `tick N`. Each VM has its own
//!   counter, so with several workers the stored value is whichever VM wrote last.
//! - response headers: add `x-ticks: <value of test_timer.ticks, or 0 if missing>`; Continue.

use std::time::Duration;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

#[allow(dead_code)]
#[path = "../../../common/flat_json.rs"]
mod flat_json;

const KEY: &str = "test_timer.ticks";
const DEFAULT_PERIOD_MS: u64 = 50;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TimerRoot { ticks: 0 }) });
}}

fn parse_period(config: &[u8]) -> Result<u64, String> {
    if config.is_empty() {
        return Ok(DEFAULT_PERIOD_MS);
    }
    let mut period = DEFAULT_PERIOD_MS;
    for (key, value) in flat_json::parse_object(config)? {
        if key == "period_ms" {
            match value.as_u64() {
                Some(ms) if ms <= u64::from(u32::MAX) => period = ms,
                _ => return Err("\"period_ms\" must be an integer in 0..=4294967295".to_string()),
            }
        }
    }
    Ok(period)
}

struct TimerRoot {
    ticks: u64,
}

impl Context for TimerRoot {}

impl RootContext for TimerRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match parse_period(&config) {
            Ok(ms) => {
                self.set_tick_period(Duration::from_millis(ms));
                true
            }
            Err(why) => {
                warn!("test_timer: rejecting configuration: {why}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let _ = self.set_shared_data(KEY, Some(self.ticks.to_string().as_bytes()), None);
        info!("tick {}", self.ticks);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Timer))
    }
}

struct Timer;

impl Context for Timer {}

impl HttpContext for Timer {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let ticks = match self.get_shared_data(KEY) {
            (Some(value), _) => String::from_utf8_lossy(&value).into_owned(),
            (None, _) => "0".to_string(),
        };
        self.add_http_response_header("x-ticks", &ticks);
        Action::Continue
    }
}
