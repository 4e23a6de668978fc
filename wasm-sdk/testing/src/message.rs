//! Synthetic requests and responses, and what the upstream and the client get.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// A synthetic downstream request: `Request::get("/path").header("x-user", "ann")`.
///
/// Without a `host` header and with a path (not an absolute URI) as target, the request
/// carries `host: localhost`. [`Request::body`] sets `content-length` unless a header does.
/// Invalid parts (method, target, header names or values) make [`crate::FilterTest::run`]
/// panic with a message naming them.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    target: String,
    version: Version,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<Bytes>,
    sized: bool,
}

impl Request {
    /// A request with this method and target (`/path?query`, or an absolute URI).
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_owned(),
            version: Version::HTTP_11,
            headers: Vec::new(),
            body: Vec::new(),
            sized: false,
        }
    }

    /// A `GET`.
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    /// A `POST`.
    pub fn post(target: &str) -> Self {
        Self::new("POST", target)
    }

    /// A `PUT`.
    pub fn put(target: &str) -> Self {
        Self::new("PUT", target)
    }

    /// A `DELETE`.
    pub fn delete(target: &str) -> Self {
        Self::new("DELETE", target)
    }

    /// Adds a header line (several lines of one name are kept apart).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Sets `host` (the `:authority` filters see), replacing any.
    pub fn authority(mut self, authority: &str) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("host"));
        self.headers.push(("host".to_owned(), authority.as_bytes().to_vec()));
        self
    }

    /// The HTTP version (`request.protocol`). Default: HTTP/1.1.
    pub fn version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }

    /// The body, in one chunk (with `content-length`).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = vec![body.into()];
        self.sized = true;
        self
    }

    /// The body in chunks, as they arrive (no `content-length` is added).
    pub fn chunks<B: Into<Bytes>>(mut self, chunks: impl IntoIterator<Item = B>) -> Self {
        self.body = chunks.into_iter().map(Into::into).collect();
        self.sized = false;
        self
    }

    /// A JSON body with `content-type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(value.to_string())
    }

    /// The harness's form; `Err` names what is invalid.
    pub(crate) fn into_harness(self) -> Result<weft_proxy::harness::HarnessRequest, String> {
        let method =
            Method::from_bytes(self.method.as_bytes()).map_err(|e| format!("method {:?}: {e}", self.method))?;
        let (mut head, ()) = http::Request::builder()
            .method(method)
            .uri(self.target.as_str())
            .version(self.version)
            .body(())
            .map_err(|e| format!("target {:?}: {e}", self.target))?
            .into_parts();
        head.headers = header_map(&self.headers)?;
        if head.uri.authority().is_none() && !head.headers.contains_key(http::header::HOST) {
            head.headers
                .insert(http::header::HOST, HeaderValue::from_static("localhost"));
        }
        add_length(&mut head.headers, self.sized, &self.body);
        Ok(weft_proxy::harness::HarnessRequest { head, body: self.body })
    }
}

/// A synthetic upstream response: `Response::status(200).header("x-a", "1").body("hi")`.
///
/// [`Response::body`] sets `content-length` unless a header does. An invalid status, header
/// name or value makes [`crate::FilterTest::run`] panic with a message naming it.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<Bytes>,
    sized: bool,
}

impl Response {
    /// A response with this status and nothing else.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            sized: false,
        }
    }

    /// `200`.
    pub fn ok() -> Self {
        Self::status(200)
    }

    /// Adds a header line.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// The body, in one chunk (with `content-length`).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = vec![body.into()];
        self.sized = true;
        self
    }

    /// The body in chunks, as they arrive (no `content-length` is added).
    pub fn chunks<B: Into<Bytes>>(mut self, chunks: impl IntoIterator<Item = B>) -> Self {
        self.body = chunks.into_iter().map(Into::into).collect();
        self.sized = false;
        self
    }

    /// A JSON body with `content-type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(value.to_string())
    }

    /// The harness's form; `Err` names what is invalid.
    pub(crate) fn into_harness(self) -> Result<weft_proxy::harness::HarnessResponse, String> {
        let status = StatusCode::from_u16(self.status).map_err(|e| format!("status {}: {e}", self.status))?;
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = status;
        head.headers = header_map(&self.headers)?;
        add_length(&mut head.headers, self.sized, &self.body);
        Ok(weft_proxy::harness::HarnessResponse { head, body: self.body })
    }
}

