//! The detection matrix over flow exports: crafted sFlow v5, NetFlow v5, NetFlow v9 and IPFIX
//! datagrams (real UDP to the agent's collectors on 127.0.0.1 in its namespace) describe the
//! same traffic as the XDP matrix (`common/matrix.rs`): for every kind a source can carry, in
//! both directions and every address family it can carry, a flood at 2.5 × the threshold
//! opens exactly one attack of that kind and direction, and 0.8 × beside decoy traffic opens
//! none. The sFlow exporter samples 1 in 50 (every sample stands for 50 packets, thresholds
//! are 50 × the XDP ones), so its accounting is proven scaled; the NetFlow/IPFIX exporters
//! keep a flow cache and export every flow every 100 ms (an active timeout). Three agents, one
//! per test: sFlow (40 cases), NetFlow v5 and v9 (60), IPFIX (44); each runs its cases at once
//! in about 9 s, two tests at a time.
//!
//! What a source cannot carry, and is therefore not in its slice:
//!
//! - sFlow, `flows_per_second`: a flow sample is one packet in N; the agent can only count
//!   new 5-tuples among the samples, which is not scaled by N (a short flow is seen with
//!   probability 1/N, a long one many times), so a sampled source has no flow rate. Every
//!   other kind is in the sampled headers (SYN flags, IPv4 fragment bits, IPv6 fragment
//!   headers).
//! - NetFlow v5: IPv6 (its record is IPv4 only) and `fragments_pps` (no fragment field).
//! - NetFlow v9, `fragments_pps`: RFC 3954 defines no fragment flags; the agent reads only
//!   IPFIX's `fragmentFlags` (element 197), which the IPFIX slice proves (its records carry
//!   0x04, the bit fnm's decoder reads as "More Fragments"; every generated fragment has MF).
//! - `tcp_syn_pps` from NetFlow/IPFIX rests on the OR of a flow's TCP flags: a flow of bare
//!   SYNs (a spoofed SYN flood: one SYN per 5-tuple) counts every packet, a flow that also
//!   carries an ACK counts none. The matrix proves the former; exact SYN counts of mixed
//!   flows are not carried.
//!
//! Needs root (network namespace).
#![cfg(target_os = "linux")]

mod common;

use common::{
    agent::AgentProcess,
    exporters::{FlowFormat, NetflowSink, SflowSink},
    matrix::{conclude, run_sinks, Case, Family, Kind, Plan},
    netns::NetnsPair,
    pktgen::Sink,
    require_root,
};
use std::{net::SocketAddr, time::Instant};

/// Threshold in generated packets (samples, or packets in flow records) per second, × 1000
/// bytes for byte kinds.
const UNIT: f64 = 100.0;
/// The sFlow exporter's sampling rate.
const SFLOW_RATE: u32 = 50;

fn config(plan: &Plan) -> String {
    format!(
        "{}[xdp]\nenabled = false\n[sflow]\nlisten = [\"127.0.0.1:6343\"]\n\
         [netflow]\nlisten = [\"127.0.0.1:2055\"]\n[ban]\nactions = []\n{}",
        plan.top_level_toml(),
        plan.hostgroups_toml()
    )
}

fn kinds_without(excluded: &[Kind]) -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| !excluded.contains(k))
        .collect()
}

#[test]
fn sflow_detection_matrix() {
    require_root("the sFlow detection matrix");
    let started = Instant::now();
    let net = 103;
    let pair = NetnsPair::new(net);
    let kinds = kinds_without(&[Kind::FlowsPerSecond]);
    let cases = Case::all(&kinds, &Family::ALL, 0, "sflow");
    let plan = Plan::new(net, &cases, UNIT, SFLOW_RATE);
    let agent = AgentProcess::start(&pair.agent, &config(&plan));
    let collector: SocketAddr = "127.0.0.1:6343".parse().unwrap();
    let (reports, expected) = run_sinks(&pair.agent, &plan, move || {
        vec![Box::new(SflowSink::new(collector, SFLOW_RATE)) as Box<dyn Sink>]
    });
    let (lines, failures) = plan.verdicts(&agent, &reports, &expected);
    conclude(
        "sFlow detection matrix",
        &lines,
        &failures,
        started.elapsed(),
    );
}

/// Runs `cases` through flow exporters of `formats` (sink `k` speaks `formats[k]`) against
/// an agent of its own.
fn netflow_matrix(title: &str, net: u8, cases: &[Case], formats: &'static [FlowFormat]) {
    let started = Instant::now();
    let pair = NetnsPair::new(net);
    let plan = Plan::new(net, cases, UNIT, 1);
    let agent = AgentProcess::start(&pair.agent, &config(&plan));
    let collector: SocketAddr = "127.0.0.1:2055".parse().unwrap();
    let (reports, expected) = run_sinks(&pair.agent, &plan, move || {
        formats
            .iter()
            .map(|f| Box::new(NetflowSink::new(*f, collector)) as Box<dyn Sink>)
            .collect()
    });
    let (lines, failures) = plan.verdicts(&agent, &reports, &expected);
    conclude(title, &lines, &failures, started.elapsed());
}

#[test]
fn netflow_v5_v9_detection_matrix() {
    require_root("the NetFlow detection matrix");
    let no_fragments = kinds_without(&[Kind::FragmentsPps]);
    let mut cases = Case::all(&no_fragments, &[Family::V4], 0, "netflow-v5");
    cases.extend(Case::all(&no_fragments, &Family::ALL, 1, "netflow-v9"));
    netflow_matrix(
        "NetFlow v5/v9 detection matrix",
        104,
        &cases,
        &[FlowFormat::V5, FlowFormat::V9],
    );
}

#[test]
fn ipfix_detection_matrix() {
    require_root("the IPFIX detection matrix");
    let cases = Case::all(&Kind::ALL, &Family::ALL, 0, "ipfix");
    netflow_matrix("IPFIX detection matrix", 106, &cases, &[FlowFormat::Ipfix]);
}
