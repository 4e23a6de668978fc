//! Snapshots assembled from parts (`weft_api::parts`): the same snapshot as the
//! concatenation decoded whole, held parts reused, and errors named in the whole.

use std::sync::Arc;

use prost::Message as _;
use weft_api::parts::{HeldParts, PartsError};
use weft_api::{Snapshot, pb};

const SNAPSHOT: &str = r#"
version: "v1"
listeners:
  - name: outbound
    address: 127.0.0.1:0
    route_table: outbound
route_tables:
  - name: outbound
    virtual_hosts:
      - name: reviews
        domains: ["reviews"]
        routes:
          - forward: { cluster: reviews, subset: { version: v1 } }
      - name: ratings
        domains: ["ratings"]
        routes:
          - forward: { cluster: ratings }
clusters:
  - name: reviews
    endpoints:
      - { address: 127.0.0.1:9080, labels: { version: v1 } }
      - { address: 127.0.0.1:9081, labels: { version: v2 } }
  - name: ratings
    endpoints:
      - { address: 127.0.0.1:9090 }
security:
  trust_bundle: ["root"]
"#;

/// The wire parts of `snapshot` as the controller cuts them: version, listeners and security
/// with the limits, route tables, then one part per cluster. Digests are the parts' names.
fn parts_of(snapshot: &Snapshot) -> Vec<pb::SnapshotPart> {
    let encode = |piece: Snapshot, limits: bool| {
        let mut wire = pb::Snapshot::from(&piece);
        if !limits {
            wire.limits = None;
        }
        wire.encode_to_vec()
    };
    let mut parts = vec![
        (
            String::new(),
            encode(
                Snapshot {
                    version: snapshot.version.clone(),
                    ..Snapshot::default()
                },
                false,
            ),
        ),
        (
            "own".to_owned(),
            encode(
                Snapshot {
                    listeners: snapshot.listeners.clone(),
                    security: snapshot.security.clone(),
                    limits: snapshot.limits,
                    ..Snapshot::default()
                },
                true,
            ),
        ),
        (
            "routes".to_owned(),
            encode(
                Snapshot {
                    route_tables: snapshot.route_tables.clone(),
                    ..Snapshot::default()
                },
                false,
            ),
        ),
    ];
    for cluster in &snapshot.clusters {
        let piece = Snapshot {
            clusters: vec![cluster.clone()],
            ..Snapshot::default()
        };
        parts.push((format!("cluster-{}", cluster.name), encode(piece, false)));
    }
    parts
        .into_iter()
        .map(|(digest, data)| pb::SnapshotPart {
            digest,
            data: data.into(),
        })
        .collect()
}

/// What `Snapshot::try_from` makes of the parts' data concatenated.
fn whole(parts: &[pb::SnapshotPart]) -> Snapshot {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
    Snapshot::try_from(pb::Snapshot::decode(bytes.as_slice()).expect("decodes")).expect("valid")
}

/// `parts` with the data of those named in `held` left out, as the controller sends them.
fn by_digest(parts: &[pb::SnapshotPart], held: &[&str]) -> Vec<pb::SnapshotPart> {
    parts
        .iter()
        .map(|p| pb::SnapshotPart {
            digest: p.digest.clone(),
            data: if held.contains(&p.digest.as_str()) {
                Default::default()
            } else {
                p.data.clone()
            },
        })
        .collect()
}

