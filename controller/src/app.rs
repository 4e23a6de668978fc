//! The controller assembled: a source of intent, the compile pipeline, the gRPC services and
//! the embedded registry, bound to real sockets. `main.rs` parses flags into a
//! [`ControllerConfig`] and runs [`Controller::start`]; tests do the same on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use sha2::Digest as _;
use tokio::sync::watch;

use crate::ca::Authority;
use crate::certs::{Bootstrap, CertificateService};
use crate::compile::{CompileOptions, SystemFilters, compile};
use crate::resolve::Resolver;
use crate::server::{Published, Services};
use crate::source::{Documents, FileSource};
use crate::store::Store;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The directory of intent YAML (local mode), watched for changes.
    pub intent_dir: PathBuf,
    /// Where the config stream and status services listen. Default `127.0.0.1:15010`.
    pub grpc_address: SocketAddr,
    /// Where the embedded OCI registry listens (`None`: no registry). Default
    /// `127.0.0.1:15012`.
    pub registry_address: Option<SocketAddr>,
    /// State on disk: the registry's store (`registry/`) and fetched modules (`modules/`).
    pub data_dir: PathBuf,
    /// Directory holding the first-party filters the compiler emits (`router.wasm`,
    /// `retry.wasm`, `fault.wasm`). They are published into the embedded registry as
    /// `weft/<name>:<version>` and sidecars pull them from there.
    pub filters_dir: PathBuf,
    /// SPIFFE trust domain. Default `cluster.local`.
    pub trust_domain: String,
    /// Lifetime of workload certificates. Default 24 h.
    pub workload_cert_ttl: std::time::Duration,
}

