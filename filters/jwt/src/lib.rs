//! Weft's jwt filter: being written.
