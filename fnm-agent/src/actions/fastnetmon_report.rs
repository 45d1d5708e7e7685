//! The notify script's report in FastNetMon 1.2.4's format (`[ban] script_format =
//! "fastnetmon"`), so that a script written for FastNetMon parses fnm's.
//!
//! FastNetMon 1.2.4 (`fastnetmon_logic.cpp`, `fast_library.cpp`) calls its notify script
//! `SCRIPT <ip> <incoming|outgoing> <pps> ban` with [`ban_report`] on stdin: `IP:`, the attack
//! description (`serialize_attack_description`: type, initial and peak power, direction,
//! protocol, total, average and per-protocol traffic of both directions), a blank line, the
//! average packet sizes (`serialize_statistic_counters_about_attack`) and, with connection
//! tracking on (Debian's default), the host's TCP and UDP flows. Once it has collected
//! `ban_details_records_count` (20) packets of the host it calls `SCRIPT ... attack_details` with
//! [`details_report`]: the same description, two blank lines, one line per packet
//! (`print_simple_packet`). `unban` gets nothing on stdin.
//!
//! The numbers are fnm's: the attack's rates when it was reported (FastNetMon prints its 5 s
//! average for both "Total" and "Average"), bytes are IP bytes, and flows are fnm's
//! `flows_per_second`. docs/detection.md lists every difference.

use crate::{
    accounting::{Direction, Rates},
    detection::attack::{Attack, Sample},
};
use std::{fmt::Write as _, net::IpAddr};

/// Packets in the `attack_details` report: FastNetMon's default `ban_details_records_count`.
pub const DETAILS_RECORDS: usize = 20;

/// FastNetMon 1.2.4's attack types (`attack_type_t`, `get_printable_attack_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastnetmonAttackType {
    /// Over 90% of the packets are TCP SYN.
    SynFlood,
    /// Over 90% are ICMP.
    IcmpFlood,
    /// Over 90% are IP fragments.
    IpFragmentation,
    /// Over 90% are UDP.
    UdpFlood,
    /// None of the above.
    Unknown,
}

impl FastnetmonAttackType {
    /// Every type FastNetMon 1.2.4 reports.
    pub const ALL: [FastnetmonAttackType; 5] = [
        FastnetmonAttackType::SynFlood,
        FastnetmonAttackType::IcmpFlood,
        FastnetmonAttackType::IpFragmentation,
        FastnetmonAttackType::UdpFlood,
        FastnetmonAttackType::Unknown,
    ];

    /// FastNetMon's name (`syn_flood`, `icmp_flood`, `ip_fragmentation`, `udp_flood`,
    /// `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            FastnetmonAttackType::SynFlood => "syn_flood",
            FastnetmonAttackType::IcmpFlood => "icmp_flood",
            FastnetmonAttackType::IpFragmentation => "ip_fragmentation",
            FastnetmonAttackType::UdpFlood => "udp_flood",
            FastnetmonAttackType::Unknown => "unknown",
        }
    }

    /// The type as FastNetMon's `detect_attack_type` decides it from the attack direction's
    /// rates: the first of SYN, ICMP, fragments and UDP carrying over 90% of the packets.
    pub fn of(r: &Rates) -> Self {
        let share = 0.9 * r.pps;
        if r.tcp_syn_pps > share {
            FastnetmonAttackType::SynFlood
        } else if r.icmp_pps > share {
            FastnetmonAttackType::IcmpFlood
        } else if r.fragments_pps > share {
            FastnetmonAttackType::IpFragmentation
        } else if r.udp_pps > share {
            FastnetmonAttackType::UdpFlood
        } else {
            FastnetmonAttackType::Unknown
        }
    }
}

impl std::fmt::Display for FastnetmonAttackType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// FastNetMon's `get_printable_protocol_name`: ICMPv6 and everything else is `unknown`.
fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "unknown",
    }
}

