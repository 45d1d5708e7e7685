//! Flowspec rules (RFC 8955 for IPv4, RFC 8956 for IPv6) as fnm describes an attack's fingerprint,
//! and their match terms in the order and form both daemons' encoders use.

use crate::prefix::Prefix;
use serde::{Deserialize, Serialize};

/// Most value ranges in one port or packet-length component: keeps every rule far below the
/// 4096-byte BGP message and the atomic pipe write.
pub const MAX_RANGES: usize = 16;

/// An inclusive range of 16-bit values (ports, packet lengths); `first == last` matches one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ValueRange {
    /// Lowest matching value.
    pub first: u16,
    /// Highest matching value.
    pub last: u16,
}

impl ValueRange {
    /// The range holding exactly `value`.
    pub fn single(value: u16) -> Self {
        Self {
            first: value,
            last: value,
        }
    }
}

/// TCP flags a packet must have set and must have clear (e.g. SYN set, ACK clear for a SYN flood).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct TcpFlagsMatch {
    /// Flags that must all be set (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20,
    /// ECE 0x40, CWR 0x80).
    pub set: u8,
    /// Flags that must all be clear.
    pub clear: u8,
}

/// Fragmentation state a packet must be in (RFC 8955 section 4.2.2.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FragmentMatch {
    /// IPv4 Don't Fragment bit set (IPv4 only).
    DontFragment,
    /// Any fragment.
    IsFragment,
    /// First fragment.
    FirstFragment,
    /// Last fragment.
    LastFragment,
}

impl FragmentMatch {
    /// The component's bitmask value.
    pub fn bit(self) -> u8 {
        match self {
            FragmentMatch::DontFragment => 0x01,
            FragmentMatch::IsFragment => 0x02,
            FragmentMatch::FirstFragment => 0x04,
            FragmentMatch::LastFragment => 0x08,
        }
    }

    /// ExaBGP's keyword for it.
    pub fn exabgp_name(self) -> &'static str {
        match self {
            FragmentMatch::DontFragment => "dont-fragment",
            FragmentMatch::IsFragment => "is-fragment",
            FragmentMatch::FirstFragment => "first-fragment",
            FragmentMatch::LastFragment => "last-fragment",
        }
    }
}

/// What routers do with matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowspecAction {
    /// Drop it (traffic-rate 0).
    Discard,
    /// Police it to this many bytes per second (traffic-rate extended community).
    RateLimit {
        /// Allowed rate in bytes per second.
        bytes_per_second: u32,
    },
}

impl FlowspecAction {
    /// Rate of the traffic-rate extended community, in bytes per second (0 = discard).
    pub fn rate(self) -> u32 {
        match self {
            FlowspecAction::Discard => 0,
            FlowspecAction::RateLimit { bytes_per_second } => bytes_per_second,
        }
    }
}

/// A flowspec rule: what to match (all present conditions must hold) and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowspecRule {
    /// Destination prefix (the victim); its family selects IPv4 or IPv6 flowspec.
    pub destination: Prefix,
    /// Source prefix, same family as `destination`.
    pub source: Option<Prefix>,
    /// IP protocol (IPv4) or next header (IPv6) number, e.g. 17 for UDP.
    pub protocol: Option<u8>,
    /// Source ports; a packet matches when its port is in any range. Empty = any.
    pub source_ports: Vec<ValueRange>,
    /// Destination ports; a packet matches when its port is in any range. Empty = any.
    pub destination_ports: Vec<ValueRange>,
    /// TCP flags that must be set and clear.
    pub tcp_flags: Option<TcpFlagsMatch>,
    /// Packet length range (IPv4 total length; IPv6 payload length per RFC 8956).
    pub packet_length: Option<ValueRange>,
    /// Fragmentation state.
    pub fragment: Option<FragmentMatch>,
    /// What to do with matching traffic.
    pub action: FlowspecAction,
}

