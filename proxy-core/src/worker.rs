//! Workers: each a thread with a current-thread tokio runtime, its own `SO_REUSEPORT`
//! listener sockets and its own upstream pools. A connection, and every request on it, stays
//! on the worker that accepted it, so the request path takes no cross-thread locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_api::ListenerProtocol;

use crate::generation::Generation;
use crate::http::{Connection, WorkerContext};
use crate::listener::ListenerSockets;
use crate::pool::Pools;

/// Runs worker `id` until `shutdown` carries a drain deadline; returns once drained.
pub(crate) fn run(
    id: usize,
    generation: watch::Receiver<Arc<Generation>>,
    mut shutdown: watch::Receiver<Option<Duration>>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let context = Arc::new(WorkerContext { generation: generation.clone(), pools: Arc::new(Pools::default()) });
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accepting: HashMap<String, (Arc<ListenerSockets>, JoinHandle<()>)> = HashMap::new();
        let mut generation = generation;
        loop {
            reconcile(id, &generation.borrow_and_update(), &mut accepting, &context, &graceful);
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        let drain = shutdown.borrow().unwrap_or_default();
        for (_, (_, task)) in accepting.drain() {
            task.abort();
            let _ = task.await;
        }
        let Ok(graceful) = Arc::try_unwrap(graceful) else {
            tracing::error!(worker = id, "connections still referenced; closing without drain");
            return;
        };
        let open = graceful.count();
        if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
            tracing::warn!(worker = id, open, "drain deadline passed; closing remaining connections");
        } else {
            tracing::debug!(worker = id, "drained");
        }
    });
    Ok(())
}

/// Starts accepting on listeners new in this generation and stops the ones that left it.
fn reconcile(
    id: usize,
    generation: &Generation,
    accepting: &mut HashMap<String, (Arc<ListenerSockets>, JoinHandle<()>)>,
    context: &Arc<WorkerContext>,
    graceful: &Arc<GracefulShutdown>,
) {
    accepting.retain(|name, (sockets, task)| {
        let keep = generation.listeners.get(name).is_some_and(|l| Arc::ptr_eq(&l.sockets, sockets));
        if !keep {
            task.abort();
        }
        keep
    });
    for (name, listener) in &generation.listeners {
        if accepting.contains_key(name) {
            continue;
        }
        let Some(socket) = listener.sockets.take(id) else { continue };
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
            graceful.clone(),
        ));
        accepting.insert(name.clone(), (listener.sockets.clone(), task));
    }
}

async fn accept_loop(
    socket: TcpListener,
    name: String,
    protocol: ListenerProtocol,
    context: Arc<WorkerContext>,
    graceful: Arc<GracefulShutdown>,
) {
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
        let Some(listener) = generation.listeners.get(&name) else { continue };
        let limits = listener.limits;
        let stats = listener.stats.clone();
        stats.cx_total.fetch_add(1, Relaxed);
        stats.cx_active.fetch_add(1, Relaxed);
        let connection = Arc::new(Connection { listener: name.clone(), peer, worker: context.clone() });
        let service = hyper::service::service_fn(move |request| crate::http::serve(connection.clone(), request));

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_headers(limits.max_request_headers_count as usize)
            .max_buf_size((limits.max_request_headers_bytes as usize).max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_request_headers_bytes);
        let builder = match protocol {
            ListenerProtocol::Http1 => builder.http1_only(),
            ListenerProtocol::Http2 => builder.http2_only(),
            ListenerProtocol::Auto => builder,
        };
        let serving = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let serving = graceful.watch(serving);
        tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::debug!(%error, "downstream connection ended");
            }
            stats.cx_active.fetch_sub(1, Relaxed);
        });
    }
}
