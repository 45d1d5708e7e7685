//! What sources hand the engine: batches over one bounded channel, with what each source
//! could not hand over counted per source.
//!
//! A source never waits for the engine: when the channel is full (the engine is behind), or
//! the source already has [`MAX_QUEUED_RECORDS`] records waiting, the batch is dropped and its
//! records are counted in that source's `dropped_batches` / `dropped_records`, which `/metrics`
//! and `/api/v1/status` show. With the default capacity ([`INPUT_CAPACITY`] batches) that takes
//! a stall of seconds: a collector worker hands over one batch per receive burst, the capture
//! thread one per poll slot, the XDP poller one per poll.
//!
//! The record bound is per source, so a flood of flow datagrams the engine cannot keep up with
//! never crowds out the XDP poll, and it bounds both the queue's memory and the delay a backlog
//! adds to detection.
//!
//! A hand-over does not wake the engine by itself: having drained the channel, the engine
//! gathers ([`InputReceiver::gather`], up to [`crate::engine::GATHER_FOR`]) and takes what came
//! meanwhile in one wake-up. A source whose waiting records reach [`WAKE_RECORDS`] wakes it
//! early, so a flood that starts while the engine gathers never makes its source look behind.

use crate::{
    accounting::{CounterSink, Direction},
    traffic::{ExporterSpan, Source, TrafficRecord},
};
use fnm_common::XdpHostCounters;
use std::{
    net::IpAddr,
    ops::Deref,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
    thread::Thread,
    time::{Duration, Instant},
};

/// Batches the engine's input channel holds before sources start dropping.
pub const INPUT_CAPACITY: usize = 4096;

/// Records (or XDP host deltas) one source may have waiting for the engine: about 90 bytes a
/// record, so at most ~23 MiB per source. It absorbs the bursts that arrive while the engine
/// ticks (tens of milliseconds at millions of records a second); the delay a backlog adds is
/// kept short by [`BEHIND_BATCH_RECORDS`] instead. A batch is always taken when nothing of its
/// source waits, so an XDP poll of more hosts than this still goes through.
pub const MAX_QUEUED_RECORDS: u64 = 262_144;

/// The engine is behind on a source when the last batch it took from it had waited longer
/// than this (and more is waiting), or when [`BEHIND_RECORDS`] are waiting.
pub const BEHIND_MS: u64 = 100;

/// Records waiting that mean the engine is behind on a source, whatever their wait: an eighth
/// of [`MAX_QUEUED_RECORDS`], a few milliseconds of work for the engine at full speed but a
/// fraction of a second while it churns its host table.
pub const BEHIND_RECORDS: u64 = MAX_QUEUED_RECORDS / 8;

/// Records a flow batch keeps while the engine is behind on its source ([`BEHIND_MS`]), halved
/// for every further 100 ms of lag down to a sixteenth: the batch's exporters share them
/// max-min fairly, so an exporter sending a datagram or two per batch (30 NetFlow v5 records
/// each) keeps all or most of them while the ones flooding the collector are cut down to
/// what is left. The rest is dropped and counted as the source's dropped records. Without it,
/// a spoofed stream the engine could not keep up with held the victim's records seconds
/// behind it in the queue.
pub const BEHIND_BATCH_RECORDS: usize = 256;

/// Records one source may have waiting before its hand-over wakes an engine that gathers: two
/// collector hand-overs, a sixteenth of [`BEHIND_RECORDS`], so a gathering never makes a source
/// look behind, however fast its records come. At millions of records a second a quarter
/// (8 192) let the engine take bursts whose records had gone cold: it spent more per record,
/// took that CPU from the collectors, and the lossless ladder fell a step (NetFlow v5 4.95 M →
/// 3.66 M records/s, sFlow 3.8 M → 2.7 M samples/s, docs/performance.md).
pub const WAKE_RECORDS: u64 = BEHIND_RECORDS / 16;

