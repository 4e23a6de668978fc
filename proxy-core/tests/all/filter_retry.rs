//! The retry filter (`filters/retry`) through the real proxy: Istio's retry policy on
//! `weft.retry`, with failed tries, per-try timeouts, back-off, body replay and the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::support::*;

/// A proxy with the retry filter (`config`, JSON) in front of `cluster_yaml`.
fn proxy_with(config: &str, cluster_yaml: &str) -> weft_proxy::Proxy {
    let filters = wasm_filter("retry", "retry", config, "fail_closed");
    start_proxy(&with_filters(&filters, cluster_yaml, ""), 1)
}

/// An upstream answering its first `failures` requests with `status`, then 200; the body tells
/// the try number and echoes the request body.
async fn flaky(failures: usize, status: u16) -> Upstream {
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
            Response::builder()
                .status(if n < failures { status } else { 200 })
                .body(Full::new(Bytes::from(format!(
                    "try={} body={}\n",
                    n + 1,
                    String::from_utf8_lossy(&body)
                ))))
                .expect("response")
        }
    })
    .await
}

async fn retries_asked(proxy: &weft_proxy::Proxy) -> f64 {
    metric(proxy, "retry_attempts_total{filter=\"retry\"}")
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn two_503s_are_retried_with_istios_defaults() {
    let up = flaky(2, 503).await;
    // Defaults: attempts 2, retry_on "connect-failure,refused-stream,unavailable,cancelled,
    // retriable-status-codes" with [503].
    let proxy = proxy_with(r#"{"include_attempt_count_in_response": true}"#, &endpoints(&[up.addr]));
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "svc", "/").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body, "try=3 body=\n");
    assert_eq!(r.header("x-weft-attempt-count"), Some("3"));
    assert_eq!(up.hits(), 3);
    assert_eq!(retries_asked(&proxy).await, 2.0);
}

#[tokio::test]
async fn one_retry_does_not_outlast_two_failures() {
    let up = flaky(2, 503).await;
    let proxy = proxy_with(
        r#"{"attempts": 1, "include_attempt_count_in_response": true}"#,
        &endpoints(&[up.addr]),
    );
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.body, "try=2 body=\n", "the last try's response stands");
    assert_eq!(r.header("x-weft-attempt-count"), Some("2"));
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn a_connect_failure_is_retried_on_the_live_endpoint() {
    let live = echo("live").await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
        // Dropped: connections to it are refused.
    };
    let proxy = proxy_with(
        r#"{"attempts": 1, "retry_on": ["connect-failure"], "backoff": {"base_ms": 1}}"#,
        &endpoints(&[dead, live.addr]),
    );
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    for _ in 0..6 {
        let r = client.get("svc", "/", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.header("x-upstream"), Some("live"));
    }
    assert_eq!(live.hits(), 6);
    assert!(
        retries_asked(&proxy).await >= 1.0,
        "round robin sent some tries to the dead endpoint first"
    );
}

#[tokio::test]
async fn a_slow_try_is_abandoned_at_the_per_try_timeout() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let up = upstream(move |request| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            describe("up", request).await
        }
    })
    .await;
    let proxy = proxy_with(
        r#"{"per_try_timeout_ms": 200, "retry_on": "5xx", "include_attempt_count_in_response": true}"#,
        &endpoints(&[up.addr]),
    );
    let started = Instant::now();
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("x-weft-attempt-count"), Some("2"));
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_a_matching_condition_a_timeout_is_final() {
    let up = upstream(|request| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        describe("up", request).await
    })
    .await;
    // Istio's defaults do not retry timeouts.
    let proxy = proxy_with(r#"{"per_try_timeout_ms": 100}"#, &endpoints(&[up.addr]));
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    assert_eq!(r.reason(), Some("upstream_timeout"));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn the_backoff_spaces_the_tries() {
    let up = flaky(1, 503).await;
    let proxy = proxy_with(
        r#"{"backoff": {"base_ms": 300, "max_ms": 400}}"#,
        &endpoints(&[up.addr]),
    );
    let started = Instant::now();
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "one back-off between 300 and 400 ms, took {took:?}"
    );
}

