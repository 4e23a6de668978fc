//! Runs the real `bookinfo` binary: each service is a child process on a free 127.0.0.1 port,
//! wired to its peers by URL flags; stand-in servers (plain threads) play a peer or the proxy
//! when a test needs to see what was sent or to misbehave.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const REVIEW1: &str = "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!";
const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

/// A running `bookinfo` service, killed on drop.
struct Service {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bookinfo");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        // Keeps draining stderr so the child never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    if let Some(addr) = addr {
                        let _ = addr_tx.send(addr);
                    }
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "bookinfo {args:?} did not log its address: {:?}",
                    logs.lock().expect("logs")
                );
            }
        };
        Self { child, addr, logs }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http(self.addr, "GET", path, headers, "")
    }

    fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// Waits up to 2 s for a log line matching `wanted` (the line is written as the response
    /// goes out, and read from the child's stderr by another thread).
    fn wait_for_log(&self, wanted: impl Fn(&str) -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            if self.logs().iter().any(|l| wanted(l)) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The four services wired directly to each other, reviews at `version`.
struct App {
    productpage: Service,
    _details: Service,
    _reviews: Service,
    _ratings: Service,
}

impl App {
    fn start(version: &str) -> Self {
        let ratings = Service::start(&["ratings"]);
        let details = Service::start(&["details"]);
        let podname = format!("reviews-{version}-test");
        let reviews = Service::start(&[
            "reviews",
            "--version",
            version,
            "--ratings",
            &ratings.url(),
            "--podname",
            &podname,
        ]);
        let productpage = Service::start(&[
            "productpage",
            "--details",
            &details.url(),
            "--reviews",
            &reviews.url(),
            "--ratings",
            &ratings.url(),
        ]);
        Self {
            productpage,
            _details: details,
            _reviews: reviews,
            _ratings: ratings,
        }
    }
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection, `Connection: close`, read to the end.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A request a stand-in received.
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a stand-in answers: after `delay`, `200` with `body` as JSON.
struct Canned {
    delay: Duration,
    body: String,
}

/// A tiny HTTP server that records every request and answers with a canned JSON reply.
struct StandIn {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    fn start(reply: impl Fn(&Seen) -> Canned + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stand-in");
        let addr = listener.local_addr().expect("stand-in addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let reply = Arc::new(reply);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (record, reply) = (Arc::clone(&record), Arc::clone(&reply));
                thread::spawn(move || {
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut headers = Vec::new();
                    loop {
                        let mut header = String::new();
                        match reader.read_line(&mut header) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if header.trim().is_empty() => break,
                            Ok(_) => {
                                if let Some((n, v)) = header.split_once(':') {
                                    headers.push((n.trim().to_owned(), v.trim().to_owned()));
                                }
                            }
                        }
                    }
                    let seen = Seen {
                        line: line.trim_end().to_owned(),
                        headers,
                    };
                    record.lock().expect("seen").push(seen.clone());
                    let canned = reply(&seen);
                    thread::sleep(canned.delay);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{}",
                        canned.body.len(),
                        canned.body
                    );
                    let _ = (&stream).write_all(response.as_bytes());
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

fn reviews_json(podname: &str) -> String {
    json!({
        "id": "0", "podname": podname, "clustername": "test", "version": "v2",
        "reviews": [{"reviewer": "Reviewer1", "text": "stand-in review", "rating": {"stars": 3, "color": "black"}}]
    })
    .to_string()
}

/// A URL nothing listens on.
fn unused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn reviews_v1_page_has_no_stars() {
    let app = App::start("v1");
    let page = app.productpage.get("/productpage", &[]);
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|v| v.starts_with("text/html")));
    let html = &page.body;
    assert!(html.contains("<title>Simple Bookstore App</title>"), "{html}");
    assert!(html.contains("The Comedy of Errors") && html.contains("Summary:"));
    assert!(html.contains("PublisherA") && html.contains("123-1234567890"));
    assert!(html.contains(REVIEW1) && html.contains("Reviewer2"));
    assert!(
        html.contains("<!-- reviews: version=v1 podname=reviews-v1-test clustername=null -->"),
        "{html}"
    );
    assert_eq!(count(html, "★") + count(html, "☆"), 0, "{html}");
    assert!(!html.contains("<font"), "{html}");
    assert!(!html.contains("Error fetching"));
    // One log line per request, with path and status.
    assert!(
        app.productpage
            .wait_for_log(|l| l.contains("/productpage") && l.contains("status=200")),
        "{:?}",
        app.productpage.logs()
    );
}

#[test]
fn reviews_v2_page_has_black_stars() {
    let app = App::start("v2");
    let html = app.productpage.get("/productpage", &[]).body;
    assert!(
        html.contains("<!-- reviews: version=v2 podname=reviews-v2-test"),
        "{html}"
    );
    assert!(html.contains("<font color=\"black\">★★★★★</font>"), "{html}");
    assert!(html.contains("<font color=\"black\">★★★★☆</font>"), "{html}");
    assert_eq!(count(&html, "color=\"black\""), 2);
    assert_eq!((count(&html, "★"), count(&html, "☆")), (9, 1));
    assert!(!html.contains("color=\"red\"") && !html.contains(RATINGS_UNAVAILABLE));
}

#[test]
fn reviews_v3_page_has_red_stars() {
    let app = App::start("v3");
    let html = app.productpage.get("/productpage", &[]).body;
    assert!(
        html.contains("<!-- reviews: version=v3 podname=reviews-v3-test"),
        "{html}"
    );
    assert_eq!(count(&html, "color=\"red\""), 2, "{html}");
    assert_eq!((count(&html, "★"), count(&html, "☆")), (9, 1));
    assert!(!html.contains("color=\"black\""));
}

#[test]
fn login_sets_cookie_shows_user_and_sends_end_user() {
    let reviews = StandIn::start(|_| Canned {
        delay: Duration::ZERO,
        body: reviews_json("stand-in"),
    });
    let details = Service::start(&["details"]);
    let productpage = Service::start(&["productpage", "--details", &details.url(), "--reviews", &reviews.url()]);

    let login = http(
        productpage.addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "username=jason&passwd=anything",
    );
    assert_eq!(login.status, 302);
    assert_eq!(login.header("location"), Some("/productpage"));
    let cookie = login.header("set-cookie").expect("set-cookie");
    assert!(cookie.starts_with("user=jason"), "{cookie}");

    let page = productpage.get(
        "/productpage",
        &[
            ("Cookie", "user=jason"),
            ("x-request-id", "req-42"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ],
    );
    assert!(page.body.contains("signed in as <b>jason</b>"), "{}", page.body);
    assert!(
        page.body.contains("<font color=\"black\">★★★☆☆</font>"),
        "{}",
        page.body
    );

    let seen = reviews.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let call = &seen[0];
    assert_eq!(call.line, "GET /reviews/0 HTTP/1.1");
    assert_eq!(call.header("end-user"), Some("jason"));
    assert_eq!(call.header("x-request-id"), Some("req-42"));
    assert_eq!(call.header("x-b3-traceid"), Some("80f198ee56343ba864fe8b2a57d3eff7"));
    assert!(call.header("traceparent").is_some());
    assert_eq!(call.header("cookie"), None, "cookies are not propagated");

    // Signed out: the sign-in form, and no end-user.
    let anonymous = productpage.get("/productpage", &[]);
    assert!(!anonymous.body.contains("signed in as") && anonymous.body.contains("name=\"username\""));
    assert_eq!(reviews.seen()[1].header("end-user"), None);

    let logout = productpage.get("/logout", &[("Cookie", "user=jason")]);
    assert_eq!(logout.status, 302);
    assert!(
        logout
            .header("set-cookie")
            .is_some_and(|c| c.starts_with("user=;") && c.contains("Max-Age=0"))
    );
}

#[test]
fn reviews_forwards_end_user_and_trace_headers_to_ratings() {
    let ratings = StandIn::start(|_| Canned {
        delay: Duration::ZERO,
        body: json!({"id": 0, "ratings": {"Reviewer1": 2, "Reviewer2": 1}}).to_string(),
    });
    let reviews = Service::start(&[
        "reviews",
        "--version",
        "v3",
        "--ratings",
        &ratings.url(),
        "--podname",
        "r3",
    ]);
    let reply = reviews.get(
        "/reviews/0",
        &[("end-user", "jason"), ("x-request-id", "req-7"), ("b3", "a-b-1")],
    );
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["version"], "v3");
    assert_eq!(body["podname"], "r3");
    assert_eq!(body["reviews"][0]["rating"], json!({"stars": 2, "color": "red"}));
    assert_eq!(body["reviews"][1]["rating"], json!({"stars": 1, "color": "red"}));

    let seen = ratings.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].line, "GET /ratings/0 HTTP/1.1");
    assert_eq!(seen[0].header("end-user"), Some("jason"));
    assert_eq!(seen[0].header("x-request-id"), Some("req-7"));
    assert_eq!(seen[0].header("b3"), Some("a-b-1"));
}

#[test]
fn details_down_shows_details_error() {
    let reviews = Service::start(&["reviews", "--version", "v1"]);
    let productpage = Service::start(&["productpage", "--details", &unused_url(), "--reviews", &reviews.url()]);
    let page = productpage.get("/productpage", &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Error fetching product details!"), "{}", page.body);
    assert!(
        page.body
            .contains("Sorry, product details are currently unavailable for this book.")
    );
    assert!(page.body.contains(REVIEW1), "reviews still shown");
    assert!(!page.body.contains("PublisherA"));

    let api = productpage.get("/api/v1/products/0", &[]);
    assert_eq!(api.status, 500);
    assert_eq!(
        api.json()["error"],
        "Sorry, product details are currently unavailable for this book."
    );
}

#[test]
fn slow_reviews_fail_after_two_tries() {
    let reviews = StandIn::start(|_| Canned {
        delay: Duration::from_millis(3500),
        body: reviews_json("slow"),
    });
    let details = Service::start(&["details"]);
    let productpage = Service::start(&["productpage", "--details", &details.url(), "--reviews", &reviews.url()]);
    let start = Instant::now();
    let page = productpage.get("/productpage", &[]);
    let elapsed = start.elapsed();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Error fetching product reviews!"), "{}", page.body);
    assert!(
        page.body
            .contains("Sorry, product reviews are currently unavailable for this book.")
    );
    assert!(page.body.contains("PublisherA"), "details still shown");
    assert_eq!(reviews.seen().len(), 2, "two tries");
    assert!(
        elapsed >= Duration::from_millis(5900) && elapsed < Duration::from_millis(7500),
        "two 3 s tries, took {elapsed:?}"
    );
}

#[test]
fn ratings_down_shows_unavailable_on_v2() {
    let details = Service::start(&["details"]);
    let reviews = Service::start(&["reviews", "--version", "v2", "--ratings", &unused_url()]);
    let productpage = Service::start(&["productpage", "--details", &details.url(), "--reviews", &reviews.url()]);

    let body = reviews.get("/reviews/0", &[]).json();
    for review in body["reviews"].as_array().expect("reviews") {
        assert_eq!(review["rating"], json!({"error": RATINGS_UNAVAILABLE}));
    }

    let html = productpage.get("/productpage", &[]).body;
    assert_eq!(count(&html, RATINGS_UNAVAILABLE), 2, "{html}");
    assert_eq!(count(&html, "★") + count(&html, "☆"), 0);
    assert!(!html.contains("Error fetching"));
}

#[test]
fn proxy_receives_absolute_form_requests() {
    let proxy = StandIn::start(|seen| {
        let body = if seen.line.contains("/details/0") {
            json!({"id": 0, "author": "William Shakespeare", "publisher": "PublisherViaProxy"}).to_string()
        } else if seen.line.contains("/reviews/0") {
            reviews_json("via-proxy")
        } else {
            json!({"id": 0, "ratings": {"Reviewer1": 1, "Reviewer2": 2}}).to_string()
        };
        Canned {
            delay: Duration::ZERO,
            body,
        }
    });
    let proxy_addr = proxy.addr.to_string();

    // Default peer URLs: the names only the proxy can resolve.
    let productpage = Service::start(&["productpage", "--proxy", &proxy_addr]);
    let html = productpage.get("/productpage", &[]).body;
    assert!(
        html.contains("PublisherViaProxy") && html.contains("podname=via-proxy"),
        "{html}"
    );
    let mut seen = proxy.seen();
    seen.sort_by(|a, b| a.line.cmp(&b.line));
    let lines: Vec<_> = seen.iter().map(|s| s.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "GET http://details:9080/details/0 HTTP/1.1",
            "GET http://reviews:9080/reviews/0 HTTP/1.1"
        ]
    );
    assert_eq!(seen[0].header("host"), Some("details:9080"));
    assert_eq!(seen[1].header("host"), Some("reviews:9080"));

    let reviews = Service::start(&["reviews", "--version", "v2", "--proxy", &proxy_addr]);
    let body = reviews.get("/reviews/0", &[]).json();
    assert_eq!(body["reviews"][1]["rating"], json!({"stars": 2, "color": "black"}));
    let seen = proxy.seen();
    let ratings = seen.last().expect("ratings call");
    assert_eq!(ratings.line, "GET http://ratings:9080/ratings/0 HTTP/1.1");
    assert_eq!(ratings.header("host"), Some("ratings:9080"));
}

#[test]
fn json_apis_and_health() {
    let app = App::start("v2");
    let details = &app._details;
    let ratings = &app._ratings;

    assert_eq!(
        details.get("/details/0", &[]).json(),
        json!({
            "id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
            "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"
        })
    );
    assert_eq!(details.get("/details/abc", &[]).status, 400);
    assert_eq!(
        ratings.get("/ratings/0", &[]).json(),
        json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
    );
    for service in [details, ratings, &app._reviews, &app.productpage] {
        assert_eq!(service.get("/health", &[]).status, 200);
        assert_eq!(service.get("/nope", &[]).status, 404);
    }

    let page = &app.productpage;
    let index = page.get("/", &[]);
    assert!(index.body.contains("href=\"/productpage\""), "{}", index.body);
    let products = page.get("/api/v1/products", &[]).json();
    assert_eq!(products[0]["id"], 0);
    assert_eq!(products[0]["title"], "The Comedy of Errors");
    assert!(
        products[0]["descriptionHtml"]
            .as_str()
            .is_some_and(|d| d.contains("Shakespeare"))
    );
    assert_eq!(page.get("/api/v1/products/0", &[]).json()["publisher"], "PublisherA");
    let reviews = page.get("/api/v1/products/0/reviews", &[]).json();
    assert_eq!(reviews["version"], "v2");
    assert_eq!(reviews["reviews"][0]["text"], REVIEW1);
    assert_eq!(
        page.get("/api/v1/products/0/ratings", &[]).json()["ratings"]["Reviewer2"],
        4
    );
    assert_eq!(http(page.addr, "GET", "/login", &[], "").status, 405);
}
