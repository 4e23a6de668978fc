//! The compiler: a pure function from the [`Store`] to a [`Mesh`], which yields each
//! sidecar's [`Snapshot`] cheaply.
//!
//! [`compile`] does the shared work once per intent change: the registry of hosts and
//! endpoints, every DestinationRule's clusters, every VirtualService's routes, gateways and
//! user filters, with a [`Diagnostic`] for everything it cannot honour. [`Mesh::snapshot_for`]
//! then assembles one node's listeners from those parts; the outbound route table and
//! first-party filters of a namespace are built on first use and shared by its sidecars.
//! No I/O, no clocks; output order is deterministic.
//!
//! The choices (names, subsets, filter order, per-route retries, defaults) are documented in
//! `docs/intent.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use weft_api::{Cluster, Endpoint, FilterConfig, Listener, ListenerKind, ListenerProtocol, Snapshot, WasmModule};

use crate::diagnostics::Diagnostic;
use crate::resources::{IntOrString, Kind, SidecarPorts};
use crate::store::Store;

mod extensions;
mod gateway;
mod names;
mod policy;
mod registry;
mod router_config;
mod routing;
mod security;
mod virtual_service;

use extensions::{Extensions, ListenerClass};
use gateway::GatewayInfo;
use registry::{Registry, labels_match};
use routing::{ListenerRouting, VhostPlan};
use virtual_service::{CompiledVs, Context, ContextRoutes};

/// The first-party filter modules the compiler emits (given by the controller).
#[derive(Debug, Clone, PartialEq)]
pub struct SystemFilters {
    /// `filters/router`: VirtualService routing.
    pub router: WasmModule,
    /// `filters/retry`: Istio's HTTPRetry.
    pub retry: WasmModule,
    /// `filters/fault`: Istio's HTTPFaultInjection.
    pub fault: WasmModule,
}

/// A module url pinned to its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedModule {
    /// The url sidecars fetch (for OCI, by digest: `oci://registry/repo@sha256:...`).
    pub url: String,
    /// The module's sha256, lowercase hex.
    pub sha256: String,
}

/// What the compiler needs besides the store.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// SPIFFE trust domain (`cluster.local`); for workload identity, not used by routing.
    /// Service names live under the cluster domain `cluster.local`.
    pub trust_domain: String,
    /// The first-party filter modules.
    pub system_filters: SystemFilters,
    /// Module urls as written (see [`Store::module_urls`]) → pinned, or why not.
    pub modules: BTreeMap<String, Result<PinnedModule, String>>,
}

/// Who a sidecar says it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeIdentity {
    /// Node id: the name of its Workload, if it has one.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// One node's compiled configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The snapshot; `version` is left empty for the controller to set.
    pub snapshot: Snapshot,
    /// The node's Workload as `namespace/name`, when it has one.
    pub workload: Option<String>,
}

/// One node's snapshot as the config stream sends it (see [`Mesh::encoded_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The parts, in order: concatenated, their data are the encoded `weft.v1.Snapshot`,
    /// version included.
    pub parts: Vec<EncodedPart>,
    /// Its version.
    pub version: String,
    /// The node's Workload as `namespace/name`, when it has one.
    pub workload: Option<String>,
}

impl Encoded {
    /// The whole encoded `weft.v1.Snapshot`: every part's data, concatenated.
    pub fn bytes(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|p| p.data.iter().copied()).collect()
    }
}

/// One part of an encoded snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPart {
    /// A digest of `data` (24 hex digits of its SHA-256); empty for the version part, which
    /// is always sent.
    pub digest: Arc<str>,
    /// The part's encoding (shared between the responses that carry it).
    pub data: prost::bytes::Bytes,
}

impl EncodedPart {
    fn new(data: Vec<u8>) -> Self {
        use sha2::Digest as _;
        Self {
            digest: crate::hex(&sha2::Sha256::digest(&data)[..12]).into(),
            data: data.into(),
        }
    }
}

/// The encoded parts of a snapshot shared by the nodes of a namespace.
struct SharedPart {
    /// The outbound route table (sidecars only), then each service's clusters.
    parts: Vec<EncodedPart>,
    /// A digest of the parts' digests.
    digest: [u8; 32],
}

/// A node's own parts of its snapshot.
struct NodeParts {
    /// Listeners, route tables (not the outbound one), the node's clusters.
    snapshot: Snapshot,
    /// Whether it has an outbound listener (whose route table is shared).
    outbound: bool,
    namespace: String,
    workload: Option<String>,
}

/// A Workload resource, as known to the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownWorkload {
    /// Namespace.
    pub namespace: String,
    /// Name (the node id of its sidecar).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
    /// IP address.
    pub address: IpAddr,
    /// Application ports by name, in written order.
    pub ports: Vec<(String, u16)>,
    /// The sidecar's ports, if it has one.
    pub sidecar: Option<SidecarPorts>,
    /// Where it was defined.
    pub origin: String,
}

