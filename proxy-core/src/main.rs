//! The `weft-proxy` binary: parses flags, loads the snapshot, runs the proxy until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use clap::Parser;
use weft_api::Snapshot;
use weft_proxy::control::ControlConfig;
use weft_proxy::{Proxy, ProxyConfig, WasmSettings};

/// mimalloc: per request the proxy makes 20–40 small allocations that live as long as the
/// request (more with Wasm filters). With glibc's malloc they cost the worker thread's arena
/// trims and re-faults (`madvise` every few requests); with mimalloc a request costs about 8%
/// less CPU without filters and 19% less with one Wasm filter, at the same RSS (measured with
/// wrk against a 1-worker proxy, see docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weft's data plane proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Snapshot YAML to serve. It is re-read when it changes and on SIGHUP; an invalid file is
    /// refused and the running snapshot keeps serving. Exactly one of `--config` and
    /// `--controller` is given.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "controller",
        conflicts_with = "controller"
    )]
    config: Option<PathBuf>,
    /// The controller's gRPC address (`http://127.0.0.1:15010`): snapshots come from its
    /// config stream, and the last good one is kept in `--state-dir` and served at start.
    #[arg(long, value_name = "URL")]
    controller: Option<String>,
    /// The workload's namespace, sent to the controller.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's service account, sent to the controller.
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Where the last good snapshot from the controller is kept.
    /// Default: `weft-proxy-<node id>` in the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The workload's bootstrap token file (issued by the controller: in local mode
    /// `<data-dir>/bootstrap/<namespace>/<workload>.token`). With it, the sidecar gets its
    /// workload certificate from the controller's CA and renews it at half-life (see `/certs`
    /// on the admin API), and its config stream proves its workload, which a gateway needs to
    /// be sent its TLS private keys. Needs `--controller`.
    #[arg(long, value_name = "FILE", requires = "controller")]
    bootstrap_token: Option<PathBuf>,
    /// A fixed workload certificate chain (PEM, the workload certificate first) instead of
    /// one from the controller's CA: for a proxy without a controller. Needs `--private-key`
    /// and `--trust-bundle`; not rotated (replace the files and restart).
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["private_key", "trust_bundle"],
        conflicts_with = "bootstrap_token"
    )]
    cert_chain: Option<PathBuf>,
    /// The PKCS#8 PEM private key of `--cert-chain`.
    #[arg(long, value_name = "FILE", requires = "cert_chain")]
    private_key: Option<PathBuf>,
    /// The PEM roots peers are verified with, with `--cert-chain`.
    #[arg(long, value_name = "FILE", requires = "cert_chain")]
    trust_bundle: Option<PathBuf>,
    /// The workload the bootstrap token was issued for. Default: `<namespace>/<node id>`.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    workload: Option<String>,
    /// Requested lifetime of the workload certificate, e.g. `1h` (default: the CA's).
    #[arg(long, value_parser = weft_api::parse_duration)]
    cert_ttl: Option<Duration>,
    /// Where modules fetched from a url (`oci://`, `https://`, `file://`) are cached by sha256.
    /// Default: `weft-modules` in the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    module_dir: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Admin API address (`/ready`, `/live`, `/config_dump`, `/stats/prometheus`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// How long in-flight requests may finish after SIGTERM, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = weft_api::parse_duration)]
    drain_timeout: Duration,
    /// Only check the snapshot file and exit.
    #[arg(long)]
    check: bool,
    /// Longest a single call into a Wasm filter may run, e.g. `20ms`.
    #[arg(long, default_value = "20ms", value_parser = weft_api::parse_duration)]
    wasm_deadline: Duration,
    /// Most linear memory one Wasm VM may use, in MiB.
    #[arg(long, default_value_t = 64)]
    wasm_memory_mib: usize,
    /// Where compiled Wasm modules are cached across restarts (`none` to disable).
    /// Default: `weft-wasm-cache` in the system's temporary directory.
    #[arg(long)]
    wasm_cache_dir: Option<String>,
    /// This proxy's node id (the `node.id` property filters read).
    #[arg(long, default_value = "weft-proxy")]
    node_id: String,
    /// Node metadata for filters (`node.metadata.KEY`), repeatable: `NAMESPACE=default`,
    /// `WORKLOAD_NAME=reviews-v1`, `CLUSTER_ID=east`, ...
    #[arg(long = "node-metadata", value_name = "KEY=VALUE", value_parser = key_value)]
    node_metadata: Vec<(String, String)>,
    /// The workload's labels (`node.metadata.LABELS`), repeatable: `app=reviews`, `version=v1`.
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = key_value)]
    node_labels: Vec<(String, String)>,
}

