//! `weft-filter-test`: unit-test a Weft filter's `.wasm` in-process, on the real proxy-wasm
//! host of `weft-proxy` (the same wasmtime host, hostcalls, limits and failure policy), with
//! no sockets: a synthetic request and upstream response go through the filter's phases as
//! the proxy runs them, and the [`Outcome`] says what the upstream and the client got.
//!
//! ```no_run
//! use weft_filter_test::{CalloutReply, FilterTest, Request, Response};
//!
//! # fn demo() -> Result<(), weft_filter_test::Error> {
//! let test = FilterTest::wasm("target/wasm32-wasip1/release/my_filter.wasm")
//!     .config(serde_json::json!({"cluster": "authz"}))
//!     .build()?;
//! // Callouts to cluster `authz` get this answer; other clusters do not exist.
//! test.on_callout("authz", |callout| match callout.header("x-user") {
//!     Some("ann") => CalloutReply::ok("ann"),
//!     _ => CalloutReply::new(403),
//! });
//! let outcome = test.run(Request::get("/items").header("x-user", "ann"), Response::ok().body("[]"));
//! assert!(outcome.forwarded);
//! assert_eq!(outcome.request.header("x-authz"), Some("ann"));
//! assert_eq!(outcome.response.status, 200);
//! assert_eq!(outcome.callouts.len(), 1);
//! assert_eq!(test.metric("my_filter_requests_total"), Some(1.0));
//! # Ok(()) }
//! ```
//!
//! What runs (see [`FilterTest::run`]): `request_headers` (paused phases are resumed once
//! their callouts are answered), `request_body`, then the response phases on the given
//! response, or on the local reply when the filter answered, then `log`. The filter's VM
//! persists across runs of one [`FilterTest`], as a worker's VM persists across requests, so
//! shared data and metrics accumulate.
//!
//! Use plain `#[test]` functions: the harness drives its own runtime and must not be called
//! from inside an async runtime.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_proxy::harness::{FilterHarness, HarnessBuilder, HarnessError};

mod callout;
mod message;
mod wasm_build;

pub use bytes::{self, Bytes};
pub use callout::{CalloutReply, CalloutRequest};
pub use http;
pub use message::{ClientResponse, Request, Response, UpstreamRequest};
pub use wasm_build::WasmBuild;
pub use weft_proxy::WasmSettings;
pub use weft_proxy::filter::{LocalReply, LogRecord, UpstreamChoice};
pub use weft_proxy::harness::{FailurePolicy, LogLevel as Level};

/// Why a [`FilterTest`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The proxy refused the filter, as it would refuse a snapshot with it: the module does
    /// not compile or link, or `on_vm_start` / `on_configure` rejected its configuration.
    #[error("{message}{}", render_logs(logs))]
    Rejected {
        /// The proxy's reason, e.g. `filter "f": on_configure rejected the plugin
        /// configuration: <the guest's last error log>`.
        message: String,
        /// What the guest logged while starting (often why it said no).
        logs: Vec<(Level, String)>,
    },
    /// The harness's runtime could not be created.
    #[error("cannot create the harness runtime: {0}")]
    Runtime(std::io::Error),
    /// [`WasmBuild`] failed.
    #[error("cannot build {what}: {message}")]
    Build {
        /// The crate.
        what: String,
        /// What went wrong (cargo's diagnostics included).
        message: String,
    },
}

fn render_logs(logs: &[(Level, String)]) -> String {
    logs.iter()
        .map(|(level, message)| format!("\n  guest {level:?}: {message}"))
        .collect()
}

impl Error {
    /// The proxy's reason for a [`Error::Rejected`] filter.
    pub fn rejection(&self) -> Option<&str> {
        match self {
            Error::Rejected { message, .. } => Some(message),
            _ => None,
        }
    }
}

fn pairs(logs: Vec<weft_proxy::harness::GuestLog>) -> Vec<(Level, String)> {
    logs.into_iter().map(|l| (l.level, l.message)).collect()
}

