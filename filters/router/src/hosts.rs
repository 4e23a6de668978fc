//! Choosing the virtual host from the request's authority, as Envoy does for the domains
//! Istio generates: an exact name beats the longest matching suffix wildcard, which beats
//! `*`. Names compare case-insensitively; the authority's port is ignored.

use std::collections::HashMap;

use crate::config::VirtualHost;

/// Checks one `hosts` entry: a name, `*`, or a wildcard `*suffix` (`*.example.com`,
/// `*-api.example.com`), without a port.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("a host must not be empty".to_owned());
    }
    if host.bytes().any(|b| b <= b' ' || b == 0x7f || b"/?#@[]".contains(&b)) {
        return Err(format!("{host:?} is not a host name"));
    }
    if host.contains(':') {
        return Err(format!("{host:?}: hosts are matched without a port; remove it"));
    }
    if host.bytes().skip(1).any(|b| b == b'*') {
        return Err(format!(
            "{host:?}: a wildcard is only allowed as the first character (\"*.example.com\", \"*\")"
        ));
    }
    Ok(())
}

/// Splits an authority into host and port (`[::1]:80` → (`[::1]`, `Some("80")`)); the port
/// is only split off when it is all digits.
pub fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        // IPv6 literal: the port, if any, follows `]:`.
        return match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                (host, rest.strip_prefix(':').filter(|p| is_port(p)))
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if is_port(port) => (host, Some(port)),
        _ => (authority, None),
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The host part of an authority: without the port or a trailing dot, lowercased.
pub fn host_of(authority: &str) -> String {
    split_authority(authority).0.trim_end_matches('.').to_ascii_lowercase()
}

/// The port of an authority, if it names one.
pub fn port_of(authority: &str) -> Option<u16> {
    split_authority(authority).1?.parse().ok()
}

/// An index of the virtual hosts' names.
#[derive(Debug, Default)]
pub struct HostIndex {
    exact: HashMap<String, usize>,
    /// `(suffix, virtual host)`, longest suffix first.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl HostIndex {
    /// Indexes `virtual_hosts`; a name listed twice goes to its first virtual host.
    pub fn new(virtual_hosts: &[VirtualHost]) -> Self {
        let mut index = HostIndex::default();
        for (i, vhost) in virtual_hosts.iter().enumerate() {
            for host in &vhost.hosts {
                let host = host.to_ascii_lowercase();
                if host == "*" {
                    index.any.get_or_insert(i);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    if !index.suffixes.iter().any(|(s, _)| s == suffix) {
                        index.suffixes.push((suffix.to_owned(), i));
                    }
                } else {
                    index.exact.entry(host).or_insert(i);
                }
            }
        }
        // Stable: among suffixes of one length, the first listed stays first.
        index.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        index
    }

    /// The virtual host for `authority`, if any.
    pub fn find(&self, authority: &str) -> Option<usize> {
        let host = host_of(authority);
        if let Some(&i) = self.exact.get(&host) {
            return Some(i);
        }
        // A wildcard stands for at least one character.
        self.suffixes
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|&(_, i)| i)
            .or(self.any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhost(hosts: &[&str]) -> VirtualHost {
        VirtualHost {
            name: String::new(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            routes: Vec::new(),
        }
    }

    #[test]
    fn authorities_lose_their_port_and_case() {
        assert_eq!(host_of("Reviews:9080"), "reviews");
        assert_eq!(host_of("reviews"), "reviews");
        assert_eq!(
            host_of("reviews.default.svc.cluster.local."),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
        assert_eq!(port_of("reviews:9080"), Some(9080));
        assert_eq!(port_of("reviews"), None);
        assert_eq!(port_of("[::1]:81"), Some(81));
        assert_eq!(port_of("[::1]"), None);
        assert_eq!(split_authority("Reviews:9080"), ("Reviews", Some("9080")));
        assert_eq!(split_authority("reviews:"), ("reviews:", None));
    }

    #[test]
    fn exact_beats_longest_suffix_beats_any() {
        let vhosts = [
            vhost(&["*"]),
            vhost(&["*.example.com"]),
            vhost(&["*.api.example.com"]),
            vhost(&["reviews", "www.api.example.com"]),
            vhost(&["reviews"]),
        ];
        let index = HostIndex::new(&vhosts);
        assert_eq!(index.find("reviews:9080"), Some(3));
        assert_eq!(index.find("REVIEWS"), Some(3), "first listed wins a duplicate");
        assert_eq!(index.find("www.api.example.com"), Some(3));
        assert_eq!(index.find("x.api.example.com"), Some(2));
        assert_eq!(index.find("x.example.com"), Some(1));
        assert_eq!(index.find("example.com"), Some(0), "a wildcard is not empty");
        assert_eq!(index.find("other"), Some(0));
        let index = HostIndex::new(&vhosts[1..2]);
        assert_eq!(index.find(".example.com"), None);
        assert_eq!(index.find("other"), None);
    }

    #[test]
    fn host_entries_are_checked() {
        for good in ["reviews", "*", "*.example.com", "*-api.example.com", "10.0.0.1"] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a:80", "a.*", "a*b", "**", "[::1]"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }
}
