//! Bounded, verifier-friendly frame parser.
//!
//! Every read is checked against `data_end`; every loop has a fixed bound. Byte arrays are read
//! instead of wider integers so no read assumes an alignment the frame does not have.

use aya_ebpf::programs::XdpContext;

const ETH_HDR: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_QINQ_OLD: u16 = 0x9100;
const ETH_P_MPLS_UC: u16 = 0x8847;
const ETH_P_MPLS_MC: u16 = 0x8848;
/// Most VLAN tags skipped (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;
/// Most MPLS labels skipped.
const MAX_MPLS_LABELS: usize = 6;
/// Most IPv6 extension headers skipped.
const MAX_IPV6_EXT: usize = 6;
/// Extension headers deeper than this are treated as malformed (bounds offsets for the verifier).
const MAX_L4_OFFSET: usize = 512;

/// Why a frame was not counted per host.
pub enum ParseError {
    /// Not IPv4 or IPv6.
    NotIp,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// An address as two big-endian 64-bit words (IPv4-mapped for IPv4): two registers instead of
/// sixteen bytes, which LLVM would otherwise keep (and spill) one by one.
#[derive(Clone, Copy)]
pub struct Addr {
    /// Bytes 0..8.
    pub hi: u64,
    /// Bytes 8..16.
    pub lo: u64,
}

impl Addr {
    /// The IPv4-mapped address of `a`.
    #[inline(always)]
    pub fn v4(a: u32) -> Self {
        Addr {
            hi: 0,
            lo: 0xffff_0000_0000 | a as u64,
        }
    }

    /// The IPv4 address of an IPv4-mapped one.
    #[inline(always)]
    pub fn v4_addr(self) -> u32 {
        self.lo as u32
    }

    /// The sixteen bytes, network order.
    #[inline(always)]
    pub fn bytes(self) -> [u8; 16] {
        let be = [
            (self.hi >> 32) as u32,
            self.hi as u32,
            (self.lo >> 32) as u32,
            self.lo as u32,
        ];
        // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit pattern is valid.
        // Four word stores instead of sixteen byte stores.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(be.map(u32::to_be)) }
    }
}

#[inline(always)]
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// What the accounting needs from one IP packet.
pub struct Packet {
    /// Source, IPv4-mapped for IPv4.
    pub src: Addr,
    /// Destination, IPv4-mapped for IPv4.
    pub dst: Addr,
    /// IP bytes: IPv4 total length, IPv6 payload length + 40.
    pub ip_len: u32,
    /// Source port, or ICMP type.
    pub src_port: u16,
    /// Destination port, or ICMP code.
    pub dst_port: u16,
    /// IP protocol number (after IPv6 extension headers).
    pub protocol: u8,
    /// TCP flags (0 otherwise).
    pub tcp_flags: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// IPv4 or IPv6 fragment (first or later).
    pub fragment: bool,
    /// Ports and flags were read (false for later fragments).
    pub has_l4: bool,
    /// IPv4 packet.
    pub v4: bool,
}

impl Packet {
    /// TCP with SYN set and ACK clear.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.protocol == 6 && self.has_l4 && (self.tcp_flags & 0x12) == 0x02
    }
}

