//! The attack record: what was crossed, true rates, top flows, samples and a fingerprint.

use super::detector::{Crossing, Opening};
use crate::{
    accounting::{Direction, Rates, SampleBuffer},
    traffic::TrafficRecord,
};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, fmt::Write as _, net::IpAddr};

/// Most top flows kept in a record.
pub const TOP_FLOWS: usize = 10;
/// Most packet samples kept in a record.
pub const MAX_RECORD_SAMPLES: usize = 100;

/// One 5-tuple with what it carried in the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowSummary {
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
    /// IP protocol.
    pub protocol: u8,
    /// Source port (ICMP type).
    pub src_port: u16,
    /// Destination port (ICMP code).
    pub dst_port: u16,
    /// Packets sampled (scaled).
    pub packets: u64,
    /// IP bytes sampled (scaled).
    pub bytes: u64,
}

/// One sampled packet (or flow record on the flow path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Agent clock, ms.
    pub time_ms: u64,
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
    /// IP protocol.
    pub protocol: u8,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// TCP flags.
    pub tcp_flags: u8,
    /// IP bytes per packet.
    pub size: u64,
    /// TTL / hop limit (0 unknown).
    pub ttl: u8,
    /// Packets this sample stands for.
    pub packets: u64,
    /// An IP fragment (records saved by earlier versions read as `false`).
    #[serde(default)]
    pub fragment: bool,
}

/// What kind of attack a fingerprint shows; the serde name is the label in JSON, logs and the
/// script report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackType {
    /// UDP from port 53.
    DnsAmplification,
    /// UDP from port 123.
    NtpAmplification,
    /// UDP from port 1900.
    SsdpAmplification,
    /// UDP from port 11211.
    MemcachedAmplification,
    /// UDP from port 389.
    CldapAmplification,
    /// UDP from port 19.
    ChargenAmplification,
    /// UDP from port 161.
    SnmpAmplification,
    /// Mostly TCP SYN without ACK.
    SynFlood,
    /// Mostly bare TCP ACKs.
    AckFlood,
    /// Mostly ICMP / ICMPv6.
    IcmpFlood,
    /// Mostly IP fragments.
    FragmentFlood,
    /// Mostly UDP, no known reflected service.
    UdpFlood,
    /// Nothing dominant.
    #[default]
    Unknown,
}

impl AttackType {
    /// Every type, in [`AttackType::index`] order.
    pub const ALL: [AttackType; 13] = [
        AttackType::DnsAmplification,
        AttackType::NtpAmplification,
        AttackType::SsdpAmplification,
        AttackType::MemcachedAmplification,
        AttackType::CldapAmplification,
        AttackType::ChargenAmplification,
        AttackType::SnmpAmplification,
        AttackType::SynFlood,
        AttackType::AckFlood,
        AttackType::IcmpFlood,
        AttackType::FragmentFlood,
        AttackType::UdpFlood,
        AttackType::Unknown,
    ];

    /// Position in [`AttackType::ALL`], for fixed-size counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label (`dns_amplification`, `syn_flood`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AttackType::DnsAmplification => "dns_amplification",
            AttackType::NtpAmplification => "ntp_amplification",
            AttackType::SsdpAmplification => "ssdp_amplification",
            AttackType::MemcachedAmplification => "memcached_amplification",
            AttackType::CldapAmplification => "cldap_amplification",
            AttackType::ChargenAmplification => "chargen_amplification",
            AttackType::SnmpAmplification => "snmp_amplification",
            AttackType::SynFlood => "syn_flood",
            AttackType::AckFlood => "ack_flood",
            AttackType::IcmpFlood => "icmp_flood",
            AttackType::FragmentFlood => "fragment_flood",
            AttackType::UdpFlood => "udp_flood",
            AttackType::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for AttackType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shape of an attack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `udp`, `tcp`, `icmp`, `other`.
    pub dominant_protocol: String,
    /// Its IP protocol number (0 unknown).
    pub protocol: u8,
    /// Source port carrying most packets, with its share (0..1), when one dominates.
    pub source_port: Option<(u16, f64)>,
    /// Destination port carrying most packets, with its share.
    pub destination_port: Option<(u16, f64)>,
    /// Smallest and largest packet size seen (IP bytes).
    pub packet_size: Option<(u64, u64)>,
    /// OR of TCP flags seen.
    pub tcp_flags: u8,
    /// Share of packets that were TCP SYN without ACK.
    pub syn_share: f64,
    /// Share of packets that were fragments.
    pub fragment_share: f64,
    /// Distinct sources in the samples.
    pub distinct_sources: usize,
    /// Share of packets from the top `max_source_drops` sources (1.0: few real sources).
    pub top_sources_share: f64,
    /// The kind of attack.
    pub attack_type: AttackType,
}

