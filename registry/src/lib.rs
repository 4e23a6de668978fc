//! Filter modules as OCI artifacts: the Wasm image format, a client that pushes and pulls
//! them (verifying every digest), and, with the `server` feature, the embedded registry.
//!
//! What it is:
//!
//! - [`image`]: the two image variants a module travels in (the OCI Wasm variant that
//!   [`Client::push_module`] writes, and the compat variant: a tar layer holding
//!   `plugin.wasm`), their media types and manifests.
//! - [`Client`]: push, pull, resolve and list over the OCI distribution API, on hyper
//!   (HTTP/1.1, https through rustls), with size limits and digest checks on everything it
//!   reads.
//! - [`fetch_module`] / [`fetch_module_unpinned`]: what the proxy and the controller call to
//!   turn a module url (`oci://`, `file://`, `http://`, `https://`) into a verified file in a
//!   cache directory keyed by sha256.
//! - `server::Registry` (feature `server`): a small registry over a content-addressed store
//!   on disk, serving the subset of the distribution API that real clients use, and a way to
//!   publish modules into it without HTTP.
//!
//! What it is not: a general container image tool. Authentication, image indexes
//! (multi-platform images) and the referrers API are not supported (see `docs/registry.md`).
//!
//! Start reading at [`Client`] and [`image`]; the on-disk and wire rules are in
//! `docs/registry.md`.

mod client;
mod digest;
mod error;
mod fetch;
mod fs;
pub mod image;
mod reference;
#[cfg(feature = "server")]
pub mod server;

pub use client::{Client, ClientOptions, Pulled, Pushed, Repository, Tag};
pub use digest::Digest;
pub use error::Error;
pub use fetch::{cache_path, fetch_module, fetch_module_unpinned};
pub use reference::{Reference, RegistryHost};

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
