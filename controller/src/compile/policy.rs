//! DestinationRules: which rule applies to each host, and the clusters of every host port
//! and subset with the rule's traffic policy.
//!
//! Subsets compile to clusters of their own (`outbound|9080|v2|reviews.default.svc.cluster.local`)
//! holding the matching endpoints, with the subset's policy merged over the rule's (each
//! top-level field of the subset's policy replaces the rule's), then per-port settings.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use weft_api::{
    CircuitBreakers, Cluster, Endpoint, HashOn, LbPolicy, OutlierDetection, UpstreamProtocol, UpstreamTls,
    UpstreamTlsMode,
};

use super::names;
use super::registry::{Registry, labels_match};
use crate::diagnostics::{Diagnostic, ResourceRef};
use crate::resources::{self, Kind, Spec, TrafficPolicy};
use crate::store::{Store, StoredResource};

/// Istio's default connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection pool settings, replaced as a whole by a more specific policy.
#[derive(Debug, Clone, Default, PartialEq)]
struct Pool {
    max_connections: Option<u32>,
    connect_timeout: Option<Duration>,
    max_pending_requests: Option<u32>,
    max_requests: Option<u32>,
}

/// The top-level fields of a traffic policy, each optional.
#[derive(Debug, Clone, Default, PartialEq)]
struct Parts {
    lb: Option<(LbPolicy, Option<HashOn>)>,
    pool: Option<Pool>,
    outlier: Option<OutlierDetection>,
    tls: Option<ClientTls>,
}

/// A rule's TLS setting.
#[derive(Debug, Clone, PartialEq)]
enum ClientTls {
    /// Plaintext, even to mesh sidecars.
    Disable,
    /// Mesh mutual TLS; identities to accept (empty: the endpoints' own).
    IstioMutual { sni: Option<String>, sans: Vec<String> },
    /// One-way TLS (egress origination); with `client` (a certificate and key file on the
    /// sidecar), mutual.
    Simple {
        sni: Option<String>,
        sans: Vec<String>,
        ca: Option<String>,
        client: Option<(String, String)>,
    },
}

/// What clusters need to know about mesh identity: which endpoints are sidecars that
/// accept mutual TLS, and the SPIFFE ID of each.
#[derive(Debug, Default)]
pub(crate) struct MeshEndpoints {
    /// By endpoint address (`ip:port`): the SPIFFE ID, for sidecars whose PeerAuthentication
    /// is not DISABLE.
    pub(crate) identities: HashMap<String, String>,
}

impl Parts {
    /// `self` with every field `over` sets replaced.
    fn overlay(&self, over: &Parts) -> Parts {
        Parts {
            lb: over.lb.clone().or_else(|| self.lb.clone()),
            pool: over.pool.clone().or_else(|| self.pool.clone()),
            outlier: over.outlier.clone().or_else(|| self.outlier.clone()),
            tls: over.tls.clone().or_else(|| self.tls.clone()),
        }
    }
}

/// A traffic policy with its per-port overrides.
#[derive(Debug, Clone, Default)]
struct Policy {
    top: Parts,
    ports: BTreeMap<u16, Parts>,
}

impl Policy {
    fn at_port(&self, port: u16) -> Parts {
        match self.ports.get(&port) {
            Some(over) => self.top.overlay(over),
            None => self.top.clone(),
        }
    }
}

/// A DestinationRule, checked.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) namespace: String,
    pub(crate) name: String,
    policy: Policy,
    /// Subsets by name: labels and policy.
    subsets: BTreeMap<String, (BTreeMap<String, String>, Policy)>,
}

impl Rule {
    pub(crate) fn has_subset(&self, name: &str) -> bool {
        self.subsets.contains_key(name)
    }
}

/// The rules and which applies to each host.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    pub(crate) rules: Vec<Rule>,
    /// By host index (in the registry): the rule applying.
    pub(crate) host_rule: Vec<Option<usize>>,
}

impl Policies {
    /// The rule applying to a host.
    pub(crate) fn rule_for(&self, host: usize) -> Option<&Rule> {
        self.host_rule.get(host).copied().flatten().map(|r| &self.rules[r])
    }
}