impl KnownWorkload {
    /// The identity its sidecar presents.
    pub fn node(&self) -> NodeIdentity {
        NodeIdentity {
            id: self.name.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// Sidecar ports of a node without a Workload resource.
pub const DEFAULT_SIDECAR: SidecarPorts = SidecarPorts {
    inbound: 15006,
    outbound: 15001,
};

/// The compiled intent: shared parts, assembled per node by [`Mesh::snapshot_for`].
pub struct Mesh {
    diagnostics: Vec<Diagnostic>,
    system: SystemFilters,
    registry: Registry,
    /// Every outbound cluster, by name.
    clusters: Vec<Arc<Cluster>>,
    vss: Vec<CompiledVs>,
    /// Mesh-context routes by VirtualService index (`None`: not bound to the mesh).
    mesh_routes: Vec<Option<ContextRoutes>>,
    /// Mesh VirtualServices by exact host, in precedence order.
    exact_vs: HashMap<String, Vec<usize>>,
    /// Mesh VirtualServices by wildcard host, most specific first, then precedence.
    wildcard_vs: Vec<(String, usize)>,
    /// Hosts of mesh VirtualServices that are not registry hosts, with their VirtualServices.
    other_hosts: BTreeMap<String, Vec<usize>>,
    gateways: Vec<GatewayInfo>,
    extensions: Extensions,
    workloads: Vec<KnownWorkload>,
    workload_index: HashMap<(String, String), usize>,
    /// Outbound routing of the namespaces the intent names (that have resources, or that
    /// VirtualServices export to or match as `sourceNamespace`), built on first use.
    outbound: BTreeMap<String, OnceLock<Arc<ListenerRouting>>>,
    /// Outbound routing of every other namespace: it is the same for all of them.
    outbound_elsewhere: OnceLock<Arc<ListenerRouting>>,
    /// PeerAuthentications: how each sidecar's inbound listener takes mutual TLS.
    peer: security::PeerAuthentications,
    /// Encoded shared parts by (namespace, with the outbound route table).
    shared: std::sync::Mutex<HashMap<(String, bool), Arc<SharedPart>>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("hosts", &self.registry.hosts.len())
            .field("clusters", &self.clusters.len())
            .field("virtual_services", &self.vss.len())
            .field("gateways", &self.gateways.len())
            .field("workloads", &self.workloads.len())
            .field("diagnostics", &self.diagnostics.len())
            .finish()
    }
}

/// Compiles the store. Store diagnostics (parsing, duplicates) are not repeated in
/// [`Mesh::diagnostics`]; see [`Store::diagnostics`].
pub fn compile(store: &Store, options: &CompileOptions) -> Mesh {
    let mut diagnostics = Vec::new();
    let registry = Registry::build(store, &mut diagnostics);
    let peer = security::PeerAuthentications::build(store, &mut diagnostics);
    let trust_domain = if options.trust_domain.is_empty() {
        "cluster.local"
    } else {
        options.trust_domain.as_str()
    };
    // Sidecars that accept mutual TLS (PeerAuthentication not DISABLE), by the address
    // peers send to: their inbound listener.
    let mut mesh_endpoints = policy::MeshEndpoints::default();
    for instance in &registry.instances {
        if let Some(sidecar) = instance.sidecar
            && peer.mode(&instance.namespace, &instance.labels) != weft_api::MtlsMode::Disable
        {
            mesh_endpoints.identities.insert(
                SocketAddr::new(instance.ip, sidecar.inbound).to_string(),
                security::spiffe_id(trust_domain, &instance.namespace, &instance.service_account),
            );
        }
    }
    let mut clusters = BTreeMap::new();
    let policies = policy::build(store, &registry, &mesh_endpoints, &mut clusters, &mut diagnostics);
    let vss = virtual_service::compile_all(store, &registry, &policies, &mut clusters, &mut diagnostics);

    // Mesh routing: which VirtualService routes each host on sidecars.
    let mut mesh_routes = Vec::with_capacity(vss.len());
    let mut exact_vs: HashMap<String, Vec<usize>> = HashMap::new();
    let mut wildcard_vs: Vec<(String, usize)> = Vec::new();
    let mut other_hosts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (v, vs) in vss.iter().enumerate() {
        if !vs.contexts.contains(&Context::Mesh) {
            mesh_routes.push(None);
            continue;
        }
        mesh_routes.push(Some(vs.context_routes(&Context::Mesh)));
        for (i, host) in &vs.hosts {
            let claimants = if host.starts_with('*') {
                wildcard_vs.push((host.clone(), v));
                other_hosts.entry(host.clone()).or_default()
            } else if registry.host(host).is_some() {
                exact_vs.entry(host.clone()).or_default()
            } else {
                other_hosts.entry(host.clone()).or_default()
            };
            // A conflict: an earlier VirtualService for this host seen by some of the same
            // namespaces.
            if let Some(&first) = claimants.iter().find(|&&c| c != v && vss[c].overlaps(vs)) {
                let winner = &vss[first];
                diagnostics.push(Diagnostic::error(
                    &vs.reference(),
                    format!("spec.hosts[{i}]"),
                    format!(
                        "conflict: host {host} is already routed on sidecars by VirtualService {}/{} \
                         (first by origin and name); this one is ignored for the host wherever both are visible",
                        winner.namespace, winner.name
                    ),
                ));
            }
            if !claimants.contains(&v) {
                claimants.push(v);
            }
        }
    }
    wildcard_vs.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.len()));

