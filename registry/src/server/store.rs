//! The embedded registry's store: content-addressed blobs and per-repository manifests and
//! tags on disk.
//!
//! ```text
//! <root>/blobs/sha256/<hex>                       every blob and manifest, by digest
//! <root>/repositories/<name>/_manifests/<hex>     a manifest of <name>: its media type
//! <root>/repositories/<name>/_tags/<tag>          a tag of <name>: sha256:<hex>
//! <root>/uploads/<id>                             an upload session's bytes so far
//! <root>/tmp/                                     temporary files, renamed into place
//! ```
//!
//! Repository name components never start with `_`, so `_manifests` and `_tags` cannot
//! clash with a nested repository. Every write is atomic (a temporary file renamed), so a
//! crash leaves whole files or none.

use std::io;
use std::path::{Path, PathBuf};

use sha2::Digest as _;
use tokio::io::AsyncReadExt as _;

use crate::Digest;
use crate::fs::write_atomically;

/// The directories and files of a store.
#[derive(Debug)]
pub(crate) struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`. Leftover temporary files and upload
    /// sessions (uploads do not survive a restart; clients start them again) are removed.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        for dir in ["blobs/sha256", "repositories", "uploads", "tmp"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        for dir in ["tmp", "uploads"] {
            if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self { root: root.into() })
    }

    /// The store's directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn repository_dir(&self, repository: &str) -> PathBuf {
        self.root.join("repositories").join(repository)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The size of a blob, `None` if the store does not have it.
    pub(crate) async fn blob_size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub(crate) async fn put_blob(&self, bytes: &[u8]) -> io::Result<Digest> {
        let digest = Digest::of(bytes);
        if self.blob_size(&digest).await?.is_none() {
            write_atomically(&self.blob_path(&digest), Some(&self.tmp_dir()), bytes).await?;
        }
        Ok(digest)
    }

    /// Records `digest` (a blob already stored) as a manifest of `repository` with
    /// `media_type`, and points `tag` at it.
    pub(crate) async fn link_manifest(
        &self,
        repository: &str,
        digest: &Digest,
        media_type: &str,
        tag: Option<&str>,
    ) -> io::Result<()> {
        let dir = self.repository_dir(repository);
        tokio::fs::create_dir_all(dir.join("_manifests")).await?;
        tokio::fs::create_dir_all(dir.join("_tags")).await?;
        let tmp = self.tmp_dir();
        write_atomically(
            &dir.join("_manifests").join(digest.hex()),
            Some(&tmp),
            media_type.as_bytes(),
        )
        .await?;
        if let Some(tag) = tag {
            write_atomically(&dir.join("_tags").join(tag), Some(&tmp), digest.to_string().as_bytes()).await?;
        }
        Ok(())
    }

    /// The media type of `repository`'s manifest `digest`, `None` if it has no such manifest.
    pub(crate) async fn manifest_type(&self, repository: &str, digest: &Digest) -> io::Result<Option<String>> {
        let path = self.repository_dir(repository).join("_manifests").join(digest.hex());
        read_optional(&path).await
    }

    /// The digest `repository`'s `tag` points to.
    pub(crate) async fn tag(&self, repository: &str, tag: &str) -> io::Result<Option<Digest>> {
        let path = self.repository_dir(repository).join("_tags").join(tag);
        Ok(read_optional(&path)
            .await?
            .and_then(|text| Digest::parse(text.trim()).ok()))
    }

    /// `repository`'s tags, sorted; `None` if there is no such repository.
    pub(crate) async fn tags(&self, repository: &str) -> io::Result<Option<Vec<String>>> {
        let dir = self.repository_dir(repository);
        if tokio::fs::metadata(dir.join("_manifests")).await.is_err() {
            return Ok(None);
        }
        let mut tags = list_files(&dir.join("_tags")).await?;
        tags.sort();
        Ok(Some(tags))
    }

    /// Removes `repository`'s `tag`; whether it existed.
    pub(crate) async fn delete_tag(&self, repository: &str, tag: &str) -> io::Result<bool> {
        remove_optional(&self.repository_dir(repository).join("_tags").join(tag)).await
    }

    /// Removes `repository`'s manifest `digest` and the tags pointing at it; whether it
    /// existed. The blob stays (other repositories may share it).
    pub(crate) async fn delete_manifest(&self, repository: &str, digest: &Digest) -> io::Result<bool> {
        let dir = self.repository_dir(repository);
        let existed = remove_optional(&dir.join("_manifests").join(digest.hex())).await?;
        for tag in list_files(&dir.join("_tags")).await? {
            if self.tag(repository, &tag).await?.as_ref() == Some(digest) {
                remove_optional(&dir.join("_tags").join(&tag)).await?;
            }
        }
        Ok(existed)
    }

    /// Every repository's name, sorted.
    pub(crate) async fn repositories(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(prefix) = pending.pop() {
            let dir = self.root.join("repositories").join(&prefix);
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            while let Some(entry) = entries.next_entry().await? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !entry.file_type().await?.is_dir() {
                    continue;
                }
                if name == "_manifests" {
                    names.push(prefix.clone());
                } else if !name.starts_with('_') {
                    pending.push(if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    });
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Starts an upload session; returns its id.
    pub(crate) async fn new_upload(&self) -> io::Result<String> {
        let id = new_id();
        tokio::fs::File::create(self.upload_path(&id)).await?;
        Ok(id)
    }

    /// An upload session's file (the id is checked by the caller: 32 hex digits).
    pub(crate) fn upload_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// How many bytes an upload has, `None` if there is no such session.
    pub(crate) async fn upload_size(&self, id: &str) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.upload_path(id)).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Ends an upload: its bytes must hash to `expected`; they become that blob. The
    /// session is gone either way. `Err(actual)` on a mismatch.
    pub(crate) async fn commit_upload(&self, id: &str, expected: &Digest) -> io::Result<Result<(), Digest>> {
        let path = self.upload_path(id);
        let actual = hash_file(&path).await?;
        if actual != *expected {
            let _ = tokio::fs::remove_file(&path).await;
            return Ok(Err(actual));
        }
        let file = tokio::fs::File::open(&path).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&path, self.blob_path(expected)).await?;
        Ok(Ok(()))
    }

    /// Cancels an upload; whether it existed.
    pub(crate) async fn delete_upload(&self, id: &str) -> io::Result<bool> {
        remove_optional(&self.upload_path(id)).await
    }
}

/// A new session id: 32 hex digits from the time, the process and a counter.
fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = sha2::Sha256::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(now.as_nanos().to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let stack_address = &hasher as *const _ as usize;
    hasher.update(stack_address.to_le_bytes());
    let digest = Digest::from_hasher(hasher);
    digest.hex()[..32].to_owned()
}

async fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).await?;
        if n == 0 {
            return Ok(Digest::from_hasher(hasher));
        }
        hasher.update(&buffer[..n]);
    }
}

async fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

async fn remove_optional(path: &Path) -> io::Result<bool> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// The names of the plain files in `dir` (none if it does not exist), skipping temporary ones.
async fn list_files(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(error) => return Err(error),
    };
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.file_type().await?.is_file() {
            names.push(name);
        }
    }
    Ok(names)
}
