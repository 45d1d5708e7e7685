//! Detection latency benchmark (issue 4): time from flood start to the notify script's `ban`
//! call, over 20 floods at 2.5× and at 10× a packets/s threshold.
//!
//! - fnm: the real `fnm-agent` counts a UDP flood on the XDP path (generic XDP on a veth in a
//!   namespace, default `poll_interval`), flooded from the peer namespace with `sendmmsg`.
//! - FastNetMon (Debian 1.2.4), in the same run, interleaved flood by flood: the same flood
//!   described as sFlow v5 datagrams (1:1 sampling, raw Ethernet/IPv4/UDP headers) on 127.0.0.1.
//!   It is restarted for each flood, so every flood meets an idle average, as fnm's floods do.
//!
//! Both call a script that appends `date +%s.%N` first thing; latency = that stamp − the wall
//! clock just before the flood's first packet. Needs root and the Debian package `fastnetmon`.
//!
//! ```text
//! cargo test --release -p fnm-agent --test detection_latency_bench -- --ignored --nocapture --test-threads=1
//! ```
//! `FNM_LATENCY_FLOODS` changes the number of floods per level and detector (default 20).
#![cfg(target_os = "linux")]

mod common;

use common::{flood::*, netns::NetnsPair, require_root};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

/// The packets/s threshold both detectors get.
const THRESHOLD_PPS: u64 = 4000;
/// Flood rates as multiples of the threshold.
const LEVELS: [f64; 2] = [2.5, 10.0];
/// sFlow sampling rate of the FastNetMon feed (1: every packet is a sample).
const SFLOW_SAMPLING_RATE: u32 = 1;
/// A flood not detected within this is recorded as a miss.
const DETECTION_TIMEOUT: Duration = Duration::from_secs(20);
/// UDP port of the victim.
const VICTIM_PORT: u16 = 9999;

/// One flood's outcome.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Flood start → `ban` call, in seconds; None when not detected in time.
    latency: Option<f64>,
    /// What the sender achieved.
    flood: FloodReport,
    /// The attack power the `ban` call reported (its third argument).
    reported_pps: u64,
}

