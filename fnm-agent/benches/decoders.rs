//! Decoder throughput (records/s) on corpus data, and the `netflow_parser` crate on the same
//! NetFlow v5 / v9 / IPFIX inputs in the same run. Templates are learned before measuring, so
//! the v9/IPFIX numbers are the steady state (data datagrams through known templates).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fnm_agent::flow::{decode_netflow_family, ipfix, netflow5, netflow9, sflow, TemplateCache};
use fnm_agent::traffic::TrafficRecord;
use netflow_parser::NetflowParser;

/// The flow ingest benchmark's traffic (its local and remote hosts are not used here).
#[allow(dead_code)]
#[path = "../tests/common/flow_bench.rs"]
mod flow_bench;

const EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

fn corpus(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/flows")
        .join(relative);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// A template-based workload: datagrams that define templates, then data datagrams.
struct Workload {
    name: &'static str,
    templates: Vec<Vec<u8>>,
    data: Vec<Vec<u8>>,
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "netflow5",
            templates: vec![],
            data: vec![
                corpus("netflow5/juniper_mx80_junos-unkver_nfv5-29flows-sampling1000.dat"),
                corpus("netflow5/mikrotik_routeros_unkver_nfv5-30flows.dat"),
            ],
        },
        Workload {
            name: "netflow9",
            templates: vec![
                corpus("netflow9/cisco_asr9k_iosxr-unkver_nfv9-tpl260.dat"),
                corpus("netflow9/cisco_asa_unkver-b_nfv9-nsel-tpl26x.dat"),
                corpus("netflow9/cisco_asa_unkver-b_nfv9-nsel-tpl27x.dat"),
            ],
            data: vec![
                corpus("netflow9/cisco_asr9k_iosxr-unkver_nfv9-data260.dat"),
                corpus("netflow9/cisco_asa_unkver-b_nfv9-nsel-data256-263.dat"),
            ],
        },
        Workload {
            name: "ipfix",
            templates: vec![
                corpus("ipfix/mikrotik_routeros6.39.2_ipfix-tpl258-259.dat"),
                corpus("ipfix/openbsd_pflow_unkver_ipfix-tpl256-257.dat"),
            ],
            data: vec![
                corpus("ipfix/mikrotik_routeros6.39.2_ipfix-data258-ipv4.dat"),
                corpus("ipfix/mikrotik_routeros6.39.2_ipfix-data259-ipv6.dat"),
                corpus("ipfix/openbsd_pflow_unkver_ipfix-data256-26flows.dat"),
            ],
        },
    ]
}

/// Records our decoder finds in the workload's data datagrams (the throughput unit).
fn record_count(workload: &Workload) -> u64 {
    let mut cache = TemplateCache::default();
    for datagram in &workload.templates {
        decode_netflow_family(datagram, EXPORTER, &mut cache).expect("templates decode");
    }
    workload
        .data
        .iter()
        .map(|datagram| {
            decode_netflow_family(datagram, EXPORTER, &mut cache)
                .expect("data decodes")
                .record_count() as u64
        })
        .sum()
}

