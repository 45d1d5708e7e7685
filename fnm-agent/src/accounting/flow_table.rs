//! The new-flow table: which 5-tuples were seen recently, so a record counts as a new flow
//! (`flows_per_second`) only the first time its tuple shows up.
//!
//! A tuple is kept as a 64-bit hash under a seed drawn at start (like the XDP flow table), so
//! the seed keeps collisions from being crafted offline. The table is set-associative: a
//! tuple's hash picks one bucket of [`WAYS`] entries, two adjacent 64-byte cache lines, and
//! the tuple lives there or nowhere. A lookup therefore touches one bucket, which the batch
//! ingestion prefetches a few records ahead ([`Lookahead`]) so the miss to memory overlaps
//! the crediting of the records before it.
//!
//! Memory stays bounded by two generations: every entry carries the generation that last saw
//! it; after `capacity / 2` entries were stamped with the current generation, a new one
//! starts, the current becomes the previous, and entries of older generations are free. A
//! tuple is new when no entry of the current or the previous generation holds it.
//!
//! The table starts small (4 KiB) and doubles when a new tuple finds its bucket full of live
//! entries or the live entries fill half of it, up to twice `capacity` entries: a few
//! thousand flows stay in a few cache-friendly pages rather than spread over a table sized
//! for the worst case, and no live tuple is forgotten before the table has its full size.
//! At full size the live tuples (at most `capacity`) fill at most half of it, eight per
//! bucket on average: a new tuple finds its bucket full for about one in 120 when the table
//! holds `capacity` live tuples, one in 200 000 when it holds half as many. It then forgets
//! one tuple of the previous generation (counted new again if it returns), or, in a bucket
//! holding only current ones (one in 200 000 at most), one of those. An entry keeps 48 bits of the hash: an accidental collision (about 8 / 2^48 per new
//! flow) hides one new flow.

use crate::traffic::TrafficRecord;

/// Entries per bucket: 16 × 8 bytes, two cache lines.
pub(super) const WAYS: usize = 16;

/// Records hashed and prefetched ahead of the one being credited.
const AHEAD: usize = 8;

/// Buckets of a new table (4 KiB), unless `capacity` needs fewer.
const FIRST_BUCKETS: usize = 32;

/// Low bits of an entry holding its generation (never 0, so an entry of 0 is empty); the
/// other 48 bits are the tuple's hash, whose low bits pick the bucket.
const GENERATION_BITS: u64 = 0xFFFF;

/// Two cache lines of entries.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(128))]
struct Bucket([u64; WAYS]);

/// Bounded, set-associative, two-generation set of 5-tuples (see the module).
#[derive(Debug)]
pub(super) struct FlowTable {
    buckets: Box<[Bucket]>,
    hasher: FlowHasher,
    /// Current generation, 1..=0xFFFF.
    generation: u16,
    /// Entries stamped with the current generation so far.
    stamped: usize,
    /// Entries stamped with the previous generation (an upper bound of those still live).
    stamped_before: usize,
    generation_size: usize,
    /// The table grows no further.
    max_buckets: usize,
}

impl FlowTable {
    /// A table remembering up to `capacity` tuples (two generations of `capacity / 2`).
    pub(super) fn new(capacity: usize) -> Self {
        let generation_size = (capacity / 2).max(1);
        let max_buckets = (capacity.max(1) * 2)
            .div_ceil(WAYS)
            .next_power_of_two()
            .min(1 << 40);
        let buckets = vec![Bucket::default(); max_buckets.min(FIRST_BUCKETS)].into_boxed_slice();
        let hasher = FlowHasher {
            seed: ahash::RandomState::new(),
            base: buckets.as_ptr(),
            mask: buckets.len() - 1,
        };
        Self {
            buckets,
            hasher,
            generation: 1,
            stamped: 0,
            stamped_before: 0,
            generation_size,
            max_buckets,
        }
    }

    /// The hash of `r`'s 5-tuple, which [`FlowTable::note_key`] takes.
    #[inline]
    pub(super) fn key(&self, r: &TrafficRecord) -> u64 {
        self.hasher.key(r)
    }

