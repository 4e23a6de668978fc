//! gRPC through the proxy: a tonic client speaking h2c to an `auto` listener, a cluster with
//! `protocol: http2` and an in-process tonic service. The service is written by hand, the way
//! tonic's generated code is shaped (there is no protoc): unary calls and their error statuses,
//! server streaming with trailing metadata, and request metadata.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::Grpc as GrpcClient;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::metadata::{BinaryMetadataValue, MetadataMap, MetadataValue};
use tonic::server::{Grpc as GrpcServer, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;
use weft_proxy::Proxy;

use crate::support::*;

const SERVICE: &str = "weft.test.Echo";
const UNARY: &str = "/weft.test.Echo/Unary";
const COUNT: &str = "/weft.test.Echo/Count";

/// The `message` that makes `Unary` fail with NOT_FOUND.
const MISSING: &str = "missing";
/// Its status message: non-ASCII and `%` make grpc-message percent-encoded on the wire.
const NOT_FOUND_MESSAGE: &str = "no widget named \"missing\" — 100% gone";

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    /// How many replies `Count` streams.
    #[prost(uint32, tag = "2")]
    count: u32,
    /// `Count` ends with RESOURCE_EXHAUSTED after this many replies (0: never).
    #[prost(uint32, tag = "3")]
    fail_after: u32,
    /// `Count` waits for the test's go-ahead after its first reply.
    #[prost(bool, tag = "4")]
    gated: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    index: u32,
    /// The request's `x-tenant` metadata as the server saw it.
    #[prost(string, tag = "3")]
    tenant: String,
    /// The request's `trace-bin` metadata as the server saw it.
    #[prost(bytes = "vec", tag = "4")]
    trace: Vec<u8>,
    /// The request's `x-forwarded-for` as the server saw it (the proxy sets it).
    #[prost(string, tag = "5")]
    forwarded_for: String,
}

impl EchoReply {
    fn new(message: String, index: u32, metadata: &MetadataMap) -> Self {
        let ascii = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            message,
            index,
            tenant: ascii("x-tenant"),
            trace: metadata
                .get_bin("trace-bin")
                .and_then(|v| v.to_bytes().ok())
                .map(|b| b.to_vec())
                .unwrap_or_default(),
            forwarded_for: ascii("x-forwarded-for"),
        }
    }
}

// ---- Server: the shape of tonic-generated server code, by hand. ----

/// What the service shares with the test.
#[derive(Default)]
struct State {
    /// Lets a gated `Count` go on after its first reply.
    gate: Notify,
}

#[derive(Clone)]
struct EchoServer(Arc<State>);

impl NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let response = match request.uri().path() {
                UNARY => GrpcServer::new(ProstCodec::default()).unary(UnaryMethod, request).await,
                COUNT => {
                    GrpcServer::new(ProstCodec::default())
                        .server_streaming(CountMethod(state), request)
                        .await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

/// `Unary`: echoes the message with response metadata `x-served-by: echo`; the message
/// [`MISSING`] fails with NOT_FOUND and metadata `x-lookup: missing`.
struct UnaryMethod;

impl UnaryService<EchoRequest> for UnaryMethod {
    type Response = EchoReply;
    type Future = Ready<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let (metadata, _, request) = request.into_parts();
        if request.message == MISSING {
            let mut details = MetadataMap::new();
            details.insert("x-lookup", MetadataValue::from_static("missing"));
            return ready(Err(Status::with_metadata(Code::NotFound, NOT_FOUND_MESSAGE, details)));
        }
        let mut response = Response::new(EchoReply::new(request.message, 0, &metadata));
        response
            .metadata_mut()
            .insert("x-served-by", MetadataValue::from_static("echo"));
        ready(Ok(response))
    }
}

/// `Count`: streams `count` replies `message-i` with index `i`, then ends with OK and the
/// trailing metadata `x-total: count`.
struct CountMethod(Arc<State>);

impl ServerStreamingService<EchoRequest> for CountMethod {
    type Response = EchoReply;
    type ResponseStream = ReceiverStream<Result<EchoReply, Status>>;
    type Future = Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let (metadata, _, request) = request.into_parts();
        let state = self.0.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for index in 0..request.count {
                if request.fail_after > 0 && index == request.fail_after {
                    let status = Status::resource_exhausted(format!("quota used up after {index}"));
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let reply = EchoReply::new(format!("{}-{index}", request.message), index, &metadata);
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
                if request.gated && index == 0 {
                    state.gate.notified().await;
                }
            }
            // tonic writes a status the stream yields into the trailers, metadata included; an
            // OK status is how a handler sets trailing metadata on success.
            let mut trailers = MetadataMap::new();
            trailers.insert("x-total", request.count.to_string().parse().expect("ascii value"));
            let _ = tx.send(Err(Status::with_metadata(Code::Ok, "", trailers))).await;
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        response
            .metadata_mut()
            .insert("x-stream", MetadataValue::from_static("count"));
        ready(Ok(response))
    }
}

// ---- Fixture and client. ----

struct Fixture {
    /// Kept alive for the test's duration.
    _proxy: Proxy,
    /// The proxy listener the client talks to.
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The tonic service on 127.0.0.1:0: its address, state and task.
async fn echo_service() -> (SocketAddr, Arc<State>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc upstream");
    let upstream = listener.local_addr().expect("upstream addr");
    let state = Arc::new(State::default());
    let service = EchoServer(state.clone());
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .expect("grpc upstream serves");
    });
    (upstream, state, server)
}

