//! Per-host accounting: the one place every traffic source ends up.
//!
//! XDP hands in per-host counter deltas it read from the kernel; flow collectors and capture
//! backends hand in [`TrafficRecord`]s, which are classified here against the local networks
//! exactly as the XDP program does (destination local: `incoming`; source local: `outgoing`;
//! both: both; neither: only the totals). Every [`Accounting::tick`] closes a measuring window and
//! turns what arrived in it into per-second rates.
//!
//! Rates are measured over a sliding window (`rate_window`, default 1 s) made of poll-interval
//! slots: with a 250 ms poll, every 250 ms the rates cover the last second. A flood therefore
//! shows at its true rate one window after it starts, and crosses a threshold at 2.5× within
//! 0.4 s plus one poll, without the smoothing delay of an exponential moving average.
//!
//! Flow records describe traffic that already happened over `duration_ms`. Their packets and
//! bytes go to the cumulative counters in full, but only the share that falls inside the rate
//! window (window / duration, at most all of it) goes to the rate window: a 60-second record of
//! 60 000 packets shows as 1 000 pps at once — its true average rate — rather than as a 60 000
//! pps spike (FastNetMon credits the whole record to one second).
//!
//! Hosts live in a bounded table ([`table`]) that a flood of new addresses cannot fill for
//! good: each flow exporter and each other source has a budget, and under pressure idle, then
//! unproven, then the least busy hosts make room, never watched, attacked or mitigated ones.

mod conversations;
mod flow_table;
mod groups;
mod host;
mod host_index;
mod recent;
mod table;

pub use conversations::{
    register_metrics as register_conversation_metrics, Budget as ConversationBudget,
    BudgetStats as ConversationStats,
};

pub use groups::{GroupRow, TrafficGroups, OTHER as OTHER_GROUP};
pub use host::{DirView, Host};
pub use table::{EvictReason, HostLimits, Origin, TableStats, QUALIFY_PACKETS};

use crate::{
    prefix::{IndexedPrefixSet, PrefixSet},
    traffic::{ExporterSpan, Source, TrafficRecord},
};
use ahash::AHashMap as HashMap;
use flow_table::FlowTable;
use fnm_common::{proto, HostCounters, XdpHostCounters};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BinaryHeap, VecDeque},
    hash::Hasher,
    net::IpAddr,
};
use table::HostTable;

/// Traffic direction relative to the local networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards a local host.
    Incoming,
    /// From a local host.
    Outgoing,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Incoming, Direction::Outgoing];

    /// Index used in arrays and kernel keys (0 incoming, 1 outgoing).
    pub fn index(self) -> usize {
        match self {
            Direction::Incoming => 0,
            Direction::Outgoing => 1,
        }
    }

    /// `incoming` or `outgoing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "incoming" => Ok(Direction::Incoming),
            "outgoing" => Ok(Direction::Outgoing),
            _ => Err(format!("direction must be incoming or outgoing, not {s:?}")),
        }
    }
}

/// Label of a traffic-totals direction, including traffic with no local side.
pub fn total_direction_label(index: usize) -> &'static str {
    ["incoming", "outgoing", "other"][index.min(2)]
}

/// Label of a protocol class.
pub fn protocol_label(class: usize) -> &'static str {
    ["tcp", "udp", "icmp", "other"][class.min(3)]
}

/// A rate that thresholds can be set on; its serde name is the config key (`pps`, `udp_pps`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKind {
    /// Packets per second.
    Pps,
    /// IP bytes per second.
    BytesPerSecond,
    /// New flows per second.
    FlowsPerSecond,
    /// TCP packets per second.
    TcpPps,
    /// TCP bytes per second.
    TcpBytesPerSecond,
    /// UDP packets per second.
    UdpPps,
    /// UDP bytes per second.
    UdpBytesPerSecond,
    /// ICMP packets per second.
    IcmpPps,
    /// ICMP bytes per second.
    IcmpBytesPerSecond,
    /// TCP SYN (without ACK) packets per second.
    TcpSynPps,
    /// Fragments per second.
    FragmentsPps,
    /// Distinct TCP and UDP conversations (remote address, ports, protocol) per second over
    /// the rate window: FastNetMon's "flows" ([`conversations`]).
    ConversationsPerSecond,
}

impl RateKind {
    /// Every rate, in config order.
    pub const ALL: [RateKind; 12] = [
        RateKind::Pps,
        RateKind::BytesPerSecond,
        RateKind::FlowsPerSecond,
        RateKind::TcpPps,
        RateKind::TcpBytesPerSecond,
        RateKind::UdpPps,
        RateKind::UdpBytesPerSecond,
        RateKind::IcmpPps,
        RateKind::IcmpBytesPerSecond,
        RateKind::TcpSynPps,
        RateKind::FragmentsPps,
        RateKind::ConversationsPerSecond,
    ];

    /// The config and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Pps => "pps",
            RateKind::BytesPerSecond => "bytes_per_second",
            RateKind::FlowsPerSecond => "flows_per_second",
            RateKind::TcpPps => "tcp_pps",
            RateKind::TcpBytesPerSecond => "tcp_bytes_per_second",
            RateKind::UdpPps => "udp_pps",
            RateKind::UdpBytesPerSecond => "udp_bytes_per_second",
            RateKind::IcmpPps => "icmp_pps",
            RateKind::IcmpBytesPerSecond => "icmp_bytes_per_second",
            RateKind::TcpSynPps => "tcp_syn_pps",
            RateKind::FragmentsPps => "fragments_pps",
            RateKind::ConversationsPerSecond => "conversations_per_second",
        }
    }
}

impl std::fmt::Display for RateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-second rates of one host and direction over the last window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Packets per second.
    pub pps: f64,
    /// IP bytes per second.
    pub bytes_per_second: f64,
    /// New flows per second.
    pub flows_per_second: f64,
    /// TCP packets per second.
    pub tcp_pps: f64,
    /// TCP bytes per second.
    pub tcp_bytes_per_second: f64,
    /// UDP packets per second.
    pub udp_pps: f64,
    /// UDP bytes per second.
    pub udp_bytes_per_second: f64,
    /// ICMP packets per second.
    pub icmp_pps: f64,
    /// ICMP bytes per second.
    pub icmp_bytes_per_second: f64,
    /// TCP SYN (without ACK) packets per second.
    pub tcp_syn_pps: f64,
    /// Fragments per second.
    pub fragments_pps: f64,
    /// Distinct TCP and UDP conversations per second (0 unless a threshold uses it).
    #[serde(default)]
    pub conversations_per_second: f64,
}

impl Rates {
    /// Rates of `window` counters accumulated over `seconds`.
    pub fn from_window(window: &HostCounters, seconds: f64) -> Self {
        let s = if seconds > 0.0 { seconds } else { 1.0 };
        let r = |v: u64| v as f64 / s;
        Self {
            pps: r(window.packets),
            bytes_per_second: r(window.bytes),
            flows_per_second: r(window.flows),
            tcp_pps: r(window.proto_packets[proto::TCP]),
            tcp_bytes_per_second: r(window.proto_bytes[proto::TCP]),
            udp_pps: r(window.proto_packets[proto::UDP]),
            udp_bytes_per_second: r(window.proto_bytes[proto::UDP]),
            icmp_pps: r(window.proto_packets[proto::ICMP]),
            icmp_bytes_per_second: r(window.proto_bytes[proto::ICMP]),
            tcp_syn_pps: r(window.tcp_syn_packets),
            fragments_pps: r(window.fragments),
            conversations_per_second: 0.0,
        }
    }

    /// The value of one rate.
    pub fn get(&self, kind: RateKind) -> f64 {
        match kind {
            RateKind::Pps => self.pps,
            RateKind::BytesPerSecond => self.bytes_per_second,
            RateKind::FlowsPerSecond => self.flows_per_second,
            RateKind::TcpPps => self.tcp_pps,
            RateKind::TcpBytesPerSecond => self.tcp_bytes_per_second,
            RateKind::UdpPps => self.udp_pps,
            RateKind::UdpBytesPerSecond => self.udp_bytes_per_second,
            RateKind::IcmpPps => self.icmp_pps,
            RateKind::IcmpBytesPerSecond => self.icmp_bytes_per_second,
            RateKind::TcpSynPps => self.tcp_syn_pps,
            RateKind::FragmentsPps => self.fragments_pps,
            RateKind::ConversationsPerSecond => self.conversations_per_second,
        }
    }

