//! `cargo xtask bench proxy --suite mtls`: the mesh's mutual TLS, on a sidecar pair.
//!
//! Four targets in one run, measured in rotated rounds like the other suites:
//!
//! - `direct`: the load generators straight at the origin;
//! - `plaintext pair`: load → the client sidecar's outbound listener → the server sidecar's
//!   inbound listener → origin, with the `telemetry` filter on both sidecars (reporter
//!   `source` outbound on the client, `destination` inbound on the server);
//! - `mtls pair`: the same with a STRICT inbound listener (`mtls: { mode: strict }`) and
//!   `istio_mutual` origination on the client's cluster (the server's SPIFFE ID required);
//! - `nginx pair`, a reference: load → a client nginx → a server nginx → origin, plaintext
//!   HTTP/1.1 with keep-alive upstreams, no filter (see [`nginx_pair`]): the floor of a
//!   two-hop proxy pair on the machine.
//!
//! Each sidecar is its own weft-proxy `--workers 1` and each nginx of the nginx pair has one
//! worker; the four sidecars, the two nginx and the origin are pinned to the servers' CPU and
//! the load generators to the other, as in the other suites.
//! Every sidecar gets a workload certificate from a CA made for the run (see [`certs`]),
//! from files (`--cert-chain`, `--private-key`, `--trust-bundle`); the plaintext pair has
//! them too but its snapshots do not use them.
//!
//! Per target and round: wrk (throughput, and the CPU of both proxies of the pair during it),
//! then the open-loop latency client at 1,000 req/s with, around it, both proxies' CPU time
//! (vCPU per 1,000 req/s) and the counters of new client → server connections and of
//! requests over them (connection reuse): the client sidecar's, or for the nginx pair the
//! server nginx's `stub_status`. After each round's targets, the
//! handshake client (see [`handshake`]) measures full mTLS handshakes per second against the
//! mtls pair's server sidecar and that sidecar's CPU per handshake.
//!
//! Before measuring, each pair is checked with a probe request: the origin served it, the
//! telemetry filters on both sidecars counted it, and the mtls pair really spoke mutual TLS
//! (the server sidecar's `weft_listener_downstream_cx_mtls_total`, the client's
//! `weft_cluster_upstream_cx_tls_total`, the server's telemetry saw `mutual_tls` and the
//! client's SPIFFE ID; a plaintext request straight to its inbound listener is refused)
//! while the plaintext pair did not; the nginx pair's probe must reach the origin through
//! both nginx.

mod certs;
mod handshake;
mod nginx_pair;
mod render;

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

pub(crate) use self::handshake::client_main as handshake_client_main;
pub(super) use self::render::render;

use self::certs::{Ca, Identity, spiffe};
use self::handshake::HandshakeRun;
use super::super::procs::{CpuTicks, Supervisor};
use super::super::tools::Tools;
use super::super::{Context, FOREIGN_LIMIT, Running, Stats, Target, TempDir, configs, http, procs};
use super::{Code, Filter, Origin, Weft, free_port_list, metric_sum, spawn_weft, start_origin};

/// The client sidecar's service account.
const CLIENT_SA: &str = "client";
/// The server sidecar's service account.
const SERVER_SA: &str = "server";

/// How the sidecars of a pair talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// HTTP/1.1 in the clear; the server's inbound listener has no mTLS settings.
    Plaintext,
    /// Mesh mutual TLS: STRICT inbound, `istio_mutual` origination.
    Mtls,
}

/// A target of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The load generators straight at the origin.
    Direct,
    /// Through a client sidecar and a server sidecar.
    Pair(Security),
    /// The reference: through a client nginx and a server nginx (see [`nginx_pair`]).
    NginxPair,
}

impl Kind {
    /// All targets, in report order.
    const ALL: [Kind; 4] = [
        Kind::Direct,
        Kind::Pair(Security::Plaintext),
        Kind::Pair(Security::Mtls),
        Kind::NginxPair,
    ];

