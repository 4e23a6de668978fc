//! The authz filter through the real proxy: being written.
