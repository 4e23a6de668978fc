//! The hostcalls: every proxy-wasm 0.2.1 import and the WASI preview1 subset filters use.
//!
//! Rules every function here keeps:
//! - Guest pointers and lengths are checked against the guest's memory; a bad one gets
//!   `BadArgument`, never a panic or a trap of the host.
//! - Buffers handed to the guest are allocated by the guest's own allocator with exactly the
//!   length written; an empty buffer is written as (0, 0), but a value that exists and is
//!   empty (a header, a property) still gets an allocation, since the SDK reads null as absent.
//! - No re-entrancy: a hostcall records intents (continue, local reply, callouts, upstream
//!   choice, ...) in [`Intents`]; the filter applies them after the guest call returns. The
//!   allocator is the only guest code called from inside a hostcall.
//! - On every valid use, only the status codes the Rust SDK expects on that path are
//!   returned. Misuse (a bad header name, a body write outside a body phase, shared data
//!   full) gets the ABI's error status, which the SDK turns into a panic: the guest traps and
//!   its failure policy applies, as for any other guest fault.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::sync::mpsc;
use wasmtime::{Caller, Engine, Linker, Memory};

use super::abi::{self, BufferType, MapType, MetricType, Status};
use super::props::{self, StreamInfo};
use super::runtime::{SetError, SharedState};
use super::vm::VmData;
use crate::callout::{CalloutRequest, CalloutResponse, Callouts};
use crate::filter::{LocalReply, UpstreamChoice};

/// A filter's identity and configuration, shared by its VMs.
pub(crate) struct Plugin {
    pub(crate) name: String,
    pub(crate) vm_id: String,
    pub(crate) root_id: String,
    pub(crate) vm_config: Bytes,
    pub(crate) plugin_config: Bytes,
}

/// A request or response head as the guest sees it: pseudo-headers and the header map.
///
/// One view per direction lives in the host state for the VM's whole life: the head's map is
/// swapped in and out around each call and the pseudo-header strings are refilled in place,
/// so a headers phase allocates nothing here once the VM is warm.
#[derive(Debug, Default)]
pub(crate) struct HeadView {
    /// Whether the head is visible to the current call.
    pub(crate) active: bool,
    pub(crate) pseudo: Vec<(&'static str, String)>,
    /// A pseudo-header was written during the call (the head must be rebuilt from them).
    pub(crate) pseudo_changed: bool,
    pub(crate) map: HeaderMap,
}

impl HeadView {
    /// The head, if the current call may see it.
    pub(crate) fn visible(&self) -> Option<&Self> {
        self.active.then_some(self)
    }

    /// Sets the pseudo-headers to `values` (in this order), reusing their strings.
    pub(crate) fn fill_pseudo(pseudo: &mut Vec<(&'static str, String)>, values: &[(&'static str, &str)]) {
        if pseudo.len() != values.len() || pseudo.iter().zip(values).any(|((a, _), (b, _))| a != b) {
            *pseudo = values.iter().map(|(k, _)| (*k, String::new())).collect();
        }
        for ((_, slot), (_, value)) in pseudo.iter_mut().zip(values) {
            slot.clear();
            slot.push_str(value);
        }
    }

    /// Writes the value of `key` (lowercase) into `out`; false when absent.
    fn value_into(&self, key: &str, out: &mut Vec<u8>) -> bool {
        out.clear();
        if key.starts_with(':') {
            return match self.pseudo.iter().find(|(k, _)| *k == key) {
                Some((_, v)) => {
                    out.extend_from_slice(v.as_bytes());
                    true
                }
                None => false,
            };
        }
        let mut found = false;
        // Several lines of one header read as one value, as Envoy joins them.
        for value in self.map.get_all(key) {
            if found {
                out.push(b',');
            }
            out.extend_from_slice(value.as_bytes());
            found = true;
        }
        found
    }

    /// The serialized map (pseudo-headers first) into `out`.
    fn serialize_into(&self, out: &mut Vec<u8>) {
        // The map's iterator is not `Clone`: the pairs are walked once per pass instead.
        let pairs = || {
            let pseudo = self.pseudo.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
            pseudo.chain(self.map.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())))
        };
        abi::serialize_map_with(pairs, out);
    }

    fn set(&mut self, key: &str, value: &[u8], append: bool) -> Result<(), Status> {
        if key.starts_with(':') {
            let value = std::str::from_utf8(value).map_err(|_| Status::BadArgument)?;
            match self.pseudo.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => {
                    slot.1.clear();
                    slot.1.push_str(value);
                    self.pseudo_changed = true;
                }
                None => return Err(Status::BadArgument),
            }
            return Ok(());
        }
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| Status::BadArgument)?;
        let value = HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
        if append {
            self.map.append(name, value);
        } else {
            self.map.insert(name, value);
        }
        Ok(())
    }

    fn remove(&mut self, key: &str) {
        if !key.starts_with(':') {
            self.map.remove(key);
        }
    }

    fn replace_all(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), Status> {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            let key = String::from_utf8(k).map_err(|_| Status::BadArgument)?;
            if key.starts_with(':') {
                let value = String::from_utf8(v).map_err(|_| Status::BadArgument)?;
                if let Some(slot) = self.pseudo.iter_mut().find(|(p, _)| **p == key) {
                    slot.1 = value;
                    self.pseudo_changed = true;
                }
                continue;
            }
            let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| Status::BadArgument)?;
            map.append(name, HeaderValue::from_bytes(&v).map_err(|_| Status::BadArgument)?);
        }
        self.map = map;
        Ok(())
    }
}

/// The stream data a guest call may see. It stays in the store; the filter moves a head's
/// map, a body chunk, the stream info and the properties in and out around each call.
#[derive(Default)]
pub(crate) struct StreamData {
    pub(crate) request: HeadView,
    pub(crate) response: HeadView,
    /// The body chunk of the current body phase (`body_kind` says which), as the proxy gave
    /// it; `body_edit` holds it once the guest changed it (copied on the first write).
    pub(crate) body_kind: Option<BufferType>,
    pub(crate) body: Bytes,
    pub(crate) body_edit: Option<Vec<u8>>,
    /// The call is on a stream context (a request's phase or callout), not the root.
    pub(crate) in_stream: bool,
    /// What properties read of the stream; `None` when the filter does not declare
    /// `properties`.
    pub(crate) info: Option<Box<StreamInfo>>,
    pub(crate) properties: HashMap<String, Vec<u8>>,
}

