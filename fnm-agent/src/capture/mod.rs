//! Userspace packet capture: the fallback when XDP cannot run (FreeBSD, macOS, mirror ports).
//!
//! Every backend opens from [`CaptureConfig`], then hands each captured frame, parsed by
//! [`parse::parse_frame`], to a [`PacketSink`] until its [`StopFlag`] is raised, and calls
//! [`PacketSink::flush`] after every batch it read (so a sink may buffer; see [`batch`]). The records are
//! exactly those the XDP program would count (see [`parse`] for the differences: tunnels are
//! decapsulated here), so the accounting downstream behaves identically.
//!
//! Backends: libpcap ([`pcap_live`], feature `pcap`), netmap ([`netmap`], feature `netmap`,
//! FreeBSD and Linux), PF_RING ([`pfring`], feature `pfring`, Linux, library loaded at run
//! time). Offline capture files are read by [`pcap_file`] without libpcap.

pub mod batch;
pub mod flush_gate;
pub mod parse;
pub mod pcap_file;

#[cfg(feature = "pcap")]
pub mod pcap_live;

#[cfg(all(feature = "netmap", any(target_os = "linux", target_os = "freebsd")))]
pub mod netmap;

#[cfg(all(feature = "pfring", target_os = "linux"))]
pub mod pfring;

use crate::traffic::TrafficRecord;
use parse::{LinkType, ParseStats};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Receives the records of captured packets, on the capture thread.
///
/// Backends call [`PacketSink::packet`] for every record and [`PacketSink::flush`] at the end
/// of every batch they read from the kernel or driver, and at least every
/// [`FLUSH_INTERVAL_MS`] while they run, so a sink may buffer records and hand them on once
/// per batch (one lock of the shared accounting instead of one per packet).
pub trait PacketSink {
    /// One packet: `timestamp` is the capture time since the UNIX epoch (`Duration::ZERO`
    /// when [`PacketSink::wants_timestamps`] is false and the backend skipped it).
    fn packet(&mut self, timestamp: Duration, record: TrafficRecord);

    /// One plain IPv4 packet from the parser's fast path, not yet turned into a record.
    /// Default: [`PacketSink::packet`] with its record (a sink may coalesce without it).
    #[inline]
    fn ipv4_packet(&mut self, timestamp: Duration, packet: &parse::Ipv4Packet) {
        self.packet(timestamp, packet.to_record());
    }

    /// End of a batch: hand on whatever is buffered. Default: nothing (unbuffered sink).
    fn flush(&mut self) {}

    /// A descriptor the backend polls beside its capture handles, if the sink has one: when
    /// it polls readable, somebody wants the sink's records now (or raised the stop flag), and
    /// the backend calls [`PacketSink::woken`] and then [`PacketSink::flush`]. A backend polling
    /// it may check its stop flag less often (whoever stops it wakes it). Default: none.
    fn wake_fd(&mut self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// The descriptor from [`PacketSink::wake_fd`] polled readable. Default: nothing.
    fn woken(&mut self) {}

    /// Whether [`PacketSink::packet`] uses its timestamp; a backend may skip converting
    /// capture timestamps when it does not. Default: `true`.
    fn wants_timestamps(&self) -> bool {
        true
    }

    /// The run's counters so far (cumulative). Backends call it when they serve a flush
    /// request (once per accounting tick) and at the end. Default: nothing.
    fn progress(&mut self, _stats: &CaptureStats) {}
}

/// Live counters of a capture run, shared with the metrics: what [`PacketSink::progress`]
/// last reported.
#[derive(Debug, Default)]
pub struct CaptureHealth {
    /// Frames seen.
    pub frames: AtomicU64,
    /// Frames that were not IP.
    pub not_ip: AtomicU64,
    /// Frames with truncated or inconsistent headers.
    pub malformed: AtomicU64,
    /// Packets the kernel or driver dropped before the backend read them (when known).
    pub kernel_dropped: AtomicU64,
}

impl CaptureHealth {
    /// Stores a run's counters.
    pub fn record(&self, s: &CaptureStats) {
        self.frames.store(s.parse.frames, Ordering::Relaxed);
        self.not_ip.store(s.parse.not_ip, Ordering::Relaxed);
        self.malformed.store(s.parse.malformed, Ordering::Relaxed);
        self.kernel_dropped.store(s.dropped, Ordering::Relaxed);
    }
}

impl<F: FnMut(Duration, TrafficRecord)> PacketSink for F {
    fn packet(&mut self, timestamp: Duration, record: TrafficRecord) {
        self(timestamp, record)
    }
}

/// Longest time a backend runs without calling [`PacketSink::flush`] (while running), in
/// milliseconds: records reach a buffering sink's consumer at most this long after the
/// backend read them.
pub const FLUSH_INTERVAL_MS: u64 = 100;

/// A live capture opened from [`CaptureConfig`].
pub trait CaptureBackend: Send {
    /// The backend's name, as written in `capture.backend`.
    fn name(&self) -> &'static str;

