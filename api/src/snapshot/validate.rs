//! Snapshot validation: every problem is reported with the path of the field it is about.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use super::{HeaderMatch, LbPolicy, PathMatch, Route, Snapshot};

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
struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(super) fn validate(snapshot: &Snapshot) -> Result<(), LoadError> {
    let mut errors = Errors::default();
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let tables: HashSet<&str> = snapshot.route_tables.iter().map(|t| t.name.as_str()).collect();
    let clusters: HashSet<&str> = snapshot.clusters.iter().map(|c| c.name.as_str()).collect();

    for (i, serial) in snapshot.security.revoked_serials.iter().enumerate() {
        if crate::normalize_serial(serial).is_none() {
            errors.push(
                format!("security.revoked_serials[{i}]"),
                format!("{serial:?} is not a hex serial number"),
            );
        }
    }
    for (i, listener) in snapshot.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        check_name(&mut errors, &path, &listener.name, &mut names);
        match listener.address.parse::<SocketAddr>() {
            Ok(addr) => {
                if addr.port() != 0 && !addresses.insert(addr) {
                    errors.push(format!("{path}.address"), format!("{addr} is used by another listener"));
                }
            }
            Err(_) => errors.push(
                format!("{path}.address"),
                format!("{:?} is not an ip:port socket address", listener.address),
            ),
        }
        if listener.mtls.is_some() && listener.tls.is_some() {
            errors.push(format!("{path}.tls"), "set only one of mtls and tls");
        }
        if let Some(tls) = &listener.tls {
            if tls.certificates.is_empty() {
                errors.push(
                    format!("{path}.tls.certificates"),
                    "at least one certificate is required",
                );
            }
            if tls.mode == crate::ServerTlsMode::Mutual && tls.client_ca.is_none() {
                errors.push(format!("{path}.tls.client_ca"), "required with mode mutual");
            }
        }
        if !tables.contains(listener.route_table.as_str()) {
            errors.push(
                format!("{path}.route_table"),
                format!("no route table named {:?}", listener.route_table),
            );
        }
        let mut filter_names = HashSet::new();
        for (j, filter) in listener.filters.iter().enumerate() {
            let filter_path = format!("{path}.filters[{j}]");
            match (&filter.native, &filter.wasm) {
                (Some(_), None) => {}
                (None, Some(wasm)) => {
                    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
                    if wasm.sha256.len() != 64 || !wasm.sha256.bytes().all(hex) {
                        errors.push(format!("{filter_path}.wasm.sha256"), "must be 64 lowercase hex digits");
                    }
                    match (wasm.file.is_empty(), wasm.url.is_empty()) {
                        (true, true) => errors.push(format!("{filter_path}.wasm"), "set one of file and url"),
                        (false, false) => errors.push(format!("{filter_path}.wasm"), "set only one of file and url"),
                        _ => {}
                    }
                    if !wasm.url.is_empty()
                        && !["oci://", "file://", "http://", "https://"]
                            .iter()
                            .any(|s| wasm.url.starts_with(s))
                    {
                        errors.push(
                            format!("{filter_path}.wasm.url"),
                            "must start with oci://, file://, http:// or https://",
                        );
                    }
                }
                _ => errors.push(filter_path.clone(), "set exactly one of native and wasm"),
            }
            check_name(
                &mut errors,
                &format!("{path}.filters[{j}]"),
                &filter.name,
                &mut filter_names,
            );
        }
    }

    let mut table_names = HashSet::new();
    for (i, table) in snapshot.route_tables.iter().enumerate() {
        let path = format!("route_tables[{i}]");
        check_name(&mut errors, &path, &table.name, &mut table_names);
        let mut domains = HashSet::new();
        for (j, vhost) in table.virtual_hosts.iter().enumerate() {
            let path = format!("{path}.virtual_hosts[{j}]");
            if vhost.domains.is_empty() {
                errors.push(format!("{path}.domains"), "at least one domain is required");
            }
            for (k, domain) in vhost.domains.iter().enumerate() {
                let path = format!("{path}.domains[{k}]");
                let lower = domain.to_ascii_lowercase();
                if domain.is_empty() {
                    errors.push(path, "a domain may not be empty");
                } else if domain.len() > 1 && domain[1..domain.len() - 1].contains('*') {
                    errors.push(path, "a wildcard may only start or end a domain");
                } else if !domains.insert(lower) {
                    errors.push(path, format!("{domain:?} is already served by another virtual host"));
                }
            }
            for (k, route) in vhost.routes.iter().enumerate() {
                check_route(&mut errors, &format!("{path}.routes[{k}]"), route, snapshot, &clusters);
            }
        }
    }

    let mut cluster_names = HashSet::new();
    for (i, cluster) in snapshot.clusters.iter().enumerate() {
        let path = format!("clusters[{i}]");
        check_name(&mut errors, &path, &cluster.name, &mut cluster_names);
        let mut endpoint_addresses = HashSet::new();
        for (j, endpoint) in cluster.endpoints.iter().enumerate() {
            let path = format!("{path}.endpoints[{j}]");
            match endpoint.address.parse::<SocketAddr>() {
                Ok(addr) if addr.port() == 0 => errors.push(format!("{path}.address"), "port 0 cannot be connected to"),
                Ok(addr) => {
                    if !endpoint_addresses.insert(addr) {
                        errors.push(format!("{path}.address"), format!("{addr} is listed twice"));
                    }
                }
                Err(_) => errors.push(
                    format!("{path}.address"),
                    format!("{:?} is not an ip:port socket address", endpoint.address),
                ),
            }
            if endpoint.weight == 0 {
                errors.push(format!("{path}.weight"), "must be at least 1");
            }
        }
        match (&cluster.lb_policy, &cluster.hash_on) {
            (LbPolicy::RingHash, None) => errors.push(
                format!("{path}.hash_on"),
                "ring_hash needs hash_on (header, cookie or source_ip)",
            ),
            (LbPolicy::RingHash, Some(h)) => {
                let set = usize::from(h.header.is_some()) + usize::from(h.cookie.is_some()) + usize::from(h.source_ip);
                if set != 1 {
                    errors.push(
                        format!("{path}.hash_on"),
                        "exactly one of header, cookie, source_ip must be set",
                    );
                }
            }
            (_, Some(_)) => errors.push(format!("{path}.hash_on"), "only used with lb_policy ring_hash"),
            (_, None) => {}
        }
        if cluster.connect_timeout.is_zero() {
            errors.push(format!("{path}.connect_timeout"), "must be greater than zero");
        }
        let cb = &cluster.circuit_breakers;
        for (field, value) in [
            ("max_connections", cb.max_connections),
            ("max_pending_requests", cb.max_pending_requests),
            ("max_requests", cb.max_requests),
        ] {
            if value == 0 {
                errors.push(format!("{path}.circuit_breakers.{field}"), "must be at least 1");
            }
        }
        if let Some(hc) = &cluster.health_check {
            let path = format!("{path}.health_check");
            if !hc.path.starts_with('/') {
                errors.push(format!("{path}.path"), "must start with '/'");
            }
            if hc.interval.is_zero() {
                errors.push(format!("{path}.interval"), "must be greater than zero");
            }
            if hc.timeout.is_zero() {
                errors.push(format!("{path}.timeout"), "must be greater than zero");
            }
            if hc.healthy_threshold == 0 {
                errors.push(format!("{path}.healthy_threshold"), "must be at least 1");
            }
            if hc.unhealthy_threshold == 0 {
                errors.push(format!("{path}.unhealthy_threshold"), "must be at least 1");
            }
        }
        if let Some(od) = &cluster.outlier_detection {
            if od.max_ejection_percent > 100 {
                errors.push(
                    format!("{path}.outlier_detection.max_ejection_percent"),
                    "must be at most 100",
                );
            }
            if od.base_ejection_time.is_zero() {
                errors.push(
                    format!("{path}.outlier_detection.base_ejection_time"),
                    "must be greater than zero",
                );
            }
        }
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

    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Invalid(errors.0))
    }
}

