//! The config stream and the status service, in process against a real controller on
//! 127.0.0.1: versions, ACK/NACK, no push for unchanged workloads, reconnects, diagnostics.

use std::time::Duration;

use weft_api::pb;
use weft_controller::Controller;

mod support;
use support::{Sidecar, channel, setup, start};

async fn status(controller: &Controller, id: &str) -> pb::ProxyStatus {
    let mut client = pb::status_client::StatusClient::new(channel(controller).await);
    let list = client
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .expect("status")
        .into_inner();
    list.proxies
        .into_iter()
        .find(|p| p.node.as_ref().is_some_and(|n| n.id == id))
        .expect("sidecar listed")
}

async fn status_until(controller: &Controller, id: &str, want: impl Fn(&pb::ProxyStatus) -> bool) -> pb::ProxyStatus {
    for _ in 0..100 {
        let current = status(controller, id).await;
        if want(&current) {
            return current;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    status(controller, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_versioned_acked_and_nacked() {
    let dir = setup("ack");
    let controller = start(&dir).await;
    let mut sidecar = Sidecar::open(&controller, "productpage", &[("app", "productpage")], "").await;
    let first = sidecar.next(Duration::from_secs(5)).await.expect("first snapshot");
    let snapshot = weft_api::Snapshot::try_from(support::decoded(&first)).expect("valid snapshot");
    assert_eq!(snapshot.version, first.version_info);
    assert!(
        snapshot.listeners.iter().any(|l| l.address == "127.0.0.1:19001"),
        "{:?}",
        snapshot.listeners
    );
    assert_eq!(
        status(&controller, "productpage").await.state,
        pb::SyncState::Stale as i32
    );

    sidecar.answer(&first, "").await;
    let synced = status_until(&controller, "productpage", |s| s.state == pb::SyncState::Synced as i32).await;
    assert_eq!(synced.acked_version, first.version_info);
    assert_eq!(synced.workload, "default/productpage");
    // SYNCED names the intent the snapshot came from: the controller's current one.
    let list = pb::status_client::StatusClient::new(support::channel(&controller).await)
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(!list.intent_version.is_empty());
    assert_eq!(synced.intent_version, list.intent_version);

    // A change that alters this workload's snapshot: a new version, NACKed.
    std::fs::write(
        dir.join("intent/vs.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: reviews }\nspec:\n  hosts: [reviews]\n  http: [{ timeout: 2s, route: [{ destination: { host: reviews } }] }]\n",
    )
    .expect("write");
    let second = sidecar.next(Duration::from_secs(5)).await.expect("second snapshot");
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    sidecar.answer(&second, "filter \"x\": on_configure rejected").await;
    let nacked = status_until(&controller, "productpage", |s| s.state == pb::SyncState::Nacked as i32).await;
    assert_eq!(nacked.last_error, "filter \"x\": on_configure rejected");
    assert_eq!(nacked.sent_version, second.version_info);

    // Reconnecting while running the current version: nothing is resent; synced.
    drop(sidecar);
    let mut again = Sidecar::open(
        &controller,
        "productpage",
        &[("app", "productpage")],
        &second.version_info,
    )
    .await;
    assert!(
        again.next(Duration::from_millis(500)).await.is_none(),
        "the running version is not resent"
    );
    let synced = status_until(&controller, "productpage", |s| {
        s.connected && s.state == pb::SyncState::Synced as i32
    })
    .await;
    assert_eq!(synced.acked_version, second.version_info);
    let _ = std::fs::remove_dir_all(&dir);
}

/// After an ACK, a VirtualService edit sends the parts that changed and names the others by
/// digest; a sidecar that lacks a part gets the whole snapshot again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_sends_only_the_parts_that_changed() {
    let dir = setup("parts");
    let controller = start(&dir).await;
    let mut sidecar = Sidecar::open(&controller, "productpage", &[("app", "productpage")], "").await;
    let first = sidecar.next_raw(Duration::from_secs(5)).await.expect("first snapshot");
    assert!(
        first.parts.iter().all(|p| !p.data.is_empty()),
        "a new stream holds nothing: every part is sent whole"
    );
    assert!(first.parts.len() > 3, "version, own part, routes, a part per service");
    let held = weft_api::parts::HeldParts::default()
        .assemble(first.parts.clone())
        .expect("assembles")
        .held;
    sidecar.answer(&first, "").await;
    status_until(&controller, "productpage", |s| s.state == pb::SyncState::Synced as i32).await;

    std::fs::write(
        dir.join("intent/vs.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: reviews }\nspec:\n  hosts: [reviews]\n  http: [{ timeout: 2s, route: [{ destination: { host: reviews } }] }]\n",
    )
    .expect("write");
    let second = sidecar.next_raw(Duration::from_secs(5)).await.expect("second snapshot");
    let size = |r: &pb::DiscoveryResponse| r.parts.iter().map(|p| p.data.len()).sum::<usize>();
    // Every part the sidecar holds is named by digest, every other part is sent.
    for part in &second.parts {
        let held = !part.digest.is_empty() && first.parts.iter().any(|p| p.digest == part.digest);
        assert_eq!(part.data.is_empty(), held, "part {:?}", part.digest);
    }
    let by_digest: Vec<&str> = second
        .parts
        .iter()
        .filter(|p| p.data.is_empty())
        .map(|p| p.digest.as_str())
        .collect();
    assert_eq!(
        by_digest.len(),
        second.parts.len() - 2,
        "only the version and the node's own part (its listeners' filter configs) changed"
    );
    // What the sidecar assembles is what the whole snapshot says.
    let assembled = held.assemble(second.parts.clone()).expect("assembles from held parts");
    let mut whole = second.clone();
    for part in &mut whole.parts {
        if part.data.is_empty() {
            part.data = first
                .parts
                .iter()
                .find(|p| p.digest == part.digest)
                .expect("a part sent by digest is one of the first snapshot's")
                .data
                .clone();
        }
    }
    let expected = weft_api::Snapshot::try_from(support::decoded(&whole)).expect("valid");
    assert_eq!(assembled.snapshot, expected);
    assert_eq!(expected.version, second.version_info);

    // A sidecar that lacks a part says so; the controller sends the same version whole.
    sidecar
        .tx
        .send(pb::DiscoveryRequest {
            version_info: first.version_info.clone(),
            response_nonce: second.nonce.clone(),
            missing_parts: vec![by_digest[0].to_owned()],
            ..Default::default()
        })
        .await
        .expect("send");
    let third = sidecar.next_raw(Duration::from_secs(5)).await.expect("sent again");
    assert_eq!(third.version_info, second.version_info);
    assert_ne!(third.nonce, second.nonce);
    assert!(third.parts.iter().all(|p| !p.data.is_empty()), "sent whole");
    assert_eq!(size(&third), size(&whole));
    sidecar.answer(&third, "").await;
    let synced = status_until(&controller, "productpage", |s| s.state == pb::SyncState::Synced as i32).await;
    assert_eq!(synced.acked_version, second.version_info);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_workloads_get_nothing() {
    let dir = setup("quiet");
    let controller = start(&dir).await;
    let mut productpage = Sidecar::open(&controller, "productpage", &[("app", "productpage")], "").await;
    let mut reviews = Sidecar::open(&controller, "reviews-v1", &[("app", "reviews"), ("version", "v1")], "").await;
    let pp = productpage.next(Duration::from_secs(5)).await.expect("snapshot");
    let rv = reviews.next(Duration::from_secs(5)).await.expect("snapshot");
    productpage.answer(&pp, "").await;
    reviews.answer(&rv, "").await;

    // A filter chain for productpage only.
    std::fs::write(
        dir.join("intent/chain.yaml"),
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{ name: mark }}\nspec: {{ url: 'file://{}', sha256: '{}' }}\n---\napiVersion: weft.dev/v1alpha1\nkind: FilterChain\nmetadata: {{ name: pp }}\nspec:\n  selector: {{ matchLabels: {{ app: productpage }} }}\n  direction: inbound\n  filters: [{{ filter: mark }}]\n",
            dir.join("filters/router.wasm").display(),
            "a".repeat(64)
        ),
    )
    .expect("write");
    let update = productpage
        .next(Duration::from_secs(5))
        .await
        .expect("productpage gets the change");
    let snapshot = weft_api::Snapshot::try_from(support::decoded(&update)).expect("valid");
    assert!(
        snapshot
            .listeners
            .iter()
            .any(|l| l.filters.iter().any(|f| f.name == "mark")),
        "{snapshot:?}"
    );
    assert!(
        reviews.next(Duration::from_millis(700)).await.is_none(),
        "reviews' snapshot did not change"
    );

    // A change to a comment changes the intent, not any snapshot.
    let text = std::fs::read_to_string(dir.join("intent/mesh.yaml")).expect("read");
    std::fs::write(dir.join("intent/mesh.yaml"), format!("# edited\n{text}")).expect("write");
    assert!(productpage.next(Duration::from_millis(700)).await.is_none());
    assert!(reviews.next(Duration::from_millis(100)).await.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_a_node_are_refused_and_bad_intent_is_reported() {
    let dir = setup("bad");
    std::fs::write(
        dir.join("intent/bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: broken }\nspec:\n  hosts: [reviews]\n  http: [{ rout: [] }]\n",
    )
    .expect("write");
    let controller = start(&dir).await;

    let (tx, requests) = tokio::sync::mpsc::channel(1);
    tx.send(pb::DiscoveryRequest::default()).await.expect("send");
    let refused = pb::discovery_client::DiscoveryClient::new(channel(&controller).await)
        .stream_snapshots(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .expect_err("no node");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let mut client = pb::status_client::StatusClient::new(channel(&controller).await);
    let diagnostics = client
        .list_diagnostics(pb::ListDiagnosticsRequest {})
        .await
        .expect("diagnostics")
        .into_inner()
        .diagnostics;
    let broken = diagnostics
        .iter()
        .find(|d| d.name == "broken")
        .unwrap_or_else(|| panic!("{diagnostics:?}"));
    assert_eq!(
        (broken.kind.as_str(), broken.severity.as_str()),
        ("VirtualService", "error")
    );
    assert!(broken.field.contains("rout"), "{broken:?}");
    assert_eq!(broken.origin, "bad.yaml");

    // Everything else still compiles and streams.
    let mut sidecar = Sidecar::open(&controller, "productpage", &[("app", "productpage")], "").await;
    assert!(sidecar.next(Duration::from_secs(5)).await.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
