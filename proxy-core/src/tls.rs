//! Mesh TLS: the sidecar's side of mutual TLS between workloads, and one-way TLS to
//! services outside the mesh.
//!
//! [`MeshTls`] holds the TLS material of the moment: the workload certificate (from the
//! controller's CA, see [`crate::identity`]), the roots trusted for peers (the certificate's
//! trust bundle plus the snapshot's `security.trust_bundle`) and the revoked serials and
//! identities. The rustls configurations are built once and read that material at every
//! handshake through their certificate resolvers and verifiers, so a rotated certificate or a
//! new root applies to the next handshake while established connections carry on undisturbed.
//! A revocation applies to the next handshake too, and also ends the established connections
//! of the revoked peer: every change of the revoked sets bumps [`MeshTls::revocations`], an
//! inbound connection from a now revoked peer is shut down gracefully (its requests in flight
//! finish, no new one starts), and a pooled upstream connection to one is never used again.
//!
//! A peer is authenticated by its chain to a trusted root; its identity is the SPIFFE ID in
//! its certificate's URI SAN (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), not a host name.
//! Inbound, the identity becomes the connection's principal (`source.principal` for filters);
//! outbound, a cluster may list the identities its endpoints may present.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use weft_api::{ListenerProtocol, Security, UpstreamProtocol, UpstreamTls, UpstreamTlsMode, normalize_serial};

use crate::identity::WorkloadIdentity;

/// The crypto provider of every TLS connection the proxy makes or accepts.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS material or a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM certificate did not parse.
    #[error("{what}: no PEM certificate could be read")]
    Pem {
        /// Which certificates.
        what: String,
    },
    /// rustls refused the material.
    #[error("{what}: {source}")]
    Rustls {
        /// Which material.
        what: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// A verifier could not be built from the roots.
    #[error("{what}: {message}")]
    Verifier {
        /// Which roots.
        what: String,
        /// The cause.
        message: String,
    },
    /// A file named in the snapshot could not be read.
    #[error("{what}: cannot read {path}: {source}")]
    Read {
        /// Which material.
        what: String,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A client certificate read from the files a cluster's `mutual` TLS names.
pub(crate) struct ClientFiles {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of both files: a connector is kept across snapshots only while they are the same.
    pub(crate) digest: [u8; 32],
}

impl ClientFiles {
    /// The SHA-256 of the certificate and key files of `tls` (mode `mutual`) as they are now;
    /// `None` for the other modes. What [`ClientFiles::read`] would record as `digest`.
    pub(crate) fn digest_now(tls: &UpstreamTls, cluster: &str) -> Result<Option<[u8; 32]>, TlsError> {
        Ok(Self::read_files(tls, cluster)?.map(|files| files.digest))
    }

    /// The files' paths and bytes, and their digest.
    fn read_files<'a>(tls: &'a UpstreamTls, cluster: &str) -> Result<Option<Files<'a>>, TlsError> {
        use sha2::Digest as _;
        let (UpstreamTlsMode::Mutual, Some(cert_path), Some(key_path)) =
            (tls.mode, &tls.client_certificate, &tls.private_key)
        else {
            return Ok(None);
        };
        let read = |path: &str, field: &str| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what: format!("cluster {cluster:?} tls.{field}"),
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path, "client_certificate")?;
        let key_pem = read(key_path, "private_key")?;
        let mut digest = sha2::Sha256::new();
        digest.update(&cert_pem);
        digest.update([0]);
        digest.update(&key_pem);
        Ok(Some(Files {
            cert_path,
            key_path,
            cert_pem,
            key_pem,
            digest: digest.finalize().into(),
        }))
    }

    /// Reads the certificate and key of `tls` (mode `mutual`); `None` for the other modes.
    pub(crate) fn read(tls: &UpstreamTls, cluster: &str) -> Result<Option<Self>, TlsError> {
        let Some(Files {
            cert_path,
            key_path,
            cert_pem,
            key_pem,
            digest,
        }) = Self::read_files(tls, cluster)?
        else {
            return Ok(None);
        };
        let chain = parse_certs(
            &String::from_utf8_lossy(&cert_pem),
            &format!("cluster {cluster:?} tls.client_certificate {cert_path}"),
        )?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Verifier {
            what: format!("cluster {cluster:?} tls.private_key {key_path}"),
            message: e.to_string(),
        })?;
        Ok(Some(Self { chain, key, digest }))
    }
}

