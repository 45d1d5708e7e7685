//! Decodes every group of the flow-export conformance corpus in order, one decoder state per
//! group, and checks the facts stated in each group's `*.expected.json`.
//!
//! Permissive files live in `tests/data/flows`; copyleft groups are read from
//! `$FNM_CORPUS_DIR` or `<workspace>/../shared/corpus` only when present.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use fnm_agent::flow::sflow::{self, SflowDatagram};
use fnm_agent::flow::{decode_netflow_family, DecodeError, FlowRecord, RecordKind, TemplateCache};
use serde_json::Value;

/// Exporter address used for raw payload files (pcaps give the real one).
const RAW_EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flows")
}

fn shared_corpus() -> Option<PathBuf> {
    let candidate = std::env::var_os("FNM_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    candidate
        .join("MANIFEST.json")
        .is_file()
        .then_some(candidate)
}

/// Where a corpus-relative file is: the project copy, else the shared corpus.
fn locate(relative: &str) -> Option<PathBuf> {
    let local = data_dir().join(relative);
    if local.is_file() && !relative.contains("copyleft/") {
        return Some(local);
    }
    shared_corpus()
        .map(|root| root.join(relative))
        .filter(|path| path.is_file())
}

/// One UDP payload and who sent it.
struct Datagram {
    exporter: IpAddr,
    payload: Vec<u8>,
}

/// UDP payloads of a classic pcap (Ethernet, Linux SLL; IPv4/IPv6; UDP).
fn pcap_payloads(bytes: &[u8]) -> Vec<Datagram> {
    assert!(bytes.len() >= 24, "pcap too short");
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        other => panic!("not a pcap: magic {other:#x}"),
    };
    let read_u32 = |at: usize| {
        let raw: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        }
    };
    let link_type = read_u32(20);
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 16 <= bytes.len() {
        let captured = read_u32(pos + 8) as usize;
        let frame = &bytes[pos + 16..pos + 16 + captured];
        pos += 16 + captured;
        let (mut ethertype, mut offset) = match link_type {
            1 => (u16::from_be_bytes([frame[12], frame[13]]), 14),
            113 => (u16::from_be_bytes([frame[14], frame[15]]), 16),
            other => panic!("unsupported link type {other}"),
        };
        while ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = u16::from_be_bytes([frame[offset + 2], frame[offset + 3]]);
            offset += 4;
        }
        let ip = &frame[offset..];
        let (exporter, protocol, udp) = match ethertype {
            0x0800 => {
                let header_len = usize::from(ip[0] & 0x0f) * 4;
                let src: [u8; 4] = ip[12..16].try_into().unwrap();
                (IpAddr::from(src), ip[9], &ip[header_len..])
            }
            0x86dd => {
                let src: [u8; 16] = ip[8..24].try_into().unwrap();
                (IpAddr::from(src), ip[6], &ip[40..])
            }
            other => panic!("unsupported ethertype {other:#x}"),
        };
        assert_eq!(protocol, 17, "not UDP");
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        let end = udp_len.clamp(8, udp.len());
        out.push(Datagram {
            exporter,
            payload: udp[8..end].to_vec(),
        });
    }
    out
}

/// Splits a raw file holding `count` concatenated datagrams.
fn split_raw(bytes: &[u8], count: u64) -> Vec<Datagram> {
    if count <= 1 {
        return vec![Datagram {
            exporter: RAW_EXPORTER,
            payload: bytes.to_vec(),
        }];
    }
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let version = u16::from_be_bytes([rest[0], rest[1]]);
        let len = match version {
            5 => 24 + 48 * usize::from(u16::from_be_bytes([rest[2], rest[3]])),
            10 => usize::from(u16::from_be_bytes([rest[2], rest[3]])),
            other => panic!("cannot split version {other}"),
        };
        let len = len.min(rest.len());
        out.push(Datagram {
            exporter: RAW_EXPORTER,
            payload: rest[..len].to_vec(),
        });
        rest = &rest[len..];
    }
    assert_eq!(out.len() as u64, count, "split count");
    out
}

/// The datagrams of one corpus file (path relative to the corpus root).
fn datagrams_of(relative: &str, count: u64) -> Option<Vec<Datagram>> {
    let path = locate(relative)?;
    let bytes = std::fs::read(&path).expect("read corpus file");
    Some(if relative.ends_with(".pcap") {
        pcap_payloads(&bytes)
    } else {
        split_raw(&bytes, count)
    })
}

/// A decoded NetFlow-family record with the header facts of its datagram.
struct Event {
    record: FlowRecord,
    version: u16,
    sequence: u32,
    header_count: u16,
    datagram_index: usize,
}

/// The outcome of feeding a NetFlow-family group.
#[derive(Default)]
struct NetflowRun {
    events: Vec<Event>,
    errors: Vec<&'static str>,
    per_datagram_records: Vec<usize>,
    templates_learned: u32,
    traffic: Vec<fnm_agent::traffic::TrafficRecord>,
}

