//! Value matchers of Istio's AuthorizationPolicy: string patterns (exact, `prefix*`,
//! `*suffix`, `*` for presence), path templates (`{*}`, `{**}`), IP blocks, ports; plus the
//! path normalization and principal parsing they apply to.

use std::net::IpAddr;

/// A string pattern: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any non-empty value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Pattern {
    /// The whole value.
    Exact(String),
    /// The beginning of the value.
    Prefix(String),
    /// The end of the value.
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty value".into());
        }
        Ok(if text == "*" {
            Pattern::Presence
        } else if let Some(prefix) = text.strip_suffix('*') {
            Pattern::Prefix(prefix.to_owned())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Pattern::Suffix(suffix.to_owned())
        } else {
            Pattern::Exact(text)
        })
    }
}

impl Pattern {
    /// Whether `value` matches (case-sensitive).
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(text) => value == text,
            Pattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Pattern::Suffix(suffix) => value.ends_with(suffix.as_str()),
            Pattern::Presence => !value.is_empty(),
        }
    }

    /// Whether `value` matches, ignoring ASCII case (hosts).
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        let value = value.to_ascii_lowercase();
        match self {
            Pattern::Exact(text) => value == text.to_ascii_lowercase(),
            Pattern::Prefix(prefix) => value.starts_with(&prefix.to_ascii_lowercase()),
            Pattern::Suffix(suffix) => value.ends_with(&suffix.to_ascii_lowercase()),
            Pattern::Presence => !value.is_empty(),
        }
    }
}

/// Whether any of `patterns` matches `value`.
pub fn any_matches(patterns: &[Pattern], value: &str) -> bool {
    patterns.iter().any(|p| p.matches(value))
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: one or more segments, the rest of the path (last only).
    Rest,
}

/// A `paths` value: a [`Pattern`], or a template when it holds `{*}` or `{**}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum PathPattern {
    /// Exact, prefix, suffix or presence.
    Plain(Pattern),
    /// A template of `/`-separated segments.
    Template(Vec<Segment>),
}

impl TryFrom<String> for PathPattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if !text.contains("{*") {
            return Pattern::try_from(text).map(PathPattern::Plain);
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path template {text:?} must start with /"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{*}" => Segment::One,
                "{**}" if index + 1 == parts.len() => Segment::Rest,
                "{**}" => return Err(format!("path template {text:?}: {{**}} must be the last segment")),
                literal if literal.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "path template {text:?}: operators must be whole segments ({{*}} or {{**}})"
                    ));
                }
                literal => Segment::Literal(literal.to_owned()),
            };
            segments.push(segment);
        }
        Ok(PathPattern::Template(segments))
    }
}

impl PathPattern {
    /// Whether `path` (normalized, without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(pattern) => pattern.matches(path),
            PathPattern::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let parts: Vec<&str> = rest.split('/').collect();
                for (index, segment) in segments.iter().enumerate() {
                    match segment {
                        Segment::Rest => {
                            let remaining = parts.get(index..).unwrap_or_default();
                            return !remaining.is_empty() && !remaining.join("/").is_empty();
                        }
                        Segment::One => {
                            if parts.get(index).is_none_or(|p| p.is_empty()) {
                                return false;
                            }
                        }
                        Segment::Literal(text) => {
                            if parts.get(index) != Some(&text.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.len() == segments.len()
            }
        }
    }
}

/// An IP block: a single address or a CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Cidr::parse(&text)
    }
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let invalid = || format!("invalid IP block {text:?}");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| invalid())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(invalid)?,
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` is in the block. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A port, given as a number or a numeric string (Istio uses strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "PortValue")]
pub struct Port(pub u16);

/// How a port may be written.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// `8080`.
    Number(u64),
    /// `"8080"`.
    Text(String),
}

impl TryFrom<PortValue> for Port {
    type Error = String;

    fn try_from(value: PortValue) -> Result<Self, String> {
        let number = match &value {
            PortValue::Number(n) => Some(*n),
            PortValue::Text(text) => text.trim().parse().ok(),
        };
        match number.and_then(|n| u16::try_from(n).ok()) {
            Some(port) if port > 0 => Ok(Port(port)),
            _ => Err(match value {
                PortValue::Number(n) => format!("invalid port {n}"),
                PortValue::Text(t) => format!("invalid port {t:?}"),
            }),
        }
    }
}

/// The path Istio's policies see: without query and fragment, normalized as Envoy's
/// `normalize_path` (RFC 3986): `%XX` of unreserved characters decoded, other escapes
/// upper-cased, `.` and `..` segments removed. The request itself is not changed.
pub fn normalize_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                decoded.push(char::from(byte));
            } else {
                decoded.push('%');
                decoded.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        // Copy up to the next '%' as is (keeps multi-byte characters whole).
        let next = path
            .get(i + 1..)
            .and_then(|rest| rest.find('%'))
            .map_or(path.len(), |n| i + 1 + n);
        decoded.push_str(path.get(i..next).unwrap_or_default());
        i = next;
    }
    remove_dot_segments(&decoded)
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (index, segment) in segments.iter().enumerate().skip(1) {
        match *segment {
            "." => {
                if index == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if index == last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

/// A peer principal without its `spiffe://` scheme, as Istio's `principals` values are
/// written (`cluster.local/ns/default/sa/sleep`).
pub fn principal_name(principal: &str) -> &str {
    principal.strip_prefix("spiffe://").unwrap_or(principal)
}

