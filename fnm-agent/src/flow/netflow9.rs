//! NetFlow v9 (RFC 3954): a 20-byte header followed by flowsets (templates, options templates,
//! data).
//!
//! Templates are stored in the [`TemplateCache`] per (exporter, NetFlow v9, source id, template
//! id), apart from the exporter's IPFIX templates with the same ids; data
//! flowsets whose template is unknown are counted in [`TemplateStats::sets_without_template`].
//! Options scope fields (System, Interface, ...) are kept under
//! [`V9_SCOPE_ENTERPRISE`] so they are skipped when decoding. Sampling rates in options data
//! (SAMPLING_INTERVAL 34, FLOW_SAMPLER_RANDOM_INTERVAL 50, keyed by FLOW_SAMPLER_ID 48) are
//! learned per exporter, source id and sampler. Trailing zero bytes (e.g. Palo Alto pads a
//! 160-byte flowset to 1400 bytes) are padding, not flowsets.

use std::net::IpAddr;

use crate::traffic::TrafficRecord;

use super::record::FlowRecord;
use super::templates::{
    ExportProtocol, Template, TemplateCache, TemplateField, TemplateKey, TemplateStats,
    V9_SCOPE_ENTERPRISE,
};
use super::{DecodeError, Reader};

/// Header length in bytes.
pub const HEADER_LEN: usize = 20;

/// The NetFlow v9 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Netflow9Header {
    /// Records (template and data) the exporter says the datagram holds.
    pub count: u16,
    /// Exporter uptime in milliseconds.
    pub sys_uptime_ms: u32,
    /// Export time, seconds since the Unix epoch.
    pub unix_secs: u32,
    /// Datagram sequence number.
    pub sequence: u32,
    /// Source id (exporter observation domain).
    pub source_id: u32,
}

/// A decoded NetFlow v9 datagram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Netflow9Datagram {
    /// The header.
    pub header: Netflow9Header,
    /// Flow and options records in datagram order.
    pub records: Vec<FlowRecord>,
    /// Template handling statistics.
    pub stats: TemplateStats,
}

impl Netflow9Datagram {
    /// The flow records as traffic; see [`FlowRecord::to_traffic`].
    pub fn traffic_records(
        &self,
        default_sampling_rate: u32,
    ) -> impl Iterator<Item = TrafficRecord> + '_ {
        self.records
            .iter()
            .filter_map(move |record| record.to_traffic(default_sampling_rate))
    }
}

/// Decodes one NetFlow v9 datagram from `exporter`, learning and using its templates.
pub fn decode(
    datagram: &[u8],
    exporter: IpAddr,
    cache: &mut TemplateCache,
) -> Result<Netflow9Datagram, DecodeError> {
    let mut reader = Reader::new(datagram);
    let version = reader.u16()?;
    if version != 9 {
        return Err(DecodeError::BadVersion(u32::from(version)));
    }
    let header = Netflow9Header {
        count: reader.u16()?,
        sys_uptime_ms: reader.u32()?,
        unix_secs: reader.u32()?,
        sequence: reader.u32()?,
        source_id: reader.u32()?,
    };
    let mut decoded = Netflow9Datagram {
        header,
        records: Vec::new(),
        stats: TemplateStats::default(),
    };
    let export_ms = u64::from(header.unix_secs) * 1000;
    while reader.remaining() > 0 {
        let rest = reader.rest();
        if rest.len() < 4 || u16::from_be_bytes([rest[2], rest[3]]) == 0 {
            if rest.iter().all(|&b| b == 0) {
                decoded.stats.padding_bytes = rest.len() as u32;
                break;
            }
            return Err(DecodeError::BadLength("flowset shorter than its header"));
        }
        let flowset_id = reader.u16()?;
        let length = usize::from(reader.u16()?);
        if length < 4 {
            return Err(DecodeError::BadLength("flowset shorter than its header"));
        }
        let body = reader.take(length - 4)?;
        match flowset_id {
            0 => read_templates(body, exporter, header.source_id, cache, &mut decoded.stats),
            1 => {
                read_options_templates(body, exporter, header.source_id, cache, &mut decoded.stats)
            }
            2..=255 => decoded.stats.reserved_sets += 1,
            template_id => {
                let key = TemplateKey {
                    exporter,
                    protocol: ExportProtocol::NetflowV9,
                    domain: header.source_id,
                    template_id,
                };
                cache.decode_data_set(
                    key,
                    body,
                    export_ms,
                    &mut decoded.records,
                    &mut decoded.stats,
                );
            }
        }
    }
    Ok(decoded)
}

