//! Template cache shared by NetFlow v9 and IPFIX, and decoding of data records through a
//! template.
//!
//! Templates are keyed by (exporter address, protocol, source id / observation domain,
//! template id). The protocol is part of the key because NetFlow v9 and IPFIX template ids
//! live in separate spaces: an exporter that sends both (a router exporting v9 to one
//! collector and IPFIX to another, or during a migration) may announce template 300 in each
//! with different layouts, and decoding v9 data through the IPFIX template reads other bytes
//! as the packet counter (10^12 packets and a false attack). The cache is bounded
//! ([`TemplateCache::with_limits`]); when full, an arbitrary template is evicted and counted.
//! Sampling rates learned from options data are kept per (exporter, protocol, domain, sampler
//! id), for the same reason. The whole cache can be saved to a file and loaded back after a
//! restart (JSON; templates are re-validated on load, a corrupt file is an error, never a
//! panic).
//!
//! # State file versions
//!
//! Format 2 (current) stores the protocol in every key. Format 1 (before the protocol was part
//! of the key) is not loaded: its keys cannot say whether a template came from v9 or IPFIX, and
//! guessing would bring back the collision after the restart. Loading it fails with
//! [`TemplateFormatError::UnsupportedVersion`] (the collector sets the file aside and starts
//! empty); exporters resend their templates periodically (NetFlow v9 and IPFIX over UDP must),
//! so decoding resumes after one template refresh interval.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state::store::{OnBadFile, StateFile, StoreError};

use super::record::{FlowRecord, RecordKind};
use super::{be_uint, DecodeError};

/// Default maximum number of templates kept across all exporters.
pub const DEFAULT_MAX_TEMPLATES: usize = 4096;
/// The "More Fragments" bit of IPFIX fragmentFlags (IE 197): bit 2 counted from the most
/// significant bit.
pub const FRAGMENT_FLAGS_MF: u64 = 0x20;
/// Default maximum number of (exporter, domain, sampler) sampling rates kept.
pub const DEFAULT_MAX_SAMPLERS: usize = 4096;
/// Most fields a template may have; larger templates are rejected.
pub const MAX_TEMPLATE_FIELDS: usize = 512;
/// IPFIX variable-length marker in a template field length.
pub(crate) const VARIABLE_LENGTH: u16 = 0xFFFF;
/// Pseudo enterprise number given to NetFlow v9 options *scope* fields (System, Interface,
/// Line card, Cache, Template) so that they are skipped rather than read as elements.
pub const V9_SCOPE_ENTERPRISE: u32 = u32::MAX;
/// Sampler id under which the last rate learned for an exporter/domain is also stored, used
/// for records that name no sampler or an unknown one.
const ANY_SAMPLER: u64 = u64::MAX;
/// Format version of the state file (2: the protocol is part of every key).
pub const STATE_FORMAT_VERSION: u32 = 2;

/// The template-based export protocol a template or sampling rate was learned from. NetFlow v9
/// and IPFIX template ids are separate spaces, even from one exporter and domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ExportProtocol {
    /// NetFlow v9 (RFC 3954).
    #[serde(rename = "netflow9")]
    NetflowV9,
    /// IPFIX (RFC 7011, version 10).
    #[serde(rename = "ipfix")]
    Ipfix,
}

/// Identifies one template: who sent it, over which protocol, in which source id /
/// observation domain, which id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateKey {
    /// Exporter address (UDP source address).
    pub exporter: IpAddr,
    /// NetFlow v9 or IPFIX: their template ids do not share one space.
    pub protocol: ExportProtocol,
    /// NetFlow v9 source id or IPFIX observation domain id.
    pub domain: u32,
    /// Template id (256..=65535).
    pub template_id: u16,
}

/// One field of a template as announced on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateField {
    /// Information element / field type id (without the IPFIX enterprise bit).
    pub id: u16,
    /// Length in bytes; 65535 = IPFIX variable length.
    pub length: u16,
    /// Private enterprise number, 0 for IANA elements.
    pub enterprise: u32,
}

/// What a field means to the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    Skip,
    Bytes,
    Packets,
    TotalBytes,
    TotalPackets,
    InitiatorBytes,
    InitiatorPackets,
    Protocol,
    Tos,
    TcpFlags,
    SrcPort,
    DstPort,
    SrcAddr,
    DstAddr,
    InputIf,
    OutputIf,
    SrcAs,
    DstAs,
    StartUptimeMs,
    EndUptimeMs,
    StartSeconds,
    EndSeconds,
    StartMs,
    EndMs,
    StartNtp,
    EndNtp,
    StartDeltaUs,
    EndDeltaUs,
    IcmpTypeCode,
    IcmpType,
    IcmpCode,
    SamplingInterval,
    SamplerId,
    PacketInterval,
    PacketSpace,
    SamplingSize,
    SamplingPopulation,
    SamplingProbability,
    SrcVlan,
    DstVlan,
    Ttl,
    FragmentFlags,
}

