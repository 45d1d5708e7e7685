//! Userspace parser: a table of hand-built frames (VLAN, QinQ, MPLS, IPv4 options and
//! fragments, IPv6 extension headers, L2TP, GRE, ERSPAN, IP-in-IP, truncated, garbage), and
//! replay of scapy-generated capture files with known per-host counts.

use fnm_agent::capture::parse::{parse_frame, LinkType, Skip};
use fnm_agent::capture::pcap_file::{replay, PcapReader};
use fnm_agent::traffic::TrafficRecord;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// ---- frame builders -------------------------------------------------------------------

const MAC: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend(ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn vlan(tpid: u16, id: u16, inner_type: u16) -> Vec<u8> {
    let mut t = tpid.to_be_bytes().to_vec();
    t.extend(id.to_be_bytes());
    t.extend(inner_type.to_be_bytes());
    t
}

/// An Ethernet frame with the given tags (each `(tpid, vid)`), then `ethertype` and payload.
fn tagged(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = MAC.to_vec();
    for (i, (tpid, vid)) in tags.iter().enumerate() {
        let next = tags.get(i + 1).map(|t| t.0).unwrap_or(ethertype);
        if i == 0 {
            f.extend(vlan(*tpid, *vid, next));
        } else {
            f.extend(vid.to_be_bytes());
            f.extend(next.to_be_bytes());
        }
    }
    if tags.is_empty() {
        f.extend(ethertype.to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn mpls(labels: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let bottom = u32::from(i + 1 == labels.len());
        m.extend(((label << 12) | (bottom << 8) | 64).to_be_bytes());
    }
    m.extend_from_slice(payload);
    m
}

fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

struct Ip4 {
    src: &'static str,
    dst: &'static str,
    proto: u8,
    ttl: u8,
    options: Vec<u8>,
    /// (more fragments, offset in 8-byte units)
    frag: (bool, u16),
    /// Total length override (else header + payload).
    total_len: Option<u16>,
}

fn ip4(src: &'static str, dst: &'static str, proto: u8) -> Ip4 {
    Ip4 {
        src,
        dst,
        proto,
        ttl: 64,
        options: Vec::new(),
        frag: (false, 0),
        total_len: None,
    }
}

impl Ip4 {
    fn build(&self, payload: &[u8]) -> Vec<u8> {
        let ihl = 20 + self.options.len();
        assert_eq!(ihl % 4, 0);
        let total = self.total_len.unwrap_or((ihl + payload.len()) as u16);
        let mut h = vec![0x40 | (ihl / 4) as u8, 0];
        h.extend(total.to_be_bytes());
        h.extend([0x12, 0x34]);
        let frag = (u16::from(self.frag.0) << 13) | self.frag.1;
        h.extend(frag.to_be_bytes());
        h.extend([self.ttl, self.proto, 0, 0]);
        h.extend(v4(self.src));
        h.extend(v4(self.dst));
        h.extend_from_slice(&self.options);
        h.extend_from_slice(payload);
        h
    }
}

fn ip6(src: &str, dst: &str, next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((payload.len() as u16).to_be_bytes());
    h.extend([next, hop_limit]);
    h.extend(v6(src));
    h.extend(v6(dst));
    h.extend_from_slice(payload);
    h
}

/// A generic IPv6 extension header (hop-by-hop, routing, destination options) of 8 bytes.
fn ext8(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend(((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend([0, 0, 0, 7]);
    h
}

/// AH with a 12-byte ICV: payload length field (3 + 1 words of ICV) ... total 24 bytes.
fn ah(next: u8) -> Vec<u8> {
    let mut h = vec![next, 4, 0, 0];
    h.extend([0, 0, 1, 0]); // SPI
    h.extend([0, 0, 0, 1]); // sequence
    h.extend([0xaa; 12]); // ICV
    h
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend(dport.to_be_bytes());
    t.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend(dport.to_be_bytes());
    u.extend(((8 + payload.len()) as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend_from_slice(payload);
    u
}

fn icmp(kind: u8, code: u8) -> Vec<u8> {
    vec![kind, code, 0, 0, 0, 1, 0, 1]
}

fn gre(flags: u16, proto: u16, extra: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut g = flags.to_be_bytes().to_vec();
    g.extend(proto.to_be_bytes());
    g.extend_from_slice(extra);
    g.extend_from_slice(payload);
    g
}

fn erspan2(session: u16) -> Vec<u8> {
    let mut e = (0x1000u16 | 100).to_be_bytes().to_vec(); // version 1, VLAN 100
    e.extend((session & 0x3ff).to_be_bytes());
    e.extend([0, 0, 0, 5]);
    e
}

/// L2TPv2 data message with length, sequence numbers and an offset pad, then PPP.
fn l2tp_data(ppp_proto: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut l = 0x4802u16.to_be_bytes().to_vec(); // L, S, version 2
    l.extend([0, 0]); // length (not checked)
    l.extend([0, 1, 0, 2]); // tunnel, session
    l.extend([0, 0, 0, 0]); // Ns, Nr
    l.extend([0xff, 0x03]);
    l.extend_from_slice(ppp_proto);
    l.extend_from_slice(payload);
    l
}

// ---- the table ------------------------------------------------------------------------

/// What a frame must produce: (src, dst, protocol, src_port, dst_port, bytes, fragments,
/// syn, ttl, tunnels).
type Want = (
    &'static str,
    &'static str,
    u8,
    u16,
    u16,
    u64,
    u64,
    u64,
    u8,
    u8,
);

fn check(name: &str, link: LinkType, frame: &[u8], want: Result<Want, Skip>) {
    let got = parse_frame(link, frame);
    match (got, want) {
        (Ok(d), Ok(w)) => {
            let r = &d.record;
            let got = (
                r.src,
                r.dst,
                r.protocol,
                r.src_port,
                r.dst_port,
                r.bytes,
                r.fragments,
                r.tcp_syn_packets,
                r.ttl,
                d.tunnels,
            );
            let want = (
                w.0.parse::<IpAddr>().unwrap(),
                w.1.parse::<IpAddr>().unwrap(),
                w.2,
                w.3,
                w.4,
                w.5,
                w.6,
                w.7,
                w.8,
                w.9,
            );
            assert_eq!(got, want, "{name}");
            assert_eq!((r.packets, r.duration_ms), (1, 0), "{name}");
        }
        (Err(g), Err(w)) => assert_eq!(g, w, "{name}"),
        (g, w) => panic!("{name}: got {g:?}, want {w:?}"),
    }
}

/// One table row: name, link type, frame, expected outcome.
type Row = (&'static str, LinkType, Vec<u8>, Result<Want, Skip>);
#[test]
fn parser_table() {
    let a = "10.200.0.1";
    let b = "10.200.0.2";
    let udp_payload = udp(5000, 53, &[0u8; 12]);
    let ip_udp = ip4(a, b, 17).build(&udp_payload);
    let ip_syn = ip4(b, a, 6).build(&tcp(40000, 80, 0x02));
    let ip_synack = ip4(a, b, 6).build(&tcp(80, 40000, 0x12));
    let ip_icmp = Ip4 {
        ttl: 9,
        ..ip4(a, b, 1)
    }
    .build(&icmp(8, 0));
    let v6a = "2001:db8::1";
    let v6b = "2001:db8::2";
    let ip6_tcp = ip6(v6a, v6b, 6, 33, &tcp(1234, 443, 0x02));
    let ip6_icmp = ip6(v6b, v6a, 58, 255, &icmp(135, 0));
    // Outer hosts of tunnels: 192.0.2.x / 2001:db8:ffff::x.
    let o1 = "192.0.2.1";
    let o2 = "192.0.2.2";

    let mut ext_chain = ext8(43);
    ext_chain.extend(ext8(60));
    ext_chain.extend(ext8(51));
    ext_chain.extend(ah(6));
    ext_chain.extend(tcp(1, 2, 0x10));

    let mut opts_ip = ip4(a, b, 17);
    opts_ip.options = vec![0x94, 0x04, 0, 0, 1, 1, 1, 0]; // router alert + NOPs + EOL
    let first_frag = Ip4 {
        frag: (true, 0),
        total_len: Some(1500),
        ..ip4(a, b, 17)
    }
    .build(&udp_payload);
    let later_frag = Ip4 {
        frag: (false, 185),
        total_len: Some(520),
        ..ip4(a, b, 17)
    }
    .build(&[0u8; 40]);

    let rows: Vec<Row> = vec![
        (
            "ipv4 udp",
            LinkType::Ethernet,
            eth(0x0800, &ip_udp),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 0)),
        ),
        (
            "ipv4 tcp syn",
            LinkType::Ethernet,
            eth(0x0800, &ip_syn),
            Ok((b, a, 6, 40000, 80, 40, 0, 1, 64, 0)),
        ),
        (
            "ipv4 tcp syn+ack is not syn",
            LinkType::Ethernet,
            eth(0x0800, &ip_synack),
            Ok((a, b, 6, 80, 40000, 40, 0, 0, 64, 0)),
        ),
        (
            "ipv4 icmp type/code",
            LinkType::Ethernet,
            eth(0x0800, &ip_icmp),
            Ok((a, b, 1, 8, 0, 28, 0, 0, 9, 0)),
        ),
        (
            "802.1Q",
            LinkType::Ethernet,
            tagged(&[(0x8100, 10)], 0x0800, &ip_udp),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 0)),
        ),
        (
            "QinQ 802.1ad",
            LinkType::Ethernet,
            tagged(&[(0x88a8, 100), (0x8100, 10)], 0x0800, &ip_udp),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 0)),
        ),
        (
            "QinQ 0x9100",
            LinkType::Ethernet,
            tagged(&[(0x9100, 100), (0x8100, 10)], 0x86dd, &ip6_tcp),
            Ok((v6a, v6b, 6, 1234, 443, 60, 0, 1, 33, 0)),
        ),
        (
            "four tags",
            LinkType::Ethernet,
            tagged(
                &[(0x88a8, 1), (0x8100, 2), (0x8100, 3), (0x8100, 4)],
                0x0800,
                &ip_udp,
            ),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 0)),
        ),
        (
            "five tags: not IP",
            LinkType::Ethernet,
            tagged(
                &[
                    (0x88a8, 1),
                    (0x8100, 2),
                    (0x8100, 3),
                    (0x8100, 4),
                    (0x8100, 5),
                ],
                0x0800,
                &ip_udp,
            ),
            Err(Skip::NotIp),
        ),
        (
            "MPLS one label",
            LinkType::Ethernet,
            eth(0x8847, &mpls(&[100], &ip_udp)),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 0)),
        ),
        (
            "MPLS three labels ipv6",
            LinkType::Ethernet,
            eth(0x8847, &mpls(&[100, 200, 300], &ip6_icmp)),
            Ok((v6b, v6a, 58, 135, 0, 48, 0, 0, 255, 0)),
        ),
        (
            "VLAN + MPLS",
            LinkType::Ethernet,
            tagged(&[(0x8100, 7)], 0x8847, &mpls(&[16, 17], &ip_syn)),
            Ok((b, a, 6, 40000, 80, 40, 0, 1, 64, 0)),
        ),
        (
            "MPLS seven labels: malformed",
            LinkType::Ethernet,
            eth(0x8847, &mpls(&[1, 2, 3, 4, 5, 6, 7], &ip_udp)),
            Err(Skip::Malformed),
        ),
        (
            "MPLS pseudowire control word + Ethernet",
            LinkType::Ethernet,
            eth(
                0x8847,
                &mpls(
                    &[100],
                    &[&[0u8, 0, 0, 0][..], &eth(0x0800, &ip_udp)].concat(),
                ),
            ),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 1)),
        ),
        (
            "IPv4 options",
            LinkType::Ethernet,
            eth(0x0800, &opts_ip.build(&udp_payload)),
            Ok((a, b, 17, 5000, 53, 48, 0, 0, 64, 0)),
        ),
        (
            "IPv4 first fragment has ports",
            LinkType::Ethernet,
            eth(0x0800, &first_frag),
            Ok((a, b, 17, 5000, 53, 1500, 1, 0, 64, 0)),
        ),
        (
            "IPv4 later fragment has none",
            LinkType::Ethernet,
            eth(0x0800, &later_frag),
            Ok((a, b, 17, 0, 0, 520, 1, 0, 64, 0)),
        ),
        (
            "IPv6 ext chain hbh/rt/dst/ah",
            LinkType::Ethernet,
            eth(0x86dd, &ip6(v6a, v6b, 0, 64, &ext_chain)),
            Ok((v6a, v6b, 6, 1, 2, 40 + ext_chain.len() as u64, 0, 0, 64, 0)),
        ),
        (
            "IPv6 first fragment",
            LinkType::Ethernet,
            eth(
                0x86dd,
                &ip6(
                    v6a,
                    v6b,
                    44,
                    64,
                    &[frag6(17, 0, true), udp_payload.clone()].concat(),
                ),
            ),
            Ok((v6a, v6b, 17, 5000, 53, 68, 1, 0, 64, 0)),
        ),
        (
            "IPv6 later fragment",
            LinkType::Ethernet,
            eth(
                0x86dd,
                &ip6(
                    v6a,
                    v6b,
                    44,
                    64,
                    &[frag6(17, 100, false), vec![0u8; 16]].concat(),
                ),
            ),
            Ok((v6a, v6b, 17, 0, 0, 64, 1, 0, 64, 0)),
        ),
        (
            "L2TP PPP ipv4",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 17).build(&udp(1701, 1701, &l2tp_data(&[0x00, 0x21], &ip_syn))),
            ),
            Ok((b, a, 6, 40000, 80, 40, 0, 1, 64, 1)),
        ),
        (
            "L2TP PPP ipv6 compressed protocol",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 17).build(&udp(40000, 1701, &l2tp_data(&[0x57], &ip6_tcp))),
            ),
            Ok((v6a, v6b, 6, 1234, 443, 60, 0, 1, 33, 1)),
        ),
        (
            "L2TP control: outer counted",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 17).build(&udp(
                    1701,
                    1701,
                    &[0xc8, 0x02, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0],
                )),
            ),
            Ok((o1, o2, 17, 1701, 1701, 40, 0, 0, 64, 0)),
        ),
        (
            "L2TP PPP LCP: outer counted",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 17).build(&udp(1701, 1701, &l2tp_data(&[0xc0, 0x21], &[1, 1, 0, 4]))),
            ),
            Ok((o1, o2, 17, 1701, 1701, 48, 0, 0, 64, 0)),
        ),
        (
            "GRE ipv4",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 47).build(&gre(0, 0x0800, &[], &ip_udp)),
            ),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 1)),
        ),
        (
            "GRE key+seq ipv6",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 47).build(&gre(0x3000, 0x86dd, &[0, 0, 0, 9, 0, 0, 0, 1], &ip6_tcp)),
            ),
            Ok((v6a, v6b, 6, 1234, 443, 60, 0, 1, 33, 1)),
        ),
        (
            "GRE over IPv6",
            LinkType::Ethernet,
            eth(
                0x86dd,
                &ip6(
                    "2001:db8:ffff::1",
                    "2001:db8:ffff::2",
                    47,
                    64,
                    &gre(0x8000, 0x0800, &[0, 0, 0, 0], &ip_udp),
                ),
            ),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 1)),
        ),
        (
            "GRE TEB",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 47).build(&gre(
                    0,
                    0x6558,
                    &[],
                    &tagged(&[(0x8100, 5)], 0x0800, &ip_icmp),
                )),
            ),
            Ok((a, b, 1, 8, 0, 28, 0, 0, 9, 1)),
        ),
        (
            "ERSPAN II",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 47).build(&gre(
                    0x1000,
                    0x88be,
                    &[0, 0, 0, 1],
                    &[erspan2(7), eth(0x0800, &ip_syn)].concat(),
                )),
            ),
            Ok((b, a, 6, 40000, 80, 40, 0, 1, 64, 1)),
        ),
        (
            "GRE keepalive (unknown proto): outer",
            LinkType::Ethernet,
            eth(0x0800, &ip4(o1, o2, 47).build(&gre(0, 0x0000, &[], &[]))),
            Ok((o1, o2, 47, 0, 0, 24, 0, 0, 64, 0)),
        ),
        (
            "IP-in-IP",
            LinkType::Ethernet,
            eth(0x0800, &ip4(o1, o2, 4).build(&ip_udp)),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 1)),
        ),
        (
            "IPv6-in-IPv4 (6in4)",
            LinkType::Ethernet,
            eth(0x0800, &ip4(o1, o2, 41).build(&ip6_tcp)),
            Ok((v6a, v6b, 6, 1234, 443, 60, 0, 1, 33, 1)),
        ),
        (
            "IPv4-in-IPv6",
            LinkType::Ethernet,
            eth(
                0x86dd,
                &ip6("2001:db8:ffff::1", "2001:db8:ffff::2", 4, 64, &ip_syn),
            ),
            Ok((b, a, 6, 40000, 80, 40, 0, 1, 64, 1)),
        ),
        (
            "IP-in-IP fragment: outer",
            LinkType::Ethernet,
            eth(
                0x0800,
                &Ip4 {
                    frag: (true, 0),
                    ..ip4(o1, o2, 4)
                }
                .build(&ip_udp),
            ),
            Ok((o1, o2, 4, 0, 0, 60, 1, 0, 64, 0)),
        ),
        (
            "nested: GRE in IP-in-IP",
            LinkType::Ethernet,
            eth(
                0x0800,
                &ip4(o1, o2, 4).build(&ip4(o2, o1, 47).build(&gre(0, 0x0800, &[], &ip_udp))),
            ),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 2)),
        ),
        (
            "raw ip",
            LinkType::RawIp,
            ip_udp.clone(),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 0)),
        ),
        (
            "linux sll",
            LinkType::LinuxSll,
            [
                &[0u8, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00][..],
                &ip_udp,
            ]
            .concat(),
            Ok((a, b, 17, 5000, 53, 40, 0, 0, 64, 0)),
        ),
        (
            "bsd loopback",
            LinkType::Loopback,
            [&[2u8, 0, 0, 0][..], &ip6_tcp].concat(),
            Ok((v6a, v6b, 6, 1234, 443, 60, 0, 1, 33, 0)),
        ),
        (
            "ARP: not IP",
            LinkType::Ethernet,
            eth(0x0806, &[0u8; 28]),
            Err(Skip::NotIp),
        ),
        ("empty", LinkType::Ethernet, vec![], Err(Skip::Malformed)),
        (
            "short ethernet",
            LinkType::Ethernet,
            vec![1, 2, 3],
            Err(Skip::Malformed),
        ),
        (
            "truncated ipv4",
            LinkType::Ethernet,
            eth(0x0800, &ip_udp[..15]),
            Err(Skip::Malformed),
        ),
        (
            "truncated tcp",
            LinkType::Ethernet,
            eth(0x0800, &ip_syn[..30]),
            Err(Skip::Malformed),
        ),
        (
            "truncated ipv6 ext",
            LinkType::Ethernet,
            eth(0x86dd, &ip6(v6a, v6b, 0, 64, &[])),
            Err(Skip::Malformed),
        ),
        (
            "ipv4 total length < ihl",
            LinkType::Ethernet,
            eth(
                0x0800,
                &Ip4 {
                    total_len: Some(10),
                    ..ip4(a, b, 17)
                }
                .build(&udp_payload),
            ),
            Err(Skip::Malformed),
        ),
        (
            "wrong IP version",
            LinkType::Ethernet,
            eth(0x0800, &[0x65; 40]),
            Err(Skip::Malformed),
        ),
        (
            "vlan truncated",
            LinkType::Ethernet,
            eth(0x8100, &[0, 1]),
            Err(Skip::Malformed),
        ),
        (
            "raw garbage",
            LinkType::RawIp,
            vec![0xff; 64],
            Err(Skip::NotIp),
        ),
        (
            "inner truncated: outer counted",
            LinkType::Ethernet,
            eth(0x0800, &ip4(o1, o2, 4).build(&ip_udp[..22])),
            Ok((o1, o2, 4, 0, 0, 42, 0, 0, 64, 0)),
        ),
    ];
    for (name, link, frame, want) in rows {
        check(name, link, &frame, want);
    }
}

