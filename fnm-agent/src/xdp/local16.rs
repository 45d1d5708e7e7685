//! Where the kernel finds "is this IPv4 address local" and its counters: the /16 table in front
//! of the local-networks trie, and the dense counter slots of the local networks.
//!
//! Networks are given dense slots in config order while they fit in `xdp.dense_v4_addresses`
//! (two slots per address: incoming, then outgoing); the others count their hosts in the
//! hashed hosts' open table (`slots.rs`). The /16 table holds, per /16, "nothing local", "ask
//! the trie" (a local prefix longer than /16 splits the block), "local, hashed", or "local,
//! dense from slot b". The trie's values carry the same slot base for the networks it answers
//! for.
//!
//! A /16 that local prefixes longer than /16 split gets a /24 table of its own (while
//! `xdp.local24_tables` last): its /16 entry is `SPLIT | index`, and the table holds the same
//! values per /24, so a layout of /17 to /24 prefixes never reaches the trie; only a /24 split
//! by a prefix longer than /24 still asks it. Blocks beyond the tables ask the trie.
//!
//! A reload re-lays the networks out with [`DenseLayout::relayout`]: a network that stays keeps
//! its slots (so its hosts' counters stay where they are), a new one gets the first free range
//! of the array that no network of the old layout used (so no slot changes hands while packets
//! may still be counted under the old table), else the hash table.

use crate::prefix::Prefix;
use fnm_common::{local16, LocalNetV4};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

/// One IPv4 local network and its dense slot base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: u32,
    len: u8,
    /// First slot, `None` when the network's hosts use the hash table.
    base: Option<u32>,
}

impl Net {
    fn host_mask(&self) -> u32 {
        u32::MAX.checked_shr(self.len as u32).unwrap_or(0)
    }

    fn addresses(&self) -> u64 {
        1u64 << (32 - self.len as u32)
    }

    fn contains(&self, a: u32) -> bool {
        a & !self.host_mask() == self.addr
    }
}

/// The dense slot layout of the IPv4 local networks (the agent's copy of what the kernel uses).
#[derive(Debug, Clone, Default)]
pub struct DenseLayout {
    nets: Vec<Net>,
    slots: u32,
    /// Slots of the kernel array (fixed at load: a multiple of 64, at least 64).
    capacity: u32,
    /// The /24 table of each split /16 block that has one, by block.
    split: BTreeMap<u32, u32>,
    /// /24 tables of the kernel array (fixed at load; 0: every split block asks the trie).
    split_capacity: u32,
}

/// The IPv4 networks of `networks`, normalised, first occurrence of each, without slots.
fn v4_nets(networks: &[Prefix]) -> Vec<Net> {
    let mut nets: Vec<Net> = Vec::new();
    for p in networks {
        let IpAddr::V4(a) = p.addr() else { continue };
        let mut net = Net {
            addr: u32::from(a),
            len: p.len(),
            base: None,
        };
        net.addr &= !net.host_mask();
        if !nets.iter().any(|n| n.addr == net.addr && n.len == net.len) {
            nets.push(net);
        }
    }
    nets
}

impl DenseLayout {
    /// Gives dense slots to the IPv4 networks of `networks`, in order, while their addresses
    /// fit in `max_addresses` (IPv6 networks are ignored).
    pub fn new(networks: &[Prefix], max_addresses: u32) -> Self {
        let mut nets = v4_nets(networks);
        let mut used: u64 = 0;
        for net in &mut nets {
            // Two slots per address must fit a u32 slot number.
            if used + net.addresses() <= (max_addresses as u64).min(1 << 30) {
                net.base = Some((used * 2) as u32);
                used += net.addresses();
            }
        }
        let slots = (used * 2) as u32;
        Self {
            nets,
            slots,
            // At least one touched word (64 slots) so the maps exist without dense networks.
            capacity: slots.div_ceil(64).max(1) * 64,
            split: BTreeMap::new(),
            split_capacity: 0,
        }
    }

