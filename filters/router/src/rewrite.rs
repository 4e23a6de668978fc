//! What a route does to a request's path and authority, and where a redirect points: pure
//! functions of the configuration and the request.

use crate::config::{DerivePort, MatchRequest, Redirect, Rewrite, StringMatch};
use crate::hosts::split_authority;
use crate::matching::RequestView;

/// The new `:path` for `rewrite`, or `None` when the path stays.
///
/// `uri` replaces what the matching block's `uri` condition matched, as Envoy's
/// `prefix_rewrite` (which Istio uses) does: the matched prefix for `prefix`, the whole path
/// for `exact` and `regex`; with no `uri` condition the route matches the prefix `/`, which is
/// replaced. `uri_regex_rewrite` replaces every match in the path. The query string is kept.
pub fn rewritten_path(rewrite: &Rewrite, block: Option<&MatchRequest>, request: &RequestView) -> Option<String> {
    let path = request.path_only();
    let new_path = if let Some(uri) = &rewrite.uri {
        let matched_len = match block.and_then(|b| b.uri.as_ref()) {
            Some(StringMatch::Prefix(prefix)) => prefix.len(),
            Some(StringMatch::Exact(_) | StringMatch::Regex(_)) => path.len(),
            // No uri condition (or `{}`): Istio's route matches the prefix `/`.
            Some(StringMatch::Present) | None => usize::from(path.starts_with('/')),
        };
        // A prefix match guarantees the length; stay safe on a char boundary anyway.
        let rest = path.get(matched_len..).unwrap_or("");
        format!("{uri}{rest}")
    } else if let Some(regex) = &rewrite.uri_regex_rewrite {
        regex.pattern.0.replace_all(path, &regex.rewrite)
    } else {
        return None;
    };
    Some(format!("{new_path}{}", request.query_string()))
}