    /// Element-wise maximum.
    pub fn max(&self, o: &Rates) -> Rates {
        Rates {
            pps: self.pps.max(o.pps),
            bytes_per_second: self.bytes_per_second.max(o.bytes_per_second),
            flows_per_second: self.flows_per_second.max(o.flows_per_second),
            tcp_pps: self.tcp_pps.max(o.tcp_pps),
            tcp_bytes_per_second: self.tcp_bytes_per_second.max(o.tcp_bytes_per_second),
            udp_pps: self.udp_pps.max(o.udp_pps),
            udp_bytes_per_second: self.udp_bytes_per_second.max(o.udp_bytes_per_second),
            icmp_pps: self.icmp_pps.max(o.icmp_pps),
            icmp_bytes_per_second: self.icmp_bytes_per_second.max(o.icmp_bytes_per_second),
            tcp_syn_pps: self.tcp_syn_pps.max(o.tcp_syn_pps),
            fragments_pps: self.fragments_pps.max(o.fragments_pps),
            conversations_per_second: self
                .conversations_per_second
                .max(o.conversations_per_second),
        }
    }
}

/// Bounded buffer of the most recent records of a host under watch (attack samples).
#[derive(Debug, Clone, Default)]
pub struct SampleBuffer {
    /// (time in ms, record), oldest first.
    pub records: VecDeque<(u64, TrafficRecord)>,
    /// Records seen since the watch began (including those no longer kept).
    pub seen: u64,
}

/// Most records kept per watched host.
pub const MAX_SAMPLES_PER_HOST: usize = 2_000;
/// Records of the latest batches kept for every host (at least this many, whole batches), so
/// that a host that floods from nothing has samples the moment it is first watched.
pub const RECENT_RECORDS: usize = 4_096;

/// Hasher for keys that already are uniformly distributed 64-bit hashes: passes them through.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (conversations); fold anything else in rather than panic.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Packets and bytes of one totals cell.
#[derive(Debug, Clone, Copy, Default)]
struct TotalCell {
    packets: u64,
    bytes: u64,
    seen: bool,
}

/// Number of total directions: incoming, outgoing, other (no local side).
const TOTAL_DIRECTIONS: usize = 3;

/// Per-source, per-direction (incoming, outgoing, other), per-protocol-class totals of packets
/// and bytes: a fixed table, so crediting a record is one indexed add.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    cells: [[[TotalCell; proto::COUNT]; TOTAL_DIRECTIONS]; Source::ALL.len()],
}

impl Totals {
    #[inline]
    fn cell(&mut self, source: Source, dir: usize, class: usize) -> &mut TotalCell {
        &mut self.cells[source.index()][dir.min(TOTAL_DIRECTIONS - 1)][class.min(proto::COUNT - 1)]
    }

    /// (packets, bytes) of one cell, `None` when nothing was ever counted there.
    pub fn get(&self, source: Source, dir: usize, class: usize) -> Option<(u64, u64)> {
        let c = self
            .cells
            .get(source.index())?
            .get(dir)?
            .get(class)
            .filter(|c| c.seen)?;
        Some((c.packets, c.bytes))
    }

    /// Every cell that was ever counted: ((source, direction index, protocol class), (packets,
    /// bytes)).
    pub fn iter(&self) -> impl Iterator<Item = ((Source, usize, usize), (u64, u64))> + '_ {
        Source::ALL.into_iter().flat_map(move |source| {
            (0..TOTAL_DIRECTIONS).flat_map(move |dir| {
                (0..proto::COUNT).filter_map(move |class| {
                    self.get(source, dir, class)
                        .map(|counts| ((source, dir, class), counts))
                })
            })
        })
    }
}

/// Where per-host counter deltas and source totals go: the accounting itself, or a batch
/// handed to the engine (the XDP poller reads the kernel without touching engine state).
pub trait CounterSink {
    /// Adds a counter delta of one local host and direction.
    fn add_host_counters(&mut self, host: IpAddr, direction: Direction, delta: &XdpHostCounters);
    /// Sets a source's absolute totals of one direction and protocol class.
    fn set_total(&mut self, source: Source, dir: usize, class: usize, packets: u64, bytes: u64);
}

impl CounterSink for Accounting {
    fn add_host_counters(&mut self, host: IpAddr, direction: Direction, delta: &XdpHostCounters) {
        Accounting::add_host_counters(self, host, direction, delta)
    }
    fn set_total(&mut self, source: Source, dir: usize, class: usize, packets: u64, bytes: u64) {
        Accounting::set_total(self, source, dir, class, packets, bytes)
    }
}

/// Index of a host in the host table.
type HostSlot = u32;

/// The accounting of every local host.
#[derive(Debug)]
pub struct Accounting {
    networks: IndexedPrefixSet,
    /// The hosts, bounded (see [`table`]).
    table: HostTable,
    flows: FlowTable,
    totals: Totals,
    last_tick_ms: Option<u64>,
    interval_ms: u64,
    slots: usize,
    /// Measured lengths of the last `slots` slots (ms), newest last: rates divide by the time
    /// that really passed, so a late tick (a slow poll) never inflates them.
    slot_lengths_ms: VecDeque<u64>,
    ignored_sources: IndexedPrefixSet,
    watched: HashMap<(IpAddr, Direction), SampleBuffer>,
    recent: recent::RecentRecords,
    /// Per-network and per-hostgroup rows.
    groups: TrafficGroups,
    now_ms: u64,
    /// Records whose remote side is a whitelisted source (not counted per host).
    pub ignored_records: u64,
    /// Conversations are counted (some threshold uses `conversations_per_second`).
    conversations: Option<ConversationTracking>,
    /// The busiest hosts by packets per second, ranked during each tick's sweep.
    by_pps: PpsRanking,
}

/// The top hosts by packets per second of each direction, ranked while a tick closes every
/// host's slot (its window is in cache then), so that the engine's snapshot after the tick
/// needs no pass of its own over the table: at 81,920 hosts the two passes, each a cache miss
/// per host, were a quarter of the engine's time (docs/performance.md, target 2).
#[derive(Debug, Default)]
struct PpsRanking {
    /// Hosts kept per direction (0: none ranked).
    limit: usize,
    /// Best first, by [`Direction::index`].
    ranked: [Vec<IpAddr>; 2],
    /// [`HostTable::changes`] when ranked: the ranking is stale once a host came or went.
    at_changes: Option<u64>,
}

/// The seed and the budget of conversation counting.
#[derive(Debug)]
struct ConversationTracking {
    seed: ahash::RandomState,
    budget: ConversationBudget,
}

impl Accounting {
    /// Accounting for `networks`, keeping at most `max_hosts` hosts (no budget per source:
    /// see [`Accounting::with_limits`]) and `max_flows` 5-tuples.
    pub fn new(networks: PrefixSet, max_hosts: usize, max_flows: usize, interval_ms: u64) -> Self {
        Self {
            networks: IndexedPrefixSet::new(networks),
            table: HostTable::new(HostLimits::unbudgeted(max_hosts)),
            flows: FlowTable::new(max_flows),
            totals: Totals::default(),
            last_tick_ms: None,
            interval_ms: interval_ms.max(1),
            slots: 1,
            slot_lengths_ms: VecDeque::new(),
            ignored_sources: IndexedPrefixSet::default(),
            watched: HashMap::new(),
            recent: recent::RecentRecords::default(),
            groups: TrafficGroups::default(),
            now_ms: 0,
            ignored_records: 0,
            conversations: None,
            by_pps: PpsRanking::default(),
        }
    }

    /// Ranks the `limit` busiest hosts of each direction by packets per second at every tick
    /// (for [`Accounting::top_by_pps`]); 0 stops it.
    pub fn rank_by_pps(&mut self, limit: usize) {
        if limit != self.by_pps.limit {
            self.by_pps = PpsRanking {
                limit,
                ..PpsRanking::default()
            };
        }
    }

    /// Bounds the host table with `limits` (a table, per-exporter and per-source budgets).
    /// Call before anything is accounted (the table starts empty).
    pub fn with_limits(mut self, limits: HostLimits) -> Self {
        self.table = HostTable::new(limits);
        self
    }

    /// The host table's limits.
    pub fn limits(&self) -> HostLimits {
        self.table.limits()
    }

    /// Evictions and refusals of the host table so far.
    pub fn table_stats(&self) -> TableStats {
        self.table.stats()
    }