    /// Delivers packets to `sink` until `stop` is raised (checked at least every 100 ms, or
    /// every second and on a wake-up when it polls the sink's [`PacketSink::wake_fd`]) or a
    /// fatal error occurs; returns the frame counters.
    fn run(
        &mut self,
        sink: &mut dyn PacketSink,
        stop: &StopFlag,
    ) -> Result<CaptureStats, CaptureError>;
}

/// Counters of one capture run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Parser outcomes.
    pub parse: ParseStats,
    /// Packets the kernel or driver dropped before the backend could read them (when known).
    pub dropped: u64,
}

/// Tells a running backend to return; cheap to clone and share with other threads.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the backend to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once [`StopFlag::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Parses one frame, counts the outcome and hands a record to `sink`.
#[inline]
pub fn deliver(
    link: Option<LinkType>,
    timestamp: Duration,
    frame: &[u8],
    sink: &mut dyn PacketSink,
    stats: &mut ParseStats,
) {
    let Some(link) = link else {
        stats.frames += 1;
        stats.unsupported_link += 1;
        return;
    };
    // The common frames go straight to the sink (what `parse_frame` + `count` would do).
    if let Some(common) = parse::parse_common_packet(link, frame) {
        stats.frames += 1;
        stats.records += 1;
        match common {
            parse::Common::Ipv4(packet) => sink.ipv4_packet(timestamp, &packet),
            parse::Common::Ipv6(record) => sink.packet(timestamp, record),
        }
        return;
    }
    let outcome = parse::parse_frame_full(link, frame);
    stats.count(&outcome);
    if let Ok(decoded) = outcome {
        sink.packet(timestamp, decoded.record);
    }
}

/// Asks the CPU to start loading the cache line holding `address`: a hint that never faults,
/// whatever the address, and changes no result (a no-op off x86_64).
#[inline(always)]
pub(crate) fn prefetch_line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and never faults, even for an
    // address outside any allocation; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Why a capture could not be configured, opened or continued.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The `[capture]` section is inconsistent; the message names the key.
    #[error("{0}")]
    Config(String),
    /// The backend is not compiled in or not available on this platform.
    #[error("capture.backend = \"{backend}\": {reason}")]
    Unavailable {
        /// The backend named in the config.
        backend: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// A library the backend loads at run time is missing.
    #[error("capture.backend = \"{backend}\": cannot load {library}: {message}")]
    LibraryMissing {
        /// The backend.
        backend: &'static str,
        /// The library looked for.
        library: String,
        /// The loader's message.
        message: String,
    },
    /// An interface could not be opened or configured.
    #[error("{backend}: interface {interface}: {message}")]
    Open {
        /// The backend.
        backend: &'static str,
        /// The interface.
        interface: String,
        /// What failed.
        message: String,
    },
    /// Reading packets failed.
    #[error("{backend}: capture failed: {message}")]
    Read {
        /// The backend.
        backend: &'static str,
        /// What failed.
        message: String,
    },
}

