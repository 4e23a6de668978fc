//! Child processes that never outlive the benchmark, and what `/proc` says about them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running child process, stopped (with all its descendants) when dropped.
///
/// Stopping sends SIGTERM, waits up to [`ChildGuard::GRACE`], then SIGKILLs the child and
/// every descendant still alive, so an nginx master's workers go too.
pub(crate) struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    /// How long a child may take to exit after SIGTERM before it is killed.
    const GRACE: Duration = Duration::from_secs(3);

    /// Spawns `command` with stdin closed and stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of the child's log, when the child has exited.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self
            .child
            .try_wait()
            .with_context(|| format!("polling {}", self.name))?
        {
            bail!(
                "{} exited ({status}); end of its log:\n{}",
                self.name,
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits for the child to exit by itself, killing it after `timeout`.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "{} did not finish within {timeout:?}; end of its log:\n{}",
                    self.name,
                    log_tail(&self.log)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's combined stdout and stderr so far.
    pub(crate) fn output(&self) -> anyhow::Result<String> {
        fs::read_to_string(&self.log).with_context(|| format!("reading {}", self.log.display()))
    }

    /// The end of the child's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Stops the child and its descendants; harmless when they have already exited.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id();
        let descendants = descendants(pid);
        signal("TERM", pid);
        let deadline = Instant::now() + Self::GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in descendants {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal("KILL", pid);
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Long-running children, stopped in reverse start order when dropped.
#[derive(Default)]
pub(crate) struct Supervisor {
    children: Vec<ChildGuard>,
}

impl Supervisor {
    /// Takes ownership of a started child; returns its index for [`Supervisor::get`].
    pub(crate) fn adopt(&mut self, child: ChildGuard) -> usize {
        self.children.push(child);
        self.children.len() - 1
    }

    /// The child at `index`.
    pub(crate) fn get(&mut self, index: usize) -> anyhow::Result<&mut ChildGuard> {
        self.children.get_mut(index).context("no such child process")
    }

    /// Fails when any child has exited.
    pub(crate) fn check_all(&mut self) -> anyhow::Result<()> {
        self.children.iter_mut().try_for_each(ChildGuard::check_running)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        while let Some(mut child) = self.children.pop() {
            child.stop();
        }
    }
}

/// Sends a signal with `kill(1)` (std only knows SIGKILL, and this crate has no libc).
fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The fields of `/proc/PID/stat` after the command name (field 3, the state, is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Every live descendant of `pid` (children, grandchildren, …).
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Some(ppid) = stat_fields(child).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok())) else {
                continue;
            };
            children.entry(ppid).or_default().push(child);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        for &child in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// `pid` and its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    pids.extend(descendants(pid));
    pids
}

/// CPU time in clock ticks, user and system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTicks {
    /// `utime`.
    pub(crate) user: u64,
    /// `stime`.
    pub(crate) system: u64,
}

impl CpuTicks {
    /// User plus system.
    pub(crate) fn total(self) -> u64 {
        self.user + self.system
    }

    /// The ticks used since `earlier`.
    pub(crate) fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    /// Adds `other` to these.
    pub(crate) fn add(&mut self, other: CpuTicks) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// CPU time (utime and stime of `/proc/PID/stat`) used by `pid` and its live descendants,
/// all threads included.
pub(crate) fn tree_cpu_ticks(pid: u32) -> anyhow::Result<CpuTicks> {
    let mut total = CpuTicks::default();
    for p in tree(pid) {
        let fields = stat_fields(p).with_context(|| format!("reading /proc/{p}/stat"))?;
        // utime and stime are fields 14 and 15 of /proc/PID/stat.
        let field = |index: usize| -> anyhow::Result<u64> {
            let value = fields
                .get(index)
                .with_context(|| format!("/proc/{p}/stat is too short"))?;
            value
                .parse::<u64>()
                .with_context(|| format!("/proc/{p}/stat field {}", index + 3))
        };
        total.user += field(11)?;
        total.system += field(12)?;
    }
    Ok(total)
}

/// A `kB` line (`VmRSS`, `VmHWM`) of `/proc/PID/status`, summed over `pid` and its
/// descendants.
pub(crate) fn tree_status_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for p in tree(pid) {
        let status =
            fs::read_to_string(format!("/proc/{p}/status")).with_context(|| format!("reading /proc/{p}/status"))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|l| l.strip_prefix(':')))
            .with_context(|| format!("no {key} in /proc/{p}/status"))?;
        let kb = line.trim().trim_end_matches("kB").trim();
        total += kb
            .parse::<u64>()
            .with_context(|| format!("{key} in /proc/{p}/status: {line:?}"))?;
    }
    Ok(total)
}

/// The number of processes in the tree rooted at `pid`, and of their threads.
pub(crate) fn tree_size(pid: u32) -> (usize, u64) {
    let pids = tree(pid);
    let threads = pids
        .iter()
        .filter_map(|p| fs::read_dir(format!("/proc/{p}/task")).ok())
        .map(|tasks| tasks.count() as u64)
        .sum();
    (pids.len(), threads)
}

/// Measures how much CPU processes other than this one and its descendants used over a
/// stretch of time: other people's builds on the same machine skew a benchmark.
pub(crate) struct ForeignProbe {
    busy: u64,
    own: u64,
    at: Instant,
}

impl ForeignProbe {
    /// Starts measuring.
    pub(crate) fn start() -> anyhow::Result<Self> {
        Ok(Self {
            busy: machine_busy_ticks()?,
            own: own_ticks()?,
            at: Instant::now(),
        })
    }

    /// CPU used by other processes since [`ForeignProbe::start`], in percent of one CPU.
    pub(crate) fn finish(&self, clk_tck: u64) -> anyhow::Result<f64> {
        let busy = machine_busy_ticks()?.saturating_sub(self.busy);
        let own = own_ticks()?.saturating_sub(self.own);
        let wall = self.at.elapsed().as_secs_f64() * clk_tck as f64;
        Ok(busy.saturating_sub(own) as f64 * 100.0 / wall.max(1.0))
    }
}

/// user + nice + system ticks of all CPUs, from /proc/stat (interrupt time left out: the
/// kernel may not charge it to any process).
fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|v| v.parse::<u64>().context("parsing /proc/stat"))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    Ok(fields.iter().sum())
}

/// CPU ticks of this process, its exited (waited-for) children and its live descendants.
fn own_ticks() -> anyhow::Result<u64> {
    let me = std::process::id();
    let fields = stat_fields(me).context("reading /proc/self/stat")?;
    // utime, stime, cutime, cstime: fields 14 to 17.
    let mut total = 0;
    for index in 11..=14 {
        let value = fields.get(index).context("/proc/self/stat is too short")?;
        total += value.parse::<i64>().context("parsing /proc/self/stat")?.max(0) as u64;
    }
    for pid in descendants(me) {
        // A descendant that exits meanwhile is simply left out.
        total += process_cpu_ticks(pid).unwrap_or(0);
    }
    Ok(total)
}

/// utime + stime of one process.
fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
