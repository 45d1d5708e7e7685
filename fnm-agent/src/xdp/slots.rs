//! The hashed hosts' slots (IPv6, and IPv4 beyond the dense slots): an open-addressed table.
//!
//! The XDP program finds a hashed host's host slot itself in `FNM_SLOT_OWNER`, an mmap-able
//! array of buckets of `SLOT_WAYS` ways ([`SlotOwner`]: a state word and an address): the
//! bucket is the address's seeded hash, the slot the way whose state is `READY` and whose
//! address is the host's. A new host claims a `FREE` way of its bucket by a compare-and-swap
//! of the state (`CLAIMING`), writes its address, then `READY`. Each host slot holds two
//! counter slots (incoming, outgoing) in `FNM_HOSTS_H`, an mmap-able array laid out as the
//! dense one (`slot × CPUs + cpu`), with a touched byte per counter slot. Two CPUs admitting
//! one host at once may claim two ways for it: both are credited to the same address here.
//!
//! The agent reads the counter slots with packets since its last read (touched byte
//! `NEW_PACKETS`, see [`TouchedBytes`]) in place each poll, and credits their deltas to the
//! owner it read when the slot was first touched; a host without new packets is read once in
//! [`REREAD_POLLS`](super::hosts::REREAD_POLLS) polls, when its idleness is checked too. (In
//! the poll benchmark, 16,384 IPv6 hosts at 2 packets/s each: the poll thread's share of a
//! core fell from 0.047 to 0.031 with the dense slots done alike, and from 0.088 to 0.040 with
//! 98,304 idle hosts in the table, docs/performance.md.) It reclaims the slot of an idle host
//! in two polls: first it sets the way `RETIRING` (new packets then admit the host again, in
//! another way), then, a poll later (programs that found the way `READY` have long finished:
//! an XDP program runs for microseconds, a poll is 250 ms apart), it credits what came
//! meanwhile to the old owner, zeroes the counters, clears the touched bytes and frees the
//! way. A host is idle after the idle timeout, or, once a new host found its bucket full
//! (`HOST_TABLE_FULL` grew: the poll after reads every host), after one whole poll without
//! packets: a flood of spoofed destinations, each touched once, frees its ways within two
//! polls, and cannot keep a real new victim out for longer (docs/security.md). With every way of its bucket taken, a new
//! host's packets count in the totals and in `HOST_TABLE_FULL` (untracked), never in another
//! host.

use super::{
    counters::{delta, has_packets},
    hosts::{reread_due, Mark, SlotArray, TouchedBytes},
    mmap::SharedMapping,
    XdpError,
};
use crate::accounting::{from16, CounterSink, Direction};
use fnm_common::{map_names, slot_state, SlotOwner, XdpHostCounters};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of one way of the table.
const OWNER_BYTES: usize = std::mem::size_of::<SlotOwner>();

/// The kernel side of the slots: table, counters, touched bytes.
pub(crate) struct HostSlots {
    counters: SlotArray,
    owners: SharedMapping,
    pub(super) touched: TouchedBytes,
    hosts: usize,
}

