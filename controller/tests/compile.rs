//! The intent store and compiler: resources in, snapshots and diagnostics out.

#![allow(clippy::unwrap_used, reason = "tests")]

use serde_json::{Value, json};
use weft_api::{FilterConfig, Snapshot};
use weft_controller::compile::{Mesh, NodeIdentity, compile};
use weft_controller::diagnostics::{Diagnostic, Severity};
use weft_controller::store::Store;

#[path = "common/options.rs"]
mod common;
use common::{module, options};

fn testdata(path: &str) -> String {
    let file = format!("{}/tests/testdata/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {file}: {e}"))
}

/// A store from (origin, YAML) pairs; returns the store and its diagnostics.
fn store(files: &[(&str, &str)]) -> (Store, Vec<Diagnostic>) {
    let mut store = Store::new();
    let mut diagnostics = Vec::new();
    for (origin, text) in files {
        diagnostics.extend(store.insert_yaml(origin, text));
    }
    (store, diagnostics)
}

/// Bookinfo: Services, Workloads, destination-rule-all, plus `extra` files (read from
/// testdata/bookinfo, origins prefixed so they sort before virtual-service-all-v1).
fn bookinfo(extra: &[&str]) -> (Store, Vec<Diagnostic>) {
    let mut files: Vec<(String, String)> = ["services.yaml", "workloads.yaml", "destination-rule-all.yaml"]
        .iter()
        .map(|f| (format!("bookinfo/{f}"), testdata(&format!("bookinfo/{f}"))))
        .collect();
    for f in extra {
        files.push((format!("a-{f}"), testdata(&format!("bookinfo/{f}"))));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(o, t)| (o.as_str(), t.as_str())).collect();
    store(&refs)
}

fn node(namespace: &str, id: &str, labels: &[(&str, &str)]) -> NodeIdentity {
    NodeIdentity {
        id: id.to_owned(),
        namespace: namespace.to_owned(),
        service_account: "default".to_owned(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

/// The snapshot of a node, checked with `Snapshot::validate`.
///
/// With `WEFT_DUMP_FILTER_CONFIGS=<dir>`, the first-party filter configurations are also
/// written there as JSON (`router-*.json`, ...), to check them with the filters' own parsers.
fn snapshot(mesh: &Mesh, node: &NodeIdentity) -> Snapshot {
    let snapshot = mesh.snapshot_for(node).snapshot;
    if let Err(e) = snapshot.validate() {
        panic!("invalid snapshot for {node:?}: {e}");
    }
    if let Some(dir) = std::env::var_os("WEFT_DUMP_FILTER_CONFIGS") {
        for listener in &snapshot.listeners {
            for filter in &listener.filters {
                let Some(kind) = ["router", "retry", "fault"]
                    .into_iter()
                    .find(|k| filter.name.starts_with(&format!("weft.{k}")))
                else {
                    continue;
                };
                let json = match &filter.config {
                    serde_yaml::Value::String(text) => text.clone().into_bytes(),
                    other => serde_json::to_vec(other).unwrap(),
                };
                let digest = json
                    .iter()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
                std::fs::write(
                    std::path::Path::new(&dir).join(format!("{kind}-{digest:016x}.json")),
                    json,
                )
                .unwrap();
            }
        }
    }
    snapshot
}

fn filter<'a>(snapshot: &'a Snapshot, listener: &str, name: &str) -> &'a FilterConfig {
    let listener = snapshot
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .unwrap_or_else(|| panic!("no listener {listener}"));
    listener.filters.iter().find(|f| f.name == name).unwrap_or_else(|| {
        panic!(
            "no filter {name} in {:?}",
            listener.filters.iter().map(|f| &f.name).collect::<Vec<_>>()
        )
    })
}

fn filter_names(snapshot: &Snapshot, listener: &str) -> Vec<String> {
    snapshot
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .map(|l| l.filters.iter().map(|f| f.name.clone()).collect())
        .unwrap_or_default()
}

/// A filter's configuration as JSON (the router's is JSON text).
fn config(filter: &FilterConfig) -> Value {
    match &filter.config {
        serde_yaml::Value::String(text) => serde_json::from_str(text).unwrap(),
        other => serde_json::to_value(other).unwrap(),
    }
}

/// The router's virtual host for `name`.
fn router_vhost(snapshot: &Snapshot, listener: &str, name: &str) -> Value {
    let config = config(filter(snapshot, listener, "weft.router"));
    config["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no router vhost {name} in {config}"))
}

fn errors(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect()
}

fn has(diagnostics: &[Diagnostic], severity: Severity, needle: &str) -> bool {
    diagnostics
        .iter()
        .any(|d| d.severity == severity && d.to_string().contains(needle))
}

fn route_table<'a>(snapshot: &'a Snapshot, name: &str) -> &'a weft_api::RouteTable {
    snapshot
        .route_tables
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no route table {name}"))
}

fn vhost<'a>(table: &'a weft_api::RouteTable, name: &str) -> &'a weft_api::VirtualHost {
    table
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name} in {}", table.name))
}

fn cluster<'a>(snapshot: &'a Snapshot, name: &str) -> &'a weft_api::Cluster {
    snapshot.cluster(name).unwrap_or_else(|| panic!("no cluster {name}"))
}

