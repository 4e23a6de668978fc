//! Where tokens are found: request headers (with a value prefix such as `Bearer `) and query
//! parameters, as Envoy's `jwt_authn` extractor; and how they are removed again.

/// A place a token may be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header (lowercase name) and a value prefix (may be empty).
    Header {
        /// Header name, lowercase.
        name: String,
        /// Text before the token, e.g. `Bearer `; empty: the whole value.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
}

/// A token found at a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Index of the location in the list given to [`extract`].
    pub location: usize,
    /// The token text.
    pub token: String,
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Finds the tokens of a request: `headers` are its (lowercase name, value) pairs, `path` its
/// `:path`. Headers first (every value of a header), then query parameters (the first value of
/// each), in the order of `locations`.
pub fn extract(locations: &[Location], headers: &[(String, String)], path: &str) -> Vec<Found> {
    let mut found = Vec::new();
    for (index, location) in locations.iter().enumerate() {
        let Location::Header { name, prefix } = location else {
            continue;
        };
        for (_, value) in headers.iter().filter(|(n, _)| n == name) {
            let token = if prefix.is_empty() {
                value.as_str()
            } else {
                // As Envoy: the prefix anywhere in the value, then skip to the first character
                // a token can hold.
                let Some(at) = value.find(prefix.as_str()) else {
                    continue;
                };
                let rest = &value[at + prefix.len()..];
                rest.find(is_token_char).map_or(rest, |start| &rest[start..])
            };
            found.push(Found {
                location: index,
                token: token.to_owned(),
            });
        }
    }
    let query = path.split_once('?').map(|(_, q)| q);
    let query = query.map(|q| q.split_once('#').map_or(q, |(q, _)| q));
    if let Some(query) = query {
        for (index, location) in locations.iter().enumerate() {
            let Location::Param(param) = location else {
                continue;
            };
            let value = query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key) == *param).then(|| percent_decode(value))
            });
            if let Some(token) = value {
                found.push(Found { location: index, token });
            }
        }
    }
    found
}

/// `path` without every occurrence of query parameter `param`.
pub fn remove_param(path: &str, param: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && percent_decode(key) != param
        })
        .collect();
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Envoy truncates the path in the `www-authenticate` realm to this many bytes.
const MAX_REALM_PATH: usize = 256;

/// The realm of the `www-authenticate` challenge: scheme, host and path, as Envoy's, but
/// without the query (so a token sent as a query parameter is not echoed back); quotes and
/// backslashes escaped.
pub fn realm(scheme: &str, host: &str, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut end = path.len().min(MAX_REALM_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{scheme}://{host}{}", path.get(..end).unwrap_or_default())
        .replace('\\', "%5C")
        .replace('"', "%22")
}

/// Decodes `%XX` escapes (invalid ones are kept as they are; `+` is not a space, as Envoy).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, prefix: &str) -> Location {
        Location::Header {
            name: name.into(),
            prefix: prefix.into(),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn tokens_come_from_headers_with_prefixes_and_from_params() {
        let locations = [
            header("authorization", "Bearer "),
            header("x-jwt", ""),
            Location::Param("access_token".into()),
        ];
        let headers = pairs(&[
            ("authorization", "Bearer a.b.c"),
            ("x-jwt", "d.e.f"),
            ("authorization", "Basic xyz"),
            ("x-other", "Bearer nope"),
        ]);
        let found = extract(&locations, &headers, "/p?x=1&access_token=g.h%2Ei&access_token=second");
        assert_eq!(
            found,
            vec![
                Found {
                    location: 0,
                    token: "a.b.c".into()
                },
                Found {
                    location: 1,
                    token: "d.e.f".into()
                },
                Found {
                    location: 2,
                    token: "g.h.i".into()
                },
            ]
        );
        assert!(extract(&locations, &[], "/p").is_empty());
        assert!(extract(&locations, &[], "/p?access=1").is_empty());
    }

    #[test]
    fn the_prefix_may_sit_anywhere_and_junk_before_the_token_is_skipped() {
        let locations = [header("authorization", "Bearer ")];
        let found = extract(&locations, &pairs(&[("authorization", "x Bearer   \"a.b.c")]), "/");
        assert_eq!(found[0].token, "a.b.c");
        let found = extract(&locations, &pairs(&[("authorization", "Bearer ")]), "/");
        assert_eq!(found[0].token, "", "an empty token is still a (bad) token");
    }

    #[test]
    fn params_are_removed_from_the_path() {
        assert_eq!(remove_param("/a?access_token=x", "access_token"), "/a");
        assert_eq!(remove_param("/a?b=1&access_token=x&c=2", "access_token"), "/a?b=1&c=2");
        assert_eq!(remove_param("/a?access_token=x&access_token=y", "access_token"), "/a");
        assert_eq!(remove_param("/a?b=1#frag", "access_token"), "/a?b=1#frag");
        assert_eq!(remove_param("/a", "access_token"), "/a");
        assert_eq!(remove_param("/a?acc%65ss_token=x", "access_token"), "/a");
    }

    #[test]
    fn realms_drop_the_query_and_are_bounded() {
        assert_eq!(realm("http", "svc", "/a/b?access_token=x"), "http://svc/a/b");
        assert_eq!(realm("http", "svc", "/\"q\""), "http://svc/%22q%22");
        let long = format!("/{}", "é".repeat(200));
        assert_eq!(realm("http", "svc", &long).len(), "http://svc".len() + 255);
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode("a+b"), "a+b");
    }
}
