//! `cargo xtask bench controller` (also `bench proxy --suite controller`): the control plane
//! under load.
//!
//! One run builds `weft-controller` in release and the first-party filters it publishes
//! (`router`, `retry`, `fault`, for wasm32-wasip1), runs itself from a release build of xtask
//! (see [`main`]), raises its open-file limit to the hard limit (the controller inherits it)
//! and, unless `--no-pin`, pins the controller to CPU 1 and itself, whose tokio runtime plays
//! the sidecars, to CPU 0. Then:
//!
//! 1. **Config push** ([`push`]). An intent directory with `--services` Services (default
//!    100), each with ten Workloads (five `version: v1`, five `version: v2`), a
//!    DestinationRule with subsets `v1` and `v2` and a VirtualService splitting 50/50: 1,000
//!    workloads. One config stream per workload (node id = the workload's name), each on its
//!    own HTTP/2 connection unless `--connections N` shares N connections among them. Every
//!    simulated sidecar decodes each snapshot, converts and validates it like weft-proxy does
//!    (`weft_api::Snapshot::try_from`) and ACKs it; it does not apply it. Once every stream
//!    has ACKed its first snapshot, each round rewrites one VirtualService's file (shifting
//!    its weights) and measures the time from the write to the last stream's ACK of a new
//!    version (every sidecar's outbound routing holds every VirtualService, so every stream
//!    gets a push), then checks with the Status API that the controller lists every sidecar
//!    SYNCED with the version it ACKed. The controller's log splits each round into stages.
//! 2. **Compile at 10,000 services** ([`compile_scale`], `--compile-services`): a second
//!    controller on that many Services with two Workloads each; the `took=` of its `intent
//!    compiled` log line at start and after edits, and the push to one sidecar. Then the
//!    criterion benchmark `cargo bench -p weft-controller --bench compile` ([`criterion`];
//!    skipped with `--no-criterion` and by `--quick`).
//! 3. **Memory**: the controller's `VmRSS` and `VmHWM` idle after start, with every stream
//!    connected, and after the rounds.
//!
//! Before each round the run waits for other processes to leave the CPUs alone and repeats a
//! round they disturbed, as the proxy suites do. The results go to stdout as markdown and into
//! `docs/benchmarks.md` between `<!-- bench:controller:start -->` and
//! `<!-- bench:controller:end -->`. The controllers are stopped when the run ends, whatever
//! happens.
//!
//! Where things are: [`intent`] writes and edits the YAML, [`process`] runs a controller and
//! reads its log, [`sidecars`] are the simulated sidecars and the Status API check, [`render`]
//! the report; the phases are here.

mod intent;
mod process;
mod render;
mod sidecars;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use tonic::transport::Channel;
use weft_api::pb;

use self::intent::{Intent, WorkloadNode};
use self::process::{ControllerProcess, Memory, Stages, first_took, stages};
use self::render::{Report, ms, opt_ms, write_docs};
use self::sidecars::{Fleet, Seen, StatusCheck, confirm_status, open_streams};
use super::procs::{self, CpuTicks, ForeignProbe};
use super::report::{median, thousands};
use super::tools;

/// Usage of `bench controller`.
const USAGE: &str = "usage: cargo xtask bench controller [--services N] [--rounds N] [--connections N] \
[--compile-services N] [--no-criterion] [--no-pin] [--quick] [--no-docs] [--keep-disturbed]";

/// Workloads per Service in the push test.
const WORKLOADS_PER_SERVICE: usize = 10;
/// Workloads per Service in the compile test (as in the criterion benchmark).
const COMPILE_WORKLOADS_PER_SERVICE: usize = 2;
/// Services per intent file in the compile test (the push test has one per file).
const COMPILE_SERVICES_PER_FILE: usize = 100;
/// The goal: file change to every ACK, at most this long.
const GOAL_PUSH: Duration = Duration::from_secs(1);
/// The goal: compiling 10,000 services, at most this long.
const GOAL_COMPILE: Duration = Duration::from_secs(1);
/// The CPU the controller runs on (with pinning).
const CONTROLLER_CPU: &str = "1";
/// The CPU this process, the simulated sidecars, runs on (with pinning).
const SIDECARS_CPU: &str = "0";
/// Streams connecting at the same time when each has its own connection.
const CONNECT_CONCURRENCY: usize = 64;
/// Largest snapshot a simulated sidecar accepts (weft-proxy's limit).
const MAX_MESSAGE: usize = 256 << 20;
/// Other processes may use at most this much CPU (percent of one CPU) during a round before
/// it is repeated (as in the proxy suites).
const FOREIGN_LIMIT: f64 = super::FOREIGN_LIMIT;
/// Repeats of a disturbed round; the last one is kept regardless.
const FOREIGN_RETRIES: u32 = super::FOREIGN_RETRIES;

