//! `cargo xtask bench proxy`: weft-proxy against nginx, HAProxy and no proxy at all.
//!
//! One run builds `weft-proxy` in release, makes sure nginx, HAProxy, wrk and h2load are
//! installed, and starts, each pinned to CPU 1 and listening on 127.0.0.1 only:
//!
//! - the origin, an nginx with one worker answering `200 hello\n` itself;
//! - weft-proxy with one worker, nginx with one worker and HAProxy with one thread, each
//!   forwarding everything to the origin over keep-alive connections.
//!
//! Then, for several rounds with the target order rotated each round, it measures each
//! target (`direct` is wrk straight at the origin) with load generators pinned to CPU 0:
//!
//! - throughput: `wrk -t1 -c50 -dSECS`, and the CPU time the proxy's processes used during
//!   it (`utime + stime` from `/proc/PID/stat`) divided by the requests completed;
//! - latency at a fixed 1,000 req/s (10 connections × 100 req/s): the open-loop client in
//!   [`latency`], with `h2load --rps` as a cross-check;
//! - memory: `VmRSS` (and `VmHWM`) after the load.
//!
//! The results go to stdout as a markdown table and into `docs/benchmarks.md` between
//! `<!-- bench:proxy:start -->` and `<!-- bench:proxy:end -->`. Every child process is
//! stopped when the run ends, on success, on error and on panic.
//!
//! `--suite wasm` and `--suite filters` measure weft-proxy with filter chains instead (the
//! Wasm host's and the first-party filters' costs), and `--suite mtls` a client sidecar →
//! server sidecar pair with and without mesh mutual TLS, each into its own section: see
//! [`suites`].
//!
//! `cargo xtask bench controller` (also `bench proxy --suite controller`) measures the
//! control plane instead: config push to 1,000 simulated sidecars, compile time at 10,000
//! services and the controller's memory, into the `bench:controller` section: see
//! [`controller`].

mod configs;
mod controller;
mod http;
mod latency;
mod load;
mod procs;
mod report;
mod suites;
pub(crate) mod tools;

use std::cell::Cell;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use self::procs::{ChildGuard, CpuTicks, Supervisor};
use self::suites::Suite;
use self::tools::Tools;

/// Usage of `bench`.
const USAGE: &str = "usage: cargo xtask bench proxy [--suite proxy|wasm|filters|mtls|controller] [--duration SECS] [--rounds N] [--quick] [--no-docs] [--keep-disturbed]
       cargo xtask bench controller [--services N] [--rounds N] [--connections N] [--compile-services N] [--no-criterion] [--no-pin] [--quick] [--no-docs] [--keep-disturbed]";

/// The CPU the proxies and the origin run on.
const SERVER_CPU: &str = "1";

/// `xtask bench …`.
pub(crate) fn main(args: &[String]) -> anyhow::Result<()> {
    match args.split_first() {
        Some((what, rest)) if what == "proxy" && controller::suite_args(rest).is_some() => {
            controller::main_as_suite(rest)
        }
        Some((what, rest)) if what == "proxy" => proxy(&Options::parse(rest)?),
        Some((what, rest)) if what == "controller" => controller::main(rest),
        // Internal: the latency client, started by `proxy` under `taskset`.
        Some((what, rest)) if what == "latency-client" => latency::client_main(rest),
        // Internal: the mTLS handshake client of `--suite mtls`, started the same way.
        Some((what, rest)) if what == "handshake-client" => suites::handshake_client_main(rest),
        Some((what, _)) => bail!("unknown benchmark `{what}`\n{USAGE}"),
        None => bail!("{USAGE}"),
    }
}

