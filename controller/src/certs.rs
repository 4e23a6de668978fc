//! The Certificates gRPC service: sidecars send CSRs and get workload certificates, after
//! authenticating. In local mode a sidecar authenticates with its workload's bootstrap token:
//! an HMAC of `<namespace>/<workload>` under a secret only the controller holds, written for
//! every known workload to `<data_dir>/bootstrap/<namespace>/<workload>.token`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use weft_api::pb;

use crate::ca::{Authority, CaError, Identity, write_private};
use crate::server::Published;

/// Metadata key naming the workload a bootstrap token was issued for.
pub const WORKLOAD_HEADER: &str = "x-weft-workload";

/// What the operator's token signs.
const OPERATOR: &str = "weft-operator";

/// The file, in the controller's data directory, holding the operator's token.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// Issues and checks per-workload bootstrap tokens.
pub struct Bootstrap {
    key: ring::hmac::Key,
}

impl Bootstrap {
    /// Loads the token secret kept in `dir` (`bootstrap.key`), or creates it.
    ///
    /// # Errors
    /// The secret cannot be read, created or is malformed.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let path = dir.join("bootstrap.key");
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { what, path, source }
        };
        let secret = match std::fs::read(&path) {
            Ok(secret) if secret.len() == 32 => secret,
            Ok(_) => {
                return Err(CaError::Io {
                    what: "reading",
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, "expected 32 bytes"),
                });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                use ring::rand::SecureRandom as _;
                let mut secret = vec![0u8; 32];
                ring::rand::SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| CaError::Random)?;
                std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
                write_private(&path, &secret).map_err(io("writing", &path))?;
                secret
            }
            Err(error) => return Err(io("reading", &path)(error)),
        };
        Ok(Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        })
    }

    /// The token of workload `namespace/name` (64 hex digits).
    pub fn token(&self, namespace: &str, name: &str) -> String {
        let tag = ring::hmac::sign(&self.key, format!("{namespace}/{name}").as_bytes());
        crate::hex(tag.as_ref())
    }

    /// Whether `token` is the token of `namespace/name` (constant-time comparison).
    pub fn verify(&self, namespace: &str, name: &str, token: &str) -> bool {
        let Some(bytes) = decode_hex(token) else { return false };
        ring::hmac::verify(&self.key, format!("{namespace}/{name}").as_bytes(), &bytes).is_ok()
    }

    /// The operator's token (64 hex digits): what `RevokeCertificate` asks for. Derived from
    /// the same secret as the workloads' tokens, under a name no workload has (it has no `/`).
    pub fn operator_token(&self) -> String {
        crate::hex(ring::hmac::sign(&self.key, OPERATOR.as_bytes()).as_ref())
    }

    /// Whether `token` is the operator's token (constant-time comparison).
    pub fn verify_operator(&self, token: &str) -> bool {
        let Some(bytes) = decode_hex(token) else { return false };
        ring::hmac::verify(&self.key, OPERATOR.as_bytes(), &bytes).is_ok()
    }

    /// Writes the operator's token to `path` (owner-readable only), for `weftctl cert revoke`.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_operator_token(&self, path: &Path) -> Result<(), CaError> {
        crate::ca::write_private(path, self.operator_token().as_bytes()).map_err(|source| CaError::Io {
            what: "writing",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the token of every workload in `workloads` under `dir/<ns>/<name>.token`
    /// (owner-readable only), for local tooling to hand to each sidecar.
    pub fn write_tokens<'a>(&self, dir: &Path, workloads: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (namespace, name) in workloads {
            let path: PathBuf = dir.join(namespace).join(format!("{name}.token"));
            let token = self.token(namespace, name);
            if std::fs::read_to_string(&path).is_ok_and(|t| t == token) {
                continue;
            }
            let written =
                std::fs::create_dir_all(dir.join(namespace)).and_then(|()| write_private(&path, token.as_bytes()));
            if let Err(error) = written {
                tracing::warn!(path = %path.display(), %error, "cannot write bootstrap token");
            }
        }
    }
}