/// FastNetMon's `detect_attack_protocol`: the most used of TCP, UDP and ICMP (TCP on a tie).
fn attack_protocol(r: &Rates) -> &'static str {
    let max = r.tcp_pps.max(r.udp_pps).max(r.icmp_pps);
    if r.tcp_pps >= max {
        "tcp"
    } else if r.udp_pps >= max {
        "udp"
    } else {
        "icmp"
    }
}

/// A rate as FastNetMon prints its integer counters.
fn whole(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

/// Bytes per second in FastNetMon's "mbps" (`convert_speed_to_mbps`, rounded down).
fn mbps(bytes_per_second: f64) -> u64 {
    whole(bytes_per_second / 1_000_000.0 * 8.0)
}

/// Bytes per second of `pps` packets of a class whose bytes fnm does not count apart (SYN,
/// fragments): at the average size of the packets they are part of.
fn estimated_bytes(pps: f64, part_pps: f64, part_bytes: f64) -> f64 {
    if part_pps > 0.0 {
        pps * part_bytes / part_pps
    } else {
        0.0
    }
}

/// The attack description FastNetMon's `get_attack_description` writes: `IP:`, the
/// description, a blank line and the average packet sizes.
pub fn description(a: &Attack) -> String {
    let (incoming, outgoing) = match a.direction {
        Direction::Incoming => (&a.initial_rates, &a.opposite_rates),
        Direction::Outgoing => (&a.opposite_rates, &a.initial_rates),
    };
    let attack = &a.initial_rates;
    let mut s = String::with_capacity(2048);
    let _ = writeln!(s, "IP: {}", a.host);
    let _ = writeln!(s, "Attack type: {}", FastnetmonAttackType::of(attack));
    let _ = writeln!(
        s,
        "Initial attack power: {} packets per second",
        whole(attack.pps)
    );
    let _ = writeln!(
        s,
        "Peak attack power: {} packets per second",
        whole(a.peak_rates.pps.max(attack.pps))
    );
    let _ = writeln!(s, "Attack direction: {}", a.direction.as_str());
    let _ = writeln!(s, "Attack protocol: {}", attack_protocol(attack));
    // FastNetMon 1.2.4 fills "Total" and "Average" from the same 5 s average.
    let totals = [
        (
            "traffic",
            "mbps",
            mbps(incoming.bytes_per_second),
            mbps(outgoing.bytes_per_second),
        ),
        (
            "pps",
            "packets per second",
            whole(incoming.pps),
            whole(outgoing.pps),
        ),
        (
            "flows",
            "flows per second",
            whole(incoming.flows_per_second),
            whole(outgoing.flows_per_second),
        ),
    ];
    for prefix in ["Total", "Average"] {
        for (what, unit, inc, out) in totals {
            let _ = writeln!(s, "{prefix} incoming {what}: {inc} {unit}");
            let _ = writeln!(s, "{prefix} outgoing {what}: {out} {unit}");
        }
    }
    // (label, incoming bytes/s, outgoing bytes/s, incoming pps, outgoing pps)
    let classes = [
        (
            "ip fragmented",
            estimated_bytes(
                incoming.fragments_pps,
                incoming.pps,
                incoming.bytes_per_second,
            ),
            estimated_bytes(
                outgoing.fragments_pps,
                outgoing.pps,
                outgoing.bytes_per_second,
            ),
            incoming.fragments_pps,
            outgoing.fragments_pps,
        ),
        (
            "tcp",
            incoming.tcp_bytes_per_second,
            outgoing.tcp_bytes_per_second,
            incoming.tcp_pps,
            outgoing.tcp_pps,
        ),
        (
            "syn tcp",
            estimated_bytes(
                incoming.tcp_syn_pps,
                incoming.tcp_pps,
                incoming.tcp_bytes_per_second,
            ),
            estimated_bytes(
                outgoing.tcp_syn_pps,
                outgoing.tcp_pps,
                outgoing.tcp_bytes_per_second,
            ),
            incoming.tcp_syn_pps,
            outgoing.tcp_syn_pps,
        ),
        (
            "udp",
            incoming.udp_bytes_per_second,
            outgoing.udp_bytes_per_second,
            incoming.udp_pps,
            outgoing.udp_pps,
        ),
        (
            "icmp",
            incoming.icmp_bytes_per_second,
            outgoing.icmp_bytes_per_second,
            incoming.icmp_pps,
            outgoing.icmp_pps,
        ),
    ];
    for (label, in_bytes, out_bytes, in_pps, out_pps) in classes {
        let _ = writeln!(s, "Incoming {label} traffic: {} mbps", mbps(in_bytes));
        let _ = writeln!(s, "Outgoing {label} traffic: {} mbps", mbps(out_bytes));
        let _ = writeln!(
            s,
            "Incoming {label} pps: {} packets per second",
            whole(in_pps)
        );
        let _ = writeln!(
            s,
            "Outgoing {label} pps: {} packets per second",
            whole(out_pps)
        );
    }
    s.push('\n');
    let size = |r: &Rates| {
        if r.pps > 0.0 {
            r.bytes_per_second / r.pps
        } else {
            0.0
        }
    };
    let _ = writeln!(
        s,
        "Average packet size for incoming traffic: {:.1} bytes ",
        size(incoming)
    );
    let _ = writeln!(
        s,
        "Average packet size for outgoing traffic: {:.1} bytes ",
        size(outgoing)
    );
    s
}

/// What the `ban` call gets on stdin: [`description`] and the host's TCP and UDP flows in
/// FastNetMon's connection-tracking layout (`print_flow_tracking_for_ip`), from the attack's top
/// flows.
pub fn ban_report(a: &Attack) -> String {
    let mut s = description(a);
    let (title, arrow) = match a.direction {
        Direction::Incoming => ("Incoming", "<"),
        Direction::Outgoing => ("Outgoing", ">"),
    };
    let mut sections = String::new();
    for (name, protocol) in [("TCP", 6u8), ("UDP", 17u8)] {
        let flows: Vec<String> = a
            .top_flows
            .iter()
            .filter(|f| f.protocol == protocol)
            .map(|f| {
                // The local side first, as FastNetMon prints it.
                let (local_port, remote, remote_port) = match a.direction {
                    Direction::Incoming => (f.dst_port, f.src, f.src_port),
                    Direction::Outgoing => (f.src_port, f.dst, f.dst_port),
                };
                format!(
                    "{}:{local_port} {arrow} {}:{remote_port} {} bytes {} packets\n",
                    a.host,
                    address(remote),
                    f.bytes,
                    f.packets
                )
            })
            .collect();
        if !flows.is_empty() {
            let _ = writeln!(sections, "{name} flows: {}", flows.len());
            for line in flows {
                sections.push_str(&line);
            }
            sections.push('\n');
        }
    }
    if !sections.is_empty() {
        let _ = write!(s, "{title}\n\n{sections}");
    }
    s
}

/// What the `attack_details` call gets on stdin: [`description`], two blank lines and up to
/// [`DETAILS_RECORDS`] packet samples in FastNetMon's `print_simple_packet` layout, oldest
/// first. `None` when the attack has no samples (FastNetMon then makes no such call).
pub fn details_report(a: &Attack) -> Option<String> {
    let newest = a.samples.first()?.time_ms;
    let mut s = description(a);
    s.push_str("\n\n");
    for p in a.samples.iter().take(DETAILS_RECORDS).rev() {
        // Samples carry the agent's clock; the newest is at most one poll older than the
        // detection, whose wall-clock time the record has.
        let unix_ms = a
            .started_unix_ms
            .saturating_sub(newest.saturating_sub(p.time_ms));
        s.push_str(&packet_line(p, unix_ms));
    }
    Some(s)
}

/// One packet as FastNetMon's `print_simple_packet` prints it.
fn packet_line(p: &Sample, unix_ms: u64) -> String {
    // FastNetMon has ports for TCP and UDP only (fnm keeps the ICMP type and code there).
    let (src_port, dst_port) = match p.protocol {
        6 | 17 => (p.src_port, p.dst_port),
        _ => (0, 0),
    };
    let mut s = format!(
        "{}.{:06} {}:{src_port} > {}:{dst_port} protocol: {}",
        crate::cli::units::local_time(unix_ms / 1000),
        (unix_ms % 1000) * 1000,
        address(p.src),
        address(p.dst),
        protocol_name(p.protocol)
    );
    if p.protocol == 6 {
        let _ = write!(s, " flags: {}", tcp_flags(p.tcp_flags));
    }
    // The packets are already scaled by the sampling rate: the ratio left to apply is 1.
    let _ = writeln!(
        s,
        " frag: {}  packets: {} size: {} bytes ttl: {} sample ratio: 1  ",
        u8::from(p.fragment),
        p.packets,
        p.size,
        p.ttl
    );
    s
}

/// An address as FastNetMon prints it (IPv6 in full RFC 5952 text, as Rust does).
fn address(ip: IpAddr) -> String {
    ip.to_string()
}

/// FastNetMon's `print_tcp_flags`: `-` for none, else the set flags joined by commas.
fn tcp_flags(flags: u8) -> String {
    let names = [
        (0x01, "fin"),
        (0x02, "syn"),
        (0x04, "rst"),
        (0x08, "psh"),
        (0x10, "ack"),
        (0x20, "urg"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::{
        attack::{AttackType, Fingerprint, FlowSummary},
        detector::Crossing,
    };

    fn udp_attack() -> Attack {
        let rates = Rates {
            pps: 40_000.0,
            bytes_per_second: 17_120_000.0,
            flows_per_second: 5.0,
            udp_pps: 40_000.0,
            udp_bytes_per_second: 17_120_000.0,
            ..Rates::default()
        };
        Attack {
            id: "0193a0b4-7c2e-7d1a-9f3e-2b1c4d5e6f70".into(),
            host: "10.10.0.9".parse().unwrap(),
            direction: Direction::Incoming,
            hostgroup: None,
            network: None,
            started_unix_ms: 1_796_439_746_000,
            ended_unix_ms: None,
            threshold: Crossing {
                rate: crate::accounting::RateKind::Pps,
                value: 40_000.0,
                threshold: 10_000.0,
            },
            initial_rates: rates,
            peak_rates: rates,
            opposite_rates: Rates {
                pps: 10.0,
                bytes_per_second: 1000.0,
                tcp_pps: 10.0,
                tcp_bytes_per_second: 1000.0,
                ..Rates::default()
            },
            top_flows: vec![FlowSummary {
                src: "198.51.100.1".parse().unwrap(),
                dst: "10.10.0.9".parse().unwrap(),
                protocol: 17,
                src_port: 53,
                dst_port: 4444,
                packets: 8000,
                bytes: 3_424_000,
            }],
            samples: (0..30)
                .map(|i| Sample {
                    time_ms: 5000 - i * 10,
                    src: "198.51.100.1".parse().unwrap(),
                    dst: "10.10.0.9".parse().unwrap(),
                    protocol: 17,
                    src_port: 53,
                    dst_port: 4444,
                    tcp_flags: 0,
                    size: 428,
                    ttl: 64,
                    packets: 100,
                    fragment: false,
                })
                .collect(),
            fingerprint: Fingerprint {
                attack_type: AttackType::DnsAmplification,
                ..Fingerprint::default()
            },
            actions: Vec::new(),
            report_only: false,
            sites: Vec::new(),
            pcap_file: None,
        }
    }

    #[test]
    fn types_follow_fastnetmons_ninety_percent_rule() {
        let r = |pps, syn, icmp, frag, udp| Rates {
            pps,
            tcp_syn_pps: syn,
            icmp_pps: icmp,
            fragments_pps: frag,
            udp_pps: udp,
            ..Rates::default()
        };
        use FastnetmonAttackType::*;
        assert_eq!(
            FastnetmonAttackType::of(&r(100.0, 95.0, 0.0, 0.0, 0.0)),
            SynFlood
        );
        assert_eq!(
            FastnetmonAttackType::of(&r(100.0, 0.0, 91.0, 0.0, 0.0)),
            IcmpFlood
        );
        assert_eq!(
            FastnetmonAttackType::of(&r(100.0, 0.0, 0.0, 95.0, 95.0)),
            IpFragmentation
        );
        assert_eq!(
            FastnetmonAttackType::of(&r(100.0, 0.0, 0.0, 0.0, 95.0)),
            UdpFlood
        );
        // A DNS reflection that is 85% UDP is no UDP flood to FastNetMon.
        assert_eq!(
            FastnetmonAttackType::of(&r(100.0, 0.0, 0.0, 0.0, 85.0)),
            Unknown
        );
        assert_eq!(FastnetmonAttackType::of(&Rates::default()), Unknown);
    }

    #[test]
    fn ban_report_has_fastnetmons_lines() {
        let text = ban_report(&udp_attack());
        let expected_head = "IP: 10.10.0.9\n\
            Attack type: udp_flood\n\
            Initial attack power: 40000 packets per second\n\
            Peak attack power: 40000 packets per second\n\
            Attack direction: incoming\n\
            Attack protocol: udp\n\
            Total incoming traffic: 136 mbps\n\
            Total outgoing traffic: 0 mbps\n\
            Total incoming pps: 40000 packets per second\n\
            Total outgoing pps: 10 packets per second\n\
            Total incoming flows: 5 flows per second\n\
            Total outgoing flows: 0 flows per second\n";
        assert!(text.starts_with(expected_head), "{text}");
        assert!(text.contains(
            "Outgoing icmp pps: 0 packets per second\n\n\
             Average packet size for incoming traffic: 428.0 bytes \n\
             Average packet size for outgoing traffic: 100.0 bytes \n\
             Incoming\n\nUDP flows: 1\n\
             10.10.0.9:4444 < 198.51.100.1:53 3424000 bytes 8000 packets\n\n"
        ));
        assert!(text.ends_with(" packets\n\n"), "{text}");
        // FastNetMon's 40 description lines and the flow count.
        assert_eq!(text.lines().filter(|l| l.contains(": ")).count(), 41);
    }

    #[test]
    fn details_report_lists_twenty_packets_oldest_first() {
        let a = udp_attack();
        let text = details_report(&a).expect("samples");
        let (head, packets) = text.split_once("\n\n\n").expect("two blank lines");
        assert_eq!(format!("{head}\n"), description(&a));
        let lines: Vec<&str> = packets.lines().collect();
        assert_eq!(lines.len(), DETAILS_RECORDS);
        for l in &lines {
            assert!(
                l.ends_with(
                    " 198.51.100.1:53 > 10.10.0.9:4444 protocol: udp frag: 0  packets: 100 \
                     size: 428 bytes ttl: 64 sample ratio: 1  "
                ),
                "{l:?}"
            );
        }
        assert!(lines[0] < lines[19], "oldest first: {lines:?}");
        let mut none = a.clone();
        none.samples.clear();
        assert_eq!(details_report(&none), None);
    }

    #[test]
    fn tcp_packets_show_their_flags() {
        let mut a = udp_attack();
        a.samples[0].protocol = 6;
        a.samples[0].tcp_flags = 0x12;
        let text = details_report(&a).unwrap();
        assert!(
            text.contains("protocol: tcp flags: syn,ack frag: 0  packets"),
            "{text}"
        );
        assert_eq!(tcp_flags(0), "-");
    }
}
