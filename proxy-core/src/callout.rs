//! Callouts made by filters: HTTP (proxy-wasm `proxy_http_call`) and unary gRPC
//! (`proxy_grpc_call`, an HTTP/2 request in gRPC framing): a request to a cluster of the
//! request's snapshot, sent on the same worker through its pools.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::BodyExt;
use weft_api::UpstreamProtocol;

use crate::cluster::HashInput;
use crate::generation::Generation;
use crate::pool::Pools;

/// A callout's request: pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) and
/// regular headers in one list, as proxy-wasm passes them.
pub(crate) struct CalloutRequest {
    pub(crate) cluster: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Bytes,
    pub(crate) timeout: Duration,
    /// A unary gRPC call: its response reaches the guest through the gRPC callbacks.
    pub(crate) grpc: bool,
}

/// A callout's response: `:status` first, then the headers; body; trailers.
#[derive(Debug, Default)]
pub(crate) struct CalloutResponse {
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Bytes,
    pub(crate) trailers: Vec<(String, Vec<u8>)>,
}

/// Why a callout produced no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CalloutError {
    #[error("no cluster named {0:?}")]
    UnknownCluster(String),
    #[error("callout request is malformed: {0}")]
    BadRequest(String),
    #[error("no healthy endpoint in cluster {0:?}")]
    NoHealthyUpstream(String),
    #[error("callout timed out")]
    Timeout,
    #[error("callout failed")]
    Upstream(#[source] crate::pool::UpstreamError),
    #[error("callout response body failed")]
    Body(#[source] crate::body::BoxError),
    #[error("the mocked callout gave no response")]
    NoResponse,
}

/// What a worker offers filters for callouts: the clusters of the request's snapshot, sent
/// through the worker's pools; or, in the in-process harness only, a mock.
pub(crate) struct Callouts {
    backend: Backend,
}

enum Backend {
    Real {
        generation: Arc<Generation>,
        pools: Arc<Pools>,
        source_ip: std::net::IpAddr,
    },
    Mock(Arc<dyn CalloutMock>),
}

/// Answers callouts without a network (`crate::harness`).
pub(crate) trait CalloutMock: Send + Sync {
    /// Whether `cluster` exists; a callout to any other cluster is refused at dispatch.
    fn knows(&self, cluster: &str) -> bool;
    /// The response, at once.
    fn call(&self, request: CalloutRequest) -> Result<CalloutResponse, CalloutError>;
}

impl Callouts {
    /// Callouts to the clusters of `generation`, through the worker's `pools`.
    pub(crate) fn new(generation: Arc<Generation>, pools: Arc<Pools>, source_ip: std::net::IpAddr) -> Self {
        Self {
            backend: Backend::Real {
                generation,
                pools,
                source_ip,
            },
        }
    }

    /// Callouts answered by `mock`.
    pub(crate) fn mock(mock: Arc<dyn CalloutMock>) -> Self {
        Self {
            backend: Backend::Mock(mock),
        }
    }

    /// Checks a callout before it is sent, so the guest learns of bad arguments at once. A
    /// gRPC call needs an HTTP/2 cluster.
    pub(crate) fn validate(&self, request: &CalloutRequest) -> Result<(), CalloutError> {
        let known = match &self.backend {
            Backend::Real { generation, .. } => match generation.clusters.by_name.get(&request.cluster) {
                Some(cluster) if request.grpc && cluster.protocol != UpstreamProtocol::Http2 => {
                    return Err(CalloutError::BadRequest(format!(
                        "gRPC needs an http2 cluster; {:?} speaks HTTP/1.1",
                        request.cluster
                    )));
                }
                found => found.is_some(),
            },
            Backend::Mock(mock) => mock.knows(&request.cluster),
        };
        if !known {
            return Err(CalloutError::UnknownCluster(request.cluster.clone()));
        }
        for required in [":method", ":path", ":authority"] {
            if !request.headers.iter().any(|(k, _)| k == required) {
                return Err(CalloutError::BadRequest(format!("missing {required}")));
            }
        }
        Ok(())
    }

    /// Sends the callout and collects the whole response.
    pub(crate) async fn call(&self, request: CalloutRequest) -> Result<CalloutResponse, CalloutError> {
        if let Backend::Mock(mock) = &self.backend {
            return mock.call(request);
        }
        let timeout = request.timeout;
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(CalloutError::Timeout),
        }
    }

    async fn exchange(&self, request: CalloutRequest) -> Result<CalloutResponse, CalloutError> {
        let response = self.send(request, None).await?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(CalloutError::Body)?;
        let trailers = collected.trailers().map(pairs).unwrap_or_default();
        let mut headers = vec![(":status".to_owned(), parts.status.as_str().as_bytes().to_vec())];
        headers.extend(pairs(&parts.headers));
        Ok(CalloutResponse {
            headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    /// Opens a gRPC stream: the request carries `request.body` and then each (framed) message
    /// of `outgoing`, ending when `outgoing` closes; the response's events go to the
    /// returned receiver, the last one always [`StreamEvent::End`].
    pub(crate) fn stream(
        self: &Arc<Self>,
        request: CalloutRequest,
        outgoing: mpsc::UnboundedReceiver<Bytes>,
    ) -> (mpsc::UnboundedReceiver<StreamEvent>, tokio::task::JoinHandle<()>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let this = self.clone();
        let task = tokio::spawn(async move {
            let end = match this.send(request, Some(outgoing)).await {
                Ok(response) => read_stream(response, &events).await,
                Err(error) => GrpcOutcome::from_exchange(Err(error)),
            };
            let _ = events.send(StreamEvent::End(end));
        });
        (receiver, task)
    }

    /// Sends `request` (its body, then `more` when given) to an endpoint of its cluster.
    async fn send(
        &self,
        request: CalloutRequest,
        more: Option<mpsc::UnboundedReceiver<Bytes>>,
    ) -> Result<http::Response<crate::body::ProxyBody>, CalloutError> {
        let Backend::Real {
            generation,
            pools,
            source_ip,
        } = &self.backend
        else {
            return Err(CalloutError::NoResponse);
        };
        let cluster = generation
            .clusters
            .by_name
            .get(&request.cluster)
            .ok_or_else(|| CalloutError::UnknownCluster(request.cluster.clone()))?
            .clone();
        let bad = |m: &str| CalloutError::BadRequest(m.to_owned());
        let mut method = Method::GET;
        let mut path = "/".to_owned();
        let mut authority = String::new();
        let mut headers = http::HeaderMap::new();
        for (name, value) in &request.headers {
            match name.as_str() {
                ":method" => method = Method::from_bytes(value).map_err(|_| bad("bad :method"))?,
                ":path" => path = String::from_utf8(value.clone()).map_err(|_| bad("bad :path"))?,
                ":authority" => authority = String::from_utf8(value.clone()).map_err(|_| bad("bad :authority"))?,
                ":scheme" => {}
                _ => {
                    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("bad header name"))?;
                    let value = HeaderValue::from_bytes(value).map_err(|_| bad("bad header value"))?;
                    headers.append(name, value);
                }
            }
        }
        let uri: Uri = match cluster.protocol {
            UpstreamProtocol::Http1 => path.parse().map_err(|_| bad("bad :path"))?,
            UpstreamProtocol::Http2 => format!("http://{authority}{path}")
                .parse()
                .map_err(|_| bad("bad :path"))?,
        };
        if cluster.protocol == UpstreamProtocol::Http1 {
            headers.insert(
                header::HOST,
                HeaderValue::from_str(&authority).map_err(|_| bad("bad :authority"))?,
            );
        }
        let body = match more {
            None => {
                if !request.body.is_empty() {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(request.body.len()));
                }
                crate::body::full(request.body)
            }
            Some(more) => {
                let first = (!request.body.is_empty()).then_some(request.body);
                let frames = tokio_stream::iter(first)
                    .chain(tokio_stream::wrappers::UnboundedReceiverStream::new(more))
                    .map(|bytes| Ok::<_, crate::body::BoxError>(http_body::Frame::data(bytes)));
                crate::body::boxed(http_body_util::StreamBody::new(frames))
            }
        };
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = method;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers;
        *outgoing.version_mut() = match cluster.protocol {
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
            UpstreamProtocol::Http2 => http::Version::HTTP_2,
        };
        let empty = http::HeaderMap::new();
        let hash = HashInput {
            headers: &empty,
            source_ip: *source_ip,
            key: None,
        };
        let endpoint = cluster
            .all
            .pick(&cluster, &hash)
            .ok_or_else(|| CalloutError::NoHealthyUpstream(request.cluster.clone()))?;
        pools
            .send(&cluster, &endpoint, outgoing, false)
            .await
            .map_err(CalloutError::Upstream)
    }
}

/// An event of a gRPC stream, in order: initial metadata, messages, then the end.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// The response headers (initial metadata), without pseudo-headers.
    Headers(Vec<(String, Vec<u8>)>),
    /// One message.
    Message(Bytes),
    /// The status and message, with the trailing metadata in `response.trailers`.
    End(GrpcOutcome),
}

