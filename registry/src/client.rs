//! The registry client: push, pull, resolve and list over the OCI distribution API.

mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::image::{self, ImageVariant, Manifest, WasmImage, media_type};
use crate::{Digest, Error, Reference, RegistryHost};
pub(crate) use transport::{parse_url, resolve};

/// The header a registry names a manifest's digest in.
const DIGEST_HEADER: &str = "docker-content-digest";
/// The largest config blob read.
const MAX_CONFIG_SIZE: u64 = 1024 * 1024;
/// The largest catalog or tag list page read.
const MAX_LIST_PAGE: u64 = 4 * 1024 * 1024;
/// Pages of a catalog or tag list followed at most.
const MAX_PAGES: usize = 100;

/// How a [`Client`] reaches registries and what it accepts from them.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) reached over plain http instead of https; `*`
    /// means all. `localhost`, `127.0.0.1` and `[::1]` always are. Default: none.
    pub plain_http: Vec<String>,
    /// A PEM file of CA certificates trusted for https in addition to the system's trust
    /// store. Default: none.
    pub ca_file: Option<PathBuf>,
    /// The time one exchange (a request, its redirects and its whole answer) may take.
    /// Default: 60 s.
    pub timeout: Duration,
    /// The largest module pulled or fetched, in bytes. Default: 64 MiB.
    pub max_module_size: u64,
    /// The largest manifest read, in bytes. Default: 4 MiB.
    pub max_manifest_size: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            plain_http: Vec::new(),
            ca_file: None,
            timeout: Duration::from_secs(60),
            max_module_size: 64 * 1024 * 1024,
            max_manifest_size: 4 * 1024 * 1024,
        }
    }
}

/// A module pushed: where it is, pinned, and its digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pinned by the manifest's digest (what a module `url` should name).
    pub reference: Reference,
    /// The manifest's digest.
    pub manifest_digest: Digest,
    /// The module's sha256, lowercase hex (what a module's `sha256` field holds).
    pub module_sha256: String,
}

/// A module pulled and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The module's bytes.
    pub module: Vec<u8>,
    /// The manifest's digest.
    pub manifest_digest: Digest,
    /// The module's sha256, lowercase hex.
    pub module_sha256: String,
    /// Which image variant it came in.
    pub variant: ImageVariant,
}

/// A repository in a registry's catalog, with its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The repository's name, e.g. `weft/router`.
    pub name: String,
    /// Its tags, sorted by name.
    pub tags: Vec<Tag>,
}

/// A tag and the manifest digest it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// The tag.
    pub name: String,
    /// The digest of the manifest it names.
    pub digest: Digest,
}

/// A client for OCI registries (HTTP/1.1; https through rustls with the ring provider).
///
/// Everything read is bounded ([`ClientOptions`]) and verified: a manifest against a pinned
/// reference and the registry's `Docker-Content-Digest`, every blob against its descriptor's
/// digest. Cloning is cheap and clones share idle connections.
#[derive(Clone)]
pub struct Client {
    http: Arc<transport::Http>,
    options: Arc<ClientOptions>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new(ClientOptions::default())
    }
}

impl Client {
    /// A client with `options`. The TLS setup (system trust roots, the CA file) happens on
    /// the first https request, which reports its failure.
    pub fn new(options: ClientOptions) -> Self {
        Self {
            http: Arc::new(transport::Http::new(options.timeout, options.ca_file.clone())),
            options: Arc::new(options),
        }
    }

