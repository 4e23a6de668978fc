//! One VM: a wasmtime store and instance of a filter's module, with its root context started
//! and configured. Every call into the guest has a deadline (epoch interruption) and the
//! store a memory cap; a failing call is classified so the filter can apply its policy.

use std::sync::Arc;

use wasmtime::{ResourceLimiter, Store, Trap, TypedFunc};

use super::filter::Arrival;
use super::host::{HostState, Plugin};
use super::runtime::{LoadedModule, WasmRuntime};
use crate::callout::{CalloutError, CalloutResponse, GrpcOutcome, StreamEvent};

/// The root context's id in every VM.
pub(crate) const ROOT_CONTEXT: i32 = 1;
/// Startup calls (`_initialize`, `on_vm_start`, `on_configure`) get this many deadlines.
const STARTUP_DEADLINES: u64 = 10;

/// Why a VM could not be created or a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VmError {
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    #[error("{0}")]
    Rejected(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("call exceeded its deadline")]
    Deadline,
    #[error("memory limit reached ({0} bytes)")]
    Memory(usize),
}

impl VmError {
    /// The label used in failure metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            VmError::Instantiate(_) => "instantiate",
            VmError::Rejected(_) => "rejected",
            VmError::Trap(_) => "trap",
            VmError::Deadline => "deadline",
            VmError::Memory(_) => "memory",
        }
    }
}

/// Caps a VM's linear memory and tables; remembers whether the cap was hit.
pub(crate) struct Limiter {
    max_memory: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

type F1<R> = TypedFunc<i32, R>;
type F2<R> = TypedFunc<(i32, i32), R>;
type F3<R> = TypedFunc<(i32, i32, i32), R>;
type F5<R> = TypedFunc<(i32, i32, i32, i32, i32), R>;

struct Exports {
    on_context_create: Option<F2<()>>,
    on_vm_start: Option<F2<i32>>,
    on_configure: Option<F2<i32>>,
    on_tick: Option<F1<()>>,
    on_queue_ready: Option<F2<()>>,
    on_request_headers: Option<F3<i32>>,
    on_request_body: Option<F3<i32>>,
    on_response_headers: Option<F3<i32>>,
    on_response_body: Option<F3<i32>>,
    on_http_call_response: Option<F5<()>>,
    on_grpc_receive_initial_metadata: Option<F3<()>>,
    on_grpc_receive: Option<F3<()>>,
    on_grpc_receive_trailing_metadata: Option<F3<()>>,
    on_grpc_close: Option<F3<()>>,
    on_log: Option<F1<()>>,
    on_done: Option<F1<i32>>,
    on_delete: Option<F1<()>>,
}

/// A started VM.
pub(crate) struct Vm {
    store: Store<VmData>,
    exports: Exports,
    next_context: i32,
    deadline_ticks: u64,
    max_memory: usize,
    /// The tick period the root context asked for, if any.
    pub(crate) tick_period_ms: Option<u32>,
}

/// The store's data: the host state and the limiter.
pub(crate) struct VmData {
    pub(crate) host: HostState,
    limiter: Limiter,
}

/// A headers or body phase.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

impl Vm {
    /// Instantiates `module` and starts its root context with the plugin's configuration.
    pub(crate) fn new(
        runtime: &WasmRuntime,
        module: &LoadedModule,
        plugin: Arc<Plugin>,
        queue_notify: Option<tokio::sync::mpsc::UnboundedSender<u32>>,
    ) -> Result<Self, VmError> {
        let max_memory = runtime.settings.memory_limit;
        let mut host = HostState::new(plugin, runtime.shared.clone());
        host.queue_notify = queue_notify;
        let data = VmData {
            host,
            limiter: Limiter { max_memory, hit: false },
        };
        let mut store = Store::new(&runtime.engine, data);
        store.limiter(|d| &mut d.limiter);
        let deadline_ticks = runtime.deadline_ticks();
        store.set_epoch_deadline(deadline_ticks * STARTUP_DEADLINES);
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| VmError::Instantiate(format!("{e:#}")))?;
        let func = |store: &mut Store<VmData>, name: &str| instance.get_func(&mut *store, name);
        macro_rules! typed {
            ($name:literal) => {
                match func(&mut store, $name) {
                    Some(f) => {
                        Some(f.typed(&store).map_err(|e| {
                            VmError::Instantiate(format!("export {} has the wrong signature: {e}", $name))
                        })?)
                    }
                    None => None,
                }
            };
        }
        let exports = Exports {
            on_context_create: typed!("proxy_on_context_create"),
            on_vm_start: typed!("proxy_on_vm_start"),
            on_configure: typed!("proxy_on_configure"),
            on_tick: typed!("proxy_on_tick"),
            on_queue_ready: typed!("proxy_on_queue_ready"),
            on_request_headers: typed!("proxy_on_request_headers"),
            on_request_body: typed!("proxy_on_request_body"),
            on_response_headers: typed!("proxy_on_response_headers"),
            on_response_body: typed!("proxy_on_response_body"),
            on_http_call_response: typed!("proxy_on_http_call_response"),
            on_grpc_receive_initial_metadata: typed!("proxy_on_grpc_receive_initial_metadata"),
            on_grpc_receive: typed!("proxy_on_grpc_receive"),
            on_grpc_receive_trailing_metadata: typed!("proxy_on_grpc_receive_trailing_metadata"),
            on_grpc_close: typed!("proxy_on_grpc_close"),
            on_log: typed!("proxy_on_log"),
            on_done: typed!("proxy_on_done"),
            on_delete: typed!("proxy_on_delete"),
        };
        // Hostcalls reach the guest's memory and allocator on every call: look them up once.
        let memory = instance.get_memory(&mut store, "memory");
        let allocator = func(&mut store, "proxy_on_memory_allocate")
            .or_else(|| func(&mut store, "malloc"))
            .and_then(|f| f.typed::<i32, i32>(&store).ok());
        store.data_mut().host.memory = memory;
        store.data_mut().host.allocator = allocator;
        let init = func(&mut store, "_initialize").or_else(|| func(&mut store, "_start"));
        let mut vm = Self {
            store,
            exports,
            next_context: ROOT_CONTEXT + 1,
            deadline_ticks,
            max_memory,
            tick_period_ms: None,
        };
        if let Some(init) = init {
            let init = init
                .typed::<(), ()>(&vm.store)
                .map_err(|e| VmError::Instantiate(format!("_initialize: {e}")))?;
            vm.store.set_epoch_deadline(deadline_ticks * STARTUP_DEADLINES);
            init.call(&mut vm.store, ()).map_err(|e| vm.classify(e))?;
        }
        let (vm_config, plugin_config) = {
            let p = &vm.store.data().host.plugin;
            (p.vm_config.len() as i32, p.plugin_config.len() as i32)
        };
        if let Some(f) = vm.exports.on_context_create.clone() {
            vm.call_long(&f, (ROOT_CONTEXT, 0))?;
        }
        if let Some(f) = vm.exports.on_vm_start.clone()
            && vm.call_long(&f, (ROOT_CONTEXT, vm_config))? == 0
        {
            return Err(VmError::Rejected(
                vm.rejection("on_vm_start rejected the VM configuration"),
            ));
        }
        if let Some(f) = vm.exports.on_configure.clone()
            && vm.call_long(&f, (ROOT_CONTEXT, plugin_config))? == 0
        {
            return Err(VmError::Rejected(
                vm.rejection("on_configure rejected the plugin configuration"),
            ));
        }
        vm.take_tick_period();
        Ok(vm)
    }

