//! Weft's domain types: the [`Snapshot`] a proxy runs, loadable from YAML and validated.
//!
//! This crate is the contract between the control plane and the data plane. It holds plain
//! Rust structs (serde, no I/O): the controller compiles intent into a [`Snapshot`] per
//! workload, and `weft-proxy` runs one, from a YAML file or a config stream.
//!
//! Start reading at [`Snapshot`]; [`Snapshot::from_yaml`] parses and validates, and every
//! error names the path of the offending field (`clusters[1].endpoints[0].weight: ...`).
//! The config stream's protobuf messages and gRPC services live apart in [`pb`], with the
//! conversions to and from the domain types (a received snapshot is validated too);
//! [`parts`] assembles a snapshot the stream sends in parts, reusing the parts a sidecar holds.

mod duration;
pub mod parts;
mod path;
pub mod pb;
pub mod snapshot;

pub use duration::{format_duration, parse_duration};
pub use pb::InvalidSnapshot;
pub use snapshot::{
    CircuitBreakers, Cluster, DirectResponse, Endpoint, FailurePolicy, FilterConfig, Forward, HashOn, HeaderMatch,
    HealthCheck, LbPolicy, Limits, Listener, ListenerKind, ListenerMtls, ListenerProtocol, LoadError, MtlsMode,
    OutlierDetection, PathMatch, Route, RouteMatch, RouteTable, Security, ServerTls, ServerTlsMode, Snapshot,
    SniDestination, SniRoute, TlsCertificate, UpstreamProtocol, UpstreamTls, UpstreamTlsMode, ValidationError,
    VirtualHost, WasmModule, normalize_serial,
};
