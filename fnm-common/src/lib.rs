//! Types shared by the fnm XDP program (kernel side) and the fnm agent (user side).
//!
//! Everything here is `#[repr(C)]`, fixed-size and free of padding surprises so the same bytes
//! mean the same thing on both sides of a BPF map. Addresses are always 16 bytes: IPv4 addresses
//! are stored IPv4-mapped (`::ffff:a.b.c.d`), so one key type serves both families.
#![no_std]

/// Names of the maps the XDP program declares; the agent looks them up by these names.
pub mod map_names {
    /// Per local IPv6 host and direction counters (`PerCpuHashMap<HostKey, XdpHostCounters>`).
    pub const HOSTS: &str = "FNM_HOSTS";
    /// Per local IPv4 host and direction counters (`PerCpuHashMap<HostKeyV4, XdpHostCounters>`):
    /// an 8-byte key hashes and compares faster than the 20-byte [`HostKey`].
    pub const HOSTS_V4: &str = "FNM_HOSTS_V4";
    /// Bounded table of recently seen 5-tuples (`LruHashMap<u64, u8>`), keyed by a seeded
    /// 64-bit hash of the 5-tuple (seed: [`FLOW_SEED`]).
    pub const FLOWS: &str = "FNM_FLOWS";
    /// Per-CPU cache in front of `FLOWS` (`PerCpuArray<u64>` of [`FLOW_CACHE_SLOTS`] 5-tuple
    /// hashes): a packet whose hash sits in its slot belongs to a known flow and skips `FLOWS`.
    pub const FLOW_CACHE: &str = "FNM_FLOW_CACHE";
    /// Dense counters of the IPv4 hosts of the local networks that got preallocated slots
    /// (see [`local16`] for the slot of an address): an mmap-able `Array<SlotCounters>` of
    /// `slots × CPUS` entries, slot `s`'s counters of CPU `c` in entry `s × CPUS + c`
    /// ([`SlotCounters`](crate::SlotCounters), a whole number of cache lines, so CPUs never share a line). The
    /// agent maps it and sums a slot's CPUs in place, without a system call or a copy. (Built
    /// before 2026-12-05: a `PerCpuArray<XdpHostCounters>` the agent still reads by batches.)
    pub const HOSTS_DENSE_V4: &str = "FNM_HOSTS_D4";
    /// Frozen global (`.rodata`, `u32`, set at load): the CPU count the per-CPU entries of
    /// `HOSTS_DENSE_V4` are laid out for (the possible CPUs). A CPU whose id is not below it
    /// counts its packets in the totals and [`HOST_TABLE_FULL`](crate::stat::HOST_TABLE_FULL) only.
    pub const CPUS: &str = "FNM_CPUS";
    /// Frozen global (`.rodata`, `u32`, set at load): buckets of `SLOT_OWNER`; a hashed
    /// host's two buckets are the two halves of its seeded hash scaled to it.
    pub const SLOT_BUCKETS: &str = "FNM_SLOT_BUCKETS";
    /// Counters of the hashed hosts (mmap-able `Array<SlotCounters>`, laid out as
    /// `HOSTS_DENSE_V4`): host slot `h` counts incoming traffic in counter slot `2h`, outgoing
    /// in `2h + 1`.
    pub const HOSTS_SLOTS: &str = "FNM_HOSTS_H";
    /// The open-addressed table of the hashed hosts (mmap-able `Array<SlotBucket>`): host
    /// slot `b × SLOT_WAYS + w` is way `w` of bucket `b`, a [`SlotOwner`](crate::SlotOwner)
    /// the program probes itself (the two buckets of the address's seeded hash, every way)
    /// and claims for a new host by an atomic compare-and-swap of its state.
    pub const SLOT_OWNER: &str = "FNM_SLOT_OWNER";
    /// Byte per counter slot of `HOSTS_SLOTS`, a [`touched`](crate::touched) state
    /// (mmap-able `Array<u64>`, as `DENSE_TOUCHED_V4`).
    pub const SLOTS_TOUCHED: &str = "FNM_TOUCHED_H";
    /// Byte per slot of `HOSTS_DENSE_V4`, a [`touched`](crate::touched) state (`Array<u64>`,
    /// mmap-able, slot `s` is byte `s % 8` of entry `s / 8`, so byte `s` of the mapping): the
    /// agent reads only the slots with packets since its last read, without a system call,
    /// and clears the bytes of idle slots with a compare-and-swap.
    pub const DENSE_TOUCHED_V4: &str = "FNM_TOUCHED_D4";
    /// The IPv4 local networks by /16 (`Array<u32>` of [`local16::BLOCKS`] entries,
    /// mmap-able), see [`local16`]. Answers "is this address local, and where are its
    /// counters" without the `LOCAL_V4` trie unless a longer prefix splits the /16. Written by
    /// the agent at load and entry by entry (one atomic store each) when a reload changes the
    /// networks.
    pub const LOCAL16_V4: &str = "FNM_LOCAL16_V4";
    /// The /24 tables of the IPv4 /16 blocks that local prefixes longer than /16 split
    /// (`Array<[u32; 256]>`, mmap-able, one entry per table): a `LOCAL16_V4` entry
    /// `local16::SPLIT | i` sends the lookup to entry `i`, whose `u32` per /24 holds the
    /// [`local16`] values, `ASK_TRIE` only for a /24 holding a prefix longer than /24; a dense
    /// value is encoded as a /16 entry would be (`DENSE` + the slot the /16's first address
    /// would have, wrapping), so the kernel decodes both alike. Written by the agent as
    /// `LOCAL16_V4` is.
    pub const LOCAL24_V4: &str = "FNM_LOCAL24_V4";
    /// Which IPv6 /32s may hold a local address (`Array<[u64; 1024]>`, one entry): bit
    /// [`local6::bit`] of an address's top 32 bits is set for every /32 a local network
    /// overlaps. Objects built before [`LOCAL6_BITS`] replaced it (the benchmark's older
    /// builds) have it; the agent still fills it for them.
    pub const LOCAL32_V6: &str = "FNM_LOCAL32_V6";
    /// The IPv6 prefilter in front of the local-network table
    /// (`Array<`[`Local6Bits`](crate::Local6Bits)`>`, one entry): bit
    /// [`local6::prefilter_bit`] of an address's top `L` bits is set for every `/L` a local
    /// network overlaps (`L` the shortest IPv6 local prefix length, within
    /// [`local6::PREFILTER_MIN`]..=[`local6::PREFILTER_MAX`]), so an address whose bit is
    /// clear is not local without a table lookup. Rewritten in place; a change of `L` goes
    /// through all bits set (see the agent's `xdp/local6.rs`).
    pub const LOCAL6_BITS: &str = "FNM_LOCAL6_BITS";
    /// Which generation of the IPv6 local-network table is in force (`Array<u32>`, one
    /// entry: 0 or 1), see [`local6`](crate::local6). The agent writes the other generation's
    /// head and buckets, then switches this entry.
    pub const LOCAL6_GEN: &str = "FNM_LOCAL6_GEN";
    /// The heads of the two generations of the IPv6 local-network table
    /// (`Array<Local6Head>`, two entries): the prefix lengths, their masks and bucket ranges.
    pub const LOCAL6_HEAD: &str = "FNM_LOCAL6_HEAD";
    /// The buckets of the IPv6 local-network table (`Array<Local6Bucket>`,
    /// [`local6::GENERATIONS`](crate::local6::GENERATIONS) ×
    /// [`local6::BUCKETS`](crate::local6::BUCKETS) entries, generation `g`'s from
    /// `g × BUCKETS`).
    pub const LOCAL6_BUCKETS: &str = "FNM_LOCAL6_BKT";
    /// Frozen global (`.rodata`, `u64`, set at load): the secret seed of the flow-table hash.
    pub const FLOW_SEED: &str = "FNM_FLOW_SEED";
    /// Local networks, IPv4 (`LpmTrie<[u8; 4], LocalNetV4>`).
    pub const LOCAL_V4: &str = "FNM_LOCAL_V4";
    /// Local networks, IPv6 (`LpmTrie<[u8; 16], u8>`).
    pub const LOCAL_V6: &str = "FNM_LOCAL_V6";
    /// Prefixes that are never dropped, IPv4.
    pub const WHITELIST_V4: &str = "FNM_WHITELIST_V4";
    /// Prefixes that are never dropped, IPv6.
    pub const WHITELIST_V6: &str = "FNM_WHITELIST_V6";
    /// Remote sources whose traffic never counts toward a host's rates (`[detection]
    /// whitelist_sources`), IPv4 (`LpmTrie<[u8; 4], u8>`).
    pub const SOURCE_WHITELIST_V4: &str = "FNM_SWL_V4";
    /// Remote sources whose traffic never counts toward a host's rates, IPv6
    /// (`LpmTrie<[u8; 16], u8>`).
    pub const SOURCE_WHITELIST_V6: &str = "FNM_SWL_V6";
    /// Which IPv4 /16 blocks hold an address of `SOURCE_WHITELIST_V4` (`Array<[u64; 1024]>`,
    /// one entry, as [`drop16`](crate::drop16)): a remote address whose block bit is clear
    /// needs no lookup in the trie.
    pub const SOURCE_WHITELIST16_V4: &str = "FNM_SWL16_V4";
    /// Drop table matched on the source address, IPv4 (`LpmTrie<[u8; 4], u32>`: the entry's
    /// counter slot in `DROP_COUNTERS`).
    pub const DROP_SRC_V4: &str = "FNM_DROP_SRC_V4";
    /// Which IPv4 /16 blocks hold an address of a drop entry (`Array<[u64; 1024]>`, entry
    /// [`drop16::SRC`] for the source table, [`drop16::DST`] for the destination table): an
    /// address whose block bit is clear needs no lookup in `DROP_SRC_V4`/`DROP_DST_V4`.
    pub const DROP16_V4: &str = "FNM_DROP16_V4";
    /// Drop table matched on the source address, IPv6.
    pub const DROP_SRC_V6: &str = "FNM_DROP_SRC_V6";
    /// Drop table matched on the destination address, IPv4.
    pub const DROP_DST_V4: &str = "FNM_DROP_DST_V4";
    /// Drop table matched on the destination address, IPv6.
    pub const DROP_DST_V6: &str = "FNM_DROP_DST_V6";
    /// Fingerprint rules per victim (`HashMap<[u8; 16], RuleSet>`).
    pub const RULES: &str = "FNM_RULES";
    /// Per-entry drop counters (`PerCpuArray<DropCounter>`, indexed by slot).
    pub const DROP_COUNTERS: &str = "FNM_DROP_COUNTERS";
    /// Global counters (`PerCpuArray<[u64; stat::COUNT]>`, one entry, indexed by
    /// [`crate::stat`]): one lookup per packet reaches every counter.
    pub const STATS: &str = "FNM_STATS";
    /// Run-time settings written by the agent (`Array<u32>`, indexed by [`crate::setting`]).
    pub const SETTINGS: &str = "FNM_SETTINGS";
    /// Hosts under attack whose packets are sampled (`HashMap<[u8; 16], u32>`).
    pub const SAMPLED_HOSTS: &str = "FNM_SAMPLED_HOSTS";
    /// Packet samples of hosts under attack (`RingBuf` of [`crate::PacketSample`]).
    pub const SAMPLES: &str = "FNM_SAMPLES";
    /// Where this CPU's walk through a tunnel's layers stands between two tail calls
    /// (`PerCpuArray`, one entry; the kernel side's own type).
    pub const WALK: &str = "FNM_WALK";
    /// The programs of the tunnel walk (`ProgramArray`, indexed by [`crate::tunnel_layer`]),
    /// filled by the agent at load.
    pub const LAYERS: &str = "FNM_LAYERS";
}

