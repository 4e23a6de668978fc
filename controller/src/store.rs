//! The intent store: parsed resources by (kind, namespace, name), each with its origin.
//!
//! Files go in whole ([`Store::insert_yaml`] replaces what an origin held before). When two
//! origins define the same resource, the first origin (in string order) wins and the other
//! gets an error diagnostic; within one origin, the first document wins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize as _;

use crate::diagnostics::{Diagnostic, ResourceRef};
use crate::resources::{self, Kind, Resource, Spec};

/// A resource and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// The origin (a file path relative to the intent directory).
    pub origin: String,
    /// Position within the origin (document order).
    pub position: usize,
    /// The resource, shared with the parsed file it came from (see [`resources::Parsed`]).
    pub resource: Arc<Resource>,
}

impl StoredResource {
    /// Names the resource in diagnostics.
    pub fn reference(&self) -> ResourceRef<'_> {
        ResourceRef {
            kind: self.resource.kind().as_str(),
            namespace: &self.resource.metadata.namespace,
            name: &self.resource.metadata.name,
            origin: &self.origin,
        }
    }

    /// The resource's namespace.
    pub fn namespace(&self) -> &str {
        &self.resource.metadata.namespace
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.resource.metadata.name
    }
}

type Key = (Kind, String, String);

/// Parsed resources, with the diagnostics of parsing them.
#[derive(Debug, Clone, Default)]
pub struct Store {
    /// Every definition of each resource, ordered by (origin, position): the first is in
    /// effect.
    entries: BTreeMap<Key, Vec<StoredResource>>,
    /// Parse diagnostics by origin.
    parse_diagnostics: BTreeMap<String, Vec<Diagnostic>>,
    /// Next position by origin.
    positions: BTreeMap<String, usize>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a multi-document YAML file and stores its resources, replacing whatever
    /// `origin` held before. Empty documents are skipped and `List` documents contribute their
    /// items. Returns the diagnostics about this origin: documents and fields refused or
    /// reported, and duplicates it takes part in.
    pub fn insert_yaml(&mut self, origin: &str, text: &str) -> Vec<Diagnostic> {
        self.insert_parsed(origin, Self::parse_yaml(origin, text))
    }

