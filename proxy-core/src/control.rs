//! The sidecar's end of the config stream: one gRPC stream to the controller, kept open with
//! reconnects; every snapshot received is fetched, applied all-or-nothing, persisted, and
//! answered with an ACK or a NACK carrying the reason.
//!
//! The last good snapshot lives in `<state_dir>/snapshot.yaml`, so a sidecar that starts
//! while the controller is unreachable serves what it served before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use weft_api::parts::{HeldParts, PartsError};
use weft_api::{Snapshot, pb};

use crate::{Proxy, WasmSettings};

/// Who this sidecar is and where its controller is.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The controller's gRPC address, `http://127.0.0.1:15010`.
    pub address: String,
    /// This sidecar's node id (in local mode, its workload's name).
    pub node_id: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The service account the workload runs as.
    pub service_account: String,
    /// The workload's labels.
    pub labels: BTreeMap<String, String>,
    /// Node metadata sent along.
    pub metadata: BTreeMap<String, String>,
    /// Where the last good snapshot is kept.
    pub state_dir: PathBuf,
    /// The bootstrap credential the stream carries, as a CSR does. The controller sends
    /// private keys (a gateway's TLS certificates) only to a stream that proves it is its
    /// node's workload.
    pub credential: Option<crate::identity::Credential>,
}

impl ControlConfig {
    /// Path of the persisted last good snapshot.
    pub fn snapshot_path(&self) -> PathBuf {
        self.state_dir.join("snapshot.yaml")
    }

