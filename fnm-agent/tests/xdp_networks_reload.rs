//! Changing the local networks of a loaded XDP program (a reload), through BPF_PROG_TEST_RUN:
//! every packet is counted once, for the host it was counted for, whether its host keeps its
//! dense slot, leaves the networks, joins them in the hash table or in a dense range another
//! network left, and the tries' size is checked before anything changes. Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::frames::*;
use common::require_root;
use fnm_agent::{accounting::Accounting, config::XdpConfig, prefix::Prefix, xdp::DataPlane};
use fnm_common::direction;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const REMOTE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn prefixes(list: &[&str]) -> Vec<Prefix> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn plane(networks: &[&str], dense_v4_addresses: u32, max_prefixes: u32) -> DataPlane {
    require_root("BPF_PROG_TEST_RUN tests");
    let cfg = XdpConfig {
        max_hosts: 1024,
        dense_v4_addresses,
        max_flows: 1024,
        max_drop_entries: 64,
        max_prefixes,
        ..XdpConfig::default()
    };
    DataPlane::load(&cfg, &prefixes(networks), &[]).expect("XDP program loads")
}

/// Sends `n` UDP packets from REMOTE4 to `dst`.
fn send(dp: &DataPlane, dst: IpAddr, n: usize) {
    let frame = match dst {
        IpAddr::V4(d) => eth(ETH_IPV4, &ipv4(REMOTE4, d, 17, &[], 0, &udp(5353, 53, 10))),
        IpAddr::V6(d) => eth(
            ETH_IPV6,
            &ipv6("2001:db9::1".parse().unwrap(), d, 17, &udp(5353, 53, 10)),
        ),
    };
    for _ in 0..n {
        dp.test_run(&frame).unwrap();
    }
}

fn incoming(acc: &Accounting, host: IpAddr) -> u64 {
    acc.host(host)
        .map(|h| h.dirs()[direction::INCOMING as usize].total().packets)
        .unwrap_or(0)
}

#[test]
fn changing_networks_keeps_every_count_with_its_host() {
    // The /16 and the /24 fill the dense array (131,584 slots); nothing is left over.
    let mut dp = plane(&["10.10.0.0/16", "10.20.5.0/24"], 65_536 + 256, 64);
    let all: fnm_agent::prefix::PrefixSet = prefixes(&["10.0.0.0/8", "2001:db8::/32"])
        .into_iter()
        .collect();
    let mut acc = Accounting::new(all, 1024, 1024, 1000);
    let kept: IpAddr = Ipv4Addr::new(10, 10, 0, 7).into();
    let leaving: IpAddr = Ipv4Addr::new(10, 20, 5, 9).into();
    let hashed: IpAddr = Ipv4Addr::new(10, 30, 0, 1).into();
    let reuser: IpAddr = Ipv4Addr::new(10, 40, 0, 9).into();
    let v6: IpAddr = "2001:db8::5".parse::<Ipv6Addr>().unwrap().into();

    send(&dp, kept, 3);
    send(&dp, leaving, 2);
    send(&dp, hashed, 1);
    send(&dp, v6, 1);
    dp.poll(&mut acc, 1_000, 600_000).unwrap();
    assert_eq!(
        [kept, leaving, hashed, v6].map(|h| incoming(&acc, h)),
        [3, 2, 0, 0]
    );
    // Counted before the change, polled after it: still theirs.
    send(&dp, kept, 1);
    send(&dp, leaving, 1);

    // The /24 leaves; a new /24 finds no dense range the old layout did not use: hashed. IPv6
    // joins.
    let change = dp
        .set_networks(&prefixes(&[
            "10.10.0.0/16",
            "10.30.0.0/24",
            "2001:db8::/32",
        ]))
        .unwrap();
    assert_eq!(change.hashed, prefixes(&["10.30.0.0/24"]));
    assert_eq!(change.removed, prefixes(&["10.20.5.0/24"]));
    assert_eq!(dp.networks().len(), 3);
    send(&dp, kept, 1);
    send(&dp, leaving, 5);
    send(&dp, hashed, 2);
    send(&dp, v6, 2);
    dp.poll(&mut acc, 2_000, 600_000).unwrap();
    assert_eq!(
        [kept, leaving, hashed, v6].map(|h| incoming(&acc, h)),
        [5, 3, 2, 2],
        "kept / left / joined hashed / joined IPv6"
    );

    // A second change: a new /24 takes the range the old /24 left; 10.40.0.9 has the very
    // slot 10.20.5.9 had (its 3 packets are still in it), and counts from zero.
    let change = dp
        .set_networks(&prefixes(&[
            "10.10.0.0/16",
            "10.40.0.0/24",
            "10.30.0.0/24",
            "2001:db8::/32",
        ]))
        .unwrap();
    assert!(change.hashed.is_empty(), "{change:?}");
    send(&dp, reuser, 4);
    send(&dp, leaving, 1);
    send(&dp, kept, 1);
    let slot_value = common::kernel_host(&dp, reuser, direction::INCOMING);
    assert_eq!(
        slot_value.packets,
        3 + 4,
        "the slot's counters are never reset"
    );
    dp.poll(&mut acc, 3_000, 600_000).unwrap();
    assert_eq!(
        [kept, leaving, hashed, v6, reuser].map(|h| incoming(&acc, h)),
        [6, 3, 2, 2, 4]
    );

    // The /16 leaves: its hosts stop counting; nothing else moves.
    dp.set_networks(&prefixes(&["10.40.0.0/24", "10.30.0.0/24"]))
        .unwrap();
    send(&dp, kept, 3);
    send(&dp, v6, 3);
    send(&dp, reuser, 1);
    dp.poll(&mut acc, 4_000, 600_000).unwrap();
    assert_eq!(
        [kept, leaving, hashed, v6, reuser].map(|h| incoming(&acc, h)),
        [6, 3, 2, 2, 5]
    );
    let local16 = |a: [u8; 4]| dp.maps.local16_entry(Ipv4Addr::from(a).into());
    assert_eq!(local16([10, 10, 0, 0]), Some(fnm_common::local16::NONE));
    // The /24's /16 is answered by a /24 table.
    let split = local16([10, 40, 0, 0]).unwrap();
    assert_ne!(split & fnm_common::local16::SPLIT, 0, "{split:#x}");
}

