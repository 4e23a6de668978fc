//! Wasm filters in the chain: a factory per filter and snapshot, one VM per worker (created
//! on first use on that worker, with a root driver task for ticks, queues and root
//! callouts), a stream context per request, and the failure policy.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weft_api::{FailurePolicy, FilterConfig, WasmModule};

use super::abi::BufferType;
use super::capabilities::Capabilities;
use super::host::{HeadView, Intents, Plugin, StreamData};
use super::props::StreamInfo;
use super::runtime::{LoadedModule, WasmRuntime};
use super::vm::{Phase, ROOT_CONTEXT, Vm, VmError};
use crate::callout::{CalloutError, CalloutResponse, Callouts, GrpcOutcome, StreamEvent};
use crate::filter::{
    BodyAction, FilterAction, FilterContext, FilterError, FilterFactory, Head, HttpFilter, LocalReply, LogRecord,
    SharedProperties, UpstreamChoice, UpstreamInfo,
};
use crate::http::WorkerContext;

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Crashes within this window that put a `reload` filter down.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Crashes within [`CRASH_WINDOW`] after which a `reload` filter stays down.
const CRASH_LIMIT: usize = 5;

/// Counters of one filter, exported at `/stats/prometheus`.
#[derive(Default)]
pub(crate) struct FilterCounters {
    pub(crate) vms_created: AtomicU64,
    pub(crate) failures: Mutex<HashMap<&'static str, u64>>,
}

/// What every instance of a filter shares.
struct Shared {
    runtime: Arc<WasmRuntime>,
    module: Arc<LoadedModule>,
    plugin: Arc<Plugin>,
    policy: FailurePolicy,
    counters: Arc<FilterCounters>,
}

/// One worker's VM of a filter.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    vm: Option<Vm>,
    /// Advances whenever the VM is replaced; contexts of an older VM are dead.
    epoch: u64,
    crashes: Vec<Instant>,
    retry_at: Option<Instant>,
    down: bool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SlotState {
    fn crash(&mut self, shared: &Shared, worker: usize, error: &VmError) {
        self.vm = None;
        self.epoch += 1;
        if let Ok(mut failures) = shared.counters.failures.lock() {
            *failures.entry(error.kind()).or_default() += 1;
        }
        tracing::error!(filter = %shared.plugin.name, worker, %error, "wasm filter failed; its VM will be recreated");
        if shared.policy == FailurePolicy::Reload {
            let now = Instant::now();
            self.crashes.retain(|at| now.duration_since(*at) < CRASH_WINDOW);
            self.crashes.push(now);
            if self.crashes.len() >= CRASH_LIMIT {
                self.down = true;
                tracing::error!(filter = %shared.plugin.name, worker, crashes = self.crashes.len(), "wasm filter is crash-looping; it stays down until the next snapshot");
            } else {
                let backoff = Duration::from_millis(100) * 2u32.pow(self.crashes.len() as u32 - 1);
                self.retry_at = Some(now + backoff);
            }
        }
    }

    /// The VM, created if there is none and the policy allows it now.
    fn ensure(
        &mut self,
        shared: &Arc<Shared>,
        slot: &Arc<Slot>,
        worker: usize,
        context: Option<&Arc<WorkerContext>>,
    ) -> Option<&mut Vm> {
        if self.vm.is_none() {
            if self.down || self.retry_at.is_some_and(|at| Instant::now() < at) {
                return None;
            }
            let (queue_tx, queue_rx) = mpsc::unbounded_channel();
            match Vm::new(&shared.runtime, &shared.module, shared.plugin.clone(), Some(queue_tx)) {
                Ok(vm) => {
                    self.epoch += 1;
                    shared.counters.vms_created.fetch_add(1, Relaxed);
                    if let (Ok(handle), Some(context)) = (tokio::runtime::Handle::try_current(), context) {
                        handle.spawn(drive_root(
                            Arc::downgrade(slot),
                            self.epoch,
                            queue_rx,
                            context.clone(),
                            shared.clone(),
                            worker,
                        ));
                    }
                    self.vm = Some(vm);
                }
                Err(error) => {
                    self.crash(shared, worker, &error);
                    return None;
                }
            }
        }
        self.vm.as_mut()
    }
}

