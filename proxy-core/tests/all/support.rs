//! Test fixtures: start the proxy from YAML, in-process upstreams, small HTTP clients.

#![allow(dead_code, reason = "each test module uses a different part of the fixtures")]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use weft_api::Snapshot;
use weft_proxy::{Proxy, ProxyConfig};

/// Starts a proxy from a YAML snapshot with an admin port; `workers` worker threads.
pub fn start_proxy(yaml: &str, workers: usize) -> Proxy {
    let snapshot = Snapshot::from_yaml(yaml).unwrap_or_else(|e| panic!("test snapshot is invalid: {e}\n{yaml}"));
    let config = ProxyConfig {
        workers,
        admin_address: Some("127.0.0.1:0".parse().expect("addr")),
        drain_timeout: Duration::from_secs(5),
        wasm: test_wasm(),
        ..Default::default()
    };
    Proxy::start(config, snapshot).expect("proxy starts")
}

/// Wasm limits for tests. The epoch deadline is wall-clock time: on a loaded CI machine a
/// guest call can be descheduled for tens of milliseconds, so tests allow more than the 20ms
/// default (tests of the deadline itself still see a loop stopped well within a second).
pub fn test_wasm() -> weft_proxy::WasmSettings {
    weft_proxy::WasmSettings {
        call_deadline: Duration::from_millis(250),
        ..Default::default()
    }
}

/// A snapshot with one outbound listener routing every authority to `cluster_yaml`'s first
/// cluster, named `c`. `cluster_yaml` is the body of the cluster entry (indented 4 spaces).
pub fn single_cluster(cluster_yaml: &str, route_extra: &str) -> String {
    format!(
        r#"
version: "test"
listeners:
  - name: main
    address: 127.0.0.1:0
    route_table: rt
route_tables:
  - name: rt
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: default
            forward: {{ cluster: c{route_extra} }}
clusters:
  - name: c
{cluster_yaml}
"#
    )
}

/// YAML for a list of endpoints (indented for `single_cluster`).
pub fn endpoints(addrs: &[SocketAddr]) -> String {
    let mut out = String::from("    endpoints:\n");
    for addr in addrs {
        out.push_str(&format!("      - {{ address: \"{addr}\" }}\n"));
    }
    out
}

/// An in-process upstream server.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes open connections.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync,
>;

/// Serves `handler` on 127.0.0.1:0, HTTP/1.1 and HTTP/2 (auto-detected).
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    upstream_on(listener, handler)
}

/// Serves `handler` on an already bound listener.
pub fn upstream_on<F, Fut>(listener: TcpListener, handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(request);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, hits, task }
}

/// An upstream answering 200 with `x-upstream: name` and a body describing the request:
/// `name method path-and-query version host` followed by one `header: value` line per header.
pub async fn echo(name: &'static str) -> Upstream {
    upstream(move |request: Request<Incoming>| async move { describe(name, request).await }).await
}

pub async fn describe(name: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let host = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut text = format!(
        "{name} {} {} {:?} {host}\n",
        parts.method,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        parts.version
    );
    for (k, v) in &parts.headers {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    text.push_str(&format!("body-bytes: {}\n", body.len()));
    Response::builder()
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(text)))
        .expect("response")
}

/// A response from one of the clients.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn reason(&self) -> Option<&str> {
        self.header("x-weft-reason")
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to proxy");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Self { sender }
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Reply {
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("response");
        into_reply(response).await
    }

    /// `GET path` with `Host: host` and extra headers.
    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut builder = Request::get(path).header("host", host);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        self.send(builder.body(Full::new(Bytes::new())).expect("request")).await
    }
}

/// An HTTP/2 (prior knowledge) client connection.
#[derive(Clone)]
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to proxy");
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        Self { sender }
    }

    pub async fn get(&mut self, authority: &str, path: &str) -> Reply {
        let request = Request::get(format!("http://{authority}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.sender.ready().await.expect("ready");
        let response = self.sender.send_request(request).await.expect("response");
        into_reply(response).await
    }
}

pub async fn into_reply(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One `GET` on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    H1::connect(addr).await.get(host, path, &[]).await
}

/// Sends raw bytes and reads until the peer closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Fetches an admin path.
pub async fn admin(proxy: &Proxy, path: &str) -> Reply {
    get(proxy.admin_addr().expect("admin"), "admin", path).await
}

/// The value of one Prometheus sample, e.g. `weft_cluster_upstream_overflow_total{cluster="c"}`.
pub async fn metric(proxy: &Proxy, sample: &str) -> Option<f64> {
    let text = admin(proxy, "/stats/prometheus").await.body;
    text.lines().find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

/// Counts of `x-upstream` values over `n` sequential requests on one connection.
pub async fn spread(
    addr: SocketAddr,
    n: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> BTreeMap<String, usize> {
    let mut client = H1::connect(addr).await;
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let owned = headers(i);
        let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let reply = client.get("svc", "/", &pairs).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        *counts
            .entry(reply.header("x-upstream").unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    counts
}

/// Polls `check` every 20 ms until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test filter from `filters/testdata`, built for wasm32-wasip1 on first use: its path and
/// sha256.
pub fn test_filter(crate_name: &str) -> (String, String) {
    // Each filter crate is built once per test run, on its own, so one broken filter does not
    // take the other filters' tests down.
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root");
    let target = root.join("target/filters");
    {
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        if !built.iter().any(|b| b == crate_name) {
            let status = std::process::Command::new(env!("CARGO"))
                .current_dir(root.join("filters"))
                .env("CARGO_TARGET_DIR", &target)
                .args([
                    "build",
                    "--quiet",
                    "--release",
                    "--locked",
                    "--target",
                    "wasm32-wasip1",
                    "-p",
                    crate_name,
                ])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building filter {crate_name} failed");
            built.push(crate_name.to_owned());
        }
    }
    let path = target.join(format!("wasm32-wasip1/release/{crate_name}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    (path.display().to_string(), hex)
}

/// YAML for one Wasm filter entry of a listener's `filters:` (indented 6 spaces).
pub fn wasm_filter(name: &str, crate_name: &str, config: &str, policy: &str) -> String {
    let (file, sha) = test_filter(crate_name);
    format!(
        "      - name: {name}\n        wasm: {{ file: \"{file}\", sha256: \"{sha}\" }}\n        config: {config}\n        failure_policy: {policy}\n"
    )
}

/// A snapshot with listener `main` running `filters` (from [`wasm_filter`]) in front of
/// cluster `c` (`cluster_yaml`), plus extra clusters.
pub fn with_filters(filters: &str, cluster_yaml: &str, extra_clusters: &str) -> String {
    format!(
        r#"
version: "wasm"
listeners:
  - name: main
    address: 127.0.0.1:0
    route_table: rt
    filters:
{filters}
route_tables:
  - name: rt
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: default
            forward: {{ cluster: c }}
clusters:
  - name: c
{cluster_yaml}
{extra_clusters}
"#
    )
}
