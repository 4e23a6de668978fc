//! Conversions between the domain [`Snapshot`](domain::Snapshot) and its wire form
//! [`pb::Snapshot`].
//!
//! Domain to wire cannot fail: every field is written explicitly (enums by their value, fields
//! with defaults set), so the wire form says exactly what the domain value says. Wire to domain
//! maps unset fields and `..._UNSPECIFIED` enums to the domain defaults, stops at the first
//! value that has no domain meaning (an unknown enum number, JSON that does not parse, a
//! number out of range), and then runs [`Snapshot::validate`](domain::Snapshot::validate).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_yaml::Value;

use crate::path::Path;
use crate::pb;
use crate::snapshot::validate::Offsets;
use crate::snapshot::{self as domain, LoadError};

/// Why a wire snapshot was refused. Every variant names the path of the offending field
/// (`clusters[1].lb_policy`), as the domain validator does.
#[derive(Debug, thiserror::Error)]
pub enum InvalidSnapshot {
    /// An enum field holds a number that is not one of the enum's values (a newer controller,
    /// or a corrupt message).
    #[error("{path}: unknown enum value {value}")]
    UnknownEnumValue {
        /// Path of the field.
        path: String,
        /// The number received.
        value: i32,
    },
    /// A `..._json` field is neither empty nor valid JSON.
    #[error("{path}: invalid JSON: {message}")]
    InvalidJson {
        /// Path of the field.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A number does not fit the domain field (an HTTP status over 65535).
    #[error("{path}: {value} is out of range")]
    OutOfRange {
        /// Path of the field.
        path: String,
        /// The number received.
        value: u64,
    },
    /// The snapshot converted but failed validation; every problem is listed with its path.
    #[error(transparent)]
    Validation(LoadError),
}

// ---------------------------------------------------------------------------------------------
// Domain to wire.

impl From<&domain::Snapshot> for pb::Snapshot {
    fn from(snapshot: &domain::Snapshot) -> Self {
        Self {
            version: snapshot.version.clone(),
            listeners: snapshot.listeners.iter().map(listener_to_pb).collect(),
            route_tables: snapshot.route_tables.iter().map(route_table_to_pb).collect(),
            clusters: snapshot.clusters.iter().map(|c| cluster_to_pb(c)).collect(),
            limits: Some(limits_to_pb(&snapshot.limits)),
            security: (!snapshot.security.is_empty()).then(|| pb::Security {
                trust_bundle: snapshot.security.trust_bundle.clone(),
                revoked_serials: snapshot.security.revoked_serials.clone(),
                revoked_identities: snapshot.security.revoked_identities.clone(),
            }),
        }
    }
}

fn listener_to_pb(listener: &domain::Listener) -> pb::Listener {
    pb::Listener {
        name: listener.name.clone(),
        address: listener.address.clone(),
        kind: pb::ListenerKind::from(listener.kind).into(),
        protocol: pb::ListenerProtocol::from(listener.protocol).into(),
        route_table: listener.route_table.clone(),
        filters: listener.filters.iter().map(filter_to_pb).collect(),
        mtls: listener.mtls.as_ref().map(|mtls| pb::ListenerMtls {
            mode: pb::MtlsMode::from(mtls.mode).into(),
            ports: mtls
                .ports
                .iter()
                .map(|(port, mode)| (u32::from(*port), pb::MtlsMode::from(*mode).into()))
                .collect(),
        }),
        tls: listener.tls.as_ref().map(|tls| pb::ServerTls {
            mode: pb::ServerTlsMode::from(tls.mode).into(),
            certificates: tls
                .certificates
                .iter()
                .map(|c| pb::TlsCertificate {
                    cert_chain: c.cert_chain.clone(),
                    private_key: c.private_key.clone(),
                    server_names: c.server_names.clone(),
                })
                .collect(),
            client_ca: tls.client_ca.clone(),
        }),
        sni_routes: listener
            .sni_routes
            .iter()
            .map(|route| pb::SniRoute {
                server_names: route.server_names.clone(),
                destinations: route
                    .destinations
                    .iter()
                    .map(|d| pb::SniDestination {
                        cluster: d.cluster.clone(),
                        subset: d.subset.clone(),
                        weight: Some(d.weight),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn filter_to_pb(filter: &domain::FilterConfig) -> pb::FilterConfig {
    pb::FilterConfig {
        name: filter.name.clone(),
        native: filter.native.clone(),
        wasm: filter.wasm.as_ref().map(|wasm| pb::WasmModule {
            file: wasm.file.clone(),
            url: wasm.url.clone(),
            sha256: wasm.sha256.clone(),
            vm_config_json: json_text(&wasm.vm_config),
            root_id: wasm.root_id.clone(),
            vm_id: wasm.vm_id.clone(),
        }),
        config_json: json_text(&filter.config),
        failure_policy: pb::FailurePolicy::from(filter.failure_policy).into(),
    }
}

fn route_table_to_pb(table: &domain::RouteTable) -> pb::RouteTable {
    pb::RouteTable {
        name: table.name.clone(),
        virtual_hosts: table
            .virtual_hosts
            .iter()
            .map(|vhost| pb::VirtualHost {
                name: vhost.name.clone(),
                domains: vhost.domains.clone(),
                routes: vhost.routes.iter().map(route_to_pb).collect(),
            })
            .collect(),
    }
}

fn route_to_pb(route: &domain::Route) -> pb::Route {
    let matches = &route.matches;
    pb::Route {
        name: route.name.clone(),
        r#match: Some(pb::RouteMatch {
            path: matches.path.as_ref().map(|path| pb::PathMatch {
                exact: path.exact.clone(),
                prefix: path.prefix.clone(),
                regex: path.regex.clone(),
            }),
            headers: matches
                .headers
                .iter()
                .map(|header| pb::HeaderMatch {
                    name: header.name.clone(),
                    exact: header.exact.clone(),
                    prefix: header.prefix.clone(),
                    regex: header.regex.clone(),
                    invert: header.invert,
                })
                .collect(),
        }),
        forward: route.forward.as_ref().map(|forward| pb::Forward {
            cluster: forward.cluster.clone(),
            subset: forward.subset.clone(),
            timeout_ns: forward.timeout.map(nanos),
            prefix_rewrite: forward.prefix_rewrite.clone(),
            host_rewrite: forward.host_rewrite.clone(),
        }),
        direct_response: route.direct_response.as_ref().map(|direct| pb::DirectResponse {
            status: direct.status.into(),
            body: direct.body.clone(),
            headers: direct.headers.clone(),
        }),
        disabled_filters: route.disabled_filters.clone(),
    }
}

fn cluster_to_pb(cluster: &domain::Cluster) -> pb::Cluster {
    let breakers = &cluster.circuit_breakers;
    pb::Cluster {
        name: cluster.name.clone(),
        protocol: pb::UpstreamProtocol::from(cluster.protocol).into(),
        endpoints: cluster
            .endpoints
            .iter()
            .map(|endpoint| pb::Endpoint {
                address: endpoint.address.clone(),
                labels: endpoint.labels.clone(),
                weight: Some(endpoint.weight),
                mesh: endpoint.mesh,
            })
            .collect(),
        lb_policy: pb::LbPolicy::from(cluster.lb_policy).into(),
        hash_on: cluster.hash_on.as_ref().map(|hash_on| pb::HashOn {
            header: hash_on.header.clone(),
            cookie: hash_on.cookie.clone(),
            source_ip: hash_on.source_ip,
        }),
        connect_timeout_ns: Some(nanos(cluster.connect_timeout)),
        circuit_breakers: Some(pb::CircuitBreakers {
            max_connections: Some(breakers.max_connections),
            max_pending_requests: Some(breakers.max_pending_requests),
            max_requests: Some(breakers.max_requests),
        }),
        health_check: cluster.health_check.as_ref().map(|check| pb::HealthCheck {
            path: check.path.clone(),
            interval_ns: Some(nanos(check.interval)),
            timeout_ns: Some(nanos(check.timeout)),
            healthy_threshold: Some(check.healthy_threshold),
            unhealthy_threshold: Some(check.unhealthy_threshold),
        }),
        outlier_detection: cluster.outlier_detection.as_ref().map(|outlier| pb::OutlierDetection {
            consecutive_5xx: Some(outlier.consecutive_5xx),
            consecutive_gateway_errors: outlier.consecutive_gateway_errors,
            base_ejection_time_ns: Some(nanos(outlier.base_ejection_time)),
            max_ejection_percent: Some(outlier.max_ejection_percent),
        }),
        tls: cluster.tls.as_ref().map(|tls| pb::UpstreamTls {
            mode: match tls.mode {
                domain::UpstreamTlsMode::IstioMutual => pb::UpstreamTlsMode::IstioMutual,
                domain::UpstreamTlsMode::Simple => pb::UpstreamTlsMode::Simple,
                domain::UpstreamTlsMode::Mutual => pb::UpstreamTlsMode::Mutual,
            }
            .into(),
            sni: tls.sni.clone(),
            subject_alt_names: tls.subject_alt_names.clone(),
            ca_certificates: tls.ca_certificates.clone(),
            mesh_endpoints_only: tls.mesh_endpoints_only,
            client_certificate: tls.client_certificate.clone(),
            private_key: tls.private_key.clone(),
        }),
    }
}

fn limits_to_pb(limits: &domain::Limits) -> pb::Limits {
    pb::Limits {
        max_request_headers_bytes: Some(limits.max_request_headers_bytes),
        max_request_headers_count: Some(limits.max_request_headers_count),
        max_request_body_bytes: limits.max_request_body_bytes,
        max_buffered_body_bytes: Some(limits.max_buffered_body_bytes),
        http2_max_concurrent_streams: Some(limits.http2_max_concurrent_streams),
    }
}

/// A duration in nanoseconds; one beyond `u64` nanoseconds (about 584 years) saturates.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A free-form configuration value as JSON text: `""` for null, otherwise the JSON a Wasm
/// filter receives for it (a string is a JSON string, so it decodes back to a string).
///
/// YAML holds a few things JSON does not; they are written as JSON writes them: a map key
/// that is not a string becomes its JSON text (`1`, `true`), a tagged value `!tag value`
/// becomes `{"!tag": value}`, and a non-finite float becomes `null`.
fn json_text(value: &Value) -> String {
    if value.is_null() {
        return String::new();
    }
    // Cannot fail: every map key is written as a string, and non-finite floats as null. Were
    // it to, the value would travel as null rather than fail the whole snapshot.
    serde_json::to_string(&Json(value)).unwrap_or_default()
}

/// Serializes a YAML value as JSON can hold it (see [`json_text`]).
struct Json<'a>(&'a Value);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Sequence(items) => serializer.collect_seq(items.iter().map(Json)),
            Value::Mapping(mapping) => {
                let mut map = serializer.serialize_map(Some(mapping.len()))?;
                for (key, value) in mapping {
                    map.serialize_entry(&key_text(key), &Json(value))?;
                }
                map.end()
            }
            Value::Tagged(tagged) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(&tagged.tag.to_string(), &Json(&tagged.value))?;
                map.end()
            }
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => self.0.serialize(serializer),
        }
    }
}

