//! `weftctl`: Weft's command line.
//!
//! - `weftctl filter new NAME [--dir DIR]` scaffolds a filter crate on `weft-sdk`.
//! - `weftctl filter build [DIR]` builds it for `wasm32-wasip1` and prints the module's path
//!   and sha256 (what a snapshot's `wasm: { file, sha256 }` needs).
//! - `weftctl filter push FILE oci://HOST:PORT/REPO:TAG` pushes a module to an OCI registry
//!   and prints its url pinned by digest and its sha256 (`wasm: { url, sha256 }`).
//! - `weftctl filter ls oci://HOST:PORT` lists a registry's repositories, tags and digests.
//! - `weftctl status [--controller ADDR]` shows every sidecar's sync state and the intent's
//!   problems.
//! - `weftctl cert ls` lists the certificates the controller's CA issued; `weftctl cert revoke
//!   --serial S | --identity spiffe://...` revokes one, or every one of an identity.
//! - `weftctl bench URL [-n N | -d DURATION] [-c C] [--rate RPS] [--proxy HOST:PORT]` loads an
//!   HTTP service (like `ab`) and reports throughput, latency percentiles and status codes.
//! - `weftctl demo [--smoke]` runs Istio's Bookinfo on a local mesh (controller, a sidecar per
//!   service, an ingress gateway, mutual TLS) until Ctrl-C; see `demo.rs`.

#![allow(clippy::print_stdout, reason = "a command line prints its results")]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use sha2::Digest;

mod bench;
mod cert;
mod demo;
mod registry;
mod status;
mod table;

/// Weft's command line.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Write, build and inspect filters.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// Every sidecar the controller knows: its workload, the version it runs, ACK/NACK and
    /// the last error; then the problems found in the intent.
    Status {
        /// The controller's gRPC address.
        #[arg(long, default_value = "127.0.0.1:15010")]
        controller: String,
    },
    /// The controller CA's certificates: list them, revoke one or an identity.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Load an HTTP service, like `ab -n 500 -c 10 URL`: throughput, latency percentiles
    /// and histogram, status codes.
    Bench(bench::BenchArgs),
    /// Istio's Bookinfo on a local Weft mesh: builds and starts the controller, a sidecar per
    /// service (mutual TLS on every hop) and an ingress gateway serving
    /// http://127.0.0.1:8080/productpage; copy Istio's manifests into the intent directory it
    /// prints to change routing live. Runs until Ctrl-C.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Every certificate issued and not expired, and every revocation.
    Ls {
        /// The controller's gRPC address.
        #[arg(long, default_value = "127.0.0.1:15010")]
        controller: String,
    },
    /// Revoke a certificate (`--serial`) or an identity (`--identity spiffe://...`).
    Revoke(cert::RevokeArgs),
}

#[derive(Debug, Subcommand)]
enum FilterCommand {
    /// Scaffold a filter crate (config, a request filter, a unit test).
    New {
        /// Crate name: lowercase letters, digits, `_` or `-`.
        name: String,
        /// Parent directory. Default: the current one.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of `weft-sdk` for the new crate's dependency. Default: this checkout's.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a filter crate for wasm32-wasip1; print the module's path and sha256.
    Build {
        /// The crate's directory. Default: the current one.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Push a module to an OCI registry; print its url pinned by digest and its sha256.
    Push(registry::PushArgs),
    /// List an OCI registry's repositories, tags and digests.
    Ls(registry::LsArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Top::Filter(FilterCommand::New { name, dir, sdk }) => {
            let sdk = match sdk {
                Some(sdk) => sdk,
                None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm-sdk"),
            };
            let created = new_filter(&name, &dir, &sdk)?;
            println!(
                "created {}\nbuild it with: weftctl filter build {}",
                created.display(),
                created.display()
            );
        }
        Top::Filter(FilterCommand::Build { dir }) => {
            let (path, sha256) = build_filter(&dir)?;
            println!("{}\nsha256 {sha256}", path.display());
        }
        Top::Filter(FilterCommand::Push(args)) => registry::push(&args)?,
        Top::Filter(FilterCommand::Ls(args)) => registry::ls(&args)?,
        Top::Status { controller } => status::run(&controller)?,
        Top::Bench(args) => bench::run(&args)?,
        Top::Demo(args) => demo::run(&args)?,
        Top::Cert(CertCommand::Ls { controller }) => cert::ls(&controller)?,
        Top::Cert(CertCommand::Revoke(args)) => cert::revoke(&args)?,
    }
    Ok(())
}

/// Writes a new filter crate `name` under `parent`; returns its directory.
fn new_filter(name: &str, parent: &Path, sdk: &Path) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        bail!("{name:?} is not a valid crate name: use lowercase letters, digits, '_' or '-', starting with a letter");
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("weft-sdk not found at {}", sdk.display()))?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        fill(include_str!("../template/Cargo.toml.tmpl")),
    )?;
    std::fs::write(dir.join("src/lib.rs"), fill(include_str!("../template/lib.rs.tmpl")))?;
    Ok(dir)
}

/// Builds the crate in `dir` for wasm32-wasip1; returns the module's path and sha256.
fn build_filter(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("no filter crate at {}", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let name = package_name(&text).with_context(|| format!("no [package] name in {}", manifest.display()))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--release", "--target", "wasm32-wasip1"])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build failed for {}", dir.display());
    }
    let path = target_dir
        .join("wasm32-wasip1/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((path, sha256))
}

/// The `name` of the `[package]` table of a Cargo.toml.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(value) = line.strip_prefix("name").map(str::trim_start) {
            let value = value.strip_prefix('=')?.trim().trim_matches('"');
            return Some(value.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_read_from_the_package_table() {
        let manifest = "[workspace]\nname = \"no\"\n[package]\nname = \"my-filter\"\nversion = \"0.1.0\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("my-filter"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }

    #[test]
    fn scaffolded_filters_have_the_name_and_sdk_filled_in() {
        let parent = std::env::temp_dir().join(format!("weftctl-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent).expect("dir");
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm-sdk");
        let dir = new_filter("my-filter", &parent, &sdk).expect("scaffolds");
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        assert!(manifest.contains("name = \"my-filter\""));
        assert!(manifest.contains("wasm-sdk"));
        assert!(
            std::fs::read_to_string(dir.join("src/lib.rs"))
                .expect("lib")
                .contains("x-my-filter")
        );
        assert!(new_filter("my-filter", &parent, &sdk).is_err(), "refuses to overwrite");
        assert!(new_filter("Bad Name", &parent, &sdk).is_err());
        let _ = std::fs::remove_dir_all(&parent);
    }
}
