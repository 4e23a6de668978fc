//! Handshakes per second: a client doing full TLS 1.3 mutual-TLS handshakes with a workload
//! certificate against the server sidecar's STRICT inbound listener, as fast as it can.
//!
//! The sidecars' pool reuses its connections (that is what the connection reuse rate shows),
//! so forcing a new sidecar-to-sidecar connection per request is not possible; instead this
//! client plays the client sidecar's part in the handshake. Each of `connections` threads
//! loops until the time is up: a new TCP connection, a full handshake (TLS 1.3 only,
//! session resumption off, X25519 and ECDSA P-256 as the sidecars use them; the server's
//! chain verified against the mesh root, the client's certificate sent), then `close_notify`
//! and reading until the server closes too. That last step makes the server's side of the
//! handshake part of each iteration: the server has checked the client's certificate and
//! finished before it reads the `close_notify`; a refused certificate arrives as an alert
//! and counts as an error. No HTTP request is sent.
//!
//! It runs as `xtask bench handshake-client …` in its own process, pinned to the load CPU
//! like the other load generators, and writes its counts, the time of each iteration and its
//! own CPU time as JSON.

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::super::super::load;
use super::super::super::procs;
use super::super::super::tools::Tools;
use super::certs::Identity;

/// Concurrent handshakes: enough to keep the server sidecar's one worker busy while the
/// client waits for the network and the server.
pub(super) const CONNECTIONS: u32 = 4;
/// How long one iteration may wait for the server.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What one handshake run measured, as the client saw it.
#[derive(Debug, Default)]
pub(super) struct HandshakeRun {
    /// Handshakes completed (the server closed cleanly after them).
    pub(super) handshakes: u64,
    /// Iterations that failed.
    pub(super) errors: u64,
    /// The first failure, for the report.
    pub(super) first_error: Option<String>,
    /// Wall time of the loop, all threads together.
    pub(super) seconds: f64,
    /// Time of each successful iteration (connect, handshake, close), in nanoseconds.
    pub(super) samples_ns: Vec<u64>,
    /// CPU time of the client process (all threads), in clock ticks.
    pub(super) client_ticks: u64,
}

/// The client's settings.
struct Config {
    addr: SocketAddr,
    identity: Identity,
    connections: u32,
    duration: Duration,
    out: PathBuf,
}

/// Runs the client pinned to [`load::LOAD_CPU`] against `addr` for `duration` with
/// `identity`, and reads what it measured.
pub(super) fn run_pinned(
    tools: &Tools,
    dir: &Path,
    addr: SocketAddr,
    identity: &Identity,
    duration: Duration,
) -> anyhow::Result<HandshakeRun> {
    let out = dir.join("handshakes.json");
    let _ = fs::remove_file(&out);
    let mut args: Vec<String> = vec!["bench".into(), "handshake-client".into()];
    for (flag, value) in [
        ("--addr", addr.to_string()),
        ("--cert-chain", identity.chain.display().to_string()),
        ("--private-key", identity.key.display().to_string()),
        ("--trust-bundle", identity.roots.display().to_string()),
        ("--connections", CONNECTIONS.to_string()),
        ("--duration", duration.as_secs_f64().to_string()),
        ("--out", out.display().to_string()),
    ] {
        args.push(flag.to_owned());
        args.push(value);
    }
    load::run_pinned(tools, dir, "handshake-client", &load::own_exe(), &args, duration)?;
    read_run(&out)
}

