//! `security.istio.io` kinds: PeerAuthentication (how a workload's sidecar accepts mutual
//! TLS).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::de;
use super::schema::{Field, Node, SCALAR, SCALAR_MAP};

/// `PeerAuthentication.spec`: the mutual TLS mode of the workloads it selects (all of the
/// namespace without a selector; the whole mesh in the root namespace).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// The workloads, by labels; absent: every workload of the namespace.
    #[serde(default)]
    pub selector: Option<MatchLabels>,
    /// The mode for every port.
    #[serde(default)]
    pub mtls: Option<PeerMtls>,
    /// Modes by the workload's (target) port; only with a selector.
    #[serde(default, deserialize_with = "de::port_map")]
    pub port_level_mtls: BTreeMap<u16, PeerMtls>,
}

/// `selector.matchLabels`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabels {
    /// The labels a workload must carry.
    #[serde(default, deserialize_with = "de::string_map")]
    pub match_labels: BTreeMap<String, String>,
}

/// A mutual TLS mode: `UNSET` (inherit), `DISABLE`, `PERMISSIVE`, `STRICT`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    /// The mode; absent means `UNSET`.
    #[serde(default)]
    pub mode: Option<String>,
}

static PEER_MTLS: Node = Node::Object(&[("mode", Field::Known(&SCALAR))]);
static SELECTOR: Node = Node::Object(&[("matchLabels", Field::Known(&SCALAR_MAP))]);

pub(super) static PEER_AUTHENTICATION_SPEC: Node = Node::Object(&[
    ("selector", Field::Known(&SELECTOR)),
    ("mtls", Field::Known(&PEER_MTLS)),
    ("portLevelMtls", Field::Known(&Node::MapOf(&PEER_MTLS))),
]);