/// Options of `bench proxy`.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Length of each load run.
    pub(crate) duration: Duration,
    /// Rounds over all targets.
    pub(crate) rounds: u32,
    /// Whether `--quick` was given.
    pub(crate) quick: bool,
    /// Whether to write `docs/benchmarks.md`.
    pub(crate) write_docs: bool,
    /// Whether to write `docs/benchmarks.md` even when other processes disturbed the run.
    pub(crate) keep_disturbed: bool,
    /// What is measured: the proxies (default), or weft's filter chains.
    pub(crate) suite: Suite,
    /// The command line, for the report.
    pub(crate) command: String,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut duration = None;
        let mut rounds = None;
        let mut quick = false;
        let mut write_docs = true;
        let mut keep_disturbed = false;
        let mut suite = Suite::Proxy;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| iter.next().cloned())
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag {
                "--duration" => {
                    let secs: u64 = value()?.parse().context("--duration takes whole seconds")?;
                    if secs == 0 {
                        bail!("--duration must be at least 1");
                    }
                    duration = Some(Duration::from_secs(secs));
                }
                "--rounds" => {
                    let n: u32 = value()?.parse().context("--rounds takes a number")?;
                    if n == 0 {
                        bail!("--rounds must be at least 1");
                    }
                    rounds = Some(n);
                }
                "--quick" => quick = true,
                "--no-docs" => write_docs = false,
                "--keep-disturbed" => keep_disturbed = true,
                "--suite" => suite = Suite::parse(&value()?).with_context(|| USAGE.to_owned())?,
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown option {other:?}\n{USAGE}"),
            }
        }
        let (default_duration, default_rounds) = if quick { (3, 1) } else { suite.default_duration_rounds() };
        let mut command = String::from("cargo xtask bench proxy");
        for arg in args {
            command.push(' ');
            command.push_str(arg);
        }
        Ok(Self {
            duration: duration.unwrap_or(Duration::from_secs(default_duration)),
            rounds: rounds.unwrap_or(default_rounds),
            quick,
            write_docs,
            keep_disturbed,
            suite,
            command,
        })
    }
}

/// What is benchmarked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// wrk straight at the origin.
    Direct,
    /// weft-proxy.
    Weft,
    /// nginx as a reverse proxy.
    Nginx,
    /// HAProxy.
    Haproxy,
    /// weft-proxy with a filter chain (`--suite wasm` and `--suite filters`); the label names
    /// the chain.
    WeftWith(&'static str),
}

impl Target {
    /// All targets, in report order.
    pub(crate) const ALL: [Target; 4] = [Target::Direct, Target::Weft, Target::Nginx, Target::Haproxy];

    /// The name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Weft => "weft",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::WeftWith(label) => label,
        }
    }
}

/// Everything measured for one target, over all rounds.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// wrk's req/s, one per round.
    pub(crate) rps: Vec<f64>,
    /// Requests wrk completed, all rounds.
    pub(crate) requests: u64,
    /// CPU ticks of the proxy's processes during the wrk runs (the origin's for `direct`).
    pub(crate) ticks: CpuTicks,
    /// CPU ticks of the origin during the wrk runs.
    pub(crate) origin_ticks: CpuTicks,
    /// New connections the origin accepted during the wrk runs, when it can tell.
    pub(crate) origin_accepts: Option<u64>,
    /// Requests the origin served during the wrk runs, when it can tell.
    pub(crate) origin_requests: Option<u64>,
    /// wrk's errors (non-2xx and socket errors).
    pub(crate) wrk_errors: u64,
    /// Latency-client samples (ns), all rounds.
    pub(crate) latency_ns: Vec<u64>,
    /// Latency-client errors.
    pub(crate) latency_errors: u64,
    /// Latency-client requests sent more than one interval late.
    pub(crate) latency_late: u64,
    /// h2load samples (ns), all rounds.
    pub(crate) h2load_ns: Vec<u64>,
    /// h2load errors.
    pub(crate) h2load_errors: u64,
    /// Largest `VmRSS` after a round's load, in kB (summed over the process tree).
    pub(crate) rss_kb: u64,
    /// Largest `VmHWM` (peak RSS), in kB (summed over the process tree).
    pub(crate) hwm_kb: u64,
    /// Processes in the target's tree (nginx: master and worker).
    pub(crate) processes: usize,
    /// Threads of those processes.
    pub(crate) threads: u64,
    /// The most CPU other processes used during a kept measurement, in percent of one CPU.
    pub(crate) foreign_max: f64,
    /// Measurements repeated because other processes used CPU meanwhile.
    pub(crate) retries: u32,
}

