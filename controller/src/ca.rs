//! The mesh's certificate authority: a root generated at first start and kept on disk (or an
//! operator-supplied intermediate), signing short-lived workload certificates whose only
//! identity is a SPIFFE URI SAN, `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
//!
//! The CA signs a CSR's public key only: the identity comes from who the caller was
//! authenticated as, never from what the CSR asks for, and the private key never leaves the
//! workload.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Why the CA could not start or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA's files could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or CSR could not be parsed, built or signed.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
    /// An identity that cannot be put into a SPIFFE ID.
    #[error("invalid identity {0:?}: namespace and service account must be non-empty and contain no '/'")]
    Identity(String),
}

/// A workload identity, as the controller authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The workload's namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
}

impl Identity {
    /// The SPIFFE ID of this identity in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    fn check(&self) -> Result<(), CaError> {
        let ok = |s: &str| !s.is_empty() && !s.contains('/') && s.is_ascii();
        if ok(&self.namespace) && ok(&self.service_account) {
            Ok(())
        } else {
            Err(CaError::Identity(format!(
                "{}/{}",
                self.namespace, self.service_account
            )))
        }
    }
}

/// A certificate issued to a workload.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The workload certificate followed by the chain up to (not including) the root, PEM.
    pub chain_pem: String,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// The SPIFFE ID it carries.
    pub spiffe_id: String,
    /// When it expires.
    pub not_after: SystemTime,
}

/// The certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the signing certificate (the root, or the operator's intermediate).
    signing_pem: String,
    /// Certificates between the signing certificate and the root (PEM; empty for a root).
    chain_pem: String,
    /// The trust bundle: root certificates sidecars trust (PEM).
    roots_pem: String,
    trust_domain: String,
    workload_ttl: Duration,
}

/// File names of a CA kept on disk.
const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";

impl Authority {
    /// Loads the root kept in `dir`, or generates one (ECDSA P-256, 10 years) and keeps it
    /// there (the key readable by the owner only). The same root survives restarts.
    ///
    /// # Errors
    /// The files cannot be read or written, or do not hold a usable CA.
    pub fn load_or_create(dir: &Path, trust_domain: &str, workload_ttl: Duration) -> Result<Self, CaError> {
        let cert_path = dir.join(ROOT_CERT);
        let key_path = dir.join(ROOT_KEY);
        if cert_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key_pem = read(&key_path)?;
            return Self::from_pem(&cert_pem, &key_pem, "", &cert_pem, trust_domain, workload_ttl);
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto("generating the root key"))?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, trust_domain);
        name.push(DnType::CommonName, "Weft mesh root CA");
        params.distinguished_name = name;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(crypto("signing the root"))?;
        let cert_pem = cert.pem();
        std::fs::create_dir_all(dir).map_err(io("creating the CA directory", dir))?;
        write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io("writing", &key_path))?;
        std::fs::write(&cert_path, &cert_pem).map_err(io("writing", &cert_path))?;
        tracing::info!(dir = %dir.display(), "generated the mesh root CA");
        Ok(Self {
            issuer: Issuer::new(params, key),
            signing_pem: cert_pem.clone(),
            chain_pem: String::new(),
            roots_pem: cert_pem,
            trust_domain: trust_domain.to_owned(),
            workload_ttl,
        })
    }

    /// A CA signing with an operator-supplied intermediate: its certificate and key, the
    /// certificates between it and the root (may be empty), and the root(s) to distribute.
    ///
    /// # Errors
    /// The PEM does not parse, or the certificate is not a CA matching the key.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        chain_pem: &str,
        roots_pem: &str,
        trust_domain: &str,
        workload_ttl: Duration,
    ) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(crypto("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(crypto("reading the CA certificate"))?;
        Ok(Self {
            issuer,
            signing_pem: cert_pem.to_owned(),
            chain_pem: chain_pem.to_owned(),
            roots_pem: roots_pem.to_owned(),
            trust_domain: trust_domain.to_owned(),
            workload_ttl,
        })
    }

    /// The trust bundle (PEM root certificates) sidecars verify peers against.
    pub fn trust_bundle(&self) -> &str {
        &self.roots_pem
    }

    /// How long workload certificates are valid.
    pub fn workload_ttl(&self) -> Duration {
        self.workload_ttl
    }

    /// The trust domain of the SPIFFE IDs this CA issues.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs the public key of `csr_pem` for `identity`: a certificate valid from a minute
    /// ago (clock skew) for the workload lifetime, for client and server authentication,
    /// whose only name is the identity's SPIFFE ID. What the CSR asks for beyond its key is
    /// ignored; its signature must verify (proof that the caller holds the key).
    ///
    /// # Errors
    /// The CSR does not parse or verify, or the identity is malformed.
    pub fn sign(&self, csr_pem: &str, identity: &Identity, now: SystemTime) -> Result<Issued, CaError> {
        self.sign_for(csr_pem, identity, now, self.workload_ttl)
    }

    /// As [`sign`](Self::sign), valid for `validity` instead of the workload lifetime.
    ///
    /// # Errors
    /// As [`sign`](Self::sign).
    pub fn sign_for(
        &self,
        csr_pem: &str,
        identity: &Identity,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Issued, CaError> {
        identity.check()?;
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(crypto("reading the CSR"))?;
        let spiffe_id = identity.spiffe_id(&self.trust_domain);
        let uri = spiffe_id.clone().try_into().map_err(crypto("building the SPIFFE ID"))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = now + validity;
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = not_after.into();
        let serial = random_serial()?;
        let serial_hex = crate::hex(serial.as_ref());
        params.serial_number = Some(serial);
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(crypto("signing the certificate"))?;
        let mut chain_pem = cert.pem();
        if self.signing_pem != self.roots_pem {
            chain_pem.push_str(&self.signing_pem);
            chain_pem.push_str(&self.chain_pem);
        }
        Ok(Issued {
            chain_pem,
            serial: serial_hex,
            spiffe_id,
            not_after,
        })
    }
}

/// 16 bytes from the system's secure random source, positive and non-zero (RFC 5280);
/// serials must not be predictable.
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io("reading", path))
}

/// Writes a secret readable by its owner only, atomically (a temporary file renamed over).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(bytes)?;
    std::fs::rename(&temp, path)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CaError {
    let path = path.to_path_buf();
    move |source| CaError::Io { what, path, source }
}

fn crypto(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Crypto { what, source }
}
