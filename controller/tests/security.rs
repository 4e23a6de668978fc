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
    // The productpage sidecar's TLS to reviews under a DestinationRule with `tls: {mode}`,
    // which must compile without diagnostics.
    let reviews_tls = |mode: &str| {
        let (mesh, diagnostics) = compiled(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: reviews, namespace: default }}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode}\n"
        ));
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        sidecar(&mesh, "productpage-v1").cluster(REVIEWS).unwrap().tls.clone()
    };
    assert!(reviews_tls("{mode: DISABLE}").is_none());

    let ca = std::env::temp_dir().join(format!("weft-security-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    let tls = reviews_tls(&format!(
        "{{mode: SIMPLE, sni: reviews.example.com, subjectAltNames: [reviews.example.com], caCertificates: {}}}",
        ca.display()
    ))
    .unwrap();
    assert_eq!(tls.mode, UpstreamTlsMode::Simple);
    assert_eq!(tls.sni.as_deref(), Some("reviews.example.com"));
    assert_eq!(tls.subject_alt_names, ["reviews.example.com"]);
    assert!(tls.ca_certificates.unwrap().contains("MIIB"));
    let _ = std::fs::remove_file(&ca);

    let tls =
        reviews_tls("{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/other]}").unwrap();
    assert_eq!(tls.subject_alt_names, ["spiffe://cluster.local/ns/default/sa/other"]);
    assert!(!tls.mesh_endpoints_only);

    // MUTUAL: the certificate and key stay files on the sidecar; only their paths travel.
    let tls = reviews_tls(
        "{mode: MUTUAL, sni: reviews.example.com, clientCertificate: /etc/certs/client.pem, privateKey: /etc/certs/key.pem}",
    )
    .unwrap();
    assert_eq!(tls.mode, UpstreamTlsMode::Mutual);
    assert_eq!(tls.client_certificate.as_deref(), Some("/etc/certs/client.pem"));
    assert_eq!(tls.private_key.as_deref(), Some("/etc/certs/key.pem"));
    assert_eq!(tls.sni.as_deref(), Some("reviews.example.com"));
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
    assert!(has("MUTUAL needs clientCertificate and privateKey"), "{text:#?}");
    // The first namespace-wide policy holds; the bad one is ignored.
    assert_eq!(inbound_mtls(&mesh, "reviews-v1"), strict());
    let s = sidecar(&mesh, "productpage-v1");
    assert_eq!(
        s.cluster(RATINGS).unwrap().tls.as_ref().unwrap().mode,
        UpstreamTlsMode::Simple,
        "system roots"
    );
}

/// A Gateway on the ingress gateway with `servers` (YAML list items, indented 4), and a
/// VirtualService for `bookinfo.example.com` bound to it.
fn gateway(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{ name: gw, namespace: istio-system }}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: bookinfo, namespace: default }}\nspec:\n  hosts: [\"*\"]\n  gateways: [istio-system/gw]\n  http:\n  - route:\n    - destination: {{host: productpage, port: {{number: 9080}}}}\n---\n"
    )
}

/// A `kubernetes.io/tls` Secret in istio-system (base64 `data`), optionally with `ca.crt` as
/// `stringData`.
fn secret(name: &str, ca: bool) -> String {
    let ca = if ca {
        "stringData:\n  ca.crt: \"-----BEGIN CERTIFICATE-----\\nCA\\n-----END CERTIFICATE-----\\n\"\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {name}, namespace: istio-system }}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkNFUlQKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=\n  tls.key: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCktFWQotLS0tLUVORCBQUklWQVRFIEtFWS0tLS0tCg==\n{ca}---\n"
    )
}

fn gateway_listener(mesh: &Mesh, port: u16) -> weft_api::Listener {
    sidecar(mesh, "istio-ingressgateway")
        .listeners
        .into_iter()
        .find(|l| l.name == format!("gateway-{port}"))
        .unwrap_or_else(|| panic!("no gateway-{port} listener"))
}

