//! `weftctl bench` against a small hyper server on 127.0.0.1 that counts what it serves.
//!
//! The server answers `/every5th` with 503 on every fifth request, `/slow` after 400 ms, and
//! 200 otherwise; it records each request line (`GET /path HTTP/1.1`), so tests compare the
//! report with what really happened on the wire.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

const OK_BODY: &str = "ok\n";
const BUSY_BODY: &str = "unavailable\n";

/// What the server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    connections: AtomicUsize,
    ok: AtomicUsize,
    unavailable: AtomicUsize,
    /// `METHOD URI VERSION` of every request.
    lines: Mutex<Vec<String>>,
    /// `host`, `x-test` and the body of every request.
    details: Mutex<Vec<(String, String, String)>>,
}

/// The server, on a thread of its own until dropped.
struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let serving = Arc::clone(&seen);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
                bound.send(listener.local_addr().expect("address")).expect("sends");
                loop {
                    let stream = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => break,
                    };
                    serving.connections.fetch_add(1, SeqCst);
                    let seen = Arc::clone(&serving);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| answer(Arc::clone(&seen), request));
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Self {
            addr: addr.recv().expect("the server's address"),
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn answer(seen: Arc<Seen>, request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = seen.requests.fetch_add(1, SeqCst) + 1;
    let line = format!("{} {} {:?}", request.method(), request.uri(), request.version());
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (host, test) = (header("host"), header("x-test"));
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lines.lock().expect("lines").push(line);
    seen.details
        .lock()
        .expect("details")
        .push((host, test, String::from_utf8_lossy(&body).into_owned()));
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let busy = path == "/every5th" && n.is_multiple_of(5);
    let (status, body) = if busy {
        seen.unavailable.fetch_add(1, SeqCst);
        (StatusCode::SERVICE_UNAVAILABLE, BUSY_BODY)
    } else {
        seen.ok.fetch_add(1, SeqCst);
        (StatusCode::OK, OK_BODY)
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    Ok(response)
}

/// Runs `weftctl bench ARGS`; returns its output and how long it took.
fn bench(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .arg("bench")
        .args(args)
        .output()
        .expect("runs weftctl");
    (output, start.elapsed())
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `weftctl bench --json ARGS`, which must succeed; returns the parsed report.
fn bench_json(args: &[&str]) -> (serde_json::Value, Duration) {
    let (output, took) = bench(&[&["--json"], args].concat());
    assert!(output.status.success(), "weftctl bench failed: {}", stderr(&output));
    let report =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&output)));
    (report, took)
}

/// The value of a `Label:   value` line of the text report.
fn field<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} in\n{report}"))
        .trim()
}

fn u64_at(report: &serde_json::Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no {pointer} in {report}"))
}

fn f64_at(report: &serde_json::Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("no {pointer} in {report}"))
}

