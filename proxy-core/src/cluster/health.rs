//! Active health checking: one task per cluster, `GET path` on every endpoint each interval.
//! An endpoint turns unhealthy after `unhealthy_threshold` consecutive failures and healthy
//! again after `healthy_threshold` consecutive successes. Endpoints start healthy and the
//! first round runs at once.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::{Request, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use weft_api::UpstreamProtocol;

use super::{Cluster, Endpoint};
use crate::body::{ProxyBody, empty};

/// Runs the health checks of `cluster` until the task is aborted.
pub(crate) async fn run(cluster: Arc<Cluster>) {
    let Some(hc) = cluster.health_check.clone() else { return };
    loop {
        let checks = cluster.endpoints.iter().map(|endpoint| {
            let cluster = cluster.clone();
            let endpoint = endpoint.clone();
            let hc = hc.clone();
            tokio::spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(hc.timeout, check(&cluster, &endpoint, &hc.path)).await,
                    Ok(Ok(status)) if (200..300).contains(&status)
                );
                record(&cluster, &endpoint, ok, hc.healthy_threshold, hc.unhealthy_threshold);
            })
        });
        for task in checks.collect::<Vec<_>>() {
            let _ = task.await;
        }
        tokio::time::sleep(hc.interval).await;
    }
}

/// Updates an endpoint's streak and health from one check result.
fn record(cluster: &Cluster, endpoint: &Endpoint, ok: bool, healthy_threshold: u32, unhealthy_threshold: u32) {
    let healthy = endpoint.healthy.load(Relaxed);
    if !ok {
        cluster.stats.hc_failures.fetch_add(1, Relaxed);
    }
    if ok == healthy {
        endpoint.hc_streak.store(0, Relaxed);
        return;
    }
    let streak = endpoint.hc_streak.fetch_add(1, Relaxed) + 1;
    let threshold = if ok { healthy_threshold } else { unhealthy_threshold };
    if streak >= threshold {
        endpoint.healthy.store(ok, Relaxed);
        endpoint.hc_streak.store(0, Relaxed);
        tracing::info!(cluster = %cluster.name, endpoint = %endpoint.addr, healthy = ok, "health changed");
    }
}

async fn check(
    cluster: &Cluster,
    endpoint: &Endpoint,
    path: &str,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(endpoint.addr).await?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let request = |uri: String| {
        Request::get(uri)
            .header(header::USER_AGENT, "weft-health-check")
            .body(empty())
    };
    let status = match cluster.protocol {
        UpstreamProtocol::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, ProxyBody>(io).await?;
            tokio::spawn(conn);
            let mut req = request(path.to_owned())?;
            req.headers_mut()
                .insert(header::HOST, http::HeaderValue::from_str(&cluster.name)?);
            req.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            sender.send_request(req).await?.status()
        }
        UpstreamProtocol::Http2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake::<_, _, ProxyBody>(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            sender
                .send_request(request(format!("http://{}{path}", cluster.name))?)
                .await?
                .status()
        }
    };
    Ok(status.as_u16())
}
