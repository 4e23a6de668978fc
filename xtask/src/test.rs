//! `cargo xtask test`: every test of the repository — the root workspace (unit and
//! integration tests against the real proxy), the filters' host unit tests, and the custom
//! filter example's. Installs the Debian packages the tests run against (`docker-registry`)
//! when they are missing.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs every test suite; fails on the first that fails.
pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    // The registry tests run against a real external registry too.
    crate::bench::tools::ensure_installed("docker-registry", "docker-registry")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let suites: [(&str, &Path, Option<&str>); 3] = [
        ("workspace", root, None),
        (
            "filters (host unit tests)",
            &root.join("filters"),
            Some("target/filters"),
        ),
        (
            "custom filter example",
            &root.join("examples/filters/add-header"),
            Some("target/examples"),
        ),
    ];
    for (name, dir, target) in suites {
        eprintln!("== tests: {name}");
        let mut command = Command::new(&cargo);
        command.current_dir(dir).arg("test").arg("--locked");
        if name == "workspace" {
            command.arg("--workspace");
        }
        if let Some(target) = target {
            command.env("CARGO_TARGET_DIR", root.join(target));
        }
        command.args(args);
        let status = command
            .status()
            .with_context(|| format!("running cargo test for {name}"))?;
        if !status.success() {
            bail!("{name} tests failed");
        }
    }
    Ok(())
}