    /// The client's options.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Pushes `module` as an OCI Wasm image to `reference` (a tag, or a digest that must be
    /// the image's): uploads the config and layer blobs that the registry does not have yet,
    /// then the manifest.
    pub async fn push_module(&self, reference: &Reference, module: &[u8]) -> Result<Pushed, Error> {
        let target = reference.to_string();
        image::check_module(module).map_err(|reason| Error::InvalidModule {
            url: format!("the module pushed to {target}"),
            reason,
        })?;
        let image = WasmImage::new(Bytes::copy_from_slice(module));
        if let Some(pinned) = reference.digest()
            && *pinned != image.manifest_digest
        {
            return Err(Error::DigestMismatch {
                what: "the pushed manifest".into(),
                url: target,
                expected: pinned.to_string(),
                actual: image.manifest_digest.to_string(),
            });
        }
        self.push_blob(reference, image.config.clone()).await?;
        self.push_blob(reference, image.layer.clone()).await?;
        let url = self.manifest_url(reference, &reference.manifest_reference())?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(media_type::OCI_MANIFEST));
        let reply = self
            .http
            .send(Method::PUT, &url, &headers, image.manifest.clone(), 64 * 1024, "answer")
            .await?
            .success()?;
        if let Some(stored) = reply.header(DIGEST_HEADER).and_then(|value| Digest::parse(value).ok())
            && stored != image.manifest_digest
        {
            return Err(Error::DigestMismatch {
                what: "the digest the registry reported for the pushed manifest".into(),
                url: url.to_string(),
                expected: image.manifest_digest.to_string(),
                actual: stored.to_string(),
            });
        }
        tracing::debug!(reference = %target, digest = %image.manifest_digest, "pushed a module");
        Ok(Pushed {
            reference: reference.pinned(image.manifest_digest.clone()),
            manifest_digest: image.manifest_digest,
            module_sha256: image.module_digest.hex().to_owned(),
        })
    }

    /// Uploads a blob unless the repository has it: `POST` an upload, `PUT` the bytes with
    /// `?digest=`.
    async fn push_blob(&self, reference: &Reference, blob: Bytes) -> Result<(), Error> {
        let digest = Digest::of(&blob);
        let url = self.url(
            reference.registry(),
            &format!("/v2/{}/blobs/{digest}", reference.repository()),
        )?;
        let head = self
            .http
            .send(Method::HEAD, &url, &HeaderMap::new(), Bytes::new(), 0, "answer")
            .await?;
        if head.status.is_success() {
            return Ok(());
        }
        if head.status.as_u16() != 404 {
            return Err(head.into_error());
        }
        let start = self.url(
            reference.registry(),
            &format!("/v2/{}/blobs/uploads/", reference.repository()),
        )?;
        let started = self
            .http
            .send(
                Method::POST,
                &start,
                &HeaderMap::new(),
                Bytes::new(),
                64 * 1024,
                "answer",
            )
            .await?
            .success()?;
        let location = started.header("location").ok_or_else(|| Error::Status {
            method: "POST".into(),
            url: start.to_string(),
            status: started.status.as_u16(),
            code: None,
            message: "the upload was accepted without a Location".into(),
        })?;
        let upload = resolve(&start, location)?;
        let separator = if upload.query().is_some() { '&' } else { '?' };
        let put = parse_url(&format!("{upload}{separator}digest={digest}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        self.http
            .send(Method::PUT, &put, &headers, blob, 64 * 1024, "answer")
            .await?
            .success()?;
        Ok(())
    }

    /// The digest of the manifest `reference` names: the registry's `Docker-Content-Digest`
    /// from a `HEAD`, else the sha256 of the manifest from a `GET`. A pinned reference's
    /// digest must be what the registry has.
    pub async fn resolve(&self, reference: &Reference) -> Result<Digest, Error> {
        let url = self.manifest_url(reference, &reference.manifest_reference())?;
        let head = self
            .http
            .send(Method::HEAD, &url, &accept_manifests(), Bytes::new(), 0, "answer")
            .await?
            .success()?;
        let digest = match head.header(DIGEST_HEADER).and_then(|value| Digest::parse(value).ok()) {
            Some(digest) => digest,
            None => {
                let reply = self
                    .http
                    .send(
                        Method::GET,
                        &url,
                        &accept_manifests(),
                        Bytes::new(),
                        self.options.max_manifest_size,
                        "manifest",
                    )
                    .await?
                    .success()?;
                Digest::of(&reply.body)
            }
        };
        check_pinned(reference, &digest, &url)?;
        Ok(digest)
    }

    /// Pulls the module `reference` names, in either image variant, and verifies it: the
    /// manifest against a pinned reference and the registry's digest header, each blob
    /// against its descriptor, sizes against the limits, the module's Wasm header.
    pub async fn pull_module(&self, reference: &Reference) -> Result<Pulled, Error> {
        let url = self.manifest_url(reference, &reference.manifest_reference())?;
        let reply = self
            .http
            .send(
                Method::GET,
                &url,
                &accept_manifests(),
                Bytes::new(),
                self.options.max_manifest_size,
                "manifest",
            )
            .await?
            .success()?;
        let manifest_digest = Digest::of(&reply.body);
        check_pinned(reference, &manifest_digest, &url)?;
        if let Some(reported) = reply.header(DIGEST_HEADER).and_then(|value| Digest::parse(value).ok())
            && reported != manifest_digest
        {
            return Err(Error::DigestMismatch {
                what: "manifest (against the registry's Docker-Content-Digest)".into(),
                url: url.to_string(),
                expected: reported.to_string(),
                actual: manifest_digest.to_string(),
            });
        }
        let manifest =
            Manifest::parse(&reply.body, reply.header("content-type")).map_err(|reason| Error::InvalidManifest {
                url: url.to_string(),
                reason,
            })?;
        let (layer, variant) = manifest.module_layer().map_err(|reason| Error::InvalidImage {
            url: url.to_string(),
            reason,
        })?;
        self.blob(reference, &manifest.config, MAX_CONFIG_SIZE, "config blob")
            .await?;
        let max_module = self.options.max_module_size;
        let module = match variant {
            ImageVariant::Oci => self.blob(reference, layer, max_module, "module layer").await?.to_vec(),
            ImageVariant::Compat => {
                // A tar adds headers and padding to the module it holds.
                let limit = max_module.saturating_add(1024 * 1024);
                let blob = self.blob(reference, layer, limit, "compat layer").await?;
                image::module_from_tar(&blob, max_module).map_err(|reason| Error::InvalidImage {
                    url: url.to_string(),
                    reason,
                })?
            }
        };
        image::check_module(&module).map_err(|reason| Error::InvalidModule {
            url: reference.to_string(),
            reason,
        })?;
        let module_sha256 = Digest::of(&module).hex().to_owned();
        tracing::debug!(%reference, digest = %manifest_digest, ?variant, "pulled a module");
        Ok(Pulled {
            module,
            manifest_digest,
            module_sha256,
            variant,
        })
    }

    /// Downloads a blob and checks its digest and size against `descriptor`.
    async fn blob(
        &self,
        reference: &Reference,
        descriptor: &image::Descriptor,
        limit: u64,
        what: &str,
    ) -> Result<Bytes, Error> {
        let url = self.url(
            reference.registry(),
            &format!("/v2/{}/blobs/{}", reference.repository(), descriptor.digest),
        )?;
        if descriptor.size > limit {
            return Err(Error::TooLarge {
                what: format!("{what} ({} bytes)", descriptor.size),
                url: url.to_string(),
                limit,
            });
        }
        let reply = self
            .http
            .send(Method::GET, &url, &HeaderMap::new(), Bytes::new(), limit, what)
            .await?
            .success()?;
        let actual = Digest::of(&reply.body);
        if actual != descriptor.digest {
            return Err(Error::DigestMismatch {
                what: what.into(),
                url: url.to_string(),
                expected: descriptor.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if reply.body.len() as u64 != descriptor.size {
            return Err(Error::InvalidManifest {
                url: url.to_string(),
                reason: format!(
                    "the {what} is {} bytes, its descriptor says {}",
                    reply.body.len(),
                    descriptor.size
                ),
            });
        }
        Ok(reply.body)
    }

    /// The registry's repositories (`/v2/_catalog`) with their tags (`/v2/<name>/tags/list`)
    /// and each tag's manifest digest, sorted by name.
    pub async fn list(&self, registry: &RegistryHost) -> Result<Vec<Repository>, Error> {
        let mut names = self.pages(registry, "/v2/_catalog?n=1000", "repositories").await?;
        names.sort();
        names.dedup();
        let mut repositories = Vec::with_capacity(names.len());
        for name in names {
            let mut tag_names = match self
                .pages(registry, &format!("/v2/{name}/tags/list?n=1000"), "tags")
                .await
            {
                Ok(tags) => tags,
                // Listed but without tags (every tag deleted).
                Err(error) if error.is_not_found() => Vec::new(),
                Err(error) => return Err(error),
            };
            tag_names.sort();
            tag_names.dedup();
            let mut tags = Vec::with_capacity(tag_names.len());
            for tag in tag_names {
                let reference = Reference::new(registry.clone(), &name, &tag)?;
                let digest = self.resolve(&reference).await?;
                tags.push(Tag { name: tag, digest });
            }
            repositories.push(Repository { name, tags });
        }
        Ok(repositories)
    }

    /// The string array `field` of a paginated list, following `Link: <...>; rel="next"`.
    async fn pages(&self, registry: &RegistryHost, first: &str, field: &str) -> Result<Vec<String>, Error> {
        let mut items = Vec::new();
        let mut url = self.url(registry, first)?;
        for _ in 0..MAX_PAGES {
            let reply = self
                .http
                .send(
                    Method::GET,
                    &url,
                    &HeaderMap::new(),
                    Bytes::new(),
                    MAX_LIST_PAGE,
                    "list",
                )
                .await?
                .success()?;
            let page: serde_json::Value = serde_json::from_slice(&reply.body).map_err(|error| Error::Status {
                method: "GET".into(),
                url: url.to_string(),
                status: reply.status.as_u16(),
                code: None,
                message: format!("not a JSON list: {error}"),
            })?;
            if let Some(values) = page.get(field).and_then(serde_json::Value::as_array) {
                items.extend(values.iter().filter_map(|value| value.as_str().map(str::to_owned)));
            }
            match reply.header("link").and_then(next_link) {
                Some(next) => url = resolve(&url, next)?,
                None => return Ok(items),
            }
        }
        Ok(items)
    }

    /// `http://` or `https://` and the registry's address: plain http for loopback
    /// registries and those the options name.
    fn base(&self, registry: &RegistryHost) -> String {
        let plain = registry.is_loopback()
            || self
                .options
                .plain_http
                .iter()
                .any(|entry| entry == "*" || entry == registry.as_str() || entry == registry.host());
        format!("{}://{registry}", if plain { "http" } else { "https" })
    }

    fn url(&self, registry: &RegistryHost, path: &str) -> Result<Uri, Error> {
        parse_url(&format!("{}{path}", self.base(registry)))
    }

    fn manifest_url(&self, reference: &Reference, target: &str) -> Result<Uri, Error> {
        self.url(
            reference.registry(),
            &format!("/v2/{}/manifests/{target}", reference.repository()),
        )
    }

    /// Downloads `url` (`http://` or `https://`), at most the module size limit.
    pub(crate) async fn download(&self, url: &Uri) -> Result<Bytes, Error> {
        Ok(self
            .http
            .send(
                Method::GET,
                url,
                &HeaderMap::new(),
                Bytes::new(),
                self.options.max_module_size,
                "module",
            )
            .await?
            .success()?
            .body)
    }
}

/// `Accept` for manifests: the two image manifest types.
fn accept_manifests() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in media_type::IMAGE_MANIFESTS {
        headers.append(ACCEPT, HeaderValue::from_static(value));
    }
    headers
}

/// A pinned reference's digest must be the one found.
fn check_pinned(reference: &Reference, found: &Digest, url: &Uri) -> Result<(), Error> {
    match reference.digest() {
        Some(pinned) if pinned != found => Err(Error::DigestMismatch {
            what: "manifest".into(),
            url: url.to_string(),
            expected: pinned.to_string(),
            actual: found.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The target of a `Link` header's `rel="next"` entry.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|entry| {
        let (target, params) = entry.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|param| matches!(param.trim(), "rel=\"next\"" | "rel=next"))
            .then_some(target)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_found() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(next_link(r#"</x>; rel="prev", </y>; rel=next"#), Some("/y"));
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn loopback_and_named_registries_use_plain_http() {
        let client = Client::new(ClientOptions {
            plain_http: vec!["registry.local:5000".into(), "cache".into()],
            ..ClientOptions::default()
        });
        let base = |host: &str| client.base(&RegistryHost::parse(host).expect("parses"));
        assert_eq!(base("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(base("localhost"), "http://localhost");
        assert_eq!(base("[::1]:1"), "http://[::1]:1");
        assert_eq!(base("registry.local:5000"), "http://registry.local:5000");
        assert_eq!(base("cache:443"), "http://cache:443");
        assert_eq!(base("registry.local:5001"), "https://registry.local:5001");
        assert_eq!(base("ghcr.example"), "https://ghcr.example");
    }
}
