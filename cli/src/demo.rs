//! `weftctl demo`: Istio's Bookinfo on a local Weft mesh, on one machine, no Kubernetes.
//!
//! ```text
//!  browser ─▶ istio-ingressgateway ══▶ productpage-v1 sidecar ─▶ productpage ─┐ (--proxy: its sidecar's
//!            127.0.0.1:8080            (inbound, mTLS)                        │  outbound listener)
//!                                         ┌───────────────────────────────────┘
//!                                         ├══▶ details-v1 sidecar ─▶ details
//!                                         └══▶ reviews-v1|v2|v3 sidecar ─▶ reviews ──▶ (v2, v3) ══▶ ratings-v1 sidecar ─▶ ratings
//!  weft-controller 127.0.0.1:15010: intent from a watched directory ─ config stream, CA ─▶ every proxy
//!  ══▶ mutual TLS with SPIFFE certificates from the controller's CA
//! ```
//!
//! It builds what it needs (see [`build`]), writes an intent directory from
//! `examples/bookinfo/` (the platform templates of `platform/` with their ports filled in,
//! `networking/bookinfo-gateway.yaml` and `networking/destination-rule-all-mtls.yaml`), starts
//! `weft-controller` in local mode on it (embedded registry and CA), one `bookinfo` service
//! and one `weft-proxy` sidecar (with its bootstrap token) per Bookinfo instance, and the
//! ingress gateway, waits until the product page is served through the gateway, prints
//! where everything is and what to try, and runs until Ctrl-C or SIGTERM. Manifests copied
//! into the intent directory change the mesh's behaviour live.
//!
//! Modes: interactive (fixed ports, see [`layout`]); `--free-ports` (the same on free ports,
//! for tests: `--ready-file` says where); `--smoke` (free ports, the checks of [`smoke`],
//! then exit).
//!
//! Shutdown: SIGINT and SIGTERM are caught ([`signals`]). A Ctrl-C reaches every child too
//! (they share the terminal's process group) and each shuts down by itself; whatever still
//! runs 3 s later, or every child on SIGTERM, gets SIGTERM, and SIGKILL 10 s after that.

#![allow(clippy::print_stdout, reason = "the demo talks to the person running it")]

use std::ffi::OsString;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

mod build;
mod http;
mod layout;
mod processes;
mod signals;
mod smoke;

use build::Binaries;
use layout::{GATEWAY, GATEWAY_NAMESPACE, Layout, NAMESPACE};
use processes::Processes;
use signals::{Signal, Signals};

/// `weftctl demo`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Run on free ports, check the mesh end to end (the page through the gateway, routing by
    /// user, live intent changes, mutual TLS on every hop, every proxy in sync), stop and exit.
    #[arg(long)]
    smoke: bool,
    /// Use free ports (and a free loopback address for the gateway) instead of the fixed ones;
    /// `--ready-file` tells where things are.
    #[arg(long)]
    free_ports: bool,
    /// The intent directory the controller watches. Default: `<data-dir>/intent`, recreated at
    /// every start; a directory given here is created if missing and keeps its other files.
    #[arg(long, value_name = "DIR")]
    intent_dir: Option<PathBuf>,
    /// Where the controller's data (CA, bootstrap tokens), the proxies' state and the logs
    /// go; those are recreated at every start. Default: `target/demo` in the checkout (with
    /// `--smoke`, a temporary directory removed after a successful run).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Once the product page is served, write a JSON object here: `product_page`, `gateway`
    /// (URLs), `intent_dir`, `data_dir`, `logs`, `controller` (gRPC address) and `admin` (each
    /// proxy's admin URL by workload).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// The DestinationRules to start with: Istio's `destination-rule-all-mtls.yaml` (every
    /// hop ISTIO_MUTUAL) or `destination-rule-all.yaml` (Istio's auto mTLS decides).
    #[arg(long, value_enum, default_value = "all-mtls")]
    destination_rules: DestinationRules,
    /// Do not build; run the binaries next to this weftctl and the filters in
    /// `target/filters` as they are.
    #[arg(long)]
    no_build: bool,
}

/// Which of Istio's `destination-rule-all*.yaml` the intent starts with.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DestinationRules {
    /// `destination-rule-all.yaml`: the subsets only.
    All,
    /// `destination-rule-all-mtls.yaml`: the subsets and `tls.mode: ISTIO_MUTUAL`.
    AllMtls,
}

