//! The simulated sidecars: one config stream each on a shared tokio runtime; every snapshot
//! decoded, converted, validated and ACKed (not applied), with when it happened. And the
//! Status API's view of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use prost::Message as _;
use tokio::sync::{Notify, Semaphore, mpsc};
use tonic::transport::{Channel, Endpoint};
use weft_api::pb;

use super::intent::WorkloadNode;
use super::process::endpoint;
use super::{CONNECT_CONCURRENCY, MAX_MESSAGE};

/// What one simulated sidecar has seen.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    /// Responses received.
    pub(super) responses: u64,
    /// Responses ACKed.
    acks: u64,
    /// The version last ACKed.
    version: String,
    /// When the last response arrived (decoded).
    pub(super) received: Option<Instant>,
    /// When the last ACK was handed to the stream.
    pub(super) acked: Option<Instant>,
    /// Encoded size of the last response.
    pub(super) bytes: usize,
    /// Time spent converting and validating snapshots, all responses.
    pub(super) validate: Duration,
    /// Why the last NACK was sent.
    nack: Option<String>,
    /// Why the stream ended, once it has.
    ended: Option<String>,
}

/// The simulated sidecars' shared state.
pub(super) struct Fleet {
    seen: Vec<Mutex<Seen>>,
    /// ACKs sent, all streams.
    acks: AtomicU64,
    /// NACKs sent, all streams.
    nacks: AtomicU64,
    /// Streams that ended.
    ended: AtomicUsize,
    /// Woken on every response and every ended stream.
    wake: Notify,
}

impl Fleet {
    pub(super) fn new(streams: usize) -> Self {
        Self {
            seen: (0..streams).map(|_| Mutex::new(Seen::default())).collect(),
            acks: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            ended: AtomicUsize::new(0),
            wake: Notify::new(),
        }
    }

