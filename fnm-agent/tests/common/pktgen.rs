//! Crafted traffic for the detection matrix: packet descriptions, the Ethernet frames they
//! become, and a paced scheduler that feeds many streams at once to sinks (an `AF_PACKET`
//! socket on a veth end here; sFlow, NetFlow and IPFIX exporters in `exporters.rs`). Every sink
//! keeps, per target host, what the agent should count from what it actually sent.
#![allow(dead_code)]

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// What sits above IP in a crafted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// A UDP datagram.
    Udp,
    /// A TCP segment with only ACK set (never a SYN).
    TcpAck,
    /// A TCP SYN (no ACK).
    TcpSyn,
    /// An ICMP echo request (ICMPv6 echo request over IPv6).
    Icmp,
    /// ESP (IP protocol 50): a protocol of the `other` class that no parser looks into.
    Esp,
    /// Fragments of a UDP datagram: first fragments (UDP header, MF set) alternating with
    /// middle fragments (no L4 header, MF set, offset 480 bytes).
    UdpFragment,
}

/// Which part of a fragmented datagram a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// Not a fragment.
    No,
    /// Offset 0, more fragments follow: carries the L4 header.
    First,
    /// Offset 480 bytes, more fragments follow: no L4 header.
    Middle,
}

/// Byte offset of [`Fragment::Middle`] packets (a multiple of 8).
pub const MIDDLE_OFFSET: u16 = 480;

/// One crafted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pkt {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (after any IPv6 fragment header).
    pub protocol: u8,
    /// Source port (ICMP: type).
    pub src_port: u16,
    /// Destination port (ICMP: code).
    pub dst_port: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// IP bytes: IPv4 total length, IPv6 payload length + 40.
    pub ip_len: u16,
    /// Fragment position.
    pub fragment: Fragment,
    /// IP identification of the datagram a fragment belongs to.
    pub frag_id: u32,
}

/// Protocol class of the agent's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
    /// Anything else.
    Other,
}

impl Pkt {
    /// The 5-tuple every parser sees: a middle fragment has no ports.
    pub fn tuple(&self) -> (IpAddr, IpAddr, u16, u16, u8) {
        let (sport, dport) = if self.fragment == Fragment::Middle {
            (0, 0)
        } else {
            (self.src_port, self.dst_port)
        };
        (self.src, self.dst, sport, dport, self.protocol)
    }

    /// TCP SYN without ACK.
    pub fn is_syn(&self) -> bool {
        self.protocol == 6 && self.tcp_flags & 0x12 == 0x02
    }

    /// Its protocol class.
    pub fn class(&self) -> Class {
        match self.protocol {
            6 => Class::Tcp,
            17 => Class::Udp,
            1 | 58 => Class::Icmp,
            _ => Class::Other,
        }
    }

    /// True when one of the fragments of a datagram.
    pub fn is_fragment(&self) -> bool {
        self.fragment != Fragment::No
    }
}

/// The shape of a stream: protocols taken in turn, IP size, and whether every packet opens a new
/// 5-tuple (spoofed sources) or the stream stays one flow per protocol.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Protocols, packet `i` uses `mix[i % len]`.
    pub mix: &'static [L4],
    /// IP bytes of every packet.
    pub ip_len: u16,
    /// A new remote address and port for every packet of a protocol.
    pub distinct: bool,
}

/// One stream: a shape between a local host and remote addresses of its own block.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    /// The shape.
    pub shape: Shape,
    /// The local host (destination when incoming, source when outgoing).
    pub local: IpAddr,
    /// Traffic from the local host rather than to it.
    pub outgoing: bool,
    /// Index of the block of remote addresses this stream uses (below [`REMOTE_BLOCKS`]).
    pub remote_block: u32,
}

/// Number of remote address blocks.
pub const REMOTE_BLOCKS: u32 = 512;
/// Remote addresses per block (IPv4: 100.64.0.0/10 cut in /19s).
const BLOCK_SIZE: u32 = 8192;
/// Port of the local side.
const LOCAL_PORT_UDP: u16 = 7777;
const LOCAL_PORT_TCP: u16 = 8080;
/// Remote port of a stream that stays one flow.
const REMOTE_PORT: u16 = 40000;

