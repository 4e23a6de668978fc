//! The mesh end to end: a controller in local mode, two sidecars and plain upstreams, all
//! real processes on 127.0.0.1. Intent is edited as files, as a user would.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use weft_e2e::{
    Process, TempDir, Upstream, binaries, eventually, filters_dir, free_port, get, sha256_file, wait_listening,
};

/// A controller, the `productpage` sidecar (the client), the `reviews-v1` sidecar in front of
/// its app, and `reviews-v2` reached directly (no sidecar).
struct Mesh {
    dir: TempDir,
    grpc: u16,
    registry: u16,
    controller: Option<Process>,
    productpage: Option<Process>,
    reviews_v1: Option<Process>,
    productpage_out: SocketAddr,
    /// Admin ports of the sidecars, by node id.
    admins: std::collections::BTreeMap<String, u16>,
    _v1: Upstream,
    _v2: Upstream,
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: reviews, namespace: default }
spec:
  selector: { app: reviews }
  ports: [{ name: http, port: 9080, targetPort: http }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: default }
spec:
  host: reviews
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
"#;

fn virtual_service(v1: u32, v2: u32) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: default }}
spec:
  hosts: [reviews]
  http:
    - route:
        - {{ destination: {{ host: reviews, subset: v1 }}, weight: {v1} }}
        - {{ destination: {{ host: reviews, subset: v2 }}, weight: {v2} }}
"#
    )
}

impl Mesh {
    fn start(name: &str) -> Self {
        binaries();
        let filters = filters_dir();
        let dir = TempDir::new(name);
        let v1 = Upstream::start("reviews-v1");
        let v2 = Upstream::start("reviews-v2");
        let (pp_in, pp_out, v1_in, v1_out) = (free_port(), free_port(), free_port(), free_port());
        let intent = dir.path().join("intent");
        std::fs::create_dir_all(&intent).expect("intent dir");
        let workloads = format!(
            r#"
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {{ name: productpage, namespace: default, labels: {{ app: productpage, version: v1 }} }}
spec:
  address: 127.0.0.1
  serviceAccount: bookinfo-productpage
  ports: {{ http: {pp_app} }}
  sidecar: {{ inbound: {pp_in}, outbound: {pp_out} }}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {{ name: reviews-v1, namespace: default, labels: {{ app: reviews, version: v1 }} }}
spec:
  address: 127.0.0.1
  serviceAccount: bookinfo-reviews
  ports: {{ http: {v1_app} }}
  sidecar: {{ inbound: {v1_in}, outbound: {v1_out} }}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {{ name: reviews-v2, namespace: default, labels: {{ app: reviews, version: v2 }} }}
spec:
  address: 127.0.0.1
  serviceAccount: bookinfo-reviews
  ports: {{ http: {v2_app} }}
"#,
            pp_app = free_port(),
            v1_app = v1.address.port(),
            v2_app = v2.address.port(),
        );
        std::fs::write(intent.join("workloads.yaml"), workloads).expect("write");
        std::fs::write(intent.join("services.yaml"), SERVICES).expect("write");
        std::fs::write(intent.join("vs-reviews.yaml"), virtual_service(100, 0)).expect("write");
        let mut mesh = Self {
            dir,
            grpc: free_port(),
            registry: free_port(),
            controller: None,
            productpage: None,
            reviews_v1: None,
            productpage_out: SocketAddr::from(([127, 0, 0, 1], pp_out)),
            admins: [
                ("productpage".to_owned(), free_port()),
                ("reviews-v1".to_owned(), free_port()),
            ]
            .into(),
            _v1: v1,
            _v2: v2,
        };
        mesh.start_controller(&filters);
        mesh.productpage = Some(mesh.sidecar(
            "productpage",
            "bookinfo-productpage",
            &["app=productpage", "version=v1"],
        ));
        mesh.reviews_v1 = Some(mesh.sidecar("reviews-v1", "bookinfo-reviews", &["app=reviews", "version=v1"]));
        assert!(
            wait_listening(mesh.productpage_out, Duration::from_secs(30)),
            "productpage's outbound listener never opened"
        );
        assert!(
            wait_listening(SocketAddr::from(([127, 0, 0, 1], v1_in)), Duration::from_secs(30)),
            "reviews-v1's inbound listener never opened"
        );
        mesh
    }