    /// This layout with `tables` /24 tables in the kernel: the split blocks get them in block
    /// order while they last.
    pub fn with_split_tables(mut self, tables: u32) -> Self {
        self.split_capacity = tables;
        self.split = split_blocks(&self.nets)
            .into_iter()
            .zip(0..tables)
            .collect();
        self
    }

    /// The /16 blocks split by a local prefix longer than /16.
    pub fn split_blocks(&self) -> impl Iterator<Item = (u32, Option<u32>)> + '_ {
        split_blocks(&self.nets)
            .into_iter()
            .map(|b| (b, self.split.get(&b).copied()))
    }

    /// The layout of `networks` in the same kernel array (a reload): networks of this layout
    /// keep their slots; the others, in order, get the first free range of the array that
    /// none of this layout's networks holds, while one is large enough, else the hash table.
    pub fn relayout(&self, networks: &[Prefix]) -> Self {
        let mut nets = v4_nets(networks);
        // Ranges no new network may take: every range of this layout.
        let mut taken: Vec<(u64, u64)> = self
            .nets
            .iter()
            .filter_map(|n| n.base.map(|b| (b as u64, b as u64 + 2 * n.addresses())))
            .collect();
        for net in &mut nets {
            net.base = self
                .nets
                .iter()
                .find(|o| o.addr == net.addr && o.len == net.len)
                .and_then(|o| o.base);
        }
        for net in nets.iter_mut().filter(|n| n.base.is_none()) {
            let size = 2 * net.addresses();
            taken.sort_unstable();
            let mut start = 0u64;
            for &(b, e) in &taken {
                if b >= start + size {
                    break;
                }
                start = start.max(e);
            }
            if start + size <= self.capacity as u64 {
                net.base = Some(start as u32);
                taken.push((start, start + size));
            }
        }
        let slots = nets
            .iter()
            .filter_map(|n| n.base.map(|b| b as u64 + 2 * n.addresses()))
            .max()
            .unwrap_or(0) as u32;
        // A block split before and now keeps its table (rewritten entry by entry: each packet
        // sees the old or the new answer of its /24); a newly split one takes a table the old
        // layout did not use, so no packet that read the old /16 entry lands in another
        // block's table.
        let blocks = split_blocks(&nets);
        let mut split: BTreeMap<u32, u32> = blocks
            .iter()
            .filter_map(|b| self.split.get(b).map(|i| (*b, *i)))
            .collect();
        let used: BTreeSet<u32> = self.split.values().chain(split.values()).copied().collect();
        let mut free = (0..self.split_capacity).filter(|i| !used.contains(i));
        for b in blocks {
            if split.contains_key(&b) {
                continue;
            }
            match free.next() {
                Some(i) => {
                    split.insert(b, i);
                }
                None => break,
            }
        }
        Self {
            nets,
            slots,
            capacity: self.capacity,
            split,
            split_capacity: self.split_capacity,
        }
    }

    /// End of the highest dense range handed out (two slots per address).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Slots of the kernel array.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// IPv4 networks whose hosts count in the hash table (no dense slots).
    pub fn hashed(&self) -> usize {
        self.nets.iter().filter(|n| n.base.is_none()).count()
    }

    /// The most specific local network holding `a` (what an LPM lookup answers).
    fn net_of(&self, a: u32) -> Option<&Net> {
        self.nets
            .iter()
            .filter(|n| n.contains(a))
            .max_by_key(|n| n.len)
    }

    /// The incoming slot of a local IPv4 address (outgoing is the next one); `None` when the
    /// address is not local or its network uses the hash table.
    pub fn slot_of(&self, addr: Ipv4Addr) -> Option<u32> {
        let a = u32::from(addr);
        let net = self.net_of(a)?;
        Some(net.base? + ((a & net.host_mask()) << 1))
    }

    /// The address and direction counted in `slot`.
    pub fn host_of(&self, slot: u32) -> Option<(Ipv4Addr, u8)> {
        self.nets.iter().find_map(|n| {
            let base = n.base?;
            let offset = slot.checked_sub(base)? as u64;
            (offset < n.addresses() * 2).then(|| {
                (
                    Ipv4Addr::from(n.addr + (offset >> 1) as u32),
                    (offset & 1) as u8,
                )
            })
        })
    }

    /// The dense ranges, sorted: (first slot, end slot, first address of the network).
    pub fn ranges(&self) -> Vec<(u32, u32, u32)> {
        let mut out: Vec<(u32, u32, u32)> = self
            .nets
            .iter()
            .filter_map(|n| {
                let base = n.base?;
                Some((base, base + (2 * n.addresses()) as u32, n.addr))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// True when `prefix` is one of the IPv4 networks and has dense slots.
    pub fn is_dense(&self, prefix: &Prefix) -> bool {
        prefix.addr().is_ipv4() && self.trie_value(prefix).slot_base != local16::NO_SLOTS
    }

    /// The `LOCAL_V4` trie value of one of the networks.
    pub fn trie_value(&self, prefix: &Prefix) -> LocalNetV4 {
        let IpAddr::V4(a) = prefix.addr() else {
            return LocalNetV4::default();
        };
        let addr = u32::from(a);
        let net = self
            .nets
            .iter()
            .find(|n| n.len == prefix.len() && n.contains(addr));
        match net {
            Some(n) => LocalNetV4 {
                slot_base: n.base.unwrap_or(local16::NO_SLOTS),
                host_mask: n.host_mask(),
            },
            None => LocalNetV4 {
                slot_base: local16::NO_SLOTS,
                host_mask: 0,
            },
        }
    }

    /// The /16 table (the `LOCAL16_V4` global).
    pub fn table(&self) -> Box<[u32; local16::BLOCKS]> {
        let mut t: Box<[u32; local16::BLOCKS]> = vec![local16::NONE; local16::BLOCKS]
            .into_boxed_slice()
            .try_into()
            .expect("BLOCKS entries");
        // Longest first: a block split by a prefix longer than /16 asks the trie, and a block
        // covered by several short prefixes takes the most specific one, as the trie would.
        let mut nets = self.nets.clone();
        nets.sort_by_key(|n| std::cmp::Reverse(n.len));
        for n in nets {
            let first = (n.addr >> 16) as usize;
            if n.len > 16 {
                t[first] = match self.split.get(&(first as u32)) {
                    Some(i) => local16::SPLIT | i,
                    None => local16::ASK_TRIE,
                };
                continue;
            }
            let count = 1usize << (16 - n.len);
            for (i, b) in t[first..first + count].iter_mut().enumerate() {
                if *b == local16::NONE {
                    *b = match n.base {
                        Some(base) => local16::DENSE + base + ((i as u32) << 17),
                        None => local16::HASHED,
                    };
                }
            }
        }
        t
    }

    /// The /24 tables (the `LOCAL24_V4` entries in use): (index, table).
    pub fn sub_tables(&self) -> Vec<(u32, Box<[u32; local16::SUB_ENTRIES]>)> {
        self.split
            .iter()
            .map(|(&block, &index)| (index, self.sub_table(block)))
            .collect()
    }

    /// The /24 table of one /16 block: per /24, the value the /16 table would hold for it.
    fn sub_table(&self, block: u32) -> Box<[u32; local16::SUB_ENTRIES]> {
        let mut t = Box::new([local16::NONE; local16::SUB_ENTRIES]);
        let mut nets: Vec<&Net> = self
            .nets
            .iter()
            .filter(|n| {
                if n.len <= 16 {
                    n.contains(block << 16)
                } else {
                    n.addr >> 16 == block
                }
            })
            .collect();
        // Shortest first, so a more specific prefix overwrites what a covering one wrote, as
        // the trie would answer; prefixes longer than /24 come last and make their /24 ask it.
        nets.sort_by_key(|n| n.len);
        for n in nets {
            if n.len > 24 {
                t[((n.addr >> 8) & 0xff) as usize] = local16::ASK_TRIE;
                continue;
            }
            let (first, count) = if n.len <= 16 {
                (0, local16::SUB_ENTRIES)
            } else {
                (((n.addr >> 8) & 0xff) as usize, 1usize << (24 - n.len))
            };
            for (j, v) in t[first..first + count].iter_mut().enumerate() {
                let x = (block << 16) | (((first + j) as u32) << 8);
                *v = match n.base {
                    Some(base) => sub_dense(base + ((x - n.addr) << 1), x),
                    None => local16::HASHED,
                };
            }
        }
        t
    }
}

/// The /24 table value of the /24 at `x` whose first address counts from `slot`: encoded as a
/// /16 entry would be (the kernel adds twice the address's low 16 bits to it, wrapping), so
/// that both tables decode alike. A value that wraps onto one of the markers asks the trie
/// instead, which answers the same slot.
fn sub_dense(slot: u32, x: u32) -> u32 {
    let v = local16::DENSE
        .wrapping_add(slot)
        .wrapping_sub((x & 0xffff) << 1);
    if v < local16::DENSE {
        local16::ASK_TRIE
    } else {
        v
    }
}

/// The /16 blocks split by a prefix longer than /16, sorted.
fn split_blocks(nets: &[Net]) -> BTreeSet<u32> {
    nets.iter()
        .filter(|n| n.len > 16)
        .map(|n| n.addr >> 16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(a: u8, b: u8) -> usize {
        ((a as usize) << 8) | b as usize
    }

    fn nets(list: &[&str]) -> Vec<Prefix> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Where the kernel counts `a`, as `fnm_ebpf::local` computes it: the /16 entry, then the
    /// /24 table or the trie for split blocks.
    fn kernel_local(
        l: &DenseLayout,
        t: &[u32; local16::BLOCKS],
        subs: &[(u32, Box<[u32; local16::SUB_ENTRIES]>)],
        a: Ipv4Addr,
    ) -> Where {
        let a = u32::from(a);
        let trie = || match l.net_of(a) {
            None => Where::No,
            Some(n) => {
                let v = l.trie_value(&Prefix::new(Ipv4Addr::from(n.addr).into(), n.len).unwrap());
                if v.slot_base == local16::NO_SLOTS {
                    Where::Hashed
                } else {
                    Where::Slot(v.slot_base + ((a & v.host_mask) << 1))
                }
            }
        };
        match t[(a >> 16) as usize] {
            local16::NONE => Where::No,
            local16::HASHED => Where::Hashed,
            local16::ASK_TRIE => trie(),
            e if e & local16::SPLIT != 0 => {
                let (_, sub) = subs
                    .iter()
                    .find(|(i, _)| *i == e & !local16::SPLIT)
                    .expect("the table of a split entry is written");
                match sub[((a >> 8) & 0xff) as usize] {
                    local16::NONE => Where::No,
                    local16::HASHED => Where::Hashed,
                    local16::ASK_TRIE => trie(),
                    v => Where::Slot(
                        v.wrapping_sub(local16::DENSE)
                            .wrapping_add((a & 0xffff) << 1),
                    ),
                }
            }
            v => Where::Slot(v - local16::DENSE + ((a & 0xffff) << 1)),
        }
    }

    #[test]
    fn a_24_value_that_would_wrap_onto_a_marker_asks_the_trie() {
        // The /24 at x.x.1.0 (low bits 256, twice: 512) counting from slot 510 would be
        // DENSE + 510 - 512 = 1, the ASK_TRIE marker.
        assert_eq!(sub_dense(510, 0x0a00_0100), local16::ASK_TRIE);
        assert_eq!(sub_dense(512, 0x0a00_0100), local16::DENSE);
        assert_eq!(sub_dense(0, 0x0a00_0000), local16::DENSE);
        assert_eq!(
            sub_dense(0, 0x0a00_ff00).wrapping_sub(local16::DENSE),
            0u32.wrapping_sub(0xff00 << 1)
        );
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Where {
        No,
        Hashed,
        Slot(u32),
    }

    fn kernel_slot(l: &DenseLayout, t: &[u32; local16::BLOCKS], a: Ipv4Addr) -> Option<u32> {
        match kernel_local(l, t, &l.sub_tables(), a) {
            Where::Slot(s) => Some(s),
            _ => None,
        }
    }

    /// What an LPM lookup of the networks answers for `a`.
    fn lpm(l: &DenseLayout, a: Ipv4Addr) -> Where {
        match l.net_of(u32::from(a)) {
            None => Where::No,
            Some(_) => match l.slot_of(a) {
                Some(s) => Where::Slot(s),
                None => Where::Hashed,
            },
        }
    }

    #[test]
    fn split_blocks_answer_from_their_24_tables_as_the_trie_would() {
        let list = nets(&[
            "100.64.0.0/19",
            "100.64.32.0/20",
            "100.64.48.0/22",
            "100.64.52.0/24",
            "100.64.53.128/25",
            "100.65.0.0/16",
            "100.65.7.0/24",
            "100.66.0.0/15",
            "100.67.8.0/23",
            "100.67.9.64/26",
            "10.0.0.0/8",
            "10.1.2.0/24",
            "192.0.2.7/32",
        ]);
        for dense in [0, 30_000, 1 << 20] {
            let l = DenseLayout::new(&list, dense).with_split_tables(16);
            let t = l.table();
            let subs = l.sub_tables();
            for b in [[100, 64], [100, 65], [100, 67], [10, 1], [192, 0]] {
                let e = t[block(b[0], b[1])];
                assert_ne!(e & local16::SPLIT, 0, "{b:?} has a /24 table");
            }
            assert_eq!(t[block(100, 66)] & local16::SPLIT, 0);
            // Every address of every split block, plus the edges of the others.
            for b in [
                [100u8, 64u8],
                [100, 65],
                [100, 67],
                [10, 1],
                [192, 0],
                [100, 66],
                [10, 2],
            ] {
                for x in 0..=65_535u32 {
                    let a = Ipv4Addr::from(((b[0] as u32) << 24) | ((b[1] as u32) << 16) | x);
                    assert_eq!(
                        kernel_local(&l, &t, &subs, a),
                        lpm(&l, a),
                        "{a} (dense {dense})"
                    );
                }
            }
            // Only the /24s with a prefix longer than /24 ask the trie.
            let asking: usize = l
                .sub_tables()
                .iter()
                .map(|(_, s)| s.iter().filter(|v| **v == local16::ASK_TRIE).count())
                .sum();
            assert_eq!(asking, 3, "100.64.53/24, 100.67.9/24, 192.0.2/24");
        }
    }

    #[test]
    fn blocks_beyond_the_tables_ask_the_trie_and_a_relayout_never_reuses_a_table_in_flight() {
        let l = DenseLayout::new(&nets(&["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]), 0)
            .with_split_tables(2);
        let t = l.table();
        assert_eq!(t[block(10, 1)], local16::SPLIT);
        assert_eq!(t[block(10, 2)], local16::SPLIT | 1);
        assert_eq!(t[block(10, 3)], local16::ASK_TRIE);
        // 10.1 leaves, 10.4 comes: 10.2 keeps its table, 10.1's is not free yet, so 10.3 and
        // 10.4 ask the trie this time.
        let next = l.relayout(&nets(&["10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"]));
        let t = next.table();
        assert_eq!(t[block(10, 1)], local16::NONE);
        assert_eq!(t[block(10, 2)], local16::SPLIT | 1);
        assert_eq!(t[block(10, 3)], local16::ASK_TRIE);
        assert_eq!(t[block(10, 4)], local16::ASK_TRIE);
        // The next reload hands table 0 out again.
        let after = next.relayout(&nets(&["10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"]));
        let t = after.table();
        assert_eq!(t[block(10, 3)], local16::SPLIT);
        assert_eq!(t[block(10, 4)], local16::ASK_TRIE);
        for a in [[10, 2, 0, 1], [10, 3, 0, 255], [10, 3, 1, 0], [10, 4, 0, 9]] {
            let a = Ipv4Addr::from(a);
            assert_eq!(
                kernel_local(&after, &t, &after.sub_tables(), a),
                lpm(&after, a),
                "{a}"
            );
        }
    }

    #[test]
    fn short_prefixes_fill_blocks_and_long_ones_ask_the_trie() {
        let l = DenseLayout::new(
            &nets(&[
                "10.10.0.0/16",
                "172.16.0.0/12",
                "192.0.2.0/24",
                "2001:db8::/32",
            ]),
            65_536,
        );
        let t = l.table();
        assert_eq!(t[block(10, 10)], local16::DENSE);
        assert_eq!(t[block(10, 11)], local16::NONE);
        // The /12 does not fit after the /16: hashed.
        assert_eq!(t[block(172, 16)], local16::HASHED);
        assert_eq!(t[block(172, 31)], local16::HASHED);
        assert_eq!(t[block(172, 32)], local16::NONE);
        assert_eq!(t[block(192, 0)], local16::ASK_TRIE);
        assert_eq!(l.slots(), 2 * 65_536);
        assert_eq!(l.slot_of(Ipv4Addr::new(10, 10, 1, 2)), Some(2 * 258));
        assert_eq!(l.slot_of(Ipv4Addr::new(172, 16, 0, 1)), None);
        assert_eq!(l.slot_of(Ipv4Addr::new(192, 0, 2, 1)), None);
    }

    #[test]
    fn every_dense_address_has_its_own_slots_and_maps_back() {
        let l = DenseLayout::new(
            &nets(&[
                "10.0.0.0/15",
                "10.1.2.0/24",
                "192.0.2.128/25",
                "10.9.0.0/16",
            ]),
            190_000,
        );
        let t = l.table();
        let mut seen = std::collections::HashSet::new();
        let addrs = [
            Ipv4Addr::new(10, 0, 0, 0),
            Ipv4Addr::new(10, 0, 255, 255),
            Ipv4Addr::new(10, 1, 0, 7),
            Ipv4Addr::new(10, 1, 2, 7),
            Ipv4Addr::new(10, 1, 3, 7),
            Ipv4Addr::new(192, 0, 2, 129),
            Ipv4Addr::new(192, 0, 2, 255),
        ];
        for a in addrs {
            let slot = l.slot_of(a).unwrap_or_else(|| panic!("{a} dense"));
            assert_eq!(kernel_slot(&l, &t, a), Some(slot), "{a}");
            assert!(slot + 1 < l.slots());
            assert!(seen.insert(slot), "{a} shares a slot");
            assert_eq!(l.host_of(slot), Some((a, 0)));
            assert_eq!(l.host_of(slot + 1), Some((a, 1)));
        }
        // The /16 did not fit (131072 + 256 + 128 addresses used): hashed, not local elsewhere.
        assert_eq!(l.slot_of(Ipv4Addr::new(10, 9, 0, 1)), None);
        assert_eq!(t[block(10, 9)], local16::HASHED);
        assert_eq!(kernel_slot(&l, &t, Ipv4Addr::new(192, 0, 2, 1)), None);
        assert_eq!(l.slot_of(Ipv4Addr::new(192, 0, 2, 1)), None);
        assert_eq!(l.host_of(l.slots()), None);
    }

    #[test]
    fn a_long_prefix_inside_a_short_one_asks_the_trie_whatever_the_order() {
        for list in [["10.0.0.0/8", "10.1.2.0/24"], ["10.1.2.0/24", "10.0.0.0/8"]] {
            let t = DenseLayout::new(&nets(&list), 0).table();
            assert_eq!(t[block(10, 1)], local16::ASK_TRIE);
            assert_eq!(t[block(10, 2)], local16::HASHED);
        }
    }

    #[test]
    fn the_default_route_makes_everything_local() {
        let t = DenseLayout::new(&nets(&["0.0.0.0/0"]), 65_536).table();
        assert!(t.iter().all(|b| *b == local16::HASHED));
    }

    #[test]
    fn host_routes_get_one_slot_pair() {
        let l = DenseLayout::new(&nets(&["192.0.2.7/32", "10.0.0.0/31"]), 16);
        assert_eq!(l.slots(), 2 + 4);
        assert_eq!(l.slot_of(Ipv4Addr::new(192, 0, 2, 7)), Some(0));
        assert_eq!(l.slot_of(Ipv4Addr::new(10, 0, 0, 1)), Some(4));
        assert_eq!(l.host_of(1), Some((Ipv4Addr::new(192, 0, 2, 7), 1)));
        let v = l.trie_value(&"192.0.2.7/32".parse().unwrap());
        assert_eq!((v.slot_base, v.host_mask), (0, 0));
    }

    #[test]
    fn a_relayout_keeps_slots_and_reuses_only_ranges_the_old_layout_left_free() {
        let old = DenseLayout::new(&nets(&["10.0.0.0/24", "10.1.0.0/24", "10.2.0.0/25"]), 1024);
        assert_eq!((old.slots(), old.capacity()), (1280, 1280));
        let a = Ipv4Addr::new(10, 2, 0, 9);
        // The first /24 leaves, a /25 and a /24 join: the /25 fits neither the range the /24
        // left (not free yet) nor anywhere else; nothing moves.
        let new = old.relayout(&nets(&["10.1.0.0/24", "10.2.0.0/25", "10.3.0.0/25"]));
        assert_eq!(new.slot_of(a), old.slot_of(a));
        assert_eq!(
            new.slot_of(Ipv4Addr::new(10, 1, 0, 1)),
            old.slot_of(Ipv4Addr::new(10, 1, 0, 1))
        );
        assert!(!new.is_dense(&"10.3.0.0/25".parse().unwrap()));
        assert_eq!(new.slot_of(Ipv4Addr::new(10, 0, 0, 1)), None);
        assert_eq!(new.hashed(), 1);
        // Next time the range is free: two /25s share it, first fit in order.
        let next = new.relayout(&nets(&[
            "10.1.0.0/24",
            "10.2.0.0/25",
            "10.3.0.0/25",
            "10.4.0.0/25",
        ]));
        assert_eq!(next.slot_of(Ipv4Addr::new(10, 3, 0, 0)), Some(0));
        assert_eq!(next.slot_of(Ipv4Addr::new(10, 4, 0, 0)), Some(256));
        assert_eq!(next.slot_of(a), old.slot_of(a));
        let t = next.table();
        for addr in [a, Ipv4Addr::new(10, 3, 0, 5), Ipv4Addr::new(10, 4, 0, 127)] {
            let slot = next.slot_of(addr).unwrap();
            assert_eq!(kernel_slot(&next, &t, addr), Some(slot));
            assert_eq!(next.host_of(slot), Some((addr, 0)));
        }
        assert_eq!(next.hashed(), 0);
    }

    #[test]
    fn ranges_are_sorted_and_map_back_to_their_hosts() {
        let l = DenseLayout::new(
            &nets(&["192.0.2.0/24", "10.10.0.0/16", "10.9.0.0/16"]),
            65_792,
        );
        let r = l.ranges();
        // The second /16 did not fit: two ranges, by slot.
        assert_eq!(
            r,
            vec![
                (0, 512, u32::from(Ipv4Addr::new(192, 0, 2, 0))),
                (512, 512 + 131_072, u32::from(Ipv4Addr::new(10, 10, 0, 0))),
            ]
        );
        for &(base, end, first) in &r {
            for slot in [base, base + 1, end - 1] {
                let offset = slot - base;
                assert_eq!(
                    l.host_of(slot),
                    Some((Ipv4Addr::from(first + (offset >> 1)), (offset & 1) as u8))
                );
            }
        }
    }

    #[test]
    fn nothing_dense_when_the_budget_is_zero() {
        let l = DenseLayout::new(&nets(&["10.10.0.0/16"]), 0);
        assert_eq!(l.slots(), 0);
        assert_eq!(l.table()[block(10, 10)], local16::HASHED);
        assert_eq!(
            l.trie_value(&"10.10.0.0/16".parse().unwrap()).slot_base,
            local16::NO_SLOTS
        );
    }
}