#[test]
fn outer_counted_is_flagged() {
    let inner_cut = ip4("10.0.0.1", "10.0.0.2", 17).build(&udp(1, 2, &[]));
    let f = eth(
        0x0800,
        &ip4("192.0.2.1", "192.0.2.2", 4).build(&inner_cut[..10]),
    );
    let d = parse_frame(LinkType::Ethernet, &f).unwrap();
    assert!(d.outer_counted);
    assert_eq!(d.tunnels, 0);
}

#[test]
fn random_garbage_never_panics() {
    // A deterministic xorshift stream of frames of every length up to 300, with plausible
    // ethertypes planted, through every link type.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let types = [0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x8847];
    for round in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len > 14 {
            f[12..14].copy_from_slice(&types[round % types.len()].to_be_bytes());
        }
        if len > 15 && round % 2 == 0 {
            f[14] = 0x45;
        }
        for link in [
            LinkType::Ethernet,
            LinkType::RawIp,
            LinkType::LinuxSll,
            LinkType::LinuxSll2,
            LinkType::Loopback,
        ] {
            let _ = parse_frame(link, &f);
        }
    }
}

// ---- replay of scapy-generated capture files ------------------------------------------

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FNM_PYTHON") {
        return p.into();
    }
    // Debian's python3-scapy lives in the system interpreter's path.
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import scapy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return p.into();
        }
    }
    panic!(
        "scapy is missing: install the Debian package python3-scapy (apt-get install python3-scapy), \
         or point FNM_PYTHON at a python3 with scapy"
    );
}

