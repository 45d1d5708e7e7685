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
//! New hosts of the hash tables are inserted from `FNM_ZERO_HOST`, an all-zero map value,
//! never from a zeroed stack value: LLVM zeroes 120 bytes with a call to a byte-by-byte
//! `memset` whose loop the verifier walks again on every path that reaches it (that alone
//! took `fnm_xdp` past the verifier's limit of 1,000,000 instructions once the tunnel branch
//! was added; with the map value it verifies in about 610,000).
#![no_std]
#![no_main]
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
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray,
        ProgramArray, RingBuf,
    },
    programs::XdpContext,
};
use fnm_common::{
    direction, drop16, local16, local6, proto, setting, stat, table_flag, tunnel_layer,
    DropCounter, HostCounters, HostKey, HostKeyV4, Local6Bucket, Local6Head, LocalNetV4,
    PacketSample, RuleSet, SlotCounters, XdpHostCounters, FLOW_CACHE_SLOTS, MAX_RULES_PER_HOST,
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

/// Hashed hosts (IPv6, and IPv4 beyond the dense slots): LRU tables, so a flood of spoofed
/// new destinations evicts hosts that have not been touched lately instead of locking every
/// new host (a real victim) out once the table is full; a host that keeps receiving packets
/// is never the least recently used. The agent reads every entry each poll, so an evicted
/// host loses at most what it got since the last poll.
#[map]
static FNM_HOSTS: LruPerCpuHashMap<HostKey, XdpHostCounters> =
    LruPerCpuHashMap::with_max_entries(HOSTS_DEFAULT, 0);
#[map]
static FNM_HOSTS_V4: LruPerCpuHashMap<HostKeyV4, XdpHostCounters> =
    LruPerCpuHashMap::with_max_entries(HOSTS_DEFAULT, 0);
/// Dense IPv4 counters, one [`SlotCounters`] per slot and CPU (`slot × FNM_CPUS + cpu`):
/// mmap-able, so the agent sums a slot's CPUs in place instead of copying them out; each CPU
/// writes only its own entries, whole cache lines apart.
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
/// One bit per hash of the IPv6 /32s local networks overlap ([`local6`]).
#[map]
static FNM_LOCAL32_V6: Array<[u64; local6::WORDS]> = Array::with_max_entries(1, 0);
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
/// One all-zero host counters value, never written: a new host is inserted from it, so that no
/// program zeroes 120 bytes itself (LLVM does it with a call to a byte-by-byte `memset`, whose
/// loop the verifier walks anew on every path that reaches it).
#[map]
static FNM_ZERO_HOST: Array<XdpHostCounters> = Array::with_max_entries(1, 0);
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
        Ok(packet) => handle(&packet, stats),
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
#[derive(Clone, Copy, PartialEq, Eq)]
enum Local {
    /// The address is not local.
    No,
    /// Local, counted in the hash table of its family.
    Hashed,
    /// Local IPv4 with dense counters: the incoming slot (outgoing is the next one).
    Slot(u32),
}

impl Local {
    #[inline(always)]
    fn is_local(self) -> bool {
        self != Local::No
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
            return Local::No;
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
            local16::NONE => Local::No,
            local16::HASHED => Local::Hashed,
            local16::ASK_TRIE => local_trie_v4(a),
            base => Local::Slot(
                base.wrapping_sub(local16::DENSE)
                    .wrapping_add((a & 0xffff) << 1),
            ),
        }
    } else {
        // Most remote addresses share no /32 with a local network: one bit answers.
        let Some(bitmap) = FNM_LOCAL32_V6.get(0) else {
            return Local::No;
        };
        let bit = local6::bit((addr.hi >> 32) as u32);
        if bitmap[(bit >> 6) as usize & (local6::WORDS - 1)] & (1u64 << (bit & 63)) == 0 {
            return Local::No;
        }
        if fnm_local6(addr.hi, addr.lo) != 0 {
            Local::Hashed
        } else {
            Local::No
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
        None => Local::No,
        Some(net) if net.slot_base == local16::NO_SLOTS => Local::Hashed,
        Some(net) => Local::Slot(net.slot_base.wrapping_add((a & net.host_mask) << 1)),
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
    if side == Local::No {
        return;
    }
    let white = how.check_white && is_whitelisted_source(remote, p.v4);
    if white {
        add(stats, stat::SOURCE_WHITELISTED_PACKETS, 1);
        add(stats, stat::SOURCE_WHITELISTED_BYTES, p.ip_len as u64);
    }
    let counted = match side {
        Local::No => return,
        Local::Slot(incoming) => account_dense(incoming.wrapping_add(dir as u32), p, how, white),
        Local::Hashed if p.v4 => account_v4(&host_key_v4(addr, dir), p, how, white),
        Local::Hashed => account(&host_key(addr, dir), p, how, white),
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

#[inline(always)]
fn host_key_v4(addr: Addr, dir: u8) -> HostKeyV4 {
    HostKeyV4 {
        addr: addr.v4_addr().to_be_bytes(),
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
        // SAFETY: byte `slot % 8` of an 8-byte map value. Shared by all CPUs: read first, so a
        // busy slot's cache line is only read; every writer stores the same 1.
        unsafe {
            let byte = (word as *mut u8).add((slot & 7) as usize);
            if core::ptr::read_volatile(byte) == 0 {
                core::ptr::write_volatile(byte, 1);
            }
        }
    }
    true
}

/// Counts the packet in the IPv6 host table; false when a new host could not be inserted.
#[inline(always)]
fn account(key: &HostKey, p: &Packet, how: Add, white: bool) -> bool {
    if let Some(c) = FNM_HOSTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        add_to(unsafe { &mut *c }, p, how, white);
        return true;
    }
    let Some(zero) = FNM_ZERO_HOST.get(0) else {
        return false;
    };
    // BPF_NOEXIST = 1: another CPU may have inserted the host meanwhile; either way the
    // host is there now unless the table is full.
    let _ = FNM_HOSTS.insert(key, zero, 1);
    if let Some(c) = FNM_HOSTS.get_ptr_mut(key) {
        // SAFETY: as above.
        add_to(unsafe { &mut *c }, p, how, white);
        return true;
    }
    false
}

/// Counts the packet in the IPv4 host hash table; false when a new host could not be inserted.
#[inline(always)]
fn account_v4(key: &HostKeyV4, p: &Packet, how: Add, white: bool) -> bool {
    if let Some(c) = FNM_HOSTS_V4.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        add_to(unsafe { &mut *c }, p, how, white);
        return true;
    }
    let Some(zero) = FNM_ZERO_HOST.get(0) else {
        return false;
    };
    // BPF_NOEXIST = 1: another CPU may have inserted the host meanwhile; either way the
    // host is there now unless the table is full.
    let _ = FNM_HOSTS_V4.insert(key, zero, 1);
    if let Some(c) = FNM_HOSTS_V4.get_ptr_mut(key) {
        // SAFETY: as above.
        add_to(unsafe { &mut *c }, p, how, white);
        return true;
    }
    false
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
