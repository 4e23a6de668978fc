//! Mocked callouts (HTTP, and unary gRPC over HTTP/2): handlers and canned replies per
//! cluster, and every call recorded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use weft_proxy::harness::{CalloutHandler, HarnessCallout, HarnessCalloutResponse};

/// A callout the filter made: `dispatch_http_call`, or `dispatch_grpc_call` as the HTTP/2
/// request it travels as (see [`CalloutRequest::grpc_method`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutRequest {
    /// The cluster it was sent to.
    pub cluster: String,
    /// Pseudo-headers (`:method`, `:path`, `:authority`, ...) and headers, names lowercased,
    /// in the order the filter gave them (values as text, invalid UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// The timeout the filter asked for.
    pub timeout: Duration,
}

impl CalloutRequest {
    /// The first value of `name` (a header or a pseudo-header such as `:path`).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// `:method`.
    pub fn method(&self) -> Option<&str> {
        self.header(":method")
    }

    /// `:path`.
    pub fn path(&self) -> Option<&str> {
        self.header(":path")
    }

    /// `:authority`.
    pub fn authority(&self) -> Option<&str> {
        self.header(":authority")
    }

    /// For a gRPC call: its (service, method), from `:path` `/<service>/<method>`.
    pub fn grpc_method(&self) -> Option<(&str, &str)> {
        if self.header("content-type") != Some("application/grpc") {
            return None;
        }
        self.path()?.strip_prefix('/')?.split_once('/')
    }

    /// For a gRPC call: its message (the body without gRPC's length prefix).
    pub fn grpc_message(&self) -> Option<Bytes> {
        self.grpc_method()?;
        let len = u32::from_be_bytes(self.body.get(1..5)?.try_into().ok()?) as usize;
        (self.body.first() == Some(&0)).then(|| self.body.get(5..5 + len).map(Bytes::copy_from_slice))?
    }
}

/// The answer to a callout: `CalloutReply { status: 200, headers: vec![], body: "ok".into() }`
/// or `CalloutReply::new(403).header("x-why", "no")`.
///
/// A handler may instead answer `None`: no response at all, which the filter sees as the
/// proxy gives a timeout or a connect failure (a response without `:status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutReply {
    /// The status (read by the filter as `:status`).
    pub status: u16,
    /// Headers (names lowercased for the filter).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// Trailers (names lowercased for the filter).
    pub trailers: Vec<(String, String)>,
}

impl CalloutReply {
    /// A reply with this status and nothing else.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// `200` with this body.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self::new(200).body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a trailer.
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The answer to a gRPC call that succeeds with `message` (the filter's
    /// `on_grpc_call_response` gets status 0 and the message).
    pub fn grpc(message: impl AsRef<[u8]>) -> Self {
        let message = message.as_ref();
        let mut body = Vec::with_capacity(5 + message.len());
        body.push(0);
        body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
        body.extend_from_slice(message);
        Self::new(200)
            .header("content-type", "application/grpc")
            .body(body)
            .trailer("grpc-status", "0")
    }

    /// The answer to a gRPC call that ends with status `code` and `message` (the filter's
    /// `on_grpc_call_response` gets `code`, and `get_grpc_status` the message).
    pub fn grpc_status(code: u32, message: &str) -> Self {
        // grpc-message travels percent-encoded.
        let encoded: String = message
            .bytes()
            .map(|b| match b {
                b' '..=b'~' if b != b'%' => char::from(b).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        Self::new(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", &code.to_string())
            .header("grpc-message", &encoded)
    }
}

type Handler = Arc<dyn Fn(&CalloutRequest) -> Option<CalloutReply> + Send + Sync>;

#[derive(Default)]
struct State {
    handlers: HashMap<String, Handler>,
    queues: HashMap<String, VecDeque<Option<CalloutReply>>>,
    calls: Vec<CalloutRequest>,
}

/// The clusters a test knows and how they answer.
#[derive(Default)]
pub(crate) struct Mocks {
    state: Mutex<State>,
}

impl Mocks {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_handler(&self, cluster: &str, handler: Handler) {
        self.lock().handlers.insert(cluster.to_owned(), handler);
    }

    pub(crate) fn queue(&self, cluster: &str, reply: Option<CalloutReply>) {
        self.lock()
            .queues
            .entry(cluster.to_owned())
            .or_default()
            .push_back(reply);
    }

    pub(crate) fn calls(&self) -> Vec<CalloutRequest> {
        self.lock().calls.clone()
    }

    pub(crate) fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    pub(crate) fn calls_since(&self, start: usize) -> Vec<CalloutRequest> {
        self.lock().calls.get(start..).map(<[_]>::to_vec).unwrap_or_default()
    }
}

/// Wraps a user handler.
pub(crate) fn handler<F, R>(f: F) -> Handler
where
    F: Fn(&CalloutRequest) -> R + Send + Sync + 'static,
    R: Into<Option<CalloutReply>>,
{
    Arc::new(move |request| f(request).into())
}

impl CalloutHandler for Mocks {
    fn knows(&self, cluster: &str) -> bool {
        let state = self.lock();
        state.handlers.contains_key(cluster) || state.queues.contains_key(cluster)
    }

    fn call(&self, callout: HarnessCallout) -> Option<HarnessCalloutResponse> {
        let request = CalloutRequest {
            cluster: callout.cluster,
            headers: callout
                .headers
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect(),
            body: callout.body,
            timeout: callout.timeout,
        };
        // The user's handler runs without the lock held.
        let (queued, handler) = {
            let mut state = self.lock();
            state.calls.push(request.clone());
            let queued = state.queues.get_mut(&request.cluster).and_then(VecDeque::pop_front);
            (queued, state.handlers.get(&request.cluster).cloned())
        };
        let reply = match queued {
            Some(reply) => reply,
            None => handler.and_then(|h| h(&request)),
        }?;
        let bytes = |pairs: Vec<(String, String)>| pairs.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        Some(HarnessCalloutResponse {
            status: reply.status,
            headers: bytes(reply.headers),
            body: reply.body,
            trailers: bytes(reply.trailers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callout(cluster: &str) -> HarnessCallout {
        HarnessCallout {
            cluster: cluster.to_owned(),
            headers: vec![(":path".to_owned(), b"/check".to_vec())],
            body: Bytes::new(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn queued_replies_come_first_then_the_handler() {
        let mocks = Mocks::default();
        assert!(!mocks.knows("authz"));
        mocks.queue("authz", Some(CalloutReply::new(403)));
        mocks.queue("authz", None);
        assert!(mocks.knows("authz"));
        mocks.set_handler(
            "authz",
            handler(|r: &CalloutRequest| CalloutReply::ok(r.path().unwrap_or("?").to_owned())),
        );
        assert_eq!(mocks.call(callout("authz")).map(|r| r.status), Some(403));
        assert!(mocks.call(callout("authz")).is_none());
        let last = mocks.call(callout("authz")).expect("handler answers");
        assert_eq!((last.status, last.body), (200, Bytes::from("/check")));
        assert_eq!(mocks.call_count(), 3);
        assert_eq!(mocks.calls_since(2)[0].path(), Some("/check"));
    }
}
