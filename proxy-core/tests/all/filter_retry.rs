//! The retry filter through the real proxy: being written.