impl From<HarnessError> for Error {
    fn from(error: HarnessError) -> Self {
        match error {
            HarnessError::Read { file, source } => Error::Read { file, source },
            HarnessError::Filter(error) => Error::Rejected {
                message: error.to_string(),
                logs: Vec::new(),
            },
            HarnessError::Rejected { error, logs } => Error::Rejected {
                message: error.to_string(),
                logs: pairs(logs),
            },
            HarnessError::Runtime(error) => Error::Runtime(error),
        }
    }
}

/// A filter configuration: a string is passed to the filter as is; JSON is serialized.
pub trait IntoConfig {
    /// The bytes the filter reads (as text).
    fn into_config(self) -> String;
}

impl IntoConfig for &str {
    fn into_config(self) -> String {
        self.to_owned()
    }
}

impl IntoConfig for String {
    fn into_config(self) -> String {
        self
    }
}

impl IntoConfig for serde_json::Value {
    fn into_config(self) -> String {
        self.to_string()
    }
}

impl IntoConfig for &serde_json::Value {
    fn into_config(self) -> String {
        self.to_string()
    }
}

/// Sets up a [`FilterTest`]; every setting has the proxy's default.
pub struct FilterTestBuilder {
    harness: HarnessBuilder,
    mocks: Arc<callout::Mocks>,
}

impl FilterTestBuilder {
    /// The plugin configuration (`on_configure`). Default: empty.
    pub fn config(mut self, config: impl IntoConfig) -> Self {
        self.harness = self.harness.plugin_config(config.into_config());
        self
    }

    /// The VM configuration (`on_vm_start`). Default: empty.
    pub fn vm_config(mut self, config: impl IntoConfig) -> Self {
        self.harness = self.harness.vm_config(config.into_config());
        self
    }

    /// The filter's name (`plugin_name`, the `filter` label of its metrics). Default: the
    /// file name without `.wasm`.
    pub fn name(mut self, name: &str) -> Self {
        self.harness = self.harness.name(name);
        self
    }

    /// What a failing filter (trap, deadline, memory) means for requests. Default:
    /// `FailClosed` (a local 503 with `x-weft-reason: filter_failure`).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.harness = self.harness.failure_policy(policy);
        self
    }

    /// Call deadline and memory limit of the VM.
    pub fn settings(mut self, settings: WasmSettings) -> Self {
        self.harness = self.harness.settings(settings);
        self
    }

    /// The downstream peer (`source.address`, `source.port`). Default: `127.0.0.1:40000`.
    pub fn source(mut self, address: SocketAddr) -> Self {
        self.harness = self.harness.source(address);
        self
    }

    /// The address the request arrived on (`destination.*`). Default: `127.0.0.1:15001`.
    pub fn destination(mut self, address: SocketAddr) -> Self {
        self.harness = self.harness.destination(address);
        self
    }

    /// The listener's name (`weft.listener`). Default: `harness`.
    pub fn listener(mut self, name: &str) -> Self {
        self.harness = self.harness.listener(name);
        self
    }

    /// The name of the route the request matched (`route_name`). Default: none.
    pub fn route(mut self, name: &str) -> Self {
        self.harness = self.harness.route(Some(name));
        self
    }

    /// Whether the downstream connection is mutual TLS (`connection.mtls`).
    pub fn mtls(mut self, mtls: bool) -> Self {
        self.harness = self.harness.mtls(mtls);
        self
    }

    /// The proxy's node id (`node.id`).
    pub fn node_id(mut self, id: &str) -> Self {
        self.harness = self.harness.node_id(id);
        self
    }

    /// A node metadata entry (`node.metadata.<key>`).
    pub fn node_metadata(mut self, key: &str, value: &str) -> Self {
        self.harness = self.harness.node_metadata(key, value);
        self
    }

    /// A node label (in `node.metadata.LABELS`).
    pub fn node_label(mut self, key: &str, value: &str) -> Self {
        self.harness = self.harness.node_label(key, value);
        self
    }

    /// The route's cluster and the endpoint responses come from (`cluster_name`,
    /// `upstream.address`). Default: `upstream`, `127.0.0.1:8080`.
    pub fn upstream(mut self, cluster: &str, endpoint: SocketAddr) -> Self {
        self.harness = self.harness.upstream(cluster, endpoint);
        self
    }

    /// Most body bytes a buffering body phase may hold. Default: the snapshot default.
    pub fn max_buffered_body_bytes(mut self, bytes: usize) -> Self {
        self.harness = self.harness.max_buffered_body_bytes(bytes);
        self
    }

    /// As [`FilterTest::on_callout`], before the filter starts.
    pub fn on_callout<F, R>(self, cluster: &str, handler: F) -> Self
    where
        F: Fn(&CalloutRequest) -> R + Send + Sync + 'static,
        R: Into<Option<CalloutReply>>,
    {
        self.mocks.set_handler(cluster, callout::handler(handler));
        self
    }

    /// Loads the module and starts the filter as the proxy does when it loads a snapshot.
    pub fn build(self) -> Result<FilterTest, Error> {
        let harness = self.harness.callouts(self.mocks.clone()).build()?;
        let logs = pairs(harness.logs());
        Ok(FilterTest {
            harness,
            mocks: self.mocks,
            logs: Mutex::new(logs),
        })
    }
}

