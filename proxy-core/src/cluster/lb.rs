//! Load balancing over a set of endpoints: weighted round robin, least request (power of two
//! choices), ring hash (consistent hashing) and weighted random.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use weft_api::LbPolicy;

use super::{Cluster, Cursor, Endpoint, HashInput, now_ms};

/// Virtual nodes per unit of weight on the hash ring.
const RING_NODES_PER_WEIGHT: u64 = 128;
/// Longest precomputed round-robin schedule; beyond it weights are honoured by random choice.
const MAX_SCHEDULE: usize = 4096;

/// A set of endpoints balanced together: a cluster or one of its subsets.
#[derive(Default)]
pub(crate) struct LbSet {
    members: Vec<Arc<Endpoint>>,
    /// Smooth weighted round-robin order, as indices into `members`.
    schedule: Vec<u32>,
    cursor: Cursor,
    /// Sorted (hash, member index) points; built for ring_hash only.
    ring: Vec<(u64, u32)>,
    policy: LbPolicy,
}

impl LbSet {
    pub(crate) fn build(cluster: &Cluster, include: impl Fn(&Endpoint) -> bool) -> Self {
        let members: Vec<Arc<Endpoint>> = cluster.endpoints.iter().filter(|e| include(e)).cloned().collect();
        let schedule = smooth_wrr(&members);
        let ring = if cluster.lb_policy == LbPolicy::RingHash {
            build_ring(&members)
        } else {
            Vec::new()
        };
        Self {
            members,
            schedule,
            cursor: Cursor::default(),
            ring,
            policy: cluster.lb_policy,
        }
    }

    /// Picks an available endpoint, or `None` when none is healthy and un-ejected.
    pub(crate) fn pick(&self, cluster: &Cluster, input: &HashInput<'_>) -> Option<Arc<Endpoint>> {
        if self.members.is_empty() {
            return None;
        }
        let now = now_ms();
        let picked = match self.policy {
            LbPolicy::RoundRobin => self.round_robin(now),
            LbPolicy::Random => self.random(now),
            LbPolicy::LeastRequest => self.least_request(now),
            LbPolicy::RingHash => match hash_key(cluster, input) {
                Some(key) => self.ring_lookup(key, now),
                None => self.random(now),
            },
        };
        picked.cloned()
    }

    /// Picks an available endpoint other than those in `exclude` (endpoints already tried),
    /// falling back to any available one when every other is excluded.
    pub(crate) fn pick_excluding(
        &self,
        cluster: &Cluster,
        input: &HashInput<'_>,
        exclude: &[std::net::SocketAddr],
    ) -> Option<Arc<Endpoint>> {
        let now = now_ms();
        let fresh: Vec<&Arc<Endpoint>> = self
            .members
            .iter()
            .filter(|e| e.is_available(now) && !exclude.contains(&e.addr))
            .collect();
        if fresh.is_empty() {
            return self.pick(cluster, input);
        }
        for _ in 0..self.members.len() * 2 {
            match self.pick(cluster, input) {
                Some(e) if !exclude.contains(&e.addr) => return Some(e),
                Some(_) => {}
                None => return None,
            }
        }
        fresh.get(fastrand::usize(..fresh.len())).map(|e| (*e).clone())
    }

    fn round_robin(&self, now: u64) -> Option<&Arc<Endpoint>> {
        if self.schedule.is_empty() {
            return self.random(now);
        }
        let start = self.cursor.next();
        (0..self.schedule.len()).find_map(|i| {
            let slot = self.schedule[(start + i) % self.schedule.len()];
            self.members.get(slot as usize).filter(|e| e.is_available(now))
        })
    }

    fn random(&self, now: u64) -> Option<&Arc<Endpoint>> {
        self.random_except(now, None)
    }

    /// Weighted random choice among available members, other than `except`.
    fn random_except(&self, now: u64, except: Option<&Arc<Endpoint>>) -> Option<&Arc<Endpoint>> {
        let eligible = |e: &&Arc<Endpoint>| e.is_available(now) && except.is_none_or(|x| !Arc::ptr_eq(x, e));
        weighted_choice(self.members.iter().filter(eligible), |e| e.weight)
    }

    fn least_request(&self, now: u64) -> Option<&Arc<Endpoint>> {
        let a = self.random(now)?;
        // Two distinct candidates where there are two: drawing with replacement would compare
        // an endpoint with itself.
        let Some(b) = self.random_except(now, Some(a)) else {
            return Some(a);
        };
        // Weighted: compare active requests relative to weight.
        let load = |e: &Endpoint| u64::from(e.active_requests.load(Relaxed)) * 1000 / u64::from(e.weight.max(1));
        Some(if load(b) < load(a) { b } else { a })
    }

    fn ring_lookup(&self, key: u64, now: u64) -> Option<&Arc<Endpoint>> {
        if self.ring.is_empty() {
            return self.random(now);
        }
        let start = self.ring.partition_point(|(h, _)| *h < key);
        (0..self.ring.len()).find_map(|i| {
            let (_, member) = self.ring[(start + i) % self.ring.len()];
            self.members.get(member as usize).filter(|e| e.is_available(now))
        })
    }
}

