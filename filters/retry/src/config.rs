//! The retry filter's configuration: Istio's `HTTPRetry` (`attempts`, `perTryTimeout`,
//! `retryOn`) plus Envoy's retry back-off and retry budget.

use serde::Deserialize;
use weft_sdk::FilterConfig;

/// The most retries the proxy makes for one request (6 attempts); larger `attempts` are capped.
pub const HOST_MAX_RETRIES: u32 = 5;

/// The proxy's default `limits.max_buffered_body_bytes`: larger request bodies are not kept,
/// so they cannot be replayed.
pub const DEFAULT_MAX_REPLAY_BYTES: u64 = 1 << 20;

/// The retry policy of the requests this filter sees.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How many times a request may be retried (Istio's `attempts`: retries, not tries).
    /// `0` disables retries. Capped at [`HOST_MAX_RETRIES`].
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Deadline of each try, in milliseconds (Istio's `perTryTimeout`); unset: only the route's
    /// timeout, which spans all tries.
    #[serde(default)]
    pub per_try_timeout_ms: Option<u64>,
    /// When to retry: a list or a comma-separated string of Envoy `retry_on` conditions, and
    /// HTTP status codes (which add to `retriable_status_codes`, as Istio translates them).
    #[serde(default = "default_retry_on")]
    pub retry_on: RetryOn,
    /// The statuses `retriable-status-codes` retries.
    #[serde(default = "default_status_codes")]
    pub retriable_status_codes: Vec<u16>,
    /// Wait between tries.
    #[serde(default)]
    pub backoff: Backoff,
    /// Limit on concurrent retries; `null` disables it.
    #[serde(default = "default_budget")]
    pub budget: Option<Budget>,
    /// Adds `x-weft-attempt-count: <tries>` to the response (Envoy's
    /// `include_attempt_count_in_response`).
    #[serde(default)]
    pub include_attempt_count_in_response: bool,
    /// Largest request body (`Content-Length`) the proxy keeps for a replay: the listener's
    /// `limits.max_buffered_body_bytes`. Requests with a larger or a streamed (chunked) body are
    /// never retried.
    #[serde(default = "default_max_replay_bytes")]
    pub max_replay_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            attempts: default_attempts(),
            per_try_timeout_ms: None,
            retry_on: default_retry_on(),
            retriable_status_codes: default_status_codes(),
            backoff: Backoff::default(),
            budget: default_budget(),
            include_attempt_count_in_response: false,
            max_replay_bytes: default_max_replay_bytes(),
        }
    }
}

fn default_attempts() -> u32 {
    2
}

fn default_retry_on() -> RetryOn {
    // Istio's default policy.
    RetryOn::parse_list([
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
        "retriable-status-codes",
    ])
    .unwrap_or_default()
}

fn default_status_codes() -> Vec<u16> {
    vec![503]
}

fn default_budget() -> Option<Budget> {
    Some(Budget::default())
}

fn default_max_replay_bytes() -> u64 {
    DEFAULT_MAX_REPLAY_BYTES
}

impl Config {
    /// Retries allowed per request, after the proxy's cap.
    pub fn max_retries(&self) -> u32 {
        self.attempts.min(HOST_MAX_RETRIES)
    }

    /// Whether `status` is one `retriable-status-codes` (or a status code in `retry_on`) retries.
    pub fn retriable_status(&self, status: u16) -> bool {
        self.retry_on.codes.contains(&status)
            || (self.retry_on.has(RetryOn::RETRIABLE_STATUS_CODES) && self.retriable_status_codes.contains(&status))
    }
}

impl FilterConfig for Config {
    fn validate(&self) -> Result<(), String> {
        if self.per_try_timeout_ms == Some(0) {
            return Err("per_try_timeout_ms must be at least 1".into());
        }
        if let Some(code) = self
            .retriable_status_codes
            .iter()
            .chain(&self.retry_on.codes)
            .find(|c| !(100..=599).contains(*c))
        {
            return Err(format!("retriable status code {code} is not an HTTP status (100-599)"));
        }
        self.backoff.validate()?;
        if let Some(budget) = &self.budget {
            budget.validate()?;
        }
        Ok(())
    }
}

/// Envoy's jittered exponential back-off between tries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The shortest wait, in milliseconds (Envoy's default 25). `0` disables the back-off.
    #[serde(default = "default_base_ms")]
    pub base_ms: u64,
    /// The longest wait, in milliseconds; default 10 × `base_ms`.
    #[serde(default)]
    pub max_ms: Option<u64>,
}

fn default_base_ms() -> u64 {
    25
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: default_base_ms(),
            max_ms: None,
        }
    }
}

impl Backoff {
    /// The longest wait, in milliseconds.
    pub fn max(&self) -> u64 {
        self.max_ms.unwrap_or_else(|| self.base_ms.saturating_mul(10))
    }

