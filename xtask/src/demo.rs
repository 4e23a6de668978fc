//! `cargo xtask demo`: the local mesh on one machine.
//!
//! The controller runs in local mode on a directory of intent (a working copy of
//! `examples/mesh/*.yaml` with the ports filled in), every workload with a sidecar gets a
//! `weft-proxy` that takes its configuration from the controller's config stream, and the
//! applications are small HTTP servers on threads of this process:
//!
//! ```text
//!   curl -x 127.0.0.1:15001 ─▶ productpage sidecar ─┬─▶ reviews-v1 sidecar ─▶ reviews-v1 app
//!   (productpage's HTTP_PROXY)   (outbound listener) ├─▶ reviews-v2 app (no sidecar)
//!                                                    ├─▶ ratings sidecar ─▶ ratings app
//!                                                    └─▶ productpage sidecar (inbound) ─▶ productpage app
//!                                                          (which calls reviews through its sidecar)
//!   weft-controller :15010 ── config stream ─▶ every sidecar;   weftctl status ─▶ :15010
//! ```
//!
//! Interactive (the default): fixed ports (listed in `examples/mesh/README.md`), prints what
//! to try, runs until Ctrl-C, then waits for every child to stop (SIGTERM to any still
//! running after 3 s). `--smoke` (CI): the same on free ports; checks routing by header, a
//! live edit of the VirtualService and that every sidecar is in sync, stops everything and
//! exits (nonzero, with the children's logs, on failure).
//!
//! Ctrl-C: std cannot catch SIGINT, so the interactive demo, once built, re-runs itself
//! through `sh -c "trap '' INT; exec …"` and so ignores SIGINT. A Ctrl-C then reaches only
//! the children (they share the terminal's process group), which shut down on it; the demo
//! sees them exit, stops whatever still runs with SIGTERM and waits for each. Each child also
//! runs under `setpriv --pdeathsig TERM` when available, so none outlives a demo that is
//! killed outright.

#![allow(clippy::print_stdout, reason = "the demo talks to the person running it")]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Set in the environment of the demo re-run with SIGINT ignored: the binaries are built and
/// the fixed ports were free.
const REEXECUTED: &str = "WEFT_DEMO_SIGINT_IGNORED";

/// The namespace of every workload.
const NAMESPACE: &str = "default";

/// The controller's gRPC port (config stream and status) in the interactive demo.
const CONTROLLER_PORT: u16 = 15010;

/// The embedded registry's port in the interactive demo.
const REGISTRY_PORT: u16 = 15012;

/// How long the sidecars may take to get their first snapshot and serve it (modules are
/// fetched and compiled on a cold cache the first time).
const STARTUP: Duration = Duration::from_secs(90);

/// How long a child may take to exit after SIGTERM (the proxies drain for up to 5 s).
const GRACE: Duration = Duration::from_secs(10);

/// The ports of one sidecar.
#[derive(Debug, Clone, Copy)]
struct SidecarPorts {
    /// Admin API (`/ready`, `/config_dump`, `/stats/prometheus`).
    admin: u16,
    /// Outbound listener: the application's `HTTP_PROXY`.
    outbound: u16,
    /// Inbound listener: where peers reach the workload.
    inbound: u16,
}

/// One workload of `examples/mesh/workloads.yaml`, with its ports in the interactive demo.
struct WorkloadSpec {
    /// The Workload's name, which its sidecar presents as its node id.
    name: &'static str,
    /// Its `app` label.
    app: &'static str,
    /// Its `version` label.
    version: &'static str,
    /// Its service account.
    service_account: &'static str,
    /// Prefix of its placeholders in the intent: `${<VAR>_APP}`, `${<VAR>_INBOUND}`,
    /// `${<VAR>_OUTBOUND}`.
    var: &'static str,
    /// The application's port.
    app_port: u16,
    /// The sidecar's ports; `None`: no sidecar, peers reach the application directly.
    sidecar: Option<SidecarPorts>,
}

