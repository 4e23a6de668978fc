//! The VM-local cache of metric ids per label set, and its bound on the number of series.

use std::collections::HashMap;

/// Most label sets one VM caches (one VM per worker). Past it, new label sets are recorded
/// with the request's host ignored (see [`SeriesCache::lookup`]).
pub const MAX_SERIES: usize = 2048;

/// Metric ids per label set (the Prometheus label string).
#[derive(Debug)]
pub struct SeriesCache<T> {
    ids: HashMap<String, T>,
    limit: usize,
    overflowed: bool,
}

/// How [`SeriesCache::lookup`] found the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Already cached.
    Cached(T),
    /// Defined now and cached.
    Defined(T),
    /// The cache was full: the fallback label set was used. `first` is true the first time
    /// this happens in this cache (the filter then logs a warning).
    Overflow {
        /// The ids of the fallback label set.
        ids: T,
        /// First overflow of this cache.
        first: bool,
    },
}

impl<T> Lookup<T> {
    /// The ids, however they were found.
    pub fn ids(self) -> T {
        match self {
            Lookup::Cached(ids) | Lookup::Defined(ids) | Lookup::Overflow { ids, .. } => ids,
        }
    }
}

impl<T: Copy> SeriesCache<T> {
    /// An empty cache holding at most `limit` label sets (plus fallback ones, see
    /// [`SeriesCache::lookup`]).
    pub fn new(limit: usize) -> Self {
        Self {
            ids: HashMap::new(),
            limit,
            overflowed: false,
        }
    }

    /// Label sets cached.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids for `series`: cached, or defined with `define` and cached. When the cache is
    /// full and `series` is new, `fallback()` gives the label set to use instead (the request
    /// with its host ignored, a set the configuration bounds); fallback sets are cached past
    /// the limit, since their number is bounded.
    pub fn lookup(
        &mut self,
        series: String,
        fallback: impl FnOnce() -> String,
        define: impl FnOnce(&str) -> T,
    ) -> Lookup<T> {
        if let Some(ids) = self.ids.get(&series) {
            return Lookup::Cached(*ids);
        }
        if self.ids.len() < self.limit {
            let ids = define(&series);
            self.ids.insert(series, ids);
            return Lookup::Defined(ids);
        }
        let first = !std::mem::replace(&mut self.overflowed, true);
        let series = fallback();
        let ids = match self.ids.get(&series) {
            Some(ids) => *ids,
            None => {
                let ids = define(&series);
                self.ids.insert(series, ids);
                ids
            }
        };
        Lookup::Overflow { ids, first }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_defined_once_then_fall_back_when_full() {
        let mut cache = SeriesCache::new(2);
        let mut defined = Vec::new();
        let mut define = |name: &str| {
            defined.push(name.to_owned());
            defined.len()
        };
        assert_eq!(cache.lookup("a".into(), || "x".into(), &mut define), Lookup::Defined(1));
        assert_eq!(cache.lookup("a".into(), || "x".into(), &mut define), Lookup::Cached(1));
        assert_eq!(cache.lookup("b".into(), || "x".into(), &mut define), Lookup::Defined(2));
        assert_eq!(cache.lookup("b".into(), || "x".into(), &mut define), Lookup::Cached(2));
        assert_eq!(
            cache.lookup("c".into(), || "x".into(), &mut define),
            Lookup::Overflow { ids: 3, first: true }
        );
        assert_eq!(
            cache.lookup("d".into(), || "x".into(), &mut define),
            Lookup::Overflow { ids: 3, first: false }
        );
        assert_eq!(
            cache.lookup("e".into(), || "y".into(), &mut define),
            Lookup::Overflow { ids: 4, first: false }
        );
        assert_eq!(cache.lookup("a".into(), || "x".into(), &mut define), Lookup::Cached(1));
        assert_eq!(cache.lookup("x".into(), || "z".into(), &mut define), Lookup::Cached(3));
        assert_eq!(defined, ["a", "b", "x", "y"]);
        assert_eq!(cache.len(), 4);
        assert_eq!(Lookup::Overflow { ids: 7, first: false }.ids(), 7);
    }
}
