//! Istio's networking resources (`networking.istio.io` v1, v1beta1, v1alpha3):
//! VirtualService, DestinationRule, Gateway, ServiceEntry, WorkloadEntry.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::de;
use super::schema::{Field, Node, SCALAR, SCALAR_MAP, SCALARS};

// ---------------------------------------------------------------------------------------------
// VirtualService

/// `VirtualService.spec`: HTTP routing for a set of hosts.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Hosts the routes apply to: short names (resolved in the VirtualService's namespace),
    /// FQDNs, wildcards (`*.example.com`, `*`).
    #[serde(default, deserialize_with = "de::strings")]
    pub hosts: Vec<String>,
    /// Gateways (`name` or `namespace/name`) and/or `mesh` (the sidecars). Empty: `mesh`.
    #[serde(default, deserialize_with = "de::strings")]
    pub gateways: Vec<String>,
    /// HTTP routes, tried in order.
    #[serde(default, deserialize_with = "de::list")]
    pub http: Vec<HttpRoute>,
    /// TLS routes, by the server name of a connection's ClientHello: what passthrough
    /// Gateway servers relay (sidecars route HTTP only).
    #[serde(default, deserialize_with = "de::list")]
    pub tls: Vec<TlsRoute>,
    /// Namespaces whose sidecars see the routes (`.` own, `*` all). Empty: all.
    #[serde(default, deserialize_with = "de::strings")]
    pub export_to: Vec<String>,
}

/// One TLS route (Istio's `TLSRoute`): connections whose ClientHello matches go to the
/// weighted destinations, relayed as they are.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Match blocks (OR); at least one.
    #[serde(default, rename = "match", deserialize_with = "de::list")]
    pub matches: Vec<TlsMatch>,
    /// Weighted destinations (`headers` do not apply: there is no HTTP).
    #[serde(default, deserialize_with = "de::list")]
    pub route: Vec<HttpRouteDestination>,
}

/// A TLS match block (Istio's `TLSMatchAttributes`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatch {
    /// Server names (SNI) matched: exact or `*.suffix`, `*`; each within the VirtualService's
    /// hosts.
    #[serde(default, deserialize_with = "de::strings")]
    pub sni_hosts: Vec<String>,
    /// The gateway port the connection came to.
    #[serde(default)]
    pub port: Option<u16>,
    /// Gateways this block applies to, instead of the VirtualService's.
    #[serde(default, deserialize_with = "de::strings")]
    pub gateways: Vec<String>,
}

/// One HTTP route (Istio's `HTTPRoute`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Match blocks (OR); empty: every request.
    #[serde(default, rename = "match", deserialize_with = "de::list")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations.
    #[serde(default, deserialize_with = "de::list")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Answer with a fixed response.
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    /// Path and authority rewrites before forwarding.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Request timeout (all tries). Default: none.
    #[serde(default, deserialize_with = "de::duration")]
    pub timeout: Option<Duration>,
    /// Retry policy. Default: Istio's (2 retries on connect-failure, refused-stream,
    /// unavailable, cancelled, retriable-status-codes 503).
    #[serde(default)]
    pub retries: Option<Retry>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Header operations.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// Istio's `HTTPMatchRequest`: every condition set must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// Name, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// The path (without the query string).
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// The scheme.
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// The method.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// The authority.
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Request headers, by lowercase name.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The port addressed.
    #[serde(default)]
    pub port: Option<u16>,
    /// Labels the calling workload must carry.
    #[serde(default, deserialize_with = "de::string_map")]
    pub source_labels: BTreeMap<String, String>,
    /// The calling workload's namespace.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Gateways (and/or `mesh`) this block applies to, instead of the VirtualService's.
    #[serde(default, deserialize_with = "de::strings")]
    pub gateways: Vec<String>,
    /// Compare `uri` exact and prefix ignoring ASCII case.
    #[serde(default)]
    pub ignore_uri_case: bool,
}

/// Istio's `StringMatch`: at most one of `exact`, `prefix`, `regex` (none: presence).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Equal to.
    #[serde(default)]
    pub exact: Option<String>,
    /// Starts with.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The whole value matches this RE2 expression.
    #[serde(default)]
    pub regex: Option<String>,
}

