//! `cargo xtask demo [ARGS]`: an alias of `weftctl demo [ARGS]` (Istio's Bookinfo on a local
//! Weft mesh; see `cli/src/demo.rs`), run as `cargo run --release -p weftctl -- demo ARGS`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

/// Replaces this process with `cargo run --release -p weftctl -- demo ARGS` (so that Ctrl-C
/// reaches the demo as if it had been started directly). Returns only on failure.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let error = Command::new(cargo)
        .current_dir(root)
        .args(["run", "--quiet", "--release", "-p", "weftctl", "--", "demo"])
        .args(args)
        .exec();
    Err(error).context("running `cargo run --release -p weftctl -- demo`")
}
