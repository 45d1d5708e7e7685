//! Reads the kernel's per-CPU counters and turns them into accounting deltas.

use super::{
    batch::{self, PerCpuBatch},
    hosts::{as_v4, from_v4, reread_due, Mark},
    maps::map_err,
    KernelMaps, XdpError,
};
use crate::{
    accounting::{from16, CounterSink, Direction},
    traffic::Source,
};
use fnm_common::{
    direction, map_names, proto, stat, HostCounters, HostKey, HostKeyV4, XdpHostCounters,
};
use std::collections::HashMap;

pub use crate::engine::snapshot::XdpStatus as XdpStats;

/// The last kernel value of one host (or dense slot) and when it last changed.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    counters: XdpHostCounters,
    changed_ms: u64,
    /// The poll that last read it (0: never read).
    stamp: u64,
}

/// Dense slots per page of [`DenseSeen`].
const PAGE: usize = 256;

/// The last values of the dense slots, in pages allocated when one of their slots is first
/// read: no hashing per slot, and no memory for the slots of a large layout nobody uses.
#[derive(Debug, Default)]
struct DenseSeen {
    pages: Vec<Option<Box<[Seen; PAGE]>>>,
}

impl DenseSeen {
    /// The entry of `slot`, allocated (never read: stamp 0) if its page did not exist.
    fn entry(&mut self, slot: u32) -> &mut Seen {
        let (page, i) = (slot as usize / PAGE, slot as usize % PAGE);
        if self.pages.len() <= page {
            self.pages.resize_with(page + 1, || None);
        }
        &mut self.pages[page].get_or_insert_with(|| Box::new([Seen::default(); PAGE]))[i]
    }

    /// The entry of `slot` if it was ever read.
    fn get(&self, slot: u32) -> Option<&Seen> {
        let (page, i) = (slot as usize / PAGE, slot as usize % PAGE);
        let seen = &self.pages.get(page)?.as_ref()?[i];
        (seen.stamp != 0).then_some(seen)
    }
}

/// Which touched slots a poll of the dense slots reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// Those with packets since the last read, and those whose re-read is due.
    Marked,
    /// Every one (before the networks change).
    Every,
}

/// Largest run of untouched slots read anyway to keep one batch going: copying a slot
/// (120 bytes per CPU) costs far less than another system call.
const GAP: u32 = 32;

/// Remembers the last kernel value of every host to compute deltas.
pub(super) struct Poller {
    /// Hosts of the hash tables with their last values, in the order the last poll read them
    /// (forgotten when removed from the kernel as idle, or evicted by it).
    last: Vec<(HostKey, Seen)>,
    /// The next poll's `last`, kept for its allocation.
    next: Vec<(HostKey, Seen)>,
    /// Position of each host in `last`, built when a host is not where it was.
    index: HashMap<HostKey, usize, ahash::RandomState>,
    /// Dense slots ever touched (kept: a slot's counters are never reset).
    dense: DenseSeen,
    /// Deltas taken when the networks changed ([`Poller::settle`]), handed over by the next
    /// poll.
    pending: Vec<(std::net::IpAddr, Direction, XdpHostCounters)>,
    /// The time of the last poll.
    now_ms: u64,
    /// Polls so far (the stamp of the hosts read by the current one).
    polls: u64,
    /// Batched reads work on this kernel (cleared at the first refusal: one key at a time).
    batched: bool,
    /// Buffers reused from poll to poll.
    bufs: Buffers,
    /// The hashed hosts' slots (this build's objects).
    slots: super::slots::SlotPoller,
    /// Counter slots read in the kernel's memory so far (dense and hashed hosts' slots).
    slot_reads: u64,
}

/// What a poll reads into, kept between polls so a poll allocates nothing once they grew.
struct Buffers {
    marks: Vec<(u32, Mark)>,
    slots: Vec<u32>,
    dense: PerCpuBatch<u32>,
    v4: PerCpuBatch<HostKeyV4>,
    v6: PerCpuBatch<HostKey>,
    /// Hash-table hosts read by this poll, summed over the CPUs.
    current: Vec<(HostKey, XdpHostCounters)>,
    /// Dense slots read by this poll, with their host, summed over the CPUs.
    dense_read: Vec<(u32, HostKey, XdpHostCounters)>,
    idle_v4: Vec<HostKeyV4>,
    idle_v6: Vec<HostKey>,
}

