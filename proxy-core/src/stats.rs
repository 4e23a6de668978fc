//! Process-wide counters and histograms, rendered in Prometheus text format on the admin port.
//!
//! Names (all prefixed `weft_`):
//! - `weft_listener_downstream_rq_total{listener,code_class}`: responses sent, by status class.
//! - `weft_listener_downstream_cx_total{listener}`, `weft_listener_downstream_cx_active{listener}`.
//! - `weft_listener_local_replies_total{listener,reason}`: local replies by `x-weft-reason`.
//! - `weft_listener_downstream_cx_mtls_total{listener}`: connections accepted with mutual TLS;
//!   `weft_listener_downstream_cx_tls_total{listener}`: one-way TLS (a gateway's own certificates);
//!   `weft_listener_downstream_cx_plaintext_total{listener}` (on listeners with mTLS settings);
//!   `weft_listener_downstream_cx_refused_total{listener}`: closed before HTTP (plaintext on a
//!   STRICT listener, a failed handshake: untrusted, expired or revoked peer);
//!   `weft_listener_downstream_cx_revoked_total{listener}`: established mutual TLS connections
//!   closed because their peer was revoked afterwards.
//! - `weft_listener_downstream_cx_passthrough_total{listener}`: connections of a TLS
//!   passthrough listener relayed to an endpoint (the refused ones, with no route for their
//!   server name, no ClientHello or no endpoint, count as `..._cx_refused_total`).
//! - `weft_cluster_upstream_rq_total{cluster,code_class}`: upstream responses by class.
//! - `weft_cluster_upstream_rq_active{cluster}`, `weft_cluster_upstream_cx_active{cluster}`,
//!   `weft_cluster_upstream_cx_total{cluster}`, `weft_cluster_upstream_cx_connect_fail_total{cluster}`.
//! - `weft_cluster_upstream_rq_timeout_total{cluster}`, `weft_cluster_upstream_rq_reset_total{cluster}`.
//! - `weft_cluster_upstream_overflow_total{cluster}`: requests refused by a circuit breaker.
//! - `weft_cluster_outlier_ejections_total{cluster}`, `weft_cluster_outlier_ejected{cluster}`.
//! - `weft_cluster_health_check_failures_total{cluster}`, `weft_cluster_membership_healthy{cluster}`,
//!   `weft_cluster_membership_total{cluster}`.
//! - `weft_cluster_upstream_rq_time_ms{cluster}`: histogram of time to response headers.
//! - `weft_cluster_upstream_cx_tls_total{cluster}`, `weft_cluster_upstream_cx_tls_fail_total{cluster}`:
//!   TLS handshakes to the cluster's endpoints that succeeded, failed;
//!   `weft_cluster_upstream_cx_revoked_total{cluster}`: pooled mutual TLS connections dropped
//!   unused because their server was revoked after the handshake.
//! - `weft_client_certificate_reloads_total{result}`: the current snapshot compiled again
//!   because the client certificate files of a `mutual` TLS cluster changed; `result` is
//!   `applied`, or `refused` (files that cannot be used: the previous certificate stays).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Stats of one listener.
#[derive(Default)]
pub(crate) struct ListenerStats {
    pub(crate) rq_by_class: [AtomicU64; 5],
    pub(crate) cx_total: AtomicU64,
    pub(crate) cx_active: AtomicI64,
    pub(crate) cx_mtls: AtomicU64,
    pub(crate) cx_tls: AtomicU64,
    pub(crate) cx_plaintext: AtomicU64,
    pub(crate) cx_refused: AtomicU64,
    pub(crate) cx_revoked: AtomicU64,
    pub(crate) cx_passthrough: AtomicU64,
    pub(crate) local_replies: Mutex<BTreeMap<&'static str, u64>>,
}

