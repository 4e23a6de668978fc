//! Driving one filter in-process, without sockets: the real Wasm host with synthetic request
//! and response heads. The filter-author test harness (`weft-filter-test`) and the
//! per-request micro-benchmarks build on this.
//!
//! Two levels:
//! - [`HarnessStream`]: one request's filter instance, phase by phase, exactly as the chain
//!   calls it (the benchmarks use this through [`FilterHarness::wasm`]).
//! - [`FilterHarness::exchange`]: a whole request/response exchange as the proxy runs it for
//!   one filter (pauses resumed, body buffering, local replies through the response phases,
//!   retries, log), for a harness made with [`FilterHarness::builder`]. Such a harness also
//!   answers the filter's HTTP callouts with a [`CalloutHandler`] instead of a cluster, keeps
//!   the guest's log lines ([`FilterHarness::logs`]) and reads its metrics
//!   ([`FilterHarness::metric`]).
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use weft_proxy::harness::FilterHarness;
//! let harness = FilterHarness::wasm("my_filter.wasm", "{\"name\": \"x\"}")?;
//! let mut stream = harness.stream();
//! let mut request = http::Request::get("/").header("host", "svc").body(())?.into_parts().0;
//! let action = stream.request_headers(&mut request, true);
//! # let _ = action; Ok(()) }
//! ```

use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode};

use crate::callout::{CalloutError, CalloutMock, CalloutRequest, CalloutResponse, Callouts};
use crate::filter::{
    BodyAction, FilterAction, FilterContext, FilterError, FilterFactory, Head, HttpFilter, LogRecord, UpstreamInfo,
};
pub use crate::filter::{LocalReply, UpstreamChoice};
use crate::reply::{REASON_HEADER, Reason};
use crate::wasm::{LogSink, NodeInfo, WasmHost, WasmSettings};
pub use weft_api::FailurePolicy;

/// Most times the proxy sends one request again for its filters (as `http.rs`).
const MAX_FILTER_RETRIES: usize = 5;

/// Why a harness could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The module file could not be read.
    #[error("cannot read {file}")]
    Read {
        /// The file.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The filter refused to load or start (compile error, no ABI marker, config rejected).
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// As [`HarnessError::Filter`], for a harness made with [`FilterHarness::builder`]: with
    /// what the guest logged while it started (often why it rejected its configuration).
    #[error("{error}")]
    Rejected {
        /// The proxy's reason, as it would refuse the snapshot.
        error: FilterError,
        /// The guest's log lines until then.
        logs: Vec<GuestLog>,
    },
    /// The harness's own runtime (for callouts and timers) could not be created.
    #[error("cannot create the harness runtime")]
    Runtime(#[source] std::io::Error),
}

/// A guest log level (`proxy_log`'s; WASI stdout is logged at `Info`, stderr at `Warn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// 0.
    Trace,
    /// 1.
    Debug,
    /// 2.
    Info,
    /// 3.
    Warn,
    /// 4.
    Error,
    /// 5.
    Critical,
}

impl LogLevel {
    fn from_raw(level: i32) -> Self {
        match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            5 => LogLevel::Critical,
            // The host logs any other value at error level.
            _ => LogLevel::Error,
        }
    }
}

/// One line the guest logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLog {
    /// Its level.
    pub level: LogLevel,
    /// The message (for WASI stdio: one write, trailing newlines removed).
    pub message: String,
}

/// A callout a filter made (`proxy_http_call`, or `proxy_grpc_call` as the HTTP/2 request it
/// travels as), as a [`CalloutHandler`] sees it.
#[derive(Debug, Clone)]
pub struct HarnessCallout {
    /// The cluster it is for.
    pub cluster: String,
    /// Pseudo-headers (`:method`, `:path`, `:authority`, ...) and headers, names lowercased,
    /// in the order the filter gave them.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The request body.
    pub body: Bytes,
    /// The timeout the filter asked for.
    pub timeout: Duration,
}