fn gen_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gen_pcaps.py")
}

/// Per-host (packets, bytes), each record counted for its source and its destination.
fn per_host(path: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut reader = PcapReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hosts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut sink = |_ts: Duration, r: TrafficRecord| {
        for ip in [r.src, r.dst] {
            let e = hosts.entry(ip.to_string()).or_default();
            e.0 += r.packets;
            e.1 += r.bytes;
        }
    };
    let stats =
        replay(&mut reader, &mut sink).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(stats.malformed, 0, "{}: {stats:?}", path.display());
    hosts
}

#[test]
fn replay_scapy_pcaps_counts_inner_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .arg(gen_script())
        .arg(dir.path())
        .output()
        .expect("run tests/gen_pcaps.py");
    assert!(
        out.status.success(),
        "gen_pcaps.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("expected.json"))
            .expect("expected.json written by the script"),
    )
    .unwrap();
    let files = expected.as_object().unwrap();
    assert!(
        files.len() >= 6,
        "the script must write at least six captures"
    );
    for (file, hosts) in files {
        let got = per_host(&dir.path().join(file));
        let want: BTreeMap<String, (u64, u64)> = hosts
            .as_object()
            .unwrap()
            .iter()
            .map(|(ip, v)| {
                (
                    ip.parse::<IpAddr>().unwrap().to_string(),
                    (v[0].as_u64().unwrap(), v[1].as_u64().unwrap()),
                )
            })
            .collect();
        assert_eq!(got, want, "{file}");
    }
}
