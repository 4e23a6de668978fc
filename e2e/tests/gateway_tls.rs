//! Gateway TLS end to end: a Gateway's HTTPS server whose certificate is a `v1 Secret`
//! (`credentialName`), compiled by a real controller and served by a real gateway proxy; a
//! TLS client that trusts only the test CA and sends the server's name gets the application's
//! answer, and plaintext gets no HTTP answer. The Gateway's plaintext server with
//! `httpsRedirect` answers every request for its hosts with a `301` to `https`. A Gateway's
//! PASSTHROUGH server relays a client's TLS session, by the name it asks for, to the TLS
//! server a VirtualService's `tls` route names: the client verifies that server's certificate.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use weft_e2e::{Process, TempDir, Upstream, binaries, eventually, filters_dir, free_port, wait_listening};

/// The controller on `intent`, with its state in `dir`; its gRPC port.
fn start_controller(dir: &TempDir, intent: &std::path::Path) -> (Process, u16) {
    let (grpc, registry) = (free_port(), free_port());
    let controller = Process::spawn(
        "controller",
        &binaries().controller,
        &[
            "--intent-dir".into(),
            intent.display().to_string(),
            "--filters-dir".into(),
            filters_dir().display().to_string(),
            "--data-dir".into(),
            dir.path().join("controller").display().to_string(),
            "--grpc".into(),
            format!("127.0.0.1:{grpc}"),
            "--registry".into(),
            format!("127.0.0.1:{registry}"),
        ],
        dir.path(),
    );
    assert!(
        wait_listening(SocketAddr::from(([127, 0, 0, 1], grpc)), Duration::from_secs(30)),
        "{}",
        controller.log()
    );
    (controller, grpc)
}

/// The arguments of the gateway's proxy, node `gateway` in istio-system, state in `state`,
/// admin API on a free port (tests run side by side).
fn gateway_args(grpc: u16, state: &std::path::Path) -> Vec<String> {
    vec![
        "--admin".into(),
        format!("127.0.0.1:{}", free_port()),
        "--controller".into(),
        format!("http://127.0.0.1:{grpc}"),
        "--node-id".into(),
        "gateway".into(),
        "--namespace".into(),
        "istio-system".into(),
        "--node-label".into(),
        "istio=ingressgateway".into(),
        "--workers".into(),
        "1".into(),
        "--state-dir".into(),
        state.display().to_string(),
        "--module-dir".into(),
        state.join("modules").display().to_string(),
    ]
}

/// A CA, and a certificate with its key (PEM) for `name`.
fn certificates(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// `GET /` over TLS with SNI `name`, trusting `ca` only: the raw response, or the error.
fn get_tls(address: SocketAddr, name: &str, ca: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let connection = rustls::ClientConnection::new(Arc::new(config), server_name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // A peer that closes without close_notify still delivered the response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Waits for the gateway to listen on `address` and answer `GET /` over TLS as `name` with a
/// 200 (the controller's snapshot applied); that response.
fn first_tls_answer(address: SocketAddr, name: &str, ca: &str, gateway: &Process, controller: &Process) -> String {
    assert!(
        wait_listening(address, Duration::from_secs(60)),
        "the gateway never listened:\n{}\n{}",
        gateway.log(),
        controller.log()
    );
    eventually(Duration::from_secs(20), || {
        get_tls(address, name, ca)
            .ok()
            .filter(|r| r.starts_with("HTTP/1.1 200"))
    })
    .unwrap_or_else(|| {
        panic!(
            "no answer over TLS: {:?}\n{}",
            get_tls(address, name, ca),
            gateway.log()
        )
    })
}

/// A plaintext `GET path` with `host`: the raw response.
fn get_plain(address: SocketAddr, host: &str, path: &str) -> String {
    let mut tcp = TcpStream::connect_timeout(&address, Duration::from_secs(2)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())
        .expect("write");
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn a_gateway_https_server_terminates_tls_with_its_secret() {
    binaries();
    let dir = TempDir::new("gateway-tls");
    let app = Upstream::start("web-app");
    let (gateway_port, http_port) = (free_port(), free_port());
    let (ca, cert, key) = certificates("web.example.com");
    let intent = dir.path().join("intent");
    std::fs::create_dir_all(&intent).expect("intent dir");
    let yaml_string = |text: &str| serde_json::to_string(text).expect("json");
    std::fs::write(
        intent.join("platform.yaml"),
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{ name: web, namespace: default }}
spec:
  selector: {{ app: web }}
  ports: [{{ name: http, port: 9080, targetPort: http }}]
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {{ name: web-v1, namespace: default, labels: {{ app: web }} }}
spec:
  address: 127.0.0.1
  ports: {{ http: {app_port} }}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {{ name: gateway, namespace: istio-system, labels: {{ istio: ingressgateway }} }}
spec:
  address: 127.0.0.1
---
apiVersion: v1
kind: Secret
metadata: {{ name: web-cert, namespace: istio-system }}
type: kubernetes.io/tls
stringData:
  tls.crt: {cert}
  tls.key: {key}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: web-gateway, namespace: istio-system }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {gateway_port}, name: https, protocol: HTTPS }}
      hosts: [web.example.com]
      tls: {{ mode: SIMPLE, credentialName: web-cert }}
    - port: {{ number: {http_port}, name: http, protocol: HTTP }}
      hosts: [web.example.com, old.example.com]
      tls: {{ httpsRedirect: true }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: web, namespace: default }}
spec:
  hosts: [web.example.com]
  gateways: [istio-system/web-gateway]
  http:
    - route: [{{ destination: {{ host: web, port: {{ number: 9080 }} }} }}]
"#,
            app_port = app.address.port(),
            cert = yaml_string(&cert),
            key = yaml_string(&key),
        ),
    )
    .expect("write intent");
    let (controller, grpc) = start_controller(&dir, &intent);

    // A process that says it is the gateway but has no credential is not sent the private key:
    // it cannot serve HTTPS and refuses the snapshot.
    let impostor = Process::spawn(
        "impostor",
        &binaries().proxy,
        &gateway_args(grpc, &dir.path().join("state-impostor")),
        dir.path(),
    );
    let refused = eventually(Duration::from_secs(30), || {
        let log = impostor.log();
        (log.contains("snapshot refused") && log.contains("private_key: empty")).then_some(())
    });
    assert!(
        refused.is_some(),
        "the impostor applied the snapshot:\n{}",
        impostor.log()
    );
    assert!(!impostor.log().contains("BEGIN PRIVATE KEY"), "{}", impostor.log());
    drop(impostor);

    // The gateway proves it is the gateway Workload with its bootstrap token.
    let token = dir.path().join("controller/bootstrap/istio-system/gateway.token");
    assert!(
        eventually(Duration::from_secs(20), || token.is_file().then_some(())).is_some(),
        "no bootstrap token for the gateway:\n{}",
        controller.log()
    );
    let mut args = gateway_args(grpc, &dir.path().join("state-gateway"));
    args.extend(["--bootstrap-token".to_owned(), token.display().to_string()]);
    let gateway = Process::spawn("gateway", &binaries().proxy, &args, dir.path());
    let address = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    let reply = first_tls_answer(address, "web.example.com", &ca, &gateway, &controller);
    assert!(reply.contains("web-app"), "{reply}");

    // The plaintext server redirects every request for its hosts to https, the host as sent
    // (port included) and the path and query kept; whether a VirtualService routes the host
    // (web) or not (old). Other hosts are not served there.
    let plain_address = SocketAddr::from(([127, 0, 0, 1], http_port));
    assert!(
        wait_listening(plain_address, Duration::from_secs(20)),
        "{}",
        gateway.log()
    );
    let location = |response: &str| {
        response
            .lines()
            .find_map(|l| l.strip_prefix("location: ").map(str::to_owned))
            .unwrap_or_default()
    };
    let redirected = get_plain(plain_address, "web.example.com", "/reviews/1?page=2");
    assert!(redirected.starts_with("HTTP/1.1 301"), "{redirected}");
    assert_eq!(location(&redirected), "https://web.example.com/reviews/1?page=2");
    assert!(!redirected.contains("web-app"), "forwarded: {redirected}");
    let redirected = get_plain(plain_address, &format!("old.example.com:{http_port}"), "/");
    assert!(redirected.starts_with("HTTP/1.1 301"), "{redirected}");
    assert_eq!(location(&redirected), format!("https://old.example.com:{http_port}/"));
    let other = get_plain(plain_address, "else.example.com", "/");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");

    // Another CA's client does not trust it; plaintext gets no HTTP answer.
    let (other_ca, _, _) = certificates("web.example.com");
    let refused = get_tls(address, "web.example.com", &other_ca).expect_err("untrusted");
    assert!(refused.contains("certificate"), "{refused}");
    let mut plain = TcpStream::connect(address).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: web.example.com\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/"),
        "plaintext was answered"
    );
}

