//! Weft's telemetry filter: being written.
