//! The local networks in the kernel, and changing them while the program runs (a reload).
//!
//! Tables say whether an address is local and where its counters live: the per-/16 table
//! `LOCAL16_V4` (mapped into the agent, one atomic store per entry), the `LOCAL_V4` trie
//! (with the dense slot base of each network), the IPv6 table by prefix length
//! ([`super::local6`], rewritten as a new generation and switched) and the `LOCAL_V6` trie
//! behind it. A reload
//! ([`DataPlane::set_networks`]) lays the networks out again so that no host of a network
//! that stays changes slot ([`DenseLayout::relayout`]), then, in this order:
//!
//! 1. absorbs what slots no network owns hold (packets counted under an older table after its
//!    last poll), so a slot handed out now starts from what it holds;
//! 2. writes the new trie entries, then the /16 entries that changed, then removes the trie
//!    entries of the networks that left: each packet meanwhile sees, per address, either the
//!    old answer or the new one, and both are counted for the right host;
//! 3. takes the last deltas of every dense slot under the old layout (the hosts of networks
//!    that left included), which the next poll hands to the engine;
//! 4. puts the new layout in force for the poller, and absorbs the slots that lost their owner.
//!
//! Hosts of networks that left stop counting; hosts of new networks start at once. Counters of
//! hosts in hash tables stay where they are (read until idle), so nothing is lost or counted
//! twice. The only packets not counted are those a CPU counted under the old table in the
//! sub-microsecond between reading it and writing its slot, if that write lands after step 3
//! read the slot: they are absorbed in step 4 or at the next reload, never given to another
//! host.

use super::{
    local16::DenseLayout, maps::map_err, maps::LpmKey, mmap::SharedMapping, DataPlane, XdpError,
};
use crate::prefix::Prefix;
use aya::maps::MapData;
use fnm_common::{local16, local6, map_names};
use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

/// Bytes between two entries of a kernel array of `u32` (values are 8-byte aligned).
const ENTRY_STRIDE: usize = 8;

/// The `LOCAL16_V4` array mapped into the agent, with the values last written.
pub(crate) struct Local16Table {
    mapping: SharedMapping,
    current: Vec<u32>,
}

impl Local16Table {
    /// Maps `map` (an mmap-able array of [`local16::BLOCKS`] `u32`, all zero =
    /// [`local16::NONE`] after load).
    pub(crate) fn map(map: MapData) -> std::io::Result<Self> {
        Ok(Self {
            mapping: SharedMapping::new(map, local16::BLOCKS * ENTRY_STRIDE)?,
            current: vec![local16::NONE; local16::BLOCKS],
        })
    }

    /// Writes the entries of `table` that differ from what the kernel has; returns how many.
    pub(crate) fn write(&mut self, table: &[u32; local16::BLOCKS]) -> usize {
        let mut changed = 0;
        for (block, (now, want)) in self.current.iter_mut().zip(table.iter()).enumerate() {
            if now == want {
                continue;
            }
            // SAFETY: `block` < BLOCKS, so the entry lies inside the mapping; entries are
            // 8-byte aligned (page-aligned base, 8-byte stride).
            unsafe { AtomicU32::from_ptr(self.mapping.ptr().add(block * ENTRY_STRIDE).cast()) }
                .store(*want, Ordering::Release);
            *now = *want;
            changed += 1;
        }
        changed
    }

    /// The entry of one /16 block as last written.
    pub(crate) fn get(&self, block: usize) -> Option<u32> {
        self.current.get(block).copied()
    }
}

/// The `LOCAL24_V4` array (the /24 tables of split /16 blocks) mapped into the agent, with
/// the values last written.
pub(crate) struct Local24Table {
    mapping: SharedMapping,
    current: Vec<u32>,
}

impl Local24Table {
    /// Maps `map` (an mmap-able array of `tables` entries of [`local16::SUB_ENTRIES`] `u32`,
    /// all zero after load).
    pub(crate) fn map(map: MapData, tables: u32) -> std::io::Result<Self> {
        let entries = tables as usize * local16::SUB_ENTRIES;
        Ok(Self {
            mapping: SharedMapping::new(map, entries * 4)?,
            current: vec![local16::NONE; entries],
        })
    }

    /// Tables the array holds.
    pub(crate) fn tables(&self) -> u32 {
        (self.current.len() / local16::SUB_ENTRIES) as u32
    }