/// A weighted destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to.
    pub destination: Destination,
    /// Relative weight (Istio: percent).
    #[serde(default)]
    pub weight: Option<i64>,
    /// Header operations for this destination.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// A service (and subset and port) to send to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host: a short name (resolved in the VirtualService's namespace) or an FQDN.
    pub host: String,
    /// A subset named in the host's DestinationRule.
    #[serde(default)]
    pub subset: Option<String>,
    /// The port; required when the service has several.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// A port by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// The number.
    pub number: u16,
}

/// Istio's `HTTPRedirect`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// The new path.
    #[serde(default)]
    pub uri: Option<String>,
    /// The new authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// The new port.
    #[serde(default)]
    pub port: Option<u16>,
    /// `FROM_PROTOCOL_DEFAULT` or `FROM_REQUEST_PORT`.
    #[serde(default)]
    pub derive_port: Option<String>,
    /// The new scheme.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The status. Default: 301.
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

/// Istio's `HTTPDirectResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body.
    #[serde(default)]
    pub body: Option<DirectResponseBody>,
}

/// A direct response's body: text or base64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseBody {
    /// Text.
    #[serde(default)]
    pub string: Option<String>,
    /// Base64-encoded bytes (must decode to UTF-8 text).
    #[serde(default)]
    pub bytes: Option<String>,
}

/// Istio's `HTTPRewrite`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path).
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces the authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// Regex replacement on the path.
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex rewrite of the path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// The expression.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The replacement (`\1` for groups).
    pub rewrite: String,
}

/// Istio's `HTTPRetry`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Retries allowed; 0 (or unset) disables retries.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Deadline of each try.
    #[serde(default, deserialize_with = "de::duration")]
    pub per_try_timeout: Option<Duration>,
    /// Envoy retry conditions, comma-separated; HTTP status codes allowed.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Shortest wait between tries.
    #[serde(default, deserialize_with = "de::duration")]
    pub backoff: Option<Duration>,
}

/// Istio's `HTTPFaultInjection`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Delay before forwarding.
    #[serde(default)]
    pub delay: Option<Delay>,
    /// Abort with a status.
    #[serde(default)]
    pub abort: Option<Abort>,
}

/// A fixed delay.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// The delay.
    #[serde(default, deserialize_with = "de::duration")]
    pub fixed_delay: Option<Duration>,
    /// Share of requests delayed. Default: all.
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    #[serde(default)]
    pub percent: Option<i64>,
}

/// An abort.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// The status answered.
    #[serde(default)]
    pub http_status: Option<i64>,
    /// Share of requests aborted. Default: all.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// A percentage (0 to 100).
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// The value.
    #[serde(default)]
    pub value: f64,
}

/// Istio's `Headers`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// Operations on the request sent upstream.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// Operations on the response returned downstream.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// Header operations.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replace.
    #[serde(default, deserialize_with = "de::string_map")]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default, deserialize_with = "de::string_map")]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default, deserialize_with = "de::strings")]
    pub remove: Vec<String>,
}

