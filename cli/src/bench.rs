//! `weftctl bench URL`: an HTTP load generator in the spirit of `ab -n 500 -c 10 URL`.
//!
//! It sends `-n` requests (or as many as fit in `-d`) over keep-alive connections, one per
//! concurrency slot (HTTP/1.1), or streams multiplexed on a single h2c prior-knowledge
//! connection (`--http2`), and prints a report: throughput, latency percentiles, a latency
//! histogram, status codes and failures by kind (`--json` for the same figures as one object).
//!
//! Two load models:
//! - **closed** (the default): `-c` workers each send their next request as soon as the
//!   previous answer arrives, as `ab` does. The server's speed sets the rate, so when the
//!   server stalls the load stalls with it and the stall is recorded once per worker only
//!   ("coordinated omission").
//! - **open** (`--rate RPS`): request *i* is scheduled at `start + i / RPS`, across all
//!   connections, whatever the server does. Latency is measured from the *scheduled* start, so
//!   the time a request waits for a free connection behind a slow one counts; this avoids
//!   coordinated omission (as wrk2 does). If `-c` is too small for the rate, latencies grow.
//!
//! `--proxy HOST:PORT` sends absolute-form requests (`GET http://host/path HTTP/1.1`) to an
//! HTTP proxy, e.g. a Weft sidecar's outbound listener. Plain `http://` only: no TLS, no
//! HTTP/3.
//!
//! Latencies go into a log-bucketed histogram of fixed size (about 450 KB, whatever the
//! number of requests): exact to the microsecond below 2 ms, within 0.05% above. Min, max
//! and mean are exact.
//!
//! Start reading at [`run`]; [`Report`] holds the figures and renders them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// `weftctl bench`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The URL to load: http://HOST[:PORT][/PATH] (https is not supported).
    url: String,
    /// Number of requests to send. Default: 200, unless -d is given.
    #[arg(short = 'n', long, value_parser = parse_count, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Send requests for this long instead of a fixed number: e.g. 10s, 500ms, 1m.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Requests in flight at once: HTTP/1.1 connections, or HTTP/2 streams with --http2.
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// Open model: start requests at this fixed rate (req/s) across all connections, and
    /// measure latency from each request's scheduled start (no coordinated omission).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// A request header, 'Name: value'; repeatable.
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    /// The request method.
    #[arg(short = 'm', long, default_value = "GET")]
    method: String,
    /// The request body (set Content-Type with -H).
    #[arg(long)]
    body: Option<String>,
    /// Send absolute-form requests through this HTTP proxy (HOST:PORT), e.g. a Weft
    /// sidecar's outbound listener.
    #[arg(long, value_name = "HOST:PORT")]
    proxy: Option<String>,
    /// Per-request timeout, connecting included.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Use one HTTP/2 connection (h2c, prior knowledge) and multiplex -c streams on it.
    #[arg(long)]
    http2: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark `args` describe and prints its report to stdout. Fails on bad
/// arguments, when the target (or proxy) cannot be reached at all, and when no request got
/// an answer; non-2xx answers are results, not failures.
pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (report, first_failure) = runtime.block_on(bench(plan))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    if report.completed == 0 {
        match first_failure {
            Some(failure) if report.failed > 0 => bail!("every request failed: {failure}"),
            _ => bail!("no request completed"),
        }
    }
    Ok(())
}

/// When to stop sending.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// After this many requests.
    Requests(u64),
    /// Once this much time has passed since the start.
    After(Duration),
}

