//! The router filter (`filters/router`) through the real proxy: Istio `VirtualService` HTTP
//! routing on `weft.set_upstream` and local replies. The snapshot's own route sends
//! everything to cluster `c` (an echo named `default`); the filter picks `reviews` subsets
//! (Bookinfo's v1/v2/v3), `ratings` or `slow`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use weft_api::Snapshot;
use weft_proxy::{Proxy, ProxyConfig};

use crate::support::*;

/// The upstreams: `default` (the core route's cluster `c`), `v1`/`v2`/`v3` (cluster `reviews`,
/// labelled `version`), `ratings`, and `slow` (answers after 2 s).
struct Bookinfo {
    default: Upstream,
    v1: Upstream,
    v2: Upstream,
    v3: Upstream,
    ratings: Upstream,
    slow: Upstream,
}

impl Bookinfo {
    async fn start() -> Self {
        let slow = upstream(|_request: Request<hyper::body::Incoming>| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::builder()
                .header("x-upstream", "slow")
                .body(Full::new(Bytes::from_static(b"late\n")))
                .expect("response")
        })
        .await;
        Self {
            default: echo("default").await,
            v1: echo("v1").await,
            v2: echo("v2").await,
            v3: echo("v3").await,
            ratings: echo("ratings").await,
            slow,
        }
    }

    /// A snapshot running the router with `config` in front of these upstreams.
    fn snapshot(&self, config: &Value) -> String {
        let filters = wasm_filter("router", "router", &config.to_string(), "fail_closed");
        let extra = format!(
            "  - name: reviews\n    endpoints:\n      - {{ address: \"{}\", labels: {{ version: v1 }} }}\n      - {{ address: \"{}\", labels: {{ version: v2 }} }}\n      - {{ address: \"{}\", labels: {{ version: v3 }} }}\n  - {{ name: ratings, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: slow, endpoints: [{{ address: \"{}\" }}] }}\n",
            self.v1.addr, self.v2.addr, self.v3.addr, self.ratings.addr, self.slow.addr
        );
        with_filters(&filters, &endpoints(&[self.default.addr]), &extra)
    }

    fn proxy(&self, config: &Value) -> Proxy {
        start_proxy(&self.snapshot(config), 1)
    }
}

fn to(cluster: &str, version: Option<&str>, weight: u32) -> Value {
    match version {
        Some(v) => json!({"destination": {"cluster": cluster, "subset": {"version": v}}, "weight": weight}),
        None => json!({"destination": {"cluster": cluster}, "weight": weight}),
    }
}

/// Bookinfo's `reviews` VirtualService and a few more routes on hosts `reviews` and `svc`.
fn bookinfo_config() -> Value {
    json!({"virtual_hosts": [
        {"name": "reviews", "hosts": ["reviews", "reviews.default.svc.cluster.local"], "routes": [
            {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [to("reviews", Some("v2"), 0)]},
            {"name": "api", "match": [{"uri": {"regex": "/api/v[0-9]+/.*"}}],
             "route": [to("reviews", Some("v3"), 0)]},
            {"name": "by-query", "match": [{"uri": {"exact": "/pick"}, "query_params": {"version": {"exact": "v2"}}}],
             "route": [to("reviews", Some("v2"), 0)]},
            {"name": "ratings", "match": [{"uri": {"prefix": "/ratings"}}],
             "rewrite": {"uri": "/v1/bookRatings"},
             "route": [to("ratings", None, 0)]},
            {"name": "service", "match": [{"uri": {"prefix": "/SERVICE/"}, "ignore_uri_case": true}],
             "rewrite": {"uri_regex_rewrite": {"match": "^/service/([^/]+)(/.*)$", "rewrite": "\\2/instance/\\1"}},
             "route": [to("ratings", None, 0)]},
            {"name": "host", "match": [{"uri": {"prefix": "/rehost"}}],
             "rewrite": {"authority": "ratings.prod:9080"},
             "headers": {"request": {"set": {"x-routed-by": "router"}, "remove": ["x-drop-me"]},
                         "response": {"add": {"x-route": "host"}}},
             "route": [to("ratings", None, 0)]},
            {"name": "moved", "match": [{"uri": {"exact": "/v1/getProductRatings"}}],
             "redirect": {"uri": "/v1/bookRatings", "authority": "newratings.default.svc.cluster.local"}},
            {"name": "down", "match": [{"uri": {"prefix": "/maintenance"}}],
             "direct_response": {"status": 503, "body": "under maintenance\n"}},
            {"name": "slow", "match": [{"uri": {"prefix": "/slow"}}],
             "timeout_ms": 200, "route": [to("slow", None, 0)]},
            {"name": "catalog", "match": [{"uri": {"prefix": "/reviews"}}, {"uri": {"exact": "/"}}],
             "route": [to("reviews", Some("v1"), 0)]}
        ]},
        {"name": "svc", "hosts": ["svc"], "routes": [
            {"name": "80-20", "match": [{"headers": {"x-split": {"exact": "80-20"}}}],
             "route": [to("reviews", Some("v1"), 80), to("reviews", Some("v3"), 20)]},
            {"name": "50-50", "route": [to("reviews", Some("v1"), 50), to("reviews", Some("v3"), 50)]}
        ]}
    ]})
}