fn addresses(cluster: &weft_api::Cluster) -> Vec<&str> {
    cluster.endpoints.iter().map(|e| e.address.as_str()).collect()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn default_retry() -> Value {
    json!({
        "attempts": 2,
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "retriable_status_codes": [503],
    })
}

// ---------------------------------------------------------------------------------------------
// Bookinfo

#[test]
fn bookinfo_all_v1_routes_every_service_to_v1() {
    let (store, diagnostics) = bookinfo(&["virtual-service-all-v1.yaml"]);
    let mesh = compile(&store, &options());
    assert!(errors(&diagnostics).is_empty(), "{diagnostics:#?}");
    assert!(errors(mesh.diagnostics()).is_empty(), "{:#?}", mesh.diagnostics());
    assert!(has(
        &diagnostics,
        Severity::Warning,
        "ServiceAccount default/bookinfo-details (bookinfo/services.yaml): kind ServiceAccount (v1) is not supported yet"
    ));

    let compiled = mesh.snapshot_for(&node("default", "productpage-v1", &[]));
    assert_eq!(compiled.workload.as_deref(), Some("default/productpage-v1"));
    let s = snapshot(&mesh, &node("default", "productpage-v1", &[]));
    assert_eq!(s.version, "");

    // Listeners: the app's HTTP proxy and the inbound listener peers reach.
    let outbound = &s.listeners[0];
    assert_eq!(
        (outbound.name.as_str(), outbound.address.as_str()),
        ("outbound", "127.0.0.1:15001")
    );
    assert_eq!(outbound.kind, weft_api::ListenerKind::Outbound);
    let inbound = &s.listeners[1];
    assert_eq!(
        (inbound.name.as_str(), inbound.address.as_str()),
        ("inbound", "127.0.0.10:15006")
    );
    assert_eq!(inbound.kind, weft_api::ListenerKind::Inbound);
    assert_eq!(filter_names(&s, "outbound"), ["weft.retry", "weft.router"]);
    assert_eq!(config(filter(&s, "outbound", "weft.retry")), default_retry());

    // The router sends every service to its v1 subset cluster.
    for service in ["productpage", "details", "ratings", "reviews"] {
        let fqdn = format!("{service}.default.svc.cluster.local");
        let vh = router_vhost(&s, "outbound", &format!("{fqdn}:9080"));
        assert_eq!(
            vh,
            json!({
                "name": format!("{fqdn}:9080"),
                "hosts": [service, format!("{service}.default"), format!("{service}.default.svc"), fqdn],
                "routes": [{"route": [{"destination": {"cluster": format!("outbound|9080|v1|{fqdn}")}}]}],
            })
        );
    }

    // Route table: Istio's names with and without the port; a catch-all to the service.
    let table = route_table(&s, "outbound");
    let reviews = vhost(table, &format!("{REVIEWS}:9080"));
    assert_eq!(
        reviews.domains,
        [
            "reviews:9080",
            "reviews.default:9080",
            "reviews.default.svc:9080",
            "reviews.default.svc.cluster.local:9080",
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "reviews.default.svc.cluster.local"
        ]
    );
    assert_eq!(reviews.routes.len(), 1);
    assert_eq!(
        reviews.routes[0].forward.as_ref().unwrap().cluster,
        format!("outbound|9080||{REVIEWS}")
    );
    assert!(reviews.routes[0].disabled_filters.is_empty());

    // Clusters: the service and a cluster per subset, endpoints at the peers' sidecars.
    assert_eq!(
        addresses(cluster(&s, &format!("outbound|9080||{REVIEWS}"))),
        ["127.0.0.13:15006", "127.0.0.14:15006", "127.0.0.15:15006"]
    );
    let v2 = cluster(&s, &format!("outbound|9080|v2|{REVIEWS}"));
    assert_eq!(addresses(v2), ["127.0.0.14:15006"]);
    assert_eq!(v2.endpoints[0].labels.get("version").map(String::as_str), Some("v2"));
    assert_eq!(v2.lb_policy, weft_api::LbPolicy::LeastRequest, "Istio's default");
    assert_eq!(
        v2.connect_timeout,
        std::time::Duration::from_secs(10),
        "Istio's default"
    );
    assert!(
        cluster(&s, "outbound|9080|v2-mysql|ratings.default.svc.cluster.local")
            .endpoints
            .is_empty()
    );

    // Inbound: the app's port on the workload's address.
    assert_eq!(addresses(cluster(&s, "inbound|9080||")), ["127.0.0.10:9080"]);
    let inbound_table = route_table(&s, "inbound");
    assert_eq!(vhost(inbound_table, "inbound|9080||").domains, ["*:9080"]);
    assert_eq!(inbound_table.virtual_hosts.last().unwrap().domains, ["*"]);
}

#[test]
fn bookinfo_reviews_test_v2_sends_jason_to_v2_and_reports_the_duplicate() {
    let (mut store, mut diagnostics) = bookinfo(&["virtual-service-reviews-test-v2.yaml"]);
    diagnostics.extend(store.insert_yaml(
        "bookinfo/virtual-service-all-v1.yaml",
        &testdata("bookinfo/virtual-service-all-v1.yaml"),
    ));
    // The reviews VirtualService of virtual-service-all-v1 loses to the earlier origin.
    let duplicate: Vec<String> = errors(&diagnostics);
    assert_eq!(
        duplicate,
        [
            "VirtualService default/reviews (bookinfo/virtual-service-all-v1.yaml): duplicate: already defined in \
          a-virtual-service-reviews-test-v2.yaml; this definition is ignored"
        ]
    );
    let mesh = compile(&store, &options());
    assert!(errors(mesh.diagnostics()).is_empty(), "{:#?}", mesh.diagnostics());
    let s = snapshot(&mesh, &node("default", "productpage-v1", &[]));
    assert_eq!(
        router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"],
        json!([
            {
                "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                "route": [{"destination": {"cluster": format!("outbound|9080|v2|{REVIEWS}")}}],
            },
            {"route": [{"destination": {"cluster": format!("outbound|9080|v1|{REVIEWS}")}}]},
        ])
    );
    // The other VirtualServices of the file still apply.
    assert_eq!(
        router_vhost(&s, "outbound", "ratings.default.svc.cluster.local:9080")["routes"][0]["route"][0]["destination"]
            ["cluster"],
        "outbound|9080|v1|ratings.default.svc.cluster.local"
    );
}

#[test]
fn bookinfo_reviews_50_v3_splits_by_weight() {
    let (store, _) = bookinfo(&["virtual-service-reviews-50-v3.yaml"]);
    let mesh = compile(&store, &options());
    let s = snapshot(&mesh, &node("default", "productpage-v1", &[]));
    assert_eq!(
        router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"],
        json!([{
            "route": [
                {"destination": {"cluster": format!("outbound|9080|v1|{REVIEWS}")}, "weight": 50},
                {"destination": {"cluster": format!("outbound|9080|v3|{REVIEWS}")}, "weight": 50},
            ],
        }])
    );
}

#[test]
fn bookinfo_ratings_delay_for_jason() {
    let (store, _) = bookinfo(&["virtual-service-ratings-test-delay.yaml"]);
    let mesh = compile(&store, &options());
    assert!(mesh.diagnostics().is_empty(), "{:#?}", mesh.diagnostics());
    let s = snapshot(&mesh, &node("default", "reviews-v2", &[]));
    let fault = "weft.fault.default.ratings.0";
    assert_eq!(filter_names(&s, "outbound"), [fault, "weft.retry", "weft.router"]);
    assert_eq!(
        config(filter(&s, "outbound", fault)),
        json!({
            "delay": {"fixed_delay_ms": 7000, "percentage": 100.0},
            "match": [{"headers": {"end-user": {"exact": "jason"}}}],
        })
    );
    assert_eq!(filter(&s, "outbound", fault).wasm, Some(module("fault", 'c')));
    // The route table runs the fault filter on jason's requests only.
    let ratings = vhost(route_table(&s, "outbound"), "ratings.default.svc.cluster.local:9080");
    let routes: Vec<(&str, Vec<&str>)> = ratings
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.disabled_filters.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        routes,
        [
            ("default.ratings.0", vec![]),
            // The last route matches everything: nothing after it.
            ("default.ratings.1", vec![fault]),
        ]
    );
    assert_eq!(
        ratings.routes[0].matches.headers,
        [weft_api::HeaderMatch {
            name: "end-user".to_owned(),
            exact: Some("jason".to_owned()),
            ..Default::default()
        }]
    );
    // Other hosts never run it.
    let reviews = vhost(route_table(&s, "outbound"), &format!("{REVIEWS}:9080"));
    assert_eq!(reviews.routes[0].disabled_filters, [fault]);
}

#[test]
fn bookinfo_ratings_abort_for_jason() {
    let (store, _) = bookinfo(&["virtual-service-ratings-test-abort.yaml"]);
    let mesh = compile(&store, &options());
    let s = snapshot(&mesh, &node("default", "reviews-v3", &[]));
    assert_eq!(
        config(filter(&s, "outbound", "weft.fault.default.ratings.0")),
        json!({
            "abort": {"http_status": 500, "percentage": 100.0},
            "match": [{"headers": {"end-user": {"exact": "jason"}}}],
        })
    );
}

