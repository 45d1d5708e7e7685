//! A buffering [`PacketSink`]: records of captured packets are collected in a reused `Vec`
//! and handed on once per capture batch, so the capture thread takes the shared accounting's
//! lock once per batch instead of once per packet.
//!
//! Backends call [`PacketSink::flush`] after every batch they read and at least every
//! [`super::FLUSH_INTERVAL_MS`] while running, so at low packet rates a record still reaches
//! the accounting within about 100 ms; at high rates the buffer also flushes itself whenever
//! it holds [`DEFAULT_BATCH_CAPACITY`] records (bounded memory, bounded lock hold time).

use super::PacketSink;
use crate::accounting::Accounting;
use crate::traffic::{Source, TrafficRecord};
use std::time::Duration;

/// Records buffered before the batcher flushes by itself.
pub const DEFAULT_BATCH_CAPACITY: usize = 1024;

/// Collects records and passes them to `consume` in batches (see the module doc).
pub struct RecordBatcher<F: FnMut(&[TrafficRecord])> {
    records: Vec<TrafficRecord>,
    capacity: usize,
    consume: F,
    batches: u64,
}

impl<F: FnMut(&[TrafficRecord])> RecordBatcher<F> {
    /// A batcher that flushes at `capacity` records (at least 1) or when asked.
    pub fn new(capacity: usize, consume: F) -> Self {
        let capacity = capacity.max(1);
        Self {
            records: Vec::with_capacity(capacity),
            capacity,
            consume,
            batches: 0,
        }
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
        self.records.push(record);
        if self.records.len() >= self.capacity {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.records.is_empty() {
            return;
        }
        (self.consume)(&self.records);
        self.records.clear();
        self.batches += 1;
    }

    fn wants_timestamps(&self) -> bool {
        false
    }
}

/// Adds a batch of captured records to `accounting`, under the one lock the caller holds.
#[inline]
pub fn ingest_records(accounting: &mut Accounting, records: &[TrafficRecord], source: Source) {
    accounting.ingest_batch(records, source);
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn zero_capacity_means_one_record_per_batch() {
        let mut n = 0;
        let mut sink = RecordBatcher::new(0, |rs: &[TrafficRecord]| n += rs.len());
        sink.packet(Duration::ZERO, record(1));
        assert_eq!(sink.pending(), 0);
        drop(sink);
        assert_eq!(n, 1);
    }

    #[test]
    fn ingest_records_counts_every_record() {
        let local: crate::prefix::Prefix = "198.51.100.0/24".parse().expect("prefix");
        let mut acc = Accounting::new([local].into_iter().collect(), 1000, 1000, 1000);
        let records: Vec<_> = (1..=5).map(record).collect();
        ingest_records(&mut acc, &records, Source::Pcap);
        let victim = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        let host = acc.host(victim).expect("host counted");
        let view = crate::views::HostView::new(victim, host);
        assert_eq!(view.incoming.packets, 5);
        assert_eq!(view.incoming.bytes, (29..=33).sum::<u64>());
    }
}