impl StreamData {
    /// The current body chunk, if the call is a body phase of `kind`.
    fn body(&self, kind: BufferType) -> Option<&[u8]> {
        (self.body_kind == Some(kind)).then(|| self.body_edit.as_deref().unwrap_or(&self.body))
    }
}

/// What a guest asked for during one call; applied after the call returns.
#[derive(Default)]
pub(crate) struct Intents {
    pub(crate) continue_request: bool,
    pub(crate) continue_response: bool,
    pub(crate) local_reply: Option<LocalReply>,
    pub(crate) close: bool,
    pub(crate) callouts: Vec<(u32, CalloutRequest)>,
    /// gRPC streams to open: the request (headers, no body) and the messages the guest sends.
    pub(crate) streams: Vec<(u32, CalloutRequest, mpsc::UnboundedReceiver<Bytes>)>,
    /// gRPC calls and streams the guest cancelled (`proxy_grpc_cancel`): dropped, never
    /// delivered.
    pub(crate) cancelled: Vec<u32>,
    pub(crate) upstream: Option<UpstreamChoice>,
    /// A retry was asked for, after this backoff.
    pub(crate) retry: Option<Duration>,
    /// The stream is to wait this long before going on (`weft.delay`).
    pub(crate) delay: Option<Duration>,
    pub(crate) tick_period: Option<u32>,
}

impl Intents {
    /// Takes the intents if the guest recorded any (most calls record none; taking an empty
    /// set would still copy it).
    pub(crate) fn take_any(&mut self) -> Option<Intents> {
        let any = self.continue_request
            || self.continue_response
            || self.local_reply.is_some()
            || self.close
            || !self.callouts.is_empty()
            || !self.streams.is_empty()
            || !self.cancelled.is_empty()
            || self.upstream.is_some()
            || self.retry.is_some()
            || self.delay.is_some()
            || self.tick_period.is_some();
        any.then(|| std::mem::take(self))
    }
}

/// The store's data: everything hostcalls can reach.
pub(crate) struct HostState {
    pub(crate) plugin: Arc<Plugin>,
    pub(crate) shared: Arc<SharedState>,
    /// Where this VM's root driver hears of enqueued items on queues it registered.
    pub(crate) queue_notify: Option<mpsc::UnboundedSender<u32>>,
    pub(crate) stream: StreamData,
    /// The response of the callout being delivered: an HTTP call's, or a gRPC call's (initial
    /// metadata, message, trailing metadata) when `grpc_status` is set.
    pub(crate) call_response: Option<CalloutResponse>,
    /// The status and message of the gRPC call being delivered (`proxy_get_status`).
    pub(crate) grpc_status: Option<(u32, String)>,
    /// gRPC calls dispatched and not delivered yet, which `proxy_grpc_cancel` may cancel.
    pub(crate) grpc_pending: Vec<u32>,
    /// Open gRPC streams, with the sender of their messages until closed for sending.
    pub(crate) grpc_streams: std::collections::HashMap<u32, Option<mpsc::UnboundedSender<Bytes>>>,
    pub(crate) callouts: Option<Arc<Callouts>>,
    pub(crate) intents: Intents,
    pub(crate) next_token: u32,
    /// The last message the guest logged at error level or above, for rejection reasons.
    pub(crate) last_error: Option<String>,
    /// The guest's exported memory, looked up once at instantiation.
    pub(crate) memory: Option<Memory>,
    /// The guest's allocator (`proxy_on_memory_allocate` or `malloc`), looked up once.
    pub(crate) allocator: Option<wasmtime::TypedFunc<i32, i32>>,
    /// Where the guest's log lines are also kept (the in-process harness only).
    pub(crate) log_sink: Option<LogSink>,
    /// Reused for values handed to the guest (header values, serialized maps).
    scratch: Vec<u8>,
}

/// Guest log lines (`proxy_log` level, message), kept for the in-process harness.
pub(crate) type LogSink = Arc<Mutex<Vec<(i32, String)>>>;

thread_local! {
    /// The sink of VMs created on this thread; set only by the harness, around its calls.
    static LOG_CAPTURE: std::cell::RefCell<Option<LogSink>> = const { std::cell::RefCell::new(None) };
}

/// Until the guard drops, VMs created on this thread keep their guest's log lines in `sink`
/// (for their whole life), besides logging them as usual.
pub(crate) fn capture_logs(sink: LogSink) -> LogCapture {
    LogCapture(LOG_CAPTURE.try_with(|c| c.replace(Some(sink))).ok().flatten())
}

/// Restores the previous capture when dropped.
pub(crate) struct LogCapture(Option<LogSink>);

impl Drop for LogCapture {
    fn drop(&mut self) {
        let prior = self.0.take();
        let _ = LOG_CAPTURE.try_with(|c| c.replace(prior));
    }
}

impl HostState {
    /// A map of the callout being delivered: an HTTP call's headers or trailers, or a gRPC
    /// call's initial or trailing metadata; `None` for other kinds or outside a delivery.
    fn call_map(&self, map: MapType) -> Option<&Vec<(String, Vec<u8>)>> {
        let response = self.call_response.as_ref()?;
        match (map, self.grpc_status.is_some()) {
            (MapType::CallResponseHeaders, false) | (MapType::GrpcInitialMetadata, true) => Some(&response.headers),
            (MapType::CallResponseTrailers, false) | (MapType::GrpcTrailingMetadata, true) => Some(&response.trailers),
            _ => None,
        }
    }

    pub(crate) fn new(plugin: Arc<Plugin>, shared: Arc<SharedState>) -> Self {
        Self {
            plugin,
            shared,
            queue_notify: None,
            stream: StreamData::default(),
            call_response: None,
            grpc_status: None,
            grpc_pending: Vec::new(),
            grpc_streams: std::collections::HashMap::new(),
            callouts: None,
            intents: Intents::default(),
            next_token: 0,
            last_error: None,
            memory: None,
            allocator: None,
            log_sink: LOG_CAPTURE.try_with(|c| c.borrow().clone()).ok().flatten(),
            scratch: Vec::new(),
        }
    }