/// A started target.
struct Running {
    target: Target,
    /// Where load is sent.
    addr: SocketAddr,
    /// The supervisor index of the process measured (the origin for `direct`).
    child: usize,
    /// Extra request headers (`Name: value`) every load generator sends to this target.
    headers: Vec<String>,
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Facts about the run, for the report.
pub(crate) struct Context {
    /// Options given.
    pub(crate) options: Options,
    /// UTC date and time the run started.
    pub(crate) date: String,
    /// `nproc`.
    pub(crate) nproc: usize,
    /// CPU model from /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// `uname -r`.
    pub(crate) kernel: String,
    /// 1-minute load average when the run started.
    pub(crate) loadavg_start: String,
    /// This process's scheduling priority (nice, and its autogroup's nice), which its
    /// children inherit.
    pub(crate) priority: String,
    /// Share of CPU time stolen by the hypervisor during the run, when known.
    pub(crate) steal_percent: Option<f64>,
    /// Git commit of the workspace.
    pub(crate) commit: String,
    /// Tool versions.
    pub(crate) versions: Vec<(String, String)>,
    /// `getconf CLK_TCK`.
    pub(crate) clk_tck: u64,
    /// Whether h2load could run at a fixed rate.
    pub(crate) h2load_rps: bool,
    /// Time left for waiting out and repeating measurements disturbed by other processes.
    pub(crate) patience: Cell<Duration>,
}

fn proxy(options: &Options) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_owned();
    let weft = build_weft(&root)?;
    let tools = tools::ensure()?;
    let clk_tck: u64 = tools::capture(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .context("reading `getconf CLK_TCK`")?;
    let nproc = thread::available_parallelism().map(usize::from).unwrap_or(1);
    if nproc < 2 {
        bail!(
            "the benchmark pins the load to CPU 0 and the servers to CPU 1: it needs 2 CPUs, this machine has {nproc}"
        );
    }
    let mut versions = vec![(
        "weft-proxy".to_owned(),
        first_line(&tools::capture(Command::new(&weft).arg("--version"))),
    )];
    versions.extend(tools.versions.iter().cloned());
    let cpu_start = cpu_times();
    let mut context = Context {
        options: options.clone(),
        date: tools::capture(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .trim()
            .to_owned(),
        nproc,
        cpu_model: cpu_model(),
        kernel: tools::capture(Command::new("uname").arg("-r")).trim().to_owned(),
        loadavg_start: fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned()),
        steal_percent: None,
        commit: git_commit(&root, &["proxy-core", "api", "Cargo.lock"]),
        versions,
        clk_tck,
        h2load_rps: tools.h2load_rps,
        priority: priority(),
        // Ten times the length of all the measurements' load runs; none with
        // --keep-disturbed, which takes measurements as they come.
        patience: Cell::new(if options.keep_disturbed {
            Duration::ZERO
        } else {
            options.duration * options.rounds * 10
        }),
    };
    if !tools.h2load_rps {
        eprintln!("bench: this h2load has no --rps; the h2load cross-check is skipped");
    }
    if options.suite != Suite::Proxy {
        return suites::run(&root, &tools, &weft, context, cpu_start);
    }

    let stats = run_targets(options, &tools, &weft, &context)?;
    context.steal_percent = steal_since(cpu_start);

    let markdown = report::render(&context, &stats);
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{markdown}").context("writing to stdout")?;
    }
    if options.write_docs {
        let docs = root.join("docs").join("benchmarks.md");
        let disturbed = stats.iter().any(|(_, s)| s.foreign_max > FOREIGN_LIMIT);
        if disturbed && !options.keep_disturbed {
            bail!(
                "other processes used the CPUs during the run (see \"other load\"), so {} was left as it was; \
                 rerun on a quiet machine, or pass --keep-disturbed to write these numbers anyway",
                docs.display()
            );
        }
        report::write_docs(&docs, &markdown)?;
        eprintln!("bench: results written to {}", docs.display());
    }
    Ok(())
}