/// The demo's workloads. Sidecar ports follow Istio's (admin `15000`, outbound `15001`,
/// inbound `15006`), shifted by 100 per sidecar; applications listen on 9081–9084 (each
/// Service's port, 9080, is virtual).
const WORKLOADS: [WorkloadSpec; 4] = [
    WorkloadSpec {
        name: "productpage",
        app: "productpage",
        version: "v1",
        service_account: "bookinfo-productpage",
        var: "PRODUCTPAGE",
        app_port: 9081,
        sidecar: Some(SidecarPorts {
            admin: 15000,
            outbound: 15001,
            inbound: 15006,
        }),
    },
    WorkloadSpec {
        name: "reviews-v1",
        app: "reviews",
        version: "v1",
        service_account: "bookinfo-reviews",
        var: "REVIEWS_V1",
        app_port: 9082,
        sidecar: Some(SidecarPorts {
            admin: 15100,
            outbound: 15101,
            inbound: 15106,
        }),
    },
    WorkloadSpec {
        name: "reviews-v2",
        app: "reviews",
        version: "v2",
        service_account: "bookinfo-reviews",
        var: "REVIEWS_V2",
        app_port: 9083,
        sidecar: None,
    },
    WorkloadSpec {
        name: "ratings",
        app: "ratings",
        version: "v1",
        service_account: "bookinfo-ratings",
        var: "RATINGS",
        app_port: 9084,
        sidecar: Some(SidecarPorts {
            admin: 15200,
            outbound: 15201,
            inbound: 15206,
        }),
    },
];

/// The client workload: its sidecar's outbound listener is what the user curls through.
const CLIENT: &str = "productpage";

/// Runs the demo; with `--smoke`, checks it and returns.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut smoke = false;
    for arg in args {
        match arg.as_str() {
            "--smoke" => smoke = true,
            other => bail!("demo: unknown argument `{other}` (usage: cargo xtask demo [--smoke])"),
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir));
    let bins = Binaries::new(&target);
    let filters_dir = root.join("target/filters/wasm32-wasip1/release");
    let reexecuted = std::env::var_os(REEXECUTED).is_some();
    if !reexecuted {
        println!("building weft-proxy, weft-controller, weftctl and the router, retry, fault and telemetry filters");
        build(root)?;
    }
    if smoke {
        let dir = std::env::temp_dir().join(format!("weft-demo-smoke-{}", std::process::id()));
        let outcome = smoke_run(root, &bins, &filters_dir, &dir);
        match &outcome {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(_) => eprintln!("the demo's files are kept in {}", dir.display()),
        }
        return outcome;
    }
    if !reexecuted {
        check_ports_free()?;
        return reexec_ignoring_sigint(args);
    }
    interactive(root, &bins, &filters_dir, &target.join("demo"))
}

/// Paths of the workspace binaries the demo runs.
struct Binaries {
    proxy: PathBuf,
    controller: PathBuf,
    weftctl: PathBuf,
}

impl Binaries {
    /// The dev-profile binaries under `target`.
    fn new(target: &Path) -> Self {
        let debug = target.join("debug");
        Self {
            proxy: debug.join("weft-proxy"),
            controller: debug.join("weft-controller"),
            weftctl: debug.join("weftctl"),
        }
    }
}

/// Builds the binaries (dev profile) and the filters the demo needs (release, wasm32-wasip1,
/// into `target/filters`).
fn build(root: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--quiet",
            "-p",
            "weft-proxy",
            "-p",
            "weft-controller",
            "-p",
            "weftctl",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building weft-proxy, weft-controller and weftctl failed");
    }
    let status = Command::new(&cargo)
        .current_dir(root.join("filters"))
        .env("CARGO_TARGET_DIR", root.join("target/filters"))
        .args(["build", "--quiet", "--release", "--locked", "--target", "wasm32-wasip1"])
        .args(["-p", "router", "-p", "retry", "-p", "fault", "-p", "telemetry"])
        .status()
        .context("running cargo build for the filters")?;
    if !status.success() {
        bail!("building the filters failed");
    }
    Ok(())
}