#[test]
fn the_report_counts_every_request_and_the_status_codes_the_server_sent() {
    let server = Server::start();
    let (output, _) = bench(&["-n", "200", "-c", "8", &server.url("/every5th")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stdout(&output);
    assert_eq!(field(&report, "Completed"), "200 requests", "{report}");
    assert_eq!(field(&report, "Failed"), "0");
    assert_eq!(server.seen.requests.load(SeqCst), 200);
    assert_eq!(
        (server.seen.ok.load(SeqCst), server.seen.unavailable.load(SeqCst)),
        (160, 40)
    );
    let statuses: Vec<&str> = report
        .lines()
        .skip_while(|l| *l != "Status codes:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(statuses, ["200: 160", "503: 40"], "{report}");
    let bytes = 160 * OK_BODY.len() + 40 * BUSY_BODY.len();
    assert_eq!(
        field(&report, "Transferred"),
        format!("{bytes} bytes (response bodies)")
    );
    for label in ["min", "mean", "p50", "p90", "p99", "p99.9", "max"] {
        assert!(
            report.lines().any(|l| l.trim_start().starts_with(&format!("{label} "))),
            "no {label} in\n{report}"
        );
    }
    assert!(
        report.contains("Latency histogram (ms):") && report.contains('█'),
        "{report}"
    );
    let connections = server.seen.connections.load(SeqCst);
    assert!((1..=8).contains(&connections), "{connections} connections for -c 8");
    assert!(
        server
            .seen
            .lines
            .lock()
            .expect("lines")
            .iter()
            .all(|l| l.starts_with("GET /every5th HTTP/1.1"))
    );
}

#[test]
fn the_json_report_has_the_same_figures() {
    let server = Server::start();
    let (report, _) = bench_json(&["-n", "100", "-c", "4", &server.url("/every5th")]);
    assert_eq!(u64_at(&report, "/requests"), 100);
    assert_eq!(u64_at(&report, "/completed"), 100);
    assert_eq!(u64_at(&report, "/failed"), 0);
    assert_eq!(u64_at(&report, "/concurrency"), 4);
    assert_eq!(u64_at(&report, "/status_codes/200"), 80);
    assert_eq!(u64_at(&report, "/status_codes/503"), 20);
    assert_eq!(server.seen.requests.load(SeqCst), 100);
    assert_eq!(
        u64_at(&report, "/transfer_bytes"),
        (80 * OK_BODY.len() + 20 * BUSY_BODY.len()) as u64
    );
    let latency: Vec<f64> = ["min", "p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|p| f64_at(&report, &format!("/latency_ms/{p}")))
        .collect();
    assert!(
        latency.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {latency:?}"
    );
    let mean = f64_at(&report, "/latency_ms/mean");
    assert!(latency[0] <= mean && mean <= latency[5]);
    let histogram = report["histogram"].as_array().expect("a histogram");
    let counted: u64 = histogram.iter().filter_map(|b| b["count"].as_u64()).sum();
    assert_eq!(counted, 100);
    let throughput = f64_at(&report, "/throughput_rps");
    let expected = 100.0 / f64_at(&report, "/duration_s");
    assert!(
        (throughput - expected).abs() / expected < 0.02,
        "{throughput} vs {expected}"
    );
}

#[test]
fn a_duration_runs_for_about_that_long() {
    let server = Server::start();
    let (report, took) = bench_json(&["-d", "1s", "-c", "4", &server.url("/")]);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(3000),
        "took {took:?}"
    );
    let duration = f64_at(&report, "/duration_s");
    assert!((0.95..1.5).contains(&duration), "duration_s {duration}");
    let completed = u64_at(&report, "/completed");
    assert!(completed > 10, "only {completed} requests in 1 s");
    assert_eq!(completed as usize, server.seen.requests.load(SeqCst));
}

#[test]
fn a_rate_sends_requests_on_a_fixed_schedule() {
    let server = Server::start();
    let (report, took) = bench_json(&["--rate", "50", "-d", "1s", &server.url("/")]);
    let completed = u64_at(&report, "/completed");
    assert!((40..=60).contains(&completed), "{completed} requests at 50/s for 1 s");
    assert_eq!(completed as usize, server.seen.requests.load(SeqCst));
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(3000),
        "took {took:?}"
    );
    assert_eq!(f64_at(&report, "/rate"), 50.0);
}

#[test]
fn through_a_proxy_requests_are_in_absolute_form() {
    let proxy = Server::start();
    let (output, _) = bench(&[
        "--proxy",
        &proxy.addr.to_string(),
        "-n",
        "6",
        "-c",
        "2",
        "-m",
        "post",
        "--body",
        "hello",
        "-H",
        "X-Test: yes",
        "http://backend.invalid:8080/through?x=1",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stdout(&output);
    assert_eq!(field(&report, "Completed"), "6 requests", "{report}");
    assert_eq!(field(&report, "Proxy"), proxy.addr.to_string());
    let lines = proxy.seen.lines.lock().expect("lines").clone();
    assert_eq!(lines.len(), 6);
    for line in &lines {
        assert_eq!(line, "POST http://backend.invalid:8080/through?x=1 HTTP/1.1");
    }
    for (host, test, body) in proxy.seen.details.lock().expect("details").iter() {
        assert_eq!(
            (host.as_str(), test.as_str(), body.as_str()),
            ("backend.invalid:8080", "yes", "hello")
        );
    }
}

#[test]
fn http2_multiplexes_one_connection() {
    let server = Server::start();
    let (report, _) = bench_json(&["--http2", "-n", "60", "-c", "6", &server.url("/h2")]);
    assert_eq!(u64_at(&report, "/completed"), 60);
    assert_eq!(report["protocol"], "h2c");
    assert_eq!(server.seen.connections.load(SeqCst), 1);
    let lines = server.seen.lines.lock().expect("lines").clone();
    assert_eq!(lines.len(), 60);
    assert!(lines.iter().all(|l| l.ends_with("/h2 HTTP/2.0")), "{lines:?}");
}

#[test]
fn timeouts_are_counted_and_a_run_without_answers_fails() {
    let server = Server::start();
    let (output, took) = bench(&["--timeout", "100ms", "-n", "4", "-c", "2", &server.url("/slow")]);
    assert!(!output.status.success());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let report = stdout(&output);
    assert_eq!(field(&report, "Completed"), "0 requests");
    assert_eq!(field(&report, "Failed"), "4 (timeout: 4)");
    let error = stderr(&output);
    assert!(
        error.contains("every request failed") && error.contains("no answer"),
        "{error}"
    );
}

#[test]
fn a_refused_connection_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (output, _) = bench(&["-n", "5", &format!("http://127.0.0.1:{port}/")]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains(&format!("cannot connect to the target 127.0.0.1:{port}")),
        "{error}"
    );
    assert!(error.to_lowercase().contains("connection refused"), "{error}");
}

#[test]
fn bad_urls_and_arguments_are_clear_errors() {
    for (args, message) in [
        (&["ftp://x"][..], "unsupported scheme ftp://"),
        (&["https://example.com/"], "https is not supported"),
        (&["example.com/x"], "no scheme"),
        (&["-n", "0", "http://x/"], "at least 1"),
        (&["-n", "5", "-d", "1s", "http://x/"], "cannot be used with"),
        (&["-d", "10", "http://x/"], "is not a duration"),
        (&["--rate", "0", "http://x/"], "is not a rate"),
        (&["-H", "bogus", "http://x/"], "is not 'Name: value'"),
        (&["--proxy", "nowhere", "http://x/"], "--proxy nowhere"),
    ] {
        let (output, _) = bench(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let error = stderr(&output);
        assert!(error.contains(message), "{args:?}: {error}");
    }
}