/// The tonic service on 127.0.0.1:0 behind a proxy: listener `auto`, cluster `http2`.
async fn fixture() -> Fixture {
    let (upstream, state, server) = echo_service().await;
    let yaml = format!(
        r#"
version: "grpc"
listeners:
  - {{ name: main, address: "127.0.0.1:0", protocol: auto, route_table: rt }}
route_tables:
  - name: rt
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - forward: {{ cluster: grpc }}
clusters:
  - name: grpc
    protocol: http2
    endpoints: [{{ address: "{upstream}" }}]
"#
    );
    let proxy = start_proxy(&yaml, 1);
    let addr = proxy.listener_addr("main").expect("listener");
    Fixture {
        _proxy: proxy,
        addr,
        state,
        server,
    }
}

/// A tonic client connected (h2c, prior knowledge) to the proxy.
async fn client(addr: SocketAddr) -> GrpcClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to proxy");
    GrpcClient::new(channel)
}

async fn call_unary(
    client: &mut GrpcClient<Channel>,
    request: Request<EchoRequest>,
) -> Result<Response<EchoReply>, Status> {
    within("channel ready", client.ready()).await.expect("channel ready");
    within(
        "unary call",
        client.unary(request, PathAndQuery::from_static(UNARY), ProstCodec::default()),
    )
    .await
}

async fn call_count(client: &mut GrpcClient<Channel>, request: Request<EchoRequest>) -> Response<Streaming<EchoReply>> {
    within("channel ready", client.ready()).await.expect("channel ready");
    within(
        "streaming call",
        client.server_streaming(request, PathAndQuery::from_static(COUNT), ProstCodec::default()),
    )
    .await
    .expect("streaming call starts")
}

/// Awaits `future`, failing the test after 10 s rather than hanging.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
        ..Default::default()
    }
}

// ---- Tests. ----

#[tokio::test]
async fn unary_call_and_error_status_pass_through() {
    let f = fixture().await;
    let mut client = client(f.addr).await;

    let response = call_unary(&mut client, Request::new(request("hello through weft")))
        .await
        .expect("unary call succeeds");
    assert_eq!(
        response.metadata().get("x-served-by").map(|v| v.to_str().ok()),
        Some(Some("echo"))
    );
    assert_eq!(response.get_ref().message, "hello through weft");
    assert_eq!(
        response.get_ref().forwarded_for,
        "127.0.0.1",
        "the call went through the proxy"
    );

    // tonic answers a failed unary call "trailers-only": grpc-status in the response headers.
    let status = call_unary(&mut client, Request::new(request(MISSING)))
        .await
        .expect_err("the server fails the call");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), NOT_FOUND_MESSAGE, "{status:?}");
    assert_eq!(
        status.metadata().get("x-lookup").map(|v| v.to_str().ok()),
        Some(Some("missing")),
        "{status:?}"
    );

    // The connection (and the proxy's upstream h2 connection) keeps serving after an error.
    let response = call_unary(&mut client, Request::new(request("again")))
        .await
        .expect("call after an error");
    assert_eq!(response.get_ref().message, "again");
}

#[tokio::test]
async fn server_streaming_delivers_every_message_in_order_then_trailers() {
    let f = fixture().await;
    let mut client = client(f.addr).await;

    let response = call_count(
        &mut client,
        Request::new(EchoRequest {
            count: 5,
            ..request("item")
        }),
    )
    .await;
    assert_eq!(
        response.metadata().get("x-stream").map(|v| v.to_str().ok()),
        Some(Some("count"))
    );
    let mut stream = response.into_inner();
    let mut received = Vec::new();
    // `message` returns Err for any status but OK, so reaching `None` means status OK.
    while let Some(reply) = within("next message", stream.message())
        .await
        .expect("stream ends with status OK")
    {
        received.push((reply.index, reply.message));
    }
    let expected: Vec<(u32, String)> = (0..5).map(|i| (i, format!("item-{i}"))).collect();
    assert_eq!(received, expected);

    let trailers = within("trailers", stream.trailers())
        .await
        .expect("trailers")
        .expect("the server sent trailers");
    assert_eq!(
        trailers.get("x-total").map(|v| v.to_str().ok()),
        Some(Some("5")),
        "{trailers:?}"
    );
}