fn run_netflow(datagrams: &[Datagram]) -> NetflowRun {
    let mut cache = TemplateCache::default();
    let mut run = NetflowRun::default();
    for (index, datagram) in datagrams.iter().enumerate() {
        match decode_netflow_family(&datagram.payload, datagram.exporter, &mut cache) {
            Ok(decoded) => {
                let (sequence, header_count, learned) = match &decoded {
                    fnm_agent::flow::NetflowDatagram::V5(d) => {
                        (d.header.flow_sequence, d.header.count, 0)
                    }
                    fnm_agent::flow::NetflowDatagram::V9(d) => {
                        (d.header.sequence, d.header.count, d.stats.templates_learned)
                    }
                    fnm_agent::flow::NetflowDatagram::Ipfix(d) => {
                        (d.header.sequence, 0, d.stats.templates_learned)
                    }
                };
                run.templates_learned += learned;
                run.per_datagram_records.push(decoded.records().len());
                run.traffic.extend(decoded.traffic_records(1));
                for record in decoded.records().iter() {
                    run.events.push(Event {
                        record: record.clone(),
                        version: decoded.version(),
                        sequence,
                        header_count,
                        datagram_index: index,
                    });
                }
            }
            Err(error) => {
                run.per_datagram_records.push(0);
                run.errors.push(error.reason());
            }
        }
    }
    run
}

fn as_u64(value: &Value) -> Option<u64> {
    value.as_u64()
}

fn protocol_number(name: &str) -> u8 {
    match name {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "ipv6-icmp" | "icmpv6" => 58,
        other => other.parse().unwrap_or_else(|_| panic!("protocol {other}")),
    }
}

fn addr(value: &Value) -> IpAddr {
    let text = value.as_str().expect("address string");
    let first = text.split_whitespace().next().expect("address");
    first
        .parse()
        .unwrap_or_else(|_| panic!("bad address {text}"))
}

/// Compares one logstash-schema expected record with a decoded event.
fn check_logstash_record(group: &str, expected: &Value, event: &Event) {
    let record = &event.record;
    for (key, value) in expected.as_object().expect("record object") {
        let context = format!("{group}: event {key}");
        match key.as_str() {
            "event_index" | "sampling_algorithm" | "in_src_mac" | "in_dst_mac" | "conn_id_nsel" => {
            }
            "src_addr" => assert_eq!(record.src_addr, Some(addr(value)), "{context}"),
            "dst_addr" => assert_eq!(record.dst_addr, Some(addr(value)), "{context}"),
            "src_port" => assert_eq!(Some(u64::from(record.src_port)), as_u64(value), "{context}"),
            "dst_port" => assert_eq!(Some(u64::from(record.dst_port)), as_u64(value), "{context}"),
            "ip_protocol" => {
                assert_eq!(Some(u64::from(record.protocol)), as_u64(value), "{context}")
            }
            "tcp_flags" => assert_eq!(
                Some(u64::from(record.tcp_flags)),
                as_u64(value),
                "{context}"
            ),
            "bytes" | "initiator_bytes_nsel" => {
                assert_eq!(Some(record.bytes), as_u64(value), "{context}")
            }
            "packets" => assert_eq!(Some(record.packets), as_u64(value), "{context}"),
            "input_ifindex" => {
                assert_eq!(
                    Some(u64::from(record.input_ifindex)),
                    as_u64(value),
                    "{context}"
                )
            }
            "output_ifindex" => {
                assert_eq!(
                    Some(u64::from(record.output_ifindex)),
                    as_u64(value),
                    "{context}"
                )
            }
            "src_as" => assert_eq!(Some(u64::from(record.src_as)), as_u64(value), "{context}"),
            "dst_as" => assert_eq!(Some(u64::from(record.dst_as)), as_u64(value), "{context}"),
            "header_version" => {
                assert_eq!(Some(u64::from(event.version)), as_u64(value), "{context}")
            }
            "header_sequence" => {
                assert_eq!(Some(u64::from(event.sequence)), as_u64(value), "{context}")
            }
            "v5_header_count" => {
                assert_eq!(
                    Some(u64::from(event.header_count)),
                    as_u64(value),
                    "{context}"
                )
            }
            "flowset_or_template_id" => {
                assert_eq!(
                    Some(u64::from(record.template_id)),
                    as_u64(value),
                    "{context}"
                )
            }
            "sampling_interval" => {
                assert_eq!(
                    Some(u64::from(record.sampling_rate)),
                    as_u64(value),
                    "{context}"
                )
            }
            other => panic!("{group}: unhandled expected field {other}"),
        }
    }
}

/// Finds a flow event with the given 5-tuple-ish facts.
fn find_flow<'a>(run: &'a NetflowRun, facts: &Value) -> Option<&'a Event> {
    let src = facts.get("src_addr").or(facts.get("src")).map(addr);
    let dst = facts.get("dst_addr").or(facts.get("dst")).map(addr);
    let src_port = facts.get("src_port").and_then(as_u64);
    let dst_port = facts.get("dst_port").and_then(as_u64);
    let number = |key: &str| facts.get(key).and_then(as_u64);
    let (input, output) = (number("input_ifindex"), number("output_ifindex"));
    let (bytes, packets) = (number("bytes"), number("packets"));
    run.events.iter().find(|event| {
        let record = &event.record;
        input.is_none_or(|i| u64::from(record.input_ifindex) == i)
            && output.is_none_or(|o| u64::from(record.output_ifindex) == o)
            && bytes.is_none_or(|b| record.bytes == b)
            && packets.is_none_or(|p| record.packets == p)
            && record.kind == RecordKind::Flow
            && src.is_none_or(|src| record.src_addr == Some(src))
            && dst.is_none_or(|dst| record.dst_addr == Some(dst))
            && src_port.is_none_or(|port| u64::from(record.src_port) == port)
            && dst_port.is_none_or(|port| u64::from(record.dst_port) == port)
    })
}

