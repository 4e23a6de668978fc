//! The configurations of the first-party filters the compiler emits, as serializable structs
//! mirroring their `schema.json`: `router` (`filters/router`), `retry` (`filters/retry`) and
//! `fault` (`filters/fault`).

use std::collections::BTreeMap;

use serde::Serialize;

/// A router virtual host: the routes of one host (a VirtualService's routes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouterVirtualHost<'a> {
    pub(crate) name: &'a str,
    pub(crate) hosts: &'a [String],
    /// The compiled routes, as JSON text (shared by every host of the VirtualService).
    pub(crate) routes: &'a str,
}

/// `router`'s configuration `{"virtual_hosts": [...]}` as JSON text, assembled from the
/// routes' precomputed JSON: the filter receives a string configuration as is, and a large
/// mesh's router configuration is built once per namespace and copied per sidecar as one
/// string rather than as a tree.
pub(crate) fn router_json(virtual_hosts: &[RouterVirtualHost<'_>]) -> String {
    let size: usize = virtual_hosts
        .iter()
        .map(|v| v.routes.len() + 64 * (v.hosts.len() + 1))
        .sum();
    let mut text = String::with_capacity(size + 20);
    text.push_str("{\"virtual_hosts\":[");
    for (i, vhost) in virtual_hosts.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str("{\"name\":");
        text.push_str(&to_json(&vhost.name));
        text.push_str(",\"hosts\":");
        text.push_str(&to_json(&vhost.hosts));
        text.push_str(",\"routes\":");
        text.push_str(vhost.routes);
        text.push('}');
    }
    text.push_str("]}");
    text
}

/// Istio's `StringMatch`: at most one field set; none means "present".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct StringMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) regex: Option<String>,
}

/// A router route.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub(crate) struct RouterRoute {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) name: String,
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub(crate) matches: Vec<RouterMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) route: Vec<RouterDestination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redirect: Option<RouterRedirect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) direct_response: Option<RouterDirectResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rewrite: Option<RouterRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<HeaderOps>,
}

/// A router match block.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct RouterMatch {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uri: Option<StringMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scheme: Option<StringMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<StringMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) authority: Option<StringMatch>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) headers: BTreeMap<String, StringMatch>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) without_headers: BTreeMap<String, StringMatch>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) query_params: BTreeMap<String, StringMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) source_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_namespace: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) ignore_uri_case: bool,
}

/// A weighted destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RouterDestination {
    pub(crate) destination: RouterCluster,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<HeaderOps>,
}

/// A destination cluster (subsets are clusters of their own, so no subset labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RouterCluster {
    pub(crate) cluster: String,
}

/// A redirect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct RouterRedirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) derive_port: Option<String>,
    pub(crate) redirect_code: u16,
}

/// A direct response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RouterDirectResponse {
    pub(crate) status: u16,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) body: String,
}

/// A rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct RouterRewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uri_regex_rewrite: Option<RouterRegexRewrite>,
}

/// A regex rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RouterRegexRewrite {
    #[serde(rename = "match")]
    pub(crate) pattern: String,
    pub(crate) rewrite: String,
}

/// Header operations on requests and responses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct HeaderOps {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request: Option<Operations>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response: Option<Operations>,
}

/// `set`, `add`, `remove`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct Operations {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) set: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) add: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) remove: Vec<String>,
}

/// `retry`'s configuration (Istio's `HTTPRetry`); the back-off and budget keep the filter's
/// defaults unless `backoff` is given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct RetryConfig {
    pub(crate) attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_try_timeout_ms: Option<u64>,
    pub(crate) retry_on: String,
    pub(crate) retriable_status_codes: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) backoff: Option<Backoff>,
}

/// The wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct Backoff {
    pub(crate) base_ms: u64,
}

/// Istio's default retry conditions.
pub(crate) const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

impl RetryConfig {
    /// Istio's default policy: 2 retries on the default conditions, 503 retriable.
    pub(crate) fn istio_default() -> Self {
        RetryConfig {
            attempts: 2,
            per_try_timeout_ms: None,
            retry_on: DEFAULT_RETRY_ON.to_owned(),
            retriable_status_codes: vec![503],
            backoff: None,
        }
    }
}

/// `fault`'s configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FaultConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delay: Option<FaultDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) abort: Option<FaultAbort>,
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub(crate) matches: Vec<FaultMatch>,
}

/// A fixed delay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FaultDelay {
    pub(crate) fixed_delay_ms: u64,
    pub(crate) percentage: f64,
}

/// An abort.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FaultAbort {
    pub(crate) http_status: u16,
    pub(crate) percentage: f64,
}

/// The conditions of a route's match block the fault filter checks itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct FaultMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uri: Option<StringMatch>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) ignore_uri_case: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) method: Option<StringMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) authority: Option<StringMatch>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) headers: BTreeMap<String, StringMatch>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) without_headers: BTreeMap<String, StringMatch>,
}

/// Serializes to JSON text.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    // Plain data (string keys, finite numbers): serializing cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// Serializes a configuration into the YAML value a snapshot filter carries.
pub(crate) fn to_value<T: Serialize>(config: &T) -> serde_yaml::Value {
    // The structs above are plain data (string keys, no non-finite floats reachable from
    // input): serializing cannot fail; an empty value would be refused by the filter.
    serde_yaml::to_value(config).unwrap_or(serde_yaml::Value::Null)
}
