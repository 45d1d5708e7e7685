//! Mirror-port capture knobs against the real agent with the libpcap backend on a veth pair
//! in namespaces (root):
//! - `[capture] sampling_rate = N`: every captured packet counts as N: packets, bytes and the
//!   packet rate are exactly N times what was sent, new flows are not multiplied;
//! - `[capture] threads = 2`: two capture threads whose sockets share an AF_PACKET fanout group
//!   (`PACKET_FANOUT_HASH`) count every packet exactly once, and both get a share.
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, netns::NetnsPair, require_root};
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

/// Sends `per_socket` datagrams of `payload` bytes to `to` from each of `sockets` source
/// ports, paced (a pause every 32 datagrams) so the veth never drops a burst.
fn send_from_ports(to: SocketAddr, sockets: usize, per_socket: usize, payload: usize) {
    let socks: Vec<UdpSocket> = (0..sockets)
        .map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind"))
        .collect();
    let buf = vec![0x5au8; payload];
    let mut sent = 0;
    for _ in 0..per_socket {
        for s in &socks {
            s.send_to(&buf, to).expect("send");
            sent += 1;
            if sent % 32 == 0 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

fn config(pair: &NetnsPair, extra: &str) -> String {
    format!(
        "networks = [\"{}/32\"]\n[capture]\nbackend = \"pcap\"\ninterfaces = [\"{}\"]\n{extra}\n",
        pair.agent_v4, pair.veth_agent
    )
}

/// Waits until the victim's incoming UDP packets reach `want` (at most 10 s); returns the host.
fn wait_packets(agent: &AgentProcess, host: IpAddr, want: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = agent.get(&format!("/api/v1/hosts/{host}")).unwrap();
        let n = h["incoming"]["udp"]["packets"].as_u64().unwrap_or(0);
        if n >= want || Instant::now() > deadline {
            // Anything late would show now.
            std::thread::sleep(Duration::from_millis(600));
            return agent.get(&format!("/api/v1/hosts/{host}")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn counter(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_sampling_rate_multiplies_counts_and_rates_exactly() {
    require_root("the capture sampling test");
    const RATE: u64 = 25;
    let pair = NetnsPair::new(92);
    let agent = AgentProcess::start(
        &pair.agent,
        &config(&pair, &format!("sampling_rate = {RATE}")),
    );
    std::thread::sleep(Duration::from_millis(500));
    let to = SocketAddr::new(pair.agent_v4, 9999);
    // 4 source ports × 100 datagrams of 100 bytes (128 IP bytes).
    NetnsPair::in_ns(&pair.peer, move || send_from_ports(to, 4, 100, 100));
    let h = wait_packets(&agent, pair.agent_v4, 400 * RATE);
    let inc = &h["incoming"];
    assert_eq!(inc["udp"]["packets"], 400 * RATE, "{h:#}");
    assert_eq!(inc["udp"]["bytes"], 400 * 128 * RATE, "{h:#}");
    assert_eq!(inc["flows"], 4, "new flows are not multiplied: {h:#}");

    // A paced stream: the rate is RATE times the rate sent. Sent at 500 pps from one port
    // for 4 s; the rate is read every 200 ms from 1.5 s on (libpcap hands packets over in
    // blocks, so single readings jitter around the rate).
    let sender = std::thread::spawn({
        let peer = pair.peer.clone();
        move || {
            NetnsPair::in_ns(&peer, move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                let start = Instant::now();
                let mut sent = 0u64;
                while start.elapsed() < Duration::from_secs(4) {
                    let due = (start.elapsed().as_secs_f64() * 500.0) as u64;
                    while sent < due {
                        s.send_to(&[0u8; 100], to).unwrap();
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                sent
            })
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let mut readings = Vec::new();
    for _ in 0..10 {
        let h = agent
            .get(&format!("/api/v1/hosts/{}", pair.agent_v4))
            .unwrap();
        readings.push(h["incoming"]["pps"].as_f64().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = sender.join().unwrap();
    // libpcap's blocks land in one 200 ms slot or the next, so one window holds a slot more
    // or less than its share (±20 % here): the mean of the readings is the rate.
    let pps = readings.iter().sum::<f64>() / readings.len() as f64;
    println!("mean {pps:.0} pps for 500 pps sent × {RATE}: {readings:?}");
    assert!(
        (pps / (500.0 * RATE as f64) - 1.0).abs() < 0.1,
        "{pps} pps, expected about {}: {readings:?}",
        500 * RATE
    );
    let h = wait_packets(&agent, pair.agent_v4, (400 + sent) * RATE);
    assert_eq!(
        h["incoming"]["udp"]["packets"],
        (400 + sent) * RATE,
        "{h:#}"
    );
    // The capture's own frame counter is not multiplied.
    let m = agent.metrics_text();
    let frames = counter(&m, "fnm_capture_frames_total").unwrap();
    assert!(
        frames >= 400 + sent && frames < (400 + sent) * 2,
        "{frames}"
    );
}

#[test]
fn two_fanout_threads_count_every_packet_exactly_once() {
    require_root("the capture fanout test");
    let pair = NetnsPair::new(93);
    let group = 0x4000 | (std::process::id() as u16 & 0x3fff);
    let agent = AgentProcess::start(
        &pair.agent,
        &config(&pair, &format!("threads = 2\nfanout_group = {group}")),
    );
    assert!(
        agent
            .log()
            .contains(&format!("2 threads in AF_PACKET fanout group {group}")),
        "{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let to = SocketAddr::new(pair.agent_v4, 9999);
    // 64 flows × 50 datagrams: the flow hash spreads them over both sockets.
    NetnsPair::in_ns(&pair.peer, move || send_from_ports(to, 64, 50, 100));
    let h = wait_packets(&agent, pair.agent_v4, 3200);
    assert_eq!(h["incoming"]["udp"]["packets"], 3200, "{h:#}");
    assert_eq!(h["incoming"]["udp"]["bytes"], 3200 * 128, "{h:#}");
    assert_eq!(h["incoming"]["flows"], 64, "{h:#}");
    let m = agent.metrics_text();
    let t0 = counter(&m, "fnm_capture_thread_frames_total{thread=\"0\"}").unwrap();
    let t1 = counter(&m, "fnm_capture_thread_frames_total{thread=\"1\"}").unwrap();
    let all = counter(&m, "fnm_capture_frames_total").unwrap();
    assert_eq!(t0 + t1, all, "{m}");
    assert!(
        t0 > 100 && t1 > 100,
        "both threads get a share: {t0} + {t1}"
    );
    assert!(all >= 3200, "{all}");
}