/// `xtask bench handshake-client --addr A --cert-chain F --private-key F --trust-bundle F
/// [--connections N] [--duration SECS] --out FILE`.
pub(crate) fn client_main(args: &[String]) -> anyhow::Result<()> {
    let mut addr = None;
    let (mut chain, mut key, mut roots, mut out) = (None, None, None, None);
    let mut connections = CONNECTIONS;
    let mut duration = 10.0;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?.parse::<SocketAddr>().context("--addr")?),
            "--cert-chain" => chain = Some(PathBuf::from(value()?)),
            "--private-key" => key = Some(PathBuf::from(value()?)),
            "--trust-bundle" => roots = Some(PathBuf::from(value()?)),
            "--connections" => connections = value()?.parse().context("--connections")?,
            "--duration" => duration = value()?.parse::<f64>().context("--duration")?,
            "--out" => out = Some(PathBuf::from(value()?)),
            other => bail!("handshake-client: unknown argument {other:?}"),
        }
    }
    if connections == 0 || duration <= 0.0 {
        bail!("handshake-client: connections and duration must be positive");
    }
    let config = Config {
        addr: addr.context("handshake-client: --addr is required")?,
        identity: Identity {
            chain: chain.context("handshake-client: --cert-chain is required")?,
            key: key.context("handshake-client: --private-key is required")?,
            roots: roots.context("handshake-client: --trust-bundle is required")?,
        },
        connections,
        duration: Duration::try_from_secs_f64(duration).context("--duration")?,
        out: out.context("handshake-client: --out is required")?,
    };
    let run = run(&config)?;
    let json = serde_json::json!({
        "handshakes": run.handshakes,
        "errors": run.errors,
        "first_error": run.first_error,
        "seconds": run.seconds,
        "samples_ns": run.samples_ns,
        "client_ticks": run.client_ticks,
    });
    fs::write(&config.out, json.to_string()).with_context(|| format!("writing {}", config.out.display()))
}

/// Reads what [`client_main`] wrote.
fn read_run(path: &Path) -> anyhow::Result<HandshakeRun> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let count = |name: &str| {
        json[name]
            .as_u64()
            .with_context(|| format!("{}: no {name}", path.display()))
    };
    Ok(HandshakeRun {
        handshakes: count("handshakes")?,
        errors: count("errors")?,
        first_error: json["first_error"].as_str().map(str::to_owned),
        seconds: json["seconds"]
            .as_f64()
            .with_context(|| format!("{}: no seconds", path.display()))?,
        samples_ns: json["samples_ns"]
            .as_array()
            .with_context(|| format!("{}: no samples_ns", path.display()))?
            .iter()
            .map(|v| v.as_u64().context("bad sample"))
            .collect::<anyhow::Result<_>>()?,
        client_ticks: count("client_ticks")?,
    })
}

