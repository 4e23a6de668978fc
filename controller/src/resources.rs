//! The intent's resources as typed Rust structs: Kubernetes `Service`, Istio's networking and
//! extension resources, and Weft's own `Workload`, `WasmFilter` and `FilterChain`.
//!
//! Each spec holds only the fields Weft implements; the store checks a YAML document against
//! the kind's field schema first (unknown fields refuse the resource, unsupported ones
//! are reported and dropped), then parses it. Field names follow the APIs (camelCase in YAML).
//! `docs/intent.md` lists every field and what it compiles into.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::diagnostics::{Diagnostic, ResourceRef};

mod extensions;
mod istio;
mod kube;
pub(crate) mod schema;
mod security;
mod weft;

pub use extensions::{PluginSelector, TrafficSelector, WasmPluginSpec};
pub use istio::{
    Abort, ClientTls, ConnectionPool, ConsistentHash, Delay, Destination, DestinationRuleSpec, DirectResponse,
    DirectResponseBody, Fault, GatewayPort, GatewayServer, GatewaySpec, HeaderOperations, Headers, HttpConnectionPool,
    HttpCookie, HttpMatch, HttpRoute, HttpRouteDestination, LoadBalancer, OutlierDetection, Percent, PortSelector,
    PortTrafficPolicy, Redirect, RegexRewrite, Retry, Rewrite, ServerTlsSettings, ServiceEntryPort, ServiceEntrySpec,
    StringMatch, Subset, TcpConnectionPool, TlsMatch, TlsRoute, TrafficPolicy, VirtualServiceSpec, WorkloadEntrySpec,
    WorkloadSelector,
};
pub use kube::{IntOrString, SecretSpec, ServicePort, ServiceSpec};
pub use security::{MatchLabels, PeerAuthenticationSpec, PeerMtls};
pub use weft::{ChainFilter, Direction, FilterChainSpec, LabelSelector, SidecarPorts, WasmFilterSpec, WorkloadSpec};

/// The kinds Weft compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1 Service`.
    Service,
    /// `networking.istio.io VirtualService`.
    VirtualService,
    /// `networking.istio.io DestinationRule`.
    DestinationRule,
    /// `networking.istio.io Gateway`.
    Gateway,
    /// `networking.istio.io ServiceEntry`.
    ServiceEntry,
    /// `networking.istio.io WorkloadEntry`.
    WorkloadEntry,
    /// `extensions.istio.io WasmPlugin`.
    WasmPlugin,
    /// `weft.dev Workload`.
    Workload,
    /// `weft.dev WasmFilter`.
    WasmFilter,
    /// `weft.dev FilterChain`.
    FilterChain,
    /// `security.istio.io PeerAuthentication`.
    PeerAuthentication,
    /// `v1 Secret` (gateway certificates).
    Secret,
}

const ISTIO_NETWORKING: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 12] = [
        Kind::Service,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::WasmPlugin,
        Kind::Workload,
        Kind::WasmFilter,
        Kind::FilterChain,
        Kind::PeerAuthentication,
        Kind::Secret,
    ];

    /// The kind's name, as in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::WasmPlugin => "WasmPlugin",
            Kind::Workload => "Workload",
            Kind::WasmFilter => "WasmFilter",
            Kind::FilterChain => "FilterChain",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Secret => "Secret",
        }
    }

    /// The `apiVersion`s accepted for the kind.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Service | Kind::Secret => &["v1"],
            Kind::VirtualService | Kind::DestinationRule | Kind::Gateway | Kind::ServiceEntry | Kind::WorkloadEntry => {
                ISTIO_NETWORKING
            }
            Kind::WasmPlugin => &["extensions.istio.io/v1alpha1"],
            Kind::Workload | Kind::WasmFilter | Kind::FilterChain => &["weft.dev/v1alpha1"],
            Kind::PeerAuthentication => &["security.istio.io/v1", "security.istio.io/v1beta1"],
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn spec_schema(self) -> &'static schema::Node {
        match self {
            Kind::Service => &kube::SERVICE_SPEC,
            Kind::VirtualService => &istio::VIRTUAL_SERVICE_SPEC,
            Kind::DestinationRule => &istio::DESTINATION_RULE_SPEC,
            Kind::Gateway => &istio::GATEWAY_SPEC,
            Kind::ServiceEntry => &istio::SERVICE_ENTRY_SPEC,
            Kind::WorkloadEntry => &istio::WORKLOAD_ENTRY_SPEC,
            Kind::WasmPlugin => &extensions::WASM_PLUGIN_SPEC,
            Kind::Workload => &weft::WORKLOAD_SPEC,
            Kind::WasmFilter => &weft::WASM_FILTER_SPEC,
            Kind::FilterChain => &weft::FILTER_CHAIN_SPEC,
            Kind::PeerAuthentication => &security::PEER_AUTHENTICATION_SPEC,
            Kind::Secret => &kube::SECRET_SPEC,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kubernetes object metadata: what Weft reads of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// The name.
    pub name: String,
    /// The namespace. Default: `default`.
    pub namespace: String,
    /// Labels (a Workload's labels select it; other kinds' labels are not used).
    pub labels: BTreeMap<String, String>,
    /// Annotations (not used).
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata with a name and namespace and nothing else.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            ..Self::default()
        }
    }
}

