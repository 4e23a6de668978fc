//! `weft-sdk`: write Weft filters in Rust.
//!
//! A Weft filter is a [proxy-wasm](https://github.com/proxy-wasm/spec) module: this crate is
//! built on the public `proxy-wasm` crate, so a filter that uses none of Weft's extensions
//! also runs on Envoy. It adds:
//!
//! - **Typed configuration**: implement [`Filter`] with a serde `Config`; the plugin
//!   configuration is parsed (JSON) once per VM, and a bad one makes `on_configure` fail with
//!   a message the proxy reports as the rejection reason.
//! - **Less boilerplate**: [`filter!`] registers the root context ([`Root`]) that parses the
//!   configuration and creates one [`Filter`] per request.
//! - **Weft's host extensions** in [`weft`]: choose the upstream, ask for a retry, read the
//!   peer's identity.
//!
//! A complete filter:
//!
//! ```no_run
//! use std::rc::Rc;
//! use weft_sdk::{Action, Context, Filter, FilterConfig, HttpContext};
//!
//! #[derive(serde::Deserialize, Default)]
//! struct Config {
//!     /// Header added to every request.
//!     header: String,
//! }
//!
//! impl FilterConfig for Config {
//!     fn validate(&self) -> Result<(), String> {
//!         if self.header.is_empty() { Err("header must not be empty".into()) } else { Ok(()) }
//!     }
//! }
//!
//! struct AddHeader {
//!     config: Rc<Config>,
//! }
//!
//! impl Filter for AddHeader {
//!     type Config = Config;
//!     fn new(config: Rc<Config>, _context_id: u32) -> Self {
//!         AddHeader { config }
//!     }
//! }
//!
//! impl Context for AddHeader {}
//!
//! impl HttpContext for AddHeader {
//!     fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
//!         self.add_http_request_header(&self.config.header, "1");
//!         Action::Continue
//!     }
//! }
//!
//! weft_sdk::filter!(AddHeader);
//! # fn main() {}
//! ```

use std::marker::PhantomData;
use std::rc::Rc;

pub use proxy_wasm;
pub use proxy_wasm::traits::{Context, HttpContext, RootContext};
pub use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

pub mod rng;
pub mod weft;

/// A filter's configuration: deserialized from the plugin configuration (JSON; empty means
/// `{}`), then validated.
pub trait FilterConfig: serde::de::DeserializeOwned + 'static {
    /// Checks what types cannot; an `Err` rejects the configuration with that message.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// One request's filter, built from the parsed configuration.
pub trait Filter: HttpContext + 'static {
    /// The configuration type.
    type Config: FilterConfig;

    /// A filter for a new request (`context_id` is the stream context's id).
    fn new(config: Rc<Self::Config>, context_id: u32) -> Self;
}

/// Parses and validates a plugin configuration: empty (or whitespace) bytes mean `{}`.
pub fn parse_config<C: FilterConfig>(bytes: &[u8]) -> Result<C, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("configuration is not UTF-8: {e}"))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    let config: C = serde_json::from_str(text).map_err(|e| format!("invalid configuration: {e}"))?;
    config.validate().map_err(|e| format!("invalid configuration: {e}"))?;
    Ok(config)
}

/// The root context [`filter!`] registers: parses the configuration in `on_configure`
/// (logging the reason and returning `false` when it is bad) and creates a `F` per request.
pub struct Root<F: Filter> {
    config: Option<Rc<F::Config>>,
    _filter: PhantomData<F>,
}

impl<F: Filter> Default for Root<F> {
    fn default() -> Self {
        Self {
            config: None,
            _filter: PhantomData,
        }
    }
}

impl<F: Filter> Context for Root<F> {}

impl<F: Filter> RootContext for Root<F> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match parse_config::<F::Config>(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(message) => {
                // The proxy reports the last error logged during on_configure as the reason.
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(F::new(config, context_id)))
    }
}

/// Registers `$filter` (a [`Filter`]) as the module's filter.
///
/// With a `capabilities` list, the module also declares what the filter uses (see
/// [`capabilities!`]): `weft_sdk::filter!(Router, capabilities: [request_headers, response_headers, properties]);`.
/// Without one, the proxy assumes the filter may use everything.
#[macro_export]
macro_rules! filter {
    ($filter:ty, capabilities: [$($capability:ident),* $(,)?] $(,)?) => {
        $crate::capabilities!($($capability),*);
        $crate::filter!($filter);
    };
    ($filter:ty) => {
        #[doc(hidden)]
        mod __weft_filter_entry {
            #[allow(unused_imports)]
            use super::*;
            $crate::proxy_wasm::main! {{
                $crate::proxy_wasm::set_log_level($crate::LogLevel::Info);
                $crate::proxy_wasm::set_root_context(|_| -> Box<dyn $crate::RootContext> {
                    Box::new($crate::Root::<$filter>::default())
                });
            }}
        }
    };
}

