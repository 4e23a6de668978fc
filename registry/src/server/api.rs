//! The distribution API's routes and handlers.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Empty, Full};
use tokio::io::{AsyncRead as _, AsyncWriteExt as _, ReadBuf};

use super::{Limits, ResponseBody, Store};
use crate::Digest;
use crate::fetch::percent_decode;
use crate::image::{WireManifest, media_type};
use crate::reference::{check_repository, check_tag};

const API_VERSION_HEADER: &str = "docker-distribution-api-version";
const DIGEST_HEADER: &str = "docker-content-digest";
const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";

/// A request's endpoint, from its path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(&'a str),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(&'a str, &'a str),
    /// `/v2/<name>/blobs/<digest>`
    Blob(&'a str, &'a str),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(&'a str),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(&'a str, &'a str),
}

impl<'a> Route<'a> {
    /// The route of a (percent-decoded) path. Names may contain `/`, so the endpoint is
    /// read from the path's end.
    fn of(path: &'a str) -> Option<Self> {
        if path == "/v2" || path == "/v2/" {
            return Some(Self::Base);
        }
        let rest = path.strip_prefix("/v2/")?;
        if rest == "_catalog" {
            return Some(Self::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Self::Tags(name));
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Some(Self::UploadStart(name));
        }
        let (before, last) = rest.rsplit_once('/')?;
        let (name, kind) = before.rsplit_once('/')?;
        match kind {
            "manifests" => Some(Self::Manifest(name, last)),
            "blobs" => Some(Self::Blob(name, last)),
            "uploads" => Some(Self::Upload(name.strip_suffix("/blobs")?, last)),
            _ => None,
        }
    }

    fn name(&self) -> Option<&'a str> {
        match *self {
            Self::Base | Self::Catalog => None,
            Self::Tags(name)
            | Self::Manifest(name, _)
            | Self::Blob(name, _)
            | Self::UploadStart(name)
            | Self::Upload(name, _) => Some(name),
        }
    }

    /// The methods the endpoint answers (for 405's `Allow`).
    fn allowed(&self) -> &'static str {
        match self {
            Self::Base | Self::Catalog | Self::Tags(_) => "GET, HEAD",
            Self::Manifest(..) => "GET, HEAD, PUT, DELETE",
            Self::Blob(..) => "GET, HEAD",
            Self::UploadStart(_) => "POST",
            Self::Upload(..) => "GET, PATCH, PUT, DELETE",
        }
    }
}

/// A response under construction, or an error in the spec's JSON form.
type Reply = Result<Response<ResponseBody>, ApiError>;

