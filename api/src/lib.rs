//! Weft's domain types: the [`Snapshot`] a proxy runs, loadable from YAML and validated.
//!
//! This crate is the contract between the control plane and the data plane. It holds plain
//! Rust structs (serde, no I/O, no wire encoding): the controller compiles intent into a
//! [`Snapshot`] per workload, and `weft-proxy` runs one, from a YAML file or a config stream.
//!
//! Start reading at [`Snapshot`]; [`Snapshot::from_yaml`] parses and validates, and every
//! error names the path of the offending field (`clusters[1].endpoints[0].weight: ...`).

mod duration;
pub mod snapshot;

pub use duration::{format_duration, parse_duration};
pub use snapshot::{
    CircuitBreakers, Cluster, DirectResponse, Endpoint, FailurePolicy, FilterConfig, Forward, HashOn, HeaderMatch,
    HealthCheck, LbPolicy, Limits, Listener, ListenerKind, ListenerProtocol, LoadError, OutlierDetection, PathMatch,
    Route, RouteMatch, RouteTable, Snapshot, UpstreamProtocol, ValidationError, VirtualHost, WasmModule,
};