/// Checks the facts of a telegraf/pmacct-style flow description against a found event.
fn check_flow_facts(group: &str, facts: &Value, run: &NetflowRun) {
    let event =
        find_flow(run, facts).unwrap_or_else(|| panic!("{group}: no decoded flow matches {facts}"));
    let record = &event.record;
    let rate = u64::from(record.sampling_rate.max(1));
    for (key, value) in facts.as_object().expect("object") {
        let context = format!("{group}: {key} of {facts}");
        match key.as_str() {
            "protocol" | "ip_protocol" => {
                let expected = value
                    .as_str()
                    .map(protocol_number)
                    .or_else(|| value.as_u64().map(|n| n as u8));
                assert_eq!(Some(record.protocol), expected, "{context}");
            }
            "in_bytes" | "in_total_bytes" | "bytes" => {
                assert_eq!(Some(record.bytes), as_u64(value), "{context}")
            }
            "in_packets" | "in_total_packets" | "packets" => {
                assert_eq!(Some(record.packets), as_u64(value), "{context}")
            }
            "packets_renormalised" => {
                assert_eq!(Some(record.packets * rate), as_u64(value), "{context}")
            }
            "bytes_renormalised" => {
                assert_eq!(Some(record.bytes * rate), as_u64(value), "{context}")
            }
            "input_ifindex" | "in_snmp" => {
                assert_eq!(
                    Some(u64::from(record.input_ifindex)),
                    as_u64(value),
                    "{context}"
                )
            }
            "output_ifindex" | "out_snmp" => {
                assert_eq!(
                    Some(u64::from(record.output_ifindex)),
                    as_u64(value),
                    "{context}"
                )
            }
            "tcp_flags" if value.is_u64() => {
                assert_eq!(
                    Some(u64::from(record.tcp_flags)),
                    as_u64(value),
                    "{context}"
                )
            }
            "src_as" => assert_eq!(Some(u64::from(record.src_as)), as_u64(value), "{context}"),
            "dst_as" => assert_eq!(Some(u64::from(record.dst_as)), as_u64(value), "{context}"),
            "flow_start_ms" => assert_eq!(record.start_ms, as_u64(value), "{context}"),
            "flow_end_ms" => assert_eq!(record.end_ms, as_u64(value), "{context}"),
            "tos" => assert_eq!(Some(u64::from(record.tos)), as_u64(value), "{context}"),
            _ => {}
        }
    }
}

/// The number of records (flow + options) a NetFlow-family group must decode to.
fn expected_netflow_total(golden: &Value, multi_datagram_file: bool) -> Option<u64> {
    if !multi_datagram_file {
        if let Some(count) = golden.get("expected_event_count").and_then(Value::as_u64) {
            return Some(count);
        }
    }
    if let Some(count) = golden.get("expected_metric_count").and_then(Value::as_u64) {
        return Some(count);
    }
    golden["tshark_cross_check"]["data_records"].as_u64()
}

fn check_netflow_group(group: &Value, golden: &Value, datagrams: &[Datagram]) {
    let name = group["group"].as_str().unwrap();
    let run = run_netflow(datagrams);
    if name.starts_with("malformed") {
        assert!(
            !run.errors.is_empty(),
            "{name}: malformed datagram was accepted"
        );
        assert!(
            run.errors.iter().all(|reason| *reason == "bad_count"),
            "{name}: {:?}",
            run.errors
        );
        return;
    }
    assert!(
        run.errors.is_empty(),
        "{name}: decode errors {:?}",
        run.errors
    );
    let multi = group["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|file| file["datagrams"].as_u64().unwrap_or(1) > 1);
    if let Some(total) = expected_netflow_total(golden, multi) {
        assert_eq!(
            run.events.len() as u64,
            total,
            "{name}: decoded record count"
        );
    }
    for expected in golden["records"].as_array().into_iter().flatten() {
        let event = match expected["event_index"].as_u64() {
            Some(index) => run
                .events
                .get(index as usize)
                .unwrap_or_else(|| panic!("{name}: no event {index}")),
            // Records listed without an index: any decoded flow with the same tuple.
            None => find_flow(&run, expected)
                .unwrap_or_else(|| panic!("{name}: no decoded flow matches {expected}")),
        };
        check_logstash_record(name, expected, event);
    }
    for metric in golden["first_metrics_key_fields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if metric.get("src").is_some() {
            check_flow_facts(name, metric, &run);
        }
    }
    if let Some(expected) = golden.get("expected") {
        check_netflow_expected(name, expected, &run, group);
    }
}

