//! Snapshots that arrive in parts, reusing the parts a sidecar already holds.
//!
//! The controller sends a snapshot as a list of [`pb::SnapshotPart`]s whose data, concatenated,
//! are one encoded `weft.v1.Snapshot`. It cuts the snapshot where sidecars share content (the
//! node's own resources, its namespace's outbound route table, each service's clusters) and
//! sends a part the sidecar already holds as its digest alone. A sidecar holds the parts of
//! the last snapshot it applied.
//!
//! [`HeldParts::assemble`] turns a response's parts into a validated [`Snapshot`]: a part
//! sent with data is decoded, converted and its contents checked once, where it arrives; a
//! part sent by digest is the one held, already checked, its clusters shared (`Arc`), not
//! copied; then the references between all parts (names, route tables, clusters, subsets)
//! are checked on the whole. The result is the snapshot `Snapshot::try_from` gives for the
//! concatenated bytes, at a fraction of the cost when most parts are held.
//!
//! ```no_run
//! # fn apply(_: &weft_api::Snapshot) -> Result<(), String> { Ok(()) }
//! # fn f(response: weft_api::pb::DiscoveryResponse) -> Result<(), weft_api::parts::PartsError> {
//! let mut held = weft_api::parts::HeldParts::default();
//! let assembled = held.assemble(response.parts)?;
//! if apply(&assembled.snapshot).is_ok() {
//!     held = assembled.held; // the parts the next response may refer to
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message as _;

use crate::pb;
use crate::snapshot::validate::{Errors, Offsets, check_contents, check_references};
use crate::{InvalidSnapshot, Snapshot};

/// The parts of the last snapshot a sidecar applied, decoded and checked, by digest.
#[derive(Debug, Default, Clone)]
pub struct HeldParts {
    parts: HashMap<String, Arc<Part>>,
}

/// One decoded part: a snapshot holding only the part's fields.
#[derive(Debug)]
struct Part {
    snapshot: Snapshot,
    /// Whether the part set `limits` (otherwise `snapshot.limits` is the default, not a value).
    limits: bool,
}

/// A snapshot assembled from a response's parts, and the parts the next response may refer to
/// once it is applied.
#[derive(Debug)]
pub struct Assembled {
    /// The snapshot, validated.
    pub snapshot: Snapshot,
    /// The parts of this snapshot: what the sidecar holds once it applied it.
    pub held: HeldParts,
    /// Bytes of part data the response carried (parts sent by digest count nothing).
    pub received_bytes: usize,
}

/// Why a response's parts do not make a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    /// The response has no parts.
    #[error("the response carries no snapshot")]
    Empty,
    /// Parts sent by digest that are not held (the controller sends the whole again when told).
    #[error("snapshot parts not held: {}", .0.join(", "))]
    Missing(Vec<String>),
    /// A part's data is not a protobuf `weft.v1.Snapshot`.
    #[error("cannot decode part {index} of the snapshot")]
    Decode {
        /// Position of the part in the response.
        index: usize,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// The snapshot is not valid; every problem is named with its path in the whole snapshot.
    #[error(transparent)]
    Invalid(InvalidSnapshot),
}

impl HeldParts {
    /// Number of parts held.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether no part is held (the start of a stream).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Assembles and validates the snapshot `parts` make, with the parts held for those sent
    /// by digest. Nothing changes in `self`: keep [`Assembled::held`] once the snapshot is
    /// applied.
    pub fn assemble(&self, parts: Vec<pb::SnapshotPart>) -> Result<Assembled, PartsError> {
        if parts.is_empty() {
            return Err(PartsError::Empty);
        }
        let missing: Vec<String> = parts
            .iter()
            .filter(|p| p.data.is_empty() && !self.parts.contains_key(&p.digest))
            .map(|p| p.digest.clone())
            .collect();
        if !missing.is_empty() {
            return Err(PartsError::Missing(missing));
        }
        let mut errors = Errors::default();
        let mut offsets = Offsets::default();
        let mut received_bytes = 0;
        let mut decoded = Vec::with_capacity(parts.len());
        for (index, part) in parts.into_iter().enumerate() {
            let piece = if part.data.is_empty() {
                self.parts[&part.digest].clone()
            } else {
                received_bytes += part.data.len();
                let wire = pb::Snapshot::decode(part.data).map_err(|source| PartsError::Decode { index, source })?;
                let limits = wire.limits.is_some();
                let snapshot = pb::convert::snapshot_from_pb(wire, offsets).map_err(PartsError::Invalid)?;
                check_contents(&mut errors, &snapshot, offsets);
                Arc::new(Part { snapshot, limits })
            };
            offsets.listeners += piece.snapshot.listeners.len();
            offsets.route_tables += piece.snapshot.route_tables.len();
            offsets.clusters += piece.snapshot.clusters.len();
            decoded.push((part.digest, piece));
        }

        // As concatenated protobuf messages merge: a version set later wins, repeated fields
        // append (security's lists too). The controller sets `limits` in one part; were two
        // to set it, the later would win whole.
        let mut snapshot = Snapshot {
            listeners: Vec::with_capacity(offsets.listeners),
            route_tables: Vec::with_capacity(offsets.route_tables),
            clusters: Vec::with_capacity(offsets.clusters),
            ..Snapshot::default()
        };
        for (_, part) in &decoded {
            let piece = &part.snapshot;
            if !piece.version.is_empty() {
                snapshot.version.clone_from(&piece.version);
            }
            snapshot.listeners.extend_from_slice(&piece.listeners);
            snapshot.route_tables.extend_from_slice(&piece.route_tables);
            snapshot.clusters.extend_from_slice(&piece.clusters);
            if part.limits {
                snapshot.limits = piece.limits;
            }
            let security = &mut snapshot.security;
            security.trust_bundle.extend_from_slice(&piece.security.trust_bundle);
            security
                .revoked_serials
                .extend_from_slice(&piece.security.revoked_serials);
            security
                .revoked_identities
                .extend_from_slice(&piece.security.revoked_identities);
        }
        check_references(&mut errors, &snapshot);
        errors
            .into_result()
            .map_err(|e| PartsError::Invalid(InvalidSnapshot::Validation(e)))?;
        let held = HeldParts {
            parts: decoded.into_iter().filter(|(digest, _)| !digest.is_empty()).collect(),
        };
        Ok(Assembled {
            snapshot,
            held,
            received_bytes,
        })
    }
}