#[tokio::test]
async fn server_streaming_messages_are_not_held_back_by_the_proxy() {
    let f = fixture().await;
    let mut client = client(f.addr).await;

    // The server sends one message, then waits for this test before sending the rest: a proxy
    // that buffered the response would never deliver the first one.
    let mut stream = call_count(
        &mut client,
        Request::new(EchoRequest {
            count: 3,
            gated: true,
            ..request("live")
        }),
    )
    .await
    .into_inner();
    let first = within("the first message, before the stream ends", stream.message())
        .await
        .expect("first message")
        .expect("a message, not the end");
    assert_eq!((first.index, first.message.as_str()), (0, "live-0"));

    f.state.gate.notify_one();
    let mut rest = Vec::new();
    while let Some(reply) = within("next message", stream.message())
        .await
        .expect("stream ends with status OK")
    {
        rest.push(reply.message);
    }
    assert_eq!(rest, ["live-1", "live-2"]);
}

#[tokio::test]
async fn error_status_in_trailers_after_messages_reaches_the_client() {
    let f = fixture().await;
    let mut client = client(f.addr).await;

    let mut stream = call_count(
        &mut client,
        Request::new(EchoRequest {
            count: 5,
            fail_after: 2,
            ..request("q")
        }),
    )
    .await
    .into_inner();
    let mut received = Vec::new();
    let status = loop {
        match within("next message", stream.message()).await {
            Ok(Some(reply)) => received.push(reply.message),
            Ok(None) => {
                panic!("stream ended with OK after {received:?}; expected RESOURCE_EXHAUSTED")
            }
            Err(status) => break status,
        }
    };
    assert_eq!(received, ["q-0", "q-1"]);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "quota used up after 2", "{status:?}");
}

#[tokio::test]
async fn request_metadata_reaches_the_server() {
    let f = fixture().await;
    let mut client = client(f.addr).await;

    let trace: &[u8] = &[0x00, 0x9f, 0xff, 0x01, b'\n'];
    let mut call = Request::new(request("with metadata"));
    call.metadata_mut()
        .insert("x-tenant", MetadataValue::from_static("acme"));
    call.metadata_mut()
        .insert_bin("trace-bin", BinaryMetadataValue::from_bytes(trace));
    let reply = call_unary(&mut client, call)
        .await
        .expect("unary call succeeds")
        .into_inner();
    assert_eq!(reply.tenant, "acme");
    assert_eq!(reply.trace, trace);
    assert_eq!(reply.forwarded_for, "127.0.0.1");

    // Metadata on a streaming call too, seen by every reply.
    let mut call = Request::new(EchoRequest {
        count: 2,
        ..request("s")
    });
    call.metadata_mut()
        .insert("x-tenant", MetadataValue::from_static("globex"));
    let mut stream = call_count(&mut client, call).await.into_inner();
    let mut tenants = Vec::new();
    while let Some(reply) = within("next message", stream.message())
        .await
        .expect("stream ends with status OK")
    {
        tenants.push(reply.tenant);
    }
    assert_eq!(tenants, ["globex", "globex"]);
}

// ---- A filter's gRPC callouts to the service. ----

/// A request header as the `echo` upstream wrote it back (`name: value` lines); empty when
/// absent.
fn echoed<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_default()
}

/// An `EchoReply` from the hex the `test_callout` filter writes.
fn echo_reply(hex: &str) -> EchoReply {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    <EchoReply as prost::Message>::decode(&bytes[..]).expect("an EchoReply")
}

