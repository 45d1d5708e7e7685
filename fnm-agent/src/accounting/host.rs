//! The record of one local host: what a million tracked hosts cost.
//!
//! A host is one small entry in the table (its two directions as tagged pointers, its network
//! rows, when it was last active) and, per direction that ever had traffic, one heap block:
//!
//! * **quiet** ([`Quiet`], 128 bytes): the cumulative counters, the whitelisted sources'
//!   counters and the conversations counted so far. A direction with nothing in the rate
//!   window needs no more: its rates are zero.
//! * **live** ([`Live`]): the same, plus the rate window ([`Window`]): the slot being measured
//!   (64-bit, the hot path adds to it), the running sum of the closed slots and a ring of
//!   closed slots kept as 32-bit counters (widened to 64-bit, exactly, the first time a slot
//!   does not fit).
//!
//! A direction turns live when traffic is credited to it and quiet again at the tick that
//! finds its window and ring empty, so only hosts with traffic in the last rate window pay for
//! a window, and a host seen one way (a spoofed flood's) pays nothing for the other direction.
//! Rates are not stored: they are worked out when read from the window's sum and the measured
//! lengths of the window and the last slot, with the same arithmetic as before, so they are
//! exact to the bit.

use super::{conversations, proto, Direction, RateKind, Rates};
use fnm_common::{HostCounters, WhitelistedCounters};

/// Counters of one [`HostCounters`], in order.
const FIELDS: usize = 5 + 2 * proto::COUNT;

/// A closed slot of a ring in 32 bits per counter.
type NarrowSlot = [u32; FIELDS];

/// The counters of `c` as an array (the order of [`from_fields`]).
#[inline]
fn fields(c: &HostCounters) -> [u64; FIELDS] {
    let mut f = [0u64; FIELDS];
    f[0] = c.packets;
    f[1] = c.bytes;
    f[2] = c.flows;
    f[3] = c.tcp_syn_packets;
    f[4] = c.fragments;
    f[5..5 + proto::COUNT].copy_from_slice(&c.proto_packets);
    f[5 + proto::COUNT..].copy_from_slice(&c.proto_bytes);
    f
}

/// The counters of an array made by [`fields`].
#[inline]
fn from_fields(f: &[u64; FIELDS]) -> HostCounters {
    let mut c = HostCounters {
        packets: f[0],
        bytes: f[1],
        flows: f[2],
        tcp_syn_packets: f[3],
        fragments: f[4],
        ..HostCounters::default()
    };
    c.proto_packets.copy_from_slice(&f[5..5 + proto::COUNT]);
    c.proto_bytes.copy_from_slice(&f[5 + proto::COUNT..]);
    c
}

/// Takes `c` out of `sum` again (wrapping, the inverse of [`HostCounters::accumulate`]).
fn deduct(sum: &mut HostCounters, c: &HostCounters) {
    sum.packets = sum.packets.wrapping_sub(c.packets);
    sum.bytes = sum.bytes.wrapping_sub(c.bytes);
    sum.flows = sum.flows.wrapping_sub(c.flows);
    sum.tcp_syn_packets = sum.tcp_syn_packets.wrapping_sub(c.tcp_syn_packets);
    sum.fragments = sum.fragments.wrapping_sub(c.fragments);
    for (s, v) in sum.proto_packets.iter_mut().zip(&c.proto_packets) {
        *s = s.wrapping_sub(*v);
    }
    for (s, v) in sum.proto_bytes.iter_mut().zip(&c.proto_bytes) {
        *s = s.wrapping_sub(*v);
    }
}

/// The closed slots of a rate window, oldest overwritten first.
#[derive(Debug, Clone, Default)]
enum Ring {
    /// Not sized yet (a window that never closed a slot).
    #[default]
    Unsized,
    /// Every slot fits in 32 bits per counter (4 slots: 208 bytes).
    Narrow(Box<[NarrowSlot]>),
    /// Some slot did not: 64 bits per counter, for as long as the direction stays live.
    Wide(Box<[HostCounters]>),
}