/// A validated benchmark: what to send, where, how much and how fast.
#[derive(Debug)]
struct Plan {
    /// The URL in absolute form, for the report.
    target: String,
    /// The proxy's `HOST:PORT`, when requests go through one.
    proxy: Option<String>,
    /// What the TCP connections dial: the proxy, or the URL's host and port.
    connect_to: String,
    template: Template,
    stop: Stop,
    concurrency: u32,
    rate: Option<f64>,
    timeout: Duration,
    http2: bool,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        let url = args.url.trim();
        if !url.contains("://") {
            bail!("{url}: no scheme; write the URL as http://HOST[:PORT][/PATH]");
        }
        let uri: Uri = url.parse().with_context(|| format!("{url:?} is not a valid URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "{url}: https is not supported; weftctl bench speaks plain http:// only \
                 (bench a meshed service through its sidecar with --proxy)"
            ),
            Some(other) => bail!("{url}: unsupported scheme {other}://; weftctl bench speaks http:// only"),
            None => bail!("{url} is not a valid URL: write it as http://HOST[:PORT][/PATH]"),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .with_context(|| format!("{url}: no host; write the URL as http://HOST[:PORT][/PATH]"))?
            .clone();
        if authority.as_str().contains('@') {
            bail!("{url}: user information in the URL is not supported (send an Authorization header with -H)");
        }
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let absolute = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(path.clone())
            .build()
            .with_context(|| format!("{url} is not a valid URL"))?;
        let proxy = args.proxy.as_deref().map(parse_proxy).transpose()?;
        let connect_to = match &proxy {
            Some(proxy) => proxy.clone(),
            None => host_port(&authority),
        };
        // HTTP/2 always carries scheme and authority (pseudo-headers); HTTP/1.1 uses the
        // absolute form only towards a proxy.
        let request_uri = if proxy.is_some() || args.http2 {
            absolute.clone()
        } else {
            Uri::from(path)
        };
        let method = Method::from_bytes(args.method.trim().to_ascii_uppercase().as_bytes())
            .with_context(|| format!("{:?} is not a valid HTTP method", args.method))?;
        let mut headers = HeaderMap::new();
        for header in &args.headers {
            let (name, value) = header
                .split_once(':')
                .with_context(|| format!("header {header:?} is not 'Name: value'"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("header {header:?}: {:?} is not a valid header name", name.trim()))?;
            let value = HeaderValue::from_str(value.trim())
                .with_context(|| format!("header {header:?}: the value is not a valid header value"))?;
            headers.append(name, value);
        }
        if !args.http2 && !headers.contains_key(HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .with_context(|| format!("{url}: the host is not a valid Host header"))?;
            headers.insert(HOST, host);
        }
        let stop = match (args.requests, args.duration) {
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) => Stop::After(d),
            (None, None) => Stop::Requests(200),
        };
        Ok(Self {
            target: absolute.to_string(),
            proxy,
            connect_to,
            template: Template {
                method,
                uri: request_uri,
                headers,
                body: Bytes::from(args.body.clone().unwrap_or_default()),
            },
            stop,
            concurrency: args.concurrency,
            rate: args.rate,
            timeout: args.timeout,
            http2: args.http2,
        })
    }

    /// When request number `i` starts, or `None` when it is not to be sent. Closed model:
    /// now; open model: on the fixed schedule.
    fn schedule(&self, i: u64, start: Instant) -> Option<Instant> {
        if let Stop::Requests(n) = self.stop
            && i >= n
        {
            return None;
        }
        let at = match self.rate {
            Some(rate) => start + Duration::from_secs_f64(i as f64 / rate),
            None => Instant::now(),
        };
        match self.stop {
            Stop::After(d) if at >= start + d => None,
            _ => Some(at),
        }
    }
}

/// `HOST:PORT` of a URL's authority, the port defaulting to 80.
fn host_port(authority: &Authority) -> String {
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(80);
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `--proxy`: `HOST:PORT`, or `http://HOST:PORT`.
fn parse_proxy(proxy: &str) -> anyhow::Result<String> {
    let bare = proxy
        .trim()
        .strip_prefix("http://")
        .unwrap_or(proxy.trim())
        .trim_end_matches('/');
    if bare.contains("://") {
        bail!("--proxy {proxy}: give the proxy as HOST:PORT (an http proxy)");
    }
    let authority: Authority = bare
        .parse()
        .with_context(|| format!("--proxy {proxy}: not HOST:PORT"))?;
    if authority.port_u16().is_none() || authority.host().is_empty() {
        bail!("--proxy {proxy}: not HOST:PORT");
    }
    Ok(host_port(&authority))
}

/// A duration argument: a number and a unit, `ms`, `s`, `m` or `h` (`10s`, `500ms`, `1.5m`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration: write e.g. 10s, 500ms or 1m");
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{text:?}: the duration must be positive")),
    }
}

