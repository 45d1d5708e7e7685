//! sFlow v5: datagram header, flow samples (compact and expanded), counter samples (compact
//! and expanded) with generic interface counters; everything else is skipped by its length.
//!
//! # Sampled packets
//!
//! A flow sample's packet is taken from its raw packet header record (format 1), decoded
//! through Ethernet, 802.1Q / 802.1ad / QinQ tags (the innermost VLAN is kept), MPLS label
//! stacks, IPv4 and IPv6 (extension headers walked) down to TCP/UDP ports, TCP flags and ICMP
//! type/code; header protocols 11 and 12 (IPv4 / IPv6 without a link layer) are supported.
//! When there is no decodable header, a sampled IPv4 (format 3) or IPv6 (format 4) record is
//! used instead.
//!
//! # Bytes
//!
//! Bytes are IP bytes, by this rule, first match wins:
//! 1. the sampled IP header's own length: IPv4 total length, IPv6 payload length + 40;
//! 2. the `length` of a sampled IPv4/IPv6 record (format 3/4), which is the IP packet length;
//! 3. the raw header record's `frame_length` minus the link-layer header decoded from the
//!    sampled bytes (Ethernet, tags, MPLS labels) minus 4 bytes of FCS for Ethernet (sFlow's
//!    frame length includes the FCS); for header protocols 11/12 the frame length as is.
//!
//! Packets and bytes are multiplied by the sample's sampling rate (the collector's default
//! when the sample says 0).
//!
//! # Traffic path
//!
//! [`decode_traffic`] (the collectors') gives what [`decode`] + `traffic_records` give, errors
//! and stats included, but takes a flow sample whose first record is a raw packet header
//! that decodes (the usual shape: alone, or followed by extended switch/router records)
//! straight from its bytes into a [`TrafficRecord`], with one length check of the sample's
//! fixed part and without building the [`FlowSample`]; any other sample takes the full path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::traffic::TrafficRecord;

use super::record::effective_rate;
use super::{DecodeError, Reader};

/// Smallest valid datagram: an IPv4 header with zero samples.
pub const MIN_DATAGRAM_LEN: usize = 28;
/// Most VLAN tags / MPLS labels / IPv6 extension headers walked in a sampled header.
const MAX_ENCAPSULATIONS: usize = 16;

/// A decoded sFlow v5 datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SflowDatagram {
    /// Agent address.
    pub agent: IpAddr,
    /// Sub-agent id.
    pub sub_agent_id: u32,
    /// Datagram sequence number (per agent and sub-agent; gaps mean lost datagrams).
    pub sequence: u32,
    /// Agent uptime in milliseconds.
    pub uptime_ms: u32,
    /// Number of samples the header announces.
    pub sample_count: u32,
    /// Flow samples (compact and expanded) in datagram order.
    pub flows: Vec<FlowSample>,
    /// Counter samples (compact and expanded) in datagram order.
    pub counters: Vec<CounterSample>,
    /// What was decoded and what was skipped.
    pub stats: SflowStats,
}

/// Counts of what a datagram held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SflowStats {
    /// Compact flow samples (format 1).
    pub flow_samples: u32,
    /// Expanded flow samples (format 3).
    pub expanded_flow_samples: u32,
    /// Compact counter samples (format 2).
    pub counter_samples: u32,
    /// Expanded counter samples (format 4).
    pub expanded_counter_samples: u32,
    /// Samples of other formats or enterprises (drop notifications, ...), skipped.
    pub samples_skipped: u32,
    /// Flow records skipped (extended records, unknown formats).
    pub flow_records_skipped: u32,
    /// Counter records skipped (other than generic interface counters).
    pub counter_records_skipped: u32,
    /// Flow samples without a decodable IP packet (not turned into traffic).
    pub samples_without_packet: u32,
}

/// One flow sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowSample {
    /// True for an expanded flow sample (format 3).
    pub expanded: bool,
    /// Sample sequence number.
    pub sequence: u32,
    /// Source id type (0 = ifIndex).
    pub source_id_type: u32,
    /// Source id index.
    pub source_id_index: u32,
    /// 1 in N sampling rate.
    pub sampling_rate: u32,
    /// Total packets that could have been sampled.
    pub sample_pool: u32,
    /// Packets dropped by the agent for lack of resources.
    pub drops: u32,
    /// Input ifIndex (compact samples: lower 30 bits).
    pub input_ifindex: u32,
    /// Output ifIndex (compact samples: lower 30 bits).
    pub output_ifindex: u32,
    /// Raw header record's frame length (0 when there was none).
    pub frame_length: u32,
    /// VLANs from an extended switch record (0 when absent).
    pub src_vlan: u32,
    /// Destination VLAN from an extended switch record (0 when absent).
    pub dst_vlan: u32,
    /// The sampled packet, when one could be decoded.
    pub packet: Option<SampledPacket>,
}

/// The facts of one sampled packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampledPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (for IPv6 the upper-layer protocol after extension headers).
    pub protocol: u8,
    /// Source port (ICMP: type).
    pub src_port: u16,
    /// Destination port (ICMP: code).
    pub dst_port: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// IP bytes of the packet (see the module docs).
    pub ip_bytes: u32,
    /// TTL / hop limit (0 when unknown).
    pub ttl: u8,
    /// True when the packet is an IP fragment.
    pub fragment: bool,
    /// Innermost 802.1Q VLAN id in the sampled header (0 when untagged).
    pub vlan: u16,
}

/// One counter sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterSample {
    /// True for an expanded counter sample (format 4).
    pub expanded: bool,
    /// Sample sequence number.
    pub sequence: u32,
    /// Source id type (0 = ifIndex).
    pub source_id_type: u32,
    /// Source id index.
    pub source_id_index: u32,
    /// Generic interface counters, when the sample carried them.
    pub interface: Option<InterfaceCounters>,
}

/// Generic interface counters (counter record format 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceCounters {
    /// ifIndex.
    pub if_index: u32,
    /// ifType.
    pub if_type: u32,
    /// ifSpeed in bits/s.
    pub if_speed: u64,
    /// 0 unknown, 1 full duplex, 2 half duplex, 3 in, 4 out.
    pub if_direction: u32,
    /// Bit 0 admin up, bit 1 oper up.
    pub if_status: u32,
    /// ifInOctets.
    pub in_octets: u64,
    /// ifInUcastPkts.
    pub in_unicast: u32,
    /// ifInMulticastPkts.
    pub in_multicast: u32,
    /// ifInBroadcastPkts.
    pub in_broadcast: u32,
    /// ifInDiscards.
    pub in_discards: u32,
    /// ifInErrors.
    pub in_errors: u32,
    /// ifInUnknownProtos.
    pub in_unknown_protos: u32,
    /// ifOutOctets.
    pub out_octets: u64,
    /// ifOutUcastPkts.
    pub out_unicast: u32,
    /// ifOutMulticastPkts.
    pub out_multicast: u32,
    /// ifOutBroadcastPkts.
    pub out_broadcast: u32,
    /// ifOutDiscards.
    pub out_discards: u32,
    /// ifOutErrors.
    pub out_errors: u32,
    /// ifPromiscuousMode.
    pub promiscuous_mode: u32,
}