#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return Err(ParseError::Malformed);
    }
    // SAFETY: the range was checked against data_end just above.
    Ok(unsafe { *((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses one frame down to L4.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, ParseError> {
    let mut ethertype = be16(bytes::<2>(ctx, 12)?);
    let mut off = ETH_HDR;

    for _ in 0..MAX_VLAN_TAGS {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_OLD {
            ethertype = be16(bytes::<2>(ctx, off + 2)?);
            off += 4;
        }
    }

    if ethertype == ETH_P_MPLS_UC || ethertype == ETH_P_MPLS_MC {
        let mut bottom = false;
        for _ in 0..MAX_MPLS_LABELS {
            let label = bytes::<4>(ctx, off)?;
            off += 4;
            if label[2] & 0x01 != 0 {
                bottom = true;
                break;
            }
        }
        if !bottom {
            return Err(ParseError::Malformed);
        }
        let first = bytes::<1>(ctx, off)?;
        ethertype = match first[0] >> 4 {
            4 => ETH_P_IPV4,
            6 => ETH_P_IPV6,
            _ => return Err(ParseError::NotIp),
        };
    }

    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, off),
        ETH_P_IPV6 => parse_ipv6(ctx, off),
        _ => Err(ParseError::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Result<Packet, ParseError> {
    let h = bytes::<20>(ctx, off)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = (h[0] & 0x0f) as usize * 4;
    if ihl < 20 {
        return Err(ParseError::Malformed);
    }
    let total_len = be16([h[2], h[3]]) as u32;
    if total_len < ihl as u32 {
        return Err(ParseError::Malformed);
    }
    let frag = be16([h[6], h[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    let mut p = Packet {
        src: Addr::v4(u32::from_be_bytes([h[12], h[13], h[14], h[15]])),
        dst: Addr::v4(u32::from_be_bytes([h[16], h[17], h[18], h[19]])),
        ip_len: total_len,
        src_port: 0,
        dst_port: 0,
        protocol: h[9],
        tcp_flags: 0,
        ttl: h[8],
        fragment: more_fragments || frag_offset != 0,
        has_l4: false,
        v4: true,
    };
    if frag_offset == 0 {
        parse_l4(ctx, off + ihl, &mut p)?;
    }
    Ok(p)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Result<Packet, ParseError> {
    let h = bytes::<40>(ctx, off)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let mut p = Packet {
        src: Addr {
            hi: be64(&h, 8),
            lo: be64(&h, 16),
        },
        dst: Addr {
            hi: be64(&h, 24),
            lo: be64(&h, 32),
        },
        ip_len: be16([h[4], h[5]]) as u32 + 40,
        src_port: 0,
        dst_port: 0,
        protocol: h[6],
        tcp_flags: 0,
        ttl: h[7],
        fragment: false,
        has_l4: false,
        v4: false,
    };
    let mut l4 = off + 40;
    let mut later_fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        match p.protocol {
            // Hop-by-hop, routing, destination options: length in 8-octet units, minus one.
            0 | 43 | 60 => {
                let ext = bytes::<2>(ctx, l4)?;
                p.protocol = ext[0];
                l4 += (ext[1] as usize + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                let ext = bytes::<4>(ctx, l4)?;
                p.protocol = ext[0];
                p.fragment = true;
                if be16([ext[2], ext[3]]) >> 3 != 0 {
                    later_fragment = true;
                }
                l4 += 8;
            }
            // Authentication header: length in 4-octet units, minus two.
            51 => {
                let ext = bytes::<2>(ctx, l4)?;
                p.protocol = ext[0];
                l4 += (ext[1] as usize + 2) * 4;
            }
            _ => break,
        }
        if l4 > MAX_L4_OFFSET {
            return Err(ParseError::Malformed);
        }
    }
    if !later_fragment {
        parse_l4(ctx, l4, &mut p)?;
    }
    Ok(p)
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, off: usize, p: &mut Packet) -> Result<(), ParseError> {
    if off > MAX_L4_OFFSET {
        return Err(ParseError::Malformed);
    }
    match p.protocol {
        6 => {
            let t = bytes::<14>(ctx, off)?;
            p.src_port = be16([t[0], t[1]]);
            p.dst_port = be16([t[2], t[3]]);
            p.tcp_flags = t[13];
            p.has_l4 = true;
        }
        17 => {
            let u = bytes::<4>(ctx, off)?;
            p.src_port = be16([u[0], u[1]]);
            p.dst_port = be16([u[2], u[3]]);
            p.has_l4 = true;
        }
        1 | 58 => {
            let i = bytes::<2>(ctx, off)?;
            p.src_port = i[0] as u16;
            p.dst_port = i[1] as u16;
            p.has_l4 = true;
        }
        _ => {}
    }
    Ok(())
}
