//! fnm's XDP data plane.
//!
//! `fnm_xdp` parses every frame (Ethernet, up to two VLAN tags, an MPLS label stack, IPv4 with
//! options and fragments, IPv6 with extension headers, TCP/UDP/ICMP/ICMPv6), counts it per local
//! host and direction in per-CPU maps, and drops it in place when a drop table or a fingerprint
//! rule matches and no whitelist entry protects it. A packet whose remote side is a whitelisted
//! source (`[detection] whitelist_sources`) counts in the totals and in its local host's
//! whitelisted counters only, never toward the host's rates. A packet carrying a tunnel (GRE
//! with ERSPAN I/II/III, transparent Ethernet bridging, MPLS and PPTP's enhanced GRE; L2TPv2;
//! IP-in-IP and 6in4) goes on in the tail-called layer programs of [`walk`], and the innermost
//! packet they read is counted and dropped by `fnm_account` exactly as a plain one is here
//! (drop tables, rules and samples see that inner packet); `fnm_xdp_decapsulated_frames`
//! counts them. `fnm_pass` does nothing: it is the floor against which the benchmark measures
//! `fnm_xdp`.
//!
//! Hashed hosts (IPv6, IPv4 beyond the dense slots) find their host slot in an open-addressed
//! table this program probes and claims itself; their counters live in an mmap-able array as
//! the dense ones do, so the agent reads both in place.
#![no_std]
#![no_main]
// The one compare-and-swap (claiming a host slot): core has no `compare_exchange` for BPF.
#![allow(internal_features)]
#![feature(core_intrinsics)]
// Map keys and values are passed by reference on purpose: passing them by value makes LLVM
// copy them on the 512-byte BPF stack, which this program is close to.
#![allow(clippy::needless_borrows_for_generic_args)]

mod parse;
mod walk;

use aya_ebpf::{
    bindings::{self, xdp_action},
    helpers::{bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    programs::XdpContext,
};
use core::intrinsics::{atomic_cxchg, atomic_xchg, AtomicOrdering};
use fnm_common::{
    direction, drop16, local16, local6, proto, setting, slot_state, stat, table_flag, touched,
    tunnel_layer, DropCounter, HostCounters, HostKey, Local6Bits, Local6Bucket, Local6Head,
    LocalNetV4, PacketSample, RuleSet, SlotBucket, SlotCounters, SlotOwner, XdpHostCounters,
    FLOW_CACHE_SLOTS, MAX_RULES_PER_HOST, SLOT_WAYS,
};
use parse::{layer, parse, Addr, Packet, ParseError};
use walk::Walk;

/// Default sizes; the agent overrides them from its config before loading.
const HOSTS_DEFAULT: u32 = 65_536;
const FLOWS_DEFAULT: u32 = 262_144;
const PREFIXES_DEFAULT: u32 = 16_384;
const DROP_DEFAULT: u32 = 65_536;
const RULES_DEFAULT: u32 = 4_096;
const DENSE_SLOTS_DEFAULT: u32 = 131_072;
const LOCAL24_DEFAULT: u32 = 4_096;

/// Counter slots of every frame: the global counters, one entry.
type Stats = [u64; stat::COUNT as usize];

/// Secret seed of the flow-table hash; written by the agent at load, then frozen.
#[unsafe(no_mangle)]
static FNM_FLOW_SEED: u64 = 0;

/// CPUs the slot arrays are laid out for (`slot × FNM_CPUS + cpu`); written by the agent at
/// load, then frozen.
#[unsafe(no_mangle)]
static FNM_CPUS: u32 = 1;

/// Buckets of `FNM_SLOT_OWNER`; written by the agent at load, then frozen.
#[unsafe(no_mangle)]
static FNM_SLOT_BUCKETS: u32 = HOSTS_DEFAULT / SLOT_WAYS as u32;

/// All ones, never written: not frozen, so the verifier knows nothing of it ([`all_ones`]).
#[unsafe(no_mangle)]
static mut FNM_ALL_ONES: u32 = u32::MAX;

/// Hashed hosts (IPv6, and IPv4 beyond the dense slots): an open-addressed table the program
/// probes itself. The address's seeded hash picks a bucket of `SLOT_WAYS` ways; a host owns
/// the way whose state is `READY` and whose address is its own, and a new host claims a free
/// way by an atomic compare-and-swap of its state, so two CPUs admitting hosts at once never
/// share a way. The host slot `bucket × SLOT_WAYS + way` has two counter slots (incoming,
/// then outgoing) in `FNM_HOSTS_H`, laid out as the dense ones in `FNM_HOSTS_D4`. With every
/// way taken, the packet counts in the totals and `HOST_TABLE_FULL` only; the agent frees
/// the ways of idle hosts (docs/security.md).
#[map]
static FNM_SLOT_OWNER: Array<SlotBucket> =
    Array::with_max_entries(HOSTS_DEFAULT / SLOT_WAYS as u32, bindings::BPF_F_MMAPABLE);
/// Counters of the hashed hosts, `counter slot × FNM_CPUS + cpu` (mmap-able).
#[map]
static FNM_HOSTS_H: Array<SlotCounters> =
    Array::with_max_entries(2 * HOSTS_DEFAULT, bindings::BPF_F_MMAPABLE);
/// Byte per counter slot of `FNM_HOSTS_H`, a `fnm_common::touched` state (mmap-able).
#[map]
static FNM_TOUCHED_H: Array<u64> =
    Array::with_max_entries(2 * HOSTS_DEFAULT / 8, bindings::BPF_F_MMAPABLE);
#[map]
static FNM_HOSTS_D4: Array<SlotCounters> =
    Array::with_max_entries(DENSE_SLOTS_DEFAULT, bindings::BPF_F_MMAPABLE);
#[map]
static FNM_TOUCHED_D4: Array<u64> =
    Array::with_max_entries(DENSE_SLOTS_DEFAULT / 8, bindings::BPF_F_MMAPABLE);
#[map]
static FNM_FLOWS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(FLOWS_DEFAULT, 0);
#[map]
static FNM_FLOW_CACHE: PerCpuArray<u64> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);
/// The IPv4 local networks by /16 ([`local16`]): written by the agent at load and rewritten,
/// entry by entry, when a reload changes the networks (mmap-able, so the agent stores each
/// entry with one atomic write instead of a system call per /16).
#[map]
static FNM_LOCAL16_V4: Array<u32> =
    Array::with_max_entries(local16::BLOCKS as u32, bindings::BPF_F_MMAPABLE);
