//! Compiled route tables: virtual host lookup by authority, then the first matching route.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use crate::cluster::{Cluster, ClusterSet, LbSet};

/// A route table compiled for lookups.
pub(crate) struct RouteTable {
    hosts: HostIndex,
    vhosts: Vec<VirtualHost>,
}

/// Host names to an index: exact names, `*.suffix` and `prefix.*` wildcards, and `*`.
/// Names are kept lowercase; the most specific entry wins (exact, then the longest wildcard).
#[derive(Default)]
pub(crate) struct HostIndex {
    exact: HashMap<String, usize>,
    /// `*.example.com` entries as (suffix `.example.com`, index), longest first.
    suffixes: Vec<(String, usize)>,
    /// `reviews.*` entries as (prefix `reviews.`, index), longest first.
    prefixes: Vec<(String, usize)>,
    /// The `*` entry.
    pub(crate) any: Option<usize>,
}

impl HostIndex {
    /// Builds the index of `(name, index)` entries; the first of equal names wins.
    pub(crate) fn new<'a>(entries: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let mut hosts = Self::default();
        for (name, index) in entries {
            let name = name.to_ascii_lowercase();
            if name == "*" {
                hosts.any.get_or_insert(index);
            } else if let Some(suffix) = name.strip_prefix('*') {
                hosts.suffixes.push((suffix.to_owned(), index));
            } else if let Some(prefix) = name.strip_suffix('*') {
                hosts.prefixes.push((prefix.to_owned(), index));
            } else {
                hosts.exact.entry(name).or_insert(index);
            }
        }
        // Stable sorts: among equally long wildcards the first listed stays first.
        hosts.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        hosts.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        hosts
    }

    /// The entry naming `name` (lowercase) exactly.
    pub(crate) fn exact(&self, name: &str) -> Option<usize> {
        self.exact.get(name).copied()
    }

    /// The longest wildcard entry matching `name` (lowercase): `*.suffix`, then `prefix.*`.
    /// A wildcard stands for at least one character.
    pub(crate) fn wildcard(&self, name: &str) -> Option<usize> {
        let suffix = self
            .suffixes
            .iter()
            .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()));
        let prefix = || {
            self.prefixes
                .iter()
                .find(|(p, _)| name.len() > p.len() && name.starts_with(p.as_str()))
        };
        suffix.or_else(prefix).map(|(_, i)| *i)
    }
}

struct VirtualHost {
    routes: Vec<Arc<Route>>,
}

/// A compiled route.
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    /// Filters of the listener's chain skipped on this route.
    pub(crate) disabled_filters: Vec<String>,
    path: PathMatcher,
    headers: Vec<HeaderMatcher>,
    pub(crate) action: Action,
}

enum PathMatcher {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

struct HeaderMatcher {
    name: HeaderName,
    kind: HeaderMatchKind,
    invert: bool,
}

enum HeaderMatchKind {
    Present,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

/// What a route does.
pub(crate) enum Action {
    Forward(Forward),
    Direct {
        status: StatusCode,
        body: Bytes,
        headers: HeaderMap,
    },
}

/// Forwarding to a cluster, with everything resolved.
pub(crate) struct Forward {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) lb: Arc<LbSet>,
    pub(crate) timeout: Option<Duration>,
    /// (matched prefix, replacement) for prefix rewrites.
    pub(crate) prefix_rewrite: Option<(String, String)>,
    pub(crate) host_rewrite: Option<HeaderValue>,
}

/// A snapshot route table referred to something the validator should have refused.
#[derive(Debug, thiserror::Error)]
#[error("route table {table:?}: {message}")]
pub(crate) struct CompileError {
    table: String,
    message: String,
}

impl RouteTable {
    /// A table that routes nothing (a passthrough listener's).
    pub(crate) fn empty() -> Self {
        Self {
            hosts: HostIndex::default(),
            vhosts: Vec::new(),
        }
    }

