//! A buffering [`PacketSink`]: records of captured packets are collected in a reused `Vec`
//! and handed on once per capture batch, so the capture thread takes the shared accounting's
//! lock once per batch instead of once per packet.
//!
//! Backends call [`PacketSink::flush`] after every batch they read and at least every
//! [`super::FLUSH_INTERVAL_MS`] while running, so at low packet rates a record still reaches
//! the accounting within about 100 ms; at high rates the buffer also flushes itself whenever
//! it holds [`DEFAULT_BATCH_CAPACITY`] records (bounded memory, bounded lock hold time).
//!
//! Packets of the same 5-tuple inside one batch are coalesced into one record (packets, bytes,
//! fragments and SYN packets summed, TCP flags OR-ed, the first TTL kept), and the accounting
//! then works per distinct 5-tuple of the batch instead of per packet.
//!
//! Plain IPv4 packets (the parser's fast path, [`PacketSink::ipv4_packet`]) coalesce in a
//! four-way set-associative table of compact 32-byte entries, key and counters side by side, a
//! set on two cache lines: per packet one hash, one set and no record; when a set is full, its
//! entry with the fewest packets leaves the table as a record early. The packets are staged
//! [`STAGE`] at a time and the sets they need are prefetched a few packets ahead, so the cache
//! misses on the table (its lines do not stay cached while packet data streams through)
//! overlap instead of stalling one after another. Other records coalesce through a
//! direct-mapped index into the pending records.
//!
//! Every counter the accounting keeps comes out the same; a collision in either table only
//! means less coalescing. The agent keeps a batch open until its poll thread asks for it just
//! before each accounting tick ([`RecordBatcher::with_flush_gate`], see
//! [`super::flush_gate`]), with [`RecordBatcher::with_min_flush_interval`] as the fallback, so
//! a flood of a few thousand 5-tuples costs the accounting a few thousand records per poll slot
//! whatever its packet rate.

use super::flush_gate::FlushGate;
use super::parse::Ipv4Packet;
use super::PacketSink;
use crate::traffic::TrafficRecord;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct records buffered before the batcher flushes by itself.
pub const DEFAULT_BATCH_CAPACITY: usize = 1024;

/// Distinct records the agent's capture thread buffers before flushing by itself.
pub const AGENT_BATCH_CAPACITY: usize = 8192;

/// Shortest time the agent's capture thread keeps a batch open when nobody asks for it (the
/// backend's flush calls in between are ignored); the agent holds it for twice the poll
/// interval, at least this long, since its poll thread asks before every tick.
pub const AGENT_MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Entries of the coalescing table of other records (a power of two).
const COALESCE_SLOTS: usize = 1 << 12;

/// Sets of the IPv4 coalescing table (a power of two), of [`V4_WAYS`] entries each: 128 KiB.
const V4_SETS: usize = 1 << 10;

/// Entries per set of the IPv4 coalescing table (two cache lines).
const V4_WAYS: usize = 4;

/// IPv4 packets staged before they are coalesced together.
pub const STAGE: usize = 256;

/// How many packets ahead the table line of a staged packet is prefetched.
const PREFETCH_AHEAD: usize = 16;

/// One IPv4 5-tuple being coalesced; empty while `packets` is 0.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
struct V4Entry {
    /// Source address << 32 | destination address.
    addrs: u64,
    /// Source port << 16 | destination port.
    ports: u32,
    protocol: u8,
    tcp_flags: u8,
    /// TTL of the first packet.
    ttl: u8,
    packets: u32,
    syn_packets: u32,
    bytes: u64,
}

