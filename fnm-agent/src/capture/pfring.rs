//! PF_RING backend (Linux). `libpfring` is loaded when the backend is opened, so the agent
//! builds and runs on hosts without it; selecting the backend there gives an error naming
//! the library.

use super::parse::{LinkType, ParseStats};
use super::{
    deliver, CaptureBackend, CaptureConfig, CaptureError, CaptureStats, PacketSink, StopFlag,
};
use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::time::Duration;

const NAME: &str = "pfring";
/// `PF_RING_PROMISC` flag of `pfring_open`.
const PF_RING_PROMISC: u32 = 1 << 3;
/// Room for `struct pfring_pkthdr` (timeval, caplen, len, then the extended header, which is
/// a few hundred bytes depending on the version); only the first three fields are read.
const PKTHDR_ROOM: usize = 4096;
/// Names tried after the configured one.
const FALLBACK_NAMES: [&str; 2] = ["libpfring.so.1", "libpfring.so.8"];

type OpenFn = unsafe extern "C" fn(*const c_char, u32, u32) -> *mut c_void;
type RingFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type CloseFn = unsafe extern "C" fn(*mut c_void);
type RecvFn = unsafe extern "C" fn(*mut c_void, *mut *mut u8, c_uint, *mut c_void, u8) -> c_int;
type PollFn = unsafe extern "C" fn(*mut c_void, c_uint) -> c_int;
type FilterFn = unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int;

/// The functions used, resolved from the loaded library.
struct Api {
    open: OpenFn,
    enable_ring: RingFn,
    close: CloseFn,
    recv: RecvFn,
    poll: PollFn,
    set_bpf_filter: Option<FilterFn>,
    /// Keeps the function pointers above valid; dropped last.
    _library: Library,
}

