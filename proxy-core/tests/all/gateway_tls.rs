//! TLS termination on a gateway listener with its own certificates (a Gateway's `tls.mode`
//! SIMPLE and MUTUAL): the certificate is chosen by SNI (exact and wildcard names, the first
//! as default), plaintext is refused, MUTUAL requires a client certificate from its CA, the
//! application sees `x-forwarded-proto: https`, and a bad certificate in a snapshot is refused
//! while the old one keeps serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::support::*;

/// A CA and certificates it signs for DNS names.
pub(crate) struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) pem: String,
}

impl Ca {
    pub(crate) fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("root");
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem: root.pem(),
        }
    }

    /// (certificate PEM, key PEM) for `names`.
    pub(crate) fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

pub(crate) fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("json")
}

/// A gateway snapshot: listener `gw` terminating TLS with `tls` in front of `app`.
fn gateway_yaml(app: SocketAddr, tls: &str) -> String {
    format!(
        r#"
version: "gw"
listeners:
  - name: gw
    address: 127.0.0.1:0
    kind: gateway
    route_table: rt
    tls: {tls}
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
"#
    )
}

/// Certificates for `bookinfo.example.com` (first, the default) and `*.example.org`.
fn two_certificates(ca: &Ca) -> String {
    let (a_cert, a_key) = ca.leaf(&["bookinfo.example.com"]);
    let (b_cert, b_key) = ca.leaf(&["shop.example.org"]);
    format!(
        "[{{ cert_chain: {}, private_key: {}, server_names: [bookinfo.example.com] }}, \
         {{ cert_chain: {}, private_key: {}, server_names: [\"*.example.org\"] }}]",
        yaml_string(&a_cert),
        yaml_string(&a_key),
        yaml_string(&b_cert),
        yaml_string(&b_key)
    )
}

/// A TLS client trusting `roots`, optionally with a client certificate.
fn client_config(roots: &str, client: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots.as_bytes()) {
        store.add(cert.expect("pem")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// GETs `/` over TLS with SNI `name`; the reply, or the error as text.
async fn get_tls(addr: SocketAddr, name: &str, config: Arc<rustls::ClientConfig>) -> Result<Reply, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get("/")
        .header("host", name)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[tokio::test]
async fn simple_tls_picks_the_certificate_by_sni_and_refuses_plaintext() {
    let ca = Ca::new();
    let app = echo("app").await;
    let tls = format!("{{ mode: simple, certificates: {} }}", two_certificates(&ca));
    let proxy = start_proxy(&gateway_yaml(app.addr, &tls), 1);
    let gw = proxy.listener_addr("gw").expect("gw");
    let config = client_config(&ca.pem, None);

    // Each name verifies against the certificate made for it (the client checks the name).
    let reply = get_tls(gw, "bookinfo.example.com", config.clone())
        .await
        .expect("bookinfo");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("x-forwarded-proto: https"), "{}", reply.body);
    let reply = get_tls(gw, "shop.example.org", config.clone()).await.expect("wildcard");
    assert_eq!(reply.status, StatusCode::OK);
    // An unknown name gets the first certificate, which does not name it.
    let error = get_tls(gw, "other.example.net", config)
        .await
        .expect_err("default cert");
    assert!(error.contains("certificate"), "{error}");

    // Plaintext gets a TLS alert at most, never an HTTP answer.
    let answer = raw(gw, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", Duration::from_secs(2)).await;
    assert!(!answer.contains("HTTP/"), "{answer:?}");
    assert_eq!(app.hits(), 2);
    assert_eq!(
        metric(&proxy, "weft_listener_downstream_cx_tls_total{listener=\"gw\"}").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_its_ca() {
    let (server_ca, client_ca, stranger) = (Ca::new(), Ca::new(), Ca::new());
    let app = echo("app").await;
    let tls = format!(
        "{{ mode: mutual, certificates: {}, client_ca: {} }}",
        two_certificates(&server_ca),
        yaml_string(&client_ca.pem)
    );
    let proxy = start_proxy(&gateway_yaml(app.addr, &tls), 1);
    let gw = proxy.listener_addr("gw").expect("gw");

    let trusted = client_config(&server_ca.pem, Some(client_ca.leaf(&["client.example.com"])));
    let reply = get_tls(gw, "bookinfo.example.com", trusted).await.expect("mutual");
    assert_eq!(reply.status, StatusCode::OK);

    let anonymous = client_config(&server_ca.pem, None);
    assert!(get_tls(gw, "bookinfo.example.com", anonymous).await.is_err());
    let untrusted = client_config(&server_ca.pem, Some(stranger.leaf(&["client.example.com"])));
    assert!(get_tls(gw, "bookinfo.example.com", untrusted).await.is_err());
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn a_bad_certificate_is_refused_and_the_old_one_keeps_serving() {
    let ca = Ca::new();
    let app = echo("app").await;
    let good = format!("{{ certificates: {} }}", two_certificates(&ca));
    let proxy = start_proxy(&gateway_yaml(app.addr, &good), 1);
    let gw = proxy.listener_addr("gw").expect("gw");

    let (cert, _) = ca.leaf(&["bookinfo.example.com"]);
    let (_, other_key) = ca.leaf(&["bookinfo.example.com"]);
    for bad in [
        format!(
            "{{ certificates: [{{ cert_chain: {}, private_key: {} }}] }}",
            yaml_string(&cert),
            yaml_string(&other_key)
        ),
        format!(
            "{{ certificates: [{{ cert_chain: \"nope\", private_key: {} }}] }}",
            yaml_string(&other_key)
        ),
    ] {
        let snapshot = weft_api::Snapshot::from_yaml(&gateway_yaml(app.addr, &bad)).expect("parses");
        let error = proxy.update(snapshot).expect_err("refused");
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert!(text.contains("tls.certificates[0]"), "{text}");
    }
    // Mutual without a CA is refused by validation.
    let missing_ca = gateway_yaml(
        app.addr,
        &format!("{{ mode: mutual, certificates: {} }}", two_certificates(&ca)),
    );
    let error = weft_api::Snapshot::from_yaml(&missing_ca).expect_err("invalid");
    assert!(error.to_string().contains("client_ca"), "{error}");

    let reply = get_tls(gw, "bookinfo.example.com", client_config(&ca.pem, None))
        .await
        .expect("still serving");
    assert_eq!(reply.status, StatusCode::OK);
}
