//! The service registry: workload instances (Workloads and WorkloadEntries), Kubernetes
//! Services and ServiceEntries as hosts with ports, and each port's endpoints.
//!
//! Label selection goes through an index by (namespace, label, value), so building every
//! Service's endpoints costs the matching instances, not services × workloads.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use weft_api::{Endpoint, UpstreamProtocol};

use super::names;
use crate::diagnostics::{Diagnostic, ResourceRef};
use crate::resources::{IntOrString, Kind, ServiceEntryPort, ServicePort, SidecarPorts, Spec};
use crate::store::{Store, StoredResource};

/// A workload instance that can be an endpoint: a Workload or a WorkloadEntry.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) origin: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) ip: IpAddr,
    /// A Workload's application ports (in written order) or a WorkloadEntry's ports by
    /// service port name.
    pub(crate) ports: Vec<(String, u16)>,
    /// A Workload's sidecar.
    pub(crate) sidecar: Option<SidecarPorts>,
    pub(crate) weight: u32,
    pub(crate) service_account: String,
}

impl Instance {
    fn port_named(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p)
    }
}

/// A Kubernetes Service.
#[derive(Debug, Clone)]
pub(crate) struct ServiceInfo {
    pub(crate) selector: BTreeMap<String, String>,
    /// The HTTP ports compiled (others were reported).
    pub(crate) ports: Vec<ServicePort>,
}

/// Where a host comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostSource {
    Service,
    ServiceEntry,
}

/// A host clients can address: a Service's FQDN or a ServiceEntry host.
#[derive(Debug, Clone)]
pub(crate) struct HostEntry {
    pub(crate) fqdn: String,
    pub(crate) namespace: String,
    /// The Service's name (Kubernetes Services only: short names apply).
    pub(crate) service_name: Option<String>,
    pub(crate) source: HostSource,
    /// The defining resource, for diagnostics.
    pub(crate) owner: String,
    pub(crate) ports: Vec<HostPort>,
    /// TLS ports (`tls`, `https`): relayed as they are by passthrough Gateway servers, never
    /// routed by sidecars. Their endpoints are the application's ports, not a sidecar's.
    pub(crate) tls_ports: Vec<HostPort>,
}

impl HostEntry {
    /// The port requests without a port in the authority go to: 80 if the host has it,
    /// else its first port.
    pub(crate) fn default_port(&self) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.number == 80)
            .or_else(|| self.ports.first())
            .map(|p| p.number)
    }

    /// The names a sidecar in `client_namespace` accepts for this host, without ports.
    pub(crate) fn names(&self, client_namespace: &str) -> Vec<String> {
        match &self.service_name {
            Some(name) => names::service_names(name, &self.namespace, client_namespace),
            None => vec![self.fqdn.clone()],
        }
    }
}

/// What a Service or ServiceEntry port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortKind {
    /// HTTP, routed by sidecars and HTTP Gateway servers.
    Http(UpstreamProtocol),
    /// TLS the mesh does not terminate: for passthrough Gateway servers.
    Tls,
}

/// One port of a host, with its endpoints.
#[derive(Debug, Clone)]
pub(crate) struct HostPort {
    pub(crate) number: u16,
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) endpoints: Vec<Endpoint>,
}

/// Everything addressable.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Workloads then WorkloadEntries, each by (namespace, name).
    pub(crate) instances: Vec<Instance>,
    by_label: HashMap<(String, String, String), Vec<usize>>,
    by_namespace: HashMap<String, Vec<usize>>,
    /// Kubernetes Services by (namespace, name).
    pub(crate) services: Vec<ServiceInfo>,
    /// Services by (namespace, first selector label, value).
    services_by_label: HashMap<(String, String, String), Vec<usize>>,
    /// Hosts by FQDN.
    pub(crate) hosts: Vec<HostEntry>,
    host_index: HashMap<String, usize>,
}