/// The programs that walk a tunnel's layers, by their index in the `LAYERS` program array:
/// the counting program tail-calls the first layer of a tunnel it finds, each layer program
/// the next one, and [`ACCOUNT`](tunnel_layer::ACCOUNT) counts the packet the walk ended on.
pub mod tunnel_layer {
    /// An Ethernet frame with up to four VLAN tags (transparent bridging, ERSPAN, pseudowire).
    pub const ETHERNET: u8 = 0;
    /// An MPLS label stack.
    pub const MPLS: u8 = 1;
    /// An IPv4 packet.
    pub const IPV4: u8 = 2;
    /// An IPv6 packet.
    pub const IPV6: u8 = 3;
    /// A GRE header (ERSPAN and PPTP's enhanced GRE included).
    pub const GRE: u8 = 4;
    /// An L2TPv2 header.
    pub const L2TP: u8 = 5;
    /// A PPP header.
    pub const PPP: u8 = 6;
    /// Counts the packet the walk ended on.
    pub const ACCOUNT: u8 = 7;
    /// Programs in the array.
    pub const COUNT: u32 = 8;
    /// The programs' names, by index.
    pub const PROGRAMS: [&str; COUNT as usize] = [
        "fnm_ethernet",
        "fnm_mpls",
        "fnm_ipv4",
        "fnm_ipv6",
        "fnm_gre",
        "fnm_l2tp",
        "fnm_ppp",
        "fnm_account",
    ];
}

