//! Where the kernel finds "is this IPv4 address local" and its counters: the /16 table in front
//! of the local-networks trie, and the dense counter slots of the local networks.
//!
//! Networks are given dense slots in config order while they fit in `xdp.dense_v4_addresses`
//! (two slots per address: incoming, then outgoing); the others count their hosts in the
//! `HOSTS_V4` hash table. The /16 table holds, per /16, "nothing local", "ask the trie" (a local
//! prefix longer than /16 splits the block), "local, hashed", or "local, dense from slot b". The
//! trie's values carry the same slot base for the networks it answers for.
//!
//! A reload re-lays the networks out with [`DenseLayout::relayout`]: a network that stays keeps
//! its slots (so its hosts' counters stay where they are), a new one gets the first free range
//! of the array that no network of the old layout used (so no slot changes hands while packets
//! may still be counted under the old table), else the hash table.

use crate::prefix::Prefix;
use fnm_common::{local16, LocalNetV4};
use std::net::{IpAddr, Ipv4Addr};

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
        }
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
        Self {
            nets,
            slots,
            capacity: self.capacity,
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
                t[first] = local16::ASK_TRIE;
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

    /// What the kernel computes for `a`: the /16 entry, then the trie for split blocks.
    fn kernel_slot(l: &DenseLayout, t: &[u32; local16::BLOCKS], a: Ipv4Addr) -> Option<u32> {
        let a = u32::from(a);
        match t[(a >> 16) as usize] {
            local16::NONE | local16::HASHED => None,
            local16::ASK_TRIE => {
                let n = l.net_of(a)?;
                let v = l.trie_value(&Prefix::new(Ipv4Addr::from(n.addr).into(), n.len).unwrap());
                (v.slot_base != local16::NO_SLOTS).then(|| v.slot_base + ((a & v.host_mask) << 1))
            }
            v => Some(v - local16::DENSE + ((a & 0xffff) << 1)),
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