/// One resource: metadata and a typed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Name, namespace, labels.
    pub metadata: Metadata,
    /// The kind's spec.
    pub spec: Spec,
}

/// A resource's spec, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A Service.
    Service(ServiceSpec),
    /// A VirtualService.
    VirtualService(VirtualServiceSpec),
    /// A DestinationRule.
    DestinationRule(DestinationRuleSpec),
    /// A Gateway.
    Gateway(GatewaySpec),
    /// A ServiceEntry.
    ServiceEntry(ServiceEntrySpec),
    /// A WorkloadEntry.
    WorkloadEntry(WorkloadEntrySpec),
    /// A WasmPlugin.
    WasmPlugin(WasmPluginSpec),
    /// A Workload.
    Workload(WorkloadSpec),
    /// A WasmFilter.
    WasmFilter(WasmFilterSpec),
    /// A FilterChain.
    FilterChain(FilterChainSpec),
    /// A PeerAuthentication.
    PeerAuthentication(PeerAuthenticationSpec),
    /// A Secret.
    Secret(SecretSpec),
}

impl Resource {
    /// A resource from its parts (builder fixtures).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, spec: impl Into<Spec>) -> Self {
        Self {
            metadata: Metadata::new(namespace, name),
            spec: spec.into(),
        }
    }

    /// Adds a label (builder fixtures).
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.labels.insert(key.into(), value.into());
        self
    }

    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match &self.spec {
            Spec::Service(_) => Kind::Service,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::WasmPlugin(_) => Kind::WasmPlugin,
            Spec::Workload(_) => Kind::Workload,
            Spec::WasmFilter(_) => Kind::WasmFilter,
            Spec::FilterChain(_) => Kind::FilterChain,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::Secret(_) => Kind::Secret,
        }
    }
}

macro_rules! spec_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Spec {
            fn from(spec: $ty) -> Self {
                Spec::$variant(spec)
            }
        })*
    };
}

spec_from!(
    Service(ServiceSpec),
    VirtualService(VirtualServiceSpec),
    DestinationRule(DestinationRuleSpec),
    Gateway(GatewaySpec),
    ServiceEntry(ServiceEntrySpec),
    WorkloadEntry(WorkloadEntrySpec),
    WasmPlugin(WasmPluginSpec),
    Workload(WorkloadSpec),
    WasmFilter(WasmFilterSpec),
    FilterChain(FilterChainSpec),
    PeerAuthentication(PeerAuthenticationSpec),
    Secret(SecretSpec),
);

/// Kinds Istio (or Kubernetes) defines that Weft does not compile yet, reported as such.
const KNOWN_UNSUPPORTED: &[&str] = &[
    "AuthorizationPolicy",
    "RequestAuthentication",
    "Sidecar",
    "EnvoyFilter",
    "WorkloadGroup",
    "ProxyConfig",
    "Telemetry",
];

static METADATA: schema::Node = schema::Node::Object(&[
    ("name", schema::Field::Known(&schema::SCALAR)),
    ("namespace", schema::Field::Known(&schema::SCALAR)),
    ("labels", schema::Field::Known(&schema::SCALAR_MAP)),
    ("annotations", schema::Field::Known(&schema::SCALAR_MAP)),
    ("uid", schema::Field::Ignored),
    ("resourceVersion", schema::Field::Ignored),
    ("generation", schema::Field::Ignored),
    ("creationTimestamp", schema::Field::Ignored),
    ("deletionTimestamp", schema::Field::Ignored),
    ("deletionGracePeriodSeconds", schema::Field::Ignored),
    ("managedFields", schema::Field::Ignored),
    ("ownerReferences", schema::Field::Ignored),
    ("finalizers", schema::Field::Ignored),
    ("generateName", schema::Field::Ignored),
    ("selfLink", schema::Field::Ignored),
]);