#[test]
fn a_change_the_tries_cannot_hold_changes_nothing() {
    let mut dp = plane(&["10.10.0.0/16"], 1024, 8);
    let many: Vec<Prefix> = (0..8u8)
        .map(|i| Prefix::new(Ipv4Addr::new(10, 50, i, 0).into(), 24).unwrap())
        .collect();
    let err = dp.set_networks(&many).unwrap_err().to_string();
    assert!(err.contains("max_prefixes"), "{err}");
    assert_eq!(dp.networks(), prefixes(&["10.10.0.0/16"]).as_slice());
    send(&dp, Ipv4Addr::new(10, 10, 0, 1).into(), 1);
    send(&dp, Ipv4Addr::new(10, 50, 0, 1).into(), 1);
    let c = common::kernel_host(&dp, Ipv4Addr::new(10, 10, 0, 1).into(), 0);
    assert_eq!(c.packets, 1);
    let c = common::kernel_host(&dp, Ipv4Addr::new(10, 50, 0, 1).into(), 0);
    assert_eq!(c.packets, 0);
    // Seven new ones and the old one fit.
    dp.set_networks(&many[..7]).unwrap();
    send(&dp, Ipv4Addr::new(10, 50, 0, 1).into(), 1);
    let c = common::kernel_host(&dp, Ipv4Addr::new(10, 50, 0, 1).into(), 0);
    assert_eq!(c.packets, 1);
}

#[test]
fn a_reload_rewrites_the_24_tables_and_the_ipv6_bits() {
    // Two /24s split 10.40/16 (its /24 table answers); a /48 in 2001:db8::/32.
    let mut dp = plane(
        &["10.40.1.0/24", "10.40.2.0/24", "2001:db8:105::/48"],
        1024,
        64,
    );
    let all: fnm_agent::prefix::PrefixSet = prefixes(&["10.0.0.0/8", "::/0"]).into_iter().collect();
    let mut acc = Accounting::new(all, 1024, 1024, 1000);
    let a: IpAddr = Ipv4Addr::new(10, 40, 1, 7).into();
    let b: IpAddr = Ipv4Addr::new(10, 40, 2, 7).into();
    let c: IpAddr = Ipv4Addr::new(10, 40, 8, 7).into();
    let d: IpAddr = Ipv4Addr::new(10, 41, 0, 7).into();
    let v6a: IpAddr = "2001:db8:105::7".parse().unwrap();
    let v6b: IpAddr = "2a02:1000:7::7".parse().unwrap();
    let hosts = [a, b, c, d, v6a, v6b];
    for h in hosts {
        send(&dp, h, 1);
    }
    dp.poll(&mut acc, 1_000, 600_000).unwrap();
    assert_eq!(hosts.map(|h| incoming(&acc, h)), [1, 1, 0, 0, 1, 0]);
    let slot_a = common::kernel_host(&dp, a, 0);
    // The second /24 leaves, a /22 joins 10.40/16 and a /24 splits 10.41/16; the IPv6 /48
    // leaves and a /48 of another /32 joins.
    dp.set_networks(&prefixes(&[
        "10.40.1.0/24",
        "10.40.8.0/22",
        "10.41.0.0/24",
        "2a02:1000:7::/48",
    ]))
    .unwrap();
    for h in hosts {
        send(&dp, h, 2);
    }
    dp.poll(&mut acc, 2_000, 600_000).unwrap();
    assert_eq!(hosts.map(|h| incoming(&acc, h)), [3, 1, 2, 2, 1, 2]);
    // The /24 that stayed kept its slot: its counters went on from where they were.
    assert_eq!(common::kernel_host(&dp, a, 0).packets, slot_a.packets + 2);
}