/// `-n`: a number of requests, at least 1.
fn parse_count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a number of requests: give a whole number, at least 1"
        )),
    }
}

/// `--rate`: a positive number of requests per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: give a positive number of requests per second"
        )),
    }
}

/// The request sent again and again.
#[derive(Debug)]
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Template {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Why a request got no answer.
#[derive(Debug)]
enum Failure {
    /// The TCP connection could not be made.
    Connect(std::io::Error),
    /// The HTTP handshake (h2c preface, settings) failed.
    Handshake(hyper::Error),
    /// Sending the request or reading the response head failed.
    Send(hyper::Error),
    /// Reading the response body failed.
    Body(hyper::Error),
    /// No complete answer within `--timeout`.
    Timeout,
}

impl Failure {
    /// The kind the report counts failures by.
    fn kind(&self) -> String {
        match self {
            Self::Connect(e) => format!("connect: {}", e.kind()),
            Self::Handshake(e) => format!("handshake: {e}"),
            Self::Send(e) => format!("send: {e}"),
            Self::Body(e) => format!("body: {e}"),
            Self::Timeout => "timeout".to_owned(),
        }
    }

    /// The whole story, for the error when every request failed.
    fn describe(&self, plan: &Plan) -> String {
        let cause = |e: &dyn std::error::Error| {
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                let _ = write!(text, ": {s}");
                source = s.source();
            }
            text
        };
        match self {
            Self::Connect(e) => format!("connecting to {}: {}", plan.connect_to, cause(e)),
            Self::Handshake(e) => format!("HTTP/2 handshake with {}: {}", plan.connect_to, cause(e)),
            Self::Send(e) => format!("sending to {}: {}", plan.connect_to, cause(e)),
            Self::Body(e) => format!("reading a response body from {}: {}", plan.connect_to, cause(e)),
            Self::Timeout => format!("no answer from {} within {:?}", plan.connect_to, plan.timeout),
        }
    }
}

/// Latencies in microseconds, in a fixed number of log-spaced buckets: exact below
/// `2^SUB_BITS` µs, then `2^(SUB_BITS-1)` buckets per power of two (relative width 1/1024).
struct Histogram {
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

const SUB_BITS: u32 = 11;
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * HALF) as usize;

/// The bucket of a value.
fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS + 1;
    let mantissa = value >> shift;
    (SUB + u64::from(exponent - SUB_BITS) * HALF + (mantissa - HALF)) as usize
}

/// The values of a bucket: lowest and highest, inclusive.
fn bucket_range(bucket: usize) -> (u64, u64) {
    let bucket = bucket as u64;
    if bucket < SUB {
        return (bucket, bucket);
    }
    let j = bucket - SUB;
    let shift = (j / HALF) as u32 + 1;
    let low = (HALF + j % HALF) << shift;
    (low, low + ((1 << shift) - 1))
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }

    fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(micros, Relaxed);
        self.min.fetch_min(micros, Relaxed);
        self.max.fetch_max(micros, Relaxed);
    }

    fn snapshot(&self) -> Latencies {
        Latencies {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| (i, c.load(Relaxed)))
                .filter(|&(_, c)| c > 0)
                .collect(),
            count: self.count.load(Relaxed),
            sum: self.sum.load(Relaxed),
            min: self.min.load(Relaxed),
            max: self.max.load(Relaxed),
        }
    }
}

