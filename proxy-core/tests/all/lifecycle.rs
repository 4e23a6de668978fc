//! Start-up errors, graceful drain, the binary's exit codes.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::*;

#[tokio::test]
async fn graceful_shutdown_completes_in_flight_requests() {
    let slow = upstream(|request| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        describe("slow", request).await
    })
    .await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[slow.addr]), ""), 2);
    let addr = proxy.listener_addr("main").expect("listener");
    let admin_addr = proxy.admin_addr().expect("admin");
    let in_flight: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "svc", "/").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let shutdown = tokio::task::spawn_blocking(move || proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(admin_addr, "admin", "/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while draining"
    );
    for request in in_flight {
        let r = request.await.expect("task");
        assert_eq!(r.status, StatusCode::OK, "in-flight request completes: {r:?}");
    }
    shutdown.await.expect("shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "drained in {:?}",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn drain_deadline_closes_stuck_requests() {
    let stuck = upstream(|request| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        describe("stuck", request).await
    })
    .await;
    let snapshot = weft_api::Snapshot::from_yaml(&single_cluster(&endpoints(&[stuck.addr]), "")).expect("valid");
    let config = weft_proxy::ProxyConfig {
        workers: 1,
        admin_address: None,
        drain_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let proxy = weft_proxy::Proxy::start(config, snapshot).expect("starts");
    let addr = proxy.listener_addr("main").expect("listener");
    let request = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("handshake");
        tokio::spawn(conn);
        sender
            .send_request(
                http::Request::get("/")
                    .header("host", "svc")
                    .body(Default::default())
                    .expect("req"),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    tokio::task::spawn_blocking(move || proxy.shutdown())
        .await
        .expect("shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "deadline honoured: {:?}",
        started.elapsed()
    );
    assert!(request.await.expect("task").is_err(), "the stuck request is cut off");
}

#[test]
fn invalid_snapshot_file_gives_a_precise_error_and_nonzero_exit() {
    let dir = std::env::temp_dir().join(format!("weft-invalid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "listeners:\n  - { name: main, address: \"127.0.0.1:0\", route_table: rt }\nroute_tables:\n  - name: rt\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - forward: { cluster: nope }\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["--config", file.to_str().expect("path"), "--admin", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("route_tables[0].virtual_hosts[0].routes[0].forward.cluster: no cluster named \"nope\""),
        "{stderr}"
    );

    std::fs::write(&file, "listeners:\n  - name: main\n    adress: 1\n").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(["--config", file.to_str().expect("path"), "--check"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listeners[0]") && stderr.contains("adress"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_serves_then_drains_on_sigterm() {
    use std::io::{Read, Write};
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in upstream.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = std::env::temp_dir().join(format!("weft-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("snapshot.yaml");
    std::fs::write(
        &file,
        single_cluster(&endpoints(&[up_addr]), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args([
            "--config",
            file.to_str().expect("path"),
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut served = false;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            served = out.starts_with("HTTP/1.1 200") && out.ends_with("ok\n");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM through the kill command: no libc dependency for one test.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(served, "the binary served a request");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

#[test]
fn binary_reloads_its_snapshot_file_when_it_changes_and_refuses_bad_edits() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let snapshot = |body: &str| {
        format!(
            "version: \"{body}\"\nlisteners:\n  - {{ name: main, address: \"127.0.0.1:{port}\", route_table: rt }}\nroute_tables:\n  - name: rt\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - direct_response: {{ status: 200, body: \"{body}\" }}\n"
        )
    };
    let dir = std::env::temp_dir().join(format!("weft-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("snapshot.yaml");
    std::fs::write(&file, snapshot("first")).expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args([
            "--config",
            file.to_str().expect("path"),
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let fetch = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split("\r\n\r\n").nth(1).map(str::to_owned)
    };
    let wait_for = |expected: &str| {
        (0..100).any(|_| {
            let got = fetch();
            if got.as_deref() == Some(expected) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
            false
        })
    };
    let first = wait_for("first");
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time
    std::fs::write(&file, snapshot("second")).expect("write");
    let second = wait_for("second");
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&file, "listeners: [ { broken").expect("write");
    std::thread::sleep(Duration::from_millis(1500));
    let kept = fetch();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(first, "served the first snapshot");
    assert!(second, "picked up the edited file");
    assert_eq!(
        kept.as_deref(),
        Some("second"),
        "a broken edit is refused and the last good snapshot serves"
    );
}
