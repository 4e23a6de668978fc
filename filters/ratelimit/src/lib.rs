//! Weft's ratelimit filter: being written.