    let gateways = gateway::build(store, &vss, &mut diagnostics);
    let extensions = Extensions::build(store, options, &mut diagnostics);

    let mut workloads = Vec::new();
    for instance in registry.instances.iter().filter(|i| i.kind == Kind::Workload) {
        workloads.push(KnownWorkload {
            namespace: instance.namespace.clone(),
            name: instance.name.clone(),
            labels: instance.labels.clone(),
            service_account: instance.service_account.clone(),
            address: instance.ip,
            ports: instance.ports.clone(),
            sidecar: instance.sidecar,
            origin: instance.origin.clone(),
        });
    }
    // A gateway port on a sidecar's port: the gateway listener is left out there.
    for gateway in gateways.iter().filter(|g| !g.selector.is_empty()) {
        for workload in &workloads {
            let Some(sidecar) = workload.sidecar else { continue };
            if !labels_match(&gateway.selector, &workload.labels) {
                continue;
            }
            for port in &gateway.ports {
                let clash = port.number == sidecar.inbound
                    || (port.number == sidecar.outbound && workload.address == IpAddr::V4(Ipv4Addr::LOCALHOST));
                if clash {
                    diagnostics.push(Diagnostic::error(
                        &gateway.reference(),
                        "spec.servers",
                        format!(
                            "port {} is a sidecar port of Workload {}/{}; the gateway does not listen there",
                            port.number, workload.namespace, workload.name
                        ),
                    ));
                }
            }
        }
    }
    let workload_index = workloads
        .iter()
        .enumerate()
        .map(|(i, w)| ((w.namespace.clone(), w.name.clone()), i))
        .collect();

    // The namespaces whose outbound routing may differ from any other's: they have
    // Services (short names), or VirtualServices are exported to them or match them.
    let mut namespaces: BTreeSet<String> = store.resources().map(|r| r.namespace().to_owned()).collect();
    for vs in &vss {
        namespaces.extend(vs.export_to.iter().flatten().cloned());
        for route in &vs.routes {
            namespaces.extend(route.blocks.iter().filter_map(|b| b.source_namespace.clone()));
        }
    }
    diagnostics.sort();
    diagnostics.dedup();
    Mesh {
        diagnostics,
        system: options.system_filters.clone(),
        registry,
        clusters: clusters.into_values().map(Arc::new).collect(),
        vss,
        mesh_routes,
        exact_vs,
        wildcard_vs,
        other_hosts,
        gateways,
        extensions,
        workloads,
        workload_index,
        outbound: namespaces.into_iter().map(|ns| (ns, OnceLock::new())).collect(),
        outbound_elsewhere: OnceLock::new(),
        peer,
        shared: Default::default(),
    }
}

/// A node's workload: from its Workload resource, or made from what the node says.
struct NodeWorkload {
    namespace: String,
    labels: BTreeMap<String, String>,
    ip: IpAddr,
    ports: Vec<(String, u16)>,
    sidecar: Option<SidecarPorts>,
    known: Option<String>,
}

impl Mesh {
    /// What the compiler could not honour, sorted. Store diagnostics are separate.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The Workload resources, by namespace and name.
    pub fn workloads(&self) -> &[KnownWorkload] {
        &self.workloads
    }

