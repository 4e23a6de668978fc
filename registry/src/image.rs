//! The image format of a filter module.
//!
//! Two variants are understood; [`WasmImage`] writes the first:
//!
//! - **OCI Wasm** ([`ImageVariant::Oci`]): an OCI image manifest whose config has media type
//!   [`media_type::WASM_CONFIG`] and whose one layer, [`media_type::WASM_LAYER`], is the raw
//!   `.wasm` bytes.
//! - **Compat** ([`ImageVariant::Compat`]): an OCI or Docker schema 2 image manifest with one
//!   layer, a tar archive (gzip-compressed or not) holding `plugin.wasm` at its root: what
//!   `docker build` makes of a `FROM scratch` image that copies the module in.

use std::collections::BTreeMap;
use std::io::Read;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Digest;

/// The media types this crate reads and writes.
pub mod media_type {
    /// An OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index (a multi-platform image; stored by the registry, not pulled).
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// A Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// A Docker manifest list (stored by the registry, not pulled).
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// The config of an OCI Wasm image.
    pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
    /// The layer of an OCI Wasm image: the raw module.
    pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
    /// An OCI layer: a tar archive.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// An OCI layer: a gzip-compressed tar archive.
    pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// A Docker layer: a gzip-compressed tar archive.
    pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// A Docker layer: a tar archive.
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

    /// The manifest types a pull accepts (sent as `Accept`).
    pub const IMAGE_MANIFESTS: [&str; 2] = [OCI_MANIFEST, DOCKER_MANIFEST];

    /// Every manifest type the embedded registry stores.
    pub const ALL_MANIFESTS: [&str; 4] = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST];

    /// The layer types of the compat variant.
    pub const COMPAT_LAYERS: [&str; 4] = [
        OCI_LAYER_TAR_GZIP,
        DOCKER_LAYER_TAR_GZIP,
        OCI_LAYER_TAR,
        DOCKER_LAYER_TAR,
    ];
}

/// The file the compat variant's layer holds the module in.
pub const COMPAT_MODULE_FILE: &str = "plugin.wasm";

/// The annotation a pushed module's layer carries: the module's file name.
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// Which of the two image variants an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageVariant {
    /// The OCI Wasm variant: one `application/vnd.module.wasm.content.layer.v1+wasm` layer.
    Oci,
    /// The compat variant: one tar (or tar+gzip) layer holding `plugin.wasm`.
    Compat,
}

/// A blob an image refers to: its media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
}

/// An image manifest (OCI or Docker schema 2): a config blob and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest's media type.
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, in order.
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// Parses an image manifest. `content_type` is the `Content-Type` it was served with,
    /// used when the document has no `mediaType` field. Image indexes and manifest lists
    /// are refused: a module image has a single manifest.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Self, String> {
        let wire: WireManifest =
            serde_json::from_slice(body).map_err(|error| format!("not a JSON image manifest: {error}"))?;
        if wire.schema_version != 2 {
            return Err(format!("schemaVersion {} (only 2 is supported)", wire.schema_version));
        }
        let content_type = content_type.map(|value| value.split(';').next().unwrap_or(value).trim());
        let media_type = match (wire.media_type.as_deref(), content_type) {
            (Some(field), _) => field.to_owned(),
            (None, Some(header)) if !header.is_empty() => header.to_owned(),
            // An OCI manifest may omit the field; its shape says what it is.
            _ => media_type::OCI_MANIFEST.to_owned(),
        };
        if media_type == media_type::OCI_INDEX
            || media_type == media_type::DOCKER_MANIFEST_LIST
            || wire.manifests.is_some()
        {
            return Err(
                "an image index (multi-platform image) is not supported: push the module as a single image".into(),
            );
        }
        if !media_type::IMAGE_MANIFESTS.contains(&media_type.as_str()) {
            return Err(format!("unsupported manifest media type {media_type:?}"));
        }
        let config = wire.config.ok_or("no config descriptor")?.into_domain()?;
        let layers = wire
            .layers
            .into_iter()
            .map(WireDescriptor::into_domain)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            media_type,
            config,
            layers,
        })
    }

    /// The layer that holds the module and the image's variant; an error says why the image
    /// is not a module image.
    pub fn module_layer(&self) -> Result<(&Descriptor, ImageVariant), String> {
        let [layer] = self.layers.as_slice() else {
            return Err(format!(
                "a module image has exactly one layer, this one has {}",
                self.layers.len()
            ));
        };
        if layer.media_type == media_type::WASM_LAYER {
            Ok((layer, ImageVariant::Oci))
        } else if media_type::COMPAT_LAYERS.contains(&layer.media_type.as_str()) {
            Ok((layer, ImageVariant::Compat))
        } else {
            Err(format!(
                "layer media type {:?} is neither {} nor a tar layer holding {COMPAT_MODULE_FILE}",
                layer.media_type,
                media_type::WASM_LAYER
            ))
        }
    }
}

