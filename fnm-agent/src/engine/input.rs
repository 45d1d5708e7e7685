//! What sources hand the engine: batches over one bounded channel, with what each source
//! could not hand over counted per source.
//!
//! A source never waits for the engine: when the channel is full (the engine is behind), the
//! batch is dropped and its records are counted in that source's `dropped_batches` /
//! `dropped_records`, which `/metrics` and `/api/v1/status` show. With the default capacity
//! ([`INPUT_CAPACITY`] batches) that takes a stall of seconds: a collector worker hands over
//! one batch per receive burst, the capture thread one per poll slot, the XDP poller one per
//! poll.

use crate::{
    accounting::{CounterSink, Direction},
    traffic::{Source, TrafficRecord},
};
use fnm_common::HostCounters;
use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

/// Batches the engine's input channel holds before sources start dropping.
pub const INPUT_CAPACITY: usize = 4096;

/// One hand-over from a source.
#[derive(Debug)]
pub enum Batch {
    /// Packets or flow records, classified by the accounting.
    Records {
        /// Who observed them.
        source: Source,
        /// The records.
        records: Vec<TrafficRecord>,
    },
    /// One poll of the XDP program's kernel counters.
    Xdp(Box<XdpBatch>),
}

/// What one poll of the XDP maps found: per-host deltas, the program's totals, packet samples
/// and its global counters.
#[derive(Debug, Default)]
pub struct XdpBatch {
    /// Counter deltas per local host and direction since the previous poll.
    pub deltas: Vec<(IpAddr, Direction, HostCounters)>,
    /// Absolute totals: (direction index, protocol class, packets, bytes).
    pub totals: Vec<(usize, usize, u64, u64)>,
    /// Sampled packets of watched hosts: (local host, direction, record).
    pub samples: Vec<(IpAddr, Direction, TrafficRecord)>,
    /// The program's global counters.
    pub stats: Option<crate::engine::snapshot::XdpStatus>,
}

impl CounterSink for XdpBatch {
    fn add_host_counters(&mut self, host: IpAddr, direction: Direction, delta: &HostCounters) {
        self.deltas.push((host, direction, *delta));
    }
    fn set_total(&mut self, _source: Source, dir: usize, class: usize, packets: u64, bytes: u64) {
        self.totals.push((dir, class, packets, bytes));
    }
}

/// Health counters of one source's hand-over to the engine.
#[derive(Debug, Default)]
pub struct InputCounters {
    /// Batches handed over.
    pub batches: AtomicU64,
    /// Records handed over.
    pub records: AtomicU64,
    /// Batches dropped because the engine's channel was full.
    pub dropped_batches: AtomicU64,
    /// Records in those batches.
    pub dropped_records: AtomicU64,
}

/// Per-source hand-over counters, indexed by [`Source::index`].
#[derive(Debug, Default)]
pub struct InputStats {
    per_source: [InputCounters; Source::ALL.len()],
}

impl InputStats {
    /// The counters of `source`.
    pub fn of(&self, source: Source) -> &InputCounters {
        &self.per_source[source.index()]
    }
}

/// The sending side of the engine's input, cloned into every source.
#[derive(Debug, Clone)]
pub struct EngineInput {
    tx: crossbeam_channel::Sender<Batch>,
    stats: Arc<InputStats>,
}

impl EngineInput {
    /// A channel of `capacity` batches; the engine keeps the receiver.
    pub fn channel(capacity: usize) -> (Self, crossbeam_channel::Receiver<Batch>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        (
            Self {
                tx,
                stats: Arc::new(InputStats::default()),
            },
            rx,
        )
    }

    /// Hands `batch` over without waiting; returns false (and counts it) when the engine is
    /// behind or gone.
    pub fn send(&self, source: Source, batch: Batch) -> bool {
        let records = match &batch {
            Batch::Records { records, .. } => records.len() as u64,
            Batch::Xdp(b) => b.deltas.len() as u64,
        };
        let c = self.stats.of(source);
        match self.tx.try_send(batch) {
            Ok(()) => {
                c.batches.fetch_add(1, Relaxed);
                c.records.fetch_add(records, Relaxed);
                true
            }
            Err(_) => {
                c.dropped_batches.fetch_add(1, Relaxed);
                c.dropped_records.fetch_add(records, Relaxed);
                false
            }
        }
    }

    /// Hands over a batch of records (copied; the caller keeps its buffer).
    pub fn send_records(&self, source: Source, records: &[TrafficRecord]) -> bool {
        if records.is_empty() {
            return true;
        }
        self.send(
            source,
            Batch::Records {
                source,
                records: records.to_vec(),
            },
        )
    }

    /// The hand-over counters of every source.
    pub fn stats(&self) -> Arc<InputStats> {
        self.stats.clone()
    }
}

impl crate::flow::collector::TrafficSink for EngineInput {
    fn ingest_batch(&self, source: Source, records: &[TrafficRecord]) {
        self.send_records(source, records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_counts_what_it_dropped_per_source() {
        let (input, rx) = EngineInput::channel(1);
        let r = TrafficRecord::packet(
            "192.0.2.1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            17,
            100,
        );
        assert!(input.send_records(Source::Sflow, &[r.clone(), r.clone()]));
        assert!(!input.send_records(Source::Netflow, &[r.clone(), r.clone(), r]));
        let s = input.stats();
        assert_eq!(s.of(Source::Sflow).records.load(Relaxed), 2);
        assert_eq!(s.of(Source::Netflow).dropped_batches.load(Relaxed), 1);
        assert_eq!(s.of(Source::Netflow).dropped_records.load(Relaxed), 3);
        assert_eq!(s.of(Source::Sflow).dropped_records.load(Relaxed), 0);
        assert!(rx.try_recv().is_ok());
    }
}
