//! The `ratelimit` filter (`filters/ratelimit`) through the real proxy: buckets shared by every
//! worker, independent keys, refill, the bucket cap, metrics and rejected configurations.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use weft_proxy::Proxy;

use crate::support::*;

/// A proxy with one `ratelimit` filter named `name` (`config` is YAML flow) in front of an echo
/// upstream, on `workers` workers.
async fn limited_proxy(name: &str, config: &str, workers: usize) -> (Proxy, SocketAddr, Upstream) {
    let up = echo("up").await;
    let filters = wasm_filter(name, "ratelimit", config, "fail_closed");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), workers);
    let addr = proxy.listener_addr("main").expect("listener");
    (proxy, addr, up)
}

/// One `GET /` on a new connection, with `x-user: user` when given.
async fn request(addr: SocketAddr, user: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
    H1::connect(addr).await.get("svc", "/", &headers).await
}

/// The only value of header `name` (fails if it appears more than once).
fn single<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    let values: Vec<_> = reply.headers.get_all(name).iter().collect();
    assert!(values.len() <= 1, "{name} appears {} times: {reply:?}", values.len());
    reply.header(name)
}

/// Checks a 429 from the filter.
fn assert_limited(reply: &Reply, limit: &str, retry_after: &str, reset: &str) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert_eq!(reply.body, "rate limited\n");
    assert_eq!(reply.reason(), Some("filter"));
    assert_eq!(single(reply, "retry-after"), Some(retry_after), "{reply:?}");
    assert_eq!(single(reply, "x-ratelimit-limit"), Some(limit), "{reply:?}");
    assert_eq!(single(reply, "x-ratelimit-remaining"), Some("0"), "{reply:?}");
    assert_eq!(single(reply, "x-ratelimit-reset"), Some(reset), "{reply:?}");
}

