//! A generation: one snapshot compiled for the request path. Workers read the current
//! generation from a `watch` channel once per request and keep it until the request ends.

use std::collections::HashMap;
use std::sync::Arc;

use weft_api::{Limits, ListenerKind, Snapshot};

use crate::cluster::ClusterSet;
use crate::filter::{FilterChain, FilterError};
use crate::listener::ListenerSockets;
use crate::routes::{CompileError, RouteTable};
use crate::stats::{ListenerStats, Stats};
use crate::tls::MeshTls;

/// A compiled snapshot.
pub(crate) struct Generation {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) listeners: HashMap<String, Listener>,
    pub(crate) clusters: ClusterSet,
    /// Mesh TLS material (shared by every generation).
    pub(crate) tls: Arc<MeshTls>,
}

/// A listener as the request path sees it.
pub(crate) struct Listener {
    pub(crate) kind: ListenerKind,
    pub(crate) routes: Arc<RouteTable>,
    pub(crate) chain: FilterChain,
    pub(crate) limits: Limits,
    pub(crate) stats: Arc<ListenerStats>,
    pub(crate) sockets: Arc<ListenerSockets>,
    /// Mesh mutual TLS: how connections are accepted. `None`: plaintext only.
    pub(crate) mtls: Option<weft_api::ListenerMtls>,
    /// TLS termination with the listener's own certificates (gateways).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// A TLS passthrough listener's routes (its `routes` are empty).
    pub(crate) passthrough: Option<Arc<crate::passthrough::SniTable>>,
}

/// Why a snapshot could not be compiled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error(transparent)]
    Routes(#[from] CompileError),
    #[error(transparent)]
    SniRoutes(#[from] crate::passthrough::CompileError),
    #[error("listener {listener:?}")]
    Filter {
        listener: String,
        #[source]
        source: FilterError,
    },
    #[error("cluster {cluster:?} tls")]
    Tls {
        cluster: String,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("tls")]
    Security(#[source] crate::tls::TlsError),
}

impl Generation {
    /// Compiles `snapshot`; `sockets` holds the bound sockets of each listener by name.
    pub(crate) fn build(
        snapshot: Arc<Snapshot>,
        previous: Option<&Generation>,
        sockets: &HashMap<String, Arc<ListenerSockets>>,
        stats: &Stats,
        wasm: &crate::wasm::WasmHost,
        workers: usize,
        tls: &Arc<MeshTls>,
    ) -> Result<Self, BuildError> {
        tls.check(&snapshot.security).map_err(BuildError::Security)?;
        let clusters = ClusterSet::build(&snapshot, previous.map(|p| &p.clusters), stats, tls)
            .map_err(|(cluster, source)| BuildError::Tls { cluster, source })?;
        let mut tables = HashMap::new();
        for table in &snapshot.route_tables {
            tables.insert(table.name.as_str(), Arc::new(RouteTable::compile(table, &clusters)?));
        }
        let mut listeners = HashMap::new();
        let no_routes = Arc::new(RouteTable::empty());
        for config in &snapshot.listeners {
            let routes = if config.protocol.is_http() {
                tables.get(config.route_table.as_str())
            } else {
                Some(&no_routes)
            };
            let (Some(routes), Some(sockets)) = (routes, sockets.get(&config.name)) else {
                continue; // refused by validation or binding before we get here
            };
            let passthrough = if config.protocol.is_http() {
                None
            } else {
                Some(Arc::new(crate::passthrough::SniTable::compile(config, &clusters)?))
            };
            let tls = match &config.tls {
                Some(tls) => Some(
                    crate::tls::listener_config(tls, config.protocol, &config.name).map_err(BuildError::Security)?,
                ),
                None => None,
            };
            let chain = FilterChain::build(&config.filters, wasm, workers).map_err(|source| BuildError::Filter {
                listener: config.name.clone(),
                source,
            })?;
            listeners.insert(
                config.name.clone(),
                Listener {
                    kind: config.kind,
                    routes: routes.clone(),
                    chain,
                    limits: snapshot.limits,
                    stats: stats.listener(&config.name),
                    sockets: sockets.clone(),
                    mtls: config.mtls.clone(),
                    tls,
                    passthrough,
                },
            );
        }
        Ok(Self {
            snapshot,
            listeners,
            clusters,
            tls: tls.clone(),
        })
    }
}
