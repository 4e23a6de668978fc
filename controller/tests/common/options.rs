//! The compile options the controller's tests and benchmarks compile with: the first-party
//! modules as registry urls with made-up digests (`a…`, `b…`, `c…`), nothing resolved.
//! Included with `#[path]` by each test or benchmark that needs it.

use std::collections::BTreeMap;

use weft_api::WasmModule;
use weft_controller::compile::{CompileOptions, SystemFilters};

/// A module of the embedded registry, its digest 64 times `digit`.
pub(crate) fn module(name: &str, digit: char) -> WasmModule {
    let sha256: String = std::iter::repeat_n(digit, 64).collect();
    WasmModule {
        file: String::new(),
        url: format!("oci://127.0.0.1:15012/weft/{name}@sha256:{sha256}"),
        sha256,
        vm_config: serde_yaml::Value::Null,
        root_id: String::new(),
        vm_id: None,
    }
}

/// Trust domain `cluster.local`, router `a…`, retry `b…`, fault `c…`, no other module.
pub(crate) fn options() -> CompileOptions {
    CompileOptions {
        trust_domain: "cluster.local".to_owned(),
        system_filters: SystemFilters {
            router: module("router", 'a'),
            retry: module("retry", 'b'),
            fault: module("fault", 'c'),
        },
        modules: BTreeMap::new(),
    }
}
