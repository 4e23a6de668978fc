//! One listener's routing: its route table and the first-party filters that implement the
//! VirtualServices on it (`fault` per route with faults, `retry` per distinct policy,
//! `router`).
//!
//! The router picks routes by Istio's semantics; the proxy's route table only decides which
//! filters run. For a virtual host whose routes all use the default retry policy and no
//! faults, the table has one catch-all route. Otherwise it mirrors the VirtualService's routes
//! (their path and header conditions, in order), each route disabling the other routes'
//! `retry`/`fault` instances, then a catch-all with the default policy.

use std::collections::BTreeMap;

use weft_api::{DirectResponse, FailurePolicy, FilterConfig, Forward, Route, RouteMatch, RouteTable, VirtualHost};

use super::SystemFilters;
use super::router_config::{self, FaultConfig, RetryConfig, RouterVirtualHost};
use super::virtual_service::{CompiledVs, ContextRoutes};

/// Name of the `router` filter instance.
pub(crate) const ROUTER: &str = "weft.router";
/// Name of the `retry` instance with Istio's default policy.
pub(crate) const DEFAULT_RETRY: &str = "weft.retry";

/// One virtual host to build.
pub(crate) struct VhostPlan<'a> {
    /// Virtual host name.
    pub(crate) name: String,
    /// Route table domains (duplicates across plans are dropped: the first plan keeps them).
    pub(crate) domains: Vec<String>,
    /// Router host names (no ports); empty: no router virtual host from this plan.
    pub(crate) router_hosts: Vec<String>,
    /// The port the plan serves, for `match.port` (none: any).
    pub(crate) port: Option<u16>,
    /// Where the catch-all route forwards.
    pub(crate) fallback: Option<String>,
    /// The VirtualService routing these hosts.
    pub(crate) vs: Option<(&'a CompiledVs, &'a ContextRoutes)>,
    /// Every request to these hosts is answered with a `301` to the same URL over `https`
    /// (a gateway server's `tls.httpsRedirect`); `vs` is then unused.
    pub(crate) https_redirect: bool,
}

/// The router routes of a virtual host that redirects everything to `https`: the host and
/// path as the request gave them (Envoy's `require_tls: ALL` keeps the `Host` header whole).
const HTTPS_REDIRECT_ROUTES: &str = r#"[{"name":"https-redirect","redirect":{"scheme":"https","derive_port":"FROM_REQUEST_PORT","redirect_code":301}}]"#;

/// A listener's route table and first-party filters (faults, retries, router, in chain
/// order).
#[derive(Debug, Clone)]
pub(crate) struct ListenerRouting {
    pub(crate) table: RouteTable,
    pub(crate) filters: Vec<FilterConfig>,
}

/// Which `retry` and `fault` instances a route runs.
#[derive(Clone, PartialEq, Eq)]
struct Enabled {
    retry: Option<String>,
    fault: Option<String>,
}