impl Default for Poller {
    fn default() -> Self {
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        Self {
            last: Vec::new(),
            next: Vec::new(),
            index: HashMap::default(),
            dense: DenseSeen::default(),
            pending: Vec::new(),
            now_ms: 0,
            polls: 0,
            batched: true,
            slots: Default::default(),
            slot_reads: 0,
            bufs: Buffers {
                marks: Vec::new(),
                slots: Vec::new(),
                dense: PerCpuBatch::new(cpus),
                v4: PerCpuBatch::new(cpus),
                v6: PerCpuBatch::new(cpus),
                current: Vec::new(),
                dense_read: Vec::new(),
                idle_v4: Vec::new(),
                idle_v6: Vec::new(),
            },
        }
    }
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("hosts", &self.last.len())
            .field("polls", &self.polls)
            .field("batched", &self.batched)
            .finish_non_exhaustive()
    }
}

/// Where [`Poller::settle`] puts the deltas it takes.
struct Pending<'a>(&'a mut Vec<(std::net::IpAddr, Direction, XdpHostCounters)>);

impl CounterSink for Pending<'_> {
    fn add_host_counters(
        &mut self,
        host: std::net::IpAddr,
        direction: Direction,
        delta: &XdpHostCounters,
    ) {
        self.0.push((host, direction, *delta));
    }
    fn set_total(&mut self, _: crate::traffic::Source, _: usize, _: usize, _: u64, _: u64) {}
}

/// True when the kernel refused a batched map operation as unknown (before Linux 5.6) or
/// unsupported for the map.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(524)
    )
}

impl Poller {
    pub(super) fn poll(
        &mut self,
        maps: &mut KernelMaps,
        accounting: &mut impl CounterSink,
        now_ms: u64,
        idle_ms: u64,
    ) -> Result<XdpStats, XdpError> {
        self.now_ms = now_ms;
        self.polls += 1;
        for (host, dir, delta) in self.pending.drain(..) {
            accounting.add_host_counters(host, dir, &delta);
        }
        let mut active_dense = self.poll_dense(maps, accounting, now_ms, idle_ms, Reads::Marked)?;
        if let Some(slots) = maps.hosts.slots.as_mut() {
            let polled = self
                .slots
                .poll(slots, accounting, now_ms, idle_ms, self.polls)?;
            active_dense += polled.kept;
            self.slot_reads += polled.read;
        }
        self.read_hashed(maps)?;
        let mut current = std::mem::take(&mut self.bufs.current);
        let (mut idle_v4, mut idle_v6) = (
            std::mem::take(&mut self.bufs.idle_v4),
            std::mem::take(&mut self.bufs.idle_v6),
        );
        let stamp = self.polls;
        // The previous poll's hosts in the order the kernel handed them out: a table that did
        // not change hands them out in the same order again, so each host's last value is the
        // next one along, found without hashing; a host out of place is looked up in an index
        // built only then. Hosts not read again (evicted from the LRU tables) drop out.
        let last = &mut self.last;
        let mut next = std::mem::take(&mut self.next);
        next.clear();
        let index = &mut self.index;
        let mut indexed = false;
        let mut cursor = 0usize;
        for (key, sum) in &current {
            let found = if cursor < last.len() && last[cursor].0 == *key {
                cursor += 1;
                Some(cursor - 1)
            } else {
                if !indexed {
                    index.clear();
                    index.extend(last.iter().enumerate().map(|(i, (k, _))| (*k, i)));
                    indexed = true;
                }
                index.get(key).map(|&p| {
                    cursor = p + 1;
                    p
                })
            };
            let mut seen = match found {
                // Read twice in one walk (never seen, but then only once): skip it.
                Some(p) if last[p].1.stamp == stamp => continue,
                Some(p) => {
                    let seen = last[p].1;
                    last[p].1.stamp = stamp;
                    seen
                }
                None => Seen {
                    changed_ms: now_ms,
                    ..Seen::default()
                },
            };
            let delta = delta(&seen.counters, sum);
            if has_packets(&delta) {
                accounting.add_host_counters(from16(key.addr), direction_of(key), &delta);
                seen.changed_ms = now_ms;
            } else if now_ms.saturating_sub(seen.changed_ms) >= idle_ms {
                // The host gets a fresh entry (from zero) if it sends again; deltas handle
                // that.
                match as_v4(key) {
                    Some(k) => idle_v4.push(k),
                    None => idle_v6.push(*key),
                }
                continue;
            }
            seen.counters = *sum;
            seen.stamp = stamp;
            next.push((*key, seen));
        }
        self.remove_idle(maps, &idle_v4, &idle_v6);
        let kept = next.len();
        std::mem::swap(&mut self.last, &mut next);
        self.next = next;
        current.clear();
        idle_v4.clear();
        idle_v6.clear();
        self.bufs.current = current;
        self.bufs.idle_v4 = idle_v4;
        self.bufs.idle_v6 = idle_v6;

        let stats = maps.stats_sum();
        let stat = |i: u32| stats.get(i as usize).copied().unwrap_or(0);
        for dir in 0..direction::COUNT as u8 {
            for class in 0..proto::COUNT {
                let packets = stat(stat::total_index(dir, class, false));
                let bytes = stat(stat::total_index(dir, class, true));
                accounting.set_total(Source::Xdp, dir as usize, class, packets, bytes);
            }
        }
        self.slots.note_table_full(stat(stat::HOST_TABLE_FULL));
        Ok(XdpStats {
            frames: stat(stat::FRAMES),
            non_ip: stat(stat::NON_IP),
            malformed: stat(stat::MALFORMED),
            dropped_src_packets: stat(stat::DROP_SRC_PACKETS),
            dropped_src_bytes: stat(stat::DROP_SRC_BYTES),
            dropped_dst_packets: stat(stat::DROP_DST_PACKETS),
            dropped_dst_bytes: stat(stat::DROP_DST_BYTES),
            dropped_rule_packets: stat(stat::DROP_RULE_PACKETS),
            dropped_rule_bytes: stat(stat::DROP_RULE_BYTES),
            whitelist_passed: stat(stat::WHITELIST_PASSED),
            source_whitelisted_packets: stat(stat::SOURCE_WHITELISTED_PACKETS),
            source_whitelisted_bytes: stat(stat::SOURCE_WHITELISTED_BYTES),
            decapsulated: stat(stat::DECAPSULATED),
            tunnel_outer_counted: stat(stat::TUNNEL_OUTER_COUNTED),
            host_table_full: stat(stat::HOST_TABLE_FULL),
            samples_lost: stat(stat::SAMPLES_LOST),
            kernel_hosts: kept as u64 + active_dense,
            slot_reads: self.slot_reads,
        })
    }

