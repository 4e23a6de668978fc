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
    /// `request_headers`: may edit the request head or answer locally.
    fn on_request_headers(&mut self, _request: &mut http::request::Parts) -> FilterAction {
        FilterAction::Continue
    }

    /// `request_body`: may edit each chunk in place; called only if the factory wants bodies.
    fn on_request_body(&mut self, _data: &mut Bytes, _end_of_stream: bool) {}

    /// `response_headers`: may edit the response head or replace the response locally.
    fn on_response_headers(&mut self, _response: &mut http::response::Parts) -> FilterAction {
        FilterAction::Continue
    }

    /// `response_body`: may edit each chunk in place; called only if the factory wants bodies.
    fn on_response_body(&mut self, _data: &mut Bytes, _end_of_stream: bool) {}

    /// `log`: the exchange is over (or was abandoned).
    fn on_log(&mut self, _record: &LogRecord) {}
}

/// Builds per-request filter instances; one per filter per snapshot.
pub trait FilterFactory: Send + Sync {
    /// The filter's configured name.
    fn name(&self) -> &str;

    /// A fresh instance for one request.
    fn create(&self) -> Box<dyn HttpFilter>;

    /// Whether the body phases should be called (they cost a lock per chunk).
    fn wants_body(&self) -> bool {
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
    wants_body: bool,
}

impl FilterChain {
    /// Builds the chain for a listener's filter configs.
    pub fn build(configs: &[weft_api::FilterConfig]) -> Result<Self, FilterError> {
        let factories = configs.iter().map(native).collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_factories(factories))
    }

    /// A chain of the given factories, in order.
    pub fn from_factories(factories: Vec<Arc<dyn FilterFactory>>) -> Self {
        let wants_body = factories.iter().any(|f| f.wants_body());
        Self {
            factories: factories.into(),
            wants_body,
        }
    }

    /// Whether the chain has no filters (the request path then skips every phase).
    pub fn is_empty(&self) -> bool {
        self.factories.is_empty()
    }

    /// Whether any filter wants the body phases.
    pub fn wants_body(&self) -> bool {
        self.wants_body
    }

    /// Fresh instances for one request.
    pub fn instantiate(&self) -> Vec<Box<dyn HttpFilter>> {
        self.factories.iter().map(|f| f.create()).collect()
    }
}

/// Builds a native filter from its config.
fn native(config: &weft_api::FilterConfig) -> Result<Arc<dyn FilterFactory>, FilterError> {
    match config.native.as_str() {
        "headers" => headers::HeadersFactory::new(config).map(|f| Arc::new(f) as Arc<dyn FilterFactory>),
        other => Err(FilterError::UnknownType {
            name: config.name.clone(),
            kind: other.to_owned(),
        }),
    }
}

pub(crate) fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header name {name:?}: {e}"))?;
    let v = HeaderValue::from_str(value).map_err(|e| format!("header {name:?} value: {e}"))?;
    Ok((n, v))
}
