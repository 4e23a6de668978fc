//! Whether a try's outcome is retried, and how long to wait first.

use crate::config::{Config, RetryOn};

/// A try that got no response: the proxy answers it with a local reply carrying
/// `x-weft-reason`, which the filter sees in `on_http_response_headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `upstream_connect_failure` (502): the connection could not be established.
    ConnectFailure,
    /// `upstream_reset` (502): the connection or stream broke before the response head.
    Reset,
    /// `upstream_timeout` (504): the per-try timeout (or the route's timeout) passed.
    Timeout,
    /// `upstream_overflow` (503): the cluster's circuit breaker refused the request.
    Overflow,
}

/// What a try ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response from the upstream.
    Response {
        /// Its status.
        status: u16,
        /// Its `grpc-status` header, if any (trailers-only gRPC responses).
        grpc_status: Option<u32>,
        /// It carries `x-envoy-ratelimited`.
        ratelimited: bool,
    },
    /// No response: the proxy's local reply for this failure.
    Failed(Failure),
    /// Anything else (another local reply, a direct response): never retried.
    Other,
}

impl Outcome {
    /// Classifies a response head: `reason` is its `x-weft-reason` header, `from_upstream`
    /// whether the proxy reports an upstream address for it.
    pub fn classify(
        status: u16,
        reason: Option<&str>,
        grpc_status: Option<&str>,
        ratelimited: bool,
        from_upstream: bool,
    ) -> Outcome {
        let failure = match reason {
            Some("upstream_connect_failure") => Some(Failure::ConnectFailure),
            Some("upstream_reset") => Some(Failure::Reset),
            Some("upstream_timeout") => Some(Failure::Timeout),
            Some("upstream_overflow") => Some(Failure::Overflow),
            _ => None,
        };
        if let Some(failure) = failure {
            return Outcome::Failed(failure);
        }
        if reason.is_some() || !from_upstream {
            return Outcome::Other;
        }
        Outcome::Response {
            status,
            grpc_status: grpc_status.and_then(|s| s.trim().parse().ok()),
            ratelimited,
        }
    }
}

