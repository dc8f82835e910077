//! Least-recently-used order for the agent's bounded tables (the L7 parsers, the mesh-flow
//! builder's sockets): an entry keeps the stamp of its last use, and the entry with the
//! oldest stamp is the one to forget first. Touching and evicting are `O(log n)`, so a
//! full table costs no scan per event.

use std::collections::BTreeMap;

/// Keys in the order of their last use.
pub(crate) struct Recency<K> {
    by_stamp: BTreeMap<u64, K>,
    next: u64,
}

impl<K: Copy> Recency<K> {
    pub(crate) fn new() -> Self {
        Self {
            by_stamp: BTreeMap::new(),
            next: 0,
        }
    }

    /// Marks `key` as used now; `previous` is the stamp it had (`None` for a new key).
    /// Returns the stamp to keep with the entry.
    pub(crate) fn touch(&mut self, key: K, previous: Option<u64>) -> u64 {
        if let Some(previous) = previous {
            self.by_stamp.remove(&previous);
        }
        let stamp = self.next;
        self.next += 1;
        self.by_stamp.insert(stamp, key);
        stamp
    }

    /// Forgets the entry that holds `stamp`.
    pub(crate) fn remove(&mut self, stamp: u64) {
        self.by_stamp.remove(&stamp);
    }

    /// The least recently used key.
    pub(crate) fn oldest(&self) -> Option<K> {
        self.by_stamp.first_key_value().map(|(_, key)| *key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_is_the_least_recently_touched() {
        let mut recency = Recency::new();
        let a = recency.touch('a', None);
        let b = recency.touch('b', None);
        assert_eq!(recency.oldest(), Some('a'));
        let a = recency.touch('a', Some(a));
        assert_eq!(recency.oldest(), Some('b'));
        recency.remove(b);
        assert_eq!(recency.oldest(), Some('a'));
        recency.remove(a);
        assert_eq!(recency.oldest(), None);
    }
}