/// An attack: one host, one direction, from detection to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attack {
    /// Unique id.
    pub id: String,
    /// The local host.
    pub host: IpAddr,
    /// Direction.
    pub direction: Direction,
    /// Hostgroup, if any.
    pub hostgroup: Option<String>,
    /// The network the host belongs to: its hostgroup's prefix, else its `networks` entry
    /// (the most specific). A `bgp_blackhole` subnet route announces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::prefix::Prefix>,
    /// Start, ms since the UNIX epoch.
    pub started_unix_ms: u64,
    /// End, ms since the UNIX epoch (`None` while ongoing).
    pub ended_unix_ms: Option<u64>,
    /// The threshold crossed.
    pub threshold: Crossing,
    /// Rates when detected.
    pub initial_rates: Rates,
    /// Highest rates seen.
    pub peak_rates: Rates,
    /// The host's rates in the other direction when the attack was reported (FastNetMon's
    /// report shows both directions). Records saved by earlier versions read as zero.
    #[serde(default)]
    pub opposite_rates: Rates,
    /// Top flows among the samples.
    pub top_flows: Vec<FlowSummary>,
    /// A bounded sample of packets.
    pub samples: Vec<Sample>,
    /// The attack's shape.
    pub fingerprint: Fingerprint,
    /// Actions taken and their outcomes (filled from the mitigator when shown). Records
    /// saved by earlier versions listed plain strings here; they read as none.
    #[serde(default, deserialize_with = "outcomes_or_legacy")]
    pub actions: Vec<crate::mitigator::store::ActionState>,
    /// Detect and report only.
    pub report_only: bool,
    /// Its sampled packets (`[attack_pcap]`), also `GET /api/v1/attacks/{id}/pcap`; the file
    /// may be gone when newer dumps needed room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcap_file: Option<std::path::PathBuf>,
    /// On an aggregator: each agent's part of the traffic when the attack was detected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteShare>,
}

/// One agent's (site's) part of an attack an aggregator detected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteShare {
    /// The agent (`[export] agent_id`).
    pub agent: String,
    /// Packets it reported for the host and direction over the last rate window.
    pub packets: u64,
    /// Its fraction of the packets all agents reported (0 to 1).
    pub share: f64,
}

/// Reads `actions`: outcome records, or the strings earlier versions wrote (dropped).
fn outcomes_or_legacy<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::mitigator::store::ActionState>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Outcome(crate::mitigator::store::ActionState),
        Legacy(#[allow(dead_code)] String),
    }
    let entries: Vec<Entry> = Vec::deserialize(d)?;
    Ok(entries
        .into_iter()
        .filter_map(|e| match e {
            Entry::Outcome(s) => Some(s),
            Entry::Legacy(_) => None,
        })
        .collect())
}