/// Traffic direction as seen from the operator's networks.
pub mod direction {
    /// Destination is local.
    pub const INCOMING: u8 = 0;
    /// Source is local.
    pub const OUTGOING: u8 = 1;
    /// Neither side is local (only adds to totals).
    pub const OTHER: u8 = 2;
    /// Number of directions.
    pub const COUNT: usize = 3;
}

/// Protocol classes counted separately.
pub mod proto {
    /// TCP.
    pub const TCP: usize = 0;
    /// UDP.
    pub const UDP: usize = 1;
    /// ICMP and ICMPv6.
    pub const ICMP: usize = 2;
    /// Anything else (including non-first fragments' unknown L4).
    pub const OTHER: usize = 3;
    /// Number of protocol classes.
    pub const COUNT: usize = 4;

    /// Maps an IP protocol number to its class.
    #[inline(always)]
    pub const fn class_of(ip_protocol: u8) -> usize {
        match ip_protocol {
            6 => TCP,
            17 => UDP,
            1 | 58 => ICMP,
            _ => OTHER,
        }
    }
}

/// Indices of the global counters in the `STATS` per-CPU array.
pub mod stat {
    /// Every frame the program saw.
    pub const FRAMES: u32 = 0;
    /// Frames that are not IPv4 or IPv6 (passed).
    pub const NON_IP: u32 = 1;
    /// Truncated or malformed frames (passed).
    pub const MALFORMED: u32 = 2;
    /// Packets dropped by a source-address entry.
    pub const DROP_SRC_PACKETS: u32 = 3;
    /// IP bytes dropped by a source-address entry.
    pub const DROP_SRC_BYTES: u32 = 4;
    /// Packets dropped by a destination-address entry.
    pub const DROP_DST_PACKETS: u32 = 5;
    /// IP bytes dropped by a destination-address entry.
    pub const DROP_DST_BYTES: u32 = 6;
    /// Packets dropped by a fingerprint rule.
    pub const DROP_RULE_PACKETS: u32 = 7;
    /// IP bytes dropped by a fingerprint rule.
    pub const DROP_RULE_BYTES: u32 = 8;
    /// Packets that matched a drop entry but were let through by the whitelist.
    pub const WHITELIST_PASSED: u32 = 9;
    /// New local hosts that found the host table full (not counted per host).
    pub const HOST_TABLE_FULL: u32 = 10;
    /// Packet samples lost because the ring buffer was full.
    pub const SAMPLES_LOST: u32 = 11;
    /// Frames counted as a packet found inside a tunnel (GRE, ERSPAN, L2TPv2, IP-in-IP).
    pub const DECAPSULATED: u32 = 12;
    /// Frames carrying a tunnel whose payload was not a readable IP packet: the packet around
    /// it was counted.
    pub const TUNNEL_OUTER_COUNTED: u32 = 13;
    /// Packets counted in a local host's [`XdpHostCounters::whitelisted`] instead of the
    /// counters its rates come from, because their remote side is a whitelisted source
    /// (`[detection] whitelist_sources`); once per local side, so a packet between two local
    /// hosts that are both listed counts twice.
    ///
    /// [`XdpHostCounters::whitelisted`]: crate::XdpHostCounters::whitelisted
    pub const SOURCE_WHITELISTED_PACKETS: u32 = 14;
    /// IP bytes of those packets.
    pub const SOURCE_WHITELISTED_BYTES: u32 = 15;
    /// First index of the traffic totals: `TOTALS_BASE + total_index(direction, proto, bytes)`.
    pub const TOTALS_BASE: u32 = 16;
    /// Number of slots in the `STATS` array.
    pub const COUNT: u32 = TOTALS_BASE + (super::direction::COUNT * super::proto::COUNT * 2) as u32;

