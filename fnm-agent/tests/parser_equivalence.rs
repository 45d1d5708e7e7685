//! The same frames through the userspace parser (capture backends, replay) and through the XDP
//! program (BPF_PROG_TEST_RUN): identical per-host accounting, totals and parse outcomes, frame
//! by frame. The frames: hand-built plain and tunnelled packets (GRE, ERSPAN I/II/III,
//! enhanced GRE, L2TPv2, IP-in-IP, MPLS pseudowires inside tunnels, nesting past the depth
//! limit), every truncation of each tunnel frame, seeded random mutations of their headers, and
//! every frame of the scapy-generated captures of `tests/gen_pcaps.py`. Needs root (and
//! python3-scapy).
#![cfg(target_os = "linux")]

mod common;

use common::frames::*;
use fnm_agent::{
    accounting::{from16, Accounting, Direction},
    capture::parse::{parse_frame, LinkType, Skip},
    capture::pcap_file::PcapReader,
    config::XdpConfig,
    prefix::{Prefix, PrefixSet},
    traffic::Source,
    xdp::DataPlane,
};
use fnm_common::{direction, proto, stat, HostCounters};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 5);
const REMOTE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Tunnel endpoints: the local one is a host of its own, so a packet counted outside its
/// tunnel lands somewhere else than the inner one.
const TUNNEL_LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 9);
const TUNNEL_REMOTE4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn local6() -> Ipv6Addr {
    "2001:db8::5".parse().unwrap()
}
fn remote6() -> Ipv6Addr {
    "2001:db9::1".parse().unwrap()
}
fn tunnel_local6() -> Ipv6Addr {
    "2001:db8::9".parse().unwrap()
}
fn tunnel_remote6() -> Ipv6Addr {
    "2001:db9::9".parse().unwrap()
}

fn networks() -> Vec<Prefix> {
    vec![
        "10.10.0.0/16".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ]
}

fn plain_frames() -> Vec<(String, Vec<u8>)> {
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
    .into_iter()
    .map(|(n, f)| (n.to_owned(), f))
    .collect()
}

/// IPv4 between the tunnel endpoints (incoming to the local one) carrying `payload`.
fn over4(protocol: u8, payload: &[u8]) -> Vec<u8> {
    ipv4(TUNNEL_REMOTE4, TUNNEL_LOCAL4, protocol, &[], 0, payload)
}

/// IPv6 between the tunnel endpoints carrying `payload`.
fn over6(next: u8, payload: &[u8]) -> Vec<u8> {
    ipv6(tunnel_remote6(), tunnel_local6(), next, payload)
}