    /// Hashes and prefetches `records` a few ahead of the one being noted.
    pub(super) fn lookahead<'r>(&self, records: &'r [TrafficRecord]) -> Lookahead<'r> {
        Lookahead::new(self.hasher.clone(), records)
    }

    /// Records the 5-tuple of `r`; true when it was not seen recently.
    #[cfg(test)]
    fn note(&mut self, r: &TrafficRecord) -> bool {
        self.note_key(self.key(r))
    }

    /// Records the tuple hashed to `key` ([`FlowTable::key`]); true when it was not seen
    /// recently.
    #[inline]
    pub(super) fn note_key(&mut self, key: u64) -> bool {
        let tag = key & !GENERATION_BITS;
        let index = self.hasher.index(tag);
        let mut current = self.generation;
        let bucket = &self.buckets[index].0;
        let mut held = None;
        for (way, &entry) in bucket.iter().enumerate() {
            if entry != 0 && entry & !GENERATION_BITS == tag {
                let generation = (entry & GENERATION_BITS) as u16;
                if generation == current {
                    return false;
                }
                held = Some((way, generation));
                break;
            }
        }
        // Stamping one more entry with the current generation: start a new one first when
        // it is full (the tuple of a previous-generation entry is then two generations old).
        if self.stamped >= self.generation_size {
            current = next_generation(current);
            self.generation = current;
            self.stamped_before = self.stamped;
            self.stamped = 0;
        }
        self.stamped += 1;
        let previous = previous_generation(current);
        let stamp = tag | u64::from(current);
        if let Some((way, generation)) = held {
            self.buckets[index].0[way] = stamp;
            return generation != previous;
        }
        let mut index = index;
        loop {
            let full = self.buckets.len() >= self.max_buckets;
            let bucket = &mut self.buckets[index].0;
            if let Some(way) = free_way(bucket, current, previous) {
                bucket[way] = stamp;
                break;
            }
            if full {
                bucket[victim(bucket, key, previous)] = stamp;
                break;
            }
            // A bucket full of live entries: grow rather than forget one.
            self.grow();
            index = self.hasher.index(tag);
        }
        if (self.stamped + self.stamped_before) * 2 > self.buckets.len() * WAYS
            && self.buckets.len() < self.max_buckets
        {
            self.grow();
        }
        true
    }

    /// Doubles the buckets, moving the live entries over (the empty and expired ones stay
    /// behind). The entries of a bucket go to two, so none is lost.
    #[cold]
    fn grow(&mut self) {
        let mut buckets = vec![Bucket::default(); self.buckets.len() * 2].into_boxed_slice();
        let mask = buckets.len() - 1;
        let current = self.generation;
        let previous = previous_generation(current);
        for &entry in self.buckets.iter().flat_map(|b| b.0.iter()) {
            let generation = (entry & GENERATION_BITS) as u16;
            if generation != current && generation != previous {
                continue;
            }
            let bucket = &mut buckets[(entry >> 16) as usize & mask].0;
            if let Some(way) = free_way(bucket, current, previous) {
                bucket[way] = entry;
            }
        }
        self.hasher.base = buckets.as_ptr();
        self.hasher.mask = mask;
        self.buckets = buckets;
    }
}

/// An empty or expired way of `bucket`.
#[inline]
fn free_way(bucket: &[u64; WAYS], current: u16, previous: u16) -> Option<usize> {
    bucket.iter().position(|&entry| {
        let generation = (entry & GENERATION_BITS) as u16;
        generation != current && generation != previous
    })
}

/// The way of a full `bucket` a new tuple takes: one of the previous generation, else (a
/// bucket of current ones) one picked by the tuple's hash.
#[inline]
fn victim(bucket: &[u64; WAYS], key: u64, previous: u16) -> usize {
    bucket
        .iter()
        .position(|&entry| (entry & GENERATION_BITS) as u16 == previous)
        .unwrap_or(key as usize % WAYS)
}

/// The generation after `g` (1..=0xFFFF, then 1 again).
#[inline]
fn next_generation(g: u16) -> u16 {
    if g == u16::MAX {
        1
    } else {
        g + 1
    }
}

/// The generation before `g`.
#[inline]
fn previous_generation(g: u16) -> u16 {
    if g == 1 {
        u16::MAX
    } else {
        g - 1
    }
}

/// Hashes tuples and prefetches their bucket, apart from the table's borrow.
#[derive(Debug, Clone)]
struct FlowHasher {
    seed: ahash::RandomState,
    /// The table's buckets (only ever prefetched through, never read: after the table grew
    /// a lookahead's copy points to freed memory, which a prefetch hint may name).
    base: *const Bucket,
    mask: usize,
}

// SAFETY: `base` is only an address handed to the prefetch hint, never dereferenced.
unsafe impl Send for FlowHasher {}
// SAFETY: as above.
unsafe impl Sync for FlowHasher {}

impl FlowHasher {
    #[inline]
    fn key(&self, r: &TrafficRecord) -> u64 {
        self.seed
            .hash_one((r.src, r.dst, r.src_port, r.dst_port, r.protocol))
    }

    /// The bucket of a tuple whose hash (or entry) is `tag`.
    #[inline]
    fn index(&self, tag: u64) -> usize {
        (tag >> 16) as usize & self.mask
    }

