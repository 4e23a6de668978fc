//! The router filter through the real proxy: being written.