    /// Turns the counting of distinct conversations (`conversations_per_second`) on or off.
    /// Off (the default) costs nothing; on, each host direction with TCP or UDP traffic keeps
    /// the conversations of its rate window (bounded, see [`conversations`]). Turned off, the
    /// kept conversations are dropped.
    pub fn set_conversation_tracking(&mut self, on: bool) {
        match (on, self.conversations.is_some()) {
            (true, false) => {
                self.conversations = Some(ConversationTracking {
                    seed: ahash::RandomState::new(),
                    budget: ConversationBudget::new(conversations::MAX_TOTAL),
                })
            }
            (false, true) => {
                self.conversations = None;
                self.table
                    .for_each_host(|h| h.dirs.iter_mut().for_each(host::Dir::drop_conversations));
            }
            _ => {}
        }
    }

    /// The conversation budget's counters (`None` while conversations are not counted).
    pub fn conversation_stats(&self) -> Option<ConversationStats> {
        self.conversations.as_ref().map(|c| c.budget.stats())
    }

    /// Sets the hosts that are never evicted, besides the watched ones (which always are):
    /// the engine passes hosts under attack and mitigated hosts after each tick.
    pub fn set_protected(&mut self, hosts: impl IntoIterator<Item = IpAddr>) {
        let mut set: ahash::AHashSet<IpAddr> = hosts.into_iter().collect();
        set.extend(self.watched.keys().map(|(ip, _)| *ip));
        self.table.set_protected(set);
    }

    /// Measures rates over `window_ms` (rounded to whole poll intervals, at least one).
    pub fn with_rate_window(mut self, window_ms: u64) -> Self {
        self.slots = (window_ms.div_ceil(self.interval_ms) as usize).clamp(1, 64);
        self
    }

    /// Remote sources whose traffic never counts toward a host (still in the totals).
    pub fn with_ignored_sources(mut self, sources: PrefixSet) -> Self {
        self.ignored_sources = IndexedPrefixSet::new(sources);
        self
    }

    /// Replaces the local networks (a configuration reload). Hosts already counted stay, with
    /// their totals; a host no longer inside them gets no new traffic and is forgotten once
    /// idle.
    pub fn set_networks(&mut self, networks: PrefixSet) {
        self.networks = IndexedPrefixSet::new(networks);
    }

    /// Sets the per-network and per-hostgroup rows (at start and on reload; rows kept keep
    /// their counters).
    pub fn set_groups(&mut self, groups: impl FnOnce(&mut TrafficGroups)) {
        groups(&mut self.groups);
    }

    /// The per-network and per-hostgroup rows.
    pub fn groups(&self) -> &TrafficGroups {
        &self.groups
    }

    /// Replaces the ignored remote sources (a configuration reload).
    pub fn set_ignored_sources(&mut self, sources: PrefixSet) {
        self.ignored_sources = IndexedPrefixSet::new(sources);
    }

    /// The nominal rate window in seconds (whole poll intervals).
    pub fn window_seconds(&self) -> f64 {
        (self.slots as u64 * self.interval_ms) as f64 / 1000.0
    }

    /// The time the last `slots` slots really lasted, in seconds; slots not measured yet (just
    /// after start) count at the nominal interval, so early rates are never overstated.
    pub fn measured_window_seconds(&self) -> f64 {
        self.measured_window_ms() as f64 / 1000.0
    }

    /// [`Accounting::measured_window_seconds`] in ms.
    fn measured_window_ms(&self) -> u64 {
        let missing = self.slots.saturating_sub(self.slot_lengths_ms.len()) as u64;
        self.slot_lengths_ms.iter().sum::<u64>() + missing * self.interval_ms
    }

    /// Starts keeping samples of the records of `host` in `direction`.
    pub fn watch(&mut self, host: IpAddr, direction: Direction) {
        if self.watched.contains_key(&(host, direction)) {
            return;
        }
        self.table.protect(host);
        let mut buf = SampleBuffer::default();
        for (t, r) in self
            .recent
            .iter()
            .filter(|(_, r)| matches(r, host, direction))
        {
            buf.seen += 1;
            buf.records.push_back((t, r.clone()));
        }
        self.watched.insert((host, direction), buf);
    }

