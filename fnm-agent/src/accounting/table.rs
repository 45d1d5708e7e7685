//! The bounded host table and who gets evicted from it: what keeps a flood of new addresses
//! from blinding the accounting.
//!
//! # Why
//!
//! Before this table, the host table simply stopped admitting new hosts once full (196,608 with
//! the default XDP sizing) and forgot a host only after an hour without traffic. One spoofed
//! NetFlow exporter naming a million distinct local destinations filled it in seconds; from
//! then on every *new* host, on every path (flows, XDP IPv4 and IPv6, capture), was not counted
//! for an hour: a real victim showed 0 packets and no attack was ever opened. RSS reached
//! 420 MB.
//!
//! # What the table guarantees
//!
//! * **Bounded.** At most `max_hosts` hosts, and at most a budget per *origin* (who brought
//!   the host in): `max_hosts_per_exporter` for each flow exporter (its UDP source address, per
//!   collector), `max_hosts_per_source` for XDP and for capture. Memory is therefore bounded by
//!   `max_hosts` times the per-host cost (see `docs/security.md` for the measured bytes/host).
//! * **A flood cannot starve real hosts.** A new host always gets a chance: when its origin is
//!   at its budget it takes the place of one of that origin's *own* hosts (its oldest
//!   unproven host in probation, else the least busy of a sample of its hosts), so a spoofed
//!   exporter churns among its own fakes and never touches another exporter's or XDP's hosts;
//!   when the whole table is full it takes the place of the least busy host anywhere, in this
//!   order:
//!   1. **idle** hosts (no packet in the rate window), longest idle first (the order is worked
//!      out at each tick while the table is more than 7/8 full);
//!   2. hosts still **in probation**: recently admitted hosts, oldest first, that have not shown
//!      [`QUALIFY_PACKETS`] packets in the rate window. A flood of one-packet addresses is
//!      admitted and churns through probation in O(1) per address; a host with real traffic
//!      qualifies and stays;
//!   3. the **lowest-rate** host of a sample of [`SAMPLE`] hosts (every host when there are at
//!      most [`SCAN_ALL`]), and only when it is not busier than the newcomer's first packets.
//!
//!   Protected hosts (watched, under attack, mitigated: the engine says which) are never
//!   evicted, and neither is a host busier than the newcomer (the newcomer is then refused and
//!   counted in `fnm_hosts_table_full_total{source}`).
//! * **Exact while present.** A host in the table is counted exactly; eviction only happens
//!   when a table or budget is full. A host evicted and seen again starts from zero (its rates
//!   from an empty window, so they are never overstated).
//!
//! Every eviction is counted by reason (`fnm_hosts_evicted_total{reason}`: `idle`,
//! `low_rate`, `budget`, and `expired` for hosts forgotten after an hour without traffic).
//!
//! Slots are stable while a host is in the table (freed slots are reused), so probation and
//! idle queues hold (slot, generation) tickets and a stale ticket costs one comparison.
//!
//! # Numbers (2-core machine shared with other builds)
//!
//! * A host costs 733 bytes of RSS seen one way and 1,360 bytes seen both ways while it has
//!   traffic in the rate window, 284 bytes once its window is empty (`tests/host_memory.rs`,
//!   the record in [`super::host`]): a direction that never had traffic allocates nothing.
//! * A full table admits about 4.7 M new hosts/s on a quiet machine, each evicting another
//!   (`new_hosts_full_table` in `benches/accounting.rs`); hosts already present cost what they
//!   did before the table was bounded, but for 5 % on a flood of known flows to one host.
//! * End to end (`tests/table_exhaustion_e2e.rs`, release build): a spoofed NetFlow stream of
//!   3.9-4.6 M records/s naming 1 M destinations, from one exporter address or from 16 together
//!   four times the table, and a victim flooded from another exporter is detected 0.12 s and
//!   0.80 s after its flood starts, with the agent's peak RSS at 101 and 153 MiB (debug build:
//!   0.16-0.82 s).

use super::host_index::HostIndex;
use super::Host;
use crate::traffic::Source;
use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use std::{collections::VecDeque, net::IpAddr};

/// Packets in the rate window (both directions) that take a host out of probation.
pub const QUALIFY_PACKETS: u64 = 2;
/// Hosts sampled to find the least busy one when neither idle nor probation hosts are left.
pub const SAMPLE: usize = 8;
/// Sets of at most this many hosts are scanned whole instead of sampled.
pub const SCAN_ALL: usize = 64;
/// Distinct origins (flow exporters) tracked; records of further exporters share their
/// collector's origin (and its budget).
pub const MAX_ORIGINS: usize = 4096;
/// Probation tickets popped per admission at most (stale tickets included).
const PROBATION_POPS: usize = 64;
/// Probation hosts that qualified, skipped per admission at most before sampling.
const PROBATION_QUALIFIED: usize = 8;

