//! User filters: WasmPlugins and FilterChains (with their WasmFilters), compiled once into
//! snapshot filters and selected per workload and listener.
//!
//! Order in a listener's chain: WasmPlugins by phase (`AUTHN`, `AUTHZ`, `STATS`, then
//! unspecified, as Istio inserts them before its authn, authz and stats filters and
//! unspecified ones last, before the router), within a phase by priority (higher first),
//! then by namespace and name; then FilterChains by namespace and name, each chain's filters
//! in list order. The first-party filters (faults, retries, router) come after all of them.

use std::collections::BTreeMap;

use weft_api::{FailurePolicy, FilterConfig, WasmModule};

use super::CompileOptions;
use super::registry::labels_match;
use crate::diagnostics::{Diagnostic, ResourceRef};
use crate::resources::{Direction, Kind, Spec};
use crate::store::{Store, digest_in_url, normalize_module_url};

/// The listener a filter list is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerClass {
    Outbound,
    Inbound,
    Gateway,
}

#[derive(Debug)]
struct Plugin {
    namespace: String,
    name: String,
    /// `None`: every workload of the namespace.
    selector: Option<BTreeMap<String, String>>,
    phase: u8,
    priority: i64,
    client: bool,
    server: bool,
    filter: FilterConfig,
}

#[derive(Debug)]
struct Chain {
    namespace: String,
    selector: Option<BTreeMap<String, String>>,
    direction: Direction,
    filters: Vec<FilterConfig>,
}

/// Every WasmPlugin and FilterChain, compiled.
#[derive(Debug, Default)]
pub(crate) struct Extensions {
    /// Sorted in chain order.
    plugins: Vec<Plugin>,
    /// Sorted by namespace and name.
    chains: Vec<Chain>,
}

impl Extensions {
    pub(crate) fn build(store: &Store, options: &CompileOptions, diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut extensions = Extensions::default();
        for stored in store.of_kind(Kind::WasmPlugin) {
            let Spec::WasmPlugin(spec) = &stored.resource.spec else {
                continue;
            };
            let at = stored.reference();
            if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
                diagnostics.push(Diagnostic::error(
                    &at,
                    "spec.targetRefs",
                    "attaching to Gateway API resources is not supported (use selector); the plugin is not applied",
                ));
                continue;
            }
            match spec.plugin_type.as_deref() {
                None | Some("HTTP" | "UNSPECIFIED_PLUGIN_TYPE") => {}
                Some(other) => {
                    diagnostics.push(Diagnostic::error(
                        &at,
                        "spec.type",
                        format!("{other} plugins are not supported (HTTP only); the plugin is not applied"),
                    ));
                    continue;
                }
            }
            let phase = match spec.phase.as_deref() {
                Some("AUTHN") => 0,
                Some("AUTHZ") => 1,
                Some("STATS") => 2,
                None | Some("UNSPECIFIED_PHASE") => 3,
                Some(other) => {
                    diagnostics.push(Diagnostic::error(
                        &at,
                        "spec.phase",
                        format!("unknown phase {other:?}; the plugin runs with unspecified ones"),
                    ));
                    3
                }
            };
            let failure_policy = match spec.fail_strategy.as_deref() {
                None | Some("FAIL_CLOSE") => FailurePolicy::FailClosed,
                Some("FAIL_OPEN") => FailurePolicy::FailOpen,
                Some("FAIL_RELOAD") => FailurePolicy::Reload,
                Some(other) => {
                    diagnostics.push(Diagnostic::error(
                        &at,
                        "spec.failStrategy",
                        format!("unknown strategy {other:?}; FAIL_CLOSE applies"),
                    ));
                    FailurePolicy::FailClosed
                }
            };
            if let Some(policy) = spec
                .image_pull_policy
                .as_deref()
                .filter(|p| !matches!(*p, "IfNotPresent" | "Always" | "UNSPECIFIED_POLICY"))
            {
                diagnostics.push(Diagnostic::error(
                    &at,
                    "spec.imagePullPolicy",
                    format!("unknown policy {policy:?}; ignored"),
                ));
            }
            let (mut client, mut server) = (spec.matches.is_empty(), spec.matches.is_empty());
            for (i, selector) in spec.matches.iter().enumerate() {
                match selector.mode.as_deref() {
                    None | Some("UNDEFINED" | "CLIENT_AND_SERVER") => (client, server) = (true, true),
                    Some("CLIENT") => client = true,
                    Some("SERVER") => server = true,
                    Some(other) => {
                        diagnostics.push(Diagnostic::error(
                            &at,
                            format!("spec.match[{i}].mode"),
                            format!("unknown mode {other:?}; CLIENT_AND_SERVER applies"),
                        ));
                        (client, server) = (true, true);
                    }
                }
            }
            let wasm = module(&spec.url, spec.sha256.as_deref(), options, &at, diagnostics);
            let wasm = WasmModule {
                root_id: spec.plugin_name.clone().unwrap_or_default(),
                ..wasm
            };
            extensions.plugins.push(Plugin {
                namespace: stored.namespace().to_owned(),
                name: stored.name().to_owned(),
                selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
                phase,
                priority: spec.priority.unwrap_or(0),
                client,
                server,
                filter: FilterConfig {
                    name: format!("{}.{}", stored.namespace(), stored.name()),
                    native: None,
                    wasm: Some(wasm),
                    config: spec.plugin_config.clone(),
                    failure_policy,
                },
            });
        }
        extensions.plugins.sort_by(|a, b| {
            (a.phase, std::cmp::Reverse(a.priority), &a.namespace, &a.name).cmp(&(
                b.phase,
                std::cmp::Reverse(b.priority),
                &b.namespace,
                &b.name,
            ))
        });

