//! One agent per state directory and per interface, on a real kernel: a second agent is
//! refused (naming the first one's pid) while the first keeps counting exactly, and after a
//! SIGKILL `fnm-agent detach` removes the pinned link so the interface is free again. Needs
//! root.
#![cfg(target_os = "linux")]

mod common;

use common::{
    agent::{binary, run_to_exit, write_config, AgentProcess},
    bpffs::BpffsDir,
    netns::*,
    require_root,
};
use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

fn config(pair: &NetnsPair, pins: &BpffsDir) -> String {
    format!(
        "networks = [\"{}/32\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\npin_path = \"{}\"\n\
         [sflow]\nlisten = []\n[netflow]\nlisten = []\n",
        pair.agent_v4,
        pair.veth_agent,
        pins.path().display()
    )
}

fn incoming_packets(agent: &AgentProcess, ip: IpAddr) -> u64 {
    let h = agent.get(&format!("/api/v1/hosts/{ip}")).expect("host");
    h["incoming"]["packets"].as_u64().unwrap_or(0)
}

fn send(pair: &NetnsPair, n: usize) {
    let to = SocketAddr::new(pair.agent_v4, 9999);
    NetnsPair::in_ns(&pair.peer, move || send_udp(to, n, 100));
}

/// What `ip -d link show` says of the interface in the agent's namespace.
fn link_details(pair: &NetnsPair) -> String {
    NetnsPair::exec(
        &pair.agent,
        &["ip", "-d", "link", "show", "dev", &pair.veth_agent],
    )
}

#[test]
fn a_second_agent_is_refused_and_the_first_keeps_counting_exactly() {
    require_root("ownership end-to-end tests");
    let pair = NetnsPair::new(131);
    let pins = BpffsDir::mount(&pair.veth_agent);
    let cfg = config(&pair, &pins);
    let first = AgentProcess::start(&pair.agent, &cfg);
    send(&pair, 10);
    first.settle();
    assert_eq!(incoming_packets(&first, pair.agent_v4), 10);

    // Same state directory: refused at its lock.
    let dir = tempfile::tempdir().unwrap();
    let other_ports = (
        "127.0.0.1:19310".parse().unwrap(),
        "127.0.0.1:19309".parse().unwrap(),
    );
    let same_state = dir.path().join("same-state.toml");
    write_config(
        &same_state,
        &first.state_path,
        &cfg,
        other_ports.0,
        other_ports.1,
    );
    let (ok, out) = run_to_exit(&pair.agent, &same_state, Duration::from_secs(20));
    assert!(
        !ok,
        "a second agent on the same state directory exits non-zero:\n{out}"
    );
    assert!(
        out.contains(&format!("another fnm-agent (pid {})", first.pid())),
        "{out}"
    );
    assert!(out.contains("state directory"), "{out}");

    // Its own state directory, the same interface: refused at the interface's owner record.
    let own_state = dir.path().join("own-state.toml");
    write_config(
        &own_state,
        &dir.path().join("state"),
        &cfg,
        other_ports.0,
        other_ports.1,
    );
    let (ok, out) = run_to_exit(&pair.agent, &own_state, Duration::from_secs(20));
    assert!(
        !ok,
        "a second agent on the same interface exits non-zero:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "another fnm-agent (pid {}) owns {}",
            first.pid(),
            pair.veth_agent
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("fnm-agent detach {}", pair.veth_agent)),
        "{out}"
    );

    // The first one never noticed: same link, still counting every packet.
    send(&pair, 10);
    first.settle();
    assert_eq!(
        incoming_packets(&first, pair.agent_v4),
        20,
        "{}",
        first.log()
    );
    assert!(!first.log().contains("took over"), "{}", first.log());
    assert!(link_details(&pair).contains("prog/xdp"), "still attached");
    let entries = pins.entries();
    assert_eq!(
        entries,
        vec![
            format!("link-{}", pair.veth_agent),
            format!(
                "link-{}-owner-{}-{}",
                pair.veth_agent,
                first.pid(),
                start_time(first.pid())
            )
        ],
        "the first agent's pin and owner record only"
    );

    // `detach` refuses an interface a running agent owns.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.agent,
            binary(),
            "detach",
            &pair.veth_agent,
        ])
        .arg("--config")
        .arg(&first.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("another fnm-agent (pid {}) owns", first.pid())),
        "{text}"
    );
    send(&pair, 5);
    first.settle();
    assert_eq!(incoming_packets(&first, pair.agent_v4), 25);
}

/// Field 22 of /proc/<pid>/stat.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    fnm_agent::ownership::parse_start_time(&stat).unwrap()
}

#[test]
fn detach_after_a_sigkill_frees_the_interface_for_a_new_agent() {
    require_root("ownership end-to-end tests");
    let pair = NetnsPair::new(132);
    let pins = BpffsDir::mount(&pair.veth_agent);
    let cfg = config(&pair, &pins);
    let agent = AgentProcess::start(&pair.agent, &cfg);
    let config_path = agent.config_path.clone();
    let state = agent.kill();

    // The pinned link outlives the agent: the program stays on the interface, and iproute2
    // cannot take it off.
    assert!(
        link_details(&pair).contains("prog/xdp"),
        "{}",
        link_details(&pair)
    );
    let off = Command::new("ip")
        .args(["netns", "exec", &pair.agent, "ip", "link", "set", "dev"])
        .args([&pair.veth_agent, "xdpgeneric", "off"])
        .output()
        .unwrap();
    assert!(
        !off.status.success(),
        "`ip link set xdp off` cannot remove a pinned link"
    );

    let out = NetnsPair::exec(
        &pair.agent,
        &[
            binary(),
            "detach",
            &pair.veth_agent,
            "--config",
            config_path.to_str().unwrap(),
        ],
    );
    assert!(out.contains("detached"), "{out}");
    assert!(
        !link_details(&pair).contains("prog/xdp"),
        "{}",
        link_details(&pair)
    );
    assert!(
        pins.entries().is_empty(),
        "pin and owner record gone: {:?}",
        pins.entries()
    );
    // Nothing left to detach: said so, and not an error.
    let out = NetnsPair::exec(
        &pair.agent,
        &[
            binary(),
            "detach",
            "--config",
            config_path.to_str().unwrap(),
        ],
    );
    assert!(out.contains("no XDP link is pinned"), "{out}");

    // A new agent attaches anew (nothing to take over) and counts exactly.
    let agent = AgentProcess::start_with_state(&pair.agent, &cfg, state);
    assert!(agent.log().contains("in skb mode"), "{}", agent.log());
    assert!(!agent.log().contains("took over"), "{}", agent.log());
    send(&pair, 10);
    agent.settle();
    assert_eq!(incoming_packets(&agent, pair.agent_v4), 10);
    drop(agent);
    assert!(
        pins.entries().is_empty(),
        "a clean stop leaves nothing: {:?}",
        pins.entries()
    );
}
