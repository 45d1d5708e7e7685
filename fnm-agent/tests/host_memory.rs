//! Memory per tracked host and per remembered flow, measured: what the agent's memory grows by
//! per host in the accounting's table and per 5-tuple of its new-flow table, which
//! `accounting.max_hosts` and `xdp.max_flows` multiply into the memory bound documented in
//! `docs/security.md` and the default config.
//!
//! Its own test binary, so nothing else runs in the process while it measures (its tests take
//! turns).
#![cfg(target_os = "linux")]

mod common;

use fnm_agent::{
    accounting::{Accounting, Direction, HostLimits},
    prefix::PrefixSet,
    traffic::{Source, TrafficRecord},
};
use std::net::{IpAddr, Ipv4Addr};

/// Hosts measured.
const HOSTS: u32 = 100_000;
/// The documented costs (bytes per host) this measurement must stay under: a host with
/// traffic in its rate window seen one way, and seen both ways (resident memory), and a host
/// seen one way whose window emptied (the allocator's bytes in use: freed windows stay
/// resident for the next hosts with traffic).
const LIVE_ONE_WAY_BOUND: u64 = 900;
const LIVE_BOTH_WAYS_BOUND: u64 = 1_600;
const QUIET_ONE_WAY_BOUND: u64 = 300;

/// The measurements run one at a time: another test allocating meanwhile would count.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rss() -> u64 {
    common::proc_status_bytes(None, "VmRSS").expect("VmRSS in /proc/self/status")
}

/// Bytes the allocator has handed out and not got back (heap chunks and mmapped blocks).
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

fn record(src: Ipv4Addr, dst: Ipv4Addr) -> TrafficRecord {
    TrafficRecord::packet(IpAddr::V4(src), IpAddr::V4(dst), 17, 100)
}

fn local(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n)
}

#[test]
fn bytes_per_tracked_host_stay_under_the_documented_cost() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
    let remote = Ipv4Addr::new(192, 0, 2, 1);
    let (rss_before, heap_before) = (rss(), heap_in_use());
    let per_host = |now: u64, before: u64| now.saturating_sub(before) / u64::from(HOSTS);
    let mut acc = Accounting::new(nets, HOSTS as usize, 1024, 250)
        .with_rate_window(1000)
        .with_limits(HostLimits::unbudgeted(HOSTS as usize));
    // Seen one way (a spoofed flood's hosts): one record each, then a tick, which gives every
    // direction with traffic its rate-window ring.
    let batch: Vec<TrafficRecord> = (0..HOSTS).map(|n| record(remote, local(n))).collect();
    acc.ingest_batch(&batch, Source::Netflow);
    drop(batch);
    acc.tick(250, u64::MAX);
    assert_eq!(acc.host_count(), HOSTS as usize);
    let live_one_way = per_host(rss(), rss_before);
    let live_one_way_heap = per_host(heap_in_use(), heap_before);
    // A window (1 s) later the slot left the ring; the tick after finds the window empty and
    // gives it back.
    for t in 2..=6 {
        acc.tick(t * 250, u64::MAX);
    }
    let quiet_one_way_heap = per_host(heap_in_use(), heap_before);
    // Both ways, with traffic in the window.
    let batch: Vec<TrafficRecord> = (0..HOSTS).map(|n| record(local(n), remote)).collect();
    acc.ingest_batch(&batch, Source::Netflow);
    drop(batch);
    let batch: Vec<TrafficRecord> = (0..HOSTS).map(|n| record(remote, local(n))).collect();
    acc.ingest_batch(&batch, Source::Netflow);
    drop(batch);
    acc.tick(7 * 250, u64::MAX);
    let live_both = per_host(rss(), rss_before);
    let live_both_heap = per_host(heap_in_use(), heap_before);
    let h = acc.host(IpAddr::V4(local(7))).expect("tracked");
    assert_eq!(h.dir(Direction::Outgoing).total().packets, 1);
    assert_eq!(h.dir(Direction::Incoming).total().packets, 2);
    println!(
        "{HOSTS} hosts, bytes per host (resident / allocated):\n\
         with traffic in the window, seen one way:   {live_one_way} / {live_one_way_heap}\n\
         window empty, seen one way:                 - / {quiet_one_way_heap}\n\
         with traffic in the window, seen both ways: {live_both} / {live_both_heap}"
    );
    assert!(
        live_one_way <= LIVE_ONE_WAY_BOUND,
        "{live_one_way} bytes/host one way"
    );
    assert!(
        quiet_one_way_heap <= QUIET_ONE_WAY_BOUND,
        "{quiet_one_way_heap} bytes/host one way, quiet"
    );
    assert!(
        live_both <= LIVE_BOTH_WAYS_BOUND,
        "{live_both} bytes/host both ways"
    );
}

