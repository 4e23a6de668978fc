//! The telemetry filter through the real proxy: Istio's standard metrics at
//! `/stats/prometheus` (one series per label set, labels from node metadata and the request),
//! response flags from local replies, gRPC status, the source reporter with extra labels,
//! the access log, and a refused configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use weft_proxy::{Proxy, ProxyConfig};

use crate::support::*;

/// A local workload as Istio's node metadata describes it.
fn node_config(workers: usize) -> ProxyConfig {
    let owned = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    ProxyConfig {
        workers,
        admin_address: Some("127.0.0.1:0".parse().expect("addr")),
        drain_timeout: Duration::from_secs(5),
        node_metadata: owned(&[
            ("NAMESPACE", "shop"),
            ("WORKLOAD_NAME", "reviews-v1"),
            ("CLUSTER_ID", "east"),
        ]),
        node_labels: owned(&[("app", "reviews"), ("version", "v1")]),
        wasm: crate::support::test_wasm(),
        ..Default::default()
    }
}

/// Listener `main` with `filters`, serving only the authorities `svc` and
/// `reviews.shop.svc.cluster.local` (any other host: 404 `no_route`): `/down` goes to a
/// cluster without endpoints (503 `no_healthy_upstream`), `/teapot` is a direct 418, the rest
/// goes to `upstream`.
fn snapshot(filters: &str, upstream: std::net::SocketAddr) -> weft_api::Snapshot {
    let yaml = format!(
        r#"
version: "telemetry"
listeners:
  - name: main
    address: 127.0.0.1:0
    route_table: rt
    filters:
{filters}
route_tables:
  - name: rt
    virtual_hosts:
      - name: reviews
        domains: ["svc", "reviews.shop.svc.cluster.local"]
        routes:
          - name: down
            match: {{ path: {{ prefix: /down }} }}
            forward: {{ cluster: empty }}
          - name: teapot
            match: {{ path: {{ prefix: /teapot }} }}
            direct_response: {{ status: 418, body: "short and stout\n" }}
          - name: default
            forward: {{ cluster: c }}
clusters:
  - name: c
    endpoints:
      - {{ address: "{upstream}" }}
  - name: empty
"#
    );
    weft_api::Snapshot::from_yaml(&yaml).unwrap_or_else(|e| panic!("test snapshot is invalid: {e}\n{yaml}"))
}

fn start(filters: &str, upstream: std::net::SocketAddr, workers: usize) -> Proxy {
    Proxy::start(node_config(workers), snapshot(filters, upstream)).expect("proxy starts")
}

/// An upstream answering `hello\n` (6 bytes), with `grpc-status: 5` when the request is gRPC
/// (a trailers-only NOT_FOUND, as gRPC servers send errors).
async fn hello() -> Upstream {
    upstream(|request: Request<hyper::body::Incoming>| async move {
        let grpc = request
            .headers()
            .get("content-type")
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        let mut response = Response::builder();
        if grpc {
            response = response
                .header("content-type", "application/grpc")
                .header("grpc-status", "5");
        }
        response
            .body(Full::new(Bytes::from_static(b"hello\n")))
            .expect("response")
    })
    .await
}

/// One sample of `/stats/prometheus`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text (samples with labels only; comments skipped).
fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let mut labels = BTreeMap::new();
        let mut chars = rest.chars();
        loop {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "label value opens with a quote: {line}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => panic!("dangling escape: {line}"),
                    },
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                other => panic!("unexpected {other:?} after a label value: {line}"),
            }
        }
        let value = chars.as_str().trim().parse().unwrap_or(f64::NAN);
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// The value of the one sample called `name` whose labels include all of `want`; `None` if
/// there is none (and a panic if several match).
async fn series(proxy: &Proxy, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let text = admin(proxy, "/stats/prometheus").await.body;
    let samples = parse_samples(&text);
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "several {name} series match {want:?}: {matching:#?}"
    );
    matching.first().map(|s| s.value)
}

/// Waits until the series reaches `expected` (the log phase runs as the response body ends,
/// which may be just after the client has read it).
pub(crate) async fn wait_for(proxy: &Proxy, name: &str, want: &[(&str, &str)], expected: f64) {
    let reached = eventually(Duration::from_secs(5), || async {
        series(proxy, name, want).await == Some(expected)
    })
    .await;
    assert!(
        reached,
        "{name}{want:?} is {:?}, expected {expected}\n{}",
        series(proxy, name, want).await,
        admin(proxy, "/stats/prometheus").await.body
    );
}

