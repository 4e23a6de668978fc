//! The markdown of `--suite mtls`.

use std::fmt::Write as _;

use super::super::super::latency::percentile;
use super::super::super::load::{LATENCY_CONNECTIONS, LATENCY_RATE, WRK_CONNECTIONS, WRK_THREADS};
use super::super::super::report::{median, mib, min_max, thousands};
use super::super::super::{Context, FOREIGN_LIMIT, FOREIGN_RETRIES, Stats};
use super::super::render::{header, opt, verdict};
use super::handshake::CONNECTIONS;
use super::{Handshakes, Kind, Outcome, Security, TargetStats};

/// The goal: the mtls pair's two sidecars together use at most this many vCPU per
/// 1,000 req/s at 1,000 req/s.
const GOAL_VCPU_PER_KRPS: f64 = 0.08;
/// The goal: the mtls pair adds at most this much to p99 at 1,000 req/s, in µs.
const GOAL_ADDED_P99_US: f64 = 300.0;
/// Istio's published figure as the issue quotes it: vCPU per 1,000 req/s (per proxy).
const ISTIO_VCPU_PER_KRPS: f64 = 0.20;
/// Istio's published figure as the issue quotes it: added p99, in µs.
const ISTIO_ADDED_P99_US: f64 = 298.0;

/// Derived numbers of one target.
struct Row<'a> {
    kind: Kind,
    stats: &'a Stats,
    target: &'a TargetStats,
    rps: f64,
    /// Percentiles at 1,000 req/s, µs.
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    /// vCPU per 1,000 req/s at 1,000 req/s: both proxies of the pair, client, server; `None`
    /// for `direct`.
    vcpu: Option<(f64, f64, f64)>,
}

impl Row<'_> {
    /// New client-to-server connections during the fixed-rate runs (TLS ones for the mtls
    /// pair), and the reuse rate `1 − new ÷ requests`; `None` where they were not counted.
    fn reuse(&self) -> Option<(u64, u64, f64)> {
        let fixed = &self.target.fixed;
        let new = match self.kind {
            Kind::Direct => return None,
            Kind::Pair(Security::Plaintext) | Kind::NginxPair => fixed.connections,
            Kind::Pair(Security::Mtls) => fixed.tls_connections,
        };
        let requests = fixed.upstream_requests;
        (requests > 0).then(|| (new, requests, 1.0 - new as f64 / requests as f64))
    }
}