/// One filter on the real host, ready to run exchanges through.
pub struct FilterTest {
    harness: FilterHarness,
    mocks: Arc<callout::Mocks>,
    logs: Mutex<Vec<(Level, String)>>,
}

/// What happened to one request and its response; see [`FilterTest::run`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The request after the request phases: what the upstream gets if `forwarded`.
    pub request: UpstreamRequest,
    /// Whether the request reached the upstream (no local reply in the request phases).
    pub forwarded: bool,
    /// The local reply that made the response, if any: the filter's (`send_http_response`),
    /// or the host's for a failed filter (`x-weft-reason: filter_failure`) or a request body
    /// over the limit (413).
    pub local_reply: Option<LocalReply>,
    /// The response as the client gets it.
    pub response: ClientResponse,
    /// What the filter asked for with `weft.set_upstream`.
    pub upstream: Option<UpstreamChoice>,
    /// The backoff of each retry the filter asked for with `weft.retry`.
    pub retries: Vec<Duration>,
    /// How many upstream responses went through `response_headers` (retries honoured + 1;
    /// 0 if the request was not forwarded).
    pub attempts: usize,
    /// The callouts the filter made during this exchange, in order.
    pub callouts: Vec<CalloutRequest>,
    /// What the guest logged during this exchange.
    pub logs: Vec<(Level, String)>,
    /// What the `log` phase was told.
    pub log: LogRecord,
}

impl Outcome {
    /// Whether the guest logged a line containing `text` during this exchange.
    pub fn logged(&self, text: &str) -> bool {
        self.logs.iter().any(|(_, line)| line.contains(text))
    }
}

impl FilterTest {
    /// A test of the module at `path`; configure it, then [`FilterTestBuilder::build`].
    pub fn wasm(path: impl AsRef<Path>) -> FilterTestBuilder {
        FilterTestBuilder {
            harness: FilterHarness::builder(path),
            mocks: Arc::default(),
        }
    }

    /// Sends `request` through the filter, `response` as the upstream's answer:
    ///
    /// 1. `request_headers`; a paused phase is resumed when its callouts are answered (or a
    ///    `weft.delay` elapses);
    /// 2. `request_body` over the body (one empty chunk for no body, as the proxy does);
    ///    buffering as the proxy buffers (over the limit: 413);
    /// 3. unless the filter answered: `response_headers` on `response`, then
    ///    `response_body`;
    /// 4. if it answered (or failed, per its policy): the local reply, built as the proxy
    ///    builds it, goes through the response phases instead (those after the phase that
    ///    answered);
    /// 5. `log`.
    ///
    /// The request and response are as given: the proxy's own edits (`x-request-id`,
    /// `x-forwarded-*`, hop-by-hop headers) are not made.
    ///
    /// # Panics
    ///
    /// If `request` or `response` is invalid (a bad header name or value, method, target
    /// or status); the message names it.
    pub fn run(&self, request: Request, response: Response) -> Outcome {
        self.run_attempts(request, [response])
    }