/// A callout's response, from a [`CalloutHandler`].
#[derive(Debug, Clone, Default)]
pub struct HarnessCalloutResponse {
    /// The status (the guest reads it as `:status`).
    pub status: u16,
    /// Headers (names are lowercased for the guest).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Bytes,
    /// Trailers.
    pub trailers: Vec<(String, Vec<u8>)>,
}

/// Answers a harness's callouts in place of the proxy's clusters and pools.
pub trait CalloutHandler: Send + Sync {
    /// Whether `cluster` exists. A callout to any other cluster is refused at dispatch, as
    /// the proxy refuses a cluster that is not in its snapshot (`BadArgument`).
    fn knows(&self, cluster: &str) -> bool;

    /// The response; `None` for none at all (the guest sees what a timeout or a connect
    /// failure gives: a response without headers or body).
    fn call(&self, callout: HarnessCallout) -> Option<HarnessCalloutResponse>;
}

/// Bridges a [`CalloutHandler`] to the host's callouts; no handler knows no cluster.
struct Mock(Option<Arc<dyn CalloutHandler>>);

impl CalloutMock for Mock {
    fn knows(&self, cluster: &str) -> bool {
        self.0.as_ref().is_some_and(|h| h.knows(cluster))
    }

    fn call(&self, request: CalloutRequest) -> Result<CalloutResponse, CalloutError> {
        let handler = self.0.as_ref().ok_or(CalloutError::NoResponse)?;
        let callout = HarnessCallout {
            cluster: request.cluster,
            headers: request.headers,
            body: request.body,
            timeout: request.timeout,
        };
        let reply = handler.call(callout).ok_or(CalloutError::NoResponse)?;
        let lower = |pairs: Vec<(String, Vec<u8>)>| {
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect::<Vec<_>>()
        };
        let mut headers = vec![(":status".to_owned(), reply.status.to_string().into_bytes())];
        headers.extend(lower(reply.headers));
        Ok(CalloutResponse {
            headers,
            body: reply.body,
            trailers: lower(reply.trailers),
        })
    }
}

/// Builds a [`FilterHarness`] with everything a filter test may set.
pub struct HarnessBuilder {
    file: PathBuf,
    name: Option<String>,
    plugin_config: String,
    vm_config: String,
    settings: WasmSettings,
    failure_policy: FailurePolicy,
    node: NodeInfo,
    context: FilterContext,
    upstream: UpstreamInfo,
    callouts: Option<Arc<dyn CalloutHandler>>,
    max_buffered_body_bytes: usize,
}

impl HarnessBuilder {
    /// The filter's name (plugin name, `filter` label of its metrics). Default: the file stem.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The plugin configuration, bytes as given (`on_configure`). Default: empty.
    pub fn plugin_config(mut self, config: impl Into<String>) -> Self {
        self.plugin_config = config.into();
        self
    }

    /// The VM configuration, bytes as given (`on_vm_start`). Default: empty.
    pub fn vm_config(mut self, config: impl Into<String>) -> Self {
        self.vm_config = config.into();
        self
    }

    /// Call deadline, memory limit and module cache. Default: the proxy's defaults.
    pub fn settings(mut self, settings: WasmSettings) -> Self {
        self.settings = settings;
        self
    }