/// Renders the suite's section (without the markers).
pub(crate) fn render(context: &Context, outcome: &Outcome) -> String {
    let options = &context.options;
    let clk = context.clk_tck as f64;
    let rows: Vec<Row<'_>> = outcome
        .targets
        .iter()
        .map(|t| {
            let mut sorted = t.stats.latency_ns.clone();
            sorted.sort_unstable();
            let pct = |p| percentile(&sorted, p).map(|ns| ns as f64 / 1e3);
            let per_krps = |ticks: u64| ticks as f64 / clk * 1e3 / t.fixed.requests.max(1) as f64;
            Row {
                kind: t.kind,
                stats: &t.stats,
                target: t,
                rps: median(&t.stats.rps),
                p50: pct(50.0),
                p99: pct(99.0),
                p999: pct(99.9),
                vcpu: (t.kind != Kind::Direct).then(|| {
                    (
                        per_krps(t.fixed.client.total() + t.fixed.server.total()),
                        per_krps(t.fixed.client.total()),
                        per_krps(t.fixed.server.total()),
                    )
                }),
            }
        })
        .collect();
    let find = |kind| rows.iter().find(|r| r.kind == kind);
    let direct = find(Kind::Direct);
    let plain = find(Kind::Pair(Security::Plaintext));
    let mtls = find(Kind::Pair(Security::Mtls));
    let nginx = find(Kind::NginxPair);
    let added =
        |row: Option<&Row<'_>>, pick: fn(&Row<'_>) -> Option<f64>| match (row.and_then(pick), direct.and_then(pick)) {
            (Some(mine), Some(base)) => Some(mine - base),
            _ => None,
        };
    let signed_us = |v: f64| format!("{v:+.0} µs");
    let micros = |v: Option<f64>| opt(v, |v| format!("{v:.0} µs"));

    let mut out = header(context);
    let _ = writeln!(
        out,
        "- **Setup:** origin = nginx (1 worker) answering `200 hello\\n`. Each pair is a client sidecar and a \
         server sidecar, each its own weft-proxy `--workers 1` (release build); the load goes to the client's \
         outbound listener, whose only route forwards to the server's inbound listener (HTTP/1.1, pooled \
         keep-alive connections), which forwards to the origin. The {telemetry} Wasm filter runs on both \
         sidecars (outbound with `reporter: source` on the client, inbound with `reporter: destination` on the \
         server), built by the harness as in the filters suite and named by its sha256. **mtls pair**: the \
         server's inbound listener has `mtls: {{ mode: strict }}`, the client's cluster `tls: {{ mode: \
         istio_mutual, subject_alt_names: [spiffe://cluster.local/ns/default/sa/server] }}` and its endpoint \
         `mesh: true`; **plaintext pair**: the same snapshots without those settings. **nginx pair**, a \
         reference with no Wasm filter and no TLS, to show the floor of a two-hop proxy pair on this machine: \
         a client nginx whose only upstream is a server nginx, which proxies to the origin; each is nginx with \
         `worker_processes 1` and the default run's proxy config (HTTP/1.1 to a keep-alive upstream pool, \
         `keepalive 64`){nginx_status}. Every sidecar has a workload certificate (ECDSA P-256, SPIFFE URI SAN \
         `spiffe://cluster.local/ns/default/sa/client` or `…/sa/server`, server and client auth) from a root \
         CA the harness makes with rcgen for the run, loaded with `--cert-chain`, `--private-key` and \
         `--trust-bundle`. **What shares what:** this machine has 2 CPUs; as in the other suites all servers \
         are pinned to CPU 1 (the origin, all four sidecars and both nginx of the nginx pair, so a request \
         through a pair runs three servers on that one CPU, and the idle pairs wait there too) and every load \
         generator to CPU 0 (wrk, the latency client, the handshake client). All on 127.0.0.1. All three \
         pairs run for the whole benchmark, those not measured idle. {} round(s) of {} s per measurement (wrk, \
         then the latency client), target order rotated each round; one handshake run of {} s after each \
         round.\n",
        options.rounds,
        options.duration.as_secs(),
        options.duration.as_secs(),
        telemetry = outcome.telemetry,
        nginx_status = if outcome.nginx_stub_status {
            "; the server nginx also answers `stub_status` on `/nginx_status`, to count the probe and the \
             client nginx's connections to it"
        } else {
            ""
        },
    );
    let _ = writeln!(
        out,
        "- **Checked before measuring** (one probe request through each pair, before any load): {}\n",
        outcome.checks.join("; ")
    );

    out.push_str(
        "| target | req/s (median) | req/s min–max | the pair's CPU µs/req at full load (usr + sys) | p50 | p99 | \
         p99.9 | added p50 | added p99 | vCPU per 1,000 req/s at 1,000 req/s (client + server) | new \
         client→server connections / requests at 1,000 req/s | connection reuse | RSS after load (the pair) | \
         errors | other load |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for row in &rows {
        let s = row.stats;
        let (min, max) = min_max(&s.rps);
        let is_direct = row.kind == Kind::Direct;
        let cpu = |ticks: u64| ticks as f64 * 1e6 / clk / s.requests.max(1) as f64;
        let reuse = row.reuse();
        let dash_or = |text: String| if is_direct { "–".to_owned() } else { text };
        let _ = writeln!(
            out,
            "| {} | {} | {}–{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}%{} |",
            row.kind.name(),
            thousands(row.rps),
            thousands(min),
            thousands(max),
            dash_or(format!(
                "{:.1} ({:.1} + {:.1})",
                cpu(s.ticks.total()),
                cpu(s.ticks.user),
                cpu(s.ticks.system)
            )),
            micros(row.p50),
            micros(row.p99),
            micros(row.p999),
            dash_or(opt(added(Some(row), |r| r.p50), signed_us)),
            dash_or(opt(added(Some(row), |r| r.p99), signed_us)),
            dash_or(opt(row.vcpu, |(all, c, s)| format!("{all:.3} ({c:.3} + {s:.3})"))),
            dash_or(opt(reuse, |(new, requests, _)| format!("{new} / {requests}"))),
            dash_or(opt(reuse, |(_, _, rate)| format!("{:.2}%", rate * 100.0))),
            mib(s.rss_kb),
            s.wrk_errors + s.latency_errors,
            s.foreign_max,
            match s.retries {
                0 => String::new(),
                1 => " (1 rerun)".to_owned(),
                n => format!(" ({n} reruns)"),
            },
        );
    }
    out.push('\n');

    let disturbed: Vec<&str> = rows
        .iter()
        .filter(|r| r.stats.foreign_max > FOREIGN_LIMIT)
        .map(|r| r.kind.name())
        .chain((outcome.handshake_load.foreign_max > FOREIGN_LIMIT).then_some("the handshake runs"))
        .collect();
    if !disturbed.is_empty() {
        let _ = writeln!(
            out,
            "> **Warning:** other processes used the CPUs during kept measurements of {} (see \"other \
             load\"); treat those numbers with care.\n",
            disturbed.join(", ")
        );
    }
    for row in &rows {
        let s = row.stats;
        if let Some(origin) = s.origin_requests
            && origin.abs_diff(s.requests) > (s.requests / 100).max(100)
        {
            let _ = writeln!(
                out,
                "> **Warning:** during {}'s wrk runs the origin served {origin} requests for {} completed; \
                 that row is suspect.\n",
                row.kind.name(),
                s.requests
            );
        }
    }

    let mtls_vcpu = mtls.and_then(|r| r.vcpu).map(|(all, _, _)| all);
    let mtls_added_p99 = added(mtls, |r| r.p99);
    out.push_str(
        "Goals from the issue (mtls pair, at a fixed 1,000 req/s):\n\n\
         | goal | target | Istio, as the issue quotes it | measured | result |\n|---|--:|--:|--:|---|\n",
    );
    let _ = writeln!(
        out,
        "| vCPU per 1,000 req/s, client and server sidecar together | ≤ {GOAL_VCPU_PER_KRPS:.2} | \
         {ISTIO_VCPU_PER_KRPS:.2} (per proxy) | {} ({}) | {} |",
        opt(mtls_vcpu, |v| format!("{v:.3}")),
        opt(mtls.and_then(|r| r.vcpu), |(_, c, s)| format!(
            "client {c:.3} + server {s:.3}"
        )),
        verdict(mtls_vcpu.map(|v| v <= GOAL_VCPU_PER_KRPS)),
    );
    let _ = writeln!(
        out,
        "| added p99 of the pair (mtls pair − direct) | ≤ +{:.1} ms | +{:.3} ms | {} | {} |\n",
        GOAL_ADDED_P99_US / 1e3,
        ISTIO_ADDED_P99_US / 1e3,
        opt(mtls_added_p99, |v| format!("{:+.3} ms", v / 1e3)),
        verdict(mtls_added_p99.map(|v| v <= GOAL_ADDED_P99_US)),
    );
    render_reference(&mut out, nginx, mtls, added(nginx, |r| r.p99), mtls_added_p99);

    let pick_vcpu = |r: Option<&Row<'_>>| r.and_then(|r| r.vcpu).map(|(all, _, _)| all);
    let pair_cpu =
        |r: Option<&Row<'_>>| r.map(|r| r.stats.ticks.total() as f64 * 1e6 / clk / r.stats.requests.max(1) as f64);
    let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
    let _ = writeln!(
        out,
        "**mTLS over plaintext** (mtls pair − plaintext pair): {} vCPU per 1,000 req/s at 1,000 req/s, {} at p50 \
         and {} at p99; at full load {} of sidecar CPU per request and {} the req/s (medians).\n",
        opt(diff(pick_vcpu(mtls), pick_vcpu(plain)), |v| format!("{v:+.3}")),
        opt(diff(mtls.and_then(|r| r.p50), plain.and_then(|r| r.p50)), signed_us),
        opt(diff(mtls.and_then(|r| r.p99), plain.and_then(|r| r.p99)), signed_us),
        opt(diff(pair_cpu(mtls), pair_cpu(plain)), |v| format!("{v:+.1} µs")),
        opt(
            mtls.zip(plain).filter(|(_, p)| p.rps > 0.0).map(|(m, p)| m.rps / p.rps),
            |r| format!("{r:.2}×")
        ),
    );

    render_handshakes(&mut out, context, &outcome.handshakes, &outcome.handshake_load);

    let late: u64 = rows.iter().map(|r| r.stats.latency_late).sum();
    let _ = write!(
        out,
        "How to read it:\n\n\
         - **req/s**: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{secs}s` at the target, closed loop, median and range over \
         the rounds; **the pair's CPU µs/req at full load**: `utime + stime` of both proxies of the pair (the \
         sidecars' processes, all threads; each nginx's master and worker; `/proc/PID/stat`, ticks of {clk_tck} \
         Hz) during the wrk runs over the requests wrk completed. Both proxies and the origin share CPU 1, so \
         their costs together limit req/s.\n\
         - **p50 / p99 / p99.9**: latency at a fixed {total} req/s ({LATENCY_CONNECTIONS} keep-alive connections × \
         {LATENCY_RATE} req/s, open loop, corrected for coordinated omission; {late} request(s) in all were sent \
         more than one interval late), pooled over the rounds; **added** = target − direct at the same percentile.\n\
         - **vCPU per 1,000 req/s**: `utime + stime` of the client and the server proxy of the pair (sidecar, \
         or nginx master and worker) during those fixed-rate runs, in CPU seconds, divided by the wall time \
         and by the request rate in thousands, which comes to CPU seconds × 1,000 / requests sent. It is the \
         pair's cost at a moderate rate, where every request wakes both proxies on its own; at full load (the \
         µs/req column) the proxies batch work and each request costs less. Istio states its 0.20 vCPU per \
         proxy; the goal here counts both proxies of the pair.\n\
         - **new connections / requests, connection reuse**: the client sidecar's \
         `weft_cluster_upstream_cx_tls_total{{cluster=\"server\"}}` (for the plaintext pair \
         `weft_cluster_upstream_cx_total`) and `weft_cluster_upstream_rq_total{{cluster=\"server\"}}` over the \
         fixed-rate runs (for the nginx pair the server nginx's `stub_status` accepts and requests, its own \
         reads left out; `–` when this nginx has no `stub_status`); reuse = 1 − new ÷ requests. The pools \
         were filled by the warm-up and earlier wrk runs (up to {WRK_CONNECTIONS} connections) and the pool keeps \
         idle connections, so the latency client's \
         {LATENCY_CONNECTIONS} connections mostly find theirs ready; a new connection means a pooled one was \
         gone (closed by either side) when a request needed it.\n\
         - **RSS after load**: `VmRSS` of both proxies of the pair summed (each nginx's master and worker; the \
         origin's for `direct`), the largest over the rounds. **errors**: non-2xx responses and socket errors \
         of wrk and the latency client.\n\
         - **other load**: CPU used by processes outside the benchmark, the most during any kept measurement, \
         in percent of one CPU; a measurement during which it passed {limit:.0}% was repeated (up to \
         {FOREIGN_RETRIES} times, within a time budget).\n",
        secs = options.duration.as_secs(),
        clk_tck = context.clk_tck,
        total = thousands(f64::from(LATENCY_CONNECTIONS * LATENCY_RATE)),
        limit = FOREIGN_LIMIT,
    );
    out
}