/// The seeded hash of the host index: an address as one 128-bit word (IPv4 as its IPv4-mapped
/// IPv6 form, which can only collide with that IPv6 address; the index compares addresses),
/// one folded multiply with a per-process random seed. An attacker choosing addresses cannot
/// aim at a bucket without the seed.
#[derive(Debug, Clone, Default)]
pub(super) struct IpHasher(foldhash::fast::RandomState);

impl IpHasher {
    /// The hash of `ip`.
    #[inline]
    pub(super) fn hash(&self, ip: IpAddr) -> u64 {
        let word = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        std::hash::BuildHasher::hash_one(&self.0, word)
    }
}

/// Who brought a host into the table; the host counts against that origin's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A whole source: XDP, capture, replay, or the flow records of exporters beyond
    /// [`MAX_ORIGINS`].
    Source(Source),
    /// One flow exporter (its UDP source address) of the `sflow` or `netflow` collector.
    Exporter(Source, IpAddr),
}

impl Origin {
    /// The source the origin belongs to.
    pub fn source(&self) -> Source {
        match self {
            Origin::Source(s) | Origin::Exporter(s, _) => *s,
        }
    }
}

/// Size limits of the host table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Most hosts tracked.
    pub max_hosts: usize,
    /// Most hosts one flow exporter may bring in.
    pub per_exporter: usize,
    /// Most hosts XDP, capture or replay may bring in (each).
    pub per_source: usize,
}

impl HostLimits {
    /// `max_hosts` with no budget below it.
    pub fn unbudgeted(max_hosts: usize) -> Self {
        Self {
            max_hosts,
            per_exporter: max_hosts,
            per_source: max_hosts,
        }
    }

    fn budget(&self, origin: Origin) -> usize {
        match origin {
            Origin::Exporter(..) | Origin::Source(Source::Sflow | Source::Netflow) => {
                self.per_exporter
            }
            Origin::Source(_) => self.per_source,
        }
        .clamp(1, self.max_hosts.max(1))
    }
}

/// Why a host left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// Made room while it had no traffic in the rate window.
    Idle,
    /// Made room as the least busy host (probation or sample).
    LowRate,
    /// Made room for a newcomer of its own origin, which was at its budget.
    Budget,
    /// Forgotten after the idle timeout (an hour in the agent).
    Expired,
}

impl EvictReason {
    /// Every reason, in [`EvictReason::index`] order.
    pub const ALL: [EvictReason; 4] = [
        EvictReason::Idle,
        EvictReason::LowRate,
        EvictReason::Budget,
        EvictReason::Expired,
    ];

    /// Position in [`EvictReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Idle => "idle",
            EvictReason::LowRate => "low_rate",
            EvictReason::Budget => "budget",
            EvictReason::Expired => "expired",
        }
    }
}

/// Counters of the host table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Hosts evicted, by [`EvictReason::index`].
    pub evicted: [u64; EvictReason::ALL.len()],
    /// New hosts refused (every candidate protected or busier), by [`Source::index`] of the
    /// record or delta that brought them.
    pub full: [u64; Source::ALL.len()],
}

/// A slot as it was when queued: stale once the slot was freed or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    slot: u32,
    generation: u32,
}

#[derive(Debug, Default)]
struct Entry {
    ip: Option<IpAddr>,
    generation: u32,
    origin: u16,
    /// Position of this slot in its origin's `members`.
    member_pos: u32,
    host: Host,
}

#[derive(Debug)]
struct OriginState {
    key: Origin,
    budget: usize,
    /// Slots this origin brought in.
    members: Vec<u32>,
    /// Its probation: admissions, oldest first.
    probation: VecDeque<Ticket>,
}

/// The bounded host table (see the module documentation).
#[derive(Debug)]
pub(super) struct HostTable {
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// Slots by address hash (the address is the entry's), in buckets a batch prefetches.
    index: HostIndex,
    hasher: IpHasher,
    live: usize,
    limits: HostLimits,
    origins: Vec<Option<OriginState>>,
    origin_index: HashMap<Origin, u16>,
    free_origins: Vec<u16>,
    /// Probation of the whole table: admissions, oldest first.
    probation: VecDeque<Ticket>,
    /// Idle hosts, longest idle last (popped first); rebuilt at each tick under pressure.
    idle: Vec<Ticket>,
    protected: HashSet<IpAddr>,
    rng: u64,
    stats: TableStats,
    /// Admissions and evictions so far: a ranking made at a tick holds while this is unchanged
    /// (rates change only at ticks).
    changes: u64,
}

