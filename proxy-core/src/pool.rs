//! Upstream connections of one worker: keep-alive HTTP/1.1 connections pooled per endpoint,
//! one multiplexed HTTP/2 connection per endpoint, connect timeouts and connection limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use weft_api::UpstreamProtocol;

use crate::body::{BoxError, ProxyBody};
use crate::cluster::{Cluster, Endpoint};
use crate::tls::{CheckedPeer, Stream};

/// Idle HTTP/1.1 connections kept per endpoint and worker.
const MAX_IDLE_PER_ENDPOINT: usize = 128;

/// Why an upstream exchange failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// A circuit breaker refused a new connection.
    #[error("upstream connection limit reached")]
    Overflow,
    /// The TCP connection or HTTP handshake failed.
    #[error("upstream connect failed")]
    Connect(#[source] BoxError),
    /// The connection broke before the response headers.
    #[error("upstream reset before response")]
    Reset(#[source] hyper::Error),
}

/// An endpoint, the protocol spoken to it and the TLS settings of the connection (the
/// connector's id; 0: plaintext), so changed TLS settings never reuse a connection made
/// under the old ones.
type Key = (SocketAddr, UpstreamProtocol, u64);

#[derive(Default)]
struct EndpointPool {
    idle: Vec<Conn<http1::SendRequest<ProxyBody>>>,
    h2: Option<Conn<http2::SendRequest<ProxyBody>>>,
}

/// An upstream connection's sender, with its server's certificate when it is mesh mutual TLS
/// (a connection to a server revoked since is not used again).
struct Conn<S> {
    sender: S,
    peer: Option<CheckedPeer>,
}

impl<S> Conn<S> {
    /// Whether the cluster's mesh now revokes this connection's server; counted when so.
    fn revoked(&mut self, cluster: &Cluster, endpoint: &Endpoint) -> bool {
        let revoked = match (&mut self.peer, cluster.tls_for(endpoint)) {
            (Some(peer), Some(tls)) => tls.revokes(peer),
            _ => false,
        };
        if revoked {
            cluster.stats.cx_revoked.fetch_add(1, Relaxed);
            tracing::info!(cluster = %cluster.name, endpoint = %endpoint.addr, "dropping a pooled connection: its server's certificate was revoked");
        }
        revoked
    }
}

/// The upstream connections of one worker.
#[derive(Default)]
pub(crate) struct Pools {
    endpoints: Mutex<HashMap<Key, EndpointPool>>,
}

impl Pools {
    fn with<R>(&self, key: Key, f: impl FnOnce(&mut EndpointPool) -> R) -> R {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(key).or_default())
    }

    /// Sends `request` to `endpoint`, reusing a pooled connection when one is free.
    /// `upgrade` requests get a connection of their own that never returns to the pool.
    pub(crate) async fn send(
        self: &Arc<Self>,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        match cluster.protocol {
            UpstreamProtocol::Http1 => self.send_h1(cluster, endpoint, request, upgrade).await,
            UpstreamProtocol::Http2 => self.send_h2(cluster, endpoint, request).await,
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        cluster: &Cluster,
        endpoint: &Endpoint,
        mut request: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let key = (
            endpoint.addr,
            UpstreamProtocol::Http1,
            cluster.tls_for(endpoint).map_or(0, |t| t.id),
        );
        loop {
            let idle = if upgrade {
                None
            } else {
                self.with(key, |p| take_idle(&mut p.idle, cluster, endpoint))
            };
            let reused = idle.is_some();
            let Conn { mut sender, peer } = match idle {
                Some(conn) => conn,
                None => connect_h1(cluster, endpoint).await?,
            };
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pooled = (!upgrade && response.status() != StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (self.clone(), key, Conn { sender, peer }));
                    return Ok(response
                        .map(|body| PooledBody::new(body, pooled))
                        .map(crate::body::boxed));
                }
                Err(mut error) => match error.take_message() {
                    // A pooled connection closed under us before the request went out: the
                    // request is intact, so it is safe to send it on another connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Reset(error.into_error())),
                },
            }
        }
    }

    async fn send_h2(
        self: &Arc<Self>,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let key = (
            endpoint.addr,
            UpstreamProtocol::Http2,
            cluster.tls_for(endpoint).map_or(0, |t| t.id),
        );
        let shared = self.with(key, |p| {
            // A revoked server's connection leaves the pool; its streams in flight finish.
            if p.h2
                .as_mut()
                .is_some_and(|c| c.sender.is_closed() || c.revoked(cluster, endpoint))
            {
                p.h2 = None;
            }
            p.h2.as_ref().map(|c| c.sender.clone())
        });
        let mut sender = match shared {
            Some(sender) => sender,
            None => {
                let conn = connect_h2(cluster, endpoint).await?;
                let sender = conn.sender.clone();
                self.with(key, |p| p.h2 = Some(conn));
                sender
            }
        };
        sender.ready().await.map_err(UpstreamError::Reset)?;
        let response = sender.send_request(request).await.map_err(UpstreamError::Reset)?;
        Ok(response.map(crate::body::boxed))
    }

    fn release(&self, key: Key, conn: Conn<http1::SendRequest<ProxyBody>>) {
        self.with(key, |p| {
            if p.idle.len() < MAX_IDLE_PER_ENDPOINT && !conn.sender.is_closed() {
                p.idle.push(conn);
            }
        });
    }
}