impl ControllerConfig {
    /// A configuration with the defaults above for the given directories.
    pub fn new(intent_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>, filters_dir: impl Into<PathBuf>) -> Self {
        Self {
            intent_dir: intent_dir.into(),
            grpc_address: SocketAddr::from(([127, 0, 0, 1], 15010)),
            registry_address: Some(SocketAddr::from(([127, 0, 0, 1], 15012))),
            data_dir: data_dir.into(),
            filters_dir: filters_dir.into(),
            trust_domain: "cluster.local".to_owned(),
            workload_cert_ttl: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// A running controller. Dropping it stops everything.
pub struct Controller {
    grpc_address: SocketAddr,
    registry_address: Option<SocketAddr>,
    services: Services,
    intent: watch::Receiver<Arc<Published>>,
    stop: Option<watch::Sender<bool>>,
}

impl Controller {
    /// Binds the sockets, publishes the first-party filters, compiles the intent directory
    /// once and starts serving. Runs its tasks on the current tokio runtime.
    ///
    /// # Errors
    /// A socket cannot be bound, a directory cannot be read, or a first-party filter is
    /// missing.
    pub async fn start(config: ControllerConfig) -> anyhow::Result<Self> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        // The registry first: the first-party filters are served from it.
        let mut registry_address = None;
        let registry = weft_registry::server::Registry::open(config.data_dir.join("registry"))
            .with_context(|| format!("opening the registry store in {}", config.data_dir.display()))?;
        if let Some(address) = config.registry_address {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the registry to {address}"))?;
            let bound = listener.local_addr()?;
            registry_address = Some(bound);
            let registry = registry.clone();
            tokio::spawn(registry.serve(listener, stopped(stop_rx.clone())));
            tracing::info!(address = %bound, "registry listening");
        }
        let system_filters = publish_system_filters(&config, &registry, registry_address).await?;

        let source = FileSource::new(&config.intent_dir);
        let mut documents = source
            .spawn()
            .with_context(|| format!("watching the intent directory {}", config.intent_dir.display()))?;
        let resolver = Resolver::new(config.data_dir.join("modules"));
        let options = CompileOptions {
            trust_domain: config.trust_domain.clone(),
            system_filters,
            modules: Default::default(),
        };
        let compiler = Compiler::spawn().context("starting the compile thread")?;
        let mut remembered = Remembered::default();
        let first = build(
            &documents.borrow_and_update(),
            &mut remembered,
            &resolver,
            &options,
            &compiler,
        )
        .await
        .context("compiling the intent")?;
        let _ = compiler.run(release_free_memory).await;
        let (intent_tx, intent_rx) = watch::channel(Arc::new(first));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = documents.changed() => if changed.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
                let docs = documents.borrow_and_update().clone();
                match build(&docs, &mut remembered, &resolver, &options, &compiler).await {
                    Ok(published) => {
                        let previous = intent_tx.send_replace(Arc::new(published));
                        // The previous intent is freed (unless a stream is still encoding a
                        // snapshot from it), then what it and the compile freed is returned.
                        let _ = compiler
                            .run(move || {
                                drop(previous);
                                release_free_memory();
                            })
                            .await;
                    }
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "intent refused; the last compiled intent keeps serving"
                        );
                    }
                }
            }
        });

        // The CA: its root (generated once, kept in data_dir/ca) and the bootstrap tokens of
        // every workload of the intent, rewritten as workloads come and go.
        let ca_dir = config.data_dir.join("ca");
        let authority = Arc::new(
            Authority::load_or_create(&ca_dir, &config.trust_domain, config.workload_cert_ttl)
                .context("starting the certificate authority")?,
        );
        let bootstrap = Arc::new(Bootstrap::load_or_create(&ca_dir).context("loading the bootstrap secret")?);
        bootstrap
            .write_operator_token(&config.data_dir.join(crate::certs::OPERATOR_TOKEN_FILE))
            .context("writing the operator's token")?;
        let tokens_dir = config.data_dir.join("bootstrap");
        let mut workloads = intent_rx.clone();
        let writer = bootstrap.clone();
        tokio::spawn(async move {
            loop {
                // The names only: the intent is not held while the tokens are written (20,000
                // files at 10,000 services, seconds at start) nor while waiting, so a replaced
                // intent is freed when it is replaced.
                let known: Vec<(String, String)> = workloads
                    .borrow_and_update()
                    .mesh
                    .workloads()
                    .iter()
                    .map(|w| (w.namespace.clone(), w.name.clone()))
                    .collect();
                // File work, off the async threads (each token is read back and compared).
                let (writer, dir) = (writer.clone(), tokens_dir.clone());
                let written = tokio::task::spawn_blocking(move || {
                    writer.write_tokens(&dir, known.iter().map(|(ns, name)| (ns.as_str(), name.as_str())));
                })
                .await;
                if let Err(error) = written {
                    tracing::error!(%error, "writing the bootstrap tokens failed");
                }
                if workloads.changed().await.is_err() {
                    return;
                }
            }
        });
        // Every sidecar trusts the CA's roots, plus any root kept in data_dir/ca/trust/*.pem
        // (the old root while a new one is rolled out, see docs/identity.md).
        let mut trust_bundle = vec![authority.trust_bundle().to_owned()];
        trust_bundle.extend(extra_roots(&ca_dir.join("trust"))?);
        let ledger = Arc::new(
            crate::ledger::Ledger::load(&ca_dir.join("ledger.json"), trust_bundle)
                .context("loading the certificate ledger")?,
        );
        let certificates = CertificateService::new(
            authority,
            bootstrap.clone(),
            ledger.clone(),
            intent_rx.clone(),
            config.workload_cert_ttl,
        );

        let services = Services::new(intent_rx.clone(), ledger.security(), bootstrap);
        let listener = tokio::net::TcpListener::bind(config.grpc_address)
            .await
            .with_context(|| format!("binding the gRPC services to {}", config.grpc_address))?;
        let grpc_address = listener.local_addr()?;
        let router = services
            .router()
            .add_service(weft_api::pb::certificates_server::CertificatesServer::new(certificates));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let shutdown = stopped(stop_rx);
        tokio::spawn(async move {
            if let Err(error) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
                tracing::error!(%error, "gRPC server failed");
            }
        });
        tracing::info!(address = %grpc_address, "config stream listening");
        Ok(Self {
            grpc_address,
            registry_address,
            services,
            intent: intent_rx,
            stop: Some(stop_tx),
        })
    }

    /// Where the gRPC services listen.
    pub fn grpc_address(&self) -> SocketAddr {
        self.grpc_address
    }

    /// Where the embedded registry listens.
    pub fn registry_address(&self) -> Option<SocketAddr> {
        self.registry_address
    }

    /// The sidecar table and services.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The current compiled intent.
    pub fn published(&self) -> Arc<Published> {
        self.intent.borrow().clone()
    }

    /// Stops serving.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one compile keeps for the next: each file's parsed resources with the text they were
/// parsed from (only files whose text changed are parsed again), and the diagnostics already
/// logged (each problem is logged once, when it appears).
#[derive(Default)]
struct Remembered {
    files: std::collections::HashMap<String, (Arc<str>, crate::resources::Parsed)>,
    logged: std::collections::HashSet<String>,
}