    /// What a failing filter means for requests. Default: `fail_closed`.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// The node id (`node.id`). Default: empty.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node.id = id.into();
        self
    }

    /// A node metadata entry (`node.metadata.<key>`).
    pub fn node_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node.metadata.insert(key.into(), value.into());
        self
    }

    /// A node label (`node.metadata.LABELS`).
    pub fn node_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node.labels.insert(key.into(), value.into());
        self
    }

    /// The downstream peer (`source.address`, `source.port`). Default: `127.0.0.1:40000`.
    pub fn source(mut self, address: SocketAddr) -> Self {
        self.context.source = address;
        self
    }

    /// The local address the request arrived on (`destination.*`). Default: `127.0.0.1:15001`.
    pub fn destination(mut self, address: SocketAddr) -> Self {
        self.context.destination = address;
        self
    }

    /// The listener's name (`weft.listener`). Default: `harness`.
    pub fn listener(mut self, name: &str) -> Self {
        self.context.listener = Arc::from(name);
        self
    }

    /// The route the request matched (`route_name`, the log record's route). Default: none.
    pub fn route(mut self, name: Option<&str>) -> Self {
        self.context.route = name.map(Arc::from);
        self
    }

    /// Whether the downstream connection is mutual TLS (`connection.mtls`). Default: false.
    pub fn mtls(mut self, mtls: bool) -> Self {
        self.context.mtls = mtls;
        self
    }

    /// The downstream peer's SPIFFE ID (`source.principal`); implies mutual TLS. Default:
    /// none.
    pub fn peer_principal(mut self, principal: &str) -> Self {
        self.context.mtls = true;
        self.context.peer_principal = Some(Arc::from(principal));
        self
    }

    /// Where responses come from (`cluster_name`, `upstream.address` in the response
    /// phases). Default: cluster `upstream`, endpoint `127.0.0.1:8080`. A cluster the filter
    /// chose with `set_upstream` replaces this one.
    pub fn upstream(mut self, cluster: &str, endpoint: SocketAddr) -> Self {
        self.upstream = UpstreamInfo {
            cluster: Arc::from(cluster),
            endpoint,
        };
        self
    }

    /// Answers the filter's HTTP callouts. Without one, every callout is refused at dispatch
    /// as one to an unknown cluster.
    pub fn callouts(mut self, handler: Arc<dyn CalloutHandler>) -> Self {
        self.callouts = Some(handler);
        self
    }

    /// Most body bytes a buffering body phase may hold (then 413 for requests, a reset for
    /// responses). Default: the snapshot default (`limits.max_buffered_body_bytes`).
    pub fn max_buffered_body_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_body_bytes = bytes;
        self
    }

    /// Loads the module and starts the filter as the proxy does when it loads a snapshot
    /// (`on_vm_start` and `on_configure` must accept their configurations).
    pub fn build(mut self) -> Result<FilterHarness, HarnessError> {
        let logs: LogSink = Arc::default();
        let driver = Driver::new(Some(logs.clone())).map_err(HarnessError::Runtime)?;
        let mock = Arc::new(Mock(self.callouts.take()));
        self.context.callouts = Some(Arc::new(Callouts::mock(mock)));
        let loaded = {
            let _capture = crate::wasm::capture_logs(logs.clone());
            self.load()
        };
        match loaded {
            Ok((factory, host)) => Ok(FilterHarness {
                factory,
                context: self.context,
                driver: Some(Arc::new(driver)),
                upstream: self.upstream,
                max_buffered_body_bytes: self.max_buffered_body_bytes,
                host,
            }),
            Err(HarnessError::Filter(error)) => Err(HarnessError::Rejected {
                error,
                logs: drain(&logs),
            }),
            Err(other) => Err(other),
        }
    }

    fn load(&self) -> Result<(Arc<dyn FilterFactory>, Arc<WasmHost>), HarnessError> {
        let file = self.file.display().to_string();
        let bytes = std::fs::read(&self.file).map_err(|source| HarnessError::Read {
            file: file.clone(),
            source,
        })?;
        let name = self.name.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map_or_else(|| "filter".to_owned(), |s| s.to_string_lossy().into_owned())
        });
        let config = weft_api::FilterConfig {
            name,
            native: None,
            wasm: Some(weft_api::WasmModule {
                file,
                url: String::new(),
                sha256: crate::wasm::sha256_hex(&bytes),
                vm_config: serde_yaml::Value::String(self.vm_config.clone()),
                root_id: String::new(),
                vm_id: None,
            }),
            config: serde_yaml::Value::String(self.plugin_config.clone()),
            failure_policy: self.failure_policy,
        };
        let host = Arc::new(WasmHost::new(self.settings.clone(), self.node.clone()));
        let chain = crate::filter::FilterChain::build(std::slice::from_ref(&config), &host, 1)?;
        let factory = chain.factories().first().cloned().ok_or_else(|| FilterError::Wasm {
            name: config.name.clone(),
            message: "no filter built".to_owned(),
        })?;
        Ok((factory, host))
    }
}