/// A histogram's contents: the non-empty buckets in order, and exact count, sum, min, max (µs).
#[derive(Debug, Default, Clone)]
struct Latencies {
    buckets: Vec<(usize, u64)>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Latencies {
    /// The value below which a fraction `q` of the latencies fall (µs), to the bucket's middle.
    fn quantile(&self, q: f64) -> u64 {
        let wanted = (q * self.count as f64).ceil();
        let rank = (wanted as u64).clamp(1, self.count.max(1));
        let mut seen = 0;
        for &(bucket, count) in &self.buckets {
            seen += count;
            if seen >= rank {
                let (low, high) = bucket_range(bucket);
                return (low + (high - low) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// About ten log-spaced bins from the minimum to p99.9, then one for what lies above.
    fn bins(&self, p999: u64) -> Vec<Bin> {
        const BINS: usize = 10;
        if self.count == 0 {
            return Vec::new();
        }
        let (low, high) = (self.min.max(1) as f64, p999.max(1) as f64);
        let edges: Vec<f64> = if high <= low {
            vec![low, high]
        } else {
            (0..=BINS)
                .map(|k| low * (high / low).powf(k as f64 / BINS as f64))
                .collect()
        };
        let mut bins: Vec<Bin> = edges
            .windows(2)
            .map(|w| Bin {
                from_us: w[0],
                to_us: w[1],
                count: 0,
                overflow: false,
            })
            .collect();
        let mut over = 0;
        for &(bucket, count) in &self.buckets {
            let (a, b) = bucket_range(bucket);
            let value = (a + (b - a) / 2).clamp(self.min, self.max);
            if value > p999 {
                over += count;
                continue;
            }
            let value = value.max(1) as f64;
            let index = bins.iter().position(|bin| value < bin.to_us).unwrap_or(bins.len() - 1);
            bins[index].count += count;
        }
        if over > 0 {
            bins.push(Bin {
                from_us: high,
                to_us: self.max as f64,
                count: over,
                overflow: true,
            });
        }
        bins
    }
}

/// A row of the latency histogram.
#[derive(Debug, Clone, PartialEq)]
struct Bin {
    from_us: f64,
    to_us: f64,
    count: u64,
    /// Above p99.9.
    overflow: bool,
}

/// What the workers share: the plan, the request counter and the results.
struct Shared {
    plan: Plan,
    start: Instant,
    /// The next request's number.
    tickets: AtomicU64,
    /// Set on Ctrl-C.
    stopped: AtomicBool,
    /// The resolved address connections go to.
    addr: SocketAddr,
    /// The connection made to check the target is up, for the first worker.
    spare: Mutex<Option<TcpStream>>,
    /// With --http2, the one connection all workers share.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
    latency: Histogram,
    /// Answers by status code (100..=999).
    statuses: Box<[AtomicU64]>,
    body_bytes: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    first_failure: Mutex<Option<String>>,
}

impl Shared {
    fn done(&self) -> u64 {
        self.latency.count.load(Relaxed)
            + self
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .sum::<u64>()
    }

    async fn connect(&self) -> Result<TcpStream, Failure> {
        let spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner).take();
        let stream = match spare {
            Some(stream) => stream,
            None => TcpStream::connect(self.addr).await.map_err(Failure::Connect)?,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<Full<Bytes>>, Failure> {
        let stream = self.connect().await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Failure::Handshake)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// The shared HTTP/2 connection, made (again) if there is none or it closed.
    async fn h2_sender(&self) -> Result<http2::SendRequest<Full<Bytes>>, Failure> {
        let mut shared = self.h2.lock().await;
        if let Some(sender) = shared.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        *shared = None;
        let stream = self.connect().await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(Failure::Handshake)?;
        tokio::spawn(connection);
        *shared = Some(sender.clone());
        Ok(sender)
    }

    fn record_failure(&self, failure: &Failure) {
        *self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(failure.kind())
            .or_default() += 1;
        self.first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| failure.describe(&self.plan));
    }
}

/// A worker's connection: its own (HTTP/1.1) or a handle on the shared one (HTTP/2).
enum Connection {
    H1(Option<http1::SendRequest<Full<Bytes>>>),
    H2(Option<http2::SendRequest<Full<Bytes>>>),
}

impl Connection {
    /// Sends one request and reads the whole answer: its status and body size. Connects
    /// first if there is no open connection.
    async fn exchange(&mut self, shared: &Shared) -> Result<(StatusCode, u64), Failure> {
        match self {
            Self::H1(slot) => {
                let mut sender = match slot.take() {
                    Some(sender) if !sender.is_closed() => sender,
                    _ => shared.connect_h1().await?,
                };
                if sender.ready().await.is_err() {
                    // Closed by the server between two requests: one new connection.
                    sender = shared.connect_h1().await?;
                    sender.ready().await.map_err(Failure::Send)?;
                }
                let response = sender
                    .send_request(shared.plan.template.request())
                    .await
                    .map_err(Failure::Send)?;
                let answer = read(response).await?;
                *slot = Some(sender);
                Ok(answer)
            }
            Self::H2(slot) => {
                let mut sender = match slot.take() {
                    Some(sender) if !sender.is_closed() => sender,
                    _ => shared.h2_sender().await?,
                };
                sender.ready().await.map_err(Failure::Send)?;
                let response = sender
                    .send_request(shared.plan.template.request())
                    .await
                    .map_err(Failure::Send)?;
                *slot = Some(sender);
                read(response).await
            }
        }
    }
}

/// Reads a response to its end: its status and the size of its body.
async fn read(response: http::Response<hyper::body::Incoming>) -> Result<(StatusCode, u64), Failure> {
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.map_err(Failure::Body)?.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok((status, bytes))
}

/// One concurrency slot: takes request numbers until the plan says stop.
async fn worker(shared: Arc<Shared>) {
    let mut connection = if shared.plan.http2 {
        Connection::H2(None)
    } else {
        Connection::H1(None)
    };
    while !shared.stopped.load(Relaxed) {
        let i = shared.tickets.fetch_add(1, Relaxed);
        let Some(scheduled) = shared.plan.schedule(i, shared.start) else {
            break;
        };
        tokio::time::sleep_until(scheduled).await;
        let outcome = tokio::time::timeout(shared.plan.timeout, connection.exchange(&shared)).await;
        let latency = scheduled.elapsed();
        match outcome {
            Ok(Ok((status, bytes))) => {
                shared.latency.record(latency);
                shared.statuses[usize::from(status.as_u16()).min(999)].fetch_add(1, Relaxed);
                shared.body_bytes.fetch_add(bytes, Relaxed);
            }
            Ok(Err(failure)) => {
                shared.record_failure(&failure);
                connection = match connection {
                    Connection::H1(_) => Connection::H1(None),
                    Connection::H2(_) => Connection::H2(None),
                };
            }
            Err(_elapsed) => {
                shared.record_failure(&Failure::Timeout);
                if let Connection::H1(slot) = &mut connection {
                    // Mid-exchange: the connection's state is unknown.
                    *slot = None;
                }
            }
        }
    }
}

/// Resolves the target, checks it accepts connections, runs the workers (and the progress
/// bar) to the end or Ctrl-C; returns the report and the first failure's description.
async fn bench(plan: Plan) -> anyhow::Result<(Report, Option<String>)> {
    let what = if plan.proxy.is_some() {
        "the proxy"
    } else {
        "the target"
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&plan.connect_to)
        .await
        .with_context(|| format!("resolving {what} {}", plan.connect_to))?
        .collect();
    let mut last_error = None;
    let mut up = None;
    for addr in addrs {
        match tokio::time::timeout(plan.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                up = Some((addr, stream));
                break;
            }
            Ok(Err(e)) => last_error = Some(anyhow::Error::new(e)),
            Err(_) => last_error = Some(anyhow::anyhow!("timed out after {:?}", plan.timeout)),
        }
    }
    let Some((addr, stream)) = up else {
        let error = last_error.unwrap_or_else(|| anyhow::anyhow!("no address"));
        return Err(error.context(format!("cannot connect to {what} {}", plan.connect_to)));
    };

    let concurrency = plan.concurrency;
    let shared = Arc::new(Shared {
        plan,
        start: Instant::now(),
        tickets: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        addr,
        spare: Mutex::new(Some(stream)),
        h2: tokio::sync::Mutex::new(None),
        latency: Histogram::new(),
        statuses: (0..1000).map(|_| AtomicU64::new(0)).collect(),
        body_bytes: AtomicU64::new(0),
        failures: Mutex::new(BTreeMap::new()),
        first_failure: Mutex::new(None),
    });
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(progress(Arc::clone(&shared))));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        workers.spawn(worker(Arc::clone(&shared)));
    }
    let interrupted = tokio::select! {
        () = async { while workers.join_next().await.is_some() {} } => false,
        Ok(()) = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        shared.stopped.store(true, Relaxed);
        workers.abort_all();
    }
    let elapsed = shared.start.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprint!("\r\x1b[2K");
    }
    let report = Report::new(&shared, elapsed, interrupted);
    let first_failure = shared
        .first_failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    Ok((report, first_failure))
}

/// Redraws the progress line on stderr ten times a second.
async fn progress(shared: Arc<Shared>) {
    const WIDTH: u64 = 30;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // The last second's (time, requests done), for the current rate.
    let mut window = std::collections::VecDeque::from([(shared.start, 0)]);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = shared.done();
        window.push_back((now, done));
        while window.len() > 11 {
            window.pop_front();
        }
        let rate = window.front().map_or(0.0, |&(then, before)| {
            let seconds = now.duration_since(then).as_secs_f64();
            let delta = (done - before) as f64;
            if seconds > 0.0 { delta / seconds } else { 0.0 }
        });
        let elapsed = now.duration_since(shared.start);
        let (eighths, position) = match shared.plan.stop {
            Stop::Requests(n) => (done.min(n) * WIDTH * 8 / n, format!("{done}/{n}")),
            Stop::After(d) => {
                let fraction = (elapsed.as_secs_f64() / d.as_secs_f64()).min(1.0);
                let eighths = (fraction * (WIDTH * 8) as f64) as u64;
                (
                    eighths,
                    format!("{:.1}s/{:.1}s", elapsed.as_secs_f64(), d.as_secs_f64()),
                )
            }
        };
        let bar = bar(eighths, WIDTH);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K[{bar}] {position}  {rate:.0} req/s");
        let _ = stderr.flush();
    }
}

