//! The client against an external registry: Debian's `docker-registry` (the reference
//! implementation of the distribution API), started by the test on a free port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_registry::image::ImageVariant;
use weft_registry::{Client, Digest, Reference, RegistryHost};

use crate::support::{TempDir, module, request};

/// The registry binary: `$WEFT_DOCKER_REGISTRY`, else `docker-registry` on the `PATH`
/// (Debian installs it as /usr/bin/docker-registry).
fn binary() -> PathBuf {
    let found = match std::env::var_os("WEFT_DOCKER_REGISTRY") {
        Some(path) => Some(PathBuf::from(path)).filter(|path| path.is_file()),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/bin")])
                .map(|dir| dir.join("docker-registry"))
                .find(|candidate| candidate.is_file())
        }
    };
    found.unwrap_or_else(|| {
        panic!(
            "docker-registry not found (WEFT_DOCKER_REGISTRY or the PATH): these tests need the external \
             registry; install it with `apt-get install docker-registry`"
        )
    })
}

/// A running `docker-registry serve`, killed when dropped.
struct External {
    child: Child,
    addr: String,
    dir: TempDir,
}

impl External {
    async fn start() -> Self {
        let binary = binary();
        let dir = TempDir::new("docker-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("writes the config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("a log file");
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", binary.display()));
        let mut external = Self { child, addr, dir };
        external.wait_ready().await;
        external
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            let ready = tokio::time::timeout(Duration::from_secs(2), async {
                let probe = tokio::net::TcpStream::connect(&self.addr).await;
                if probe.is_err() {
                    return false;
                }
                request("GET", &format!("http://{}/v2/", self.addr), &[], Bytes::new())
                    .await
                    .status
                    == 200
            })
            .await
            .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn push_pull_resolve_and_list_against_docker_registry() {
    let external = External::start().await;
    let client = Client::default();
    let wasm = module("external");
    let reference = Reference::parse(&format!("oci://{}/weft/router:v1", external.addr)).expect("a reference");

    let pushed = client.push_module(&reference, &wasm).await.unwrap_or_else(|error| {
        panic!("pushes: {error}\n{}", external.log());
    });
    assert_eq!(pushed.module_sha256, Digest::of(&wasm).hex());
    let again = client
        .push_module(&reference, &wasm)
        .await
        .expect("pushes again (blobs exist)");
    assert_eq!(again.manifest_digest, pushed.manifest_digest);
    let other = Reference::parse(&format!("oci://{}/weft/authz:v2", external.addr)).expect("a reference");
    let authz = client
        .push_module(&other, &module("external authz"))
        .await
        .expect("pushes");

    assert_eq!(
        client.resolve(&reference).await.expect("resolves"),
        pushed.manifest_digest
    );
    for reference in [&reference, &pushed.reference] {
        let pulled = client.pull_module(reference).await.expect("pulls");
        assert_eq!(pulled.module, wasm);
        assert_eq!(pulled.variant, ImageVariant::Oci);
        assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    }

    let listed = client
        .list(&RegistryHost::parse(&external.addr).expect("a host"))
        .await
        .expect("lists");
    let flat: Vec<(String, String, Digest)> = listed
        .into_iter()
        .flat_map(|repo| {
            let name = repo.name;
            repo.tags
                .into_iter()
                .map(move |tag| (name.clone(), tag.name, tag.digest))
        })
        .collect();
    assert_eq!(
        flat,
        vec![
            ("weft/authz".into(), "v2".into(), authz.manifest_digest),
            ("weft/router".into(), "v1".into(), pushed.manifest_digest),
        ]
    );

    let missing = Reference::parse(&format!("oci://{}/weft/router:nope", external.addr)).expect("a reference");
    let error = client.pull_module(&missing).await.expect_err("no such tag");
    assert!(error.is_not_found(), "{error}");
}