        // WasmFilters: modules resolved once each.
        let mut filters: BTreeMap<(String, String), (WasmModule, serde_yaml::Value, FailurePolicy)> = BTreeMap::new();
        for stored in store.of_kind(Kind::WasmFilter) {
            let Spec::WasmFilter(spec) = &stored.resource.spec else {
                continue;
            };
            let wasm = module(
                &spec.url,
                spec.sha256.as_deref(),
                options,
                &stored.reference(),
                diagnostics,
            );
            filters.insert(
                (stored.namespace().to_owned(), stored.name().to_owned()),
                (wasm, spec.config.clone(), spec.failure_policy.unwrap_or_default()),
            );
        }
        for stored in store.of_kind(Kind::FilterChain) {
            let Spec::FilterChain(spec) = &stored.resource.spec else {
                continue;
            };
            let at = stored.reference();
            let mut chain = Chain {
                namespace: stored.namespace().to_owned(),
                selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
                direction: spec.direction,
                filters: Vec::new(),
            };
            for (i, entry) in spec.filters.iter().enumerate() {
                let Some((wasm, config, policy)) = filters.get(&(stored.namespace().to_owned(), entry.filter.clone()))
                else {
                    diagnostics.push(Diagnostic::error(
                        &at,
                        format!("spec.filters[{i}].filter"),
                        format!(
                            "no WasmFilter {}/{}; this filter is left out of the chain",
                            stored.namespace(),
                            entry.filter
                        ),
                    ));
                    continue;
                };
                let name = entry
                    .name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| entry.filter.clone());
                if chain.filters.iter().any(|f| f.name == name) {
                    diagnostics.push(Diagnostic::error(
                        &at,
                        format!("spec.filters[{i}].name"),
                        format!("{name:?} is used twice in the chain; this filter is left out"),
                    ));
                    continue;
                }
                chain.filters.push(FilterConfig {
                    name,
                    native: None,
                    wasm: Some(wasm.clone()),
                    config: entry.config.clone().unwrap_or_else(|| config.clone()),
                    failure_policy: entry.failure_policy.unwrap_or(*policy),
                });
            }
            extensions.chains.push(chain);
        }
        extensions
    }

    /// The user filters of a workload's listener, in chain order.
    pub(crate) fn filters_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        class: ListenerClass,
    ) -> Vec<FilterConfig> {
        let selects = |ns: &str, selector: &Option<BTreeMap<String, String>>| {
            ns == namespace && selector.as_ref().is_none_or(|s| labels_match(s, labels))
        };
        let mut out = Vec::new();
        for plugin in &self.plugins {
            let applies = match class {
                ListenerClass::Outbound => plugin.client,
                ListenerClass::Inbound => plugin.server,
                // Istio: a gateway takes CLIENT (and CLIENT_AND_SERVER) plugins.
                ListenerClass::Gateway => plugin.client,
            };
            if applies && selects(&plugin.namespace, &plugin.selector) {
                out.push(plugin.filter.clone());
            }
        }
        let direction = match class {
            ListenerClass::Inbound => Direction::Inbound,
            ListenerClass::Outbound | ListenerClass::Gateway => Direction::Outbound,
        };
        for chain in &self.chains {
            if chain.direction == direction && selects(&chain.namespace, &chain.selector) {
                out.extend(chain.filters.iter().cloned());
            }
        }
        out
    }
}

