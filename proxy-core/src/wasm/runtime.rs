//! The process-wide side of the Wasm host: one wasmtime `Engine` (with epoch interruption and
//! its ticker thread), compiled modules cached by sha256 (in memory and on disk), and the
//! state every VM of the process shares: shared data, shared queues and metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use super::abi::MetricType;
use super::capabilities::{Capabilities, DeclarationError};
use super::vm::VmData;

/// How guest calls are bounded. Process-wide.
#[derive(Debug, Clone)]
pub struct WasmSettings {
    /// Longest a single call into a VM may run before it is interrupted. Default: 20ms.
    pub call_deadline: Duration,
    /// Most linear memory one VM may grow to. Default: 64 MiB.
    pub memory_limit: usize,
    /// Where compiled modules are kept across restarts. Default: none.
    pub cache_dir: Option<PathBuf>,
    /// Where modules named by a `url` are found, as `<sha256>.wasm` (see
    /// [`fetch_modules`](crate::control::fetch_modules), which puts them there). Default: none, and a
    /// snapshot with a `url` module is refused.
    pub module_dir: Option<PathBuf>,
}

impl Default for WasmSettings {
    fn default() -> Self {
        Self {
            call_deadline: Duration::from_millis(20),
            memory_limit: 64 << 20,
            cache_dir: None,
            module_dir: None,
        }
    }
}

/// The epoch advances every tick, half the call deadline (at least this): a call is interrupted
/// between its deadline and 1.5 times it. Each tick wakes the ticker thread, so the tick is as
/// long as that precision allows; a sidecar at 1,000 req/s spent about 4 µs of CPU per request
/// on a 5 ms tick.
const MIN_TICK: Duration = Duration::from_millis(1);

/// The tick for a call deadline.
fn tick_for(deadline: Duration) -> Duration {
    (deadline / 2).max(MIN_TICK)
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModuleError {
    #[error("cannot read module {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("module {file} has sha256 {actual}, the snapshot expects {expected}")]
    Digest {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("module {file} does not compile: {message}")]
    Compile { file: String, message: String },
    #[error(
        "module {file} is not a proxy-wasm module: it exports no known ABI version marker \
         (proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0)"
    )]
    NoAbiMarker { file: String },
    #[error("module {file} exports no memory")]
    NoMemory { file: String },
    #[error("module {file} exports neither proxy_on_memory_allocate nor malloc")]
    NoAllocator { file: String },
    #[error("module {file} cannot be linked: {message}")]
    Link { file: String, message: String },
    #[error("module {file}: {error}")]
    Capabilities { file: String, error: DeclarationError },
}

/// A compiled, linked module, ready to instantiate.
pub(crate) struct LoadedModule {
    pub(crate) pre: InstancePre<VmData>,
    /// What the module can do: what its imports and exports allow, narrowed by its
    /// declaration (see [`Capabilities`]).
    pub(crate) capabilities: Capabilities,
}

/// The Wasm host's process-wide state.
pub(crate) struct WasmRuntime {
    pub(crate) engine: Engine,
    linker: Linker<VmData>,
    modules: Mutex<HashMap<String, Arc<LoadedModule>>>,
    pub(crate) settings: WasmSettings,
    pub(crate) shared: Arc<SharedState>,
    ticker_stop: Arc<AtomicBool>,
}

