//! Properties (`proxy_get_property`) with Envoy's names and encodings: strings as bytes,
//! integers as 8-byte little-endian, booleans as one byte, maps in the header-map format,
//! times as nanoseconds since the epoch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::abi;
use super::host::HostState;

/// What properties can say about one stream, kept by the filter across phases.
#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
    pub(crate) listener: Arc<str>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) mtls: bool,
    pub(crate) peer_principal: Option<String>,
    pub(crate) worker: usize,
    pub(crate) start: SystemTime,
    /// The request as it reached the filter (before its own edits).
    pub(crate) method: http::Method,
    pub(crate) uri: http::Uri,
    /// The `host` header, for requests whose URI has no authority.
    pub(crate) host: Option<http::HeaderValue>,
    pub(crate) scheme: &'static str,
    pub(crate) protocol: &'static str,
    pub(crate) request_id: Option<http::HeaderValue>,
    pub(crate) request_size: u64,
    pub(crate) response_code: Option<u16>,
    pub(crate) response_code_details: &'static str,
    pub(crate) response_size: u64,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) cluster: Option<Arc<str>>,
}

/// A property's value, before encoding.
enum Value<'a> {
    Bytes(&'a [u8]),
    Owned(Vec<u8>),
    /// A header map, serialized in the header-map format.
    Headers(&'a http::HeaderMap),
    Int(i64),
    Bool(bool),
}

fn string(s: &str) -> Option<Value<'_>> {
    Some(Value::Bytes(s.as_bytes()))
}

impl StreamInfo {
    /// The request's path and query.
    pub(crate) fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str)
    }

    /// The request's authority: the URI's, else the `host` header.
    pub(crate) fn authority(&self) -> &str {
        self.uri
            .authority()
            .map(http::uri::Authority::as_str)
            .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
            .unwrap_or("")
    }
}

/// Turns a path as the ABI passes it (segments separated by NUL) into the dotted form [`get`]
/// takes, in place.
pub(crate) fn dot_segments(path: &mut [u8]) {
    path.iter_mut().filter(|b| **b == 0).for_each(|b| *b = b'.');
}

/// Appends the property at `path` (segments joined by `.`) to `out`; `false` when there is
/// none (`NotFound`).
pub(crate) fn get(state: &HostState, path: &str, out: &mut Vec<u8>) -> bool {
    let Some(value) = lookup(state, path) else { return false };
    match value {
        Value::Bytes(bytes) => out.extend_from_slice(bytes),
        Value::Owned(bytes) => out.extend_from_slice(&bytes),
        Value::Headers(map) => {
            abi::serialize_map_with(|| map.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())), out);
        }
        Value::Int(value) => out.extend_from_slice(&value.to_le_bytes()),
        Value::Bool(value) => out.push(u8::from(value)),
    }
    true
}

fn lookup<'a>(state: &'a HostState, joined: &str) -> Option<Value<'a>> {
    if let Some(value) = state.stream.properties.get(joined) {
        return Some(Value::Bytes(value));
    }
    let plugin = &state.plugin;
    match joined {
        "plugin_name" => return string(&plugin.name),
        "plugin_root_id" => return string(&plugin.root_id),
        "plugin_vm_id" => return string(&plugin.vm_id),
        "node.id" => return string(&state.shared.node.id),
        "node.metadata.LABELS" => {
            let labels = &state.shared.node.labels;
            return Some(Value::Owned(abi::serialize_map(
                labels.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            )));
        }
        other => {
            if let Some(key) = other.strip_prefix("node.metadata.") {
                return state.shared.node.metadata.get(key).and_then(|v| string(v));
            }
        }
    }
    let info = state.stream.info.as_deref()?;
    let request = state.stream.request.visible();
    let response = state.stream.response.visible();
    match joined {
        "request.path" => string(info.path()),
        "request.url_path" => string(info.path().split('?').next().unwrap_or("")),
        "request.query" => string(info.path().split_once('?').map_or("", |(_, q)| q)),
        "request.host" => string(info.authority()),
        "request.scheme" => string(info.scheme),
        "request.method" => string(info.method.as_str()),
        "request.id" => string(info.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")),
        "request.protocol" => string(info.protocol),
        "request.size" | "request.total_size" => Some(Value::Int(info.request_size as i64)),
        "request.time" => {
            let nanos = info
                .start
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            Some(Value::Int(i64::try_from(nanos).unwrap_or(i64::MAX)))
        }
        "request.duration" => {
            let nanos = info.start.elapsed().map_or(0, |d| d.as_nanos());
            Some(Value::Int(i64::try_from(nanos).unwrap_or(i64::MAX)))
        }
        "request.useragent" => request
            .and_then(|r| r.map.get("user-agent"))
            .map(|v| Value::Bytes(v.as_bytes())),
        "request.referer" => request
            .and_then(|r| r.map.get("referer"))
            .map(|v| Value::Bytes(v.as_bytes())),
        "request.headers" => request.map(|r| Value::Headers(&r.map)),
        "response.code" => info.response_code.map(|c| Value::Int(i64::from(c))),
        "response.code_details" => string(info.response_code_details),
        "response.size" | "response.total_size" => Some(Value::Int(info.response_size as i64)),
        "response.headers" => response.map(|r| Value::Headers(&r.map)),
        "source.address" => Some(Value::Owned(info.source.to_string().into_bytes())),
        "source.port" => Some(Value::Int(i64::from(info.source.port()))),
        "destination.address" => Some(Value::Owned(info.destination.to_string().into_bytes())),
        "destination.port" => Some(Value::Int(i64::from(info.destination.port()))),
        "connection.mtls" => Some(Value::Bool(info.mtls)),
        "connection.requested_server_name" => string(""),
        "source.principal" | "connection.uri_san_peer_certificate" | "weft.peer_principal" => {
            info.peer_principal.as_deref().and_then(string)
        }
        "upstream.address" => info.upstream.map(|a| Value::Owned(a.to_string().into_bytes())),
        "upstream.port" => info.upstream.map(|a| Value::Int(i64::from(a.port()))),
        "route_name" | "xds.route_name" | "weft.route_name" => info.route.as_deref().and_then(string),
        "cluster_name" | "xds.cluster_name" | "weft.cluster" => info.cluster.as_deref().and_then(string),
        "weft.listener" => string(&info.listener),
        "weft.worker" => Some(Value::Int(info.worker as i64)),
        _ => None,
    }
}
