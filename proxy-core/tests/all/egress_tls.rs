//! TLS origination to a service outside the mesh (a DestinationRule's `tls.mode` SIMPLE and
//! MUTUAL) against a real TLS server: the server is verified against the cluster's roots and
//! by the SNI name, or by the `subject_alt_names` when listed; with `mutual` the proxy presents
//! the client certificate it reads from files, re-reads them with every snapshot, and refuses a
//! snapshot whose files cannot be read, or whose key is not the certificate's, while the old
//! one keeps serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest as _;

use crate::gateway_tls::{Ca, yaml_string};
use crate::support::*;

/// A TLS server presenting `cert` (requiring a client certificate from `client_ca` when
/// given) that answers every request with the SHA-256 of the client's certificate, or `none`.
async fn tls_server(cert: &(String, String), client_ca: Option<&str>) -> SocketAddr {
    tls_server_answering(cert, client_ca, |client| {
        client.map_or_else(|| "none".to_owned(), |c| hex(c.as_ref()))
    })
    .await
}

/// A TLS server presenting `cert` (requiring a client certificate from `client_ca` when
/// given) that answers every HTTP/1.1 request with `answer(the client's certificate)`.
pub(crate) async fn tls_server_answering(
    cert: &(String, String),
    client_ca: Option<&str>,
    answer: fn(Option<&CertificateDer<'_>>) -> String,
) -> SocketAddr {
    let chain = vec![CertificateDer::from_pem_slice(cert.0.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("ca"))
                .expect("root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let client = answer(tls.get_ref().1.peer_certificates().and_then(|c| c.first()));
                let service = hyper::service::service_fn(move |_| {
                    let client = client.clone();
                    async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(client)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// Lowercase hex SHA-256.
fn hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a PEM certificate's DER, as the server reports it.
fn fingerprint(pem: &str) -> String {
    hex(CertificateDer::from_pem_slice(pem.as_bytes()).expect("cert").as_ref())
}

/// A snapshot of version `version`: listener `main` forwarding everything to `server` with
/// `tls`.
fn egress_yaml(version: &str, server: SocketAddr, tls: &str) -> String {
    single_cluster(&format!("{}    tls: {tls}\n", endpoints(&[server])), "").replacen(
        "version: \"test\"",
        &format!("version: \"{version}\""),
        1,
    )
}

#[tokio::test]
async fn simple_tls_verifies_the_server_by_its_name_or_by_the_listed_names() {
    let ca = Ca::new();
    let other_ca = Ca::new();
    let server = tls_server(&ca.leaf(&["api.example.com"]), None).await;
    let roots = yaml_string(&ca.pem);
    let cases = [
        // The SNI name, verified against the cluster's roots.
        (
            format!("{{ mode: simple, sni: api.example.com, ca_certificates: {roots} }}"),
            StatusCode::OK,
        ),
        // Another CA's roots do not vouch for it.
        (
            format!(
                "{{ mode: simple, sni: api.example.com, ca_certificates: {} }}",
                yaml_string(&other_ca.pem)
            ),
            StatusCode::BAD_GATEWAY,
        ),
        // Listed names replace the SNI name: none of them is the certificate's.
        (
            format!(
                "{{ mode: simple, sni: api.example.com, subject_alt_names: [other.example.com], ca_certificates: {roots} }}"
            ),
            StatusCode::BAD_GATEWAY,
        ),
        // One of them is, whatever the SNI.
        (
            format!(
                "{{ mode: simple, sni: front.example.com, subject_alt_names: [nope.example.com, api.example.com], \
                 ca_certificates: {roots} }}"
            ),
            StatusCode::OK,
        ),
        // Without listed names, an SNI the certificate does not carry fails.
        (
            format!("{{ mode: simple, sni: front.example.com, ca_certificates: {roots} }}"),
            StatusCode::BAD_GATEWAY,
        ),
    ];
    for (tls, status) in cases {
        let proxy = start_proxy(&egress_yaml("1", server, &tls), 1);
        let reply = get(proxy.listener_addr("main").expect("main"), "ext", "/").await;
        assert_eq!(reply.status, status, "{tls}: {reply:?}");
        if status == StatusCode::OK {
            assert_eq!(reply.body, "none", "one-way TLS presents no client certificate");
        }
        proxy.shutdown();
    }
}

/// Writes a client certificate and key into `dir`; their paths.
fn write_client(dir: &Path, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (dir.join("client.pem"), dir.join("client-key.pem"));
    // Written aside and renamed, as a secret volume updates its files.
    for (path, text) in [(&cert_path, cert), (&key_path, key)] {
        let aside = path.with_extension("new");
        std::fs::write(&aside, text).expect("write");
        std::fs::rename(&aside, path).expect("rename");
    }
    (cert_path, key_path)
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_from_its_files() {
    let ca = Ca::new();
    let client_ca = Ca::new();
    let server = tls_server(&ca.leaf(&["api.example.com"]), Some(&client_ca.pem)).await;
    let dir = std::env::temp_dir().join(format!("weft-egress-mutual-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let first = client_ca.leaf(&["client.example.com"]);
    let (cert_path, key_path) = write_client(&dir, &first);
    let mutual = |cert: &Path, key: &Path| {
        format!(
            "{{ mode: mutual, sni: api.example.com, ca_certificates: {}, client_certificate: {}, private_key: {} }}",
            yaml_string(&ca.pem),
            yaml_string(&cert.display().to_string()),
            yaml_string(&key.display().to_string())
        )
    };

    // The server wants a client certificate: one-way TLS is refused.
    let simple = format!(
        "{{ mode: simple, sni: api.example.com, ca_certificates: {} }}",
        yaml_string(&ca.pem)
    );
    let proxy = start_proxy(&egress_yaml("1", server, &simple), 1);
    let main = proxy.listener_addr("main").expect("main");
    assert_eq!(get(main, "ext", "/").await.status, StatusCode::BAD_GATEWAY);

    // With the files, the server sees the certificate.
    proxy
        .update(weft_api::Snapshot::from_yaml(&egress_yaml("2", server, &mutual(&cert_path, &key_path))).expect("yaml"))
        .expect("applied");
    let reply = get(main, "ext", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, fingerprint(&first.0));

    // A snapshot naming a file that cannot be read is refused, with the path; the old
    // configuration keeps serving.
    let missing = dir.join("missing-key.pem");
    let error = proxy
        .update(weft_api::Snapshot::from_yaml(&egress_yaml("3", server, &mutual(&cert_path, &missing))).expect("yaml"))
        .expect_err("refused");
    let text = format!("{:#}", anyhow::Error::from(error));
    assert!(
        text.contains("missing-key.pem") && text.contains("tls.private_key"),
        "{text}"
    );
    assert_eq!(proxy.version(), "2");
    assert_eq!(get(main, "ext", "/").await.body, fingerprint(&first.0));

    // A key that is not the certificate's is refused too.
    write_client(&dir, &(first.0.clone(), client_ca.leaf(&["client.example.com"]).1));
    let error = proxy
        .update(weft_api::Snapshot::from_yaml(&egress_yaml("3", server, &mutual(&cert_path, &key_path))).expect("yaml"))
        .expect_err("refused");
    let text = format!("{:#}", anyhow::Error::from(error));
    assert!(text.contains("tls.client_certificate"), "{text}");
    assert_eq!(get(main, "ext", "/").await.body, fingerprint(&first.0));

    // New files apply with the next snapshot, on new connections.
    let second = client_ca.leaf(&["client.example.com"]);
    write_client(&dir, &second);
    proxy
        .update(weft_api::Snapshot::from_yaml(&egress_yaml("4", server, &mutual(&cert_path, &key_path))).expect("yaml"))
        .expect("applied");
    let reply = get(main, "ext", "/").await;
    assert_eq!(reply.body, fingerprint(&second.0), "{reply:?}");

    // Rotated files apply without a snapshot: the proxy watches them.
    let third = client_ca.leaf(&["client.example.com"]);
    write_client(&dir, &third);
    let rotated = eventually(Duration::from_secs(10), || async {
        get(main, "ext", "/").await.body == fingerprint(&third.0)
    })
    .await;
    assert!(rotated, "the rotated certificate was never presented");
    assert_eq!(proxy.version(), "4", "no snapshot came");
    // A rotation that leaves a key that is not the certificate's is not applied: the last
    // good certificate stays.
    let refused = "weft_client_certificate_reloads_total{result=\"refused\"}";
    let before = metric(&proxy, refused).await.expect("the reload counter");
    write_client(&dir, &(third.0.clone(), client_ca.leaf(&["client.example.com"]).1));
    let seen = eventually(Duration::from_secs(10), || async {
        metric(&proxy, refused).await.is_some_and(|n| n > before)
    })
    .await;
    assert!(seen, "the mismatched files were never looked at");
    assert_eq!(get(main, "ext", "/").await.body, fingerprint(&third.0));

    // A certificate from a CA the server does not trust is refused by the server.
    write_client(&dir, &Ca::new().leaf(&["client.example.com"]));
    proxy
        .update(weft_api::Snapshot::from_yaml(&egress_yaml("5", server, &mutual(&cert_path, &key_path))).expect("yaml"))
        .expect("applied");
    assert_eq!(get(main, "ext", "/").await.status, StatusCode::BAD_GATEWAY);
    proxy.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