#[test]
fn gateway_https_servers_terminate_tls_with_their_secrets_by_sni() {
    let servers = "  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [bookinfo.example.com]\n    tls: {mode: SIMPLE, credentialName: bookinfo-cert}\n  - port: {number: 8443, name: https-shop, protocol: HTTPS}\n    hosts: [\"default/*.shop.example.com\"]\n    tls: {mode: SIMPLE, credentialName: shop-cert}\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*\"]";
    let (mesh, diagnostics) = compiled(&format!(
        "{}{}{}",
        gateway(servers),
        secret("bookinfo-cert", false),
        secret("shop-cert", false)
    ));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let tls = gateway_listener(&mesh, 8443).tls.expect("tls");
    assert_eq!(tls.mode, weft_api::ServerTlsMode::Simple);
    let names: Vec<_> = tls.certificates.iter().map(|c| c.server_names.clone()).collect();
    assert_eq!(names, [vec!["bookinfo.example.com"], vec!["*.shop.example.com"]]);
    assert!(tls.certificates[0].cert_chain.contains("CERT"));
    assert!(tls.certificates[0].private_key.contains("KEY"));
    assert!(gateway_listener(&mesh, 8080).tls.is_none());

    // MUTUAL takes the client CA from the Secret's ca.crt.
    let mutual = "  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: MUTUAL, credentialName: bookinfo-cert}";
    let (mesh, diagnostics) = compiled(&format!("{}{}", gateway(mutual), secret("bookinfo-cert", true)));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let tls = gateway_listener(&mesh, 8443).tls.expect("tls");
    assert_eq!(tls.mode, weft_api::ServerTlsMode::Mutual);
    assert!(tls.client_ca.unwrap().contains("CA"));
    assert!(tls.certificates[0].server_names.is_empty(), "`*` serves any name");
}

/// The router's virtual hosts of a gateway listener: (name, routes).
fn gateway_router(mesh: &Mesh, port: u16) -> Vec<(String, serde_json::Value)> {
    let listener = gateway_listener(mesh, port);
    let router = listener
        .filters
        .iter()
        .find(|f| f.name == "weft.router")
        .expect("a router filter");
    let serde_yaml::Value::String(text) = &router.config else {
        panic!("the router's config is JSON text: {:?}", router.config)
    };
    let config: serde_json::Value = serde_json::from_str(text).expect("json");
    config["virtual_hosts"]
        .as_array()
        .expect("virtual_hosts")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or_default().to_owned(), v["routes"].clone()))
        .collect()
}

#[test]
fn gateway_https_redirect_answers_every_plaintext_request_of_its_hosts_with_a_301() {
    // Port 8080 redirects its hosts (one routed by the VirtualService, one routed by
    // nothing); port 8081 serves the same VirtualService without redirecting; 8443 is HTTPS.
    let servers = "  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [bookinfo.example.com, static.example.com]\n    tls: {httpsRedirect: true}\n  - port: {number: 8081, name: http-plain, protocol: HTTP}\n    hosts: [bookinfo.example.com]\n  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [bookinfo.example.com]\n    tls: {mode: SIMPLE, credentialName: bookinfo-cert, httpsRedirect: true}";
    let (mesh, diagnostics) = compiled(&format!("{}{}", gateway(servers), secret("bookinfo-cert", false)));
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let redirect = serde_json::json!([{
        "name": "https-redirect",
        "redirect": {"scheme": "https", "derive_port": "FROM_REQUEST_PORT", "redirect_code": 301}
    }]);
    let redirecting = gateway_router(&mesh, 8080);
    let names: Vec<&str> = redirecting.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["bookinfo.example.com", "static.example.com"]);
    assert!(
        redirecting.iter().all(|(_, routes)| *routes == redirect),
        "{redirecting:#?}"
    );
    // The route table has each host, without a cluster: nothing is forwarded from there.
    let table = gateway_listener(&mesh, 8080).route_table;
    let mesh_table = sidecar(&mesh, "istio-ingressgateway")
        .route_tables
        .into_iter()
        .find(|t| t.name == table)
        .expect("the listener's table");
    assert_eq!(mesh_table.virtual_hosts.len(), 2);
    assert!(
        mesh_table
            .virtual_hosts
            .iter()
            .all(|v| v.routes.iter().all(|r| r.forward.is_none())),
        "{mesh_table:#?}"
    );
    // Without httpsRedirect, and on HTTPS, the VirtualService routes.
    for port in [8081, 8443] {
        let routes = gateway_router(&mesh, port);
        assert_eq!(routes.len(), 1, "{routes:#?}");
        assert_ne!(routes[0].1, redirect, "port {port}");
        assert!(routes[0].1.to_string().contains("productpage"), "{routes:#?}");
    }
}

