//! Weft's `telemetry` filter: Istio's standard HTTP metrics and a JSON access log.
//!
//! At the end of every request (the log phase) the filter computes Istio's standard labels
//! ([`labels`]) from the proxy's properties and node metadata, and records
//!
//! - `istio_requests_total` (counter),
//! - `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`
//!   (histograms),
//!
//! one series per label set, so the proxy's `/stats/prometheus` serves what Istio's
//! dashboards query. With `access_log` on it also writes one JSON line per request
//! ([`access_log`]) to the proxy's log at info level. Configuration: [`Config`]; behaviour and
//! deviations from Istio: the crate's README.
//!
//! The label and log logic is pure and unit-tested on the host; this module only gathers
//! properties and talks to the host.

#![warn(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

pub mod access_log;
pub mod config;
pub mod labels;
pub mod series;
pub mod wire;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::{Action, Context, Filter, HttpContext, LogLevel, MetricType};

pub use config::{Config, Reporter};

use access_log::{AccessLogEntry, rfc3339_millis};
use labels::{NodeInfo, RequestFacts, Workload};
use series::{Lookup, MAX_SERIES, SeriesCache};

/// The request counter.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
/// The request duration histogram (milliseconds).
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
/// The request body size histogram (bytes).
pub const REQUEST_BYTES: &str = "istio_request_bytes";
/// The response body size histogram (bytes).
pub const RESPONSE_BYTES: &str = "istio_response_bytes";

/// The request property another filter of the chain may set (with `proxy_set_property`) to
/// report Envoy response flags for the request, e.g. `FI` for an injected fault or `URX` when
/// retries ran out; it takes precedence over the flags the filter derives itself.
pub const RESPONSE_FLAGS_PROPERTY: [&str; 2] = ["weft", "response_flags"];

/// The properties the log phase reads, in the order `on_log` takes them apart.
const LOG_PROPERTIES: [&[&str]; 10] = [
    &["connection", "mtls"],
    &["request", "host"],
    &["weft", "cluster"],
    &["response", "code"],
    &["response", "code_details"],
    &RESPONSE_FLAGS_PROPERTY,
    &["source", "principal"],
    &["request", "duration"],
    &["request", "size"],
    &["response", "size"],
];

/// The metric ids of one label set.
#[derive(Debug, Clone, Copy)]
struct SeriesIds {
    requests: u32,
    duration: u32,
    request_bytes: u32,
    response_bytes: u32,
}

thread_local! {
    // One VM per worker, single-threaded: these are per VM.
    static LOCAL_WORKLOAD: RefCell<Option<Rc<Workload>>> = const { RefCell::new(None) };
    static SERIES: RefCell<SeriesCache<SeriesIds>> = RefCell::new(SeriesCache::new(MAX_SERIES));
    static FACTS: RefCell<FactsCache> = RefCell::new(FactsCache::default());
}

/// Everything a request's label set depends on besides the configuration and the local
/// workload: requests with equal facts have the same series. Looking these up spares a
/// request computing 25 labels and rendering and hashing a label string of several hundred
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FactsKey {
    host: String,
    cluster: Option<String>,
    grpc: bool,
    response_code: u16,
    grpc_status: Option<String>,
    code_details: String,
    flags_override: Option<String>,
    mtls: bool,
    peer_principal: Option<String>,
}

impl FactsKey {
    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            host: &self.host,
            cluster: self.cluster.as_deref(),
            grpc: self.grpc,
            response_code: self.response_code,
            grpc_status: self.grpc_status.as_deref(),
            code_details: &self.code_details,
            flags_override: self.flags_override.as_deref(),
            mtls: self.mtls,
            peer_principal: self.peer_principal.as_deref(),
        }
    }
}

/// Most request facts one VM remembers the ids of; past it, requests with new facts compute
/// their labels every time (their series are still bounded by [`MAX_SERIES`]).
const MAX_FACTS: usize = 4 * MAX_SERIES;

/// Metric ids by request facts, for one configuration (a new configuration starts afresh: the
/// reporter and extra labels are part of the series).
#[derive(Default)]
struct FactsCache {
    config: Option<Rc<Config>>,
    ids: HashMap<FactsKey, SeriesIds>,
}

impl FactsCache {
    fn get(&self, config: &Rc<Config>, key: &FactsKey) -> Option<SeriesIds> {
        match &self.config {
            Some(cached) if Rc::ptr_eq(cached, config) => self.ids.get(key).copied(),
            _ => None,
        }
    }

    fn insert(&mut self, config: &Rc<Config>, key: &FactsKey, ids: SeriesIds) {
        if !self.config.as_ref().is_some_and(|cached| Rc::ptr_eq(cached, config)) {
            self.config = Some(config.clone());
            self.ids.clear();
        }
        if self.ids.len() < MAX_FACTS {
            self.ids.insert(key.clone(), ids);
        }
    }
}

