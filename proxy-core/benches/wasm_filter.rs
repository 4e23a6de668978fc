//! Per-request CPU cost of a Wasm filter on the real host, in-process (no sockets, no runtime):
//! one request's filter stream through `weft_proxy::harness`, i.e. stream creation,
//! `request_headers`, `response_headers`, `log` and drop.
//!
//! ```sh
//! cargo bench -p weft-proxy --bench wasm_filter
//! ```
//!
//! Benchmarks (criterion group `wasm_filter`), all single-threaded, so the time per iteration
//! is CPU time per request, as long as nothing else takes the CPU from the benchmark thread (on
//! a busy machine, build with `--no-run` first and compare `user + sys` with `real` of `time`
//! on the run):
//!
//! - `noop_request`: filter `bench_noop` (every callback Continue, no hostcalls): the host's
//!   fixed cost per request.
//! - `read_set_request`: filter `bench_rw` (reads `x-user`, sets `x-seen`): a minimal real
//!   filter. It declares that it uses only `request_headers` (`weft.capabilities`), so the
//!   host calls no other phase and skips its `log` call.
//! - `read_set_undeclared_request`: the same module with its declaration removed, so every
//!   phase is called, as for a filter that declares nothing.
//! - `empty_baseline`: the same loop with the same heads and no filter calls; subtract it from
//!   the others.
//!
//! The request and response heads are built fresh for every iteration outside the timed part
//! (`iter_batched`), and dropped outside it too. The filters (`filters/testdata/bench_*`) are
//! built with cargo for wasm32-wasip1 first (only those two crates; a no-op when up to date).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use weft_proxy::filter::{FilterAction, LogRecord};
use weft_proxy::harness::FilterHarness;

/// The benchmark filters, built once per run (only these two crates of the `filters/`
/// workspace; a no-op when up to date).
const FILTERS: [&str; 2] = ["bench_noop", "bench_rw"];

/// Builds [`FILTERS`] and returns the path of `<crate_name>.wasm`.
fn bench_filter(crate_name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/filters");
    let command = concat!(
        "cd filters && CARGO_TARGET_DIR=../target/filters ",
        "cargo build --release --target wasm32-wasip1 -p bench_noop -p bench_rw"
    );
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .current_dir(root.join("filters"))
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip1"]);
        for name in FILTERS {
            build.args(["-p", name]);
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build the benchmark filters ({e}); run `{command}`"));
        assert!(
            status.success(),
            "building the benchmark filters failed; run `{command}` from the repository root"
        );
    });
    let path = target.join(format!("wasm32-wasip1/release/{crate_name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing; run `{command}` from the repository root",
        path.display()
    );
    path
}

fn harness(crate_name: &str) -> FilterHarness {
    let path = bench_filter(crate_name);
    FilterHarness::wasm(&path, "").unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// `crate_name`'s module without its `weft.capabilities` custom sections, written next to it.
fn undeclared_harness(crate_name: &str) -> FilterHarness {
    /// An unsigned LEB128 at `bytes[*at..]`.
    fn leb(bytes: &[u8], at: &mut usize) -> usize {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
            shift += 7;
        }
    }
    let path = bench_filter(crate_name);
    let bytes = std::fs::read(&path).expect("read the module");
    let mut out = bytes[..8].to_vec();
    let mut at = 8;
    let mut removed = 0;
    while at < bytes.len() {
        let start = at;
        let id = bytes[at];
        at += 1;
        let size = leb(&bytes, &mut at);
        let end = at + size;
        let mut name_at = at;
        let declaration = id == 0 && {
            let len = leb(&bytes, &mut name_at);
            &bytes[name_at..name_at + len] == b"weft.capabilities"
        };
        if declaration {
            removed += 1;
        } else {
            out.extend_from_slice(&bytes[start..end]);
        }
        at = end;
    }
    assert!(removed > 0, "{} declares no capabilities", path.display());
    let undeclared = path.with_file_name(format!("{crate_name}-undeclared.wasm"));
    std::fs::write(&undeclared, out).expect("write the module");
    FilterHarness::wasm(&undeclared, "").unwrap_or_else(|e| panic!("loading {}: {e}", undeclared.display()))
}