    fn intent(&self) -> std::path::PathBuf {
        self.dir.path().join("intent")
    }

    /// The controller's `--data-dir`.
    fn controller_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("controller")
    }

    fn start_controller(&mut self, filters: &Path) {
        let args = vec![
            "--intent-dir".into(),
            self.intent().display().to_string(),
            "--filters-dir".into(),
            filters.display().to_string(),
            "--data-dir".into(),
            self.controller_dir().display().to_string(),
            "--grpc".into(),
            format!("127.0.0.1:{}", self.grpc),
            "--registry".into(),
            format!("127.0.0.1:{}", self.registry),
        ];
        self.controller = Some(Process::spawn(
            "controller",
            &binaries().controller,
            &args,
            self.dir.path(),
        ));
        assert!(
            wait_listening(SocketAddr::from(([127, 0, 0, 1], self.grpc)), Duration::from_secs(30)),
            "the controller never listened"
        );
    }

    fn sidecar(&self, name: &str, account: &str, labels: &[&str]) -> Process {
        let state = self.dir.path().join(format!("state-{name}"));
        let mut args = vec![
            "--controller".into(),
            format!("http://127.0.0.1:{}", self.grpc),
            "--node-id".into(),
            name.into(),
            "--namespace".into(),
            "default".into(),
            "--service-account".into(),
            account.into(),
            "--admin".into(),
            format!("127.0.0.1:{}", self.admins[name]),
            "--bootstrap-token".into(),
            self.dir
                .path()
                .join(format!("controller/bootstrap/default/{name}.token"))
                .display()
                .to_string(),
            "--workers".into(),
            "1".into(),
            "--state-dir".into(),
            state.display().to_string(),
            "--module-dir".into(),
            state.join("modules").display().to_string(),
            "--wasm-deadline".into(),
            "250ms".into(),
        ];
        for label in labels {
            args.push("--node-label".into());
            args.push((*label).into());
        }
        Process::spawn(name, &binaries().proxy, &args, self.dir.path())
    }

    /// `GET /` for `reviews` through productpage's sidecar.
    fn call_reviews(&self) -> weft_e2e::Reply {
        get(self.productpage_out, "reviews:9080", "/", &[])
    }

    /// `weftctl status` against the controller.
    fn status(&self) -> String {
        let output = std::process::Command::new(&binaries().weftctl)
            .args(["status", "--controller", &format!("127.0.0.1:{}", self.grpc)])
            .output()
            .expect("weftctl runs");
        assert!(
            output.status.success(),
            "weftctl status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The status line of one sidecar.
    fn status_of(&self, node: &str) -> Option<String> {
        self.status()
            .lines()
            .find(|l| l.starts_with(&format!("{node} ")))
            .map(str::to_owned)
    }
}

/// Counts of bodies over `n` calls.
fn split(mesh: &Mesh, n: usize) -> (usize, usize, usize) {
    let (mut v1, mut v2, mut other) = (0, 0, 0);
    for _ in 0..n {
        match mesh.call_reviews().body.as_str() {
            "reviews-v1" => v1 += 1,
            "reviews-v2" => v2 += 1,
            _ => other += 1,
        }
    }
    (v1, v2, other)
}

#[test]
fn editing_a_virtual_service_moves_traffic_within_a_second() {
    let mesh = Mesh::start("split");
    let first = eventually(Duration::from_secs(10), || {
        let reply = mesh.call_reviews();
        (reply.body == "reviews-v1").then_some(reply)
    });
    assert!(first.is_some(), "reviews never reached v1: {:?}", mesh.call_reviews());
    assert_eq!(split(&mesh, 50), (50, 0, 0), "all traffic to v1");
    // v1 goes through its own sidecar: its inbound listener saw the requests.
    assert!(
        mesh.status_of("productpage").is_some_and(|l| l.contains("SYNCED")),
        "{}",
        mesh.status()
    );
    assert!(
        mesh.status_of("reviews-v1").is_some_and(|l| l.contains("SYNCED")),
        "{}",
        mesh.status()
    );

    let edited = Instant::now();
    std::fs::write(mesh.intent().join("vs-reviews.yaml"), virtual_service(0, 100)).expect("edit");
    let moved = eventually(Duration::from_secs(5), || {
        (mesh.call_reviews().body == "reviews-v2").then(Instant::now)
    });
    let took = moved.map(|at| at - edited);
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(1)),
        "traffic moved to v2 after {took:?} (want ≤ 1 s)"
    );
    assert_eq!(split(&mesh, 50), (0, 50, 0), "all traffic to v2");

    std::fs::write(mesh.intent().join("vs-reviews.yaml"), virtual_service(50, 50)).expect("edit");
    assert!(
        eventually(Duration::from_secs(5), || {
            let (v1, v2, _) = split(&mesh, 10);
            (v1 > 0 && v2 > 0).then_some(())
        })
        .is_some()
    );
    let (v1, v2, other) = split(&mesh, 400);
    assert_eq!(other, 0);
    assert!((160..=240).contains(&v1), "50/50 split gave v1={v1} v2={v2}");
}

