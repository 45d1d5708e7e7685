//! The detection matrix over XDP: for each direction (incoming, outgoing), each threshold kind
//! (`pps`, `bytes_per_second`, `flows_per_second`, `tcp_pps`, `tcp_bytes_per_second`,
//! `udp_pps`, `udp_bytes_per_second`, `icmp_pps`, `icmp_bytes_per_second`, `tcp_syn_pps`,
//! `fragments_pps`) and each address family, a flood that crosses only that kind's threshold
//! opens exactly one attack in the right direction whose crossing is that kind, and the same
//! traffic at 0.8 × the threshold, beside decoy traffic that drives every other counter over
//! it, opens none (see `common/matrix.rs` for the shapes and why they catch a kind computed
//! from the wrong counter).
//!
//! Real traffic: the peer namespace writes crafted frames (spoofed remote sources, TCP SYNs
//! and bare ACKs, ICMP/ICMPv6 echo, ESP, IPv4 fragments and IPv6 fragment headers) out of its
//! veth end; the real `fnm-agent` binary counts them with its XDP program attached (skb mode)
//! to the other end. All 44 cases (88 hosts, each in a hostgroup of its own that sets only its
//! case's kind) share one agent: the under hosts for 5 s, then the floods for 2.5 s, about
//! 10 s in all. Verdicts come from the HTTP API only. Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::{
    agent::AgentProcess,
    matrix::{conclude, run_frames, Case, Family, Kind, Plan},
    netns::NetnsPair,
    require_root,
};
use std::time::Instant;

/// Threshold in packets per second (× 1000 bytes for byte kinds): under traffic of 80 and
/// decoys of 200 packets/s per host (about 10 700 frames/s in all), then floods of 250
/// (11 000 frames/s).
const UNIT: f64 = 100.0;

#[test]
fn xdp_detection_matrix() {
    require_root("the XDP detection matrix");
    let started = Instant::now();
    let net = 101;
    let pair = NetnsPair::new(net);
    let cases = Case::all(&Kind::ALL, &Family::ALL, 0, "xdp");
    let plan = Plan::new(net, &cases, UNIT, 1);
    let config = format!(
        "{}[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\npin_links = false\n\
         [ban]\nactions = []\n{}",
        plan.top_level_toml(),
        pair.veth_agent,
        plan.hostgroups_toml()
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let (reports, expected) = run_frames(&pair.peer, &pair.veth_peer, &plan);
    let (lines, failures) = plan.verdicts(&agent, &reports, &expected);
    conclude("XDP detection matrix", &lines, &failures, started.elapsed());
}