impl WasmRuntime {
    pub(crate) fn new(settings: WasmSettings, node: super::NodeInfo) -> Result<Self, String> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| format!("cannot create the wasm engine: {e}"))?;
        let linker = super::host::linker(&engine).map_err(|e| format!("cannot link host functions: {e}"))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), ticker_stop.clone());
        let tick = tick_for(settings.call_deadline);
        std::thread::Builder::new()
            .name("weft-wasm-epoch".to_owned())
            .spawn(move || {
                while !stop.load(Relaxed) {
                    std::thread::sleep(tick);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(Self {
            engine,
            linker,
            modules: Mutex::new(HashMap::new()),
            settings,
            shared: Arc::new(SharedState {
                node,
                ..SharedState::default()
            }),
            ticker_stop,
        })
    }

    /// Epoch ticks allowed for one call.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let tick = tick_for(self.settings.call_deadline);
        (self.settings.call_deadline.as_micros() / tick.as_micros()).max(1) as u64 + 1
    }

    /// Loads a module by file, verifying its sha256; compiled once per digest.
    pub(crate) fn load(&self, file: &str, expected: &str) -> Result<Arc<LoadedModule>, ModuleError> {
        if let Some(loaded) = self.cached(expected) {
            // Same digest, same code: but the file must still be what the snapshot says.
            let bytes = std::fs::read(file).map_err(|source| ModuleError::Read {
                file: file.to_owned(),
                source,
            })?;
            check_digest(file, expected, &bytes)?;
            return Ok(loaded);
        }
        let bytes = std::fs::read(file).map_err(|source| ModuleError::Read {
            file: file.to_owned(),
            source,
        })?;
        check_digest(file, expected, &bytes)?;
        self.load_bytes(file, expected, &bytes)
    }

    /// Compiles (or fetches from the disk cache) and links module bytes of a known digest.
    pub(crate) fn load_bytes(&self, file: &str, sha256: &str, bytes: &[u8]) -> Result<Arc<LoadedModule>, ModuleError> {
        if let Some(loaded) = self.cached(sha256) {
            return Ok(loaded);
        }
        let declared = Capabilities::declared(bytes).map_err(|error| ModuleError::Capabilities {
            file: file.to_owned(),
            error,
        })?;
        let module = match self.read_cached(sha256) {
            Some(module) => module,
            None => {
                let module = Module::new(&self.engine, bytes).map_err(|e| ModuleError::Compile {
                    file: file.to_owned(),
                    message: format!("{e:#}"),
                })?;
                self.write_cached(sha256, &module);
                module
            }
        };
        let exports: Vec<String> = module.exports().map(|e| e.name().to_owned()).collect();
        if !exports
            .iter()
            .any(|e| e == "proxy_abi_version_0_2_1" || e == "proxy_abi_version_0_2_0")
        {
            return Err(ModuleError::NoAbiMarker { file: file.to_owned() });
        }
        if !exports.iter().any(|e| e == "memory") {
            return Err(ModuleError::NoMemory { file: file.to_owned() });
        }
        if !exports.iter().any(|e| e == "proxy_on_memory_allocate" || e == "malloc") {
            return Err(ModuleError::NoAllocator { file: file.to_owned() });
        }
        let pre = self.linker.instantiate_pre(&module).map_err(|e| ModuleError::Link {
            file: file.to_owned(),
            message: format!("{e:#}"),
        })?;
        let capabilities = Capabilities::inferred(&module).and(declared.unwrap_or(Capabilities::ALL));
        let loaded = Arc::new(LoadedModule { pre, capabilities });
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sha256.to_owned(), loaded.clone());
        Ok(loaded)
    }

    fn cached(&self, sha256: &str) -> Option<Arc<LoadedModule>> {
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha256)
            .cloned()
    }

    /// Drops compiled modules the running snapshot does not use (in-flight requests keep
    /// theirs alive through their own references).
    pub(crate) fn retain_modules(&self, keep: &[&str]) {
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|sha, _| keep.contains(&sha.as_str()));
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.settings.cache_dir.as_ref()?;
        // The engine's compatibility hash keeps artifacts of other wasmtime builds apart.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut hasher);
        let engine = std::hash::Hasher::finish(&hasher);
        Some(dir.join(format!("{sha256}-{engine:016x}.cwasm")))
    }

    #[allow(unsafe_code, reason = "deserializing our own cache file; see the safety note")]
    fn read_cached(&self, sha256: &str) -> Option<Module> {
        let path = self.cache_path(sha256)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `write_cached` from `Module::serialize` of this engine's
        // configuration (the path carries the engine's compatibility hash) into a directory
        // the operator gives the proxy alone; wasmtime still checks the header and version.
        match unsafe { Module::deserialize_file(&self.engine, &path) } {
            Ok(module) => Some(module),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring unusable cached module");
                None
            }
        }
    }

    fn write_cached(&self, sha256: &str, module: &Module) {
        let Some(path) = self.cache_path(sha256) else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let bytes = module.serialize().map_err(|e| std::io::Error::other(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(error) = write() {
            tracing::warn!(path = %path.display(), %error, "cannot cache compiled module");
        }
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Relaxed);
    }
}