/// Reads a gRPC stream's response into `events`: its headers, each message as it completes;
/// returns how it ended.
async fn read_stream(
    response: http::Response<crate::body::ProxyBody>,
    events: &mpsc::UnboundedSender<StreamEvent>,
) -> GrpcOutcome {
    let (parts, mut body) = response.into_parts();
    let mut headers = vec![(":status".to_owned(), parts.status.as_str().as_bytes().to_vec())];
    headers.extend(pairs(&parts.headers));
    if parts.status != http::StatusCode::OK {
        return GrpcOutcome::from_exchange(Ok(CalloutResponse {
            headers,
            ..CalloutResponse::default()
        }));
    }
    let _ = events.send(StreamEvent::Headers(pairs(&parts.headers)));
    let mut pending = bytes::BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return GrpcOutcome::failed(grpc_code::UNAVAILABLE, error.to_string()),
        };
        let frame = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers: the end.
                let trailers = frame.into_trailers().map(|t| pairs(&t)).unwrap_or_default();
                return GrpcOutcome::from_exchange(Ok(CalloutResponse {
                    headers,
                    body: Bytes::new(),
                    trailers,
                }));
            }
        };
        pending.extend_from_slice(&frame);
        while pending.len() >= 5 {
            if pending[0] != 0 {
                return GrpcOutcome::failed(grpc_code::INTERNAL, "gRPC response message compressed (not offered)");
            }
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if pending.len() < 5 + len {
                break;
            }
            let message = pending.split_to(5 + len).freeze().slice(5..);
            let _ = events.send(StreamEvent::Message(message));
        }
    }
    // No trailers: a trailers-only response has the status in its headers.
    let mut end = GrpcOutcome::from_exchange(Ok(CalloutResponse {
        headers,
        ..CalloutResponse::default()
    }));
    if !pending.is_empty() && end.status == grpc_code::OK {
        end = GrpcOutcome::failed(grpc_code::INTERNAL, "gRPC response message truncated");
    }
    end
}

