//! The HTTP/1.1 accept loop shared by the four services, the per-request log line and small
//! response builders.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::client::ErrorChain;

/// The path every service answers with its health, `200 OK`.
pub const HEALTH_PATH: &str = "/health";

/// Every response body is built in full before it is sent.
pub(crate) type Body = Full<Bytes>;

/// One Bookinfo service: turns a request into a response, never fails.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: Request<Incoming>) -> impl Future<Output = Response<Body>> + Send;
}

/// Accepts connections on `listener` forever, answering each request with `handler` and logging
/// one line per request. Returns only if the task is dropped.
pub(crate) async fn serve<H: Handler>(service: &'static str, listener: TcpListener, handler: H) {
    match listener.local_addr() {
        Ok(addr) => info!(service, "listening on {addr}"),
        Err(error) => warn!(service, error = %error, "listening on an unknown address"),
    }
    let handler = Arc::new(handler);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(logged(service, &*handler, request).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = result {
                debug!(%peer, error = %ErrorChain(&error), "downstream connection ended with an error");
            }
        });
    }
}

async fn logged<H: Handler>(service: &'static str, handler: &H, request: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let response = handler.handle(request).await;
    info!(
        service,
        %method,
        path,
        status = response.status().as_u16(),
        elapsed = ?start.elapsed(),
        request_id,
        "request"
    );
    response
}

/// A response with `body` and `content_type`.
pub(crate) fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response; a value that cannot be serialized becomes a 500.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(error) => {
            warn!(error = %error, "serializing a response failed");
            respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "internal error\n",
            )
        }
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// An HTML page.
pub(crate) fn html(status: StatusCode, page: String) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", page)
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// `404 Not Found`.
pub(crate) fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `405 Method Not Allowed`.
pub(crate) fn method_not_allowed() -> Response<Body> {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

/// Parses the `{id}` of `/prefix/{id}`: `None` if `path` is not under `prefix`, `Some(Err)`
/// if the id is not a number.
pub(crate) fn path_id(path: &str, prefix: &str) -> Option<Result<i64, ()>> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    Some(rest.parse().map_err(drop))
}

#[cfg(test)]
mod tests {
    use super::path_id;

    #[test]
    fn ids_in_paths() {
        assert_eq!(path_id("/details/0", "/details/"), Some(Ok(0)));
        assert_eq!(path_id("/details/-3", "/details/"), Some(Ok(-3)));
        assert_eq!(path_id("/details/x", "/details/"), Some(Err(())));
        assert_eq!(path_id("/details/", "/details/"), None);
        assert_eq!(path_id("/details/0/x", "/details/"), None);
        assert_eq!(path_id("/ratings/0", "/details/"), None);
    }
}