/// One hand-over from a source.
#[derive(Debug)]
pub enum Batch {
    /// Packets or flow records, classified by the accounting.
    Records {
        /// Who observed them.
        source: Source,
        /// The records.
        records: Vec<TrafficRecord>,
        /// Which flow exporter sent which records (empty: not from flow exporters); the hosts
        /// they bring in count against that exporter's budget.
        exporters: Vec<ExporterSpan>,
    },
    /// One poll of the XDP program's kernel counters.
    Xdp(Box<XdpBatch>),
    /// Host counters other agents counted (an aggregator's Kafka consumer): added to the
    /// hosts' current slots as they arrive.
    Fleet(Vec<(IpAddr, Direction, fnm_common::HostCounters)>),
}

/// What one poll of the XDP maps found: per-host deltas, the program's totals, packet samples
/// and its global counters.
#[derive(Debug, Default)]
pub struct XdpBatch {
    /// Counter deltas per local host and direction since the previous poll.
    pub deltas: Vec<(IpAddr, Direction, XdpHostCounters)>,
    /// Absolute totals: (direction index, protocol class, packets, bytes).
    pub totals: Vec<(usize, usize, u64, u64)>,
    /// Sampled packets of watched hosts: (local host, direction, record).
    pub samples: Vec<(IpAddr, Direction, TrafficRecord)>,
    /// The program's global counters.
    pub stats: Option<crate::engine::snapshot::XdpStatus>,
}

impl CounterSink for XdpBatch {
    fn add_host_counters(&mut self, host: IpAddr, direction: Direction, delta: &XdpHostCounters) {
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
    /// Records handed over and not yet taken by the engine.
    pub queued_records: AtomicU64,
    /// How long the last batch the engine took had waited, in microseconds.
    pub lag_us: AtomicU64,
}

/// Per-source hand-over counters, indexed by [`Source::index`].
#[derive(Debug, Default)]
pub struct InputStats {
    per_source: [InputCounters; Source::ALL.len()],
    /// The engine thread, once it gathered: woken by a source with [`WAKE_RECORDS`] waiting.
    engine: OnceLock<Thread>,
}

impl InputStats {
    /// The counters of `source`.
    pub fn of(&self, source: Source) -> &InputCounters {
        &self.per_source[source.index()]
    }
}

/// How many of its records each exporter of a batch may keep when the batch keeps at most
/// `budget` records: max-min fair (an exporter with fewer records than the level keeps all of
/// them, the others share the rest equally). Records past the last span are not counted.
fn fair_shares(
    len: usize,
    spans: &[ExporterSpan],
    budget: usize,
) -> Vec<(std::net::IpAddr, usize)> {
    let mut counts: Vec<(std::net::IpAddr, usize)> = Vec::new();
    let mut start = 0;
    for span in spans {
        let end = span.end.clamp(start, len);
        match counts.iter_mut().find(|(e, _)| *e == span.exporter) {
            Some((_, n)) => *n += end - start,
            None => counts.push((span.exporter, end - start)),
        }
        start = end;
    }
    let mut sorted: Vec<usize> = counts.iter().map(|(_, n)| *n).collect();
    sorted.sort_unstable();
    let mut remaining = budget;
    let mut level = usize::MAX;
    for (i, n) in sorted.iter().enumerate() {
        let sharing = sorted.len() - i;
        if n * sharing <= remaining {
            remaining -= n;
        } else {
            level = remaining / sharing;
            break;
        }
    }
    counts.into_iter().map(|(e, n)| (e, n.min(level))).collect()
}

/// A batch in the engine's channel, with what it holds of its source's queue bound.
#[derive(Debug)]
pub struct Queued {
    /// The batch.
    pub batch: Batch,
    /// Gives the batch's records back to its source's bound when dropped (once ingested).
    pub release: Release,
}

/// Takes a batch's records off its source's queued count when dropped, and notes how long
/// the batch waited.
#[derive(Debug, Default)]
pub struct Release(Option<(Arc<InputStats>, Source, u64, Instant)>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some((stats, source, records, since)) = self.0.take() {
            let c = stats.of(source);
            c.queued_records.fetch_sub(records, Relaxed);
            c.lag_us.store(since.elapsed().as_micros() as u64, Relaxed);
        }
    }
}

