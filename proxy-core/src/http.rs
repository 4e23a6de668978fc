//! One request's path through the proxy (see `docs/request-path.md` for the chart):
//!
//! 1. downstream checks: header count, declared body size, authority present (framing is
//!    checked by hyper's parser: conflicting lengths and non-chunked transfer codings get 400;
//!    with both Transfer-Encoding and Content-Length, Transfer-Encoding wins and the connection
//!    closes after the response, as RFC 9112 §6.3 prescribes, so nothing can be smuggled);
//! 2. header hygiene: hop-by-hop headers dropped, `x-forwarded-for`/`-proto` and
//!    `x-request-id` set;
//! 3. `request_headers` phase of the listener's filter chain (may answer locally);
//! 4. route lookup by authority, path and headers (404 when none);
//! 5. direct response, or: endpoint choice (503 no healthy), circuit breakers (503 overflow),
//!    the upstream exchange (502 connect failure or reset, 504 timeout);
//! 6. `response_headers` phase, then the body streams back through `response_body`; the `log`
//!    phase runs when the body ends or is abandoned.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use weft_api::{ListenerKind, UpstreamProtocol};

use crate::body::{self, BoxError, ProxyBody};
use crate::callout::Callouts;
use crate::chain::{Direction, FilteredBody, SharedFilters};
use crate::cluster::{Cluster, Endpoint, HashInput, Outcome};
use crate::filter::{FilterContext, LocalReply, LogRecord, UpstreamInfo};
use crate::generation::{Generation, Listener};
use crate::pool::{Pools, UpstreamError};
use crate::reply::{self, Reason};
use crate::routes::{Action, Forward};

/// What a worker shares with its connections.
pub(crate) struct WorkerContext {
    pub(crate) id: usize,
    pub(crate) generation: watch::Receiver<Arc<Generation>>,
    pub(crate) pools: Arc<Pools>,
}

/// One downstream connection.
pub(crate) struct Connection {
    pub(crate) listener: Arc<str>,
    pub(crate) peer: SocketAddr,
    /// The peer's IP as a header value (`x-forwarded-for`), rendered once.
    pub(crate) peer_ip: HeaderValue,
    pub(crate) local: SocketAddr,
    pub(crate) worker: Arc<WorkerContext>,
    /// Whether the connection is mutual TLS.
    pub(crate) mtls: bool,
    /// The peer's SPIFFE ID, from its certificate (mutual TLS).
    pub(crate) principal: Option<Arc<str>>,
    /// `x-forwarded-client-cert` for the application (`URI=<principal>`), rendered once.
    pub(crate) client_cert_header: Option<HeaderValue>,
    /// Whether the connection is TLS (mesh or the listener's own).
    pub(crate) tls: bool,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Serves one request; never fails (errors become local replies).
pub(crate) async fn serve(
    conn: Arc<Connection>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let generation = conn.worker.generation.borrow().clone();
    let Some(listener) = generation.listeners.get(&*conn.listener) else {
        return Ok(reply::local_reply(Reason::Unavailable));
    };
    let start = Instant::now();
    let mut exchange = Exchange {
        conn: &conn,
        generation: &generation,
        listener,
        start,
        filters: None,
        record: LogRecord {
            method: request.method().clone(),
            authority: String::new(),
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            status: 0,
            route: None,
            cluster: None,
            upstream: None,
            reason: None,
            response_bytes: 0,
            duration: Default::default(),
        },
        active: None,
        downstream_version: request.version(),
        response_phase_done: false,
        failure: None,
    };
    let response = exchange.run(request).await;
    Ok(exchange.finish(response).await)
}

struct Exchange<'a> {
    conn: &'a Connection,
    generation: &'a Arc<Generation>,
    listener: &'a Listener,
    start: Instant,
    filters: Option<SharedFilters>,
    record: LogRecord,
    active: Option<ActiveRequest>,
    downstream_version: Version,
    /// The response already went through `response_headers` (in the upstream loop).
    response_phase_done: bool,
    /// The last attempt failed with this local reply (which went through the response phase
    /// and is the response, unless a retry follows).
    failure: Option<Reason>,
}

/// Most times filters may send one request again.
const MAX_FILTER_RETRIES: usize = 5;