    /// Writes the entries of `tables` ((index, table)) that differ from what the kernel has,
    /// one atomic store each; returns how many. An index beyond the array is skipped (the
    /// layout never hands one out).
    pub(crate) fn write(&mut self, tables: &[(u32, Box<[u32; local16::SUB_ENTRIES]>)]) -> usize {
        let mut changed = 0;
        for (index, table) in tables {
            let first = *index as usize * local16::SUB_ENTRIES;
            let Some(now) = self.current.get_mut(first..first + local16::SUB_ENTRIES) else {
                continue;
            };
            for (j, (now, want)) in now.iter_mut().zip(table.iter()).enumerate() {
                if now == want {
                    continue;
                }
                // SAFETY: `first + j` < the entries mapped; a value of 1024 bytes keeps every
                // u32 4-byte aligned from the page-aligned base.
                unsafe { AtomicU32::from_ptr(self.mapping.ptr().add((first + j) * 4).cast()) }
                    .store(*want, Ordering::Release);
                *now = *want;
                changed += 1;
            }
        }
        changed
    }
}

/// What a change of the local networks did in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworksChange {
    /// Networks that were not counted before.
    pub added: Vec<Prefix>,
    /// Networks no longer counted.
    pub removed: Vec<Prefix>,
    /// Added IPv4 networks that found no free range of dense slots: their hosts count in the
    /// hashed hosts' open table (`xdp.dense_v4_addresses` sizes the array at start).
    pub hashed: Vec<Prefix>,
}

/// Distinct prefixes of one family in `a` and `b` together.
fn union_len(a: &[Prefix], b: &[Prefix], v4: bool) -> usize {
    a.iter()
        .chain(b)
        .filter(|p| p.addr().is_ipv4() == v4)
        .collect::<BTreeSet<_>>()
        .len()
}

impl DataPlane {
    /// The local networks the kernel counts now.
    pub fn networks(&self) -> &[Prefix] {
        &self.maps.networks
    }

    /// Makes the kernel count `networks` from now on, without detaching the program and
    /// without losing or moving any host's counters (see the module documentation). Fails
    /// before changing anything when the local-network tries cannot hold the old and the new
    /// networks together (`xdp.max_prefixes`).
    pub fn set_networks(&mut self, networks: &[Prefix]) -> Result<NetworksChange, XdpError> {
        let old = self.maps.networks.clone();
        let mut change = NetworksChange {
            added: networks
                .iter()
                .filter(|p| !old.contains(p))
                .copied()
                .collect(),
            removed: old
                .iter()
                .filter(|p| !networks.contains(p))
                .copied()
                .collect(),
            hashed: Vec::new(),
        };
        if change.added.is_empty() && change.removed.is_empty() {
            self.maps.networks = networks.to_vec();
            return Ok(change);
        }
        for (v4, name) in [(true, map_names::LOCAL_V4), (false, map_names::LOCAL_V6)] {
            let needed = union_len(&old, networks, v4);
            if needed > self.maps.max_prefixes as usize {
                return Err(XdpError::Map {
                    map: name,
                    message: format!(
                        "changing the networks needs {needed} entries at once (the old and the \
                         new ones); xdp.max_prefixes is {}",
                        self.maps.max_prefixes
                    ),
                });
            }
        }
        let layout = self.maps.hosts.layout.relayout(networks);
        change.hashed = change
            .added
            .iter()
            .filter(|p| p.addr().is_ipv4() && !layout.is_dense(p))
            .copied()
            .collect();
        // 1.
        self.poller.absorb_unowned(&self.maps)?;
        // 2.
        self.maps.insert_networks(networks, &layout)?;
        self.maps.write_local_tables(networks, &layout)?;
        self.maps.remove_networks(&change.removed)?;
        // 3.
        self.poller.settle(&mut self.maps)?;
        // 4.
        self.maps.hosts.layout = layout;
        self.maps.networks = networks.to_vec();
        self.poller.absorb_unowned(&self.maps)?;
        Ok(change)
    }
}

impl super::KernelMaps {
    /// Writes the trie entries of `networks` (values from `layout`); existing ones are
    /// overwritten in place.
    pub(crate) fn insert_networks(
        &mut self,
        networks: &[Prefix],
        layout: &DenseLayout,
    ) -> Result<(), XdpError> {
        for p in networks {
            match LpmKey::of(p) {
                LpmKey::V4(k) => self
                    .local_v4
                    .insert(&k, layout.trie_value(p), 0)
                    .map_err(map_err(map_names::LOCAL_V4))?,
                LpmKey::V6(k) => self
                    .local_v6
                    .insert(&k, 1, 0)
                    .map_err(map_err(map_names::LOCAL_V6))?,
            }
        }
        Ok(())
    }

