//! libpcap live capture on one or more interfaces (Linux, FreeBSD, macOS).
//!
//! Each interface gets its own non-blocking pcap handle (promiscuous as configured, the
//! configured snap length, immediate or buffered delivery, optional BPF filter). One thread
//! polls all of them and reads them in batches of up to [`BATCH`] packets, calling
//! [`PacketSink::flush`] after each batch, so `run` wakes at least every [`POLL_INTERVAL_MS`]
//! to notice a stop request even when the interfaces are silent (every
//! [`WAKEABLE_POLL_INTERVAL_MS`] when the sink has a wake descriptor, through which the stopper
//! wakes it).
//!
//! With `immediate = false` (the default) the kernel hands packets over in blocks, retired
//! when full or after the libpcap buffer timeout, which is [`POLL_INTERVAL_MS`]: a packet
//! reaches the sink at most about 100 ms after it was captured, and the reader wakes once per
//! block instead of once per packet. On Linux the reader also paces itself: after a read it
//! waits until the kernel buffer would be a quarter full at that read's rate, at most
//! [`MAX_PACED_WAIT`], and then takes every block at once. A sink's wake descriptor
//! ([`PacketSink::wake_fd`]) is polled beside the handles and ends such a wait at once.

use super::parse::{LinkType, ParseStats};
use super::{
    deliver, prefetch_line, CaptureBackend, CaptureConfig, CaptureError, CaptureStats, PacketSink,
    StopFlag,
};
use pcap::{Active, Capture};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

/// Longest wait for packets before the stop flag is checked again.
pub const POLL_INTERVAL_MS: i32 = 100;

/// Longest wait for packets when the sink has a wake descriptor: whoever raises the stop flag
/// (or wants the records) then wakes the thread through it, so an idle capture thread need not
/// wake ten times a second.
pub const WAKEABLE_POLL_INTERVAL_MS: i32 = 1000;
/// Packets read from one handle per call before the others get a turn (and the sink is
/// flushed): about one libpcap block of small packets.
pub const BATCH: usize = 2048;

const NAME: &str = "pcap";

/// Bytes from the end of a packet's captured data to the start of the next packet's data in a
/// libpcap TPACKET_V3 block on Linux (its kernel header, address and alignment), as measured
/// with libpcap 1.10; used only to prefetch.
const NEXT_FRAME_GAP: usize = 92;

/// Bytes from the start of a packet's TPACKET_V3 kernel header (which libpcap reads first:
/// status, lengths, VLAN fields) to its captured data, as for [`NEXT_FRAME_GAP`].
const NEXT_HEADER_BEFORE_DATA: usize = 86;

struct Handle {
    interface: String,
    capture: Capture<Active>,
    link: LinkType,
}

/// Longest time the reader waits between two reads of the handles in block mode (Linux,
/// `immediate = false`, a kernel buffer of at least 16 libpcap blocks): each wake-up
/// of the capture thread costs far more than a packet (the system calls, and the sink's tables
/// fetched back into the cache), so after each read the thread waits until the kernel buffer
/// would be a quarter full at the rate of that read, at most this long, and then takes all the
/// blocks at once. A request for the sink's records (its wake descriptor: the agent asks before
/// each accounting tick) ends the wait at once, so records still count in their poll slot.
pub const MAX_PACED_WAIT: Duration = Duration::from_millis(250);

/// Smallest kernel buffer, in libpcap blocks, for which reads are paced: a block retired by
/// the timeout holds a whole block of the buffer however few packets it carries.
const PACING_MIN_BLOCKS: usize = 16;

/// Fraction of the kernel buffer one wake-up may find filled before pacing is skipped (the
/// next poll follows at once), so a burst cannot overflow the buffer while the thread waits.
const PACING_MAX_FILL: usize = 4;

/// Size of the blocks libpcap 1.10 asks the kernel for (TPACKET_V3: its largest snap length
/// rounded to pages).
const BLOCK_BYTES: usize = 256 * 1024;