    /// The name in the report.
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Pair(Security::Plaintext) => "plaintext pair",
            Kind::Pair(Security::Mtls) => "mtls pair",
            Kind::NginxPair => "nginx pair",
        }
    }
}

/// A pair's counts during its fixed-rate runs, summed over the rounds.
#[derive(Debug, Default)]
struct FixedRate {
    /// Requests the latency client sent.
    requests: u64,
    /// CPU time of the client proxy (sidecar or nginx).
    client: CpuTicks,
    /// CPU time of the server proxy.
    server: CpuTicks,
    /// New connections of the client proxy to the server proxy (the client sidecar's
    /// `weft_cluster_upstream_cx_total`, the server nginx's `stub_status` accepts).
    connections: u64,
    /// Those with TLS (`weft_cluster_upstream_cx_tls_total`).
    tls_connections: u64,
    /// Requests of the client proxy to the server proxy (the client sidecar's
    /// `weft_cluster_upstream_rq_total`, every status class; the server nginx's `stub_status`
    /// requests).
    upstream_requests: u64,
}

/// Everything measured for one target.
struct TargetStats {
    kind: Kind,
    /// wrk, the latency client, memory: as in the other suites. `ticks` are both proxies'
    /// of the pair (the origin's for `direct`).
    stats: Stats,
    /// The pair's counts around the fixed-rate runs; zero for `direct`.
    fixed: FixedRate,
}

/// One handshake run.
struct Handshakes {
    /// What the client measured.
    client: HandshakeRun,
    /// Connections the server sidecar accepted with mutual TLS meanwhile
    /// (`weft_listener_downstream_cx_mtls_total`).
    accepted: u64,
    /// Connections it refused meanwhile (`weft_listener_downstream_cx_refused_total`).
    refused: u64,
    /// The server sidecar's CPU time meanwhile.
    server: CpuTicks,
}

/// Everything the suite measured.
pub(super) struct Outcome {
    /// Each target's numbers, in [`Kind::ALL`] order.
    targets: Vec<TargetStats>,
    /// One handshake run per round.
    handshakes: Vec<Handshakes>,
    /// Disturbance of the handshake runs (`foreign_max`, `retries`).
    handshake_load: Stats,
    /// What the checks before measuring found, per pair.
    checks: Vec<String>,
    /// The telemetry filter's module, for the report.
    telemetry: String,
    /// Whether the nginx pair's server nginx served `stub_status` (see [`nginx_pair`]).
    nginx_stub_status: bool,
}

impl Outcome {
    /// Whether other processes used the CPUs during a kept measurement.
    pub(super) fn disturbed(&self) -> bool {
        self.targets
            .iter()
            .map(|t| &t.stats)
            .chain([&self.handshake_load])
            .any(|s| s.foreign_max > FOREIGN_LIMIT)
    }
}

/// A started sidecar pair.
struct Pair {
    security: Security,
    /// The client sidecar; its `addr` is the outbound listener, where load goes.
    client: Weft,
    /// The server sidecar; its `addr` is the inbound listener.
    server: Weft,
}

/// A pair target's two proxies, as measured.
#[derive(Debug, Clone, Copy)]
struct Proxies {
    /// The client proxy's supervisor index (its process tree is measured).
    client: usize,
    /// The server proxy's.
    server: usize,
    /// Where its client → server connections and requests are counted.
    counters: Counters,
}

/// Where a pair's counts of client → server connections and requests come from.
#[derive(Debug, Clone, Copy)]
enum Counters {
    /// The client sidecar's admin endpoint (`weft_cluster_upstream_*{cluster="server"}`).
    Sidecar(SocketAddr),
    /// The server nginx's `stub_status` (accepts, requests).
    StubStatus(SocketAddr),
    /// Nowhere: this nginx has no `stub_status`.
    Unavailable,
}

/// Counters read right before and right after a pair's fixed-rate run.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    client: CpuTicks,
    server: CpuTicks,
    connections: f64,
    tls_connections: f64,
    upstream_requests: f64,
}