/// Builds a filter's instances; one per filter and snapshot.
pub(crate) struct WasmFactory {
    shared: Arc<Shared>,
    slots: Vec<Arc<Slot>>,
}

impl Shared {
    /// What the filter's module can do (and declares).
    fn can(&self) -> &Capabilities {
        &self.module.capabilities
    }
}

impl WasmFactory {
    fn can(&self) -> &Capabilities {
        self.shared.can()
    }
}

/// The bytes a guest receives for a configuration value: a string as is, else JSON.
fn config_bytes(value: &serde_yaml::Value) -> Bytes {
    match value {
        serde_yaml::Value::Null => Bytes::new(),
        serde_yaml::Value::String(s) => Bytes::from(s.clone()),
        other => Bytes::from(serde_json::to_vec(other).unwrap_or_default()),
    }
}

impl WasmFactory {
    /// Loads the module (verifying its digest) and checks that a VM starts with this
    /// configuration: `on_vm_start` and `on_configure` must accept it.
    pub(crate) fn new(
        runtime: &Arc<WasmRuntime>,
        config: &FilterConfig,
        wasm: &WasmModule,
        workers: usize,
        counters: Arc<FilterCounters>,
    ) -> Result<Self, FilterError> {
        let fail = |message: String| FilterError::Wasm {
            name: config.name.clone(),
            message,
        };
        let file = if wasm.url.is_empty() {
            wasm.file.clone()
        } else {
            let dir = runtime.settings.module_dir.as_ref().ok_or_else(|| {
                fail(format!(
                    "module {} comes from a url, and this proxy has no module directory",
                    wasm.url
                ))
            })?;
            dir.join(format!("{}.wasm", wasm.sha256)).to_string_lossy().into_owned()
        };
        let module = runtime.load(&file, &wasm.sha256).map_err(|e| fail(e.to_string()))?;
        let plugin = Arc::new(Plugin {
            name: config.name.clone(),
            vm_id: wasm.vm_id.clone().unwrap_or_else(|| config.name.clone()),
            root_id: wasm.root_id.clone(),
            vm_config: config_bytes(&wasm.vm_config),
            plugin_config: config_bytes(&config.config),
        });
        Vm::new(runtime, &module, plugin.clone(), None).map_err(|e| fail(e.to_string()))?;
        let shared = Arc::new(Shared {
            runtime: runtime.clone(),
            module,
            plugin,
            policy: config.failure_policy,
            counters,
        });
        Ok(Self {
            shared,
            slots: (0..workers.max(1)).map(|_| Arc::new(Slot::default())).collect(),
        })
    }
}

impl FilterFactory for WasmFactory {
    fn name(&self) -> &str {
        &self.shared.plugin.name
    }

    fn create(&self, context: &FilterContext) -> Box<dyn HttpFilter> {
        let slot = self
            .slots
            .get(context.worker)
            .or_else(|| self.slots.first())
            .cloned()
            .unwrap_or_default();
        Box::new(WasmFilter {
            shared: self.shared.clone(),
            slot,
            worker: context.worker,
            worker_context: context.worker_context.clone(),
            context: None,
            failed: false,
            // Only properties read it.
            info: self.can().properties.then(|| {
                Box::new(StreamInfo {
                    source: context.source,
                    destination: context.destination,
                    listener: context.listener.clone(),
                    route: context.route.clone(),
                    mtls: context.mtls,
                    peer_principal: context.peer_principal.as_deref().map(str::to_owned),
                    worker: context.worker,
                    start: SystemTime::now(),
                    method: Method::GET,
                    uri: Uri::default(),
                    host: None,
                    scheme: "http",
                    protocol: "HTTP/1.1",
                    request_id: None,
                    request_size: 0,
                    response_code: None,
                    response_code_details: "",
                    response_size: 0,
                    upstream: None,
                    cluster: None,
                })
            }),
            shared_properties: context.properties.clone(),
            properties: HashMap::new(),
            callouts: context.callouts.clone(),
            pending: Vec::new(),
            pending_reply: None,
            resumed: false,
            upstream: None,
            retry: None,
            delay: None,
        })
    }

