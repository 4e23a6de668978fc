//! Filter modules as OCI artifacts: the Wasm image format, a client that pushes and pulls
//! them (verifying every digest), and, with the `server` feature, the embedded registry.
