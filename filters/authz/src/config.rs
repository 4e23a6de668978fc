//! The authz filter's configuration: Istio AuthorizationPolicy specs (`action`, `rules` with
//! `from`/`to`/`when`), in snake_case. See `schema.json` and `README.md`.

use serde::Deserialize;
use weft_sdk::FilterConfig;

use crate::matcher::{Cidr, PathPattern, Pattern, Port};

/// The plugin configuration: every policy that applies to the listener's requests.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The policies, evaluated together (DENY first, then ALLOW).
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// One AuthorizationPolicy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Name for logs.
    #[serde(default)]
    pub name: String,
    /// What a match does; default ALLOW.
    #[serde(default)]
    pub action: PolicyAction,
    /// The policy matches a request when any rule does; no rules: it matches nothing (an
    /// ALLOW policy without rules therefore denies everything: "allow-nothing").
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A policy's action.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum PolicyAction {
    /// Requests must match some ALLOW policy, when there is one.
    #[default]
    Allow,
    /// A matching request is denied.
    Deny,
    /// A match is only logged and counted.
    Audit,
}

impl TryFrom<String> for PolicyAction {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "ALLOW" => Ok(PolicyAction::Allow),
            "DENY" => Ok(PolicyAction::Deny),
            "AUDIT" => Ok(PolicyAction::Audit),
            "CUSTOM" => Err("action CUSTOM (external authorization) is not supported".into()),
            other => Err(format!("unknown action {other:?}: expected ALLOW, DENY or AUDIT")),
        }
    }
}

/// A rule matches when every field that is set matches: any of `from`, any of `to`, all of
/// `when`. A rule with nothing set (`{}`) matches every request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Who sends the request.
    #[serde(default)]
    pub from: Vec<From>,
    /// What the request asks for.
    #[serde(default)]
    pub to: Vec<To>,
    /// Further conditions.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// Wrapper of a [`Source`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The source.
    pub source: Source,
}

/// Wrapper of an [`Operation`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// The operation.
    pub operation: Operation,
}

/// Where a request comes from: every field that is set must match (a field matches when
/// any of its values does; a `not_` field when none does).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Peer identities (mTLS), `<trust domain>/ns/<ns>/sa/<account>`.
    #[serde(default)]
    pub principals: Vec<Pattern>,
    /// Negated `principals`.
    #[serde(default)]
    pub not_principals: Vec<Pattern>,
    /// Request (JWT) principals, `<iss>/<sub>`.
    #[serde(default)]
    pub request_principals: Vec<Pattern>,
    /// Negated `request_principals`.
    #[serde(default)]
    pub not_request_principals: Vec<Pattern>,
    /// Peer namespaces (from the mTLS principal).
    #[serde(default)]
    pub namespaces: Vec<Pattern>,
    /// Negated `namespaces`.
    #[serde(default)]
    pub not_namespaces: Vec<Pattern>,
    /// Blocks containing the peer's address.
    #[serde(default)]
    pub ip_blocks: Vec<Cidr>,
    /// Negated `ip_blocks`.
    #[serde(default)]
    pub not_ip_blocks: Vec<Cidr>,
    /// Blocks containing the client's address (the peer's: Weft does not read
    /// `X-Forwarded-For`).
    #[serde(default)]
    pub remote_ip_blocks: Vec<Cidr>,
    /// Negated `remote_ip_blocks`.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<Cidr>,
}

/// What a request asks for: every field that is set must match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// `:authority` values, case-insensitive (a port in the authority is part of it).
    #[serde(default)]
    pub hosts: Vec<Pattern>,
    /// Negated `hosts`.
    #[serde(default)]
    pub not_hosts: Vec<Pattern>,
    /// Destination (listener) ports.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Negated `ports`.
    #[serde(default)]
    pub not_ports: Vec<Port>,
    /// Methods.
    #[serde(default)]
    pub methods: Vec<Pattern>,
    /// Negated `methods`.
    #[serde(default)]
    pub not_methods: Vec<Pattern>,
    /// Paths (normalized, without the query); also `{*}`/`{**}` templates.
    #[serde(default)]
    pub paths: Vec<PathPattern>,
    /// Negated `paths`.
    #[serde(default)]
    pub not_paths: Vec<PathPattern>,
}

/// A `when` condition.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawCondition")]
pub struct Condition {
    /// What is tested.
    pub key: Key,
    /// The values, typed for the key.
    pub values: Values,
    /// The negated values.
    pub not_values: Values,
}

