//! NetFlow v5: a 24-byte header and up to 30 fixed 48-byte records.
//!
//! The sampling interval is the lower 14 bits of the header's last field (the top 2 bits are
//! the sampling mode); 0 means the exporter announced no sampling. Bytes after the last
//! announced record are ignored (several datagrams concatenated by a capture tool decode as
//! the first one).
//!
//! [`decode`] checks the header once (version, `count <= 30`, `count × 48` bytes present) and
//! returns a [`Netflow5Datagram`] that borrows the datagram: nothing is copied or allocated.
//! Records are read in place at fixed offsets ([`Netflow5Record`]) and converted straight into
//! the [`TrafficRecord`]s the collector needs ([`Netflow5Datagram::traffic_records`]), or into
//! generic [`FlowRecord`]s when every field is wanted ([`Netflow5Datagram::flow_records`]).

use std::net::{IpAddr, Ipv4Addr};

use crate::traffic::TrafficRecord;

use super::record::{effective_rate, FlowRecord, RecordKind};
use super::{DecodeError, MAX_FLOW_DURATION_MS};

/// Header length in bytes.
pub const HEADER_LEN: usize = 24;
/// Record length in bytes.
pub const RECORD_LEN: usize = 48;
/// Most records a v5 datagram may carry.
pub const MAX_RECORDS: u16 = 30;

/// The NetFlow v5 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Netflow5Header {
    /// Number of records.
    pub count: u16,
    /// Exporter uptime in milliseconds.
    pub sys_uptime_ms: u32,
    /// Export time, seconds since the Unix epoch.
    pub unix_secs: u32,
    /// Export time, residual nanoseconds.
    pub unix_nsecs: u32,
    /// Sequence number of the first record (total flows seen).
    pub flow_sequence: u32,
    /// Type of flow-switching engine.
    pub engine_type: u8,
    /// Slot number of the flow-switching engine.
    pub engine_id: u8,
    /// Sampling mode (top 2 bits of the sampling field).
    pub sampling_mode: u8,
    /// Sampling interval (lower 14 bits), 0 when none.
    pub sampling_interval: u16,
}

/// A validated NetFlow v5 datagram borrowing the received bytes: the header and exactly
/// `header.count` records of 48 bytes, read on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Netflow5Datagram<'a> {
    /// The header.
    pub header: Netflow5Header,
    /// The announced records, `header.count` chunks of [`RECORD_LEN`] bytes.
    records: &'a [[u8; RECORD_LEN]],
    /// Bytes after the announced records (ignored).
    pub trailing_bytes: usize,
}

impl<'a> Netflow5Datagram<'a> {
    /// Number of records (equals `header.count`).
    #[inline]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the datagram carries no record.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, read in place.
    #[inline]
    pub fn records(&self) -> impl ExactSizeIterator<Item = Netflow5Record<'a>> + 'a {
        self.records.iter().map(|bytes| Netflow5Record { bytes })
    }

    /// The records as generic [`FlowRecord`]s (every field, unscaled, carrying the header's
    /// sampling interval).
    pub fn flow_records(&self) -> impl ExactSizeIterator<Item = FlowRecord> + 'a {
        let sampling_interval = self.header.sampling_interval;
        self.records()
            .map(move |record| record.to_flow_record(sampling_interval))
    }

    /// The records as traffic, scaled by the header's sampling interval (or
    /// `default_sampling_rate` when it is 0; 0 counts as 1). Same result as
    /// [`FlowRecord::to_traffic`] on [`flow_records`](Self::flow_records), without the detour.
    #[inline]
    pub fn traffic_records(
        &self,
        default_sampling_rate: u32,
    ) -> impl ExactSizeIterator<Item = TrafficRecord> + 'a {
        let rate = effective_rate(
            u32::from(self.header.sampling_interval),
            default_sampling_rate,
        );
        self.records().map(move |record| record.to_traffic(rate))
    }
}

/// One 48-byte NetFlow v5 record, read in place at fixed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Netflow5Record<'a> {
    bytes: &'a [u8; RECORD_LEN],
}