fn drain(logs: &LogSink) -> Vec<GuestLog> {
    std::mem::take(&mut *logs.lock().unwrap_or_else(|p| p.into_inner()))
        .into_iter()
        .map(|(level, message)| GuestLog {
            level: LogLevel::from_raw(level),
            message,
        })
        .collect()
}

/// What phases run inside, for a builder-made harness (and an exchange): a runtime for
/// callouts and timers, and the log sink.
struct Driver {
    runtime: tokio::runtime::Runtime,
    logs: Option<LogSink>,
}

/// Inside the harness's runtime and log capture, for one call.
struct Scope<'a> {
    _enter: tokio::runtime::EnterGuard<'a>,
    _logs: Option<crate::wasm::LogCapture>,
}

impl Driver {
    fn new(logs: Option<LogSink>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        Ok(Self { runtime, logs })
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            _enter: self.runtime.enter(),
            _logs: self.logs.clone().map(crate::wasm::capture_logs),
        }
    }
}

fn scope(driver: Option<&Arc<Driver>>) -> Option<Scope<'_>> {
    driver.map(|d| d.scope())
}

/// One filter, loaded on the real host.
pub struct FilterHarness {
    factory: Arc<dyn FilterFactory>,
    context: FilterContext,
    driver: Option<Arc<Driver>>,
    upstream: UpstreamInfo,
    max_buffered_body_bytes: usize,
    // Keeps the runtime (engine, epoch ticker) alive as long as the filter.
    host: Arc<WasmHost>,
}

impl FilterHarness {
    /// Loads a proxy-wasm module with a plugin configuration (bytes as given), with default
    /// limits and `fail_closed`. Phases run as the chain calls them, with nothing around
    /// them (no callouts, timers or log capture): see [`FilterHarness::builder`] for those.
    pub fn wasm(file: impl AsRef<Path>, plugin_config: &str) -> Result<Self, HarnessError> {
        Self::wasm_with(file, plugin_config, WasmSettings::default())
    }

    /// As [`FilterHarness::wasm`], with explicit limits.
    pub fn wasm_with(
        file: impl AsRef<Path>,
        plugin_config: &str,
        settings: WasmSettings,
    ) -> Result<Self, HarnessError> {
        let builder = Self::builder(file).plugin_config(plugin_config).settings(settings);
        let (factory, host) = builder.load()?;
        Ok(Self {
            factory,
            context: builder.context,
            driver: None,
            upstream: builder.upstream,
            max_buffered_body_bytes: builder.max_buffered_body_bytes,
            host,
        })
    }

    /// A harness for `file` with every setting at its default; see [`HarnessBuilder`].
    pub fn builder(file: impl AsRef<Path>) -> HarnessBuilder {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        HarnessBuilder {
            file: file.as_ref().to_path_buf(),
            name: None,
            plugin_config: String::new(),
            vm_config: String::new(),
            // Tests run on busy machines: the wall-clock call deadline is generous by default
            // (set `settings` to test the real 20ms).
            settings: WasmSettings {
                call_deadline: std::time::Duration::from_millis(250),
                ..WasmSettings::default()
            },
            failure_policy: FailurePolicy::FailClosed,
            node: NodeInfo::default(),
            context: FilterContext {
                worker: 0,
                source: addr(40000),
                destination: addr(15001),
                listener: Arc::from("harness"),
                route: None,
                mtls: false,
                peer_principal: None,
                callouts: None,
                worker_context: None,
                properties: None,
            },
            upstream: UpstreamInfo {
                cluster: Arc::from("upstream"),
                endpoint: addr(8080),
            },
            callouts: None,
            max_buffered_body_bytes: weft_api::Limits::default().max_buffered_body_bytes as usize,
        }
    }

    /// A fresh stream (one request's filter instance).
    pub fn stream(&self) -> HarnessStream {
        HarnessStream {
            filter: self.factory.create(&self.context),
            driver: self.driver.clone(),
        }
    }

    /// The guest's log lines since the harness was built or this was last called (empty for
    /// a harness not made with [`FilterHarness::builder`]).
    pub fn logs(&self) -> Vec<GuestLog> {
        self.driver
            .as_ref()
            .and_then(|d| d.logs.as_ref())
            .map(drain)
            .unwrap_or_default()
    }