impl Registry {
    pub(crate) fn build(store: &Store, diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut registry = Registry::default();
        for stored in store.of_kind(Kind::Workload).chain(store.of_kind(Kind::WorkloadEntry)) {
            if let Some(instance) = instance(stored, diagnostics) {
                registry.add_instance(instance);
            }
        }

        let mut hosts: BTreeMap<String, HostEntry> = BTreeMap::new();
        for stored in store.of_kind(Kind::Service) {
            let Spec::Service(spec) = &stored.resource.spec else {
                continue;
            };
            let at = stored.reference();
            if let Some(kind) = spec.service_type.as_deref().filter(|t| *t != "ClusterIP") {
                diagnostics.push(Diagnostic::warning(
                    &at,
                    "spec.type",
                    format!("type {kind} is not supported yet; compiled as ClusterIP"),
                ));
            }
            if spec.selector.is_empty() {
                diagnostics.push(Diagnostic::warning(
                    &at,
                    "spec.selector",
                    "no selector: the Service has no endpoints (Endpoints objects are not read); requests get 503",
                ));
            }
            let mut accepted: Vec<(usize, &ServicePort, PortKind)> = Vec::new();
            for (i, port) in spec.ports.iter().enumerate() {
                let field = format!("spec.ports[{i}]");
                if port.port == 0 {
                    diagnostics.push(Diagnostic::error(&at, format!("{field}.port"), "port 0 is not a port"));
                    continue;
                }
                if accepted.iter().any(|(_, p, _)| p.port == port.port) {
                    diagnostics.push(Diagnostic::error(
                        &at,
                        format!("{field}.port"),
                        format!("port {} is listed twice; this one is ignored", port.port),
                    ));
                    continue;
                }
                match service_port_protocol(port) {
                    Ok(protocol) => accepted.push((i, port, protocol)),
                    Err(why) => {
                        diagnostics.push(Diagnostic::warning(&at, field, format!("{why}; the port is ignored")))
                    }
                }
            }
            let index = registry.services.len();
            let selected = registry.select(&stored.resource.metadata.namespace, &spec.selector);
            let mut host_ports = Vec::with_capacity(accepted.len());
            let mut tls_ports = Vec::new();
            for &(i, port, kind) in &accepted {
                let field = format!("spec.ports[{i}]");
                let mut endpoints = Vec::with_capacity(selected.len());
                for &instance in &selected {
                    let inst = &registry.instances[instance];
                    match service_endpoint_port(inst, port, kind) {
                        Ok(number) => push_endpoint(&mut endpoints, inst, number, &at, &field, diagnostics),
                        Err(why) => diagnostics.push(Diagnostic::warning(&at, format!("{field}.targetPort"), why)),
                    }
                }
                let (list, protocol) = match kind {
                    PortKind::Http(protocol) => (&mut host_ports, protocol),
                    PortKind::Tls => (&mut tls_ports, UpstreamProtocol::Http1),
                };
                list.push(HostPort {
                    number: port.port,
                    protocol,
                    endpoints,
                });
            }
            let ports = accepted
                .iter()
                .filter(|(_, _, kind)| *kind != PortKind::Tls)
                .map(|(_, p, _)| (*p).clone())
                .collect();
            registry.services.push(ServiceInfo {
                selector: spec.selector.clone(),
                ports,
            });
            if let Some((k, v)) = spec.selector.iter().next() {
                registry
                    .services_by_label
                    .entry((stored.namespace().to_owned(), k.clone(), v.clone()))
                    .or_default()
                    .push(index);
            }
            let fqdn = names::service_fqdn(stored.name(), stored.namespace());
            hosts.insert(
                fqdn.clone(),
                HostEntry {
                    fqdn,
                    namespace: stored.namespace().to_owned(),
                    service_name: Some(stored.name().to_owned()),
                    source: HostSource::Service,
                    owner: stored.name().to_owned(),
                    ports: host_ports,
                    tls_ports,
                },
            );
        }

        // ServiceEntries in precedence order (origin, then name): the first claims a host.
        let mut entries: Vec<&StoredResource> = store.of_kind(Kind::ServiceEntry).collect();
        entries.sort_by(|a, b| (&a.origin, a.namespace(), a.name()).cmp(&(&b.origin, b.namespace(), b.name())));
        for stored in entries {
            registry.add_service_entry(stored, &mut hosts, diagnostics);
        }

        registry.hosts = hosts.into_values().collect();
        registry.host_index = registry
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.fqdn.clone(), i))
            .collect();
        registry
    }

    fn add_instance(&mut self, instance: Instance) {
        let index = self.instances.len();
        for (k, v) in &instance.labels {
            self.by_label
                .entry((instance.namespace.clone(), k.clone(), v.clone()))
                .or_default()
                .push(index);
        }
        self.by_namespace
            .entry(instance.namespace.clone())
            .or_default()
            .push(index);
        self.instances.push(instance);
    }

    /// Instances of `namespace` carrying every label of `selector`, in registry order. An
    /// empty selector selects nothing.
    pub(crate) fn select(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<usize> {
        let mut smallest: Option<&Vec<usize>> = None;
        for (k, v) in selector {
            let key = (namespace.to_owned(), k.clone(), v.clone());
            match self.by_label.get(&key) {
                None => return Vec::new(),
                Some(list) if smallest.is_none_or(|s| list.len() < s.len()) => smallest = Some(list),
                Some(_) => {}
            }
        }
        let Some(candidates) = smallest else { return Vec::new() };
        candidates
            .iter()
            .copied()
            .filter(|&i| labels_match(selector, &self.instances[i].labels))
            .collect()
    }

    /// Kubernetes Services of `namespace` whose selector the labels satisfy.
    pub(crate) fn services_selecting(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<usize> {
        let mut found = Vec::new();
        for (k, v) in labels {
            if let Some(list) = self
                .services_by_label
                .get(&(namespace.to_owned(), k.clone(), v.clone()))
            {
                found.extend(
                    list.iter()
                        .copied()
                        .filter(|&s| labels_match(&self.services[s].selector, labels)),
                );
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The host with this FQDN.
    pub(crate) fn host(&self, fqdn: &str) -> Option<&HostEntry> {
        self.host_index.get(fqdn).map(|&i| &self.hosts[i])
    }

    pub(crate) fn host_index(&self, fqdn: &str) -> Option<usize> {
        self.host_index.get(fqdn).copied()
    }

    /// Whether `fqdn` is a Kubernetes Service.
    pub(crate) fn is_service(&self, fqdn: &str) -> bool {
        self.host(fqdn).is_some_and(|h| h.source == HostSource::Service)
    }

    fn add_service_entry(
        &mut self,
        stored: &StoredResource,
        hosts: &mut BTreeMap<String, HostEntry>,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let Spec::ServiceEntry(spec) = &stored.resource.spec else {
            return;
        };
        let at = stored.reference();
        if spec.export_to.iter().any(|e| e != "*") {
            diagnostics.push(Diagnostic::warning(
                &at,
                "spec.exportTo",
                "not supported yet for ServiceEntries; the hosts are visible in every namespace",
            ));
        }
        let resolution = spec.resolution.as_deref().unwrap_or("NONE");
        let mut ports = Vec::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            match entry_port_protocol(port.protocol.as_deref()) {
                Ok(protocol)
                    if port.number != 0
                        && !ports
                            .iter()
                            .any(|(p, _): &(&ServiceEntryPort, PortKind)| p.number == port.number) =>
                {
                    ports.push((port, protocol));
                }
                Ok(_) => diagnostics.push(Diagnostic::error(
                    &at,
                    format!("{field}.number"),
                    "port 0 or a port listed twice; ignored",
                )),
                Err(why) => diagnostics.push(Diagnostic::warning(&at, field, format!("{why}; the port is ignored"))),
            }
        }
        match resolution {
            "STATIC" | "DNS" | "DNS_ROUND_ROBIN" => {}
            "NONE" => diagnostics.push(Diagnostic::warning(
                &at,
                "spec.resolution",
                "NONE (passthrough to the original destination) is not supported yet; requests go to the \
                 listed endpoints, and get 503 without any",
            )),
            other => diagnostics.push(Diagnostic::error(
                &at,
                "spec.resolution",
                format!("unknown resolution {other:?}; treated as STATIC"),
            )),
        }
        if matches!(resolution, "DNS" | "DNS_ROUND_ROBIN")
            && spec.endpoints.is_empty()
            && spec.workload_selector.is_none()
        {
            diagnostics.push(Diagnostic::warning(
                &at,
                "spec.resolution",
                "resolving the hosts by DNS is not supported yet (endpoints are ip:port); requests get 503",
            ));
        }

        // Endpoints: the listed ones (IP addresses only), then selected instances.
        let mut listed = Vec::new();
        for (i, endpoint) in spec.endpoints.iter().enumerate() {
            match endpoint.address.parse::<IpAddr>() {
                Ok(ip) => listed.push(Instance {
                    kind: Kind::WorkloadEntry,
                    namespace: stored.namespace().to_owned(),
                    name: format!("{}[{i}]", stored.name()),
                    origin: stored.origin.clone(),
                    labels: endpoint.labels.clone(),
                    ip,
                    ports: endpoint.ports.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    sidecar: None,
                    weight: endpoint.weight.unwrap_or(1).max(1),
                    service_account: endpoint.service_account.clone().unwrap_or_default(),
                }),
                Err(_) => diagnostics.push(Diagnostic::warning(
                    &at,
                    format!("spec.endpoints[{i}].address"),
                    format!(
                        "{:?} is not an IP address; hostname endpoints are not supported yet (the endpoint is ignored)",
                        endpoint.address
                    ),
                )),
            }
        }
        let selected = spec
            .workload_selector
            .as_ref()
            .map(|s| self.select(stored.namespace(), &s.labels))
            .unwrap_or_default();

        let mut host_ports = Vec::new();
        let mut tls_ports = Vec::new();
        for &(port, kind) in &ports {
            let mut endpoints = Vec::new();
            for inst in listed.iter().chain(selected.iter().map(|&i| &self.instances[i])) {
                let number = match inst.sidecar {
                    // A sidecar's inbound listener speaks HTTP: TLS goes to the application.
                    Some(sidecar) if kind != PortKind::Tls => sidecar.inbound,
                    _ => inst.port_named(&port.name).or(port.target_port).unwrap_or(port.number),
                };
                push_endpoint(&mut endpoints, inst, number, &at, "spec.endpoints", diagnostics);
            }
            let (list, protocol) = match kind {
                PortKind::Http(protocol) => (&mut host_ports, protocol),
                PortKind::Tls => (&mut tls_ports, UpstreamProtocol::Http1),
            };
            list.push(HostPort {
                number: port.number,
                protocol,
                endpoints,
            });
        }

        for (i, host) in spec.hosts.iter().enumerate() {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            if let Err(why) = names::check_host(&host) {
                diagnostics.push(Diagnostic::error(&at, format!("spec.hosts[{i}]"), why));
                continue;
            }
            if let Some(existing) = hosts.get(&host) {
                diagnostics.push(Diagnostic::error(
                    &at,
                    format!("spec.hosts[{i}]"),
                    format!(
                        "host {host} is already defined by {} {}/{}; ignored here",
                        match existing.source {
                            HostSource::Service => "Service",
                            HostSource::ServiceEntry => "ServiceEntry",
                        },
                        existing.namespace,
                        existing.owner
                    ),
                ));
                continue;
            }
            hosts.insert(
                host.clone(),
                HostEntry {
                    fqdn: host,
                    namespace: stored.namespace().to_owned(),
                    service_name: None,
                    source: HostSource::ServiceEntry,
                    owner: stored.name().to_owned(),
                    ports: host_ports.clone(),
                    tls_ports: tls_ports.clone(),
                },
            );
        }
    }
}

/// Whether `labels` carry every label of `selector`.
pub(crate) fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn instance(stored: &StoredResource, diagnostics: &mut Vec<Diagnostic>) -> Option<Instance> {
    let at = stored.reference();
    let metadata = &stored.resource.metadata;
    let (address, ports, sidecar, weight, service_account, labels) = match &stored.resource.spec {
        Spec::Workload(w) => (
            &w.address,
            w.ports.clone(),
            w.sidecar,
            1,
            w.service_account.clone(),
            metadata.labels.clone(),
        ),
        Spec::WorkloadEntry(e) => (
            &e.address,
            e.ports.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            None,
            e.weight.unwrap_or(1).max(1),
            e.service_account.clone(),
            // A WorkloadEntry's own labels select it; metadata labels are not the workload's.
            e.labels.clone(),
        ),
        _ => return None,
    };
    let Ok(ip) = address.parse::<IpAddr>() else {
        diagnostics.push(Diagnostic::error(
            &at,
            "spec.address",
            format!("{address:?} is not an IP address; the workload is ignored"),
        ));
        return None;
    };
    if let Some((name, _)) = ports.iter().find(|(_, p)| *p == 0) {
        diagnostics.push(Diagnostic::error(
            &at,
            format!("spec.ports.{name}"),
            "port 0 is not a port; the workload is ignored",
        ));
        return None;
    }
    if let Some(sidecar) = sidecar {
        let problem = if sidecar.inbound == 0 || sidecar.outbound == 0 {
            Some("sidecar ports must not be 0".to_owned())
        } else if sidecar.inbound == sidecar.outbound && (ip.is_loopback() || ip.is_unspecified()) {
            Some(format!("inbound and outbound both use port {}", sidecar.inbound))
        } else if let Some((name, _)) = ports.iter().find(|(_, p)| *p == sidecar.inbound) {
            Some(format!(
                "the inbound port {} is also the application port {name:?}",
                sidecar.inbound
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            diagnostics.push(Diagnostic::error(
                &at,
                "spec.sidecar",
                format!("{problem}; the workload is ignored"),
            ));
            return None;
        }
    }
    Some(Instance {
        kind: stored.resource.kind(),
        namespace: metadata.namespace.clone(),
        name: metadata.name.clone(),
        origin: stored.origin.clone(),
        labels,
        ip,
        ports,
        sidecar,
        weight,
        service_account: service_account.unwrap_or_else(|| "default".to_owned()),
    })
}

/// The protocol of a Service port: `appProtocol`, else the name's prefix (`http2-web`,
/// `https-api`), else HTTP (Istio would sniff it). UDP/SCTP and TCP-level protocols but TLS
/// are refused.
pub(crate) fn service_port_protocol(port: &ServicePort) -> Result<PortKind, String> {
    if let Some(transport) = port.protocol.as_deref().filter(|p| !p.eq_ignore_ascii_case("TCP")) {
        return Err(format!("protocol {transport} is not supported (HTTP over TCP only)"));
    }
    let declared = port
        .app_protocol
        .clone()
        .or_else(|| port.name.split('-').next().filter(|p| !p.is_empty()).map(str::to_owned));
    match declared {
        None => Ok(PortKind::Http(UpstreamProtocol::Http1)),
        Some(p) => app_protocol(&p.to_ascii_lowercase()),
    }
}

fn app_protocol(protocol: &str) -> Result<PortKind, String> {
    match protocol {
        "http2" | "grpc" | "h2c" | "kubernetes.io/h2c" => Ok(PortKind::Http(UpstreamProtocol::Http2)),
        "tls" | "https" => Ok(PortKind::Tls),
        "tcp" | "mongo" | "mysql" | "redis" | "udp" | "kubernetes.io/ws" | "kubernetes.io/wss" => Err(format!(
            "protocol {protocol} is not supported yet (HTTP, and TLS for passthrough gateways)"
        )),
        // `http`, `grpc-web` and names that name no protocol (Istio would sniff HTTP).
        _ => Ok(PortKind::Http(UpstreamProtocol::Http1)),
    }
}

fn entry_port_protocol(protocol: Option<&str>) -> Result<PortKind, String> {
    match protocol.map(str::to_ascii_uppercase).as_deref() {
        None | Some("HTTP" | "GRPC-WEB") => Ok(PortKind::Http(UpstreamProtocol::Http1)),
        Some("HTTP2" | "GRPC") => Ok(PortKind::Http(UpstreamProtocol::Http2)),
        Some("TLS" | "HTTPS") => Ok(PortKind::Tls),
        Some(other) => Err(format!(
            "protocol {other} is not supported yet (HTTP, and TLS for passthrough gateways)"
        )),
    }
}

/// The port an instance serves a Service port on: its sidecar's inbound port, else the
/// target port (a number, or a name among the instance's ports; a WorkloadEntry's ports
/// map service port names).
/// The port of `instance` behind Service port `port`: its sidecar's inbound port for HTTP,
/// else the target port.
fn service_endpoint_port(instance: &Instance, port: &ServicePort, kind: PortKind) -> Result<u16, String> {
    if let Some(sidecar) = instance.sidecar.filter(|_| kind != PortKind::Tls) {
        return Ok(sidecar.inbound);
    }
    let mapped = if instance.kind == Kind::WorkloadEntry && !port.name.is_empty() {
        instance.port_named(&port.name)
    } else {
        None
    };
    match (&port.target_port, mapped) {
        (_, Some(number)) => Ok(number),
        (None, None) => Ok(port.port),
        (Some(IntOrString::Int(number)), None) => Ok(*number),
        (Some(IntOrString::String(name)), None) => instance.port_named(name).ok_or_else(|| {
            format!(
                "{} {}/{} has no port named {name:?}; it is not an endpoint of port {}",
                instance.kind, instance.namespace, instance.name, port.port
            )
        }),
    }
}

fn push_endpoint(
    endpoints: &mut Vec<Endpoint>,
    instance: &Instance,
    port: u16,
    at: &ResourceRef<'_>,
    field: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if port == 0 {
        return;
    }
    let address = SocketAddr::new(instance.ip, port).to_string();
    if endpoints.iter().any(|e| e.address == address) {
        diagnostics.push(Diagnostic::warning(
            at,
            field,
            format!(
                "{} {}/{} has the same address {address} as another endpoint; listed once",
                instance.kind, instance.namespace, instance.name
            ),
        ));
        return;
    }
    endpoints.push(Endpoint {
        address,
        labels: instance.labels.clone(),
        weight: instance.weight,
        mesh: false,
    });
}
