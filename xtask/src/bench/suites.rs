//! `cargo xtask bench proxy --suite wasm|filters|mtls`: weft-proxy with filter chains, and
//! a mesh sidecar pair with mutual TLS.
//!
//! Same machinery as the default run (origin, pinning, rotated rounds, [`super::measure`]
//! for wrk + CPU, the latency client, h2load and RSS), with other targets:
//!
//! - `--suite wasm` (the Wasm host): `direct`, `weft` (no filter), `weft+native` (the native
//!   `headers` filter adding a response header), `weft+1 wasm` (`bench_rw`: one header read,
//!   one header write), `weft+3 wasm` (`bench_rw`, `bench_noop`, `bench_rw`), nginx and
//!   HAProxy; then, with the benchmark's load stopped, the idle RSS of weft on `--workers 2`
//!   with the 3-filter chain (and without filters) and the latency of a snapshot swap (see
//!   [`extras`]).
//! - `--suite filters` (the first-party filters): `weft`, weft with each of `router`, `retry`,
//!   `ratelimit`, `authz`, `jwt` (no token, and a valid RS256 token), `fault` and `telemetry`
//!   alone with a representative configuration, the chain `telemetry → authz → router`, and
//!   nginx.
//! - `--suite mtls` (mesh mTLS): `direct`, a client sidecar → server sidecar pair in
//!   plaintext and the same pair with STRICT mutual TLS, both with the `telemetry` filter,
//!   and an nginx → nginx pair for reference;
//!   vCPU per 1,000 req/s of the pair, added p99, handshakes per second and connection
//!   reuse (see [`mtls`]).
//!
//! The filters are built for wasm32-wasip1 in release first (`filters/`, into
//! `target/filters`), and each snapshot names them with their sha256. Before measuring, every
//! chain target is checked to really run its filters (each Wasm filter created its VM,
//! probes answered by the router, authz and jwt). Each suite writes its own section of
//! `docs/benchmarks.md`, between `<!-- bench:SUITE:start -->` and `<!-- bench:SUITE:end -->`.

mod extras;
mod mtls;
mod render;

pub(super) use mtls::handshake_client_main;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::procs::{ChildGuard, Supervisor};
use super::tools::{self, Tools};
use super::{Context, Running, SERVER_CPU, Stats, Target, TempDir, configs, http, load};

/// Which benchmark `bench proxy` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suite {
    /// weft vs nginx vs HAProxy (the default).
    Proxy,
    /// The Wasm host: no filter, a native filter, one and three Wasm filters.
    Wasm,
    /// The first-party filters, each alone and in a chain.
    Filters,
    /// Mesh mutual TLS: a sidecar pair with and without mTLS (see [`mtls`]).
    Mtls,
}

impl Suite {
    /// `--suite NAME`.
    pub(crate) fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "proxy" => Ok(Suite::Proxy),
            "wasm" => Ok(Suite::Wasm),
            "filters" => Ok(Suite::Filters),
            "mtls" => Ok(Suite::Mtls),
            other => bail!("unknown suite {other:?} (proxy, wasm, filters or mtls)"),
        }
    }

    /// `--duration` and `--rounds` when not given: the filter suites have two to three times
    /// the targets of the default run, so they measure shorter to stay within ~15 minutes;
    /// the mTLS suite has four targets, measured as long as the default run's.
    pub(crate) fn default_duration_rounds(self) -> (u64, u32) {
        match self {
            Suite::Proxy | Suite::Mtls => (10, 3),
            Suite::Wasm | Suite::Filters => (5, 2),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Suite::Proxy => "proxy",
            Suite::Wasm => "wasm",
            Suite::Filters => "filters",
            Suite::Mtls => "mtls",
        }
    }

    /// The filter crates the suite needs.
    fn crates(self) -> &'static [&'static str] {
        match self {
            Suite::Proxy => &[],
            Suite::Wasm => &["bench_rw", "bench_noop"],
            Suite::Filters => &["router", "retry", "ratelimit", "authz", "jwt", "fault", "telemetry"],
            Suite::Mtls => &["telemetry"],
        }
    }
}