/// A counter of filter `filter` at `/stats/prometheus`.
async fn counter(proxy: &Proxy, name: &str, filter: &str) -> Option<f64> {
    metric(proxy, &format!("{name}{{filter=\"{filter}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bucket_is_shared_by_every_worker() {
    let config = "{ key: { header: x-user }, max_tokens: 10, fill_interval_ms: 3600000, response_headers: true }";
    let (proxy, addr, up) = limited_proxy("rl_shared", config, 2).await;

    // Every request on a new connection: SO_REUSEPORT spreads them over both workers.
    for left in (0..10).rev() {
        let r = request(addr, Some("alice")).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(single(&r, "x-ratelimit-limit"), Some("10"));
        assert_eq!(single(&r, "x-ratelimit-remaining"), Some(left.to_string().as_str()));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        tasks.spawn(async move { request(addr, Some("alice")).await });
    }
    while let Some(reply) = tasks.join_next().await {
        // One token per hour: the next in an hour (3600 s), full again in ten (36000 s).
        assert_limited(&reply.expect("task"), "10", "3600", "36000");
    }
    assert_eq!(up.hits(), 10, "the limited requests never reached the upstream");
    let vms = counter(&proxy, "weft_wasm_vms_created_total", "rl_shared").await;
    assert!(
        vms.unwrap_or(0.0) >= 2.0,
        "both workers ran the filter ({vms:?} VMs), yet only 10 requests passed: one bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_overdraw_a_bucket() {
    let config = "{ key: { constant: all }, max_tokens: 20, fill_interval_ms: 3600000 }";
    let (proxy, addr, up) = limited_proxy("rl_concurrent", config, 2).await;
    // No request before: the bucket is created by whichever request comes first, on either
    // worker, while the others race it.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..6 {
                statuses.push(request(addr, None).await.status);
            }
            statuses
        });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(statuses) = tasks.join_next().await {
        for status in statuses.expect("task") {
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(
        (ok, limited),
        (20, 52),
        "exactly max_tokens passed, from both workers at once"
    );
    assert_eq!(up.hits(), 20);
    assert_eq!(
        counter(&proxy, "ratelimit_allowed_total", "rl_concurrent").await,
        Some(20.0)
    );
    assert_eq!(
        counter(&proxy, "ratelimit_limited_total", "rl_concurrent").await,
        Some(52.0)
    );
}

#[tokio::test]
async fn keys_have_independent_buckets_and_requests_without_one_pass() {
    let config = "{ key: { header: x-user }, max_tokens: 2, fill_interval_ms: 3600000, response_headers: true }";
    let (proxy, addr, _up) = limited_proxy("rl_keys", config, 1).await;
    for user in ["alice", "bob"] {
        for left in ["1", "0"] {
            let r = request(addr, Some(user)).await;
            assert_eq!(r.status, StatusCode::OK, "{user}: {r:?}");
            assert_eq!(single(&r, "x-ratelimit-remaining"), Some(left));
        }
        assert_limited(&request(addr, Some(user)).await, "2", "3600", "7200");
    }
    // A third user still has a full bucket, whatever alice and bob did.
    let r = request(addr, Some("carol")).await;
    assert_eq!(single(&r, "x-ratelimit-remaining"), Some("1"));
    // Without the header a request has no key: not limited, no headers.
    for _ in 0..5 {
        let r = request(addr, None).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.header("x-ratelimit-limit"), None);
        assert_eq!(r.header("x-ratelimit-remaining"), None);
    }
    // Metrics: 4 + 1 with a token and 5 without a key allowed; 2 limited.
    assert_eq!(counter(&proxy, "ratelimit_allowed_total", "rl_keys").await, Some(10.0));
    assert_eq!(counter(&proxy, "ratelimit_limited_total", "rl_keys").await, Some(2.0));
    let text = admin(&proxy, "/stats/prometheus").await.body;
    assert!(text.contains("# TYPE ratelimit_limited_total counter"), "{text}");
}

#[tokio::test]
async fn tokens_come_back_after_the_fill_interval() {
    // One token, refilled every 300 ms; response headers off (the default).
    let config = "{ key: { constant: all }, max_tokens: 1, tokens_per_fill: 1, fill_interval_ms: 300 }";
    let (_proxy, addr, up) = limited_proxy("rl_refill", config, 1).await;
    for round in 0..2 {
        let r = request(addr, None).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {r:?}");
        assert_eq!(r.header("x-ratelimit-limit"), None, "response_headers is off");
        // Within the interval: limited, a token within the second (rounded up to 1).
        assert_limited(&request(addr, None).await, "1", "1", "1");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn source_ip_and_path_keys() {
    // Every test connection comes from 127.0.0.1: one bucket for all of them.
    let config = "{ key: { source_ip: true }, max_tokens: 3, fill_interval_ms: 3600000 }";
    let (_proxy, addr, _up) = limited_proxy("rl_ip", config, 2).await;
    for _ in 0..3 {
        assert_eq!(request(addr, Some("a")).await.status, StatusCode::OK);
    }
    assert_limited(&request(addr, Some("b")).await, "3", "3600", "10800");

    // The path without its query string.
    let config = "{ key: { path: true }, max_tokens: 1, fill_interval_ms: 3600000 }";
    let (_proxy, addr, _up) = limited_proxy("rl_path", config, 1).await;
    let get_path = |path: &'static str| async move { H1::connect(addr).await.get("svc", path, &[]).await };
    assert_eq!(get_path("/a?page=1").await.status, StatusCode::OK);
    assert_eq!(get_path("/a?page=2").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(get_path("/b").await.status, StatusCode::OK);
}

#[tokio::test]
async fn past_max_buckets_new_keys_share_the_overflow_bucket() {
    let config = "{ key: { header: x-user }, max_tokens: 1, fill_interval_ms: 3600000, max_buckets: 2 }";
    let (_proxy, addr, _up) = limited_proxy("rl_cap", config, 1).await;
    assert_eq!(request(addr, Some("alice")).await.status, StatusCode::OK);
    assert_eq!(request(addr, Some("bob")).await.status, StatusCode::OK);
    // No room for a third bucket: carol takes the overflow bucket's token, dave finds it empty.
    assert_eq!(request(addr, Some("carol")).await.status, StatusCode::OK);
    assert_limited(&request(addr, Some("dave")).await, "1", "3600", "3600");
    // Existing buckets keep working on their own.
    assert_eq!(request(addr, Some("alice")).await.status, StatusCode::TOO_MANY_REQUESTS);
    // A key longer than 256 bytes also goes to the overflow bucket.
    let long = "x".repeat(300);
    assert_eq!(request(addr, Some(&long)).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn bad_configurations_are_refused_with_the_reason() {
    let good = "{ key: { header: x-user }, max_tokens: 1, fill_interval_ms: 3600000 }";
    let up = echo("up").await;
    let snapshot = |config: &str| {
        let filters = wasm_filter("rl_config", "ratelimit", config, "fail_closed");
        weft_api::Snapshot::from_yaml(&with_filters(&filters, &endpoints(&[up.addr]), "")).expect("valid yaml")
    };
    let cases = [
        (
            "{ key: { header: x-user }, max_tokens: 1, fill_interval_ms: 10, burst: 5 }",
            "unknown field `burst`",
        ),
        (
            "{ key: { header: x-user }, max_tokens: 0, fill_interval_ms: 10 }",
            "max_tokens must be between 1 and 1000000000, got 0",
        ),
        (
            "{ key: { header: x-user, path: true }, max_tokens: 1, fill_interval_ms: 10 }",
            "key must set exactly one of header, path, source_ip, peer_principal, constant (got 2)",
        ),
        (
            "{ key: { path: true }, max_tokens: 1 }",
            "missing field `fill_interval_ms`",
        ),
        ("null", "missing field `key`"),
    ];

    // At start: the proxy does not start.
    let config = weft_proxy::ProxyConfig {
        workers: 1,
        wasm: crate::support::test_wasm(),
        ..Default::default()
    };
    let err = Proxy::start(config, snapshot(cases[1].0))
        .err()
        .expect("refused at start");
    let message = format!("{err:?}");
    assert!(message.contains("on_configure rejected"), "{message}");
    assert!(message.contains(cases[1].1), "{message}");

    // As an update: refused, and the running configuration keeps serving.
    let proxy = start_proxy(
        &with_filters(
            &wasm_filter("rl_config", "ratelimit", good, "fail_closed"),
            &endpoints(&[up.addr]),
            "",
        ),
        1,
    );
    let addr = proxy.listener_addr("main").expect("listener");
    for (config, reason) in cases {
        let err = proxy.update(snapshot(config)).expect_err(config);
        let message = format!("{err:?}");
        assert!(message.contains("on_configure rejected"), "{config}: {message}");
        assert!(message.contains(reason), "{config}: {message}");
    }
    assert_eq!(request(addr, Some("alice")).await.status, StatusCode::OK);
    assert_eq!(
        request(addr, Some("alice")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the old limits still apply"
    );
}