/// Why a flowspec rule cannot be announced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowspecError {
    /// Source and destination prefixes are of different families.
    #[error("source prefix {source_prefix} is not of the destination's family ({destination})")]
    MixedFamilies {
        /// The destination prefix.
        destination: Prefix,
        /// The source prefix.
        source_prefix: Prefix,
    },
    /// A range whose first value lies above its last.
    #[error("empty range {first}..={last} in {component}")]
    EmptyRange {
        /// Component name.
        component: &'static str,
        /// First value.
        first: u16,
        /// Last value.
        last: u16,
    },
    /// More ranges than [`MAX_RANGES`] in one component.
    #[error("{count} ranges in {component}, at most {MAX_RANGES} allowed")]
    TooManyRanges {
        /// Component name.
        component: &'static str,
        /// Ranges given.
        count: usize,
    },
    /// TCP flags both required set and required clear, or no flag at all.
    #[error("TCP flags match needs at least one flag, and none both set and clear")]
    BadTcpFlags,
    /// The don't-fragment bit exists only in IPv4.
    #[error("dont_fragment does not apply to IPv6")]
    DontFragmentOnIpv6,
}

impl FlowspecRule {
    /// A rule matching all traffic to `destination` with `action`, to be narrowed by its fields.
    pub fn to_destination(destination: Prefix, action: FlowspecAction) -> Self {
        Self {
            destination,
            source: None,
            protocol: None,
            source_ports: Vec::new(),
            destination_ports: Vec::new(),
            tcp_flags: None,
            packet_length: None,
            fragment: None,
            action,
        }
    }

    /// Checks the rule can be encoded: one family, non-empty bounded ranges, sane flags.
    pub fn validate(&self) -> Result<(), FlowspecError> {
        if let Some(source) = self.source {
            if source.is_ipv4() != self.destination.is_ipv4() {
                return Err(FlowspecError::MixedFamilies {
                    destination: self.destination,
                    source_prefix: source,
                });
            }
        }
        check_ranges("source_ports", &self.source_ports)?;
        check_ranges("destination_ports", &self.destination_ports)?;
        if let Some(range) = self.packet_length {
            check_ranges("packet_length", &[range])?;
        }
        if let Some(flags) = self.tcp_flags {
            if flags.set & flags.clear != 0 || flags.set | flags.clear == 0 {
                return Err(FlowspecError::BadTcpFlags);
            }
        }
        if self.fragment == Some(FragmentMatch::DontFragment) && !self.destination.is_ipv4() {
            return Err(FlowspecError::DontFragmentOnIpv6);
        }
        Ok(())
    }
}

fn check_ranges(component: &'static str, ranges: &[ValueRange]) -> Result<(), FlowspecError> {
    if ranges.len() > MAX_RANGES {
        return Err(FlowspecError::TooManyRanges {
            component,
            count: ranges.len(),
        });
    }
    for range in ranges {
        if range.first > range.last {
            return Err(FlowspecError::EmptyRange {
                component,
                first: range.first,
                last: range.last,
            });
        }
    }
    Ok(())
}

/// A numeric comparison of RFC 8955 section 4.2.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    /// `== value`.
    Equal,
    /// `>= value`.
    AtLeast,
    /// `<= value`.
    AtMost,
}

/// One numeric term; `and` joins it to the previous term (otherwise the terms are ORed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NumericTerm {
    pub and: bool,
    pub comparison: Comparison,
    pub value: u16,
}

/// Terms matching any of `ranges`: `=v` for a single value, `>=first & <=last` otherwise.
pub(crate) fn range_terms(ranges: &[ValueRange]) -> Vec<NumericTerm> {
    let mut terms = Vec::with_capacity(ranges.len() * 2);
    for range in ranges {
        if range.first == range.last {
            terms.push(NumericTerm {
                and: false,
                comparison: Comparison::Equal,
                value: range.first,
            });
        } else {
            terms.push(NumericTerm {
                and: false,
                comparison: Comparison::AtLeast,
                value: range.first,
            });
            terms.push(NumericTerm {
                and: true,
                comparison: Comparison::AtMost,
                value: range.last,
            });
        }
    }
    terms
}

/// One TCP-flag bitmask term: the flag must be set (`set`) or clear; terms are ANDed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlagTerm {
    pub set: bool,
    pub flag: u8,
}

