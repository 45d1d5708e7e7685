//! A BPF_F_MMAPABLE array map mapped into the agent: its value area shared with the kernel,
//! read and written through atomics (the per-/16 networks table, the dense slots' touched
//! bytes).

use aya::maps::MapData;
use std::os::fd::{AsFd, AsRawFd};

/// A shared read-write mapping of an mmap-able array map, unmapped on drop.
pub(crate) struct SharedMapping {
    /// Keeps the map (and so the mapping's backing) alive.
    _map: MapData,
    ptr: *mut u8,
    mapped: usize,
}

// SAFETY: the mapping is owned by this value; its users only access it through atomics.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps the first `bytes` (rounded up to whole pages) of `map`'s values. The caller
    /// passes no more than the array's value area.
    pub(crate) fn new(map: MapData, bytes: usize) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mapped = bytes.div_ceil(page).max(1) * page;
        // SAFETY: a shared read-write mapping of a BPF_F_MMAPABLE array's fd, no larger than
        // the array's pages; checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            _map: map,
            ptr: ptr.cast(),
            mapped,
        })
    }

    /// The first byte (page-aligned).
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.mapped) };
    }
}