/// An error answer: status, the spec's code, a message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(error: &io::Error) -> Self {
        tracing::warn!(%error, "registry: store failure");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            format!("store failure: {error}"),
        )
    }

    fn into_response(self) -> Response<ResponseBody> {
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        let mut response = Response::new(full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl From<io::Error> for ApiError {
    fn from(error: io::Error) -> Self {
        Self::internal(&error)
    }
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A response with `status`, `headers` and `body`.
fn respond(status: StatusCode, headers: &[(&'static str, String)], body: ResponseBody) -> Reply {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "invalid header value"))?;
        response.headers_mut().insert(*name, value);
    }
    Ok(response)
}

/// Answers one request.
pub(super) async fn handle<B>(store: &Store, limits: &Limits, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = match route(store, limits, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "registry request");
    response
        .headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    response
}

async fn route<B>(store: &Store, limits: &Limits, request: Request<B>) -> Reply
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    let (parts, body) = request.into_parts();
    let path = percent_decode(parts.uri.path())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", "invalid percent-encoding"))?;
    let query = Query(parts.uri.query().unwrap_or_default());
    let Some(route) = Route::of(&path) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", "unknown endpoint"));
    };
    if let Some(name) = route.name() {
        check_repository(name).map_err(|reason| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", reason))?;
    }
    let method = &parts.method;
    let head = method == Method::HEAD;
    match (&route, method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => respond(
            StatusCode::OK,
            &[("content-type", "application/json".into())],
            if head { empty() } else { full(Bytes::from_static(b"{}")) },
        ),
        (Route::Catalog, Method::GET | Method::HEAD) => {
            let names = store.repositories().await?;
            let (page, next) = paginate(names, &query)?;
            let body = serde_json::json!({ "repositories": page });
            list_response(
                body,
                next.map(|last| format!("/v2/_catalog?last={last}&n={}", page.len())),
                head,
            )
        }
        (Route::Tags(name), Method::GET | Method::HEAD) => {
            let Some(tags) = store.tags(name).await? else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    format!("repository {name} is not known"),
                ));
            };
            let (page, next) = paginate(tags, &query)?;
            let body = serde_json::json!({ "name": name, "tags": page });
            list_response(
                body,
                next.map(|last| format!("/v2/{name}/tags/list?last={last}&n={}", page.len())),
                head,
            )
        }
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            get_manifest(store, name, reference, head).await
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            put_manifest(store, limits, name, reference, parts.headers.get(CONTENT_TYPE), body).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => delete_manifest(store, name, reference).await,
        (Route::Blob(name, digest), Method::GET | Method::HEAD) => get_blob(store, name, digest, head).await,
        (Route::UploadStart(name), Method::POST) => start_upload(store, limits, name, &query, body).await,
        (Route::Upload(name, id), method) => {
            let id = *id;
            let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            let size = if valid { store.upload_size(id).await? } else { None };
            let Some(size) = size else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "BLOB_UPLOAD_UNKNOWN",
                    format!("upload {id} is not known"),
                ));
            };
            match method {
                Method::GET => upload_status(StatusCode::NO_CONTENT, name, id, size),
                Method::PATCH => {
                    let range = parts.headers.get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
                    patch_upload(store, limits, name, id, size, range, body).await
                }
                Method::PUT => finish_upload(store, limits, name, id, &query, body).await,
                Method::DELETE => {
                    store.delete_upload(id).await?;
                    respond(StatusCode::NO_CONTENT, &[], empty())
                }
                _ => not_allowed(&route),
            }
        }
        _ => not_allowed(&route),
    }
}

fn not_allowed(route: &Route<'_>) -> Reply {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "the operation is unsupported",
    )
    .into_response();
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(route.allowed()));
    Ok(response)
}

/// A query string's parameters.
struct Query<'a>(&'a str);

impl Query<'_> {
    /// The first value of `key`, percent-decoded.
    fn get(&self, key: &str) -> Option<String> {
        self.0.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| percent_decode(v)).flatten()
        })
    }
}

/// The page of `items` (sorted) after `last`, at most `n` long, and the last item if more
/// follow.
fn paginate(items: Vec<String>, query: &Query<'_>) -> Result<(Vec<String>, Option<String>), ApiError> {
    let n = match query.get("n") {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID", "invalid n"))?,
        None => usize::MAX,
    };
    let last = query.get("last");
    let mut page: Vec<String> = items
        .into_iter()
        .filter(|item| last.as_ref().is_none_or(|last| item > last))
        .collect();
    if page.len() > n {
        page.truncate(n);
        let next = page.last().cloned();
        return Ok((page, next));
    }
    Ok((page, None))
}

fn list_response(body: serde_json::Value, next: Option<String>, head: bool) -> Reply {
    let bytes = Bytes::from(body.to_string());
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("content-length", bytes.len().to_string()),
    ];
    if let Some(next) = next {
        headers.push(("link", format!("<{next}>; rel=\"next\"")));
    }
    respond(StatusCode::OK, &headers, if head { empty() } else { full(bytes) })
}

/// A manifest reference: a tag or a digest.
enum ManifestRef<'a> {
    Tag(&'a str),
    Digest(Digest),
}

fn manifest_ref(reference: &str) -> Result<ManifestRef<'_>, ApiError> {
    if reference.contains(':') {
        Digest::parse(reference)
            .map(ManifestRef::Digest)
            .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", error.to_string()))
    } else {
        check_tag(reference)
            .map(|()| ManifestRef::Tag(reference))
            .map_err(|reason| ApiError::new(StatusCode::BAD_REQUEST, "TAG_INVALID", reason))
    }
}

