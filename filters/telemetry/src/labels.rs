//! Istio's standard metric labels, computed from what the proxy knows about one request.
//!
//! Pure: the filter gathers a [`RequestFacts`] and the local [`Workload`] from properties,
//! [`compute`] turns them into [`Labels`], and [`Labels::series`] renders the Prometheus label
//! set the metric names carry.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::Reporter;

/// The value Istio reports for anything it does not know.
pub const UNKNOWN: &str = "unknown";

/// The canonical revision Istio reports when a workload has none.
pub const LATEST: &str = "latest";

/// Every label the filter sets, in the order the series carry them.
pub const STANDARD_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
    "source_cluster",
    "destination_cluster",
];

/// What the proxy's node metadata says about the local workload (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node.metadata.WORKLOAD_NAME`.
    pub workload_name: Option<String>,
    /// `node.metadata.NAMESPACE`.
    pub namespace: Option<String>,
    /// `node.metadata.CLUSTER_ID`.
    pub cluster_id: Option<String>,
    /// `node.metadata.LABELS`: the workload's (pod's) labels.
    pub labels: BTreeMap<String, String>,
}

/// One side of a request, as the labels describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Workload name (e.g. the Deployment's).
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
    /// Canonical service.
    pub canonical_service: String,
    /// Canonical revision.
    pub canonical_revision: String,
    /// Cluster id.
    pub cluster: String,
}

impl Workload {
    /// A workload the proxy knows nothing about (Istio's values for a missing peer).
    pub fn unknown() -> Self {
        Self {
            name: UNKNOWN.to_owned(),
            namespace: UNKNOWN.to_owned(),
            app: UNKNOWN.to_owned(),
            version: UNKNOWN.to_owned(),
            canonical_service: UNKNOWN.to_owned(),
            canonical_revision: LATEST.to_owned(),
            cluster: UNKNOWN.to_owned(),
        }
    }

    /// The local workload. Missing values are `unknown`; the canonical service and revision
    /// fall back as Istio's sidecar injector derives them: `service.istio.io/canonical-name`,
    /// then `app.kubernetes.io/name`, then `app`, then the workload name; and
    /// `service.istio.io/canonical-revision`, then `app.kubernetes.io/version`, then `version`,
    /// then `latest`.
    pub fn local(node: &NodeInfo) -> Self {
        let label = |key: &str| node.labels.get(key).map(String::as_str).filter(|v| !v.is_empty());
        let given = |value: &Option<String>| value.as_deref().filter(|v| !v.is_empty()).map(str::to_owned);
        let name = given(&node.workload_name);
        let canonical_service = label("service.istio.io/canonical-name")
            .or_else(|| label("app.kubernetes.io/name"))
            .or_else(|| label("app"))
            .map(str::to_owned)
            .or_else(|| name.clone())
            .unwrap_or_else(|| UNKNOWN.to_owned());
        let canonical_revision = label("service.istio.io/canonical-revision")
            .or_else(|| label("app.kubernetes.io/version"))
            .or_else(|| label("version"))
            .unwrap_or(LATEST)
            .to_owned();
        Self {
            name: name.unwrap_or_else(|| UNKNOWN.to_owned()),
            namespace: given(&node.namespace).unwrap_or_else(|| UNKNOWN.to_owned()),
            app: label("app").unwrap_or(UNKNOWN).to_owned(),
            version: label("version").unwrap_or(UNKNOWN).to_owned(),
            canonical_service,
            canonical_revision,
            cluster: given(&node.cluster_id).unwrap_or_else(|| UNKNOWN.to_owned()),
        }
    }
}

/// What the proxy knows about one finished request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// `request.host`: the authority, possibly with a port; empty if unknown.
    pub host: &'a str,
    /// `weft.cluster`: the cluster the request went to, if any.
    pub cluster: Option<&'a str>,
    /// The request's `content-type` starts with `application/grpc`.
    pub grpc: bool,
    /// `response.code`; 0 if there was no response.
    pub response_code: u16,
    /// The response's `grpc-status` header, if the filter saw one.
    pub grpc_status: Option<&'a str>,
    /// `response.code_details`: `via_upstream` or the proxy's local-reply reason.
    pub code_details: &'a str,
    /// `weft.response_flags`, set by another filter of the chain, if any.
    pub flags_override: Option<&'a str>,
    /// `connection.mtls`.
    pub mtls: bool,
    /// `source.principal`: the downstream peer's identity, if known.
    pub peer_principal: Option<&'a str>,
}

