//! Fetching modules by url into the cache: oci://, file://, http://, https://.

use std::sync::Arc;

use weft_registry::{ClientOptions, Digest, Error, Reference, cache_path, fetch_module, fetch_module_unpinned};

use crate::support::{Served, TempDir, file_server, fixed_server, module};

fn hex(bytes: &[u8]) -> String {
    Digest::of(bytes).hex().to_owned()
}

#[tokio::test]
async fn oci_file_and_http_urls_fetch_into_the_cache() {
    let cache = TempDir::new("cache");
    let options = ClientOptions::default();

    let served = Served::start().await;
    let oci = module("oci");
    let reference = Reference::parse(&served.url("weft/fetch:v1")).expect("a reference");
    let pushed = weft_registry::Client::default()
        .push_module(&reference, &oci)
        .await
        .expect("pushes");
    for url in [pushed.reference.to_string(), served.url("weft/fetch:v1")] {
        let path = fetch_module(&url, &hex(&oci), cache.path(), &options)
            .await
            .expect("fetches oci://");
        assert_eq!(path, cache_path(cache.path(), &hex(&oci)));
        assert_eq!(std::fs::read(&path).expect("cached"), oci);
    }

    let files = TempDir::new("files");
    let local = module("file");
    let file = files.path().join("my filter.wasm");
    std::fs::write(&file, &local).expect("writes");
    let url = format!("file://{}", file.display().to_string().replace(' ', "%20"));
    let path = fetch_module(&url, &format!("sha256:{}", hex(&local)), cache.path(), &options)
        .await
        .expect("fetches file://");
    assert_eq!(std::fs::read(&path).expect("cached"), local);

    let remote = module("http");
    let (addr, _stop, _task) = file_server(remote.clone(), None).await;
    let url = format!("http://{addr}/filters/remote.wasm");
    let path = fetch_module(&url, &hex(&remote), cache.path(), &options)
        .await
        .expect("fetches http://");
    assert_eq!(std::fs::read(&path).expect("cached"), remote);

    let mut cached: Vec<String> = std::fs::read_dir(cache.path())
        .expect("lists")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    let mut expected = vec![
        format!("{}.wasm", hex(&oci)),
        format!("{}.wasm", hex(&local)),
        format!("{}.wasm", hex(&remote)),
    ];
    expected.sort();
    assert_eq!(cached, expected, "only the modules, no temporary files");
}

#[tokio::test]
async fn cache_hits_need_no_network_and_are_verified() {
    let cache = TempDir::new("cache");
    let options = ClientOptions::default();
    let wasm = module("offline");
    let (addr, stop, task) = file_server(wasm.clone(), None).await;
    let url = format!("http://{addr}/offline.wasm");
    let path = fetch_module(&url, &hex(&wasm), cache.path(), &options)
        .await
        .expect("fetches");

    let _ = stop.send(());
    task.await.expect("the server stops");
    let error = fetch_module_unpinned(&url, cache.path(), &options)
        .await
        .expect_err("the server is gone");
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(error.is_retryable());

    let again = fetch_module(&url, &hex(&wasm), cache.path(), &options)
        .await
        .expect("served from the cache");
    assert_eq!(again, path);

    // A corrupt cached file is not trusted: it is removed and fetched again (and here the
    // network is gone).
    std::fs::write(&path, b"\0asm\x01\0\0\0corrupt").expect("corrupts");
    let error = fetch_module(&url, &hex(&wasm), cache.path(), &options)
        .await
        .expect_err("not a hit");
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(!path.exists(), "the corrupt file is removed");

    // An oci:// module is served from the cache once the registry is gone too.
    let served = Served::start().await;
    let reference = Reference::parse(&served.url("weft/offline:v1")).expect("a reference");
    weft_registry::Client::default()
        .push_module(&reference, &wasm)
        .await
        .expect("pushes");
    let url = served.url("weft/offline:v1");
    fetch_module(&url, &hex(&wasm), cache.path(), &options)
        .await
        .expect("fetches");
    drop(served);
    fetch_module(&url, &hex(&wasm), cache.path(), &options)
        .await
        .expect("a cache hit without the registry");
}

#[tokio::test]
async fn wrong_sha256_is_rejected_with_both_digests() {
    let cache = TempDir::new("cache");
    let options = ClientOptions::default();
    let wasm = module("wrong");
    let (addr, _stop, _task) = file_server(wasm.clone(), None).await;
    let url = format!("http://{addr}/wrong.wasm");
    let wanted = hex(b"another module");
    let error = fetch_module(&url, &wanted, cache.path(), &options)
        .await
        .expect_err("the wrong module");
    let message = error.to_string();
    assert!(matches!(error, Error::DigestMismatch { .. }), "{message}");
    assert!(message.contains(&wanted) && message.contains(&hex(&wasm)), "{message}");
    assert!(!cache_path(cache.path(), &wanted).exists());
    assert!(!cache_path(cache.path(), &hex(&wasm)).exists());

    let error = fetch_module(&url, "not-a-digest", cache.path(), &options)
        .await
        .expect_err("not a digest");
    assert!(matches!(error, Error::InvalidDigest { .. }), "{error}");
}

