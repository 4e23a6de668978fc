//! The demo's child processes: each logs into `<logs>/<name>.log`, runs under
//! `setpriv --pdeathsig TERM` when available (so none outlives a demo killed outright), and
//! is stopped with SIGTERM (SIGKILL after a grace period) when the demo ends.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// How long children may take to exit after SIGTERM (the proxies drain for up to 5 s).
const GRACE: Duration = Duration::from_secs(10);

/// The running children, stopped (the last started first) when dropped.
pub(super) struct Processes {
    /// Where their logs go.
    dir: PathBuf,
    children: Vec<Process>,
    /// `setpriv`, when installed.
    setpriv: Option<PathBuf>,
}

/// One child process.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Process {
    /// Its exit status, once it has exited.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
        }
        self.status
    }

    /// Sends SIGTERM unless it has exited (and so was reaped: the pid is still this child's).
    fn terminate(&mut self) {
        if self.poll().is_none() {
            let _ = Command::new("sh")
                .args(["-c", "kill -s TERM \"$1\" 2>/dev/null", "sh"])
                .arg(self.child.id().to_string())
                .stdin(Stdio::null())
                .status();
        }
    }
}

impl Processes {
    /// No children yet; logs will go to `dir`.
    pub(super) fn new(dir: PathBuf) -> Self {
        let setpriv = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("setpriv"))
                .find(|path| path.is_file())
        });
        Self {
            dir,
            children: Vec::new(),
            setpriv,
        }
    }

    /// The directory of the logs.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `program` with stdin closed and its output in `<dir>/<name>.log`, with
    /// `WEFT_LOG` and `RUST_LOG` at `info` unless the environment says otherwise.
    pub(super) fn spawn(&mut self, name: &str, program: &Path, args: &[OsString]) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().with_context(|| format!("opening {}", log.display()))?;
        let mut command = match &self.setpriv {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "TERM"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        for var in ["WEFT_LOG", "RUST_LOG"] {
            if std::env::var_os(var).is_none() {
                command.env(var, "info");
            }
        }
        command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        self.children.push(Process {
            name: name.to_owned(),
            child,
            log,
            status: None,
        });
        Ok(())
    }

    /// The first child found to have exited, with its status.
    pub(super) fn first_exited(&mut self) -> Option<(String, ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|p| p.poll().map(|status| (p.name.clone(), status)))
    }

    /// Whether every child has exited.
    pub(super) fn all_exited(&mut self) -> bool {
        self.children.iter_mut().all(|p| p.poll().is_some())
    }

    /// Sends SIGTERM to every child still running (the last started first), waits up to
    /// [`GRACE`] for all of them, then kills the rest. Returns a line per child saying how it
    /// ended, and whether it ended cleanly (exit status 0, within the grace period), in start
    /// order.
    pub(super) fn stop_all(&mut self) -> Vec<(String, bool)> {
        let already: Vec<bool> = self.children.iter_mut().map(|p| p.poll().is_some()).collect();
        for child in self.children.iter_mut().rev() {
            child.terminate();
        }
        let deadline = Instant::now() + GRACE;
        while !self.all_exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.children
            .iter_mut()
            .zip(already)
            .map(|(p, already)| match p.poll() {
                Some(status) if already => (format!("{}: {status}", p.name), status.success()),
                Some(status) => (format!("{}: stopped, {status}", p.name), status.success()),
                None => {
                    let _ = p.child.kill();
                    p.status = p.child.wait().ok();
                    (
                        format!("{}: killed after {GRACE:?} without exiting on SIGTERM", p.name),
                        false,
                    )
                }
            })
            .collect()
    }

    /// The end of the log of the child `name`.
    pub(super) fn log_tail(&self, name: &str) -> String {
        self.children
            .iter()
            .find(|p| p.name == name)
            .map(|p| tail(&p.log, 40))
            .unwrap_or_default()
    }

    /// The end of every child's log, each under a header.
    pub(super) fn logs(&self) -> String {
        self.children
            .iter()
            .map(|p| format!("----- {} ({}) -----\n{}\n", p.name, p.log.display(), tail(&p.log, 40)))
            .collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