impl SflowDatagram {
    /// The sampled packets as traffic, scaled by each sample's sampling rate
    /// (`default_sampling_rate` when a sample says 0; 0 counts as 1).
    pub fn traffic_records(
        &self,
        default_sampling_rate: u32,
    ) -> impl Iterator<Item = TrafficRecord> + '_ {
        self.flows
            .iter()
            .filter_map(move |sample| sample.traffic(default_sampling_rate))
    }
}

impl FlowSample {
    /// The sampled packet as traffic, scaled by the sample's sampling rate
    /// (`default_sampling_rate` when the sample says 0; 0 counts as 1); `None` without one.
    #[inline(always)]
    pub fn traffic(&self, default_sampling_rate: u32) -> Option<TrafficRecord> {
        let packet = self.packet?;
        Some(packet.traffic(effective_rate(self.sampling_rate, default_sampling_rate)))
    }
}

impl SampledPacket {
    /// The packet as traffic, scaled by `rate` (the effective sampling rate).
    #[inline(always)]
    fn traffic(&self, rate: u32) -> TrafficRecord {
        let packet = self;
        let rate = u64::from(rate);
        let mut record = TrafficRecord {
            src: packet.src,
            dst: packet.dst,
            protocol: packet.protocol,
            src_port: packet.src_port,
            dst_port: packet.dst_port,
            tcp_flags: packet.tcp_flags,
            packets: rate,
            bytes: u64::from(packet.ip_bytes) * rate,
            fragments: if packet.fragment { rate } else { 0 },
            tcp_syn_packets: 0,
            ttl: packet.ttl,
            duration_ms: 0,
        };
        if record.is_syn() {
            record.tcp_syn_packets = rate;
        }
        record
    }
}

/// What [`decode_traffic`] found in a datagram besides its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SflowSummary {
    /// Agent address.
    pub agent: IpAddr,
    /// Sub-agent id.
    pub sub_agent_id: u32,
    /// Datagram sequence number.
    pub sequence: u32,
    /// Flow samples decoded (compact and expanded, with or without a packet).
    pub flow_samples: u32,
    /// Counter samples decoded (compact and expanded).
    pub counter_samples: u32,
    /// What was decoded and what was skipped.
    pub stats: SflowStats,
}

/// The datagram header's fields.
struct Header<'a> {
    /// The agent address's 4 (IPv4) or 16 (IPv6) bytes, made an [`IpAddr`] by
    /// [`agent`](Self::agent) only for the result: an `IpAddr` built where it was read and
    /// then moved (a tag byte, 4 bytes stored at offset 1, reloaded as one word) stalled every
    /// datagram on store forwarding, ~5 % of the ingest bench datagram's decoding.
    agent: &'a [u8],
    sub_agent_id: u32,
    sequence: u32,
    uptime_ms: u32,
    sample_count: u32,
}

impl Header<'_> {
    #[inline(always)]
    fn agent(&self) -> IpAddr {
        match *self.agent {
            [a, b, c, d] => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            // 16 bytes: `read_address` gives no other length.
            _ => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(self.agent).unwrap_or_default(),
            )),
        }
    }
}

/// Where [`decode_samples`] puts each sample it decoded, in datagram order.
trait SampleSink {
    /// Takes a flow sample straight from its `body` when it can with the very outcome of
    /// [`read_flow_sample`] then [`flow`](Self::flow) (`stats` included); false to have it
    /// decoded in full and handed to `flow`.
    #[inline(always)]
    fn flow_body(&mut self, _body: &[u8], _expanded: bool, _stats: &mut SflowStats) -> bool {
        false
    }
    fn flow(&mut self, sample: FlowSample);
    fn counter(&mut self, sample: CounterSample);
}

/// Keeps every sample ([`decode`]).
struct Collect {
    flows: Vec<FlowSample>,
    counters: Vec<CounterSample>,
}

impl SampleSink for Collect {
    fn flow(&mut self, sample: FlowSample) {
        self.flows.push(sample);
    }
    fn counter(&mut self, sample: CounterSample) {
        self.counters.push(sample);
    }
}

/// Turns flow samples into traffic as they are decoded ([`decode_traffic`]). Samples are
/// counted in the stats only (the summary's sample counts are sums of them).
struct Traffic<'a> {
    out: &'a mut Vec<TrafficRecord>,
    default_sampling_rate: u32,
}

impl SampleSink for Traffic<'_> {
    /// The usual shapes (a raw header record first: alone in the live profile, followed by
    /// extended switch and router records from switches) go straight from the bytes to a
    /// record ([`raw_header_first`]) without a [`FlowSample`].
    #[inline(always)]
    fn flow_body(&mut self, body: &[u8], expanded: bool, stats: &mut SflowStats) -> bool {
        let Some(first) = raw_header_first(body, expanded) else {
            return false;
        };
        let rate = effective_rate(first.sampling_rate, self.default_sampling_rate);
        // Untagged Ethernet IPv4 (every sample of the live profile) has a push of its own:
        // merged with the other shapes, its record was built from IPv6-sized stack slots.
        if let Some((ip, fallback_len)) = untagged_ipv4(first.record) {
            let Some(packet) = parse_ipv4(ip, fallback_len, 0) else {
                return false;
            };
            stats.flow_records_skipped += first.skipped;
            self.out.push(packet.traffic(rate));
        } else {
            let (_, Some(packet)) = read_raw_header(first.record) else {
                return false;
            };
            stats.flow_records_skipped += first.skipped;
            self.out.push(packet.traffic(rate));
        }
        true
    }
    #[inline(always)]
    fn flow(&mut self, sample: FlowSample) {
        if let Some(record) = sample.traffic(self.default_sampling_rate) {
            self.out.push(record);
        }
    }
    fn counter(&mut self, _sample: CounterSample) {}
}

/// Decodes one sFlow v5 datagram.
pub fn decode(datagram: &[u8]) -> Result<SflowDatagram, DecodeError> {
    let mut stats = SflowStats::default();
    let mut samples = Collect {
        flows: Vec::new(),
        counters: Vec::new(),
    };
    let header = decode_samples(datagram, &mut samples, &mut stats)?;
    Ok(SflowDatagram {
        agent: header.agent(),
        sub_agent_id: header.sub_agent_id,
        sequence: header.sequence,
        uptime_ms: header.uptime_ms,
        sample_count: header.sample_count,
        flows: samples.flows,
        counters: samples.counters,
        stats,
    })
}

/// Decodes one sFlow v5 datagram and appends its sampled packets to `out` as traffic: the
/// same records in the same order as `decode(datagram)?.traffic_records(default_sampling_rate)`
/// (the same checks, the same errors), without keeping the samples. On an error `out` is left
/// as it was.
pub fn decode_traffic(
    datagram: &[u8],
    default_sampling_rate: u32,
    out: &mut Vec<TrafficRecord>,
) -> Result<SflowSummary, DecodeError> {
    let start = out.len();
    let mut stats = SflowStats::default();
    let mut traffic = Traffic {
        out,
        default_sampling_rate,
    };
    match decode_samples(datagram, &mut traffic, &mut stats) {
        // No overflow: each sample is counted once, and there are at most u32::MAX of them.
        Ok(header) => Ok(SflowSummary {
            agent: header.agent(),
            sub_agent_id: header.sub_agent_id,
            sequence: header.sequence,
            flow_samples: stats.flow_samples + stats.expanded_flow_samples,
            counter_samples: stats.counter_samples + stats.expanded_counter_samples,
            stats,
        }),
        Err(error) => {
            traffic.out.truncate(start);
            Err(error)
        }
    }
}

