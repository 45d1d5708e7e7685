//! IPFIX (RFC 7011): a 16-byte message header followed by sets (templates 2, options
//! templates 3, data 256+).
//!
//! Templates are stored per (exporter, IPFIX, observation domain, template id): apart from the
//! NetFlow v9 templates of the same exporter, whose ids are another space. Enterprise-specific
//! fields (enterprise bit set, 4-byte PEN follows) and unknown elements are skipped by their
//! length; variable-length fields (length 65535 in the template) use the 1-byte or 3-byte
//! length prefix. A template record with field count 0 withdraws its template (template id 2 /
//! 3 withdraws all data / options templates of the domain). Sampling elements in options data
//! (samplingInterval 34, samplerRandomInterval 50, samplingPacketInterval/Space 305/306,
//! samplingSize/Population 309/310, samplingProbability 311, keyed by samplerId 48 or
//! selectorId 302) are learned per exporter, domain and sampler.
//! Only the first `length` bytes of the datagram (the message length) are decoded.

use std::net::IpAddr;

use crate::traffic::TrafficRecord;

use super::record::FlowRecord;
use super::templates::{
    ExportProtocol, Template, TemplateCache, TemplateField, TemplateKey, TemplateStats,
};
use super::{DecodeError, Reader};

/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Template-set id.
const TEMPLATE_SET: u16 = 2;
/// Options-template-set id.
const OPTIONS_TEMPLATE_SET: u16 = 3;

/// The IPFIX message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpfixHeader {
    /// Message length in bytes (header included).
    pub length: u16,
    /// Export time, seconds since the Unix epoch.
    pub export_time: u32,
    /// Sequence number (data records sent before this message, modulo 2^32).
    pub sequence: u32,
    /// Observation domain id.
    pub observation_domain: u32,
}

/// A decoded IPFIX message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpfixDatagram {
    /// The header.
    pub header: IpfixHeader,
    /// Flow and options records in message order.
    pub records: Vec<FlowRecord>,
    /// Template handling statistics.
    pub stats: TemplateStats,
    /// Datagram bytes after the message length (ignored).
    pub trailing_bytes: usize,
}

