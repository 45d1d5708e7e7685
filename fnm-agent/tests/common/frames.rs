//! Hand-built frames for BPF_PROG_TEST_RUN and parser tests.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

/// Ethernet header + payload.
pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One VLAN tag (TPID `tpid`, VLAN id `vid`) in front of `inner_type` + payload.
pub fn vlan(tpid: u16, vid: u16, inner_type: u16, payload: &[u8]) -> (u16, Vec<u8>) {
    let mut p = vid.to_be_bytes().to_vec();
    p.extend_from_slice(&inner_type.to_be_bytes());
    p.extend_from_slice(payload);
    (tpid, p)
}

/// MPLS label stack of `labels` in front of payload.
pub fn mpls(labels: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let bottom = u32::from(i + 1 == labels.len());
        let word = (l << 12) | (bottom << 8) | 64;
        p.extend_from_slice(&word.to_be_bytes());
    }
    p.extend_from_slice(payload);
    p
}

/// IPv4 header (with `options`, padded to 4 bytes) + payload. `frag` is the raw flags/offset word.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 5 + opts.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut h = vec![(4 << 4) | ihl as u8, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&opts);
    h.extend_from_slice(payload);
    h
}

/// IPv6 header + payload (`next` is the first next-header value).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An 8-byte IPv6 options extension header (hop-by-hop or destination options).
pub fn ipv6_opts(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
    h.extend_from_slice(payload);
    h
}

/// An IPv6 fragment header with `offset` (in 8-byte units) and the M flag.
pub fn ipv6_frag(next: u8, offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let word = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&word.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1]);
    h.extend_from_slice(payload);
    h
}

/// UDP header + `len` zero bytes of payload.
pub fn udp(sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + len) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(std::iter::repeat_n(0u8, len));
    h
}

/// TCP header (20 bytes) with `flags`.
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

/// ICMP echo request header + `len` bytes.
pub fn icmp_echo(len: usize) -> Vec<u8> {
    let mut h = vec![8, 0, 0, 0, 0, 1, 0, 1];
    h.extend(std::iter::repeat_n(0xabu8, len));
    h
}

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86DD;
pub const ETH_8021Q: u16 = 0x8100;
pub const ETH_8021AD: u16 = 0x88A8;
pub const ETH_MPLS: u16 = 0x8847;

/// The Internet checksum (RFC 1071) of `data`; an odd last byte is padded with zero.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// UDP header + `payload`.
pub fn udp_with(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// A GRE header: flags and version word, protocol, the optional fields in `extra`, payload.
pub fn gre(flags: u16, protocol: u16, extra: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut g = flags.to_be_bytes().to_vec();
    g.extend_from_slice(&protocol.to_be_bytes());
    g.extend_from_slice(extra);
    g.extend_from_slice(payload);
    g
}

/// An ERSPAN type II header (8 bytes) with `version` (1 on the wire), then `frame`.
pub fn erspan2(version: u8, frame: &[u8]) -> Vec<u8> {
    let mut e = vec![version << 4, 100, 0x00, 0x07, 0, 0, 0, 5];
    e.extend_from_slice(frame);
    e
}

/// An ERSPAN type III header (12 bytes, version 2) with frame type `frame_type` (0 =
/// Ethernet) and, with `platform`, the 8-byte platform subheader; then `frame`.
pub fn erspan3(frame_type: u8, platform: bool, frame: &[u8]) -> Vec<u8> {
    let mut e = vec![0x20, 100, 0x00, 0x09, 0, 0, 1, 0, 0, 0];
    e.push((frame_type & 0x1f) << 2);
    e.push(u8::from(platform));
    if platform {
        e.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 0, 1]);
    }
    e.extend_from_slice(frame);
    e
}

/// An L2TPv2 header with `flags` (version bits included): the length (L), tunnel and
/// session ids, Ns/Nr (S) and the offset size and `pad` bytes (O) as the flags say; then
/// `payload`.
pub fn l2tp(flags: u16, pad: usize, payload: &[u8]) -> Vec<u8> {
    let mut l = flags.to_be_bytes().to_vec();
    if flags & 0x4000 != 0 {
        l.extend_from_slice(&((6 + payload.len()) as u16).to_be_bytes());
    }
    l.extend_from_slice(&[0, 1, 0, 2]);
    if flags & 0x0800 != 0 {
        l.extend_from_slice(&[0, 3, 0, 4]);
    }
    if flags & 0x0200 != 0 {
        l.extend_from_slice(&(pad as u16).to_be_bytes());
        l.extend(std::iter::repeat_n(0u8, pad));
    }
    l.extend_from_slice(payload);
    l
}

/// A PPP frame: address and control (0xFF 0x03) when `address_control`, the protocol bytes
/// as given (1 byte when compressed), then `payload`.
pub fn ppp(address_control: bool, protocol: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    if address_control {
        p.extend_from_slice(&[0xff, 0x03]);
    }
    p.extend_from_slice(protocol);
    p.extend_from_slice(payload);
    p
}

/// An MPLS pseudowire payload: a zero control word, then an Ethernet frame.
pub fn pseudowire(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(frame);
    p
}

pub const ETH_TEB: u16 = 0x6558;
pub const ETH_ERSPAN_1_2: u16 = 0x88BE;
pub const ETH_ERSPAN_3: u16 = 0x22EB;
pub const ETH_PPP: u16 = 0x880B;