impl Attack {
    /// The record of an attack the detector just opened, from the host's samples; also returns
    /// the sampled records (the sources for `xdp_source`).
    pub fn open(
        id: String,
        started_unix_ms: u64,
        o: Opening,
        samples: Option<&SampleBuffer>,
        max_sources: usize,
    ) -> (Attack, Vec<TrafficRecord>) {
        let (top_flows, samples, records) = summarise(samples);
        let fingerprint = fingerprint(&records, &o.rates, max_sources);
        let attack = Attack {
            id,
            host: o.host,
            direction: o.direction,
            hostgroup: o.hostgroup,
            network: None,
            started_unix_ms,
            ended_unix_ms: None,
            threshold: o.crossing,
            initial_rates: o.rates,
            peak_rates: o.rates,
            opposite_rates: Rates::default(),
            top_flows,
            samples,
            fingerprint,
            actions: Vec::new(),
            report_only: o.report_only,
            pcap_file: None,
            sites: Vec::new(),
        };
        (attack, records)
    }
}

fn service_label(protocol: u8, src_port: u16) -> Option<AttackType> {
    if protocol != 17 {
        return None;
    }
    Some(match src_port {
        53 => AttackType::DnsAmplification,
        123 => AttackType::NtpAmplification,
        1900 => AttackType::SsdpAmplification,
        11211 => AttackType::MemcachedAmplification,
        389 => AttackType::CldapAmplification,
        19 => AttackType::ChargenAmplification,
        161 => AttackType::SnmpAmplification,
        _ => return None,
    })
}

fn protocol_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        _ => "other",
    }
}

/// Fingerprint from samples, falling back on the rates when there are none.
pub fn fingerprint(samples: &[TrafficRecord], rates: &Rates, max_sources: usize) -> Fingerprint {
    let total: u64 = samples.iter().map(|r| r.packets.max(1)).sum();
    if total == 0 {
        return fingerprint_from_rates(rates);
    }
    let mut by_proto: HashMap<u8, u64> = HashMap::new();
    let mut by_sport: HashMap<(u8, u16), u64> = HashMap::new();
    let mut by_dport: HashMap<(u8, u16), u64> = HashMap::new();
    let mut by_src: HashMap<IpAddr, u64> = HashMap::new();
    let (mut syn, mut frag, mut flags) = (0u64, 0u64, 0u8);
    let mut size: Option<(u64, u64)> = None;
    for r in samples {
        let w = r.packets.max(1);
        *by_proto.entry(r.protocol).or_default() += w;
        *by_sport.entry((r.protocol, r.src_port)).or_default() += w;
        *by_dport.entry((r.protocol, r.dst_port)).or_default() += w;
        *by_src.entry(r.src).or_default() += w;
        syn += r.tcp_syn_packets.min(w);
        frag += r.fragments.min(w);
        flags |= r.tcp_flags;
        let per_packet = r.bytes / w;
        size = Some(match size {
            Some((lo, hi)) => (lo.min(per_packet), hi.max(per_packet)),
            None => (per_packet, per_packet),
        });
    }
    let (&protocol, _) = by_proto
        .iter()
        .max_by_key(|(p, n)| (**n, **p))
        .expect("non-empty");
    let top = |m: &HashMap<(u8, u16), u64>| {
        m.iter()
            .filter(|((p, _), _)| *p == protocol)
            .max_by_key(|(k, n)| (**n, k.1))
            .map(|((_, port), n)| (*port, *n as f64 / total as f64))
    };
    let source_port = top(&by_sport).filter(|(_, s)| *s >= 0.5);
    let destination_port = top(&by_dport).filter(|(_, s)| *s >= 0.5);
    let mut src_counts: Vec<u64> = by_src.values().copied().collect();
    src_counts.sort_unstable_by(|a, b| b.cmp(a));
    let top_sources: u64 = src_counts.iter().take(max_sources).sum();
    let syn_share = syn as f64 / total as f64;
    let fragment_share = frag as f64 / total as f64;
    let attack_type = if fragment_share >= 0.5 {
        AttackType::FragmentFlood
    } else if protocol == 6 && syn_share >= 0.5 {
        AttackType::SynFlood
    } else if protocol == 6 && flags & 0x10 != 0 && flags & 0x02 == 0 {
        AttackType::AckFlood
    } else if protocol == 1 || protocol == 58 {
        AttackType::IcmpFlood
    } else if let Some(label) = source_port.and_then(|(p, _)| service_label(protocol, p)) {
        label
    } else if protocol == 17 {
        AttackType::UdpFlood
    } else {
        AttackType::Unknown
    };
    Fingerprint {
        dominant_protocol: protocol_name(protocol).into(),
        protocol,
        source_port,
        destination_port,
        packet_size: size,
        tcp_flags: flags,
        syn_share,
        fragment_share,
        distinct_sources: by_src.len(),
        top_sources_share: top_sources as f64 / total as f64,
        attack_type,
    }
}