    /// The hosts being watched (sampled), with their direction.
    pub fn watched_hosts(&self) -> impl Iterator<Item = (IpAddr, Direction)> + '_ {
        self.watched.keys().copied()
    }

    /// True when recent records (not yet watched) concern `host` in `direction`.
    pub fn has_recent(&self, host: IpAddr, direction: Direction) -> bool {
        self.recent.iter().any(|(_, r)| matches(r, host, direction))
    }

    /// Stops watching and returns what was collected.
    pub fn unwatch(&mut self, host: IpAddr, direction: Direction) -> Option<SampleBuffer> {
        self.watched.remove(&(host, direction))
    }

    /// The samples collected so far for a watched host.
    pub fn samples(&self, host: IpAddr, direction: Direction) -> Option<&SampleBuffer> {
        self.watched.get(&(host, direction))
    }

    /// Adds a sample for a watched host (used by the XDP packet sampler).
    pub fn add_sample(&mut self, host: IpAddr, direction: Direction, record: TrafficRecord) {
        let now = self.now_ms;
        if let Some(buf) = self.watched.get_mut(&(host, direction)) {
            buf.seen += 1;
            if buf.records.len() >= MAX_SAMPLES_PER_HOST {
                buf.records.pop_front();
            }
            buf.records.push_back((now, record));
        }
    }

    /// The most specific entry of the local networks holding `addr`.
    pub fn network_of(&self, addr: IpAddr) -> Option<crate::prefix::Prefix> {
        self.networks.longest_match(addr)
    }

    /// True when `addr` is inside the local networks.
    pub fn is_local(&self, addr: IpAddr) -> bool {
        self.networks.contains(addr)
    }

    /// Adds a batch of packet or flow records from `source` (new hosts count against the
    /// source's budget). The records are taken in runs of [`STAGE`]: each run is classified
    /// and hashed first and the cache lines of its flow tuples and index buckets are
    /// prefetched, then the table entries its buckets name, then
    /// its hosts are looked up (a host repeated in the run once), then each record is counted
    /// in order, exactly as one by one.
    pub fn ingest_batch(&mut self, records: &[TrafficRecord], source: Source) {
        self.ingest_run(records, source, Origin::Source(source));
        self.recent.copy(self.now_ms, records);
    }

    /// Adds a batch of flow records from `source` whose exporters are given by `spans` (in
    /// order; records past the last span count as the source's): new hosts count against
    /// their exporter's budget.
    pub fn ingest_exported(
        &mut self,
        records: &[TrafficRecord],
        source: Source,
        spans: &[ExporterSpan],
    ) {
        self.ingest_spans(records, source, spans);
        self.recent.copy(self.now_ms, records);
    }

    /// [`Accounting::ingest_exported`] of a batch given away (`spans` may be empty: every
    /// record the source's): kept as it is for the samples of hosts watched next, not copied.
    pub fn ingest_owned(
        &mut self,
        records: Vec<TrafficRecord>,
        source: Source,
        spans: &[ExporterSpan],
    ) {
        self.ingest_spans(&records, source, spans);
        self.recent.keep(self.now_ms, records);
    }

    /// Adds records whose exporters are given by `spans` (see [`Accounting::ingest_exported`]).
    fn ingest_spans(&mut self, records: &[TrafficRecord], source: Source, spans: &[ExporterSpan]) {
        let mut start = 0;
        for span in spans {
            let end = span.end.min(records.len());
            let origin = Origin::Exporter(source, span.exporter);
            self.ingest_run(records.get(start..end).unwrap_or_default(), source, origin);
            start = start.max(end);
        }
        self.ingest_run(
            records.get(start..).unwrap_or_default(),
            source,
            Origin::Source(source),
        );
    }

    /// Adds records of one origin, [`STAGE`] at a time (see [`Accounting::ingest_batch`]).
    fn ingest_run(&mut self, records: &[TrafficRecord], source: Source, origin: Origin) {
        for run in records.chunks(STAGE) {
            // The host last looked up per direction, in this run only (an admission while
            // counting the run may change what a lookup finds).
            let mut last = [None; 2];
            let mut staged = [Staged::default(); STAGE];
            for (s, r) in staged.iter_mut().zip(run) {
                self.stage(r, s);
            }
            for s in staged.iter().take(run.len()) {
                if s.local_dst {
                    self.table.prefetch_entry(s.dst.hash);
                }
                if s.local_src {
                    self.table.prefetch_entry(s.src.hash);
                }
            }
            for (s, r) in staged.iter_mut().zip(run) {
                if s.local_dst {
                    s.dst.slot = self.find(&mut last[0], r.dst, s.dst.hash, 0);
                }
                if s.local_src {
                    s.src.slot = self.find(&mut last[1], r.src, s.src.hash, 1);
                }
            }
            for (s, r) in staged.iter().zip(run) {
                self.ingest_staged(r, s, source, origin);
            }
        }
    }

    /// Classifies `r` into `s` (left at its default otherwise), hashes its tuple and local
    /// hosts and prefetches the tuple's probe.
    #[inline(always)]
    fn stage(&self, r: &TrafficRecord, s: &mut Staged) {
        s.local_dst = self.networks.contains(r.dst);
        s.local_src = self.networks.contains(r.src);
        if s.local_dst || s.local_src {
            s.flow_key = self.flows.key(r);
            self.flows.prefetch(s.flow_key);
        }
        if s.local_dst {
            s.dst.hash = self.table.hash(r.dst);
            self.table.prefetch_index(s.dst.hash);
        }
        if s.local_src {
            s.src.hash = self.table.hash(r.src);
            self.table.prefetch_index(s.src.hash);
        }
    }

    /// The slot of `ip` if in the table (`last`: the host found before in this direction, so a
    /// flood's victim is looked up once), its counters of direction `dir` prefetched.
    #[inline(always)]
    fn find(
        &self,
        last: &mut Option<(IpAddr, Option<HostSlot>)>,
        ip: IpAddr,
        hash: u64,
        dir: usize,
    ) -> Option<HostSlot> {
        if let Some((seen, slot)) = *last {
            if seen == ip {
                return slot;
            }
        }
        let slot = self.table.get_hashed(ip, hash);
        if let Some(slot) = slot {
            self.table.prefetch(slot, dir);
        }
        *last = Some((ip, slot));
        slot
    }

    /// Adds a packet or flow record from `source`.
    pub fn ingest(&mut self, record: &TrafficRecord, source: Source) {
        let mut staged = Staged::default();
        self.stage(record, &mut staged);
        self.ingest_staged(record, &staged, source, Origin::Source(source));
        if staged.local_dst || staged.local_src {
            self.recent.push(self.now_ms, record);
        }
    }

    /// Counts a record [`Accounting::stage`]d (its hosts maybe found since).
    #[inline]
    fn ingest_staged(
        &mut self,
        record: &TrafficRecord,
        staged: &Staged,
        source: Source,
        origin: Origin,
    ) {
        let (local_dst, local_src) = (staged.local_dst, staged.local_src);
        let class = proto::class_of(record.protocol);
        let total_dir = if local_dst {
            0
        } else if local_src {
            1
        } else {
            2
        };
        let total = self.totals.cell(source, total_dir, class);
        total.packets = total.packets.wrapping_add(record.packets);
        total.bytes = total.bytes.wrapping_add(record.bytes);
        total.seen = true;
        if !local_dst && !local_src {
            return;
        }
        let ignored_src = local_dst && self.ignored_sources.contains(record.src);
        let ignored_dst = local_src && self.ignored_sources.contains(record.dst);
        if ignored_src || ignored_dst {
            self.ignored_records += 1;
        }
        let local_dst = local_dst && !ignored_src;
        let local_src = local_src && !ignored_dst;
        if !self.watched.is_empty() {
            if local_dst {
                self.add_sample(record.dst, Direction::Incoming, record.clone());
            }
            if local_src {
                self.add_sample(record.src, Direction::Outgoing, record.clone());
            }
        }
        let new_flow = self.flows.note_key(staged.flow_key);
        let delta = RecordDelta {
            packets: record.packets,
            bytes: record.bytes,
            flows: new_flow as u64,
            tcp_syn_packets: record.tcp_syn_packets,
            fragments: record.fragments,
            class,
        };
        let window_ms = self.slots as u64 * self.interval_ms;
        let (in_window, beyond) = if record.duration_ms > window_ms {
            let in_window = delta.scaled(window_ms, record.duration_ms);
            (in_window, Some(delta.minus(&in_window)))
        } else {
            (delta, None)
        };
        if local_dst {
            let slot = self.slot_staged(record.dst, staged.dst, origin, delta.packets);
            self.credit_delta(
                slot,
                record.dst,
                Direction::Incoming,
                &in_window,
                beyond.as_ref(),
            );
            if self.conversations.is_some() {
                self.note_conversation(slot, Direction::Incoming, record.src, record);
            }
        }
        if local_src {
            let slot = self.slot_staged(record.src, staged.src, origin, delta.packets);
            self.credit_delta(
                slot,
                record.src,
                Direction::Outgoing,
                &in_window,
                beyond.as_ref(),
            );
            if self.conversations.is_some() {
                self.note_conversation(slot, Direction::Outgoing, record.dst, record);
            }
        }
    }

    /// Notes the conversation of a TCP or UDP record with `remote` in the host's direction,
    /// as FastNetMon keys it (remote address, source and destination port; TCP and UDP apart).
    #[inline]
    fn note_conversation(
        &mut self,
        slot: Option<HostSlot>,
        dir: Direction,
        remote: IpAddr,
        record: &TrafficRecord,
    ) {
        let (Some(tracking), Some(slot)) = (self.conversations.as_ref(), slot) else {
            return;
        };
        if record.protocol != 6 && record.protocol != 17 {
            return;
        }
        let key =
            tracking
                .seed
                .hash_one((remote, record.src_port, record.dst_port, record.protocol));
        let budget = &tracking.budget;
        self.table.host_mut(slot).dirs[dir.index()]
            .live()
            .quiet
            .tracked
            .get_or_insert_with(|| Box::new(conversations::Conversations::new(budget.clone())))
            .note(key);
    }

    /// Adds a record's `window` part to the slot being measured (it joins the cumulative
    /// counters when the slot closes) and what `beyond` the rate window it spans (a long flow
    /// record's, [`RecordDelta::scaled`]) straight to the cumulative counters, field by field
    /// (no [`HostCounters`] built for one protocol class), and the same to the host's network
    /// and hostgroup rows (those of a host the table refused too).
    #[inline]
    fn credit_delta(
        &mut self,
        slot: Option<HostSlot>,
        host: IpAddr,
        dir: Direction,
        window: &RecordDelta,
        beyond: Option<&RecordDelta>,
    ) {
        self.credit(slot, host, dir, window, beyond);
    }

    /// Adds `window` to the slot being measured of a slot and of its network and hostgroup
    /// rows, and `beyond` (traffic outside the rate window) to their cumulative counters.
    #[inline]
    fn credit<C: groups::Credit>(
        &mut self,
        slot: Option<HostSlot>,
        host: IpAddr,
        dir: Direction,
        window: &C,
        beyond: Option<&C>,
    ) {
        let tag = match slot {
            Some(slot) => {
                let h = self.table.host_mut(slot);
                let entry = h.dirs[dir.index()].live();
                window.add_to(&mut entry.window.current);
                if let Some(beyond) = beyond {
                    beyond.add_to(&mut entry.quiet.total);
                }
                if self.groups.is_empty() {
                    return;
                }
                self.groups.tag(&mut h.groups, host)
            }
            None if self.groups.is_empty() => return,
            None => self.groups.lookup(host),
        };
        self.groups.credit(tag, dir.index(), window, beyond);
    }

    /// The slot of `host`: the one found when its batch was staged if it still holds that
    /// host (an admission earlier in the batch may have evicted it), else looked up again or
    /// admitted for `origin`.
    #[inline]
    fn slot_staged(
        &mut self,
        host: IpAddr,
        probe: Probe,
        origin: Origin,
        packets: u64,
    ) -> Option<HostSlot> {
        if let Some(slot) = probe.slot {
            if self.table.holds(slot, host) {
                return Some(slot);
            }
        }
        self.table
            .slot_or_admit_hashed(host, probe.hash, origin, packets)
    }

    /// Adds per-host counter deltas (from the XDP program) directly; new hosts count against
    /// XDP's budget. The whitelisted sources' part goes to the host's cumulative
    /// `whitelisted` counters only, never to its rate window; it keeps the host from being
    /// forgotten as idle (its counters still change), but it is no busier for that when the
    /// table must make room.
    pub fn add_host_counters(
        &mut self,
        host: IpAddr,
        direction: Direction,
        delta: &XdpHostCounters,
    ) {
        let slot =
            self.table
                .slot_or_admit(host, Origin::Source(Source::Xdp), delta.counted.packets);
        self.add_host_counters_at(slot, host, direction, delta);
    }

    /// [`Accounting::add_host_counters`] of a poll's deltas, in order, exactly as one by one,
    /// [`STAGE`] at a time: each stage's index buckets, then entries, then counters are
    /// prefetched before the first delta is credited. A poll's hosts lie all over the table,
    /// so one by one each delta waits for three cache misses in a row.
    pub fn add_host_counters_batch(&mut self, deltas: &[(IpAddr, Direction, XdpHostCounters)]) {
        let origin = Origin::Source(Source::Xdp);
        for run in deltas.chunks(STAGE) {
            let mut probes = [Probe::default(); STAGE];
            for (p, (host, _, _)) in probes.iter_mut().zip(run) {
                p.hash = self.table.hash(*host);
                self.table.prefetch_index(p.hash);
            }
            for p in probes.iter().take(run.len()) {
                self.table.prefetch_entry(p.hash);
            }
            for (p, (host, dir, _)) in probes.iter_mut().zip(run) {
                p.slot = self.table.get_hashed(*host, p.hash);
                if let Some(slot) = p.slot {
                    self.table.prefetch(slot, dir.index());
                }
            }
            for (p, (host, dir, delta)) in probes.iter().zip(run) {
                // An admission earlier in the stage may have taken a slot found at staging.
                let slot = self.slot_staged(*host, *p, origin, delta.counted.packets);
                self.add_host_counters_at(slot, *host, *dir, delta);
            }
        }
    }

    /// Credits an XDP delta of `host` to `slot` (`None`: the table refused it).
    #[inline]
    fn add_host_counters_at(
        &mut self,
        slot: Option<HostSlot>,
        host: IpAddr,
        direction: Direction,
        delta: &XdpHostCounters,
    ) {
        // Only whitelisted traffic: nothing for the rate window (the direction stays quiet).
        if delta.counted != HostCounters::default() {
            self.credit(slot, host, direction, &delta.counted, None);
        }
        let Some(slot) = slot else {
            return;
        };
        if delta.whitelisted.packets > 0 {
            let now_ms = self.now_ms;
            let h = self.table.host_mut(slot);
            h.dirs[direction.index()]
                .quiet_mut()
                .whitelisted
                .accumulate(&delta.whitelisted);
            h.last_active_ms = h.last_active_ms.max(now_ms);
        }
    }

    /// Adds a slot of counters another agent counted (an aggregator's fleet source); false,
    /// and nothing counted, for a host outside `networks` or one the table has no room for.
    pub fn add_fleet_counters(
        &mut self,
        host: IpAddr,
        direction: Direction,
        counters: &HostCounters,
    ) -> bool {
        if !self.is_local(host) {
            return false;
        }
        let Some(slot) =
            self.table
                .slot_or_admit(host, Origin::Source(Source::Fleet), counters.packets)
        else {
            return false;
        };
        self.credit(Some(slot), host, direction, counters, None);
        for class in 0..proto::COUNT {
            let cell = self.totals.cell(Source::Fleet, direction.index(), class);
            cell.packets = cell.packets.wrapping_add(counters.proto_packets[class]);
            cell.bytes = cell.bytes.wrapping_add(counters.proto_bytes[class]);
            cell.seen = true;
        }
        true
    }

    /// Sets the absolute totals of a source (the XDP program counts its own).
    pub fn set_total(
        &mut self,
        source: Source,
        dir: usize,
        class: usize,
        packets: u64,
        bytes: u64,
    ) {
        let cell = self.totals.cell(source, dir, class);
        *cell = TotalCell {
            packets,
            bytes,
            seen: true,
        };
    }

    /// Per-source, per-direction, per-protocol totals.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Closes the current window at `now_ms` (any monotonic or capture clock in ms): computes
    /// rates, forgets unprotected hosts idle for `forget_after_ms`, and plans the next
    /// evictions when the table is nearly full.
    pub fn tick(&mut self, now_ms: u64, forget_after_ms: u64) {
        self.tick_visiting(now_ms, forget_after_ms, |_, _| {});
    }

    /// [`Accounting::tick`], handing each host that stays to `visit` once its slot is closed,
    /// while it is in the cache (the detector's checks: [`crate::detection::detector::Detector::visit`]).
    pub fn tick_visiting(
        &mut self,
        now_ms: u64,
        forget_after_ms: u64,
        mut visit: impl FnMut(IpAddr, &Host),
    ) {
        let slot_ms = self
            .last_tick_ms
            .map_or(self.interval_ms, |last| now_ms.saturating_sub(last))
            .max(1);
        self.last_tick_ms = Some(now_ms);
        self.now_ms = now_ms;
        self.slot_lengths_ms.push_back(slot_ms);
        while self.slot_lengths_ms.len() > self.slots {
            self.slot_lengths_ms.pop_front();
        }
        let slots = self.slots;
        let window_ms = self.measured_window_ms();
        let conversations = self.conversations.is_some();
        let limit = self.by_pps.limit;
        let mut kept: [BinaryHeap<Ranked<()>>; 2] =
            std::array::from_fn(|_| BinaryHeap::with_capacity(limit.min(self.table.len())));
        self.table.sweep(
            |host| {
                for d in host.dirs.iter_mut() {
                    if d.current_packets() > 0 {
                        host.last_active_ms = now_ms;
                    }
                    d.close_slot(slots, slot_ms, window_ms, conversations);
                }
            },
            |h| now_ms.saturating_sub(h.last_active_ms) >= forget_after_ms,
            |ip, h| {
                visit(ip, h);
                if limit > 0 {
                    for (heap, dir) in kept.iter_mut().zip(Direction::ALL) {
                        let key = h.dir(dir).pps();
                        offer(heap, limit, Ranked { key, ip, host: () });
                    }
                }
            },
        );
        if limit > 0 {
            self.by_pps.ranked =
                kept.map(|heap| heap.into_sorted_vec().into_iter().map(|r| r.ip).collect());
            self.by_pps.at_changes = Some(self.table.changes());
        }
        self.groups.close(slots, slot_ms, window_ms);
    }

    /// The `limit` hosts of `direction` with the most packets per second, best first, as
    /// [`Accounting::top`] ranks them by [`DirView::pps`]: the ranking of the last tick when it
    /// was of `limit` hosts and no host came or went since (rates change only at ticks), else a
    /// pass over the table.
    pub fn top_by_pps(&self, direction: Direction, limit: usize) -> Vec<(IpAddr, &Host)> {
        let fresh = limit > 0
            && limit == self.by_pps.limit
            && self.by_pps.at_changes == Some(self.table.changes());
        if !fresh {
            return self.top(direction, limit, |d| d.pps());
        }
        self.by_pps.ranked[direction.index()]
            .iter()
            .filter_map(|ip| Some((*ip, self.table.host(*ip)?)))
            .collect()
    }

    /// One host, if known.
    pub fn host(&self, addr: IpAddr) -> Option<&Host> {
        self.table.host(addr)
    }

    /// All hosts.
    pub fn hosts(&self) -> impl Iterator<Item = (&IpAddr, &Host)> {
        self.table.iter()
    }

    /// Number of hosts known.
    pub fn host_count(&self) -> usize {
        self.table.len()
    }

    /// The `limit` hosts with the highest `key` in `direction`.
    pub fn top<F: Fn(&DirView<'_>) -> f64>(
        &self,
        direction: Direction,
        limit: usize,
        key: F,
    ) -> Vec<(IpAddr, &Host)> {
        if limit == 0 {
            return Vec::new();
        }
        // The engine asks for a small top-N of many hosts after every tick: keep the best
        // `limit` in a heap whose top is the worst kept, so most hosts cost one comparison and
        // nothing is collected.
        let mut kept: BinaryHeap<Ranked<&Host>> =
            BinaryHeap::with_capacity(limit.min(self.table.len()));
        for (ip, h) in self.table.iter() {
            let ranked = Ranked {
                key: key(&h.dir(direction)),
                ip: *ip,
                host: h,
            };
            offer(&mut kept, limit, ranked);
        }
        kept.into_sorted_vec()
            .into_iter()
            .map(|r| (r.ip, r.host))
            .collect()
    }
}