#[test]
fn a_refused_snapshot_is_nacked_and_the_old_one_keeps_serving() {
    let mesh = Mesh::start("nack");
    assert!(
        eventually(Duration::from_secs(10), || (mesh.call_reviews().body == "reviews-v1")
            .then_some(()))
        .is_some()
    );
    let router = filters_dir().join("router.wasm");
    let plugin = |sha256: &str, config: &str| {
        format!(
            r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: extra, namespace: default }}
spec:
  selector: {{ matchLabels: {{ app: productpage }} }}
  url: file://{}
  sha256: {sha256}
  pluginConfig: {config}
"#,
            router.display()
        )
    };

    // A module whose digest is not the one the intent pins.
    let wrong = "0".repeat(64);
    std::fs::write(mesh.intent().join("plugin.yaml"), plugin(&wrong, "{}")).expect("write");
    let line = eventually(Duration::from_secs(10), || {
        mesh.status_of("productpage").filter(|l| l.contains("NACKED"))
    });
    let line = line.unwrap_or_else(|| panic!("no NACK:\n{}", mesh.status()));
    assert!(line.contains("sha256"), "the NACK names the digest problem: {line}");
    assert!(
        mesh.status_of("reviews-v1").is_some_and(|l| l.contains("SYNCED")),
        "other sidecars unaffected"
    );
    assert_eq!(split(&mesh, 20), (20, 0, 0), "the old snapshot keeps serving");

    // The right module, with a configuration the filter refuses.
    std::fs::write(
        mesh.intent().join("plugin.yaml"),
        plugin(&sha256_file(&router), "{ no_such_field: 1 }"),
    )
    .expect("write");
    let line = eventually(Duration::from_secs(10), || {
        mesh.status_of("productpage")
            .filter(|l| l.contains("NACKED") && l.contains("on_configure"))
    });
    assert!(line.is_some(), "no NACK for the refused config:\n{}", mesh.status());
    assert_eq!(split(&mesh, 20), (20, 0, 0), "the old snapshot keeps serving");

    // Removing the plugin brings the sidecar back in sync, and the intent still applies.
    std::fs::remove_file(mesh.intent().join("plugin.yaml")).expect("rm");
    std::fs::write(mesh.intent().join("vs-reviews.yaml"), virtual_service(0, 100)).expect("edit");
    assert!(
        eventually(Duration::from_secs(10), || mesh
            .status_of("productpage")
            .filter(|l| l.contains("SYNCED")))
        .is_some(),
        "{}",
        mesh.status()
    );
    assert!(
        eventually(Duration::from_secs(5), || (mesh.call_reviews().body == "reviews-v2")
            .then_some(()))
        .is_some()
    );
}