pub(crate) fn build(table: &str, plans: &[VhostPlan<'_>], namespace: &str, system: &SystemFilters) -> ListenerRouting {
    // The filter instances: one fault per route with faults, one retry per distinct policy.
    let default_retry = RetryConfig::istio_default();
    let mut retries: Vec<(RetryConfig, String)> = vec![(default_retry.clone(), DEFAULT_RETRY.to_owned())];
    let mut faults: Vec<(String, FaultConfig)> = Vec::new();
    let mut seen_vs: Vec<*const ContextRoutes> = Vec::new();
    for plan in plans {
        let Some((vs, routes)) = plan.vs else { continue };
        if seen_vs.contains(&std::ptr::from_ref(routes)) {
            continue;
        }
        seen_vs.push(std::ptr::from_ref(routes));
        for (r, blocks) in &routes.routes {
            let route = &vs.routes[*r];
            if let Some(retry) = &route.retry
                && !retries.iter().any(|(c, _)| c == retry)
            {
                retries.push((retry.clone(), format!("{DEFAULT_RETRY}.{}", route.core_name)));
            }
            if let Some(fault) = &route.fault {
                let mut config = fault.clone();
                config.matches = blocks.iter().map(|&b| route.blocks[b].fault.clone()).collect();
                faults.push((format!("weft.fault.{}", route.core_name), config));
            }
        }
    }
    let all: Vec<&str> = faults
        .iter()
        .map(|(name, _)| name.as_str())
        .chain(retries.iter().map(|(_, name)| name.as_str()))
        .collect();
    let disabled = |enabled: &Enabled| -> Vec<String> {
        all.iter()
            .filter(|name| enabled.retry.as_deref() != Some(**name) && enabled.fault.as_deref() != Some(**name))
            .map(|name| (*name).to_owned())
            .collect()
    };
    let default_enabled = Enabled {
        retry: Some(DEFAULT_RETRY.to_owned()),
        fault: None,
    };
    let default_disabled = disabled(&default_enabled);

    // Domains are lowercase (names are lowercased when resolved).
    let mut used_domains: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut virtual_hosts = Vec::with_capacity(plans.len());
    let mut router_hosts = Vec::new();
    for plan in plans {
        let domains: Vec<String> = plan
            .domains
            .iter()
            .filter(|d| used_domains.insert(d.as_str()))
            .cloned()
            .collect();
        if plan.https_redirect && !plan.router_hosts.is_empty() {
            router_hosts.push(RouterVirtualHost {
                name: &plan.name,
                hosts: &plan.router_hosts,
                routes: HTTPS_REDIRECT_ROUTES,
            });
        } else if let (Some((_, routes)), false) = (plan.vs, plan.router_hosts.is_empty()) {
            router_hosts.push(RouterVirtualHost {
                name: &plan.name,
                hosts: &plan.router_hosts,
                routes: &routes.router_routes,
            });
        }
        if domains.is_empty() {
            continue;
        }
        let fallback = plan
            .fallback
            .clone()
            .or_else(|| plan.vs.and_then(|(vs, _)| vs.first_cluster.clone()));
        let mut table_routes = Vec::new();
        let mut catch_all = true;
        if let Some((vs, routes)) = plan.vs {
            let enabled_of = |r: usize| Enabled {
                retry: vs.routes[r]
                    .retry
                    .as_ref()
                    .and_then(|c| retries.iter().find(|(rc, _)| rc == c).map(|(_, n)| n.clone())),
                fault: vs.routes[r]
                    .fault
                    .as_ref()
                    .map(|_| format!("weft.fault.{}", vs.routes[r].core_name)),
            };
            let mirror = routes.routes.iter().any(|(r, _)| enabled_of(*r) != default_enabled);
            if mirror {
                for (r, blocks) in &routes.routes {
                    let route = &vs.routes[*r];
                    let enabled = enabled_of(*r);
                    let cluster = route.default_cluster.clone().or_else(|| fallback.clone());
                    let route_disabled = disabled(&enabled);
                    if route.blocks.is_empty() {
                        table_routes.push(core_route(
                            &route.core_name,
                            RouteMatch::default(),
                            cluster,
                            route_disabled,
                        ));
                        catch_all = false;
                        break;
                    }
                    for &b in blocks {
                        let block = &route.blocks[b];
                        let port_ok = match (block.port, plan.port) {
                            (Some(want), Some(port)) => want == port,
                            _ => true,
                        };
                        let namespace_ok = block.source_namespace.as_deref().is_none_or(|n| n == namespace);
                        if port_ok && namespace_ok {
                            table_routes.push(core_route(
                                &route.core_name,
                                block.core.clone(),
                                cluster.clone(),
                                route_disabled.clone(),
                            ));
                        }
                    }
                }
            }
        }
        if catch_all {
            table_routes.push(core_route(
                &plan.name,
                RouteMatch::default(),
                fallback,
                default_disabled.clone(),
            ));
        }
        virtual_hosts.push(VirtualHost {
            name: plan.name.clone(),
            domains,
            routes: table_routes,
        });
    }

    let mut filters = Vec::with_capacity(faults.len() + retries.len() + 1);
    if virtual_hosts.is_empty() {
        // Nothing routed: no first-party filter has work here.
        retries.clear();
        faults.clear();
        router_hosts.clear();
    }
    for (name, config) in faults {
        filters.push(system_filter(name, &system.fault, router_config::to_value(&config)));
    }
    for (config, name) in retries {
        filters.push(system_filter(name, &system.retry, router_config::to_value(&config)));
    }
    if !router_hosts.is_empty() {
        let config = serde_yaml::Value::String(router_config::router_json(&router_hosts));
        filters.push(system_filter(ROUTER.to_owned(), &system.router, config));
    }
    ListenerRouting {
        table: RouteTable {
            name: table.to_owned(),
            virtual_hosts,
        },
        filters,
    }
}

fn system_filter(name: String, module: &weft_api::WasmModule, config: serde_yaml::Value) -> FilterConfig {
    FilterConfig {
        name,
        native: None,
        wasm: Some(module.clone()),
        config,
        failure_policy: FailurePolicy::FailClosed,
    }
}

/// A route table route: forward to `cluster` (the router overrides it), or, for hosts
/// without any cluster (only redirects and direct responses), a 404 the router pre-empts.
fn core_route(name: &str, matches: RouteMatch, cluster: Option<String>, disabled_filters: Vec<String>) -> Route {
    let (forward, direct_response) = match cluster {
        Some(cluster) => (
            Some(Forward {
                cluster,
                subset: BTreeMap::new(),
                timeout: None,
                prefix_rewrite: None,
                host_rewrite: None,
            }),
            None,
        ),
        None => (
            None,
            Some(DirectResponse {
                status: 404,
                body: "route not found\n".to_owned(),
                headers: BTreeMap::new(),
            }),
        ),
    };
    Route {
        name: name.to_owned(),
        matches,
        forward,
        direct_response,
        disabled_filters,
    }
}