/// Set in the environment of the release build this benchmark re-runs itself as.
const RELEASE_ENV: &str = "WEFT_BENCH_CONTROLLER_RELEASE";

/// `bench controller ARGS`.
///
/// `cargo xtask` is a dev build, where the workspace's crates (`weft-api`'s protobuf decoding
/// and snapshot validation among them) run unoptimized: the simulated sidecars would measure
/// themselves rather than the controller. So a dev build builds xtask in release and runs
/// the benchmark there.
pub(crate) fn main(args: &[String]) -> anyhow::Result<()> {
    let options = Options::parse(args, "cargo xtask bench controller")?;
    if cfg!(debug_assertions) && std::env::var_os(RELEASE_ENV).is_none() {
        let root = workspace_root()?;
        let xtask = build_release(&root, "xtask")?;
        eprintln!("bench: running the benchmark from the release build of xtask");
        let status = Command::new(&xtask)
            .arg("bench")
            .arg("controller")
            .args(args)
            .env(RELEASE_ENV, "1")
            .current_dir(&root)
            .status()
            .with_context(|| format!("running {}", xtask.display()))?;
        if !status.success() {
            bail!("the benchmark failed ({status})");
        }
        return Ok(());
    }
    run(&options)
}

/// The arguments of `bench proxy ARGS` without `--suite controller` when they select this
/// suite, `None` otherwise.
pub(crate) fn suite_args(args: &[String]) -> Option<Vec<String>> {
    let mut rest = Vec::with_capacity(args.len());
    let mut selected = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--suite=controller" {
            selected = true;
        } else if arg == "--suite" && iter.as_slice().first().is_some_and(|v| v == "controller") {
            iter.next();
            selected = true;
        } else {
            rest.push(arg.clone());
        }
    }
    selected.then_some(rest)
}

/// `bench proxy --suite controller ARGS`: the same as `bench controller ARGS`.
pub(crate) fn main_as_suite(args: &[String]) -> anyhow::Result<()> {
    main(&suite_args(args).unwrap_or_else(|| args.to_vec()))
}

/// The workspace's root directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_owned())
}

/// Options of `bench controller`.
#[derive(Debug, Clone)]
struct Options {
    /// Services in the push test (ten workloads, so ten streams, each).
    services: usize,
    /// Measured push rounds (one VirtualService edit each).
    rounds: u32,
    /// HTTP/2 connections the streams share; `None`: one per stream.
    connections: Option<usize>,
    /// Services in the compile test; 0 skips it.
    compile_services: usize,
    /// Edits in the compile test.
    compile_edits: u32,
    /// Whether to run the criterion benchmark.
    criterion: bool,
    /// Whether to pin the controller and the sidecars to a CPU each.
    pin: bool,
    /// Whether `--quick` was given.
    quick: bool,
    /// Whether to write `docs/benchmarks.md`.
    write_docs: bool,
    /// Whether to write `docs/benchmarks.md` even when other processes disturbed the run.
    keep_disturbed: bool,
    /// The command line, for the report.
    command: String,
}

