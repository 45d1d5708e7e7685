//! `networks_file`, `whitelist_file` and `monitor_local_addresses` on real traffic: NetFlow v5
//! floods sent to the agent's collector (in a namespace) are detected for a host listed only in
//! the networks file and for the agent's own interface address; a host the file does not list
//! is not local; after the file is rewritten and the agent reloaded, a newly listed host is
//! detected; a whitelisted host (from the whitelist file) is counted but never reported; a file
//! with a bad line refuses the reload, naming the file and the line, and the running networks
//! stay. Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::netflow::netflow_v5;

use common::{agent::AgentProcess, netns::NetnsPair, require_root};
use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

/// Where the agent's NetFlow collector listens, inside its namespace.
const COLLECTOR: &str = "127.0.0.1:2055";

/// Sends 2 s of a 30 kpps NTP reflection towards `victim` (10 datagrams of 30 flows × 1000
/// packets, 200 ms apart), from inside `ns`. `seq` continues the exporter's sequence.
fn flood(ns: &str, victim: Ipv4Addr, seq: &mut u32) {
    let start = *seq;
    NetnsPair::in_ns(ns, move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..10u32 {
            let n = start + i;
            let d = netflow_v5(n * 30, 10_000 + n * 200, victim, 30, 1000);
            s.send_to(&d, COLLECTOR).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    *seq += 10;
}

/// The attacks on `host` the agent knows.
fn attacks_on(agent: &AgentProcess, host: Ipv4Addr) -> Vec<serde_json::Value> {
    let all = agent.get("/api/v1/attacks").unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["host"] == host.to_string())
        .cloned()
        .collect()
}

/// Waits (at most 5 s) for an attack on `host`.
fn wait_attack(agent: &AgentProcess, host: Ipv4Addr) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(a) = attacks_on(agent, host).into_iter().next() {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no attack on {host}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hosts_from_the_networks_file_and_own_addresses_are_detected_and_reloaded() {
    require_root("network file end-to-end tests");
    let pair = NetnsPair::new(151);
    let lists = tempfile::tempdir().unwrap();
    let networks = lists.path().join("networks_list");
    let whitelist = lists.path().join("networks_whitelist");
    let listed = Ipv4Addr::new(10, 77, 0, 5);
    let unlisted = Ipv4Addr::new(10, 77, 0, 6);
    let whitelisted = Ipv4Addr::new(10, 77, 0, 7);
    std::fs::write(
        &networks,
        format!("# FastNetMon's networks_list, with comments\n{listed}/32\n\n{whitelisted}\n2001:db8:77::/48 # v6 too\n"),
    )
    .unwrap();
    std::fs::write(&whitelist, format!("# never reported\n{whitelisted}/32\n")).unwrap();
    // No `networks` key: the networks are the file's and the agent's own addresses only.
    let config = format!(
        "networks_file = \"{}\"\nwhitelist_file = \"{}\"\nmonitor_local_addresses = true\n\
         [xdp]\nenabled = false\n[sflow]\nlisten = []\n[netflow]\nlisten = [\"{COLLECTOR}\"]\n\
         [detection.incoming]\npps = 20000\n[ban]\nactions = []\nmanual_actions = []\n",
        networks.display(),
        whitelist.display()
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let mut seq = 0;

    // 1. A host listed only in the file is local, and its flood is detected.
    flood(&pair.agent, listed, &mut seq);
    let a = wait_attack(&agent, listed);
    assert_eq!(a["direction"], "incoming", "{a:#}");
    assert_eq!(a["threshold"]["rate"], "pps", "{a:#}");

    // 2. The agent's own address (its veth's) is a network through monitor_local_addresses.
    let own = match pair.agent_v4 {
        std::net::IpAddr::V4(v4) => v4,
        _ => unreachable!(),
    };
    flood(&pair.agent, own, &mut seq);
    wait_attack(&agent, own);

    // 3. A whitelisted host (whitelist file) is counted but never reported.
    flood(&pair.agent, whitelisted, &mut seq);
    agent.settle();
    let h = agent.get(&format!("/api/v1/hosts/{whitelisted}")).unwrap();
    assert_eq!(h["incoming"]["packets"], 10 * 30 * 1000, "{h:#}");
    assert!(attacks_on(&agent, whitelisted).is_empty(), "whitelisted");

    // 4. A host the file does not list is not local: no counters, no attack.
    flood(&pair.agent, unlisted, &mut seq);
    agent.settle();
    let err = agent
        .get(&format!("/api/v1/hosts/{unlisted}"))
        .expect_err("not inside the networks");
    assert!(err.contains("not inside the configured networks"), "{err}");
    assert!(attacks_on(&agent, unlisted).is_empty());

    // 5. The file gains the host; a reload reads it again, and the next flood is detected.
    std::fs::write(
        &networks,
        format!("{listed}/32\n{whitelisted}/32\n{unlisted}/32\n"),
    )
    .unwrap();
    let out = agent.cli(&["reload"]);
    assert!(out.contains("changed") && out.contains("networks"), "{out}");
    flood(&pair.agent, unlisted, &mut seq);
    let a = wait_attack(&agent, unlisted);
    assert_eq!(a["direction"], "incoming", "{a:#}");

    // 6. A bad line refuses the reload, naming the file and the line; the networks stay.
    std::fs::write(
        &networks,
        format!("{listed}/32\n# fine\n10.77.0.8/24\n{unlisted}/32\n"),
    )
    .unwrap();
    let err = agent
        .request("POST", "/api/v1/reload", None)
        .expect_err("a bad line is refused");
    assert!(
        err.contains(&format!("{} line 3", networks.display())),
        "{err}"
    );
    assert!(err.contains("10.77.0.8/24"), "{err}");
    assert!(err.contains("running configuration is kept"), "{err}");
    agent
        .get(&format!("/api/v1/hosts/{unlisted}"))
        .expect("still local");
    agent
        .get(&format!("/api/v1/hosts/{whitelisted}"))
        .expect("still local");

    // 7. So does a file that went missing.
    std::fs::remove_file(&networks).unwrap();
    let err = agent
        .request("POST", "/api/v1/reload", None)
        .expect_err("a missing file is refused");
    assert!(
        err.contains("networks_file") && err.contains("cannot read"),
        "{err}"
    );
    let metrics = agent.metrics_text();
    assert!(
        metrics.contains("fnm_config_reloads_total{result=\"invalid\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fnm_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
}
