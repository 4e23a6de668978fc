//! Wasm filters built with the public proxy-wasm crate, through the real proxy: headers,
//! local replies, bodies, callouts, shared data, metrics, timers, properties, containment,
//! hot swap and rejected snapshots.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::support::*;

/// An upstream echoing the request body and selected headers, with a secret header the
/// filter must remove.
async fn body_echo() -> Upstream {
    upstream(|request: Request<hyper::body::Incoming>| async move {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let mut text = format!("path={}\n", parts.uri.path());
        for (k, v) in &parts.headers {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        text.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
        Response::builder()
            .header("x-upstream-secret", "hidden")
            .header("x-upstream", "echo")
            .body(Full::new(Bytes::from(text)))
            .expect("response")
    })
    .await
}

#[tokio::test]
async fn headers_are_added_and_removed_in_both_directions() {
    let up = body_echo().await;
    let filters = wasm_filter("hdr", "test_headers", "{ name: first }", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 2);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    for _ in 0..3 {
        let r = client.get("svc", "/x", &[("x-remove-me", "1"), ("x-keep", "1")]).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert!(r.body.contains("x-wasm-request: first"), "{}", r.body);
        assert!(!r.body.contains("x-remove-me"), "{}", r.body);
        assert!(r.body.contains("x-keep: 1"), "{}", r.body);
        assert_eq!(r.header("x-wasm-response"), Some("first"));
        assert_eq!(r.header("x-upstream-secret"), None);
        assert_eq!(r.header("x-upstream"), Some("echo"));
    }
}

#[tokio::test]
async fn a_filter_answers_locally_with_403() {
    let up = body_echo().await;
    let filters = wasm_filter("deny", "test_deny", "null", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "svc", "/forbidden/thing").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body, "denied by wasm\n");
    assert_eq!(r.header("x-denied-by"), Some("test_deny"));
    assert_eq!(get(addr, "svc", "/allowed").await.status, StatusCode::OK);
    assert_eq!(up.hits(), 1, "the denied request never reached the upstream");
}

#[tokio::test]
async fn bodies_are_buffered_and_rewritten() {
    let up = body_echo().await;
    let filters = wasm_filter("body", "test_body", "null", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    let request = Request::post("/upload")
        .header("host", "svc")
        .body(Full::new(Bytes::from_static(b"hello wasm body")))
        .expect("request");
    let r = client.send(request).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(
        r.body.contains("body=HELLO WASM BODY\n"),
        "request body upper-cased: {}",
        r.body
    );
    assert!(
        r.body.ends_with("\n-- rewritten by wasm\n"),
        "response body extended: {:?}",
        r.body
    );
}

#[tokio::test]
async fn a_stream_its_headers_end_has_no_body_phase() {
    // As in Envoy: `test_body` appends to every response body it sees at its end, so a
    // response that ends with its headers (204, or a zero Content-Length) must come back
    // empty, and one with a body must come back extended.
    let up = upstream(|request: Request<hyper::body::Incoming>| async move {
        let body = if request.uri().path() == "/empty" { "" } else { "full" };
        Response::new(Full::new(Bytes::from_static(body.as_bytes())))
    })
    .await;
    let filters = wasm_filter("body", "test_body", "null", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "svc", "/empty").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body, "", "no response body phase: {r:?}");
    let r = get(addr, "svc", "/full").await;
    assert_eq!(r.body, "full\n-- rewritten by wasm\n", "{r:?}");
}

/// A module whose every phase but `request_headers` traps; `declaration` is its
/// `weft.capabilities` section (none when `None`). Written to a file: (path, sha256).
fn trapping_phases_module(declaration: Option<&str>) -> (String, String) {
    let section = declaration.map_or_else(String::new, |d| format!("(@custom \"weft.capabilities\" \"{d}\")"));
    let wat = format!(
        r#"(module {section}
            (memory (export "memory") 1)
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
            (func (export "proxy_on_context_create") (param i32 i32))
            (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
            (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
            (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
            (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) unreachable)
            (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) unreachable)
            (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) unreachable)
            (func (export "proxy_on_log") (param i32) unreachable)
            (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
            (func (export "proxy_on_delete") (param i32)))"#
    );
    let bytes = wat::parse_str(&wat).expect("valid wat");
    use sha2::Digest as _;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = std::env::temp_dir().join(format!("weft-capabilities-{}-{}.wasm", std::process::id(), &sha[..12]));
    std::fs::write(&path, bytes).expect("write module");
    (path.display().to_string(), sha)
}

