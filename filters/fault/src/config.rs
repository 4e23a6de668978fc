//! The fault filter's configuration: Istio's `HTTPFaultInjection` (`delay`, `abort`) plus the
//! route's match conditions (`HTTPMatchRequest`), since the controller configures one fault
//! filter per faulty route.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use weft_sdk::FilterConfig;

/// Longest delay the proxy honours (`weft.delay` caps at one hour).
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// Faults to inject into matching requests.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Hold matching requests before forwarding them.
    #[serde(default)]
    pub delay: Option<Delay>,
    /// Answer matching requests with an error instead of forwarding them.
    #[serde(default)]
    pub abort: Option<Abort>,
    /// Which requests are eligible: any of these (an object is a list of one); absent or
    /// empty: every request.
    #[serde(default, rename = "match", deserialize_with = "one_or_many")]
    pub matches: Vec<MatchRequest>,
}

/// Istio's `HTTPFaultInjection.Delay` (fixed delays only).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// How long to hold the request, in milliseconds (Istio's `fixedDelay`).
    pub fixed_delay_ms: u64,
    /// Percentage of matching requests delayed, 0 to 100 (fractions allowed); default 100.
    #[serde(default = "all")]
    pub percentage: f64,
}

/// Istio's `HTTPFaultInjection.Abort` (HTTP statuses only).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// The status of the reply (Istio's `httpStatus`), 200 to 599.
    pub http_status: u16,
    /// Percentage of matching requests aborted, 0 to 100 (fractions allowed); default 100.
    #[serde(default = "all")]
    pub percentage: f64,
}

fn all() -> f64 {
    100.0
}

/// Istio's `HTTPMatchRequest`, the parts a fault filter can check: all given conditions must
/// hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    /// The path, without the query string.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// Compare `uri` case-insensitively.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// The method (`GET`).
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// The authority (`:authority` / `Host`).
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Headers that must be present and match (names are case-insensitive).
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match (absent headers never match).
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
}

/// Istio's `StringMatch`: `{"exact": "jason"}` or `{"prefix": "/api"}`; `{}` matches any value
/// (for a header: its presence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// The whole value.
    #[serde(default)]
    pub exact: Option<String>,
    /// The value's start.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Not supported (the filter has no regex engine): rejected.
    #[serde(default)]
    pub regex: Option<String>,
}

impl StringMatch {
    fn validate(&self, what: &str) -> Result<(), String> {
        if self.regex.is_some() {
            return Err(format!("{what}: regex matches are not supported (use exact or prefix)"));
        }
        if self.exact.is_some() && self.prefix.is_some() {
            return Err(format!("{what}: give one of exact and prefix, not both"));
        }
        Ok(())
    }
}

/// Accepts one match object or a list of them.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<MatchRequest>, D::Error> {
    use serde::de::Error;
    let value = serde_json::Value::deserialize(deserializer)?;
    match value {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Array(_) => serde_json::from_value(value).map_err(D::Error::custom),
        _ => serde_json::from_value(value)
            .map(|one| vec![one])
            .map_err(D::Error::custom),
    }
}

fn validate_percentage(what: &str, percentage: f64) -> Result<(), String> {
    if (0.0..=100.0).contains(&percentage) {
        Ok(())
    } else {
        Err(format!("{what}.percentage must be between 0 and 100, not {percentage}"))
    }
}