impl Netflow5Record<'_> {
    #[inline(always)]
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    #[inline(always)]
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    #[inline(always)]
    fn ipv4_at(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::from(self.u32_at(at))
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        self.ipv4_at(0)
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        self.ipv4_at(4)
    }

    /// Next-hop router address.
    #[inline]
    pub fn next_hop(&self) -> Ipv4Addr {
        self.ipv4_at(8)
    }

    /// SNMP index of the input interface.
    #[inline]
    pub fn input_ifindex(&self) -> u16 {
        self.u16_at(12)
    }

    /// SNMP index of the output interface.
    #[inline]
    pub fn output_ifindex(&self) -> u16 {
        self.u16_at(14)
    }

    /// Packets as exported (not scaled).
    #[inline]
    pub fn packets(&self) -> u32 {
        self.u32_at(16)
    }

    /// Layer-3 bytes as exported (not scaled).
    #[inline]
    pub fn bytes(&self) -> u32 {
        self.u32_at(20)
    }

    /// System uptime (ms) at the flow's first packet.
    #[inline]
    pub fn first_ms(&self) -> u32 {
        self.u32_at(24)
    }

    /// System uptime (ms) at the flow's last packet.
    #[inline]
    pub fn last_ms(&self) -> u32 {
        self.u32_at(28)
    }

    /// Source port (ICMP: type).
    #[inline]
    pub fn src_port(&self) -> u16 {
        self.u16_at(32)
    }

    /// Destination port (ICMP: code).
    #[inline]
    pub fn dst_port(&self) -> u16 {
        self.u16_at(34)
    }

    /// OR of the TCP flags.
    #[inline]
    pub fn tcp_flags(&self) -> u8 {
        self.bytes[37]
    }

    /// IP protocol number.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.bytes[38]
    }

    /// IP type of service.
    #[inline]
    pub fn tos(&self) -> u8 {
        self.bytes[39]
    }

    /// Source AS.
    #[inline]
    pub fn src_as(&self) -> u16 {
        self.u16_at(40)
    }

    /// Destination AS.
    #[inline]
    pub fn dst_as(&self) -> u16 {
        self.u16_at(42)
    }

    /// Source prefix length.
    #[inline]
    pub fn src_mask(&self) -> u8 {
        self.bytes[44]
    }

    /// Destination prefix length.
    #[inline]
    pub fn dst_mask(&self) -> u8 {
        self.bytes[45]
    }

    /// `last - first` capped at [`MAX_FLOW_DURATION_MS`]; 0 when the end precedes the start
    /// (the rule of [`FlowRecord::duration_ms`]).
    #[inline]
    pub fn duration_ms(&self) -> u64 {
        u64::from(self.last_ms().saturating_sub(self.first_ms())).min(MAX_FLOW_DURATION_MS)
    }

    /// The record as traffic, packets and bytes multiplied by `rate` (already resolved from
    /// the header and the default; at least 1). Both factors are 32-bit, so the 64-bit
    /// products cannot overflow.
    #[inline]
    pub fn to_traffic(&self, rate: u32) -> TrafficRecord {
        let rate = u64::from(rate);
        let packets = u64::from(self.packets()) * rate;
        let mut record = TrafficRecord {
            src: IpAddr::V4(self.src_addr()),
            dst: IpAddr::V4(self.dst_addr()),
            protocol: self.protocol(),
            src_port: self.src_port(),
            dst_port: self.dst_port(),
            tcp_flags: self.tcp_flags(),
            packets,
            bytes: u64::from(self.bytes()) * rate,
            fragments: 0,
            tcp_syn_packets: 0,
            ttl: 0,
            duration_ms: self.duration_ms(),
        };
        if record.is_syn() {
            record.tcp_syn_packets = packets;
        }
        record
    }

    /// The record as a generic [`FlowRecord`] carrying `sampling_interval`.
    pub fn to_flow_record(&self, sampling_interval: u16) -> FlowRecord {
        FlowRecord {
            kind: RecordKind::Flow,
            template_id: 0,
            src_addr: Some(IpAddr::V4(self.src_addr())),
            dst_addr: Some(IpAddr::V4(self.dst_addr())),
            protocol: self.protocol(),
            src_port: self.src_port(),
            dst_port: self.dst_port(),
            tcp_flags: self.tcp_flags(),
            tos: self.tos(),
            ttl: 0,
            packets: u64::from(self.packets()),
            bytes: u64::from(self.bytes()),
            input_ifindex: u32::from(self.input_ifindex()),
            output_ifindex: u32::from(self.output_ifindex()),
            src_as: u32::from(self.src_as()),
            dst_as: u32::from(self.dst_as()),
            src_vlan: 0,
            dst_vlan: 0,
            start_ms: Some(u64::from(self.first_ms())),
            end_ms: Some(u64::from(self.last_ms())),
            fragmented: false,
            sampler_id: 0,
            sampling_rate: u32::from(sampling_interval),
        }
    }
}