impl Options {
    /// Parses `args`; `prefix` starts the command line in the report.
    fn parse(args: &[String], prefix: &str) -> anyhow::Result<Self> {
        let mut services = None;
        let mut rounds = None;
        let mut connections = None;
        let mut compile_services = None;
        let mut criterion = true;
        let mut pin = true;
        let mut quick = false;
        let mut write_docs = true;
        let mut keep_disturbed = false;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut number = |least: usize| -> anyhow::Result<usize> {
                let value = inline
                    .clone()
                    .or_else(|| iter.next().cloned())
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
                let n: usize = value
                    .replace(['_', ','], "")
                    .parse()
                    .with_context(|| format!("{flag} takes a number, not {value:?}"))?;
                if n < least {
                    bail!("{flag} must be at least {least}");
                }
                Ok(n)
            };
            match flag {
                "--services" => services = Some(number(1)?),
                "--rounds" => rounds = Some(u32::try_from(number(1)?).context("--rounds is too large")?),
                "--connections" => connections = Some(number(1)?),
                "--compile-services" => compile_services = Some(number(0)?),
                "--no-criterion" => criterion = false,
                "--no-pin" => pin = false,
                "--quick" => quick = true,
                "--no-docs" => write_docs = false,
                "--keep-disturbed" => keep_disturbed = true,
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown option {other:?}\n{USAGE}"),
            }
        }
        let mut command = prefix.to_owned();
        for arg in args {
            command.push(' ');
            command.push_str(arg);
        }
        Ok(Self {
            services: services.unwrap_or(if quick { 10 } else { 100 }),
            rounds: rounds.unwrap_or(if quick { 2 } else { 5 }),
            connections,
            compile_services: compile_services.unwrap_or(if quick { 1_000 } else { 10_000 }),
            compile_edits: if quick { 1 } else { 3 },
            criterion: criterion && !quick,
            pin,
            quick,
            write_docs,
            keep_disturbed,
            command: command.trim().to_owned(),
        })
    }

    /// Streams in the push test.
    fn streams(&self) -> usize {
        self.services * WORKLOADS_PER_SERVICE
    }
}

/// What every phase needs to start a controller.
struct Setup {
    /// The release `weft-controller`.
    controller: PathBuf,
    /// The directory with `router.wasm`, `retry.wasm` and `fault.wasm`.
    filters: PathBuf,
    /// `taskset`, when pinning.
    taskset: Option<PathBuf>,
    /// `setpriv`, when it has `--pdeathsig`.
    setpriv: Option<PathBuf>,
    /// Scratch space, removed at the end.
    dir: PathBuf,
    /// `getconf CLK_TCK`.
    clk_tck: u64,
}

/// Facts about the machine and the run, for the report.
struct Machine {
    /// `getconf CLK_TCK`.
    clk_tck: u64,
    date: String,
    nproc: usize,
    cpu_model: String,
    kernel: String,
    loadavg_start: String,
    priority: String,
    commit: String,
    versions: Vec<String>,
    /// The open-file limit before and after raising it, and the hard limit.
    nofile: (u64, u64, u64),
    steal_percent: Option<f64>,
}

