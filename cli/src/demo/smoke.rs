//! `weftctl demo --smoke`: the checks CI runs on a fresh demo, through the gateway as a
//! user would. The full walkthrough (every manifest of Istio's tasks, weighted splits, faults)
//! is `e2e/tests/bookinfo.rs`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use weft_api::pb;

use super::http::{self, Reviews};
use super::layout::{self, GATEWAY, GATEWAY_NAMESPACE, GATEWAY_SERVICE_ACCOUNT, NAMESPACE};
use super::{Demo, localhost};

/// How long a change of the intent may take to show.
const CHANGE: Duration = Duration::from_secs(15);

/// Runs every check; the first failure is the error.
pub(super) fn run(demo: &Demo) -> Result<()> {
    // Without a VirtualService every reviews version serves some pages (Istio's "refresh to
    // see the stars change"); this also sends traffic through every reviews sidecar.
    let mut seen = BTreeSet::new();
    let all_three = http::eventually(Duration::from_secs(30), || {
        let page = demo.page(&[]).ok()?;
        if page.status == 200
            && let Some(version) = http::reviews_version(&page.body)
        {
            seen.insert(version.to_owned());
        }
        (seen.len() == 3).then_some(())
    });
    if all_three.is_none() {
        bail!("without a VirtualService, the page showed only reviews {seen:?}, not v1, v2 and v3");
    }
    println!("ok  without a VirtualService, reviews v1, v2 and v3 all serve pages (no stars, black, red)");

    let gateway = demo.layout.gateway();
    let login = http::request(
        gateway,
        "POST",
        "/login",
        &gateway.to_string(),
        &[("content-type", "application/x-www-form-urlencoded")],
        "username=jason&passwd=jason",
    )?;
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .map(str::to_owned);
    if login.status != 302 || cookie.as_deref() != Some("user=jason") {
        bail!(
            "POST /login as jason: expected 302 with the cookie user=jason, got {}:\n{}",
            login.status,
            login.head
        );
    }
    let jason = [("cookie", "user=jason")];
    let page = demo.page(&jason)?;
    if !page.body.contains("signed in as <b>jason</b>") {
        bail!("the page after signing in does not name jason:\n{}", page.body);
    }
    println!("ok  POST /login as jason sets the cookie user=jason; the page says \"signed in as jason\"");

    let took = apply(demo, &[], &["virtual-service-all-v1.yaml"])?;
    expect(demo, &[], Reviews::NoStars, "anonymous, all v1")?;
    expect(demo, &jason, Reviews::NoStars, "jason, all v1")?;
    println!(
        "ok  virtual-service-all-v1.yaml: everyone on reviews v1, no stars (every proxy in sync after {took:.1?})"
    );

    let took = apply(
        demo,
        &["virtual-service-all-v1.yaml"],
        &["virtual-service-reviews-test-v2.yaml"],
    )?;
    expect(demo, &jason, Reviews::Black, "jason, reviews-test-v2")?;
    expect(demo, &[], Reviews::NoStars, "anonymous, reviews-test-v2")?;
    println!(
        "ok  virtual-service-reviews-test-v2.yaml: jason sees black stars (v2), anonymous none (v1) (in sync after {took:.1?})"
    );

    // Every sidecar was reached over mutual TLS only, the gateway's hop to productpage too.
    for (instance, ports) in &demo.layout.instances {
        let stats = http::get(localhost(ports.admin), "/stats/prometheus", "admin", &[])?.body;
        let inbound = ["listener=\"inbound\""];
        let mtls = http::metric(&stats, "weft_listener_downstream_cx_mtls_total", &inbound).unwrap_or(0.0);
        let plaintext = http::metric(&stats, "weft_listener_downstream_cx_plaintext_total", &inbound).unwrap_or(0.0);
        if mtls == 0.0 || plaintext > 0.0 {
            bail!(
                "{}'s inbound listener: {mtls} mutual TLS and {plaintext} plaintext connections; expected mutual TLS only",
                instance.workload
            );
        }
    }
    let stats = http::get(localhost(demo.layout.gateway_admin), "/stats/prometheus", "admin", &[])?.body;
    let productpage = ["cluster=\"outbound|9080||productpage.default.svc.cluster.local\""];
    let tls = http::metric(&stats, "weft_cluster_upstream_cx_tls_total", &productpage).unwrap_or(0.0);
    if tls == 0.0 {
        bail!("the gateway made no TLS connection to productpage:\n{stats}");
    }
    println!(
        "ok  mutual TLS on every hop: each sidecar's inbound connections are all mTLS, the gateway's to productpage too"
    );

    for (instance, ports) in &demo.layout.instances {
        let id = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{}", instance.service_account);
        check_certificate(localhost(ports.admin), instance.workload, &id)?;
    }
    let id = format!("spiffe://cluster.local/ns/{GATEWAY_NAMESPACE}/sa/{GATEWAY_SERVICE_ACCOUNT}");
    check_certificate(localhost(demo.layout.gateway_admin), GATEWAY, &id)?;
    println!("ok  every proxy holds the SPIFFE certificate of its service account (admin /certs)");

    let (proxies, diagnostics) = status(demo)?;
    if !all_synced(&proxies) || !diagnostics.diagnostics.is_empty() {
        bail!(
            "weftctl status: expected all {} proxies SYNCED and no problem, got {proxies:?} {diagnostics:?}",
            layout::INSTANCES.len() + 1
        );
    }
    println!(
        "ok  weftctl status: all {} proxies SYNCED, no problem in the intent",
        proxies.proxies.len()
    );
    Ok(())
}

