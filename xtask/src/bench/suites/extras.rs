//! `--suite wasm`'s measurements besides the table, made after the rounds with the other
//! targets idle:
//!
//! - **idle RSS**: weft-proxy on `--workers 2`, without filters and with the 3-filter Wasm
//!   chain, after startup and requests on fresh connections until every worker has created
//!   its VM of every filter (`weft_wasm_vms_created_total`), then 2 s idle: `VmRSS`, `VmHWM`,
//!   `RssAnon` and `RssFile` from `/proc/PID/status`.
//! - **swap latency**: weft-proxy (`--workers 1`, `WEFT_LOG=info`) serving the 3-filter chain
//!   plus a native `headers` filter that adds `x-weft-bench-config: vN`, under light load
//!   (a background connection at ~200 req/s). The snapshot file is replaced (written beside it
//!   and renamed over it) with the next `N`, and a probe connection sends a request every
//!   millisecond until a response carries the new value. Measured: the time from the rename to
//!   that response; the proxy's own `snapshot reloaded … took=` (reading and parsing the file,
//!   validating, building the new generation: every filter of the chain is rebuilt and its
//!   check VM started); and the probe request's own latency (the first request after a swap
//!   creates the worker's VMs of the new generation). First with the proxy finding the change
//!   by itself (it polls the file's mtime every second), then with a SIGHUP right after the
//!   rename, which is how a snapshot pushed to it would arrive without the poll.

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::super::http;
use super::super::procs::{self, Supervisor};
use super::super::tools::Tools;
use super::{Filter, metric, native_headers, start_weft, weft_snapshot};

/// Swaps per way of noticing the new snapshot.
const SWAPS: u32 = 5;
/// Fresh connections tried, at most, to reach every worker.
const MAX_CONNECTIONS: usize = 64;
/// The response header the swap changes.
const MARKER: &str = "x-weft-bench-config";

/// Idle RSS of one configuration.
pub(crate) struct IdleRss {
    /// What ran.
    pub(crate) label: &'static str,
    /// `--workers`.
    pub(crate) workers: usize,
    /// Connections opened (one request each) before measuring.
    pub(crate) connections: usize,
    /// Per Wasm filter, the VMs the workers created.
    pub(crate) vms: Vec<(String, f64)>,
    pub(crate) rss_kb: u64,
    pub(crate) hwm_kb: u64,
    pub(crate) anon_kb: u64,
    pub(crate) file_kb: u64,
}

/// One snapshot swap.
pub(crate) struct Swap {
    /// From the rename of the snapshot file to the first response showing it.
    pub(crate) visible: Duration,
    /// The proxy's `took=` for the reload, when its log line was found.
    pub(crate) took: Option<Duration>,
    /// Latency of the probe request that first showed the new snapshot.
    pub(crate) first_response: Duration,
    /// From the rename until `kill -HUP` returned, for swaps signalled with SIGHUP.
    pub(crate) signalled: Option<Duration>,
}

/// Everything [`run`] measured.
pub(crate) struct Extras {
    pub(crate) rss: Vec<IdleRss>,
    /// Swaps the proxy noticed by polling the file.
    pub(crate) poll: Vec<Swap>,
    /// Swaps signalled with SIGHUP right after the rename.
    pub(crate) hup: Vec<Swap>,
    /// The swapped snapshot's filters.
    pub(crate) swap_chain: Vec<String>,
    /// Background requests during the swaps, and how many failed.
    pub(crate) background: (u64, u64),
}