    pub(super) fn lock(&self, index: usize) -> MutexGuard<'_, Seen> {
        self.seen[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of every stream's state.
    pub(super) fn snapshot(&self) -> Vec<Seen> {
        (0..self.seen.len()).map(|i| self.lock(i).clone()).collect()
    }

    /// Waits until every stream has ACKed more responses than in `before`; fails on a NACK,
    /// an ended stream or the timeout.
    pub(super) async fn wait_acked(&self, before: &[Seen], timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let target: u64 = before.iter().map(|s| s.acks + 1).sum();
        let nacks = self.nacks.load(Ordering::SeqCst);
        loop {
            if self.nacks.load(Ordering::SeqCst) > nacks {
                let reason = self.snapshot().into_iter().find_map(|s| s.nack);
                bail!("a sidecar NACKed its snapshot: {}", reason.unwrap_or_default());
            }
            if self.ended.load(Ordering::SeqCst) > 0 {
                let (index, reason) = self
                    .snapshot()
                    .into_iter()
                    .enumerate()
                    .find_map(|(i, s)| s.ended.map(|r| (i, r)))
                    .unwrap_or_default();
                bail!("stream {index} ended: {reason}");
            }
            if self.acks.load(Ordering::SeqCst) >= target
                && (0..self.seen.len()).all(|i| self.lock(i).acks > before[i].acks)
            {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, self.wake.notified()).await.is_err() {
                let done = (0..self.seen.len())
                    .filter(|&i| self.lock(i).acks > before[i].acks)
                    .count();
                bail!(
                    "only {done} of {} streams ACKed a new snapshot within {timeout:?}",
                    self.seen.len()
                );
            }
        }
    }
}

/// How a stream gets its HTTP/2 connection.
#[derive(Clone)]
enum Connect {
    /// A connection shared with other streams.
    Shared(Channel),
    /// Its own connection, opened while holding a permit of the gate.
    Own(Arc<Endpoint>, Arc<Semaphore>),
}

/// Opens one stream per node, each as its own task; returns at once.
pub(super) async fn open_streams(
    fleet: &Arc<Fleet>,
    grpc: SocketAddr,
    nodes: &[WorkloadNode],
    connections: Option<usize>,
) -> anyhow::Result<usize> {
    let endpoint = endpoint(grpc)?;
    let connects: Vec<Connect> = match connections {
        Some(n) => {
            let mut shared = Vec::with_capacity(n);
            for _ in 0..n.min(nodes.len()) {
                shared.push(Connect::Shared(
                    endpoint.connect().await.context("connecting to the controller")?,
                ));
            }
            shared
        }
        None => vec![Connect::Own(
            Arc::new(endpoint),
            Arc::new(Semaphore::new(CONNECT_CONCURRENCY)),
        )],
    };
    for (index, node) in nodes.iter().enumerate() {
        let connect = connects[index % connects.len()].clone();
        tokio::spawn(sidecar(fleet.clone(), index, node.node(), connect));
    }
    Ok(match connections {
        Some(n) => n.min(nodes.len()),
        None => nodes.len(),
    })
}

/// One simulated sidecar, until its stream ends; records why in the fleet.
async fn sidecar(fleet: Arc<Fleet>, index: usize, node: pb::Node, connect: Connect) {
    let reason = match sidecar_stream(&fleet, index, node, connect).await {
        Ok(()) => "the controller ended the stream".to_owned(),
        Err(error) => format!("{error:#}"),
    };
    fleet.lock(index).ended = Some(reason);
    fleet.ended.fetch_add(1, Ordering::SeqCst);
    fleet.wake.notify_one();
}

/// The stream of one simulated sidecar: hello, then for every response, assemble the snapshot
/// from its parts and the parts held, convert and validate it (`weft_api::parts`, as
/// weft-proxy does) and ACK it (NACK it when invalid).
async fn sidecar_stream(fleet: &Fleet, index: usize, node: pb::Node, connect: Connect) -> anyhow::Result<()> {
    let channel = match connect {
        Connect::Shared(channel) => channel,
        Connect::Own(endpoint, gate) => {
            let _permit = gate.acquire_owned().await.context("the connect gate closed")?;
            endpoint.connect().await.context("connecting to the controller")?
        }
    };
    let mut client = pb::discovery_client::DiscoveryClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(4);
    let hello = pb::DiscoveryRequest {
        node: Some(node),
        ..Default::default()
    };
    tx.send(hello).await.context("queueing the first request")?;
    let mut responses = client
        .stream_snapshots(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("opening the config stream")?
        .into_inner();
    let mut running = String::new();
    let mut held = weft_api::parts::HeldParts::default();
    while let Some(response) = responses.message().await.context("reading the config stream")? {
        let received = Instant::now();
        let bytes = response.encoded_len();
        let nonce = response.nonce.clone();
        let checking = Instant::now();
        let checked = match held.assemble(response.parts) {
            Ok(assembled) => Ok(assembled),
            Err(weft_api::parts::PartsError::Missing(missing)) => anyhow::bail!(
                "the controller referred to {} parts this sidecar does not hold",
                missing.len()
            ),
            Err(error) => Err(anyhow::Error::new(error).context("invalid snapshot")),
        };
        let validate = checking.elapsed();
        let checked = checked.map(|assembled| {
            held = assembled.held;
            assembled.snapshot
        });
        let answer = match &checked {
            Ok(snapshot) => pb::DiscoveryRequest {
                version_info: snapshot.version.clone(),
                response_nonce: nonce,
                ..Default::default()
            },
            Err(error) => pb::DiscoveryRequest {
                version_info: running.clone(),
                response_nonce: nonce,
                error_detail: format!("{error:#}"),
                ..Default::default()
            },
        };
        tx.send(answer).await.context("queueing the answer")?;
        let acked = Instant::now();
        {
            let mut seen = fleet.lock(index);
            seen.responses += 1;
            seen.received = Some(received);
            seen.bytes = bytes;
            seen.validate += validate;
            match &checked {
                Ok(snapshot) => {
                    running.clone_from(&snapshot.version);
                    seen.acks += 1;
                    seen.version.clone_from(&snapshot.version);
                    seen.acked = Some(acked);
                }
                Err(error) => seen.nack = Some(format!("{error:#}")),
            }
        }
        match checked {
            Ok(_) => fleet.acks.fetch_add(1, Ordering::SeqCst),
            Err(_) => fleet.nacks.fetch_add(1, Ordering::SeqCst),
        };
        fleet.wake.notify_one();
    }
    Ok(())
}

/// What the Status API said after a push.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StatusCheck {
    /// Sidecars listed connected, SYNCED, with `sent_version == acked_version ==` the version
    /// the simulated sidecar ACKed (and, when checked, compiled for their own Workload).
    pub(super) synced: usize,
    /// Sidecars expected.
    pub(super) expected: usize,
    /// Sidecars listed.
    listed: usize,
    /// `ListProxies` calls made until all matched (or the timeout).
    calls: u32,
}

impl StatusCheck {
    pub(super) fn all(&self) -> bool {
        self.synced == self.expected
    }
}

/// Polls `ListProxies` (every 20 ms, up to `timeout`) until every sidecar in `fleet` is listed
/// SYNCED with the version it ACKed. With `workloads`, also that each was compiled for its
/// own Workload (`default/<node id>`).
pub(super) async fn confirm_status(
    client: &mut pb::status_client::StatusClient<Channel>,
    fleet: &Fleet,
    nodes: &[WorkloadNode],
    workloads: bool,
    timeout: Duration,
) -> anyhow::Result<StatusCheck> {
    let expected: HashMap<&str, String> = nodes
        .iter()
        .map(|n| n.name.as_str())
        .zip(fleet.snapshot().into_iter().map(|s| s.version))
        .collect();
    let deadline = Instant::now() + timeout;
    let mut check = StatusCheck {
        expected: expected.len(),
        ..Default::default()
    };
    loop {
        check.calls += 1;
        let proxies = client
            .list_proxies(pb::ListProxiesRequest {})
            .await
            .context("ListProxies")?
            .into_inner()
            .proxies;
        check.listed = proxies.len();
        check.synced = proxies
            .iter()
            .filter(|p| {
                let Some(node) = &p.node else { return false };
                let Some(version) = expected.get(node.id.as_str()) else {
                    return false;
                };
                p.connected
                    && p.state == pb::SyncState::Synced as i32
                    && &p.acked_version == version
                    && &p.sent_version == version
                    && (!workloads || p.workload == format!("default/{}", node.id))
            })
            .count();
        if check.all() || Instant::now() >= deadline {
            return Ok(check);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