#[test]
fn sidecars_outlive_the_controller_and_restart_from_disk() {
    let mut mesh = Mesh::start("offline");
    assert!(
        eventually(Duration::from_secs(10), || (mesh.call_reviews().body == "reviews-v1")
            .then_some(()))
        .is_some()
    );
    std::fs::write(mesh.intent().join("vs-reviews.yaml"), virtual_service(0, 100)).expect("edit");
    assert!(
        eventually(Duration::from_secs(5), || (mesh.call_reviews().body == "reviews-v2")
            .then_some(()))
        .is_some()
    );

    // The controller dies: traffic keeps flowing on the last snapshot.
    if let Some(mut controller) = mesh.controller.take() {
        controller.kill();
    }
    assert_eq!(split(&mesh, 30), (0, 30, 0), "served without the controller");

    // productpage's sidecar restarts while the controller is down: it serves its on-disk
    // snapshot (and its modules from its cache).
    if let Some(mut sidecar) = mesh.productpage.take() {
        sidecar.kill();
    }
    assert!(mesh.call_reviews().status == 0, "the sidecar is down");
    let restarted = mesh.sidecar(
        "productpage",
        "bookinfo-productpage",
        &["app=productpage", "version=v1"],
    );
    assert!(
        wait_listening(mesh.productpage_out, Duration::from_secs(30)),
        "{}",
        restarted.log()
    );
    assert_eq!(
        split(&mesh, 30),
        (0, 30, 0),
        "served from the on-disk snapshot:\n{}",
        restarted.log()
    );
    mesh.productpage = Some(restarted);

    // The controller comes back: the sidecars reconnect and follow new intent again.
    mesh.start_controller(&filters_dir());
    std::fs::write(mesh.intent().join("vs-reviews.yaml"), virtual_service(100, 0)).expect("edit");
    assert!(
        eventually(Duration::from_secs(20), || (mesh.call_reviews().body == "reviews-v1")
            .then_some(()))
        .is_some(),
        "sidecar did not reconnect"
    );
    assert!(
        eventually(Duration::from_secs(10), || mesh
            .status_of("productpage")
            .filter(|l| l.contains("SYNCED")))
        .is_some(),
        "{}",
        mesh.status()
    );
}

#[test]
fn sidecars_get_their_spiffe_certificates_from_the_controller() {
    let mesh = Mesh::start("identity");
    for (node, account) in [
        ("productpage", "bookinfo-productpage"),
        ("reviews-v1", "bookinfo-reviews"),
    ] {
        let admin = SocketAddr::from(([127, 0, 0, 1], mesh.admins[node]));
        let certs = eventually(Duration::from_secs(20), || {
            let reply = get(admin, "localhost", "/certs", &[]);
            reply.body.contains("spiffe_id").then_some(reply.body)
        });
        let certs = certs.unwrap_or_else(|| panic!("{node} never got a certificate"));
        assert!(
            certs.contains(&format!("\"spiffe://cluster.local/ns/default/sa/{account}\"")),
            "{node}: {certs}"
        );
        assert!(certs.contains("BEGIN CERTIFICATE"), "{certs}");
        assert!(!certs.contains("PRIVATE KEY"), "the admin API never shows the key");
    }
}