/// Checks every DestinationRule, assigns them to hosts and builds every host's clusters.
pub(crate) fn build(
    store: &Store,
    registry: &Registry,
    mesh: &MeshEndpoints,
    clusters: &mut BTreeMap<String, Cluster>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Policies {
    let mut stored: Vec<&StoredResource> = store.of_kind(Kind::DestinationRule).collect();
    stored.sort_by(|a, b| (&a.origin, a.namespace(), a.name()).cmp(&(&b.origin, b.namespace(), b.name())));

    let mut policies = Policies::default();
    // Exact hosts and wildcards, each with the rule indexes in precedence order.
    let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
    let mut wildcards: Vec<(String, usize)> = Vec::new();
    for stored in stored {
        let Spec::DestinationRule(spec) = &stored.resource.spec else {
            continue;
        };
        let at = stored.reference();
        let host = names::resolve_host(&spec.host, stored.namespace(), |h| registry.is_service(h));
        if let Err(why) = names::check_host(&host) {
            diagnostics.push(Diagnostic::error(
                &at,
                "spec.host",
                format!("{why}; the rule is ignored"),
            ));
            continue;
        }
        if spec.export_to.iter().any(|e| e != "*") {
            diagnostics.push(Diagnostic::warning(
                &at,
                "spec.exportTo",
                "not supported yet for DestinationRules; the rule applies in every namespace",
            ));
        }
        let rule_policy = spec
            .traffic_policy
            .as_ref()
            .map(|tp| policy(tp, "spec.trafficPolicy", &at, diagnostics))
            .unwrap_or_default();
        let mut subsets = BTreeMap::new();
        for (i, subset) in spec.subsets.iter().enumerate() {
            let field = format!("spec.subsets[{i}]");
            if subset.name.is_empty() {
                diagnostics.push(Diagnostic::error(
                    &at,
                    format!("{field}.name"),
                    "a subset needs a name; ignored",
                ));
                continue;
            }
            if subsets.contains_key(&subset.name) {
                diagnostics.push(Diagnostic::error(
                    &at,
                    format!("{field}.name"),
                    format!("subset {:?} is defined twice; this one is ignored", subset.name),
                ));
                continue;
            }
            let subset_policy = subset
                .traffic_policy
                .as_ref()
                .map(|tp| policy(tp, &format!("{field}.trafficPolicy"), &at, diagnostics))
                .unwrap_or_default();
            subsets.insert(subset.name.clone(), (subset.labels.clone(), subset_policy));
        }
        let index = policies.rules.len();
        policies.rules.push(Rule {
            namespace: stored.namespace().to_owned(),
            name: stored.name().to_owned(),
            policy: rule_policy,
            subsets,
        });
        if host.starts_with('*') {
            wildcards.push((host, index));
        } else {
            let claimants = exact.entry(host.clone()).or_default();
            if let Some(&first) = claimants.first() {
                let winner = &policies.rules[first];
                diagnostics.push(Diagnostic::error(
                    &at,
                    "spec.host",
                    format!(
                        "host {host} already has DestinationRule {}/{} (first by origin and name); this rule is ignored",
                        winner.namespace, winner.name
                    ),
                ));
            }
            claimants.push(index);
            if registry.host(&host).is_none() {
                diagnostics.push(Diagnostic::warning(
                    &at,
                    "spec.host",
                    format!("no Service or ServiceEntry has host {host}; the rule applies to nothing"),
                ));
            }
        }
    }
    // Most specific wildcard first; ties keep precedence order (stable sort).
    wildcards.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.len()));

    policies.host_rule = registry
        .hosts
        .iter()
        .map(|host| {
            exact.get(&host.fqdn).and_then(|c| c.first().copied()).or_else(|| {
                wildcards
                    .iter()
                    .find(|(pattern, _)| names::host_matches(pattern, &host.fqdn))
                    .map(|(_, i)| *i)
            })
        })
        .collect();

    for (h, host) in registry.hosts.iter().enumerate() {
        let rule = policies.rule_for(h);
        let http = host.ports.iter().map(|port| (port, false));
        for (port, passthrough) in http.chain(host.tls_ports.iter().map(|port| (port, true))) {
            let base = rule.map(|r| r.policy.at_port(port.number)).unwrap_or_default();
            // A passthrough port's bytes are the client's TLS: no TLS of the rule's, nor
            // auto mTLS, applies to them.
            let cluster = |name, endpoints, parts: &Parts| {
                let mut built = cluster(name, port.protocol, endpoints, parts, mesh);
                if passthrough {
                    built.tls = None;
                }
                built
            };
            let name = names::outbound_cluster(Some(port.number), "", &host.fqdn);
            let endpoints: Vec<Endpoint> = port
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    mesh: mesh.identities.contains_key(&e.address),
                    ..e.clone()
                })
                .collect();
            clusters.insert(name.clone(), cluster(name, endpoints.clone(), &base));
            for (subset, (labels, subset_policy)) in rule.map(|r| &r.subsets).into_iter().flatten() {
                let parts = base.overlay(&subset_policy.at_port(port.number));
                let endpoints: Vec<Endpoint> = endpoints
                    .iter()
                    .filter(|e| labels_match(labels, &e.labels))
                    .cloned()
                    .collect();
                let name = names::outbound_cluster(Some(port.number), subset, &host.fqdn);
                clusters.insert(name.clone(), cluster(name, endpoints, &parts));
            }
        }
    }
    policies
}