    fn wants_request_body(&self) -> bool {
        self.can().request_body
    }

    fn wants_response_body(&self) -> bool {
        self.can().response_body
    }

    fn wants_callouts(&self) -> bool {
        self.can().callouts
    }

    fn may_retry(&self) -> bool {
        self.can().retry
    }

    fn uses_properties(&self) -> bool {
        self.can().properties
    }
}

/// A callout on its way: an HTTP or unary gRPC call, or a gRPC stream.
struct PendingCall {
    token: u32,
    kind: PendingKind,
}

enum PendingKind {
    Call {
        grpc: bool,
        exchange: JoinHandle<Result<CalloutResponse, CalloutError>>,
    },
    Stream {
        events: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
        task: JoinHandle<()>,
    },
}

/// What a pending callout has for the guest.
pub(crate) enum Arrival {
    /// A call ended (for a gRPC call, its exchange is read as gRPC on delivery).
    Call {
        grpc: bool,
        result: Result<CalloutResponse, CalloutError>,
    },
    /// The next event of a stream.
    Stream(StreamEvent),
}

impl Arrival {
    /// Whether nothing more comes for its token.
    fn ends(&self) -> bool {
        matches!(self, Arrival::Call { .. } | Arrival::Stream(StreamEvent::End(_)))
    }
}

impl PendingCall {
    /// Starts the intents' callouts and streams through `callouts`, and cancels what they
    /// cancel (never delivered).
    fn start(pending: &mut Pending, callouts: Option<&Arc<Callouts>>, intents: &mut Intents, filter: &str) {
        let calls = std::mem::take(&mut intents.callouts);
        let streams = std::mem::take(&mut intents.streams);
        match callouts {
            Some(callouts) => {
                for (token, request) in calls {
                    let callouts = callouts.clone();
                    let kind = PendingKind::Call {
                        grpc: request.grpc,
                        exchange: tokio::spawn(async move { callouts.call(request).await }),
                    };
                    pending.push(Self { token, kind });
                }
                for (token, request, outgoing) in streams {
                    let (events, task) = callouts.stream(request, outgoing);
                    pending.push(Self {
                        token,
                        kind: PendingKind::Stream { events, task },
                    });
                }
            }
            None if calls.is_empty() && streams.is_empty() => {}
            None => tracing::warn!(filter, "callout without a callout handle dropped"),
        }
        // Dropped: aborted.
        pending.retain(|call| !intents.cancelled.contains(&call.token));
    }

    fn poll_arrival(&mut self, cx: &mut Context<'_>) -> Poll<Arrival> {
        match &mut self.kind {
            PendingKind::Call { grpc, exchange } => std::pin::Pin::new(exchange).poll(cx).map(|result| Arrival::Call {
                grpc: *grpc,
                result: result.unwrap_or_else(|_| Err(CalloutError::Timeout)),
            }),
            PendingKind::Stream { events, .. } => events
                .poll_recv(cx)
                .map(|event| Arrival::Stream(event.unwrap_or_else(|| StreamEvent::End(GrpcOutcome::stream_lost())))),
        }
    }

    /// The first arrival among `pending`: its token, taken out of `pending` when nothing more
    /// comes for it.
    fn poll_any(pending: &mut Pending, cx: &mut Context<'_>) -> Poll<(u32, Arrival)> {
        for i in 0..pending.len() {
            if let Poll::Ready(arrival) = pending[i].poll_arrival(cx) {
                let token = pending[i].token;
                if arrival.ends() {
                    pending.swap_remove(i);
                }
                return Poll::Ready((token, arrival));
            }
        }
        Poll::Pending
    }
}

/// A callout given up (cancelled, or its stream or VM gone) stops at once.
impl Drop for PendingCall {
    fn drop(&mut self) {
        match &self.kind {
            PendingKind::Call { exchange, .. } => exchange.abort(),
            PendingKind::Stream { task, .. } => task.abort(),
        }
    }
}

type Pending = Vec<PendingCall>;

