//! The jwt filter (Istio RequestAuthentication) through the real proxy: RS256 and ES256 tokens
//! verified against an inline JWKS or one fetched by callout (once, then cached), output
//! headers that clients cannot forge, token removal, Envoy's rejection replies, and requests
//! without a token passing through. Fixtures: `keys/` (see its README).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::*;

/// The test key set: RSA key `rsa-1` and P-256 key `ec-1`.
pub const JWKS: &str = include_str!("keys/jwks.json");
/// The issuer of the test tokens.
pub const ISSUER: &str = "https://issuer.weft.test";

/// A pre-signed test token (`keys/<name>.jwt`, expiring in 2100).
macro_rules! token {
    ($name:literal) => {
        include_str!(concat!("keys/", $name, ".jwt")).trim()
    };
}
pub(crate) use token;

/// `token` with one signature character changed.
pub fn tampered(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    let mut chars: Vec<char> = signature.chars().collect();
    chars[20] = if chars[20] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", chars.into_iter().collect::<String>())
}

/// A jwt rule for the test issuer with the inline test JWKS, plus `extra` fields.
pub fn inline_rule(extra: Value) -> Value {
    let mut rule = json!({ "issuer": ISSUER, "audiences": ["weft-api"], "jwks": JWKS });
    if let (Some(rule), Value::Object(extra)) = (rule.as_object_mut(), extra) {
        rule.extend(extra);
    }
    rule
}

/// The `jwt` filter entry with `rules`.
pub fn jwt_filter(rules: Value) -> String {
    wasm_filter("jwt", "jwt", &json!({ "rules": rules }).to_string(), "fail_closed")
}

