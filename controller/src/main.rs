//! The `weft-controller` binary: parses flags, starts the [`Controller`], runs until
//! SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use weft_controller::{Controller, ControllerConfig};

/// Weft's control plane, in local mode: intent from a directory of YAML.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Directory of intent (Services, Workloads, Istio networking and extension resources,
    /// WasmFilters, FilterChains), watched for changes.
    #[arg(long, value_name = "DIR")]
    intent_dir: PathBuf,
    /// Directory with the first-party filters (`router.wasm`, `retry.wasm`, `fault.wasm`).
    #[arg(long, value_name = "DIR")]
    filters_dir: PathBuf,
    /// State kept across restarts: the registry's store and fetched modules, the CA, the
    /// bootstrap tokens and the operator's token (`operator.token`, for `weftctl cert revoke`).
    #[arg(long, value_name = "DIR", default_value = "weft-controller-data")]
    data_dir: PathBuf,
    /// Address of the config stream and status services.
    #[arg(long, default_value = "127.0.0.1:15010")]
    grpc: SocketAddr,
    /// Address of the embedded OCI registry; `none` disables it (sidecars then read the
    /// first-party filters from `--filters-dir`).
    #[arg(long, default_value = "127.0.0.1:15012")]
    registry: String,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates, e.g. `24h`.
    #[arg(long, default_value = "24h", value_parser = weft_api::parse_duration)]
    workload_cert_ttl: std::time::Duration,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let registry_address = match args.registry.as_str() {
        "none" => None,
        address => Some(
            address
                .parse::<SocketAddr>()
                .map_err(|e| anyhow::anyhow!("--registry {address}: {e}"))?,
        ),
    };
    let config = ControllerConfig {
        grpc_address: args.grpc,
        registry_address,
        trust_domain: args.trust_domain,
        workload_cert_ttl: args.workload_cert_ttl,
        ..ControllerConfig::new(args.intent_dir, args.data_dir, args.filters_dir)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut controller = Controller::start(config).await?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        controller.stop();
        anyhow::Ok(())
    })
}