    /// Writes the tables in front of the tries for `networks` laid out as `layout`: the /24
    /// tables first (a table is only reached through the /16 entry written after it), then
    /// the /16 entries that changed, then the IPv6 prefilter and table by prefix length
    /// ([`super::local6`]: a new generation, then the switch; an older object's /32 bits
    /// before it). Called with the trie entries of `networks` in place.
    pub(crate) fn write_local_tables(
        &mut self,
        networks: &[Prefix],
        layout: &DenseLayout,
    ) -> Result<(), XdpError> {
        if let Some(local24) = self.local24.as_mut() {
            local24.write(&layout.sub_tables());
        }
        self.local16.write(&layout.table());
        if let Some(bits) = self.local32_v6.as_mut() {
            bits.set(0, local32_v6_bitmap(networks.iter()), 0)
                .map_err(map_err(map_names::LOCAL32_V6))?;
        }
        if let Some(local6) = self.local6.as_mut() {
            local6.write(networks)?;
        }
        Ok(())
    }

    /// The prefix length the IPv6 prefilter in force hashes (the shortest IPv6 local prefix
    /// length within /32../64); `None` for an object without that prefilter.
    pub fn local6_prefilter_len(&self) -> Option<u8> {
        self.local6.as_ref().and_then(|t| t.prefilter_len())
    }

    /// Whether the kernel asks the `LOCAL_V6` trie for every IPv6 address that passes the
    /// prefilter (the networks do not fit its table by prefix length); `None` for an object
    /// without that table.
    pub fn local6_asks_trie(&self) -> Option<bool> {
        self.local6.as_ref().map(|t| t.asks_trie())
    }

    /// Removes the trie entries of `networks` (one the kernel no longer has is gone already).
    fn remove_networks(&mut self, networks: &[Prefix]) -> Result<(), XdpError> {
        for p in networks {
            let (result, name) = match LpmKey::of(p) {
                LpmKey::V4(k) => (self.local_v4.remove(&k), map_names::LOCAL_V4),
                LpmKey::V6(k) => (self.local_v6.remove(&k), map_names::LOCAL_V6),
            };
            match result {
                Ok(()) => {}
                Err(e) if super::tables::is_not_found(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(())
    }

    /// The /16 entry the kernel has for `addr` (IPv4 only).
    pub fn local16_entry(&self, addr: IpAddr) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.local16.get((u32::from(a) >> 16) as usize),
            IpAddr::V6(_) => None,
        }
    }
}

/// The `LOCAL32_V6` bits of `networks` for an object built before `LOCAL6_BITS` (IPv4 ones are
/// ignored): the bit of every /32 a network overlaps (all bits for a network shorter than /16).
pub(crate) fn local32_v6_bitmap<'a>(
    networks: impl Iterator<Item = &'a Prefix>,
) -> [u64; local6::WORDS] {
    let mut bits = [0u64; local6::WORDS];
    for p in networks {
        let IpAddr::V6(a) = p.addr() else { continue };
        if p.len() < 16 {
            return [u64::MAX; local6::WORDS];
        }
        let top = u32::from_be_bytes(a.octets()[..4].try_into().expect("4 bytes"));
        let count = 1u32 << 32u32.saturating_sub(p.len() as u32);
        let first = top & !(count - 1);
        for t in first..=first + (count - 1) {
            let bit = local6::bit(t) as usize;
            bits[bit / 64] |= 1 << (bit % 64);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit_set(bits: &[u64; local6::WORDS], addr: &str) -> bool {
        let a: std::net::Ipv6Addr = addr.parse().unwrap();
        let bit = local6::bit(u32::from_be_bytes(a.octets()[..4].try_into().unwrap())) as usize;
        bits[bit / 64] & (1 << (bit % 64)) != 0
    }

    #[test]
    fn local32_bits_cover_every_local_address_and_few_others() {
        let nets: Vec<Prefix> = ["2001:db8:105::/48", "2a02:1000::/28", "10.0.0.0/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let bits = local32_v6_bitmap(nets.iter());
        for a in [
            "2001:db8:105::1",
            "2001:db8:105:ffff::9",
            "2a02:1000::1",
            "2a02:100f:ffff::1",
        ] {
            assert!(bit_set(&bits, a), "{a}");
        }
        // One bit for the /48's /32, sixteen for the /28.
        assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 17);
        assert!(!bit_set(&bits, "2a00:1450:4001::5"));
        let all = local32_v6_bitmap(["::/0".parse::<Prefix>().unwrap()].iter());
        assert!(all.iter().all(|w| *w == u64::MAX));
        let none = local32_v6_bitmap(nets[2..].iter());
        assert!(none.iter().all(|w| *w == 0));
    }
}
