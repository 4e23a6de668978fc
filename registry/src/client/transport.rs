//! The HTTP/1.1 transport under the client: connections (plain or rustls), a small idle
//! pool, redirects, timeouts and body size limits.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, LOCATION, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Error;

/// Redirects followed in a row (registries send blob downloads to a storage backend).
const MAX_REDIRECTS: usize = 5;
/// How much of an error response's body is read for its message.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// Idle connections kept for reuse, over all origins.
const MAX_IDLE: usize = 8;

/// One HTTP exchange's answer, its body read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The url that answered (the last one, after redirects).
    pub(crate) url: Uri,
    pub(crate) method: Method,
}

impl Reply {
    /// The reply if its status is a success, else the error it stands for.
    pub(crate) fn success(self) -> Result<Self, Error> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    /// The error an unexpected status stands for, with the registry's error code and
    /// message when the body has them.
    pub(crate) fn into_error(self) -> Error {
        let method = self.method.to_string();
        let url = self.url.to_string();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = self
                .headers
                .get(WWW_AUTHENTICATE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            return Error::Unauthorized { method, url, challenge };
        }
        let (code, message) = registry_error(&self.body);
        Error::Status {
            method,
            url,
            status: self.status.as_u16(),
            code,
            message,
        }
    }

    /// A header as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// The first error of a registry's `{"errors":[{"code","message"}]}` body, or the start of
/// a body that is not one.
fn registry_error(body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(Errors { errors }) = serde_json::from_slice::<Errors>(body)
        && let Some(first) = errors.into_iter().next()
    {
        return (Some(first.code), first.message);
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    (None, text)
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    /// The host without brackets (an IPv6 address bare).
    host: String,
    port: u16,
}

impl Origin {
    fn of(url: &Uri) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.into(),
        };
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let authority = url.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in urls are not supported"));
        }
        let host = authority.host();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        Ok(Self {
            https,
            host: host.into(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }
}

/// Parses an absolute http(s) url.
pub(crate) fn parse_url(url: &str) -> Result<Uri, Error> {
    let uri: Uri = url.parse().map_err(|error: http::uri::InvalidUri| Error::InvalidUrl {
        url: url.into(),
        reason: error.to_string(),
    })?;
    Origin::of(&uri)?;
    Ok(uri)
}

/// Resolves a `Location` (absolute, absolute-path or relative) against `base`.
pub(crate) fn resolve(base: &Uri, location: &str) -> Result<Uri, Error> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return parse_url(location);
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{dir}/{location}")
    };
    parse_url(&format!("{scheme}://{authority}{path}"))
}

/// The transport: sends one request at a time per connection, keeps a few idle ones.
pub(crate) struct Http {
    timeout: Duration,
    ca_file: Option<std::path::PathBuf>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    idle: Mutex<Vec<(Origin, SendRequest<Full<Bytes>>)>>,
}

