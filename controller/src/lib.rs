//! Weft's control plane: reads intent, compiles it into a snapshot per workload and streams
//! the snapshots to sidecars, tracking ACK/NACK.
//!
//! The pieces, in the order data flows through them:
//! - [`source`]: where intent comes from (a watched directory in local mode);
//! - [`store`]: the parsed resources, with a diagnostic for everything refused;
//! - [`resolve`]: module urls pinned to digests (the only I/O before compiling);
//! - [`compile`]: the pure function from the store to per-workload snapshots;
//! - [`server`]: the config stream per sidecar (ACK/NACK) and the status service;
//! - [`ca`] and [`certs`]: the certificate authority and the service sidecars get their
//!   SPIFFE certificates from;
//! - [`Controller`]: all of it bound to sockets, with the embedded registry.

mod app;
pub mod ca;
pub mod certs;
pub mod compile;
pub mod diagnostics;
pub mod ledger;
pub mod resolve;
pub mod resources;
pub mod server;
pub mod source;
pub mod store;

pub use app::{Controller, ControllerConfig};

/// Lowercase hex of `bytes` (digests, serials, tokens).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