#[test]
fn bookinfo_gateway_listens_on_the_ingress_workload() {
    let (store, _) = bookinfo(&["bookinfo-gateway.yaml", "virtual-service-all-v1.yaml"]);
    let mesh = compile(&store, &options());
    assert!(mesh.diagnostics().is_empty(), "{:#?}", mesh.diagnostics());
    let compiled = mesh.snapshot_for(&node("default", "ingressgateway", &[]));
    assert_eq!(compiled.workload.as_deref(), Some("default/ingressgateway"));
    let s = snapshot(&mesh, &node("default", "ingressgateway", &[]));
    // A gateway without a sidecar: only the gateway listener.
    assert_eq!(s.listeners.len(), 1);
    let listener = &s.listeners[0];
    assert_eq!(
        (listener.name.as_str(), listener.address.as_str(), listener.kind),
        ("gateway-8080", "127.0.0.1:8080", weft_api::ListenerKind::Gateway)
    );
    assert_eq!(filter_names(&s, "gateway-8080"), ["weft.retry", "weft.router"]);
    assert_eq!(
        config(filter(&s, "gateway-8080", "weft.router")),
        json!({"virtual_hosts": [{
            "name": "*",
            "hosts": ["*"],
            "routes": [{
                "match": [
                    {"uri": {"exact": "/productpage"}},
                    {"uri": {"prefix": "/static"}},
                    {"uri": {"exact": "/login"}},
                    {"uri": {"exact": "/logout"}},
                    {"uri": {"prefix": "/api/v1/products"}},
                ],
                "route": [{"destination": {"cluster": "outbound|9080||productpage.default.svc.cluster.local"}}],
            }],
        }]})
    );
    assert_eq!(route_table(&s, "gateway-8080").virtual_hosts[0].domains, ["*"]);

    // Sidecars do not see gateway-bound routes.
    let s = snapshot(&mesh, &node("default", "reviews-v1", &[]));
    let router = config(filter(&s, "outbound", "weft.router"));
    assert!(!router.to_string().contains("/productpage"), "{router}");
    // A node without a Workload carrying the gateway's labels runs the gateway too.
    let s = snapshot(
        &mesh,
        &node("istio-system", "ingress-abc", &[("istio", "ingressgateway")]),
    );
    assert_eq!(s.listeners.len(), 1);
    assert_eq!(s.listeners[0].address, "127.0.0.1:8080");
}

// ---------------------------------------------------------------------------------------------
// Small fixtures

const REVIEWS_APP: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: reviews-v1, labels: {app: reviews, version: v1}}
spec: {address: 127.0.0.21, ports: {http: 9080}, sidecar: {inbound: 15006, outbound: 15001}}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: reviews-v2, labels: {app: reviews, version: v2}}
spec: {address: 127.0.0.22, ports: {http: 9080}, sidecar: {inbound: 15006, outbound: 15001}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn with_app(extra: &str) -> (Store, Vec<Diagnostic>) {
    store(&[("app.yaml", REVIEWS_APP), ("extra.yaml", extra)])
}

fn client() -> NodeIdentity {
    node("default", "client", &[("app", "client")])
}

#[test]
fn retries_default_per_route_overrides_and_disabling() {
    let (store, diagnostics) = with_app(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,gateway-error,429"}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: upload
    match: [{uri: {exact: /upload}, method: {exact: POST}}]
    retries: {attempts: 0}
    timeout: 10s
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    assert!(errors(&diagnostics).is_empty(), "{diagnostics:#?}");
    let mesh = compile(&store, &options());
    assert!(errors(mesh.diagnostics()).is_empty(), "{:#?}", mesh.diagnostics());
    // `method` is not in the route table: requests matching /upload with another method get
    // no retries even though a later route serves them.
    assert!(has(
        mesh.diagnostics(),
        Severity::Warning,
        "spec.http[1].match[0]: method is checked by the router but not by the route table"
    ));
    let s = snapshot(&mesh, &client());
    let custom = "weft.retry.default.reviews.api";
    assert_eq!(filter_names(&s, "outbound"), ["weft.retry", custom, "weft.router"]);
    assert_eq!(config(filter(&s, "outbound", "weft.retry")), default_retry());
    assert_eq!(
        config(filter(&s, "outbound", custom)),
        json!({"attempts": 3, "per_try_timeout_ms": 2000, "retry_on": "5xx,gateway-error,429", "retriable_status_codes": []})
    );
    let table = route_table(&s, "outbound");
    let routes: Vec<(&str, Option<&weft_api::PathMatch>, Vec<&str>)> = vhost(table, &format!("{REVIEWS}:9080"))
        .routes
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.matches.path.as_ref(),
                r.disabled_filters.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let prefix = |p: &str| weft_api::PathMatch {
        prefix: Some(p.to_owned()),
        ..Default::default()
    };
    let exact = |p: &str| weft_api::PathMatch {
        exact: Some(p.to_owned()),
        ..Default::default()
    };
    assert_eq!(
        routes,
        [
            ("default.reviews.api", Some(&prefix("/api")), vec!["weft.retry"]),
            (
                "default.reviews.upload",
                Some(&exact("/upload")),
                vec!["weft.retry", custom]
            ),
            // A route without match takes everything: no catch-all after it.
            ("default.reviews.2", None, vec![custom]),
        ]
    );
    assert_eq!(
        router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"][1],
        json!({
            "name": "upload",
            "match": [{"uri": {"exact": "/upload"}, "method": {"exact": "POST"}}],
            "route": [{"destination": {"cluster": format!("outbound|9080|v1|{REVIEWS}")}}],
            "timeout_ms": 10000,
        })
    );
}

#[test]
fn destination_rule_traffic_policy_compiles_into_clusters() {
    let (store, diagnostics) = store(&[
        (
            "app.yaml",
            REVIEWS_APP
                .split("---\napiVersion: networking.istio.io/v1")
                .next()
                .unwrap(),
        ),
        (
            "dr.yaml",
            r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 50, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      connectionPool: {tcp: {maxConnections: 7}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}
"#,
        ),
    ]);
    for field in [
        "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
        "spec.trafficPolicy.outlierDetection.interval",
    ] {
        assert!(
            has(&diagnostics, Severity::Warning, &format!("{field}: not supported yet")),
            "{field}: {diagnostics:#?}"
        );
    }
    let mesh = compile(&store, &options());
    assert!(has(
        mesh.diagnostics(),
        Severity::Warning,
        "spec.subsets[1].trafficPolicy.loadBalancer.simple: PASSTHROUGH is not supported"
    ));
    let s = snapshot(&mesh, &client());
    let base = cluster(&s, &format!("outbound|9080||{REVIEWS}"));
    assert_eq!(base.lb_policy, weft_api::LbPolicy::RingHash);
    assert_eq!(base.hash_on.as_ref().and_then(|h| h.header.as_deref()), Some("x-user"));
    // The port's connection pool replaces the rule's as a whole (Istio's merge).
    assert_eq!(
        base.circuit_breakers,
        weft_api::CircuitBreakers {
            max_connections: 7,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX
        }
    );
    assert_eq!(base.connect_timeout, std::time::Duration::from_secs(10));
    assert_eq!(
        base.outlier_detection,
        Some(weft_api::OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 2,
            base_ejection_time: std::time::Duration::from_secs(60),
            max_ejection_percent: 50,
        })
    );
    let v1 = cluster(&s, &format!("outbound|9080|v1|{REVIEWS}"));
    assert_eq!(v1.lb_policy, weft_api::LbPolicy::RoundRobin, "the subset's policy");
    assert_eq!(v1.hash_on, None);
    assert_eq!(v1.outlier_detection, base.outlier_detection, "the rule's, not replaced");
    assert_eq!(addresses(v1), ["127.0.0.21:15006"]);
    // ISTIO_MUTUAL: every endpoint, verified as the endpoints' service accounts.
    for c in [base, v1] {
        let tls = c.tls.as_ref().expect("tls");
        assert_eq!(tls.mode, weft_api::UpstreamTlsMode::IstioMutual);
        assert!(!tls.mesh_endpoints_only);
        assert!(
            !tls.subject_alt_names.is_empty()
                && tls
                    .subject_alt_names
                    .iter()
                    .all(|id| id.starts_with("spiffe://cluster.local/ns/default/sa/")),
            "{:?}",
            tls.subject_alt_names
        );
    }
    let v2 = cluster(&s, &format!("outbound|9080|v2|{REVIEWS}"));
    assert_eq!(
        v2.lb_policy,
        weft_api::LbPolicy::RingHash,
        "PASSTHROUGH ignored: the rule's"
    );
}

#[test]
fn connection_pool_without_port_settings() {
    let (store, _) = store(&[
        (
            "app.yaml",
            REVIEWS_APP
                .split("---\napiVersion: networking.istio.io/v1")
                .next()
                .unwrap(),
        ),
        (
            "dr.yaml",
            r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 50}
"#,
        ),
    ]);
    let mesh = compile(&store, &options());
    let s = snapshot(&mesh, &client());
    let base = cluster(&s, &format!("outbound|9080||{REVIEWS}"));
    assert_eq!(base.lb_policy, weft_api::LbPolicy::Random);
    assert_eq!(base.connect_timeout, std::time::Duration::from_millis(30));
    assert_eq!(
        base.circuit_breakers,
        weft_api::CircuitBreakers {
            max_connections: 100,
            max_pending_requests: 10,
            max_requests: 50
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Diagnostics

#[test]
fn unknown_fields_refuse_the_resource_and_unsupported_ones_are_dropped() {
    let (store, diagnostics) = with_app(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo}
spec:
  hosts: [reviews]
  http:
  - rout: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mirror, namespace: other}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]
    mirror: {host: reviews.default.svc.cluster.local, subset: v1}
    corsPolicy: {allowOrigins: [{exact: "https://example.com"}]}
"#,
    );
    assert_eq!(
        errors(&diagnostics),
        [
            "VirtualService default/typo (extra.yaml): spec.http[0].rout: unknown field (not in the API); the resource is refused"
        ]
    );
    assert!(has(
        &diagnostics,
        Severity::Warning,
        "VirtualService other/mirror (extra.yaml): spec.http[0].mirror: not supported yet (no traffic mirroring); applied without it"
    ));
    assert!(has(
        &diagnostics,
        Severity::Warning,
        "spec.http[0].corsPolicy: not supported yet"
    ));
    let d = diagnostics.iter().find(|d| d.field == "spec.http[0].rout").unwrap();
    assert_eq!(
        (d.kind.as_str(), d.namespace.as_str(), d.name.as_str()),
        ("VirtualService", "default", "typo")
    );

    let mesh = compile(&store, &options());
    let s = snapshot(&mesh, &client());
    // The refused resource is absent; the other applies without the mirror.
    assert_eq!(
        router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"],
        json!([{"route": [{"destination": {"cluster": format!("outbound|9080|v2|{REVIEWS}")}}]}])
    );
}