/// The /24 tables of the /16 blocks split by longer local prefixes ([`local16::SPLIT`]).
#[map]
static FNM_LOCAL24_V4: Array<[u32; local16::SUB_ENTRIES]> =
    Array::with_max_entries(LOCAL24_DEFAULT, bindings::BPF_F_MMAPABLE);
/// The IPv6 prefilter ([`local6`]): one bit per hash of the `/L`s local networks overlap.
#[map]
static FNM_LOCAL6_BITS: Array<Local6Bits> = Array::with_max_entries(1, 0);
/// The IPv6 local networks by prefix length ([`local6`]): the generation in force, the two
/// generations' heads, and their buckets.
#[map]
static FNM_LOCAL6_GEN: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static FNM_LOCAL6_HEAD: Array<Local6Head> = Array::with_max_entries(local6::GENERATIONS, 0);
#[map]
static FNM_LOCAL6_BKT: Array<Local6Bucket> =
    Array::with_max_entries(local6::GENERATIONS * local6::BUCKETS, 0);
#[map]
static FNM_LOCAL_V4: LpmTrie<[u8; 4], LocalNetV4> = LpmTrie::with_max_entries(PREFIXES_DEFAULT, 0);
#[map]
static FNM_LOCAL_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(PREFIXES_DEFAULT, 0);
#[map]
static FNM_WHITELIST_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(PREFIXES_DEFAULT, 0);
#[map]
static FNM_WHITELIST_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(PREFIXES_DEFAULT, 0);
#[map]
static FNM_SWL_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(PREFIXES_DEFAULT, 0);
#[map]
static FNM_SWL_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(PREFIXES_DEFAULT, 0);
#[map]
static FNM_SWL16_V4: Array<[u64; drop16::WORDS]> = Array::with_max_entries(1, 0);
#[map]
static FNM_DROP16_V4: Array<[u64; drop16::WORDS]> = Array::with_max_entries(2, 0);
#[map]
static FNM_DROP_SRC_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(DROP_DEFAULT, 0);
#[map]
static FNM_DROP_SRC_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DROP_DEFAULT, 0);
#[map]
static FNM_DROP_DST_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(DROP_DEFAULT, 0);
#[map]
static FNM_DROP_DST_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(DROP_DEFAULT, 0);
#[map]
static FNM_DROP_COUNTERS: PerCpuArray<DropCounter> = PerCpuArray::with_max_entries(DROP_DEFAULT, 0);
#[map]
static FNM_RULES: HashMap<HostKey, RuleSet> = HashMap::with_max_entries(RULES_DEFAULT, 0);
#[map]
static FNM_SAMPLED_HOSTS: HashMap<HostKey, u32> = HashMap::with_max_entries(1024, 0);
#[map]
static FNM_SAMPLES: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static FNM_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static FNM_SETTINGS: Array<u32> = Array::with_max_entries(setting::COUNT, 0);
/// Where this CPU's tunnel walk stands between two layer programs.
#[map]
static FNM_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);
/// The layer programs and `fnm_account`, by [`tunnel_layer`] index; filled by the agent.
#[map]
static FNM_LAYERS: ProgramArray = ProgramArray::with_max_entries(tunnel_layer::COUNT, 0);

/// The harness floor for benchmarks: passes every frame untouched.
#[xdp]
pub fn fnm_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Counts every frame per local host and drops banned traffic.
#[xdp]
pub fn fnm_xdp(ctx: XdpContext) -> u32 {
    let Some(stats) = FNM_STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let stats = unsafe { &mut *stats };
    add(stats, stat::FRAMES, 1);
    match parse(&ctx) {
        Ok(packet) => handle(&forget_constants(packet), stats),
        Err(ParseError::Tunnel(first)) => follow_tunnel(&ctx, first),
        Err(ParseError::NotIp) => {
            add(stats, stat::NON_IP, 1);
            xdp_action::XDP_PASS
        }
        Err(ParseError::Malformed) => {
            add(stats, stat::MALFORMED, 1);
            xdp_action::XDP_PASS
        }
    }
}

