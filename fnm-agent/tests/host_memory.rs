//! Memory per tracked host, measured: what the agent's RSS grows by per host in the
//! accounting's table, which `accounting.max_hosts` multiplies into the memory bound
//! documented in `docs/security.md` and the default config.
//!
//! Its own test binary, so nothing else runs in the process while it measures.
#![cfg(target_os = "linux")]

use fnm_agent::{
    accounting::{Accounting, Direction, HostLimits},
    prefix::PrefixSet,
    traffic::{Source, TrafficRecord},
};
use std::net::{IpAddr, Ipv4Addr};

/// Hosts measured.
const HOSTS: u32 = 100_000;
/// The documented costs (bytes per host) this measurement must stay under.
const ONE_WAY_BOUND: u64 = 1_700;
const BOTH_WAYS_BOUND: u64 = 2_300;

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn record(src: Ipv4Addr, dst: Ipv4Addr) -> TrafficRecord {
    TrafficRecord::packet(IpAddr::V4(src), IpAddr::V4(dst), 17, 100)
}

fn local(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n)
}

#[test]
fn bytes_per_tracked_host_stay_under_the_documented_cost() {
    let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
    let remote = Ipv4Addr::new(192, 0, 2, 1);
    let before = rss();
    let mut acc = Accounting::new(nets, HOSTS as usize, 1024, 250)
        .with_rate_window(1000)
        .with_limits(HostLimits::unbudgeted(HOSTS as usize));
    // Seen one way (a spoofed flood's hosts): one record each, then a tick, which gives every
    // active direction its rate-window ring.
    let batch: Vec<TrafficRecord> = (0..HOSTS).map(|n| record(remote, local(n))).collect();
    acc.ingest_batch(&batch, Source::Netflow);
    drop(batch);
    acc.tick(250, u64::MAX);
    assert_eq!(acc.host_count(), HOSTS as usize);
    let one_way = rss().saturating_sub(before) / u64::from(HOSTS);
    // Both ways.
    let batch: Vec<TrafficRecord> = (0..HOSTS).map(|n| record(local(n), remote)).collect();
    acc.ingest_batch(&batch, Source::Netflow);
    drop(batch);
    acc.tick(500, u64::MAX);
    let both = rss().saturating_sub(before) / u64::from(HOSTS);
    let h = acc.host(IpAddr::V4(local(7))).expect("tracked");
    assert_eq!(h.dirs[Direction::Outgoing.index()].total.packets, 1);
    println!("{HOSTS} hosts: {one_way} bytes/host seen one way, {both} bytes/host both ways");
    assert!(one_way <= ONE_WAY_BOUND, "{one_way} bytes/host one way");
    assert!(both <= BOTH_WAYS_BOUND, "{both} bytes/host both ways");
}
