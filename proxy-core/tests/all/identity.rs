//! The sidecar's identity client against a CA served over real gRPC on 127.0.0.1: the key
//! stays in the process, the certificate is the CA's, rotation comes at half-life, a refused
//! credential is an error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use weft_api::pb;
use weft_proxy::identity::{IdentityConfig, IdentityError, renewal_time, request_certificate};

/// A CA that signs every CSR presented with the token `good` for a fixed SPIFFE ID, and
/// records the requests it saw.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    root_pem: String,
    seen: Arc<Mutex<Vec<pb::CreateCertificateRequest>>>,
}

#[tonic::async_trait]
impl pb::certificates_server::Certificates for TestCa {
    async fn create_certificate(
        &self,
        request: tonic::Request<pb::CreateCertificateRequest>,
    ) -> Result<tonic::Response<pb::CreateCertificateResponse>, tonic::Status> {
        let authorized = request.metadata().get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer good")
            && request.metadata().get("x-weft-workload").and_then(|v| v.to_str().ok()) == Some("default/reviews-v1");
        if !authorized {
            return Err(tonic::Status::unauthenticated("bad credential"));
        }
        let request = request.into_inner();
        self.seen.lock().expect("lock").push(request.clone());
        let mut csr = rcgen::CertificateSigningRequestParams::from_der(&rustls_pemfile_der(&request.csr_pem).into())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let uri = "spiffe://cluster.local/ns/default/sa/reviews".to_owned();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.clone().try_into().expect("uri"))];
        let now = SystemTime::now();
        params.not_before = now.into();
        let not_after = now + Duration::from_secs(request.validity_seconds);
        params.not_after = not_after.into();
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(pb::CreateCertificateResponse {
            cert_chain_pem: vec![cert.pem()],
            trust_bundle_pem: self.root_pem.clone(),
            spiffe_id: uri,
            serial: "01".into(),
            not_after_unix_ms: not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("time")
                .as_millis() as i64,
        }))
    }

    async fn list_certificates(
        &self,
        _request: tonic::Request<pb::ListCertificatesRequest>,
    ) -> Result<tonic::Response<pb::ListCertificatesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the sidecar never lists certificates"))
    }

    async fn revoke_certificate(
        &self,
        _request: tonic::Request<pb::RevokeCertificateRequest>,
    ) -> Result<tonic::Response<pb::RevokeCertificateResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the sidecar never revokes"))
    }
}

/// The DER inside a PEM block.
fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .expect("csr pem")
        .as_ref()
        .to_vec()
}

async fn serve_ca() -> (String, Arc<Mutex<Vec<pb::CreateCertificateRequest>>>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = params.self_signed(&key).expect("root");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ca = TestCa {
        issuer: rcgen::Issuer::new(params, key),
        root_pem: root.pem(),
        seen: seen.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::certificates_server::CertificatesServer::new(ca))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (address, seen)
}

fn config(address: &str, token: &str) -> IdentityConfig {
    let token_file = std::env::temp_dir().join(format!("weft-identity-token-{}-{token}", std::process::id()));
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    IdentityConfig {
        address: address.into(),
        credential: weft_proxy::identity::Credential {
            workload: "default/reviews-v1".into(),
            token_file,
        },
        validity: Duration::from_secs(3600),
        rotate_at: 0.5,
    }
}

#[tokio::test]
async fn the_key_stays_here_and_the_certificate_is_the_cas() {
    let (address, seen) = serve_ca().await;
    let (identity, sent) = request_certificate(&config(&address, "good")).await.expect("issued");
    assert_eq!(identity.spiffe_id, "spiffe://cluster.local/ns/default/sa/reviews");
    assert_eq!(identity.chain_pem.len(), 1);
    assert!(identity.trust_bundle_pem.contains("BEGIN CERTIFICATE"));
    // What the CA received is exactly what the client says it sent, and holds no key.
    let received = seen.lock().expect("lock").clone();
    assert_eq!(received, std::slice::from_ref(&sent));
    let wire = sent.encode_to_vec();
    let key = identity.key_der.as_slice();
    assert!(
        !wire.windows(key.len()).any(|w| w == key),
        "the private key went on the wire"
    );
    assert!(!String::from_utf8_lossy(&wire).contains("PRIVATE KEY"));
    // The certificate certifies our key: its public key is the key pair's.
    let pair = rcgen::KeyPair::try_from(key).expect("our key");
    let cert_der = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(identity.chain_pem[0].as_bytes()).expect("cert")
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("parse");
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&pair)
    );

    // A second request uses a fresh key.
    let (again, _) = request_certificate(&config(&address, "good")).await.expect("issued");
    assert_ne!(again.key_der, identity.key_der);
}

#[tokio::test]
async fn a_refused_credential_is_an_error() {
    let (address, seen) = serve_ca().await;
    let error = request_certificate(&config(&address, "bad"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, IdentityError::Refused(status) if status.code() == tonic::Code::Unauthenticated),
        "{error}"
    );
    assert!(seen.lock().expect("lock").is_empty());
    let error = request_certificate(&config("http://127.0.0.1:1", "good"))
        .await
        .expect_err("unreachable");
    assert!(matches!(error, IdentityError::Connect { .. }), "{error}");
}

#[test]
fn renewal_comes_at_the_configured_fraction_of_the_lifetime() {
    let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(renewal_time(issued, issued + day, 0.5), issued + day / 2);
    assert_eq!(renewal_time(issued, issued + day, 0.8), issued + day.mul_f64(0.8));
    // Out-of-range fractions are clamped so renewal is neither immediate nor at expiry.
    assert_eq!(renewal_time(issued, issued + day, 2.0), issued + day.mul_f64(0.95));
}