    fn classify(&mut self, error: wasmtime::Error) -> VmError {
        if std::mem::take(&mut self.store.data_mut().limiter.hit) {
            return VmError::Memory(self.max_memory);
        }
        if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return VmError::Deadline;
        }
        VmError::Trap(format!("{error:?}"))
    }

    fn call_long<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        f: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, VmError> {
        self.store.set_epoch_deadline(self.deadline_ticks * STARTUP_DEADLINES);
        f.call(&mut self.store, params).map_err(|e| self.classify(e))
    }

    /// A rejection message, with the guest's last error log as the reason when it gave one.
    fn rejection(&mut self, what: &str) -> String {
        match self.store.data_mut().host.last_error.take() {
            Some(reason) => format!("{what}: {reason}"),
            None => what.to_owned(),
        }
    }

    fn take_tick_period(&mut self) {
        if let Some(period) = self.store.data_mut().host.intents.tick_period.take() {
            self.tick_period_ms = Some(period);
        }
    }

    /// The host state, to move stream data in and intents out around calls.
    pub(crate) fn host(&mut self) -> &mut HostState {
        &mut self.store.data_mut().host
    }

    /// Creates a stream context; returns its id.
    pub(crate) fn create_context(&mut self) -> Result<i32, VmError> {
        let id = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT_CONTEXT + 1);
        let ticks = self.deadline_ticks;
        let result = run(
            &mut self.store,
            ticks,
            self.exports.on_context_create.as_ref(),
            (id, ROOT_CONTEXT),
        );
        result.map_err(|e| self.classify(e))?;
        Ok(id)
    }

    /// Runs a headers or body phase; returns the guest's action (0 continue, 1 pause).
    pub(crate) fn phase(
        &mut self,
        phase: Phase,
        context: i32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmError> {
        let f = match phase {
            Phase::RequestHeaders => self.exports.on_request_headers.as_ref(),
            Phase::RequestBody => self.exports.on_request_body.as_ref(),
            Phase::ResponseHeaders => self.exports.on_response_headers.as_ref(),
            Phase::ResponseBody => self.exports.on_response_body.as_ref(),
        };
        let result = run(
            &mut self.store,
            self.deadline_ticks,
            f,
            (context, size as i32, i32::from(end_of_stream)),
        );
        result.map(Option::unwrap_or_default).map_err(|e| self.classify(e))
    }

    /// Delivers what a callout has for `context`: a finished call, or a stream's next event.
    pub(crate) fn deliver(&mut self, context: i32, token: u32, arrival: Arrival) -> Result<(), VmError> {
        match arrival {
            Arrival::Call { grpc, result } => self.deliver_call(context, token, grpc, result),
            Arrival::Stream(event) => self.deliver_stream(context, token, event),
        }
    }

    /// Delivers a gRPC stream's event, readable during the call: its initial metadata to
    /// `on_grpc_receive_initial_metadata`, each message to `on_grpc_receive`, and its end to
    /// `on_grpc_receive_trailing_metadata` (when there is any) then `on_grpc_close` with the
    /// status (`proxy_get_status`).
    fn deliver_stream(&mut self, context: i32, token: u32, event: StreamEvent) -> Result<(), VmError> {
        let ticks = self.deadline_ticks;
        let host = self.host();
        host.grpc_status = Some((0, String::new()));
        let result = match event {
            StreamEvent::Headers(headers) => {
                let args = (context, token as i32, headers.len() as i32);
                host.call_response = Some(CalloutResponse {
                    headers,
                    ..CalloutResponse::default()
                });
                let export = self.exports.on_grpc_receive_initial_metadata.as_ref();
                run(&mut self.store, ticks, export, args)
            }
            StreamEvent::Message(body) => {
                let args = (context, token as i32, body.len() as i32);
                host.call_response = Some(CalloutResponse {
                    body,
                    ..CalloutResponse::default()
                });
                run(&mut self.store, ticks, self.exports.on_grpc_receive.as_ref(), args)
            }
            StreamEvent::End(outcome) => {
                host.grpc_streams.remove(&token);
                let (status, trailers) = (outcome.status, outcome.response.trailers.len());
                host.call_response = Some(outcome.response);
                host.grpc_status = Some((outcome.status, outcome.message));
                let exports = &self.exports;
                let trailing = match trailers {
                    0 => Ok(None),
                    n => {
                        let args = (context, token as i32, n as i32);
                        run(
                            &mut self.store,
                            ticks,
                            exports.on_grpc_receive_trailing_metadata.as_ref(),
                            args,
                        )
                    }
                };
                trailing.and_then(|_| {
                    let args = (context, token as i32, status as i32);
                    run(&mut self.store, ticks, exports.on_grpc_close.as_ref(), args)
                })
            }
        };
        let host = self.host();
        host.call_response = None;
        host.grpc_status = None;
        result.map(|_| ()).map_err(|e| self.classify(e))
    }

    /// Delivers a finished callout to `context`, its response readable during the call: an
    /// HTTP call's to `on_http_call_response` (a failed one as zero headers, zero body); a
    /// gRPC call's message to `on_grpc_receive` when its status is OK, else its status
    /// (`proxy_get_status`) to `on_grpc_close`, as Envoy does for unary calls.
    fn deliver_call(
        &mut self,
        context: i32,
        token: u32,
        grpc: bool,
        result: Result<CalloutResponse, CalloutError>,
    ) -> Result<(), VmError> {
        let ticks = self.deadline_ticks;
        let result = if grpc {
            let outcome = GrpcOutcome::from_exchange(result);
            let (status, size) = (outcome.status, outcome.response.body.len());
            let host = self.host();
            host.grpc_pending.retain(|t| *t != token);
            host.call_response = Some(outcome.response);
            host.grpc_status = Some((outcome.status, outcome.message));
            let exports = &self.exports;
            if status == 0 {
                let args = (context, token as i32, size as i32);
                run(&mut self.store, ticks, exports.on_grpc_receive.as_ref(), args)
            } else {
                let args = (context, token as i32, status as i32);
                run(&mut self.store, ticks, exports.on_grpc_close.as_ref(), args)
            }
        } else {
            let response = result.unwrap_or_else(|error| {
                tracing::debug!(token, %error, "callout failed");
                CalloutResponse::default()
            });
            let args = (
                context,
                token as i32,
                response.headers.len() as i32,
                response.body.len() as i32,
                response.trailers.len() as i32,
            );
            self.host().call_response = Some(response);
            run(
                &mut self.store,
                ticks,
                self.exports.on_http_call_response.as_ref(),
                args,
            )
        };
        let host = self.host();
        host.call_response = None;
        host.grpc_status = None;
        result.map(|_| ()).map_err(|e| self.classify(e))
    }

    /// `on_log`, `on_done` and `on_delete` for a finished stream.
    pub(crate) fn finish_context(&mut self, context: i32, log: bool) -> Result<(), VmError> {
        let ticks = self.deadline_ticks;
        if log {
            let result = run(&mut self.store, ticks, self.exports.on_log.as_ref(), context);
            result.map_err(|e| self.classify(e))?;
        }
        let result = run(&mut self.store, ticks, self.exports.on_done.as_ref(), context);
        result.map_err(|e| self.classify(e))?;
        let result = run(&mut self.store, ticks, self.exports.on_delete.as_ref(), context);
        result.map_err(|e| self.classify(e))?;
        Ok(())
    }

    /// `on_tick` on the root context.
    pub(crate) fn tick(&mut self) -> Result<(), VmError> {
        let result = run(
            &mut self.store,
            self.deadline_ticks,
            self.exports.on_tick.as_ref(),
            ROOT_CONTEXT,
        );
        result.map_err(|e| self.classify(e))?;
        self.take_tick_period();
        Ok(())
    }

    /// `on_queue_ready` on the root context.
    pub(crate) fn queue_ready(&mut self, queue: u32) -> Result<(), VmError> {
        let args = (ROOT_CONTEXT, queue as i32);
        let result = run(
            &mut self.store,
            self.deadline_ticks,
            self.exports.on_queue_ready.as_ref(),
            args,
        );
        result.map_err(|e| self.classify(e))?;
        self.take_tick_period();
        Ok(())
    }
}