impl HostSlots {
    /// Takes the slot maps out of a loaded object (`hosts` host slots, `cpus` CPUs) and puts
    /// every slot in the free queue.
    pub(crate) fn take(
        ebpf: &mut aya::Ebpf,
        hosts: usize,
        cpus: usize,
    ) -> Result<Option<Self>, XdpError> {
        if ebpf.map(map_names::SLOT_OWNER).is_none() {
            return Ok(None);
        }
        let array = |ebpf: &mut aya::Ebpf, name: &'static str| match ebpf.take_map(name) {
            Some(aya::maps::Map::Array(data)) => Ok(data),
            _ => Err(XdpError::Map {
                map: name,
                message: "missing, or not an array".into(),
            }),
        };
        let mmap_err = |map: &'static str| {
            move |e: std::io::Error| XdpError::Map {
                map,
                message: format!("mmap: {e}"),
            }
        };
        let counters = SlotArray::map(array(ebpf, map_names::HOSTS_SLOTS)?, 2 * hosts, cpus)
            .map_err(mmap_err(map_names::HOSTS_SLOTS))?;
        let owners = SharedMapping::new(array(ebpf, map_names::SLOT_OWNER)?, OWNER_BYTES * hosts)
            .map_err(mmap_err(map_names::SLOT_OWNER))?;
        let touched = TouchedBytes::map(array(ebpf, map_names::SLOTS_TOUCHED)?, 2 * hosts)
            .map_err(mmap_err(map_names::SLOTS_TOUCHED))?;
        Ok(Some(Self {
            counters,
            owners,
            touched,
            hosts,
        }))
    }

    /// The state word of host slot `slot` (in bounds).
    fn state(&self, slot: usize) -> &AtomicU64 {
        debug_assert!(slot < self.hosts);
        // SAFETY: in bounds of the mapping, which lives as long as `self`; 8-byte aligned
        // (32-byte entries in page-aligned memory). The kernel changes it atomically.
        unsafe { AtomicU64::from_ptr(self.owners.ptr().add(slot * OWNER_BYTES).cast()) }
    }

    /// The address host slot `slot` holds or last held (IPv4-mapped for IPv4).
    fn owner(&self, slot: usize) -> [u8; 16] {
        let mut out = [0u8; 16];
        if slot < self.hosts {
            for (i, half) in out.chunks_exact_mut(8).enumerate() {
                // SAFETY: in bounds of the mapping, 8-byte aligned.
                let w = unsafe {
                    AtomicU64::from_ptr(
                        self.owners.ptr().add(slot * OWNER_BYTES + 8 + i * 8).cast(),
                    )
                }
                .load(Ordering::Acquire);
                half.copy_from_slice(&w.to_ne_bytes());
            }
        }
        out
    }

    /// The counters of `addr` in `direction`, summed over the CPUs and over every slot that
    /// holds it (zero without one). Walks the whole table: for single reads (the API, tests),
    /// not for the poll.
    pub(crate) fn sum(&self, addr: &[u8; 16], direction: u8) -> XdpHostCounters {
        let mut sum = XdpHostCounters::default();
        for c in self.counter_slots(addr, direction) {
            sum.accumulate(&self.counters.sum(c));
        }
        sum
    }

    /// The counter slots of `addr` in `direction`: one per host slot that holds it. Walks the
    /// whole table: for single reads (the API, tests), not for the poll.
    pub(crate) fn counter_slots(&self, addr: &[u8; 16], direction: u8) -> Vec<u32> {
        (0..self.hosts)
            .filter(|&slot| {
                self.state(slot).load(Ordering::Acquire) == slot_state::READY
                    && self.owner(slot) == *addr
            })
            .map(|slot| ((slot as u32) << 1) | u32::from(direction & 1))
            .collect()
    }

    /// Every touched counter slot's host and direction.
    pub(crate) fn keys(&self) -> Vec<([u8; 16], u8)> {
        self.touched
            .slots()
            .into_iter()
            .map(|c| (self.owner((c >> 1) as usize), (c & 1) as u8))
            .collect()
    }

    /// Zeroes a host slot's counters and touched bytes, then frees it for a new host.
    fn release(&mut self, slot: u32) {
        for c in [slot << 1, (slot << 1) | 1] {
            self.counters.zero(c);
            self.touched.clear(c);
        }
        self.state(slot as usize)
            .store(slot_state::FREE, Ordering::Release);
    }

    /// Starts reclaiming host slot `slot`: no packet matches it from now on.
    fn retire(&self, slot: u32) {
        let _ = self.state(slot as usize).compare_exchange(
            slot_state::READY,
            slot_state::RETIRING,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// How many touched counter slots ahead of the one being read the poll prefetches.
const PREFETCH_AHEAD: usize = 8;

/// What the agent knows of one host slot. All zero is a valid state, the one of a slot never
/// touched ([`zeroed_states`]).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct HostState {
    /// Whose counters it holds (read when first touched), valid when `owned`.
    owner: [u8; 16],
    /// `owner` was read.
    owned: bool,
    /// The last values of its two counter slots.
    seen: [XdpHostCounters; 2],
    /// When either direction last got packets.
    changed_ms: u64,
    /// The poll that set it `RETIRING` (0: not being reclaimed).
    retired_at: u64,
}

/// `n` untouched host states in memory the kernel backs only where it is written: the poller
/// keeps 280 bytes per host slot (37 MiB at the default `max_hosts`), of which a deployment
/// with few hashed hosts touches a page here and there.
fn zeroed_states(n: usize) -> Box<[HostState]> {
    let Ok(layout) = std::alloc::Layout::array::<HostState>(n) else {
        panic!("{n} host states overflow the address space");
    };
    if layout.size() == 0 {
        return Box::default();
    }
    // SAFETY: the layout's size is not zero. All zero is a valid `HostState` (byte arrays, a
    // bool, integers, and `XdpHostCounters`: `repr(C)` structs of `u64`s), so the `n`
    // zeroed elements are initialized. The pointer comes from the global allocator with the
    // layout of `[HostState; n]`, which is how the `Box` frees it. A large zeroed allocation
    // is fresh anonymous memory, whose pages the kernel allocates on first write.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<HostState>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n))
    }
}

