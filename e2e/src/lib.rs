//! Fixtures for end-to-end tests: the workspace's binaries and first-party filters built once,
//! processes that are killed when dropped, tiny HTTP upstreams, a plain HTTP/1.1 client (one
//! connection per request, or keep-alive).
//!
//! Everything runs on 127.0.0.1 with real sockets and real processes; nothing is mocked.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `target/<profile>` directory the running test binary lives in.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// Paths of the workspace binaries, built (once per test process) with the same profile as
/// the tests.
pub struct Binaries {
    /// `weft-proxy`.
    pub proxy: PathBuf,
    /// `weft-controller`.
    pub controller: PathBuf,
    /// `weftctl`.
    pub weftctl: PathBuf,
    /// `bookinfo` (Istio's Bookinfo services, `examples/bookinfo/app`).
    pub bookinfo: PathBuf,
}

/// Builds the binaries (a no-op when `cargo test --workspace` built them already).
pub fn binaries() -> &'static Binaries {
    static BUILT: OnceLock<Binaries> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let release = profile.file_name().is_some_and(|n| n == "release");
        let target = profile.parent().expect("target dir");
        let mut command = Command::new(env!("CARGO"));
        command
            .current_dir(root())
            .args([
                "build",
                "--quiet",
                "--locked",
                "-p",
                "weft-proxy",
                "-p",
                "weft-controller",
                "-p",
                "weftctl",
                "-p",
                "weft-bookinfo",
            ])
            .arg("--target-dir")
            .arg(target);
        if release {
            command.arg("--release");
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
        Binaries {
            proxy: profile.join("weft-proxy"),
            controller: profile.join("weft-controller"),
            weftctl: profile.join("weftctl"),
            bookinfo: profile.join("bookinfo"),
        }
    })
}

/// Builds the first-party filters the controller needs (router, retry, fault) and telemetry
/// for wasm32-wasip1 and returns the directory holding the `.wasm` files.
pub fn filters_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = root().join("target/filters");
            let status = Command::new(env!("CARGO"))
                .current_dir(root().join("filters"))
                .env("CARGO_TARGET_DIR", &target)
                .args(["build", "--quiet", "--release", "--locked", "--target", "wasm32-wasip1"])
                .args(["-p", "router", "-p", "retry", "-p", "fault", "-p", "telemetry"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the filters failed");
            target.join("wasm32-wasip1/release")
        })
        .clone()
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh, empty temporary directory (removed when dropped).
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `weft-e2e-<name>-<pid>-<n>` in the system's temporary directory.
    pub fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-e2e-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free TCP port on 127.0.0.1 (checked by binding it).
pub fn free_port() -> u16 {
    // Below Linux's ephemeral range (32768 and up), so that this machine's outgoing
    // connections cannot take the port before a sidecar binds it; each call a different one.
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = (std::process::id().wrapping_mul(7_919).wrapping_add(nanos)) % SPAN;
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {FIRST} and {}", FIRST + SPAN)
}

/// A child process, killed (SIGKILL) when dropped; its stderr goes to a log file that is
/// printed when a test fails.
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(program)
            .args(args)
            .env("WEFT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- {} log ({}) -----\n{}", self.name, self.log.display(), self.log());
        }
    }
}

/// A tiny HTTP/1.1 server answering every request with `200` and its name as the body,
/// plus the request's `end-user` header echoed as `x-end-user`.
pub struct Upstream {
    /// Where it listens.
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Starts serving on a free port.
    pub fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let address = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_owned();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let name = name.clone();
                std::thread::spawn(move || serve(stream, &name));
            }
        });
        Self { address, stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.address);
    }
}

fn serve(stream: TcpStream, name: &str) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut user = String::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((key, value)) = header.split_once(':') {
                let key = key.trim().to_ascii_lowercase();
                if key == "content-length" {
                    length = value.trim().parse().unwrap_or(0);
                } else if key == "end-user" {
                    user = value.trim().to_owned();
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-end-user: {user}\r\n\r\n{name}",
            name.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A response as the test sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code (0 when the connection failed).
    pub status: u16,
    /// Raw header block.
    pub headers: String,
    /// Body.
    pub body: String,
}

/// Sends `GET path` with `Host: host` (and extra headers) to `proxy`, one connection per
/// request. A connection failure gives status 0.
pub fn get(proxy: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let failed = |e: std::io::Error| Reply {
        status: 0,
        headers: String::new(),
        body: e.to_string(),
    };
    let mut stream = match TcpStream::connect_timeout(&proxy, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return failed(e);
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        return failed(e);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections at `address`.
pub fn wait_listening(address: SocketAddr, timeout: Duration) -> bool {
    eventually(timeout, || {
        TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()
    })
    .is_some()
}

/// One HTTP/1.1 keep-alive connection: requests are sent one after the other on it, and it
/// reconnects when the server closed it. Responses need a `content-length` or chunked body.
pub struct Connection {
    address: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    /// A connection to `address`, opened on the first request.
    pub fn new(address: SocketAddr) -> Self {
        Self { address, stream: None }
    }

    /// `GET path` with `Host: host` and extra headers; reconnects once if the kept-alive
    /// connection turns out closed. An error is the I/O failure.
    pub fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
        let reused = self.stream.is_some();
        match self.exchange(host, path, headers) {
            Ok(reply) => Ok(reply),
            Err(_) if reused => {
                self.stream = None;
                self.exchange(host, path, headers)
            }
            Err(error) => Err(error),
        }
    }

    fn exchange(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect_timeout(&self.address, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(20)))?;
                stream.set_nodelay(true)?;
                BufReader::new(stream)
            }
        };
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.get_mut().write_all(request.as_bytes())?;
        let (reply, close) = read_response(&mut stream)?;
        if !close {
            self.stream = Some(stream);
        }
        Ok(reply)
    }
}

/// Reads one response with a `content-length` or chunked body; also says whether the server
/// will close the connection.
fn read_response(stream: &mut BufReader<TcpStream>) -> std::io::Result<(Reply, bool)> {
    use std::io::{Error, ErrorKind};
    let invalid = |what: &str| Error::new(ErrorKind::InvalidData, what.to_owned());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            stream.read_line(&mut size)?;
            let size = size.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let length = header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| invalid("a response without content-length"))?;
        body.resize(length, 0);
        stream.read_exact(&mut body)?;
    }
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let reply = Reply {
        status,
        headers: head.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    Ok((reply, close))
}