impl V4Entry {
    #[inline]
    fn new(addrs: u64, ports: u32, p: &Ipv4Packet) -> Self {
        Self {
            addrs,
            ports,
            protocol: p.protocol,
            tcp_flags: p.tcp_flags,
            ttl: p.ttl,
            packets: 1,
            syn_packets: u32::from(p.is_tcp_syn()),
            bytes: u64::from(p.ip_len),
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.packets == 0
    }

    fn to_record(self) -> TrafficRecord {
        use std::net::Ipv4Addr;
        TrafficRecord {
            src: IpAddr::V4(Ipv4Addr::from((self.addrs >> 32) as u32)),
            dst: IpAddr::V4(Ipv4Addr::from(self.addrs as u32)),
            protocol: self.protocol,
            src_port: (self.ports >> 16) as u16,
            dst_port: self.ports as u16,
            tcp_flags: self.tcp_flags,
            packets: u64::from(self.packets),
            bytes: self.bytes,
            fragments: 0,
            tcp_syn_packets: u64::from(self.syn_packets),
            ttl: self.ttl,
            duration_ms: 0,
        }
    }
}

/// The entries of one set, on two cache lines.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(128))]
struct V4Set([V4Entry; V4_WAYS]);

/// Collects records and passes them to `consume` in batches (see the module doc).
pub struct RecordBatcher<F: FnMut(&[TrafficRecord])> {
    records: Vec<TrafficRecord>,
    /// Coalescing table: index + 1 into `records` of the last record of a 5-tuple hash.
    slots: Box<[u32]>,
    /// Coalescing table of plain IPv4 packets.
    v4: Box<[V4Set]>,
    /// Non-empty entries of `v4`.
    v4_used: usize,
    /// IPv4 packets not yet coalesced into `v4`.
    staged: Vec<Ipv4Packet>,
    capacity: usize,
    consume: F,
    batches: u64,
    min_interval: Duration,
    last_flush: Instant,
    /// Requests to hand over the records now (the agent's poll thread, before each tick).
    gate: Option<Arc<FlushGate>>,
    /// Where the backend's counters are published.
    health: Option<Arc<super::CaptureHealth>>,
    /// Each packet counts as this many (`capture.sampling_rate`).
    sampling_rate: u64,
}

impl<F: FnMut(&[TrafficRecord])> RecordBatcher<F> {
    /// A batcher that flushes at `capacity` distinct records (at least 1) or when asked.
    pub fn new(capacity: usize, consume: F) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        Self {
            records: Vec::with_capacity(capacity.saturating_add(V4_WAYS * V4_SETS).min(1 << 20)),
            slots: vec![0; COALESCE_SLOTS].into_boxed_slice(),
            v4: vec![V4Set::default(); V4_SETS].into_boxed_slice(),
            v4_used: 0,
            staged: Vec::with_capacity(STAGE),
            capacity,
            consume,
            batches: 0,
            min_interval: Duration::ZERO,
            last_flush: Instant::now(),
            gate: None,
            health: None,
            sampling_rate: 1,
        }
    }

    /// Counts each packet as `rate` (a sampled mirror port): packets, bytes, SYN packets and
    /// fragments of the records handed on are multiplied (saturating).
    pub fn with_sampling_rate(mut self, rate: u32) -> Self {
        self.sampling_rate = u64::from(rate.max(1));
        self
    }

