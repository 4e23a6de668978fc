//! Image references: `oci://host[:port]/repository[:tag][@sha256:<hex>]`.

use std::fmt;
use std::str::FromStr;

use crate::{Digest, Error};

/// The tag a reference without tag or digest names.
pub(crate) const DEFAULT_TAG: &str = "latest";

/// A registry's address: `host` or `host:port` (an IPv6 host in brackets: `[::1]:5000`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost {
    authority: String,
}

impl RegistryHost {
    /// Parses `oci://host[:port]`, `host[:port]` or either with a trailing `/`.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let authority = input.strip_prefix("oci://").unwrap_or(input);
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains("://") {
            return Err(invalid(input, "the only scheme a registry takes is oci://"));
        }
        check_authority(authority).map_err(|reason| invalid(input, reason))?;
        Ok(Self {
            authority: authority.into(),
        })
    }

    /// `host[:port]`, as given.
    pub fn as_str(&self) -> &str {
        &self.authority
    }

    /// The host without port (brackets kept around an IPv6 address).
    pub fn host(&self) -> &str {
        split_port(&self.authority).0
    }

    /// Whether this is the local machine (`localhost`, `127.0.0.1`, `[::1]`): such
    /// registries are reached over plain http.
    pub fn is_loopback(&self) -> bool {
        matches!(self.host(), "localhost" | "127.0.0.1" | "[::1]")
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority)
    }
}

/// A module image in a registry: `oci://host[:port]/repository[:tag][@sha256:<hex>]`.
///
/// The `oci://` prefix may be left out, but then the first path component must look like a
/// host (contain a `.` or a `:`, or be `localhost`): there is no default registry. Without a
/// tag or digest the tag is `latest`. With a digest, lookups use the digest (a tag given with
/// it is kept for display only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: RegistryHost,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference; see the type's documentation for the forms accepted.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let (explicit, rest) = match input.strip_prefix("oci://") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        if rest.contains("://") {
            return Err(invalid(input, "the only scheme a reference takes is oci://"));
        }
        let Some((authority, path)) = rest.split_once('/') else {
            return Err(invalid(
                input,
                "no repository: write oci://HOST[:PORT]/REPOSITORY[:TAG]",
            ));
        };
        let looks_like_host = authority.contains(['.', ':']) || authority == "localhost";
        if !explicit && !looks_like_host {
            return Err(invalid(
                input,
                "no registry host: write oci://HOST[:PORT]/REPOSITORY[:TAG] (there is no default registry)",
            ));
        }
        check_authority(authority).map_err(|reason| invalid(input, reason))?;
        let (name_tag, digest) = match path.split_once('@') {
            Some((name_tag, digest)) => {
                let digest = Digest::parse(digest)
                    .map_err(|_| invalid(input, "the digest must be sha256: and 64 lowercase hex digits"))?;
                (name_tag, Some(digest))
            }
            None => (path, None),
        };
        let (repository, tag) = match name_tag.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (name_tag, None),
        };
        check_repository(repository).map_err(|reason| invalid(input, reason))?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(|reason| invalid(input, reason))?;
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Self {
            registry: RegistryHost {
                authority: authority.into(),
            },
            repository: repository.into(),
            tag,
            digest,
        })
    }

    /// A reference to `repository:tag` in `registry`; checks the names.
    pub fn new(registry: RegistryHost, repository: &str, tag: &str) -> Result<Self, Error> {
        let input = format!("oci://{registry}/{repository}:{tag}");
        check_repository(repository).map_err(|reason| invalid(&input, reason))?;
        check_tag(tag).map_err(|reason| invalid(&input, reason))?;
        Ok(Self {
            registry,
            repository: repository.into(),
            tag: Some(tag.into()),
            digest: None,
        })
    }

    /// The registry's address.
    pub fn registry(&self) -> &RegistryHost {
        &self.registry
    }

    /// The repository's name, e.g. `weft/router`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag: the one given, `latest` when neither tag nor digest was, `None` for a
    /// reference by digest alone.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest the reference is pinned to, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same image pinned by `digest`, without the tag.
    pub fn pinned(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// What the manifest is looked up by: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.into(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

fn invalid(input: &str, reason: &str) -> Error {
    Error::InvalidReference {
        input: input.into(),
        reason: reason.into(),
    }
}

/// Splits `host[:port]` (`[v6]:port` included) into host and port text.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    }
}

/// Checks `host[:port]`.
fn check_authority(authority: &str) -> Result<(), &'static str> {
    let (host, port) = split_port(authority);
    if host.is_empty() {
        return Err("no registry host");
    }
    if let Some(v6) = host.strip_prefix('[') {
        let inner = v6.strip_suffix(']').ok_or("unclosed [ in the registry host")?;
        inner
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address in the registry host")?;
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        || host.starts_with(['.', '-'])
        || host.ends_with(['.', '-'])
    {
        return Err("invalid registry host: use letters, digits, '.' and '-'");
    }
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return Err("invalid registry port");
    }
    Ok(())
}

