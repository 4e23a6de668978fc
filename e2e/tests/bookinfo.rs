//! Istio's Bookinfo tasks on `weftctl demo`, end to end: the demo runs as a child process on
//! free ports (`--free-ports --ready-file`), and the test walks through Istio's request
//! routing, fault injection and traffic shifting tasks by putting the manifests of
//! `examples/bookinfo/networking/` into the demo's intent directory, as a user would, and
//! reading the product page through the ingress gateway: the stars jason and anonymous users
//! see, the weighted splits over 1,000 requests, the fault texts and delays; then mutual TLS
//! on every hop (the proxies' stats) and a clean shutdown on SIGTERM.
//!
//! Istio's tasks `kubectl apply` over resources of the same name; the controller reads a
//! directory, where two files defining one resource conflict, so each step removes the
//! previous step's VirtualService file before copying the next.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_e2e::{Connection, TempDir, binaries, eventually, filters_dir, root};

const NO_STARS: Stars = Stars::None;

/// What the page's reviews column shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stars {
    /// Reviews without ratings (reviews v1).
    None,
    /// Black stars (v2).
    Black,
    /// Red stars (v3).
    Red,
    /// Reviews, each with "Ratings service is currently unavailable".
    RatingsUnavailable,
    /// "Sorry, product reviews are currently unavailable for this book."
    ReviewsUnavailable,
}

const REVIEWS_UNAVAILABLE: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";
const DETAILS_ERROR_TITLE: &str = "Error fetching product details!";
const DETAILS_UNAVAILABLE: &str = "Sorry, product details are currently unavailable for this book.";

fn stars(page: &str) -> Stars {
    if page.contains(REVIEWS_UNAVAILABLE) {
        Stars::ReviewsUnavailable
    } else if page.contains("<font color=\"black\">") {
        Stars::Black
    } else if page.contains("<font color=\"red\">") {
        Stars::Red
    } else if page.contains(RATINGS_UNAVAILABLE) {
        Stars::RatingsUnavailable
    } else {
        Stars::None
    }
}

/// The reviews version that served a page (its `<!-- reviews: version=… -->` comment).
fn version(page: &str) -> Option<String> {
    let rest = page.split_once("<!-- reviews: version=")?.1;
    rest.split_whitespace().next().map(str::to_owned)
}

/// What `--ready-file` says.
struct Ready {
    gateway: SocketAddr,
    intent: PathBuf,
    controller: String,
    admin: BTreeMap<String, SocketAddr>,
}

impl Ready {
    fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).expect("the ready file is JSON");
        let address = |url: &serde_json::Value| -> SocketAddr {
            let url = url.as_str().expect("a URL");
            url.strip_prefix("http://")
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("not http://ADDRESS: {url}"))
        };
        let admin = json["admin"]
            .as_object()
            .expect("admin URLs")
            .iter()
            .map(|(name, url)| (name.clone(), address(url)))
            .collect();
        Some(Self {
            gateway: address(&json["gateway"]),
            intent: PathBuf::from(json["intent_dir"].as_str().expect("intent_dir")),
            controller: json["controller"].as_str().expect("controller").to_owned(),
            admin,
        })
    }
}

/// `weftctl demo --free-ports` running; SIGTERM (then SIGKILL) when dropped.
struct Demo {
    child: Option<Child>,
    log: PathBuf,
    ready: Ready,
    /// The time from starting `weftctl demo` to the first product page the test got.
    served_after: Duration,
    networking: PathBuf,
    _dir: TempDir,
}