/// Decodes the datagram header and hands every flow and counter sample to `sink`.
#[inline]
fn decode_samples<'a, S: SampleSink>(
    datagram: &'a [u8],
    sink: &mut S,
    stats: &mut SflowStats,
) -> Result<Header<'a>, DecodeError> {
    let mut reader = Reader::new(datagram);
    let version = reader.u32()?;
    if version != 5 {
        return Err(DecodeError::BadVersion(version));
    }
    let agent = read_address(&mut reader)?;
    let sub_agent_id = reader.u32()?;
    let sequence = reader.u32()?;
    let uptime_ms = reader.u32()?;
    let sample_count = reader.u32()?;
    // Every sample has at least an 8-byte header.
    if u64::from(sample_count) * 8 > reader.remaining() as u64 {
        return Err(DecodeError::BadCount {
            what: "sFlow samples larger than the datagram",
            count: sample_count,
        });
    }
    for _ in 0..sample_count {
        let data_format = reader.u32()?;
        let length = reader.u32()? as usize;
        let body = reader.take(length)?;
        let (enterprise, format) = (data_format >> 12, data_format & 0xFFF);
        if enterprise != 0 {
            stats.samples_skipped += 1;
            continue;
        }
        match format {
            1 | 3 => {
                let expanded = format == 3;
                if !sink.flow_body(body, expanded, stats) {
                    let sample = read_flow_sample(body, expanded, stats)?;
                    if sample.packet.is_none() {
                        stats.samples_without_packet += 1;
                    }
                    sink.flow(sample);
                }
                if expanded {
                    stats.expanded_flow_samples += 1;
                } else {
                    stats.flow_samples += 1;
                }
            }
            2 | 4 => {
                let sample = read_counter_sample(body, format == 4, stats)?;
                if format == 4 {
                    stats.expanded_counter_samples += 1;
                } else {
                    stats.counter_samples += 1;
                }
                sink.counter(sample);
            }
            _ => stats.samples_skipped += 1,
        }
    }
    Ok(Header {
        agent,
        sub_agent_id,
        sequence,
        uptime_ms,
        sample_count,
    })
}

/// Reads an sFlow address (type 1 IPv4, type 2 IPv6): its 4 or 16 bytes.
#[inline(always)]
fn read_address<'a>(reader: &mut Reader<'a>) -> Result<&'a [u8], DecodeError> {
    match reader.u32()? {
        1 => reader.take(4),
        2 => reader.take(16),
        other => Err(DecodeError::BadAddressType(other)),
    }
}

/// Checks that `count` records of at least 8 bytes can fit in what is left.
#[inline(always)]
fn check_record_count(reader: &Reader<'_>, count: u32) -> Result<(), DecodeError> {
    if u64::from(count) * 8 > reader.remaining() as u64 {
        return Err(DecodeError::BadCount {
            what: "sFlow records larger than their sample",
            count,
        });
    }
    Ok(())
}

/// A big-endian u32 at `at` of a fixed-size chunk (no bounds check once inlined).
#[inline(always)]
fn be_u32<const N: usize>(bytes: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A flow sample whose first record is a raw packet header.
struct RawHeaderFirst<'a> {
    sampling_rate: u32,
    /// The raw packet header record.
    record: &'a [u8],
    /// Records that count as skipped once the header gave a packet.
    skipped: u32,
}

/// The sampling rate and raw header record of a flow sample body whose first record is a
/// raw packet header (format 1), and whose other records are all present: read after one
/// length check of the fixed part instead of a checked read per field, without the sample's
/// other fields. When its header decodes, [`read_flow_sample`] finds that packet (and adds
/// `skipped` to the stats). `None` for anything else (no records, another record first, a
/// short record), which [`read_flow_sample`] then decodes in full, errors included.
#[inline(always)]
fn raw_header_first(body: &[u8], expanded: bool) -> Option<RawHeaderFirst<'_>> {
    // The fixed part ends with the record count: 32 bytes compact, 44 expanded (whose source
    // id is two words and whose input and output are (format, value) pairs).
    let (sampling_rate, record_count, records) = if expanded {
        let (fixed, records) = body.split_first_chunk::<44>()?;
        (be_u32(fixed, 12), be_u32(fixed, 40), records)
    } else {
        let (fixed, records) = body.split_first_chunk::<32>()?;
        (be_u32(fixed, 8), be_u32(fixed, 28), records)
    };
    let (record_head, rest) = records.split_first_chunk::<8>()?;
    if record_count == 0 || be_u32(record_head, 0) != 1 {
        return None;
    }
    let record_length = be_u32(record_head, 4) as usize;
    let record = rest.get(..record_length)?;
    // The other records only count once a packet is known: another raw header or an unknown
    // record is skipped, sampled IPv4/IPv6 (3, 4) and extended switch (1001) records are not.
    // Every record takes 8 bytes or more, so all of them being present is what
    // `check_record_count` checks too.
    let mut rest = rest.get(record_length..)?;
    let mut skipped = 0;
    for _ in 1..record_count {
        let (record_head, after) = rest.split_first_chunk::<8>()?;
        rest = after.get(be_u32(record_head, 4) as usize..)?;
        if !matches!(be_u32(record_head, 0), 3 | 4 | 1001) {
            skipped += 1;
        }
    }
    Some(RawHeaderFirst {
        sampling_rate,
        record,
        skipped,
    })
}

/// The IP packet of a raw header record of an untagged Ethernet frame of IPv4, and its
/// length by the frame rule: what [`read_raw_header`] hands [`parse_ipv4`] for it.
#[inline(always)]
fn untagged_ipv4(record: &[u8]) -> Option<(&[u8], u32)> {
    let (fields, rest) = record.split_first_chunk::<16>()?;
    let header = rest.get(..be_u32(fields, 12) as usize).unwrap_or(rest);
    let (ethernet, ip) = header.split_first_chunk::<14>()?;
    if be_u32(fields, 0) != 1 || ethernet[12..] != [0x08, 0x00] {
        return None;
    }
    Some((ip, be_u32(fields, 4).saturating_sub(14 + 4)))
}

