//! The jwt filter through the real proxy: being written.