/// `packet` with its addresses, length, ports, flags and TTL masked with [`all_ones`]: the
/// same values, but ones the verifier no longer knows. The parser's paths reach `handle` with
/// as many verifier states (what each path knew of those fields), and the verifier walked the
/// counting once per state: 969,563 instructions with the hashed hosts' open table, 660,773
/// this way. A round trip through a map value did the same for 6 ns a packet; this costs a
/// load and seven `and`s. Masking the protocol too went back to 900,698 (the class then
/// splits later, per call site); `fnm_account` needs none of it, its packet comes from a map.
#[inline(always)]
fn forget_constants(mut packet: Packet) -> Packet {
    let ones = all_ones();
    let ones64 = ones as u64 | ((ones as u64) << 32);
    packet.src.hi &= ones64;
    packet.src.lo &= ones64;
    packet.dst.hi &= ones64;
    packet.dst.lo &= ones64;
    packet.ip_len &= ones;
    packet.src_port &= ones as u16;
    packet.dst_port &= ones as u16;
    packet.tcp_flags &= ones as u8;
    packet.ttl &= ones as u8;
    packet
}

/// `u32::MAX`, read from a global the verifier cannot know (`FNM_ALL_ONES`, never written):
/// masking a value with it merges the verifier's states without changing the value.
#[inline(always)]
fn all_ones() -> u32 {
    // SAFETY: plain read of a global nobody writes; volatile so the compiler cannot fold it.
    unsafe { core::ptr::read_volatile(&raw const FNM_ALL_ONES) }
}

/// Goes on with the walk the parser started (`walk::begin`): tail-calls the program of the
/// tunnel's first layer. Returns only when that program is missing (the agent that filled
/// `FNM_LAYERS` is gone, its link left pinned): the frame then passes, counted in the frames
/// only.
#[inline(always)]
fn follow_tunnel(ctx: &XdpContext, first: u8) -> u32 {
    // SAFETY: a tail call that succeeds does not return.
    unsafe {
        FNM_LAYERS.tail_call(ctx, first as u32);
    }
    xdp_action::XDP_PASS
}

macro_rules! layer_programs {
    ($($(#[$doc:meta])* $name:ident = $layer:expr;)*) => {$(
        $(#[$doc])*
        #[xdp]
        pub fn $name(ctx: XdpContext) -> u32 {
            step(&ctx, $layer)
        }
    )*};
}

layer_programs! {
    /// A tunnel's Ethernet frame (transparent bridging, ERSPAN, a pseudowire) and VLAN tags.
    fnm_ethernet = layer::ETHERNET;
    /// An MPLS label stack inside a tunnel.
    fnm_mpls = layer::MPLS;
    /// An IPv4 packet inside a tunnel.
    fnm_ipv4 = layer::IPV4;
    /// An IPv6 packet inside a tunnel.
    fnm_ipv6 = layer::IPV6;
    /// A GRE header (ERSPAN and enhanced GRE included).
    fnm_gre = layer::GRE;
    /// An L2TPv2 header.
    fnm_l2tp = layer::L2TP;
    /// A PPP header (inside L2TP or enhanced GRE).
    fnm_ppp = layer::PPP;
}

/// Reads one layer of this CPU's walk and tail-calls the program of the next one.
#[inline(always)]
fn step(ctx: &XdpContext, this: u8) -> u32 {
    if let Some(walk) = FNM_WALK.get_ptr_mut(0) {
        // SAFETY: this CPU's walk, written by the program that tail-called this one.
        unsafe {
            (*walk).step(ctx, this);
            FNM_LAYERS.tail_call(ctx, (*walk).next as u32);
        }
    }
    xdp_action::XDP_PASS
}

/// Counts what a tunnel walk ended on (and drops it when a table says so), as `fnm_xdp` counts
/// a plain packet.
#[xdp]
pub fn fnm_account(_ctx: XdpContext) -> u32 {
    let (Some(stats), Some(walk)) = (FNM_STATS.get_ptr_mut(0), FNM_WALK.get_ptr(0)) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU values of this CPU; the walk was written by the layer programs before
    // they tail-called this one.
    let (stats, walk) = unsafe { (&mut *stats, &*walk) };
    let packet = walk.best;
    if walk.best_depth > 0 {
        add(stats, stat::DECAPSULATED, 1);
    }
    if walk.stopped {
        add(stats, stat::TUNNEL_OUTER_COUNTED, 1);
    }
    handle(&packet, stats)
}

#[inline(always)]
fn add(stats: &mut Stats, index: u32, by: u64) {
    if let Some(slot) = stats.get_mut(index as usize) {
        *slot += by;
    }
}

/// Where a packet's counters for one local address live.
///
/// A struct, not an enum with the slot as payload: an enum leaves the slot undefined for the
/// other kinds, and LLVM then let one register hold the slot on the dense path and the
/// context pointer on the others, testing the kind again later, which the verifier, not
/// knowing the kind there, refused (pointer arithmetic on the context).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Local {
    kind: Kind,
    /// The incoming dense slot (outgoing is the next one) for [`Kind::Slot`], else 0.
    slot: u32,
}

/// Kinds of [`Local`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The address is not local.
    No,
    /// Local, counted in the hashed hosts' table.
    Hashed,
    /// Local IPv4 with dense counters.
    Slot,
}

impl Local {
    /// Not local.
    const NO: Local = Local {
        kind: Kind::No,
        slot: 0,
    };
    /// Local, counted in the hashed hosts' table.
    const HASHED: Local = Local {
        kind: Kind::Hashed,
        slot: 0,
    };

    /// Local with dense counters from the incoming slot `slot` on.
    #[inline(always)]
    fn dense(slot: u32) -> Local {
        Local {
            kind: Kind::Slot,
            slot,
        }
    }

    #[inline(always)]
    fn is_local(self) -> bool {
        self.kind != Kind::No
    }
}

