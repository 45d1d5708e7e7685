//! NetFlow v5: a 24-byte header and up to 30 fixed 48-byte records.
//!
//! The sampling interval is the lower 14 bits of the header's last field (the top 2 bits are
//! the sampling mode); 0 means the exporter announced no sampling. Bytes after the last
//! announced record are ignored (several datagrams concatenated by a capture tool decode as
//! the first one).

use std::net::{IpAddr, Ipv4Addr};

use crate::traffic::TrafficRecord;

use super::record::{FlowRecord, RecordKind};
use super::{DecodeError, Reader};

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

/// A decoded NetFlow v5 datagram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Netflow5Datagram {
    /// The header.
    pub header: Netflow5Header,
    /// The records, each carrying the header's sampling interval and its uptime timestamps.
    pub records: Vec<FlowRecord>,
    /// Bytes after the announced records (ignored).
    pub trailing_bytes: usize,
}

impl Netflow5Datagram {
    /// The records as traffic, scaled by the header's sampling interval (or
    /// `default_sampling_rate` when it is 0).
    pub fn traffic_records(
        &self,
        default_sampling_rate: u32,
    ) -> impl Iterator<Item = TrafficRecord> + '_ {
        self.records
            .iter()
            .filter_map(move |record| record.to_traffic(default_sampling_rate))
    }
}

/// Decodes one NetFlow v5 datagram.
pub fn decode(datagram: &[u8]) -> Result<Netflow5Datagram, DecodeError> {
    let mut reader = Reader::new(datagram);
    let version = reader.u16()?;
    if version != 5 {
        return Err(DecodeError::BadVersion(u32::from(version)));
    }
    let count = reader.u16()?;
    let sys_uptime_ms = reader.u32()?;
    let unix_secs = reader.u32()?;
    let unix_nsecs = reader.u32()?;
    let flow_sequence = reader.u32()?;
    let engine_type = reader.u8()?;
    let engine_id = reader.u8()?;
    let sampling = reader.u16()?;
    if count > MAX_RECORDS {
        return Err(DecodeError::BadCount {
            what: "NetFlow v5 records (at most 30)",
            count: u32::from(count),
        });
    }
    let needed = usize::from(count) * RECORD_LEN;
    if reader.remaining() < needed {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN + needed,
            available: datagram.len(),
        });
    }
    let header = Netflow5Header {
        count,
        sys_uptime_ms,
        unix_secs,
        unix_nsecs,
        flow_sequence,
        engine_type,
        engine_id,
        sampling_mode: (sampling >> 14) as u8,
        sampling_interval: sampling & 0x3FFF,
    };
    let body = reader.take(needed)?;
    let mut records = Vec::with_capacity(usize::from(count));
    for chunk in body.chunks_exact(RECORD_LEN) {
        if let Ok(chunk) = <&[u8; RECORD_LEN]>::try_from(chunk) {
            records.push(decode_record(chunk, header.sampling_interval));
        }
    }
    Ok(Netflow5Datagram {
        header,
        records,
        trailing_bytes: reader.remaining(),
    })
}

/// Decodes one 48-byte record.
#[inline(always)]
fn decode_record(chunk: &[u8; RECORD_LEN], sampling_interval: u16) -> FlowRecord {
    let u16_at = |at: usize| u16::from_be_bytes([chunk[at], chunk[at + 1]]);
    let u32_at =
        |at: usize| u32::from_be_bytes([chunk[at], chunk[at + 1], chunk[at + 2], chunk[at + 3]]);
    let ipv4_at = |at: usize| {
        IpAddr::V4(Ipv4Addr::new(
            chunk[at],
            chunk[at + 1],
            chunk[at + 2],
            chunk[at + 3],
        ))
    };
    FlowRecord {
        kind: RecordKind::Flow,
        template_id: 0,
        src_addr: Some(ipv4_at(0)),
        dst_addr: Some(ipv4_at(4)),
        protocol: chunk[38],
        src_port: u16_at(32),
        dst_port: u16_at(34),
        tcp_flags: chunk[37],
        tos: chunk[39],
        ttl: 0,
        packets: u64::from(u32_at(16)),
        bytes: u64::from(u32_at(20)),
        input_ifindex: u32::from(u16_at(12)),
        output_ifindex: u32::from(u16_at(14)),
        src_as: u32::from(u16_at(40)),
        dst_as: u32::from(u16_at(42)),
        src_vlan: 0,
        dst_vlan: 0,
        start_ms: Some(u64::from(u32_at(24))),
        end_ms: Some(u64::from(u32_at(28))),
        fragmented: false,
        sampler_id: 0,
        sampling_rate: u32::from(sampling_interval),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let decoded = decode(&datagram(2, 2, 0x4000 | 100)).expect("valid");
        assert_eq!(decoded.header.sampling_mode, 1);
        assert_eq!(decoded.header.sampling_interval, 100);
        assert_eq!(decoded.records.len(), 2);
        let traffic: Vec<_> = decoded.traffic_records(1).collect();
        assert_eq!((traffic[0].packets, traffic[0].bytes), (200, 12_000));
        assert_eq!(traffic[0].tcp_syn_packets, 200);
        assert_eq!(traffic[0].duration_ms, 2_000);
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
    }
}
