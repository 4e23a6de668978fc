//! `weft-proxy`: Weft's data plane, a small HTTP proxy whose L7 features run as filters.
//!
//! The core accepts connections, speaks HTTP/1.1 and HTTP/2, runs the listener's filter chain,
//! routes the request to a cluster, picks an endpoint (load balancing, health, outlier
//! ejection, circuit breakers) and streams the response back. It is *not* where L7 policy
//! lives: retries, rate limits, authorization and the like are filters plugged into
//! [`filter`].
//!
//! Start reading at [`Proxy::start`] (threads, listeners, snapshot updates), then
//! `http.rs` (one request's path through the proxy), `cluster.rs` (endpoint choice) and
//! `pool.rs` (upstream connections). The request path as a chart lives in
//! `docs/request-path.md`. Snapshots come from a file or from the controller's config stream
//! ([`control`]); the workload certificate from the controller's CA ([`identity`]), used for
//! mesh mutual TLS and gateway TLS termination in `tls.rs`. A `tls_passthrough` listener
//! speaks no HTTP: `passthrough.rs` relays its connections by the ClientHello's server name.

mod admin;
mod body;
mod callout;
mod chain;
mod cluster;
pub mod control;
pub mod filter;
mod generation;
pub mod harness;
mod http;
pub mod identity;
mod listener;
mod passthrough;
mod pool;
mod proxy;
mod reply;
mod routes;
mod stats;
mod tls;
mod wasm;
mod worker;

pub use proxy::{Proxy, ProxyConfig, ProxyError};
pub use reply::{REASON_HEADER, Reason};
pub use tls::TlsError;
pub use wasm::WasmSettings;