/// A bar `eighths / 8` cells long, padded to `width` cells.
fn bar(eighths: u64, width: u64) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = eighths.min(width * 8);
    let full = eighths / 8;
    let mut bar = "█".repeat(full as usize);
    if full < width {
        bar.push(PARTS[(eighths % 8) as usize]);
        bar.push_str(&" ".repeat((width - full - 1) as usize));
    }
    bar
}

/// A benchmark's figures.
#[derive(Debug, Clone)]
struct Report {
    target: String,
    proxy: Option<String>,
    http2: bool,
    concurrency: u32,
    rate: Option<f64>,
    interrupted: bool,
    /// Requests answered (any status).
    completed: u64,
    /// Requests without an answer.
    failed: u64,
    /// Failures by kind.
    failures: BTreeMap<String, u64>,
    duration: Duration,
    /// Response body bytes received.
    transfer_bytes: u64,
    latency: Latencies,
    /// Answers by status code.
    statuses: BTreeMap<u16, u64>,
}

/// Microseconds as milliseconds rounded to 2 decimals, as the report prints them.
fn ms(micros: u64) -> f64 {
    let micros = micros as f64;
    (micros / 10.0).round() / 100.0
}

impl Report {
    fn new(shared: &Shared, duration: Duration, interrupted: bool) -> Self {
        let failures = shared.failures.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let latency = shared.latency.snapshot();
        Self {
            target: shared.plan.target.clone(),
            proxy: shared.plan.proxy.clone(),
            http2: shared.plan.http2,
            concurrency: shared.plan.concurrency,
            rate: shared.plan.rate,
            interrupted,
            completed: latency.count,
            failed: failures.values().sum(),
            failures,
            duration,
            transfer_bytes: shared.body_bytes.load(Relaxed),
            latency,
            statuses: shared
                .statuses
                .iter()
                .enumerate()
                .filter_map(|(code, n)| {
                    let n = n.load(Relaxed);
                    (n > 0).then(|| (u16::try_from(code).unwrap_or(999), n))
                })
                .collect(),
        }
    }