static STRING_MATCH: Node = Node::Object(&[
    ("exact", Field::Known(&SCALAR)),
    ("prefix", Field::Known(&SCALAR)),
    ("regex", Field::Known(&SCALAR)),
]);
static STRING_MATCH_MAP: Node = Node::MapOf(&STRING_MATCH);
static PORT_SELECTOR: Node = Node::Object(&[("number", Field::Known(&SCALAR))]);
static HTTP_MATCH: Node = Node::Object(&[
    ("name", Field::Known(&SCALAR)),
    ("uri", Field::Known(&STRING_MATCH)),
    ("scheme", Field::Known(&STRING_MATCH)),
    ("method", Field::Known(&STRING_MATCH)),
    ("authority", Field::Known(&STRING_MATCH)),
    ("headers", Field::Known(&STRING_MATCH_MAP)),
    ("withoutHeaders", Field::Known(&STRING_MATCH_MAP)),
    ("queryParams", Field::Known(&STRING_MATCH_MAP)),
    ("port", Field::Known(&SCALAR)),
    ("sourceLabels", Field::Known(&SCALAR_MAP)),
    ("sourceNamespace", Field::Known(&SCALAR)),
    ("gateways", Field::Known(&SCALARS)),
    ("ignoreUriCase", Field::Known(&SCALAR)),
    ("statPrefix", Field::Unsupported("no per-route stat prefixes")),
]);
static HEADER_OPERATIONS: Node = Node::Object(&[
    ("set", Field::Known(&SCALAR_MAP)),
    ("add", Field::Known(&SCALAR_MAP)),
    ("remove", Field::Known(&SCALARS)),
]);
static HEADERS: Node = Node::Object(&[
    ("request", Field::Known(&HEADER_OPERATIONS)),
    ("response", Field::Known(&HEADER_OPERATIONS)),
]);
static DESTINATION: Node = Node::Object(&[
    ("host", Field::Known(&SCALAR)),
    ("subset", Field::Known(&SCALAR)),
    ("port", Field::Known(&PORT_SELECTOR)),
]);
static ROUTE_DESTINATION: Node = Node::Object(&[
    ("destination", Field::Known(&DESTINATION)),
    ("weight", Field::Known(&SCALAR)),
    ("headers", Field::Known(&HEADERS)),
]);
static ROUTE_DESTINATIONS: Node = Node::ListOf(&ROUTE_DESTINATION);
static REDIRECT: Node = Node::Object(&[
    ("uri", Field::Known(&SCALAR)),
    ("authority", Field::Known(&SCALAR)),
    ("port", Field::Known(&SCALAR)),
    ("derivePort", Field::Known(&SCALAR)),
    ("scheme", Field::Known(&SCALAR)),
    ("redirectCode", Field::Known(&SCALAR)),
]);
static DIRECT_RESPONSE_BODY: Node =
    Node::Object(&[("string", Field::Known(&SCALAR)), ("bytes", Field::Known(&SCALAR))]);
static DIRECT_RESPONSE: Node = Node::Object(&[
    ("status", Field::Known(&SCALAR)),
    ("body", Field::Known(&DIRECT_RESPONSE_BODY)),
]);
static REGEX_REWRITE: Node = Node::Object(&[("match", Field::Known(&SCALAR)), ("rewrite", Field::Known(&SCALAR))]);
static REWRITE: Node = Node::Object(&[
    ("uri", Field::Known(&SCALAR)),
    ("authority", Field::Known(&SCALAR)),
    ("uriRegexRewrite", Field::Known(&REGEX_REWRITE)),
]);
static RETRY: Node = Node::Object(&[
    ("attempts", Field::Known(&SCALAR)),
    ("perTryTimeout", Field::Known(&SCALAR)),
    ("retryOn", Field::Known(&SCALAR)),
    ("backoff", Field::Known(&SCALAR)),
    ("retryRemoteLocalities", Field::Unsupported("no localities")),
    (
        "retryIgnorePreviousHosts",
        Field::Unsupported("retries always prefer endpoints not tried yet"),
    ),
]);
static PERCENT: Node = Node::Object(&[("value", Field::Known(&SCALAR))]);
static DELAY: Node = Node::Object(&[
    ("fixedDelay", Field::Known(&SCALAR)),
    ("percentage", Field::Known(&PERCENT)),
    ("percent", Field::Known(&SCALAR)),
    ("exponentialDelay", Field::Unsupported("fixed delays only")),
]);
static ABORT: Node = Node::Object(&[
    ("httpStatus", Field::Known(&SCALAR)),
    ("percentage", Field::Known(&PERCENT)),
    ("grpcStatus", Field::Unsupported("aborts are HTTP statuses")),
    ("http2Error", Field::Unsupported("aborts are HTTP statuses")),
]);
static FAULT: Node = Node::Object(&[("delay", Field::Known(&DELAY)), ("abort", Field::Known(&ABORT))]);
static HTTP_ROUTE: Node = Node::Object(&[
    ("name", Field::Known(&SCALAR)),
    ("match", Field::Known(&Node::ListOf(&HTTP_MATCH))),
    ("route", Field::Known(&ROUTE_DESTINATIONS)),
    ("redirect", Field::Known(&REDIRECT)),
    ("directResponse", Field::Known(&DIRECT_RESPONSE)),
    ("rewrite", Field::Known(&REWRITE)),
    ("timeout", Field::Known(&SCALAR)),
    ("retries", Field::Known(&RETRY)),
    ("fault", Field::Known(&FAULT)),
    ("headers", Field::Known(&HEADERS)),
    (
        "delegate",
        Field::Unsupported("delegate VirtualServices are not flattened"),
    ),
    ("mirror", Field::Unsupported("no traffic mirroring")),
    ("mirrors", Field::Unsupported("no traffic mirroring")),
    ("mirrorPercent", Field::Unsupported("no traffic mirroring")),
    ("mirrorPercentage", Field::Unsupported("no traffic mirroring")),
    ("corsPolicy", Field::Unsupported("no CORS policy")),
]);

