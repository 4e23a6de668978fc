//! Outgoing HTTP/1.1 calls from one Bookinfo service to another, direct or through an HTTP
//! proxy (the sidecar's outbound listener).
//!
//! One connection per call, closed when the reply has been read: Bookinfo's traffic is a few
//! requests per page view, and a fresh connection per call keeps every call visible as its own
//! connection in the sidecar.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Largest reply body read from a peer; a larger one fails the call.
pub const MAX_REPLY_BODY: usize = 1 << 20;

/// Request headers copied from an incoming request onto the outgoing calls it causes, besides
/// every `x-b3-*` header.
pub const PROPAGATED_HEADERS: &[&str] = &["x-request-id", "traceparent", "tracestate", "b3", "end-user"];

/// The headers of `incoming` that Bookinfo propagates to the calls it makes: see
/// [`PROPAGATED_HEADERS`], plus every `x-b3-*` header. Repeated headers keep all their values.
pub fn propagated_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        let name_str = name.as_str();
        if PROPAGATED_HEADERS.contains(&name_str) || name_str.starts_with("x-b3-") {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// A URL flag (`--details`, `--reviews`, `--ratings`) that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAddress {
    input: String,
    reason: &'static str,
}

impl fmt::Display for InvalidAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid address {:?}: {}", self.input, self.reason)
    }
}

impl StdError for InvalidAddress {}

impl InvalidAddress {
    fn new(input: &str, reason: &'static str) -> Self {
        Self {
            input: input.to_owned(),
            reason,
        }
    }
}

/// A peer service, named by its base URL such as `http://reviews:9080`. A path in the URL
/// (`http://reviews:9080/prefix`) is prepended to every request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    authority: Authority,
    base_path: String,
}

impl Peer {
    /// Parses an `http://host[:port][/path]` URL; the port defaults to 80.
    pub fn parse(url: &str) -> Result<Self, InvalidAddress> {
        let uri: Uri = url.parse().map_err(|_| InvalidAddress::new(url, "not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(InvalidAddress::new(url, "only http:// URLs are supported"));
        }
        let Some(authority) = uri.authority().cloned() else {
            return Err(InvalidAddress::new(url, "the URL has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(InvalidAddress::new(url, "user info is not supported"));
        }
        if uri.query().is_some() {
            return Err(InvalidAddress::new(url, "a query is not supported"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self { authority, base_path })
    }

    /// The peer's `host[:port]`, sent as the `Host` header.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    fn origin_form(&self, path: &str) -> String {
        format!("{}{path}", self.base_path)
    }

    fn absolute_form(&self, path: &str) -> String {
        format!("http://{}{}{path}", self.authority, self.base_path)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.base_path)
    }
}

/// The `--proxy HOST:PORT` every outgoing call is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy(Authority);

impl Proxy {
    /// Parses `HOST:PORT`; the port is required.
    pub fn parse(addr: &str) -> Result<Self, InvalidAddress> {
        let authority: Authority = addr
            .parse()
            .map_err(|_| InvalidAddress::new(addr, "expected HOST:PORT"))?;
        if authority.port_u16().is_none() || authority.as_str().contains('@') {
            return Err(InvalidAddress::new(addr, "expected HOST:PORT"));
        }
        Ok(Self(authority))
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A reply read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The reply's status.
    pub status: StatusCode,
    /// The reply's body.
    pub body: Bytes,
}

/// Why a call to a peer failed. Every variant is an upstream failure and may be retried.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallError {
    /// The TCP connection to the peer (or the proxy) could not be made.
    Connect {
        /// `host:port` that was dialled.
        addr: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The request could not be written or the reply head not read.
    Request(hyper::Error),
    /// The reply body could not be read, or was larger than [`MAX_REPLY_BODY`].
    Body(Box<dyn StdError + Send + Sync>),
    /// The whole call (connect, request, reply) took longer than its timeout.
    TimedOut(Duration),
    /// The request path did not form a valid URI.
    InvalidPath(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { addr, .. } => write!(f, "upstream connect to {addr} failed"),
            Self::Request(_) => f.write_str("upstream request failed"),
            Self::Body(_) => f.write_str("reading the upstream reply body failed"),
            Self::TimedOut(after) => write!(f, "upstream call timed out after {after:?}"),
            Self::InvalidPath(path) => write!(f, "invalid request path {path:?}"),
        }
    }
}

impl StdError for CallError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Connect { source, .. } => Some(source),
            Self::Request(source) => Some(source),
            Self::Body(source) => Some(source.as_ref()),
            Self::TimedOut(_) | Self::InvalidPath(_) => None,
        }
    }
}

