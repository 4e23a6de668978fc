//! VirtualServices: each is checked and compiled once into router routes, the matching
//! route-table conditions, a retry policy and a fault per route. Which listeners (the
//! sidecars' outbound listener, gateway listeners) and hosts they land on is decided later.

use std::collections::{BTreeMap, BTreeSet};

use weft_api::{Cluster, HeaderMatch, PathMatch, RouteMatch};

use super::names;
use super::policy::{self, Policies};
use super::registry::Registry;
use super::router_config::{
    Backoff, FaultAbort, FaultConfig, FaultDelay, FaultMatch, HeaderOps, Operations, RetryConfig, RouterCluster,
    RouterDestination, RouterDirectResponse, RouterMatch, RouterRedirect, RouterRegexRewrite, RouterRewrite,
    RouterRoute, StringMatch,
};
use crate::diagnostics::{Diagnostic, ResourceRef};
use crate::resources::{self, HttpMatch, HttpRoute, Kind, Spec};
use crate::store::{Store, StoredResource};

/// Where routes apply: the sidecars (`mesh`) or a Gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Context {
    Mesh,
    /// A Gateway by (namespace, name).
    Gateway(String, String),
}

/// Longest route timeout the router accepts.
const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// Longest fault delay the fault filter accepts.
const MAX_DELAY_MS: u64 = 3_600_000;
/// Most retries the proxy makes.
const MAX_RETRIES: i64 = 5;

/// A compiled VirtualService.
#[derive(Debug)]
pub(crate) struct CompiledVs {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) origin: String,
    /// Resolved hosts with their index in `spec.hosts`.
    pub(crate) hosts: Vec<(usize, String)>,
    /// Where it applies.
    pub(crate) contexts: Vec<Context>,
    /// Namespaces whose sidecars see it; `None`: all.
    pub(crate) export_to: Option<BTreeSet<String>>,
    pub(crate) routes: Vec<VsRoute>,
    /// The first destination cluster of any route: what the route table forwards to when a
    /// route names none (the router decides anyway).
    pub(crate) first_cluster: Option<String>,
    /// TLS routes (`spec.tls`), for passthrough Gateway servers.
    pub(crate) tls_routes: Vec<VsTlsRoute>,
}

/// Which ports of a host a destination may name.
#[derive(Debug, Clone, Copy)]
enum PortUse {
    /// HTTP routes: the host's HTTP ports.
    Http,
    /// TLS routes: its TLS ports (`tls`, `https`).
    Tls,
}

impl PortUse {
    fn name(self) -> &'static str {
        match self {
            PortUse::Http => "HTTP",
            PortUse::Tls => "TLS",
        }
    }

    /// What a dangling destination does to traffic.
    fn when_dangling(self) -> &'static str {
        match self {
            PortUse::Http => "requests to this destination get 503",
            PortUse::Tls => "connections to this destination are closed",
        }
    }
}

/// A compiled TLS route.
#[derive(Debug)]
pub(crate) struct VsTlsRoute {
    /// Index in `spec.tls`.
    pub(crate) index: usize,
    pub(crate) blocks: Vec<TlsBlock>,
    /// (cluster, weight), at least one weight above 0.
    pub(crate) destinations: Vec<(String, u32)>,
}

/// A compiled TLS match block.
#[derive(Debug)]
pub(crate) struct TlsBlock {
    /// Server names (lowercase), each within the VirtualService's hosts.
    pub(crate) sni_hosts: Vec<String>,
    /// The gateway port, when the block names one.
    pub(crate) port: Option<u16>,
    /// The contexts it is restricted to (`match[].gateways`).
    pub(crate) gateways: Option<Vec<Context>>,
}

impl TlsBlock {
    /// Whether the block applies to connections on `port` of gateway `context`.
    pub(crate) fn applies(&self, context: &Context, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && self.gateways.as_ref().is_none_or(|g| g.contains(context))
    }
}

impl CompiledVs {
    pub(crate) fn reference(&self) -> ResourceRef<'_> {
        ResourceRef {
            kind: Kind::VirtualService.as_str(),
            namespace: &self.namespace,
            name: &self.name,
            origin: &self.origin,
        }
    }

    /// Whether some namespace sees both.
    pub(crate) fn overlaps(&self, other: &CompiledVs) -> bool {
        match (&self.export_to, &other.export_to) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => a.contains("*") || b.contains("*") || a.intersection(b).next().is_some(),
        }
    }

    /// Whether sidecars of `namespace` see it.
    pub(crate) fn visible_in(&self, namespace: &str) -> bool {
        self.export_to
            .as_ref()
            .is_none_or(|set| set.contains("*") || set.contains(namespace))
    }
}

/// A compiled HTTP route.
#[derive(Debug)]
pub(crate) struct VsRoute {
    /// Index in `spec.http`.
    pub(crate) index: usize,
    /// Route table route name and the base of filter instance names: `<ns>.<vs>.<name or index>`.
    pub(crate) core_name: String,
    /// Match blocks; empty: every request.
    pub(crate) blocks: Vec<Block>,
    /// The router route without its matches.
    pub(crate) action: RouterRoute,
    /// The first destination's cluster.
    pub(crate) default_cluster: Option<String>,
    /// The retry policy; `None`: retries disabled.
    pub(crate) retry: Option<RetryConfig>,
    /// The fault, without its match.
    pub(crate) fault: Option<FaultConfig>,
}