/// The most recently used open idle connection whose server is not revoked; the closed and
/// revoked ones met on the way are dropped (which closes them).
fn take_idle(
    idle: &mut Vec<Conn<http1::SendRequest<ProxyBody>>>,
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Option<Conn<http1::SendRequest<ProxyBody>>> {
    while let Some(mut conn) = idle.pop() {
        if !conn.sender.is_closed() && !conn.revoked(cluster, endpoint) {
            return Some(conn);
        }
    }
    None
}

/// Counts a connection against the cluster's limits for as long as it lives.
/// Holds a slot of the cluster's connection limit, and its active-connection gauge, for as
/// long as an upstream connection lives.
pub(crate) struct ConnectionGuard {
    load: Arc<crate::cluster::ClusterLoad>,
    stats: Arc<crate::stats::ClusterStats>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.load.connections.fetch_sub(1, Relaxed);
        self.stats.cx_active.fetch_sub(1, Relaxed);
    }
}

/// Counts a request waiting for a connection.
struct PendingGuard(Arc<crate::cluster::ClusterLoad>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
    }
}

/// A new connection to `endpoint`: TCP, then TLS when the cluster asks for it; with the
/// server's certificate for mesh mutual TLS.
async fn open(
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<(TokioIo<Stream>, ConnectionGuard, Option<CheckedPeer>), UpstreamError> {
    let (stream, guard) = open_tcp(cluster, endpoint).await?;
    let Some(tls) = cluster.tls_for(endpoint) else {
        return Ok((TokioIo::new(Stream::Plain(stream)), guard, None));
    };
    if tls.mutual && !cluster.mesh_tls_ready() {
        cluster.stats.cx_connect_fail.fetch_add(1, Relaxed);
        return Err(UpstreamError::Connect(
            "mutual TLS to the mesh needs a workload certificate, and none was issued yet".into(),
        ));
    }
    let handshake = tls.connect(endpoint.addr.ip(), stream);
    match tokio::time::timeout(cluster.connect_timeout, handshake).await {
        Ok(Ok((stream, peer))) => {
            cluster.stats.tls_handshakes.fetch_add(1, Relaxed);
            Ok((
                TokioIo::new(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(stream)))),
                guard,
                peer,
            ))
        }
        Ok(Err(e)) => {
            cluster.stats.cx_connect_fail.fetch_add(1, Relaxed);
            cluster.stats.tls_handshake_errors.fetch_add(1, Relaxed);
            Err(UpstreamError::Connect(
                format!("TLS handshake with {} failed: {e}", endpoint.addr).into(),
            ))
        }
        Err(_) => {
            cluster.stats.cx_connect_fail.fetch_add(1, Relaxed);
            cluster.stats.tls_handshake_errors.fetch_add(1, Relaxed);
            Err(UpstreamError::Connect(
                format!("TLS handshake with {} timed out", endpoint.addr).into(),
            ))
        }
    }
}

/// A new TCP connection to `endpoint`, within the cluster's circuit breakers (pending
/// connections, connections) and its connect timeout.
pub(crate) async fn open_tcp(
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<(TcpStream, ConnectionGuard), UpstreamError> {
    let load = &cluster.load;
    if load.pending.fetch_add(1, Relaxed) >= cluster.breakers.max_pending_requests {
        load.pending.fetch_sub(1, Relaxed);
        return Err(UpstreamError::Overflow);
    }
    let _pending = PendingGuard(load.clone());
    if load.connections.fetch_add(1, Relaxed) >= cluster.breakers.max_connections {
        load.connections.fetch_sub(1, Relaxed);
        return Err(UpstreamError::Overflow);
    }
    cluster.stats.cx_active.fetch_add(1, Relaxed);
    let guard = ConnectionGuard {
        load: load.clone(),
        stats: cluster.stats.clone(),
    };
    let stream = match tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(endpoint.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            cluster.stats.cx_connect_fail.fetch_add(1, Relaxed);
            return Err(UpstreamError::Connect(Box::new(e)));
        }
        Err(_) => {
            cluster.stats.cx_connect_fail.fetch_add(1, Relaxed);
            return Err(UpstreamError::Connect(
                format!(
                    "connect to {} timed out after {:?}",
                    endpoint.addr, cluster.connect_timeout
                )
                .into(),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    cluster.stats.cx_total.fetch_add(1, Relaxed);
    Ok((stream, guard))
}

async fn connect_h1(
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<Conn<http1::SendRequest<ProxyBody>>, UpstreamError> {
    let (io, guard, peer) = open(cluster, endpoint).await?;
    let (sender, connection) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream http/1.1 connection ended");
        }
        drop(guard);
    });
    Ok(Conn { sender, peer })
}

async fn connect_h2(
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<Conn<http2::SendRequest<ProxyBody>>, UpstreamError> {
    let (io, guard, peer) = open(cluster, endpoint).await?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(Box::new(e)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream http/2 connection ended");
        }
        drop(guard);
    });
    Ok(Conn { sender, peer })
}

pin_project_lite::pin_project! {
    /// A response body that hands its HTTP/1.1 connection back to the pool once read to the end.
    struct PooledBody {
        #[pin]
        inner: Incoming,
        pooled: Option<(Arc<Pools>, Key, Conn<http1::SendRequest<ProxyBody>>)>,
    }
}

impl PooledBody {
    fn new(inner: Incoming, mut pooled: Option<(Arc<Pools>, Key, Conn<http1::SendRequest<ProxyBody>>)>) -> Self {
        if inner.is_end_stream()
            && let Some((pools, key, sender)) = pooled.take()
        {
            pools.release(key, sender);
        }
        Self { inner, pooled }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        let finished = matches!(polled, Poll::Ready(None)) || inner.is_end_stream();
        if finished && let Some((pools, key, sender)) = this.pooled.take() {
            pools.release(key, sender);
        }
        if matches!(polled, Poll::Ready(Some(Err(_)))) {
            this.pooled.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
