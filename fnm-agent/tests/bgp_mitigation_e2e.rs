//! Detection through to BGP: the agent (libpcap on the loopback, no XDP) sees a UDP flood to
//! 127.0.0.2, bans it with `bgp_blackhole` and `bgp_flowspec` through a real gobgpd, and the
//! receiving gobgpd's RIB shows the /32 with community 65535:666 and the flowspec rule; after
//! the flood stops and the ban time passes, both are withdrawn. Everything on 127.0.0.1.
#![cfg(target_os = "linux")]

mod bgp_support;
mod common;

use bgp_support::{free_port, Receiver};
use std::{
    net::UdpSocket,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn flood_is_blackholed_and_flowspecced_through_gobgp_then_withdrawn() {
    common::require_root("capturing on the loopback");
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path());
    let api_port = free_port();
    let _speaker = bgp_support::start_gobgp_speaker(dir.path(), receiver.bgp_port, api_port);
    let speaker_log = dir.path().join("speaker.log");
    receiver.wait_established(|| std::fs::read_to_string(&speaker_log).unwrap_or_default());

    let (agent_api, agent_metrics) = (free_port(), free_port());
    let config = dir.path().join("fnm.toml");
    std::fs::write(
        &config,
        format!(
            "networks = [\"127.0.0.2/32\"]\nstate_dir = \"{}\"\n\
             [xdp]\nenabled = false\n[sflow]\nlisten = []\n[netflow]\nlisten = []\n\
             [capture]\nbackend = \"pcap\"\ninterfaces = [\"lo\"]\nbpf_filter = \"udp and dst host 127.0.0.2\"\n\
             [detection.incoming]\nudp_pps = 500\n\
             [ban]\ntime = \"2s\"\nstop_after = \"1s\"\nactions = [\"bgp_blackhole\", \"bgp_flowspec\"]\n\
             [bgp]\nbackend = \"gobgp\"\ngobgp_api = \"127.0.0.1:{api_port}\"\n\
             [api]\nlisten = \"127.0.0.1:{agent_api}\"\n[prometheus]\nlisten = \"127.0.0.1:{agent_metrics}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = Agent(
        Command::new(common::agent::binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(2));

    // 5000 pps of UDP from one source port towards 127.0.0.2 for 3 s.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let payload = [0u8; 200];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        let due = (start.elapsed().as_secs_f64() * 5000.0) as u64;
        while sent < due {
            let _ = sock.send_to(&payload, "127.0.0.2:9999");
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let line = receiver.wait_route("ipv4", "127.0.0.2/32");
    // gobgp prints RFC 7999's 65535:666 by its well-known name.
    assert!(
        line.contains("65535:666") || line.contains("blackhole"),
        "blackhole community: {line}\n{}",
        agent_log()
    );
    let fs = receiver.wait_route("ipv4-flowspec", "127.0.0.2/32");
    assert!(
        fs.contains("udp") || fs.contains("protocol"),
        "flowspec rule: {fs}"
    );

    // The flood stopped; after ban time (2 s) and the stop hysteresis (1 s) both go.
    receiver.wait_gone("ipv4", "127.0.0.2/32");
    receiver.wait_gone("ipv4-flowspec", "[destination: 127.0.0.2/32]");
}
