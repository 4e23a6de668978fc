//! Building a filter crate for `wasm32-wasip1` from a test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::Error;

/// Builds a filter crate with cargo (`cargo build --release --target wasm32-wasip1`) and
/// finds its `.wasm`; each distinct build runs once per test process (later calls get the
/// path at once), and cargo makes it a no-op when the module is up to date.
///
/// ```no_run
/// # fn demo() -> Result<(), weft_filter_test::Error> {
/// // In a filter crate's `tests/`: build this crate.
/// let wasm = weft_filter_test::WasmBuild::new(env!("CARGO_MANIFEST_DIR")).build()?;
/// # let _ = wasm; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WasmBuild {
    dir: PathBuf,
    package: Option<String>,
    target_dir: Option<PathBuf>,
}

impl WasmBuild {
    /// Builds the crate (or workspace) in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            package: None,
            target_dir: None,
        }
    }

    /// Only this package of the workspace (`-p`); its module is the one returned.
    pub fn package(mut self, name: &str) -> Self {
        self.package = Some(name.to_owned());
        self
    }

    /// Where cargo builds (`CARGO_TARGET_DIR`). Default: cargo's choice for `dir`.
    pub fn target_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.target_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Runs the build and returns the path of the `.wasm` it produced.
    pub fn build(&self) -> Result<PathBuf, Error> {
        static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
        let key = format!("{:?}", (&self.dir, &self.package, &self.target_dir));
        // Held for the whole build: tests of one process wait for the same build once.
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = built.as_ref().and_then(|b| b.get(&key)) {
            return Ok(path.clone());
        }
        let path = self.run()?;
        built.get_or_insert_with(HashMap::new).insert(key, path.clone());
        Ok(path)
    }

    fn what(&self) -> String {
        match &self.package {
            Some(package) => format!("{package} in {}", self.dir.display()),
            None => self.dir.display().to_string(),
        }
    }

    fn run(&self) -> Result<PathBuf, Error> {
        let fail = |message: String| Error::Build {
            what: self.what(),
            message,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(&self.dir)
            .args([
                "build",
                "--quiet",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--message-format=json-render-diagnostics",
            ])
            .stdin(Stdio::null());
        if let Some(package) = &self.package {
            command.args(["-p", package]);
        }
        if let Some(dir) = &self.target_dir {
            command.env("CARGO_TARGET_DIR", dir);
        }
        let output = command.output().map_err(|e| fail(format!("cannot run cargo: {e}")))?;
        if !output.status.success() {
            return Err(fail(format!(
                "cargo failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            )));
        }
        let wanted = self.package.as_ref().map(|p| p.replace('-', "_"));
        let mut found = None;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let name = message["target"]["name"].as_str().map(|n| n.replace('-', "_"));
            if wanted.is_some() && name != wanted {
                continue;
            }
            let wasm = message["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .find(|f| f.ends_with(".wasm"));
            if let Some(wasm) = wasm {
                found = Some(PathBuf::from(wasm));
            }
        }
        found.ok_or_else(|| fail("cargo built no .wasm (is the crate a cdylib?)".to_owned()))
    }
}