impl Ring {
    fn len(&self) -> usize {
        match self {
            Ring::Unsized => 0,
            Ring::Narrow(r) => r.len(),
            Ring::Wide(r) => r.len(),
        }
    }

    /// Slot `i` (in range).
    fn get(&self, i: usize) -> HostCounters {
        match self {
            Ring::Unsized => HostCounters::default(),
            Ring::Narrow(r) => from_fields(&r[i].map(u64::from)),
            Ring::Wide(r) => r[i],
        }
    }

    /// Puts `c` in slot `i` (in range) and returns what was there.
    fn replace(&mut self, i: usize, c: &HostCounters) -> HostCounters {
        if let Ring::Narrow(r) = self {
            let f = fields(c);
            if f.iter().all(|v| *v <= u64::from(u32::MAX)) {
                let narrow = f.map(|v| v as u32);
                let old = std::mem::replace(&mut r[i], narrow);
                return from_fields(&old.map(u64::from));
            }
            // Widened once, exactly; the ring stays wide until the direction is quiet.
            let wide: Box<[HostCounters]> =
                r.iter().map(|s| from_fields(&s.map(u64::from))).collect();
            *self = Ring::Wide(wide);
        }
        match self {
            Ring::Wide(r) => std::mem::replace(&mut r[i], *c),
            _ => HostCounters::default(),
        }
    }
}

/// The rate window of a direction with traffic in it.
///
/// Not aligned to a cache line, though a credit's 104 bytes of counters would then span two
/// lines instead of two or three: a `Live` box aligned to 64 comes from `posix_memalign`,
/// which places glibc's 384-byte boxes 512 bytes apart instead of 400, and with it the tick's
/// sweeps over every live host (closing slots, detection, ranking) made the engine cost 25 %
/// more at 81,920 XDP hosts (docs/performance.md, target 2), for a credit gain within the
/// noise.
#[derive(Debug, Clone, Default)]
pub(super) struct Window {
    /// Counters of the poll slot being measured.
    pub(super) current: HostCounters,
    /// Sum of the ring, kept as slots enter and leave it.
    sum: HostCounters,
    ring: Ring,
    /// Next slot of the ring to overwrite.
    next: u32,
    /// How long the slots of the ring lasted together at the last close, in ms.
    window_ms: u64,
    /// How long the last closed slot lasted, in ms.
    slot_ms: u64,
}

impl Window {
    /// Nothing in the slot being measured nor in the ring.
    #[inline]
    fn is_empty(&self) -> bool {
        let idle = HostCounters::default();
        self.current == idle && self.sum == idle
    }

    /// Closes the slot being measured, which lasted `slot_ms`, into a ring of `slots` slots
    /// that lasted `window_ms` together.
    fn close(&mut self, slots: usize, slot_ms: u64, window_ms: u64) {
        if self.ring.len() != slots {
            self.ring = Ring::Narrow(vec![[0; FIELDS]; slots].into_boxed_slice());
            self.next = 0;
            self.sum = HostCounters::default();
        }
        let closed = std::mem::take(&mut self.current);
        let leaving = self.ring.replace(self.next as usize, &closed);
        self.sum.accumulate(&closed);
        deduct(&mut self.sum, &leaving);
        self.next = ((self.next as usize + 1) % slots) as u32;
        self.slot_ms = slot_ms;
        self.window_ms = window_ms;
    }

    /// The last closed slot, if any.
    fn last_slot(&self) -> Option<HostCounters> {
        let n = self.ring.len();
        (n > 0).then(|| self.ring.get((self.next as usize + n - 1) % n))
    }

    fn window_seconds(&self) -> f64 {
        self.window_ms as f64 / 1000.0
    }

    fn slot_seconds(&self) -> f64 {
        self.slot_ms as f64 / 1000.0
    }

