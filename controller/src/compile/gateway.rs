//! Gateways: the servers of each Gateway grouped by port, and the VirtualServices bound to it
//! that route each port's hosts.

use std::collections::BTreeMap;

use super::names;
use super::virtual_service::{CompiledVs, Context, ContextRoutes};
use crate::diagnostics::{Diagnostic, ResourceRef};
use crate::resources::{Kind, Spec};
use crate::store::{Store, StoredResource};

/// A compiled Gateway.
#[derive(Debug)]
pub(crate) struct GatewayInfo {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) origin: String,
    pub(crate) selector: BTreeMap<String, String>,
    pub(crate) ports: Vec<GatewayPort>,
    /// The bound VirtualServices' routes in this gateway's context, by VirtualService index.
    pub(crate) routes: BTreeMap<usize, ContextRoutes>,
}

impl GatewayInfo {
    pub(crate) fn reference(&self) -> ResourceRef<'_> {
        ResourceRef {
            kind: Kind::Gateway.as_str(),
            namespace: &self.namespace,
            name: &self.name,
            origin: &self.origin,
        }
    }
}

/// One port of a gateway.
#[derive(Debug)]
pub(crate) struct GatewayPort {
    pub(crate) number: u16,
    /// TLS termination (HTTPS servers): their certificates, by server hosts.
    pub(crate) tls: Option<weft_api::ServerTls>,
    /// (domain, VirtualService index): hosts routed on this port, first VirtualService first.
    pub(crate) hosts: Vec<(String, usize)>,
    /// Domains answered with a redirect to `https` (`tls.httpsRedirect` on a plaintext
    /// server): those of `hosts` matched through such a server, and that server's hosts no
    /// VirtualService routes.
    pub(crate) redirects: Vec<String>,
    /// The port's servers pass TLS through (`tls.mode: PASSTHROUGH`): it serves no HTTP, and
    /// `sni_routes` route its connections.
    pub(crate) passthrough: bool,
    /// The bound VirtualServices' TLS routes, by server name, first VirtualService first.
    pub(crate) sni_routes: Vec<weft_api::SniRoute>,
}

/// A server host: an optional namespace restriction on the VirtualServices that may bind, and
/// the host.
struct ServerHost {
    namespace: Option<String>,
    host: String,
    /// The server redirects plaintext requests to `https`.
    https_redirect: bool,
}

