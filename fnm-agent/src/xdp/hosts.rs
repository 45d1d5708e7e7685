//! The per-host counter tables: IPv4 hosts of networks with dense slots in `HOSTS_DENSE_V4`
//! (an mmap-able array with an entry per slot and CPU, see [`DenseLayout`] and
//! [`SlotArray`]), other IPv4 hosts and IPv6 hosts in the hashed hosts' open table
//! (`SLOT_OWNER` and its counters, see `slots.rs`; objects built before 2026-12-05: the
//! `HOSTS_V4` and `HOSTS` LRU hash tables), presented to the agent as one table keyed by
//! [`HostKey`].

use super::{local16::DenseLayout, mmap::SharedMapping};
use aya::maps::{IterableMap as _, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use fnm_common::{
    touched, v4_mapped, HostCounters, HostKey, HostKeyV4, WhitelistedCounters, XdpHostCounters,
    SLOT_COUNTERS_BYTES,
};
use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, BorrowedFd},
    sync::atomic::{AtomicU64, AtomicU8, Ordering},
};

/// A touched-byte map (`DENSE_TOUCHED_V4`, `SLOTS_TOUCHED`) mapped into the agent: byte `s`
/// is the [`touched`] state of slot `s`.
///
/// The program sets a byte to `NEW_PACKETS` after counting in its slot; a poll reads only
/// those slots, swapping each byte to `READ` first (a locked instruction, so the read comes
/// after it: a packet counted after the swap marks the slot again). A slot marked `READ` had
/// no packet since: its counters are as last read, and a poll skips them, but for one in
/// [`REREAD_POLLS`] (see [`reread_due`]). That one read catches what the swap's ordering
/// cannot promise: a program that read `NEW_PACKETS` just before the swap and skipped the
/// store while its counter stores were still on their way (a store then a load is the one
/// reordering x86 makes) had its packet in the kernel's memory nanoseconds later, and a
/// poll reads it at the latest [`REREAD_POLLS`] polls on.
pub(crate) struct TouchedBytes {
    mapping: SharedMapping,
    len: usize,
}

/// A touched slot's state, as [`TouchedBytes::scan_into`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// Packets counted since the agent's last read (`NEW_PACKETS`).
    NewPackets,
    /// Read, no packet counted since (`READ`).
    Read,
}

/// Polls between two reads of a slot marked `READ` (two seconds at four polls a second). A
/// slot's idleness is checked at those reads, so an idle slot leaves the kernel's view up to
/// this many polls after the idle timeout.
pub const REREAD_POLLS: u64 = 8;

/// True when poll `poll` reads the counters of `key` (a slot, or a host slot) even though
/// they are marked `READ`: each key once every [`REREAD_POLLS`] polls, an eighth of them at
/// each poll.
pub(crate) fn reread_due(key: u32, poll: u64) -> bool {
    (u64::from(key) + poll).is_multiple_of(REREAD_POLLS)
}

impl TouchedBytes {
    /// Maps `map` (an mmap-able array of `len / 8` u64 entries) shared with the kernel.
    pub(crate) fn map(map: MapData, len: usize) -> std::io::Result<Self> {
        Ok(Self {
            mapping: SharedMapping::new(map, len)?,
            len,
        })
    }

    /// Slots whose byte is set (eight bytes read at a time).
    pub(crate) fn slots(&self) -> Vec<u32> {
        let mut out = Vec::new();
        self.slots_into(&mut out);
        out
    }

    /// Replaces `out` by the slots whose byte is set, in increasing order.
    pub(crate) fn slots_into(&self, out: &mut Vec<u32>) {
        out.clear();
        self.each_set(|slot, _| out.push(slot));
    }

    /// Replaces `out` by the slots whose byte is set, in increasing order, with their state.
    pub(crate) fn scan_into(&self, out: &mut Vec<(u32, Mark)>) {
        out.clear();
        self.each_set(|slot, byte| {
            let mark = if byte == touched::READ {
                Mark::Read
            } else {
                Mark::NewPackets
            };
            out.push((slot, mark));
        });
    }

    /// Calls `each(slot, byte)` for every byte that is set, in increasing order (eight bytes
    /// read at a time, a word of zeros skipped at once).
    #[inline]
    fn each_set(&self, mut each: impl FnMut(u32, u8)) {
        for word in 0..self.len / 8 {
            // SAFETY: in bounds of the mapping; 8-byte aligned (page-aligned base).
            let mut w = unsafe { AtomicU64::from_ptr(self.mapping.ptr().add(word * 8).cast()) }
                .load(Ordering::Acquire);
            while w != 0 {
                // Byte i of the word (little-endian: slot word * 8 + i) is non-zero.
                let i = w.trailing_zeros() / 8;
                each((word * 8) as u32 + i, (w >> (i * 8)) as u8);
                w &= !(0xffu64 << (i * 8));
            }
        }
    }

