//! A `weft-controller` process: started (pinned) and stopped, its memory and CPU from
//! `/proc`, and what its log says about an intent change.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tonic::transport::{Channel, Endpoint};
use weft_api::pb;

use super::{CONTROLLER_CPU, MAX_MESSAGE, Setup};
use crate::bench::procs::{self, ChildGuard, CpuTicks, Supervisor};

/// A running `weft-controller`, stopped when dropped.
pub(super) struct ControllerProcess {
    children: Supervisor,
    index: usize,
    pid: u32,
    pub(super) grpc: SocketAddr,
    log: PathBuf,
    /// From spawning to the gRPC port accepting connections.
    pub(super) ready_after: Duration,
}

/// `VmRSS` and `VmHWM` of a process, in kB.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Memory {
    pub(super) rss_kb: u64,
    pub(super) hwm_kb: u64,
}

impl ControllerProcess {
    /// Starts a controller on `intent` (state in `dir`) and waits until its gRPC port
    /// accepts connections, which it does once the first compile is done.
    pub(super) fn start(setup: &Setup, dir: &Path, intent: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let [grpc_port, registry_port] = crate::bench::free_ports()?;
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc_port));
        // [setpriv --pdeathsig TERM] [taskset -c CPU] weft-controller: each execs the next, so
        // the child's pid is the controller's. The death signal goes out when the spawning
        // thread exits: this runs on the main thread (inside `block_on`).
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(setpriv) = &setup.setpriv {
            argv.extend([setpriv.as_os_str().into(), "--pdeathsig".into(), "TERM".into()]);
        }
        if let Some(taskset) = &setup.taskset {
            argv.extend([taskset.as_os_str().into(), "-c".into(), CONTROLLER_CPU.into()]);
        }
        argv.push(setup.controller.as_os_str().into());
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .arg("--intent-dir")
            .arg(intent)
            .arg("--filters-dir")
            .arg(&setup.filters)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--grpc")
            .arg(grpc.to_string())
            .arg("--registry")
            .arg(format!("127.0.0.1:{registry_port}"))
            .env("WEFT_LOG", "info");
        let log = dir.join("controller.log");
        let started = Instant::now();
        let mut children = Supervisor::default();
        let index = children.adopt(ChildGuard::spawn("weft-controller", command, &log)?);
        let child = children.get(index)?;
        let pid = child.pid();
        loop {
            child.check_running()?;
            if TcpStream::connect_timeout(&grpc, Duration::from_millis(200)).is_ok() {
                break;
            }
            if started.elapsed() > timeout {
                bail!(
                    "weft-controller did not listen on {grpc} within {timeout:?}; end of its log:\n{}",
                    child.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            children,
            index,
            pid,
            grpc,
            log,
            ready_after: started.elapsed(),
        })
    }

    /// Fails when the controller has exited.
    pub(super) fn check(&mut self) -> anyhow::Result<()> {
        self.children.get(self.index)?.check_running()
    }

    pub(super) fn memory(&self) -> anyhow::Result<Memory> {
        Ok(Memory {
            rss_kb: procs::tree_status_kb(self.pid, "VmRSS")?,
            hwm_kb: procs::tree_status_kb(self.pid, "VmHWM")?,
        })
    }

    pub(super) fn cpu(&self) -> anyhow::Result<CpuTicks> {
        procs::tree_cpu_ticks(self.pid)
    }

    pub(super) fn threads(&self) -> u64 {
        procs::tree_size(self.pid).1
    }

    /// The log's length now, to read what comes after with [`ControllerProcess::log_since`].
    pub(super) fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// The log from byte `offset` on.
    pub(super) fn log_since(&self, offset: u64) -> anyhow::Result<String> {
        let bytes = fs::read(&self.log).with_context(|| format!("reading {}", self.log.display()))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
        Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
    }

    /// A connection for the Status API.
    pub(super) async fn status_client(&self) -> anyhow::Result<pb::status_client::StatusClient<Channel>> {
        let channel = endpoint(self.grpc)?
            .connect()
            .await
            .context("connecting to the Status API")?;
        Ok(pb::status_client::StatusClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
    }

    /// Fails on any error diagnostic of the intent: the generated mesh must compile cleanly.
    pub(super) async fn check_diagnostics(&self) -> anyhow::Result<()> {
        let channel = endpoint(self.grpc)?
            .connect()
            .await
            .context("connecting to the Status API")?;
        let mut client = pb::status_client::StatusClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let diagnostics = client
            .list_diagnostics(pb::ListDiagnosticsRequest {})
            .await
            .context("ListDiagnostics")?
            .into_inner()
            .diagnostics;
        if let Some(first) = diagnostics.first() {
            bail!(
                "the generated intent has {} diagnostic(s), first: {} {}/{} {}: {}",
                diagnostics.len(),
                first.kind,
                first.namespace,
                first.name,
                first.field,
                first.message
            );
        }
        Ok(())
    }
}

