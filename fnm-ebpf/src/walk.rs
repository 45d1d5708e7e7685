//! The walk through a tunnel's layers, one tail-called program per layer.
//!
//! It follows the userspace parser (`fnm-agent/src/capture/parse.rs`) rule for rule, so that
//! XDP and userspace capture count the same hosts with the same bytes (the parser equivalence
//! test runs the same frames through both):
//!
//! * GRE (RFC 2784/2890) carrying IPv4, IPv6, MPLS, transparent Ethernet bridging or ERSPAN
//!   type I, II or III; PPTP's enhanced GRE (version 1) carrying PPP;
//! * L2TPv2 data messages on UDP port 1701 (either port) carrying PPP with IPv4 or IPv6;
//! * IP-in-IP (protocol 4) and IPv6-in-IP (41); inside a tunnel, Ethernet with up to four
//!   VLAN tags, MPLS (with a pseudowire control word and an Ethernet frame), IPv4 whose whole
//!   header is in the frame, IPv6 with extension headers;
//!
//! nested up to [`MAX_TUNNEL_DEPTH`] deep. The packet counted is the innermost IP packet that
//! could be read, with its own addresses, length, TTL, protocol and ports; a tunnel whose
//! payload is not a readable IP packet (an L2TP control message, PPP LCP, a GRE keepalive, a
//! truncated inner header) is counted as the packet around it.
//!
//! The counting program's parser (`fnm_xdp`) finds the first tunnel header on its
//! straight-line path, stores a [`Walk`] in this CPU's `FNM_WALK` ([`begin`]) and returns
//! `ParseError::Tunnel`, so the plain path carries no tunnel state into the accounting; the
//! counting program then tail-calls the program of that layer; each
//! layer program reads one layer ([`Walk::step`]) and tail-calls the next; `fnm_account`
//! counts where the walk ended, with the same accounting code as the counting program. Each
//! program is verified on its own, from a walk whose every field is unknown, so the verifier
//! checks each layer once and the counting program does not grow by the walk (the whole walk
//! inside it took the verifier past its limit of 1,000,000 instructions). A walk costs one
//! tail call per layer, on tunnel packets only. Offsets read from the walk are bounded by
//! [`MAX_OFFSET`]: a tunnel header starting beyond it is not read (the packet around it is
//! counted), which only frames longer than 2 KiB can meet.

use crate::parse::{be16, bytes, layer, parse_ipv4, parse_ipv6, Packet, ParseError, MAX_OFFSET};
use aya_ebpf::programs::XdpContext;

const ETH_HDR: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
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
/// Most VLAN tags skipped inside a tunnel (as in userspace).
const MAX_VLAN_TAGS: usize = 4;
/// Most MPLS labels skipped.
const MAX_MPLS_LABELS: usize = 6;
/// Most tunnel layers removed (as in userspace); a packet nested deeper is counted at this
/// depth.
pub const MAX_TUNNEL_DEPTH: u8 = 3;
/// Not a program: a pseudowire's Ethernet frame, one tunnel deeper.
const PSEUDOWIRE: u8 = u8::MAX - 1;

/// Where a tunnel walk stands: kept per CPU between tail calls (`FNM_WALK`).
#[derive(Clone, Copy)]
pub struct Walk {
    /// The packet around the layers still to read (the fallback when they cannot be read),
    /// or the packet to count once [`Walk::next`] is [`layer::ACCOUNT`].
    pub best: Packet,
    /// Offset of the next layer.
    pub off: u32,
    /// The next layer: the index of its program in `FNM_LAYERS`.
    pub next: u8,
    /// Tunnel layers removed so far, this one included.
    pub depth: u8,
    /// How deep `best` lies (0: the outer packet).
    pub best_depth: u8,
    /// The walk stopped on a layer it could not read: `best` is the packet around it.
    pub stopped: bool,
}

