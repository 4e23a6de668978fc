//! The embedded registry (feature `server`): the OCI distribution API over a
//! content-addressed store on disk.
//!
//! [`Registry::open`] opens (or creates) the store; [`Registry::serve`] serves it on a
//! listener until a shutdown future completes; [`Registry::handle`] answers one request for
//! callers that run their own HTTP server; [`Registry::put_module`] publishes a module
//! without HTTP (the controller preloads first-party filters this way). The API subset and
//! the store's layout are described in `docs/registry.md`.

mod api;
mod store;

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::image::{WasmImage, check_module, media_type};
use crate::reference::{check_repository, check_tag};
use crate::{Digest, Error};
use store::Store;

/// The body of the registry's responses.
pub type ResponseBody = BoxBody<Bytes, std::io::Error>;

/// How long [`Registry::serve`] lets open connections finish after its shutdown future
/// completes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Size limits of what the registry accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest blob an upload may make, in bytes (a larger one is refused with 413).
    /// Default: 128 MiB.
    pub max_blob_size: u64,
    /// The largest manifest accepted, in bytes. Default: 4 MiB.
    pub max_manifest_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blob_size: 128 * 1024 * 1024,
            max_manifest_size: 4 * 1024 * 1024,
        }
    }
}

/// An embedded OCI registry over a store directory. Cloning is cheap; clones share the
/// store.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    limits: Limits,
}

impl Registry {
    /// Opens the store in `dir`, creating it if needed, with the default [`Limits`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with_limits(dir, Limits::default())
    }

    /// Opens the store in `dir`, creating it if needed, with `limits`.
    pub fn open_with_limits(dir: impl AsRef<Path>, limits: Limits) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let store = Store::open(dir)
            .map_err(|source| Error::io(format!("opening the registry store {}", dir.display()), source))?;
        Ok(Self {
            inner: Arc::new(Inner { store, limits }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.inner.store.root()
    }

    /// Publishes `module` as an OCI Wasm image under `repository:tag`, straight into the
    /// store; returns the manifest's digest (the image is then `…/repository@<digest>`).
    pub async fn put_module(&self, repository: &str, tag: &str, module: &[u8]) -> Result<Digest, Error> {
        let input = format!("{repository}:{tag}");
        let invalid = |reason: &str| Error::InvalidReference {
            input: input.clone(),
            reason: reason.into(),
        };
        check_repository(repository).map_err(invalid)?;
        check_tag(tag).map_err(invalid)?;
        check_module(module).map_err(|reason| Error::InvalidModule {
            url: format!("the module put into {input}"),
            reason,
        })?;
        let image = WasmImage::new(Bytes::copy_from_slice(module));
        let store = &self.inner.store;
        let io = |source| Error::io(format!("storing {input} in {}", store.root().display()), source);
        store.put_blob(&image.config).await.map_err(io)?;
        store.put_blob(&image.layer).await.map_err(io)?;
        let digest = store.put_blob(&image.manifest).await.map_err(io)?;
        store
            .link_manifest(repository, &digest, media_type::OCI_MANIFEST, Some(tag))
            .await
            .map_err(io)?;
        tracing::debug!(%repository, %tag, %digest, "put a module into the registry");
        Ok(digest)
    }

    /// Serves the registry on `listener` (HTTP/1.1 and cleartext HTTP/2) until `shutdown`
    /// completes; then stops accepting and gives open connections a few seconds to finish.
    pub fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let registry = self.clone();
        async move {
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // With a timer, HTTP/1 connections that send no complete request head within
            // hyper's header read timeout (30 s) are closed.
            builder.http1().timer(TokioTimer::new());
            let mut shutdown = std::pin::pin!(shutdown);
            loop {
                let stream = tokio::select! {
                    () = &mut shutdown => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            // Out of file descriptors and the like: wait a little.
                            tracing::warn!(%error, "registry: accepting a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let registry = registry.clone();
                let service = service_fn(move |request| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(registry.handle(request).await) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "registry connection ended");
                    }
                });
            }
            drop(listener);
            if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
                tracing::debug!("registry: closing connections still open after the grace period");
            }
        }
    }

    /// Answers one request of the distribution API (for callers running their own server).
    pub async fn handle<B>(&self, request: http::Request<B>) -> http::Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::fmt::Display,
    {
        api::handle(&self.inner.store, &self.inner.limits, request).await
    }
}