#[tokio::test]
async fn each_outcome_gets_its_own_istio_series() {
    let up = hello().await;
    let filters = wasm_filter("telemetry", "telemetry", "{ reporter: destination }", "fail_closed");
    let proxy = start(&filters, up.addr, 2);
    let addr = proxy.listener_addr("main").expect("listener");
    // Fresh connections spread the requests over both workers' VMs.
    for _ in 0..5 {
        assert_eq!(get(addr, "svc:8080", "/ok").await.status, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(get(addr, "nowhere.example", "/").await.status, StatusCode::NOT_FOUND);
    }
    for _ in 0..2 {
        assert_eq!(get(addr, "svc", "/down").await.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(get(addr, "svc", "/teapot").await.status, StatusCode::IM_A_TEAPOT);

    // The whole series, as Grafana's Istio dashboards query it.
    let ok = "istio_requests_total{filter=\"telemetry\",reporter=\"destination\",\
        source_workload=\"unknown\",source_workload_namespace=\"unknown\",source_principal=\"unknown\",\
        source_app=\"unknown\",source_version=\"unknown\",source_canonical_service=\"unknown\",\
        source_canonical_revision=\"latest\",destination_workload=\"reviews-v1\",\
        destination_workload_namespace=\"shop\",destination_principal=\"unknown\",destination_app=\"reviews\",\
        destination_version=\"v1\",destination_service=\"svc\",destination_service_name=\"svc\",\
        destination_service_namespace=\"shop\",destination_canonical_service=\"reviews\",\
        destination_canonical_revision=\"v1\",request_protocol=\"http\",response_code=\"200\",\
        grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"none\",\
        source_cluster=\"unknown\",destination_cluster=\"east\"}";
    let reached = eventually(Duration::from_secs(5), || async {
        metric(&proxy, ok).await == Some(5.0)
    })
    .await;
    assert!(reached, "{}", admin(&proxy, "/stats/prometheus").await.body);

    let base = [("filter", "telemetry"), ("reporter", "destination")];
    let with = |extra: &[(&'static str, &'static str)]| [&base[..], extra].concat();
    let not_found = with(&[
        ("response_code", "404"),
        ("response_flags", "NR"),
        ("destination_service", "nowhere.example"),
    ]);
    wait_for(&proxy, "istio_requests_total", &not_found, 3.0).await;
    let no_upstream = with(&[
        ("response_code", "503"),
        ("response_flags", "UH"),
        ("destination_service", "svc"),
    ]);
    wait_for(&proxy, "istio_requests_total", &no_upstream, 2.0).await;
    let direct = with(&[("response_code", "418"), ("response_flags", "-")]);
    wait_for(&proxy, "istio_requests_total", &direct, 1.0).await;

    // Histograms share the labels: counts, buckets and sums.
    let ok_labels = with(&[("response_code", "200"), ("destination_service", "svc")]);
    for histogram in [
        "istio_request_duration_milliseconds_count",
        "istio_request_bytes_count",
        "istio_response_bytes_count",
    ] {
        wait_for(&proxy, histogram, &ok_labels, 5.0).await;
    }
    let inf = [&ok_labels[..], &[("le", "+Inf")]].concat();
    wait_for(&proxy, "istio_request_duration_milliseconds_bucket", &inf, 5.0).await;
    let slow = [&ok_labels[..], &[("le", "5000")]].concat();
    wait_for(&proxy, "istio_request_duration_milliseconds_bucket", &slow, 5.0).await;
    wait_for(&proxy, "istio_response_bytes_sum", &ok_labels, 30.0).await;
    wait_for(&proxy, "istio_request_bytes_sum", &ok_labels, 0.0).await;
    wait_for(&proxy, "istio_response_bytes_sum", &not_found, 27.0).await; // "no route\n"

    let text = admin(&proxy, "/stats/prometheus").await.body;
    assert_eq!(
        text.matches("# TYPE istio_requests_total counter").count(),
        1,
        "one TYPE line per name"
    );
    assert!(
        text.contains("# TYPE istio_request_duration_milliseconds histogram"),
        "{text}"
    );
    assert_eq!(
        parse_samples(&text)
            .iter()
            .filter(|s| s.name == "istio_requests_total")
            .count(),
        4,
        "200, 404 NR, 503 UH, 418: {text}"
    );
}

#[tokio::test]
async fn grpc_requests_report_protocol_and_status() {
    let up = hello().await;
    let filters = wasm_filter("telemetry", "telemetry", "{ reporter: destination }", "fail_closed");
    let proxy = start(&filters, up.addr, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    let grpc = [("content-type", "application/grpc+proto")];
    for _ in 0..2 {
        let r = client.get("svc", "/reviews.Reviews/Get", &grpc).await;
        assert_eq!(r.header("grpc-status"), Some("5"), "{r:?}");
    }
    let r = client.get("svc", "/down/reviews.Reviews/Get", &grpc).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(client.get("svc", "/plain", &[]).await.status, StatusCode::OK);

    let grpc_labels = |code, status, flags| {
        [
            ("request_protocol", "grpc"),
            ("response_code", code),
            ("grpc_response_status", status),
            ("response_flags", flags),
        ]
    };
    wait_for(&proxy, "istio_requests_total", &grpc_labels("200", "5", "-"), 2.0).await;
    // A local reply to a gRPC request: the status Envoy infers from 503 (UNAVAILABLE).
    wait_for(&proxy, "istio_requests_total", &grpc_labels("503", "14", "UH"), 1.0).await;
    let http = [
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
    ];
    wait_for(&proxy, "istio_requests_total", &http, 1.0).await;
}

#[tokio::test]
async fn a_filter_denial_is_flagged_like_ext_authz() {
    let up = hello().await;
    // Telemetry first, so it sees the requests the filters after it answer.
    let filters = [
        wasm_filter("telemetry", "telemetry", "{ reporter: destination }", "fail_closed"),
        wasm_filter("deny", "test_deny", "null", "fail_closed"),
    ]
    .concat();
    let proxy = start(&filters, up.addr, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(get(addr, "svc", "/forbidden/x").await.status, StatusCode::FORBIDDEN);
    assert_eq!(get(addr, "svc", "/allowed").await.status, StatusCode::OK);
    let denied = [("response_code", "403"), ("response_flags", "UAEX")];
    wait_for(&proxy, "istio_requests_total", &denied, 1.0).await;
    let allowed = [("response_code", "200"), ("response_flags", "-")];
    wait_for(&proxy, "istio_requests_total", &allowed, 1.0).await;
}

#[tokio::test]
async fn the_source_reporter_labels_the_local_workload_as_source_and_logs_access() {
    let up = hello().await;
    let config = "{ reporter: source, access_log: true, extra_labels: { mesh_id: mesh-1 } }";
    let filters = wasm_filter("telemetry-out", "telemetry", config, "fail_closed");
    let proxy = start(&filters, up.addr, 2);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    for i in 0..4 {
        let request = Request::post("/reviews/1")
            .header("host", "reviews.shop.svc.cluster.local:9080")
            .header("user-agent", "telemetry-test")
            .header("x-request-id", format!("rid-{i}"))
            .body(Full::new(Bytes::from_static(b"0123456789")))
            .expect("request");
        let r = client.send(request).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "access logging does not disturb requests: {r:?}"
        );
        assert_eq!(r.body, "hello\n");
    }
    assert_eq!(get(addr, "svc", "/down").await.status, StatusCode::SERVICE_UNAVAILABLE);

    let want = [
        ("filter", "telemetry-out"),
        ("reporter", "source"),
        ("source_workload", "reviews-v1"),
        ("source_workload_namespace", "shop"),
        ("source_app", "reviews"),
        ("source_version", "v1"),
        ("source_canonical_service", "reviews"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "east"),
        ("source_principal", "unknown"),
        ("destination_workload", "unknown"),
        ("destination_canonical_revision", "latest"),
        ("destination_service", "reviews.shop.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "shop"),
        ("connection_security_policy", "unknown"),
        ("response_code", "200"),
        ("mesh_id", "mesh-1"),
    ];
    wait_for(&proxy, "istio_requests_total", &want, 4.0).await;
    wait_for(&proxy, "istio_request_bytes_sum", &want, 40.0).await;
    wait_for(&proxy, "istio_response_bytes_sum", &want, 24.0).await;
    let down = [("reporter", "source"), ("response_flags", "UH"), ("mesh_id", "mesh-1")];
    wait_for(&proxy, "istio_requests_total", &down, 1.0).await;
}

#[tokio::test]
async fn metrics_can_be_disabled() {
    let up = hello().await;
    let config = "{ reporter: destination, disable_metrics: true, access_log: true }";
    let filters = wasm_filter("telemetry", "telemetry", config, "fail_closed");
    let proxy = start(&filters, up.addr, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(get(addr, "svc", "/").await.status, StatusCode::OK);
    assert_eq!(get(addr, "nowhere", "/").await.status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = admin(&proxy, "/stats/prometheus").await.body;
    assert!(!text.contains("istio_"), "{text}");
}

#[tokio::test]
async fn a_bad_configuration_is_refused_with_its_reason() {
    let up = hello().await;
    for (config, reason) in [
        ("{ reporter: sideways }", "unknown variant `sideways`"),
        ("{ access_log: true }", "missing field `reporter`"),
        (
            "{ reporter: source, extra_labels: { response_code: x } }",
            "extra_labels",
        ),
    ] {
        let filters = wasm_filter("telemetry", "telemetry", config, "fail_closed");
        let err = Proxy::start(node_config(1), snapshot(&filters, up.addr))
            .err()
            .unwrap_or_else(|| panic!("{config} must be refused"));
        let message = format!("{err:?}");
        assert!(message.contains(reason), "{config}: {message}");
    }
}

#[test]
fn prometheus_samples_parse_with_escapes() {
    let text = "# TYPE x counter\nx{a=\"1\",b=\"q\\\"\\\\\\n\",le=\"+Inf\"} 3\nplain 1\n";
    let samples = parse_samples(text);
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].name, "x");
    assert_eq!(samples[0].labels["b"], "q\"\\\n");
    assert_eq!(samples[0].labels["le"], "+Inf");
    assert!((samples[0].value - 3.0).abs() < f64::EPSILON);
}
