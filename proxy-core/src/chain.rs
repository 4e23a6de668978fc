//! Running a request's filter instances: headers phases (with pause and resume), the body
//! pipeline (streaming, with per-filter buffering), upstream wishes and replies from body
//! phases.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};

use crate::body::{BoxError, ProxyBody};
use crate::filter::{BodyAction, FilterAction, Head, HttpFilter, LocalReply, UpstreamChoice};

struct Inner {
    filters: Vec<Box<dyn HttpFilter>>,
    /// A local reply a request-body phase asked for; the exchange answers with it.
    reply: Option<LocalReply>,
    /// A filter paused the `request_headers` phase.
    request_paused: bool,
}

/// A request's filter instances, shared by the request path and the body streams (request
/// and response bodies may flow at the same time on HTTP/2). Only the worker thread that
/// owns the request touches them, so the lock is never contended.
#[derive(Clone)]
pub(crate) struct SharedFilters(Arc<Mutex<Inner>>);

impl SharedFilters {
    pub(crate) fn new(filters: Vec<Box<dyn HttpFilter>>) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            filters,
            reply: None,
            request_paused: false,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().filters.len()
    }

    /// Runs `request_headers`; `Some` is a local reply that ends the request.
    pub(crate) async fn request_headers(&self, parts: &mut http::request::Parts, end: bool) -> Option<LocalReply> {
        for i in 0..self.len() {
            let action = self.lock().filters[i].on_request_headers(parts, end);
            let action = match action {
                FilterAction::Pause => {
                    self.lock().request_paused = true;
                    poll_fn(|cx| self.lock().filters[i].poll_resume(cx, Head::Request(&mut *parts))).await
                }
                other => other,
            };
            if let FilterAction::Reply(reply) = action {
                return Some(reply);
            }
        }
        None
    }

    /// Runs `response_headers` in reverse chain order (as Envoy runs encoder filters); `Some`
    /// is a local reply that replaces the response.
    pub(crate) async fn response_headers(&self, parts: &mut http::response::Parts, end: bool) -> Option<LocalReply> {
        for i in (0..self.len()).rev() {
            let action = self.lock().filters[i].on_response_headers(parts, end);
            let action = match action {
                FilterAction::Pause => {
                    poll_fn(|cx| self.lock().filters[i].poll_resume(cx, Head::Response(&mut *parts))).await
                }
                other => other,
            };
            if let FilterAction::Reply(reply) = action {
                return Some(reply);
            }
        }
        None
    }

    /// Whether a filter paused the `request_headers` phase: the request then gets a body
    /// phase even when its headers ended it.
    pub(crate) fn request_paused(&self) -> bool {
        self.lock().request_paused
    }

    /// The last upstream wish of any filter (later filters override earlier ones per field).
    pub(crate) fn upstream_choice(&self) -> Option<UpstreamChoice> {
        let mut inner = self.lock();
        let mut merged: Option<UpstreamChoice> = None;
        for choice in inner.filters.iter_mut().filter_map(|f| f.take_upstream_choice()) {
            let m = merged.get_or_insert_with(Default::default);
            if choice.cluster.is_some() {
                m.cluster = choice.cluster;
            }
            if choice.subset.is_some() {
                m.subset = choice.subset;
            }
            if choice.hash_key.is_some() {
                m.hash_key = choice.hash_key;
            }
            if choice.timeout.is_some() {
                m.timeout = choice.timeout;
            }
            if choice.per_try_timeout.is_some() {
                m.per_try_timeout = choice.per_try_timeout;
            }
        }
        merged
    }

    /// Whether any filter asked for a retry during `response_headers`, with the longest
    /// backoff asked for.
    pub(crate) fn take_retry(&self) -> Option<std::time::Duration> {
        let mut inner = self.lock();
        // Every filter's flag is taken (cleared), not just up to the first set one.
        let mut asked: Option<std::time::Duration> = None;
        for filter in inner.filters.iter_mut() {
            if let Some(backoff) = filter.take_retry() {
                asked = Some(asked.map_or(backoff, |b| b.max(backoff)));
            }
        }
        asked
    }

    /// A reply a request-body phase asked for.
    pub(crate) fn take_reply(&self) -> Option<LocalReply> {
        self.lock().reply.take()
    }

    pub(crate) fn log(&self, record: &crate::filter::LogRecord) {
        for filter in self.lock().filters.iter_mut() {
            filter.on_log(record);
        }
    }
}

/// Which body a [`FilteredBody`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Request,
    Response,
}

/// A body phase ended the stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyPhaseError {
    #[error("filter buffered more than {0} body bytes")]
    TooLarge(usize),
    #[error("a filter answered the request from its body phase")]
    Replied,
}

pin_project_lite::pin_project! {
    /// A body passed through the `request_body` or `response_body` phase.
    pub(crate) struct FilteredBody {
        #[pin]
        inner: ProxyBody,
        filters: SharedFilters,
        buffers: Vec<BytesMut>,
        direction: Direction,
        limit: usize,
        done: bool,
        trailers: Option<HeaderMap>,
    }
}

