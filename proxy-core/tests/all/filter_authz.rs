//! The authz filter (Istio AuthorizationPolicy) through the real proxy: DENY by path (on the
//! normalized path), ALLOW-only policies, "allow-nothing", header conditions, IP blocks, JWT
//! claims and request principals with the jwt filter in front, AUDIT, metrics, and refused
//! configurations. Principals and namespaces need mTLS, which the proxy does not offer yet:
//! they are covered by the filter's unit tests.

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::{Value, json};

use crate::filter_jwt::{ISSUER, inline_rule, jwt_filter, tampered, token};
use crate::support::*;

/// The `authz` filter entry with `policies`.
fn authz_filter(policies: Value) -> String {
    wasm_filter(
        "authz",
        "authz",
        &json!({ "policies": policies }).to_string(),
        "fail_closed",
    )
}

/// A proxy running `filters` in front of an echo upstream.
async fn proxy_with(filters: &str) -> (weft_proxy::Proxy, SocketAddr, Upstream) {
    let up = echo("up").await;
    let proxy = start_proxy(&with_filters(filters, &endpoints(&[up.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    (proxy, addr, up)
}

fn assert_denied(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.body, "RBAC: access denied");
}

#[tokio::test]
async fn deny_policies_match_normalized_paths() {
    let policies = json!([{
        "name": "no-admin",
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/admin*"], "methods": ["GET", "POST"]}}]}]
    }]);
    let (proxy, addr, up) = proxy_with(&authz_filter(policies)).await;
    let mut client = H1::connect(addr).await;
    assert_denied(&client.get("svc", "/admin/users", &[]).await);
    assert_denied(&client.get("svc", "/public/../admin", &[]).await);
    assert_denied(&client.get("svc", "/%61dmin", &[]).await);
    assert_eq!(
        client.get("svc", "/public?next=/admin", &[]).await.status,
        StatusCode::OK
    );
    let delete = http::Request::delete("/admin")
        .header("host", "svc")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(
        client.send(delete).await.status,
        StatusCode::OK,
        "only GET and POST are denied"
    );
    assert_eq!(up.hits(), 2);
    assert_eq!(metric(&proxy, "authz_denied_total{filter=\"authz\"}").await, Some(3.0));
    assert_eq!(metric(&proxy, "authz_allowed_total{filter=\"authz\"}").await, Some(2.0));
}

#[tokio::test]
async fn allow_policies_deny_whatever_they_do_not_match() {
    let policies = json!([
        {"name": "reads", "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/public/{**}", "/health"]}}]}]},
        {"name": "watch", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/health"]}}]}]}
    ]);
    let (proxy, addr, up) = proxy_with(&authz_filter(policies)).await;
    let mut client = H1::connect(addr).await;
    assert_eq!(client.get("svc", "/public/a/b", &[]).await.status, StatusCode::OK);
    assert_eq!(client.get("svc", "/health", &[]).await.status, StatusCode::OK);
    assert_denied(&client.get("svc", "/private", &[]).await);
    assert_denied(&client.get("svc", "/public", &[]).await);
    assert_eq!(up.hits(), 2);
    assert_eq!(metric(&proxy, "authz_audited_total{filter=\"authz\"}").await, Some(1.0));

    // "allow-nothing": an ALLOW policy without rules.
    let (_proxy, addr, up) = proxy_with(&authz_filter(json!([{"name": "allow-nothing"}]))).await;
    assert_denied(&get(addr, "svc", "/").await);
    assert_eq!(up.hits(), 0);
    // ... while a rule that sets nothing matches everything.
    let (_proxy, addr, _up) = proxy_with(&authz_filter(json!([{"rules": [{}]}]))).await;
    assert_eq!(get(addr, "svc", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn header_conditions() {
    let policies = json!([{
        "rules": [{"when": [
            {"key": "request.headers[x-api-key]", "values": ["team-*"]},
            {"key": "request.headers[x-env]", "not_values": ["prod"]}
        ]}]
    }]);
    let (_proxy, addr, _up) = proxy_with(&authz_filter(policies)).await;
    let mut client = H1::connect(addr).await;
    let ok = client.get("svc", "/", &[("x-api-key", "team-blue")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_denied(&client.get("svc", "/", &[("x-api-key", "guest")]).await);
    assert_denied(&client.get("svc", "/", &[]).await);
    assert_denied(
        &client
            .get("svc", "/", &[("x-api-key", "team-blue"), ("x-env", "prod")])
            .await,
    );
}

#[tokio::test]
async fn ip_blocks_match_the_peer_address() {
    let from = |blocks: &[&str]| json!([{"rules": [{"from": [{"source": {"ip_blocks": blocks}}]}]}]);
    let (_proxy, addr, _up) = proxy_with(&authz_filter(from(&["127.0.0.0/8"]))).await;
    assert_eq!(get(addr, "svc", "/").await.status, StatusCode::OK);
    let (_proxy, addr, _up) = proxy_with(&authz_filter(from(&["10.0.0.0/8"]))).await;
    assert_denied(&get(addr, "svc", "/").await);

    let policies = json!([
        {"action": "DENY", "rules": [{"from": [{"source": {"not_ip_blocks": ["10.0.0.0/8"]}}],
                                      "to": [{"operation": {"paths": ["/internal*"]}}]}]},
        {"action": "ALLOW", "rules": [{"when": [{"key": "destination.port", "not_values": ["1"]},
                                                {"key": "source.ip", "values": ["127.0.0.1"]}]}]}
    ]);
    let (_proxy, addr, _up) = proxy_with(&authz_filter(policies)).await;
    assert_denied(&get(addr, "svc", "/internal/x").await);
    assert_eq!(get(addr, "svc", "/x").await.status, StatusCode::OK);
}

#[tokio::test]
async fn jwt_claims_and_request_principals_drive_policies_behind_the_jwt_filter() {
    let policies = json!([
        {"name": "admins", "rules": [{
            "from": [{"source": {"request_principals": [format!("{ISSUER}/*")]}}],
            "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}]
        }]},
        {"name": "bob-reads", "rules": [{
            "from": [{"source": {"request_principals": [format!("{ISSUER}/bob")]}}],
            "to": [{"operation": {"methods": ["GET"], "paths": ["/reports*"]}}],
            "when": [{"key": "request.auth.audiences", "values": ["weft-api"]}]
        }]},
        {"name": "no-mallory", "action": "DENY", "rules": [{
            "when": [{"key": "request.auth.claims[email]", "values": ["*@evil.test"]}]
        }]}
    ]);
    // jwt first: it verifies and records the claims, authz reads them.
    let filters = format!(
        "{}{}",
        jwt_filter(json!([inline_rule(json!({}))])),
        authz_filter(policies)
    );
    let (_proxy, addr, up) = proxy_with(&filters).await;
    let mut client = H1::connect(addr).await;
    let alice = format!("Bearer {}", token!("rs256_alice"));
    let bob = format!("Bearer {}", token!("es256_bob"));

    assert_eq!(
        client
            .get("svc", "/anything", &[("authorization", &alice)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        client
            .get("svc", "/reports/q3", &[("authorization", &bob)])
            .await
            .status,
        StatusCode::OK
    );
    assert_denied(&client.get("svc", "/anything", &[("authorization", &bob)]).await);
    // Without a token the jwt filter lets the request through and authz denies it.
    assert_denied(&client.get("svc", "/reports/q3", &[]).await);
    // A bad token never reaches authz.
    let forged = format!("Bearer {}", tampered(token!("rs256_alice")));
    let r = client.get("svc", "/anything", &[("authorization", &forged)]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "Jwt verification fails")
    );
    assert_eq!(up.hits(), 2);

    // Without the jwt filter nobody can claim an identity: the properties are not headers.
    let policies = json!([{"rules": [{"from": [{"source": {"request_principals": ["*"]}}]}]}]);
    let (_proxy, addr, _up) = proxy_with(&authz_filter(policies)).await;
    assert_denied(
        &H1::connect(addr)
            .await
            .get("svc", "/", &[("authorization", &alice)])
            .await,
    );
}

#[tokio::test]
async fn bad_policies_refuse_the_snapshot() {
    let up = echo("up").await;
    for (policies, reason) in [
        (json!([{"action": "CUSTOM"}]), "CUSTOM"),
        (
            json!([{"rules": [{"when": [{"key": "source.ip", "values": ["not-an-ip"]}]}]}]),
            "IP block",
        ),
        (json!([{"rules": [{"from": [{"source": {}}]}]}]), "from.source"),
    ] {
        let yaml = with_filters(&authz_filter(policies), &endpoints(&[up.addr]), "");
        let snapshot = weft_api::Snapshot::from_yaml(&yaml).expect("valid yaml");
        let config = weft_proxy::ProxyConfig {
            workers: 1,
            wasm: crate::support::test_wasm(),
            ..Default::default()
        };
        let err = weft_proxy::Proxy::start(config, snapshot)
            .err()
            .unwrap_or_else(|| panic!("{reason}: must be refused"));
        assert!(format!("{err:?}").contains(reason), "{reason}: {err:?}");
    }
}