/// A condition as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

/// The attribute a condition tests (Istio's condition keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `request.headers[<name>]`.
    Header(String),
    /// `source.ip`: the peer's address.
    SourceIp,
    /// `remote.ip`: the client's address (the peer's in Weft).
    RemoteIp,
    /// `source.namespace` (mTLS).
    SourceNamespace,
    /// `source.principal` (mTLS).
    SourcePrincipal,
    /// `request.auth.principal`.
    RequestPrincipal,
    /// `request.auth.audiences` (the `aud` claim).
    Audiences,
    /// `request.auth.presenter` (the `azp` claim).
    Presenter,
    /// `request.auth.claims[a][b]...`.
    Claim(Vec<String>),
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `connection.sni`.
    Sni,
}

/// Condition values, typed by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    /// String patterns.
    Strings(Vec<Pattern>),
    /// IP blocks (`source.ip`, `remote.ip`, `destination.ip`).
    Ips(Vec<Cidr>),
    /// Ports (`destination.port`).
    Ports(Vec<Port>),
}

impl Values {
    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        match self {
            Values::Strings(v) => v.is_empty(),
            Values::Ips(v) => v.is_empty(),
            Values::Ports(v) => v.is_empty(),
        }
    }
}

fn bracketed(rest: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = inner.get(..end)?;
        if name.is_empty() {
            return None;
        }
        names.push(name.to_owned());
        rest = inner.get(end + 1..)?;
    }
    (!names.is_empty()).then_some(names)
}

impl TryFrom<&str> for Key {
    type Error = String;

    fn try_from(key: &str) -> Result<Self, String> {
        let invalid = || format!("unsupported condition key {key:?}");
        Ok(match key {
            "source.ip" => Key::SourceIp,
            "remote.ip" => Key::RemoteIp,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" => Key::SourcePrincipal,
            "request.auth.principal" => Key::RequestPrincipal,
            "request.auth.audiences" => Key::Audiences,
            "request.auth.presenter" => Key::Presenter,
            "destination.ip" => Key::DestinationIp,
            "destination.port" => Key::DestinationPort,
            "connection.sni" => Key::Sni,
            _ => {
                if let Some(rest) = key.strip_prefix("request.headers") {
                    match bracketed(rest).as_deref() {
                        Some([name]) => Key::Header(name.to_ascii_lowercase()),
                        _ => return Err(invalid()),
                    }
                } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
                    Key::Claim(bracketed(rest).ok_or_else(invalid)?)
                } else {
                    return Err(invalid());
                }
            }
        })
    }
}

fn typed(key: &Key, values: Vec<String>) -> Result<Values, String> {
    Ok(match key {
        Key::SourceIp | Key::RemoteIp | Key::DestinationIp => {
            Values::Ips(values.iter().map(|v| Cidr::parse(v)).collect::<Result<_, _>>()?)
        }
        Key::DestinationPort => Values::Ports(
            values
                .into_iter()
                .map(|v| Port::try_from(crate::matcher::PortValue::Text(v)))
                .collect::<Result<_, _>>()?,
        ),
        _ => Values::Strings(values.into_iter().map(Pattern::try_from).collect::<Result<_, _>>()?),
    })
}

impl TryFrom<RawCondition> for Condition {
    type Error = String;

    fn try_from(raw: RawCondition) -> Result<Self, String> {
        let key = Key::try_from(raw.key.as_str())?;
        if raw.values.is_empty() && raw.not_values.is_empty() {
            return Err(format!("condition {:?}: values or not_values must be set", raw.key));
        }
        let values = typed(&key, raw.values).map_err(|e| format!("condition {:?}: {e}", raw.key))?;
        let not_values = typed(&key, raw.not_values).map_err(|e| format!("condition {:?}: {e}", raw.key))?;
        Ok(Condition {
            key,
            values,
            not_values,
        })
    }
}

impl Source {
    fn is_empty(&self) -> bool {
        self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.request_principals.is_empty()
            && self.not_request_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.ip_blocks.is_empty()
            && self.not_ip_blocks.is_empty()
            && self.remote_ip_blocks.is_empty()
            && self.not_remote_ip_blocks.is_empty()
    }
}

impl Operation {
    fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.ports.is_empty()
            && self.not_ports.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
    }
}

