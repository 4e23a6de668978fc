//! Driving one filter in-process, without sockets: the real host (Wasm or native) with
//! synthetic request and response heads. The filter-author test harness and the
//! per-request micro-benchmarks build on this.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use weft_proxy::harness::FilterHarness;
//! let harness = FilterHarness::wasm("my_filter.wasm", "{\"name\": \"x\"}")?;
//! let mut stream = harness.stream();
//! let mut request = http::Request::get("/").header("host", "svc").body(())?.into_parts().0;
//! let action = stream.request_headers(&mut request, true);
//! # let _ = action; Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::filter::{BodyAction, FilterAction, FilterContext, FilterError, FilterFactory, HttpFilter, LogRecord};
use crate::wasm::{WasmHost, WasmSettings};

/// Why a harness could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The module file could not be read.
    #[error("cannot read {file}")]
    Read {
        /// The file.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The filter refused to load or start (compile error, no ABI marker, config rejected).
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// One filter, loaded on the real host.
pub struct FilterHarness {
    factory: Arc<dyn FilterFactory>,
    context: FilterContext,
    // Keeps the runtime (engine, epoch ticker) alive as long as the filter.
    _host: Arc<WasmHost>,
}

impl FilterHarness {
    /// Loads a proxy-wasm module with a plugin configuration (bytes as given), with default
    /// limits and `fail_closed`.
    pub fn wasm(file: impl AsRef<Path>, plugin_config: &str) -> Result<Self, HarnessError> {
        Self::wasm_with(file, plugin_config, WasmSettings::default())
    }

    /// As [`FilterHarness::wasm`], with explicit limits.
    pub fn wasm_with(
        file: impl AsRef<Path>,
        plugin_config: &str,
        settings: WasmSettings,
    ) -> Result<Self, HarnessError> {
        let file = file.as_ref().display().to_string();
        let bytes = std::fs::read(&file).map_err(|source| HarnessError::Read {
            file: file.clone(),
            source,
        })?;
        let config = weft_api::FilterConfig {
            name: Path::new(&file)
                .file_stem()
                .map_or_else(|| "filter".to_owned(), |s| s.to_string_lossy().into_owned()),
            native: None,
            wasm: Some(weft_api::WasmModule {
                file: file.clone(),
                sha256: crate::wasm::sha256_hex(&bytes),
                vm_config: serde_yaml::Value::Null,
                root_id: String::new(),
                vm_id: None,
            }),
            config: serde_yaml::Value::String(plugin_config.to_owned()),
            failure_policy: weft_api::FailurePolicy::FailClosed,
        };
        let host = Arc::new(WasmHost::new(settings, Default::default()));
        let chain = crate::filter::FilterChain::build(std::slice::from_ref(&config), &host, 1)?;
        let factory = chain.factories().first().cloned().ok_or_else(|| FilterError::Wasm {
            name: config.name.clone(),
            message: "no filter built".to_owned(),
        })?;
        Ok(Self {
            factory,
            context: default_context(),
            _host: host,
        })
    }

    /// A fresh stream (one request's filter instance).
    pub fn stream(&self) -> HarnessStream {
        HarnessStream {
            filter: self.factory.create(&self.context),
        }
    }
}

fn default_context() -> FilterContext {
    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    FilterContext {
        worker: 0,
        source: addr(40000),
        destination: addr(15001),
        listener: Arc::from("harness"),
        route: None,
        mtls: false,
        callouts: None,
        worker_context: None,
        properties: None,
    }
}

/// One request through the filter.
pub struct HarnessStream {
    filter: Box<dyn HttpFilter>,
}

impl HarnessStream {
    /// Runs `request_headers`.
    pub fn request_headers(&mut self, request: &mut http::request::Parts, end_of_stream: bool) -> FilterAction {
        self.filter.on_request_headers(request, end_of_stream)
    }

    /// Runs `request_body` on one chunk.
    pub fn request_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> BodyAction {
        self.filter.on_request_body(body, end_of_stream)
    }

    /// Runs `response_headers`.
    pub fn response_headers(&mut self, response: &mut http::response::Parts, end_of_stream: bool) -> FilterAction {
        self.filter.on_response_headers(response, end_of_stream)
    }

    /// Runs `response_body` on one chunk.
    pub fn response_body(&mut self, body: &mut Bytes, end_of_stream: bool) -> BodyAction {
        self.filter.on_response_body(body, end_of_stream)
    }

    /// Runs `log` (and ends the stream context).
    pub fn log(&mut self, record: &LogRecord) {
        self.filter.on_log(record);
    }
}
