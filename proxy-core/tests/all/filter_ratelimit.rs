//! The ratelimit filter through the real proxy: being written.