/// Whether `addr` is local, and where its counters live.
///
/// Every path ends in one decoding of a table value (one trie call site, one slot sum over the
/// same bits of the address): the verifier then prunes the paths that reach it alike, where a
/// decoding per table (or the /24 table's own host bits) multiplied the states it walks for
/// the two sides of a packet (977,882 and 788,435 instructions against 460,744 without the /24
/// tables).
#[inline(always)]
fn local(addr: Addr, v4: bool) -> Local {
    if v4 {
        // The /16 table answers without the trie unless a longer local prefix splits the /16;
        // then its /24 table answers, unless a prefix longer than /24 splits the /24.
        let a = addr.v4_addr();
        // An array lookup the verifier inlines; `a >> 16` is below the table's 65,536 entries.
        let Some(&entry) = FNM_LOCAL16_V4.get(a >> 16) else {
            return Local::NO;
        };
        // The table value for `a`: a /24 table's dense values are encoded as the /16 table's
        // (slot of the /16's first address, wrapping), so both decode alike.
        let value = if entry & local16::SPLIT == 0 {
            entry
        } else {
            match FNM_LOCAL24_V4.get(entry & !local16::SPLIT) {
                Some(sub) => sub[((a >> 8) & 0xff) as usize],
                None => local16::NONE,
            }
        };
        match value {
            local16::NONE => Local::NO,
            local16::HASHED => Local::HASHED,
            local16::ASK_TRIE => local_trie_v4(a),
            base => Local::dense(
                base.wrapping_sub(local16::DENSE)
                    .wrapping_add((a & 0xffff) << 1),
            ),
        }
    } else {
        // Most remote addresses share no /L with a local network (`L` the shortest local
        // prefix, /32 to /64): one bit answers. The agent changes `L` through a bitmap of
        // all ones, so a read racing that rewrite passes the address on to the table.
        let Some(bits) = FNM_LOCAL6_BITS.get(0) else {
            return Local::NO;
        };
        let bit = local6::prefilter_bit(addr.hi, bits.shift);
        if bits.words[(bit >> 6) as usize & (local6::WORDS - 1)] & (1u64 << (bit & 63)) == 0 {
            return Local::NO;
        }
        if fnm_local6(addr.hi, addr.lo) != 0 {
            Local::HASHED
        } else {
            Local::NO
        }
    }
}

/// Whether the IPv6 address `hi`:`lo` is in a local network (1) or not (0): per prefix length
/// of the table in force, one bucket compared in place (array lookups the verifier inlines,
/// no hash or trie call); the `LOCAL_V6` trie when the table does not hold the networks.
///
/// A global BPF function: the kernel verifies it once, on its own, instead of once per path
/// that reaches a lookup (inlined, its loop over the lengths took `fnm_xdp` past the
/// verifier's 1,000,000 instructions).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fnm_local6(hi: u64, lo: u64) -> u32 {
    local_v6(Addr { hi, lo }) as u32
}

#[inline(always)]
fn local_v6(addr: Addr) -> bool {
    let generation = match FNM_LOCAL6_GEN.get(0) {
        Some(g) => *g & 1,
        None => return false,
    };
    let Some(head) = FNM_LOCAL6_HEAD.get(generation) else {
        return false;
    };
    if head.ask_trie != 0 {
        return FNM_LOCAL_V6
            .get(&Key::new(128, addr.bytes()))
            .is_some_and(|v| *v != 0);
    }
    for length in head.length.iter().take(head.lengths as usize) {
        let hi = addr.hi & length.hi_mask;
        let lo = addr.lo & length.lo_mask;
        let bucket = length
            .base
            .wrapping_add(local6::hash(head.seed, hi, lo) & length.mask);
        if let Some(b) = FNM_LOCAL6_BKT.get(bucket) {
            // One branch per key, leaving on a match: paths that go on carry no state of
            // their own, so the verifier prunes them (a flag per key doubled its states per
            // key).
            for key in &b.keys {
                if (key[0] ^ hi) | (key[1] ^ lo) == 0 {
                    return true;
                }
            }
        }
    }
    false
}

/// What the `LOCAL_V4` trie answers for `a`.
#[inline(always)]
fn local_trie_v4(a: u32) -> Local {
    match FNM_LOCAL_V4.get(&Key::new(32, a.to_be_bytes())) {
        None => Local::NO,
        Some(net) if net.slot_base == local16::NO_SLOTS => Local::HASHED,
        Some(net) => Local::dense(net.slot_base.wrapping_add((a & net.host_mask) << 1)),
    }
}

#[inline(always)]
fn is_whitelisted(addr: Addr, v4: bool) -> bool {
    if v4 {
        let key = Key::new(32, addr.v4_addr().to_be_bytes());
        FNM_WHITELIST_V4.get(&key).map(|v| *v != 0).unwrap_or(false)
    } else {
        FNM_WHITELIST_V6
            .get(&Key::new(128, addr.bytes()))
            .map(|v| *v != 0)
            .unwrap_or(false)
    }
}

/// True when `addr`, the remote side of a packet, is a whitelisted source.
#[inline(always)]
fn is_whitelisted_source(addr: Addr, v4: bool) -> bool {
    if v4 {
        let a = addr.v4_addr();
        // Most remote addresses share no /16 with a whitelisted source: one bit answers.
        let Some(bitmap) = FNM_SWL16_V4.get(0) else {
            return false;
        };
        let block = a >> 16;
        if bitmap[(block >> 6) as usize] & (1u64 << (block & 63)) == 0 {
            return false;
        }
        let key = Key::new(32, a.to_be_bytes());
        FNM_SWL_V4.get(&key).map(|v| *v != 0).unwrap_or(false)
    } else {
        FNM_SWL_V6
            .get(&Key::new(128, addr.bytes()))
            .map(|v| *v != 0)
            .unwrap_or(false)
    }
}