    /// One node's snapshot (version empty).
    ///
    /// The node is the Workload named `node.id` in `node.namespace`, else a workload made from
    /// the node's labels at `127.0.0.1` with the default sidecar ports (`15001` outbound,
    /// `15006` inbound) and the application ports the Services selecting it target. A sidecar
    /// gets an `outbound` listener (`127.0.0.1:<outbound>`, the application's `HTTP_PROXY`) and
    /// an `inbound` listener (`<address>:<inbound>`); a workload selected by Gateways gets a
    /// `gateway` listener per server port (and sidecar listeners only when its Workload
    /// declares a sidecar).
    pub fn snapshot_for(&self, node: &NodeIdentity) -> Compiled {
        let parts = self.node_parts(node);
        let mut route_tables = Vec::with_capacity(parts.snapshot.route_tables.len() + 1);
        if parts.outbound {
            route_tables.push(self.outbound_table(&parts.namespace));
        }
        route_tables.extend(parts.snapshot.route_tables);
        let mut clusters = self.clusters.clone();
        clusters.extend(parts.snapshot.clusters);
        Compiled {
            snapshot: Snapshot {
                listeners: parts.snapshot.listeners,
                route_tables,
                clusters,
                ..Snapshot::default()
            },
            workload: parts.workload,
        }
    }

    /// One node's snapshot encoded for the config stream, with `security`, and its version.
    ///
    /// The encoding is a list of protobuf parts which, concatenated, decode as one
    /// `weft.v1.Snapshot` (protobuf merges concatenated messages: repeated fields append): the
    /// version; the node's own listeners, route tables, clusters and `security`; then the parts
    /// shared by every node of the namespace, encoded once per compiled intent: the outbound
    /// route table, and the clusters of each service (those whose names end in the same
    /// host), so that a sidecar is sent again only what changed (see `weft_api::parts`). The
    /// version is a digest of the content, so equal snapshots get equal versions across
    /// controller restarts.
    ///
    /// Without `secrets` (a node that did not prove it is its workload) the private keys of
    /// its listeners' TLS certificates are left out: a gateway then cannot serve HTTPS and
    /// NACKs the snapshot, rather than its keys going to whoever asks with its name.
    pub fn encoded_for(&self, node: &NodeIdentity, security: &weft_api::Security, secrets: bool) -> Encoded {
        use prost::Message as _;
        use sha2::Digest as _;
        let parts = self.node_parts(node);
        let mut own = parts.snapshot;
        own.security = security.clone();
        if !secrets {
            for tls in own.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
                for certificate in &mut tls.certificates {
                    certificate.private_key.clear();
                }
            }
        }
        let own = EncodedPart::new(weft_api::pb::Snapshot::from(&own).encode_to_vec());
        let shared = self.shared_part(&parts.namespace, parts.outbound);
        let mut digest = sha2::Sha256::new();
        digest.update(own.digest.as_bytes());
        digest.update(shared.digest);
        let version = crate::hex(&digest.finalize()[..6]);
        let head = weft_api::pb::Snapshot {
            version: version.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut encoded = Vec::with_capacity(shared.parts.len() + 2);
        encoded.push(EncodedPart {
            digest: Arc::from(""),
            data: head.into(),
        });
        encoded.push(own);
        encoded.extend(shared.parts.iter().cloned());
        Encoded {
            parts: encoded,
            version,
            workload: parts.workload,
        }
    }

    /// The outbound route table of `namespace`'s sidecars.
    fn outbound_table(&self, namespace: &str) -> weft_api::RouteTable {
        let mut table = self.outbound_routing(namespace).table.clone();
        table.name = "outbound".to_owned();
        table
    }

