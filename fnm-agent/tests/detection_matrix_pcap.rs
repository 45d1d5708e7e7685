//! The detection matrix over the libpcap capture backend (`[capture] backend = "pcap"`): the
//! same 44 cases as `detection_matrix_xdp.rs` (every direction, threshold kind and address
//! family; a flood at 2.5 × the threshold opens exactly one attack of that kind and direction,
//! 0.8 × beside decoy traffic opens none), with the agent capturing the crafted frames live on
//! its veth end instead of counting them in XDP, so the userspace parser and the accounting of
//! records prove every kind too. Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::{
    agent::AgentProcess,
    matrix::{conclude, run_frames, Case, Family, Kind, Plan},
    netns::NetnsPair,
    require_root,
};
use std::time::{Duration, Instant};

/// Threshold in packets per second (× 1000 bytes for byte kinds), as over XDP.
const UNIT: f64 = 100.0;

#[test]
fn pcap_detection_matrix() {
    require_root("the pcap detection matrix");
    let started = Instant::now();
    let net = 102;
    let pair = NetnsPair::new(net);
    let cases = Case::all(&Kind::ALL, &Family::ALL, 0, "pcap");
    let plan = Plan::new(net, &cases, UNIT, 1);
    let config = format!(
        "{}[capture]\nbackend = \"pcap\"\ninterfaces = [\"{}\"]\n[ban]\nactions = []\n{}",
        plan.top_level_toml(),
        pair.veth_agent,
        plan.hostgroups_toml()
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    // The capture handle is open once the API answers; give the first poll a moment.
    std::thread::sleep(Duration::from_millis(300));
    let (reports, expected) = run_frames(&pair.peer, &pair.veth_peer, &plan);
    let (lines, failures) = plan.verdicts(&agent, &reports, &expected);
    conclude(
        "pcap detection matrix",
        &lines,
        &failures,
        started.elapsed(),
    );
}