/// The PEM files in `dir` (sorted by name); none if it does not exist.
fn extra_roots(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

/// The thread every compile runs on, off the async threads (it is CPU work that grows with
/// the mesh).
///
/// One thread, not tokio's blocking pool: glibc's malloc serves each thread from its own arena
/// and memory freed in an arena is reused only by that arena. On the pool, compiles landed on
/// whichever of its threads woke, each built its `Mesh` (150 MiB at 10,000 services, 220 MiB
/// with the garbage of building it) in another arena, and the previous generation, once
/// freed, stayed resident in its own: 1.4 GiB after three edits. On one thread a compile
/// reuses what the generations before it freed, so the arena stops growing at about two
/// generations (0.74 GiB after three edits, without [`release_free_memory`]).
struct Compiler {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Compiler {
    /// Starts the thread; it ends once the `Compiler` is dropped and its jobs are done.
    fn spawn() -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("weft-compile".to_owned())
            .spawn(move || {
                for job in queue {
                    // A panic fails its own job only: its result is never sent (see `run`).
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the compile thread, after the jobs before it. Fails if it panicked.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .map_err(|_| anyhow::anyhow!("the compile thread is gone"))?;
        rx.await.map_err(|_| anyhow::anyhow!("the compiler panicked"))
    }
}

/// Returns the memory malloc holds free to the system (`malloc_trim`), and logs how much.
///
/// glibc only gives back the free memory at the top of an arena; a compile frees a whole
/// `Mesh` generation (150 MiB at 10,000 services) and the garbage of building the next one
/// in the middle of its arena, which would otherwise stay resident until reused.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        let before = resident_bytes();
        // SAFETY: malloc_trim takes no pointer; it returns free pages of malloc's arenas to
        // the kernel and is safe to call from any thread at any time.
        #[allow(unsafe_code, reason = "FFI call to glibc's malloc_trim")]
        unsafe {
            libc::malloc_trim(0);
        }
        let after = resident_bytes();
        tracing::debug!(
            released_mib = before.saturating_sub(after) >> 20,
            resident_mib = after >> 20,
            took = ?started.elapsed(),
            "free memory returned to the system"
        );
    }
}

/// The process's resident set (`VmRSS`), 0 if unknown.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib << 10)
}

/// Parses the documents, resolves module urls, compiles (on the [`Compiler`]'s thread).
/// Fails only if the compiler panicked (a bug): the caller keeps the last compiled intent.
async fn build(
    documents: &Documents,
    remembered: &mut Remembered,
    resolver: &Resolver,
    options: &CompileOptions,
    compiler: &Compiler,
) -> anyhow::Result<Published> {
    let started = std::time::Instant::now();
    let mut store = Store::default();
    let mut diagnostics = Vec::new();
    let mut digest = sha2::Sha256::new();
    remembered
        .files
        .retain(|origin, _| documents.files.contains_key(origin));
    for (origin, text) in &documents.files {
        digest.update(origin.as_bytes());
        digest.update([0]);
        digest.update(text.as_bytes());
        digest.update([0]);
        let resources = match remembered.files.get(origin) {
            Some((seen, resources)) if seen == text => resources.clone(),
            _ => {
                let resources = Store::parse_yaml(origin, text);
                remembered
                    .files
                    .insert(origin.clone(), (text.clone(), resources.clone()));
                resources
            }
        };
        diagnostics.extend(store.insert_parsed(origin, resources));
    }
    let intent_version = crate::hex(&digest.finalize()[..6]);
    let mut options = options.clone();
    options.modules = resolver.resolve(store.module_urls()).await;
    let (mesh, diagnostics) = compiler
        .run(move || {
            let mesh = compile(&store, &options);
            diagnostics.extend(mesh.diagnostics().iter().cloned());
            (mesh, diagnostics)
        })
        .await
        .context("the compiler failed")?;
    let current: std::collections::HashSet<String> = diagnostics.iter().map(ToString::to_string).collect();
    for diagnostic in current.difference(&remembered.logged) {
        tracing::warn!("{diagnostic}");
    }
    let fixed = remembered.logged.difference(&current).count();
    if fixed > 0 {
        tracing::info!(fixed, "problems of the previous intent are gone");
    }
    remembered.logged = current;
    tracing::info!(intent = %intent_version, took = ?started.elapsed(), diagnostics = diagnostics.len(), "intent compiled");
    Ok(Published {
        mesh,
        diagnostics,
        intent_version,
    })
}

/// Publishes `router`, `retry` and `fault` from `filters_dir` into the embedded registry and
/// returns how snapshots name them: pulled from the registry when it listens, else by path.
async fn publish_system_filters(
    config: &ControllerConfig,
    registry: &weft_registry::server::Registry,
    registry_address: Option<SocketAddr>,
) -> anyhow::Result<SystemFilters> {
    let module = async |name: &str| -> anyhow::Result<weft_api::WasmModule> {
        let path = config.filters_dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path).with_context(|| format!("reading the {name} filter at {}", path.display()))?;
        let sha256 = weft_registry::Digest::of(&bytes).hex().to_owned();
        let repository = format!("weft/{name}");
        let digest = registry
            .put_module(&repository, env!("CARGO_PKG_VERSION"), &bytes)
            .await
            .with_context(|| format!("publishing the {name} filter"))?;
        let (file, url) = match registry_address {
            Some(address) => (String::new(), format!("oci://{address}/{repository}@{digest}")),
            None => (path.to_string_lossy().into_owned(), String::new()),
        };
        Ok(weft_api::WasmModule {
            file,
            url,
            sha256,
            vm_config: serde_yaml::Value::Null,
            root_id: String::new(),
            vm_id: None,
        })
    };
    Ok(SystemFilters {
        router: module("router").await?,
        retry: module("retry").await?,
        fault: module("fault").await?,
    })
}
