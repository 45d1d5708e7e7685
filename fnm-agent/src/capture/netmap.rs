//! netmap backend (FreeBSD base system; Linux with the out-of-tree netmap module).
//!
//! Thin bindings to netmap's control interface, written from `net/netmap.h` (API 14): open
//! the control device, register the port with `NIOCCTRL` / `NETMAP_REQ_REGISTER`, `mmap` the
//! shared region, then walk the receive rings between `head` and `tail` after each `poll`.
//! The `netmap-sys` crate is stale, hence these few structs.
//!
//! Registering a NIC in netmap mode detaches it from the host network stack: use this backend
//! on a dedicated mirror/SPAN port (or set `capture.netmap.host_rings = true` to also see what
//! the host stack sends and receives through the port).

use super::parse::{LinkType, ParseStats};
use super::{
    deliver, CaptureBackend, CaptureConfig, CaptureError, CaptureStats, PacketSink, StopFlag,
};
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NAME: &str = "netmap";

/// netmap API version spoken here.
pub const NETMAP_API: u16 = 14;
const NETMAP_REQ_REGISTER: u16 = 1;
const NR_REG_ALL_NIC: u32 = 1;
const NR_REG_NIC_SW: u32 = 3;
const NR_NO_TX_POLL: u64 = 0x20000;
const NETMAP_REQ_IFNAMSIZ: usize = 64;

/// `struct nmreq_header`.
#[repr(C)]
struct NmreqHeader {
    nr_version: u16,
    nr_reqtype: u16,
    nr_reserved: u32,
    nr_name: [u8; NETMAP_REQ_IFNAMSIZ],
    nr_options: u64,
    nr_body: u64,
}

/// `struct nmreq_register`.
#[repr(C)]
#[derive(Default)]
struct NmreqRegister {
    nr_offset: u64,
    nr_memsize: u64,
    nr_tx_slots: u32,
    nr_rx_slots: u32,
    nr_tx_rings: u16,
    nr_rx_rings: u16,
    nr_host_tx_rings: u16,
    nr_host_rx_rings: u16,
    nr_mem_id: u16,
    nr_ringid: u16,
    nr_mode: u32,
    nr_extra_bufs: u32,
    nr_flags: u64,
}

/// `_IOWR('i', 151, struct nmreq_header)`: the encoding is the same on Linux and FreeBSD.
const NIOCCTRL: u64 =
    0xC000_0000 | ((std::mem::size_of::<NmreqHeader>() as u64) << 16) | (0x69 << 8) | 151;

// Offsets inside `struct netmap_if`.
const NIFP_TX_RINGS: usize = 24;
const NIFP_RX_RINGS: usize = 28;
const NIFP_HOST_TX_RINGS: usize = 36;
const NIFP_HOST_RX_RINGS: usize = 40;
const NIFP_RING_OFS: usize = 56;
// Offsets inside `struct netmap_ring`.
const RING_BUF_OFS: usize = 0;
const RING_NUM_SLOTS: usize = 8;
const RING_BUF_SIZE: usize = 12;
const RING_HEAD: usize = 20;
const RING_CUR: usize = 24;
const RING_TAIL: usize = 28;
const RING_SLOTS: usize = 256;
const SLOT_SIZE: usize = 16;

/// One receive ring inside the mapped region, validated at registration.
struct Ring {
    /// Offset of `struct netmap_ring` from the start of the mapping.
    offset: usize,
    num_slots: u32,
    buf_size: usize,
    /// Offset of buffer 0 from the start of the mapping.
    buf_base: isize,
}

/// One registered port.
struct Port {
    interface: String,
    file: File,
    mem: *mut u8,
    mem_len: usize,
    rings: Vec<Ring>,
}

// SAFETY: the mapping is owned by the port and only touched by the thread that owns it.
unsafe impl Send for Port {}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: `mem`/`mem_len` are exactly what mmap returned; nothing refers to it anymore.
        unsafe {
            libc::munmap(self.mem.cast(), self.mem_len);
        }
    }
}

impl Port {
    fn u32_at(&self, offset: usize) -> u32 {
        // SAFETY: callers only pass offsets validated against `mem_len`; netmap structs are
        // 4-byte aligned inside the region.
        unsafe { std::ptr::read_volatile(self.mem.add(offset).cast::<u32>()) }
    }