fn hash64(value: impl Hash) -> u64 {
    // SipHash with fixed keys: stable across workers and restarts.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn hash_key(cluster: &Cluster, input: &HashInput<'_>) -> Option<u64> {
    if let Some(key) = input.key {
        return Some(hash64(key.as_bytes()));
    }
    let on = cluster.hash_on.as_ref()?;
    if let Some(name) = &on.header {
        return input.headers.get(name.as_str()).map(|v| hash64(v.as_bytes()));
    }
    if let Some(name) = &on.cookie {
        return cookie(input.headers, name).map(hash64);
    }
    on.source_ip.then(|| hash64(input.source_ip))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn build_ring(members: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (index, endpoint) in members.iter().enumerate() {
        let nodes = u64::from(endpoint.weight) * RING_NODES_PER_WEIGHT;
        for node in 0..nodes {
            ring.push((hash64((endpoint.addr, node)), index as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// nginx's smooth weighted round robin, unrolled into a schedule.
fn smooth_wrr(members: &[Arc<Endpoint>]) -> Vec<u32> {
    let weights: Vec<i64> = members.iter().map(|e| i64::from(e.weight)).collect();
    let total: i64 = weights.iter().sum();
    let gcd = weights.iter().fold(0, |acc, &w| gcd(acc, w)).max(1);
    let length = usize::try_from(total / gcd).unwrap_or(usize::MAX);
    if length == 0 || length > MAX_SCHEDULE {
        return Vec::new();
    }
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(length);
    for _ in 0..length {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One of `items`, chosen at random in proportion to `weight`; `None` when they weigh nothing.
pub(crate) fn weighted_choice<T>(items: impl Iterator<Item = T> + Clone, weight: impl Fn(&T) -> u32) -> Option<T> {
    let total: u64 = items.clone().map(|item| u64::from(weight(&item))).sum();
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u64(0..total);
    items.into_iter().find(|item| {
        let w = u64::from(weight(item));
        if point < w {
            true
        } else {
            point -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterSet;
    use crate::stats::Stats;
    use std::collections::HashMap;

    fn cluster(policy: &str, weights: &[u32], extra: &str) -> Arc<Cluster> {
        let endpoints: String = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!("      - {{ address: 127.0.0.1:{}, weight: {w} }}\n", 9000 + i))
            .collect();
        let yaml = format!("clusters:\n  - name: c\n    lb_policy: {policy}\n{extra}    endpoints:\n{endpoints}");
        let snapshot = weft_api::Snapshot::from_yaml(&yaml).expect("valid snapshot");
        let set =
            ClusterSet::build(&snapshot, None, &Stats::default(), &crate::tls::MeshTls::new()).unwrap_or_default();
        set.by_name.get("c").expect("cluster").clone()
    }

    fn counts(cluster: &Cluster, n: usize, input: impl Fn(usize) -> http::HeaderMap) -> HashMap<u16, usize> {
        let mut counts = HashMap::new();
        for i in 0..n {
            let headers = input(i);
            let hi = HashInput {
                headers: &headers,
                source_ip: [127, 0, 0, 1].into(),
                key: None,
            };
            let e = cluster.all.pick(cluster, &hi).expect("an endpoint");
            *counts.entry(e.addr.port()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let c = cluster("round_robin", &[1, 2, 3], "");
        let counts = counts(&c, 600, |_| http::HeaderMap::new());
        assert_eq!(counts[&9000], 100);
        assert_eq!(counts[&9001], 200);
        assert_eq!(counts[&9002], 300);
    }

    #[test]
    fn random_is_roughly_weighted() {
        let c = cluster("random", &[1, 3], "");
        let counts = counts(&c, 8000, |_| http::HeaderMap::new());
        let share = counts[&9001] as f64 / 8000.0;
        assert!((0.70..0.80).contains(&share), "weight-3 share {share}");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let c = cluster("least_request", &[1, 1], "");
        c.endpoints[0].active_requests.store(50, Relaxed);
        let counts = counts(&c, 1000, |_| http::HeaderMap::new());
        // Two distinct candidates out of two: the idle one wins every time.
        let busy = counts.get(&9000).copied().unwrap_or(0);
        assert_eq!(busy, 0, "busy endpoint got {busy}");
    }

    #[test]
    fn ring_hash_is_sticky_and_spreads_keys() {
        let c = cluster("ring_hash", &[1, 1, 1], "    hash_on: { header: x-user }\n");
        let by_key = |i: usize| {
            let mut h = http::HeaderMap::new();
            h.insert("x-user", format!("user-{}", i % 50).parse().expect("header"));
            h
        };
        let mut first = HashMap::new();
        for i in 0..500 {
            let headers = by_key(i);
            let hi = HashInput {
                headers: &headers,
                source_ip: [127, 0, 0, 1].into(),
                key: None,
            };
            let port = c.all.pick(&c, &hi).expect("endpoint").addr.port();
            assert_eq!(*first.entry(i % 50).or_insert(port), port, "key {} moved", i % 50);
        }
        let spread = counts(&c, 500, by_key);
        assert_eq!(spread.len(), 3, "keys should spread over all endpoints: {spread:?}");
        // An unavailable endpoint's keys move; the others' keys stay.
        c.endpoints[0].healthy.store(false, Relaxed);
        for (key, port) in &first {
            let mut h = http::HeaderMap::new();
            h.insert("x-user", format!("user-{key}").parse().expect("header"));
            let hi = HashInput {
                headers: &h,
                source_ip: [127, 0, 0, 1].into(),
                key: None,
            };
            let now = c.all.pick(&c, &hi).expect("endpoint").addr.port();
            if *port != 9000 {
                assert_eq!(now, *port);
            } else {
                assert_ne!(now, 9000);
            }
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; session=xyz; b=2".parse().expect("header"));
        assert_eq!(cookie(&h, "session"), Some("xyz"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn nothing_is_picked_when_all_are_unavailable() {
        let c = cluster("round_robin", &[1, 1], "");
        for e in &c.endpoints {
            e.healthy.store(false, Relaxed);
        }
        let hi = HashInput {
            headers: &http::HeaderMap::new(),
            source_ip: [127, 0, 0, 1].into(),
            key: None,
        };
        assert!(c.all.pick(&c, &hi).is_none());
    }
}