    fn validate(&self) -> Result<(), String> {
        if self.base_ms > 3_600_000 {
            return Err("backoff.base_ms must be at most 3600000 (one hour)".into());
        }
        if self.max() < self.base_ms {
            return Err(format!(
                "backoff.max_ms ({}) must be at least backoff.base_ms ({})",
                self.max(),
                self.base_ms
            ));
        }
        Ok(())
    }
}

/// Envoy's retry budget: a retry is refused while the retries in flight reach
/// `max(min_concurrency, max_active_share × active requests)`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Share of the active requests that may be retries in flight, 0 to 1 (Envoy's
    /// `budget_percent` / 100; default 0.2).
    #[serde(default = "default_share")]
    pub max_active_share: f64,
    /// Retries in flight always allowed, whatever the load (Envoy's `min_retry_concurrency`;
    /// default 3).
    #[serde(default = "default_min_concurrency")]
    pub min_concurrency: u32,
}

fn default_share() -> f64 {
    0.2
}

fn default_min_concurrency() -> u32 {
    3
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_active_share: default_share(),
            min_concurrency: default_min_concurrency(),
        }
    }
}

impl Budget {
    /// Retries allowed in flight with `active` requests.
    pub fn limit(&self, active: u64) -> u64 {
        // Truncation toward zero is intended (Envoy truncates too); the share is in 0..=1.
        let share = (self.max_active_share * active as f64) as u64;
        share.max(u64::from(self.min_concurrency))
    }

    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_active_share) {
            return Err(format!(
                "budget.max_active_share must be between 0 and 1, not {}",
                self.max_active_share
            ));
        }
        Ok(())
    }
}

/// A set of Envoy `retry_on` conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    bits: u32,
    /// Status codes given as conditions (`"503"`), retried like `retriable-status-codes`.
    pub codes: Vec<u16>,
}

impl RetryOn {
    /// Any 5xx response, and tries that got no response (connect failure, reset, timeout).
    pub const FIVE_XX: u32 = 1;
    /// 502, 503 and 504 responses, and tries that got no response.
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    /// Tries that got no response: connect failure, reset, per-try timeout.
    pub const RESET: u32 = 1 << 2;
    /// Tries whose connection could not be established.
    pub const CONNECT_FAILURE: u32 = 1 << 3;
    /// HTTP/2 `REFUSED_STREAM` resets (the proxy does not report them apart: never matches).
    pub const REFUSED_STREAM: u32 = 1 << 4;
    /// 409 responses.
    pub const RETRIABLE_4XX: u32 = 1 << 5;
    /// Responses with a status in `retriable_status_codes`.
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 6;
    /// Failures before the request was sent: here, connect failures.
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 7;
    /// Responses carrying `x-envoy-ratelimited`.
    pub const ENVOY_RATELIMITED: u32 = 1 << 8;
    /// HTTP/3 failures (the proxy has no HTTP/3 upstreams: never matches).
    pub const HTTP3_POST_CONNECT_FAILURE: u32 = 1 << 9;
    /// gRPC status 1 in the response headers.
    pub const CANCELLED: u32 = 1 << 10;
    /// gRPC status 4 in the response headers.
    pub const DEADLINE_EXCEEDED: u32 = 1 << 11;
    /// gRPC status 13 in the response headers.
    pub const INTERNAL: u32 = 1 << 12;
    /// gRPC status 8 in the response headers.
    pub const RESOURCE_EXHAUSTED: u32 = 1 << 13;
    /// gRPC status 14 in the response headers.
    pub const UNAVAILABLE: u32 = 1 << 14;