impl From<Batch> for Queued {
    /// A batch outside any bound (tests, replay).
    fn from(batch: Batch) -> Self {
        Self {
            batch,
            release: Release::default(),
        }
    }
}

/// The sending side of the engine's input, cloned into every source.
#[derive(Debug, Clone)]
pub struct EngineInput {
    tx: crossbeam_channel::Sender<Queued>,
    stats: Arc<InputStats>,
}

impl EngineInput {
    /// A channel of `capacity` batches; the engine keeps the receiver.
    pub fn channel(capacity: usize) -> (Self, InputReceiver) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let stats = Arc::new(InputStats::default());
        (
            Self {
                tx,
                stats: stats.clone(),
            },
            InputReceiver { rx, stats },
        )
    }

    /// Hands `batch` over without waiting; returns false (and counts it) when the engine is
    /// behind or gone, or `source` already has [`MAX_QUEUED_RECORDS`] records waiting.
    pub fn send(&self, source: Source, batch: Batch) -> bool {
        let records = match &batch {
            Batch::Records { records, .. } => records.len() as u64,
            Batch::Xdp(b) => b.deltas.len() as u64,
            Batch::Fleet(c) => c.len() as u64,
        };
        let c = self.stats.of(source);
        let waiting = c.queued_records.load(Relaxed);
        let fits = waiting == 0 || waiting.saturating_add(records) <= MAX_QUEUED_RECORDS;
        if fits {
            c.queued_records.fetch_add(records, Relaxed);
            let queued = Queued {
                batch,
                release: Release(Some((self.stats.clone(), source, records, Instant::now()))),
            };
            if self.tx.try_send(queued).is_ok() {
                c.batches.fetch_add(1, Relaxed);
                c.records.fetch_add(records, Relaxed);
                if waiting.saturating_add(records) >= WAKE_RECORDS {
                    // Unparking an engine that is not parked costs an atomic swap.
                    if let Some(engine) = self.stats.engine.get() {
                        engine.unpark();
                    }
                }
                return true;
            }
            // The refused batch came back and was dropped: its release already ran.
        }
        c.dropped_batches.fetch_add(1, Relaxed);
        c.dropped_records.fetch_add(records, Relaxed);
        false
    }

    /// Hands over a batch of records (copied; the caller keeps its buffer).
    pub fn send_records(&self, source: Source, records: &[TrafficRecord]) -> bool {
        self.send_exported(source, records, &[])
    }

    /// Hands over a batch of flow records with the exporters that sent them (copied).
    pub fn send_exported(
        &self,
        source: Source,
        records: &[TrafficRecord],
        exporters: &[ExporterSpan],
    ) -> bool {
        if records.is_empty() {
            return true;
        }
        let c = self.stats.of(source);
        let (behind, lag_ms) = self.behind(source);
        if exporters.is_empty() || !behind {
            return self.send(
                source,
                Batch::Records {
                    source,
                    records: records.to_vec(),
                    exporters: exporters.to_vec(),
                },
            );
        }
        // Behind: the exporters share what the batch may keep, max-min fairly.
        let halvings = (lag_ms.saturating_sub(BEHIND_MS) / BEHIND_MS).min(4);
        let allowance = fair_shares(records.len(), exporters, BEHIND_BATCH_RECORDS >> halvings);
        let mut left: Vec<(std::net::IpAddr, usize)> = allowance;
        let mut kept = Vec::with_capacity(BEHIND_BATCH_RECORDS);
        let mut spans = Vec::with_capacity(exporters.len());
        let mut start = 0;
        for span in exporters {
            let end = span.end.clamp(start, records.len());
            if let Some((_, allowed)) = left.iter_mut().find(|(e, _)| *e == span.exporter) {
                let take = (end - start).min(*allowed);
                *allowed -= take;
                kept.extend_from_slice(&records[start..start + take]);
                spans.push(ExporterSpan {
                    end: kept.len(),
                    exporter: span.exporter,
                });
            }
            start = end;
        }
        let trimmed = (records.len() - kept.len()) as u64;
        c.dropped_records.fetch_add(trimmed, Relaxed);
        if kept.is_empty() {
            return false;
        }
        self.send(
            source,
            Batch::Records {
                source,
                records: kept,
                exporters: spans,
            },
        )
    }

    /// Hands over a collector's buffers, leaving both empty: as
    /// [`send_exported`](Self::send_exported), but when the engine is not behind on `source`
    /// and `records` fills at least half of its capacity, the buffer itself goes into the
    /// channel instead of a copy (a half-empty buffer is copied, so the channel never holds
    /// much more memory than records).
    pub fn send_exported_buffers(
        &self,
        source: Source,
        records: &mut Vec<TrafficRecord>,
        exporters: &mut Vec<ExporterSpan>,
    ) -> bool {
        let sent = if records.len() * 2 >= records.capacity() && !self.behind(source).0 {
            let batch = Batch::Records {
                source,
                records: std::mem::take(records),
                exporters: exporters.to_vec(),
            };
            self.send(source, batch)
        } else {
            self.send_exported(source, records, exporters)
        };
        records.clear();
        exporters.clear();
        sent
    }

    /// Whether the engine is behind on `source`, and the lag of the last batch it took (ms).
    fn behind(&self, source: Source) -> (bool, u64) {
        let c = self.stats.of(source);
        let lag_ms = c.lag_us.load(Relaxed) / 1000;
        let waiting = c.queued_records.load(Relaxed);
        (
            (lag_ms > BEHIND_MS && waiting > 0) || waiting > BEHIND_RECORDS,
            lag_ms,
        )
    }

    /// The hand-over counters of every source.
    pub fn stats(&self) -> Arc<InputStats> {
        self.stats.clone()
    }
}