pub(crate) fn build(store: &Store, vss: &[CompiledVs], diagnostics: &mut Vec<Diagnostic>) -> Vec<GatewayInfo> {
    let mut stored: Vec<&StoredResource> = store.of_kind(Kind::Gateway).collect();
    stored.sort_by(|a, b| (&a.origin, a.namespace(), a.name()).cmp(&(&b.origin, b.namespace(), b.name())));
    let mut gateways = Vec::new();
    for stored in stored {
        let Spec::Gateway(spec) = &stored.resource.spec else {
            continue;
        };
        let at = stored.reference();
        if spec.selector.is_empty() {
            diagnostics.push(Diagnostic::warning(
                &at,
                "spec.selector",
                "an empty selector selects no workload; the gateway runs nowhere",
            ));
        }
        let mut servers: BTreeMap<u16, Vec<ServerHost>> = BTreeMap::new();
        let mut port_tls: BTreeMap<u16, Option<weft_api::ServerTls>> = BTreeMap::new();
        let mut passthrough_ports: BTreeMap<u16, bool> = BTreeMap::new();
        for (i, server) in spec.servers.iter().enumerate() {
            let field = format!("spec.servers[{i}]");
            let protocol = server.port.protocol.to_ascii_uppercase();
            let mut https_redirect = false;
            let passthrough = matches!(protocol.as_str(), "HTTPS" | "TLS")
                && server.tls.as_ref().and_then(|t| t.mode.as_deref()) == Some("PASSTHROUGH");
            let tls = match protocol.as_str() {
                _ if passthrough => None,
                "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => {
                    https_redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect);
                    let terminates = server.tls.as_ref().is_some_and(|t| {
                        t.mode.is_some() || t.credential_name.is_some() || t.server_certificate.is_some()
                    });
                    if terminates {
                        diagnostics.push(Diagnostic::warning(
                            &at,
                            format!("{field}.tls"),
                            format!("a {protocol} server does not terminate TLS; ignored"),
                        ));
                    }
                    None
                }
                "HTTPS" => match server_tls(store, stored.namespace(), server, &field, &at, diagnostics) {
                    Some(tls) => Some(tls),
                    None => continue,
                },
                "TLS" => {
                    diagnostics.push(Diagnostic::warning(
                        &at,
                        format!("{field}.tls.mode"),
                        "a TLS server that terminates TLS forwards TCP, which is not supported (tls.mode PASSTHROUGH \
                         is); the server is ignored",
                    ));
                    continue;
                }
                other => {
                    diagnostics.push(Diagnostic::warning(
                        &at,
                        format!("{field}.port.protocol"),
                        format!("{other} servers are not supported (HTTP and HTTPS only); the server is ignored"),
                    ));
                    continue;
                }
            };
            if server.port.number == 0 {
                diagnostics.push(Diagnostic::error(
                    &at,
                    format!("{field}.port.number"),
                    "port 0; the server is ignored",
                ));
                continue;
            }
            // A port passes TLS through for all its servers, or for none.
            if *passthrough_ports.entry(server.port.number).or_insert(passthrough) != passthrough {
                diagnostics.push(Diagnostic::error(
                    &at,
                    format!("{field}.tls.mode"),
                    format!(
                        "port {} already has servers that {} TLS through; the server is ignored",
                        server.port.number,
                        if passthrough { "do not pass" } else { "pass" }
                    ),
                ));
                continue;
            }
            // One port terminates TLS for all its servers, or for none.
            let merged = match (port_tls.get(&server.port.number), tls) {
                (None, tls) => tls,
                (Some(None), None) => None,
                (Some(Some(existing)), Some(tls)) if existing.mode == tls.mode => {
                    let mut merged = existing.clone();
                    merged.certificates.extend(tls.certificates);
                    if merged.client_ca.is_none() {
                        merged.client_ca = tls.client_ca;
                    }
                    Some(merged)
                }
                (Some(_), _) => {
                    diagnostics.push(Diagnostic::error(
                        &at,
                        format!("{field}.tls"),
                        format!(
                            "port {} already has servers with other TLS settings (plaintext or another mode); the server is ignored",
                            server.port.number
                        ),
                    ));
                    continue;
                }
            };
            port_tls.insert(server.port.number, merged);
            let hosts = servers.entry(server.port.number).or_default();
            for (j, host) in server.hosts.iter().enumerate() {
                let (namespace, name) = match host.split_once('/') {
                    Some(("*", name)) => (None, name),
                    Some((".", name)) => (Some(stored.namespace().to_owned()), name),
                    Some((ns, name)) => (Some(ns.to_owned()), name),
                    None => (None, host.as_str()),
                };
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                match names::check_host(&name) {
                    Ok(()) => hosts.push(ServerHost {
                        namespace,
                        host: name,
                        https_redirect,
                    }),
                    Err(why) => diagnostics.push(Diagnostic::error(
                        &at,
                        format!("{field}.hosts[{j}]"),
                        format!("{why}; ignored"),
                    )),
                }
            }
        }

        let context = Context::Gateway(stored.namespace().to_owned(), stored.name().to_owned());
        let mut routes = BTreeMap::new();
        let mut ports: Vec<GatewayPort> = servers
            .keys()
            .map(|&number| GatewayPort {
                number,
                tls: port_tls.get(&number).cloned().flatten(),
                hosts: Vec::new(),
                redirects: Vec::new(),
                passthrough: passthrough_ports.get(&number).copied().unwrap_or(false),
                sni_routes: Vec::new(),
            })
            .collect();
        // Server names claimed on each passthrough port: (VirtualService, TLS route).
        let mut claimed: BTreeMap<(u16, String), (usize, usize)> = BTreeMap::new();
        // VirtualServices are in precedence order: the first to claim a host on a port keeps it.
        for (v, vs) in vss.iter().enumerate() {
            if !vs.contexts.contains(&context) {
                continue;
            }
            let vs_at = vs.reference();
            let mut bound = false;
            for port in &mut ports {
                let server_hosts = &servers[&port.number];
                // The server host `name` falls under, narrowed to the name when broader.
                let within = |name: &String| {
                    server_hosts
                        .iter()
                        .filter(|s| s.namespace.as_deref().is_none_or(|ns| ns == vs.namespace))
                        .find_map(|s| {
                            if names::host_matches(&s.host, name) {
                                Some((name.clone(), s.https_redirect))
                            } else if names::host_matches(name, &s.host) {
                                Some((s.host.clone(), s.https_redirect))
                            } else {
                                None
                            }
                        })
                };
                if port.passthrough {
                    for (r, route) in vs.tls_routes.iter().enumerate() {
                        let mut server_names: Vec<String> = Vec::new();
                        let blocks = route.blocks.iter().filter(|b| b.applies(&context, port.number));
                        for sni in blocks.flat_map(|b| &b.sni_hosts) {
                            let Some((name, _)) = within(sni) else { continue };
                            bound = true;
                            let owner = *claimed.entry((port.number, name.clone())).or_insert((v, r));
                            if owner == (v, r) {
                                if !server_names.contains(&name) {
                                    server_names.push(name);
                                }
                                continue;
                            }
                            let first = &vss[owner.0];
                            diagnostics.push(Diagnostic::error(
                                &vs_at,
                                format!("spec.tls[{}]", route.index),
                                format!(
                                    "server name {name} on port {} of Gateway {}/{} is already routed by TLS route \
                                     {} of VirtualService {}/{}; ignored here",
                                    port.number,
                                    stored.namespace(),
                                    stored.name(),
                                    first.tls_routes[owner.1].index,
                                    first.namespace,
                                    first.name
                                ),
                            ));
                        }
                        if !server_names.is_empty() {
                            port.sni_routes.push(weft_api::SniRoute {
                                server_names,
                                destinations: route
                                    .destinations
                                    .iter()
                                    .map(|(cluster, weight)| weft_api::SniDestination {
                                        cluster: cluster.clone(),
                                        subset: BTreeMap::new(),
                                        weight: *weight,
                                    })
                                    .collect(),
                            });
                        }
                    }
                    continue;
                }
                for (i, host) in &vs.hosts {
                    let Some((domain, redirect)) = within(host) else {
                        continue;
                    };
                    bound = true;
                    if let Some((_, owner)) = port.hosts.iter().find(|(d, _)| *d == domain) {
                        if *owner != v {
                            let first = &vss[*owner];
                            diagnostics.push(Diagnostic::error(
                                &vs_at,
                                format!("spec.hosts[{i}]"),
                                format!(
                                    "host {domain} on port {} of Gateway {}/{} is already routed by VirtualService \
                                     {}/{} (first by origin and name); ignored there",
                                    port.number,
                                    stored.namespace(),
                                    stored.name(),
                                    first.namespace,
                                    first.name
                                ),
                            ));
                        }
                        continue;
                    }
                    if redirect {
                        port.redirects.push(domain.clone());
                    }
                    port.hosts.push((domain, v));
                }
            }
            if bound {
                routes.insert(v, vs.context_routes(&context));
            } else {
                diagnostics.push(Diagnostic::warning(
                    &vs_at,
                    "spec.hosts",
                    format!(
                        "no host matches a server of Gateway {}/{}; nothing is routed there",
                        stored.namespace(),
                        stored.name()
                    ),
                ));
            }
        }
        // A redirecting server's hosts redirect even where no VirtualService routes them.
        for port in &mut ports {
            for server_host in servers[&port.number].iter().filter(|s| s.https_redirect) {
                let domain = &server_host.host;
                if !port.hosts.iter().any(|(d, _)| d == domain) && !port.redirects.contains(domain) {
                    port.redirects.push(domain.clone());
                }
            }
        }
        ports.retain(|p| !servers[&p.number].is_empty());
        gateways.push(GatewayInfo {
            namespace: stored.namespace().to_owned(),
            name: stored.name().to_owned(),
            origin: stored.origin.clone(),
            selector: spec.selector.clone(),
            ports,
            routes,
        });
    }
    gateways
}