/// One request's stream context in this worker's VM.
struct WasmFilter {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    worker: usize,
    worker_context: Option<Arc<WorkerContext>>,
    /// (context id, VM epoch) once created.
    context: Option<(i32, u64)>,
    /// The VM failed under this request; the policy decides what the request gets.
    failed: bool,
    info: Option<Box<StreamInfo>>,
    /// Properties set by any filter of the request (`proxy_set_property`), when the chain
    /// shares them (more than one filter may use them)...
    shared_properties: Option<SharedProperties>,
    /// ...else this filter's own.
    properties: HashMap<String, Vec<u8>>,
    callouts: Option<Arc<Callouts>>,
    pending: Pending,
    pending_reply: Option<LocalReply>,
    resumed: bool,
    upstream: Option<UpstreamChoice>,
    retry: Option<Duration>,
    /// A pause the filter asked for (`weft.delay`); the stream resumes when it elapses.
    delay: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// What a guest call may see of the request besides the stream info and properties: moved
/// into the VM's stream data for the call and back after it.
enum Io<'a> {
    None,
    Request(&'a mut http::request::Parts),
    Response(&'a mut http::response::Parts),
    Body(BufferType, &'a mut Bytes),
}

impl Io<'_> {
    fn load(&mut self, stream: &mut StreamData) {
        match self {
            Io::None => {}
            Io::Request(parts) => request_view(parts, &mut stream.request),
            Io::Response(parts) => response_view(parts, &mut stream.response),
            Io::Body(kind, body) => {
                stream.body_kind = Some(*kind);
                stream.body = std::mem::take(*body);
            }
        }
    }

    fn unload(&mut self, stream: &mut StreamData) {
        match self {
            Io::None => {}
            Io::Request(parts) => restore_request(parts, &mut stream.request),
            Io::Response(parts) => restore_response(parts, &mut stream.response),
            Io::Body(_, body) => {
                stream.body_kind = None;
                let original = std::mem::take(&mut stream.body);
                **body = match stream.body_edit.take() {
                    Some(edited) => Bytes::from(edited),
                    None => original,
                };
            }
        }
    }
}

impl WasmFilter {
    /// Runs `call` on this worker's VM with `io`, the stream info and the properties visible
    /// to hostcalls (and any edits applied to `io` after). Returns the result (`None` when
    /// the filter failed) and the intents, if the guest recorded any.
    fn run<R>(
        &mut self,
        mut io: Io<'_>,
        call: impl FnOnce(&mut Vm, i32) -> Result<R, VmError>,
    ) -> (Option<R>, Option<Intents>) {
        if self.failed {
            return (None, None);
        }
        let slot = &self.slot;
        let mut state = slot.lock();
        if state
            .ensure(&self.shared, slot, self.worker, self.worker_context.as_ref())
            .is_none()
        {
            self.failed = true;
            return (None, None);
        }
        let current = state.epoch;
        let Some(vm) = state.vm.as_mut() else {
            return (None, None);
        };
        let context = match self.context {
            Some((id, epoch)) if epoch == current => id,
            Some(_) => {
                // The VM this stream started on was replaced.
                drop(state);
                self.failed = true;
                return (None, None);
            }
            None => match vm.create_context() {
                Ok(id) => id,
                Err(error) => {
                    let worker = self.worker;
                    state.crash(&self.shared, worker, &error);
                    self.failed = true;
                    return (None, None);
                }
            },
        };
        let epoch = state.epoch;
        self.context = Some((context, epoch));
        let Some(vm) = state.vm.as_mut() else {
            return (None, None);
        };
        let host = vm.host();
        io.load(&mut host.stream);
        host.stream.in_stream = true;
        host.stream.info = self.info.take();
        match &self.shared_properties {
            Some(shared) => std::mem::swap(
                &mut *shared.lock().unwrap_or_else(|p| p.into_inner()),
                &mut host.stream.properties,
            ),
            None => std::mem::swap(&mut self.properties, &mut host.stream.properties),
        }
        host.callouts = self.callouts.take();
        let result = call(vm, context);
        let host = vm.host();
        io.unload(&mut host.stream);
        host.stream.in_stream = false;
        self.info = host.stream.info.take();
        match &self.shared_properties {
            Some(shared) => std::mem::swap(
                &mut *shared.lock().unwrap_or_else(|p| p.into_inner()),
                &mut host.stream.properties,
            ),
            None => std::mem::swap(&mut self.properties, &mut host.stream.properties),
        }
        self.callouts = host.callouts.take();
        let intents = host.intents.take_any();
        match result {
            Ok(r) => (Some(r), intents),
            Err(error) => {
                state.crash(&self.shared, self.worker, &error);
                self.failed = true;
                (None, None)
            }
        }
    }

    /// What a request gets when the filter failed.
    fn failure(&self) -> FilterAction {
        match self.shared.policy {
            FailurePolicy::FailOpen => FilterAction::Continue,
            FailurePolicy::FailClosed | FailurePolicy::Reload => FilterAction::Reply(self.failure_reply()),
        }
    }

    fn failure_reply(&self) -> LocalReply {
        let mut reply = LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("filter {} failed\n", self.shared.plugin.name),
        );
        reply
            .headers
            .insert("x-weft-reason", HeaderValue::from_static("filter_failure"));
        reply.details = "wasm_failure".to_owned();
        reply
    }

    /// Applies what the guest asked for; a reply wins over everything else.
    fn apply(&mut self, intents: Option<Intents>) -> Option<LocalReply> {
        let mut intents = intents?;
        PendingCall::start(
            &mut self.pending,
            self.callouts.as_ref(),
            &mut intents,
            &self.shared.plugin.name,
        );
        if intents.upstream.is_some() {
            self.upstream = intents.upstream;
        }
        if intents.retry.is_some() {
            self.retry = intents.retry;
        }
        if let Some(delay) = intents.delay {
            self.delay = Some(Box::pin(tokio::time::sleep(delay)));
        }
        if intents.continue_request || intents.continue_response {
            self.resumed = true;
        }
        if intents.close {
            let mut reply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "stream closed by filter\n");
            reply.details = "closed_by_filter".to_owned();
            return Some(reply);
        }
        intents.local_reply
    }