fn run(options: &Options) -> anyhow::Result<()> {
    let root = workspace_root()?;
    let nofile = raise_open_files_limit()?;
    // Each process holds one socket per stream (the controller also its log, the registry…).
    let needed = options.streams() as u64 + 256;
    if nofile.1 < needed {
        bail!(
            "the open-file limit is {} (hard {}); {} streams need about {needed} per process: raise it (ulimit -n) \
             or use fewer --services",
            nofile.1,
            nofile.2,
            options.streams()
        );
    }
    let controller = build_release(&root, "weft-controller")?;
    let filters = build_filters(&root)?;
    let clk_tck: u64 = tools::capture(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .context("reading `getconf CLK_TCK`")?;
    let nproc = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let taskset = if options.pin {
        if nproc < 2 {
            bail!("pinning needs 2 CPUs, this machine has {nproc}; pass --no-pin");
        }
        let taskset = taskset().context("pinning needs taskset (util-linux); install it or pass --no-pin")?;
        // Before any thread of the runtime exists, so all of them inherit it.
        let status = Command::new(&taskset)
            .args(["-a", "-p", "-c", SIDECARS_CPU])
            .arg(std::process::id().to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset")?;
        if !status.success() {
            bail!("taskset could not pin this process to CPU {SIDECARS_CPU} ({status})");
        }
        Some(taskset)
    } else {
        None
    };
    let setpriv = Some(PathBuf::from("setpriv"))
        .filter(|setpriv| tools::capture(Command::new(setpriv).arg("--help")).contains("--pdeathsig"));
    let scratch = super::TempDir::new()?;
    let setup = Setup {
        controller: controller.clone(),
        filters,
        taskset,
        setpriv,
        dir: scratch.0.clone(),
        clk_tck,
    };
    let cpu_start = super::cpu_times();
    let mut machine = Machine {
        clk_tck,
        date: tools::capture(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .trim()
            .to_owned(),
        nproc,
        cpu_model: super::cpu_model(),
        kernel: tools::capture(Command::new("uname").arg("-r")).trim().to_owned(),
        loadavg_start: fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned()),
        priority: super::priority(),
        commit: super::git_commit(&root, &["controller", "api", "registry", "Cargo.lock"]),
        versions: vec![
            super::first_line(&tools::capture(Command::new(&controller).arg("--version"))),
            super::first_line(&tools::capture(Command::new("rustc").arg("--version"))),
        ],
        nofile,
        steal_percent: None,
    };

    let mut quiet = Quiet {
        clk_tck,
        // Generous: the rounds are short, the builds of other people are not.
        patience: if options.keep_disturbed {
            Duration::ZERO
        } else {
            Duration::from_secs(600)
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let push = runtime.block_on(push(options, &setup, &mut quiet))?;
    let compile = if options.compile_services > 0 {
        Some(runtime.block_on(compile_scale(options, &setup, &mut quiet))?)
    } else {
        None
    };
    drop(runtime);
    let criterion = if options.criterion {
        Some(criterion(&root, nproc)?)
    } else {
        None
    };
    if let (Some(start), Some(end)) = (cpu_start, super::cpu_times()) {
        let total: u64 = end.iter().zip(&start).map(|(e, s)| e.saturating_sub(*s)).sum();
        let steal = end
            .get(7)
            .zip(start.get(7))
            .map(|(e, s)| e.saturating_sub(*s))
            .unwrap_or(0);
        if total > 0 {
            machine.steal_percent = Some(steal as f64 * 100.0 / total as f64);
        }
    }

    let report = Report {
        options,
        machine: &machine,
        push: &push,
        compile: compile.as_ref(),
        criterion: criterion.as_ref(),
    };
    let markdown = report.render();
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{markdown}").context("writing to stdout")?;
    }
    if options.write_docs {
        let docs = root.join("docs").join("benchmarks.md");
        if report.disturbed() && !options.keep_disturbed {
            bail!(
                "other processes used the CPUs during the run (see \"other load\"), so {} was left as it was; \
                 rerun on a quiet machine, or pass --keep-disturbed to write these numbers anyway",
                docs.display()
            );
        }
        write_docs(&docs, &markdown)?;
        eprintln!("bench: results written to {}", docs.display());
    }
    Ok(())
}

/// `taskset` when it runs.
fn taskset() -> Option<PathBuf> {
    let taskset = PathBuf::from("taskset");
    (!tools::capture(Command::new(&taskset).arg("--version")).is_empty()).then_some(taskset)
}

/// Raises this process's soft limit of open files to its hard limit; returns the soft limit
/// before and after, and the hard limit. Children inherit the new limit.
#[allow(
    unsafe_code,
    reason = "std has no setrlimit; both calls get a pointer to a local, initialized rlimit"
)]
fn raise_open_files_limit() -> anyhow::Result<(u64, u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid `rlimit` for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            let error = std::io::Error::last_os_error();
            eprintln!("bench: cannot raise the open-file limit to {}: {error}", limit.rlim_max);
        }
    }
    Ok((before, limit.rlim_cur, limit.rlim_max))
}

/// `cargo build --release --locked -p PACKAGE`; returns the path of its binary of the same
/// name.
fn build_release(root: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: building {package} (release)");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--locked", "-p", package])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release --locked -p {package} failed ({status})");
    }
    let binary = target_dir(root)?.join("release").join(package);
    if !binary.is_file() {
        bail!("{} is missing after the build", binary.display());
    }
    Ok(binary)
}

