//! Mesh mutual TLS in the compiled snapshots, on Bookinfo's platform
//! (`tests/testdata/bookinfo/platform.yaml`): PeerAuthentication's precedence (workload over
//! namespace over mesh, UNSET inheriting, PERMISSIVE by default) and port-level modes on the
//! inbound listener; DestinationRule `tls` modes and Istio's auto mTLS on the clusters,
//! verified as the destination's service accounts; bad settings reported.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;

use weft_api::{ListenerMtls, MtlsMode, Snapshot, UpstreamTlsMode};
use weft_controller::compile::{CompileOptions, Mesh, compile};
use weft_controller::diagnostics::Diagnostic;
use weft_controller::store::Store;

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";

fn platform() -> String {
    let file = format!("{}/tests/testdata/bookinfo/platform.yaml", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).unwrap()
}

/// The platform plus `extra` (one YAML text), compiled; all diagnostics.
fn compiled(extra: &str) -> (Mesh, Vec<Diagnostic>) {
    let mut store = Store::new();
    store.insert_yaml("platform.yaml", &platform());
    store.insert_yaml("extra.yaml", extra);
    let module = |name: &str| weft_api::WasmModule {
        file: format!("/{name}.wasm"),
        url: String::new(),
        sha256: "a".repeat(64),
        vm_config: serde_yaml::Value::Null,
        root_id: String::new(),
        vm_id: None,
    };
    let options = CompileOptions {
        trust_domain: "cluster.local".to_owned(),
        system_filters: weft_controller::compile::SystemFilters {
            router: module("router"),
            retry: module("retry"),
            fault: module("fault"),
        },
        modules: BTreeMap::new(),
    };
    let mesh = compile(&store, &options);
    let mut diagnostics = store.diagnostics();
    diagnostics.extend(mesh.diagnostics().iter().cloned());
    (mesh, diagnostics)
}

fn sidecar(mesh: &Mesh, name: &str) -> Snapshot {
    let node = mesh
        .workloads()
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no workload {name}"))
        .node();
    let snapshot = mesh.snapshot_for(&node).snapshot;
    snapshot.validate().unwrap();
    snapshot
}

fn inbound_mtls(mesh: &Mesh, name: &str) -> ListenerMtls {
    let s = sidecar(mesh, name);
    s.listeners
        .iter()
        .find(|l| l.name == "inbound")
        .and_then(|l| l.mtls.clone())
        .expect("inbound mtls")
}

fn peer_authentication(namespace: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec:\n{body}\n---\n"
    )
}

fn strict() -> ListenerMtls {
    ListenerMtls {
        mode: MtlsMode::Strict,
        ports: BTreeMap::new(),
    }
}

#[test]
fn without_peer_authentication_sidecars_are_permissive_and_peers_get_auto_mtls() {
    let (mesh, diagnostics) = compiled("");
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(inbound_mtls(&mesh, "reviews-v1"), ListenerMtls::default());
    let s = sidecar(&mesh, "productpage-v1");
    let reviews = s.cluster(REVIEWS).unwrap();
    let tls = reviews.tls.as_ref().expect("auto mTLS");
    assert_eq!(tls.mode, UpstreamTlsMode::IstioMutual);
    assert!(tls.mesh_endpoints_only);
    assert_eq!(
        tls.subject_alt_names,
        ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]
    );
    assert!(reviews.endpoints.iter().all(|e| e.mesh));
}

#[test]
fn workload_over_namespace_over_mesh_with_unset_inheriting() {
    let mesh_strict = peer_authentication("istio-system", "default", "  mtls: {mode: STRICT}");
    let (mesh, diagnostics) = compiled(&mesh_strict);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(inbound_mtls(&mesh, "reviews-v1"), strict());
    assert_eq!(inbound_mtls(&mesh, "ratings-v1"), strict());

    let namespace_permissive = peer_authentication("default", "default", "  mtls: {mode: PERMISSIVE}");
    let reviews_unset = peer_authentication(
        "default",
        "reviews",
        "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: UNSET}",
    );
    let ratings_disable = peer_authentication(
        "default",
        "ratings",
        "  selector: {matchLabels: {app: ratings}}\n  mtls: {mode: DISABLE}",
    );
    let (mesh, diagnostics) = compiled(&format!(
        "{mesh_strict}{namespace_permissive}{reviews_unset}{ratings_disable}"
    ));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(
        inbound_mtls(&mesh, "reviews-v1").mode,
        MtlsMode::Permissive,
        "UNSET inherits the namespace's"
    );
    assert_eq!(inbound_mtls(&mesh, "ratings-v1").mode, MtlsMode::Disable);
    assert_eq!(inbound_mtls(&mesh, "details-v1").mode, MtlsMode::Permissive);

    // A DISABLE destination is no mesh endpoint: auto mTLS sends it plaintext.
    let s = sidecar(&mesh, "reviews-v2");
    let ratings = s.cluster(RATINGS).unwrap();
    assert!(ratings.tls.is_none(), "{:?}", ratings.tls);
    assert!(ratings.endpoints.iter().all(|e| !e.mesh));
    assert!(s.cluster(REVIEWS).unwrap().tls.is_some());
}