/// Tunnel frames: (name, frame, offset of the first tunnel header, for the mutations).
fn tunnel_frames() -> Vec<(String, Vec<u8>, usize)> {
    let in4 = ipv4(REMOTE4, LOCAL4, 17, &[], 0, &udp(5353, 53, 100));
    let out4 = ipv4(LOCAL4, REMOTE4, 6, &[], 0, &tcp(80, 40000, 0x02));
    let in6 = ipv6(remote6(), local6(), 17, &udp(1, 53, 20));
    let in4_eth = eth(ETH_IPV4, &in4);
    let (t, tagged) = vlan(ETH_8021Q, 7, ETH_IPV4, &out4);
    let (t2, tagged2) = vlan(ETH_8021AD, 8, t, &tagged);
    let (t3, tagged3) = vlan(ETH_8021Q, 9, t2, &tagged2);
    let in4_three_tags = eth(t3, &tagged3);
    let ppp4 = ppp(true, &[0x00, 0x21], &in4);
    let ppp6_short = ppp(false, &[0x57], &in6);
    // GRE tunnel header offset after Ethernet + outer IPv4 (20) or IPv6 (40).
    let (g4, g6) = (14 + 20, 14 + 40);
    let l2 = g4 + 8;
    let mut v = vec![
        (
            "gre ipv4",
            eth(ETH_IPV4, &over4(47, &gre(0, 0x0800, &[], &in4))),
            g4,
        ),
        (
            "gre csum+key+seq ipv6",
            eth(ETH_IPV4, &over4(47, &gre(0xb000, 0x86dd, &[0; 12], &in6))),
            g4,
        ),
        (
            "gre over ipv6, outgoing inner",
            eth(ETH_IPV6, &over6(47, &gre(0, 0x0800, &[], &out4))),
            g6,
        ),
        (
            "gre teb, three inner tags",
            eth(
                ETH_IPV4,
                &over4(47, &gre(0x2000, ETH_TEB, &[0, 0, 0, 1], &in4_three_tags)),
            ),
            g4,
        ),
        (
            "gre mpls ipv4",
            eth(
                ETH_IPV4,
                &over4(47, &gre(0, ETH_MPLS, &[], &mpls(&[20, 21], &in4))),
            ),
            g4,
        ),
        (
            "gre mpls pseudowire ethernet",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(0, ETH_MPLS, &[], &mpls(&[30], &pseudowire(&in4_eth))),
                ),
            ),
            g4,
        ),
        (
            "erspan I",
            eth(ETH_IPV4, &over4(47, &gre(0, ETH_ERSPAN_1_2, &[], &in4_eth))),
            g4,
        ),
        (
            "erspan II",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(0x1000, ETH_ERSPAN_1_2, &[0, 0, 0, 1], &erspan2(1, &in4_eth)),
                ),
            ),
            g4,
        ),
        (
            "erspan II version 0 (scapy)",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(0x1000, ETH_ERSPAN_1_2, &[0, 0, 0, 2], &erspan2(0, &in4_eth)),
                ),
            ),
            g4,
        ),
        (
            "erspan II version 2: outer",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(0x1000, ETH_ERSPAN_1_2, &[0, 0, 0, 3], &erspan2(2, &in4_eth)),
                ),
            ),
            g4,
        ),
        (
            "erspan III",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0x1000,
                        ETH_ERSPAN_3,
                        &[0, 0, 0, 4],
                        &erspan3(0, false, &in4_eth),
                    ),
                ),
            ),
            g4,
        ),
        (
            "erspan III platform subheader, over ipv6",
            eth(
                ETH_IPV6,
                &over6(
                    47,
                    &gre(
                        0x1000,
                        ETH_ERSPAN_3,
                        &[0, 0, 0, 5],
                        &erspan3(0, true, &in4_eth),
                    ),
                ),
            ),
            g6,
        ),
        (
            "erspan III not ethernet: outer",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0x1000,
                        ETH_ERSPAN_3,
                        &[0, 0, 0, 6],
                        &erspan3(3, false, &in4_eth),
                    ),
                ),
            ),
            g4,
        ),
        (
            "enhanced gre ppp (pptp)",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(0x3001, ETH_PPP, &[0, 100, 0, 7, 0, 0, 0, 1], &ppp4),
                ),
            ),
            g4,
        ),
        (
            "enhanced gre ack, compressed ppp ipv6",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0x3081,
                        ETH_PPP,
                        &[0, 60, 0, 7, 0, 0, 0, 2, 0, 0, 0, 1],
                        &ppp6_short,
                    ),
                ),
            ),
            g4,
        ),
        (
            "enhanced gre not ppp: outer",
            eth(
                ETH_IPV4,
                &over4(47, &gre(0x2001, 0x0800, &[0, 100, 0, 7], &in4)),
            ),
            g4,
        ),
        (
            "gre routing: outer",
            eth(ETH_IPV4, &over4(47, &gre(0x4000, 0x0800, &[0; 4], &in4))),
            g4,
        ),
        (
            "gre version 2: outer",
            eth(ETH_IPV4, &over4(47, &gre(0x0002, 0x0800, &[], &in4))),
            g4,
        ),
        (
            "gre keepalive: outer",
            eth(ETH_IPV4, &over4(47, &gre(0, 0, &[], &[]))),
            g4,
        ),
        (
            "l2tp data, both ports",
            eth(
                ETH_IPV4,
                &over4(17, &udp_with(1701, 1701, &l2tp(0x0002, 0, &ppp4))),
            ),
            l2,
        ),
        (
            "l2tp length+seq+offset, source port only",
            eth(
                ETH_IPV4,
                &over4(17, &udp_with(1701, 40000, &l2tp(0x4a02, 3, &ppp4))),
            ),
            l2,
        ),
        (
            "l2tp compressed ppp ipv6, destination port only",
            eth(
                ETH_IPV4,
                &over4(17, &udp_with(40000, 1701, &l2tp(0x0802, 0, &ppp6_short))),
            ),
            l2,
        ),
        (
            "l2tp control: outer",
            eth(
                ETH_IPV4,
                &over4(17, &udp_with(1701, 1701, &l2tp(0xc802, 0, &[0, 8, 0, 0]))),
            ),
            l2,
        ),
        (
            "l2tp ppp lcp: outer",
            eth(
                ETH_IPV4,
                &over4(
                    17,
                    &udp_with(
                        1701,
                        1701,
                        &l2tp(0x0002, 0, &ppp(true, &[0xc0, 0x21], &[1, 1, 0, 4])),
                    ),
                ),
            ),
            l2,
        ),
        (
            "l2tp version 3: outer",
            eth(
                ETH_IPV4,
                &over4(17, &udp_with(1701, 1701, &l2tp(0x0003, 0, &ppp4))),
            ),
            l2,
        ),
        (
            "l2tp offset past the frame: outer",
            eth(
                ETH_IPV4,
                &over4(
                    17,
                    &udp_with(
                        1701,
                        1701,
                        &[0x02, 0x02, 0, 1, 0, 2, 0xff, 0xf0, 0xff, 0x03],
                    ),
                ),
            ),
            l2,
        ),
        ("ip-in-ip", eth(ETH_IPV4, &over4(4, &in4)), g4),
        ("6in4", eth(ETH_IPV4, &over4(41, &in6)), g4),
        ("ipv4 in ipv6", eth(ETH_IPV6, &over6(4, &out4)), g6),
        (
            "ip-in-ip, outer fragment: outer",
            eth(
                ETH_IPV4,
                &ipv4(TUNNEL_REMOTE4, TUNNEL_LOCAL4, 4, &[], 0x2000, &in4),
            ),
            g4,
        ),
        (
            "gre, inner later fragment",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0,
                        0x0800,
                        &[],
                        &ipv4(REMOTE4, LOCAL4, 17, &[], 0x0010, &[0; 24]),
                    ),
                ),
            ),
            g4,
        ),
        (
            "gre, inner ipv6 fragment",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0,
                        0x86dd,
                        &[],
                        &ipv6(remote6(), local6(), 44, &ipv6_frag(4, 0, true, &in4)),
                    ),
                ),
            ),
            g4,
        ),
        (
            "gre, inner ipv4 options",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0,
                        0x0800,
                        &[],
                        &ipv4(REMOTE4, LOCAL4, 6, &[1; 8], 0, &tcp(1, 2, 0x02)),
                    ),
                ),
            ),
            g4,
        ),
        (
            "gre, inner total length < ihl: outer",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(0, 0x0800, &[], &{
                        let mut p = in4.clone();
                        p[2..4].copy_from_slice(&10u16.to_be_bytes());
                        p
                    }),
                ),
            ),
            g4,
        ),
        (
            "gre, inner tcp cut: outer",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(0, 0x0800, &[], &ipv4(REMOTE4, LOCAL4, 6, &[], 0, &[0; 10])),
                ),
            ),
            g4,
        ),
        (
            "gre in ip-in-ip in gre",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0,
                        0x0800,
                        &[],
                        &over4(4, &over4(47, &gre(0, 0x0800, &[], &in4))),
                    ),
                ),
            ),
            g4,
        ),
        (
            "four ip-in-ip layers: counted three deep",
            eth(ETH_IPV4, &over4(4, &over4(4, &over4(4, &over4(4, &in4))))),
            g4,
        ),
        (
            "gre, mpls pseudowire, vlan, gre",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0,
                        ETH_MPLS,
                        &[],
                        &mpls(
                            &[16, 17],
                            &pseudowire(&eth(
                                ETH_8021Q,
                                &vlan(
                                    ETH_8021Q,
                                    3,
                                    ETH_IPV4,
                                    &over4(47, &gre(0, 0x0800, &[], &in4)),
                                )
                                .1,
                            )),
                        ),
                    ),
                ),
            ),
            g4,
        ),
        (
            "gre, four pseudowires: outer",
            eth(
                ETH_IPV4,
                &over4(
                    47,
                    &gre(
                        0,
                        ETH_MPLS,
                        &[],
                        &mpls(
                            &[1],
                            &pseudowire(&eth(
                                ETH_MPLS,
                                &mpls(
                                    &[2],
                                    &pseudowire(&eth(ETH_MPLS, &mpls(&[3], &pseudowire(&in4_eth)))),
                                ),
                            )),
                        ),
                    ),
                ),
            ),
            g4,
        ),
        (
            "gre, mpls control word too short: outer",
            eth(
                ETH_IPV4,
                &over4(47, &gre(0, ETH_MPLS, &[], &mpls(&[16], &[0, 0]))),
            ),
            g4,
        ),
    ];
    // A tunnel whose inner headers start past what XDP reads: GRE padded out by an
    // ERSPAN III platform subheader is not enough, so an L2TP offset pad is used; both sides
    // must still agree when the frame ends before the offset.
    v.push((
        "l2tp offset pad of 40",
        eth(
            ETH_IPV4,
            &over4(17, &udp_with(1701, 1701, &l2tp(0x0202, 40, &ppp4))),
        ),
        l2,
    ));
    v.into_iter()
        .map(|(n, f, o)| (n.to_owned(), f, o))
        .collect()
}