impl DestinationRules {
    /// The manifest's file name in `examples/bookinfo/networking/`.
    fn file(self) -> &'static str {
        match self {
            Self::All => "destination-rule-all.yaml",
            Self::AllMtls => "destination-rule-all-mtls.yaml",
        }
    }
}

/// The platform templates in `examples/bookinfo/platform/`, copied into the intent with their
/// placeholders filled in.
const PLATFORM: [&str; 3] = ["services.yaml", "workloads.yaml", "telemetry.yaml"];

/// Istio's Gateway manifest, copied into the intent as it is.
const GATEWAY_MANIFEST: &str = "bookinfo-gateway.yaml";

/// How long the mesh may take to serve the page (modules are compiled on a cold cache the
/// first time).
const STARTUP: Duration = Duration::from_secs(90);

/// Runs the demo (see the module docs).
pub(crate) fn run(args: &DemoArgs) -> Result<()> {
    let root = build::checkout()?;
    let bins = Binaries::beside_self()?;
    let filters = if args.no_build {
        build::filters_dir(&root)
    } else {
        println!("building weft-proxy, weft-controller, bookinfo and the router, retry, fault and telemetry filters");
        let _ = std::io::stdout().flush();
        bins.build(&root)?
    };
    bins.check()?;
    build::check_filters(&filters)?;
    let layout = if args.smoke || args.free_ports {
        Layout::free()?
    } else {
        let layout = Layout::fixed();
        layout.check_free()?;
        layout
    };
    let (data_dir, temporary) = match &args.data_dir {
        Some(dir) => (absolute(dir)?, false),
        None if args.smoke => (
            std::env::temp_dir().join(format!("weft-demo-smoke-{}", std::process::id())),
            true,
        ),
        None => (root.join("target/demo"), false),
    };
    let intent = match &args.intent_dir {
        Some(dir) => Intent::Given(absolute(dir)?),
        None => Intent::Default(data_dir.join("intent")),
    };
    // From here on SIGINT and SIGTERM stop the demo cleanly instead of killing it.
    let signals = Signals::install()?;
    let started = Instant::now();
    let mut demo = Demo {
        root,
        bins,
        filters,
        layout,
        processes: Processes::new(data_dir.join("logs")),
        data_dir,
        intent: intent.path().to_owned(),
        signals,
    };
    let ready = demo
        .prepare(&intent, args.destination_rules)
        .and_then(|()| demo.start());
    match ready {
        Ok(()) => {}
        Err(error) if demo.signals.received().is_some() => {
            demo.stop();
            return Err(error);
        }
        Err(error) => {
            let error = demo.with_logs(error);
            demo.stop();
            return Err(error);
        }
    }
    let ready_after = started.elapsed();
    if let Some(file) = &args.ready_file {
        demo.write_ready_file(file)?;
    }
    if args.smoke {
        println!("ok  the product page is served through the gateway {ready_after:.1?} after the start");
        let outcome = smoke::run(&demo).map_err(|error| {
            demo.with_logs(error)
                .context(format!("the demo's files are kept in {}", demo.data_dir.display()))
        });
        let stopped = demo.stop();
        outcome?;
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
        if temporary {
            let _ = std::fs::remove_dir_all(&demo.data_dir);
        }
        return Ok(());
    }
    print!("{}", demo.banner(ready_after));
    let _ = std::io::stdout().flush();
    demo.supervise()
}

/// `path` made absolute against the current directory.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// The intent directory: the demo's own, or one given with `--intent-dir`.
enum Intent {
    /// `<data-dir>/intent`: recreated at every start.
    Default(PathBuf),
    /// `--intent-dir`: created if missing; files the demo does not write are kept.
    Given(PathBuf),
}

impl Intent {
    fn path(&self) -> &Path {
        match self {
            Self::Default(path) | Self::Given(path) => path,
        }
    }
}

/// The running demo.
pub(super) struct Demo {
    /// The checkout.
    root: PathBuf,
    bins: Binaries,
    /// The first-party filters (`router.wasm`, …, `telemetry.wasm`).
    filters: PathBuf,
    layout: Layout,
    /// `--data-dir`.
    data_dir: PathBuf,
    /// The intent directory the controller watches.
    intent: PathBuf,
    processes: Processes,
    signals: Signals,
}

impl Demo {
    /// The controller's data directory (its CA, the bootstrap tokens).
    fn controller_dir(&self) -> PathBuf {
        self.data_dir.join("controller")
    }