/// The client certificate and key files of a cluster, as read.
struct Files<'a> {
    cert_path: &'a str,
    key_path: &'a str,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    digest: [u8; 32],
}

/// The TLS material of one moment; replaced whole when any part changes.
struct Material {
    /// The workload certificate and key; `None` until the CA issued one.
    certified: Option<Arc<CertifiedKey>>,
    /// Roots trusted for mesh peers.
    roots: Arc<RootCertStore>,
    /// Verifies client certificates against `roots`; `None` with no roots.
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Revoked serials, normalized (see [`normalize_serial`]).
    revoked_serials: HashSet<String>,
    /// Revoked SPIFFE IDs.
    revoked_identities: HashSet<String>,
}

/// The inputs material is made from.
#[derive(Default)]
struct Inputs {
    identity: Option<Arc<WorkloadIdentity>>,
    security: Security,
}

/// The mesh TLS state shared by every worker (see the module docs).
pub(crate) struct MeshTls {
    provider: Arc<CryptoProvider>,
    material: RwLock<Arc<Material>>,
    inputs: Mutex<Inputs>,
    /// Server configurations by the ALPN protocols a listener offers.
    servers: [Arc<ServerConfig>; 3],
    /// Bumped on every change of the revoked serials or identities: wakes inbound connections.
    revocations: tokio::sync::watch::Sender<u64>,
    /// The same count, readable without a lock: pooled upstream connections compare it with
    /// the count they last checked at, on the request path (see [`UpstreamConnector::revokes`]).
    revocation_epoch: Arc<AtomicU64>,
}

/// A mesh peer's certificate, as revocation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerCert {
    /// Its serial, normalized (see [`normalize_serial`]).
    serial: String,
    /// Its SPIFFE ID.
    identity: Option<String>,
}

impl PeerCert {
    /// The facts of a peer's end-entity certificate; `None` when it does not parse.
    pub(crate) fn of(cert: &CertificateDer<'_>) -> Option<Self> {
        let (identity, serial) = peer_identity(cert)?;
        Some(Self { serial, identity })
    }

    /// The first certificate of a handshake's peer chain.
    fn first(certs: Option<&[CertificateDer<'_>]>) -> Option<Self> {
        certs.and_then(|certs| certs.first()).and_then(Self::of)
    }

    /// Its SPIFFE ID.
    pub(crate) fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }
}

impl Material {
    /// Whether `peer` is revoked, by serial or by identity.
    fn revokes(&self, peer: &PeerCert) -> bool {
        self.revoked_serials.contains(&peer.serial)
            || peer
                .identity
                .as_ref()
                .is_some_and(|id| self.revoked_identities.contains(id))
    }
}

impl MeshTls {
    /// Mesh TLS with no certificate yet and no trusted roots.
    pub(crate) fn new() -> Arc<Self> {
        let provider = provider();
        Arc::new_cyclic(|me: &std::sync::Weak<Self>| {
            let server = |alpn: &[&[u8]]| {
                let resolver = Arc::new(ServerCertResolver(me.clone()));
                let verifier = Arc::new(MeshClientVerifier {
                    tls: me.clone(),
                    algorithms: provider.signature_verification_algorithms,
                });
                #[allow(clippy::expect_used, reason = "not input: the ring provider has TLS 1.2 and 1.3")]
                let mut config = ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .expect("the ring provider supports the default protocol versions")
                    .with_client_cert_verifier(verifier)
                    .with_cert_resolver(resolver);
                config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                Arc::new(config)
            };
            Self {
                provider: provider.clone(),
                material: RwLock::new(Arc::new(Material {
                    certified: None,
                    roots: Arc::new(RootCertStore::empty()),
                    client_verifier: None,
                    revoked_serials: HashSet::new(),
                    revoked_identities: HashSet::new(),
                })),
                inputs: Mutex::new(Inputs::default()),
                servers: [server(&[b"http/1.1"]), server(&[b"h2"]), server(&[b"h2", b"http/1.1"])],
                revocations: tokio::sync::watch::channel(0).0,
                revocation_epoch: Arc::new(AtomicU64::new(0)),
            }
        })
    }

