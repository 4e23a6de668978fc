//! The Certificates service against a real controller on 127.0.0.1: a sidecar with its
//! bootstrap token gets a certificate for its workload's SPIFFE ID, without its key ever
//! leaving it; bad credentials and unknown workloads are refused; the root survives a restart.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::Code;
use weft_api::pb;
use weft_controller::Controller;

mod support;
use support::{Sidecar, channel, setup, start};

/// A CSR from a fresh key; the key stays here.
fn csr() -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = CertificateParams::new(vec!["anything.example".to_owned()]).expect("params");
    let pem = params.serialize_request(&key).expect("csr").pem().expect("pem");
    (key, pem)
}

async fn request_certificate(
    controller: &Controller,
    workload: &str,
    token: &str,
    request: pb::CreateCertificateRequest,
) -> Result<pb::CreateCertificateResponse, tonic::Status> {
    let mut call = tonic::Request::new(request);
    call.metadata_mut()
        .insert("x-weft-workload", workload.parse().expect("ascii"));
    call.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    pb::certificates_client::CertificatesClient::new(channel(controller).await)
        .create_certificate(call)
        .await
        .map(tonic::Response::into_inner)
}

/// The workload's bootstrap token, once the controller has written it (a task does so after
/// each compile, so poll briefly without blocking the runtime).
async fn token(dir: &std::path::Path, workload: &str) -> String {
    let path = dir.join(format!("data/bootstrap/default/{workload}.token"));
    for _ in 0..100 {
        if let Ok(token) = std::fs::read_to_string(&path) {
            return token;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no bootstrap token at {}", path.display());
}

fn verify(chain: &[String], bundle: &str) {
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(root.expect("root pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .expect("verifier");
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).expect("cert pem"))
        .collect();
    verifier
        .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
        .expect("chain verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_gets_its_spiffe_certificate_and_keeps_its_key() {
    let dir = setup("certs");
    let controller = start(&dir).await;
    let token = token(&dir, "productpage").await;
    let (key, csr_pem) = csr();
    let request = pb::CreateCertificateRequest {
        csr_pem,
        validity_seconds: 3600,
    };
    // What goes on the wire: the CSR, never the private key.
    let wire = request.encode_to_vec();
    let key_der = key.serialize_der();
    assert!(
        !wire.windows(key_der.len()).any(|w| w == key_der),
        "private key bytes on the wire"
    );
    assert!(!String::from_utf8_lossy(&wire).contains("PRIVATE KEY"));

    let response = request_certificate(&controller, "default/productpage", &token, request)
        .await
        .expect("issued");
    assert_eq!(
        response.spiffe_id,
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    );
    assert_eq!(response.cert_chain_pem.len(), 1, "signed by the root directly");
    verify(&response.cert_chain_pem, &response.trust_bundle_pem);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .expect("time")
        .as_millis() as i64;
    let lifetime = response.not_after_unix_ms - now_ms;
    assert!(
        (3_500_000..=3_600_000).contains(&lifetime),
        "the requested hour: {lifetime} ms"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_unknown_workloads_are_refused() {
    let dir = setup("certs-refused");
    let controller = start(&dir).await;
    let productpage = token(&dir, "productpage").await;
    let request = || pb::CreateCertificateRequest {
        csr_pem: csr().1,
        validity_seconds: 0,
    };
    // Another workload's token.
    let reviews = token(&dir, "reviews-v1").await;
    let status = request_certificate(&controller, "default/productpage", &reviews, request())
        .await
        .expect_err("wrong token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    // No credential at all.
    let status = pb::certificates_client::CertificatesClient::new(channel(&controller).await)
        .create_certificate(request())
        .await
        .expect_err("anonymous");
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    // A valid token for a workload the intent does not (or no longer) know.
    let secret = weft_controller::certs::Bootstrap::load_or_create(&dir.join("data/ca")).expect("secret");
    let ghost = secret.token("default", "ghost");
    let status = request_certificate(&controller, "default/ghost", &ghost, request())
        .await
        .expect_err("unknown workload");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    // A CSR that is not one.
    let status = request_certificate(
        &controller,
        "default/productpage",
        &productpage,
        pb::CreateCertificateRequest {
            csr_pem: "garbage".into(),
            validity_seconds: 0,
        },
    )
    .await
    .expect_err("bad csr");
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The config stream checks a credential it carries as the Certificates service does: a wrong
/// token is refused, the right one (or none) opens the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_stream_with_a_bad_credential_is_refused() {
    let dir = setup("certs-stream");
    let controller = start(&dir).await;
    let open = |token: Option<String>| {
        let controller = &controller;
        async move {
            let (tx, requests) = tokio::sync::mpsc::channel(4);
            tx.send(pb::DiscoveryRequest {
                node: Some(pb::Node {
                    id: "productpage".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("hello");
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(requests));
            if let Some(token) = token {
                let metadata = request.metadata_mut();
                metadata.insert("x-weft-workload", "default/productpage".parse().expect("ascii"));
                metadata.insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
            }
            let opened = pb::discovery_client::DiscoveryClient::new(channel(controller).await)
                .stream_snapshots(request)
                .await;
            match opened {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
                    first.expect("in time").map(|r| r.is_some())
                }
                Err(status) => Err(status),
            }
        }
    };
    let reviews = token(&dir, "reviews-v1").await;
    let status = open(Some(reviews)).await.expect_err("another workload's token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    let productpage = token(&dir, "productpage").await;
    assert!(open(Some(productpage)).await.expect("its own token"), "a snapshot");
    assert!(open(None).await.expect("no credential"), "a snapshot");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_survives_a_controller_restart() {
    let dir = setup("certs-restart");
    let first = {
        let controller = start(&dir).await;
        let token = token(&dir, "productpage").await;
        let request = pb::CreateCertificateRequest {
            csr_pem: csr().1,
            validity_seconds: 0,
        };
        let response = request_certificate(&controller, "default/productpage", &token, request)
            .await
            .expect("issued");
        response.trust_bundle_pem
    };
    let controller = start(&dir).await;
    let token = token(&dir, "productpage").await;
    let response = request_certificate(
        &controller,
        "default/productpage",
        &token,
        pb::CreateCertificateRequest {
            csr_pem: csr().1,
            validity_seconds: 0,
        },
    )
    .await
    .expect("issued after restart");
    assert_eq!(response.trust_bundle_pem, first, "same root");
    verify(&response.cert_chain_pem, &first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_listed_pushed_to_every_sidecar_and_survive_a_restart() {
    let dir = setup("certs-revoke");
    let serial = {
        let controller = start(&dir).await;
        let mut sidecar = Sidecar::open(&controller, "reviews-v1", &[("app", "reviews")], "").await;
        let first = sidecar.next(Duration::from_secs(5)).await.expect("first snapshot");
        let security = support::decoded(&first).security.expect("security");
        assert_eq!(security.trust_bundle.len(), 1, "the CA's root");
        assert!(security.revoked_serials.is_empty());

        let token = token(&dir, "productpage").await;
        let request = pb::CreateCertificateRequest {
            csr_pem: csr().1,
            validity_seconds: 0,
        };
        let issued = request_certificate(&controller, "default/productpage", &token, request)
            .await
            .expect("issued");
        let mut client = pb::certificates_client::CertificatesClient::new(channel(&controller).await);
        let ledger = client
            .list_certificates(pb::ListCertificatesRequest {})
            .await
            .expect("list")
            .into_inner();
        let listed = ledger
            .certificates
            .iter()
            .find(|c| c.serial == issued.serial)
            .expect("issued certificate listed");
        assert_eq!(listed.workload, "default/productpage");
        assert_eq!(listed.spiffe_id, issued.spiffe_id);
        assert!(!listed.revoked);

        // Revoking needs the operator's token, which the controller wrote to its data dir.
        let operator = std::fs::read_to_string(dir.join("data/operator.token")).expect("operator token");
        let as_operator = |request: pb::RevokeCertificateRequest| {
            let mut request = tonic::Request::new(request);
            let value = format!("Bearer {operator}").parse().expect("ascii");
            request.metadata_mut().insert("authorization", value);
            request
        };
        let without = pb::RevokeCertificateRequest {
            serial: issued.serial.clone(),
            ..Default::default()
        };
        let status = client.revoke_certificate(without.clone()).await.expect_err("no token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let mut with_a_workload_token = tonic::Request::new(without);
        let value = format!("Bearer {token}").parse().expect("ascii");
        with_a_workload_token.metadata_mut().insert("authorization", value);
        let status = client
            .revoke_certificate(with_a_workload_token)
            .await
            .expect_err("a workload's token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

        // Bad requests are refused and change nothing.
        for bad in [
            pb::RevokeCertificateRequest::default(),
            pb::RevokeCertificateRequest {
                serial: "not hex".into(),
                ..Default::default()
            },
            pb::RevokeCertificateRequest {
                spiffe_id: "productpage".into(),
                ..Default::default()
            },
        ] {
            let status = client.revoke_certificate(as_operator(bad)).await.expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
        assert!(
            sidecar.next(Duration::from_millis(300)).await.is_none(),
            "nothing changed"
        );

        let covered = client
            .revoke_certificate(as_operator(pb::RevokeCertificateRequest {
                serial: issued.serial.clone(),
                ..Default::default()
            }))
            .await
            .expect("revoke")
            .into_inner();
        assert_eq!(covered.certificates, 1);
        let pushed = sidecar.next(Duration::from_secs(5)).await.expect("pushed");
        let security = support::decoded(&pushed).security.expect("security");
        assert_eq!(security.revoked_serials, vec![issued.serial.clone()]);

        // Revoking the identity also stops the CA from issuing to it.
        client
            .revoke_certificate(as_operator(pb::RevokeCertificateRequest {
                spiffe_id: issued.spiffe_id.clone(),
                ..Default::default()
            }))
            .await
            .expect("revoke identity");
        let pushed = sidecar.next(Duration::from_secs(5)).await.expect("pushed");
        let security = support::decoded(&pushed).security.expect("security");
        assert_eq!(security.revoked_identities, vec![issued.spiffe_id.clone()]);
        let request = pb::CreateCertificateRequest {
            csr_pem: csr().1,
            validity_seconds: 0,
        };
        let refused = request_certificate(&controller, "default/productpage", &token, request)
            .await
            .expect_err("a revoked identity gets no certificate");
        assert_eq!(refused.code(), Code::PermissionDenied);
        issued.serial
    };
    let controller = start(&dir).await;
    let mut sidecar = Sidecar::open(&controller, "reviews-v1", &[("app", "reviews")], "").await;
    let first = sidecar.next(Duration::from_secs(5)).await.expect("first snapshot");
    let security = support::decoded(&first).security.expect("security");
    assert_eq!(security.revoked_serials, vec![serial]);
    assert_eq!(security.revoked_identities.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