    /// The guest metrics and the host's counters of the filter, in the Prometheus text
    /// format of the admin `/stats/prometheus`.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        self.host.render(&mut out);
        out
    }

    /// The value of one series of [`FilterHarness::metrics_text`]: `name` or
    /// `name{label="value",...}`, labels in any order. The `filter` label is implied unless
    /// given. Histograms read as `name_count`, `name_sum` and `name_bucket{le="..."}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (name, mut wanted) = parse_series(series.trim())?;
        wanted.sort();
        let text = self.metrics_text();
        text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            let (sample_name, mut labels) = parse_series(sample)?;
            if sample_name != name {
                return None;
            }
            if !wanted.iter().any(|(k, _)| k == "filter") {
                labels.retain(|(k, _)| k != "filter");
            }
            labels.sort();
            (labels == wanted).then(|| value.parse().ok()).flatten()
        })
    }

    /// Runs a whole exchange through a new stream as the proxy runs it for this one filter:
    ///
    /// 1. `request_headers` (end of stream when the body is empty), resumed when it pauses
    ///    (callouts answered by the [`CalloutHandler`], `weft.delay` waited for);
    /// 2. unless it answered: `request_body` over the chunks, buffering as the proxy does
    ///    (over the limit: 413); with no body, no body phase, unless `request_headers` paused
    ///    (then one empty chunk at the end of the stream);
    /// 3. unless a reply: the responses in turn (the upstream's answer to each attempt):
    ///    `response_headers`; a retry the filter asks for (`weft.retry`) is honoured while
    ///    responses remain (at most 5, backoff not waited);
    /// 4. a local reply (from the filter or the failure policy) becomes the response as the
    ///    proxy builds it and goes through `response_headers` unless it came from there;
    /// 5. `response_body` over the chunks, if there are any (a reply or too much buffered
    ///    resets the stream);
    /// 6. `log`.
    ///
    /// The request and response are as given: the proxy's own edits (hop-by-hop headers,
    /// `x-forwarded-*`, `x-request-id`) are not made. With no responses, the upstream
    /// answers `200` without a body. A harness not made with [`FilterHarness::builder`]
    /// offers no callouts and keeps no logs.
    pub fn exchange(&self, request: HarnessRequest, responses: Vec<HarnessResponse>) -> Exchange {
        let start = Instant::now();
        let limit = self.max_buffered_body_bytes;
        let mut stream = self.stream();
        if stream.driver.is_none() {
            stream.driver = Driver::new(None).ok().map(Arc::new);
        }
        let HarnessRequest {
            head: mut request,
            body: request_chunks,
        } = request;
        let mut record = record_for(&request, self.context.route.clone());

        // request_headers, request_body.
        let body_empty = request_chunks.iter().all(Bytes::is_empty);
        let (action, paused) = match stream.request_headers(&mut request, body_empty) {
            FilterAction::Pause => (stream.resume(Head::Request(&mut request)), true),
            other => (other, false),
        };
        let mut reply = match action {
            FilterAction::Reply(reply) => Some(reply),
            _ => None,
        };
        let upstream_choice = stream.take_upstream_choice();
        let mut request_body = Bytes::new();
        // As the proxy does (and Envoy): no body phase for a request its headers ended, unless
        // a filter paused them.
        if reply.is_none() && (!body_empty || paused) {
            stream.settle();
            let (passed, stop) = stream.body_phase(false, request_chunks, limit);
            request_body = passed;
            reply = match stop {
                None => None,
                Some(BodyStop::Reply(reply)) => Some(reply),
                Some(BodyStop::TooLarge) => Some(LocalReply::new(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n")),
            };
        }

        // The upstream's responses, response_headers, retries.
        let forwarded = reply.is_none();
        let mut retries = Vec::new();
        let mut attempts = 0;
        let mut response_phase_done = false;
        let mut upstream_response = HarnessResponse::default();
        if forwarded {
            let cluster = upstream_choice
                .as_ref()
                .and_then(|c| c.cluster.as_deref())
                .map_or_else(|| self.upstream.cluster.clone(), Arc::from);
            let info = UpstreamInfo {
                cluster: cluster.clone(),
                endpoint: self.upstream.endpoint,
            };
            record.cluster = Some(cluster);
            record.upstream = Some(info.endpoint);
            let mut responses = responses.into_iter().peekable();
            loop {
                let mut response = responses.next().unwrap_or_default();
                attempts += 1;
                response.head.extensions.insert(info.clone());
                stream.settle();
                stream.take_retry();
                response_phase_done = true;
                let end = response.body.iter().all(Bytes::is_empty);
                if let FilterAction::Reply(r) = stream.response_headers_resumed(&mut response.head, end) {
                    reply = Some(r);
                    break;
                }
                if let Some(backoff) = stream.take_retry() {
                    retries.push(backoff);
                    if responses.peek().is_some() && retries.len() <= MAX_FILTER_RETRIES {
                        continue;
                    }
                }
                response.head.extensions.remove::<UpstreamInfo>();
                upstream_response = response;
                break;
            }
        }

        // The response the client gets: a local reply goes through response_headers too,
        // unless it came from there; a reply replacing it there is not filtered further.
        let mut local_reply = None;
        let mut filter_body = true;
        let response = match reply {
            None => upstream_response,
            Some(reply) => {
                record.reason = Some(filter_reason(&reply));
                let mut response = reply_response(&reply);
                local_reply = Some(reply);
                if !response_phase_done {
                    stream.settle();
                    let end = response.body.iter().all(Bytes::is_empty);
                    if let FilterAction::Reply(again) = stream.response_headers_resumed(&mut response.head, end) {
                        record.reason = Some(Reason::Filter.as_str());
                        filter_body = false;
                        response = reply_response(&again);
                        local_reply = Some(again);
                    }
                }
                response
            }
        };

        // response_body, log.
        let (response_body, reset) = if filter_body && !response.body.iter().all(Bytes::is_empty) {
            stream.settle();
            let (passed, stop) = stream.body_phase(true, response.body, limit);
            (passed, stop.is_some())
        } else {
            (response.body.concat().into(), false)
        };
        record.status = response.head.status.as_u16();
        record.response_bytes = response_body.len() as u64;
        record.duration = start.elapsed();
        stream.settle();
        stream.log(&record);
        Exchange {
            request,
            request_body,
            forwarded,
            local_reply,
            response: response.head,
            response_body,
            reset,
            upstream_choice,
            retries,
            attempts,
            log: record,
        }
    }
}

fn record_for(request: &http::request::Parts, route: Option<Arc<str>>) -> LogRecord {
    let authority = request
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    LogRecord {
        method: request.method.clone(),
        authority,
        path: request
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        status: 0,
        route,
        cluster: None,
        upstream: None,
        reason: None,
        response_bytes: 0,
        duration: Duration::ZERO,
    }
}

/// The response a filter's reply becomes, as the proxy builds it (`http.rs`).
fn reply_response(reply: &LocalReply) -> HarnessResponse {
    let (mut head, _) = crate::reply::build(reply.status, Reason::Filter, Bytes::new()).into_parts();
    for name in reply.headers.keys() {
        head.headers.remove(name);
    }
    for (name, value) in &reply.headers {
        head.headers.append(name, value.clone());
    }
    HarnessResponse {
        head,
        body: vec![reply.body.clone()],
    }
}

/// The reason a filter's reply is logged under (`http.rs`).
fn filter_reason(reply: &LocalReply) -> &'static str {
    match reply.headers.get(REASON_HEADER).map(HeaderValue::as_bytes) {
        Some(b"filter_failure") => "filter_failure",
        _ => Reason::Filter.as_str(),
    }
}

