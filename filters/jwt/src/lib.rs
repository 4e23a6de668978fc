//! Weft's `jwt` filter: end-user authentication with JSON Web Tokens, with the semantics of
//! Istio's [RequestAuthentication] (Envoy's `jwt_authn` filter underneath).
//!
//! - A request **without** a token passes unchanged (authorization decides, e.g. the `authz`
//!   filter with `request_principals`).
//! - A request with a token that does not verify gets a local reply: 401 (403 for a disallowed
//!   audience) whose body is Envoy's reason (`Jwt verification fails`, `Jwt is expired`, ...)
//!   and `www-authenticate: Bearer realm="<uri>", error="invalid_token"`.
//! - A valid token is removed from the request (unless `forward_original_token`), its claims
//!   and payload are copied into the configured headers (incoming copies of those headers are
//!   always removed first), and for the filters after it the payload is stored as property
//!   `weft.jwt.claims` (JSON) and the principal `<iss>/<sub>` as `request.auth.principal`.
//!
//! Signatures: RS256, RS384, RS512 and ES256; keys from an inline JWKS or fetched from a
//! cluster with an HTTP callout (the request waits), cached in shared data. See `README.md`
//! and `schema.json` for the configuration.
//!
//! [RequestAuthentication]: https://istio.io/latest/docs/reference/config/security/request_authentication/

#![warn(missing_docs, clippy::unwrap_used)]

pub mod config;
pub mod extract;
pub mod jwks;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod filter;
