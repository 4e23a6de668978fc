//! `cargo xtask codegen [--check]`: the protobuf code of `weft-api`, generated from
//! `api/proto/` and checked in, so building needs no `protoc` and no build script.
//!
//! `codegen` compiles the protos with the pure-Rust `protox` compiler and writes the prost
//! messages and tonic client/server code into [`OUT_DIR`]. `codegen --check` generates into a
//! temporary directory and fails, naming each differing file, when the checked-in code is
//! stale; the test at the bottom runs the same check, so `cargo xtask test` catches drift.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where the protos live, relative to the repository root (the import root).
const PROTO_ROOT: &str = "api/proto";

/// The protos compiled, relative to [`PROTO_ROOT`]; their imports are compiled with them.
const PROTOS: &[&str] = &["weft/v1/ca.proto", "weft/v1/discovery.proto", "weft/v1/snapshot.proto"];

/// Where the generated code is checked in, relative to the repository root.
const OUT_DIR: &str = "api/src/pb";

/// The files the generator writes (one per protobuf package).
const GENERATED: &[&str] = &["weft.v1.rs"];

/// Runs `codegen` (write the generated code) or `codegen --check` (compare only).
pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    match args {
        [] => {
            generate(root, &root.join(OUT_DIR))?;
            eprintln!("generated {} in {OUT_DIR}", GENERATED.join(", "));
            Ok(())
        }
        [flag] if flag == "--check" => {
            let stale = check(root)?;
            if stale.is_empty() {
                eprintln!("{OUT_DIR} is up to date");
                Ok(())
            } else {
                bail!(
                    "generated code is stale, run `cargo xtask codegen`:\n  {}",
                    stale.join("\n  ")
                )
            }
        }
        _ => bail!("usage: cargo xtask codegen [--check]"),
    }
}

/// Generates the code from the protos under `root` into `out_dir`.
fn generate(root: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let proto_root = root.join(PROTO_ROOT);
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    let descriptors =
        protox::compile(&files, [&proto_root]).map_err(|e| anyhow::anyhow!("compiling {PROTO_ROOT}: {e:?}"))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Generated code needs only tonic's `codegen` feature; channels and servers are
        // built by the crates that have a transport.
        .build_transport(false)
        // Deterministic encoding: map entries are written in key order.
        .btree_map(".")
        // Parts of a snapshot are shared by many responses: `Bytes`, not copies.
        .bytes(".weft.v1.SnapshotPart.data")
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .compile_fds(descriptors)
        .with_context(|| format!("generating code into {}", out_dir.display()))
}

/// Generates into a temporary directory; returns the checked-in files that differ from the
/// fresh output (stale or missing), as paths relative to the repository root.
fn check(root: &Path) -> anyhow::Result<Vec<String>> {
    let fresh = tempfile::tempdir().context("creating a temporary directory")?;
    generate(root, fresh.path())?;
    let mut stale = Vec::new();
    for name in GENERATED {
        let generated = std::fs::read(fresh.path().join(name)).with_context(|| format!("reading generated {name}"))?;
        let path = format!("{OUT_DIR}/{name}");
        match std::fs::read(root.join(&path)) {
            Ok(checked_in) if checked_in == generated => {}
            Ok(_) => stale.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => stale.push(format!("{path} (missing)")),
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        }
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    /// The checked-in protobuf code is what `cargo xtask codegen` generates from the protos.
    #[test]
    fn generated_code_is_up_to_date() {
        let root = crate::root().expect("repository root");
        let stale = super::check(&root).expect("codegen runs");
        assert!(
            stale.is_empty(),
            "generated code is stale, run `cargo xtask codegen`: {stale:?}"
        );
    }
}