impl IpfixDatagram {
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

/// Decodes one IPFIX message from `exporter`, learning and using its templates.
pub fn decode(
    datagram: &[u8],
    exporter: IpAddr,
    cache: &mut TemplateCache,
) -> Result<IpfixDatagram, DecodeError> {
    let mut reader = Reader::new(datagram);
    let version = reader.u16()?;
    if version != 10 {
        return Err(DecodeError::BadVersion(u32::from(version)));
    }
    let header = IpfixHeader {
        length: reader.u16()?,
        export_time: reader.u32()?,
        sequence: reader.u32()?,
        observation_domain: reader.u32()?,
    };
    let length = usize::from(header.length);
    if length < HEADER_LEN {
        return Err(DecodeError::BadLength("message length below the header"));
    }
    if length > datagram.len() {
        return Err(DecodeError::Truncated {
            needed: length,
            available: datagram.len(),
        });
    }
    let mut decoded = IpfixDatagram {
        header,
        records: Vec::new(),
        stats: TemplateStats::default(),
        trailing_bytes: datagram.len() - length,
    };
    let export_ms = u64::from(header.export_time) * 1000;
    let domain = header.observation_domain;
    let mut sets = Reader::new(&datagram[HEADER_LEN..length]);
    while sets.remaining() > 0 {
        let rest = sets.rest();
        if rest.len() < 4 || u16::from_be_bytes([rest[2], rest[3]]) < 4 {
            if rest.iter().all(|&b| b == 0) {
                decoded.stats.padding_bytes = rest.len() as u32;
                break;
            }
            return Err(DecodeError::BadLength("set shorter than its header"));
        }
        let set_id = sets.u16()?;
        let set_length = usize::from(sets.u16()?);
        let body = sets.take(set_length - 4)?;
        match set_id {
            TEMPLATE_SET | OPTIONS_TEMPLATE_SET => read_templates(
                body,
                set_id == OPTIONS_TEMPLATE_SET,
                exporter,
                domain,
                cache,
                &mut decoded.stats,
            ),
            0..=255 => decoded.stats.reserved_sets += 1,
            template_id => {
                let key = TemplateKey {
                    exporter,
                    protocol: ExportProtocol::Ipfix,
                    domain,
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

/// Reads `count` field specifiers (with their enterprise numbers), checking the minimum size
/// before allocating.
fn read_fields(reader: &mut Reader<'_>, count: usize) -> Result<Vec<TemplateField>, DecodeError> {
    if count * 4 > reader.remaining() {
        return Err(DecodeError::Truncated {
            needed: count * 4,
            available: reader.remaining(),
        });
    }
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        let raw_id = reader.u16()?;
        let length = reader.u16()?;
        let enterprise = if raw_id & 0x8000 != 0 {
            reader.u32()?
        } else {
            0
        };
        fields.push(TemplateField {
            id: raw_id & 0x7FFF,
            length,
            enterprise,
        });
    }
    Ok(fields)
}

/// Learns (or withdraws) every template record of a template or options template set.
fn read_templates(
    body: &[u8],
    options: bool,
    exporter: IpAddr,
    domain: u32,
    cache: &mut TemplateCache,
    stats: &mut TemplateStats,
) {
    let mut reader = Reader::new(body);
    while reader.remaining() >= 4 {
        let Ok(template_id) = reader.u16() else { break };
        let Ok(field_count) = reader.u16() else { break };
        if field_count == 0 {
            // Withdrawal (RFC 7011 8.1): the set id itself withdraws all of its kind.
            if template_id == TEMPLATE_SET || template_id == OPTIONS_TEMPLATE_SET {
                stats.templates_withdrawn +=
                    cache.withdraw_all(exporter, ExportProtocol::Ipfix, domain, options) as u32;
                continue;
            }
            if template_id >= 256 {
                let key = TemplateKey {
                    exporter,
                    protocol: ExportProtocol::Ipfix,
                    domain,
                    template_id,
                };
                if cache.withdraw(&key) {
                    stats.templates_withdrawn += 1;
                }
                continue;
            }
            if !is_padding(reader.rest()) || template_id != 0 {
                stats.templates_rejected += 1;
            }
            break;
        }
        if template_id < 256 {
            stats.templates_rejected += 1;
            break;
        }
        let scope_count = if options {
            match reader.u16() {
                Ok(scope) => scope,
                Err(_) => {
                    stats.templates_rejected += 1;
                    break;
                }
            }
        } else {
            0
        };
        let Ok(fields) = read_fields(&mut reader, usize::from(field_count)) else {
            stats.templates_rejected += 1;
            break;
        };
        match Template::new(fields, scope_count, options) {
            Ok(template) => {
                let key = TemplateKey {
                    exporter,
                    protocol: ExportProtocol::Ipfix,
                    domain,
                    template_id,
                };
                cache.insert(key, template);
                stats.templates_learned += 1;
            }
            Err(_) => stats.templates_rejected += 1,
        }
    }
}

/// True when the rest of a set is zero fill.
fn is_padding(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const EXPORTER: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    fn message(sets: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = sets.concat();
        let mut bytes = vec![0, 10];
        bytes.extend_from_slice(&((body.len() + HEADER_LEN) as u16).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 100, 0, 0, 0, 1, 0, 0, 0, 42]);
        bytes.extend(body);
        bytes
    }

    fn set(id: u16, body: &[u8]) -> Vec<u8> {
        let mut bytes = id.to_be_bytes().to_vec();
        bytes.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    /// Template 300: IPv6 src/dst, enterprise field (PEN 9, 2 bytes), varlen string, packets.
    fn template_300() -> Vec<u8> {
        let mut body = vec![1, 44, 0, 5];
        body.extend_from_slice(&[0, 27, 0, 16, 0, 28, 0, 16]);
        body.extend_from_slice(&[0x80, 5, 0, 2, 0, 0, 0, 9]);
        body.extend_from_slice(&[0, 82, 0xFF, 0xFF]);
        body.extend_from_slice(&[0, 2, 0, 8]);
        set(2, &body)
    }

    fn data_300() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        body.extend_from_slice(&[0xAB, 0xCD]);
        body.extend_from_slice(&[3, b'e', b't', b'h']);
        body.extend_from_slice(&9u64.to_be_bytes());
        set(300, &body)
    }

    #[test]
    fn enterprise_and_variable_fields_then_withdrawal() {
        let mut cache = TemplateCache::default();
        let decoded = decode(
            &message(&[template_300(), data_300()]),
            EXPORTER,
            &mut cache,
        )
        .expect("valid");
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.records[0].packets, 9);
        assert_eq!(
            decoded.records[0].src_addr,
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );

        let withdraw = set(2, &[1, 44, 0, 0]);
        let decoded =
            decode(&message(&[withdraw, data_300()]), EXPORTER, &mut cache).expect("valid");
        assert_eq!(decoded.stats.templates_withdrawn, 1);
        assert_eq!(decoded.stats.sets_without_template, 1);
    }

    #[test]
    fn packet_interval_and_space_give_the_rate() {
        let mut cache = TemplateCache::default();
        // options template 400: scope selectorId 302 (4); samplingPacketInterval 305 (4),
        // samplingPacketSpace 306 (4).
        let options = set(
            3,
            &[1, 144, 0, 3, 0, 1, 1, 46, 0, 4, 1, 49, 0, 4, 1, 50, 0, 4],
        );
        let options_data = set(400, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 99]);
        let decoded = decode(
            &message(&[options, options_data, template_300(), data_300()]),
            EXPORTER,
            &mut cache,
        )
        .expect("valid");
        assert_eq!(decoded.stats.sampling_rates_learned, 1);
        assert_eq!(decoded.records[1].sampling_rate, 100);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut cache = TemplateCache::default();
        let mut short = message(&[]);
        short[3] = 8;
        assert_eq!(
            decode(&short, EXPORTER, &mut cache).unwrap_err().reason(),
            "bad_length"
        );
        let mut long = message(&[]);
        long[3] = 200;
        assert_eq!(
            decode(&long, EXPORTER, &mut cache).unwrap_err().reason(),
            "truncated"
        );
        let bad_set = message(&[vec![1, 0, 0, 2]]);
        assert_eq!(
            decode(&bad_set, EXPORTER, &mut cache).unwrap_err().reason(),
            "bad_length"
        );
    }
}