    /// Ignores [`PacketSink::flush`] calls until `interval` has passed since the last flush
    /// (use [`RecordBatcher::flush_now`] to force one).
    pub fn with_min_flush_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// Publishes the backend's counters ([`super::PacketSink::progress`]) to `health`.
    pub fn with_health(mut self, health: Arc<super::CaptureHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// Also flushes at [`PacketSink::flush`] whenever `gate` has a request pending (whatever
    /// the minimum interval), and confirms it; offers the gate's descriptor to the backend.
    pub fn with_flush_gate(mut self, gate: Arc<FlushGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Hands on whatever is buffered, now.
    pub fn flush_now(&mut self) {
        self.last_flush = Instant::now();
        self.coalesce_staged();
        if self.v4_used > 0 {
            for set in self.v4.iter_mut() {
                for entry in set.0.iter_mut().filter(|e| !e.is_empty()) {
                    self.records.push(std::mem::take(entry).to_record());
                }
            }
            self.v4_used = 0;
        }
        if self.records.is_empty() {
            return;
        }
        if self.sampling_rate > 1 {
            let n = self.sampling_rate;
            for r in &mut self.records {
                r.packets = r.packets.saturating_mul(n);
                r.bytes = r.bytes.saturating_mul(n);
                r.tcp_syn_packets = r.tcp_syn_packets.saturating_mul(n);
                r.fragments = r.fragments.saturating_mul(n);
            }
        }
        (self.consume)(&self.records);
        self.records.clear();
        self.slots.fill(0);
        self.batches += 1;
    }

    /// Records waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.records.len() + self.v4_used + self.staged.len()
    }

    /// Coalesces the staged IPv4 packets into the table, prefetching ahead.
    fn coalesce_staged(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        let mut sets = [0u16; STAGE];
        for (set, p) in sets.iter_mut().zip(&staged) {
            *set = v4_set(p) as u16;
        }
        let n = staged.len();
        for &set in &sets[..n.min(PREFETCH_AHEAD)] {
            prefetch_set(&self.v4[usize::from(set)]);
        }
        for (i, p) in staged.iter().enumerate() {
            if let Some(&ahead) = sets[..n].get(i + PREFETCH_AHEAD) {
                prefetch_set(&self.v4[usize::from(ahead)]);
            }
            self.coalesce_v4(usize::from(sets[i]), p);
        }
        self.staged = staged;
        self.staged.clear();
    }

    /// Adds one IPv4 packet to its set of the table.
    #[inline]
    fn coalesce_v4(&mut self, set: usize, p: &Ipv4Packet) {
        let addrs = v4_addrs(p);
        let ports = v4_ports(p);
        let set = &mut self.v4[set].0;
        for entry in set.iter_mut() {
            if entry.addrs == addrs
                && entry.ports == ports
                && entry.protocol == p.protocol
                && entry.packets != 0
                && entry.packets != u32::MAX
            {
                entry.packets += 1;
                entry.syn_packets += u32::from(p.is_tcp_syn());
                entry.bytes += u64::from(p.ip_len);
                entry.tcp_flags |= p.tcp_flags;
                return;
            }
        }
        // A new tuple takes an empty entry, or else the entry with the fewest packets, which
        // leaves the table as a record (tuples that keep coming stay; in a set that more tuples
        // share than it holds, the light ones take turns).
        let victim = set
            .iter_mut()
            .min_by_key(|e| e.packets)
            .expect("a set has entries");
        let evicted = std::mem::replace(victim, V4Entry::new(addrs, ports, p));
        if evicted.is_empty() {
            self.v4_used += 1;
        } else {
            self.records.push(evicted.to_record());
        }
    }

    /// Non-empty batches handed to `consume` so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }
}

impl<F: FnMut(&[TrafficRecord])> PacketSink for RecordBatcher<F> {
    #[inline]
    fn packet(&mut self, _timestamp: Duration, record: TrafficRecord) {
        let slot = &mut self.slots[tuple_slot(&record)];
        if let Some(pending) = slot
            .checked_sub(1)
            .and_then(|i| self.records.get_mut(i as usize))
        {
            if same_tuple(pending, &record) && pending.duration_ms == record.duration_ms {
                pending.packets += record.packets;
                pending.bytes += record.bytes;
                pending.fragments += record.fragments;
                pending.tcp_syn_packets += record.tcp_syn_packets;
                pending.tcp_flags |= record.tcp_flags;
                return;
            }
        }
        self.records.push(record);
        *slot = self.records.len() as u32;
        if self.records.len() >= self.capacity {
            self.flush_now();
        }
    }

    #[inline]
    fn ipv4_packet(&mut self, _timestamp: Duration, p: &Ipv4Packet) {
        self.staged.push(*p);
        if self.staged.len() >= STAGE {
            self.coalesce_staged();
            if self.records.len() >= self.capacity {
                self.flush_now();
            }
        }
    }

    fn flush(&mut self) {
        if let Some(request) = self.gate.as_ref().and_then(|gate| gate.pending()) {
            self.flush_now();
            if let Some(gate) = &self.gate {
                gate.complete(request);
            }
        } else if self.last_flush.elapsed() >= self.min_interval {
            self.flush_now();
        }
        if let Some(gate) = &self.gate {
            gate.set_holding(self.pending() > 0);
        }
    }

    fn wake_fd(&mut self) -> Option<std::os::fd::RawFd> {
        self.gate.as_ref().map(|gate| gate.fd())
    }

    fn woken(&mut self) {
        if let Some(gate) = &self.gate {
            gate.drain();
        }
    }

    fn wants_timestamps(&self) -> bool {
        false
    }

