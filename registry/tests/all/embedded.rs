//! The client against the embedded registry, and the registry's API answers.

use bytes::Bytes;
use weft_registry::image::{ImageVariant, WasmImage, media_type};
use weft_registry::server::Limits;
use weft_registry::{Client, Digest, Error, Reference, RegistryHost};

use crate::support::{Served, module, request, upload_blob};

fn sha256_hex(bytes: &[u8]) -> String {
    Digest::of(bytes).hex().to_owned()
}

#[tokio::test]
async fn modules_push_pull_resolve_and_list() {
    let served = Served::start().await;
    let client = Client::default();
    let router = module("router");
    let reference = Reference::parse(&served.url("weft/router:v1")).expect("a reference");

    let pushed = client.push_module(&reference, &router).await.expect("pushes");
    assert_eq!(pushed.module_sha256, sha256_hex(&router));
    assert_eq!(pushed.manifest_digest, WasmImage::new(router.clone()).manifest_digest);
    assert_eq!(
        pushed.reference.to_string(),
        served.url(&format!("weft/router@{}", pushed.manifest_digest))
    );
    let again = client.push_module(&reference, &router).await.expect("pushes again");
    assert_eq!(again, pushed, "pushing is deterministic");

    assert_eq!(
        client.resolve(&reference).await.expect("resolves"),
        pushed.manifest_digest
    );
    assert_eq!(
        client.resolve(&pushed.reference).await.expect("resolves pinned"),
        pushed.manifest_digest
    );

    for reference in [&reference, &pushed.reference] {
        let pulled = client.pull_module(reference).await.expect("pulls");
        assert_eq!(pulled.module, router);
        assert_eq!(pulled.variant, ImageVariant::Oci);
        assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
        assert_eq!(pulled.module_sha256, pushed.module_sha256);
    }

    let authz = module("authz");
    let authz_ref = Reference::parse(&served.url("weft/authz:v2")).expect("a reference");
    let authz_pushed = client.push_module(&authz_ref, &authz).await.expect("pushes");
    let latest = Reference::parse(&served.url("weft/router")).expect("a reference");
    assert_eq!(latest.tag(), Some("latest"));
    client.push_module(&latest, &router).await.expect("pushes latest");
    let first_party = served
        .registry
        .put_module("first/party/telemetry", "v1", &module("telemetry"))
        .await
        .expect("puts without HTTP");

    let listed = client
        .list(&RegistryHost::parse(&served.url("")).expect("a host"))
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
            ("first/party/telemetry".into(), "v1".into(), first_party.clone()),
            ("weft/authz".into(), "v2".into(), authz_pushed.manifest_digest),
            ("weft/router".into(), "latest".into(), pushed.manifest_digest.clone()),
            ("weft/router".into(), "v1".into(), pushed.manifest_digest),
        ]
    );

    let telemetry = Reference::parse(&served.url("first/party/telemetry:v1")).expect("a reference");
    let pulled = client
        .pull_module(&telemetry)
        .await
        .expect("pulls what put_module stored");
    assert_eq!(pulled.module, module("telemetry"));
    assert_eq!(pulled.manifest_digest, first_party);
}

#[tokio::test]
async fn pushing_refuses_what_is_not_wasm_and_unknown_names_are_not_found() {
    let served = Served::start().await;
    let client = Client::default();
    let reference = Reference::parse(&served.url("weft/x:v1")).expect("a reference");
    let error = client.push_module(&reference, b"hello").await.expect_err("not wasm");
    assert!(matches!(error, Error::InvalidModule { .. }), "{error}");

    let error = client.pull_module(&reference).await.expect_err("nothing there");
    assert!(error.is_not_found(), "{error}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("MANIFEST_UNKNOWN"), "{error}");
}

/// A gzip-compressed (or plain) tar holding `plugin.wasm` and another file.
fn compat_layer(module: &[u8], gzip: bool) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in [("etc/info", &b"compat"[..]), ("plugin.wasm", module)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).expect("appends");
    }
    let tar = builder.into_inner().expect("a tar");
    if !gzip {
        return tar;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &tar).expect("compresses");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn compat_images_oci_and_docker_are_pulled() {
    let served = Served::start().await;
    let base = served.http("");
    let wasm = module("compat");
    let client = Client::default();
    let cases = [
        (
            "oci-gzip",
            media_type::OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            media_type::OCI_LAYER_TAR_GZIP,
            true,
        ),
        (
            "docker-gzip",
            media_type::DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            media_type::DOCKER_LAYER_TAR_GZIP,
            true,
        ),
        (
            "oci-tar",
            media_type::OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            media_type::OCI_LAYER_TAR,
            false,
        ),
    ];
    for (tag, manifest_type, config_type, layer_type, gzip) in cases {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer = compat_layer(&wasm, gzip);
        let config_digest = upload_blob(&base, "compat/filter", config).await;
        let layer_digest = upload_blob(&base, "compat/filter", &layer).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": layer_type, "digest": layer_digest, "size": layer.len() }],
            "annotations": { "module.wasm.image/variant": "compat" },
        })
        .to_string();
        let put = request(
            "PUT",
            &format!("{base}/v2/compat/filter/manifests/{tag}"),
            &[("content-type", manifest_type)],
            manifest.clone(),
        )
        .await;
        assert_eq!(put.status, 201, "{put:?}");
        assert_eq!(
            put.header("docker-content-digest"),
            Digest::of(manifest.as_bytes()).to_string()
        );

        let reference = Reference::parse(&served.url(&format!("compat/filter:{tag}"))).expect("a reference");
        let pulled = client.pull_module(&reference).await.expect("pulls a compat image");
        assert_eq!(pulled.variant, ImageVariant::Compat, "{tag}");
        assert_eq!(pulled.module, wasm, "{tag}");
        assert_eq!(pulled.module_sha256, sha256_hex(&wasm));
        assert_eq!(pulled.manifest_digest, Digest::of(manifest.as_bytes()));
    }
}