/// Which capture backend feeds the accounting.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The XDP program (Linux only; not a userspace backend).
    #[default]
    Xdp,
    /// libpcap live capture.
    Pcap,
    /// netmap (FreeBSD; Linux with the out-of-tree module).
    Netmap,
    /// PF_RING (Linux; libpfring loaded at run time).
    Pfring,
}

impl BackendKind {
    /// The name as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Xdp => "xdp",
            BackendKind::Pcap => "pcap",
            BackendKind::Netmap => "netmap",
            BackendKind::Pfring => "pfring",
        }
    }

    /// Why this backend cannot be used in this build on this platform, if it cannot.
    pub fn unavailable_reason(&self) -> Option<String> {
        let os = platform_name();
        match self {
            BackendKind::Xdp if !cfg!(target_os = "linux") => Some(format!(
                "XDP is not available on {os} (use \"pcap\" or \"netmap\")"
            )),
            BackendKind::Pcap if !cfg!(feature = "pcap") => {
                Some("not compiled in (enable the `pcap` cargo feature)".into())
            }
            BackendKind::Netmap if !cfg!(any(target_os = "linux", target_os = "freebsd")) => {
                Some(format!("netmap is not available on {os}"))
            }
            BackendKind::Netmap if !cfg!(feature = "netmap") => {
                Some("not compiled in (enable the `netmap` cargo feature)".into())
            }
            BackendKind::Pfring if !cfg!(target_os = "linux") => {
                Some(format!("PF_RING is not available on {os}"))
            }
            BackendKind::Pfring if !cfg!(feature = "pfring") => {
                Some("not compiled in (enable the `pfring` cargo feature)".into())
            }
            _ => None,
        }
    }
}

fn platform_name() -> &'static str {
    match std::env::consts::OS {
        "macos" => "macOS",
        "freebsd" => "FreeBSD",
        "linux" => "Linux",
        other => other,
    }
}

/// Default snap length: enough for Ethernet, two VLAN tags, MPLS, a tunnel and the inner
/// IPv6 + extension headers + TCP header.
pub const DEFAULT_SNAPLEN: u32 = 256;
/// Smallest snap length accepted (Ethernet + IPv6 + TCP without options, plus some slack).
pub const MIN_SNAPLEN: u32 = 96;
/// Largest snap length accepted.
pub const MAX_SNAPLEN: u32 = 262_144;

/// `[capture]`: where packets come from when they are not counted by XDP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// `"xdp"`, `"pcap"`, `"netmap"` or `"pfring"`. Default: `"xdp"`.
    #[serde(default)]
    pub backend: BackendKind,
    /// Interfaces to capture on (userspace backends). Default: empty (must be set for them).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Put the interfaces in promiscuous mode (needed for mirror/SPAN ports). Default: `true`.
    #[serde(default = "default_true")]
    pub promiscuous: bool,
    /// A BPF filter expression (pcap and pfring only), e.g. `"not port 22"`. Default: none.
    #[serde(default)]
    pub bpf_filter: Option<String>,
    /// Bytes kept of each packet: headers only, including tunnels. Default: `256`
    /// (allowed 96..=262144).
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
    /// libpcap knobs.
    #[serde(default)]
    pub pcap: PcapOptions,
    /// netmap knobs.
    #[serde(default)]
    pub netmap: NetmapOptions,
    /// PF_RING knobs.
    #[serde(default)]
    pub pfring: PfringOptions,
    /// Each captured packet counts as this many (a mirror port fed through a 1-in-N sampler):
    /// packets, bytes, SYN packets and fragments are multiplied before they reach the
    /// accounting; new flows are not (each 5-tuple seen is one flow). Every userspace backend
    /// (pcap, netmap, PF_RING): the capture thread's batcher, which each of them delivers to,
    /// multiplies. Default: `1` (allowed 1..=1000000).
    #[serde(default = "default_sampling_rate")]
    pub sampling_rate: u32,
    /// Capture threads. Above 1 (`pcap` on Linux only), every interface is opened once per
    /// thread and the sockets join an AF_PACKET fanout group (`PACKET_FANOUT_HASH`): the kernel
    /// spreads packets over the threads by flow hash, each packet to exactly one of them.
    /// Default: `1` (allowed 1..=64).
    #[serde(default = "default_threads")]
    pub threads: u32,
    /// AF_PACKET fanout group id of the first interface (the next interfaces take the next
    /// ids) when `threads` is above 1; ids are shared by every process of the network
    /// namespace, so two agents capturing there need different ones. Default: derived from the
    /// process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout_group: Option<u16>,
}