fn netflow_family(c: &mut Criterion) {
    for workload in workloads() {
        let records = record_count(&workload);
        assert!(records > 0, "{}: no records", workload.name);
        let mut group = c.benchmark_group(format!("decode/{}", workload.name));
        group.throughput(Throughput::Elements(records));

        let mut cache = TemplateCache::default();
        for datagram in &workload.templates {
            decode_netflow_family(datagram, EXPORTER, &mut cache).expect("templates");
        }
        // Reused across iterations, as the collector reuses its batch buffer.
        let mut out: Vec<TrafficRecord> = Vec::with_capacity(64);
        group.bench_function(BenchmarkId::new("fnm", records), |b| {
            b.iter(|| {
                let mut total = 0usize;
                for datagram in &workload.data {
                    total += match workload.name {
                        "netflow5" => {
                            // A v5 datagram decodes to a borrowed view; materialise every
                            // record as the collector does (below), so read it all here too.
                            netflow5::decode(black_box(datagram)).map(|d| {
                                out.clear();
                                out.extend(d.traffic_records(1));
                                black_box(&out);
                                out.len()
                            })
                        }
                        "netflow9" => netflow9::decode(black_box(datagram), EXPORTER, &mut cache)
                            .map(|d| d.records.len()),
                        _ => ipfix::decode(black_box(datagram), EXPORTER, &mut cache)
                            .map(|d| d.records.len()),
                    }
                    .unwrap_or(0);
                }
                black_box(total)
            })
        });
        group.bench_function(BenchmarkId::new("fnm+traffic", records), |b| {
            b.iter(|| {
                let mut total = 0u64;
                for datagram in &workload.data {
                    if let Ok(decoded) =
                        decode_netflow_family(black_box(datagram), EXPORTER, &mut cache)
                    {
                        out.clear();
                        decoded.extend_traffic(1, &mut out);
                        black_box(&out);
                        total += out.len() as u64;
                    }
                }
                black_box(total)
            })
        });

        let mut parser = NetflowParser::default();
        for datagram in &workload.templates {
            let _ = parser.parse_bytes(datagram);
        }
        group.bench_function(BenchmarkId::new("netflow_parser", records), |b| {
            b.iter(|| {
                let mut total = 0usize;
                for datagram in &workload.data {
                    total += parser.parse_bytes(black_box(datagram)).packets.len();
                }
                black_box(total)
            })
        });
        if workload.name == "netflow5" {
            // The generic wide record (every field, like the crate's `FlowSet`), into a reused
            // buffer.
            let mut flows = Vec::with_capacity(64);
            group.bench_function(BenchmarkId::new("fnm/FlowRecord", records), |b| {
                b.iter(|| {
                    let mut total = 0usize;
                    for datagram in &workload.data {
                        if let Ok(decoded) = netflow5::decode(black_box(datagram)) {
                            flows.clear();
                            flows.extend(decoded.flow_records());
                            black_box(&flows);
                            total += flows.len();
                        }
                    }
                    black_box(total)
                })
            });
            // The crate's other public entry points, to compare against its fastest one: the
            // allocation-free packet iterator of a reused parser, and the bare v5 parser
            // (`V5::parse_direct`, input after the 2-byte version).
            group.bench_function(
                BenchmarkId::new("netflow_parser/iter_packets", records),
                |b| {
                    b.iter(|| {
                        let mut total = 0usize;
                        for datagram in &workload.data {
                            for packet in parser.iter_packets(black_box(datagram)).flatten() {
                                if let netflow_parser::NetflowPacket::V5(v5) = black_box(packet) {
                                    total += v5.flowsets.len();
                                }
                            }
                        }
                        black_box(total)
                    })
                },
            );
            group.bench_function(
                BenchmarkId::new("netflow_parser/V5::parse_direct", records),
                |b| {
                    b.iter(|| {
                        let mut total = 0usize;
                        for datagram in &workload.data {
                            if let Ok((_, v5)) =
                                netflow_parser::static_versions::v5::V5::parse_direct(black_box(
                                    &datagram[2..],
                                ))
                            {
                                total += black_box(v5).flowsets.len();
                            }
                        }
                        black_box(total)
                    })
                },
            );
        }
        group.finish();
    }
}

fn sflow_decoder(c: &mut Criterion) {
    let datagrams = [
        corpus("sflow/hsflowd_linux_unkver_sflow5-7flowsamples-ethframe-record.bin"),
        corpus("sflow/unknown_router_unkver_sflow5-5flowsamples-rate4096.bin"),
        corpus("sflow/unknown_switch_unkver_sflow5-flows+counters-vlan.bin"),
    ];
    let samples: u64 = datagrams
        .iter()
        .map(|d| {
            let decoded = sflow::decode(d).expect("sflow decodes");
            (decoded.flows.len() + decoded.counters.len()) as u64
        })
        .sum();
    let mut group = c.benchmark_group("decode/sflow");
    group.throughput(Throughput::Elements(samples));
    group.bench_function(BenchmarkId::new("fnm", samples), |b| {
        b.iter(|| {
            let mut total = 0u64;
            for datagram in &datagrams {
                if let Ok(decoded) = sflow::decode(black_box(datagram)) {
                    total += decoded.traffic_records(1).map(|t| t.bytes).sum::<u64>();
                }
            }
            black_box(total)
        })
    });
    // What a collector worker runs: straight into its reused buffer of traffic records.
    let mut out = Vec::with_capacity(64);
    group.bench_function(BenchmarkId::new("fnm_traffic", samples), |b| {
        b.iter(|| {
            for datagram in &datagrams {
                out.clear();
                let _ = black_box(sflow::decode_traffic(black_box(datagram), 1, &mut out));
            }
            black_box(out.len())
        })
    });
    group.finish();
}

