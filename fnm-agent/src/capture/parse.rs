//! Userspace frame parser: the bytes of one captured frame to one [`TrafficRecord`].
//!
//! It mirrors the XDP parser (`fnm-ebpf/src/parse.rs`) so that userspace capture and XDP
//! account identically:
//!
//! * Ethernet, 802.1Q / 802.1ad / 0x9100 tags, an MPLS label stack (at most 6 labels, the
//!   bottom-of-stack bit must be reached, then the first nibble selects IPv4 or IPv6);
//! * IPv4: bytes are the total length, options are skipped by the IHL, a fragment is any packet
//!   with MF set or a non-zero offset, and only offset-0 fragments carry ports and flags;
//! * IPv6: bytes are payload length + 40; hop-by-hop, routing, fragment, destination options and
//!   AH headers are skipped (at most 6); a later fragment (offset > 0) carries no ports;
//! * TCP (ports, flags; SYN without ACK sets `tcp_syn_packets`), UDP (ports), ICMP and ICMPv6
//!   (type in `src_port`, code in `dst_port`); a truncated TCP/UDP/ICMP header is malformed.
//!
//! What userspace does beyond XDP, because mirror ports carry everything:
//!
//! * **Tunnel decapsulation**, so the inner hosts are counted, with the inner IP header's
//!   length, TTL, protocol and ports: L2TPv2 data messages over UDP port 1701 carrying PPP with
//!   IPv4/IPv6, GRE (IPv4, IPv6, MPLS, transparent Ethernet bridging, ERSPAN types I, II and
//!   III, and PPTP's enhanced GRE carrying PPP), IP-in-IP (protocol 4) and IPv6-in-IP
//!   (protocol 41), nested up to [`MAX_TUNNEL_DEPTH`] deep. The XDP program counts the outer
//!   packet of all of these. Fragmented outer packets are not decapsulated (the inner packet
//!   spans several frames), and a tunnel whose payload is not a readable IP packet (an L2TP
//!   control message, PPP LCP, GRE keepalive, an inner header cut by the snap length) is
//!   counted as the outer packet and flagged in [`Decoded::outer_counted`].
//! * Up to [`MAX_VLAN_TAGS`] stacked VLAN tags (XDP: 2).
//! * Ethernet over MPLS with a pseudowire control word (first nibble 0 after the stack).
//! * Raw IP, Linux cooked (SLL and SLL2) and BSD loopback (NULL/LOOP) link types.
//! * No 512-byte limit on the L4 offset (that limit exists only for the eBPF verifier).

use crate::traffic::TrafficRecord;
use etherparse::{EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6HeaderSlice};
use std::net::IpAddr;

/// Most VLAN tags skipped (XDP skips 2).
pub const MAX_VLAN_TAGS: usize = 4;
/// Most MPLS labels skipped (same as XDP).
pub const MAX_MPLS_LABELS: usize = 6;
/// Most IPv6 extension headers skipped (same as XDP).
pub const MAX_IPV6_EXT: usize = 6;
/// Most tunnel layers removed; a packet nested deeper is counted at this depth.
pub const MAX_TUNNEL_DEPTH: u8 = 3;

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_QINQ_OLD: u16 = 0x9100;
const ETH_P_MPLS_UC: u16 = 0x8847;
const ETH_P_MPLS_MC: u16 = 0x8848;
const ETH_P_TEB: u16 = 0x6558;
const ETH_P_ERSPAN_1_2: u16 = 0x88BE;
const ETH_P_ERSPAN_3: u16 = 0x22EB;
const ETH_P_PPP: u16 = 0x880B;
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
const L2TP_PORT: u16 = 1701;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const PROTO_IPIP: u8 = 4;
const PROTO_IPV6_IN_IP: u8 = 41;
const PROTO_GRE: u8 = 47;

/// Link-layer framing of captured bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// Ethernet II (LINKTYPE_ETHERNET, 1).
    Ethernet,
    /// Bare IPv4 or IPv6 (LINKTYPE_RAW 101, DLT_RAW 12/14, LINKTYPE_IPV4 228, LINKTYPE_IPV6 229).
    RawIp,
    /// Linux cooked capture v1, 16-byte header (LINKTYPE_LINUX_SLL, 113).
    LinuxSll,
    /// Linux cooked capture v2, 20-byte header (LINKTYPE_LINUX_SLL2, 276).
    LinuxSll2,
    /// BSD loopback: 4-byte address family, then IP (LINKTYPE_NULL 0, LINKTYPE_LOOP 108).
    Loopback,
}

impl LinkType {
    /// Maps a pcap LINKTYPE_* (file) or DLT_* (live libpcap) value; `None` when unsupported.
    pub fn from_pcap(value: u32) -> Option<Self> {
        match value {
            1 => Some(LinkType::Ethernet),
            12 | 14 | 101 | 228 | 229 => Some(LinkType::RawIp),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            0 | 108 => Some(LinkType::Loopback),
            _ => None,
        }
    }
}

