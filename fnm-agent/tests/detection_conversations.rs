//! `conversations_per_second` (FastNetMon's "flows": distinct TCP and UDP conversations of a
//! host per second) on real traffic, in the detection matrix's way (`common/matrix.rs`): for
//! both directions and address families, a flood of new TCP and UDP conversations at 2.5 × the
//! threshold opens exactly one attack whose crossing is `conversations_per_second`, and
//! 0.8 × beside a decoy of new ICMP and ESP 5-tuples at 2 × (which lifts `flows_per_second`
//! and the packet rates, not conversations) opens none. Three sources that carry tuples: the
//! libpcap capture backend, IPFIX records and sFlow samples (1 in 1: a sampled tuple counts
//! once, as in FastNetMon, so a conversation rate is not scaled by the sampling rate and the
//! matrix's scaled thresholds do not fit a 1-in-N exporter). Not the XDP data plane, which
//! hands user space per-host sums.
//! Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::{
    agent::AgentProcess,
    exporters::{FlowFormat, NetflowSink, SflowSink},
    matrix::{conclude, run_frames, run_sinks, Case, Family, Kind, Plan},
    netns::NetnsPair,
    pktgen::Sink,
    require_root,
};
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// Threshold in conversations per second.
const UNIT: f64 = 100.0;

#[test]
fn conversations_per_second_over_pcap_capture() {
    require_root("the conversations matrix over pcap");
    let started = Instant::now();
    let net = 178;
    let pair = NetnsPair::new(net);
    let cases = Case::all(&[Kind::ConversationsPerSecond], &Family::ALL, 0, "pcap");
    let plan = Plan::new(net, &cases, UNIT, 1);
    let config = format!(
        "{}[capture]\nbackend = \"pcap\"\ninterfaces = [\"{}\"]\n[ban]\nactions = []\n{}",
        plan.top_level_toml(),
        pair.veth_agent,
        plan.hostgroups_toml()
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    std::thread::sleep(Duration::from_millis(300));
    let (reports, expected) = run_frames(&pair.peer, &pair.veth_peer, &plan);
    let (lines, failures) = plan.verdicts(&agent, &reports, &expected);
    // The operator's view: `hosts` sorts by them and shows their column once counted.
    let table = agent.cli(&["hosts", "--sort", "conversations", "--top", "3"]);
    println!("{table}");
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("FLOWS/S  CONV/S"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    conclude(
        "conversations over pcap",
        &lines,
        &failures,
        started.elapsed(),
    );
}

#[test]
fn conversations_per_second_over_ipfix() {
    require_root("the conversations matrix over IPFIX");
    let started = Instant::now();
    let net = 179;
    let pair = NetnsPair::new(net);
    let cases = Case::all(&[Kind::ConversationsPerSecond], &Family::ALL, 0, "ipfix");
    let plan = Plan::new(net, &cases, UNIT, 1);
    let config = format!(
        "{}[xdp]\nenabled = false\n[netflow]\nlisten = [\"127.0.0.1:2055\"]\n\
         [ban]\nactions = []\n{}",
        plan.top_level_toml(),
        plan.hostgroups_toml()
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let collector: SocketAddr = "127.0.0.1:2055".parse().unwrap();
    let (reports, expected) = run_sinks(&pair.agent, &plan, move || {
        vec![Box::new(NetflowSink::new(FlowFormat::Ipfix, collector)) as Box<dyn Sink>]
    });
    let (lines, failures) = plan.verdicts(&agent, &reports, &expected);
    conclude(
        "conversations over IPFIX",
        &lines,
        &failures,
        started.elapsed(),
    );
}

#[test]
fn conversations_per_second_over_sflow() {
    require_root("the conversations matrix over sFlow");
    let started = Instant::now();
    let net = 180;
    let pair = NetnsPair::new(net);
    let cases = Case::all(&[Kind::ConversationsPerSecond], &Family::ALL, 0, "sflow");
    let plan = Plan::new(net, &cases, UNIT, 1);
    let config = format!(
        "{}[xdp]\nenabled = false\n[sflow]\nlisten = [\"127.0.0.1:6343\"]\n\
         [ban]\nactions = []\n{}",
        plan.top_level_toml(),
        plan.hostgroups_toml()
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let collector: SocketAddr = "127.0.0.1:6343".parse().unwrap();
    let (reports, expected) = run_sinks(&pair.agent, &plan, move || {
        vec![Box::new(SflowSink::new(collector, 1)) as Box<dyn Sink>]
    });
    let (lines, failures) = plan.verdicts(&agent, &reports, &expected);
    conclude(
        "conversations over sFlow",
        &lines,
        &failures,
        started.elapsed(),
    );
}