    fn atomic_at(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: as for `u32_at`; the kernel only changes these words during our syscalls.
        unsafe { &*self.mem.add(offset).cast::<AtomicU32>() }
    }

    /// Reads every received slot of every ring and hands it back to the kernel.
    fn drain(&self, now: Duration, sink: &mut dyn PacketSink, stats: &mut ParseStats) {
        let link = Some(LinkType::Ethernet);
        for ring in &self.rings {
            let head = self.atomic_at(ring.offset + RING_HEAD);
            let cur = self.atomic_at(ring.offset + RING_CUR);
            let tail = self
                .atomic_at(ring.offset + RING_TAIL)
                .load(Ordering::Acquire);
            let mut i = head.load(Ordering::Relaxed);
            if i >= ring.num_slots || tail >= ring.num_slots {
                stats.malformed += 1;
                continue;
            }
            while i != tail {
                let slot = ring.offset + RING_SLOTS + i as usize * SLOT_SIZE;
                let buf_idx = self.u32_at(slot) as usize;
                let len = (self.u32_at(slot + 4) & 0xffff) as usize;
                let start = ring.buf_base + (buf_idx * ring.buf_size) as isize;
                let len = len.min(ring.buf_size);
                if start >= 0 && (start as usize).saturating_add(len) <= self.mem_len {
                    // SAFETY: the range was checked against the mapping just above.
                    let frame =
                        unsafe { std::slice::from_raw_parts(self.mem.add(start as usize), len) };
                    deliver(link, now, frame, sink, stats);
                } else {
                    stats.frames += 1;
                    stats.malformed += 1;
                }
                i = if i + 1 == ring.num_slots { 0 } else { i + 1 };
            }
            head.store(i, Ordering::Release);
            cur.store(i, Ordering::Release);
        }
    }
}

/// The netmap backend: one registered port per configured interface.
pub struct NetmapBackend {
    ports: Vec<Port>,
}

fn open_error(interface: &str, message: impl std::fmt::Display) -> CaptureError {
    CaptureError::Open {
        backend: NAME,
        interface: interface.to_string(),
        message: message.to_string(),
    }
}

impl NetmapBackend {
    /// Opens the control device and registers every configured interface.
    pub fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        let ports = config
            .interfaces
            .iter()
            .map(|i| register(config, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { ports })
    }
}

