//! The new-flow table: which 5-tuples were seen recently, so a record counts as a new flow
//! (`flows_per_second`) only the first time its tuple shows up.

use super::PreHashed;
use crate::traffic::TrafficRecord;
use std::{collections::HashSet, hash::BuildHasherDefault, net::IpAddr};

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
    seed: foldhash::fast::RandomState,
}

impl FlowTable {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            current: HashSet::default(),
            previous: HashSet::default(),
            generation_size: (capacity / 2).max(1),
            seed: foldhash::fast::RandomState::default(),
        }
    }

    /// The seeded hash of the 5-tuple of `r`: an IPv4 tuple is packed into one 128-bit word
    /// (one folded multiply), others hash both addresses in full.
    #[inline]
    pub(super) fn key(&self, r: &TrafficRecord) -> u64 {
        use std::hash::BuildHasher;
        let ports =
            u64::from(r.src_port) << 24 | u64::from(r.dst_port) << 8 | u64::from(r.protocol);
        match (r.src, r.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let addrs = u64::from(s.to_bits()) << 32 | u64::from(d.to_bits());
                // Bit 63 of the ports word marks the IPv4 form.
                self.seed
                    .hash_one(u128::from(addrs) << 64 | u128::from(ports | 1 << 63))
            }
            (s, d) => self.seed.hash_one((wide(s), wide(d), ports)),
        }
    }

    /// Records the 5-tuple of `r`; true when it was not seen recently.
    #[inline]
    pub(super) fn note(&mut self, r: &TrafficRecord) -> bool {
        let key = self.key(r);
        if self.current.len() >= self.generation_size && !self.current.contains(&key) {
            self.previous = std::mem::take(&mut self.current);
            self.current.reserve(self.generation_size);
        }
        self.current.insert(key) && !self.previous.contains(&key)
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