/// Decodes one NetFlow v5 datagram: checks the header and the record bytes once and returns a
/// view borrowing `datagram`.
pub fn decode(datagram: &[u8]) -> Result<Netflow5Datagram<'_>, DecodeError> {
    if let Some(&[high, low]) = datagram.first_chunk::<2>() {
        let version = u16::from_be_bytes([high, low]);
        if version != 5 {
            return Err(DecodeError::BadVersion(u32::from(version)));
        }
    }
    let Some((header_bytes, body)) = datagram.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN,
            available: datagram.len(),
        });
    };
    let u16_at = |at: usize| u16::from_be_bytes([header_bytes[at], header_bytes[at + 1]]);
    let u32_at = |at: usize| {
        u32::from_be_bytes([
            header_bytes[at],
            header_bytes[at + 1],
            header_bytes[at + 2],
            header_bytes[at + 3],
        ])
    };
    let count = u16_at(2);
    if count > MAX_RECORDS {
        return Err(DecodeError::BadCount {
            what: "NetFlow v5 records (at most 30)",
            count: u32::from(count),
        });
    }
    let (chunks, _) = body.as_chunks::<RECORD_LEN>();
    let Some(records) = chunks.get(..usize::from(count)) else {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN + usize::from(count) * RECORD_LEN,
            available: datagram.len(),
        });
    };
    let sampling = u16_at(22);
    Ok(Netflow5Datagram {
        header: Netflow5Header {
            count,
            sys_uptime_ms: u32_at(4),
            unix_secs: u32_at(8),
            unix_nsecs: u32_at(12),
            flow_sequence: u32_at(16),
            engine_type: header_bytes[20],
            engine_id: header_bytes[21],
            sampling_mode: (sampling >> 14) as u8,
            sampling_interval: sampling & 0x3FFF,
        },
        records,
        trailing_bytes: body.len() - records.len() * RECORD_LEN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn datagram(count: u16, records: usize, sampling: u16) -> Vec<u8> {
        let mut bytes = vec![0, 5];
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&[0; 18]);
        bytes.extend_from_slice(&sampling.to_be_bytes());
        for index in 0..records {
            let mut record = [0u8; RECORD_LEN];
            record[..4].copy_from_slice(&[10, 0, 0, index as u8]);
            record[4..8].copy_from_slice(&[192, 0, 2, 1]);
            record[16..20].copy_from_slice(&2u32.to_be_bytes());
            record[20..24].copy_from_slice(&120u32.to_be_bytes());
            record[24..28].copy_from_slice(&1_000u32.to_be_bytes());
            record[28..32].copy_from_slice(&3_000u32.to_be_bytes());
            record[37] = 0x02;
            record[38] = 6;
            bytes.extend_from_slice(&record);
        }
        bytes
    }

    #[test]
    fn decodes_records_and_sampling() {
        let bytes = datagram(2, 2, 0x4000 | 100);
        let decoded = decode(&bytes).expect("valid");
        assert_eq!(decoded.header.sampling_mode, 1);
        assert_eq!(decoded.header.sampling_interval, 100);
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded.trailing_bytes, 0);
        let traffic: Vec<_> = decoded.traffic_records(1).collect();
        assert_eq!((traffic[0].packets, traffic[0].bytes), (200, 12_000));
        assert_eq!(traffic[0].tcp_syn_packets, 200);
        assert_eq!(traffic[0].duration_ms, 2_000);
        assert_eq!(traffic[1].src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let first = decoded.records().next().expect("a record");
        assert_eq!(first.dst_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!((first.protocol(), first.tcp_flags()), (6, 0x02));
    }

    #[test]
    fn unsampled_datagrams_use_the_default_rate() {
        let bytes = datagram(1, 1, 0);
        let decoded = decode(&bytes).expect("valid");
        let traffic: Vec<_> = decoded.traffic_records(10).collect();
        assert_eq!((traffic[0].packets, traffic[0].bytes), (20, 1_200));
        let traffic: Vec<_> = decoded.traffic_records(0).collect();
        assert_eq!((traffic[0].packets, traffic[0].bytes), (2, 120));
    }

    #[test]
    fn bytes_after_the_records_are_ignored() {
        let mut bytes = datagram(1, 1, 0);
        bytes.extend_from_slice(&[0xAA; 50]);
        let decoded = decode(&bytes).expect("valid");
        assert_eq!((decoded.len(), decoded.trailing_bytes), (1, 50));
    }

    #[test]
    fn rejects_impossible_counts() {
        assert_eq!(
            decode(&datagram(31, 31, 0)).unwrap_err().reason(),
            "bad_count"
        );
        assert_eq!(
            decode(&datagram(3, 2, 0)).unwrap_err().reason(),
            "truncated"
        );
        assert_eq!(decode(&[0, 5, 0]).unwrap_err().reason(), "truncated");
        assert_eq!(decode(&[0, 9, 0, 0]).unwrap_err().reason(), "bad_version");
        let mut v9 = datagram(0, 0, 0);
        v9[1] = 9;
        assert_eq!(decode(&v9).unwrap_err().reason(), "bad_version");
    }

    /// A header announcing `count` records, then `body` (any bytes).
    fn arbitrary_datagram() -> impl Strategy<Value = Vec<u8>> {
        (
            0u16..=32,
            any::<[u8; 20]>(),
            proptest::collection::vec(any::<u8>(), 0..1_600),
        )
            .prop_map(|(count, header_rest, body)| {
                let mut bytes = vec![0, 5];
                bytes.extend_from_slice(&count.to_be_bytes());
                bytes.extend_from_slice(&header_rest);
                bytes.extend_from_slice(&body);
                bytes
            })
    }

    proptest! {
        /// Any bytes: an error or a view, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1_600)) {
            if let Ok(decoded) = decode(&bytes) {
                prop_assert!(HEADER_LEN + decoded.len() * RECORD_LEN <= bytes.len());
                prop_assert_eq!(decoded.traffic_records(0).count(), decoded.len());
            }
        }

        /// A decoded datagram has exactly `count` records and the bytes for them; a rejected
        /// one was really too short or announced more than 30.
        #[test]
        fn accepts_exactly_the_well_formed(bytes in arbitrary_datagram()) {
            let count = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
            match decode(&bytes) {
                Ok(decoded) => {
                    prop_assert_eq!(decoded.len(), count);
                    prop_assert_eq!(
                        decoded.trailing_bytes,
                        bytes.len() - HEADER_LEN - count * RECORD_LEN
                    );
                }
                Err(DecodeError::BadCount { .. }) => prop_assert!(count > 30),
                Err(DecodeError::Truncated { .. }) => {
                    prop_assert!(count <= 30);
                    prop_assert!(bytes.len() < HEADER_LEN + count * RECORD_LEN);
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }

        /// The direct conversion gives exactly what the generic record path gives (which
        /// saturates, so this also shows the 32 × 32-bit products never overflow).
        #[test]
        fn traffic_equals_the_generic_conversion(
            bytes in arbitrary_datagram(),
            default_rate in prop_oneof![0u32..5, Just(u32::MAX), any::<u32>()],
        ) {
            if let Ok(decoded) = decode(&bytes) {
                let direct: Vec<_> = decoded.traffic_records(default_rate).collect();
                let generic: Vec<_> = decoded
                    .flow_records()
                    .filter_map(|record| record.to_traffic(default_rate))
                    .collect();
                prop_assert_eq!(direct, generic);
            }
        }
    }
}