/// Decodes a flow sample body (compact or expanded).
#[inline(always)]
fn read_flow_sample(
    body: &[u8],
    expanded: bool,
    stats: &mut SflowStats,
) -> Result<FlowSample, DecodeError> {
    let mut reader = Reader::new(body);
    let mut sample = FlowSample {
        expanded,
        sequence: reader.u32()?,
        ..FlowSample::default()
    };
    if expanded {
        sample.source_id_type = reader.u32()?;
        sample.source_id_index = reader.u32()?;
    } else {
        let source = reader.u32()?;
        sample.source_id_type = source >> 24;
        sample.source_id_index = source & 0x00FF_FFFF;
    }
    sample.sampling_rate = reader.u32()?;
    sample.sample_pool = reader.u32()?;
    sample.drops = reader.u32()?;
    if expanded {
        let _input_format = reader.u32()?;
        sample.input_ifindex = reader.u32()?;
        let _output_format = reader.u32()?;
        sample.output_ifindex = reader.u32()?;
    } else {
        sample.input_ifindex = reader.u32()? & 0x3FFF_FFFF;
        sample.output_ifindex = reader.u32()? & 0x3FFF_FFFF;
    }
    let record_count = reader.u32()?;
    check_record_count(&reader, record_count)?;
    let mut sampled_record: Option<SampledPacket> = None;
    for _ in 0..record_count {
        let data_format = reader.u32()?;
        let length = reader.u32()? as usize;
        let record = reader.take(length)?;
        match (data_format >> 12, data_format & 0xFFF) {
            (0, 1) => {
                if sample.packet.is_none() {
                    let (frame_length, packet) = read_raw_header(record);
                    sample.frame_length = frame_length;
                    sample.packet = packet;
                } else {
                    stats.flow_records_skipped += 1;
                }
            }
            (0, 3) => sampled_record = read_sampled_ipv4(record).or(sampled_record),
            (0, 4) => sampled_record = read_sampled_ipv6(record).or(sampled_record),
            (0, 1001) => {
                let mut switch = Reader::new(record);
                if let (Ok(src_vlan), Ok(_), Ok(dst_vlan)) =
                    (switch.u32(), switch.u32(), switch.u32())
                {
                    sample.src_vlan = src_vlan;
                    sample.dst_vlan = dst_vlan;
                }
            }
            _ => stats.flow_records_skipped += 1,
        }
    }
    if sample.packet.is_none() {
        sample.packet = sampled_record;
    }
    Ok(sample)
}

/// Decodes a counter sample body (compact or expanded).
fn read_counter_sample(
    body: &[u8],
    expanded: bool,
    stats: &mut SflowStats,
) -> Result<CounterSample, DecodeError> {
    let mut reader = Reader::new(body);
    let mut sample = CounterSample {
        expanded,
        sequence: reader.u32()?,
        ..CounterSample::default()
    };
    if expanded {
        sample.source_id_type = reader.u32()?;
        sample.source_id_index = reader.u32()?;
    } else {
        let source = reader.u32()?;
        sample.source_id_type = source >> 24;
        sample.source_id_index = source & 0x00FF_FFFF;
    }
    let record_count = reader.u32()?;
    check_record_count(&reader, record_count)?;
    for _ in 0..record_count {
        let data_format = reader.u32()?;
        let length = reader.u32()? as usize;
        let record = reader.take(length)?;
        if data_format == 1 {
            sample.interface = Some(read_interface_counters(record)?);
        } else {
            stats.counter_records_skipped += 1;
        }
    }
    Ok(sample)
}

/// Decodes generic interface counters (88 bytes).
fn read_interface_counters(record: &[u8]) -> Result<InterfaceCounters, DecodeError> {
    let mut r = Reader::new(record);
    Ok(InterfaceCounters {
        if_index: r.u32()?,
        if_type: r.u32()?,
        if_speed: r.u64()?,
        if_direction: r.u32()?,
        if_status: r.u32()?,
        in_octets: r.u64()?,
        in_unicast: r.u32()?,
        in_multicast: r.u32()?,
        in_broadcast: r.u32()?,
        in_discards: r.u32()?,
        in_errors: r.u32()?,
        in_unknown_protos: r.u32()?,
        out_octets: r.u64()?,
        out_unicast: r.u32()?,
        out_multicast: r.u32()?,
        out_broadcast: r.u32()?,
        out_discards: r.u32()?,
        out_errors: r.u32()?,
        promiscuous_mode: r.u32()?,
    })
}

/// Decodes a sampled IPv4 record (format 3).
#[inline(always)]
fn read_sampled_ipv4(record: &[u8]) -> Option<SampledPacket> {
    let mut r = Reader::new(record);
    let length = r.u32().ok()?;
    let protocol = r.u32().ok()? as u8;
    let src = IpAddr::V4(Ipv4Addr::from(r.array::<4>().ok()?));
    let dst = IpAddr::V4(Ipv4Addr::from(r.array::<4>().ok()?));
    let src_port = r.u32().ok()? as u16;
    let dst_port = r.u32().ok()? as u16;
    let tcp_flags = r.u32().ok()? as u8;
    Some(SampledPacket {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        ip_bytes: length,
        ttl: 0,
        fragment: false,
        vlan: 0,
    })
}

/// Decodes a sampled IPv6 record (format 4).
#[inline(always)]
fn read_sampled_ipv6(record: &[u8]) -> Option<SampledPacket> {
    let mut r = Reader::new(record);
    let length = r.u32().ok()?;
    let protocol = r.u32().ok()? as u8;
    let src = IpAddr::V6(Ipv6Addr::from(r.array::<16>().ok()?));
    let dst = IpAddr::V6(Ipv6Addr::from(r.array::<16>().ok()?));
    let src_port = r.u32().ok()? as u16;
    let dst_port = r.u32().ok()? as u16;
    let tcp_flags = r.u32().ok()? as u8;
    Some(SampledPacket {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        ip_bytes: length,
        ttl: 0,
        fragment: false,
        vlan: 0,
    })
}

/// Decodes a raw packet header record (format 1): returns the frame length and the packet
/// when its IP header could be decoded.
#[inline(always)]
fn read_raw_header(record: &[u8]) -> (u32, Option<SampledPacket>) {
    // Header protocol, frame length, bytes stripped, header length.
    let Some((fields, rest)) = record.split_first_chunk::<16>() else {
        return (0, None);
    };
    let (header_protocol, frame_length) = (be_u32(fields, 0), be_u32(fields, 4));
    // The header may be announced longer than the record: use what is there.
    let header = rest.get(..be_u32(fields, 12) as usize).unwrap_or(rest);
    let packet = match header_protocol {
        1 => parse_ethernet(header, frame_length),
        11 => parse_ipv4(header, frame_length, 0),
        12 => parse_ipv6(header, frame_length, 0),
        _ => None,
    };
    (frame_length, packet)
}

/// Decodes an Ethernet frame down to IP; `frame_length` includes the 4-byte FCS.
#[inline(always)]
fn parse_ethernet(frame: &[u8], frame_length: u32) -> Option<SampledPacket> {
    let mut offset = 12usize;
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    offset += 2;
    let mut vlan = 0u16;
    for _ in 0..MAX_ENCAPSULATIONS {
        match ethertype {
            0x8100 | 0x88A8 | 0x9100 => {
                let tag = frame.get(offset..offset + 4)?;
                vlan = u16::from_be_bytes([tag[0], tag[1]]) & 0x0FFF;
                ethertype = u16::from_be_bytes([tag[2], tag[3]]);
                offset += 4;
            }
            0x8847 | 0x8848 => {
                let mut bottom = false;
                for _ in 0..MAX_ENCAPSULATIONS {
                    let label = frame.get(offset..offset + 4)?;
                    offset += 4;
                    if label[2] & 0x01 != 0 {
                        bottom = true;
                        break;
                    }
                }
                if !bottom {
                    return None;
                }
                ethertype = match frame.get(offset)? >> 4 {
                    4 => 0x0800,
                    6 => 0x86DD,
                    _ => return None,
                };
            }
            _ => break,
        }
    }
    // IP bytes when the IP header has no usable length: frame minus L2 headers minus FCS.
    let fallback = frame_length.saturating_sub(offset as u32 + 4);
    let ip = frame.get(offset..)?;
    match ethertype {
        0x0800 => parse_ipv4(ip, fallback, vlan),
        0x86DD => parse_ipv6(ip, fallback, vlan),
        _ => None,
    }
}