    /// The encoded part every node of `namespace` shares: every outbound cluster, and (for
    /// sidecars) the outbound route table. Built once per namespace and compiled intent.
    fn shared_part(&self, namespace: &str, outbound: bool) -> Arc<SharedPart> {
        use prost::Message as _;
        use sha2::Digest as _;
        let key = (namespace.to_owned(), outbound);
        if let Some(part) = self.shared.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return part.clone();
        }
        // Each part is encoded a cluster at a time: a repeated field's encoding is its
        // elements' one after the other, so the concatenation of one-element messages is the
        // encoding of one message holding them all. Converting every cluster at once (a clone
        // and a protobuf copy of all of them beside the bytes) peaked at 130 MiB for 14 MB of
        // bytes at 10,000 services, while the first sidecar of each new intent waited.
        let encode = |piece: Snapshot, bytes: &mut Vec<u8>| {
            let mut wire = weft_api::pb::Snapshot::from(&piece);
            wire.limits = None;
            wire.encode(bytes).expect("a Vec grows as needed");
        };
        let mut parts = Vec::new();
        if outbound {
            let table = Snapshot {
                route_tables: vec![self.outbound_table(namespace)],
                ..Snapshot::default()
            };
            let mut bytes = Vec::new();
            encode(table, &mut bytes);
            parts.push(EncodedPart::new(bytes));
        }
        // One part per service: the clusters whose names end in the same host (`outbound|
        // 9080|v1|reviews.default.svc.cluster.local`). Endpoints and subsets change per
        // service, so an edit sends each sidecar that service's part only.
        let mut by_host: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for cluster in &self.clusters {
            let host = names::cluster_host(&cluster.name);
            let piece = Snapshot {
                clusters: vec![cluster.clone()],
                ..Snapshot::default()
            };
            encode(piece, by_host.entry(host).or_default());
        }
        parts.extend(by_host.into_values().map(EncodedPart::new));
        let mut digest = sha2::Sha256::new();
        for part in &parts {
            digest.update(part.digest.as_bytes());
        }
        let part = Arc::new(SharedPart {
            parts,
            digest: digest.finalize().into(),
        });
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert(part)
            .clone()
    }

    /// One node's own parts: its listeners, its route tables but the shared outbound one,
    /// its inbound clusters.
    fn node_parts(&self, node: &NodeIdentity) -> NodeParts {
        let workload = self.node_workload(node);
        let gateways: Vec<&GatewayInfo> = self
            .gateways
            .iter()
            .filter(|g| !g.selector.is_empty() && labels_match(&g.selector, &workload.labels))
            .collect();
        let sidecar = match (&workload.known, workload.sidecar) {
            (Some(_), sidecar) => sidecar,
            (None, _) if !gateways.is_empty() => None,
            (None, sidecar) => sidecar,
        };

        let mut snapshot = Snapshot::default();
        let mut addresses = BTreeSet::new();
        if let Some(sidecar) = sidecar {
            let routing = self.outbound_routing(&workload.namespace);
            let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sidecar.outbound);
            let user = self
                .extensions
                .filters_for(&workload.namespace, &workload.labels, ListenerClass::Outbound);
            add_listener(
                &mut snapshot,
                &mut addresses,
                "outbound",
                address,
                ListenerKind::Outbound,
                &routing,
                user,
            );
            let address = SocketAddr::new(workload.ip, sidecar.inbound);
            let (routing, clusters, aliases) = self.inbound(&workload);
            let mtls = self.peer.listener(&workload.namespace, &workload.labels, &aliases);
            let user = self
                .extensions
                .filters_for(&workload.namespace, &workload.labels, ListenerClass::Inbound);
            if add_listener(
                &mut snapshot,
                &mut addresses,
                "inbound",
                address,
                ListenerKind::Inbound,
                &routing,
                user,
            ) {
                if let Some(listener) = snapshot.listeners.last_mut() {
                    listener.mtls = Some(mtls);
                }
                snapshot.clusters.extend(clusters.into_iter().map(Arc::new));
            }
        }
        let mut ports: BTreeMap<u16, Vec<(&GatewayInfo, usize)>> = BTreeMap::new();
        for gateway in gateways {
            for (p, port) in gateway.ports.iter().enumerate() {
                ports.entry(port.number).or_default().push((gateway, p));
            }
        }
        for (number, servers) in ports {
            let name = format!("gateway-{number}");
            // Gateways sharing a port: the first decides whether it passes TLS through; the
            // others' servers of the other kind are left out there.
            if servers
                .first()
                .is_some_and(|(gateway, p)| gateway.ports[*p].passthrough)
            {
                // A server name routed by two gateways goes the first one's way.
                let mut seen = BTreeSet::new();
                let sni_routes = servers
                    .iter()
                    .map(|(gateway, p)| &gateway.ports[*p])
                    .filter(|port| port.passthrough)
                    .flat_map(|port| port.sni_routes.iter())
                    .filter_map(|route| {
                        let server_names: Vec<String> = route
                            .server_names
                            .iter()
                            .filter(|n| seen.insert(n.as_str()))
                            .cloned()
                            .collect();
                        (!server_names.is_empty()).then(|| weft_api::SniRoute {
                            server_names,
                            destinations: route.destinations.clone(),
                        })
                    })
                    .collect();
                let address = SocketAddr::new(workload.ip, number);
                if addresses.insert(address) {
                    snapshot.listeners.push(Listener {
                        name,
                        address: address.to_string(),
                        kind: ListenerKind::Gateway,
                        protocol: ListenerProtocol::TlsPassthrough,
                        route_table: String::new(),
                        filters: Vec::new(),
                        mtls: None,
                        tls: None,
                        sni_routes,
                    });
                }
                continue;
            }
            let servers: Vec<_> = servers.into_iter().filter(|(g, p)| !g.ports[*p].passthrough).collect();
            let mut plans = Vec::new();
            // The port's TLS: the first gateway's settings, with the certificates of every
            // gateway on the port that terminates TLS the same way.
            let mut tls: Option<weft_api::ServerTls> = None;
            for (gateway, p) in &servers {
                match (&mut tls, &gateway.ports[*p].tls) {
                    (None, Some(theirs)) => tls = Some(theirs.clone()),
                    (Some(ours), Some(theirs)) if ours.mode == theirs.mode => {
                        ours.certificates.extend(theirs.certificates.iter().cloned());
                    }
                    _ => {}
                }
            }
            let plan = |domain: &String, vs, https_redirect| VhostPlan {
                name: domain.clone(),
                domains: vec![domain.clone()],
                router_hosts: vec![domain.clone()],
                port: Some(number),
                fallback: None,
                vs,
                https_redirect,
            };
            for (gateway, p) in servers {
                let port = &gateway.ports[p];
                for (domain, v) in &port.hosts {
                    let Some(routes) = gateway.routes.get(v) else { continue };
                    let https_redirect = port.redirects.contains(domain);
                    let vs = (!https_redirect).then_some((&self.vss[*v], routes));
                    plans.push(plan(domain, vs, https_redirect));
                }
                // Redirecting hosts no VirtualService routes.
                for domain in port
                    .redirects
                    .iter()
                    .filter(|d| !port.hosts.iter().any(|(h, _)| h == *d))
                {
                    plans.push(plan(domain, None, true));
                }
            }
            let routing = routing::build(&name, &plans, &workload.namespace, &self.system);
            let user = self
                .extensions
                .filters_for(&workload.namespace, &workload.labels, ListenerClass::Gateway);
            if add_listener(
                &mut snapshot,
                &mut addresses,
                &name,
                SocketAddr::new(workload.ip, number),
                ListenerKind::Gateway,
                &routing,
                user,
            ) && let Some(listener) = snapshot.listeners.last_mut()
            {
                listener.tls = tls;
            }
        }
        NodeParts {
            snapshot,
            outbound: sidecar.is_some(),
            namespace: workload.namespace,
            workload: workload.known,
        }
    }

    fn node_workload(&self, node: &NodeIdentity) -> NodeWorkload {
        if let Some(&i) = self.workload_index.get(&(node.namespace.clone(), node.id.clone())) {
            let w = &self.workloads[i];
            return NodeWorkload {
                namespace: w.namespace.clone(),
                labels: w.labels.clone(),
                ip: w.address,
                ports: w.ports.clone(),
                sidecar: w.sidecar,
                known: Some(format!("{}/{}", w.namespace, w.name)),
            };
        }
        // No Workload: the application ports are the numeric target ports of the Services
        // selecting the node.
        let mut ports: Vec<(String, u16)> = Vec::new();
        for s in self.registry.services_selecting(&node.namespace, &node.labels) {
            for port in &self.registry.services[s].ports {
                let target = match &port.target_port {
                    None => Some(port.port),
                    Some(IntOrString::Int(n)) => Some(*n),
                    Some(IntOrString::String(_)) => None,
                };
                if let Some(target) = target.filter(|t| *t != 0 && !ports.iter().any(|(_, p)| p == t)) {
                    let name = if port.name.is_empty() {
                        target.to_string()
                    } else {
                        port.name.clone()
                    };
                    ports.push((name, target));
                }
            }
        }
        NodeWorkload {
            namespace: node.namespace.clone(),
            labels: node.labels.clone(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports,
            sidecar: Some(DEFAULT_SIDECAR),
            known: None,
        }
    }

    /// The outbound listener's routing for sidecars of `namespace`, built once per namespace
    /// the intent names and once for all others.
    fn outbound_routing(&self, namespace: &str) -> Arc<ListenerRouting> {
        let cell = self.outbound.get(namespace).unwrap_or(&self.outbound_elsewhere);
        cell.get_or_init(|| Arc::new(self.build_outbound(namespace))).clone()
    }

    /// The mesh VirtualService routing `fqdn` for sidecars of `namespace`.
    fn mesh_vs(&self, fqdn: &str, namespace: &str) -> Option<usize> {
        let visible = |v: &usize| self.vss[*v].visible_in(namespace);
        self.exact_vs
            .get(fqdn)
            .and_then(|list| list.iter().copied().find(visible))
            .or_else(|| {
                self.wildcard_vs
                    .iter()
                    .filter(|(pattern, _)| names::host_matches(pattern, fqdn))
                    .map(|(_, v)| *v)
                    .find(visible)
            })
    }

    fn build_outbound(&self, namespace: &str) -> ListenerRouting {
        let mut plans = Vec::with_capacity(self.registry.hosts.len() + self.other_hosts.len());
        for host in &self.registry.hosts {
            let names = host.names(namespace);
            let vs = self
                .mesh_vs(&host.fqdn, namespace)
                .and_then(|v| self.mesh_routes[v].as_ref().map(|r| (&self.vss[v], r)));
            let default_port = host.default_port();
            for (i, port) in host.ports.iter().enumerate() {
                let mut domains: Vec<String> = names.iter().map(|n| format!("{n}:{}", port.number)).collect();
                if Some(port.number) == default_port {
                    domains.extend(names.iter().cloned());
                }
                plans.push(VhostPlan {
                    name: format!("{}:{}", host.fqdn, port.number),
                    domains,
                    // The router matches hosts without ports: one router virtual host per host.
                    router_hosts: if i == 0 && vs.is_some() {
                        names.clone()
                    } else {
                        Vec::new()
                    },
                    port: Some(port.number),
                    fallback: Some(names::outbound_cluster(Some(port.number), "", &host.fqdn)),
                    vs,
                    https_redirect: false,
                });
            }
        }
        for (host, candidates) in &self.other_hosts {
            let Some(v) = candidates.iter().copied().find(|v| self.vss[*v].visible_in(namespace)) else {
                continue;
            };
            let Some(routes) = self.mesh_routes[v].as_ref() else {
                continue;
            };
            plans.push(VhostPlan {
                name: host.clone(),
                domains: vec![host.clone()],
                router_hosts: vec![host.clone()],
                port: None,
                fallback: None,
                vs: Some((&self.vss[v], routes)),
                https_redirect: false,
            });
        }
        routing::build("outbound", &plans, namespace, &self.system)
    }

    /// The inbound route table and clusters: a virtual host per application port (by the
    /// authority's port, which is the port a Service targets or a port a Service maps to it),
    /// and a default virtual host for the first port.
    /// Also returns the Service ports mapping to each application port.
    fn inbound(&self, workload: &NodeWorkload) -> (ListenerRouting, Vec<Cluster>, BTreeMap<u16, Vec<u16>>) {
        let services = self.registry.services_selecting(&workload.namespace, &workload.labels);
        let mut aliases: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
        let mut http2: BTreeSet<u16> = BTreeSet::new();
        for &s in &services {
            for port in &self.registry.services[s].ports {
                let target = match &port.target_port {
                    None => Some(port.port),
                    Some(IntOrString::Int(n)) => Some(*n),
                    Some(IntOrString::String(name)) => workload.ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p),
                };
                let Some(target) = target else { continue };
                if port.port != target {
                    aliases.entry(target).or_default().push(port.port);
                }
                if registry::service_port_protocol(port)
                    == Ok(registry::PortKind::Http(weft_api::UpstreamProtocol::Http2))
                {
                    http2.insert(target);
                }
            }
        }
        let mut table = weft_api::RouteTable {
            name: "inbound".to_owned(),
            virtual_hosts: Vec::new(),
        };
        let mut clusters = Vec::new();
        let mut domains_used = BTreeSet::new();
        for (_, port) in &workload.ports {
            let cluster = names::inbound_cluster(*port);
            if clusters.iter().any(|c: &Cluster| c.name == cluster) {
                continue;
            }
            let mut domains = Vec::new();
            for p in std::iter::once(port).chain(aliases.get(port).into_iter().flatten()) {
                let domain = format!("*:{p}");
                if domains_used.insert(domain.clone()) {
                    domains.push(domain);
                }
            }
            if !domains.is_empty() {
                table.virtual_hosts.push(inbound_vhost(&cluster, domains));
            }
            clusters.push(inbound_cluster(cluster, workload.ip, *port, http2.contains(port)));
        }
        if let Some((_, first)) = workload.ports.first() {
            table
                .virtual_hosts
                .push(inbound_vhost(&names::inbound_cluster(*first), vec!["*".to_owned()]));
        }
        (
            ListenerRouting {
                table,
                filters: Vec::new(),
            },
            clusters,
            aliases,
        )
    }
}

