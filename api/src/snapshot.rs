//! The snapshot: everything one proxy runs — listeners, route tables, clusters, filters, limits.
//!
//! A snapshot is immutable and versioned. The proxy swaps whole snapshots atomically; a
//! request keeps the snapshot it started with until it ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::{serde_duration, serde_opt_duration};

mod tls;
pub(crate) mod validate;

pub use tls::{
    ListenerMtls, MtlsMode, Security, ServerTls, ServerTlsMode, TlsCertificate, UpstreamTls, UpstreamTlsMode,
    normalize_serial,
};

pub use validate::{LoadError, ValidationError};

/// Everything one proxy runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Opaque version label, reported in `/config_dump` and ACKs.
    #[serde(default)]
    pub version: String,
    /// Listeners to accept traffic on.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Named route tables; a listener refers to one by name.
    #[serde(default)]
    pub route_tables: Vec<RouteTable>,
    /// Upstream clusters; routes forward to them by name. Shared, so that a snapshot
    /// assembled from parts (see [`crate::parts`]) reuses the clusters it already holds.
    #[serde(default, with = "shared_clusters")]
    pub clusters: Vec<Arc<Cluster>>,
    /// Limits on downstream requests, shared by every listener.
    #[serde(default)]
    pub limits: Limits,
    /// Trust bundle and revocations for mesh mutual TLS.
    #[serde(default, skip_serializing_if = "Security::is_empty")]
    pub security: Security,
}

/// Where and how traffic is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in stats and logs.
    pub name: String,
    /// Socket address to bind (`127.0.0.1:15001`; port 0 picks a free port).
    pub address: String,
    /// Which traffic this listener takes; decides header handling (see [`ListenerKind`]).
    #[serde(default)]
    pub kind: ListenerKind,
    /// HTTP versions accepted, or TLS passthrough. Default: auto-detect HTTP/1.1 or HTTP/2
    /// (prior knowledge).
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Name of the route table that routes this listener's requests. Required, except on a
    /// `tls_passthrough` listener, which has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route_table: String,
    /// Where a `tls_passthrough` listener sends each connection, by the server name (SNI)
    /// of its TLS ClientHello. Only on `tls_passthrough` listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<SniRoute>,
    /// HTTP filters run on every request, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
    /// Mesh mutual TLS on this listener. Default: none (plaintext only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<ListenerMtls>,
    /// TLS termination with the listener's own certificates (gateways). Exclusive with
    /// `mtls`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
}

/// Which traffic a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    /// From the local app to the mesh; also serves HTTP proxy (absolute-form) requests.
    #[default]
    Outbound,
    /// From mesh peers to the local app.
    Inbound,
    /// Edge traffic entering or leaving the mesh; `x-forwarded-proto` is set, not trusted.
    Gateway,
}

/// What a listener speaks: HTTP versions, or TLS passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (h2c with prior knowledge).
    Http2,
    /// HTTP/1.1 or HTTP/2, detected from the connection preface.
    #[default]
    Auto,
    /// TLS the proxy does not terminate (a Gateway server with `tls.mode: PASSTHROUGH`): the
    /// server name of the ClientHello picks a cluster from `sni_routes`, and the connection's
    /// bytes are relayed to one of its endpoints as they are. No HTTP, no filters.
    TlsPassthrough,
}

impl ListenerProtocol {
    /// Whether the listener serves HTTP (all but `tls_passthrough`).
    pub fn is_http(self) -> bool {
        self != Self::TlsPassthrough
    }
}

/// A `tls_passthrough` listener's route: connections whose ClientHello names one of
/// `server_names` go to one of `destinations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// Server names: exact (`api.example.com`), a leading wildcard (`*.example.com`, one or
    /// more labels) or `*` (any name, and a ClientHello without one). Matched case-insensitively;
    /// an exact name wins over wildcards, a longer wildcard over a shorter one.
    pub server_names: Vec<String>,
    /// Clusters a connection goes to, chosen by weight.
    pub destinations: Vec<SniDestination>,
}

/// One destination of an [`SniRoute`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniDestination {
    /// Name of the cluster. Its endpoints get the connection over plain TCP: the bytes are the
    /// client's TLS, so the cluster's own `tls` does not apply.
    pub cluster: String,
    /// Only endpoints carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset: BTreeMap<String, String>,
    /// Relative weight. Default: 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// An HTTP filter in a listener's chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Name of this filter instance, used in logs, stats and as the proxy-wasm plugin name.
    pub name: String,
    /// A filter built into the proxy, by type name (for example `headers`). Exactly one of
    /// `native` and `wasm` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<String>,
    /// A proxy-wasm module. Exactly one of `native` and `wasm` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmModule>,
    /// The filter's configuration. A Wasm filter receives it in `on_configure`: a string as
    /// is, anything else as JSON.
    #[serde(default, skip_serializing_if = "serde_yaml::Value::is_null")]
    pub config: serde_yaml::Value,
    /// What happens to a request when the filter fails (trap, deadline, memory cap).
    /// Default: `fail_closed`.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
}

