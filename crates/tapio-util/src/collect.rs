//! Building a `BTreeMap` from pairs by inserting them one at a time.
//!
//! `collect()` into a `BTreeMap` sorts the pairs first, with a stable sort instantiated for
//! each pair type: about 5 KB of code per type in the agent's binary, for maps of a few
//! dozen entries that are built on a heartbeat or once at start-up. Inserting reuses the
//! map's own insertion code instead.

use std::collections::BTreeMap;

/// The map of `pairs`; a later pair with an equal key replaces an earlier one, as with
/// `collect()`.
pub fn btree_map<K: Ord, V>(pairs: impl IntoIterator<Item = (K, V)>) -> BTreeMap<K, V> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        map.insert(k, v);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_holds_every_key_in_order_and_the_last_value_of_a_repeated_key() {
        let map = btree_map([("b", 1), ("a", 2), ("c", 3), ("a", 4)]);
        assert_eq!(map.into_iter().collect::<Vec<_>>(), [("a", 4), ("b", 1), ("c", 3)]);
    }
}