/// A cluster with no endpoints (requests to it get 503 `no_healthy_upstream`): what a
/// dangling destination compiles to.
pub(crate) fn empty_cluster(name: String) -> Cluster {
    cluster(
        name,
        UpstreamProtocol::Http1,
        Vec::new(),
        &Parts::default(),
        &MeshEndpoints::default(),
    )
}

/// TLS to a cluster's endpoints: as the rule says, else Istio's auto mTLS (mutual TLS to
/// the endpoints that are mesh sidecars, plaintext to the others). Mesh TLS accepts the
/// identities of the cluster's own endpoints unless the rule names others.
fn upstream_tls(parts: &Parts, endpoints: &[Endpoint], mesh: &MeshEndpoints) -> Option<UpstreamTls> {
    let identities = || {
        let mut ids: Vec<String> = endpoints
            .iter()
            .filter_map(|e| mesh.identities.get(&e.address).cloned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    match &parts.tls {
        Some(ClientTls::Disable) => None,
        Some(ClientTls::IstioMutual { sni, sans }) => Some(UpstreamTls {
            mode: UpstreamTlsMode::IstioMutual,
            sni: sni.clone(),
            subject_alt_names: if sans.is_empty() { identities() } else { sans.clone() },
            ca_certificates: None,
            mesh_endpoints_only: false,
            client_certificate: None,
            private_key: None,
        }),
        Some(ClientTls::Simple { sni, sans, ca, client }) => Some(UpstreamTls {
            mode: if client.is_some() {
                UpstreamTlsMode::Mutual
            } else {
                UpstreamTlsMode::Simple
            },
            sni: sni.clone(),
            subject_alt_names: sans.clone(),
            ca_certificates: ca.clone(),
            mesh_endpoints_only: false,
            client_certificate: client.as_ref().map(|(cert, _)| cert.clone()),
            private_key: client.as_ref().map(|(_, key)| key.clone()),
        }),
        None if endpoints.iter().any(|e| e.mesh) => Some(UpstreamTls {
            mode: UpstreamTlsMode::IstioMutual,
            sni: None,
            subject_alt_names: identities(),
            ca_certificates: None,
            mesh_endpoints_only: true,
            client_certificate: None,
            private_key: None,
        }),
        None => None,
    }
}

fn cluster(
    name: String,
    protocol: UpstreamProtocol,
    endpoints: Vec<Endpoint>,
    parts: &Parts,
    mesh: &MeshEndpoints,
) -> Cluster {
    let tls = upstream_tls(parts, &endpoints, mesh);
    let (lb_policy, hash_on) = parts.lb.clone().unwrap_or((LbPolicy::LeastRequest, None));
    let pool = parts.pool.clone().unwrap_or_default();
    Cluster {
        name,
        protocol,
        endpoints,
        lb_policy,
        hash_on,
        connect_timeout: pool.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        // Istio's defaults: effectively unlimited.
        circuit_breakers: CircuitBreakers {
            max_connections: pool.max_connections.unwrap_or(u32::MAX),
            max_pending_requests: pool.max_pending_requests.unwrap_or(u32::MAX),
            max_requests: pool.max_requests.unwrap_or(u32::MAX),
        },
        health_check: None,
        outlier_detection: parts.outlier.clone(),
        tls,
    }
}

fn policy(tp: &TrafficPolicy, field: &str, at: &ResourceRef<'_>, diagnostics: &mut Vec<Diagnostic>) -> Policy {
    let top = parts(
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
        field,
        at,
        diagnostics,
    );
    let mut ports = BTreeMap::new();
    for (i, port_policy) in tp.port_level_settings.iter().enumerate() {
        let field = format!("{field}.portLevelSettings[{i}]");
        let Some(port) = port_policy.port.map(|p| p.number).filter(|p| *p != 0) else {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.port"),
                "a port number is required; ignored",
            ));
            continue;
        };
        let parts = parts(
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            port_policy.tls.as_ref(),
            &field,
            at,
            diagnostics,
        );
        if ports.insert(port, parts).is_some() {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.port"),
                format!("port {port} has settings twice; the last ones apply"),
            ));
        }
    }
    Policy { top, ports }
}