/// Where a filter's code comes from.
#[derive(Debug, Clone)]
enum Code {
    /// A filter built into the proxy, by type name.
    Native(&'static str),
    /// A `.wasm` file and its sha256.
    Wasm { file: PathBuf, sha256: String },
}

/// One filter of a chain.
#[derive(Debug, Clone)]
struct Filter {
    name: &'static str,
    code: Code,
    config: Value,
}

impl Filter {
    /// The snapshot's entry for this filter.
    fn entry(&self) -> Value {
        let mut entry = json!({ "name": self.name });
        match &self.code {
            Code::Native(kind) => entry["native"] = json!(kind),
            Code::Wasm { file, sha256 } => {
                entry["wasm"] = json!({ "file": file.display().to_string(), "sha256": sha256 });
            }
        }
        if !self.config.is_null() {
            entry["config"] = self.config.clone();
        }
        entry
    }

    /// How the report names it: the module, and the filter's name when it differs.
    fn describe(&self) -> String {
        match &self.code {
            Code::Native(kind) => format!("native `{kind}`"),
            Code::Wasm { file, .. } => {
                let stem = file
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if stem == self.name {
                    format!("`{stem}`")
                } else {
                    format!("`{stem}` ({})", self.name)
                }
            }
        }
    }
}

/// A check that a chain target really runs its filters, made once before measuring.
#[derive(Debug, Clone)]
enum Probe {
    /// `GET path` with `headers` must answer `status`.
    Status {
        path: &'static str,
        headers: Vec<String>,
        status: u16,
    },
    /// The proxy's `/stats/prometheus` must have a line starting with this, above 0.
    Metric(String),
    /// The proxy's `/stats/prometheus` must have no line starting with this, or one at 0.
    MetricZero(String),
}

/// What a suite measures.
#[derive(Debug, Clone)]
enum Spec {
    /// Straight at the origin.
    Direct,
    /// weft-proxy without filters (the default run's snapshot).
    Weft,
    /// nginx as a reverse proxy.
    Nginx,
    /// HAProxy.
    Haproxy,
    /// weft-proxy with a filter chain.
    Chain {
        label: &'static str,
        filters: Vec<Filter>,
        /// Request headers the load generators send (`Name: value`).
        headers: Vec<String>,
        /// Checks that the filters run.
        probes: Vec<Probe>,
    },
}

impl Spec {
    fn target(&self) -> Target {
        match self {
            Spec::Direct => Target::Direct,
            Spec::Weft => Target::Weft,
            Spec::Nginx => Target::Nginx,
            Spec::Haproxy => Target::Haproxy,
            Spec::Chain { label, .. } => Target::WeftWith(label),
        }
    }