impl HostTable {
    pub(super) fn new(limits: HostLimits) -> Self {
        let limits = HostLimits {
            max_hosts: limits.max_hosts.max(1),
            ..limits
        };
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            index: HostIndex::default(),
            hasher: IpHasher::default(),
            live: 0,
            limits,
            origins: Vec::new(),
            origin_index: HashMap::new(),
            free_origins: Vec::new(),
            probation: VecDeque::new(),
            idle: Vec::new(),
            protected: HashSet::new(),
            // Any odd seed; sampling needs spread, not secrecy (an attacker cannot see whom
            // a sample picks, and the policy holds whatever is picked).
            rng: ahash::RandomState::new().hash_one(0x5eed_u64) | 1,
            changes: 0,
            stats: TableStats::default(),
        }
    }

    /// Seeds the sampling of eviction candidates (tests that compare two tables).
    #[cfg(test)]
    pub(super) fn seed_sampling(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    pub(super) fn limits(&self) -> HostLimits {
        self.limits
    }

    pub(super) fn stats(&self) -> TableStats {
        self.stats
    }

    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Admissions and evictions so far (see the field).
    pub(super) fn changes(&self) -> u64 {
        self.changes
    }

    /// The slot of `ip` when it is in the table.
    #[inline]
    pub(super) fn get(&self, ip: IpAddr) -> Option<u32> {
        self.get_hashed(ip, self.hasher.hash(ip))
    }

    /// The index's hash of `ip` (for [`HostTable::get_hashed`] and
    /// [`HostTable::slot_or_admit_hashed`]: a batch hashes its hosts first).
    #[inline]
    pub(super) fn hash(&self, ip: IpAddr) -> u64 {
        self.hasher.hash(ip)
    }

    /// [`HostTable::get`] with `hash` = [`HostTable::hash`] of `ip`.
    #[inline]
    pub(super) fn get_hashed(&self, ip: IpAddr, hash: u64) -> Option<u32> {
        let entries = &self.entries;
        self.index.find(hash, |s| {
            entries.get(s as usize).is_some_and(|e| e.ip == Some(ip))
        })
    }

    /// Starts loading the entry a lookup of `hash` will most likely check (call it a while
    /// after [`HostTable::prefetch_index`], when the bucket is in cache).
    #[inline(always)]
    pub(super) fn prefetch_entry(&self, hash: u64) {
        if let Some(slot) = self.index.candidate(hash) {
            if let Some(e) = self.entries.get(slot as usize) {
                let start: *const u8 = (e as *const Entry).cast();
                crate::capture::prefetch_line(start);
                crate::capture::prefetch_line(start.wrapping_add(std::mem::size_of::<Entry>() - 1));
            }
        }
    }

    /// Starts loading the index bucket a lookup of `hash` reads first (a batch hashes its
    /// hosts, prefetches, and looks them up after).
    #[inline(always)]
    pub(super) fn prefetch_index(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// Starts loading the counters `slot` keeps for direction `dir` (a hint: a batch looks its
    /// hosts up first and credits them after).
    #[inline]
    pub(super) fn prefetch(&self, slot: u32, dir: usize) {
        if let Some(e) = self.entries.get(slot as usize) {
            e.host.dirs[dir].prefetch();
        }
    }

    /// True when `slot` holds `ip` (a cached slot is still that host's).
    #[inline]
    pub(super) fn holds(&self, slot: u32, ip: IpAddr) -> bool {
        self.entries.get(slot as usize).and_then(|e| e.ip) == Some(ip)
    }

    #[inline]
    pub(super) fn host_mut(&mut self, slot: u32) -> &mut Host {
        &mut self.entries[slot as usize].host
    }

    pub(super) fn host(&self, ip: IpAddr) -> Option<&Host> {
        let slot = self.get(ip)?;
        Some(&self.entries[slot as usize].host)
    }

    /// Every host in the table.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Host)> {
        self.entries
            .iter()
            .filter_map(|e| e.ip.as_ref().map(|ip| (ip, &e.host)))
    }

    /// Calls `f` on every host in the table.
    pub(super) fn for_each_host(&mut self, mut f: impl FnMut(&mut Host)) {
        for e in self.entries.iter_mut().filter(|e| e.ip.is_some()) {
            f(&mut e.host);
        }
    }

    /// Replaces the set of hosts that are never evicted.
    pub(super) fn set_protected(&mut self, hosts: HashSet<IpAddr>) {
        self.protected = hosts;
    }

    /// Adds one host to the protected set.
    pub(super) fn protect(&mut self, host: IpAddr) {
        self.protected.insert(host);
    }

    #[inline]
    fn is_protected(&self, ip: IpAddr) -> bool {
        !self.protected.is_empty() && self.protected.contains(&ip)
    }

    /// The slot of `ip`, admitting it for `origin` when new; `packets` is what its first
    /// record or delta brings (it may only displace a host no busier than that). `None` when
    /// it could not be admitted (counted per source).
    #[inline]
    pub(super) fn slot_or_admit(
        &mut self,
        ip: IpAddr,
        origin: Origin,
        packets: u64,
    ) -> Option<u32> {
        self.slot_or_admit_hashed(ip, self.hasher.hash(ip), origin, packets)
    }

    /// [`HostTable::slot_or_admit`] with `hash` = [`HostTable::hash`] of `ip`.
    #[inline]
    pub(super) fn slot_or_admit_hashed(
        &mut self,
        ip: IpAddr,
        hash: u64,
        origin: Origin,
        packets: u64,
    ) -> Option<u32> {
        if let Some(slot) = self.get_hashed(ip, hash) {
            return Some(slot);
        }
        self.admit(ip, hash, origin, packets.max(1))
    }

    fn admit(&mut self, ip: IpAddr, hash: u64, origin: Origin, packets: u64) -> Option<u32> {
        let oid = self.origin_id(origin);
        let (held, budget) = {
            let o = self.origin(oid);
            (o.members.len(), o.budget)
        };
        // A budget as large as the table is no budget: the table's own policy applies.
        if held >= budget && budget < self.limits.max_hosts && !self.evict_from_origin(oid, packets)
        {
            return self.refuse(origin);
        }
        if self.live >= self.limits.max_hosts && !self.make_room(packets) {
            return self.refuse(origin);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.entries.push(Entry::default());
                (self.entries.len() - 1) as u32
            }
        };
        let global_cap = self.limits.max_hosts / 4;
        let o = self.origins[oid as usize]
            .as_mut()
            .expect("registered origin");
        let e = &mut self.entries[slot as usize];
        e.ip = Some(ip);
        e.generation = e.generation.wrapping_add(1);
        e.origin = oid;
        e.member_pos = o.members.len() as u32;
        e.host = Host::default();
        let ticket = Ticket {
            slot,
            generation: e.generation,
        };
        o.members.push(slot);
        push_capped(&mut o.probation, ticket, o.budget / 4);
        push_capped(&mut self.probation, ticket, global_cap);
        let entries = &self.entries;
        let hasher = &self.hasher;
        self.index.insert(hash, slot, |s| {
            entries[s as usize].ip.map_or(0, |ip| hasher.hash(ip))
        });
        self.live += 1;
        self.changes += 1;
        Some(slot)
    }

    fn refuse(&mut self, origin: Origin) -> Option<u32> {
        self.stats.full[origin.source().index()] += 1;
        None
    }

    fn origin(&self, oid: u16) -> &OriginState {
        self.origins[oid as usize]
            .as_ref()
            .expect("registered origin")
    }

    /// The id of `origin`, registered when new. Exporters beyond [`MAX_ORIGINS`] share their
    /// collector's origin (`Origin::Source`), whose budget is an exporter's.
    fn origin_id(&mut self, origin: Origin) -> u16 {
        if let Some(id) = self.origin_index.get(&origin) {
            return *id;
        }
        let id = match self.free_origins.pop() {
            Some(id) => id,
            // Source origins are never released: at most MAX_ORIGINS + the sources.
            None if self.origins.len() < MAX_ORIGINS || matches!(origin, Origin::Source(_)) => {
                self.origins.push(None);
                (self.origins.len() - 1) as u16
            }
            None => return self.origin_id(Origin::Source(origin.source())),
        };
        self.origins[id as usize] = Some(OriginState {
            key: origin,
            budget: self.limits.budget(origin),
            members: Vec::new(),
            probation: VecDeque::new(),
        });
        self.origin_index.insert(origin, id);
        id
    }

    /// Frees one place in the budget of origin `oid` for a newcomer of it.
    fn evict_from_origin(&mut self, oid: u16, packets: u64) -> bool {
        let mut probation = std::mem::take(
            &mut self.origins[oid as usize]
                .as_mut()
                .expect("registered origin")
                .probation,
        );
        let found = self.pop_probation(&mut probation);
        let picks = self.random_picks();
        let o = self.origins[oid as usize]
            .as_mut()
            .expect("registered origin");
        o.probation = probation;
        let found = found.or_else(|| {
            let members = &self.origin(oid).members;
            self.least_busy(members.len(), |i| members[i], packets, &picks)
        });
        match found {
            Some(slot) => {
                self.evict(slot, EvictReason::Budget);
                true
            }
            None => false,
        }
    }

    /// Frees one place in the table for a newcomer that brings `packets`.
    fn make_room(&mut self, packets: u64) -> bool {
        while let Some(t) = self.idle.pop() {
            if let Some(slot) = self.valid(t) {
                if self.score(slot) == 0 && !self.slot_protected(slot) {
                    self.evict(slot, EvictReason::Idle);
                    return true;
                }
            }
        }
        let mut probation = std::mem::take(&mut self.probation);
        let found = self.pop_probation(&mut probation);
        self.probation = probation;
        let picks = self.random_picks();
        let found =
            found.or_else(|| self.least_busy(self.entries.len(), |i| i as u32, packets, &picks));
        match found {
            Some(slot) => {
                let reason = if self.score(slot) == 0 {
                    EvictReason::Idle
                } else {
                    EvictReason::LowRate
                };
                self.evict(slot, reason);
                true
            }
            None => false,
        }
    }

    /// The oldest host of `probation` below [`QUALIFY_PACKETS`]. Hosts that qualified, and
    /// protected ones, leave probation on the way: from then on only the idle queue or a sample
    /// can pick them.
    fn pop_probation(&self, probation: &mut VecDeque<Ticket>) -> Option<u32> {
        let mut qualified = 0;
        for _ in 0..PROBATION_POPS {
            let t = probation.pop_front()?;
            let Some(slot) = self.valid(t) else { continue };
            if self.slot_protected(slot) {
                continue;
            }
            if self.score(slot) < QUALIFY_PACKETS {
                return Some(slot);
            }
            qualified += 1;
            if qualified >= PROBATION_QUALIFIED {
                return None;
            }
        }
        None
    }

    /// The least busy unprotected host among `n` candidates (`slot_at(i)` for `i < n`): every
    /// one of them when at most [`SCAN_ALL`], else those at the `picks`. Busiest last: fewest
    /// packets in the window, then longest idle. Only returned when no busier than `packets`.
    fn least_busy(
        &self,
        n: usize,
        slot_at: impl Fn(usize) -> u32,
        packets: u64,
        picks: &[u64; SAMPLE],
    ) -> Option<u32> {
        let mut best: Option<(u64, u64, u32)> = None;
        let mut consider = |slot: u32| {
            let e = &self.entries[slot as usize];
            let Some(ip) = e.ip else { return };
            if self.is_protected(ip) {
                return;
            }
            let key = (self.score(slot), last_active(&e.host), slot);
            if best.is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                best = Some(key);
            }
        };
        if n <= SCAN_ALL {
            (0..n).for_each(|i| consider(slot_at(i)));
        } else {
            picks
                .iter()
                .for_each(|r| consider(slot_at((r % n as u64) as usize)));
        }
        best.filter(|b| b.0 <= packets).map(|b| b.2)
    }

    fn random_picks(&mut self) -> [u64; SAMPLE] {
        std::array::from_fn(|_| {
            // xorshift64
            let mut x = self.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.rng = x;
            x
        })
    }

    #[inline]
    fn valid(&self, t: Ticket) -> Option<u32> {
        let e = self.entries.get(t.slot as usize)?;
        (e.ip.is_some() && e.generation == t.generation).then_some(t.slot)
    }

    fn slot_protected(&self, slot: u32) -> bool {
        self.entries[slot as usize]
            .ip
            .is_some_and(|ip| self.is_protected(ip))
    }

    /// Packets of a host in the rate window, both directions, the slot being measured
    /// included.
    #[inline]
    fn score(&self, slot: u32) -> u64 {
        score(&self.entries[slot as usize].host)
    }

    fn evict(&mut self, slot: u32, reason: EvictReason) {
        let e = &mut self.entries[slot as usize];
        let Some(ip) = e.ip.take() else { return };
        // The counters and the rate window go back to the allocator now.
        e.host = Host::default();
        let (oid, pos) = (e.origin, e.member_pos as usize);
        self.index.remove(self.hasher.hash(ip), slot);
        if let Some(o) = self.origins[oid as usize].as_mut() {
            o.members.swap_remove(pos);
            if let Some(moved) = o.members.get(pos) {
                self.entries[*moved as usize].member_pos = pos as u32;
            }
        }
        self.free.push(slot);
        self.live -= 1;
        self.changes += 1;
        self.stats.evicted[reason.index()] += 1;
    }

    /// One pass over the table at a tick: `close` closes each host's slot; hosts for which
    /// `expired` then holds are forgotten (unless protected) and the others are handed to
    /// `kept`; exporters left without hosts are released; and when the table is more than 7/8
    /// full its idle hosts are queued for [`HostTable::make_room`], longest idle first.
    pub(super) fn sweep(
        &mut self,
        mut close: impl FnMut(&mut Host),
        expired: impl Fn(&Host) -> bool,
        mut kept: impl FnMut(IpAddr, &Host),
    ) {
        let plan = self.live >= self.limits.max_hosts - self.limits.max_hosts / 8;
        let mut idle = std::mem::take(&mut self.idle);
        idle.clear();
        let mut idle_since: Vec<(u64, Ticket)> = Vec::new();
        for slot in 0..self.entries.len() as u32 {
            let e = &mut self.entries[slot as usize];
            let Some(ip) = e.ip else { continue };
            close(&mut e.host);
            if !self.protected.is_empty() && self.protected.contains(&ip) {
                kept(ip, &e.host);
                continue;
            }
            if expired(&e.host) {
                self.evict(slot, EvictReason::Expired);
                continue;
            }
            kept(ip, &e.host);
            if plan && score(&e.host) == 0 {
                let ticket = Ticket {
                    slot,
                    generation: e.generation,
                };
                idle_since.push((last_active(&e.host), ticket));
            }
        }
        for id in 0..self.origins.len() {
            let empty_exporter = self.origins[id]
                .as_ref()
                .is_some_and(|o| o.members.is_empty() && matches!(o.key, Origin::Exporter(..)));
            if empty_exporter {
                if let Some(o) = self.origins[id].take() {
                    self.origin_index.remove(&o.key);
                }
                self.free_origins.push(id as u16);
            }
        }
        let cap = self.limits.max_hosts / 4;
        if idle_since.len() > cap {
            idle_since.select_nth_unstable_by_key(cap, |(since, _)| *since);
            idle_since.truncate(cap);
        }
        // Popped from the end: longest idle last.
        idle_since.sort_unstable_by_key(|(since, _)| std::cmp::Reverse(*since));
        idle.extend(idle_since.into_iter().map(|(_, t)| t));
        self.idle = idle;
    }
}