/// A module packed as an OCI Wasm image, ready to push: the blobs and the manifest.
///
/// The packing is deterministic: the same module always gives the same manifest digest.
#[derive(Debug, Clone)]
pub struct WasmImage {
    /// The config blob (media type [`media_type::WASM_CONFIG`]).
    pub config: Bytes,
    /// The layer blob: the module itself (media type [`media_type::WASM_LAYER`]).
    pub layer: Bytes,
    /// The manifest (media type [`media_type::OCI_MANIFEST`]).
    pub manifest: Bytes,
    /// The manifest's digest: what the image is pinned by.
    pub manifest_digest: Digest,
    /// The module's digest (its sha256 is what a snapshot's `sha256` field holds).
    pub module_digest: Digest,
}

impl WasmImage {
    /// Packs `module` (the bytes of a `.wasm` file).
    pub fn new(module: impl Into<Bytes>) -> Self {
        let layer = module.into();
        let config = Bytes::from_static(br#"{"architecture":"wasm","os":"wasip1","type":"proxy-wasm"}"#);
        let module_digest = Digest::of(&layer);
        let manifest = WireManifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.into()),
            config: Some(WireDescriptor {
                media_type: media_type::WASM_CONFIG.into(),
                digest: Digest::of(&config).to_string(),
                size: config.len() as u64,
                annotations: BTreeMap::new(),
            }),
            layers: vec![WireDescriptor {
                media_type: media_type::WASM_LAYER.into(),
                digest: module_digest.to_string(),
                size: layer.len() as u64,
                annotations: BTreeMap::from([(TITLE_ANNOTATION.into(), COMPAT_MODULE_FILE.into())]),
            }],
            manifests: None,
        };
        // Serializing plain strings and numbers cannot fail.
        let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
        Self {
            manifest_digest: Digest::of(&manifest),
            config,
            layer,
            manifest,
            module_digest,
        }
    }
}

/// Checks that `bytes` start like a Wasm module (`\0asm`, version 1).
pub fn check_module(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', ..]) => Err("unsupported Wasm binary version (a component?)".into()),
        _ => Err("no \\0asm header".into()),
    }
}

