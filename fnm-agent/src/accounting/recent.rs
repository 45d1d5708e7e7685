//! The latest records accounted, kept so that a host that floods from nothing has samples the
//! moment it is first watched.
//!
//! Batches are kept whole rather than record by record: a batch the engine owns (a collector's
//! or the capture thread's buffer) is moved in instead of being freed, so the hot path copies
//! nothing, and a borrowed batch is copied in one go. Pushing every record into a ring of
//! 4 096 (and popping the oldest) was about 3 of the 48 ns a record of the flow benchmark cost
//! the accounting (`flow_bench_tuples` in benches/accounting.rs: 48.2–48.8 µs per 1 024
//! records before, 43.6–45.8 after); with every cache cold the difference drowned in the
//! run-to-run spread.

use crate::traffic::TrafficRecord;
use std::collections::VecDeque;

/// Records of the latest batches, oldest first: at least [`super::RECENT_RECORDS`] of them
/// (when that many were accounted) and at most that many plus one batch's.
#[derive(Debug, Default)]
pub(super) struct RecentRecords {
    /// (time in ms the batch was accounted, its records).
    batches: VecDeque<(u64, Vec<TrafficRecord>)>,
    /// Records in `batches`.
    len: usize,
    /// The newest batch was started by [`RecentRecords::push`] and takes more records.
    open: bool,
}

/// Records a batch started for single records takes at most.
const SINGLES_CAPACITY: usize = 256;
/// A kept buffer may be this many records large whatever it holds.
const SLACK_RECORDS: usize = 8;

impl RecentRecords {
    /// Keeps `batch`, accounted at `now_ms`: moved in, or its last
    /// [`super::RECENT_RECORDS`] copied out when it is much larger than that or its buffer
    /// much larger than its records (what is kept stays within twice the records kept, however
    /// a source sizes its buffers).
    pub(super) fn keep(&mut self, now_ms: u64, batch: Vec<TrafficRecord>) {
        if batch.len() > 2 * super::RECENT_RECORDS
            || batch.capacity() > 2 * batch.len().max(SLACK_RECORDS)
        {
            self.copy(now_ms, &batch);
            return;
        }
        self.add(now_ms, batch);
    }

    /// Keeps a copy of `records` (at most the last [`super::RECENT_RECORDS`]).
    pub(super) fn copy(&mut self, now_ms: u64, records: &[TrafficRecord]) {
        let tail = &records[records.len().saturating_sub(super::RECENT_RECORDS)..];
        self.add(now_ms, tail.to_vec());
    }

    /// Keeps one record accounted at `now_ms`.
    pub(super) fn push(&mut self, now_ms: u64, record: &TrafficRecord) {
        match self.batches.back_mut() {
            Some((time, batch))
                if self.open && *time == now_ms && batch.len() < SINGLES_CAPACITY =>
            {
                batch.push(record.clone());
                self.len += 1;
                self.trim();
            }
            _ => {
                // Grown as records come (a batch may stay at one record when single records
                // alternate with batches).
                self.add(now_ms, vec![record.clone()]);
                self.open = true;
            }
        }
    }

    /// Every record kept with its time, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &TrafficRecord)> {
        self.batches
            .iter()
            .flat_map(|(time, batch)| batch.iter().map(move |r| (*time, r)))
    }

    fn add(&mut self, now_ms: u64, batch: Vec<TrafficRecord>) {
        if batch.is_empty() {
            return;
        }
        self.len += batch.len();
        self.batches.push_back((now_ms, batch));
        self.open = false;
        self.trim();
    }

    /// Drops the oldest batches while the newer ones hold enough.
    fn trim(&mut self) {
        while let Some((_, oldest)) = self.batches.front() {
            if self.len - oldest.len() < super::RECENT_RECORDS {
                break;
            }
            self.len -= oldest.len();
            self.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::RECENT_RECORDS;
    use std::net::{IpAddr, Ipv4Addr};

    fn record(n: u32) -> TrafficRecord {
        TrafficRecord::packet(
            IpAddr::V4(Ipv4Addr::from(n)),
            IpAddr::V4(Ipv4Addr::from(0x0a00_0001)),
            17,
            100,
        )
    }

    fn batch(from: u32, count: u32) -> Vec<TrafficRecord> {
        (from..from + count).map(record).collect()
    }

    /// The sources of the records kept, oldest first.
    fn kept(r: &RecentRecords) -> Vec<u32> {
        r.iter()
            .map(|(_, rec)| match rec.src {
                IpAddr::V4(a) => a.to_bits(),
                IpAddr::V6(_) => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn keeps_the_latest_records_in_order_and_bounded() {
        let mut r = RecentRecords::default();
        let mut next = 0;
        for round in 0..40u64 {
            // Owned, borrowed and single records, in turn.
            match round % 3 {
                0 => r.keep(round, batch(next, 1000)),
                1 => r.copy(round, &batch(next, 1000)),
                _ => {
                    for rec in batch(next, 1000) {
                        r.push(round, &rec);
                    }
                }
            }
            next += 1000;
            let sources = kept(&r);
            assert_eq!(sources.len(), r.len);
            assert!(sources.len() >= RECENT_RECORDS.min(next as usize));
            assert!(sources.len() < RECENT_RECORDS + 1000);
            // The newest ones, oldest first, nothing missing.
            let first = next - sources.len() as u32;
            assert_eq!(sources, (first..next).collect::<Vec<_>>());
        }
        // Times follow the batches.
        assert!(r.iter().all(|(t, _)| t >= 35));
    }

    #[test]
    fn a_huge_batch_keeps_only_its_tail() {
        let mut r = RecentRecords::default();
        r.keep(1, batch(0, 100_000));
        assert_eq!(
            kept(&r),
            (100_000 - RECENT_RECORDS as u32..100_000).collect::<Vec<_>>()
        );
        assert!(r
            .batches
            .iter()
            .all(|(_, b)| b.capacity() <= 2 * RECENT_RECORDS));
        r.copy(2, &batch(100_000, 100_000));
        assert_eq!(r.len, RECENT_RECORDS);
        r.keep(3, Vec::new());
        assert_eq!(r.len, RECENT_RECORDS);
    }

    /// Kept buffers hold at most about twice their records, however a source sized them and
    /// however single records and batches alternate.
    fn kept_capacity(r: &RecentRecords) -> usize {
        r.batches.iter().map(|(_, b)| b.capacity()).sum()
    }

    #[test]
    fn memory_stays_within_twice_the_records_kept() {
        let mut r = RecentRecords::default();
        for i in 0..10_000u32 {
            let mut one = Vec::with_capacity(65_536);
            one.push(record(2 * i));
            r.keep(u64::from(i), one);
            r.push(u64::from(i), &record(2 * i + 1));
        }
        assert_eq!(r.len, RECENT_RECORDS);
        assert!(
            kept_capacity(&r) <= 2 * r.len,
            "{} records in buffers of {}",
            r.len,
            kept_capacity(&r)
        );
        assert_eq!(
            kept(&r),
            (20_000 - RECENT_RECORDS as u32..20_000).collect::<Vec<_>>()
        );
    }
}