/// Group-specific `expected` blocks of NetFlow-family groups.
fn check_netflow_expected(name: &str, expected: &Value, run: &NetflowRun, group: &Value) {
    let flows: Vec<&Event> = run
        .events
        .iter()
        .filter(|event| event.record.kind == RecordKind::Flow)
        .collect();
    for (key, value) in expected.as_object().unwrap() {
        match key.as_str() {
            "flow_records" | "nfacctd_output_rows" | "flow_records_total" => {
                assert_eq!(Some(flows.len() as u64), value.as_u64(), "{name}: {key}")
            }
            key if key.starts_with("flow_records_from_exporter") => {
                assert_eq!(Some(flows.len() as u64), value.as_u64(), "{name}: {key}")
            }
            "header_count" => assert_eq!(
                Some(u64::from(run.events[0].header_count)),
                value.as_u64(),
                "{name}"
            ),
            "sum_packets" => {
                let sum: u64 = flows.iter().map(|event| event.record.packets).sum();
                assert_eq!(Some(sum), value.as_u64(), "{name}: {key}");
            }
            "sum_bytes" => {
                let sum: u64 = flows.iter().map(|event| event.record.bytes).sum();
                assert_eq!(Some(sum), value.as_u64(), "{name}: {key}");
            }
            "sum_packets_renormalised" => {
                let sum: u64 = run.traffic.iter().map(|t| t.packets).sum();
                assert_eq!(Some(sum), value.as_u64(), "{name}: {key}");
            }
            "sum_bytes_renormalised" => {
                let sum: u64 = run.traffic.iter().map(|t| t.bytes).sum();
                assert_eq!(Some(sum), value.as_u64(), "{name}: {key}");
            }
            "first_row" | "record_0" => check_flow_facts(name, value, run),
            "flow_records_per_datagram" => {
                let expected: Vec<usize> = value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(run.per_datagram_records, expected, "{name}: {key}");
            }
            "record_0_of_first_datagram" => check_fields(name, value, &flows[0].record),
            "last_record_of_first_datagram" => {
                let last = flows
                    .iter()
                    .rev()
                    .find(|event| event.datagram_index == 0)
                    .unwrap();
                check_fields(name, value, &last.record);
            }
            "data_datagrams_alone_without_template" | "without_message_0_first" => {
                check_data_alone_decodes_nothing(name, group)
            }
            "message_0" => {
                let first: Vec<&Event> = run
                    .events
                    .iter()
                    .filter(|event| event.datagram_index == 0)
                    .collect();
                assert_eq!(
                    Some(first.len() as u64),
                    value["records"].as_u64(),
                    "{name}"
                );
                let tpl = value["templates_defined"].as_u64().unwrap();
                assert!(u64::from(run.templates_learned) >= tpl, "{name}: templates");
                check_fields(name, &value["record_1"], &first[1].record);
                check_fields(name, &value["record_17"], &first[17].record);
                assert_eq!(
                    first[0].record.kind,
                    RecordKind::Options,
                    "{name}: options record"
                );
            }
            "message_1" => {
                let second = run
                    .events
                    .iter()
                    .filter(|event| event.datagram_index == 1)
                    .count();
                assert_eq!(Some(second as u64), value["records"].as_u64(), "{name}");
                check_data_alone_decodes_nothing(name, group);
            }
            _ => {}
        }
    }
    if name == "softflowd_nfv5_bitkeks" {
        let src = flows[0].record.src_addr.unwrap().to_string();
        let allowed = expected["record_0"]["src_addr_one_of"].as_array().unwrap();
        assert!(
            allowed.iter().any(|a| a.as_str() == Some(&src)),
            "{name}: {src}"
        );
    }
}

/// Compares plain fields of one decoded record.
fn check_fields(name: &str, facts: &Value, record: &FlowRecord) {
    for (key, value) in facts.as_object().unwrap() {
        match key.as_str() {
            "src_addr" => assert_eq!(record.src_addr, Some(addr(value)), "{name}: {key}"),
            "dst_addr" => assert_eq!(record.dst_addr, Some(addr(value)), "{name}: {key}"),
            "src_port" => assert_eq!(Some(u64::from(record.src_port)), value.as_u64(), "{name}"),
            "dst_port" => assert_eq!(Some(u64::from(record.dst_port)), value.as_u64(), "{name}"),
            "ip_protocol" => assert_eq!(Some(u64::from(record.protocol)), value.as_u64(), "{name}"),
            "tcp_flags" => assert_eq!(Some(u64::from(record.tcp_flags)), value.as_u64(), "{name}"),
            _ => {}
        }
    }
}

/// Data-only datagrams of a group decoded with an empty cache give no records.
fn check_data_alone_decodes_nothing(name: &str, group: &Value) {
    for file in group["files"].as_array().unwrap() {
        if file["needs_templates_from_earlier_file"].as_bool() != Some(true) {
            continue;
        }
        let relative = file["path"].as_str().unwrap().to_string();
        let datagrams = datagrams_of(&relative, file["datagrams"].as_u64().unwrap_or(1)).unwrap();
        let run = run_netflow(&datagrams);
        assert!(
            run.errors.is_empty(),
            "{name}: {relative} alone: {:?}",
            run.errors
        );
        assert_eq!(
            run.events.len(),
            0,
            "{name}: {relative} decoded without its template"
        );
    }
}

/// The outcome of feeding an sFlow group.
struct SflowRun {
    decoded: Vec<SflowDatagram>,
    errors: Vec<&'static str>,
}