    /// Packets in the ring and the slot being measured.
    #[inline]
    pub(super) fn score(&self) -> u64 {
        self.sum.packets.wrapping_add(self.current.packets)
    }

    #[cfg(test)]
    pub(super) fn ring_sum(&self) -> (HostCounters, HostCounters) {
        let mut sum = HostCounters::default();
        for i in 0..self.ring.len() {
            sum.accumulate(&self.ring.get(i));
        }
        (sum, self.sum)
    }
}

/// What every direction with traffic keeps, quiet or live.
#[derive(Debug, Clone, Default)]
pub(super) struct Quiet {
    /// Cumulative counters since the agent started (or the state was restored), up to the
    /// last closed slot: a live direction's slot being measured joins them when it closes, so
    /// a credit adds to one set of counters (two cache lines or three), not two.
    pub(super) total: HostCounters,
    /// Cumulative traffic of whitelisted sources (`[detection] whitelist_sources`) that XDP
    /// counted apart: in none of the counters above, so never in a rate or the rate window.
    pub(super) whitelisted: WhitelistedCounters,
    /// The conversations of the rate window and their count (only while conversations are
    /// tracked, from the direction's first TCP or UDP traffic on). A quiet direction's table
    /// is empty.
    pub(super) tracked: Option<Box<conversations::Conversations>>,
}

/// A direction with traffic in its rate window.
#[derive(Debug, Clone, Default)]
pub(super) struct Live {
    pub(super) quiet: Quiet,
    pub(super) window: Window,
}

impl Live {
    /// Closes the current slot (see [`Window::close`]); conversations are dropped when no
    /// longer counted. Returns true when the direction is quiet now: nothing in the window and
    /// no conversation kept.
    pub(super) fn close_slot(
        &mut self,
        slots: usize,
        slot_ms: u64,
        window_ms: u64,
        conversations: bool,
    ) -> bool {
        if !conversations {
            self.quiet.tracked = None;
        }
        if self.window.is_empty() {
            // Nothing in the slot nor in the window (so nothing in the ring either): the rates
            // are zero, and closing the slot would change nothing else.
            if let Some(c) = self.quiet.tracked.as_mut() {
                c.close(slots);
                c.last = conversations::Closed::default();
            }
            return self.quiet.tracked.as_ref().is_none_or(|c| c.is_quiet());
        }
        // The slot joins the cumulative counters as it closes (credits add to it alone).
        self.quiet.total.accumulate(&self.window.current);
        self.window.close(slots, slot_ms, window_ms);
        if let Some(c) = self.quiet.tracked.as_mut() {
            c.last = c.close(slots);
        }
        false
    }

    /// The view of this direction.
    pub(super) fn view(&self) -> DirView<'_> {
        DirView {
            quiet: Some(&self.quiet),
            window: Some(&self.window),
        }
    }
}

/// One direction of a host: never seen, quiet or live, one tagged pointer.
#[derive(Debug, Clone, Default)]
pub(super) enum Dir {
    /// No traffic ever.
    #[default]
    Absent,
    /// Traffic before, none in the rate window.
    Quiet(Box<Quiet>),
    /// Traffic in the rate window.
    Live(Box<Live>),
}

/// Starts loading every cache line of `counters`: at 104 bytes, aligned to 16 only (see
/// [`Window`]), they span two or three lines, and a credit adds to fields at both ends (the
/// packets and the protocol class's bytes), so prefetching the first line alone left a miss
/// per credit.
#[inline(always)]
fn prefetch_counters(counters: &HostCounters) {
    let start: *const u8 = (counters as *const HostCounters).cast();
    let last = std::mem::size_of::<HostCounters>() - 1;
    crate::capture::prefetch_line(start);
    crate::capture::prefetch_line(start.wrapping_add(64.min(last)));
    crate::capture::prefetch_line(start.wrapping_add(last));
}