#[tokio::test]
async fn a_filter_calls_the_service_and_reads_its_message_status_and_metadata() {
    let (grpc, _state, server) = echo_service().await;
    let app = echo("app").await;
    // A port nothing listens on.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = |cluster: &str, extra: &str| {
        format!("{{ cluster: {cluster}, grpc_service: {SERVICE}, grpc_method: Unary{extra} }}")
    };
    let clusters = format!(
        "  - {{ name: grpc, protocol: http2, endpoints: [{{ address: \"{grpc}\" }}] }}\n  - {{ name: plain, endpoints: [{{ address: \"{grpc}\" }}] }}\n  - {{ name: gone, protocol: http2, endpoints: [{{ address: \"{gone}\" }}] }}\n"
    );
    let proxy_with = |config: String| {
        let filters = wasm_filter("authz", "test_callout", &config, "fail_closed");
        start_proxy(&with_filters(&filters, &endpoints(&[app.addr]), &clusters), 1)
    };
    let proxy = proxy_with(config("grpc", ""));
    let mut client = H1::connect(proxy.listener_addr("main").expect("listener")).await;

    // OK: the reply message (the request's metadata echoed in it) and its initial metadata.
    let r = client.get("svc", "/", &[("x-user", "alice")]).await;
    assert_eq!(r.status, http::StatusCode::OK, "{r:?}");
    let reply = echo_reply(echoed(&r, "x-authz"));
    assert_eq!((reply.message.as_str(), reply.tenant.as_str()), ("alice", "alice"));
    assert_eq!(echoed(&r, "x-served-by"), "echo", "{}", r.body);

    // NOT_FOUND: the status, and its message as the service wrote it (percent-decoded).
    let r = client.get("svc", "/", &[("x-user", MISSING)]).await;
    assert_eq!(r.status, http::StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.header("x-grpc-status"), Some("5"));
    assert_eq!(r.body, format!("5 {NOT_FOUND_MESSAGE}\n"));

    // Cancelled at once: the request goes on (the cancel found its call).
    let cancelling = proxy_with(config("grpc", ", grpc_cancel: true"));
    let r = get(cancelling.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, http::StatusCode::OK, "{r:?}");
    assert!(
        r.body.contains("x-grpc-cancelled: 1") && !r.body.contains("x-authz"),
        "{}",
        r.body
    );

    // An HTTP/1.1 cluster cannot carry gRPC: the dispatch is refused.
    let plain = proxy_with(config("plain", ""));
    let r = get(plain.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, http::StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
    assert_eq!(r.body, "callout dispatch failed\n");

    // No service to reach: UNAVAILABLE.
    let unreachable = proxy_with(config("gone", ""));
    let r = get(unreachable.listener_addr("main").expect("listener"), "svc", "/").await;
    assert_eq!(r.status, http::StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.header("x-grpc-status"), Some("14"), "{r:?}");
    assert!(r.body.starts_with("14 "), "{}", r.body);
    server.abort();
}

#[tokio::test]
async fn a_filter_streams_from_the_service_and_reads_each_message_and_the_end() {
    let (grpc, _state, server) = echo_service().await;
    let app = echo("app").await;
    let config = format!("{{ cluster: grpc, grpc_service: {SERVICE}, grpc_method: Count, grpc_stream: true }}");
    let filters = wasm_filter("authz", "test_callout", &config, "fail_closed");
    let clusters = format!("  - {{ name: grpc, protocol: http2, endpoints: [{{ address: \"{grpc}\" }}] }}\n");
    let proxy = start_proxy(&with_filters(&filters, &endpoints(&[app.addr]), &clusters), 1);
    let r = H1::connect(proxy.listener_addr("main").expect("listener"))
        .await
        .get("svc", "/", &[("x-user", "bo")])
        .await;
    assert_eq!(r.status, http::StatusCode::OK, "{r:?}");
    let header = |name| echoed(&r, name);
    // Each message as it came, the initial metadata, the trailing metadata and the status.
    let replies: Vec<(String, u32)> = header("x-stream-replies")
        .split(',')
        .map(|hex| {
            let reply = echo_reply(hex);
            (reply.message, reply.index)
        })
        .collect();
    assert_eq!(
        replies,
        [("bo-0".to_owned(), 0), ("bo-1".to_owned(), 1), ("bo-2".to_owned(), 2)]
    );
    assert_eq!(header("x-stream-metadata"), "count");
    assert_eq!(header("x-stream-total"), "3");
    assert_eq!(header("x-stream-status"), "0");

    // A stream the service ends with an error after two messages: both, then its status.
    let r = H1::connect(proxy.listener_addr("main").expect("listener"))
        .await
        .get("svc", "/", &[("x-user", "bo"), ("x-fail-after", "2")])
        .await;
    assert_eq!(r.status, http::StatusCode::OK, "{r:?}");
    let header = |name| echoed(&r, name);
    assert_eq!(header("x-stream-replies").split(',').count(), 2, "{}", r.body);
    assert_eq!(header("x-stream-status"), "8", "RESOURCE_EXHAUSTED: {}", r.body);
    assert_eq!(header("x-stream-message"), "quota used up after 2");
    assert_eq!(header("x-stream-total"), "");
    server.abort();
}
