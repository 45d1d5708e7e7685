//! The same frames through the userspace parser (capture backends, replay) and through the XDP
//! program (BPF_PROG_TEST_RUN): identical per-host accounting, frame by frame. Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::frames::*;
use fnm_agent::{
    accounting::{Accounting, Direction},
    capture::parse::{parse_frame, LinkType},
    config::XdpConfig,
    prefix::PrefixSet,
    traffic::Source,
    xdp::DataPlane,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 5);
const REMOTE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn local6() -> Ipv6Addr {
    "2001:db8::5".parse().unwrap()
}
fn remote6() -> Ipv6Addr {
    "2001:db9::1".parse().unwrap()
}

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let udp4 = ipv4(REMOTE4, LOCAL4, 17, &[], 0, &udp(5353, 53, 100));
    let (t, tagged) = vlan(ETH_8021Q, 100, ETH_IPV4, &udp4);
    let (t_in, inner) = vlan(ETH_8021Q, 200, ETH_IPV4, &udp4);
    let (t_out, qinq) = vlan(ETH_8021AD, 300, t_in, &inner);
    vec![
        ("ipv4 udp", eth(ETH_IPV4, &udp4)),
        ("vlan", eth(t, &tagged)),
        ("qinq", eth(t_out, &qinq)),
        ("mpls", eth(ETH_MPLS, &mpls(&[16, 17], &udp4))),
        (
            "ipv4 options tcp syn",
            eth(
                ETH_IPV4,
                &ipv4(REMOTE4, LOCAL4, 6, &[1, 1, 1, 0], 0, &tcp(40000, 80, 0x02)),
            ),
        ),
        (
            "tcp ack outgoing",
            eth(
                ETH_IPV4,
                &ipv4(LOCAL4, REMOTE4, 6, &[], 0, &tcp(80, 40000, 0x10)),
            ),
        ),
        (
            "first fragment",
            eth(
                ETH_IPV4,
                &ipv4(REMOTE4, LOCAL4, 17, &[], 0x2000, &udp(1, 2, 64)),
            ),
        ),
        (
            "later fragment",
            eth(
                ETH_IPV4,
                &ipv4(REMOTE4, LOCAL4, 17, &[], 0x0009, &[0u8; 40]),
            ),
        ),
        (
            "icmp",
            eth(ETH_IPV4, &ipv4(REMOTE4, LOCAL4, 1, &[], 0, &icmp_echo(56))),
        ),
        (
            "ipv6 ext headers",
            eth(
                ETH_IPV6,
                &ipv6(
                    remote6(),
                    local6(),
                    0,
                    &ipv6_opts(60, &ipv6_opts(17, &udp(1, 53, 20))),
                ),
            ),
        ),
        (
            "ipv6 fragment",
            eth(
                ETH_IPV6,
                &ipv6(
                    remote6(),
                    local6(),
                    44,
                    &ipv6_frag(17, 0, true, &udp(1, 2, 16)),
                ),
            ),
        ),
        ("arp", eth(0x0806, &[0u8; 28])),
        ("truncated", eth(ETH_IPV4, &udp4)[..20].to_vec()),
    ]
}

#[test]
fn userspace_parser_and_xdp_account_identically() {
    common::require_root("the parser equivalence test");
    let networks = vec![
        "10.10.0.0/16".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    for (name, frame) in frames() {
        let dp = DataPlane::load(&XdpConfig::default(), &networks, &[]).expect("load XDP");
        dp.test_run(&frame).unwrap();
        let nets: PrefixSet = networks.iter().copied().collect();
        let mut acc = Accounting::new(nets, 100, 100, 1000);
        if let Ok(decoded) = parse_frame(LinkType::Ethernet, &frame) {
            acc.ingest(&decoded.record, Source::Pcap);
        }
        for host in [IpAddr::V4(LOCAL4), IpAddr::V6(local6())] {
            for dir in Direction::ALL {
                let k = common::kernel_host(&dp, host, dir.index() as u8);
                let u = acc
                    .host(host)
                    .map(|h| h.dirs[dir.index()].total)
                    .unwrap_or_default();
                assert_eq!(
                    k,
                    u,
                    "{name}: {host} {}: XDP {k:?} vs userspace {u:?}",
                    dir.as_str()
                );
            }
        }
    }
}
