//! Mesh mutual TLS between two real proxies on 127.0.0.1: a client sidecar whose outbound
//! cluster originates `istio_mutual` TLS, and a server sidecar whose inbound listener
//! terminates it in front of an echo application. Certificates come from test CAs made
//! here with rcgen, exactly as the controller's CA makes them (ECDSA P-256, a SPIFFE URI
//! SAN, server and client auth).
//!
//! The handshake matrix: valid, wrong CA, expired, revoked (by serial and by identity, applied
//! by a snapshot push, ending established connections and refusing resumed sessions), wrong
//! SPIFFE ID, plaintext to a STRICT port, PERMISSIVE taking both,
//! DISABLE refusing TLS, per-port STRICT; then rotation under load, the principal seen by the
//! application and by the authz filter, and trust-bundle overlap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::json;
use weft_proxy::Proxy;
use weft_proxy::identity::WorkloadIdentity;

use crate::support::*;

const TRUST_DOMAIN: &str = "cluster.local";

/// A test root CA.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}")
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let root = params.self_signed(&key).expect("root");
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem: root.pem(),
        }
    }

    /// A workload identity for service account `sa`, valid from `from` to `until` (seconds
    /// relative to now), with serial `serial`.
    fn identity_between(&self, sa: &str, from: i64, until: i64, serial: u8) -> WorkloadIdentity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(spiffe(sa).try_into().expect("uri"))];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        let at = |offset: i64| {
            if offset >= 0 {
                now + Duration::from_secs(offset.unsigned_abs())
            } else {
                now - Duration::from_secs(offset.unsigned_abs())
            }
        };
        params.not_before = at(from).into();
        params.not_after = at(until).into();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x10, serial]));
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        WorkloadIdentity {
            chain_pem: vec![cert.pem()],
            key_der: Arc::new(key.serialize_der()),
            spiffe_id: spiffe(sa),
            trust_bundle_pem: self.pem.clone(),
            serial: format!("10{serial:02x}"),
            issued: now,
            not_after: at(until),
        }
    }

    fn identity(&self, sa: &str, serial: u8) -> WorkloadIdentity {
        self.identity_between(sa, -60, 3600, serial)
    }
}

/// The server sidecar's snapshot: an inbound listener (mTLS `mode`, per-port `ports`) in
/// front of the application at `app`, with `filters` and `security`.
fn server_yaml(app: SocketAddr, mtls: &str, filters: &str, security: &str) -> String {
    format!(
        r#"
version: "server"
listeners:
  - name: inbound
    address: 127.0.0.1:0
    kind: inbound
    route_table: rt
    mtls: {mtls}
    filters:
{filters}
route_tables:
  - name: rt
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: app
            forward: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
security: {security}
"#
    )
}

/// The client sidecar's snapshot: an outbound listener sending everything to `server`
/// (the server sidecar's inbound) with `tls`.
fn client_yaml(server: SocketAddr, tls: &str, security: &str) -> String {
    format!(
        r#"
version: "client"
listeners:
  - name: outbound
    address: 127.0.0.1:0
    route_table: rt
route_tables:
  - name: rt
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: server
            forward: {{ cluster: server, timeout: 5s }}
clusters:
  - name: server
    connect_timeout: 2s
    endpoints: [{{ address: "{server}", mesh: true }}]
    tls: {tls}
security: {security}
"#
    )
}

const MUTUAL: &str = "{ mode: istio_mutual }";
const NO_SECURITY: &str = "{}";

/// A client and server sidecar pair in front of an echo application.
struct Pair {
    client: Proxy,
    server: Proxy,
    app: Upstream,
}

impl Pair {
    async fn start(server_mtls: &str, client_tls: &str) -> Self {
        Self::start_with(server_mtls, "", NO_SECURITY, client_tls).await
    }

    async fn start_with(server_mtls: &str, filters: &str, server_security: &str, client_tls: &str) -> Self {
        let app = echo("app").await;
        let server = start_proxy(&server_yaml(app.addr, server_mtls, filters, server_security), 1);
        let inbound = server.listener_addr("inbound").expect("inbound");
        let client = start_proxy(&client_yaml(inbound, client_tls, NO_SECURITY), 1);
        Self { client, server, app }
    }