/// A counter from a sidecar's `/stats/prometheus` (0 when absent).
fn metric(mesh: &Mesh, node: &str, sample: &str) -> f64 {
    let admin = SocketAddr::from(([127, 0, 0, 1], mesh.admins[node]));
    let stats = get(admin, "localhost", "/stats/prometheus", &[]).body;
    stats
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `weftctl` with `args` against the mesh's controller; its stdout.
fn weftctl(mesh: &Mesh, args: &[&str]) -> String {
    let output = std::process::Command::new(&binaries().weftctl)
        .args(args)
        .args(["--controller", &format!("127.0.0.1:{}", mesh.grpc)])
        .output()
        .expect("weftctl runs");
    assert!(
        output.status.success(),
        "weftctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn sidecars_talk_mutual_tls_and_a_revoked_certificate_is_refused_after_one_push() {
    let mut mesh = Mesh::start("revocation");
    // Both sidecars have certificates, and productpage → reviews-v1 (sidecar to sidecar) is
    // mutual TLS by Istio's auto mTLS; reviews-v2 (no sidecar) would be plaintext.
    let serial = eventually(Duration::from_secs(20), || {
        let admin = SocketAddr::from(([127, 0, 0, 1], mesh.admins["productpage"]));
        let certs = get(admin, "localhost", "/certs", &[]).body;
        let json: serde_json::Value = serde_json::from_str(&certs).ok()?;
        json["serial"].as_str().map(str::to_owned)
    })
    .expect("productpage gets a certificate");
    assert!(
        eventually(Duration::from_secs(20), || (mesh.call_reviews().body == "reviews-v1")
            .then_some(()))
        .is_some(),
        "reviews-v1 never answered through mTLS"
    );
    let inbound_mtls = "weft_listener_downstream_cx_mtls_total{listener=\"inbound\"}";
    assert!(metric(&mesh, "reviews-v1", inbound_mtls) >= 1.0);
    let ledger = weftctl(&mesh, &["cert", "ls"]);
    assert!(
        ledger.contains(&serial) && ledger.contains("default/productpage") && ledger.contains("VALID"),
        "{ledger}"
    );

    // Revoke productpage's certificate: the next push carries it to every sidecar.
    let before = mesh.status_of("reviews-v1").expect("reviews-v1 listed");
    // Not without the operator's token.
    let refused = std::process::Command::new(&binaries().weftctl)
        .args(["cert", "revoke", "--serial", &serial, "--token-file", "/dev/null"])
        .args(["--controller", &format!("127.0.0.1:{}", mesh.grpc)])
        .output()
        .expect("weftctl runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("operator's token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let token = mesh.controller_dir().join("operator.token");
    let answer = weftctl(
        &mesh,
        &[
            "cert",
            "revoke",
            "--serial",
            &serial,
            "--token-file",
            &token.display().to_string(),
        ],
    );
    assert!(answer.contains("1 issued certificate(s) covered"), "{answer}");
    assert!(
        eventually(Duration::from_secs(10), || mesh
            .status_of("reviews-v1")
            .filter(|l| l.contains("SYNCED") && *l != before))
        .is_some(),
        "the revocation never reached reviews-v1: {}",
        mesh.status()
    );
    assert!(weftctl(&mesh, &["cert", "ls"]).contains("REVOKED"));

    // reviews-v1's sidecar restarts, so productpage must handshake again, presenting the
    // revoked certificate: refused.
    if let Some(mut sidecar) = mesh.reviews_v1.take() {
        sidecar.kill();
    }
    let restarted = mesh.sidecar("reviews-v1", "bookinfo-reviews", &["app=reviews", "version=v1"]);
    assert!(
        eventually(Duration::from_secs(20), || {
            let admin = SocketAddr::from(([127, 0, 0, 1], mesh.admins["reviews-v1"]));
            get(admin, "localhost", "/certs", &[])
                .body
                .contains("spiffe_id")
                .then_some(())
        })
        .is_some(),
        "{}",
        restarted.log()
    );
    let refused = "weft_listener_downstream_cx_refused_total{listener=\"inbound\"}";
    let reply = eventually(Duration::from_secs(10), || {
        let reply = mesh.call_reviews();
        (reply.status >= 500 && metric(&mesh, "reviews-v1", refused) >= 1.0).then_some(reply)
    });
    assert!(
        reply.is_some(),
        "the revoked peer was not refused:\n{}",
        restarted.log()
    );
    assert_eq!(
        metric(&mesh, "reviews-v1", inbound_mtls),
        0.0,
        "no mTLS connection was accepted"
    );
    mesh.reviews_v1 = Some(restarted);
}