/// Packets of a host in the rate window, both directions, the slot being measured included.
#[inline]
fn score(h: &Host) -> u64 {
    h.score()
}

/// The last time a host had traffic in either direction (ms).
fn last_active(h: &Host) -> u64 {
    h.last_active_ms
}

/// Appends `t`, dropping the oldest ticket beyond `cap` (at least [`SCAN_ALL`]): probation
/// holds the last quarter of a table's or budget's admissions.
fn push_capped(q: &mut VecDeque<Ticket>, t: Ticket, cap: usize) {
    if q.len() >= cap.max(SCAN_ALL) {
        q.pop_front();
    }
    q.push_back(t);
}

#[cfg(test)]
mod tests {
    use super::super::{Accounting, Direction};
    use super::*;
    use crate::{
        prefix::PrefixSet,
        traffic::{ExporterSpan, TrafficRecord},
    };
    use fnm_common::{HostCounters, XdpHostCounters};

    fn acc(limits: HostLimits) -> Accounting {
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        Accounting::new(nets, limits.max_hosts, 1 << 16, 250)
            .with_rate_window(1000)
            .with_limits(limits)
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4((0x0a00_0000 + n).into())
    }

    /// `packets` towards local host `n`, from `remote`.
    fn rec(remote: u32, n: u32, packets: u64) -> TrafficRecord {
        TrafficRecord {
            packets,
            bytes: packets * 100,
            ..TrafficRecord::packet(IpAddr::V4((0xc000_0200 + remote).into()), ip(n), 17, 0)
        }
    }