/// The poller's side of the slots.
#[derive(Default)]
pub(crate) struct SlotPoller {
    states: Box<[HostState]>,
    /// The touched counter slots, as this poll found them.
    marks: Vec<(u32, Mark)>,
    /// The counter slots this poll reads.
    visits: Vec<u32>,
    /// Host slots set `RETIRING` by the last poll (increasing): this one releases them.
    retiring: Vec<u32>,
    /// `HOST_TABLE_FULL` at the last poll.
    full_seen: u64,
    /// It grew at the last poll.
    full_grew: bool,
}

/// What a poll of the slots did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SlotPoll {
    /// Host-directions with counters in the kernel after the poll.
    pub(crate) kept: u64,
    /// Counter slots it read.
    pub(crate) read: u64,
}

impl SlotPoller {
    /// Notes `HOST_TABLE_FULL` as read by this poll: when it grew, the next poll frees the
    /// ways of the hosts that got no packets since this one.
    pub(crate) fn note_table_full(&mut self, full: u64) {
        self.full_grew = full > self.full_seen;
        self.full_seen = full;
    }

    /// Reads the counter slots with packets since the last poll in place and credits their
    /// deltas to their owners; starts reclaiming the slots of idle hosts (see the module),
    /// and ends the reclaim of those retired at the last poll. A host whose slots are marked
    /// `READ` (no packet since they were read) is read only when its re-read is due
    /// ([`reread_due`]: which is also when its idleness is checked), when the table is
    /// under pressure, or when it is being reclaimed.
    pub(crate) fn poll(
        &mut self,
        slots: &mut HostSlots,
        accounting: &mut impl CounterSink,
        now_ms: u64,
        idle_ms: u64,
        poll: u64,
    ) -> Result<SlotPoll, XdpError> {
        if self.states.len() < slots.hosts {
            let mut states = zeroed_states(slots.hosts);
            states[..self.states.len()].copy_from_slice(&self.states);
            self.states = states;
        }
        let mut marks = std::mem::take(&mut self.marks);
        slots.touched.scan_into(&mut marks);
        // A new host found its bucket full since the poll before: free the ways of hosts
        // without packets since the last poll, not only of those idle for the idle timeout.
        let pressure = self.full_grew;
        let retiring = std::mem::take(&mut self.retiring);
        let mut visits = std::mem::take(&mut self.visits);
        visits.clear();
        let mut kept = 0u64;
        // Which counter slots to read: a pass over the marks alone (sequential), so the reads
        // below (each a cache miss) are of hosts that need them, and each byte is swapped
        // to `READ` a while before its counters are read.
        let mut r = 0;
        let mut i = 0;
        while i < marks.len() || r < retiring.len() {
            let host = marks.get(i).map_or(u32::MAX, |(c, _)| c >> 1);
            if r < retiring.len() && retiring[r] < host {
                // Reclaimed, its bytes already clear (never, as they stay set until the
                // release): read and release it all the same, so its way comes back.
                visits.extend([retiring[r] << 1, (retiring[r] << 1) | 1]);
                r += 1;
                continue;
            }
            let mut end = i;
            let mut new_packets = false;
            while end < marks.len() && marks[end].0 >> 1 == host {
                new_packets |= marks[end].1 == Mark::NewPackets;
                end += 1;
            }
            let reclaiming = r < retiring.len() && retiring[r] == host;
            r += usize::from(reclaiming);
            if new_packets || pressure || reclaiming || reread_due(host, poll) {
                for &(c, mark) in &marks[i..end] {
                    if mark == Mark::NewPackets {
                        slots.touched.take_new(c);
                    }
                    visits.push(c);
                }
            } else {
                kept += (end - i) as u64;
            }
            i = end;
        }
        self.marks = marks;
        let read = visits.len() as u64;
        let mut releases = Vec::new();
        let mut retired = retiring;
        retired.clear();
        let mut i = 0;
        while i < visits.len() {
            // The slots are spread over the table by their hash: each is a cache miss, in the
            // kernel's counters and in `states`. Ask for the ones a few slots ahead now, so
            // the misses overlap instead of following one another.
            if let Some(&ahead) = visits.get(i + PREFETCH_AHEAD) {
                slots.counters.prefetch(ahead);
                let st: *const HostState = self.states.as_ptr().wrapping_add((ahead >> 1) as usize);
                for line in (0..std::mem::size_of::<HostState>()).step_by(64) {
                    crate::capture::prefetch_line(st.cast::<u8>().wrapping_add(line));
                }
            }
            let host = visits[i] >> 1;
            let st = &mut self.states[host as usize];
            if !st.owned {
                st.owner = slots.owner(host as usize);
                st.owned = true;
            }
            let owner = st.owner;
            if st.changed_ms == 0 {
                st.changed_ms = now_ms;
            }
            while i < visits.len() && visits[i] >> 1 == host {
                let dir = (visits[i] & 1) as usize;
                let sum = slots.counters.sum(visits[i]);
                let d = delta(&st.seen[dir], &sum);
                if has_packets(&d) {
                    let direction = if dir == 1 {
                        Direction::Outgoing
                    } else {
                        Direction::Incoming
                    };
                    accounting.add_host_counters(from16(owner), direction, &d);
                    st.changed_ms = now_ms;
                }
                st.seen[dir] = sum;
                kept += 1;
                i += 1;
            }
            if st.retired_at != 0 && st.retired_at < poll {
                releases.push(host);
            } else if st.retired_at == 0
                && (now_ms.saturating_sub(st.changed_ms) >= idle_ms
                    || (pressure && st.changed_ms < now_ms))
            {
                st.retired_at = poll;
                slots.retire(host);
                retired.push(host);
            }
        }
        self.visits = visits;
        self.retiring = retired;
        for host in releases {
            slots.release(host);
            self.states[host as usize] = HostState::default();
            kept = kept.saturating_sub(2);
        }
        Ok(SlotPoll { kept, read })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's resident anonymous memory, in bytes (Linux).
    fn resident_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("RssAnon")
            * 1024
    }

    #[test]
    fn host_states_start_untouched_and_cost_memory_only_where_written() {
        // 1.1 GiB of states, so that what tests running beside this one allocate meanwhile
        // stays well below the bound.
        let n = 1 << 22;
        let before = resident_bytes();
        let mut states = zeroed_states(n);
        let allocated = resident_bytes();
        assert_eq!(states.len(), n);
        for at in [0, 1, n / 2, n - 1] {
            let st = states[at];
            assert!(!st.owned && st.owner == [0; 16]);
            assert_eq!((st.changed_ms, st.retired_at), (0, 0));
            assert_eq!(st.seen, [XdpHostCounters::default(); 2]);
        }
        // Reading four states and writing one keeps a few pages.
        states[n / 3].changed_ms = 1;
        let written = resident_bytes();
        let size = (n * std::mem::size_of::<HostState>()) as u64;
        assert!(size > 1 << 30, "{size}");
        assert!(
            written.saturating_sub(before) < 128 << 20,
            "{before} -> {allocated} -> {written} bytes resident for {size} bytes of states"
        );
        assert!(zeroed_states(0).is_empty());
    }
}