/// A map key as a JSON object key: a string as is, anything else as its JSON text.
fn key_text(key: &Value) -> Cow<'_, str> {
    match key {
        Value::String(text) => Cow::Borrowed(text),
        Value::Null => Cow::Borrowed("null"),
        other => Cow::Owned(serde_json::to_string(&Json(other)).unwrap_or_default()),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire to domain.

impl TryFrom<pb::Snapshot> for domain::Snapshot {
    type Error = InvalidSnapshot;

    /// Converts a received snapshot and validates it; see [`InvalidSnapshot`].
    fn try_from(wire: pb::Snapshot) -> Result<Self, Self::Error> {
        let snapshot = snapshot_from_pb(wire, Offsets::default())?;
        snapshot.validate().map_err(InvalidSnapshot::Validation)?;
        Ok(snapshot)
    }
}

/// Converts a wire snapshot, or a part of one whose elements sit at `offsets` in the whole,
/// without validating it. Unset `limits` and `security` become the defaults.
pub(crate) fn snapshot_from_pb(wire: pb::Snapshot, offsets: Offsets) -> Result<domain::Snapshot, InvalidSnapshot> {
    let root = Path::Root;
    Ok(domain::Snapshot {
        version: wire.version,
        listeners: collect(wire.listeners, &root, "listeners", offsets.listeners, listener_from_pb)?,
        route_tables: collect(
            wire.route_tables,
            &root,
            "route_tables",
            offsets.route_tables,
            route_table_from_pb,
        )?,
        clusters: collect(wire.clusters, &root, "clusters", offsets.clusters, |c, path| {
            cluster_from_pb(c, path).map(Arc::new)
        })?,
        limits: wire.limits.map(limits_from_pb).unwrap_or_default(),
        security: wire
            .security
            .map(|security| domain::Security {
                trust_bundle: security.trust_bundle,
                revoked_serials: security.revoked_serials,
                revoked_identities: security.revoked_identities,
            })
            .unwrap_or_default(),
    })
}

/// Converts every element of a repeated field, each with its indexed path (the first at
/// index `first`).
fn collect<W, D>(
    items: Vec<W>,
    parent: &Path<'_>,
    name: &'static str,
    first: usize,
    convert: impl Fn(W, Path<'_>) -> Result<D, InvalidSnapshot>,
) -> Result<Vec<D>, InvalidSnapshot> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| convert(item, parent.index(name, first + i)))
        .collect()
}