fn pairs(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// gRPC status codes used here.
mod grpc_code {
    pub(super) const OK: u32 = 0;
    pub(super) const UNKNOWN: u32 = 2;
    pub(super) const DEADLINE_EXCEEDED: u32 = 4;
    pub(super) const PERMISSION_DENIED: u32 = 7;
    pub(super) const UNIMPLEMENTED: u32 = 12;
    pub(super) const INTERNAL: u32 = 13;
    pub(super) const UNAVAILABLE: u32 = 14;
    pub(super) const UNAUTHENTICATED: u32 = 16;
}

/// The body of a unary gRPC request: one uncompressed message, length-prefixed.
pub(crate) fn grpc_frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// What a unary gRPC call ended with, as proxy-wasm hands it to the guest: the status and its
/// message, and (status OK) the response message in `response.body`, the initial metadata in
/// `response.headers`, the trailing metadata in `response.trailers`.
#[derive(Debug, Default)]
pub(crate) struct GrpcOutcome {
    pub(crate) status: u32,
    pub(crate) message: String,
    pub(crate) response: CalloutResponse,
}

impl GrpcOutcome {
    /// A stream whose events stopped without an end (its task was lost).
    pub(crate) fn stream_lost() -> Self {
        Self::failed(grpc_code::UNAVAILABLE, "gRPC stream lost")
    }

    fn failed(status: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            response: CalloutResponse::default(),
        }
    }

    /// Reads a callout's HTTP exchange as gRPC: a failed exchange is `UNAVAILABLE` (or
    /// `DEADLINE_EXCEEDED`); an HTTP status other than 200 maps as gRPC's HTTP mapping
    /// does; else `grpc-status` and `grpc-message` from the trailers (or the headers of a
    /// trailers-only response), and the one message of the body.
    pub(crate) fn from_exchange(result: Result<CalloutResponse, CalloutError>) -> Self {
        let response = match result {
            Ok(response) => response,
            Err(CalloutError::Timeout) => return Self::failed(grpc_code::DEADLINE_EXCEEDED, "gRPC call timed out"),
            Err(error) => return Self::failed(grpc_code::UNAVAILABLE, error.to_string()),
        };
        let value = |pairs: &[(String, Vec<u8>)], name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let http = value(&response.headers, ":status").unwrap_or_default();
        if http != "200" {
            let status = match http.as_str() {
                "400" => grpc_code::INTERNAL,
                "401" => grpc_code::UNAUTHENTICATED,
                "403" => grpc_code::PERMISSION_DENIED,
                "404" => grpc_code::UNIMPLEMENTED,
                "429" | "502" | "503" | "504" => grpc_code::UNAVAILABLE,
                _ => grpc_code::UNKNOWN,
            };
            return Self::failed(status, format!("gRPC call answered with HTTP status {http}"));
        }
        let trailer = |name| value(&response.trailers, name).or_else(|| value(&response.headers, name));
        let Some(status) = trailer("grpc-status") else {
            return Self::failed(grpc_code::UNKNOWN, "gRPC response without grpc-status");
        };
        let Ok(status) = status.trim().parse::<u32>() else {
            return Self::failed(grpc_code::UNKNOWN, format!("gRPC response with grpc-status {status:?}"));
        };
        let message = trailer("grpc-message").map(|m| percent_decode(&m)).unwrap_or_default();
        let mut outcome = Self {
            status,
            message,
            response: CalloutResponse {
                headers: response
                    .headers
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with(':'))
                    .collect(),
                body: Bytes::new(),
                trailers: response.trailers,
            },
        };
        if status != grpc_code::OK {
            return outcome;
        }
        let body = response.body;
        match body.get(..5) {
            Some([0, len @ ..]) => {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                match body.get(5..5 + len) {
                    Some(_) => outcome.response.body = body.slice(5..5 + len),
                    None => return Self::failed(grpc_code::INTERNAL, "gRPC response message truncated"),
                }
            }
            Some(_) => return Self::failed(grpc_code::INTERNAL, "gRPC response message compressed (not offered)"),
            // A unary call that ends OK without a message has an empty one.
            None if body.is_empty() => {}
            None => return Self::failed(grpc_code::INTERNAL, "gRPC response message truncated"),
        }
        outcome
    }
}