fn parts(
    lb: Option<&resources::LoadBalancer>,
    pool: Option<&resources::ConnectionPool>,
    outlier: Option<&resources::OutlierDetection>,
    tls: Option<&resources::ClientTls>,
    field: &str,
    at: &ResourceRef<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Parts {
    Parts {
        lb: lb.and_then(|lb| load_balancer(lb, &format!("{field}.loadBalancer"), at, diagnostics)),
        pool: pool.map(|pool| connection_pool(pool, &format!("{field}.connectionPool"), at, diagnostics)),
        outlier: outlier.map(|od| outlier_detection(od, &format!("{field}.outlierDetection"), at, diagnostics)),
        tls: tls.and_then(|tls| client_tls(tls, &format!("{field}.tls"), at, diagnostics)),
    }
}

/// A rule's `tls`; `None` (with a diagnostic) when it cannot be honoured.
fn client_tls(
    tls: &resources::ClientTls,
    field: &str,
    at: &ResourceRef<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ClientTls> {
    let sni = tls.sni.clone().filter(|s| !s.is_empty());
    let sans = tls.subject_alt_names.clone();
    match tls.mode.as_deref().unwrap_or("DISABLE") {
        "DISABLE" => Some(ClientTls::Disable),
        "ISTIO_MUTUAL" => {
            if tls.ca_certificates.is_some() {
                diagnostics.push(Diagnostic::warning(
                    at,
                    format!("{field}.caCertificates"),
                    "ISTIO_MUTUAL verifies with the mesh's trust bundle; ignored",
                ));
            }
            if tls.client_certificate.is_some() || tls.private_key.is_some() {
                diagnostics.push(Diagnostic::warning(
                    at,
                    format!("{field}.clientCertificate"),
                    "ISTIO_MUTUAL presents the workload certificate; ignored",
                ));
            }
            Some(ClientTls::IstioMutual { sni, sans })
        }
        mode @ ("SIMPLE" | "MUTUAL") => {
            let client = if mode == "MUTUAL" {
                match (&tls.client_certificate, &tls.private_key) {
                    (Some(cert), Some(key)) if !cert.is_empty() && !key.is_empty() => Some((cert.clone(), key.clone())),
                    _ => {
                        diagnostics.push(Diagnostic::error(
                            at,
                            format!("{field}.mode"),
                            "MUTUAL needs clientCertificate and privateKey (files on the sidecar); the setting is ignored",
                        ));
                        return None;
                    }
                }
            } else {
                for (name, value) in [
                    ("clientCertificate", &tls.client_certificate),
                    ("privateKey", &tls.private_key),
                ] {
                    if value.is_some() {
                        diagnostics.push(Diagnostic::warning(
                            at,
                            format!("{field}.{name}"),
                            "only MUTUAL presents a client certificate; ignored",
                        ));
                    }
                }
                None
            };
            let ca = match &tls.ca_certificates {
                None => None,
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
                    Ok(_) => {
                        diagnostics.push(Diagnostic::error(
                            at,
                            format!("{field}.caCertificates"),
                            format!("{path} holds no PEM certificate; the system's roots are used"),
                        ));
                        None
                    }
                    Err(e) => {
                        diagnostics.push(Diagnostic::error(
                            at,
                            format!("{field}.caCertificates"),
                            format!("cannot read {path}: {e}; the system's roots are used"),
                        ));
                        None
                    }
                },
            };
            Some(ClientTls::Simple { sni, sans, ca, client })
        }
        other => {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.mode"),
                format!("unknown mode {other:?} (DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL); the setting is ignored"),
            ));
            None
        }
    }
}