/// Largest `capture.sampling_rate`.
pub const MAX_SAMPLING_RATE: u32 = 1_000_000;
/// Largest `capture.threads`.
pub const MAX_THREADS: u32 = 64;

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::default(),
            interfaces: Vec::new(),
            promiscuous: true,
            bpf_filter: None,
            snaplen: DEFAULT_SNAPLEN,
            pcap: PcapOptions::default(),
            netmap: NetmapOptions::default(),
            pfring: PfringOptions::default(),
            sampling_rate: default_sampling_rate(),
            threads: default_threads(),
            fanout_group: None,
        }
    }
}

/// `[capture.pcap]`: libpcap knobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PcapOptions {
    /// Kernel capture buffer per interface, in bytes. Default: `16777216` (16 MiB).
    #[serde(default = "default_pcap_buffer")]
    pub buffer_size: u32,
    /// Deliver every packet as it arrives (one wake-up of the capture thread per packet)
    /// instead of in kernel-buffered blocks. Default: `false`: blocks are handed over when full
    /// or after the libpcap buffer timeout of 100 ms, at a fraction of the CPU per packet, and
    /// read a few at a time (see [`pcap_live::MAX_PACED_WAIT`]); the agent coalesces each
    /// 5-tuple until just before the next accounting tick, so a packet counts in the poll slot
    /// in which the kernel handed it over (at most about 100 ms after capture).
    #[serde(default)]
    pub immediate: bool,
}

impl Default for PcapOptions {
    fn default() -> Self {
        Self {
            buffer_size: default_pcap_buffer(),
            immediate: false,
        }
    }
}

/// `[capture.netmap]`: netmap knobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetmapOptions {
    /// The netmap control device. Default: `"/dev/netmap"`.
    #[serde(default = "default_netmap_device")]
    pub device: PathBuf,
    /// Also read the host-stack rings (packets the host sends or receives through the
    /// interface in netmap mode). Default: `false` (NIC rings only).
    #[serde(default)]
    pub host_rings: bool,
}

impl Default for NetmapOptions {
    fn default() -> Self {
        Self {
            device: default_netmap_device(),
            host_rings: false,
        }
    }
}

/// `[capture.pfring]`: PF_RING knobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PfringOptions {
    /// The PF_RING library loaded at start. Default: `"libpfring.so"` (then `libpfring.so.1`
    /// and `libpfring.so.8` are tried).
    #[serde(default = "default_pfring_library")]
    pub library: String,
}