    fn present(a: &Accounting, n: u32) -> bool {
        a.host(ip(n)).is_some()
    }

    fn evicted(a: &Accounting, reason: EvictReason) -> u64 {
        a.table_stats().evicted[reason.index()]
    }

    #[test]
    fn idle_hosts_go_first_longest_idle_first() {
        let mut a = acc(HostLimits::unbudgeted(8));
        // Hosts 0..8 last active at ticks 0..8, 250 ms apart; four empty ticks later (the
        // window is 1 s) all are idle, host 0 the longest.
        for t in 0..8u32 {
            a.ingest(&rec(1, t, 5), Source::Pcap);
            a.tick(u64::from(t) * 250, u64::MAX);
        }
        for t in 8..12u64 {
            a.tick(t * 250, u64::MAX);
        }
        for n in 0..8 {
            assert!(present(&a, n));
        }
        for (i, newcomer) in (100..104).enumerate() {
            a.ingest(&rec(1, newcomer, 1), Source::Pcap);
            assert!(present(&a, newcomer));
            for n in 0..=i as u32 {
                assert!(
                    !present(&a, n),
                    "host {n} idle longest, gone by newcomer {i}"
                );
            }
            for n in (i as u32 + 1)..8 {
                assert!(
                    present(&a, n),
                    "host {n} kept while an older idle host remains"
                );
            }
        }
        assert_eq!(evicted(&a, EvictReason::Idle), 4);
        assert_eq!(a.host_count(), 8);
    }