fn register(config: &CaptureConfig, interface: &str) -> Result<Port, CaptureError> {
    let device = &config.netmap.device;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| {
            open_error(
                interface,
                format!(
                    "cannot open {}: {e} (netmap needs the netmap kernel module: FreeBSD has it \
                     in GENERIC, else `kldload netmap`; Linux needs the out-of-tree netmap.ko)",
                    device.display()
                ),
            )
        })?;
    let port_name = interface.strip_prefix("netmap:").unwrap_or(interface);
    if port_name.len() >= NETMAP_REQ_IFNAMSIZ {
        return Err(open_error(interface, "port name too long"));
    }
    let mut body = NmreqRegister {
        nr_mode: if config.netmap.host_rings {
            NR_REG_NIC_SW
        } else {
            NR_REG_ALL_NIC
        },
        nr_flags: NR_NO_TX_POLL,
        ..NmreqRegister::default()
    };
    let mut header = NmreqHeader {
        nr_version: NETMAP_API,
        nr_reqtype: NETMAP_REQ_REGISTER,
        nr_reserved: 0,
        nr_name: [0; NETMAP_REQ_IFNAMSIZ],
        nr_options: 0,
        nr_body: std::ptr::addr_of_mut!(body) as u64,
    };
    header.nr_name[..port_name.len()].copy_from_slice(port_name.as_bytes());
    // SAFETY: NIOCCTRL takes a `struct nmreq_header` whose body pointer refers to `body`;
    // both outlive the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            NIOCCTRL as _,
            std::ptr::addr_of_mut!(header),
        )
    };
    if rc != 0 {
        return Err(open_error(
            interface,
            format!("NETMAP_REQ_REGISTER: {}", std::io::Error::last_os_error()),
        ));
    }
    let mem_len = usize::try_from(body.nr_memsize).map_err(|e| open_error(interface, e))?;
    let nifp = usize::try_from(body.nr_offset).map_err(|e| open_error(interface, e))?;
    if mem_len == 0 || nifp.saturating_add(NIFP_RING_OFS) > mem_len {
        return Err(open_error(
            interface,
            "netmap returned an inconsistent region",
        ));
    }
    // SAFETY: mapping the region the kernel just sized for this descriptor.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mem_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(open_error(
            interface,
            format!("mmap: {}", std::io::Error::last_os_error()),
        ));
    }
    let mut port = Port {
        interface: interface.to_string(),
        file,
        mem: mem.cast(),
        mem_len,
        rings: Vec::new(),
    };
    let tx_total = port.u32_at(nifp + NIFP_TX_RINGS) as usize
        + port.u32_at(nifp + NIFP_HOST_TX_RINGS) as usize;
    let mut rx = port.u32_at(nifp + NIFP_RX_RINGS) as usize;
    if config.netmap.host_rings {
        rx += port.u32_at(nifp + NIFP_HOST_RX_RINGS) as usize;
    }
    if tx_total + rx > 4096 {
        return Err(open_error(
            interface,
            "netmap reports an implausible ring count",
        ));
    }
    for index in tx_total..tx_total + rx {
        let ofs_at = nifp + NIFP_RING_OFS + index * 8;
        if ofs_at + 8 > mem_len {
            return Err(open_error(interface, "ring table outside the region"));
        }
        // SAFETY: checked against the mapping just above.
        let rel = unsafe { std::ptr::read_volatile(port.mem.add(ofs_at).cast::<i64>()) };
        let offset = usize::try_from(nifp as i64 + rel).map_err(|e| open_error(interface, e))?;
        if offset + RING_SLOTS > mem_len {
            return Err(open_error(interface, "ring outside the region"));
        }
        let num_slots = port.u32_at(offset + RING_NUM_SLOTS);
        let buf_size = port.u32_at(offset + RING_BUF_SIZE) as usize;
        // SAFETY: inside the ring header checked above.
        let buf_ofs =
            unsafe { std::ptr::read_volatile(port.mem.add(offset + RING_BUF_OFS).cast::<i64>()) };
        if num_slots == 0 || offset + RING_SLOTS + num_slots as usize * SLOT_SIZE > mem_len {
            return Err(open_error(interface, "ring slots outside the region"));
        }
        port.rings.push(Ring {
            offset,
            num_slots,
            buf_size,
            buf_base: offset as isize + buf_ofs as isize,
        });
    }
    Ok(port)
}

impl CaptureBackend for NetmapBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(
        &mut self,
        sink: &mut dyn PacketSink,
        stop: &StopFlag,
    ) -> Result<CaptureStats, CaptureError> {
        let mut stats = ParseStats::default();
        let mut fds: Vec<libc::pollfd> = self
            .ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while !stop.is_stopped() {
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(CaptureError::Read {
                    backend: NAME,
                    message: format!("poll: {err}"),
                });
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            for (port, fd) in self.ports.iter().zip(&fds) {
                if fd.revents & libc::POLLERR != 0 {
                    return Err(CaptureError::Read {
                        backend: NAME,
                        message: format!("{}: poll error", port.interface),
                    });
                }
                port.drain(now, sink, &mut stats);
                // The live counters first: the flush may confirm the engine's request for
                // the records, after which a reader expects them counted.
                sink.progress(&CaptureStats {
                    parse: stats,
                    dropped: 0,
                });
                sink.flush();
            }
        }
        let stats = CaptureStats {
            parse: stats,
            dropped: 0,
        };
        sink.progress(&stats);
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_netmap_h() {
        assert_eq!(std::mem::size_of::<NmreqHeader>(), 88);
        assert_eq!(std::mem::size_of::<NmreqRegister>(), 56);
        assert_eq!(NIOCCTRL, 0xC058_6997);
    }

    #[test]
    fn missing_device_gives_a_clear_error() {
        let config = CaptureConfig {
            backend: super::super::BackendKind::Netmap,
            interfaces: vec!["em0".into()],
            netmap: super::super::NetmapOptions {
                device: "/nonexistent/netmap".into(),
                host_rings: false,
            },
            ..CaptureConfig::default()
        };
        let err = NetmapBackend::open(&config)
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            err.starts_with("netmap: interface em0: cannot open /nonexistent/netmap: No such file"),
            "{err}"
        );
        assert!(err.contains("netmap kernel module"), "{err}");
    }
}