/// The client's TLS configuration: TLS 1.3 only, no resumption, the identity's certificate
/// and key, servers verified against its trust bundle.
fn client_config(identity: &Identity) -> anyhow::Result<Arc<ClientConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&identity.chain)
        .with_context(|| format!("reading {}", identity.chain.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", identity.chain.display()))?;
    let key = PrivateKeyDer::from_pem_file(&identity.key)
        .with_context(|| format!("reading the private key {}", identity.key.display()))?;
    let mut roots = RootCertStore::empty();
    for root in CertificateDer::pem_file_iter(&identity.roots)
        .with_context(|| format!("reading {}", identity.roots.display()))?
    {
        let root = root.with_context(|| format!("parsing {}", identity.roots.display()))?;
        roots
            .add(root)
            .with_context(|| format!("adding a root of {}", identity.roots.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(MeshRootVerifier {
        roots: Arc::new(roots),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .context("the client certificate and key")?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn run(config: &Config) -> anyhow::Result<HandshakeRun> {
    let tls = client_config(&config.identity)?;
    // One handshake first: a configuration the server refuses fails here, not as a run of
    // errors.
    handshake_once(config.addr, &tls).context("a first handshake")?;
    let started = Instant::now();
    let end = started + config.duration;
    let handles: Vec<_> = (0..config.connections)
        .map(|_| {
            let (tls, addr) = (tls.clone(), config.addr);
            thread::spawn(move || {
                let mut run = HandshakeRun::default();
                while Instant::now() < end {
                    let begun = Instant::now();
                    match handshake_once(addr, &tls) {
                        Ok(()) => {
                            run.handshakes += 1;
                            run.samples_ns.push(begun.elapsed().as_nanos() as u64);
                        }
                        Err(error) => {
                            run.errors += 1;
                            run.first_error.get_or_insert_with(|| format!("{error:#}"));
                        }
                    }
                }
                run
            })
        })
        .collect();
    let mut total = HandshakeRun::default();
    for handle in handles {
        let run = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a handshake thread panicked"))?;
        total.handshakes += run.handshakes;
        total.errors += run.errors;
        total.samples_ns.extend(run.samples_ns);
        if total.first_error.is_none() {
            total.first_error = run.first_error;
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.client_ticks = procs::tree_cpu_ticks(std::process::id())?.total();
    Ok(total)
}

/// One connection: TCP connect, full handshake, `close_notify`, read until the server
/// closes.
fn handshake_once(addr: SocketAddr, tls: &Arc<ClientConfig>) -> anyhow::Result<()> {
    let mut tcp = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
    tcp.set_read_timeout(Some(TIMEOUT)).context("setting a read timeout")?;
    tcp.set_write_timeout(Some(TIMEOUT))
        .context("setting a write timeout")?;
    let name = ServerName::IpAddress(match addr {
        SocketAddr::V4(v4) => (*v4.ip()).into(),
        SocketAddr::V6(_) => Ipv4Addr::LOCALHOST.into(),
    });
    let mut conn = ClientConnection::new(tls.clone(), name).context("starting the handshake")?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).context("handshaking")?;
    }
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut tcp).context("sending close_notify")?;
    }
    tcp.flush().context("sending close_notify")?;
    // The server's session tickets (ignored: resumption is off), its close_notify, EOF.
    loop {
        if conn.read_tls(&mut tcp).context("waiting for the server to close")? == 0 {
            return Ok(());
        }
        let state = conn
            .process_new_packets()
            .context("the server's answer after the handshake")?;
        if state.peer_has_closed() {
            return Ok(());
        }
    }
}

/// Verifies a server's chain against the mesh root. Host names are not checked (mesh
/// certificates name identities, not hosts), nor is the SPIFFE ID: a string comparison the
/// client sidecar also makes, left out of the client's cost.
#[derive(Debug)]
struct MeshRootVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MeshRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::Arc;
    use std::thread;

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{RootCertStore, ServerConfig, ServerConnection};

    use super::super::certs::{Ca, Identity};
    use super::{client_config, handshake_once};

    /// A one-connection mutual-TLS server with `identity`, answering the client's
    /// `close_notify` with its own; returns whether the handshake succeeded.
    fn serve_once(identity: &Identity) -> anyhow::Result<(std::net::SocketAddr, thread::JoinHandle<bool>)> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&identity.chain)?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&identity.key)?;
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_file_iter(&identity.roots)? {
            roots.add(root?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
        let config = Arc::new(
            ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?,
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let handle = thread::spawn(move || {
            let Ok((tcp, _)) = listener.accept() else {
                return false;
            };
            let Ok(conn) = ServerConnection::new(config) else {
                return false;
            };
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            let mut rest = Vec::new();
            // Reads through the handshake to the client's close_notify (Ok(0)).
            let ok = stream.read_to_end(&mut rest).is_ok() && stream.conn.peer_certificates().is_some();
            stream.conn.send_close_notify();
            let _ = stream.conn.complete_io(&mut stream.sock);
            ok
        });
        Ok((addr, handle))
    }

    #[test]
    fn full_handshakes_with_a_client_certificate() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mesh = Ca::new("mesh")?;
        let server = mesh.issue(dir.path(), "server", 1)?;
        let client = mesh.issue(dir.path(), "client", 2)?;

        let (addr, accepted) = serve_once(&server)?;
        handshake_once(addr, &client_config(&client)?)?;
        assert!(accepted.join().map_err(|_| anyhow::anyhow!("server panicked"))?);

        // A client certificate from another CA is refused, and that is an error here.
        let other = tempfile::tempdir()?;
        let stranger = Ca::new("elsewhere")?.issue(other.path(), "client", 3)?;
        let untrusted = Identity {
            roots: server.roots.clone(),
            ..stranger
        };
        let (addr, accepted) = serve_once(&server)?;
        assert!(handshake_once(addr, &client_config(&untrusted)?).is_err());
        assert!(!accepted.join().map_err(|_| anyhow::anyhow!("server panicked"))?);
        Ok(())
    }
}
