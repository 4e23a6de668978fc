//! TLS passthrough: a listener that reads each connection's TLS ClientHello, picks a cluster by
//! the server name it asks for (SNI), and relays the connection's bytes to an endpoint as they
//! are. The proxy holds no key and sees no HTTP: the client's TLS session ends at the
//! endpoint. This is what an Istio Gateway server with `tls.mode: PASSTHROUGH` asks for
//! (Envoy's `tls_inspector` listener filter and a `tcp_proxy` per server name).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::{Cluster, ClusterSet, HashInput, LbSet, Outcome};
use crate::routes::HostIndex;
use crate::stats::ListenerStats;

/// How long a client may take to send its ClientHello (Envoy's listener filter timeout).
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// The most bytes read while waiting for a whole ClientHello (a hello spans at most a few
/// records; rustls refuses one over 64 KiB).
const MAX_HELLO_BYTES: usize = 64 * 1024;

/// A passthrough listener's routes, compiled.
pub(crate) struct SniTable {
    names: HostIndex,
    routes: Vec<SniRoute>,
}

struct SniRoute {
    /// At least one weighs more than 0 (validation).
    destinations: Vec<Destination>,
}

struct Destination {
    cluster: Arc<Cluster>,
    lb: Arc<LbSet>,
    weight: u32,
}

/// A snapshot's SNI route named a cluster the validator should have refused.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: SNI route {route} names no known cluster {cluster:?}")]
pub(crate) struct CompileError {
    listener: String,
    route: usize,
    cluster: String,
}

impl SniTable {
    /// Compiles `listener`'s SNI routes against the generation's clusters.
    pub(crate) fn compile(listener: &weft_api::Listener, clusters: &ClusterSet) -> Result<Self, CompileError> {
        let names = HostIndex::new(
            listener
                .sni_routes
                .iter()
                .enumerate()
                .flat_map(|(index, route)| route.server_names.iter().map(move |name| (name.as_str(), index))),
        );
        let mut routes = Vec::with_capacity(listener.sni_routes.len());
        for (index, route) in listener.sni_routes.iter().enumerate() {
            let mut destinations = Vec::with_capacity(route.destinations.len());
            for destination in &route.destinations {
                let cluster = clusters
                    .by_name
                    .get(&destination.cluster)
                    .cloned()
                    .ok_or_else(|| CompileError {
                        listener: listener.name.clone(),
                        route: index,
                        cluster: destination.cluster.clone(),
                    })?;
                destinations.push(Destination {
                    lb: cluster.subset(&destination.subset),
                    cluster,
                    weight: destination.weight,
                });
            }
            routes.push(SniRoute { destinations });
        }
        Ok(Self { names, routes })
    }

    /// The route for a ClientHello's server name: exact, then the longest `*.suffix`, then
    /// `*` (which alone takes a hello without a name).
    fn route(&self, server_name: Option<&str>) -> Option<&SniRoute> {
        let index = match server_name {
            Some(name) => {
                let name = name.to_ascii_lowercase();
                self.names
                    .exact(&name)
                    .or_else(|| self.names.wildcard(&name))
                    .or(self.names.any)
            }
            None => self.names.any,
        };
        self.routes.get(index?)
    }
}

impl SniRoute {
    /// A destination, chosen by weight.
    fn choose(&self) -> Option<&Destination> {
        match self.destinations.as_slice() {
            [only] => Some(only),
            all => crate::cluster::lb::weighted_choice(all.iter(), |d| d.weight),
        }
    }
}

/// Why a passthrough connection was closed without being relayed.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("no TLS ClientHello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("not TLS: {0}")]
    NotTls(rustls::Error),
    #[error("ClientHello larger than {MAX_HELLO_BYTES} bytes")]
    HelloTooLarge,
    #[error("reading the ClientHello: {0}")]
    Read(std::io::Error),
    #[error("no route for server name {0:?}")]
    NoRoute(Option<String>),
    #[error("no healthy endpoint in cluster {0:?}")]
    NoHealthyEndpoint(String),
    #[error("cluster {cluster:?}: {error}")]
    Upstream {
        cluster: String,
        #[source]
        error: crate::pool::UpstreamError,
    },
}