fn run_sflow(datagrams: &[Datagram]) -> SflowRun {
    let mut run = SflowRun {
        decoded: Vec::new(),
        errors: Vec::new(),
    };
    for datagram in datagrams {
        match sflow::decode(&datagram.payload) {
            Ok(decoded) => run.decoded.push(decoded),
            Err(error) => run.errors.push(DecodeError::reason(&error)),
        }
    }
    run
}

fn check_sflow_flow_facts(name: &str, facts: &Value, sample: &sflow::FlowSample) {
    let packet = sample.packet;
    for (key, value) in facts.as_object().unwrap() {
        let context = format!("{name}: {key} in {facts}");
        let packet = || packet.unwrap_or_else(|| panic!("{context}: no packet decoded"));
        match key.as_str() {
            "src_addr" | "src" => assert_eq!(packet().src, addr(value), "{context}"),
            "dst_addr" | "dst" => assert_eq!(packet().dst, addr(value), "{context}"),
            "ip_protocol" => assert_eq!(
                Some(u64::from(packet().protocol)),
                value.as_u64(),
                "{context}"
            ),
            "protocol" => assert_eq!(
                packet().protocol,
                protocol_number(value.as_str().unwrap()),
                "{context}"
            ),
            "src_port" => assert_eq!(
                Some(u64::from(packet().src_port)),
                value.as_u64(),
                "{context}"
            ),
            "dst_port" => assert_eq!(
                Some(u64::from(packet().dst_port)),
                value.as_u64(),
                "{context}"
            ),
            "tcp_flags" => assert_eq!(
                Some(u64::from(packet().tcp_flags)),
                value.as_u64(),
                "{context}"
            ),
            "bytes" => assert_eq!(
                Some(u64::from(packet().ip_bytes)),
                value.as_u64(),
                "{context}"
            ),
            // Telegraf's `ip_total_len` for sFlow is the UDP length of the sampled packet
            // (1248 where the IPv4 total length is 1268): check the IP length against the
            // untagged frame instead (frame - 14 Ethernet - 4 FCS).
            "ip_total_len" => {
                let frame = facts["l2_bytes"].as_u64().expect("l2_bytes");
                assert_eq!(u64::from(packet().ip_bytes), frame - 18, "{context}");
            }
            "packets" => assert_eq!(value.as_u64(), Some(1), "{context}"),
            "vlan" => assert_eq!(Some(u64::from(packet().vlan)), value.as_u64(), "{context}"),
            // Without an extended switch record, collectors report the header's VLAN.
            "src_vlan" | "vlan_src" => {
                let vlan = if sample.src_vlan != 0 {
                    sample.src_vlan
                } else {
                    u32::from(packet().vlan)
                };
                assert_eq!(Some(u64::from(vlan)), value.as_u64(), "{context}")
            }
            "dst_vlan" | "vlan_dst" => {
                let vlan = if sample.dst_vlan != 0 {
                    sample.dst_vlan
                } else {
                    u32::from(packet().vlan)
                };
                assert_eq!(Some(u64::from(vlan)), value.as_u64(), "{context}")
            }
            "input_ifindex" | "in_snmp" => {
                assert_eq!(
                    Some(u64::from(sample.input_ifindex)),
                    value.as_u64(),
                    "{context}"
                )
            }
            "output_ifindex" | "out_snmp" => {
                assert_eq!(
                    Some(u64::from(sample.output_ifindex)),
                    value.as_u64(),
                    "{context}"
                )
            }
            "seq" | "seq_number" => assert_eq!(
                Some(u64::from(sample.sequence)),
                value.as_u64(),
                "{context}"
            ),
            "source_id_index" => {
                assert_eq!(
                    Some(u64::from(sample.source_id_index)),
                    value.as_u64(),
                    "{context}"
                )
            }
            "source_id_type" => {
                assert_eq!(
                    Some(u64::from(sample.source_id_type)),
                    value.as_u64(),
                    "{context}"
                )
            }
            "sampling_rate" | "sampling_interval" => {
                assert_eq!(
                    Some(u64::from(sample.sampling_rate)),
                    value.as_u64(),
                    "{context}"
                )
            }
            "sample_pool" => assert_eq!(
                Some(u64::from(sample.sample_pool)),
                value.as_u64(),
                "{context}"
            ),
            "drops" | "sampling_drops" => {
                assert_eq!(Some(u64::from(sample.drops)), value.as_u64(), "{context}")
            }
            "frame_length" | "l2_bytes" => {
                assert_eq!(
                    Some(u64::from(sample.frame_length)),
                    value.as_u64(),
                    "{context}"
                )
            }
            "raw_header" => {
                assert_eq!(value["protocol"], "ethernet", "{context}");
                assert_eq!(
                    Some(u64::from(sample.frame_length)),
                    value["frame_length"].as_u64()
                );
            }
            "extended_switch" => {
                assert_eq!(
                    Some(u64::from(sample.src_vlan)),
                    value["in_vlan"].as_u64(),
                    "{context}"
                );
                assert_eq!(
                    Some(u64::from(sample.dst_vlan)),
                    value["out_vlan"].as_u64(),
                    "{context}"
                );
            }
            "sampled_packet" => check_sflow_flow_facts(name, value, sample),
            "type" => assert_eq!(
                value.as_str().unwrap().starts_with("expanded"),
                sample.expanded,
                "{context}"
            ),
            _ => {}
        }
    }
}