    /// As [`FilterTest::run`], with one response per attempt: when the filter asks for a
    /// retry in `response_headers` and responses remain, the next one is the next attempt's
    /// answer (at most 5 retries, as the proxy allows; backoffs are not waited).
    ///
    /// # Panics
    ///
    /// As [`FilterTest::run`].
    pub fn run_attempts(&self, request: Request, responses: impl IntoIterator<Item = Response>) -> Outcome {
        let request = request
            .into_harness()
            .unwrap_or_else(|e| panic!("invalid synthetic request: {e}"));
        let responses = responses
            .into_iter()
            .map(|r| {
                r.into_harness()
                    .unwrap_or_else(|e| panic!("invalid synthetic response: {e}"))
            })
            .collect();
        let calls = self.mocks.call_count();
        let earlier = self.collect_logs();
        let exchange = self.harness.exchange(request, responses);
        let logs = pairs(self.harness.logs());
        let mut all = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(earlier);
        all.extend(logs.iter().cloned());
        Outcome {
            request: UpstreamRequest::new(exchange.request, exchange.request_body),
            forwarded: exchange.forwarded,
            local_reply: exchange.local_reply,
            response: ClientResponse {
                status: exchange.response.status,
                headers: exchange.response.headers,
                body: exchange.response_body,
                reset: exchange.reset,
            },
            upstream: exchange.upstream_choice,
            retries: exchange.retries,
            attempts: exchange.attempts,
            callouts: self.mocks.calls_since(calls),
            logs,
            log: exchange.log,
        }
    }

    /// Answers callouts to `cluster` with `handler` (replacing an earlier one); the cluster
    /// then exists for the filter. Callouts to clusters with neither a handler nor queued
    /// replies are refused at dispatch, as the proxy refuses a cluster its snapshot lacks
    /// (`BadArgument`: the SDK's `dispatch_http_call` returns `Err`). Return
    /// `None` for no response at all (as a timeout).
    pub fn on_callout<F, R>(&self, cluster: &str, handler: F) -> &Self
    where
        F: Fn(&CalloutRequest) -> R + Send + Sync + 'static,
        R: Into<Option<CalloutReply>>,
    {
        self.mocks.set_handler(cluster, callout::handler(handler));
        self
    }

    /// Queues one canned answer to the next callout to `cluster` (`None`: no response);
    /// queued answers are used first, in order, then the handler. A known cluster with
    /// neither left gives no response.
    pub fn reply_to_callout(&self, cluster: &str, reply: impl Into<Option<CalloutReply>>) -> &Self {
        self.mocks.queue(cluster, reply.into());
        self
    }

    /// Every callout the filter made so far, in order.
    pub fn callouts(&self) -> Vec<CalloutRequest> {
        self.mocks.calls()
    }

    /// The value of one metric series: `name` or `name{label="value",...}` as the filter
    /// defined it (labels in any order; the `filter` label is implied). Histograms read as
    /// `name_count`, `name_sum` and `name_bucket{le="10"}`. The host's own counters read too,
    /// e.g. `weft_wasm_failures_total{kind="trap"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.harness.metric(series)
    }

    /// Every metric, in the Prometheus text format of the admin `/stats/prometheus`.
    pub fn metrics_text(&self) -> String {
        self.harness.metrics_text()
    }

    /// Everything the guest logged so far, start-up included: `proxy_log` lines at their
    /// level, WASI stdout at `Info` and stderr at `Warn`, whatever the proxy's log level.
    pub fn logs(&self) -> Vec<(Level, String)> {
        let new = self.collect_logs();
        let mut all = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(new);
        all.clone()
    }

    /// The lower-level harness, to drive phases one by one.
    pub fn harness(&self) -> &FilterHarness {
        &self.harness
    }

    fn collect_logs(&self) -> Vec<(Level, String)> {
        pairs(self.harness.logs())
    }
}
