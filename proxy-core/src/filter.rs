//! The filter-chain seam: every request runs its listener's ordered chain of HTTP filters at
//! the `request_headers`, `request_body`, `response_headers`, `response_body` and `log` phases
//! (the proxy-wasm phase names, used the same way in stats, logs and docs).
//!
//! A [`FilterFactory`] is built once per snapshot from a [`weft_api::FilterConfig`]; each
//! request gets fresh [`HttpFilter`] instances from it. Filters see headers before routing,
//! so a header they set can steer the route. The native filters here are small building
//! blocks and test fixtures; the Wasm host plugs into the same traits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

mod headers;

/// What a filter decided at a headers phase.
#[derive(Debug)]
pub enum FilterAction {
    /// Go on to the next filter.
    Continue,
    /// Stop the chain and answer with this response (a "local reply").
    Reply(LocalReply),
    /// Stop here until [`HttpFilter::poll_resume`] says how to go on (the filter waits for an
    /// HTTP callout, a timer, ...). The head stays editable while paused.
    Pause,
}

/// What a filter decided at a body phase.
#[derive(Debug)]
pub enum BodyAction {
    /// Pass the data on (possibly edited).
    Continue,
    /// Keep this data buffered; the filter is called again with everything buffered so far
    /// and the next chunk appended, up to `limits.max_buffered_body_bytes` (over it: 413 for
    /// requests, a reset for responses). At the end of the stream the data passes on.
    Buffer,
    /// Answer locally (request body only; on a response body it resets the stream).
    Reply(LocalReply),
}

/// A response made by a filter.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// Status code.
    pub status: StatusCode,
    /// Extra headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Detail reported in logs (proxy-wasm `status_code_details`).
    pub details: String,
}

impl LocalReply {
    /// A reply with a status and body, no extra headers.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: body.into(),
            details: String::new(),
        }
    }
}

/// A paused headers phase resumes on the head it stopped at.
pub enum Head<'a> {
    /// The request head (the `request_headers` phase paused).
    Request(&'a mut http::request::Parts),
    /// The response head (the `response_headers` phase paused).
    Response(&'a mut http::response::Parts),
}

/// A filter's wishes about the upstream, applied after `request_headers` (Weft's
/// `set_upstream` extension).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamChoice {
    /// Send to this cluster instead of the route's.
    pub cluster: Option<String>,
    /// Only endpoints carrying these labels.
    pub subset: Option<std::collections::BTreeMap<String, String>>,
    /// Hash key for `ring_hash` clusters, instead of the cluster's `hash_on`.
    pub hash_key: Option<String>,
    /// Deadline for the whole request, across retries, instead of the route's timeout.
    pub timeout: Option<Duration>,
    /// Deadline for each attempt.
    pub per_try_timeout: Option<Duration>,
}

/// What the log phase knows about a finished request.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Request method.
    pub method: http::Method,
    /// Authority the request was routed by.
    pub authority: String,
    /// Request path and query.
    pub path: String,
    /// Status sent downstream.
    pub status: u16,
    /// Name of the route that matched, if any.
    pub route: Option<Arc<str>>,
    /// Name of the cluster the request went to, if any.
    pub cluster: Option<Arc<str>>,
    /// Endpoint that answered, if any.
    pub upstream: Option<std::net::SocketAddr>,
    /// Why the proxy answered itself, for local replies.
    pub reason: Option<&'static str>,
    /// Response body bytes sent downstream.
    pub response_bytes: u64,
    /// Time from request headers to the end of the response.
    pub duration: Duration,
}

/// One filter's per-request state. Every method has a pass-through default.
pub trait HttpFilter: Send {
    /// `request_headers`: may edit the request head, answer locally or pause.
    fn on_request_headers(&mut self, _request: &mut http::request::Parts, _end_of_stream: bool) -> FilterAction {
        FilterAction::Continue
    }

    /// `request_body`: `body` holds what this filter buffered so far plus the new chunk;
    /// called only if the factory wants bodies.
    fn on_request_body(&mut self, _body: &mut Bytes, _end_of_stream: bool) -> BodyAction {
        BodyAction::Continue
    }