/// Starts this CPU's walk into the tunnel whose header (layer `next`) starts at `at` in
/// `outer`; false when the walk's map slot is missing (never: a one-entry per-CPU array).
#[inline(always)]
pub fn begin(outer: &Packet, next: u8, at: usize) -> bool {
    let Some(slot) = crate::FNM_WALK.get_ptr_mut(0) else {
        return false;
    };
    let mut best = *outer;
    best.tunnel = layer::NONE;
    // SAFETY: this CPU's walk; only this CPU touches it while the program runs.
    unsafe {
        *slot = Walk {
            best,
            off: at as u32,
            next,
            depth: 1,
            best_depth: 0,
            stopped: false,
        };
    }
    true
}

impl Walk {
    /// Reads the layer `this` (a constant: each layer program holds only its own code) at
    /// [`Walk::off`] and moves on: sets [`Walk::next`] to the layer below, or to
    /// [`layer::ACCOUNT`] when the walk ends here.
    #[inline(always)]
    pub fn step(&mut self, ctx: &XdpContext, this: u8) {
        let off = self.off as usize;
        let depth = self.depth;
        let found = if off > MAX_OFFSET {
            Err(ParseError::Malformed)
        } else {
            match this {
                layer::ETHERNET => ethernet_layer(ctx, off),
                layer::MPLS => mpls_layer(ctx, off, depth),
                layer::GRE => gre_layer(ctx, off),
                layer::L2TP => l2tp_layer(ctx, off),
                layer::PPP => ppp_layer(ctx, off),
                layer::IPV4 => self.ip(ctx, off, true),
                layer::IPV6 => self.ip(ctx, off, false),
                _ => Err(ParseError::Malformed),
            }
        };
        match found {
            Ok((PSEUDOWIRE, at)) => {
                self.next = layer::ETHERNET;
                self.off = at as u32;
                self.depth = depth + 1;
            }
            Ok((next, at)) => {
                self.next = next;
                self.off = at as u32;
            }
            Err(_) => {
                self.next = layer::ACCOUNT;
                self.stopped = true;
            }
        }
    }

    /// An IP layer: the packet becomes the one to count, and, when it carries a tunnel and
    /// the depth allows, the fallback of the tunnel's layers.
    #[inline(always)]
    fn ip(&mut self, ctx: &XdpContext, off: usize, v4: bool) -> Result<(u8, usize), ParseError> {
        let mut p = if v4 {
            parse_ipv4::<true>(ctx, off)?
        } else {
            parse_ipv6::<true>(ctx, off)?
        };
        let (tunnel, at) = (p.tunnel, p.tunnel_at as usize);
        p.tunnel = layer::NONE;
        self.best = p;
        self.best_depth = self.depth;
        if tunnel == layer::NONE || self.depth >= MAX_TUNNEL_DEPTH {
            return Ok((layer::ACCOUNT, 0));
        }
        self.depth += 1;
        Ok((tunnel, at))
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_OLD
}

/// An Ethernet header and its VLAN tags.
#[inline(always)]
fn ethernet_layer(ctx: &XdpContext, off: usize) -> Result<(u8, usize), ParseError> {
    let mut ethertype = be16(bytes::<2>(ctx, off + 12)?);
    let mut off = off + ETH_HDR;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        ethertype = be16(bytes::<2>(ctx, off + 2)?);
        off += 4;
    }
    Ok(match ethertype {
        ETH_P_MPLS_UC | ETH_P_MPLS_MC => (layer::MPLS, off),
        ETH_P_IPV4 => (layer::IPV4, off),
        ETH_P_IPV6 => (layer::IPV6, off),
        _ => return Err(ParseError::NotIp),
    })
}

/// An MPLS label stack and what its first payload nibble says. The payload's first byte is
/// read as two bytes: every payload it could start is longer, so the outcome is the same.
#[inline(always)]
fn mpls_layer(ctx: &XdpContext, off: usize, depth: u8) -> Result<(u8, usize), ParseError> {
    let mut off = off;
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
    Ok(match bytes::<2>(ctx, off)?[0] >> 4 {
        4 => (layer::IPV4, off),
        6 => (layer::IPV6, off),
        // Pseudowire control word, then an Ethernet frame.
        0 if depth < MAX_TUNNEL_DEPTH => (PSEUDOWIRE, off + 4),
        _ => return Err(ParseError::NotIp),
    })
}