/// One term per flag, set flags first, so that every daemon reads the same conjunction.
pub(crate) fn tcp_flag_terms(flags: TcpFlagsMatch) -> Vec<FlagTerm> {
    let bits = |mask: u8, set: bool| {
        (0..8)
            .map(|bit| 1u8 << bit)
            .filter(move |flag| mask & flag != 0)
            .map(move |flag| FlagTerm { set, flag })
    };
    bits(flags.set, true)
        .chain(bits(flags.clear, false))
        .collect()
}

/// ExaBGP's name of a single TCP flag bit.
pub(crate) fn tcp_flag_name(flag: u8) -> &'static str {
    match flag {
        0x01 => "fin",
        0x02 => "syn",
        0x04 => "rst",
        0x08 => "push",
        0x10 => "ack",
        0x20 => "urgent",
        0x40 => "ece",
        _ => "cwr",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(text: &str) -> Prefix {
        text.parse().expect("prefix")
    }

    #[test]
    fn ranges_become_equal_or_between_terms() {
        let terms = range_terms(&[
            ValueRange::single(53),
            ValueRange {
                first: 1000,
                last: 2000,
            },
        ]);
        assert_eq!(terms.len(), 3);
        assert_eq!(terms[0].comparison, Comparison::Equal);
        assert!(!terms[1].and && terms[1].comparison == Comparison::AtLeast);
        assert!(terms[2].and && terms[2].comparison == Comparison::AtMost);
        assert_eq!(terms[2].value, 2000);
    }

    #[test]
    fn tcp_flags_split_into_one_term_per_bit() {
        let terms = tcp_flag_terms(TcpFlagsMatch {
            set: 0x02,
            clear: 0x14,
        });
        assert_eq!(
            terms,
            vec![
                FlagTerm {
                    set: true,
                    flag: 0x02
                },
                FlagTerm {
                    set: false,
                    flag: 0x04
                },
                FlagTerm {
                    set: false,
                    flag: 0x10
                },
            ]
        );
    }

    #[test]
    fn validation_rejects_what_cannot_be_encoded() {
        let mut rule =
            FlowspecRule::to_destination(prefix("198.51.100.7/32"), FlowspecAction::Discard);
        assert_eq!(rule.validate(), Ok(()));
        rule.source = Some(prefix("2001:db8::/32"));
        assert!(matches!(
            rule.validate(),
            Err(FlowspecError::MixedFamilies { .. })
        ));
        rule.source = None;
        rule.source_ports = vec![ValueRange { first: 9, last: 1 }];
        assert!(matches!(
            rule.validate(),
            Err(FlowspecError::EmptyRange { .. })
        ));
        rule.source_ports = vec![ValueRange::single(1); MAX_RANGES + 1];
        assert!(matches!(
            rule.validate(),
            Err(FlowspecError::TooManyRanges { .. })
        ));
        rule.source_ports.clear();
        rule.tcp_flags = Some(TcpFlagsMatch { set: 2, clear: 2 });
        assert_eq!(rule.validate(), Err(FlowspecError::BadTcpFlags));
        rule.tcp_flags = Some(TcpFlagsMatch::default());
        assert_eq!(rule.validate(), Err(FlowspecError::BadTcpFlags));
        let mut v6 =
            FlowspecRule::to_destination(prefix("2001:db8::1/128"), FlowspecAction::Discard);
        v6.fragment = Some(FragmentMatch::DontFragment);
        assert_eq!(v6.validate(), Err(FlowspecError::DontFragmentOnIpv6));
    }

    #[test]
    fn rules_serialize_for_persistence() {
        let mut rule = FlowspecRule::to_destination(
            prefix("198.51.100.7/32"),
            FlowspecAction::RateLimit {
                bytes_per_second: 125_000,
            },
        );
        rule.protocol = Some(17);
        rule.source_ports = vec![ValueRange::single(53)];
        let json = serde_json::to_string(&rule).expect("serialize");
        let back: FlowspecRule = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, rule);
    }
}
