//! Atomic file writes: a temporary file in the same directory, synced, then renamed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt as _;

/// Distinguishes temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file name in `dir` for `name`, unique in this machine's processes.
pub(crate) fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically: readers see the old file or the whole new one,
/// never a part. `temp_dir` must be on the same file system as `path` (`None`: `path`'s
/// directory).
pub(crate) async fn write_atomically(path: &Path, temp_dir: Option<&Path>, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = match temp_dir.or_else(|| path.parent()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    let temp = temp_path(dir, &name);
    let written = async {
        let mut file = tokio::fs::File::create(&temp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temp, path).await
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    written
}