/// `grpc-message` travels percent-encoded (the gRPC HTTP/2 protocol): `%XX` back to bytes, read
/// as UTF-8 (lossily); a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&str, &str)], body: &[u8], trailers: &[(&str, &str)]) -> CalloutResponse {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        CalloutResponse {
            headers: pairs(headers),
            body: Bytes::copy_from_slice(body),
            trailers: pairs(trailers),
        }
    }

    #[test]
    fn a_grpc_exchange_reads_as_status_message_and_metadata() {
        let ok = GrpcOutcome::from_exchange(Ok(response(
            &[(":status", "200"), ("x-served-by", "echo")],
            &grpc_frame(b"reply"),
            &[("grpc-status", "0")],
        )));
        assert_eq!((ok.status, &ok.response.body[..]), (0, &b"reply"[..]));
        assert_eq!(ok.response.headers, [("x-served-by".to_owned(), b"echo".to_vec())]);

        // Trailers-only: the status in the headers, its message percent-decoded.
        let denied = GrpcOutcome::from_exchange(Ok(response(
            &[
                (":status", "200"),
                ("grpc-status", "5"),
                ("grpc-message", "100%25 gone %E2%80%94 %zz"),
            ],
            b"",
            &[],
        )));
        assert_eq!((denied.status, denied.message.as_str()), (5, "100% gone \u{2014} %zz"));

        let cases: [(Result<CalloutResponse, CalloutError>, u32); 6] = [
            (Err(CalloutError::Timeout), 4),
            (Err(CalloutError::NoHealthyUpstream("c".to_owned())), 14),
            (Ok(response(&[(":status", "404")], b"", &[])), 12),
            (Ok(response(&[(":status", "503")], b"", &[])), 14),
            (Ok(response(&[(":status", "200")], &grpc_frame(b"x"), &[])), 2),
            (
                Ok(response(
                    &[(":status", "200")],
                    &grpc_frame(b"long")[..6],
                    &[("grpc-status", "0")],
                )),
                13,
            ),
        ];
        for (exchange, status) in cases {
            assert_eq!(GrpcOutcome::from_exchange(exchange).status, status);
        }
    }
}
