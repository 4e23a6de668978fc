//! Policy evaluation, as Istio: any matching DENY policy denies; otherwise, when there is an
//! ALLOW policy, some ALLOW policy must match; otherwise the request is allowed. AUDIT
//! policies never decide; their matches are reported.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::config::{Condition, Config, Key, Operation, PolicyAction, Rule, Source, Values};
use crate::matcher::{Cidr, Pattern, any_matches, namespace_of, normalize_path, principal_name};

/// What the policies see of a request.
#[derive(Debug, Default, Clone)]
pub struct Request {
    /// `:method`.
    pub method: String,
    /// `:path` as sent (query included); normalized for matching.
    pub path: String,
    /// `:authority`.
    pub host: String,
    /// Request headers (lowercase names; repeated headers joined with `,`).
    pub headers: Vec<(String, String)>,
    /// The peer's address.
    pub source_ip: Option<IpAddr>,
    /// The local address of the connection.
    pub destination_ip: Option<IpAddr>,
    /// The local port of the connection.
    pub destination_port: Option<u16>,
    /// The peer's mTLS identity (`spiffe://...`), if any.
    pub source_principal: Option<String>,
    /// The request principal (`<iss>/<sub>`) from a verified JWT, if any.
    pub request_principal: Option<String>,
    /// The verified JWT's claims, if any.
    pub claims: Option<Map<String, Value>>,
    /// The TLS server name, if any.
    pub sni: Option<String>,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Why: the DENY policy that matched, the ALLOW policy that matched, or a fixed text.
    pub reason: String,
    /// Names (or indexes) of the AUDIT policies that matched.
    pub audited: Vec<String>,
}

/// A request seen through one policy evaluation (the normalized path computed once).
struct View<'a> {
    request: &'a Request,
    path: String,
}

fn policy_name(config: &Config, index: usize) -> String {
    match config.policies.get(index) {
        Some(policy) if !policy.name.is_empty() => policy.name.clone(),
        _ => format!("policies[{index}]"),
    }
}

/// Evaluates every policy of `config` on `request`.
pub fn evaluate(config: &Config, request: &Request) -> Decision {
    let view = View {
        request,
        path: normalize_path(&request.path),
    };
    let matches = |rules: &[Rule]| rules.iter().any(|rule| rule_matches(rule, &view));
    let mut audited = Vec::new();
    for (index, policy) in config.policies.iter().enumerate() {
        if policy.action == PolicyAction::Audit && matches(&policy.rules) {
            audited.push(policy_name(config, index));
        }
    }
    for (index, policy) in config.policies.iter().enumerate() {
        if policy.action == PolicyAction::Deny && matches(&policy.rules) {
            return Decision {
                allowed: false,
                reason: format!("denied by policy {}", policy_name(config, index)),
                audited,
            };
        }
    }
    let mut any_allow = false;
    for (index, policy) in config.policies.iter().enumerate() {
        if policy.action != PolicyAction::Allow {
            continue;
        }
        any_allow = true;
        if matches(&policy.rules) {
            return Decision {
                allowed: true,
                reason: format!("allowed by policy {}", policy_name(config, index)),
                audited,
            };
        }
    }
    Decision {
        allowed: !any_allow,
        reason: if any_allow {
            "no ALLOW policy matched".to_owned()
        } else {
            "no ALLOW policy".to_owned()
        },
        audited,
    }
}

fn rule_matches(rule: &Rule, view: &View<'_>) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|f| source_matches(&f.source, view.request)))
        && (rule.to.is_empty() || rule.to.iter().any(|t| operation_matches(&t.operation, view)))
        && rule.when.iter().all(|c| condition_matches(c, view))
}

/// A field's test: empty `positive` passes; else some pattern must match a value. Empty
/// `negative` passes; else no pattern may match. An absent value matches no pattern.
fn field<T: ?Sized>(
    positive_set: bool,
    negative_set: bool,
    value: Option<&T>,
    test: impl Fn(&T) -> (bool, bool),
) -> bool {
    let (positive, negative) = value.map_or((false, false), test);
    (!positive_set || positive) && (!negative_set || !negative)
}