/// Why a frame produced no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Not IPv4 or IPv6 (ARP, LLDP, STP, ...).
    NotIp,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// One parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The record for the accounting (the innermost IP packet that could be read).
    pub record: TrafficRecord,
    /// Tunnel layers removed to reach `record` (0 for a plain packet).
    pub tunnels: u8,
    /// A tunnel was found but its payload was not a readable IP packet, so the packet outside
    /// it was counted.
    pub outer_counted: bool,
}

/// Parses one frame of the given link type.
pub fn parse_frame(link: LinkType, frame: &[u8]) -> Result<Decoded, Skip> {
    match link {
        LinkType::Ethernet => ethernet(frame, 0),
        LinkType::RawIp => raw_ip(frame, 0),
        LinkType::LinuxSll => {
            let protocol = be16(bytes::<2>(frame, 14)?);
            ether_payload(protocol, frame.get(16..).unwrap_or_default(), 0)
        }
        LinkType::LinuxSll2 => {
            let protocol = be16(bytes::<2>(frame, 0)?);
            if frame.len() < 20 {
                return Err(Skip::Malformed);
            }
            ether_payload(protocol, &frame[20..], 0)
        }
        LinkType::Loopback => {
            if frame.len() < 4 {
                return Err(Skip::Malformed);
            }
            raw_ip(&frame[4..], 0)
        }
    }
}

#[inline]
fn bytes<const N: usize>(data: &[u8], offset: usize) -> Result<[u8; N], Skip> {
    data.get(offset..offset.checked_add(N).ok_or(Skip::Malformed)?)
        .and_then(|s| s.try_into().ok())
        .ok_or(Skip::Malformed)
}

#[inline]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

fn raw_ip(data: &[u8], depth: u8) -> Result<Decoded, Skip> {
    match bytes::<1>(data, 0)?[0] >> 4 {
        4 => ipv4(data, depth),
        6 => ipv6(data, depth),
        _ => Err(Skip::NotIp),
    }
}

fn ethernet(frame: &[u8], depth: u8) -> Result<Decoded, Skip> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Skip::Malformed)?;
    ether_payload(eth.ether_type().0, &frame[eth.slice().len()..], depth)
}

fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_OLD)
}

fn ether_payload(mut ethertype: u16, mut data: &[u8], depth: u8) -> Result<Decoded, Skip> {
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        ethertype = be16(bytes::<2>(data, 2)?);
        data = &data[4..];
    }
    match ethertype {
        ETH_P_MPLS_UC | ETH_P_MPLS_MC => mpls(data, depth),
        t if t == EtherType::IPV4.0 => ipv4(data, depth),
        t if t == EtherType::IPV6.0 => ipv6(data, depth),
        _ => Err(Skip::NotIp),
    }
}

fn mpls(data: &[u8], depth: u8) -> Result<Decoded, Skip> {
    let mut off = 0;
    let mut bottom = false;
    for _ in 0..MAX_MPLS_LABELS {
        let label = bytes::<4>(data, off)?;
        off += 4;
        if label[2] & 0x01 != 0 {
            bottom = true;
            break;
        }
    }
    if !bottom {
        return Err(Skip::Malformed);
    }
    let payload = &data[off..];
    match bytes::<1>(payload, 0)?[0] >> 4 {
        4 => ipv4(payload, depth),
        6 => ipv6(payload, depth),
        // Pseudowire control word, then an Ethernet frame (not decoded by XDP).
        0 if depth < MAX_TUNNEL_DEPTH && payload.len() >= 4 => {
            let mut inner = ethernet(&payload[4..], depth + 1)?;
            inner.tunnels += 1;
            Ok(inner)
        }
        _ => Err(Skip::NotIp),
    }
}

fn ipv4(data: &[u8], depth: u8) -> Result<Decoded, Skip> {
    let h = Ipv4HeaderSlice::from_slice(data).map_err(|_| Skip::Malformed)?;
    let ihl = h.slice().len();
    let total_len = h.total_len();
    if usize::from(total_len) < ihl {
        return Err(Skip::Malformed);
    }
    let frag_offset = h.fragments_offset().value();
    let fragment = h.more_fragments() || frag_offset != 0;
    let mut record = TrafficRecord {
        ttl: h.ttl(),
        fragments: u64::from(fragment),
        ..TrafficRecord::packet(
            IpAddr::from(h.source()),
            IpAddr::from(h.destination()),
            h.protocol().0,
            u64::from(total_len),
        )
    };
    if frag_offset != 0 {
        return Ok(plain(record));
    }
    let l4 = &data[ihl..];
    parse_l4(&mut record, l4)?;
    Ok(decapsulate_or_outer(record, l4, fragment, depth))
}