/// `cargo build --release -p weft-proxy`; returns the binary's path.
fn build_weft(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: building weft-proxy (release)");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "weft-proxy"])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p weft-proxy failed ({status})");
    }
    let metadata = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !metadata.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&metadata.stderr));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).context("parsing cargo metadata")?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    let binary = Path::new(target_dir).join("release").join("weft-proxy");
    if !binary.is_file() {
        bail!("{} is missing after the build", binary.display());
    }
    Ok(binary)
}

/// Starts everything, runs the rounds, and returns each target's stats in [`Target::ALL`]
/// order. Every child is stopped before this returns, whatever happens.
fn run_targets(
    options: &Options,
    tools: &Tools,
    weft: &Path,
    context: &Context,
) -> anyhow::Result<Vec<(Target, Stats)>> {
    let dir = TempDir::new()?;
    let dir = dir.0.as_path();
    let mut children = Supervisor::default();
    let [origin_port, weft_port, admin_port, nginx_port, haproxy_port] = free_ports()?;
    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    // The origin.
    let stub_status = tools::capture(Command::new(&tools.nginx).arg("-V")).contains("http_stub_status_module");
    let origin_conf = write(
        dir,
        "origin.conf",
        &configs::nginx_origin(dir, origin_port, stub_status),
    )?;
    let origin = children.adopt(ChildGuard::spawn(
        "origin nginx",
        nginx_command(tools, dir, &origin_conf, "origin"),
        &dir.join("origin.log"),
    )?);
    let origin_addr = local(origin_port);
    wait_serving(&mut children, origin, origin_addr, "origin")?;
    let origin_pid = children.get(origin)?.pid();

    // weft-proxy.
    let weft_conf = write(dir, "weft.yaml", &configs::weft(weft_port, origin_port))?;
    let mut command = tools.pinned(SERVER_CPU, weft);
    command
        .arg("--config")
        .arg(&weft_conf)
        .args(["--workers", "1", "--admin"])
        .arg(local(admin_port).to_string())
        .env("WEFT_LOG", "warn");
    let weft_child = children.adopt(ChildGuard::spawn("weft-proxy", command, &dir.join("weft.log"))?);
    let child = children.get(weft_child)?;
    http::wait_ok(local(admin_port), "/ready", Duration::from_secs(15), || {
        child.check_running()
    })
    .context("waiting for weft-proxy's /ready")?;
    wait_serving(&mut children, weft_child, local(weft_port), "weft")?;

    // nginx as a proxy.
    let nginx_conf = write(dir, "nginx.conf", &configs::nginx_proxy(dir, nginx_port, origin_port))?;
    let nginx = children.adopt(ChildGuard::spawn(
        "nginx proxy",
        nginx_command(tools, dir, &nginx_conf, "nginx"),
        &dir.join("nginx.log"),
    )?);
    wait_serving(&mut children, nginx, local(nginx_port), "nginx")?;

    // HAProxy.
    let haproxy_conf = write(dir, "haproxy.cfg", &configs::haproxy(haproxy_port, origin_port))?;
    let mut command = tools.pinned(SERVER_CPU, &tools.haproxy);
    command.arg("-f").arg(&haproxy_conf).arg("-db");
    let haproxy = children.adopt(ChildGuard::spawn("haproxy", command, &dir.join("haproxy.log"))?);
    wait_serving(&mut children, haproxy, local(haproxy_port), "haproxy")?;

    let running = [
        Running {
            target: Target::Direct,
            addr: origin_addr,
            child: origin,
            headers: Vec::new(),
        },
        Running {
            target: Target::Weft,
            addr: local(weft_port),
            child: weft_child,
            headers: Vec::new(),
        },
        Running {
            target: Target::Nginx,
            addr: local(nginx_port),
            child: nginx,
            headers: Vec::new(),
        },
        Running {
            target: Target::Haproxy,
            addr: local(haproxy_port),
            child: haproxy,
            headers: Vec::new(),
        },
    ];
    let mut stats: Vec<(Target, Stats)> = Target::ALL.iter().map(|&t| (t, Stats::default())).collect();

    let warmup = options.duration.min(Duration::from_secs(2));
    for target in &running {
        eprintln!("bench: warming up {} ({}s)", target.target.name(), warmup.as_secs());
        load::wrk(tools, dir, target.addr, warmup, &target.headers)
            .with_context(|| format!("warming up {}", target.target.name()))?;
    }

    let stub = stub_status.then_some(origin_addr);
    for round in 0..options.rounds as usize {
        let mut order: Vec<usize> = (0..running.len()).collect();
        order.rotate_left(round % running.len());
        let names: Vec<&str> = order.iter().map(|&i| running[i].target.name()).collect();
        eprintln!("bench: round {}/{}: {}", round + 1, options.rounds, names.join(", "));
        for index in order {
            let target = &running[index];
            children.check_all()?;
            let pid = children.get(target.child)?.pid();
            measure(
                tools,
                dir,
                context,
                target,
                &[pid],
                origin_pid,
                stub,
                &mut stats[index].1,
            )
            .with_context(|| format!("measuring {}", target.target.name()))?;
            thread::sleep(Duration::from_millis(500));
        }
    }
    children.check_all()?;
    Ok(stats)
}