/// A proxy running `filters` in front of an echo upstream, plus `extra_clusters`.
async fn proxy_with(filters: &str, extra_clusters: &str, workers: usize) -> (weft_proxy::Proxy, SocketAddr, Upstream) {
    let up = echo("up").await;
    let proxy = start_proxy(&with_filters(filters, &endpoints(&[up.addr]), extra_clusters), workers);
    let addr = proxy.listener_addr("main").expect("listener");
    (proxy, addr, up)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Lines `name: value` of the echo upstream's description.
fn header_lines<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    body.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

#[tokio::test]
async fn a_valid_rs256_token_is_verified_stripped_and_its_claims_forwarded() {
    let rules = json!([inline_rule(json!({
        "output_claim_to_headers": [
            {"header": "x-jwt-sub", "claim": "sub"},
            {"header": "x-jwt-level", "claim": "level"},
            {"header": "x-jwt-groups", "claim": "groups"}
        ],
        "output_payload_to_header": "x-jwt-payload"
    }))]);
    let (_proxy, addr, up) = proxy_with(&jwt_filter(rules), "", 1).await;
    let alice = token!("rs256_alice");
    let authorization = bearer(alice);
    let mut client = H1::connect(addr).await;
    let r = client
        .get(
            "svc",
            "/orders?x=1",
            &[
                ("authorization", &authorization),
                ("x-jwt-sub", "mallory"),
                ("x-jwt-groups", "admins"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        header_lines(&r.body, "x-jwt-sub"),
        ["alice"],
        "forged copy removed: {}",
        r.body
    );
    assert_eq!(header_lines(&r.body, "x-jwt-level"), ["3"]);
    assert!(
        header_lines(&r.body, "x-jwt-groups").is_empty(),
        "lists are not output: {}",
        r.body
    );
    let payload = alice.split('.').nth(1).expect("payload");
    assert_eq!(header_lines(&r.body, "x-jwt-payload"), [payload]);
    assert!(
        header_lines(&r.body, "authorization").is_empty(),
        "token stripped: {}",
        r.body
    );
    assert!(r.body.starts_with("up GET /orders?x=1 "), "{}", r.body);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn es256_tokens_verify_too() {
    let rules = json!([inline_rule(json!({
        "output_claim_to_headers": [{"header": "x-jwt-sub", "claim": "sub"}]
    }))]);
    let (_proxy, addr, _up) = proxy_with(&jwt_filter(rules), "", 1).await;
    let authorization = bearer(token!("es256_bob"));
    let r = H1::connect(addr)
        .await
        .get("svc", "/", &[("authorization", &authorization)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(header_lines(&r.body, "x-jwt-sub"), ["bob"]);
}

#[tokio::test]
async fn invalid_tokens_get_envoys_replies_and_never_reach_the_upstream() {
    let rules = json!([inline_rule(json!({}))]);
    let (proxy, addr, up) = proxy_with(&jwt_filter(rules), "", 1).await;
    let tampered = tampered(token!("rs256_alice"));
    let cases: [(&str, StatusCode, &str); 7] = [
        (&tampered, StatusCode::UNAUTHORIZED, "Jwt verification fails"),
        (
            token!("rs256_unknown_key"),
            StatusCode::UNAUTHORIZED,
            "Jwt verification fails",
        ),
        (token!("rs256_expired"), StatusCode::UNAUTHORIZED, "Jwt is expired"),
        (
            token!("rs256_not_yet_valid"),
            StatusCode::UNAUTHORIZED,
            "Jwt not yet valid",
        ),
        (
            token!("rs256_wrong_issuer"),
            StatusCode::UNAUTHORIZED,
            "Jwt issuer is not configured",
        ),
        (
            token!("rs256_wrong_audience"),
            StatusCode::FORBIDDEN,
            "Audiences in Jwt are not allowed",
        ),
        (
            "not-a-jwt",
            StatusCode::UNAUTHORIZED,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
    ];
    let mut client = H1::connect(addr).await;
    for (token, status, body) in cases {
        let authorization = bearer(token);
        let r = client
            .get("svc", "/api/items?page=2", &[("authorization", &authorization)])
            .await;
        assert_eq!(r.status, status, "{body}: {r:?}");
        assert_eq!(r.body, body);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"http://svc/api/items\", error=\"invalid_token\""),
            "{r:?}"
        );
    }
    // A bad token in the query parameter (a default location) is rejected too.
    let r = client.get("svc", &format!("/?access_token={tampered}"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A good token does not make up for a bad one: every token must verify.
    let authorization = bearer(token!("rs256_alice"));
    let path = format!("/?access_token={}", token!("rs256_expired"));
    let r = client.get("svc", &path, &[("authorization", &authorization)]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "Jwt is expired")
    );

    assert_eq!(up.hits(), 0);
    assert_eq!(metric(&proxy, "jwt_denied_total{filter=\"jwt\"}").await, Some(9.0));
}

#[tokio::test]
async fn requests_without_a_token_pass_unchanged_but_cannot_forge_outputs() {
    let rules = json!([inline_rule(json!({
        "output_claim_to_headers": [{"header": "x-jwt-sub", "claim": "sub"}],
        "output_payload_to_header": "x-jwt-payload"
    }))]);
    let (_proxy, addr, up) = proxy_with(&jwt_filter(rules), "", 1).await;
    let r = H1::connect(addr)
        .await
        .get(
            "svc",
            "/open",
            &[
                ("x-jwt-sub", "admin"),
                ("x-jwt-payload", "e30"),
                ("authorization", "Basic dXNlcjpwdw=="),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(header_lines(&r.body, "x-jwt-sub").is_empty(), "{}", r.body);
    assert!(header_lines(&r.body, "x-jwt-payload").is_empty(), "{}", r.body);
    assert_eq!(
        header_lines(&r.body, "authorization"),
        ["Basic dXNlcjpwdw=="],
        "not a bearer token: left alone"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn tokens_come_from_configured_headers_and_params_and_may_be_forwarded() {
    let rules = json!([inline_rule(json!({
        "from_headers": [{"name": "x-token"}],
        "from_params": ["jwt"],
        "forward_original_token": false,
        "output_claim_to_headers": [{"header": "x-jwt-sub", "claim": "sub"}]
    }))]);
    let (_proxy, addr, _up) = proxy_with(&jwt_filter(rules), "", 1).await;
    let mut client = H1::connect(addr).await;
    let alice = token!("rs256_alice");

    let r = client.get("svc", &format!("/q?a=1&jwt={alice}&b=2"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(
        r.body.starts_with("up GET /q?a=1&b=2 "),
        "parameter removed: {}",
        r.body
    );
    assert_eq!(header_lines(&r.body, "x-jwt-sub"), ["alice"]);

    let r = client.get("svc", "/h", &[("x-token", alice)]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(header_lines(&r.body, "x-token").is_empty(), "{}", r.body);

    // `Authorization: Bearer` is not a location of this rule any more: ignored.
    let authorization = bearer(&tampered(alice));
    let r = client.get("svc", "/h", &[("authorization", &authorization)]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    let forwarding = json!([inline_rule(json!({"forward_original_token": true}))]);
    let (_proxy, addr, _up) = proxy_with(&jwt_filter(forwarding), "", 1).await;
    let authorization = bearer(alice);
    let r = H1::connect(addr)
        .await
        .get("svc", "/", &[("authorization", &authorization)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(header_lines(&r.body, "authorization"), [authorization.as_str()]);
}

/// An upstream serving the test JWKS at `/keys`.
async fn jwks_server() -> Upstream {
    upstream(|request: Request<hyper::body::Incoming>| async move {
        if request.uri().path() != "/keys" {
            return Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(JWKS.as_bytes())))
            .expect("response")
    })
    .await
}

fn cluster(name: &str, addr: SocketAddr) -> String {
    format!("  - {{ name: {name}, endpoints: [{{ address: \"{addr}\" }}] }}\n")
}

fn fetching_rule(extra: Value) -> Value {
    let mut rule = json!({
        "issuer": ISSUER,
        "jwks_cluster": "jwks",
        "jwks_path": "/keys",
        "output_claim_to_headers": [{"header": "x-jwt-sub", "claim": "sub"}]
    });
    if let (Some(rule), Value::Object(extra)) = (rule.as_object_mut(), extra) {
        rule.extend(extra);
    }
    rule
}

#[tokio::test]
async fn the_jwks_is_fetched_by_callout_once_and_shared_by_every_worker() {
    let keys = jwks_server().await;
    let rules = json!([fetching_rule(json!({}))]);
    let (proxy, addr, up) = proxy_with(&jwt_filter(rules), &cluster("jwks", keys.addr), 2).await;
    assert_eq!(keys.hits(), 0, "nothing is fetched before a token needs it");
    let tokens = [token!("rs256_alice"), token!("es256_bob")];
    for i in 0..6 {
        let token = tokens[i % 2];
        // A new connection each time: both workers serve some of them.
        let authorization = bearer(token);
        let r = H1::connect(addr)
            .await
            .get("svc", "/", &[("authorization", &authorization)])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(
            header_lines(&r.body, "x-jwt-sub"),
            [if i % 2 == 0 { "alice" } else { "bob" }]
        );
    }
    let authorization = bearer(&tampered(tokens[0]));
    let r = get_with(addr, &[("authorization", &authorization)]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::UNAUTHORIZED, "Jwt verification fails")
    );
    // No token: no fetch either.
    assert_eq!(get(addr, "svc", "/").await.status, StatusCode::OK);

    assert_eq!(keys.hits(), 1, "one fetch for every request");
    assert_eq!(up.hits(), 7);
    assert_eq!(
        metric(&proxy, "jwt_jwks_fetches_total{filter=\"jwt\"}").await,
        Some(1.0)
    );
    assert_eq!(metric(&proxy, "jwt_allowed_total{filter=\"jwt\"}").await, Some(6.0));
}

async fn get_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    H1::connect(addr).await.get("svc", "/", headers).await
}

#[tokio::test]
async fn an_expired_jwks_is_fetched_again_and_kept_when_the_refresh_fails() {
    let keys = jwks_server().await;
    // 0 ms: expired as soon as stored; each request still uses the key set it fetched.
    let rules = json!([fetching_rule(json!({"jwks_cache_ms": 0, "jwks_timeout_ms": 500}))]);
    let (_proxy, addr, _up) = proxy_with(&jwt_filter(rules), &cluster("jwks", keys.addr), 1).await;
    let authorization = bearer(token!("rs256_alice"));
    let headers = [("authorization", authorization.as_str())];
    assert_eq!(get_with(addr, &headers).await.status, StatusCode::OK);
    assert_eq!(
        keys.hits(),
        1,
        "one fetch per request, even for a key set that expired at once"
    );
    assert_eq!(get_with(addr, &headers).await.status, StatusCode::OK);
    assert_eq!(keys.hits(), 2, "expired: fetched again");

    keys.stop();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = get_with(addr, &headers).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the stale key set is used when a refresh fails: {r:?}"
    );
}

#[tokio::test]
async fn a_failed_jwks_fetch_rejects_tokens_but_not_anonymous_requests() {
    // A port with nothing listening, and a server without the path.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let keys = jwks_server().await;
    for (addr, path) in [(dead, "/keys"), (keys.addr, "/nope")] {
        let rules = json!([fetching_rule(json!({"jwks_path": path, "jwks_timeout_ms": 500}))]);
        let (_proxy, listener, up) = proxy_with(&jwt_filter(rules), &cluster("jwks", addr), 1).await;
        let authorization = bearer(token!("rs256_alice"));
        let r = get_with(listener, &[("authorization", &authorization)]).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::UNAUTHORIZED, "Jwks remote fetch is failed"),
            "{path}"
        );
        assert_eq!(get(listener, "svc", "/").await.status, StatusCode::OK);
        assert_eq!(up.hits(), 1);
    }
    assert_eq!(keys.hits(), 1, "the 404 was not cached: one request, one fetch");
}