impl Demo {
    fn start() -> Self {
        // A warm build: what the demo builds (it checks again itself, a no-op).
        binaries();
        filters_dir();
        let dir = TempDir::new("bookinfo");
        let ready_file = dir.path().join("ready.json");
        let log = dir.path().join("demo.log");
        let out = std::fs::File::create(&log).expect("demo log");
        let started = Instant::now();
        let child = Command::new(&binaries().weftctl)
            .arg("demo")
            .arg("--free-ports")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--ready-file")
            .arg(&ready_file)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("demo log"))
            .stderr(out)
            .spawn()
            .expect("weftctl demo starts");
        let mut demo = Self {
            child: Some(child),
            log,
            ready: Ready {
                gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
                intent: PathBuf::new(),
                controller: String::new(),
                admin: BTreeMap::new(),
            },
            served_after: Duration::ZERO,
            networking: root().join("examples/bookinfo/networking"),
            _dir: dir,
        };
        let ready = eventually(Duration::from_secs(120), || {
            if let Some(child) = &mut demo.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("weftctl demo exited ({status}) before it was ready");
            }
            Ready::read(&ready_file)
        });
        demo.ready = ready.expect("weftctl demo wrote its ready file within 120 s");
        let page = demo.page(&[]);
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body.contains("Book Details") && page.body.contains("Book Reviews"),
            "{}",
            page.body
        );
        demo.served_after = started.elapsed();
        demo
    }

    /// `GET /productpage` through the gateway, on a fresh connection.
    fn page(&self, headers: &[(&str, &str)]) -> weft_e2e::Reply {
        weft_e2e::get(
            self.ready.gateway,
            &self.ready.gateway.to_string(),
            "/productpage",
            headers,
        )
    }

    /// `weftctl status` against the demo's controller.
    fn status(&self) -> String {
        let output = Command::new(&binaries().weftctl)
            .args(["status", "--controller", &self.ready.controller])
            .output()
            .expect("weftctl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The intent version `weftctl status` reports.
    fn intent_version(&self) -> Option<String> {
        let status = self.status();
        let rest = status.split_once("intent version ")?.1;
        rest.split(':').next().map(str::to_owned)
    }

    /// Whether every proxy (six sidecars and the gateway) is connected and SYNCED.
    fn all_synced(&self) -> bool {
        let status = self.status();
        self.ready.admin.keys().all(|name| {
            status.lines().any(|line| {
                line.split_whitespace().next() == Some(name.as_str())
                    && line.contains(" SYNCED ")
                    && !line.contains("disconnected")
            })
        })
    }

    /// Removes and copies manifests in the intent directory, as Istio's tasks apply them;
    /// returns once the controller compiled the change and every proxy ACKed its snapshot.
    fn apply(&self, remove: &[&str], add: &[&str]) {
        let before = self.intent_version();
        for name in remove {
            std::fs::remove_file(self.ready.intent.join(name)).unwrap_or_else(|e| panic!("removing {name}: {e}"));
        }
        for name in add {
            std::fs::copy(self.networking.join(name), self.ready.intent.join(name))
                .unwrap_or_else(|e| panic!("copying {name}: {e}"));
        }
        let compiled = eventually(Duration::from_secs(15), || {
            (self.intent_version() != before).then_some(())
        });
        assert!(
            compiled.is_some(),
            "the controller did not pick up {add:?} / {remove:?}"
        );
        // A proxy whose stream has not caught up with the new intent is listed STALE, so
        // "all SYNCED" means every proxy runs its snapshot of the new intent.
        assert!(
            eventually(Duration::from_secs(15), || self.all_synced().then_some(())).is_some(),
            "not every proxy SYNCED after {add:?}:\n{}",
            self.status()
        );
    }

    /// Five pages in a row show `expected` for a user (`Some("jason")`) or anonymous, the
    /// first within 10 s.
    fn expect_stars(&self, user: Option<&str>, expected: Stars, step: &str) {
        let cookie = user.map(|u| format!("user={u}"));
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let mut last = None;
        let first = eventually(Duration::from_secs(10), || {
            let page = self.page(&headers);
            let shown = stars(&page.body);
            last = Some((page.status, shown));
            (page.status == 200 && shown == expected).then_some(())
        });
        assert!(
            first.is_some(),
            "{step}: {user:?} should see {expected:?}, saw {last:?}"
        );
        for _ in 0..4 {
            let page = self.page(&headers);
            assert_eq!(
                (page.status, stars(&page.body)),
                (200, expected),
                "{step}: {user:?} on every page"
            );
        }
    }

    /// `n` anonymous product pages over keep-alive connections (4 at a time), counted by the
    /// reviews version that served them.
    fn versions(&self, n: usize) -> BTreeMap<String, usize> {
        const CLIENTS: usize = 4;
        let host = self.ready.gateway.to_string();
        let counts: Vec<BTreeMap<String, usize>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    let host = host.clone();
                    scope.spawn(move || {
                        let mut connection = Connection::new(self.ready.gateway);
                        let mut counts = BTreeMap::new();
                        for _ in (i..n).step_by(CLIENTS) {
                            let reply = connection.get(&host, "/productpage", &[]).expect("the gateway answers");
                            assert_eq!(reply.status, 200, "{}", reply.body);
                            let version = version(&reply.body).unwrap_or_else(|| "none".to_owned());
                            *counts.entry(version).or_insert(0) += 1;
                        }
                        counts
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("client thread")).collect()
        });
        let mut total = BTreeMap::new();
        for counts in counts {
            for (version, count) in counts {
                *total.entry(version).or_insert(0) += count;
            }
        }
        total
    }

    /// The proxy `name`'s Prometheus stats.
    fn stats(&self, name: &str) -> String {
        let admin = self.ready.admin[name];
        let reply = weft_e2e::get(admin, "admin", "/stats/prometheus", &[]);
        assert_eq!(reply.status, 200, "{name}'s admin: {}", reply.body);
        reply.body
    }

    /// SIGTERM; the demo stops every process and exits 0.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        terminate(&child);
        let status = eventually(Duration::from_secs(30), || child.try_wait().ok().flatten());
        status.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("weftctl demo did not exit within 30 s of SIGTERM")
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            if eventually(Duration::from_secs(20), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("----- weftctl demo ({}) -----\n{}", self.log.display(), self.log());
        }
    }
}