/// The client sidecar's cluster of the server sidecar.
const CLUSTER: &str = "server";

/// Runs the suite: starts the origin and the three pairs, checks them, runs the rounds.
pub(super) fn run(
    tools: &Tools,
    weft: &Path,
    context: &Context,
    wasm: &dyn Fn(&str) -> anyhow::Result<Code>,
) -> anyhow::Result<Outcome> {
    let options = &context.options;
    // Twice the length of all the measurements' load runs (two per target, one handshake
    // run, per round) for waiting out other processes; none with --keep-disturbed.
    if !options.keep_disturbed {
        let runs = options.duration * options.rounds * (2 * Kind::ALL.len() as u32 + 1);
        context.patience.set(runs * 2);
    }
    let temp = TempDir::new()?;
    let dir = temp.0.as_path();
    let mut children = Supervisor::default();
    // The origin, four per sidecar pair, two for the nginx pair.
    let ports = free_port_list(11)?;

    let ca = Ca::new("weft-bench mesh root").context("making the mesh CA")?;
    let client_id = ca.issue(dir, CLIENT_SA, 1)?;
    let server_id = ca.issue(dir, SERVER_SA, 2)?;
    let telemetry = wasm("telemetry")?;
    let telemetry_name = Filter {
        name: "telemetry",
        code: telemetry.clone(),
        config: Value::Null,
    }
    .describe();

    let origin = start_origin(&mut children, tools, dir, ports[0])?;
    let mut pairs = Vec::new();
    for (security, ports) in [(Security::Plaintext, &ports[1..5]), (Security::Mtls, &ports[5..9])] {
        let pair = start_pair(
            &mut children,
            tools,
            weft,
            dir,
            security,
            ports,
            origin.addr.port(),
            &telemetry,
            (&client_id, &server_id),
        )
        .with_context(|| format!("starting the {}", Kind::Pair(security).name()))?;
        pairs.push(pair);
    }
    let nginx = nginx_pair::start(
        &mut children,
        tools,
        dir,
        &ports[9..11],
        origin.addr.port(),
        origin.stub_status,
    )
    .with_context(|| format!("starting the {}", Kind::NginxPair.name()))?;
    let pair_of = |security| {
        pairs
            .iter()
            .find(|p: &&Pair| p.security == security)
            .with_context(|| format!("the {} was not started", Kind::Pair(security).name()))
    };

    let mut checks = Vec::new();
    for kind in Kind::ALL {
        let found = match kind {
            Kind::Direct => continue,
            Kind::Pair(security) => check_pair(pair_of(security)?, &origin),
            Kind::NginxPair => nginx_pair::check(&nginx, &origin),
        }
        .with_context(|| format!("checking the {}", kind.name()))?;
        eprintln!("bench: {}: {found}", kind.name());
        checks.push(format!("**{}**: {found}", kind.name()));
    }
    let mtls = pair_of(Security::Mtls)?;

    // The targets: where load goes, and which processes are measured.
    let mut running = Vec::new();
    for kind in Kind::ALL {
        let (addr, child, proxies) = match kind {
            Kind::Direct => (origin.addr, origin.child, None),
            Kind::Pair(security) => {
                let pair = pair_of(security)?;
                let proxies = Proxies {
                    client: pair.client.child,
                    server: pair.server.child,
                    counters: Counters::Sidecar(pair.client.admin),
                };
                (pair.client.addr, pair.client.child, Some(proxies))
            }
            Kind::NginxPair => {
                let proxies = Proxies {
                    client: nginx.client,
                    server: nginx.server,
                    counters: nginx.counters(),
                };
                (nginx.addr, nginx.client, Some(proxies))
            }
        };
        let target = Running {
            target: match kind {
                Kind::Direct => Target::Direct,
                // `Target` only names the row here; it has no labelled variant but weft's.
                Kind::Pair(_) | Kind::NginxPair => Target::WeftWith(kind.name()),
            },
            addr,
            child,
            headers: Vec::new(),
        };
        running.push((kind, target, proxies));
    }

    let warmup = options.duration.min(Duration::from_secs(2));
    for (kind, target, _) in &running {
        eprintln!("bench: warming up {} ({}s)", kind.name(), warmup.as_secs());
        super::super::load::wrk(tools, dir, target.addr, warmup, &target.headers)
            .with_context(|| format!("warming up {}", kind.name()))?;
    }

    let mut targets: Vec<TargetStats> = Kind::ALL
        .iter()
        .map(|&kind| TargetStats {
            kind,
            stats: Stats::default(),
            fixed: FixedRate::default(),
        })
        .collect();
    let mut handshakes = Vec::new();
    let mut handshake_load = Stats::default();
    let stub = origin.stub_status.then_some(origin.addr);
    for round in 0..options.rounds as usize {
        let mut order: Vec<usize> = (0..running.len()).collect();
        order.rotate_left(round % running.len());
        let names: Vec<&str> = order.iter().map(|&i| running[i].0.name()).collect();
        eprintln!(
            "bench: round {}/{}: {}, handshakes",
            round + 1,
            options.rounds,
            names.join(", ")
        );
        for index in order {
            children.check_all()?;
            let (kind, target, proxies) = &running[index];
            let pids = match proxies {
                Some(proxies) => vec![children.get(proxies.client)?.pid(), children.get(proxies.server)?.pid()],
                None => vec![origin.pid],
            };
            let into = &mut targets[index];
            let counters = proxies.map(|p| p.counters);
            measure_round(tools, dir, context, target, counters, &pids, &origin, stub, into)
                .with_context(|| format!("measuring {}", kind.name()))?;
            thread::sleep(Duration::from_millis(500));
        }
        children.check_all()?;
        let server_pid = children.get(mtls.server.child)?.pid();
        let run = super::super::quietly(context, "mtls pair", "handshakes", &mut handshake_load, || {
            measure_handshakes(tools, dir, context, mtls, server_pid, &client_id)
        })?;
        eprintln!(
            "bench:   handshakes: {:.0}/s ({} by the client, {} accepted by the server, {} errors), server cpu {:.0} µs each",
            run.client.handshakes as f64 / run.client.seconds.max(1e-9),
            run.client.handshakes,
            run.accepted,
            run.client.errors,
            run.server.total() as f64 * 1e6 / context.clk_tck as f64 / run.accepted.max(1) as f64,
        );
        handshakes.push(run);
        thread::sleep(Duration::from_millis(500));
    }
    children.check_all()?;
    Ok(Outcome {
        targets,
        handshakes,
        handshake_load,
        checks,
        telemetry: telemetry_name,
        nginx_stub_status: matches!(nginx.counters(), Counters::StubStatus(_)),
    })
}

