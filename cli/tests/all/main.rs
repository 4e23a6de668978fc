//! weftctl's integration tests: the built binary run against real services.

mod bench;
mod registry;