/// Serves one accepted connection of a passthrough listener: routes it by its ClientHello and
/// relays it until either side closes. Nothing is sent back to a client that is refused: the
/// connection is closed, as Envoy does when no filter chain matches.
pub(crate) async fn serve(mut downstream: TcpStream, peer: SocketAddr, table: Arc<SniTable>, stats: &ListenerStats) {
    match connect(&mut downstream, peer, &table).await {
        Ok((mut upstream, _guard, cluster)) => {
            stats.cx_passthrough.fetch_add(1, Relaxed);
            match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
                Ok((sent, received)) => {
                    tracing::debug!(%peer, %cluster, sent, received, "passthrough connection closed");
                }
                Err(error) => tracing::debug!(%peer, %cluster, %error, "passthrough connection ended"),
            }
        }
        Err(error) => {
            stats.cx_refused.fetch_add(1, Relaxed);
            tracing::debug!(%peer, %error, "passthrough connection refused");
        }
    }
}

/// Reads the ClientHello, picks the destination and connects to it, sending it the bytes read
/// so far.
async fn connect(
    downstream: &mut TcpStream,
    peer: SocketAddr,
    table: &SniTable,
) -> Result<(TcpStream, crate::pool::ConnectionGuard, Arc<str>), Refused> {
    let mut hello = Vec::with_capacity(1024);
    let server_name = tokio::time::timeout(HELLO_TIMEOUT, read_client_hello(downstream, &mut hello))
        .await
        .map_err(|_| Refused::HelloTimeout)??;
    let route = table
        .route(server_name.as_deref())
        .ok_or_else(|| Refused::NoRoute(server_name.clone()))?;
    let destination = route.choose().ok_or_else(|| Refused::NoRoute(server_name.clone()))?;
    let cluster = &destination.cluster;
    let headers = HeaderMap::new();
    let hash = HashInput {
        headers: &headers,
        source_ip: peer.ip(),
        key: None,
    };
    let endpoint = destination
        .lb
        .pick(cluster, &hash)
        .ok_or_else(|| Refused::NoHealthyEndpoint(cluster.name.to_string()))?;
    let upstream_error = |error| Refused::Upstream {
        cluster: cluster.name.to_string(),
        error,
    };
    let (mut upstream, guard) = match crate::pool::open_tcp(cluster, &endpoint).await {
        Ok(opened) => {
            cluster.record_outcome(&endpoint, Outcome::Connected);
            opened
        }
        Err(error) => {
            if matches!(error, crate::pool::UpstreamError::Connect(_)) {
                cluster.record_outcome(&endpoint, Outcome::LocalGatewayError);
            }
            return Err(upstream_error(error));
        }
    };
    upstream
        .write_all(&hello)
        .await
        .map_err(|e| upstream_error(crate::pool::UpstreamError::Connect(Box::new(e))))?;
    Ok((upstream, guard, cluster.name.clone()))
}

/// Reads from `stream` into `buf` until `buf` holds a whole ClientHello; returns its server
/// name. The bytes stay in `buf`, to be relayed.
async fn read_client_hello(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<String>, Refused> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < buf.len() {
            let mut rest = &buf[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(error) => return Err(Refused::Read(error)),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(accepted.client_hello().server_name().map(str::to_owned)),
            Ok(None) => {}
            Err((error, _alert)) => return Err(Refused::NotTls(error)),
        }
        if buf.len() >= MAX_HELLO_BYTES {
            return Err(Refused::HelloTooLarge);
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) => {
                return Err(Refused::Read(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the ClientHello ended",
                )));
            }
            Ok(_) => {}
            Err(error) => return Err(Refused::Read(error)),
        }
    }
}
