//! Weft's retry filter: being written.
