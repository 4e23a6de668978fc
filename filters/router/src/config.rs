//! The filter's configuration: Istio's `VirtualService` HTTP routes, with clusters and
//! subsets named directly (the controller resolves `host`/`subset`/`port` to them).
//!
//! Field names follow Istio's, in snake case. Everything is parsed and checked once per VM:
//! regular expressions are compiled here, so a bad one rejects the configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::hosts::HostIndex;
use crate::pattern::Pattern;

/// Longest accepted `timeout_ms`: one day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// The whole configuration.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Virtual hosts, chosen by the request's authority (see [`crate::hosts`]).
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Built on first use (a VM is single-threaded).
    #[serde(skip)]
    index: std::cell::OnceCell<HostIndex>,
}

impl Config {
    /// The index of the virtual host serving `authority`, if any (see [`crate::hosts`]).
    pub fn virtual_host(&self, authority: &str) -> Option<usize> {
        self.index
            .get_or_init(|| HostIndex::new(&self.virtual_hosts))
            .find(authority)
            .filter(|&i| i < self.virtual_hosts.len())
    }
}

/// The routes of one or more hosts: a compiled `VirtualService` (or several merged).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Name, for logs.
    #[serde(default)]
    pub name: String,
    /// Hosts served: names (`reviews`, `reviews.default.svc.cluster.local`), suffix
    /// wildcards (`*.example.com`, `*-api.example.com`) or `*`. Without ports.
    pub hosts: Vec<String>,
    /// Routes tried in order; the first whose `match` holds wins.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One `HTTPRoute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name, for logs.
    #[serde(default)]
    pub name: String,
    /// Match blocks: any one may hold (OR); within a block every condition must (AND).
    /// Empty: every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<MatchRequest>,
    /// Weighted destinations. Exactly one of `route`, `redirect`, `direct_response` is set.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    /// Answer with a redirect.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Answer with a fixed response.
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    /// Rewrite the path or authority before forwarding (only with `route`).
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Deadline of the whole request in milliseconds, instead of the core route's
    /// (only with `route`). Absent or 0: the core route's.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Header operations for every destination of this route (only with `route`).
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// One `HTTPMatchRequest`: every condition that is set must hold.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    /// Name, for logs.
    #[serde(default)]
    pub name: String,
    /// The path, without the query string.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// The `:scheme` pseudo-header.
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// The `:method` pseudo-header.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// The `:authority` pseudo-header, as sent (port included).
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Request headers, by name (case-insensitive). `{}` checks presence.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Request headers that must *not* match (Istio's `withoutHeaders`).
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters, by name (case-sensitive). `{}` checks presence.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The port addressed: the authority's, else 80 (443 for `https`).
    #[serde(default)]
    pub port: Option<u16>,
    /// Labels the local workload (`node.metadata.LABELS`) must all carry.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// The local workload's namespace (`node.metadata.NAMESPACE`).
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Compare `uri` `exact` and `prefix` ignoring ASCII case.
    #[serde(default)]
    pub ignore_uri_case: bool,
}

/// Istio's `StringMatch`: one of `exact`, `prefix`, `regex` (the whole value must match);
/// none (`{}`) means "present".
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawStringMatch")]
pub enum StringMatch {
    /// Equal to this.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// The whole value matches this regular expression.
    Regex(Pattern),
    /// Any value, as long as there is one.
    Present,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

impl TryFrom<RawStringMatch> for StringMatch {
    type Error = String;

    fn try_from(raw: RawStringMatch) -> Result<Self, String> {
        match (raw.exact, raw.prefix, raw.regex) {
            (Some(exact), None, None) => Ok(StringMatch::Exact(exact)),
            (None, Some(prefix), None) => Ok(StringMatch::Prefix(prefix)),
            (None, None, Some(regex)) => Pattern::whole(&regex).map(StringMatch::Regex),
            (None, None, None) => Ok(StringMatch::Present),
            _ => Err("a string match sets at most one of exact, prefix, regex".to_owned()),
        }
    }
}

/// One weighted destination (`HTTPRouteDestination`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative share of the route's traffic. Ignored when the route has one destination.
    #[serde(default)]
    pub weight: u32,
    /// Header operations for requests sent to this destination (after the route's).
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// A cluster and, optionally, a subset of its endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Snapshot cluster name (e.g. `outbound|9080||reviews.default.svc.cluster.local`).
    pub cluster: String,
    /// Only endpoints carrying all these labels. Absent or empty: all endpoints.
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
}

