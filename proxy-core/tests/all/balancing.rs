//! Each load-balancing policy's distribution through the real proxy.

use std::collections::BTreeMap;

use crate::support::*;

async fn three_upstreams() -> (Upstream, Upstream, Upstream) {
    (echo("e1").await, echo("e2").await, echo("e3").await)
}

fn weighted(addrs: &[(std::net::SocketAddr, u32)]) -> String {
    let mut out = String::from("    endpoints:\n");
    for (addr, weight) in addrs {
        out.push_str(&format!("      - {{ address: \"{addr}\", weight: {weight} }}\n"));
    }
    out
}

#[tokio::test]
async fn round_robin_is_exact_and_weighted() {
    let (a, b, c) = three_upstreams().await;
    let cluster = format!(
        "    lb_policy: round_robin\n{}",
        weighted(&[(a.addr, 1), (b.addr, 2), (c.addr, 3)])
    );
    let proxy = start_proxy(&single_cluster(&cluster, ""), 1);
    let counts = spread(proxy.listener_addr("main").expect("listener"), 600, |_| vec![]).await;
    assert_eq!(
        counts,
        BTreeMap::from([("e1".into(), 100), ("e2".into(), 200), ("e3".into(), 300)])
    );
}

#[tokio::test]
async fn random_follows_weights() {
    let (a, b, _) = three_upstreams().await;
    let cluster = format!("    lb_policy: random\n{}", weighted(&[(a.addr, 1), (b.addr, 3)]));
    let proxy = start_proxy(&single_cluster(&cluster, ""), 1);
    let counts = spread(proxy.listener_addr("main").expect("listener"), 2000, |_| vec![]).await;
    let share = counts["e2"] as f64 / 2000.0;
    assert!(
        (0.70..=0.80).contains(&share),
        "weight-3 endpoint share {share}: {counts:?}"
    );
}

#[tokio::test]
async fn least_request_avoids_the_slow_endpoint() {
    let fast = echo("fast").await;
    let slow = upstream(|request| async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        describe("slow", request).await
    })
    .await;
    let cluster = format!("    lb_policy: least_request\n{}", endpoints(&[fast.addr, slow.addr]));
    let proxy = start_proxy(&single_cluster(&cluster, ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    // 20 concurrent clients: requests pile up on the slow endpoint, so P2C steers away.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        tasks.spawn(async move { spread(addr, 20, |_| vec![]).await });
    }
    let mut total = BTreeMap::<String, usize>::new();
    while let Some(counts) = tasks.join_next().await {
        for (k, v) in counts.expect("client task") {
            *total.entry(k).or_default() += v;
        }
    }
    let slow_share = total.get("slow").copied().unwrap_or(0) as f64 / 400.0;
    assert!(
        slow_share < 0.25,
        "slow endpoint got {slow_share} of requests: {total:?}"
    );
    assert!(slow_share > 0.0, "slow endpoint must still get some traffic: {total:?}");
}

#[tokio::test]
async fn ring_hash_keeps_each_key_on_one_endpoint() {
    let (a, b, c) = three_upstreams().await;
    let cluster = format!(
        "    lb_policy: ring_hash\n    hash_on: {{ header: x-user }}\n{}",
        endpoints(&[a.addr, b.addr, c.addr])
    );
    let proxy = start_proxy(&single_cluster(&cluster, ""), 2);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut owner = BTreeMap::new();
    for round in 0..3 {
        for user in 0..40 {
            let mut client = H1::connect(addr).await; // new connections may land on either worker
            let name = format!("user-{user}");
            let r = client.get("svc", "/", &[("x-user", name.as_str())]).await;
            let got = r.header("x-upstream").expect("upstream").to_owned();
            let first = owner.entry(user).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "user {user} moved in round {round}");
        }
    }
    let used: std::collections::BTreeSet<_> = owner.values().collect();
    assert_eq!(used.len(), 3, "40 keys should spread over all 3 endpoints: {owner:?}");
}

#[tokio::test]
async fn ring_hash_by_cookie_and_source_ip() {
    let (a, b, c) = three_upstreams().await;
    let by_cookie = format!(
        "    lb_policy: ring_hash\n    hash_on: {{ cookie: session }}\n{}",
        endpoints(&[a.addr, b.addr, c.addr])
    );
    let proxy = start_proxy(&single_cluster(&by_cookie, ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let counts = spread(addr, 30, |_| {
        vec![("cookie".into(), "theme=dark; session=abc123".into())]
    })
    .await;
    assert_eq!(counts.len(), 1, "one cookie value, one endpoint: {counts:?}");

    let by_ip = format!(
        "    lb_policy: ring_hash\n    hash_on: {{ source_ip: true }}\n{}",
        endpoints(&[a.addr, b.addr, c.addr])
    );
    let proxy = start_proxy(&single_cluster(&by_ip, ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let counts = spread(addr, 30, |i| vec![("x-noise".into(), i.to_string())]).await;
    assert_eq!(counts.len(), 1, "one source ip, one endpoint: {counts:?}");
}

#[tokio::test]
async fn subsets_pick_endpoints_by_label() {
    let (a, b, c) = three_upstreams().await;
    let yaml = format!(
        r#"
listeners:
  - {{ name: main, address: "127.0.0.1:0", route_table: rt }}
route_tables:
  - name: rt
    virtual_hosts:
      - name: reviews
        domains: ["*"]
        routes:
          - match: {{ headers: [{{ name: end-user, exact: jason }}] }}
            forward: {{ cluster: reviews, subset: {{ version: v2 }} }}
          - forward: {{ cluster: reviews, subset: {{ version: v1 }} }}
clusters:
  - name: reviews
    endpoints:
      - {{ address: "{}", labels: {{ version: v1 }} }}
      - {{ address: "{}", labels: {{ version: v2 }} }}
      - {{ address: "{}", labels: {{ version: v2 }} }}
"#,
        a.addr, b.addr, c.addr
    );
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let anonymous = spread(addr, 20, |_| vec![]).await;
    assert_eq!(anonymous, BTreeMap::from([("e1".into(), 20)]));
    let jason = spread(addr, 20, |_| vec![("end-user".into(), "jason".into())]).await;
    assert_eq!(jason, BTreeMap::from([("e2".into(), 10), ("e3".into(), 10)]));
}