/// Flows remembered to count new ones (`xdp.max_flows`, the default).
const FLOWS: usize = 262_144;
/// The documented cost of a remembered flow (bytes).
const FLOW_BOUND: u64 = 24;

#[test]
fn bytes_per_remembered_flow_stay_under_the_documented_cost() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
    let heap_before = heap_in_use();
    let mut acc = Accounting::new(nets, 16, FLOWS, 250).with_rate_window(1000);
    // Twice as many distinct 5-tuples as remembered, to one host: both generations full.
    let records: Vec<TrafficRecord> = (0..2 * FLOWS as u32)
        .map(|n| TrafficRecord {
            src_port: n as u16,
            ..record(Ipv4Addr::from(0xc633_0000 + (n >> 16)), local(1))
        })
        .collect();
    let heap_records = heap_in_use();
    acc.ingest_batch(&records, Source::Netflow);
    let grown = heap_in_use().saturating_sub(heap_records);
    drop(records);
    let per_flow = grown / FLOWS as u64;
    println!(
        "{FLOWS} flows remembered: {per_flow} bytes per flow ({} kB before)",
        heap_records.saturating_sub(heap_before) / 1024
    );
    assert_eq!(acc.host_count(), 1);
    assert!(per_flow <= FLOW_BOUND, "{per_flow} bytes per flow");
}

/// Resident memory of process `pid` (`VmRSS`), in bytes.
fn rss_of(pid: u32) -> u64 {
    common::proc_status_bytes(Some(pid), "VmRSS").unwrap_or(0)
}

/// NetFlow v5 datagram `seq` of 30 one-packet UDP flows to hosts `first..first + 30` of
/// 10.0.0.0/12, each from its own remote source and port (one new 5-tuple per record).
fn netflow_hosts(seq: u32, first: u32, uptime_ms: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(24 + 30 * 48);
    d.extend_from_slice(&5u16.to_be_bytes());
    d.extend_from_slice(&30u16.to_be_bytes());
    d.extend_from_slice(&uptime_ms.to_be_bytes());
    d.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&(seq * 30).to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 0]);
    for i in 0..30 {
        let n = first + i;
        d.extend_from_slice(&[198, 51, 100, (n % 251) as u8]);
        d.extend_from_slice(&local(n).octets());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&[0, 1, 0, 2]);
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&100u32.to_be_bytes());
        d.extend_from_slice(&(uptime_ms - 1000).to_be_bytes());
        d.extend_from_slice(&uptime_ms.to_be_bytes());
        d.extend_from_slice(&((1024 + n % 60_000) as u16).to_be_bytes());
        d.extend_from_slice(&53u16.to_be_bytes());
        d.extend_from_slice(&[0, 0, 17, 0]);
        d.extend_from_slice(&[0; 8]);
    }
    d
}

/// Sends one flow to each of `hosts` hosts to `to`, paced at `per_sec` datagrams a second.
fn feed(to: std::net::SocketAddr, hosts: u32, per_sec: u32) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let start = std::time::Instant::now();
    let started_ms = 3_600_000u32;
    for (seq, first) in (0..hosts).step_by(30).enumerate() {
        let due = std::time::Duration::from_secs_f64(seq as f64 / per_sec as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let uptime = started_ms + start.elapsed().as_millis() as u32;
        s.send_to(&netflow_hosts(seq as u32, first, uptime), to)
            .expect("send NetFlow");
    }
}

