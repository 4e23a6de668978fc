//! The fault filter through the real proxy: being written.
