//! Workers: each a thread with a current-thread tokio runtime, its own `SO_REUSEPORT`
//! listener sockets and its own upstream pools. A connection, and every request on it, stays
//! on the worker that accepted it, so the request path takes no cross-thread locks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use weft_api::ListenerProtocol;

use crate::generation::Generation;
use crate::http::{Connection, WorkerContext};
use crate::listener::ListenerSockets;
use crate::pool::Pools;
use crate::stats::ListenerStats;

/// Keeps a timer pending on the worker's runtime, a few seconds ahead, for as long as it runs.
///
/// tokio's timer wakes its own driver (an `eventfd` write, and one more `epoll_wait` return)
/// whenever a timer is registered that expires before the driver's next planned wake-up, and
/// with no timer pending, any timer does. hyper registers its header-read timeout (30 s) anew
/// for every request on an HTTP/1.1 connection, so an otherwise idle worker paid that wake-up
/// on almost every request. With this timer pending, those registrations expire later than
/// the planned wake-up and cost no system call.
async fn keep_a_timer_pending() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Runs worker `id` until `shutdown` carries a drain deadline; returns once drained.
pub(crate) fn run(
    id: usize,
    generation: watch::Receiver<Arc<Generation>>,
    shutdown: watch::Receiver<Option<Duration>>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let keeper = tokio::spawn(keep_a_timer_pending());
        let context = Arc::new(WorkerContext {
            id,
            generation: generation.clone(),
            pools: Arc::new(Pools::default()),
        });
        let tracker = Arc::new(Tracker::default());
        let mut accepting: HashMap<String, (Arc<ListenerSockets>, JoinHandle<()>)> = HashMap::new();
        let mut generation = generation;
        let mut stop = shutdown.clone();
        loop {
            reconcile(
                id,
                &generation.borrow_and_update(),
                &mut accepting,
                &context,
                &tracker,
                &shutdown,
            );
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { break },
                _ = stop.changed() => break,
            }
        }
        let drain = stop.borrow().unwrap_or_default();
        for (_, (_, task)) in accepting.drain() {
            task.abort();
        }
        let open = tracker.count.load(Relaxed);
        if tokio::time::timeout(drain, tracker.idle()).await.is_err() {
            tracing::warn!(
                worker = id,
                open,
                "drain deadline passed; closing remaining connections"
            );
        } else {
            tracing::debug!(worker = id, open, "drained");
        }
        keeper.abort();
    });
    Ok(())
}

/// Counts a worker's open downstream connections so shutdown can wait for them.
#[derive(Default)]
struct Tracker {
    count: AtomicUsize,
    changed: Notify,
}

