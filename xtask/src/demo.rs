//! `cargo xtask demo`: the proxy in front of sample upstreams, on one machine.
//!
//! Starts four small upstreams (reviews v1 and v2, two ratings instances), writes the snapshot
//! from `examples/demo/snapshot.yaml` with their ports, runs `weft-proxy` and prints what to
//! try. Runs until Ctrl-C. `--smoke` checks the demo end to end and exits (CI runs it).

#![allow(clippy::print_stdout, reason = "the demo talks to the person running it")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs the demo; with `smoke`, checks it and returns.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["build", "--quiet", "-p", "weft-proxy"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building weft-proxy failed");
    }
    let filters = build_filters(root, &["router", "telemetry"])?;
    let mut ports = Vec::new();
    for name in ["reviews-v1", "reviews-v2", "ratings-a", "ratings-b"] {
        ports.push(sample_upstream(name)?);
    }
    let template =
        std::fs::read_to_string(root.join("examples/demo/snapshot.yaml")).context("reading the demo snapshot")?;
    let (listen, admin) = if smoke {
        (free_port()?, free_port()?)
    } else {
        (15001, 15000)
    };
    let snapshot = template
        .replace("REVIEWS_V1", &ports[0].to_string())
        .replace("REVIEWS_V2", &ports[1].to_string())
        .replace("RATINGS_A", &ports[2].to_string())
        .replace("RATINGS_B", &ports[3].to_string())
        .replace("ROUTER_FILE", &format!("\"{}\"", filters[0].0))
        .replace("ROUTER_SHA", &filters[0].1)
        .replace("TELEMETRY_FILE", &format!("\"{}\"", filters[1].0))
        .replace("TELEMETRY_SHA", &filters[1].1)
        .replace("127.0.0.1:15001", &format!("127.0.0.1:{listen}"));
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the demo directory")?;
    let file = dir.join("snapshot.yaml");
    std::fs::write(&file, snapshot).context("writing the demo snapshot")?;

    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let proxy = Command::new(target.join("debug/weft-proxy"))
        .arg("--config")
        .arg(&file)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .env(
            "WEFT_LOG",
            std::env::var("WEFT_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .stdout(Stdio::inherit())
        .stderr(if smoke { Stdio::null() } else { Stdio::inherit() })
        .spawn()
        .context("starting weft-proxy")?;
    let mut proxy = KillOnDrop(proxy);
    wait_ready(admin)?;

    if smoke {
        return check(listen, admin);
    }
    println!(
        "\nweft demo is running (Ctrl-C to stop)\n\
         \n  proxy (HTTP_PROXY):  http://127.0.0.1:{listen}\
         \n  admin:               http://127.0.0.1:{admin}/stats/prometheus  /config_dump  /ready\
         \n  snapshot:            {}\n\
         \ntry:\
         \n  curl -x http://127.0.0.1:{listen} http://reviews:9080/reviews/1                      # v1\
         \n  curl -x http://127.0.0.1:{listen} -H 'end-user: jason' http://reviews:9080/reviews/1 # v2\
         \n  curl -x http://127.0.0.1:{listen} http://ratings:9080/ratings/1                      # two instances, least request\
         \n  curl -x http://127.0.0.1:{listen} http://ratings:9080/admin                          # 403 from the filter\
         \n  curl -s http://127.0.0.1:{admin}/stats/prometheus | grep weft_cluster_upstream_rq_total\n",
        file.display()
    );
    let status = proxy.0.wait().context("waiting for weft-proxy")?;
    println!("weft-proxy exited: {status}");
    Ok(())
}

/// Requests a few routes through the demo and checks the answers.
fn check(listen: u16, admin: u16) -> Result<()> {
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 4] = [
        ("reviews:9080", "/reviews/1", &[], "reviews-v1"),
        ("reviews:9080", "/reviews/1", &[("end-user", "jason")], "reviews-v2"),
        ("ratings:9080", "/ratings/1", &[], "ratings-"),
        ("ratings:9080", "/admin", &[], "RBAC: access denied"),
    ];
    for (host, path, headers, expected) in cases {
        let response = get(listen, &format!("http://{host}{path}"), host, headers)?;
        if !response.contains(expected) {
            bail!("GET http://{host}{path} {headers:?}: expected {expected:?} in\n{response}");
        }
        println!("ok  GET http://{host}{path} {headers:?} -> {expected}");
    }
    let stats = get(admin, "/stats/prometheus", "admin", &[])?;
    if !stats.contains("weft_cluster_upstream_rq_total{cluster=\"reviews\",code_class=\"2xx\"} 2") {
        bail!("admin stats do not count the reviews requests:\n{stats}");
    }
    if !stats.contains("istio_requests_total{filter=\"telemetry\",reporter=\"source\"") {
        bail!("the telemetry filter's istio_requests_total is missing:\n{stats}");
    }
    println!("ok  admin stats count the requests\ndemo smoke check passed");
    Ok(())
}

fn get(port: u16, target: &str, host: &str, headers: &[(&str, &str)]) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to the proxy")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    stream.read_to_string(&mut out).context("reading the response")?;
    Ok(out)
}

fn wait_ready(admin: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if get(admin, "/ready", "admin", &[]).is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("weft-proxy did not become ready within 30s")
}

/// Builds first-party filters for wasm32-wasip1; returns each module's path and sha256.
fn build_filters(root: &Path, crates: &[&str]) -> Result<Vec<(String, String)>> {
    let target = root.join("target/filters");
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(root.join("filters"))
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--quiet", "--release", "--locked", "--target", "wasm32-wasip1"]);
    for name in crates {
        command.args(["-p", name]);
    }
    if !command
        .status()
        .context("running cargo build for the filters")?
        .success()
    {
        bail!("building the filters failed");
    }
    crates
        .iter()
        .map(|name| {
            let path = target.join(format!("wasm32-wasip1/release/{name}.wasm"));
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok((path.display().to_string(), sha256_hex(&bytes)))
        })
        .collect()
}

/// Lowercase hex sha256.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A tiny keep-alive HTTP/1.1 server answering every request with its name and the request
/// line, on its own threads. Returns its port.
fn sample_upstream(name: &'static str) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a sample upstream")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(name, stream));
        }
    });
    Ok(port)
}

fn serve(name: &str, stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut user = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "end-user" => user = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let text = format!(
            "{name}: {} (end-user: {})\n",
            request_line.trim_end(),
            if user.is_empty() { "-" } else { &user }
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Kills the child process when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
