//! Bounded, verifier-friendly frame parser.
//!
//! Every read is checked against `data_end`; every loop has a fixed bound. Byte arrays are read
//! instead of wider integers so no read assumes an alignment the frame does not have.
//!
//! [`parse`] reads the frames that are not tunnels in straight-line code. For a packet that
//! carries a tunnel the userspace parser (`fnm-agent/src/capture/parse.rs`) decapsulates (GRE,
//! L2TPv2 on UDP port 1701, IP-in-IP, IPv6-in-IP; never a fragment) it starts this CPU's walk
//! ([`crate::walk::begin`]) and returns [`ParseError::Tunnel`] with the walk layer of the
//! tunnel header: the counting program then hands the frame to the tail-called programs of
//! [`crate::walk`], which parse with `WALK = true` (the tunnel noted in [`Packet::tunnel`]).
//! The checks that tell a tunnel apart cost the plain path one branch on the UDP ports; the
//! other protocols are told apart in the default arm of the L4 match, off the TCP, UDP and
//! ICMP paths.

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
/// No header of a tunnel walk starts beyond this offset (bounds offsets for the verifier).
pub const MAX_OFFSET: usize = 2047;
const L2TP_PORT: u16 = 1701;
const PROTO_IPIP: u8 = 4;
const PROTO_IPV6_IN_IP: u8 = 41;
const PROTO_GRE: u8 = 47;

/// The layers of a tunnel walk (the index of each one's program in `FNM_LAYERS`).
pub mod layer {
    pub use fnm_common::tunnel_layer::{ACCOUNT, ETHERNET, GRE, IPV4, IPV6, L2TP, MPLS, PPP};
    /// No tunnel: nothing more to read.
    pub const NONE: u8 = u8::MAX;
}

/// Why a frame was not counted per host.
pub enum ParseError {
    /// Not IPv4 or IPv6.
    NotIp,
    /// Truncated or inconsistent headers.
    Malformed,
    /// The packet carries a tunnel: this CPU's walk was started (outside a walk only), and
    /// the walk goes on in the program of this layer.
    Tunnel(u8),
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
#[derive(Clone, Copy)]
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
    /// The tunnel this packet carries: the walk layer of its header, or [`layer::NONE`].
    pub tunnel: u8,
    /// Offset of that header in the frame.
    pub tunnel_at: u16,
}

impl Packet {
    /// TCP with SYN set and ACK clear.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.protocol == 6 && self.has_l4 && (self.tcp_flags & 0x12) == 0x02
    }
}

/// The `N` bytes at `offset`, or malformed when the frame ends before.
#[inline(always)]
pub fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return Err(ParseError::Malformed);
    }
    // SAFETY: the range was checked against data_end just above.
    Ok(unsafe { *((start + offset) as *const [u8; N]) })
}

/// A big-endian `u16`.
#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
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
        ETH_P_IPV4 => parse_ipv4::<false>(ctx, off),
        ETH_P_IPV6 => parse_ipv6::<false>(ctx, off),
        _ => Err(ParseError::NotIp),
    }
}

/// The farthest offset an L4 header may start at: in a tunnel walk (`WALK`) or not.
#[inline(always)]
const fn l4_limit(walk: bool) -> usize {
    if walk {
        MAX_OFFSET
    } else {
        MAX_L4_OFFSET
    }
}

/// An IPv4 packet at `off`. The whole header, options included, must be in the frame, as the
/// userspace parser requires of every IPv4 header.
#[inline(always)]
pub fn parse_ipv4<const WALK: bool>(ctx: &XdpContext, off: usize) -> Result<Packet, ParseError> {
    let h = bytes::<20>(ctx, off)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = (h[0] & 0x0f) as usize * 4;
    if ihl < 20 || ctx.data() + off + ihl > ctx.data_end() {
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
        tunnel: layer::NONE,
        tunnel_at: 0,
    };
    if frag_offset == 0 {
        parse_l4::<WALK>(ctx, off + ihl, &mut p)?;
    }
    Ok(p)
}

