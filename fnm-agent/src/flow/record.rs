//! The decoded NetFlow/IPFIX record and its conversion into a [`TrafficRecord`].

use std::net::IpAddr;

use crate::traffic::TrafficRecord;

use super::MAX_FLOW_DURATION_MS;

/// Whether a record came from a data template or an options template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordKind {
    /// A flow record (data template).
    #[default]
    Flow,
    /// An options-data record (sampling, interface or application tables, statistics). Never
    /// converted into traffic.
    Options,
}

/// One decoded NetFlow v5/v9 or IPFIX record, unscaled (raw counters as exported).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowRecord {
    /// Flow or options record.
    pub kind: RecordKind,
    /// The template (or, for v5, 0) the record was decoded with.
    pub template_id: u16,
    /// Source address when present and well formed.
    pub src_addr: Option<IpAddr>,
    /// Destination address when present and well formed.
    pub dst_addr: Option<IpAddr>,
    /// IP protocol number (0 when unknown).
    pub protocol: u8,
    /// Source port (ICMP: type).
    pub src_port: u16,
    /// Destination port (ICMP: code).
    pub dst_port: u16,
    /// OR of the TCP flags.
    pub tcp_flags: u8,
    /// Type of service / traffic class.
    pub tos: u8,
    /// TTL (IPFIX ipTTL or minimumTTL; 0 when unknown).
    pub ttl: u8,
    /// Packets as exported (not scaled).
    pub packets: u64,
    /// Bytes as exported (not scaled).
    pub bytes: u64,
    /// Input interface index.
    pub input_ifindex: u32,
    /// Output interface index.
    pub output_ifindex: u32,
    /// Source AS.
    pub src_as: u32,
    /// Destination AS.
    pub dst_as: u32,
    /// Source VLAN.
    pub src_vlan: u16,
    /// Destination VLAN.
    pub dst_vlan: u16,
    /// Flow start in milliseconds on the record's own time base (system uptime or Unix time).
    pub start_ms: Option<u64>,
    /// Flow end in milliseconds on the same time base as `start_ms`.
    pub end_ms: Option<u64>,
    /// True when the record says its packets were IP fragments (IPFIX fragmentFlags).
    pub fragmented: bool,
    /// Sampler id the record names (v9 FLOW_SAMPLER_ID 48, IPFIX selectorId 302), 0 if none.
    pub sampler_id: u64,
    /// Sampling rate that applies to the record (1 in N), 0 when the exporter announced none.
    pub sampling_rate: u32,
}

impl FlowRecord {
    /// The record's duration: `end - start` capped at [`MAX_FLOW_DURATION_MS`]; 0 when either
    /// timestamp is missing or the end precedes the start.
    pub fn duration_ms(&self) -> u64 {
        match (self.start_ms, self.end_ms) {
            (Some(start), Some(end)) if end >= start => (end - start).min(MAX_FLOW_DURATION_MS),
            _ => 0,
        }
    }

    /// Converts a flow record into traffic scaled by its sampling rate (or
    /// `default_sampling_rate` when it has none; 0 counts as 1). Options records and records
    /// without both addresses give `None`.
    pub fn to_traffic(&self, default_sampling_rate: u32) -> Option<TrafficRecord> {
        if self.kind != RecordKind::Flow {
            return None;
        }
        let (src, dst) = (self.src_addr?, self.dst_addr?);
        let rate = u64::from(effective_rate(self.sampling_rate, default_sampling_rate));
        let packets = self.packets.saturating_mul(rate);
        let mut record = TrafficRecord {
            src,
            dst,
            protocol: self.protocol,
            src_port: self.src_port,
            dst_port: self.dst_port,
            tcp_flags: self.tcp_flags,
            packets,
            bytes: self.bytes.saturating_mul(rate),
            fragments: if self.fragmented { packets } else { 0 },
            tcp_syn_packets: 0,
            ttl: self.ttl,
            duration_ms: self.duration_ms(),
        };
        if record.is_syn() {
            record.tcp_syn_packets = packets;
        }
        Some(record)
    }
}

/// The rate to apply: the announced one, else the default, never below 1.
#[inline]
pub(crate) fn effective_rate(announced: u32, default_sampling_rate: u32) -> u32 {
    if announced > 0 {
        announced
    } else {
        default_sampling_rate.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn tcp_record(flags: u8) -> FlowRecord {
        FlowRecord {
            src_addr: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            dst_addr: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            protocol: 6,
            tcp_flags: flags,
            packets: 3,
            bytes: 180,
            start_ms: Some(1_000),
            end_ms: Some(4_500),
            ..FlowRecord::default()
        }
    }

    #[test]
    fn scales_by_announced_rate_then_default() {
        let mut record = tcp_record(0x10);
        record.sampling_rate = 100;
        let traffic = record.to_traffic(7).expect("flow");
        assert_eq!((traffic.packets, traffic.bytes), (300, 18_000));
        record.sampling_rate = 0;
        let traffic = record.to_traffic(7).expect("flow");
        assert_eq!((traffic.packets, traffic.bytes), (21, 1_260));
        let traffic = record.to_traffic(0).expect("flow");
        assert_eq!((traffic.packets, traffic.bytes), (3, 180));
    }

    #[test]
    fn syn_without_ack_counts_every_packet() {
        assert_eq!(tcp_record(0x02).to_traffic(1).unwrap().tcp_syn_packets, 3);
        assert_eq!(tcp_record(0x12).to_traffic(1).unwrap().tcp_syn_packets, 0);
    }

    #[test]
    fn duration_is_capped_and_never_negative() {
        assert_eq!(tcp_record(0).duration_ms(), 3_500);
        let mut record = tcp_record(0);
        record.end_ms = Some(10);
        assert_eq!(record.duration_ms(), 0);
        record.end_ms = Some(u64::MAX);
        assert_eq!(record.duration_ms(), MAX_FLOW_DURATION_MS);
        record.start_ms = None;
        assert_eq!(record.duration_ms(), 0);
    }

    #[test]
    fn options_and_addressless_records_are_not_traffic() {
        let mut record = tcp_record(0);
        record.kind = RecordKind::Options;
        assert!(record.to_traffic(1).is_none());
        let mut record = tcp_record(0);
        record.src_addr = None;
        assert!(record.to_traffic(1).is_none());
    }
}