/// Sends SIGTERM to a child that has not been reaped.
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status();
}

/// The sum of the samples of a Prometheus counter whose labels include `label`.
fn counter(stats: &str, name: &str, label: &str) -> f64 {
    stats
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once('}'))
        .filter(|(labels, _)| labels.split(',').any(|l| l == label))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// The share of `version` among `counts`, in percent.
fn share(counts: &BTreeMap<String, usize>, version: &str) -> f64 {
    let total: usize = counts.values().sum();
    100.0 * counts.get(version).copied().unwrap_or(0) as f64 / total as f64
}

#[test]
fn bookinfo_walkthrough_on_weftctl_demo() {
    let started = Instant::now();
    let mut demo = Demo::start();
    assert!(
        demo.served_after < Duration::from_secs(60),
        "weftctl demo served the page {:?} after it started (warm build)",
        demo.served_after
    );
    eprintln!("page served {:.1?} after starting weftctl demo", demo.served_after);
    let jason = Some("jason");

    // Signing in: POST /login sets the cookie the later requests carry.
    let gateway = demo.ready.gateway;
    let login = {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(gateway).expect("gateway");
        let form = "username=jason&passwd=jason";
        write!(
            stream,
            "POST /login HTTP/1.1\r\nhost: {gateway}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{form}",
            form.len()
        )
        .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        text
    };
    assert!(login.starts_with("HTTP/1.1 302"), "{login}");
    assert!(login.to_ascii_lowercase().contains("set-cookie: user=jason"), "{login}");
    let page = demo.page(&[("cookie", "user=jason")]);
    assert!(page.body.contains("signed in as <b>jason</b>"), "{}", page.body);

    // Request routing.
    demo.apply(&[], &["virtual-service-all-v1.yaml"]);
    demo.expect_stars(None, NO_STARS, "all-v1");
    demo.expect_stars(jason, NO_STARS, "all-v1");

    demo.apply(
        &["virtual-service-all-v1.yaml"],
        &["virtual-service-reviews-test-v2.yaml"],
    );
    demo.expect_stars(jason, Stars::Black, "reviews-test-v2");
    demo.expect_stars(None, NO_STARS, "reviews-test-v2");

    // Fault injection: a 7 s delay on ratings for jason. productpage gives up on reviews
    // after two 3 s tries: about 6 s, then reviews are unavailable.
    demo.apply(&[], &["virtual-service-ratings-test-delay.yaml"]);
    let at = Instant::now();
    let page = demo.page(&[("cookie", "user=jason")]);
    let took = at.elapsed();
    assert_eq!(stars(&page.body), Stars::ReviewsUnavailable, "{}", page.body);
    assert!(
        took >= Duration::from_millis(5_500) && took <= Duration::from_secs(8),
        "the delayed page took {took:?}"
    );
    eprintln!("ratings delay: jason's page after {took:.1?}");
    let at = Instant::now();
    demo.expect_stars(None, NO_STARS, "ratings-test-delay");
    assert!(at.elapsed() < Duration::from_secs(3), "anonymous pages are not delayed");

    demo.apply(
        &["virtual-service-ratings-test-delay.yaml"],
        &["virtual-service-ratings-test-abort.yaml"],
    );
    demo.expect_stars(jason, Stars::RatingsUnavailable, "ratings-test-abort");
    demo.expect_stars(None, NO_STARS, "ratings-test-abort");

    demo.apply(
        &[
            "virtual-service-ratings-test-abort.yaml",
            "virtual-service-reviews-test-v2.yaml",
        ],
        &["virtual-service-reviews-jason-v2-v3.yaml"],
    );
    demo.expect_stars(jason, Stars::Black, "reviews-jason-v2-v3");
    demo.expect_stars(None, Stars::Red, "reviews-jason-v2-v3");

    // Traffic shifting: 50/50 v1/v3, then all v3, and 80/20 v1/v2.
    demo.apply(
        &["virtual-service-reviews-jason-v2-v3.yaml"],
        &["virtual-service-reviews-50-v3.yaml"],
    );
    let at = Instant::now();
    let counts = demo.versions(1_000);
    eprintln!("50-v3: {counts:?} in {:.1?}", at.elapsed());
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["v1", "v3"], "{counts:?}");
    assert!((share(&counts, "v1") - 50.0).abs() <= 5.0, "{counts:?}");

    demo.apply(
        &["virtual-service-reviews-50-v3.yaml"],
        &["virtual-service-reviews-v3.yaml"],
    );
    demo.expect_stars(None, Stars::Red, "reviews-v3");
    demo.expect_stars(jason, Stars::Red, "reviews-v3");

    demo.apply(
        &["virtual-service-reviews-v3.yaml"],
        &["virtual-service-reviews-80-20.yaml"],
    );
    let counts = demo.versions(1_000);
    eprintln!("80-20: {counts:?}");
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["v1", "v2"], "{counts:?}");
    assert!((share(&counts, "v1") - 80.0).abs() <= 5.0, "{counts:?}");
    assert!((share(&counts, "v2") - 20.0).abs() <= 5.0, "{counts:?}");

    // A fault on details: every call answered 555.
    demo.apply(
        &["virtual-service-reviews-80-20.yaml"],
        &["fault-injection-details-v1.yaml"],
    );
    let page = eventually(Duration::from_secs(10), || {
        let page = demo.page(&[]);
        page.body.contains(DETAILS_UNAVAILABLE).then_some(page)
    })
    .expect("the details fault shows on the page");
    assert_eq!(page.status, 200);
    assert!(page.body.contains(DETAILS_ERROR_TITLE), "{}", page.body);
    assert!(
        page.body.contains("Book Reviews"),
        "reviews still served: {}",
        page.body
    );

    // Mutual TLS on every hop: each sidecar's inbound listener (the gateway is productpage's
    // only client) took mTLS connections and no plaintext one.
    for name in demo.ready.admin.keys().filter(|n| *n != "istio-ingressgateway") {
        let stats = demo.stats(name);
        let inbound = "listener=\"inbound\"";
        let mtls = counter(&stats, "weft_listener_downstream_cx_mtls_total", inbound);
        let plaintext = counter(&stats, "weft_listener_downstream_cx_plaintext_total", inbound);
        assert!(
            mtls > 0.0 && plaintext == 0.0,
            "{name}: {mtls} mTLS, {plaintext} plaintext inbound connections"
        );
    }
    let stats = demo.stats("istio-ingressgateway");
    let productpage = "cluster=\"outbound|9080||productpage.default.svc.cluster.local\"";
    assert!(
        counter(&stats, "weft_cluster_upstream_cx_tls_total", productpage) > 0.0,
        "{stats}"
    );
    assert_eq!(
        counter(&stats, "weft_cluster_upstream_cx_tls_fail_total", productpage),
        0.0,
        "{stats}"
    );

    let status = demo.stop();
    assert!(
        status.success(),
        "weftctl demo exited with {status} on SIGTERM:\n{}",
        demo.log()
    );
    assert!(demo.log().contains("stopping the demo"), "{}", demo.log());
    eprintln!("walkthrough took {:.1?}", started.elapsed());
}