impl Default for PfringOptions {
    fn default() -> Self {
        Self {
            library: default_pfring_library(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_sampling_rate() -> u32 {
    1
}
fn default_threads() -> u32 {
    1
}
fn default_snaplen() -> u32 {
    DEFAULT_SNAPLEN
}
fn default_pcap_buffer() -> u32 {
    16 * 1024 * 1024
}
fn default_netmap_device() -> PathBuf {
    PathBuf::from("/dev/netmap")
}
fn default_pfring_library() -> String {
    "libpfring.so".into()
}

impl CaptureConfig {
    /// Checks that the backend exists in this build on this platform and the knobs make sense.
    pub fn validate(&self) -> Result<(), CaptureError> {
        let backend = self.backend.as_str();
        if let Some(reason) = self.backend.unavailable_reason() {
            return Err(CaptureError::Unavailable { backend, reason });
        }
        if self.backend == BackendKind::Xdp {
            return Ok(());
        }
        if self.interfaces.is_empty() {
            return Err(CaptureError::Config(format!(
                "capture.interfaces: empty, but capture.backend = \"{backend}\" needs at least one interface"
            )));
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 63 || name.contains(['\0', ' ', '/']) {
                return Err(CaptureError::Config(format!(
                    "capture.interfaces[{i}] = {name:?}: not an interface name"
                )));
            }
            if self.interfaces[..i].contains(name) {
                return Err(CaptureError::Config(format!(
                    "capture.interfaces: {name:?} is listed twice"
                )));
            }
        }
        if !(MIN_SNAPLEN..=MAX_SNAPLEN).contains(&self.snaplen) {
            return Err(CaptureError::Config(format!(
                "capture.snaplen = {}: must be between {MIN_SNAPLEN} and {MAX_SNAPLEN}",
                self.snaplen
            )));
        }
        if !(1..=MAX_SAMPLING_RATE).contains(&self.sampling_rate) {
            return Err(CaptureError::Config(format!(
                "capture.sampling_rate = {}: must be between 1 and {MAX_SAMPLING_RATE}",
                self.sampling_rate
            )));
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(CaptureError::Config(format!(
                "capture.threads = {}: must be between 1 and {MAX_THREADS}",
                self.threads
            )));
        }
        if self.threads > 1 && (self.backend != BackendKind::Pcap || !cfg!(target_os = "linux")) {
            return Err(CaptureError::Config(format!(
                "capture.threads = {}: several capture threads need AF_PACKET fanout, \
                 capture.backend = \"pcap\" on Linux",
                self.threads
            )));
        }
        if self.backend == BackendKind::Netmap && self.bpf_filter.is_some() {
            return Err(CaptureError::Config(
                "capture.bpf_filter: not supported by capture.backend = \"netmap\"".into(),
            ));
        }
        if let Some(filter) = &self.bpf_filter {
            if filter.contains('\0') {
                return Err(CaptureError::Config(
                    "capture.bpf_filter: contains a NUL byte".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Opens the configured userspace backend (after [`CaptureConfig::validate`]). `xdp` is not a
/// userspace backend and is refused here.
pub fn open(config: &CaptureConfig) -> Result<Box<dyn CaptureBackend>, CaptureError> {
    open_in_group(config, None)
}

/// The AF_PACKET fanout group of `config` (`capture.fanout_group`, else derived from the
/// process id), when it asks for several capture threads.
pub fn fanout_group(config: &CaptureConfig) -> Option<u16> {
    (config.threads > 1).then(|| {
        config
            .fanout_group
            .unwrap_or_else(|| (std::process::id() as u16) | 0x8000)
    })
}

/// Opens the configured backend, its sockets joining AF_PACKET fanout group `fanout` (the
/// first interface's; the next ones take the next ids) when given (`pcap` on Linux only).
pub fn open_in_group(
    config: &CaptureConfig,
    fanout: Option<u16>,
) -> Result<Box<dyn CaptureBackend>, CaptureError> {
    config.validate()?;
    if fanout.is_some() && config.backend != BackendKind::Pcap {
        return Err(CaptureError::Config(
            "AF_PACKET fanout needs capture.backend = \"pcap\"".into(),
        ));
    }
    match config.backend {
        BackendKind::Xdp => Err(CaptureError::Config(
            "capture.backend = \"xdp\" is handled by the XDP data plane, not a capture backend"
                .into(),
        )),
        #[cfg(feature = "pcap")]
        BackendKind::Pcap => Ok(Box::new(pcap_live::PcapBackend::open_in_group(
            config, fanout,
        )?)),
        #[cfg(all(feature = "netmap", any(target_os = "linux", target_os = "freebsd")))]
        BackendKind::Netmap => Ok(Box::new(netmap::NetmapBackend::open(config)?)),
        #[cfg(all(feature = "pfring", target_os = "linux"))]
        BackendKind::Pfring => Ok(Box::new(pfring::PfringBackend::open(config)?)),
        #[allow(unreachable_patterns)]
        other => Err(CaptureError::Unavailable {
            backend: other.as_str(),
            reason: "not available in this build".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> CaptureConfig {
        toml::from_str(toml_text).expect("valid [capture] section")
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = parse("");
        assert_eq!(c, CaptureConfig::default());
        assert_eq!(c.backend, BackendKind::Xdp);
        assert!(c.promiscuous);
        assert_eq!(c.snaplen, 256);
        assert_eq!(c.bpf_filter, None);
        assert_eq!(c.pcap.buffer_size, 16 * 1024 * 1024);
        assert!(!c.pcap.immediate);
        assert_eq!(c.netmap.device, PathBuf::from("/dev/netmap"));
        assert_eq!(c.pfring.library, "libpfring.so");
        assert_eq!((c.sampling_rate, c.threads, c.fanout_group), (1, 1, None));
    }

    #[test]
    fn sampling_rate_and_threads_are_bounded() {
        for (extra, want) in [
            ("sampling_rate = 0", "capture.sampling_rate = 0"),
            ("sampling_rate = 1000001", "capture.sampling_rate = 1000001"),
            ("threads = 0", "capture.threads = 0"),
            ("threads = 65", "capture.threads = 65"),
        ] {
            let c = parse(&format!(
                "backend = \"pcap\"\ninterfaces = [\"eth0\"]\n{extra}"
            ));
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
        let c = parse("backend = \"netmap\"\ninterfaces = [\"eth0\"]\nthreads = 2");
        if c.backend.unavailable_reason().is_none() {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("AF_PACKET fanout"), "{err}");
        }
        let c =
            parse("backend = \"pcap\"\ninterfaces = [\"eth0\"]\nthreads = 4\nsampling_rate = 1000");
        if cfg!(all(feature = "pcap", target_os = "linux")) {
            assert!(c.validate().is_ok());
            assert_eq!(
                fanout_group(&parse("threads = 2\nfanout_group = 7")),
                Some(7)
            );
            assert_eq!(fanout_group(&parse("")), None);
        }
    }

    #[test]
    fn unknown_backend_and_keys_are_rejected() {
        let err = toml::from_str::<CaptureConfig>("backend = \"dpdk\"").unwrap_err();
        assert!(err.to_string().contains("unknown variant `dpdk`"), "{err}");
        let err = toml::from_str::<CaptureConfig>("snap_len = 10").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `snap_len`"),
            "{err}"
        );
    }

    #[test]
    fn userspace_backend_needs_interfaces_and_sane_snaplen() {
        let c = parse("backend = \"pcap\"");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("capture.interfaces: empty"), "{err}");
        let c = parse("backend = \"pcap\"\ninterfaces = [\"eth0\"]\nsnaplen = 20");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("capture.snaplen = 20"), "{err}");
        let c = parse("backend = \"pcap\"\ninterfaces = [\"eth0\", \"eth0\"]");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn unavailable_backends_name_the_fix() {
        for (backend, feature_on) in [
            ("netmap", cfg!(feature = "netmap")),
            ("pfring", cfg!(feature = "pfring")),
            ("pcap", cfg!(feature = "pcap")),
        ] {
            let c = parse(&format!("backend = \"{backend}\"\ninterfaces = [\"eth0\"]"));
            let result = c.validate();
            if feature_on {
                assert!(result.is_ok(), "{backend}: {result:?}");
            } else {
                let err = result.unwrap_err().to_string();
                assert_eq!(
                    err,
                    format!(
                        "capture.backend = \"{backend}\": not compiled in (enable the `{backend}` cargo feature)"
                    )
                );
            }
        }
    }

    #[cfg(feature = "netmap")]
    #[test]
    fn netmap_refuses_bpf_filter() {
        let c = parse("backend = \"netmap\"\ninterfaces = [\"em0\"]\nbpf_filter = \"udp\"");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