/// One round of one target: wrk, the fixed-rate run with the pair's counters around it,
/// memory. `pair` is where a pair target's connections and requests are counted, `None` for
/// `direct`; `pids` are the pair's client and server proxy (the origin for `direct`).
#[allow(clippy::too_many_arguments, reason = "the round's inputs, passed through")]
fn measure_round(
    tools: &Tools,
    dir: &Path,
    context: &Context,
    target: &Running,
    pair: Option<Counters>,
    pids: &[u32],
    origin: &Origin,
    stub: Option<SocketAddr>,
    into: &mut TargetStats,
) -> anyhow::Result<()> {
    super::super::measure_throughput(tools, dir, context, target, pids, origin.pid, stub, &mut into.stats)?;
    let mut calls = 0u64;
    let observed = super::super::measure_fixed_rate(tools, dir, context, target, &mut into.stats, || {
        calls += 1;
        match (pair, pids) {
            (Some(counters), &[client, server]) => read(counters, client, server, calls % 2 == 1),
            _ => Ok(Reading::default()),
        }
    })?;
    if let Some(counters) = pair {
        let (before, after) = (observed.before, observed.after);
        let delta = |a: f64, b: f64| (a - b).max(0.0).round() as u64;
        let fixed = &mut into.fixed;
        fixed.requests += observed.requests;
        fixed.client.add(after.client.since(before.client));
        fixed.server.add(after.server.since(before.server));
        fixed.connections += delta(after.connections, before.connections);
        fixed.tls_connections += delta(after.tls_connections, before.tls_connections);
        fixed.upstream_requests += delta(after.upstream_requests, before.upstream_requests);
        let ticks = after.client.since(before.client).total() + after.server.since(before.server).total();
        eprintln!(
            "bench:   {:8} at 1,000 req/s: {:.3} vCPU per 1,000 req/s (both proxies), {}",
            target.target.name(),
            ticks as f64 / context.clk_tck as f64 * 1e3 / observed.requests.max(1) as f64,
            match counters {
                Counters::Unavailable => "client → server connections not counted".to_owned(),
                _ => format!(
                    "{} new upstream connections for {} requests",
                    delta(after.connections, before.connections),
                    delta(after.upstream_requests, before.upstream_requests),
                ),
            }
        );
    }
    super::super::measure_memory(pids, &mut into.stats)
}