impl Dir {
    /// The live form, made live when it was not.
    #[inline(always)]
    pub(super) fn live(&mut self) -> &mut Live {
        if !matches!(self, Dir::Live(_)) {
            self.make_live();
        }
        match self {
            Dir::Live(l) => l,
            _ => unreachable!("made live above"),
        }
    }

    /// Turns an absent or quiet direction live (once per burst of traffic, not per credit).
    #[cold]
    fn make_live(&mut self) {
        let quiet = match std::mem::take(self) {
            Dir::Quiet(q) => *q,
            _ => Quiet::default(),
        };
        *self = Dir::Live(Box::new(Live {
            quiet,
            window: Window::default(),
        }));
    }

    /// Starts loading the counters a credit adds to (a hint, see
    /// [`crate::capture::prefetch_line`]).
    #[inline]
    pub(super) fn prefetch(&self) {
        match self {
            Dir::Absent => {}
            Dir::Quiet(q) => prefetch_counters(&q.total),
            Dir::Live(l) => prefetch_counters(&l.window.current),
        }
    }

    /// The counters every direction keeps, allocated when absent.
    pub(super) fn quiet_mut(&mut self) -> &mut Quiet {
        if matches!(self, Dir::Absent) {
            *self = Dir::Quiet(Box::default());
        }
        match self {
            Dir::Quiet(q) => q,
            Dir::Live(l) => &mut l.quiet,
            Dir::Absent => unreachable!("allocated above"),
        }
    }

    /// Closes the slot of a live direction; one found quiet gives its window back.
    #[inline]
    pub(super) fn close_slot(
        &mut self,
        slots: usize,
        slot_ms: u64,
        window_ms: u64,
        conversations: bool,
    ) {
        let Dir::Live(l) = self else { return };
        if l.close_slot(slots, slot_ms, window_ms, conversations) {
            let quiet = std::mem::take(&mut l.quiet);
            *self = Dir::Quiet(Box::new(quiet));
        }
    }

    /// Packets in the rate window, the slot being measured included.
    #[inline]
    pub(super) fn score(&self) -> u64 {
        match self {
            Dir::Live(l) => l.window.score(),
            _ => 0,
        }
    }

    /// Packets in the slot being measured.
    #[inline]
    pub(super) fn current_packets(&self) -> u64 {
        match self {
            Dir::Live(l) => l.window.current.packets,
            _ => 0,
        }
    }

    /// Drops the conversations kept (conversations are no longer counted).
    pub(super) fn drop_conversations(&mut self) {
        match self {
            Dir::Quiet(q) => q.tracked = None,
            Dir::Live(l) => l.quiet.tracked = None,
            Dir::Absent => {}
        }
    }

    pub(super) fn view(&self) -> DirView<'_> {
        match self {
            Dir::Absent => DirView::default(),
            Dir::Quiet(q) => DirView {
                quiet: Some(q),
                window: None,
            },
            Dir::Live(l) => l.view(),
        }
    }
}

/// One host in one direction, as read: cumulative counters, and rates worked out from the
/// rate window when asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirView<'a> {
    quiet: Option<&'a Quiet>,
    window: Option<&'a Window>,
}

/// Counters of a direction never seen.
static ZERO_COUNTERS: HostCounters = HostCounters {
    packets: 0,
    bytes: 0,
    flows: 0,
    tcp_syn_packets: 0,
    fragments: 0,
    proto_packets: [0; proto::COUNT],
    proto_bytes: [0; proto::COUNT],
};
static ZERO_WHITELISTED: WhitelistedCounters = WhitelistedCounters {
    packets: 0,
    bytes: 0,
};

impl<'a> DirView<'a> {
    /// Cumulative counters since the agent started (or the state was restored): those of the
    /// closed slots and of the slot being measured.
    pub fn total(&self) -> HostCounters {
        let mut total = self.quiet.map_or(ZERO_COUNTERS, |q| q.total);
        if let Some(window) = self.window {
            total.accumulate(&window.current);
        }
        total
    }