    fn inbound(&self) -> SocketAddr {
        self.server.listener_addr("inbound").expect("inbound")
    }

    async fn call(&self) -> Reply {
        get(
            self.client.listener_addr("outbound").expect("outbound"),
            "server",
            "/hello",
        )
        .await
    }
}

async fn server_metric(pair: &Pair, name: &str) -> f64 {
    metric(&pair.server, &format!("{name}{{listener=\"inbound\"}}"))
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn valid_peers_talk_mutual_tls_and_the_app_learns_the_client_identity() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("client identity");
    pair.server
        .set_identity(ca.identity("reviews", 2))
        .expect("server identity");
    for _ in 0..3 {
        let reply = pair.call().await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert!(
            reply
                .body
                .contains("x-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/productpage"),
            "{}",
            reply.body
        );
    }
    // One handshake, reused by the three requests.
    assert_eq!(
        server_metric(&pair, "weft_listener_downstream_cx_mtls_total").await,
        1.0
    );
    assert_eq!(
        metric(&pair.client, "weft_cluster_upstream_cx_tls_total{cluster=\"server\"}").await,
        Some(1.0)
    );
    assert_eq!(pair.app.hits(), 3);
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    let (mesh, other) = (Ca::new("mesh"), Ca::new("other"));
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.server
        .set_identity(mesh.identity("reviews", 2))
        .expect("server identity");
    // The client trusts the mesh root (so it accepts the server) but presents a certificate
    // of another CA.
    let mut client = other.identity("productpage", 1);
    client.trust_bundle_pem = format!("{}{}", mesh.pem, other.pem);
    pair.client.set_identity(client).expect("client identity");
    let reply = pair.call().await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    // With TLS 1.3 the client finishes its side of the handshake before the server checks
    // the client's certificate: the refusal arrives as the first read fails.
    assert!(
        matches!(reply.reason(), Some("upstream_connect_failure" | "upstream_reset")),
        "{reply:?}"
    );
    assert_eq!(pair.app.hits(), 0);
    assert!(
        eventually(Duration::from_secs(2), || async {
            server_metric(&pair, "weft_listener_downstream_cx_refused_total").await >= 1.0
        })
        .await
    );
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let (mesh, other) = (Ca::new("mesh"), Ca::new("other"));
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.client
        .set_identity(mesh.identity("productpage", 1))
        .expect("client identity");
    let mut server = other.identity("reviews", 2);
    server.trust_bundle_pem = format!("{}{}", mesh.pem, other.pem);
    pair.server.set_identity(server).expect("server identity");
    let reply = pair.call().await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(
        metric(
            &pair.client,
            "weft_cluster_upstream_cx_tls_fail_total{cluster=\"server\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(pair.app.hits(), 0);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.client
        .set_identity(ca.identity_between("productpage", -7200, -3600, 1))
        .expect("client identity");
    pair.server
        .set_identity(ca.identity("reviews", 2))
        .expect("server identity");
    let reply = pair.call().await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(pair.app.hits(), 0);
}

#[tokio::test]
async fn revocation_by_serial_and_by_identity_applies_with_the_next_snapshot() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("client identity");
    pair.server
        .set_identity(ca.identity("reviews", 2))
        .expect("server identity");
    assert_eq!(pair.call().await.status, StatusCode::OK);

    // Revoking the client's serial on the server: new handshakes fail. A fresh client proxy
    // (no pooled connection) shows it.
    let app = pair.app.addr;
    let revoke = |security: &str| {
        weft_api::Snapshot::from_yaml(&server_yaml(app, "{ mode: strict }", "", security)).expect("snapshot")
    };
    pair.server
        .update(revoke("{ revoked_serials: [\"10:01\"] }"))
        .expect("update");
    let fresh = start_proxy(&client_yaml(pair.inbound(), MUTUAL, NO_SECURITY), 1);
    fresh.set_identity(ca.identity("productpage", 1)).expect("identity");
    let reply = get(fresh.listener_addr("outbound").expect("outbound"), "server", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");

    // A new certificate (new serial) for the same identity works again ...
    let fresh = {
        let again = start_proxy(&client_yaml(pair.inbound(), MUTUAL, NO_SECURITY), 1);
        again.set_identity(ca.identity("productpage", 3)).expect("identity");
        again
    };
    let reply = get(fresh.listener_addr("outbound").expect("outbound"), "server", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    // ... until the identity itself is revoked.
    pair.server
        .update(revoke(&format!(
            "{{ revoked_identities: [\"{}\"] }}",
            spiffe("productpage")
        )))
        .expect("update");
    let again = start_proxy(&client_yaml(pair.inbound(), MUTUAL, NO_SECURITY), 1);
    again.set_identity(ca.identity("productpage", 4)).expect("identity");
    let reply = get(again.listener_addr("outbound").expect("outbound"), "server", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");

    // The client refuses a revoked server too.
    let client_revokes = start_proxy(
        &client_yaml(
            pair.inbound(),
            MUTUAL,
            &format!("{{ revoked_identities: [\"{}\"] }}", spiffe("reviews")),
        ),
        1,
    );
    client_revokes
        .set_identity(ca.identity("details", 5))
        .expect("identity");
    let reply = get(
        client_revokes.listener_addr("outbound").expect("outbound"),
        "server",
        "/",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
}

#[tokio::test]
async fn revoking_a_client_closes_its_established_connection_once_its_request_finished() {
    let ca = Ca::new("mesh");
    // `/slow` is held by the app until the test releases it, after the revocation.
    let (arrived, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let app = {
        let (arrived, release) = (arrived.clone(), release.clone());
        upstream(move |request| {
            let (arrived, release) = (arrived.clone(), release.clone());
            async move {
                if request.uri().path() == "/slow" {
                    arrived.notify_one();
                    release.notified().await;
                }
                describe("app", request).await
            }
        })
        .await
    };
    let strict = "{ mode: strict }";
    let server = start_proxy(&server_yaml(app.addr, strict, "", NO_SECURITY), 1);
    let client = start_proxy(
        &client_yaml(server.listener_addr("inbound").expect("inbound"), MUTUAL, NO_SECURITY),
        1,
    );
    client
        .set_identity(ca.identity("productpage", 1))
        .expect("client identity");
    server.set_identity(ca.identity("reviews", 2)).expect("server identity");
    let outbound = client.listener_addr("outbound").expect("outbound");
    assert_eq!(get(outbound, "server", "/").await.status, StatusCode::OK);

    // A request in flight on the pooled connection when the client's serial is revoked.
    let in_flight = tokio::spawn(get(outbound, "server", "/slow"));
    arrived.notified().await;
    let revoked = server_yaml(app.addr, strict, "", "{ revoked_serials: [\"10:01\"] }");
    server
        .update(weft_api::Snapshot::from_yaml(&revoked).expect("snapshot"))
        .expect("update");
    let revoked_metric = "weft_listener_downstream_cx_revoked_total{listener=\"inbound\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&server, revoked_metric).await == Some(1.0)
        })
        .await,
        "the revoked client's connection is being closed"
    );
    release.notify_one();
    let reply = in_flight.await.expect("join");
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the request in flight finishes: {reply:?}"
    );

    // The connection is closed: the next request needs a new handshake, which is refused
    // (the client proxy resumes its TLS session, which skips the certificate verifier: the
    // server checks the resumed session's peer too).
    let reply = get(outbound, "server", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(app.hits(), 2);
    assert_eq!(
        metric(
            &server,
            "weft_listener_downstream_cx_refused_total{listener=\"inbound\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_pooled_connection_to_a_server_revoked_since_is_never_used_again() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("client identity");
    pair.server
        .set_identity(ca.identity("reviews", 2))
        .expect("server identity");
    assert_eq!(pair.call().await.status, StatusCode::OK);
    assert_eq!(pair.call().await.status, StatusCode::OK);
    let cluster = |name: &str| format!("{name}{{cluster=\"server\"}}");
    assert_eq!(
        metric(&pair.client, &cluster("weft_cluster_upstream_cx_total")).await,
        Some(1.0),
        "the second request reused the pooled connection"
    );

    // The client's mesh revokes the server's identity: the pooled connection is dropped
    // unused, and a new handshake with that server is refused.
    let revoked = client_yaml(
        pair.inbound(),
        MUTUAL,
        &format!("{{ revoked_identities: [\"{}\"] }}", spiffe("reviews")),
    );
    pair.client
        .update(weft_api::Snapshot::from_yaml(&revoked).expect("snapshot"))
        .expect("update");
    let reply = pair.call().await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(pair.app.hits(), 2);
    assert_eq!(
        metric(&pair.client, &cluster("weft_cluster_upstream_cx_revoked_total")).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&pair.client, &cluster("weft_cluster_upstream_cx_tls_fail_total")).await,
        Some(1.0),
        "the new handshake failed"
    );
}

#[tokio::test]
async fn a_server_with_another_spiffe_id_is_refused() {
    let ca = Ca::new("mesh");
    let expect = |sa: &str| format!("{{ mode: istio_mutual, subject_alt_names: [\"{}\"] }}", spiffe(sa));
    let pair = Pair::start("{ mode: strict }", &expect("ratings")).await;
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("client identity");
    pair.server
        .set_identity(ca.identity("reviews", 2))
        .expect("server identity");
    let reply = pair.call().await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert_eq!(pair.app.hits(), 0);

    let right = start_proxy(&client_yaml(pair.inbound(), &expect("reviews"), NO_SECURITY), 1);
    right.set_identity(ca.identity("productpage", 1)).expect("identity");
    let reply = get(right.listener_addr("outbound").expect("outbound"), "server", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

#[tokio::test]
async fn strict_closes_plaintext_and_permissive_takes_both() {
    let ca = Ca::new("mesh");
    let strict = Pair::start("{ mode: strict }", MUTUAL).await;
    strict.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    let answer = raw(
        strict.inbound(),
        b"GET / HTTP/1.1\r\nhost: app\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(answer, "", "plaintext to STRICT must get no HTTP answer");
    assert_eq!(strict.app.hits(), 0);
    assert!(
        eventually(Duration::from_secs(2), || async {
            server_metric(&strict, "weft_listener_downstream_cx_refused_total").await >= 1.0
        })
        .await
    );

    let permissive = Pair::start("{ mode: permissive }", MUTUAL).await;
    permissive
        .client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    permissive
        .server
        .set_identity(ca.identity("reviews", 2))
        .expect("identity");
    let plain = get(permissive.inbound(), "app", "/plain").await;
    assert_eq!(plain.status, StatusCode::OK, "{plain:?}");
    assert!(!plain.body.contains("x-forwarded-client-cert"), "{}", plain.body);
    let mutual = permissive.call().await;
    assert_eq!(mutual.status, StatusCode::OK, "{mutual:?}");
    assert!(mutual.body.contains("x-forwarded-client-cert: URI="), "{}", mutual.body);
    assert_eq!(
        server_metric(&permissive, "weft_listener_downstream_cx_mtls_total").await,
        1.0
    );
    assert_eq!(
        server_metric(&permissive, "weft_listener_downstream_cx_plaintext_total").await,
        1.0
    );
}

#[tokio::test]
async fn disable_refuses_tls_and_takes_plaintext() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: disable }", MUTUAL).await;
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    pair.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    assert_eq!(pair.call().await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(get(pair.inbound(), "app", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_strict_port_refuses_plaintext_requests_on_a_permissive_listener() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: permissive, ports: { 9443: strict } }", MUTUAL).await;
    pair.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    assert_eq!(get(pair.inbound(), "app:9080", "/").await.status, StatusCode::OK);
    let refused = get(pair.inbound(), "app:9443", "/").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    assert_eq!(refused.reason(), Some("mtls_required"));
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    let client = pair.client.listener_addr("outbound").expect("outbound");
    assert_eq!(get(client, "app:9443", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn no_certificate_yet_means_no_mutual_tls() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    let reply = pair.call().await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert!(reply.body.contains("upstream connect error"), "{reply:?}");
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    assert_eq!(pair.call().await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_certificate_that_does_not_match_its_key_is_refused_and_the_old_one_stays() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    pair.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    let mut broken = ca.identity("productpage", 3);
    broken.key_der = ca.identity("productpage", 4).key_der;
    assert!(pair.client.set_identity(broken).is_err());
    let mut garbage = ca.identity("productpage", 5);
    garbage.chain_pem = vec!["not a certificate".into()];
    assert!(pair.client.set_identity(garbage).is_err());
    assert_eq!(pair.call().await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_bad_trust_bundle_in_a_snapshot_is_refused_and_the_old_snapshot_stays() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    pair.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    let bad = weft_api::Snapshot::from_yaml(&server_yaml(
        pair.app.addr,
        "{ mode: strict }",
        "",
        "{ trust_bundle: [\"-----BEGIN CERTIFICATE-----\\nnope\\n-----END CERTIFICATE-----\\n\"] }",
    ))
    .expect("parses");
    let error = pair.server.update(bad).expect_err("refused");
    assert!(
        format!("{:#}", anyhow_chain(&error)).contains("trust_bundle"),
        "{error}"
    );
    assert_eq!(pair.call().await.status, StatusCode::OK);
}

fn anyhow_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn trust_bundle_overlap_lets_old_and_new_roots_talk_during_a_root_rotation() {
    let (old, new) = (Ca::new("old root"), Ca::new("new root"));
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    // The server already has a certificate of the new root; the client still has one of the
    // old. The snapshot's trust bundle carries both roots to both sides.
    let app = pair.app.addr;
    let both = format!(
        "{{ trust_bundle: [{}, {}] }}",
        serde_json::to_string(&old.pem).expect("json"),
        serde_json::to_string(&new.pem).expect("json")
    );
    pair.server
        .update(weft_api::Snapshot::from_yaml(&server_yaml(app, "{ mode: strict }", "", &both)).expect("yaml"))
        .expect("update");
    pair.server.set_identity(new.identity("reviews", 2)).expect("identity");
    let client = start_proxy(&client_yaml(pair.inbound(), MUTUAL, &both), 1);
    client.set_identity(old.identity("productpage", 1)).expect("identity");
    let reply = get(client.listener_addr("outbound").expect("outbound"), "server", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    // Without the overlap the same pair cannot talk.
    let alone = start_proxy(&client_yaml(pair.inbound(), MUTUAL, NO_SECURITY), 1);
    alone.set_identity(old.identity("productpage", 1)).expect("identity");
    let reply = get(alone.listener_addr("outbound").expect("outbound"), "server", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_continuous_load_fails_no_request() {
    let ca = Ca::new("mesh");
    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    pair.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    // Load runs through the client sidecars in `clients`: the first keeps its pooled
    // connections across every rotation (they must survive), and each round adds a client
    // sidecar whose fresh handshakes meet the server's newest certificate.
    let clients = Arc::new(std::sync::Mutex::new(vec![
        pair.client.listener_addr("outbound").expect("outbound"),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loads = Vec::new();
    for task in 0..4usize {
        let (stop, ok, failed, clients) = (stop.clone(), ok.clone(), failed.clone(), clients.clone());
        loads.push(tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let target = {
                    let clients = clients.lock().expect("lock");
                    // Half the tasks stay on the first sidecar, half follow the newest.
                    if task % 2 == 0 {
                        clients[0]
                    } else {
                        clients[clients.len() - 1]
                    }
                };
                let mut client = H1::connect(target).await;
                for _ in 0..20 {
                    let reply = client.get("server", "/", &[]).await;
                    if reply.status == StatusCode::OK {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                round += 1;
            }
            round
        }));
    }
    let mut sidecars = Vec::new();
    for round in 0..5u8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        pair.client
            .set_identity(ca.identity("productpage", 10 + round))
            .expect("identity");
        pair.server
            .set_identity(ca.identity("reviews", 20 + round))
            .expect("identity");
        let fresh = start_proxy(&client_yaml(pair.inbound(), MUTUAL, NO_SECURITY), 1);
        fresh
            .set_identity(ca.identity("details", 30 + round))
            .expect("identity");
        clients
            .lock()
            .expect("lock")
            .push(fresh.listener_addr("outbound").expect("outbound"));
        sidecars.push(fresh);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for load in loads {
        load.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "only {ok} requests ran");
    assert_eq!(failed, 0, "{failed} of {} requests failed during rotation", ok + failed);
    // Every new sidecar handshook with the server while it rotated, and the first sidecar's
    // connections lived through all of it.
    let handshakes = server_metric(&pair, "weft_listener_downstream_cx_mtls_total").await;
    assert!(handshakes >= 6.0, "{handshakes} handshakes");
    assert_eq!(
        server_metric(&pair, "weft_listener_downstream_cx_refused_total").await,
        0.0
    );
}

#[tokio::test]
async fn the_authz_filter_allows_by_peer_principal() {
    let ca = Ca::new("mesh");
    let policies = json!([{
        "name": "productpage-only",
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/productpage"]}}]}]
    }]);
    let filter = wasm_filter(
        "authz",
        "authz",
        &json!({ "policies": policies }).to_string(),
        "fail_closed",
    );
    let pair = Pair::start_with("{ mode: strict }", &filter, NO_SECURITY, MUTUAL).await;
    pair.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    let allowed = pair.call().await;
    assert_eq!(allowed.status, StatusCode::OK, "{allowed:?}");

    let other = start_proxy(&client_yaml(pair.inbound(), MUTUAL, NO_SECURITY), 1);
    other.set_identity(ca.identity("details", 3)).expect("identity");
    let denied = get(other.listener_addr("outbound").expect("outbound"), "server", "/").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{denied:?}");
    assert_eq!(denied.body, "RBAC: access denied");
    assert_eq!(pair.app.hits(), 1);
}

#[tokio::test]
async fn telemetry_labels_a_mutual_tls_request_with_the_peer_principal() {
    let ca = Ca::new("mesh");
    let filter = wasm_filter("telemetry", "telemetry", "{ reporter: destination }", "fail_closed");
    let pair = Pair::start_with("{ mode: strict }", &filter, NO_SECURITY, MUTUAL).await;
    pair.server.set_identity(ca.identity("reviews", 2)).expect("identity");
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    assert_eq!(pair.call().await.status, StatusCode::OK);
    let labels = [
        ("connection_security_policy", "mutual_tls"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/productpage"),
    ];
    crate::filter_telemetry::wait_for(&pair.server, "istio_requests_total", &labels, 1.0).await;
}

#[tokio::test]
async fn an_identity_loads_from_files() {
    let ca = Ca::new("mesh");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe("reviews").try_into().expect("uri"))];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0xab, 0xcd]));
    let cert = params.signed_by(&key, &ca.issuer).expect("sign");
    let dir = std::env::temp_dir().join(format!("weft-identity-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (chain, private, roots) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("roots.pem"));
    std::fs::write(&chain, cert.pem()).expect("write");
    std::fs::write(&private, key.serialize_pem()).expect("write");
    std::fs::write(&roots, &ca.pem).expect("write");
    let identity = weft_proxy::identity::from_files(&chain, &private, &roots).expect("loads");
    assert_eq!(identity.spiffe_id, spiffe("reviews"));
    assert_eq!(identity.serial, "abcd");
    assert!(identity.not_after > SystemTime::now());

    let pair = Pair::start("{ mode: strict }", MUTUAL).await;
    pair.server.set_identity(identity).expect("identity");
    pair.client
        .set_identity(ca.identity("productpage", 1))
        .expect("identity");
    assert_eq!(pair.call().await.status, StatusCode::OK);

    // A key that is not PKCS#8 PEM, and a chain file without a certificate, are errors.
    std::fs::write(&private, "not a key").expect("write");
    let error = weft_proxy::identity::from_files(&chain, &private, &roots).expect_err("bad key");
    assert!(error.to_string().contains("PKCS#8"), "{error}");
    std::fs::write(&chain, "").expect("write");
    assert!(weft_proxy::identity::from_files(&chain, &roots, &roots).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