    fn node(&self) -> pb::Node {
        pb::Node {
            id: self.node_id.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            metadata: self.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Reads the persisted last good snapshot, if any.
///
/// # Errors
/// The file exists but cannot be read or is invalid.
pub fn load_persisted(config: &ControlConfig) -> Result<Option<Snapshot>, weft_api::LoadError> {
    let path = config.snapshot_path();
    if !path.exists() {
        return Ok(None);
    }
    Snapshot::from_yaml_file(&path).map(Some)
}

/// Writes `snapshot` as the last good one (atomically: a temporary file renamed over).
fn persist(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_yaml::to_string(snapshot).map_err(std::io::Error::other)?;
    let temp = path.with_extension(format!("yaml.{}.tmp", std::process::id()));
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)
}

/// Fetches every module a snapshot names by `url` into `settings.module_dir` (verifying its
/// sha256), so that applying the snapshot finds them. Modules already there are not fetched.
///
/// # Errors
/// A module cannot be fetched or its digest differs; the message names the filter and url.
pub async fn fetch_modules(snapshot: &Snapshot, settings: &WasmSettings) -> Result<(), String> {
    let options = weft_registry::ClientOptions::default();
    for listener in &snapshot.listeners {
        for filter in &listener.filters {
            let Some(wasm) = &filter.wasm else { continue };
            if wasm.url.is_empty() {
                continue;
            }
            let Some(dir) = &settings.module_dir else {
                return Err(format!(
                    "filter {:?}: module {} comes from a url, and this proxy has no module directory",
                    filter.name, wasm.url
                ));
            };
            weft_registry::fetch_module(&wasm.url, &wasm.sha256, dir, &options)
                .await
                .map_err(|e| format!("filter {:?}: {}", filter.name, error_chain(&e)))?;
        }
    }
    Ok(())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Keeps the config stream open for as long as the returned future is polled: connects,
/// applies what the controller sends, reconnects with jittered exponential backoff (250 ms
/// doubling to 15 s) when the stream breaks.
pub async fn run(proxy: &Proxy, config: &ControlConfig, wasm: &WasmSettings) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match stream_once(proxy, config, wasm).await {
            Ok(()) => {
                tracing::warn!(controller = %config.address, "config stream closed by the controller");
                backoff = Duration::from_millis(250);
            }
            Err(Progress { error, delivered }) => {
                tracing::warn!(controller = %config.address, error, "config stream failed; serving the last good snapshot");
                if delivered {
                    backoff = Duration::from_millis(250);
                }
            }
        }
        // Full jitter in [backoff/2, backoff].
        let half = backoff / 2;
        let wait = half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

/// Why a stream ended, and whether it got anywhere first.
struct Progress {
    error: String,
    delivered: bool,
}

async fn stream_once(proxy: &Proxy, config: &ControlConfig, wasm: &WasmSettings) -> Result<(), Progress> {
    let failed = |error: String| Progress {
        error,
        delivered: false,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(config.address.clone())
        .map_err(|e| failed(format!("bad controller address: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| failed(format!("cannot connect: {}", error_chain(&e))))?;
    let mut client = pb::discovery_client::DiscoveryClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(4);
    let hello = pb::DiscoveryRequest {
        node: Some(config.node()),
        version_info: proxy.version(),
        ..Default::default()
    };
    tx.send(hello)
        .await
        .map_err(|_| failed("request channel closed".into()))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(credential) = &config.credential {
        credential.attach(&mut request).map_err(failed)?;
    }
    let mut responses = client
        .stream_snapshots(request)
        .await
        .map_err(|e| failed(format!("stream refused: {e}")))?
        .into_inner();
    tracing::info!(controller = %config.address, node = %config.node_id, "config stream open");
    let mut delivered = false;
    // The parts of the last snapshot applied on this stream, which later responses may refer
    // to by digest (the controller assumes none at the start of a stream).
    let mut held = HeldParts::default();
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(()),
            Err(status) => {
                return Err(Progress {
                    error: format!("stream broken: {status}"),
                    delivered,
                });
            }
        };
        delivered = true;
        let answer = answer(proxy, config, wasm, &mut held, response).await;
        if tx.send(answer).await.is_err() {
            return Err(Progress {
                error: "request channel closed".into(),
                delivered,
            });
        }
    }
}

/// Assembles, applies and persists the snapshot `response` carries, keeping its parts in
/// `held` once applied; returns the answer: an ACK, a NACK with the reason, or the parts the
/// sidecar lacks.
async fn answer(
    proxy: &Proxy,
    config: &ControlConfig,
    wasm: &WasmSettings,
    held: &mut HeldParts,
    response: pb::DiscoveryResponse,
) -> pb::DiscoveryRequest {
    let mut answer = pb::DiscoveryRequest {
        version_info: proxy.version(),
        response_nonce: response.nonce,
        ..Default::default()
    };
    let assembled = match held.assemble(response.parts) {
        Ok(assembled) => assembled,
        Err(PartsError::Missing(missing)) => {
            tracing::warn!(version = %response.version_info, parts = missing.len(), "snapshot refers to parts not held; asking for all of it");
            answer.missing_parts = missing;
            return answer;
        }
        Err(error) => {
            answer.error_detail = error_chain(&error);
            tracing::error!(version = %response.version_info, reason = answer.error_detail, "snapshot refused; the last good one keeps serving");
            return answer;
        }
    };
    match apply(proxy, config, wasm, assembled.snapshot).await {
        Ok(version) => {
            tracing::info!(%version, "snapshot from the controller applied");
            *held = assembled.held;
            answer.version_info = version;
        }
        Err(reason) => {
            tracing::error!(version = %response.version_info, reason, "snapshot refused; the last good one keeps serving");
            answer.error_detail = reason;
        }
    }
    answer
}

/// Fetches the modules of, applies and persists one snapshot; returns its version.
async fn apply(
    proxy: &Proxy,
    config: &ControlConfig,
    wasm: &WasmSettings,
    snapshot: Snapshot,
) -> Result<String, String> {
    fetch_modules(&snapshot, wasm).await?;
    let version = snapshot.version.clone();
    proxy.update(snapshot.clone()).map_err(|e| error_chain(&e))?;
    if let Err(error) = persist(&config.snapshot_path(), &snapshot) {
        tracing::warn!(path = %config.snapshot_path().display(), %error, "cannot persist the snapshot");
    }
    Ok(version)
}
