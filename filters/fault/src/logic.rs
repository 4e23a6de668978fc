//! Which requests get which faults.

use crate::config::{Config, MatchRequest, StringMatch};

/// What the filter reads of a request head.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `:path`, with the query string.
    pub path: String,
    /// `:method`.
    pub method: String,
    /// `:authority`.
    pub authority: String,
    /// Regular headers, names lowercase, one pair per value.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The values of header `name` joined with `,`; `None` when absent.
    fn header(&self, name: &str) -> Option<String> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .peekable();
        values.peek()?;
        Some(values.collect::<Vec<_>>().join(","))
    }
}

/// The faults chosen for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Hold the request this many milliseconds.
    pub delay_ms: Option<u64>,
    /// Answer with this status (after the delay, if any).
    pub abort: Option<u16>,
}

/// Whether the request is eligible for faults: no match conditions, or any of them holds.
pub fn applies(config: &Config, request: &Request) -> bool {
    config.matches.is_empty() || config.matches.iter().any(|m| matches(m, request))
}

fn matches(m: &MatchRequest, request: &Request) -> bool {
    let path = request.path.split(['?', '#']).next().unwrap_or_default();
    let uri = match &m.uri {
        None => true,
        Some(condition) if m.ignore_uri_case => string_matches(
            &StringMatch {
                exact: condition.exact.as_ref().map(|e| e.to_lowercase()),
                prefix: condition.prefix.as_ref().map(|p| p.to_lowercase()),
                regex: None,
            },
            &path.to_lowercase(),
        ),
        Some(condition) => string_matches(condition, path),
    };
    uri && m.method.as_ref().is_none_or(|c| string_matches(c, &request.method))
        && m.authority
            .as_ref()
            .is_none_or(|c| string_matches(c, &request.authority))
        && m.headers
            .iter()
            .all(|(name, c)| request.header(name).is_some_and(|v| string_matches(c, &v)))
        && !m
            .without_headers
            .iter()
            .any(|(name, c)| request.header(name).is_some_and(|v| string_matches(c, &v)))
}

fn string_matches(condition: &StringMatch, value: &str) -> bool {
    match (&condition.exact, &condition.prefix) {
        (Some(exact), _) => value == exact,
        (None, Some(prefix)) => value.starts_with(prefix.as_str()),
        (None, None) => true,
    }
}

/// Whether a fault with `percentage` (0 to 100) hits, given a uniformly random `draw`: in
/// millionths, as Envoy's fractional percentages.
pub fn hits(percentage: f64, draw: u64) -> bool {
    // The percentage is validated to 0..=100, so the product fits.
    let millionths = (percentage * 10_000.0).round() as u64;
    draw % 1_000_000 < millionths
}