    fn headers_outcome(&mut self, result: Option<i32>, intents: Option<Intents>) -> FilterAction {
        let Some(action) = result else { return self.failure() };
        if let Some(reply) = self.apply(intents) {
            return FilterAction::Reply(reply);
        }
        if (action == 1 && !self.resumed) || self.delay.is_some() {
            FilterAction::Pause
        } else {
            self.resumed = false;
            FilterAction::Continue
        }
    }

    fn body(&mut self, phase: Phase, kind: BufferType, body: &mut Bytes, end: bool) -> BodyAction {
        let can = self.shared.can();
        let wanted = match phase {
            Phase::RequestBody => can.request_body,
            _ => can.response_body,
        };
        if !wanted {
            return BodyAction::Continue;
        }
        let size = body.len();
        let (result, intents) = self.run(Io::Body(kind, body), |vm, ctx| vm.phase(phase, ctx, size, end));
        let Some(action) = result else {
            return match self.failure() {
                FilterAction::Reply(reply) => BodyAction::Reply(reply),
                _ => BodyAction::Continue,
            };
        };
        if let Some(reply) = self.apply(intents) {
            return BodyAction::Reply(reply);
        }
        if action == 1 {
            BodyAction::Buffer
        } else {
            BodyAction::Continue
        }
    }

    /// Delivers what a callout has to the guest, with the paused head visible.
    fn deliver(&mut self, token: u32, arrival: Arrival, head: Option<&mut Head<'_>>) {
        let io = match head {
            Some(Head::Request(parts)) => Io::Request(parts),
            Some(Head::Response(parts)) => Io::Response(parts),
            None => Io::None,
        };
        let (result, intents) = self.run(io, |vm, ctx| vm.deliver(ctx, token, arrival));
        if result.is_none() {
            if let FilterAction::Reply(reply) = self.failure() {
                self.pending_reply = Some(reply);
            } else {
                self.resumed = true;
            }
            return;
        }
        if let Some(reply) = self.apply(intents) {
            self.pending_reply = Some(reply);
        }
    }
}

impl WasmFilter {
    /// Delivers callouts that completed while the stream was not paused (a filter may send
    /// one and go on); their responses reach the guest at its next call, as soon as ready.
    fn deliver_ready(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready((token, arrival)) = PendingCall::poll_any(&mut self.pending, &mut cx) {
            self.deliver(token, arrival, None);
        }
    }
}

