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
    /// (domain, VirtualService index): hosts routed on this port, first VirtualService first.
    pub(crate) hosts: Vec<(String, usize)>,
}

/// A server host: an optional namespace restriction on the VirtualServices that may bind, and
/// the host.
struct ServerHost {
    namespace: Option<String>,
    host: String,
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
        for (i, server) in spec.servers.iter().enumerate() {
            let field = format!("spec.servers[{i}]");
            let protocol = server.port.protocol.to_ascii_uppercase();
            match protocol.as_str() {
                "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => {}
                "HTTPS" | "TLS" => {
                    diagnostics.push(Diagnostic::warning(
                        &at,
                        format!("{field}.port.protocol"),
                        format!("{protocol} servers are not supported yet (TLS lands with mesh identity); the server is ignored"),
                    ));
                    continue;
                }
                other => {
                    diagnostics.push(Diagnostic::warning(
                        &at,
                        format!("{field}.port.protocol"),
                        format!("{other} servers are not supported (HTTP only); the server is ignored"),
                    ));
                    continue;
                }
            }
            if server.port.number == 0 {
                diagnostics.push(Diagnostic::error(
                    &at,
                    format!("{field}.port.number"),
                    "port 0; the server is ignored",
                ));
                continue;
            }
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
                    Ok(()) => hosts.push(ServerHost { namespace, host: name }),
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
                hosts: Vec::new(),
            })
            .collect();
        // VirtualServices are in precedence order: the first to claim a host on a port keeps it.
        for (v, vs) in vss.iter().enumerate() {
            if !vs.contexts.contains(&context) {
                continue;
            }
            let vs_at = vs.reference();
            let mut bound = false;
            for port in &mut ports {
                let server_hosts = &servers[&port.number];
                for (i, host) in &vs.hosts {
                    let Some(domain) = server_hosts
                        .iter()
                        .filter(|s| s.namespace.as_deref().is_none_or(|ns| ns == vs.namespace))
                        .find_map(|s| {
                            if names::host_matches(&s.host, host) {
                                Some(host.clone())
                            } else if names::host_matches(host, &s.host) {
                                Some(s.host.clone())
                            } else {
                                None
                            }
                        })
                    else {
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
