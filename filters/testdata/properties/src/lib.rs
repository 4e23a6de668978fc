//! `test_properties`: reads host properties and reports each as a response header.
//!
//! Header name: `x-prop-<path segments joined by '-'>` (e.g. `request.url_path` →
//! `x-prop-request-url_path`, `plugin_name` → `x-prop-plugin_name`). Value, by the property's
//! type (Envoy's encodings):
//! - string: the bytes as (lossy) UTF-8;
//! - int: 8-byte little-endian `i64`, rendered in decimal;
//! - bool: 1 byte, `0` → `false`, `1` → `true`;
//! - absent (`get_property` → NotFound, or Ok with no data): `(none)`;
//! - an int/bool of the wrong length: `(invalid N bytes)`; a `SerializationFailure` /
//!   `InternalFailure` status: `(error)`.
//!
//! Read in request headers (stored, added to the response headers later): `request.path`,
//! `request.url_path`, `request.host`, `request.scheme`, `request.method`, `request.id`,
//! `request.protocol`, `source.address`, `source.port` (int), `destination.address`,
//! `destination.port` (int), `connection.mtls` (bool), `plugin_name`, `plugin_root_id`,
//! `weft.route_name`, `request.headers` (a map, rendered as its `x-request-id` entry); plus
//! the request header `:authority` → response header `x-authority` (`(none)` if absent).
//!
//! Read in response headers: `response.code` (int), `upstream.address`; and, in one
//! `weft.properties` call, `request.path`, `plugin_name` and `no.such`, reported as
//! `x-batch-request-path`, `x-batch-plugin_name` and `x-batch-no-such` (`(none)` if unset,
//! `(error N)` if the call failed with status N).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// A map in the header-map format, rendered as its `x-request-id` entry.
    Map,
}

/// The value of `key` in a map in the header-map format (count, then key and value lengths,
/// then each key and value followed by a NUL); `None` if absent or malformed.
fn map_entry<'a>(bytes: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let word = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize);
    let count = word(0)?;
    let mut data = 4 + 8 * count;
    for i in 0..count {
        let (k, v) = (word(4 + 8 * i)?, word(8 + 8 * i)?);
        let name = bytes.get(data..data + k)?;
        let value = bytes.get(data + k + 1..data + k + 1 + v)?;
        if name == key.as_bytes() {
            return Some(value);
        }
        data += k + v + 2;
    }
    None
}

/// The `n`th pair of a map in the header-map format; `None` if absent or malformed.
fn nth_pair(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    let word = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize);
    let count = word(0)?;
    let mut data = 4 + 8 * count;
    for i in 0..count {
        let (k, v) = (word(4 + 8 * i)?, word(8 + 8 * i)?);
        if i == n {
            return Some((bytes.get(data..data + k)?, bytes.get(data + k + 1..data + k + 1 + v)?));
        }
        data += k + v + 2;
    }
    None
}

const REQUEST_PROPERTIES: &[(&[&str], Kind)] = &[
    (&["request", "path"], Kind::Str),
    (&["request", "url_path"], Kind::Str),
    (&["request", "host"], Kind::Str),
    (&["request", "scheme"], Kind::Str),
    (&["request", "method"], Kind::Str),
    (&["request", "id"], Kind::Str),
    (&["request", "protocol"], Kind::Str),
    (&["source", "address"], Kind::Str),
    (&["source", "port"], Kind::Int),
    (&["destination", "address"], Kind::Str),
    (&["destination", "port"], Kind::Int),
    (&["connection", "mtls"], Kind::Bool),
    (&["plugin_name"], Kind::Str),
    (&["plugin_root_id"], Kind::Str),
    (&["weft", "route_name"], Kind::Str),
    (&["request", "headers"], Kind::Map),
];

const RESPONSE_PROPERTIES: &[(&[&str], Kind)] = &[
    (&["response", "code"], Kind::Int),
    (&["upstream", "address"], Kind::Str),
];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PropertiesRoot) });
}}

/// Reads one property and renders it as a header `(name, value)`.
fn read(path: &[&str], kind: Kind) -> (String, String) {
    let name = format!("x-prop-{}", path.join("-"));
    let value = match hostcalls::get_property(path.to_vec()) {
        Err(_) => "(error)".to_string(),
        Ok(None) => "(none)".to_string(),
        Ok(Some(bytes)) => match kind {
            Kind::Str => String::from_utf8_lossy(&bytes).into_owned(),
            Kind::Int => match <[u8; 8]>::try_from(bytes.as_slice()) {
                Ok(le) => i64::from_le_bytes(le).to_string(),
                Err(_) => format!("(invalid {} bytes)", bytes.len()),
            },
            Kind::Bool => match bytes.as_slice() {
                [0] => "false".to_string(),
                [1] => "true".to_string(),
                _ => format!("(invalid {} bytes)", bytes.len()),
            },
            Kind::Map => map_entry(&bytes, "x-request-id").map_or_else(
                || "(no x-request-id)".to_string(),
                |v| String::from_utf8_lossy(v).into_owned(),
            ),
        },
    };
    (name, value)
}

struct PropertiesRoot;

impl Context for PropertiesRoot {}

impl RootContext for PropertiesRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let _ = self.get_plugin_configuration();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Properties { headers: Vec::new() }))
    }
}

struct Properties {
    /// Response headers collected in the request phase.
    headers: Vec<(String, String)>,
}

impl Context for Properties {}

impl HttpContext for Properties {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.headers = REQUEST_PROPERTIES
            .iter()
            .map(|&(path, kind)| read(path, kind))
            .collect();
        let authority = self
            .get_http_request_header(":authority")
            .unwrap_or_else(|| "(none)".to_string());
        self.headers.push(("x-authority".to_string(), authority));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.headers {
            self.add_http_response_header(name, value);
        }
        for &(path, kind) in RESPONSE_PROPERTIES {
            let (name, value) = read(path, kind);
            self.add_http_response_header(&name, &value);
        }
        // The same in one batch: a map of NUL-joined paths (empty values).
        let keys: [&[u8]; 3] = [b"request\0path", b"plugin_name", b"no\0such"];
        let mut args = (keys.len() as u32).to_le_bytes().to_vec();
        for key in keys {
            args.extend_from_slice(&(key.len() as u32).to_le_bytes());
            args.extend_from_slice(&0u32.to_le_bytes());
        }
        for key in keys {
            args.extend_from_slice(key);
            args.extend_from_slice(&[0, 0]);
        }
        // The answer has one pair per path, in order: key `1` and the value, or an empty key.
        let batch = hostcalls::call_foreign_function("weft.properties", Some(&args));
        for (i, name) in ["request-path", "plugin_name", "no-such"].into_iter().enumerate() {
            let value = match &batch {
                Err(status) => format!("(error {})", *status as u32),
                Ok(bytes) => bytes
                    .as_deref()
                    .and_then(|b| nth_pair(b, i))
                    .filter(|(key, _)| *key == b"1")
                    .map_or_else(|| "(none)".to_owned(), |(_, v)| String::from_utf8_lossy(v).into_owned()),
            };
            self.add_http_response_header(&format!("x-batch-{name}"), &value);
        }
        Action::Continue
    }
}