/// Why a request body cannot be kept for a retry.
enum Replay {
    /// Too large or of unknown length: it streams, and cannot be retried.
    Stream(ProxyBody),
    /// Reading it failed (the client, or a body filter).
    Failed,
}

/// Buffers a request body of known, bounded length so it can be sent again. Collecting runs
/// the body phase; an `empty` body that still has one (after a paused headers phase) is
/// collected too.
async fn replayable(head: &http::request::Parts, body: ProxyBody, empty: bool, limit: usize) -> Result<Bytes, Replay> {
    use http_body_util::BodyExt;
    if body.is_end_stream() {
        // No body, and no body phase either.
        return Ok(Bytes::new());
    }
    if !empty && content_length(&head.headers).is_none_or(|length| length > limit as u64) {
        return Err(Replay::Stream(body));
    }
    body.collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|_| Replay::Failed)
}

/// Why a request was answered locally.
struct Local(Reason);

impl Exchange<'_> {
    async fn run(&mut self, request: Request<Incoming>) -> Result<Response<ProxyBody>, LocalOrFilter> {
        let limits = &self.listener.limits;
        let (mut parts, body) = request.into_parts();
        let body_empty = body.is_end_stream();

        // 1. Downstream checks.
        if parts.headers.len() > limits.max_request_headers_count as usize {
            return Err(Local(Reason::HeadersTooLarge).into());
        }
        if parts.method == Method::CONNECT {
            return Err(Local(Reason::MethodNotAllowed).into());
        }
        if let (Some(max), Some(declared)) = (limits.max_request_body_bytes, content_length(&parts.headers))
            && declared > max
        {
            return Err(Local(Reason::PayloadTooLarge).into());
        }
        let authority = match parts.uri.authority() {
            Some(a) => a.as_str().to_owned(),
            None => match parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
                Some(h) if !h.is_empty() => h.to_owned(),
                _ => return Err(Local(Reason::BadRequest).into()),
            },
        };
        self.record.authority.clone_from(&authority);
        if !self.conn.mtls
            && let Some(mtls) = &self.listener.mtls
            && !mtls.ports.is_empty()
        {
            let port = authority
                .parse::<http::uri::Authority>()
                .ok()
                .and_then(|a| a.port_u16());
            if mtls.mode_for(port) == weft_api::MtlsMode::Strict {
                return Err(Local(Reason::MtlsRequired).into());
            }
        }

        // 2. Header hygiene.
        let upgrade = wants_upgrade(&parts);
        let on_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        strip_hop_by_hop(&mut parts.headers, upgrade);
        self.forwarded_headers(&mut parts.headers);

        // 3. request_headers phase. The route is matched first so a route can disable filters
        //    and filters can read its name; it is matched again afterwards, since filters may
        //    change what routing looks at.
        let mut route = self
            .listener
            .routes
            .find(&authority, parts.uri.path(), &parts.headers)
            .cloned();
        let mut authority = authority;
        if !self.listener.chain.is_empty() {
            let context = FilterContext {
                worker: self.conn.worker.id,
                source: self.conn.peer,
                destination: self.conn.local,
                listener: self.conn.listener.clone(),
                route: route.as_ref().map(|r| r.name.clone()),
                mtls: self.conn.mtls,
                peer_principal: self.conn.principal.clone(),
                worker_context: Some(self.conn.worker.clone()),
                properties: self.listener.chain.shares_properties().then(Default::default),
                callouts: self.listener.chain.wants_callouts().then(|| {
                    Arc::new(Callouts::new(
                        self.generation.clone(),
                        self.conn.worker.pools.clone(),
                        self.conn.peer.ip(),
                    ))
                }),
            };
            let disabled = route.as_ref().map_or(&[][..], |r| &r.disabled_filters[..]);
            let filters = SharedFilters::new(self.listener.chain.instantiate(&context, disabled));
            if let Some(reply) = filters.request_headers(&mut parts, body_empty).await {
                self.filters = Some(filters);
                return Err(LocalOrFilter::Filter(reply));
            }
            if parts.uri.authority().is_none()
                && let Some(host) = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok())
            {
                host.clone_into(&mut authority);
            }
            route = self
                .listener
                .routes
                .find(&authority, parts.uri.path(), &parts.headers)
                .cloned();
            self.filters = Some(filters);
        }

        // 4. Route.
        let route = route.ok_or(Local(Reason::NoRoute))?;
        self.record.route = Some(route.name.clone());
        let forward = match &route.action {
            Action::Direct { status, body, headers } => {
                let mut response = Response::new(body::full(body.clone()));
                *response.status_mut() = *status;
                response.headers_mut().extend(headers.clone());
                self.record.reason = Some(Reason::DirectResponse.as_str());
                return Ok(response);
            }
            Action::Forward(forward) => forward,
        };

        // 5. Upstream: the route's cluster, unless a filter chose another (`set_upstream`).
        let choice = self
            .filters
            .as_ref()
            .and_then(SharedFilters::upstream_choice)
            .unwrap_or_default();
        let cluster = match &choice.cluster {
            Some(name) => self
                .generation
                .clusters
                .by_name
                .get(name)
                .cloned()
                .ok_or(Local(Reason::NoRoute))?,
            None => forward.cluster.clone(),
        };
        let lb = match &choice.subset {
            Some(labels) => cluster.subset(labels),
            None if choice.cluster.is_some() => cluster.all.clone(),
            None => forward.lb.clone(),
        };
        self.record.cluster = Some(cluster.name.clone());
        let hash = HashInput {
            headers: &parts.headers,
            source_ip: self.conn.peer.ip(),
            key: choice.hash_key.as_deref(),
        };
        let endpoint = lb.pick(&cluster, &hash).ok_or(Local(Reason::NoHealthyUpstream))?;
        self.record.upstream = Some(endpoint.addr);
        self.active = Some(ActiveRequest::start(&cluster, &endpoint).ok_or_else(|| {
            cluster.stats.overflow.fetch_add(1, Relaxed);
            Local(Reason::UpstreamOverflow)
        })?);

        let (mut head, body) = self
            .upstream_request(parts, body, &cluster, forward, &authority)?
            .into_parts();
        // A filter may ask, after response headers, for the request to go to another
        // endpoint (`weft.retry`). Only a request whose body is small enough to keep can be
        // sent again; it is buffered up front when the chain may ask.
        let may_retry = !upgrade && self.filters.is_some() && self.listener.chain.may_retry();
        // A paused request's one body phase also runs before it goes on, even with no body
        // (hyper would not poll the empty body of a `GET`).
        let paused_bodiless = body_empty && self.filters.as_ref().is_some_and(SharedFilters::request_paused);
        let (mut first_body, replay) = if may_retry || paused_bodiless {
            match replayable(
                &head,
                body,
                body_empty,
                self.listener.limits.max_buffered_body_bytes as usize,
            )
            .await
            {
                Ok(bytes) => (Some(body::full(bytes.clone())), may_retry.then_some(bytes)),
                Err(Replay::Stream(body)) => (Some(body), None),
                Err(Replay::Failed) => {
                    if let Some(reply) = self.filters.as_ref().and_then(SharedFilters::take_reply) {
                        return Err(LocalOrFilter::Filter(reply));
                    }
                    return Err(Local(Reason::BadRequest).into());
                }
            }
        } else {
            (Some(body), None)
        };
        let mut endpoint = endpoint;
        let mut tried = Vec::new();
        // The request's deadline (route timeout, or a filter's) spans every attempt; a
        // filter's per-try timeout bounds each one.
        // A filter's timeout of zero disables the route's (Istio's `timeout: 0s`).
        let overall = choice.timeout.or(forward.timeout).filter(|t| !t.is_zero());
        let deadline = overall.map(|t| tokio::time::Instant::now() + t);
        loop {
            let body = first_body
                .take()
                .unwrap_or_else(|| body::full(replay.clone().unwrap_or_default()));
            // Without a kept body there is no second attempt: the head is moved, not copied.
            let attempt_head = if replay.is_some() {
                head.clone()
            } else {
                std::mem::replace(&mut head, Request::new(()).into_parts().0)
            };
            let request = Request::from_parts(attempt_head, body);
            let sent = self.conn.worker.pools.send(&cluster, &endpoint, request, upgrade);
            let started = Instant::now();
            let attempt_deadline = match (deadline, choice.per_try_timeout) {
                (Some(d), Some(t)) => Some(d.min(tokio::time::Instant::now() + t)),
                (Some(d), None) => Some(d),
                (None, Some(t)) => Some(tokio::time::Instant::now() + t),
                (None, None) => None,
            };
            let result = match attempt_deadline {
                Some(at) => tokio::time::timeout_at(at, sent).await.map_err(|_| ()),
                None => Ok(sent.await),
            };
            let outcome = match result {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(error)) => {
                    if let Some(reply) = self.filters.as_ref().and_then(SharedFilters::take_reply) {
                        return Err(LocalOrFilter::Filter(reply));
                    }
                    let reason = match &error {
                        UpstreamError::Overflow => {
                            cluster.stats.overflow.fetch_add(1, Relaxed);
                            Reason::UpstreamOverflow
                        }
                        UpstreamError::Connect(_) => Reason::UpstreamConnectFailure,
                        UpstreamError::Reset(_) => {
                            cluster.stats.rq_reset.fetch_add(1, Relaxed);
                            Reason::UpstreamReset
                        }
                    };
                    tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %ErrorChain(&error), "upstream failed");
                    if reason.is_upstream_failure() {
                        cluster.record_outcome(&endpoint, Outcome::LocalGatewayError);
                    }
                    Err(reason)
                }
                Err(()) => {
                    cluster.stats.rq_timeout.fetch_add(1, Relaxed);
                    cluster.record_outcome(&endpoint, Outcome::LocalGatewayError);
                    Err(Reason::UpstreamTimeout)
                }
            };
            let mut response = match outcome {
                Ok(mut response) => {
                    cluster.stats.rq_time.record(started.elapsed());
                    response.extensions_mut().insert(UpstreamInfo {
                        cluster: cluster.name.clone(),
                        endpoint: endpoint.addr,
                    });
                    cluster.stats.record_status(response.status().as_u16());
                    cluster.record_outcome(&endpoint, Outcome::Status(response.status().as_u16()));
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(downstream) = on_upgrade
                    {
                        let upstream = hyper::upgrade::on(&mut response);
                        tokio::spawn(tunnel(downstream, upstream));
                        return Ok(response);
                    }
                    strip_hop_by_hop(response.headers_mut(), false);
                    response
                }
                // Without filters that could retry, a failed attempt ends the request here.
                Err(reason) if !may_retry => return Err(Local(reason).into()),
                // Otherwise the local reply goes through the response phase like a response,
                // so a retry filter sees connect failures, resets and timeouts too.
                Err(reason) => {
                    self.failure = Some(reason);
                    reply::local_reply(reason)
                }
            };
            let Some(filters) = self.filters.clone() else {
                return Ok(response);
            };

            // response_headers phase, here so a filter's retry can still choose another endpoint.
            let (mut parts, body) = std::mem::replace(&mut response, Response::new(body::empty())).into_parts();
            self.response_phase_done = true;
            filters.take_retry(); // only a retry asked for in this response phase counts
            if let Some(reply) = filters.response_headers(&mut parts, body.is_end_stream()).await {
                return Err(LocalOrFilter::Filter(reply));
            }
            let expired = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if let Some(backoff) = filters.take_retry()
                && replay.is_some()
                && tried.len() < MAX_FILTER_RETRIES
                && !expired
            {
                drop(body);
                if !backoff.is_zero() {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.min(tokio::time::Instant::now() + backoff)).await,
                        None => tokio::time::sleep(backoff).await,
                    }
                }
                tried.push(endpoint.addr);
                // Whatever ends the request from here on goes through the response phase.
                self.response_phase_done = false;
                let hash = HashInput {
                    headers: &head.headers,
                    source_ip: self.conn.peer.ip(),
                    key: choice.hash_key.as_deref(),
                };
                endpoint = lb
                    .pick_excluding(&cluster, &hash, &tried)
                    .ok_or(Local(Reason::NoHealthyUpstream))?;
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, attempt = tried.len() + 1, "filter asked for a retry");
                self.record.upstream = Some(endpoint.addr);
                self.active = None;
                self.active = Some(ActiveRequest::start(&cluster, &endpoint).ok_or_else(|| {
                    cluster.stats.overflow.fetch_add(1, Relaxed);
                    Local(Reason::UpstreamOverflow)
                })?);
                self.response_phase_done = false;
                self.failure = None;
                continue;
            }
            return Ok(Response::from_parts(parts, body));
        }
    }

    /// Sets `x-forwarded-for`, `x-forwarded-proto` and `x-request-id`.
    fn forwarded_headers(&self, headers: &mut HeaderMap) {
        let appended = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if self.listener.kind != ListenerKind::Gateway => {
                HeaderValue::from_str(&format!("{existing}, {}", self.conn.peer.ip())).ok()
            }
            // The common case costs no allocation: the peer's address is rendered once per
            // connection.
            _ => Some(self.conn.peer_ip.clone()),
        };
        if let Some(value) = appended {
            headers.insert(&X_FORWARDED_FOR, value);
        }
        if self.listener.kind == ListenerKind::Gateway || !headers.contains_key(&X_FORWARDED_PROTO) {
            let proto = if self.conn.tls && self.listener.kind == ListenerKind::Gateway {
                "https"
            } else {
                "http"
            };
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(&X_REQUEST_ID, request_id());
        }
        // The application learns its mesh peer from the sidecar only: a client cannot forge
        // it, and a mutual TLS peer is named by its SPIFFE ID (Envoy's format).
        if self.listener.kind == ListenerKind::Inbound {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
            if let Some(value) = &self.conn.client_cert_header {
                headers.insert(&X_FORWARDED_CLIENT_CERT, value.clone());
            }
        }
    }

    /// The request as sent upstream: URI form, authority and version for the cluster.
    fn upstream_request(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        cluster: &Cluster,
        forward: &Forward,
        authority: &str,
    ) -> Result<Request<ProxyBody>, Local> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let unchanged =
            !matches!(&forward.prefix_rewrite, Some((prefix, _)) if path_and_query.starts_with(prefix.as_str()));
        let rewritten;
        let path_and_query = match &forward.prefix_rewrite {
            Some((prefix, replacement)) if path_and_query.starts_with(prefix.as_str()) => {
                let rest = &path_and_query[prefix.len()..];
                rewritten = if replacement.ends_with('/') && rest.starts_with('/') {
                    format!("{replacement}{}", &rest[1..])
                } else {
                    format!("{replacement}{rest}")
                };
                rewritten.as_str()
            }
            _ => path_and_query,
        };
        let authority_value = match &forward.host_rewrite {
            Some(host) => host.clone(),
            // An HTTP/1.1 request's Host is already the authority: reuse it (no copy).
            None => match parts
                .headers
                .get(header::HOST)
                .filter(|h| h.as_bytes() == authority.as_bytes())
            {
                Some(host) => host.clone(),
                None => HeaderValue::from_str(authority).map_err(|_| Local(Reason::BadRequest))?,
            },
        };
        let authority = authority_value.to_str().map_err(|_| Local(Reason::BadRequest))?;
        match cluster.protocol {
            UpstreamProtocol::Http1 => {
                // Origin-form; an origin-form request without a rewrite keeps its URI as is.
                if !(unchanged && parts.uri.authority().is_none()) {
                    parts.uri = match (unchanged, parts.uri.path_and_query()) {
                        (true, Some(pq)) => Uri::from(pq.clone()),
                        _ => path_and_query.parse::<Uri>().map_err(|_| Local(Reason::BadRequest))?,
                    };
                }
                parts.version = Version::HTTP_11;
                if forward.host_rewrite.is_some() || parts.headers.get(header::HOST) != Some(&authority_value) {
                    parts.headers.insert(header::HOST, authority_value.clone());
                }
                if parts.headers.contains_key(header::TE) {
                    parts.headers.remove(header::TE);
                }
            }
            UpstreamProtocol::Http2 => {
                parts.uri = Uri::builder()
                    .scheme("http")
                    .authority(authority)
                    .path_and_query(path_and_query)
                    .build()
                    .map_err(|_| Local(Reason::BadRequest))?;
                parts.version = Version::HTTP_2;
                parts.headers.remove(header::HOST);
                // HTTP/2 has no Upgrade: the request goes as an ordinary exchange.
                parts.headers.remove(header::CONNECTION);
                parts.headers.remove(header::UPGRADE);
                if parts.headers.get(header::TE).is_some_and(|te| te != "trailers") {
                    parts.headers.remove(header::TE);
                }
            }
        }
        let limits = &self.listener.limits;
        let mut body = match limits.max_request_body_bytes {
            Some(limit) => body::boxed(body::Limited::new(body, limit)),
            None => body::boxed(body),
        };
        // As in Envoy, a stream its headers ended has no body phase, unless a filter paused
        // its headers phase: that filter is called once more before the request goes on.
        if let Some(filters) = self
            .filters
            .as_ref()
            .filter(|f| self.listener.chain.wants_request_body() && (!body.is_end_stream() || f.request_paused()))
        {
            body = body::boxed(FilteredBody::new(
                body,
                filters.clone(),
                Direction::Request,
                limits.max_buffered_body_bytes as usize,
            ));
        }
        Ok(Request::from_parts(parts, body))
    }

    /// Runs the response phases and wraps the body for the log phase.
    async fn finish(mut self, result: Result<Response<ProxyBody>, LocalOrFilter>) -> Response<ProxyBody> {
        let stats = &self.listener.stats;
        let mut response = match result {
            Ok(response) => {
                if let Some(reason) = self.failure {
                    self.record.reason = Some(reason.as_str());
                }
                response
            }
            Err(LocalOrFilter::Local(Local(reason))) => {
                self.record.reason = Some(reason.as_str());
                reply::local_reply(reason)
            }
            Err(LocalOrFilter::Filter(reply)) => {
                self.record.reason = Some(filter_reason(&reply));
                filter_reply(reply)
            }
        };
        if let Some(reason) = self.record.reason.filter(|r| *r != Reason::DirectResponse.as_str()) {
            stats.record_local_reply(reason);
        }

        // response_headers phase (local replies included, as Envoy's encoder filters see them).
        if let Some(filters) = self
            .filters
            .as_ref()
            .filter(|_| response.status() != StatusCode::SWITCHING_PROTOCOLS)
        {
            let (mut parts, body) = response.into_parts();
            let end = body.is_end_stream();
            let replaced = if self.response_phase_done {
                None
            } else {
                filters.response_headers(&mut parts, end).await
            };
            response = match replaced {
                Some(reply) => {
                    self.record.reason = Some(Reason::Filter.as_str());
                    filter_reply(reply)
                }
                None => {
                    let body = if self.listener.chain.wants_response_body() && !end {
                        body::boxed(FilteredBody::new(
                            body,
                            filters.clone(),
                            Direction::Response,
                            self.listener.limits.max_buffered_body_bytes as usize,
                        ))
                    } else {
                        body
                    };
                    Response::from_parts(parts, body)
                }
            };
        }
        *response.version_mut() = self.downstream_version;
        self.record.status = response.status().as_u16();
        stats.record_status(self.record.status);

        let (parts, body) = response.into_parts();
        let tail = Tail {
            inner: body,
            finish: Some(Finish {
                filters: self.filters,
                record: self.record,
                start: self.start,
                active: self.active,
            }),
        };
        Response::from_parts(parts, body::boxed(tail))
    }
}