/// Both proxies' CPU time and the pair's `counters`, read `before` or after a run: before
/// it the counters are read first and the CPU last, after it the other way round, so the
/// requests reading the counters stay out of the CPU measured.
fn read(counters: Counters, client: u32, server: u32, before: bool) -> anyhow::Result<Reading> {
    let mut reading = Reading::default();
    let read_counters = |reading: &mut Reading| -> anyhow::Result<()> {
        let admin = match counters {
            Counters::Sidecar(admin) => admin,
            Counters::StubStatus(stub) => {
                // Each read is one connection and one request of its own, counted in its
                // own values: the read after the run is the only one of the pair's that the
                // difference would count.
                let (accepts, requests) = nginx_pair::server_counts(stub, u64::from(!before))?;
                (reading.connections, reading.upstream_requests) = (accepts as f64, requests as f64);
                return Ok(());
            }
            Counters::Unavailable => return Ok(()),
        };
        reading.connections = metric_sum(
            admin,
            &format!("weft_cluster_upstream_cx_total{{cluster=\"{CLUSTER}\"}}"),
            &[],
        )?;
        reading.tls_connections = metric_sum(
            admin,
            &format!("weft_cluster_upstream_cx_tls_total{{cluster=\"{CLUSTER}\"}}"),
            &[],
        )?;
        reading.upstream_requests = metric_sum(
            admin,
            &format!("weft_cluster_upstream_rq_total{{cluster=\"{CLUSTER}\","),
            &[],
        )?;
        Ok(())
    };
    if before {
        read_counters(&mut reading)?;
    }
    reading.client = procs::tree_cpu_ticks(client)?;
    reading.server = procs::tree_cpu_ticks(server)?;
    if !before {
        read_counters(&mut reading)?;
    }
    Ok(reading)
}

/// One handshake run against the mtls pair's server sidecar.
fn measure_handshakes(
    tools: &Tools,
    dir: &Path,
    context: &Context,
    mtls: &Pair,
    server_pid: u32,
    identity: &Identity,
) -> anyhow::Result<Handshakes> {
    let accepted = || {
        metric_sum(
            mtls.server.admin,
            "weft_listener_downstream_cx_mtls_total{listener=\"inbound\"}",
            &[],
        )
    };
    let refused = || {
        metric_sum(
            mtls.server.admin,
            "weft_listener_downstream_cx_refused_total{listener=\"inbound\"}",
            &[],
        )
    };
    let (accepted_before, refused_before) = (accepted()?, refused()?);
    let ticks_before = procs::tree_cpu_ticks(server_pid)?;
    let client = handshake::run_pinned(tools, dir, mtls.server.addr, identity, context.options.duration)?;
    let server = procs::tree_cpu_ticks(server_pid)?.since(ticks_before);
    let delta = |after: f64, before: f64| (after - before).max(0.0).round() as u64;
    Ok(Handshakes {
        accepted: delta(accepted()?, accepted_before),
        refused: delta(refused()?, refused_before),
        client,
        server,
    })
}

