//! Distinct conversations of a host per second: FastNetMon's meaning of "flows"
//! (`conversations_per_second`).
//!
//! FastNetMon 1.2.4 (`increment_{incoming,outgoing}_flow_counters` in `fastnetmon_logic.cpp`)
//! keys each TCP or UDP packet of a local host by (remote address, source port, destination
//! port), in one table per protocol, and its flow rate is the number of distinct keys seen in
//! a calculation period divided by that period (the table is emptied every period, so a
//! conversation that stays active counts again every second). Here the period is the sliding
//! rate window: the rate is the number of distinct (remote address, ports, TCP or UDP) seen in
//! the last `rate_window`, divided by its length.
//!
//! Memory is bounded twice. A host direction keeps at most [`MAX_PER_HOST`] conversations;
//! when a new one would not fit, it keeps only the conversations whose hash falls in half of
//! the remaining hash space (adaptive sampling: each kept one then stands for two, four ...),
//! so a spray of tuples thins the sample instead of growing it. All hosts together keep at
//! most a [`Budget`] of conversations ([`MAX_TOTAL`]). Once half of it is used, each host
//! direction holding conversations is held to its fair share of the budget (at least
//! [`MIN_PER_HOST`]; a seat is kept spare), when it notes a new one and at every slot close,
//! so a spray over many victims leaves room for the next victim; a new conversation that finds the whole budget
//! used is not counted (counted in [`BudgetStats::refused`]) until the next slot close. The estimate's relative error once
//! sampling is about 1 / √(kept / 2): 4 % at [`MAX_PER_HOST`], 18 % at [`MIN_PER_HOST`];
//! below its cap of conversations in the window it is exact.

use std::{
    collections::HashMap,
    hash::BuildHasherDefault,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

/// Most conversations one host direction keeps.
pub const MAX_PER_HOST: usize = 1024;
/// Fewest a host direction is held to when the budget is under pressure.
pub const MIN_PER_HOST: usize = 64;
/// Most conversations all hosts keep together (about 16 bytes each).
pub const MAX_TOTAL: usize = 1 << 21;
/// Deepest sampling level (a kept conversation stands for 2^level).
const MAX_LEVEL: u32 = 40;

/// Conversations kept over all hosts, shared by every host direction's [`Conversations`].
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    limit: usize,
    used: AtomicUsize,
    /// Tables holding at least one conversation.
    active: AtomicUsize,
    thinned_host: AtomicU64,
    refused: AtomicU64,
}

/// What the budget counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetStats {
    /// Conversations kept now, over all hosts.
    pub used: usize,
    /// The budget.
    pub limit: usize,
    /// Times a host's sample was thinned because it held its cap: [`MAX_PER_HOST`]
    /// conversations, or its fair share of a budget more than half used.
    pub thinned_host: u64,
    /// New conversations not counted because all hosts together held the budget (until the
    /// next slot close brings the busiest down to their shares).
    pub refused: u64,
}