/// Loads the PF_RING library: `name` first, then the usual sonames.
fn load(name: &str) -> Result<Api, CaptureError> {
    let mut last_error = String::new();
    let mut tried = vec![name.to_string()];
    tried.extend(
        FALLBACK_NAMES
            .iter()
            .filter(|n| **n != name)
            .map(|n| n.to_string()),
    );
    for candidate in &tried {
        // SAFETY: loading a shared library runs its initialisers; libpfring's are benign.
        match unsafe { Library::new(candidate) } {
            Ok(library) => return resolve(library, candidate),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(CaptureError::LibraryMissing {
        backend: NAME,
        library: tried.join(", "),
        message: format!("{last_error} (install PF_RING from ntop, or set capture.pfring.library)"),
    })
}

fn resolve(library: Library, name: &str) -> Result<Api, CaptureError> {
    let missing = |symbol: &str, e: libloading::Error| CaptureError::LibraryMissing {
        backend: NAME,
        library: name.to_string(),
        message: format!("symbol {symbol} not found: {e}"),
    };
    // SAFETY: the signatures are those of pfring.h; the pointers stay valid while `library`
    // is alive, and `Api` keeps it alive.
    unsafe {
        let open = *library
            .get::<OpenFn>(b"pfring_open\0")
            .map_err(|e| missing("pfring_open", e))?;
        let enable_ring = *library
            .get::<RingFn>(b"pfring_enable_ring\0")
            .map_err(|e| missing("pfring_enable_ring", e))?;
        let close = *library
            .get::<CloseFn>(b"pfring_close\0")
            .map_err(|e| missing("pfring_close", e))?;
        let recv = *library
            .get::<RecvFn>(b"pfring_recv\0")
            .map_err(|e| missing("pfring_recv", e))?;
        let poll = *library
            .get::<PollFn>(b"pfring_poll\0")
            .map_err(|e| missing("pfring_poll", e))?;
        let set_bpf_filter = library
            .get::<FilterFn>(b"pfring_set_bpf_filter\0")
            .ok()
            .map(|s| *s);
        Ok(Api {
            open,
            enable_ring,
            close,
            recv,
            poll,
            set_bpf_filter,
            _library: library,
        })
    }
}

struct Ring {
    interface: String,
    handle: *mut c_void,
}

/// The PF_RING backend: one ring per configured interface.
pub struct PfringBackend {
    rings: Vec<Ring>,
    header: Vec<u64>,
    // Declared last so the rings are closed (in `Drop`) before the library is unloaded.
    api: Api,
}

// SAFETY: the ring handles are used only by the thread that owns the backend.
unsafe impl Send for PfringBackend {}

impl Drop for PfringBackend {
    fn drop(&mut self) {
        for ring in self.rings.drain(..) {
            // SAFETY: `handle` came from pfring_open and is closed exactly once.
            unsafe { (self.api.close)(ring.handle) };
        }
    }
}

fn open_error(interface: &str, message: impl std::fmt::Display) -> CaptureError {
    CaptureError::Open {
        backend: NAME,
        interface: interface.to_string(),
        message: message.to_string(),
    }
}

impl PfringBackend {
    /// Loads libpfring and opens and enables a ring on every configured interface.
    pub fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        let api = load(&config.pfring.library)?;
        let mut backend = Self {
            rings: Vec::new(),
            header: vec![0u64; PKTHDR_ROOM / 8],
            api,
        };
        let flags = if config.promiscuous {
            PF_RING_PROMISC
        } else {
            0
        };
        for interface in &config.interfaces {
            let name = CString::new(interface.as_str()).map_err(|e| open_error(interface, e))?;
            // SAFETY: a valid C string; pfring_open returns NULL on failure.
            let handle = unsafe { (backend.api.open)(name.as_ptr(), config.snaplen, flags) };
            if handle.is_null() {
                return Err(open_error(
                    interface,
                    format!("pfring_open: {}", std::io::Error::last_os_error()),
                ));
            }
            backend.rings.push(Ring {
                interface: interface.clone(),
                handle,
            });
            if let Some(filter) = &config.bpf_filter {
                let set = backend.api.set_bpf_filter.ok_or_else(|| {
                    open_error(interface, "this libpfring has no pfring_set_bpf_filter")
                })?;
                let c_filter =
                    CString::new(filter.as_str()).map_err(|e| open_error(interface, e))?;
                // SAFETY: valid handle and C string (pfring does not keep the pointer).
                if unsafe { set(handle, c_filter.as_ptr().cast_mut()) } != 0 {
                    return Err(open_error(
                        interface,
                        format!("capture.bpf_filter {filter:?} rejected"),
                    ));
                }
            }
            // SAFETY: valid handle.
            if unsafe { (backend.api.enable_ring)(handle) } != 0 {
                return Err(open_error(interface, "pfring_enable_ring failed"));
            }
        }
        Ok(backend)
    }
}

impl CaptureBackend for PfringBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(
        &mut self,
        sink: &mut dyn PacketSink,
        stop: &StopFlag,
    ) -> Result<CaptureStats, CaptureError> {
        let mut stats = ParseStats::default();
        let link = Some(LinkType::Ethernet);
        let single = self.rings.len() == 1;
        while !stop.is_stopped() {
            let mut idle = true;
            for ring in &self.rings {
                for _ in 0..512 {
                    let mut buffer: *mut u8 = std::ptr::null_mut();
                    // SAFETY: zero-copy receive (buffer_len 0) into our header room, no wait.
                    let rc = unsafe {
                        (self.api.recv)(
                            ring.handle,
                            &mut buffer,
                            0,
                            self.header.as_mut_ptr().cast(),
                            0,
                        )
                    };
                    if rc < 0 {
                        return Err(CaptureError::Read {
                            backend: NAME,
                            message: format!("{}: pfring_recv returned {rc}", ring.interface),
                        });
                    }
                    if rc == 0 || buffer.is_null() {
                        break;
                    }
                    idle = false;
                    let (timestamp, caplen) = read_header(&self.header);
                    // SAFETY: pfring_recv returned `caplen` readable bytes at `buffer`, valid
                    // until the next receive on this ring.
                    let frame = unsafe { std::slice::from_raw_parts(buffer, caplen) };
                    deliver(link, timestamp, frame, sink, &mut stats);
                }
                // The live counters first, as in the pcap backend.
                sink.progress(&CaptureStats {
                    parse: stats,
                    dropped: 0,
                });
                sink.flush();
            }
            if idle {
                if single {
                    // SAFETY: valid handle; waits at most 100 ms.
                    unsafe { (self.api.poll)(self.rings[0].handle, 100) };
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
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

/// Reads `ts` (struct timeval) and `caplen` from the start of `struct pfring_pkthdr`.
fn read_header(header: &[u64]) -> (Duration, usize) {
    let secs = header[0];
    let micros = header[1].min(999_999);
    let caplen = (header[2] & 0xffff_ffff) as usize;
    (
        Duration::new(secs, (micros * 1000) as u32),
        caplen.min(super::MAX_SNAPLEN as usize),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_named() {
        let config = CaptureConfig {
            backend: super::super::BackendKind::Pfring,
            interfaces: vec!["eth0".into()],
            pfring: super::super::PfringOptions {
                library: "libpfring-fnm-test-absent.so".into(),
            },
            ..CaptureConfig::default()
        };
        let err = PfringBackend::open(&config)
            .err()
            .expect("must fail")
            .to_string();
        assert!(
            err.starts_with("capture.backend = \"pfring\": cannot load libpfring-fnm-test-absent.so, libpfring.so.1, libpfring.so.8: "),
            "{err}"
        );
        assert!(err.contains("install PF_RING"), "{err}");
    }

    #[test]
    fn header_fields_are_read_from_the_front() {
        let mut h = vec![0u64; PKTHDR_ROOM / 8];
        h[0] = 1_700_000_000;
        h[1] = 250_000;
        h[2] = (1500u64 << 32) | 128;
        assert_eq!(
            read_header(&h),
            (Duration::new(1_700_000_000, 250_000_000), 128)
        );
    }
}
