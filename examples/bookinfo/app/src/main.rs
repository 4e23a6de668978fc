//! `bookinfo`: runs one of the four Bookinfo services. See the `weft_bookinfo` crate docs.

use std::io::IsTerminal as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use weft_bookinfo::client::{Client, Peer, Proxy};
use weft_bookinfo::reviews::Version;
use weft_bookinfo::{details, productpage, ratings, reviews};

/// Istio's Bookinfo sample app; each subcommand runs one of its services.
#[derive(Parser)]
#[command(name = "bookinfo")]
struct Cli {
    #[command(subcommand)]
    service: Service,
}

#[derive(Subcommand)]
enum Service {
    /// The web page: calls details and reviews.
    Productpage {
        #[command(flatten)]
        common: Common,
        /// Base URL of the details service.
        #[arg(long, value_name = "URL", default_value = "http://details:9080", value_parser = Peer::parse)]
        details: Peer,
        /// Base URL of the reviews service.
        #[arg(long, value_name = "URL", default_value = "http://reviews:9080", value_parser = Peer::parse)]
        reviews: Peer,
        /// Base URL of the ratings service (used by /api/v1/products/{id}/ratings only).
        #[arg(long, value_name = "URL", default_value = "http://ratings:9080", value_parser = Peer::parse)]
        ratings: Peer,
    },
    /// The book's details.
    Details {
        #[command(flatten)]
        common: Common,
    },
    /// The book's reviews; v2 and v3 call ratings.
    Reviews {
        #[command(flatten)]
        common: Common,
        /// Which version to run: v1 (no stars), v2 (black stars) or v3 (red stars).
        #[arg(long, value_enum)]
        version: Version,
        /// Base URL of the ratings service.
        #[arg(long, value_name = "URL", default_value = "http://ratings:9080", value_parser = Peer::parse)]
        ratings: Peer,
        /// The `podname` in replies [default: $HOSTNAME, else reviews-<version>].
        #[arg(long)]
        podname: Option<String>,
        /// The `clustername` in replies [default: $CLUSTER_NAME, else null].
        #[arg(long)]
        clustername: Option<String>,
    },
    /// The reviewers' star ratings.
    Ratings {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
    /// Send every outgoing call to this HTTP proxy, in absolute form (a sidecar's outbound
    /// listener). Without it, calls go straight to the URL's host and port.
    #[arg(long, value_name = "HOST:PORT", value_parser = Proxy::parse)]
    proxy: Option<Proxy>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(cli.service))
}

async fn run(service: Service) -> anyhow::Result<()> {
    let common = match &service {
        Service::Productpage { common, .. }
        | Service::Details { common }
        | Service::Reviews { common, .. }
        | Service::Ratings { common } => common,
    };
    let listener = TcpListener::bind(common.listen)
        .await
        .with_context(|| format!("binding {}", common.listen))?;
    let client = Client::new(common.proxy.clone());
    let serve = async move {
        match service {
            Service::Productpage {
                details,
                reviews,
                ratings,
                ..
            } => {
                let config = productpage::Config {
                    details,
                    reviews,
                    ratings,
                    client,
                };
                productpage::serve(listener, config).await;
            }
            Service::Details { .. } => details::serve(listener).await,
            Service::Reviews {
                version,
                ratings,
                podname,
                clustername,
                ..
            } => {
                let config = reviews::Config {
                    version,
                    ratings,
                    podname: podname
                        .or_else(|| std::env::var("HOSTNAME").ok())
                        .unwrap_or_else(|| format!("reviews-{version}")),
                    clustername: clustername
                        .or_else(|| std::env::var("CLUSTER_NAME").ok())
                        .unwrap_or_else(|| "null".to_owned()),
                    client,
                };
                reviews::serve(listener, config).await;
            }
            Service::Ratings { .. } => ratings::serve(listener).await,
        }
    };
    // Ctrl-C, or SIGTERM as Kubernetes (or `weftctl demo`) stops a pod: exit 0.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        () = serve => Ok(()),
        signal = tokio::signal::ctrl_c() => signal.context("waiting for ctrl-c"),
        _ = terminate.recv() => Ok(()),
    }
}