/// The gRPC endpoint of a controller, configured like weft-proxy's.
pub(super) fn endpoint(grpc: SocketAddr) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(format!("http://{grpc}"))
        .context("the controller's address")?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// What the controller's log says about one intent change.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Stages {
    /// From the write to `intent changed` (the poll noticed the change and let it settle).
    pub(super) changed: Option<Duration>,
    /// From the write to `intent compiled`.
    pub(super) compiled: Option<Duration>,
    /// The `took=` of `intent compiled`: parsing every document, resolving, compiling.
    pub(super) took: Option<Duration>,
    /// From the write to the last `ACK` line.
    pub(super) last_ack: Option<Duration>,
    /// `ACK` lines.
    pub(super) acks: usize,
    /// `intent compiled` lines (1 unless the write was seen twice).
    compiles: usize,
}

/// Reads `log` (the controller's output after a write at `written`) into [`Stages`].
pub(super) fn stages(log: &str, written: SystemTime) -> Stages {
    let since = |line: &str| {
        let stamp = line.split_whitespace().next().and_then(parse_log_time)?;
        Some(stamp.duration_since(written).unwrap_or(Duration::ZERO))
    };
    let mut stages = Stages::default();
    for line in log.lines() {
        if line.contains(" intent changed") {
            stages.changed = stages.changed.or_else(|| since(line));
        } else if line.contains(" intent compiled") {
            stages.compiles += 1;
            if stages.compiled.is_none() {
                stages.compiled = since(line);
                stages.took = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("took="))
                    .and_then(parse_debug_duration);
            }
        } else if line.contains(" ACK ") || line.ends_with(" ACK") {
            stages.acks += 1;
            if let Some(at) = since(line) {
                stages.last_ack = Some(stages.last_ack.map_or(at, |last| last.max(at)));
            }
        }
    }
    stages
}

/// The `took=` of the first `intent compiled` line of `log`.
pub(super) fn first_took(log: &str) -> Option<Duration> {
    log.lines()
        .find(|line| line.contains(" intent compiled"))
        .and_then(|line| line.split_whitespace().find_map(|field| field.strip_prefix("took=")))
        .and_then(parse_debug_duration)
}

/// A tracing timestamp, `2026-11-26T11:56:46.123456Z`.
fn parse_log_time(stamp: &str) -> Option<SystemTime> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.splitn(3, ':').map(str::parse::<u64>);
    let (hour, minute, second) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let digits = fraction.len().min(9);
    let nanos = fraction.get(..digits)?.parse::<u64>().ok()? * 10u64.pow(9 - digits as u32);
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A `Duration`'s `Debug` form: `1.5s`, `12.3ms`, `950µs`, `42ns`.
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("µs").or_else(|| text.strip_suffix("us")) {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{first_took, parse_debug_duration, parse_log_time, stages};

    #[test]
    fn log_lines() {
        let at = |s: &str| parse_log_time(s).and_then(|t| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_micros()));
        assert_eq!(at("1970-01-01T00:00:01.000001Z"), Some(1_000_001));
        assert_eq!(at("2024-03-01T00:00:00.000000Z"), Some(1_709_251_200_000_000));
        assert_eq!(at("garbage"), None);
        assert_eq!(parse_debug_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_debug_duration("12.5ms"), Some(Duration::from_micros(12_500)));
        assert_eq!(parse_debug_duration("950µs"), Some(Duration::from_micros(950)));
        assert_eq!(parse_debug_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_debug_duration("soon"), None);

        let written = UNIX_EPOCH + Duration::from_secs(1_709_251_200);
        let log = "2024-03-01T00:00:00.120000Z  INFO weft_controller::source: intent changed dir=/x files=2\n\
                   2024-03-01T00:00:00.180000Z  INFO weft_controller::app: intent compiled intent=ab took=55.5ms diagnostics=0\n\
                   2024-03-01T00:00:00.300000Z  INFO weft_controller::server: ACK node=a version=1\n\
                   2024-03-01T00:00:00.250000Z  INFO weft_controller::server: ACK node=b version=2\n";
        let found = stages(log, written);
        assert_eq!(found.changed, Some(Duration::from_millis(120)));
        assert_eq!(found.compiled, Some(Duration::from_millis(180)));
        assert_eq!(found.took, Some(Duration::from_micros(55_500)));
        assert_eq!(found.last_ack, Some(Duration::from_millis(300)));
        assert_eq!((found.acks, found.compiles), (2, 1));
        assert_eq!(first_took(log), Some(Duration::from_micros(55_500)));
    }
}