    pub(crate) fn compile(table: &weft_api::RouteTable, clusters: &ClusterSet) -> Result<Self, CompileError> {
        let err = |message: String| CompileError {
            table: table.name.clone(),
            message,
        };
        let hosts = HostIndex::new(
            table
                .virtual_hosts
                .iter()
                .enumerate()
                .flat_map(|(index, vhost)| vhost.domains.iter().map(move |d| (d.as_str(), index))),
        );
        let mut compiled = RouteTable {
            hosts,
            vhosts: Vec::new(),
        };
        for vhost in &table.virtual_hosts {
            let mut routes = Vec::with_capacity(vhost.routes.len());
            for route in &vhost.routes {
                routes.push(Arc::new(compile_route(route, clusters).map_err(err)?));
            }
            compiled.vhosts.push(VirtualHost { routes });
        }
        Ok(compiled)
    }

    /// The route for a request, or `None` (404).
    pub(crate) fn find(&self, authority: &str, path: &str, headers: &HeaderMap) -> Option<&Arc<Route>> {
        let vhost = self.vhosts.get(self.vhost_index(authority)?)?;
        vhost.routes.iter().find(|r| r.matches(path, headers))
    }

    fn vhost_index(&self, authority: &str) -> Option<usize> {
        let lower;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
        let host = strip_port(authority);
        self.hosts
            .exact(authority)
            .or_else(|| self.hosts.exact(host))
            .or_else(|| self.hosts.wildcard(authority))
            .or_else(|| self.hosts.wildcard(host))
            .or(self.hosts.any)
    }
}

/// `host:port` → `host`; IPv6 literals keep their brackets.
fn strip_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') && authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &authority[..i]
        }
        _ => authority,
    }
}

impl Route {
    fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatcher::Any => true,
            PathMatcher::Exact(p) => path == p,
            PathMatcher::Prefix(p) => path.starts_with(p.as_str()),
            PathMatcher::Regex(re) => re.is_match(path),
        };
        path_ok && self.headers.iter().all(|h| h.matches(headers))
    }
}

impl HeaderMatcher {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().filter_map(|v| v.to_str().ok());
        let hit = match &self.kind {
            HeaderMatchKind::Present => headers.contains_key(&self.name),
            HeaderMatchKind::Exact(x) => values.any(|v| v == x),
            HeaderMatchKind::Prefix(x) => values.any(|v| v.starts_with(x.as_str())),
            HeaderMatchKind::Regex(re) => values.any(|v| re.is_match(v)),
        };
        hit != self.invert
    }
}