#[test]
fn gateway_tls_problems_are_reported_and_the_server_left_out() {
    let servers = "  - port: {number: 8443, name: a, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: missing}\n  - port: {number: 9443, name: b, protocol: HTTPS}\n    hosts: [b.example.com]\n    tls: {mode: MUTUAL, credentialName: bookinfo-cert}\n  - port: {number: 7443, name: c, protocol: HTTPS}\n    hosts: [c.example.com]\n    tls: {mode: AUTO_PASSTHROUGH}\n  - port: {number: 8080, name: d, protocol: HTTP}\n    hosts: [\"*\"]\n    tls: {httpsRedirect: true}";
    let (mesh, diagnostics) = compiled(&format!("{}{}", gateway(servers), secret("bookinfo-cert", false)));
    let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let has = |needle: &str| text.iter().any(|d| d.contains(needle));
    assert!(
        has("no Secret istio-system/missing; the server is ignored"),
        "{text:#?}"
    );
    assert!(has("MUTUAL needs a client CA"), "{text:#?}");
    assert!(has("AUTO_PASSTHROUGH is not supported yet"), "{text:#?}");
    let gateway = sidecar(&mesh, "istio-ingressgateway");
    let ports: Vec<&str> = gateway.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(ports, ["gateway-8080"], "only the plaintext server runs");
}

/// TLS hosts for the passthrough tests: a ServiceEntry with a TLS port, and a Service whose
/// `https` port selects the reviews workloads (their application port, not their sidecar's).
const TLS_HOSTS: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: api, namespace: default }\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 443, name: tls, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.2.1}]\n---\napiVersion: v1\nkind: Service\nmetadata: { name: secure, namespace: default }\nspec:\n  ports: [{port: 443, name: https-web, targetPort: 8443}]\n  selector: {app: reviews}\n---\n";