    fn filters(&self) -> &[Filter] {
        match self {
            Spec::Chain { filters, .. } => filters,
            _ => &[],
        }
    }
}

/// Everything a suite measured.
pub(crate) struct Outcome {
    /// Each target's stats, in the suite's order.
    stats: Vec<(Spec, Stats)>,
    /// `--suite wasm`'s idle RSS and swap measurements.
    extras: Option<extras::Extras>,
}

/// Runs `context.options.suite` and reports it. `cpu_start` is `/proc/stat`'s `cpu` line at
/// the start, for the steal figure.
pub(super) fn run(
    root: &Path,
    tools: &Tools,
    weft: &Path,
    mut context: Context,
    cpu_start: Option<Vec<u64>>,
) -> anyhow::Result<()> {
    let suite = context.options.suite;
    let built = build_filters(root, suite.crates())?;
    let wasm = |name: &str| wasm_code(&built, name);
    let (markdown, disturbed) = if suite == Suite::Mtls {
        let outcome = mtls::run(tools, weft, &context, &wasm)?;
        context.steal_percent = super::steal_since(cpu_start);
        (mtls::render(&context, &outcome), outcome.disturbed())
    } else {
        let specs = match suite {
            Suite::Proxy | Suite::Mtls => bail!("the {} suite is not a filter suite", suite.name()),
            Suite::Wasm => wasm_specs(&wasm)?,
            Suite::Filters => filters_specs(root, &wasm)?,
        };
        // Twice the length of all the measurements' load runs, for waiting out other
        // processes (none with --keep-disturbed, as in the default run).
        let runs = context.options.duration * context.options.rounds * specs.len() as u32 * 3;
        if !context.options.keep_disturbed {
            context.patience.set(runs * 2);
        }
        let outcome = run_specs(suite, specs, tools, weft, &context, &wasm)?;
        context.steal_percent = super::steal_since(cpu_start);
        let disturbed = outcome.stats.iter().any(|(_, s)| s.foreign_max > super::FOREIGN_LIMIT);
        (render::render(&context, &outcome), disturbed)
    };
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{markdown}").context("writing to stdout")?;
    }
    if context.options.write_docs {
        let docs = root.join("docs").join("benchmarks.md");
        if disturbed && !context.options.keep_disturbed {
            bail!(
                "other processes used the CPUs during the run (see \"other load\"), so {} was left as it was; \
                 rerun on a quiet machine, or pass --keep-disturbed to write these numbers anyway",
                docs.display()
            );
        }
        render::write_docs(&docs, suite, &markdown)?;
        eprintln!("bench: results written to {}", docs.display());
    }
    Ok(())
}

/// `cargo build --release --locked --target wasm32-wasip1 -p …` in `filters/`; returns the
/// directory holding the `.wasm` files.
fn build_filters(root: &Path, crates: &[&str]) -> anyhow::Result<PathBuf> {
    let target = root.join("target").join("filters");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: building filters {} (wasm32-wasip1, release)", crates.join(", "));
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip1"])
        .current_dir(root.join("filters"))
        .env("CARGO_TARGET_DIR", &target);
    for name in crates {
        command.args(["-p", name]);
    }
    let status = command.status().context("running cargo build for the filters")?;
    if !status.success() {
        bail!(
            "building the filters failed ({status}): cd filters && CARGO_TARGET_DIR=../target/filters \
             cargo build --release --locked --target wasm32-wasip1 -p {}",
            crates.join(" -p ")
        );
    }
    Ok(target.join("wasm32-wasip1").join("release"))
}

/// The built `<name>.wasm` and its sha256.
fn wasm_code(dir: &Path, name: &str) -> anyhow::Result<Code> {
    let file = dir.join(format!("{name}.wasm"));
    let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    Ok(Code::Wasm { file, sha256 })
}

/// The native `headers` filter adding one response header.
fn native_headers(name: &'static str, header: &str, value: &str) -> Filter {
    Filter {
        name,
        code: Code::Native("headers"),
        config: json!({ "response_headers_add": { header: value } }),
    }
}

/// `bench_rw`, `bench_noop`, `bench_rw`: the 3-filter chain of `--suite wasm`.
fn three_wasm(wasm: &dyn Fn(&str) -> anyhow::Result<Code>) -> anyhow::Result<Vec<Filter>> {
    let filter = |name, module: &str| -> anyhow::Result<Filter> {
        Ok(Filter {
            name,
            code: wasm(module)?,
            config: Value::Null,
        })
    };
    Ok(vec![
        filter("rw1", "bench_rw")?,
        filter("noop", "bench_noop")?,
        filter("rw2", "bench_rw")?,
    ])
}

/// The Wasm filters of `filters` must each have created a VM.
fn vm_probes(filters: &[Filter]) -> Vec<Probe> {
    filters
        .iter()
        .filter(|f| matches!(f.code, Code::Wasm { .. }))
        .map(|f| Probe::Metric(format!("weft_wasm_vms_created_total{{filter=\"{}\"}}", f.name)))
        .collect()
}

