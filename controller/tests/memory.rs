//! Memory at 10,000 services (the compile test of `cargo xtask bench controller`, in process):
//! what the controller holds idle, after one sidecar's first snapshot and after VirtualService
//! edits, split into live heap (counted by this binary's allocator) and what glibc's malloc
//! keeps (`mallinfo2`) against the process's `VmRSS`; and what each structure of the pipeline
//! holds.
//!
//! `cargo test -p weft-controller --release --test memory -- --ignored --nocapture --test-threads 1`
//! (one test at a time: they share the allocator's counters). `WEFT_MALLOC_INFO=1` adds
//! glibc's arenas one by one, `WEFT_LOG=weft_controller=debug` the controller's log (each
//! compile's `took=`, each `malloc_trim`).
//!
//! Ignored by default: they write 26 MB of YAML and take about 15 s in release.

#![allow(unsafe_code, reason = "mallinfo2 and the counting allocator")]
#![allow(clippy::print_stdout, reason = "the measurements are the output")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use weft_api::pb;
use weft_controller::{Controller, ControllerConfig};

#[path = "common/options.rs"]
mod common;
mod support;

/// The system allocator (glibc malloc), counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` with the same arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: f64 = 1024.0 * 1024.0;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One line: RSS, peak RSS, live heap (and its peak since the last line), and glibc's view:
/// bytes in use, free bytes in its arenas (resident or not: pages `malloc_trim` gave back
/// still count), mmapped chunks, arenas' total size.
fn report(what: &str) {
    let (rss, hwm) = rss();
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    let live = LIVE.load(Ordering::Relaxed);
    let peak = PEAK.swap(live, Ordering::Relaxed);
    println!(
        "{what:<44} RSS {:7.1}  HWM {:7.1}  live {:7.1} (peak {:7.1})  malloc: in use {:7.1}, free kept {:7.1}, mmapped {:6.1}, arenas {:7.1} MiB",
        mib(rss),
        mib(hwm),
        mib(live),
        mib(peak),
        mib(info.uordblks),
        mib(info.fordblks),
        mib(info.hblkhd),
        mib(info.arena),
    );
    if std::env::var_os("WEFT_MALLOC_INFO").is_some() {
        println!("    arenas [n: system/free MiB]:{}", arenas());
    }
}