    /// Reads every entry of the two hash tables into `bufs.current`, summed over the CPUs:
    /// a few thousand entries per system call, or two calls per entry on a kernel without
    /// batched reads.
    fn read_hashed(&mut self, maps: &KernelMaps) -> Result<(), XdpError> {
        self.bufs.current.clear();
        let (Some(v4_fd), Some(v6_fd)) = (maps.hosts.v4_fd(), maps.hosts.v6_fd()) else {
            // This build's objects: the hashed hosts have slots (`Poller::slots`).
            return Ok(());
        };
        if self.batched {
            let bufs = &mut self.bufs;
            let v4 = read_table(v4_fd, &mut bufs.v4, &mut bufs.current, from_v4);
            let result =
                v4.and_then(|()| read_table(v6_fd, &mut bufs.v6, &mut bufs.current, |k| k));
            match result {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {
                    tracing::info!("batched XDP map reads refused ({e}); reading key by key");
                    self.batched = false;
                    self.bufs.current.clear();
                }
                Err(e) => {
                    return Err(XdpError::Map {
                        map: map_names::HOSTS,
                        message: format!("batched read: {e}"),
                    })
                }
            }
        }
        for item in maps.hosts.iter_hashed() {
            let (key, values) = match item {
                Ok(kv) => kv,
                // A key removed between get_next_key and lookup: skip it this round.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::HOSTS)(e)),
            };
            let mut sum = XdpHostCounters::default();
            for v in values.iter() {
                sum.accumulate(v);
            }
            self.bufs.current.push((key, sum));
        }
        Ok(())
    }