fn inbound_vhost(cluster: &str, domains: Vec<String>) -> weft_api::VirtualHost {
    weft_api::VirtualHost {
        name: cluster.to_owned(),
        domains,
        routes: vec![weft_api::Route {
            name: cluster.to_owned(),
            matches: weft_api::RouteMatch::default(),
            forward: Some(weft_api::Forward {
                cluster: cluster.to_owned(),
                subset: BTreeMap::new(),
                timeout: None,
                prefix_rewrite: None,
                host_rewrite: None,
            }),
            direct_response: None,
            disabled_filters: Vec::new(),
        }],
    }
}

/// The application's port on the workload's address (where peers without a sidecar reach it).
fn inbound_cluster(name: String, ip: IpAddr, port: u16, http2: bool) -> Cluster {
    let ip = if ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        ip
    };
    Cluster {
        name,
        protocol: if http2 {
            weft_api::UpstreamProtocol::Http2
        } else {
            weft_api::UpstreamProtocol::Http1
        },
        endpoints: vec![Endpoint {
            address: SocketAddr::new(ip, port).to_string(),
            labels: BTreeMap::new(),
            weight: 1,
            mesh: false,
        }],
        lb_policy: weft_api::LbPolicy::RoundRobin,
        hash_on: None,
        connect_timeout: std::time::Duration::from_secs(10),
        circuit_breakers: weft_api::CircuitBreakers {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
        },
        health_check: None,
        outlier_detection: None,
        tls: None,
    }
}