impl FilterConfig for Config {
    fn validate(&self) -> Result<(), String> {
        if self.delay.is_none() && self.abort.is_none() {
            return Err("give a delay, an abort or both".into());
        }
        if let Some(delay) = &self.delay {
            if !(1..=MAX_DELAY_MS).contains(&delay.fixed_delay_ms) {
                return Err(format!(
                    "delay.fixed_delay_ms must be between 1 and {MAX_DELAY_MS}, not {}",
                    delay.fixed_delay_ms
                ));
            }
            validate_percentage("delay", delay.percentage)?;
        }
        if let Some(abort) = &self.abort {
            if !(200..=599).contains(&abort.http_status) {
                return Err(format!(
                    "abort.http_status must be between 200 and 599, not {}",
                    abort.http_status
                ));
            }
            validate_percentage("abort", abort.percentage)?;
        }
        for (i, m) in self.matches.iter().enumerate() {
            let fields = [("uri", &m.uri), ("method", &m.method), ("authority", &m.authority)];
            for (name, condition) in fields {
                if let Some(condition) = condition {
                    condition.validate(&format!("match[{i}].{name}"))?;
                }
            }
            for (name, condition) in m.headers.iter().chain(&m.without_headers) {
                if name.is_empty() {
                    return Err(format!("match[{i}]: empty header name"));
                }
                condition.validate(&format!("match[{i}] header {name:?}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::parse_config;

    #[test]
    fn the_istio_shaped_config_parses() {
        let config: Config = parse_config(
            br#"{"delay": {"fixed_delay_ms": 7000, "percentage": 100},
                 "abort": {"http_status": 500, "percentage": 12.5},
                 "match": {"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/"}}}"#,
        )
        .expect("valid");
        assert_eq!(
            config.delay,
            Some(Delay {
                fixed_delay_ms: 7000,
                percentage: 100.0
            })
        );
        assert_eq!(
            config.abort,
            Some(Abort {
                http_status: 500,
                percentage: 12.5
            })
        );
        assert_eq!(config.matches.len(), 1);
        assert_eq!(
            config.matches[0].headers.get("end-user"),
            Some(&StringMatch {
                exact: Some("jason".into()),
                ..StringMatch::default()
            })
        );
    }

    #[test]
    fn percentages_default_to_all_and_matches_may_be_a_list() {
        let config: Config = parse_config(
            br#"{"abort": {"http_status": 503}, "match": [{"method": {"exact": "POST"}}, {"uri": {"exact": "/x"}}]}"#,
        )
        .expect("valid");
        assert_eq!(config.abort.map(|a| a.percentage), Some(100.0));
        assert_eq!(config.matches.len(), 2);
        let config: Config = parse_config(br#"{"delay": {"fixed_delay_ms": 5}, "match": null}"#).expect("valid");
        assert!(config.matches.is_empty());
    }

    #[test]
    fn bad_configs_are_explained() {
        let err = |json: &str| parse_config::<Config>(json.as_bytes()).expect_err(json);
        assert!(err("{}").contains("give a delay, an abort or both"));
        assert!(err(r#"{"abort": {"http_status": 99}}"#).contains("between 200 and 599"));
        assert!(err(r#"{"abort": {"http_status": 600}}"#).contains("between 200 and 599"));
        assert!(err(r#"{"abort": {"percentage": 5}}"#).contains("missing field `http_status`"));
        assert!(err(r#"{"abort": {"http_status": 500, "percentage": 101}}"#).contains("between 0 and 100"));
        assert!(err(r#"{"delay": {"fixed_delay_ms": 0}}"#).contains("between 1 and"));
        assert!(err(r#"{"delay": {"fixed_delay_ms": 10, "percentage": -1}}"#).contains("between 0 and 100"));
        assert!(err(r#"{"delay": {"exponential_delay_ms": 10}}"#).contains("unknown field"));
        assert!(err(r#"{"abort": {"grpc_status": "UNAVAILABLE"}}"#).contains("unknown field"));
        assert!(
            err(r#"{"abort": {"http_status": 500}, "match": {"headers": {"a": {"regex": ".*"}}}}"#)
                .contains("regex matches are not supported")
        );
        assert!(
            err(r#"{"abort": {"http_status": 500}, "match": {"uri": {"exact": "/", "prefix": "/"}}}"#)
                .contains("not both")
        );
        assert!(err(r#"{"abort": {"http_status": 500}, "match": {"port": 80}}"#).contains("unknown field `port`"));
        assert!(err(r#"{"abort": {"http_status": 500}, "match": 5}"#).contains("invalid"));
    }

    #[test]
    fn the_schema_examples_are_valid_configurations() {
        let schema: serde_json::Value = serde_json::from_str(include_str!("../schema.json")).expect("schema is JSON");
        let examples = schema["examples"].as_array().expect("examples");
        assert!(!examples.is_empty());
        for example in examples {
            let text = example.to_string();
            if let Err(e) = parse_config::<Config>(text.as_bytes()) {
                panic!("{text}: {e}");
            }
        }
    }
}