impl FieldKind {
    /// Maps an IANA (enterprise 0) element id to its meaning.
    fn of(id: u16) -> FieldKind {
        match id {
            1 => FieldKind::Bytes,
            2 => FieldKind::Packets,
            4 => FieldKind::Protocol,
            5 => FieldKind::Tos,
            6 => FieldKind::TcpFlags,
            7 => FieldKind::SrcPort,
            8 | 27 => FieldKind::SrcAddr,
            10 => FieldKind::InputIf,
            11 => FieldKind::DstPort,
            12 | 28 => FieldKind::DstAddr,
            14 => FieldKind::OutputIf,
            16 => FieldKind::SrcAs,
            17 => FieldKind::DstAs,
            21 => FieldKind::EndUptimeMs,
            22 => FieldKind::StartUptimeMs,
            32 | 139 => FieldKind::IcmpTypeCode,
            // samplingInterval / FLOW_SAMPLER_RANDOM_INTERVAL (both "1 out of N").
            34 | 50 => FieldKind::SamplingInterval,
            48 | 302 => FieldKind::SamplerId,
            58 => FieldKind::SrcVlan,
            59 => FieldKind::DstVlan,
            85 => FieldKind::TotalBytes,
            86 => FieldKind::TotalPackets,
            150 => FieldKind::StartSeconds,
            151 => FieldKind::EndSeconds,
            152 => FieldKind::StartMs,
            153 => FieldKind::EndMs,
            154 | 156 => FieldKind::StartNtp,
            155 | 157 => FieldKind::EndNtp,
            158 => FieldKind::StartDeltaUs,
            159 => FieldKind::EndDeltaUs,
            176 | 178 => FieldKind::IcmpType,
            177 | 179 => FieldKind::IcmpCode,
            192 | 52 => FieldKind::Ttl,
            197 => FieldKind::FragmentFlags,
            231 => FieldKind::InitiatorBytes,
            298 => FieldKind::InitiatorPackets,
            305 => FieldKind::PacketInterval,
            306 => FieldKind::PacketSpace,
            309 => FieldKind::SamplingSize,
            310 => FieldKind::SamplingPopulation,
            311 => FieldKind::SamplingProbability,
            _ => FieldKind::Skip,
        }
    }
}

/// One decoding step: a field (or a run of skipped fixed-length fields).
#[derive(Debug, Clone, Copy)]
struct Op {
    kind: FieldKind,
    /// Length in bytes, or [`VARIABLE_LENGTH`].
    length: u16,
}

/// A validated template, compiled into decoding steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    fields: Vec<TemplateField>,
    scope_fields: u16,
    options: bool,
    ops: Vec<OpEq>,
    /// Smallest encoded record (variable-length fields count 1 byte).
    min_record_len: usize,
    /// True when every field has a fixed length.
    fixed: bool,
}

/// [`Op`] with equality so [`Template`] can derive it.
#[derive(Debug, Clone, Copy)]
struct OpEq(Op);

impl PartialEq for OpEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind == other.0.kind && self.0.length == other.0.length
    }
}
impl Eq for OpEq {}

impl Template {
    /// Validates and compiles a template. `scope_fields` is the number of leading scope fields
    /// of an options template (0 for a data template).
    pub fn new(
        fields: Vec<TemplateField>,
        scope_fields: u16,
        options: bool,
    ) -> Result<Self, DecodeError> {
        if fields.is_empty() {
            return Err(DecodeError::BadTemplate("no fields"));
        }
        if fields.len() > MAX_TEMPLATE_FIELDS {
            return Err(DecodeError::BadTemplate("too many fields"));
        }
        if usize::from(scope_fields) > fields.len() {
            return Err(DecodeError::BadTemplate("more scope fields than fields"));
        }
        let mut ops: Vec<OpEq> = Vec::with_capacity(fields.len());
        let mut min_record_len = 0usize;
        let mut fixed = true;
        for field in &fields {
            let kind = if field.enterprise == 0 {
                FieldKind::of(field.id)
            } else {
                FieldKind::Skip
            };
            if field.length == VARIABLE_LENGTH {
                fixed = false;
                min_record_len += 1;
            } else {
                min_record_len += usize::from(field.length);
            }
            let mergeable = kind == FieldKind::Skip && field.length != VARIABLE_LENGTH;
            match ops.last_mut() {
                Some(OpEq(last))
                    if mergeable
                        && last.kind == FieldKind::Skip
                        && last.length != VARIABLE_LENGTH
                        && usize::from(last.length) + usize::from(field.length)
                            < usize::from(VARIABLE_LENGTH) =>
                {
                    last.length += field.length;
                }
                _ => ops.push(OpEq(Op {
                    kind,
                    length: field.length,
                })),
            }
        }
        if min_record_len == 0 {
            return Err(DecodeError::BadTemplate("zero-length record"));
        }
        Ok(Self {
            fields,
            scope_fields,
            options,
            ops,
            min_record_len,
            fixed,
        })
    }

    /// The fields as announced.
    pub fn fields(&self) -> &[TemplateField] {
        &self.fields
    }

    /// True for an options template.
    pub fn is_options(&self) -> bool {
        self.options
    }

    /// Number of scope fields (options templates).
    pub fn scope_fields(&self) -> u16 {
        self.scope_fields
    }

    /// Smallest encoded record length in bytes.
    pub fn min_record_len(&self) -> usize {
        self.min_record_len
    }