/// A TLS server on 127.0.0.1 presenting `cert`/`key` that answers each connection's request
/// with `200` and `label`, then closes; its port.
fn labelled_tls_server(cert: &str, key: &str, label: &'static str) -> u16 {
    use rustls::pki_types::PrivateKeyDer;
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => request.push(byte[0]),
                        _ => return,
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{label}",
                    label.len()
                );
                let _ = tls.write_all(response.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

#[test]
fn a_gateway_passthrough_server_relays_tls_to_the_server_the_client_names() {
    binaries();
    let dir = TempDir::new("gateway-passthrough");
    let gateway_port = free_port();
    let (ca, cert, key) = certificates("secure.example.com");
    let backend = labelled_tls_server(&cert, &key, "secure-backend");
    let intent = dir.path().join("intent");
    std::fs::create_dir_all(&intent).expect("intent dir");
    std::fs::write(
        intent.join("platform.yaml"),
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: secure, namespace: default }}
spec:
  hosts: [secure.example.com]
  ports: [{{ number: 443, name: tls, protocol: TLS }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1, ports: {{ tls: {backend} }} }}]
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {{ name: gateway, namespace: istio-system, labels: {{ istio: ingressgateway }} }}
spec:
  address: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: edge, namespace: istio-system }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {gateway_port}, name: tls, protocol: TLS }}
      hosts: ["*.example.com"]
      tls: {{ mode: PASSTHROUGH }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: secure, namespace: default }}
spec:
  hosts: [secure.example.com]
  gateways: [istio-system/edge]
  tls:
    - match: [{{ sniHosts: [secure.example.com] }}]
      route: [{{ destination: {{ host: secure.example.com }} }}]
"#
        ),
    )
    .expect("write intent");
    let (controller, grpc) = start_controller(&dir, &intent);
    // No credential needed: the gateway holds no key for these hosts.
    let gateway = Process::spawn(
        "gateway",
        &binaries().proxy,
        &gateway_args(grpc, &dir.path().join("state-gateway")),
        dir.path(),
    );
    let address = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    let reply = first_tls_answer(address, "secure.example.com", &ca, &gateway, &controller);
    // The backend's own answer: no header of the proxy's.
    assert!(reply.ends_with("secure-backend"), "{reply}");
    assert!(!reply.contains("x-request-id"), "{reply}");
    // A name no route takes: the connection is closed, no handshake.
    let refused = get_tls(address, "other.example.com", &ca).expect_err("no route");
    assert!(!refused.contains("certificate"), "{refused}");
}