#[test]
fn malformed_documents_and_unsupported_kinds() {
    let (store, diagnostics) = store(&[(
        "bad.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: prod}
spec: {action: DENY}
---
just a string
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad-port}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, port: {number: seventy}}}]}]
---
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: future}
spec: {}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: listed}
  spec: {ports: [{port: 80}]}
---
"#,
    )]);
    assert!(has(
        &diagnostics,
        Severity::Warning,
        "AuthorizationPolicy prod/deny (bad.yaml): AuthorizationPolicy (security.istio.io/v1) is not supported yet"
    ));
    assert!(has(
        &diagnostics,
        Severity::Error,
        "bad.yaml: document 2: not a resource"
    ));
    assert!(has(
        &diagnostics,
        Severity::Error,
        "VirtualService default/bad-port (bad.yaml): spec.http[0].route[0].destination.port.number: invalid type"
    ));
    assert!(has(
        &diagnostics,
        Severity::Warning,
        "apiVersion: networking.istio.io/v2 is not supported yet"
    ));
    assert_eq!(store.len(), 1, "only the List's Service");
    assert!(
        store
            .get(weft_controller::resources::Kind::Service, "default", "listed")
            .is_some()
    );

    let (_, diagnostics) = self::store(&[("broken.yaml", "a: [unclosed\n")]);
    assert!(has(
        &diagnostics,
        Severity::Error,
        "broken.yaml: document 1: not valid YAML"
    ));
}