/// True when the rest of a set is zero fill.
fn is_padding(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Reads `count` (type, length) pairs, checking that they fit before allocating.
fn read_fields(
    reader: &mut Reader<'_>,
    count: usize,
    enterprise: u32,
) -> Result<Vec<TemplateField>, DecodeError> {
    if count * 4 > reader.remaining() {
        return Err(DecodeError::Truncated {
            needed: count * 4,
            available: reader.remaining(),
        });
    }
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        fields.push(TemplateField {
            id: reader.u16()?,
            length: reader.u16()?,
            enterprise,
        });
    }
    Ok(fields)
}

/// Learns every template of a template flowset (id 0).
fn read_templates(
    body: &[u8],
    exporter: IpAddr,
    source_id: u32,
    cache: &mut TemplateCache,
    stats: &mut TemplateStats,
) {
    let mut reader = Reader::new(body);
    while reader.remaining() >= 4 {
        let Ok(template_id) = reader.u16() else { break };
        let Ok(field_count) = reader.u16() else { break };
        if template_id < 256 {
            if !(template_id == 0 && field_count == 0 && is_padding(reader.rest())) {
                stats.templates_rejected += 1;
            }
            break;
        }
        let Ok(fields) = read_fields(&mut reader, usize::from(field_count), 0) else {
            stats.templates_rejected += 1;
            break;
        };
        match Template::new(fields, 0, false) {
            Ok(template) => {
                let key = TemplateKey {
                    exporter,
                    protocol: ExportProtocol::NetflowV9,
                    domain: source_id,
                    template_id,
                };
                cache.insert(key, template);
                stats.templates_learned += 1;
            }
            Err(_) => stats.templates_rejected += 1,
        }
    }
}

