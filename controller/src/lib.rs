//! Weft's control plane: reads intent, compiles it into a snapshot per workload and streams
//! the snapshots to sidecars, tracking ACK/NACK.
//!
//! The pieces, in the order data flows through them:
//! - [`source`]: where intent comes from (a watched directory in local mode);
//! - [`store`]: the parsed resources, with a diagnostic for everything refused;
//! - [`resolve`]: module urls pinned to digests (the only I/O before compiling);
//! - [`compile`]: the pure function from the store to per-workload snapshots;
//! - [`server`]: the config stream per sidecar (ACK/NACK) and the status service;
//! - [`Controller`]: all of it bound to sockets, with the embedded registry.

mod app;
pub mod ca;
pub mod certs;
pub mod compile;
pub mod diagnostics;
pub mod resolve;
pub mod resources;
pub mod server;
pub mod source;
pub mod store;

pub use app::{Controller, ControllerConfig};