/// Fails, naming the port, when a fixed port of the interactive demo is taken (another demo
/// still running, or anything else).
fn check_ports_free() -> Result<()> {
    let mut ports = vec![CONTROLLER_PORT, REGISTRY_PORT];
    for workload in &WORKLOADS {
        ports.push(workload.app_port);
        if let Some(sidecar) = workload.sidecar {
            ports.extend([sidecar.admin, sidecar.outbound, sidecar.inbound]);
        }
    }
    for port in ports {
        if let Err(error) = TcpListener::bind(("127.0.0.1", port)) {
            bail!(
                "port {port} is not free ({error}); is another demo running? \
                 (`ss -ltnp 'sport = :{port}'` shows who holds it)"
            );
        }
    }
    Ok(())
}

/// Replaces this process with itself run through `sh -c "trap '' INT; exec …"`, so that it
/// ignores SIGINT (see the module docs). Returns only on failure.
fn reexec_ignoring_sigint(args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let error = Command::new("sh")
        .arg("-c")
        .arg("trap '' INT; exec \"$0\" \"$@\"")
        .arg(exe)
        .arg("demo")
        .args(args)
        .env(REEXECUTED, "1")
        .exec();
    Err(error).context("re-running the demo through sh")
}

/// The interactive demo: fixed ports, a working directory under `target/demo`, until Ctrl-C.
fn interactive(root: &Path, bins: &Binaries, filters_dir: &Path, dir: &Path) -> Result<()> {
    let mut mesh = Mesh::start(root, bins, filters_dir, dir, false)?;
    let client = mesh.sidecar(CLIENT)?;
    // The first request routed end to end: the printed commands work from now on.
    expect(
        client.outbound,
        "reviews:9080",
        "/reviews/1",
        &[],
        "reviews-v1:",
        STARTUP,
    )
    .map_err(|e| mesh.with_logs(e))?;
    print!("{}", mesh.banner(root, bins));
    let _ = std::io::stdout().flush();
    mesh.supervise()
}

/// The smoke check (`--smoke`): free ports, a working directory in `dir`.
fn smoke_run(root: &Path, bins: &Binaries, filters_dir: &Path, dir: &Path) -> Result<()> {
    let mut mesh = Mesh::start(root, bins, filters_dir, dir, true)?;
    if let Err(error) = smoke_checks(&mesh, bins) {
        let error = mesh.with_logs(error);
        mesh.stop();
        return Err(error);
    }
    let stopped = mesh.stop();
    let unclean: Vec<&str> = stopped
        .iter()
        .filter(|(_, clean)| !clean)
        .map(|(line, _)| line.as_str())
        .collect();
    if !unclean.is_empty() {
        bail!(
            "not every process stopped cleanly on SIGTERM:\n  {}",
            unclean.join("\n  ")
        );
    }
    println!("ok  every process stopped cleanly on SIGTERM\ndemo smoke check passed");
    Ok(())
}

