//! Weft's own kinds (`weft.dev/v1alpha1`): `Workload` (a local workload instance),
//! `WasmFilter` (a named module with its default config) and `FilterChain` (filters attached
//! to workloads by label, inbound or outbound).

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_api::FailurePolicy;

use super::de;
use super::schema::{ANY, Field, Node, SCALAR, SCALAR_MAP};

/// `Workload.spec`: one instance of an application.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// IP address of the instance (`127.0.0.1` in local mode).
    pub address: String,
    /// Service account (identity). Default: `default`.
    #[serde(default)]
    pub service_account: Option<String>,
    /// The application's ports by name, in the order written (the first is the inbound
    /// default).
    #[serde(default, deserialize_with = "de::ordered_ports")]
    pub ports: Vec<(String, u16)>,
    /// The instance's sidecar. Absent: peers reach the application directly.
    #[serde(default)]
    pub sidecar: Option<SidecarPorts>,
}

/// Where a workload's sidecar listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarPorts {
    /// Port of the inbound listener (on the workload's address), which peers send to.
    pub inbound: u16,
    /// Port of the outbound listener (on 127.0.0.1), the application's `HTTP_PROXY`.
    pub outbound: u16,
}

/// `WasmFilter.spec`: a named, versioned module with its default configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmFilterSpec {
    /// Where the module is: `oci://`, `file://`, `http(s)://`; no scheme means `oci://`.
    pub url: String,
    /// The module's sha256. Absent: the controller pins the url.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A version label (informational).
    #[serde(default)]
    pub version: Option<String>,
    /// The default configuration.
    #[serde(default)]
    pub config: serde_yaml::Value,
    /// Failure policy. Default: `fail_closed`.
    #[serde(default)]
    pub failure_policy: Option<FailurePolicy>,
}

/// `FilterChain.spec`: filters for the workloads it selects, in one direction.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainSpec {
    /// Workloads in the chain's namespace carrying these labels. Absent: all of them.
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    /// `inbound` (traffic to the workload) or `outbound` (traffic from it, and gateways).
    pub direction: Direction,
    /// The filters, in order.
    #[serde(default, deserialize_with = "de::list")]
    pub filters: Vec<ChainFilter>,
}

/// A label selector (`matchLabels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// The labels.
    #[serde(default, deserialize_with = "de::string_map")]
    pub match_labels: BTreeMap<String, String>,
}

/// A FilterChain's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Traffic to the workload (its inbound listener).
    Inbound,
    /// Traffic from the workload (its outbound listener, and its gateway listeners).
    Outbound,
}

/// One filter of a chain.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainFilter {
    /// Name of a WasmFilter in the chain's namespace.
    pub filter: String,
    /// Instance name (logs, metrics, plugin name). Default: `filter`.
    #[serde(default)]
    pub name: Option<String>,
    /// Configuration; replaces the WasmFilter's default when given.
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
    /// Failure policy; replaces the WasmFilter's when given.
    #[serde(default)]
    pub failure_policy: Option<FailurePolicy>,
}

static SIDECAR: Node = Node::Object(&[("inbound", Field::Known(&SCALAR)), ("outbound", Field::Known(&SCALAR))]);

pub(super) static WORKLOAD_SPEC: Node = Node::Object(&[
    ("address", Field::Known(&SCALAR)),
    ("serviceAccount", Field::Known(&SCALAR)),
    ("ports", Field::Known(&SCALAR_MAP)),
    ("sidecar", Field::Known(&SIDECAR)),
]);

pub(super) static WASM_FILTER_SPEC: Node = Node::Object(&[
    ("url", Field::Known(&SCALAR)),
    ("sha256", Field::Known(&SCALAR)),
    ("version", Field::Known(&SCALAR)),
    ("config", Field::Known(&ANY)),
    ("failurePolicy", Field::Known(&SCALAR)),
]);

static LABEL_SELECTOR: Node = Node::Object(&[("matchLabels", Field::Known(&SCALAR_MAP))]);
static CHAIN_FILTER: Node = Node::Object(&[
    ("filter", Field::Known(&SCALAR)),
    ("name", Field::Known(&SCALAR)),
    ("config", Field::Known(&ANY)),
    ("failurePolicy", Field::Known(&SCALAR)),
]);

pub(super) static FILTER_CHAIN_SPEC: Node = Node::Object(&[
    ("selector", Field::Known(&LABEL_SELECTOR)),
    ("direction", Field::Known(&SCALAR)),
    ("filters", Field::Known(&Node::ListOf(&CHAIN_FILTER))),
]);