/// Decodes an IPv4 header and its L4 ports; `fallback_len` is used when total length is 0.
#[inline(always)]
fn parse_ipv4(ip: &[u8], fallback_len: u32, vlan: u16) -> Option<SampledPacket> {
    let header = ip.get(..20)?;
    if header[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(header[0] & 0x0F) * 4;
    if header_len < 20 {
        return None;
    }
    let total_length = u16::from_be_bytes([header[2], header[3]]);
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let fragment_offset = flags_offset & 0x1FFF;
    let more_fragments = flags_offset & 0x2000 != 0;
    let protocol = header[9];
    // Later fragments carry no L4 header.
    let l4 = match (fragment_offset, ip.get(header_len..)) {
        (0, Some(l4)) => parse_l4(l4, protocol),
        _ => L4::default(),
    };
    // Built at once from values at hand (not field by field in place, which had the copies
    // of the packet that follow stall on store forwarding: ~10 % of a sample's decoding).
    Some(SampledPacket {
        src: IpAddr::V4(Ipv4Addr::new(
            header[12], header[13], header[14], header[15],
        )),
        dst: IpAddr::V4(Ipv4Addr::new(
            header[16], header[17], header[18], header[19],
        )),
        protocol,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        tcp_flags: l4.tcp_flags,
        ip_bytes: if total_length > 0 {
            u32::from(total_length)
        } else {
            fallback_len
        },
        ttl: header[8],
        fragment: more_fragments || fragment_offset != 0,
        vlan,
    })
}

/// Decodes an IPv6 header, walks extension headers and reads L4 ports.
#[inline(always)]
fn parse_ipv6(ip: &[u8], fallback_len: u32, vlan: u16) -> Option<SampledPacket> {
    let header = ip.get(..40)?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let payload_length = u16::from_be_bytes([header[4], header[5]]);
    let (protocol, fragment, l4) = walk_ipv6_extensions(ip, header[6]);
    // Built at once, as in `parse_ipv4` (store forwarding).
    Some(SampledPacket {
        src: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&header[8..24]).ok()?)),
        dst: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&header[24..40]).ok()?)),
        protocol,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        tcp_flags: l4.tcp_flags,
        ip_bytes: if payload_length > 0 {
            u32::from(payload_length) + 40
        } else {
            fallback_len
        },
        ttl: header[7],
        fragment,
        vlan,
    })
}