fn wasm_specs(wasm: &dyn Fn(&str) -> anyhow::Result<Code>) -> anyhow::Result<Vec<Spec>> {
    let native = vec![native_headers("headers", "x-weft-bench", "native")];
    let one = vec![Filter {
        name: "bench_rw",
        code: wasm("bench_rw")?,
        config: Value::Null,
    }];
    let three = three_wasm(wasm)?;
    Ok(vec![
        Spec::Direct,
        Spec::Weft,
        Spec::Chain {
            label: "weft+native",
            filters: native,
            headers: Vec::new(),
            probes: Vec::new(),
        },
        Spec::Chain {
            label: "weft+1 wasm",
            probes: vm_probes(&one),
            filters: one,
            headers: Vec::new(),
        },
        Spec::Chain {
            label: "weft+3 wasm",
            probes: vm_probes(&three),
            filters: three,
            headers: Vec::new(),
        },
        Spec::Nginx,
        Spec::Haproxy,
    ])
}

/// The issuer of the test tokens in `proxy-core/tests/all/keys/`.
const JWT_ISSUER: &str = "https://issuer.weft.test";

fn filters_specs(root: &Path, wasm: &dyn Fn(&str) -> anyhow::Result<Code>) -> anyhow::Result<Vec<Spec>> {
    let keys = root.join("proxy-core/tests/all/keys");
    let jwks = fs::read_to_string(keys.join("jwks.json")).context("reading the test JWKS")?;
    let token = fs::read_to_string(keys.join("rs256_alice.jwt")).context("reading the test RS256 token")?;
    let bearer = format!("Authorization: Bearer {}", token.trim());

    let filter = |name: &'static str, config: Value| -> anyhow::Result<Filter> {
        Ok(Filter {
            name,
            code: wasm(name)?,
            config,
        })
    };
    // The router knows the host the load generators send (`127.0.0.1:PORT`, port dropped):
    // a probe route first (so every request also evaluates a non-matching route), then
    // everything to the origin cluster through `weft.set_upstream`.
    let router = || {
        filter(
            "router",
            json!({ "virtual_hosts": [{
                "name": "bench",
                "hosts": ["127.0.0.1"],
                "routes": [
                    { "name": "probe", "match": [{ "uri": { "exact": "/weft-bench-probe" } }],
                      "direct_response": { "status": 204 } },
                    { "name": "all", "route": [{ "destination": { "cluster": "origin" } }] }
                ]
            }] }),
        )
    };
    let router_probe = Probe::Status {
        path: "/weft-bench-probe",
        headers: Vec::new(),
        status: 204,
    };
    let retry = || filter("retry", json!({}));
    // Never limits: a billion tokens, refilled every millisecond; one bucket for all.
    let ratelimit = || {
        filter(
            "ratelimit",
            json!({ "key": { "constant": "all" }, "max_tokens": 1_000_000_000u64,
                    "tokens_per_fill": 1_000_000_000u64, "fill_interval_ms": 1 }),
        )
    };
    let authz = || {
        filter(
            "authz",
            json!({ "policies": [{ "name": "allow-get-root", "action": "ALLOW",
                    "rules": [{ "to": [{ "operation": { "methods": ["GET"], "paths": ["/"] } }] }] }] }),
        )
    };
    let authz_probe = Probe::Status {
        path: "/not-allowed",
        headers: Vec::new(),
        status: 403,
    };
    let jwt = || {
        filter(
            "jwt",
            json!({ "rules": [{ "issuer": JWT_ISSUER, "audiences": ["weft-api"], "jwks": jwks }] }),
        )
    };
    let jwt_probe = Probe::Status {
        path: "/",
        headers: vec!["Authorization: Bearer not.a.token".to_owned()],
        status: 401,
    };
    let fault = || {
        filter(
            "fault",
            json!({ "delay": { "fixed_delay_ms": 1, "percentage": 0 },
                    "abort": { "http_status": 503, "percentage": 0 } }),
        )
    };
    let telemetry = || filter("telemetry", json!({ "reporter": "destination" }));
    let telemetry_probe = Probe::Metric("istio_requests_total{filter=\"telemetry\"".to_owned());

    let chain = |label, filters: Vec<Filter>, headers: Vec<String>, mut probes: Vec<Probe>| {
        let mut all = vm_probes(&filters);
        all.append(&mut probes);
        Spec::Chain {
            label,
            filters,
            headers,
            probes: all,
        }
    };
    let jwt_allowed = Probe::Metric("jwt_allowed_total{filter=\"jwt\"}".to_owned());
    Ok(vec![
        Spec::Weft,
        chain("weft+router", vec![router()?], Vec::new(), vec![router_probe]),
        chain("weft+retry", vec![retry()?], Vec::new(), Vec::new()),
        chain(
            "weft+ratelimit",
            vec![ratelimit()?],
            Vec::new(),
            vec![Probe::Metric(
                "ratelimit_allowed_total{filter=\"ratelimit\"}".to_owned(),
            )],
        ),
        chain("weft+authz", vec![authz()?], Vec::new(), vec![authz_probe.clone()]),
        chain("weft+jwt (no token)", vec![jwt()?], Vec::new(), vec![jwt_probe.clone()]),
        chain(
            "weft+jwt (RS256 token)",
            vec![jwt()?],
            vec![bearer],
            vec![jwt_probe, jwt_allowed],
        ),
        chain(
            "weft+fault",
            vec![fault()?],
            Vec::new(),
            vec![
                Probe::MetricZero("fault_aborts_injected_total{filter=\"fault\"}".to_owned()),
                Probe::MetricZero("fault_delays_injected_total{filter=\"fault\"}".to_owned()),
            ],
        ),
        chain(
            "weft+telemetry",
            vec![telemetry()?],
            Vec::new(),
            vec![telemetry_probe.clone()],
        ),
        chain(
            "weft+chain",
            vec![telemetry()?, authz()?, router()?],
            Vec::new(),
            // authz (before the router) denies the router's probe path: the router's VM
            // probe and `weft+router` alone show the router at work.
            vec![telemetry_probe, authz_probe],
        ),
        Spec::Nginx,
    ])
}