    fn throughput(&self) -> f64 {
        let seconds = self.duration.as_secs_f64();
        let completed = self.completed as f64;
        if seconds > 0.0 { completed / seconds } else { 0.0 }
    }

    /// min, mean, p50, p90, p99, p99.9, max in µs.
    fn percentiles(&self) -> [(&'static str, u64); 7] {
        let l = &self.latency;
        let mean = l.sum.checked_div(l.count).unwrap_or(0);
        let min = if l.count == 0 { 0 } else { l.min };
        [
            ("min", min),
            ("mean", mean),
            ("p50", l.quantile(0.50)),
            ("p90", l.quantile(0.90)),
            ("p99", l.quantile(0.99)),
            ("p99.9", l.quantile(0.999)),
            ("max", l.max),
        ]
    }

    fn protocol(&self) -> String {
        if self.http2 {
            format!("HTTP/2 (h2c), {} streams on one connection", self.concurrency)
        } else {
            format!("HTTP/1.1, {} keep-alive connections", self.concurrency)
        }
    }

    /// The text report.
    fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            let _ = writeln!(out, "{:<14}{value}", format!("{label}:"));
        };
        line("Target", self.target.clone());
        if let Some(proxy) = &self.proxy {
            line("Proxy", proxy.clone());
        }
        line("Concurrency", self.protocol());
        if let Some(rate) = self.rate {
            line(
                "Rate",
                format!("{rate} req/s, open model (latency from the scheduled start)"),
            );
        }
        line("Completed", format!("{} requests", self.completed));
        let failed = if self.failures.is_empty() {
            "0".to_owned()
        } else {
            let kinds: Vec<String> = self.failures.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            format!("{} ({})", self.failed, kinds.join(", "))
        };
        line("Failed", failed);
        let interrupted = if self.interrupted { " (interrupted)" } else { "" };
        line("Duration", format!("{:.2} s{interrupted}", self.duration.as_secs_f64()));
        line("Throughput", format!("{:.2} req/s", self.throughput()));
        line(
            "Transferred",
            format!("{} bytes (response bodies)", self.transfer_bytes),
        );

