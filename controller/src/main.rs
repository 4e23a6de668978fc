//! The `weft-controller` binary.

fn main() {}
