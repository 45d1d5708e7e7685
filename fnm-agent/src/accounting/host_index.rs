//! The host table's index: slot by address hash, in buckets a batch can prefetch.
//!
//! An open-addressed array of 8-byte buckets, linear probing from the bucket the hash's low
//! bits name, at most half full (so a lookup of a present host reads one or two buckets, all
//! but always in one cache line). A bucket holds the low 32 bits of the host's hash (its home
//! bucket, and a tag that spares most entry reads on a probe) and the slot plus one (0: an
//! empty bucket). Removal shifts the following buckets of the run back (no tombstones, so a
//! flood that churns the table leaves no debris behind).
//! The hash is the table's seeded one (`IpHasher`, a random seed per process), so addresses
//! off the wire cannot be chosen to pile up in one run.
//!
//! Why not `hashbrown::HashTable`: where its probe starts is not exposed, so a lookup was a
//! chain of dependent misses (control group, then slot, then entry) that could not be started
//! early. Here [`HostIndex::prefetch`] starts loading the bucket when a batch hashes its
//! records, and the lookup finds it in cache. The index compares no address: `eq` (the
//! table's entry check) decides.
//!
//! Memory: 8 bytes per bucket, 16 to 32 bytes per host (hashbrown's was about 10).

/// An empty bucket.
const EMPTY: u64 = 0;

/// Slots by seeded address hash (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct HostIndex {
    buckets: Vec<u64>,
    len: usize,
}

impl HostIndex {
    /// The bucket of `hash` and the tag stored with it.
    #[inline(always)]
    fn home(&self, hash: u64) -> (usize, u64) {
        let low = hash & 0xFFFF_FFFF;
        (low as usize & self.buckets.len().wrapping_sub(1), low << 32)
    }

    /// Starts loading the bucket a lookup of `hash` reads first.
    #[inline(always)]
    pub(super) fn prefetch(&self, hash: u64) {
        if !self.buckets.is_empty() {
            let (at, _) = self.home(hash);
            crate::capture::prefetch_line(self.buckets[at..].as_ptr().cast());
        }
    }

    /// The first slot stored with `hash`'s tag, unchecked: the one a lookup will most likely
    /// return, for prefetching its entry.
    #[inline(always)]
    pub(super) fn candidate(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// The slot with `hash` for which `eq` holds.
    #[inline(always)]
    pub(super) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let (mut at, tag) = self.home(hash);
        loop {
            let bucket = self.buckets[at];
            if bucket == EMPTY {
                return None;
            }
            if bucket & !0xFFFF_FFFF == tag {
                let slot = (bucket as u32).wrapping_sub(1);
                if eq(slot) {
                    return Some(slot);
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// Adds `slot` under `hash` (the caller knows it is not there); `rehash` gives the hash
    /// of a slot already in the index when the index grows.
    pub(super) fn insert(&mut self, hash: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        debug_assert!(slot < u32::MAX);
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow(&rehash);
        }
        self.place(hash, slot);
        self.len += 1;
    }

    /// Removes `slot`, stored under `hash`; false when it was not there.
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let mask = self.buckets.len() - 1;
        let (mut at, tag) = self.home(hash);
        let wanted = tag | (u64::from(slot) + 1);
        loop {
            match self.buckets[at] {
                EMPTY => return false,
                bucket if bucket == wanted => break,
                _ => at = (at + 1) & mask,
            }
        }
        // Shift back every following bucket of the run that may sit at or before the hole.
        let mut hole = at;
        let mut next = at;
        loop {
            next = (next + 1) & mask;
            let bucket = self.buckets[next];
            if bucket == EMPTY {
                break;
            }
            let home = (bucket >> 32) as usize & mask;
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.buckets[hole] = bucket;
                hole = next;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }

    /// Puts `slot` in the first empty bucket from its home.
    fn place(&mut self, hash: u64, slot: u32) {
        let mask = self.buckets.len() - 1;
        let (mut at, tag) = self.home(hash);
        while self.buckets[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.buckets[at] = tag | (u64::from(slot) + 1);
    }

    /// Doubles the buckets (at least 16) and places every slot again.
    #[cold]
    fn grow(&mut self, rehash: &impl Fn(u32) -> u64) {
        let size = (self.buckets.len() * 2).max(16);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        for bucket in old.into_iter().filter(|b| *b != EMPTY) {
            let slot = (bucket as u32).wrapping_sub(1);
            self.place(rehash(slot), slot);
        }
    }

    /// Bytes of the bucket array.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.buckets.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A hash with few distinct home bits, so runs collide, wrap and shift back.
    fn weak(key: u32) -> u64 {
        u64::from(key.wrapping_mul(0x9E37_79B9) % 7) | u64::from(key) << 40
    }

    #[test]
    fn agrees_with_a_map_through_inserts_and_removals() {
        for hash in [weak as fn(u32) -> u64, |k: u32| {
            u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }] {
            let mut index = HostIndex::default();
            // slot -> key
            let mut keys: HashMap<u32, u32> = HashMap::new();
            let mut state = 0x1234_5678_u32;
            for step in 0..20_000u32 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let slot = state % 512;
                if let Some(key) = keys.remove(&slot) {
                    assert!(index.remove(hash(key), slot), "step {step}");
                    assert!(!index.remove(hash(key), slot));
                } else {
                    let key = state >> 9;
                    index.insert(hash(key), slot, |s| hash(keys[&s]));
                    keys.insert(slot, key);
                }
                if step % 97 == 0 {
                    for (slot, key) in &keys {
                        assert_eq!(index.find(hash(*key), |s| s == *slot), Some(*slot));
                    }
                    assert_eq!(index.len, keys.len());
                }
            }
            for (slot, key) in &keys {
                assert_eq!(index.find(hash(*key), |s| s == *slot), Some(*slot));
                assert_eq!(index.find(hash(*key), |_| false), None);
                assert!(index.candidate(hash(*key)).is_some());
            }
            assert!(index.len * 2 <= index.buckets.len());
        }
    }

    #[test]
    fn an_empty_index_finds_nothing_and_stays_small() {
        let mut index = HostIndex::default();
        index.prefetch(7);
        assert_eq!(index.find(7, |_| true), None);
        assert!(!index.remove(7, 0));
        index.insert(7, 0, |_| 7);
        assert_eq!(index.find(7, |s| s == 0), Some(0));
        assert_eq!(index.bytes(), 16 * 8);
    }
}