fn header_map(lines: &[(String, Vec<u8>)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in lines {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header name {name:?}: {e}"))?;
        let value = HeaderValue::from_bytes(value).map_err(|e| format!("header {name:?} value: {e}"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn add_length(headers: &mut HeaderMap, sized: bool, body: &[Bytes]) {
    if sized && !headers.contains_key(http::header::CONTENT_LENGTH) {
        let length: usize = body.iter().map(Bytes::len).sum();
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// The value of header `name` if it has exactly one line, as text.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    match values.next() {
        None => first.to_str().ok(),
        Some(_) => None,
    }
}

fn all<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// The request after the filter's request phases: what the upstream gets when
/// [`crate::Outcome::forwarded`] (else, what it was when the filter answered).
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The method (`:method`, edits included).
    pub method: Method,
    /// Path and query (`:path`, edits included).
    pub path: String,
    /// The authority (`:authority`, edits included: the URI's, else `host`).
    pub authority: String,
    /// The HTTP version.
    pub version: Version,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, as it passed the `request_body` phase.
    pub body: Bytes,
}

impl UpstreamRequest {
    pub(crate) fn new(head: http::request::Parts, body: Bytes) -> Self {
        let authority = head
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| single(&head.headers, "host").map(str::to_owned))
            .unwrap_or_default();
        Self {
            method: head.method,
            path: head
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            authority,
            version: head.version,
            headers: head.headers,
            body,
        }
    }

    /// Header `name`'s value, if it has exactly one line and it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        single(&self.headers, name)
    }

    /// Every line of header `name` that is text, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        all(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// The response as the client gets it.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (up to a reset).
    pub body: Bytes,
    /// The `response_body` phase reset the stream (the filter answered there, or buffered
    /// more than allowed): the client sees the body cut short.
    pub reset: bool,
}

impl ClientResponse {
    /// Header `name`'s value, if it has exactly one line and it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        single(&self.headers, name)
    }

    /// Every line of header `name` that is text, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        all(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_get_a_host_and_a_length() {
        let request = Request::post("/a?b=1")
            .header("X-One", "1")
            .header("x-one", "2")
            .body("hello")
            .into_harness()
            .expect("valid");
        assert_eq!(request.head.method, Method::POST);
        assert_eq!(request.head.uri, "/a?b=1");
        assert_eq!(request.head.headers["host"], "localhost");
        assert_eq!(request.head.headers["content-length"], "5");
        assert_eq!(request.head.headers.get_all("x-one").iter().count(), 2);
        assert_eq!(request.body, ["hello"]);

        let absolute = Request::get("http://svc.local/x").into_harness().expect("valid");
        assert!(!absolute.head.headers.contains_key("host"));
        let chunked = Request::post("/").chunks(["a", "b"]).into_harness().expect("valid");
        assert!(!chunked.head.headers.contains_key("content-length"));
        let authority = Request::get("/").authority("svc").into_harness().expect("valid");
        assert_eq!(authority.head.headers["host"], "svc");
    }

    #[test]
    fn invalid_parts_are_named() {
        let error = Request::get("/").header("bad name", "x").into_harness().err();
        assert!(error.is_some_and(|e| e.contains("bad name")));
        let error = Response::status(1000).into_harness().err();
        assert!(error.is_some_and(|e| e.contains("1000")));
        let error = Request::new("G E T", "/").into_harness().err();
        assert!(error.is_some_and(|e| e.contains("G E T")));
    }

    #[test]
    fn upstream_view_reads_pseudo_headers_from_the_head() {
        let request = Request::get("/p?q").authority("svc").into_harness().expect("valid");
        let seen = UpstreamRequest::new(request.head, Bytes::new());
        assert_eq!(
            (&seen.method, seen.path.as_str(), seen.authority.as_str()),
            (&Method::GET, "/p?q", "svc")
        );
        assert_eq!(seen.header("host"), Some("svc"));
    }
}