impl FilterConfig for Config {
    fn validate(&self) -> Result<(), String> {
        for (p, policy) in self.policies.iter().enumerate() {
            let at = if policy.name.is_empty() {
                format!("policies[{p}]")
            } else {
                format!("policy {:?}", policy.name)
            };
            for (r, rule) in policy.rules.iter().enumerate() {
                if rule.from.iter().any(|f| f.source.is_empty()) {
                    return Err(format!("{at}: rules[{r}]: a from.source must set at least one field"));
                }
                if rule.to.iter().any(|t| t.operation.is_empty()) {
                    return Err(format!("{at}: rules[{r}]: a to.operation must set at least one field"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        weft_sdk::parse_config::<Config>(json.as_bytes())
    }

    #[test]
    fn policies_parse_with_istio_defaults() {
        let config = parse(
            r#"{"policies": [
                {"name": "p", "rules": [{"from": [{"source": {"ip_blocks": ["10.0.0.0/8"]}}],
                  "to": [{"operation": {"paths": ["/api/{*}"], "ports": ["8080", 9090]}}],
                  "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]},
                           {"key": "destination.port", "not_values": ["22"]},
                           {"key": "request.headers[X-Env]", "values": ["prod*"]}]}]},
                {"action": "DENY"},
                {"action": "AUDIT", "rules": [{}]}
            ]}"#,
        )
        .expect("valid");
        assert_eq!(config.policies[0].action, PolicyAction::Allow);
        assert_eq!(config.policies[1].action, PolicyAction::Deny);
        assert!(config.policies[1].rules.is_empty());
        let when = &config.policies[0].rules[0].when;
        assert_eq!(when[0].key, Key::Claim(vec!["groups".into()]));
        assert_eq!(when[1].not_values, Values::Ports(vec![Port(22)]));
        assert_eq!(when[2].key, Key::Header("x-env".into()));
        assert!(parse("").expect("empty").policies.is_empty());
    }

    #[test]
    fn condition_keys_are_parsed() {
        let key = |k: &str| Key::try_from(k);
        assert_eq!(
            key("request.auth.claims[address][country]"),
            Ok(Key::Claim(vec!["address".into(), "country".into()]))
        );
        assert_eq!(key("source.namespace"), Ok(Key::SourceNamespace));
        for bad in [
            "request.headers",
            "request.headers[]",
            "request.headers[a][b]",
            "request.auth.claims",
            "request.auth.claims[a",
            "request.auth.claimsx",
            "source.port",
            "experimental.envoy.filters.network.mysql_proxy[db.table]",
        ] {
            assert!(key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_policies_are_explained() {
        let cases = [
            (r#"{"policies": [{"action": "CUSTOM"}]}"#, "CUSTOM"),
            (r#"{"policies": [{"action": "allow"}]}"#, "unknown action"),
            (
                r#"{"policies": [{"rules": [{"from": [{"source": {}}]}]}]}"#,
                "from.source",
            ),
            (
                r#"{"policies": [{"rules": [{"to": [{"operation": {}}]}]}]}"#,
                "to.operation",
            ),
            (
                r#"{"policies": [{"rules": [{"when": [{"key": "source.ip"}]}]}]}"#,
                "values or not_values",
            ),
            (
                r#"{"policies": [{"rules": [{"when": [{"key": "source.ip", "values": ["x"]}]}]}]}"#,
                "IP block",
            ),
            (
                r#"{"policies": [{"rules": [{"when": [{"key": "destination.port", "values": ["x"]}]}]}]}"#,
                "port",
            ),
            (
                r#"{"policies": [{"rules": [{"when": [{"key": "nope", "values": ["x"]}]}]}]}"#,
                "unsupported",
            ),
            (
                r#"{"policies": [{"rules": [{"from": [{"source": {"ip_blocks": ["10.0.0.0/40"]}}]}]}]}"#,
                "IP block",
            ),
            (
                r#"{"policies": [{"rules": [{"to": [{"operation": {"paths": [""]}}]}]}]}"#,
                "empty value",
            ),
            (
                r#"{"policies": [{"rules": [{"to": [{"operation": {"notPaths": ["/a"]}}]}]}]}"#,
                "unknown field",
            ),
            (
                r#"{"policies": [{"name": "x", "rules": [{"from": [{"source": {}}]}]}]}"#,
                "policy \"x\"",
            ),
        ];
        for (json, want) in cases {
            let err = parse(json).expect_err(json);
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
