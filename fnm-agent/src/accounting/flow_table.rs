//! The new-flow table: which 5-tuples were seen recently, so a record counts as a new flow
//! (`flows_per_second`) only the first time its tuple shows up.

use crate::{capture::prefetch_line, traffic::TrafficRecord};
use std::net::IpAddr;

/// Bounded two-generation set of 5-tuples: a tuple is new when neither generation holds it.
///
/// Tuples are kept as a 64-bit hash under a seed drawn at start (like the XDP flow table), so a
/// probe compares 8 bytes and the seed keeps collisions from being crafted offline; an
/// accidental collision (about table size / 2^64 per new flow) hides one new flow.
///
/// Each generation is a flat open-addressed array of hashes (linear probing, at most half
/// full), so the cache line a tuple's probe starts at is known from its hash alone: batch
/// ingestion hashes a run of records first and prefetches their lines ([`FlowTable::prefetch`])
/// before it counts them, instead of meeting two cache misses per record one after the other.
#[derive(Debug)]
pub(super) struct FlowTable {
    current: KeySet,
    previous: KeySet,
    generation_size: usize,
    seed: foldhash::fast::RandomState,
}

impl FlowTable {
    pub(super) fn new(capacity: usize) -> Self {
        let generation_size = (capacity / 2).max(1);
        // At most half full when a generation holds `generation_size` tuples.
        let max_buckets = (generation_size * 2).next_power_of_two();
        Self {
            current: KeySet::new(max_buckets),
            previous: KeySet::new(max_buckets),
            generation_size,
            seed: foldhash::fast::RandomState::default(),
        }
    }

    /// The seeded hash of the 5-tuple of `r` (never 0): an IPv4 tuple is packed into one
    /// 128-bit word (one folded multiply), others hash both addresses in full.
    #[inline]
    pub(super) fn key(&self, r: &TrafficRecord) -> u64 {
        use std::hash::BuildHasher;
        let ports =
            u64::from(r.src_port) << 24 | u64::from(r.dst_port) << 8 | u64::from(r.protocol);
        let h = match (r.src, r.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let addrs = u64::from(s.to_bits()) << 32 | u64::from(d.to_bits());
                // Bit 63 of the ports word marks the IPv4 form.
                self.seed
                    .hash_one(u128::from(addrs) << 64 | u128::from(ports | 1 << 63))
            }
            (s, d) => self.seed.hash_one((wide(s), wide(d), ports)),
        };
        h.max(1)
    }

    /// Starts loading the cache lines [`FlowTable::note_key`] will probe for `key`.
    #[inline]
    pub(super) fn prefetch(&self, key: u64) {
        self.current.prefetch(key);
        self.previous.prefetch(key);
    }

    /// Records a tuple by its [`FlowTable::key`]; true when it was not seen recently.
    #[inline]
    pub(super) fn note_key(&mut self, key: u64) -> bool {
        if self.current.len >= self.generation_size && !self.current.contains(key) {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(key) && !self.previous.contains(key)
    }
}

/// An address as one 128-bit word (IPv4 as its IPv4-mapped form).
#[inline]
fn wide(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

/// Buckets a generation starts with (8 KiB); it doubles while more than half full.
const MIN_BUCKETS: usize = 1024;

/// A set of nonzero 64-bit hashes: open addressing, linear probing from the bucket the hash's
/// low bits name, kept at most half full (so a probe mostly reads one cache line), growing by
/// doubling up to `max_buckets`. Keys are seeded hashes, so an attacker cannot pile them onto
/// one run of buckets.
#[derive(Debug)]
struct KeySet {
    buckets: Box<[u64]>,
    len: usize,
    max_buckets: usize,
}

impl KeySet {
    fn new(max_buckets: usize) -> Self {
        Self {
            buckets: vec![0; MIN_BUCKETS.min(max_buckets)].into_boxed_slice(),
            len: 0,
            max_buckets,
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        key as usize & (self.buckets.len() - 1)
    }

    #[inline]
    fn prefetch(&self, key: u64) {
        prefetch_line(self.buckets[self.home(key)..].as_ptr().cast());
    }

    #[inline]
    fn contains(&self, key: u64) -> bool {
        let mask = self.buckets.len() - 1;
        let mut i = key as usize & mask;
        loop {
            match self.buckets[i] {
                0 => return false,
                k if k == key => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Adds `key`; true when it was not there.
    #[inline]
    fn insert(&mut self, key: u64) -> bool {
        let mask = self.buckets.len() - 1;
        let mut i = key as usize & mask;
        loop {
            match self.buckets[i] {
                0 => break,
                k if k == key => return false,
                _ => i = (i + 1) & mask,
            }
        }
        self.buckets[i] = key;
        self.len += 1;
        if self.len * 2 > self.buckets.len() {
            self.grow();
        }
        true
    }

    #[cold]
    fn grow(&mut self) {
        // A generation rotates at `generation_size` tuples, at most half of `max_buckets`: a
        // full-sized set is never more than half full.
        if self.buckets.len() >= self.max_buckets {
            return;
        }
        let size = self.buckets.len() * 2;
        let old = std::mem::replace(&mut self.buckets, vec![0; size].into_boxed_slice());
        let mask = size - 1;
        for key in old.iter().copied().filter(|k| *k != 0) {
            let mut i = key as usize & mask;
            while self.buckets[i] != 0 {
                i = (i + 1) & mask;
            }
            self.buckets[i] = key;
        }
    }

    fn clear(&mut self) {
        self.buckets.fill(0);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tuple_is_new_once_and_remembered_for_a_generation_and_more() {
        for capacity in [1, 2, 10, 4096, 100_000] {
            let mut t = FlowTable::new(capacity);
            let g = t.generation_size as u64;
            let key = |k: u64| k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            // Keys 1..=g fill one generation; each is new once.
            for k in 1..=g {
                assert!(t.note_key(key(k)), "cap {capacity} key {k}");
            }
            for k in 1..=g {
                assert!(!t.note_key(key(k)), "cap {capacity} key {k}");
            }
            // A new generation: the old keys are still known while it fills.
            for k in g + 1..=g + g / 2 {
                assert!(t.note_key(key(k)));
            }
            for k in 1..=g / 2 {
                assert!(!t.note_key(key(k)), "cap {capacity} key {k}");
            }
            // Then the next new tuple starts a generation and the first one is forgotten.
            if g >= 2 {
                assert!(t.note_key(key(10 * g)));
                assert!(t.note_key(key(g)));
            }
            assert!(t.current.buckets.len() <= (2 * g as usize).next_power_of_two().max(1024));
        }
    }
}