/// One round of one target: wrk with CPU accounting, then the latency runs, then memory.
/// `pids` are the processes measured (each with its descendants): the proxy, or the origin
/// for `direct`.
#[allow(clippy::too_many_arguments, reason = "the phases' inputs, passed through")]
fn measure(
    tools: &Tools,
    dir: &Path,
    context: &Context,
    target: &Running,
    pids: &[u32],
    origin_pid: u32,
    stub: Option<SocketAddr>,
    stats: &mut Stats,
) -> anyhow::Result<()> {
    measure_throughput(tools, dir, context, target, pids, origin_pid, stub, stats)?;
    measure_fixed_rate(tools, dir, context, target, stats, || Ok(()))?;
    if tools.h2load_rps {
        let name = target.target.name();
        let h2 = quietly(context, name, "h2load", stats, || {
            load::h2load(tools, dir, target.addr, context.options.duration, &target.headers)
        })?;
        stats.h2load_ns.extend(h2.samples_ns);
        stats.h2load_errors += h2.errors;
    }
    measure_memory(pids, stats)
}

/// The CPU ticks of `pids` and their descendants, summed.
fn cpu_ticks(pids: &[u32]) -> anyhow::Result<CpuTicks> {
    let mut total = CpuTicks::default();
    for &pid in pids {
        total.add(procs::tree_cpu_ticks(pid)?);
    }
    Ok(total)
}

/// The throughput phase of a round: `wrk` against the target, with the CPU `pids` and the
/// origin used meanwhile, and the origin's connection and request counts when `stub` (its
/// `stub_status`) is known.
#[allow(clippy::too_many_arguments, reason = "the phase's inputs, passed through")]
fn measure_throughput(
    tools: &Tools,
    dir: &Path,
    context: &Context,
    target: &Running,
    pids: &[u32],
    origin_pid: u32,
    stub: Option<SocketAddr>,
    stats: &mut Stats,
) -> anyhow::Result<()> {
    let duration = context.options.duration;
    let name = target.target.name();
    let clk = context.clk_tck;

    let (wrk, ticks, origin_ticks, origin) = quietly(context, name, "wrk", stats, || {
        let stub_before = stub.map(origin_counters).transpose()?;
        let ticks_before = cpu_ticks(pids)?;
        let origin_before = procs::tree_cpu_ticks(origin_pid)?;
        let wrk = load::wrk(tools, dir, target.addr, duration, &target.headers)?;
        let ticks = cpu_ticks(pids)?.since(ticks_before);
        let origin_ticks = procs::tree_cpu_ticks(origin_pid)?.since(origin_before);
        let origin = match (stub_before, stub) {
            (Some(before), Some(addr)) => {
                let after = origin_counters(addr)?;
                // The `after` read is itself one connection and one request.
                Some((
                    after.0.saturating_sub(before.0).saturating_sub(1),
                    after.1.saturating_sub(before.1).saturating_sub(1),
                ))
            }
            _ => None,
        };
        Ok((wrk, ticks, origin_ticks, origin))
    })?;
    if let Some((accepts, requests)) = origin {
        stats.origin_accepts = Some(stats.origin_accepts.unwrap_or(0) + accepts);
        stats.origin_requests = Some(stats.origin_requests.unwrap_or(0) + requests);
    }
    let us_per_request = |t: u64| t as f64 * 1e6 / clk as f64 / wrk.requests.max(1) as f64;
    eprintln!(
        "bench:   {name:8} {:>10.0} req/s  cpu {:>5.1} µs/req  origin cpu {:>5.1} µs/req  errors {}",
        wrk.rps,
        us_per_request(ticks.total()),
        us_per_request(origin_ticks.total()),
        wrk.errors
    );
    stats.rps.push(wrk.rps);
    stats.requests += wrk.requests;
    stats.ticks.add(ticks);
    stats.origin_ticks.add(origin_ticks);
    stats.wrk_errors += wrk.errors;
    Ok(())
}