/// Starts a pair: the server sidecar (inbound listener on `ports[0]`, admin `ports[1]`),
/// then the client sidecar (outbound listener `ports[2]`, admin `ports[3]`), and waits until
/// the origin's body comes back through both.
#[allow(clippy::too_many_arguments, reason = "the pair's settings, each distinct")]
fn start_pair(
    children: &mut Supervisor,
    tools: &Tools,
    weft: &Path,
    dir: &Path,
    security: Security,
    ports: &[u16],
    origin: u16,
    telemetry: &Code,
    (client_id, server_id): (&Identity, &Identity),
) -> anyhow::Result<Pair> {
    let &[server_port, server_admin, client_port, client_admin] = ports else {
        bail!("a pair needs 4 ports");
    };
    let label = match security {
        Security::Plaintext => "plaintext",
        Security::Mtls => "mtls",
    };
    let args = |id: &Identity, sa: &str| {
        let mut args = id.proxy_args();
        args.extend([
            "--node-id".into(),
            format!("{label}-{sa}-sidecar").into(),
            "--service-account".into(),
            sa.into(),
        ]);
        args
    };
    let server = spawn_weft(
        children,
        tools,
        weft,
        dir,
        &format!("{label}-server"),
        &server_snapshot(server_port, origin, telemetry, security),
        server_port,
        server_admin,
        1,
        "warn",
        &args(server_id, SERVER_SA),
    )?;
    let client = spawn_weft(
        children,
        tools,
        weft,
        dir,
        &format!("{label}-client"),
        &client_snapshot(client_port, server_port, telemetry, security),
        client_port,
        client_admin,
        1,
        "warn",
        &args(client_id, CLIENT_SA),
    )?;
    super::super::wait_serving(children, client.child, client.addr, &format!("the {label} pair"))?;
    Ok(Pair {
        security,
        client,
        server,
    })
}

/// The telemetry filter's snapshot entry with `reporter`.
fn telemetry_entry(code: &Code, reporter: &str) -> Value {
    Filter {
        name: "telemetry",
        code: code.clone(),
        config: json!({ "reporter": reporter }),
    }
    .entry()
}

/// The server sidecar's snapshot: an HTTP/1.1 inbound listener (STRICT mutual TLS for
/// [`Security::Mtls`], no mTLS settings otherwise) with the telemetry filter, forwarding
/// everything to the origin. JSON, which is YAML.
fn server_snapshot(port: u16, origin: u16, telemetry: &Code, security: Security) -> String {
    let mut listener = json!({
        "name": "inbound",
        "address": format!("127.0.0.1:{port}"),
        "kind": "inbound",
        "protocol": "http1",
        "route_table": "rt",
        "filters": [telemetry_entry(telemetry, "destination")],
    });
    if security == Security::Mtls {
        listener["mtls"] = json!({ "mode": "strict" });
    }
    snapshot(
        listener,
        "origin",
        json!({ "address": format!("127.0.0.1:{origin}") }),
        None,
    )
}

/// The client sidecar's snapshot: an HTTP/1.1 outbound listener with the telemetry filter,
/// forwarding everything to the server sidecar's inbound listener, with `istio_mutual` TLS
/// (the server's SPIFFE ID required) for [`Security::Mtls`].
fn client_snapshot(port: u16, server: u16, telemetry: &Code, security: Security) -> String {
    let listener = json!({
        "name": "outbound",
        "address": format!("127.0.0.1:{port}"),
        "kind": "outbound",
        "protocol": "http1",
        "route_table": "rt",
        "filters": [telemetry_entry(telemetry, "source")],
    });
    let tls = (security == Security::Mtls)
        .then(|| json!({ "mode": "istio_mutual", "subject_alt_names": [spiffe(SERVER_SA)] }));
    snapshot(
        listener,
        CLUSTER,
        json!({ "address": format!("127.0.0.1:{server}"), "mesh": true }),
        tls,
    )
}