    fn current(&self) -> Arc<Material> {
        self.material.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a new workload certificate.
    pub(crate) fn set_identity(&self, identity: Arc<WorkloadIdentity>) -> Result<(), TlsError> {
        let mut inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        let material = self.build(Some(&identity), &inputs.security)?;
        inputs.identity = Some(identity);
        *self.material.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
        Ok(())
    }

    /// Checks a snapshot's security settings without applying them.
    pub(crate) fn check(&self, security: &Security) -> Result<(), TlsError> {
        let inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        self.build(inputs.identity.as_deref(), security).map(drop)
    }

    /// Applies a snapshot's security settings (trust bundle, revocations).
    pub(crate) fn set_security(&self, security: &Security) -> Result<(), TlsError> {
        let mut inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        if inputs.security == *security {
            return Ok(());
        }
        let material = self.build(inputs.identity.as_deref(), security)?;
        let revocations_changed = inputs.security.revoked_serials != security.revoked_serials
            || inputs.security.revoked_identities != security.revoked_identities;
        inputs.security = security.clone();
        *self.material.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
        if revocations_changed {
            // After the material: a connection that sees the new count sees the new sets.
            self.revocation_epoch.fetch_add(1, Ordering::Release);
            self.revocations.send_modify(|epoch| *epoch += 1);
        }
        Ok(())
    }

    /// Changes whenever the revoked serials or identities change: connections of a peer
    /// check [`MeshTls::is_revoked`] then.
    pub(crate) fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// Whether `peer` is revoked now.
    pub(crate) fn is_revoked(&self, peer: &PeerCert) -> bool {
        self.current().revokes(peer)
    }

    fn build(&self, identity: Option<&WorkloadIdentity>, security: &Security) -> Result<Material, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut add_roots = |pem: &str, what: &str| -> Result<(), TlsError> {
            let certs = parse_certs(pem, what)?;
            for cert in certs {
                roots.add(cert).map_err(|source| TlsError::Rustls {
                    what: what.to_owned(),
                    source,
                })?;
            }
            Ok(())
        };
        let certified = match identity {
            Some(identity) => {
                if !identity.trust_bundle_pem.trim().is_empty() {
                    add_roots(&identity.trust_bundle_pem, "the certificate's trust bundle")?;
                }
                let what = "the workload certificate";
                let mut chain = Vec::new();
                for pem in &identity.chain_pem {
                    chain.extend(parse_certs(pem, what)?);
                }
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.as_slice().to_vec()));
                let certified =
                    CertifiedKey::from_der(chain, key, &self.provider).map_err(|source| TlsError::Rustls {
                        what: what.to_owned(),
                        source,
                    })?;
                Some(Arc::new(certified))
            }
            None => None,
        };
        for (i, pem) in security.trust_bundle.iter().enumerate() {
            add_roots(pem, &format!("security.trust_bundle[{i}]"))?;
        }
        let roots = Arc::new(roots);
        let client_verifier = if roots.is_empty() {
            None
        } else {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier {
                    what: "the trust bundle".to_owned(),
                    message: e.to_string(),
                })?;
            Some(verifier)
        };
        Ok(Material {
            certified,
            roots,
            client_verifier,
            revoked_serials: security
                .revoked_serials
                .iter()
                .filter_map(|s| normalize_serial(s))
                .collect(),
            revoked_identities: security.revoked_identities.iter().cloned().collect(),
        })
    }

    /// The server configuration of a listener speaking `protocol`.
    pub(crate) fn server_config(&self, protocol: ListenerProtocol) -> Arc<ServerConfig> {
        let index = match protocol {
            ListenerProtocol::Http1 => 0,
            ListenerProtocol::Http2 => 1,
            // A passthrough listener terminates no TLS (validation refuses mtls on it).
            ListenerProtocol::Auto | ListenerProtocol::TlsPassthrough => 2,
        };
        self.servers[index].clone()
    }

    /// The client side of TLS to a cluster's endpoints.
    ///
    /// `client` is the certificate of `mutual` TLS, read with [`ClientFiles::read`].
    pub(crate) fn connector(
        self: &Arc<Self>,
        tls: &UpstreamTls,
        protocol: UpstreamProtocol,
        cluster: &str,
        client: Option<ClientFiles>,
    ) -> Result<Arc<UpstreamConnector>, TlsError> {
        let client_digest = client.as_ref().map(|c| c.digest);
        let alpn: Vec<Vec<u8>> = match protocol {
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
            UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        };
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: format!("cluster {cluster:?}"),
                source,
            })?;
        let mut config = match tls.mode {
            UpstreamTlsMode::IstioMutual => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
                    tls: Arc::downgrade(self),
                    allowed: tls.subject_alt_names.iter().cloned().collect(),
                    algorithms: self.provider.signature_verification_algorithms,
                }))
                .with_client_cert_resolver(Arc::new(ClientCertResolver(Arc::downgrade(self)))),
            UpstreamTlsMode::Simple | UpstreamTlsMode::Mutual => {
                let mut roots = RootCertStore::empty();
                match &tls.ca_certificates {
                    Some(pem) => {
                        for cert in parse_certs(pem, &format!("cluster {cluster:?} tls.ca_certificates"))? {
                            roots.add(cert).map_err(|source| TlsError::Rustls {
                                what: format!("cluster {cluster:?} tls.ca_certificates"),
                                source,
                            })?;
                        }
                    }
                    None => {
                        let native = rustls_native_certs::load_native_certs();
                        roots.add_parsable_certificates(native.certs);
                    }
                }
                let roots = Arc::new(roots);
                let verifier: Arc<dyn ServerCertVerifier> = if tls.subject_alt_names.is_empty() {
                    WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
                        .build()
                        .map_err(|e| TlsError::Verifier {
                            what: format!("cluster {cluster:?} roots"),
                            message: e.to_string(),
                        })?
                } else {
                    let names = tls
                        .subject_alt_names
                        .iter()
                        .map(|name| {
                            ServerName::try_from(name.clone()).map_err(|e| TlsError::Verifier {
                                what: format!("cluster {cluster:?} tls.subject_alt_names {name:?}"),
                                message: e.to_string(),
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    Arc::new(AnyNameVerifier {
                        roots,
                        names,
                        algorithms: self.provider.signature_verification_algorithms,
                    })
                };
                let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
                match (tls.mode, client) {
                    (UpstreamTlsMode::Mutual, Some(client)) => builder
                        .with_client_auth_cert(client.chain, client.key)
                        .map_err(|source| TlsError::Rustls {
                            what: format!("cluster {cluster:?} tls.client_certificate"),
                            source,
                        })?,
                    (UpstreamTlsMode::Mutual, None) => {
                        return Err(TlsError::Verifier {
                            what: format!("cluster {cluster:?} tls"),
                            message: "mode mutual needs client_certificate and private_key".to_owned(),
                        });
                    }
                    _ => builder.with_no_client_auth(),
                }
            }
        };
        config.alpn_protocols = alpn;
        let server_name = match &tls.sni {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| TlsError::Verifier {
                what: format!("cluster {cluster:?} tls.sni"),
                message: e.to_string(),
            })?),
            None => None,
        };
        Ok(Arc::new(UpstreamConnector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            mesh_endpoints_only: tls.mesh_endpoints_only,
            mutual: tls.mode == UpstreamTlsMode::IstioMutual,
            client_digest,
            tls: Arc::downgrade(self),
            revocation_epoch: self.revocation_epoch.clone(),
            id: NEXT_CONNECTOR.fetch_add(1, Ordering::Relaxed),
        }))
    }

    /// Whether a certificate is on hand (mutual TLS cannot start without one).
    pub(crate) fn has_certificate(&self) -> bool {
        self.current().certified.is_some()
    }
}

