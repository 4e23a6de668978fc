//! Istio's Bookinfo networking samples, as written in `examples/bookinfo/networking/`, compiled
//! against Bookinfo's platform (`tests/testdata/bookinfo/platform.yaml`: the Services, a
//! Workload with a sidecar per Deployment, the ingress gateway).
//!
//! Each manifest is loaded the way Istio's tasks apply it: with the platform and
//! `destination-rule-all.yaml`. Every manifest must compile without diagnostics (the few that
//! are justified are named in `expected_diagnostics`), and the snapshot of each sidecar the
//! manifest concerns must do what Istio's documentation says: the reviews routes, subsets and
//! weights, the `end-user: jason` header match, the ratings delay and abort, the details abort
//! and the ingress gateway's listener and routes.

#![allow(clippy::unwrap_used, reason = "tests")]

use serde_json::{Value, json};
use weft_api::{FilterConfig, ListenerKind, Snapshot};
use weft_controller::compile::{Mesh, NodeIdentity, compile};
use weft_controller::diagnostics::Diagnostic;
use weft_controller::resources::Kind;
use weft_controller::store::Store;

#[path = "common/options.rs"]
mod common;
use common::{module, options};

/// Every file of `examples/bookinfo/networking/`.
const MANIFESTS: [&str; 12] = [
    "bookinfo-gateway.yaml",
    "destination-rule-all.yaml",
    "destination-rule-all-mtls.yaml",
    "fault-injection-details-v1.yaml",
    "virtual-service-all-v1.yaml",
    "virtual-service-ratings-test-abort.yaml",
    "virtual-service-ratings-test-delay.yaml",
    "virtual-service-reviews-50-v3.yaml",
    "virtual-service-reviews-80-20.yaml",
    "virtual-service-reviews-jason-v2-v3.yaml",
    "virtual-service-reviews-test-v2.yaml",
    "virtual-service-reviews-v3.yaml",
];

const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";
const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";
const DETAILS: &str = "details.default.svc.cluster.local";

fn read(path: &str) -> String {
    let file = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {file}: {e}"))
}

/// The platform and the given manifests, each under its own origin.
fn load(manifests: &[&str]) -> Store {
    let mut store = Store::new();
    store.insert_yaml("platform.yaml", &read("tests/testdata/bookinfo/platform.yaml"));
    for manifest in manifests {
        store.insert_yaml(
            &format!("networking/{manifest}"),
            &read(&format!("../examples/bookinfo/networking/{manifest}")),
        );
    }
    store
}

/// What Istio's tasks apply with `manifest`: the platform, `destination-rule-all.yaml`
/// (unless the manifest is a DestinationRule file itself) and the manifest.
fn applied(manifest: &str) -> Store {
    if manifest.starts_with("destination-rule-all") {
        load(&[manifest])
    } else {
        load(&["destination-rule-all.yaml", manifest])
    }
}

/// The compiled mesh and every diagnostic: the store's (parsing, duplicates) and the
/// compiler's.
fn compiled(store: &Store) -> (Mesh, Vec<Diagnostic>) {
    let mesh = compile(store, &options());
    let mut diagnostics = store.diagnostics();
    diagnostics.extend(mesh.diagnostics().iter().cloned());
    (mesh, diagnostics)
}

/// The snapshot of a Workload's sidecar (or gateway), checked with `Snapshot::validate`.
fn snapshot(mesh: &Mesh, namespace: &str, workload: &str) -> Snapshot {
    let known = mesh
        .workloads()
        .iter()
        .find(|w| w.namespace == namespace && w.name == workload)
        .unwrap_or_else(|| panic!("no Workload {namespace}/{workload}"));
    let node: NodeIdentity = known.node();
    let compiled = mesh.snapshot_for(&node);
    assert_eq!(compiled.workload, Some(format!("{namespace}/{workload}")));
    if let Err(e) = compiled.snapshot.validate() {
        panic!("invalid snapshot for {namespace}/{workload}: {e}");
    }
    compiled.snapshot
}

fn sidecar(mesh: &Mesh, workload: &str) -> Snapshot {
    snapshot(mesh, "default", workload)
}

fn listener<'a>(snapshot: &'a Snapshot, name: &str) -> &'a weft_api::Listener {
    snapshot
        .listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn filter_names(snapshot: &Snapshot, listener_name: &str) -> Vec<String> {
    listener(snapshot, listener_name)
        .filters
        .iter()
        .map(|f| f.name.clone())
        .collect()
}