/// glibc's arenas, one line each: `arena N: <in system> (<free>)` from `malloc_info`.
fn arenas() -> String {
    let path = std::env::temp_dir().join(format!("weft-malloc-info-{}.xml", std::process::id()));
    let c_path = std::ffi::CString::new(path.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: a file opened, written by malloc_info and closed.
    unsafe {
        let file = libc::fopen(c_path.as_ptr(), c"w".as_ptr());
        assert!(!file.is_null());
        libc::malloc_info(0, file);
        libc::fclose(file);
    }
    let xml = std::fs::read_to_string(&path).expect("malloc_info");
    let _ = std::fs::remove_file(&path);
    let mut out = String::new();
    for heap in xml.split("<heap nr=").skip(1) {
        let number: String = heap.chars().skip(1).take_while(char::is_ascii_digit).collect();
        // `<tag ...size="N"...>`: the size of the first element starting with `tag`.
        let size = |tag: &str| {
            heap.split(tag)
                .nth(1)
                .and_then(|rest| rest.split("size=\"").nth(1))
                .and_then(|rest| rest.split('"').next())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let _ = write!(
            out,
            " [{number}: {:.0}/{:.0}]",
            mib(size("<system type=\"current\"")),
            mib(size("<total type=\"rest\"") + size("<total type=\"fast\""))
        );
    }
    out
}

const SERVICES: usize = 10_000;
const WORKLOADS: usize = 2;
const PER_FILE: usize = 100;

/// The compile test's intent, as `xtask/src/bench/controller/intent.rs` writes it:
/// `services/NNNN.yaml` (Services, Workloads, DestinationRules) and `virtualservices/NNNN.yaml`,
/// 100 services a file.
fn write_intent(dir: &Path, weights: &[u32]) {
    for sub in ["services", "virtualservices"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    for file in 0..SERVICES.div_ceil(PER_FILE) {
        let mut text = String::new();
        for i in file * PER_FILE..(file + 1) * PER_FILE {
            let name = format!("svc-{i:05}");
            let _ = write!(
                text,
                "apiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: default }}\nspec:\n  \
                 selector: {{ app: {name} }}\n  ports: [{{ name: http, port: 8080, targetPort: http }}]\n---\n"
            );
            for j in 0..WORKLOADS {
                let k = i * WORKLOADS + j;
                let version = if j == 0 { "v1" } else { "v2" };
                let _ = write!(
                    text,
                    "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {{ name: {name}-{j}, namespace: default, \
                     labels: {{ app: {name}, version: {version} }} }}\nspec:\n  address: 10.{}.{}.{}\n  \
                     serviceAccount: {name}\n  ports: {{ http: 8080 }}\n  sidecar: {{ inbound: 15006, outbound: 15001 }}\n---\n",
                    (k >> 16) & 255,
                    (k >> 8) & 255,
                    k & 255
                );
            }
            let _ = write!(
                text,
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: {name}, namespace: default }}\n\
                 spec:\n  host: {name}\n  subsets:\n    - {{ name: v1, labels: {{ version: v1 }} }}\n    \
                 - {{ name: v2, labels: {{ version: v2 }} }}\n---\n"
            );
        }
        std::fs::write(dir.join(format!("services/{file:04}.yaml")), text).expect("write");
        write_virtual_services(dir, file, weights);
    }
}

fn write_virtual_services(dir: &Path, file: usize, weights: &[u32]) {
    let mut text = String::new();
    let first = file * PER_FILE;
    for (i, v1) in (first..).zip(&weights[first..first + PER_FILE]) {
        let name = format!("svc-{i:05}");
        let _ = write!(
            text,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: {name}, namespace: default }}\n\
             spec:\n  hosts: [{name}]\n  http:\n    - route:\n        \
             - {{ destination: {{ host: {name}, subset: v1 }}, weight: {v1} }}\n        \
             - {{ destination: {{ host: {name}, subset: v2 }}, weight: {} }}\n---\n",
            100 - v1
        );
    }
    std::fs::write(dir.join(format!("virtualservices/{file:04}.yaml")), text).expect("write");
}

/// One sidecar's config stream (`svc-00000-0`), taking snapshots of any size.
struct Sidecar {
    tx: tokio::sync::mpsc::Sender<pb::DiscoveryRequest>,
    rx: tonic::Streaming<pb::DiscoveryResponse>,
}

impl Sidecar {
    async fn open(controller: &Controller) -> Self {
        let (tx, requests) = tokio::sync::mpsc::channel(4);
        let node = pb::Node {
            id: "svc-00000-0".into(),
            namespace: "default".into(),
            service_account: "svc-00000".into(),
            labels: [("app", "svc-00000"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Default::default()
        };
        tx.send(pb::DiscoveryRequest {
            node: Some(node),
            ..Default::default()
        })
        .await
        .expect("send hello");
        let rx = pb::discovery_client::DiscoveryClient::new(support::channel(controller).await)
            .max_decoding_message_size(usize::MAX)
            .stream_snapshots(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .expect("stream opens")
            .into_inner();
        Self { tx, rx }
    }

    async fn next(&mut self) -> pb::DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(120), self.rx.message())
            .await
            .expect("a snapshot within 2 minutes")
            .expect("stream ok")
            .expect("stream open")
    }

    async fn answer(&self, response: &pb::DiscoveryResponse) {
        let ack = pb::DiscoveryRequest {
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        self.tx.send(ack).await.expect("send ACK");
    }
}

/// The real controller (file source, compile, one config stream) on the compile test's
/// intent: idle, after one sidecar's first snapshot, after each of three VirtualService edits
/// (each ACKed), then after `malloc_trim(0)`, which tells memory glibc keeps from memory in
/// use.
#[test]
#[ignore = "a measurement: 10,000 services, about 10 s in release"]
fn controller_memory_after_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let intent = dir.path().join("intent");
    let mut weights = vec![50; SERVICES];
    write_intent(&intent, &weights);
    std::fs::create_dir_all(dir.path().join("filters")).expect("mkdir");
    for (i, name) in ["router", "retry", "fault"].iter().enumerate() {
        let bytes = [0, b'a', b's', b'm', 1, 0, 0, 0, 0, 2, 1, b'a' + i as u8];
        std::fs::write(dir.path().join(format!("filters/{name}.wasm")), bytes).expect("write");
    }
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    report("before start");
    // As `main.rs` runs it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = ControllerConfig {
            grpc_address: "127.0.0.1:0".parse().expect("addr"),
            registry_address: Some("127.0.0.1:0".parse().expect("addr")),
            ..ControllerConfig::new(&intent, dir.path().join("data"), dir.path().join("filters"))
        };
        let controller = Controller::start(config).await.expect("controller starts");
        tokio::time::sleep(Duration::from_secs(1)).await;
        report("idle after start");

