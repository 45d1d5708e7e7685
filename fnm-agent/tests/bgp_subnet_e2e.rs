//! `bgp_blackhole` with `[bgp] announce = "both"` from detection to the routes a BGP peer
//! receives, through real gobgpd and ExaBGP (FastNetMon's `*_announce_host` and
//! `*_announce_whole_subnet` with `*_community_host`, `*_community_subnet` and the IPv6 ones).
//!
//! The agent collects sFlow on 127.0.0.1. Three hosts are flooded: 203.0.113.77 for 3 s and
//! 203.0.113.78 for 9 s, both in hostgroup 203.0.113.64/26, and 2001:db8:7:1::7 for 3 s (subnet
//! by `subnet_length_v6 = 64`). The receiving gobgpd must show each host route with the host
//! community and each subnet with the subnet community (IPv6 with the IPv6 ones); when the
//! first IPv4 attack is over its /32 goes but the /26 stays (the second attack still holds it);
//! once the second is over too, everything is withdrawn.
#![cfg(target_os = "linux")]

mod bgp_support;
mod common;

use bgp_support::{
    free_port, start_exabgp, start_gobgp_speaker, wait_pipe_ready, Daemon, Receiver,
};
use common::{
    flood::{free_udp_port, sflow_datagram, SflowFlowSample, SFLOW_HEADER_BYTES},
    frames,
    loopback_agent::LoopbackAgent,
};
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

const HOST_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
const HOST_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 78);
const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 7, 1, 0, 0, 0, 7);

/// The `[bgp]` settings under test, after the backend's own keys.
const ANNOUNCE: &str = "announce = \"both\"\n\
    subnet_length_v6 = 64\n\
    host_communities = [\"65001:666\"]\n\
    subnet_communities = [\"65001:777\"]\n\
    host_communities_v6 = [\"65001:6666\"]\n\
    subnet_communities_v6 = [\"65001:7777\"]\n";

/// A UDP packet from port 53 towards `victim`, as an Ethernet frame.
fn frame_v4(victim: Ipv4Addr) -> Vec<u8> {
    let udp = frames::udp(53, 4444, 400);
    let mut ip = frames::ipv4(Ipv4Addr::new(198, 51, 100, 7), victim, 17, &[], 0, &udp);
    let sum = frames::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frames::eth(frames::ETH_IPV4, &ip)
}

/// The same towards an IPv6 victim.
fn frame_v6(victim: Ipv6Addr) -> Vec<u8> {
    let udp = frames::udp(53, 4444, 400);
    let src = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 7);
    frames::eth(frames::ETH_IPV6, &frames::ipv6(src, victim, 17, &udp))
}