#[inline(always)]
fn drop_entry(addr: Addr, v4: bool, source: bool) -> Option<u32> {
    if v4 {
        let a = addr.v4_addr();
        // Most sources share no /16 with any drop entry: one bit answers without the trie.
        let bitmap = FNM_DROP16_V4.get(if source { drop16::SRC } else { drop16::DST })?;
        let block = a >> 16;
        if bitmap[(block >> 6) as usize] & (1u64 << (block & 63)) == 0 {
            return None;
        }
        let key = Key::new(32, a.to_be_bytes());
        let table = if source {
            &FNM_DROP_SRC_V4
        } else {
            &FNM_DROP_DST_V4
        };
        table.get(&key).copied()
    } else {
        let key = Key::new(128, addr.bytes());
        let table = if source {
            &FNM_DROP_SRC_V6
        } else {
            &FNM_DROP_DST_V6
        };
        table.get(&key).copied()
    }
}

/// Adds one packet to a drop entry's or rule's per-CPU counter slot.
#[inline(always)]
fn count_drop(slot: u32, bytes: u64) {
    if let Some(c) = FNM_DROP_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Counts a parsed packet per host and in the totals, and drops it when a table says so. Inlined
/// into `fnm_xdp` and `fnm_account` alike: as a BPF function called per packet it cost the
/// plain path about 20 ns.
#[inline(always)]
fn handle(p: &Packet, stats: &mut Stats) -> u32 {
    let dst = local(p.dst, p.v4);
    let src = local(p.src, p.v4);
    let (local_dst, local_src) = (dst.is_local(), src.is_local());
    let class = proto::class_of(p.protocol);
    let bytes = p.ip_len as u64;

    let total_dir = if local_dst {
        direction::INCOMING
    } else if local_src {
        direction::OUTGOING
    } else {
        direction::OTHER
    };
    add(stats, stat::total_index(total_dir, class, false), 1);
    add(stats, stat::total_index(total_dir, class, true), bytes);

    let flags = FNM_SETTINGS.get(setting::TABLE_FLAGS).copied().unwrap_or(0);

    if local_dst || local_src {
        let how = Add {
            class,
            new_flow: note_flow(p),
            check_white: flags & table_flag::SOURCE_WHITELIST != 0,
        };
        account_side(dst, p.dst, p.src, direction::INCOMING, p, how, stats);
        account_side(src, p.src, p.dst, direction::OUTGOING, p, how, stats);
        if flags & table_flag::SAMPLING != 0 {
            sample(p, local_dst, local_src, how.check_white, stats);
        }
    }

    if flags & table_flag::DROP_SRC != 0 {
        if let Some(entry) = drop_entry(p.src, p.v4, true) {
            if let Some(verdict) = drop_or_whitelist(p, entry, stat::DROP_SRC_PACKETS, stats) {
                return verdict;
            }
        }
    }
    if flags & table_flag::DROP_DST != 0 {
        if let Some(entry) = drop_entry(p.dst, p.v4, false) {
            if let Some(verdict) = drop_or_whitelist(p, entry, stat::DROP_DST_PACKETS, stats) {
                return verdict;
            }
        }
    }
    if flags & table_flag::RULES != 0 {
        if local_dst && match_rules(&host_key(p.dst, direction::INCOMING), p, stats) {
            return xdp_action::XDP_DROP;
        }
        if local_src && match_rules(&host_key(p.src, direction::OUTGOING), p, stats) {
            return xdp_action::XDP_DROP;
        }
    }
    xdp_action::XDP_PASS
}

/// Counts the packet for one side (`dir`, local address `addr`) of it, wherever that host's
/// counters live: in its whitelisted counters only when `remote`, the other end, is a
/// whitelisted source.
///
/// The whitelist is looked up here, for a local side only, and its answer is used up
/// before this returns. Looked up once for both sides and kept alive through the
/// accounting, it multiplied the paths the verifier walks: 903,000 instructions of its
/// 1,000,000 limit, against 698,000 this way (329,000 without the whitelist).
#[inline(always)]
fn account_side(
    side: Local,
    addr: Addr,
    remote: Addr,
    dir: u8,
    p: &Packet,
    how: Add,
    stats: &mut Stats,
) {
    if !side.is_local() {
        return;
    }
    let white = how.check_white && is_whitelisted_source(remote, p.v4);
    if white {
        add(stats, stat::SOURCE_WHITELISTED_PACKETS, 1);
        add(stats, stat::SOURCE_WHITELISTED_BYTES, p.ip_len as u64);
    }
    let counted = match side.kind {
        Kind::No => return,
        Kind::Slot => account_dense(side.slot.wrapping_add(dir as u32), p, how, white),
        Kind::Hashed => account_hashed(&addr, dir, p, how, white),
    };
    if !counted {
        add(stats, stat::HOST_TABLE_FULL, 1);
    }
}

/// Drops the packet unless a whitelist entry protects it; `Some(XDP_DROP)` when dropped.
#[inline(always)]
fn drop_or_whitelist(p: &Packet, slot: u32, packets_stat: u32, stats: &mut Stats) -> Option<u32> {
    if is_whitelisted(p.src, p.v4) || is_whitelisted(p.dst, p.v4) {
        add(stats, stat::WHITELIST_PASSED, 1);
        return None;
    }
    count_drop(slot, p.ip_len as u64);
    add(stats, packets_stat, 1);
    add(stats, packets_stat + 1, p.ip_len as u64);
    Some(xdp_action::XDP_DROP)
}

/// Applies the fingerprint rules of one host; true when the packet must be dropped.
#[inline(always)]
fn match_rules(key: &HostKey, p: &Packet, stats: &mut Stats) -> bool {
    let Some(set) = FNM_RULES.get_ptr(key) else {
        return false;
    };
    // SAFETY: `set` came from a map lookup in this run.
    let count = unsafe { (*set).count } as usize;
    let mut i = 0;
    while i < MAX_RULES_PER_HOST {
        if i >= count {
            break;
        }
        // SAFETY: `i` is below MAX_RULES_PER_HOST.
        let rule = unsafe { &(*set).rules[i] };
        if rule_matches(rule, p) {
            if is_whitelisted(p.src, p.v4) {
                add(stats, stat::WHITELIST_PASSED, 1);
                return false;
            }
            count_drop(rule.slot, p.ip_len as u64);
            add(stats, stat::DROP_RULE_PACKETS, 1);
            add(stats, stat::DROP_RULE_BYTES, p.ip_len as u64);
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn rule_matches(rule: &fnm_common::DropRule, p: &Packet) -> bool {
    if rule.protocol != 0 && rule.protocol != p.protocol {
        return false;
    }
    if !p.has_l4 {
        // A later fragment carries no ports or flags: only fragment rules see it.
        return rule.match_fragments != 0 && p.fragment;
    }
    if rule.match_fragments != 0 && !p.fragment {
        return false;
    }
    (rule.src_port == 0 || rule.src_port == p.src_port)
        && (rule.dst_port == 0 || rule.dst_port == p.dst_port)
        && (p.tcp_flags & rule.tcp_flags_mask) == rule.tcp_flags_value
}

#[inline(always)]
fn host_key(addr: Addr, dir: u8) -> HostKey {
    HostKey {
        addr: addr.bytes(),
        direction: dir,
        _pad: [0; 3],
    }
}

/// One round of the flow hash: xor a word in, multiply, fold the high half down.
#[inline(always)]
fn mix(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 32)
}

/// Seeded 64-bit hash of the packet's 5-tuple (never zero: zero marks an empty cache slot).
#[inline(always)]
fn flow_hash(p: &Packet) -> u64 {
    // SAFETY: plain read of a frozen global; volatile so the compiler cannot assume the zero
    // it was compiled with.
    let mut h = unsafe { core::ptr::read_volatile(&FNM_FLOW_SEED) };
    if p.v4 {
        let s = p.src.v4_addr() as u64;
        let d = p.dst.v4_addr() as u64;
        h = mix(h, (s << 32) | d);
    } else {
        h = mix(h, p.src.hi);
        h = mix(h, p.src.lo);
        h = mix(h, p.dst.hi);
        h = mix(h, p.dst.lo);
    }
    let ports = ((p.src_port as u64) << 40) | ((p.dst_port as u64) << 24) | p.protocol as u64;
    h = mix(h, ports);
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h ^ (h >> 31)) | 1
}

/// Records the packet's 5-tuple; true when it was not in the flow table yet.
///
/// A per-CPU direct-mapped cache of 5-tuple hashes sits in front of the shared LRU table: a
/// packet of a flow this CPU saw recently costs one array access instead of a hash lookup.
#[inline(always)]
fn note_flow(p: &Packet) -> bool {
    let h = flow_hash(p);
    let slot = (h >> 1) as u32 & (FLOW_CACHE_SLOTS - 1);
    let cached = FNM_FLOW_CACHE.get_ptr_mut(slot);
    if let Some(c) = cached {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        if unsafe { *c } == h {
            return false;
        }
        // SAFETY: as above.
        unsafe { *c = h };
    }
    if FNM_FLOWS.get_ptr(&h).is_some() {
        return false;
    }
    let _ = FNM_FLOWS.insert(&h, &1u8, 0);
    true
}

/// How a packet adds to a host's counters.
#[derive(Clone, Copy)]
struct Add {
    /// Protocol class ([`proto`]).
    class: usize,
    /// First packet of its 5-tuple.
    new_flow: bool,
    /// The source whitelist has entries: look the remote side up.
    check_white: bool,
}

/// Adds the packet to `c`: to its whitelisted counters only when `white`.
#[inline(always)]
fn add_to(c: &mut XdpHostCounters, p: &Packet, how: Add, white: bool) {
    if white {
        c.whitelisted.packets += 1;
        c.whitelisted.bytes += p.ip_len as u64;
    } else {
        add_packet(&mut c.counted, p, how.class, how.new_flow);
    }
}

#[inline(always)]
fn add_packet(c: &mut HostCounters, p: &Packet, class: usize, new_flow: bool) {
    let bytes = p.ip_len as u64;
    c.packets += 1;
    c.bytes += bytes;
    c.flows += new_flow as u64;
    c.tcp_syn_packets += p.is_syn() as u64;
    c.fragments += p.fragment as u64;
    if class < proto::COUNT {
        c.proto_packets[class] += 1;
        c.proto_bytes[class] += bytes;
    }
}

/// This CPU's entry of `slot` in a slot array laid out `slot × FNM_CPUS + cpu`: `None` when
/// the index does not fit in 32 bits or this CPU's id is not below `FNM_CPUS` (the agent lays
/// the arrays out for every possible CPU, so neither happens).
#[inline(always)]
fn cpu_entry(slot: u32) -> Option<u32> {
    // SAFETY: plain read of a frozen global; volatile so the compiler cannot assume the value
    // it was compiled with. The helper has no preconditions.
    let (cpus, cpu) = unsafe {
        (
            core::ptr::read_volatile(&FNM_CPUS),
            bpf_get_smp_processor_id(),
        )
    };
    if cpu >= cpus {
        return None;
    }
    let index = slot as u64 * cpus as u64 + cpu as u64;
    (index <= u32::MAX as u64).then_some(index as u32)
}

/// Counts the packet in a dense slot and marks the slot touched; false when the slot lies
/// outside the table (the agent never hands out such slots).
#[inline(always)]
fn account_dense(slot: u32, p: &Packet, how: Add, white: bool) -> bool {
    let Some(c) = cpu_entry(slot).and_then(|i| FNM_HOSTS_D4.get_ptr_mut(i)) else {
        return false;
    };
    // SAFETY: this CPU's entry: only this CPU writes it, and a program runs on one CPU
    // without migrating.
    add_to(unsafe { &mut (*c).counters }, p, how, white);
    if let Some(word) = FNM_TOUCHED_D4.get_ptr_mut(slot >> 3) {
        mark_new_packets(word, slot);
    }
    true
}

/// Sets the touched byte of `slot` in its word `word` to `NEW_PACKETS` (after the counters:
/// the agent swaps the byte to `READ` before it reads them, see `fnm_common::touched`).
#[inline(always)]
fn mark_new_packets(word: *mut u64, slot: u32) {
    // SAFETY: byte `slot % 8` of an 8-byte map value. Shared by all CPUs: read first, so a
    // busy slot's cache line is only read; every writer stores the same value.
    unsafe {
        let byte = (word as *mut u8).add((slot & 7) as usize);
        if core::ptr::read_volatile(byte) != touched::NEW_PACKETS {
            core::ptr::write_volatile(byte, touched::NEW_PACKETS);
        }
    }
}

/// Counts the packet in the counter slot `slot` of `FNM_HOSTS_H` and marks it touched.
#[inline(always)]
fn account_slot(slot: u32, p: &Packet, how: Add, white: bool) -> bool {
    let Some(c) = cpu_entry(slot).and_then(|i| FNM_HOSTS_H.get_ptr_mut(i)) else {
        return false;
    };
    // SAFETY: this CPU's entry: only this CPU writes it, and a program runs on one CPU
    // without migrating.
    add_to(unsafe { &mut (*c).counters }, p, how, white);
    if let Some(word) = FNM_TOUCHED_H.get_ptr_mut(slot >> 3) {
        mark_new_packets(word, slot);
    }
    true
}

/// Counts the packet for the hashed host `addr`; false when every way of its bucket is taken.
/// Inlined: as a BPF function of its own (`#[inline(never)]`) every packet paid 5–9 ns more,
/// as the program also tail-calls (docs/performance.md).
#[inline(always)]
fn account_hashed(addr: &Addr, dir: u8, p: &Packet, how: Add, white: bool) -> bool {
    let (first, second) = buckets(*addr);
    let slot = match in_first_bucket(first, *addr) {
        Some(slot) => slot,
        None => {
            // The buckets go along: the call neither hashes again nor probes the first.
            let slot = fnm_host_slot(addr.hi, addr.lo, ((first as u64) << 32) | second as u64);
            if slot == u64::MAX {
                return false;
            }
            slot as u32
        }
    };
    // Masked so that the probe's eight outcomes reach the counting as one verifier state
    // (walked once, not once per way).
    account_slot(((slot & all_ones()) << 1) | dir as u32, p, how, white)
}

/// The host slot of the hashed host `addr`, claimed for it when it has none; `None` when
/// every way of both its buckets is taken.
///
/// Two buckets per address (two halves of its seeded hash), a new host going to the one with
/// more free ways: with the table twice `xdp.max_hosts`, `max_hosts` hosts fit all but never
/// overflow (one bucket per address lost 3.5 % of them at that load, simulated), where a
/// bucket of its own would need a far larger table for the same.
///
/// [`host_slot`] as a global BPF function: the verifier checks it once, on its own, instead
/// of on every path that reaches a hashed host. `buckets` holds the first bucket in its high
/// half and the second in its low half. `u64::MAX` for `None`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fnm_host_slot(hi: u64, lo: u64, buckets: u64) -> u64 {
    match host_slot(Addr { hi, lo }, (buckets >> 32) as u32, buckets as u32) {
        Some(slot) => slot as u64,
        None => u64::MAX,
    }
}

/// The rest of the lookup of `addr`, whose [`buckets`] are `first` and `second`, once
/// [`in_first_bucket`] did not find it: the second bucket, else a way claimed. The first is
/// not searched again: a CPU that admitted the host there meanwhile makes this one claim a
/// second way for it, which the agent credits to the same address.
#[inline(always)]
fn host_slot(addr: Addr, first: u32, second: u32) -> Option<u32> {
    // The owner's address as stored: network order, read as two native words.
    let (kh, kl) = (addr.hi.to_be(), addr.lo.to_be());
    let a = FNM_SLOT_OWNER.get_ptr_mut(first)? as *mut u64;
    let b = FNM_SLOT_OWNER.get_ptr_mut(second)? as *mut u64;
    if let Some(w) = find_way(b, kh, kl) {
        return Some(second * SLOT_WAYS as u32 + w);
    }
    // A new host: the bucket with more free ways first (the first on a tie).
    let (x, xb, y, yb) = if free_ways(a) >= free_ways(b) {
        (a, first, b, second)
    } else {
        (b, second, a, first)
    };
    if let Some(w) = claim_way(x, kh, kl) {
        return Some(xb * SLOT_WAYS as u32 + w);
    }
    claim_way(y, kh, kl).map(|w| yb * SLOT_WAYS as u32 + w)
}

/// The two buckets of `addr`, from the two halves of its seeded hash.
#[inline(always)]
fn buckets(addr: Addr) -> (u32, u32) {
    // SAFETY: plain reads of frozen globals; volatile so the compiler cannot assume the
    // values it was compiled with.
    let (seed, buckets) = unsafe {
        (
            core::ptr::read_volatile(&FNM_FLOW_SEED),
            core::ptr::read_volatile(&FNM_SLOT_BUCKETS),
        )
    };
    let h = mix(mix(seed ^ 0x736c_6f74, addr.hi), addr.lo);
    // Each 32-bit half scaled to the buckets (a multiply and a shift): any number of
    // buckets, not only powers of two.
    let scale = |half: u64| (((half & 0xffff_ffff) * buckets as u64) >> 32) as u32;
    (scale(h), scale(h >> 32))
}

/// The host slot of `addr` when its `first` bucket holds it: most hosts' (a new host goes to
/// its first bucket unless the second has more free ways). Inlined, where the rest of the
/// lookup is a call.
#[inline(always)]
fn in_first_bucket(first: u32, addr: Addr) -> Option<u32> {
    let ways = FNM_SLOT_OWNER.get_ptr_mut(first)? as *mut u64;
    find_way(ways, addr.hi.to_be(), addr.lo.to_be()).map(|w| first * SLOT_WAYS as u32 + w)
}

/// 8-byte words of one [`SlotOwner`].
const OWNER_WORDS: usize = core::mem::size_of::<SlotOwner>() / 8;

/// The way of the bucket at `ways` that holds the address `kh`, `kl` (as stored).
#[inline(always)]
fn find_way(ways: *mut u64, kh: u64, kl: u64) -> Option<u32> {
    for w in 0..SLOT_WAYS {
        // SAFETY: way `w` of a bucket map value; three 8-byte words of it. Other CPUs may
        // claim a way meanwhile: an address read before its state says READY is not used.
        unsafe {
            let e = ways.add(w * OWNER_WORDS);
            if core::ptr::read_volatile(e) == slot_state::READY
                && core::ptr::read_volatile(e.add(1)) == kh
                && core::ptr::read_volatile(e.add(2)) == kl
            {
                return Some(w as u32);
            }
        }
    }
    None
}

/// How many ways of the bucket at `ways` are free.
#[inline(always)]
fn free_ways(ways: *mut u64) -> u32 {
    let mut free = 0;
    for w in 0..SLOT_WAYS {
        // SAFETY: the state word of way `w` of a bucket map value.
        let state = unsafe { core::ptr::read_volatile(ways.add(w * OWNER_WORDS)) };
        free += (state == slot_state::FREE) as u32;
    }
    free
}

/// Claims a free way of the bucket at `ways` for the address `kh`, `kl`.
#[inline(always)]
fn claim_way(ways: *mut u64, kh: u64, kl: u64) -> Option<u32> {
    for w in 0..SLOT_WAYS {
        // SAFETY: as in `find_way`; the state word is 8-byte aligned (map values are).
        unsafe {
            let e = ways.add(w * OWNER_WORDS);
            if core::ptr::read_volatile(e) == slot_state::FREE
                && atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    e,
                    slot_state::FREE,
                    slot_state::CLAIMING,
                )
                .1
            {
                core::ptr::write_volatile(e.add(1), kh);
                core::ptr::write_volatile(e.add(2), kl);
                // An atomic exchange, a full barrier on every JIT (arm64 included): the agent
                // and the other CPUs read the address only once they see READY.
                atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(e, slot_state::READY);
                return Some(w as u32);
            }
        }
    }
    None
}

