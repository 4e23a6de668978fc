//! The proxy as a whole: worker threads, the control thread (admin, health checks), listener
//! sockets and snapshot updates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;
use weft_api::{LoadError, Snapshot};

use crate::generation::Generation;
use crate::listener::ListenerSockets;
use crate::stats::Stats;
use crate::tls::MeshTls;

/// How the proxy process runs (as opposed to what it routes, which is the [`Snapshot`]).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Worker threads, each with its own listeners and pools. Default: one per core.
    pub workers: usize,
    /// Where to serve the admin API. Default: none.
    pub admin_address: Option<SocketAddr>,
    /// How long in-flight requests may run after shutdown begins. Default: 5s.
    pub drain_timeout: Duration,
    /// Bounds on Wasm filters: call deadline, memory cap, compiled-module cache.
    pub wasm: crate::wasm::WasmSettings,
    /// This proxy's node id, readable by filters as `node.id`. Default: `weft-proxy`.
    pub node_id: String,
    /// Node metadata filters read as `node.metadata.<KEY>` (Istio's keys: `NAMESPACE`,
    /// `WORKLOAD_NAME`, `APP_CONTAINERS`, `MESH_ID`, ...). Default: none.
    pub node_metadata: std::collections::BTreeMap<String, String>,
    /// The workload's labels, read as the map `node.metadata.LABELS`. Default: none.
    pub node_labels: std::collections::BTreeMap<String, String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            admin_address: None,
            drain_timeout: Duration::from_secs(5),
            wasm: crate::wasm::WasmSettings::default(),
            node_id: "weft-proxy".to_owned(),
            node_metadata: Default::default(),
            node_labels: Default::default(),
        }
    }
}