/// The standard labels of one request, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs, reason = "each field is the Istio label of the same name")]
pub struct Labels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub request_protocol: &'static str,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
    pub source_cluster: String,
    pub destination_cluster: String,
}

impl Labels {
    /// `(name, value)` pairs in [`STANDARD_LABELS`] order.
    pub fn pairs(&self) -> [(&'static str, &str); 25] {
        let values = [
            self.reporter,
            &self.source_workload,
            &self.source_workload_namespace,
            &self.source_principal,
            &self.source_app,
            &self.source_version,
            &self.source_canonical_service,
            &self.source_canonical_revision,
            &self.destination_workload,
            &self.destination_workload_namespace,
            &self.destination_principal,
            &self.destination_app,
            &self.destination_version,
            &self.destination_service,
            &self.destination_service_name,
            &self.destination_service_namespace,
            &self.destination_canonical_service,
            &self.destination_canonical_revision,
            self.request_protocol,
            &self.response_code,
            &self.grpc_response_status,
            &self.response_flags,
            self.connection_security_policy,
            &self.source_cluster,
            &self.destination_cluster,
        ];
        let mut out = [("", ""); 25];
        for (slot, (name, value)) in out.iter_mut().zip(STANDARD_LABELS.into_iter().zip(values)) {
            *slot = (name, value);
        }
        out
    }

    /// The Prometheus label set (without braces): the standard labels, then `extra` in key
    /// order, values escaped. `istio_requests_total{<this>}` names one series.
    pub fn series(&self, extra: &BTreeMap<String, String>) -> String {
        let mut out = String::with_capacity(900);
        let extra = extra.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (i, (name, value)) in self.pairs().into_iter().chain(extra).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{name}=\"");
            escape_label_value(value, &mut out);
            out.push('"');
        }
        out
    }
}

/// The labels Istio would report for this request. With `use_host` false, the request's
/// host is ignored (the destination service then comes from the cluster): the filter uses
/// this to bound the number of series when clients send many different hosts.
pub fn compute(reporter: Reporter, local: &Workload, facts: &RequestFacts<'_>, use_host: bool) -> Labels {
    let host = if use_host {
        host_without_port(facts.host)
    } else {
        String::new()
    };
    let kube = kube_service(&host);
    let cluster = facts.cluster.filter(|c| !c.is_empty());
    let unknown = || UNKNOWN.to_owned();
    let (source, destination, source_principal, destination_principal, service_fallback, service_namespace, policy);
    match reporter {
        Reporter::Destination => {
            let mut peer = Workload::unknown();
            let principal = facts.peer_principal.filter(|p| !p.is_empty());
            if let Some(namespace) = principal.and_then(principal_namespace) {
                namespace.clone_into(&mut peer.namespace);
            }
            source = peer;
            destination = local.clone();
            source_principal = principal.map_or_else(unknown, str::to_owned);
            destination_principal = unknown();
            service_fallback = local.canonical_service.clone();
            service_namespace = local.namespace.clone();
            policy = if facts.mtls { "mutual_tls" } else { "none" };
        }
        Reporter::Source => {
            source = local.clone();
            destination = Workload::unknown();
            source_principal = unknown();
            destination_principal = unknown();
            service_fallback = unknown();
            service_namespace = kube.map_or_else(unknown, |(_, namespace)| namespace.to_owned());
            policy = "unknown";
        }
    }
    let (service, service_name) = match (host.as_str(), cluster) {
        ("", Some(cluster)) => (cluster.to_owned(), cluster.to_owned()),
        ("", None) => (service_fallback.clone(), service_fallback),
        (host, _) => (host.to_owned(), kube.map_or(host, |(name, _)| name).to_owned()),
    };
    Labels {
        reporter: reporter.as_str(),
        source_workload: source.name,
        source_workload_namespace: source.namespace,
        source_principal,
        source_app: source.app,
        source_version: source.version,
        source_canonical_service: source.canonical_service,
        source_canonical_revision: source.canonical_revision,
        destination_workload: destination.name,
        destination_workload_namespace: destination.namespace,
        destination_principal,
        destination_app: destination.app,
        destination_version: destination.version,
        destination_service: service,
        destination_service_name: service_name,
        destination_service_namespace: service_namespace,
        destination_canonical_service: destination.canonical_service,
        destination_canonical_revision: destination.canonical_revision,
        request_protocol: if facts.grpc { "grpc" } else { "http" },
        response_code: facts.response_code.to_string(),
        grpc_response_status: grpc_response_status(facts.grpc, facts.grpc_status, facts.response_code),
        response_flags: response_flags(facts.code_details, facts.response_code, facts.flags_override).to_owned(),
        connection_security_policy: policy,
        source_cluster: source.cluster,
        destination_cluster: destination.cluster,
    }
}

