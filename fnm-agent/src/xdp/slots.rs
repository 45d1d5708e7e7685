//! The hashed hosts' kernel-assigned slots (IPv6, and IPv4 beyond the dense slots).
//!
//! The XDP program finds a hashed host's host slot in a plain hash table per family
//! (`FNM_SLOT_V4`, `FNM_SLOT_V6`); a new host takes one from the free queue (`FNM_FREE_SLOTS`),
//! writes itself as the slot's owner (`FNM_SLOT_OWNER`) and inserts its entry (`BPF_NOEXIST`:
//! a CPU that lost the race gives its slot back and takes the winner's). Each host slot holds
//! two counter slots (incoming, outgoing) in `FNM_HOSTS_H`, an mmap-able array laid out as the
//! dense one (`slot × CPUs + cpu`), with a touched byte per counter slot.
//!
//! The agent reads the touched counter slots in place each poll and credits their deltas to
//! the owner it read when the slot was first touched. It reclaims the slot of a host idle for
//! the idle timeout in two polls: first it deletes the host's hash entry (new packets then
//! admit the host again, in another slot), then, a poll later (programs that found the old
//! entry have long finished: an XDP program runs for microseconds, a poll is 250 ms apart),
//! it credits what came meanwhile to the old owner, zeroes the counters, clears the touched
//! bytes and gives the slot back. The kernel checks a slot's owner after the lookup, so a
//! value read from an entry being deleted and reused by another host's insert is never
//! counted: no packet is ever credited to the wrong host. With no free slot, a new host's
//! packets count in the totals and in `HOST_TABLE_FULL` (untracked), never in another host.

use super::{
    counters::{delta, has_packets},
    hosts::{SlotArray, TouchedBytes},
    mmap::SharedMapping,
    XdpError,
};
use crate::accounting::{from16, CounterSink, Direction};
use aya::maps::{HashMap, IterableMap as _, MapData, MapError, Queue};
use fnm_common::{map_names, XdpHostCounters};
use std::{
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    sync::atomic::{AtomicU64, Ordering},
};

/// The kernel side of the slots: tables, counters, owners, touched bytes, free queue.
pub(crate) struct HostSlots {
    counters: SlotArray,
    owners: SharedMapping,
    touched: TouchedBytes,
    pub(crate) v4: HashMap<MapData, u32, u32>,
    pub(crate) v6: HashMap<MapData, [u8; 16], u32>,
    free: Queue<MapData, u32>,
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
        if ebpf.map(map_names::SLOT_V4).is_none() {
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
        let owners = SharedMapping::new(array(ebpf, map_names::SLOT_OWNER)?, 16 * hosts)
            .map_err(mmap_err(map_names::SLOT_OWNER))?;
        let touched = TouchedBytes::map(array(ebpf, map_names::SLOTS_TOUCHED)?, 2 * hosts)
            .map_err(mmap_err(map_names::SLOTS_TOUCHED))?;
        let v4 = super::maps::take(ebpf, map_names::SLOT_V4)?;
        let v6 = super::maps::take(ebpf, map_names::SLOT_V6)?;
        let mut free: Queue<MapData, u32> = super::maps::take(ebpf, map_names::FREE_SLOTS)?;
        for slot in 0..hosts as u32 {
            free.push(slot, 0)
                .map_err(super::maps::map_err(map_names::FREE_SLOTS))?;
        }
        Ok(Some(Self {
            counters,
            owners,
            touched,
            v4,
            v6,
            free,
            hosts,
        }))
    }

    /// The address host slot `slot` was last handed to (IPv4-mapped for IPv4).
    fn owner(&self, slot: usize) -> [u8; 16] {
        let mut out = [0u8; 16];
        if slot < self.hosts {
            for (i, half) in out.chunks_exact_mut(8).enumerate() {
                // SAFETY: in bounds of the mapping, 8-byte aligned (16-byte entries).
                let w =
                    unsafe { AtomicU64::from_ptr(self.owners.ptr().add(slot * 16 + i * 8).cast()) }
                        .load(Ordering::Acquire);
                half.copy_from_slice(&w.to_ne_bytes());
            }
        }
        out
    }

    /// The host slot of `addr` (IPv4-mapped for IPv4), if it has one.
    fn slot_of(&self, addr: &[u8; 16]) -> Option<u32> {
        let slot = match from16(*addr) {
            IpAddr::V4(a) => self.v4.get(&u32::from(a), 0).ok()?,
            IpAddr::V6(_) => self.v6.get(addr, 0).ok()?,
        };
        (self.owner(slot as usize) == *addr).then_some(slot)
    }

