//! Weft's fault filter: being written.