/// An HTTPS server's TLS: its certificate (from `credentialName`, a Secret in the Gateway's
/// namespace, or from `serverCertificate`/`privateKey` files), for the server's hosts; `None`
/// (with a diagnostic) when it cannot be served.
fn server_tls(
    store: &Store,
    namespace: &str,
    server: &crate::resources::GatewayServer,
    field: &str,
    at: &ResourceRef<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<weft_api::ServerTls> {
    let error = |diagnostics: &mut Vec<Diagnostic>, path: &str, message: String| {
        diagnostics.push(Diagnostic::error(
            at,
            format!("{field}.tls{path}"),
            format!("{message}; the server is ignored"),
        ));
    };
    let Some(tls) = &server.tls else {
        error(diagnostics, "", "an HTTPS server needs tls settings".to_owned());
        return None;
    };
    let mode = match tls.mode.as_deref().unwrap_or("SIMPLE") {
        "SIMPLE" => weft_api::ServerTlsMode::Simple,
        "MUTUAL" => weft_api::ServerTlsMode::Mutual,
        // PASSTHROUGH servers are not terminated: the caller takes them apart.
        other @ ("AUTO_PASSTHROUGH" | "ISTIO_MUTUAL" | "OPTIONAL_MUTUAL") => {
            diagnostics.push(Diagnostic::warning(
                at,
                format!("{field}.tls.mode"),
                format!("{other} is not supported yet (SIMPLE, MUTUAL and PASSTHROUGH are); the server is ignored"),
            ));
            return None;
        }
        other => {
            error(diagnostics, ".mode", format!("unknown mode {other:?}"));
            return None;
        }
    };
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    let (cert_chain, private_key, mut client_ca) =
        match (&tls.credential_name, &tls.server_certificate, &tls.private_key) {
            (Some(name), _, _) => {
                let secret = |name: &str| match store.get(Kind::Secret, namespace, name).map(|s| &s.resource.spec) {
                    Some(Spec::Secret(secret)) => Some(secret.clone()),
                    _ => None,
                };
                let Some(found) = secret(name) else {
                    error(diagnostics, ".credentialName", format!("no Secret {namespace}/{name}"));
                    return None;
                };
                let value = |key: &str| found.value(key).transpose();
                match (value("tls.crt"), value("tls.key")) {
                    (Ok(Some(cert)), Ok(Some(key))) => {
                        let ca = match value("ca.crt") {
                            Ok(Some(ca)) => Some(ca),
                            _ => secret(&format!("{name}-cacert")).and_then(|s| s.value("ca.crt").and_then(Result::ok)),
                        };
                        (cert, key, ca)
                    }
                    (Err(why), _) | (_, Err(why)) => {
                        error(
                            diagnostics,
                            ".credentialName",
                            format!("Secret {namespace}/{name}: {why}"),
                        );
                        return None;
                    }
                    _ => {
                        error(
                            diagnostics,
                            ".credentialName",
                            format!("Secret {namespace}/{name} needs tls.crt and tls.key"),
                        );
                        return None;
                    }
                }
            }
            (None, Some(cert), Some(key)) => match (read(cert), read(key)) {
                (Ok(cert), Ok(key)) => (cert, key, None),
                (Err(why), _) | (_, Err(why)) => {
                    error(diagnostics, "", why);
                    return None;
                }
            },
            _ => {
                error(
                    diagnostics,
                    "",
                    "name a credentialName, or serverCertificate and privateKey".to_owned(),
                );
                return None;
            }
        };
    if let Some(path) = &tls.ca_certificates {
        match read(path) {
            Ok(ca) => client_ca = Some(ca),
            Err(why) => {
                error(diagnostics, ".caCertificates", why);
                return None;
            }
        }
    }
    if mode == weft_api::ServerTlsMode::Mutual && client_ca.is_none() {
        error(
            diagnostics,
            ".mode",
            "MUTUAL needs a client CA (ca.crt, a <credentialName>-cacert Secret, or caCertificates)".to_owned(),
        );
        return None;
    }
    if !cert_chain.contains("-----BEGIN CERTIFICATE-----") || !private_key.contains("PRIVATE KEY-----") {
        error(diagnostics, "", "the certificate or key is not PEM".to_owned());
        return None;
    }
    let server_names = server
        .hosts
        .iter()
        .map(|h| {
            h.rsplit_once('/')
                .map_or(h.as_str(), |(_, host)| host)
                .to_ascii_lowercase()
        })
        .filter(|h| h != "*")
        .collect();
    Some(weft_api::ServerTls {
        mode,
        certificates: vec![weft_api::TlsCertificate {
            cert_chain,
            private_key,
            server_names,
        }],
        client_ca: if mode == weft_api::ServerTlsMode::Mutual {
            client_ca
        } else {
            None
        },
    })
}