/// What `--smoke` checks, through the client sidecar as a user would.
fn smoke_checks(mesh: &Mesh, bins: &Binaries) -> Result<()> {
    let client = mesh.sidecar(CLIENT)?;
    let proxy = client.outbound;
    let started = Instant::now();
    expect(proxy, "reviews:9080", "/reviews/1", &[], "reviews-v1:", STARTUP)?;
    println!(
        "ok  anonymous   GET http://reviews:9080/reviews/1 -> reviews-v1 (first answer after {:.1?})",
        started.elapsed()
    );
    let jason = [("end-user", "jason")];
    let quick = Duration::from_secs(10);
    expect(proxy, "reviews:9080", "/reviews/1", &jason, "reviews-v2:", quick)?;
    println!("ok  end-user: jason GET http://reviews:9080/reviews/1 -> reviews-v2");
    expect(proxy, "ratings:9080", "/ratings/1", &[], "ratings:", quick)?;
    println!("ok  GET http://ratings:9080/ratings/1 -> ratings, through its sidecar");
    let page = expect(proxy, "productpage:9080", "/productpage", &jason, "productpage:", quick)?;
    if !page.body.contains("-> reviews-v2:") {
        bail!("productpage did not get reviews v2 for jason:\n{}", page.body);
    }
    println!("ok  end-user: jason GET http://productpage:9080/productpage -> productpage -> reviews-v2");

    let stats = get(client.admin, "/stats/prometheus", "admin", &[])?.body;
    if !stats.contains("istio_requests_total{filter=\"default.telemetry-client\",reporter=\"source\"") {
        bail!("productpage's sidecar has no client-side istio_requests_total:\n{stats}");
    }
    // Every sidecar's inbound listener served a request: each app was reached through it.
    for sidecar in &mesh.sidecars {
        let stats = get(sidecar.ports.admin, "/stats/prometheus", "admin", &[])?.body;
        if !stats.contains("istio_requests_total{filter=\"default.telemetry-server\",reporter=\"destination\"") {
            bail!(
                "{}'s sidecar has no server-side istio_requests_total:\n{stats}",
                sidecar.name
            );
        }
    }
    println!("ok  the telemetry plugins count requests on the client side and in every sidecar's inbound");

    // Every sidecar got its SPIFFE certificate from the controller's CA.
    for sidecar in &mesh.sidecars {
        let found = eventually(quick, || {
            let certs = get(sidecar.ports.admin, "/certs", "admin", &[]).ok()?.body;
            certs.contains("spiffe://cluster.local/ns/default/sa/").then_some(certs)
        });
        if found.is_none() {
            bail!("{}'s sidecar has no workload certificate at /certs", sidecar.name);
        }
    }
    println!("ok  every sidecar holds its SPIFFE certificate from the controller's CA (admin /certs)");

    let sidecars: Vec<&str> = mesh.sidecars.iter().map(|s| s.name).collect();
    let synced = || {
        let text = weftctl_status(bins, mesh.grpc).ok()?;
        all_synced(&text, &sidecars).then_some(text)
    };
    let Some(status) = eventually(quick, synced) else {
        bail!(
            "weftctl status does not show every sidecar SYNCED without problems:\n{}",
            weftctl_status(bins, mesh.grpc)?
        );
    };
    println!("ok  weftctl status: every sidecar SYNCED, no problems in the intent\n{status}");

    let file = mesh.intent.join("virtual-service-reviews.yaml");
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let edited = text.replace("subset: v1", "subset: v2");
    if edited == text {
        bail!("{} has no `subset: v1` to edit", file.display());
    }
    let at = Instant::now();
    std::fs::write(&file, edited).with_context(|| format!("writing {}", file.display()))?;
    let moved = eventually(Duration::from_secs(5), || {
        get(proxy, "http://reviews:9080/reviews/1", "reviews:9080", &[])
            .ok()
            .filter(|r| r.body.starts_with("reviews-v2:"))
    });
    if moved.is_none() {
        bail!(
            "anonymous traffic did not move to reviews v2 within 5 s of editing {}",
            file.display()
        );
    }
    println!(
        "ok  edited virtual-service-reviews.yaml (subset v1 -> v2): anonymous traffic on reviews-v2 after {:.1?}",
        at.elapsed()
    );
    if eventually(quick, synced).is_none() {
        bail!(
            "after the edit, weftctl status does not show every sidecar SYNCED:\n{}",
            weftctl_status(bins, mesh.grpc)?
        );
    }
    println!("ok  weftctl status: every sidecar SYNCED on the edited intent");
    Ok(())
}

/// Whether `weftctl status` output lists every sidecar, connected and SYNCED, and no
/// problems in the intent.
fn all_synced(status: &str, sidecars: &[&str]) -> bool {
    let synced = |name: &str| {
        status.lines().any(|line| {
            line.split_whitespace().next() == Some(name) && line.contains("SYNCED") && !line.contains("disconnected")
        })
    };
    sidecars.iter().all(|name| synced(name)) && status.contains(", 0 problem(s)")
}

