//! Failure handling: health checks, outlier ejection, circuit breakers, timeouts, connect
//! failures, each with the right local reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn health_checks_eject_and_restore_endpoints() {
    let sick = Arc::new(AtomicBool::new(false));
    let flag = sick.clone();
    let flaky = upstream(move |request| {
        let sick = flag.load(Ordering::SeqCst);
        async move {
            if request.uri().path() == "/healthz" && sick {
                return Response::builder()
                    .status(503)
                    .body(Full::new(Bytes::new()))
                    .expect("response");
            }
            describe("flaky", request).await
        }
    })
    .await;
    let steady = echo("steady").await;
    let cluster = format!(
        "    health_check: {{ path: /healthz, interval: 50ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2 }}\n{}",
        endpoints(&[flaky.addr, steady.addr])
    );
    let proxy = start_proxy(&single_cluster(&cluster, ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(
        spread(addr, 10, |_| vec![]).await.len(),
        2,
        "both endpoints serve while healthy"
    );

    sick.store(true, Ordering::SeqCst);
    let healthy = "weft_cluster_membership_healthy{cluster=\"c\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&proxy, healthy).await == Some(1.0)
        })
        .await
    );
    let counts = spread(addr, 20, |_| vec![]).await;
    assert_eq!(
        counts.get("steady"),
        Some(&20),
        "the unhealthy endpoint gets nothing: {counts:?}"
    );
    assert!(
        metric(&proxy, "weft_cluster_health_check_failures_total{cluster=\"c\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );

    sick.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&proxy, healthy).await == Some(2.0)
        })
        .await
    );
    assert_eq!(
        spread(addr, 10, |_| vec![]).await.len(),
        2,
        "restored endpoint serves again"
    );
}

#[tokio::test]
async fn no_healthy_endpoint_gives_503() {
    let down = upstream(|_| async {
        Response::builder()
            .status(500)
            .body(Full::new(Bytes::new()))
            .expect("response")
    })
    .await;
    let cluster = format!(
        "    health_check: {{ path: /healthz, interval: 50ms, unhealthy_threshold: 1 }}\n{}",
        endpoints(&[down.addr])
    );
    let proxy = start_proxy(&single_cluster(&cluster, ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(addr, "svc", "/").await.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
    );
    let r = get(addr, "svc", "/").await;
    assert_eq!(r.reason(), Some("no_healthy_upstream"));
    assert_eq!(r.body, "no healthy upstream\n");
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_returns_it() {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let bad = upstream(move |request| {
        let failing = flag.load(Ordering::SeqCst);
        async move {
            if failing {
                Response::builder()
                    .status(500)
                    .header("x-upstream", "bad")
                    .body(Full::new(Bytes::new()))
                    .expect("response")
            } else {
                describe("bad", request).await
            }
        }
    })
    .await;
    let good = echo("good").await;
    let cluster = format!(
        "    outlier_detection: {{ consecutive_5xx: 3, base_ejection_time: 300ms, max_ejection_percent: 50 }}\n{}",
        endpoints(&[bad.addr, good.addr])
    );
    let proxy = start_proxy(&single_cluster(&cluster, ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    let mut five_hundreds = 0;
    for _ in 0..20 {
        if client.get("svc", "/", &[]).await.status == StatusCode::INTERNAL_SERVER_ERROR {
            five_hundreds += 1;
        }
    }
    assert_eq!(five_hundreds, 3, "ejected after 3 consecutive 5xx");
    assert_eq!(
        metric(&proxy, "weft_cluster_outlier_ejections_total{cluster=\"c\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&proxy, "weft_cluster_outlier_ejected{cluster=\"c\"}").await,
        Some(1.0)
    );

    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counts = spread(addr, 10, |_| vec![]).await;
    assert_eq!(
        counts.get("bad"),
        Some(&5),
        "returned after the ejection time: {counts:?}"
    );
    assert_eq!(
        metric(&proxy, "weft_cluster_outlier_ejected{cluster=\"c\"}").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn circuit_breaker_overflow_gives_503() {
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(AtomicUsize::new(0));
    let (gate, count) = (release.clone(), entered.clone());
    let slow = upstream(move |request| {
        let gate = gate.clone();
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            gate.notified().await;
            describe("slow", request).await
        }
    })
    .await;
    let cluster = format!(
        "    circuit_breakers: {{ max_requests: 2 }}\n{}",
        endpoints(&[slow.addr])
    );
    let proxy = start_proxy(&single_cluster(&cluster, ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "svc", "/").await }))
        .collect();
    assert!(eventually(Duration::from_secs(5), || async { entered.load(Ordering::SeqCst) == 2 }).await);

    let r = get(addr, "svc", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.reason(), Some("upstream_overflow"));
    assert_eq!(
        metric(&proxy, "weft_cluster_upstream_overflow_total{cluster=\"c\"}").await,
        Some(1.0)
    );

    release.notify_waiters();
    for h in held {
        assert_eq!(h.await.expect("task").status, StatusCode::OK);
    }
    let after = tokio::spawn(async move { get(addr, "svc", "/").await });
    assert!(eventually(Duration::from_secs(5), || async { entered.load(Ordering::SeqCst) == 3 }).await);
    release.notify_waiters();
    assert_eq!(
        after.await.expect("task").status,
        StatusCode::OK,
        "capacity is released after the responses"
    );
}

#[tokio::test]
async fn route_timeout_gives_504() {
    let slow = upstream(|request| async move {
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        describe("slow", request).await
    })
    .await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[slow.addr]), ", timeout: 200ms"), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let started = std::time::Instant::now();
    let r = get(addr, "svc", "/slow").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.reason(), Some("upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(get(addr, "svc", "/fast").await.status, StatusCode::OK);
    assert_eq!(
        metric(&proxy, "weft_cluster_upstream_rq_timeout_total{cluster=\"c\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn connect_failure_gives_502() {
    // A port that was just free: nothing listens there.
    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    };
    let proxy = start_proxy(&single_cluster(&endpoints(&[closed]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "svc", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.reason(), Some("upstream_connect_failure"));
    assert_eq!(
        metric(&proxy, "weft_cluster_upstream_cx_connect_fail_total{cluster=\"c\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn upstream_reset_gives_502() {
    // Accepts, reads the request, closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr_up = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let proxy = start_proxy(&single_cluster(&endpoints(&[addr_up]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "svc", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.reason(), Some("upstream_reset"));
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let a = echo("a").await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[a.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let counts = spread(addr, 50, |_| vec![]).await;
    assert_eq!(counts.get("a"), Some(&50));
    let opened = metric(&proxy, "weft_cluster_upstream_cx_total{cluster=\"c\"}")
        .await
        .expect("metric");
    assert!(
        opened <= 2.0,
        "50 sequential requests opened {opened} upstream connections"
    );
}
