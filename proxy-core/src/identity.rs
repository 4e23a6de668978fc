//! The sidecar's workload identity: a private key generated here (it never leaves the
//! process), a certificate for it signed by the controller's CA from a CSR, and rotation
//! at half-life (configurable) with a fresh key each time.
//!
//! The current identity is kept by the [`Proxy`](crate::Proxy) (`Proxy::set_identity`, shown
//! at the admin API's `/certs`); TLS configuration is to read the latest value at each
//! handshake, so a rotation changes new handshakes and leaves established connections alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft_api::pb;

/// A workload certificate and the key it certifies.
#[derive(Clone)]
pub struct WorkloadIdentity {
    /// The certificate chain, PEM, workload certificate first.
    pub chain_pem: Vec<String>,
    /// The private key, PKCS#8 DER. Kept in memory only.
    pub key_der: Arc<Vec<u8>>,
    /// The SPIFFE ID the certificate carries.
    pub spiffe_id: String,
    /// The roots to verify peers with, PEM.
    pub trust_bundle_pem: String,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// When it was issued (requested).
    pub issued: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A workload's bootstrap credential, which the controller's calls take: the CSR, and the
/// config stream (which sends private keys only to a proven workload).
#[derive(Debug, Clone)]
pub struct Credential {
    /// The workload the bootstrap token was issued for, `<namespace>/<workload>`.
    pub workload: String,
    /// The file holding the bootstrap token, read at every call (so a rotated token is
    /// picked up).
    pub token_file: std::path::PathBuf,
}

impl Credential {
    /// Adds the credential to `request`: `x-weft-workload` and `authorization: Bearer`.
    ///
    /// # Errors
    /// The token file cannot be read, or the workload or token is not ASCII.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) -> Result<(), String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("cannot read the token file {}: {e}", self.token_file.display()))?;
        let value = |text: &str| {
            text.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                .map_err(|_| "the workload name or token is not ASCII".to_owned())
        };
        let metadata = request.metadata_mut();
        metadata.insert("x-weft-workload", value(&self.workload)?);
        metadata.insert("authorization", value(&format!("Bearer {}", token.trim()))?);
        Ok(())
    }
}

/// How the sidecar obtains its identity.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The controller's gRPC address, `http://127.0.0.1:15010`.
    pub address: String,
    /// The workload's bootstrap credential.
    pub credential: Credential,
    /// Requested certificate lifetime (`0`: the CA's maximum).
    pub validity: Duration,
    /// Fraction of the lifetime after which the certificate is renewed. Default 0.5.
    pub rotate_at: f64,
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key or CSR could not be made.
    #[error("cannot create a key and CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// The controller could not be reached.
    #[error("cannot reach the controller at {address}: {message}")]
    Connect {
        /// The address tried.
        address: String,
        /// What went wrong.
        message: String,
    },
    /// The controller refused the request.
    #[error("the CA refused the CSR: {0}")]
    Refused(#[from] tonic::Status),
    /// The answer was unusable.
    #[error("the CA's answer is unusable: {0}")]
    Invalid(String),
}

/// Generates a key and CSR, and asks the CA for a certificate. Returns the identity and the
/// request exactly as sent (so tests can check what went on the wire).
///
/// # Errors
/// See [`IdentityError`].
pub async fn request_certificate(
    config: &IdentityConfig,
) -> Result<(WorkloadIdentity, pb::CreateCertificateRequest), IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let request = pb::CreateCertificateRequest {
        csr_pem: csr.pem()?,
        validity_seconds: config.validity.as_secs(),
    };
    let channel = tonic::transport::Endpoint::from_shared(config.address.clone())
        .map_err(|e| IdentityError::Connect {
            address: config.address.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| IdentityError::Connect {
            address: config.address.clone(),
            message: e.to_string(),
        })?;
    let mut call = tonic::Request::new(request.clone());
    config.credential.attach(&mut call).map_err(IdentityError::Invalid)?;
    let issued = SystemTime::now();
    let response = pb::certificates_client::CertificatesClient::new(channel)
        .create_certificate(call)
        .await?
        .into_inner();
    if response.cert_chain_pem.is_empty() {
        return Err(IdentityError::Invalid("no certificate in the answer".into()));
    }
    let not_after =
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(response.not_after_unix_ms).unwrap_or(0));
    if not_after <= issued {
        return Err(IdentityError::Invalid("the certificate is already expired".into()));
    }
    let identity = WorkloadIdentity {
        chain_pem: response.cert_chain_pem,
        key_der: Arc::new(key.serialize_der()),
        spiffe_id: response.spiffe_id,
        trust_bundle_pem: response.trust_bundle_pem,
        serial: response.serial,
        issued,
        not_after,
    };
    Ok((identity, request))
}

/// An identity from files, for a proxy without a controller (a gateway, a benchmark): the
/// PEM certificate chain (workload certificate first), its PKCS#8 PEM private key and the
/// PEM roots to verify peers with. Not rotated: replace the files and restart.
///
/// # Errors
/// A file cannot be read or does not hold what it should.
pub fn from_files(
    chain: &std::path::Path,
    key: &std::path::Path,
    trust_bundle: &std::path::Path,
) -> Result<WorkloadIdentity, IdentityError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|e| IdentityError::Invalid(format!("cannot read {}: {e}", path.display())))
    };
    let chain_text = read(chain)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::Invalid(format!("{}: {e}", chain.display())))?;
    let first = certs
        .first()
        .ok_or_else(|| IdentityError::Invalid(format!("{}: no PEM certificate", chain.display())))?;
    let key_der = PrivatePkcs8KeyDer::from_pem_slice(read(key)?.as_bytes())
        .map_err(|e| IdentityError::Invalid(format!("{}: not a PKCS#8 PEM private key: {e}", key.display())))?;
    let (spiffe_id, serial, not_after) = crate::tls::certificate_facts(first)
        .ok_or_else(|| IdentityError::Invalid(format!("{}: the certificate does not parse", chain.display())))?;
    Ok(WorkloadIdentity {
        chain_pem: vec![chain_text],
        key_der: Arc::new(key_der.secret_pkcs8_der().to_vec()),
        spiffe_id: spiffe_id.unwrap_or_default(),
        trust_bundle_pem: read(trust_bundle)?,
        serial,
        issued: SystemTime::now(),
        not_after,
    })
}

/// When to renew a certificate issued at `issued` and expiring at `not_after`.
pub fn renewal_time(issued: SystemTime, not_after: SystemTime, rotate_at: f64) -> SystemTime {
    let lifetime = not_after.duration_since(issued).unwrap_or_default();
    issued + lifetime.mul_f64(rotate_at.clamp(0.05, 0.95))
}

/// Obtains the identity and keeps it fresh for as long as the future runs, handing each
/// certificate to `publish`. Failures are retried with backoff (1 s doubling to 30 s) while
/// the current certificate stays in use.
pub async fn run(config: &IdentityConfig, publish: impl Fn(WorkloadIdentity)) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match request_certificate(config).await {
            Ok((identity, _)) => {
                let renew = renewal_time(identity.issued, identity.not_after, config.rotate_at);
                tracing::info!(spiffe_id = %identity.spiffe_id, serial = %identity.serial, "workload certificate issued");
                publish(identity);
                backoff = Duration::from_secs(1);
                let wait = renew.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "cannot obtain a workload certificate");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