    /// Cumulative traffic of whitelisted sources (`[detection] whitelist_sources`) that XDP
    /// counted apart: in none of the other counters, so never in a rate.
    pub fn whitelisted(&self) -> &'a WhitelistedCounters {
        self.quiet.map_or(&ZERO_WHITELISTED, |q| &q.whitelisted)
    }

    fn tracked(&self) -> Option<&'a conversations::Conversations> {
        self.quiet.and_then(|q| q.tracked.as_deref())
    }

    /// Rates over the last rate window (sliding, updated every poll).
    pub fn rates(&self) -> Rates {
        let Some(w) = self.window else {
            return Rates::default();
        };
        let mut r = Rates::from_window(&w.sum, w.window_seconds());
        if let Some(c) = self.tracked() {
            r.conversations_per_second = c.last.window / w.window_seconds().max(1e-3);
        }
        r
    }

    /// Rates over the last poll slot alone: noisier, but the true rate of a flood younger
    /// than the window (reported as its initial and peak rates).
    pub fn slot_rates(&self) -> Rates {
        let Some(w) = self.window else {
            return Rates::default();
        };
        let Some(last) = w.last_slot() else {
            return Rates::default();
        };
        let mut r = Rates::from_window(&last, w.slot_seconds());
        if let Some(c) = self.tracked() {
            r.conversations_per_second = c.last.slot / w.slot_seconds().max(1e-3);
        }
        r
    }

    /// One rate over the last rate window (what [`DirView::rates`] holds for `kind`).
    #[inline]
    pub fn rate(&self, kind: RateKind) -> f64 {
        let Some(w) = self.window else {
            return 0.0;
        };
        let s = w.window_seconds();
        let s = if s > 0.0 { s } else { 1.0 };
        let c = &w.sum;
        let v = match kind {
            RateKind::Pps => c.packets,
            RateKind::BytesPerSecond => c.bytes,
            RateKind::FlowsPerSecond => c.flows,
            RateKind::TcpPps => c.proto_packets[proto::TCP],
            RateKind::TcpBytesPerSecond => c.proto_bytes[proto::TCP],
            RateKind::UdpPps => c.proto_packets[proto::UDP],
            RateKind::UdpBytesPerSecond => c.proto_bytes[proto::UDP],
            RateKind::IcmpPps => c.proto_packets[proto::ICMP],
            RateKind::IcmpBytesPerSecond => c.proto_bytes[proto::ICMP],
            RateKind::TcpSynPps => c.tcp_syn_packets,
            RateKind::FragmentsPps => c.fragments,
            RateKind::ConversationsPerSecond => {
                return self
                    .tracked()
                    .map_or(0.0, |t| t.last.window / w.window_seconds().max(1e-3))
            }
        };
        v as f64 / s
    }

    /// Packets per second over the last rate window.
    #[inline]
    pub fn pps(&self) -> f64 {
        self.rate(RateKind::Pps)
    }

    /// Counters of the last closed slot (`None` before the first slot with traffic closed).
    /// Meaningful only while `slot_rates` is not zero.
    pub fn last_slot(&self) -> Option<HostCounters> {
        self.window.and_then(Window::last_slot)
    }

    /// Conversations counted since tracking began (each time one entered the rate window;
    /// an estimate once sampled): 0 while `conversations_per_second` is not used.
    pub fn conversations(&self) -> u64 {
        self.tracked().map_or(0, |c| c.counted)
    }

    #[cfg(test)]
    pub(super) fn window(&self) -> Option<&'a Window> {
        self.window
    }
}

/// A local host's two directions.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Indexed by [`Direction::index`].
    pub(super) dirs: [Dir; 2],
    /// Its network and hostgroup rows ([`super::TrafficGroups`]).
    pub(super) groups: super::groups::GroupTag,
    /// Time of the last slot with traffic in either direction (or whitelisted traffic), ms.
    pub(super) last_active_ms: u64,
}