    /// Decodes one record from the start of `data`; returns the record, its sampling rate when
    /// the record states one, and the bytes consumed.
    fn decode_record(
        &self,
        template_id: u16,
        data: &[u8],
        export_ms: u64,
    ) -> Result<(FlowRecord, Option<u32>, usize), DecodeError> {
        let mut acc = Accumulator::new(template_id, self.options, export_ms);
        let mut pos = 0usize;
        if self.fixed {
            if data.len() < self.min_record_len {
                return Err(DecodeError::Truncated {
                    needed: self.min_record_len,
                    available: data.len(),
                });
            }
            for OpEq(op) in &self.ops {
                let end = pos + usize::from(op.length);
                if op.kind != FieldKind::Skip {
                    acc.apply(op.kind, &data[pos..end]);
                }
                pos = end;
            }
        } else {
            for OpEq(op) in &self.ops {
                let length = if op.length == VARIABLE_LENGTH {
                    let short = *data.get(pos).ok_or(DecodeError::Truncated {
                        needed: pos + 1,
                        available: data.len(),
                    })?;
                    pos += 1;
                    if short == 255 {
                        let long = data.get(pos..pos + 2).ok_or(DecodeError::Truncated {
                            needed: pos + 2,
                            available: data.len(),
                        })?;
                        pos += 2;
                        usize::from(u16::from_be_bytes([long[0], long[1]]))
                    } else {
                        usize::from(short)
                    }
                } else {
                    usize::from(op.length)
                };
                let value = data.get(pos..pos + length).ok_or(DecodeError::Truncated {
                    needed: pos + length,
                    available: data.len(),
                })?;
                if op.kind != FieldKind::Skip {
                    acc.apply(op.kind, value);
                }
                pos += length;
            }
        }
        let (record, rate) = acc.finish();
        Ok((record, rate, pos))
    }
}

/// Collects the fields of one record.
struct Accumulator {
    record: FlowRecord,
    export_ms: u64,
    total_bytes: Option<u64>,
    total_packets: Option<u64>,
    initiator_bytes: Option<u64>,
    initiator_packets: Option<u64>,
    has_bytes: bool,
    has_packets: bool,
    interval: Option<u64>,
    packet_interval: Option<u64>,
    packet_space: Option<u64>,
    sampling_size: Option<u64>,
    sampling_population: Option<u64>,
    probability: Option<f64>,
    icmp_type: Option<u16>,
    icmp_code: Option<u16>,
}

impl Accumulator {
    #[inline]
    fn new(template_id: u16, options: bool, export_ms: u64) -> Self {
        Self {
            record: FlowRecord {
                kind: if options {
                    RecordKind::Options
                } else {
                    RecordKind::Flow
                },
                template_id,
                ..FlowRecord::default()
            },
            export_ms,
            total_bytes: None,
            total_packets: None,
            initiator_bytes: None,
            initiator_packets: None,
            has_bytes: false,
            has_packets: false,
            interval: None,
            packet_interval: None,
            packet_space: None,
            sampling_size: None,
            sampling_population: None,
            probability: None,
            icmp_type: None,
            icmp_code: None,
        }
    }

    #[inline]
    fn apply(&mut self, kind: FieldKind, value: &[u8]) {
        let record = &mut self.record;
        match kind {
            FieldKind::Skip => {}
            FieldKind::Bytes => {
                record.bytes = be_uint(value);
                self.has_bytes = true;
            }
            FieldKind::Packets => {
                record.packets = be_uint(value);
                self.has_packets = true;
            }
            FieldKind::TotalBytes => self.total_bytes = Some(be_uint(value)),
            FieldKind::TotalPackets => self.total_packets = Some(be_uint(value)),
            FieldKind::InitiatorBytes => self.initiator_bytes = Some(be_uint(value)),
            FieldKind::InitiatorPackets => self.initiator_packets = Some(be_uint(value)),
            FieldKind::Protocol => record.protocol = be_uint(value) as u8,
            FieldKind::Tos => record.tos = be_uint(value) as u8,
            FieldKind::TcpFlags => record.tcp_flags = be_uint(value) as u8,
            FieldKind::SrcPort => record.src_port = be_uint(value) as u16,
            FieldKind::DstPort => record.dst_port = be_uint(value) as u16,
            // Templates with both IPv4 and IPv6 address fields fill the unused one with
            // zeros: an unspecified address never replaces a real one.
            FieldKind::SrcAddr => {
                if let Some(addr) = ip_from(value) {
                    if record.src_addr.is_none() || !addr.is_unspecified() {
                        record.src_addr = Some(addr);
                    }
                }
            }
            FieldKind::DstAddr => {
                if let Some(addr) = ip_from(value) {
                    if record.dst_addr.is_none() || !addr.is_unspecified() {
                        record.dst_addr = Some(addr);
                    }
                }
            }
            FieldKind::InputIf => record.input_ifindex = be_uint(value) as u32,
            FieldKind::OutputIf => record.output_ifindex = be_uint(value) as u32,
            FieldKind::SrcAs => record.src_as = be_uint(value) as u32,
            FieldKind::DstAs => record.dst_as = be_uint(value) as u32,
            FieldKind::StartUptimeMs | FieldKind::StartMs => record.start_ms = Some(be_uint(value)),
            FieldKind::EndUptimeMs | FieldKind::EndMs => record.end_ms = Some(be_uint(value)),
            FieldKind::StartSeconds => record.start_ms = Some(be_uint(value).saturating_mul(1000)),
            FieldKind::EndSeconds => record.end_ms = Some(be_uint(value).saturating_mul(1000)),
            FieldKind::StartNtp => record.start_ms = ntp_ms(value),
            FieldKind::EndNtp => record.end_ms = ntp_ms(value),
            FieldKind::StartDeltaUs => {
                record.start_ms = Some(self.export_ms.saturating_sub(be_uint(value) / 1000))
            }
            FieldKind::EndDeltaUs => {
                record.end_ms = Some(self.export_ms.saturating_sub(be_uint(value) / 1000))
            }
            FieldKind::IcmpTypeCode => {
                let type_code = be_uint(value);
                self.icmp_type = Some(((type_code >> 8) & 0xFF) as u16);
                self.icmp_code = Some((type_code & 0xFF) as u16);
            }
            FieldKind::IcmpType => self.icmp_type = Some(be_uint(value) as u16),
            FieldKind::IcmpCode => self.icmp_code = Some(be_uint(value) as u16),
            FieldKind::SamplingInterval => self.interval = Some(be_uint(value)),
            FieldKind::SamplerId => record.sampler_id = be_uint(value),
            FieldKind::PacketInterval => self.packet_interval = Some(be_uint(value)),
            FieldKind::PacketSpace => self.packet_space = Some(be_uint(value)),
            FieldKind::SamplingSize => self.sampling_size = Some(be_uint(value)),
            FieldKind::SamplingPopulation => self.sampling_population = Some(be_uint(value)),
            FieldKind::SamplingProbability => {
                if value.len() == 8 {
                    self.probability = Some(f64::from_bits(be_uint(value)));
                } else if value.len() == 4 {
                    self.probability = Some(f64::from(f32::from_bits(be_uint(value) as u32)));
                }
            }
            FieldKind::SrcVlan => record.src_vlan = be_uint(value) as u16,
            FieldKind::DstVlan => record.dst_vlan = be_uint(value) as u16,
            FieldKind::Ttl => record.ttl = be_uint(value) as u8,
            FieldKind::FragmentFlags => {
                // IANA fragmentFlags numbers its bits from the most significant, as RFC 791
                // does the IPv4 flags: bit 1 "Don't Fragment" is 0x40, bit 2 "More
                // Fragments" 0x20; bits 3-7 are "don't care". A set MF marks a fragment (the
                // first and middle ones; a last fragment, MF clear, is seen only through its
                // offset). DF, on most TCP traffic, is not a fragment.
                record.fragmented = be_uint(value) & FRAGMENT_FLAGS_MF != 0;
            }
        }
    }

