//! The harness against real filters (`filters/testdata`) on the real host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_filter_test::{CalloutReply, Error, FailurePolicy, FilterTest, Level, Request, Response, WasmBuild};

/// Test filter crate `package` of `filters/testdata`, built for wasm32-wasip1 on first use.
fn filter(package: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    WasmBuild::new(root.join("filters"))
        .package(package)
        .target_dir(root.join("target/filters"))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn headers_are_edited_both_ways() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_headers"))
        .config(serde_json::json!({"name": "demo"}))
        .build()?;
    let outcome = test.run(
        Request::post("/items?page=2")
            .header("x-remove-me", "1")
            .header("x-keep", "k")
            .body("payload"),
        Response::status(201)
            .header("x-upstream-secret", "s3cr3t")
            .header("x-other", "o")
            .body("created"),
    );
    assert!(outcome.forwarded);
    assert!(outcome.local_reply.is_none());
    // The request as the upstream gets it.
    assert_eq!(outcome.request.method, "POST");
    assert_eq!(outcome.request.path, "/items?page=2");
    assert_eq!(outcome.request.authority, "localhost");
    assert_eq!(outcome.request.header("x-wasm-request"), Some("demo"));
    assert_eq!(outcome.request.header("x-remove-me"), None);
    assert_eq!(outcome.request.header("x-keep"), Some("k"));
    assert_eq!(outcome.request.body, "payload");
    // The response as the client gets it.
    assert_eq!(outcome.response.status, 201);
    assert_eq!(outcome.response.header("x-wasm-response"), Some("demo"));
    assert_eq!(outcome.response.header("x-upstream-secret"), None);
    assert_eq!(outcome.response.header("x-other"), Some("o"));
    assert_eq!(outcome.response.body_text(), "created");
    assert!(!outcome.response.reset);
    assert_eq!(outcome.attempts, 1);
    assert_eq!(outcome.log.status, 201);
    assert_eq!(outcome.log.cluster.as_deref(), Some("upstream"));
    assert_eq!(outcome.log.reason, None);
    Ok(())
}

#[test]
fn a_rejected_configuration_carries_the_proxy_reason_and_the_guest_log() {
    let error = FilterTest::wasm(filter("test_headers"))
        .config(serde_json::json!({"reject": "yes"}))
        .build()
        .err()
        .expect("the configuration is rejected");
    let message = error.rejection().expect("a rejection").to_owned();
    assert!(
        message.contains("test_headers") && message.contains("on_configure rejected the plugin configuration"),
        "{message}"
    );
    let Error::Rejected { logs, .. } = &error else {
        panic!("not a rejection: {error}");
    };
    assert!(
        logs.contains(&(
            Level::Warn,
            "test_headers: rejecting configuration: configuration has key \"reject\"".to_owned()
        )),
        "{logs:?}"
    );
    // Both are in the error's message.
    let shown = error.to_string();
    assert!(
        shown.contains("on_configure rejected") && shown.contains(r#"has key "reject""#),
        "{shown}"
    );
}

#[test]
fn a_missing_module_is_a_read_error() {
    let error = FilterTest::wasm("/nonexistent/filter.wasm").build().err();
    assert!(matches!(error, Some(Error::Read { .. })), "{error:?}");
}

#[test]
fn a_local_reply_skips_the_upstream_and_goes_through_the_response_phases() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_deny")).build()?;
    let denied = test.run(Request::get("/forbidden/x"), Response::ok().body("never sent"));
    assert!(!denied.forwarded);
    assert_eq!(denied.attempts, 0);
    let reply = denied.local_reply.as_ref().expect("a local reply");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.headers["x-denied-by"], "test_deny");
    assert_eq!(reply.body, "denied by wasm\n");
    assert_eq!(denied.response.status, 403);
    assert_eq!(denied.response.header("x-denied-by"), Some("test_deny"));
    assert_eq!(denied.response.header("x-weft-reason"), Some("filter"));
    assert_eq!(denied.response.header("content-type"), Some("text/plain"));
    assert_eq!(denied.response.body_text(), "denied by wasm\n");
    assert_eq!(denied.log.reason, Some("filter"));
    assert_eq!(denied.log.status, 403);

    let allowed = test.run(Request::get("/fine"), Response::ok().body("ok"));
    assert!(allowed.forwarded);
    assert!(allowed.local_reply.is_none());
    assert_eq!(allowed.response.body, "ok");
    Ok(())
}