fn check_name<'a>(errors: &mut Errors, path: &str, name: &'a str, seen: &mut HashSet<&'a str>) {
    if name.is_empty() {
        errors.push(format!("{path}.name"), "a name is required");
    } else if !seen.insert(name) {
        errors.push(format!("{path}.name"), format!("{name:?} is used twice"));
    }
}

fn check_route(errors: &mut Errors, path: &str, route: &Route, snapshot: &Snapshot, clusters: &HashSet<&str>) {
    for (i, name) in route.disabled_filters.iter().enumerate() {
        let known = snapshot
            .listeners
            .iter()
            .flat_map(|l| &l.filters)
            .any(|f| &f.name == name);
        if !known {
            errors.push(
                format!("{path}.disabled_filters[{i}]"),
                format!("no filter named {name:?}"),
            );
        }
    }
    if let Some(p) = &route.matches.path {
        check_path_match(errors, &format!("{path}.match.path"), p);
    }
    for (i, header) in route.matches.headers.iter().enumerate() {
        check_header_match(errors, &format!("{path}.match.headers[{i}]"), header);
    }
    match (&route.forward, &route.direct_response) {
        (Some(forward), None) => {
            let path = format!("{path}.forward");
            if !clusters.contains(forward.cluster.as_str()) {
                errors.push(
                    format!("{path}.cluster"),
                    format!("no cluster named {:?}", forward.cluster),
                );
            } else if !forward.subset.is_empty() {
                let cluster = snapshot.cluster(&forward.cluster);
                let any = cluster.is_some_and(|c| {
                    c.endpoints
                        .iter()
                        .any(|e| forward.subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                });
                // An empty subset is legal (endpoints may come later) but almost always a typo
                // while endpoints are static; say so rather than serve 503s silently.
                if !any && cluster.is_some_and(|c| !c.endpoints.is_empty()) {
                    errors.push(
                        format!("{path}.subset"),
                        "no endpoint of the cluster carries these labels",
                    );
                }
            }
            if let Some(rewrite) = &forward.prefix_rewrite {
                if route.matches.path.as_ref().is_none_or(|p| p.prefix.is_none()) {
                    errors.push(format!("{path}.prefix_rewrite"), "needs a prefix path match");
                } else if !rewrite.starts_with('/') {
                    errors.push(format!("{path}.prefix_rewrite"), "must start with '/'");
                }
            }
            if forward.timeout.is_some_and(|t| t.is_zero()) {
                errors.push(
                    format!("{path}.timeout"),
                    "must be greater than zero (omit it for none)",
                );
            }
            if let Some(host) = &forward.host_rewrite
                && http_authority_invalid(host)
            {
                errors.push(
                    format!("{path}.host_rewrite"),
                    format!("{host:?} is not a valid authority"),
                );
            }
        }
        (None, Some(direct)) => {
            if !(100..=599).contains(&direct.status) {
                errors.push(format!("{path}.direct_response.status"), "must be between 100 and 599");
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

fn check_path_match(errors: &mut Errors, path: &str, m: &PathMatch) {
    let set = usize::from(m.exact.is_some()) + usize::from(m.prefix.is_some()) + usize::from(m.regex.is_some());
    if set != 1 {
        errors.push(path, "exactly one of exact, prefix, regex must be set");
    }
    if let Some(re) = &m.regex {
        check_regex(errors, &format!("{path}.regex"), re);
    }
}

fn check_header_match(errors: &mut Errors, path: &str, m: &HeaderMatch) {
    if http_header_name_invalid(&m.name) {
        errors.push(
            format!("{path}.name"),
            format!("{:?} is not a valid header name", m.name),
        );
    }
    let set = usize::from(m.exact.is_some()) + usize::from(m.prefix.is_some()) + usize::from(m.regex.is_some());
    if set > 1 {
        errors.push(path, "at most one of exact, prefix, regex may be set");
    }
    if let Some(re) = &m.regex {
        check_regex(errors, &format!("{path}.regex"), re);
    }
}

fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_regex(errors: &mut Errors, path: &str, re: &str) {
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