static TLS_MATCH: Node = Node::Object(&[
    ("sniHosts", Field::Known(&SCALARS)),
    ("port", Field::Known(&SCALAR)),
    ("gateways", Field::Known(&SCALARS)),
    (
        "destinationSubnets",
        Field::Unsupported("no matching by destination address"),
    ),
    ("sourceLabels", Field::Unsupported("TLS routes apply at gateways only")),
    (
        "sourceNamespace",
        Field::Unsupported("TLS routes apply at gateways only"),
    ),
]);
static TLS_ROUTE_DESTINATION: Node = Node::Object(&[
    ("destination", Field::Known(&DESTINATION)),
    ("weight", Field::Known(&SCALAR)),
]);
static TLS_ROUTE: Node = Node::Object(&[
    ("match", Field::Known(&Node::ListOf(&TLS_MATCH))),
    ("route", Field::Known(&Node::ListOf(&TLS_ROUTE_DESTINATION))),
]);

pub(super) static VIRTUAL_SERVICE_SPEC: Node = Node::Object(&[
    ("hosts", Field::Known(&SCALARS)),
    ("gateways", Field::Known(&SCALARS)),
    ("http", Field::Known(&Node::ListOf(&HTTP_ROUTE))),
    ("tls", Field::Known(&Node::ListOf(&TLS_ROUTE))),
    ("exportTo", Field::Known(&SCALARS)),
    ("tcp", Field::Unsupported("HTTP and TLS routes only")),
]);

// ---------------------------------------------------------------------------------------------
// DestinationRule

/// `DestinationRule.spec`: policies for traffic to a host, and its subsets.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The host: a short name (resolved in the rule's namespace), an FQDN or a wildcard.
    pub host: String,
    /// Policies for every port and subset.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets of the host's endpoints, by label.
    #[serde(default, deserialize_with = "de::list")]
    pub subsets: Vec<Subset>,
    /// Visibility; only `*` (the default) is compiled.
    #[serde(default, deserialize_with = "de::strings")]
    pub export_to: Vec<String>,
}

/// A subset.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name, referred to by VirtualService destinations.
    pub name: String,
    /// Endpoint labels.
    #[serde(default, deserialize_with = "de::string_map")]
    pub labels: BTreeMap<String, String>,
    /// Policies merged over the rule's (field by field at the top level).
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Istio's `TrafficPolicy`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Passive ejection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Per-port overrides.
    #[serde(default, deserialize_with = "de::list")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// TLS towards the host.
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// Istio's `ClientTLSSettings`: how a sidecar originates TLS to a host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The server name sent (SNI).
    #[serde(default)]
    pub sni: Option<String>,
    /// Identities the server may present.
    #[serde(default, deserialize_with = "de::strings")]
    pub subject_alt_names: Vec<String>,
    /// A PEM file of roots to verify the server with (`SIMPLE`, `MUTUAL`), read by the
    /// controller.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// `MUTUAL`: the client certificate chain file (PEM) on the sidecar's file system.
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// `MUTUAL`: its private key file (PEM) on the sidecar's file system.
    #[serde(default)]
    pub private_key: Option<String>,
}