    /// Index of a totals counter (packets when `bytes` is false).
    #[inline(always)]
    pub const fn total_index(direction: u8, proto_class: usize, bytes: bool) -> u32 {
        TOTALS_BASE
            + ((direction as u32 * super::proto::COUNT as u32 + proto_class as u32) * 2)
            + bytes as u32
    }
}

/// Indices of the run-time settings in the `SETTINGS` array.
pub mod setting {
    /// Bit set of the tables that hold at least one entry ([`crate::table_flag`]); lets the
    /// program skip lookups in empty tables.
    pub const TABLE_FLAGS: u32 = 0;
    /// Number of settings.
    pub const COUNT: u32 = 4;
}

/// Bits of [`setting::TABLE_FLAGS`].
pub mod table_flag {
    /// `DROP_SRC_V4` or `DROP_SRC_V6` has entries.
    pub const DROP_SRC: u32 = 1 << 0;
    /// `DROP_DST_V4` or `DROP_DST_V6` has entries.
    pub const DROP_DST: u32 = 1 << 1;
    /// `RULES` has entries.
    pub const RULES: u32 = 1 << 2;
    /// `SAMPLED_HOSTS` has entries.
    pub const SAMPLING: u32 = 1 << 3;
    /// `SOURCE_WHITELIST_V4` or `SOURCE_WHITELIST_V6` has entries.
    pub const SOURCE_WHITELIST: u32 = 1 << 4;
}