/// Calls an export, if the module has it, under the call deadline. Called with the export by
/// reference (a `TypedFunc` clone costs reference counting on every request).
fn run<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    store: &mut Store<VmData>,
    deadline_ticks: u64,
    f: Option<&TypedFunc<P, R>>,
    params: P,
) -> Result<Option<R>, wasmtime::Error> {
    let Some(f) = f else { return Ok(None) };
    store.data_mut().limiter.hit = false;
    store.set_epoch_deadline(deadline_ticks);
    f.call(&mut *store, params).map(Some)
}

#[cfg(test)]
mod tests {
    //! ABI mechanics with small inline WAT modules.

    use super::*;
    use crate::wasm::runtime::{WasmSettings, sha256_hex};

    fn runtime(memory_limit: usize) -> WasmRuntime {
        WasmRuntime::new(
            WasmSettings {
                call_deadline: Duration::from_millis(100),
                memory_limit,
                ..WasmSettings::default()
            },
            Default::default(),
        )
        .expect("runtime")
    }

    use std::time::Duration;

    fn plugin() -> Arc<Plugin> {
        Arc::new(Plugin {
            name: "wat".into(),
            vm_id: "wat".into(),
            root_id: String::new(),
            vm_config: bytes::Bytes::new(),
            plugin_config: bytes::Bytes::from_static(b"cfg"),
        })
    }