    /// `response_headers`: may edit the response head, replace the response or pause.
    fn on_response_headers(&mut self, _response: &mut http::response::Parts, _end_of_stream: bool) -> FilterAction {
        FilterAction::Continue
    }

    /// `response_body`: as `on_request_body`, for the response.
    fn on_response_body(&mut self, _body: &mut Bytes, _end_of_stream: bool) -> BodyAction {
        BodyAction::Continue
    }

    /// After a headers phase returned [`FilterAction::Pause`]: `Pending` while still waiting,
    /// then how to go on. The default resumes at once.
    fn poll_resume(&mut self, _cx: &mut std::task::Context<'_>, _head: Head<'_>) -> std::task::Poll<FilterAction> {
        std::task::Poll::Ready(FilterAction::Continue)
    }

    /// Upstream wishes made during `request_headers` (`set_upstream`), taken once.
    fn take_upstream_choice(&mut self) -> Option<UpstreamChoice> {
        None
    }

    /// Whether the filter asked, during `response_headers`, for the request to be sent again
    /// to another endpoint (the `retry` extension), and after what backoff; taken once.
    fn take_retry(&mut self) -> Option<Duration> {
        None
    }

    /// `log`: the exchange is over (or was abandoned).
    fn on_log(&mut self, _record: &LogRecord) {}
}

/// What a filter instance knows about the connection and worker it serves.
#[derive(Clone)]
pub struct FilterContext {
    /// The worker thread's index.
    pub worker: usize,
    /// The downstream peer.
    pub source: std::net::SocketAddr,
    /// The local address the connection arrived on.
    pub destination: std::net::SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The name of the route the request matched before filters ran, if any.
    pub route: Option<Arc<str>>,
    /// Whether the downstream connection is mutual TLS.
    pub mtls: bool,
    /// The downstream peer's SPIFFE ID (mutual TLS), `source.principal` to filters.
    pub peer_principal: Option<Arc<str>>,
    pub(crate) callouts: Option<Arc<crate::callout::Callouts>>,
    pub(crate) worker_context: Option<Arc<crate::http::WorkerContext>>,
    /// Properties filters set on this request, shared along the chain.
    pub(crate) properties: Option<SharedProperties>,
}

/// Properties set on one request by its filters, shared along the chain.
pub(crate) type SharedProperties = Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>;

/// Where a response came from; in the response's extensions during `response_headers`.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    /// The cluster the request went to.
    pub cluster: Arc<str>,
    /// The endpoint that answered.
    pub endpoint: std::net::SocketAddr,
}

/// Builds per-request filter instances; one per filter per snapshot.
pub trait FilterFactory: Send + Sync {
    /// The filter's configured name.
    fn name(&self) -> &str;

    /// A fresh instance for one request.
    fn create(&self, context: &FilterContext) -> Box<dyn HttpFilter>;

    /// Whether the `request_body` phase should be called (it costs a lock per chunk).
    fn wants_request_body(&self) -> bool {
        false
    }

    /// Whether the `response_body` phase should be called.
    fn wants_response_body(&self) -> bool {
        false
    }

    /// Whether instances may make HTTP callouts (the request then carries a callout handle).
    fn wants_callouts(&self) -> bool {
        false
    }

    /// Whether instances may ask for retries (request bodies of bounded size are then kept
    /// so they can be sent again).
    fn may_retry(&self) -> bool {
        false
    }

    /// Whether instances read or set per-request properties; when more than one filter of a
    /// chain does, the request carries one property map shared along the chain.
    fn uses_properties(&self) -> bool {
        false
    }
}

