//! The CA's ledger: the certificates it issued (kept until they expire) and the revocations
//! (by serial, or by identity), kept in `<data>/ca/ledger.json` so a restart forgets
//! nothing. The mesh-wide part of every snapshot, [`Security`] (the trust bundle and the
//! revocations), is published from here: a revocation reaches every sidecar with the next
//! push, and its sidecar refuses handshakes with the revoked peer from then on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weft_api::{Security, normalize_serial, pb};

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    serial: String,
    spiffe_id: String,
    workload: String,
    issued_unix_ms: i64,
    not_after_unix_ms: i64,
}

/// What the ledger file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    issued: Vec<Record>,
    revoked_serials: BTreeSet<String>,
    revoked_identities: BTreeSet<String>,
}

/// Why a revocation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Neither or both of serial and identity were given.
    #[error("name exactly one of a serial and a SPIFFE ID")]
    Target,
    /// The serial is not hex.
    #[error("serial {0:?} is not a hex number")]
    Serial(String),
    /// The identity is not a SPIFFE ID.
    #[error("{0:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<account>)")]
    Identity(String),
    /// The ledger could not be written; nothing changed.
    #[error("cannot write the ledger {path}: {source}")]
    Write {
        /// The ledger file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The certificate ledger (see the module docs).
pub struct Ledger {
    path: PathBuf,
    state: Mutex<State>,
    trust_bundle: Vec<String>,
    security: watch::Sender<Arc<Security>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Ledger {
    /// Loads the ledger at `path` (none yet: an empty one). `trust_bundle` is the PEM roots
    /// every sidecar trusts (the CA's, plus any kept during a root rotation).
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn load(path: &Path, trust_bundle: Vec<String>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let state = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let security = watch::Sender::new(Arc::new(Self::security_of(&state, &trust_bundle)));
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(state),
            trust_bundle,
            security,
        })
    }

    fn security_of(state: &State, trust_bundle: &[String]) -> Security {
        Security {
            trust_bundle: trust_bundle.to_vec(),
            revoked_serials: state.revoked_serials.iter().cloned().collect(),
            revoked_identities: state.revoked_identities.iter().cloned().collect(),
        }
    }

    /// The trust bundle and revocations every snapshot carries, updated on every revocation.
    pub fn security(&self) -> watch::Receiver<Arc<Security>> {
        self.security.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops expired certificates, and revoked serials of certificates that expired (an
    /// expired certificate is refused anyway); serials the ledger never issued are kept.
    fn prune(state: &mut State, now: i64) {
        let expired: BTreeSet<String> = state
            .issued
            .iter()
            .filter(|r| r.not_after_unix_ms <= now)
            .map(|r| r.serial.clone())
            .collect();
        state.issued.retain(|r| r.not_after_unix_ms > now);
        state.revoked_serials.retain(|s| !expired.contains(s));
    }

    fn save(&self, state: &State) -> Result<(), RevokeError> {
        let write_error = |source| RevokeError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let text = serde_json::to_string_pretty(state).map_err(|e| write_error(std::io::Error::other(e)))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_error)?;
        }
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, text).map_err(write_error)?;
        std::fs::rename(&temporary, &self.path).map_err(write_error)
    }

    /// Records an issued certificate.
    pub fn record(&self, serial: &str, spiffe_id: &str, workload: &str, not_after: SystemTime) {
        let mut state = self.lock();
        let now = unix_ms(SystemTime::now());
        Self::prune(&mut state, now);
        state.issued.push(Record {
            serial: normalize_serial(serial).unwrap_or_else(|| serial.to_owned()),
            spiffe_id: spiffe_id.to_owned(),
            workload: workload.to_owned(),
            issued_unix_ms: now,
            not_after_unix_ms: unix_ms(not_after),
        });
        if let Err(error) = self.save(&state) {
            tracing::warn!(%error, "the issued certificate is not in the ledger file");
        }
    }

    /// Whether a certificate with this serial and identity is revoked.
    pub fn is_revoked(&self, serial: &str, spiffe_id: &str) -> bool {
        let state = self.lock();
        normalize_serial(serial).is_some_and(|s| state.revoked_serials.contains(&s))
            || state.revoked_identities.contains(spiffe_id)
    }

    /// The ledger as `weftctl cert ls` shows it.
    pub fn list(&self) -> pb::ListCertificatesResponse {
        let mut state = self.lock();
        Self::prune(&mut state, unix_ms(SystemTime::now()));
        let certificates = state
            .issued
            .iter()
            .map(|r| pb::IssuedCertificate {
                serial: r.serial.clone(),
                spiffe_id: r.spiffe_id.clone(),
                workload: r.workload.clone(),
                issued_unix_ms: r.issued_unix_ms,
                not_after_unix_ms: r.not_after_unix_ms,
                revoked: state.revoked_serials.contains(&r.serial) || state.revoked_identities.contains(&r.spiffe_id),
            })
            .collect();
        pb::ListCertificatesResponse {
            certificates,
            revoked_serials: state.revoked_serials.iter().cloned().collect(),
            revoked_identities: state.revoked_identities.iter().cloned().collect(),
        }
    }

    /// Revokes a serial or an identity; returns how many unexpired issued certificates that
    /// covers. The ledger file is written before the revocation is published.
    ///
    /// # Errors
    /// See [`RevokeError`]; on error nothing changes.
    pub fn revoke(&self, serial: &str, spiffe_id: &str) -> Result<u32, RevokeError> {
        let mut state = self.lock();
        let now = unix_ms(SystemTime::now());
        Self::prune(&mut state, now);
        let before = (state.revoked_serials.clone(), state.revoked_identities.clone());
        let covered = match (serial.trim(), spiffe_id.trim()) {
            (serial, "") if !serial.is_empty() => {
                let serial = normalize_serial(serial).ok_or_else(|| RevokeError::Serial(serial.to_owned()))?;
                let covered = state.issued.iter().filter(|r| r.serial == serial).count();
                state.revoked_serials.insert(serial);
                covered
            }
            ("", id) if !id.is_empty() => {
                if !id.starts_with("spiffe://") || id.len() <= "spiffe://".len() {
                    return Err(RevokeError::Identity(id.to_owned()));
                }
                let covered = state.issued.iter().filter(|r| r.spiffe_id == id).count();
                state.revoked_identities.insert(id.to_owned());
                covered
            }
            _ => return Err(RevokeError::Target),
        };
        if let Err(error) = self.save(&state) {
            (state.revoked_serials, state.revoked_identities) = before;
            return Err(error);
        }
        tracing::warn!(serial, spiffe_id, covered, "revoked");
        self.security
            .send_replace(Arc::new(Self::security_of(&state, &self.trust_bundle)));
        Ok(u32::try_from(covered).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ledger(dir: &Path) -> Ledger {
        Ledger::load(&dir.join("ledger.json"), vec!["ROOT".into()]).expect("ledger")
    }

    #[test]
    fn revocations_survive_a_restart_and_are_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let soon = SystemTime::now() + Duration::from_secs(3600);
        {
            let ledger = ledger(dir.path());
            let security = ledger.security();
            ledger.record("0a:1B", "spiffe://cluster.local/ns/default/sa/a", "default/a", soon);
            ledger.record("0c", "spiffe://cluster.local/ns/default/sa/b", "default/b", soon);
            assert_eq!(ledger.revoke("0A1b", "").expect("revoke serial"), 1);
            assert_eq!(security.borrow().revoked_serials, vec!["0a1b".to_owned()]);
            assert_eq!(
                ledger
                    .revoke("", "spiffe://cluster.local/ns/default/sa/b")
                    .expect("revoke identity"),
                1
            );
            assert!(ledger.is_revoked("0c", "spiffe://cluster.local/ns/default/sa/b"));
        }
        let ledger = ledger(dir.path());
        let listed = ledger.list();
        assert_eq!(listed.certificates.len(), 2);
        assert!(listed.certificates.iter().all(|c| c.revoked));
        let security = ledger.security();
        assert_eq!(security.borrow().trust_bundle, vec!["ROOT".to_owned()]);
        assert_eq!(
            security.borrow().revoked_identities,
            vec!["spiffe://cluster.local/ns/default/sa/b".to_owned()]
        );
    }

    #[test]
    fn bad_revocations_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = ledger(dir.path());
        assert!(matches!(ledger.revoke("", ""), Err(RevokeError::Target)));
        assert!(matches!(ledger.revoke("01", "spiffe://x"), Err(RevokeError::Target)));
        assert!(matches!(ledger.revoke("xyz", ""), Err(RevokeError::Serial(_))));
        assert!(matches!(
            ledger.revoke("", "cluster.local/ns/a"),
            Err(RevokeError::Identity(_))
        ));
        assert!(ledger.security().borrow().revoked_serials.is_empty());
        assert!(!dir.path().join("ledger.json").exists());
    }

    #[test]
    fn expired_certificates_leave_the_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = ledger(dir.path());
        let past = SystemTime::now() - Duration::from_secs(1);
        ledger.record("01", "spiffe://td/ns/a/sa/b", "a/b", past);
        assert!(ledger.list().certificates.is_empty());
        // A serial the ledger does not know (issued before it, or expired) is still revoked.
        assert_eq!(ledger.revoke("02", "").expect("revoke an unknown serial"), 0);
        assert_eq!(ledger.list().revoked_serials, vec!["02".to_owned()]);
    }
}