        if self.completed > 0 {
            let _ = writeln!(out, "\nLatency (ms):");
            for (name, micros) in self.percentiles() {
                let _ = writeln!(out, "  {name:<7}{:>10.2}", ms(micros));
            }
            let _ = writeln!(out, "\nLatency histogram (ms):");
            let bins = self.latency.bins(self.latency.quantile(0.999));
            let most = bins.iter().map(|b| b.count).max().unwrap_or(1).max(1);
            let edge = |micros: f64| format!("{:.2}", micros / 1000.0);
            let edge_width = bins
                .iter()
                .flat_map(|b| [edge(b.from_us).len(), edge(b.to_us).len()])
                .max()
                .unwrap_or(0);
            let labels: Vec<String> = bins
                .iter()
                .map(|b| {
                    if b.overflow {
                        format!("{:>edge_width$} > {:>edge_width$}", "", edge(b.from_us))
                    } else {
                        format!("{:>edge_width$} - {:>edge_width$}", edge(b.from_us), edge(b.to_us))
                    }
                })
                .collect();
            let label_width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
            let count_width = bins.iter().map(|b| b.count.to_string().len()).max().unwrap_or(1);
            for (bin, label) in bins.iter().zip(&labels) {
                let eighths = (u128::from(bin.count) * 40 * 8).div_ceil(u128::from(most));
                let bar = bar(u64::try_from(eighths).unwrap_or(0), 40);
                let row = format!("  {label:<label_width$}  {:>count_width$} {bar}", bin.count);
                let _ = writeln!(out, "{}", row.trim_end());
            }
        }