#[test]
fn dangling_host_and_missing_subset_answer_503_and_the_rest_keeps_working() {
    let (store, _) = with_app(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - match: [{uri: {prefix: /ghost}}]
    route: [{destination: {host: nope}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let mesh = compile(&store, &options());
    assert_eq!(
        errors(mesh.diagnostics()),
        [
            "VirtualService default/reviews (extra.yaml): spec.http[0].route[0].destination.subset: no subset \"v9\" in \
             DestinationRule default/reviews; requests to this destination get 503",
            "VirtualService default/reviews (extra.yaml): spec.http[1].route[0].destination.host: no Service or \
             ServiceEntry has host nope.default.svc.cluster.local; requests to this destination get 503",
        ]
    );
    let s = snapshot(&mesh, &client());
    assert_eq!(
        router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"],
        json!([
            {"match": [{"headers": {"x-canary": {"exact": "1"}}}], "route": [{"destination": {"cluster": format!("outbound|9080|v9|{REVIEWS}")}}]},
            {"match": [{"uri": {"prefix": "/ghost"}}], "route": [{"destination": {"cluster": "outbound|||nope.default.svc.cluster.local"}}]},
            {"route": [{"destination": {"cluster": format!("outbound|9080|v1|{REVIEWS}")}}]},
        ])
    );
    // Both dangling destinations are clusters without endpoints: the proxy answers 503.
    assert!(cluster(&s, &format!("outbound|9080|v9|{REVIEWS}")).endpoints.is_empty());
    assert!(
        cluster(&s, "outbound|||nope.default.svc.cluster.local")
            .endpoints
            .is_empty()
    );
    assert_eq!(
        addresses(cluster(&s, &format!("outbound|9080|v1|{REVIEWS}"))),
        ["127.0.0.21:15006"]
    );
}

#[test]
fn two_virtual_services_for_one_host_the_first_wins() {
    let vs = |name: &str, subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [reviews]\n  \
             http: [{{route: [{{destination: {{host: reviews, subset: {subset}}}}}]}}]\n"
        )
    };
    let (store, diagnostics) = store(&[
        ("app.yaml", REVIEWS_APP),
        ("b.yaml", &vs("a-second", "v1")),
        ("a.yaml", &vs("z-first", "v2")),
    ]);
    assert!(errors(&diagnostics).is_empty());
    let mesh = compile(&store, &options());
    assert_eq!(
        errors(mesh.diagnostics()),
        [
            "VirtualService default/a-second (b.yaml): spec.hosts[0]: conflict: host reviews.default.svc.cluster.local \
          is already routed on sidecars by VirtualService default/z-first (first by origin and name); this one is \
             ignored for the host wherever both are visible"
        ]
    );
    let s = snapshot(&mesh, &client());
    assert_eq!(
        router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"][0]["route"][0]["destination"]["cluster"],
        format!("outbound|9080|v2|{REVIEWS}")
    );
}

// ---------------------------------------------------------------------------------------------
// User filters

fn sha(digit: char) -> String {
    std::iter::repeat_n(digit, 64).collect()
}

fn plugin(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}}}\nspec:\n  url: \
         file:///opt/filters/{name}.wasm\n  sha256: {}\n{extra}---\n",
        sha('d')
    )
}

#[test]
fn wasm_plugins_are_ordered_by_phase_then_priority() {
    let plugins = [
        plugin("stats", "  phase: STATS\n"),
        plugin("authz-low", "  phase: AUTHZ\n  priority: 1\n"),
        plugin("unspecified", "  priority: 100\n"),
        plugin("authz-high", "  phase: AUTHZ\n  priority: 10\n"),
        plugin(
            "authn",
            "  phase: AUTHN\n  pluginName: oidc\n  failStrategy: FAIL_OPEN\n  pluginConfig: {realm: ingress}\n",
        ),
        plugin("server-only", "  match: [{mode: SERVER}]\n"),
        plugin("client-only", "  match: [{mode: CLIENT}]\n"),
        plugin("other-app", "  selector: {matchLabels: {app: productpage}}\n"),
        plugin(
            "mine",
            "  selector: {matchLabels: {app: reviews}}\n  failStrategy: FAIL_RELOAD\n",
        ),
    ]
    .concat();
    let (store, diagnostics) = with_app(&plugins);
    assert!(errors(&diagnostics).is_empty(), "{diagnostics:#?}");
    let mesh = compile(&store, &options());
    assert!(mesh.diagnostics().is_empty(), "{:#?}", mesh.diagnostics());
    let s = snapshot(&mesh, &node("default", "reviews-v1", &[]));
    // Unspecified phase last; within a phase, higher priority first, then by name.
    assert_eq!(
        filter_names(&s, "outbound"),
        [
            "default.authn",
            "default.authz-high",
            "default.authz-low",
            "default.stats",
            "default.unspecified",
            "default.client-only",
            "default.mine",
            "weft.retry",
        ]
    );
    assert_eq!(
        filter_names(&s, "inbound"),
        [
            "default.authn",
            "default.authz-high",
            "default.authz-low",
            "default.stats",
            "default.unspecified",
            "default.mine",
            "default.server-only",
        ]
    );
    let authn = filter(&s, "outbound", "default.authn");
    assert_eq!(authn.failure_policy, weft_api::FailurePolicy::FailOpen);
    assert_eq!(config(authn), json!({"realm": "ingress"}));
    let wasm = authn.wasm.as_ref().unwrap();
    assert_eq!(
        (wasm.url.as_str(), wasm.sha256.as_str(), wasm.root_id.as_str()),
        ("file:///opt/filters/authn.wasm", sha('d').as_str(), "oidc")
    );
    assert_eq!(
        filter(&s, "outbound", "default.stats").failure_policy,
        weft_api::FailurePolicy::FailClosed
    );
    assert_eq!(
        filter(&s, "outbound", "default.mine").failure_policy,
        weft_api::FailurePolicy::Reload
    );
}

const FILTERS: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: WasmFilter
metadata: {name: ratelimit}
spec:
  url: https://filters.example/ratelimit-1.0.0.wasm
  sha256: "1111111111111111111111111111111111111111111111111111111111111111"
  version: 1.0.0
  config: {rps: 10}
---
apiVersion: weft.dev/v1alpha1
kind: WasmFilter
metadata: {name: telemetry}
spec:
  url: registry.example/weft/telemetry@sha256:2222222222222222222222222222222222222222222222222222222222222222
  failurePolicy: fail_open
---
apiVersion: weft.dev/v1alpha1
kind: FilterChain
metadata: {name: reviews-inbound}
spec:
  selector: {matchLabels: {app: reviews}}
  direction: inbound
  filters:
  - filter: telemetry
  - filter: ratelimit
    name: strict-limit
    config: {rps: 1}
    failurePolicy: reload
  - filter: missing
---
apiVersion: weft.dev/v1alpha1
kind: FilterChain
metadata: {name: everyone-outbound}
spec:
  direction: outbound
  filters:
  - filter: ratelimit
"#;

#[test]
fn filter_chains_attach_by_selector_and_direction() {
    let (store, diagnostics) = with_app(&format!("{FILTERS}---\n{}", plugin("authz", "  phase: AUTHZ\n")));
    assert!(errors(&diagnostics).is_empty(), "{diagnostics:#?}");
    // The OCI image is pinned by the controller: the sha256 of the module's bytes comes from it.
    let telemetry_url = format!("oci://registry.example/weft/telemetry@sha256:{}", sha('2'));
    let urls: Vec<String> = store.module_urls().into_iter().collect();
    assert_eq!(urls, std::slice::from_ref(&telemetry_url));
    let mut options = options();
    options.modules.insert(
        telemetry_url.clone(),
        Ok(weft_controller::compile::PinnedModule {
            url: telemetry_url.clone(),
            sha256: sha('4'),
        }),
    );
    let mesh = compile(&store, &options);
    assert_eq!(
        errors(mesh.diagnostics()),
        [
            "FilterChain default/reviews-inbound (extra.yaml): spec.filters[2].filter: no WasmFilter default/missing; \
          this filter is left out of the chain"
        ]
    );
    let s = snapshot(&mesh, &node("default", "reviews-v2", &[]));
    assert_eq!(
        filter_names(&s, "inbound"),
        ["default.authz", "telemetry", "strict-limit"]
    );
    // FilterChains come after the WasmPlugins, before the first-party filters.
    assert_eq!(
        filter_names(&s, "outbound"),
        ["default.authz", "ratelimit", "weft.retry"]
    );

    let telemetry = filter(&s, "inbound", "telemetry");
    assert_eq!(telemetry.failure_policy, weft_api::FailurePolicy::FailOpen);
    let wasm = telemetry.wasm.as_ref().unwrap();
    assert_eq!(
        (wasm.url.as_str(), wasm.sha256.as_str()),
        (telemetry_url.as_str(), sha('4').as_str())
    );
    let strict = filter(&s, "inbound", "strict-limit");
    assert_eq!(
        config(strict),
        json!({"rps": 1}),
        "the chain's config replaces the default"
    );
    assert_eq!(strict.failure_policy, weft_api::FailurePolicy::Reload);
    assert_eq!(config(filter(&s, "outbound", "ratelimit")), json!({"rps": 10}));

    // A workload the inbound chain does not select.
    let s = snapshot(&mesh, &node("default", "somebody", &[("app", "productpage")]));
    assert_eq!(filter_names(&s, "inbound"), ["default.authz"]);
}