/// The engine's side of the input channel: the batches (it derefs to the channel's receiver)
/// and the gathering between them.
#[derive(Debug)]
pub struct InputReceiver {
    rx: crossbeam_channel::Receiver<Queued>,
    stats: Arc<InputStats>,
}

impl InputReceiver {
    /// Sleeps up to `timeout` while hand-overs gather in the channel, or until a source has
    /// [`WAKE_RECORDS`] waiting (or the thread is unparked otherwise). Called by the engine
    /// thread only: the first call makes the calling thread the one sources wake.
    pub fn gather(&self, timeout: Duration) {
        self.stats.engine.get_or_init(std::thread::current);
        std::thread::park_timeout(timeout);
    }
}

impl Deref for InputReceiver {
    type Target = crossbeam_channel::Receiver<Queued>;

    fn deref(&self) -> &Self::Target {
        &self.rx
    }
}

impl crate::flow::collector::TrafficSink for EngineInput {
    fn ingest_batch(&self, source: Source, records: &[TrafficRecord]) {
        self.send_records(source, records);
    }

    fn ingest_exported(&self, source: Source, records: &[TrafficRecord], spans: &[ExporterSpan]) {
        self.send_exported(source, records, spans);
    }

    fn hand_over(
        &self,
        source: Source,
        records: &mut Vec<TrafficRecord>,
        spans: &mut Vec<ExporterSpan>,
    ) {
        self.send_exported_buffers(source, records, spans);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 100-byte UDP packet from 192.0.2.1 to 10.0.0.1.
    fn udp_record() -> TrafficRecord {
        TrafficRecord::packet(
            "192.0.2.1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            17,
            100,
        )
    }

    /// A thread gathering on `rx` for up to a minute, reporting when it stopped.
    fn gathering(
        rx: InputReceiver,
    ) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>) {
        let (woke_tx, woke) = std::sync::mpsc::channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let engine = std::thread::spawn(move || {
            // Registered as the engine first, so a hand-over can find it.
            rx.gather(Duration::ZERO);
            ready_tx.send(()).unwrap();
            rx.gather(Duration::from_secs(60));
            woke_tx.send(()).unwrap();
            drop(rx);
        });
        ready.recv().unwrap();
        (engine, woke)
    }

