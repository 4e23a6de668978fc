//! The jwt filter's configuration: Istio's RequestAuthentication `jwtRules`, in snake_case,
//! with the JWKS URI replaced by a cluster and a path (callouts go to clusters). See
//! `schema.json` and `README.md`.

use std::cell::OnceCell;

use serde::Deserialize;
use weft_sdk::FilterConfig;

use crate::extract::{Found, Location};
use crate::jwks::Jwks;
use crate::token::{CLOCK_SKEW_SECONDS, Error, Jwt};

/// Default `jwks_path`.
pub const DEFAULT_JWKS_PATH: &str = "/.well-known/jwks.json";
/// Default `jwks_cache_ms`: 10 minutes (Envoy's remote JWKS default).
pub const DEFAULT_JWKS_CACHE_MS: u64 = 600_000;
/// Default `jwks_timeout_ms`: 5 s (Istio's JWTRule `timeout` default).
pub const DEFAULT_JWKS_TIMEOUT_MS: u64 = 5_000;

/// The plugin configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The accepted issuers and how to verify their tokens.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// The token locations of all rules, each with the rules that use it.
    #[serde(skip)]
    locations: OnceCell<Vec<(Location, Vec<usize>)>>,
}

/// One accepted issuer (Istio's `JWTRule`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Required `iss` of the token.
    pub issuer: String,
    /// Accepted `aud` values; empty: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Inline key set: a JWKS JSON document, as a string (as Istio) or as an object.
    #[serde(default, deserialize_with = "inline_jwks")]
    pub jwks: Option<Jwks>,
    /// Cluster to fetch the key set from (instead of `jwks`).
    #[serde(default)]
    pub jwks_cluster: Option<String>,
    /// Path of the key set on `jwks_cluster`.
    #[serde(default = "default_jwks_path")]
    pub jwks_path: String,
    /// `:authority` of the key set request; default: the cluster name.
    #[serde(default)]
    pub jwks_authority: Option<String>,
    /// How long a fetched key set is used before it is fetched again, in ms.
    #[serde(default = "default_jwks_cache_ms")]
    pub jwks_cache_ms: u64,
    /// Timeout of the key set request, in ms.
    #[serde(default = "default_jwks_timeout_ms")]
    pub jwks_timeout_ms: u64,
    /// Headers the token may come in; with `from_params` both empty: `Authorization: Bearer`
    /// and the `access_token` parameter.
    #[serde(default)]
    pub from_headers: Vec<FromHeader>,
    /// Query parameters the token may come in.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Keep the token in the request sent upstream.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Header receiving the token's payload (base64url, as received).
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
}

/// A header a token may come in (Istio's `JWTHeader`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromHeader {
    /// Header name.
    pub name: String,
    /// Text before the token, e.g. `Bearer `.
    #[serde(default)]
    pub prefix: String,
}

/// A claim copied into a header (Istio's `ClaimToHeader`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header name.
    pub header: String,
    /// Claim name; nested claims with dots (`address.country`).
    pub claim: String,
}

fn default_jwks_path() -> String {
    DEFAULT_JWKS_PATH.to_owned()
}

fn default_jwks_cache_ms() -> u64 {
    DEFAULT_JWKS_CACHE_MS
}

fn default_jwks_timeout_ms() -> u64 {
    DEFAULT_JWKS_TIMEOUT_MS
}

fn inline_jwks<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Jwks>, D::Error> {
    use serde::de::Error as _;
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    let parsed = match value {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(text)) => Jwks::parse(text.as_bytes()),
        Some(value) => Jwks::from_value(&value),
    };
    parsed.map(Some).map_err(|e| D::Error::custom(format!("jwks: {e}")))
}