    #[test]
    fn then_unproven_hosts_then_the_least_busy_and_never_a_busier_one() {
        let mut a = acc(HostLimits::unbudgeted(6));
        // Three busy hosts (100, 200, 300 packets) and three one-packet hosts, all in the
        // window: nothing is idle.
        for (n, packets) in [(0, 100), (1, 1), (2, 200), (3, 1), (4, 300), (5, 1)] {
            a.ingest(&rec(1, n, packets), Source::Pcap);
        }
        a.tick(250, u64::MAX);
        // One-packet newcomers replace the unproven hosts, oldest first.
        for (i, newcomer) in [10, 11, 12].into_iter().enumerate() {
            a.ingest(&rec(1, newcomer, 1), Source::Pcap);
            assert!(present(&a, newcomer));
            assert!(!present(&a, [1, 3, 5][i]));
        }
        assert_eq!(evicted(&a, EvictReason::LowRate), 3);
        // Now the newcomers 10..=12 are themselves in probation: more one-packet hosts churn
        // among them and never reach the busy ones.
        for newcomer in 20..60 {
            a.ingest(&rec(1, newcomer, 1), Source::Pcap);
        }
        for n in [0, 2, 4] {
            assert!(present(&a, n), "busy host {n} stays");
        }
        a.tick(500, u64::MAX);
        // Probation is empty of unproven hosts once they qualify: make every host busy.
        let survivors: Vec<IpAddr> = a.hosts().map(|(ip, _)| *ip).collect();
        for ip in &survivors {
            let n = u32::from(match ip {
                IpAddr::V4(v4) => *v4,
                IpAddr::V6(_) => unreachable!(),
            }) - 0x0a00_0000;
            a.ingest(&rec(2, n, 50), Source::Pcap);
        }
        a.tick(750, u64::MAX);
        let full_before = a.table_stats().full[Source::Pcap.index()];
        // A newcomer with fewer packets than the least busy host is refused ...
        a.ingest(&rec(1, 1000, 10), Source::Pcap);
        assert!(!present(&a, 1000));
        assert_eq!(a.table_stats().full[Source::Pcap.index()], full_before + 1);
        // ... a flood takes the least busy one's place: a late newcomer (51 packets in the
        // window), not the busy hosts (150, 250, 350).
        a.ingest(&rec(1, 1001, 100_000), Source::Pcap);
        assert!(present(&a, 1001));
        assert!(present(&a, 0) && present(&a, 2) && present(&a, 4));
        assert_eq!(a.host_count(), 6);
    }

