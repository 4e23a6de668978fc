//! Clusters: endpoints with their live state (health, outlier ejection, load), load balancing
//! and circuit breakers. State is process-wide (atomics) so every worker sees the same health
//! and the same limits; it carries over a snapshot update for endpoints that stay.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use weft_api::{CircuitBreakers, HashOn, HealthCheck, LbPolicy, OutlierDetection, UpstreamProtocol};

use crate::stats::{ClusterGauges, ClusterStats, Stats};
use crate::tls::ClientFiles;

pub(crate) mod health;
pub(crate) mod lb;

pub(crate) use lb::LbSet;

/// Milliseconds since the process started; the clock for ejection deadlines.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One endpoint and its live state.
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) weight: u32,
    /// A mesh sidecar (gets TLS from clusters with `mesh_endpoints_only`).
    pub(crate) mesh: bool,
    /// Result of active health checking (true when the cluster has none).
    pub(crate) healthy: AtomicBool,
    pub(crate) hc_streak: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejected_until_ms: AtomicU64,
    times_ejected: AtomicU32,
    pub(crate) active_requests: AtomicU32,
}

impl Endpoint {
    fn new(addr: SocketAddr, labels: BTreeMap<String, String>, weight: u32, mesh: bool) -> Self {
        Self {
            addr,
            labels,
            weight,
            mesh,
            healthy: AtomicBool::new(true),
            hc_streak: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            active_requests: AtomicU32::new(0),
        }
    }

    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now
    }

    /// Healthy and not ejected.
    pub(crate) fn is_available(&self, now: u64) -> bool {
        self.healthy.load(Relaxed) && !self.is_ejected(now)
    }
}

/// A cluster as the request path uses it.
pub(crate) struct Cluster {
    pub(crate) name: Arc<str>,
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) connect_timeout: Duration,
    pub(crate) breakers: CircuitBreakers,
    pub(crate) lb_policy: LbPolicy,
    pub(crate) hash_on: Option<HashOn>,
    pub(crate) health_check: Option<HealthCheck>,
    outlier: Option<OutlierDetection>,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// The whole cluster as one load-balancing set.
    pub(crate) all: Arc<LbSet>,
    subsets: HashMap<BTreeMap<String, String>, Arc<LbSet>>,
    pub(crate) stats: Arc<ClusterStats>,
    /// Shared by every snapshot generation that has a cluster of this name, so limits hold
    /// across a snapshot swap.
    pub(crate) load: Arc<ClusterLoad>,
    /// TLS to the endpoints, with the settings it was made from.
    pub(crate) tls: Option<(weft_api::UpstreamTls, Arc<crate::tls::UpstreamConnector>)>,
}

/// Live load of a cluster, for circuit breaking.
#[derive(Default)]
pub(crate) struct ClusterLoad {
    pub(crate) requests: AtomicU32,
    pub(crate) pending: AtomicU32,
    pub(crate) connections: AtomicU32,
}

/// Which outcome an upstream exchange had, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response arrived with this status.
    Status(u16),
    /// Connect failure, reset or timeout: a gateway error without a response.
    LocalGatewayError,
    /// A connection was made (a passthrough connection, which has no response): ends a
    /// streak of gateway errors.
    Connected,
}

impl Cluster {
    /// The TLS connector for `endpoint`, if its connections are TLS.
    pub(crate) fn tls_for(&self, endpoint: &Endpoint) -> Option<&crate::tls::UpstreamConnector> {
        let (_, connector) = self.tls.as_ref()?;
        (!connector.mesh_endpoints_only || endpoint.mesh).then_some(connector.as_ref())
    }

    /// Whether the mesh has issued this proxy its certificate (mutual TLS needs it).
    pub(crate) fn mesh_tls_ready(&self) -> bool {
        self.tls.as_ref().is_some_and(|(_, c)| c.has_certificate())
    }

    /// The load-balancing set for a route's subset (the whole cluster when empty).
    pub(crate) fn subset(&self, labels: &BTreeMap<String, String>) -> Arc<LbSet> {
        if labels.is_empty() {
            return self.all.clone();
        }
        self.subsets.get(labels).cloned().unwrap_or_else(|| {
            Arc::new(LbSet::build(self, |e| {
                labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))
            }))
        })
    }

    /// Records an exchange's outcome, ejecting the endpoint when it crosses a threshold.
    pub(crate) fn record_outcome(&self, endpoint: &Endpoint, outcome: Outcome) {
        let Some(od) = &self.outlier else { return };
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::LocalGatewayError => (true, true),
            Outcome::Connected => {
                endpoint.consecutive_gateway.store(0, Relaxed);
                return;
            }
        };
        let streak_5xx = if is_5xx {
            endpoint.consecutive_5xx.fetch_add(1, Relaxed) + 1
        } else {
            endpoint.consecutive_5xx.store(0, Relaxed);
            0
        };
        let streak_gw = if is_gateway {
            endpoint.consecutive_gateway.fetch_add(1, Relaxed) + 1
        } else {
            endpoint.consecutive_gateway.store(0, Relaxed);
            0
        };
        let tripped = (od.consecutive_5xx > 0 && streak_5xx >= od.consecutive_5xx)
            || (od.consecutive_gateway_errors > 0 && streak_gw >= od.consecutive_gateway_errors);
        if tripped {
            self.eject(endpoint, od);
        }
    }

    fn eject(&self, endpoint: &Endpoint, od: &OutlierDetection) {
        let now = now_ms();
        if endpoint.is_ejected(now) {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let allowed = (self.endpoints.len() * od.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            return;
        }
        let times = endpoint.times_ejected.fetch_add(1, Relaxed) + 1;
        let duration = od.base_ejection_time.saturating_mul(times);
        let until = now.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        endpoint.ejected_until_ms.store(until, Relaxed);
        endpoint.consecutive_5xx.store(0, Relaxed);
        endpoint.consecutive_gateway.store(0, Relaxed);
        self.stats.ejections.fetch_add(1, Relaxed);
        tracing::warn!(cluster = %self.name, endpoint = %endpoint.addr, ejection = ?duration, "outlier ejected");
    }

    pub(crate) fn gauges(&self) -> ClusterGauges {
        let now = now_ms();
        ClusterGauges {
            total: self.endpoints.len(),
            healthy: self.endpoints.iter().filter(|e| e.healthy.load(Relaxed)).count(),
            ejected: self.endpoints.iter().filter(|e| e.is_ejected(now)).count(),
        }
    }
}