        if !self.statuses.is_empty() {
            let _ = writeln!(out, "\nStatus codes:");
            for (code, n) in &self.statuses {
                let _ = writeln!(out, "  {code}: {n}");
            }
        }
        out
    }

    /// The same figures as one JSON object.
    fn to_json(&self) -> serde_json::Value {
        let latency: serde_json::Map<String, serde_json::Value> = if self.completed == 0 {
            serde_json::Map::new()
        } else {
            self.percentiles()
                .into_iter()
                .map(|(name, micros)| (name.replace('.', "_"), ms(micros).into()))
                .collect()
        };
        let histogram: Vec<serde_json::Value> = self
            .latency
            .bins(self.latency.quantile(0.999))
            .iter()
            .map(|b| {
                let (from, to) = (b.from_us.round() as u64, b.to_us.round() as u64);
                serde_json::json!({
                    "from_ms": ms(from),
                    "to_ms": ms(to),
                    "count": b.count,
                    "overflow": b.overflow,
                })
            })
            .collect();
        let statuses: serde_json::Map<String, serde_json::Value> = self
            .statuses
            .iter()
            .map(|(code, n)| (code.to_string(), (*n).into()))
            .collect();
        serde_json::json!({
            "target": self.target,
            "proxy": self.proxy,
            "protocol": if self.http2 { "h2c" } else { "http/1.1" },
            "concurrency": self.concurrency,
            "rate": self.rate,
            "interrupted": self.interrupted,
            "requests": self.completed + self.failed,
            "completed": self.completed,
            "failed": self.failed,
            "failures": self.failures,
            "duration_s": (self.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            "throughput_rps": (self.throughput() * 100.0).round() / 100.0,
            "transfer_bytes": self.transfer_bytes,
            "latency_ms": latency,
            "histogram": histogram,
            "status_codes": statuses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["10", "s", "", "0s", "-1s", "1x", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn buckets_cover_every_value_and_are_tight() {
        let mut last = None;
        for value in (0..5000).chain([1 << 20, (1 << 20) + 12_345, u64::MAX / 3, u64::MAX]) {
            let bucket = bucket_of(value);
            assert!(bucket < BUCKETS);
            let (low, high) = bucket_range(bucket);
            assert!(low <= value && value <= high, "{value} in {low}..={high}");
            assert!(high - low <= low / 1000, "{value}: bucket {low}..={high} too wide");
            if value < 5000 {
                assert!(last.is_none_or(|l| l <= bucket), "buckets grow with the value");
                last = Some(bucket);
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_and_bins_follow_the_samples() {
        let histogram = Histogram::new();
        for micros in 1..=1000u64 {
            histogram.record(Duration::from_micros(micros * 10));
        }
        let latencies = histogram.snapshot();
        assert_eq!((latencies.count, latencies.min, latencies.max), (1000, 10, 10_000));
        let close = |got: u64, want: u64| got.abs_diff(want) <= want / 1000 + 1;
        assert!(close(latencies.quantile(0.5), 5000), "{}", latencies.quantile(0.5));
        assert!(close(latencies.quantile(0.99), 9900));
        assert_eq!(latencies.quantile(1.0), 10_000);
        let p999 = latencies.quantile(0.999);
        let bins = latencies.bins(p999);
        assert_eq!(bins.iter().map(|b| b.count).sum::<u64>(), 1000);
        assert_eq!(bins.iter().filter(|b| !b.overflow).count(), 10);
        assert!(bins.last().is_some_and(|b| b.overflow && b.count == 1));
    }

    #[test]
    fn one_latency_makes_one_bin() {
        let histogram = Histogram::new();
        histogram.record(Duration::from_micros(300));
        histogram.record(Duration::from_micros(300));
        let latencies = histogram.snapshot();
        let bins = latencies.bins(latencies.quantile(0.999));
        assert_eq!(bins.len(), 1);
        assert_eq!(bins[0].count, 2);
    }

    #[test]
    fn bars_have_a_fixed_width() {
        assert_eq!(bar(0, 4), "    ");
        assert_eq!(bar(1, 4), "▏   ");
        assert_eq!(bar(12, 4), "█▌  ");
        assert_eq!(bar(32, 4), "████");
        assert_eq!(bar(99, 4), "████");
    }
}