    /// The byte of `slot`, if in bounds.
    fn byte(&self, slot: u32) -> Option<&AtomicU8> {
        let slot = slot as usize;
        // SAFETY: in bounds of the mapping, which lives as long as `self`.
        (slot < self.len).then(|| unsafe { AtomicU8::from_ptr(self.mapping.ptr().add(slot)) })
    }

    /// Marks `slot` `READ` before its counters are read, if it is marked `NEW_PACKETS`. A
    /// locked compare-and-swap: the counters read after it include every packet whose mark it
    /// replaced.
    pub(crate) fn take_new(&self, slot: u32) {
        self.swap_if(slot, touched::NEW_PACKETS, touched::READ);
    }

    /// Clears the byte of an idle slot if it is still marked `READ` (no packet since the last
    /// read). A packet counted after the clear sets it again.
    pub(crate) fn clear_if_read(&self, slot: u32) {
        self.swap_if(slot, touched::READ, touched::UNTOUCHED);
    }

    /// Sets the byte of `slot` to `new` if it holds `current`.
    fn swap_if(&self, slot: u32, current: u8, new: u8) {
        if let Some(b) = self.byte(slot) {
            let _ = b.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Marks `slot` `READ` whatever it holds (see [`HostMaps::mark_read`]).
    fn mark_read(&self, slot: u32) {
        if let Some(b) = self.byte(slot) {
            b.store(touched::READ, Ordering::Release);
        }
    }

    /// Clears the byte of `slot` whatever it holds; true when it was set.
    pub(crate) fn clear(&self, slot: u32) -> bool {
        self.byte(slot)
            .is_some_and(|b| b.swap(touched::UNTOUCHED, Ordering::AcqRel) != touched::UNTOUCHED)
    }
}

/// An mmap-able counter array laid out `slot × cpus + cpu` (one [`fnm_common::SlotCounters`]
/// each), mapped into the agent: a slot's counters are summed over the CPUs in place, with no
/// system call and no copy. The kernel's CPUs write their own entries while this reads them;
/// each counter is read with one 8-byte load (a field never tears), and a poll that reads a
/// counter a packet later than its neighbours sees the rest of that packet at the next one.
pub(crate) struct SlotArray {
    mapping: SharedMapping,
    cpus: usize,
    slots: usize,
}

/// `u64` words of one CPU's [`XdpHostCounters`].
const WORDS: usize = std::mem::size_of::<XdpHostCounters>() / 8;

impl SlotArray {
    /// Maps `map` (`slots × cpus` entries) shared with the kernel.
    pub(crate) fn map(map: MapData, slots: usize, cpus: usize) -> std::io::Result<Self> {
        let bytes = slots
            .checked_mul(cpus)
            .and_then(|n| n.checked_mul(SLOT_COUNTERS_BYTES))
            .ok_or_else(|| std::io::Error::other("slot array larger than the address space"))?;
        Ok(Self {
            mapping: SharedMapping::new(map, bytes)?,
            cpus,
            slots,
        })
    }

    /// The counters of `slot` on each CPU's entry, passed to `each` as words.
    fn for_each_cpu(&self, slot: u32, mut each: impl FnMut(&[u64; WORDS])) {
        let slot = slot as usize;
        if slot >= self.slots {
            return;
        }
        for cpu in 0..self.cpus {
            let entry = (slot * self.cpus + cpu) * SLOT_COUNTERS_BYTES;
            let mut words = [0u64; WORDS];
            for (i, w) in words.iter_mut().enumerate() {
                // SAFETY: in bounds of the mapping (slot < slots, cpu < cpus, the entry's
                // first WORDS words); 8-byte aligned (page-aligned base, 128-byte entries).
                *w = unsafe { AtomicU64::from_ptr(self.mapping.ptr().add(entry + i * 8).cast()) }
                    .load(Ordering::Relaxed);
            }
            each(&words);
        }
    }

    /// Starts loading the cache lines of `slot`'s counters on every CPU (a hint: changes no
    /// result, never faults).
    pub(crate) fn prefetch(&self, slot: u32) {
        let slot = slot as usize;
        if slot >= self.slots {
            return;
        }
        for cpu in 0..self.cpus {
            let entry = (slot * self.cpus + cpu) * SLOT_COUNTERS_BYTES;
            for line in (0..SLOT_COUNTERS_BYTES).step_by(64) {
                // In bounds of the mapping, as in `for_each_cpu`.
                crate::capture::prefetch_line(self.mapping.ptr().wrapping_add(entry + line));
            }
        }
    }

    /// Sets every CPU's counters of `slot` to zero (only while no program counts in it).
    pub(crate) fn zero(&self, slot: u32) {
        let slot = slot as usize;
        if slot >= self.slots {
            return;
        }
        for cpu in 0..self.cpus {
            let entry = (slot * self.cpus + cpu) * SLOT_COUNTERS_BYTES;
            for i in 0..WORDS {
                // SAFETY: as in `for_each_cpu`.
                unsafe { AtomicU64::from_ptr(self.mapping.ptr().add(entry + i * 8).cast()) }
                    .store(0, Ordering::Relaxed);
            }
        }
    }

    /// The counters of `slot`, summed over the CPUs (zero outside the array).
    pub(crate) fn sum(&self, slot: u32) -> XdpHostCounters {
        let mut sum = [0u64; WORDS];
        self.for_each_cpu(slot, |words| {
            for (s, w) in sum.iter_mut().zip(words) {
                *s = s.wrapping_add(*w);
            }
        });
        counters_of(&sum)
    }
}

/// [`XdpHostCounters`] from its words, in field order.
fn counters_of(w: &[u64; WORDS]) -> XdpHostCounters {
    XdpHostCounters {
        counted: HostCounters {
            packets: w[0],
            bytes: w[1],
            flows: w[2],
            tcp_syn_packets: w[3],
            fragments: w[4],
            proto_packets: [w[5], w[6], w[7], w[8]],
            proto_bytes: [w[9], w[10], w[11], w[12]],
        },
        whitelisted: WhitelistedCounters {
            packets: w[13],
            bytes: w[14],
        },
    }
}

/// The dense counters in the form the loaded object declares them.
pub(crate) enum DenseCounters {
    /// Mapped into the agent (this build's objects).
    Mapped(SlotArray),
    /// A per-CPU array read with system calls (objects built before 2026-12-05, which the
    /// benchmarks load beside this build's).
    PerCpu(PerCpuArray<MapData, XdpHostCounters>),
}

/// Every per-host counter table of the XDP program.
pub struct HostMaps {
    /// Dense IPv4 slots.
    pub(crate) dense: DenseCounters,
    /// Touched byte per dense slot.
    pub(crate) touched: TouchedBytes,
    /// Which address and direction each dense slot counts.
    pub(crate) layout: DenseLayout,
    /// IPv4 hosts (objects built before 2026-12-05: LRU per-CPU hash tables).
    pub(crate) v4: Option<PerCpuHashMap<MapData, HostKeyV4, XdpHostCounters>>,
    /// IPv6 hosts (as `v4`).
    pub(crate) v6: Option<PerCpuHashMap<MapData, HostKey, XdpHostCounters>>,
    /// Hashed hosts' kernel-assigned slots (this build's objects).
    pub(crate) slots: Option<super::slots::HostSlots>,
}

/// The IPv4 key of an IPv4-mapped [`HostKey`]; `None` for an IPv6 host.
pub(super) fn as_v4(key: &HostKey) -> Option<HostKeyV4> {
    let a = key.addr;
    (v4_mapped([a[12], a[13], a[14], a[15]]) == a).then_some(HostKeyV4 {
        addr: [a[12], a[13], a[14], a[15]],
        direction: key.direction,
        _pad: [0; 3],
    })
}

/// The [`HostKey`] of an IPv4 key.
pub(super) fn from_v4(key: HostKeyV4) -> HostKey {
    HostKey {
        addr: v4_mapped(key.addr),
        direction: key.direction,
        _pad: [0; 3],
    }
}

impl HostMaps {
    /// The dense slot of a host and direction, if its network has dense slots.
    fn dense_slot(&self, key: &HostKeyV4) -> Option<u32> {
        let incoming = self.layout.slot_of(Ipv4Addr::from(key.addr))?;
        Some(incoming + (key.direction & 1) as u32)
    }

    /// The counters of one host and direction, summed over the CPUs.
    pub fn sum(&self, key: &HostKey) -> Result<XdpHostCounters, MapError> {
        let add = |values: PerCpuValues<XdpHostCounters>| {
            let mut sum = XdpHostCounters::default();
            for v in values.iter() {
                sum.accumulate(v);
            }
            sum
        };
        match as_v4(key) {
            Some(k) => match self.dense_slot(&k) {
                Some(slot) => self.dense_slot_raw(slot),
                None => match (&self.slots, &self.v4) {
                    (Some(slots), _) => Ok(slots.sum(&key.addr, key.direction)),
                    (None, Some(v4)) => v4.get(&k, 0).map(add),
                    (None, None) => Ok(XdpHostCounters::default()),
                },
            },
            None => match (&self.slots, &self.v6) {
                (Some(slots), _) => Ok(slots.sum(&key.addr, key.direction)),
                (None, Some(v6)) => v6.get(key, 0).map(add),
                (None, None) => Ok(XdpHostCounters::default()),
            },
        }
    }

    /// Marks the counter slots of a host and direction `READ`, as a poll that had just read
    /// them would, whatever was counted since: what a program leaves behind when it skipped
    /// its mark in a race with the poll's swap ([`TouchedBytes`]). For tests: polls must still
    /// credit those packets within [`REREAD_POLLS`].
    #[doc(hidden)]
    pub fn mark_read(&self, key: &HostKey) {
        match as_v4(key).and_then(|k| self.dense_slot(&k)) {
            Some(slot) => self.touched.mark_read(slot),
            None => {
                if let Some(slots) = &self.slots {
                    for slot in slots.counter_slots(&key.addr, key.direction) {
                        slots.touched.mark_read(slot);
                    }
                }
            }
        }
    }

    /// Dense slots that got packets since their byte was last cleared.
    pub(crate) fn touched_slots(&self) -> Vec<u32> {
        self.touched.slots()
    }

    /// The file descriptor of the dense array (batched reads), when it is a per-CPU array.
    pub(crate) fn dense_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.dense {
            DenseCounters::PerCpu(array) => Some(array.map().fd().as_fd()),
            DenseCounters::Mapped(_) => None,
        }
    }

    /// The dense array mapped into the agent, if it is one.
    pub(crate) fn dense_mapped(&self) -> Option<&SlotArray> {
        match &self.dense {
            DenseCounters::Mapped(array) => Some(array),
            DenseCounters::PerCpu(_) => None,
        }
    }

    /// The file descriptor of the IPv4 LRU hash table (batched reads and deletes).
    pub(crate) fn v4_fd(&self) -> Option<BorrowedFd<'_>> {
        self.v4.as_ref().map(|m| m.map().fd().as_fd())
    }