fn errors(error: PartsError) -> Vec<String> {
    match error {
        PartsError::Invalid(weft_api::InvalidSnapshot::Validation(weft_api::LoadError::Invalid(errors))) => {
            errors.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn a_snapshot_from_parts_is_the_whole_snapshot() {
    let snapshot = Snapshot::from_yaml(SNAPSHOT).expect("valid");
    let parts = parts_of(&snapshot);
    let assembled = HeldParts::default().assemble(parts.clone()).expect("assembles");
    assert_eq!(assembled.snapshot, whole(&parts));
    assert_eq!(assembled.snapshot, snapshot);
    assert_eq!(
        assembled.received_bytes,
        parts.iter().map(|p| p.data.len()).sum::<usize>()
    );
    // Every part with a digest is held; the version part is not.
    assert_eq!(assembled.held.len(), parts.len() - 1);
}

#[test]
fn parts_sent_by_digest_are_the_held_ones_shared_not_copied() {
    let first = Snapshot::from_yaml(SNAPSHOT).expect("valid");
    let assembled = HeldParts::default().assemble(parts_of(&first)).expect("assembles");
    let held = assembled.held;
    let before = assembled.snapshot;

    // A new version whose route table changed: only that part is sent with data.
    let mut next = first.clone();
    next.version = "v2".to_owned();
    next.route_tables[0].virtual_hosts[0]
        .domains
        .push("reviews.default".to_owned());
    let mut parts = parts_of(&next);
    parts[2].digest = "routes-2".to_owned();
    let sent = by_digest(&parts, &["own", "cluster-reviews", "cluster-ratings"]);
    let assembled = held.assemble(sent.clone()).expect("assembles");
    assert_eq!(assembled.snapshot, whole(&parts));
    assert_eq!(assembled.snapshot.version, "v2");
    assert_eq!(
        assembled.received_bytes,
        sent.iter().map(|p| p.data.len()).sum::<usize>()
    );
    assert!(assembled.received_bytes < parts.iter().map(|p| p.data.len()).sum::<usize>());
    for (old, new) in before.clusters.iter().zip(&assembled.snapshot.clusters) {
        assert!(Arc::ptr_eq(old, new), "cluster {} was copied", new.name);
    }
    // The parts held now are this snapshot's: the old route table is gone.
    let again = by_digest(&parts_of(&first), &["own", "routes", "cluster-reviews"]);
    match assembled.held.assemble(again) {
        Err(PartsError::Missing(missing)) => assert_eq!(missing, ["routes"]),
        other => panic!("expected a missing part, got {other:?}"),
    }
}

#[test]
fn a_part_not_held_is_named_and_nothing_else_is_checked() {
    let snapshot = Snapshot::from_yaml(SNAPSHOT).expect("valid");
    let sent = by_digest(&parts_of(&snapshot), &["cluster-ratings"]);
    match HeldParts::default().assemble(sent) {
        Err(PartsError::Missing(missing)) => assert_eq!(missing, ["cluster-ratings"]),
        other => panic!("expected a missing part, got {other:?}"),
    }
    assert!(matches!(
        HeldParts::default().assemble(Vec::new()),
        Err(PartsError::Empty)
    ));
}

#[test]
fn errors_name_the_field_in_the_whole_snapshot() {
    let snapshot = Snapshot::from_yaml(SNAPSHOT).expect("valid");
    let held = HeldParts::default()
        .assemble(parts_of(&snapshot))
        .expect("assembles")
        .held;

    // A bad endpoint in the second cluster's part: its path counts the clusters before it.
    let mut bad = snapshot.clone();
    Arc::make_mut(&mut bad.clusters[1]).endpoints[0].address = "ratings:9090".to_owned();
    let mut parts = parts_of(&bad);
    parts[4].digest = "cluster-ratings-2".to_owned();
    let sent = by_digest(&parts, &["own", "routes", "cluster-reviews"]);
    assert_eq!(
        errors(held.assemble(sent).expect_err("invalid")),
        ["clusters[1].endpoints[0].address: \"ratings:9090\" is not an ip:port socket address"]
    );

    // A reference from a held part to a cluster no longer sent.
    let mut fewer = snapshot.clone();
    fewer.clusters.truncate(1);
    let sent = by_digest(&parts_of(&fewer), &["own", "routes", "cluster-reviews"]);
    assert_eq!(
        errors(held.assemble(sent).expect_err("invalid")),
        ["route_tables[0].virtual_hosts[1].routes[0].forward.cluster: no cluster named \"ratings\""]
    );

    // Two parts defining the same cluster.
    let mut sent = by_digest(&parts_of(&snapshot), &["own", "routes", "cluster-reviews"]);
    sent.push(pb::SnapshotPart {
        digest: "cluster-reviews-again".to_owned(),
        data: parts_of(&snapshot)[3].data.clone(),
    });
    assert_eq!(
        errors(held.assemble(sent).expect_err("invalid")),
        ["clusters[2].name: \"reviews\" is used twice"]
    );

    // Bytes that are not a snapshot.
    let mut sent = by_digest(&parts_of(&snapshot), &["own", "routes"]);
    sent[3].data = vec![0xff, 0xff, 0xff].into();
    assert!(matches!(held.assemble(sent), Err(PartsError::Decode { index: 3, .. })));
}
