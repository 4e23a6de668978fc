//! Matching a request against routes: Istio's `HTTPMatchRequest` and `StringMatch`
//! semantics, on a plain view of the request (no host calls, so it is tested on the host).

use std::collections::{BTreeMap, HashMap};

use crate::config::{MatchRequest, Route, StringMatch};
use crate::hosts::port_of;

/// What routing looks at in a request.
#[derive(Debug, Default)]
pub struct RequestView {
    /// `:method`.
    pub method: String,
    /// `:path`, query string included.
    pub path: String,
    /// `:authority`.
    pub authority: String,
    /// `:scheme`.
    pub scheme: String,
    /// Headers (pseudo-headers included) by lowercase name; several values joined by `,`.
    pub headers: HashMap<String, String>,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
}

impl RequestView {
    /// A view of a request from its header pairs (pseudo-headers included).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut headers: HashMap<String, String> = HashMap::new();
        for (name, value) in pairs {
            headers
                .entry(name.to_ascii_lowercase())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_owned());
        }
        let get = |name: &str| headers.get(name).cloned().unwrap_or_default();
        let path = get(":path");
        let query = path.split_once('?').map(|(_, q)| parse_query(q)).unwrap_or_default();
        Self {
            method: get(":method"),
            authority: get(":authority"),
            scheme: get(":scheme"),
            path,
            headers,
            query,
        }
    }

    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path.as_str(), |(p, _)| p)
    }

    /// The query string with its `?`, or empty.
    pub fn query_string(&self) -> &str {
        self.path.find('?').map_or("", |i| &self.path[i..])
    }

    /// The port addressed: the authority's, else the scheme's default.
    pub fn port(&self) -> u16 {
        port_of(&self.authority).unwrap_or(if self.scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        })
    }
}

/// Splits a query string into percent-decoded `(name, value)` pairs; `?key` gives
/// `("key", "")`. `+` is kept as is.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes (invalid ones are kept as is; invalid UTF-8 is replaced).
pub fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The local workload, for `source_labels` and `source_namespace`.
pub trait Workload {
    /// Its labels.
    fn labels(&self) -> &BTreeMap<String, String>;
    /// Its namespace, if known.
    fn namespace(&self) -> Option<&str>;
}

impl StringMatch {
    /// Whether `value` (absent: `None`) satisfies this condition.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Regex(pattern) => pattern.is_match(value),
            StringMatch::Present => true,
        }
    }
}

/// Header names that Istio ignores in `headers` (they have fields of their own).
const IGNORED_HEADER_KEYS: [&str; 4] = ["uri", "scheme", "method", "authority"];

impl MatchRequest {
    /// Whether every condition of this block holds.
    pub fn matches(&self, request: &RequestView, workload: &dyn Workload) -> bool {
        if let Some(uri) = &self.uri
            && !uri_matches(uri, request.path_only(), self.ignore_uri_case)
        {
            return false;
        }
        let pseudo = [
            (&self.scheme, &request.scheme),
            (&self.method, &request.method),
            (&self.authority, &request.authority),
        ];
        if pseudo
            .iter()
            .any(|(m, v)| m.as_ref().is_some_and(|m| !m.matches(Some(v))))
        {
            return false;
        }
        if let Some(port) = self.port
            && port != request.port()
        {
            return false;
        }
        for (name, condition) in &self.headers {
            let name = name.to_ascii_lowercase();
            if IGNORED_HEADER_KEYS.contains(&name.as_str()) {
                continue;
            }
            if !condition.matches(request.headers.get(&name).map(String::as_str)) {
                return false;
            }
        }
        for (name, condition) in &self.without_headers {
            let name = name.to_ascii_lowercase();
            if IGNORED_HEADER_KEYS.contains(&name.as_str()) {
                continue;
            }
            if !without_header_matches(condition, request.headers.get(&name).map(String::as_str)) {
                return false;
            }
        }
        for (name, condition) in &self.query_params {
            let value = request.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            if !condition.matches(value) {
                return false;
            }
        }
        if !self.source_labels.is_empty() {
            let labels = workload.labels();
            if !self.source_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                return false;
            }
        }
        if let Some(namespace) = &self.source_namespace
            && workload.namespace() != Some(namespace.as_str())
        {
            return false;
        }
        true
    }
}