/// Why the proxy could not start or take a snapshot. A refused snapshot changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The snapshot is invalid.
    #[error(transparent)]
    Invalid(#[from] LoadError),
    /// A listener could not be bound.
    #[error("cannot bind listener {listener:?} to {address}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The address it asked for.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot could not be compiled.
    #[error("cannot compile snapshot")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A thread or runtime could not be started.
    #[error("cannot start {what}")]
    Runtime {
        /// What failed to start.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// State shared by the control thread and the handle.
pub(crate) struct Shared {
    pub(crate) stats: Stats,
    pub(crate) wasm: crate::wasm::WasmHost,
    pub(crate) draining: AtomicBool,
    pub(crate) generation: watch::Receiver<Arc<Generation>>,
    /// The workload certificate, once the sidecar has one.
    pub(crate) identity: watch::Sender<Option<Arc<crate::identity::WorkloadIdentity>>>,
    /// Mesh TLS material, read at every handshake.
    pub(crate) tls: Arc<MeshTls>,
    /// Publishes each new generation to the workers.
    publish: watch::Sender<Arc<Generation>>,
    /// Serializes generation builds.
    update: Mutex<()>,
    workers: usize,
}

impl Shared {
    /// Compiles `snapshot` into the next generation and publishes it; on error nothing
    /// changes. With `rebuild`, only if the running snapshot is still that very one (a
    /// snapshot compiled again must not undo one applied meanwhile); `Ok(false)` if not.
    fn apply(&self, snapshot: Arc<Snapshot>, rebuild: bool) -> Result<bool, ProxyError> {
        let _serial = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.publish.borrow().clone();
        if rebuild && !Arc::ptr_eq(&previous.snapshot, &snapshot) {
            return Ok(false);
        }
        let sockets = bind_listeners(&snapshot, Some(&previous), self.workers)?;
        let next = Generation::build(
            snapshot,
            Some(&previous),
            &sockets,
            &self.stats,
            &self.wasm,
            self.workers,
            &self.tls,
        )
        .map_err(|e| ProxyError::Build(Box::new(e)))?;
        self.tls
            .set_security(&next.snapshot.security)
            .map_err(|e| ProxyError::Build(Box::new(e)))?;
        tracing::info!(version = %next.snapshot.version, "snapshot applied");
        self.wasm.retain_modules(&next.snapshot);
        self.publish.send_replace(Arc::new(next));
        Ok(true)
    }
}

/// A running proxy. Dropping it shuts it down without draining; call [`Proxy::shutdown`] to
/// let in-flight requests finish.
pub struct Proxy {
    config: ProxyConfig,
    shared: Arc<Shared>,
    shutdown: watch::Sender<Option<Duration>>,
    workers: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

impl Proxy {
    /// Validates `snapshot`, binds its listeners and the admin port, and starts the workers.
    pub fn start(config: ProxyConfig, snapshot: Snapshot) -> Result<Self, ProxyError> {
        snapshot.validate()?;
        let workers = config.workers.max(1);
        let stats = Stats::default();
        let node = crate::wasm::NodeInfo {
            id: config.node_id.clone(),
            metadata: config.node_metadata.clone(),
            labels: config.node_labels.clone(),
        };
        let wasm = crate::wasm::WasmHost::new(config.wasm.clone(), node);
        let tls = MeshTls::new();
        let sockets = bind_listeners(&snapshot, None, workers)?;
        let first = Generation::build(Arc::new(snapshot), None, &sockets, &stats, &wasm, workers, &tls)
            .map_err(|e| ProxyError::Build(Box::new(e)))?;
        tls.set_security(&first.snapshot.security)
            .map_err(|e| ProxyError::Build(Box::new(e)))?;
        let (generation_tx, generation_rx) = watch::channel(Arc::new(first));
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            stats,
            wasm,
            draining: AtomicBool::new(false),
            generation: generation_rx.clone(),
            identity: watch::Sender::new(None),
            tls,
            publish: generation_tx,
            update: Mutex::new(()),
            workers,
        });

        let admin = match config.admin_address {
            Some(addr) => {
                let socket = std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind {
                    listener: "admin".to_owned(),
                    address: addr.to_string(),
                    source,
                })?;
                socket.set_nonblocking(true).map_err(|source| ProxyError::Runtime {
                    what: "admin listener",
                    source,
                })?;
                Some(socket)
            }
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|s| s.local_addr().ok());

        let mut handles = Vec::with_capacity(workers);
        for id in 0..workers {
            let generation = generation_rx.clone();
            let shutdown = shutdown_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("weft-worker-{id}"))
                .spawn(move || {
                    if let Err(error) = crate::worker::run(id, generation, shutdown) {
                        tracing::error!(worker = id, %error, "worker failed to start");
                    }
                })
                .map_err(|source| ProxyError::Runtime {
                    what: "worker thread",
                    source,
                })?;
            handles.push(handle);
        }
        let control = {
            let shared = shared.clone();
            let shutdown = shutdown_rx.clone();
            std::thread::Builder::new()
                .name("weft-control".to_owned())
                .spawn(move || control(shared, admin, shutdown))
                .map_err(|source| ProxyError::Runtime {
                    what: "control thread",
                    source,
                })?
        };
        Ok(Self {
            config: ProxyConfig { workers, ..config },
            shared,
            shutdown: shutdown_tx,
            workers: handles,
            control: Some(control),
            admin_addr,
        })
    }

    /// The bound address of a listener (port 0 resolved).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.publish.borrow().listeners.get(name).map(|l| l.sockets.addr)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The version of the snapshot being served.
    pub fn version(&self) -> String {
        self.shared.publish.borrow().snapshot.version.clone()
    }

    /// Installs the workload certificate (and replaces the previous one): new handshakes use
    /// it, established connections are left alone. A certificate that does not match its key
    /// or does not parse is refused and the previous one stays.
    pub fn set_identity(&self, identity: crate::identity::WorkloadIdentity) -> Result<(), crate::TlsError> {
        let identity = Arc::new(identity);
        self.shared.tls.set_identity(identity.clone())?;
        self.shared.identity.send_replace(Some(identity));
        Ok(())
    }

    /// Applies a new snapshot atomically: new requests use it, in-flight requests finish on
    /// the one they started with. On error nothing changes and the old snapshot keeps serving.
    pub fn update(&self, snapshot: Snapshot) -> Result<(), ProxyError> {
        snapshot.validate()?;
        self.shared.apply(Arc::new(snapshot), false).map(|_| ())
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain_timeout`, then
    /// closes everything and returns.
    pub fn shutdown(mut self) {
        let drain = self.config.drain_timeout;
        self.stop(drain);
    }

    fn stop(&mut self, drain: Duration) {
        self.shared.draining.store(true, Relaxed);
        self.shutdown.send_replace(Some(drain));
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.control.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}

/// Binds the snapshot's listeners, reusing the sockets of listeners whose name, address,
/// kind and protocol are unchanged.
fn bind_listeners(
    snapshot: &Snapshot,
    previous: Option<&Generation>,
    workers: usize,
) -> Result<HashMap<String, Arc<ListenerSockets>>, ProxyError> {
    let mut sockets = HashMap::new();
    for listener in &snapshot.listeners {
        let reused = previous
            .and_then(|p| p.listeners.get(&listener.name))
            .map(|l| &l.sockets)
            .filter(|s| s.configured == listener.address && s.kind == listener.kind && s.protocol == listener.protocol);
        let bound = match reused {
            Some(s) => s.clone(),
            None => Arc::new(
                ListenerSockets::bind(listener, workers).map_err(|source| ProxyError::Bind {
                    listener: listener.name.clone(),
                    address: listener.address.clone(),
                    source,
                })?,
            ),
        };
        sockets.insert(listener.name.clone(), bound);
    }
    Ok(sockets)
}

/// The control thread: admin API and active health checks, restarted per generation.
fn control(shared: Arc<Shared>, admin: Option<std::net::TcpListener>, mut shutdown: watch::Receiver<Option<Duration>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "control runtime failed to start");
            return;
        }
    };
    runtime.block_on(async move {
        let admin = admin.and_then(|socket| match tokio::net::TcpListener::from_std(socket) {
            Ok(socket) => Some(tokio::spawn(crate::admin::serve(socket, shared.clone()))),
            Err(error) => {
                tracing::error!(%error, "admin listener failed");
                None
            }
        });
        let files = tokio::spawn(watch_client_files(shared.clone()));
        let mut generation = shared.generation.clone();
        let mut checks = Vec::new();
        loop {
            for task in checks.drain(..) {
                tokio::task::JoinHandle::abort(&task);
            }
            let current = generation.borrow_and_update().clone();
            for cluster in current.clusters.by_name.values().filter(|c| c.health_check.is_some()) {
                checks.push(tokio::spawn(crate::cluster::health::run(cluster.clone())));
            }
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        // Keep answering /ready with 503 while the workers drain.
        let drain = shutdown.borrow().unwrap_or_default();
        for task in checks {
            task.abort();
        }
        files.abort();
        tokio::time::sleep(drain.min(Duration::from_millis(100))).await;
        if let Some(admin) = admin {
            admin.abort();
        }
    });
}

/// How often the client certificate files of `mutual` TLS clusters are checked for change.
const CLIENT_FILES_POLL: Duration = Duration::from_secs(1);

/// Keeps the client certificates of `mutual` TLS clusters as their files are: when a file
/// changes (a rotated certificate, as a secret volume updates it), the current snapshot is
/// compiled again with the new files, through the same all-or-nothing path as a new
/// snapshot. New connections present the new certificate; established ones carry on (as
/// Envoy does with certificates it watches). Files that cannot be used (unreadable, a key that
/// is not the certificate's, as between the writes of a rotation) are logged and the previous
/// certificate stays, until the files change again.
async fn watch_client_files(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(CLIENT_FILES_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The files' digests a rebuild failed on: not retried until they change.
    let mut refused: Option<Vec<[u8; 32]>> = None;
    loop {
        tick.tick().await;
        let current = shared.publish.borrow().clone();
        let mut changed = false;
        let mut now = Vec::new();
        for cluster in current.clusters.by_name.values() {
            let Some((wanted, connector)) = &cluster.tls else {
                continue;
            };
            let Some(held) = connector.client_digest else { continue };
            match crate::tls::ClientFiles::digest_now(wanted, &cluster.name) {
                Ok(Some(digest)) => {
                    changed |= digest != held;
                    now.push(digest);
                }
                Ok(None) => {}
                // Mid-rotation, perhaps: the next tick looks again.
                Err(error) => tracing::debug!(cluster = %cluster.name, %error, "client certificate files unreadable"),
            }
        }
        now.sort_unstable();
        if !changed || refused.as_ref() == Some(&now) {
            continue;
        }
        let snapshot = current.snapshot.clone();
        drop(current);
        let applying = shared.clone();
        match tokio::task::spawn_blocking(move || applying.apply(snapshot, true)).await {
            Ok(Ok(true)) => {
                tracing::info!("client certificate files changed: new connections present the new certificate");
                shared.stats.client_files_reloads[0].fetch_add(1, Relaxed);
                refused = None;
            }
            // A new snapshot came meanwhile; it read the files itself.
            Ok(Ok(false)) => refused = None,
            Ok(Err(error)) => {
                let error = anyhow::Error::from(error);
                tracing::warn!(
                    error = format!("{error:#}"),
                    "client certificate files changed and cannot be used; the previous certificate stays"
                );
                shared.stats.client_files_reloads[1].fetch_add(1, Relaxed);
                refused = Some(now);
            }
            Err(error) => tracing::error!(%error, "rebuilding for new client certificate files failed"),
        }
    }
}
