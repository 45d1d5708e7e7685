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
//! fragments and SYN packets summed, TCP flags OR-ed, the first TTL kept), through a small
//! direct-mapped table: per packet one hash and one compare, and the accounting then works per
//! distinct 5-tuple of the batch instead of per packet. Every counter the accounting keeps comes
//! out the same; a collision in the table only means less coalescing. With
//! [`RecordBatcher::with_min_flush_interval`] the agent keeps a batch open for a few tens of
//! milliseconds, so a flood of a few thousand 5-tuples costs the accounting a few thousand
//! records per batch whatever its packet rate.

use super::PacketSink;
use crate::traffic::TrafficRecord;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Distinct records buffered before the batcher flushes by itself.
pub const DEFAULT_BATCH_CAPACITY: usize = 1024;

/// Distinct records the agent's capture thread buffers before flushing by itself.
pub const AGENT_BATCH_CAPACITY: usize = 8192;

/// How long the agent's capture thread keeps a batch open (the backend's flush calls in
/// between are ignored): records reach the accounting at most this much plus
/// [`super::FLUSH_INTERVAL_MS`] after capture.
pub const AGENT_MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Entries of the coalescing table (a power of two).
const COALESCE_SLOTS: usize = 1 << 12;

/// Collects records and passes them to `consume` in batches (see the module doc).
pub struct RecordBatcher<F: FnMut(&[TrafficRecord])> {
    records: Vec<TrafficRecord>,
    /// Coalescing table: index + 1 into `records` of the last record of a 5-tuple hash.
    slots: Box<[u32]>,
    capacity: usize,
    consume: F,
    batches: u64,
    min_interval: Duration,
    last_flush: Instant,
}

impl<F: FnMut(&[TrafficRecord])> RecordBatcher<F> {
    /// A batcher that flushes at `capacity` distinct records (at least 1) or when asked.
    pub fn new(capacity: usize, consume: F) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        Self {
            records: Vec::with_capacity(capacity),
            slots: vec![0; COALESCE_SLOTS].into_boxed_slice(),
            capacity,
            consume,
            batches: 0,
            min_interval: Duration::ZERO,
            last_flush: Instant::now(),
        }
    }

    /// Ignores [`PacketSink::flush`] calls until `interval` has passed since the last flush
    /// (use [`RecordBatcher::flush_now`] to force one).
    pub fn with_min_flush_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// Hands on whatever is buffered, now.
    pub fn flush_now(&mut self) {
        self.last_flush = Instant::now();
        if self.records.is_empty() {
            return;
        }
        (self.consume)(&self.records);
        self.records.clear();
        self.slots.fill(0);
        self.batches += 1;
    }

    /// Records waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.records.len()
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

    fn flush(&mut self) {
        if self.last_flush.elapsed() >= self.min_interval {
            self.flush_now();
        }
    }

    fn wants_timestamps(&self) -> bool {
        false
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