#[test]
fn gateway_passthrough_servers_route_connections_by_server_name() {
    let servers = "  - port: {number: 8443, name: tls, protocol: TLS}\n    hosts: [\"*.example.com\"]\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 9443, name: https, protocol: HTTPS}\n    hosts: [db.example.org]\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*\"]";
    let routes = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: passthrough, namespace: default }\nspec:\n  hosts: [api.example.com, \"*.secure.example.com\"]\n  gateways: [istio-system/gw]\n  tls:\n  - match: [{sniHosts: [api.example.com], port: 8443}]\n    route: [{destination: {host: api.example.com}}]\n  - match: [{sniHosts: [\"*.secure.example.com\"]}, {sniHosts: [api.example.com]}]\n    route:\n    - {destination: {host: secure}, weight: 80}\n    - {destination: {host: api.example.com, port: {number: 443}}, weight: 20}\n---\n";
    let (mesh, diagnostics) = compiled(&format!("{}{TLS_HOSTS}{routes}", gateway(servers)));
    let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    // The second route's api.example.com is the first route's already.
    assert_eq!(text.len(), 1, "{text:#?}");
    assert!(
        text[0].contains("spec.tls[1]") && text[0].contains("server name api.example.com on port 8443"),
        "{text:#?}"
    );

    let api = "outbound|443||api.example.com";
    let secure = "outbound|443||secure.default.svc.cluster.local";
    let listener = gateway_listener(&mesh, 8443);
    assert_eq!(listener.protocol, weft_api::ListenerProtocol::TlsPassthrough);
    assert!(listener.route_table.is_empty() && listener.filters.is_empty() && listener.tls.is_none());
    type Route<'a> = (Vec<&'a str>, Vec<(&'a str, u32)>);
    let routes: Vec<Route<'_>> = listener
        .sni_routes
        .iter()
        .map(|r| {
            (
                r.server_names.iter().map(String::as_str).collect(),
                r.destinations.iter().map(|d| (d.cluster.as_str(), d.weight)).collect(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (vec!["api.example.com"], vec![(api, 1)]),
            (vec!["*.secure.example.com"], vec![(secure, 80), (api, 20)]),
        ]
    );
    // A passthrough server no VirtualService routes: a listener that closes every connection.
    assert!(gateway_listener(&mesh, 9443).sni_routes.is_empty());
    assert!(
        !gateway_listener(&mesh, 8080)
            .protocol
            .eq(&weft_api::ListenerProtocol::TlsPassthrough)
    );

    // The clusters: the applications' TLS ports (not the sidecars' inbound port), no TLS of
    // the mesh's.
    let snapshot = sidecar(&mesh, "istio-ingressgateway");
    let cluster = |name: &str| snapshot.clusters.iter().find(|c| c.name == name).cloned().unwrap();
    let endpoints = |name: &str| -> Vec<String> { cluster(name).endpoints.iter().map(|e| e.address.clone()).collect() };
    assert_eq!(endpoints(api), ["127.0.2.1:443"]);
    assert_eq!(
        endpoints(secure),
        ["127.0.1.13:8443", "127.0.1.14:8443", "127.0.1.15:8443"]
    );
    assert!(cluster(secure).tls.is_none() && cluster(api).tls.is_none());
    // Sidecars route HTTP only: no route for the TLS port.
    let productpage = sidecar(&mesh, "productpage-v1");
    assert!(productpage.listeners.iter().all(|l| l.sni_routes.is_empty()));
}

#[test]
fn tls_route_problems_are_reported() {
    let servers = "  - port: {number: 8443, name: tls, protocol: TLS}\n    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 8443, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n  - port: {number: 9443, name: tcp, protocol: TLS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, credentialName: bookinfo-cert}";
    let routes = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: passthrough, namespace: default }\nspec:\n  hosts: [api.example.com]\n  gateways: [istio-system/gw, mesh]\n  tls:\n  - match: [{sniHosts: [other.example.com]}, {port: 8443}]\n    route: [{destination: {host: api.example.com}}]\n  - match: [{sniHosts: [api.example.com]}]\n    route: [{destination: {host: api.example.com, port: {number: 80}}}, {destination: {host: nowhere.example.com}}]\n---\n";
    let (mesh, diagnostics) = compiled(&format!(
        "{}{}{TLS_HOSTS}{routes}",
        gateway(servers),
        secret("bookinfo-cert", false)
    ));
    let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let has = |needle: &str| text.iter().any(|d| d.contains(needle));
    for needle in [
        "a TLS server that terminates TLS forwards TCP",
        "port 8443 already has servers that pass TLS through; the server is ignored",
        "TLS routes apply at passthrough Gateway servers only",
        "other.example.com is not within the VirtualService's hosts; ignored",
        "spec.tls[0].match[1].sniHosts: required",
        "spec.tls[0].match: no match block with a usable sniHosts; the route is ignored",
        "host api.example.com has no TLS port 80",
        "no Service or ServiceEntry has host nowhere.example.com; connections to this destination are closed",
    ] {
        assert!(has(needle), "{needle}: {text:#?}");
    }
    // The second route stays, its dangling destinations included (their clusters are empty).
    let listener = gateway_listener(&mesh, 8443);
    assert_eq!(listener.sni_routes.len(), 1, "{listener:#?}");
    assert_eq!(listener.sni_routes[0].server_names, ["api.example.com"]);
    assert_eq!(listener.sni_routes[0].destinations.len(), 2);
}
