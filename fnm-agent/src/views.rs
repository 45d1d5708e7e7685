//! JSON views of the accounting, shared by the HTTP API, the CLI and `replay --json`.

use crate::accounting::{DirView, Host};
use fnm_common::proto;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Packets and bytes of one protocol class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProtocolView {
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub bytes: u64,
}

/// One direction of a host: cumulative counters and current rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionView {
    /// Packets since start.
    pub packets: u64,
    /// IP bytes since start.
    pub bytes: u64,
    /// New flows since start.
    pub flows: u64,
    /// TCP.
    pub tcp: ProtocolView,
    /// UDP.
    pub udp: ProtocolView,
    /// ICMP / ICMPv6.
    pub icmp: ProtocolView,
    /// Any other protocol.
    pub other: ProtocolView,
    /// TCP SYN-without-ACK packets since start.
    pub tcp_syn_packets: u64,
    /// Fragments since start.
    pub fragments: u64,
    /// Packets since start from (incoming) or to (outgoing) a whitelisted source
    /// (`[detection] whitelist_sources`), counted apart by XDP: in none of the counters or
    /// rates here. Flow and capture sources leave such traffic out of the host altogether.
    #[serde(default)]
    pub whitelisted_packets: u64,
    /// IP bytes of those packets.
    #[serde(default)]
    pub whitelisted_bytes: u64,
    /// Packets per second, last window.
    pub pps: f64,
    /// IP bytes per second, last window.
    pub bytes_per_second: f64,
    /// IP bits per second, last window (`bytes_per_second` × 8).
    #[serde(default)]
    pub bits_per_second: f64,
    /// New flows per second, last window.
    pub flows_per_second: f64,
    /// TCP packets per second, last window.
    #[serde(default)]
    pub tcp_pps: f64,
    /// UDP packets per second, last window.
    #[serde(default)]
    pub udp_pps: f64,
    /// ICMP packets per second, last window.
    #[serde(default)]
    pub icmp_pps: f64,
    /// Conversations counted since start (each time a TCP or UDP conversation entered the
    /// rate window), while a threshold uses `conversations_per_second`.
    #[serde(default)]
    pub conversations: u64,
    /// Distinct TCP and UDP conversations per second, last window (FastNetMon's "flows"; 0
    /// unless a threshold uses it).
    #[serde(default)]
    pub conversations_per_second: f64,
}

impl From<DirView<'_>> for DirectionView {
    fn from(d: DirView<'_>) -> Self {
        let t = d.total();
        let rates = d.rates();
        let whitelisted = d.whitelisted();
        let p = |k: usize| ProtocolView {
            packets: t.proto_packets[k],
            bytes: t.proto_bytes[k],
        };
        Self {
            packets: t.packets,
            bytes: t.bytes,
            flows: t.flows,
            tcp: p(proto::TCP),
            udp: p(proto::UDP),
            icmp: p(proto::ICMP),
            other: p(proto::OTHER),
            tcp_syn_packets: t.tcp_syn_packets,
            fragments: t.fragments,
            whitelisted_packets: whitelisted.packets,
            whitelisted_bytes: whitelisted.bytes,
            pps: rates.pps,
            bytes_per_second: rates.bytes_per_second,
            bits_per_second: rates.bytes_per_second * 8.0,
            flows_per_second: rates.flows_per_second,
            tcp_pps: rates.tcp_pps,
            udp_pps: rates.udp_pps,
            icmp_pps: rates.icmp_pps,
            conversations: d.conversations(),
            conversations_per_second: rates.conversations_per_second,
        }
    }
}

/// A host with both directions, as `GET /api/v1/hosts/{ip}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    /// The local address.
    pub ip: IpAddr,
    /// Traffic towards it.
    pub incoming: DirectionView,
    /// Traffic from it.
    pub outgoing: DirectionView,
}

impl HostView {
    /// The view of one host.
    pub fn new(ip: IpAddr, host: &Host) -> Self {
        Self {
            ip,
            incoming: host.dirs()[0].into(),
            outgoing: host.dirs()[1].into(),
        }
    }
}