/// A local reply from the proxy or from a filter.
enum LocalOrFilter {
    Local(Local),
    Filter(LocalReply),
}

impl From<Local> for LocalOrFilter {
    fn from(local: Local) -> Self {
        LocalOrFilter::Local(local)
    }
}

/// The reason a filter's reply is logged and counted under: `filter_failure` when the host
/// answered for a failed filter, else `filter`.
fn filter_reason(reply: &LocalReply) -> &'static str {
    match reply
        .headers
        .get(crate::reply::REASON_HEADER)
        .map(HeaderValue::as_bytes)
    {
        Some(b"filter_failure") => "filter_failure",
        _ => Reason::Filter.as_str(),
    }
}

fn filter_reply(reply: LocalReply) -> Response<ProxyBody> {
    let mut response = reply::build(reply.status, Reason::Filter, reply.body);
    for name in reply.headers.keys() {
        response.headers_mut().remove(name);
    }
    for (name, value) in &reply.headers {
        response.headers_mut().append(name, value.clone());
    }
    response
}

fn wants_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(header::UPGRADE)
        && connection_tokens(&parts.headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes connection-specific headers (RFC 9110 §7.6.1): `Connection` and the headers it
/// names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade` (kept, with
/// `Connection: upgrade`, when tunnelling an upgrade) and `TE` other than `trailers`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !(keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if name != header::TE {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// A random UUID v4, rendered without intermediate strings.
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut out = [b'-'; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *slot = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(downstream, upstream) {
        Ok((down, up)) => {
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(%error, "upgraded tunnel ended");
            }
        }
        Err(error) => tracing::debug!(%error, "upgrade failed"),
    }
}