/// `HTTPRewrite`: applied to the request before it is forwarded.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched prefix (for `prefix` uri matches), else the whole path; the
    /// query string is kept.
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces the `:authority` (`Host`).
    #[serde(default)]
    pub authority: Option<String>,
    /// Replaces every match of a regular expression in the path (the query is kept).
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`: `rewrite` may refer to groups of `match` as `\1`..`\9`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// The expression searched for in the path.
    #[serde(rename = "match")]
    pub pattern: SearchPattern,
    /// Its replacement.
    pub rewrite: String,
}

/// A regular expression searched for anywhere in a value (unanchored).
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct SearchPattern(pub Pattern);

impl TryFrom<String> for SearchPattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Pattern::search(&text).map(SearchPattern)
    }
}

/// `HTTPRedirect`: answer with a redirect instead of forwarding.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// Replaces the whole path; the request's query string is kept unless this has one.
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces the host (and port).
    #[serde(default)]
    pub authority: Option<String>,
    /// Replaces the scheme (`https`).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Replaces the port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Sets the port from the request or the scheme's default.
    #[serde(default)]
    pub derive_port: Option<DerivePort>,
    /// Status code, 3xx. Default 301.
    #[serde(default = "default_redirect_code")]
    pub redirect_code: u16,
}

fn default_redirect_code() -> u16 {
    301
}

/// How a redirect chooses its port.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum DerivePort {
    /// No port in the location: the scheme's default (80, 443).
    #[serde(rename = "FROM_PROTOCOL_DEFAULT")]
    FromProtocolDefault,
    /// The port of the request's authority.
    #[serde(rename = "FROM_REQUEST_PORT")]
    FromRequestPort,
}

/// `HTTPDirectResponse`: answer with a fixed response.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// Status code, 200–599.
    pub status: u16,
    /// Body. Default: empty.
    #[serde(default)]
    pub body: String,
}

/// Istio's `Headers`: operations on request and response headers.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// On the request sent upstream.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// On the response returned downstream.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// Header operations, applied in the order `set`, `add`, `remove`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replace these headers' values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOperations {
    fn validate(&self, at: &str) -> Result<(), String> {
        for (name, value) in self.set.iter().chain(&self.add) {
            check_header_name(name, at)?;
            if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
                return Err(format!(
                    "{at}: the value of header {name:?} contains control characters"
                ));
            }
        }
        for name in &self.remove {
            check_header_name(name, at)?;
        }
        Ok(())
    }
}

impl Headers {
    fn validate(&self, at: &str) -> Result<(), String> {
        if let Some(ops) = &self.request {
            ops.validate(&format!("{at}.request"))?;
        }
        if let Some(ops) = &self.response {
            ops.validate(&format!("{at}.response"))?;
        }
        Ok(())
    }
}

fn check_header_name(name: &str, at: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{at}: {name:?} is not a valid header name"));
    }
    Ok(())
}

/// A path for `:path`: starts with `/`, no whitespace or control characters.
fn check_path(value: &str, at: &str) -> Result<(), String> {
    if !value.starts_with('/') || value.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{at}: {value:?} must start with '/' and contain no whitespace or control characters"
        ));
    }
    Ok(())
}

/// An authority (`host[:port]`): non-empty, no whitespace, `/`, `?`, `#`, `@`.
fn check_authority(value: &str, at: &str) -> Result<(), String> {
    if value.is_empty() || value.bytes().any(|b| b <= b' ' || b == 0x7f || b"/?#@".contains(&b)) {
        return Err(format!("{at}: {value:?} is not a valid authority"));
    }
    Ok(())
}

impl weft_sdk::FilterConfig for Config {
    fn validate(&self) -> Result<(), String> {
        for (v, vhost) in self.virtual_hosts.iter().enumerate() {
            let at = format!("virtual_hosts[{v}]");
            if vhost.hosts.is_empty() {
                return Err(format!("{at}.hosts: at least one host is required"));
            }
            for host in &vhost.hosts {
                crate::hosts::check_host(host).map_err(|e| format!("{at}.hosts: {e}"))?;
            }
            for (r, route) in vhost.routes.iter().enumerate() {
                route.validate(&format!("{at}.routes[{r}]"))?;
            }
        }
        Ok(())
    }
}