/// Whether `config`'s `retry_on` conditions retry `outcome` (Envoy's semantics).
pub fn retriable(config: &Config, outcome: Outcome) -> bool {
    let on = &config.retry_on;
    let no_response = RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET;
    match outcome {
        Outcome::Failed(Failure::ConnectFailure) => {
            on.has(no_response | RetryOn::CONNECT_FAILURE | RetryOn::RESET_BEFORE_REQUEST)
        }
        Outcome::Failed(Failure::Reset | Failure::Timeout) => on.has(no_response),
        // Envoy never retries a circuit breaker overflow.
        Outcome::Failed(Failure::Overflow) | Outcome::Other => false,
        Outcome::Response {
            status,
            grpc_status,
            ratelimited,
        } => {
            (on.has(RetryOn::FIVE_XX) && (500..=599).contains(&status))
                || (on.has(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
                || (on.has(RetryOn::RETRIABLE_4XX) && status == 409)
                || (on.has(RetryOn::ENVOY_RATELIMITED) && ratelimited)
                || config.retriable_status(status)
                || grpc_status.is_some_and(|code| on.has(grpc_flag(code)))
        }
    }
}

/// The `retry_on` flag of a gRPC status code (0: none).
fn grpc_flag(code: u32) -> u32 {
    match code {
        1 => RetryOn::CANCELLED,
        4 => RetryOn::DEADLINE_EXCEEDED,
        8 => RetryOn::RESOURCE_EXHAUSTED,
        13 => RetryOn::INTERNAL,
        14 => RetryOn::UNAVAILABLE,
        _ => 0,
    }
}

/// Whether the proxy can send the request again: it keeps request bodies of a known length up
/// to `limit` bytes (and requests without a body); upgrades and streamed bodies go through
/// once.
pub fn replayable(end_of_stream: bool, content_length: Option<&str>, upgrade: bool, limit: u64) -> bool {
    if upgrade {
        return false;
    }
    if end_of_stream {
        return true;
    }
    content_length
        .and_then(|l| l.trim().parse::<u64>().ok())
        .is_some_and(|l| l <= limit)
}

/// The wait before retry number `retry` (0 for the first), in milliseconds: jittered
/// exponential between `base` and `min(base × 2^(retry+1), max)`, from a random number.
/// Never below `base` ("25ms+", as Istio documents its interval).
pub fn backoff_ms(base: u64, max: u64, retry: u32, random: u64) -> u64 {
    if base == 0 {
        return 0;
    }
    let ceiling = base
        .checked_shl(retry.saturating_add(1))
        .filter(|c| c >> retry.saturating_add(1) == base)
        .unwrap_or(u64::MAX)
        .min(max);
    if ceiling <= base {
        return base;
    }
    base + random % (ceiling - base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::parse_config;

    fn config(json: &str) -> Config {
        parse_config(json.as_bytes()).expect("valid config")
    }

    fn response(status: u16) -> Outcome {
        Outcome::Response {
            status,
            grpc_status: None,
            ratelimited: false,
        }
    }

    fn grpc(code: u32) -> Outcome {
        Outcome::Response {
            status: 200,
            grpc_status: Some(code),
            ratelimited: false,
        }
    }

    #[test]
    fn local_replies_of_failed_tries_are_recognized() {
        let failed = |reason| Outcome::classify(502, Some(reason), None, false, false);
        assert_eq!(
            failed("upstream_connect_failure"),
            Outcome::Failed(Failure::ConnectFailure)
        );
        assert_eq!(failed("upstream_reset"), Outcome::Failed(Failure::Reset));
        assert_eq!(failed("upstream_timeout"), Outcome::Failed(Failure::Timeout));
        assert_eq!(failed("upstream_overflow"), Outcome::Failed(Failure::Overflow));
        assert_eq!(failed("no_healthy_upstream"), Outcome::Other);
        assert_eq!(failed("filter"), Outcome::Other);
        assert_eq!(
            Outcome::classify(503, None, None, false, false),
            Outcome::Other,
            "not from upstream"
        );
        assert_eq!(
            Outcome::classify(200, None, Some(" 14 "), true, true),
            Outcome::Response {
                status: 200,
                grpc_status: Some(14),
                ratelimited: true
            }
        );
        assert_eq!(Outcome::classify(503, None, Some("x"), false, true), response(503));
    }

    #[test]
    fn istios_default_policy() {
        let c = Config::default();
        assert!(retriable(&c, Outcome::Failed(Failure::ConnectFailure)));
        assert!(retriable(&c, response(503)), "retriable-status-codes [503]");
        assert!(retriable(&c, grpc(14)), "unavailable");
        assert!(retriable(&c, grpc(1)), "cancelled");
        assert!(!retriable(&c, grpc(13)));
        assert!(!retriable(&c, response(500)));
        assert!(!retriable(&c, response(502)));
        assert!(!retriable(&c, Outcome::Failed(Failure::Reset)));
        assert!(!retriable(&c, Outcome::Failed(Failure::Timeout)));
        assert!(!retriable(&c, Outcome::Failed(Failure::Overflow)));
        assert!(!retriable(&c, response(200)));
    }

    #[test]
    fn five_xx_covers_every_5xx_and_tries_without_response() {
        let c = config(r#"{"retry_on": "5xx"}"#);
        for status in [500, 501, 503, 504, 599] {
            assert!(retriable(&c, response(status)), "{status}");
        }
        assert!(!retriable(&c, response(404)));
        assert!(!retriable(&c, response(409)));
        assert!(retriable(&c, Outcome::Failed(Failure::ConnectFailure)));
        assert!(retriable(&c, Outcome::Failed(Failure::Reset)));
        assert!(retriable(&c, Outcome::Failed(Failure::Timeout)));
        assert!(!retriable(&c, Outcome::Failed(Failure::Overflow)), "never");
        assert!(!retriable(&c, Outcome::Other));
    }

    #[test]
    fn gateway_error_is_502_to_504() {
        let c = config(r#"{"retry_on": ["gateway-error"]}"#);
        assert!(!retriable(&c, response(500)));
        assert!(retriable(&c, response(502)));
        assert!(retriable(&c, response(503)));
        assert!(retriable(&c, response(504)));
        assert!(retriable(&c, Outcome::Failed(Failure::Timeout)));
    }

    #[test]
    fn narrow_conditions() {
        let c = config(r#"{"retry_on": ["connect-failure"]}"#);
        assert!(retriable(&c, Outcome::Failed(Failure::ConnectFailure)));
        assert!(!retriable(&c, Outcome::Failed(Failure::Reset)));
        assert!(!retriable(&c, response(503)), "no retriable-status-codes");

        let c = config(r#"{"retry_on": ["reset"]}"#);
        assert!(retriable(&c, Outcome::Failed(Failure::Reset)));
        assert!(retriable(&c, Outcome::Failed(Failure::Timeout)));
        assert!(retriable(&c, Outcome::Failed(Failure::ConnectFailure)));
        assert!(!retriable(&c, response(500)));

        let c = config(r#"{"retry_on": ["reset-before-request"]}"#);
        assert!(retriable(&c, Outcome::Failed(Failure::ConnectFailure)));
        assert!(!retriable(&c, Outcome::Failed(Failure::Reset)));

        let c = config(r#"{"retry_on": ["retriable-4xx"]}"#);
        assert!(retriable(&c, response(409)));
        assert!(!retriable(&c, response(404)));

        let c = config(r#"{"retry_on": ["retriable-status-codes"], "retriable_status_codes": [429, 404]}"#);
        assert!(retriable(&c, response(429)));
        assert!(retriable(&c, response(404)));
        assert!(!retriable(&c, response(503)));

        let c = config(r#"{"retry_on": ["envoy-ratelimited"]}"#);
        let limited = Outcome::Response {
            status: 429,
            grpc_status: None,
            ratelimited: true,
        };
        assert!(retriable(&c, limited));
        assert!(!retriable(&c, response(429)));

        let c = config(r#"{"retry_on": "deadline-exceeded,internal,resource-exhausted"}"#);
        assert!(retriable(&c, grpc(4)));
        assert!(retriable(&c, grpc(13)));
        assert!(retriable(&c, grpc(8)));
        assert!(!retriable(&c, grpc(14)));
        assert!(!retriable(&c, grpc(0)));

        let c = config(r#"{"retry_on": ["refused-stream", "http3-post-connect-failure"]}"#);
        for outcome in [
            Outcome::Failed(Failure::ConnectFailure),
            Outcome::Failed(Failure::Reset),
            response(503),
        ] {
            assert!(!retriable(&c, outcome), "{outcome:?}: not reported by the proxy");
        }
    }

    #[test]
    fn replay_needs_a_kept_body() {
        let limit = 1 << 20;
        assert!(replayable(true, None, false, limit), "no body");
        assert!(replayable(false, Some("7"), false, limit));
        assert!(replayable(false, Some("1048576"), false, limit));
        assert!(!replayable(false, Some("1048577"), false, limit), "too large to keep");
        assert!(!replayable(false, None, false, limit), "chunked");
        assert!(!replayable(false, Some("seven"), false, limit));
        assert!(!replayable(true, None, true, limit), "upgrade");
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_within_bounds() {
        assert_eq!(backoff_ms(0, 0, 3, 12345), 0, "disabled");
        for random in [0, 1, 7, 24, 25, 1000, u64::MAX] {
            let first = backoff_ms(25, 250, 0, random);
            assert!((25..50).contains(&first), "{first}");
            let second = backoff_ms(25, 250, 1, random);
            assert!((25..100).contains(&second), "{second}");
            let late = backoff_ms(25, 250, 10, random);
            assert!((25..250).contains(&late), "{late}");
            let huge = backoff_ms(25, 250, 200, random);
            assert!((25..250).contains(&huge), "{huge}");
            assert_eq!(backoff_ms(100, 100, 2, random), 100, "max = base");
        }
        assert_eq!(backoff_ms(25, 250, 0, 0), 25);
        assert_eq!(backoff_ms(25, 250, 0, 24), 49);
        assert_eq!(
            backoff_ms(u64::MAX / 2, u64::MAX, 5, 3),
            u64::MAX / 2 + 3,
            "no overflow"
        );
    }
}
