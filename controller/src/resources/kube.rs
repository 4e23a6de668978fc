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

/// Kubernetes `v1 Secret` (its top-level `type`, `data`, `stringData`, read as a spec): where
/// a Gateway's `credentialName` finds its certificate (`tls.crt`, `tls.key`, `ca.crt`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// `kubernetes.io/tls`, `Opaque`, ...
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Values, base64.
    #[serde(default, deserialize_with = "de::string_map")]
    pub data: BTreeMap<String, String>,
    /// Values, as text (they win over `data`).
    #[serde(default, deserialize_with = "de::string_map")]
    pub string_data: BTreeMap<String, String>,
}

impl SecretSpec {
    /// The value of `key` as text: `stringData`'s, else `data`'s decoded; `Err` when `data`
    /// holds something that is not base64 of UTF-8 text.
    pub fn value(&self, key: &str) -> Option<Result<String, String>> {
        if let Some(text) = self.string_data.get(key) {
            return Some(Ok(text.clone()));
        }
        let encoded = self.data.get(key)?;
        Some(
            decode_base64(encoded)
                .and_then(|bytes| String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned()))
                .map_err(|why| format!("data.{key}: {why}")),
        )
    }
}

/// Standard base64 (padding optional, whitespace ignored).
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("{:?} is not base64", char::from(c))),
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Ok(out)
}

pub(super) static SECRET_SPEC: Node = Node::Object(&[
    ("type", Field::Known(&SCALAR)),
    ("data", Field::Known(&SCALAR_MAP)),
    ("stringData", Field::Known(&SCALAR_MAP)),
    ("immutable", Field::Ignored),
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_decode() {
        let secret = SecretSpec {
            kind: Some("kubernetes.io/tls".into()),
            data: BTreeMap::from([
                ("tls.crt".into(), "aGVsbG8g\nd29ybGQ=".into()),
                ("bad".into(), "!!".into()),
            ]),
            string_data: BTreeMap::from([("tls.key".into(), "KEY".into())]),
        };
        assert_eq!(secret.value("tls.crt"), Some(Ok("hello world".into())));
        assert_eq!(secret.value("tls.key"), Some(Ok("KEY".into())));
        assert!(matches!(secret.value("bad"), Some(Err(_))));
        assert_eq!(secret.value("ca.crt"), None);
    }
}