/// xorshift64: the mutations are the same in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Every frame the comparison runs: name and bytes.
fn all_frames() -> Vec<(String, Vec<u8>)> {
    let mut out = plain_frames();
    let tunnels = tunnel_frames();
    for (name, frame, _) in &tunnels {
        out.push((name.clone(), frame.clone()));
    }
    // Every truncation of every tunnel frame, through the tunnel headers and into the inner
    // packet's headers.
    for (name, frame, _) in &tunnels {
        for len in 14..frame.len() {
            out.push((format!("{name} cut to {len}"), frame[..len].to_vec()));
        }
    }
    // Seeded random mutations of the tunnel headers and what follows them.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..40 {
        for (name, frame, at) in &tunnels {
            let mut f = frame.clone();
            let span = (f.len() - at).min(80);
            for _ in 0..=(rng.next() % 3) {
                let i = at + (rng.next() as usize % span);
                f[i] = rng.next() as u8;
            }
            out.push((format!("{name} mutation {round}"), f));
        }
    }
    out
}

/// Frames of the scapy-generated captures (real third-party encoders of every tunnel).
fn scapy_frames() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gen_pcaps.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("run tests/gen_pcaps.py (python3-scapy, installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "gen_pcaps.py failed (is python3-scapy installed?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut frames = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    files.sort();
    for path in files {
        let mut reader = PcapReader::open(&path).unwrap();
        let mut n = 0;
        while let Some(packet) = reader.next_packet().unwrap() {
            assert_eq!(packet.link_type, 1, "{}: Ethernet", path.display());
            let name = path.file_name().unwrap().to_string_lossy();
            frames.push((format!("{name} #{n}"), packet.data.to_vec()));
            n += 1;
        }
    }
    assert!(frames.len() > 100, "{} scapy frames", frames.len());
    frames
}

/// Both sides after the same frames.
struct Pair {
    dp: DataPlane,
    acc: Accounting,
    /// Userspace outcomes: malformed, not IP, decapsulated, outer counted.
    outcomes: [u64; 4],
}

impl Pair {
    fn new() -> Self {
        let networks = networks();
        let dp = DataPlane::load(&XdpConfig::default(), &networks, &[]).expect("load XDP");
        let nets: PrefixSet = networks.iter().copied().collect();
        let acc = Accounting::new(nets, 100_000, 1 << 20, 1000);
        Self {
            dp,
            acc,
            outcomes: [0; 4],
        }
    }

    fn run(&mut self, frame: &[u8]) {
        self.dp.test_run(frame).expect("BPF_PROG_TEST_RUN");
        let outcome = parse_frame(LinkType::Ethernet, frame);
        match &outcome {
            Ok(decoded) => {
                self.acc.ingest(&decoded.record, Source::Pcap);
                self.outcomes[2] += u64::from(decoded.tunnels > 0);
                self.outcomes[3] += u64::from(decoded.outer_counted);
            }
            Err(Skip::Malformed) => self.outcomes[0] += 1,
            Err(Skip::NotIp) => self.outcomes[1] += 1,
        }
    }

    /// Panics with `name` unless both sides hold the same counters.
    fn assert_same(&self, name: &str, frame: &[u8]) {
        let m = &self.dp.maps;
        let kernel = [
            m.stat(stat::MALFORMED),
            m.stat(stat::NON_IP),
            m.stat(stat::DECAPSULATED),
            m.stat(stat::TUNNEL_OUTER_COUNTED),
        ];
        let outcome = parse_frame(LinkType::Ethernet, frame);
        assert_eq!(
            kernel, self.outcomes,
            "{name}: [malformed, not IP, decapsulated, outer counted] XDP vs userspace \
             (userspace: {outcome:?})\n{frame:02x?}"
        );
        for dir in 0..direction::COUNT as u8 {
            for class in 0..proto::COUNT {
                let k = (
                    m.stat(stat::total_index(dir, class, false)),
                    m.stat(stat::total_index(dir, class, true)),
                );
                let u = self
                    .acc
                    .totals()
                    .get(Source::Pcap, dir as usize, class)
                    .unwrap_or_default();
                assert_eq!(k, u, "{name}: totals {dir}/{class} ({outcome:?})");
            }
        }
        let mut hosts: BTreeSet<(IpAddr, u8)> = m
            .hosts
            .keys()
            .map(|k| k.unwrap())
            .map(|k| (from16(k.addr), k.direction))
            .collect();
        for (ip, _) in self.acc.hosts() {
            for dir in Direction::ALL {
                hosts.insert((*ip, dir.index() as u8));
            }
        }
        for (ip, dir) in hosts {
            let k = common::kernel_host(&self.dp, ip, dir);
            let u = self
                .acc
                .host(ip)
                .map(|h| h.dirs()[dir as usize].total())
                .unwrap_or_default();
            assert_eq!(
                k, u,
                "{name}: {ip} direction {dir}: XDP vs userspace ({outcome:?})\n{frame:02x?}"
            );
        }
    }
}

#[test]
fn userspace_parser_and_xdp_account_identically() {
    common::require_root("the parser equivalence test");
    let mut pair = Pair::new();
    let frames = all_frames();
    for (name, frame) in &frames {
        pair.run(frame);
        pair.assert_same(name, frame);
    }
    // The comparison is not vacuous: tunnels were opened, fell back, and frames failed.
    let [malformed, not_ip, decapsulated, outer] = pair.outcomes;
    assert!(
        malformed > 100 && not_ip > 0 && decapsulated > 500 && outer > 100,
        "{:?} over {} frames",
        pair.outcomes,
        frames.len()
    );
    let inner = common::kernel_host(&pair.dp, LOCAL4.into(), direction::INCOMING);
    assert!(inner.packets > 500, "{inner:?}");
    assert_ne!(inner, HostCounters::default());
}

#[test]
fn scapy_captures_account_identically() {
    common::require_root("the parser equivalence test");
    let mut pair = Pair::new();
    for (name, frame) in scapy_frames() {
        pair.run(&frame);
        pair.assert_same(&name, &frame);
    }
    let [malformed, not_ip, decapsulated, outer] = pair.outcomes;
    assert_eq!((malformed, not_ip, outer), (0, 0, 0), "{:?}", pair.outcomes);
    assert!(decapsulated >= 50, "{:?}", pair.outcomes);
}
