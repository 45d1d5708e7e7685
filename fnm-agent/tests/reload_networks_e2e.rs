//! Changing `networks` by a reload on the XDP data plane, on a real kernel, without detaching
//! the program: a host flooded from outside the networks opens an attack once a reload adds
//! it, a host kept in the networks keeps counting every packet of a steady flow across the
//! reloads, a host removed stops counting, and no reload asks for a restart. Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::{
    agent::{write_config, AgentProcess},
    bpffs::BpffsDir,
    bpftool::xdp_prog_id,
    netns::*,
    require_root,
};
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Datagrams per second to the host outside the networks (the flood) ...
const FLOOD_RATE: u64 = 2000;
/// ... and to the host kept in them (under the threshold).
const STEADY_RATE: u64 = 300;

/// Sends to `to` at `rate` datagrams per second from namespace `ns` until `stop`; returns the
/// number sent.
fn paced(ns: &str, to: SocketAddr, rate: u64, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        NetnsPair::in_ns(&ns, move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            let (start, mut sent) = (Instant::now(), 0u64);
            while !stop.load(Ordering::SeqCst) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                while sent < due {
                    sock.send_to(&[0x5a; 64], to).expect("send");
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    })
}

fn incoming_packets(agent: &AgentProcess, host: IpAddr) -> u64 {
    agent
        .get(&format!("/api/v1/hosts/{host}"))
        .ok()
        .and_then(|h| h["incoming"]["packets"].as_u64())
        .unwrap_or(0)
}

#[test]
fn networks_reload_on_xdp_without_detaching_or_losing_counters() {
    require_root("the networks reload end-to-end test");
    let pair = NetnsPair::new(151);
    let pins = BpffsDir::mount(&pair.veth_agent);
    // The flooded host: a second address of the agent's side, outside the networks at first.
    let flooded: IpAddr = "10.151.0.3".parse().unwrap();
    NetnsPair::exec(
        &pair.agent,
        &[
            "ip",
            "addr",
            "add",
            "10.151.0.3/24",
            "dev",
            &pair.veth_agent,
        ],
    );
    NetnsPair::exec(
        &pair.peer,
        &[
            "ip",
            "neigh",
            "replace",
            "10.151.0.3",
            "lladdr",
            "02:00:00:00:00:0a",
            "dev",
            &pair.veth_peer,
            "nud",
            "permanent",
        ],
    );
    let body = |networks: &str| {
        format!(
            "networks = [{networks}]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
             pin_path = \"{}\"\n[sflow]\nlisten = []\n[netflow]\nlisten = []\n\
             [detection.incoming]\npps = 1000\n[ban]\nactions = []\n",
            pair.veth_agent,
            pins.path().display()
        )
    };
    let kept = format!("\"{}/32\"", pair.agent_v4);
    let agent = AgentProcess::start(&pair.agent, &body(&kept));
    let prog_id = xdp_prog_id(&pair.agent, &pair.veth_agent);

    let stop = Arc::new(AtomicBool::new(false));
    let steady = paced(
        &pair.peer,
        SocketAddr::new(pair.agent_v4, 9999),
        STEADY_RATE,
        stop.clone(),
    );
    let flood = paced(
        &pair.peer,
        SocketAddr::new(flooded, 9999),
        FLOOD_RATE,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let status = agent.get("/api/v1/status").unwrap();
    assert_eq!(
        status["attacks_ongoing"].as_u64(),
        Some(0),
        "a host outside the networks opens no attack: {status:#}"
    );
    assert_eq!(incoming_packets(&agent, flooded), 0, "not counted per host");
    let kept_before = incoming_packets(&agent, pair.agent_v4);
    assert!(kept_before > 0, "the kept host counts");

    // Reload 1: the flooded host joins (dense slots are left for a /32), and a /24 that has no
    // room in the dense array counts in the hash table.
    let extended = format!("{kept}, \"10.151.0.3/32\", \"10.151.7.0/24\"");
    write_config(
        &agent.config_path,
        &agent.state_path,
        &body(&extended),
        agent.api,
        agent.metrics,
    );
    let outcome = agent.request("POST", "/api/v1/reload", None).unwrap();
    assert_eq!(outcome["result"], "success", "{outcome:#}");
    assert_eq!(
        outcome["changed"],
        serde_json::json!(["networks"]),
        "{outcome:#}"
    );
    assert_eq!(
        outcome["restart_needed"],
        serde_json::json!([]),
        "networks need no restart: {outcome:#}"
    );
    let notes = outcome["notes"].to_string();
    assert!(
        notes.contains("10.151.7.0/24") && !notes.contains("10.151.0.3"),
        "{outcome:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attacks = agent.get("/api/v1/attacks").unwrap();
        if let Some(a) = attacks.as_array().and_then(|a| a.first()) {
            assert_eq!(a["host"], flooded.to_string(), "{attacks:#}");
            assert_eq!(a["direction"], "incoming", "{attacks:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no attack on {flooded} after the reload:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        xdp_prog_id(&pair.agent, &pair.veth_agent),
        prog_id,
        "the same program, never detached"
    );

    // Reload 2: the flooded host leaves again and stops counting (the kept one goes on).
    write_config(
        &agent.config_path,
        &agent.state_path,
        &body(&kept),
        agent.api,
        agent.metrics,
    );
    let outcome = agent.request("POST", "/api/v1/reload", None).unwrap();
    assert_eq!(
        outcome["restart_needed"],
        serde_json::json!([]),
        "{outcome:#}"
    );
    agent.settle();
    let left_at = incoming_packets(&agent, flooded);
    assert!(left_at > 100, "counted while in the networks: {left_at}");
    std::thread::sleep(Duration::from_millis(1000));
    agent.settle();
    assert_eq!(
        incoming_packets(&agent, flooded),
        left_at,
        "a host removed from the networks stops counting"
    );

    stop.store(true, Ordering::SeqCst);
    let sent = steady.join().unwrap();
    let flood_sent = flood.join().unwrap();
    agent.settle();
    assert_eq!(
        incoming_packets(&agent, pair.agent_v4),
        sent,
        "every packet to the kept host counted across both reloads"
    );
    assert_eq!(xdp_prog_id(&pair.agent, &pair.veth_agent), prog_id);
    let metrics = agent.metrics_text();
    assert!(
        metrics.contains("fnm_config_reloads_total{result=\"success\"} 2"),
        "{metrics}"
    );
    eprintln!(
        "kept host: {sent} datagrams sent and counted across two networks reloads; flooded \
         host: {left_at} of {flood_sent} counted while in the networks"
    );
}
