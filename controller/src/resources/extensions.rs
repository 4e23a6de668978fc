//! Istio's `extensions.istio.io/v1alpha1 WasmPlugin`: a Wasm module added to the filter chain of
//! the workloads it selects.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::de;
use super::schema::{ANY, Field, Node, SCALAR, SCALAR_MAP};

/// `WasmPlugin.spec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPluginSpec {
    /// Workloads in the plugin's namespace carrying these labels. Absent: all of them.
    #[serde(default)]
    pub selector: Option<PluginSelector>,
    /// Where the module is: `oci://`, `file://`, `http(s)://`; no scheme means `oci://`.
    pub url: String,
    /// The module's sha256 (64 hex digits). Absent: the controller pins the url.
    #[serde(default)]
    pub sha256: Option<String>,
    /// `AUTHN`, `AUTHZ`, `STATS` or unspecified (last).
    #[serde(default)]
    pub phase: Option<String>,
    /// Order within a phase, higher first. Default: 0.
    #[serde(default)]
    pub priority: Option<i64>,
    /// The plugin's configuration.
    #[serde(default)]
    pub plugin_config: serde_yaml::Value,
    /// The root id the plugin is configured under.
    #[serde(default)]
    pub plugin_name: Option<String>,
    /// `FAIL_CLOSE` (default), `FAIL_OPEN`, `FAIL_RELOAD`.
    #[serde(default)]
    pub fail_strategy: Option<String>,
    /// Traffic the plugin applies to (any selector). Empty: all traffic.
    #[serde(default, rename = "match", deserialize_with = "de::list")]
    pub matches: Vec<TrafficSelector>,
    /// `HTTP` (default); `NETWORK` is refused.
    #[serde(default, rename = "type")]
    pub plugin_type: Option<String>,
    /// `IfNotPresent`, `Always`: modules are pinned by digest when the intent changes.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// Attachment to Gateway API resources: refused (use `selector`).
    #[serde(default)]
    pub target_ref: Option<serde_yaml::Value>,
    /// Attachment to Gateway API resources: refused (use `selector`).
    #[serde(default, deserialize_with = "de::list")]
    pub target_refs: Vec<serde_yaml::Value>,
}

/// A label selector (`matchLabels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSelector {
    /// The labels.
    #[serde(default, deserialize_with = "de::string_map")]
    pub match_labels: BTreeMap<String, String>,
}

/// Which traffic a plugin applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSelector {
    /// `CLIENT` (outbound and gateway), `SERVER` (inbound), `CLIENT_AND_SERVER` or `UNDEFINED`
    /// (both, the default).
    #[serde(default)]
    pub mode: Option<String>,
}

static SELECTOR: Node = Node::Object(&[("matchLabels", Field::Known(&SCALAR_MAP))]);
static TRAFFIC_SELECTOR: Node = Node::Object(&[
    ("mode", Field::Known(&SCALAR)),
    (
        "ports",
        Field::Unsupported("a plugin applies to every port of the traffic direction it selects"),
    ),
]);

pub(super) static WASM_PLUGIN_SPEC: Node = Node::Object(&[
    ("selector", Field::Known(&SELECTOR)),
    ("url", Field::Known(&SCALAR)),
    ("sha256", Field::Known(&SCALAR)),
    ("phase", Field::Known(&SCALAR)),
    ("priority", Field::Known(&SCALAR)),
    ("pluginConfig", Field::Known(&ANY)),
    ("pluginName", Field::Known(&SCALAR)),
    ("failStrategy", Field::Known(&SCALAR)),
    ("match", Field::Known(&Node::ListOf(&TRAFFIC_SELECTOR))),
    ("type", Field::Known(&SCALAR)),
    ("imagePullPolicy", Field::Known(&SCALAR)),
    ("targetRef", Field::Known(&ANY)),
    ("targetRefs", Field::Known(&ANY)),
    (
        "imagePullSecret",
        Field::Unsupported("modules are pulled without credentials"),
    ),
    ("vmConfig", Field::Unsupported("no VM environment variables")),
    ("verificationKey", Field::Unsupported("modules are verified by sha256")),
]);