fn check_sflow_counter_facts(name: &str, facts: &Value, sample: &sflow::CounterSample) {
    let interface = sample
        .interface
        .unwrap_or_else(|| panic!("{name}: no interface counters"));
    for (key, value) in facts.as_object().unwrap() {
        let context = format!("{name}: {key} in {facts}");
        let expected = value.as_u64();
        match key.as_str() {
            "seq" | "seq_number" => {
                assert_eq!(Some(u64::from(sample.sequence)), expected, "{context}")
            }
            "source_idx" | "source_id_index" => {
                assert_eq!(
                    Some(u64::from(sample.source_id_index)),
                    expected,
                    "{context}"
                )
            }
            "generic_ifindex" | "in_snmp" | "interface" => {
                assert_eq!(Some(u64::from(interface.if_index)), expected, "{context}")
            }
            "ifspeed" | "speed" => assert_eq!(Some(interface.if_speed), expected, "{context}"),
            "out_octets" | "out_bytes" => {
                assert_eq!(Some(interface.out_octets), expected, "{context}")
            }
            "in_bytes" => assert_eq!(Some(interface.in_octets), expected, "{context}"),
            "out_multicast_pkts" => {
                assert_eq!(
                    Some(u64::from(interface.out_multicast)),
                    expected,
                    "{context}"
                )
            }
            "in_errors" => assert_eq!(Some(u64::from(interface.in_errors)), expected, "{context}"),
            "in_unicast_packets_total" => {
                assert_eq!(Some(u64::from(interface.in_unicast)), expected, "{context}")
            }
            _ => {}
        }
    }
}

/// Checks header facts of one datagram described by `facts`.
fn check_sflow_header(name: &str, facts: &Value, datagram: &SflowDatagram) {
    for (key, value) in facts.as_object().unwrap() {
        let context = format!("{name}: {key}");
        match key.as_str() {
            "agent" | "agent_ip" => assert_eq!(datagram.agent, addr(value), "{context}"),
            "sub_agent" | "agent_subid" => {
                assert_eq!(
                    Some(u64::from(datagram.sub_agent_id)),
                    value.as_u64(),
                    "{context}"
                )
            }
            "sequence" => assert_eq!(
                Some(u64::from(datagram.sequence)),
                value.as_u64(),
                "{context}"
            ),
            "uptime_ms" | "sys_uptime" => {
                assert_eq!(
                    Some(u64::from(datagram.uptime_ms)),
                    value.as_u64(),
                    "{context}"
                )
            }
            "samples" => assert_eq!(
                Some(u64::from(datagram.sample_count)),
                value.as_u64(),
                "{context}"
            ),
            "datagram_version" => assert_eq!(value.as_u64(), Some(5), "{context}"),
            "flow_samples" => assert_eq!(
                Some(u64::from(datagram.stats.flow_samples)),
                value.as_u64(),
                "{context}"
            ),
            "expanded_flow_samples" => assert_eq!(
                Some(u64::from(datagram.stats.expanded_flow_samples)),
                value.as_u64(),
                "{context}"
            ),
            "counter_samples" => assert_eq!(
                Some(datagram.counters.len() as u64),
                value.as_u64(),
                "{context}"
            ),
            "flows_emitted" => {
                assert_eq!(
                    Some(datagram.traffic_records(1).count() as u64),
                    value.as_u64(),
                    "{context}"
                )
            }
            "sampling_rate" | "sampling_rate_all_samples" => {
                for sample in &datagram.flows {
                    assert_eq!(
                        Some(u64::from(sample.sampling_rate)),
                        value.as_u64(),
                        "{context}"
                    );
                }
            }
            "sample_formats" => {
                let formats: Vec<u64> = datagram
                    .flows
                    .iter()
                    .map(|sample| if sample.expanded { 3 } else { 1 })
                    .collect();
                let expected: Vec<u64> = value
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_u64)
                    .collect();
                assert_eq!(formats, expected, "{context}");
            }
            "flow_sample_0" | "flow_sample_1" | "flow_0" | "flow_1" => {
                let index: usize = key[key.len() - 1..].parse().unwrap();
                check_sflow_flow_facts(name, value, &datagram.flows[index]);
            }
            "counter_sample" => check_sflow_counter_facts(name, value, &datagram.counters[0]),
            "sample_0" | "sample_1" => {
                let index: usize = key[key.len() - 1..].parse().unwrap();
                let is_counter = value
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.contains("counter"));
                if is_counter {
                    check_sflow_counter_facts(name, value, &datagram.counters[index]);
                } else {
                    check_sflow_flow_facts(name, value, &datagram.flows[index]);
                }
            }
            _ => {}
        }
    }
}