fn within(count: usize, expected: usize, slack: usize) -> bool {
    count + slack >= expected && count <= expected + slack
}

#[tokio::test]
async fn end_user_jason_goes_to_v2_and_everyone_else_to_v1() {
    let bookinfo = Bookinfo::start().await;
    let proxy = bookinfo.proxy(&bookinfo_config());
    let mut client = H1::connect(proxy.listener_addr("main").expect("listener")).await;
    for i in 0..20 {
        let r = client.get("reviews:9080", "/reviews/1", &[("end-user", "jason")]).await;
        assert_eq!(r.header("x-upstream"), Some("v2"), "request {i}: {r:?}");
        let r = client
            .get("reviews.default.svc.cluster.local", "/", &[("end-user", "mike")])
            .await;
        assert_eq!(r.header("x-upstream"), Some("v1"), "request {i}: {r:?}");
        let r = client.get("Reviews", "/reviews/1", &[]).await;
        assert_eq!(r.header("x-upstream"), Some("v1"), "request {i}: {r:?}");
    }
    assert_eq!(bookinfo.v2.hits(), 20);
    assert_eq!(bookinfo.v1.hits(), 40);
    assert_eq!(bookinfo.v3.hits() + bookinfo.default.hits(), 0);
}

#[tokio::test]
async fn weighted_destinations_split_50_50_and_80_20() {
    let bookinfo = Bookinfo::start().await;
    let proxy = bookinfo.proxy(&bookinfo_config());
    let addr = proxy.listener_addr("main").expect("listener");

    let counts = spread(addr, 1000, |_| Vec::new()).await;
    let (v1, v3) = (
        counts.get("v1").copied().unwrap_or(0),
        counts.get("v3").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v3, 1000, "{counts:?}");
    assert!(
        within(v1, 500, 50) && within(v3, 500, 50),
        "50/50 within ±5%: {counts:?}"
    );

    let counts = spread(addr, 1000, |_| vec![("x-split".to_owned(), "80-20".to_owned())]).await;
    let (v1, v3) = (
        counts.get("v1").copied().unwrap_or(0),
        counts.get("v3").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v3, 1000, "{counts:?}");
    assert!(
        within(v1, 800, 50) && within(v3, 200, 50),
        "80/20 within ±5%: {counts:?}"
    );
    assert_eq!(bookinfo.v2.hits() + bookinfo.default.hits(), 0);
}

#[tokio::test]
async fn uri_rewrites_replace_the_prefix_or_regex_matches_and_keep_the_query() {
    let bookinfo = Bookinfo::start().await;
    let proxy = bookinfo.proxy(&bookinfo_config());
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "reviews", "/ratings/7?stars=5").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("ratings"));
    let first = r.body.lines().next().unwrap_or_default();
    assert!(first.starts_with("ratings GET /v1/bookRatings/7?stars=5 "), "{first}");

    let r = get(addr, "reviews", "/service/books/v1/list?page=2").await;
    assert_eq!(r.header("x-upstream"), Some("ratings"), "{r:?}");
    let first = r.body.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("ratings GET /v1/list/instance/books?page=2 "),
        "a regex rewrite: {first}"
    );
}

