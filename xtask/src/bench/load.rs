//! Running the load generators (wrk, h2load, the latency client) and reading their results.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::latency::{self, LatencyRun};
use super::procs::ChildGuard;
use super::tools::Tools;

/// The CPU the load generators run on.
pub(crate) const LOAD_CPU: &str = "0";
/// wrk's threads.
pub(crate) const WRK_THREADS: u32 = 1;
/// wrk's connections.
pub(crate) const WRK_CONNECTIONS: u32 = 50;
/// Connections of the fixed-rate latency runs.
pub(crate) const LATENCY_CONNECTIONS: u32 = 10;
/// Requests per second on each latency connection (10 × 100 = 1,000 req/s in total).
pub(crate) const LATENCY_RATE: u32 = 100;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkRun {
    /// Requests completed.
    pub(crate) requests: u64,
    /// Requests per second, as wrk reports it.
    pub(crate) rps: f64,
    /// Non-2xx/3xx responses plus socket errors.
    pub(crate) errors: u64,
}

/// Runs a load generator pinned to [`LOAD_CPU`], waits for it, and returns its output.
pub(crate) fn run_pinned(
    tools: &Tools,
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
    duration: Duration,
) -> anyhow::Result<String> {
    let mut command = tools.pinned(LOAD_CPU, program);
    command.args(args);
    let log = dir.join(format!("{name}.log"));
    let mut child = ChildGuard::spawn(name, command, &log)?;
    let status = child.wait_timeout(duration + Duration::from_secs(30))?;
    let output = child.output()?;
    if !status.success() {
        bail!("{name} failed ({status}):\n{}", child.log_tail());
    }
    Ok(output)
}

/// `wrk -t1 -c50 -dSECS` against `addr`, with `headers` (`Name: value`) as `-H`.
pub(crate) fn wrk(
    tools: &Tools,
    dir: &Path,
    addr: SocketAddr,
    duration: Duration,
    headers: &[String],
) -> anyhow::Result<WrkRun> {
    let mut args = vec![
        format!("-t{WRK_THREADS}"),
        format!("-c{WRK_CONNECTIONS}"),
        format!("-d{}s", duration.as_secs()),
    ];
    for header in headers {
        args.extend(["-H".to_owned(), header.clone()]);
    }
    args.push(format!("http://{addr}/"));
    let output = run_pinned(tools, dir, "wrk", &tools.wrk, &args, duration)?;
    parse_wrk(&output).with_context(|| format!("reading wrk's output:\n{output}"))
}

fn parse_wrk(output: &str) -> anyhow::Result<WrkRun> {
    let mut requests = None;
    let mut rps = None;
    let mut errors = 0;
    for line in output.lines().map(str::trim) {
        if let Some((count, _)) = line.split_once(" requests in ") {
            requests = Some(count.trim().parse::<u64>().context("request count")?);
        } else if let Some(value) = line.strip_prefix("Requests/sec:") {
            rps = Some(value.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += value.trim().parse::<u64>().context("Non-2xx count")?;
        } else if let Some(value) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in value.split(',') {
                let number = part.split_whitespace().last().unwrap_or("0");
                errors += number.parse::<u64>().context("socket error count")?;
            }
        }
    }
    Ok(WrkRun {
        requests: requests.context("no \"requests in\" line")?,
        rps: rps.context("no Requests/sec line")?,
        errors,
    })
}

/// The open-loop latency client (this binary, `bench latency-client`) against `addr`,
/// sending `headers` (`Name: value`) with every request.
pub(crate) fn latency_client(
    tools: &Tools,
    dir: &Path,
    addr: SocketAddr,
    duration: Duration,
    headers: &[String],
) -> anyhow::Result<LatencyRun> {
    let exe = own_exe();
    let out = dir.join("latency.json");
    let _ = fs::remove_file(&out);
    let mut args = vec![
        "bench".to_owned(),
        "latency-client".to_owned(),
        "--addr".to_owned(),
        addr.to_string(),
        "--connections".to_owned(),
        LATENCY_CONNECTIONS.to_string(),
        "--rate".to_owned(),
        LATENCY_RATE.to_string(),
        "--duration".to_owned(),
        duration.as_secs_f64().to_string(),
        "--out".to_owned(),
        out.display().to_string(),
    ];
    for header in headers {
        args.extend(["--header".to_owned(), header.clone()]);
    }
    run_pinned(tools, dir, "latency-client", &exe, &args, duration)?;
    latency::read_run(&out)
}