/// An IPv6 packet at `off`, its extension headers skipped.
#[inline(always)]
pub fn parse_ipv6<const WALK: bool>(ctx: &XdpContext, off: usize) -> Result<Packet, ParseError> {
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
        tunnel: layer::NONE,
        tunnel_at: 0,
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
        if l4 > l4_limit(WALK) {
            // Another extension header past the limit is not read (in a walk, past the limit
            // means past the frame: frames are shorter); a protocol without an L4 header to
            // read is counted as userspace counts it (`parse_l4`).
            if !matches!(p.protocol, 0 | 43 | 44 | 51 | 60) {
                break;
            }
            return Err(ParseError::Malformed);
        }
    }
    if !later_fragment {
        parse_l4::<WALK>(ctx, l4, &mut p)?;
    }
    Ok(p)
}

/// Reads the L4 header at `off`, and notes the tunnel the packet carries, if any.
#[inline(always)]
fn parse_l4<const WALK: bool>(
    ctx: &XdpContext,
    off: usize,
    p: &mut Packet,
) -> Result<(), ParseError> {
    if off > l4_limit(WALK) {
        // A header that must be read is not read past the limit (in a walk, past the limit
        // means past the frame: see `parse_ipv6`); a tunnel's is read no further than its
        // layer program's check ([`MAX_OFFSET`]); any other protocol has nothing to read.
        if !matches!(p.protocol, 6 | 17 | 1 | 58) {
            return p.carries_at_most::<WALK>(off);
        }
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
            // One branch for both ports (bitwise or): the plain UDP path pays one jump.
            if (p.src_port == L2TP_PORT) | (p.dst_port == L2TP_PORT) {
                // The L2TP header follows the 8-byte UDP header.
                return p.carries::<WALK>(layer::L2TP, off + 8);
            }
        }
        1 | 58 => {
            let i = bytes::<2>(ctx, off)?;
            p.src_port = i[0] as u16;
            p.dst_port = i[1] as u16;
            p.has_l4 = true;
        }
        // GRE, IP-in-IP and IPv6-in-IP start a tunnel; the other protocols have nothing to
        // read. Told apart here, off the TCP, UDP and ICMP paths.
        _ => return p.carries_at_most::<WALK>(off),
    }
    Ok(())
}

impl Packet {
    /// A tunnel header past the L4 limit at `at`: its layer program reads it when it lies
    /// within [`MAX_OFFSET`], and otherwise finds it out of reach and counts this packet, as
    /// userspace does with a cut tunnel.
    #[inline(always)]
    fn carries_at_most<const WALK: bool>(&mut self, at: usize) -> Result<(), ParseError> {
        let layer = match self.protocol {
            PROTO_GRE => layer::GRE,
            PROTO_IPIP => layer::IPV4,
            PROTO_IPV6_IN_IP => layer::IPV6,
            _ => return Ok(()),
        };
        self.carries::<WALK>(layer, at.min(u16::MAX as usize))
    }

    /// The tunnel whose header (walk layer `layer`) starts at `at`; a fragment carries none
    /// (its payload spans frames). In a walk (`WALK`) it is noted in the packet; outside, this
    /// CPU's walk starts from this packet and [`ParseError::Tunnel`] says where it goes on, so
    /// that the counting program's plain path carries no tunnel state.
    #[inline(always)]
    fn carries<const WALK: bool>(&mut self, layer: u8, at: usize) -> Result<(), ParseError> {
        if self.fragment {
            return Ok(());
        }
        if WALK {
            self.note_tunnel(layer, at);
            return Ok(());
        }
        if crate::walk::begin(self, layer, at) {
            return Err(ParseError::Tunnel(layer));
        }
        Ok(())
    }

    #[inline(always)]
    fn note_tunnel(&mut self, layer: u8, at: usize) {
        self.tunnel = layer;
        self.tunnel_at = at as u16;
    }
}