impl Route {
    fn validate(&self, at: &str) -> Result<(), String> {
        let actions = usize::from(!self.route.is_empty())
            + usize::from(self.redirect.is_some())
            + usize::from(self.direct_response.is_some());
        if actions != 1 {
            return Err(format!(
                "{at}: exactly one of route, redirect, direct_response must be set"
            ));
        }
        for (m, block) in self.matches.iter().enumerate() {
            for name in block.headers.keys().chain(block.without_headers.keys()) {
                // Pseudo-headers (`:authority`) are allowed as names.
                check_header_name(name.strip_prefix(':').unwrap_or(name), &format!("{at}.match[{m}]"))?;
            }
        }
        if self.route.is_empty() {
            for (set, field) in [
                (self.rewrite.is_some(), "rewrite"),
                (self.timeout_ms.is_some(), "timeout_ms"),
                (self.headers.is_some(), "headers"),
            ] {
                if set {
                    return Err(format!("{at}.{field}: only allowed with route"));
                }
            }
        }
        if let Some(ms) = self.timeout_ms
            && ms > MAX_TIMEOUT_MS
        {
            return Err(format!("{at}.timeout_ms: at most {MAX_TIMEOUT_MS}"));
        }
        if let Some(headers) = &self.headers {
            headers.validate(&format!("{at}.headers"))?;
        }
        let mut total: u64 = 0;
        for (d, dest) in self.route.iter().enumerate() {
            let at = format!("{at}.route[{d}]");
            if dest.destination.cluster.is_empty() {
                return Err(format!("{at}.destination.cluster: must not be empty"));
            }
            if let Some(headers) = &dest.headers {
                headers.validate(&format!("{at}.headers"))?;
            }
            total += u64::from(dest.weight);
        }
        if self.route.len() > 1 && total == 0 {
            return Err(format!(
                "{at}.route: with several destinations, some weight must be above 0"
            ));
        }
        if let Some(rewrite) = &self.rewrite {
            if rewrite.uri.is_some() && rewrite.uri_regex_rewrite.is_some() {
                return Err(format!("{at}.rewrite: uri and uri_regex_rewrite are exclusive"));
            }
            if let Some(uri) = &rewrite.uri {
                check_path(uri, &format!("{at}.rewrite.uri"))?;
            }
            if let Some(authority) = &rewrite.authority {
                check_authority(authority, &format!("{at}.rewrite.authority"))?;
            }
            if let Some(regex) = &rewrite.uri_regex_rewrite
                && regex.rewrite.bytes().any(|b| b <= b' ' || b == 0x7f)
            {
                return Err(format!(
                    "{at}.rewrite.uri_regex_rewrite.rewrite: no whitespace or control characters"
                ));
            }
        }
        if let Some(redirect) = &self.redirect {
            let at = format!("{at}.redirect");
            if !(300..=399).contains(&redirect.redirect_code) {
                return Err(format!(
                    "{at}.redirect_code: {} is not a 3xx code",
                    redirect.redirect_code
                ));
            }
            if let Some(uri) = &redirect.uri {
                check_path(uri, &format!("{at}.uri"))?;
            }
            if let Some(authority) = &redirect.authority {
                check_authority(authority, &format!("{at}.authority"))?;
            }
            if let Some(scheme) = &redirect.scheme {
                let mut bytes = scheme.bytes();
                let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
                if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
                    return Err(format!("{at}.scheme: {scheme:?} is not a valid scheme"));
                }
            }
            if redirect.port.is_some() && redirect.derive_port.is_some() {
                return Err(format!("{at}: port and derive_port are exclusive"));
            }
            if redirect.port == Some(0) {
                return Err(format!("{at}.port: must be above 0"));
            }
        }
        if let Some(direct) = &self.direct_response
            && !(200..=599).contains(&direct.status)
        {
            return Err(format!(
                "{at}.direct_response.status: {} is not in 200-599",
                direct.status
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::parse_config;

    fn err(json: &str) -> String {
        parse_config::<Config>(json.as_bytes()).expect_err(json)
    }

    #[test]
    fn a_full_configuration_parses() {
        let json = r#"{"virtual_hosts": [{"name": "reviews", "hosts": ["reviews", "*.example.com"], "routes": [
            {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/r"},
               "method": {"regex": "GET|HEAD"}, "query_params": {"k": {}}, "source_labels": {"app": "pp"},
               "ignore_uri_case": true, "port": 9080, "without_headers": {"x": {"prefix": "y"}}}],
             "route": [{"destination": {"cluster": "reviews", "subset": {"version": "v2"}}, "weight": 50,
                        "headers": {"request": {"set": {"a": "b"}}}},
                       {"destination": {"cluster": "reviews"}, "weight": 50}],
             "rewrite": {"uri": "/new", "authority": "x"}, "timeout_ms": 3000,
             "headers": {"response": {"add": {"c": "d"}, "remove": ["e"]}}},
            {"redirect": {"uri": "/b", "authority": "a", "scheme": "https", "derive_port": "FROM_REQUEST_PORT"}},
            {"direct_response": {"status": 503, "body": "down"}},
            {"route": [{"destination": {"cluster": "c"}}], "rewrite": {"uri_regex_rewrite": {"match": "^/a/(.*)$", "rewrite": "/\\1"}}}
        ]}]}"#;
        let config = parse_config::<Config>(json.as_bytes()).expect("valid");
        let routes = &config.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 4);
        assert!(matches!(routes[0].matches[0].headers["end-user"], StringMatch::Exact(ref v) if v == "jason"));
        assert!(matches!(routes[0].matches[0].query_params["k"], StringMatch::Present));
        assert_eq!(routes[1].redirect.as_ref().map(|r| r.redirect_code), Some(301));
        assert!(parse_config::<Config>(b"").expect("empty").virtual_hosts.is_empty());
    }

    #[test]
    fn the_schema_examples_parse() {
        let schema: serde_json::Value = serde_json::from_str(include_str!("../schema.json")).expect("schema is JSON");
        let examples = schema["examples"].as_array().expect("examples");
        assert!(!examples.is_empty());
        for example in examples {
            parse_config::<Config>(example.to_string().as_bytes()).expect("example parses");
        }
    }

    #[test]
    fn bad_configurations_are_explained() {
        let e = err(
            r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"cluster": "c"}}]}]}]}"#,
        );
        assert!(e.contains("regex"), "{e}");
        let e = err(
            r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"match": [{"uri": {"exact": "/", "prefix": "/"}}], "route": [{"destination": {"cluster": "c"}}]}]}]}"#,
        );
        assert!(e.contains("at most one"), "{e}");
        let e = err(r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{}]}]}"#);
        assert!(e.contains("exactly one of route"), "{e}");
        let e = err(
            r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"redirect": {}, "direct_response": {"status": 200}}]}]}"#,
        );
        assert!(e.contains("exactly one of route"), "{e}");
        let e = err(r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"redirect": {}, "rewrite": {"uri": "/"}}]}]}"#);
        assert!(e.contains("rewrite: only allowed with route"), "{e}");
        let e = err(r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"redirect": {"redirect_code": 200}}]}]}"#);
        assert!(e.contains("not a 3xx"), "{e}");
        let e = err(r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"direct_response": {"status": 99}}]}]}"#);
        assert!(e.contains("200-599"), "{e}");
        let e = err(
            r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"route": [{"destination": {"cluster": "a"}}, {"destination": {"cluster": "b"}}]}]}]}"#,
        );
        assert!(e.contains("some weight"), "{e}");
        let e = err(r#"{"virtual_hosts": [{"hosts": ["a:80"], "routes": []}]}"#);
        assert!(e.contains("port"), "{e}");
        let e = err(r#"{"virtual_hosts": [{"hosts": ["a.*.com"], "routes": []}]}"#);
        assert!(e.contains("wildcard"), "{e}");
        let e = err(r#"{"virtual_hosts": [{"hosts": [], "routes": []}]}"#);
        assert!(e.contains("at least one host"), "{e}");
        let e = err(
            r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"route": [{"destination": {"cluster": "a"}}], "rewrite": {"uri": "no-slash"}}]}]}"#,
        );
        assert!(e.contains("must start with '/'"), "{e}");
        let e = err(
            r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"route": [{"destination": {"cluster": "a"}}], "headers": {"request": {"set": {"bad name": "v"}}}}]}]}"#,
        );
        assert!(e.contains("not a valid header name"), "{e}");
        let e = err(
            r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"route": [{"destination": {"cluster": "a"}}], "timeout_ms": 100000000000}]}]}"#,
        );
        assert!(e.contains("timeout_ms"), "{e}");
        let e = err(
            r#"{"virtual_hosts": [{"hosts": ["a"], "routes": [{"redirect": {"port": 1, "derive_port": "FROM_REQUEST_PORT"}}]}]}"#,
        );
        assert!(e.contains("exclusive"), "{e}");
        let e = err(r#"{"virtual_hosts": [{"hosts": ["a"], "rotues": []}]}"#);
        assert!(e.contains("unknown field `rotues`"), "{e}");
    }
}