impl Tracker {
    fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.count.fetch_add(1, Relaxed);
        TrackerGuard(self.clone())
    }

    async fn idle(&self) {
        loop {
            let notified = self.changed.notified();
            if self.count.load(Relaxed) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct TrackerGuard(Arc<Tracker>);

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// Starts accepting on listeners new in this generation and stops the ones that left it.
fn reconcile(
    id: usize,
    generation: &Generation,
    accepting: &mut HashMap<String, (Arc<ListenerSockets>, JoinHandle<()>)>,
    context: &Arc<WorkerContext>,
    tracker: &Arc<Tracker>,
    shutdown: &watch::Receiver<Option<Duration>>,
) {
    accepting.retain(|name, (sockets, task)| {
        let keep = generation
            .listeners
            .get(name)
            .is_some_and(|l| Arc::ptr_eq(&l.sockets, sockets));
        if !keep {
            task.abort();
        }
        keep
    });
    for (name, listener) in &generation.listeners {
        if accepting.contains_key(name) {
            continue;
        }
        let Some(socket) = listener.sockets.take(id) else {
            continue;
        };
        let socket = match TcpListener::from_std(socket) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(worker = id, listener = %name, %error, "cannot register listener");
                continue;
            }
        };
        let task = tokio::spawn(accept_loop(
            socket,
            name.clone(),
            listener.sockets.protocol,
            context.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
        accepting.insert(name.clone(), (listener.sockets.clone(), task));
    }
}

async fn accept_loop(
    socket: TcpListener,
    name: String,
    protocol: ListenerProtocol,
    context: Arc<WorkerContext>,
    tracker: Arc<Tracker>,
    shutdown: watch::Receiver<Option<Duration>>,
) {
    let listener_name: Arc<str> = Arc::from(name.as_str());
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(listener = %name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let generation = context.generation.borrow().clone();
        let Some(listener) = generation.listeners.get(&name) else {
            continue;
        };
        let stats = listener.stats.clone();
        stats.cx_total.fetch_add(1, Relaxed);
        stats.cx_active.fetch_add(1, Relaxed);
        let guard = tracker.enter();
        if let Some(table) = &listener.passthrough {
            let table = table.clone();
            tokio::spawn(async move {
                crate::passthrough::serve(stream, peer, table, &stats).await;
                stats.cx_active.fetch_sub(1, Relaxed);
                drop(guard);
            });
            continue;
        }
        let local = stream.local_addr().unwrap_or(listener.sockets.addr);
        let limits = listener.limits;
        let mut shutdown = shutdown.clone();
        let listener_name = listener_name.clone();
        let context = context.clone();
        let handshake = match (&listener.tls, &listener.mtls) {
            (Some(own), _) => Handshake::Terminate(own.clone()),
            (None, Some(mtls)) => Handshake::Mesh(mtls.clone()),
            (None, None) => Handshake::None,
        };
        // Not the generation: a connection must not keep an old one alive.
        let mesh_tls = generation.tls.clone();
        tokio::spawn(async move {
            let accepted = match handshake {
                Handshake::None => crate::tls::Accepted {
                    stream: crate::tls::Stream::Plain(stream),
                    mtls: false,
                    principal: None,
                    peer: None,
                    tls: false,
                },
                handshake => {
                    let accept = async {
                        match handshake {
                            Handshake::Mesh(mtls) => crate::tls::accept(stream, &mtls, &mesh_tls, protocol).await,
                            Handshake::Terminate(config) => crate::tls::accept_terminated(stream, config).await,
                            Handshake::None => Err(crate::tls::AcceptError::TlsRefused),
                        }
                    };
                    let accepted = tokio::select! {
                        accepted = accept => accepted,
                        _ = shutdown.wait_for(Option::is_some) => {
                            stats.cx_active.fetch_sub(1, Relaxed);
                            return;
                        }
                    };
                    match accepted {
                        Ok(accepted) => {
                            let counter = if accepted.mtls {
                                &stats.cx_mtls
                            } else if accepted.tls {
                                &stats.cx_tls
                            } else {
                                &stats.cx_plaintext
                            };
                            counter.fetch_add(1, Relaxed);
                            accepted
                        }
                        Err(error) => {
                            tracing::debug!(listener = %listener_name, %peer, %error, "connection refused");
                            stats.cx_refused.fetch_add(1, Relaxed);
                            stats.cx_active.fetch_sub(1, Relaxed);
                            return;
                        }
                    }
                }
            };
            // An inbound mesh peer's connection ends once the peer is revoked.
            let revocation = accepted.peer.map(|peer| Revocation { tls: mesh_tls, peer });
            let peer_ip =
                HeaderValue::from_str(&peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            let connection = Arc::new(Connection {
                peer_ip,
                listener: listener_name,
                peer,
                local,
                worker: context,
                mtls: accepted.mtls,
                client_cert_header: accepted
                    .principal
                    .as_ref()
                    .and_then(|principal| HeaderValue::from_str(&format!("URI={principal}")).ok()),
                principal: accepted.principal,
                tls: accepted.tls,
            });
            let ends = Ends {
                shutdown,
                revocation,
                guard,
                stats,
            };
            serve_connection(accepted.stream, connection, protocol, limits, ends).await;
        });
    }
}

/// What an accepted connection goes through before HTTP.
enum Handshake {
    /// Nothing: plaintext.
    None,
    /// Mesh mutual TLS (or plaintext, as the listener's modes allow).
    Mesh(weft_api::ListenerMtls),
    /// TLS with the listener's own certificates.
    Terminate(Arc<rustls::ServerConfig>),
}

/// Serves HTTP on one accepted connection until it closes.
async fn serve_connection(
    stream: crate::tls::Stream,
    connection: Arc<Connection>,
    protocol: ListenerProtocol,
    limits: weft_api::Limits,
    ends: Ends,
) {
    let service = hyper::service::service_fn(move |request| crate::http::serve(connection.clone(), request));
    let io = TokioIo::new(stream);
    let header_bytes = (limits.max_request_headers_bytes as usize).max(8192);
    match protocol {
        ListenerProtocol::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .max_headers(limits.max_request_headers_count as usize)
                .max_header_size(header_bytes)
                .max_buf_size(header_bytes.max(64 * 1024))
                .serve_connection(io, service)
                .with_upgrades();
            drive(conn, ends, |c| c.graceful_shutdown()).await;
        }
        ListenerProtocol::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.http2_max_concurrent_streams)
                .max_header_list_size(limits.max_request_headers_bytes)
                .serve_connection(io, service);
            drive(conn, ends, |c| c.graceful_shutdown()).await;
        }
        // A passthrough listener's connections never get here (`passthrough::serve`).
        ListenerProtocol::Auto | ListenerProtocol::TlsPassthrough => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .max_headers(limits.max_request_headers_count as usize)
                .max_buf_size(header_bytes);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.http2_max_concurrent_streams)
                .max_header_list_size(limits.max_request_headers_bytes);
            let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
            drive(conn, ends, |c| c.graceful_shutdown()).await;
        }
    }
}