#[tokio::test]
async fn unpinned_fetches_report_the_sha256() {
    let cache = TempDir::new("cache");
    let served = Served::start().await;
    let wasm = module("unpinned");
    let digest = served
        .registry
        .put_module("weft/unpinned", "v3", &wasm)
        .await
        .expect("puts");
    let (path, sha256) =
        fetch_module_unpinned(&served.url("weft/unpinned:v3"), cache.path(), &ClientOptions::default())
            .await
            .expect("fetches");
    assert_eq!(sha256, hex(&wasm));
    assert_eq!(path, cache_path(cache.path(), &sha256));
    let (_, by_digest) = fetch_module_unpinned(
        &served.url(&format!("weft/unpinned@{digest}")),
        cache.path(),
        &ClientOptions::default(),
    )
    .await
    .expect("fetches by digest");
    assert_eq!(by_digest, sha256);
}

#[tokio::test]
async fn what_is_not_a_module_or_too_large_or_needs_credentials_is_refused() {
    let cache = TempDir::new("cache");
    let (addr, _stop, _task) = file_server(b"<html>not wasm</html>".to_vec(), None).await;
    let url = format!("http://{addr}/x.wasm");
    let error = fetch_module_unpinned(&url, cache.path(), &ClientOptions::default())
        .await
        .expect_err("not wasm");
    assert!(matches!(error, Error::InvalidModule { .. }), "{error}");

    let small = ClientOptions {
        max_module_size: 8,
        ..ClientOptions::default()
    };
    let error = fetch_module_unpinned(&url, cache.path(), &small)
        .await
        .expect_err("too large");
    assert!(matches!(error, Error::TooLarge { limit: 8, .. }), "{error}");

    let (addr, _stop, _task) = fixed_server(
        401,
        &[("www-authenticate", "Bearer realm=\"https://auth.example/token\"")],
        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
        None,
    )
    .await;
    let error = fetch_module_unpinned(
        &format!("oci://127.0.0.1:{}/private/filter:v1", addr.port()),
        cache.path(),
        &ClientOptions::default(),
    )
    .await
    .expect_err("needs credentials");
    let message = error.to_string();
    assert!(matches!(error, Error::Unauthorized { .. }), "{message}");
    assert!(
        message.contains("not supported yet") && message.contains("Bearer"),
        "{message}"
    );

    for url in ["ftp://x/y.wasm", "file://relative/path.wasm", "oci://nohost"] {
        let error = fetch_module_unpinned(url, cache.path(), &ClientOptions::default())
            .await
            .expect_err("refused");
        assert!(
            matches!(error, Error::InvalidUrl { .. } | Error::InvalidReference { .. }),
            "{url}: {error}"
        );
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it: (CA PEM, server config).
fn test_pki() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "weft-registry test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("a CA certificate");
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let server_key = rcgen::KeyPair::generate().expect("a server key");
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("a server certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![server.der().clone()], key)
        .expect("a server config");
    (ca_cert.pem(), Arc::new(config))
}

#[tokio::test]
async fn https_urls_are_fetched_with_an_extra_ca() {
    let cache = TempDir::new("cache");
    let files = TempDir::new("pki");
    let (ca_pem, server_config) = test_pki();
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("writes the CA");
    let wasm = module("https");
    let (addr, _stop, _task) = file_server(wasm.clone(), Some(tokio_rustls::TlsAcceptor::from(server_config))).await;
    let url = format!("https://{addr}/secure.wasm");

    let trusting = ClientOptions {
        ca_file: Some(ca_file),
        ..ClientOptions::default()
    };
    let path = fetch_module(&url, &hex(&wasm), cache.path(), &trusting)
        .await
        .expect("fetches over https");
    assert_eq!(std::fs::read(path).expect("cached"), wasm);

    let error = fetch_module_unpinned(&url, cache.path(), &ClientOptions::default())
        .await
        .expect_err("the test CA is not a system root");
    assert!(matches!(error, Error::Tls { .. } | Error::TlsSetup { .. }), "{error}");

    let missing = ClientOptions {
        ca_file: Some(files.path().join("missing.pem")),
        ..ClientOptions::default()
    };
    let error = fetch_module_unpinned(&url, cache.path(), &missing)
        .await
        .expect_err("no CA file");
    assert!(matches!(error, Error::TlsSetup { .. }), "{error}");
    assert!(error.to_string().contains("missing.pem"), "{error}");
}