/// A host ranked by [`Accounting::top`]: the higher key first, then the lower address (`H`:
/// the host itself, or nothing when only its address is kept).
struct Ranked<H> {
    key: f64,
    ip: IpAddr,
    host: H,
}

impl<H> Ord for Ranked<H> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.key.total_cmp(&self.key).then(self.ip.cmp(&o.ip))
    }
}

impl<H> PartialOrd for Ranked<H> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl<H> PartialEq for Ranked<H> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}

impl<H> Eq for Ranked<H> {}

/// Keeps `ranked` among the best `limit` of `kept`, a heap whose top is the worst kept: most
/// hosts of a large table cost one comparison and nothing is collected.
#[inline]
fn offer<H>(kept: &mut BinaryHeap<Ranked<H>>, limit: usize, ranked: Ranked<H>) {
    if kept.len() < limit {
        kept.push(ranked);
    } else if let Some(mut worst) = kept.peek_mut() {
        if ranked < *worst {
            *worst = ranked;
        }
    }
}

/// Records are staged this many at a time: hashed and prefetched, looked up,
/// then counted (enough loads in flight to hide memory latency, few enough that the lines
/// stay in L1 until used).
const STAGE: usize = 16;

/// A host of a staged record: its index hash and, when it was in the table at staging, its
/// slot.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    hash: u64,
    slot: Option<HostSlot>,
}