/// The result of parsing one YAML document: the resources it held (a `List` holds several)
/// and the diagnostics. Cloning it shares the resources: the controller keeps each file's
/// `Parsed` between compiles and the store it builds for each compile holds the same ones.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    pub(crate) resources: Vec<std::sync::Arc<Resource>>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

/// Parses one YAML document (1-based `document` within `origin`). An empty document yields
/// nothing; a `List` yields its items.
pub(crate) fn parse_document(origin: &str, document: usize, value: Value, parsed: &mut Parsed) {
    match value {
        Value::Null => {}
        Value::Mapping(mut map) => {
            let kind = map.get("kind").and_then(Value::as_str).map(str::to_owned);
            if kind.as_deref() == Some("List") {
                match map.remove("items") {
                    Some(Value::Sequence(items)) => {
                        for item in items {
                            parse_document(origin, document, item, parsed);
                        }
                    }
                    Some(Value::Null) | None => {}
                    Some(_) => {
                        parsed
                            .diagnostics
                            .push(Diagnostic::document(origin, document, "a List's items must be a list"))
                    }
                }
                return;
            }
            parse_object(origin, document, map, parsed);
        }
        Value::Tagged(tagged) => parse_document(origin, document, tagged.value, parsed),
        _ => parsed.diagnostics.push(Diagnostic::document(
            origin,
            document,
            "not a resource: expected a mapping with apiVersion, kind, metadata and spec",
        )),
    }
}

fn parse_object(origin: &str, document: usize, mut map: serde_yaml::Mapping, parsed: &mut Parsed) {
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
    let (Some(api_version), Some(kind_name)) = (text("apiVersion"), text("kind")) else {
        parsed.diagnostics.push(Diagnostic::document(
            origin,
            document,
            "not a resource: apiVersion and kind are required",
        ));
        return;
    };

    // Metadata first: every later diagnostic names the resource.
    let mut metadata_value = map.remove("metadata").unwrap_or(Value::Null);
    let mut findings = schema::Findings::default();
    schema::walk(&mut metadata_value, &METADATA, "metadata", &mut findings);
    let metadata = match parse_metadata(metadata_value) {
        Ok(metadata) => metadata,
        Err(message) => {
            parsed.diagnostics.push(Diagnostic::document(
                origin,
                document,
                format!("{kind_name}: {message}"),
            ));
            return;
        }
    };
    let at = ResourceRef {
        kind: &kind_name,
        namespace: &metadata.namespace,
        name: &metadata.name,
        origin,
    };

    let Some(kind) = Kind::from_name(&kind_name) else {
        let why = if KNOWN_UNSUPPORTED.contains(&kind_name.as_str()) {
            format!("{kind_name} ({api_version}) is not supported yet; the resource is ignored")
        } else {
            format!("kind {kind_name} ({api_version}) is not supported yet; the resource is ignored")
        };
        parsed.diagnostics.push(Diagnostic::warning(&at, "", why));
        return;
    };
    if !kind.api_versions().contains(&api_version.as_str()) {
        parsed.diagnostics.push(Diagnostic::warning(
            &at,
            "apiVersion",
            format!(
                "{api_version} is not supported yet (supported: {}); the resource is ignored",
                kind.api_versions().join(", ")
            ),
        ));
        return;
    }

    // A Secret has no spec: its top-level fields are read as one.
    if kind == Kind::Secret {
        let mut spec = serde_yaml::Mapping::new();
        for key in ["type", "data", "stringData", "immutable"] {
            if let Some(value) = map.remove(key) {
                spec.insert(Value::from(key), value);
            }
        }
        map.insert(Value::from("spec"), Value::Mapping(spec));
    }
    for (key, _) in &map {
        match key.as_str() {
            Some("apiVersion" | "kind" | "spec" | "status") => {}
            Some(other) => findings.unknown.push(other.to_owned()),
            None => findings
                .malformed
                .push((String::new(), "a key is not a string".to_owned())),
        }
    }
    let mut spec = map.remove("spec").unwrap_or(Value::Null);
    if spec.is_null() {
        spec = Value::Mapping(serde_yaml::Mapping::new());
    }
    schema::walk(&mut spec, kind.spec_schema(), "spec", &mut findings);

    let mut refused = false;
    for path in findings.unknown {
        refused = true;
        parsed.diagnostics.push(Diagnostic::error(
            &at,
            path,
            "unknown field (not in the API); the resource is refused",
        ));
    }
    for (path, message) in findings.malformed {
        refused = true;
        parsed.diagnostics.push(Diagnostic::error(
            &at,
            path,
            format!("{message}; the resource is refused"),
        ));
    }
    for (path, why) in findings.unsupported {
        parsed.diagnostics.push(Diagnostic::warning(
            &at,
            path,
            format!("not supported yet ({why}); applied without it"),
        ));
    }
    if refused {
        return;
    }

    let spec = match kind {
        Kind::Service => typed(spec).map(Spec::Service),
        Kind::VirtualService => typed(spec).map(Spec::VirtualService),
        Kind::DestinationRule => typed(spec).map(Spec::DestinationRule),
        Kind::Gateway => typed(spec).map(Spec::Gateway),
        Kind::ServiceEntry => typed(spec).map(Spec::ServiceEntry),
        Kind::WorkloadEntry => typed(spec).map(Spec::WorkloadEntry),
        Kind::WasmPlugin => typed(spec).map(Spec::WasmPlugin),
        Kind::Workload => typed(spec).map(Spec::Workload),
        Kind::WasmFilter => typed(spec).map(Spec::WasmFilter),
        Kind::FilterChain => typed(spec).map(Spec::FilterChain),
        Kind::PeerAuthentication => typed(spec).map(Spec::PeerAuthentication),
        Kind::Secret => typed(spec).map(Spec::Secret),
    };
    match spec {
        Ok(spec) => parsed.resources.push(std::sync::Arc::new(Resource { metadata, spec })),
        Err((path, message)) => {
            parsed.diagnostics.push(Diagnostic::error(
                &at,
                path,
                format!("{message}; the resource is refused"),
            ));
        }
    }
}