/// Where a Wasm module comes from and how its VM is set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmModule {
    /// Path of a local `.wasm` file. Exactly one of `file` and `url` is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// Where the proxy fetches the module: `oci://registry/repository:tag` or
    /// `oci://registry/repository@sha256:<digest>` (an OCI Wasm image), `file:///path`, or
    /// `http://` / `https://`. Fetched modules are cached on disk by sha256. Exactly one of
    /// `file` and `url` is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Expected sha256 of the module's bytes, lowercase hex; a mismatch rejects the snapshot.
    pub sha256: String,
    /// Passed to `on_vm_start`: a string as is, anything else as JSON.
    #[serde(default, skip_serializing_if = "serde_yaml::Value::is_null")]
    pub vm_config: serde_yaml::Value,
    /// The root context id the module's root context is created under. Default: empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_id: String,
    /// VMs with the same id share shared data and queues. Default: the filter's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
}

/// What a failing filter means for requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The request gets a local 503; the VM is recreated for later requests.
    #[default]
    FailClosed,
    /// The filter is skipped for the request; the VM is recreated for later requests.
    FailOpen,
    /// As `fail_closed`, and the VM is recreated with exponential backoff; after repeated
    /// crashes the filter stays down (fail closed) until the next snapshot.
    Reload,
}

/// A named set of virtual hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Unique name, referred to by listeners.
    pub name: String,
    /// Virtual hosts, chosen by the request's authority.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
}

/// Routes for a set of authorities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Name, used in logs.
    pub name: String,
    /// Authorities served: exact (`reviews`, `reviews:9080`), `*`, a suffix wildcard
    /// (`*.example.com`) or a prefix wildcard (`reviews.*`). Exact beats suffix beats
    /// prefix beats `*`; a port in the request authority is ignored when no entry names it.
    pub domains: Vec<String>,
    /// Routes tried in order; the first that matches wins.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A match and what to do with the requests it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name, used in logs and exposed to filters.
    #[serde(default)]
    pub name: String,
    /// Which requests this route takes. Default: all.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Send the request to a cluster. Exactly one of `forward` and `direct_response` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    /// Answer locally. Exactly one of `forward` and `direct_response` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Filters of the listener's chain skipped for this route, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_filters: Vec<String>,
}

/// Conditions on a request; all must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Condition on the path (without the query). Default: any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Conditions on request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A condition on the path; exactly one field is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// The path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole path matches this regular expression (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A condition on a request header; at most one of `exact`, `prefix`, `regex` is set, and
/// with none the header only has to be present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// The value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole value matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Match when the condition does *not* hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// Forwarding to a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// Name of the cluster.
    pub cluster: String,
    /// Only endpoints carrying all these labels (a subset, as a DestinationRule names one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset: BTreeMap<String, String>,
    /// Time allowed from sending the request until the response headers arrive; a request
    /// over it gets 504. Default: none (streams may run as long as they like).
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Replaces the matched path prefix (for `prefix` matches) before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Replaces the authority (`Host`) before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
}

/// A response produced by the proxy itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response body. Default: empty.
    #[serde(default)]
    pub body: String,
    /// Extra response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A set of upstream endpoints that serve one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name, referred to by routes.
    pub name: String,
    /// HTTP version spoken to the endpoints. Default: HTTP/1.1.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is picked. Default: round robin.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// What `ring_hash` hashes; required with it, refused with any other policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Time allowed to open a TCP connection; over it the request gets 502. Default: 5s.
    #[serde(default = "default_connect_timeout", with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Limits beyond which requests get 503 immediately. Default: 1024 each.
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    /// Active health checking. Default: none (every endpoint is healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of failing endpoints. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints. Default: none (plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

pub(crate) fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// HTTP version spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive pooling.
    #[default]
    Http1,
    /// HTTP/2 (h2c prior knowledge), requests multiplexed on one connection per endpoint.
    Http2,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port`.
    pub address: String,
    /// Labels, matched by route subsets (for example `version: v1`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Relative share of traffic, at least 1. Default: 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The endpoint is a mesh sidecar that accepts mutual TLS (see
    /// [`UpstreamTls::mesh_endpoints_only`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh: bool,
}

pub(crate) fn default_weight() -> u32 {
    1
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer active requests.
    LeastRequest,
    /// Consistent hashing on a ring (see `hash_on`): the same key reaches the same endpoint.
    RingHash,
    /// Weighted random.
    Random,
}

/// What `ring_hash` hashes; exactly one field is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    /// The value of this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The value of this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The downstream client's IP address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_ip: bool,
}

/// Per-cluster limits; a request past one gets 503 with reason `upstream_overflow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Open connections to the cluster; a request that needs one more gets 503.
    #[serde(default = "default_limit")]
    pub max_connections: u32,
    /// Requests waiting for a connection, across workers.
    #[serde(default = "default_limit")]
    pub max_pending_requests: u32,
    /// Requests in flight to the cluster, across workers.
    #[serde(default = "default_limit")]
    pub max_requests: u32,
}