    #[test]
    fn protected_hosts_are_never_evicted_nor_forgotten() {
        let mut a = acc(HostLimits::unbudgeted(4));
        for n in 0..4 {
            a.ingest(&rec(1, n, 1), Source::Pcap);
        }
        a.watch(ip(0), Direction::Incoming);
        a.set_protected([ip(1), ip(2), ip(3)]);
        for t in 1..=20u64 {
            a.tick(t * 250, 2_000);
        }
        for newcomer in 10..1000 {
            a.ingest(&rec(1, newcomer, 1_000_000), Source::Pcap);
        }
        for n in 0..4 {
            assert!(present(&a, n), "protected host {n}");
        }
        assert_eq!(a.table_stats().full[Source::Pcap.index()], 990);
        assert_eq!(a.table_stats().evicted, [0; 4]);
        // Unprotected, they are forgotten (idle for 2 s) and make room.
        a.unwatch(ip(0), Direction::Incoming);
        a.set_protected([]);
        a.tick(21 * 250, 2_000);
        assert_eq!(a.host_count(), 0);
        assert_eq!(evicted(&a, EvictReason::Expired), 4);
    }

    #[test]
    fn an_exporter_at_its_budget_churns_only_its_own_hosts() {
        let limits = HostLimits {
            max_hosts: 1000,
            per_exporter: 10,
            per_source: 20,
        };
        let mut a = acc(limits);
        let real: IpAddr = "192.0.2.1".parse().unwrap();
        let spoofer: IpAddr = "192.0.2.66".parse().unwrap();
        let span = |exporter, end| ExporterSpan { end, exporter };
        let real_records: Vec<_> = (0..5).map(|n| rec(1, n, 1)).collect();
        a.ingest_exported(&real_records, Source::Netflow, &[span(real, 5)]);
        let fakes: Vec<_> = (1000..11_000).map(|n| rec(2, n, 1)).collect();
        a.ingest_exported(&fakes, Source::Netflow, &[span(spoofer, fakes.len())]);
        for n in 0..5 {
            assert!(present(&a, n), "the real exporter's host {n}");
        }
        assert_eq!(a.host_count(), 15, "5 real + the spoofer's budget");
        assert_eq!(evicted(&a, EvictReason::Budget), 10_000 - 10);
        assert_eq!(a.table_stats().full, [0; Source::ALL.len()]);
        // The real exporter's next host still gets in, and so do XDP's, up to XDP's budget.
        a.ingest_exported(&[rec(1, 7, 1)], Source::Netflow, &[span(real, 1)]);
        assert!(present(&a, 7));
        let delta = XdpHostCounters {
            counted: HostCounters {
                packets: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        for n in 20_000..20_100 {
            a.add_host_counters(ip(n), Direction::Incoming, &delta);
        }
        assert_eq!(a.host_count(), 16 + 20);
        // Records without an exporter count against their source.
        let unnamed: Vec<_> = (30_000..30_050).map(|n| rec(3, n, 1)).collect();
        a.ingest_batch(&unnamed, Source::Sflow);
        assert_eq!(a.host_count(), 16 + 20 + 10);
    }

    #[test]
    fn a_flood_of_new_hosts_churns_while_a_steady_host_and_a_victim_are_measured_exactly() {
        // One source, no budget: the whole table is under pressure (sampling, probation and
        // the idle queue all at work).
        let mut a = acc(HostLimits::unbudgeted(4096));
        let steady = 1;
        let victim = 2;
        let mut next_fake = 1_000_000u32;
        for t in 1..=40u64 {
            let mut batch = Vec::new();
            // 3000 pps steady, in 25 records per slot.
            for _ in 0..25 {
                batch.push(rec(9, steady, 30));
            }
            // 20 000 new one-packet hosts per slot (80 000/s), five times the table.
            for _ in 0..20_000 {
                batch.push(rec(7, next_fake, 1));
                next_fake += 1;
            }
            // From slot 20 on, a 100 000 pps flood on a host never seen before.
            if t >= 20 {
                for _ in 0..250 {
                    batch.push(rec(8, victim, 100));
                }
            }
            a.ingest_batch(&batch, Source::Pcap);
            a.tick(t * 250, u64::MAX);
            let s = a.host(ip(steady)).expect("the steady host stays");
            if t >= 4 {
                assert_eq!(s.dirs()[0].rates().pps, 3000.0, "slot {t}");
            }
            if t >= 20 {
                let v = a.host(ip(victim)).expect("the victim got in and stays");
                let expected = 100_000.0 * ((t - 19).min(4) as f64) / 4.0;
                assert_eq!(v.dirs()[0].rates().pps, expected, "slot {t}");
            }
            assert!(a.host_count() <= 4096);
        }
        let s = a.host(ip(steady)).unwrap();
        assert_eq!(s.dirs()[0].total().packets, 40 * 750, "exact while present");
        let v = a.host(ip(victim)).unwrap();
        assert_eq!(v.dirs()[0].total().packets, 21 * 25_000);
        let st = a.table_stats();
        let churned =
            st.evicted[EvictReason::Idle.index()] + st.evicted[EvictReason::LowRate.index()];
        assert!(churned > 700_000, "{st:?}");
        assert_eq!(
            st.full,
            [0; Source::ALL.len()],
            "one-packet hosts churn, never refused"
        );
    }
}