    /// Removes idle hosts from the hash tables (a batched delete each, or one call per key).
    fn remove_idle(&mut self, maps: &mut KernelMaps, v4: &[HostKeyV4], v6: &[HostKey]) {
        let (Some(v4_fd), Some(v6_fd)) = (maps.hosts.v4_fd(), maps.hosts.v6_fd()) else {
            return;
        };
        if self.batched {
            let r4 = batch::delete(v4_fd, v4);
            let r6 = batch::delete(v6_fd, v6);
            match (r4, r6) {
                (Ok(_), Ok(_)) => return,
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!("batched delete of idle XDP hosts: {e}; key by key");
                }
            }
        }
        for k in v4 {
            let _ = maps.hosts.remove(&from_v4(*k));
        }
        for k in v6 {
            let _ = maps.hosts.remove(k);
        }
    }

    /// Takes the deltas of every touched dense slot under the layout in force (before the
    /// networks change: the last ones of the hosts that lose their slots); the next poll hands
    /// them over.
    pub(super) fn settle(&mut self, maps: &mut KernelMaps) -> Result<(), XdpError> {
        let mut pending = std::mem::take(&mut self.pending);
        let result = self.poll_dense(
            maps,
            &mut Pending(&mut pending),
            self.now_ms,
            u64::MAX,
            Reads::Every,
        );
        self.pending = pending;
        result.map(drop)
    }

    /// Takes what the touched dense slots that no network owns hold as their baseline
    /// (packets counted there under an older table: nobody's) and clears their touched byte;
    /// a slot handed out later starts from that value.
    pub(super) fn absorb_unowned(&mut self, maps: &KernelMaps) -> Result<(), XdpError> {
        let err = map_err(map_names::HOSTS_DENSE_V4);
        let stamp = self.polls.max(1);
        for slot in maps.hosts.touched_slots() {
            if maps.hosts.layout.host_of(slot).is_some() {
                continue;
            }
            // Cleared first: a packet counted after the read sets it again.
            maps.hosts.touched.clear(slot);
            let counters = maps.hosts.dense_slot_raw(slot).map_err(&err)?;
            *self.dense.entry(slot) = Seen {
                counters,
                changed_ms: self.now_ms,
                stamp,
            };
        }
        Ok(())
    }

    /// Reads the dense slots with packets since the last poll (in batches of neighbouring
    /// slots), and those marked `READ` whose turn it is ([`reread_due`]); of the latter,
    /// clears the bytes of slots idle for `idle_ms` first, so they cost nothing until their
    /// next packet (a packet counted before the clear is in the read, one after it sets the
    /// byte again). With [`Reads::Every`], reads every touched slot. Returns the active
    /// slots: those read that are not idle, and those not read.
    fn poll_dense(
        &mut self,
        maps: &mut KernelMaps,
        accounting: &mut impl CounterSink,
        now_ms: u64,
        idle_ms: u64,
        reads: Reads,
    ) -> Result<u64, XdpError> {
        let mut marks = std::mem::take(&mut self.bufs.marks);
        maps.hosts.touched.scan_into(&mut marks);
        let mut slots = std::mem::take(&mut self.bufs.slots);
        slots.clear();
        let poll = self.polls;
        let mut unread = 0u64;
        // Only the slots a network owns (sorted, as the ranges are).
        let ranges = maps.hosts.layout.ranges();
        let mut r = 0;
        for &(slot, mark) in &marks {
            while r < ranges.len() && ranges[r].1 <= slot {
                r += 1;
            }
            if r >= ranges.len() || ranges[r].0 > slot {
                continue;
            }
            match (mark, reads) {
                (Mark::NewPackets, _) => {
                    maps.hosts.touched.take_new(slot);
                }
                (Mark::Read, Reads::Every) => {}
                (Mark::Read, Reads::Marked) if reread_due(slot >> 1, poll) => {
                    let idle = self
                        .dense
                        .get(slot)
                        .is_some_and(|seen| now_ms.saturating_sub(seen.changed_ms) >= idle_ms);
                    if idle {
                        maps.hosts.touched.clear_if_read(slot);
                    }
                }
                (Mark::Read, Reads::Marked) => {
                    unread += 1;
                    continue;
                }
            }
            slots.push(slot);
        }
        self.bufs.marks = marks;
        self.slot_reads += slots.len() as u64;
        let read = self.read_dense(maps, &slots, &ranges);
        self.bufs.slots = slots;
        read?;
        let mut active = unread;
        let stamp = self.polls.max(1);
        for (slot, key, sum) in &self.bufs.dense_read {
            let seen = self.dense.entry(*slot);
            if seen.stamp == 0 {
                seen.changed_ms = now_ms;
            }
            let delta = delta(&seen.counters, sum);
            if has_packets(&delta) {
                accounting.add_host_counters(from16(key.addr), direction_of(key), &delta);
                seen.changed_ms = now_ms;
                active += 1;
            } else if now_ms.saturating_sub(seen.changed_ms) < idle_ms {
                active += 1;
            }
            seen.counters = *sum;
            seen.stamp = stamp;
        }
        Ok(active)
    }

    /// Reads `slots` (sorted, each owned by one of `ranges`) into `bufs.dense_read`.
    fn read_dense(
        &mut self,
        maps: &KernelMaps,
        slots: &[u32],
        ranges: &[(u32, u32, u32)],
    ) -> Result<(), XdpError> {
        let out = &mut self.bufs.dense_read;
        out.clear();
        let host = |slot: u32, r: &mut usize| {
            while ranges[*r].1 <= slot {
                *r += 1;
            }
            let (base, _, first) = ranges[*r];
            let offset = slot - base;
            HostKey {
                addr: fnm_common::v4_mapped((first + (offset >> 1)).to_be_bytes()),
                direction: (offset & 1) as u8,
                _pad: [0; 3],
            }
        };
        let mut r = 0;
        if let Some(array) = maps.hosts.dense_mapped() {
            // Summed in place: no system call, no copy.
            for &slot in slots {
                out.push((slot, host(slot, &mut r), array.sum(slot)));
            }
            return Ok(());
        }
        if let (true, Some(fd)) = (self.batched, maps.hosts.dense_fd()) {
            let mut i = 0;
            while i < slots.len() {
                let start = slots[i];
                let mut j = i + 1;
                while j < slots.len()
                    && slots[j] - slots[j - 1] <= GAP
                    && ((slots[j] - start) as usize) < batch::MAX_BATCH
                {
                    j += 1;
                }
                let last = slots[j - 1];
                let count = (last - start + 1) as usize;
                match self.bufs.dense.read(fd, start.checked_sub(1), count) {
                    Ok(_) => {}
                    Err(e) if unsupported(&e) && out.is_empty() => {
                        tracing::info!("batched XDP map reads refused ({e}); reading key by key");
                        self.batched = false;
                        break;
                    }
                    Err(e) => {
                        return Err(XdpError::Map {
                            map: map_names::HOSTS_DENSE_V4,
                            message: format!("batched read: {e}"),
                        })
                    }
                }
                let got = &self.bufs.dense;
                for &slot in &slots[i..j] {
                    let idx = (slot - start) as usize;
                    if idx < got.len() && got.key(idx) == slot {
                        out.push((slot, host(slot, &mut r), got.sum(idx)));
                    }
                }
                i = j;
            }
            if self.batched {
                return Ok(());
            }
            out.clear();
            r = 0;
        }
        let err = map_err(map_names::HOSTS_DENSE_V4);
        for &slot in slots {
            let sum = maps.hosts.dense_slot_raw(slot).map_err(&err)?;
            out.push((slot, host(slot, &mut r), sum));
        }
        Ok(())
    }
}

