//! WebSocket through the proxy: the HTTP/1.1 `Upgrade` goes to the upstream, its 101 comes
//! back and the connection is then tunnelled both ways; an `Upgrade` the upstream declines is
//! an ordinary exchange on a connection that keeps serving.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{accept_hdr_async, client_async};

use crate::support::*;

/// What the WebSocket upstream saw, per connection, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An in-process WebSocket server echoing text and binary messages.
struct WsEcho {
    addr: SocketAddr,
    log: Arc<Log>,
    task: JoinHandle<()>,
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The handshake callback: logs the request the upstream received.
struct LogHandshake(Arc<Log>);

impl Callback for LogHandshake {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let host = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("?");
        self.0.push(format!("handshake {} host={host}", request.uri()));
        Ok(response)
    }
}

/// Logs `handshake <path> host=<host>` for each handshake and, when a connection ends,
/// `closed` after a clean closing handshake or `error: ...` otherwise.
async fn ws_echo() -> WsEcho {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws upstream");
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(Log::default());
    let shared = log.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = shared.clone();
            connections.spawn(async move {
                let mut ws = match accept_hdr_async(stream, LogHandshake(log.clone())).await {
                    Ok(ws) => ws,
                    Err(error) => return log.push(format!("error: handshake: {error}")),
                };
                loop {
                    match ws.next().await {
                        Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                            if let Err(error) = ws.send(message).await {
                                return log.push(format!("error: send: {error}"));
                            }
                        }
                        // Pings are answered and closes replied to by tungstenite itself.
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return log.push(format!("error: {error}")),
                        None => return log.push("closed".to_owned()),
                    }
                }
            });
        }
    });
    WsEcho { addr, log, task }
}

/// Awaits `future`, failing the test after 10 s rather than hanging.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn websocket_messages_echo_through_the_proxy_and_close_cleanly() {
    let upstream = ws_echo().await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[upstream.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");

    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (mut ws, response) = within("the handshake", client_async("ws://svc/echo", stream))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(upstream.log.lines(), ["handshake /echo host=svc"]);

    let big_text: String = (0..20_000).map(|i| format!("{i:05}")).collect();
    let big_binary: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let messages = vec![
        Message::text("hello"),
        Message::binary(Bytes::from_static(&[0, 1, 2, 0x7f, 0x80, 0xfe, 0xff])),
        Message::text("ünïcödé ✓ — text frames are UTF-8"),
        Message::text(big_text),
        Message::binary(big_binary),
        Message::text(""),
        Message::binary(Bytes::new()),
    ];
    // One at a time…
    for message in &messages {
        within("send", ws.send(message.clone())).await.expect("send");
        let echoed = within("an echo", ws.next())
            .await
            .expect("the tunnel stays open")
            .expect("a message");
        assert_eq!(&echoed, message);
    }
    // …and pipelined: everything sent before anything is read back.
    for message in &messages {
        within("send", ws.feed(message.clone())).await.expect("feed");
    }
    within("flush", ws.flush()).await.expect("flush");
    for message in &messages {
        let echoed = within("an echo", ws.next())
            .await
            .expect("the tunnel stays open")
            .expect("a message");
        assert_eq!(&echoed, message);
    }

    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    within("close", ws.close(Some(bye))).await.expect("close");
    match within("the close reply", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the upstream's close reply, got {other:?}"),
    }
    assert!(
        within("the end of the stream", ws.next()).await.is_none(),
        "nothing after the close"
    );
    let closed = eventually(Duration::from_secs(5), || async {
        upstream.log.lines().last().map(String::as_str) == Some("closed")
    })
    .await;
    assert!(
        closed,
        "the upstream saw a clean closing handshake: {:?}",
        upstream.log.lines()
    );
}

#[tokio::test]
async fn upgrade_the_upstream_declines_is_an_ordinary_exchange() {
    let plain = echo("plain").await;
    let proxy = start_proxy(&single_cluster(&endpoints(&[plain.addr]), ""), 1);
    let addr = proxy.listener_addr("main").expect("listener");
    let mut client = H1::connect(addr).await;

    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = within("the reply to the upgrade request", client.get("svc", "/chat", &upgrade)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("plain"));
    assert!(r.body.starts_with("plain GET /chat HTTP/1.1 svc\n"), "{}", r.body);
    // The upstream was offered the upgrade and chose not to take it.
    assert!(r.body.contains("upgrade: websocket\n"), "{}", r.body);
    assert_eq!(r.header("upgrade"), None, "{r:?}");

    // The connection is still plain HTTP/1.1 and keeps serving.
    for path in ["/next", "/after"] {
        let r = within("the next reply", client.get("svc", path, &[])).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert!(
            r.body.starts_with(&format!("plain GET {path} HTTP/1.1 svc\n")),
            "{}",
            r.body
        );
    }
    assert_eq!(plain.hits(), 3);
}
