//! Weft's developer tasks, run as `cargo xtask <task>`.
//!
//! Tasks:
//!
//! - `codegen [--check]`: regenerate (or check) the checked-in protobuf code of `weft-api`
//!   (see [`codegen`]).
//! - `demo [ARGS]`: an alias of `weftctl demo` (Istio's Bookinfo on a local mesh; see [`demo`]).
//! - `test [ARGS]`: every test suite of the repository (see [`test`]).
//! - `bench proxy [--suite proxy|wasm|filters|mtls] [--duration SECS] [--rounds N] [--quick] [--no-docs]
//!   [--keep-disturbed]`: the end-to-end benchmark of `weft-proxy` against nginx and HAProxy, and its
//!   suites (see [`bench`]).

mod bench;
mod codegen;
mod demo;
mod test;

use anyhow::bail;

/// Usage text shown for `help` and unknown tasks.
const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  codegen [--check]
      Regenerate api/src/pb/ from api/proto/ (--check: fail if the checked-in code is stale).
  demo [ARGS]
      Alias of `cargo run --release -p weftctl -- demo [ARGS]`: Istio's Bookinfo on a local
      Weft mesh, until Ctrl-C (--smoke: check it end to end and exit).
  test [ARGS]
      Every test suite: the workspace, the filters' host unit tests, the filter example.
  bench controller [--services N] [--rounds N] [--quick] [--no-docs] [...]
      Control-plane benchmark: a file change pushed to 1,000 simulated sidecars (time to
      all ACKs), compile time at 10,000 services, controller memory; writes the
      bench:controller section of docs/benchmarks.md (see xtask/src/bench/controller.rs).
  bench proxy [--suite proxy|wasm|filters|mtls] [--duration SECS] [--rounds N] [--quick] [--no-docs] [--keep-disturbed]
      End-to-end benchmark: weft-proxy vs nginx vs HAProxy vs direct, one worker each,
      load generator on CPU 0, proxy and origin on CPU 1. Prints a markdown table and
      writes it into docs/benchmarks.md.
        --suite S        proxy (default), wasm (native and Wasm filter chains, idle RSS,
                         swap time), filters (each first-party filter and a chain) or
                         mtls (a sidecar pair with and without mesh mTLS, and an
                         nginx pair for reference: vCPU per 1,000 req/s, added p99,
                         handshakes/s, connection reuse)
        --duration SECS  length of each load run (default 10)
        --rounds N       rounds, targets rotated each round (default 3)
        --quick          smoke test: --duration 3 --rounds 1
        --no-docs        print the table only; leave docs/benchmarks.md alone
        --keep-disturbed write docs/benchmarks.md even when other processes used the
                         CPUs during the run (otherwise it is left alone and the run fails)
";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    dispatch(&args)
}

/// Runs the task named by the first argument.
fn dispatch(args: &[String]) -> anyhow::Result<()> {
    match args.split_first() {
        Some((task, rest)) if task == "bench" => bench::main(rest),
        Some((task, rest)) if task == "codegen" => codegen::run(&root()?, rest),
        Some((task, rest)) if task == "demo" => demo::run(&root()?, rest),
        Some((task, rest)) if task == "test" => test::run(&root()?, rest),
        Some((task, _)) if matches!(task.as_str(), "help" | "-h" | "--help") => {
            eprint!("{USAGE}");
            Ok(())
        }
        Some((task, _)) => bail!("unknown task `{task}`\n\n{USAGE}"),
        None => bail!("no task given\n\n{USAGE}"),
    }
}

/// The repository root (the parent of xtask's manifest directory).
fn root() -> anyhow::Result<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Ok(root.canonicalize()?)
}
