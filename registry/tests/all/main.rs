//! weft-registry's integration tests: the client against the embedded registry and
//! against an external one (Debian's `docker-registry`), module fetching by url.

mod docker_registry;
mod embedded;
mod fetch;
mod support;
