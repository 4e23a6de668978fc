//! The gRPC side: one config stream per sidecar (the Discovery service) and the Status
//! service `weftctl status` reads.
//!
//! Each stream is a small task: it compiles the snapshot for its node from the current
//! [`Published`] intent, sends it when its version differs from the last one sent, and
//! records ACKs and NACKs in the shared [`Proxies`] table.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use weft_api::pb;

use crate::compile::{EncodedPart, Mesh, NodeIdentity};
use crate::diagnostics::Diagnostic;

/// One compiled intent, as the streams see it.
pub struct Published {
    /// The compiled mesh.
    pub mesh: Mesh,
    /// Every diagnostic: from parsing the documents, resolving modules and compiling.
    pub diagnostics: Vec<Diagnostic>,
    /// Changes with every new intent (a digest of the documents).
    pub intent_version: String,
}

/// What the controller knows about each sidecar that has connected.
#[derive(Default)]
pub struct Proxies {
    entries: Mutex<BTreeMap<u64, pb::ProxyStatus>>,
    next_id: AtomicU64,
}

/// How long a disconnected sidecar stays in the status table.
const FORGET_AFTER: Duration = Duration::from_secs(300);

impl Proxies {
    fn insert(&self, status: pb::ProxyStatus) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock();
        // A reconnecting sidecar replaces its old entry.
        if let Some(node) = &status.node {
            entries.retain(|_, old| {
                old.node
                    .as_ref()
                    .is_none_or(|n| n.id != node.id || n.namespace != node.namespace)
            });
        }
        entries.insert(id, status);
        id
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut pb::ProxyStatus)) {
        if let Some(entry) = self.lock().get_mut(&id) {
            change(entry);
            entry.last_seen_unix_ms = unix_ms();
        }
    }

    /// Every known sidecar, ordered by namespace and id.
    pub fn list(&self) -> Vec<pb::ProxyStatus> {
        let now = unix_ms();
        let mut entries = self.lock();
        entries.retain(|_, e| e.connected || now - e.last_seen_unix_ms < FORGET_AFTER.as_millis() as i64);
        let mut list: Vec<_> = entries.values().cloned().collect();
        list.sort_by(|a, b| {
            let key = |p: &pb::ProxyStatus| p.node.as_ref().map(|n| (n.namespace.clone(), n.id.clone()));
            key(a).cmp(&key(b))
        });
        list
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, pb::ProxyStatus>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The Discovery and Status services over one shared state.
#[derive(Clone)]
pub struct Services {
    intent: watch::Receiver<Arc<Published>>,
    security: watch::Receiver<Arc<weft_api::Security>>,
    bootstrap: Arc<crate::certs::Bootstrap>,
    proxies: Arc<Proxies>,
}

impl Services {
    /// Services reading intent from `intent`; every snapshot carries `security` (the trust
    /// bundle and revocations), and a change of either is pushed.
    ///
    /// `bootstrap` checks the credential a stream may carry (the workload's bootstrap token,
    /// as for a CSR): only a stream proven to be its node's workload is sent private keys (a
    /// gateway's TLS certificates); any other is sent its snapshot without them.
    pub fn new(
        intent: watch::Receiver<Arc<Published>>,
        security: watch::Receiver<Arc<weft_api::Security>>,
        bootstrap: Arc<crate::certs::Bootstrap>,
    ) -> Self {
        Self {
            intent,
            security,
            bootstrap,
            proxies: Arc::new(Proxies::default()),
        }
    }

    /// The sidecar table.
    pub fn proxies(&self) -> &Arc<Proxies> {
        &self.proxies
    }

    /// A tonic router serving both services.
    pub fn router(&self) -> tonic::transport::server::Router {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(pb::discovery_server::DiscoveryServer::new(self.clone()).max_encoding_message_size(usize::MAX))
            .add_service(pb::status_server::StatusServer::new(self.clone()))
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::discovery_server::Discovery for Services {
    type StreamSnapshotsStream = ResponseStream;

    async fn stream_snapshots(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let peer = request.remote_addr();
        let authenticated = crate::certs::credential(&self.bootstrap, request.metadata())?;
        let mut inbound = request.into_inner();
        let hello = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before the first request"))?;
        let node = hello
            .node
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
        if node.id.is_empty() {
            return Err(Status::invalid_argument("node.id is required"));
        }
        let identity = node_identity(&node);
        let workload = format!("{}/{}", identity.namespace, identity.id);
        let secrets = authenticated.as_deref() == Some(workload.as_str());
        if let Some(credential) = authenticated.as_deref().filter(|_| !secrets) {
            tracing::warn!(node = %workload, %credential, "the stream's credential is another workload's; private keys are withheld");
        }
        let (tx, rx) = mpsc::channel(4);
        let stream = SidecarStream {
            secrets,
            identity,
            node,
            peer,
            running: hello.version_info.clone(),
            intent: self.intent.clone(),
            security: self.security.clone(),
            proxies: self.proxies.clone(),
            tx,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::status_server::Status for Services {
    async fn list_proxies(
        &self,
        _request: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        let intent_version = self.intent.borrow().intent_version.clone();
        let mut proxies = self.proxies.list();
        // A sidecar whose stream has not yet compiled the newest intent is not in sync with it,
        // whatever it ACKed last.
        for proxy in &mut proxies {
            if proxy.connected && proxy.intent_version != intent_version && proxy.state == pb::SyncState::Synced as i32
            {
                proxy.state = pb::SyncState::Stale as i32;
            }
        }
        Ok(Response::new(pb::ListProxiesResponse {
            proxies,
            intent_version,
        }))
    }

    async fn list_diagnostics(
        &self,
        _request: Request<pb::ListDiagnosticsRequest>,
    ) -> Result<Response<pb::ListDiagnosticsResponse>, Status> {
        let intent = self.intent.borrow().clone();
        Ok(Response::new(pb::ListDiagnosticsResponse {
            diagnostics: intent.diagnostics.iter().map(to_pb_diagnostic).collect(),
        }))
    }
}

fn to_pb_diagnostic(d: &Diagnostic) -> pb::Diagnostic {
    pb::Diagnostic {
        kind: d.kind.clone(),
        namespace: d.namespace.clone(),
        name: d.name.clone(),
        field: d.field.clone(),
        message: d.message.clone(),
        severity: d.severity.to_string(),
        origin: d.origin.clone(),
    }
}

/// One sidecar's stream.
struct SidecarStream {
    /// Whether the stream proved it is its node's workload: only then are private keys sent.
    secrets: bool,
    /// Who the node is, for the compiler.
    identity: NodeIdentity,
    node: pb::Node,
    peer: Option<SocketAddr>,
    /// The version the sidecar says it runs.
    running: String,
    intent: watch::Receiver<Arc<Published>>,
    security: watch::Receiver<Arc<weft_api::Security>>,
    proxies: Arc<Proxies>,
    tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
}

/// Who `node` is for the compiler: its namespace and service account default to `default`.
fn node_identity(node: &pb::Node) -> NodeIdentity {
    let or_default = |value: &str| if value.is_empty() { "default" } else { value }.to_owned();
    NodeIdentity {
        id: node.id.clone(),
        namespace: or_default(&node.namespace),
        service_account: or_default(&node.service_account),
        labels: node.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// What was last sent on a stream.
struct Sent {
    version: String,
    /// Its nonce; 0 when nothing was sent because the sidecar already ran `version`.
    nonce: u64,
}

/// The snapshot parts a sidecar may hold, as far as its stream can tell.
///
/// A sidecar holds the parts of the last snapshot it applied (the last response it ACKed),
/// and nothing at the start of a stream. Responses can be sent before the previous ones are
/// answered; until they are, the sidecar may end up holding the parts of any of them (if it
/// ACKs it) or still those of the last ACKed one. A response refers by digest only to parts
/// in all of those sets.
#[derive(Default)]
struct Holdings {
    /// Digests of the parts of the last response the sidecar ACKed.
    acked: Vec<Arc<str>>,
    /// Responses sent and not answered yet, oldest first: nonce and part digests.
    unanswered: VecDeque<(u64, Vec<Arc<str>>)>,
}

impl Holdings {
    /// The digests a response sent now may refer to.
    fn referable(&self) -> HashSet<&str> {
        let mut set: HashSet<&str> = self.acked.iter().map(|d| &**d).collect();
        for (_, parts) in &self.unanswered {
            let sent: HashSet<&str> = parts.iter().map(|d| &**d).collect();
            set.retain(|d| sent.contains(d));
        }
        set
    }

    fn sent(&mut self, nonce: u64, parts: &[EncodedPart]) {
        let digests = parts.iter().filter(|p| !p.digest.is_empty()).map(|p| p.digest.clone());
        self.unanswered.push_back((nonce, digests.collect()));
    }

    /// The sidecar answered response `nonce`: it applied it (`acked`), or kept what it held.
    fn answered(&mut self, nonce: u64, acked: bool) {
        while let Some((sent, parts)) = self.unanswered.pop_front() {
            if sent == nonce {
                if acked {
                    self.acked = parts;
                }
                return;
            }
            if sent > nonce {
                self.unanswered.push_front((sent, parts));
                return;
            }
        }
    }
}

impl SidecarStream {
    async fn run(mut self, mut inbound: Streaming<pb::DiscoveryRequest>) {
        let id = self.proxies.insert(pb::ProxyStatus {
            node: Some(self.node.clone()),
            workload: "-".to_owned(),
            acked_version: self.running.clone(),
            connected: true,
            peer_address: self.peer.map(|p| p.to_string()).unwrap_or_default(),
            last_seen_unix_ms: unix_ms(),
            ..Default::default()
        });
        tracing::info!(node = %self.node.id, namespace = %self.identity.namespace, peer = ?self.peer, "sidecar connected");
        let mut sent: Option<Sent> = None;
        let mut holdings = Holdings::default();
        let mut nonce = 0u64;
        // Set when the sidecar lacked parts: send the snapshot again, whole.
        let mut resend = false;
        self.intent.mark_changed();
        loop {
            if !resend {
                tokio::select! {
                    changed = async {
                        tokio::select! {
                            changed = self.intent.changed() => changed,
                            changed = self.security.changed() => changed,
                        }
                    } => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    message = inbound.message() => {
                        let request = match message {
                            Ok(Some(request)) => request,
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(node = %self.node.id, %status, "stream error");
                                break;
                            }
                        };
                        resend = self.answered(id, &request, sent.as_ref(), &mut holdings);
                        continue;
                    }
                }
            }
            let published = self.intent.borrow_and_update().clone();
            let security = self.security.borrow_and_update().clone();
            let encoded = published.mesh.encoded_for(&self.identity, &security, self.secrets);
            let version = encoded.version;
            let workload = encoded.workload.unwrap_or_else(|| "-".to_owned());
            // The intent this stream has caught up with; set in the same update as the
            // state, so a list never shows SYNCED for an older intent's snapshot.
            let intent_version = published.intent_version.clone();
            // Not held while the send waits for a slow sidecar: a replaced intent is
            // freed as soon as it is replaced.
            drop(published);
            let current = sent.as_ref().map_or(self.running.as_str(), |s| s.version.as_str());
            if current == version && !resend {
                // First contact with a sidecar that already runs this version.
                if sent.is_none() {
                    self.proxies.update(id, |e| {
                        e.workload = workload;
                        e.sent_version = version.clone();
                        e.acked_version = version.clone();
                        e.state = pb::SyncState::Synced as i32;
                        e.intent_version = intent_version;
                    });
                    sent = Some(Sent { version, nonce: 0 });
                } else {
                    self.proxies.update(id, |e| e.intent_version = intent_version);
                }
                continue;
            }
            if resend {
                holdings = Holdings::default();
                resend = false;
            }
            nonce += 1;
            let referable = holdings.referable();
            let parts = encoded
                .parts
                .iter()
                .map(|part| pb::SnapshotPart {
                    digest: part.digest.to_string(),
                    data: if referable.contains(&*part.digest) {
                        prost::bytes::Bytes::new()
                    } else {
                        part.data.clone()
                    },
                })
                .collect();
            holdings.sent(nonce, &encoded.parts);
            let response = pb::DiscoveryResponse {
                version_info: version.clone(),
                nonce: nonce.to_string(),
                parts,
            };
            if self.tx.send(Ok(response)).await.is_err() {
                break;
            }
            tracing::debug!(node = %self.node.id, %version, "snapshot sent");
            self.proxies.update(id, |e| {
                e.workload = workload;
                e.sent_version = version.clone();
                e.state = pb::SyncState::Stale as i32;
                e.intent_version = intent_version;
            });
            sent = Some(Sent { version, nonce });
        }
        tracing::info!(node = %self.node.id, "sidecar disconnected");
        self.proxies.update(id, |e| e.connected = false);
    }

    /// Records the sidecar's answer to a response; returns whether the snapshot must be sent
    /// again whole (the sidecar lacked parts it was sent by digest).
    fn answered(&self, id: u64, request: &pb::DiscoveryRequest, sent: Option<&Sent>, holdings: &mut Holdings) -> bool {
        let Ok(nonce) = request.response_nonce.parse::<u64>() else {
            return false; // not an answer to a response of this stream
        };
        let missing = !request.missing_parts.is_empty();
        holdings.answered(nonce, request.error_detail.is_empty() && !missing);
        let Some(last) = sent.filter(|last| last.nonce == nonce) else {
            return false; // an answer to an older response
        };
        if missing {
            tracing::warn!(node = %self.node.id, version = %last.version, parts = request.missing_parts.len(), "the sidecar lacks snapshot parts; sending it whole");
            return true;
        }
        if request.error_detail.is_empty() {
            tracing::info!(node = %self.node.id, version = %last.version, "ACK");
            self.proxies.update(id, |e| {
                e.acked_version = request.version_info.clone();
                e.state = pb::SyncState::Synced as i32;
                e.last_error.clear();
            });
        } else {
            tracing::warn!(node = %self.node.id, version = %last.version, reason = %request.error_detail, "NACK");
            self.proxies.update(id, |e| {
                e.acked_version = request.version_info.clone();
                e.state = pb::SyncState::Nacked as i32;
                e.last_error = request.error_detail.clone();
            });
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(digests: &[&str]) -> Vec<EncodedPart> {
        digests
            .iter()
            .map(|d| EncodedPart {
                digest: Arc::from(*d),
                data: prost::bytes::Bytes::from_static(b"x"),
            })
            .collect()
    }

    fn sorted(set: HashSet<&str>) -> Vec<&str> {
        let mut list: Vec<&str> = set.into_iter().collect();
        list.sort_unstable();
        list
    }

    /// With responses in flight, only parts the sidecar holds whichever of them it applies
    /// may be sent by digest.
    #[test]
    fn referable_parts_are_held_in_every_state_the_sidecar_may_be_in() {
        let mut holdings = Holdings::default();
        assert!(holdings.referable().is_empty(), "nothing held at the start");
        holdings.sent(1, &parts(&["", "a", "b"]));
        assert!(holdings.referable().is_empty(), "not ACKed yet");
        holdings.answered(1, true);
        assert_eq!(sorted(holdings.referable()), ["a", "b"]);

        holdings.sent(2, &parts(&["a", "c"]));
        assert_eq!(sorted(holdings.referable()), ["a"], "b is gone if 2 is applied");
        holdings.sent(3, &parts(&["a", "b", "d"]));
        assert_eq!(sorted(holdings.referable()), ["a"]);
        holdings.answered(2, false); // NACK: the sidecar kept 1's parts
        assert_eq!(sorted(holdings.referable()), ["a", "b"]);
        holdings.answered(3, true);
        assert_eq!(sorted(holdings.referable()), ["a", "b", "d"]);

        // An answer to a response it no longer tracks changes nothing.
        holdings.answered(2, true);
        assert_eq!(sorted(holdings.referable()), ["a", "b", "d"]);
    }
}
