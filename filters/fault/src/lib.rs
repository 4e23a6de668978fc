//! Weft's fault filter: Istio's `HTTPFaultInjection` (Envoy's fault filter) as a proxy-wasm
//! filter.
//!
//! For a request that matches the configured conditions, `delay` and `abort` are drawn
//! independently against their percentages. As in Envoy, a delay comes first and an abort
//! after it:
//!
//! - delay only: `weft.delay(ms)` and `Pause`; the proxy resumes the request when the time is
//!   up;
//! - abort only: a local reply with the status and body `fault filter abort`; the request never
//!   reaches the upstream;
//! - both: the delay, then the abort from the request's first body phase (the proxy resumes a
//!   delayed request without calling the filter back, but a request whose headers phase paused
//!   always gets a body phase, even without a body: see `README.md` and `docs/abi.md`).
//!
//! Metrics: `fault_delays_injected_total`, `fault_aborts_injected_total`.

use std::cell::Cell;
use std::rc::Rc;

use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::weft;
use weft_sdk::{Action, Context, Filter, HttpContext, LogLevel, MetricType};

pub mod config;
pub mod logic;

use config::Config;
use logic::Request;

/// The body of an abort reply (Envoy's).
pub const ABORT_BODY: &str = "fault filter abort";

/// One request's faults.
pub struct Fault {
    config: Rc<Config>,
    /// An abort chosen together with a delay: sent once the delay is over.
    abort_after_delay: Option<u16>,
}

impl Filter for Fault {
    type Config = Config;

    fn new(config: Rc<Config>, _context_id: u32) -> Self {
        Fault {
            config,
            abort_after_delay: None,
        }
    }
}

impl Fault {
    fn request(&self) -> Request {
        let mut request = Request::default();
        for (name, value) in self.get_http_request_headers() {
            match name.as_str() {
                ":path" => request.path = value,
                ":method" => request.method = value,
                ":authority" => request.authority = value,
                _ if name.starts_with(':') => {}
                _ => request.headers.push((name, value)),
            }
        }
        request
    }

    fn abort(&self, status: u16) {
        metrics::count(metrics::ABORTS);
        if let Err(e) = hostcalls::send_http_response(u32::from(status), Vec::new(), Some(ABORT_BODY.as_bytes())) {
            log(LogLevel::Warn, &format!("fault: local reply failed: {e:?}"));
        }
    }
}

impl Context for Fault {}

impl HttpContext for Fault {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let config = self.config.clone();
        if !logic::applies(&config, &self.request()) {
            return Action::Continue;
        }
        let decision = logic::decide(&config, weft_sdk::rng::next_u64(), weft_sdk::rng::next_u64());
        if let Some(ms) = decision.delay_ms {
            match weft::delay(ms) {
                Ok(()) => {
                    metrics::count(metrics::DELAYS);
                    self.abort_after_delay = decision.abort;
                    return Action::Pause;
                }
                // Not on Weft: no delay, but an abort still applies.
                Err(status) => log(LogLevel::Warn, &format!("fault: weft.delay failed: {status:?}")),
            }
        }
        if let Some(status) = decision.abort {
            self.abort(status);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(status) = self.abort_after_delay.take() {
            self.abort(status);
            return Action::Pause;
        }
        Action::Continue
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// The filter's counters, defined once per VM.
mod metrics {
    use super::*;

    pub(crate) const DELAYS: usize = 0;
    pub(crate) const ABORTS: usize = 1;
    const NAMES: [&str; 2] = ["fault_delays_injected_total", "fault_aborts_injected_total"];

    thread_local! {
        static IDS: Cell<Option<[u32; 2]>> = const { Cell::new(None) };
    }

    /// Adds one to counter `which`.
    pub(crate) fn count(which: usize) {
        let ids = IDS.with(|ids| {
            if ids.get().is_none() {
                let mut defined = [0; 2];
                for (id, name) in defined.iter_mut().zip(NAMES) {
                    *id = hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
                }
                ids.set(Some(defined));
            }
            ids.get()
        });
        if let Some(id) = ids.and_then(|ids| ids.get(which).copied()) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

weft_sdk::filter!(Fault, capabilities: [request_headers, request_body]);
