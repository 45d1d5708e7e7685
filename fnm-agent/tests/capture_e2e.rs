//! The agent with the libpcap backend live on a veth (no XDP): the same traffic as the XDP
//! end-to-end test yields exactly the same API counters. And `fnm-agent replay` on a capture
//! file: exact per-host counts and the attack it contains. The live test needs root.
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, frames::*, netns::*, require_root};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
};

#[test]
fn pcap_backend_counts_exactly_like_xdp() {
    require_root("the live capture test");
    let pair = NetnsPair::new(91);
    let config = format!(
        "networks = [\"{}/32\", \"{}/128\"]\n[capture]\nbackend = \"pcap\"\ninterfaces = [\"{}\"]\n",
        pair.agent_v4, pair.agent_v6, pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (v4, v6) = (pair.agent_v4, pair.agent_v6);
    NetnsPair::in_ns(&pair.peer, move || {
        send_udp(SocketAddr::new(v4, 9999), 10, 100);
        send_udp(SocketAddr::new(v6, 9999), 4, 50);
        send_syns(SocketAddr::new(v4, 81), 5);
        let IpAddr::V4(v4) = v4 else { unreachable!() };
        send_icmp_echo(v4, 3, 56);
    });
    agent.settle();
    let h = agent
        .get(&format!("/api/v1/hosts/{}", pair.agent_v4))
        .unwrap();
    let inc = &h["incoming"];
    assert_eq!(inc["udp"]["packets"], 10, "{h:#}");
    assert_eq!(inc["udp"]["bytes"], 1280, "{h:#}");
    assert_eq!(inc["tcp"]["packets"], 5, "{h:#}");
    assert_eq!(inc["tcp_syn_packets"], 5, "{h:#}");
    assert_eq!(inc["tcp"]["bytes"], 300, "{h:#}");
    assert_eq!(inc["icmp"]["packets"], 3, "{h:#}");
    assert_eq!(inc["icmp"]["bytes"], 252, "{h:#}");
    assert_eq!(inc["flows"], 7, "{h:#}");
    let h6 = agent
        .get(&format!("/api/v1/hosts/{}", pair.agent_v6))
        .unwrap();
    assert_eq!(h6["incoming"]["udp"]["packets"], 4, "{h6:#}");
    assert_eq!(h6["incoming"]["udp"]["bytes"], 4 * 98, "{h6:#}");
    let metrics = agent.metrics_text();
    assert!(
        metrics.contains(
            "fnm_traffic_packets_total{direction=\"incoming\",protocol=\"udp\",source=\"pcap\"} 14"
        ),
        "{metrics}"
    );
    // The capture thread's live counters (stored before each flush of records): at least the 22
    // frames sent (the agent's replies are captured too), none malformed.
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert!(
        counter("fnm_capture_frames_total").is_some_and(|n| n >= 22),
        "{metrics}"
    );
    assert_eq!(
        counter("fnm_capture_malformed_frames_total"),
        Some(0),
        "{metrics}"
    );
}

/// Writes a classic pcap (microsecond timestamps, Ethernet).
fn write_pcap(path: &std::path::Path, packets: &[(u64, Vec<u8>)]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (t_us, frame) in packets {
        out.extend_from_slice(&((t_us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((t_us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn replay_reports_exact_hosts_and_the_attack_in_a_capture() {
    let dir = tempfile::tempdir().unwrap();
    let victim = Ipv4Addr::new(10, 10, 0, 7);
    let quiet = Ipv4Addr::new(10, 10, 0, 8);
    let mut packets = Vec::new();
    // 2 s of background: 10 pps to `quiet`.
    for i in 0..20u64 {
        let f = eth(
            ETH_IPV4,
            &ipv4(
                Ipv4Addr::new(192, 0, 2, 9),
                quiet,
                6,
                &[],
                0,
                &tcp(40000, 443, 0x10),
            ),
        );
        packets.push((1_700_000_000_000_000 + i * 100_000, f));
    }
    // Then a 2 s DNS reflection at 5000 pps towards `victim` (threshold 1000 udp pps).
    for i in 0..10_000u64 {
        let src = Ipv4Addr::new(198, 51, 100, (i % 50) as u8 + 1);
        let f = eth(
            ETH_IPV4,
            &ipv4(src, victim, 17, &[], 0, &udp(53, 33333, 472)),
        );
        packets.push((1_700_000_002_000_000 + i * 200, f));
    }
    let pcap = dir.path().join("incident.pcap");
    write_pcap(&pcap, &packets);
    let cfg = dir.path().join("fnm.toml");
    std::fs::write(
        &cfg,
        "networks = [\"10.10.0.0/16\"]\n[detection.incoming]\nudp_pps = 1000\n",
    )
    .unwrap();
    let out = Command::new(common::agent::binary())
        .args(["replay", "--json", "--config"])
        .arg(&cfg)
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = &report["hosts"][victim.to_string()]["incoming"];
    assert_eq!(v["packets"], 10_000, "{report:#}");
    assert_eq!(v["bytes"], 10_000 * (20 + 8 + 472), "{report:#}");
    assert_eq!(v["udp"]["packets"], 10_000);
    let q = &report["hosts"][quiet.to_string()]["incoming"];
    assert_eq!(q["tcp"]["packets"], 20);
    let attacks = report["attacks"].as_array().unwrap();
    assert_eq!(attacks.len(), 1, "{report:#}");
    assert_eq!(attacks[0]["host"], victim.to_string());
    assert_eq!(
        attacks[0]["fingerprint"]["attack_type"],
        "dns_amplification"
    );
    assert!(
        attacks[0]["peak_rates"]["udp_pps"].as_f64().unwrap() >= 4900.0,
        "{report:#}"
    );
    assert_eq!(report["frames"]["total"], 10_020);

    // A file that is not a capture is a clear error, not a panic.
    let bad = dir.path().join("bad.pcap");
    std::fs::write(&bad, b"definitely not a pcap").unwrap();
    let out = Command::new(common::agent::binary())
        .args(["replay"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.pcap"));
}