fn check_sflow_group(group: &Value, golden: &Value, datagrams: &[Datagram]) {
    let name = group["group"].as_str().unwrap();
    let run = run_sflow(datagrams);
    let tshark = &golden["tshark_cross_check"];
    let expected = &golden["expected"];
    if expected.get("verdict").is_some() {
        assert!(
            run.decoded.is_empty(),
            "{name}: malformed datagram accepted"
        );
        assert_eq!(run.errors, ["truncated"], "{name}");
        return;
    }
    let non_sflow = expected
        .get("non_sflow_frames")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    assert_eq!(
        run.errors.len() as u64,
        non_sflow,
        "{name}: errors {:?}",
        run.errors
    );
    assert!(
        run.errors.iter().all(|reason| *reason == "bad_version"),
        "{name}"
    );
    assert_eq!(
        Some(run.decoded.len() as u64),
        tshark["sflow_datagrams"].as_u64(),
        "{name}: datagrams"
    );
    let total = |pick: fn(&SflowDatagram) -> u32| -> u64 {
        run.decoded.iter().map(|d| u64::from(pick(d))).sum()
    };
    for (key, pick) in [
        (
            "sflow: Flow sample",
            (|d: &SflowDatagram| d.stats.flow_samples) as fn(&SflowDatagram) -> u32,
        ),
        ("sflow: Expanded flow sample", |d| {
            d.stats.expanded_flow_samples
        }),
        ("sflow: Counters sample", |d| d.stats.counter_samples),
        ("sflow: Expanded counters sample", |d| {
            d.stats.expanded_counter_samples
        }),
        ("sflow: Unknown sample format", |d| d.stats.samples_skipped),
    ] {
        assert_eq!(
            total(pick),
            tshark.get(key).and_then(Value::as_u64).unwrap_or(0),
            "{name}: {key}"
        );
    }
    let first = &run.decoded[0];
    if expected.is_object() {
        check_sflow_header(name, expected, first);
        if let Some(frame) = expected.get("frame_1") {
            check_sflow_header(name, frame, first);
        }
        if let Some(agents) = expected.get("agents") {
            for agent in agents.as_array().unwrap() {
                let agent = addr(agent);
                assert!(
                    run.decoded.iter().any(|d| d.agent == agent),
                    "{name}: agent {agent}"
                );
            }
        }
    }
    if let Some(count) = golden.get("expected_metric_count").and_then(Value::as_u64) {
        let metrics: u64 = run
            .decoded
            .iter()
            .map(|d| (d.flows.len() + d.counters.len()) as u64 + u64::from(d.stats.samples_skipped))
            .sum();
        assert_eq!(metrics, count, "{name}: telegraf metrics");
        for metric in golden["first_metrics_key_fields"]
            .as_array()
            .into_iter()
            .flatten()
        {
            check_sflow_header(
                name,
                &serde_json::json!({
                    "agent_ip": metric["agent_ip"],
                    "agent_subid": metric["agent_subid"],
                }),
                first,
            );
            let seq = metric["seq_number"].as_u64().unwrap();
            if metric.get("reason").is_some() {
                continue; // drop notification: skipped format, counted above.
            }
            if metric.get("src").is_some() {
                let sample = first
                    .flows
                    .iter()
                    .find(|s| u64::from(s.sequence) == seq)
                    .unwrap_or_else(|| panic!("{name}: flow sample {seq}"));
                check_sflow_flow_facts(name, metric, sample);
            } else {
                let sample = first
                    .counters
                    .iter()
                    .find(|s| u64::from(s.sequence) == seq)
                    .unwrap_or_else(|| panic!("{name}: counter sample {seq}"));
                check_sflow_counter_facts(name, metric, sample);
            }
        }
    }
}

#[test]
fn every_corpus_group_decodes_to_its_expected_values() {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("MANIFEST.json")).unwrap()).unwrap();
    let groups = manifest.as_array().unwrap();
    assert_eq!(groups.len(), 74, "corpus groups");
    let mut checked = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    for group in groups {
        let name = group["group"].as_str().unwrap();
        let dir = group["dir"].as_str().unwrap();
        let Some(golden_path) = locate(&format!(
            "{dir}/{}",
            group["own_golden_json"].as_str().unwrap()
        )) else {
            skipped.push(name.to_string());
            continue;
        };
        let golden: Value = serde_json::from_slice(&std::fs::read(golden_path).unwrap()).unwrap();
        let mut datagrams = Vec::new();
        let mut missing = false;
        for file in golden["feed_in_order"].as_array().unwrap() {
            let relative = format!("{dir}/{}", file.as_str().unwrap());
            let entry = group["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|entry| entry["path"].as_str() == Some(&relative))
                .unwrap_or_else(|| panic!("{name}: {relative} not in manifest"));
            match datagrams_of(&relative, entry["datagrams"].as_u64().unwrap_or(1)) {
                Some(found) => datagrams.extend(found),
                None => missing = true,
            }
        }
        if missing {
            assert!(
                dir.contains("copyleft"),
                "{name}: permissive file missing from test data"
            );
            skipped.push(name.to_string());
            continue;
        }
        let outcome = std::panic::catch_unwind(|| {
            if dir.starts_with("sflow") {
                check_sflow_group(group, &golden, &datagrams);
            } else {
                check_netflow_group(group, &golden, &datagrams);
            }
        });
        if outcome.is_err() {
            failed.push(name.to_string());
        }
        checked.insert(name.to_string(), datagrams.len());
    }
    eprintln!(
        "checked {} groups, skipped (copyleft, absent): {skipped:?}",
        checked.len()
    );
    assert!(
        failed.is_empty(),
        "groups failing their expected values: {failed:?}"
    );
    if shared_corpus().is_some() {
        assert_eq!(
            checked.len(),
            74,
            "every group must be checked when the corpus is present"
        );
    } else {
        assert_eq!(checked.len() + skipped.len(), 74);
        assert!(skipped.len() <= 13, "only copyleft groups may be skipped");
    }
}