fn fingerprint_from_rates(r: &Rates) -> Fingerprint {
    let pps = r.pps.max(1.0);
    let (name, protocol, value) = [
        ("tcp", 6u8, r.tcp_pps),
        ("udp", 17, r.udp_pps),
        ("icmp", 1, r.icmp_pps),
    ]
    .into_iter()
    .max_by(|a, b| a.2.total_cmp(&b.2))
    .expect("three protocols");
    let (name, protocol) = if value / pps >= 0.5 {
        (name, protocol)
    } else {
        ("other", 0)
    };
    let syn_share = r.tcp_syn_pps / pps;
    let fragment_share = r.fragments_pps / pps;
    let attack_type = if fragment_share >= 0.5 {
        AttackType::FragmentFlood
    } else if syn_share >= 0.5 {
        AttackType::SynFlood
    } else if protocol == 1 {
        AttackType::IcmpFlood
    } else if protocol == 17 {
        AttackType::UdpFlood
    } else {
        AttackType::Unknown
    };
    Fingerprint {
        dominant_protocol: name.into(),
        protocol,
        syn_share,
        fragment_share,
        attack_type,
        ..Default::default()
    }
}

/// (source, destination, protocol, source port, destination port).
type FiveTuple = (IpAddr, IpAddr, u8, u16, u16);

/// Top flows and bounded samples from a sample buffer.
pub fn summarise(
    buffer: Option<&SampleBuffer>,
) -> (Vec<FlowSummary>, Vec<Sample>, Vec<TrafficRecord>) {
    let Some(buffer) = buffer else {
        return (Vec::new(), Vec::new(), Vec::new());
    };
    let records: Vec<TrafficRecord> = buffer.records.iter().map(|(_, r)| r.clone()).collect();
    let mut flows: HashMap<FiveTuple, (u64, u64)> = HashMap::new();
    for r in &records {
        let e = flows
            .entry((r.src, r.dst, r.protocol, r.src_port, r.dst_port))
            .or_default();
        e.0 += r.packets;
        e.1 += r.bytes;
    }
    let mut top: Vec<FlowSummary> = flows
        .into_iter()
        .map(
            |((src, dst, protocol, src_port, dst_port), (packets, bytes))| FlowSummary {
                src,
                dst,
                protocol,
                src_port,
                dst_port,
                packets,
                bytes,
            },
        )
        .collect();
    top.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.src.cmp(&b.src)));
    top.truncate(TOP_FLOWS);
    let samples = buffer
        .records
        .iter()
        .rev()
        .take(MAX_RECORD_SAMPLES)
        .map(|(t, r)| Sample {
            time_ms: *t,
            src: r.src,
            dst: r.dst,
            protocol: r.protocol,
            src_port: r.src_port,
            dst_port: r.dst_port,
            tcp_flags: r.tcp_flags,
            size: r.bytes / r.packets.max(1),
            ttl: r.ttl,
            packets: r.packets,
            fragment: r.fragments > 0,
        })
        .collect();
    (top, samples, records)
}

