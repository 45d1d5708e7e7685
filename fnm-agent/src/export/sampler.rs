//! Picks one in `flow_sample_rate` decoded flow records on the engine thread for the flow
//! export, at most `max_flows_per_slot` per poll slot: an attacker's record flood costs the
//! export a bounded copy per slot, counted when over (`flow_limit`).

use crate::traffic::{Source, TrafficRecord};

/// The sampler the engine feeds with every batch of records.
#[derive(Debug)]
pub struct FlowSampler {
    rate: usize,
    max: usize,
    /// Records still to pass over before the next pick.
    skip: usize,
    /// Picked in the slot being counted.
    pending: Vec<(Source, TrafficRecord)>,
    /// Picks over `max` in the slot being counted.
    pending_over: u64,
    /// The picks of the slot the last tick closed.
    closed: Vec<(Source, TrafficRecord)>,
    closed_over: u64,
}

impl FlowSampler {
    /// One in `rate` records, at most `max` per slot; `None` when `rate` is 0.
    pub fn new(rate: u32, max: usize) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: rate as usize,
            max,
            skip: rate as usize - 1,
            pending: Vec::new(),
            pending_over: 0,
            closed: Vec::new(),
            closed_over: 0,
        })
    }

    /// The sample rate.
    pub fn rate(&self) -> u32 {
        self.rate as u32
    }

    /// Looks at a batch: every `rate`-th record over all batches is picked.
    pub fn offer(&mut self, records: &[TrafficRecord], source: Source) {
        let mut i = self.skip;
        while i < records.len() {
            if self.pending.len() < self.max {
                self.pending.push((source, records[i].clone()));
            } else {
                self.pending_over += 1;
            }
            i += self.rate;
        }
        self.skip = i - records.len();
    }

    /// Ends the slot: its picks become [`FlowSampler::closed`].
    pub fn close_slot(&mut self) {
        std::mem::swap(&mut self.pending, &mut self.closed);
        self.pending.clear();
        self.closed_over = std::mem::take(&mut self.pending_over);
    }

    /// The picks of the slot the last tick closed, and how many were over the limit.
    pub fn closed(&self) -> (&[(Source, TrafficRecord)], u64) {
        (&self.closed, self.closed_over)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u16) -> Vec<TrafficRecord> {
        (0..n)
            .map(|i| TrafficRecord {
                src_port: i,
                ..TrafficRecord::packet(
                    "192.0.2.1".parse().unwrap(),
                    "10.0.0.1".parse().unwrap(),
                    17,
                    100,
                )
            })
            .collect()
    }

    #[test]
    fn every_nth_record_over_batches_of_any_size_is_picked() {
        let mut s = FlowSampler::new(3, 100).unwrap();
        let all = records(20);
        // Batches of 1, 4, 0, 7 and 8 records: picks are records 2, 5, 8, ... of the stream.
        let mut start = 0;
        for len in [1, 4, 0, 7, 8] {
            s.offer(&all[start..start + len], Source::Netflow);
            start += len;
        }
        s.close_slot();
        let ports: Vec<u16> = s.closed().0.iter().map(|(_, r)| r.src_port).collect();
        assert_eq!(ports, [2, 5, 8, 11, 14, 17]);
        s.close_slot();
        assert!(
            s.closed().0.is_empty(),
            "a slot's picks are handed over once"
        );
    }

    #[test]
    fn a_flood_is_bounded_per_slot_and_the_rest_counted() {
        let mut s = FlowSampler::new(1, 5).unwrap();
        s.offer(&records(12), Source::Sflow);
        s.close_slot();
        assert_eq!(s.closed().0.len(), 5);
        assert_eq!(s.closed().1, 7);
        assert!(FlowSampler::new(0, 5).is_none());
    }
}