/// A per-port traffic policy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port.
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// Load balancing.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Passive ejection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the host on this port.
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// Istio's `LoadBalancerSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// `ROUND_ROBIN`, `LEAST_REQUEST` (`LEAST_CONN`), `RANDOM`, `PASSTHROUGH`, `UNSPECIFIED`.
    #[serde(default)]
    pub simple: Option<String>,
    /// Consistent hashing.
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
}

/// Consistent hashing: exactly one key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// Hash this header.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// Hash this cookie.
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    /// Hash the client's IP.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
}

/// A cookie to hash.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
}

/// Istio's `ConnectionPoolSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// TCP settings.
    #[serde(default)]
    pub tcp: Option<TcpConnectionPool>,
    /// HTTP settings.
    #[serde(default)]
    pub http: Option<HttpConnectionPool>,
}

/// TCP connection pool settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpConnectionPool {
    /// Connections to the cluster.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Connect timeout.
    #[serde(default, deserialize_with = "de::duration")]
    pub connect_timeout: Option<Duration>,
}

/// HTTP connection pool settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConnectionPool {
    /// Requests waiting for a connection.
    #[serde(default)]
    pub http1_max_pending_requests: Option<i64>,
    /// Requests in flight.
    #[serde(default)]
    pub http2_max_requests: Option<i64>,
}

/// Istio's `OutlierDetection`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx that eject (0 disables).
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    /// Consecutive 502/503/504 that eject (0 disables).
    #[serde(default)]
    pub consecutive_gateway_errors: Option<i64>,
    /// Ejection time (times the number of ejections).
    #[serde(default, deserialize_with = "de::duration")]
    pub base_ejection_time: Option<Duration>,
    /// Most endpoints ejected at once, percent.
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
}

