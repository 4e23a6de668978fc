//! HTTP version translation, malformed input, body limits.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::*;

fn h2_cluster(addr: std::net::SocketAddr) -> String {
    format!("    protocol: http2\n{}", endpoints(&[addr]))
}

#[tokio::test]
async fn http1_downstream_to_http2_upstream() {
    let a = echo("a").await;
    let proxy = start_proxy(&single_cluster(&h2_cluster(a.addr), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    let r = client.get("reviews:9080", "/x?y=1", &[("te", "gzip")]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body.starts_with("a GET /x?y=1 HTTP/2.0 reviews:9080\n"), "{}", r.body);
    assert!(
        !r.body.contains("\nhost:"),
        "h2 carries the authority, not Host: {}",
        r.body
    );
    // Several requests share one multiplexed upstream connection.
    for _ in 0..10 {
        assert_eq!(client.get("reviews:9080", "/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(
        metric(&proxy, "weft_cluster_upstream_cx_total{cluster=\"c\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn http2_downstream_to_http1_upstream() {
    let a = echo("a").await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[a.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H2::connect(addr).await;
    let r = client.get("reviews:9080", "/p").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body.starts_with("a GET /p HTTP/1.1 reviews:9080\n"), "{}", r.body);
    assert!(r.body.contains("host: reviews:9080"), "{}", r.body);
    // Concurrent streams on one downstream connection.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut c = client.clone();
        tasks.spawn(async move { c.get("reviews:9080", &format!("/n/{i}")).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.expect("task").status, StatusCode::OK);
    }
}

#[tokio::test]
async fn http2_only_and_http1_only_listeners() {
    let a = echo("a").await;
    let yaml =
        single_cluster(&endpoints(&[a.addr]), "").replace("route_table: rt", "route_table: rt\n    protocol: http2");
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(H2::connect(addr).await.get("svc", "/").await.status, StatusCode::OK);
    let h1 = raw(addr, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", Duration::from_secs(2)).await;
    assert!(
        !h1.starts_with("HTTP/1.1 200"),
        "an http2 listener must not serve HTTP/1.1: {h1:?}"
    );

    let yaml =
        single_cluster(&endpoints(&[a.addr]), "").replace("route_table: rt", "route_table: rt\n    protocol: http1");
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(get(addr, "svc", "/").await.status, StatusCode::OK);
    let preface = raw(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Duration::from_secs(2)).await;
    assert!(
        preface.is_empty() || preface.starts_with("HTTP/1.1 4") || preface.starts_with("HTTP/1.1 5"),
        "an http1 listener must not speak HTTP/2: {preface:?}"
    );
}

#[tokio::test]
async fn request_bodies_stream_through() {
    let a = echo("a").await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[a.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    let body = Bytes::from(vec![b'x'; 3 * 1024 * 1024]);
    let r = client
        .send(
            Request::post("/upload")
                .header("host", "svc")
                .body(Full::new(body))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("body-bytes: 3145728"), "{}", r.body);
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() {
    let a = echo("a").await;
    let yaml = single_cluster(&endpoints(&[a.addr]), "")
        + "limits:\n  max_request_headers_bytes: 8192\n  max_request_headers_count: 20\n  max_request_body_bytes: 1000\n";
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let t = Duration::from_secs(3);

    let smuggle = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: svc\r\n\r\n",
        t,
    )
    .await;
    // Transfer-Encoding wins, Content-Length is dropped, and the connection closes after the
    // response: the request hidden in the body is never read as a second request.
    assert_eq!(
        smuggle.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count(),
        1,
        "the smuggled request must not be served: {smuggle}"
    );
    assert!(smuggle.contains("connection: close"), "{smuggle}");
    assert!(smuggle.contains("a POST / HTTP/1.1 svc\n"), "{smuggle}");
    assert!(
        !smuggle.contains("content-length: 4\n"),
        "content-length must not reach the upstream: {smuggle}"
    );
    assert!(!smuggle.contains("/admin"), "{smuggle}");
    let smuggle_te_first = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: svc\r\n\r\n",
        t,
    )
    .await;
    assert_eq!(
        smuggle_te_first.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count(),
        1,
        "{smuggle_te_first}"
    );
    assert!(!smuggle_te_first.contains("/admin"), "{smuggle_te_first}");

    let two_lengths = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        t,
    )
    .await;
    assert!(two_lengths.starts_with("HTTP/1.1 400"), "{two_lengths}");

    let bad_te = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip\r\n\r\n",
        t,
    )
    .await;
    assert!(bad_te.starts_with("HTTP/1.1 400"), "{bad_te}");

    let bad_bytes = raw(addr, b"GET / HTTP/1.1\r\nHost: svc\r\nX-Bad\x01Name: v\r\n\r\n", t).await;
    assert!(bad_bytes.starts_with("HTTP/1.1 400"), "{bad_bytes}");

    let garbage = raw(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n", t).await;
    assert!(garbage.starts_with("HTTP/1.1 400") || garbage.is_empty(), "{garbage:?}");

    let huge = format!("GET / HTTP/1.1\r\nHost: svc\r\nX-Big: {}\r\n\r\n", "v".repeat(20_000));
    let huge = raw(addr, huge.as_bytes(), t).await;
    assert!(huge.starts_with("HTTP/1.1 431"), "{huge}");

    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = raw(addr, format!("GET / HTTP/1.1\r\nHost: svc\r\n{many}\r\n").as_bytes(), t).await;
    assert!(many.starts_with("HTTP/1.1 431"), "{many}");

    let no_host = raw(addr, b"GET / HTTP/1.1\r\n\r\n", t).await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");

    let too_big = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
        t,
    )
    .await;
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");

    let connect = raw(
        addr,
        b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\nConnection: close\r\n\r\n",
        t,
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");

    assert_eq!(
        a.hits(),
        2,
        "only the two neutralised smuggling carriers reached the upstream"
    );
    assert_eq!(get(addr, "svc", "/").await.status, StatusCode::OK, "still serving");
}
