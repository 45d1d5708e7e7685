//! The XDP program's IPv6 local-network lookup (the table by prefix length, the trie behind
//! it) against the prefixes themselves, on a real kernel through BPF_PROG_TEST_RUN: for random
//! addresses and the edges of every network, a packet from a remote source counts as incoming
//! exactly when its destination is in a local network, at load and after reloads (both
//! generations of the table), with the table answering and with the trie answering. Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::frames::*;
use common::require_root;
use fnm_agent::{config::XdpConfig, prefix::Prefix, xdp::DataPlane};
use fnm_common::{direction, proto, stat};
use std::net::{IpAddr, Ipv6Addr};

/// A source in no network of any case below.
fn remote() -> Ipv6Addr {
    "3fff:77::1".parse().unwrap()
}

fn nets(list: &[&str]) -> Vec<Prefix> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// The realistic layout: 50 /48s of one /32.
fn isp_layout() -> Vec<Prefix> {
    (0..50)
        .map(|i| {
            format!("2001:db8:{:x}::/48", 0x100 + i * 3)
                .parse()
                .unwrap()
        })
        .collect()
}

fn load(networks: &[Prefix]) -> DataPlane {
    require_root("BPF_PROG_TEST_RUN tests");
    let cfg = XdpConfig {
        max_hosts: 4096,
        max_flows: 1024,
        max_drop_entries: 64,
        max_prefixes: 256,
        ..XdpConfig::default()
    };
    DataPlane::load(&cfg, networks, &[]).expect("XDP program loads and passes the verifier")
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn addr(&mut self) -> u128 {
        ((self.next() as u128) << 64) | self.next() as u128
    }
}

/// Addresses to ask about `networks`: each network's first and last address, their
/// neighbours outside, a random address inside, random addresses in its /32 and its /16, and
/// random addresses anywhere.
fn probes(networks: &[Prefix], rng: &mut Rng, per_network: usize) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for p in networks {
        let IpAddr::V6(a) = p.addr() else { continue };
        let host = u128::MAX.checked_shr(p.len() as u32).unwrap_or(0);
        let first = u128::from(a) & !host;
        let last = first | host;
        for x in [
            first,
            last,
            first.wrapping_sub(1),
            last.wrapping_add(1),
            first | (rng.addr() & host),
        ] {
            out.push(x.into());
        }
        // 8 bits above the network: other /48s of a /40, other /40s of a /32.
        let above = u128::MAX
            .checked_shr(p.len().saturating_sub(8) as u32)
            .unwrap_or(0);
        for _ in 0..per_network {
            let r = rng.addr();
            out.push(((first & !above) | (r & above)).into());
            out.push(((first & !(u128::MAX >> 32)) | (r >> 32)).into());
            out.push(((first & !(u128::MAX >> 16)) | (r >> 16)).into());
        }
    }
    for _ in 0..200 {
        out.push(rng.addr().into());
    }
    out.extend([Ipv6Addr::UNSPECIFIED, Ipv6Addr::from(u128::MAX)]);
    out.retain(|a| *a != remote());
    out
}

fn incoming(dp: &DataPlane) -> u64 {
    dp.maps
        .stat(stat::total_index(direction::INCOMING, proto::UDP, false))
}

/// Asserts the program calls each probe local exactly when a network of `networks` holds it.
fn assert_answers_as_the_prefixes(dp: &DataPlane, networks: &[Prefix], seed: u64) {
    let mut rng = Rng(seed);
    let mut locals = 0;
    let addrs = probes(networks, &mut rng, 20);
    for a in &addrs {
        let want = networks.iter().any(|p| p.contains(IpAddr::V6(*a)));
        let before = incoming(dp);
        let frame = eth(ETH_IPV6, &ipv6(remote(), *a, 17, &udp(5353, 53, 10)));
        dp.test_run(&frame).unwrap();
        let got = incoming(dp) - before == 1;
        assert_eq!(got, want, "{a}: local {got}, a network holds it: {want}");
        locals += want as usize;
    }
    // Both answers were asked about, many times.
    assert!(
        locals > 50 && addrs.len() - locals > 50,
        "{locals} of {}",
        addrs.len()
    );
}