/// Remote address `j` of `block` in the family of `like`.
pub fn remote(like: IpAddr, block: u32, j: u64) -> IpAddr {
    assert!(block < REMOTE_BLOCKS, "remote block {block} out of range");
    match like {
        IpAddr::V4(_) => {
            let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
            IpAddr::V4(Ipv4Addr::from(
                base + block * BLOCK_SIZE + (j % u64::from(BLOCK_SIZE)) as u32,
            ))
        }
        IpAddr::V6(_) => {
            let n = j + 1;
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xff,
                block as u16,
                (n >> 48) as u16,
                (n >> 32) as u16,
                (n >> 16) as u16,
                n as u16,
            ))
        }
    }
}

/// Packet `i` of a stream.
pub fn packet(spec: &StreamSpec, i: u64) -> Pkt {
    let mix = spec.shape.mix;
    let l4 = mix[(i % mix.len() as u64) as usize];
    let j = i / mix.len() as u64;
    let v6 = spec.local.is_ipv6();
    let far = remote(
        spec.local,
        spec.remote_block,
        if spec.shape.distinct { j } else { 0 },
    );
    let far_port = if spec.shape.distinct {
        // 10000..60000: clear of the ports the capture parser decapsulates (L2TP 1701).
        10_000 + (j % 50_000) as u16
    } else {
        REMOTE_PORT
    };
    let (protocol, local_port, tcp_flags) = match l4 {
        L4::Udp | L4::UdpFragment => (17, LOCAL_PORT_UDP, 0),
        L4::TcpAck => (6, LOCAL_PORT_TCP, 0x10),
        L4::TcpSyn => (6, LOCAL_PORT_TCP, 0x02),
        L4::Icmp => (if v6 { 58 } else { 1 }, 0, 0),
        L4::Esp => (50, 0, 0),
    };
    let fragment = match l4 {
        L4::UdpFragment if j.is_multiple_of(2) => Fragment::First,
        L4::UdpFragment => Fragment::Middle,
        _ => Fragment::No,
    };
    let (src, dst, mut src_port, mut dst_port) = if spec.outgoing {
        (spec.local, far, local_port, far_port)
    } else {
        (far, spec.local, far_port, local_port)
    };
    match l4 {
        // ICMP: "ports" are type and code, as every parser reports them.
        L4::Icmp => {
            src_port = if v6 { 128 } else { 8 };
            dst_port = 0;
        }
        L4::Esp => {
            src_port = 0;
            dst_port = 0;
        }
        _ => {}
    }
    Pkt {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        ip_len: spec.shape.ip_len,
        fragment,
        frag_id: (j / 2) as u32,
    }
}

