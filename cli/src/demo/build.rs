//! What the demo needs from the checkout: the platform templates and Istio's manifests
//! (`examples/bookinfo/`), and the binaries and filters it builds.
//!
//! The binaries are `weft-proxy`, `weft-controller` and `bookinfo`, built next to the running
//! `weftctl`: same target directory, same profile. So `cargo run --release -p weftctl -- demo`
//! runs release binaries, and a test running `target/debug/weftctl demo` runs debug ones. The
//! first-party filters the controller and the telemetry WasmPlugins need (router, retry,
//! fault, telemetry) are built for `wasm32-wasip1` (release, their own workspace) into
//! `target/filters`, as the end-to-end tests do.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The filters the demo's intent uses: the controller's first-party ones and telemetry.
const FILTERS: [&str; 4] = ["router", "retry", "fault", "telemetry"];

/// The Weft checkout to run from: the one `weftctl` was built in, else the first ancestor
/// of the current directory holding `examples/bookinfo/platform/`.
pub(super) fn checkout() -> Result<PathBuf> {
    let is_checkout = |dir: &Path| {
        dir.join("Cargo.toml").is_file() && dir.join("examples/bookinfo/platform/workloads.yaml").is_file()
    };
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if is_checkout(&built_in) {
        return built_in
            .canonicalize()
            .with_context(|| format!("resolving {}", built_in.display()));
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    cwd.ancestors()
        .find(|dir| is_checkout(dir))
        .map(Path::to_path_buf)
        .context(
            "weftctl demo runs from a Weft checkout (it needs examples/bookinfo/ and builds the mesh's \
         binaries): run it inside one, e.g. `cargo run --release -p weftctl -- demo`",
        )
}

/// The binaries the demo runs, next to this `weftctl`.
#[derive(Debug, Clone)]
pub(super) struct Binaries {
    /// `weft-proxy`: the sidecars and the gateway.
    pub(super) proxy: PathBuf,
    /// `weft-controller`.
    pub(super) controller: PathBuf,
    /// `bookinfo`: the four services.
    pub(super) bookinfo: PathBuf,
    /// This `weftctl`, for the commands the demo suggests.
    pub(super) weftctl: PathBuf,
}

impl Binaries {
    /// The binaries in this executable's directory.
    pub(super) fn beside_self() -> Result<Self> {
        let weftctl = std::env::current_exe().context("locating the weftctl executable")?;
        let dir = weftctl
            .parent()
            .with_context(|| format!("{} has no directory", weftctl.display()))?;
        Ok(Self {
            proxy: dir.join("weft-proxy"),
            controller: dir.join("weft-controller"),
            bookinfo: dir.join("bookinfo"),
            weftctl: weftctl.clone(),
        })
    }

    /// Fails, naming the first missing binary, unless all are there.
    pub(super) fn check(&self) -> Result<()> {
        for path in [&self.proxy, &self.controller, &self.bookinfo] {
            if !path.is_file() {
                bail!(
                    "{} is missing: build it (`cargo build --release -p weft-proxy -p weft-controller \
                     -p weft-bookinfo`) or run without --no-build",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Builds the binaries with this `weftctl`'s profile into its target directory, and the
    /// filters into `<root>/target/filters`. Returns the directory holding the filters.
    pub(super) fn build(&self, root: &Path) -> Result<PathBuf> {
        let profile_dir = self.weftctl.parent().context("weftctl has no directory")?;
        let target_dir = profile_dir
            .parent()
            .filter(|dir| dir.join("CACHEDIR.TAG").is_file())
            .with_context(|| {
                format!(
                    "{} is not in a cargo target directory, so the demo cannot build next to it: \
                     run `cargo run --release -p weftctl -- demo` in a checkout, or pass --no-build",
                    self.weftctl.display()
                )
            })?;
        let profile = profile_dir
            .file_name()
            .and_then(|name| name.to_str())
            .context("weftctl's directory has no name")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(&cargo);
        command
            .current_dir(root)
            .args([
                "build",
                "--quiet",
                "-p",
                "weft-proxy",
                "-p",
                "weft-controller",
                "-p",
                "weft-bookinfo",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        let status = command.status().context("running cargo build")?;
        if !status.success() {
            bail!("building weft-proxy, weft-controller and bookinfo failed ({status})");
        }
        let filters_target = root.join("target/filters");
        let mut command = Command::new(&cargo);
        command
            .current_dir(root.join("filters"))
            .env("CARGO_TARGET_DIR", &filters_target)
            .args(["build", "--quiet", "--release", "--locked", "--target", "wasm32-wasip1"]);
        for filter in FILTERS {
            command.args(["-p", filter]);
        }
        let status = command.status().context("running cargo build for the filters")?;
        if !status.success() {
            bail!("building the filters failed ({status})");
        }
        Ok(filters_dir(root))
    }
}

/// Where the filters are built: `<root>/target/filters/wasm32-wasip1/release`.
pub(super) fn filters_dir(root: &Path) -> PathBuf {
    root.join("target/filters/wasm32-wasip1/release")
}

/// Fails, naming the first missing filter, unless every filter the demo needs is in `dir`.
pub(super) fn check_filters(dir: &Path) -> Result<()> {
    for filter in FILTERS {
        let path = dir.join(format!("{filter}.wasm"));
        if !path.is_file() {
            bail!("{} is missing: run without --no-build", path.display());
        }
    }
    Ok(())
}