/// Issue 17, target 3: resident memory for a million hosts learnt from flows, the real agent
/// beside FastNetMon 1.2.4 (Debian's, its `networks_list` covering the same /12), both fed
/// the same NetFlow v5 datagrams on 127.0.0.1 in the same run. Needs the package `fastnetmon`.
///
/// ```text
/// cargo test --release -p fnm-agent --test host_memory -- --ignored --nocapture
/// ```
/// `FNM_MEMORY_HOSTS` changes the number of hosts (default 1,000,000).
#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture (needs fastnetmon)"]
fn resident_memory_at_a_million_hosts_against_fastnetmon() {
    let hosts: u32 = std::env::var("FNM_MEMORY_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let fnm_dir = dir.path().join("fnm");
    let fast_dir = dir.path().join("fastnetmon");
    std::fs::create_dir_all(&fnm_dir).unwrap();
    std::fs::create_dir_all(&fast_dir).unwrap();
    let fnm_port = common::flood::free_udp_port();
    let agent = common::loopback_agent::LoopbackAgent::start(
        &fnm_dir,
        &format!(
            "networks = [\"10.0.0.0/12\"]\n[xdp]\nenabled = false\n\
             [sflow]\nlisten = []\n[netflow]\nlisten = [\"127.0.0.1:{fnm_port}\"]\n\
             [accounting]\nmax_hosts = {hosts}\nmax_hosts_per_exporter = {hosts}\n"
        ),
    );
    let fast_port = common::flood::free_udp_port();
    let fast_port_s = fast_port.to_string();
    let script = fast_dir.join("notify.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let fast = common::flood::FastNetMon::start_with(
        &fast_dir,
        &["10.0.0.0/12"],
        1_000_000_000,
        &script,
        &[
            ("netflow", "on"),
            ("netflow_port", &fast_port_s),
            ("netflow_host", "127.0.0.1"),
            ("enable_ban", "off"),
        ],
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (fnm_before, fast_before) = (rss_of(agent.pid()), rss_of(fast.pid()));
    // Paced so neither drops datagrams: 2,000 datagrams (60,000 flows) a second to each.
    let to_fnm = std::thread::spawn(move || feed(([127, 0, 0, 1], fnm_port).into(), hosts, 2_000));
    feed(([127, 0, 0, 1], fast_port).into(), hosts, 2_000);
    to_fnm.join().expect("fnm feeder");
    // A few ticks later every host is in both tables.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let tracked = agent
        .get("/api/v1/status")
        .ok()
        .and_then(|s| s["hosts"].as_u64())
        .unwrap_or(0);
    let (fnm_after, fast_after) = (rss_of(agent.pid()), rss_of(fast.pid()));
    let per_host = |before: u64, after: u64| after.saturating_sub(before) as f64 / hosts as f64;
    println!(
        "{hosts} hosts from NetFlow (fnm tracks {tracked}):\n\
         fnm-agent:  RSS {:.1} MB -> {:.1} MB, {:.0} bytes per host\n\
         FastNetMon: RSS {:.1} MB -> {:.1} MB, {:.0} bytes per host\n\
         ratio fnm / FastNetMon: resident {:.2}, growth {:.2}",
        fnm_before as f64 / 1e6,
        fnm_after as f64 / 1e6,
        per_host(fnm_before, fnm_after),
        fast_before as f64 / 1e6,
        fast_after as f64 / 1e6,
        per_host(fast_before, fast_after),
        fnm_after as f64 / fast_after as f64,
        per_host(fnm_before, fnm_after) / per_host(fast_before, fast_after),
    );
    assert!(
        tracked >= u64::from(hosts) * 99 / 100,
        "fnm tracks {tracked} of {hosts} hosts:\n{}",
        agent.log()
    );
}