/// Sends, as an sFlow agent sampling 1 in 100, 20,000 pps towards each victim for its duration.
fn flood(collector: SocketAddr, victims: Vec<(Vec<u8>, Duration)>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind sFlow exporter");
        let (rate, samples_per_second) = (100u32, 200.0);
        let start = Instant::now();
        let (mut sequence, mut datagrams) = (0u32, 0u32);
        let mut sent = vec![0u64; victims.len()];
        loop {
            let elapsed = start.elapsed();
            let live: Vec<usize> = (0..victims.len())
                .filter(|&i| elapsed < victims[i].1)
                .collect();
            if live.is_empty() {
                return;
            }
            let mut batch: Vec<&[u8]> = Vec::new();
            for &i in &live {
                let due = (elapsed.as_secs_f64() * samples_per_second) as u64;
                while sent[i] < due {
                    batch.push(&victims[i].0);
                    sent[i] += 1;
                }
            }
            for chunk in batch.chunks(7) {
                let samples: Vec<SflowFlowSample<'_>> = chunk
                    .iter()
                    .map(|f| {
                        sequence = sequence.wrapping_add(1);
                        SflowFlowSample {
                            sequence,
                            source_id_index: 3,
                            sampling_rate: rate,
                            sample_pool: sequence.wrapping_mul(rate),
                            input_ifindex: 3,
                            output_ifindex: 4,
                            frame_length: f.len() as u32 + 4,
                            stripped: 4,
                            header: &f[..f.len().min(SFLOW_HEADER_BYTES)],
                        }
                    })
                    .collect();
                datagrams += 1;
                let d = sflow_datagram(
                    Ipv4Addr::LOCALHOST,
                    datagrams,
                    elapsed.as_millis() as u32,
                    &samples,
                );
                socket.send_to(&d, collector).expect("send sFlow");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Runs the scenario with `bgp` (the backend's `[bgp]` keys) against `receiver`.
fn scenario(dir: &std::path::Path, receiver: &Receiver, bgp: &str, speaker: &mut Daemon) {
    let sflow = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let agent = LoopbackAgent::start(
        dir,
        &format!(
            "networks = [\"203.0.113.0/24\", \"2001:db8:7::/48\"]\n\
             [xdp]\nenabled = false\n[sflow]\nlisten = [\"{sflow}\"]\n[netflow]\nlisten = []\n\
             [detection.incoming]\npps = 5000\n\
             [[hostgroup]]\nname = \"customers\"\nnetworks = [\"203.0.113.64/26\"]\n\
             [ban]\ntime = \"2s\"\nstop_after = \"1s\"\nactions = [\"bgp_blackhole\"]\n\
             [bgp]\n{bgp}{ANNOUNCE}"
        ),
    );
    let flooder = flood(
        sflow,
        vec![
            (frame_v4(HOST_A), Duration::from_secs(3)),
            (frame_v4(HOST_B), Duration::from_secs(9)),
            (frame_v6(HOST_V6), Duration::from_secs(3)),
        ],
    );
    let expect = |family: &str, route: &str, community: &str| {
        let line = receiver.wait_route(family, route);
        assert!(
            line.contains(community),
            "{route} should carry {community}: {line}\nagent log:\n{}",
            agent.log()
        );
    };
    expect("ipv4", "203.0.113.77/32", "65001:666");
    expect("ipv4", "203.0.113.78/32", "65001:666");
    expect("ipv4", "203.0.113.64/26", "65001:777");
    expect("ipv6", "2001:db8:7:1::7/128", "65001:6666");
    expect("ipv6", "2001:db8:7:1::/64", "65001:7777");
    // The subnet route is announced with its own community only.
    let subnet = receiver
        .rib_line("ipv4", "203.0.113.64/26")
        .unwrap()
        .unwrap();
    assert!(!subnet.contains("65001:666"), "{subnet}");

    // The first attack ends (3 s flood, 1 s to stop, 2 s ban): its /32 goes, the /26 stays
    // while the second attack holds it.
    receiver.wait_gone("ipv4", "203.0.113.77/32");
    receiver.wait_gone("ipv6", "2001:db8:7:1::7/128");
    receiver.wait_gone("ipv6", "2001:db8:7:1::/64");
    assert!(
        receiver
            .rib_line("ipv4", "203.0.113.64/26")
            .unwrap()
            .is_some(),
        "the subnet route went with the first attack while the second still holds it\n{}",
        agent.log()
    );
    assert!(receiver
        .rib_line("ipv4", "203.0.113.78/32")
        .unwrap()
        .is_some());
    let mitigations = agent.get("/api/v1/mitigations").unwrap();
    assert!(
        mitigations
            .to_string()
            .contains("\"subnet\":\"203.0.113.64/26\""),
        "{mitigations:#}"
    );

    flooder.join().unwrap();
    receiver.wait_gone("ipv4", "203.0.113.78/32");
    receiver.wait_gone("ipv4", "203.0.113.64/26");
    speaker.assert_running();
}

#[test]
fn gobgp_announces_host_and_subnet_routes_with_their_communities() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path());
    let api_port = free_port();
    let mut speaker = start_gobgp_speaker(dir.path(), receiver.bgp_port, api_port);
    let speaker_log = dir.path().join("speaker.log");
    receiver.wait_established(|| std::fs::read_to_string(&speaker_log).unwrap_or_default());
    scenario(
        dir.path(),
        &receiver,
        &format!("backend = \"gobgp\"\ngobgp_api = \"127.0.0.1:{api_port}\"\n"),
        &mut speaker,
    );
}

#[test]
fn exabgp_announces_host_and_subnet_routes_with_their_communities() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path());
    let (mut exabgp, pipe) = start_exabgp(dir.path(), receiver.bgp_port);
    let exabgp_log = dir.path().join("exabgp.log");
    receiver.wait_established(|| std::fs::read_to_string(&exabgp_log).unwrap_or_default());
    wait_pipe_ready(&mut exabgp, &pipe);
    scenario(
        dir.path(),
        &receiver,
        &format!(
            "backend = \"exabgp\"\nexabgp_pipe = \"{}\"\n",
            pipe.display()
        ),
        &mut exabgp,
    );
}