/// What [`measure_fixed_rate`] observed around the kept latency run.
struct Observed<S> {
    /// Requests the latency client sent (answered or failed).
    requests: u64,
    /// `observe` right before the run.
    before: S,
    /// `observe` right after it.
    after: S,
}

/// The fixed-rate phase of a round: the open-loop latency client at 1,000 req/s against the
/// target, its samples added to `stats`. `observe` is called right before and right after
/// the run (of the kept attempt, when a disturbed run is repeated), for what a suite counts
/// during it: CPU time, the proxies' own counters.
fn measure_fixed_rate<S>(
    tools: &Tools,
    dir: &Path,
    context: &Context,
    target: &Running,
    stats: &mut Stats,
    mut observe: impl FnMut() -> anyhow::Result<S>,
) -> anyhow::Result<Observed<S>> {
    let name = target.target.name();
    let (latency, before, after) = quietly(context, name, "latency", stats, || {
        let before = observe()?;
        let latency = load::latency_client(tools, dir, target.addr, context.options.duration, &target.headers)?;
        let after = observe()?;
        Ok((latency, before, after))
    })?;
    let mut sorted = latency.samples_ns.clone();
    sorted.sort_unstable();
    let us = |p| latency::percentile(&sorted, p).map_or(f64::NAN, |ns| ns as f64 / 1e3);
    eprintln!(
        "bench:   {name:8} latency at 1,000 req/s: p50 {:.0} µs  p99 {:.0} µs  ({} samples, {} errors, {} late)",
        us(50.0),
        us(99.0),
        sorted.len(),
        latency.errors,
        latency.late
    );
    let requests = latency.samples_ns.len() as u64 + latency.errors;
    stats.latency_ns.extend(latency.samples_ns);
    stats.latency_errors += latency.errors;
    stats.latency_late += latency.late;
    Ok(Observed {
        requests,
        before,
        after,
    })
}

/// Memory and size of `pids`' process trees after a round's load (summed over `pids`).
fn measure_memory(pids: &[u32], stats: &mut Stats) -> anyhow::Result<()> {
    let (mut rss, mut hwm, mut processes, mut threads) = (0, 0, 0, 0);
    for &pid in pids {
        rss += procs::tree_status_kb(pid, "VmRSS")?;
        hwm += procs::tree_status_kb(pid, "VmHWM")?;
        let (p, t) = procs::tree_size(pid);
        processes += p;
        threads += t;
    }
    stats.rss_kb = stats.rss_kb.max(rss);
    stats.hwm_kb = stats.hwm_kb.max(hwm);
    (stats.processes, stats.threads) = (processes, threads);
    Ok(())
}

/// Other processes may use at most this much CPU (percent of one CPU) during a measurement
/// before it is repeated.
const FOREIGN_LIMIT: f64 = 10.0;
/// Repeats of a measurement disturbed by other processes; the last one is kept regardless.
const FOREIGN_RETRIES: u32 = 2;