/// The faults for an eligible request, from two independent random draws.
pub fn decide(config: &Config, delay_draw: u64, abort_draw: u64) -> Decision {
    Decision {
        delay_ms: config
            .delay
            .as_ref()
            .filter(|d| hits(d.percentage, delay_draw))
            .map(|d| d.fixed_delay_ms),
        abort: config
            .abort
            .as_ref()
            .filter(|a| hits(a.percentage, abort_draw))
            .map(|a| a.http_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::parse_config;

    fn config(json: &str) -> Config {
        parse_config(json.as_bytes()).expect("valid config")
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            path: path.into(),
            method: "GET".into(),
            authority: "ratings:9080".into(),
            headers: headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        }
    }

    #[test]
    fn without_conditions_every_request_is_eligible() {
        let c = config(r#"{"abort": {"http_status": 500}}"#);
        assert!(applies(&c, &request("/", &[])));
    }

    #[test]
    fn header_conditions_select_the_user() {
        let c = config(r#"{"abort": {"http_status": 500}, "match": {"headers": {"End-User": {"exact": "jason"}}}}"#);
        assert!(applies(&c, &request("/ratings/0", &[("end-user", "jason")])));
        assert!(!applies(&c, &request("/ratings/0", &[("end-user", "json")])));
        assert!(!applies(&c, &request("/ratings/0", &[])));
        assert!(
            !applies(&c, &request("/", &[("end-user", "jason"), ("end-user", "other")])),
            "joined values"
        );

        let c = config(r#"{"abort": {"http_status": 500}, "match": {"headers": {"x-canary": {}}}}"#);
        assert!(applies(&c, &request("/", &[("x-canary", "")])), "presence");
        assert!(!applies(&c, &request("/", &[])));

        let c =
            config(r#"{"abort": {"http_status": 500}, "match": {"without_headers": {"x-test": {"prefix": "no"}}}}"#);
        assert!(applies(&c, &request("/", &[])));
        assert!(applies(&c, &request("/", &[("x-test", "yes")])));
        assert!(!applies(&c, &request("/", &[("x-test", "nope")])));
    }

    #[test]
    fn uri_method_and_authority_conditions() {
        let c = config(
            r#"{"abort": {"http_status": 500}, "match": {"uri": {"prefix": "/ratings"}, "method": {"exact": "GET"},
                "authority": {"prefix": "ratings"}}}"#,
        );
        assert!(applies(&c, &request("/ratings/1?x=1", &[])));
        assert!(!applies(&c, &request("/reviews/1", &[])));
        let mut post = request("/ratings/1", &[]);
        post.method = "POST".into();
        assert!(!applies(&c, &post));
        let mut elsewhere = request("/ratings/1", &[]);
        elsewhere.authority = "reviews".into();
        assert!(!applies(&c, &elsewhere));

        let c = config(r#"{"abort": {"http_status": 500}, "match": {"uri": {"exact": "/a"}}}"#);
        assert!(applies(&c, &request("/a?b=c", &[])), "the query is not part of the uri");
        assert!(!applies(&c, &request("/A", &[])));
        assert!(!applies(&c, &request("/ab", &[])));
        let c =
            config(r#"{"abort": {"http_status": 500}, "match": {"uri": {"exact": "/a"}, "ignore_uri_case": true}}"#);
        assert!(applies(&c, &request("/A", &[])));
    }

    #[test]
    fn any_of_several_conditions() {
        let c = config(
            r#"{"abort": {"http_status": 500}, "match": [{"uri": {"prefix": "/a"}}, {"headers": {"x": {"exact": "1"}}}]}"#,
        );
        assert!(applies(&c, &request("/a", &[])));
        assert!(applies(&c, &request("/b", &[("x", "1")])));
        assert!(!applies(&c, &request("/b", &[])));
    }

    #[test]
    fn percentages_are_in_millionths() {
        assert!(!hits(0.0, 0));
        assert!(hits(100.0, 999_999));
        assert!(hits(100.0, u64::MAX));
        assert!(hits(0.0001, 0));
        assert!(!hits(0.0001, 1));
        assert!(hits(50.0, 499_999));
        assert!(!hits(50.0, 500_000));
        assert!(hits(50.0, 1_000_000 + 3), "the draw wraps");
        let hit = (0..1_000_000u64).filter(|d| hits(12.5, *d)).count();
        assert_eq!(hit, 125_000);
    }

    #[test]
    fn delay_and_abort_are_drawn_independently() {
        let c = config(
            r#"{"delay": {"fixed_delay_ms": 300, "percentage": 50}, "abort": {"http_status": 503, "percentage": 50}}"#,
        );
        assert_eq!(
            decide(&c, 0, 0),
            Decision {
                delay_ms: Some(300),
                abort: Some(503)
            }
        );
        assert_eq!(
            decide(&c, 0, 600_000),
            Decision {
                delay_ms: Some(300),
                abort: None
            }
        );
        assert_eq!(
            decide(&c, 600_000, 0),
            Decision {
                delay_ms: None,
                abort: Some(503)
            }
        );
        assert_eq!(decide(&c, 600_000, 600_000), Decision::default());
    }
}