/// The workspace's target directory, from `cargo metadata`.
fn target_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Builds `router`, `retry` and `fault` for wasm32-wasip1 (into `target/filters`); returns
/// the directory holding the `.wasm` files.
fn build_filters(root: &Path) -> anyhow::Result<PathBuf> {
    let target = root.join("target").join("filters");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: building filters router, retry, fault (wasm32-wasip1, release)");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip1"])
        .args(["-p", "router", "-p", "retry", "-p", "fault"])
        .current_dir(root.join("filters"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .context("running cargo build for the filters")?;
    if !status.success() {
        bail!(
            "building the filters failed ({status}): cd filters && CARGO_TARGET_DIR=../target/filters \
             cargo build --release --locked --target wasm32-wasip1 -p router -p retry -p fault"
        );
    }
    Ok(target.join("wasm32-wasip1").join("release"))
}

/// Waits out other processes' CPU use before a measurement, within a time budget.
struct Quiet {
    clk_tck: u64,
    /// Time left for waiting and repeating; none with `--keep-disturbed`.
    patience: Duration,
}

impl Quiet {
    /// Waits, in 1 s probes, until other processes use at most [`FOREIGN_LIMIT`] of a CPU or
    /// the patience is spent.
    async fn wait(&mut self, what: &str) -> anyhow::Result<()> {
        let mut announced = false;
        while !self.patience.is_zero() {
            let probe = ForeignProbe::start()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let foreign = probe.finish(self.clk_tck)?;
            if foreign <= FOREIGN_LIMIT {
                return Ok(());
            }
            if !announced {
                eprintln!("bench:   {what}: other processes use {foreign:.0}% of a CPU; waiting for quiet");
                announced = true;
            }
            self.patience = self.patience.saturating_sub(Duration::from_secs(1));
        }
        Ok(())
    }

    /// Whether a measurement during which other processes used `foreign` percent of a CPU
    /// should be repeated (spending `took` of the patience).
    fn repeat(&mut self, foreign: f64, attempt: u32, took: Duration) -> bool {
        if foreign <= FOREIGN_LIMIT || attempt >= FOREIGN_RETRIES || self.patience.is_zero() {
            return false;
        }
        self.patience = self.patience.saturating_sub(took);
        true
    }
}

/// One measured push round.
#[derive(Debug, Clone)]
struct Round {
    /// What was edited.
    edit: String,
    /// From the write to the last ACK handed to a stream.
    push: Duration,
    /// From the write to the first and the last response received.
    first_received: Duration,
    last_received: Duration,
    /// The controller log's view.
    stages: Stages,
    /// The Status API's view right after.
    status: StatusCheck,
    /// Bytes pushed (encoded responses), all streams.
    bytes: u64,
    /// Streams that got more than one response in the round.
    extra_pushes: usize,
    /// CPU of the controller and of the simulated sidecars, from the write to the last ACK.
    controller_cpu: CpuTicks,
    sidecars_cpu: CpuTicks,
    /// Converting and validating snapshots in the simulated sidecars, summed over streams.
    validate: Duration,
    /// Other processes' CPU during the round, percent of one CPU.
    foreign: f64,
}

/// Everything the push test measured.
#[derive(Debug)]
struct PushOutcome {
    services: usize,
    streams: usize,
    connections: usize,
    /// The `took=` of the first compile, at start.
    startup_took: Option<Duration>,
    /// From opening the first stream to every stream having ACKed its first snapshot.
    initial_sync: Duration,
    /// The Status API after the initial sync.
    initial_status: StatusCheck,
    /// Median encoded snapshot size.
    snapshot_bytes: usize,
    rounds: Vec<Round>,
    /// Rounds repeated because other processes disturbed them.
    reruns: u32,
    /// Memory: idle after start, with every stream synced, after the rounds.
    memory: [Memory; 3],
    /// Controller threads with every stream connected.
    threads: u64,
}

/// The push test: S services × 10 workloads, one stream each, VirtualService edits.
async fn push(options: &Options, setup: &Setup, quiet: &mut Quiet) -> anyhow::Result<PushOutcome> {
    let dir = setup.dir.join("push");
    let mut intent = Intent::create(&dir.join("intent"), options.services, WORKLOADS_PER_SERVICE, 1)?;
    let nodes = intent.workloads();
    eprintln!(
        "bench: push test: {} services, {} workloads; starting weft-controller",
        options.services,
        nodes.len()
    );
    let mut controller = ControllerProcess::start(setup, &dir, &intent.dir, Duration::from_secs(120))?;
    controller.check_diagnostics().await?;
    let startup_took = first_took(&controller.log_since(0)?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = controller.memory()?;

    let fleet = Arc::new(Fleet::new(nodes.len()));
    let opened = Instant::now();
    let connections = open_streams(&fleet, controller.grpc, &nodes, options.connections).await?;
    let before = vec![Seen::default(); nodes.len()];
    fleet
        .wait_acked(&before, Duration::from_secs(300))
        .await
        .context("waiting for every stream's first snapshot")?;
    let initial_sync = opened.elapsed();
    let mut status = controller.status_client().await?;
    let initial_status = confirm_status(&mut status, &fleet, &nodes, true, Duration::from_secs(10)).await?;
    if !initial_status.all() {
        bail!(
            "after the initial sync the Status API lists {} of {} sidecars SYNCED for their own workload",
            initial_status.synced,
            initial_status.expected
        );
    }
    let sizes: Vec<f64> = fleet.snapshot().iter().map(|s| s.bytes as f64).collect();
    let snapshot_bytes = median(&sizes) as usize;
    eprintln!(
        "bench: {} streams over {connections} connection(s) synced in {:.2} s (snapshot ≈ {} bytes)",
        nodes.len(),
        initial_sync.as_secs_f64(),
        thousands(snapshot_bytes as f64)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = controller.memory()?;
    let threads = controller.threads();

    let mut rounds = Vec::new();
    let mut reruns = 0;
    let mut edit_index = 0;
    for round in 0..options.rounds {
        let mut attempt = 0;
        loop {
            quiet.wait(&format!("round {}", round + 1)).await?;
            controller.check()?;
            let measured = push_round(
                &mut controller,
                &mut intent,
                edit_index,
                &fleet,
                &nodes,
                &mut status,
                setup.clk_tck,
            )
            .await?;
            edit_index += 1;
            eprintln!(
                "bench:   round {}: {} → all {} ACKs in {:.0} ms (poll {} ms, compile {} ms, first push {:.0} ms, \
                 last push {:.0} ms); status {}/{} SYNCED; other load {:.0}%",
                round + 1,
                measured.edit,
                nodes.len(),
                ms(measured.push),
                opt_ms(measured.stages.changed),
                opt_ms(measured.stages.took),
                ms(measured.first_received),
                ms(measured.last_received),
                measured.status.synced,
                measured.status.expected,
                measured.foreign
            );
            if quiet.repeat(measured.foreign, attempt, measured.push + Duration::from_secs(2)) {
                attempt += 1;
                reruns += 1;
                eprintln!("bench:   other processes used the CPUs during the round; measuring again");
                continue;
            }
            rounds.push(measured);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = controller.memory()?;
    controller.check()?;
    Ok(PushOutcome {
        services: options.services,
        streams: nodes.len(),
        connections,
        startup_took,
        initial_sync,
        initial_status,
        snapshot_bytes,
        rounds,
        reruns,
        memory: [idle, connected, after],
        threads,
    })
}

/// One round: edit, wait for every ACK, read the log, ask the Status API.
async fn push_round(
    controller: &mut ControllerProcess,
    intent: &mut Intent,
    edit_index: usize,
    fleet: &Fleet,
    nodes: &[WorkloadNode],
    status: &mut pb::status_client::StatusClient<Channel>,
    clk_tck: u64,
) -> anyhow::Result<Round> {
    let before = fleet.snapshot();
    let offset = controller.log_len();
    let cpu_before = controller.cpu()?;
    let own_before = procs::tree_cpu_ticks(std::process::id())?;
    let probe = ForeignProbe::start()?;
    let written_at = SystemTime::now();
    let written = Instant::now();
    let edit = intent.edit(edit_index)?;
    fleet
        .wait_acked(&before, Duration::from_secs(60))
        .await
        .with_context(|| format!("waiting for the push of {edit}"))?;
    let done = Instant::now();
    let controller_cpu = controller.cpu()?.since(cpu_before);
    let sidecars_cpu = procs::tree_cpu_ticks(std::process::id())?
        .since(own_before)
        .since(controller_cpu);
    let foreign = probe.finish(clk_tck)?;
    let after = fleet.snapshot();
    let since = |at: Option<Instant>| at.map_or(Duration::ZERO, |at| at.saturating_duration_since(written));
    let received: Vec<Duration> = after.iter().map(|s| since(s.received)).collect();
    let push = after
        .iter()
        .map(|s| since(s.acked))
        .max()
        .unwrap_or_default()
        .min(done - written);
    let status_check = confirm_status(status, fleet, nodes, false, Duration::from_secs(10)).await?;
    // Let the controller finish logging the last ACKs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stages = stages(&controller.log_since(offset)?, written_at);
    Ok(Round {
        edit,
        push,
        first_received: received.iter().copied().min().unwrap_or_default(),
        last_received: received.iter().copied().max().unwrap_or_default(),
        stages,
        status: status_check,
        bytes: after.iter().map(|s| s.bytes as u64).sum(),
        extra_pushes: after
            .iter()
            .zip(&before)
            .filter(|(a, b)| a.responses > b.responses + 1)
            .count(),
        controller_cpu,
        sidecars_cpu,
        validate: after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.validate.saturating_sub(b.validate))
            .sum(),
        foreign,
    })
}

/// One edit of the compile test.
#[derive(Debug, Clone)]
struct CompileEdit {
    stages: Stages,
    /// From the write to the one sidecar's ACK.
    acked: Duration,
}

/// Everything the compile test measured.
#[derive(Debug)]
struct CompileOutcome {
    services: usize,
    workloads: usize,
    files: usize,
    /// Bytes of YAML.
    intent_bytes: u64,
    /// From spawning the controller to its gRPC port accepting connections (includes the
    /// first compile).
    ready_after: Duration,
    /// The `took=` of the first compile.
    startup_took: Option<Duration>,
    /// From opening one stream to its first ACK.
    first_snapshot: Duration,
    /// The snapshot's encoded size.
    snapshot_bytes: usize,
    edits: Vec<CompileEdit>,
    reruns: u32,
    /// Memory idle after start, and after the edits.
    memory: [Memory; 2],
    foreign_max: f64,
}

/// The compile test: a controller on `--compile-services` services, one sidecar, a few
/// VirtualService edits.
async fn compile_scale(options: &Options, setup: &Setup, quiet: &mut Quiet) -> anyhow::Result<CompileOutcome> {
    let dir = setup.dir.join("compile");
    let services = options.compile_services;
    eprintln!("bench: compile test: writing {services} services × {COMPILE_WORKLOADS_PER_SERVICE} workloads");
    let mut intent = Intent::create(
        &dir.join("intent"),
        services,
        COMPILE_WORKLOADS_PER_SERVICE,
        COMPILE_SERVICES_PER_FILE,
    )?;
    let intent_bytes = dir_size(&intent.dir);
    let files = 2 * services.div_ceil(COMPILE_SERVICES_PER_FILE);
    quiet.wait("compile test start").await?;
    let probe = ForeignProbe::start()?;
    let mut controller = ControllerProcess::start(setup, &dir, &intent.dir, Duration::from_secs(600))?;
    let mut foreign_max = probe.finish(setup.clk_tck)?;
    controller.check_diagnostics().await?;
    let startup_took = first_took(&controller.log_since(0)?);
    eprintln!(
        "bench:   started in {:.2} s, first compile took {} ms",
        controller.ready_after.as_secs_f64(),
        opt_ms(startup_took)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = controller.memory()?;

    let node = intent.workload(0, 0);
    let nodes = [node];
    let fleet = Arc::new(Fleet::new(1));
    let opened = Instant::now();
    open_streams(&fleet, controller.grpc, &nodes, None).await?;
    fleet
        .wait_acked(&[Seen::default()], Duration::from_secs(120))
        .await
        .context("waiting for the sidecar's first snapshot")?;
    let first_snapshot = opened.elapsed();
    let snapshot_bytes = fleet.lock(0).bytes;

    let mut edits = Vec::new();
    let mut reruns = 0;
    let mut edit_index = 0;
    for edit in 0..options.compile_edits {
        let mut attempt = 0;
        loop {
            quiet.wait(&format!("compile edit {}", edit + 1)).await?;
            controller.check()?;
            let before = fleet.snapshot();
            let offset = controller.log_len();
            let probe = ForeignProbe::start()?;
            let written_at = SystemTime::now();
            let written = Instant::now();
            let what = intent.edit(edit_index)?;
            edit_index += 1;
            fleet
                .wait_acked(&before, Duration::from_secs(120))
                .await
                .with_context(|| format!("waiting for the push of {what}"))?;
            let acked = written.elapsed();
            let foreign = probe.finish(setup.clk_tck)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let stages = stages(&controller.log_since(offset)?, written_at);
            eprintln!(
                "bench:   edit {}: {what}: compiled after {} ms (took {} ms), sidecar ACK after {:.0} ms; other load {foreign:.0}%",
                edit + 1,
                opt_ms(stages.compiled),
                opt_ms(stages.took),
                ms(acked)
            );
            if quiet.repeat(foreign, attempt, acked + Duration::from_secs(2)) {
                attempt += 1;
                reruns += 1;
                continue;
            }
            foreign_max = foreign_max.max(foreign);
            edits.push(CompileEdit { stages, acked });
            break;
        }
    }
    let after = controller.memory()?;
    Ok(CompileOutcome {
        services,
        workloads: services * COMPILE_WORKLOADS_PER_SERVICE,
        files,
        intent_bytes,
        ready_after: controller.ready_after,
        startup_took,
        first_snapshot,
        snapshot_bytes,
        edits,
        reruns,
        memory: [idle, after],
        foreign_max,
    })
}

/// Total size of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// One criterion estimate, in nanoseconds: the one criterion prints (the slope of the
/// linear regression when it sampled linearly, else the mean) with its 95% confidence
/// interval.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    point: f64,
    lower: f64,
    upper: f64,
}

/// The criterion benchmark's results.
#[derive(Debug)]
struct CriterionOutcome {
    /// `(benchmark id, estimate)`, in the benchmark's order.
    rows: Vec<(String, Estimate)>,
}

/// The criterion benchmarks of `controller/benches/compile.rs`.
const CRITERION_IDS: [&str; 3] = ["compile/10k_services", "snapshot_for/warm", "snapshot_for/cold"];

/// Runs `cargo bench -p weft-controller --bench compile` (on every CPU: the build is the
/// slow part, the benchmark itself is one thread) and reads its estimates.
fn criterion(root: &Path, nproc: usize) -> anyhow::Result<CriterionOutcome> {
    let bench = root.join("controller").join("benches").join("compile.rs");
    if !bench.is_file() {
        bail!("{} is missing; pass --no-criterion", bench.display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = SystemTime::now();
    eprintln!("bench: cargo bench -p weft-controller --bench compile");
    let mut command = match taskset() {
        Some(taskset) => {
            let mut command = Command::new(taskset);
            command
                .args(["-c", &format!("0-{}", nproc.saturating_sub(1))])
                .arg(&cargo);
            command
        }
        None => Command::new(&cargo),
    };
    let status = command
        .args(["bench", "--locked", "-p", "weft-controller", "--bench", "compile"])
        .current_dir(root)
        .stdout(std::io::stderr())
        .status()
        .context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench -p weft-controller --bench compile failed ({status})");
    }
    let dir = target_dir(root)?.join("criterion");
    let mut rows = Vec::new();
    for id in CRITERION_IDS {
        let path = dir.join(id).join("new").join("estimates.json");
        let fresh = fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified >= started);
        if !fresh {
            eprintln!("bench: no fresh criterion estimate for {id} at {}", path.display());
            continue;
        }
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let number = |pointer: &str| {
            json.pointer(pointer)
                .and_then(serde_json::Value::as_f64)
                .with_context(|| format!("{} has no {pointer}", path.display()))
        };
        let statistic = if json
            .pointer("/slope/point_estimate")
            .is_some_and(serde_json::Value::is_f64)
        {
            "slope"
        } else {
            "mean"
        };
        rows.push((
            id.to_owned(),
            Estimate {
                point: number(&format!("/{statistic}/point_estimate"))?,
                lower: number(&format!("/{statistic}/confidence_interval/lower_bound"))?,
                upper: number(&format!("/{statistic}/confidence_interval/upper_bound"))?,
            },
        ));
    }
    Ok(CriterionOutcome { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options() -> anyhow::Result<()> {
        let default = Options::parse(&[], "cargo xtask bench controller")?;
        assert_eq!((default.services, default.rounds, default.streams()), (100, 5, 1_000));
        assert_eq!(
            (default.compile_services, default.criterion, default.connections),
            (10_000, true, None)
        );
        let quick = Options::parse(&args(&["--quick"]), "x")?;
        assert_eq!((quick.streams(), quick.rounds, quick.criterion), (100, 2, false));
        let explicit = Options::parse(&args(&["--services=20", "--connections", "4", "--no-pin"]), "x")?;
        assert_eq!(
            (explicit.services, explicit.connections, explicit.pin),
            (20, Some(4), false)
        );
        assert_eq!(explicit.command, "x --services=20 --connections 4 --no-pin");
        assert!(Options::parse(&args(&["--services", "0"]), "x").is_err());
        assert!(Options::parse(&args(&["--rounds", "many"]), "x").is_err());
        assert!(Options::parse(&args(&["--bogus"]), "x").is_err());
        Ok(())
    }

    #[test]
    fn suite_selection() {
        assert_eq!(
            suite_args(&args(&["--suite", "controller", "--quick"])),
            Some(args(&["--quick"]))
        );
        assert_eq!(suite_args(&args(&["--suite=controller"])), Some(Vec::new()));
        assert_eq!(suite_args(&args(&["--suite", "wasm"])), None);
        assert_eq!(suite_args(&[]), None);
    }
}