/// Anchors a pattern so it must match the whole input, as Envoy's safe_regex does.
fn whole(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

fn compile_route(route: &weft_api::Route, clusters: &ClusterSet) -> Result<Route, String> {
    let path = match &route.matches.path {
        None => PathMatcher::Any,
        Some(m) => match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) => PathMatcher::Exact(e.clone()),
            (_, Some(p), _) => PathMatcher::Prefix(p.clone()),
            (_, _, Some(r)) => PathMatcher::Regex(whole(r)?),
            _ => PathMatcher::Any,
        },
    };
    let headers = route
        .matches
        .headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| format!("header {:?}: {e}", h.name))?;
            let kind = match (&h.exact, &h.prefix, &h.regex) {
                (Some(e), _, _) => HeaderMatchKind::Exact(e.clone()),
                (_, Some(p), _) => HeaderMatchKind::Prefix(p.clone()),
                (_, _, Some(r)) => HeaderMatchKind::Regex(whole(r)?),
                _ => HeaderMatchKind::Present,
            };
            Ok(HeaderMatcher {
                name,
                kind,
                invert: h.invert,
            })
        })
        .collect::<Result<_, String>>()?;
    let action = match (&route.forward, &route.direct_response) {
        (Some(f), _) => {
            let cluster = clusters
                .by_name
                .get(&f.cluster)
                .ok_or_else(|| format!("no cluster {:?}", f.cluster))?
                .clone();
            let lb = cluster.subset(&f.subset);
            let prefix_rewrite = f.prefix_rewrite.as_ref().and_then(|replacement| {
                let prefix = route.matches.path.as_ref()?.prefix.clone()?;
                Some((prefix, replacement.clone()))
            });
            let host_rewrite = f
                .host_rewrite
                .as_ref()
                .map(|h| HeaderValue::from_str(h).map_err(|e| format!("host_rewrite {h:?}: {e}")))
                .transpose()?;
            Action::Forward(Forward {
                cluster,
                lb,
                timeout: f.timeout,
                prefix_rewrite,
                host_rewrite,
            })
        }
        (None, Some(d)) => {
            let status = StatusCode::from_u16(d.status).map_err(|e| format!("status {}: {e}", d.status))?;
            let mut headers = HeaderMap::new();
            for (k, v) in &d.headers {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
                let value = HeaderValue::from_str(v).map_err(|e| format!("header {k:?} value: {e}"))?;
                headers.append(name, value);
            }
            Action::Direct {
                status,
                body: Bytes::from(d.body.clone()),
                headers,
            }
        }
        (None, None) => return Err("route has no action".to_owned()),
    };
    Ok(Route {
        name: Arc::from(route.name.as_str()),
        disabled_filters: route.disabled_filters.clone(),
        path,
        headers,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn table(yaml_vhosts: &str) -> RouteTable {
        let yaml = format!(
            "route_tables:\n  - name: t\n    virtual_hosts:\n{yaml_vhosts}\nclusters:\n  - name: c\n    endpoints: [{{address: 127.0.0.1:1}}]\n"
        );
        let snapshot = weft_api::Snapshot::from_yaml(&yaml).expect("valid");
        let clusters =
            ClusterSet::build(&snapshot, None, &Stats::default(), &crate::tls::MeshTls::new()).unwrap_or_default();
        RouteTable::compile(&snapshot.route_tables[0], &clusters).expect("compiles")
    }

    fn vhost(name: &str, domains: &str) -> String {
        format!(
            "      - name: {name}\n        domains: {domains}\n        routes:\n          - name: {name}\n            direct_response: {{ status: 200 }}\n"
        )
    }

    fn found(t: &RouteTable, authority: &str) -> Option<String> {
        t.find(authority, "/", &HeaderMap::new()).map(|r| r.name.to_string())
    }

    #[test]
    fn domains_prefer_exact_then_suffix_then_prefix_then_any() {
        let t = table(
            &[
                vhost("exact", "[\"api.example.com\"]"),
                vhost("suffix", "[\"*.example.com\"]"),
                vhost("longer", "[\"*.eu.example.com\"]"),
                vhost("prefix", "[\"api.*\"]"),
                vhost("any", "[\"*\"]"),
            ]
            .concat(),
        );
        assert_eq!(found(&t, "api.example.com").as_deref(), Some("exact"));
        assert_eq!(found(&t, "API.Example.com:8080").as_deref(), Some("exact"));
        assert_eq!(found(&t, "www.example.com").as_deref(), Some("suffix"));
        assert_eq!(found(&t, "www.eu.example.com").as_deref(), Some("longer"));
        assert_eq!(found(&t, "api.internal").as_deref(), Some("prefix"));
        assert_eq!(found(&t, "other").as_deref(), Some("any"));
        assert_eq!(found(&t, "[::1]:80").as_deref(), Some("any"));
    }

    #[test]
    fn routes_match_path_and_headers_in_order() {
        let t = table(
            r#"      - name: v
        domains: ["reviews"]
        routes:
          - name: jason
            match: { path: { prefix: /reviews }, headers: [{ name: end-user, exact: jason }] }
            direct_response: { status: 200 }
          - name: not-test
            match: { path: { regex: "/reviews/[0-9]+" }, headers: [{ name: x-test, invert: true }] }
            direct_response: { status: 200 }
          - name: exact
            match: { path: { exact: /health } }
            direct_response: { status: 200 }
"#,
        );
        let mut jason = HeaderMap::new();
        jason.insert("end-user", "jason".parse().expect("value"));
        let name = |path: &str, h: &HeaderMap| t.find("reviews", path, h).map(|r| r.name.to_string());
        assert_eq!(name("/reviews/1", &jason).as_deref(), Some("jason"));
        assert_eq!(name("/reviews/1", &HeaderMap::new()).as_deref(), Some("not-test"));
        assert_eq!(
            name("/reviews/1x", &HeaderMap::new()),
            None,
            "regex must match the whole path"
        );
        let mut test = HeaderMap::new();
        test.insert("x-test", "1".parse().expect("value"));
        assert_eq!(name("/reviews/1", &test), None);
        assert_eq!(name("/health", &test).as_deref(), Some("exact"));
        assert_eq!(name("/health/x", &test), None);
    }
}