fn manifest_unknown(name: &str, reference: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        format!("manifest {name}:{reference} is not known"),
    )
}

async fn get_manifest(store: &Store, name: &str, reference: &str, head: bool) -> Reply {
    let digest = match manifest_ref(reference)? {
        ManifestRef::Digest(digest) => digest,
        ManifestRef::Tag(tag) => store
            .tag(name, tag)
            .await?
            .ok_or_else(|| manifest_unknown(name, reference))?,
    };
    let media_type = store
        .manifest_type(name, &digest)
        .await?
        .ok_or_else(|| manifest_unknown(name, reference))?;
    let bytes = match tokio::fs::read(store.blob_path(&digest)).await {
        Ok(bytes) => Bytes::from(bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(manifest_unknown(name, reference)),
        Err(error) => return Err(error.into()),
    };
    respond(
        StatusCode::OK,
        &[
            ("content-type", media_type),
            ("content-length", bytes.len().to_string()),
            (DIGEST_HEADER, digest.to_string()),
            ("etag", format!("\"{digest}\"")),
        ],
        if head { empty() } else { full(bytes) },
    )
}

async fn put_manifest<B>(
    store: &Store,
    limits: &Limits,
    name: &str,
    reference: &str,
    content_type: Option<&HeaderValue>,
    body: B,
) -> Reply
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    let reference = manifest_ref(reference)?;
    let bytes = read_body(body, limits.max_manifest_size).await?;
    let digest = Digest::of(&bytes);
    if let ManifestRef::Digest(named) = &reference
        && *named != digest
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the manifest's digest is {digest}, not {named}"),
        ));
    }
    let invalid = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message);
    let manifest: WireManifest =
        serde_json::from_slice(&bytes).map_err(|error| invalid(format!("not a JSON manifest: {error}")))?;
    if manifest.schema_version != 2 {
        return Err(invalid(format!(
            "schemaVersion {} is not supported",
            manifest.schema_version
        )));
    }
    let header = content_type
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or(value).trim().to_owned())
        .filter(|value| !value.is_empty());
    let media_type = match (header, &manifest.media_type) {
        (Some(header), Some(field)) if header != *field => {
            return Err(invalid(format!(
                "Content-Type {header} differs from the mediaType field {field}"
            )));
        }
        (Some(header), _) => header,
        (None, Some(field)) => field.clone(),
        (None, None) => return Err(invalid("no Content-Type and no mediaType field".into())),
    };
    if !media_type::ALL_MANIFESTS.contains(&media_type.as_str()) {
        return Err(invalid(format!("unsupported manifest media type {media_type}")));
    }
    let blob_unknown = |digest: &Digest| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!("the manifest refers to {digest}, which is not in the repository"),
        )
    };
    if media_type == media_type::OCI_INDEX || media_type == media_type::DOCKER_MANIFEST_LIST {
        for descriptor in manifest.manifests.unwrap_or_default() {
            let descriptor = descriptor.into_domain().map_err(invalid)?;
            if store.manifest_type(name, &descriptor.digest).await?.is_none() {
                return Err(blob_unknown(&descriptor.digest));
            }
        }
    } else {
        let config = manifest.config.ok_or_else(|| invalid("no config descriptor".into()))?;
        for descriptor in std::iter::once(config).chain(manifest.layers) {
            let descriptor = descriptor.into_domain().map_err(invalid)?;
            match store.blob_size(&descriptor.digest).await? {
                None => return Err(blob_unknown(&descriptor.digest)),
                Some(size) if size != descriptor.size => {
                    return Err(invalid(format!(
                        "blob {} is {size} bytes, its descriptor says {}",
                        descriptor.digest, descriptor.size
                    )));
                }
                Some(_) => {}
            }
        }
    }
    store.put_blob(&bytes).await?;
    let tag = match reference {
        ManifestRef::Tag(tag) => Some(tag),
        ManifestRef::Digest(_) => None,
    };
    store.link_manifest(name, &digest, &media_type, tag).await?;
    respond(
        StatusCode::CREATED,
        &[
            ("location", format!("/v2/{name}/manifests/{digest}")),
            (DIGEST_HEADER, digest.to_string()),
            ("content-length", "0".into()),
        ],
        empty(),
    )
}