/// weft's snapshot of the default run (`configs::weft`) with `filters` on its listener.
fn weft_snapshot(port: u16, origin: u16, filters: &[Filter], version: &str) -> anyhow::Result<String> {
    let base = configs::weft(port, origin);
    let entries = Value::Array(filters.iter().map(Filter::entry).collect());
    let anchor = "route_table: rt }";
    if !base.contains(anchor) {
        bail!("configs::weft changed shape: no `{anchor}` to add filters to");
    }
    // JSON is YAML: the entries go in as a flow sequence.
    let with_filters = base.replacen(anchor, &format!("route_table: rt, filters: {entries} }}"), 1);
    Ok(with_filters.replacen("version: bench\n", &format!("version: {version}\n"), 1))
}

/// Free TCP ports on 127.0.0.1 (all held at once so they differ, then released).
fn free_port_list(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().context("reading a bound port")?.port()))
        .collect()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A started weft-proxy.
struct Weft {
    child: usize,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

/// Starts weft-proxy pinned to [`SERVER_CPU`] with `snapshot`, waits until it serves the
/// origin's body.
#[allow(clippy::too_many_arguments, reason = "one weft-proxy's settings, each distinct")]
fn start_weft(
    children: &mut Supervisor,
    tools: &Tools,
    weft: &Path,
    dir: &Path,
    name: &str,
    snapshot: &str,
    port: u16,
    admin_port: u16,
    workers: usize,
    log_level: &str,
) -> anyhow::Result<Weft> {
    let started = spawn_weft(
        children,
        tools,
        weft,
        dir,
        name,
        snapshot,
        port,
        admin_port,
        workers,
        log_level,
        &[],
    )?;
    super::wait_serving(children, started.child, started.addr, name)?;
    Ok(started)
}

/// Starts weft-proxy pinned to [`SERVER_CPU`] with `snapshot` (its listener on `port`) and
/// `args` added to its command line, and waits until its admin port says `/ready`.
#[allow(clippy::too_many_arguments, reason = "one weft-proxy's settings, each distinct")]
fn spawn_weft(
    children: &mut Supervisor,
    tools: &Tools,
    weft: &Path,
    dir: &Path,
    name: &str,
    snapshot: &str,
    port: u16,
    admin_port: u16,
    workers: usize,
    log_level: &str,
    args: &[std::ffi::OsString],
) -> anyhow::Result<Weft> {
    let config = super::write(dir, &format!("{name}.yaml"), snapshot)?;
    let log = dir.join(format!("{name}.log"));
    let admin = local(admin_port);
    let mut command = tools.pinned(SERVER_CPU, weft);
    command
        .arg("--config")
        .arg(&config)
        .args(["--workers", &workers.to_string(), "--admin"])
        .arg(admin.to_string())
        .args(args)
        .env("WEFT_LOG", log_level);
    let child = children.adopt(ChildGuard::spawn(&format!("weft-proxy ({name})"), command, &log)?);
    let guard = children.get(child)?;
    http::wait_ok(admin, "/ready", Duration::from_secs(30), || guard.check_running())
        .with_context(|| format!("waiting for weft-proxy ({name})'s /ready"))?;
    Ok(Weft {
        child,
        addr: local(port),
        admin,
        config,
        log,
    })
}

/// The value of the first `/stats/prometheus` line starting with `prefix`.
fn metric(admin: SocketAddr, prefix: &str) -> anyhow::Result<Option<f64>> {
    let response = http::get(admin, "/stats/prometheus").context("reading /stats/prometheus")?;
    let text = String::from_utf8_lossy(&response.body);
    Ok(text
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok()))
}

