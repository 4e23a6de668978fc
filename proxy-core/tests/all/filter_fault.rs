//! The fault filter (`filters/fault`) through the real proxy: Istio's fault injection (delays on
//! `weft.delay`, aborts as local replies), per user and by percentage.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::*;

/// A proxy with the fault filter (`config`, JSON) in front of `up`.
fn proxy_with(config: &str, up: &Upstream) -> weft_proxy::Proxy {
    let filters = wasm_filter("fault", "fault", config, "fail_closed");
    start_proxy(&with_filters(&filters, &endpoints(&[up.addr]), ""), 1)
}

async fn injected(proxy: &weft_proxy::Proxy, what: &str) -> f64 {
    metric(proxy, &format!("fault_{what}_injected_total{{filter=\"fault\"}}"))
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn only_jason_is_delayed() {
    let up = echo("ratings").await;
    let proxy = proxy_with(
        r#"{"delay": {"fixed_delay_ms": 300, "percentage": 100}, "match": {"headers": {"end-user": {"exact": "jason"}}}}"#,
        &up,
    );
    let mut client = H1::connect(proxy.listener_addr("main").expect("listener")).await;

    let started = Instant::now();
    let r = client.get("ratings", "/ratings/0", &[("end-user", "jason")]).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "jason waited {took:?}"
    );

    let started = Instant::now();
    let r = client.get("ratings", "/ratings/0", &[("end-user", "alice")]).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(took < Duration::from_millis(250), "alice waited {took:?}");
    let r = client.get("ratings", "/ratings/0", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    assert_eq!(up.hits(), 3, "delayed requests still reach the upstream");
    assert_eq!(injected(&proxy, "delays").await, 1.0);
    assert_eq!(injected(&proxy, "aborts").await, 0.0);
}

#[tokio::test]
async fn every_request_is_aborted_at_100_percent() {
    let up = echo("ratings").await;
    let proxy = proxy_with(r#"{"abort": {"http_status": 500, "percentage": 100}}"#, &up);
    let mut client = H1::connect(proxy.listener_addr("main").expect("listener")).await;
    for _ in 0..5 {
        let r = client.get("ratings", "/ratings/0", &[]).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
        assert_eq!(r.body, "fault filter abort");
    }
    assert_eq!(up.hits(), 0, "aborted requests never reach the upstream");
    assert_eq!(injected(&proxy, "aborts").await, 5.0);
}

#[tokio::test]
async fn half_the_requests_are_aborted_at_50_percent() {
    let up = echo("ratings").await;
    let proxy = proxy_with(r#"{"abort": {"http_status": 503, "percentage": 50.0}}"#, &up);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        tasks.spawn(async move {
            let mut client = H1::connect(addr).await;
            let mut aborted = 0;
            for _ in 0..250 {
                let r = client.get("ratings", "/", &[]).await;
                match r.status {
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert_eq!(r.body, "fault filter abort");
                        aborted += 1;
                    }
                    StatusCode::OK => {}
                    other => panic!("unexpected {other}: {r:?}"),
                }
            }
            aborted
        });
    }
    let mut aborted = 0;
    while let Some(n) = tasks.join_next().await {
        aborted += n.expect("client");
    }
    assert!((450..=550).contains(&aborted), "{aborted} of 1000 aborted");
    assert_eq!(up.hits(), 1000 - aborted);
    assert_eq!(injected(&proxy, "aborts").await, aborted as f64);
}

#[tokio::test]
async fn jason_gets_the_ratings_test_abort() {
    // Bookinfo's ratings-test-abort: jason's requests fail with 500, everyone else's pass.
    let up = echo("ratings").await;
    let proxy = proxy_with(
        r#"{"abort": {"http_status": 500, "percentage": 100}, "match": {"headers": {"end-user": {"exact": "jason"}}}}"#,
        &up,
    );
    let mut client = H1::connect(proxy.listener_addr("main").expect("listener")).await;
    for _ in 0..3 {
        let r = client.get("ratings", "/ratings/0", &[("end-user", "jason")]).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
        assert_eq!(r.body, "fault filter abort");
        let r = client.get("ratings", "/ratings/0", &[("end-user", "jasonx")]).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let r = client.get("ratings", "/ratings/0", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    assert_eq!(up.hits(), 6);
}

#[tokio::test]
async fn a_delay_comes_before_an_abort() {
    let up = echo("ratings").await;
    let proxy = proxy_with(
        r#"{"delay": {"fixed_delay_ms": 200}, "abort": {"http_status": 503}, "match": {"uri": {"prefix": "/ratings"}}}"#,
        &up,
    );
    let mut client = H1::connect(proxy.listener_addr("main").expect("listener")).await;

    let started = Instant::now();
    let r = client.get("ratings", "/ratings/0", &[]).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.body, "fault filter abort");
    assert!(took >= Duration::from_millis(200), "aborted after {took:?}");

    // A request with a body: the abort comes from its body phase, after the delay.
    let started = Instant::now();
    let request = Request::post("/ratings/0")
        .header("host", "ratings")
        .body(Full::new(Bytes::from_static(b"{\"stars\": 5}")))
        .expect("request");
    let r = client.send(request).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert!(took >= Duration::from_millis(200), "aborted after {took:?}");

    let r = client.get("ratings", "/other", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "outside the match: {r:?}");
    assert_eq!(up.hits(), 1);
    assert_eq!(injected(&proxy, "delays").await, 2.0);
    assert_eq!(injected(&proxy, "aborts").await, 2.0);
}

#[tokio::test]
async fn a_bad_configuration_refuses_the_snapshot() {
    let up = echo("ratings").await;
    let filters = wasm_filter(
        "fault",
        "fault",
        r#"{"abort": {"http_status": 500}, "match": {"headers": {"end-user": {"regex": "j.*"}}}}"#,
        "fail_closed",
    );
    let snapshot = weft_api::Snapshot::from_yaml(&with_filters(&filters, &endpoints(&[up.addr]), "")).expect("yaml");
    let config = weft_proxy::ProxyConfig {
        workers: 1,
        wasm: crate::support::test_wasm(),
        ..Default::default()
    };
    let err = match weft_proxy::Proxy::start(config, snapshot) {
        Ok(_) => panic!("a regex match is refused"),
        Err(err) => format!("{err:?}"),
    };
    assert!(err.contains("regex matches are not supported"), "{err}");
}