/// What staging found out about a record before counting it.
#[derive(Debug, Clone, Copy, Default)]
struct Staged {
    local_dst: bool,
    local_src: bool,
    /// The new-flow table's key of its tuple (with a local side only).
    flow_key: u64,
    dst: Probe,
    src: Probe,
}

/// True when `r` is traffic of `host` in `direction`.
fn matches(r: &TrafficRecord, host: IpAddr, direction: Direction) -> bool {
    match direction {
        Direction::Incoming => r.dst == host,
        Direction::Outgoing => r.src == host,
    }
}

/// What one record adds to a host's counters: one protocol class, so a handful of fields.
#[derive(Debug, Clone, Copy)]
struct RecordDelta {
    packets: u64,
    bytes: u64,
    flows: u64,
    tcp_syn_packets: u64,
    fragments: u64,
    /// Protocol class ([`proto`]) of `packets` and `bytes`.
    class: usize,
}

impl RecordDelta {
    /// × `num` / `den`, field by field (rounded down; new flows kept): the part of a record
    /// that spans longer than the rate window falling inside it.
    fn scaled(&self, num: u64, den: u64) -> Self {
        let f = |v: u64| ((v as u128 * num as u128) / den.max(1) as u128) as u64;
        Self {
            packets: f(self.packets),
            bytes: f(self.bytes),
            flows: self.flows,
            tcp_syn_packets: f(self.tcp_syn_packets),
            fragments: f(self.fragments),
            class: self.class,
        }
    }

    /// What `self` holds beyond `part` (a [`RecordDelta::scaled`] of it), field by field.
    fn minus(&self, part: &Self) -> Self {
        Self {
            packets: self.packets.wrapping_sub(part.packets),
            bytes: self.bytes.wrapping_sub(part.bytes),
            flows: self.flows.wrapping_sub(part.flows),
            tcp_syn_packets: self.tcp_syn_packets.wrapping_sub(part.tcp_syn_packets),
            fragments: self.fragments.wrapping_sub(part.fragments),
            class: self.class,
        }
    }

    /// Adds the delta into `c` (wrapping, as [`HostCounters::accumulate`] does).
    #[inline]
    fn add_to_counters(&self, c: &mut HostCounters) {
        c.packets = c.packets.wrapping_add(self.packets);
        c.bytes = c.bytes.wrapping_add(self.bytes);
        c.flows = c.flows.wrapping_add(self.flows);
        c.tcp_syn_packets = c.tcp_syn_packets.wrapping_add(self.tcp_syn_packets);
        c.fragments = c.fragments.wrapping_add(self.fragments);
        if let Some(p) = c.proto_packets.get_mut(self.class) {
            *p = p.wrapping_add(self.packets);
        }
        if let Some(b) = c.proto_bytes.get_mut(self.class) {
            *b = b.wrapping_add(self.bytes);
        }
    }
}

impl groups::Credit for RecordDelta {
    #[inline]
    fn add_to(&self, c: &mut HostCounters) {
        self.add_to_counters(c);
    }
}