/// Runs one measurement on a quiet machine as far as possible: first waits (in 1 s probes)
/// until other processes (someone's build) leave the CPUs alone, then repeats the
/// measurement when they used noticeable CPU during it. Waiting and repeating draw on the
/// run's [`Context::patience`]; once it is spent, measurements are kept as they come.
/// Records the disturbance of the kept measurement in `stats`.
fn quietly<T>(
    context: &Context,
    name: &str,
    phase: &str,
    stats: &mut Stats,
    mut run: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let clk_tck = context.clk_tck;
    let mut attempt = 0;
    loop {
        wait_for_quiet(context, name, phase)?;
        let started = Instant::now();
        let probe = procs::ForeignProbe::start()?;
        let value = run()?;
        let foreign = probe.finish(clk_tck)?;
        let patience = context.patience.get();
        if foreign <= FOREIGN_LIMIT || attempt == FOREIGN_RETRIES || patience.is_zero() {
            if foreign > FOREIGN_LIMIT {
                eprintln!("bench:   {name} {phase}: other processes used {foreign:.0}% of a CPU; kept anyway");
            }
            stats.foreign_max = stats.foreign_max.max(foreign);
            return Ok(value);
        }
        context.patience.set(patience.saturating_sub(started.elapsed()));
        attempt += 1;
        stats.retries += 1;
        eprintln!("bench:   {name} {phase}: other processes used {foreign:.0}% of a CPU; measuring again");
    }
}

/// Waits, in 1 s probes, until other processes use at most [`FOREIGN_LIMIT`] of a CPU or
/// the run's patience is spent.
fn wait_for_quiet(context: &Context, name: &str, phase: &str) -> anyhow::Result<()> {
    let mut announced = false;
    while !context.patience.get().is_zero() {
        let probe = procs::ForeignProbe::start()?;
        thread::sleep(Duration::from_secs(1));
        let foreign = probe.finish(context.clk_tck)?;
        if foreign <= FOREIGN_LIMIT {
            return Ok(());
        }
        if !announced {
            eprintln!("bench:   {name} {phase}: other processes use {foreign:.0}% of a CPU; waiting for quiet");
            announced = true;
        }
        context
            .patience
            .set(context.patience.get().saturating_sub(Duration::from_secs(1)));
    }
    Ok(())
}

/// `accepts` and `requests` from the origin's `stub_status`.
fn origin_counters(addr: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let response = http::get(addr, "/nginx_status").context("reading the origin's stub_status")?;
    let text = String::from_utf8_lossy(&response.body);
    // "Active connections: 1 \nserver accepts handled requests\n 10 10 20 \n…"
    let numbers: Vec<u64> = text
        .lines()
        .skip_while(|l| !l.contains("accepts handled requests"))
        .nth(1)
        .context("unexpected stub_status output")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected stub_status output {text:?}"))?;
    match numbers[..] {
        [accepts, _handled, requests] => Ok((accepts, requests)),
        _ => bail!("unexpected stub_status output {text:?}"),
    }
}

/// Waits until `addr` serves the origin's body, failing early when the process died.
fn wait_serving(children: &mut Supervisor, index: usize, addr: SocketAddr, name: &str) -> anyhow::Result<()> {
    let child = children.get(index)?;
    http::wait_ok(addr, "/", Duration::from_secs(15), || child.check_running())
        .with_context(|| format!("waiting for {name} on {addr}"))?;
    let response = http::get(addr, "/").with_context(|| format!("checking {name}'s answer"))?;
    if response.body != configs::BODY.as_bytes() {
        bail!(
            "{name} answered {:?}, not {:?}",
            String::from_utf8_lossy(&response.body),
            configs::BODY
        );
    }
    Ok(())
}

/// nginx in the foreground with `conf`, its prefix and startup log in `dir`.
fn nginx_command(tools: &Tools, dir: &Path, conf: &Path, name: &str) -> Command {
    let mut command = tools.pinned(SERVER_CPU, &tools.nginx);
    command
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join(format!("{name}-startup.log")))
        .arg("-c")
        .arg(conf)
        .args(["-g", "daemon off;"]);
    command
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Free TCP ports on 127.0.0.1 (all held at once so they differ, then released).
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().context("reading a bound port")?.port();
    }
    Ok(ports)
}

