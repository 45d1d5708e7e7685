//! The messages on the wire: one JSON object per Kafka message, keyed by the host's address
//! so that one partition holds all of a host's records. Their JSON Schemas are shipped in
//! `docs/kafka/`; a field is never renamed or given another meaning, only added.

use crate::{
    accounting::{Direction, Rates},
    detection::attack::Attack,
    mitigator::store::Mitigation,
};
use fnm_common::{proto, HostCounters};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Version of the records' layout, in every message (`v`).
pub const SCHEMA_VERSION: u32 = 1;

/// One host's counters in one direction over one poll slot (topic `<prefix>.hosts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// The agent that counted it (`[export] agent_id`).
    pub agent: String,
    /// The local host.
    pub host: IpAddr,
    /// `incoming` or `outgoing`.
    pub direction: Direction,
    /// End of the slot, ms since the UNIX epoch.
    pub end_unix_ms: u64,
    /// Length of the slot in ms.
    pub duration_ms: u64,
    /// Packets in the slot.
    pub packets: u64,
    /// IP bytes in the slot.
    pub bytes: u64,
    /// New flows in the slot.
    pub flows: u64,
    /// TCP packets.
    pub tcp_packets: u64,
    /// TCP bytes.
    pub tcp_bytes: u64,
    /// UDP packets.
    pub udp_packets: u64,
    /// UDP bytes.
    pub udp_bytes: u64,
    /// ICMP packets.
    pub icmp_packets: u64,
    /// ICMP bytes.
    pub icmp_bytes: u64,
    /// TCP SYN (without ACK) packets.
    pub tcp_syn_packets: u64,
    /// IP fragments.
    pub fragments: u64,
}

impl HostRecord {
    /// The record of `counters`, counted by `agent` in the slot that ended at `end_unix_ms`.
    pub fn new(
        agent: &str,
        host: IpAddr,
        direction: Direction,
        end_unix_ms: u64,
        duration_ms: u64,
        c: &HostCounters,
    ) -> Self {
        Self {
            v: SCHEMA_VERSION,
            agent: agent.to_string(),
            host,
            direction,
            end_unix_ms,
            duration_ms,
            packets: c.packets,
            bytes: c.bytes,
            flows: c.flows,
            tcp_packets: c.proto_packets[proto::TCP],
            tcp_bytes: c.proto_bytes[proto::TCP],
            udp_packets: c.proto_packets[proto::UDP],
            udp_bytes: c.proto_bytes[proto::UDP],
            icmp_packets: c.proto_packets[proto::ICMP],
            icmp_bytes: c.proto_bytes[proto::ICMP],
            tcp_syn_packets: c.tcp_syn_packets,
            fragments: c.fragments,
        }
    }

    /// The counters again (what an aggregator adds to its accounting).
    pub fn counters(&self) -> HostCounters {
        let mut c = HostCounters {
            packets: self.packets,
            bytes: self.bytes,
            flows: self.flows,
            tcp_syn_packets: self.tcp_syn_packets,
            fragments: self.fragments,
            ..Default::default()
        };
        for (class, packets, bytes) in [
            (proto::TCP, self.tcp_packets, self.tcp_bytes),
            (proto::UDP, self.udp_packets, self.udp_bytes),
            (proto::ICMP, self.icmp_packets, self.icmp_bytes),
        ] {
            c.proto_packets[class] = packets;
            c.proto_bytes[class] = bytes;
        }
        let classified: u64 = c.proto_packets.iter().sum();
        let classified_bytes: u64 = c.proto_bytes.iter().sum();
        c.proto_packets[proto::OTHER] = self.packets.saturating_sub(classified);
        c.proto_bytes[proto::OTHER] = self.bytes.saturating_sub(classified_bytes);
        c
    }
}

/// One sampled flow record as decoded (topic `<prefix>.flows`, keyed by its destination):
/// an sFlow sample, a NetFlow/IPFIX record or a captured packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowRecord {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// The agent that decoded it.
    pub agent: String,
    /// Which source: `sflow`, `netflow` (v5, v9 and IPFIX) or `pcap`.
    pub source: crate::traffic::Source,
    /// End of the poll slot it was counted in, ms since the UNIX epoch.
    pub end_unix_ms: u64,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Source port (ICMP: type; 0 unknown).
    pub src_port: u16,
    /// Destination port (ICMP: code; 0 unknown).
    pub dst_port: u16,
    /// TCP flags (OR over the flow; 0 unknown).
    pub tcp_flags: u8,
    /// Packets, scaled by the exporter's sampling.
    pub packets: u64,
    /// IP bytes, scaled by the exporter's sampling.
    pub bytes: u64,
    /// One record in this many was published (`[export] flow_sample_rate`): multiply by it
    /// for the agent's whole traffic.
    pub sample_rate: u32,
}

