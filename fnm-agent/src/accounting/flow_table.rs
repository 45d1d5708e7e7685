//! The new-flow table: which 5-tuples were seen recently, so a record counts as a new flow
//! (`flows_per_second`) only the first time its tuple shows up.

use super::PreHashed;
use crate::traffic::TrafficRecord;
use std::{collections::HashSet, hash::BuildHasherDefault};

/// Bounded two-generation set of 5-tuples: a tuple is new when neither generation holds it.
///
/// Tuples are kept as a 64-bit hash under a seed drawn at start (like the XDP flow table), so a
/// probe compares 8 bytes and the seed keeps collisions from being crafted offline; an
/// accidental collision (about table size / 2^64 per new flow) hides one new flow.
#[derive(Debug)]
pub(super) struct FlowTable {
    current: HashSet<u64, BuildHasherDefault<PreHashed>>,
    previous: HashSet<u64, BuildHasherDefault<PreHashed>>,
    generation_size: usize,
    seed: ahash::RandomState,
}

impl FlowTable {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            current: HashSet::default(),
            previous: HashSet::default(),
            generation_size: (capacity / 2).max(1),
            seed: ahash::RandomState::new(),
        }
    }

    /// Records the 5-tuple of `r`; true when it was not seen recently.
    #[inline]
    pub(super) fn note(&mut self, r: &TrafficRecord) -> bool {
        let key = self
            .seed
            .hash_one((r.src, r.dst, r.src_port, r.dst_port, r.protocol));
        if self.current.len() >= self.generation_size && !self.current.contains(&key) {
            self.previous = std::mem::take(&mut self.current);
            self.current.reserve(self.generation_size);
        }
        self.current.insert(key) && !self.previous.contains(&key)
    }
}
