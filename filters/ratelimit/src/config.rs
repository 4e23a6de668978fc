//! The filter's configuration: JSON (the snapshot's YAML `config`, converted by the proxy),
//! unknown fields refused, checked once per VM by `on_configure`. See `schema.json`.

use serde::Deserialize;
use weft_sdk::FilterConfig;

/// Longest key value, in bytes, that gets a bucket of its own; longer values share the
/// overflow bucket (see [`crate::logic::bucket_key`]).
pub const MAX_KEY_BYTES: usize = 256;

/// Largest accepted `max_tokens` and `tokens_per_fill`.
pub const MAX_TOKENS_LIMIT: u64 = 1_000_000_000;

/// Largest accepted `max_buckets`.
pub const MAX_BUCKETS_LIMIT: u64 = 1_000_000;

/// `max_buckets` when the configuration does not set it.
pub const DEFAULT_MAX_BUCKETS: u64 = 10_000;

/// The filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What a request is limited by: each distinct value has its own bucket.
    pub key: Key,
    /// Bucket capacity: the burst a key may send at once. A new bucket starts full.
    pub max_tokens: u64,
    /// Tokens added per `fill_interval_ms` (spread evenly over the interval; default 1).
    #[serde(default = "default_tokens_per_fill")]
    pub tokens_per_fill: u64,
    /// The refill period, in milliseconds.
    pub fill_interval_ms: u64,
    /// Add `x-ratelimit-limit` and `x-ratelimit-remaining` to allowed responses (default
    /// false; 429 replies always carry them).
    #[serde(default)]
    pub response_headers: bool,
    /// How many buckets (distinct keys) the filter creates at most; requests with a new key
    /// beyond that share the overflow bucket (default 10,000).
    #[serde(default = "default_max_buckets")]
    pub max_buckets: u64,
}

fn default_tokens_per_fill() -> u64 {
    1
}

fn default_max_buckets() -> u64 {
    DEFAULT_MAX_BUCKETS
}

impl FilterConfig for Config {
    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_TOKENS_LIMIT).contains(&self.max_tokens) {
            return Err(format!(
                "max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {}",
                self.max_tokens
            ));
        }
        if !(1..=MAX_TOKENS_LIMIT).contains(&self.tokens_per_fill) {
            return Err(format!(
                "tokens_per_fill must be between 1 and {MAX_TOKENS_LIMIT}, got {}",
                self.tokens_per_fill
            ));
        }
        if self.fill_interval_ms == 0 {
            return Err("fill_interval_ms must be at least 1".into());
        }
        if !(1..=MAX_BUCKETS_LIMIT).contains(&self.max_buckets) {
            return Err(format!(
                "max_buckets must be between 1 and {MAX_BUCKETS_LIMIT}, got {}",
                self.max_buckets
            ));
        }
        Ok(())
    }
}

/// Where a request's key comes from. In JSON an object with exactly one of these fields:
/// `{"header": "x-user"}`, `{"path": true}`, `{"source_ip": true}`,
/// `{"peer_principal": true}`, `{"constant": "all"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawKey")]
pub enum Key {
    /// The value of this request header (lowercase name; pseudo-headers such as
    /// `:authority` allowed). Several values are joined with `,` by the host.
    Header(String),
    /// The request path (`:path`) without its query string.
    Path,
    /// The downstream peer's IP address (`source.address` without the port).
    SourceIp,
    /// The downstream peer's identity (`source.principal`, mutual TLS only).
    PeerPrincipal,
    /// This fixed value: one bucket for every request.
    Constant(String),
}

/// The JSON shape of [`Key`], checked by `TryFrom`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    header: Option<String>,
    path: Option<bool>,
    source_ip: Option<bool>,
    peer_principal: Option<bool>,
    constant: Option<String>,
}

const KEY_CHOICES: &str = "header, path, source_ip, peer_principal, constant";

impl TryFrom<RawKey> for Key {
    type Error = String;

    fn try_from(raw: RawKey) -> Result<Self, String> {
        let set = [
            raw.header.is_some(),
            raw.path.is_some(),
            raw.source_ip.is_some(),
            raw.peer_principal.is_some(),
            raw.constant.is_some(),
        ]
        .into_iter()
        .filter(|&s| s)
        .count();
        if set != 1 {
            return Err(format!("key must set exactly one of {KEY_CHOICES} (got {set})"));
        }
        let flag = |name: &str, value: bool, key: Key| {
            if value {
                Ok(key)
            } else {
                Err(format!("key.{name} must be true"))
            }
        };
        if let Some(name) = raw.header {
            return header_name(&name).map(Key::Header);
        }
        if let Some(value) = raw.path {
            return flag("path", value, Key::Path);
        }
        if let Some(value) = raw.source_ip {
            return flag("source_ip", value, Key::SourceIp);
        }
        if let Some(value) = raw.peer_principal {
            return flag("peer_principal", value, Key::PeerPrincipal);
        }
        match raw.constant {
            Some(value) if value.is_empty() => Err("key.constant must not be empty".into()),
            Some(value) if value.len() > MAX_KEY_BYTES => {
                Err(format!("key.constant must be at most {MAX_KEY_BYTES} bytes"))
            }
            Some(value) => Ok(Key::Constant(value)),
            None => Err(format!("key must set exactly one of {KEY_CHOICES}")),
        }
    }
}

