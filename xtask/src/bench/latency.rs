//! An open-loop (fixed-rate) latency client, corrected for coordinated omission.
//!
//! Each of `connections` threads owns one keep-alive HTTP/1.1 connection and sends requests
//! on a fixed schedule, `rate` per second, the threads' schedules evenly staggered. A
//! request's latency runs from the moment it was *due*, not from when it was sent, whenever
//! a slow previous response made it late (as wrk2 does), so a server stall counts for every
//! request it delayed. When the client was on time, latency runs from the actual send, so
//! the client's own timer jitter is not charged to the server.
//!
//! It runs as `xtask bench latency-client …` in its own process so that it can be pinned
//! with `taskset` like the other load generators; it writes its samples as JSON.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::http::Connection;

/// What one latency run measured.
#[derive(Debug, Default)]
pub(crate) struct LatencyRun {
    /// Latency of each successful request, in nanoseconds.
    pub(crate) samples_ns: Vec<u64>,
    /// Requests that failed (connection errors, timeouts, non-2xx).
    pub(crate) errors: u64,
    /// Requests sent more than one interval after they were due.
    pub(crate) late: u64,
}

/// The client's settings.
struct Config {
    addr: SocketAddr,
    connections: u32,
    rate: u32,
    duration: Duration,
    out: PathBuf,
    /// Extra request headers, `Name: value`.
    headers: Vec<String>,
}

/// `xtask bench latency-client --addr A --connections C --rate R --duration S --out FILE
/// [--header 'Name: value']…`.
pub(crate) fn client_main(args: &[String]) -> anyhow::Result<()> {
    let mut addr = None;
    let mut connections = 10;
    let mut rate = 100;
    let mut duration = 10.0;
    let mut out = None;
    let mut headers = Vec::new();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?.parse::<SocketAddr>().context("--addr")?),
            "--connections" => connections = value()?.parse().context("--connections")?,
            "--rate" => rate = value()?.parse().context("--rate")?,
            "--duration" => duration = value()?.parse::<f64>().context("--duration")?,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--header" => headers.push(value()?.clone()),
            other => bail!("latency-client: unknown argument {other:?}"),
        }
    }
    if connections == 0 || rate == 0 || duration <= 0.0 {
        bail!("latency-client: connections, rate and duration must be positive");
    }
    let config = Config {
        addr: addr.context("latency-client: --addr is required")?,
        connections,
        rate,
        duration: Duration::from_secs_f64(duration),
        out: out.context("latency-client: --out is required")?,
        headers,
    };
    let run = run(&config)?;
    let json = serde_json::json!({
        "samples_ns": run.samples_ns,
        "errors": run.errors,
        "late": run.late,
    });
    fs::write(&config.out, json.to_string()).with_context(|| format!("writing {}", config.out.display()))
}

/// Reads what [`client_main`] wrote.
pub(crate) fn read_run(path: &std::path::Path) -> anyhow::Result<LatencyRun> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let samples_ns = json["samples_ns"]
        .as_array()
        .context("no samples_ns")?
        .iter()
        .map(|v| v.as_u64().context("bad sample"))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    Ok(LatencyRun {
        samples_ns,
        errors: json["errors"].as_u64().context("no errors count")?,
        late: json["late"].as_u64().context("no late count")?,
    })
}

fn run(config: &Config) -> anyhow::Result<LatencyRun> {
    let interval = Duration::from_secs(1) / config.rate;
    let per_connection = (config.duration.as_secs_f64() * f64::from(config.rate)).round() as u64;
    // Connect everything first, then start all schedules together.
    let mut connections = Vec::new();
    for _ in 0..config.connections {
        connections.push(Connection::open_with_headers(
            config.addr,
            "/",
            &config.headers,
            Duration::from_secs(5),
        )?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let stagger = interval / config.connections;
    let addr = config.addr;
    let handles: Vec<_> = connections
        .into_iter()
        .zip(0u32..)
        .map(|(connection, i)| {
            let first = start + stagger * i;
            let headers = config.headers.clone();
            thread::spawn(move || connection_loop(addr, &headers, connection, first, interval, per_connection))
        })
        .collect();
    let mut total = LatencyRun::default();
    for handle in handles {
        let run = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a latency thread panicked"))?;
        total.samples_ns.extend(run.samples_ns);
        total.errors += run.errors;
        total.late += run.late;
    }
    Ok(total)
}

fn connection_loop(
    addr: SocketAddr,
    headers: &[String],
    mut connection: Connection,
    first: Instant,
    interval: Duration,
    count: u64,
) -> LatencyRun {
    let mut run = LatencyRun {
        samples_ns: Vec::with_capacity(count as usize),
        ..LatencyRun::default()
    };
    let mut previous_done = first;
    let mut scheduled = first;
    for _ in 0..count {
        let now = Instant::now();
        if now < scheduled {
            thread::sleep(scheduled - now);
        }
        let sent = Instant::now();
        if sent > scheduled + interval {
            run.late += 1;
        }
        // On time (the previous response came before this request was due): measure from
        // the send. Late because of the server: measure from when it was due.
        let origin = if previous_done <= scheduled { sent } else { scheduled };
        let result = connection.send().and_then(|()| connection.receive());
        let done = Instant::now();
        previous_done = done;
        scheduled += interval;
        match result {
            Ok(response) if (200..300).contains(&response.status) => {
                run.samples_ns.push((done - origin).as_nanos() as u64);
                if response.close {
                    match Connection::open_with_headers(addr, "/", headers, Duration::from_secs(5)) {
                        Ok(fresh) => connection = fresh,
                        Err(_) => run.errors += 1,
                    }
                }
            }
            Ok(_) => run.errors += 1,
            Err(_) => {
                run.errors += 1;
                if let Ok(fresh) = Connection::open_with_headers(addr, "/", headers, Duration::from_secs(5)) {
                    connection = fresh;
                }
            }
        }
    }
    run
}

/// The `p`th percentile (0–100) of sorted `samples`, nearest-rank; `None` when empty.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50));
        assert_eq!(percentile(&samples, 99.0), Some(99));
        assert_eq!(percentile(&samples, 100.0), Some(100));
        assert_eq!(percentile(&samples, 0.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
