//! The proxy-wasm host: Wasm filters on wasmtime, speaking the proxy-wasm ABI 0.2.1.
//!
//! All `unsafe` code and every check of a guest-supplied pointer live in this module.
//! Start with [`WasmHost`] (process-wide), then `filter.rs` (a filter in the chain: VM per
//! worker, stream context per request, failure policy), `vm.rs` (one instance and its calls,
//! with deadline and memory cap) and `host.rs` (the hostcalls); `capabilities.rs` says which
//! phases and features a module uses, so the request path skips the rest. The ABI as Weft
//! implements it, with Weft's extensions, is described in `docs/abi.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};

mod abi;
mod capabilities;
mod extensions;
mod filter;
mod host;
mod props;
mod runtime;
mod vm;

pub(crate) use filter::{FilterCounters, WasmFactory};
pub(crate) use host::{LogCapture, LogSink, capture_logs};
pub use runtime::WasmSettings;
pub(crate) use runtime::{WasmRuntime, sha256_hex};

/// Who this proxy is, as filters read it (`node.id`, `node.metadata.*`).
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeInfo {
    pub(crate) id: String,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) labels: BTreeMap<String, String>,
}

/// The Wasm host of one proxy: the runtime is created on first use, so a proxy without
/// Wasm filters pays nothing for it.
pub(crate) struct WasmHost {
    settings: WasmSettings,
    node: NodeInfo,
    runtime: OnceLock<Arc<WasmRuntime>>,
    counters: Mutex<BTreeMap<String, Arc<FilterCounters>>>,
}

impl WasmHost {
    pub(crate) fn new(settings: WasmSettings, node: NodeInfo) -> Self {
        Self {
            settings,
            node,
            runtime: OnceLock::new(),
            counters: Mutex::new(BTreeMap::new()),
        }
    }

    /// The runtime, created on first call.
    pub(crate) fn runtime(&self) -> Result<&Arc<WasmRuntime>, String> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = Arc::new(WasmRuntime::new(self.settings.clone(), self.node.clone())?);
        Ok(self.runtime.get_or_init(|| runtime))
    }

    /// Forgets compiled modules `snapshot` does not use.
    pub(crate) fn retain_modules(&self, snapshot: &weft_api::Snapshot) {
        if let Some(runtime) = self.runtime.get() {
            let keep: Vec<&str> = snapshot
                .listeners
                .iter()
                .flat_map(|l| &l.filters)
                .filter_map(|f| f.wasm.as_ref().map(|w| w.sha256.as_str()))
                .collect();
            runtime.retain_modules(&keep);
        }
    }

    /// The counters of a filter by name; they survive snapshot updates.
    pub(crate) fn counters(&self, filter: &str) -> Arc<FilterCounters> {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(filter.to_owned()).or_default().clone()
    }

    /// Renders filter counters and guest metrics.
    pub(crate) fn render(&self, out: &mut String) {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(
            out,
            "# HELP weft_wasm_vms_created_total Wasm VMs created, per filter (one per worker, again after a failure).\n# TYPE weft_wasm_vms_created_total counter"
        );
        for (name, c) in &counters {
            let _ = writeln!(
                out,
                "weft_wasm_vms_created_total{{filter=\"{name}\"}} {}",
                c.vms_created.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP weft_wasm_failures_total Wasm filter failures by kind (trap, deadline, memory, instantiate, rejected).\n# TYPE weft_wasm_failures_total counter"
        );
        for (name, c) in &counters {
            let failures = c.failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (kind, count) in failures {
                let _ = writeln!(
                    out,
                    "weft_wasm_failures_total{{filter=\"{name}\",kind=\"{kind}\"}} {count}"
                );
            }
        }
        if let Some(runtime) = self.runtime.get() {
            runtime.shared.metrics.render(out);
        }
    }
}