/// Whether `name` is a valid, lowercase, regular (non-pseudo) header name.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Rule {
    /// Where this rule's tokens may be found.
    pub fn locations(&self) -> Vec<Location> {
        if self.from_headers.is_empty() && self.from_params.is_empty() {
            return vec![
                Location::Header {
                    name: "authorization".into(),
                    prefix: "Bearer ".into(),
                },
                Location::Param("access_token".into()),
            ];
        }
        let headers = self.from_headers.iter().map(|h| Location::Header {
            name: h.name.to_ascii_lowercase(),
            prefix: h.prefix.clone(),
        });
        headers
            .chain(self.from_params.iter().map(|p| Location::Param(p.clone())))
            .collect()
    }

    /// The request headers this rule writes (and so removes from incoming requests first).
    pub fn output_headers(&self) -> impl Iterator<Item = String> + '_ {
        let claims = self
            .output_claim_to_headers
            .iter()
            .map(|c| c.header.to_ascii_lowercase());
        claims.chain(self.output_payload_to_header.iter().map(|h| h.to_ascii_lowercase()))
    }

    /// The shared-data key of this rule's fetched key set, if it fetches one.
    pub fn jwks_cache_key(&self) -> Option<String> {
        let cluster = self.jwks_cluster.as_ref()?;
        let authority = self.jwks_authority.as_deref().unwrap_or(cluster);
        Some(format!("jwks|{cluster}|{authority}|{}", self.jwks_path))
    }

    fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("issuer must not be empty".into());
        }
        match (&self.jwks, &self.jwks_cluster) {
            (Some(_), Some(_)) => return Err("set jwks or jwks_cluster, not both".into()),
            (None, None) => return Err("one of jwks and jwks_cluster is required".into()),
            (None, Some(cluster)) if cluster.is_empty() => return Err("jwks_cluster must not be empty".into()),
            _ => {}
        }
        if !self.jwks_path.starts_with('/') {
            return Err("jwks_path must start with /".into());
        }
        if self.jwks_timeout_ms == 0 || self.jwks_timeout_ms > u64::from(u32::MAX) {
            return Err("jwks_timeout_ms must be in 1..=4294967295".into());
        }
        for header in &self.from_headers {
            if !valid_header_name(&header.name.to_ascii_lowercase()) {
                return Err(format!("from_headers: invalid header name {:?}", header.name));
            }
        }
        if self.from_params.iter().any(String::is_empty) {
            return Err("from_params: empty parameter name".into());
        }
        for claim in &self.output_claim_to_headers {
            if !valid_header_name(&claim.header.to_ascii_lowercase()) {
                return Err(format!(
                    "output_claim_to_headers: invalid header name {:?}",
                    claim.header
                ));
            }
            if claim.claim.is_empty() {
                return Err("output_claim_to_headers: empty claim".into());
            }
        }
        if let Some(header) = &self.output_payload_to_header
            && !valid_header_name(&header.to_ascii_lowercase())
        {
            return Err(format!("output_payload_to_header: invalid header name {header:?}"));
        }
        Ok(())
    }
}

impl FilterConfig for Config {
    fn validate(&self) -> Result<(), String> {
        for (index, rule) in self.rules.iter().enumerate() {
            rule.validate().map_err(|e| format!("rules[{index}]: {e}"))?;
        }
        Ok(())
    }
}

/// A token that passed every check but the signature: which rule it falls under.
#[derive(Debug)]
pub struct Candidate {
    /// Index of the rule in `rules`.
    pub rule: usize,
    /// The parsed token.
    pub jwt: Jwt,
}

impl Config {
    /// Every distinct token location, with the indexes of the rules that use it.
    pub fn locations(&self) -> &[(Location, Vec<usize>)] {
        self.locations.get_or_init(|| {
            let mut all: Vec<(Location, Vec<usize>)> = Vec::new();
            for (index, rule) in self.rules.iter().enumerate() {
                for location in rule.locations() {
                    match all.iter_mut().find(|(l, _)| *l == location) {
                        Some((_, rules)) => rules.push(index),
                        None => all.push((location, vec![index])),
                    }
                }
            }
            all
        })
    }

    /// Just the locations, in the order [`crate::extract::extract`] takes them.
    pub fn location_list(&self) -> Vec<Location> {
        self.locations().iter().map(|(l, _)| l.clone()).collect()
    }

    /// Every header a rule writes, lowercase, without duplicates.
    pub fn output_headers(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for header in self.rules.iter().flat_map(Rule::output_headers) {
            if !all.contains(&header) {
                all.push(header);
            }
        }
        all
    }