/// A snapshot with one listener whose route table sends everything to `cluster`, which has
/// one endpoint and optionally `tls`.
fn snapshot(listener: Value, cluster: &str, endpoint: Value, tls: Option<Value>) -> String {
    let mut cluster = json!({ "name": cluster, "endpoints": [endpoint] });
    if let Some(tls) = tls {
        cluster["tls"] = tls;
    }
    let route_to = cluster["name"].clone();
    json!({
        "version": "bench",
        "listeners": [listener],
        "route_tables": [{
            "name": "rt",
            "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [{ "forward": { "cluster": route_to } }] }],
        }],
        "clusters": [cluster],
    })
    .to_string()
}

/// Checks a started pair with a probe request (see the module docs); returns what it found.
fn check_pair(pair: &Pair, origin: &Origin) -> anyhow::Result<String> {
    let (client, server) = (pair.client.admin, pair.server.admin);
    let mtls_accepted = || {
        metric_sum(
            server,
            "weft_listener_downstream_cx_mtls_total{listener=\"inbound\"}",
            &[],
        )
    };
    let origin_served = probe(pair.client.addr, origin)?;
    let forwarded = metric_sum(
        server,
        "weft_cluster_upstream_rq_total{cluster=\"origin\",code_class=\"2xx\"}",
        &[],
    )?;
    if forwarded < 1.0 {
        bail!("the server sidecar forwarded no request to the origin");
    }
    let telemetry = "istio_requests_total{filter=\"telemetry\"";
    if metric_sum(client, telemetry, &["reporter=\"source\""])? < 1.0 {
        bail!("the client sidecar's telemetry filter counted no request (reporter source)");
    }
    let accepted = mtls_accepted()?;
    let originated = metric_sum(
        client,
        &format!("weft_cluster_upstream_cx_tls_total{{cluster=\"{CLUSTER}\"}}"),
        &[],
    )?;
    let principal = format!("source_principal=\"{}\"", spiffe(CLIENT_SA));
    let mut found = vec![format!(
        "the probe reached the origin ({}), both telemetry filters counted it",
        match origin_served {
            Some(n) => format!("its stub_status counted {n} request(s)"),
            None => "the server sidecar forwarded it".to_owned(),
        }
    )];
    match pair.security {
        Security::Mtls => {
            if accepted < 1.0 || originated < 1.0 {
                bail!(
                    "not mutual TLS: server weft_listener_downstream_cx_mtls_total = {accepted}, client \
                     weft_cluster_upstream_cx_tls_total = {originated}"
                );
            }
            let seen = metric_sum(
                server,
                telemetry,
                &[
                    "reporter=\"destination\"",
                    "connection_security_policy=\"mutual_tls\"",
                    &principal,
                ],
            )?;
            if seen < 1.0 {
                bail!(
                    "the server's telemetry saw no request with mutual_tls from {}",
                    spiffe(CLIENT_SA)
                );
            }
            let refused_before = metric_sum(
                server,
                "weft_listener_downstream_cx_refused_total{listener=\"inbound\"}",
                &[],
            )?;
            if let Ok(response) = http::get(pair.server.addr, "/") {
                bail!(
                    "a plaintext request straight to the STRICT inbound listener was answered ({})",
                    response.status
                );
            }
            let refused = metric_sum(
                server,
                "weft_listener_downstream_cx_refused_total{listener=\"inbound\"}",
                &[],
            )?;
            if refused <= refused_before {
                bail!("the STRICT inbound listener did not count the plaintext connection as refused");
            }
            found.push(format!(
                "server `weft_listener_downstream_cx_mtls_total` {accepted}, client `weft_cluster_upstream_cx_tls_total` \
                 {originated}; the server's telemetry recorded `connection_security_policy=\"mutual_tls\"` and \
                 `{principal}`; plaintext straight to the inbound listener was refused"
            ));
        }
        Security::Plaintext => {
            if accepted != 0.0 || originated != 0.0 {
                bail!(
                    "the plaintext pair used TLS: server weft_listener_downstream_cx_mtls_total = {accepted}, client \
                     weft_cluster_upstream_cx_tls_total = {originated}"
                );
            }
            let seen = metric_sum(
                server,
                telemetry,
                &["reporter=\"destination\"", "connection_security_policy=\"none\""],
            )?;
            if seen < 1.0 {
                bail!("the server's telemetry saw no plaintext request");
            }
            found.push(
                "no mTLS connection on either side (`…_cx_mtls_total` and `…_cx_tls_total` 0); the server's \
                 telemetry recorded `connection_security_policy=\"none\"`"
                    .to_owned(),
            );
        }
    }
    Ok(found.join("; "))
}