/// `withoutHeaders`, as Istio configures Envoy (an inverted header matcher): `{}` holds when
/// the header is absent; a value condition holds when the header is present with a value that
/// does not satisfy it (an absent header does **not** satisfy it).
fn without_header_matches(condition: &StringMatch, value: Option<&str>) -> bool {
    match (condition, value) {
        (StringMatch::Present, value) => value.is_none(),
        (_, None) => false,
        (condition, value) => !condition.matches(value),
    }
}

/// `uri`: `ignore_uri_case` applies to `exact` and `prefix` (ASCII case folding), not to
/// `regex`.
fn uri_matches(condition: &StringMatch, path: &str, ignore_case: bool) -> bool {
    match condition {
        StringMatch::Exact(exact) if ignore_case => path.eq_ignore_ascii_case(exact),
        StringMatch::Prefix(prefix) if ignore_case => {
            path.len() >= prefix.len() && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
        condition => condition.matches(Some(path)),
    }
}

/// A route that matched, and through which block.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    /// The route's index in its virtual host.
    pub index: usize,
    /// The route.
    pub route: &'a Route,
    /// The block that held; `None` when the route has no `match` (it takes everything).
    pub block: Option<&'a MatchRequest>,
}

/// The first route of `routes` that matches `request`.
pub fn first_match<'a>(routes: &'a [Route], request: &RequestView, workload: &dyn Workload) -> Option<Matched<'a>> {
    routes.iter().enumerate().find_map(|(index, route)| {
        if route.matches.is_empty() {
            return Some(Matched {
                index,
                route,
                block: None,
            });
        }
        route
            .matches
            .iter()
            .find(|block| block.matches(request, workload))
            .map(|block| Matched {
                index,
                route,
                block: Some(block),
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    struct Local {
        labels: BTreeMap<String, String>,
        namespace: Option<String>,
    }

    impl Workload for Local {
        fn labels(&self) -> &BTreeMap<String, String> {
            &self.labels
        }
        fn namespace(&self) -> Option<&str> {
            self.namespace.as_deref()
        }
    }

    fn productpage() -> Local {
        Local {
            labels: BTreeMap::from([("app".into(), "productpage".into()), ("version".into(), "v1".into())]),
            namespace: Some("default".into()),
        }
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestView {
        let mut pairs = vec![
            (":method", method),
            (":path", path),
            (":authority", "reviews:9080"),
            (":scheme", "http"),
        ];
        pairs.extend_from_slice(headers);
        RequestView::from_pairs(pairs)
    }

    /// The name of the route `request` takes in `routes_json`, or `None`.
    fn route_for(routes_json: &str, request: &RequestView, workload: &dyn Workload) -> Option<String> {
        let json = format!(r#"{{"virtual_hosts": [{{"hosts": ["*"], "routes": {routes_json}}}]}}"#);
        let config: Config = weft_sdk::parse_config(json.as_bytes()).expect("valid config");
        first_match(&config.virtual_hosts[0].routes, request, workload).map(|m| m.route.name.clone())
    }

    fn routes(matches: &[&str]) -> String {
        let routes: Vec<String> = matches
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(r#"{{"name": "r{i}", "match": [{m}], "route": [{{"destination": {{"cluster": "c"}}}}]}}"#)
            })
            .collect();
        format!("[{}]", routes.join(","))
    }

    #[test]
    fn the_first_matching_route_wins_and_blocks_or() {
        let table = routes(&[
            r#"{"headers": {"end-user": {"exact": "jason"}}}"#,
            r#"{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/b"}}"#,
            r#"{}"#,
        ]);
        let w = productpage();
        let r = |path: &str, headers: &[(&str, &str)]| route_for(&table, &request("GET", path, headers), &w);
        assert_eq!(r("/a", &[("end-user", "jason")]).as_deref(), Some("r0"));
        assert_eq!(
            r("/a", &[("End-User", "jason")]).as_deref(),
            Some("r0"),
            "names are case-insensitive"
        );
        assert_eq!(
            r("/a", &[("end-user", "Jason")]).as_deref(),
            Some("r1"),
            "values are not"
        );
        assert_eq!(r("/b/x", &[]).as_deref(), Some("r1"));
        assert_eq!(r("/c", &[]).as_deref(), Some("r2"));
        let table = routes(&[r#"{"uri": {"prefix": "/a"}}"#]);
        assert_eq!(route_for(&table, &request("GET", "/c", &[]), &w), None);
        let everything = r#"[{"name": "all", "route": [{"destination": {"cluster": "c"}}]}]"#;
        assert_eq!(
            route_for(everything, &request("GET", "/c", &[]), &w).as_deref(),
            Some("all")
        );
    }

    #[test]
    fn conditions_within_a_block_and() {
        let table = routes(&[r#"{"uri": {"exact": "/x"}, "method": {"exact": "POST"}, "headers": {"a": {}}}"#]);
        let w = productpage();
        let r = |method: &str, path: &str, headers: &[(&str, &str)]| {
            route_for(&table, &request(method, path, headers), &w).is_some()
        };
        assert!(
            r("POST", "/x?q=1", &[("a", "")]),
            "presence; the query is not part of the uri"
        );
        assert!(!r("GET", "/x", &[("a", "1")]));
        assert!(!r("POST", "/x/", &[("a", "1")]));
        assert!(!r("POST", "/x", &[]));
    }

    #[test]
    fn uri_matches_exact_prefix_regex_and_ignores_case_when_asked() {
        let w = productpage();
        let check = |m: &str, path: &str| route_for(&routes(&[m]), &request("GET", path, &[]), &w).is_some();
        assert!(check(r#"{"uri": {"exact": "/Ratings"}}"#, "/Ratings"));
        assert!(!check(r#"{"uri": {"exact": "/Ratings"}}"#, "/ratings"));
        assert!(check(
            r#"{"uri": {"exact": "/Ratings"}, "ignore_uri_case": true}"#,
            "/rATINGS"
        ));
        assert!(check(
            r#"{"uri": {"prefix": "/Ratings/"}, "ignore_uri_case": true}"#,
            "/ratings/v2"
        ));
        assert!(!check(
            r#"{"uri": {"prefix": "/Ratings/"}, "ignore_uri_case": true}"#,
            "/ratings"
        ));
        assert!(check(r#"{"uri": {"regex": "/api/v[0-9]+/.*"}}"#, "/api/v2/x?y=/z"));
        assert!(
            !check(r#"{"uri": {"regex": "/api/v[0-9]+"}}"#, "/api/v2/x"),
            "the whole path"
        );
        assert!(
            !check(r#"{"uri": {"regex": "/API"}, "ignore_uri_case": true}"#, "/api"),
            "not for regex"
        );
    }

    #[test]
    fn headers_query_params_and_pseudo_headers() {
        let w = productpage();
        let check = |m: &str, path: &str, headers: &[(&str, &str)]| {
            route_for(&routes(&[m]), &request("GET", path, headers), &w).is_some()
        };
        let cookie = r#"{"headers": {"cookie": {"regex": "^(.*?;)?(user=jason)(;.*)?$"}}}"#;
        assert!(check(cookie, "/", &[("cookie", "a=b;user=jason")]));
        assert!(!check(cookie, "/", &[("cookie", "user=jasonx")]));
        assert!(check(r#"{"headers": {"x": {"prefix": "ab"}}}"#, "/", &[("x", "abc")]));
        assert!(!check(r#"{"headers": {"x": {"prefix": "ab"}}}"#, "/", &[]));
        // Several values are joined with a comma, as Envoy does.
        assert!(check(
            r#"{"headers": {"x": {"exact": "1,2"}}}"#,
            "/",
            &[("x", "1"), ("x", "2")]
        ));
        assert!(check(
            r#"{"headers": {":authority": {"exact": "reviews:9080"}}}"#,
            "/",
            &[]
        ));
        assert!(
            check(r#"{"headers": {"method": {"exact": "POST"}}}"#, "/", &[]),
            "ignored key"
        );
        assert!(check(r#"{"authority": {"regex": "reviews(:[0-9]+)?"}}"#, "/", &[]));
        assert!(check(r#"{"scheme": {"exact": "http"}}"#, "/", &[]));
        assert!(check(r#"{"port": 9080}"#, "/", &[]));
        assert!(!check(r#"{"port": 80}"#, "/", &[]));

        let q = r#"{"query_params": {"v": {"exact": "2"}, "debug": {"exact": ""}}}"#;
        assert!(check(q, "/p?v=2&debug", &[]));
        assert!(check(q, "/p?debug=&v=2&v=3", &[]), "the first value counts");
        assert!(!check(q, "/p?v=3&v=2&debug", &[]));
        assert!(!check(q, "/p?v=2", &[]));
        assert!(check(r#"{"query_params": {"n": {"regex": "\\d+"}}}"#, "/?n=123", &[]));
        assert!(!check(r#"{"query_params": {"n": {"regex": "\\d+"}}}"#, "/?n=a123", &[]));
        assert!(check(
            r#"{"query_params": {"q": {"exact": "a b/c"}}}"#,
            "/?q=a%20b%2Fc",
            &[]
        ));
        assert!(check(r#"{"query_params": {"q": {}}}"#, "/?q", &[]));
        assert!(!check(r#"{"query_params": {"q": {}}}"#, "/?qq=1", &[]));
    }

    #[test]
    fn without_headers_inverts_as_istio_does() {
        let w = productpage();
        let check =
            |m: &str, headers: &[(&str, &str)]| route_for(&routes(&[m]), &request("GET", "/", headers), &w).is_some();
        let not_jason = r#"{"without_headers": {"end-user": {"exact": "jason"}}}"#;
        assert!(check(not_jason, &[("end-user", "mike")]));
        assert!(!check(not_jason, &[("end-user", "jason")]));
        assert!(!check(not_jason, &[]), "Envoy's inverted matcher needs the header");
        let absent = r#"{"without_headers": {"end-user": {}}}"#;
        assert!(check(absent, &[]));
        assert!(!check(absent, &[("end-user", "x")]));
    }

    #[test]
    fn source_labels_and_namespace_come_from_the_local_workload() {
        let w = productpage();
        let check = |m: &str, w: &dyn Workload| route_for(&routes(&[m]), &request("GET", "/", &[]), w).is_some();
        assert!(check(r#"{"source_labels": {"app": "productpage"}}"#, &w));
        assert!(check(
            r#"{"source_labels": {"app": "productpage", "version": "v1"}}"#,
            &w
        ));
        assert!(!check(
            r#"{"source_labels": {"app": "productpage", "version": "v2"}}"#,
            &w
        ));
        assert!(!check(r#"{"source_labels": {"team": "x"}}"#, &w));
        assert!(check(r#"{"source_namespace": "default"}"#, &w));
        assert!(!check(r#"{"source_namespace": "prod"}"#, &w));
        let nobody = Local {
            labels: BTreeMap::new(),
            namespace: None,
        };
        assert!(!check(r#"{"source_labels": {"app": "productpage"}}"#, &nobody));
        assert!(!check(r#"{"source_namespace": "default"}"#, &nobody));
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            parse_query("a=1&b&c=%41%zz&&d=x=y"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "A%zz".into()),
                ("d".into(), "x=y".into())
            ]
        );
        assert_eq!(percent_decode("%e2%9c%93+"), "✓+");
        assert_eq!(percent_decode("%"), "%");
        let view = request("GET", "/p?x=1", &[]);
        assert_eq!(view.path_only(), "/p");
        assert_eq!(view.query_string(), "?x=1");
        assert_eq!(view.port(), 9080);
        assert_eq!(
            RequestView::from_pairs([(":authority", "a"), (":scheme", "https")]).port(),
            443
        );
        assert_eq!(RequestView::from_pairs([(":authority", "a")]).port(), 80);
    }
}