    /// The record with fallbacks applied, and the sampling rate it states (1 in N).
    #[inline]
    fn finish(mut self) -> (FlowRecord, Option<u32>) {
        if !self.has_bytes {
            if let Some(bytes) = self.total_bytes.or(self.initiator_bytes) {
                self.record.bytes = bytes;
            }
        }
        if !self.has_packets {
            if let Some(packets) = self.total_packets.or(self.initiator_packets) {
                self.record.packets = packets;
            }
        }
        // ICMP type/code go into the ports (the TrafficRecord convention) for ICMP only;
        // firewalls (Cisco ASA) export the ICMP elements in every record.
        let record = &mut self.record;
        if matches!(record.protocol, 1 | 58) && record.src_port == 0 && record.dst_port == 0 {
            record.src_port = self.icmp_type.unwrap_or(0);
            record.dst_port = self.icmp_code.unwrap_or(0);
        }
        let rate = self.sampling_rate();
        if let Some(rate) = rate {
            self.record.sampling_rate = rate;
        }
        (self.record, rate)
    }

    /// The "1 in N" rate the sampling elements describe, if any.
    fn sampling_rate(&self) -> Option<u32> {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(interval) = self.interval.filter(|&n| n > 0) {
            return Some(clamp(interval));
        }
        if let (Some(size), Some(population)) = (self.sampling_size, self.sampling_population) {
            if size > 0 && population >= size {
                return Some(clamp(population / size).max(1));
            }
        }
        // Systematic count-based sampling: `interval` packets selected, then `space` skipped.
        if let (Some(selected), Some(space)) = (self.packet_interval, self.packet_space) {
            if let Some(rate) = selected.saturating_add(space).checked_div(selected) {
                return Some(clamp(rate).max(1));
            }
        }
        if let Some(probability) = self.probability {
            if probability > 0.0 && probability <= 1.0 {
                let rate = (1.0 / probability).round();
                return Some(if rate >= f64::from(u32::MAX) {
                    u32::MAX
                } else {
                    rate as u32
                });
            }
        }
        None
    }
}

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address; other lengths are not an address.
#[inline]
fn ip_from(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => Some(IpAddr::from([value[0], value[1], value[2], value[3]])),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(value);
            Some(IpAddr::from(octets))
        }
        _ => None,
    }
}

/// Milliseconds since the Unix epoch from an NTP-format timestamp (RFC 7011 dateTimeMicro/Nano).
fn ntp_ms(value: &[u8]) -> Option<u64> {
    const NTP_TO_UNIX_SECONDS: u64 = 2_208_988_800;
    if value.len() != 8 {
        return None;
    }
    let raw = be_uint(value);
    let seconds = (raw >> 32).checked_sub(NTP_TO_UNIX_SECONDS)?;
    let fraction_ms = ((raw & 0xFFFF_FFFF) * 1000) >> 32;
    Some(seconds * 1000 + fraction_ms)
}

