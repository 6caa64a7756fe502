//! What the operator remembers per model lives in maps keyed by (namespace, name). A map gives
//! no room back when entries go, so after a thousand models came and went each such map would
//! keep the buckets of a thousand: forgetting a model here also shrinks the map once it is
//! mostly empty.

use std::{collections::HashMap, hash::Hash};

/// The key of everything kept per model.
pub type ModelKey = (String, String);

/// Below this many buckets a map is not worth shrinking.
const SMALL: usize = 64;

/// Removes `model`'s entry and, when the map holds less than a quarter of its room, gives the
/// rest back (to twice what is left, so the next few inserts do not regrow it at once).
pub fn forget_model<V>(map: &mut HashMap<ModelKey, V>, namespace: &str, name: &str) -> Option<V> {
    let removed = map.remove(&(namespace.to_owned(), name.to_owned()));
    shrink_if_sparse(map);
    removed
}

/// Gives room back from a map that holds less than a quarter of what it could.
pub fn shrink_if_sparse<K: Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > SMALL && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_most_models_gives_the_room_back() {
        let mut map: HashMap<ModelKey, u32> = HashMap::new();
        for i in 0..1000 {
            map.insert(("ml".to_owned(), format!("m-{i}")), i);
        }
        let full = map.capacity();
        for i in 0..990 {
            assert_eq!(forget_model(&mut map, "ml", &format!("m-{i}")), Some(i));
        }
        assert_eq!(map.len(), 10);
        assert!(map.capacity() < full / 8, "{} buckets left of {full}", map.capacity());
        assert_eq!(map.get(&("ml".to_owned(), "m-995".to_owned())), Some(&995));
    }

    #[test]
    fn a_small_map_is_left_alone() {
        let mut map: HashMap<ModelKey, u32> = HashMap::new();
        map.insert(("ml".to_owned(), "a".to_owned()), 1);
        map.insert(("ml".to_owned(), "b".to_owned()), 2);
        let room = map.capacity();
        forget_model(&mut map, "ml", "a");
        assert_eq!(map.capacity(), room);
        assert_eq!(forget_model(&mut map, "ml", "missing"), None);
    }
}