    /// The counters of `addr` in `direction`, summed over the CPUs (zero without a slot).
    pub(crate) fn sum(&self, addr: &[u8; 16], direction: u8) -> XdpHostCounters {
        match self.slot_of(addr) {
            Some(slot) => self.counters.sum((slot << 1) | (direction & 1) as u32),
            None => XdpHostCounters::default(),
        }
    }

    /// Every touched counter slot's host and direction.
    pub(crate) fn keys(&self) -> Vec<([u8; 16], u8)> {
        self.touched
            .slots()
            .into_iter()
            .map(|c| (self.owner((c >> 1) as usize), (c & 1) as u8))
            .collect()
    }

    /// Zeroes a host slot's counters and touched bytes, then gives it back to the kernel.
    fn release(&mut self, slot: u32) -> Result<(), MapError> {
        for c in [slot << 1, (slot << 1) | 1] {
            self.counters.zero(c);
            self.touched.clear(c);
        }
        self.free.push(slot, 0)
    }

    /// The file descriptor of a family's hash table.
    fn fd(&self, v4: bool) -> BorrowedFd<'_> {
        if v4 {
            self.v4.map().fd().as_fd()
        } else {
            self.v6.map().fd().as_fd()
        }
    }
}

/// What the agent knows of one host slot.
#[derive(Debug, Clone, Copy, Default)]
struct HostState {
    /// Whose counters it holds (read when first touched).
    owner: Option<[u8; 16]>,
    /// The last values of its two counter slots.
    seen: [XdpHostCounters; 2],
    /// When either direction last got packets.
    changed_ms: u64,
    /// The poll that deleted its hash entry (0: not being reclaimed).
    deleted_at: u64,
}

/// The poller's side of the slots.
#[derive(Default)]
pub(crate) struct SlotPoller {
    states: Vec<HostState>,
    touched: Vec<u32>,
    gone_v4: Vec<u32>,
    gone_v6: Vec<[u8; 16]>,
}

impl SlotPoller {
    /// Reads every touched counter slot in place and credits its delta to its owner; starts
    /// reclaiming the slots of hosts idle for `idle_ms`, and ends the reclaim of those deleted
    /// at an earlier poll. Returns the host-directions with counters in the kernel.
    pub(crate) fn poll(
        &mut self,
        slots: &mut HostSlots,
        accounting: &mut impl CounterSink,
        now_ms: u64,
        idle_ms: u64,
        poll: u64,
    ) -> Result<u64, XdpError> {
        if self.states.len() < slots.hosts {
            self.states.resize(slots.hosts, HostState::default());
        }
        let mut touched = std::mem::take(&mut self.touched);
        slots.touched.slots_into(&mut touched);
        self.gone_v4.clear();
        self.gone_v6.clear();
        let mut releases = Vec::new();
        let mut kept = 0u64;
        let mut i = 0;
        while i < touched.len() {
            let host = touched[i] >> 1;
            let st = &mut self.states[host as usize];
            let owner = *st.owner.get_or_insert_with(|| slots.owner(host as usize));
            if st.changed_ms == 0 {
                st.changed_ms = now_ms;
            }
            while i < touched.len() && touched[i] >> 1 == host {
                let dir = (touched[i] & 1) as usize;
                let sum = slots.counters.sum(touched[i]);
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
            if st.deleted_at != 0 && st.deleted_at < poll {
                releases.push(host);
            } else if st.deleted_at == 0 && now_ms.saturating_sub(st.changed_ms) >= idle_ms {
                st.deleted_at = poll;
                match from16(owner) {
                    IpAddr::V4(a) => self.gone_v4.push(u32::from(a)),
                    IpAddr::V6(_) => self.gone_v6.push(owner),
                }
            }
        }
        self.touched = touched;
        for (v4, result) in [
            (true, super::batch::delete(slots.fd(true), &self.gone_v4)),
            (false, super::batch::delete(slots.fd(false), &self.gone_v6)),
        ] {
            if let Err(e) = result {
                // Key by key (a kernel without batched deletes).
                tracing::debug!("batched delete of idle XDP slots: {e}; key by key");
                if v4 {
                    for k in &self.gone_v4 {
                        let _ = slots.v4.remove(k);
                    }
                } else {
                    for k in &self.gone_v6 {
                        let _ = slots.v6.remove(k);
                    }
                }
            }
        }
        for host in releases {
            slots
                .release(host)
                .map_err(super::maps::map_err(map_names::FREE_SLOTS))?;
            self.states[host as usize] = HostState::default();
            kept = kept.saturating_sub(2);
        }
        Ok(kept)
    }
}
