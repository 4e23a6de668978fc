//! `add-header`: a Weft filter. It adds a response header naming itself, and answers 403 to
//! requests whose path starts with the configured `deny_prefix`.

use std::rc::Rc;

use weft_sdk::{Action, Context, Filter, FilterConfig, HttpContext};

/// The plugin configuration (JSON).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Value of the `x-add-header` response header. Default: `on`.
    #[serde(default = "default_value")]
    pub value: String,
    /// Requests under this path prefix get 403. Default: none.
    #[serde(default)]
    pub deny_prefix: Option<String>,
}

fn default_value() -> String {
    "on".to_owned()
}

impl FilterConfig for Config {
    fn validate(&self) -> Result<(), String> {
        match &self.deny_prefix {
            Some(prefix) if !prefix.starts_with('/') => Err("deny_prefix must start with '/'".into()),
            _ => Ok(()),
        }
    }
}

/// Decides whether a path is denied (pure logic, unit-tested on the host).
pub fn denied(config: &Config, path: &str) -> bool {
    config
        .deny_prefix
        .as_deref()
        .is_some_and(|prefix| path.starts_with(prefix))
}

/// One request.
pub struct Plugin {
    config: Rc<Config>,
}

impl Filter for Plugin {
    type Config = Config;

    fn new(config: Rc<Config>, _context_id: u32) -> Self {
        Plugin { config }
    }
}

impl Context for Plugin {}

impl HttpContext for Plugin {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if denied(&self.config, &path) {
            self.send_http_response(403, vec![("x-denied-by", "add-header")], Some(b"denied\n"));
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-add-header", Some(&self.config.value));
        Action::Continue
    }
}

// The phases the filter uses: Weft calls no other (and keeps no copy of the request for
// retries, and no callout handle). Leave the list out and every phase is called.
weft_sdk::filter!(Plugin, capabilities: [request_headers, response_headers]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_prefix_are_denied() {
        let config: Config = weft_sdk::parse_config(br#"{"deny_prefix": "/admin"}"#).expect("valid");
        assert!(denied(&config, "/admin/users"));
        assert!(!denied(&config, "/api"));
        assert!(weft_sdk::parse_config::<Config>(br#"{"deny_prefix": "admin"}"#).is_err());
    }
}