fn load_balancer(
    lb: &resources::LoadBalancer,
    field: &str,
    at: &ResourceRef<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(LbPolicy, Option<HashOn>)> {
    if let Some(hash) = &lb.consistent_hash {
        if lb.simple.is_some() {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.simple"),
                "simple and consistentHash are exclusive; consistentHash applies",
            ));
        }
        let on = HashOn {
            header: hash.http_header_name.clone().filter(|h| !h.is_empty()),
            cookie: hash
                .http_cookie
                .as_ref()
                .map(|c| c.name.clone())
                .filter(|c| !c.is_empty()),
            source_ip: hash.use_source_ip == Some(true),
        };
        let keys = usize::from(on.header.is_some()) + usize::from(on.cookie.is_some()) + usize::from(on.source_ip);
        if keys != 1 {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.consistentHash"),
                "exactly one of httpHeaderName, httpCookie, useSourceIp is needed; the default policy applies",
            ));
            return None;
        }
        if let Some(header) = &on.header
            && let Err(why) = names::check_header_name(header)
        {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.consistentHash.httpHeaderName"),
                format!("{why}; the default policy applies"),
            ));
            return None;
        }
        return Some((LbPolicy::RingHash, Some(on)));
    }
    match lb.simple.as_deref()? {
        "ROUND_ROBIN" => Some((LbPolicy::RoundRobin, None)),
        "LEAST_REQUEST" | "LEAST_CONN" => Some((LbPolicy::LeastRequest, None)),
        "RANDOM" => Some((LbPolicy::Random, None)),
        "UNSPECIFIED" => None,
        "PASSTHROUGH" => {
            diagnostics.push(Diagnostic::warning(
                at,
                format!("{field}.simple"),
                "PASSTHROUGH is not supported (no original destination); the default LEAST_REQUEST applies",
            ));
            None
        }
        other => {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.simple"),
                format!("unknown policy {other:?}; the default LEAST_REQUEST applies"),
            ));
            None
        }
    }
}

/// A positive count as u32: 0 or absent means unset (Istio's default), negatives are refused.
fn count(value: Option<i64>, field: String, at: &ResourceRef<'_>, diagnostics: &mut Vec<Diagnostic>) -> Option<u32> {
    match value? {
        0 => None,
        n if n < 0 => {
            diagnostics.push(Diagnostic::error(
                at,
                field,
                "must not be negative; the default applies",
            ));
            None
        }
        n => Some(u32::try_from(n).unwrap_or(u32::MAX)),
    }
}

fn connection_pool(
    pool: &resources::ConnectionPool,
    field: &str,
    at: &ResourceRef<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Pool {
    let tcp = pool.tcp.clone().unwrap_or_default();
    let http = pool.http.clone().unwrap_or_default();
    let connect_timeout = match tcp.connect_timeout {
        Some(t) if t.is_zero() => {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.tcp.connectTimeout"),
                "must be greater than zero; the default 10s applies",
            ));
            None
        }
        other => other,
    };
    Pool {
        max_connections: count(
            tcp.max_connections,
            format!("{field}.tcp.maxConnections"),
            at,
            diagnostics,
        ),
        connect_timeout,
        max_pending_requests: count(
            http.http1_max_pending_requests,
            format!("{field}.http.http1MaxPendingRequests"),
            at,
            diagnostics,
        ),
        max_requests: count(
            http.http2_max_requests,
            format!("{field}.http.http2MaxRequests"),
            at,
            diagnostics,
        ),
    }
}

fn outlier_detection(
    od: &resources::OutlierDetection,
    field: &str,
    at: &ResourceRef<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> OutlierDetection {
    let mut out = OutlierDetection {
        consecutive_5xx: 5,
        consecutive_gateway_errors: 0,
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 10,
    };
    let mut non_negative = |value: Option<i64>, name: &str| -> Option<u32> {
        let value = value?;
        if value < 0 {
            diagnostics.push(Diagnostic::error(
                at,
                format!("{field}.{name}"),
                "must not be negative; the default applies",
            ));
            return None;
        }
        Some(u32::try_from(value).unwrap_or(u32::MAX))
    };
    if let Some(n) = non_negative(od.consecutive_5xx_errors, "consecutive5xxErrors") {
        out.consecutive_5xx = n;
    }
    if let Some(n) = non_negative(od.consecutive_gateway_errors, "consecutiveGatewayErrors") {
        out.consecutive_gateway_errors = n;
    }
    if let Some(n) = non_negative(od.max_ejection_percent, "maxEjectionPercent") {
        out.max_ejection_percent = n.min(100);
        if n > 100 {
            diagnostics.push(Diagnostic::warning(
                at,
                format!("{field}.maxEjectionPercent"),
                "above 100; 100 applies",
            ));
        }
    }
    match od.base_ejection_time {
        Some(t) if t.is_zero() => diagnostics.push(Diagnostic::error(
            at,
            format!("{field}.baseEjectionTime"),
            "must be greater than zero; the default 30s applies",
        )),
        Some(t) => out.base_ejection_time = t,
        None => {}
    }
    out
}