    #[test]
    fn a_gathering_engine_sleeps_through_small_hand_overs_and_wakes_for_a_pile() {
        let (input, rx) = EngineInput::channel(INPUT_CAPACITY);
        let (engine, woke) = gathering(rx);
        let r = udp_record();
        // Short of WAKE_RECORDS waiting: the engine gathers on.
        let below = vec![r.clone(); WAKE_RECORDS as usize / 2 - 1];
        assert!(input.send_records(Source::Sflow, &below));
        assert!(input.send_records(Source::Netflow, &below));
        assert!(woke.recv_timeout(Duration::from_millis(300)).is_err());
        // The hand-over that makes one source's waiting records reach it wakes the engine.
        assert!(input.send_records(Source::Sflow, &vec![r; WAKE_RECORDS as usize / 2 + 1]));
        woke.recv_timeout(Duration::from_secs(10))
            .expect("the engine woke for the pile");
        engine.join().unwrap();
    }

    #[test]
    fn a_full_channel_counts_what_it_dropped_per_source() {
        let (input, rx) = EngineInput::channel(1);
        let r = udp_record();
        assert!(input.send_records(Source::Sflow, &[r.clone(), r.clone()]));
        assert!(!input.send_records(Source::Netflow, &[r.clone(), r.clone(), r]));
        let s = input.stats();
        assert_eq!(s.of(Source::Sflow).records.load(Relaxed), 2);
        assert_eq!(s.of(Source::Netflow).dropped_batches.load(Relaxed), 1);
        assert_eq!(s.of(Source::Netflow).dropped_records.load(Relaxed), 3);
        assert_eq!(s.of(Source::Sflow).dropped_records.load(Relaxed), 0);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn a_source_with_too_many_records_waiting_drops_and_the_others_do_not() {
        let (input, rx) = EngineInput::channel(64);
        let r = udp_record();
        let big = vec![r.clone(); MAX_QUEUED_RECORDS as usize / 2];
        // Nothing waiting: taken even when larger than the bound.
        assert!(input.send_records(
            Source::Netflow,
            &vec![r.clone(); MAX_QUEUED_RECORDS as usize + 1]
        ));
        assert!(!input.send_records(Source::Netflow, &big));
        assert!(
            input.send_records(Source::Sflow, &big),
            "another source's bound"
        );
        let s = input.stats();
        assert_eq!(
            s.of(Source::Netflow).dropped_records.load(Relaxed),
            big.len() as u64
        );
        // Once the engine took (and dropped) the first batch, the source may send again.
        let first = rx.try_recv().unwrap();
        drop(first);
        assert_eq!(s.of(Source::Netflow).queued_records.load(Relaxed), 0);
        assert!(input.send_records(Source::Netflow, &big));
        assert_eq!(
            s.of(Source::Sflow).queued_records.load(Relaxed),
            big.len() as u64
        );
    }

    #[test]
    fn behind_every_exporter_keeps_its_fair_share_of_a_batch() {
        let (input, rx) = EngineInput::channel(64);
        let r = |n: u8| {
            TrafficRecord::packet(
                "192.0.2.1".parse().unwrap(),
                std::net::IpAddr::from([10, 0, 0, n]),
                17,
                100,
            )
        };
        let flooder: std::net::IpAddr = "192.0.2.66".parse().unwrap();
        let real: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mut records = vec![r(1); 1000];
        records.extend(vec![r(2); 30]);
        let spans = [
            ExporterSpan {
                end: 1000,
                exporter: flooder,
            },
            ExporterSpan {
                end: 1030,
                exporter: real,
            },
        ];
        // Not behind: the batch goes whole.
        assert!(input.send_exported(Source::Netflow, &records, &spans));
        // Behind (the engine took a batch that had waited longer than BEHIND_MS, and more
        // waits): the flooder is cut to its share, the real exporter's records all pass.
        std::thread::sleep(std::time::Duration::from_millis(BEHIND_MS + 20));
        drop(rx.try_recv().unwrap());
        assert!(input.send_records(Source::Netflow, &[r(3)]));
        assert!(input.send_exported(Source::Netflow, &records, &spans));
        let s = input.stats();
        // 256 records to share: the real exporter keeps its 30, the flooder the other 226.
        assert_eq!(
            s.of(Source::Netflow).dropped_records.load(Relaxed),
            (1030 - BEHIND_BATCH_RECORDS) as u64
        );
        let batches: Vec<Queued> = rx.try_iter().collect();
        let Batch::Records {
            records, exporters, ..
        } = &batches[1].batch
        else {
            panic!("records");
        };
        assert_eq!(records.len(), BEHIND_BATCH_RECORDS);
        assert_eq!(records.iter().filter(|x| x.dst == r(2).dst).count(), 30);
        assert_eq!(exporters[0].end, BEHIND_BATCH_RECORDS - 30);
        assert_eq!(exporters[1].end, BEHIND_BATCH_RECORDS);
    }

    #[test]
    fn a_collector_buffer_moves_when_at_least_half_full_and_is_copied_otherwise() {
        let (input, rx) = EngineInput::channel(64);
        let r = udp_record();
        let exporter: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mut records = Vec::with_capacity(8);
        records.extend(std::iter::repeat_n(r.clone(), 4));
        let mut spans = vec![ExporterSpan { end: 4, exporter }];
        let buffer = records.as_ptr();
        assert!(input.send_exported_buffers(Source::Sflow, &mut records, &mut spans));
        assert!(records.is_empty() && spans.is_empty());
        assert_eq!(records.capacity(), 0, "taken");
        let Batch::Records {
            records: sent,
            exporters,
            ..
        } = rx.try_recv().unwrap().batch
        else {
            panic!("records");
        };
        assert_eq!((sent.len(), sent.as_ptr()), (4, buffer));
        assert_eq!(exporters, vec![ExporterSpan { end: 4, exporter }]);
        // Less than half full: copied, the buffer stays.
        let mut records = Vec::with_capacity(16);
        records.extend(std::iter::repeat_n(r, 3));
        let mut spans = vec![ExporterSpan { end: 3, exporter }];
        assert!(input.send_exported_buffers(Source::Sflow, &mut records, &mut spans));
        assert!(records.is_empty() && records.capacity() == 16);
        let Batch::Records { records: sent, .. } = rx.try_recv().unwrap().batch else {
            panic!("records");
        };
        assert_eq!(sent.len(), 3);
        let s = input.stats();
        assert_eq!(s.of(Source::Sflow).records.load(Relaxed), 7);
    }

    #[test]
    fn fair_shares_are_max_min() {
        let ip = |n: u8| std::net::IpAddr::from([192, 0, 2, n]);
        let span = |end, n| ExporterSpan {
            end,
            exporter: ip(n),
        };
        // 30 records of exporter 1, then 200 of 2, 100 of 3, and 50 more of 2.
        let spans = [span(30, 1), span(230, 2), span(330, 3), span(380, 2)];
        let shares = fair_shares(380, &spans, 256);
        assert_eq!(shares, vec![(ip(1), 30), (ip(2), 126), (ip(3), 100)]);
        let shares = fair_shares(380, &spans, 30);
        assert_eq!(shares, vec![(ip(1), 10), (ip(2), 10), (ip(3), 10)]);
        assert_eq!(
            fair_shares(380, &spans, 1000),
            vec![(ip(1), 30), (ip(2), 250), (ip(3), 100)]
        );
    }
}