/// Runs the idle-RSS and swap measurements; `ports` holds 6 free ports.
pub(crate) fn run(
    children: &mut Supervisor,
    tools: &Tools,
    weft: &Path,
    dir: &Path,
    origin: u16,
    ports: &[u16],
    chain: &[Filter],
) -> anyhow::Result<Extras> {
    let [plain_port, plain_admin, wasm_port, wasm_admin, swap_port, swap_admin] = ports[..] else {
        bail!("extras need 6 ports");
    };
    let mut rss = Vec::new();
    for (label, filters, port, admin) in [
        ("weft, no filters", &[][..], plain_port, plain_admin),
        ("weft+3 wasm", chain, wasm_port, wasm_admin),
    ] {
        eprintln!("bench: idle RSS of {label} on --workers 2");
        let name = format!("idle-{port}");
        let snapshot = weft_snapshot(port, origin, filters, "idle")?;
        let started = start_weft(children, tools, weft, dir, &name, &snapshot, port, admin, 2, "warn")?;
        let names: Vec<String> = filters
            .iter()
            .filter(|f| matches!(f.code, super::Code::Wasm { .. }))
            .map(|f| f.name.to_owned())
            .collect();
        let mut connections = 0;
        let mut vms = Vec::new();
        while connections < MAX_CONNECTIONS {
            let response = http::get(started.addr, "/")?;
            if response.status != 200 {
                bail!("{label}: GET / answered {}", response.status);
            }
            connections += 1;
            vms = names
                .iter()
                .map(|n| {
                    let value = metric(started.admin, &format!("weft_wasm_vms_created_total{{filter=\"{n}\"}}"))?;
                    Ok((n.clone(), value.unwrap_or(0.0)))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Without filters there is nothing to see per worker: a few connections spread
            // over both workers' SO_REUSEPORT sockets.
            if connections >= 8 && vms.iter().all(|(_, v)| *v >= 2.0) {
                break;
            }
        }
        thread::sleep(Duration::from_secs(2));
        let pid = children.get(started.child)?.pid();
        rss.push(IdleRss {
            label,
            workers: 2,
            connections,
            vms,
            rss_kb: procs::tree_status_kb(pid, "VmRSS")?,
            hwm_kb: procs::tree_status_kb(pid, "VmHWM")?,
            anon_kb: procs::tree_status_kb(pid, "RssAnon")?,
            file_kb: procs::tree_status_kb(pid, "RssFile")?,
        });
    }

    eprintln!("bench: snapshot swaps ({SWAPS} found by polling, {SWAPS} with SIGHUP)");
    // The chain, then the marker: the snapshots differ only in the marker's value (and the
    // version string), but every update rebuilds every filter of the chain.
    let swap_chain = |n: u32| {
        let mut filters = chain.to_vec();
        filters.push(native_headers("marker", MARKER, &format!("v{n}")));
        filters
    };
    let snapshot = |n: u32| weft_snapshot(swap_port, origin, &swap_chain(n), &format!("swap-{n}"));
    let started = start_weft(
        children,
        tools,
        weft,
        dir,
        "swap",
        &snapshot(0)?,
        swap_port,
        swap_admin,
        1,
        "info",
    )?;
    let pid = children.get(started.child)?.pid();

    // Light background load for the whole swap phase.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let background = {
        let (stop, sent, failed, addr) = (stop.clone(), sent.clone(), failed.clone(), started.addr);
        thread::spawn(move || background_load(addr, &stop, &sent, &failed))
    };
    let result = (|| {
        let mut probe = Probe::open(started.addr)?;
        let mut poll = Vec::new();
        let mut hup = Vec::new();
        let mut n = 0;
        for signal in [false, true] {
            for _ in 0..SWAPS {
                n += 1;
                let swap = swap_once(
                    &started.config,
                    &started.log,
                    &snapshot(n)?,
                    n,
                    signal.then_some(pid),
                    &mut probe,
                )
                .with_context(|| format!("swap {n}"))?;
                eprintln!(
                    "bench:   swap {n} ({}): visible after {:.1} ms, proxy took {}, first response {:.2} ms",
                    if signal { "SIGHUP" } else { "poll" },
                    ms(swap.visible),
                    swap.took.map_or_else(|| "?".to_owned(), |t| format!("{:.2} ms", ms(t))),
                    ms(swap.first_response)
                );
                if signal { &mut hup } else { &mut poll }.push(swap);
                // After a SIGHUP the poll still sees the new mtime and reloads once more
                // within a second: let that pass before the next swap. The extra 0–0.9 s
                // moves the next write around the poll's 1 s cycle, so the polled swaps
                // sample the whole interval.
                thread::sleep(Duration::from_millis(1_300 + u64::from(n * 370 % 1_000)));
            }
        }
        anyhow::Ok((poll, hup))
    })();
    stop.store(true, Relaxed);
    let _ = background.join();
    let (poll, hup) = result?;
    Ok(Extras {
        rss,
        poll,
        hup,
        swap_chain: swap_chain(0).iter().map(Filter::describe).collect(),
        background: (sent.load(Relaxed), failed.load(Relaxed)),
    })
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Replaces the snapshot file with `contents` (version `swap-N`, marker `vN`), SIGHUPs
/// `signal` if given, and waits for responses and the log to show it.
fn swap_once(
    config: &Path,
    log: &Path,
    contents: &str,
    n: u32,
    signal: Option<u32>,
    probe: &mut Probe,
) -> anyhow::Result<Swap> {
    let log_offset = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let staged = config.with_extension("next");
    fs::write(&staged, contents).with_context(|| format!("writing {}", staged.display()))?;
    let wanted = format!("{MARKER}: v{n}");
    let written = Instant::now();
    fs::rename(&staged, config).with_context(|| format!("renaming onto {}", config.display()))?;
    let mut signalled = None;
    if let Some(pid) = signal {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running kill -HUP")?;
        if !status.success() {
            bail!("kill -HUP {pid} failed");
        }
        signalled = Some(written.elapsed());
    }
    let (visible, first_response) = loop {
        let sent = Instant::now();
        let head = probe.head()?;
        let done = Instant::now();
        if head.to_ascii_lowercase().contains(&wanted) {
            break (done - written, done - sent);
        }
        if written.elapsed() > Duration::from_secs(10) {
            bail!("responses still do not carry `{wanted}` 10 s after the snapshot was written");
        }
        thread::sleep(Duration::from_millis(1));
    };
    let version = format!("version=swap-{n} ");
    let deadline = Instant::now() + Duration::from_secs(3);
    let took = loop {
        let text = fs::read(log).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(log_offset as usize..).unwrap_or_default()).into_owned();
        let found = new
            .lines()
            .find(|l| l.contains("snapshot reloaded") && l.contains(&version))
            .and_then(|l| l.split("took=").nth(1))
            .and_then(|t| parse_debug_duration(t.split_whitespace().next().unwrap_or_default()));
        if found.is_some() || Instant::now() >= deadline {
            break found;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Swap {
        visible,
        took,
        first_response,
        signalled,
    })
}

/// A `Duration`'s `Debug` text (`850.2µs`, `4.1ms`, `1.2s`, `12ns`).
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let text = text.trim().trim_end_matches(',');
    let (number, scale) = if let Some(n) = text.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = text.strip_suffix("µs").or_else(|| text.strip_suffix("us")) {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let value: f64 = number.parse().ok()?;
    Duration::try_from_secs_f64(value * scale).ok()
}

/// ~200 req/s on one keep-alive connection (reconnecting after errors) until `stop`.
fn background_load(addr: SocketAddr, stop: &AtomicBool, sent: &AtomicU64, failed: &AtomicU64) {
    let mut connection = http::Connection::open(addr, "/", Duration::from_secs(2)).ok();
    while !stop.load(Relaxed) {
        let ok = match connection.as_mut() {
            Some(c) => c
                .send()
                .and_then(|()| c.receive())
                .is_ok_and(|r| r.status == 200 && !r.close),
            None => false,
        };
        sent.fetch_add(1, Relaxed);
        if !ok {
            failed.fetch_add(1, Relaxed);
            connection = http::Connection::open(addr, "/", Duration::from_secs(2)).ok();
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A keep-alive connection that returns each response's head as text.
struct Probe {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Probe {
    fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .context("setting a read timeout")?;
        let writer = stream.try_clone().context("cloning the socket")?;
        Ok(Self {
            addr,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// `GET /`; the status line and headers of the response (its body is read and dropped).
    /// Reconnects once when the connection was closed.
    fn head(&mut self) -> anyhow::Result<String> {
        match self.exchange() {
            Ok(head) => Ok(head),
            Err(_) => {
                *self = Self::open(self.addr)?;
                self.exchange()
            }
        }
    }

    fn exchange(&mut self) -> anyhow::Result<String> {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: weft-xtask-swap\r\n\r\n",
            self.addr
        );
        self.writer.write_all(request.as_bytes()).context("sending")?;
        let mut head = String::new();
        let mut length = 0;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).context("reading the response")? == 0 {
                bail!("connection closed");
            }
            if line.trim_end().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().context("content-length")?;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("transfer-encoding")
            {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
            head.push_str(&line);
        }
        if chunked {
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).context("reading a chunk size")?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or_default(), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                // The chunk and its CRLF; after the last (empty) one, the final CRLF
                // (trailers are not expected from the origin).
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).context("reading a chunk")?;
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body).context("reading the body")?;
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_debug_duration;

    #[test]
    fn debug_durations() {
        assert_eq!(parse_debug_duration("4.5ms"), Some(Duration::from_micros(4_500)));
        assert_eq!(parse_debug_duration("850µs"), Some(Duration::from_micros(850)));
        assert_eq!(parse_debug_duration("1.25s"), Some(Duration::from_millis(1_250)));
        assert_eq!(parse_debug_duration("12ns"), Some(Duration::from_nanos(12)));
        assert_eq!(parse_debug_duration("soon"), None);
    }
}