/// What a request offers for hashing (ring_hash).
pub(crate) struct HashInput<'a> {
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) source_ip: IpAddr,
    /// A key chosen by a filter (`set_upstream`), used instead of the cluster's `hash_on`.
    pub(crate) key: Option<&'a str>,
}

/// All clusters of one snapshot generation.
#[derive(Default)]
pub(crate) struct ClusterSet {
    pub(crate) by_name: HashMap<String, Arc<Cluster>>,
}

impl ClusterSet {
    /// Builds the clusters of `snapshot`, reusing live endpoint state from `previous` for
    /// endpoints whose cluster, address, labels and weight are unchanged.
    /// A cluster whose TLS settings cannot be used fails the build with its name.
    pub(crate) fn build(
        snapshot: &weft_api::Snapshot,
        previous: Option<&ClusterSet>,
        stats: &Stats,
        tls: &Arc<crate::tls::MeshTls>,
    ) -> Result<Self, (String, crate::tls::TlsError)> {
        let mut subsets_wanted: HashMap<&str, Vec<&BTreeMap<String, String>>> = HashMap::new();
        for table in &snapshot.route_tables {
            for vhost in &table.virtual_hosts {
                for route in &vhost.routes {
                    if let Some(f) = route.forward.as_ref().filter(|f| !f.subset.is_empty()) {
                        subsets_wanted.entry(f.cluster.as_str()).or_default().push(&f.subset);
                    }
                }
            }
        }
        let mut by_name = HashMap::new();
        for config in &snapshot.clusters {
            let old = previous.and_then(|p| p.by_name.get(&config.name));
            let endpoints = config
                .endpoints
                .iter()
                .filter_map(|e| {
                    let addr: SocketAddr = e.address.parse().ok()?;
                    let reused = old.and_then(|o| {
                        o.endpoints.iter().find(|x| {
                            x.addr == addr && x.labels == e.labels && x.weight == e.weight && x.mesh == e.mesh
                        })
                    });
                    Some(
                        reused
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Endpoint::new(addr, e.labels.clone(), e.weight, e.mesh))),
                    )
                })
                .collect();
            // A client certificate from files is read at every build: every snapshot, and when
            // `proxy::watch_client_files` sees the files change.
            let client = match &config.tls {
                Some(wanted) => ClientFiles::read(wanted, &config.name).map_err(|e| (config.name.clone(), e))?,
                None => None,
            };
            let connector = match (&config.tls, old) {
                (None, _) => None,
                // Same settings and files: keep the connector (and its TLS session cache).
                (Some(wanted), Some(old))
                    if old.tls.as_ref().is_some_and(|(c, connector)| {
                        c == wanted
                            && old.protocol == config.protocol
                            && connector.client_digest == client.as_ref().map(|c| c.digest)
                    }) =>
                {
                    old.tls.clone()
                }
                (Some(wanted), _) => Some((
                    wanted.clone(),
                    tls.connector(wanted, config.protocol, &config.name, client)
                        .map_err(|e| (config.name.clone(), e))?,
                )),
            };
            let mut cluster = Cluster {
                tls: connector,
                name: Arc::from(config.name.as_str()),
                protocol: config.protocol,
                connect_timeout: config.connect_timeout,
                breakers: config.circuit_breakers,
                lb_policy: config.lb_policy,
                hash_on: config.hash_on.clone(),
                health_check: config.health_check.clone(),
                outlier: config.outlier_detection.clone(),
                endpoints,
                all: Arc::new(LbSet::default()),
                subsets: HashMap::new(),
                stats: stats.cluster(&config.name),
                load: old.map(|o| o.load.clone()).unwrap_or_default(),
            };
            cluster.all = Arc::new(LbSet::build(&cluster, |_| true));
            for labels in subsets_wanted.get(config.name.as_str()).into_iter().flatten() {
                let set = LbSet::build(&cluster, |e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
                cluster.subsets.insert((*labels).clone(), Arc::new(set));
            }
            by_name.insert(config.name.clone(), Arc::new(cluster));
        }
        Ok(Self { by_name })
    }

    pub(crate) fn gauges(&self) -> BTreeMap<String, ClusterGauges> {
        self.by_name
            .iter()
            .map(|(name, c)| (name.clone(), c.gauges()))
            .collect()
    }
}

/// A round-robin cursor shared by the workers of one set.
#[derive(Default)]
pub(crate) struct Cursor(AtomicUsize);

impl Cursor {
    pub(crate) fn next(&self) -> usize {
        self.0.fetch_add(1, Relaxed)
    }
}