    const NAMES: [(&'static str, u32); 15] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("reset", Self::RESET),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("refused-stream", Self::REFUSED_STREAM),
        ("retriable-4xx", Self::RETRIABLE_4XX),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("reset-before-request", Self::RESET_BEFORE_REQUEST),
        ("envoy-ratelimited", Self::ENVOY_RATELIMITED),
        ("http3-post-connect-failure", Self::HTTP3_POST_CONNECT_FAILURE),
        ("cancelled", Self::CANCELLED),
        ("deadline-exceeded", Self::DEADLINE_EXCEEDED),
        ("internal", Self::INTERNAL),
        ("resource-exhausted", Self::RESOURCE_EXHAUSTED),
        ("unavailable", Self::UNAVAILABLE),
    ];

    /// Whether any of `flags` is in the set.
    pub fn has(&self, flags: u32) -> bool {
        self.bits & flags != 0
    }

    /// Parses conditions (blank ones are skipped); an unknown one is an error naming it.
    pub fn parse_list<'a>(conditions: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = RetryOn::default();
        for condition in conditions.into_iter().map(str::trim).filter(|c| !c.is_empty()) {
            if let Some((_, bit)) = Self::NAMES.iter().find(|(name, _)| *name == condition) {
                set.bits |= bit;
            } else if let Ok(code) = condition.parse::<u16>() {
                set.codes.push(code);
            } else {
                let known: Vec<&str> = Self::NAMES.iter().map(|(name, _)| *name).collect();
                return Err(format!(
                    "unknown retry_on condition {condition:?} (known: {}, or an HTTP status code)",
                    known.join(", ")
                ));
            }
        }
        Ok(set)
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            List(Vec<String>),
        }
        let parsed = match Form::deserialize(deserializer)? {
            Form::Text(text) => RetryOn::parse_list(text.split(',')),
            Form::List(list) => RetryOn::parse_list(list.iter().map(String::as_str)),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::parse_config;

    #[test]
    fn defaults_are_istios() {
        let config: Config = parse_config(b"").expect("empty config");
        assert_eq!(config, Config::default());
        assert_eq!(config.attempts, 2);
        assert_eq!(config.per_try_timeout_ms, None);
        for bit in [
            RetryOn::CONNECT_FAILURE,
            RetryOn::REFUSED_STREAM,
            RetryOn::UNAVAILABLE,
            RetryOn::CANCELLED,
            RetryOn::RETRIABLE_STATUS_CODES,
        ] {
            assert!(config.retry_on.has(bit), "{bit}");
        }
        assert!(
            !config
                .retry_on
                .has(RetryOn::FIVE_XX | RetryOn::RESET | RetryOn::GATEWAY_ERROR)
        );
        assert!(config.retriable_status(503));
        assert!(!config.retriable_status(502));
        assert_eq!(config.backoff.base_ms, 25);
        assert_eq!(config.backoff.max(), 250);
        assert_eq!(config.budget, Some(Budget::default()));
        assert_eq!(config.max_replay_bytes, 1 << 20);
    }

    #[test]
    fn the_full_form_parses() {
        let config: Config = parse_config(
            br#"{"attempts": 3, "per_try_timeout_ms": 500, "retry_on": ["5xx", "retriable-4xx"],
                 "retriable_status_codes": [429], "backoff": {"base_ms": 10, "max_ms": 40},
                 "budget": {"max_active_share": 0.5, "min_concurrency": 1},
                 "include_attempt_count_in_response": true, "max_replay_bytes": 4096}"#,
        )
        .expect("valid");
        assert_eq!(config.max_retries(), 3);
        assert_eq!(config.per_try_timeout_ms, Some(500));
        assert!(config.retry_on.has(RetryOn::FIVE_XX));
        assert!(config.retry_on.has(RetryOn::RETRIABLE_4XX));
        assert!(!config.retriable_status(429), "retriable-status-codes is not on");
        assert_eq!(config.backoff.max(), 40);
        assert_eq!(config.budget.as_ref().map(|b| b.limit(10)), Some(5));
        assert!(config.include_attempt_count_in_response);
    }

    #[test]
    fn retry_on_takes_istios_comma_separated_string_with_status_codes() {
        let config: Config = parse_config(br#"{"retry_on": "gateway-error, 429,reset"}"#).expect("valid");
        assert!(config.retry_on.has(RetryOn::GATEWAY_ERROR));
        assert!(config.retry_on.has(RetryOn::RESET));
        assert!(config.retriable_status(429));
        assert!(!config.retriable_status(503), "no retriable-status-codes condition");
    }

    #[test]
    fn attempts_are_capped_by_the_proxy() {
        let config: Config = parse_config(br#"{"attempts": 10}"#).expect("valid");
        assert_eq!(config.max_retries(), HOST_MAX_RETRIES);
        let config: Config = parse_config(br#"{"attempts": 0}"#).expect("valid");
        assert_eq!(config.max_retries(), 0);
    }

    #[test]
    fn a_null_budget_disables_it() {
        let config: Config = parse_config(br#"{"budget": null}"#).expect("valid");
        assert_eq!(config.budget, None);
    }

    #[test]
    fn budget_limits_are_the_larger_of_share_and_minimum() {
        let budget = Budget::default();
        assert_eq!(budget.limit(0), 3);
        assert_eq!(budget.limit(14), 3);
        assert_eq!(budget.limit(100), 20);
        let none = Budget {
            max_active_share: 0.0,
            min_concurrency: 0,
        };
        assert_eq!(none.limit(1000), 0);
    }

    #[test]
    fn bad_configs_are_explained() {
        let err = |json: &str| parse_config::<Config>(json.as_bytes()).expect_err(json);
        assert!(err(r#"{"retry_on": ["5xx", "sometimes"]}"#).contains("unknown retry_on condition \"sometimes\""));
        assert!(err(r#"{"retry_on": 5}"#).contains("invalid configuration"));
        assert!(err(r#"{"retriable_status_codes": [99]}"#).contains("not an HTTP status"));
        assert!(err(r#"{"retry_on": "5xx,700"}"#).contains("700"));
        assert!(err(r#"{"backoff": {"base_ms": 100, "max_ms": 50}}"#).contains("at least backoff.base_ms"));
        assert!(err(r#"{"budget": {"max_active_share": 20}}"#).contains("between 0 and 1"));
        assert!(err(r#"{"per_try_timeout_ms": 0}"#).contains("at least 1"));
        assert!(err(r#"{"atempts": 1}"#).contains("unknown field `atempts`"));
        assert!(err(r#"{"attempts": -1}"#).contains("invalid configuration"));
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