/// MAC of the agent's veth end (as `NetnsPair` sets it) and of the sender's.
pub const AGENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// The Ethernet frame of `p` (no FCS). IPv4 gets a valid header checksum; L4 checksums are
/// left at zero (the frames are counted, never delivered to a socket).
pub fn frame(p: &Pkt) -> Vec<u8> {
    let v6 = p.src.is_ipv6();
    let ip_header = if v6 { 40 } else { 20 };
    let frag_header = if v6 && p.is_fragment() { 8 } else { 0 };
    let l4_header = if p.fragment == Fragment::Middle {
        0
    } else {
        match p.protocol {
            17 | 1 | 58 | 50 => 8,
            6 => 20,
            _ => 0,
        }
    };
    let total = usize::from(p.ip_len);
    assert!(
        total >= ip_header + frag_header + l4_header,
        "{total} IP bytes cannot hold {p:?}"
    );
    let l4_len = total - ip_header - frag_header;
    let mut l4 = Vec::with_capacity(l4_len);
    if p.fragment != Fragment::Middle {
        match p.protocol {
            17 => {
                let udp_len = if p.fragment == Fragment::First {
                    l4_len + usize::from(MIDDLE_OFFSET)
                } else {
                    l4_len
                };
                l4.extend_from_slice(&p.src_port.to_be_bytes());
                l4.extend_from_slice(&p.dst_port.to_be_bytes());
                l4.extend_from_slice(&(udp_len as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            6 => {
                l4.extend_from_slice(&p.src_port.to_be_bytes());
                l4.extend_from_slice(&p.dst_port.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
                l4.extend_from_slice(&[0x50, p.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
            }
            1 | 58 => {
                l4.extend_from_slice(&[p.src_port as u8, p.dst_port as u8, 0, 0]);
                l4.extend_from_slice(&[0x12, 0x34, 0, 1]);
            }
            50 => l4.extend_from_slice(&[0, 0, 0x10, 0x01, 0, 0, 0, 1]),
            _ => {}
        }
    }
    l4.resize(l4_len, 0x5a);

    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&AGENT_MAC);
    f.extend_from_slice(&PEER_MAC);
    match (p.src, p.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let flags_offset: u16 = match p.fragment {
                Fragment::No => 0,
                Fragment::First => 0x2000,
                Fragment::Middle => 0x2000 | (MIDDLE_OFFSET / 8),
            };
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&p.ip_len.to_be_bytes());
            ip[4..6].copy_from_slice(&(p.frag_id as u16).to_be_bytes());
            ip[6..8].copy_from_slice(&flags_offset.to_be_bytes());
            ip[8] = 64;
            ip[9] = p.protocol;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let sum = super::frames::checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            f.extend_from_slice(&0x86DDu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((total - 40) as u16).to_be_bytes());
            f.push(if p.is_fragment() { 44 } else { p.protocol });
            f.push(64);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&dst.octets());
            if p.is_fragment() {
                let offset = if p.fragment == Fragment::Middle {
                    MIDDLE_OFFSET
                } else {
                    0
                };
                f.extend_from_slice(&[p.protocol, 0]);
                f.extend_from_slice(&(offset | 1).to_be_bytes()); // offset (multiple of 8) | M
                f.extend_from_slice(&p.frag_id.to_be_bytes());
            }
        }
        _ => panic!("mixed address families in {p:?}"),
    }
    f.extend_from_slice(&l4);
    debug_assert_eq!(f.len(), 14 + total);
    f
}

/// What the agent should count for one host (in the stream's direction), from what was sent.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub bytes: u64,
    /// Packets and bytes per class: TCP, UDP, ICMP, other.
    pub class_packets: [u64; 4],
    /// IP bytes per class.
    pub class_bytes: [u64; 4],
    /// TCP SYN-without-ACK packets.
    pub syn: u64,
    /// Fragments.
    pub fragments: u64,
    /// Distinct 5-tuples.
    pub tuples: HashSet<(IpAddr, IpAddr, u16, u16, u8)>,
}

impl Expect {
    /// Adds `p`, standing for `weight` packets (a sample's sampling rate).
    pub fn add(&mut self, p: &Pkt, weight: u64) {
        let class = p.class() as usize;
        self.packets += weight;
        self.bytes += weight * u64::from(p.ip_len);
        self.class_packets[class] += weight;
        self.class_bytes[class] += weight * u64::from(p.ip_len);
        if p.is_syn() {
            self.syn += weight;
        }
        if p.is_fragment() {
            self.fragments += weight;
        }
        self.tuples.insert(p.tuple());
    }

    /// Merges another host's expectations into this one.
    pub fn merge(&mut self, o: &Expect) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        for k in 0..4 {
            self.class_packets[k] += o.class_packets[k];
            self.class_bytes[k] += o.class_bytes[k];
        }
        self.syn += o.syn;
        self.fragments += o.fragments;
        self.tuples.extend(o.tuples.iter().copied());
    }
}

/// Where a stream's packets go. Sinks are created on the thread that runs the scheduler (in the
/// namespace they send from).
pub trait Sink {
    /// Queues packet `p` for local host number `host`.
    fn push(&mut self, host: usize, p: &Pkt);
    /// Sends what is due at `now` (called after every scheduler tick).
    fn flush(&mut self, now: Instant);
    /// Sends everything still queued.
    fn finish(&mut self);
    /// What was sent, per host.
    fn expected(&self) -> &HashMap<usize, Expect>;
}

/// One paced stream of the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    /// Local host number (the key of the sinks' expectations).
    pub host: usize,
    /// What it sends.
    pub spec: StreamSpec,
    /// Packets per second.
    pub rate: f64,
    /// Index of its sink.
    pub sink: usize,
    /// When it starts, from the start of the run.
    pub from: Duration,
    /// When it stops.
    pub until: Duration,
}

impl Stream {
    /// How long it runs.
    pub fn length(&self) -> Duration {
        self.until.saturating_sub(self.from)
    }
}

/// What the scheduler did for one stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamReport {
    /// Packets handed to the sink.
    pub sent: u64,
    /// Packets skipped because the scheduler fell behind by more than [`MAX_LAG`].
    pub skipped: u64,
}

