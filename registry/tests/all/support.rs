//! Test helpers: temporary directories, an embedded registry on 127.0.0.1:0, a raw HTTP
//! client for driving the distribution API by hand, a tiny file server (http or https).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use weft_registry::server::Registry;

/// A module that is the smallest valid Wasm binary, plus `tag` in a custom section so
/// that different tests get different digests.
pub(crate) fn module(tag: &str) -> Vec<u8> {
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    let name = b"weft-test";
    let payload_len = 1 + name.len() + tag.len();
    assert!(payload_len < 128, "a one-byte LEB128 length");
    module.push(0); // custom section
    module.push(u8::try_from(payload_len).expect("small"));
    module.push(u8::try_from(name.len()).expect("small"));
    module.extend_from_slice(name);
    module.extend_from_slice(tag.as_bytes());
    module
}

/// A directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-registry-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creates a temporary directory");
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An embedded registry served on 127.0.0.1 until dropped.
pub(crate) struct Served {
    pub(crate) registry: Registry,
    pub(crate) addr: SocketAddr,
    pub(crate) dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Served {
    pub(crate) async fn start() -> Self {
        Self::start_with(weft_registry::server::Limits::default()).await
    }

    pub(crate) async fn start_with(limits: weft_registry::server::Limits) -> Self {
        let dir = TempDir::new("store");
        let registry = Registry::open_with_limits(dir.path(), limits).expect("opens the store");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(registry.serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            registry,
            addr,
            dir,
            stop: Some(stop),
        }
    }

    /// `oci://127.0.0.1:PORT/<rest>`
    pub(crate) fn url(&self, rest: &str) -> String {
        format!("oci://{}/{rest}", self.addr)
    }

    /// `http://127.0.0.1:PORT<path>`
    pub(crate) fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An answer to [`request`].
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("text header"))
            .unwrap_or_default()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The first error code of a distribution API error body.
    pub(crate) fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// One plain-http request on a fresh connection.
pub(crate) async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    let uri: http::Uri = url.parse().expect("a url");
    let authority = uri.authority().expect("a host").clone();
    let stream = TcpStream::connect(authority.as_str()).await.expect("connects");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", authority.as_str());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = sender
        .send_request(builder.body(Full::new(body.into())).expect("a request"))
        .await
        .expect("an answer");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("a body").to_bytes(),
    }
}

/// Uploads a blob monolithically (POST then PUT ?digest=); returns its digest.
pub(crate) async fn upload_blob(base: &str, repository: &str, blob: &[u8]) -> String {
    let digest = weft_registry::Digest::of(blob).to_string();
    let started = request(
        "POST",
        &format!("{base}/v2/{repository}/blobs/uploads/"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(started.status, 202, "{started:?}");
    let location = started.header("location").to_owned();
    let put = request(
        "PUT",
        &format!("{base}{location}?digest={digest}"),
        &[("content-type", "application/octet-stream")],
        blob.to_vec(),
    )
    .await;
    assert_eq!(put.status, 201, "{put:?}");
    digest
}

/// A server answering every request with `body` (over TLS when `tls` is given) until the
/// returned sender is fired; its task then ends, closing open connections.
pub(crate) async fn file_server(
    body: Vec<u8>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    fixed_server(200, &[], body, tls).await
}

/// A server answering every request with `status`, `headers` and `body`; see
/// [`file_server`].
pub(crate) async fn fixed_server(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: Vec<u8>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let headers = headers.to_vec();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    let (stop, mut stopped) = oneshot::channel::<()>();
    let body = Bytes::from(body);
    let task = tokio::spawn(async move {
        // Dropped with this task: stopping the server also ends its open connections.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => accepted.expect("accepts").0,
            };
            let body = body.clone();
            let tls = tls.clone();
            let headers = headers.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let mut response = http::Response::new(Full::new(body.clone()));
                    *response.status_mut() = http::StatusCode::from_u16(status).expect("a status");
                    for (name, value) in &headers {
                        response
                            .headers_mut()
                            .insert(*name, http::HeaderValue::from_static(value));
                    }
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    (addr, stop, task)
}