fn default_limit() -> u32 {
    1024
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: default_limit(),
            max_pending_requests: default_limit(),
            max_requests: default_limit(),
        }
    }
}

/// Active HTTP health checking of a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with `GET`; a 2xx answer is a success.
    pub path: String,
    /// Time between checks of one endpoint. Default: 5s.
    #[serde(default = "default_hc_interval", with = "serde_duration")]
    pub interval: Duration,
    /// Time allowed for one check. Default: 1s.
    #[serde(default = "default_hc_timeout", with = "serde_duration")]
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy endpoint healthy. Default: 1.
    #[serde(default = "default_one")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy. Default: 2.
    #[serde(default = "default_two")]
    pub unhealthy_threshold: u32,
}

pub(crate) fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
pub(crate) fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
pub(crate) fn default_one() -> u32 {
    1
}
pub(crate) fn default_two() -> u32 {
    2
}

/// Passive outlier detection: endpoints that keep failing are ejected for a while.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (including local 502/503/504) that eject. 0 disables.
    /// Default: 5.
    #[serde(default = "default_five")]
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502, 503, 504, connect failures, resets) that eject.
    /// 0 disables. Default: 0.
    #[serde(default)]
    pub consecutive_gateway_errors: u32,
    /// Ejection time, multiplied by the number of times the endpoint was ejected. Default: 30s.
    #[serde(default = "default_base_ejection", with = "serde_duration")]
    pub base_ejection_time: Duration,
    /// Most endpoints of the cluster ejected at once, in percent; at least one endpoint may
    /// always be ejected. Default: 10.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

pub(crate) fn default_five() -> u32 {
    5
}
pub(crate) fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
pub(crate) fn default_max_ejection_percent() -> u32 {
    10
}

/// Limits on downstream requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Total size of a request's header section; over it the request gets 431. At least
    /// 8 KiB. Default: 60 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_request_headers_bytes: u32,
    /// Number of request headers; over it the request gets 431. Default: 100.
    #[serde(default = "default_max_header_count")]
    pub max_request_headers_count: u32,
    /// Request body size; a larger declared body gets 413, a larger streamed body is reset.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Most body bytes buffered when a filter asks for a whole body. Default: 1 MiB.
    #[serde(default = "default_max_buffer")]
    pub max_buffered_body_bytes: u32,
    /// Concurrent streams per downstream HTTP/2 connection. Default: 100.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
}

fn default_max_header_bytes() -> u32 {
    60 * 1024
}
fn default_max_header_count() -> u32 {
    100
}
fn default_max_buffer() -> u32 {
    1024 * 1024
}
fn default_h2_streams() -> u32 {
    100
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_headers_bytes: default_max_header_bytes(),
            max_request_headers_count: default_max_header_count(),
            max_request_body_bytes: None,
            max_buffered_body_bytes: default_max_buffer(),
            http2_max_concurrent_streams: default_h2_streams(),
        }
    }
}

impl Snapshot {
    /// Parses YAML and validates the result; errors name the offending field's path.
    pub fn from_yaml(text: &str) -> Result<Self, LoadError> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let snapshot: Snapshot = serde_path_to_error::deserialize(deserializer).map_err(|e| LoadError::Parse {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        snapshot.validate()?;
        Ok(snapshot)
    }

    /// Reads, parses and validates a YAML file.
    pub fn from_yaml_file(path: &std::path::Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Checks every cross-reference and value; returns all problems, each with its path.
    pub fn validate(&self) -> Result<(), LoadError> {
        validate::validate(self)
    }

    /// Looks up a cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name).map(|c| &**c)
    }
}

impl Listener {
    /// The parsed bind address. Valid after [`Snapshot::validate`].
    pub fn socket_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.address.parse()
    }
}

/// Serde for `Vec<Arc<Cluster>>`, as a plain sequence of clusters.
mod shared_clusters {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Cluster;

    pub(super) fn serialize<S: Serializer>(clusters: &[Arc<Cluster>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(clusters.iter().map(|c| &**c))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Arc<Cluster>>, D::Error> {
        Ok(Vec::<Cluster>::deserialize(deserializer)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}