/// Checks a header name (an HTTP token, optionally after one leading `:`) and lowercases it.
fn header_name(name: &str) -> Result<String, String> {
    let token = name.strip_prefix(':').unwrap_or(name);
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("key.header {name:?} is not a valid header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::parse_config;

    fn parse(json: &str) -> Result<Config, String> {
        parse_config::<Config>(json.as_bytes())
    }

    #[test]
    fn a_full_configuration_parses() {
        let config = parse(
            r#"{"key": {"header": "X-User"}, "max_tokens": 10, "tokens_per_fill": 2,
                "fill_interval_ms": 1000, "response_headers": true, "max_buckets": 50}"#,
        )
        .expect("valid");
        assert_eq!(
            config,
            Config {
                key: Key::Header("x-user".into()),
                max_tokens: 10,
                tokens_per_fill: 2,
                fill_interval_ms: 1000,
                response_headers: true,
                max_buckets: 50,
            }
        );
    }

    #[test]
    fn defaults_apply() {
        let config = parse(r#"{"key": {"path": true}, "max_tokens": 5, "fill_interval_ms": 100}"#).expect("valid");
        assert_eq!(config.key, Key::Path);
        assert_eq!(config.tokens_per_fill, 1);
        assert!(!config.response_headers);
        assert_eq!(config.max_buckets, DEFAULT_MAX_BUCKETS);
    }

    #[test]
    fn every_key_kind_parses() {
        let key =
            |json: &str| parse(&format!(r#"{{"key": {json}, "max_tokens": 1, "fill_interval_ms": 1}}"#)).map(|c| c.key);
        assert_eq!(key(r#"{"source_ip": true}"#), Ok(Key::SourceIp));
        assert_eq!(key(r#"{"peer_principal": true}"#), Ok(Key::PeerPrincipal));
        assert_eq!(key(r#"{"constant": "all"}"#), Ok(Key::Constant("all".into())));
        assert_eq!(key(r#"{"header": ":authority"}"#), Ok(Key::Header(":authority".into())));
    }

    #[test]
    fn the_schema_examples_parse() {
        let schema: serde_json::Value = serde_json::from_str(include_str!("../schema.json")).expect("schema is JSON");
        let examples = schema["examples"].as_array().expect("examples");
        assert!(!examples.is_empty());
        for example in examples {
            parse(&example.to_string()).expect("example parses");
        }
    }

    #[test]
    fn bad_configurations_are_explained() {
        let err = |json: &str| parse(json).expect_err(json);
        let base = r#""max_tokens": 1, "fill_interval_ms": 1"#;
        let cases = [
            (
                format!(r#"{{"key": {{"path": true}}, {base}, "burst": 3}}"#),
                "unknown field `burst`",
            ),
            (format!(r#"{{"key": {{"pth": true}}, {base}}}"#), "unknown field `pth`"),
            (format!(r#"{{"key": {{}}, {base}}}"#), "exactly one of"),
            (
                format!(r#"{{"key": {{"path": true, "source_ip": true}}, {base}}}"#),
                "exactly one of header, path, source_ip, peer_principal, constant (got 2)",
            ),
            (
                format!(r#"{{"key": {{"path": false}}, {base}}}"#),
                "key.path must be true",
            ),
            (
                format!(r#"{{"key": {{"header": "x user"}}, {base}}}"#),
                "not a valid header name",
            ),
            (
                format!(r#"{{"key": {{"header": ""}}, {base}}}"#),
                "not a valid header name",
            ),
            (
                format!(r#"{{"key": {{"constant": ""}}, {base}}}"#),
                "key.constant must not be empty",
            ),
            (
                r#"{"key": {"path": true}, "fill_interval_ms": 1}"#.into(),
                "missing field `max_tokens`",
            ),
            (
                r#"{"max_tokens": 1, "fill_interval_ms": 1}"#.into(),
                "missing field `key`",
            ),
            (
                r#"{"key": {"path": true}, "max_tokens": 0, "fill_interval_ms": 1}"#.into(),
                "max_tokens must be between 1 and 1000000000, got 0",
            ),
            (
                r#"{"key": {"path": true}, "max_tokens": -1, "fill_interval_ms": 1}"#.into(),
                "invalid value: integer `-1`",
            ),
            (
                r#"{"key": {"path": true}, "max_tokens": 1, "fill_interval_ms": 0}"#.into(),
                "fill_interval_ms must be at least 1",
            ),
            (
                format!(r#"{{"key": {{"path": true}}, {base}, "tokens_per_fill": 0}}"#),
                "tokens_per_fill must be between 1",
            ),
            (
                format!(r#"{{"key": {{"path": true}}, {base}, "max_buckets": 0}}"#),
                "max_buckets must be between 1",
            ),
            ("".into(), "missing field `key`"),
        ];
        for (json, expected) in cases {
            let message = err(&json);
            assert!(message.starts_with("invalid configuration: "), "{message}");
            assert!(message.contains(expected), "{json}: {message}");
        }
    }
}