    /// Parses a YAML file's documents without storing them: the slow half of
    /// [`insert_yaml`](Self::insert_yaml), which a caller can cache per file text.
    pub fn parse_yaml(origin: &str, text: &str) -> resources::Parsed {
        let mut parsed = resources::Parsed::default();
        for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let number = i + 1;
            match serde_yaml::Value::deserialize(document) {
                Ok(value) => resources::parse_document(origin, number, value, &mut parsed),
                Err(error) => {
                    parsed
                        .diagnostics
                        .push(Diagnostic::document(origin, number, format!("not valid YAML: {error}")));
                    // The parser cannot resynchronise after a syntax error.
                    break;
                }
            }
        }
        parsed
    }

    /// Stores what [`parse_yaml`](Self::parse_yaml) parsed from `origin`, replacing what the
    /// origin held. Returns the parse diagnostics and the duplicates it causes.
    pub fn insert_parsed(&mut self, origin: &str, parsed: resources::Parsed) -> Vec<Diagnostic> {
        self.remove_origin(origin);
        let mut diagnostics = parsed.diagnostics.clone();
        self.parse_diagnostics
            .entry(origin.to_owned())
            .or_default()
            .extend(parsed.diagnostics);
        for resource in parsed.resources {
            diagnostics.extend(self.insert(origin, resource));
        }
        diagnostics
    }

    /// Stores one resource under `origin`, after whatever the origin already holds (builder
    /// fixtures use this directly). Returns the duplicate diagnostics it causes, if any.
    pub fn insert(&mut self, origin: &str, resource: impl Into<Arc<Resource>>) -> Vec<Diagnostic> {
        let resource = resource.into();
        let position = {
            let next = self.positions.entry(origin.to_owned()).or_default();
            *next += 1;
            *next - 1
        };
        let key = (
            resource.kind(),
            resource.metadata.namespace.clone(),
            resource.metadata.name.clone(),
        );
        // Nearly every resource is defined once: room for one definition, not the four an
        // empty Vec grows to on its first push.
        let definitions = self.entries.entry(key).or_insert_with(|| Vec::with_capacity(1));
        definitions.push(StoredResource {
            origin: origin.to_owned(),
            position,
            resource,
        });
        definitions.sort_by(|a, b| (&a.origin, a.position).cmp(&(&b.origin, b.position)));
        if definitions.len() < 2 {
            return Vec::new();
        }
        // Report the definitions this insertion outranks or is outranked by.
        let first = &definitions[0];
        definitions[1..]
            .iter()
            .filter(|d| d.origin == origin || first.origin == origin)
            .map(|d| duplicate(first, d))
            .collect()
    }

    /// Forgets everything `origin` held. Returns whether it held anything.
    pub fn remove_origin(&mut self, origin: &str) -> bool {
        if !self.positions.contains_key(origin) && !self.parse_diagnostics.contains_key(origin) {
            return false; // the origin holds nothing: no need to scan the store
        }
        let mut removed = self.parse_diagnostics.remove(origin).is_some();
        self.positions.remove(origin);
        self.entries.retain(|_, definitions| {
            let before = definitions.len();
            definitions.retain(|d| d.origin != origin);
            removed |= definitions.len() != before;
            !definitions.is_empty()
        });
        removed
    }

    /// Every diagnostic of the store: parse problems of every origin and duplicates.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = self.parse_diagnostics.values().flatten().cloned().collect();
        for definitions in self.entries.values() {
            if let Some((first, rest)) = definitions.split_first() {
                out.extend(rest.iter().map(|d| duplicate(first, d)));
            }
        }
        out
    }

    /// The resource in effect for (kind, namespace, name).
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&StoredResource> {
        self.entries
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .and_then(|d| d.first())
    }

    /// The resources in effect, ordered by kind, namespace and name.
    pub fn resources(&self) -> impl Iterator<Item = &StoredResource> {
        self.entries.values().filter_map(|d| d.first())
    }

    /// The resources in effect of one kind, ordered by namespace and name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &StoredResource> {
        self.entries
            .range((kind, String::new(), String::new())..)
            .take_while(move |((k, _, _), _)| *k == kind)
            .filter_map(|(_, d)| d.first())
    }

    /// Number of resources in effect.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no resource is in effect.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The module urls the controller must pin before compiling (pass the results in
    /// `CompileOptions::modules`, keyed by these urls): every OCI url (the sha256 of a
    /// module's bytes is only known once its image is pulled; a `sha256` field or `@sha256:`
    /// digest names the image), and `file://`/`http(s)://` urls of WasmPlugins and
    /// WasmFilters that give no `sha256`. Urls without a scheme are OCI references and are
    /// returned with `oci://`.
    pub fn module_urls(&self) -> BTreeSet<String> {
        let mut urls = BTreeSet::new();
        for stored in self.of_kind(Kind::WasmPlugin).chain(self.of_kind(Kind::WasmFilter)) {
            let (url, sha256) = match &stored.resource.spec {
                Spec::WasmPlugin(p) => (&p.url, &p.sha256),
                Spec::WasmFilter(f) => (&f.url, &f.sha256),
                _ => continue,
            };
            if url.is_empty() {
                continue;
            }
            let url = normalize_module_url(url);
            if url.starts_with("oci://") || sha256.as_deref().is_none_or(str::is_empty) {
                urls.insert(url);
            }
        }
        urls
    }
}

/// A module url with its scheme: without one, an OCI reference (`oci://`), as Istio reads it.
pub(crate) fn normalize_module_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("oci://{url}")
    }
}

/// The sha256 digest in an `...@sha256:<hex>` url, lowercased.
pub(crate) fn digest_in_url(url: &str) -> Option<String> {
    let (_, digest) = url.rsplit_once("@sha256:")?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then(|| digest.to_ascii_lowercase())
}

fn duplicate(first: &StoredResource, other: &StoredResource) -> Diagnostic {
    let place = if first.origin == other.origin {
        "earlier in the same file".to_owned()
    } else {
        format!("in {}", first.origin)
    };
    Diagnostic::error(
        &other.reference(),
        "",
        format!("duplicate: already defined {place}; this definition is ignored"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str =
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n";

    #[test]
    fn first_origin_wins_whatever_the_insertion_order() {
        let mut store = Store::new();
        assert!(store.insert_yaml("b.yaml", VS).is_empty());
        let diagnostics = store.insert_yaml("a.yaml", VS);
        assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
        assert_eq!(diagnostics[0].origin, "b.yaml");
        assert!(diagnostics[0].message.contains("in a.yaml"), "{}", diagnostics[0]);
        assert_eq!(
            store
                .get(Kind::VirtualService, "default", "r")
                .map(|s| s.origin.as_str()),
            Some("a.yaml")
        );
        assert_eq!(store.diagnostics().len(), 1);
        assert!(store.remove_origin("a.yaml"));
        assert!(store.diagnostics().is_empty());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn reinserting_an_origin_replaces_it() {
        let mut store = Store::new();
        store.insert_yaml("a.yaml", VS);
        store.insert_yaml("a.yaml", "");
        assert!(store.is_empty());
    }

    #[test]
    fn digests_in_urls() {
        let hex = "a".repeat(64);
        assert_eq!(digest_in_url(&format!("oci://r/x@sha256:{hex}")), Some(hex));
        assert_eq!(digest_in_url("oci://r/x:1"), None);
    }
}