/// Per-datagram statistics of template handling, shared by NetFlow v9 and IPFIX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TemplateStats {
    /// Templates and options templates learned or refreshed.
    pub templates_learned: u32,
    /// Templates withdrawn (IPFIX).
    pub templates_withdrawn: u32,
    /// Template records rejected as malformed (the rest of their set is skipped).
    pub templates_rejected: u32,
    /// Data sets whose template is unknown (data before its template): skipped.
    pub sets_without_template: u32,
    /// Bytes in data sets without a template.
    pub bytes_without_template: u32,
    /// Flow records decoded.
    pub flow_records: u32,
    /// Options-data records decoded.
    pub options_records: u32,
    /// Data sets whose last record was cut short (the rest of the set is skipped).
    pub truncated_records: u32,
    /// Sets with a reserved id that were skipped.
    pub reserved_sets: u32,
    /// Trailing padding bytes ignored (e.g. Palo Alto's zero fill).
    pub padding_bytes: u32,
    /// Sampling rates learned from options data.
    pub sampling_rates_learned: u32,
}

/// The sampler a rate is stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplerKey {
    exporter: IpAddr,
    protocol: ExportProtocol,
    domain: u32,
    sampler_id: u64,
}

/// Templates and learned sampling rates of every NetFlow v9 / IPFIX exporter.
#[derive(Debug, Clone)]
pub struct TemplateCache {
    templates: HashMap<TemplateKey, Arc<Template>>,
    sampling: HashMap<SamplerKey, u32>,
    max_templates: usize,
    max_samplers: usize,
    evictions: u64,
}

impl Default for TemplateCache {
    /// An empty cache with [`DEFAULT_MAX_TEMPLATES`] and [`DEFAULT_MAX_SAMPLERS`].
    fn default() -> Self {
        Self::with_limits(DEFAULT_MAX_TEMPLATES, DEFAULT_MAX_SAMPLERS)
    }
}

/// Why a template state file could not be saved or loaded: the state store's error, which
/// names the file (a format problem is [`StoreError::Corrupt`] with a [`TemplateFormatError`]
/// inside).
pub type TemplateStateError = StoreError;

/// Why the content of a template state file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TemplateFormatError {
    /// Not JSON of the expected shape.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// A format version this agent does not load.
    #[error(
        "format version {found}, this agent loads version {STATE_FORMAT_VERSION} only{}",
        if *found == 1 {
            " (version 1 keys templates without the protocol, so NetFlow v9 and IPFIX \
             templates with one id cannot be told apart; exporters resend their templates)"
        } else {
            ""
        }
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
    },
}

/// Only the version of a state file, read before the rest.
#[derive(Deserialize)]
struct StateVersion {
    version: u32,
}

/// On-disk form of the cache.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredCache {
    version: u32,
    templates: Vec<StoredTemplate>,
    sampling: Vec<StoredRate>,
}

/// On-disk form of one template.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredTemplate {
    key: TemplateKey,
    options: bool,
    scope_fields: u16,
    fields: Vec<TemplateField>,
}

/// On-disk form of one learned sampling rate.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRate {
    exporter: IpAddr,
    protocol: ExportProtocol,
    domain: u32,
    sampler_id: u64,
    rate: u32,
}

impl TemplateCache {
    /// An empty cache holding at most `max_templates` templates and `max_samplers` sampling
    /// rates (each at least 1).
    pub fn with_limits(max_templates: usize, max_samplers: usize) -> Self {
        Self {
            templates: HashMap::new(),
            sampling: HashMap::new(),
            max_templates: max_templates.max(1),
            max_samplers: max_samplers.max(1),
            evictions: 0,
        }
    }

    /// Number of templates known.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// True when no template is known.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Number of templates known for one exporter (for the "templates known" metric).
    pub fn templates_of(&self, exporter: IpAddr) -> usize {
        self.templates
            .keys()
            .filter(|key| key.exporter == exporter)
            .count()
    }

    /// Templates evicted because the cache was full, since it was created.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The template stored under `key`.
    pub fn get(&self, key: &TemplateKey) -> Option<&Template> {
        self.templates.get(key).map(Arc::as_ref)
    }

    /// Stores (or refreshes) a template, evicting another one if the cache is full.
    pub fn insert(&mut self, key: TemplateKey, template: Template) {
        if !self.templates.contains_key(&key) && self.templates.len() >= self.max_templates {
            if let Some(victim) = self.templates.keys().next().copied() {
                self.templates.remove(&victim);
                self.evictions += 1;
            }
        }
        self.templates.insert(key, Arc::new(template));
    }

    /// Removes one template; true if it was known.
    pub fn withdraw(&mut self, key: &TemplateKey) -> bool {
        self.templates.remove(key).is_some()
    }

    /// Removes every template of an exporter's domain, over `protocol`, whose kind matches
    /// (`options`); returns how many were removed (IPFIX "withdraw all").
    pub fn withdraw_all(
        &mut self,
        exporter: IpAddr,
        protocol: ExportProtocol,
        domain: u32,
        options: bool,
    ) -> usize {
        let before = self.templates.len();
        self.templates.retain(|key, template| {
            !(key.exporter == exporter
                && key.protocol == protocol
                && key.domain == domain
                && template.options == options)
        });
        before - self.templates.len()
    }