/// A typical API request head: GET, no body, 8 headers.
fn request_head() -> http::request::Parts {
    http::Request::get("/api/v1/products/1")
        .header("host", "shop.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .header("accept-language", "en-US,en;q=0.5")
        .header("x-request-id", "0f6c1d2e-8a4b-4c6d-9e1f-2a3b4c5d6e7f")
        .header("x-user", "alice")
        .header("x-forwarded-for", "203.0.113.7")
        .body(())
        .expect("valid request head")
        .into_parts()
        .0
}

/// A 200 response head with 4 headers (its body would follow).
fn response_head() -> http::response::Parts {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("content-length", "87")
        .header("date", "Thu, 26 Nov 2026 09:00:00 GMT")
        .header("server", "origin")
        .body(())
        .expect("valid response head")
        .into_parts()
        .0
}

fn log_record() -> LogRecord {
    LogRecord {
        method: http::Method::GET,
        authority: "shop.example.com".to_owned(),
        path: "/api/v1/products/1".to_owned(),
        status: 200,
        route: Some("products".into()),
        cluster: Some("products".into()),
        upstream: Some(([10, 0, 0, 7], 8080).into()),
        reason: None,
        response_bytes: 87,
        duration: Duration::from_micros(250),
    }
}

type Heads = (http::request::Parts, http::response::Parts);

fn heads() -> Heads {
    (request_head(), response_head())
}

/// One request through the filter: a fresh stream, both heads, log, drop. Returns the heads so
/// that dropping them is not timed.
fn one_request(harness: &FilterHarness, record: &LogRecord, (mut request, mut response): Heads) -> Heads {
    let mut stream = harness.stream();
    black_box(stream.request_headers(&mut request, true));
    black_box(stream.response_headers(&mut response, false));
    stream.log(record);
    drop(stream);
    (request, response)
}

/// Checks once, untimed, that the filter runs and does what the benchmark claims.
fn check(harness: &FilterHarness, record: &LogRecord, seen: Option<&str>) {
    let (mut request, mut response) = heads();
    let mut stream = harness.stream();
    assert!(matches!(
        stream.request_headers(&mut request, true),
        FilterAction::Continue
    ));
    assert!(matches!(
        stream.response_headers(&mut response, false),
        FilterAction::Continue
    ));
    stream.log(record);
    drop(stream);
    let got = request.headers.get("x-seen").map(|v| v.to_str().expect("ASCII x-seen"));
    assert_eq!(got, seen, "x-seen after the filter");
    assert_eq!(request.headers.len(), 8 + usize::from(seen.is_some()));
    assert_eq!(response.headers.len(), 4);
}

fn wasm_filter(c: &mut Criterion) {
    let record = log_record();
    let noop = harness("bench_noop");
    check(&noop, &record, None);
    let rw = harness("bench_rw");
    check(&rw, &record, Some("alice"));
    let rw_undeclared = undeclared_harness("bench_rw");
    check(&rw_undeclared, &record, Some("alice"));

    let mut group = c.benchmark_group("wasm_filter");
    group.bench_function("noop_request", |b| {
        b.iter_batched(heads, |h| one_request(&noop, &record, h), BatchSize::SmallInput)
    });
    group.bench_function("read_set_request", |b| {
        b.iter_batched(heads, |h| one_request(&rw, &record, h), BatchSize::SmallInput)
    });
    group.bench_function("read_set_undeclared_request", |b| {
        b.iter_batched(
            heads,
            |h| one_request(&rw_undeclared, &record, h),
            BatchSize::SmallInput,
        )
    });
    // `native_headers_request` (the native `headers` filter) is missing: the harness only
    // loads Wasm filters.
    group.bench_function("empty_baseline", |b| {
        b.iter_batched(heads, black_box, BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, wasm_filter);
criterion_main!(benches);
