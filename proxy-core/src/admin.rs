//! The admin listener: `/ready`, `/live`, `/config_dump` and `/stats/prometheus`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::{ProxyBody, full};
use crate::proxy::Shared;

/// Serves the admin API on `socket` until the task is aborted.
pub(crate) async fn serve(socket: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(shared.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    if request.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n".to_owned()));
    }
    let generation = shared.generation.borrow().clone();
    Ok(match request.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".to_owned()),
        "/ready" => {
            if shared.draining.load(Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
            } else {
                text(StatusCode::OK, "ready\n".to_owned())
            }
        }
        "/config_dump" => {
            let listeners: serde_json::Map<String, serde_json::Value> = generation
                .listeners
                .iter()
                .map(|(name, l)| (name.clone(), serde_json::Value::String(l.sockets.addr.to_string())))
                .collect();
            let dump = serde_json::json!({
                "version": generation.snapshot.version,
                "bound_listeners": listeners,
                "snapshot": &*generation.snapshot,
            });
            let body = serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        "/stats/prometheus" => {
            let mut body = shared.stats.render(&generation.clusters.gauges());
            shared.wasm.render(&mut body);
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/certs" => {
            let identity = shared.identity.borrow().clone();
            let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let dump = match identity {
                Some(id) => serde_json::json!({
                    "spiffe_id": id.spiffe_id,
                    "serial": id.serial,
                    "issued_unix": unix(id.issued),
                    "not_after_unix": unix(id.not_after),
                    "cert_chain_pem": id.chain_pem,
                    "trust_bundle_pem": id.trust_bundle_pem,
                }),
                None => serde_json::json!({}),
            };
            let body = serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin paths: /ready /live /config_dump /certs /stats/prometheus\n".to_owned(),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    response
}