static CONSISTENT_HASH_COOKIE: Node = Node::Object(&[
    ("name", Field::Known(&SCALAR)),
    ("path", Field::Unsupported("the cookie is hashed, never generated")),
    ("ttl", Field::Unsupported("the cookie is hashed, never generated")),
    (
        "attributes",
        Field::Unsupported("the cookie is hashed, never generated"),
    ),
]);
static CONSISTENT_HASH: Node = Node::Object(&[
    ("httpHeaderName", Field::Known(&SCALAR)),
    ("httpCookie", Field::Known(&CONSISTENT_HASH_COOKIE)),
    ("useSourceIp", Field::Known(&SCALAR)),
    (
        "httpQueryParameterName",
        Field::Unsupported("hash a header, a cookie or the source IP"),
    ),
    ("ringHash", Field::Unsupported("the ring size is fixed")),
    ("maglev", Field::Unsupported("ring hash only")),
    ("minimumRingSize", Field::Unsupported("the ring size is fixed")),
]);
static LOAD_BALANCER: Node = Node::Object(&[
    ("simple", Field::Known(&SCALAR)),
    ("consistentHash", Field::Known(&CONSISTENT_HASH)),
    ("localityLbSetting", Field::Unsupported("no localities")),
    ("warmupDurationSecs", Field::Unsupported("no slow start")),
    ("warmup", Field::Unsupported("no slow start")),
]);
static TCP_POOL: Node = Node::Object(&[
    ("maxConnections", Field::Known(&SCALAR)),
    ("connectTimeout", Field::Known(&SCALAR)),
    ("tcpKeepalive", Field::Unsupported("no TCP keepalive settings")),
    (
        "maxConnectionDuration",
        Field::Unsupported("connections live until idle"),
    ),
    ("idleTimeout", Field::Unsupported("the pool's idle timeout is fixed")),
]);
static HTTP_POOL: Node = Node::Object(&[
    ("http1MaxPendingRequests", Field::Known(&SCALAR)),
    ("http2MaxRequests", Field::Known(&SCALAR)),
    (
        "maxRequestsPerConnection",
        Field::Unsupported("connections are reused without a request limit"),
    ),
    (
        "maxRetries",
        Field::Unsupported("retries are limited by the retry filter's budget"),
    ),
    ("idleTimeout", Field::Unsupported("the pool's idle timeout is fixed")),
    (
        "h2UpgradePolicy",
        Field::Unsupported("the protocol follows the port's protocol"),
    ),
    (
        "useClientProtocol",
        Field::Unsupported("the protocol follows the port's protocol"),
    ),
    (
        "maxConcurrentStreams",
        Field::Unsupported("the HTTP/2 stream limit is the peer's"),
    ),
]);
static CONNECTION_POOL: Node = Node::Object(&[("tcp", Field::Known(&TCP_POOL)), ("http", Field::Known(&HTTP_POOL))]);
static OUTLIER_DETECTION: Node = Node::Object(&[
    ("consecutive5xxErrors", Field::Known(&SCALAR)),
    ("consecutiveGatewayErrors", Field::Known(&SCALAR)),
    ("baseEjectionTime", Field::Known(&SCALAR)),
    ("maxEjectionPercent", Field::Known(&SCALAR)),
    (
        "interval",
        Field::Unsupported("endpoints are ejected as soon as a threshold is crossed"),
    ),
    (
        "minHealthPercent",
        Field::Unsupported("ejection is bounded by maxEjectionPercent only"),
    ),
    (
        "consecutiveErrors",
        Field::Unsupported("deprecated; use consecutive5xxErrors"),
    ),
    (
        "splitExternalLocalOriginErrors",
        Field::Unsupported("local and upstream errors count together"),
    ),
    (
        "consecutiveLocalOriginFailures",
        Field::Unsupported("local and upstream errors count together"),
    ),
]);
static PORT_TRAFFIC_POLICY: Node = Node::Object(&[
    ("port", Field::Known(&PORT_SELECTOR)),
    ("loadBalancer", Field::Known(&LOAD_BALANCER)),
    ("connectionPool", Field::Known(&CONNECTION_POOL)),
    ("outlierDetection", Field::Known(&OUTLIER_DETECTION)),
    ("tls", Field::Known(&CLIENT_TLS)),
]);
static CLIENT_TLS: Node = Node::Object(&[
    ("mode", Field::Known(&SCALAR)),
    ("sni", Field::Known(&SCALAR)),
    ("subjectAltNames", Field::Known(&SCALARS)),
    ("caCertificates", Field::Known(&SCALAR)),
    ("clientCertificate", Field::Known(&SCALAR)),
    ("privateKey", Field::Known(&SCALAR)),
    (
        "credentialName",
        Field::Unsupported(
            "no secret references for clients yet (MUTUAL takes clientCertificate and privateKey files)",
        ),
    ),
    ("insecureSkipVerify", Field::Unsupported("servers are always verified")),
    (
        "caCrl",
        Field::Unsupported("no CRL files; revocation travels in the snapshot"),
    ),
]);
static TRAFFIC_POLICY: Node = Node::Object(&[
    ("loadBalancer", Field::Known(&LOAD_BALANCER)),
    ("connectionPool", Field::Known(&CONNECTION_POOL)),
    ("outlierDetection", Field::Known(&OUTLIER_DETECTION)),
    ("portLevelSettings", Field::Known(&Node::ListOf(&PORT_TRAFFIC_POLICY))),
    ("tls", Field::Known(&CLIENT_TLS)),
    ("tunnel", Field::Unsupported("no tunnels")),
    ("proxyProtocol", Field::Unsupported("no PROXY protocol")),
    ("retryBudget", Field::Unsupported("the retry filter has its own budget")),
]);
static SUBSET: Node = Node::Object(&[
    ("name", Field::Known(&SCALAR)),
    ("labels", Field::Known(&SCALAR_MAP)),
    ("trafficPolicy", Field::Known(&TRAFFIC_POLICY)),
]);