impl ListenerStats {
    pub(crate) fn record_status(&self, status: u16) {
        if let Some(counter) = class_index(status).and_then(|i| self.rq_by_class.get(i)) {
            counter.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn record_local_reply(&self, reason: &'static str) {
        if let Ok(mut map) = self.local_replies.lock() {
            *map.entry(reason).or_default() += 1;
        }
    }
}

/// Stats of one cluster.
#[derive(Default)]
pub(crate) struct ClusterStats {
    pub(crate) rq_by_class: [AtomicU64; 5],
    pub(crate) rq_active: AtomicI64,
    pub(crate) cx_total: AtomicU64,
    pub(crate) cx_active: AtomicI64,
    pub(crate) cx_connect_fail: AtomicU64,
    pub(crate) rq_timeout: AtomicU64,
    pub(crate) rq_reset: AtomicU64,
    pub(crate) overflow: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) hc_failures: AtomicU64,
    pub(crate) tls_handshakes: AtomicU64,
    pub(crate) tls_handshake_errors: AtomicU64,
    pub(crate) cx_revoked: AtomicU64,
    pub(crate) rq_time: Histogram,
}

impl ClusterStats {
    pub(crate) fn record_status(&self, status: u16) {
        if let Some(counter) = class_index(status).and_then(|i| self.rq_by_class.get(i)) {
            counter.fetch_add(1, Relaxed);
        }
    }
}

fn class_index(status: u16) -> Option<usize> {
    (100..600).contains(&status).then(|| usize::from(status / 100 - 1))
}

/// Upper bounds of the latency histogram buckets, in milliseconds.
const BUCKETS_MS: [f64; 15] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

/// A fixed-bucket latency histogram.
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; 16],
    sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let index = BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(BUCKETS_MS.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum_us
            .fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// Gauges computed at render time from live cluster state.
pub(crate) struct ClusterGauges {
    pub(crate) healthy: usize,
    pub(crate) total: usize,
    pub(crate) ejected: usize,
}

/// All stats of the process, keyed by listener and cluster name; they survive snapshot updates.
#[derive(Default)]
pub(crate) struct Stats {
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterStats>>>,
    /// Rebuilds for changed client certificate files: applied, refused.
    pub(crate) client_files_reloads: [AtomicU64; 2],
}

impl Stats {
    pub(crate) fn listener(&self, name: &str) -> Arc<ListenerStats> {
        let mut map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }

    pub(crate) fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        let mut map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Renders every metric in Prometheus text exposition format.
    pub(crate) fn render(&self, gauges: &BTreeMap<String, ClusterGauges>) -> String {
        let mut out = String::with_capacity(8192);
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner()).clone();

        header(
            &mut out,
            "weft_listener_downstream_rq_total",
            "counter",
            "Responses sent downstream, by status class.",
        );
        for (name, s) in &listeners {
            for (i, counter) in s.rq_by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weft_listener_downstream_rq_total{{listener=\"{}\",code_class=\"{}xx\"}} {}",
                    esc(name),
                    i + 1,
                    counter.load(Relaxed)
                );
            }
        }
        simple(
            &mut out,
            "weft_listener_downstream_cx_total",
            "counter",
            "Downstream connections accepted.",
            "listener",
            &listeners,
            |s| s.cx_total.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_listener_downstream_cx_active",
            "gauge",
            "Downstream connections open.",
            "listener",
            &listeners,
            |s| s.cx_active.load(Relaxed),
        );
        simple(
            &mut out,
            "weft_listener_downstream_cx_mtls_total",
            "counter",
            "Downstream connections accepted with mutual TLS.",
            "listener",
            &listeners,
            |s| s.cx_mtls.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_listener_downstream_cx_tls_total",
            "counter",
            "Downstream connections accepted with one-way TLS.",
            "listener",
            &listeners,
            |s| s.cx_tls.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_listener_downstream_cx_plaintext_total",
            "counter",
            "Downstream plaintext connections on a listener with mutual TLS settings.",
            "listener",
            &listeners,
            |s| s.cx_plaintext.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_listener_downstream_cx_refused_total",
            "counter",
            "Downstream connections closed before HTTP: refused plaintext or TLS, failed handshakes.",
            "listener",
            &listeners,
            |s| s.cx_refused.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_listener_downstream_cx_revoked_total",
            "counter",
            "Established mutual TLS connections closed because their peer was revoked.",
            "listener",
            &listeners,
            |s| s.cx_revoked.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_listener_downstream_cx_passthrough_total",
            "counter",
            "Connections of a TLS passthrough listener relayed to an endpoint.",
            "listener",
            &listeners,
            |s| s.cx_passthrough.load(Relaxed) as i64,
        );
        header(
            &mut out,
            "weft_listener_local_replies_total",
            "counter",
            "Responses made by the proxy itself, by x-weft-reason.",
        );
        for (name, s) in &listeners {
            let map = s.local_replies.lock().unwrap_or_else(|p| p.into_inner());
            for (reason, count) in map.iter() {
                let _ = writeln!(
                    out,
                    "weft_listener_local_replies_total{{listener=\"{}\",reason=\"{reason}\"}} {count}",
                    esc(name)
                );
            }
        }

        header(
            &mut out,
            "weft_client_certificate_reloads_total",
            "counter",
            "Rebuilds for changed client certificate files of mutual TLS clusters, by result.",
        );
        for (result, counter) in ["applied", "refused"].iter().zip(&self.client_files_reloads) {
            let _ = writeln!(
                out,
                "weft_client_certificate_reloads_total{{result=\"{result}\"}} {}",
                counter.load(Relaxed)
            );
        }

        header(
            &mut out,
            "weft_cluster_upstream_rq_total",
            "counter",
            "Upstream responses, by status class.",
        );
        for (name, s) in &clusters {
            for (i, counter) in s.rq_by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weft_cluster_upstream_rq_total{{cluster=\"{}\",code_class=\"{}xx\"}} {}",
                    esc(name),
                    i + 1,
                    counter.load(Relaxed)
                );
            }
        }
        let c = &clusters;
        simple(
            &mut out,
            "weft_cluster_upstream_rq_active",
            "gauge",
            "Requests in flight to the cluster.",
            "cluster",
            c,
            |s| s.rq_active.load(Relaxed),
        );
        simple(
            &mut out,
            "weft_cluster_upstream_cx_total",
            "counter",
            "Upstream connections opened.",
            "cluster",
            c,
            |s| s.cx_total.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_upstream_cx_active",
            "gauge",
            "Upstream connections open.",
            "cluster",
            c,
            |s| s.cx_active.load(Relaxed),
        );
        simple(
            &mut out,
            "weft_cluster_upstream_cx_connect_fail_total",
            "counter",
            "Upstream connections that failed to open.",
            "cluster",
            c,
            |s| s.cx_connect_fail.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_upstream_cx_tls_total",
            "counter",
            "TLS handshakes to the cluster's endpoints that succeeded.",
            "cluster",
            c,
            |s| s.tls_handshakes.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_upstream_cx_revoked_total",
            "counter",
            "Pooled mutual TLS connections dropped because their server was revoked.",
            "cluster",
            c,
            |s| s.cx_revoked.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_upstream_cx_tls_fail_total",
            "counter",
            "TLS handshakes to the cluster's endpoints that failed.",
            "cluster",
            c,
            |s| s.tls_handshake_errors.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_upstream_rq_timeout_total",
            "counter",
            "Upstream requests that timed out.",
            "cluster",
            c,
            |s| s.rq_timeout.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_upstream_rq_reset_total",
            "counter",
            "Upstream requests reset before the response.",
            "cluster",
            c,
            |s| s.rq_reset.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_upstream_overflow_total",
            "counter",
            "Requests refused by a circuit breaker.",
            "cluster",
            c,
            |s| s.overflow.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_outlier_ejections_total",
            "counter",
            "Endpoints ejected by outlier detection.",
            "cluster",
            c,
            |s| s.ejections.load(Relaxed) as i64,
        );
        simple(
            &mut out,
            "weft_cluster_health_check_failures_total",
            "counter",
            "Failed active health checks.",
            "cluster",
            c,
            |s| s.hc_failures.load(Relaxed) as i64,
        );

        for (metric, help, pick) in [
            (
                "weft_cluster_membership_total",
                "Endpoints in the cluster.",
                (|g: &ClusterGauges| g.total) as fn(&ClusterGauges) -> usize,
            ),
            (
                "weft_cluster_membership_healthy",
                "Endpoints passing health checks.",
                |g| g.healthy,
            ),
            ("weft_cluster_outlier_ejected", "Endpoints ejected right now.", |g| {
                g.ejected
            }),
        ] {
            header(&mut out, metric, "gauge", help);
            for (name, g) in gauges {
                let _ = writeln!(out, "{metric}{{cluster=\"{}\"}} {}", esc(name), pick(g));
            }
        }

        header(
            &mut out,
            "weft_cluster_upstream_rq_time_ms",
            "histogram",
            "Time from sending the request to the response headers.",
        );
        for (name, s) in &clusters {
            let mut cumulative = 0;
            for (i, bucket) in s.rq_time.buckets.iter().enumerate() {
                cumulative += bucket.load(Relaxed);
                let le = BUCKETS_MS.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "weft_cluster_upstream_rq_time_ms_bucket{{cluster=\"{}\",le=\"{le}\"}} {cumulative}",
                    esc(name)
                );
            }
            let sum_ms = s.rq_time.sum_us.load(Relaxed) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "weft_cluster_upstream_rq_time_ms_sum{{cluster=\"{}\"}} {sum_ms}",
                esc(name)
            );
            let _ = writeln!(
                out,
                "weft_cluster_upstream_rq_time_ms_count{{cluster=\"{}\"}} {cumulative}",
                esc(name)
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn simple<T>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    map: &BTreeMap<String, Arc<T>>,
    value: impl Fn(&T) -> i64,
) {
    header(out, name, kind, help);
    for (key, s) in map {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {}", esc(key), value(s));
    }
}

/// Escapes a Prometheus label value.
fn esc(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