/// Kernel bytes per captured packet beyond its captured data in a TPACKET_V3 block (header,
/// address, alignment), for estimating how full the buffer was.
const BLOCK_OVERHEAD_PER_PACKET: usize = 92;

/// The libpcap backend.
pub struct PcapBackend {
    handles: Vec<Handle>,
    /// Bytes of the kernel buffer a paced wait may let fill (a quarter of it), when reads are
    /// paced (see [`MAX_PACED_WAIT`]).
    pacing: Option<usize>,
}

impl PcapBackend {
    /// Opens every configured interface; the first failure is returned with the interface name.
    pub fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        Self::open_in_group(config, None)
    }

    /// Opens every configured interface, each socket joining AF_PACKET fanout group `fanout`
    /// plus the interface's position (Linux; `PACKET_FANOUT_HASH`) when given: every capture
    /// thread opens the same interfaces in the same groups, and the kernel hands each packet
    /// to exactly one of their sockets.
    pub fn open_in_group(
        config: &CaptureConfig,
        fanout: Option<u16>,
    ) -> Result<Self, CaptureError> {
        let handles = config
            .interfaces
            .iter()
            .enumerate()
            .map(|(i, interface)| {
                let handle = open_interface(config, interface)?;
                if let Some(group) = fanout {
                    join_fanout(&handle, group.wrapping_add(i as u16))?;
                }
                Ok(handle)
            })
            .collect::<Result<Vec<_>, CaptureError>>()?;
        let buffer = config.pcap.buffer_size as usize;
        let pacing = (cfg!(target_os = "linux")
            && !config.pcap.immediate
            && buffer >= PACING_MIN_BLOCKS * BLOCK_BYTES)
            .then_some(buffer / PACING_MAX_FILL);
        Ok(Self { handles, pacing })
    }

    /// The link types of the opened interfaces, in configuration order.
    pub fn link_types(&self) -> Vec<(String, LinkType)> {
        self.handles
            .iter()
            .map(|h| (h.interface.clone(), h.link))
            .collect()
    }
}

fn open_error(interface: &str, message: impl std::fmt::Display) -> CaptureError {
    CaptureError::Open {
        backend: NAME,
        interface: interface.to_string(),
        message: message.to_string(),
    }
}

fn open_interface(config: &CaptureConfig, interface: &str) -> Result<Handle, CaptureError> {
    let snaplen = i32::try_from(config.snaplen).map_err(|e| open_error(interface, e))?;
    let buffer = i32::try_from(config.pcap.buffer_size).unwrap_or(i32::MAX);
    let mut capture = Capture::from_device(interface)
        .map_err(|e| open_error(interface, e))?
        .promisc(config.promiscuous)
        .snaplen(snaplen)
        .immediate_mode(config.pcap.immediate)
        .buffer_size(buffer)
        .timeout(POLL_INTERVAL_MS)
        .open()
        .map_err(|e| open_error(interface, e))?;
    if let Some(filter) = &config.bpf_filter {
        capture
            .filter(filter, true)
            .map_err(|e| open_error(interface, format!("capture.bpf_filter {filter:?}: {e}")))?;
    }
    let datalink = capture.get_datalink();
    let link = u32::try_from(datalink.0)
        .ok()
        .and_then(LinkType::from_pcap)
        .ok_or_else(|| {
            open_error(
                interface,
                format!(
                    "link type {} ({}) is not supported",
                    datalink.0,
                    datalink.get_name().unwrap_or_else(|_| "unknown".into())
                ),
            )
        })?;
    let capture = capture
        .setnonblock()
        .map_err(|e| open_error(interface, e))?;
    Ok(Handle {
        interface: interface.to_string(),
        capture,
        link,
    })
}