/// Values of the `LOCAL16_V4` table, one `u32` per IPv4 /16, and the dense counter slots.
///
/// An address `a` with a dense slot base `b` (from its /16 entry or its `LOCAL_V4` entry) has
/// its counters in slot `b + 2 * (a & host_mask)` of `HOSTS_DENSE_V4` for incoming traffic and
/// the next slot for outgoing traffic (`host_mask` is `0xffff` for a /16 entry).
pub mod local16 {
    /// No local network covers any address of the /16.
    pub const NONE: u32 = 0;
    /// A local network longer than /16 lies in the /16: ask the `LOCAL_V4` trie.
    pub const ASK_TRIE: u32 = 1;
    /// Every address of the /16 is local; its counters live in the hashed hosts' table
    /// (`SLOT_OWNER`).
    pub const HASHED: u32 = 2;
    /// Every address of the /16 is local with dense counters: the value is `DENSE + base`.
    pub const DENSE: u32 = 3;
    /// Number of /16 blocks.
    pub const BLOCKS: usize = 65_536;
    /// `LocalNetV4::slot_base` of a local network whose hosts use the hash table.
    pub const NO_SLOTS: u32 = u32::MAX;
    /// Flag of a /16 entry that sends the lookup to a /24 table: `SPLIT | index` in
    /// `LOCAL24_V4` (dense entries stay below it: slots are below 2^31).
    pub const SPLIT: u32 = 0x8000_0000;
    /// Entries of a /24 table (one per /24 of the /16).
    pub const SUB_ENTRIES: usize = 256;
}

/// The IPv6 local networks: the prefilter bitmap (`LOCAL6_BITS`, before it `LOCAL32_V6`) and
/// the table by prefix length behind it.
pub mod local6 {
    /// `u64` words of the bitmap (65,536 bits).
    pub const WORDS: usize = 1024;
    /// Shortest prefix the prefilter hashes: with a local network shorter than this, the
    /// prefilter hashes /32s and a network sets a bit per /32 it overlaps (all bits below /16).
    pub const PREFILTER_MIN: u8 = 32;
    /// Longest prefix the prefilter hashes (the address's first word).
    pub const PREFILTER_MAX: u8 = 64;

    /// The bit of an address whose top 32 bits are `top` in `LOCAL32_V6` (multiplicative
    /// hash, top 16 bits); objects before `LOCAL6_BITS` only.
    #[inline(always)]
    pub fn bit(top: u32) -> u32 {
        top.wrapping_mul(0x9e37_79b1) >> 16
    }

    /// The prefix length the prefilter hashes for local networks whose shortest IPv6 prefix
    /// is `shortest` ([`PREFILTER_MAX`] without IPv6 networks).
    pub const fn prefilter_len(shortest: Option<u8>) -> u8 {
        match shortest {
            None => PREFILTER_MAX,
            Some(l) if l < PREFILTER_MIN => PREFILTER_MIN,
            Some(l) if l > PREFILTER_MAX => PREFILTER_MAX,
            Some(l) => l,
        }
    }

    /// The bit of an address whose bytes 0..8 are `hi` (big-endian) in a prefilter hashing
    /// its top `64 - shift` bits: the prefix as an integer, multiplied (Fibonacci hashing,
    /// top 16 bits of the product; no branch). The prefix is shifted down rather than
    /// masked in place: a masked /48's 16 low zero bits leave only the product's middle bits
    /// to the prefix, and 50 /48s of a /32 then passed 469 of its 65,536 /48s, not about 100.
    #[inline(always)]
    pub fn prefilter_bit(hi: u64, shift: u64) -> u32 {
        (hi.wrapping_shr(shift as u32)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> 48) as u32
    }

    /// Prefix lengths the table answers for; with more distinct IPv6 prefix lengths the
    /// program asks the `LOCAL_V6` trie ([`Local6Head::ask_trie`](crate::Local6Head)).
    pub const LENGTHS: usize = 4;
    /// Prefixes per bucket ([`Local6Bucket`](crate::Local6Bucket), one cache line).
    pub const KEYS: usize = 4;
    /// Buckets of one generation (a power of two).
    pub const BUCKETS: u32 = 4096;
    /// Generations of the table: one in force, one the agent rewrites.
    pub const GENERATIONS: u32 = 2;

