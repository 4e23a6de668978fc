//! Process-wide counters for the retry budget, kept in proxy-wasm shared data (one value per
//! key, 8 bytes little-endian) and updated with compare-and-swap loops, since every worker's VM
//! updates them.

/// Shared data as the filter uses it (the host's, or a map in tests).
pub trait SharedData {
    /// The value and its CAS token; `(None, None)` when the key does not exist.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` if `cas` is still the key's token (`None`: unconditionally); `false` when
    /// another writer came first.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// Why a counter was not changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The update function declined (e.g. the budget is exhausted).
    Declined,
    /// Other writers kept winning; the counter was left alone.
    Contended,
}

/// Compare-and-swap rounds before giving up.
const MAX_ROUNDS: usize = 64;

/// Reads a counter (missing or malformed: 0).
pub fn read(store: &dyn SharedData, key: &str) -> u64 {
    decode(store.get(key).0.as_deref())
}

fn decode(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| b.get(..8))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Applies `change` to a counter atomically; returns the new value.
pub fn update(store: &dyn SharedData, key: &str, change: impl Fn(u64) -> Option<u64>) -> Result<u64, Refused> {
    for _ in 0..MAX_ROUNDS {
        let (bytes, cas) = store.get(key);
        let current = decode(bytes.as_deref());
        let next = change(current).ok_or(Refused::Declined)?;
        // A missing key has no token: the first write is unconditional.
        if store.set(key, &next.to_le_bytes(), cas) {
            return Ok(next);
        }
    }
    Err(Refused::Contended)
}

/// Adds one to a counter.
pub fn increment(store: &dyn SharedData, key: &str) -> Result<u64, Refused> {
    update(store, key, |v| Some(v.saturating_add(1)))
}

/// Takes one from a counter (never below 0).
pub fn decrement(store: &dyn SharedData, key: &str) -> Result<u64, Refused> {
    update(store, key, |v| Some(v.saturating_sub(1)))
}

/// Counts one more retry in flight under `retries_key` unless that reaches `limit` (computed
/// from the active requests under `active_key`).
pub fn acquire(
    store: &dyn SharedData,
    active_key: &str,
    retries_key: &str,
    limit: impl Fn(u64) -> u64,
) -> Result<u64, Refused> {
    let allowed = limit(read(store, active_key));
    update(store, retries_key, |retries| (retries < allowed).then_some(retries + 1))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// Shared data in a map, with the host's CAS rules; `interfere` makes the next N writes
    /// lose to a concurrent writer that adds 10.
    #[derive(Default)]
    pub(crate) struct Map {
        values: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        pub(crate) interfere: Cell<usize>,
    }

    impl SharedData for Map {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.values.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            }
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let mut values = self.values.borrow_mut();
            if self.interfere.get() > 0 {
                self.interfere.set(self.interfere.get() - 1);
                let entry = values.entry(key.to_owned()).or_insert((vec![0; 8], 0));
                entry.0 = (decode(Some(&entry.0)) + 10).to_le_bytes().to_vec();
                entry.1 += 1;
                return false;
            }
            let current = values.get(key).map(|(_, c)| *c);
            match (cas, current) {
                (Some(cas), Some(current)) if cas != current => false,
                (Some(_), None) => false,
                _ => {
                    values.insert(key.to_owned(), (value.to_vec(), current.unwrap_or(0) + 1));
                    true
                }
            }
        }
    }

    #[test]
    fn counters_count_up_and_down_but_not_below_zero() {
        let map = Map::default();
        assert_eq!(read(&map, "a"), 0);
        assert_eq!(increment(&map, "a"), Ok(1));
        assert_eq!(increment(&map, "a"), Ok(2));
        assert_eq!(decrement(&map, "a"), Ok(1));
        assert_eq!(decrement(&map, "a"), Ok(0));
        assert_eq!(decrement(&map, "a"), Ok(0));
        assert_eq!(read(&map, "b"), 0, "keys are independent");
    }

    #[test]
    fn lost_races_are_retried_on_the_new_value() {
        let map = Map::default();
        increment(&map, "a").expect("first");
        map.interfere.set(2);
        assert_eq!(increment(&map, "a"), Ok(22), "1 + 10 + 10 from the other writer, + 1");
        map.interfere.set(MAX_ROUNDS);
        assert_eq!(increment(&map, "a"), Err(Refused::Contended));
    }

    #[test]
    fn the_budget_refuses_retries_past_its_limit() {
        let map = Map::default();
        for _ in 0..10 {
            increment(&map, "active").expect("active");
        }
        // Limit: half the active requests.
        let half = |active: u64| active / 2;
        for expected in 1..=5 {
            assert_eq!(acquire(&map, "active", "retries", half), Ok(expected));
        }
        assert_eq!(acquire(&map, "active", "retries", half), Err(Refused::Declined));
        decrement(&map, "retries").expect("a retry finished");
        assert_eq!(acquire(&map, "active", "retries", half), Ok(5));
        assert_eq!(
            acquire(&map, "active", "retries", |_| 0),
            Err(Refused::Declined),
            "a zero budget refuses every retry"
        );
    }

    #[test]
    fn malformed_values_read_as_zero() {
        let map = Map::default();
        assert!(map.set("a", b"xyz", None));
        assert_eq!(read(&map, "a"), 0);
        assert_eq!(increment(&map, "a"), Ok(1));
    }
}