/// Sends one probe request to `addr`, which must answer `200` with the origin's body;
/// returns how many requests the origin served meanwhile (`None` when it has no
/// `stub_status`), failing when it counted none.
fn probe(addr: SocketAddr, origin: &Origin) -> anyhow::Result<Option<u64>> {
    let ((), served) = served_during(origin.stub_status.then_some(origin.addr), || {
        let response = http::get(addr, "/").context("the probe request")?;
        if response.status != 200 || response.body != configs::BODY.as_bytes() {
            bail!(
                "the probe request answered {} {:?}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        Ok(())
    })?;
    if served == Some(0) {
        bail!("the origin's stub_status counted no request for the probe");
    }
    Ok(served)
}

/// Runs `f`, and counts the requests the nginx whose `stub_status` is at `stub` served
/// meanwhile (`None` without `stub`).
fn served_during<T>(
    stub: Option<SocketAddr>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Option<u64>)> {
    let before = stub.map(super::super::origin_counters).transpose()?;
    let value = f()?;
    let served = match stub.zip(before) {
        // The second read is itself one request.
        Some((stub, before)) => Some(
            super::super::origin_counters(stub)?
                .1
                .saturating_sub(before.1)
                .saturating_sub(1),
        ),
        None => None,
    };
    Ok((value, served))
}

#[cfg(test)]
mod tests {
    use super::{Code, Security, client_snapshot, server_snapshot};

    fn code() -> Code {
        Code::Wasm {
            file: "/tmp/telemetry.wasm".into(),
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn snapshots_differ_only_in_security() -> anyhow::Result<()> {
        let plain: serde_json::Value = serde_json::from_str(&server_snapshot(1, 2, &code(), Security::Plaintext))?;
        let strict: serde_json::Value = serde_json::from_str(&server_snapshot(1, 2, &code(), Security::Mtls))?;
        assert!(plain["listeners"][0].get("mtls").is_none());
        assert_eq!(strict["listeners"][0]["mtls"]["mode"], "strict");
        assert_eq!(strict["listeners"][0]["kind"], "inbound");
        assert_eq!(
            strict["listeners"][0]["filters"][0]["config"]["reporter"],
            "destination"
        );
        assert_eq!(strict["clusters"][0]["endpoints"][0]["address"], "127.0.0.1:2");

        let plain: serde_json::Value = serde_json::from_str(&client_snapshot(3, 1, &code(), Security::Plaintext))?;
        let mutual: serde_json::Value = serde_json::from_str(&client_snapshot(3, 1, &code(), Security::Mtls))?;
        assert!(plain["clusters"][0].get("tls").is_none());
        assert_eq!(mutual["clusters"][0]["tls"]["mode"], "istio_mutual");
        assert_eq!(
            mutual["clusters"][0]["tls"]["subject_alt_names"][0],
            "spiffe://cluster.local/ns/default/sa/server"
        );
        assert_eq!(mutual["clusters"][0]["endpoints"][0]["mesh"], true);
        assert_eq!(mutual["listeners"][0]["filters"][0]["config"]["reporter"], "source");
        assert_eq!(
            mutual["route_tables"][0]["virtual_hosts"][0]["routes"][0]["forward"]["cluster"],
            "server"
        );
        Ok(())
    }
}
