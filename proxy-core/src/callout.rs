//! HTTP callouts made by filters (proxy-wasm `proxy_http_call`): a request to a cluster of
//! the request's snapshot, sent on the same worker through its pools.

use std::sync::Arc;
use std::time::Duration;

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

    /// Checks a callout before it is sent, so the guest learns of bad arguments at once.
    pub(crate) fn validate(&self, request: &CalloutRequest) -> Result<(), CalloutError> {
        let known = match &self.backend {
            Backend::Real { generation, .. } => generation.clusters.by_name.contains_key(&request.cluster),
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
        if !request.body.is_empty() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(request.body.len()));
        }
        let mut outgoing = Request::new(crate::body::full(request.body));
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
        let response = pools
            .send(&cluster, &endpoint, outgoing, false)
            .await
            .map_err(CalloutError::Upstream)?;
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
}

fn pairs(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}
