//! Routing, header handling, direct responses, the filter seam, admin.

use http::StatusCode;

use crate::support::*;

#[tokio::test]
async fn routes_by_authority_path_and_header() {
    let a = echo("a").await;
    let b = echo("b").await;
    let yaml = format!(
        r#"
listeners:
  - {{ name: main, address: "127.0.0.1:0", route_table: rt }}
route_tables:
  - name: rt
    virtual_hosts:
      - name: reviews
        domains: ["reviews", "*.reviews.svc"]
        routes:
          - name: jason
            match: {{ headers: [{{ name: end-user, exact: jason }}] }}
            forward: {{ cluster: b }}
          - name: api
            match: {{ path: {{ prefix: /api/ }} }}
            forward: {{ cluster: a, prefix_rewrite: /v2/ }}
          - name: rest
            forward: {{ cluster: a, host_rewrite: reviews.internal }}
      - name: direct
        domains: ["status"]
        routes:
          - direct_response: {{ status: 418, body: "teapot\n", headers: {{ x-direct: yes }} }}
clusters:
  - {{ name: a, endpoints: [{{ address: "{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "{b}" }}] }}
"#,
        a = a.addr,
        b = b.addr
    );
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;

    let r = client.get("reviews:9080", "/api/items?x=1", &[]).await;
    assert_eq!(r.header("x-upstream"), Some("a"));
    assert!(
        r.body.starts_with("a GET /v2/items?x=1 HTTP/1.1 reviews:9080\n"),
        "{}",
        r.body
    );

    let r = client.get("reviews", "/other", &[("end-user", "jason")]).await;
    assert_eq!(r.header("x-upstream"), Some("b"));

    let r = client.get("x.reviews.svc", "/other", &[]).await;
    assert!(
        r.body.starts_with("a GET /other HTTP/1.1 reviews.internal\n"),
        "{}",
        r.body
    );

    let r = client.get("status", "/", &[]).await;
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(r.body, "teapot\n");
    assert_eq!(r.header("x-direct"), Some("yes"));

    let r = client.get("unknown.example", "/", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.reason(), Some("no_route"));
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_dropped() {
    let a = echo("a").await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[a.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    let r = client
        .get(
            "svc",
            "/",
            &[
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-forwarded-for", "10.1.2.3"),
                ("x-end-to-end", "kept"),
            ],
        )
        .await;
    let body = r.body.to_lowercase();
    assert!(body.contains("x-end-to-end: kept"), "{body}");
    assert!(!body.contains("x-hop"), "{body}");
    assert!(!body.contains("keep-alive: timeout"), "{body}");
    assert!(!body.contains("proxy-connection"), "{body}");
    assert!(body.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    let id = body
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("request id generated");
    assert_eq!(id.len(), 36, "{id}");

    let r = client.get("svc", "/", &[("x-request-id", "given-id")]).await;
    assert!(r.body.contains("x-request-id: given-id"), "{}", r.body);
}

#[tokio::test]
async fn absolute_form_proxy_requests_route_by_their_authority() {
    let a = echo("reviews").await;
    let yaml = format!(
        r#"
listeners:
  - {{ name: outbound, address: "127.0.0.1:0", kind: outbound, route_table: rt }}
route_tables:
  - name: rt
    virtual_hosts:
      - name: reviews
        domains: ["reviews:9080"]
        routes:
          - forward: {{ cluster: reviews }}
clusters:
  - {{ name: reviews, endpoints: [{{ address: "{}" }}] }}
"#,
        a.addr
    );
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("outbound").expect("listener");
    // An app with HTTP_PROXY set sends the absolute form; the Host header may even disagree.
    let response = raw(
        addr,
        b"GET http://reviews:9080/reviews/1?u=2 HTTP/1.1\r\nHost: ignored\r\nProxy-Connection: keep-alive\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("reviews GET /reviews/1?u=2 HTTP/1.1 reviews:9080"),
        "{response}"
    );
    assert!(!response.to_lowercase().contains("proxy-connection"), "{response}");
}

#[tokio::test]
async fn native_filter_edits_headers_and_answers_locally() {
    let a = echo("a").await;
    let yaml = format!(
        r#"
listeners:
  - name: main
    address: "127.0.0.1:0"
    route_table: rt
    filters:
      - name: mark
        native: headers
        config:
          request_headers_add: {{ x-mark: marked }}
          request_headers_remove: [x-internal]
          response_headers_add: {{ x-served-by: weft }}
          response_headers_remove: [x-upstream]
          deny: {{ path_prefix: /admin, status: 403, body: "no admin\n" }}
route_tables:
  - name: rt
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: by-mark
            match: {{ headers: [{{ name: x-mark, exact: marked }}] }}
            forward: {{ cluster: a }}
clusters:
  - {{ name: a, endpoints: [{{ address: "{}" }}] }}
"#,
        a.addr
    );
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;
    // The route only matches the header the filter adds: filters run before routing.
    let r = client.get("svc", "/", &[("x-internal", "secret")]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body.contains("x-mark: marked"), "{}", r.body);
    assert!(!r.body.contains("x-internal"), "{}", r.body);
    assert_eq!(r.header("x-served-by"), Some("weft"));
    assert_eq!(r.header("x-upstream"), None);

    let r = client.get("svc", "/admin/users", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body, "no admin\n");
    assert_eq!(r.reason(), Some("filter"));
    assert_eq!(
        r.header("x-served-by"),
        Some("weft"),
        "local replies pass the response phase too"
    );
    assert_eq!(a.hits(), 1);
    assert_eq!(
        metric(
            &proxy,
            "weft_listener_local_replies_total{listener=\"main\",reason=\"filter\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn admin_serves_readiness_config_and_stats() {
    let a = echo("a").await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[a.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(get(addr, "svc", "/").await.status, StatusCode::OK);

    assert_eq!(admin(&proxy, "/ready").await.status, StatusCode::OK);
    assert_eq!(admin(&proxy, "/live").await.status, StatusCode::OK);
    let dump = admin(&proxy, "/config_dump").await;
    let json: serde_json::Value = serde_json::from_str(&dump.body).expect("json");
    assert_eq!(json["version"], "test");
    assert_eq!(json["bound_listeners"]["main"], addr.to_string());
    assert_eq!(json["snapshot"]["clusters"][0]["name"], "c");
    assert_eq!(json["snapshot"]["clusters"][0]["connect_timeout"], "5s");

    assert_eq!(
        metric(
            &proxy,
            "weft_listener_downstream_rq_total{listener=\"main\",code_class=\"2xx\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &proxy,
            "weft_cluster_upstream_rq_total{cluster=\"c\",code_class=\"2xx\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&proxy, "weft_cluster_upstream_rq_time_ms_count{cluster=\"c\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&proxy, "weft_cluster_membership_healthy{cluster=\"c\"}").await,
        Some(1.0)
    );
    assert_eq!(admin(&proxy, "/nope").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn snapshot_updates_apply_atomically_and_bad_ones_change_nothing() {
    let a = echo("a").await;
    let b = echo("b").await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[a.addr]), ""), 2);
    let addr = proxy.listener_addr("main").expect("listener");
    assert_eq!(get(addr, "svc", "/").await.header("x-upstream"), Some("a"));

    let bad = single_cluster(&endpoints(&[b.addr]), "").replace("cluster: c", "cluster: missing");
    assert!(weft_api::Snapshot::from_yaml(&bad).is_err());
    let err = proxy.update(serde_yaml_snapshot(&bad));
    assert!(err.is_err(), "a dangling cluster must be refused");
    assert_eq!(
        get(addr, "svc", "/").await.header("x-upstream"),
        Some("a"),
        "old snapshot keeps serving"
    );

    let good = single_cluster(&endpoints(&[b.addr]), "").replace("version: \"test\"", "version: \"v2\"");
    proxy
        .update(weft_api::Snapshot::from_yaml(&good).expect("valid"))
        .expect("applies");
    assert_eq!(proxy.version(), "v2");
    assert_eq!(proxy.listener_addr("main"), Some(addr), "listener keeps its socket");
    for _ in 0..4 {
        assert_eq!(get(addr, "svc", "/").await.header("x-upstream"), Some("b"));
    }
}

/// Parses without validation, to hand the proxy a snapshot its own check must refuse.
fn serde_yaml_snapshot(yaml: &str) -> weft_api::Snapshot {
    serde_yaml::from_str(yaml).expect("parses")
}