/// The id of the next [`UpstreamConnector`].
static NEXT_CONNECTOR: AtomicU64 = AtomicU64::new(1);

/// How a cluster's connections are wrapped in TLS.
pub(crate) struct UpstreamConnector {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// Only endpoints that are mesh sidecars get TLS.
    pub(crate) mesh_endpoints_only: bool,
    /// Mesh mutual TLS (needs the workload certificate).
    pub(crate) mutual: bool,
    /// The [`ClientFiles::digest`] of the client certificate it presents (mode `mutual`).
    pub(crate) client_digest: Option<[u8; 32]>,
    tls: std::sync::Weak<MeshTls>,
    /// [`MeshTls`]'s count of revocation changes.
    revocation_epoch: Arc<AtomicU64>,
    /// Unique per connector (never 0), keys the connection pool.
    pub(crate) id: u64,
}

impl UpstreamConnector {
    /// The name sent in SNI and (one-way TLS) verified: the configured one, else the IP.
    pub(crate) fn server_name(&self, ip: IpAddr) -> ServerName<'static> {
        self.server_name.clone().unwrap_or(ServerName::IpAddress(ip.into()))
    }

    /// Whether the proxy has a workload certificate to present.
    pub(crate) fn has_certificate(&self) -> bool {
        self.tls.upgrade().is_some_and(|tls| tls.has_certificate())
    }

    /// TLS over `tcp` to `ip`. With mesh mutual TLS, also the server's certificate, and the
    /// revocation count it was checked at: a resumed session skips the certificate verifier,
    /// so its server is checked against the revocations here, as a full handshake is by the
    /// verifier.
    pub(crate) async fn connect(
        &self,
        ip: IpAddr,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<(
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Option<CheckedPeer>,
    )> {
        let stream = self.connector.connect(self.server_name(ip), tcp).await?;
        if !self.mutual {
            return Ok((stream, None));
        }
        let epoch = self.revocation_epoch.load(Ordering::Acquire);
        let Some(peer) = PeerCert::first(stream.get_ref().1.peer_certificates()) else {
            return Ok((stream, None));
        };
        if self.tls.upgrade().is_some_and(|tls| tls.is_revoked(&peer)) {
            return Err(std::io::Error::other("the server's certificate is revoked"));
        }
        Ok((
            stream,
            Some(CheckedPeer {
                peer: Arc::new(peer),
                epoch,
            }),
        ))
    }

    /// Whether the mesh now revokes the server of a pooled connection. Costs one atomic load
    /// unless the revocations changed since `checked` was last checked.
    pub(crate) fn revokes(&self, checked: &mut CheckedPeer) -> bool {
        let epoch = self.revocation_epoch.load(Ordering::Acquire);
        if epoch == checked.epoch {
            return false;
        }
        checked.epoch = epoch;
        self.tls.upgrade().is_some_and(|tls| tls.is_revoked(&checked.peer))
    }
}