/// `weftctl status` against the controller.
fn weftctl_status(bins: &Binaries, grpc: u16) -> Result<String> {
    let output = Command::new(&bins.weftctl)
        .args(["status", "--controller", &format!("127.0.0.1:{grpc}")])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bins.weftctl.display()))?;
    if !output.status.success() {
        bail!(
            "weftctl status failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A sidecar of the running demo.
struct RunningSidecar {
    name: &'static str,
    ports: SidecarPorts,
}

/// The running demo: its sample applications (threads of this process), the controller
/// and the sidecars (child processes, stopped when dropped).
struct Mesh {
    dir: PathBuf,
    intent: PathBuf,
    grpc: u16,
    registry: u16,
    sidecars: Vec<RunningSidecar>,
    apps: Vec<(&'static str, u16)>,
    processes: Processes,
}

impl Mesh {
    /// Starts everything; `smoke` puts every port on a free one.
    fn start(root: &Path, bins: &Binaries, filters_dir: &Path, dir: &Path, smoke: bool) -> Result<Self> {
        // A fresh working directory: a sidecar would otherwise start from the snapshot an
        // earlier run left in its state directory.
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing the old {}", dir.display()))?;
        }
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let port = |fixed: u16| if smoke { free_port() } else { Ok(fixed) };

        let (grpc, registry) = (port(CONTROLLER_PORT)?, port(REGISTRY_PORT)?);
        let mut sidecars = Vec::new();
        for workload in &WORKLOADS {
            if let Some(fixed) = workload.sidecar {
                sidecars.push(RunningSidecar {
                    name: workload.name,
                    ports: SidecarPorts {
                        admin: port(fixed.admin)?,
                        outbound: port(fixed.outbound)?,
                        inbound: port(fixed.inbound)?,
                    },
                });
            }
        }
        let client = sidecars
            .iter()
            .find(|s| s.name == CLIENT)
            .map(|s| s.ports.outbound)
            .context("the client workload has no sidecar")?;

        let mut vars = BTreeMap::new();
        vars.insert("FILTERS_DIR".to_owned(), filters_dir.display().to_string());
        let mut apps = Vec::new();
        for workload in &WORKLOADS {
            // productpage calls reviews through its sidecar, as Bookinfo's does.
            let calls = (workload.name == CLIENT).then_some(client);
            let app_port = sample_app(workload.name, if smoke { 0 } else { workload.app_port }, calls)?;
            apps.push((workload.name, app_port));
            vars.insert(format!("{}_APP", workload.var), app_port.to_string());
            if let Some(sidecar) = sidecars.iter().find(|s| s.name == workload.name) {
                vars.insert(format!("{}_INBOUND", workload.var), sidecar.ports.inbound.to_string());
                vars.insert(format!("{}_OUTBOUND", workload.var), sidecar.ports.outbound.to_string());
            }
        }
        let intent = dir.join("intent");
        write_intent(&root.join("examples/mesh"), &intent, &vars)?;

        let mut mesh = Self {
            dir: dir.to_owned(),
            intent,
            grpc,
            registry,
            sidecars,
            apps,
            processes: Processes::new(logs),
        };
        if let Err(error) = mesh.spawn_all(bins, filters_dir) {
            return Err(mesh.with_logs(error));
        }
        Ok(mesh)
    }

    /// Starts the controller, then every sidecar, and waits for their listeners.
    fn spawn_all(&mut self, bins: &Binaries, filters_dir: &Path) -> Result<()> {
        let mut args: Vec<OsString> = vec!["--intent-dir".into(), self.intent.clone().into()];
        args.extend(["--filters-dir".into(), filters_dir.as_os_str().to_owned()]);
        args.extend(["--data-dir".into(), self.dir.join("controller").into()]);
        args.extend(["--grpc".into(), format!("127.0.0.1:{}", self.grpc).into()]);
        args.extend(["--registry".into(), format!("127.0.0.1:{}", self.registry).into()]);
        self.processes.spawn("controller", &bins.controller, &args)?;
        self.wait_listening("controller", "gRPC", self.grpc)?;

        for workload in &WORKLOADS {
            let Some(sidecar) = self.sidecars.iter().find(|s| s.name == workload.name) else {
                continue;
            };
            let state = self.dir.join("sidecars").join(workload.name);
            let mut args: Vec<OsString> = Vec::new();
            let mut flag = |name: &str, value: OsString| {
                args.push(name.into());
                args.push(value);
            };
            flag("--controller", format!("http://127.0.0.1:{}", self.grpc).into());
            flag("--node-id", workload.name.into());
            flag("--namespace", NAMESPACE.into());
            flag("--service-account", workload.service_account.into());
            flag("--node-label", format!("app={}", workload.app).into());
            flag("--node-label", format!("version={}", workload.version).into());
            // The workload certificate from the controller's CA (see /certs on the admin API).
            flag(
                "--bootstrap-token",
                self.dir
                    .join(format!("controller/bootstrap/{NAMESPACE}/{}.token", workload.name))
                    .into(),
            );
            flag("--admin", format!("127.0.0.1:{}", sidecar.ports.admin).into());
            flag("--workers", "1".into());
            flag("--state-dir", state.clone().into());
            flag("--module-dir", state.join("modules").into());
            // A debug build sharing two cores with four other processes: room for a slow call.
            flag("--wasm-deadline", "250ms".into());
            self.processes
                .spawn(&format!("sidecar-{}", workload.name), &bins.proxy, &args)?;
        }
        // The listeners open once a sidecar has its first snapshot.
        let listeners: Vec<(&str, u16, u16)> = self
            .sidecars
            .iter()
            .map(|s| (s.name, s.ports.outbound, s.ports.inbound))
            .collect();
        for (name, outbound, inbound) in listeners {
            self.wait_listening(name, "outbound listener", outbound)?;
            self.wait_listening(name, "inbound listener", inbound)?;
        }
        Ok(())
    }

    /// Waits until something accepts connections on `port`, failing early when a child died.
    fn wait_listening(&mut self, who: &str, what: &str, port: u16) -> Result<()> {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some((name, status)) = self.processes.first_exited() {
                bail!("{name} exited ({status}) while waiting for {who}'s {what} on {address}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{who}'s {what} did not open on {address} within {STARTUP:?}")
    }

    /// The ports of the sidecar of workload `name`.
    fn sidecar(&self, name: &str) -> Result<SidecarPorts> {
        self.sidecars
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.ports)
            .with_context(|| format!("no sidecar for {name}"))
    }

    /// `error` (with its causes) followed by the end of every child's log.
    fn with_logs(&self, error: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!("{error:#}\n\nthe end of each process's log:\n{}", self.processes.logs())
    }

    /// Stops every child (sidecars first); returns one line per child and whether it
    /// stopped cleanly.
    fn stop(&mut self) -> Vec<(String, bool)> {
        self.processes.stop_all()
    }

    /// What the interactive demo prints once it serves.
    fn banner(&self, root: &Path, bins: &Binaries) -> String {
        let mut out = String::from("\nweft mesh demo is running (Ctrl-C to stop)\n\n");
        out.push_str(&format!(
            "  controller          127.0.0.1:{} (config stream, status)   registry 127.0.0.1:{}\n",
            self.grpc, self.registry
        ));
        for (name, app) in &self.apps {
            match self.sidecars.iter().find(|s| s.name == *name) {
                Some(s) => out.push_str(&format!(
                    "  {name:<12}        app 127.0.0.1:{app}   sidecar: inbound :{}  outbound :{}  admin http://127.0.0.1:{}\n",
                    s.ports.inbound, s.ports.outbound, s.ports.admin
                )),
                None => out.push_str(&format!("  {name:<12}        app 127.0.0.1:{app}   no sidecar\n")),
            }
        }
        let client = self.sidecars.iter().find(|s| s.name == CLIENT).map(|s| s.ports);
        let (proxy, admin) = client.map_or((0, 0), |p| (p.outbound, p.admin));
        let intent = self.intent.display();
        let logs = self.processes.dir.display();
        let vs = "virtual-service-reviews.yaml";
        out.push_str(&format!(
            "\n  HTTP_PROXY          http://127.0.0.1:{proxy}   (productpage's sidecar)\
             \n  intent (watched)    {intent}/\
             \n  logs                {logs}/\n\
             \ntry:\
             \n  curl -x http://127.0.0.1:{proxy} http://reviews:9080/reviews/1                          # v1\
             \n  curl -x http://127.0.0.1:{proxy} -H 'end-user: jason' http://reviews:9080/reviews/1     # v2\
             \n  curl -x http://127.0.0.1:{proxy} -H 'end-user: jason' http://productpage:9080/productpage\
             \n  curl -x http://127.0.0.1:{proxy} http://ratings:9080/ratings/1\
             \n  {weftctl} status                          # every sidecar's sync state, the intent's problems\
             \n  curl -s http://127.0.0.1:{admin}/stats/prometheus | grep '^istio_requests_total'\
             \n  curl -s http://127.0.0.1:{admin}/certs          # the sidecar's SPIFFE certificate\
             \n  tail -f {logs}/sidecar-reviews-v1.log     # the server side's access log\n\
             \nmove everyone to reviews v2 (the sidecars follow within a second), and back:\
             \n  sed -i 's/subset: v1/subset: v2/' {intent}/{vs}\
             \n  cp {examples}/{vs} {intent}/\n\n",
            weftctl = bins.weftctl.display(),
            examples = root.join("examples/mesh").display(),
        ));
        out
    }

    /// Runs until a child exits. After a Ctrl-C every child exits by itself (it reached
    /// them all); otherwise the one that exited failed, and the rest are stopped.
    fn supervise(&mut self) -> Result<()> {
        let (name, status) = loop {
            if let Some(exited) = self.processes.first_exited() {
                break exited;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let all_gone = eventually(Duration::from_secs(3), || self.processes.all_exited().then_some(())).is_some();
        if all_gone {
            println!("\nstopping the demo");
        } else {
            println!("\n{name} exited ({status}); stopping the demo");
        }
        let stopped = self.stop();
        for (line, _) in &stopped {
            println!("  {line}");
        }
        if !all_gone {
            bail!(
                "{name} exited unexpectedly ({status}); the end of its log:\n{}",
                self.processes.log_tail(&name)
            );
        }
        Ok(())
    }
}

/// Copies `examples/mesh/*.yaml` into `intent` with the `${NAME}` placeholders filled in.
fn write_intent(examples: &Path, intent: &Path, vars: &BTreeMap<String, String>) -> Result<()> {
    std::fs::create_dir_all(intent).with_context(|| format!("creating {}", intent.display()))?;
    let entries = std::fs::read_dir(examples).with_context(|| format!("listing {}", examples.display()))?;
    let mut copied = 0;
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", examples.display()))?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let filled = fill(&text, vars).with_context(|| format!("filling in {}", path.display()))?;
        let name = path.file_name().context("a file without a name")?;
        let out = intent.join(name);
        std::fs::write(&out, filled).with_context(|| format!("writing {}", out.display()))?;
        copied += 1;
    }
    if copied == 0 {
        bail!("no intent (*.yaml) in {}", examples.display());
    }
    Ok(())
}

/// Replaces every `${NAME}` in `template` by its value; an unknown name is an error.
fn fill(template: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = out.find("${") {
        let rest = &out[at..];
        let placeholder = rest.find('}').map_or(rest, |end| &rest[..=end]);
        bail!("unknown placeholder {placeholder}");
    }
    Ok(out)
}

/// The demo's child processes, each logging into `dir/<name>.log`; stopped in reverse start
/// order when dropped.
struct Processes {
    dir: PathBuf,
    children: Vec<Process>,
    /// `setpriv`, when installed: children get SIGTERM should the demo die outright.
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

    /// SIGTERM, then waits up to [`GRACE`]; SIGKILL after that. Returns a line saying how it
    /// ended, and whether it ended cleanly (exit status 0 within the grace period).
    fn stop(&mut self) -> (String, bool) {
        if let Some(status) = self.poll() {
            return (format!("{}: {status}", self.name), status.success());
        }
        // Not yet reaped, so the pid is still this child's.
        let _ = Command::new("sh")
            .args(["-c", "kill -s TERM \"$1\" 2>/dev/null", "sh"])
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.poll() {
                return (format!("{}: stopped, {status}", self.name), status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        (
            format!("{}: killed after {GRACE:?} without exiting on SIGTERM", self.name),
            false,
        )
    }
}

impl Processes {
    fn new(dir: PathBuf) -> Self {
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

    /// Starts `program` with stdin closed and its output in `<dir>/<name>.log`.
    fn spawn(&mut self, name: &str, program: &Path, args: &[OsString]) -> Result<()> {
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
        command
            .args(args)
            .env_remove(REEXECUTED)
            .env(
                "WEFT_LOG",
                std::env::var("WEFT_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
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
    fn first_exited(&mut self) -> Option<(String, ExitStatus)> {
        self.children
            .iter_mut()
            .find_map(|p| p.poll().map(|status| (p.name.clone(), status)))
    }

    /// Whether every child has exited.
    fn all_exited(&mut self) -> bool {
        self.children.iter_mut().all(|p| p.poll().is_some())
    }

    /// Stops every child, the last started first.
    fn stop_all(&mut self) -> Vec<(String, bool)> {
        self.children.iter_mut().rev().map(Process::stop).collect()
    }

    /// The end of the log of the child `name`.
    fn log_tail(&self, name: &str) -> String {
        self.children
            .iter()
            .find(|p| p.name == name)
            .map(|p| tail(&p.log, 40))
            .unwrap_or_default()
    }

    /// The end of every child's log, each under a header.
    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|p| format!("----- {} ({}) -----\n{}\n", p.name, p.log.display(), tail(&p.log, 60)))
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

/// A response as the demo sees it.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

/// `GET target` (origin-form for a server, absolute-form through a proxy) with `Host: host`
/// and extra headers, on a fresh connection to `127.0.0.1:port`.
fn get(port: u16, target: &str, host: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response from {address}"))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("a malformed response from {address}: {text:?}");
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("a response without a status from {address}: {head:?}"))?;
    Ok(Reply {
        status,
        body: body.to_owned(),
    })
}

/// Requests `http://{host}{path}` through the proxy at `proxy` until it answers 200 with a
/// body starting with `expected`, for up to `timeout`.
fn expect(
    proxy: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    expected: &str,
    timeout: Duration,
) -> Result<Reply> {
    let url = format!("http://{host}{path}");
    let mut last = None;
    let reply = eventually(timeout, || match get(proxy, &url, host, headers) {
        Ok(reply) if reply.status == 200 && reply.body.starts_with(expected) => Some(reply),
        other => {
            last = Some(other);
            None
        }
    });
    match (reply, last) {
        (Some(reply), _) => Ok(reply),
        (None, Some(Ok(reply))) => bail!(
            "GET {url} {headers:?} through 127.0.0.1:{proxy}: expected 200 and {expected:?}, got {} {:?}",
            reply.status,
            reply.body
        ),
        (None, Some(Err(error))) => Err(error.context(format!("GET {url} {headers:?} through 127.0.0.1:{proxy}"))),
        (None, None) => bail!("GET {url}: no answer within {timeout:?}"),
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes (checked at least
/// once).
fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
/// A port on 127.0.0.1 that is free now, taken below Linux's ephemeral range (32768 and up),
/// so the outgoing connections of this machine cannot take it before a sidecar binds it.
/// Each call gives a different port.
fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let _ = NEXT.compare_exchange(
            u32::MAX,
            (std::process::id().wrapping_mul(7_919).wrapping_add(nanos)) % SPAN,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 between {FIRST} and {}", FIRST + SPAN)
}

/// Starts a sample application on `127.0.0.1:port` (0: any free port), answering every
/// request with its name, the request line and the `end-user` header. With `calls` (its
/// sidecar's outbound port) it first calls `http://reviews:9080/reviews/0` through that
/// proxy, passing `end-user` on as Bookinfo's apps do, and appends the answer. Returns the
/// port.
fn sample_app(name: &'static str, port: u16, calls: Option<u16>) -> Result<u16> {
    let listener =
        TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("binding {name}'s app to 127.0.0.1:{port}"))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(name, calls, stream));
        }
    });
    Ok(port)
}

/// Serves one keep-alive connection of a sample application.
fn serve(name: &str, calls: Option<u16>, stream: TcpStream) {
    /// Request bodies larger than this close the connection.
    const MAX_BODY: usize = 1 << 20;
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut user = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => match v.trim().parse() {
                        Ok(n) if n <= MAX_BODY => length = n,
                        _ => return,
                    },
                    "end-user" => v.trim().clone_into(&mut user),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut text = format!(
            "{name}: {} (end-user: {})\n",
            request_line.trim_end(),
            if user.is_empty() { "-" } else { &user }
        );
        if let Some(proxy) = calls {
            let headers: &[(&str, &str)] = if user.is_empty() { &[] } else { &[("end-user", &user)] };
            match get(proxy, "http://reviews:9080/reviews/0", "reviews:9080", headers) {
                Ok(reply) => text.push_str(&format!("  -> {}", reply.body)),
                Err(error) => text.push_str(&format!("  -> reviews unavailable: {error:#}\n")),
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