/// Takes the module out of a compat layer: a tar archive, gzip-compressed or not (told by
/// its first bytes, whatever the media type says), with `plugin.wasm` at its root. Reads at
/// most `limit` bytes of module and `2 * limit` of uncompressed archive.
pub(crate) fn module_from_tar(layer: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let archive_limit = limit.saturating_mul(2);
    let exceeded = std::cell::Cell::new(false);
    let inner: Box<dyn Read + '_> = if layer.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(layer))
    } else {
        Box::new(layer)
    };
    let reader = Limited {
        inner,
        remaining: archive_limit,
        exceeded: &exceeded,
    };
    let fail = |error: std::io::Error| {
        if exceeded.get() {
            format!("the tar layer is over the limit of {archive_limit} bytes uncompressed")
        } else {
            format!("reading the tar layer: {error}")
        }
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let path = entry.path().map_err(fail)?;
        let path = path.to_string_lossy();
        let name = path.trim_start_matches("./").trim_start_matches('/');
        if name != COMPAT_MODULE_FILE || !entry.header().entry_type().is_file() {
            continue;
        }
        if entry.size() > limit {
            return Err(format!(
                "{COMPAT_MODULE_FILE} is {} bytes, over the limit of {limit}",
                entry.size()
            ));
        }
        let mut module = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry.take(limit).read_to_end(&mut module).map_err(fail)?;
        return Ok(module);
    }
    Err(format!("the tar layer has no {COMPAT_MODULE_FILE} at its root"))
}

/// A reader that fails (and says so in `exceeded`) past `remaining` bytes.
struct Limited<'a, R> {
    inner: R,
    remaining: u64,
    exceeded: &'a std::cell::Cell<bool>,
}

impl<R: Read> Read for Limited<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded.set(true);
            return Err(std::io::Error::other("over the size limit"));
        }
        let max = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A manifest or index as it is on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireManifest {
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) config: Option<WireDescriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) layers: Vec<WireDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) manifests: Option<Vec<WireDescriptor>>,
}

/// A descriptor as it is on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireDescriptor {
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: BTreeMap<String, String>,
}

impl WireDescriptor {
    pub(crate) fn into_domain(self) -> Result<Descriptor, String> {
        let digest = Digest::parse(&self.digest)
            .map_err(|_| format!("descriptor digest {:?} is not sha256:<64 hex digits>", self.digest))?;
        Ok(Descriptor {
            media_type: self.media_type,
            digest,
            size: self.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn packing_is_deterministic_and_parses_back() {
        let image = WasmImage::new(MODULE);
        assert_eq!(image.manifest_digest, WasmImage::new(MODULE).manifest_digest);
        let manifest = Manifest::parse(&image.manifest, None).expect("parses");
        assert_eq!(manifest.media_type, media_type::OCI_MANIFEST);
        assert_eq!(manifest.config.media_type, media_type::WASM_CONFIG);
        assert_eq!(manifest.config.digest, Digest::of(&image.config));
        let (layer, variant) = manifest.module_layer().expect("a module image");
        assert_eq!(variant, ImageVariant::Oci);
        assert_eq!(layer.digest, Digest::of(MODULE));
        assert_eq!(layer.size, MODULE.len() as u64);
    }

    #[test]
    fn indexes_and_unknown_layers_are_refused() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(Manifest::parse(index, None).expect_err("refused").contains("index"));
        let zstd = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":1}},
                "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{d}","size":1}}]}}"#,
            d = Digest::of(b"")
        );
        let manifest = Manifest::parse(zstd.as_bytes(), None).expect("parses");
        assert!(manifest.module_layer().expect_err("refused").contains("tar+zstd"));
        assert!(Manifest::parse(b"{}", None).is_err());
    }

    #[test]
    fn modules_need_the_wasm_header() {
        assert_eq!(check_module(MODULE), Ok(()));
        assert!(check_module(b"\0asm\x0d\0\x01\0").is_err());
        assert!(check_module(b"hello world").is_err());
    }

    #[test]
    fn compat_layers_give_up_plugin_wasm() {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in [("./README", &b"hi"[..]), ("./plugin.wasm", MODULE)] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, data).expect("appends");
        }
        let tar = builder.into_inner().expect("tar");
        assert_eq!(module_from_tar(&tar, 1024).expect("found"), MODULE);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).expect("compresses");
        let gz = gz.finish().expect("gzip");
        assert_eq!(module_from_tar(&gz, 1024).expect("found"), MODULE);
        assert!(module_from_tar(&gz, 4).expect_err("too big").contains("limit"));
        assert!(module_from_tar(b"not a tar", 1024).is_err());
    }
}