/// The server certificate of an upstream mutual TLS connection, and the count of revocation
/// changes ([`MeshTls`]) at its last check.
#[derive(Debug, Clone)]
pub(crate) struct CheckedPeer {
    peer: Arc<PeerCert>,
    epoch: u64,
}

/// Reads PEM certificates; at least one must be there.
fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem { what: what.to_owned() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what: what.to_owned() });
    }
    Ok(certs)
}

/// The SPIFFE ID (first `spiffe://` URI SAN) and serial of a DER certificate.
pub(crate) fn peer_identity(cert: &CertificateDer<'_>) -> Option<(Option<String>, String)> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let serial = normalize_serial(
        &parsed
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )?;
    let spiffe = parsed.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        })
    });
    Some((spiffe, serial))
}

/// The SPIFFE ID, serial and expiry of a DER certificate.
pub(crate) fn certificate_facts(cert: &CertificateDer<'_>) -> Option<(Option<String>, String, std::time::SystemTime)> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let (spiffe, serial) = peer_identity(cert)?;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let not_after = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some((
        spiffe,
        serial,
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(not_after),
    ))
}

/// Refuses a peer certificate that is revoked by serial or identity.
fn check_revocation(material: &Material, end_entity: &CertificateDer<'_>) -> Result<Option<String>, rustls::Error> {
    let Some(peer) = PeerCert::of(end_entity) else {
        return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding));
    };
    if material.revokes(&peer) {
        return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
    }
    Ok(peer.identity)
}

/// Presents the current workload certificate to clients.
#[derive(Debug)]
struct ServerCertResolver(std::sync::Weak<MeshTls>);

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.upgrade()?.current().certified.clone()
    }
}