/// Removes then copies manifests of `examples/bookinfo/networking/` in the intent directory;
/// returns once the controller compiled the change and every proxy ACKed what it was sent,
/// with the time that took.
fn apply(demo: &Demo, remove: &[&str], add: &[&str]) -> Result<Duration> {
    let before = status(demo)?.0.intent_version;
    let started = Instant::now();
    for name in remove {
        let path = demo.intent.join(name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    let networking = demo.root.join("examples/bookinfo/networking");
    for name in add {
        copy(&networking.join(name), &demo.intent.join(name))?;
    }
    let compiled = http::eventually(CHANGE, || (status(demo).ok()?.0.intent_version != before).then_some(()));
    if compiled.is_none() {
        bail!("the controller did not compile the intent within {CHANGE:?} of adding {add:?}, removing {remove:?}");
    }
    // A proxy whose stream has not caught up with the new intent is listed STALE, so "all
    // SYNCED" means every proxy runs its snapshot of the new intent.
    if http::eventually(CHANGE, || status(demo).ok().filter(|(p, _)| all_synced(p))).is_none() {
        bail!(
            "not every proxy ACKed its snapshot within {CHANGE:?}: {:?}",
            status(demo)?.0
        );
    }
    Ok(started.elapsed())
}

/// Copies a file, naming both on failure.
fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Five pages in a row show `expected` (the first within [`CHANGE`]).
fn expect(demo: &Demo, headers: &[(&str, &str)], expected: Reviews, what: &str) -> Result<()> {
    let mut last = None;
    let first = http::eventually(CHANGE, || {
        let page = demo.page(headers).ok()?;
        let shown = http::reviews(&page.body);
        last = Some(shown);
        (page.status == 200 && shown == expected).then_some(())
    });
    if first.is_none() {
        bail!("{what}: expected {expected:?} on the page, saw {last:?}");
    }
    for _ in 0..4 {
        let page = demo.page(headers)?;
        let shown = http::reviews(&page.body);
        if page.status != 200 || shown != expected {
            bail!(
                "{what}: expected {expected:?} on every page, got {} {shown:?}",
                page.status
            );
        }
    }
    Ok(())
}

/// The proxy's admin `/certs` shows `id`.
fn check_certificate(admin: std::net::SocketAddr, name: &str, id: &str) -> Result<()> {
    let certs = http::get(admin, "/certs", "admin", &[])?.body;
    if !certs.contains(id) {
        bail!("{name}'s /certs does not show {id}:\n{certs}");
    }
    Ok(())
}

/// `weftctl status`, in process.
fn status(demo: &Demo) -> Result<(pb::ListProxiesResponse, pb::ListDiagnosticsResponse)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::status::fetch(&format!("127.0.0.1:{}", demo.layout.grpc)))
}

/// Whether every proxy of the demo is connected and has ACKed the last snapshot sent.
fn all_synced(proxies: &pb::ListProxiesResponse) -> bool {
    let synced = |name: &str| {
        proxies.proxies.iter().any(|p| {
            p.node.as_ref().is_some_and(|n| n.id == name)
                && p.connected
                && p.state == pb::SyncState::Synced as i32
                && p.sent_version == p.acked_version
        })
    };
    layout::INSTANCES.iter().all(|i| synced(i.workload)) && synced(GATEWAY)
}