fn strings(positive: &[Pattern], negative: &[Pattern], value: Option<&str>) -> bool {
    field(!positive.is_empty(), !negative.is_empty(), value, |v: &str| {
        (any_matches(positive, v), any_matches(negative, v))
    })
}

fn ips(positive: &[Cidr], negative: &[Cidr], ip: Option<IpAddr>) -> bool {
    field(
        !positive.is_empty(),
        !negative.is_empty(),
        ip.as_ref(),
        |ip: &IpAddr| {
            (
                positive.iter().any(|c| c.contains(*ip)),
                negative.iter().any(|c| c.contains(*ip)),
            )
        },
    )
}

fn source_matches(source: &Source, request: &Request) -> bool {
    let principal = request.source_principal.as_deref().filter(|p| !p.is_empty());
    strings(
        &source.principals,
        &source.not_principals,
        principal.map(principal_name),
    ) && strings(
        &source.request_principals,
        &source.not_request_principals,
        request.request_principal.as_deref(),
    ) && strings(
        &source.namespaces,
        &source.not_namespaces,
        principal.and_then(namespace_of),
    ) && ips(&source.ip_blocks, &source.not_ip_blocks, request.source_ip)
        && ips(
            &source.remote_ip_blocks,
            &source.not_remote_ip_blocks,
            request.source_ip,
        )
}

fn operation_matches(operation: &Operation, view: &View<'_>) -> bool {
    let request = view.request;
    let hosts = field(
        !operation.hosts.is_empty(),
        !operation.not_hosts.is_empty(),
        Some(request.host.as_str()),
        |host: &str| {
            (
                operation.hosts.iter().any(|p| p.matches_ignore_case(host)),
                operation.not_hosts.iter().any(|p| p.matches_ignore_case(host)),
            )
        },
    );
    let ports = field(
        !operation.ports.is_empty(),
        !operation.not_ports.is_empty(),
        request.destination_port.as_ref(),
        |port: &u16| {
            (
                operation.ports.iter().any(|p| p.0 == *port),
                operation.not_ports.iter().any(|p| p.0 == *port),
            )
        },
    );
    let paths = field(
        !operation.paths.is_empty(),
        !operation.not_paths.is_empty(),
        Some(view.path.as_str()),
        |path: &str| {
            (
                operation.paths.iter().any(|p| p.matches(path)),
                operation.not_paths.iter().any(|p| p.matches(path)),
            )
        },
    );
    hosts && ports && paths && strings(&operation.methods, &operation.not_methods, Some(&request.method))
}

/// The values a condition key has for a request (several for lists such as `aud`).
fn key_values(key: &Key, request: &Request) -> Vec<String> {
    let claim = |path: &[&str]| -> Vec<String> {
        let Some(claims) = &request.claims else {
            return Vec::new();
        };
        let mut parts = path.iter();
        let Some(mut value) = parts.next().and_then(|first| claims.get(*first)) else {
            return Vec::new();
        };
        for part in parts {
            match value.as_object().and_then(|o| o.get(*part)) {
                Some(inner) => value = inner,
                None => return Vec::new(),
            }
        }
        match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        }
    };
    let principal = request.source_principal.as_deref().filter(|p| !p.is_empty());
    match key {
        Key::Header(name) => {
            let values: Vec<&str> = request
                .headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            if values.is_empty() {
                Vec::new()
            } else {
                vec![values.join(",")]
            }
        }
        Key::SourceNamespace => principal
            .and_then(namespace_of)
            .map(str::to_owned)
            .into_iter()
            .collect(),
        Key::SourcePrincipal => principal.map(|p| principal_name(p).to_owned()).into_iter().collect(),
        Key::RequestPrincipal => request.request_principal.iter().cloned().collect(),
        Key::Audiences => claim(&["aud"]),
        Key::Presenter => claim(&["azp"]),
        Key::Claim(path) => claim(&path.iter().map(String::as_str).collect::<Vec<_>>()),
        Key::Sni => request.sni.iter().cloned().collect(),
        Key::SourceIp | Key::RemoteIp | Key::DestinationIp | Key::DestinationPort => Vec::new(),
    }
}

