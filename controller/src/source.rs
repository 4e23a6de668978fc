//! Where intent comes from. A source publishes the whole current set of YAML documents, keyed
//! by origin; the controller rebuilds its store from each published set.
//!
//! The file source (local mode, the embedded default) watches a directory. A Kubernetes
//! source publishes the same [`Documents`], one origin per object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// The current intent: YAML text by origin (a file path relative to the watched directory).
/// Origins are ordered, and the store gives precedence to the first on conflicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Documents {
    /// YAML text by origin.
    pub files: BTreeMap<String, Arc<str>>,
}

/// Watches a directory of YAML files (`*.yaml`, `*.yml`, recursively; hidden entries
/// skipped) and publishes its contents whenever they change.
#[derive(Debug, Clone)]
pub struct FileSource {
    dir: PathBuf,
    poll: Duration,
    settle: Duration,
}

/// Fingerprint of one file: when it changed and how long it is.
type Stamp = (Option<SystemTime>, u64);

impl FileSource {
    /// A source for `dir`, polled every 100 ms. A change is published once the directory
    /// has been quiet for 50 ms, so an editor's save (truncate, write) is read whole.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            poll: Duration::from_millis(100),
            settle: Duration::from_millis(50),
        }
    }

    /// Sets the polling interval.
    #[must_use]
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Reads the directory once.
    ///
    /// # Errors
    /// The directory cannot be listed. Files that cannot be read are skipped with a log line.
    pub fn read(&self) -> std::io::Result<Documents> {
        let stamps = scan(&self.dir)?;
        Ok(self.load(&stamps, &Documents::default(), &BTreeMap::new()))
    }

    /// Publishes the directory's documents now and after every change, until every
    /// receiver is gone. Runs on the current tokio runtime.
    ///
    /// # Errors
    /// The directory cannot be listed at start.
    pub fn spawn(self) -> std::io::Result<watch::Receiver<Arc<Documents>>> {
        let mut stamps = scan(&self.dir)?;
        let first = self.load(&stamps, &Documents::default(), &BTreeMap::new());
        let (tx, rx) = watch::channel(Arc::new(first));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = tx.closed() => return,
                }
                let Ok(mut now) = scan(&self.dir) else {
                    tracing::warn!(dir = %self.dir.display(), "cannot list the intent directory; keeping the last intent");
                    continue;
                };
                if now == stamps {
                    continue;
                }
                // Let a burst of writes finish before reading.
                loop {
                    tokio::time::sleep(self.settle).await;
                    match scan(&self.dir) {
                        Ok(again) if again == now => break,
                        Ok(again) => now = again,
                        Err(_) => break,
                    }
                }
                let previous = tx.borrow().clone();
                let next = self.load(&now, &previous, &stamps);
                stamps = now;
                if next != *previous {
                    tracing::info!(dir = %self.dir.display(), files = next.files.len(), "intent changed");
                    tx.send_replace(Arc::new(next));
                }
            }
        });
        Ok(rx)
    }

    /// Reads the files whose stamp changed; reuses the previous text of the others.
    fn load(
        &self,
        stamps: &BTreeMap<PathBuf, Stamp>,
        previous: &Documents,
        old: &BTreeMap<PathBuf, Stamp>,
    ) -> Documents {
        let mut files = BTreeMap::new();
        for (path, stamp) in stamps {
            let origin = origin(&self.dir, path);
            if old.get(path) == Some(stamp)
                && let Some(text) = previous.files.get(&origin)
            {
                files.insert(origin, text.clone());
                continue;
            }
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    files.insert(origin, Arc::from(text));
                }
                Err(error) => tracing::warn!(file = %path.display(), %error, "cannot read intent file; skipped"),
            }
        }
        Documents { files }
    }
}

fn origin(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).to_string_lossy().into_owned()
}

/// Every YAML file under `dir` with its stamp.
fn scan(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    let mut top = true;
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(error) if top => return Err(error),
            Err(_) => continue,
        };
        top = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                found.insert(path, (meta.modified().ok(), meta.len()));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn publishes_changes_and_removals() {
        let dir = std::env::temp_dir().join(format!("weft-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("a.yaml"), "kind: A\n").expect("write");
        std::fs::write(dir.join("sub/b.yml"), "kind: B\n").expect("write");
        std::fs::write(dir.join("notes.txt"), "ignored").expect("write");
        std::fs::write(dir.join(".hidden.yaml"), "kind: H\n").expect("write");

        let source = FileSource::new(&dir).with_poll_interval(Duration::from_millis(20));
        let mut rx = source.spawn().expect("spawn");
        let first = rx.borrow_and_update().clone();
        assert_eq!(first.files.keys().collect::<Vec<_>>(), ["a.yaml", "sub/b.yml"]);
        assert_eq!(&*first.files["a.yaml"], "kind: A\n");

        std::fs::write(dir.join("a.yaml"), "kind: A2\nspec: {}\n").expect("write");
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("change seen")
            .expect("open");
        assert_eq!(&*rx.borrow_and_update().files["a.yaml"], "kind: A2\nspec: {}\n");

        std::fs::remove_file(dir.join("sub/b.yml")).expect("rm");
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("removal seen")
            .expect("open");
        assert_eq!(rx.borrow().files.keys().collect::<Vec<_>>(), ["a.yaml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_directory_is_an_error() {
        assert!(FileSource::new("/nonexistent/weft-intent").read().is_err());
    }
}