impl FilteredBody {
    pub(crate) fn new(inner: ProxyBody, filters: SharedFilters, direction: Direction, limit: usize) -> Self {
        let n = filters.len();
        Self {
            inner,
            filters,
            buffers: vec![BytesMut::new(); n],
            direction,
            limit,
            done: false,
            trailers: None,
        }
    }
}

/// Runs one chunk through the filters; returns what passes on (empty while buffered).
fn run(
    filters: &SharedFilters,
    buffers: &mut [BytesMut],
    direction: Direction,
    limit: usize,
    mut data: Bytes,
    end: bool,
) -> Result<Bytes, BodyPhaseError> {
    let mut inner = filters.lock();
    let Inner {
        filters: list,
        reply: slot,
        ..
    } = &mut *inner;
    // Requests go through the chain in order, responses in reverse (each filter has its own
    // buffer either way).
    let pairs: Box<dyn Iterator<Item = (&mut Box<dyn HttpFilter>, &mut BytesMut)> + '_> = match direction {
        Direction::Request => Box::new(list.iter_mut().zip(buffers.iter_mut())),
        Direction::Response => Box::new(list.iter_mut().zip(buffers.iter_mut()).rev()),
    };
    for (filter, buffer) in pairs {
        let mut whole = if buffer.is_empty() {
            data
        } else {
            buffer.extend_from_slice(&data);
            buffer.split().freeze()
        };
        let action = match direction {
            Direction::Request => filter.on_request_body(&mut whole, end),
            Direction::Response => filter.on_response_body(&mut whole, end),
        };
        match action {
            BodyAction::Continue => data = whole,
            BodyAction::Buffer if end => data = whole,
            BodyAction::Buffer => {
                if whole.len() > limit {
                    if direction == Direction::Request {
                        *slot = Some(LocalReply::new(
                            http::StatusCode::PAYLOAD_TOO_LARGE,
                            "payload too large\n",
                        ));
                    }
                    return Err(BodyPhaseError::TooLarge(limit));
                }
                buffer.extend_from_slice(&whole);
                return Ok(Bytes::new());
            }
            BodyAction::Reply(reply) => {
                *slot = Some(reply);
                return Err(BodyPhaseError::Replied);
            }
        }
    }
    Ok(data)
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    *this.done = true;
                    None
                }
                Poll::Ready(Some(Ok(frame))) => Some(frame),
            };
            let (data, end) = match frame.map(Frame::into_data) {
                None => (Bytes::new(), true),
                Some(Ok(data)) => {
                    let end = this.inner.is_end_stream();
                    (data, end)
                }
                Some(Err(frame)) => {
                    // Trailers end the body: flush what filters hold, then send them.
                    *this.done = true;
                    *this.trailers = frame.into_trailers().ok();
                    (Bytes::new(), true)
                }
            };
            *this.done |= end;
            match run(this.filters, this.buffers, *this.direction, *this.limit, data, end) {
                Ok(out) if !out.is_empty() => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Ok(_) => continue,
                Err(e) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Buffers the request body until the end, then upper-cases it; counts calls.
    struct Shout(Arc<Mutex<Vec<String>>>);

    impl HttpFilter for Shout {
        fn on_request_body(&mut self, body: &mut Bytes, end: bool) -> BodyAction {
            self.0
                .lock()
                .expect("lock")
                .push(format!("request_body {} end={end}", body.len()));
            if !end {
                return BodyAction::Buffer;
            }
            *body = Bytes::from(body.to_ascii_uppercase());
            BodyAction::Continue
        }
        fn on_response_body(&mut self, body: &mut Bytes, end: bool) -> BodyAction {
            self.0
                .lock()
                .expect("lock")
                .push(format!("response_body {} end={end}", body.len()));
            BodyAction::Continue
        }
    }

    /// A body yielding the given chunks, one frame each.
    struct Chunks(std::collections::VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))),
            )
        }
    }

    fn chunks(parts: &[&'static str]) -> ProxyBody {
        crate::body::boxed(Chunks(parts.iter().copied().collect()))
    }

    #[tokio::test]
    async fn buffering_filters_see_the_whole_body_and_pass_it_on_at_the_end() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let filters = SharedFilters::new(vec![Box::new(Shout(events.clone()))]);
        let body = FilteredBody::new(
            chunks(&["hel", "lo ", "world"]),
            filters.clone(),
            Direction::Request,
            1024,
        );
        assert_eq!(body.collect().await.expect("body").to_bytes(), "HELLO WORLD");
        let events = events.lock().expect("lock").clone();
        assert_eq!(
            events,
            [
                "request_body 3 end=false",
                "request_body 6 end=false",
                "request_body 11 end=false",
                "request_body 11 end=true"
            ]
        );
    }

    #[tokio::test]
    async fn buffering_past_the_limit_fails_with_413() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let filters = SharedFilters::new(vec![Box::new(Shout(events))]);
        let body = FilteredBody::new(
            chunks(&["0123456789", "0123456789"]),
            filters.clone(),
            Direction::Request,
            15,
        );
        assert!(body.collect().await.is_err());
        assert_eq!(
            filters.take_reply().expect("reply").status,
            http::StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