/// A compiled match block.
#[derive(Debug)]
pub(crate) struct Block {
    /// The contexts it is restricted to (`match[].gateways`).
    pub(crate) gateways: Option<Vec<Context>>,
    pub(crate) router: RouterMatch,
    /// What the route table can check.
    pub(crate) core: RouteMatch,
    /// Checked statically against the listener's port.
    pub(crate) port: Option<u16>,
    /// Checked statically against the sidecar's namespace.
    pub(crate) source_namespace: Option<String>,
    pub(crate) fault: FaultMatch,
}

/// A VirtualService's routes in one context, with the router routes serialized once.
#[derive(Debug)]
pub(crate) struct ContextRoutes {
    /// (route index, indexes of the blocks applying); no blocks at all: every request.
    pub(crate) routes: Vec<(usize, Vec<usize>)>,
    /// The router routes, as JSON text (a list).
    pub(crate) router_routes: String,
}

impl CompiledVs {
    /// The routes applying in `context`.
    pub(crate) fn context_routes(&self, context: &Context) -> ContextRoutes {
        let mut routes = Vec::new();
        let mut router = Vec::new();
        for (r, route) in self.routes.iter().enumerate() {
            let blocks: Vec<usize> = route
                .blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| b.gateways.as_ref().is_none_or(|g| g.contains(context)))
                .map(|(i, _)| i)
                .collect();
            if !route.blocks.is_empty() && blocks.is_empty() {
                continue;
            }
            let mut router_route = route.action.clone();
            router_route.matches = blocks.iter().map(|&b| route.blocks[b].router.clone()).collect();
            router.push(router_route);
            routes.push((r, blocks));
        }
        ContextRoutes {
            routes,
            router_routes: super::router_config::to_json(&router),
        }
    }
}

