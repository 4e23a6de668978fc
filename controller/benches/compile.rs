//! The compiler at scale: a synthetic mesh of 10,000 Services, each with two Workloads (v1 and
//! v2, with sidecars), a DestinationRule with two subsets and a VirtualService (a header match
//! to v2, else v1), parsed from YAML into a store once.
//!
//! `cargo bench -p weft-controller --bench compile`
//!
//! - `compile/10k_services`: [`compile`], the shared work done once per intent change;
//! - `snapshot_for/warm`: one sidecar's snapshot once its namespace's outbound routing is
//!   built (every later sidecar of the namespace);
//! - `snapshot_for/cold`: the first sidecar of a namespace after an intent change (the
//!   outbound routing of all 10,000 hosts built for the namespace).

#![allow(missing_docs, reason = "criterion's macros generate undocumented items")]
#![allow(clippy::unwrap_used, reason = "benchmark setup")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use weft_controller::compile::{NodeIdentity, compile};
use weft_controller::store::Store;

#[path = "../tests/common/options.rs"]
mod common;
use common::options;

const SERVICES: usize = 10_000;

/// The synthetic intent: one file per 100 services.
fn store() -> Store {
    let mut store = Store::new();
    let mut text = String::new();
    for i in 0..SERVICES {
        let name = format!("svc-{i:05}");
        // Two addresses per service in 10.0.0.0/8.
        let ip = |n: usize| {
            format!(
                "10.{}.{}.{}",
                (2 * i + n) >> 16 & 255,
                (2 * i + n) >> 8 & 255,
                (2 * i + n) & 255
            )
        };
        let _ = write!(
            text,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 8080}}]\n---\n\
             apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}-v1, labels: {{app: {name}, version: v1}}}}\n\
             spec: {{address: {}, ports: {{http: 8080}}, sidecar: {{inbound: 15006, outbound: 15001}}}}\n---\n\
             apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}-v2, labels: {{app: {name}, version: v2}}}}\n\
             spec: {{address: {}, ports: {{http: 8080}}, sidecar: {{inbound: 15006, outbound: 15001}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}\n  \
             trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}, outlierDetection: {{consecutive5xxErrors: 5}}}}\n  \
             subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  \
             - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: {name}, subset: v2}}}}]\n  \
             - route: [{{destination: {{host: {name}, subset: v1}}}}]\n---\n",
            ip(0),
            ip(1),
        );
        if i % 100 == 99 {
            let diagnostics = store.insert_yaml(&format!("mesh/{:03}.yaml", i / 100), &text);
            assert!(diagnostics.is_empty(), "{diagnostics:?}");
            text.clear();
        }
    }
    store
}

fn node(namespace: &str) -> NodeIdentity {
    NodeIdentity {
        id: "svc-00042-v1".to_owned(),
        namespace: namespace.to_owned(),
        service_account: "default".to_owned(),
        labels: BTreeMap::new(),
    }
}

fn benches(c: &mut Criterion) {
    let store = store();
    let options = options();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    // The previous Mesh is dropped outside the measurement (in the controller it is dropped
    // when the last stream lets go of it).
    group.bench_function("10k_services", |b| {
        b.iter_with_large_drop(|| compile(black_box(&store), &options))
    });
    group.finish();

    let mesh = compile(&store, &options);
    assert!(mesh.diagnostics().is_empty(), "{:?}", &mesh.diagnostics()[..1]);
    let snapshot = mesh.snapshot_for(&node("default")).snapshot;
    snapshot.validate().unwrap();
    assert_eq!(snapshot.clusters.len(), 3 * SERVICES + 1);
    let mut group = c.benchmark_group("snapshot_for");
    group.sample_size(10);
    group.bench_function("warm", |b| {
        b.iter(|| black_box(mesh.snapshot_for(black_box(&node("default")))))
    });
    // The first sidecar of a namespace after an intent change builds the namespace's outbound
    // routing (a fresh compile per iteration, not measured).
    group.bench_function("cold", |b| {
        b.iter_batched_ref(
            || compile(&store, &options),
            |mesh| black_box(mesh.snapshot_for(&node("default"))),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(compile_benches, benches);
criterion_main!(compile_benches);
