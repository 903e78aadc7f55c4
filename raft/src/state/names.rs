//! [`Names`]: the entries of a keyed part (key-value, cache), found by hash, listed in name
//! order.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

/// Entries by name: a read finds its entry in a hash map, a listing walks an ordered set of
/// the same names (shared, not copied). A B-tree of `String`s alone compares the name it
/// looks for with several names per level, each behind a pointer: on a cache of 10,000
/// entries that search was a fifth of the CPU of a Redis `GET` pipeline.
///
/// The hash map's order is never observed (listings, digests and snapshots go by the
/// ordered set), so replicas stay byte for byte alike.
#[derive(Debug)]
pub(crate) struct Names<V> {
    map: HashMap<Arc<str>, V>,
    order: BTreeSet<Arc<str>>,
}

impl<V> Default for Names<V> {
    fn default() -> Self {
        Names {
            map: HashMap::new(),
            order: BTreeSet::new(),
        }
    }
}

impl<V> Names<V> {
    pub(crate) fn get(&self, name: &str) -> Option<&V> {
        self.map.get(name)
    }

    /// The entry and the shared name it is stored under, for indexes that hold the name
    /// without a copy of their own.
    pub(crate) fn get_shared(&self, name: &str) -> Option<(&Arc<str>, &V)> {
        self.map.get_key_value(name)
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Sets `name`'s entry; answers the one it replaced.
    pub(crate) fn insert(&mut self, name: &str, value: V) -> Option<V> {
        if let Some(slot) = self.map.get_mut(name) {
            return Some(std::mem::replace(slot, value));
        }
        let name: Arc<str> = Arc::from(name);
        self.order.insert(name.clone());
        self.map.insert(name, value);
        None
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<V> {
        let value = self.map.remove(name)?;
        self.order.remove(name);
        Some(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Every entry, in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.order.iter().map(|n| (&**n, &self.map[n]))
    }

    /// The entries from `start` on, in name order.
    pub(crate) fn range(&self, start: Bound<&str>) -> impl Iterator<Item = (&str, &V)> {
        self.order
            .range::<str, _>((start, Bound::Unbounded))
            .map(|n| (&**n, &self.map[n]))
    }

    /// Up to `limit` entries whose names start with `prefix` and are greater than `after`, in
    /// name order, skipping those `live` refuses (past their TTL); the flag says whether more
    /// remain.
    pub(crate) fn list_live(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        live: impl Fn(&V) -> bool,
    ) -> (Vec<(&str, &V)>, bool) {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut items = Vec::new();
        for (k, e) in self.range(start) {
            if !k.starts_with(prefix) {
                break;
            }
            if !live(e) {
                continue;
            }
            if items.len() == limit {
                return (items, true);
            }
            items.push((k, e));
        }
        (items, false)
    }
}

#[cfg(test)]
mod tests {
    use super::Names;
    use std::ops::Bound;

    #[test]
    fn finds_replaces_removes_and_lists_in_name_order() {
        let mut n = Names::default();
        for (i, k) in ["b", "a/2", "c", "a/1", "a/3"].into_iter().enumerate() {
            assert_eq!(n.insert(k, i), None);
        }
        assert_eq!(n.insert("c", 10), Some(2));
        assert_eq!(n.get("c"), Some(&10));
        assert_eq!(n.len(), 5);
        let all: Vec<&str> = n.iter().map(|(k, _)| k).collect();
        assert_eq!(all, ["a/1", "a/2", "a/3", "b", "c"]);
        let from: Vec<&str> = n.range(Bound::Excluded("a/3")).map(|(k, _)| k).collect();
        assert_eq!(from, ["b", "c"]);

        // A page of two under "a/", then the rest; odd values count as expired.
        let (page, more) = n.list_live("a/", None, 2, |v| v % 2 == 0 || *v > 5);
        assert_eq!(page, [("a/3", &4)]);
        assert!(!more);
        let (page, more) = n.list_live("", None, 2, |_| true);
        assert_eq!(page, [("a/1", &3), ("a/2", &1)]);
        assert!(more);
        let (page, more) = n.list_live("", Some("a/2"), 2, |_| true);
        assert_eq!(page, [("a/3", &4), ("b", &0)]);
        assert!(more);

        assert_eq!(n.remove("a/2"), Some(1));
        assert_eq!(n.remove("a/2"), None);
        assert!(!n.contains_key("a/2"));
        let all: Vec<&str> = n.iter().map(|(k, _)| k).collect();
        assert_eq!(all, ["a/1", "a/3", "b", "c"]);
    }
}