fn filter<'a>(snapshot: &'a Snapshot, listener_name: &str, name: &str) -> &'a FilterConfig {
    let l = listener(snapshot, listener_name);
    l.filters.iter().find(|f| f.name == name).unwrap_or_else(|| {
        panic!(
            "no filter {name} in {:?}",
            l.filters.iter().map(|f| &f.name).collect::<Vec<_>>()
        )
    })
}

/// A filter's configuration as JSON (the router's is JSON text).
fn config(filter: &FilterConfig) -> Value {
    match &filter.config {
        serde_yaml::Value::String(text) => serde_json::from_str(text).unwrap(),
        other => serde_json::to_value(other).unwrap(),
    }
}

/// The routes of the router's virtual host for `host:9080`.
fn router_routes(snapshot: &Snapshot, listener_name: &str, host: &str) -> Value {
    let name = format!("{host}:9080");
    let config = config(filter(snapshot, listener_name, "weft.router"));
    let vhost = config["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no router vhost {name} in {config}"));
    vhost["routes"].clone()
}

/// A router destination: the cluster of `subset` of `host:9080`.
fn to(host: &str, subset: &str) -> Value {
    json!({"destination": {"cluster": format!("outbound|9080|{subset}|{host}")}})
}

fn weighted(host: &str, subset: &str, weight: u32) -> Value {
    let mut destination = to(host, subset);
    destination["weight"] = json!(weight);
    destination
}

const JASON: &str = r#"[{"headers": {"end-user": {"exact": "jason"}}}]"#;

fn jason() -> Value {
    serde_json::from_str(JASON).unwrap()
}

fn route_table<'a>(snapshot: &'a Snapshot, name: &str) -> &'a weft_api::RouteTable {
    snapshot
        .route_tables
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no route table {name}"))
}

/// The outbound route table's virtual host for `host:9080`.
fn outbound_vhost<'a>(snapshot: &'a Snapshot, host: &str) -> &'a weft_api::VirtualHost {
    let name = format!("{host}:9080");
    route_table(snapshot, "outbound")
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name}"))
}

/// (name, disabled filters) of each route of a route-table virtual host.
fn table_routes(vhost: &weft_api::VirtualHost) -> Vec<(&str, Vec<&str>)> {
    vhost
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.disabled_filters.iter().map(String::as_str).collect()))
        .collect()
}

fn addresses<'a>(snapshot: &'a Snapshot, cluster: &str) -> Vec<&'a str> {
    snapshot
        .cluster(cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster}"))
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect()
}

fn default_retry() -> Value {
    json!({
        "attempts": 2,
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "retriable_status_codes": [503],
    })
}

