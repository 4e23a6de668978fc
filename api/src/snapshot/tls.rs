//! Mesh security in the snapshot: which peers a sidecar trusts, how its listeners accept
//! mutual TLS (Istio's `PeerAuthentication`), how it originates TLS to a cluster (a
//! `DestinationRule`'s `trafficPolicy.tls`), and which certificates are revoked.
//!
//! The sidecar's own certificate is not in the snapshot: it is issued to the sidecar by the
//! controller's CA against a key that never leaves the sidecar (see `docs/identity.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Mesh-wide security settings of one sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Roots trusted for mesh peers, PEM certificates, in addition to the roots that came with
    /// the sidecar's own certificate. During a root rotation the old and new roots are both
    /// here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_bundle: Vec<String>,
    /// Revoked workload certificates, by serial number (lowercase hex, no separators).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_serials: Vec<String>,
    /// Revoked identities: any certificate naming one of these SPIFFE IDs is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_identities: Vec<String>,
}

/// A certificate serial as revocation lists compare it: lowercase hex without `:` separators,
/// whitespace or leading zero bytes. `None` when it is not hex.
pub fn normalize_serial(serial: &str) -> Option<String> {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut rest = hex.as_str();
    while rest.len() > 2 && rest.starts_with("00") {
        rest = &rest[2..];
    }
    Some(rest.to_owned())
}

impl Security {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.trust_bundle.is_empty() && self.revoked_serials.is_empty() && self.revoked_identities.is_empty()
    }
}

/// How a listener accepts mesh mutual TLS (Istio's `PeerAuthentication` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MtlsMode {
    /// Mutual TLS only: plaintext connections are closed.
    Strict,
    /// Mutual TLS or plaintext, told apart by the connection's first byte.
    #[default]
    Permissive,
    /// Plaintext only.
    Disable,
}

/// A listener's mutual TLS: a mode for the listener and, optionally, per application port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListenerMtls {
    /// The mode for every port not listed in `ports`.
    #[serde(default)]
    pub mode: MtlsMode,
    /// Modes by the port a request is for (the port of its authority, which picks the
    /// inbound virtual host). A plaintext connection is accepted if any mode allows it; its
    /// requests for a `strict` port are then refused with 403.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl ListenerMtls {
    /// The mode for requests to `port`.
    pub fn mode_for(&self, port: Option<u16>) -> MtlsMode {
        port.and_then(|p| self.ports.get(&p).copied()).unwrap_or(self.mode)
    }

    /// Whether a TLS connection is accepted (some mode is not `disable`).
    pub fn accepts_tls(&self) -> bool {
        std::iter::once(self.mode)
            .chain(self.ports.values().copied())
            .any(|m| m != MtlsMode::Disable)
    }

    /// Whether a plaintext connection is accepted (some mode is not `strict`).
    pub fn accepts_plaintext(&self) -> bool {
        std::iter::once(self.mode)
            .chain(self.ports.values().copied())
            .any(|m| m != MtlsMode::Strict)
    }
}

/// How TLS is originated to a cluster's endpoints (a `DestinationRule`'s `tls.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamTlsMode {
    /// Mesh mutual TLS: the sidecar's workload certificate, the peer verified against the
    /// mesh trust bundle and (if listed) its SPIFFE ID.
    IstioMutual,
    /// One-way TLS (egress origination): the server verified against `ca_certificates`, or the
    /// system's roots, and its name.
    Simple,
    /// TLS with a client certificate from files (egress origination to a server that wants
    /// one): the server verified as with `simple`, the proxy presenting `client_certificate`.
    Mutual,
}

/// TLS towards a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Mutual (mesh) or one-way TLS.
    pub mode: UpstreamTlsMode,
    /// Server name sent (SNI) and, for `simple`, verified. Default: none for `istio_mutual`;
    /// required for `simple` unless the endpoints are addressed by IP and the certificate
    /// names the IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Identities the server may present: SPIFFE IDs for `istio_mutual`, DNS names for
    /// `simple`. Empty: any identity the trust bundle vouches for (`istio_mutual`), or the
    /// `sni` name (`simple`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Roots for `simple` and `mutual`, PEM. Default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// For `mutual`: the path, on the proxy's file system, of the certificate chain (PEM, leaf
    /// first) the proxy presents. Read when the snapshot is applied, and again whenever it
    /// changes; a file that cannot be read rejects the snapshot. Required with `mutual`,
    /// refused with the other modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// For `mutual`: the path of the certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    /// It stays on the proxy's machine; only the path travels in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Only endpoints marked `mesh: true` get TLS; the others get plaintext (Istio's auto
    /// mTLS: workloads with a sidecar get mutual TLS, the rest plaintext).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh_endpoints_only: bool,
}

/// TLS termination on a listener (a gateway's `tls.mode` SIMPLE or MUTUAL), with certificates
/// chosen by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// One-way, or mutual (clients present a certificate signed by `client_ca`).
    #[serde(default)]
    pub mode: ServerTlsMode,
    /// Certificates; the first whose `server_names` match the client's SNI is presented,
    /// else the first.
    pub certificates: Vec<TlsCertificate>,
    /// Roots client certificates are verified with, PEM. Required with `mutual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

/// A listener's TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ServerTlsMode {
    /// Server authentication only.
    #[default]
    Simple,
    /// Clients must present a certificate `client_ca` vouches for.
    Mutual,
}

/// A certificate a listener presents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// The certificate chain, PEM, leaf first.
    pub cert_chain: String,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
    /// Server names (SNI) it is presented for: exact, or `*.example.com`. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

impl std::fmt::Display for ServerTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerTlsMode::Simple => "simple",
            ServerTlsMode::Mutual => "mutual",
        })
    }
}
