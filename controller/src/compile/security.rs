//! Mesh mutual TLS: PeerAuthentication (how each workload's sidecar accepts connections)
//! and the identities clusters verify.
//!
//! A workload's mode is the first set (not `UNSET`) of: the PeerAuthentication selecting it
//! in its namespace (with `portLevelMtls` for single ports), its namespace's PeerAuthentication
//! without a selector, the mesh-wide one (no selector, in the root namespace `istio-system`);
//! else PERMISSIVE — Istio's precedence and default. Where several PeerAuthentications of the
//! same level apply, the first by origin and name wins and the others are reported.

use std::collections::BTreeMap;

use weft_api::{ListenerMtls, MtlsMode};

use super::registry::labels_match;
use crate::diagnostics::Diagnostic;
use crate::resources::{Kind, PeerMtls, Spec};
use crate::store::Store;

/// The namespace whose selector-less PeerAuthentication applies to the whole mesh.
pub(crate) const ROOT_NAMESPACE: &str = "istio-system";

/// One PeerAuthentication, checked.
#[derive(Debug, Clone)]
struct Policy {
    namespace: String,
    name: String,
    selector: Option<BTreeMap<String, String>>,
    /// `None`: UNSET (inherit).
    mode: Option<MtlsMode>,
    ports: BTreeMap<u16, Option<MtlsMode>>,
}

/// Every PeerAuthentication of the intent.
#[derive(Debug, Default)]
pub(crate) struct PeerAuthentications {
    policies: Vec<Policy>,
}

/// A mode as written; `Err` for an unknown one.
fn mode(written: Option<&PeerMtls>) -> Result<Option<MtlsMode>, String> {
    match written.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => Ok(None),
        Some("STRICT") => Ok(Some(MtlsMode::Strict)),
        Some("PERMISSIVE") => Ok(Some(MtlsMode::Permissive)),
        Some("DISABLE") => Ok(Some(MtlsMode::Disable)),
        Some(other) => Err(format!("unknown mode {other:?} (UNSET, DISABLE, PERMISSIVE or STRICT)")),
    }
}

impl PeerAuthentications {
    /// Checks every PeerAuthentication.
    pub(crate) fn build(store: &Store, diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut stored: Vec<_> = store.of_kind(Kind::PeerAuthentication).collect();
        stored.sort_by(|a, b| (&a.origin, a.namespace(), a.name()).cmp(&(&b.origin, b.namespace(), b.name())));
        let mut policies: Vec<Policy> = Vec::new();
        for stored in stored {
            let Spec::PeerAuthentication(spec) = &stored.resource.spec else {
                continue;
            };
            let at = stored.reference();
            let top = match mode(spec.mtls.as_ref()) {
                Ok(mode) => mode,
                Err(why) => {
                    diagnostics.push(Diagnostic::error(&at, "spec.mtls.mode", format!("{why}; ignored")));
                    continue;
                }
            };
            let selector = spec.selector.as_ref().map(|s| s.match_labels.clone());
            let mut ports = BTreeMap::new();
            for (port, written) in &spec.port_level_mtls {
                let field = format!("spec.portLevelMtls.{port}.mode");
                if selector.is_none() {
                    diagnostics.push(Diagnostic::warning(
                        &at,
                        "spec.portLevelMtls",
                        "port-level modes need a selector (as in Istio); ignored",
                    ));
                    break;
                }
                match mode(Some(written)) {
                    Ok(mode) => {
                        ports.insert(*port, mode);
                    }
                    Err(why) => diagnostics.push(Diagnostic::error(&at, field, format!("{why}; ignored"))),
                }
            }
            let level = |p: &Policy| (p.namespace.clone(), p.selector.is_some());
            let policy = Policy {
                namespace: stored.namespace().to_owned(),
                name: stored.name().to_owned(),
                selector,
                mode: top,
                ports,
            };
            if policy.selector.is_none()
                && let Some(first) = policies.iter().find(|p| level(p) == level(&policy))
            {
                diagnostics.push(Diagnostic::error(
                    &at,
                    "spec",
                    format!(
                        "namespace {} already has PeerAuthentication {} without a selector (first by origin and name); this one is ignored",
                        policy.namespace, first.name
                    ),
                ));
                continue;
            }
            policies.push(policy);
        }
        Self { policies }
    }

    /// The PeerAuthentications applying to a workload: the one selecting it, its namespace's,
    /// the mesh's (each may be absent).
    fn levels(&self, namespace: &str, labels: &BTreeMap<String, String>) -> [Option<&Policy>; 3] {
        let selecting = self
            .policies
            .iter()
            .find(|p| p.namespace == namespace && p.selector.as_ref().is_some_and(|s| labels_match(s, labels)));
        let namespaced = self
            .policies
            .iter()
            .find(|p| p.namespace == namespace && p.selector.is_none());
        let mesh = self
            .policies
            .iter()
            .find(|p| p.namespace == ROOT_NAMESPACE && p.selector.is_none());
        [selecting, namespaced, mesh]
    }

    /// A workload's mode for every port not named by a port-level mode.
    pub(crate) fn mode(&self, namespace: &str, labels: &BTreeMap<String, String>) -> MtlsMode {
        self.levels(namespace, labels)
            .into_iter()
            .flatten()
            .find_map(|p| p.mode)
            .unwrap_or(MtlsMode::Permissive)
    }

    /// The inbound listener's mutual TLS for a workload whose port `target` is also reached
    /// as each of `aliases[target]` (Service ports mapping to it): the workload's mode, and a
    /// mode for each port a port-level setting names (under the target port and its
    /// aliases, the ports a request's authority can carry).
    pub(crate) fn listener(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        aliases: &BTreeMap<u16, Vec<u16>>,
    ) -> ListenerMtls {
        let mode = self.mode(namespace, labels);
        let mut ports = BTreeMap::new();
        if let [Some(selecting), ..] = self.levels(namespace, labels) {
            for (port, port_mode) in &selecting.ports {
                let port_mode = port_mode.unwrap_or(mode);
                if port_mode == mode {
                    continue;
                }
                for p in std::iter::once(port).chain(aliases.get(port).into_iter().flatten()) {
                    ports.insert(*p, port_mode);
                }
            }
        }
        ListenerMtls { mode, ports }
    }
}

/// A workload's SPIFFE ID.
pub(crate) fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}