/// The sum of the values of the `/stats/prometheus` lines that start with `prefix` and
/// contain each of `parts`; 0 when there are none.
fn metric_sum(admin: SocketAddr, prefix: &str, parts: &[&str]) -> anyhow::Result<f64> {
    let response = http::get(admin, "/stats/prometheus").context("reading /stats/prometheus")?;
    let text = String::from_utf8_lossy(&response.body);
    Ok(text
        .lines()
        .filter(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.trim().parse::<f64>().ok()))
        .sum())
}

/// Runs `probes` against a started chain target (listening on `addr`, admin on `admin`).
fn check_probes(name: &str, addr: SocketAddr, admin: SocketAddr, probes: &[Probe]) -> anyhow::Result<()> {
    for probe in probes {
        match probe {
            Probe::Status { path, headers, status } => {
                let mut connection = http::Connection::open_with_headers(addr, path, headers, Duration::from_secs(2))?;
                connection.send()?;
                let response = connection.receive()?;
                if response.status != *status {
                    bail!(
                        "{name}: GET {path} answered {} where its filters answer {status}: are they running?",
                        response.status
                    );
                }
            }
            Probe::Metric(prefix) => {
                let value = metric(admin, prefix)?;
                if !value.is_some_and(|v| v > 0.0) {
                    bail!("{name}: `{prefix}` is {value:?} after the warm-up: is the filter running?");
                }
            }
            Probe::MetricZero(prefix) => {
                let value = metric(admin, prefix)?;
                if value.is_some_and(|v| v != 0.0) {
                    bail!("{name}: `{prefix}` is {value:?} after the warm-up: it should be 0");
                }
            }
        }
    }
    Ok(())
}

/// A started origin.
struct Origin {
    /// Its supervisor index.
    child: usize,
    addr: SocketAddr,
    pid: u32,
    /// Whether it serves `stub_status` (see [`configs::nginx_origin`]).
    stub_status: bool,
}