/// One request's telemetry: what it must remember from the header phases until the log phase
/// (headers are not visible there).
pub struct Telemetry {
    config: Rc<Config>,
    grpc: bool,
    grpc_status: Option<String>,
    user_agent: Option<String>,
    x_forwarded_for: Option<String>,
    request_body_bytes: u64,
}

impl Filter for Telemetry {
    type Config = Config;

    fn new(config: Rc<Config>, _context_id: u32) -> Self {
        Self {
            config,
            grpc: false,
            grpc_status: None,
            user_agent: None,
            x_forwarded_for: None,
            request_body_bytes: 0,
        }
    }
}

impl Context for Telemetry {}

impl HttpContext for Telemetry {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.grpc = request_header(self, "content-type").is_some_and(|ct| labels::is_grpc(&ct));
        if self.config.access_log {
            self.user_agent = request_header(self, "user-agent");
            self.x_forwarded_for = request_header(self, "x-forwarded-for");
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        // Nothing is buffered, so each call brings only the new chunk.
        self.request_body_bytes = self.request_body_bytes.saturating_add(body_size as u64);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.grpc {
            // Set on trailers-only responses (errors, mostly); otherwise it comes in trailers.
            self.grpc_status = self
                .get_http_response_header_bytes("grpc-status")
                .map(|v| String::from_utf8_lossy(&v).into_owned());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.config.disable_metrics && !self.config.access_log {
            return;
        }
        // Every property in one hostcall (`weft.properties`; one call each on other hosts).
        let [
            mtls,
            host,
            cluster,
            code,
            details,
            flags,
            principal,
            duration,
            request_size,
            response_size,
        ] = <[Option<Vec<u8>>; LOG_PROPERTIES.len()]>::try_from(weft_sdk::weft::properties(&LOG_PROPERTIES))
            .unwrap_or_default();
        let text = |value: Option<Vec<u8>>| value.map(|b| String::from_utf8_lossy(&b).into_owned());
        let int = |value: Option<Vec<u8>>| value.and_then(|b| wire::decode_int(&b));
        let unsigned = |value: Option<Vec<u8>>| int(value).map_or(0, |v| u64::try_from(v).unwrap_or(0));
        let mtls = mtls.and_then(|b| wire::decode_bool(&b)).unwrap_or(false);
        let key = FactsKey {
            host: text(host).unwrap_or_default(),
            cluster: text(cluster),
            grpc: self.grpc,
            response_code: int(code).and_then(|c| u16::try_from(c).ok()).unwrap_or(0),
            grpc_status: self.grpc_status.clone(),
            code_details: text(details).unwrap_or_default(),
            flags_override: text(flags),
            mtls,
            // Only a mutual TLS peer has a principal.
            peer_principal: if mtls { text(principal) } else { None },
        };
        let facts = key.facts();
        let duration_ms = unsigned(duration) / 1_000_000;
        // `request.size` is the declared Content-Length; counting covers chunked bodies.
        let bytes_received = self.request_body_bytes.max(unsigned(request_size));
        let bytes_sent = unsigned(response_size);

        if !self.config.disable_metrics {
            self.record_metrics(&key, duration_ms, bytes_received, bytes_sent);
        }
        if self.config.access_log {
            self.write_access_log(&facts, duration_ms, bytes_received, bytes_sent);
        }
    }
}

impl Telemetry {
    fn record_metrics(&self, key: &FactsKey, duration_ms: u64, bytes_received: u64, bytes_sent: u64) {
        let cached = FACTS.with(|cache| cache.borrow().get(&self.config, key));
        let ids = match cached {
            Some(ids) => ids,
            None => {
                let ids = self.series_ids(&key.facts());
                FACTS.with(|cache| cache.borrow_mut().insert(&self.config, key, ids));
                ids
            }
        };
        // Id 0 (a name the host refused) answers NotFound: nothing to do about it per request.
        let _ = hostcalls::increment_metric(ids.requests, 1);
        let _ = hostcalls::record_metric(ids.duration, duration_ms);
        let _ = hostcalls::record_metric(ids.request_bytes, bytes_received);
        let _ = hostcalls::record_metric(ids.response_bytes, bytes_sent);
    }

    /// The metric ids of the label set of `facts`: computes the labels, renders the series
    /// and looks it up (defining it the first time).
    fn series_ids(&self, facts: &RequestFacts<'_>) -> SeriesIds {
        let config = &self.config;
        let local = local_workload();
        let series = labels::compute(config.reporter, &local, facts, true).series(&config.extra_labels);
        let fallback = || labels::compute(config.reporter, &local, facts, false).series(&config.extra_labels);
        let lookup = SERIES.with(|cache| cache.borrow_mut().lookup(series, fallback, define_series));
        if let Lookup::Overflow { first: true, .. } = lookup {
            log(
                LogLevel::Warn,
                &format!(
                    "telemetry: more than {MAX_SERIES} label sets on this worker; new ones are recorded \
                     without the request host (destination_service from the cluster)"
                ),
            );
        }
        lookup.ids()
    }

