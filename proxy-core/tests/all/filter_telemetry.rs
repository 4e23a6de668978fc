//! The telemetry filter through the real proxy: being written.