/// The scheduler's tick.
const TICK: Duration = Duration::from_millis(1);
/// Longest backlog a stream catches up on after the scheduler was held up; anything older is
/// skipped, so no stretch of time sees more than its rate × (length + `MAX_LAG`) packets.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// Runs every stream at its rate from its `from` to its `until`, feeding `sinks`; returns
/// per-stream reports and the merged per-host expectations of all sinks.
pub fn run(
    streams: &[Stream],
    sinks: &mut [Box<dyn Sink>],
) -> (Vec<StreamReport>, HashMap<usize, Expect>) {
    let duration = streams.iter().map(|s| s.until).max().unwrap_or_default();
    let mut reports = vec![StreamReport::default(); streams.len()];
    let mut next = vec![0u64; streams.len()];
    let start = Instant::now();
    let mut tick_at = start;
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed >= duration {
            break;
        }
        for (k, s) in streams.iter().enumerate() {
            let running = elapsed.min(s.until).saturating_sub(s.from);
            let due = (running.as_secs_f64() * s.rate) as u64;
            let lag = ((MAX_LAG.as_secs_f64() * s.rate) as u64).max(1);
            if due > next[k] + lag {
                reports[k].skipped += due - lag - next[k];
                next[k] = due - lag;
            }
            while next[k] < due {
                sinks[s.sink].push(s.host, &packet(&s.spec, next[k]));
                next[k] += 1;
                reports[k].sent += 1;
            }
        }
        for sink in sinks.iter_mut() {
            sink.flush(now);
        }
        tick_at += TICK;
        let now = Instant::now();
        if tick_at > now {
            std::thread::sleep(tick_at - now);
        } else {
            tick_at = now;
        }
    }
    let mut expected: HashMap<usize, Expect> = HashMap::new();
    for sink in sinks.iter_mut() {
        sink.finish();
        for (host, e) in sink.expected() {
            expected.entry(*host).or_default().merge(e);
        }
    }
    (reports, expected)
}

/// Most frames one `sendmmsg` call sends.
const BATCH: usize = 256;

/// Frames out of a veth end through an `AF_PACKET` socket (qdisc bypassed), so they arrive on
/// the other end exactly as built. Frames the kernel refuses are retried, then left out of the
/// expectations and counted in `refused`.
pub struct FrameSink {
    fd: libc::c_int,
    pending: Vec<(usize, Pkt, Vec<u8>)>,
    expect: HashMap<usize, Expect>,
    /// Frames the kernel would not take.
    pub refused: u64,
}

impl FrameSink {
    /// Opens the socket on `dev`, in the calling thread's namespace.
    pub fn open(dev: &str) -> Self {
        // SAFETY: plain socket calls with valid arguments; the fd is closed on drop.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let name = std::ffi::CString::new(dev).expect("interface name");
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex > 0, "no interface {dev}");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind {dev}: {}", std::io::Error::last_os_error());
            let one: i32 = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const i32).cast(),
                4,
            );
            Self {
                fd,
                pending: Vec::new(),
                expect: HashMap::new(),
                refused: 0,
            }
        }
    }

    /// Sends `frames`; returns how many the kernel took (a prefix).
    fn send(&self, frames: &[(usize, Pkt, Vec<u8>)]) -> usize {
        let mut iov: Vec<libc::iovec> = frames
            .iter()
            .map(|(_, _, f)| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        // SAFETY: an all-zero mmsghdr is a valid empty message.
        let mut msgs: Vec<libc::mmsghdr> = (0..frames.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the headers point at iovecs over frames that outlive the call.
        let n = unsafe { libc::sendmmsg(self.fd, msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        n.max(0) as usize
    }
}

impl Sink for FrameSink {
    fn push(&mut self, host: usize, p: &Pkt) {
        self.pending.push((host, *p, frame(p)));
    }

    fn flush(&mut self, _now: Instant) {
        let pending = std::mem::take(&mut self.pending);
        let mut done = 0;
        let mut retries = 0;
        while done < pending.len() {
            let end = (done + BATCH).min(pending.len());
            let n = self.send(&pending[done..end]);
            for (host, p, _) in &pending[done..done + n] {
                self.expect.entry(*host).or_default().add(p, 1);
            }
            done += n;
            if n == 0 {
                retries += 1;
                if retries > 20 {
                    self.refused += (pending.len() - done) as u64;
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn finish(&mut self) {
        self.flush(Instant::now());
    }

    fn expected(&self) -> &HashMap<usize, Expect> {
        &self.expect
    }
}

impl Drop for FrameSink {
    fn drop(&mut self) {
        // SAFETY: closing our own fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Joins network namespace `ns` on the calling thread.
pub fn join_ns(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).expect("open netns");
    // SAFETY: setns on this thread only, with a valid namespace fd.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}