async fn delete_manifest(store: &Store, name: &str, reference: &str) -> Reply {
    let existed = match manifest_ref(reference)? {
        ManifestRef::Tag(tag) => store.delete_tag(name, tag).await?,
        ManifestRef::Digest(digest) => store.delete_manifest(name, &digest).await?,
    };
    if !existed {
        return Err(manifest_unknown(name, reference));
    }
    respond(StatusCode::ACCEPTED, &[("content-length", "0".into())], empty())
}

fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text).map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", error.to_string()))
}

async fn get_blob(store: &Store, name: &str, digest: &str, head: bool) -> Reply {
    let digest = parse_digest(digest)?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not in {name}"),
        )
    };
    let file = match tokio::fs::File::open(store.blob_path(&digest)).await {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(unknown()),
        Err(error) => return Err(error.into()),
    };
    let size = file.metadata().await?.len();
    let body = if head {
        empty()
    } else {
        FileBody {
            file,
            remaining: size,
            buffer: BytesMut::new(),
        }
        .boxed()
    };
    respond(
        StatusCode::OK,
        &[
            ("content-type", "application/octet-stream".into()),
            ("content-length", size.to_string()),
            (DIGEST_HEADER, digest.to_string()),
            ("etag", format!("\"{digest}\"")),
        ],
        body,
    )
}

async fn start_upload<B>(store: &Store, limits: &Limits, name: &str, query: &Query<'_>, body: B) -> Reply
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    if let Some(mount) = query.get("mount") {
        let digest = parse_digest(&mount)?;
        if store.blob_size(&digest).await?.is_some() {
            return blob_created(name, &digest);
        }
    }
    let id = store.new_upload().await?;
    let path = store.upload_path(&id);
    let size = append_body(body, &path, 0, limits.max_blob_size).await?;
    match query.get("digest") {
        Some(digest) => {
            let digest = parse_digest(&digest)?;
            commit(store, &id, &digest).await?;
            blob_created(name, &digest)
        }
        None => upload_status(StatusCode::ACCEPTED, name, &id, size),
    }
}

async fn patch_upload<B>(
    store: &Store,
    limits: &Limits,
    name: &str,
    id: &str,
    size: u64,
    content_range: Option<&str>,
    body: B,
) -> Reply
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    if let Some(range) = content_range {
        let start = range
            .trim()
            .trim_start_matches("bytes ")
            .split('-')
            .next()
            .and_then(|start| start.trim().parse::<u64>().ok());
        if start != Some(size) {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                format!("the upload has {size} bytes; Content-Range {range} does not continue it"),
            )
            .into_response();
            let status = upload_status(StatusCode::RANGE_NOT_SATISFIABLE, name, id, size)?;
            for header in [LOCATION.as_str(), "range", UPLOAD_UUID_HEADER] {
                if let Some(value) = status.headers().get(header) {
                    response.headers_mut().insert(header, value.clone());
                }
            }
            return Ok(response);
        }
    }
    let size = append_body(body, &store.upload_path(id), size, limits.max_blob_size).await?;
    upload_status(StatusCode::ACCEPTED, name, id, size)
}

async fn finish_upload<B>(store: &Store, limits: &Limits, name: &str, id: &str, query: &Query<'_>, body: B) -> Reply
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    let Some(digest) = query.get("digest") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "closing an upload needs ?digest=",
        ));
    };
    let digest = parse_digest(&digest)?;
    let size = store.upload_size(id).await?.unwrap_or(0);
    append_body(body, &store.upload_path(id), size, limits.max_blob_size).await?;
    commit(store, id, &digest).await?;
    blob_created(name, &digest)
}

/// Turns an upload into the blob `digest`, refusing bytes that hash otherwise.
async fn commit(store: &Store, id: &str, digest: &Digest) -> Result<(), ApiError> {
    match store.commit_upload(id, digest).await? {
        Ok(()) => Ok(()),
        Err(actual) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the uploaded bytes hash to {actual}, not {digest}"),
        )),
    }
}