/// Whether a request `content-type` makes the request gRPC (`application/grpc`,
/// `application/grpc+proto`, `application/grpc-web`, ...).
pub fn is_grpc(content_type: &str) -> bool {
    content_type
        .get(..16)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("application/grpc"))
}

/// Envoy's `%RESPONSE_FLAGS%` (short form) for a finished request: a valid `flags_override`
/// (set by a filter of the chain) wins; otherwise the proxy's local-reply reason
/// (`response.code_details`) maps to the flag Envoy sets in the same situation, and `-` means
/// none.
pub fn response_flags<'a>(code_details: &str, status: u16, flags_override: Option<&'a str>) -> &'a str {
    if let Some(flags) = flags_override.filter(|f| is_flags(f)) {
        return flags;
    }
    match code_details {
        "no_route" => "NR",
        "no_healthy_upstream" => "UH",
        "upstream_connect_failure" => "UF",
        "upstream_overflow" => "UO",
        "upstream_timeout" => "UT",
        // The upstream connection broke before the response headers.
        "upstream_reset" => "UC",
        "bad_request" => "DPE",
        // A filter answered. Envoy's own filters flag their denials: ext_authz `UAEX`, the
        // rate limit filter `RL`. Other local replies carry no flag.
        "filter" | "filter_failure" => match status {
            401 | 403 => "UAEX",
            429 => "RL",
            _ => "-",
        },
        _ => "-",
    }
}

/// Whether `flags` looks like Envoy response flags: comma-separated codes of 2-5 capital
/// letters (`UH`, `URX`, `UAEX`, `FI,RL`) or `-`.
fn is_flags(flags: &str) -> bool {
    flags == "-"
        || (flags.len() <= 32
            && flags
                .split(',')
                .all(|f| (2..=5).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_uppercase())))
}

/// Istio's `grpc_response_status`: empty for non-gRPC requests; else the `grpc-status` the
/// filter saw (if it is one of gRPC's codes, 0-16), else the gRPC status implied by the HTTP status (as Envoy infers it), except
/// that a 200 without a visible `grpc-status` (it then travels in trailers, which Weft does
/// not show filters) stays empty rather than `2` (UNKNOWN).
pub fn grpc_response_status(grpc: bool, header: Option<&str>, status: u16) -> String {
    if !grpc {
        return String::new();
    }
    // Only the codes gRPC defines (0-16): the label stays bounded whatever upstreams send.
    if let Some(code) = header
        .map(str::trim)
        .and_then(|h| h.parse::<u8>().ok())
        .filter(|c| *c <= 16)
    {
        return code.to_string();
    }
    match status {
        0 | 200 => String::new(),
        400 => "13".to_owned(),             // INTERNAL
        401 => "16".to_owned(),             // UNAUTHENTICATED
        403 => "7".to_owned(),              // PERMISSION_DENIED
        404 => "12".to_owned(),             // UNIMPLEMENTED
        429 | 502..=504 => "14".to_owned(), // UNAVAILABLE
        _ => "2".to_owned(),                // UNKNOWN
    }
}

/// The authority's host, lowercased, without the port (`Reviews:9080` → `reviews`,
/// `[::1]:80` → `[::1]`).
pub fn host_without_port(authority: &str) -> String {
    let host = if authority.starts_with('[') {
        authority.find(']').map_or(authority, |end| &authority[..=end])
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        }
    };
    host.to_ascii_lowercase()
}

/// `(service, namespace)` of a Kubernetes service host (`reviews.shop.svc` or
/// `reviews.shop.svc.cluster.local`).
pub fn kube_service(host: &str) -> Option<(&str, &str)> {
    let mut parts = host.split('.');
    let (name, namespace, svc) = (parts.next()?, parts.next()?, parts.next()?);
    (svc == "svc" && !name.is_empty() && !namespace.is_empty()).then_some((name, namespace))
}