    fn head(&mut self, map: MapType) -> Option<&mut HeadView> {
        let head = match map {
            MapType::RequestHeaders => &mut self.stream.request,
            MapType::ResponseHeaders => &mut self.stream.response,
            _ => return None,
        };
        head.active.then_some(head)
    }
}

type Ctx<'a> = Caller<'a, VmData>;

fn memory(caller: &mut Ctx<'_>) -> Option<Memory> {
    caller.data().host.memory
}

fn range(ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr as u32).ok()?;
    let len = usize::try_from(len as u32).ok()?;
    Some(start..start.checked_add(len)?)
}

/// Copies guest bytes, bounds-checked.
fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = memory(caller).ok_or(Status::InternalFailure)?;
    let range = range(ptr, len).ok_or(Status::BadArgument)?;
    memory
        .data(&caller)
        .get(range)
        .map(<[u8]>::to_vec)
        .ok_or(Status::BadArgument)
}

fn read_string(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::BadArgument)
}

/// Header names up to this long are read onto the stack.
const KEY_INLINE: usize = 128;

/// A header name from the guest, lowercased.
enum Key {
    Inline([u8; KEY_INLINE], usize),
    Heap(String),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Key::Inline(buf, len) => std::str::from_utf8(&buf[..*len]).unwrap_or(""),
            Key::Heap(s) => s,
        }
    }
}

/// Reads a header name (UTF-8, bounds-checked) and lowercases it, without allocating for
/// ordinary names.
fn read_key(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<Key, Status> {
    read_small(caller, ptr, len, <[u8]>::make_ascii_lowercase).map_err(|s| match s {
        Status::SerializationFailure => Status::BadArgument,
        other => other,
    })
}

/// Reads a short UTF-8 string (bounds-checked; not UTF-8: `SerializationFailure`) and edits
/// it with `edit`, which must keep it UTF-8 (ASCII-only changes do), on the stack when it
/// fits.
fn read_small(caller: &mut Ctx<'_>, ptr: i32, len: i32, edit: impl Fn(&mut [u8])) -> Result<Key, Status> {
    let memory = memory(caller).ok_or(Status::InternalFailure)?;
    let range = range(ptr, len).ok_or(Status::BadArgument)?;
    let bytes = memory.data(&caller).get(range).ok_or(Status::BadArgument)?;
    let text = std::str::from_utf8(bytes).map_err(|_| Status::SerializationFailure)?;
    if text.len() <= KEY_INLINE {
        let mut buf = [0u8; KEY_INLINE];
        buf[..text.len()].copy_from_slice(text.as_bytes());
        edit(&mut buf[..text.len()]);
        Ok(Key::Inline(buf, text.len()))
    } else {
        let mut owned = text.as_bytes().to_vec();
        edit(&mut owned);
        String::from_utf8(owned)
            .map(Key::Heap)
            .map_err(|_| Status::SerializationFailure)
    }
}

/// Hands the host's scratch buffer, filled by `fill` (false: absent, `NotFound`), to the
/// guest as a value that exists; the buffer is kept for the next call.
/// Checks a callout and gives it a token; `InternalFailure` where no callout may be made (VM
/// startup calls), `refused` for a request the callouts refuse (unknown cluster, ...).
fn dispatch(c: &mut Ctx<'_>, request: &CalloutRequest, refused: Status) -> Result<u32, Status> {
    let data = &mut c.data_mut().host;
    let callouts = data.callouts.as_ref().ok_or(Status::InternalFailure)?;
    if let Err(error) = callouts.validate(request) {
        tracing::debug!(filter = %data.plugin.name, %error, grpc = request.grpc, "callout refused");
        return Err(refused);
    }
    data.next_token = data.next_token.wrapping_add(1).max(1);
    Ok(data.next_token)
}

/// Where a gRPC call or stream goes, as guest (pointer, length) pairs.
struct GrpcTarget {
    upstream: (i32, i32),
    service: (i32, i32),
    method: (i32, i32),
    metadata: (i32, i32),
}

/// The HTTP/2 request a gRPC call or stream travels as (no body yet); `ParseFailure` for
/// unreadable arguments, an empty service or method or one with `/`, a malformed metadata map
/// or one with a pseudo-header.
fn grpc_request(c: &mut Ctx<'_>, target: GrpcTarget, timeout: Option<Duration>) -> Result<CalloutRequest, Status> {
    let mut text = |(ptr, len)| read_string(c, ptr, len).map_err(|_| Status::ParseFailure);
    let (cluster, service, method) = (text(target.upstream)?, text(target.service)?, text(target.method)?);
    let (ptr, len) = target.metadata;
    let metadata = read(c, ptr, len)
        .ok()
        .and_then(|bytes| abi::deserialize_map(&bytes))
        .ok_or(Status::ParseFailure)?;
    let bad_name = |name: &str| name.is_empty() || name.contains('/');
    if bad_name(&service) || bad_name(&method) || metadata.iter().any(|(k, _)| k.starts_with(b":")) {
        return Err(Status::ParseFailure);
    }
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":path".to_owned(), format!("/{service}/{method}").into_bytes()),
        (":authority".to_owned(), cluster.clone().into_bytes()),
        (":scheme".to_owned(), b"http".to_vec()),
        ("content-type".to_owned(), b"application/grpc".to_vec()),
        ("te".to_owned(), b"trailers".to_vec()),
    ];
    if let Some(timeout) = timeout {
        // At most 8 digits: milliseconds, else whole seconds.
        let value = match timeout.as_millis() {
            ms @ ..=99_999_999 => format!("{ms}m"),
            ms => format!("{}S", ms.div_ceil(1000)),
        };
        headers.push(("grpc-timeout".to_owned(), value.into_bytes()));
    }
    headers.extend(
        metadata
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v)),
    );
    Ok(CalloutRequest {
        cluster,
        headers,
        body: Bytes::new(),
        // A stream has none: it lasts until it ends or the request does.
        timeout: timeout.unwrap_or(Duration::MAX),
        grpc: true,
    })
}