/// Reads a permissive raw corpus file from the project's test data.
fn raw(relative: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(relative)).expect("corpus file")
}

#[test]
fn templates_learned_before_a_restart_decode_data_after_it() {
    let templates = [
        raw("netflow9/cisco_asa_unkver-b_nfv9-nsel-tpl26x.dat"),
        raw("netflow9/cisco_asa_unkver-b_nfv9-nsel-tpl27x.dat"),
        raw("ipfix/mikrotik_routeros6.39.2_ipfix-tpl258-259.dat"),
    ];
    let data = [
        raw("netflow9/cisco_asa_unkver-b_nfv9-nsel-data256-263.dat"),
        raw("ipfix/mikrotik_routeros6.39.2_ipfix-data259-ipv6.dat"),
    ];
    let count = |cache: &mut TemplateCache| -> usize {
        data.iter()
            .map(|datagram| {
                decode_netflow_family(datagram, RAW_EXPORTER, cache)
                    .expect("decodes")
                    .records()
                    .len()
            })
            .sum()
    };
    assert_eq!(
        count(&mut TemplateCache::default()),
        0,
        "no templates, no records"
    );
    let mut before = TemplateCache::default();
    for datagram in &templates {
        decode_netflow_family(datagram, RAW_EXPORTER, &mut before).expect("templates");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flow-templates.json");
    before.save(&path).expect("save");
    let mut after = TemplateCache::load(&path).expect("load");
    assert_eq!(after.len(), before.len());
    let restarted = count(&mut after);
    assert_eq!(restarted, count(&mut before));
    assert_eq!(
        restarted,
        19 + 18,
        "ASA 19 records + MikroTik IPv6 18 records"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Every corpus datagram (permissive copies), for mutation.
    fn seeds() -> &'static [Vec<u8>] {
        static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        SEEDS.get_or_init(load_seeds)
    }

    fn load_seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for dir in ["sflow", "netflow5", "netflow9", "ipfix"] {
            for entry in std::fs::read_dir(data_dir().join(dir)).expect("data dir") {
                let path = entry.expect("entry").path();
                let name = path.to_string_lossy().to_string();
                if name.ends_with(".json") {
                    continue;
                }
                let bytes = std::fs::read(&path).expect("read");
                if name.ends_with(".pcap") {
                    out.extend(pcap_payloads(&bytes).into_iter().map(|d| d.payload));
                } else {
                    out.push(bytes);
                }
            }
        }
        out
    }

    /// Runs every decoder on the input; they must return, whatever the bytes.
    fn decode_all(bytes: &[u8], cache: &mut TemplateCache) {
        let _ = sflow::decode(bytes);
        let _ = fnm_agent::flow::netflow5::decode(bytes);
        let _ = fnm_agent::flow::netflow9::decode(bytes, RAW_EXPORTER, cache);
        let _ = fnm_agent::flow::ipfix::decode(bytes, RAW_EXPORTER, cache);
        if let Ok(decoded) = decode_netflow_family(bytes, RAW_EXPORTER, cache) {
            let _ = decoded.traffic_records(0).count();
        }
        if let Ok(decoded) = sflow::decode(bytes) {
            let _ = decoded.traffic_records(0).count();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            decode_all(&bytes, &mut TemplateCache::default());
        }

        #[test]
        fn random_bytes_with_valid_versions_never_panic(
            version in prop_oneof![Just(5u16), Just(9u16), Just(10u16)],
            mut bytes in proptest::collection::vec(any::<u8>(), 4..1500),
        ) {
            bytes[0..2].copy_from_slice(&version.to_be_bytes());
            if version == 10 {
                let len = bytes.len() as u16;
                bytes[2..4].copy_from_slice(&len.to_be_bytes());
            }
            let mut cache = TemplateCache::default();
            decode_all(&bytes, &mut cache);
            let mut sflow_bytes = vec![0, 0, 0, 5, 0, 0, 0, 1];
            sflow_bytes.extend_from_slice(&bytes);
            decode_all(&sflow_bytes, &mut cache);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn truncated_and_mutated_corpus_datagrams_never_panic(
            seed in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        ) {
            let seeds = seeds();
            let original = seed.get(seeds);
            let mut cache = TemplateCache::default();
            // Learn templates from every seed first so that mutated data meets real templates.
            for datagram in seeds {
                let _ = decode_netflow_family(datagram, RAW_EXPORTER, &mut cache);
            }
            let mut mutated = original.clone();
            for (index, value) in &flips {
                if !mutated.is_empty() {
                    let at = index.index(mutated.len());
                    mutated[at] = *value;
                }
            }
            decode_all(&mutated, &mut cache);
            let len = if original.is_empty() { 0 } else { cut.index(original.len()) };
            decode_all(&original[..len], &mut cache);
        }
    }
}