/// The text report written to the notify script's stdin (FastNetMon-like layout).
pub fn text_report(a: &Attack) -> String {
    let mut s = String::new();
    let r = &a.peak_rates;
    let _ = writeln!(s, "IP: {}", a.host);
    let _ = writeln!(s, "Attack id: {}", a.id);
    let _ = writeln!(s, "Attack direction: {}", a.direction.as_str());
    let _ = writeln!(s, "Attack type: {}", a.fingerprint.attack_type);
    let _ = writeln!(s, "Attack protocol: {}", a.fingerprint.dominant_protocol);
    let _ = writeln!(
        s,
        "Threshold crossed: {} {:.0} > {:.0}",
        a.threshold.rate, a.threshold.value, a.threshold.threshold
    );
    if let Some(g) = &a.hostgroup {
        let _ = writeln!(s, "Hostgroup: {g}");
    }
    let _ = writeln!(s, "Total incoming/outgoing traffic (peak):");
    let _ = writeln!(s, "Packets per second: {:.0}", r.pps);
    let _ = writeln!(
        s,
        "Bytes per second: {:.0} ({:.2} Mbps)",
        r.bytes_per_second,
        r.bytes_per_second * 8.0 / 1e6
    );
    let _ = writeln!(s, "Flows per second: {:.0}", r.flows_per_second);
    let _ = writeln!(
        s,
        "TCP pps: {:.0}  UDP pps: {:.0}  ICMP pps: {:.0}",
        r.tcp_pps, r.udp_pps, r.icmp_pps
    );
    let _ = writeln!(
        s,
        "TCP SYN pps: {:.0}  Fragments pps: {:.0}",
        r.tcp_syn_pps, r.fragments_pps
    );
    if let Some((p, share)) = a.fingerprint.source_port {
        let _ = writeln!(s, "Dominant source port: {p} ({:.0}%)", share * 100.0);
    }
    if let Some((p, share)) = a.fingerprint.destination_port {
        let _ = writeln!(s, "Dominant destination port: {p} ({:.0}%)", share * 100.0);
    }
    let _ = writeln!(s, "\nTop flows:");
    for f in &a.top_flows {
        let _ = writeln!(
            s,
            "{}:{} > {}:{} protocol {} packets {} bytes {}",
            f.src, f.src_port, f.dst, f.dst_port, f.protocol, f.packets, f.bytes
        );
    }
    let _ = writeln!(s, "\nPacket samples:");
    for p in a.samples.iter().take(20) {
        let _ = writeln!(
            s,
            "{}:{} > {}:{} protocol {} flags 0x{:02x} size {} ttl {}",
            p.src, p.src_port, p.dst, p.dst_port, p.protocol, p.tcp_flags, p.size, p.ttl
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sport: u16, proto: u8, flags: u8) -> TrafficRecord {
        TrafficRecord {
            src_port: sport,
            dst_port: 4444,
            tcp_flags: flags,
            tcp_syn_packets: u64::from(proto == 6 && flags & 0x12 == 0x02),
            ..TrafficRecord::packet(
                "192.0.2.1".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                proto,
                500,
            )
        }
    }

    #[test]
    fn labels_amplification_and_floods() {
        let dns: Vec<_> = (0..10).map(|_| rec(53, 17, 0)).collect();
        let f = fingerprint(&dns, &Rates::default(), 32);
        assert_eq!(f.attack_type, AttackType::DnsAmplification);
        assert_eq!(f.source_port.unwrap().0, 53);
        let syn: Vec<_> = (0..10).map(|i| rec(1000 + i, 6, 0x02)).collect();
        assert_eq!(
            fingerprint(&syn, &Rates::default(), 32).attack_type,
            AttackType::SynFlood
        );
        let ack: Vec<_> = (0..10).map(|i| rec(1000 + i, 6, 0x10)).collect();
        assert_eq!(
            fingerprint(&ack, &Rates::default(), 32).attack_type,
            AttackType::AckFlood
        );
        let rates = Rates {
            pps: 100.0,
            udp_pps: 100.0,
            ..Default::default()
        };
        assert_eq!(
            fingerprint(&[], &rates, 32).attack_type,
            AttackType::UdpFlood
        );
    }
}