fn give_scratch(
    caller: &mut Ctx<'_>,
    present: bool,
    ret_ptr: i32,
    ret_len: i32,
    fill: impl FnOnce(&mut HostState, &mut Vec<u8>) -> bool,
) -> wasmtime::Result<i32> {
    let mut out = std::mem::take(&mut caller.data_mut().host.scratch);
    out.clear();
    let found = fill(&mut caller.data_mut().host, &mut out);
    let result = if found {
        give_inner(caller, &out, present, ret_ptr, ret_len).map(status)
    } else {
        Ok(Status::NotFound.code())
    };
    // A large value is not kept for the VM's life.
    if out.capacity() <= 64 << 10 {
        caller.data_mut().host.scratch = out;
    }
    result
}

fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = memory(caller).ok_or(Status::InternalFailure)?;
    let range = range(ptr, bytes.len() as i32).ok_or(Status::BadArgument)?;
    memory
        .data_mut(caller)
        .get_mut(range)
        .ok_or(Status::BadArgument)?
        .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

fn write_u64(caller: &mut Ctx<'_>, ptr: i32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the guest: allocated by its allocator, address and length written to
/// the two return pointers. A trap in the allocator ends the call.
fn give(caller: &mut Ctx<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> wasmtime::Result<Result<(), Status>> {
    give_inner(caller, bytes, false, ret_ptr, ret_len)
}

/// Hands a value that exists to the guest: even an empty one gets an allocation, since the
/// SDK reads a null pointer as "absent".
fn give_value(caller: &mut Ctx<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> wasmtime::Result<Result<(), Status>> {
    give_inner(caller, bytes, true, ret_ptr, ret_len)
}

fn give_inner(
    caller: &mut Ctx<'_>,
    bytes: &[u8],
    present: bool,
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<Result<(), Status>> {
    // Check the return slots before allocating anything.
    let memory = match memory(caller) {
        Some(m) => m,
        None => return Ok(Err(Status::InternalFailure)),
    };
    let size = memory.data_size(&caller);
    for slot in [ret_ptr, ret_len] {
        match range(slot, 4) {
            Some(r) if r.end <= size => {}
            _ => return Ok(Err(Status::BadArgument)),
        }
    }
    if bytes.is_empty() && !present {
        return Ok(write_u32(caller, ret_ptr, 0).and_then(|()| write_u32(caller, ret_len, 0)));
    }
    let Ok(len) = i32::try_from(bytes.len()) else {
        return Ok(Err(Status::BadArgument));
    };
    // Taken out of the state for the call and put back (no reference-counted clone).
    let Some(allocator) = caller.data_mut().host.allocator.take() else {
        return Ok(Err(Status::InternalFailure));
    };
    let called = allocator.call(&mut *caller, len);
    caller.data_mut().host.allocator = Some(allocator);
    let ptr = called?;
    if ptr == 0 {
        // malloc(0) may answer NULL; nothing else may.
        return Ok(if len == 0 {
            write_u32(caller, ret_ptr, 0).and_then(|()| write_u32(caller, ret_len, 0))
        } else {
            Err(Status::InternalFailure)
        });
    }
    Ok(write(caller, ptr, bytes)
        .and_then(|()| write_u32(caller, ret_ptr, ptr as u32))
        .and_then(|()| write_u32(caller, ret_len, len as u32)))
}

fn status(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok.code(),
        Err(s) => s.code(),
    }
}

fn log_guest(host: &HostState, level: i32, message: &str) {
    if let Some(sink) = &host.log_sink {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((level, message.to_owned()));
    }
    let filter = host.plugin.name.as_str();
    match level {
        0 => tracing::trace!(target: "weft::wasm", filter, "{message}"),
        1 => tracing::debug!(target: "weft::wasm", filter, "{message}"),
        2 => tracing::info!(target: "weft::wasm", filter, "{message}"),
        3 => tracing::warn!(target: "weft::wasm", filter, "{message}"),
        _ => tracing::error!(target: "weft::wasm", filter, "{message}"),
    }
}

fn log_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn monotonic_nanos() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(std::time::Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Random bytes from the kernel.
fn random_fill(buf: &mut [u8]) -> bool {
    static URANDOM: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let file = URANDOM.get_or_init(|| std::fs::File::open("/dev/urandom").ok().map(Mutex::new));
    match file {
        Some(file) => file.lock().unwrap_or_else(|p| p.into_inner()).read_exact(buf).is_ok(),
        None => false,
    }
}

/// Builds the linker with every host function.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<VmData>> {
    let mut linker: Linker<VmData> = Linker::new(engine);
    proxy_wasm(&mut linker)?;
    wasi(&mut linker)?;
    Ok(linker)
}

#[allow(
    clippy::too_many_lines,
    reason = "one linker definition per hostcall; splitting scatters the ABI"
)]
fn proxy_wasm(linker: &mut Linker<VmData>) -> wasmtime::Result<()> {
    const ENV: &str = "env";

    linker.func_wrap(
        ENV,
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            match read(&mut c, ptr, len) {
                Ok(bytes) => {
                    let message = String::from_utf8_lossy(&bytes);
                    log_guest(&c.data().host, level, &message);
                    if level >= 4 {
                        c.data_mut().host.last_error = Some(message.chars().take(1024).collect());
                    }
                    Status::Ok.code()
                }
                Err(s) => s.code(),
            }
        },
    )?;
    linker.func_wrap(ENV, "proxy_get_log_level", |mut c: Ctx<'_>, ret: i32| -> i32 {
        status(write_u32(&mut c, ret, log_level()))
    })?;
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ret: i32| -> i32 { status(write_u64(&mut c, ret, now_nanos())) },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, period: i32| -> i32 {
            c.data_mut().host.intents.tick_period = Some(period as u32);
            Status::Ok.code()
        },
    )?;

    // Buffers.
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            let Some(kind) = BufferType::from_raw(kind) else {
                return Ok(Status::BadArgument.code());
            };
            give_scratch(&mut c, false, ret_ptr, ret_len, |data, out| {
                let buffer: Option<&[u8]> = match kind {
                    BufferType::VmConfiguration => Some(&data.plugin.vm_config),
                    BufferType::PluginConfiguration => Some(&data.plugin.plugin_config),
                    BufferType::RequestBody | BufferType::ResponseBody => data.stream.body(kind),
                    BufferType::CallResponseBody if data.grpc_status.is_none() => {
                        data.call_response.as_ref().map(|r| &r.body[..])
                    }
                    BufferType::GrpcReceive if data.grpc_status.is_some() => {
                        data.call_response.as_ref().map(|r| &r.body[..])
                    }
                    _ => None,
                };
                let Some(buffer) = buffer else { return false };
                let start = (start as u32 as usize).min(buffer.len());
                let end = start.saturating_add(max as u32 as usize).min(buffer.len());
                out.extend_from_slice(&buffer[start..end]);
                true
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            let Some(kind) = BufferType::from_raw(kind) else {
                return Status::BadArgument.code();
            };
            let bytes = match read(&mut c, ptr, len) {
                Ok(b) => b,
                Err(s) => return s.code(),
            };
            let stream = &mut c.data_mut().host.stream;
            if stream.body_kind != Some(kind) {
                return Status::NotFound.code();
            }
            // Copied on the first write; an unchanged chunk goes on as it came.
            let buffer = stream.body_edit.get_or_insert_with(|| stream.body.to_vec());
            // Envoy's semantics: replace [start, start + size), clamped; start == len appends.
            let start = (start as u32 as usize).min(buffer.len());
            let end = start.saturating_add(size as u32 as usize).min(buffer.len());
            buffer.splice(start..end, bytes);
            Status::Ok.code()
        },
    )?;

    // Header maps.
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            let Some(map) = MapType::from_raw(map) else {
                return Ok(Status::BadArgument.code());
            };
            give_scratch(&mut c, false, ret_ptr, ret_len, |data, out| {
                match map {
                    MapType::CallResponseHeaders
                    | MapType::CallResponseTrailers
                    | MapType::GrpcInitialMetadata
                    | MapType::GrpcTrailingMetadata => {
                        if let Some(p) = data.call_map(map) {
                            abi::serialize_map_into(p.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())), out);
                        }
                    }
                    // Maps not available in this phase read as empty (the SDK accepts only Ok).
                    _ => {
                        if let Some(head) = data.head(map) {
                            head.serialize_into(out);
                        }
                    }
                }
                true
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ptr: i32, len: i32| -> i32 {
            let Some(map) = MapType::from_raw(map) else {
                return Status::BadArgument.code();
            };
            let bytes = match read(&mut c, ptr, len) {
                Ok(b) => b,
                Err(s) => return s.code(),
            };
            let Some(pairs) = abi::deserialize_map(&bytes) else {
                return Status::BadArgument.code();
            };
            match c.data_mut().host.head(map) {
                Some(head) => status(head.replace_all(pairs)),
                None => Status::Ok.code(),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>, map: i32, key_ptr: i32, key_len: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            let Some(map) = MapType::from_raw(map) else {
                return Ok(Status::BadArgument.code());
            };
            let key = match read_key(&mut c, key_ptr, key_len) {
                Ok(k) => k,
                Err(s) => return Ok(s.code()),
            };
            let key = key.as_str();
            give_scratch(&mut c, true, ret_ptr, ret_len, |data, out| match map {
                MapType::CallResponseHeaders
                | MapType::CallResponseTrailers
                | MapType::GrpcInitialMetadata
                | MapType::GrpcTrailingMetadata => {
                    let Some(pairs) = data.call_map(map) else {
                        return false;
                    };
                    match pairs.iter().find(|(k, _)| k == key) {
                        Some((_, v)) => {
                            out.extend_from_slice(v);
                            true
                        }
                        None => false,
                    }
                }
                _ => data.head(map).is_some_and(|h| h.value_into(key, out)),
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, map: i32, key_ptr: i32, key_len: i32| -> i32 {
            let Some(map) = MapType::from_raw(map) else {
                return Status::BadArgument.code();
            };
            let key = match read_key(&mut c, key_ptr, key_len) {
                Ok(k) => k,
                Err(s) => return s.code(),
            };
            if let Some(head) = c.data_mut().host.head(map) {
                head.remove(key.as_str());
            }
            Status::Ok.code()
        },
    )?;
    for (name, append) in [
        ("proxy_replace_header_map_value", false),
        ("proxy_add_header_map_value", true),
    ] {
        linker.func_wrap(
            ENV,
            name,
            move |mut c: Ctx<'_>, map: i32, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32| -> i32 {
                let Some(map) = MapType::from_raw(map) else {
                    return Status::BadArgument.code();
                };
                let key = match read_key(&mut c, key_ptr, key_len) {
                    Ok(k) => k,
                    Err(s) => return s.code(),
                };
                let Some(memory) = memory(&mut c) else {
                    return Status::InternalFailure.code();
                };
                // The value is read in place: guest memory and host state borrowed together.
                let (guest, data) = memory.data_and_store_mut(&mut c);
                let Some(value) = range(value_ptr, value_len).and_then(|r| guest.get(r)) else {
                    return Status::BadArgument.code();
                };
                match data.host.head(map) {
                    Some(head) => status(head.set(key.as_str(), value, append)),
                    None => Status::Ok.code(),
                }
            },
        )?;
    }

    // Properties.
    linker.func_wrap(
        ENV,
        "proxy_get_property",
        |mut c: Ctx<'_>, path_ptr: i32, path_len: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            // Segments joined by `.`, read without allocating for ordinary paths; a path
            // that is not UTF-8 names no property.
            let path = match read_small(&mut c, path_ptr, path_len, props::dot_segments) {
                Ok(p) => p,
                Err(Status::SerializationFailure) => return Ok(Status::NotFound.code()),
                Err(s) => return Ok(s.code()),
            };
            give_scratch(&mut c, true, ret_ptr, ret_len, |host, out| {
                props::get(host, path.as_str(), out)
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_property",
        |mut c: Ctx<'_>, path_ptr: i32, path_len: i32, value_ptr: i32, value_len: i32| -> i32 {
            let (path, value) = match (read(&mut c, path_ptr, path_len), read(&mut c, value_ptr, value_len)) {
                (Ok(p), Ok(v)) => (p, v),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let path = String::from_utf8_lossy(&path).replace('\0', ".");
            c.data_mut().host.stream.properties.insert(path, value);
            Status::Ok.code()
        },
    )?;

    // Shared data.
    linker.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut c: Ctx<'_>,
         key_ptr: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_len: i32,
         ret_cas: i32|
         -> wasmtime::Result<i32> {
            let key = match read_string(&mut c, key_ptr, key_len) {
                Ok(k) => k,
                Err(s) => return Ok(s.code()),
            };
            let Some((value, cas)) = c.data().host.shared.get(&c.data().host.plugin.vm_id, &key) else {
                return Ok(Status::NotFound.code());
            };
            if let Err(s) = write_u32(&mut c, ret_cas, cas) {
                return Ok(s.code());
            }
            Ok(status(give_value(&mut c, &value, ret_ptr, ret_len)?))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32, cas: i32| -> i32 {
            let key = match read_string(&mut c, key_ptr, key_len) {
                Ok(k) => k,
                Err(s) => return s.code(),
            };
            let value = match read(&mut c, value_ptr, value_len) {
                Ok(v) => v,
                Err(s) => return s.code(),
            };
            let data = &c.data().host;
            match data
                .shared
                .set(&data.plugin.vm_id, &key, Bytes::from(value), cas as u32)
            {
                Ok(()) => Status::Ok.code(),
                Err(SetError::CasMismatch) => Status::CasMismatch.code(),
                Err(SetError::Full) => {
                    tracing::warn!(filter = %data.plugin.name, "shared data is full");
                    Status::InternalFailure.code()
                }
            }
        },
    )?;

    // Shared queues.
    linker.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        |mut c: Ctx<'_>, name_ptr: i32, name_len: i32, ret: i32| -> i32 {
            let name = match read_string(&mut c, name_ptr, name_len) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let data = &c.data().host;
            let id = data
                .shared
                .register_queue(&data.plugin.vm_id, &name, data.queue_notify.clone());
            status(write_u32(&mut c, ret, id))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        |mut c: Ctx<'_>, vm_ptr: i32, vm_len: i32, name_ptr: i32, name_len: i32, ret: i32| -> i32 {
            let (vm_id, name) = match (
                read_string(&mut c, vm_ptr, vm_len),
                read_string(&mut c, name_ptr, name_len),
            ) {
                (Ok(v), Ok(n)) => (v, n),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let vm_id = if vm_id.is_empty() {
                c.data().host.plugin.vm_id.clone()
            } else {
                vm_id
            };
            match c.data().host.shared.resolve_queue(&vm_id, &name) {
                Some(id) => status(write_u32(&mut c, ret, id)),
                None => Status::NotFound.code(),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        |mut c: Ctx<'_>, id: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            match c.data().host.shared.dequeue(id as u32) {
                None => Ok(Status::NotFound.code()),
                Some(None) => Ok(Status::Empty.code()),
                Some(Some(item)) => Ok(status(give_value(&mut c, &item, ret_ptr, ret_len)?)),
            }
        },
    )?;
    linker.func_wrap(ENV, "proxy_enqueue_shared_queue", |mut c: Ctx<'_>, id: i32, ptr: i32, len: i32| -> i32 {
        let value = match read(&mut c, ptr, len) {
            Ok(v) => v,
            Err(s) => return s.code(),
        };
        match c.data().host.shared.enqueue(id as u32, Bytes::from(value)) {
            None => Status::NotFound.code(),
            Some(true) => Status::Ok.code(),
            Some(false) => {
                tracing::warn!(filter = %c.data().host.plugin.name, queue = id, "shared queue is full; item dropped");
                Status::Ok.code()
            }
        }
    })?;

    // Stream control.
    linker.func_wrap(ENV, "proxy_continue_stream", |mut c: Ctx<'_>, stream: i32| -> i32 {
        let intents = &mut c.data_mut().host.intents;
        match stream {
            0 => intents.continue_request = true,
            1 => intents.continue_response = true,
            _ => return Status::BadArgument.code(),
        }
        Status::Ok.code()
    })?;
    linker.func_wrap(ENV, "proxy_close_stream", |mut c: Ctx<'_>, _stream: i32| -> i32 {
        c.data_mut().host.intents.close = true;
        Status::Ok.code()
    })?;
    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         code: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc_status: i32|
         -> i32 {
            let (details, body, headers) = match (
                read(&mut c, details_ptr, details_len),
                read(&mut c, body_ptr, body_len),
                read(&mut c, headers_ptr, headers_len),
            ) {
                (Ok(d), Ok(b), Ok(h)) => (d, b, h),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s.code(),
            };
            let Ok(status_code) = StatusCode::from_u16(u16::try_from(code).unwrap_or(0)) else {
                return Status::BadArgument.code();
            };
            let Some(pairs) = abi::deserialize_map(&headers) else {
                return Status::BadArgument.code();
            };
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(&k), HeaderValue::from_bytes(&v)) {
                    map.append(k, v);
                }
            }
            let mut reply = LocalReply::new(status_code, body);
            reply.headers = map;
            reply.details = String::from_utf8_lossy(&details).into_owned();
            c.data_mut().host.intents.local_reply = Some(reply);
            Status::Ok.code()
        },
    )?;

    // HTTP callouts.
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut c: Ctx<'_>,
         upstream_ptr: i32,
         upstream_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         _trailers_ptr: i32,
         _trailers_len: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> i32 {
            let (cluster, headers, body) = match (
                read_string(&mut c, upstream_ptr, upstream_len),
                read(&mut c, headers_ptr, headers_len),
                read(&mut c, body_ptr, body_len),
            ) {
                (Ok(u), Ok(h), Ok(b)) => (u, h, b),
                _ => return Status::BadArgument.code(),
            };
            let Some(pairs) = abi::deserialize_map(&headers) else {
                return Status::BadArgument.code();
            };
            let headers = pairs
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v))
                .collect();
            let request = CalloutRequest {
                cluster,
                headers,
                body: Bytes::from(body),
                timeout: Duration::from_millis(u64::from(timeout_ms as u32).max(1)),
                grpc: false,
            };
            match dispatch(&mut c, &request, Status::BadArgument) {
                Ok(token) => {
                    c.data_mut().host.intents.callouts.push((token, request));
                    status(write_u32(&mut c, ret_token, token))
                }
                Err(status) => status.code(),
            }
        },
    )?;

    // Unary gRPC calls: the SDK takes `Ok`, `ParseFailure` and `InternalFailure` only.
    linker.func_wrap(
        ENV,
        "proxy_grpc_call",
        |mut c: Ctx<'_>,
         upstream_ptr: i32,
         upstream_len: i32,
         service_ptr: i32,
         service_len: i32,
         method_ptr: i32,
         method_len: i32,
         metadata_ptr: i32,
         metadata_len: i32,
         message_ptr: i32,
         message_len: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> i32 {
            let target = GrpcTarget {
                upstream: (upstream_ptr, upstream_len),
                service: (service_ptr, service_len),
                method: (method_ptr, method_len),
                metadata: (metadata_ptr, metadata_len),
            };
            let Ok(message) = read(&mut c, message_ptr, message_len) else {
                return Status::ParseFailure.code();
            };
            let timeout = Duration::from_millis(u64::from(timeout_ms as u32).max(1));
            let request = match grpc_request(&mut c, target, Some(timeout)) {
                Ok(mut request) => {
                    request.body = crate::callout::grpc_frame(&message);
                    request
                }
                Err(status) => return status.code(),
            };
            match dispatch(&mut c, &request, Status::InternalFailure) {
                Ok(token) => {
                    let data = &mut c.data_mut().host;
                    data.grpc_pending.push(token);
                    data.intents.callouts.push((token, request));
                    status(write_u32(&mut c, ret_token, token))
                }
                Err(status) => status.code(),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_stream",
        |mut c: Ctx<'_>,
         upstream_ptr: i32,
         upstream_len: i32,
         service_ptr: i32,
         service_len: i32,
         method_ptr: i32,
         method_len: i32,
         metadata_ptr: i32,
         metadata_len: i32,
         ret_token: i32|
         -> i32 {
            let target = GrpcTarget {
                upstream: (upstream_ptr, upstream_len),
                service: (service_ptr, service_len),
                method: (method_ptr, method_len),
                metadata: (metadata_ptr, metadata_len),
            };
            let request = match grpc_request(&mut c, target, None) {
                Ok(request) => request,
                Err(status) => return status.code(),
            };
            match dispatch(&mut c, &request, Status::InternalFailure) {
                Ok(token) => {
                    let (messages, outgoing) = mpsc::unbounded_channel();
                    let data = &mut c.data_mut().host;
                    data.grpc_streams.insert(token, Some(messages));
                    data.intents.streams.push((token, request, outgoing));
                    status(write_u32(&mut c, ret_token, token))
                }
                Err(status) => status.code(),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_send",
        |mut c: Ctx<'_>, token: i32, message_ptr: i32, message_len: i32, end_stream: i32| -> i32 {
            let message = match read(&mut c, message_ptr, message_len) {
                Ok(message) => message,
                Err(status) => return status.code(),
            };
            match c.data_mut().host.grpc_streams.get_mut(&(token as u32)) {
                None => Status::NotFound.code(),
                // Closed for sending (`end_stream` or `proxy_grpc_close`).
                Some(None) => Status::BadArgument.code(),
                Some(open) => {
                    if let Some(messages) = open.as_ref() {
                        // The stream may have ended meanwhile: its end is delivered anyway.
                        let _ = messages.send(crate::callout::grpc_frame(&message));
                    }
                    if end_stream != 0 {
                        *open = None;
                    }
                    Status::Ok.code()
                }
            }
        },
    )?;
    linker.func_wrap(ENV, "proxy_grpc_cancel", |mut c: Ctx<'_>, token: i32| -> i32 {
        let data = &mut c.data_mut().host;
        let token = token as u32;
        let call = data.grpc_pending.iter().position(|t| *t == token);
        if let Some(i) = call {
            data.grpc_pending.swap_remove(i);
        }
        if call.is_some() || data.grpc_streams.remove(&token).is_some() {
            data.intents.cancelled.push(token);
            Status::Ok.code()
        } else {
            Status::NotFound.code()
        }
    })?;
    // Closes a stream for sending; its responses still come.
    linker.func_wrap(ENV, "proxy_grpc_close", |mut c: Ctx<'_>, token: i32| -> i32 {
        match c.data_mut().host.grpc_streams.get_mut(&(token as u32)) {
            Some(open) => {
                *open = None;
                Status::Ok.code()
            }
            None => Status::NotFound.code(),
        }
    })?;
    linker.func_wrap(
        ENV,
        "proxy_get_status",
        |mut c: Ctx<'_>, ret_code: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            // The gRPC call being delivered; else OK with no message.
            let (code, message) = c.data().host.grpc_status.clone().unwrap_or_default();
            if let Err(s) = write_u32(&mut c, ret_code, code) {
                return Ok(s.code());
            }
            if message.is_empty() {
                return Ok(status(
                    write_u32(&mut c, ret_ptr, 0).and_then(|()| write_u32(&mut c, ret_len, 0)),
                ));
            }
            give_scratch(&mut c, true, ret_ptr, ret_len, |_, out| {
                out.extend_from_slice(message.as_bytes());
                true
            })
        },
    )?;

    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |_c: Ctx<'_>, _context: i32| -> i32 { Status::Ok.code() },
    )?;
    linker.func_wrap(ENV, "proxy_done", |_c: Ctx<'_>| -> i32 { Status::Ok.code() })?;
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |mut c: Ctx<'_>,
         name_ptr: i32,
         name_len: i32,
         args_ptr: i32,
         args_len: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> wasmtime::Result<i32> {
            let (name, args) = match (
                read_string(&mut c, name_ptr, name_len),
                read(&mut c, args_ptr, args_len),
            ) {
                (Ok(n), Ok(a)) => (n, a),
                (Err(s), _) | (_, Err(s)) => return Ok(s.code()),
            };
            match super::extensions::call(&mut c.data_mut().host, &name, &args) {
                Ok(result) => Ok(status(give(&mut c, &result, ret_ptr, ret_len)?)),
                Err(s) => Ok(s.code()),
            }
        },
    )?;

    // Metrics.
    linker.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut c: Ctx<'_>, kind: i32, name_ptr: i32, name_len: i32, ret: i32| -> i32 {
            let Some(kind) = MetricType::from_raw(kind) else {
                return Status::BadArgument.code();
            };
            let name = match read_string(&mut c, name_ptr, name_len) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let data = &c.data().host;
            let id = data.shared.metrics.define(&data.plugin.name, &name, kind).unwrap_or(0);
            status(write_u32(&mut c, ret, id))
        },
    )?;
    linker.func_wrap(ENV, "proxy_get_metric", |mut c: Ctx<'_>, id: i32, ret: i32| -> i32 {
        match c.data().host.shared.metrics.get(id as u32) {
            Some(v) => status(write_u64(&mut c, ret, v)),
            None => Status::NotFound.code(),
        }
    })?;
    linker.func_wrap(ENV, "proxy_record_metric", |c: Ctx<'_>, id: i32, value: i64| -> i32 {
        if c.data().host.shared.metrics.record(id as u32, value as u64) {
            Status::Ok.code()
        } else {
            Status::NotFound.code()
        }
    })?;
    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |c: Ctx<'_>, id: i32, offset: i64| -> i32 {
            if c.data().host.shared.metrics.increment(id as u32, offset) {
                Status::Ok.code()
            } else {
                Status::NotFound.code()
            }
        },
    )?;
    Ok(())
}