/// The share of all CPU time the hypervisor stole since `start` (an earlier [`cpu_times`]),
/// in percent; `None` when unknown.
fn steal_since(start: Option<Vec<u64>>) -> Option<f64> {
    let (start, end) = (start?, cpu_times()?);
    let total: u64 = end.iter().zip(&start).map(|(e, s)| e.saturating_sub(*s)).sum();
    let steal = end.get(7).zip(start.get(7)).map_or(0, |(e, s)| e.saturating_sub(*s));
    (total > 0).then(|| steal as f64 * 100.0 / total as f64)
}

/// The aggregate `cpu` line of /proc/stat (user, nice, system, idle, iowait, irq, softirq,
/// steal, …).
fn cpu_times() -> Option<Vec<u64>> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().skip(1).map(|v| v.parse().ok()).collect()
}

/// `nice N` of this process, plus `autogroup nice N` when its autogroup's differs from 0
/// (`echo -19 > /proc/self/autogroup` in a fresh session gives a run priority over other
/// sessions' processes).
fn priority() -> String {
    let nice = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = stat.get(stat.rfind(')')? + 1..)?.to_owned();
            // nice is field 19 of /proc/PID/stat, the 17th after the command name.
            rest.split_whitespace().nth(16).map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned());
    let autogroup = fs::read_to_string("/proc/self/autogroup")
        .ok()
        .and_then(|line| line.split_whitespace().last().map(str::to_owned))
        .filter(|nice| nice != "0");
    match autogroup {
        Some(group) => format!("nice {nice}, autogroup nice {group}"),
        None => format!("nice {nice}"),
    }
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Short commit of the workspace, `-dirty` when any of `sources` (paths under `root`, the
/// sources a benchmark measures) has local changes.
pub(crate) fn git_commit(root: &Path, sources: &[&str]) -> String {
    let commit = tools::capture(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["rev-parse", "--short", "HEAD"]),
    );
    let commit = commit.trim();
    if commit.is_empty() || commit.contains(' ') {
        return "unknown".to_owned();
    }
    let dirty = tools::capture(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["status", "--porcelain", "--"])
            .args(sources),
    );
    if dirty.trim().is_empty() {
        commit.to_owned()
    } else {
        format!("{commit}-dirty")
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::Options;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_and_quick() -> anyhow::Result<()> {
        let default = Options::parse(&[])?;
        assert_eq!((default.duration.as_secs(), default.rounds), (10, 3));
        let quick = Options::parse(&args(&["--quick"]))?;
        assert_eq!((quick.duration.as_secs(), quick.rounds), (3, 1));
        let explicit = Options::parse(&args(&["--quick", "--duration=5", "--rounds", "2"]))?;
        assert_eq!((explicit.duration.as_secs(), explicit.rounds), (5, 2));
        assert_eq!(
            explicit.command,
            "cargo xtask bench proxy --quick --duration=5 --rounds 2"
        );
        assert!(Options::parse(&args(&["--rounds", "0"])).is_err());
        assert!(Options::parse(&args(&["--bogus"])).is_err());
        Ok(())
    }

    #[test]
    fn suites() -> anyhow::Result<()> {
        use super::suites::Suite;
        assert_eq!(Options::parse(&[])?.suite, Suite::Proxy);
        let wasm = Options::parse(&args(&["--suite", "wasm"]))?;
        assert_eq!((wasm.suite, wasm.duration.as_secs(), wasm.rounds), (Suite::Wasm, 5, 2));
        let filters = Options::parse(&args(&["--suite=filters", "--quick"]))?;
        assert_eq!((filters.suite, filters.duration.as_secs()), (Suite::Filters, 3));
        assert_eq!(filters.command, "cargo xtask bench proxy --suite=filters --quick");
        let mtls = Options::parse(&args(&["--suite", "mtls"]))?;
        assert_eq!((mtls.suite, mtls.duration.as_secs(), mtls.rounds), (Suite::Mtls, 10, 3));
        assert!(Options::parse(&args(&["--suite", "bogus"])).is_err());
        Ok(())
    }
}
