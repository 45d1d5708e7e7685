//! The XDP actions' plans: which fingerprint rules (or source drops) an attack gets.

use crate::{bans::RuleSpec, detection::attack::Fingerprint};

/// Surgical rules dropping the attack's fingerprint towards the victim, so that its other
/// traffic still passes. Empty when the fingerprint has nothing specific enough.
pub fn rules_for(fp: &Fingerprint) -> Vec<RuleSpec> {
    let rule = |protocol: u8| RuleSpec {
        protocol,
        ..Default::default()
    };
    match fp.attack_type.as_str() {
        "fragment_flood" => vec![RuleSpec {
            protocol: fp.protocol,
            fragments: true,
            ..Default::default()
        }],
        // SYN without ACK: established connections (and their handshakes' SYN-ACKs) pass.
        "syn_flood" => vec![RuleSpec {
            protocol: 6,
            tcp_flags_mask: 0x12,
            tcp_flags_value: 0x02,
            dst_port: fp.destination_port.map(|(p, _)| p).unwrap_or(0),
            ..Default::default()
        }],
        // Bare ACKs (no SYN/FIN/RST/PSH) towards the flooded port when one dominates.
        "ack_flood" => vec![RuleSpec {
            protocol: 6,
            tcp_flags_mask: 0x1f,
            tcp_flags_value: 0x10,
            dst_port: fp.destination_port.map(|(p, _)| p).unwrap_or(0),
            ..Default::default()
        }],
        "icmp_flood" => vec![rule(fp.protocol)],
        _ if fp.protocol == 17 => match (fp.source_port, fp.destination_port) {
            (Some((sport, _)), _) => vec![RuleSpec {
                protocol: 17,
                src_port: sport,
                ..Default::default()
            }],
            (None, Some((dport, _))) => vec![RuleSpec {
                protocol: 17,
                dst_port: dport,
                ..Default::default()
            }],
            (None, None) => vec![rule(17)],
        },
        _ if fp.protocol != 0 => vec![rule(fp.protocol)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amplification_drops_only_the_reflected_service() {
        let fp = Fingerprint {
            attack_type: "dns_amplification".into(),
            protocol: 17,
            source_port: Some((53, 0.99)),
            ..Default::default()
        };
        assert_eq!(
            rules_for(&fp),
            vec![RuleSpec {
                protocol: 17,
                src_port: 53,
                ..Default::default()
            }]
        );
        let syn = Fingerprint {
            attack_type: "syn_flood".into(),
            protocol: 6,
            ..Default::default()
        };
        let r = rules_for(&syn);
        assert_eq!((r[0].tcp_flags_mask, r[0].tcp_flags_value), (0x12, 0x02));
    }
}