    /// One round of the hash: xor a word in, multiply, fold the high half down (the flow
    /// hash's round).
    #[inline(always)]
    pub fn mix(h: u64, word: u64) -> u64 {
        let x = (h ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ (x >> 32)
    }

    /// The hash of a masked address (`hi`: bytes 0..8, `lo`: bytes 8..16, big-endian), whose
    /// low bits pick its bucket.
    #[inline(always)]
    pub fn hash(seed: u64, hi: u64, lo: u64) -> u32 {
        mix(mix(seed, hi), lo) as u32
    }

    /// The masks of a prefix length (`hi`, `lo`): an address masked with them is its prefix.
    pub const fn masks(len: u8) -> (u64, u64) {
        let hi = if len == 0 {
            0
        } else if len >= 64 {
            u64::MAX
        } else {
            u64::MAX << (64 - len)
        };
        let lo = if len <= 64 {
            0
        } else if len >= 128 {
            u64::MAX
        } else {
            u64::MAX << (128 - len)
        };
        (hi, lo)
    }
}

/// One generation of the IPv6 prefilter (`LOCAL6_BITS`): an address whose bytes 0..8 are `hi`
/// may be local only when bit [`local6::prefilter_bit`]`(hi, shift)` of `words` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local6Bits {
    /// `64 - L`: the prefix hashed is the top `L` bits of bytes 0..8.
    pub shift: u64,
    /// The bits (bit `b % 64` of word `b / 64`).
    pub words: [u64; local6::WORDS],
}

impl Default for Local6Bits {
    fn default() -> Self {
        Self {
            shift: 0,
            words: [0; local6::WORDS],
        }
    }
}

/// One prefix length of the IPv6 local-network table ([`local6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Local6Length {
    /// Mask of an address's bytes 0..8 (as a big-endian `u64`).
    pub hi_mask: u64,
    /// Mask of bytes 8..16.
    pub lo_mask: u64,
    /// First bucket of the length (generation offset included).
    pub base: u32,
    /// Buckets of the length minus one (a power of two minus one).
    pub mask: u32,
}

/// Head of one generation of the IPv6 local-network table: an address is local when, for one
/// of the first `lengths` entries of `length`, the address masked with its masks is one of
/// the keys of bucket `base + (local6::hash(seed, hi, lo) & mask)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Local6Head {
    /// Seed of [`local6::hash`], chosen by the agent per generation.
    pub seed: u64,
    /// Entries of `length` in use.
    pub lengths: u32,
    /// Non-zero: the table does not hold the networks (more lengths than
    /// [`local6::LENGTHS`], or a bucket overflowed), the `LOCAL_V6` trie answers.
    pub ask_trie: u32,
    /// The prefix lengths.
    pub length: [Local6Length; local6::LENGTHS],
}

/// A bucket of the IPv6 local-network table: [`local6::KEYS`] masked prefixes (`[hi, lo]`). A
/// bucket with fewer prefixes repeats a prefix of the same length in its free keys, so every
/// key is a local prefix and no key means "empty".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Local6Bucket {
    /// The prefixes.
    pub keys: [[u64; 2]; local6::KEYS],
}

/// Value of the `LOCAL_V4` trie: where the counters of the network's hosts live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalNetV4 {
    /// First dense slot of the network, or [`local16::NO_SLOTS`] (hosts use `HOSTS_V4`).
    pub slot_base: u32,
    /// Host bits of the network (`0xff` for a /24).
    pub host_mask: u32,
}

/// Entries of the `DROP16_V4` bitmaps (bit `b % 64` of word `b / 64` for /16 block `b`).
pub mod drop16 {
    /// Bitmap of the source drop table.
    pub const SRC: u32 = 0;
    /// Bitmap of the destination drop table.
    pub const DST: u32 = 1;
    /// `u64` words per bitmap (one bit per IPv4 /16).
    pub const WORDS: usize = 1024;
}

/// Slots of the per-CPU flow cache (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 16_384;

/// Key of the per-host counters of an IPv4 host: its address and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostKeyV4 {
    /// The local host's IPv4 address, network order.
    pub addr: [u8; 4],
    /// [`direction::INCOMING`] or [`direction::OUTGOING`].
    pub direction: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Key of the per-host counters: a local address and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostKey {
    /// The local host, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// [`direction::INCOMING`] or [`direction::OUTGOING`].
    pub direction: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Per-host, per-direction counters. Bytes are IP bytes (IPv4 total length, IPv6 payload + 40).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub bytes: u64,
    /// New flows (first sighting of a 5-tuple).
    pub flows: u64,
    /// TCP packets with SYN set and ACK clear.
    pub tcp_syn_packets: u64,
    /// IP fragments (first and later ones).
    pub fragments: u64,
    /// Packets per protocol class ([`proto`]).
    pub proto_packets: [u64; proto::COUNT],
    /// IP bytes per protocol class ([`proto`]).
    pub proto_bytes: [u64; proto::COUNT],
}

