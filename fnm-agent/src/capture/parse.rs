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

/// Parses one frame of the given link type: the common cases by [`parse_common`], everything
/// else (and every error) by [`parse_frame_full`]; the outcome is always that of
/// [`parse_frame_full`].
#[inline]
pub fn parse_frame(link: LinkType, frame: &[u8]) -> Result<Decoded, Skip> {
    match parse_common(link, frame) {
        Some(record) => Ok(plain(record)),
        None => parse_frame_full(link, frame),
    }
}

/// The fast path for the frames mirror ports mostly carry: Ethernet (or raw IP) with at most
/// two VLAN tags, then IPv4 without options and not a fragment, or IPv6 without extension
/// headers, then any payload that is not a tunnel [`parse_frame_full`] would decapsulate
/// (IP-in-IP, IPv6-in-IP, GRE, L2TP on UDP port 1701). Returns exactly the record
/// [`parse_frame_full`] returns for such a frame, and `None` for every other frame
/// (including every frame the full parser would skip), which then takes the full path.
#[inline]
pub fn parse_common(link: LinkType, frame: &[u8]) -> Option<TrafficRecord> {
    parse_common_packet(link, frame).map(Common::into_record)
}

/// A frame the fast path read: plain IPv4 in its compact form, or an IPv6 record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Common {
    /// IPv4 without options, not a fragment, not a tunnel.
    Ipv4(Ipv4Packet),
    /// IPv6 without extension headers, not a tunnel.
    Ipv6(TrafficRecord),
}

impl Common {
    /// The record [`parse_frame_full`] gives for the frame.
    #[inline]
    pub fn into_record(self) -> TrafficRecord {
        match self {
            Common::Ipv4(p) => p.to_record(),
            Common::Ipv6(r) => r,
        }
    }
}

/// An unfragmented, untunnelled IPv4 packet without options, as the fast path reads it: what
/// its [`TrafficRecord`] holds, in 20 bytes instead of 88 (one packet, no fragment, no
/// duration), so that a capture sink can coalesce packets without building records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet {
    /// Source address, host order.
    pub src: u32,
    /// Destination address, host order.
    pub dst: u32,
    /// Source port (ICMP: type; 0 when the protocol has none).
    pub src_port: u16,
    /// Destination port (ICMP: code; 0 when the protocol has none).
    pub dst_port: u16,
    /// IPv4 total length: the packet's IP bytes.
    pub ip_len: u16,
    /// IP protocol.
    pub protocol: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Time to live.
    pub ttl: u8,
}

impl Ipv4Packet {
    /// True for a TCP SYN without ACK.
    #[inline]
    pub fn is_tcp_syn(&self) -> bool {
        crate::traffic::is_tcp_syn(self.protocol, self.tcp_flags)
    }

    /// The packet's record, exactly as [`parse_frame_full`] builds it.
    #[inline]
    pub fn to_record(&self) -> TrafficRecord {
        common_record(
            IpAddr::from(std::net::Ipv4Addr::from(self.src)),
            IpAddr::from(std::net::Ipv4Addr::from(self.dst)),
            self.protocol,
            (self.src_port, self.dst_port, self.tcp_flags),
            u64::from(self.ip_len),
            self.ttl,
        )
    }
}

/// [`parse_common`] without building the record of an IPv4 packet.
#[inline(always)]
pub fn parse_common_packet(link: LinkType, frame: &[u8]) -> Option<Common> {
    match link {
        LinkType::Ethernet => {
            let mut ethertype = be16(frame.get(12..14)?.try_into().ok()?);
            let mut off = 14;
            for _ in 0..2 {
                if !is_vlan(ethertype) {
                    break;
                }
                ethertype = be16(frame.get(off + 2..off + 4)?.try_into().ok()?);
                off += 4;
            }
            match ethertype {
                0x0800 => common_ipv4(&frame[off..]).map(Common::Ipv4),
                0x86DD => common_ipv6(&frame[off..]).map(Common::Ipv6),
                _ => None,
            }
        }
        LinkType::RawIp => match frame.first()? >> 4 {
            4 => common_ipv4(frame).map(Common::Ipv4),
            6 => common_ipv6(frame).map(Common::Ipv6),
            _ => None,
        },
        _ => None,
    }
}