fn parse_metadata(value: Value) -> Result<Metadata, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        name: Option<String>,
        namespace: Option<String>,
        #[serde(default, deserialize_with = "de::string_map")]
        labels: BTreeMap<String, String>,
        #[serde(default, deserialize_with = "de::string_map")]
        annotations: BTreeMap<String, String>,
    }
    let raw: Raw = match value {
        Value::Null => return Err("metadata.name is required".to_owned()),
        value => {
            serde_path_to_error::deserialize(value).map_err(|e| format!("metadata.{}: {}", e.path(), e.inner()))?
        }
    };
    let name = raw.name.filter(|n| !n.is_empty()).ok_or("metadata.name is required")?;
    Ok(Metadata {
        name,
        namespace: raw
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        labels: raw.labels,
        annotations: raw.annotations,
    })
}

fn typed<T: DeserializeOwned>(spec: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        (field, e.inner().to_string())
    })
}

/// Deserialization helpers shared by the resource modules.
pub(crate) mod de {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};
    use serde_yaml::Value;

    /// A duration written as Istio writes them (`5s`, `250ms`, `1.5s`, `1m`).
    pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| weft_api::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// A map of strings whose values may be written as other scalars (`test: true`).
    pub(crate) fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        let map = Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default();
        map.into_iter()
            .map(|(k, v)| Ok((k, scalar(v).map_err(serde::de::Error::custom)?)))
            .collect()
    }

    /// A list of strings, or nothing.
    pub(crate) fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
    }

    /// A map keyed by port number (written as a number or a numeric string), or nothing.
    pub(crate) fn port_map<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<BTreeMap<u16, T>, D::Error> {
        let map = Option::<serde_yaml::Mapping>::deserialize(d)?.unwrap_or_default();
        map.into_iter()
            .map(|(key, value)| {
                let value = T::deserialize(value).map_err(serde::de::Error::custom)?;
                let port = match &key {
                    Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                };
                match port {
                    Some(port) if port != 0 => Ok((port, value)),
                    _ => Err(serde::de::Error::custom(format!("{key:?} is not a port number"))),
                }
            })
            .collect()
    }

    /// A list, or nothing.
    pub(crate) fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }

    fn scalar(value: Value) -> Result<String, String> {
        match value {
            Value::String(s) => Ok(s),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Null => Ok(String::new()),
            other => Err(format!("expected a string, found {other:?}")),
        }
    }

    /// A mapping of names to port numbers, keeping the written order.
    pub(crate) fn ordered_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, u16)>, D::Error> {
        let Some(map) = Option::<serde_yaml::Mapping>::deserialize(d)? else {
            return Ok(Vec::new());
        };
        let mut ports = Vec::with_capacity(map.len());
        for (key, value) in map {
            let name = key
                .as_str()
                .ok_or_else(|| serde::de::Error::custom("a port name must be a string"))?
                .to_owned();
            let number = value
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
                .ok_or_else(|| serde::de::Error::custom(format!("port {name:?}: expected a number from 1 to 65535")))?;
            ports.push((name, number));
        }
        Ok(ports)
    }
}