/// Sends the packet to the agent when its host is under attack (sampled 1 in N).
#[inline(always)]
fn sample(p: &Packet, local_dst: bool, local_src: bool, check_white: bool, stats: &mut Stats) {
    // A side whose remote end is a whitelisted source was not counted: not sampled either.
    let (addr, dir) = if local_dst && !(check_white && is_whitelisted_source(p.src, p.v4)) {
        (p.dst, direction::INCOMING)
    } else if local_src && !(check_white && is_whitelisted_source(p.dst, p.v4)) {
        (p.src, direction::OUTGOING)
    } else {
        return;
    };
    // SAFETY: plain read of a u32 map value.
    let Some(one_in) = (unsafe { FNM_SAMPLED_HOSTS.get(&host_key(addr, dir)) }).copied() else {
        return;
    };
    // SAFETY: helper without preconditions.
    if one_in > 1 && unsafe { bpf_get_prandom_u32() } % one_in != 0 {
        return;
    }
    let Some(mut entry) = FNM_SAMPLES.reserve::<PacketSample>(0) else {
        add(stats, stat::SAMPLES_LOST, 1);
        return;
    };
    entry.write(PacketSample {
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        src: p.src.bytes(),
        dst: p.dst.bytes(),
        src_port: p.src_port,
        dst_port: p.dst_port,
        ip_len: p.ip_len as u16,
        protocol: p.protocol,
        tcp_flags: p.tcp_flags,
        ttl: p.ttl,
        fragment: p.fragment as u8,
        direction: dir,
        _pad: [0; 5],
    });
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
