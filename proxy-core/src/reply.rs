//! Local replies: responses the proxy makes itself, each with a reason in `x-weft-reason`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{ProxyBody, full};

/// Header naming why the proxy answered a request itself.
pub const REASON_HEADER: &str = "x-weft-reason";

/// Why the proxy answered a request itself. The `as_str` form is the `x-weft-reason` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The request is malformed (400).
    BadRequest,
    /// The request carries too many or too large headers (431).
    HeadersTooLarge,
    /// The request body is larger than allowed (413).
    PayloadTooLarge,
    /// The method is not supported by the proxy (405).
    MethodNotAllowed,
    /// No route matches the request (404).
    NoRoute,
    /// The cluster has no healthy endpoint (503).
    NoHealthyUpstream,
    /// A circuit breaker of the cluster is open (503).
    UpstreamOverflow,
    /// A connection to the endpoint could not be opened (502).
    UpstreamConnectFailure,
    /// The upstream connection was reset or broke before the response (502).
    UpstreamReset,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// A filter answered the request.
    Filter,
    /// The route answers directly.
    DirectResponse,
    /// The proxy is shutting down or has no configuration (503).
    Unavailable,
    /// A plaintext request for a port that takes mutual TLS only (403).
    MtlsRequired,
}

impl Reason {
    /// The `x-weft-reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::NoRoute => "no_route",
            Reason::NoHealthyUpstream => "no_healthy_upstream",
            Reason::UpstreamOverflow => "upstream_overflow",
            Reason::UpstreamConnectFailure => "upstream_connect_failure",
            Reason::UpstreamReset => "upstream_reset",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::Filter => "filter",
            Reason::DirectResponse => "direct_response",
            Reason::Unavailable => "unavailable",
            Reason::MtlsRequired => "mtls_required",
        }
    }

    /// The status a local reply for this reason carries.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::NoRoute => StatusCode::NOT_FOUND,
            Reason::NoHealthyUpstream | Reason::UpstreamOverflow | Reason::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reason::UpstreamConnectFailure | Reason::UpstreamReset => StatusCode::BAD_GATEWAY,
            Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::Filter | Reason::MtlsRequired => StatusCode::FORBIDDEN,
            Reason::DirectResponse => StatusCode::OK,
        }
    }

    /// Whether the upstream failed (counts against the endpoint for outlier detection).
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Reason::UpstreamConnectFailure | Reason::UpstreamReset | Reason::UpstreamTimeout
        )
    }

    fn body(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad request\n",
            Reason::HeadersTooLarge => "request header fields too large\n",
            Reason::PayloadTooLarge => "payload too large\n",
            Reason::MethodNotAllowed => "method not allowed\n",
            Reason::NoRoute => "no route\n",
            Reason::NoHealthyUpstream => "no healthy upstream\n",
            Reason::UpstreamOverflow => "upstream overflow\n",
            Reason::UpstreamConnectFailure => "upstream connect error\n",
            Reason::UpstreamReset => "upstream reset before response\n",
            Reason::UpstreamTimeout => "upstream request timeout\n",
            Reason::Filter => "denied by filter\n",
            Reason::DirectResponse => "",
            Reason::Unavailable => "unavailable\n",
            Reason::MtlsRequired => "mutual TLS required\n",
        }
    }
}

/// A local reply for `reason` with its standard status and body.
pub(crate) fn local_reply(reason: Reason) -> Response<ProxyBody> {
    build(reason.status(), reason, Bytes::from_static(reason.body().as_bytes()))
}

/// A local reply with an explicit status and body.
pub(crate) fn build(status: StatusCode, reason: Reason, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    response
}
