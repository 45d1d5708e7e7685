//! Batched reads and deletes of the per-CPU counter maps: `BPF_MAP_LOOKUP_BATCH` copies
//! thousands of entries (every CPU's value of each) in one system call where a lookup per key
//! costs one, and a hash table walked with `get_next_key` two; `BPF_MAP_DELETE_BATCH` removes a
//! list of keys in one. Both exist since Linux 5.6 for arrays and hash tables, per-CPU and LRU
//! ones included. aya 0.14 has no wrapper for them, so this module issues the `bpf(2)` calls
//! itself.

use fnm_common::XdpHostCounters;
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd` of the kernel's uapi).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_DELETE_BATCH`.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Bytes of one CPU's value in a per-CPU map's batch buffer (the kernel rounds each up to 8).
const VALUE: usize = std::mem::size_of::<XdpHostCounters>().next_multiple_of(8);

/// Most entries one batch call reads: bounds the buffer (`MAX_BATCH` × 120 B × CPUs, 3.8 MiB
/// with 8 CPUs) whatever the number of hosts.
pub(crate) const MAX_BATCH: usize = 4096;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Runs `bpf(cmd, attr)`; the kernel writes the number of entries it handled into
/// `attr.count`, also on failure.
fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` prefix of the size passed (the kernel
    // zero-fills the rest of the union); every pointer in it was set by the caller to a buffer
    // large enough for `count` keys/values, alive for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Buffers for batched reads of one per-CPU counter map with keys of type `K`, reused from poll
/// to poll so a poll allocates nothing once they have grown.
pub(crate) struct PerCpuBatch<K: Copy + Default> {
    cpus: usize,
    keys: Vec<K>,
    /// Values as `u64` words, so each CPU's counters are 8-byte aligned.
    values: Vec<u64>,
    /// Entries in `keys` / `values` after the last read.
    len: usize,
}

impl<K: Copy + Default> PerCpuBatch<K> {
    /// Buffers for a map read on a machine with `cpus` possible CPUs.
    pub(crate) fn new(cpus: usize) -> Self {
        Self {
            cpus: cpus.max(1),
            keys: Vec::new(),
            values: Vec::new(),
            len: 0,
        }
    }

    fn reserve(&mut self, count: usize) {
        if self.keys.len() < count {
            self.keys.resize(count, K::default());
            self.values.resize(count * self.stride_words(), 0);
        }
    }

    fn stride_words(&self) -> usize {
        self.cpus * VALUE / 8
    }

    /// Entries read by the last call.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The key of entry `i` of the last read.
    pub(crate) fn key(&self, i: usize) -> K {
        self.keys[i]
    }

    /// The counters of entry `i` of the last read, summed over the CPUs.
    pub(crate) fn sum(&self, i: usize) -> XdpHostCounters {
        let stride = self.stride_words();
        let words = &self.values[i * stride..(i + 1) * stride];
        let mut sum = XdpHostCounters::default();
        for cpu in words.chunks_exact(VALUE / 8) {
            // SAFETY: `cpu` is VALUE (≥ size_of::<XdpHostCounters>()) initialised bytes,
            // 8-byte aligned; XdpHostCounters is repr(C) plain u64s, valid for any bits.
            let v: XdpHostCounters = unsafe { std::ptr::read(cpu.as_ptr().cast()) };
            sum.accumulate(&v);
        }
        sum
    }

    /// Reads up to `count` entries (at most [`MAX_BATCH`]) after `position` (`None`: from
    /// the start). Returns the position to go on from, `None` once the map has no more
    /// entries. The entries are then in [`PerCpuBatch::key`] / [`PerCpuBatch::sum`].
    ///
    /// For an array, a position is a key (`u32` index: the read starts at the next index); for
    /// a hash table, an opaque bucket number the kernel handed out.
    pub(crate) fn read(
        &mut self,
        fd: BorrowedFd<'_>,
        position: Option<u32>,
        count: usize,
    ) -> io::Result<Option<u32>> {
        let mut count = count.clamp(1, MAX_BATCH);
        loop {
            self.reserve(count);
            let in_batch = position.unwrap_or(0);
            let mut out_batch = 0u32;
            let mut attr = BatchAttr {
                in_batch: match position {
                    Some(_) => &in_batch as *const u32 as u64,
                    None => 0,
                },
                out_batch: &mut out_batch as *mut u32 as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: count as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            let result = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
            self.len = (attr.count as usize).min(count);
            return match result {
                Ok(()) => Ok(Some(out_batch)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
                // One hash bucket holds more entries than `count`: read it with more room.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && count < MAX_BATCH * 16 => {
                    count *= 2;
                    continue;
                }
                Err(e) => {
                    self.len = 0;
                    Err(e)
                }
            };
        }
    }
}

/// Deletes `keys` from the hash table `fd` in as few calls as the kernel allows (it stops at a
/// key that is gone, evicted meanwhile: that one is skipped). Returns the keys deleted.
pub(crate) fn delete<K: Copy>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut done = 0;
    let mut deleted = 0;
    while done < keys.len() {
        let chunk = &keys[done..(done + MAX_BATCH).min(keys.len())];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr);
        let handled = (attr.count as usize).min(chunk.len());
        deleted += handled;
        done += handled;
        match result {
            Ok(()) => {}
            // The key at `handled` is not there any more: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => done += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