/// This very binary, for its internal load generators (`bench latency-client`, …), through
/// /proc: that still works after a concurrent `cargo build` has replaced (and so deleted)
/// target/debug/xtask while the benchmark runs.
pub(crate) fn own_exe() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/{}/exe", std::process::id()))
}

/// What one h2load run measured.
#[derive(Debug, Default)]
pub(crate) struct H2loadRun {
    /// Per-request latency of the 2xx responses, in nanoseconds.
    pub(crate) samples_ns: Vec<u64>,
    /// Requests that did not get a 2xx.
    pub(crate) errors: u64,
}

/// `h2load --h1 -c 10 --rps 100 -D SECS --log-file …` against `addr`: the same fixed
/// 1,000 req/s as the latency client. h2load sends each connection's next request only
/// after the previous response, and times it from the send, so it is not corrected for
/// coordinated omission; it is reported as a cross-check. `headers` (`Name: value`) go with
/// every request.
pub(crate) fn h2load(
    tools: &Tools,
    dir: &Path,
    addr: SocketAddr,
    duration: Duration,
    headers: &[String],
) -> anyhow::Result<H2loadRun> {
    let log = dir.join("h2load-requests.tsv");
    let _ = fs::remove_file(&log);
    let mut args = vec![
        "--h1".to_owned(),
        "-c".to_owned(),
        LATENCY_CONNECTIONS.to_string(),
        "--rps".to_owned(),
        LATENCY_RATE.to_string(),
        "-D".to_owned(),
        duration.as_secs().to_string(),
        "--log-file".to_owned(),
        log.display().to_string(),
    ];
    for header in headers {
        args.extend(["-H".to_owned(), header.clone()]);
    }
    args.push(format!("http://{addr}/"));
    run_pinned(tools, dir, "h2load", &tools.h2load, &args, duration)?;
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    parse_h2load_log(&text)
}

/// h2load's log: one line per request, `start (µs since epoch) \t status \t elapsed (µs)`.
fn parse_h2load_log(text: &str) -> anyhow::Result<H2loadRun> {
    let mut run = H2loadRun::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [_, status, elapsed] = fields[..] else {
            bail!("bad h2load log line {line:?}")
        };
        let status: i64 = status.trim().parse().with_context(|| format!("status in {line:?}"))?;
        let elapsed: u64 = elapsed
            .trim()
            .parse()
            .with_context(|| format!("elapsed time in {line:?}"))?;
        if (200..300).contains(&status) {
            run.samples_ns.push(elapsed * 1_000);
        } else {
            run.errors += 1;
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::{parse_h2load_log, parse_wrk};

    #[test]
    fn wrk_output() -> anyhow::Result<()> {
        let output = "Running 10s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.00ms  100.00us   5.00ms   90.00%\n  \
            523456 requests in 10.00s, 60.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  \
            Non-2xx or 3xx responses: 4\nRequests/sec:  52345.60\nTransfer/sec:      6.00MB\n";
        let run = parse_wrk(output)?;
        assert_eq!(run.requests, 523_456);
        assert!((run.rps - 52_345.6).abs() < 1e-6);
        assert_eq!(run.errors, 7);
        Ok(())
    }

    #[test]
    fn h2load_log() -> anyhow::Result<()> {
        let run = parse_h2load_log("1700000000000000\t200\t120\n1700000000000100\t502\t80\n")?;
        assert_eq!(run.samples_ns, vec![120_000]);
        assert_eq!(run.errors, 1);
        Ok(())
    }
}