/// The line after the goals comparing the reference, the nginx pair, with them and with the
/// mtls pair; `nginx_p99` and `mtls_p99` are their added p99s in µs.
fn render_reference(
    out: &mut String,
    nginx: Option<&Row<'_>>,
    mtls: Option<&Row<'_>>,
    nginx_p99: Option<f64>,
    mtls_p99: Option<f64>,
) {
    let Some(nginx) = nginx else {
        return;
    };
    let meets = |ok: bool| if ok { "within" } else { "above" }.to_owned();
    let nginx_vcpu = nginx.vcpu.map(|(all, _, _)| all);
    let _ = writeln!(
        out,
        "For reference, the **nginx pair** (no Wasm filter, no TLS: the floor of a two-hop proxy pair on this \
         machine): {} vCPU per 1,000 req/s at 1,000 req/s ({}), added p99 {}: {} the vCPU goal of ≤ \
         {GOAL_VCPU_PER_KRPS:.2} and {} the p99 goal of ≤ +{:.1} ms. The mtls pair {}.\n",
        opt(nginx_vcpu, |v| format!("**{v:.3}**")),
        opt(nginx.vcpu, |(_, c, s)| format!("client {c:.3} + server {s:.3}")),
        opt(nginx_p99, |v| format!("**{:+.3} ms**", v / 1e3)),
        opt(nginx_vcpu, |v| meets(v <= GOAL_VCPU_PER_KRPS)),
        opt(nginx_p99, |v| meets(v <= GOAL_ADDED_P99_US)),
        GOAL_ADDED_P99_US / 1e3,
        match (mtls.and_then(|m| m.vcpu).zip(nginx.vcpu), mtls_p99.zip(nginx_p99)) {
            (Some(((m, _, _), (n, _, _))), Some((mp, np))) if n > 0.0 => format!(
                "uses {:.2}× its vCPU per 1,000 req/s ({:+.3}) and adds {:+.0} µs at p99 over it",
                m / n,
                m - n,
                mp - np
            ),
            _ => "cannot be compared with it (missing numbers)".to_owned(),
        },
    );
}