/// Learns every options template of an options template flowset (id 1).
fn read_options_templates(
    body: &[u8],
    exporter: IpAddr,
    source_id: u32,
    cache: &mut TemplateCache,
    stats: &mut TemplateStats,
) {
    let mut reader = Reader::new(body);
    while reader.remaining() >= 6 {
        let Ok(template_id) = reader.u16() else { break };
        let Ok(scope_length) = reader.u16() else {
            break;
        };
        let Ok(option_length) = reader.u16() else {
            break;
        };
        if template_id < 256 {
            if !(template_id == 0 && is_padding(reader.rest())) {
                stats.templates_rejected += 1;
            }
            break;
        }
        if scope_length % 4 != 0 || option_length % 4 != 0 {
            stats.templates_rejected += 1;
            break;
        }
        let scope_count = usize::from(scope_length / 4);
        let option_count = usize::from(option_length / 4);
        let Ok(mut fields) = read_fields(&mut reader, scope_count, V9_SCOPE_ENTERPRISE) else {
            stats.templates_rejected += 1;
            break;
        };
        let Ok(options) = read_fields(&mut reader, option_count, 0) else {
            stats.templates_rejected += 1;
            break;
        };
        fields.extend(options);
        match Template::new(fields, scope_count as u16, true) {
            Ok(template) => {
                let key = TemplateKey {
                    exporter,
                    protocol: ExportProtocol::NetflowV9,
                    domain: source_id,
                    template_id,
                };
                cache.insert(key, template);
                stats.templates_learned += 1;
            }
            Err(_) => stats.templates_rejected += 1,
        }
        // Each options template is padded to a 4-byte boundary within the flowset.
        let misalignment = reader.position() % 4;
        if misalignment != 0 && reader.skip(4 - misalignment).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));

    fn header(source_id: u32) -> Vec<u8> {
        let mut bytes = vec![0, 9, 0, 1];
        bytes.extend_from_slice(&[0; 12]);
        bytes.extend_from_slice(&source_id.to_be_bytes());
        bytes
    }

    fn flowset(id: u16, body: &[u8]) -> Vec<u8> {
        let mut bytes = id.to_be_bytes().to_vec();
        bytes.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn template_256() -> Vec<u8> {
        // id 256, 4 fields: src v4, dst v4, packets (4), sampler id (1).
        let mut body = vec![1, 0, 0, 4];
        for (id, len) in [(8u16, 4u16), (12, 4), (2, 4), (48, 1)] {
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&len.to_be_bytes());
        }
        flowset(0, &body)
    }

    fn sampling_options() -> Vec<u8> {
        // options template 257: scope System(1) len 4; options sampler id 48 (1), interval 34 (4)
        let mut body = vec![1, 1, 0, 4, 0, 8, 0, 1, 0, 4, 0, 48, 0, 1, 0, 34, 0, 4];
        body.extend_from_slice(&[0, 0]); // padding to 4 bytes
        let mut bytes = flowset(1, &body);
        bytes.extend(flowset(257, &[0, 0, 0, 0, 5, 0, 0, 0, 100, 0, 0, 0]));
        bytes
    }

    fn data_256(sampler: u8) -> Vec<u8> {
        flowset(
            256,
            &[10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 0, 7, sampler, 0, 0, 0],
        )
    }

    #[test]
    fn data_before_template_is_counted_then_decoded() {
        let mut cache = TemplateCache::default();
        let mut datagram = header(3);
        datagram.extend(data_256(0));
        let decoded = decode(&datagram, EXPORTER, &mut cache).expect("valid");
        assert_eq!(decoded.records.len(), 0);
        assert_eq!(decoded.stats.sets_without_template, 1);

        let mut datagram = header(3);
        datagram.extend(template_256());
        datagram.extend(sampling_options());
        datagram.extend(data_256(5));
        let decoded = decode(&datagram, EXPORTER, &mut cache).expect("valid");
        assert_eq!(decoded.stats.templates_learned, 2);
        assert_eq!(decoded.stats.options_records, 1);
        assert_eq!(decoded.stats.flow_records, 1);
        let flow = decoded.records.last().expect("flow");
        assert_eq!(flow.sampling_rate, 100);
        assert_eq!(
            decoded.traffic_records(1).next().expect("traffic").packets,
            700
        );

        // Another source id of the same exporter knows neither templates nor sampling.
        let mut datagram = header(4);
        datagram.extend(data_256(5));
        let decoded = decode(&datagram, EXPORTER, &mut cache).expect("valid");
        assert_eq!(decoded.stats.sets_without_template, 1);
    }

    #[test]
    fn zero_padding_is_not_a_flowset_but_garbage_is_an_error() {
        let mut cache = TemplateCache::default();
        let mut datagram = header(1);
        datagram.extend(template_256());
        datagram.extend(vec![0u8; 1220]);
        let decoded = decode(&datagram, EXPORTER, &mut cache).expect("padding");
        assert_eq!(decoded.stats.padding_bytes, 1220);
        let mut datagram = header(1);
        datagram.extend([0, 1, 0, 0, 7]);
        assert_eq!(
            decode(&datagram, EXPORTER, &mut cache)
                .unwrap_err()
                .reason(),
            "bad_length"
        );
        let mut datagram = header(1);
        datagram.extend([1, 0, 0, 200, 7]);
        assert_eq!(
            decode(&datagram, EXPORTER, &mut cache)
                .unwrap_err()
                .reason(),
            "truncated"
        );
    }
}