/// Compiles every VirtualService, in precedence order (origin, namespace, name). Dangling
/// destinations add empty clusters to `clusters`.
pub(crate) fn compile_all(
    store: &Store,
    registry: &Registry,
    policies: &Policies,
    clusters: &mut BTreeMap<String, Cluster>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<CompiledVs> {
    let gateways: BTreeSet<(String, String)> = store
        .of_kind(Kind::Gateway)
        .map(|g| (g.namespace().to_owned(), g.name().to_owned()))
        .collect();
    let mut stored: Vec<&StoredResource> = store.of_kind(Kind::VirtualService).collect();
    stored.sort_by(|a, b| (&a.origin, a.namespace(), a.name()).cmp(&(&b.origin, b.namespace(), b.name())));
    let mut compiler = Compiler {
        registry,
        policies,
        gateways: &gateways,
        clusters,
        diagnostics,
    };
    stored.into_iter().filter_map(|s| compiler.virtual_service(s)).collect()
}

struct Compiler<'a> {
    registry: &'a Registry,
    policies: &'a Policies,
    gateways: &'a BTreeSet<(String, String)>,
    clusters: &'a mut BTreeMap<String, Cluster>,
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl Compiler<'_> {
    fn error(&mut self, at: &ResourceRef<'_>, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(at, field, message));
    }

    fn warning(&mut self, at: &ResourceRef<'_>, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::warning(at, field, message));
    }

    fn virtual_service(&mut self, stored: &StoredResource) -> Option<CompiledVs> {
        let Spec::VirtualService(spec) = &stored.resource.spec else {
            return None;
        };
        let at = stored.reference();
        let namespace = stored.namespace();

        let mut hosts = Vec::new();
        for (i, host) in spec.hosts.iter().enumerate() {
            let resolved = names::resolve_host(host, namespace, |h| self.registry.is_service(h));
            match names::check_host(&resolved) {
                Ok(()) => hosts.push((i, resolved)),
                Err(why) => self.error(&at, format!("spec.hosts[{i}]"), format!("{why}; the host is ignored")),
            }
        }
        if spec.hosts.is_empty() {
            self.error(
                &at,
                "spec.hosts",
                "at least one host is required; the VirtualService is ignored",
            );
            return None;
        }
        let contexts = self.contexts(&spec.gateways, namespace, &at, "spec.gateways");
        let export_to = if spec.export_to.is_empty() || spec.export_to.iter().any(|e| e == "*") {
            None
        } else {
            Some(
                spec.export_to
                    .iter()
                    .map(|e| if e == "." { namespace.to_owned() } else { e.clone() })
                    .collect(),
            )
        };

        let mut routes = Vec::new();
        let mut labels = BTreeSet::new();
        for (i, route) in spec.http.iter().enumerate() {
            // Route names label route table routes and filter instances: unique per VirtualService.
            let label = match &route.name {
                Some(name) if !name.is_empty() && labels.insert(name.clone()) => name.clone(),
                _ => i.to_string(),
            };
            let core_name = format!("{namespace}.{}.{label}", stored.name());
            if let Some(route) = self.route(route, i, core_name, namespace, &at) {
                routes.push(route);
            }
        }
        self.report_approximations(spec, &routes, &at);
        let first_cluster = routes.iter().find_map(|r| r.default_cluster.clone());
        let tls_routes = spec
            .tls
            .iter()
            .enumerate()
            .filter_map(|(i, route)| self.tls_route(route, i, &hosts, &contexts, namespace, &at))
            .collect();
        Some(CompiledVs {
            namespace: namespace.to_owned(),
            name: stored.name().to_owned(),
            origin: stored.origin.clone(),
            hosts,
            contexts,
            export_to,
            routes,
            first_cluster,
            tls_routes,
        })
    }

    /// A TLS route: its blocks' server names (within `hosts`) and its destinations' TLS-port
    /// clusters. `None` (with a diagnostic) when nothing of it can apply.
    fn tls_route(
        &mut self,
        route: &resources::TlsRoute,
        index: usize,
        hosts: &[(usize, String)],
        contexts: &[Context],
        namespace: &str,
        at: &ResourceRef<'_>,
    ) -> Option<VsTlsRoute> {
        let field = format!("spec.tls[{index}]");
        if contexts.contains(&Context::Mesh) {
            self.warning(
                at,
                &field,
                "TLS routes apply at passthrough Gateway servers only; sidecars do not route TLS",
            );
        }
        let mut blocks = Vec::new();
        for (j, m) in route.matches.iter().enumerate() {
            let field = format!("{field}.match[{j}]");
            let mut sni_hosts = Vec::new();
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let sni = sni.trim_end_matches('.').to_ascii_lowercase();
                if let Err(why) = names::check_host(&sni) {
                    self.error(at, format!("{field}.sniHosts[{k}]"), format!("{why}; ignored"));
                } else if !hosts.iter().any(|(_, host)| names::host_matches(host, &sni)) {
                    self.error(
                        at,
                        format!("{field}.sniHosts[{k}]"),
                        format!("{sni} is not within the VirtualService's hosts; ignored"),
                    );
                } else {
                    sni_hosts.push(sni);
                }
            }
            if m.sni_hosts.is_empty() {
                self.error(at, format!("{field}.sniHosts"), "required; the block is ignored");
            }
            if sni_hosts.is_empty() {
                continue;
            }
            let gateways = (!m.gateways.is_empty())
                .then(|| self.contexts(&m.gateways, namespace, at, &format!("{field}.gateways")));
            blocks.push(TlsBlock {
                sni_hosts,
                port: m.port,
                gateways,
            });
        }
        if blocks.is_empty() {
            self.error(
                at,
                format!("{field}.match"),
                "no match block with a usable sniHosts; the route is ignored",
            );
            return None;
        }
        if route.route.is_empty() {
            self.error(
                at,
                format!("{field}.route"),
                "at least one destination is required; the route is ignored",
            );
            return None;
        }
        let mut destinations = Vec::with_capacity(route.route.len());
        for (j, d) in route.route.iter().enumerate() {
            let field = format!("{field}.route[{j}]");
            if d.headers.is_some() {
                self.warning(
                    at,
                    format!("{field}.headers"),
                    "TLS routes have no headers to change; ignored",
                );
            }
            let cluster = self.destination(
                &d.destination,
                &format!("{field}.destination"),
                namespace,
                at,
                PortUse::Tls,
            );
            let weight = self.weight(d.weight, &field, at);
            destinations.push((cluster, weight));
        }
        if destinations.iter().all(|(_, w)| *w == 0) {
            if destinations.len() > 1 {
                self.warning(
                    at,
                    format!("{field}.route"),
                    "several destinations without weights: connections are split evenly",
                );
            }
            for (_, w) in &mut destinations {
                *w = 1;
            }
        }
        Some(VsTlsRoute {
            index,
            blocks,
            destinations,
        })
    }

    /// A destination's `weight` (at `field.weight`); absent: 0.
    fn weight(&mut self, weight: Option<i64>, field: &str, at: &ResourceRef<'_>) -> u32 {
        match weight {
            Some(w) if w < 0 => {
                self.error(at, format!("{field}.weight"), "must not be negative; 0 applies");
                0
            }
            Some(w) => u32::try_from(w).unwrap_or(u32::MAX),
            None => 0,
        }
    }

    /// Why `subset` of host `index` (`host`) cannot be routed to: no DestinationRule defines it.
    fn subset_problem(&self, index: usize, host: &str, subset: &str) -> Option<String> {
        match self.policies.rule_for(index) {
            _ if subset.is_empty() => None,
            None => Some(format!("no DestinationRule for host {host} defines subset {subset:?}")),
            Some(rule) if !rule.has_subset(subset) => Some(format!(
                "no subset {subset:?} in DestinationRule {}/{}",
                rule.namespace, rule.name
            )),
            Some(_) => None,
        }
    }

    fn contexts(&mut self, gateways: &[String], namespace: &str, at: &ResourceRef<'_>, field: &str) -> Vec<Context> {
        if gateways.is_empty() {
            return vec![Context::Mesh];
        }
        let mut contexts = Vec::new();
        for (i, gateway) in gateways.iter().enumerate() {
            let context = if gateway == "mesh" {
                Context::Mesh
            } else {
                let (ns, name) = gateway.split_once('/').unwrap_or((namespace, gateway));
                let key = (ns.to_owned(), name.to_owned());
                if !self.gateways.contains(&key) {
                    self.error(at, format!("{field}[{i}]"), format!("no Gateway {ns}/{name}"));
                }
                Context::Gateway(key.0, key.1)
            };
            if !contexts.contains(&context) {
                contexts.push(context);
            }
        }
        contexts
    }

    fn route(
        &mut self,
        route: &HttpRoute,
        index: usize,
        core_name: String,
        namespace: &str,
        at: &ResourceRef<'_>,
    ) -> Option<VsRoute> {
        let field = format!("spec.http[{index}]");

        let mut blocks = Vec::new();
        for (j, block) in route.matches.iter().enumerate() {
            if let Some(block) = self.block(block, &format!("{field}.match[{j}]"), namespace, at) {
                blocks.push(block);
            }
        }
        if !route.matches.is_empty() && blocks.is_empty() {
            self.error(
                at,
                format!("{field}.match"),
                "no usable match block; the route is ignored",
            );
            return None;
        }

        let actions = usize::from(!route.route.is_empty())
            + usize::from(route.redirect.is_some())
            + usize::from(route.direct_response.is_some());
        if actions != 1 {
            self.error(
                at,
                field,
                "exactly one of route, redirect, directResponse is needed; the route is ignored",
            );
            return None;
        }
        let mut action = RouterRoute {
            name: route.name.clone().unwrap_or_default(),
            ..RouterRoute::default()
        };
        let mut default_cluster = None;
        if !route.route.is_empty() {
            action.route = self.destinations(&route.route, &field, namespace, at);
            default_cluster = action.route.first().map(|d| d.destination.cluster.clone());
            action.rewrite = route
                .rewrite
                .as_ref()
                .and_then(|r| self.rewrite(r, &format!("{field}.rewrite"), at));
            action.timeout_ms = route.timeout.and_then(|t| {
                // Rounded up: a sub-millisecond timeout is not "none".
                let ms = u64::try_from(t.as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_add(u64::from(t.subsec_nanos() % 1_000_000 != 0));
                if ms > MAX_TIMEOUT_MS {
                    self.warning(at, format!("{field}.timeout"), "longer than a day; one day applies");
                }
                (ms > 0).then_some(ms.min(MAX_TIMEOUT_MS))
            });
            action.headers = route
                .headers
                .as_ref()
                .and_then(|h| self.headers(h, &format!("{field}.headers"), at));
        } else {
            for (set, name) in [
                (route.rewrite.is_some(), "rewrite"),
                (route.timeout.is_some(), "timeout"),
                (route.headers.is_some(), "headers"),
            ] {
                if set {
                    self.warning(
                        at,
                        format!("{field}.{name}"),
                        "only applies to routes with destinations; ignored",
                    );
                }
            }
            if let Some(redirect) = &route.redirect {
                action.redirect = Some(self.redirect(redirect, &format!("{field}.redirect"), at));
            }
            if let Some(direct) = &route.direct_response {
                action.direct_response = Some(self.direct_response(direct, &format!("{field}.directResponse"), at)?);
            }
        }
        let retry = self.retry(route.retries.as_ref(), &format!("{field}.retries"), at);
        let fault = route
            .fault
            .as_ref()
            .and_then(|f| self.fault(f, &format!("{field}.fault"), at));
        Some(VsRoute {
            index,
            core_name,
            blocks,
            action,
            default_cluster,
            retry,
            fault,
        })
    }

    fn block(&mut self, m: &HttpMatch, field: &str, namespace: &str, at: &ResourceRef<'_>) -> Option<Block> {
        let gateways =
            (!m.gateways.is_empty()).then(|| self.contexts(&m.gateways, namespace, at, &format!("{field}.gateways")));

        let mut ok = true;
        let mut check = |this: &mut Self, sm: &Option<resources::StringMatch>, name: &str| -> Option<StringMatch> {
            let sm = sm.as_ref()?;
            match string_match(sm) {
                Ok(out) => Some(out),
                Err(why) => {
                    this.error(
                        at,
                        format!("{field}.{name}"),
                        format!("{why}; the match block is ignored"),
                    );
                    ok = false;
                    None
                }
            }
        };
        let uri = check(self, &m.uri, "uri");
        let scheme = check(self, &m.scheme, "scheme");
        let method = check(self, &m.method, "method");
        let authority = check(self, &m.authority, "authority");
        let mut map = |this: &mut Self, source: &BTreeMap<String, resources::StringMatch>, name: &str| {
            let mut out = BTreeMap::new();
            for (key, sm) in source {
                let header_like = name != "queryParams";
                let checked = string_match(sm).and_then(|s| {
                    if header_like {
                        names::check_header_name(key.strip_prefix(':').unwrap_or(key))?;
                    }
                    Ok(s)
                });
                match checked {
                    Ok(s) => {
                        let key = if header_like {
                            key.to_ascii_lowercase()
                        } else {
                            key.clone()
                        };
                        out.insert(key, s);
                    }
                    Err(why) => {
                        this.error(
                            at,
                            format!("{field}.{name}.{key}"),
                            format!("{why}; the match block is ignored"),
                        );
                        ok = false;
                    }
                }
            }
            out
        };
        let headers = map(self, &m.headers, "headers");
        let without_headers = map(self, &m.without_headers, "withoutHeaders");
        let query_params = map(self, &m.query_params, "queryParams");
        if !ok {
            return None;
        }
        if m.port == Some(0) {
            self.error(
                at,
                format!("{field}.port"),
                "port 0 is not a port; the match block is ignored",
            );
            return None;
        }

        // What the proxy's route table checks: the path and plain headers.
        let mut core = RouteMatch::default();
        if let Some(uri) = &uri {
            core.path = Some(path_match(uri, m.ignore_uri_case));
        }
        // Istio ignores these keys in `headers` (they have fields of their own).
        let ignored_keys = ["uri", "scheme", "method", "authority"];
        for (name, sm) in &headers {
            if name.starts_with(':') || ignored_keys.contains(&name.as_str()) {
                continue;
            }
            core.headers.push(header_match(name, sm, false));
        }
        for (name, sm) in &without_headers {
            if name.starts_with(':') || ignored_keys.contains(&name.as_str()) {
                continue;
            }
            if sm == &StringMatch::default() {
                core.headers.push(header_match(name, sm, true));
            } else {
                // Present with a value that fails the condition (what Istio configures).
                core.headers.push(header_match(name, &StringMatch::default(), false));
                core.headers.push(header_match(name, sm, true));
            }
        }

        let fault_string = |sm: &Option<StringMatch>| sm.clone().filter(|s| s.regex.is_none());
        let fault_map = |map: &BTreeMap<String, StringMatch>| {
            map.iter()
                .filter(|(k, s)| s.regex.is_none() && !ignored_keys.contains(&k.as_str()))
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect()
        };
        let fault = FaultMatch {
            uri: fault_string(&uri),
            ignore_uri_case: m.ignore_uri_case && uri.as_ref().is_some_and(|u| u.regex.is_none()),
            method: fault_string(&method),
            authority: fault_string(&authority),
            headers: fault_map(&headers),
            without_headers: fault_map(&without_headers),
        };

        let router = RouterMatch {
            name: m.name.clone().unwrap_or_default(),
            uri,
            scheme,
            method,
            authority,
            headers,
            without_headers,
            query_params,
            port: m.port,
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
            ignore_uri_case: m.ignore_uri_case,
        };
        Some(Block {
            gateways,
            router,
            core,
            port: m.port,
            source_namespace: m.source_namespace.clone(),
            fault,
        })
    }

    /// Warns when a block has conditions the route table cannot check, where that changes
    /// which retry policy or fault applies.
    fn report_approximations(
        &mut self,
        spec: &resources::VirtualServiceSpec,
        routes: &[VsRoute],
        at: &ResourceRef<'_>,
    ) {
        let policy = |r: &VsRoute| (r.retry.clone(), r.fault.is_some().then(|| r.core_name.clone()));
        for (i, route) in routes.iter().enumerate() {
            let differs = routes[i + 1..].iter().any(|later| policy(later) != policy(route));
            if !differs {
                continue;
            }
            let Some(source) = spec.http.get(route.index) else {
                continue;
            };
            for (j, block) in source.matches.iter().enumerate() {
                let mut unchecked = Vec::new();
                if block.method.is_some() {
                    unchecked.push("method");
                }
                if block.authority.is_some() {
                    unchecked.push("authority");
                }
                if block.scheme.is_some() {
                    unchecked.push("scheme");
                }
                if !block.query_params.is_empty() {
                    unchecked.push("queryParams");
                }
                if !block.source_labels.is_empty() {
                    unchecked.push("sourceLabels");
                }
                if block
                    .headers
                    .keys()
                    .chain(block.without_headers.keys())
                    .any(|k| k.starts_with(':'))
                {
                    unchecked.push("pseudo-headers");
                }
                if unchecked.is_empty() {
                    continue;
                }
                let verb = if unchecked.len() == 1 { "is" } else { "are" };
                self.warning(
                    at,
                    format!("spec.http[{}].match[{j}]", route.index),
                    format!(
                        "{} {verb} checked by the router but not by the route table, which picks the retry \
                         policy and faults: a request matching the rest of this block gets this route's retry \
                         policy and faults even when a later route serves it",
                        unchecked.join(", ")
                    ),
                );
            }
        }
    }

    fn destinations(
        &mut self,
        destinations: &[resources::HttpRouteDestination],
        field: &str,
        namespace: &str,
        at: &ResourceRef<'_>,
    ) -> Vec<RouterDestination> {
        let several = destinations.len() > 1;
        let mut out: Vec<RouterDestination> = destinations
            .iter()
            .enumerate()
            .map(|(j, d)| {
                let field = format!("{field}.route[{j}]");
                let cluster = self.destination(
                    &d.destination,
                    &format!("{field}.destination"),
                    namespace,
                    at,
                    PortUse::Http,
                );
                let weight = self.weight(d.weight, &field, at);
                RouterDestination {
                    destination: RouterCluster { cluster },
                    weight: several.then_some(weight),
                    headers: d
                        .headers
                        .as_ref()
                        .and_then(|h| self.headers(h, &format!("{field}.headers"), at)),
                }
            })
            .collect();
        if several && out.iter().all(|d| d.weight == Some(0)) {
            self.warning(
                at,
                format!("{field}.route"),
                "several destinations without weights: traffic is split evenly",
            );
            for d in &mut out {
                d.weight = Some(1);
            }
        }
        out
    }

    /// The cluster of a destination: a port of `used`'s kind of its host. A dangling one gets
    /// an empty cluster (requests get 503, connections are closed) and an error.
    fn destination(
        &mut self,
        destination: &resources::Destination,
        field: &str,
        namespace: &str,
        at: &ResourceRef<'_>,
        used: PortUse,
    ) -> String {
        let host = names::resolve_host(&destination.host, namespace, |h| self.registry.is_service(h));
        let subset = destination.subset.clone().unwrap_or_default();
        let wanted_port = destination.port.map(|p| p.number);
        let dangling = |this: &mut Self, port: Option<u16>, path: &str, problem: String| {
            this.error(
                at,
                format!("{field}{path}"),
                format!("{problem}; {}", used.when_dangling()),
            );
            let name = names::outbound_cluster(port, &subset, &host);
            this.dangling(name.clone());
            name
        };
        let Some(index) = self.registry.host_index(&host) else {
            let problem = format!("no Service or ServiceEntry has host {host}");
            return dangling(self, wanted_port, ".host", problem);
        };
        let entry = &self.registry.hosts[index];
        let ports: Vec<u16> = match used {
            PortUse::Http => &entry.ports,
            PortUse::Tls => &entry.tls_ports,
        }
        .iter()
        .map(|p| p.number)
        .collect();
        let kind = used.name();
        let port = match (wanted_port, ports.as_slice()) {
            (Some(port), _) if ports.contains(&port) => port,
            (Some(port), _) => {
                return dangling(
                    self,
                    Some(port),
                    ".port.number",
                    format!("host {host} has no {kind} port {port}"),
                );
            }
            (None, []) => return dangling(self, None, ".host", format!("host {host} has no {kind} port")),
            (None, [only]) => *only,
            (None, [first, ..]) => {
                let listed: Vec<String> = ports.iter().map(u16::to_string).collect();
                self.warning(
                    at,
                    format!("{field}.port"),
                    format!(
                        "host {host} has several ports ({}); give one: port {first} is used",
                        listed.join(", ")
                    ),
                );
                *first
            }
        };
        if let Some(problem) = self.subset_problem(index, &host, &subset) {
            return dangling(self, Some(port), ".subset", problem);
        }
        names::outbound_cluster(Some(port), &subset, &host)
    }

    fn dangling(&mut self, name: String) {
        if !self.clusters.contains_key(&name) {
            self.clusters.insert(name.clone(), policy::empty_cluster(name));
        }
    }

    fn rewrite(&mut self, rewrite: &resources::Rewrite, field: &str, at: &ResourceRef<'_>) -> Option<RouterRewrite> {
        let mut out = RouterRewrite::default();
        if let Some(uri) = &rewrite.uri {
            match check_path(uri) {
                Ok(()) => out.uri = Some(uri.clone()),
                Err(why) => self.error(at, format!("{field}.uri"), format!("{why}; the path is not rewritten")),
            }
        }
        if let Some(authority) = &rewrite.authority {
            match check_authority(authority) {
                Ok(()) => out.authority = Some(authority.clone()),
                Err(why) => self.error(at, format!("{field}.authority"), format!("{why}; not rewritten")),
            }
        }
        if let Some(regex) = &rewrite.uri_regex_rewrite {
            let field = format!("{field}.uriRegexRewrite");
            if out.uri.is_some() {
                self.error(at, field, "uri and uriRegexRewrite are exclusive; uri applies");
            } else if let Err(why) = regex::Regex::new(&regex.pattern) {
                self.error(
                    at,
                    format!("{field}.match"),
                    format!("invalid regular expression: {why}; ignored"),
                );
            } else if regex.rewrite.bytes().any(|b| b <= b' ' || b == 0x7f) {
                self.error(
                    at,
                    format!("{field}.rewrite"),
                    "no whitespace or control characters; ignored",
                );
            } else {
                out.uri_regex_rewrite = Some(RouterRegexRewrite {
                    pattern: regex.pattern.clone(),
                    rewrite: regex.rewrite.clone(),
                });
            }
        }
        (out != RouterRewrite::default()).then_some(out)
    }

    fn headers(&mut self, headers: &resources::Headers, field: &str, at: &ResourceRef<'_>) -> Option<HeaderOps> {
        let ops = |this: &mut Self, source: &Option<resources::HeaderOperations>, name: &str| {
            let source = source.as_ref()?;
            let mut out = Operations::default();
            let valid = |this: &mut Self, header: &str, value: Option<&str>, op: &str| {
                let problem = names::check_header_name(header).err().or_else(|| {
                    value
                        .filter(|v| v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f))
                        .map(|_| "the value contains control characters".to_owned())
                });
                match problem {
                    Some(why) => {
                        this.error(at, format!("{field}.{name}.{op}.{header}"), format!("{why}; ignored"));
                        false
                    }
                    None => true,
                }
            };
            for (k, v) in &source.set {
                if valid(this, k, Some(v), "set") {
                    out.set.insert(k.to_ascii_lowercase(), v.clone());
                }
            }
            for (k, v) in &source.add {
                if valid(this, k, Some(v), "add") {
                    out.add.insert(k.to_ascii_lowercase(), v.clone());
                }
            }
            for k in &source.remove {
                if valid(this, k, None, "remove") {
                    out.remove.push(k.to_ascii_lowercase());
                }
            }
            (out != Operations::default()).then_some(out)
        };
        let out = HeaderOps {
            request: ops(self, &headers.request, "request"),
            response: ops(self, &headers.response, "response"),
        };
        (out != HeaderOps::default()).then_some(out)
    }

    fn redirect(&mut self, redirect: &resources::Redirect, field: &str, at: &ResourceRef<'_>) -> RouterRedirect {
        let mut out = RouterRedirect {
            redirect_code: 301,
            port: redirect.port.filter(|p| *p != 0),
            ..RouterRedirect::default()
        };
        if let Some(uri) = &redirect.uri {
            match check_path(uri) {
                Ok(()) => out.uri = Some(uri.clone()),
                Err(why) => self.error(at, format!("{field}.uri"), format!("{why}; ignored")),
            }
        }
        if let Some(authority) = &redirect.authority {
            match check_authority(authority) {
                Ok(()) => out.authority = Some(authority.clone()),
                Err(why) => self.error(at, format!("{field}.authority"), format!("{why}; ignored")),
            }
        }
        if let Some(scheme) = &redirect.scheme {
            let mut bytes = scheme.bytes();
            let valid = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
                && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            if valid {
                out.scheme = Some(scheme.clone());
            } else {
                self.error(
                    at,
                    format!("{field}.scheme"),
                    format!("{scheme:?} is not a scheme; ignored"),
                );
            }
        }
        if let Some(derive) = &redirect.derive_port {
            if out.port.is_some() {
                self.error(
                    at,
                    format!("{field}.derivePort"),
                    "port and derivePort are exclusive; port applies",
                );
            } else if matches!(derive.as_str(), "FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT") {
                out.derive_port = Some(derive.clone());
            } else {
                self.error(
                    at,
                    format!("{field}.derivePort"),
                    format!("unknown value {derive:?}; ignored"),
                );
            }
        }
        match redirect.redirect_code {
            None => {}
            Some(code) if (300..=399).contains(&code) => out.redirect_code = code,
            Some(code) => self.error(
                at,
                format!("{field}.redirectCode"),
                format!("{code} is not a 3xx code; 301 applies"),
            ),
        }
        out
    }

    fn direct_response(
        &mut self,
        direct: &resources::DirectResponse,
        field: &str,
        at: &ResourceRef<'_>,
    ) -> Option<RouterDirectResponse> {
        if !(200..=599).contains(&direct.status) {
            self.error(
                at,
                format!("{field}.status"),
                format!("{} is not in 200-599; the route is ignored", direct.status),
            );
            return None;
        }
        let body = match &direct.body {
            None => String::new(),
            Some(body) => match (&body.string, &body.bytes) {
                (Some(text), bytes) => {
                    if bytes.is_some() {
                        self.error(
                            at,
                            format!("{field}.body"),
                            "string and bytes are exclusive; string applies",
                        );
                    }
                    text.clone()
                }
                (None, Some(encoded)) => {
                    match names::decode_base64(encoded).and_then(|b| String::from_utf8(b).map_err(|e| e.to_string())) {
                        Ok(text) => text,
                        Err(why) => {
                            self.error(
                                at,
                                format!("{field}.body.bytes"),
                                format!("not base64 of UTF-8 text ({why}); the body is empty"),
                            );
                            String::new()
                        }
                    }
                }
                (None, None) => String::new(),
            },
        };
        Some(RouterDirectResponse {
            status: direct.status,
            body,
        })
    }

    fn retry(&mut self, retry: Option<&resources::Retry>, field: &str, at: &ResourceRef<'_>) -> Option<RetryConfig> {
        let Some(retry) = retry else {
            return Some(RetryConfig::istio_default());
        };
        let attempts = retry.attempts.unwrap_or(0);
        if attempts <= 0 {
            if attempts < 0 {
                self.error(
                    at,
                    format!("{field}.attempts"),
                    "must not be negative; retries are disabled",
                );
            }
            return None;
        }
        if attempts > MAX_RETRIES {
            self.warning(
                at,
                format!("{field}.attempts"),
                format!("the proxy retries at most {MAX_RETRIES} times"),
            );
        }
        let mut config = RetryConfig {
            attempts: u32::try_from(attempts.min(MAX_RETRIES)).unwrap_or(5),
            ..RetryConfig::istio_default()
        };
        if let Some(t) = retry.per_try_timeout {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
            if ms == 0 {
                self.error(at, format!("{field}.perTryTimeout"), "must be at least 1ms; ignored");
            } else {
                config.per_try_timeout_ms = Some(ms);
            }
        }
        if let Some(retry_on) = &retry.retry_on {
            let mut kept = Vec::new();
            for condition in retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let status = condition
                    .parse::<u16>()
                    .is_ok_and(|c| (100..=599).contains(&c) && condition.len() == 3);
                if status || RETRY_CONDITIONS.contains(&condition) {
                    kept.push(condition);
                } else {
                    self.warning(
                        at,
                        format!("{field}.retryOn"),
                        format!("condition {condition:?} is not supported; ignored"),
                    );
                }
            }
            config.retry_on = kept.join(",");
            // As Istio: the statuses retried are those listed in retryOn.
            config.retriable_status_codes = Vec::new();
        }
        if let Some(backoff) = retry.backoff {
            config.backoff = Some(Backoff {
                base_ms: u64::try_from(backoff.as_millis()).unwrap_or(3_600_000).min(3_600_000),
            });
        }
        Some(config)
    }

    fn fault(&mut self, fault: &resources::Fault, field: &str, at: &ResourceRef<'_>) -> Option<FaultConfig> {
        let percentage = |this: &mut Self, p: Option<resources::Percent>, legacy: Option<i64>, f: &str| -> f64 {
            let value = p.map(|p| p.value).or(legacy.map(|l| l as f64)).unwrap_or(100.0);
            if value.is_finite() && (0.0..=100.0).contains(&value) {
                value
            } else {
                this.error(at, format!("{f}.percentage"), "must be between 0 and 100; 100 applies");
                100.0
            }
        };
        let delay = fault.delay.as_ref().and_then(|d| {
            let f = format!("{field}.delay");
            let pct = percentage(self, d.percentage, d.percent, &f);
            match d.fixed_delay {
                None => {
                    self.error(
                        at,
                        format!("{f}.fixedDelay"),
                        "a fixed delay is required; no delay is injected",
                    );
                    None
                }
                Some(t) => {
                    let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
                    if (1..=MAX_DELAY_MS).contains(&ms) {
                        Some(FaultDelay {
                            fixed_delay_ms: ms,
                            percentage: pct,
                        })
                    } else {
                        self.error(
                            at,
                            format!("{f}.fixedDelay"),
                            "must be between 1ms and 1h; no delay is injected",
                        );
                        None
                    }
                }
            }
        });
        let abort = fault.abort.as_ref().and_then(|a| {
            let f = format!("{field}.abort");
            let pct = percentage(self, a.percentage, None, &f);
            match a
                .http_status
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (200..=599).contains(s))
            {
                Some(http_status) => Some(FaultAbort {
                    http_status,
                    percentage: pct,
                }),
                None => {
                    self.error(
                        at,
                        format!("{f}.httpStatus"),
                        "an HTTP status from 200 to 599 is required; no abort is injected",
                    );
                    None
                }
            }
        });
        (delay.is_some() || abort.is_some()).then_some(FaultConfig {
            delay,
            abort,
            matches: Vec::new(),
        })
    }
}

