//! Packets/s through the userspace path on one core: an in-memory pcap is read with
//! `pcap_file` and every frame parsed into a record (plain IPv4/IPv6 and tunnelled traffic),
//! and, in the `parse_account` group, every record also goes through the accounting
//! (per-host counters, 5-tuple flow table, totals) exactly as the agent's capture thread does:
//! buffered in a `RecordBatcher` and added under one lock of a `Mutex<Accounting>` per batch
//! (`batched`), or, for comparison, one lock and `Accounting::ingest` per record
//! (`per_record_lock`, the agent before batching). `userspace_path/<frames>` is the whole
//! capture-side path (pcap reader, `deliver`, frame counters, sink); `<frames>/parser_fast`
//! and `<frames>/parser_full` time only parsing frames already in memory, with `parse_frame`
//! (fast path first) and with the general parser alone (`parse_frame_full`).
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time, so
//! that other processes on a busy build machine do not inflate them.
//!
//! ```text
//! cargo bench -p fnm-agent --bench userspace_path
//! ```

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fnm_agent::accounting::Accounting;
use fnm_agent::capture::batch::{RecordBatcher, DEFAULT_BATCH_CAPACITY};
use fnm_agent::capture::parse::{parse_frame, parse_frame_full, Decoded, LinkType, Skip};
use fnm_agent::capture::pcap_file::{replay, PcapReader};
use fnm_agent::capture::PacketSink;
use fnm_agent::prefix::{Prefix, PrefixSet};
use fnm_agent::traffic::{Source, TrafficRecord};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

const PACKETS: usize = 10_000;

type ParseFn = fn(LinkType, &[u8]) -> Result<Decoded, Skip>;

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `routine` `iters` times; returns the thread CPU time it took.
fn cpu_time<R>(iters: u64, mut routine: impl FnMut() -> R) -> Duration {
    let start = thread_cpu();
    for _ in 0..iters {
        black_box(routine());
    }
    thread_cpu() - start
}

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
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    let mut reader = PcapReader::from_bytes(black_box(&file)).expect("valid pcap");
                    let mut bytes = 0u64;
                    let mut sink = |_ts: Duration, r: TrafficRecord| bytes += r.bytes;
                    let stats = replay(&mut reader, &mut sink).expect("replays");
                    assert_eq!(stats.records, PACKETS as u64);
                    black_box(bytes)
                })
            })
        });
        let frames: Vec<Vec<u8>> = (0..PACKETS).map(|i| frame(i, tunnel)).collect();
        for (parser, parse) in [
            ("full", parse_frame_full as ParseFn),
            ("fast", parse_frame as ParseFn),
        ] {
            group.bench_function(format!("{name}/parser_{parser}"), |b| {
                b.iter_custom(|iters| {
                    cpu_time(iters, || {
                        let mut bytes = 0u64;
                        for frame in black_box(&frames) {
                            let decoded = parse(LinkType::Ethernet, frame).expect("parses");
                            bytes += decoded.record.bytes;
                        }
                        black_box(bytes)
                    })
                })
            });
        }
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

fn victim_accounted(shared: &Mutex<Accounting>) -> bool {
    let victim = IpAddr::V4(Ipv4Addr::new(10, 20, 0, 1));
    let acc = shared.lock().expect("not poisoned");
    acc.host(victim).is_some()
}

fn bench_parse_account(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_account");
    group.throughput(Throughput::Elements(PACKETS as u64));
    for (name, tunnel) in [("vlan_ipv4_tcp", false), ("vlan_gre_ipv4_tcp", true)] {
        let file = pcap(tunnel);
        let shared = Mutex::new(accounting());
        group.bench_function(format!("{name}/batched"), |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    let mut reader = PcapReader::from_bytes(black_box(&file)).expect("valid pcap");
                    let mut sink =
                        RecordBatcher::new(DEFAULT_BATCH_CAPACITY, |rs: &[TrafficRecord]| {
                            shared
                                .lock()
                                .expect("not poisoned")
                                .ingest_batch(rs, Source::Pcap)
                        });
                    let stats = replay(&mut reader, &mut sink).expect("replays");
                    sink.flush();
                    assert_eq!(stats.records, PACKETS as u64);
                    assert!(victim_accounted(&shared), "the victim was accounted");
                })
            })
        });
        group.bench_function(format!("{name}/per_record_lock"), |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    let mut reader = PcapReader::from_bytes(black_box(&file)).expect("valid pcap");
                    let mut sink = |_ts: Duration, r: TrafficRecord| {
                        shared
                            .lock()
                            .expect("not poisoned")
                            .ingest(&r, Source::Pcap)
                    };
                    let stats = replay(&mut reader, &mut sink).expect("replays");
                    assert_eq!(stats.records, PACKETS as u64);
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_parse_account);
criterion_main!(benches);
