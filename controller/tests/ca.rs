//! The certificate authority: a persistent root, SPIFFE workload certificates that verify
//! against the trust bundle, CSRs that must prove key possession, intermediates.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use weft_controller::ca::{Authority, Identity};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-ca-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn identity(ns: &str, sa: &str) -> Identity {
    Identity {
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

/// A CSR from a fresh key, asking for names the CA must ignore.
fn csr() -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
    (key, csr)
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("pem certs")
}

/// Verifies `chain_pem` as a client certificate chain against `roots_pem` at `now`.
fn verify(chain_pem: &str, roots_pem: &str, now: SystemTime) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for root in certs(roots_pem) {
        roots.add(root).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .expect("verifier");
    let chain = certs(chain_pem);
    let now = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).expect("time"));
    verifier.verify_client_cert(&chain[0], &chain[1..], now).map(|_| ())
}

/// The subject alternative names of the first certificate of `pem`.
fn san_uris(pem: &str) -> Vec<String> {
    let der = certs(pem).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse issued certificate");
    let san = cert
        .subject_alternative_name()
        .expect("well-formed")
        .expect("has a SAN");
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => format!("uri:{uri}"),
            other => format!("other:{other:?}"),
        })
        .collect()
}

#[test]
fn the_root_is_generated_once_and_survives_restarts() {
    let dir = temp("root");
    let first = Authority::load_or_create(&dir, "cluster.local", DAY).expect("create");
    let again = Authority::load_or_create(&dir, "cluster.local", DAY).expect("reload");
    assert_eq!(first.trust_bundle(), again.trust_bundle());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.join("root-key.pem"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the root key is private");
    // Certificates signed after the restart chain to the same root.
    let (_, request) = csr();
    let issued = again
        .sign(&request, &identity("default", "reviews"), SystemTime::now())
        .expect("sign");
    verify(&issued.chain_pem, first.trust_bundle(), SystemTime::now()).expect("verifies against the original root");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workload_certificates_carry_only_the_authenticated_spiffe_id() {
    let dir = temp("sign");
    let ca = Authority::load_or_create(&dir, "cluster.local", DAY).expect("create");
    let (_, request) = csr();
    let now = SystemTime::now();
    let issued = ca
        .sign(&request, &identity("default", "bookinfo-reviews"), now)
        .expect("sign");
    assert_eq!(
        issued.spiffe_id,
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );
    assert_eq!(
        san_uris(&issued.chain_pem),
        ["uri:spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]
    );
    assert_eq!(issued.not_after, now + DAY);
    verify(&issued.chain_pem, ca.trust_bundle(), now).expect("valid now");
    assert!(
        verify(
            &issued.chain_pem,
            ca.trust_bundle(),
            now + DAY + Duration::from_secs(120)
        )
        .is_err(),
        "expired after 24 h"
    );

    let (_, other) = csr();
    let second = ca
        .sign(&other, &identity("default", "bookinfo-reviews"), now)
        .expect("sign");
    assert_ne!(issued.serial, second.serial, "serials are unique");

    // Another CA's bundle does not trust it.
    let stranger = Authority::load_or_create(&temp("stranger"), "cluster.local", DAY).expect("create");
    assert!(verify(&issued.chain_pem, stranger.trust_bundle(), now).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_csr_must_prove_its_key_and_identities_must_be_well_formed() {
    let dir = temp("bad");
    let ca = Authority::load_or_create(&dir, "cluster.local", DAY).expect("create");
    let (_, request) = csr();
    // Flip a byte inside the base64 body: the signature no longer verifies (or it no longer parses).
    let mut lines: Vec<String> = request.lines().map(str::to_owned).collect();
    let middle = lines.len() / 2;
    let flipped: String = lines[middle]
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 10 { if c == 'A' { 'B' } else { 'A' } } else { c })
        .collect();
    lines[middle] = flipped;
    let tampered = lines.join("\n");
    assert!(
        ca.sign(&tampered, &identity("default", "x"), SystemTime::now())
            .is_err()
    );
    assert!(
        ca.sign("not a csr", &identity("default", "x"), SystemTime::now())
            .is_err()
    );
    assert!(
        ca.sign(&request, &identity("default", "a/b"), SystemTime::now())
            .is_err()
    );
    assert!(ca.sign(&request, &identity("", "x"), SystemTime::now()).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_operator_intermediate_signs_and_is_sent_in_the_chain() {
    // The operator's root and an intermediate under it.
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut root_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).expect("root");
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let mid_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut mid_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    mid_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    mid_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator intermediate");
    let mid = mid_params.signed_by(&mid_key, &root_issuer).expect("intermediate");

    let ca = Authority::from_pem(
        &mid.pem(),
        &mid_key.serialize_pem(),
        "",
        &root.pem(),
        "example.org",
        DAY,
    )
    .expect("intermediate CA");
    assert_eq!(ca.trust_bundle(), root.pem());
    let (_, request) = csr();
    let issued = ca
        .sign(&request, &identity("prod", "api"), SystemTime::now())
        .expect("sign");
    assert_eq!(issued.spiffe_id, "spiffe://example.org/ns/prod/sa/api");
    assert_eq!(certs(&issued.chain_pem).len(), 2, "leaf + intermediate");
    verify(&issued.chain_pem, &root.pem(), SystemTime::now()).expect("chains to the operator's root");
}