/// Holds a request against its endpoint's and cluster's load until the response ends.
struct ActiveRequest {
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
}

impl ActiveRequest {
    /// `None` when the cluster's `max_requests` is reached.
    fn start(cluster: &Arc<Cluster>, endpoint: &Arc<Endpoint>) -> Option<Self> {
        if cluster.load.requests.fetch_add(1, Relaxed) >= cluster.breakers.max_requests {
            cluster.load.requests.fetch_sub(1, Relaxed);
            return None;
        }
        endpoint.active_requests.fetch_add(1, Relaxed);
        cluster.stats.rq_active.fetch_add(1, Relaxed);
        Some(Self {
            cluster: cluster.clone(),
            endpoint: endpoint.clone(),
        })
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.cluster.load.requests.fetch_sub(1, Relaxed);
        self.endpoint.active_requests.fetch_sub(1, Relaxed);
        self.cluster.stats.rq_active.fetch_sub(1, Relaxed);
    }
}

/// What happens when the response ends: the log phase and the release of the request's load.
struct Finish {
    filters: Option<SharedFilters>,
    record: LogRecord,
    start: Instant,
    active: Option<ActiveRequest>,
}

impl Finish {
    fn run(mut self, complete: bool) {
        self.record.duration = self.start.elapsed();
        if let Some(filters) = &self.filters {
            filters.log(&self.record);
        }
        let r = &self.record;
        tracing::debug!(
            target: "weft::access",
            method = %r.method, authority = %r.authority, path = %r.path, status = r.status,
            route = ?r.route, cluster = ?r.cluster, upstream = ?r.upstream, reason = ?r.reason,
            bytes = r.response_bytes, duration_us = r.duration.as_micros() as u64, complete,
            "request"
        );
        drop(self.active);
    }
}