/// Joins the handle's packet socket to AF_PACKET fanout group `group`, spreading by flow
/// hash (`PACKET_FANOUT_HASH`; no defragmentation, so fragments count as the fragments they
/// are).
#[cfg(target_os = "linux")]
fn join_fanout(handle: &Handle, group: u16) -> Result<(), CaptureError> {
    /// `PACKET_FANOUT` (linux/if_packet.h).
    const PACKET_FANOUT: libc::c_int = 18;
    /// `PACKET_FANOUT_HASH`.
    const PACKET_FANOUT_HASH: u32 = 0;
    let arg: u32 = u32::from(group) | (PACKET_FANOUT_HASH << 16);
    // SAFETY: setsockopt on the handle's own socket with a valid 4-byte argument.
    let rc = unsafe {
        libc::setsockopt(
            handle.capture.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_FANOUT,
            (&arg as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(open_error(
            &handle.interface,
            format!(
                "joining AF_PACKET fanout group {group}: {err} (another process may use this \
                 group id: set capture.fanout_group)"
            ),
        ));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn join_fanout(handle: &Handle, _group: u16) -> Result<(), CaptureError> {
    Err(open_error(
        &handle.interface,
        "AF_PACKET fanout (capture.threads above 1) needs Linux",
    ))
}

fn timeval_to_duration(ts: libc::timeval) -> Duration {
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let micros = u32::try_from(ts.tv_usec).unwrap_or(0).min(999_999);
    Duration::new(secs, micros * 1000)
}

/// Reads up to `count` packets (all buffered when `None`) from one handle into `sink`;
/// returns how many were read. Timestamps are converted only when `with_timestamps`.
#[inline]
fn read_batch(
    handle: &mut Handle,
    count: Option<usize>,
    with_timestamps: bool,
    sink: &mut dyn PacketSink,
    stats: &mut ParseStats,
    buffered: &mut usize,
) -> Result<usize, CaptureError> {
    let link = Some(handle.link);
    handle
        .capture
        .dispatch(count, |packet| {
            let timestamp = if with_timestamps {
                timeval_to_duration(packet.header.ts)
            } else {
                Duration::ZERO
            };
            deliver(link, timestamp, packet.data, sink, stats);
            *buffered += packet.data.len() + BLOCK_OVERHEAD_PER_PACKET;
            // Linux hands libpcap a block of packets, each right after the previous one's
            // captured bytes and the next one's kernel header: start loading the lines of the
            // next packet's Ethernet and IP headers while libpcap gets to it (a hint only; a
            // wrong guess costs nothing but the hint).
            let next = packet
                .data
                .as_ptr()
                .wrapping_add(packet.data.len() + NEXT_FRAME_GAP);
            prefetch_line(next.wrapping_sub(NEXT_HEADER_BEFORE_DATA));
            prefetch_line(next.wrapping_sub(NEXT_HEADER_BEFORE_DATA - 40));
            prefetch_line(next.wrapping_add(12));
            prefetch_line(next.wrapping_add(48));
        })
        .map_err(|e| CaptureError::Read {
            backend: NAME,
            message: format!("{}: {e}", handle.interface),
        })
}

/// Sleeps for `duration`, or less when `wake` (the sink's wake descriptor) turns readable;
/// its readiness is left for the next poll to see.
fn wait_for(wake: Option<&mut libc::pollfd>, duration: Duration) {
    if duration.is_zero() {
        return;
    }
    match wake {
        Some(fd) => {
            let ms = libc::c_int::try_from(duration.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd for the whole call.
            unsafe { libc::poll(fd, 1, ms) };
        }
        None => std::thread::sleep(duration),
    }
}

impl PcapBackend {
    /// Packets the kernel dropped on every handle so far (libpcap keeps the sums).
    fn kernel_dropped(&mut self) -> u64 {
        self.handles
            .iter_mut()
            .filter_map(|h| h.capture.stats().ok())
            .map(|s| u64::from(s.dropped) + u64::from(s.if_dropped))
            .sum()
    }
}

impl CaptureBackend for PcapBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(
        &mut self,
        sink: &mut dyn PacketSink,
        stop: &StopFlag,
    ) -> Result<CaptureStats, CaptureError> {
        let mut stats = ParseStats::default();
        let with_timestamps = sink.wants_timestamps();
        let mut fds: Vec<libc::pollfd> = self
            .handles
            .iter()
            .map(|h| libc::pollfd {
                fd: h.capture.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // A sink that can be asked for its records (the agent's, before each accounting tick)
        // is polled too, after the handles.
        let wake = sink.wake_fd();
        if let Some(fd) = wake {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let poll_timeout = if wake.is_some() {
            WAKEABLE_POLL_INTERVAL_MS
        } else {
            POLL_INTERVAL_MS
        };
        let mut last_read = Instant::now();
        let mut paced_wait: Option<Duration> = None;
        let mut dropped = 0u64;
        while !stop.is_stopped() {
            if let Some(wait) = paced_wait {
                wait_for(
                    wake.and(fds.last_mut()),
                    wait.saturating_sub(last_read.elapsed()),
                );
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the whole call.
            let ready =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, poll_timeout) };
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(CaptureError::Read {
                        backend: NAME,
                        message: format!("poll: {err}"),
                    });
                }
            }
            let since_last_read = last_read.elapsed();
            last_read = Instant::now();
            let mut buffered = 0usize;
            // Asked for the records: the kernel's drop counters are read once per request.
            let woke = wake.is_some() && fds.last().is_some_and(|fd| fd.revents != 0);
            if woke {
                dropped = self.kernel_dropped();
            }
            // The live counters are stored before every flush: the flush that confirms the
            // engine's request must find them counting every frame whose records it hands over
            // (stored after it, a reader right after the tick could see the records without
            // the frames).
            let progress = |stats: ParseStats| CaptureStats {
                parse: stats,
                dropped,
            };
            // On Linux poll reports the packet socket readable exactly when libpcap has a block
            // to hand over, so an idle handle is not read (one system call less per wake-up).
            // Elsewhere every handle is read after each wake-up: poll on BPF devices is
            // unreliable on some systems, and a non-blocking read of an idle handle is cheap.
            for (handle, fd) in self.handles.iter_mut().zip(&fds) {
                if cfg!(target_os = "linux") && fd.revents == 0 {
                    continue;
                }
                loop {
                    let read = read_batch(
                        handle,
                        Some(BATCH),
                        with_timestamps,
                        sink,
                        &mut stats,
                        &mut buffered,
                    )?;
                    sink.progress(&progress(stats));
                    sink.flush();
                    if read < BATCH || stop.is_stopped() {
                        break;
                    }
                }
            }
            if woke {
                sink.woken();
            }
            sink.progress(&progress(stats));
            // Records a buffering sink still holds reach its consumer even when no packet came.
            sink.flush();
            // The next read waits until the buffer would be a quarter full at this read's
            // rate (at most MAX_PACED_WAIT); an empty or a large read polls again at once.
            paced_wait = self.pacing.and_then(|limit| {
                (buffered > 0 && buffered < limit).then(|| {
                    since_last_read
                        .mul_f64(limit as f64 / buffered as f64)
                        .min(MAX_PACED_WAIT)
                })
            });
        }
        // Packets still buffered by the kernel when stopping are read before returning.
        dropped = 0;
        for handle in &mut self.handles {
            let _ = read_batch(handle, None, with_timestamps, sink, &mut stats, &mut 0);
            if let Ok(s) = handle.capture.stats() {
                dropped += u64::from(s.dropped) + u64::from(s.if_dropped);
            }
        }
        sink.flush();
        let stats = CaptureStats {
            parse: stats,
            dropped,
        };
        sink.progress(&stats);
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_named_in_the_error() {
        let config = CaptureConfig {
            backend: super::super::BackendKind::Pcap,
            interfaces: vec!["fnm-no-such0".into()],
            ..CaptureConfig::default()
        };
        let err = PcapBackend::open(&config)
            .err()
            .expect("must fail")
            .to_string();
        assert!(err.starts_with("pcap: interface fnm-no-such0: "), "{err}");
    }
}