/// Starts the origin as in the default run (nginx, one worker, pinned to [`SERVER_CPU`])
/// on `port`, and waits until it serves its body.
fn start_origin(children: &mut Supervisor, tools: &Tools, dir: &Path, port: u16) -> anyhow::Result<Origin> {
    let stub_status = tools::capture(Command::new(&tools.nginx).arg("-V")).contains("http_stub_status_module");
    let conf = super::write(dir, "origin.conf", &configs::nginx_origin(dir, port, stub_status))?;
    let child = children.adopt(ChildGuard::spawn(
        "origin nginx",
        super::nginx_command(tools, dir, &conf, "origin"),
        &dir.join("origin.log"),
    )?);
    let addr = local(port);
    super::wait_serving(children, child, addr, "origin")?;
    Ok(Origin {
        child,
        addr,
        pid: children.get(child)?.pid(),
        stub_status,
    })
}

/// Starts the origin and every target of `specs`, runs the rounds, then the extras.
fn run_specs(
    suite: Suite,
    specs: Vec<Spec>,
    tools: &Tools,
    weft: &Path,
    context: &Context,
    wasm: &dyn Fn(&str) -> anyhow::Result<Code>,
) -> anyhow::Result<Outcome> {
    let options = &context.options;
    let temp = TempDir::new()?;
    let dir = temp.0.as_path();
    let mut children = Supervisor::default();
    // Origin, then a listener port and an admin port per target.
    let ports = free_port_list(1 + 2 * specs.len())?;
    let origin_port = ports[0];

    let Origin {
        child: origin,
        addr: origin_addr,
        pid: origin_pid,
        stub_status,
    } = start_origin(&mut children, tools, dir, origin_port)?;

    let mut running = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let (port, admin_port) = (ports[1 + 2 * index], ports[2 + 2 * index]);
        let (addr, child, headers) = match spec {
            Spec::Direct => (origin_addr, origin, Vec::new()),
            Spec::Weft | Spec::Chain { .. } => {
                let name = format!("weft-{index}");
                let snapshot = weft_snapshot(port, origin_port, spec.filters(), "bench")?;
                let started = start_weft(
                    &mut children,
                    tools,
                    weft,
                    dir,
                    &name,
                    &snapshot,
                    port,
                    admin_port,
                    1,
                    "warn",
                )
                .with_context(|| format!("starting {}", spec.target().name()))?;
                let headers = match spec {
                    Spec::Chain { headers, .. } => headers.clone(),
                    _ => Vec::new(),
                };
                (started.addr, started.child, headers)
            }
            Spec::Nginx => {
                let conf = super::write(dir, "nginx.conf", &configs::nginx_proxy(dir, port, origin_port))?;
                let nginx = children.adopt(ChildGuard::spawn(
                    "nginx proxy",
                    super::nginx_command(tools, dir, &conf, "nginx"),
                    &dir.join("nginx.log"),
                )?);
                super::wait_serving(&mut children, nginx, local(port), "nginx")?;
                (local(port), nginx, Vec::new())
            }
            Spec::Haproxy => {
                let conf = super::write(dir, "haproxy.cfg", &configs::haproxy(port, origin_port))?;
                let mut command = tools.pinned(SERVER_CPU, &tools.haproxy);
                command.arg("-f").arg(&conf).arg("-db");
                let haproxy = children.adopt(ChildGuard::spawn("haproxy", command, &dir.join("haproxy.log"))?);
                super::wait_serving(&mut children, haproxy, local(port), "haproxy")?;
                (local(port), haproxy, Vec::new())
            }
        };
        running.push((
            Running {
                target: spec.target(),
                addr,
                child,
                headers,
            },
            local(admin_port),
        ));
    }

    let warmup = options.duration.min(Duration::from_secs(2));
    for (target, _) in &running {
        eprintln!("bench: warming up {} ({}s)", target.target.name(), warmup.as_secs());
        load::wrk(tools, dir, target.addr, warmup, &target.headers)
            .with_context(|| format!("warming up {}", target.target.name()))?;
    }
    for ((target, admin), spec) in running.iter().zip(&specs) {
        if let Spec::Chain { probes, .. } = spec {
            check_probes(target.target.name(), target.addr, *admin, probes)?;
        }
    }

    let mut stats: Vec<Stats> = specs.iter().map(|_| Stats::default()).collect();
    let stub = stub_status.then_some(origin_addr);
    for round in 0..options.rounds as usize {
        let mut order: Vec<usize> = (0..running.len()).collect();
        order.rotate_left(round % running.len());
        let names: Vec<&str> = order.iter().map(|&i| running[i].0.target.name()).collect();
        eprintln!("bench: round {}/{}: {}", round + 1, options.rounds, names.join(", "));
        for index in order {
            let target = &running[index].0;
            children.check_all()?;
            let pid = children.get(target.child)?.pid();
            super::measure(tools, dir, context, target, &[pid], origin_pid, stub, &mut stats[index])
                .with_context(|| format!("measuring {}", target.target.name()))?;
            thread::sleep(Duration::from_millis(500));
        }
    }
    children.check_all()?;

    let extras = match suite {
        Suite::Wasm => {
            let ports = free_port_list(6)?;
            Some(extras::run(
                &mut children,
                tools,
                weft,
                dir,
                origin_port,
                &ports,
                &three_wasm(wasm)?,
            )?)
        }
        _ => None,
    };
    Ok(Outcome {
        stats: specs.into_iter().zip(stats).collect(),
        extras,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Code, Filter, Suite, weft_snapshot};

    #[test]
    fn suites_parse() -> anyhow::Result<()> {
        assert_eq!(Suite::parse("wasm")?, Suite::Wasm);
        assert_eq!(Suite::parse("filters")?, Suite::Filters);
        assert_eq!(Suite::parse("proxy")?, Suite::Proxy);
        assert_eq!(Suite::parse("mtls")?, Suite::Mtls);
        assert!(Suite::parse("bogus").is_err());
        assert_eq!(Suite::Wasm.default_duration_rounds(), (5, 2));
        Ok(())
    }

    #[test]
    fn snapshot_with_filters_is_valid() -> anyhow::Result<()> {
        let filters = [
            Filter {
                name: "h",
                code: Code::Native("headers"),
                config: json!({ "response_headers_add": { "x-a": "1" } }),
            },
            Filter {
                name: "w",
                code: Code::Wasm {
                    file: "/tmp/w.wasm".into(),
                    sha256: "ab".repeat(32),
                },
                config: json!({ "jwks": "{\"keys\": []}" }),
            },
        ];
        let yaml = weft_snapshot(8080, 8081, &filters, "v7")?;
        let parsed: serde_json::Value = serde_yaml_like(&yaml)?;
        assert_eq!(parsed["version"], "v7");
        let entries = &parsed["listeners"][0]["filters"];
        assert_eq!(entries[0]["native"], "headers");
        assert_eq!(entries[1]["wasm"]["sha256"], "ab".repeat(32));
        assert_eq!(entries[1]["config"]["jwks"], "{\"keys\": []}");
        Ok(())
    }

    /// The filter entries are JSON inside YAML: check them by pulling the JSON back out.
    fn serde_yaml_like(yaml: &str) -> anyhow::Result<serde_json::Value> {
        let version = yaml
            .lines()
            .find_map(|l| l.strip_prefix("version: "))
            .unwrap_or_default();
        let start = yaml
            .find("filters: ")
            .map(|i| i + "filters: ".len())
            .unwrap_or_default();
        let mut stream = serde_json::Deserializer::from_str(&yaml[start..]).into_iter::<serde_json::Value>();
        let filters = stream.next().transpose()?.unwrap_or_default();
        Ok(json!({ "version": version, "listeners": [{ "filters": filters }] }))
    }
}