#[tokio::test]
async fn a_post_body_is_replayed_intact() {
    let up = flaky(2, 503).await;
    let proxy = proxy_with(r#"{"retry_on": ["gateway-error"]}"#, &endpoints(&[up.addr]));
    let mut client = H1::connect(proxy.listener_addr("main").expect("listener")).await;
    let body = "x".repeat(10_000) + "end";
    let request = Request::post("/orders")
        .header("host", "svc")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let r = client.send(request).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body, format!("try=3 body={body}\n"));
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn a_streamed_body_is_not_retried() {
    let up = flaky(1, 503).await;
    let proxy = proxy_with(r#"{"retry_on": ["5xx"]}"#, &endpoints(&[up.addr]));
    let addr = proxy.listener_addr("main").expect("listener");
    let response = raw(
        addr,
        b"POST /orders HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("try=1 body=hello"), "{response}");
    assert_eq!(up.hits(), 1);
    assert_eq!(retries_asked(&proxy).await, 0.0);
}

#[tokio::test]
async fn statuses_outside_retry_on_are_final() {
    let up = flaky(1, 404).await;
    let proxy = proxy_with(r#"{"retry_on": ["5xx", "retriable-4xx"]}"#, &endpoints(&[up.addr]));
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    assert_eq!(up.hits(), 1);
    assert_eq!(retries_asked(&proxy).await, 0.0);

    let up = flaky(1, 409).await;
    let proxy = proxy_with(r#"{"retry_on": ["5xx", "retriable-4xx"]}"#, &endpoints(&[up.addr]));
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, StatusCode::OK, "409 is retriable-4xx: {r:?}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn an_exhausted_budget_refuses_the_retry() {
    let up = flaky(1, 503).await;
    let proxy = proxy_with(
        r#"{"budget": {"max_active_share": 0, "min_concurrency": 0}}"#,
        &endpoints(&[up.addr]),
    );
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(up.hits(), 1);
    assert_eq!(retries_asked(&proxy).await, 0.0);
    assert_eq!(
        metric(&proxy, "retry_budget_exhausted_total{filter=\"retry\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn the_budget_counts_retries_in_flight() {
    // One retry in flight at most: `/a` fails, and its retry is held at the upstream; `/b`
    // then fails too, and its retry is refused.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (held, log) = (gate.clone(), seen.clone());
    let up = upstream(move |request: Request<hyper::body::Incoming>| {
        let path = request.uri().path().to_owned();
        let retry = {
            let mut log = log.lock().expect("lock");
            let retry = log.contains(&path);
            log.push(path);
            retry
        };
        let held = held.clone();
        async move {
            if !retry {
                return Response::builder()
                    .status(503)
                    .body(Full::new(Bytes::new()))
                    .expect("response");
            }
            let _permit = held.acquire().await.expect("semaphore");
            describe("up", request).await
        }
    })
    .await;
    let proxy = proxy_with(
        r#"{"budget": {"max_active_share": 0, "min_concurrency": 1}, "backoff": {"base_ms": 0}}"#,
        &endpoints(&[up.addr]),
    );
    let addr = proxy.listener_addr("main").expect("listener");
    let first = tokio::spawn(async move { get(addr, "svc", "/a").await });
    let tries = || seen.lock().expect("lock").len();
    assert!(
        eventually(Duration::from_secs(5), || async { tries() == 2 }).await,
        "the retry of /a is out"
    );
    let second = get(addr, "svc", "/b").await;
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE, "{second:?}");
    assert_eq!(tries(), 3, "/b was not retried");
    assert_eq!(
        metric(&proxy, "retry_budget_exhausted_total{filter=\"retry\"}").await,
        Some(1.0)
    );
    gate.add_permits(10);
    let first = first.await.expect("first request");
    assert_eq!(first.status, StatusCode::OK, "{first:?}");

    // The answered retry and the finished requests left the budget: /c is retried.
    let third = get(addr, "svc", "/c").await;
    assert_eq!(third.status, StatusCode::OK, "{third:?}");
    assert_eq!(retries_asked(&proxy).await, 2.0);
}

#[tokio::test]
async fn grpc_unavailable_is_retried_by_default() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let up = upstream(move |_request| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            let builder = Response::builder().header("content-type", "application/grpc");
            let builder = if first {
                builder.header("grpc-status", "14")
            } else {
                builder.header("grpc-status", "0")
            };
            builder.body(Full::new(Bytes::new())).expect("response")
        }
    })
    .await;
    let proxy = proxy_with("{}", &endpoints(&[up.addr]));
    let r = get(proxy.listener_addr("main").expect("listener"), "svc", "/pkg.Svc/Call").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("grpc-status"), Some("0"));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}
