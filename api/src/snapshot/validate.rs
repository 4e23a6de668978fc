//! Snapshot validation: every problem is reported with the path of the field it is about.
//!
//! Two kinds of checks, which run apart when a snapshot arrives in parts (see
//! [`crate::parts`]): the *contents* of each listener, route table and cluster on its own,
//! run once per part when it is received, and the *references* between them (unique names
//! and addresses, a listener's route table, a route's cluster and subset, a route's disabled
//! filters), run on the assembled whole. [`validate`] runs both.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use super::{Cluster, HeaderMatch, LbPolicy, PathMatch, Route, Snapshot};
use crate::path::Path;

/// One problem in a snapshot, with the path of the field (`clusters[0].endpoints[1].address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the offending field.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read snapshot file {file}")]
    Read {
        /// The file's path.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a snapshot (bad YAML, wrong type, unknown field).
    #[error("invalid snapshot at {path}: {message}")]
    Parse {
        /// Path of the field where parsing failed (`.` for the document itself).
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The snapshot parsed but is inconsistent.
    #[error("invalid snapshot: {}", join(.0))]
    Invalid(Vec<ValidationError>),
}

fn join(errors: &[ValidationError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[derive(Default)]
pub(crate) struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn into_result(self) -> Result<(), LoadError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Invalid(self.0))
        }
    }
}

/// Where a part's listeners, route tables and clusters sit in the whole snapshot, so that
/// errors found in a part carry the path of the field in the whole.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Offsets {
    pub(crate) listeners: usize,
    pub(crate) route_tables: usize,
    pub(crate) clusters: usize,
}

pub(super) fn validate(snapshot: &Snapshot) -> Result<(), LoadError> {
    let mut errors = Errors::default();
    check_contents(&mut errors, snapshot, Offsets::default());
    check_references(&mut errors, snapshot);
    errors.into_result()
}