/// Parses `name` or `name{k="v",...}` (values unescaped).
fn parse_series(series: &str) -> Option<(&str, Vec<(String, String)>)> {
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new()));
    };
    let mut chars = rest.strip_suffix('}')?.chars().peekable();
    let mut labels = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some((name.trim(), labels));
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
}

/// A synthetic request for [`FilterHarness::exchange`].
#[derive(Debug)]
pub struct HarnessRequest {
    /// The head as the proxy received it (`:authority` from the URI, else `Host`).
    pub head: http::request::Parts,
    /// The body in chunks, as they arrive (empty: no body).
    pub body: Vec<Bytes>,
}

/// A synthetic upstream response for [`FilterHarness::exchange`].
#[derive(Debug)]
pub struct HarnessResponse {
    /// The head.
    pub head: http::response::Parts,
    /// The body in chunks (empty: no body).
    pub body: Vec<Bytes>,
}

impl Default for HarnessResponse {
    /// `200`, no headers, no body.
    fn default() -> Self {
        Self {
            head: http::Response::new(()).into_parts().0,
            body: Vec::new(),
        }
    }
}

/// What happened in one [`FilterHarness::exchange`].
#[derive(Debug)]
pub struct Exchange {
    /// The request head after the request phases: what the upstream gets if `forwarded`
    /// (method, URI and `Host` carry the filter's `:method`, `:path`, `:authority` edits).
    pub request: http::request::Parts,
    /// The request body after `request_body` (what passed, up to a reply).
    pub request_body: Bytes,
    /// Whether the request reached the upstream (no local reply in the request phases).
    pub forwarded: bool,
    /// The local reply that made the response, if one did: the filter's, or the host's for a
    /// failed filter (`x-weft-reason: filter_failure`) or a request body over the limit.
    pub local_reply: Option<LocalReply>,
    /// The response head as the client gets it.
    pub response: http::response::Parts,
    /// The response body as the client gets it (up to a reset).
    pub response_body: Bytes,
    /// The response body phase reset the stream (a reply asked for there, or too much
    /// buffered): the client sees the body cut short.
    pub reset: bool,
    /// What the filter asked for with `set_upstream` in `request_headers`.
    pub upstream_choice: Option<UpstreamChoice>,
    /// The backoff of each retry the filter asked for (`weft.retry`), honoured or not.
    pub retries: Vec<Duration>,
    /// Upstream responses that went through `response_headers`.
    pub attempts: usize,
    /// The record the log phase got.
    pub log: LogRecord,
}