    fn write_access_log(&self, facts: &RequestFacts<'_>, duration_ms: u64, bytes_received: u64, bytes_sent: u64) {
        let method = string_property(&["request", "method"]);
        let path = string_property(&["request", "path"]);
        let protocol = string_property(&["request", "protocol"]);
        let request_id = string_property(&["request", "id"]);
        let upstream_host = string_property(&["upstream", "address"]);
        let route_name = string_property(&["weft", "route_name"]);
        let remote = string_property(&["source", "address"]);
        let local = string_property(&["destination", "address"]);
        let entry = AccessLogEntry {
            start_time: int_property(&["request", "time"]).map(rfc3339_millis),
            method: non_empty(&method),
            path: non_empty(&path),
            protocol: non_empty(&protocol),
            response_code: facts.response_code,
            response_flags: labels::response_flags(facts.code_details, facts.response_code, facts.flags_override),
            response_code_details: Some(facts.code_details).filter(|d| !d.is_empty()),
            bytes_received,
            bytes_sent,
            duration_ms,
            upstream_host: non_empty(&upstream_host),
            upstream_cluster: facts.cluster.filter(|c| !c.is_empty()),
            x_forwarded_for: non_empty(&self.x_forwarded_for),
            user_agent: non_empty(&self.user_agent),
            request_id: non_empty(&request_id),
            authority: Some(facts.host).filter(|h| !h.is_empty()),
            route_name: non_empty(&route_name),
            downstream_remote_address: non_empty(&remote),
            downstream_local_address: non_empty(&local),
        };
        log(LogLevel::Info, &entry.to_json_line());
    }
}

/// Defines the four metrics of one label set (idempotent on the host).
fn define_series(series: &str) -> SeriesIds {
    let define = |kind, name: &str| hostcalls::define_metric(kind, &format!("{name}{{{series}}}")).unwrap_or(0);
    SeriesIds {
        requests: define(MetricType::Counter, REQUESTS_TOTAL),
        duration: define(MetricType::Histogram, REQUEST_DURATION),
        request_bytes: define(MetricType::Histogram, REQUEST_BYTES),
        response_bytes: define(MetricType::Histogram, RESPONSE_BYTES),
    }
}

/// The local workload, read from node metadata once per VM.
fn local_workload() -> Rc<Workload> {
    LOCAL_WORKLOAD.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| {
                let metadata = |key: &str| string_property(&["node", "metadata", key]);
                let node = NodeInfo {
                    workload_name: metadata("WORKLOAD_NAME"),
                    namespace: metadata("NAMESPACE"),
                    cluster_id: metadata("CLUSTER_ID"),
                    labels: property(&["node", "metadata", "LABELS"])
                        .and_then(|b| wire::decode_map(&b))
                        .unwrap_or_default(),
                };
                Rc::new(Workload::local(&node))
            })
            .clone()
    })
}

/// A request header, lossily decoded (the SDK's `get_http_request_header` traps on values
/// that are not UTF-8).
fn request_header(ctx: &Telemetry, name: &str) -> Option<String> {
    ctx.get_http_request_header_bytes(name)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

fn string_property(path: &[&str]) -> Option<String> {
    property(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn int_property(path: &[&str]) -> Option<i64> {
    property(path).and_then(|b| wire::decode_int(&b))
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

weft_sdk::filter!(
    Telemetry,
    capabilities: [request_headers, request_body, response_headers, log, properties]
);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: u16) -> FactsKey {
        FactsKey {
            host: "reviews:9080".to_owned(),
            cluster: Some("outbound|9080||reviews".to_owned()),
            grpc: false,
            response_code: code,
            grpc_status: None,
            code_details: "via_upstream".to_owned(),
            flags_override: None,
            mtls: true,
            peer_principal: None,
        }
    }

    fn ids(n: u32) -> SeriesIds {
        SeriesIds {
            requests: n,
            duration: n,
            request_bytes: n,
            response_bytes: n,
        }
    }

    #[test]
    fn facts_map_to_ids_per_configuration() {
        let config =
            || Rc::new(serde_json::from_str::<Config>(r#"{"reporter": "destination"}"#).expect("a configuration"));
        let (first, second) = (config(), config());
        let mut cache = FactsCache::default();
        cache.insert(&first, &key(200), ids(1));
        cache.insert(&first, &key(503), ids(2));
        assert_eq!(cache.get(&first, &key(200)).map(|i| i.requests), Some(1));
        assert_eq!(cache.get(&first, &key(503)).map(|i| i.requests), Some(2));
        assert!(cache.get(&first, &key(404)).is_none());
        // Another configuration (another reporter, other extra labels) has other series.
        assert!(cache.get(&second, &key(200)).is_none());
        cache.insert(&second, &key(200), ids(3));
        assert_eq!(cache.get(&second, &key(200)).map(|i| i.requests), Some(3));
        assert!(
            cache.get(&first, &key(503)).is_none(),
            "the old configuration's ids are gone"
        );
    }
}