#[test]
fn port_level_modes_name_the_target_port_and_the_service_ports_reaching_it() {
    let pa = peer_authentication(
        "default",
        "reviews",
        "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9080: {mode: PERMISSIVE}\n    9443: {mode: UNSET}",
    );
    let (mesh, diagnostics) = compiled(&pa);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(
        inbound_mtls(&mesh, "reviews-v1"),
        ListenerMtls {
            mode: MtlsMode::Strict,
            ports: BTreeMap::from([(9080, MtlsMode::Permissive)]),
        },
        "UNSET at a port is the workload's mode, so it needs no entry"
    );
}

#[test]
fn destination_rule_modes_override_auto_mtls() {
    let rule = |mode: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: reviews, namespace: default }}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode}\n"
        )
    };
    let (mesh, diagnostics) = compiled(&rule("{mode: DISABLE}"));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert!(sidecar(&mesh, "productpage-v1").cluster(REVIEWS).unwrap().tls.is_none());

    let ca = std::env::temp_dir().join(format!("weft-security-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    let (mesh, diagnostics) = compiled(&rule(&format!(
        "{{mode: SIMPLE, sni: reviews.example.com, subjectAltNames: [reviews.example.com], caCertificates: {}}}",
        ca.display()
    )));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let tls = sidecar(&mesh, "productpage-v1")
        .cluster(REVIEWS)
        .unwrap()
        .tls
        .clone()
        .unwrap();
    assert_eq!(tls.mode, UpstreamTlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("reviews.example.com"));
    assert_eq!(tls.subject_alt_names, ["reviews.example.com"]);
    assert!(tls.ca_certificates.unwrap().contains("MIIB"));
    let _ = std::fs::remove_file(&ca);

    let (mesh, diagnostics) = compiled(&rule(
        "{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/other]}",
    ));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let tls = sidecar(&mesh, "productpage-v1")
        .cluster(REVIEWS)
        .unwrap()
        .tls
        .clone()
        .unwrap();
    assert_eq!(tls.subject_alt_names, ["spiffe://cluster.local/ns/default/sa/other"]);
    assert!(!tls.mesh_endpoints_only);
}

#[test]
fn bad_settings_are_reported_and_the_rest_compiles() {
    let bad = format!(
        "{}{}{}apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: ratings, namespace: default }}\nspec:\n  host: ratings\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: /nonexistent/ca.pem, insecureSkipVerify: true}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: details, namespace: default }}\nspec:\n  host: details\n  trafficPolicy:\n    tls: {{mode: MUTUAL}}\n",
        peer_authentication("default", "a", "  mtls: {mode: STRICT}"),
        peer_authentication("default", "b", "  mtls: {mode: DISABLE}"),
        peer_authentication(
            "default",
            "c",
            "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: SOMETIMES}"
        ),
    );
    let (mesh, diagnostics) = compiled(&bad);
    let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let has = |needle: &str| text.iter().any(|d| d.contains(needle));
    assert!(has("PeerAuthentication default/b"), "{text:#?}");
    assert!(has("already has PeerAuthentication a"), "{text:#?}");
    assert!(has("unknown mode \"SOMETIMES\""), "{text:#?}");
    assert!(has("cannot read /nonexistent/ca.pem"), "{text:#?}");
    assert!(has("insecureSkipVerify: not supported yet"), "{text:#?}");
    assert!(
        has("MUTUAL (client certificates from files) is not supported yet"),
        "{text:#?}"
    );
    // The first namespace-wide policy holds; the bad one is ignored.
    assert_eq!(inbound_mtls(&mesh, "reviews-v1"), strict());
    let s = sidecar(&mesh, "productpage-v1");
    assert_eq!(
        s.cluster(RATINGS).unwrap().tls.as_ref().unwrap().mode,
        UpstreamTlsMode::Simple,
        "system roots"
    );
}
