//! Integration tests of weft-proxy: the real proxy on 127.0.0.1 port 0, in-process upstreams,
//! real HTTP clients. One test binary for the crate keeps link times down.

#![allow(unreachable_pub, reason = "test fixtures are shared between test modules")]

mod support;

mod balancing;
mod basics;
mod egress_tls;
mod examples;
mod filter_authz;
mod filter_fault;
mod filter_jwt;
mod filter_ratelimit;
mod filter_retry;
mod filter_router;
mod filter_telemetry;
mod gateway_tls;
mod grpc;
mod identity;
mod lifecycle;
mod mtls;
mod passthrough;
mod protocols;
mod resilience;
mod wasm;
mod websocket;
