//! A minimal blocking HTTP/1.1 client: enough for readiness checks and the latency client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
}

/// A response read from a [`Connection`].
pub(crate) struct Response {
    /// Status code.
    pub(crate) status: u16,
    /// The body, de-chunked.
    pub(crate) body: Vec<u8>,
    /// Whether the server will close the connection after this response.
    pub(crate) close: bool,
}

impl Connection {
    /// Connects to `addr`; every request will be `GET path`.
    pub(crate) fn open(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Self> {
        Self::open_with_headers(addr, path, &[], timeout)
    }

    /// Connects to `addr`; every request will be `GET path` with `headers` (`Name: value`)
    /// after the usual ones.
    pub(crate) fn open_with_headers(
        addr: SocketAddr,
        path: &str,
        headers: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        stream
            .set_read_timeout(Some(timeout))
            .context("setting a read timeout")?;
        stream
            .set_write_timeout(Some(timeout))
            .context("setting a write timeout")?;
        let writer = stream.try_clone().context("cloning the socket")?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weft-xtask-bench\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            request: request.into_bytes(),
        })
    }

    /// Sends the request; call [`Connection::receive`] for its response.
    pub(crate) fn send(&mut self) -> anyhow::Result<()> {
        self.writer.write_all(&self.request).context("sending the request")
    }

    /// Reads one response.
    pub(crate) fn receive(&mut self) -> anyhow::Result<Response> {
        let mut line = String::new();
        self.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = line.starts_with("HTTP/1.0");
        loop {
            line.clear();
            self.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                bail!("bad header line {header:?}")
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .with_context(|| format!("bad content-length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.read_line(&mut line)?;
                let size = line.trim().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        line.clear();
                        self.read_line(&mut line)?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size + 2, 0);
                self.reader.read_exact(&mut body[start..]).context("reading a chunk")?;
                body.truncate(start + size);
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            self.reader.read_exact(&mut body).context("reading the body")?;
        } else if status >= 200 && status != 204 && status != 304 {
            self.reader
                .read_to_end(&mut body)
                .context("reading the body to the end")?;
            close = true;
        }
        Ok(Response { status, body, close })
    }

    fn read_line(&mut self, line: &mut String) -> anyhow::Result<()> {
        if self.reader.read_line(line).context("reading the response")? == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }
}

/// `GET path` on a fresh connection.
pub(crate) fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    let mut connection = Connection::open(addr, path, Duration::from_secs(2))?;
    connection.send()?;
    connection.receive()
}

/// Waits until `GET path` answers 200, calling `alive` between tries to fail early when
/// the server died.
pub(crate) fn wait_ok(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        alive()?;
        let error = match get(addr, path) {
            Ok(response) if response.status == 200 => return Ok(()),
            Ok(response) => anyhow::anyhow!("status {}", response.status),
            Err(error) => error,
        };
        if Instant::now() >= deadline {
            return Err(error.context(format!("http://{addr}{path} not ready within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