/// `--node-metadata`, plus Istio's `NAMESPACE`, `WORKLOAD_NAME` and `SERVICE_ACCOUNT` keys
/// from `--namespace`, `--node-id` and `--service-account` when not given explicitly.
fn node_metadata(args: &Args) -> std::collections::BTreeMap<String, String> {
    let mut metadata: std::collections::BTreeMap<String, String> = args.node_metadata.iter().cloned().collect();
    metadata
        .entry("NAMESPACE".into())
        .or_insert_with(|| args.namespace.clone());
    metadata
        .entry("WORKLOAD_NAME".into())
        .or_insert_with(|| args.node_id.clone());
    metadata
        .entry("SERVICE_ACCOUNT".into())
        .or_insert_with(|| args.service_account.clone());
    metadata
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let credential = args
        .bootstrap_token
        .clone()
        .map(|token_file| weft_proxy::identity::Credential {
            workload: args
                .workload
                .clone()
                .unwrap_or_else(|| format!("{}/{}", args.namespace, args.node_id)),
            token_file,
        });
    let control = args.controller.as_ref().map(|address| ControlConfig {
        address: address.clone(),
        node_id: args.node_id.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        labels: args.node_labels.iter().cloned().collect(),
        metadata: node_metadata(&args),
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("weft-proxy-{}", args.node_id))),
        credential: credential.clone(),
    });
    let identity = match (&control, credential) {
        (Some(control), Some(credential)) => Some(weft_proxy::identity::IdentityConfig {
            address: control.address.clone(),
            credential,
            validity: args.cert_ttl.unwrap_or_default(),
            rotate_at: 0.5,
        }),
        _ => None,
    };
    let snapshot = match (&args.config, &control) {
        (Some(path), _) => Snapshot::from_yaml_file(path).with_context(|| format!("loading {}", path.display()))?,
        (None, Some(control)) => match weft_proxy::control::load_persisted(control) {
            Ok(Some(snapshot)) => {
                tracing::info!(version = %snapshot.version, path = %control.snapshot_path().display(), "starting from the last good snapshot");
                snapshot
            }
            Ok(None) => Snapshot::default(),
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the persisted snapshot is unusable; starting empty"
                );
                Snapshot::default()
            }
        },
        (None, None) => anyhow::bail!("give --config or --controller"),
    };
    if args.check {
        tracing::info!(version = %snapshot.version, "snapshot is valid");
        return Ok(());
    }
    let cache_dir = match args.wasm_cache_dir.as_deref() {
        Some("none") => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(std::env::temp_dir().join("weft-wasm-cache")),
    };
    let mut config = ProxyConfig {
        admin_address: Some(args.admin),
        drain_timeout: args.drain_timeout,
        wasm: WasmSettings {
            call_deadline: args.wasm_deadline,
            memory_limit: args.wasm_memory_mib << 20,
            cache_dir,
            module_dir: Some(
                args.module_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("weft-modules")),
            ),
        },
        node_id: args.node_id.clone(),
        node_metadata: node_metadata(&args),
        node_labels: args.node_labels.iter().cloned().collect(),
        ..Default::default()
    };
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    // Signal handlers go in before the listeners open, so a SIGTERM right after the first
    // request is a drain, not a kill.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut term, mut int, mut hup) = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        anyhow::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    let wasm = config.wasm.clone();
    let listeners: Vec<String> = snapshot.listeners.iter().map(|l| l.name.clone()).collect();
    let proxy = runtime.block_on(async {
        if let Err(error) = weft_proxy::control::fetch_modules(&snapshot, &wasm).await {
            if control.is_none() {
                anyhow::bail!("fetching modules: {error}");
            }
            tracing::warn!(error, "cannot fetch the last good snapshot's modules; starting empty");
            return Proxy::start(config, Snapshot::default()).context("starting the proxy");
        }
        match Proxy::start(config.clone(), snapshot) {
            Ok(proxy) => Ok(proxy),
            Err(error) if control.is_some() => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot start from the last good snapshot; starting empty"
                );
                Proxy::start(config, Snapshot::default()).context("starting the proxy")
            }
            Err(error) => Err(error).context("starting the proxy"),
        }
    })?;
    for listener in listeners {
        if let Some(addr) = proxy.listener_addr(&listener) {
            tracing::info!(listener = %listener, %addr, "listening");
        }
    }
    if let Some(admin) = proxy.admin_addr() {
        tracing::info!(%admin, "admin listening");
    }
    if let (Some(chain), Some(key), Some(bundle)) = (&args.cert_chain, &args.private_key, &args.trust_bundle) {
        let identity = weft_proxy::identity::from_files(chain, key, bundle).context("loading --cert-chain")?;
        tracing::info!(spiffe_id = %identity.spiffe_id, serial = %identity.serial, "workload certificate loaded");
        proxy.set_identity(identity).context("installing --cert-chain")?;
    }

    runtime.block_on(async {
        if let Some(control) = &control {
            let stream = weft_proxy::control::run(&proxy, control, &wasm);
            let identity = async {
                match &identity {
                    Some(config) => weft_proxy::identity::run(config, |id| {
                        if let Err(error) = proxy.set_identity(id) {
                            tracing::error!(%error, "the issued certificate cannot be used; keeping the previous one");
                        }
                    })
                    .await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                () = stream => {}
                () = identity => {}
            }
            return;
        }
        let Some(path) = &args.config else { return };
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        let mut seen = modified(path);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&proxy, path, &wasm).await,
                _ = watch.tick() => {
                    let now = modified(path);
                    if now != seen {
                        seen = now;
                        reload(&proxy, path, &wasm).await;
                    }
                }
            }
        }
    });
    tracing::info!(drain = ?args.drain_timeout, "shutting down");
    proxy.shutdown();
    Ok(())
}

/// The snapshot file's modification time and length, to notice edits.
fn modified(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Re-reads the snapshot file; an invalid one is refused and the running snapshot stays.
async fn reload(proxy: &Proxy, path: &std::path::Path, wasm: &WasmSettings) {
    let started = std::time::Instant::now();
    let loaded = match Snapshot::from_yaml_file(path) {
        Ok(snapshot) => match weft_proxy::control::fetch_modules(&snapshot, wasm).await {
            Ok(()) => Ok(snapshot),
            Err(error) => Err(anyhow::anyhow!(error)),
        },
        Err(error) => Err(error.into()),
    };
    match loaded.and_then(|s| proxy.update(s).map_err(Into::into)) {
        Ok(()) => tracing::info!(version = %proxy.version(), took = ?started.elapsed(), "snapshot reloaded"),
        Err(error) => tracing::error!(
            error = format!("{error:#}"),
            "reload refused; the running snapshot keeps serving"
        ),
    }
}