    fn progress(&mut self, stats: &super::CaptureStats) {
        if let Some(health) = &self.health {
            health.record(stats);
        }
    }
}

/// True when `a` and `b` share addresses, protocol and ports.
#[inline]
fn same_tuple(a: &TrafficRecord, b: &TrafficRecord) -> bool {
    a.src == b.src
        && a.dst == b.dst
        && a.src_port == b.src_port
        && a.dst_port == b.dst_port
        && a.protocol == b.protocol
}

/// Both addresses of a packet as one word, the key of the IPv4 table.
#[inline]
fn v4_addrs(p: &Ipv4Packet) -> u64 {
    u64::from(p.src) << 32 | u64::from(p.dst)
}

/// Both ports of a packet as one word, the key of the IPv4 table.
#[inline]
fn v4_ports(p: &Ipv4Packet) -> u32 {
    u32::from(p.src_port) << 16 | u32::from(p.dst_port)
}

/// Asks the CPU to start loading `value`'s cache line (a hint; no effect on results).
#[inline(always)]
fn prefetch<T>(value: &T) {
    super::prefetch_line((value as *const T).cast());
}

/// Prefetches both cache lines of a set.
#[inline(always)]
fn prefetch_set(set: &V4Set) {
    prefetch(&set.0[0]);
    prefetch(&set.0[V4_WAYS / 2]);
}

/// The set of the IPv4 coalescing table for a packet's 5-tuple (a multiplicative hash, as
/// below).
#[inline]
fn v4_set(p: &Ipv4Packet) -> usize {
    let x = v4_addrs(p) ^ (u64::from(v4_ports(p)) << 8 | u64::from(p.protocol)).rotate_left(29);
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - V4_SETS.trailing_zeros())) as usize
}