#[tokio::test]
async fn the_authority_is_rewritten_and_header_operations_apply() {
    let bookinfo = Bookinfo::start().await;
    let proxy = bookinfo.proxy(&bookinfo_config());
    let addr = proxy.listener_addr("main").expect("listener");
    let r = H1::connect(addr)
        .await
        .get("reviews", "/rehost/x", &[("x-drop-me", "1"), ("x-routed-by", "client")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("ratings"));
    let first = r.body.lines().next().unwrap_or_default();
    assert!(
        first.ends_with(" ratings.prod:9080"),
        "the upstream saw the new host: {first}"
    );
    assert!(r.body.contains("x-routed-by: router\n"), "{}", r.body);
    assert!(!r.body.contains("client"), "set replaces: {}", r.body);
    assert!(!r.body.contains("x-drop-me"), "{}", r.body);
    assert_eq!(r.header("x-route"), Some("host"), "response header added");
}

#[tokio::test]
async fn redirects_and_direct_responses_are_answered_by_the_filter() {
    let bookinfo = Bookinfo::start().await;
    let proxy = bookinfo.proxy(&bookinfo_config());
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "reviews:9080", "/v1/getProductRatings?id=3").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("http://newratings.default.svc.cluster.local/v1/bookRatings?id=3")
    );
    assert_eq!(r.body, "");

    let r = get(addr, "reviews", "/maintenance/now").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.body, "under maintenance\n");
    let upstream_hits = [
        &bookinfo.default,
        &bookinfo.v1,
        &bookinfo.v2,
        &bookinfo.v3,
        &bookinfo.ratings,
    ]
    .iter()
    .map(|u| u.hits())
    .sum::<usize>();
    assert_eq!(upstream_hits, 0, "nothing was forwarded");
}

#[tokio::test]
async fn regex_and_query_parameter_matches() {
    let bookinfo = Bookinfo::start().await;
    let proxy = bookinfo.proxy(&bookinfo_config());
    let mut client = H1::connect(proxy.listener_addr("main").expect("listener")).await;
    let r = client.get("reviews", "/api/v2/books", &[]).await;
    assert_eq!(r.header("x-upstream"), Some("v3"), "{r:?}");
    let r = client.get("reviews", "/api/vX/books", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "the regex must match: {r:?}");
    let r = client.get("reviews", "/pick?a=1&version=v2", &[]).await;
    assert_eq!(r.header("x-upstream"), Some("v2"), "{r:?}");
    let r = client.get("reviews", "/pick?version=v1", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
}

#[tokio::test]
async fn a_route_timeout_gives_504_against_a_slow_upstream() {
    let bookinfo = Bookinfo::start().await;
    let proxy = bookinfo.proxy(&bookinfo_config());
    let started = Instant::now();
    let r = get(proxy.listener_addr("main").expect("listener"), "reviews", "/slow").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(bookinfo.slow.hits(), 1);
}

#[tokio::test]
async fn unmatched_routes_get_404_and_unknown_hosts_the_core_route() {
    let bookinfo = Bookinfo::start().await;
    let proxy = bookinfo.proxy(&bookinfo_config());
    let addr = proxy.listener_addr("main").expect("listener");
    let r = get(addr, "reviews", "/nothing/here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    assert_eq!(r.body, "route not found\n");
    assert_eq!(r.reason(), Some("no_route"));
    let r = get(addr, "productpage:9080", "/nothing/here").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("default"), "the core route decides");
}

#[tokio::test]
async fn source_labels_match_the_local_workload() {
    let bookinfo = Bookinfo::start().await;
    let config = json!({"virtual_hosts": [{"hosts": ["reviews"], "routes": [
        {"match": [{"source_labels": {"app": "productpage"}}], "route": [to("reviews", Some("v2"), 0)]},
        {"route": [to("reviews", Some("v1"), 0)]}
    ]}]});
    let snapshot = Snapshot::from_yaml(&bookinfo.snapshot(&config)).expect("valid snapshot");
    for (app, expected) in [("productpage", "v2"), ("details", "v1")] {
        let proxy = Proxy::start(
            ProxyConfig {
                workers: 1,
                node_labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
                wasm: crate::support::test_wasm(),
                ..ProxyConfig::default()
            },
            snapshot.clone(),
        )
        .expect("proxy starts");
        let r = get(proxy.listener_addr("main").expect("listener"), "reviews", "/").await;
        assert_eq!(r.header("x-upstream"), Some(expected), "workload app={app}: {r:?}");
    }
}

#[tokio::test]
async fn a_bad_configuration_refuses_the_snapshot_with_the_reason() {
    let bookinfo = Bookinfo::start().await;
    let config = json!({"virtual_hosts": [{"hosts": ["reviews"], "routes": [
        {"match": [{"uri": {"regex": "/api/(v1"}}], "route": [to("reviews", None, 0)]}
    ]}]});
    let snapshot = Snapshot::from_yaml(&bookinfo.snapshot(&config)).expect("valid snapshot");
    let err = match Proxy::start(
        ProxyConfig {
            workers: 1,
            wasm: crate::support::test_wasm(),
            ..ProxyConfig::default()
        },
        snapshot,
    ) {
        Ok(_) => panic!("an invalid regex must refuse the snapshot"),
        Err(err) => format!("{err:?}"),
    };
    assert!(err.contains("invalid regex"), "{err}");
}