/// The namespace in a SPIFFE principal `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
pub fn namespace_of(principal: &str) -> Option<&str> {
    let segments: Vec<&str> = principal_name(principal).split('/').collect();
    let at = segments.iter().skip(1).position(|s| *s == "ns")? + 1;
    segments.get(at + 1).copied().filter(|ns| !ns.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> Pattern {
        Pattern::try_from(text.to_owned()).expect("pattern")
    }

    fn path(text: &str) -> PathPattern {
        PathPattern::try_from(text.to_owned()).expect("path pattern")
    }

    #[test]
    fn patterns_match_exact_prefix_suffix_and_presence() {
        assert!(pattern("abc").matches("abc"));
        assert!(!pattern("abc").matches("abcd"));
        assert!(pattern("abc*").matches("abc") && pattern("abc*").matches("abcd"));
        assert!(!pattern("abc*").matches("xabc"));
        assert!(pattern("*abc").matches("abc") && pattern("*abc").matches("xabc"));
        assert!(!pattern("*abc").matches("abcx"));
        assert!(pattern("*").matches("x") && !pattern("*").matches(""));
        assert!(pattern("Svc.Example*").matches_ignore_case("svc.example.com:80"));
        assert!(!pattern("svc").matches("SVC"));
        assert!(Pattern::try_from(String::new()).is_err());
    }

    #[test]
    fn path_templates_match_whole_segments() {
        assert!(path("/foo/{*}/bar").matches("/foo/x/bar"));
        assert!(!path("/foo/{*}/bar").matches("/foo//bar"));
        assert!(!path("/foo/{*}/bar").matches("/foo/x/y/bar"));
        assert!(path("/foo/{**}").matches("/foo/x"));
        assert!(path("/foo/{**}").matches("/foo/x/y/z"));
        assert!(!path("/foo/{**}").matches("/foo"));
        assert!(!path("/foo/{**}").matches("/foo/"));
        assert!(path("/{*}").matches("/a") && !path("/{*}").matches("/a/b"));
        assert!(PathPattern::try_from("/a/{**}/b".to_owned()).is_err());
        assert!(PathPattern::try_from("/a/x{*}".to_owned()).is_err());
        assert!(PathPattern::try_from("a/{*}".to_owned()).is_err());
        assert!(path("/api*").matches("/api/v1"));
    }

    #[test]
    fn ip_blocks_contain_addresses() {
        let block = Cidr::parse("127.0.0.0/8").expect("cidr");
        assert!(block.contains("127.0.0.1".parse().expect("ip")));
        assert!(block.contains("::ffff:127.1.2.3".parse().expect("ip")), "v4-mapped");
        assert!(!block.contains("10.0.0.1".parse().expect("ip")));
        assert!(!block.contains("::1".parse().expect("ip")));
        let single = Cidr::parse("10.1.2.3").expect("ip");
        assert!(single.contains("10.1.2.3".parse().expect("ip")));
        assert!(!single.contains("10.1.2.4".parse().expect("ip")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        let v6 = Cidr::parse("2001:db8::/32").expect("v6");
        assert!(v6.contains("2001:db8:1::5".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::5".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_are_numbers_or_numeric_strings() {
        let ports: Vec<Port> = serde_json::from_str(r#"[8080, "9090"]"#).expect("ports");
        assert_eq!(ports, vec![Port(8080), Port(9090)]);
        for bad in [r#"["http"]"#, "[70000]", "[0]"] {
            assert!(serde_json::from_str::<Vec<Port>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_normalized_like_envoy() {
        assert_eq!(normalize_path("/a/b?x=1#f"), "/a/b");
        assert_eq!(normalize_path("/a/./b/../c"), "/a/c");
        assert_eq!(normalize_path("/../../admin"), "/admin");
        assert_eq!(normalize_path("/foo/.."), "/");
        assert_eq!(normalize_path("/foo/."), "/foo/");
        assert_eq!(normalize_path("/%61dmin"), "/admin");
        assert_eq!(normalize_path("/%2e%2E/admin"), "/admin");
        assert_eq!(normalize_path("/a%2fb"), "/a%2Fb", "escaped slashes stay escaped");
        assert_eq!(normalize_path("/é/%zz"), "/é/%zz");
        assert_eq!(normalize_path("/a//b"), "/a//b", "slashes are not merged");
        assert_eq!(normalize_path(""), "/");
    }

    #[test]
    fn principals_and_namespaces() {
        let peer = "spiffe://cluster.local/ns/default/sa/sleep";
        assert_eq!(principal_name(peer), "cluster.local/ns/default/sa/sleep");
        assert_eq!(namespace_of(peer), Some("default"));
        assert_eq!(namespace_of("cluster.local/ns/prod/sa/x"), Some("prod"));
        assert_eq!(namespace_of("spiffe://cluster.local/sa/x"), None);
        assert_eq!(
            namespace_of("spiffe://ns/x"),
            None,
            "the trust domain is not a namespace"
        );
    }
}
