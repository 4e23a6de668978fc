//! Fixtures shared by the controller's integration tests: an intent directory with a small
//! mesh and a controller started on 127.0.0.1.

#![allow(dead_code, reason = "each test binary uses part of the fixtures")]

use std::path::{Path, PathBuf};

use std::time::Duration;

use weft_api::pb;
use weft_controller::{Controller, ControllerConfig};

/// A temporary directory with an intent dir and stand-in first-party modules (the
/// controller publishes and hashes them; it never runs them).
pub(crate) fn setup(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("intent")).expect("mkdir");
    std::fs::create_dir_all(dir.join("filters")).expect("mkdir");
    for (i, name) in ["router", "retry", "fault"].iter().enumerate() {
        // A valid module header plus a custom section, different per filter.
        let bytes = [0, b'a', b's', b'm', 1, 0, 0, 0, 0, 2, 1, b'a' + i as u8];
        std::fs::write(dir.join(format!("filters/{name}.wasm")), bytes).expect("write");
    }
    std::fs::write(
        dir.join("intent/mesh.yaml"),
        r#"
apiVersion: v1
kind: Service
metadata: { name: reviews }
spec:
  selector: { app: reviews }
  ports: [{ name: http, port: 9080, targetPort: http }]
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: { name: productpage, labels: { app: productpage } }
spec: { address: 127.0.0.1, serviceAccount: bookinfo-productpage, ports: { http: 19080 }, sidecar: { inbound: 19006, outbound: 19001 } }
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: { name: reviews-v1, labels: { app: reviews, version: v1 } }
spec: { address: 127.0.0.1, ports: { http: 29080 }, sidecar: { inbound: 29006, outbound: 29001 } }
"#,
    )
    .expect("write");
    dir
}

pub(crate) async fn start(dir: &Path) -> Controller {
    let config = ControllerConfig {
        grpc_address: "127.0.0.1:0".parse().expect("addr"),
        registry_address: Some("127.0.0.1:0".parse().expect("addr")),
        ..ControllerConfig::new(dir.join("intent"), dir.join("data"), dir.join("filters"))
    };
    Controller::start(config).await.expect("controller starts")
}

pub(crate) async fn channel(controller: &Controller) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", controller.grpc_address()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects")
}

/// One simulated sidecar stream. It holds the parts of the last response it ACKed, as a
/// sidecar does, and fills in the parts later responses send by digest.
pub(crate) struct Sidecar {
    pub(crate) tx: tokio::sync::mpsc::Sender<pb::DiscoveryRequest>,
    pub(crate) rx: tonic::Streaming<pb::DiscoveryResponse>,
    /// Data of the parts held, by digest.
    pub(crate) held: std::collections::HashMap<String, prost::bytes::Bytes>,
}

impl Sidecar {
    pub(crate) async fn open(controller: &Controller, id: &str, labels: &[(&str, &str)], running: &str) -> Self {
        let (tx, requests) = tokio::sync::mpsc::channel(4);
        tx.send(pb::DiscoveryRequest {
            node: Some(pb::Node {
                id: id.into(),
                namespace: "default".into(),
                labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                ..Default::default()
            }),
            version_info: running.into(),
            ..Default::default()
        })
        .await
        .expect("send hello");
        let rx = pb::discovery_client::DiscoveryClient::new(channel(controller).await)
            .stream_snapshots(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .expect("stream opens")
            .into_inner();
        Self {
            tx,
            rx,
            held: Default::default(),
        }
    }

    /// The next response, with the data of every part it sent by digest filled in from the
    /// parts held (it panics on a part not held).
    pub(crate) async fn next(&mut self, within: Duration) -> Option<pb::DiscoveryResponse> {
        let mut response = self.next_raw(within).await?;
        for part in &mut response.parts {
            if part.data.is_empty() {
                part.data = self
                    .held
                    .get(&part.digest)
                    .unwrap_or_else(|| panic!("the response refers to part {:?}, not held", part.digest))
                    .clone();
            }
        }
        Some(response)
    }

    /// The next response as sent.
    pub(crate) async fn next_raw(&mut self, within: Duration) -> Option<pb::DiscoveryResponse> {
        tokio::time::timeout(within, self.rx.message())
            .await
            .ok()
            .and_then(|m| m.expect("stream ok"))
    }

    /// ACKs (`error` empty) or NACKs `response`, as returned by [`Sidecar::next`]; an ACK
    /// makes its parts the ones held.
    pub(crate) async fn answer(&mut self, response: &pb::DiscoveryResponse, error: &str) {
        if error.is_empty() {
            self.held = response
                .parts
                .iter()
                .filter(|p| !p.digest.is_empty())
                .map(|p| (p.digest.clone(), p.data.clone()))
                .collect();
        }
        self.tx
            .send(pb::DiscoveryRequest {
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: error.into(),
                ..Default::default()
            })
            .await
            .expect("send answer");
    }
}

/// The snapshot a response carries, decoded.
pub(crate) fn decoded(response: &pb::DiscoveryResponse) -> pb::Snapshot {
    use prost::Message as _;
    let bytes: Vec<u8> = response.parts.iter().flat_map(|p| p.data.iter().copied()).collect();
    pb::Snapshot::decode(bytes.as_slice()).expect("the snapshot decodes")
}
