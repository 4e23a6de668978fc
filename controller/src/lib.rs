//! Weft's control plane: reads intent, compiles it into a snapshot per workload and streams
//! the snapshots to sidecars, tracking ACK/NACK.