fn condition_matches(condition: &Condition, view: &View<'_>) -> bool {
    let request = view.request;
    let positive_set = !condition.values.is_empty();
    let negative_set = !condition.not_values.is_empty();
    let (positive, negative) = match (&condition.key, &condition.values, &condition.not_values) {
        (Key::SourceIp | Key::RemoteIp | Key::DestinationIp, Values::Ips(yes), Values::Ips(no)) => {
            let ip = if condition.key == Key::DestinationIp {
                request.destination_ip
            } else {
                request.source_ip
            };
            let test = |blocks: &[Cidr]| ip.is_some_and(|ip| blocks.iter().any(|b| b.contains(ip)));
            (test(yes), test(no))
        }
        (Key::DestinationPort, Values::Ports(yes), Values::Ports(no)) => {
            let test = |ports: &[crate::matcher::Port]| {
                request
                    .destination_port
                    .is_some_and(|port| ports.iter().any(|p| p.0 == port))
            };
            (test(yes), test(no))
        }
        (key, Values::Strings(yes), Values::Strings(no)) => {
            let values = key_values(key, request);
            let test = |patterns: &[Pattern]| values.iter().any(|v| any_matches(patterns, v));
            (test(yes), test(no))
        }
        // Values are typed by key when parsed: nothing else can occur.
        _ => return false,
    };
    (!positive_set || positive) && (!negative_set || !negative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        weft_sdk::parse_config::<Config>(json.as_bytes()).expect("valid config")
    }

    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            host: "svc.example.com".into(),
            source_ip: "127.0.0.1".parse().ok(),
            destination_ip: "127.0.0.1".parse().ok(),
            destination_port: Some(8080),
            ..Request::default()
        }
    }

    fn allowed(config: &Config, request: &Request) -> bool {
        evaluate(config, request).allowed
    }

    #[test]
    fn no_policies_allow_everything() {
        let decision = evaluate(&config(""), &request("GET", "/"));
        assert!(decision.allowed);
        assert_eq!(decision.reason, "no ALLOW policy");
    }

    #[test]
    fn allow_nothing_allow_all_and_deny_all() {
        let allow_nothing = config(r#"{"policies": [{"name": "allow-nothing"}]}"#);
        let decision = evaluate(&allow_nothing, &request("GET", "/"));
        assert!(!decision.allowed);
        assert_eq!(decision.reason, "no ALLOW policy matched");
        assert!(allowed(
            &config(r#"{"policies": [{"rules": [{}]}]}"#),
            &request("GET", "/")
        ));
        assert!(!allowed(
            &config(r#"{"policies": [{"action": "DENY", "rules": [{}]}]}"#),
            &request("GET", "/")
        ));
        assert!(
            allowed(&config(r#"{"policies": [{"action": "DENY"}]}"#), &request("GET", "/")),
            "a DENY policy without rules matches nothing"
        );
        // DENY wins over ALLOW.
        let both = config(r#"{"policies": [{"rules": [{}]}, {"name": "no", "action": "DENY", "rules": [{}]}]}"#);
        assert_eq!(evaluate(&both, &request("GET", "/")).reason, "denied by policy no");
    }

    #[test]
    fn operations_match_paths_methods_hosts_and_ports() {
        let deny_admin =
            config(r#"{"policies": [{"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}]}"#);
        assert!(!allowed(&deny_admin, &request("GET", "/admin/users")));
        assert!(
            !allowed(&deny_admin, &request("GET", "/public/../admin")),
            "normalized first"
        );
        assert!(!allowed(&deny_admin, &request("GET", "/%61dmin")), "normalized first");
        assert!(allowed(&deny_admin, &request("GET", "/public?next=/admin")));

        let allow_reads = config(
            r#"{"policies": [{"rules": [{"to": [
                {"operation": {"methods": ["GET", "HEAD"], "not_paths": ["/private/{**}"]}},
                {"operation": {"methods": ["POST"], "paths": ["/api/{*}/items"], "hosts": ["SVC.example.com"], "ports": ["8080"]}}
            ]}]}]}"#,
        );
        assert!(allowed(&allow_reads, &request("GET", "/x")));
        assert!(!allowed(&allow_reads, &request("GET", "/private/a/b")));
        assert!(!allowed(&allow_reads, &request("DELETE", "/x")));
        assert!(allowed(&allow_reads, &request("POST", "/api/v1/items")));
        assert!(!allowed(&allow_reads, &request("POST", "/api/v1/other")));
        let mut other_port = request("POST", "/api/v1/items");
        other_port.destination_port = Some(9090);
        assert!(!allowed(&allow_reads, &other_port));
        let mut other_host = request("POST", "/api/v1/items");
        other_host.host = "evil.example.com".into();
        assert!(!allowed(&allow_reads, &other_host));
    }

    #[test]
    fn sources_match_ip_blocks_principals_and_namespaces() {
        let local_only = config(
            r#"{"policies": [{"rules": [{"from": [{"source": {"ip_blocks": ["127.0.0.0/8"], "not_ip_blocks": ["127.0.0.2"]}}]}]}]}"#,
        );
        assert!(allowed(&local_only, &request("GET", "/")));
        let mut ten = request("GET", "/");
        ten.source_ip = "10.1.2.3".parse().ok();
        assert!(!allowed(&local_only, &ten));
        let mut excluded = request("GET", "/");
        excluded.source_ip = "127.0.0.2".parse().ok();
        assert!(!allowed(&local_only, &excluded));
        let mut unknown = request("GET", "/");
        unknown.source_ip = None;
        assert!(!allowed(&local_only, &unknown));

        let mesh = config(
            r#"{"policies": [{"rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]},
                {"from": [{"source": {"namespaces": ["prod*"], "not_principals": ["*/sa/intruder"]}}]}
            ]}]}"#,
        );
        let with_peer = |peer: Option<&str>| {
            let mut r = request("GET", "/");
            r.source_principal = peer.map(str::to_owned);
            r
        };
        assert!(allowed(
            &mesh,
            &with_peer(Some("spiffe://cluster.local/ns/default/sa/sleep"))
        ));
        assert!(!allowed(
            &mesh,
            &with_peer(Some("spiffe://cluster.local/ns/default/sa/other"))
        ));
        assert!(allowed(
            &mesh,
            &with_peer(Some("spiffe://cluster.local/ns/prod-eu/sa/api"))
        ));
        assert!(!allowed(
            &mesh,
            &with_peer(Some("spiffe://cluster.local/ns/prod/sa/intruder"))
        ));
        assert!(!allowed(&mesh, &with_peer(None)), "no mTLS: no principal, no namespace");

        // Negative fields match requests without the attribute (Envoy's `not` of a failed match).
        let not_sleep = config(r#"{"policies": [{"rules": [{"from": [{"source": {"not_principals": ["*"]}}]}]}]}"#);
        assert!(allowed(&not_sleep, &with_peer(None)));
        assert!(!allowed(&not_sleep, &with_peer(Some("spiffe://td/ns/a/sa/b"))));
    }

    #[test]
    fn request_principals_and_claims_come_from_the_jwt() {
        let jwt_required = config(
            r#"{"policies": [{"rules": [{"from": [{"source": {"request_principals": ["*"]}}],
               "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]},
                        {"key": "request.auth.audiences", "values": ["weft-*"]},
                        {"key": "request.auth.claims[address][country]", "not_values": ["XX"]}]}]}]}"#,
        );
        let mut alice = request("GET", "/");
        alice.request_principal = Some("https://issuer.weft.test/alice".into());
        let claims = r#"{"groups": ["admins", "dev"], "aud": "weft-api", "address": {"country": "FR"}}"#;
        alice.claims = serde_json::from_str(claims).ok();
        assert!(allowed(&jwt_required, &alice));
        let mut bob = alice.clone();
        bob.claims = serde_json::from_str(r#"{"groups": ["dev"], "aud": ["x", "weft-api"]}"#).ok();
        assert!(!allowed(&jwt_required, &bob));
        let mut blocked = alice.clone();
        blocked.claims =
            serde_json::from_str(r#"{"groups": "admins", "aud": "weft-api", "address": {"country": "XX"}}"#).ok();
        assert!(!allowed(&jwt_required, &blocked));
        let mut anonymous = alice.clone();
        anonymous.request_principal = None;
        anonymous.claims = None;
        assert!(!allowed(&jwt_required, &anonymous));

        let by_principal = config(
            r#"{"policies": [{"rules": [{"from": [{"source": {"request_principals": ["https://issuer.weft.test/*"],
               "not_request_principals": ["*/mallory"]}}]}]}]}"#,
        );
        assert!(allowed(&by_principal, &alice));
        let mut mallory = alice.clone();
        mallory.request_principal = Some("https://issuer.weft.test/mallory".into());
        assert!(!allowed(&by_principal, &mallory));
    }

    #[test]
    fn conditions_on_headers_ips_ports_and_mtls_attributes() {
        let policy = |when: &str| config(&format!(r#"{{"policies": [{{"rules": [{{"when": [{when}]}}]}}]}}"#));
        let mut r = request("GET", "/");
        r.headers = vec![
            ("x-env".into(), "prod".into()),
            ("x-multi".into(), "a".into()),
            ("x-multi".into(), "b".into()),
        ];
        assert!(allowed(
            &policy(r#"{"key": "request.headers[X-Env]", "values": ["prod"]}"#),
            &r
        ));
        assert!(!allowed(
            &policy(r#"{"key": "request.headers[x-env]", "values": ["dev"]}"#),
            &r
        ));
        assert!(allowed(
            &policy(r#"{"key": "request.headers[x-multi]", "values": ["a,b"]}"#),
            &r
        ));
        assert!(!allowed(
            &policy(r#"{"key": "request.headers[x-none]", "values": ["*"]}"#),
            &r
        ));
        assert!(allowed(
            &policy(r#"{"key": "request.headers[x-none]", "not_values": ["*"]}"#),
            &r
        ));
        assert!(allowed(
            &policy(r#"{"key": "source.ip", "values": ["127.0.0.0/8"]}"#),
            &r
        ));
        assert!(!allowed(
            &policy(r#"{"key": "remote.ip", "values": ["10.0.0.0/8"]}"#),
            &r
        ));
        assert!(allowed(
            &policy(r#"{"key": "destination.ip", "not_values": ["10.0.0.0/8"]}"#),
            &r
        ));
        assert!(allowed(
            &policy(r#"{"key": "destination.port", "values": ["8080"]}"#),
            &r
        ));
        assert!(!allowed(
            &policy(r#"{"key": "destination.port", "not_values": ["8080"]}"#),
            &r
        ));
        assert!(!allowed(
            &policy(r#"{"key": "source.namespace", "values": ["default"]}"#),
            &r
        ));
        assert!(!allowed(&policy(r#"{"key": "connection.sni", "values": ["*"]}"#), &r));
        r.source_principal = Some("spiffe://cluster.local/ns/default/sa/sleep".into());
        assert!(allowed(
            &policy(r#"{"key": "source.namespace", "values": ["default"]}"#),
            &r
        ));
        assert!(allowed(
            &policy(r#"{"key": "source.principal", "values": ["cluster.local/ns/default/sa/sleep"]}"#),
            &r
        ));
        // values and not_values together: both must hold.
        let both = policy(r#"{"key": "request.headers[x-env]", "values": ["pr*"], "not_values": ["prod"]}"#);
        assert!(!allowed(&both, &r));
    }

    #[test]
    fn audit_policies_are_reported_but_never_decide() {
        let audit = config(
            r#"{"policies": [{"name": "watch-admin", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}]}"#,
        );
        let decision = evaluate(&audit, &request("GET", "/admin"));
        assert!(decision.allowed);
        assert_eq!(decision.audited, vec!["watch-admin".to_owned()]);
        assert!(evaluate(&audit, &request("GET", "/")).audited.is_empty());
    }
}