/// Serves one connection; when shutdown begins, asks it to finish gracefully (HTTP/1.1 closes
/// after the in-flight response, HTTP/2 sends GOAWAY) and waits for it.
/// What ends a downstream connection besides its peer: the proxy's drain, and the
/// revocation of its mesh peer.
struct Ends {
    shutdown: watch::Receiver<Option<Duration>>,
    revocation: Option<Revocation>,
    /// Keeps the drain waiting for the connection.
    guard: TrackerGuard,
    stats: Arc<ListenerStats>,
}

/// An inbound mutual TLS connection's peer, watched for revocation.
struct Revocation {
    tls: Arc<crate::tls::MeshTls>,
    peer: crate::tls::PeerCert,
}

impl Revocation {
    /// Resolves once the peer is revoked (checked now, then on every change of the
    /// revocations); never without a revocation.
    async fn revoked(this: Option<&Self>) {
        let Some(this) = this else {
            return std::future::pending().await;
        };
        let mut changes = this.tls.revocations();
        loop {
            // The material is replaced before the change is announced, so a revocation that
            // came after the handshake and before `revocations()` is seen here.
            if this.tls.is_revoked(&this.peer) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

async fn drive<C, E>(conn: C, ends: Ends, graceful: impl FnOnce(Pin<&mut C>))
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Ends {
        mut shutdown,
        revocation,
        guard: _guard,
        stats,
    } = ends;
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = async { let _ = shutdown.wait_for(Option::is_some).await; } => {
            graceful(conn.as_mut());
            conn.await
        }
        () = Revocation::revoked(revocation.as_ref()) => {
            stats.cx_revoked.fetch_add(1, Relaxed);
            tracing::info!(
                peer = revocation.as_ref().and_then(|r| r.peer.identity()).unwrap_or("-"),
                "the peer's certificate was revoked: closing its connection once its requests finish"
            );
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "downstream connection ended");
    }
    stats.cx_active.fetch_sub(1, Relaxed);
}
