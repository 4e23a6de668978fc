//! Kubernetes `v1 Service`: a name, a label selector and ports.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::de;
use super::schema::{Field, Node, SCALAR, SCALAR_MAP};

/// `Service.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Workloads (and WorkloadEntries) in the Service's namespace carrying all these labels
    /// are its endpoints. Empty: no endpoints.
    #[serde(default, deserialize_with = "de::string_map")]
    pub selector: BTreeMap<String, String>,
    /// The ports.
    #[serde(default, deserialize_with = "de::list")]
    pub ports: Vec<ServicePort>,
    /// `ClusterIP` (the default) is the only type Weft compiles; others are reported.
    #[serde(default, rename = "type")]
    pub service_type: Option<String>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port name; its prefix (`http-`, `grpc-`) names the protocol when `appProtocol` is unset.
    #[serde(default)]
    pub name: String,
    /// The port clients address.
    pub port: u16,
    /// The workload's port: a number, or the name of a Workload port. Default: `port`.
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// `TCP` (default); `UDP` and `SCTP` ports are not compiled.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The application protocol (`http`, `http2`, `grpc`, ...).
    #[serde(default)]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// A port with a name and number (builder fixtures).
    pub fn new(name: impl Into<String>, port: u16) -> Self {
        Self {
            name: name.into(),
            port,
            target_port: None,
            protocol: None,
            app_protocol: None,
        }
    }
}

/// A port given by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A port number.
    Int(u16),
    /// A port name.
    String(String),
}

static SERVICE_PORT: Node = Node::Object(&[
    ("name", Field::Known(&SCALAR)),
    ("port", Field::Known(&SCALAR)),
    ("targetPort", Field::Known(&SCALAR)),
    ("protocol", Field::Known(&SCALAR)),
    ("appProtocol", Field::Known(&SCALAR)),
    (
        "nodePort",
        Field::Unsupported("no node ports: the mesh is reached through sidecars"),
    ),
]);

pub(super) static SERVICE_SPEC: Node = Node::Object(&[
    ("selector", Field::Known(&SCALAR_MAP)),
    ("ports", Field::Known(&Node::ListOf(&SERVICE_PORT))),
    ("type", Field::Known(&SCALAR)),
    (
        "clusterIP",
        Field::Unsupported("clients reach services by name through the sidecar"),
    ),
    (
        "clusterIPs",
        Field::Unsupported("clients reach services by name through the sidecar"),
    ),
    (
        "ipFamilies",
        Field::Unsupported("clients reach services by name through the sidecar"),
    ),
    (
        "ipFamilyPolicy",
        Field::Unsupported("clients reach services by name through the sidecar"),
    ),
    (
        "externalName",
        Field::Unsupported("ExternalName services are not compiled; use a ServiceEntry"),
    ),
    ("externalIPs", Field::Unsupported("no external IPs")),
    (
        "externalTrafficPolicy",
        Field::Unsupported("no external traffic through Services"),
    ),
    (
        "internalTrafficPolicy",
        Field::Unsupported("every endpoint serves every client"),
    ),
    ("loadBalancerIP", Field::Unsupported("no load balancer Services")),
    (
        "loadBalancerSourceRanges",
        Field::Unsupported("no load balancer Services"),
    ),
    ("loadBalancerClass", Field::Unsupported("no load balancer Services")),
    (
        "allocateLoadBalancerNodePorts",
        Field::Unsupported("no load balancer Services"),
    ),
    ("healthCheckNodePort", Field::Unsupported("no node ports")),
    (
        "publishNotReadyAddresses",
        Field::Unsupported("every endpoint is published"),
    ),
    (
        "sessionAffinity",
        Field::Unsupported("use a DestinationRule consistentHash"),
    ),
    (
        "sessionAffinityConfig",
        Field::Unsupported("use a DestinationRule consistentHash"),
    ),
    ("trafficDistribution", Field::Unsupported("no locality-aware routing")),
]);