/// The namespace in a SPIFFE principal (`spiffe://cluster.local/ns/shop/sa/reviews` or
/// `cluster.local/ns/shop/sa/reviews` → `shop`).
pub fn principal_namespace(principal: &str) -> Option<&str> {
    let (_, rest) = principal.split_once("/ns/")?;
    let namespace = rest.split('/').next()?;
    (!namespace.is_empty()).then_some(namespace)
}

/// Appends `value` escaped for a Prometheus label value (`\`, `"` and newlines).
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        NodeInfo {
            workload_name: Some("reviews-v2".into()),
            namespace: Some("shop".into()),
            cluster_id: Some("east".into()),
            labels: BTreeMap::from([
                ("app".into(), "reviews".into()),
                ("version".into(), "v2".into()),
                ("service.istio.io/canonical-name".into(), "reviews-svc".into()),
                ("service.istio.io/canonical-revision".into(), "2.1".into()),
            ]),
        }
    }

    fn facts() -> RequestFacts<'static> {
        RequestFacts {
            host: "reviews.shop.svc.cluster.local:9080",
            cluster: Some("reviews"),
            response_code: 200,
            code_details: "via_upstream",
            ..Default::default()
        }
    }

    fn get<'a>(labels: &'a Labels, name: &str) -> &'a str {
        labels
            .pairs()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no label {name}"))
    }

    #[test]
    fn the_local_workload_comes_from_node_metadata_with_istio_fallbacks() {
        let local = Workload::local(&node());
        assert_eq!(
            local,
            Workload {
                name: "reviews-v2".into(),
                namespace: "shop".into(),
                app: "reviews".into(),
                version: "v2".into(),
                canonical_service: "reviews-svc".into(),
                canonical_revision: "2.1".into(),
                cluster: "east".into(),
            }
        );
        let mut plain = node();
        plain.labels.retain(|k, _| !k.starts_with("service.istio.io/"));
        let local = Workload::local(&plain);
        assert_eq!(
            (local.canonical_service.as_str(), local.canonical_revision.as_str()),
            ("reviews", "v2")
        );
        plain.labels.insert("app.kubernetes.io/name".into(), "rev".into());
        plain.labels.insert("app.kubernetes.io/version".into(), "3".into());
        let local = Workload::local(&plain);
        assert_eq!(
            (local.canonical_service.as_str(), local.canonical_revision.as_str()),
            ("rev", "3")
        );
        let bare = NodeInfo {
            workload_name: Some("ratings".into()),
            ..Default::default()
        };
        let local = Workload::local(&bare);
        assert_eq!(
            local.canonical_service, "ratings",
            "the workload name is the last resort"
        );
        assert_eq!(local.canonical_revision, LATEST);
        assert_eq!((local.namespace.as_str(), local.app.as_str()), (UNKNOWN, UNKNOWN));
        let empty = Workload::local(&NodeInfo::default());
        assert_eq!(
            empty,
            Workload {
                canonical_revision: LATEST.into(),
                ..Workload::unknown()
            }
        );
    }

    #[test]
    fn destination_reporter_describes_the_local_workload_as_destination() {
        let labels = compute(Reporter::Destination, &Workload::local(&node()), &facts(), true);
        let expected = [
            ("reporter", "destination"),
            ("source_workload", "unknown"),
            ("source_workload_namespace", "unknown"),
            ("source_principal", "unknown"),
            ("source_app", "unknown"),
            ("source_version", "unknown"),
            ("source_canonical_service", "unknown"),
            ("source_canonical_revision", "latest"),
            ("destination_workload", "reviews-v2"),
            ("destination_workload_namespace", "shop"),
            ("destination_principal", "unknown"),
            ("destination_app", "reviews"),
            ("destination_version", "v2"),
            ("destination_service", "reviews.shop.svc.cluster.local"),
            ("destination_service_name", "reviews"),
            ("destination_service_namespace", "shop"),
            ("destination_canonical_service", "reviews-svc"),
            ("destination_canonical_revision", "2.1"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("grpc_response_status", ""),
            ("response_flags", "-"),
            ("connection_security_policy", "none"),
            ("source_cluster", "unknown"),
            ("destination_cluster", "east"),
        ];
        assert_eq!(labels.pairs(), expected);
    }

    #[test]
    fn destination_reporter_uses_the_peer_principal_and_mtls() {
        let facts = RequestFacts {
            mtls: true,
            peer_principal: Some("spiffe://cluster.local/ns/front/sa/web"),
            ..facts()
        };
        let labels = compute(Reporter::Destination, &Workload::local(&node()), &facts, true);
        assert_eq!(labels.source_principal, "spiffe://cluster.local/ns/front/sa/web");
        assert_eq!(labels.source_workload_namespace, "front");
        assert_eq!(labels.source_workload, UNKNOWN);
        assert_eq!(labels.connection_security_policy, "mutual_tls");
    }

    #[test]
    fn source_reporter_describes_the_local_workload_as_source() {
        let labels = compute(Reporter::Source, &Workload::local(&node()), &facts(), true);
        assert_eq!(get(&labels, "reporter"), "source");
        assert_eq!(get(&labels, "source_workload"), "reviews-v2");
        assert_eq!(get(&labels, "source_workload_namespace"), "shop");
        assert_eq!(get(&labels, "source_app"), "reviews");
        assert_eq!(get(&labels, "source_canonical_service"), "reviews-svc");
        assert_eq!(get(&labels, "source_cluster"), "east");
        assert_eq!(get(&labels, "source_principal"), UNKNOWN);
        assert_eq!(get(&labels, "destination_workload"), UNKNOWN);
        assert_eq!(get(&labels, "destination_workload_namespace"), UNKNOWN);
        assert_eq!(get(&labels, "destination_canonical_revision"), LATEST);
        assert_eq!(get(&labels, "destination_cluster"), UNKNOWN);
        assert_eq!(get(&labels, "destination_service"), "reviews.shop.svc.cluster.local");
        assert_eq!(get(&labels, "destination_service_name"), "reviews");
        assert_eq!(get(&labels, "destination_service_namespace"), "shop");
        assert_eq!(get(&labels, "connection_security_policy"), "unknown");

        let plain_host = RequestFacts {
            host: "api.example.com",
            ..facts()
        };
        let labels = compute(Reporter::Source, &Workload::local(&node()), &plain_host, true);
        assert_eq!(labels.destination_service, "api.example.com");
        assert_eq!(labels.destination_service_name, "api.example.com");
        assert_eq!(labels.destination_service_namespace, UNKNOWN);
    }

    #[test]
    fn without_a_host_the_cluster_names_the_service() {
        let local = Workload::local(&node());
        let no_host = RequestFacts { host: "", ..facts() };
        for reporter in [Reporter::Source, Reporter::Destination] {
            let labels = compute(reporter, &local, &no_host, true);
            assert_eq!(
                (
                    labels.destination_service.as_str(),
                    labels.destination_service_name.as_str()
                ),
                ("reviews", "reviews")
            );
            let ignored = compute(reporter, &local, &facts(), false);
            assert_eq!(
                ignored.destination_service, "reviews",
                "use_host=false ignores the host"
            );
        }
        let nothing = RequestFacts {
            host: "",
            cluster: None,
            ..facts()
        };
        let labels = compute(Reporter::Destination, &local, &nothing, true);
        assert_eq!(
            labels.destination_service, "reviews-svc",
            "Istio: the canonical service"
        );
        let labels = compute(Reporter::Source, &local, &nothing, true);
        assert_eq!(labels.destination_service, UNKNOWN);
        assert_eq!(labels.destination_service_name, UNKNOWN);
    }

    #[test]
    fn grpc_requests_report_their_status() {
        assert!(is_grpc("application/grpc"));
        assert!(is_grpc("application/grpc+proto"));
        assert!(is_grpc("Application/GRPC-web"));
        assert!(!is_grpc("application/json"));
        assert!(!is_grpc("application/grp"));
        assert!(!is_grpc(""));

        assert_eq!(grpc_response_status(false, Some("5"), 200), "");
        assert_eq!(grpc_response_status(true, Some("5"), 200), "5");
        assert_eq!(grpc_response_status(true, Some(" 0 "), 200), "0");
        assert_eq!(
            grpc_response_status(true, None, 200),
            "",
            "status in trailers: not visible"
        );
        assert_eq!(grpc_response_status(true, Some("bogus"), 503), "14");
        assert_eq!(grpc_response_status(true, Some("16"), 200), "16");
        assert_eq!(grpc_response_status(true, Some("17"), 200), "", "not a gRPC code");
        assert_eq!(grpc_response_status(true, Some("4294967296"), 503), "14");
        assert_eq!(grpc_response_status(true, None, 404), "12");
        assert_eq!(grpc_response_status(true, None, 403), "7");
        assert_eq!(grpc_response_status(true, None, 401), "16");
        assert_eq!(grpc_response_status(true, None, 400), "13");
        assert_eq!(grpc_response_status(true, None, 504), "14");
        assert_eq!(grpc_response_status(true, None, 500), "2");
        assert_eq!(grpc_response_status(true, None, 0), "");

        let grpc = RequestFacts {
            grpc: true,
            response_code: 503,
            code_details: "no_healthy_upstream",
            ..facts()
        };
        let labels = compute(Reporter::Destination, &Workload::local(&node()), &grpc, true);
        assert_eq!(
            (
                labels.request_protocol,
                labels.grpc_response_status.as_str(),
                labels.response_flags.as_str()
            ),
            ("grpc", "14", "UH")
        );
    }

    #[test]
    fn local_reply_reasons_map_to_envoy_response_flags() {
        let cases = [
            ("via_upstream", 200, "-"),
            ("via_upstream", 503, "-"),
            ("direct_response", 200, "-"),
            ("", 200, "-"),
            ("no_route", 404, "NR"),
            ("no_healthy_upstream", 503, "UH"),
            ("upstream_connect_failure", 502, "UF"),
            ("upstream_overflow", 503, "UO"),
            ("upstream_timeout", 504, "UT"),
            ("upstream_reset", 502, "UC"),
            ("bad_request", 400, "DPE"),
            ("filter", 403, "UAEX"),
            ("filter", 401, "UAEX"),
            ("filter", 429, "RL"),
            ("filter", 503, "-"),
            ("filter_failure", 503, "-"),
            ("payload_too_large", 413, "-"),
            ("something_new", 500, "-"),
        ];
        for (details, status, flags) in cases {
            assert_eq!(response_flags(details, status, None), flags, "{details} {status}");
        }
        assert_eq!(
            response_flags("filter", 503, Some("FI")),
            "FI",
            "a filter's own flag wins"
        );
        assert_eq!(response_flags("via_upstream", 200, Some("URX,UH")), "URX,UH");
        assert_eq!(response_flags("no_route", 404, Some("-")), "-");
        for bad in ["", "fi", "X", "TOOLONG", "UH,", "U\"H", "UH UO"] {
            assert_eq!(response_flags("no_route", 404, Some(bad)), "NR", "{bad:?} is ignored");
        }
    }

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(host_without_port("Reviews:9080"), "reviews");
        assert_eq!(host_without_port("reviews"), "reviews");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("host:notaport"), "host:notaport");
        assert_eq!(host_without_port(""), "");
        assert_eq!(
            kube_service("reviews.shop.svc.cluster.local"),
            Some(("reviews", "shop"))
        );
        assert_eq!(kube_service("reviews.shop.svc"), Some(("reviews", "shop")));
        assert_eq!(kube_service("reviews.shop"), None);
        assert_eq!(kube_service("www.example.com"), None);
        assert_eq!(kube_service(".shop.svc"), None);
        assert_eq!(
            principal_namespace("spiffe://cluster.local/ns/shop/sa/reviews"),
            Some("shop")
        );
        assert_eq!(principal_namespace("cluster.local/ns/shop"), Some("shop"));
        assert_eq!(principal_namespace("spiffe://cluster.local/ns//sa/x"), None);
        assert_eq!(principal_namespace("spiffe://example.org/web"), None);
    }

    #[test]
    fn series_render_in_order_with_extra_labels_and_escaping() {
        let facts = RequestFacts {
            host: "we\"ird\\host",
            ..facts()
        };
        let labels = compute(Reporter::Destination, &Workload::local(&node()), &facts, true);
        let extra = BTreeMap::from([
            ("zone".to_owned(), "a\nb".to_owned()),
            ("mesh".to_owned(), "m1".to_owned()),
        ]);
        let series = labels.series(&extra);
        assert!(
            series.starts_with("reporter=\"destination\",source_workload=\"unknown\","),
            "{series}"
        );
        assert!(
            series.contains(",destination_service=\"we\\\"ird\\\\host\","),
            "{series}"
        );
        assert!(
            series.ends_with(",destination_cluster=\"east\",mesh=\"m1\",zone=\"a\\nb\""),
            "{series}"
        );
        assert!(!series.contains('\n'));
        assert_eq!(series.matches("=\"").count(), 27);
    }
}