/// Presents the current workload certificate to servers.
#[derive(Debug)]
struct ClientCertResolver(std::sync::Weak<MeshTls>);

impl ResolvesClientCert for ClientCertResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.upgrade()?.current().certified.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.upgrade().is_some_and(|tls| tls.has_certificate())
    }
}

/// Verifies mesh clients: chain to a trusted root, not revoked.
struct MeshClientVerifier {
    tls: std::sync::Weak<MeshTls>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshClientVerifier")
    }
}

impl MeshClientVerifier {
    fn material(&self) -> Result<Arc<Material>, rustls::Error> {
        self.tls
            .upgrade()
            .map(|tls| tls.current())
            .ok_or_else(|| rustls::Error::General("the proxy is shutting down".into()))
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self.material()?;
        let Some(verifier) = &material.client_verifier else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        check_revocation(&material, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies mesh servers: chain to a trusted root, not revoked, and (if the cluster lists
/// identities) one of the allowed SPIFFE IDs. Host names are not checked: mesh
/// certificates name identities, not hosts.
struct MeshServerVerifier {
    tls: std::sync::Weak<MeshTls>,
    allowed: HashSet<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for MeshServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshServerVerifier")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self
            .tls
            .upgrade()
            .map(|tls| tls.current())
            .ok_or_else(|| rustls::Error::General("the proxy is shutting down".into()))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &material.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let spiffe = check_revocation(&material, end_entity)?;
        if !self.allowed.is_empty() && !spiffe.as_ref().is_some_and(|id| self.allowed.contains(id)) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One-way TLS's server check when a cluster lists the names its servers may present: the
/// chain verified against `roots`, and the certificate valid for one of `names` (whatever name
/// was sent in SNI), as Envoy's `match_subject_alt_names`.
#[derive(Debug)]
struct AnyNameVerifier {
    roots: Arc<RootCertStore>,
    names: Vec<ServerName<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if !self
            .names
            .iter()
            .any(|name| rustls::client::verify_server_name(&parsed, name).is_ok())
        {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TCP connection, plain or wrapped in TLS (either side).
pub(crate) enum Stream {
    /// Plaintext.
    Plain(tokio::net::TcpStream),
    /// TLS, as client or server.
    Tls(Box<tokio_rustls::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What an accepted connection turned out to be.
pub(crate) struct Accepted {
    /// The stream to serve HTTP on.
    pub(crate) stream: Stream,
    /// Whether it is mutual TLS.
    pub(crate) mtls: bool,
    /// The peer's SPIFFE ID (mutual TLS).
    pub(crate) principal: Option<Arc<str>>,
    /// The mesh peer's certificate (mutual TLS), for revocation.
    pub(crate) peer: Option<PeerCert>,
    /// Whether it is TLS at all.
    pub(crate) tls: bool,
}

/// Why an accepted connection is closed before HTTP.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcceptError {
    /// The peer's certificate is revoked (a resumed session: a full handshake fails earlier).
    #[error("the peer's certificate is revoked")]
    Revoked,
    /// Plaintext on a listener that takes mutual TLS only.
    #[error("plaintext connection refused: the listener requires mutual TLS")]
    PlaintextRefused,
    /// TLS on a listener that takes plaintext only.
    #[error("TLS connection refused: mutual TLS is disabled on the listener")]
    TlsRefused,
    /// The handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    /// Reading the first bytes failed.
    #[error("connection failed before the first byte: {0}")]
    Io(#[source] std::io::Error),
    /// The handshake took too long.
    #[error("TLS handshake timed out")]
    Timeout,
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Tells TLS from plaintext by the first byte (a TLS handshake record starts with 22) and,
/// for TLS, completes the handshake, requiring a client certificate from the mesh. A resumed
/// session skips the certificate verifier, so its peer is checked against the revocations
/// here, as a full handshake is by the verifier.
pub(crate) async fn accept(
    tcp: tokio::net::TcpStream,
    mtls: &weft_api::ListenerMtls,
    tls: &MeshTls,
    protocol: ListenerProtocol,
) -> Result<Accepted, AcceptError> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await.map_err(AcceptError::Io)?;
    let is_tls = n == 1 && first[0] == 0x16;
    if !is_tls {
        if !mtls.accepts_plaintext() {
            return Err(AcceptError::PlaintextRefused);
        }
        return Ok(Accepted {
            stream: Stream::Plain(tcp),
            mtls: false,
            principal: None,
            peer: None,
            tls: false,
        });
    }
    if !mtls.accepts_tls() {
        return Err(AcceptError::TlsRefused);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(protocol));
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| AcceptError::Timeout)?
        .map_err(AcceptError::Handshake)?;
    let peer = PeerCert::first(stream.get_ref().1.peer_certificates());
    if peer.as_ref().is_some_and(|peer| tls.is_revoked(peer)) {
        return Err(AcceptError::Revoked);
    }
    let principal = peer.as_ref().and_then(PeerCert::identity).map(Arc::from);
    Ok(Accepted {
        stream: Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))),
        mtls: true,
        principal,
        peer,
        tls: true,
    })
}

/// The rustls configuration of a listener that terminates TLS with its own certificates
/// (a gateway): certificates chosen by SNI, client certificates required with `mutual`.
pub(crate) fn listener_config(
    tls: &weft_api::ServerTls,
    protocol: ListenerProtocol,
    listener: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut certificates = Vec::with_capacity(tls.certificates.len());
    for (i, certificate) in tls.certificates.iter().enumerate() {
        let what = format!("listener {listener:?} tls.certificates[{i}]");
        let chain = parse_certs(&certificate.cert_chain, &what)?;
        if certificate.private_key.is_empty() {
            return Err(TlsError::Verifier {
                what: format!("{what}.private_key"),
                message: "empty (a controller sends private keys only to a sidecar that proves its workload \
                          with its bootstrap token, --bootstrap-token)"
                    .to_owned(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(certificate.private_key.as_bytes()).map_err(|e| TlsError::Verifier {
                what: format!("{what}.private_key"),
                message: e.to_string(),
            })?;
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Rustls { what, source })?;
        let names = certificate
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        certificates.push((names, Arc::new(certified)));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: format!("listener {listener:?}"),
            source,
        })?;
    let builder = match (&tls.mode, &tls.client_ca) {
        (weft_api::ServerTlsMode::Mutual, Some(ca)) => {
            let what = format!("listener {listener:?} tls.client_ca");
            let mut roots = RootCertStore::empty();
            for cert in parse_certs(ca, &what)? {
                roots.add(cert).map_err(|source| TlsError::Rustls {
                    what: what.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Verifier {
                    what,
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certificates }));
    config.alpn_protocols = match protocol {
        ListenerProtocol::Http1 => vec![b"http/1.1".to_vec()],
        ListenerProtocol::Http2 => vec![b"h2".to_vec()],
        // A passthrough listener terminates no TLS (validation refuses tls on it).
        ListenerProtocol::Auto | ListenerProtocol::TlsPassthrough => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// Picks a listener's certificate by the client's SNI: the first whose names match (exactly,
/// or `*.suffix` one label deep), else the first.
#[derive(Debug)]
struct SniResolver {
    certificates: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    fn matches(pattern: &str, name: &str) -> bool {
        match pattern.strip_prefix("*.") {
            Some(suffix) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => pattern == name,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let chosen = name.and_then(|name| {
            self.certificates
                .iter()
                .find(|(names, _)| names.iter().any(|p| Self::matches(p, &name)))
        });
        chosen.or(self.certificates.first()).map(|(_, key)| key.clone())
    }
}

/// Completes a TLS handshake with a listener's own certificates (plaintext is refused).
pub(crate) async fn accept_terminated(
    tcp: tokio::net::TcpStream,
    config: Arc<ServerConfig>,
) -> Result<Accepted, AcceptError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| AcceptError::Timeout)?
        .map_err(AcceptError::Handshake)?;
    let peer = tls.get_ref().1.peer_certificates().and_then(|certs| certs.first());
    let principal = peer
        .and_then(peer_identity)
        .and_then(|(spiffe, _)| spiffe)
        .map(Arc::from);
    Ok(Accepted {
        mtls: peer.is_some(),
        stream: Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))),
        principal,
        // Client certificates of the listener's own CA: the mesh's revocations are not theirs.
        peer: None,
        tls: true,
    })
}