#[test]
fn module_urls_are_pinned_or_reported() {
    let wasm_plugin = |name: &str, spec: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}}}\nspec: {spec}\n---\n"
        )
    };
    let plugins = [
        wasm_plugin("pinned", "{url: oci://registry.example/a:latest}"),
        wasm_plugin("failed", "{url: https://example.com/b.wasm}"),
        wasm_plugin("unknown", "{url: registry.example/c:1}"),
        wasm_plugin(
            "other-image",
            &format!("{{url: oci://registry.example/d:1, sha256: \"{}\"}}", sha('7')),
        ),
        wasm_plugin(
            "local",
            &format!("{{url: file:///opt/e.wasm, sha256: \"{}\"}}", sha('5')),
        ),
    ]
    .concat();
    let (store, _) = with_app(&plugins);
    let urls: Vec<String> = store.module_urls().into_iter().collect();
    assert_eq!(
        urls,
        [
            "https://example.com/b.wasm",
            "oci://registry.example/a:latest",
            "oci://registry.example/c:1",
            "oci://registry.example/d:1"
        ]
    );
    let pin = |url: String, sha256: String| Ok(weft_controller::compile::PinnedModule { url, sha256 });
    let mut options = options();
    options.modules.insert(
        "oci://registry.example/a:latest".to_owned(),
        pin(format!("oci://registry.example/a@sha256:{}", sha('9')), sha('e')),
    );
    options.modules.insert(
        "oci://registry.example/d:1".to_owned(),
        pin(format!("oci://registry.example/d@sha256:{}", sha('8')), sha('6')),
    );
    options
        .modules
        .insert("https://example.com/b.wasm".to_owned(), Err("404 Not Found".to_owned()));
    let mesh = compile(&store, &options);
    assert_eq!(
        errors(mesh.diagnostics()),
        [
            "WasmPlugin default/failed (extra.yaml): spec.url: module https://example.com/b.wasm could not be pinned \
             (404 Not Found); sidecars will refuse snapshots with it",
            format!(
                "WasmPlugin default/other-image (extra.yaml): spec.sha256: the image of oci://registry.example/d:1 has \
                 digest {}, not this one; the pinned image is used",
                sha('8')
            )
            .as_str(),
            "WasmPlugin default/unknown (extra.yaml): spec.url: module oci://registry.example/c:1 is not pinned; \
             sidecars will refuse snapshots with it",
        ]
    );
    let s = mesh.snapshot_for(&client()).snapshot;
    let pinned = filter(&s, "outbound", "default.pinned").wasm.as_ref().unwrap();
    assert_eq!(
        (pinned.url.clone(), pinned.sha256.clone()),
        (format!("oci://registry.example/a@sha256:{}", sha('9')), sha('e'))
    );
    let local = filter(&s, "outbound", "default.local").wasm.as_ref().unwrap();
    assert_eq!(
        (local.url.as_str(), local.sha256.as_str()),
        ("file:///opt/e.wasm", sha('5').as_str())
    );
    // Unresolved modules stay in the chain with an empty sha256: the sidecar refuses the
    // snapshot (NACK) and keeps its previous one, rather than running without the filter.
    let unknown = filter(&s, "outbound", "default.unknown").wasm.as_ref().unwrap();
    assert_eq!(
        (unknown.url.as_str(), unknown.sha256.as_str()),
        ("oci://registry.example/c:1", "")
    );
    let error = s.validate().unwrap_err().to_string();
    assert!(
        error.contains("wasm.sha256: must be 64 lowercase hex digits"),
        "{error}"
    );
}