/// Moves a request head into the VM's request view (pseudo-headers from the method and URI,
/// written into the view's reused strings).
fn request_view(parts: &mut http::request::Parts, view: &mut HeadView) {
    std::mem::swap(&mut view.map, &mut parts.headers);
    let authority = parts
        .uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| view.map.get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let path = parts.uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str);
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let values = [
        (":method", parts.method.as_str()),
        (":path", path),
        (":authority", authority),
        (":scheme", scheme),
    ];
    HeadView::fill_pseudo(&mut view.pseudo, &values);
    view.pseudo_changed = false;
    view.active = true;
}

/// Moves the view's map back into the request head, applying pseudo-header edits.
fn restore_request(parts: &mut http::request::Parts, view: &mut HeadView) {
    view.active = false;
    std::mem::swap(&mut parts.headers, &mut view.map);
    view.map.clear();
    if !std::mem::take(&mut view.pseudo_changed) {
        return;
    }
    for (key, value) in &view.pseudo {
        match *key {
            ":method" => {
                if let Ok(m) = Method::from_bytes(value.as_bytes()) {
                    parts.method = m;
                }
            }
            ":path" => {
                let current = parts.uri.path_and_query().map(|p| p.as_str());
                if current != Some(value.as_str()) {
                    let mut builder = Uri::builder();
                    if let (Some(scheme), Some(authority)) = (parts.uri.scheme(), parts.uri.authority()) {
                        builder = builder.scheme(scheme.clone()).authority(authority.clone());
                    }
                    if let Ok(uri) = builder.path_and_query(value.as_str()).build() {
                        parts.uri = uri;
                    }
                }
            }
            ":authority" => {
                let current = parts.uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
                    parts
                        .headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                });
                if current.as_deref() != Some(value.as_str())
                    && let Ok(host) = HeaderValue::from_str(value)
                {
                    parts.headers.insert(http::header::HOST, host);
                    if parts.uri.authority().is_some()
                        && let Ok(uri) = Uri::builder()
                            .scheme(parts.uri.scheme_str().unwrap_or("http"))
                            .authority(value.as_str())
                            .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
                            .build()
                    {
                        parts.uri = uri;
                    }
                }
            }
            _ => {}
        }
    }
}

fn response_view(parts: &mut http::response::Parts, view: &mut HeadView) {
    std::mem::swap(&mut view.map, &mut parts.headers);
    HeadView::fill_pseudo(&mut view.pseudo, &[(":status", parts.status.as_str())]);
    view.pseudo_changed = false;
    view.active = true;
}

fn restore_response(parts: &mut http::response::Parts, view: &mut HeadView) {
    view.active = false;
    std::mem::swap(&mut parts.headers, &mut view.map);
    view.map.clear();
    if !std::mem::take(&mut view.pseudo_changed) {
        return;
    }
    for (key, value) in &view.pseudo {
        if *key == ":status"
            && let Ok(status) = value
                .parse::<u16>()
                .map_err(|_| ())
                .and_then(|s| StatusCode::from_u16(s).map_err(|_| ()))
        {
            parts.status = status;
        }
    }
}