impl Budget {
    /// A budget of `limit` conversations over all hosts.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(BudgetInner {
                limit: limit.max(1),
                used: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
                thinned_host: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            used: self.inner.used.load(Ordering::Relaxed),
            limit: self.inner.limit,
            thinned_host: self.inner.thinned_host.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
        }
    }

    fn full(&self) -> bool {
        self.inner.used.load(Ordering::Relaxed) >= self.inner.limit
    }

    /// Most conversations one table may hold now: [`MAX_PER_HOST`], or while more than half
    /// the budget is used, a fair share with a seat spare for a newcomer, limit / (active
    /// tables + 1) (at least [`MIN_PER_HOST`]).
    fn cap(&self) -> usize {
        let used = self.inner.used.load(Ordering::Relaxed);
        if used < self.inner.limit / 2 {
            return MAX_PER_HOST;
        }
        let active = self.inner.active.load(Ordering::Relaxed);
        (self.inner.limit / (active + 1)).clamp(MIN_PER_HOST, MAX_PER_HOST)
    }

    /// A table went from `before` to `after` conversations.
    fn resized(&self, before: usize, after: usize) {
        if after >= before {
            self.inner.used.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.inner.used.fetch_sub(before - after, Ordering::Relaxed);
        }
        match (before > 0, after > 0) {
            (false, true) => {
                self.inner.active.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.inner.active.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The conversations of one host direction seen in the rate window, sampled when many.
#[derive(Debug)]
pub struct Conversations {
    /// Conversation hash → sequence number of the slot it was last seen in.
    seen: HashMap<u64, u32, BuildHasherDefault<super::PreHashed>>,
    /// Sequence number of the open slot.
    seq: u32,
    /// Kept are the conversations whose hash has its top `level` bits clear.
    level: u32,
    /// Kept conversations first seen in the open slot (for the slot rate).
    in_slot: u64,
    /// Conversations counted since the table was made (each time one entered the window;
    /// 2^level for a sampled one).
    pub counted: u64,
    /// What the last slot close measured (zero when the direction had no traffic then).
    pub last: Closed,
    budget: Budget,
}

impl Clone for Conversations {
    fn clone(&self) -> Self {
        self.budget.resized(0, self.seen.len());
        Self {
            seen: self.seen.clone(),
            seq: self.seq,
            level: self.level,
            in_slot: self.in_slot,
            counted: self.counted,
            last: self.last,
            budget: self.budget.clone(),
        }
    }
}

impl Drop for Conversations {
    fn drop(&mut self) {
        self.budget.resized(self.seen.len(), 0);
    }
}

/// What a closed slot measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Closed {
    /// Estimated distinct conversations in the window (the slots closed so far, up to
    /// `slots` of them).
    pub window: f64,
    /// Estimated distinct conversations seen in the closed slot.
    pub slot: f64,
}

impl Conversations {
    /// An empty table drawing on `budget`.
    pub fn new(budget: Budget) -> Self {
        Self {
            seen: HashMap::default(),
            seq: 0,
            level: 0,
            in_slot: 0,
            counted: 0,
            last: Closed::default(),
            budget,
        }
    }

    /// Nothing kept and nothing pending: closing slots would change nothing but the
    /// sequence number, so a quiet direction may skip them.
    pub fn is_quiet(&self) -> bool {
        self.seen.is_empty() && self.level == 0 && self.in_slot == 0
    }

    fn sampled(&self, key: u64) -> bool {
        self.level == 0 || key >> (64 - self.level) == 0
    }

    /// Notes a packet or record of conversation `key` (a seeded hash); returns how many
    /// conversations it adds to the window's estimate (0 when already counted or not sampled,
    /// else 2^level).
    #[inline]
    pub fn note(&mut self, key: u64) -> u64 {
        if !self.sampled(key) {
            return 0;
        }
        if let Some(stamp) = self.seen.get_mut(&key) {
            if *stamp != self.seq {
                *stamp = self.seq;
                self.in_slot += 1;
            }
            return 0;
        }
        while self.seen.len() >= self.budget.cap() {
            self.budget
                .inner
                .thinned_host
                .fetch_add(1, Ordering::Relaxed);
            if !self.thin() || !self.sampled(key) {
                return 0;
            }
        }
        if self.budget.full() {
            // Within its share, but the others hold the budget: not counted now. They come
            // down to their shares at the slot close, which makes room.
            self.budget.inner.refused.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        self.seen.insert(key, self.seq);
        self.budget.resized(self.seen.len() - 1, self.seen.len());
        self.in_slot += 1;
        self.counted = self.counted.wrapping_add(1 << self.level);
        1 << self.level
    }

    /// Keeps half of the hash space; false when already at the deepest level.
    fn thin(&mut self) -> bool {
        if self.level >= MAX_LEVEL {
            return false;
        }
        self.level += 1;
        let level = self.level;
        let before = self.seen.len();
        self.seen.retain(|k, _| k >> (64 - level) == 0);
        self.budget.resized(before, self.seen.len());
        true
    }

    /// Closes the open slot: forgets conversations not seen in the last `slots` slots and
    /// returns the estimates.
    pub fn close(&mut self, slots: usize) -> Closed {
        let slots = u32::try_from(slots.max(1)).unwrap_or(u32::MAX);
        let seq = self.seq;
        let before = self.seen.len();
        self.seen.retain(|_, s| seq.wrapping_sub(*s) < slots);
        self.budget.resized(before, self.seen.len());
        // Under pressure, back to the fair share, which makes room for other hosts.
        while self.seen.len() > self.budget.cap() {
            self.budget
                .inner
                .thinned_host
                .fetch_add(1, Ordering::Relaxed);
            if !self.thin() {
                break;
            }
        }
        let scale = (1u64 << self.level) as f64;
        let closed = Closed {
            window: self.seen.len() as f64 * scale,
            slot: self.in_slot as f64 * scale,
        };
        self.in_slot = 0;
        self.seq = self.seq.wrapping_add(1);
        // Fewer conversations now: sample more finely again (for at most one window the
        // estimate misses the conversations the coarser sample had left out).
        if self.level > 0 && self.seen.len() < MAX_PER_HOST / 8 {
            self.level -= 1;
        }
        if self.seen.is_empty() {
            // An idle host keeps no table, only its counters.
            self.seen.shrink_to(0);
        } else if self.seen.capacity() > 64 && self.seen.len() < self.seen.capacity() / 4 {
            self.seen.shrink_to(self.seen.len() * 2);
        }
        closed
    }
}

/// Registers `fnm_conversations_kept`, `fnm_conversations_thinned_total` and
/// `fnm_conversations_refused_total` (while a threshold uses `conversations_per_second`).
pub fn register_metrics(
    registry: &mut prometheus_client::registry::Registry,
    snap: &crate::engine::snapshot::Snapshot,
) {
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
    let Some(s) = snap.conversations else {
        return;
    };
    let kept = Gauge::<i64>::default();
    kept.set(s.used as i64);
    registry.register(
        "fnm_conversations_kept",
        "TCP and UDP conversations kept for conversations_per_second, over all hosts (at most \
         2,097,152)",
        kept,
    );
    let thinned = Counter::<u64>::default();
    thinned.inc_by(s.thinned_host);
    registry.register(
        "fnm_conversations_thinned",
        "Times a host's conversation sample was halved: it held 1,024 conversations, or its \
         fair share of a budget more than half used; its rate is then estimated from the sample",
        thinned,
    );
    let refused = Counter::<u64>::default();
    refused.inc_by(s.refused);
    registry.register(
        "fnm_conversations_refused",
        "New conversations not counted because all hosts together held the conversation \
         budget (until the next slot close)",
        refused,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> u64 {
        // A stand-in for the seeded hash: uniform over the 64 bits.
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5bd1_e995
    }

    #[test]
    fn counts_distinct_conversations_of_the_window_exactly_when_few() {
        let budget = Budget::new(MAX_TOTAL);
        let mut c = Conversations::new(budget.clone());
        // Slot 0: 100 conversations, each twice.
        for i in 0..100 {
            c.note(key(i));
            assert_eq!(c.note(key(i)), 0);
        }
        let closed = c.close(4);
        assert_eq!((closed.window, closed.slot), (100.0, 100.0));
        // Slot 1: 50 of the same and 30 new ones: 130 distinct in the window.
        for i in 50..130 {
            c.note(key(i));
        }
        let closed = c.close(4);
        assert_eq!((closed.window, closed.slot), (130.0, 80.0));
        // Four quiet slots later, everything left the window.
        for _ in 0..3 {
            c.close(4);
        }
        let closed = c.close(4);
        assert_eq!(closed.window, 0.0);
        assert_eq!(budget.stats().used, 0);
        assert_eq!(c.counted, 130);
    }

    #[test]
    fn a_spray_of_tuples_is_sampled_within_bounds_and_estimated() {
        let budget = Budget::new(MAX_TOTAL);
        let mut c = Conversations::new(budget.clone());
        let n = 200_000u64;
        for i in 0..n {
            c.note(key(i));
        }
        assert!(budget.stats().used <= MAX_PER_HOST);
        assert!(budget.stats().thinned_host > 0);
        let est = c.close(1).window;
        let err = (est - n as f64).abs() / n as f64;
        assert!(err < 0.15, "estimate {est} of {n}");
    }

    #[test]
    fn the_shared_budget_bounds_all_hosts_shares_them_fairly_and_drops_give_it_back() {
        let budget = Budget::new(3_000);
        let mut hosts: Vec<Conversations> = (0..10)
            .map(|_| Conversations::new(budget.clone()))
            .collect();
        // A spray over ten victims at once: each ends near its share (300).
        for i in 0..1_000 {
            for (h, c) in hosts.iter_mut().enumerate() {
                c.note(key(h as u64 * 1_000_000 + i));
            }
        }
        let s = budget.stats();
        assert!(s.used <= 3_000, "{s:?}");
        assert!(s.thinned_host > 0, "{s:?}");
        for c in hosts.iter_mut() {
            let est = c.close(1).window;
            assert!((est - 1_000.0).abs() < 300.0, "estimate {est} of 1000");
        }
        // One victim after the other, a slot apart: the earlier ones shrink to their share
        // at the slot close, so the last one still gets room.
        let budget = Budget::new(3_000);
        let mut hosts: Vec<Conversations> = (0..10)
            .map(|_| Conversations::new(budget.clone()))
            .collect();
        let mut last = 0.0;
        for h in 0..10 {
            for i in 0..1_000 {
                hosts[h].note(key(h as u64 * 1_000_000 + i));
            }
            for (g, c) in hosts.iter_mut().enumerate() {
                let est = c.close(100).window;
                if g == h {
                    last = est;
                }
            }
            assert!(budget.stats().used <= 3_000 + 1_024, "{:?}", budget.stats());
        }
        assert!(
            (last - 1_000.0).abs() < 400.0,
            "last victim's estimate {last}"
        );
        assert!(budget.stats().used <= 3_000, "{:?}", budget.stats());
        drop(hosts);
        assert_eq!(budget.stats().used, 0);
        assert_eq!(budget.inner.active.load(Ordering::Relaxed), 0);
    }
}