#[test]
fn network_plugins_and_target_refs_are_refused() {
    let plugins = [
        plugin("tcp", "  type: NETWORK\n"),
        plugin(
            "gw",
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g}]\n",
        ),
        plugin("ports", "  match: [{mode: CLIENT, ports: [{number: 80}]}]\n"),
    ]
    .concat();
    let (store, diagnostics) = with_app(&plugins);
    assert!(has(
        &diagnostics,
        Severity::Warning,
        "spec.match[0].ports: not supported yet"
    ));
    let mesh = compile(&store, &options());
    assert!(has(
        mesh.diagnostics(),
        Severity::Error,
        "WasmPlugin default/tcp (extra.yaml): spec.type: NETWORK"
    ));
    assert!(has(
        mesh.diagnostics(),
        Severity::Error,
        "WasmPlugin default/gw (extra.yaml): spec.targetRefs"
    ));
    let s = snapshot(&mesh, &client());
    assert_eq!(filter_names(&s, "outbound"), ["default.ports", "weft.retry"]);
    assert_eq!(filter_names(&s, "inbound"), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Registry

#[test]
fn compiling_twice_gives_the_same_result() {
    let (store, _) = bookinfo(&[
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-ratings-test-delay.yaml",
        "bookinfo-gateway.yaml",
        "virtual-service-all-v1.yaml",
    ]);
    let one = compile(&store, &options());
    let two = compile(&store, &options());
    assert_eq!(one.diagnostics(), two.diagnostics());
    for w in one.workloads() {
        let node = w.node();
        assert_eq!(one.snapshot_for(&node), two.snapshot_for(&node), "{node:?}");
        assert_eq!(one.snapshot_for(&node), one.snapshot_for(&node), "{node:?}");
        snapshot(&one, &node);
    }
    let names: Vec<String> = one
        .workloads()
        .iter()
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect();
    assert_eq!(names.len(), 7);
    assert!(names.contains(&"default/reviews-v3".to_owned()));
}

#[test]
fn service_entries_static_and_dns() {
    let (store, diagnostics) = store(&[(
        "se.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.10, labels: {zone: a}}
  - {address: 192.0.2.11, ports: {http: 8080}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints: [{address: lb.example.com}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  http: [{timeout: 3s, route: [{destination: {host: httpbin.org}}]}]
"#,
    )]);
    assert!(errors(&diagnostics).is_empty(), "{diagnostics:#?}");
    let mesh = compile(&store, &options());
    assert!(
        !mesh
            .diagnostics()
            .iter()
            .any(|d| d.to_string().contains("spec.ports[1]")),
        "an HTTPS port is a TLS port: {:#?}",
        mesh.diagnostics()
    );
    assert!(has(
        mesh.diagnostics(),
        Severity::Warning,
        "ServiceEntry default/external (se.yaml): spec.endpoints[0].address: \"lb.example.com\" is not an IP address"
    ));
    let s = snapshot(&mesh, &client());
    let httpbin = cluster(&s, "outbound|80||httpbin.org");
    assert_eq!(addresses(httpbin), ["192.0.2.10:80", "192.0.2.11:8080"]);
    assert_eq!(httpbin.endpoints[1].weight, 3);
    assert!(cluster(&s, "outbound|80||api.example.com").endpoints.is_empty());
    // The HTTPS port, for passthrough gateways: a cluster of the TLS port, no sidecar route.
    let tls = cluster(&s, "outbound|443||httpbin.org");
    assert_eq!(addresses(tls), ["192.0.2.10:443", "192.0.2.11:443"]);
    assert!(tls.tls.is_none());
    assert!(
        !route_table(&s, "outbound")
            .virtual_hosts
            .iter()
            .any(|v| v.domains.iter().any(|d| d.ends_with(":443")))
    );
    assert_eq!(
        vhost(route_table(&s, "outbound"), "httpbin.org:80").domains,
        ["httpbin.org:80", "httpbin.org"]
    );
    assert_eq!(
        router_vhost(&s, "outbound", "httpbin.org:80"),
        json!({"name": "httpbin.org:80", "hosts": ["httpbin.org"], "routes": [{
            "route": [{"destination": {"cluster": "outbound|80||httpbin.org"}}], "timeout_ms": 3000,
        }]})
    );
}

#[test]
fn endpoints_from_workloads_without_sidecars_and_workload_entries() {
    let (store, diagnostics) = store(&[(
        "app.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: grpc-api, port: 9090, targetPort: 9090}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {address: 10.0.0.1, ports: {http: 8080, grpc: 9090}}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {address: 10.0.0.2, ports: {grpc: 9090}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: shop}
spec: {address: 10.0.0.3, labels: {app: web}, ports: {http: 8000}, weight: 2}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: elsewhere, namespace: other, labels: {app: web}}
spec: {address: 10.0.0.4, ports: {http: 8080}}
"#,
    )]);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let mesh = compile(&store, &options());
    // web-2 has no port named http.
    assert!(has(
        mesh.diagnostics(),
        Severity::Warning,
        "Service shop/web (app.yaml): spec.ports[0].targetPort: Workload shop/web-2 has no port named \"http\""
    ));
    let s = snapshot(&mesh, &node("shop", "client", &[]));
    let http = cluster(&s, "outbound|80||web.shop.svc.cluster.local");
    assert_eq!(addresses(http), ["10.0.0.1:8080", "10.0.0.3:8000"]);
    assert_eq!(http.endpoints[1].weight, 2);
    let grpc = cluster(&s, "outbound|9090||web.shop.svc.cluster.local");
    assert_eq!(addresses(grpc), ["10.0.0.1:9090", "10.0.0.2:9090", "10.0.0.3:9090"]);
    assert_eq!(grpc.protocol, weft_api::UpstreamProtocol::Http2, "the grpc- port name");
    // From its own namespace a client uses the short name; port 80 owns the bare names.
    let table = route_table(&s, "outbound");
    assert!(
        vhost(table, "web.shop.svc.cluster.local:80")
            .domains
            .contains(&"web".to_owned())
    );
    assert!(
        !vhost(table, "web.shop.svc.cluster.local:9090")
            .domains
            .contains(&"web".to_owned())
    );
    // From another namespace, no short name.
    let s = snapshot(&mesh, &node("other", "client", &[]));
    let domains = &vhost(route_table(&s, "outbound"), "web.shop.svc.cluster.local:80").domains;
    assert!(
        !domains.contains(&"web".to_owned()) && domains.contains(&"web.shop".to_owned()),
        "{domains:?}"
    );
}

#[test]
fn inbound_routes_choose_the_app_port_by_the_authority_port() {
    let (store, _) = store(&[(
        "app.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: http2-admin, port: 9901}]
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-1, labels: {app: web}}
spec:
  address: 127.0.0.1
  ports: {http: 8080, admin: 9901}
  sidecar: {inbound: 16006, outbound: 16001}
"#,
    )]);
    let mesh = compile(&store, &options());
    let s = snapshot(&mesh, &node("default", "web-1", &[]));
    assert_eq!(s.listeners[1].address, "127.0.0.1:16006");
    let table = route_table(&s, "inbound");
    let domains: Vec<(&str, &[String])> = table
        .virtual_hosts
        .iter()
        .map(|v| (v.name.as_str(), v.domains.as_slice()))
        .collect();
    assert_eq!(
        domains,
        [
            ("inbound|8080||", &["*:8080".to_owned(), "*:80".to_owned()][..]),
            ("inbound|9901||", &["*:9901".to_owned()][..]),
            ("inbound|8080||", &["*".to_owned()][..]),
        ]
    );
    assert_eq!(
        cluster(&s, "inbound|9901||").protocol,
        weft_api::UpstreamProtocol::Http2
    );
    // The sidecar's own endpoint is its inbound listener.
    assert_eq!(
        addresses(cluster(&s, "outbound|80||web.default.svc.cluster.local")),
        ["127.0.0.1:16006"]
    );
}

#[test]
fn a_node_without_a_workload_gets_default_ports() {
    let (store, _) = with_app("");
    let mesh = compile(&store, &options());
    let compiled = mesh.snapshot_for(&node("default", "reviews-xyz", &[("app", "reviews")]));
    assert_eq!(compiled.workload, None);
    let s = snapshot(&mesh, &node("default", "reviews-xyz", &[("app", "reviews")]));
    let listeners: Vec<(&str, &str)> = s
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address.as_str()))
        .collect();
    assert_eq!(
        listeners,
        [("outbound", "127.0.0.1:15001"), ("inbound", "127.0.0.1:15006")]
    );
    // Its application port: the Service's target port.
    assert_eq!(addresses(cluster(&s, "inbound|9080||")), ["127.0.0.1:9080"]);
    // It is nobody's endpoint: only Workloads are.
    assert_eq!(
        addresses(cluster(&s, &format!("outbound|9080||{REVIEWS}"))),
        ["127.0.0.21:15006", "127.0.0.22:15006"]
    );
}

#[test]
fn virtual_services_of_separate_namespaces_do_not_conflict() {
    let vs = |ns: &str, subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: {ns}}}\nspec:\n  \
             hosts: [reviews.default.svc.cluster.local]\n  exportTo: [\".\"]\n  http: [{{route: [{{destination: {{host: \
             reviews.default.svc.cluster.local, subset: {subset}}}}}]}}]\n---\n"
        )
    };
    let (store, _) = with_app(&format!("{}{}", vs("team-a", "v1"), vs("team-b", "v2")));
    let mesh = compile(&store, &options());
    assert!(errors(mesh.diagnostics()).is_empty(), "{:#?}", mesh.diagnostics());
    for (ns, subset) in [("team-a", "v1"), ("team-b", "v2")] {
        let s = snapshot(&mesh, &node(ns, "client", &[]));
        assert_eq!(
            router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"][0]["route"][0]["destination"]["cluster"],
            format!("outbound|9080|{subset}|{REVIEWS}")
        );
    }
    // A namespace seeing neither: no router at all, the service's own cluster.
    let s = snapshot(&mesh, &client());
    assert!(filter_names(&s, "outbound").iter().all(|f| f != "weft.router"));
}