#[tokio::test]
async fn tampered_blobs_are_rejected_naming_both_digests() {
    let served = Served::start().await;
    let client = Client::default();
    let wasm = module("tamper");
    let reference = Reference::parse(&served.url("weft/tamper:v1")).expect("a reference");
    client.push_module(&reference, &wasm).await.expect("pushes");

    let expected = Digest::of(&wasm);
    let blob = served.dir.path().join("blobs/sha256").join(expected.hex());
    let mut tampered = std::fs::read(&blob).expect("the layer is stored by digest");
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&blob, &tampered).expect("rewrites the blob");

    let error = client.pull_module(&reference).await.expect_err("tampered");
    let Error::DigestMismatch {
        expected: want, actual, ..
    } = &error
    else {
        panic!("not a digest mismatch: {error}");
    };
    assert_eq!(*want, expected.to_string());
    assert_eq!(*actual, Digest::of(&tampered).to_string());
    let message = error.to_string();
    assert!(
        message.contains(&expected.to_string()) && message.contains(actual),
        "{message}"
    );
}

#[tokio::test]
async fn manifests_that_do_not_match_their_digest_are_rejected() {
    let served = Served::start().await;
    let client = Client::default();
    let reference = Reference::parse(&served.url("weft/pinned:v1")).expect("a reference");
    let pushed = client.push_module(&reference, &module("pinned")).await.expect("pushes");

    // Pinned to a digest the repository does not have: not found.
    let other = reference.pinned(Digest::of(b"something else"));
    assert!(client.pull_module(&other).await.expect_err("unknown").is_not_found());

    // The registry serves a manifest that is not the one pinned.
    let stored = served
        .dir
        .path()
        .join("blobs/sha256")
        .join(pushed.manifest_digest.hex());
    let mut manifest = std::fs::read(&stored).expect("the manifest is stored by digest");
    manifest.push(b' ');
    std::fs::write(&stored, &manifest).expect("rewrites the manifest");
    for reference in [&pushed.reference, &reference] {
        let error = client.pull_module(reference).await.expect_err("mismatch");
        let Error::DigestMismatch { expected, actual, .. } = &error else {
            panic!("not a digest mismatch: {error}");
        };
        assert_eq!(*expected, pushed.manifest_digest.to_string(), "{error}");
        assert_eq!(*actual, Digest::of(&manifest).to_string(), "{error}");
    }

    // Pushing to a digest that is not the image's.
    let error = client
        .push_module(&other, &module("pinned"))
        .await
        .expect_err("not this image's digest");
    assert!(matches!(error, Error::DigestMismatch { .. }), "{error}");
}