fn listener_from_pb(wire: pb::Listener, path: Path<'_>) -> Result<domain::Listener, InvalidSnapshot> {
    Ok(domain::Listener {
        name: wire.name,
        address: wire.address,
        kind: enum_from_pb::<pb::ListenerKind>(wire.kind, path.field("kind"))?.into(),
        protocol: enum_from_pb::<pb::ListenerProtocol>(wire.protocol, path.field("protocol"))?.into(),
        route_table: wire.route_table,
        filters: collect(wire.filters, &path, "filters", 0, filter_from_pb)?,
        mtls: match wire.mtls {
            Some(mtls) => Some(listener_mtls_from_pb(mtls, path.field("mtls"))?),
            None => None,
        },
        tls: match wire.tls {
            Some(tls) => Some(domain::ServerTls {
                mode: enum_from_pb::<pb::ServerTlsMode>(tls.mode, path.field("tls").field("mode"))?.into(),
                certificates: tls
                    .certificates
                    .into_iter()
                    .map(|c| domain::TlsCertificate {
                        cert_chain: c.cert_chain,
                        private_key: c.private_key,
                        server_names: c.server_names,
                    })
                    .collect(),
                client_ca: tls.client_ca,
            }),
            None => None,
        },
        sni_routes: wire
            .sni_routes
            .into_iter()
            .map(|route| domain::SniRoute {
                server_names: route.server_names,
                destinations: route
                    .destinations
                    .into_iter()
                    .map(|d| domain::SniDestination {
                        cluster: d.cluster,
                        subset: d.subset,
                        weight: d.weight.unwrap_or(domain::default_weight()),
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn listener_mtls_from_pb(wire: pb::ListenerMtls, path: Path<'_>) -> Result<domain::ListenerMtls, InvalidSnapshot> {
    let mut ports = std::collections::BTreeMap::new();
    for (port, mode) in wire.ports {
        let port_path = path.field("ports");
        let number = u16::try_from(port).map_err(|_| InvalidSnapshot::OutOfRange {
            path: port_path.to_string(),
            value: port.into(),
        })?;
        ports.insert(number, enum_from_pb::<pb::MtlsMode>(mode, port_path)?.into());
    }
    Ok(domain::ListenerMtls {
        mode: enum_from_pb::<pb::MtlsMode>(wire.mode, path.field("mode"))?.into(),
        ports,
    })
}

fn filter_from_pb(wire: pb::FilterConfig, path: Path<'_>) -> Result<domain::FilterConfig, InvalidSnapshot> {
    let wasm = match wire.wasm {
        Some(wasm) => Some(domain::WasmModule {
            file: wasm.file,
            url: wasm.url,
            sha256: wasm.sha256,
            vm_config: json_value(&wasm.vm_config_json, path.field("wasm").field("vm_config_json"))?,
            root_id: wasm.root_id,
            vm_id: wasm.vm_id,
        }),
        None => None,
    };
    Ok(domain::FilterConfig {
        name: wire.name,
        native: wire.native,
        wasm,
        config: json_value(&wire.config_json, path.field("config_json"))?,
        failure_policy: enum_from_pb::<pb::FailurePolicy>(wire.failure_policy, path.field("failure_policy"))?.into(),
    })
}

fn route_table_from_pb(wire: pb::RouteTable, path: Path<'_>) -> Result<domain::RouteTable, InvalidSnapshot> {
    Ok(domain::RouteTable {
        name: wire.name,
        virtual_hosts: collect(wire.virtual_hosts, &path, "virtual_hosts", 0, |vhost, path| {
            Ok(domain::VirtualHost {
                name: vhost.name,
                domains: vhost.domains,
                routes: collect(vhost.routes, &path, "routes", 0, route_from_pb)?,
            })
        })?,
    })
}

fn route_from_pb(wire: pb::Route, path: Path<'_>) -> Result<domain::Route, InvalidSnapshot> {
    let matches = wire.r#match.unwrap_or_default();
    let direct_response = match wire.direct_response {
        Some(direct) => Some(domain::DirectResponse {
            status: u16::try_from(direct.status).map_err(|_| InvalidSnapshot::OutOfRange {
                path: path.field("direct_response").field("status").to_string(),
                value: direct.status.into(),
            })?,
            body: direct.body,
            headers: direct.headers,
        }),
        None => None,
    };
    Ok(domain::Route {
        name: wire.name,
        matches: domain::RouteMatch {
            path: matches.path.map(|path| domain::PathMatch {
                exact: path.exact,
                prefix: path.prefix,
                regex: path.regex,
            }),
            headers: matches
                .headers
                .into_iter()
                .map(|header| domain::HeaderMatch {
                    name: header.name,
                    exact: header.exact,
                    prefix: header.prefix,
                    regex: header.regex,
                    invert: header.invert,
                })
                .collect(),
        },
        forward: wire.forward.map(|forward| domain::Forward {
            cluster: forward.cluster,
            subset: forward.subset,
            timeout: forward.timeout_ns.map(Duration::from_nanos),
            prefix_rewrite: forward.prefix_rewrite,
            host_rewrite: forward.host_rewrite,
        }),
        direct_response,
        disabled_filters: wire.disabled_filters,
    })
}

fn cluster_from_pb(wire: pb::Cluster, path: Path<'_>) -> Result<domain::Cluster, InvalidSnapshot> {
    Ok(domain::Cluster {
        name: wire.name,
        protocol: enum_from_pb::<pb::UpstreamProtocol>(wire.protocol, path.field("protocol"))?.into(),
        endpoints: wire
            .endpoints
            .into_iter()
            .map(|endpoint| domain::Endpoint {
                address: endpoint.address,
                labels: endpoint.labels,
                weight: endpoint.weight.unwrap_or(domain::default_weight()),
                mesh: endpoint.mesh,
            })
            .collect(),
        lb_policy: enum_from_pb::<pb::LbPolicy>(wire.lb_policy, path.field("lb_policy"))?.into(),
        hash_on: wire.hash_on.map(|hash_on| domain::HashOn {
            header: hash_on.header,
            cookie: hash_on.cookie,
            source_ip: hash_on.source_ip,
        }),
        connect_timeout: duration_or(wire.connect_timeout_ns, domain::default_connect_timeout()),
        circuit_breakers: wire
            .circuit_breakers
            .map(|breakers| {
                let default = domain::CircuitBreakers::default();
                domain::CircuitBreakers {
                    max_connections: breakers.max_connections.unwrap_or(default.max_connections),
                    max_pending_requests: breakers.max_pending_requests.unwrap_or(default.max_pending_requests),
                    max_requests: breakers.max_requests.unwrap_or(default.max_requests),
                }
            })
            .unwrap_or_default(),
        health_check: wire.health_check.map(|check| domain::HealthCheck {
            path: check.path,
            interval: duration_or(check.interval_ns, domain::default_hc_interval()),
            timeout: duration_or(check.timeout_ns, domain::default_hc_timeout()),
            healthy_threshold: check.healthy_threshold.unwrap_or(domain::default_one()),
            unhealthy_threshold: check.unhealthy_threshold.unwrap_or(domain::default_two()),
        }),
        outlier_detection: wire.outlier_detection.map(|outlier| domain::OutlierDetection {
            consecutive_5xx: outlier.consecutive_5xx.unwrap_or(domain::default_five()),
            consecutive_gateway_errors: outlier.consecutive_gateway_errors,
            base_ejection_time: duration_or(outlier.base_ejection_time_ns, domain::default_base_ejection()),
            max_ejection_percent: outlier
                .max_ejection_percent
                .unwrap_or(domain::default_max_ejection_percent()),
        }),
        tls: match wire.tls {
            Some(tls) => Some(upstream_tls_from_pb(tls, path.field("tls"))?),
            None => None,
        },
    })
}

fn upstream_tls_from_pb(wire: pb::UpstreamTls, path: Path<'_>) -> Result<domain::UpstreamTls, InvalidSnapshot> {
    let mode = match enum_from_pb::<pb::UpstreamTlsMode>(wire.mode, path.field("mode"))? {
        pb::UpstreamTlsMode::IstioMutual => domain::UpstreamTlsMode::IstioMutual,
        pb::UpstreamTlsMode::Simple => domain::UpstreamTlsMode::Simple,
        pb::UpstreamTlsMode::Mutual => domain::UpstreamTlsMode::Mutual,
        pb::UpstreamTlsMode::Unspecified => {
            return Err(InvalidSnapshot::UnknownEnumValue {
                path: path.field("mode").to_string(),
                value: wire.mode,
            });
        }
    };
    Ok(domain::UpstreamTls {
        mode,
        sni: wire.sni,
        subject_alt_names: wire.subject_alt_names,
        ca_certificates: wire.ca_certificates,
        mesh_endpoints_only: wire.mesh_endpoints_only,
        client_certificate: wire.client_certificate,
        private_key: wire.private_key,
    })
}

fn limits_from_pb(wire: pb::Limits) -> domain::Limits {
    let default = domain::Limits::default();
    domain::Limits {
        max_request_headers_bytes: wire
            .max_request_headers_bytes
            .unwrap_or(default.max_request_headers_bytes),
        max_request_headers_count: wire
            .max_request_headers_count
            .unwrap_or(default.max_request_headers_count),
        max_request_body_bytes: wire.max_request_body_bytes,
        max_buffered_body_bytes: wire.max_buffered_body_bytes.unwrap_or(default.max_buffered_body_bytes),
        http2_max_concurrent_streams: wire
            .http2_max_concurrent_streams
            .unwrap_or(default.http2_max_concurrent_streams),
    }
}

/// A duration from nanoseconds, or the default when unset.
fn duration_or(nanos: Option<u64>, default: Duration) -> Duration {
    nanos.map_or(default, Duration::from_nanos)
}

/// A known enum value, or the error naming the field.
fn enum_from_pb<E: TryFrom<i32>>(value: i32, path: Path<'_>) -> Result<E, InvalidSnapshot> {
    E::try_from(value).map_err(|_| InvalidSnapshot::UnknownEnumValue {
        path: path.to_string(),
        value,
    })
}

/// A free-form configuration value from JSON text (see [`json_text`]): `""` is null.
fn json_value(text: &str, path: Path<'_>) -> Result<Value, InvalidSnapshot> {
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|e| InvalidSnapshot::InvalidJson {
        path: path.to_string(),
        message: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Enums: the wire's `UNSPECIFIED` is the domain default.

macro_rules! enum_conversions {
    ($name:ident { $($variant:ident),+ $(,)? }) => {
        impl From<domain::$name> for pb::$name {
            fn from(value: domain::$name) -> Self {
                match value {
                    $(domain::$name::$variant => pb::$name::$variant,)+
                }
            }
        }

        impl From<pb::$name> for domain::$name {
            fn from(value: pb::$name) -> Self {
                match value {
                    pb::$name::Unspecified => domain::$name::default(),
                    $(pb::$name::$variant => domain::$name::$variant,)+
                }
            }
        }
    };
}

enum_conversions!(ListenerKind {
    Outbound,
    Inbound,
    Gateway
});
enum_conversions!(ListenerProtocol {
    Http1,
    Http2,
    Auto,
    TlsPassthrough
});
enum_conversions!(FailurePolicy {
    FailClosed,
    FailOpen,
    Reload
});
enum_conversions!(UpstreamProtocol { Http1, Http2 });
enum_conversions!(ServerTlsMode { Simple, Mutual });
enum_conversions!(MtlsMode {
    Strict,
    Permissive,
    Disable
});
enum_conversions!(LbPolicy {
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
});
