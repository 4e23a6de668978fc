//! Weft's `ratelimit` filter: a token bucket per request key, kept in the proxy's shared data so
//! that every worker's VM draws from the same bucket (Envoy's local rate limit, shared across
//! workers). An empty bucket answers 429 `rate limited` with `retry-after` and
//! `x-ratelimit-*` headers. See `README.md` and `schema.json`.
//!
//! - [`config`]: the configuration and its checks.
//! - [`logic`]: bucket arithmetic, encodings, keys and header values; no hostcalls,
//!   unit-tested on the host.
//! - [`RateLimitRoot`] and [`RateLimit`]: the glue that defines the metrics, reads the key,
//!   runs the compare-and-swap loops on shared data and replies.

#![warn(missing_docs)]

use std::rc::Rc;
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use weft_sdk::proxy_wasm::hostcalls;
use weft_sdk::{Action, Context, ContextType, Filter, HttpContext, LogLevel, MetricType, Root, RootContext};

pub mod config;
pub mod logic;

use config::{Config, Key};
use logic::{Bucket, BucketKey, Decision, LIMITED_BODY, Limits, OVERFLOW_KEY, REGISTRY_KEY, Registry};

/// Compare-and-swap attempts on one request's bucket before the filter gives up and lets the
/// request through.
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// Attempts to take the bucket-creation lock (each one a shared-data read) before the filter
/// gives up and lets the request through.
pub const MAX_LOCK_ATTEMPTS: u32 = 1024;

/// Counter of requests let through (with a token, without a key, or failing open).
pub const ALLOWED_METRIC: &str = "ratelimit_allowed_total";

/// Counter of requests answered 429.
pub const LIMITED_METRIC: &str = "ratelimit_limited_total";

/// The root context: the SDK's [`Root`] (configuration parsing, one [`RateLimit`] per
/// request), plus per-VM setup once the configuration is accepted: the metrics, and the bucket
/// registry in shared data. The load-time check VM runs this before any worker serves the
/// snapshot, so the registry is created while nothing else writes it.
#[derive(Default)]
pub struct RateLimitRoot {
    inner: Root<RateLimit>,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        if !self.inner.on_configure(plugin_configuration_size) {
            return false;
        }
        metrics();
        if let (_, None) = hostcalls::get_shared_data(REGISTRY_KEY).unwrap_or((None, None))
            && let Err(error) = shared::set(REGISTRY_KEY, &Registry::default().encode(), 0)
        {
            // Shared data is full: requests with new keys will be let through.
            debug(&format!("ratelimit: creating the bucket registry failed: {error}"));
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        self.inner.get_type()
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.inner.create_http_context(context_id)
    }
}

/// One request through the filter.
pub struct RateLimit {
    config: Rc<Config>,
    limits: Limits,
    /// Set by the request phase: the tokens left, when a token was taken.
    remaining: Option<u64>,
}

impl Filter for RateLimit {
    type Config = Config;

    fn new(config: Rc<Config>, _context_id: u32) -> Self {
        let limits = Limits::from_config(&config);
        Self {
            config,
            limits,
            remaining: None,
        }
    }
}

impl Context for RateLimit {}