/// Checks every element of `snapshot` on its own: all but the references between elements.
pub(crate) fn check_contents(errors: &mut Errors, snapshot: &Snapshot, offsets: Offsets) {
    let root = Path::Root;
    for (i, serial) in snapshot.security.revoked_serials.iter().enumerate() {
        if crate::normalize_serial(serial).is_none() {
            errors.push(
                root.field("security").index("revoked_serials", i),
                format!("{serial:?} is not a hex serial number"),
            );
        }
    }
    for (i, listener) in snapshot.listeners.iter().enumerate() {
        let path = root.index("listeners", offsets.listeners + i);
        if listener.name.is_empty() {
            errors.push(path.field("name"), "a name is required");
        }
        if listener.address.parse::<SocketAddr>().is_err() {
            errors.push(
                path.field("address"),
                format!("{:?} is not an ip:port socket address", listener.address),
            );
        }
        if listener.mtls.is_some() && listener.tls.is_some() {
            errors.push(path.field("tls"), "set only one of mtls and tls");
        }
        if let Some(tls) = &listener.tls {
            if tls.certificates.is_empty() {
                errors.push(
                    path.field("tls").field("certificates"),
                    "at least one certificate is required",
                );
            }
            if tls.mode == crate::ServerTlsMode::Mutual && tls.client_ca.is_none() {
                errors.push(path.field("tls").field("client_ca"), "required with mode mutual");
            }
        }
        if listener.protocol.is_http() {
            if !listener.sni_routes.is_empty() {
                errors.push(
                    path.field("sni_routes"),
                    "only a tls_passthrough listener has SNI routes",
                );
            }
        } else {
            check_passthrough(errors, path, listener);
        }
        let mut filter_names = HashSet::new();
        for (j, filter) in listener.filters.iter().enumerate() {
            let path = path.index("filters", j);
            match (&filter.native, &filter.wasm) {
                (Some(_), None) => {}
                (None, Some(wasm)) => {
                    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
                    if wasm.sha256.len() != 64 || !wasm.sha256.bytes().all(hex) {
                        errors.push(path.field("wasm").field("sha256"), "must be 64 lowercase hex digits");
                    }
                    match (wasm.file.is_empty(), wasm.url.is_empty()) {
                        (true, true) => errors.push(path.field("wasm"), "set one of file and url"),
                        (false, false) => errors.push(path.field("wasm"), "set only one of file and url"),
                        _ => {}
                    }
                    if !wasm.url.is_empty()
                        && !["oci://", "file://", "http://", "https://"]
                            .iter()
                            .any(|s| wasm.url.starts_with(s))
                    {
                        errors.push(
                            path.field("wasm").field("url"),
                            "must start with oci://, file://, http:// or https://",
                        );
                    }
                }
                _ => errors.push(path, "set exactly one of native and wasm"),
            }
            check_name(errors, path, &filter.name, &mut filter_names);
        }
    }

    for (i, table) in snapshot.route_tables.iter().enumerate() {
        let path = root.index("route_tables", offsets.route_tables + i);
        if table.name.is_empty() {
            errors.push(path.field("name"), "a name is required");
        }
        let mut domains = HashSet::new();
        for (j, vhost) in table.virtual_hosts.iter().enumerate() {
            let path = path.index("virtual_hosts", j);
            if vhost.domains.is_empty() {
                errors.push(path.field("domains"), "at least one domain is required");
            }
            for (k, domain) in vhost.domains.iter().enumerate() {
                let path = path.index("domains", k);
                if domain.is_empty() {
                    errors.push(path, "a domain may not be empty");
                } else if domain.len() > 1 && domain[1..domain.len() - 1].contains('*') {
                    errors.push(path, "a wildcard may only start or end a domain");
                } else if !domains.insert(domain.to_ascii_lowercase()) {
                    errors.push(path, format!("{domain:?} is already served by another virtual host"));
                }
            }
            for (k, route) in vhost.routes.iter().enumerate() {
                check_route(errors, path.index("routes", k), route);
            }
        }
    }

    for (i, cluster) in snapshot.clusters.iter().enumerate() {
        check_cluster(errors, root.index("clusters", offsets.clusters + i), cluster);
    }

    let limits = &snapshot.limits;
    if limits.max_request_headers_bytes < 8192 {
        errors.push("limits.max_request_headers_bytes", "must be at least 8192");
    }
    if limits.max_request_headers_count == 0 {
        errors.push("limits.max_request_headers_count", "must be at least 1");
    }
    if limits.http2_max_concurrent_streams == 0 {
        errors.push("limits.http2_max_concurrent_streams", "must be at least 1");
    }
}

