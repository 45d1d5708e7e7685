//! The IPv4 /16 table in front of the local-networks trie: one byte per /16 says "no address
//! here is local", "every address here is local", or "ask the trie" (a local prefix longer than
//! /16 splits the block). The kernel then needs no trie lookup for most addresses.

use crate::prefix::Prefix;
use fnm_common::local16;
use std::net::IpAddr;

/// The table for `networks` (IPv6 networks are ignored).
pub fn table(networks: &[Prefix]) -> Box<[u8; local16::BLOCKS]> {
    let mut t = Box::new([local16::NONE; local16::BLOCKS]);
    let v4 = networks.iter().filter_map(|p| match p.addr() {
        IpAddr::V4(a) => Some((u32::from(a), p.len())),
        IpAddr::V6(_) => None,
    });
    // Shortest first: a block covered by a short prefix is ALL unless a longer prefix inside it
    // turns it into ASK_TRIE, which nothing turns back.
    let mut v4: Vec<(u32, u8)> = v4.collect();
    v4.sort_by_key(|(_, len)| *len);
    for (addr, len) in v4 {
        let first = (addr >> 16) as usize;
        if len <= 16 {
            let count = 1usize << (16 - len);
            let first = first & !(count - 1);
            for b in &mut t[first..first + count] {
                if *b == local16::NONE {
                    *b = local16::ALL;
                }
            }
        } else {
            t[first] = local16::ASK_TRIE;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(a: u8, b: u8) -> usize {
        ((a as usize) << 8) | b as usize
    }

    #[test]
    fn short_prefixes_fill_blocks_and_long_ones_ask_the_trie() {
        let nets: Vec<Prefix> = [
            "10.10.0.0/16",
            "172.16.0.0/12",
            "192.0.2.0/24",
            "2001:db8::/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let t = table(&nets);
        assert_eq!(t[block(10, 10)], local16::ALL);
        assert_eq!(t[block(10, 11)], local16::NONE);
        assert_eq!(t[block(172, 16)], local16::ALL);
        assert_eq!(t[block(172, 31)], local16::ALL);
        assert_eq!(t[block(172, 32)], local16::NONE);
        assert_eq!(t[block(192, 0)], local16::ASK_TRIE);
        assert_eq!(t.iter().filter(|b| **b == local16::ALL).count(), 1 + 16);
    }

    #[test]
    fn a_long_prefix_inside_a_short_one_asks_the_trie_whatever_the_order() {
        for nets in [["10.0.0.0/8", "10.1.2.0/24"], ["10.1.2.0/24", "10.0.0.0/8"]] {
            let nets: Vec<Prefix> = nets.iter().map(|s| s.parse().unwrap()).collect();
            let t = table(&nets);
            assert_eq!(t[block(10, 1)], local16::ASK_TRIE);
            assert_eq!(t[block(10, 2)], local16::ALL);
        }
    }

    #[test]
    fn the_default_route_makes_everything_local() {
        let t = table(&["0.0.0.0/0".parse().unwrap()]);
        assert!(t.iter().all(|b| *b == local16::ALL));
    }
}