    /// Records the sampling rate an exporter announced over `protocol` for a sampler of a
    /// domain (sampler id 0 = none named).
    pub fn learn_sampling(
        &mut self,
        exporter: IpAddr,
        protocol: ExportProtocol,
        domain: u32,
        sampler_id: u64,
        rate: u32,
    ) {
        if rate == 0 {
            return;
        }
        for sampler_id in [sampler_id, ANY_SAMPLER] {
            let key = SamplerKey {
                exporter,
                protocol,
                domain,
                sampler_id,
            };
            if !self.sampling.contains_key(&key) && self.sampling.len() >= self.max_samplers {
                if let Some(victim) = self.sampling.keys().next().copied() {
                    self.sampling.remove(&victim);
                }
            }
            self.sampling.insert(key, rate);
        }
    }

    /// The sampling rate learned over `protocol` for a sampler of an exporter's domain,
    /// falling back to the last rate learned for that domain; 0 when none is known.
    pub fn sampling_rate(
        &self,
        exporter: IpAddr,
        protocol: ExportProtocol,
        domain: u32,
        sampler_id: u64,
    ) -> u32 {
        if self.sampling.is_empty() {
            return 0;
        }
        let exact = SamplerKey {
            exporter,
            protocol,
            domain,
            sampler_id,
        };
        let any = SamplerKey {
            sampler_id: ANY_SAMPLER,
            ..exact
        };
        self.sampling
            .get(&exact)
            .or_else(|| self.sampling.get(&any))
            .copied()
            .unwrap_or(0)
    }

