//! The `weft-proxy` binary: parses flags, loads the snapshot, runs the proxy until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use weft_api::Snapshot;
use weft_proxy::{Proxy, ProxyConfig};

/// Weft's data plane proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Snapshot YAML to serve. It is re-read on SIGHUP; an invalid file is refused and the
    /// running snapshot keeps serving.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let snapshot =
        Snapshot::from_yaml_file(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    if args.check {
        tracing::info!(version = %snapshot.version, "snapshot is valid");
        return Ok(());
    }
    let mut config = ProxyConfig {
        admin_address: Some(args.admin),
        drain_timeout: args.drain_timeout,
        ..Default::default()
    };
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    let proxy = Proxy::start(config, snapshot).context("starting the proxy")?;
    for listener in proxy_listeners(&args.config) {
        if let Some(addr) = proxy.listener_addr(&listener) {
            tracing::info!(listener = %listener, %addr, "listening");
        }
    }
    if let Some(admin) = proxy.admin_addr() {
        tracing::info!(%admin, "admin listening");
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match Snapshot::from_yaml_file(&args.config) {
                    Ok(snapshot) => match proxy.update(snapshot) {
                        Ok(()) => tracing::info!(version = %proxy.version(), "reloaded"),
                        Err(error) => tracing::error!(error = %anyhow::Error::from(error), "reload refused; old snapshot keeps serving"),
                    },
                    Err(error) => tracing::error!(error = %anyhow::Error::from(error), "reload refused; old snapshot keeps serving"),
                },
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!(drain = ?args.drain_timeout, "shutting down");
    proxy.shutdown();
    Ok(())
}

fn proxy_listeners(path: &std::path::Path) -> Vec<String> {
    Snapshot::from_yaml_file(path)
        .map(|s| s.listeners.into_iter().map(|l| l.name).collect())
        .unwrap_or_default()
}
