//! The filter's configuration (see `schema.json` and the README).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::labels::STANDARD_LABELS;

/// Most `extra_labels` a configuration may add.
pub const MAX_EXTRA_LABELS: usize = 16;

/// Longest `extra_labels` value, in bytes.
pub const MAX_EXTRA_LABEL_VALUE: usize = 256;

/// Which side of the request this proxy is, as Istio's `reporter` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// The client side (an outbound listener or a gateway): the local workload is the source.
    Source,
    /// The server side (an inbound listener): the local workload is the destination.
    Destination,
}

impl Reporter {
    /// The `reporter` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// The plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Required: `source` or `destination`.
    pub reporter: Reporter,
    /// Write one JSON access log line per request (info level, the proxy's log). Default: off.
    #[serde(default)]
    pub access_log: bool,
    /// Skip the `istio_*` metrics (e.g. to use the filter only for access logs). Default: off.
    #[serde(default)]
    pub disable_metrics: bool,
    /// Constant labels added to every series, after the standard ones. Default: none.
    #[serde(default)]
    pub extra_labels: BTreeMap<String, String>,
}

impl weft_sdk::FilterConfig for Config {
    fn validate(&self) -> Result<(), String> {
        if self.extra_labels.len() > MAX_EXTRA_LABELS {
            return Err(format!("extra_labels: at most {MAX_EXTRA_LABELS} labels"));
        }
        for (name, value) in &self.extra_labels {
            if !is_label_name(name) {
                return Err(format!(
                    "extra_labels: {name:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
                ));
            }
            if STANDARD_LABELS.contains(&name.as_str()) || matches!(name.as_str(), "filter" | "le") {
                return Err(format!(
                    "extra_labels: {name:?} is a label the filter or the proxy sets"
                ));
            }
            if value.len() > MAX_EXTRA_LABEL_VALUE {
                return Err(format!(
                    "extra_labels: the value of {name:?} is longer than {MAX_EXTRA_LABEL_VALUE} bytes"
                ));
            }
        }
        Ok(())
    }
}

/// Whether `name` is a valid Prometheus label name that is not reserved (`__` prefix).
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use weft_sdk::parse_config;

    use super::*;

    #[test]
    fn minimal_and_full_configs_parse() {
        let config: Config = parse_config(br#"{"reporter": "destination"}"#).expect("minimal");
        assert_eq!(
            config,
            Config {
                reporter: Reporter::Destination,
                access_log: false,
                disable_metrics: false,
                extra_labels: BTreeMap::new(),
            }
        );
        let config: Config = parse_config(
            br#"{"reporter": "source", "access_log": true, "disable_metrics": true, "extra_labels": {"mesh_id": "m1"}}"#,
        )
        .expect("full");
        assert_eq!(config.reporter, Reporter::Source);
        assert!(config.access_log && config.disable_metrics);
        assert_eq!(config.extra_labels.get("mesh_id").map(String::as_str), Some("m1"));
    }

    #[test]
    fn the_schema_matches_the_code() {
        let schema: serde_json::Value = serde_json::from_str(include_str!("../schema.json")).expect("schema is JSON");
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(schema["required"], serde_json::json!(["reporter"]));
        let properties: Vec<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            properties,
            ["access_log", "disable_metrics", "extra_labels", "reporter"]
        );
        assert_eq!(
            schema["properties"]["reporter"]["enum"],
            serde_json::json!(["source", "destination"])
        );
        let extra = &schema["properties"]["extra_labels"];
        assert_eq!(extra["maxProperties"], MAX_EXTRA_LABELS);
        assert_eq!(extra["additionalProperties"]["maxLength"], MAX_EXTRA_LABEL_VALUE);
        let reserved: Vec<&str> = extra["propertyNames"]["not"]["enum"]
            .as_array()
            .expect("reserved names")
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect();
        let expected: Vec<&str> = ["filter", "le"].into_iter().chain(STANDARD_LABELS).collect();
        assert_eq!(reserved, expected);
        for example in schema["examples"].as_array().expect("examples") {
            let text = example.to_string();
            parse_config::<Config>(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn bad_configs_say_why() {
        let err = parse_config::<Config>(b"").expect_err("reporter is required");
        assert!(err.contains("missing field `reporter`"), "{err}");
        let err = parse_config::<Config>(br#"{"reporter": "sideways"}"#).expect_err("unknown reporter");
        assert!(err.contains("unknown variant `sideways`"), "{err}");
        let err = parse_config::<Config>(br#"{"reporter": "source", "acces_log": true}"#).expect_err("typo");
        assert!(err.contains("unknown field `acces_log`"), "{err}");
        for name in ["1abc", "a-b", "", "__x", "response_code", "filter", "le"] {
            let json = format!(r#"{{"reporter": "source", "extra_labels": {{"{name}": "v"}}}}"#);
            let err = parse_config::<Config>(json.as_bytes()).expect_err(name);
            assert!(err.contains("extra_labels"), "{name}: {err}");
        }
        let long = "x".repeat(MAX_EXTRA_LABEL_VALUE + 1);
        let json = format!(r#"{{"reporter": "source", "extra_labels": {{"a": "{long}"}}}}"#);
        assert!(parse_config::<Config>(json.as_bytes()).is_err());
        let many: Vec<String> = (0..=MAX_EXTRA_LABELS).map(|i| format!(r#""l{i}": "v""#)).collect();
        let json = format!(r#"{{"reporter": "source", "extra_labels": {{{}}}}}"#, many.join(","));
        assert!(parse_config::<Config>(json.as_bytes()).is_err());
    }
}
