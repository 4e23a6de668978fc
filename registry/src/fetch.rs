//! Fetching a module by url into a cache directory keyed by sha256.
//!
//! `<cache_dir>/<sha256>.wasm` holds a module whose bytes hash to `<sha256>`: written
//! atomically, verified again on every hit (a corrupt file is removed and fetched anew).

use std::path::{Path, PathBuf};

use crate::client::parse_url;
use crate::image::check_module;
use crate::{Client, ClientOptions, Digest, Error, Reference};

/// Where the cache keeps the module with sha256 `sha256_hex` (64 lowercase hex digits).
pub fn cache_path(cache_dir: &Path, sha256_hex: &str) -> PathBuf {
    cache_dir.join(format!("{sha256_hex}.wasm"))
}

/// Fetches the module at `url` (`oci://`, `file://`, `http://` or `https://`) that must
/// hash to `expected_sha256` (64 lowercase hex digits, `sha256:` prefix allowed) and returns
/// its path in `cache_dir`. A cached copy that still hashes right is used without network.
/// A module with another sha256 is refused with both digests in the error.
pub async fn fetch_module(
    url: &str,
    expected_sha256: &str,
    cache_dir: &Path,
    options: &ClientOptions,
) -> Result<PathBuf, Error> {
    Client::new(options.clone())
        .fetch_module(url, expected_sha256, cache_dir)
        .await
}

/// Fetches the module at `url` whatever its sha256, caches it, and returns its path and
/// sha256 (lowercase hex): for callers that learn the digest this way (the controller
/// resolving a tag). Always goes to the network.
pub async fn fetch_module_unpinned(
    url: &str,
    cache_dir: &Path,
    options: &ClientOptions,
) -> Result<(PathBuf, String), Error> {
    Client::new(options.clone()).fetch_module_unpinned(url, cache_dir).await
}

impl Client {
    /// [`fetch_module`] with this client (sharing its connections and options).
    pub async fn fetch_module(&self, url: &str, expected_sha256: &str, cache_dir: &Path) -> Result<PathBuf, Error> {
        let expected = match expected_sha256.strip_prefix("sha256:") {
            Some(_) => Digest::parse(expected_sha256)?,
            None => Digest::from_hex(expected_sha256)?,
        };
        let path = cache_path(cache_dir, expected.hex());
        if cached(&path, &expected).await {
            tracing::debug!(%url, path = %path.display(), "module cache hit");
            return Ok(path);
        }
        let module = self.fetch_bytes(url).await?;
        let actual = Digest::of(&module);
        if actual != expected {
            return Err(Error::DigestMismatch {
                what: "module".into(),
                url: url.into(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        store(cache_dir, &path, &module).await?;
        Ok(path)
    }

    /// [`fetch_module_unpinned`] with this client.
    pub async fn fetch_module_unpinned(&self, url: &str, cache_dir: &Path) -> Result<(PathBuf, String), Error> {
        let module = self.fetch_bytes(url).await?;
        let sha256 = Digest::of(&module).hex().to_owned();
        let path = cache_path(cache_dir, &sha256);
        if !cached(&path, &Digest::of(&module)).await {
            store(cache_dir, &path, &module).await?;
        }
        Ok((path, sha256))
    }

    /// The module at `url`, checked to be Wasm.
    async fn fetch_bytes(&self, url: &str) -> Result<Vec<u8>, Error> {
        let module = if url.starts_with("oci://") {
            self.pull_module(&Reference::parse(url)?).await?.module
        } else if let Some(rest) = url.strip_prefix("file://") {
            read_file(url, rest, self.options().max_module_size).await?
        } else if url.starts_with("http://") || url.starts_with("https://") {
            self.download(&parse_url(url)?).await?.to_vec()
        } else {
            return Err(Error::InvalidUrl {
                url: url.into(),
                reason: "the scheme must be oci://, file://, http:// or https://".into(),
            });
        };
        check_module(&module).map_err(|reason| Error::InvalidModule {
            url: url.into(),
            reason,
        })?;
        Ok(module)
    }
}

/// Whether `path` holds a module hashing to `expected`; a file that does not is removed.
async fn cached(path: &Path, expected: &Digest) -> bool {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return false;
    };
    let actual = Digest::of(&bytes);
    if actual == *expected {
        return true;
    }
    tracing::warn!(path = %path.display(), %expected, %actual, "removing a corrupt cached module");
    let _ = tokio::fs::remove_file(path).await;
    false
}

async fn store(cache_dir: &Path, path: &Path, module: &[u8]) -> Result<(), Error> {
    tokio::fs::create_dir_all(cache_dir)
        .await
        .map_err(|source| Error::io(format!("creating the module cache {}", cache_dir.display()), source))?;
    crate::fs::write_atomically(path, None, module)
        .await
        .map_err(|source| Error::io(format!("writing {}", path.display()), source))
}

/// Reads a `file://` url's file: `file:///abs/path` or `file://localhost/abs/path`.
async fn read_file(url: &str, rest: &str, limit: u64) -> Result<Vec<u8>, Error> {
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(Error::InvalidUrl {
            url: url.into(),
            reason: "a file url names an absolute path on this machine: file:///path".into(),
        });
    }
    let path = percent_decode(path).ok_or_else(|| Error::InvalidUrl {
        url: url.into(),
        reason: "invalid percent-encoding".into(),
    })?;
    let metadata = tokio::fs::metadata(&path)
        .await
        .map_err(|source| Error::io(format!("reading {path}"), source))?;
    if metadata.len() > limit {
        return Err(Error::TooLarge {
            what: "module".into(),
            url: url.into(),
            limit,
        });
    }
    tokio::fs::read(&path)
        .await
        .map_err(|source| Error::io(format!("reading {path}"), source))
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("/a%20b/sha256%3Aff").as_deref(), Some("/a b/sha256:ff"));
        assert_eq!(percent_decode("/plain").as_deref(), Some("/plain"));
        assert_eq!(percent_decode("/bad%2"), None);
        assert_eq!(percent_decode("/bad%zz"), None);
    }
}
