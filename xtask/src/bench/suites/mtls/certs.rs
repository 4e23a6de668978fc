//! The benchmark's mesh identities: a root CA and workload certificates made with rcgen the
//! way the controller's CA makes them (and `proxy-core/tests/all/mtls.rs` too): ECDSA P-256,
//! the workload's SPIFFE ID as the only subject alternative name (a URI), key usage digital
//! signature, extended key usage server and client auth. Written as PEM files for
//! `weft-proxy --cert-chain … --private-key … --trust-bundle …` and the handshake client.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

/// The mesh's trust domain.
const TRUST_DOMAIN: &str = "cluster.local";
/// How long the workload certificates are valid: longer than any run.
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// `spiffe://cluster.local/ns/default/sa/<sa>`.
pub(super) fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}")
}

/// A workload identity's files.
pub(super) struct Identity {
    /// The workload certificate, PEM.
    pub(super) chain: PathBuf,
    /// Its private key, PKCS#8 PEM.
    pub(super) key: PathBuf,
    /// The root the mesh trusts, PEM.
    pub(super) roots: PathBuf,
}

impl Identity {
    /// `--cert-chain FILE --private-key FILE --trust-bundle FILE`.
    pub(super) fn proxy_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--cert-chain".into(),
            self.chain.clone().into(),
            "--private-key".into(),
            self.key.clone().into(),
            "--trust-bundle".into(),
            self.roots.clone().into(),
        ]
    }
}

/// A root CA made for one run.
pub(super) struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The root certificate, written to `roots.pem` with every identity.
    pem: String,
}

impl Ca {
    /// A self-signed ECDSA P-256 root named `name`.
    pub(super) fn new(name: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let root = params.self_signed(&key).context("self-signing the CA")?;
        Ok(Self {
            issuer: rcgen::Issuer::new(params, key),
            pem: root.pem(),
        })
    }

    /// Issues the identity of service account `sa` and writes it into `dir` as `<sa>.pem`,
    /// `<sa>-key.pem` and `roots.pem`.
    pub(super) fn issue(&self, dir: &Path, sa: &str, serial: u8) -> anyhow::Result<Identity> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .with_context(|| format!("generating {sa}'s key"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(spiffe(sa)).with_context(|| format!("{sa}'s SPIFFE ID"))?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + VALIDITY).into();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x10, serial]));
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {sa}'s certificate"))?;
        Ok(Identity {
            chain: super::super::super::write(dir, &format!("{sa}.pem"), &cert.pem())?,
            key: super::super::super::write(dir, &format!("{sa}-key.pem"), &key.serialize_pem())?,
            roots: super::super::super::write(dir, "roots.pem", &self.pem)?,
        })
    }
}
