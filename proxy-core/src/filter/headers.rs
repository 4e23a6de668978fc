//! The native `headers` filter: adds and removes request and response headers, and can deny
//! requests by path prefix with a local reply. It proves the seam and serves simple needs.
//!
//! ```yaml
//! filters:
//!   - name: mark
//!     native: headers
//!     config:
//!       request_headers_add: { x-weft-mark: "1" }
//!       request_headers_remove: [x-internal]
//!       response_headers_add: { x-served-by: weft }
//!       response_headers_remove: [server]
//!       deny: { path_prefix: /admin, status: 403, body: "forbidden" }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use serde::Deserialize;

use super::{FilterAction, FilterContext, FilterError, FilterFactory, HttpFilter, LocalReply, header_pair};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request_headers_add: BTreeMap<String, String>,
    #[serde(default)]
    request_headers_remove: Vec<String>,
    #[serde(default)]
    response_headers_add: BTreeMap<String, String>,
    #[serde(default)]
    response_headers_remove: Vec<String>,
    #[serde(default)]
    deny: Option<Deny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deny {
    path_prefix: String,
    #[serde(default = "forbidden")]
    status: u16,
    #[serde(default)]
    body: String,
}

fn forbidden() -> u16 {
    403
}

struct Compiled {
    request_add: HeaderMap,
    request_remove: Vec<HeaderName>,
    response_add: HeaderMap,
    response_remove: Vec<HeaderName>,
    deny: Option<(String, LocalReply)>,
}

pub(super) struct HeadersFactory {
    name: String,
    compiled: Arc<Compiled>,
}

impl HeadersFactory {
    pub(super) fn new(config: &weft_api::FilterConfig) -> Result<Self, FilterError> {
        let invalid = |message: String| FilterError::InvalidConfig {
            name: config.name.clone(),
            message,
        };
        let parsed: Config = if config.config.is_null() {
            Config::default()
        } else {
            serde_yaml::from_value(config.config.clone()).map_err(|e| invalid(e.to_string()))?
        };
        let map = |m: &BTreeMap<String, String>| -> Result<HeaderMap, String> {
            m.iter().map(|(k, v)| header_pair(k, v)).collect()
        };
        let names = |v: &[String]| -> Result<Vec<HeaderName>, String> {
            v.iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("header name {n:?}: {e}")))
                .collect()
        };
        let deny = parsed
            .deny
            .map(|d| {
                let status = StatusCode::from_u16(d.status).map_err(|e| format!("deny.status: {e}"))?;
                Ok::<_, String>((d.path_prefix, LocalReply::new(status, Bytes::from(d.body))))
            })
            .transpose()
            .map_err(invalid)?;
        let compiled = Compiled {
            request_add: map(&parsed.request_headers_add).map_err(invalid)?,
            request_remove: names(&parsed.request_headers_remove).map_err(invalid)?,
            response_add: map(&parsed.response_headers_add).map_err(invalid)?,
            response_remove: names(&parsed.response_headers_remove).map_err(invalid)?,
            deny,
        };
        Ok(Self {
            name: config.name.clone(),
            compiled: Arc::new(compiled),
        })
    }
}

impl FilterFactory for HeadersFactory {
    fn name(&self) -> &str {
        &self.name
    }

    fn create(&self, _context: &FilterContext) -> Box<dyn HttpFilter> {
        Box::new(HeadersFilter(self.compiled.clone()))
    }
}

struct HeadersFilter(Arc<Compiled>);

impl HttpFilter for HeadersFilter {
    fn on_request_headers(&mut self, request: &mut http::request::Parts, _end_of_stream: bool) -> FilterAction {
        if let Some((prefix, reply)) = &self.0.deny
            && request.uri.path().starts_with(prefix.as_str())
        {
            return FilterAction::Reply(reply.clone());
        }
        for name in &self.0.request_remove {
            request.headers.remove(name);
        }
        for (name, value) in &self.0.request_add {
            request.headers.insert(name, value.clone());
        }
        FilterAction::Continue
    }

    fn on_response_headers(&mut self, response: &mut http::response::Parts, _end_of_stream: bool) -> FilterAction {
        for name in &self.0.response_remove {
            response.headers.remove(name);
        }
        for (name, value) in &self.0.response_add {
            response.headers.insert(name, value.clone());
        }
        FilterAction::Continue
    }
}