fn check_cluster(errors: &mut Errors, path: Path<'_>, cluster: &Cluster) {
    if cluster.name.is_empty() {
        errors.push(path.field("name"), "a name is required");
    }
    let mut endpoint_addresses = HashSet::new();
    for (j, endpoint) in cluster.endpoints.iter().enumerate() {
        let path = path.index("endpoints", j);
        match endpoint.address.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => errors.push(path.field("address"), "port 0 cannot be connected to"),
            Ok(addr) => {
                if !endpoint_addresses.insert(addr) {
                    errors.push(path.field("address"), format!("{addr} is listed twice"));
                }
            }
            Err(_) => errors.push(
                path.field("address"),
                format!("{:?} is not an ip:port socket address", endpoint.address),
            ),
        }
        if endpoint.weight == 0 {
            errors.push(path.field("weight"), "must be at least 1");
        }
    }
    match (&cluster.lb_policy, &cluster.hash_on) {
        (LbPolicy::RingHash, None) => errors.push(
            path.field("hash_on"),
            "ring_hash needs hash_on (header, cookie or source_ip)",
        ),
        (LbPolicy::RingHash, Some(h)) => {
            let set = usize::from(h.header.is_some()) + usize::from(h.cookie.is_some()) + usize::from(h.source_ip);
            if set != 1 {
                errors.push(
                    path.field("hash_on"),
                    "exactly one of header, cookie, source_ip must be set",
                );
            }
        }
        (_, Some(_)) => errors.push(path.field("hash_on"), "only used with lb_policy ring_hash"),
        (_, None) => {}
    }
    if cluster.connect_timeout.is_zero() {
        errors.push(path.field("connect_timeout"), "must be greater than zero");
    }
    let cb = &cluster.circuit_breakers;
    for (field, value) in [
        ("max_connections", cb.max_connections),
        ("max_pending_requests", cb.max_pending_requests),
        ("max_requests", cb.max_requests),
    ] {
        if value == 0 {
            errors.push(path.field("circuit_breakers").field(field), "must be at least 1");
        }
    }
    if let Some(hc) = &cluster.health_check {
        let path = path.field("health_check");
        if !hc.path.starts_with('/') {
            errors.push(path.field("path"), "must start with '/'");
        }
        for (field, value) in [("interval", hc.interval), ("timeout", hc.timeout)] {
            if value.is_zero() {
                errors.push(path.field(field), "must be greater than zero");
            }
        }
        for (field, value) in [
            ("healthy_threshold", hc.healthy_threshold),
            ("unhealthy_threshold", hc.unhealthy_threshold),
        ] {
            if value == 0 {
                errors.push(path.field(field), "must be at least 1");
            }
        }
    }
    if let Some(od) = &cluster.outlier_detection {
        let path = path.field("outlier_detection");
        if od.max_ejection_percent > 100 {
            errors.push(path.field("max_ejection_percent"), "must be at most 100");
        }
        if od.base_ejection_time.is_zero() {
            errors.push(path.field("base_ejection_time"), "must be greater than zero");
        }
    }
    if let Some(tls) = &cluster.tls {
        let path = path.field("tls");
        let mutual = tls.mode == crate::UpstreamTlsMode::Mutual;
        for (name, value) in [
            ("client_certificate", &tls.client_certificate),
            ("private_key", &tls.private_key),
        ] {
            match value {
                None if mutual => errors.push(path.field(name), "required with mode mutual"),
                Some(p) if mutual && p.is_empty() => errors.push(path.field(name), "empty path"),
                Some(_) if !mutual => errors.push(path.field(name), "only with mode mutual"),
                _ => {}
            }
        }
    }
}

/// A `tls_passthrough` listener: nothing of HTTP, and SNI routes that can match.
fn check_passthrough(errors: &mut Errors, path: Path<'_>, listener: &super::Listener) {
    let refuse = "a tls_passthrough listener relays TLS as it is";
    if !listener.route_table.is_empty() {
        errors.push(path.field("route_table"), format!("{refuse}: it has no route table"));
    }
    if !listener.filters.is_empty() {
        errors.push(path.field("filters"), format!("{refuse}: it runs no HTTP filters"));
    }
    if listener.mtls.is_some() {
        errors.push(path.field("mtls"), format!("{refuse}: it terminates no TLS"));
    }
    if listener.tls.is_some() {
        errors.push(path.field("tls"), format!("{refuse}: it terminates no TLS"));
    }
    let mut names = HashSet::new();
    for (i, route) in listener.sni_routes.iter().enumerate() {
        let path = path.index("sni_routes", i);
        if route.server_names.is_empty() {
            errors.push(path.field("server_names"), "at least one server name is required");
        }
        for (j, name) in route.server_names.iter().enumerate() {
            let path = path.index("server_names", j);
            let wildcard_ok = name == "*" || name.strip_prefix("*.").is_some_and(|rest| !rest.contains('*'));
            if name.is_empty() || name.contains(':') || (name.contains('*') && !wildcard_ok) {
                errors.push(
                    path,
                    format!("{name:?} is not a server name (exact, `*.suffix` or `*`)"),
                );
            } else if !names.insert(name.to_ascii_lowercase()) {
                errors.push(path, format!("{name:?} is used by another route"));
            }
        }
        if route.destinations.is_empty() {
            errors.push(path.field("destinations"), "at least one destination is required");
        } else if route.destinations.iter().all(|d| d.weight == 0) {
            errors.push(
                path.field("destinations"),
                "at least one destination needs a weight above 0",
            );
        }
    }
}