/// Adds a listener with its route table (but the outbound one's, which is shared), user filters first then the routing's first-party
/// filters (user filter names that clash get a `~2`, `~3` suffix). A listener whose address
/// is taken is left out. Returns whether it was added.
fn add_listener(
    snapshot: &mut Snapshot,
    addresses: &mut BTreeSet<SocketAddr>,
    name: &str,
    address: SocketAddr,
    kind: ListenerKind,
    routing: &ListenerRouting,
    user: Vec<FilterConfig>,
) -> bool {
    if !addresses.insert(address) {
        return false;
    }
    let mut names: BTreeSet<String> = routing.filters.iter().map(|f| f.name.clone()).collect();
    let mut filters = Vec::with_capacity(user.len() + routing.filters.len());
    for mut filter in user {
        if !names.insert(filter.name.clone()) {
            let base = filter.name.clone();
            let mut n = 2;
            while !names.insert(format!("{base}~{n}")) {
                n += 1;
            }
            filter.name = format!("{base}~{n}");
        }
        filters.push(filter);
    }
    filters.extend(routing.filters.iter().cloned());
    snapshot.listeners.push(Listener {
        name: name.to_owned(),
        address: address.to_string(),
        kind,
        protocol: ListenerProtocol::Auto,
        route_table: name.to_owned(),
        filters,
        mtls: None,
        tls: None,
        sni_routes: Vec::new(),
    });
    // The sidecar outbound listener's table is shared by its namespace (`Mesh::shared_part`).
    if kind != ListenerKind::Outbound {
        let mut table = routing.table.clone();
        table.name = name.to_owned();
        snapshot.route_tables.push(table);
    }
    true
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn module(name: &str) -> WasmModule {
        WasmModule {
            file: format!("/filters/{name}.wasm"),
            url: String::new(),
            sha256: "0".repeat(64),
            vm_config: serde_yaml::Value::Null,
            root_id: String::new(),
            vm_id: None,
        }
    }

    /// The shared parts, built a cluster at a time and cut per service, decode as one
    /// `Snapshot` holding the outbound route table and every cluster.
    #[test]
    fn shared_parts_decode_as_the_whole_shared_part() {
        let mut store = Store::new();
        let mut text = String::new();
        for name in ["a", "b", "c"] {
            text.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  \
                 ports: [{{name: http, port: 8080}}]\n---\n\
                 apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}-v1, labels: {{app: {name}, version: v1}}}}\n\
                 spec: {{address: 10.0.0.1, ports: {{http: 8080}}, sidecar: {{inbound: 15006, outbound: 15001}}}}\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}\n  \
                 subsets: [{{name: v1, labels: {{version: v1}}}}]\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  \
                 http: [{{route: [{{destination: {{host: {name}, subset: v1}}}}]}}]\n---\n"
            ));
        }
        assert!(store.insert_yaml("mesh.yaml", &text).is_empty());
        let options = CompileOptions {
            trust_domain: "cluster.local".to_owned(),
            system_filters: SystemFilters {
                router: module("router"),
                retry: module("retry"),
                fault: module("fault"),
            },
            modules: BTreeMap::new(),
        };
        let mesh = compile(&store, &options);
        assert!(mesh.clusters.len() >= 6, "{mesh:?}");
        for outbound in [true, false] {
            let whole = Snapshot {
                clusters: mesh.clusters.clone(),
                route_tables: if outbound {
                    vec![mesh.outbound_table("default")]
                } else {
                    Vec::new()
                },
                ..Snapshot::default()
            };
            let mut wire = weft_api::pb::Snapshot::from(&whole);
            wire.limits = None;
            let shared = mesh.shared_part("default", outbound);
            let bytes: Vec<u8> = shared.parts.iter().flat_map(|p| p.data.iter().copied()).collect();
            let mut decoded = weft_api::pb::Snapshot::decode(bytes.as_slice()).expect("decodes");
            // Clusters come grouped by service, not in name order.
            decoded.clusters.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(decoded, wire, "outbound: {outbound}");
            let clusters = &shared.parts[usize::from(outbound)..];
            for part in clusters {
                let piece = weft_api::pb::Snapshot::decode(part.data.clone()).expect("a part decodes");
                let hosts: BTreeSet<&str> = piece.clusters.iter().map(|c| names::cluster_host(&c.name)).collect();
                assert_eq!(hosts.len(), 1, "one service per part: {hosts:?}");
            }
            assert_eq!(clusters.len(), 3, "one part per service");
        }
    }
}