impl Host {
    /// One direction.
    pub fn dir(&self, direction: Direction) -> DirView<'_> {
        self.dirs[direction.index()].view()
    }

    /// Both directions, indexed by [`Direction::index`].
    pub fn dirs(&self) -> [DirView<'_>; 2] {
        [self.dirs[0].view(), self.dirs[1].view()]
    }

    /// Time of the last slot with traffic in either direction, in ms of the accounting's
    /// clock.
    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms
    }

    /// Packets in the rate window, both directions, the slot being measured included.
    #[inline]
    pub(super) fn score(&self) -> u64 {
        self.dirs
            .iter()
            .map(Dir::score)
            .fold(0u64, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_stays_small() {
        // The table entry holds two tagged pointers; a direction with traffic costs one block.
        assert_eq!(std::mem::size_of::<Dir>(), 16);
        assert_eq!(std::mem::size_of::<Quiet>(), 128);
        assert!(
            std::mem::size_of::<Live>() <= 384,
            "{}",
            std::mem::size_of::<Live>()
        );
        assert!(
            std::mem::size_of::<Host>() <= 56,
            "{}",
            std::mem::size_of::<Host>()
        );
    }

    fn counters(packets: u64, bytes: u64) -> HostCounters {
        let mut c = HostCounters {
            packets,
            bytes,
            flows: 1,
            ..Default::default()
        };
        c.proto_packets[proto::UDP] = packets;
        c.proto_bytes[proto::UDP] = bytes;
        c
    }

    #[test]
    fn a_slot_too_large_for_32_bits_widens_the_ring_exactly() {
        let mut w = Window::default();
        let big = counters(3, 5 << 32);
        for (i, c) in [counters(1, 100), big, counters(2, 200), counters(4, 400)]
            .into_iter()
            .enumerate()
        {
            w.current = c;
            w.close(4, 250, 1000);
            let (ring, sum) = w.ring_sum();
            assert_eq!(ring, sum, "slot {i}");
            assert_eq!(w.last_slot(), Some(c));
        }
        assert!(matches!(w.ring, Ring::Wide(_)));
        assert_eq!(w.sum.bytes, 100 + (5 << 32) + 200 + 400);
        for i in 0..4 {
            w.close(4, 250, 1000);
            assert_eq!(w.ring_sum().0, w.sum, "emptying {i}");
        }
        assert_eq!(w.sum, HostCounters::default());
    }

    #[test]
    fn a_direction_goes_quiet_and_live_again_keeping_its_totals() {
        let mut d = Dir::default();
        assert_eq!(d.view().total().packets, 0);
        let l = d.live();
        l.quiet.total = counters(2, 200);
        l.window.current = counters(5, 500);
        // The slot being measured is part of the totals before it closes and after.
        assert_eq!(d.view().total().packets, 7);
        d.close_slot(2, 500, 1000, false);
        assert_eq!(d.view().total().packets, 7);
        assert_eq!(d.view().rates().pps, 5.0);
        assert_eq!(d.view().slot_rates().pps, 10.0);
        assert_eq!(d.view().rate(RateKind::UdpBytesPerSecond), 500.0);
        d.close_slot(2, 500, 1000, false);
        assert!(matches!(d, Dir::Live(_)), "still in the window");
        d.close_slot(2, 500, 1000, false);
        assert!(
            matches!(d, Dir::Live(_)),
            "empty, found quiet at the next close"
        );
        d.close_slot(2, 500, 1000, false);
        assert!(matches!(d, Dir::Quiet(_)));
        assert_eq!(d.view().total().packets, 7);
        assert_eq!(d.view().rates(), Rates::default());
        assert_eq!(d.view().last_slot(), None);
        d.live().window.current = counters(1, 10);
        assert_eq!(d.view().total().packets, 8);
        d.close_slot(2, 500, 1000, false);
        assert_eq!(d.view().rates().pps, 1.0);
        assert_eq!(
            d.view().total().packets,
            8,
            "the slot joined the totals once"
        );
    }
}
