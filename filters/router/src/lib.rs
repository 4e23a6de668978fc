//! Weft's router filter: being written.