/// Why a body phase stopped the stream.
enum BodyStop {
    TooLarge,
    Reply(LocalReply),
}

/// One request through the filter.
pub struct HarnessStream {
    filter: Box<dyn HttpFilter>,
    driver: Option<Arc<Driver>>,
}

impl HarnessStream {
    /// Runs `request_headers`.
    pub fn request_headers(&mut self, request: &mut http::request::Parts, end_of_stream: bool) -> FilterAction {
        let _scope = scope(self.driver.as_ref());
        self.filter.on_request_headers(request, end_of_stream)
    }

    /// Runs `request_body` on one chunk.
    pub fn request_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> BodyAction {
        let _scope = scope(self.driver.as_ref());
        self.filter.on_request_body(body, end_of_stream)
    }

    /// Runs `response_headers`.
    pub fn response_headers(&mut self, response: &mut http::response::Parts, end_of_stream: bool) -> FilterAction {
        let _scope = scope(self.driver.as_ref());
        self.filter.on_response_headers(response, end_of_stream)
    }

    /// Runs `response_body` on one chunk.
    pub fn response_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> BodyAction {
        let _scope = scope(self.driver.as_ref());
        self.filter.on_response_body(body, end_of_stream)
    }

    /// Runs `log` (and ends the stream context).
    pub fn log(&mut self, record: &LogRecord) {
        let _scope = scope(self.driver.as_ref());
        self.filter.on_log(record);
    }

    /// After a headers phase returned [`FilterAction::Pause`]: waits (callouts answered,
    /// timers run) until the filter says how to go on, with `head` the paused head. A
    /// harness not made with [`FilterHarness::builder`] cannot wait: it asks once.
    pub fn resume(&mut self, head: Head<'_>) -> FilterAction {
        let mut head = head;
        let Some(driver) = self.driver.clone() else {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            return match self.filter.poll_resume(&mut cx, head) {
                std::task::Poll::Ready(action) => action,
                std::task::Poll::Pending => FilterAction::Pause,
            };
        };
        let _logs = driver.logs.clone().map(crate::wasm::capture_logs);
        let filter = &mut self.filter;
        driver.runtime.block_on(poll_fn(|cx| {
            let head = match &mut head {
                Head::Request(parts) => Head::Request(parts),
                Head::Response(parts) => Head::Response(parts),
            };
            filter.poll_resume(cx, head)
        }))
    }

