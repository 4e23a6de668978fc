//! The custom filter example (`examples/filters/add-header`), built and run as its README says.

use http::StatusCode;

use crate::support::*;

#[tokio::test]
async fn the_add_header_example_answers_as_its_readme_says() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("root");
    let example = root.join("examples/filters/add-header");
    let target = root.join("target/examples");
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(&example)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--quiet", "--release", "--locked", "--target", "wasm32-wasip1"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the example builds");
    let module = target.join("wasm32-wasip1/release/add_header.wasm");
    let bytes = std::fs::read(&module).expect("module");
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let snapshot = std::fs::read_to_string(example.join("snapshot.yaml"))
        .expect("snapshot")
        .replace("FILE", &format!("\"{}\"", module.display()))
        .replace("SHA256", &sha)
        .replace("127.0.0.1:18080", "127.0.0.1:0");
    let proxy = start_proxy(&snapshot, 1);
    let addr = proxy.listener_addr("main").expect("listener");

    let r = get(addr, "svc", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-add-header"), Some("hello from wasm"));
    assert_eq!(r.body, "ok\n");

    let r = get(addr, "svc", "/admin/users").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("x-denied-by"), Some("add-header"));
    assert_eq!(r.header("x-add-header"), Some("hello from wasm"));
    assert_eq!(r.body, "denied\n");
}