fn check_digest(file: &str, expected: &str, bytes: &[u8]) -> Result<(), ModuleError> {
    let actual = sha256_hex(bytes);
    if actual != expected {
        return Err(ModuleError::Digest {
            file: file.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Lowercase hex sha256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Most bytes of shared data (keys and values) the process keeps.
const MAX_SHARED_BYTES: usize = 16 << 20;
/// Most items waiting in one shared queue.
const MAX_QUEUE_ITEMS: usize = 10_000;

/// State shared by every VM of the process.
#[derive(Default)]
pub(crate) struct SharedState {
    /// The node the VMs run on (`node.*` properties).
    pub(crate) node: super::NodeInfo,
    data: Mutex<SharedData>,
    queues: Mutex<Queues>,
    pub(crate) metrics: Metrics,
}

#[derive(Default)]
struct SharedData {
    entries: HashMap<(String, String), (Bytes, u32)>,
    bytes: usize,
}

/// Why a shared-data write was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SetError {
    CasMismatch,
    Full,
}

impl SharedState {
    /// The value and its CAS token.
    pub(crate) fn get(&self, vm_id: &str, key: &str) -> Option<(Bytes, u32)> {
        let data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        data.entries.get(&(vm_id.to_owned(), key.to_owned())).cloned()
    }

    /// Sets a value; `cas` 0 sets unconditionally, otherwise it must match the current token.
    pub(crate) fn set(&self, vm_id: &str, key: &str, value: Bytes, cas: u32) -> Result<(), SetError> {
        let mut data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let id = (vm_id.to_owned(), key.to_owned());
        let (old_len, token) = match data.entries.get(&id) {
            Some((old, token)) => {
                if cas != 0 && cas != *token {
                    return Err(SetError::CasMismatch);
                }
                (old.len(), *token)
            }
            None if cas != 0 => return Err(SetError::CasMismatch),
            None => (0, 0),
        };
        let key_len = if old_len == 0 && token == 0 {
            key.len() + vm_id.len()
        } else {
            0
        };
        let grown = data.bytes + key_len + value.len() - old_len.min(data.bytes);
        if grown > MAX_SHARED_BYTES {
            return Err(SetError::Full);
        }
        data.bytes = grown;
        let next = token.wrapping_add(1).max(1);
        data.entries.insert(id, (value, next));
        Ok(())
    }

    /// Registers (or re-registers) a queue; `notify` hears the queue's id on each enqueue.
    pub(crate) fn register_queue(&self, vm_id: &str, name: &str, notify: Option<mpsc::UnboundedSender<u32>>) -> u32 {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let key = (vm_id.to_owned(), name.to_owned());
        let id = match queues.by_name.get(&key) {
            Some(id) => *id,
            None => {
                queues.next += 1;
                let id = queues.next;
                queues.by_name.insert(key, id);
                queues.queues.insert(id, Queue::default());
                id
            }
        };
        if let (Some(notify), Some(queue)) = (notify, queues.queues.get_mut(&id)) {
            queue.watchers.retain(|w| !w.is_closed());
            queue.watchers.push(notify);
        }
        id
    }

    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.by_name.get(&(vm_id.to_owned(), name.to_owned())).copied()
    }

    /// `None` when there is no such queue; `Some(false)` when it is full.
    pub(crate) fn enqueue(&self, id: u32, item: Bytes) -> Option<bool> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.queues.get_mut(&id)?;
        if queue.items.len() >= MAX_QUEUE_ITEMS {
            return Some(false);
        }
        queue.items.push_back(item);
        queue.watchers.retain(|w| w.send(id).is_ok());
        Some(true)
    }

    /// `None` when there is no such queue; `Some(None)` when it is empty.
    pub(crate) fn dequeue(&self, id: u32) -> Option<Option<Bytes>> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        Some(queues.queues.get_mut(&id)?.items.pop_front())
    }
}

#[derive(Default)]
struct Queues {
    next: u32,
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Bytes>,
    watchers: Vec<mpsc::UnboundedSender<u32>>,
}

/// Upper bounds of the buckets of guest histograms.
const HISTOGRAM_BUCKETS: [u64; 15] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 60_000, 300_000,
];

/// A metric defined by a guest.
pub(crate) struct Metric {
    filter: String,
    /// The metric name without labels.
    base: String,
    /// Labels written in the name (`name{a="b"}`), kept verbatim.
    labels: String,
    kind: MetricType,
    value: AtomicI64,
    buckets: [AtomicU64; 16],
    sum: AtomicU64,
}

