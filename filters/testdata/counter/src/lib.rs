//! `test_counter`: a request counter in shared data (shared by every worker's VM) plus metrics.
//!
//! - `on_configure` defines the metrics (counter `test_counter_requests_total`, gauge
//!   `test_counter_last`, histogram `test_counter_body_bytes`) and, if the shared-data key
//!   `test_counter.hits` does not exist yet, creates it as `0` (so the first requests of two
//!   workers cannot both take the unconditional cas-0 write of a missing key).
//! - request headers: compare-and-swap increment of `test_counter.hits` (a decimal `u64`;
//!   missing or unparsable counts as 0), retrying on `CasMismatch` (at most 10 000 tries);
//!   increment the counter metric by 1, set the gauge to the new count, record 1 in the
//!   histogram; Continue.
//! - response headers: add `x-hits: <new count>` (`error` if the CAS loop gave up); Continue.

use log::error;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

const KEY: &str = "test_counter.hits";
const MAX_CAS_TRIES: u32 = 10_000;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(CounterRoot { metrics: None })
    });
}}

#[derive(Clone, Copy)]
struct Metrics {
    requests: u32,
    last: u32,
    body_bytes: u32,
}

struct CounterRoot {
    metrics: Option<Metrics>,
}

impl Context for CounterRoot {}

impl RootContext for CounterRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let _ = self.get_plugin_configuration();
        let define = |kind, name| hostcalls::define_metric(kind, name).ok();
        self.metrics = match (
            define(MetricType::Counter, "test_counter_requests_total"),
            define(MetricType::Gauge, "test_counter_last"),
            define(MetricType::Histogram, "test_counter_body_bytes"),
        ) {
            (Some(requests), Some(last), Some(body_bytes)) => Some(Metrics {
                requests,
                last,
                body_bytes,
            }),
            _ => None,
        };
        if let (None, _) = self.get_shared_data(KEY) {
            // Create-if-missing. Two VMs configuring at once both write 0, which is harmless;
            // counts are lost only if another VM served requests between our get and this set.
            let _ = self.set_shared_data(KEY, Some(b"0"), None);
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Counter {
            metrics: self.metrics,
            hits: None,
        }))
    }
}

struct Counter {
    metrics: Option<Metrics>,
    hits: Option<u64>,
}

impl Counter {
    fn increment(&self) -> Option<u64> {
        for _ in 0..MAX_CAS_TRIES {
            let (value, cas) = self.get_shared_data(KEY);
            let current = value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let new = current.wrapping_add(1);
            match self.set_shared_data(KEY, Some(new.to_string().as_bytes()), cas) {
                Ok(()) => return Some(new),
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    error!("test_counter: set_shared_data failed: {status:?}");
                    return None;
                }
            }
        }
        error!("test_counter: gave up after {MAX_CAS_TRIES} CAS mismatches");
        None
    }
}

impl Context for Counter {}

impl HttpContext for Counter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.hits = self.increment();
        if let Some(m) = self.metrics {
            let _ = hostcalls::increment_metric(m.requests, 1);
            if let Some(hits) = self.hits {
                let _ = hostcalls::record_metric(m.last, hits);
            }
            let _ = hostcalls::record_metric(m.body_bytes, 1);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.hits {
            Some(hits) => self.add_http_response_header("x-hits", &hits.to_string()),
            None => self.add_http_response_header("x-hits", "error"),
        }
        Action::Continue
    }
}