/// Checks a repository name: `/`-separated components of lowercase letters and digits,
/// joined inside a component by `.`, `_`, `__` or runs of `-`; 255 characters at most.
pub(crate) fn check_repository(name: &str) -> Result<(), &'static str> {
    const BAD: &str = "invalid repository name: use '/'-separated components of lowercase letters and digits, \
                       separated inside a component by '.', '_', '__' or '-'";
    if name.is_empty() {
        return Err("no repository name");
    }
    if name.len() > 255 {
        return Err("repository name longer than 255 characters");
    }
    for component in name.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(BAD);
        }
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b if alnum(b) => i += 1,
                b'.' => {
                    if !alnum(bytes[i + 1]) {
                        return Err(BAD);
                    }
                    i += 1;
                }
                b'_' => {
                    let run = bytes[i..].iter().take_while(|&&b| b == b'_').count();
                    if run > 2 || !alnum(bytes[i + run]) {
                        return Err(BAD);
                    }
                    i += run;
                }
                b'-' => {
                    let run = bytes[i..].iter().take_while(|&&b| b == b'-').count();
                    if !alnum(bytes[i + run]) {
                        return Err(BAD);
                    }
                    i += run;
                }
                _ => return Err(BAD),
            }
        }
    }
    Ok(())
}

/// Checks a tag: a letter, digit or `_`, then up to 127 letters, digits, `_`, `.` or `-`.
pub(crate) fn check_tag(tag: &str) -> Result<(), &'static str> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err("invalid tag: use up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_with_and_without_the_scheme() {
        let r = Reference::parse("oci://localhost:5000/weft/router:v1").expect("parses");
        assert_eq!(r.registry().as_str(), "localhost:5000");
        assert_eq!(r.repository(), "weft/router");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.to_string(), "oci://localhost:5000/weft/router:v1");
        assert_eq!(r.manifest_reference(), "v1");

        let r = Reference::parse("registry.example/filters/authz").expect("parses");
        assert_eq!(r.tag(), Some("latest"), "the tag defaults to latest");

        let r = Reference::parse(&format!("oci://[::1]:5000/a@sha256:{HEX}")).expect("parses");
        assert_eq!(r.registry().host(), "[::1]");
        assert!(r.registry().is_loopback());
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));
        assert_eq!(r, Reference::parse(&r.to_string()).expect("round trips"));

        let r = Reference::parse(&format!("oci://host/a:v2@sha256:{HEX}")).expect("parses");
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"), "the digest wins");

        let r = Reference::parse("oci://weft-controller/weft/router:v1").expect("a host without dots");
        assert_eq!(r.registry().as_str(), "weft-controller");
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let reason = |input: &str| match Reference::parse(input) {
            Err(Error::InvalidReference { reason, .. }) => reason,
            other => panic!("{input}: {other:?}"),
        };
        assert!(reason("weft/router:v1").contains("no registry host"));
        assert!(reason("oci://localhost:5000").contains("no repository"));
        assert!(reason("oci://localhost:5000/").contains("no repository name"));
        assert!(reason("oci://localhost:5000/Weft").contains("repository name"));
        assert!(reason("oci://localhost:5000/a//b").contains("repository name"));
        assert!(reason("oci://localhost:5000/a-").contains("repository name"));
        assert!(reason("oci://localhost:5000/a___b").contains("repository name"));
        assert!(reason("oci://localhost:5000/a:").contains("invalid tag"));
        assert!(reason("oci://localhost:5000/a:.x").contains("invalid tag"));
        assert!(reason("oci://localhost:5000/a@sha256:abc").contains("digest"));
        assert!(reason("oci://localhost:99999/a").contains("port"));
        assert!(reason("oci://local_host/a").contains("host"));
        assert!(reason("https://localhost/a").contains("scheme"));
        assert!(reason("oci://[::1/a").contains("["));
    }

    #[test]
    fn repository_names_follow_the_distribution_grammar() {
        for good in ["a", "weft/router", "a.b/c_d/e__f/g-h/i---j", "0"] {
            assert_eq!(check_repository(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            ".a",
            "a.",
            "a..b",
            "a_",
            "a._b",
            "tags/../x",
            "a b",
        ] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_hosts_accept_the_scheme_and_a_trailing_slash() {
        assert_eq!(
            RegistryHost::parse("oci://127.0.0.1:5000/").expect("parses").as_str(),
            "127.0.0.1:5000"
        );
        assert_eq!(
            RegistryHost::parse("ghcr.example").expect("parses").host(),
            "ghcr.example"
        );
        assert!(RegistryHost::parse("http://x").is_err());
        assert!(RegistryHost::parse("").is_err());
    }
}