#[tokio::test]
async fn a_declared_filter_is_called_only_for_what_it_declares() {
    let up = body_echo().await;
    let snapshot = |declaration: Option<&str>| {
        let (file, sha) = trapping_phases_module(declaration);
        let filters = format!(
            "      - name: declared\n        wasm: {{ file: \"{file}\", sha256: \"{sha}\" }}\n        failure_policy: fail_closed\n"
        );
        with_filters(&filters, &endpoints(&[up.addr]), "")
    };
    let post = |addr| async move {
        let mut client = H1::connect(addr).await;
        client
            .send(
                Request::post("/echo")
                    .header("host", "svc")
                    .body(Full::new(Bytes::from_static(b"hello")))
                    .expect("request"),
            )
            .await
    };

    // Undeclared, the module gets every phase it exports, and its traps fail the request.
    let proxy = start_proxy(&snapshot(None), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(post(addr).await.status, StatusCode::SERVICE_UNAVAILABLE);
    proxy.shutdown();

    // Declaring `request_headers` only: no other phase is called, so nothing traps.
    let proxy = start_proxy(&snapshot(Some("request_headers")), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    for _ in 0..3 {
        let r = post(addr).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert!(r.body.contains("hello"), "the body went through: {r:?}");
    }
    assert_eq!(
        metric(&proxy, "weft_wasm_failures_total{filter=\"declared\",kind=\"trap\"}").await,
        None,
        "no phase trapped"
    );

    // A name the proxy does not know refuses the snapshot, naming it; the old one serves on.
    let typo = weft_api::Snapshot::from_yaml(&snapshot(Some("request_headers respone_body"))).expect("yaml");
    let error = format!("{:#}", anyhow::Error::from(proxy.update(typo).expect_err("refused")));
    assert!(error.contains("\"respone_body\""), "{error}");
    assert_eq!(post(addr).await.status, StatusCode::OK);
    proxy.shutdown();
}

#[tokio::test]
async fn an_http_callout_authorizer_pauses_and_resumes() {
    let up = body_echo().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let authz = upstream(move |request: Request<hyper::body::Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let user = request
            .headers()
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (status, body) = if user == "alice" {
                (200, "alice-ok")
            } else {
                (403, "nope")
            };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .expect("response")
        }
    })
    .await;
    let filters = wasm_filter(
        "authz",
        "test_callout",
        "{ cluster: authz, timeout_ms: 1000 }",
        "fail_closed",
    );
    let extra = format!(
        "  - {{ name: authz, endpoints: [{{ address: \"{}\" }}] }}\n",
        authz.addr
    );
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), &extra), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;

    let r = client.get("svc", "/", &[("x-user", "alice")]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body.contains("x-authz: alice-ok"), "{}", r.body);

    let r = client.get("svc", "/", &[("x-user", "mallory")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.header("x-authz-status"), Some("403"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(up.hits(), 1);

    authz.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = get(addr, "svc", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "a failed callout: {r:?}");
    assert_eq!(r.body, "callout failed\n");
}

#[tokio::test]
async fn shared_data_counts_across_workers_and_metrics_are_exported() {
    let up = body_echo().await;
    let filters = wasm_filter("counter", "test_counter", "null", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 2);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        // New connections spread over both workers' sockets.
        tasks.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..25 {
                let r = get(addr, "svc", "/").await;
                assert_eq!(r.status, StatusCode::OK);
                seen.push(r.header("x-hits").expect("x-hits").parse::<u64>().expect("number"));
            }
            seen
        });
    }
    let mut all = Vec::new();
    while let Some(seen) = tasks.join_next().await {
        all.extend(seen.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=200).collect::<Vec<u64>>(),
        "every request got a distinct count"
    );
    assert_eq!(
        metric(&proxy, "test_counter_requests_total{filter=\"counter\"}").await,
        Some(200.0)
    );
    assert_eq!(
        metric(&proxy, "test_counter_body_bytes_count{filter=\"counter\"}").await,
        Some(200.0)
    );
    assert!(
        metric(&proxy, "weft_wasm_vms_created_total{filter=\"counter\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0,
        "one VM per worker"
    );
}