/// Reads every entry of one per-CPU hash table into `out`, batch after batch.
fn read_table<K: Copy + Default>(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut PerCpuBatch<K>,
    out: &mut Vec<(HostKey, XdpHostCounters)>,
    key: impl Fn(K) -> HostKey,
) -> std::io::Result<()> {
    let mut position = None;
    loop {
        let next = buf.read(fd, position, batch::MAX_BATCH)?;
        for i in 0..buf.len() {
            out.push((key(buf.key(i)), buf.sum(i)));
        }
        match next {
            None => return Ok(()),
            Some(p) if buf.len() == 0 && position == Some(p) => return Ok(()),
            p => position = p,
        }
    }
}

fn direction_of(key: &HostKey) -> Direction {
    if key.direction == direction::OUTGOING {
        Direction::Outgoing
    } else {
        Direction::Incoming
    }
}

/// True when `delta` holds packets: counted ones, or whitelisted ones (a host only a
/// whitelisted source talks to still shows them, and stays in the kernel table meanwhile).
pub(super) fn has_packets(delta: &XdpHostCounters) -> bool {
    delta.counted.packets > 0 || delta.whitelisted.packets > 0
}

/// `now - before`, field by field; when a packet counter went backwards (entry re-created)
/// everything counts from zero.
pub(super) fn delta(before: &XdpHostCounters, now: &XdpHostCounters) -> XdpHostCounters {
    if now.counted.packets < before.counted.packets
        || now.whitelisted.packets < before.whitelisted.packets
    {
        return *now;
    }
    let d = |a: u64, b: u64| b.wrapping_sub(a);
    XdpHostCounters {
        counted: counted_delta(&before.counted, &now.counted),
        whitelisted: fnm_common::WhitelistedCounters {
            packets: d(before.whitelisted.packets, now.whitelisted.packets),
            bytes: d(before.whitelisted.bytes, now.whitelisted.bytes),
        },
    }
}

/// `now - before` of the counters the rates come from, field by field.
fn counted_delta(before: &HostCounters, now: &HostCounters) -> HostCounters {
    let d = |a: u64, b: u64| b.wrapping_sub(a);
    let mut out = HostCounters {
        packets: d(before.packets, now.packets),
        bytes: d(before.bytes, now.bytes),
        flows: d(before.flows, now.flows),
        tcp_syn_packets: d(before.tcp_syn_packets, now.tcp_syn_packets),
        fragments: d(before.fragments, now.fragments),
        ..Default::default()
    };
    for i in 0..proto::COUNT {
        out.proto_packets[i] = d(before.proto_packets[i], now.proto_packets[i]);
        out.proto_bytes[i] = d(before.proto_bytes[i], now.proto_bytes[i]);
    }
    out
}