/// Declares what the module's filter uses, in a `weft.capabilities` custom section, so that
/// Weft skips the work for what it does not: a phase not listed is never called (the filter
/// behaves as if it returned `Continue` there), requests keep no copy for retries unless
/// `retry` is listed, and carry no callout handle unless `callouts` is.
///
/// The names: `request_headers`, `request_body`, `response_headers`, `response_body`, `log`
/// (the `on_log` callback; `on_done` and `on_delete` always run), `callouts`
/// (`dispatch_http_call`, `dispatch_grpc_call`), `retry` ([`weft::retry`] and
/// [`weft::retry_after`]), `properties` (reading or setting properties,
/// [`weft::peer_principal`] included). A name not in this list
/// does not compile. List everything the filter relies on: what is left out is off. Other
/// proxy-wasm hosts ignore the section.
///
/// ```
/// weft_sdk::capabilities!(request_headers, log, properties);
/// # fn main() {}
/// ```
///
/// A misspelt name fails the build:
///
/// ```compile_fail
/// weft_sdk::capabilities!(request_headers, retyr);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! capabilities {
    ($($capability:ident),* $(,)?) => {
        $(const _: () = $crate::__private::check_capability(stringify!($capability));)*
        #[doc(hidden)]
        #[used]
        #[cfg_attr(target_arch = "wasm32", unsafe(link_section = "weft.capabilities"))]
        static __WEFT_CAPABILITIES: [u8; $crate::__private::declaration_len(&[$(stringify!($capability)),*])] =
            $crate::__private::declaration(&[$(stringify!($capability)),*]);
    };
}

/// Helpers of [`capabilities!`]; not an API.
#[doc(hidden)]
pub mod __private {
    /// The capabilities Weft knows (the host's list is `proxy-core/src/wasm/capabilities.rs`).
    const KNOWN: [&str; 8] = [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
        "log",
        "callouts",
        "retry",
        "properties",
    ];

    const fn same(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Fails the build for a name Weft does not know.
    pub const fn check_capability(name: &str) {
        let mut i = 0;
        while i < KNOWN.len() {
            if same(KNOWN[i], name) {
                return;
            }
            i += 1;
        }
        panic!(
            "unknown Weft capability (known: request_headers, request_body, response_headers, response_body, log, callouts, retry, properties)"
        );
    }

    /// The length of the section's text: the names, each followed by a space.
    pub const fn declaration_len(names: &[&str]) -> usize {
        let mut len = 0;
        let mut i = 0;
        while i < names.len() {
            len += names[i].len() + 1;
            i += 1;
        }
        len
    }

    /// The section's text.
    pub const fn declaration<const N: usize>(names: &[&str]) -> [u8; N] {
        let mut out = [0u8; N];
        let mut at = 0;
        let mut i = 0;
        while i < names.len() {
            let name = names[i].as_bytes();
            let mut j = 0;
            while j < name.len() {
                out[at] = name[j];
                at += 1;
                j += 1;
            }
            out[at] = b' ';
            at += 1;
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declaration_is_the_names_separated_by_spaces() {
        const NAMES: [&str; 2] = ["request_headers", "log"];
        const TEXT: [u8; __private::declaration_len(&NAMES)] = __private::declaration(&NAMES);
        assert_eq!(&TEXT, b"request_headers log ");
        __private::check_capability("retry");
        assert_eq!(__private::declaration_len(&[]), 0);
    }

    #[derive(serde::Deserialize, Debug, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        limit: u32,
    }

    impl FilterConfig for Config {
        fn validate(&self) -> Result<(), String> {
            if self.limit > 100 {
                Err("limit must be at most 100".into())
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn configs_parse_validate_and_explain() {
        assert_eq!(parse_config::<Config>(b"").expect("empty"), Config { limit: 0 });
        assert_eq!(
            parse_config::<Config>(b"{\"limit\": 5}").expect("valid"),
            Config { limit: 5 }
        );
        let err = parse_config::<Config>(b"{\"limit\": 500}").expect_err("too big");
        assert_eq!(err, "invalid configuration: limit must be at most 100");
        let err = parse_config::<Config>(b"{\"limti\": 5}").expect_err("typo");
        assert!(err.contains("unknown field `limti`"), "{err}");
    }
}