#[tokio::test]
async fn timers_tick_on_every_worker() {
    let up = body_echo().await;
    let filters = wasm_filter("timer", "test_timer", "{ period_ms: 20 }", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let first: u64 = get(addr, "svc", "/")
        .await
        .header("x-ticks")
        .expect("x-ticks")
        .parse()
        .expect("number");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later: u64 = get(addr, "svc", "/")
        .await
        .header("x-ticks")
        .expect("x-ticks")
        .parse()
        .expect("number");
    assert!(
        later >= first + 5,
        "ticks went from {first} to {later} in 300ms at 20ms"
    );
}

#[tokio::test]
async fn properties_read_back_with_envoy_encodings() {
    let up = body_echo().await;
    let filters = wasm_filter("props", "test_properties", "null", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let r = H1::connect(addr)
        .await
        .get("svc.local:8080", "/a/b?c=d", &[("x-request-id", "rid-1")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let prop = |name: &str| r.header(&format!("x-prop-{name}")).unwrap_or("(missing)").to_owned();
    assert_eq!(prop("request-path"), "/a/b?c=d");
    assert_eq!(prop("request-url_path"), "/a/b");
    assert_eq!(prop("request-host"), "svc.local:8080");
    assert_eq!(prop("request-method"), "GET");
    assert_eq!(prop("request-scheme"), "http");
    assert_eq!(prop("request-id"), "rid-1");
    assert_eq!(prop("request-protocol"), "HTTP/1.1");
    assert!(
        prop("source-address").starts_with("127.0.0.1:"),
        "{}",
        prop("source-address")
    );
    assert_eq!(prop("destination-port"), addr.port().to_string());
    assert_eq!(prop("connection-mtls"), "false");
    assert_eq!(prop("plugin_name"), "props");
    assert_eq!(prop("response-code"), "200");
    assert_eq!(prop("upstream-address"), up.addr.to_string());
    assert_eq!(prop("weft-route_name"), "default");
    assert_eq!(prop("request-headers"), "rid-1");
    assert_eq!(r.header("x-authority"), Some("svc.local:8080"));
    // `weft.properties`: several in one call, absent ones left out.
    assert_eq!(r.header("x-batch-request-path"), Some("/a/b?c=d"));
    assert_eq!(r.header("x-batch-plugin_name"), Some("props"));
    assert_eq!(r.header("x-batch-no-such"), Some("(none)"));
}

#[tokio::test]
async fn a_panicking_filter_fails_closed_and_recovers() {
    let up = body_echo().await;
    let filters = wasm_filter("panicky", "test_panic", "null", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert!(get(addr, "svc", "/ok").await.body.contains("x-panic-filter: alive"));
    let r = get(addr, "svc", "/panic").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.reason(), Some("filter_failure"));
    let r = get(addr, "svc", "/ok").await;
    assert_eq!(r.status, StatusCode::OK, "a fresh VM serves the next request: {r:?}");
    assert!(r.body.contains("x-panic-filter: alive"));
    assert_eq!(
        metric(&proxy, "weft_wasm_failures_total{filter=\"panicky\",kind=\"trap\"}").await,
        Some(1.0)
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn a_looping_filter_is_stopped_at_its_deadline_and_fails_open() {
    let up = body_echo().await;
    let filters = wasm_filter("loopy", "test_loop", "null", "fail_open");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let started = std::time::Instant::now();
    let r = get(addr, "svc", "/loop").await;
    assert_eq!(r.status, StatusCode::OK, "fail_open skips the filter: {r:?}");
    assert!(!r.body.contains("x-loop-filter"), "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stopped after {:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(&proxy, "weft_wasm_failures_total{filter=\"loopy\",kind=\"deadline\"}").await,
        Some(1.0)
    );
    assert!(get(addr, "svc", "/fine").await.body.contains("x-loop-filter: alive"));
}

#[tokio::test]
async fn an_allocating_filter_hits_its_memory_cap() {
    let up = body_echo().await;
    let filters = wasm_filter("hungry", "test_alloc", "null", "fail_closed");
    let snapshot = weft_api::Snapshot::from_yaml(&with_filters(&filters, &endpoints(&[up.addr]), "")).expect("valid");
    let config = weft_proxy::ProxyConfig {
        workers: 1,
        admin_address: Some("127.0.0.1:0".parse().expect("addr")),
        wasm: weft_proxy::WasmSettings {
            memory_limit: 16 << 20,
            ..crate::support::test_wasm()
        },
        ..Default::default()
    };
    let proxy = weft_proxy::Proxy::start(config, snapshot).expect("starts");
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "svc", "/alloc").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(
        metric(&proxy, "weft_wasm_failures_total{filter=\"hungry\",kind=\"memory\"}").await,
        Some(1.0)
    );
    assert!(get(addr, "svc", "/fine").await.body.contains("x-alloc-filter: alive"));
}

#[tokio::test]
async fn guest_logs_and_stdout_do_not_disturb_requests() {
    let up = body_echo().await;
    let filters = wasm_filter("logs", "test_logs", "null", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(get(addr, "svc", "/logged").await.status, StatusCode::OK);
}

#[tokio::test]
async fn rejected_snapshots_leave_the_old_chain_serving() {
    let up = body_echo().await;
    let good = with_filters(
        &wasm_filter("hdr", "test_headers", "{ name: old }", "fail_closed"),
        &endpoints(&[up.addr]),
        "",
    );
    let proxy = start_proxy(&good, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(get(addr, "svc", "/").await.header("x-wasm-response"), Some("old"));

    let (file, sha) = test_filter("test_headers");
    let wrong_sha = good.replace(&sha, &"0".repeat(64)).replace("name: old", "name: new");
    let err = proxy
        .update(weft_api::Snapshot::from_yaml(&wrong_sha).expect("valid yaml"))
        .expect_err("digest mismatch");
    assert!(format!("{err:?}").contains("sha256"), "{err:?}");

    let dir = std::env::temp_dir().join(format!("weft-bad-module-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0garbage").expect("write");
    let garbage_sha = {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&garbage).expect("read"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let bad_module = good
        .replace(&file, &garbage.display().to_string())
        .replace(&sha, &garbage_sha);
    let err = proxy
        .update(weft_api::Snapshot::from_yaml(&bad_module).expect("valid yaml"))
        .expect_err("does not compile");
    assert!(format!("{err:?}").contains("does not compile"), "{err:?}");

    let rejected = good.replace("{ name: old }", "{ name: new, reject: \"yes\" }");
    let err = proxy
        .update(weft_api::Snapshot::from_yaml(&rejected).expect("valid yaml"))
        .expect_err("config refused");
    assert!(format!("{err:?}").contains("on_configure rejected"), "{err:?}");

    assert_eq!(
        get(addr, "svc", "/").await.header("x-wasm-response"),
        Some("old"),
        "old chain still serving"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_drops_nothing() {
    let up = body_echo().await;
    let version = |mark: &str| {
        with_filters(
            &wasm_filter("mark", "test_mark", mark, "fail_closed"),
            &endpoints(&[up.addr]),
            "",
        )
    };
    let proxy = Arc::new(start_proxy(&version("v1"), 2));
    let addr = proxy.listener_addr("main").expect("listener");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.spawn(async move {
            let (mut ok, mut marks) = (0usize, std::collections::BTreeSet::new());
            let mut client = H1::connect(addr).await;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                if n % 10 == 0 {
                    client = H1::connect(addr).await; // new connections too
                }
                let r = client.get("svc", "/", &[]).await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
                let response_marks: Vec<_> = r.headers.get_all("x-mark").iter().collect();
                assert_eq!(response_marks.len(), 1, "exactly one mark: {r:?}");
                let mark = response_marks[0].to_str().expect("mark").to_owned();
                assert!(
                    r.body.contains(&format!("x-mark: {mark}\n")),
                    "request and response carry the same version: {}",
                    r.body
                );
                assert_eq!(r.body.matches("x-mark:").count(), 1, "{}", r.body);
                marks.insert(mark);
                ok += 1;
            }
            (ok, marks)
        });
    }
    let swapper = {
        let proxy = proxy.clone();
        let v1 = version("v1");
        let v2 = version("v2");
        tokio::task::spawn_blocking(move || {
            for i in 0..50 {
                let yaml = if i % 2 == 0 { &v2 } else { &v1 };
                proxy
                    .update(weft_api::Snapshot::from_yaml(yaml).expect("valid"))
                    .expect("swap applies");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    swapper.await.expect("swapper");
    stop.store(true, Ordering::SeqCst);
    let (mut total, mut marks) = (0, std::collections::BTreeSet::new());
    while let Some(result) = clients.join_next().await {
        let (ok, m) = result.expect("client saw only successes");
        total += ok;
        marks.extend(m);
    }
    assert!(total > 100, "only {total} requests during the swaps");
    assert_eq!(
        marks,
        ["v1".to_owned(), "v2".to_owned()].into_iter().collect(),
        "both versions served"
    );
}

/// An upstream failing its first `failures` requests with 503, then echoing the body.
async fn flaky(failures: usize) -> Upstream {
    let seen = Arc::new(AtomicUsize::new(0));
    upstream(move |request: Request<hyper::body::Incoming>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let status = if n < failures { 503 } else { 200 };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(format!(
                    "attempt={} body={}\n",
                    n + 1,
                    String::from_utf8_lossy(&body)
                ))))
                .expect("response")
        }
    })
    .await
}

#[tokio::test]
async fn the_retry_extension_sends_the_request_again() {
    let up = flaky(2).await;
    let filters = wasm_filter("ext", "test_extensions", "null", "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    let request = Request::post("/order")
        .header("host", "svc")
        .header("x-retry-5xx", "3")
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    let r = client.send(request).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body, "attempt=3 body=payload\n", "the body was replayed intact");
    assert_eq!(r.header("x-attempts"), Some("3"));
    assert_eq!(r.header("x-extension-status"), Some("ok"));
    assert_eq!(up.hits(), 3);

    // A request without a body is replayed too.
    let up = flaky(2).await;
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let r = H1::connect(proxy.listener_addr("main").expect("listener"))
        .await
        .get("svc", "/", &[("x-retry-5xx", "2")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("x-attempts"), Some("3"));

    // Without the header the 503 is final.
    let up = flaky(1).await;
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("x-attempts"), Some("1"));
}

#[tokio::test]
async fn the_set_upstream_extension_chooses_cluster_and_subset() {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let other = echo("other").await;
    let filters = wasm_filter("ext", "test_extensions", "null", "fail_closed");
    let cluster = format!(
        "    endpoints:\n      - {{ address: \"{}\", labels: {{ version: v1 }} }}\n      - {{ address: \"{}\", labels: {{ version: v2 }} }}\n",
        v1.addr, v2.addr
    );
    let extra = format!(
        "  - {{ name: other, endpoints: [{{ address: \"{}\" }}] }}\n",
        other.addr
    );
    let proxy = start_proxy(&with_filters(&filters, &cluster, &extra), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    for _ in 0..4 {
        let r = client.get("svc", "/", &[("x-pick-version", "v2")]).await;
        assert_eq!(r.header("x-upstream"), Some("v2"), "{r:?}");
    }
    let r = client.get("svc", "/", &[("x-pick-cluster", "other")]).await;
    assert_eq!(r.header("x-upstream"), Some("other"), "{r:?}");
    let r = client.get("svc", "/", &[("x-pick-cluster", "missing")]).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "an unknown cluster has no route: {r:?}"
    );
}

#[tokio::test]
async fn a_route_can_disable_a_filter() {
    let up = body_echo().await;
    let filters = wasm_filter("hdr", "test_headers", "{ name: on }", "fail_closed");
    let yaml = with_filters(&filters, &endpoints(&[up.addr]), "").replace(
        "          - name: default\n",
        "          - name: plain\n            match: { path: { prefix: /plain } }\n            forward: { cluster: c }\n            disabled_filters: [hdr]\n          - name: default\n",
    );
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(get(addr, "svc", "/x").await.header("x-wasm-response"), Some("on"));
    let r = get(addr, "svc", "/plain/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-wasm-response"), None, "filter disabled on this route");
}

#[tokio::test]
async fn requests_run_the_chain_in_order_and_responses_in_reverse() {
    let up = body_echo().await;
    let filters = [
        wasm_filter("first", "test_headers", "{ name: a }", "fail_closed"),
        wasm_filter("second", "test_headers", "{ name: b }", "fail_closed"),
    ]
    .concat();
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1);
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    let upstream_saw: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("x-wasm-request: "))
        .collect();
    assert_eq!(upstream_saw, ["a", "b"], "{}", r.body);
    let client_saw: Vec<&str> = r
        .headers
        .get_all("x-wasm-response")
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert_eq!(client_saw, ["b", "a"], "response phases run in reverse: {r:?}");
}