pub(super) static DESTINATION_RULE_SPEC: Node = Node::Object(&[
    ("host", Field::Known(&SCALAR)),
    ("trafficPolicy", Field::Known(&TRAFFIC_POLICY)),
    ("subsets", Field::Known(&Node::ListOf(&SUBSET))),
    ("exportTo", Field::Known(&SCALARS)),
    ("workloadSelector", Field::Unsupported("a rule applies to every client")),
]);

// ---------------------------------------------------------------------------------------------
// Gateway

/// `Gateway.spec`: listeners on the workloads it selects.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Workloads (in any namespace) carrying all these labels run the gateway.
    #[serde(default, deserialize_with = "de::string_map")]
    pub selector: BTreeMap<String, String>,
    /// The servers (ports and hosts).
    #[serde(default, deserialize_with = "de::list")]
    pub servers: Vec<GatewayServer>,
}

/// A gateway server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayServer {
    /// The port.
    pub port: GatewayPort,
    /// Hosts served (`host`, `*.example.com`, `*`, with an optional `namespace/` prefix
    /// restricting which VirtualServices may bind).
    #[serde(default, deserialize_with = "de::strings")]
    pub hosts: Vec<String>,
    /// Name, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// TLS termination (HTTPS servers).
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
}

/// Istio's `ServerTLSSettings`: how a gateway server terminates TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// `SIMPLE`, `MUTUAL` (others are reported).
    #[serde(default)]
    pub mode: Option<String>,
    /// A Secret in the Gateway's namespace with `tls.crt`, `tls.key` (and `ca.crt`, or a
    /// `<name>-cacert` Secret, for MUTUAL).
    #[serde(default)]
    pub credential_name: Option<String>,
    /// The certificate chain file (PEM), when there is no `credentialName`.
    #[serde(default)]
    pub server_certificate: Option<String>,
    /// Its private key file (PEM).
    #[serde(default)]
    pub private_key: Option<String>,
    /// The client CA file (PEM), for MUTUAL.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// On a plaintext (`HTTP`) server: answer every request with a `301` to the same URL over
    /// `https` (Envoy's `require_tls: ALL` on the server's virtual hosts).
    #[serde(default)]
    pub https_redirect: bool,
}

/// A gateway server's port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    /// The number the gateway listens on.
    pub number: u16,
    /// `HTTP`, `HTTP2`, `GRPC` (`HTTPS`, `TLS`, `TCP` are reported).
    pub protocol: String,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
}

static GATEWAY_PORT: Node = Node::Object(&[
    ("number", Field::Known(&SCALAR)),
    ("protocol", Field::Known(&SCALAR)),
    ("name", Field::Known(&SCALAR)),
    (
        "targetPort",
        Field::Unsupported("the gateway listens on the port number"),
    ),
]);
static GATEWAY_SERVER: Node = Node::Object(&[
    ("port", Field::Known(&GATEWAY_PORT)),
    ("hosts", Field::Known(&SCALARS)),
    ("name", Field::Known(&SCALAR)),
    ("tls", Field::Known(&SERVER_TLS)),
    (
        "bind",
        Field::Unsupported("the gateway listens on its workload's address"),
    ),
    ("defaultEndpoint", Field::Unsupported("no default endpoint")),
]);

static SERVER_TLS: Node = Node::Object(&[
    ("mode", Field::Known(&SCALAR)),
    ("credentialName", Field::Known(&SCALAR)),
    ("serverCertificate", Field::Known(&SCALAR)),
    ("privateKey", Field::Known(&SCALAR)),
    ("caCertificates", Field::Known(&SCALAR)),
    ("httpsRedirect", Field::Known(&SCALAR)),
    ("credentialNames", Field::Unsupported("one credential per server")),
    ("tlsCertificates", Field::Unsupported("one credential per server")),
    (
        "subjectAltNames",
        Field::Unsupported("client certificates are checked against the CA only"),
    ),
    (
        "verifyCertificateSpki",
        Field::Unsupported("client certificates are checked against the CA only"),
    ),
    (
        "verifyCertificateHash",
        Field::Unsupported("client certificates are checked against the CA only"),
    ),
    ("minProtocolVersion", Field::Unsupported("TLS 1.2 and 1.3 are offered")),
    ("maxProtocolVersion", Field::Unsupported("TLS 1.2 and 1.3 are offered")),
    (
        "cipherSuites",
        Field::Unsupported("the TLS library's safe defaults are used"),
    ),
    ("caCrl", Field::Unsupported("no CRL files")),
]);

