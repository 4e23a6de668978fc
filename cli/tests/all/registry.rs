//! `weftctl filter push` and `weftctl filter ls` against an embedded registry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use weft_registry::image::WasmImage;
use weft_registry::server::Registry;

/// An embedded registry on 127.0.0.1, served by a thread of its own until dropped.
struct Served {
    addr: SocketAddr,
    dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weftctl-registry-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let registry = Registry::open(dir.join("store")).expect("opens the store");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
                bound.send(listener.local_addr().expect("address")).expect("sends");
                registry
                    .serve(listener, async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self {
            addr: addr.recv().expect("the registry's address"),
            dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn weftctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .output()
        .expect("runs weftctl")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "weftctl failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

#[test]
fn push_then_ls_shows_the_tag_and_digest() {
    let served = Served::start("push-ls");
    let module = b"\0asm\x01\0\0\0".to_vec();
    let file = served.dir.join("filter.wasm");
    std::fs::write(&file, &module).expect("writes the module");
    let image = WasmImage::new(module);
    let file = file.to_str().expect("a utf-8 path");

    let pushed = stdout(&weftctl(&[
        "filter",
        "push",
        file,
        &format!("oci://{}/weft/cli-filter:v1", served.addr),
    ]));
    assert_eq!(
        pushed,
        format!(
            "pushed oci://{addr}/weft/cli-filter:v1\n\
             url    oci://{addr}/weft/cli-filter@{digest}\n\
             sha256 {sha256}\n",
            addr = served.addr,
            digest = image.manifest_digest,
            sha256 = image.module_digest.hex(),
        )
    );
    stdout(&weftctl(&[
        "filter",
        "push",
        file,
        &format!("{}/weft/other", served.addr),
    ]));

    for registry in [format!("oci://{}", served.addr), served.addr.to_string()] {
        let listed = stdout(&weftctl(&["filter", "ls", &registry]));
        let rows: Vec<Vec<&str>> = listed.lines().map(|line| line.split_whitespace().collect()).collect();
        let digest = image.manifest_digest.to_string();
        assert_eq!(
            rows,
            vec![
                vec!["REPOSITORY", "TAG", "DIGEST"],
                vec!["weft/cli-filter", "v1", digest.as_str()],
                vec!["weft/other", "latest", digest.as_str()],
            ],
            "{listed}"
        );
    }
}

#[test]
fn push_and_ls_errors_say_what_went_wrong() {
    let served = Served::start("errors");
    let missing = served.dir.join("missing.wasm");
    let output = weftctl(&[
        "filter",
        "push",
        missing.to_str().expect("utf-8"),
        &format!("oci://{}/weft/x:v1", served.addr),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.wasm"));

    let output = weftctl(&["filter", "push", "x.wasm", "weft/x:v1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no registry host"));

    let output = weftctl(&["filter", "ls", "http://example"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("oci://"));
}