/// Guest metrics of the process, by id; ids are process-wide, so every worker's VM of a
/// filter shares them.
#[derive(Default)]
pub(crate) struct Metrics {
    inner: RwLock<MetricsInner>,
}

#[derive(Default)]
struct MetricsInner {
    by_key: HashMap<(String, String, MetricType), u32>,
    all: Vec<Arc<Metric>>,
}

impl Metrics {
    /// Defines a metric (idempotent per filter, name and type). A name may carry Prometheus
    /// labels: `requests_total{code="200"}`.
    pub(crate) fn define(&self, filter: &str, name: &str, kind: MetricType) -> Option<u32> {
        let (base, labels) = match name.split_once('{') {
            Some((base, rest)) => (base, rest.strip_suffix('}')?),
            None => (name, ""),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let base: String = base.chars().map(|c| if valid(c) { c } else { '_' }).collect();
        if base.is_empty() || labels.contains('\n') {
            return None;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let key = (filter.to_owned(), name.to_owned(), kind);
        if let Some(id) = inner.by_key.get(&key) {
            return Some(*id);
        }
        let id = u32::try_from(inner.all.len()).ok()?.checked_add(1)?;
        inner.all.push(Arc::new(Metric {
            filter: filter.to_owned(),
            base,
            labels: labels.to_owned(),
            kind,
            value: AtomicI64::new(0),
            buckets: Default::default(),
            sum: AtomicU64::new(0),
        }));
        inner.by_key.insert(key, id);
        Some(id)
    }

    fn get_metric(&self, id: u32) -> Option<Arc<Metric>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.all.get(usize::try_from(id).ok()?.checked_sub(1)?).cloned()
    }

    /// Adds `delta` to a counter or gauge.
    pub(crate) fn increment(&self, id: u32, delta: i64) -> bool {
        match self.get_metric(id) {
            Some(m) if m.kind != MetricType::Histogram => {
                m.value.fetch_add(delta, Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Sets a gauge or counter, or records a histogram value.
    pub(crate) fn record(&self, id: u32, value: u64) -> bool {
        let Some(m) = self.get_metric(id) else { return false };
        match m.kind {
            MetricType::Histogram => {
                let i = HISTOGRAM_BUCKETS
                    .iter()
                    .position(|&b| value <= b)
                    .unwrap_or(HISTOGRAM_BUCKETS.len());
                if let Some(bucket) = m.buckets.get(i) {
                    bucket.fetch_add(1, Relaxed);
                }
                m.sum.fetch_add(value, Relaxed);
            }
            _ => m.value.store(i64::try_from(value).unwrap_or(i64::MAX), Relaxed),
        }
        true
    }

    /// A counter's or gauge's value; histograms have none.
    pub(crate) fn get(&self, id: u32) -> Option<u64> {
        let m = self.get_metric(id)?;
        (m.kind != MetricType::Histogram).then(|| u64::try_from(m.value.load(Relaxed)).unwrap_or(0))
    }

    /// Renders every guest metric, labelled by filter, in Prometheus text format.
    pub(crate) fn render(&self, out: &mut String) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut by_base: BTreeMap<&str, Vec<&Arc<Metric>>> = BTreeMap::new();
        for m in &inner.all {
            by_base.entry(&m.base).or_default().push(m);
        }
        for (base, metrics) in by_base {
            let kind = match metrics[0].kind {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
                MetricType::Histogram => "histogram",
            };
            let _ = writeln!(out, "# TYPE {base} {kind}");
            for m in metrics {
                let labels = if m.labels.is_empty() {
                    format!("filter=\"{}\"", m.filter)
                } else {
                    format!("filter=\"{}\",{}", m.filter, m.labels)
                };
                if m.kind == MetricType::Histogram {
                    let mut cumulative = 0;
                    for (i, bucket) in m.buckets.iter().enumerate() {
                        cumulative += bucket.load(Relaxed);
                        let le = HISTOGRAM_BUCKETS
                            .get(i)
                            .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                        let _ = writeln!(out, "{base}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                    }
                    let _ = writeln!(out, "{base}_sum{{{labels}}} {}", m.sum.load(Relaxed));
                    let _ = writeln!(out, "{base}_count{{{labels}}} {cumulative}");
                } else {
                    let _ = writeln!(out, "{base}{{{labels}}} {}", m.value.load(Relaxed));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_interrupted_between_its_deadline_and_one_and_a_half_times_it() {
        for ms in [1, 3, 20, 250, 1000] {
            let deadline = Duration::from_millis(ms);
            let runtime = WasmRuntime::new(
                WasmSettings {
                    call_deadline: deadline,
                    ..WasmSettings::default()
                },
                Default::default(),
            )
            .expect("runtime");
            let (tick, ticks) = (tick_for(deadline), runtime.deadline_ticks() as u32);
            // The call starts anywhere within a tick: it runs (ticks - 1) to ticks ticks.
            assert!(tick * (ticks - 1) >= deadline, "{ms} ms: {tick:?} x {ticks}");
            assert!(
                tick * ticks <= (deadline * 3 / 2).max(2 * MIN_TICK),
                "{ms} ms: {tick:?} x {ticks}"
            );
        }
    }

    #[test]
    fn compiled_modules_are_cached_on_disk_and_reused() {
        let dir = std::env::temp_dir().join(format!("weft-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = WasmSettings {
            cache_dir: Some(dir.clone()),
            ..WasmSettings::default()
        };
        let wat = r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
            (func (export "malloc") (param i32) (result i32) i32.const 8))"#;
        let bytes = wat::parse_str(wat).expect("wat");
        let sha = sha256_hex(&bytes);
        WasmRuntime::new(settings.clone(), Default::default())
            .expect("runtime")
            .load_bytes("m.wasm", &sha, &bytes)
            .expect("compiles");
        let cached: Vec<_> = std::fs::read_dir(&dir).expect("cache dir").flatten().collect();
        assert_eq!(cached.len(), 1, "one artifact written");
        assert!(cached[0].file_name().to_string_lossy().starts_with(&sha));
        // A new runtime (a restart) loads it without the source bytes being valid wasm.
        WasmRuntime::new(settings, Default::default())
            .expect("runtime")
            .load_bytes("m.wasm", &sha, b"not wasm")
            .expect("from the cache");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shared_data_compare_and_swap() {
        let shared = SharedState::default();
        assert!(shared.get("vm", "k").is_none());
        assert_eq!(
            shared.set("vm", "k", Bytes::from_static(b"1"), 7),
            Err(SetError::CasMismatch)
        );
        shared.set("vm", "k", Bytes::from_static(b"1"), 0).expect("first set");
        let (value, cas) = shared.get("vm", "k").expect("set");
        assert_eq!(value, "1");
        shared
            .set("vm", "k", Bytes::from_static(b"2"), cas)
            .expect("cas matches");
        assert_eq!(
            shared.set("vm", "k", Bytes::from_static(b"3"), cas),
            Err(SetError::CasMismatch)
        );
        assert!(shared.get("other-vm", "k").is_none(), "vm ids are separate namespaces");
    }

    #[test]
    fn queues_notify_their_watchers() {
        let shared = SharedState::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = shared.register_queue("vm", "q", Some(tx));
        assert_eq!(shared.resolve_queue("vm", "q"), Some(id));
        assert_eq!(shared.resolve_queue("vm", "other"), None);
        assert_eq!(shared.dequeue(id), Some(None));
        assert_eq!(shared.enqueue(id, Bytes::from_static(b"x")), Some(true));
        assert_eq!(rx.try_recv().ok(), Some(id));
        assert_eq!(shared.dequeue(id), Some(Some(Bytes::from_static(b"x"))));
        assert_eq!(shared.enqueue(999, Bytes::new()), None);
    }

    #[test]
    fn metrics_render_with_filter_and_name_labels() {
        let metrics = Metrics::default();
        let id = metrics
            .define("f", "requests_total{code=\"200\"}", MetricType::Counter)
            .expect("defined");
        assert_eq!(
            metrics.define("f", "requests_total{code=\"200\"}", MetricType::Counter),
            Some(id)
        );
        assert!(metrics.increment(id, 3));
        let h = metrics.define("f", "size", MetricType::Histogram).expect("defined");
        assert!(metrics.record(h, 7));
        assert_eq!(metrics.get(id), Some(3));
        assert_eq!(metrics.get(h), None);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("requests_total{filter=\"f\",code=\"200\"} 3"), "{out}");
        assert!(out.contains("size_bucket{filter=\"f\",le=\"10\"} 1"), "{out}");
        assert!(out.contains("size_count{filter=\"f\"} 1"), "{out}");
    }
}