impl Http {
    pub(crate) fn new(timeout: Duration, ca_file: Option<std::path::PathBuf>) -> Self {
        Self {
            timeout,
            ca_file,
            tls: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends a request and reads the answer's body (at most `limit` bytes for a success;
    /// `what` names it in the error). GET and HEAD follow redirects. The whole exchange,
    /// redirects included, has the transport's timeout.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Uri,
        headers: &HeaderMap,
        body: Bytes,
        limit: u64,
        what: &str,
    ) -> Result<Reply, Error> {
        let exchange = async {
            let mut url = url.clone();
            let follows = method == Method::GET || method == Method::HEAD;
            for _ in 0..=MAX_REDIRECTS {
                let reply = self.exchange(&method, &url, headers, body.clone(), limit, what).await?;
                let redirect = matches!(reply.status.as_u16(), 301 | 302 | 303 | 307 | 308);
                match reply.header(LOCATION.as_str()) {
                    Some(location) if follows && redirect => {
                        tracing::debug!(from = %url, to = location, "following a redirect");
                        url = resolve(&url, location)?;
                    }
                    _ => return Ok(reply),
                }
            }
            Err(Error::TooManyRedirects {
                url: url.to_string(),
                limit: MAX_REDIRECTS,
            })
        };
        tokio::time::timeout(self.timeout, exchange).await.unwrap_or_else(|_| {
            Err(Error::Timeout {
                method: method.to_string(),
                url: url.to_string(),
                timeout: self.timeout,
            })
        })
    }

    /// One request and its answer. A reused connection that turns out closed is replaced
    /// once by a new one.
    async fn exchange(
        &self,
        method: &Method,
        url: &Uri,
        headers: &HeaderMap,
        body: Bytes,
        limit: u64,
        what: &str,
    ) -> Result<Reply, Error> {
        let origin = Origin::of(url)?;
        let http_error = |source| Error::Http {
            method: method.to_string(),
            url: url.to_string(),
            source,
        };
        let (mut sender, reused) = self.connection(&origin, url).await?;
        let response = match sender.send_request(build(method, url, headers, body.clone())?).await {
            Ok(response) => response,
            Err(error) if reused && (error.is_closed() || error.is_incomplete_message() || error.is_canceled()) => {
                tracing::debug!(%url, %error, "an idle connection was closed; reconnecting");
                sender = self.connect(&origin, url).await?;
                sender
                    .send_request(build(method, url, headers, body)?)
                    .await
                    .map_err(http_error)?
            }
            Err(error) => return Err(http_error(error)),
        };
        let (parts, mut incoming) = response.into_parts();
        let success = parts.status.is_success();
        let limit = if success { limit } else { ERROR_BODY_LIMIT };
        if success && incoming.size_hint().lower() > limit {
            return Err(Error::TooLarge {
                what: what.into(),
                url: url.to_string(),
                limit,
            });
        }
        let mut buffer = BytesMut::new();
        let mut complete = true;
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(http_error)?;
            if let Ok(data) = frame.into_data() {
                if (buffer.len() + data.len()) as u64 > limit {
                    if success {
                        return Err(Error::TooLarge {
                            what: what.into(),
                            url: url.to_string(),
                            limit,
                        });
                    }
                    complete = false;
                    break;
                }
                buffer.extend_from_slice(&data);
            }
        }
        if complete {
            self.put_idle(origin, sender);
        }
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: buffer.freeze(),
            url: url.clone(),
            method: method.clone(),
        })
    }

    /// An idle connection to `origin` ready for a request, else a new one.
    async fn connection(&self, origin: &Origin, url: &Uri) -> Result<(SendRequest<Full<Bytes>>, bool), Error> {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|(_, sender)| !sender.is_closed());
            if let Some(index) = idle
                .iter()
                .position(|(idle_origin, sender)| idle_origin == origin && sender.is_ready())
            {
                let (_, sender) = idle.swap_remove(index);
                return Ok((sender, true));
            }
        }
        Ok((self.connect(origin, url).await?, false))
    }

    fn put_idle(&self, origin: Origin, sender: SendRequest<Full<Bytes>>) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push((origin, sender));
        }
    }

    /// A new connection: TCP, then TLS for https, then the HTTP/1.1 handshake.
    async fn connect(&self, origin: &Origin, url: &Uri) -> Result<SendRequest<Full<Bytes>>, Error> {
        let tcp = TcpStream::connect((origin.host.as_str(), origin.port))
            .await
            .map_err(|source| Error::Connect {
                url: url.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if origin.https {
            let config = self.tls_config()?;
            let name = rustls::pki_types::ServerName::try_from(origin.host.clone()).map_err(|_| Error::InvalidUrl {
                url: url.to_string(),
                reason: "the host is not a valid TLS server name".into(),
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| Error::Tls {
                    url: url.to_string(),
                    source,
                })?;
            handshake(TokioIo::new(tls), url).await
        } else {
            handshake(TokioIo::new(tcp), url).await
        }
    }

    /// The TLS client configuration, built on first use: the ring provider, the system's
    /// trust roots plus the CA file's certificates, ALPN `http/1.1`.
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        self.tls
            .get_or_init(|| tls_config(self.ca_file.as_deref()))
            .clone()
            .map_err(|reason| Error::TlsSetup { reason })
    }
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "reading the system's trust roots");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system trust roots");
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|error| format!("reading the CA file {}: {error}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("the CA file {} holds no certificate", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|error| format!("a certificate in the CA file {}: {error}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trust roots: the system store is empty and no CA file was given".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("tls protocol versions: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn handshake<T>(io: T, url: &Uri) -> Result<SendRequest<Full<Bytes>>, Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|source| Error::Http {
            method: "CONNECT".into(),
            url: url.to_string(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "registry connection ended");
        }
    });
    Ok(sender)
}

/// The request for `url`: origin-form target, `Host`, `User-Agent`, `Content-Length` on
/// methods that carry a body.
fn build(method: &Method, url: &Uri, headers: &HeaderMap, body: Bytes) -> Result<http::Request<Full<Bytes>>, Error> {
    let target = url.path_and_query().map_or("/", |p| p.as_str());
    let authority = url.authority().map(|a| a.as_str()).unwrap_or_default();
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(target)
        .header(HOST, authority)
        .header(USER_AGENT, concat!("weft-registry/", env!("CARGO_PKG_VERSION")));
    if !(method == Method::GET || method == Method::HEAD) {
        builder = builder.header(CONTENT_LENGTH, body.len());
    }
    let mut request = builder.body(Full::new(body)).map_err(|error| Error::InvalidUrl {
        url: url.to_string(),
        reason: error.to_string(),
    })?;
    for (name, value) in headers {
        request.headers_mut().append(name, value.clone());
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_request_url() {
        let base = parse_url("http://127.0.0.1:5000/v2/a/blobs/uploads/").expect("parses");
        assert_eq!(
            resolve(&base, "/v2/a/blobs/uploads/x?s=1")
                .expect("resolves")
                .to_string(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x?s=1"
        );
        assert_eq!(
            resolve(&base, "x").expect("resolves").to_string(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x"
        );
        assert_eq!(
            resolve(&base, "https://storage.example/b")
                .expect("resolves")
                .to_string(),
            "https://storage.example/b"
        );
        assert!(parse_url("ftp://x/y").is_err());
        assert!(parse_url("http://user:pw@x/y").is_err());
    }

    #[test]
    fn registry_error_bodies_give_code_and_message() {
        let (code, message) =
            registry_error(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#);
        assert_eq!(code.as_deref(), Some("MANIFEST_UNKNOWN"));
        assert_eq!(message, "manifest unknown");
        assert_eq!(registry_error(b" not found\n"), (None, "not found".into()));
    }
}