/// Checks what ties the elements of `snapshot` together: unique names and listener
/// addresses, and every reference resolved (listener → route table, route → cluster and
/// subset, route → disabled filter).
pub(crate) fn check_references(errors: &mut Errors, snapshot: &Snapshot) {
    let root = Path::Root;
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut tables = HashSet::new();
    for (i, table) in snapshot.route_tables.iter().enumerate() {
        check_unique(errors, root.index("route_tables", i), &table.name, &mut tables);
    }
    let mut filters = HashSet::new();
    for (i, listener) in snapshot.listeners.iter().enumerate() {
        let path = root.index("listeners", i);
        check_unique(errors, path, &listener.name, &mut names);
        if let Ok(addr) = listener.address.parse::<SocketAddr>()
            && addr.port() != 0
            && !addresses.insert(addr)
        {
            errors.push(path.field("address"), format!("{addr} is used by another listener"));
        }
        if listener.protocol.is_http() && !tables.contains(listener.route_table.as_str()) {
            errors.push(
                path.field("route_table"),
                format!("no route table named {:?}", listener.route_table),
            );
        }
        filters.extend(listener.filters.iter().map(|f| f.name.as_str()));
    }
    let mut clusters = HashMap::with_capacity(snapshot.clusters.len());
    for (i, cluster) in snapshot.clusters.iter().enumerate() {
        let path = root.index("clusters", i);
        if !cluster.name.is_empty() && clusters.insert(cluster.name.as_str(), &**cluster).is_some() {
            errors.push(path.field("name"), format!("{:?} is used twice", cluster.name));
        }
    }
    for (i, table) in snapshot.route_tables.iter().enumerate() {
        let path = root.index("route_tables", i);
        for (j, vhost) in table.virtual_hosts.iter().enumerate() {
            let path = path.index("virtual_hosts", j);
            for (k, route) in vhost.routes.iter().enumerate() {
                check_route_references(errors, path.index("routes", k), route, &clusters, &filters);
            }
        }
    }
    for (i, listener) in snapshot.listeners.iter().enumerate() {
        let listener_path = root.index("listeners", i);
        for (j, route) in listener.sni_routes.iter().enumerate() {
            let path = listener_path.index("sni_routes", j);
            for (k, destination) in route.destinations.iter().enumerate() {
                let path = path.index("destinations", k);
                check_cluster_reference(errors, path, &destination.cluster, &destination.subset, &clusters);
            }
        }
    }
}

fn check_unique<'a>(errors: &mut Errors, path: Path<'_>, name: &'a str, seen: &mut HashSet<&'a str>) {
    if !name.is_empty() && !seen.insert(name) {
        errors.push(path.field("name"), format!("{name:?} is used twice"));
    }
}

fn check_name<'a>(errors: &mut Errors, path: Path<'_>, name: &'a str, seen: &mut HashSet<&'a str>) {
    if name.is_empty() {
        errors.push(path.field("name"), "a name is required");
    } else {
        check_unique(errors, path, name, seen);
    }
}

fn check_route_references(
    errors: &mut Errors,
    path: Path<'_>,
    route: &Route,
    clusters: &HashMap<&str, &Cluster>,
    filters: &HashSet<&str>,
) {
    for (i, name) in route.disabled_filters.iter().enumerate() {
        if !filters.contains(name.as_str()) {
            errors.push(path.index("disabled_filters", i), format!("no filter named {name:?}"));
        }
    }
    let Some(forward) = &route.forward else { return };
    check_cluster_reference(
        errors,
        path.field("forward"),
        &forward.cluster,
        &forward.subset,
        clusters,
    );
}