    fn load(runtime: &WasmRuntime, wat: &str) -> Result<Arc<LoadedModule>, String> {
        let bytes = wat::parse_str(wat).expect("valid wat");
        runtime
            .load_bytes("inline.wat", &sha256_hex(&bytes), &bytes)
            .map_err(|e| e.to_string())
    }

    /// A module skeleton: memory, marker, a bump allocator, and `body` spliced in.
    fn module(imports: &str, body: &str) -> String {
        format!(
            r#"(module
                {imports}
                (memory (export "memory") 1)
                (global $bump (mut i32) (i32.const 1024))
                (func (export "proxy_abi_version_0_2_1"))
                (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
                    (local $p i32)
                    (local.set $p (global.get $bump))
                    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
                    (local.get $p))
                {body})"#
        )
    }

    #[test]
    fn a_module_without_the_abi_marker_is_refused() {
        let runtime = runtime(16 << 20);
        let err = load(
            &runtime,
            r#"(module (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) i32.const 0))"#,
        )
        .err()
        .expect("refused");
        assert!(err.contains("no known ABI version marker"), "{err}");
    }

    #[test]
    fn out_of_bounds_pointers_get_bad_argument_and_no_crash() {
        let runtime = runtime(16 << 20);
        // on_configure returns 1 only if every hostcall with a bad pointer answered
        // BadArgument (2): a log message past the end of memory, a length that wraps, a
        // return slot past the end.
        let wat = module(
            r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
               (import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))
               (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))"#,
            r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
                  (i32.and
                    (i32.and
                      (i32.eq (call $log (i32.const 2) (i32.const 65530) (i32.const 100)) (i32.const 2))
                      (i32.eq (call $log (i32.const 2) (i32.const 16) (i32.const -1)) (i32.const 2)))
                    (i32.and
                      (i32.eq (call $buf (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 70000) (i32.const 8)) (i32.const 2))
                      (i32.eq (call $prop (i32.const 100000) (i32.const 4) (i32.const 0) (i32.const 4)) (i32.const 2)))))"#,
        );
        let loaded = load(&runtime, &wat).expect("loads");
        Vm::new(&runtime, &loaded, plugin(), None).expect("every bad pointer answered BadArgument");
    }

    #[test]
    fn buffers_are_allocated_by_the_guest_with_the_exact_length() {
        let runtime = runtime(16 << 20);
        // Reads the plugin configuration ("cfg"): status Ok, length 3, bytes at the address
        // the guest's allocator returned (the bump pointer started at 1024).
        let wat = module(
            r#"(import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))"#,
            r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
                  (if (i32.ne (call $buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 4)) (i32.const 0))
                      (then (return (i32.const 0))))
                  (i32.and
                    (i32.and (i32.eq (i32.load (i32.const 0)) (i32.const 1024)) (i32.eq (i32.load (i32.const 4)) (i32.const 3)))
                    (i32.eq (i32.load8_u (i32.const 1026)) (i32.const 103))))"#,
        );
        let loaded = load(&runtime, &wat).expect("loads");
        Vm::new(&runtime, &loaded, plugin(), None).expect("config read through the guest allocator");
    }

    #[test]
    fn on_configure_false_rejects_the_config() {
        let runtime = runtime(16 << 20);
        let wat = module(
            "",
            r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))"#,
        );
        let loaded = load(&runtime, &wat).expect("loads");
        let err = Vm::new(&runtime, &loaded, plugin(), None).err().expect("rejected");
        assert!(err.to_string().contains("on_configure rejected"), "{err}");
    }

    #[test]
    fn traps_deadlines_and_memory_caps_are_told_apart() {
        let runtime = runtime(2 << 20);
        let wat = module(
            "",
            r#"(func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $end i32) (result i32)
                  (if (i32.eq (local.get $n) (i32.const 1)) (then unreachable))
                  (if (i32.eq (local.get $n) (i32.const 2)) (then (loop $forever (br $forever))))
                  (if (i32.eq (local.get $n) (i32.const 3))
                      (then (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))
                  (i32.const 0))"#,
        );
        let loaded = load(&runtime, &wat).expect("loads");
        let mut vm = Vm::new(&runtime, &loaded, plugin(), None).expect("starts");
        assert_eq!(vm.phase(Phase::RequestHeaders, 2, 0, true).expect("plain call"), 0);
        assert!(matches!(
            vm.phase(Phase::RequestHeaders, 2, 1, true),
            Err(VmError::Trap(_))
        ));

        let mut vm = Vm::new(&runtime, &loaded, plugin(), None).expect("starts");
        let started = std::time::Instant::now();
        assert!(matches!(
            vm.phase(Phase::RequestHeaders, 2, 2, true),
            Err(VmError::Deadline)
        ));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "stopped after {:?}",
            started.elapsed()
        );

        let mut vm = Vm::new(&runtime, &loaded, plugin(), None).expect("starts");
        assert!(matches!(
            vm.phase(Phase::RequestHeaders, 2, 3, true),
            Err(VmError::Memory(_))
        ));
    }

    #[test]
    fn unknown_imports_fail_to_link_with_their_name() {
        let runtime = runtime(16 << 20);
        let wat = module(r#"(import "env" "proxy_teleport" (func (param i32) (result i32)))"#, "");
        let err = load(&runtime, &wat).err().expect("refused");
        assert!(err.contains("proxy_teleport"), "{err}");
    }
}
