//! Weft's authz filter: being written.