    /// Parses a found token and checks everything but its signature, in Envoy's order:
    /// format, issuer (a rule with that issuer must use the location the token came from),
    /// `nbf`/`exp` (`now` in seconds, 60 s skew), audiences.
    pub fn check(&self, found: &Found, now: u64) -> Result<Candidate, Error> {
        let jwt = Jwt::parse(&found.token)?;
        let rules = self
            .locations()
            .get(found.location)
            .map(|(_, r)| r.as_slice())
            .unwrap_or(&[]);
        let rule = rules
            .iter()
            .copied()
            .find(|&r| self.rules.get(r).is_some_and(|rule| rule.issuer == jwt.iss))
            .ok_or(Error::UnknownIssuer)?;
        jwt.verify_time(now, CLOCK_SKEW_SECONDS)?;
        let audiences = self.rules.get(rule).map(|r| r.audiences.as_slice()).unwrap_or(&[]);
        if !jwt.audience_allowed(audiences) {
            return Err(Error::AudienceNotAllowed);
        }
        Ok(Candidate { rule, jwt })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::extract;
    use crate::jwks::tests::TEST_JWKS;

    fn parse(json: &str) -> Result<Config, String> {
        weft_sdk::parse_config::<Config>(json.as_bytes())
    }

    fn inline_rule(extra: &str) -> String {
        format!(
            r#"{{"issuer": "https://issuer.weft.test", "jwks": {}{extra}}}"#,
            serde_json::to_string(TEST_JWKS).expect("json string")
        )
    }

    #[test]
    fn configurations_parse_with_defaults() {
        let config = parse(&format!(r#"{{"rules": [{}]}}"#, inline_rule(""))).expect("valid");
        let rule = &config.rules[0];
        assert_eq!(rule.jwks.as_ref().map(|j| j.keys.len()), Some(2));
        assert_eq!(rule.jwks_path, "/.well-known/jwks.json");
        assert_eq!(rule.jwks_cache_ms, 600_000);
        assert!(!rule.forward_original_token);
        assert_eq!(
            config.location_list(),
            vec![
                Location::Header {
                    name: "authorization".into(),
                    prefix: "Bearer ".into()
                },
                Location::Param("access_token".into())
            ]
        );
        assert!(parse("").expect("empty").rules.is_empty());

        // The JWKS may also be given as an object.
        let object = format!(r#"{{"rules": [{{"issuer": "i", "jwks": {TEST_JWKS}}}]}}"#);
        assert!(parse(&object).is_ok());
    }

    #[test]
    fn bad_configurations_are_explained() {
        let cases = [
            (
                r#"{"rules": [{"issuer": "i"}]}"#,
                "one of jwks and jwks_cluster is required",
            ),
            (
                r#"{"rules": [{"issuer": "", "jwks_cluster": "c"}]}"#,
                "issuer must not be empty",
            ),
            (
                r#"{"rules": [{"issuer": "i", "jwks": "{}"}]}"#,
                "Jwks does not have [keys] field",
            ),
            (
                r#"{"rules": [{"issuer": "i", "jwks": "{\"keys\": []}"}]}"#,
                "any valid public key",
            ),
            (
                r#"{"rules": [{"issuer": "i", "jwks_cluster": "c", "jwks_path": "x"}]}"#,
                "jwks_path",
            ),
            (
                r#"{"rules": [{"issuer": "i", "jwks_cluster": "c", "jwks_timeout_ms": 0}]}"#,
                "jwks_timeout_ms",
            ),
            (
                r#"{"rules": [{"issuer": "i", "jwks_cluster": "c", "from_headers": [{"name": "a b"}]}]}"#,
                "invalid header name",
            ),
            (
                r#"{"rules": [{"issuer": "i", "jwks_cluster": "c", "output_claim_to_headers": [{"header": ":path", "claim": "sub"}]}]}"#,
                "invalid header name",
            ),
            (
                r#"{"rules": [{"issuer": "i", "jwks_cluster": "c", "output_claim_to_headers": [{"header": "x", "claim": ""}]}]}"#,
                "empty claim",
            ),
            (
                r#"{"rules": [{"issuer": "i", "jwks_cluster": "c", "jwksUri": "x"}]}"#,
                "unknown field",
            ),
        ];
        for (json, want) in cases {
            let err = parse(json).expect_err(json);
            assert!(err.contains(want), "{json}: {err}");
        }
        let both = format!(r#"{{"rules": [{}]}}"#, inline_rule(r#", "jwks_cluster": "c""#));
        assert!(parse(&both).expect_err("both").contains("not both"));
    }

    #[test]
    fn locations_are_shared_between_rules() {
        let config = parse(
            r#"{"rules": [
                {"issuer": "a", "jwks_cluster": "c", "from_headers": [{"name": "X-Token"}], "from_params": ["t"]},
                {"issuer": "b", "jwks_cluster": "c", "from_headers": [{"name": "x-token"}],
                 "output_claim_to_headers": [{"header": "X-Sub", "claim": "sub"}], "output_payload_to_header": "x-payload"},
                {"issuer": "c", "jwks_cluster": "c", "output_claim_to_headers": [{"header": "x-sub", "claim": "sub"}]}
            ]}"#,
        )
        .expect("valid");
        let locations = config.locations();
        assert_eq!(locations.len(), 4);
        assert_eq!(locations[0].1, vec![0, 1], "x-token is used by rules 0 and 1");
        assert_eq!(
            config.output_headers(),
            vec!["x-sub".to_owned(), "x-payload".to_owned()]
        );
        assert_eq!(
            config.rules[0].jwks_cache_key().as_deref(),
            Some("jwks|c|c|/.well-known/jwks.json")
        );
    }

    #[test]
    fn tokens_are_checked_against_the_rule_of_their_issuer_and_location() {
        let token = include_str!("../../../proxy-core/tests/all/keys/rs256_alice.jwt").trim();
        let config = parse(&format!(
            r#"{{"rules": [{{"issuer": "other", "jwks_cluster": "c"}}, {}]}}"#,
            inline_rule(r#", "audiences": ["weft-api"]"#)
        ))
        .expect("valid");
        let locations = config.location_list();
        let bearer = [("authorization".to_owned(), format!("Bearer {token}"))];
        let found = extract(&locations, &bearer, "/");
        let candidate = config.check(&found[0], 1_800_000_000).expect("checks pass");
        assert_eq!(candidate.rule, 1);
        let jwks = config.rules[1].jwks.as_ref().expect("inline");
        candidate.jwt.verify_signature(jwks).expect("signature");

        // The same token where only rule 0's issuer is configured.
        let only_other = parse(r#"{"rules": [{"issuer": "other", "jwks_cluster": "c"}]}"#).expect("valid");
        let found = extract(&only_other.location_list(), &bearer, "/");
        assert_eq!(
            only_other.check(&found[0], 0).map(|_| ()).expect_err("refused"),
            Error::UnknownIssuer
        );

        // The right issuer, but in a header its rule does not read.
        let elsewhere = parse(&format!(
            r#"{{"rules": [{{"issuer": "other", "jwks_cluster": "c", "from_headers": [{{"name": "x-token"}}]}}, {}]}}"#,
            inline_rule(r#", "from_headers": [{"name": "x-mine"}]"#)
        ))
        .expect("valid");
        let found = extract(
            &elsewhere.location_list(),
            &[("x-token".to_owned(), token.to_owned())],
            "/",
        );
        assert_eq!(
            elsewhere.check(&found[0], 0).map(|_| ()).expect_err("refused"),
            Error::UnknownIssuer
        );

        // Audience and time checks.
        let strict = parse(&format!(
            r#"{{"rules": [{}]}}"#,
            inline_rule(r#", "audiences": ["nobody"]"#)
        ))
        .expect("ok");
        let found = extract(&strict.location_list(), &bearer, "/");
        assert_eq!(
            strict.check(&found[0], 0).map(|_| ()).expect_err("refused"),
            Error::AudienceNotAllowed
        );
        assert_eq!(
            config.check(&found[0], 5_000_000_000).map(|_| ()).expect_err("refused"),
            Error::Expired
        );
    }
}