/// The diagnostics a manifest applied with the platform and `destination-rule-all.yaml` may
/// produce, and why they are justified.
fn expected_diagnostics(manifest: &str) -> Vec<String> {
    match manifest {
        // Istio's sample also brings the details DestinationRule (subset v1 only). `kubectl
        // apply` would replace destination-rule-all's; in one intent directory the two are a
        // conflict: the first file (destination-rule-all.yaml) wins, which also has v1.
        "fault-injection-details-v1.yaml" => vec![
            "DestinationRule default/details (networking/fault-injection-details-v1.yaml): duplicate: already \
             defined in networking/destination-rule-all.yaml; this definition is ignored"
                .to_owned(),
        ],
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_manifest_compiles_without_diagnostics() {
    for manifest in MANIFESTS {
        let store = applied(manifest);
        let (mesh, diagnostics) = compiled(&store);
        let diagnostics: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(diagnostics, expected_diagnostics(manifest), "{manifest}");
        // Every sidecar and the gateway get a valid snapshot.
        for workload in mesh.workloads() {
            snapshot(&mesh, &workload.namespace, &workload.name);
        }
    }
    // Alone with the platform, the details fault brings its own DestinationRule: no conflict.
    let (_, diagnostics) = compiled(&load(&["fault-injection-details-v1.yaml"]));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
}

#[test]
fn manifests_without_a_namespace_land_in_default() {
    let store = load(&MANIFESTS);
    for (kind, name) in [
        (Kind::Gateway, "bookinfo-gateway"),
        (Kind::VirtualService, "bookinfo"),
        (Kind::VirtualService, "productpage"),
        (Kind::VirtualService, "reviews"),
        (Kind::VirtualService, "ratings"),
        (Kind::VirtualService, "details"),
        (Kind::DestinationRule, "productpage"),
        (Kind::DestinationRule, "reviews"),
        (Kind::DestinationRule, "ratings"),
        (Kind::DestinationRule, "details"),
    ] {
        assert!(store.get(kind, "default", name).is_some(), "{kind:?} default/{name}");
    }
    assert!(
        store
            .resources()
            .filter(|r| r.origin.starts_with("networking/"))
            .all(|r| r.namespace() == "default")
    );
}

#[test]
fn destination_rule_all_makes_a_cluster_per_subset() {
    for manifest in ["destination-rule-all.yaml", "destination-rule-all-mtls.yaml"] {
        let (mesh, _) = compiled(&applied(manifest));
        let s = sidecar(&mesh, "productpage-v1");
        // Subset clusters hold the endpoints carrying the subset's labels: the peers' sidecars.
        for (host, subset, endpoints) in [
            (PRODUCTPAGE, "v1", &["127.0.1.10:15006"][..]),
            (DETAILS, "v1", &["127.0.1.11:15006"]),
            (DETAILS, "v2", &[]),
            (RATINGS, "v1", &["127.0.1.12:15006"]),
            (RATINGS, "v2", &[]),
            (RATINGS, "v2-mysql", &[]),
            (RATINGS, "v2-mysql-vm", &[]),
            (REVIEWS, "v1", &["127.0.1.13:15006"]),
            (REVIEWS, "v2", &["127.0.1.14:15006"]),
            (REVIEWS, "v3", &["127.0.1.15:15006"]),
        ] {
            let name = format!("outbound|9080|{subset}|{host}");
            assert_eq!(addresses(&s, &name), endpoints, "{manifest}: {name}");
            let cluster = s.cluster(&name).unwrap();
            assert_eq!(cluster.lb_policy, weft_api::LbPolicy::LeastRequest, "Istio's default");
        }
        // Subsets alone change no routing: without a VirtualService requests for reviews go
        // to every version (Istio's "refresh and the stars change"), no router runs.
        assert_eq!(
            addresses(&s, &format!("outbound|9080||{REVIEWS}")),
            ["127.0.1.13:15006", "127.0.1.14:15006", "127.0.1.15:15006"]
        );
        // Every hop is mutual TLS: by the rule's ISTIO_MUTUAL, or Istio's auto mTLS without
        // it (every endpoint is a sidecar); the peer must be a reviews workload.
        for name in [
            format!("outbound|9080||{REVIEWS}"),
            format!("outbound|9080|v2|{REVIEWS}"),
        ] {
            let tls = s.cluster(&name).unwrap().tls.as_ref().expect("mutual TLS");
            assert_eq!(tls.mode, weft_api::UpstreamTlsMode::IstioMutual, "{manifest}: {name}");
            assert_eq!(
                tls.mesh_endpoints_only,
                manifest == "destination-rule-all.yaml",
                "auto mTLS only without the rule's tls"
            );
            assert_eq!(
                tls.subject_alt_names,
                ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]
            );
        }
        assert!(
            s.cluster(&format!("outbound|9080||{REVIEWS}"))
                .unwrap()
                .endpoints
                .iter()
                .all(|e| e.mesh)
        );
        assert_eq!(filter_names(&s, "outbound"), ["weft.retry"]);
        let reviews = outbound_vhost(&s, REVIEWS);
        assert_eq!(reviews.routes.len(), 1);
        assert_eq!(
            reviews.routes[0].forward.as_ref().unwrap().cluster,
            format!("outbound|9080||{REVIEWS}")
        );
    }
}

#[test]
fn all_v1_sends_every_service_to_v1() {
    let (mesh, _) = compiled(&applied("virtual-service-all-v1.yaml"));
    // productpage calls details and reviews, reviews v2 and v3 call ratings: routing is the
    // same on every sidecar of the namespace.
    for workload in ["productpage-v1", "reviews-v2", "reviews-v3"] {
        let s = sidecar(&mesh, workload);
        assert_eq!(filter_names(&s, "outbound"), ["weft.retry", "weft.router"]);
        assert_eq!(config(filter(&s, "outbound", "weft.retry")), default_retry());
        for host in [PRODUCTPAGE, REVIEWS, RATINGS, DETAILS] {
            assert_eq!(
                router_routes(&s, "outbound", host),
                json!([{"route": [to(host, "v1")]}]),
                "{workload}: {host}"
            );
            // Default retries and no faults: the route table leaves the choice to the router.
            assert_eq!(table_routes(outbound_vhost(&s, host)).len(), 1);
        }
    }
}

#[test]
fn reviews_test_v2_sends_jason_to_v2_and_everyone_else_to_v1() {
    let (mesh, _) = compiled(&applied("virtual-service-reviews-test-v2.yaml"));
    let s = sidecar(&mesh, "productpage-v1");
    assert_eq!(
        router_routes(&s, "outbound", REVIEWS),
        json!([
            {"match": jason(), "route": [to(REVIEWS, "v2")]},
            {"route": [to(REVIEWS, "v1")]},
        ])
    );
    assert_eq!(
        addresses(&s, &format!("outbound|9080|v2|{REVIEWS}")),
        ["127.0.1.14:15006"]
    );
    assert_eq!(
        addresses(&s, &format!("outbound|9080|v1|{REVIEWS}")),
        ["127.0.1.13:15006"]
    );
}

#[test]
fn reviews_jason_v2_v3_sends_jason_to_v2_and_everyone_else_to_v3() {
    let (mesh, _) = compiled(&applied("virtual-service-reviews-jason-v2-v3.yaml"));
    let s = sidecar(&mesh, "productpage-v1");
    assert_eq!(
        router_routes(&s, "outbound", REVIEWS),
        json!([
            {"match": jason(), "route": [to(REVIEWS, "v2")]},
            {"route": [to(REVIEWS, "v3")]},
        ])
    );
    assert_eq!(
        addresses(&s, &format!("outbound|9080|v3|{REVIEWS}")),
        ["127.0.1.15:15006"]
    );
}

#[test]
fn reviews_traffic_shifting_weights() {
    for (manifest, routes) in [
        (
            "virtual-service-reviews-50-v3.yaml",
            json!([{"route": [weighted(REVIEWS, "v1", 50), weighted(REVIEWS, "v3", 50)]}]),
        ),
        (
            "virtual-service-reviews-80-20.yaml",
            json!([{"route": [weighted(REVIEWS, "v1", 80), weighted(REVIEWS, "v2", 20)]}]),
        ),
        (
            "virtual-service-reviews-v3.yaml",
            json!([{"route": [to(REVIEWS, "v3")]}]),
        ),
    ] {
        let (mesh, _) = compiled(&applied(manifest));
        let s = sidecar(&mesh, "productpage-v1");
        assert_eq!(router_routes(&s, "outbound", REVIEWS), routes, "{manifest}");
        // Only reviews is routed by a VirtualService.
        let router = config(filter(&s, "outbound", "weft.router"));
        assert_eq!(router["virtual_hosts"].as_array().unwrap().len(), 1, "{router}");
    }
}

/// The ratings faults run on the client side: the outbound listeners of reviews v2 and v3, on
/// jason's requests to ratings only.
fn assert_ratings_fault_for_jason(manifest: &str, fault: Value) {
    let (mesh, _) = compiled(&applied(manifest));
    let name = "weft.fault.default.ratings.0";
    for workload in ["reviews-v2", "reviews-v3"] {
        let s = sidecar(&mesh, workload);
        // Before the router: the fault sees the request as the client sent it.
        assert_eq!(
            filter_names(&s, "outbound"),
            [name, "weft.retry", "weft.router"],
            "{manifest}"
        );
        let mut expected = fault.clone();
        expected["match"] = jason();
        assert_eq!(config(filter(&s, "outbound", name)), expected, "{manifest}");
        assert_eq!(filter(&s, "outbound", name).wasm, Some(module("fault", 'c')));
        // Both routes go to ratings v1; only the first one, jason's, has the fault.
        assert_eq!(
            router_routes(&s, "outbound", RATINGS),
            json!([
                {"match": jason(), "route": [to(RATINGS, "v1")]},
                {"route": [to(RATINGS, "v1")]},
            ])
        );
        let ratings = outbound_vhost(&s, RATINGS);
        assert_eq!(
            table_routes(ratings),
            [("default.ratings.0", vec![]), ("default.ratings.1", vec![name])]
        );
        assert_eq!(
            ratings.routes[0].matches.headers,
            [weft_api::HeaderMatch {
                name: "end-user".to_owned(),
                exact: Some("jason".to_owned()),
                ..Default::default()
            }]
        );
        // Requests to other services never run it.
        for host in [PRODUCTPAGE, REVIEWS, DETAILS] {
            assert_eq!(outbound_vhost(&s, host).routes[0].disabled_filters, [name], "{host}");
        }
    }
    // Not on the server side: ratings' inbound listener has no fault.
    let s = sidecar(&mesh, "ratings-v1");
    assert!(filter_names(&s, "inbound").is_empty());
}

#[test]
fn ratings_test_delay_delays_jason_by_7s() {
    assert_ratings_fault_for_jason(
        "virtual-service-ratings-test-delay.yaml",
        json!({"delay": {"fixed_delay_ms": 7000, "percentage": 100.0}}),
    );
}

#[test]
fn ratings_test_abort_answers_jason_500() {
    assert_ratings_fault_for_jason(
        "virtual-service-ratings-test-abort.yaml",
        json!({"abort": {"http_status": 500, "percentage": 100.0}}),
    );
}

#[test]
fn fault_injection_details_v1_answers_every_details_request_555() {
    let (mesh, _) = compiled(&applied("fault-injection-details-v1.yaml"));
    let s = sidecar(&mesh, "productpage-v1");
    let name = "weft.fault.default.details.0";
    assert_eq!(filter_names(&s, "outbound"), [name, "weft.retry", "weft.router"]);
    // No match: every request to details.
    assert_eq!(
        config(filter(&s, "outbound", name)),
        json!({"abort": {"http_status": 555, "percentage": 100.0}})
    );
    assert_eq!(
        router_routes(&s, "outbound", DETAILS),
        json!([{"route": [to(DETAILS, "v1")]}, {"route": [to(DETAILS, "v1")]}])
    );
    // The first route takes every request: nothing after it in the table.
    assert_eq!(
        table_routes(outbound_vhost(&s, DETAILS)),
        [("default.details.0", vec![])]
    );
    for host in [PRODUCTPAGE, REVIEWS, RATINGS] {
        assert_eq!(outbound_vhost(&s, host).routes[0].disabled_filters, [name], "{host}");
    }
}

#[test]
fn bookinfo_gateway_routes_the_app_paths_to_productpage() {
    for manifests in [
        &["bookinfo-gateway.yaml"][..],
        // Istio's tasks: mesh VirtualServices do not change the gateway's routes.
        &["bookinfo-gateway.yaml", "virtual-service-all-v1.yaml"],
    ] {
        let mut files = vec!["destination-rule-all.yaml"];
        files.extend(manifests);
        let (mesh, diagnostics) = compiled(&load(&files));
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");

        // The ingress gateway (istio-system, no sidecar): one listener, on its address.
        let s = snapshot(&mesh, "istio-system", "istio-ingressgateway");
        assert_eq!(s.listeners.len(), 1, "{manifests:?}");
        let gateway = &s.listeners[0];
        assert_eq!(
            (gateway.name.as_str(), gateway.address.as_str(), gateway.kind),
            ("gateway-8080", "127.0.1.20:8080", ListenerKind::Gateway)
        );
        assert_eq!(filter_names(&s, "gateway-8080"), ["weft.retry", "weft.router"]);
        let productpage = json!({"destination": {"cluster": format!("outbound|9080||{PRODUCTPAGE}")}});
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
                    "route": [productpage],
                }],
            }]}),
            "{manifests:?}"
        );
        let table = route_table(&s, "gateway-8080");
        assert_eq!(table.virtual_hosts.len(), 1);
        assert_eq!(table.virtual_hosts[0].domains, ["*"]);
        assert_eq!(
            addresses(&s, &format!("outbound|9080||{PRODUCTPAGE}")),
            ["127.0.1.10:15006"]
        );

        // The sidecars do not see the gateway's routes.
        let s = sidecar(&mesh, "productpage-v1");
        let outbound = listener(&s, "outbound");
        assert!(
            outbound
                .filters
                .iter()
                .all(|f| !config(f).to_string().contains("/productpage")),
            "{manifests:?}"
        );
        assert!(s.listeners.iter().all(|l| l.kind != ListenerKind::Gateway));
    }
}