impl FlowRecord {
    /// The published form of `r`, decoded from `source`.
    pub fn new(
        agent: &str,
        source: crate::traffic::Source,
        end_unix_ms: u64,
        sample_rate: u32,
        r: &crate::traffic::TrafficRecord,
    ) -> Self {
        Self {
            v: SCHEMA_VERSION,
            agent: agent.to_string(),
            source,
            end_unix_ms,
            src: r.src,
            dst: r.dst,
            protocol: r.protocol,
            src_port: r.src_port,
            dst_port: r.dst_port,
            tcp_flags: r.tcp_flags,
            packets: r.packets,
            bytes: r.bytes,
            sample_rate,
        }
    }
}

/// What happened to an attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackEventKind {
    /// Detected.
    Started,
    /// Still ongoing: current and peak rates again.
    Updated,
    /// Ended.
    Stopped,
}

/// An attack event (topic `<prefix>.attacks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackEvent {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// The agent that detected it.
    pub agent: String,
    /// Started, updated or stopped.
    pub event: AttackEventKind,
    /// When, ms since the UNIX epoch.
    pub unix_ms: u64,
    /// The attack's id.
    pub attack_id: String,
    /// The local host.
    pub host: IpAddr,
    /// `incoming` or `outgoing`.
    pub direction: Direction,
    /// Rates now (updated events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Rates>,
    /// Highest rates so far (updated events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<Rates>,
    /// The whole record as opened (started events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<Attack>,
}

/// What happened to a mitigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MitigationEventKind {
    /// Put in force (its actions as they went).
    Applied,
    /// Lifted.
    Lifted,
}

/// A mitigation event (topic `<prefix>.mitigations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MitigationEvent {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// The agent whose mitigator holds it.
    pub agent: String,
    /// Applied or lifted.
    pub event: MitigationEventKind,
    /// When the agent saw the change, ms since the UNIX epoch.
    pub unix_ms: u64,
    /// The mitigation as the mitigator holds it.
    pub mitigation: Mitigation,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_required(file: &str) -> Vec<String> {
        let path = format!("{}/../docs/kafka/{file}", env!("CARGO_MANIFEST_DIR"));
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut keys: Vec<String> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_shipped_schema_lists_every_field_of_a_host_record() {
        let c = HostCounters {
            packets: 10,
            bytes: 1000,
            proto_packets: [1, 2, 3, 4],
            proto_bytes: [100, 200, 300, 400],
            ..Default::default()
        };
        let r = HostRecord::new(
            "a",
            "10.0.0.1".parse().unwrap(),
            Direction::Incoming,
            1,
            250,
            &c,
        );
        let value = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, schema_required("hosts.schema.json"));
        assert_eq!(r.counters(), c, "the record carries the counters whole");
    }

    #[test]
    fn the_shipped_schema_lists_every_field_of_a_flow_record() {
        let r = FlowRecord::new(
            "a",
            crate::traffic::Source::Sflow,
            1,
            10,
            &crate::traffic::TrafficRecord::packet(
                "192.0.2.1".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                6,
                40,
            ),
        );
        let value = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, schema_required("flows.schema.json"));
        assert_eq!(value["source"], "sflow");
    }

    #[test]
    fn the_shipped_schema_lists_the_required_fields_of_an_attack_event() {
        let e = AttackEvent {
            v: SCHEMA_VERSION,
            agent: "a".into(),
            event: AttackEventKind::Stopped,
            unix_ms: 1,
            attack_id: "x".into(),
            host: "10.0.0.1".parse().unwrap(),
            direction: Direction::Outgoing,
            current: None,
            peak: None,
            attack: None,
        };
        let value = serde_json::to_value(&e).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, schema_required("attacks.schema.json"));
        assert_eq!(value["event"], "stopped");
    }
}