    /// A fresh data directory and the intent: the platform templates filled in, Istio's
    /// gateway and destination rules.
    fn prepare(&self, intent: &Intent, rules: DestinationRules) -> Result<()> {
        // A sidecar would otherwise start from the snapshot an earlier run left in its state
        // directory, and the controller from its tokens.
        let mut fresh = vec![
            self.controller_dir(),
            self.data_dir.join("proxies"),
            self.processes.dir().to_owned(),
        ];
        if let Intent::Default(path) = intent {
            fresh.push(path.clone());
        }
        for dir in &fresh {
            if dir.exists() {
                std::fs::remove_dir_all(dir).with_context(|| format!("removing the old {}", dir.display()))?;
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::create_dir_all(&self.intent).with_context(|| format!("creating {}", self.intent.display()))?;
        let bookinfo = self.root.join("examples/bookinfo");
        let vars = self.layout.vars(&self.filters);
        for name in PLATFORM {
            let path = bookinfo.join("platform").join(name);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let filled = layout::fill(&text, &vars).with_context(|| format!("filling in {}", path.display()))?;
            write(&self.intent.join(name), &filled)?;
        }
        for name in [GATEWAY_MANIFEST, rules.file()] {
            let path = bookinfo.join("networking").join(name);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            write(&self.intent.join(name), &text)?;
        }
        Ok(())
    }

    /// Starts the controller, the applications, the sidecars and the gateway, and waits until
    /// the product page is served through the gateway.
    fn start(&mut self) -> Result<()> {
        let controller_dir = self.controller_dir();
        let mut args: Vec<OsString> = vec!["--intent-dir".into(), self.intent.clone().into()];
        args.extend(["--filters-dir".into(), self.filters.clone().into()]);
        args.extend(["--data-dir".into(), controller_dir.clone().into()]);
        args.extend(["--grpc".into(), format!("127.0.0.1:{}", self.layout.grpc).into()]);
        args.extend([
            "--registry".into(),
            format!("127.0.0.1:{}", self.layout.registry).into(),
        ]);
        let controller = self.bins.controller.clone();
        self.processes.spawn("controller", &controller, &args)?;
        let grpc = localhost(self.layout.grpc);
        self.wait("the controller's gRPC port", STARTUP, |_| listening(grpc))?;
        // The controller writes a bootstrap token per Workload once it compiled the intent.
        let mut tokens: Vec<PathBuf> = layout::INSTANCES
            .iter()
            .map(|i| token(&controller_dir, NAMESPACE, i.workload))
            .collect();
        tokens.push(token(&controller_dir, GATEWAY_NAMESPACE, GATEWAY));
        self.wait("the bootstrap tokens", STARTUP, |_| {
            tokens.iter().all(|t| t.is_file()).then_some(())
        })?;

        for (instance, ports) in self.layout.instances.clone() {
            let mut args: Vec<OsString> = vec![instance.app.into()];
            args.extend(["--listen".into(), format!("127.0.0.1:{}", ports.app).into()]);
            args.extend(["--proxy".into(), format!("127.0.0.1:{}", ports.outbound).into()]);
            if instance.app == "reviews" {
                args.extend(["--version".into(), instance.version.into()]);
                args.extend(["--podname".into(), instance.workload.into()]);
            }
            let bookinfo = self.bins.bookinfo.clone();
            self.processes
                .spawn(&format!("app-{}", instance.workload), &bookinfo, &args)?;
        }
        for (instance, ports) in self.layout.instances.clone() {
            let mut args = self.proxy_args(
                instance.workload,
                NAMESPACE,
                instance.service_account,
                ports.admin,
                &controller_dir,
            );
            args.extend([
                "--node-label".into(),
                format!("app={}", instance.app).into(),
                "--node-label".into(),
                format!("version={}", instance.version).into(),
                "--workers".into(),
                "1".into(),
            ]);
            let proxy = self.bins.proxy.clone();
            self.processes
                .spawn(&format!("sidecar-{}", instance.workload), &proxy, &args)?;
        }
        let mut args = self.proxy_args(
            GATEWAY,
            GATEWAY_NAMESPACE,
            layout::GATEWAY_SERVICE_ACCOUNT,
            self.layout.gateway_admin,
            &controller_dir,
        );
        for label in layout::GATEWAY_LABELS {
            args.extend(["--node-label".into(), label.into()]);
        }
        args.extend(["--workers".into(), "2".into()]);
        let proxy = self.bins.proxy.clone();
        self.processes.spawn("gateway", &proxy, &args)?;

        // Listeners open once a proxy has its first snapshot.
        for (instance, ports) in self.layout.instances.clone() {
            let outbound = localhost(ports.outbound);
            let what = format!("{}'s sidecar listeners", instance.workload);
            self.wait(&what, STARTUP, |_| listening(outbound))?;
        }
        let gateway = self.layout.gateway();
        self.wait("the gateway's listener", STARTUP, |_| listening(gateway))?;
        // Every proxy holds its workload certificate, so every hop can be mutual TLS.
        for (name, admin) in self.admins() {
            let what = format!("{name}'s workload certificate");
            self.wait(&what, STARTUP, |_| {
                let certs = http::get(localhost(admin), "/certs", "admin", &[]).ok()?;
                certs.body.contains("spiffe://").then_some(())
            })?;
        }
        self.wait("the product page through the gateway", STARTUP, |demo| {
            let page = demo.page(&[]).ok()?;
            (page.status == 200 && page.body.contains("Book Details") && page.body.contains("Book Reviews"))
                .then_some(())
        })?;
        Ok(())
    }

    /// The flags every proxy of the demo gets.
    fn proxy_args(
        &self,
        workload: &str,
        namespace: &str,
        service_account: &str,
        admin: u16,
        controller_dir: &Path,
    ) -> Vec<OsString> {
        let state = self.data_dir.join("proxies").join(workload);
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            args.push(name.into());
            args.push(value);
        };
        flag("--controller", format!("http://127.0.0.1:{}", self.layout.grpc).into());
        flag("--node-id", workload.into());
        flag("--namespace", namespace.into());
        flag("--service-account", service_account.into());
        flag("--bootstrap-token", token(controller_dir, namespace, workload).into());
        flag("--admin", format!("127.0.0.1:{admin}").into());
        flag("--state-dir", state.clone().into());
        flag("--module-dir", state.join("modules").into());
        // Fourteen processes on a laptop's cores (or a debug build): room for a slow call.
        flag("--wasm-deadline", "250ms".into());
        args
    }

    /// Waits until `check` returns `Some`, failing when `timeout` passes, a signal arrives or
    /// a child exits.
    fn wait<T>(&mut self, what: &str, timeout: Duration, mut check: impl FnMut(&Self) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return Ok(value);
            }
            if let Some(signal) = self.signals.received() {
                bail!("stopped by {signal:?} while waiting for {what}");
            }
            if let Some((name, status)) = self.processes.first_exited() {
                bail!("{name} exited ({status}) while waiting for {what}");
            }
            if Instant::now() >= deadline {
                bail!("waited {timeout:?} for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /productpage` through the gateway, with extra headers (a `cookie: user=jason`).
    fn page(&self, headers: &[(&str, &str)]) -> Result<http::Reply> {
        let gateway = self.layout.gateway();
        http::get(gateway, "/productpage", &gateway.to_string(), headers)
    }

    /// Every proxy's name and admin port: the sidecars by workload, then the gateway.
    fn admins(&self) -> Vec<(&'static str, u16)> {
        let mut admins: Vec<(&'static str, u16)> = self
            .layout
            .instances
            .iter()
            .map(|(i, p)| (i.workload, p.admin))
            .collect();
        admins.push((GATEWAY, self.layout.gateway_admin));
        admins
    }

    /// `error` (with its causes) followed by the end of every child's log.
    fn with_logs(&self, error: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!("{error:#}\n\nthe end of each process's log:\n{}", self.processes.logs())
    }

    /// Stops every child; one line per child and whether it stopped cleanly.
    fn stop(&mut self) -> Vec<(String, bool)> {
        self.processes.stop_all()
    }

    /// Writes the `--ready-file` (through a temporary file, so a reader never sees half).
    fn write_ready_file(&self, file: &Path) -> Result<()> {
        let admin: serde_json::Map<String, serde_json::Value> = self
            .admins()
            .into_iter()
            .map(|(name, port)| (name.to_owned(), format!("http://127.0.0.1:{port}").into()))
            .collect();
        let ready = serde_json::json!({
            "product_page": format!("{}/productpage", self.layout.gateway_url()),
            "gateway": self.layout.gateway_url(),
            "intent_dir": self.intent,
            "data_dir": self.data_dir,
            "logs": self.processes.dir(),
            "controller": format!("127.0.0.1:{}", self.layout.grpc),
            "admin": admin,
        });
        let partial = file.with_extension("partial");
        write(&partial, &format!("{ready:#}\n"))?;
        std::fs::rename(&partial, file).with_context(|| format!("renaming {} to {}", partial.display(), file.display()))
    }

    /// What the interactive demo prints once the page is served.
    fn banner(&self, ready_after: Duration) -> String {
        let gateway = self.layout.gateway_url();
        let weftctl = shown(&self.bins.weftctl);
        let controller = format!("127.0.0.1:{}", self.layout.grpc);
        let controller_flag = if self.layout.grpc == 15010 {
            String::new()
        } else {
            format!(" --controller {controller}")
        };
        let intent = shown(&self.intent);
        let networking = shown(&self.root.join("examples/bookinfo/networking"));
        let logs = shown(self.processes.dir());
        let mut rows = vec![[
            "WORKLOAD".to_owned(),
            "APP".to_owned(),
            "SIDECAR INBOUND".to_owned(),
            "OUTBOUND".to_owned(),
            "ADMIN".to_owned(),
        ]];
        for (instance, ports) in &self.layout.instances {
            rows.push([
                instance.workload.to_owned(),
                format!("127.0.0.1:{}", ports.app),
                format!(":{} (mTLS)", ports.inbound),
                format!(":{}", ports.outbound),
                format!("http://127.0.0.1:{}", ports.admin),
            ]);
        }
        rows.push([
            GATEWAY.to_owned(),
            "-".to_owned(),
            format!("{} (gateway)", self.layout.gateway()),
            "-".to_owned(),
            format!("http://127.0.0.1:{}", self.layout.gateway_admin),
        ]);
        let table: String = crate::table::render(&rows)
            .lines()
            .map(|line| format!("  {line}\n"))
            .collect();
        let productpage_admin = self.layout.ports("productpage-v1").map_or(0, |p| p.admin);
        format!(
            "\nBookinfo is running on a local Weft mesh, mutual TLS on every hop (served in {:.1} s; Ctrl-C to stop)\n\
             \n  product page      {gateway}/productpage      (sign in as jason: his requests carry end-user: jason)\
             \n  controller        {controller} (config stream, status, CA)   registry 127.0.0.1:{registry}\
             \n  intent (watched)  {intent}/      put Istio manifests here\
             \n  logs              {logs}/\n\n\
             {table}\
             \ntry:\
             \n  cp {networking}/virtual-service-all-v1.yaml {intent}/                # everyone on reviews v1: no stars\
             \n  rm {intent}/virtual-service-all-v1.yaml\
             \n  cp {networking}/virtual-service-reviews-test-v2.yaml {intent}/       # jason: black stars\
             \n  {weftctl} bench {gateway}/productpage -n 500 -c 10\
             \n  {weftctl} status{controller_flag}            # every proxy SYNCED? problems in the intent?\
             \n  {weftctl} cert ls{controller_flag}           # the workload certificates the CA issued\
             \n  curl -s http://127.0.0.1:{productpage_admin}/stats/prometheus | grep downstream_cx_mtls\
             \n  tail -f {logs}/sidecar-reviews-v2.log      # the server side's access log\n\n",
            ready_after.as_secs_f64(),
            registry = self.layout.registry,
        )
    }

    /// Runs until a signal arrives or a child exits; then stops everything. A child exiting
    /// on its own is a failure.
    fn supervise(&mut self) -> Result<()> {
        let exited = loop {
            if let Some(signal) = self.signals.received() {
                if signal == Signal::Interrupt {
                    // Ctrl-C reached the children too: give them a moment to exit by themselves.
                    let _ = http::eventually(Duration::from_secs(3), || self.processes.all_exited().then_some(()));
                }
                break None;
            }
            if let Some(exited) = self.processes.first_exited() {
                break Some(exited);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        match &exited {
            None => println!("\nstopping the demo"),
            Some((name, status)) => println!("\n{name} exited ({status}); stopping the demo"),
        }
        for (line, _) in self.stop() {
            println!("  {line}");
        }
        if let Some((name, status)) = exited {
            bail!(
                "{name} exited unexpectedly ({status}); the end of its log:\n{}",
                self.processes.log_tail(&name)
            );
        }
        Ok(())
    }
}

/// `127.0.0.1:port`.
fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `Some` once something accepts connections at `address`.
fn listening(address: SocketAddr) -> Option<()> {
    TcpStream::connect_timeout(&address, Duration::from_millis(200))
        .ok()
        .map(drop)
}

/// Where the controller writes the bootstrap token of `namespace/workload`.
fn token(controller_dir: &Path, namespace: &str, workload: &str) -> PathBuf {
    controller_dir
        .join("bootstrap")
        .join(namespace)
        .join(format!("{workload}.token"))
}

/// Writes `text` to `path`, naming the file on failure.
fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `path` relative to the current directory when it is under it, as a user would type it.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|relative| !relative.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