/// GRE (RFC 2784/2890) and PPTP's enhanced GRE (RFC 2637).
#[inline(always)]
fn gre_layer(ctx: &XdpContext, off: usize) -> Result<(u8, usize), ParseError> {
    let h = bytes::<4>(ctx, off)?;
    let flags = be16([h[0], h[1]]);
    let protocol = be16([h[2], h[3]]);
    let checksum = (flags >> 15) as usize & 1;
    let routing = flags & 0x4000 != 0;
    let key = (flags >> 13) as usize & 1;
    let sequence = (flags >> 12) as usize & 1;
    let payload = match flags & 0x7 {
        // RFC 1701 source routing: obsolete, not decoded.
        0 if routing => return Err(ParseError::NotIp),
        0 => off + 4 + 4 * (checksum + key + sequence),
        1 => {
            // Enhanced GRE: key (payload length + call id) always, optional seq and ack.
            if protocol != ETH_P_PPP {
                return Err(ParseError::NotIp);
            }
            let ack = (flags >> 7) as usize & 1;
            return Ok((layer::PPP, off + 8 + 4 * (sequence + ack)));
        }
        _ => return Err(ParseError::NotIp),
    };
    Ok(match protocol {
        ETH_P_IPV4 => (layer::IPV4, payload),
        ETH_P_IPV6 => (layer::IPV6, payload),
        ETH_P_MPLS_UC | ETH_P_MPLS_MC => (layer::MPLS, payload),
        ETH_P_TEB => (layer::ETHERNET, payload),
        // ERSPAN type II has the sequence bit and an 8-byte header; type I has neither.
        ETH_P_ERSPAN_1_2 if sequence != 0 => {
            // Version 1 on the wire; some generators (scapy) leave it 0. Read as two bytes:
            // the Ethernet frame after the 8-byte header needs them anyway.
            if bytes::<2>(ctx, payload)?[0] >> 4 > 1 {
                return Err(ParseError::NotIp);
            }
            (layer::ETHERNET, payload + 8)
        }
        ETH_P_ERSPAN_1_2 => (layer::ETHERNET, payload),
        ETH_P_ERSPAN_3 => {
            let e = bytes::<12>(ctx, payload)?;
            if e[0] >> 4 != 2 || (e[10] >> 2) & 0x1f != 0 {
                // Not version 2 (type III) or not an Ethernet frame.
                return Err(ParseError::NotIp);
            }
            let platform_subheader = (e[11] & 0x01) as usize * 8;
            (layer::ETHERNET, payload + 12 + platform_subheader)
        }
        _ => return Err(ParseError::NotIp),
    })
}

/// An L2TPv2 header (RFC 2661) after the UDP header: data messages carry PPP.
#[inline(always)]
fn l2tp_layer(ctx: &XdpContext, off: usize) -> Result<(u8, usize), ParseError> {
    let flags = be16(bytes::<2>(ctx, off)?);
    if flags & 0x8000 != 0 || flags & 0x000f != 2 {
        // Control message, or not version 2.
        return Err(ParseError::NotIp);
    }
    // Flags, the length if present, tunnel and session ids, Ns/Nr if present.
    let mut at = off + 2 + 4 + ((flags >> 14) as usize & 1) * 2 + ((flags >> 11) as usize & 1) * 4;
    if flags & 0x0200 != 0 {
        let pad = be16(bytes::<2>(ctx, at)?) as usize;
        at += 2 + pad;
    }
    Ok((layer::PPP, at))
}

/// A PPP frame: optional address/control (0xFF 0x03), then a 1- or 2-byte protocol. The
/// first protocol byte is read as two bytes: the IP packet after it needs them anyway.
#[inline(always)]
fn ppp_layer(ctx: &XdpContext, off: usize) -> Result<(u8, usize), ParseError> {
    let mut at = off;
    if let Ok([0xff, 0x03]) = bytes::<2>(ctx, at) {
        at += 2;
    }
    let first = bytes::<2>(ctx, at)?;
    let protocol = if first[0] & 0x01 != 0 {
        at += 1;
        first[0] as u16
    } else {
        at += 2;
        be16(first)
    };
    Ok(match protocol {
        PPP_IPV4 => (layer::IPV4, at),
        PPP_IPV6 => (layer::IPV6, at),
        _ => return Err(ParseError::NotIp),
    })
}