    /// The file descriptor of the IPv6 LRU hash table (batched reads and deletes).
    pub(crate) fn v6_fd(&self) -> Option<BorrowedFd<'_>> {
        self.v6.as_ref().map(|m| m.map().fd().as_fd())
    }

    /// The summed counters of one dense slot, whoever it belongs to.
    pub(crate) fn dense_slot_raw(&self, slot: u32) -> Result<XdpHostCounters, MapError> {
        match &self.dense {
            DenseCounters::Mapped(array) => Ok(array.sum(slot)),
            DenseCounters::PerCpu(array) => {
                let mut sum = XdpHostCounters::default();
                for v in array.get(&slot, 0)?.iter() {
                    sum.accumulate(v);
                }
                Ok(sum)
            }
        }
    }

    /// Every host and direction with counters in the kernel: dense slots touched since their
    /// last idle clear, then the hash tables.
    pub fn keys(&self) -> impl Iterator<Item = Result<HostKey, MapError>> + '_ {
        let dense: Vec<Result<HostKey, MapError>> = self
            .touched_slots()
            .into_iter()
            .filter_map(|slot| self.layout.host_of(slot))
            .map(|(addr, direction)| {
                Ok(HostKey {
                    addr: v4_mapped(addr.octets()),
                    direction,
                    _pad: [0; 3],
                })
            })
            .collect();
        let slots: Vec<Result<HostKey, MapError>> = self
            .slots
            .iter()
            .flat_map(|s| s.keys())
            .map(|(addr, direction)| {
                Ok(HostKey {
                    addr,
                    direction,
                    _pad: [0; 3],
                })
            })
            .collect();
        dense
            .into_iter()
            .chain(slots)
            .chain(
                self.v4
                    .iter()
                    .flat_map(|m| m.keys().map(|k| k.map(from_v4))),
            )
            .chain(self.v6.iter().flat_map(|m| m.keys()))
    }

    /// Every host and direction of the hash tables with its per-CPU counters.
    pub fn iter_hashed(
        &self,
    ) -> impl Iterator<Item = Result<(HostKey, PerCpuValues<XdpHostCounters>), MapError>> + '_ {
        self.v4
            .iter()
            .flat_map(|m| m.iter().map(|item| item.map(|(k, v)| (from_v4(k), v))))
            .chain(self.v6.iter().flat_map(|m| m.iter()))
    }

    /// Removes one host and direction from the LRU hash tables.
    pub fn remove(&mut self, key: &HostKey) -> Result<(), MapError> {
        match (as_v4(key), &mut self.v4, &mut self.v6) {
            (Some(k), Some(v4), _) => v4.remove(&k),
            (None, _, Some(v6)) => v6.remove(key),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_keys_round_trip_and_v6_keys_stay_v6() {
        let k = HostKey {
            addr: v4_mapped([10, 10, 0, 5]),
            direction: 1,
            _pad: [0; 3],
        };
        let v4 = as_v4(&k).expect("mapped address is IPv4");
        assert_eq!(v4.addr, [10, 10, 0, 5]);
        assert_eq!(from_v4(v4), k);
        let mut v6 = k;
        v6.addr[0] = 0x20;
        assert!(as_v4(&v6).is_none());
    }
}