#[test]
fn the_table_answers_as_the_prefixes_at_load_and_after_reloads() {
    let first = isp_layout();
    let mut dp = load(&first);
    assert_eq!(dp.maps.local6_asks_trie(), Some(false));
    assert_eq!(dp.maps.local6_prefilter_len(), Some(48));
    assert_answers_as_the_prefixes(&dp, &first, 1);
    // Four lengths, nested and edge prefixes, and IPv4 networks beside them.
    let second = nets(&[
        "2001:db8::/32",
        "2001:db8:105::/48",
        "2a02:1000:7::/48",
        "2a02:1000:8::/48",
        "::/8",
        "::1/128",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        "10.0.0.0/8",
    ]);
    dp.set_networks(&second).unwrap();
    assert_eq!(dp.maps.local6_asks_trie(), Some(false));
    assert_eq!(dp.maps.local6_prefilter_len(), Some(32));
    assert_answers_as_the_prefixes(&dp, &second, 2);
    // Back to the first (the generation written at load, rewritten).
    dp.set_networks(&first).unwrap();
    assert_eq!(dp.maps.local6_prefilter_len(), Some(48));
    assert_answers_as_the_prefixes(&dp, &first, 3);
}

#[test]
fn the_prefilter_length_follows_the_shortest_network_across_reloads() {
    // /48s (the prefilter hashes /48s), then a /40 beside them (/40s: the /48s' bits are
    // rehashed in the other generation), then /64s and a /128 (/64s), then the /48s again.
    let first = isp_layout();
    let mut dp = load(&first);
    assert_eq!(dp.maps.local6_prefilter_len(), Some(48));
    assert_answers_as_the_prefixes(&dp, &first, 11);
    let mut with_40 = first.clone();
    with_40.extend(nets(&["2001:db8:4200::/40", "2a02:1000:7::/48"]));
    dp.set_networks(&with_40).unwrap();
    assert_eq!(dp.maps.local6_prefilter_len(), Some(40));
    assert_answers_as_the_prefixes(&dp, &with_40, 12);
    let mut long: Vec<Prefix> = (0..24)
        .map(|i| {
            format!("2001:db8:105:{:x}::/64", 7 + 5 * i)
                .parse()
                .unwrap()
        })
        .collect();
    long.extend(nets(&["2001:db8:1ff:0:1::/80", "2a03:1:2:3::9/128"]));
    dp.set_networks(&long).unwrap();
    assert_eq!(dp.maps.local6_prefilter_len(), Some(64));
    assert_answers_as_the_prefixes(&dp, &long, 13);
    dp.set_networks(&first).unwrap();
    assert_eq!(dp.maps.local6_prefilter_len(), Some(48));
    assert_answers_as_the_prefixes(&dp, &first, 14);
}

#[test]
fn more_lengths_than_the_table_holds_ask_the_trie_with_the_same_answers() {
    let many = nets(&[
        "2001:db8::/32",
        "2001:db9:1::/48",
        "2001:db9:2:100::/56",
        "2001:db9:3:7::/64",
        "2a02:1000::/28",
        "2a03:1:2:3::9/128",
    ]);
    let mut dp = load(&many);
    assert_eq!(dp.maps.local6_asks_trie(), Some(true));
    assert_answers_as_the_prefixes(&dp, &many, 4);
    // Back to the table once the lengths fit again.
    let fit = isp_layout();
    dp.set_networks(&fit).unwrap();
    assert_eq!(dp.maps.local6_asks_trie(), Some(false));
    assert_answers_as_the_prefixes(&dp, &fit, 5);
}