        let mut sidecar = Sidecar::open(&controller).await;
        let first = sidecar.next().await;
        sidecar.answer(&first).await;
        let (size, mut version) = (
            first.parts.iter().map(|p| p.data.len()).sum::<usize>(),
            first.version_info,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        report(&format!("first snapshot ({} KB)", size / 1000));

        for edit in 0..3 {
            weights[edit] += 10;
            let written = std::time::Instant::now();
            write_virtual_services(&intent, 0, &weights);
            let next = sidecar.next().await;
            let pushed = written.elapsed();
            assert_ne!(next.version_info, version);
            sidecar.answer(&next).await;
            version = next.version_info;
            tokio::time::sleep(Duration::from_millis(500)).await;
            report(&format!(
                "after edit {} (pushed in {} ms)",
                edit + 1,
                pushed.as_millis()
            ));
        }
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe { libc::malloc_trim(0) };
        report("after malloc_trim(0) (from the test)");
        drop(sidecar);
        drop(controller);
    });
}

/// What each structure of the pipeline holds live (single thread, so `live` deltas are
/// exact), and the peak while it is built.
#[test]
#[ignore = "a measurement: 10,000 services, a few seconds in release"]
fn live_memory_by_structure() {
    use weft_controller::compile::{NodeIdentity, compile};
    use weft_controller::store::Store;
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = vec![50; SERVICES];
    write_intent(dir.path(), &weights);
    let options = common::options();
    let step = |what: &str, before: usize| {
        let live = LIVE.load(Ordering::Relaxed);
        let peak = PEAK.swap(live, Ordering::Relaxed);
        println!(
            "{what:<48} {:+7.1} MiB live (peak while building {:+7.1})",
            (live as f64 - before as f64) / MIB,
            (peak as f64 - before as f64) / MIB,
        );
        live
    };
    println!(
        "size_of: Resource {} B, StoredResource {} B",
        size_of::<weft_controller::resources::Resource>(),
        size_of::<weft_controller::store::StoredResource>()
    );
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let mut live = step("start", 0);
    let documents = weft_controller::source::FileSource::new(dir.path())
        .read()
        .expect("read");
    live = step("documents (YAML text)", live);
    let parsed: Vec<_> = documents
        .files
        .iter()
        .map(|(origin, text)| Store::parse_yaml(origin, text))
        .collect();
    live = step("parsed resources (the per-file cache)", live);
    let mut store = Store::new();
    for ((origin, _), parsed) in documents.files.iter().zip(&parsed) {
        store.insert_parsed(origin, parsed.clone());
    }
    live = step("store", live);
    let mesh = compile(&store, &options);
    live = step("mesh", live);
    let node = NodeIdentity {
        id: "svc-00000-0".to_owned(),
        namespace: "default".to_owned(),
        service_account: "svc-00000".to_owned(),
        labels: [("app", "svc-00000"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let encoded = mesh.encoded_for(&node, &weft_api::Security::default(), true);
    live = step(
        &format!("first encoded_for ({} KB, kept)", encoded.bytes().len() / 1000),
        live,
    );
    drop(encoded);
    live = step("  its bytes dropped (shared part stays cached)", live);
    let again = mesh.encoded_for(&node, &weft_api::Security::default(), true);
    live = step("second encoded_for (the part cached)", live);
    drop(again);
    live = step("  dropped", live);
    let second = compile(&store, &options);
    live = step("a second mesh while the first is alive", live);
    drop(second);
    drop(mesh);
    live = step("both meshes dropped", live);
    drop(store);
    live = step("store dropped", live);
    drop(parsed);
    step("parsed dropped", live);
}