impl HttpFilter for WasmFilter {
    fn on_request_headers(&mut self, request: &mut http::request::Parts, end_of_stream: bool) -> FilterAction {
        self.resumed = false;
        if let Some(info) = self.info.as_mut() {
            info.method.clone_from(&request.method);
            info.uri.clone_from(&request.uri);
            info.host = request.headers.get(http::header::HOST).cloned();
            info.protocol = match request.version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            };
            info.request_id = request.headers.get(&X_REQUEST_ID).cloned();
            info.request_size = request
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
        }
        if !self.shared.can().request_headers {
            return FilterAction::Continue;
        }
        // The four pseudo-headers and the map.
        let count = 4 + request.headers.len();
        let (result, intents) = self.run(Io::Request(request), |vm, ctx| {
            vm.phase(Phase::RequestHeaders, ctx, count, end_of_stream)
        });
        self.headers_outcome(result, intents)
    }

    fn on_request_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> BodyAction {
        self.body(Phase::RequestBody, BufferType::RequestBody, body, end_of_stream)
    }

    fn on_response_headers(&mut self, response: &mut http::response::Parts, end_of_stream: bool) -> FilterAction {
        self.deliver_ready();
        self.resumed = false;
        if let Some(info) = self.info.as_mut() {
            info.response_code = Some(response.status.as_u16());
            if let Some(upstream) = response.extensions.get::<UpstreamInfo>() {
                info.upstream = Some(upstream.endpoint);
                info.cluster = Some(upstream.cluster.clone());
            }
        }
        if !self.shared.can().response_headers {
            return FilterAction::Continue;
        }
        // `:status` and the map.
        let count = 1 + response.headers.len();
        let (result, intents) = self.run(Io::Response(response), |vm, ctx| {
            vm.phase(Phase::ResponseHeaders, ctx, count, end_of_stream)
        });
        self.headers_outcome(result, intents)
    }

    fn on_response_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> BodyAction {
        self.deliver_ready();
        let action = self.body(Phase::ResponseBody, BufferType::ResponseBody, body, end_of_stream);
        if matches!(action, BodyAction::Continue)
            && let Some(info) = self.info.as_mut()
        {
            info.response_size += body.len() as u64;
        }
        action
    }

    fn poll_resume(&mut self, cx: &mut Context<'_>, mut head: Head<'_>) -> Poll<FilterAction> {
        loop {
            if let Some(reply) = self.pending_reply.take() {
                return Poll::Ready(FilterAction::Reply(reply));
            }
            if self.resumed {
                self.resumed = false;
                return Poll::Ready(FilterAction::Continue);
            }
            if self.failed {
                return Poll::Ready(self.failure());
            }
            if let Some(delay) = self.delay.as_mut() {
                if delay.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.delay = None;
                if self.pending.is_empty() {
                    self.resumed = false;
                    return Poll::Ready(FilterAction::Continue);
                }
            }
            match PendingCall::poll_any(&mut self.pending, cx) {
                Poll::Ready((token, arrival)) => self.deliver(token, arrival, Some(&mut head)),
                Poll::Pending if self.pending.is_empty() => {
                    // Paused with nothing that could resume it: go on rather than hang.
                    tracing::warn!(filter = %self.shared.plugin.name, "filter paused without a pending callout; continuing");
                    return Poll::Ready(FilterAction::Continue);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn take_upstream_choice(&mut self) -> Option<UpstreamChoice> {
        self.upstream.take()
    }

    fn take_retry(&mut self) -> Option<Duration> {
        self.retry.take()
    }

    fn on_log(&mut self, record: &LogRecord) {
        self.deliver_ready();
        if let Some(info) = self.info.as_mut() {
            info.response_code = Some(record.status);
            info.response_code_details = record.reason.unwrap_or("via_upstream");
            info.response_size = record.response_bytes;
            info.upstream = record.upstream;
            info.cluster = record.cluster.clone();
        }
        let log = self.shared.can().log;
        // A filter that declared only the log phase gets its stream context now.
        if self.context.is_some() || (log && !self.failed) {
            let _ = self.run(Io::None, |vm, ctx| vm.finish_context(ctx, log));
            self.context = None;
        }
    }
}

impl Drop for WasmFilter {
    fn drop(&mut self) {
        self.pending.clear();
        if self.context.is_some() && !self.failed {
            let _ = self.run(Io::None, |vm, ctx| vm.finish_context(ctx, false));
        }
    }
}

/// The root context's life on one worker: ticks, queue notifications and root callouts.
async fn drive_root(
    slot: Weak<Slot>,
    epoch: u64,
    mut queue: mpsc::UnboundedReceiver<u32>,
    worker_context: Arc<WorkerContext>,
    shared: Arc<Shared>,
    worker: usize,
) {
    let mut pending: Pending = Vec::new();
    loop {
        let period = {
            let Some(slot) = slot.upgrade() else { return };
            let state = slot.lock();
            match (&state.vm, state.epoch == epoch) {
                (Some(vm), true) => vm.tick_period_ms.filter(|p| *p > 0),
                _ => return,
            }
        };
        // Without a tick period the loop still wakes each second to notice a replaced VM.
        let wake = period.map_or(Duration::from_secs(1), |ms| Duration::from_millis(u64::from(ms)));
        let tick = tokio::time::sleep(wake);
        let arrived = poll_fn(|cx| PendingCall::poll_any(&mut pending, cx));
        enum Event {
            Tick,
            Queue(u32),
            Callout(u32, Arrival),
        }
        let event = tokio::select! {
            () = tick => Event::Tick,
            Some(id) = queue.recv() => Event::Queue(id),
            (token, arrival) = arrived => Event::Callout(token, arrival),
        };
        if matches!(event, Event::Tick) && period.is_none() {
            continue;
        }
        let Some(slot) = slot.upgrade() else { return };
        let mut state = slot.lock();
        if state.epoch != epoch {
            return;
        }
        let Some(vm) = state.vm.as_mut() else { return };
        let generation = worker_context.generation.borrow().clone();
        vm.host().callouts = Some(Arc::new(Callouts::new(
            generation,
            worker_context.pools.clone(),
            std::net::Ipv4Addr::LOCALHOST.into(),
        )));
        let result = match event {
            Event::Tick => vm.tick(),
            Event::Queue(id) => vm.queue_ready(id),
            Event::Callout(token, arrival) => vm.deliver(ROOT_CONTEXT, token, arrival),
        };
        let host = vm.host();
        let callouts = host.callouts.take();
        let mut intents = std::mem::take(&mut host.intents);
        if let Err(error) = result {
            state.crash(&shared, worker, &error);
            return;
        }
        PendingCall::start(&mut pending, callouts.as_ref(), &mut intents, &shared.plugin.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::runtime::{WasmSettings, sha256_hex};

    fn capabilities(imports: &str, exports: &str) -> Capabilities {
        let runtime = WasmRuntime::new(WasmSettings::default(), Default::default()).expect("runtime");
        let wat = format!(
            r#"(module {imports}
                (memory (export "memory") 1)
                (func (export "proxy_abi_version_0_2_1"))
                (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
                {exports})"#
        );
        let bytes = wat::parse_str(&wat).expect("valid wat");
        let loaded = runtime
            .load_bytes("inline.wat", &sha256_hex(&bytes), &bytes)
            .expect("loads");
        loaded.capabilities
    }

    #[test]
    fn capabilities_come_from_imports_and_exports() {
        let none = capabilities(
            "",
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))"#,
        );
        assert!(none.request_headers, "{none:?}");
        assert!(
            !none.request_body && !none.response_body && !none.log && !none.callouts && !none.retry && !none.properties,
            "{none:?}"
        );

        let all = capabilities(
            r#"(import "env" "proxy_http_call" (func (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
               (import "env" "proxy_call_foreign_function" (func (param i32 i32 i32 i32 i32 i32) (result i32)))
               (import "env" "proxy_get_property" (func (param i32 i32 i32 i32) (result i32)))"#,
            r#"(func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))"#,
        );
        assert!(
            all.response_body && all.callouts && all.retry && all.properties,
            "{all:?}"
        );
        assert!(!all.request_body && !all.request_headers, "{all:?}");

        // A declaration narrows what the imports and exports allow, and widens nothing.
        let declared = capabilities(
            r#"(import "env" "proxy_call_foreign_function" (func (param i32 i32 i32 i32 i32 i32) (result i32)))
               (@custom "weft.capabilities" "request_headers response_body")"#,
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
               (func (export "proxy_on_log") (param i32))"#,
        );
        assert!(declared.request_headers, "{declared:?}");
        assert!(
            !declared.response_body && !declared.log && !declared.retry,
            "{declared:?}"
        );
    }

    #[test]
    fn a_declaration_naming_an_unknown_capability_refuses_the_module() {
        let runtime = WasmRuntime::new(WasmSettings::default(), Default::default()).expect("runtime");
        let bytes = wat::parse_str(
            r#"(module (@custom "weft.capabilities" "request_headers retyr")
                (memory (export "memory") 1)
                (func (export "proxy_abi_version_0_2_1"))
                (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0)))"#,
        )
        .expect("valid wat");
        let error = runtime
            .load_bytes("typo.wasm", &sha256_hex(&bytes), &bytes)
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("typo.wasm") && error.contains("\"retyr\""), "{error}");
    }
}