pub(super) static GATEWAY_SPEC: Node = Node::Object(&[
    ("selector", Field::Known(&SCALAR_MAP)),
    ("servers", Field::Known(&Node::ListOf(&GATEWAY_SERVER))),
]);

// ---------------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry

/// `ServiceEntry.spec`: hosts outside the Service registry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names (FQDNs or wildcards).
    #[serde(default, deserialize_with = "de::strings")]
    pub hosts: Vec<String>,
    /// Ports.
    #[serde(default, deserialize_with = "de::list")]
    pub ports: Vec<ServiceEntryPort>,
    /// `MESH_EXTERNAL` (default) or `MESH_INTERNAL`; no difference yet.
    #[serde(default)]
    pub location: Option<String>,
    /// `STATIC`, `DNS`, `DNS_ROUND_ROBIN`, `NONE` (default).
    #[serde(default)]
    pub resolution: Option<String>,
    /// Endpoints.
    #[serde(default, deserialize_with = "de::list")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Workloads and WorkloadEntries in the namespace carrying these labels are endpoints.
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    /// Visibility; only `*` (the default) is compiled.
    #[serde(default, deserialize_with = "de::strings")]
    pub export_to: Vec<String>,
}

/// A ServiceEntry port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryPort {
    /// Number.
    pub number: u16,
    /// Protocol (`HTTP`, `HTTP2`, `GRPC`; others are reported).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// The endpoints' port. Default: `number`.
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// Labels selecting workloads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    /// The labels.
    #[serde(default, deserialize_with = "de::string_map")]
    pub labels: BTreeMap<String, String>,
}

/// `WorkloadEntry.spec` (also a ServiceEntry endpoint): a workload outside Weft's Workloads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP address.
    #[serde(default)]
    pub address: String,
    /// Ports by service port name.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Labels (subsets select by them).
    #[serde(default, deserialize_with = "de::string_map")]
    pub labels: BTreeMap<String, String>,
    /// Relative weight. Default: 1.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Service account (identity, later).
    #[serde(default)]
    pub service_account: Option<String>,
}

static SERVICE_ENTRY_PORT: Node = Node::Object(&[
    ("number", Field::Known(&SCALAR)),
    ("protocol", Field::Known(&SCALAR)),
    ("name", Field::Known(&SCALAR)),
    ("targetPort", Field::Known(&SCALAR)),
]);
pub(super) static WORKLOAD_ENTRY_SPEC: Node = Node::Object(&[
    ("address", Field::Known(&SCALAR)),
    ("ports", Field::Known(&SCALAR_MAP)),
    ("labels", Field::Known(&SCALAR_MAP)),
    ("weight", Field::Known(&SCALAR)),
    ("serviceAccount", Field::Known(&SCALAR)),
    ("network", Field::Unsupported("one network")),
    ("locality", Field::Unsupported("no localities")),
]);
static WORKLOAD_SELECTOR: Node = Node::Object(&[("labels", Field::Known(&SCALAR_MAP))]);

pub(super) static SERVICE_ENTRY_SPEC: Node = Node::Object(&[
    ("hosts", Field::Known(&SCALARS)),
    ("ports", Field::Known(&Node::ListOf(&SERVICE_ENTRY_PORT))),
    ("location", Field::Known(&SCALAR)),
    ("resolution", Field::Known(&SCALAR)),
    ("endpoints", Field::Known(&Node::ListOf(&WORKLOAD_ENTRY_SPEC))),
    ("workloadSelector", Field::Known(&WORKLOAD_SELECTOR)),
    ("exportTo", Field::Known(&SCALARS)),
    (
        "addresses",
        Field::Unsupported("clients reach hosts by name through the sidecar"),
    ),
    (
        "subjectAltNames",
        Field::Unsupported("TLS to upstreams lands with mesh identity"),
    ),
]);