impl HttpContext for RateLimit {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let input = match &self.config.key {
            Key::Header(name) => self.get_http_request_header_bytes(name),
            Key::Path => self.get_http_request_header_bytes(":path"),
            Key::SourceIp => hostcalls::get_property(vec!["source", "address"]).ok().flatten(),
            Key::PeerPrincipal => weft_sdk::weft::peer_principal().map(String::into_bytes),
            Key::Constant(_) => None,
        };
        let key = match logic::bucket_key(&self.config.key, input.as_deref()) {
            BucketKey::Unlimited => {
                count(Counter::Allowed);
                return Action::Continue;
            }
            BucketKey::Own(key) => key,
            BucketKey::Overflow => OVERFLOW_KEY.to_owned(),
        };
        match self.take(key) {
            Some(Decision::Limited {
                retry_after_secs,
                reset_secs,
            }) => {
                count(Counter::Limited);
                let headers = logic::limited_headers(&self.limits, retry_after_secs, reset_secs);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.send_http_response(429, headers, Some(LIMITED_BODY.as_bytes()));
                Action::Pause
            }
            Some(Decision::Allowed { remaining, .. }) => {
                count(Counter::Allowed);
                self.remaining = Some(remaining);
                Action::Continue
            }
            None => {
                count(Counter::Allowed);
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // Also called for our own 429 (it goes through the chain's response phase): `remaining`
        // is unset then, and the reply already has its headers.
        if let Some(remaining) = self.remaining.filter(|_| self.config.response_headers) {
            for (name, value) in logic::allowed_headers(&self.limits, remaining) {
                self.set_http_response_header(name, Some(&value));
            }
        }
        Action::Continue
    }
}

/// What creating a bucket came to.
enum Creation {
    /// Created with a token taken: the decision.
    Created(Decision),
    /// Another request created it meanwhile: take from it as usual.
    Exists,
    /// `max_buckets` exist: use the overflow bucket.
    Full,
    /// The registry could not be locked or written: let the request through.
    Failed,
}

impl RateLimit {
    /// Takes a token from the bucket under `key` (the overflow bucket if the key is new and
    /// `max_buckets` exist). `None`: shared data could not be updated, let the request through.
    fn take(&self, mut key: String) -> Option<Decision> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (value, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
            let Some(cas) = cas else {
                match self.create(&key) {
                    Creation::Created(decision) => return Some(decision),
                    Creation::Exists => continue,
                    Creation::Full => {
                        key = OVERFLOW_KEY.to_owned();
                        continue;
                    }
                    Creation::Failed => return None,
                }
            };
            // The clock is read after the bucket, so it is never earlier than the refill time
            // another worker just wrote (unless the wall clock itself went back).
            let decision = logic::take(value.as_deref().and_then(Bucket::decode), &self.limits, now_ns());
            let Decision::Allowed { bucket, .. } = decision else {
                return Some(decision);
            };
            match shared::set(&key, &bucket.encode(), cas) {
                Ok(()) => return Some(decision),
                Err(shared::SetError::CasMismatch) => continue,
                Err(error) => {
                    debug(&format!("ratelimit: writing {key:?} failed ({error}); allowing"));
                    return None;
                }
            }
        }
        debug(&format!(
            "ratelimit: {key:?} still contended after {MAX_CAS_ATTEMPTS} attempts; allowing"
        ));
        None
    }

    /// Creates the bucket under `key`, full minus the token this request takes, holding the
    /// registry's lock so that no other creation of it can overwrite the take. Counts it
    /// against `max_buckets` unless it is the overflow bucket.
    fn create(&self, key: &str) -> Creation {
        let counted = key != OVERFLOW_KEY;
        let (registry, token) = match self.lock(counted) {
            Ok(held) => held,
            Err(creation) => return creation,
        };
        let mut created = 0;
        let creation = match hostcalls::get_shared_data(key).unwrap_or((None, None)) {
            (_, Some(_)) => Creation::Exists,
            (_, None) => match logic::take(None, &self.limits, now_ns()) {
                Decision::Allowed { bucket, .. } if shared::set(key, &bucket.encode(), 0).is_err() => {
                    debug(&format!("ratelimit: creating {key:?} failed; allowing"));
                    Creation::Failed
                }
                decision => {
                    created = u64::from(counted && matches!(decision, Decision::Allowed { .. }));
                    Creation::Created(decision)
                }
            },
        };
        // A mismatch means the lock expired and was taken over: the new holder unlocks.
        let _ = shared::set(REGISTRY_KEY, &registry.unlocked(created).encode(), token);
        creation
    }