/// A reference to cluster `name` (at `path.cluster`), and to its subset (at `path.subset`).
fn check_cluster_reference(
    errors: &mut Errors,
    path: Path<'_>,
    name: &str,
    subset: &std::collections::BTreeMap<String, String>,
    clusters: &HashMap<&str, &Cluster>,
) {
    match clusters.get(name) {
        None => errors.push(path.field("cluster"), format!("no cluster named {name:?}")),
        Some(cluster) if !subset.is_empty() && !cluster.endpoints.is_empty() => {
            let any = cluster
                .endpoints
                .iter()
                .any(|e| subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
            // An empty subset is legal (endpoints may come later) but almost always a typo
            // while endpoints are static; say so rather than serve 503s silently.
            if !any {
                errors.push(path.field("subset"), "no endpoint of the cluster carries these labels");
            }
        }
        Some(_) => {}
    }
}

fn check_route(errors: &mut Errors, path: Path<'_>, route: &Route) {
    if let Some(p) = &route.matches.path {
        check_path_match(errors, path.field("match").field("path"), p);
    }
    for (i, header) in route.matches.headers.iter().enumerate() {
        check_header_match(errors, path.field("match").index("headers", i), header);
    }
    match (&route.forward, &route.direct_response) {
        (Some(forward), None) => {
            let path = path.field("forward");
            if let Some(rewrite) = &forward.prefix_rewrite {
                if route.matches.path.as_ref().is_none_or(|p| p.prefix.is_none()) {
                    errors.push(path.field("prefix_rewrite"), "needs a prefix path match");
                } else if !rewrite.starts_with('/') {
                    errors.push(path.field("prefix_rewrite"), "must start with '/'");
                }
            }
            if forward.timeout.is_some_and(|t| t.is_zero()) {
                errors.push(path.field("timeout"), "must be greater than zero (omit it for none)");
            }
            if let Some(host) = &forward.host_rewrite
                && http_authority_invalid(host)
            {
                errors.push(path.field("host_rewrite"), format!("{host:?} is not a valid authority"));
            }
        }
        (None, Some(direct)) => {
            if !(100..=599).contains(&direct.status) {
                errors.push(
                    path.field("direct_response").field("status"),
                    "must be between 100 and 599",
                );
            }
        }
        (Some(_), Some(_)) => errors.push(path, "set only one of forward and direct_response"),
        (None, None) => errors.push(path, "set one of forward and direct_response"),
    }
}

fn http_authority_invalid(host: &str) -> bool {
    host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'/' || b.is_ascii_control())
}

fn check_path_match(errors: &mut Errors, path: Path<'_>, m: &PathMatch) {
    let set = usize::from(m.exact.is_some()) + usize::from(m.prefix.is_some()) + usize::from(m.regex.is_some());
    if set != 1 {
        errors.push(path, "exactly one of exact, prefix, regex must be set");
    }
    if let Some(re) = &m.regex {
        check_regex(errors, path.field("regex"), re);
    }
}

fn check_header_match(errors: &mut Errors, path: Path<'_>, m: &HeaderMatch) {
    if http_header_name_invalid(&m.name) {
        errors.push(path.field("name"), format!("{:?} is not a valid header name", m.name));
    }
    let set = usize::from(m.exact.is_some()) + usize::from(m.prefix.is_some()) + usize::from(m.regex.is_some());
    if set > 1 {
        errors.push(path, "at most one of exact, prefix, regex may be set");
    }
    if let Some(re) = &m.regex {
        check_regex(errors, path.field("regex"), re);
    }
}

fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_regex(errors: &mut Errors, path: Path<'_>, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        errors.push(path, format!("invalid regular expression: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> Vec<String> {
        match Snapshot::from_yaml(yaml) {
            Ok(_) => vec![],
            Err(LoadError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
            Err(other) => vec![other.to_string()],
        }
    }

    const GOOD: &str = r#"
version: "1"
listeners:
  - name: outbound
    address: 127.0.0.1:0
    route_table: main
route_tables:
  - name: main
    virtual_hosts:
      - name: reviews
        domains: ["reviews", "*.example.com"]
        routes:
          - name: v1
            match: { path: { prefix: /api }, headers: [{ name: end-user, exact: jason }] }
            forward: { cluster: reviews, subset: { version: v1 }, timeout: 2s, prefix_rewrite: / }
          - direct_response: { status: 200, body: ok }
clusters:
  - name: reviews
    lb_policy: ring_hash
    hash_on: { header: x-user }
    endpoints:
      - { address: 127.0.0.1:9080, labels: { version: v1 } }
      - { address: 127.0.0.1:9081, labels: { version: v2 }, weight: 3 }
    health_check: { path: /healthz, interval: 1s }
    outlier_detection: { consecutive_5xx: 3 }
"#;

    #[test]
    fn a_good_snapshot_loads_with_defaults() {
        let snapshot = Snapshot::from_yaml(GOOD).expect("valid");
        let cluster = &snapshot.clusters[0];
        assert_eq!(cluster.connect_timeout, std::time::Duration::from_secs(5));
        assert_eq!(cluster.endpoints[0].weight, 1);
        assert_eq!(cluster.circuit_breakers.max_requests, 1024);
        assert_eq!(snapshot.limits.max_request_headers_count, 100);
        let od = cluster.outlier_detection.as_ref().expect("outlier");
        assert_eq!(od.base_ejection_time, std::time::Duration::from_secs(30));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let bad = GOOD.replace("weight: 3", "weight: heavy");
        let err = Snapshot::from_yaml(&bad).expect_err("bad weight").to_string();
        assert!(err.contains("clusters[0].endpoints[1].weight"), "{err}");

        let bad = GOOD.replace("timeout: 2s", "timeout: 2 fortnights");
        let err = Snapshot::from_yaml(&bad).expect_err("bad timeout").to_string();
        assert!(
            err.contains("route_tables[0].virtual_hosts[0].routes[0].forward.timeout"),
            "{err}"
        );

        let bad = GOOD.replace("lb_policy: ring_hash", "lb_policy: ring_hash\n    lb_polciy: random");
        let err = Snapshot::from_yaml(&bad).expect_err("unknown field").to_string();
        assert!(err.contains("clusters[0]") && err.contains("lb_polciy"), "{err}");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_paths() {
        let bad = GOOD
            .replace("cluster: reviews,", "cluster: ratings,")
            .replace("address: 127.0.0.1:9081", "address: localhost:9081")
            .replace("route_table: main", "route_table: mian")
            .replace("prefix: /api", "regex: '(unclosed'")
            .replace(
                "hash_on: { header: x-user }",
                "hash_on: { header: x-user, source_ip: true }",
            );
        let errors = errors_of(&bad);
        for expected in [
            "listeners[0].route_table: no route table named \"mian\"",
            "route_tables[0].virtual_hosts[0].routes[0].forward.cluster: no cluster named \"ratings\"",
            "route_tables[0].virtual_hosts[0].routes[0].match.path.regex: invalid regular expression",
            "route_tables[0].virtual_hosts[0].routes[0].forward.prefix_rewrite: needs a prefix path match",
            "clusters[0].endpoints[1].address: \"localhost:9081\" is not an ip:port socket address",
            "clusters[0].hash_on: exactly one of header, cookie, source_ip must be set",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "missing {expected:?} in {errors:#?}"
            );
        }
    }

    #[test]
    fn client_certificates_go_with_mutual_upstream_tls_only() {
        let with_tls = |tls: &str| {
            GOOD.replace(
                "    hash_on: { header: x-user }\n",
                &format!("    hash_on: {{ header: x-user }}\n    tls: {tls}\n"),
            )
        };
        assert!(
            errors_of(&with_tls(
                "{ mode: mutual, client_certificate: c.pem, private_key: k.pem }"
            ))
            .is_empty()
        );
        let errors = errors_of(&with_tls("{ mode: mutual, client_certificate: c.pem }"));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("clusters[0].tls.private_key: required with mode mutual")),
            "{errors:?}"
        );
        let errors = errors_of(&with_tls("{ mode: simple, private_key: k.pem }"));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("clusters[0].tls.private_key: only with mode mutual")),
            "{errors:?}"
        );
    }

    #[test]
    fn passthrough_listeners_route_by_server_name_only() {
        let with_passthrough = |listener: &str| {
            GOOD.replace(
                "    route_table: main\n",
                &format!(
                    "    route_table: main\n  - name: tls\n    address: 127.0.0.1:0\n    kind: gateway\n    protocol: tls_passthrough\n{listener}"
                ),
            )
        };
        let good = with_passthrough(
            "    sni_routes:\n      - server_names: [\"a.example.com\", \"*.b.example.com\"]\n        destinations: [{ cluster: reviews, subset: { version: v2 }, weight: 0 }, { cluster: reviews }]\n",
        );
        let snapshot = Snapshot::from_yaml(&good).expect("valid passthrough listener");
        assert_eq!(snapshot.listeners[1].sni_routes[0].destinations[1].weight, 1);

        let bad = with_passthrough(
            "    route_table: main\n    filters: [{ name: h, native: headers }]\n    sni_routes:\n      - server_names: [\"a.*.com\", \"A.example.com\", \"a.example.com\"]\n        destinations: [{ cluster: ratings, weight: 0 }]\n      - server_names: []\n        destinations: []\n",
        );
        assert_eq!(
            errors_of(&bad),
            [
                "listeners[1].route_table: a tls_passthrough listener relays TLS as it is: it has no route table",
                "listeners[1].filters: a tls_passthrough listener relays TLS as it is: it runs no HTTP filters",
                "listeners[1].sni_routes[0].server_names[0]: \"a.*.com\" is not a server name (exact, `*.suffix` or `*`)",
                "listeners[1].sni_routes[0].server_names[2]: \"a.example.com\" is used by another route",
                "listeners[1].sni_routes[0].destinations: at least one destination needs a weight above 0",
                "listeners[1].sni_routes[1].server_names: at least one server name is required",
                "listeners[1].sni_routes[1].destinations: at least one destination is required",
                "listeners[1].sni_routes[0].destinations[0].cluster: no cluster named \"ratings\"",
            ]
        );

        let bad = GOOD.replace(
            "    route_table: main\n",
            "    route_table: main\n    sni_routes: [{ server_names: [\"*\"], destinations: [{ cluster: reviews }] }]\n",
        );
        assert_eq!(
            errors_of(&bad),
            ["listeners[0].sni_routes: only a tls_passthrough listener has SNI routes"]
        );
    }

    #[test]
    fn routes_need_exactly_one_action_and_known_subsets() {
        let bad = GOOD.replace("- direct_response: { status: 200, body: ok }", "- name: empty");
        assert!(
            errors_of(&bad)
                .iter()
                .any(|e| e.contains("routes[1]: set one of forward and direct_response"))
        );
        let bad = GOOD.replace("subset: { version: v1 }", "subset: { version: v9 }");
        assert!(
            errors_of(&bad)
                .iter()
                .any(|e| e.contains("forward.subset: no endpoint"))
        );
    }

    #[test]
    fn filters_need_exactly_one_kind_and_a_digest() {
        let with_filter = |filter: &str| {
            GOOD.replace(
                "    route_table: main\n",
                &format!("    route_table: main\n    filters:\n      - {filter}\n"),
            )
        };
        let errors = errors_of(&with_filter("{ name: f }"));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("listeners[0].filters[0]: set exactly one of native and wasm")),
            "{errors:?}"
        );
        let errors = errors_of(&with_filter(
            "{ name: f, native: headers, wasm: { file: f.wasm, sha256: abc } }",
        ));
        assert!(errors.iter().any(|e| e.contains("set exactly one")), "{errors:?}");
        let errors = errors_of(&with_filter("{ name: f, wasm: { file: f.wasm, sha256: ABC } }"));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("listeners[0].filters[0].wasm.sha256: must be 64 lowercase hex")),
            "{errors:?}"
        );
        let sha = "a".repeat(64);
        assert!(
            errors_of(&with_filter(&format!(
                "{{ name: f, wasm: {{ file: f.wasm, sha256: {sha} }} }}"
            )))
            .is_empty()
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let bad = GOOD.replace("address: 127.0.0.1:9081", "address: 127.0.0.1:9080");
        assert!(
            errors_of(&bad)
                .iter()
                .any(|e| e.contains("endpoints[1].address: 127.0.0.1:9080 is listed twice"))
        );
        let bad = GOOD.replace(
            "domains: [\"reviews\", \"*.example.com\"]",
            "domains: [\"reviews\", \"Reviews\"]",
        );
        assert!(
            errors_of(&bad)
                .iter()
                .any(|e| e.contains("domains[1]: \"Reviews\" is already served"))
        );
    }
}