    /// The cache as the JSON of a state file (format [`STATE_FORMAT_VERSION`]).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut templates: Vec<StoredTemplate> = self
            .templates
            .iter()
            .map(|(key, template)| StoredTemplate {
                key: *key,
                options: template.options,
                scope_fields: template.scope_fields,
                fields: template.fields.clone(),
            })
            .collect();
        templates.sort_by_key(|stored| {
            (
                stored.key.exporter,
                stored.key.protocol,
                stored.key.domain,
                stored.key.template_id,
            )
        });
        let mut sampling: Vec<StoredRate> = self
            .sampling
            .iter()
            .map(|(key, rate)| StoredRate {
                exporter: key.exporter,
                protocol: key.protocol,
                domain: key.domain,
                sampler_id: key.sampler_id,
                rate: *rate,
            })
            .collect();
        sampling.sort_by_key(|stored| {
            (
                stored.exporter,
                stored.protocol,
                stored.domain,
                stored.sampler_id,
            )
        });
        serde_json::to_vec(&StoredCache {
            version: STATE_FORMAT_VERSION,
            templates,
            sampling,
        })
    }

    /// A cache (default limits) from the JSON of a state file. Templates that no longer
    /// validate are dropped; content that is not state of format [`STATE_FORMAT_VERSION`] is
    /// an error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TemplateFormatError> {
        // The version is read first, so that an older file is reported as such rather than as
        // a missing field.
        let version: StateVersion = serde_json::from_slice(bytes)?;
        if version.version != STATE_FORMAT_VERSION {
            return Err(TemplateFormatError::UnsupportedVersion {
                found: version.version,
            });
        }
        let state: StoredCache = serde_json::from_slice(bytes)?;
        let mut cache = Self::default();
        for stored in state.templates {
            if let Ok(template) = Template::new(stored.fields, stored.scope_fields, stored.options)
            {
                cache.insert(stored.key, template);
            }
        }
        for stored in state.sampling {
            let key = SamplerKey {
                exporter: stored.exporter,
                protocol: stored.protocol,
                domain: stored.domain,
                sampler_id: stored.sampler_id,
            };
            if stored.rate > 0 && cache.sampling.len() < cache.max_samplers {
                cache.sampling.insert(key, stored.rate);
            }
        }
        Ok(cache)
    }

    /// Writes the cache to `path` durably ([`StateFile::save`]: temporary file, fsync,
    /// rename, fsync of the directory).
    pub fn save(&self, path: &Path) -> Result<(), TemplateStateError> {
        let file = StateFile::new(path);
        let json = self.to_json().map_err(|error| StoreError::Encode {
            path: path.to_owned(),
            source: error.into(),
        })?;
        file.save(&json)
    }

    /// Reads a cache written by [`save`](Self::save), with the default limits. A missing,
    /// unreadable or corrupt file (or one of another format version) is an error naming it;
    /// the file is left in place (the collector sets it aside instead, see
    /// [`StateFile::load`]).
    pub fn load(path: &Path) -> Result<Self, TemplateStateError> {
        match StateFile::new(path).load(OnBadFile::Fail, Self::from_json)? {
            crate::state::store::Loaded::Found(cache) => Ok(cache),
            _ => Err(StoreError::Read {
                path: path.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
        }
    }

    /// Decodes one data set through its template, appending the records to `out`. Unknown
    /// templates and cut-short records are counted in `stats`; sampling rates found in options
    /// records are learned; flow records without their own rate get the learned one.
    pub(crate) fn decode_data_set(
        &mut self,
        key: TemplateKey,
        body: &[u8],
        export_ms: u64,
        out: &mut Vec<FlowRecord>,
        stats: &mut TemplateStats,
    ) {
        let Some(template) = self.templates.get(&key).cloned() else {
            stats.sets_without_template += 1;
            stats.bytes_without_template = stats
                .bytes_without_template
                .saturating_add(u32::try_from(body.len()).unwrap_or(u32::MAX));
            return;
        };
        let min_len = template.min_record_len;
        // Each record consumes at least min_len >= 1 bytes: the loop is bounded by the set.
        out.reserve(body.len() / min_len);
        let mut pos = 0usize;
        let mut memo: Option<(u64, u32)> = None;
        while body.len() - pos >= min_len {
            let (mut record, rate, used) =
                match template.decode_record(key.template_id, &body[pos..], export_ms) {
                    Ok(decoded) => decoded,
                    Err(_) => {
                        stats.truncated_records += 1;
                        break;
                    }
                };
            pos += used.max(1);
            if template.options {
                stats.options_records += 1;
                if let Some(rate) = rate {
                    self.learn_sampling(
                        key.exporter,
                        key.protocol,
                        key.domain,
                        record.sampler_id,
                        rate,
                    );
                    stats.sampling_rates_learned += 1;
                    memo = None;
                }
            } else {
                stats.flow_records += 1;
                if rate.is_none() {
                    record.sampling_rate = match memo {
                        Some((sampler, rate)) if sampler == record.sampler_id => rate,
                        _ => {
                            let rate = self.sampling_rate(
                                key.exporter,
                                key.protocol,
                                key.domain,
                                record.sampler_id,
                            );
                            memo = Some((record.sampler_id, rate));
                            rate
                        }
                    };
                }
            }
            out.push(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(id: u16) -> TemplateKey {
        TemplateKey {
            exporter: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            protocol: ExportProtocol::Ipfix,
            domain: 7,
            template_id: id,
        }
    }

    fn field(id: u16, length: u16) -> TemplateField {
        TemplateField {
            id,
            length,
            enterprise: 0,
        }
    }

    fn simple_template() -> Template {
        Template::new(
            vec![
                field(8, 4),
                field(12, 4),
                field(4, 1),
                field(2, 4),
                field(1, 4),
            ],
            0,
            false,
        )
        .expect("valid")
    }

    /// NetFlow v9 datagram from source id 42: template 300 (src v4, dst v4, protocol 1 byte,
    /// packets 4, bytes 4) and/or one data record (src, dst, protocol, packets, bytes).
    fn v9_datagram(template: bool, data: Option<(u32, u32)>) -> Vec<u8> {
        let mut d = vec![0, 9, 0, 1];
        d.extend_from_slice(&[0; 12]);
        d.extend_from_slice(&42u32.to_be_bytes());
        if template {
            d.extend_from_slice(&[0, 0, 0, 28, 1, 44, 0, 5]);
            for (id, len) in [(8u16, 4u16), (12, 4), (4, 1), (2, 4), (1, 4)] {
                d.extend_from_slice(&id.to_be_bytes());
                d.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some((packets, bytes)) = data {
            d.extend_from_slice(&[1, 44, 0, 24, 198, 51, 100, 7, 10, 10, 1, 1, 6]);
            d.extend_from_slice(&packets.to_be_bytes());
            d.extend_from_slice(&bytes.to_be_bytes());
            d.extend_from_slice(&[0, 0, 0]);
        }
        d
    }

    /// IPFIX message from observation domain 42: template 300 with another layout (src v4,
    /// dst v4, packets 8 bytes, bytes 1 byte: 17 bytes, the length of a v9 record above) and/or
    /// one data record through it.
    fn ipfix_message(template: bool, data: Option<(u64, u8)>) -> Vec<u8> {
        let mut sets = Vec::new();
        if template {
            sets.extend_from_slice(&[0, 2, 0, 24, 1, 44, 0, 4]);
            for (id, len) in [(8u16, 4u16), (12, 4), (2, 8), (1, 1)] {
                sets.extend_from_slice(&id.to_be_bytes());
                sets.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some((packets, bytes)) = data {
            sets.extend_from_slice(&[1, 44, 0, 21, 198, 51, 100, 7, 10, 10, 1, 1]);
            sets.extend_from_slice(&packets.to_be_bytes());
            sets.push(bytes);
        }
        let mut m = vec![0, 10];
        m.extend_from_slice(&((16 + sets.len()) as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 100, 0, 0, 0, 1]);
        m.extend_from_slice(&42u32.to_be_bytes());
        m.extend(sets);
        m
    }

    #[test]
    fn v9_and_ipfix_templates_with_one_id_do_not_collide() {
        let exporter = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mut cache = TemplateCache::default();
        let v9 = |cache: &mut TemplateCache, d: &[u8]| {
            super::super::netflow9::decode(d, exporter, cache).expect("v9 decodes")
        };
        let ipfix = |cache: &mut TemplateCache, d: &[u8]| {
            super::super::ipfix::decode(d, exporter, cache).expect("ipfix decodes")
        };
        // One exporter announces template 300 in v9 and, with another layout, in IPFIX.
        v9(&mut cache, &v9_datagram(true, None));
        ipfix(&mut cache, &ipfix_message(true, None));

        // v9 data is decoded with the v9 template, not the IPFIX one (which reads the
        // protocol, packets and bytes fields as an 8-byte packet count: 4.3e17 packets).
        let decoded = v9(&mut cache, &v9_datagram(false, Some((7, 700))));
        assert_eq!(decoded.stats.sets_without_template, 0);
        let flow = &decoded.records[0];
        assert_eq!((flow.packets, flow.bytes, flow.protocol), (7, 700, 6));
        assert_eq!(cache.len(), 2, "two templates, one per protocol");

        // And IPFIX data with the IPFIX template, in either order of arrival.
        v9(&mut cache, &v9_datagram(true, None));
        let decoded = ipfix(&mut cache, &ipfix_message(false, Some((9, 90))));
        let flow = &decoded.records[0];
        assert_eq!((flow.packets, flow.bytes, flow.protocol), (9, 90, 0));

        // An IPFIX "withdraw all" leaves the v9 templates of the same domain alone.
        let mut withdraw = ipfix_message(false, None);
        withdraw.extend_from_slice(&[0, 2, 0, 8, 0, 2, 0, 0]);
        withdraw[3] += 8;
        let decoded = ipfix(&mut cache, &withdraw);
        assert_eq!(decoded.stats.templates_withdrawn, 1);
        let decoded = v9(&mut cache, &v9_datagram(false, Some((7, 700))));
        assert_eq!(decoded.records[0].packets, 7);
    }

    #[test]
    fn rejects_empty_and_zero_length_templates() {
        assert!(Template::new(vec![], 0, false).is_err());
        assert!(Template::new(vec![field(1, 0)], 0, false).is_err());
        assert!(Template::new(vec![field(1, 4)], 2, true).is_err());
    }

    #[test]
    fn bounded_cache_evicts() {
        let mut cache = TemplateCache::with_limits(2, 2);
        for id in 256..260 {
            cache.insert(key(id), simple_template());
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.evictions(), 2);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("templates.json");
        let mut cache = TemplateCache::default();
        cache.insert(key(300), simple_template());
        let v9 = TemplateKey {
            protocol: ExportProtocol::NetflowV9,
            ..key(300)
        };
        let other = Template::new(vec![field(1, 8)], 0, false).expect("valid");
        cache.insert(v9, other.clone());
        let (exporter, ipfix) = (key(300).exporter, ExportProtocol::Ipfix);
        cache.learn_sampling(exporter, ipfix, 7, 3, 512);
        cache.learn_sampling(exporter, ExportProtocol::NetflowV9, 7, 3, 64);
        cache.save(&path).expect("save");
        let loaded = TemplateCache::load(&path).expect("load");
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded.get(&key(300)), Some(&simple_template()));
        assert_eq!(loaded.get(&v9), Some(&other));
        assert_eq!(loaded.sampling_rate(exporter, ipfix, 7, 3), 512);
        assert_eq!(loaded.sampling_rate(exporter, ipfix, 7, 9), 512);
        assert_eq!(loaded.sampling_rate(exporter, ipfix, 8, 3), 0);
        assert_eq!(
            loaded.sampling_rate(exporter, ExportProtocol::NetflowV9, 7, 3),
            64
        );
    }

    #[test]
    fn corrupt_state_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("templates.json");
        for content in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            b"{\"version\":3,\"templates\":[],\"sampling\":[]}",
            b"[1,2,3]",
        ] {
            std::fs::write(&path, content).expect("write");
            assert!(TemplateCache::load(&path).is_err());
        }
        assert!(TemplateCache::load(&dir.path().join("missing")).is_err());
        // Structurally valid but semantically bad templates are dropped, not loaded.
        std::fs::write(
            &path,
            br#"{"version":2,"templates":[{"key":{"exporter":"192.0.2.1","protocol":"ipfix","domain":1,"template_id":256},"options":false,"scope_fields":0,"fields":[]}],"sampling":[]}"#,
        )
        .expect("write");
        assert!(TemplateCache::load(&path).expect("loads").is_empty());
    }

    #[test]
    fn a_version_1_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("flow-templates.json");
        std::fs::write(
            &path,
            br#"{"version":1,"templates":[{"key":{"exporter":"192.0.2.1","domain":1,"template_id":256},"options":false,"scope_fields":0,"fields":[{"id":2,"length":4,"enterprise":0}]}],"sampling":[{"exporter":"192.0.2.1","domain":1,"sampler_id":0,"rate":10}]}"#,
        )
        .expect("write");
        let error = TemplateCache::load(&path).expect_err("version 1 is not loaded");
        let StoreError::Corrupt { source, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(
            matches!(
                source.downcast_ref(),
                Some(TemplateFormatError::UnsupportedVersion { found: 1 })
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("flow-templates.json"), "{message}");
        assert!(message.contains("without the protocol"), "{message}");
    }

    #[test]
    fn decodes_fixed_and_variable_records() {
        let mut cache = TemplateCache::default();
        cache.insert(key(256), simple_template());
        let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 17, 0, 0, 0, 3, 0, 0, 1, 0];
        body.extend_from_slice(&[0, 0, 0]); // padding shorter than a record
        let mut out = Vec::new();
        let mut stats = TemplateStats::default();
        cache.decode_data_set(key(256), &body, 0, &mut out, &mut stats);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].packets, out[0].bytes, out[0].protocol),
            (3, 256, 17)
        );

        let var = Template::new(
            vec![field(8, 4), field(82, VARIABLE_LENGTH), field(2, 2)],
            0,
            false,
        )
        .expect("valid");
        cache.insert(key(257), var);
        let body = [
            1, 2, 3, 4, 255, 0, 3, b'a', b'b', b'c', 0, 9, 5, 6, 7, 8, 1, b'x', 0, 1,
        ];
        out.clear();
        cache.decode_data_set(key(257), &body, 0, &mut out, &mut stats);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].packets, 9);
        assert_eq!(out[1].packets, 1);
    }
}