fn ipv6(data: &[u8], depth: u8) -> Result<Decoded, Skip> {
    let h = Ipv6HeaderSlice::from_slice(data).map_err(|_| Skip::Malformed)?;
    let mut record = TrafficRecord {
        ttl: h.hop_limit(),
        ..TrafficRecord::packet(
            IpAddr::from(h.source()),
            IpAddr::from(h.destination()),
            h.next_header().0,
            u64::from(h.payload_length()) + 40,
        )
    };
    let mut off = 40usize;
    let mut fragment = false;
    let mut later_fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        match record.protocol {
            // Hop-by-hop, routing, destination options: length in 8-octet units, minus one.
            0 | 43 | 60 => {
                let ext = bytes::<2>(data, off)?;
                record.protocol = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                let ext = bytes::<4>(data, off)?;
                record.protocol = ext[0];
                fragment = true;
                later_fragment = be16([ext[2], ext[3]]) >> 3 != 0;
                off += 8;
            }
            // Authentication header: length in 4-octet units, minus two.
            51 => {
                let ext = bytes::<2>(data, off)?;
                record.protocol = ext[0];
                off += (usize::from(ext[1]) + 2) * 4;
            }
            _ => break,
        }
    }
    record.fragments = u64::from(fragment);
    if later_fragment {
        return Ok(plain(record));
    }
    let l4 = data.get(off..).unwrap_or_default();
    parse_l4(&mut record, l4)?;
    Ok(decapsulate_or_outer(record, l4, fragment, depth))
}

fn plain(record: TrafficRecord) -> Decoded {
    Decoded {
        record,
        tunnels: 0,
        outer_counted: false,
    }
}