fn callout_test() -> Result<FilterTest, Error> {
    FilterTest::wasm(filter("test_callout"))
        .config(r#"{"cluster": "authz", "timeout_ms": 250}"#)
        .build()
}

#[test]
fn a_mocked_callout_allows_and_the_paused_request_resumes() -> Result<(), Error> {
    let test = callout_test()?;
    test.on_callout("authz", |callout| match callout.header("x-user") {
        Some("ann") => CalloutReply::ok("  ann-token \n"),
        _ => CalloutReply::new(401),
    });
    let outcome = test.run(Request::get("/data").header("x-user", "ann"), Response::ok());
    assert!(outcome.forwarded, "{:?}", outcome.local_reply);
    assert_eq!(outcome.request.header("x-authz"), Some("ann-token"));
    assert_eq!(outcome.response.status, 200);
    let [callout] = outcome.callouts.as_slice() else {
        panic!("one callout: {:?}", outcome.callouts);
    };
    assert_eq!(callout.cluster, "authz");
    assert_eq!(callout.method(), Some("GET"));
    assert_eq!(callout.path(), Some("/check"));
    assert_eq!(callout.authority(), Some("authz"));
    assert_eq!(callout.header("x-user"), Some("ann"));
    assert_eq!(callout.timeout, Duration::from_millis(250));
    Ok(())
}

#[test]
fn a_mocked_callout_denies() -> Result<(), Error> {
    let test = callout_test()?;
    test.on_callout("authz", |_| CalloutReply {
        status: 403,
        headers: vec![("x-why".to_owned(), "no".to_owned())],
        body: "nope".into(),
        trailers: vec![],
    });
    let outcome = test.run(Request::get("/data").header("x-user", "bob"), Response::ok());
    assert!(!outcome.forwarded);
    assert_eq!(outcome.response.status, 403);
    assert_eq!(outcome.response.header("x-authz-status"), Some("403"));
    assert_eq!(outcome.response.body_text(), "callout denied\n");
    assert_eq!(outcome.callouts.len(), 1);
    Ok(())
}

#[test]
fn canned_callout_replies_are_used_in_order_then_none_means_no_response() -> Result<(), Error> {
    let test = callout_test()?;
    test.reply_to_callout("authz", CalloutReply::ok("first"))
        .reply_to_callout("authz", CalloutReply::new(500))
        .reply_to_callout("authz", None);
    let first = test.run(Request::get("/"), Response::ok());
    assert_eq!(first.request.header("x-authz"), Some("first"));
    let second = test.run(Request::get("/"), Response::ok());
    assert_eq!(second.response.header("x-authz-status"), Some("500"));
    // No response at all: the filter sees what a timeout gives.
    let third = test.run(Request::get("/"), Response::ok());
    assert_eq!(third.response.status, 503);
    assert_eq!(third.response.body_text(), "callout failed\n");
    // The queue is empty and there is no handler: still no response.
    let fourth = test.run(Request::get("/"), Response::ok());
    assert_eq!(fourth.response.body_text(), "callout failed\n");
    assert_eq!(test.callouts().len(), 4);
    Ok(())
}

#[test]
fn a_callout_to_an_unknown_cluster_is_refused_at_dispatch() -> Result<(), Error> {
    let test = callout_test()?;
    test.on_callout("other", |_| CalloutReply::ok("unused"));
    let outcome = test.run(Request::get("/"), Response::ok());
    // The SDK's dispatch_http_call returned Err (BadArgument), so the filter answered 500.
    assert_eq!(outcome.response.status, 500);
    assert_eq!(outcome.response.body_text(), "callout dispatch failed\n");
    assert!(outcome.callouts.is_empty());
    assert!(
        outcome.logged("test_callout: dispatch to \"authz\" failed: BadArgument"),
        "{:?}",
        outcome.logs
    );
    Ok(())
}

#[test]
fn a_mocked_grpc_call_answers_with_a_message_or_a_status() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_callout"))
        .config(r#"{"cluster": "grpc", "grpc_service": "acme.Authz", "grpc_method": "Check"}"#)
        .build()?;
    test.on_callout("grpc", |callout| match callout.grpc_message().as_deref() {
        Some(b"\x0a\x03ann") => CalloutReply::grpc(b"\x08\x01"),
        _ => CalloutReply::grpc_status(7, "not ann \u{2014} 100% sure"),
    });
    let outcome = test.run(Request::get("/data").header("x-user", "ann"), Response::ok());
    assert!(outcome.forwarded, "{:?}", outcome.local_reply);
    assert_eq!(outcome.request.header("x-authz"), Some("0801"));
    let [call] = outcome.callouts.as_slice() else {
        panic!("one call: {:?}", outcome.callouts);
    };
    assert_eq!(call.grpc_method(), Some(("acme.Authz", "Check")));
    assert_eq!(call.header("x-tenant"), Some("ann"));
    assert_eq!(call.method(), Some("POST"));

    let outcome = test.run(Request::get("/data").header("x-user", "bob"), Response::ok());
    assert!(!outcome.forwarded);
    assert_eq!(outcome.response.status, 403);
    assert_eq!(outcome.response.header("x-grpc-status"), Some("7"));
    assert_eq!(outcome.response.body_text(), "7 not ann \u{2014} 100% sure\n");
    Ok(())
}

#[test]
fn guest_metrics_are_read_by_name_and_labels() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_counter")).build()?;
    for n in 1..=3 {
        let outcome = test.run(Request::get("/"), Response::ok());
        assert_eq!(outcome.response.header("x-hits"), Some(n.to_string().as_str()));
    }
    assert_eq!(test.metric("test_counter_requests_total"), Some(3.0));
    assert_eq!(test.metric("test_counter_last"), Some(3.0));
    assert_eq!(test.metric("test_counter_body_bytes_count"), Some(3.0));
    assert_eq!(test.metric("test_counter_body_bytes_sum"), Some(3.0));
    assert_eq!(test.metric(r#"test_counter_body_bytes_bucket{le="1"}"#), Some(3.0));
    assert_eq!(
        test.metric(r#"test_counter_requests_total{filter="test_counter"}"#),
        Some(3.0)
    );
    assert_eq!(test.metric(r#"test_counter_requests_total{filter="other"}"#), None);
    assert_eq!(test.metric("no_such_metric"), None);
    // The host's own counters too: one worker VM.
    assert_eq!(test.metric("weft_wasm_vms_created_total"), Some(1.0));
    assert!(
        test.metrics_text()
            .contains("# TYPE test_counter_requests_total counter")
    );
    Ok(())
}

#[test]
fn guest_logs_are_captured_at_every_level_with_stdio() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_logs")).build()?;
    let outcome = test.run(Request::get("/x"), Response::ok());
    let expected = [
        (Level::Trace, "test_logs trace /x"),
        (Level::Debug, "test_logs debug /x"),
        (Level::Info, "test_logs info /x"),
        (Level::Warn, "test_logs warn /x"),
        (Level::Error, "test_logs error /x"),
        (Level::Critical, "test_logs critical /x"),
        (Level::Info, "test_logs stdout /x"),
        (Level::Info, "test_logs env TEST_LOGS_ENV=(unset)"),
    ];
    for (level, line) in expected {
        assert!(
            outcome.logs.contains(&(level, line.to_owned())),
            "{level:?} {line:?} not in {:?}",
            outcome.logs
        );
    }
    assert!(outcome.logged("test_logs time "));
    // Each WASI write is one line, and Rust's stderr is unbuffered: `eprintln!` may write in
    // pieces.
    assert!(
        outcome
            .logs
            .iter()
            .any(|(level, line)| *level == Level::Warn && line.starts_with("test_logs stderr")),
        "{:?}",
        outcome.logs
    );
    // The test keeps them all; the next exchange reports only its own.
    let second = test.run(Request::get("/y"), Response::ok());
    assert!(second.logged("test_logs info /y") && !second.logged("/x"));
    let all = test.logs();
    assert!(all.iter().any(|(_, l)| l == "test_logs info /x") && all.iter().any(|(_, l)| l == "test_logs info /y"));
    Ok(())
}

#[test]
fn the_upstream_choice_is_reported_and_routes_the_response() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_extensions")).build()?;
    let outcome = test.run(Request::get("/").header("x-pick-cluster", "canary"), Response::ok());
    let choice = outcome.upstream.as_ref().expect("set_upstream was called");
    assert_eq!(choice.cluster.as_deref(), Some("canary"));
    assert_eq!(outcome.log.cluster.as_deref(), Some("canary"));
    assert_eq!(outcome.response.header("x-extension-status"), Some("ok"));

    let subset = test.run(Request::get("/").header("x-pick-version", "v2"), Response::ok());
    let labels = subset.upstream.and_then(|c| c.subset).expect("a subset");
    assert_eq!(labels.get("version").map(String::as_str), Some("v2"));

    let plain = test.run(Request::get("/"), Response::ok());
    assert!(plain.upstream.is_none());
    Ok(())
}

#[test]
fn retries_are_honoured_while_responses_remain() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_extensions")).build()?;
    let outcome = test.run_attempts(
        Request::get("/").header("x-retry-5xx", "2"),
        [
            Response::status(503),
            Response::status(502),
            Response::ok().body("third time"),
        ],
    );
    assert_eq!(outcome.retries, [Duration::ZERO, Duration::ZERO]);
    assert_eq!(outcome.attempts, 3);
    assert_eq!(outcome.response.status, 200);
    assert_eq!(outcome.response.header("x-attempts"), Some("3"));
    assert_eq!(outcome.response.body, "third time");

    // Asked for, but no response left: the last one is what the client gets.
    let single = test.run(Request::get("/").header("x-retry-5xx", "1"), Response::status(503));
    assert_eq!(single.retries.len(), 1);
    assert_eq!(single.attempts, 1);
    assert_eq!(single.response.status, 503);
    Ok(())
}

#[test]
fn properties_come_from_the_test_settings() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_properties"))
        .source(addr("10.1.2.3:5555"))
        .destination(addr("10.9.9.9:15006"))
        .route("reviews-route")
        .mtls(true)
        .upstream("reviews", addr("10.0.0.7:9080"))
        .build()?;
    let outcome = test.run(
        Request::get("/a/b?c=d")
            .authority("reviews.local")
            .header("x-request-id", "rid-1"),
        Response::status(202),
    );
    let header = |name| outcome.response.header(name);
    assert_eq!(header("x-prop-source-address"), Some("10.1.2.3:5555"));
    assert_eq!(header("x-prop-source-port"), Some("5555"));
    assert_eq!(header("x-prop-destination-port"), Some("15006"));
    assert_eq!(header("x-prop-connection-mtls"), Some("true"));
    assert_eq!(header("x-prop-weft-route_name"), Some("reviews-route"));
    assert_eq!(header("x-prop-request-url_path"), Some("/a/b"));
    assert_eq!(header("x-prop-request-host"), Some("reviews.local"));
    assert_eq!(header("x-prop-request-id"), Some("rid-1"));
    assert_eq!(header("x-prop-plugin_name"), Some("test_properties"));
    assert_eq!(header("x-prop-response-code"), Some("202"));
    assert_eq!(header("x-prop-upstream-address"), Some("10.0.0.7:9080"));
    Ok(())
}

/// A filter written in WAT, as a module file.
fn wat_filter(name: &str, wat: &str) -> PathBuf {
    let bytes = wat::parse_str(wat).unwrap_or_else(|e| panic!("{e}"));
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
    path
}

#[test]
fn pseudo_header_edits_reach_the_upstream_request_and_a_delay_is_waited() -> Result<(), Error> {
    // request_headers: `:path`, `:authority` and `:method` replaced, then `weft.delay` 30ms.
    let wat = r#"(module
        (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
        (import "env" "proxy_call_foreign_function" (func $call (param i32 i32 i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $bump (mut i32) (i32.const 4096))
        (data (i32.const 100) ":path")
        (data (i32.const 110) "/rewritten?x=1")
        (data (i32.const 130) ":authority")
        (data (i32.const 150) "new.host")
        (data (i32.const 160) ":method")
        (data (i32.const 170) "PUT")
        (data (i32.const 200) "weft.delay")
        (data (i32.const 220) "{\"ms\":30}")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $bump))
            (global.set $bump (i32.add (global.get $bump) (local.get $n)))
            (local.get $p))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (drop (call $replace (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 110) (i32.const 14)))
            (drop (call $replace (i32.const 0) (i32.const 130) (i32.const 10) (i32.const 150) (i32.const 8)))
            (drop (call $replace (i32.const 0) (i32.const 160) (i32.const 7) (i32.const 170) (i32.const 3)))
            (drop (call $call (i32.const 200) (i32.const 10) (i32.const 220) (i32.const 9) (i32.const 0) (i32.const 4)))
            (i32.const 0)))"#;
    let test = FilterTest::wasm(wat_filter("pseudo_headers", wat)).build()?;
    let started = std::time::Instant::now();
    let outcome = test.run(Request::get("/original").authority("old.host"), Response::ok());
    assert!(
        started.elapsed() >= Duration::from_millis(30),
        "{:?}",
        started.elapsed()
    );
    assert!(outcome.forwarded);
    assert_eq!(outcome.request.method, "PUT");
    assert_eq!(outcome.request.path, "/rewritten?x=1");
    assert_eq!(outcome.request.authority, "new.host");
    assert_eq!(outcome.request.header("host"), Some("new.host"));
    assert_eq!(
        outcome.log.path, "/original",
        "the log record keeps what the client sent"
    );
    Ok(())
}

