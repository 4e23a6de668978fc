//! Weft's retry filter: Istio's `HTTPRetry` policy (Envoy's router retries) as a proxy-wasm
//! filter on Weft's `weft.retry` extension.
//!
//! - In `on_http_request_headers` it notes whether the proxy can replay the request (no body,
//!   or a `Content-Length` within `max_replay_bytes`), sets the per-try timeout
//!   (`weft.set_upstream`) and counts the request as active for the retry budget.
//! - In `on_http_response_headers`, which the proxy runs for every try (failed tries arrive as
//!   local replies with `x-weft-reason`), it classifies the outcome ([`policy`]), and when
//!   `retry_on` matches, retries remain, the request is replayable and the budget allows, asks
//!   for another try after a jittered back-off (`weft.retry`). The proxy prefers endpoints not
//!   tried yet.
//! - `on_log` / `on_done` release what the request held in the budget.
//!
//! Metrics: `retry_attempts_total` (retries asked for), `retry_budget_exhausted_total` (retries
//! the budget refused). See `README.md` for the configuration and deviations from Envoy.

use std::cell::Cell;
use std::rc::Rc;

use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::weft::{self, Upstream};
use weft_sdk::{Action, Context, Filter, HttpContext, LogLevel, MetricType};

pub mod budget;
pub mod config;
pub mod policy;

use budget::{Refused, SharedData};
use config::Config;
use policy::Outcome;

/// The response header carrying the number of tries, when
/// `include_attempt_count_in_response` is on.
pub const ATTEMPT_COUNT_HEADER: &str = "x-weft-attempt-count";

/// One request's retry state.
pub struct Retry {
    config: Rc<Config>,
    /// The proxy keeps the request's body (or it has none): it can send it again.
    replayable: bool,
    /// Retries asked for so far.
    retries: u32,
    /// Shared-data keys of the request's budget (by route).
    keys: Option<Keys>,
    /// The request is counted in the active requests.
    counted_active: bool,
    /// A retry of this request is counted in the retries in flight, until its response.
    retry_in_flight: bool,
}

/// Shared-data keys of one route's budget counters.
struct Keys {
    active: String,
    retries: String,
}

impl Keys {
    fn for_route(route: &str) -> Self {
        Keys {
            active: format!("retry.active.{route}"),
            retries: format!("retry.retries_active.{route}"),
        }
    }
}

impl Filter for Retry {
    type Config = Config;

    fn new(config: Rc<Config>, _context_id: u32) -> Self {
        Retry {
            config,
            replayable: false,
            retries: 0,
            keys: None,
            counted_active: false,
            retry_in_flight: false,
        }
    }
}

impl Retry {
    /// Decides on one try's outcome; `true` when a retry was asked for.
    fn maybe_retry(&mut self, outcome: Outcome) -> bool {
        let config = self.config.clone();
        if self.retries >= config.max_retries() || !policy::retriable(&config, outcome) {
            return false;
        }
        if !self.replayable {
            log(
                LogLevel::Debug,
                "retry: not retried, the request body was not kept for a replay",
            );
            return false;
        }
        if let (Some(budget), Some(keys)) = (&config.budget, &self.keys) {
            match budget::acquire(&Host, &keys.active, &keys.retries, |active| budget.limit(active)) {
                Ok(_) => self.retry_in_flight = true,
                Err(refused) => {
                    metrics::count(metrics::BUDGET_EXHAUSTED);
                    if refused == Refused::Contended {
                        log(LogLevel::Warn, "retry: budget counters contended; retry refused");
                    }
                    return false;
                }
            }
        }
        let wait = policy::backoff_ms(
            config.backoff.base_ms,
            config.backoff.max(),
            self.retries,
            weft_sdk::rng::next_u64(),
        );
        match weft::retry_after(wait) {
            Ok(()) => {
                self.retries += 1;
                metrics::count(metrics::ATTEMPTS);
                true
            }
            Err(status) => {
                log(LogLevel::Warn, &format!("retry: weft.retry failed: {status:?}"));
                self.end_retry();
                false
            }
        }
    }

    /// The retry in flight got its answer (or the request ended).
    fn end_retry(&mut self) {
        if std::mem::take(&mut self.retry_in_flight)
            && let Some(keys) = &self.keys
        {
            let _ = budget::decrement(&Host, &keys.retries);
        }
    }

    /// Releases what the request holds in the budget (once).
    fn release(&mut self) {
        self.end_retry();
        if std::mem::take(&mut self.counted_active)
            && let Some(keys) = &self.keys
        {
            let _ = budget::decrement(&Host, &keys.active);
        }
    }
}

impl Context for Retry {
    fn on_done(&mut self) -> bool {
        self.release();
        true
    }
}

impl HttpContext for Retry {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let config = self.config.clone();
        let upgrade = self.get_http_request_header("upgrade").is_some();
        let length = self.get_http_request_header("content-length");
        self.replayable = policy::replayable(end_of_stream, length.as_deref(), upgrade, config.max_replay_bytes);
        if let Some(ms) = config.per_try_timeout_ms {
            let upstream = Upstream {
                per_try_timeout_ms: Some(ms),
                ..Upstream::default()
            };
            if let Err(status) = weft::set_upstream(&upstream) {
                log(LogLevel::Warn, &format!("retry: weft.set_upstream failed: {status:?}"));
            }
        }
        if config.budget.is_some() && config.max_retries() > 0 {
            let route = weft::string_property(&["route_name"]).unwrap_or_default();
            let keys = Keys::for_route(&route);
            self.counted_active = budget::increment(&Host, &keys.active).is_ok();
            self.keys = Some(keys);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // This is the answer to the retry in flight, if any.
        self.end_retry();
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let reason = self.get_http_response_header("x-weft-reason");
        let grpc_status = self.get_http_response_header("grpc-status");
        let ratelimited = self.get_http_response_header("x-envoy-ratelimited").is_some();
        let from_upstream = weft::string_property(&["upstream", "address"]).is_some();
        let outcome = Outcome::classify(
            status,
            reason.as_deref(),
            grpc_status.as_deref(),
            ratelimited,
            from_upstream,
        );
        if self.maybe_retry(outcome) {
            // This response is dropped; the next try's comes through here again.
            return Action::Continue;
        }
        if self.config.include_attempt_count_in_response {
            let tries = (self.retries + 1).to_string();
            self.set_http_response_header(ATTEMPT_COUNT_HEADER, Some(&tries));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.release();
    }
}

/// The host's shared data.
struct Host;

impl SharedData for Host {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// The filter's counters, defined once per VM.
mod metrics {
    use super::*;

    pub(crate) const ATTEMPTS: usize = 0;
    pub(crate) const BUDGET_EXHAUSTED: usize = 1;
    const NAMES: [&str; 2] = ["retry_attempts_total", "retry_budget_exhausted_total"];

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

weft_sdk::filter!(Retry, capabilities: [request_headers, response_headers, log, retry, properties]);