/// Reads ports, ICMP type/code and TCP flags; a truncated header is malformed (as in XDP).
fn parse_l4(record: &mut TrafficRecord, l4: &[u8]) -> Result<(), Skip> {
    match record.protocol {
        PROTO_TCP => {
            let t = bytes::<14>(l4, 0)?;
            record.src_port = be16([t[0], t[1]]);
            record.dst_port = be16([t[2], t[3]]);
            record.tcp_flags = t[13];
            record.tcp_syn_packets = u64::from(t[13] & 0x12 == 0x02);
        }
        PROTO_UDP => {
            let u = bytes::<4>(l4, 0)?;
            record.src_port = be16([u[0], u[1]]);
            record.dst_port = be16([u[2], u[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let i = bytes::<2>(l4, 0)?;
            record.src_port = u16::from(i[0]);
            record.dst_port = u16::from(i[1]);
        }
        _ => {}
    }
    Ok(())
}

/// When `outer` carries a tunnel, returns the inner packet; otherwise (or when the tunnel
/// payload cannot be read) the outer one.
fn decapsulate_or_outer(outer: TrafficRecord, l4: &[u8], fragment: bool, depth: u8) -> Decoded {
    if fragment || depth >= MAX_TUNNEL_DEPTH {
        return plain(outer);
    }
    let inner = match outer.protocol {
        PROTO_IPIP => ipv4(l4, depth + 1),
        PROTO_IPV6_IN_IP => ipv6(l4, depth + 1),
        PROTO_GRE => gre(l4, depth + 1),
        PROTO_UDP if outer.src_port == L2TP_PORT || outer.dst_port == L2TP_PORT => {
            l2tp(l4.get(8..).unwrap_or_default(), depth + 1)
        }
        _ => return plain(outer),
    };
    match inner {
        Ok(mut d) => {
            d.tunnels += 1;
            d
        }
        Err(_) => Decoded {
            record: outer,
            tunnels: 0,
            outer_counted: true,
        },
    }
}

/// GRE (RFC 2784/2890) and PPTP's enhanced GRE (RFC 2637).
fn gre(data: &[u8], depth: u8) -> Result<Decoded, Skip> {
    let h = bytes::<4>(data, 0)?;
    let flags = be16([h[0], h[1]]);
    let protocol = be16([h[2], h[3]]);
    let checksum = flags & 0x8000 != 0;
    let routing = flags & 0x4000 != 0;
    let key = flags & 0x2000 != 0;
    let sequence = flags & 0x1000 != 0;
    let mut off = 4;
    match flags & 0x7 {
        0 => {
            if routing {
                // RFC 1701 source routing: obsolete, not decoded.
                return Err(Skip::NotIp);
            }
            off += 4 * (usize::from(checksum) + usize::from(key) + usize::from(sequence));
        }
        1 => {
            // Enhanced GRE: key (payload length + call id) always, optional seq and ack.
            let ack = flags & 0x0080 != 0;
            if protocol != ETH_P_PPP {
                return Err(Skip::NotIp);
            }
            off += 4 + 4 * (usize::from(sequence) + usize::from(ack));
            return ppp(data.get(off..).ok_or(Skip::Malformed)?, depth);
        }
        _ => return Err(Skip::NotIp),
    }
    let payload = data.get(off..).ok_or(Skip::Malformed)?;
    match protocol {
        p if p == EtherType::IPV4.0 => ipv4(payload, depth),
        p if p == EtherType::IPV6.0 => ipv6(payload, depth),
        ETH_P_MPLS_UC | ETH_P_MPLS_MC => mpls(payload, depth),
        ETH_P_TEB => ethernet(payload, depth),
        // ERSPAN type II has the sequence bit and an 8-byte header; type I has neither.
        ETH_P_ERSPAN_1_2 if sequence => {
            let e = bytes::<1>(payload, 0)?;
            // Version 1 on the wire; some generators (scapy) leave it 0.
            if e[0] >> 4 > 1 {
                return Err(Skip::NotIp);
            }
            ethernet(&payload[8.min(payload.len())..], depth)
        }
        ETH_P_ERSPAN_1_2 => ethernet(payload, depth),
        ETH_P_ERSPAN_3 => {
            let e = bytes::<12>(payload, 0)?;
            if e[0] >> 4 != 2 || (e[10] >> 2) & 0x1f != 0 {
                // Not version 2 (type III) or not an Ethernet frame.
                return Err(Skip::NotIp);
            }
            let platform_subheader = if e[11] & 0x01 != 0 { 8 } else { 0 };
            ethernet(
                payload
                    .get(12 + platform_subheader..)
                    .ok_or(Skip::Malformed)?,
                depth,
            )
        }
        _ => Err(Skip::NotIp),
    }
}

/// An L2TPv2 message (RFC 2661) after its UDP header: data messages carry PPP.
fn l2tp(data: &[u8], depth: u8) -> Result<Decoded, Skip> {
    let flags = be16(bytes::<2>(data, 0)?);
    if flags & 0x8000 != 0 || flags & 0x000f != 2 {
        // Control message, or not version 2.
        return Err(Skip::NotIp);
    }
    let mut off = 2;
    if flags & 0x4000 != 0 {
        off += 2; // length
    }
    off += 4; // tunnel id, session id
    if flags & 0x0800 != 0 {
        off += 4; // Ns, Nr
    }
    if flags & 0x0200 != 0 {
        let pad = usize::from(be16(bytes::<2>(data, off)?));
        off += 2 + pad;
    }
    ppp(data.get(off..).ok_or(Skip::Malformed)?, depth)
}

/// A PPP frame: optional address/control (0xFF 0x03), then a 1- or 2-byte protocol.
fn ppp(data: &[u8], depth: u8) -> Result<Decoded, Skip> {
    let mut off = 0;
    if data.starts_with(&[0xff, 0x03]) {
        off = 2;
    }
    let first = bytes::<1>(data, off)?[0];
    let protocol = if first & 0x01 != 0 {
        off += 1;
        u16::from(first)
    } else {
        let p = be16(bytes::<2>(data, off)?);
        off += 2;
        p
    };
    let payload = &data[off..];
    match protocol {
        PPP_IPV4 => ipv4(payload, depth),
        PPP_IPV6 => ipv6(payload, depth),
        _ => Err(Skip::NotIp),
    }
}

/// Frame counters of one capture, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Frames seen.
    pub frames: u64,
    /// Frames that produced a record.
    pub records: u64,
    /// Frames that were not IP.
    pub not_ip: u64,
    /// Frames with truncated or inconsistent headers.
    pub malformed: u64,
    /// Frames of a link type the parser does not read.
    pub unsupported_link: u64,
    /// Records taken from inside a tunnel.
    pub decapsulated: u64,
    /// Tunnels whose payload was not a readable IP packet (the outer packet was counted).
    pub outer_counted: u64,
}

impl ParseStats {
    /// Counts the outcome of one [`parse_frame`].
    pub fn count(&mut self, outcome: &Result<Decoded, Skip>) {
        self.frames += 1;
        match outcome {
            Ok(d) => {
                self.records += 1;
                self.decapsulated += u64::from(d.tunnels > 0);
                self.outer_counted += u64::from(d.outer_counted);
            }
            Err(Skip::NotIp) => self.not_ip += 1,
            Err(Skip::Malformed) => self.malformed += 1,
        }
    }

    /// Adds another set of counters to this one.
    pub fn add(&mut self, other: &ParseStats) {
        self.frames += other.frames;
        self.records += other.records;
        self.not_ip += other.not_ip;
        self.malformed += other.malformed;
        self.unsupported_link += other.unsupported_link;
        self.decapsulated += other.decapsulated;
        self.outer_counted += other.outer_counted;
    }
}