/// Walks the extension headers of the IPv6 packet `ip` from its next header `next`: the
/// upper-layer protocol (the last header named when the packet ends inside the chain),
/// whether a fragment header was seen, and the L4 ports and flags (unknown in a later
/// fragment or a truncated chain).
#[inline(always)]
fn walk_ipv6_extensions(ip: &[u8], mut next: u8) -> (u8, bool, L4) {
    let mut offset = 40usize;
    let mut fragment = false;
    let mut first_fragment = true;
    for _ in 0..MAX_ENCAPSULATIONS {
        match next {
            0 | 43 | 60 => {
                let Some(ext) = ip.get(offset..offset + 2) else {
                    return (next, fragment, L4::default());
                };
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            44 => {
                let Some(ext) = ip.get(offset..offset + 8) else {
                    return (next, fragment, L4::default());
                };
                fragment = true;
                let offset_flags = u16::from_be_bytes([ext[2], ext[3]]);
                first_fragment = offset_flags >> 3 == 0;
                next = ext[0];
                offset += 8;
            }
            51 => {
                let Some(ext) = ip.get(offset..offset + 2) else {
                    return (next, fragment, L4::default());
                };
                next = ext[0];
                offset += (usize::from(ext[1]) + 2) * 4;
            }
            _ => break,
        }
    }
    let l4 = match ip.get(offset..) {
        Some(l4) if first_fragment => parse_l4(l4, next),
        _ => L4::default(),
    };
    (next, fragment, l4)
}

/// What a packet's L4 header tells (all 0 when unknown).
#[derive(Debug, Clone, Copy, Default)]
struct L4 {
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
}

/// Reads ports (TCP, UDP, SCTP), TCP flags, or ICMP type/code.
#[inline(always)]
fn parse_l4(l4: &[u8], protocol: u8) -> L4 {
    let mut found = L4::default();
    match protocol {
        6 | 17 | 132 => {
            if let Some(ports) = l4.get(..4) {
                found.src_port = u16::from_be_bytes([ports[0], ports[1]]);
                found.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
            }
            if protocol == 6 {
                if let Some(&flags) = l4.get(13) {
                    found.tcp_flags = flags;
                }
            }
        }
        1 | 58 => {
            if let Some(icmp) = l4.get(..2) {
                found.src_port = u16::from(icmp[0]);
                found.dst_port = u16::from(icmp[1]);
            }
        }
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_u32(bytes: &mut Vec<u8>, value: u32) {
        bytes.extend_from_slice(&value.to_be_bytes());
    }

    /// A datagram with one compact flow sample holding `header` as an Ethernet raw header.
    fn datagram_with_header(protocol: u32, header: &[u8], frame_length: u32, rate: u32) -> Vec<u8> {
        let mut record = Vec::new();
        push_u32(&mut record, protocol);
        push_u32(&mut record, frame_length);
        push_u32(&mut record, 4);
        push_u32(&mut record, header.len() as u32);
        record.extend_from_slice(header);
        while record.len() % 4 != 0 {
            record.push(0);
        }
        let mut sample = Vec::new();
        for value in [7, 3, rate, 1000, 0, 1, 2, 1] {
            push_u32(&mut sample, value);
        }
        push_u32(&mut sample, 1);
        push_u32(&mut sample, record.len() as u32);
        sample.extend(record);
        let mut bytes = Vec::new();
        for value in [5, 1, 0x0A00_0001, 0, 42, 1000, 1] {
            push_u32(&mut bytes, value);
        }
        push_u32(&mut bytes, 1);
        push_u32(&mut bytes, sample.len() as u32);
        bytes.extend(sample);
        bytes
    }

    fn ipv4_tcp_syn(total_length: u16, flags_offset: u16) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 192, 0, 2, 1, 198, 51, 100, 7,
        ];
        ip[2..4].copy_from_slice(&total_length.to_be_bytes());
        ip[6..8].copy_from_slice(&flags_offset.to_be_bytes());
        ip.extend_from_slice(&[0x1F, 0x90, 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02]);
        ip
    }

    #[test]
    fn qinq_tagged_tcp_syn_is_scaled() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x88, 0xA8, 0x00, 0x64, 0x81, 0x00, 0x01, 0x2C, 0x08, 0x00]);
        frame.extend(ipv4_tcp_syn(60, 0));
        let decoded = decode(&datagram_with_header(1, &frame, 82, 512)).expect("valid");
        let packet = decoded.flows[0].packet.expect("packet");
        assert_eq!(packet.vlan, 300);
        assert_eq!(
            (packet.src_port, packet.dst_port, packet.tcp_flags),
            (8080, 80, 2)
        );
        let traffic: Vec<_> = decoded.traffic_records(1).collect();
        assert_eq!((traffic[0].packets, traffic[0].bytes), (512, 60 * 512));
        assert_eq!(traffic[0].tcp_syn_packets, 512);
    }

    #[test]
    fn fragments_and_fallback_length() {
        // Non-first fragment: no ports; total length 0 -> frame rule (100 - 14 - 4 = 82).
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend(ipv4_tcp_syn(0, 0x0010));
        let decoded = decode(&datagram_with_header(1, &frame, 100, 0)).expect("valid");
        let packet = decoded.flows[0].packet.expect("packet");
        assert!(packet.fragment);
        assert_eq!((packet.src_port, packet.ip_bytes), (0, 82));
        let traffic: Vec<_> = decoded.traffic_records(10).collect();
        assert_eq!((traffic[0].packets, traffic[0].fragments), (10, 10));
    }

    #[test]
    fn mpls_and_raw_ip_headers() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x88, 0x47, 0, 0x10, 0x00, 64, 0, 0x20, 0x01, 64]);
        frame.extend(ipv4_tcp_syn(40, 0));
        let decoded = decode(&datagram_with_header(1, &frame, 70, 1)).expect("valid");
        assert_eq!(decoded.flows[0].packet.expect("packet").ip_bytes, 40);
        let decoded = decode(&datagram_with_header(11, &ipv4_tcp_syn(40, 0), 40, 1)).expect("ok");
        assert_eq!(decoded.flows[0].packet.expect("packet").dst_port, 80);
    }

    /// An IPv6 packet (2001:db8::1 to 2001:db8::7, hop limit 60) whose header chain starts
    /// with `next` and holds `chain` then a TCP SYN from port 8080 to 80.
    fn ipv6_tcp_syn(next: u8, chain: &[u8], payload_length: u16) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&payload_length.to_be_bytes());
        ip.extend_from_slice(&[next, 60]);
        ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        ip.extend_from_slice(chain);
        ip.extend_from_slice(&[0x1F, 0x90, 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02]);
        ip
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_the_ports() {
        let packet = |ip: &[u8], frame_length: u32| {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x86, 0xDD]);
            frame.extend_from_slice(ip);
            decode(&datagram_with_header(1, &frame, frame_length, 1))
                .expect("valid")
                .flows[0]
                .packet
                .expect("packet")
        };
        let src: IpAddr = "2001:db8::1".parse().unwrap();
        let dst: IpAddr = "2001:db8::7".parse().unwrap();
        let plain = packet(&ipv6_tcp_syn(6, &[], 20), 78);
        assert_eq!((plain.src, plain.dst, plain.ttl), (src, dst, 60));
        assert_eq!(
            (plain.protocol, plain.ip_bytes, plain.fragment),
            (6, 60, false)
        );
        assert_eq!(
            (plain.src_port, plain.dst_port, plain.tcp_flags),
            (8080, 80, 2)
        );
        // Hop-by-hop (8 bytes), then a first fragment: ports read, a fragment.
        let hop_by_hop = [44, 0, 0, 0, 0, 0, 0, 0];
        let first = [6, 0, 0x00, 0x01, 0, 0, 0, 9];
        let chain = [hop_by_hop.as_slice(), first.as_slice()].concat();
        let first = packet(&ipv6_tcp_syn(0, &chain, 36), 94);
        assert_eq!(
            (first.protocol, first.fragment, first.ip_bytes),
            (6, true, 76)
        );
        assert_eq!(
            (first.src_port, first.dst_port, first.tcp_flags),
            (8080, 80, 2)
        );
        // A later fragment (offset 8): no ports; payload length 0 takes the frame's.
        let later = packet(&ipv6_tcp_syn(44, &[6, 0, 0x00, 0x40, 0, 0, 0, 9], 0), 90);
        assert_eq!(
            (later.protocol, later.fragment, later.ip_bytes),
            (6, true, 72)
        );
        assert_eq!((later.src_port, later.dst_port, later.tcp_flags), (0, 0, 0));
        // AH (length 4: 24 bytes) before TCP.
        let ah = [
            6, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let authenticated = packet(&ipv6_tcp_syn(51, &ah, 44), 102);
        assert_eq!((authenticated.protocol, authenticated.src_port), (6, 8080));
        // The sampled header ends inside the chain: the last header named, no ports.
        let mut cut = ipv6_tcp_syn(0, &hop_by_hop, 28);
        cut.truncate(41);
        let cut = packet(&cut, 100);
        assert_eq!((cut.protocol, cut.fragment, cut.src_port), (0, false, 0));
        let mut cut = ipv6_tcp_syn(0, &chain, 36);
        cut.truncate(52);
        let cut = packet(&cut, 100);
        assert_eq!((cut.protocol, cut.fragment, cut.src_port), (44, false, 0));
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            decode(&[0, 0, 0, 5, 0, 0, 0, 1]).unwrap_err().reason(),
            "truncated"
        );
        assert_eq!(decode(&[0, 0, 0, 4]).unwrap_err().reason(), "bad_version");
        let mut bytes = datagram_with_header(1, &[0; 20], 60, 1);
        bytes[7] = 3;
        assert_eq!(decode(&bytes).unwrap_err().reason(), "bad_address_type");
        let mut bytes = datagram_with_header(1, &[0; 20], 60, 1);
        bytes[27] = 200;
        assert_eq!(decode(&bytes).unwrap_err().reason(), "bad_count");
    }

    /// A datagram of several samples: two flow samples, a counter sample with interface
    /// counters, one of another enterprise, and an expanded flow sample.
    fn mixed_datagram() -> Vec<u8> {
        let flow = |bytes: &[u8]| {
            let d = datagram_with_header(1, bytes, 82, 64);
            // The sample (format, length, body) after the 28-byte datagram header.
            d[28..].to_vec()
        };
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend(ipv4_tcp_syn(60, 0));
        let mut counters = Vec::new();
        for value in [9, 3, 1, 1, 88] {
            push_u32(&mut counters, value);
        }
        counters.extend_from_slice(&[7; 88]);
        let mut counter_sample = Vec::new();
        push_u32(&mut counter_sample, 2);
        push_u32(&mut counter_sample, counters.len() as u32);
        counter_sample.extend(counters);
        // The compact sample's body as an expanded one: sequence, source id type and index,
        // rate, pool, drops, then input and output as (format, value) pairs.
        let body = flow(&frame).split_off(8);
        let mut expanded_body = body[..4].to_vec();
        push_u32(&mut expanded_body, 0);
        expanded_body.extend_from_slice(&body[4..20]);
        for value in [0, 1, 0, 2] {
            push_u32(&mut expanded_body, value);
        }
        expanded_body.extend_from_slice(&body[28..]);
        let mut expanded = Vec::new();
        push_u32(&mut expanded, 3);
        push_u32(&mut expanded, expanded_body.len() as u32);
        expanded.extend(expanded_body);
        let samples = [
            flow(&frame),
            flow(&[0; 20]),
            counter_sample,
            [
                &(5u32 << 12 | 1).to_be_bytes()[..],
                &[0, 0, 0, 4, 1, 2, 3, 4],
            ]
            .concat(),
            expanded,
        ];
        let mut bytes = Vec::new();
        for value in [5, 1, 0x0A00_0001, 0, 42, 1000, samples.len() as u32] {
            push_u32(&mut bytes, value);
        }
        for sample in samples {
            bytes.extend(sample);
        }
        bytes
    }

    /// `decode_traffic` must give exactly what `decode` + `traffic_records` give: the same
    /// records, counts and errors, and leave the output as it was on an error.
    fn assert_same_as_decode(bytes: &[u8]) {
        let before = TrafficRecord::packet(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            17,
            1,
        );
        let mut out = vec![before.clone()];
        let streamed = decode_traffic(bytes, 3, &mut out);
        match decode(bytes) {
            Ok(d) => {
                let summary = streamed.expect("decode_traffic fails where decode does not");
                let expected: Vec<_> = std::iter::once(before)
                    .chain(d.traffic_records(3))
                    .collect();
                assert_eq!(out, expected);
                assert_eq!(summary.flow_samples as usize, d.flows.len());
                assert_eq!(summary.counter_samples as usize, d.counters.len());
                assert_eq!(
                    (summary.agent, summary.sub_agent_id, summary.sequence),
                    (d.agent, d.sub_agent_id, d.sequence)
                );
                assert_eq!(summary.stats, d.stats);
            }
            Err(error) => {
                assert_eq!(streamed.unwrap_err(), error);
                assert_eq!(out, vec![before]);
            }
        }
    }

    /// A datagram of one flow sample (compact or expanded, sampling rate `rate`) holding
    /// `records` as (data format, body).
    fn flow_sample_datagram(expanded: bool, rate: u32, records: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        let fixed: &[u32] = if expanded {
            &[7, 0, 3, rate, 1000, 0, 0, 1, 0, 2]
        } else {
            &[7, 3, rate, 1000, 0, 1, 2]
        };
        for &value in fixed {
            push_u32(&mut body, value);
        }
        push_u32(&mut body, records.len() as u32);
        for (format, record) in records {
            push_u32(&mut body, *format);
            push_u32(&mut body, record.len() as u32);
            body.extend_from_slice(record);
        }
        let mut bytes = Vec::new();
        for value in [
            5,
            1,
            0x0A00_0001,
            0,
            42,
            1000,
            1,
            if expanded { 3 } else { 1 },
        ] {
            push_u32(&mut bytes, value);
        }
        push_u32(&mut bytes, body.len() as u32);
        bytes.extend(body);
        bytes
    }

    /// A raw packet header record (format 1) announcing `header_length` bytes of `header`.
    fn raw_header_record(
        protocol: u32,
        frame_length: u32,
        header_length: u32,
        header: &[u8],
    ) -> Vec<u8> {
        let mut record = Vec::new();
        for value in [protocol, frame_length, 4, header_length] {
            push_u32(&mut record, value);
        }
        record.extend_from_slice(header);
        record
    }

    /// The traffic path takes flow samples whose first record is a raw header without
    /// building the sample; at each of its edges (headers cut at every length or announced
    /// longer than they are, records before and after it, compact and expanded samples,
    /// rate 0) it must still give what `decode` gives.
    #[test]
    fn decode_traffic_raw_header_edges_are_decode() {
        let ethernet = |ethertype: &[u8], ip: Vec<u8>| [&[2u8; 12][..], ethertype, &ip].concat();
        let mut frames = vec![
            (
                1,
                ingest_bench_datagram(3)[28 + 8 + 48..28 + 8 + 48 + 46].to_vec(),
            ),
            (1, ethernet(&[0x08, 0x00], ipv4_tcp_syn(60, 0))),
            (1, ethernet(&[0x08, 0x00], ipv4_tcp_syn(0, 0x0010))),
            (
                1,
                ethernet(&[0x81, 0x00, 0, 5, 0x08, 0x00], ipv4_tcp_syn(60, 0x2000)),
            ),
            (1, ethernet(&[0x86, 0xDD], ipv6_tcp_syn(6, &[], 20))),
            (1, ethernet(&[0x08, 0x06], vec![0; 28])),
            (11, ipv4_tcp_syn(40, 0)),
            (12, ipv6_tcp_syn(44, &[6, 0, 0x00, 0x40, 0, 0, 0, 9], 0)),
            (2, ipv4_tcp_syn(40, 0)),
        ];
        // The ingest frame's IPv4 header with options (IHL 6) and as ICMP.
        let mut options = frames[0].1.clone();
        options[14] = 0x46;
        options.splice(34..34, [1, 1, 1, 0]);
        frames.push((1, options));
        let mut icmp = frames[0].1.clone();
        icmp[23] = 1;
        frames.push((1, icmp));
        let mut sampled_ipv4 = Vec::new();
        for value in [60, 6, 0xC000_0201, 0xC000_0202, 1, 2, 2, 0] {
            push_u32(&mut sampled_ipv4, value);
        }
        let switch = [0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0].to_vec();
        let router = [0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 24, 0, 0, 0, 24].to_vec();
        for (protocol, frame) in &frames {
            for cut in 0..=frame.len() {
                for announced in [cut, cut + 10] {
                    let raw = raw_header_record(
                        *protocol,
                        frame.len() as u32 + 4,
                        announced as u32,
                        &frame[..cut],
                    );
                    let lists = [
                        vec![(1, raw.clone())],
                        vec![
                            (1, raw.clone()),
                            (1001, switch.clone()),
                            (1002, router.clone()),
                        ],
                        vec![
                            (1, raw.clone()),
                            (3, sampled_ipv4.clone()),
                            (1, raw.clone()),
                        ],
                        vec![(1, raw.clone()), (9 << 12 | 1, switch.clone())],
                        vec![(1001, switch.clone()), (1, raw.clone())],
                        vec![(3, sampled_ipv4.clone()), (1, raw.clone())],
                    ];
                    for records in &lists {
                        for expanded in [false, true] {
                            for rate in [0, 512] {
                                let bytes = flow_sample_datagram(expanded, rate, records);
                                assert_same_as_decode(&bytes);
                                // The last record cut short inside its sample.
                                let mut short = bytes.clone();
                                short.pop();
                                let sample_length = bytes.len() as u32 - 36 - 1;
                                short[32..36].copy_from_slice(&sample_length.to_be_bytes());
                                assert_same_as_decode(&short);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks `bytes`, every truncation of it, four random single-byte corruptions at every
    /// position and as many corruptions of several bytes at once.
    fn assert_same_as_decode_mutated(bytes: &[u8]) {
        assert_same_as_decode(bytes);
        for len in 0..bytes.len() {
            assert_same_as_decode(&bytes[..len]);
        }
        let mut state = 0x2545_F491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for position in 0..bytes.len() {
            for _ in 0..4 {
                let mut corrupted = bytes.to_vec();
                corrupted[position] = next() as u8;
                assert_same_as_decode(&corrupted);
            }
        }
        // Several fields at once (a count and a length together, say), which one byte at a
        // time never gives: 2 to 8 random bytes, 4 times per byte of the datagram.
        if bytes.is_empty() {
            return;
        }
        for _ in 0..4 * bytes.len() {
            let mut corrupted = bytes.to_vec();
            for _ in 0..2 + next() % 7 {
                let at = next() as usize % bytes.len();
                corrupted[at] = next() as u8;
            }
            assert_same_as_decode(&corrupted);
        }
    }

    /// The datagram of `tests/flow_ingest_bench.rs`'s sFlow sender (`sflow_datagram`): ten
    /// compact flow samples, each one raw header record of a 46-byte Ethernet/IPv4/UDP
    /// header, the shape of the live profile's traffic.
    fn ingest_bench_datagram(seed: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in [5, 1, 0x7f00_0001, 0, seed, 1000, 10] {
            push_u32(&mut bytes, value);
        }
        for s in 0..10 {
            let i = seed * 10 + s;
            let mut header = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
            header.extend_from_slice(&[0x45, 0, 0, 128, 0, 0, 0, 0, 64, 17, 0, 0]);
            header.extend_from_slice(&(0xc633_6400 + (i % 200)).to_be_bytes());
            header.extend_from_slice(&(0x0a0a_0000 + (i % 4000)).to_be_bytes());
            header.extend_from_slice(&((i % 60000) as u16).to_be_bytes());
            header.extend_from_slice(&[0, 53, 0, 108, 0, 0]);
            let header_len = header.len() as u32;
            while header.len() % 4 != 0 {
                header.push(0);
            }
            let mut record = Vec::new();
            for value in [1, 14 + 128 + 4, 4, header_len] {
                push_u32(&mut record, value);
            }
            record.extend_from_slice(&header);
            let mut sample = Vec::new();
            for value in [i, 3, 1, i * 1000, 0, 3, 4, 1, 1, record.len() as u32] {
                push_u32(&mut sample, value);
            }
            sample.extend(record);
            push_u32(&mut bytes, 1);
            push_u32(&mut bytes, sample.len() as u32);
            bytes.extend(sample);
        }
        bytes
    }

    /// The UDP payloads of a classic pcap (Ethernet or Linux SLL, 802.1Q, IPv4 or IPv6); what
    /// cannot be read is left out.
    fn pcap_payloads(bytes: &[u8]) -> Vec<Vec<u8>> {
        let word = |at: usize, little: bool| {
            let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(if little {
                u32::from_le_bytes(raw)
            } else {
                u32::from_be_bytes(raw)
            })
        };
        let little = match word(0, true) {
            Some(0xa1b2_c3d4 | 0xa1b2_3c4d) => true,
            Some(0xd4c3_b2a1 | 0x4d3c_b2a1) => false,
            _ => return Vec::new(),
        };
        let Some(link_type) = word(20, little) else {
            return Vec::new();
        };
        let payload = |frame: &[u8]| -> Option<Vec<u8>> {
            let be16 = |at: usize| Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
            let (mut ethertype, mut offset) = match link_type {
                1 => (be16(12)?, 14),
                113 => (be16(14)?, 16),
                _ => return None,
            };
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                ethertype = be16(offset + 2)?;
                offset += 4;
            }
            let ip = frame.get(offset..)?;
            let udp = match ethertype {
                0x0800 if *ip.get(9)? == 17 => ip.get(usize::from(ip[0] & 0x0f) * 4..)?,
                0x86dd if *ip.get(6)? == 17 => ip.get(40..)?,
                _ => return None,
            };
            let udp_len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
            Some(udp.get(8..udp_len.clamp(8, udp.len()))?.to_vec())
        };
        let mut out = Vec::new();
        let mut pos = 24;
        while let Some(captured) = word(pos + 8, little) {
            let Some(frame) = bytes.get(pos + 16..pos + 16 + captured as usize) else {
                break;
            };
            out.extend(payload(frame));
            pos += 16 + captured as usize;
        }
        out
    }

    /// The sFlow datagrams of the shared corpus (`$FNM_CORPUS_DIR`, else
    /// `<workspace>/../shared/corpus`, as `tests/flow_corpus.rs` finds it) outside its
    /// `copyleft` directories: `.bin` files as one datagram, `.pcap` files by UDP payload.
    /// Empty when the corpus is absent.
    fn shared_corpus_datagrams() -> Vec<(String, Vec<u8>)> {
        use std::path::{Path, PathBuf};
        let root = std::env::var_os("FNM_CORPUS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
        if !root.join("MANIFEST.json").is_file() {
            return Vec::new();
        }
        let mut files = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .expect("corpus dir")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.is_dir()
                    && path
                        .file_name()
                        .is_some_and(|name| name.to_string_lossy().starts_with("sflow"))
            })
            .collect();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("corpus dir") {
                let path = entry.expect("corpus entry").path();
                if path.is_dir() {
                    if path.file_name().is_some_and(|name| name != "copyleft") {
                        dirs.push(path);
                    }
                } else {
                    files.push(path);
                }
            }
        }
        files.sort();
        let mut datagrams = Vec::new();
        for path in files {
            let name = path.display().to_string();
            let bytes = || std::fs::read(&path).expect("read corpus file");
            match path.extension().and_then(|e| e.to_str()) {
                Some("bin") => datagrams.push((name, bytes())),
                Some("pcap") => {
                    let payloads = pcap_payloads(&bytes());
                    assert!(!payloads.is_empty(), "{name}: no UDP payload");
                    datagrams.extend(payloads.into_iter().map(|p| (name.clone(), p)));
                }
                _ => {}
            }
        }
        datagrams
    }

    #[test]
    fn decode_traffic_is_decode_without_the_samples() {
        let bytes = mixed_datagram();
        let decoded = decode(&bytes).expect("valid");
        assert_eq!((decoded.flows.len(), decoded.counters.len()), (3, 1));
        assert_eq!(decoded.stats.samples_skipped, 1);
        assert_eq!(decoded.stats.expanded_flow_samples, 1);
        assert_eq!(decoded.traffic_records(1).count(), 2);
        // Every truncation and many corruptions give the same result both ways.
        assert_same_as_decode_mutated(&bytes);
        let bench = ingest_bench_datagram(7);
        let decoded = decode(&bench).expect("valid");
        assert_eq!(decoded.flows.len(), 10);
        assert!(decoded
            .traffic_records(1)
            .all(|r| (r.dst_port, r.bytes, r.ttl) == (53, 128, 64)));
        assert_same_as_decode_mutated(&bench);
        let corpus = shared_corpus_datagrams();
        for (name, datagram) in &corpus {
            // Captured: shown, last line the culprit, only when the test fails.
            println!("{name}: {} bytes", datagram.len());
            assert_same_as_decode_mutated(datagram);
        }
    }
}