/// IPv4 with IHL 5, not a fragment (MF clear, offset 0).
#[inline(always)]
fn common_ipv4(data: &[u8]) -> Option<Ipv4Packet> {
    let h: &[u8; 20] = data.get(..20)?.try_into().ok()?;
    let total_len = be16([h[2], h[3]]);
    if h[0] != 0x45 || total_len < 20 || h[6] & 0x3f != 0 || h[7] != 0 {
        return None;
    }
    let protocol = h[9];
    let (src_port, dst_port, tcp_flags) = common_l4(protocol, &data[20..])?;
    Some(Ipv4Packet {
        src: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        dst: u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
        src_port,
        dst_port,
        ip_len: total_len,
        protocol,
        tcp_flags,
        ttl: h[8],
    })
}

/// IPv6 whose next header is not an extension header the full parser skips.
#[inline]
fn common_ipv6(data: &[u8]) -> Option<TrafficRecord> {
    let h: &[u8; 40] = data.get(..40)?.try_into().ok()?;
    let protocol = h[6];
    if h[0] >> 4 != 6 || matches!(protocol, 0 | 43 | 44 | 51 | 60) {
        return None;
    }
    let ports = common_l4(protocol, &data[40..])?;
    let src: [u8; 16] = h[8..24].try_into().ok()?;
    let dst: [u8; 16] = h[24..40].try_into().ok()?;
    Some(common_record(
        IpAddr::from(src),
        IpAddr::from(dst),
        protocol,
        ports,
        u64::from(be16([h[4], h[5]])) + 40,
        h[7],
    ))
}

/// The record of an unfragmented, untunnelled packet, built in one go (no partial writes).
#[inline(always)]
fn common_record(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    (src_port, dst_port, tcp_flags): (u16, u16, u8),
    bytes: u64,
    ttl: u8,
) -> TrafficRecord {
    TrafficRecord {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        packets: 1,
        bytes,
        fragments: 0,
        tcp_syn_packets: u64::from(crate::traffic::is_tcp_syn(protocol, tcp_flags)),
        ttl,
        duration_ms: 0,
    }
}

/// What [`parse_l4`] reads for an unfragmented packet at depth 0 (source port, destination
/// port, TCP flags), or `None` when the header is truncated or the packet is a tunnel the
/// full path decapsulates.
#[inline(always)]
fn common_l4(protocol: u8, l4: &[u8]) -> Option<(u16, u16, u8)> {
    match protocol {
        PROTO_TCP => {
            let t: &[u8; 14] = l4.get(..14)?.try_into().ok()?;
            Some((be16([t[0], t[1]]), be16([t[2], t[3]]), t[13]))
        }
        PROTO_UDP => {
            let u: &[u8; 4] = l4.get(..4)?.try_into().ok()?;
            let (src, dst) = (be16([u[0], u[1]]), be16([u[2], u[3]]));
            (src != L2TP_PORT && dst != L2TP_PORT).then_some((src, dst, 0))
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let i: &[u8; 2] = l4.get(..2)?.try_into().ok()?;
            Some((u16::from(i[0]), u16::from(i[1]), 0))
        }
        PROTO_IPIP | PROTO_IPV6_IN_IP | PROTO_GRE => None,
        _ => Some((0, 0, 0)),
    }
}

