//! The one record every traffic source hands to the accounting: a packet or a flow.

use std::net::IpAddr;

/// Where traffic was observed; the `source` label of the traffic metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The XDP program.
    Xdp,
    /// sFlow v5 samples.
    Sflow,
    /// NetFlow v5/v9 and IPFIX records.
    Netflow,
    /// Live userspace capture (libpcap, netmap, PF_RING).
    Pcap,
    /// Offline replay of a capture file.
    Replay,
    /// Other agents' host counters, read from Kafka by an aggregator (`[cluster] role`).
    Fleet,
}

impl Source {
    /// Every source, in [`Source::index`] order.
    pub const ALL: [Source; 6] = [
        Source::Xdp,
        Source::Sflow,
        Source::Netflow,
        Source::Pcap,
        Source::Replay,
        Source::Fleet,
    ];

    /// Position in [`Source::ALL`], for fixed-size tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value used in metrics and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Xdp => "xdp",
            Source::Sflow => "sflow",
            Source::Netflow => "netflow",
            Source::Pcap => "pcap",
            Source::Replay => "replay",
            Source::Fleet => "fleet",
        }
    }
}

/// Records `..end` of a batch (from where the previous span ended) came from `exporter`, the
/// UDP source address of a flow exporter: the accounting charges the hosts they bring in to
/// that exporter's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExporterSpan {
    /// One past the last record of the span.
    pub end: usize,
    /// The exporter.
    pub exporter: IpAddr,
}

/// One observation: a single packet (`packets == 1`) from a capture, or a flow record / sample
/// already scaled by its sampling rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficRecord {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    /// Source port (ICMP: type; 0 when unknown).
    pub src_port: u16,
    /// Destination port (ICMP: code; 0 when unknown).
    pub dst_port: u16,
    /// TCP flags seen (OR of all packets for a flow record; 0 when unknown).
    pub tcp_flags: u8,
    /// Packets (scaled by sampling).
    pub packets: u64,
    /// IP bytes (scaled by sampling): IPv4 total length, IPv6 payload length + 40.
    pub bytes: u64,
    /// Packets among `packets` that were IP fragments.
    pub fragments: u64,
    /// Packets among `packets` that were TCP SYN without ACK. For flow records that only carry
    /// the OR of flags this is `packets` when SYN is set and ACK is not, else 0.
    pub tcp_syn_packets: u64,
    /// IPv4 TTL / IPv6 hop limit when known (0 otherwise).
    pub ttl: u8,
    /// How many seconds the record spans (0 for a packet or an instantaneous sample). The
    /// accounting spreads a record's packets and bytes evenly over this many seconds.
    pub duration_ms: u64,
}

impl TrafficRecord {
    /// A single packet with nothing but addresses, protocol and IP length known; fill the rest
    /// with struct update syntax.
    pub fn packet(src: IpAddr, dst: IpAddr, protocol: u8, ip_len: u64) -> Self {
        Self {
            src,
            dst,
            protocol,
            src_port: 0,
            dst_port: 0,
            tcp_flags: 0,
            packets: 1,
            bytes: ip_len,
            fragments: 0,
            tcp_syn_packets: 0,
            ttl: 0,
            duration_ms: 0,
        }
    }

    /// True when the flags say TCP SYN without ACK.
    pub fn is_syn(&self) -> bool {
        is_tcp_syn(self.protocol, self.tcp_flags)
    }
}

/// True for a TCP packet (protocol 6) whose flags have SYN set and ACK clear.
#[inline]
pub fn is_tcp_syn(protocol: u8, tcp_flags: u8) -> bool {
    protocol == 6 && tcp_flags & 0x12 == 0x02
}
