//! The `nginx pair` of `--suite mtls`: the reference target.
//!
//! Two nginx, each `worker_processes 1` and pinned to the servers' CPU like the sidecars:
//! the client nginx (where load goes) proxies to the server nginx, which proxies to the
//! origin, both with [`configs::nginx_proxy`] (HTTP/1.1, keep-alive upstream pool). No Wasm
//! filter and no TLS: the floor of a two-hop proxy pair on the machine, measured like the
//! sidecar pairs. The server nginx also serves `stub_status` on `/nginx_status` when this
//! nginx has the module, so that the probe can be seen passing through it and the client
//! nginx's new connections to it can be counted.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};

use super::super::super::procs::{ChildGuard, Supervisor};
use super::super::super::tools::Tools;
use super::super::super::{configs, nginx_command, origin_counters, wait_serving, write};
use super::super::{Origin, local};
use super::{Counters, served_during};

/// The `stub_status` location added to the server nginx.
const STATUS_LOCATION: &str = "        location = /nginx_status { stub_status; }\n";

/// The started nginx pair.
pub(super) struct NginxPair {
    /// The client nginx's supervisor index; its master's process tree is measured.
    pub(super) client: usize,
    /// Where the client nginx listens: where load goes.
    pub(super) addr: SocketAddr,
    /// The server nginx's supervisor index.
    pub(super) server: usize,
    /// Where the server nginx listens.
    server_addr: SocketAddr,
    /// Whether the server nginx serves `stub_status` (as the origin does).
    stub_status: bool,
}

impl NginxPair {
    /// Where the client → server connection and request counts come from: the server nginx's
    /// `stub_status`, when it has one.
    pub(super) fn counters(&self) -> Counters {
        if self.stub_status {
            Counters::StubStatus(self.server_addr)
        } else {
            Counters::Unavailable
        }
    }
}

/// Starts the server nginx (listening on `ports[0]`, proxying to the origin on port
/// `origin`), then the client nginx (`ports[1]`, proxying to the server nginx), each in its
/// own directory under `dir` (the configs name their pid, log and temp files alike), and
/// waits until the origin's body comes back through both. `stub_status`: whether this nginx
/// has the module (see [`Origin::stub_status`]).
pub(super) fn start(
    children: &mut Supervisor,
    tools: &Tools,
    dir: &Path,
    ports: &[u16],
    origin: u16,
    stub_status: bool,
) -> anyhow::Result<NginxPair> {
    let &[server_port, client_port] = ports else {
        bail!("the nginx pair needs 2 ports");
    };
    let server_conf = |dir: &Path| {
        let conf = configs::nginx_proxy(dir, server_port, origin);
        if stub_status { with_stub_status(&conf) } else { Ok(conf) }
    };
    let server = spawn(children, tools, dir, "server", server_port, server_conf)?;
    let client = spawn(children, tools, dir, "client", client_port, |dir: &Path| {
        Ok(configs::nginx_proxy(dir, client_port, server_port))
    })?;
    Ok(NginxPair {
        client,
        addr: local(client_port),
        server,
        server_addr: local(server_port),
        stub_status,
    })
}

/// Starts one nginx of the pair (`nginx-SIDE`) with the config `conf` makes for its
/// directory, and waits until it serves the origin's body on `port`; returns its supervisor
/// index.
fn spawn(
    children: &mut Supervisor,
    tools: &Tools,
    dir: &Path,
    side: &str,
    port: u16,
    conf: impl FnOnce(&Path) -> anyhow::Result<String>,
) -> anyhow::Result<usize> {
    let name = format!("nginx-{side}");
    let dir = dir.join(&name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = write(&dir, "nginx.conf", &conf(&dir)?)?;
    let child = children.adopt(ChildGuard::spawn(
        &format!("{side} nginx"),
        nginx_command(tools, &dir, &conf, "nginx"),
        &dir.join("nginx.log"),
    )?);
    wait_serving(children, child, local(port), &format!("the {side} nginx"))?;
    Ok(child)
}

/// `conf` (a [`configs::nginx_proxy`] config) with `stub_status` on `/nginx_status`, ahead
/// of its catch-all location.
fn with_stub_status(conf: &str) -> anyhow::Result<String> {
    let anchor = "        location / {";
    if !conf.contains(anchor) {
        bail!(
            "configs::nginx_proxy changed shape: no `{}` to add stub_status before",
            anchor.trim()
        );
    }
    Ok(conf.replacen(anchor, &format!("{STATUS_LOCATION}{anchor}"), 1))
}

/// Checks the started nginx pair with a probe request through both nginx: the origin served
/// it and, when the server nginx has `stub_status`, the server nginx counted it; returns
/// what it found.
pub(super) fn check(pair: &NginxPair, origin: &Origin) -> anyhow::Result<String> {
    let server_stub = pair.stub_status.then_some(pair.server_addr);
    let (origin_served, server_served) = served_during(server_stub, || super::probe(pair.addr, origin))?;
    if server_served == Some(0) {
        bail!("the server nginx's stub_status counted no request for the probe");
    }
    Ok(format!(
        "the probe reached the origin through both nginx ({}; {})",
        match origin_served {
            Some(n) => format!("the origin's stub_status counted {n} request(s)"),
            None => "answered with the origin's body".to_owned(),
        },
        match server_served {
            Some(n) => format!("the server nginx's stub_status counted {n}"),
            None => "this nginx has no stub_status to count it at the server nginx".to_owned(),
        }
    ))
}

/// The server nginx's accepted connections and served requests (its `stub_status`), with
/// `own_reads` of these reads (each one connection and one request) left out.
pub(super) fn server_counts(stub: SocketAddr, own_reads: u64) -> anyhow::Result<(u64, u64)> {
    let (accepts, requests) = origin_counters(stub).context("reading the server nginx's stub_status")?;
    Ok((accepts.saturating_sub(own_reads), requests.saturating_sub(own_reads)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{STATUS_LOCATION, configs, with_stub_status};

    #[test]
    fn server_nginx_gets_stub_status_before_the_proxy() -> anyhow::Result<()> {
        let conf = with_stub_status(&configs::nginx_proxy(Path::new("/tmp/x"), 1, 2))?;
        let status = conf
            .find(STATUS_LOCATION)
            .ok_or_else(|| anyhow::anyhow!("no stub_status"))?;
        let proxy = conf
            .find("location / {")
            .ok_or_else(|| anyhow::anyhow!("no proxy location"))?;
        assert!(status < proxy);
        assert_eq!(conf.matches("stub_status").count(), 1);
        assert!(conf.contains("server 127.0.0.1:2;"));
        Ok(())
    }
}