/// Makes `GET` calls to peers, through the proxy when one is configured.
#[derive(Debug, Clone, Default)]
pub struct Client {
    proxy: Option<Proxy>,
}

impl Client {
    /// A client that connects to each peer directly, or to `proxy` for every call.
    pub fn new(proxy: Option<Proxy>) -> Self {
        Self { proxy }
    }

    /// `GET {peer}{path}` with `headers` (plus `Host`), reading the whole reply. `timeout`
    /// bounds the whole call, connect included.
    pub async fn get(
        &self,
        peer: &Peer,
        path: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        match tokio::time::timeout(timeout, self.get_unbounded(peer, path, headers)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::TimedOut(timeout)),
        }
    }

    async fn get_unbounded(&self, peer: &Peer, path: &str, headers: &HeaderMap) -> Result<Reply, CallError> {
        let (target, uri) = match &self.proxy {
            Some(proxy) => (&proxy.0, peer.absolute_form(path)),
            None => (&peer.authority, peer.origin_form(path)),
        };
        let uri: Uri = uri.parse().map_err(|_| CallError::InvalidPath(path.to_owned()))?;
        let host = peer.authority.as_str();
        let host = HeaderValue::from_str(host).map_err(|_| CallError::InvalidPath(host.to_owned()))?;

        let stream = connect(target).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(CallError::Request)?;
        // Dropping the guard (reply read, error or timeout) closes the connection.
        let _connection = AbortOnDrop(tokio::spawn(connection));

        let mut request = Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = uri;
        let request_headers = request.headers_mut();
        request_headers.extend(headers.clone());
        request_headers.insert(header::HOST, host);

        let response = sender.send_request(request).await.map_err(CallError::Request)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY_BODY)
            .collect()
            .await
            .map_err(CallError::Body)?
            .to_bytes();
        Ok(Reply { status, body })
    }
}

async fn connect(target: &Authority) -> Result<TcpStream, CallError> {
    // `Authority::host` keeps the brackets of an IPv6 literal; the resolver wants it bare.
    let host = target.host().trim_start_matches('[').trim_end_matches(']');
    let port = target.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|source| CallError::Connect {
            addr: target.to_string(),
            source,
        })?;
    // Best effort: a request is one small write, so Nagle only adds latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Formats an error with its chain of causes, `a: b: c`, for log lines.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls() {
        let peer = Peer::parse("http://reviews:9080").expect("valid");
        assert_eq!(peer.authority().as_str(), "reviews:9080");
        assert_eq!(peer.origin_form("/reviews/0"), "/reviews/0");
        assert_eq!(peer.absolute_form("/reviews/0"), "http://reviews:9080/reviews/0");

        let prefixed = Peer::parse("http://127.0.0.1:1/api/").expect("valid");
        assert_eq!(prefixed.origin_form("/x"), "/api/x");
        assert_eq!(prefixed.to_string(), "http://127.0.0.1:1/api");

        for bad in ["reviews:9080", "https://reviews", "http://u@reviews", "http://r/?q", ""] {
            assert!(Peer::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn proxy_needs_a_port() {
        assert!(Proxy::parse("127.0.0.1:15001").is_ok());
        assert!(Proxy::parse("localhost").is_err());
        assert!(Proxy::parse("http://x:1").is_err());
    }

    #[test]
    fn propagates_trace_and_user_headers_only() {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("x-request-id", "r1"),
            ("traceparent", "00-abc-def-01"),
            ("x-b3-traceid", "t"),
            ("x-b3-sampled", "1"),
            ("end-user", "jason"),
            ("cookie", "user=jason"),
            ("accept", "*/*"),
        ] {
            incoming.append(name, HeaderValue::from_static(value));
        }
        let out = propagated_headers(&incoming);
        assert_eq!(out.len(), 5);
        assert_eq!(out.get("end-user").map(HeaderValue::as_bytes), Some(&b"jason"[..]));
        assert!(out.get("cookie").is_none());
    }
}