#[test]
fn node_metadata_is_readable() -> Result<(), Error> {
    // A guest that logs the properties it reads in request_headers.
    let wat = r#"(module
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $bump (mut i32) (i32.const 4096))
        (data (i32.const 100) "node\00metadata\00REGION")
        (data (i32.const 200) "node\00id")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $bump))
            (global.set $bump (i32.add (global.get $bump) (local.get $n)))
            (local.get $p))
        (func $show (param $path i32) (param $len i32)
            (if (i32.eqz (call $prop (local.get $path) (local.get $len) (i32.const 0) (i32.const 4)))
                (then (drop (call $log (i32.const 2) (i32.load (i32.const 0)) (i32.load (i32.const 4)))))))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (call $show (i32.const 100) (i32.const 20))
            (call $show (i32.const 200) (i32.const 7))
            (i32.const 0)))"#;
    let test = FilterTest::wasm(wat_filter("node_properties", wat))
        .node_id("sidecar~10.0.0.1~reviews-v1")
        .node_metadata("REGION", "eu-west")
        .node_label("app", "reviews")
        .build()?;
    let outcome = test.run(Request::get("/"), Response::ok());
    assert_eq!(
        outcome.logs,
        [
            (Level::Info, "eu-west".to_owned()),
            (Level::Info, "sidecar~10.0.0.1~reviews-v1".to_owned())
        ]
    );
    Ok(())
}