/// The 16-byte form of an address (IPv4-mapped for IPv4), as the kernel keys use.
pub fn to16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address of a 16-byte kernel key (IPv4-mapped back to IPv4).
pub fn from16(bytes: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fnm_common::WhitelistedCounters;

    fn acc() -> Accounting {
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        Accounting::new(nets, 100, 1000, 1000)
    }

    fn rec(src: &str, dst: &str, packets: u64, bytes: u64) -> TrafficRecord {
        TrafficRecord {
            packets,
            bytes,
            ..TrafficRecord::packet(src.parse().unwrap(), dst.parse().unwrap(), 17, 0)
        }
    }

    #[test]
    fn classifies_directions_like_the_xdp_program() {
        let mut a = acc();
        a.ingest(&rec("192.0.2.1", "10.0.0.1", 1, 100), Source::Pcap);
        a.ingest(&rec("10.0.0.1", "192.0.2.1", 2, 300), Source::Pcap);
        a.ingest(&rec("192.0.2.1", "192.0.2.2", 5, 500), Source::Pcap);
        let h = a.host("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(h.dirs()[0].total().packets, 1);
        assert_eq!(h.dirs()[0].total().bytes, 100);
        assert_eq!(h.dirs()[1].total().packets, 2);
        assert_eq!(h.dirs()[1].total().proto_bytes[proto::UDP], 300);
        assert_eq!(a.host_count(), 1);
        assert_eq!(a.totals().get(Source::Pcap, 2, proto::UDP), Some((5, 500)));
    }

    #[test]
    fn xdp_deltas_in_a_batch_count_exactly_as_one_by_one_when_the_table_is_full() {
        // 300 hosts for 100 slots: admissions evict, also hosts found earlier in a stage; a
        // host comes back in both directions, several times in a stage, with whitelisted
        // traffic alone sometimes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let deltas: Vec<(IpAddr, Direction, XdpHostCounters)> = (0..3_000u32)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let host = IpAddr::from([10, 0, (x % 3) as u8, (x >> 8) as u8 % 100]);
                let dir = if x & 0x10000 == 0 {
                    Direction::Incoming
                } else {
                    Direction::Outgoing
                };
                let mut delta = XdpHostCounters::default();
                if !x.is_multiple_of(11) {
                    delta.counted.packets = 1 + (x >> 20) % 1000;
                    delta.counted.bytes = 64 * delta.counted.packets;
                }
                if x.is_multiple_of(5) {
                    delta.whitelisted.packets = 3;
                    delta.whitelisted.bytes = 300;
                }
                (host, dir, delta)
            })
            .collect();
        let (mut one, mut batch) = (acc(), acc());
        one.table.seed_sampling(7);
        batch.table.seed_sampling(7);
        for chunk in deltas.chunks(700) {
            for (host, dir, delta) in chunk {
                one.add_host_counters(*host, *dir, delta);
            }
            batch.add_host_counters_batch(chunk);
        }
        assert_eq!(one.host_count(), batch.host_count());
        assert!(
            one.table_stats().evicted.iter().sum::<u64>() > 0,
            "{:?}",
            one.table_stats()
        );
        assert_eq!(one.table_stats(), batch.table_stats());
        for c in 0..3u8 {
            for d in 0..100u8 {
                let ip = IpAddr::from([10, 0, c, d]);
                let (a, b) = (one.host(ip), batch.host(ip));
                assert_eq!(a.is_some(), b.is_some(), "{ip}");
                if let (Some(a), Some(b)) = (a, b) {
                    for (x, y) in a.dirs().iter().zip(b.dirs()) {
                        assert_eq!(x.total(), y.total(), "{ip}");
                        assert_eq!(x.whitelisted(), y.whitelisted(), "{ip}");
                    }
                }
            }
        }
    }

    #[test]
    fn running_window_sum_matches_the_slots_through_idle_and_busy_ticks() {
        let mut a = acc().with_rate_window(4000);
        assert_eq!(a.window_seconds(), 4.0);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for t in 0..400u64 {
            // Bursts separated by idle stretches longer than the window.
            if (t / 30) % 2 == 0 {
                for _ in 0..=(x % 5) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let src = format!("198.51.100.{}", x % 7);
                    a.ingest(
                        &rec(&src, "10.0.0.1", 1 + x % 3, 40 + x % 900),
                        Source::Pcap,
                    );
                }
            }
            a.tick(t * 250, 3_600_000);
            let seconds = a.measured_window_seconds();
            let d = a.host("10.0.0.1".parse().unwrap()).unwrap().dirs()[0];
            // (A direction quiet for a window keeps no ring.)
            let (sum, kept) = d.window().map(|w| w.ring_sum()).unwrap_or_default();
            assert_eq!(kept, sum, "tick {t}");
            assert_eq!(d.rates(), Rates::from_window(&sum, seconds), "tick {t}");
        }
    }

    #[test]
    fn top_selects_the_same_hosts_as_a_full_sort() {
        let mut a = acc();
        for i in 0..200u64 {
            // Many ties: 13 distinct packet counts.
            let dst = format!("10.0.{}.{}", i / 250, i % 250 + 1);
            a.ingest(&rec("192.0.2.1", &dst, 1 + (i * 7) % 13, 100), Source::Pcap);
        }
        let key = |d: &DirView<'_>| d.total().packets as f64;
        let full = a.top(Direction::Incoming, usize::MAX, key);
        for limit in [0, 1, 5, 17, 199, 200, 500] {
            let top: Vec<IpAddr> = a
                .top(Direction::Incoming, limit, key)
                .iter()
                .map(|(ip, _)| *ip)
                .collect();
            let want: Vec<IpAddr> = full.iter().take(limit).map(|(ip, _)| *ip).collect();
            assert_eq!(top, want, "limit {limit}");
        }
    }

    #[test]
    fn a_tick_ranks_hosts_as_a_full_pass_does_until_a_host_comes_or_goes() {
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let mut a = Accounting::new(nets, 120, 1000, 250).with_rate_window(1000);
        let limit = 10;
        a.rank_by_pps(limit);
        let ips = |top: Vec<(IpAddr, &Host)>| top.into_iter().map(|(ip, _)| ip).collect::<Vec<_>>();
        let same = |a: &Accounting, what: &str| {
            for dir in Direction::ALL {
                for l in [limit, 1, 3, 200] {
                    assert_eq!(
                        ips(a.top_by_pps(dir, l)),
                        ips(a.top(dir, l, |d| d.pps())),
                        "{what}, {dir:?}, limit {l}"
                    );
                }
            }
        };
        // A long-idle host kept only because it is protected.
        a.ingest(&rec("192.0.2.1", "10.9.9.9", 1, 100), Source::Pcap);
        a.set_protected(["10.9.9.9".parse::<IpAddr>().unwrap()]);
        let mut now = 0;
        for t in 0..40u64 {
            // Hosts come and go (forgotten after 1 s idle), 13 packet counts so rates tie, both
            // directions, and more hosts than the table holds at times (evictions).
            for i in 0..(40 + (t * 37) % 100) {
                let host = format!("10.0.{}.{}", (t / 7 + i) % 3, (i * 11 + t) % 200 + 1);
                let packets = 1 + (i * 7 + t) % 13;
                if i % 3 == 0 {
                    a.ingest(&rec(&host, "192.0.2.7", packets, 100), Source::Pcap);
                } else {
                    a.ingest(&rec("192.0.2.1", &host, packets, 100), Source::Pcap);
                }
            }
            now += 250;
            a.tick(now, 1000);
            assert_eq!(a.by_pps.at_changes, Some(a.table.changes()), "tick {t}");
            same(&a, &format!("tick {t}"));
            // Traffic to hosts already known changes no rate until the next tick.
            a.ingest(&rec("192.0.2.1", "10.9.9.9", 1000, 100), Source::Pcap);
            same(&a, &format!("tick {t}, credited"));
        }
        // A new host makes the ranking stale: the full pass answers, and ranks it (at no
        // packets per second yet, above the idle hosts with higher addresses).
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let mut a = Accounting::new(nets, 120, 1000, 250).with_rate_window(1000);
        a.rank_by_pps(limit);
        a.ingest(&rec("192.0.2.1", "10.0.0.5", 5, 100), Source::Pcap);
        a.ingest(&rec("192.0.2.1", "10.0.0.6", 9, 100), Source::Pcap);
        a.tick(250, 1000);
        a.ingest(&rec("192.0.2.1", "10.0.0.1", 5, 100), Source::Pcap);
        assert_ne!(a.by_pps.at_changes, Some(a.table.changes()));
        same(&a, "after an admission");
        let top = ips(a.top_by_pps(Direction::Incoming, limit));
        let want: Vec<IpAddr> = ["10.0.0.6", "10.0.0.5", "10.0.0.1"]
            .map(|ip| ip.parse().unwrap())
            .to_vec();
        assert_eq!(top, want);
    }

    #[test]
    fn a_late_tick_does_not_inflate_the_rate() {
        // 3000 pps steady, 250 ms slots; one poll comes 250 ms late and finds twice the
        // packets. Divided by the nominal slot it would read 6000 pps.
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let mut a = Accounting::new(nets, 100, 1000, 250).with_rate_window(1000);
        let mut now = 0;
        for slot in 0..12u64 {
            let late = slot == 8;
            let ms = if late { 500 } else { 250 };
            a.ingest(&rec("192.0.2.1", "10.0.0.1", 3 * ms, 100), Source::Pcap);
            now += ms;
            a.tick(now, u64::MAX);
            let d = a.host("10.0.0.1".parse().unwrap()).unwrap().dirs()[0];
            if slot >= 3 {
                assert!(
                    (d.rates().pps - 3000.0).abs() < 1.0,
                    "slot {slot}: {}",
                    d.rates().pps
                );
                assert!(
                    (d.slot_rates().pps - 3000.0).abs() < 1.0,
                    "slot {slot}: {}",
                    d.slot_rates().pps
                );
            }
        }
    }

    #[test]
    fn rates_slide_over_the_window_and_new_flows_count_once() {
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let mut a = Accounting::new(nets, 100, 1000, 250).with_rate_window(1000);
        for _ in 0..10 {
            a.ingest(&rec("192.0.2.1", "10.0.0.1", 1, 100), Source::Pcap);
        }
        a.tick(250, u64::MAX);
        let rates = |a: &Accounting| a.host("10.0.0.1".parse().unwrap()).unwrap().dirs()[0].rates();
        assert_eq!(rates(&a).pps, 10.0);
        assert_eq!(rates(&a).bytes_per_second, 1000.0);
        assert_eq!(rates(&a).flows_per_second, 1.0);
        for t in 2..=4 {
            a.tick(t * 250, u64::MAX);
            assert_eq!(rates(&a).pps, 10.0, "still inside the 1 s window");
        }
        a.tick(5 * 250, u64::MAX);
        assert_eq!(rates(&a).pps, 0.0, "slid out of the window");
        assert_eq!(
            a.host("10.0.0.1".parse().unwrap()).unwrap().dirs()[0]
                .total()
                .flows,
            1
        );
    }

    #[test]
    fn conversations_count_distinct_tcp_and_udp_tuples_of_the_window_as_fastnetmon_does() {
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let mut a = Accounting::new(nets, 100, 1000, 250).with_rate_window(1000);
        let conv = |src: &str, sport: u16, dport: u16, protocol: u8| TrafficRecord {
            src_port: sport,
            dst_port: dport,
            ..TrafficRecord::packet(
                src.parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                protocol,
                64,
            )
        };
        fn dir(a: &Accounting) -> DirView<'_> {
            a.host("10.0.0.1".parse().unwrap()).unwrap().dirs()[0]
        }
        // Off: nothing kept, rate 0.
        a.ingest(&conv("192.0.2.1", 1000, 80, 6), Source::Pcap);
        a.tick(250, u64::MAX);
        assert_eq!(dir(&a).rates().conversations_per_second, 0.0);
        assert!(a.conversation_stats().is_none());
        a.set_conversation_tracking(true);
        // Three steady conversations (TCP, UDP with the same ports: two) and one of another
        // remote, each sending every slot; ICMP and ESP count for none.
        for t in 2..=9u64 {
            for _ in 0..5 {
                a.ingest(&conv("192.0.2.1", 1000, 80, 6), Source::Pcap);
                a.ingest(&conv("192.0.2.1", 1000, 80, 17), Source::Pcap);
                a.ingest(&conv("192.0.2.2", 1000, 80, 6), Source::Pcap);
                a.ingest(&conv("192.0.2.3", 0, 0, 1), Source::Pcap);
                a.ingest(&conv("192.0.2.4", 0, 0, 50), Source::Pcap);
            }
            a.tick(t * 250, u64::MAX);
        }
        let d = dir(&a);
        assert_eq!(
            d.rates().conversations_per_second,
            3.0,
            "steady: counted once a window"
        );
        assert_eq!(d.conversations(), 3);
        // A spray of new source ports: one conversation each.
        for port in 0..200u16 {
            a.ingest(&conv("198.51.100.7", 2000 + port, 53, 17), Source::Pcap);
        }
        a.tick(2500, u64::MAX);
        let d = dir(&a);
        assert_eq!(d.rates().conversations_per_second, 203.0);
        assert_eq!(d.slot_rates().conversations_per_second, 200.0 * 4.0);
        assert_eq!(d.conversations(), 203);
        assert_eq!(a.conversation_stats().unwrap().used, 203);
        // Quiet for a window: all gone, memory given back.
        for t in 11..=14u64 {
            a.tick(t * 250, u64::MAX);
        }
        assert_eq!(dir(&a).rates().conversations_per_second, 0.0);
        assert_eq!(a.conversation_stats().unwrap().used, 0);
        // Off again: stats gone, nothing counted.
        a.set_conversation_tracking(false);
        assert!(a.conversation_stats().is_none());
    }

    #[test]
    fn whitelisted_sources_do_not_count_toward_hosts() {
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let ignore: PrefixSet = ["203.0.113.0/24".parse().unwrap()].into_iter().collect();
        let mut a = Accounting::new(nets, 100, 1000, 1000).with_ignored_sources(ignore);
        a.ingest(
            &rec("203.0.113.5", "10.0.0.1", 1000, 1_000_000),
            Source::Sflow,
        );
        a.ingest(&rec("192.0.2.1", "10.0.0.1", 1, 100), Source::Sflow);
        assert_eq!(
            a.host("10.0.0.1".parse().unwrap()).unwrap().dirs()[0]
                .total()
                .packets,
            1
        );
        assert_eq!(a.ignored_records, 1);
        assert_eq!(
            a.totals().get(Source::Sflow, 0, proto::UDP),
            Some((1001, 1_000_100))
        );
    }

    #[test]
    fn xdp_whitelisted_counters_stay_out_of_the_rates_and_keep_the_host() {
        // 1 s window of 1 s slots; hosts idle for 3 s are forgotten.
        let mut a = acc();
        let host: IpAddr = "10.0.0.1".parse().unwrap();
        let delta = |counted: u64, white: u64| XdpHostCounters {
            counted: HostCounters {
                packets: counted,
                bytes: counted * 100,
                ..Default::default()
            },
            whitelisted: WhitelistedCounters {
                packets: white,
                bytes: white * 1000,
            },
        };
        a.add_host_counters(host, Direction::Incoming, &delta(5, 50_000));
        a.tick(1_000, 3_000);
        let d = a.host(host).unwrap().dirs()[0];
        assert_eq!((d.total().packets, d.total().bytes), (5, 500));
        assert_eq!(
            (d.whitelisted().packets, d.whitelisted().bytes),
            (50_000, 50_000_000)
        );
        assert_eq!(d.rates().pps, 5.0);
        assert_eq!(d.rates().bytes_per_second, 500.0);
        // Only whitelisted traffic from now on: the rates fall to zero as the counted slot
        // leaves the window, the whitelisted totals keep growing, and the host stays known
        // long past the idle time.
        for t in 2..10u64 {
            a.add_host_counters(host, Direction::Incoming, &delta(0, 50_000));
            a.tick(t * 1_000, 3_000);
            let d = &a
                .host(host)
                .expect("kept while whitelisted traffic flows")
                .dirs()[0];
            assert_eq!(d.rates().pps, 0.0, "t={t}");
            assert_eq!(d.total().packets, 5);
            assert_eq!(d.whitelisted().packets, 50_000 * t);
        }
        // Silence: forgotten after the idle time, as any host.
        for t in 10..14u64 {
            a.tick(t * 1_000, 3_000);
        }
        assert!(a.host(host).is_none());
        // A host only whitelisted sources talk to is admitted and shows them.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        a.add_host_counters(other, Direction::Outgoing, &delta(0, 3));
        a.tick(15_000, 3_000);
        let d = a.host(other).unwrap().dirs()[1];
        assert_eq!((d.total().packets, d.whitelisted().packets), (0, 3));
        assert_eq!(d.rates().pps, 0.0);
    }
    #[test]
    fn watched_hosts_keep_bounded_samples() {
        let mut a = acc();
        a.watch("10.0.0.1".parse().unwrap(), Direction::Incoming);
        for _ in 0..(MAX_SAMPLES_PER_HOST + 10) {
            a.ingest(&rec("192.0.2.1", "10.0.0.1", 1, 100), Source::Pcap);
        }
        let s = a
            .samples("10.0.0.1".parse().unwrap(), Direction::Incoming)
            .unwrap();
        assert_eq!(s.records.len(), MAX_SAMPLES_PER_HOST);
        assert_eq!(s.seen, (MAX_SAMPLES_PER_HOST + 10) as u64);
    }

    #[test]
    fn long_flow_records_show_their_average_rate_not_a_spike() {
        let mut a = acc();
        let mut r = rec("192.0.2.1", "10.0.0.1", 1000, 100_000);
        r.duration_ms = 10_000;
        a.ingest(&r, Source::Netflow);
        a.tick(1000, u64::MAX);
        let d = a.host("10.0.0.1".parse().unwrap()).unwrap().dirs()[0];
        assert_eq!(d.rates().pps, 100.0, "the record's average rate, at once");
        assert_eq!(d.total().packets, 1000, "all of it in the totals");
        a.tick(2000, u64::MAX);
        let d = a.host("10.0.0.1".parse().unwrap()).unwrap().dirs()[0];
        assert_eq!(d.rates().pps, 0.0);
    }

    #[test]
    fn host_table_is_bounded() {
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let mut a = Accounting::new(nets, 2, 1000, 1000);
        for i in 0..5u8 {
            a.ingest(
                &rec("192.0.2.1", &format!("10.0.0.{i}"), 1, 1),
                Source::Pcap,
            );
        }
        assert_eq!(a.host_count(), 2);
        // One-packet hosts take each other's place (probation): the last two are kept.
        assert!(a.host("10.0.0.3".parse().unwrap()).is_some());
        assert!(a.host("10.0.0.4".parse().unwrap()).is_some());
        let stats = a.table_stats();
        assert_eq!(stats.evicted[EvictReason::LowRate.index()], 3);
        assert_eq!(stats.full[Source::Pcap.index()], 0);
    }

    #[test]
    fn network_and_hostgroup_rows_add_up_their_hosts_refused_ones_included() {
        let p = |s: &str| s.parse::<crate::prefix::Prefix>().unwrap();
        let nets = [p("10.0.0.0/8"), p("10.1.0.0/16"), p("10.2.0.0/16")];
        // A table of 2 hosts for 4: a host refused (or evicted) still counts for its network.
        let mut a = Accounting::new(nets.iter().copied().collect(), 2, 1000, 1000);
        let hostgroups = vec![("dns".to_string(), vec![p("10.1.0.0/24")])];
        a.set_groups(|g| g.reconfigure(&nets, &hostgroups, 2));
        for _ in 0..3 {
            a.ingest(&rec("192.0.2.1", "10.1.0.1", 10, 1000), Source::Pcap);
            a.ingest(&rec("192.0.2.1", "10.9.0.1", 20, 2000), Source::Pcap);
        }
        a.ingest(&rec("192.0.2.1", "10.2.0.1", 40, 4000), Source::Pcap);
        a.ingest(&rec("10.1.0.1", "192.0.2.1", 1, 100), Source::Pcap);
        a.add_host_counters(
            "10.1.0.2".parse().unwrap(),
            Direction::Incoming,
            &XdpHostCounters {
                counted: HostCounters {
                    packets: 7,
                    bytes: 700,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        assert_eq!(a.host_count(), 2);
        a.tick(1000, u64::MAX);
        let g = a.groups();
        let rows: Vec<(&str, u64, u64, f64)> = g
            .networks()
            .iter()
            .map(|r| {
                let [i, o] = r.dirs();
                (
                    r.name.as_str(),
                    i.total().packets,
                    o.total().packets,
                    i.rates().pps,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("10.0.0.0/8", 60, 0, 60.0),
                ("10.1.0.0/16", 37, 1, 37.0),
                (OTHER_GROUP, 40, 0, 40.0),
            ]
        );
        let dns = &g.hostgroups()[0];
        assert_eq!(dns.name, "dns");
        assert_eq!(dns.dirs()[0].total().bytes, 3700);
        assert_eq!(dns.dirs()[1].rates().bytes_per_second, 100.0);
        // The window slides out like a host's; the totals stay.
        a.tick(2000, u64::MAX);
        let net = &a.groups().networks()[1].dirs()[0];
        assert_eq!((net.rates().pps, net.total().packets), (0.0, 37));
    }

    #[test]
    fn address_round_trip() {
        for s in ["10.1.2.3", "2001:db8::1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from16(to16(ip)), ip);
        }
    }
}