/// WASI errno values.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_IO: i32 = 29;
const ERRNO_NOSYS: i32 = 52;

fn wasi(linker: &mut Linker<VmData>) -> wasmtime::Result<()> {
    const WASI: &str = "wasi_snapshot_preview1";

    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: Ctx<'_>, fd: i32, iovs: i32, count: i32, ret: i32| -> i32 {
            if !(fd == 1 || fd == 2) {
                return ERRNO_BADF;
            }
            if !(0..=1024).contains(&count) {
                return ERRNO_INVAL;
            }
            let mut text = Vec::new();
            for i in 0..count {
                let Ok(iov) = read(&mut c, iovs.wrapping_add(i * 8), 8) else {
                    return ERRNO_FAULT;
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match read(&mut c, ptr, len) {
                    Ok(bytes) => text.extend(bytes),
                    Err(_) => return ERRNO_FAULT,
                }
            }
            let message = String::from_utf8_lossy(&text);
            let message = message.trim_end_matches('\n');
            if !message.is_empty() {
                log_guest(&c.data().host, if fd == 1 { 2 } else { 3 }, message);
            }
            match write_u32(&mut c, ret, text.len() as u32) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_FAULT,
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_read",
        |_c: Ctx<'_>, _fd: i32, _iovs: i32, _count: i32, _ret: i32| -> i32 { ERRNO_BADF },
    )?;
    linker.func_wrap(WASI, "fd_close", |_c: Ctx<'_>, _fd: i32| -> i32 { ERRNO_BADF })?;
    linker.func_wrap(
        WASI,
        "fd_seek",
        |_c: Ctx<'_>, _fd: i32, _offset: i64, _whence: i32, _ret: i32| -> i32 { ERRNO_BADF },
    )?;
    linker.func_wrap(WASI, "fd_fdstat_get", |_c: Ctx<'_>, _fd: i32, _ret: i32| -> i32 {
        ERRNO_BADF
    })?;
    linker.func_wrap(WASI, "fd_prestat_get", |_c: Ctx<'_>, _fd: i32, _ret: i32| -> i32 {
        ERRNO_BADF
    })?;
    linker.func_wrap(
        WASI,
        "fd_prestat_dir_name",
        |_c: Ctx<'_>, _fd: i32, _ptr: i32, _len: i32| -> i32 { ERRNO_BADF },
    )?;
    for (name, _) in [("environ_sizes_get", ()), ("args_sizes_get", ())] {
        linker.func_wrap(WASI, name, |mut c: Ctx<'_>, count: i32, size: i32| -> i32 {
            match write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0)) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_FAULT,
            }
        })?;
    }
    for name in ["environ_get", "args_get"] {
        linker.func_wrap(WASI, name, |_c: Ctx<'_>, _ptrs: i32, _buf: i32| -> i32 {
            ERRNO_SUCCESS
        })?;
    }
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: Ctx<'_>, clock: i32, _precision: i64, ret: i32| -> i32 {
            let now = match clock {
                0 => now_nanos(),
                1..=3 => monotonic_nanos(),
                _ => return ERRNO_INVAL,
            };
            match write_u64(&mut c, ret, now) {
                Ok(()) => ERRNO_SUCCESS,
                Err(_) => ERRNO_FAULT,
            }
        },
    )?;
    linker.func_wrap(WASI, "clock_res_get", |mut c: Ctx<'_>, _clock: i32, ret: i32| -> i32 {
        match write_u64(&mut c, ret, 1_000) {
            Ok(()) => ERRNO_SUCCESS,
            Err(_) => ERRNO_FAULT,
        }
    })?;
    linker.func_wrap(WASI, "random_get", |mut c: Ctx<'_>, ptr: i32, len: i32| -> i32 {
        if !(0..=65536).contains(&len) {
            return ERRNO_INVAL;
        }
        let mut buf = vec![0u8; len as usize];
        if !random_fill(&mut buf) {
            return ERRNO_IO;
        }
        match write(&mut c, ptr, &buf) {
            Ok(()) => ERRNO_SUCCESS,
            Err(_) => ERRNO_FAULT,
        }
    })?;
    linker.func_wrap(WASI, "sched_yield", |_c: Ctx<'_>| -> i32 { ERRNO_SUCCESS })?;
    linker.func_wrap(
        WASI,
        "poll_oneoff",
        |_c: Ctx<'_>, _in: i32, _out: i32, _n: i32, _ret: i32| -> i32 { ERRNO_NOSYS },
    )?;
    linker.func_wrap(WASI, "proc_exit", |_c: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::format_err!("guest called proc_exit({code})"))
    })?;
    Ok(())
}