    /// Takes the registry's lock: the registry as it was and the CAS token of the locked
    /// value. `Err(Full)` when `max_buckets` exist (for a counted bucket), `Err(Failed)` when
    /// the lock stays busy or shared data cannot be written.
    fn lock(&self, counted: bool) -> Result<(Registry, u32), Creation> {
        for _ in 0..MAX_LOCK_ATTEMPTS {
            let (value, cas) = hostcalls::get_shared_data(REGISTRY_KEY).unwrap_or((None, None));
            let Some(cas) = cas else {
                // Normally created by on_configure (which could not write it then).
                if shared::set(REGISTRY_KEY, &Registry::default().encode(), 0).is_err() {
                    break;
                }
                continue;
            };
            let registry = value.as_deref().and_then(Registry::decode).unwrap_or_default();
            if counted && registry.buckets >= self.config.max_buckets {
                return Err(Creation::Full);
            }
            let now = now_ns();
            if registry.is_locked(now) {
                continue;
            }
            match shared::set(REGISTRY_KEY, &registry.locked(now).encode(), cas) {
                // Every write increments the key's token by one.
                Ok(()) => return Ok((registry, cas.wrapping_add(1))),
                Err(shared::SetError::CasMismatch) => continue,
                Err(shared::SetError::Other(_)) => break,
            }
        }
        debug("ratelimit: the bucket registry stayed busy; allowing");
        Err(Creation::Failed)
    }
}

/// Wall clock, nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn debug(message: &str) {
    hostcalls::log(LogLevel::Debug, message).ok();
}

enum Counter {
    Allowed,
    Limited,
}

/// The counters' ids in this VM, defined on first use (normally in `on_configure`; the host
/// dedups definitions by name, so every worker's VM shares the series).
fn metrics() -> Option<(u32, u32)> {
    static METRICS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *METRICS.get_or_init(|| {
        let allowed = hostcalls::define_metric(MetricType::Counter, ALLOWED_METRIC).ok()?;
        let limited = hostcalls::define_metric(MetricType::Counter, LIMITED_METRIC).ok()?;
        Some((allowed, limited))
    })
}

/// Increments a counter.
fn count(counter: Counter) {
    if let Some((allowed, limited)) = metrics() {
        let id = match counter {
            Counter::Allowed => allowed,
            Counter::Limited => limited,
        };
        hostcalls::increment_metric(id, 1).ok();
    }
}

/// `proxy_set_shared_data` called directly: the SDK's wrapper panics (traps the VM) on any
/// status but `Ok` and `CasMismatch`, and the host answers `InternalFailure` when the
/// process's shared data is full, which must not take the filter down.
mod shared {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_set_shared_data(key: *const u8, key_len: usize, value: *const u8, value_len: usize, cas: u32) -> u32;
    }

    const OK: u32 = 0;
    const CAS_MISMATCH: u32 = 8;

    /// Why a write failed.
    pub(crate) enum SetError {
        /// `cas` is not the key's current token (or the key is missing and `cas` is not 0).
        CasMismatch,
        /// Any other status (`InternalFailure`: shared data full).
        Other(u32),
    }

    impl std::fmt::Display for SetError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                SetError::CasMismatch => f.write_str("CAS mismatch"),
                SetError::Other(status) => write!(f, "status {status}"),
            }
        }
    }

    /// Writes `value` under `key` if its CAS token is still `cas` (0: unconditionally).
    pub(crate) fn set(key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        // SAFETY: both pointers come from live slices with their lengths; the host only reads
        // them during the call.
        let status = unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
        match status {
            OK => Ok(()),
            CAS_MISMATCH => Err(SetError::CasMismatch),
            other => Err(SetError::Other(other)),
        }
    }
}

/// The module's entry point (`_initialize`), in a private module: the macro's exported
/// function carries no documentation. (`weft_sdk::filter!` with [`RateLimitRoot`] instead of
/// the SDK's [`Root`].)
mod entry {
    weft_sdk::capabilities!(request_headers, response_headers, properties);

    weft_sdk::proxy_wasm::main! {{
        weft_sdk::proxy_wasm::set_log_level(weft_sdk::LogLevel::Info);
        weft_sdk::proxy_wasm::set_root_context(|_| -> Box<dyn weft_sdk::RootContext> {
            Box::new(super::RateLimitRoot::default())
        });
    }}
}