pin_project_lite::pin_project! {
    /// The downstream response body: counts bytes and runs the `log` phase at the end.
    struct Tail {
        #[pin]
        inner: ProxyBody,
        finish: Option<Finish>,
    }

    impl PinnedDrop for Tail {
        fn drop(this: Pin<&mut Self>) {
            if let Some(finish) = this.project().finish.take() {
                finish.run(false);
            }
        }
    }
}

impl Body for Tail {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(finish), Some(data)) = (this.finish.as_mut(), frame.data_ref()) {
                    finish.record.response_bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(finish) = this.finish.take() {
                    finish.run(matches!(polled, Poll::Ready(None)));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Displays an error with its sources.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().expect("value"));
        h.insert("x-secret", "1".parse().expect("value"));
        h.insert("keep-alive", "timeout=5".parse().expect("value"));
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().expect("value"));
        h.insert(header::TE, "gzip".parse().expect("value"));
        h.insert(header::UPGRADE, "websocket".parse().expect("value"));
        h.insert("x-kept", "1".parse().expect("value"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-kept"]);

        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().expect("value"));
        h.insert(header::CONNECTION, "upgrade".parse().expect("value"));
        h.insert(header::UPGRADE, "websocket".parse().expect("value"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::TE).expect("te"), "trailers");
        assert_eq!(h.get(header::UPGRADE).expect("upgrade"), "websocket");
        assert_eq!(h.get(header::CONNECTION).expect("connection"), "upgrade");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        let id = id.to_str().expect("ascii");
        assert_eq!(id.len(), 36);
        assert!(id.chars().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) {
            c == '-'
        } else {
            c.is_ascii_hexdigit()
        }));
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, request_id().to_str().expect("ascii"));
    }
}
