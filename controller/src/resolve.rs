//! Module urls pinned before compiling: the one piece of I/O between the store and the
//! compiler. A WasmPlugin or WasmFilter that names a module by tag (`oci://reg/repo:v1`)
//! or by a mutable location (`https://…`, `file://…`) without a `sha256` gets one here: the
//! tag is resolved to its manifest digest and the module's sha256 is learned by fetching it
//! (cached on disk by digest). Sidecars then pull exactly that, by digest, and verify it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use weft_registry::{Client, ClientOptions, Reference};

use crate::compile::PinnedModule;

/// Pins module urls, remembering what it learned.
pub struct Resolver {
    cache_dir: PathBuf,
    client: Client,
    /// Module sha256 by manifest digest: a manifest never changes, so it is pulled once.
    by_manifest: Mutex<HashMap<String, String>>,
}

impl Resolver {
    /// A resolver caching fetched modules in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            client: Client::new(ClientOptions::default()),
            by_manifest: Mutex::new(HashMap::new()),
        }
    }

    /// Pins every url; a url that cannot be pinned maps to the reason.
    pub async fn resolve(
        &self,
        urls: impl IntoIterator<Item = String>,
    ) -> BTreeMap<String, Result<PinnedModule, String>> {
        let mut pinned = BTreeMap::new();
        for url in urls {
            if pinned.contains_key(&url) {
                continue;
            }
            let result = self.pin(&url).await;
            if let Err(reason) = &result {
                tracing::warn!(%url, reason, "cannot resolve module");
            }
            pinned.insert(url, result);
        }
        pinned
    }

    async fn pin(&self, url: &str) -> Result<PinnedModule, String> {
        if url.starts_with("oci://") {
            let reference = Reference::parse(url).map_err(|e| e.to_string())?;
            let digest = match reference.digest() {
                Some(digest) => digest.clone(),
                None => self.client.resolve(&reference).await.map_err(|e| error_chain(&e))?,
            };
            let pinned = reference.pinned(digest.clone());
            let known = self.lock().get(&digest.to_string()).cloned();
            let sha256 = match known {
                Some(sha256) => sha256,
                None => {
                    let pulled = self.client.pull_module(&pinned).await.map_err(|e| error_chain(&e))?;
                    self.lock().insert(digest.to_string(), pulled.module_sha256.clone());
                    pulled.module_sha256
                }
            };
            return Ok(PinnedModule {
                url: pinned.to_string(),
                sha256,
            });
        }
        // file:// and http(s):// name bytes that may change: fetched on every resolution.
        let (_, sha256) = weft_registry::fetch_module_unpinned(url, &self.cache_dir, self.client.options())
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(PinnedModule {
            url: url.to_owned(),
            sha256,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.by_manifest.lock().unwrap_or_else(|p| p.into_inner())
    }
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