#[test]
fn bodies_are_buffered_and_rewritten() -> Result<(), Error> {
    let test = FilterTest::wasm(filter("test_body")).build()?;
    let outcome = test.run(
        Request::post("/").chunks(["hel", "lo ", "world"]),
        Response::ok().chunks(["a", "b"]),
    );
    assert_eq!(outcome.request.body, "HELLO WORLD");
    assert_eq!(outcome.response.body, "ab\n-- rewritten by wasm\n");
    assert_eq!(outcome.response.header("content-length"), None);

    // Buffering past the limit: the request is answered 413.
    let small = FilterTest::wasm(filter("test_body"))
        .max_buffered_body_bytes(4)
        .build()?;
    let outcome = small.run(Request::post("/").chunks(["0123", "4567", "89"]), Response::ok());
    assert!(!outcome.forwarded);
    assert_eq!(outcome.response.status, 413);
    Ok(())
}

#[test]
fn a_failing_filter_gets_its_failure_policy() -> Result<(), Error> {
    let closed = FilterTest::wasm(filter("test_panic")).build()?;
    let outcome = closed.run(Request::get("/panic"), Response::ok());
    assert!(!outcome.forwarded);
    assert_eq!(outcome.response.status, 503);
    assert_eq!(outcome.response.header("x-weft-reason"), Some("filter_failure"));
    assert_eq!(
        outcome.local_reply.as_ref().map(|r| r.details.as_str()),
        Some("wasm_failure")
    );
    assert!(
        outcome
            .logs
            .iter()
            .any(|(level, line)| *level == Level::Critical && line.contains("test_panic: boom"))
    );
    assert_eq!(closed.metric(r#"weft_wasm_failures_total{kind="trap"}"#), Some(1.0));
    // The next request gets a new VM.
    let next = closed.run(Request::get("/"), Response::ok());
    assert_eq!(next.request.header("x-panic-filter"), Some("alive"));
    assert_eq!(closed.metric("weft_wasm_vms_created_total"), Some(2.0));

    let open = FilterTest::wasm(filter("test_panic"))
        .failure_policy(FailurePolicy::FailOpen)
        .build()?;
    let outcome = open.run(Request::get("/panic"), Response::ok());
    assert!(outcome.forwarded);
    assert_eq!(outcome.response.status, 200);
    Ok(())
}

#[test]
fn the_readme_shows_a_real_test() {
    let readme = include_str!("../README.md");
    let example = include_str!("readme.rs");
    assert!(readme.contains(example), "README.md must show tests/readme.rs verbatim");
}
