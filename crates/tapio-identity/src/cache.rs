//! A fixed-capacity map with CLOCK (second-chance) eviction.
//!
//! CLOCK approximates LRU with one bit per entry and no list reshuffling on hits, so a hit
//! is one hash lookup. New entries start unreferenced: a flood of one-off keys evicts
//! itself before it evicts entries that are being used.

use std::collections::HashMap;
use std::hash::Hash;

struct Slot<K, V> {
    key: K,
    value: V,
    referenced: bool,
}

pub(crate) struct ClockCache<K, V> {
    index: HashMap<K, usize>,
    slots: Vec<Slot<K, V>>,
    hand: usize,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> ClockCache<K, V> {
    /// A cache holding at most `capacity` entries; 0 disables it.
    pub(crate) fn new(capacity: usize) -> Self {
        ClockCache {
            // Grown on demand: a large capacity costs nothing until it is used.
            index: HashMap::new(),
            slots: Vec::new(),
            hand: 0,
            capacity,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        let &i = self.index.get(key)?;
        let slot = self.slots.get_mut(i)?;
        slot.referenced = true;
        Some(&slot.value)
    }

    /// Inserts or replaces `key`. Returns true when another entry was evicted for it.
    pub(crate) fn insert(&mut self, key: K, value: V) -> bool {
        if let Some(slot) = self.index.get(&key).and_then(|&i| self.slots.get_mut(i)) {
            slot.value = value;
            return false;
        }
        if self.capacity == 0 {
            return false;
        }
        if self.slots.len() < self.capacity {
            self.index.insert(key.clone(), self.slots.len());
            self.slots.push(Slot { key, value, referenced: false });
            return false;
        }
        // Full: sweep, clearing reference bits, until an unreferenced slot comes up. At
        // most one full turn clears every bit, so this ends within two turns.
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let Some(slot) = self.slots.get_mut(i) else {
                return false;
            };
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            let old = std::mem::replace(slot, Slot { key: key.clone(), value, referenced: false });
            self.index.remove(&old.key);
            self.index.insert(key, i);
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_respected() {
        let mut c = ClockCache::new(3);
        let mut evictions = 0;
        for k in 0..100u64 {
            evictions += usize::from(c.insert(k, k * 10));
            assert!(c.len() <= 3);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(evictions, 97);
        assert_eq!(c.index.len(), 3, "index and slots agree");
        // The newest key is always present; old ones are gone.
        assert_eq!(c.get(&99), Some(&990));
        assert_eq!(c.get(&0), None);
    }

    #[test]
    fn referenced_entries_survive_a_flood() {
        let mut c = ClockCache::new(4);
        for k in 0..4u64 {
            c.insert(k, k);
        }
        // Keep key 1 in use while one-off keys stream through.
        for k in 100..200u64 {
            assert_eq!(c.get(&1), Some(&1), "hot key evicted before {k}");
            c.insert(k, k);
        }
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn unreferenced_entry_is_evicted_first() {
        let mut c = ClockCache::new(3);
        c.insert('a', 1);
        c.insert('b', 2);
        c.insert('c', 3);
        c.get(&'a');
        c.get(&'c');
        assert!(c.insert('d', 4));
        assert_eq!(c.get(&'b'), None);
        assert_eq!(c.get(&'a'), Some(&1));
        assert_eq!(c.get(&'c'), Some(&3));
        assert_eq!(c.get(&'d'), Some(&4));
    }

    #[test]
    fn replacing_a_key_does_not_evict_or_grow() {
        let mut c = ClockCache::new(2);
        c.insert(1, "x");
        c.insert(2, "y");
        assert!(!c.insert(1, "z"));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&1), Some(&"z"));
        assert_eq!(c.get(&2), Some(&"y"));
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut c = ClockCache::new(0);
        assert!(!c.insert(1, 1));
        assert_eq!(c.len(), 0);
        assert_eq!(c.get(&1), None);
    }
}