    /// Asks the CPU to bring the bucket of `key` (its two cache lines) into the cache.
    #[inline]
    fn prefetch(&self, key: u64) {
        let bucket = self.base.wrapping_add(self.index(key));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let line = bucket.cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(line);
            _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(64));
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = bucket;
    }
}

/// The keys of a batch's records, each hashed and its bucket prefetched [`AHEAD`] records
/// before it is asked for.
pub(super) struct Lookahead<'r> {
    hasher: FlowHasher,
    records: &'r [TrafficRecord],
    /// Key of record `i` at `i % AHEAD`, for the next [`AHEAD`] records.
    ring: [u64; AHEAD],
    /// Records before this one were asked for.
    next: usize,
}

impl<'r> Lookahead<'r> {
    fn new(hasher: FlowHasher, records: &'r [TrafficRecord]) -> Self {
        let mut ring = [0; AHEAD];
        for (i, r) in records.iter().take(AHEAD).enumerate() {
            ring[i] = hasher.key(r);
            hasher.prefetch(ring[i]);
        }
        Self {
            hasher,
            records,
            ring,
            next: 0,
        }
    }

    /// The key of record `i` of the batch; records are asked for in order (one out of
    /// order is hashed on the spot).
    #[inline]
    pub(super) fn key(&mut self, i: usize) -> u64 {
        if i != self.next {
            return self.records.get(i).map_or(0, |r| self.hasher.key(r));
        }
        self.next = i + 1;
        let slot = i % AHEAD;
        let key = self.ring[slot];
        if let Some(r) = self.records.get(i + AHEAD) {
            let ahead = self.hasher.key(r);
            self.hasher.prefetch(ahead);
            self.ring[slot] = ahead;
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn record(i: u32) -> TrafficRecord {
        TrafficRecord {
            src_port: (i % 60_000) as u16,
            dst_port: 80,
            ..TrafficRecord::packet(
                IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                6,
                60,
            )
        }
    }

    #[test]
    fn a_tuple_is_new_once_while_the_table_holds_it() {
        let mut t = FlowTable::new(1000);
        for i in 0..500 {
            assert!(t.note(&record(i)), "tuple {i} is new");
        }
        for _ in 0..3 {
            for i in 0..500 {
                assert!(!t.note(&record(i)), "tuple {i} was seen");
            }
        }
    }

    #[test]
    fn tuples_two_generations_old_are_new_again() {
        let mut t = FlowTable::new(100);
        for i in 0..50 {
            assert!(t.note(&record(i)));
        }
        // 40 more start a second generation; the first 50 are still remembered, and one seen
        // again moves to the current generation.
        for i in 50..90 {
            assert!(t.note(&record(i)));
        }
        assert!(!t.note(&record(0)));
        assert!(!t.note(&record(60)));
        // 100 more new tuples: two generations later the first ones are gone, the ones of
        // the second generation too.
        for i in 1000..1100 {
            assert!(t.note(&record(i)));
        }
        assert!(t.note(&record(1)));
        assert!(t.note(&record(0)));
        assert!(t.note(&record(70)));
    }

    #[test]
    fn lookahead_yields_the_keys_in_order_and_out_of_order() {
        let t = FlowTable::new(1000);
        let records: Vec<_> = (0..37).map(record).collect();
        let mut ahead = t.lookahead(&records);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(ahead.key(i), t.key(r));
        }
        let mut ahead = t.lookahead(&records);
        assert_eq!(ahead.key(5), t.key(&records[5]));
        assert_eq!(ahead.key(0), t.key(&records[0]));
        assert_eq!(ahead.key(40), 0);
    }

    #[test]
    fn a_full_table_stays_bounded_and_keeps_counting() {
        let mut t = FlowTable::new(64);
        let mut new = 0;
        for i in 0..100_000 {
            new += u32::from(t.note(&record(i)));
        }
        assert_eq!(new, 100_000, "every tuple was distinct");
        assert_eq!(t.buckets.len(), 8);
    }

    #[test]
    fn the_table_grows_with_its_flows_and_keeps_them() {
        let mut t = FlowTable::new(1 << 20);
        assert_eq!(t.buckets.len(), FIRST_BUCKETS);
        for i in 0..50_000 {
            assert!(t.note(&record(i)), "tuple {i} is new");
        }
        assert!(t.buckets.len() >= 50_000 * 2 / WAYS);
        // Grown when a bucket filled, which at this load is rare.
        assert!(t.buckets.len() <= t.max_buckets / 2);
        for i in 0..50_000 {
            assert!(!t.note(&record(i)), "tuple {i} was seen");
        }
    }
}