#[tokio::test]
async fn the_api_answers_as_the_distribution_spec_says() {
    let served = Served::start_with(Limits {
        max_blob_size: 64,
        max_manifest_size: 4096,
    })
    .await;
    let base = served.http("");

    let root = request("GET", &format!("{base}/v2/"), &[], Bytes::new()).await;
    assert_eq!(root.status, 200);
    assert_eq!(root.header("docker-distribution-api-version"), "registry/2.0");

    let unknown = Digest::of(b"unknown");
    let answer = request("GET", &format!("{base}/v2/a/b/manifests/v1"), &[], Bytes::new()).await;
    assert_eq!((answer.status, answer.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let answer = request("GET", &format!("{base}/v2/a/b/blobs/{unknown}"), &[], Bytes::new()).await;
    assert_eq!((answer.status, answer.error_code().as_str()), (404, "BLOB_UNKNOWN"));
    let answer = request("GET", &format!("{base}/v2/a/b/tags/list"), &[], Bytes::new()).await;
    assert_eq!((answer.status, answer.error_code().as_str()), (404, "NAME_UNKNOWN"));
    let answer = request("GET", &format!("{base}/v2/Bad/tags/list"), &[], Bytes::new()).await;
    assert_eq!((answer.status, answer.error_code().as_str()), (400, "NAME_INVALID"));
    let answer = request("GET", &format!("{base}/v2/a/blobs/sha256:00"), &[], Bytes::new()).await;
    assert_eq!((answer.status, answer.error_code().as_str()), (400, "DIGEST_INVALID"));
    let answer = request("DELETE", &format!("{base}/v2/a/blobs/{unknown}"), &[], Bytes::new()).await;
    assert_eq!((answer.status, answer.error_code().as_str()), (405, "UNSUPPORTED"));
    assert_eq!(answer.header("allow"), "GET, HEAD");

    // The session flow: POST, PATCH, PATCH, PUT ?digest= with the last chunk.
    let blob = b"0123456789abcdefghij";
    let digest = Digest::of(blob);
    let started = request("POST", &format!("{base}/v2/weft/s/blobs/uploads/"), &[], Bytes::new()).await;
    assert_eq!(started.status, 202);
    assert_eq!(started.header("range"), "0-0");
    let location = started.header("location").to_owned();
    assert!(location.starts_with("/v2/weft/s/blobs/uploads/"), "{location}");
    assert_eq!(
        started.header("docker-upload-uuid"),
        location.rsplit('/').next().expect("an id")
    );
    let patched = request(
        "PATCH",
        &format!("{base}{location}"),
        &[("content-range", "0-9")],
        &blob[..10],
    )
    .await;
    assert_eq!((patched.status, patched.header("range")), (202, "0-9"));
    let wrong = request(
        "PATCH",
        &format!("{base}{location}"),
        &[("content-range", "0-4")],
        &blob[..5],
    )
    .await;
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (416, "BLOB_UPLOAD_INVALID")
    );
    assert_eq!(wrong.header("range"), "0-9");
    let patched = request("PATCH", &format!("{base}{location}"), &[], &blob[10..15]).await;
    assert_eq!((patched.status, patched.header("range")), (202, "0-14"));
    let status = request("GET", &format!("{base}{location}"), &[], Bytes::new()).await;
    assert_eq!((status.status, status.header("range")), (204, "0-14"));
    let finished = request("PUT", &format!("{base}{location}?digest={digest}"), &[], &blob[15..]).await;
    assert_eq!(finished.status, 201, "{finished:?}");
    assert_eq!(finished.header("location"), format!("/v2/weft/s/blobs/{digest}"));
    assert_eq!(finished.header("docker-content-digest"), digest.to_string());
    let head = request("HEAD", &format!("{base}/v2/weft/s/blobs/{digest}"), &[], Bytes::new()).await;
    assert_eq!((head.status, head.header("content-length")), (200, "20"));
    assert!(head.body.is_empty());
    let got = request("GET", &format!("{base}/v2/weft/s/blobs/{digest}"), &[], Bytes::new()).await;
    assert_eq!(&got.body[..], blob);

    // A session closed with the wrong digest is refused and gone.
    let started = request("POST", &format!("{base}/v2/weft/s/blobs/uploads/"), &[], Bytes::new()).await;
    let location = started.header("location").to_owned();
    let refused = request("PUT", &format!("{base}{location}?digest={unknown}"), &[], &b"xyz"[..]).await;
    assert_eq!((refused.status, refused.error_code().as_str()), (400, "DIGEST_INVALID"));
    let gone = request("GET", &format!("{base}{location}"), &[], Bytes::new()).await;
    assert_eq!((gone.status, gone.error_code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    // Monolithic: POST ?digest= with the bytes.
    let small = b"monolithic";
    let small_digest = Digest::of(small);
    let posted = request(
        "POST",
        &format!(
            "{base}/v2/weft/s/blobs/uploads/?digest={}",
            small_digest.to_string().replace(':', "%3A")
        ),
        &[],
        &small[..],
    )
    .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let bad = request(
        "POST",
        &format!("{base}/v2/weft/s/blobs/uploads/?digest={unknown}"),
        &[],
        &small[..],
    )
    .await;
    assert_eq!((bad.status, bad.error_code().as_str()), (400, "DIGEST_INVALID"));

    // Uploads are limited.
    let huge = request(
        "POST",
        &format!("{base}/v2/weft/s/blobs/uploads/?digest={unknown}"),
        &[],
        vec![0u8; 65],
    )
    .await;
    assert_eq!((huge.status, huge.error_code().as_str()), (413, "SIZE_INVALID"));

    // Manifests: blobs must exist, digests must match, JSON must be a manifest.
    let manifest = |layer: &Digest, size: usize| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": { "mediaType": media_type::WASM_CONFIG, "digest": small_digest, "size": small.len() },
            "layers": [{ "mediaType": media_type::WASM_LAYER, "digest": layer, "size": size }],
        })
        .to_string()
    };
    let oci = [("content-type", media_type::OCI_MANIFEST)];
    let missing = request(
        "PUT",
        &format!("{base}/v2/weft/s/manifests/v1"),
        &oci,
        manifest(&unknown, 3),
    )
    .await;
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    let invalid = request("PUT", &format!("{base}/v2/weft/s/manifests/v1"), &oci, "{").await;
    assert_eq!(
        (invalid.status, invalid.error_code().as_str()),
        (400, "MANIFEST_INVALID")
    );
    let good = manifest(&digest, blob.len());
    let by_wrong_digest = request(
        "PUT",
        &format!("{base}/v2/weft/s/manifests/{unknown}"),
        &oci,
        good.clone(),
    )
    .await;
    assert_eq!(
        (by_wrong_digest.status, by_wrong_digest.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
    let put = request("PUT", &format!("{base}/v2/weft/s/manifests/v1"), &oci, good.clone()).await;
    assert_eq!(put.status, 201);
    let good_digest = Digest::of(good.as_bytes());
    assert_eq!(put.header("location"), format!("/v2/weft/s/manifests/{good_digest}"));
    let head = request("HEAD", &format!("{base}/v2/weft/s/manifests/v1"), &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), media_type::OCI_MANIFEST);
    assert_eq!(head.header("docker-content-digest"), good_digest.to_string());
    assert_eq!(head.header("content-length"), good.len().to_string());
    let by_digest = request(
        "GET",
        &format!("{base}/v2/weft/s/manifests/{good_digest}"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(by_digest.body, good.as_bytes());

    // Tags list and catalog, paginated.
    request("PUT", &format!("{base}/v2/weft/s/manifests/v2"), &oci, good.clone()).await;
    request("PUT", &format!("{base}/v2/weft/t/manifests/v1"), &oci, good.clone()).await;
    let tags = request("GET", &format!("{base}/v2/weft/s/tags/list"), &[], Bytes::new()).await;
    assert_eq!(
        tags.json(),
        serde_json::json!({ "name": "weft/s", "tags": ["v1", "v2"] })
    );
    let page = request("GET", &format!("{base}/v2/_catalog?n=1"), &[], Bytes::new()).await;
    assert_eq!(page.json(), serde_json::json!({ "repositories": ["weft/s"] }));
    assert_eq!(page.header("link"), "</v2/_catalog?last=weft/s&n=1>; rel=\"next\"");
    let page = request("GET", &format!("{base}/v2/_catalog?n=1&last=weft/s"), &[], Bytes::new()).await;
    assert_eq!(page.json(), serde_json::json!({ "repositories": ["weft/t"] }));

    // Deleting a tag leaves the manifest; deleting the manifest removes its tags.
    let deleted = request("DELETE", &format!("{base}/v2/weft/s/manifests/v1"), &[], Bytes::new()).await;
    assert_eq!(deleted.status, 202);
    let answer = request("GET", &format!("{base}/v2/weft/s/manifests/v1"), &[], Bytes::new()).await;
    assert_eq!(answer.status, 404);
    let deleted = request(
        "DELETE",
        &format!("{base}/v2/weft/s/manifests/{good_digest}"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(deleted.status, 202);
    let tags = request("GET", &format!("{base}/v2/weft/s/tags/list"), &[], Bytes::new()).await;
    assert_eq!(tags.json()["tags"], serde_json::json!([]));
}

#[tokio::test]
async fn put_module_checks_names_and_reopened_stores_keep_their_content() {
    let dir = crate::support::TempDir::new("reopen");
    let registry = weft_registry::server::Registry::open(dir.path()).expect("opens");
    let digest = registry
        .put_module("weft/router", "v1", &module("reopen"))
        .await
        .expect("puts");
    assert!(registry.put_module("Weft", "v1", &module("x")).await.is_err());
    assert!(registry.put_module("weft/x", "-bad", &module("x")).await.is_err());
    assert!(registry.put_module("weft/x", "v1", b"not wasm").await.is_err());
    drop(registry);

    let registry = weft_registry::server::Registry::open(dir.path()).expect("reopens");
    let response = registry
        .handle(
            http::Request::get("/v2/weft/router/manifests/v1")
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("a request"),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["docker-content-digest"].to_str().expect("text"),
        digest.to_string()
    );
}
