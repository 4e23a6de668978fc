//! Tests of filters from `filters/testdata`, run in-process on the real proxy-wasm host.

use std::path::{Path, PathBuf};

use weft_filter_test::{CalloutReply, Error, FilterTest, Level, Request, Response, WasmBuild};

/// Builds a filter crate of this repository for wasm32-wasip1 (a no-op when up to date).
fn build(package: &str) -> Result<PathBuf, Error> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    WasmBuild::new(repo.join("filters"))
        .package(package)
        .target_dir(repo.join("target/filters"))
        .build()
}

#[test]
fn edits_headers_both_ways() -> Result<(), Error> {
    let test = FilterTest::wasm(build("test_headers")?)
        .config(serde_json::json!({"name": "demo"}))
        .build()?;

    let outcome = test.run(
        Request::get("/items").header("x-remove-me", "1"),
        Response::status(200).header("x-upstream-secret", "s3cr3t").body("[]"),
    );

    // What the upstream got.
    assert!(outcome.forwarded);
    assert_eq!(outcome.request.header("x-wasm-request"), Some("demo"));
    assert_eq!(outcome.request.header("x-remove-me"), None);
    // What the client got.
    assert_eq!(outcome.response.status, 200);
    assert_eq!(outcome.response.header("x-wasm-response"), Some("demo"));
    assert_eq!(outcome.response.header("x-upstream-secret"), None);
    assert_eq!(outcome.response.body, "[]");
    Ok(())
}

#[test]
fn asks_an_authorizer() -> Result<(), Error> {
    let test = FilterTest::wasm(build("test_callout")?)
        .config(r#"{"cluster": "authz"}"#)
        .build()?;
    // Callouts to cluster `authz` get these answers (other clusters do not exist).
    test.on_callout("authz", |callout| match callout.header("x-user") {
        Some("ann") => CalloutReply::ok("ann"),
        _ => CalloutReply::new(403),
    });

    let allowed = test.run(Request::get("/").header("x-user", "ann"), Response::ok());
    assert_eq!(allowed.request.header("x-authz"), Some("ann"));
    assert_eq!(allowed.callouts[0].path(), Some("/check"));

    let denied = test.run(Request::get("/").header("x-user", "bob"), Response::ok());
    assert!(!denied.forwarded);
    assert_eq!(denied.local_reply.map(|reply| reply.status.as_u16()), Some(403));
    assert_eq!(denied.response.body_text(), "callout denied\n");
    Ok(())
}

#[test]
fn counts_and_logs() -> Result<(), Error> {
    let counter = FilterTest::wasm(build("test_counter")?).build()?;
    counter.run(Request::get("/"), Response::ok());
    counter.run(Request::get("/"), Response::ok());
    assert_eq!(counter.metric("test_counter_requests_total"), Some(2.0));

    let logs = FilterTest::wasm(build("test_logs")?).build()?;
    let outcome = logs.run(Request::get("/hello"), Response::ok());
    let warning = (Level::Warn, "test_logs warn /hello".to_owned());
    assert!(outcome.logs.contains(&warning));
    Ok(())
}