fn blob_created(name: &str, digest: &Digest) -> Reply {
    respond(
        StatusCode::CREATED,
        &[
            ("location", format!("/v2/{name}/blobs/{digest}")),
            (DIGEST_HEADER, digest.to_string()),
            ("content-length", "0".into()),
        ],
        empty(),
    )
}

/// An upload session's state: `Location`, `Range` (inclusive end), its id.
fn upload_status(status: StatusCode, name: &str, id: &str, size: u64) -> Reply {
    respond(
        status,
        &[
            (LOCATION.as_str(), format!("/v2/{name}/blobs/uploads/{id}")),
            ("range", format!("0-{}", size.saturating_sub(1))),
            (UPLOAD_UUID_HEADER, id.to_owned()),
            (CONTENT_LENGTH.as_str(), "0".into()),
        ],
        empty(),
    )
}

/// Reads a whole request body of at most `limit` bytes.
async fn read_body<B>(body: B, limit: u64) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| body_error(&error))?;
        if let Ok(data) = frame.into_data() {
            if (buffer.len() + data.len()) as u64 > limit {
                return Err(too_large(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

/// Appends a request body to an upload's file that has `size` bytes; the upload may not
/// grow past `limit`. Returns the new size.
async fn append_body<B>(body: B, path: &Path, size: u64, limit: u64) -> Result<u64, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    let mut file = tokio::fs::OpenOptions::new().append(true).open(path).await?;
    let mut body = std::pin::pin!(body);
    let mut size = size;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| body_error(&error))?;
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            if size > limit {
                return Err(too_large(limit));
            }
            file.write_all(&data).await?;
        }
    }
    file.flush().await?;
    Ok(size)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "SIZE_INVALID",
        format!("larger than the limit of {limit} bytes"),
    )
}

fn body_error(error: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "BLOB_UPLOAD_INVALID",
        format!("reading the request body: {error}"),
    )
}

/// A blob streamed from its file: exactly the size the file had when opened.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buffer: BytesMut,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining.min(64 * 1024)).unwrap_or(64 * 1024);
        this.buffer.resize(want, 0);
        let mut read = ReadBuf::new(&mut this.buffer[..want]);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the blob file shrank while being sent",
            ))));
        }
        this.remaining -= n as u64;
        let chunk = this.buffer.split_to(n).freeze();
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_from_the_end_of_the_path() {
        assert_eq!(Route::of("/v2/"), Some(Route::Base));
        assert_eq!(Route::of("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(Route::of("/v2/weft/router/tags/list"), Some(Route::Tags("weft/router")));
        assert_eq!(
            Route::of("/v2/weft/router/manifests/v1"),
            Some(Route::Manifest("weft/router", "v1"))
        );
        assert_eq!(
            Route::of("/v2/a/blobs/manifests/v1"),
            Some(Route::Manifest("a/blobs", "v1")),
            "components named like endpoints"
        );
        assert_eq!(Route::of("/v2/a/blobs/sha256:x"), Some(Route::Blob("a", "sha256:x")));
        assert_eq!(Route::of("/v2/a/b/blobs/uploads/"), Some(Route::UploadStart("a/b")));
        assert_eq!(Route::of("/v2/a/blobs/uploads"), Some(Route::UploadStart("a")));
        assert_eq!(Route::of("/v2/a/blobs/uploads/0f"), Some(Route::Upload("a", "0f")));
        assert_eq!(Route::of("/v2/a/uploads/0f"), None);
        assert_eq!(Route::of("/v1/a/manifests/x"), None);
        assert_eq!(Route::of("/v2/a"), None);
    }

    #[test]
    fn pages_follow_last_and_n() {
        let items: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let (page, next) = paginate(items.clone(), &Query("n=2")).expect("pages");
        assert_eq!(
            (page, next.as_deref()),
            (vec!["a".to_owned(), "b".to_owned()], Some("b"))
        );
        let (page, next) = paginate(items.clone(), &Query("n=2&last=b")).expect("pages");
        assert_eq!((page, next), (vec!["c".to_owned()], None));
        assert!(paginate(items, &Query("n=x")).is_err());
    }
}
