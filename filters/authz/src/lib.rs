//! Weft's `authz` filter: access control with the semantics of Istio's [AuthorizationPolicy]
//! (Envoy's RBAC filter underneath).
//!
//! The configuration holds the policies that apply to the listener. For each request: if any
//! DENY policy matches, it is denied; otherwise, if there are ALLOW policies and none
//! matches, it is denied; otherwise it goes on. AUDIT policies only log and count their
//! matches. A denial is a local reply 403 with body `RBAC: access denied`.
//!
//! Attributes come from the request head, the host's properties (`source.address`,
//! `destination.address`, `destination.port`, `source.principal` for mTLS) and, for
//! `request_principals` and `request.auth.*` conditions, from the `jwt` filter placed
//! before this one (properties `request.auth.principal` and `weft.jwt.claims`). See
//! `README.md` and `schema.json`.
//!
//! [AuthorizationPolicy]: https://istio.io/latest/docs/reference/config/security/authorization-policy/

#![warn(missing_docs, clippy::unwrap_used)]

pub mod config;
pub mod eval;
pub mod matcher;

#[cfg(target_arch = "wasm32")]
mod filter;
