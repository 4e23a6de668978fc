//! TLS passthrough listeners against real TLS servers: a client's TLS session goes through the
//! proxy to the server its ClientHello names (the client verifies that server's own
//! certificate, which the proxy never holds), exact names before wildcards before `*`, by
//! weight between destinations; a connection with no route, or that is not TLS, is closed
//! with nothing sent; a new snapshot reroutes new connections while a relayed one carries on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::egress_tls::tls_server_answering;
use crate::gateway_tls::Ca;
use crate::support::*;

/// A TLS client trusting `ca`, verifying the server as `name` (sent as SNI when it is a DNS
/// name; an IP address sends none).
struct Client {
    connector: tokio_rustls::TlsConnector,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

impl Client {
    fn new(ca: &Ca) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("ca"))
            .expect("root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// A TLS session through `proxy` as `name`, with HTTP/1.1 on it.
    async fn connect(&self, proxy: SocketAddr, name: &str) -> std::io::Result<Sender> {
        let tcp = tokio::net::TcpStream::connect(proxy).await?;
        let server_name = ServerName::try_from(name.to_owned()).expect("server name");
        let tls = tokio::time::timeout(Duration::from_secs(5), self.connector.connect(server_name, tcp))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))??;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// The body of one `GET /` over a new TLS session as `name`.
    async fn label(&self, proxy: SocketAddr, name: &str) -> std::io::Result<String> {
        let mut sender = self.connect(proxy, name).await?;
        request(&mut sender, name).await
    }
}

async fn request(sender: &mut Sender, host: &str) -> std::io::Result<String> {
    let request = Request::get("/")
        .header("host", host)
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.map_err(std::io::Error::other)?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// A gateway snapshot: listener `tls` passing TLS through by `routes`, to clusters `a` and `b`.
fn passthrough_yaml(version: &str, a: SocketAddr, b: SocketAddr, routes: &str) -> String {
    format!(
        r#"
version: "{version}"
listeners:
  - name: tls
    address: 127.0.0.1:0
    kind: gateway
    protocol: tls_passthrough
    sni_routes:
{routes}
clusters:
  - name: a
    endpoints: [{{ address: "{a}" }}]
  - name: b
    endpoints: [{{ address: "{b}" }}]
"#
    )
}

#[tokio::test]
async fn connections_reach_the_server_their_client_hello_names() {
    let ca = Ca::new();
    let a = tls_server_answering(&ca.leaf(&["a.example.com", "w.example.com", "127.0.0.1"]), None, |_| {
        "a".to_owned()
    })
    .await;
    let b = tls_server_answering(
        &ca.leaf(&["b.example.com", "x.b.example.com", "w.example.com"]),
        None,
        |_| "b".to_owned(),
    )
    .await;
    let routes = r#"      - { server_names: ["a.example.com"], destinations: [{ cluster: a }] }
      - { server_names: ["*.example.com"], destinations: [{ cluster: a }] }
      - { server_names: ["*.b.example.com", "B.example.com"], destinations: [{ cluster: b }] }
      - { server_names: ["w.example.com"], destinations: [{ cluster: a, weight: 0 }, { cluster: b, weight: 1 }] }"#;
    let proxy = start_proxy(&passthrough_yaml("1", a, b, routes), 1);
    let tls = proxy.listener_addr("tls").expect("tls");
    let client = Client::new(&ca);

    // Exact names, case-insensitively; the longer wildcard wins over the shorter one.
    assert_eq!(client.label(tls, "a.example.com").await.expect("a"), "a");
    assert_eq!(client.label(tls, "b.example.com").await.expect("b"), "b");
    assert_eq!(client.label(tls, "x.b.example.com").await.expect("x.b"), "b");
    // A destination of weight 0 gets nothing.
    for _ in 0..10 {
        assert_eq!(client.label(tls, "w.example.com").await.expect("w"), "b");
    }
    // `*.example.com` sends x.example.com to a, whose certificate does not name it: the
    // client, not the proxy, refuses the server.
    let wrong = client.label(tls, "x.example.com").await.expect_err("a's certificate");
    assert!(wrong.to_string().contains("certificate"), "{wrong}");
    // No route (and no `*` route) for another domain, nor for a hello without a name: the
    // connection is closed.
    assert!(client.label(tls, "a.example.org").await.is_err());
    assert!(client.label(tls, "127.0.0.1").await.is_err());
    // Not TLS: closed at once, with nothing sent back.
    let started = std::time::Instant::now();
    let reply = raw(
        tls,
        b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply, "");
    assert!(started.elapsed() < Duration::from_secs(2), "closed, not timed out");

    assert_eq!(
        metric(
            &proxy,
            "weft_listener_downstream_cx_passthrough_total{listener=\"tls\"}"
        )
        .await,
        Some(14.0)
    );
    assert_eq!(
        metric(&proxy, "weft_listener_downstream_cx_refused_total{listener=\"tls\"}").await,
        Some(3.0)
    );
    assert_eq!(
        metric(&proxy, "weft_cluster_upstream_cx_total{cluster=\"b\"}").await,
        Some(12.0)
    );
    proxy.shutdown();
}

#[tokio::test]
async fn a_new_snapshot_reroutes_new_connections_while_relayed_ones_carry_on() {
    let ca = Ca::new();
    let a = tls_server_answering(&ca.leaf(&["api.example.com", "127.0.0.1"]), None, |_| "a".to_owned()).await;
    let b = tls_server_answering(&ca.leaf(&["api.example.com", "127.0.0.1"]), None, |_| "b".to_owned()).await;
    let to = |cluster: &str| format!(r#"      - {{ server_names: ["*"], destinations: [{{ cluster: {cluster} }}] }}"#);
    let proxy = start_proxy(&passthrough_yaml("1", a, b, &to("a")), 1);
    let tls = proxy.listener_addr("tls").expect("tls");
    let client = Client::new(&ca);

    // `*` takes any name, and a hello without one.
    let mut relayed = client.connect(tls, "api.example.com").await.expect("connect");
    assert_eq!(request(&mut relayed, "api.example.com").await.expect("a"), "a");
    assert_eq!(client.label(tls, "127.0.0.1").await.expect("no SNI"), "a");

    proxy
        .update(weft_api::Snapshot::from_yaml(&passthrough_yaml("2", a, b, &to("b"))).expect("yaml"))
        .expect("applied");
    assert_eq!(client.label(tls, "api.example.com").await.expect("b"), "b");
    // The session relayed before the change still reaches a.
    assert_eq!(request(&mut relayed, "api.example.com").await.expect("still a"), "a");

    // A snapshot routing to a cluster it does not have is refused; b keeps serving.
    let bad = passthrough_yaml("3", a, b, &to("c"));
    let error = weft_api::Snapshot::from_yaml(&bad).expect_err("invalid");
    assert!(
        error
            .to_string()
            .contains("listeners[0].sni_routes[0].destinations[0].cluster: no cluster named \"c\""),
        "{error}"
    );
    assert_eq!(client.label(tls, "api.example.com").await.expect("b"), "b");
    // Closed by the client, the relayed connection ends (shutdown then has nothing to drain).
    drop(relayed);
    let active = "weft_listener_downstream_cx_active{listener=\"tls\"}";
    let closed = eventually(Duration::from_secs(5), || async {
        metric(&proxy, active).await == Some(0.0)
    })
    .await;
    assert!(closed, "the relayed connection outlived its client");
    proxy.shutdown();
}
