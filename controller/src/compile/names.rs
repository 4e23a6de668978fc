//! Host names and cluster names: how short names resolve, which names a sidecar accepts for
//! a service, how wildcards match, and Istio's cluster naming.

/// The cluster DNS domain services live under (`reviews.default.svc.cluster.local`).
pub(crate) const CLUSTER_DOMAIN: &str = "cluster.local";

/// `name.namespace.svc.cluster.local`.
pub(crate) fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// Resolves a host as written in a resource of `namespace`: a name without dots is a
/// Service of that namespace; `name.ns` and `name.ns.svc` are the Service's FQDN when that
/// Service exists (`is_service`); anything else (FQDNs, wildcards, external names) is kept,
/// lowercased.
pub(crate) fn resolve_host(host: &str, namespace: &str, is_service: impl Fn(&str) -> bool) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.starts_with('*') {
        return host;
    }
    if !host.contains('.') {
        return service_fqdn(&host, namespace);
    }
    let parts: Vec<&str> = host.split('.').collect();
    let candidate = match parts.as_slice() {
        [name, ns] | [name, ns, "svc"] => Some(service_fqdn(name, ns)),
        _ => None,
    };
    match candidate {
        Some(fqdn) if is_service(&fqdn) => fqdn,
        _ => host,
    }
}

/// Whether `pattern` (a host, `*.suffix` or `*`) matches `host` (which may itself be a
/// wildcard, matched when it is at least as specific).
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => match host.strip_prefix('*') {
            Some(rest) => rest.ends_with(suffix),
            None => host.len() > suffix.len() && host.ends_with(suffix),
        },
        None => false,
    }
}

/// Checks a host as a route table and router accept it: a name, `*` or `*.suffix`, without
/// port, whitespace or other wildcards.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("a host must not be empty".to_owned());
    }
    if host.bytes().any(|b| b <= b' ' || b == 0x7f || b"/?#@[]:".contains(&b)) {
        return Err(format!("{host:?} is not a host name"));
    }
    if host.bytes().skip(1).any(|b| b == b'*') {
        return Err(format!(
            "{host:?}: a wildcard is only allowed as the first character (\"*.example.com\", \"*\")"
        ));
    }
    Ok(())
}

/// The names a sidecar in `client_namespace` accepts for a Kubernetes Service (without
/// ports): the short name only from the Service's own namespace, then `name.ns`,
/// `name.ns.svc` and the FQDN.
pub(crate) fn service_names(name: &str, namespace: &str, client_namespace: &str) -> Vec<String> {
    let mut names = Vec::with_capacity(4);
    if namespace == client_namespace {
        names.push(name.to_owned());
    }
    names.push(format!("{name}.{namespace}"));
    names.push(format!("{name}.{namespace}.svc"));
    names.push(service_fqdn(name, namespace));
    if names.iter().any(|n| n.bytes().any(|b| b.is_ascii_uppercase())) {
        for n in &mut names {
            n.make_ascii_lowercase();
        }
    }
    names
}

/// Istio's outbound cluster name: `outbound|<port>|<subset>|<host>`.
pub(crate) fn outbound_cluster(port: Option<u16>, subset: &str, host: &str) -> String {
    match port {
        Some(port) => format!("outbound|{port}|{subset}|{host}"),
        None => format!("outbound||{subset}|{host}"),
    }
}

/// The host an outbound cluster name ends in (`reviews.default.svc.cluster.local` for
/// `outbound|9080|v1|reviews.default.svc.cluster.local`); the whole name for any other.
pub(crate) fn cluster_host(name: &str) -> &str {
    name.rsplit('|').next().unwrap_or(name)
}

/// Istio's inbound cluster name: `inbound|<port>||`.
pub(crate) fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Checks an HTTP header name (an RFC 9110 token).
pub(crate) fn check_header_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

/// Decodes standard base64 (padding optional).
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut buffer = 0u32;
    let mut bits = 0;
    for (i, c) in text.trim_end_matches('=').bytes().enumerate() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'\n' | b'\r' | b' ' => continue,
            _ => return Err(format!("invalid base64 character at {i}")),
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_namespace() {
        let known = |h: &str| h == "reviews.default.svc.cluster.local";
        assert_eq!(
            resolve_host("reviews", "default", known),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.default", "x", known),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.default.svc", "x", known),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(resolve_host("Example.COM", "x", known), "example.com");
        assert_eq!(resolve_host("*.example.com", "x", known), "*.example.com");
    }

    #[test]
    fn wildcards() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*.example.com", "*.example.com"));
        assert!(host_matches("*.example.com", "*.a.example.com"));
        assert!(!host_matches("*.a.example.com", "*.example.com"));
        assert!(!host_matches("a.example.com", "b.example.com"));
        assert!(check_host("a*b").is_err());
        assert!(check_host("a:80").is_err());
    }

    #[test]
    fn base64() {
        assert_eq!(decode_base64("aGVsbG8=").expect("valid"), b"hello");
        assert_eq!(decode_base64("aGVsbG8").expect("valid"), b"hello");
        assert!(decode_base64("a$").is_err());
    }
}