impl HostCounters {
    /// Adds `other` into `self` (wrapping, as kernel counters do).
    pub fn accumulate(&mut self, other: &HostCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.flows = self.flows.wrapping_add(other.flows);
        self.tcp_syn_packets = self.tcp_syn_packets.wrapping_add(other.tcp_syn_packets);
        self.fragments = self.fragments.wrapping_add(other.fragments);
        let mut i = 0;
        while i < proto::COUNT {
            self.proto_packets[i] = self.proto_packets[i].wrapping_add(other.proto_packets[i]);
            self.proto_bytes[i] = self.proto_bytes[i].wrapping_add(other.proto_bytes[i]);
            i += 1;
        }
    }
}

/// One CPU's [`XdpHostCounters`] of one counter slot in an mmap-able slot array, padded to
/// two whole cache lines (128 bytes): entries of different CPUs never share a line, so the
/// kernel's plain (non-atomic) increments stay each CPU's own, as in a per-CPU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// The counters.
    pub counters: XdpHostCounters,
    /// Always zero.
    pub _pad: u64,
}

/// Ways of one bucket of the hashed hosts' open-addressed table: a host lives in one of the
/// ways of the bucket its address hashes to, or is not counted per host.
pub const SLOT_WAYS: usize = 4;

pub mod touched {
    //! The states of a touched byte (`DENSE_TOUCHED_V4`, `SLOTS_TOUCHED`), one per counter
    //! slot. The program stores [`NEW_PACKETS`] after counting a packet unless the byte holds
    //! it already (a busy slot's shared cache line is then only read); only the agent stores
    //! the others.

    /// No counters to read: never counted in, or cleared by the agent as idle.
    pub const UNTOUCHED: u8 = 0;
    /// Packets counted since the agent last read the slot.
    pub const NEW_PACKETS: u8 = 1;
    /// Read by the agent (which swapped `NEW_PACKETS` for it before reading), no packet
    /// counted since: its counters have not changed.
    pub const READ: u8 = 2;
}

/// States of a [`SlotOwner`].
pub mod slot_state {
    /// Free: a new host may claim it (compare-and-swap to `CLAIMING`).
    pub const FREE: u64 = 0;
    /// Being claimed by one CPU, which writes the address, then `READY`.
    pub const CLAIMING: u64 = 1;
    /// Holds the host `addr`: its packets count in the slot's counters.
    pub const READY: u64 = 2;
    /// Being reclaimed by the agent (the host was idle): matches no packet and is claimed by
    /// none until the agent, a poll later, has read and zeroed its counters and frees it.
    pub const RETIRING: u64 = 3;
}

/// One way of the hashed hosts' table: which host a host slot holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOwner {
    /// A [`slot_state`].
    pub state: u64,
    /// The host's address (IPv4-mapped for IPv4), valid in state `READY`.
    pub addr: [u8; 16],
    /// Always zero (a power-of-two size).
    pub _pad: u64,
}

/// Bytes of one [`SlotOwner`].
pub const SLOT_OWNER_BYTES: usize = core::mem::size_of::<SlotOwner>();

/// One bucket of the hashed hosts' table (128 bytes, two cache lines).
pub type SlotBucket = [SlotOwner; SLOT_WAYS];

/// Bytes of one [`SlotCounters`] entry.
pub const SLOT_COUNTERS_BYTES: usize = core::mem::size_of::<SlotCounters>();

/// Traffic of a local host whose remote side is a whitelisted source (`[detection]
/// whitelist_sources`: the source of incoming, the destination of outgoing traffic). It is in
/// none of the [`HostCounters`], so it never counts toward a rate nor opens an attack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WhitelistedCounters {
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub bytes: u64,
}

impl WhitelistedCounters {
    /// Adds `other` into `self` (wrapping, as kernel counters do).
    pub fn accumulate(&mut self, other: &WhitelistedCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// The XDP program's per-host, per-direction value: the counters the rates come from, and
/// the whitelisted sources' traffic apart. 15 counters of 8 bytes: 240 bytes per dense local
/// address (both directions) and CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpHostCounters {
    /// Every packet except the whitelisted sources' ones.
    pub counted: HostCounters,
    /// The whitelisted sources' packets.
    pub whitelisted: WhitelistedCounters,
}

impl XdpHostCounters {
    /// Adds `other` into `self` (wrapping, as kernel counters do).
    pub fn accumulate(&mut self, other: &XdpHostCounters) {
        self.counted.accumulate(&other.counted);
        self.whitelisted.accumulate(&other.whitelisted);
    }
}

/// A 5-tuple (ICMP type and code stand in the ports): the flow key of the userspace sources.
/// The XDP flow table keys the same 5-tuple by a seeded 64-bit hash instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address, IPv4-mapped for IPv4.
    pub src: [u8; 16],
    /// Destination address, IPv4-mapped for IPv4.
    pub dst: [u8; 16],
    /// Source port (ICMP: type).
    pub src_port: u16,
    /// Destination port (ICMP: code).
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// What one drop entry or rule dropped (one slot of `DROP_COUNTERS`, per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounter {
    /// Packets dropped by this entry.
    pub packets: u64,
    /// IP bytes dropped by this entry.
    pub bytes: u64,
}