/// A datagram of ten compact flow samples, each an Ethernet frame of IPv6 to a distinct
/// host of 2001:db8::/64 (TCP, UDP, and TCP after a hop-by-hop header in turn), as a router
/// samples IPv6 traffic: the corpus holds no sampled IPv6 packet.
fn sflow_ipv6_datagram() -> Vec<u8> {
    let words = |bytes: &mut Vec<u8>, words: &[u32]| {
        for word in words {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
    };
    let mut datagram = Vec::new();
    words(&mut datagram, &[5, 1, 0xC000_0201, 0, 1, 1000, 10]);
    for i in 0..10u8 {
        let (next, chain): (u8, &[u8]) = match i % 3 {
            0 => (6, &[]),
            1 => (17, &[]),
            _ => (0, &[6, 0, 0, 0, 0, 0, 0, 0]),
        };
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xDD];
        frame.extend_from_slice(&[0x60, 0, 0, 0, 0x05, 0xC8, next, 64]);
        frame.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9,
        ]);
        frame.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, i]);
        frame.extend_from_slice(chain);
        frame.extend_from_slice(&[0xC3, 0x50, 0x01, 0xBB, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10]);
        frame.resize(128, 0);
        let mut record = Vec::new();
        words(&mut record, &[1, 1518, 4, frame.len() as u32]);
        record.extend_from_slice(&frame);
        let mut sample = Vec::new();
        words(
            &mut sample,
            &[u32::from(i), 3, 1024, u32::from(i) * 1024, 0, 3, 4, 1],
        );
        words(&mut sample, &[1, record.len() as u32]);
        sample.extend_from_slice(&record);
        words(&mut datagram, &[1, sample.len() as u32]);
        datagram.extend_from_slice(&sample);
    }
    datagram
}

/// IPv6 sampled packets straight into a reused buffer of traffic records.
fn sflow_ipv6_decoder(c: &mut Criterion) {
    let datagram = sflow_ipv6_datagram();
    let mut out = Vec::with_capacity(64);
    let summary = sflow::decode_traffic(&datagram, 1, &mut out).expect("sflow decodes");
    assert_eq!((summary.flow_samples, out.len()), (10, 10));
    assert!(out.iter().all(|r| r.dst.is_ipv6() && r.src_port == 50000));
    traffic_case(c, "decode/sflow_ipv6", &datagram, 10);
}

/// `decode_traffic` of `datagram` (`samples` flow samples) into a reused buffer of traffic
/// records, as the `fnm_traffic` case of criterion group `group`.
fn traffic_case(c: &mut Criterion, group: &str, datagram: &[u8], samples: u64) {
    let mut out = Vec::with_capacity(64);
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(samples));
    group.bench_function(BenchmarkId::new("fnm_traffic", samples), |b| {
        b.iter(|| {
            out.clear();
            let _ = black_box(sflow::decode_traffic(black_box(datagram), 1, &mut out));
            black_box(out.len())
        })
    });
    group.finish();
}

/// The ingest bench's sFlow datagram ([`flow_bench::sflow_datagram`]) straight into a reused buffer of traffic records: the
/// collector's per-datagram work in the live profile (10 samples per datagram).
fn sflow_ingest_decoder(c: &mut Criterion) {
    let datagram = flow_bench::sflow_datagram(7);
    let mut out = Vec::with_capacity(64);
    let summary = sflow::decode_traffic(&datagram, 1, &mut out).expect("sflow decodes");
    assert_eq!((summary.flow_samples, out.len()), (10, 10));
    assert!(out.iter().all(|r| r.dst_port == 53 && r.bytes == 128));
    traffic_case(c, "decode/sflow_ingest", &datagram, 10);
}

/// One NetFlow v5 contender: decodes both corpus datagrams and returns the records it read.
type V5Contender = fn(&[Vec<u8>], &mut V5State) -> usize;

/// Buffers and parser the contenders reuse across rounds.
struct V5State {
    traffic: Vec<TrafficRecord>,
    parser: NetflowParser,
}