/// The module of a WasmPlugin or WasmFilter. An OCI url is pinned by the controller (the
/// sha256 of the module's bytes is known once its image is pulled; the resource's `sha256`, as
/// in Istio, names the image and must match the pinned digest). A `file://` or `http(s)://`
/// url takes the resource's `sha256` (the module's bytes), else the controller's pin. Without
/// a pin, the url is kept with an empty sha256 and an error: sidecars refuse (NACK) such a
/// snapshot and keep their previous one.
fn module(
    url: &str,
    sha256: Option<&str>,
    options: &CompileOptions,
    at: &ResourceRef<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> WasmModule {
    let normalized = normalize_module_url(url);
    let oci = normalized.starts_with("oci://");
    if !oci
        && !["file://", "http://", "https://"]
            .iter()
            .any(|s| normalized.starts_with(s))
    {
        diagnostics.push(Diagnostic::error(
            at,
            "spec.url",
            format!(
                "{url:?}: the scheme must be oci://, file://, http:// or https://; sidecars will refuse this module"
            ),
        ));
    }
    let given = sha256.filter(|s| !s.is_empty()).and_then(|s| {
        let lower = s.to_ascii_lowercase();
        if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(lower)
        } else {
            diagnostics.push(Diagnostic::error(at, "spec.sha256", "must be 64 hex digits; ignored"));
            None
        }
    });
    let module = |url: String, sha256: String| WasmModule {
        file: String::new(),
        url,
        sha256,
        vm_config: serde_yaml::Value::Null,
        root_id: String::new(),
        vm_id: None,
    };
    if !oci && let Some(sha256) = given.clone() {
        return module(normalized, sha256);
    }
    match options.modules.get(&normalized) {
        Some(Ok(pinned)) => {
            if oci
                && let Some(image) = &given
                && digest_in_url(&pinned.url).is_some_and(|d| &d != image)
            {
                diagnostics.push(Diagnostic::error(
                    at,
                    "spec.sha256",
                    format!(
                        "the image of {url} has digest {}, not this one; the pinned image is used",
                        digest_in_url(&pinned.url).unwrap_or_default()
                    ),
                ));
            }
            module(pinned.url.clone(), pinned.sha256.to_ascii_lowercase())
        }
        Some(Err(why)) => {
            diagnostics.push(Diagnostic::error(
                at,
                "spec.url",
                format!("module {normalized} could not be pinned ({why}); sidecars will refuse snapshots with it"),
            ));
            module(normalized, String::new())
        }
        None => {
            let what = if oci {
                "is not pinned"
            } else {
                "has no sha256 and is not pinned"
            };
            diagnostics.push(Diagnostic::error(
                at,
                "spec.url",
                format!("module {normalized} {what}; sidecars will refuse snapshots with it"),
            ));
            module(normalized, String::new())
        }
    }
}