/// The coalescing-table entry of a record's 5-tuple (a multiplicative hash; an adversary who
/// makes tuples collide only turns coalescing off, never changes a count).
#[inline]
fn tuple_slot(r: &TrafficRecord) -> usize {
    fn bits(a: IpAddr) -> u64 {
        match a {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let x = u128::from(v6);
                (x as u64) ^ ((x >> 64) as u64).rotate_left(17)
            }
        }
    }
    let x = bits(r.src)
        ^ bits(r.dst).rotate_left(29)
        ^ (u64::from(r.src_port) << 16 | u64::from(r.dst_port)).rotate_left(47)
        ^ u64::from(r.protocol) << 56;
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - COALESCE_SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::Accounting;
    use crate::traffic::Source;
    use std::net::{IpAddr, Ipv4Addr};

    fn record(i: u8) -> TrafficRecord {
        TrafficRecord::packet(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            17,
            u64::from(i) + 28,
        )
    }

    #[test]
    fn batches_by_capacity_and_on_flush_in_order() {
        let mut seen: Vec<Vec<u64>> = Vec::new();
        let mut sink = RecordBatcher::new(3, |rs: &[TrafficRecord]| {
            seen.push(rs.iter().map(|r| r.bytes).collect())
        });
        for i in 0..7 {
            sink.packet(Duration::ZERO, record(i));
        }
        assert_eq!(sink.pending(), 1);
        assert_eq!(sink.batches(), 2);
        sink.flush();
        sink.flush(); // nothing pending: no empty batch
        assert_eq!(sink.pending(), 0);
        assert_eq!(sink.batches(), 3);
        assert!(!sink.wants_timestamps());
        drop(sink);
        assert_eq!(seen, vec![vec![28, 29, 30], vec![31, 32, 33], vec![34]]);
    }

    #[test]
    fn a_flush_request_hands_over_a_batch_the_interval_keeps_open() {
        let gate = Arc::new(FlushGate::new().expect("pipe"));
        let mut seen = 0usize;
        let mut sink = RecordBatcher::new(100, |rs: &[TrafficRecord]| seen += rs.len())
            .with_min_flush_interval(Duration::from_secs(3600))
            .with_flush_gate(gate.clone());
        assert!(
            sink.wake_fd().is_some(),
            "the backend gets the gate's descriptor"
        );
        assert!(
            gate.request(Duration::from_secs(5)),
            "nothing held: no wait"
        );
        sink.flush(); // nothing was asked: nothing to serve
        sink.packet(Duration::ZERO, record(1));
        sink.flush(); // inside the minimum interval and nothing asked: kept open
        assert_eq!(sink.pending(), 1);
        assert!(
            !gate.request(Duration::from_millis(10)),
            "nobody served it yet"
        );
        sink.woken();
        sink.flush();
        assert_eq!(sink.pending(), 0);
        assert_eq!(gate.pending(), None, "the request is confirmed");
        sink.packet(Duration::ZERO, record(2));
        sink.flush(); // no new request: kept open again
        assert_eq!(sink.pending(), 1);
        drop(sink);
        assert_eq!(seen, 1);
    }

    #[test]
    fn packets_of_one_tuple_coalesce_and_counts_stay_exact() {
        let mut seen: Vec<TrafficRecord> = Vec::new();
        let mut sink = RecordBatcher::new(100, |rs: &[TrafficRecord]| seen.extend_from_slice(rs))
            .with_min_flush_interval(Duration::from_secs(3600));
        let syn = TrafficRecord {
            tcp_syn_packets: 1,
            tcp_flags: 0x02,
            src_port: 1000,
            dst_port: 80,
            ..TrafficRecord::packet(
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
                6,
                40,
            )
        };
        let ack = TrafficRecord {
            tcp_syn_packets: 0,
            tcp_flags: 0x10,
            bytes: 52,
            ..syn.clone()
        };
        let other_port = TrafficRecord {
            src_port: 1001,
            ..syn.clone()
        };
        for r in [&syn, &ack, &syn, &other_port, &syn] {
            sink.packet(Duration::ZERO, r.clone());
        }
        sink.flush(); // inside the minimum interval: kept open
        assert_eq!(sink.pending(), 2);
        sink.flush_now();
        drop(sink);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].packets, 4);
        assert_eq!(seen[0].bytes, 40 * 3 + 52);
        assert_eq!(seen[0].tcp_syn_packets, 3);
        assert_eq!(seen[0].tcp_flags, 0x12);
        assert_eq!(seen[1].packets, 1);
        assert_eq!(seen[1].src_port, 1001);
    }

    #[test]
    fn coalescing_never_changes_totals_of_random_traffic() {
        let mut seen: Vec<TrafficRecord> = Vec::new();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut sent = (0u64, 0u64);
        let mut sink = RecordBatcher::new(64, |rs: &[TrafficRecord]| seen.extend_from_slice(rs));
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = TrafficRecord {
                src_port: (x % 7) as u16,
                dst_port: ((x >> 8) % 3) as u16,
                ..TrafficRecord::packet(
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, (x >> 16) as u8 % 5)),
                    IpAddr::V4(Ipv4Addr::new(198, 51, 100, (x >> 24) as u8 % 3)),
                    [6, 17, 1][(x >> 32) as usize % 3],
                    40 + (x >> 40) % 1400,
                )
            };
            sent.0 += 1;
            sent.1 += r.bytes;
            sink.packet(Duration::ZERO, r);
        }
        sink.flush_now();
        drop(sink);
        let got = seen
            .iter()
            .fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes));
        assert_eq!(got, sent);
        assert!(seen.len() < 20_000, "tuples repeat: records coalesce");
    }

    type Tuple = (IpAddr, IpAddr, u16, u16, u8);
    type Sums = (u64, u64, u64, u8);

    /// Per 5-tuple sums of packets, bytes and SYN packets, and the OR of flags.
    fn per_tuple(records: &[TrafficRecord]) -> std::collections::BTreeMap<Tuple, Sums> {
        let mut out = std::collections::BTreeMap::new();
        for r in records {
            let e = out
                .entry((r.src, r.dst, r.src_port, r.dst_port, r.protocol))
                .or_insert((0, 0, 0, 0));
            e.0 += r.packets;
            e.1 += r.bytes;
            e.2 += r.tcp_syn_packets;
            e.3 |= r.tcp_flags;
        }
        out
    }

    fn v4_packet(x: u64, tuples: u64) -> Ipv4Packet {
        let t = x % tuples;
        let protocol = [6, 17, 1][(t % 3) as usize];
        Ipv4Packet {
            src: 0xC000_0200 + (t as u32 % 61),
            dst: 0xC633_6400 + (t as u32 / 61 % 7),
            src_port: (t / 427) as u16,
            dst_port: 80,
            ip_len: 40 + (x >> 20) as u16 % 1400,
            protocol,
            tcp_flags: if protocol == 6 {
                [0x02, 0x10, 0x12][(x >> 40) as usize % 3]
            } else {
                0
            },
            ttl: 64,
        }
    }

    #[test]
    fn ipv4_packets_coalesce_to_the_same_counts_as_their_records() {
        // From a few tuples (all coalesce) to far more than the table holds (evictions).
        for tuples in [5u64, 900, 20_000] {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ tuples;
            let mut expected: Vec<TrafficRecord> = Vec::new();
            let mut seen: Vec<TrafficRecord> = Vec::new();
            let mut sink = RecordBatcher::new(AGENT_BATCH_CAPACITY, |rs: &[TrafficRecord]| {
                seen.extend_from_slice(rs)
            })
            .with_min_flush_interval(Duration::from_secs(3600));
            for i in 0..60_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = v4_packet(x, tuples);
                expected.push(p.to_record());
                sink.ipv4_packet(Duration::ZERO, &p);
                if i % 7 == 0 {
                    // Other records interleave with the compact ones.
                    let r = TrafficRecord {
                        fragments: 1,
                        ..record((i % 200) as u8)
                    };
                    expected.push(r.clone());
                    sink.packet(Duration::ZERO, r);
                }
                if i == 30_000 {
                    sink.flush_now();
                }
            }
            assert!(sink.pending() > 0);
            sink.flush_now();
            assert_eq!(sink.pending(), 0);
            drop(sink);
            assert_eq!(per_tuple(&seen), per_tuple(&expected), "{tuples} tuples");
            assert!(seen.iter().all(|r| r.ttl == 64 || r.src_port == 0));
            let fragments: u64 = seen.iter().map(|r| r.fragments).sum();
            assert_eq!(fragments, expected.iter().map(|r| r.fragments).sum::<u64>());
            if tuples <= 900 {
                assert!(
                    seen.len() < expected.len() / 10,
                    "{tuples} tuples: {} records for {} packets",
                    seen.len(),
                    expected.len()
                );
            }
        }
    }

    /// A TCP SYN from 192.0.2.1:1000 to 198.51.100.1:443.
    fn syn_packet() -> Ipv4Packet {
        Ipv4Packet {
            src: 0xC000_0201,
            dst: 0xC633_6401,
            src_port: 1000,
            dst_port: 443,
            ip_len: 60,
            protocol: 6,
            tcp_flags: 0x02,
            ttl: 61,
        }
    }

    #[test]
    fn a_coalesced_ipv4_tuple_keeps_its_first_ttl_and_all_its_flags() {
        let mut seen: Vec<TrafficRecord> = Vec::new();
        let mut sink = RecordBatcher::new(100, |rs: &[TrafficRecord]| seen.extend_from_slice(rs));
        let syn = syn_packet();
        let ack = Ipv4Packet {
            tcp_flags: 0x10,
            ip_len: 1500,
            ttl: 50,
            ..syn
        };
        for p in [&syn, &ack, &syn] {
            sink.ipv4_packet(Duration::ZERO, p);
        }
        assert_eq!(sink.pending(), 3, "staged, not yet coalesced");
        sink.flush_now();
        drop(sink);
        assert_eq!(
            seen,
            vec![TrafficRecord {
                packets: 3,
                bytes: 1620,
                tcp_syn_packets: 2,
                tcp_flags: 0x12,
                ..syn.to_record()
            }]
        );
    }

    #[test]
    fn a_sampling_rate_multiplies_every_count_but_the_tuples() {
        let mut seen: Vec<TrafficRecord> = Vec::new();
        let mut sink = RecordBatcher::new(100, |rs: &[TrafficRecord]| seen.extend_from_slice(rs))
            .with_sampling_rate(64);
        let syn = syn_packet();
        for _ in 0..3 {
            sink.ipv4_packet(Duration::ZERO, &syn);
        }
        sink.packet(
            Duration::ZERO,
            TrafficRecord {
                fragments: 1,
                ..record(7)
            },
        );
        sink.flush_now();
        drop(sink);
        let v4 = seen.iter().find(|r| r.src_port == 1000).expect("v4 tuple");
        assert_eq!(
            (v4.packets, v4.bytes, v4.tcp_syn_packets),
            (3 * 64, 3 * 60 * 64, 3 * 64)
        );
        let other = seen.iter().find(|r| r.src_port != 1000).expect("record");
        assert_eq!(
            (other.packets, other.bytes, other.fragments),
            (64, record(7).bytes * 64, 64)
        );
        assert_eq!(seen.len(), 2, "one record per tuple");
    }

    #[test]
    fn zero_capacity_means_one_record_per_batch() {
        let mut n = 0;
        let mut sink = RecordBatcher::new(0, |rs: &[TrafficRecord]| n += rs.len());
        sink.packet(Duration::ZERO, record(1));
        assert_eq!(sink.pending(), 0);
        drop(sink);
        assert_eq!(n, 1);
    }

    #[test]
    fn a_flushed_batch_counts_every_record() {
        let local: crate::prefix::Prefix = "198.51.100.0/24".parse().expect("prefix");
        let mut acc = Accounting::new([local].into_iter().collect(), 1000, 1000, 1000);
        let records: Vec<_> = (1..=5).map(record).collect();
        acc.ingest_batch(&records, Source::Pcap);
        let victim = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        let host = acc.host(victim).expect("host counted");
        let view = crate::views::HostView::new(victim, host);
        assert_eq!(view.incoming.packets, 5);
        assert_eq!(view.incoming.bytes, (29..=33).sum::<u64>());
    }
}