/// The retry conditions the retry filter knows.
const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "reset-before-request",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn string_match(sm: &resources::StringMatch) -> Result<StringMatch, String> {
    let set = usize::from(sm.exact.is_some()) + usize::from(sm.prefix.is_some()) + usize::from(sm.regex.is_some());
    if set > 1 {
        return Err("at most one of exact, prefix, regex".to_owned());
    }
    if let Some(re) = &sm.regex {
        regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("invalid regular expression: {e}"))?;
        regex::Regex::new(re).map_err(|e| format!("invalid regular expression: {e}"))?;
    }
    Ok(StringMatch {
        exact: sm.exact.clone(),
        prefix: sm.prefix.clone(),
        regex: sm.regex.clone(),
    })
}

fn path_match(uri: &StringMatch, ignore_case: bool) -> PathMatch {
    let caseless = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                } else {
                    regex::escape(&c.to_string())
                }
            })
            .collect()
    };
    match (&uri.exact, &uri.prefix, &uri.regex) {
        (Some(exact), _, _) if ignore_case => PathMatch {
            regex: Some(caseless(exact)),
            ..PathMatch::default()
        },
        (_, Some(prefix), _) if ignore_case => PathMatch {
            regex: Some(format!("{}.*", caseless(prefix))),
            ..PathMatch::default()
        },
        (Some(exact), _, _) => PathMatch {
            exact: Some(exact.clone()),
            ..PathMatch::default()
        },
        (_, Some(prefix), _) => PathMatch {
            prefix: Some(prefix.clone()),
            ..PathMatch::default()
        },
        (_, _, Some(regex)) => PathMatch {
            regex: Some(regex.clone()),
            ..PathMatch::default()
        },
        // `uri: {}`: any path (a request always has one).
        (None, None, None) => PathMatch {
            prefix: Some("/".to_owned()),
            ..PathMatch::default()
        },
    }
}

fn header_match(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatch {
    HeaderMatch {
        name: name.to_owned(),
        exact: sm.exact.clone(),
        prefix: sm.prefix.clone(),
        regex: sm.regex.clone(),
        invert,
    }
}

fn check_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') || value.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{value:?} must start with '/' and contain no whitespace or control characters"
        ));
    }
    Ok(())
}

fn check_authority(value: &str) -> Result<(), String> {
    if value.is_empty() || value.bytes().any(|b| b <= b' ' || b == 0x7f || b"/?#@".contains(&b)) {
        return Err(format!("{value:?} is not a valid authority"));
    }
    Ok(())
}