/// A filter's configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// No native filter has this type name.
    #[error("filter {name:?}: unknown native filter type {kind:?} (known: headers)")]
    UnknownType {
        /// The filter's name.
        name: String,
        /// The requested type.
        kind: String,
    },
    /// A Wasm filter could not be loaded or started.
    #[error("filter {name:?}: {message}")]
    Wasm {
        /// The filter's name.
        name: String,
        /// What failed.
        message: String,
    },
    /// The filter refused its configuration.
    #[error("filter {name:?}: invalid config: {message}")]
    InvalidConfig {
        /// The filter's name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// An ordered list of filter factories, built from a listener's `filters`.
#[derive(Clone, Default)]
pub struct FilterChain {
    factories: Arc<[Arc<dyn FilterFactory>]>,
    wants_request_body: bool,
    wants_response_body: bool,
    wants_callouts: bool,
    may_retry: bool,
    shares_properties: bool,
}

impl FilterChain {
    /// Builds the chain for a listener's filter configs: native filters here, Wasm filters
    /// through the host (compiling and starting each module; any failure refuses the chain).
    pub(crate) fn build(
        configs: &[weft_api::FilterConfig],
        wasm: &crate::wasm::WasmHost,
        workers: usize,
    ) -> Result<Self, FilterError> {
        let mut factories = Vec::with_capacity(configs.len());
        for config in configs {
            let factory: Arc<dyn FilterFactory> = match &config.wasm {
                Some(module) => {
                    let runtime = wasm.runtime().map_err(|message| FilterError::Wasm {
                        name: config.name.clone(),
                        message,
                    })?;
                    Arc::new(crate::wasm::WasmFactory::new(
                        runtime,
                        config,
                        module,
                        workers,
                        wasm.counters(&config.name),
                    )?)
                }
                None => native(config)?,
            };
            factories.push(factory);
        }
        Ok(Self::from_factories(factories))
    }

    /// A chain of the given factories, in order.
    pub fn from_factories(factories: Vec<Arc<dyn FilterFactory>>) -> Self {
        let wants_request_body = factories.iter().any(|f| f.wants_request_body());
        let wants_response_body = factories.iter().any(|f| f.wants_response_body());
        let wants_callouts = factories.iter().any(|f| f.wants_callouts());
        let may_retry = factories.iter().any(|f| f.may_retry());
        let shares_properties = factories.iter().filter(|f| f.uses_properties()).count() > 1;
        Self {
            factories: factories.into(),
            wants_request_body,
            wants_response_body,
            wants_callouts,
            may_retry,
            shares_properties,
        }
    }

    /// Whether the chain has no filters (the request path then skips every phase).
    pub fn is_empty(&self) -> bool {
        self.factories.is_empty()
    }

    /// Whether any filter wants the `request_body` phase.
    pub fn wants_request_body(&self) -> bool {
        self.wants_request_body
    }

    /// Whether any filter wants the `response_body` phase.
    pub fn wants_response_body(&self) -> bool {
        self.wants_response_body
    }

    /// Whether any filter may make HTTP callouts.
    pub fn wants_callouts(&self) -> bool {
        self.wants_callouts
    }

    /// Whether any filter may ask for retries.
    pub fn may_retry(&self) -> bool {
        self.may_retry
    }

    /// Whether more than one filter uses per-request properties, so a request needs a
    /// property map shared along the chain (a single filter keeps its own).
    pub fn shares_properties(&self) -> bool {
        self.shares_properties
    }

    /// Fresh instances for one request, skipping the filters named in `disabled`.
    pub fn instantiate(&self, context: &FilterContext, disabled: &[String]) -> Vec<Box<dyn HttpFilter>> {
        self.factories
            .iter()
            .filter(|f| !disabled.iter().any(|d| d == f.name()))
            .map(|f| f.create(context))
            .collect()
    }

    /// The factories, in order.
    pub fn factories(&self) -> &[Arc<dyn FilterFactory>] {
        &self.factories
    }
}

/// Builds a native filter from its config.
fn native(config: &weft_api::FilterConfig) -> Result<Arc<dyn FilterFactory>, FilterError> {
    match config.native.as_deref() {
        Some("headers") => headers::HeadersFactory::new(config).map(|f| Arc::new(f) as Arc<dyn FilterFactory>),
        other => Err(FilterError::UnknownType {
            name: config.name.clone(),
            kind: other.unwrap_or("(none)").to_owned(),
        }),
    }
}

pub(crate) fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header name {name:?}: {e}"))?;
    let v = HeaderValue::from_str(value).map_err(|e| format!("header {name:?} value: {e}"))?;
    Ok((n, v))
}