    /// Lets callouts the filter sent without pausing complete, so the next phase delivers
    /// them (as they would have completed meanwhile in the proxy).
    pub fn settle(&mut self) {
        if let Some(driver) = self.driver.as_ref() {
            driver.runtime.block_on(async {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            });
        }
    }

    /// The filter's `set_upstream` wishes, taken once.
    pub fn take_upstream_choice(&mut self) -> Option<UpstreamChoice> {
        self.filter.take_upstream_choice()
    }

    /// The retry the filter asked for in `response_headers` (its backoff), taken once.
    pub fn take_retry(&mut self) -> Option<Duration> {
        self.filter.take_retry()
    }

    fn response_headers_resumed(&mut self, response: &mut http::response::Parts, end: bool) -> FilterAction {
        match self.response_headers(response, end) {
            FilterAction::Pause => self.resume(Head::Response(response)),
            other => other,
        }
    }

    /// A body through one filter as the chain runs it (`chain.rs`): what passes on, and
    /// what stopped the stream, if anything.
    fn body_phase(&mut self, response: bool, chunks: Vec<Bytes>, limit: usize) -> (Bytes, Option<BodyStop>) {
        let chunks = if chunks.is_empty() { vec![Bytes::new()] } else { chunks };
        let last = chunks.len() - 1;
        let mut buffer = BytesMut::new();
        let mut passed = BytesMut::new();
        for (i, data) in chunks.into_iter().enumerate() {
            let end = i == last;
            let mut whole = if buffer.is_empty() {
                data
            } else {
                buffer.extend_from_slice(&data);
                buffer.split().freeze()
            };
            let action = if response {
                self.response_body(&mut whole, end)
            } else {
                self.request_body(&mut whole, end)
            };
            match action {
                BodyAction::Continue => passed.extend_from_slice(&whole),
                BodyAction::Buffer if end => passed.extend_from_slice(&whole),
                BodyAction::Buffer => {
                    if whole.len() > limit {
                        return (passed.freeze(), Some(BodyStop::TooLarge));
                    }
                    buffer.extend_from_slice(&whole);
                }
                BodyAction::Reply(reply) => return (passed.freeze(), Some(BodyStop::Reply(reply))),
            }
        }
        (passed.freeze(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_parse_with_labels_in_any_order_and_escapes() {
        assert_eq!(parse_series("up"), Some(("up", vec![])));
        let (name, labels) = parse_series(r#"req_total{code="200", path="/a\"b,c"}"#).expect("parses");
        assert_eq!(name, "req_total");
        assert_eq!(
            labels,
            [
                ("code".to_owned(), "200".to_owned()),
                ("path".to_owned(), "/a\"b,c".to_owned())
            ]
        );
        assert_eq!(parse_series("x{a=1}"), None);
        assert_eq!(parse_series("x{a=\"1\""), None);
    }

    #[test]
    fn replies_become_responses_as_the_proxy_builds_them() {
        let mut reply = LocalReply::new(StatusCode::FORBIDDEN, "no\n");
        reply
            .headers
            .insert("content-type", HeaderValue::from_static("text/html"));
        let response = reply_response(&reply);
        assert_eq!(response.head.status, StatusCode::FORBIDDEN);
        assert_eq!(response.head.headers["content-type"], "text/html");
        assert_eq!(response.head.headers[REASON_HEADER], "filter");
        assert_eq!(response.body, ["no\n"]);
        assert_eq!(filter_reason(&reply), "filter");
        reply
            .headers
            .insert(REASON_HEADER, HeaderValue::from_static("filter_failure"));
        assert_eq!(filter_reason(&reply), "filter_failure");
    }
}
