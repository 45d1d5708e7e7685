//! Why a flow datagram was rejected.

/// A datagram that cannot be decoded. Each variant has a short, stable [`reason`](Self::reason)
/// used as the `reason` label of `fnm_flow_decode_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The datagram ends before a structure it announces.
    #[error("truncated: needed {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// The version field is not the protocol's (e.g. NetFlow sent to the sFlow port).
    #[error("unsupported version {0}")]
    BadVersion(u32),
    /// A length field is inconsistent with the datagram (set shorter than its header, message
    /// length larger than the datagram, ...).
    #[error("bad length: {0}")]
    BadLength(&'static str),
    /// A record/sample count is impossible for the datagram (NetFlow v5 count above 30 or more
    /// records than bytes, more sFlow samples than fit).
    #[error("bad count {count}: {what}")]
    BadCount {
        /// What was counted.
        what: &'static str,
        /// The announced count.
        count: u32,
    },
    /// A template or options template is malformed (id below 256, zero-length record, scope
    /// count larger than the field count, ...).
    #[error("bad template: {0}")]
    BadTemplate(&'static str),
    /// An sFlow agent address type other than 1 (IPv4) or 2 (IPv6).
    #[error("bad sFlow agent address type {0}")]
    BadAddressType(u32),
    /// A set/flowset id in the reserved range.
    #[error("reserved set id {0}")]
    BadSetId(u16),
}

impl DecodeError {
    /// The stable metric label for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::BadLength(_) => "bad_length",
            DecodeError::BadCount { .. } => "bad_count",
            DecodeError::BadTemplate(_) => "bad_template",
            DecodeError::BadAddressType(_) => "bad_address_type",
            DecodeError::BadSetId(_) => "bad_set_id",
        }
    }

    /// Every reason label, for pre-registering metric series.
    pub const ALL_REASONS: [&'static str; 7] = [
        "truncated",
        "bad_version",
        "bad_length",
        "bad_count",
        "bad_template",
        "bad_address_type",
        "bad_set_id",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_listed_and_distinct() {
        let errors = [
            DecodeError::Truncated {
                needed: 1,
                available: 0,
            },
            DecodeError::BadVersion(1),
            DecodeError::BadLength("x"),
            DecodeError::BadCount {
                what: "x",
                count: 1,
            },
            DecodeError::BadTemplate("x"),
            DecodeError::BadAddressType(3),
            DecodeError::BadSetId(4),
        ];
        let reasons: Vec<_> = errors.iter().map(DecodeError::reason).collect();
        assert_eq!(reasons, DecodeError::ALL_REASONS);
    }
}
