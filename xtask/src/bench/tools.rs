//! The external tools the benchmark runs, installed with apt when missing.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Absolute paths of the tools, and their versions for the report.
pub(crate) struct Tools {
    /// nginx, used as the origin and as a reverse proxy.
    pub(crate) nginx: PathBuf,
    /// HAProxy.
    pub(crate) haproxy: PathBuf,
    /// wrk, the closed-loop throughput load generator.
    pub(crate) wrk: PathBuf,
    /// h2load, a fixed-rate cross-check of latency.
    pub(crate) h2load: PathBuf,
    /// Whether this h2load has `--rps` (nghttp2 1.49 and later).
    pub(crate) h2load_rps: bool,
    /// `taskset`, for CPU pinning.
    pub(crate) taskset: PathBuf,
    /// `setpriv` (util-linux), for `--pdeathsig` when this machine has it.
    pub(crate) setpriv: Option<PathBuf>,
    /// One line per tool: `name: version`.
    pub(crate) versions: Vec<(String, String)>,
}

/// Binary name and the Debian package that ships it (nginx is picked at install time).
const WANTED: [(&str, &str); 4] = [
    ("nginx", "nginx"),
    ("haproxy", "haproxy"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
];

/// Finds the tools, installing the missing ones with `apt-get`.
pub(crate) fn ensure() -> anyhow::Result<Tools> {
    let missing: Vec<&(&str, &str)> = WANTED.iter().filter(|(bin, _)| find(bin).is_none()).collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|(bin, _)| *bin).collect();
        eprintln!("bench: missing {}; installing with apt-get", names.join(", "));
        install(&missing)?;
    }
    let path = |bin: &str| find(bin).with_context(|| format!("{bin} is still missing after installing it"));
    let nginx = path("nginx")?;
    let haproxy = path("haproxy")?;
    let wrk = path("wrk")?;
    let h2load = path("h2load")?;
    let taskset = path("taskset").context("taskset (util-linux) is needed for CPU pinning")?;
    let setpriv =
        find("setpriv").filter(|setpriv| capture(Command::new(setpriv).arg("--help")).contains("--pdeathsig"));
    let h2load_help = capture(Command::new(&h2load).arg("--help"));
    let versions = vec![
        ("nginx".to_owned(), first_line(&capture(Command::new(&nginx).arg("-v")))),
        (
            "haproxy".to_owned(),
            first_line(&capture(Command::new(&haproxy).arg("-v"))),
        ),
        ("wrk".to_owned(), first_line(&capture(Command::new(&wrk).arg("-v")))),
        (
            "h2load".to_owned(),
            first_line(&capture(Command::new(&h2load).arg("--version"))),
        ),
        (
            "rustc".to_owned(),
            first_line(&capture(Command::new("rustc").arg("--version"))),
        ),
    ];
    Ok(Tools {
        nginx,
        haproxy,
        wrk,
        h2load,
        h2load_rps: h2load_help.contains("--rps"),
        taskset,
        setpriv,
        versions,
    })
}

impl Tools {
    /// `taskset -c CPU program`, under `setpriv --pdeathsig TERM` when available so that the
    /// child gets SIGTERM should this process die without running its destructors (killed
    /// alone, rather than with its process group as Ctrl-C does). The signal is sent when
    /// the spawning *thread* exits: spawn only from the main thread.
    pub(crate) fn pinned(&self, cpu: &str, program: &Path) -> Command {
        let mut command = match &self.setpriv {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "TERM"]).arg(&self.taskset);
                command
            }
            None => Command::new(&self.taskset),
        };
        command.args(["-c", cpu]).arg(program);
        command
    }
}

/// Finds `bin`, installing `package` with `apt-get` when it is missing.
pub(crate) fn ensure_installed(bin: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = find(bin) {
        return Ok(path);
    }
    eprintln!("missing {bin}; installing {package} with apt-get");
    install(&[&(bin, package)])?;
    find(bin).with_context(|| format!("{bin} is still missing after installing {package}"))
}

/// Looks `bin` up in `PATH` and the sbin directories (which a non-root `PATH` may lack).
fn find(bin: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(bin))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `apt-get update` once, then `apt-get install -y` of the packages for `missing`.
fn install(missing: &[&(&str, &str)]) -> anyhow::Result<()> {
    if find("apt-get").is_none() {
        let packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
        bail!("apt-get not found: install {} by hand", packages.join(", "));
    }
    run(Command::new("apt-get").arg("update"))?;
    let mut packages = Vec::new();
    for (bin, package) in missing {
        if *bin == "nginx" {
            // nginx-light is the smallest build with the proxy module; some releases drop it.
            packages.push(if has_candidate("nginx-light") {
                "nginx-light"
            } else {
                "nginx"
            });
        } else {
            packages.push(package);
        }
    }
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&packages))
}

/// Whether apt has an installable version of `package`.
fn has_candidate(package: &str) -> bool {
    let policy = capture(Command::new("apt-cache").args(["policy", package]));
    policy
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .is_some_and(|candidate| candidate.trim() != "(none)")
}

/// Runs `command` with output passed through, failing on a non-zero exit.
fn run(command: &mut Command) -> anyhow::Result<()> {
    command.env("DEBIAN_FRONTEND", "noninteractive");
    let status = command.status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status}); are you root?");
    }
    Ok(())
}

/// Stdout and stderr of `command`, empty when it cannot run; its exit status is ignored
/// (`wrk -v` exits 1).
pub(crate) fn capture(command: &mut Command) -> String {
    match command.output() {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text
        }
        Err(_) => String::new(),
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}
