//! Packets/s through the userspace path on one core: an in-memory pcap is read with
//! `pcap_file` and every frame parsed into a record (plain IPv4/IPv6 and tunnelled traffic),
//! and, in the `parse_account` group, every record also goes through `Accounting::ingest`
//! (per-host counters, 5-tuple flow table, totals) exactly as the live pcap backend does.
//!
//! ```text
//! cargo bench -p fnm-agent --bench userspace_path
//! ```

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fnm_agent::accounting::Accounting;
use fnm_agent::capture::pcap_file::{replay, PcapReader};
use fnm_agent::prefix::{Prefix, PrefixSet};
use fnm_agent::traffic::{Source, TrafficRecord};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const PACKETS: usize = 10_000;

fn frame(i: usize, tunnel: bool) -> Vec<u8> {
    let mut ip = vec![
        0x45,
        0,
        0,
        60,
        0,
        0,
        0,
        0,
        64,
        6,
        0,
        0,
        10,
        200,
        (i >> 8) as u8,
        i as u8,
        10,
        20,
        0,
        1,
    ];
    ip.extend([
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    ip.extend([0u8; 20]);
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0, 0, 10, 0x08, 0];
    if tunnel {
        // GRE over IPv4 around the packet.
        let total = (20 + 4 + ip.len()) as u16;
        f.extend([
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            47,
            0,
            0,
            192,
            0,
            2,
            1,
            192,
            0,
            2,
            2,
        ]);
        f.extend([0, 0, 0x08, 0]);
    }
    f.extend(ip);
    f
}

fn pcap(tunnel: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [0xA1B2_C3D4u32, 0x0004_0002, 0, 0, 65535, 1] {
        out.extend(v.to_le_bytes());
    }
    for i in 0..PACKETS {
        let f = frame(i, tunnel);
        for v in [1_700_000_000u32, i as u32, f.len() as u32, f.len() as u32] {
            out.extend(v.to_le_bytes());
        }
        out.extend(f);
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("userspace_path");
    group.throughput(Throughput::Elements(PACKETS as u64));
    for (name, tunnel) in [("vlan_ipv4_tcp", false), ("vlan_gre_ipv4_tcp", true)] {
        let file = pcap(tunnel);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut reader = PcapReader::from_bytes(black_box(&file)).expect("valid pcap");
                let mut bytes = 0u64;
                let mut sink = |_ts: Duration, r: TrafficRecord| bytes += r.bytes;
                let stats = replay(&mut reader, &mut sink).expect("replays");
                assert_eq!(stats.records, PACKETS as u64);
                black_box(bytes)
            })
        });
    }
    group.finish();
}

/// Accounting as the agent builds it by default: the victim's /16 is local; 10 000 sources
/// (one 5-tuple each) hit one host, so every record credits a host and probes the flow table.
fn accounting() -> Accounting {
    let local = Prefix::new(IpAddr::V4(Ipv4Addr::new(10, 20, 0, 0)), 16).expect("valid prefix");
    let networks: PrefixSet = [local].into_iter().collect();
    Accounting::new(networks, 1 << 20, 1 << 20, 1000).with_rate_window(1000)
}

fn bench_parse_account(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_account");
    group.throughput(Throughput::Elements(PACKETS as u64));
    for (name, tunnel) in [("vlan_ipv4_tcp", false), ("vlan_gre_ipv4_tcp", true)] {
        let file = pcap(tunnel);
        let mut acc = accounting();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut reader = PcapReader::from_bytes(black_box(&file)).expect("valid pcap");
                let mut sink = |_ts: Duration, r: TrafficRecord| acc.ingest(&r, Source::Pcap);
                let stats = replay(&mut reader, &mut sink).expect("replays");
                assert_eq!(stats.records, PACKETS as u64);
            })
        });
        let victim = IpAddr::V4(Ipv4Addr::new(10, 20, 0, 1));
        assert!(acc.host(victim).is_some(), "the victim was accounted");
    }
    group.finish();
}

criterion_group!(benches, bench, bench_parse_account);
criterion_main!(benches);