/// The workload (`<namespace>/<name>`) a request's bootstrap credential proves, `None` when it
/// carries none (neither `authorization` nor the workload header).
///
/// # Errors
/// `UNAUTHENTICATED` when a credential is there but malformed or wrong.
pub(crate) fn credential(
    bootstrap: &Bootstrap,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Option<String>, Status> {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    if metadata.get("authorization").is_none() && metadata.get(WORKLOAD_HEADER).is_none() {
        return Ok(None);
    }
    let workload =
        text(WORKLOAD_HEADER).ok_or_else(|| Status::unauthenticated(format!("missing {WORKLOAD_HEADER} metadata")))?;
    let token = bearer(metadata).ok_or_else(|| Status::unauthenticated("missing bearer credential"))?;
    let (namespace, name) = workload
        .split_once('/')
        .ok_or_else(|| Status::unauthenticated(format!("{WORKLOAD_HEADER} must be <namespace>/<workload>")))?;
    if !bootstrap.verify(namespace, name, token) {
        return Err(Status::unauthenticated(format!(
            "bad credential for workload {workload}"
        )));
    }
    Ok(Some(workload.to_owned()))
}

/// The token of a request's `authorization: Bearer <token>` metadata.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The Certificates service.
#[derive(Clone)]
pub struct CertificateService {
    authority: Arc<Authority>,
    bootstrap: Arc<Bootstrap>,
    ledger: Arc<crate::ledger::Ledger>,
    intent: watch::Receiver<Arc<Published>>,
    max_validity: Duration,
}

impl CertificateService {
    /// A service signing with `authority` for the workloads of the current intent, keeping
    /// what it issues and revokes in `ledger`.
    pub fn new(
        authority: Arc<Authority>,
        bootstrap: Arc<Bootstrap>,
        ledger: Arc<crate::ledger::Ledger>,
        intent: watch::Receiver<Arc<Published>>,
        max_validity: Duration,
    ) -> Self {
        Self {
            authority,
            bootstrap,
            ledger,
            intent,
            max_validity,
        }
    }

    /// Who the request comes from: the workload named in its metadata, if its token matches
    /// and the intent knows it.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<(Identity, String), Status> {
        let workload = credential(&self.bootstrap, request.metadata())?
            .ok_or_else(|| Status::unauthenticated("missing bearer credential"))?;
        let (namespace, name) = workload.split_once('/').unwrap_or_default();
        let published = self.intent.borrow().clone();
        let known = published
            .mesh
            .workloads()
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
            .ok_or_else(|| Status::permission_denied(format!("workload {workload} is not in the intent")))?;
        Ok((
            Identity {
                namespace: known.namespace.clone(),
                service_account: known.service_account.clone(),
            },
            workload.to_owned(),
        ))
    }
}

#[tonic::async_trait]
impl pb::certificates_server::Certificates for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<pb::CreateCertificateRequest>,
    ) -> Result<Response<pb::CreateCertificateResponse>, Status> {
        let (identity, workload) = self.authenticate(&request)?;
        let request = request.into_inner();
        let validity = match request.validity_seconds {
            0 => self.max_validity,
            seconds => Duration::from_secs(seconds).min(self.max_validity),
        };
        let issued = self
            .authority
            .sign_for(&request.csr_pem, &identity, SystemTime::now(), validity)
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        if self.ledger.is_revoked("", &issued.spiffe_id) {
            return Err(Status::permission_denied(format!(
                "the identity {} is revoked",
                issued.spiffe_id
            )));
        }
        self.ledger
            .record(&issued.serial, &issued.spiffe_id, &workload, issued.not_after);
        tracing::info!(spiffe_id = %issued.spiffe_id, serial = %issued.serial, "certificate issued");
        Ok(Response::new(pb::CreateCertificateResponse {
            cert_chain_pem: split_pem(&issued.chain_pem),
            trust_bundle_pem: self.authority.trust_bundle().to_owned(),
            spiffe_id: issued.spiffe_id,
            serial: issued.serial,
            not_after_unix_ms: issued
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }))
    }

    async fn list_certificates(
        &self,
        _request: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        Ok(Response::new(self.ledger.list()))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        if !bearer(request.metadata()).is_some_and(|t| self.bootstrap.verify_operator(t)) {
            return Err(Status::unauthenticated(format!(
                "revoking needs the operator's token (the controller writes it to <data-dir>/{OPERATOR_TOKEN_FILE})"
            )));
        }
        let request = request.into_inner();
        match self.ledger.revoke(&request.serial, &request.spiffe_id) {
            Ok(certificates) => Ok(Response::new(pb::RevokeCertificateResponse { certificates })),
            Err(error @ crate::ledger::RevokeError::Write { .. }) => Err(Status::internal(error.to_string())),
            Err(error) => Err(Status::invalid_argument(error.to_string())),
        }
    }
}

/// Splits concatenated PEM certificates into one string each.
fn split_pem(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.split_inclusive(END)
        .map(str::trim)
        .filter(|c| c.ends_with(END))
        .map(|c| format!("{c}\n"))
        .collect()
}