/// The handshake table.
fn render_handshakes(out: &mut String, context: &Context, runs: &[Handshakes], load: &Stats) {
    let clk = context.clk_tck as f64;
    let rate = |h: &Handshakes| h.client.handshakes as f64 / h.client.seconds.max(1e-9);
    let server_us = |h: &Handshakes| h.server.total() as f64 * 1e6 / clk / h.accepted.max(1) as f64;
    let _ = writeln!(
        out,
        "**Handshakes per second** (the mtls pair's server sidecar, one worker): the handshake client (in the \
         xtask, on CPU 0) does full TLS 1.3 mutual-TLS handshakes with the client sidecar's certificate against \
         the server sidecar's STRICT inbound listener, {CONNECTIONS} at a time, for {} s per run: a new TCP \
         connection each, session resumption off (X25519, ECDSA P-256 certificates on both sides, the server's \
         chain verified against the mesh root), then `close_notify` and wait for the server to close, so each \
         handshake counts only once the server has verified the client's certificate; no HTTP request. \
         Median: **{}** handshakes/s, **{}** of server sidecar CPU per handshake.\n",
        context.options.duration.as_secs(),
        opt(
            (!runs.is_empty()).then(|| median(&runs.iter().map(rate).collect::<Vec<_>>())),
            |r| format!("{r:.0}")
        ),
        opt(
            (!runs.is_empty()).then(|| median(&runs.iter().map(server_us).collect::<Vec<_>>())),
            |u| format!("{u:.0} µs")
        ),
    );
    out.push_str(
        "| run | handshakes/s | completed (client) / accepted with mTLS (server) | errors | server sidecar CPU \
         per handshake (usr + sys) | server sidecar CPU busy | client CPU per handshake | time per handshake \
         p50 / p99 |\n|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for (index, h) in runs.iter().enumerate() {
        let mut samples = h.client.samples_ns.clone();
        samples.sort_unstable();
        let pct = |p| percentile(&samples, p).map_or_else(|| "?".to_owned(), |ns| format!("{:.0}", ns as f64 / 1e3));
        let per = |ticks: u64| ticks as f64 * 1e6 / clk / h.accepted.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} / {} | {}{} | {:.0} µs ({:.0} + {:.0}) | {:.0}% | {:.0} µs | {} / {} µs |",
            index + 1,
            rate(h),
            h.client.handshakes,
            h.accepted,
            h.client.errors,
            match (&h.client.first_error, h.refused) {
                (Some(error), refused) => format!(" (first: {}; server refused {refused})", error.replace('|', "\\|")),
                (None, 0) => String::new(),
                (None, refused) => format!(" (server refused {refused})"),
            },
            server_us(h),
            per(h.server.user),
            per(h.server.system),
            h.server.total() as f64 / clk / h.client.seconds.max(1e-9) * 100.0,
            h.client.client_ticks as f64 * 1e6 / clk / h.client.handshakes.max(1) as f64,
            pct(50.0),
            pct(99.0),
        );
    }
    let _ = writeln!(
        out,
        "\nThe server sidecar's CPU per handshake is its `utime + stime` during the run over the connections it \
         accepted with mTLS (`weft_listener_downstream_cx_mtls_total`, which also counts the one handshake the \
         client makes to check its setup before the timed loop); **server sidecar CPU busy** is that time \
         over the run's wall time: near 100% means the server's one worker was the limit, lower means the \
         client (its CPU per handshake is its own process's `utime + stime`) or the round trips were. Other \
         load during the kept handshake runs: at most {:.0}%{}.\n",
        load.foreign_max,
        match load.retries {
            0 => String::new(),
            n => format!(" ({n} rerun(s))"),
        }
    );
}