/// Most fingerprint rules one victim can carry.
pub const MAX_RULES_PER_HOST: usize = 4;

/// One fingerprint rule: traffic to the victim matching all set fields is dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropRule {
    /// IP protocol number; 0 matches any.
    pub protocol: u8,
    /// TCP flags that must be set (after masking with `tcp_flags_mask`).
    pub tcp_flags_value: u8,
    /// TCP flags that are compared; 0 ignores flags.
    pub tcp_flags_mask: u8,
    /// Non-zero when the rule also matches non-first fragments (which carry no ports).
    pub match_fragments: u8,
    /// Source port; 0 matches any.
    pub src_port: u16,
    /// Destination port; 0 matches any.
    pub dst_port: u16,
    /// This rule's counter slot in `DROP_COUNTERS`.
    pub slot: u32,
}

/// The fingerprint rules of one victim, keyed by its address in `RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// Rules in use, `0..=MAX_RULES_PER_HOST`.
    pub count: u32,
    /// Always zero.
    pub _pad: u32,
    /// The rules; only the first `count` are used.
    pub rules: [DropRule; MAX_RULES_PER_HOST],
}

/// One packet sampled from a host under attack, sent to the agent through a ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketSample {
    /// `bpf_ktime_get_ns()` at capture.
    pub timestamp_ns: u64,
    /// Source address, IPv4-mapped for IPv4.
    pub src: [u8; 16],
    /// Destination address, IPv4-mapped for IPv4.
    pub dst: [u8; 16],
    /// Source port (ICMP: type).
    pub src_port: u16,
    /// Destination port (ICMP: code).
    pub dst_port: u16,
    /// IP bytes.
    pub ip_len: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// 1 when the packet is a fragment.
    pub fragment: u8,
    /// 0 incoming, 1 outgoing.
    pub direction: u8,
    /// Always zero.
    pub _pad: [u8; 5],
}

/// Returns the IPv4-mapped IPv6 form of an IPv4 address.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, contain only integers and arrays of integers, and
    // have no implicit padding (every gap is an explicit `_pad` field).
    unsafe impl aya::Pod for super::HostKey {}
    unsafe impl aya::Pod for super::HostKeyV4 {}
    unsafe impl aya::Pod for super::LocalNetV4 {}
    unsafe impl aya::Pod for super::Local6Head {}
    unsafe impl aya::Pod for super::Local6Bucket {}
    unsafe impl aya::Pod for super::Local6Bits {}
    unsafe impl aya::Pod for super::HostCounters {}
    unsafe impl aya::Pod for super::XdpHostCounters {}
    unsafe impl aya::Pod for super::SlotCounters {}
    unsafe impl aya::Pod for super::SlotOwner {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::DropCounter {}
    unsafe impl aya::Pod for super::DropRule {}
    unsafe impl aya::Pod for super::RuleSet {}
    unsafe impl aya::Pod for super::PacketSample {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<HostKey>(), 20);
        assert_eq!(size_of::<Local6Bucket>(), 64);
        assert_eq!(size_of::<Local6Length>(), 24);
        assert_eq!(size_of::<Local6Head>(), 16 + 24 * local6::LENGTHS);
        assert_eq!(size_of::<Local6Bits>(), 8 + 8 * local6::WORDS);
        assert_eq!(size_of::<HostKeyV4>(), 8);
        assert_eq!(size_of::<HostCounters>(), 13 * 8);
        assert_eq!(size_of::<XdpHostCounters>(), 15 * 8);
        assert_eq!(size_of::<SlotCounters>(), 128);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<DropRule>(), 12);
        assert_eq!(size_of::<RuleSet>(), 8 + 4 * 12);
        assert_eq!(size_of::<PacketSample>(), 8 + 32 + 6 + 5 + 5);
    }

    #[test]
    fn totals_indices_are_dense_and_in_range() {
        let mut seen = [false; stat::COUNT as usize];
        for d in 0..direction::COUNT as u8 {
            for p in 0..proto::COUNT {
                for b in [false, true] {
                    let i = stat::total_index(d, p, b) as usize;
                    assert!(!seen[i]);
                    seen[i] = true;
                }
            }
        }
        assert!(seen[stat::TOTALS_BASE as usize..].iter().all(|s| *s));
    }
}