fn v5_fnm(data: &[Vec<u8>], state: &mut V5State) -> usize {
    let mut total = 0;
    for datagram in data {
        if let Ok(decoded) = netflow5::decode(black_box(datagram)) {
            state.traffic.clear();
            state.traffic.extend(decoded.traffic_records(1));
            black_box(&state.traffic);
            total += state.traffic.len();
        }
    }
    total
}

fn v5_parse_bytes(data: &[Vec<u8>], state: &mut V5State) -> usize {
    let mut total = 0;
    for datagram in data {
        for packet in black_box(state.parser.parse_bytes(black_box(datagram))).packets {
            if let netflow_parser::NetflowPacket::V5(v5) = packet {
                total += v5.flowsets.len();
            }
        }
    }
    total
}

fn v5_iter_packets(data: &[Vec<u8>], state: &mut V5State) -> usize {
    let mut total = 0;
    for datagram in data {
        for packet in state.parser.iter_packets(black_box(datagram)).flatten() {
            if let netflow_parser::NetflowPacket::V5(v5) = black_box(packet) {
                total += v5.flowsets.len();
            }
        }
    }
    total
}

fn v5_parse_direct(data: &[Vec<u8>], _state: &mut V5State) -> usize {
    let mut total = 0;
    for datagram in data {
        let body = datagram.get(2..).unwrap_or_default();
        if let Ok((_, v5)) = netflow_parser::static_versions::v5::V5::parse_direct(black_box(body))
        {
            total += black_box(v5).flowsets.len();
        }
    }
    total
}

/// NetFlow v5 against every `netflow_parser` entry point, interleaved: many short rounds, each
/// timing a batch of every contender back to back (rotating the order), so that load from other
/// processes hits all of them alike; prints the median records/s of each and the median of the
/// per-round ratios. Runs only under `cargo bench` and when the filter (if any) names v5.
fn netflow5_interleaved() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let filters: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let is_option_value = *i > 0
                && matches!(
                    args[i - 1].as_str(),
                    "--warm-up-time" | "--measurement-time"
                );
            !a.starts_with('-') && !is_option_value
        })
        .map(|(_, a)| a)
        .collect();
    let wanted = |filter: &&String| {
        ["netflow5", "v5", "interleaved"]
            .iter()
            .any(|name| filter.contains(name))
    };
    if !filters.is_empty() && !filters.iter().any(wanted) {
        return;
    }
    let data = workloads()
        .into_iter()
        .find(|w| w.name == "netflow5")
        .map(|w| w.data)
        .unwrap_or_default();
    let contenders: [(&str, V5Contender); 4] = [
        ("fnm (decode + TrafficRecord into a reused Vec)", v5_fnm),
        ("netflow_parser parse_bytes", v5_parse_bytes),
        ("netflow_parser iter_packets", v5_iter_packets),
        ("netflow_parser V5::parse_direct", v5_parse_direct),
    ];
    let mut state = V5State {
        traffic: Vec::with_capacity(64),
        parser: NetflowParser::default(),
    };
    const ROUNDS: usize = 1000;
    const BATCH: usize = 500;
    let mut ns_per_record = vec![Vec::with_capacity(ROUNDS); contenders.len()];
    for round in 0..ROUNDS {
        for k in 0..contenders.len() {
            let index = (round + k) % contenders.len();
            let run = contenders[index].1;
            let start = std::time::Instant::now();
            let mut records = 0;
            for _ in 0..BATCH {
                records += run(&data, &mut state);
            }
            let elapsed = start.elapsed().as_nanos() as f64;
            ns_per_record[index].push(elapsed / records.max(1) as f64);
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    let fnm_rounds = ns_per_record[0].clone();
    println!("decode/netflow5-interleaved ({ROUNDS} rounds of {BATCH} x 2 datagrams, 59 records):");
    for (index, (name, _)) in contenders.iter().enumerate() {
        let mut ratios: Vec<f64> = ns_per_record[index]
            .iter()
            .zip(&fnm_rounds)
            .map(|(other, fnm)| other / fnm)
            .collect();
        let ratio = median(&mut ratios);
        let ns = median(&mut ns_per_record[index]);
        println!(
            "  {name:<48} {:>7.1} M records/s  ({ns:.2} ns/record)  fnm ratio {ratio:.2}x",
            1e3 / ns
        );
    }
}

criterion_group!(
    benches,
    netflow_family,
    sflow_decoder,
    sflow_ipv6_decoder,
    sflow_ingest_decoder
);
criterion_main!(benches, netflow5_interleaved);
