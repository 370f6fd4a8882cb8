//! Query features by image: the language projection's output for one image (InstructBLIP:
//! the ViT output, as its Q-Former reads each prompt; `Blip2::reusable_features`), keyed by the
//! SHA-256 of the image's bytes, in a least-recently-used cache bounded by entry count. A
//! multi-turn chat re-sends its image with every turn; with the cache only the first turn
//! runs the vision tower and the Q-Former.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

pub type ImageKey = [u8; 32];

pub fn image_key(bytes: &[u8]) -> ImageKey {
    Sha256::digest(bytes).into()
}

/// An LRU map; `get` refreshes an entry, `insert` evicts the least recently used one when
/// full. Capacity 0 keeps nothing.
pub struct Lru<V> {
    cap: usize,
    tick: u64,
    map: HashMap<ImageKey, (V, u64)>,
}

impl<V: Clone> Lru<V> {
    pub fn new(cap: usize) -> Lru<V> {
        Lru {
            cap,
            tick: 0,
            map: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&mut self, k: &ImageKey) -> Option<V> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|(v, used)| {
            *used = t;
            v.clone()
        })
    }

    pub fn insert(&mut self, k: ImageKey, v: V) {
        if self.cap == 0 {
            return;
        }
        self.tick += 1;
        if !self.map.contains_key(&k) && self.map.len() >= self.cap {
            // Linear scan: the cache holds at most a few thousand entries and an insert
            // follows a vision-tower pass that costs far more.
            if let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                self.map.remove(&old);
            }
        }
        self.map.insert(k, (v, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = Lru::new(2);
        let (a, b, d) = (image_key(b"a"), image_key(b"b"), image_key(b"d"));
        c.insert(a, 1);
        c.insert(b, 2);
        assert_eq!(c.get(&a), Some(1));
        c.insert(d, 3);
        assert_eq!(c.get(&b), None);
        assert_eq!(c.get(&a), Some(1));
        assert_eq!(c.get(&d), Some(3));
        assert_eq!(c.len(), 2);
        let mut z = Lru::new(0);
        z.insert(a, 1);
        assert_eq!(z.get(&a), None);
    }
}