/// Parses one frame of the given link type with the general parser (every layer the module
/// documentation lists); [`parse_frame`] gives the same outcome, faster for common frames.
pub fn parse_frame_full(link: LinkType, frame: &[u8]) -> Result<Decoded, Skip> {
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
#[inline]
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINKS: [LinkType; 5] = [
        LinkType::Ethernet,
        LinkType::RawIp,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::Loopback,
    ];

    /// The property the fast path must keep: the same outcome as the full parser, and when it
    /// answers, a plain (not decapsulated) record.
    fn assert_same(link: LinkType, frame: &[u8]) {
        let full = parse_frame_full(link, frame);
        assert_eq!(parse_frame(link, frame), full, "{link:?} {frame:02x?}");
        if let Some(record) = parse_common(link, frame) {
            assert_eq!(full, Ok(plain(record)), "{link:?} {frame:02x?}");
        }
    }

    /// Layers of a crafted frame, chosen to hit both paths and every bail-out of the fast one.
    #[derive(Debug, Clone)]
    struct Spec {
        vlan_tags: usize,
        vlan_type: u16,
        ipv6: bool,
        ihl: u8,
        frag_byte6: u8,
        frag_byte7: u8,
        total_len: u16,
        protocol: u8,
        src_port: u16,
        dst_port: u16,
        tcp_flags: u8,
        payload: Vec<u8>,
        cut: usize,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            (
                0usize..4,
                prop::sample::select(vec![ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ_OLD]),
                any::<bool>(),
                prop::sample::select(vec![5u8, 5, 5, 4, 6, 15]),
                prop::sample::select(vec![0u8, 0, 0x40, 0x20, 0x01, 0x80]),
                prop::sample::select(vec![0u8, 0, 0, 1]),
            ),
            (
                prop::sample::select(vec![0u16, 19, 20, 60, 1500, 65535]),
                prop::sample::select(vec![
                    PROTO_TCP,
                    PROTO_UDP,
                    PROTO_ICMP,
                    PROTO_ICMPV6,
                    PROTO_IPIP,
                    PROTO_IPV6_IN_IP,
                    PROTO_GRE,
                    0,
                    43,
                    44,
                    50,
                    51,
                    59,
                    60,
                ]),
                prop::sample::select(vec![53u16, 1701, 40000]),
                prop::sample::select(vec![80u16, 1701, 0]),
                any::<u8>(),
                prop::collection::vec(any::<u8>(), 0..64),
                0usize..160,
            ),
        )
            .prop_map(
                |(
                    (vlan_tags, vlan_type, ipv6, ihl, frag_byte6, frag_byte7),
                    (total_len, protocol, src_port, dst_port, tcp_flags, payload, cut),
                )| Spec {
                    vlan_tags,
                    vlan_type,
                    ipv6,
                    ihl,
                    frag_byte6,
                    frag_byte7,
                    total_len,
                    protocol,
                    src_port,
                    dst_port,
                    tcp_flags,
                    payload,
                    cut,
                },
            )
    }

    /// The IP packet of `s` (header, L4 header, payload), not cut.
    fn ip_packet(s: &Spec) -> Vec<u8> {
        let mut p = Vec::new();
        if s.ipv6 {
            p.extend([0x60, 0, 0, 0]);
            p.extend(s.total_len.to_be_bytes());
            p.extend([s.protocol, 63]);
            p.extend(
                [0x20, 0x01, 0x0d, 0xb8]
                    .iter()
                    .chain(&[0u8; 11])
                    .chain(&[1]),
            );
            p.extend(
                [0x20, 0x01, 0x0d, 0xb8]
                    .iter()
                    .chain(&[0u8; 11])
                    .chain(&[2]),
            );
        } else {
            p.extend([0x40 | s.ihl, 0]);
            p.extend(s.total_len.to_be_bytes());
            p.extend([0, 7, s.frag_byte6, s.frag_byte7, 64, s.protocol, 0, 0]);
            p.extend([192, 0, 2, 1, 198, 51, 100, 2]);
            p.extend(std::iter::repeat_n(0u8, usize::from(s.ihl.max(5) - 5) * 4));
        }
        p.extend(s.src_port.to_be_bytes());
        p.extend(s.dst_port.to_be_bytes());
        p.extend([
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0x50,
            s.tcp_flags,
            0xff,
            0xff,
            0,
            0,
            0,
            0,
        ]);
        p.extend(&s.payload);
        p
    }

    fn ethernet_frame(s: &Spec) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        for _ in 0..s.vlan_tags {
            f.extend(s.vlan_type.to_be_bytes());
            f.extend([0, 10]);
        }
        f.extend(if s.ipv6 { [0x86, 0xdd] } else { [0x08, 0x00] });
        f.extend(ip_packet(s));
        f
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn fast_and_full_paths_agree_on_crafted_frames(s in spec()) {
            let eth = ethernet_frame(&s);
            let ip = ip_packet(&s);
            assert_same(LinkType::Ethernet, &eth);
            assert_same(LinkType::RawIp, &ip);
            assert_same(LinkType::Ethernet, &eth[..s.cut.min(eth.len())]);
            assert_same(LinkType::RawIp, &ip[..s.cut.min(ip.len())]);
        }

        #[test]
        fn fast_and_full_paths_agree_on_mutated_frames(
            s in spec(),
            flips in prop::collection::vec((0usize..80, any::<u8>()), 1..4),
        ) {
            let mut eth = ethernet_frame(&s);
            for (at, value) in flips {
                if let Some(b) = eth.get_mut(at) {
                    *b = value;
                }
            }
            assert_same(LinkType::Ethernet, &eth);
        }

        #[test]
        fn fast_and_full_paths_agree_on_random_bytes(
            frame in prop::collection::vec(any::<u8>(), 0..128),
        ) {
            for link in LINKS {
                assert_same(link, &frame);
            }
        }
    }

    fn plain_spec(vlan_tags: usize, ipv6: bool, protocol: u8) -> Spec {
        Spec {
            vlan_tags,
            vlan_type: ETH_P_8021Q,
            ipv6,
            ihl: 5,
            frag_byte6: 0x40,
            frag_byte7: 0,
            total_len: 60,
            protocol,
            src_port: 40000,
            dst_port: 80,
            tcp_flags: 0x02,
            payload: vec![0; 20],
            cut: 0,
        }
    }

    #[test]
    fn common_frames_take_the_fast_path() {
        for vlan_tags in 0..=2 {
            for ipv6 in [false, true] {
                for protocol in [PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, 50] {
                    let s = plain_spec(vlan_tags, ipv6, protocol);
                    let frame = ethernet_frame(&s);
                    let record = parse_common(LinkType::Ethernet, &frame)
                        .unwrap_or_else(|| panic!("fast path refused {s:?}"));
                    assert_eq!(
                        Ok(plain(record.clone())),
                        parse_frame_full(LinkType::Ethernet, &frame)
                    );
                    assert_eq!(record.bytes, if ipv6 { 100 } else { 60 });
                    assert_eq!(parse_common(LinkType::RawIp, &ip_packet(&s)), Some(record));
                }
            }
        }
    }

    #[test]
    fn tunnels_options_fragments_and_deep_tags_take_the_full_path() {
        let refused = |s: Spec| {
            let frame = ethernet_frame(&s);
            assert_eq!(parse_common(LinkType::Ethernet, &frame), None, "{s:?}");
            assert!(parse_frame(LinkType::Ethernet, &frame).is_ok(), "{s:?}");
        };
        refused(plain_spec(3, false, PROTO_TCP));
        refused(plain_spec(0, false, PROTO_GRE));
        refused(plain_spec(0, false, PROTO_IPIP));
        refused(plain_spec(0, true, PROTO_IPV6_IN_IP));
        refused(plain_spec(0, true, 44));
        refused(Spec {
            dst_port: 1701,
            ..plain_spec(0, false, PROTO_UDP)
        });
        refused(Spec {
            ihl: 6,
            ..plain_spec(0, false, PROTO_TCP)
        });
        refused(Spec {
            frag_byte6: 0x20,
            ..plain_spec(0, false, PROTO_UDP)
        });
    }
}