/// The `location` of a redirect.
///
/// * scheme: `scheme`, else the request's (`http` if unknown);
/// * host: `authority` (as given, port included), else the request's host;
/// * port: `port`; or with `derive_port`, the request's port (`FROM_REQUEST_PORT`) or none
///   (`FROM_PROTOCOL_DEFAULT`: the scheme's default); otherwise the request's port is kept
///   unless `authority` replaced it, or the scheme changed and it was the old scheme's
///   default;
/// * path: `uri` (the whole path, whatever the match), with the request's query string
///   unless `uri` has one; else the request's path and query.
pub fn redirect_location(redirect: &Redirect, request: &RequestView) -> String {
    let request_scheme = if request.scheme.is_empty() {
        "http"
    } else {
        request.scheme.as_str()
    };
    let scheme = redirect.scheme.as_deref().unwrap_or(request_scheme);
    let (request_host, request_port) = split_authority(&request.authority);
    let (host, kept_port) = match &redirect.authority {
        Some(authority) => split_authority(authority),
        None => {
            let old_default = default_port(request_scheme);
            let scheme_changed = !scheme.eq_ignore_ascii_case(request_scheme);
            let drop = scheme_changed && request_port.and_then(|p| p.parse::<u16>().ok()) == old_default;
            (request_host, if drop { None } else { request_port })
        }
    };
    let port = match (redirect.port, redirect.derive_port) {
        (Some(port), _) => Some(port.to_string()),
        (None, Some(DerivePort::FromRequestPort)) => request_port.map(str::to_owned),
        (None, Some(DerivePort::FromProtocolDefault)) => None,
        (None, None) => kept_port.map(str::to_owned),
    };
    let path = match &redirect.uri {
        Some(uri) if uri.contains('?') => uri.clone(),
        Some(uri) => format!("{uri}{}", request.query_string()),
        None if request.path.is_empty() => "/".to_owned(),
        None => request.path.clone(),
    };
    match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Route};

    fn view(authority: &str, path: &str) -> RequestView {
        RequestView::from_pairs([
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            (":scheme", "http"),
        ])
    }

    fn route(json: &str) -> Route {
        let text = format!(r#"{{"virtual_hosts": [{{"hosts": ["*"], "routes": [{json}]}}]}}"#);
        let mut config: Config = weft_sdk::parse_config(text.as_bytes()).expect("valid");
        config.virtual_hosts.remove(0).routes.remove(0)
    }

    fn rewrite(json: &str, path: &str) -> Option<String> {
        let r = route(json);
        let rewrite = r.rewrite.as_ref().expect("rewrite");
        rewritten_path(rewrite, r.matches.first(), &view("a", path))
    }

    const DEST: &str = r#""route": [{"destination": {"cluster": "c"}}]"#;

    #[test]
    fn a_prefix_rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
        let json = format!(
            r#"{{"match": [{{"uri": {{"prefix": "/ratings"}}}}], "rewrite": {{"uri": "/v1/bookRatings"}}, {DEST}}}"#
        );
        assert_eq!(
            rewrite(&json, "/ratings/2?x=1").as_deref(),
            Some("/v1/bookRatings/2?x=1")
        );
        assert_eq!(rewrite(&json, "/ratings").as_deref(), Some("/v1/bookRatings"));
        // Envoy's behaviour: a rewrite to "/" of the prefix "/api" leaves "//x".
        let json = format!(r#"{{"match": [{{"uri": {{"prefix": "/api"}}}}], "rewrite": {{"uri": "/"}}, {DEST}}}"#);
        assert_eq!(rewrite(&json, "/api/x").as_deref(), Some("//x"));
        let json = format!(r#"{{"match": [{{"uri": {{"prefix": "/api/"}}}}], "rewrite": {{"uri": "/"}}, {DEST}}}"#);
        assert_eq!(rewrite(&json, "/api/x").as_deref(), Some("/x"));
        let json = format!(
            r#"{{"match": [{{"uri": {{"prefix": "/API/"}}, "ignore_uri_case": true}}], "rewrite": {{"uri": "/v2/"}}, {DEST}}}"#
        );
        assert_eq!(rewrite(&json, "/api/x").as_deref(), Some("/v2/x"));
    }

    #[test]
    fn exact_and_regex_matches_replace_the_whole_path() {
        let json = format!(r#"{{"match": [{{"uri": {{"exact": "/old"}}}}], "rewrite": {{"uri": "/new"}}, {DEST}}}"#);
        assert_eq!(rewrite(&json, "/old?q").as_deref(), Some("/new?q"));
        let json = format!(r#"{{"match": [{{"uri": {{"regex": "/o.d"}}}}], "rewrite": {{"uri": "/new"}}, {DEST}}}"#);
        assert_eq!(rewrite(&json, "/old").as_deref(), Some("/new"));
        // Without a uri condition the prefix "/" is replaced.
        let json = format!(r#"{{"match": [{{"headers": {{"x": {{}}}}}}], "rewrite": {{"uri": "/v2/"}}, {DEST}}}"#);
        assert_eq!(rewrite(&json, "/a/b").as_deref(), Some("/v2/a/b"));
        let json = format!(r#"{{"rewrite": {{"uri": "/v2/"}}, {DEST}}}"#);
        assert_eq!(rewrite(&json, "/a").as_deref(), Some("/v2/a"));
    }

    #[test]
    fn regex_rewrites_and_authority_only_rewrites() {
        let json = format!(
            r#"{{"rewrite": {{"uri_regex_rewrite": {{"match": "^/service/([^/]+)(/.*)$", "rewrite": "\\2/instance/\\1"}}}}, {DEST}}}"#
        );
        assert_eq!(
            rewrite(&json, "/service/foo/v1/api?k=v").as_deref(),
            Some("/v1/api/instance/foo?k=v")
        );
        assert_eq!(rewrite(&json, "/other").as_deref(), Some("/other"));
        let json = format!(r#"{{"rewrite": {{"authority": "x"}}, {DEST}}}"#);
        assert_eq!(rewrite(&json, "/a"), None);
    }

    fn location(redirect: &str, authority: &str, path: &str) -> String {
        let r = route(&format!(r#"{{"redirect": {redirect}}}"#));
        redirect_location(r.redirect.as_ref().expect("redirect"), &view(authority, path))
    }

    #[test]
    fn redirects_replace_path_authority_scheme_and_port() {
        assert_eq!(
            location(
                r#"{"uri": "/v1/bookRatings", "authority": "newratings"}"#,
                "ratings:9080",
                "/v1/getProductRatings?a=1"
            ),
            "http://newratings/v1/bookRatings?a=1"
        );
        assert_eq!(
            location(r#"{"uri": "/n?b=2"}"#, "ratings:9080", "/o?a=1"),
            "http://ratings:9080/n?b=2"
        );
        assert_eq!(location("{}", "ratings", "/o?a=1"), "http://ratings/o?a=1");
        assert_eq!(
            location(r#"{"scheme": "https"}"#, "ratings:80", "/"),
            "https://ratings/"
        );
        assert_eq!(
            location(r#"{"scheme": "https"}"#, "ratings:8080", "/"),
            "https://ratings:8080/"
        );
        assert_eq!(
            location(r#"{"scheme": "https", "port": 8443}"#, "ratings:80", "/"),
            "https://ratings:8443/"
        );
        assert_eq!(
            location(
                r#"{"authority": "b:81", "derive_port": "FROM_REQUEST_PORT"}"#,
                "a:9080",
                "/"
            ),
            "http://b:9080/"
        );
        assert_eq!(
            location(
                r#"{"scheme": "https", "derive_port": "FROM_PROTOCOL_DEFAULT"}"#,
                "a:9080",
                "/"
            ),
            "https://a/"
        );
        assert_eq!(location(r#"{"port": 81}"#, "[::1]:80", "/x"), "http://[::1]:81/x");
        assert_eq!(location(r#"{"authority": "b"}"#, "a:9080", "/x"), "http://b/x");
    }
}