/// Results per detector and level.
#[derive(Default)]
struct Results {
    runs: Vec<(&'static str, f64, Run)>,
}

impl Results {
    fn of(&self, detector: &str, level: f64) -> Vec<Run> {
        self.runs
            .iter()
            .filter(|(d, l, _)| *d == detector && *l == level)
            .map(|(_, _, r)| *r)
            .collect()
    }
}

fn floods_per_level() -> usize {
    std::env::var("FNM_LATENCY_FLOODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// One flood against fnm: waits a random part of a second (spreading starts over the poll
/// phase), floods until the `ban` call, then waits for the `unban` so the next flood is a fresh
/// detection.
fn fnm_flood(pair: &NetnsPair, victim: SocketAddrV4, pps: f64, log: &std::path::Path) -> Run {
    let bans = count_calls(log, "ban");
    let unbans = count_calls(log, "unban");
    std::thread::sleep(Duration::from_secs_f64(phase_fraction()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = udp_flood(&pair.peer, victim, pps, stop.clone());
    let ban = wait_for_call(log, "ban", bans, DETECTION_TIMEOUT);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let flood = sender.join().expect("sender thread");
    if ban.is_some() {
        assert!(
            wait_for_call(log, "unban", unbans, Duration::from_secs(30)).is_some(),
            "fnm never unbanned after a flood"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    Run {
        latency: ban.as_ref().map(|b| b.at_unix - flood.started_unix),
        reported_pps: ban.map(|b| b.pps).unwrap_or(0),
        flood,
    }
}

/// One flood against a freshly started FastNetMon, fed over sFlow.
fn fastnetmon_flood(attacker: Ipv4Addr, victim: SocketAddrV4, pps: f64) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let (script, log) = timestamp_script(dir.path());
    let fastnetmon = FastNetMon::start(dir.path(), *victim.ip(), THRESHOLD_PPS, &script);
    // Let its speed thread run a few ticks, then start at a random phase of its 1 s tick.
    std::thread::sleep(Duration::from_secs_f64(2.0 + phase_fraction()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = sflow_flood(
        fastnetmon.sflow,
        attacker,
        victim,
        pps,
        SFLOW_SAMPLING_RATE,
        stop.clone(),
    );
    let ban = wait_for_call(&log, "ban", 0, DETECTION_TIMEOUT);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let flood = sender.join().expect("sFlow sender thread");
    if ban.is_none() {
        eprintln!(
            "FastNetMon missed a {pps} pps flood; its log:\n{}",
            fastnetmon.log()
        );
    }
    Run {
        latency: ban.as_ref().map(|b| b.at_unix - flood.started_unix),
        reported_pps: ban.map(|b| b.pps).unwrap_or(0),
        flood,
    }
}

fn print_table(results: &Results, floods: usize) {
    println!(
        "\n| detector | flood | floods detected | min | median | p90 | max | achieved pps (median) | \
         reported pps in the ban call (median) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for detector in ["fnm (XDP)", "FastNetMon 1.2.4 (sFlow)"] {
        for level in LEVELS {
            let runs = results.of(detector, level);
            let latencies: Vec<f64> = runs.iter().filter_map(|r| r.latency).collect();
            let achieved: Vec<f64> = runs.iter().map(|r| r.flood.achieved_pps()).collect();
            let reported: Vec<f64> = runs
                .iter()
                .filter(|r| r.latency.is_some())
                .map(|r| r.reported_pps as f64)
                .collect();
            let med = |v: &[f64]| Distribution::of(v).map_or(f64::NAN, |d| d.median);
            let (min, median, p90, max) = Distribution::of(&latencies)
                .map_or((f64::NAN, f64::NAN, f64::NAN, f64::NAN), |d| {
                    (d.min, d.median, d.p90, d.max)
                });
            println!(
                "| {detector} | {level}× ({} pps) | {}/{} | {min:.3} s | {median:.3} s | {p90:.3} s | \
                 {max:.3} s | {:.0} | {:.0} |",
                (level * THRESHOLD_PPS as f64) as u64,
                latencies.len(),
                floods,
                med(&achieved),
                med(&reported),
            );
        }
    }
    for level in LEVELS {
        let median = |d: &str| {
            let l: Vec<f64> = results
                .of(d, level)
                .iter()
                .filter_map(|r| r.latency)
                .collect();
            Distribution::of(&l).map_or(f64::NAN, |d| d.median)
        };
        println!(
            "ratio of medians at {level}×: FastNetMon / fnm = {:.1}",
            median("FastNetMon 1.2.4 (sFlow)") / median("fnm (XDP)")
        );
    }
    println!("\nraw latencies (s):");
    for (detector, level, run) in &results.runs {
        println!(
            "  {detector} {level}×: {} (flood of {} packets in {:.3} s = {:.0} pps; ban call \
             reported {} pps)",
            run.latency.map_or("miss".to_owned(), |l| format!("{l:.3}")),
            run.flood.packets,
            run.flood.elapsed.as_secs_f64(),
            run.flood.achieved_pps(),
            run.reported_pps
        );
    }
}

#[test]
#[ignore = "benchmark: needs root and fastnetmon; run with --ignored --nocapture"]
fn detection_latency_fnm_xdp_vs_fastnetmon_sflow() {
    require_root("the detection latency benchmark");
    let version = fastnetmon_version();
    println!("FastNetMon: {version}");
    let floods = floods_per_level();
    let pair = NetnsPair::new(84);
    let (IpAddr::V4(victim_ip), IpAddr::V4(attacker)) = (pair.agent_v4, pair.peer_v4) else {
        unreachable!("the pair has IPv4 addresses")
    };
    let victim = SocketAddrV4::new(victim_ip, VICTIM_PORT);
    // A bound socket that is never read: the flood is dropped at its full receive queue instead
    // of making the victim's kernel answer with ICMP port unreachable.
    let _sink = NetnsPair::in_ns(&pair.agent, move || {
        UdpSocket::bind((victim_ip, VICTIM_PORT)).expect("bind victim sink")
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let (script, log) = timestamp_script(dir.path());
    let agent = BenchAgent::start(
        &pair.agent,
        dir.path(),
        &format!(
            "networks = [\"{victim_ip}/32\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
             [detection.incoming]\npps = {THRESHOLD_PPS}\n\
             [ban]\ntime = \"1s\"\nstop_after = \"1s\"\nactions = [\"script\"]\nscript = \"{}\"\n",
            pair.veth_agent,
            script.display()
        ),
    );

    let mut results = Results::default();
    for i in 0..floods {
        for level in LEVELS {
            let pps = level * THRESHOLD_PPS as f64;
            let run = fnm_flood(&pair, victim, pps, &log);
            println!(
                "flood {i:2} fnm        {level:>4}×: {:?} s (achieved {:.0} pps)",
                run.latency,
                run.flood.achieved_pps()
            );
            results.runs.push(("fnm (XDP)", level, run));
            let run = fastnetmon_flood(attacker, victim, pps);
            println!(
                "flood {i:2} FastNetMon {level:>4}×: {:?} s (achieved {:.0} pps)",
                run.latency,
                run.flood.achieved_pps()
            );
            results.runs.push(("FastNetMon 1.2.4 (sFlow)", level, run));
        }
    }
    drop(agent);
    print_table(&results, floods);

    // The sender must have reached the rate, or the figures mean nothing.
    for (detector, level, run) in &results.runs {
        let wanted = level * THRESHOLD_PPS as f64;
        assert!(
            run.flood.achieved_pps() > 0.9 * wanted,
            "{detector} {level}×: the sender reached only {:.0} of {wanted} pps",
            run.flood.achieved_pps()
        );
    }
    let missed = results
        .runs
        .iter()
        .filter(|(d, _, r)| *d == "fnm (XDP)" && r.latency.is_none());
    assert_eq!(missed.count(), 0, "fnm missed floods");
}

/// The sFlow encoder is checked against fnm's own decoder (no root needed).
#[test]
fn sflow_encoder_round_trips_through_the_decoder() {
    let frame = udp_frame(
        Ipv4Addr::new(10, 84, 0, 2),
        Ipv4Addr::new(10, 84, 0, 1),
        53,
        VICTIM_PORT,
        400,
    );
    assert_eq!(frame.len(), 442);
    let header = &frame[..SFLOW_HEADER_BYTES];
    let samples: Vec<SflowFlowSample<'_>> = (1..=3)
        .map(|seq| SflowFlowSample {
            sequence: seq,
            source_id_index: 3,
            sampling_rate: 10,
            sample_pool: seq * 10,
            input_ifindex: 3,
            output_ifindex: 4,
            frame_length: 446,
            stripped: 4,
            header,
        })
        .collect();
    let bytes = sflow_datagram(Ipv4Addr::LOCALHOST, 77, 1234, &samples);
    let d = fnm_agent::flow::sflow::decode(&bytes).expect("decodes");
    assert_eq!(d.agent, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!((d.sequence, d.uptime_ms, d.sample_count), (77, 1234, 3));
    assert_eq!(d.stats.flow_samples, 3);
    assert_eq!(d.stats.flow_records_skipped, 0);
    assert_eq!(d.stats.samples_without_packet, 0);
    for (i, s) in d.flows.iter().enumerate() {
        assert_eq!(s.sequence, i as u32 + 1);
        assert_eq!((s.sampling_rate, s.source_id_index), (10, 3));
        assert_eq!(
            (s.input_ifindex, s.output_ifindex, s.frame_length),
            (3, 4, 446)
        );
        let p = s.packet.expect("sampled packet");
        assert_eq!(p.src, IpAddr::V4(Ipv4Addr::new(10, 84, 0, 2)));
        assert_eq!(p.dst, IpAddr::V4(Ipv4Addr::new(10, 84, 0, 1)));
        assert_eq!((p.protocol, p.src_port, p.dst_port), (17, 53, VICTIM_PORT));
        assert_eq!((p.ip_bytes, p.ttl, p.fragment), (428, 64, false));
    }
    let records: Vec<_> = d.traffic_records(1).collect();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.packets == 10 && r.bytes == 4280));
}

#[test]
fn distribution_uses_nearest_rank_p90_and_midpoint_median() {
    let v: Vec<f64> = (1..=20).map(f64::from).collect();
    let d = Distribution::of(&v).expect("non-empty");
    assert_eq!(
        (d.n, d.min, d.median, d.p90, d.max),
        (20, 1.0, 10.5, 18.0, 20.0)
    );
    assert!(Distribution::of(&[]).is_none());
}