#[test]
fn export_to_limits_virtual_services_to_namespaces() {
    let (store, _) = with_app(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: public, namespace: shared}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local, subset: v1}}]}]
"#,
    );
    let mesh = compile(&store, &options());
    // Namespace `default` sees both: the first wins there; elsewhere only `public` applies.
    assert!(has(
        mesh.diagnostics(),
        Severity::Error,
        "VirtualService shared/public (extra.yaml): spec.hosts[0]: conflict"
    ));
    let cluster_for = |ns: &str| {
        let s = snapshot(&mesh, &node(ns, "client", &[]));
        router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"][0]["route"][0]["destination"]["cluster"]
            .clone()
    };
    assert_eq!(cluster_for("default"), json!(format!("outbound|9080|v2|{REVIEWS}")));
    assert_eq!(cluster_for("elsewhere"), json!(format!("outbound|9080|v1|{REVIEWS}")));
}

#[test]
fn match_conditions_and_actions_reach_the_router() {
    let (store, diagnostics) = with_app(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: moved
    match: [{uri: {exact: /old}, ignoreUriCase: true}]
    redirect: {uri: /new, authority: reviews.example.com, redirectCode: 308}
  - name: teapot
    match: [{queryParams: {brew: {exact: "1"}}, withoutHeaders: {x-real: {}}}]
    directResponse: {status: 418, body: {bytes: "SSdtIGEgdGVhcG90"}}
  - name: rewritten
    match: [{uri: {prefix: /api/}, sourceLabels: {app: client}, authority: {prefix: reviews}}]
    rewrite: {uri: /v2/, authority: reviews.internal}
    headers:
      request: {set: {x-api: "2", debug: true}, remove: [x-legacy]}
      response: {add: {x-served-by: reviews}}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 10
      headers: {request: {set: {x-canary: "true"}}}
"#,
    );
    assert!(errors(&diagnostics).is_empty(), "{diagnostics:#?}");
    let mesh = compile(&store, &options());
    assert!(errors(mesh.diagnostics()).is_empty(), "{:#?}", mesh.diagnostics());
    let s = snapshot(&mesh, &client());
    assert_eq!(
        router_vhost(&s, "outbound", &format!("{REVIEWS}:9080"))["routes"],
        json!([
            {
                "name": "moved",
                "match": [{"uri": {"exact": "/old"}, "ignore_uri_case": true}],
                "redirect": {"uri": "/new", "authority": "reviews.example.com", "redirect_code": 308},
            },
            {
                "name": "teapot",
                "match": [{"query_params": {"brew": {"exact": "1"}}, "without_headers": {"x-real": {}}}],
                "direct_response": {"status": 418, "body": "I'm a teapot"},
            },
            {
                "name": "rewritten",
                "match": [{"uri": {"prefix": "/api/"}, "authority": {"prefix": "reviews"}, "source_labels": {"app": "client"}}],
                "route": [
                    {"destination": {"cluster": format!("outbound|9080|v1|{REVIEWS}")}, "weight": 90},
                    {"destination": {"cluster": format!("outbound|9080|v2|{REVIEWS}")}, "weight": 10,
                     "headers": {"request": {"set": {"x-canary": "true"}}}},
                ],
                "rewrite": {"uri": "/v2/", "authority": "reviews.internal"},
                "headers": {
                    "request": {"set": {"x-api": "2", "debug": "true"}, "remove": ["x-legacy"]},
                    "response": {"add": {"x-served-by": "reviews"}},
                },
            },
        ])
    );
}

#[test]
fn faults_with_case_insensitive_paths_mirror_into_the_route_table() {
    let (store, _) = with_app(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /Slow}, ignoreUriCase: true}, {withoutHeaders: {x-fast: {exact: "1"}}}]
    fault: {delay: {fixedDelay: 250ms, percentage: {value: 12.5}}}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"#,
    );
    let mesh = compile(&store, &options());
    assert!(mesh.diagnostics().is_empty(), "{:#?}", mesh.diagnostics());
    let s = snapshot(&mesh, &client());
    let fault = "weft.fault.default.reviews.0";
    assert_eq!(
        config(filter(&s, "outbound", fault)),
        json!({
            "delay": {"fixed_delay_ms": 250, "percentage": 12.5},
            "match": [
                {"uri": {"prefix": "/Slow"}, "ignore_uri_case": true},
                {"without_headers": {"x-fast": {"exact": "1"}}},
            ],
        })
    );
    let routes = &vhost(route_table(&s, "outbound"), &format!("{REVIEWS}:9080")).routes;
    assert_eq!(routes.len(), 3);
    assert_eq!(
        routes[0].matches.path.as_ref().unwrap().regex.as_deref(),
        Some("/[sS][lL][oO][wW].*")
    );
    assert_eq!(
        routes[1].matches.headers,
        [
            weft_api::HeaderMatch {
                name: "x-fast".to_owned(),
                ..Default::default()
            },
            weft_api::HeaderMatch {
                name: "x-fast".to_owned(),
                exact: Some("1".to_owned()),
                invert: true,
                ..Default::default()
            },
        ]
    );
    assert!(routes[0].disabled_filters.is_empty() && routes[1].disabled_filters.is_empty());
    assert_eq!(routes[2].disabled_filters, [fault]);
}

#[test]
fn every_known_field_parses_and_compiles() {
    let (store, diagnostics) = store(&[("every-field.yaml", &testdata("every-field.yaml"))]);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(store.len(), 10);
    let mesh = compile(&store, &options());
    // Approximations are reported (method and friends are not in the route table), nothing else.
    let others: Vec<String> = mesh
        .diagnostics()
        .iter()
        .filter(|d| !d.message.contains("checked by the router but not by the route table"))
        .map(ToString::to_string)
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    for node in [
        node("shop", "web-1", &[]),
        node("shop", "edge-1", &[("app", "edge")]),
        node("default", "client", &[]),
    ] {
        snapshot(&mesh, &node);
    }
    let s = snapshot(&mesh, &node("shop", "edge-1", &[("app", "edge")]));
    let gateway = route_table(&s, "gateway-8443");
    let domains: Vec<&str> = gateway
        .virtual_hosts
        .iter()
        .flat_map(|v| &v.domains)
        .map(String::as_str)
        .collect();
    assert_eq!(domains, ["shop.example.com"]);
    let grpc = cluster(&s, "outbound|9090|v1|web.shop.svc.cluster.local");
    assert_eq!(
        grpc.hash_on.as_ref().map(|h| h.source_ip),
        Some(true),
        "the subset's policy"
    );
    assert_eq!(grpc.circuit_breakers.max_requests, 100, "the port's pool");
    assert_eq!(grpc.outlier_detection.as_ref().map(|o| o.consecutive_5xx), Some(0));
    let external = cluster(&s, "outbound|80||api.example.com");
    assert_eq!(addresses(external), ["192.0.2.1:8081"]);
}
