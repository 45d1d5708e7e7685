//! Detection from flow records: NetFlow v5 datagrams describing an NTP reflection towards a local
//! host, sent to the agent's collector, open an attack (with the right fingerprint) and call the
//! notify script, exactly as on the XDP path. Runs in a network namespace (root).
#![cfg(target_os = "linux")]

mod common;

use common::netflow::netflow_v5;

use common::{agent::AgentProcess, netns::NetnsPair, require_root};
use std::{
    net::{Ipv4Addr, UdpSocket},
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

#[test]
fn netflow_flood_is_detected_and_scripted() {
    require_root("flow detection end-to-end tests");
    let pair = NetnsPair::new(96);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("script.log");
    let script = dir.path().join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"AT $(date +%s.%N)\" >> {0}\necho \"ARGS $1 $2 $3 $4\" >> {0}\ncat >> {0}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = Ipv4Addr::new(10, 10, 0, 9);
    let config = format!(
        "networks = [\"10.10.0.0/16\"]\n[xdp]\nenabled = false\n\
         [sflow]\nlisten = []\n[netflow]\nlisten = [\"127.0.0.1:2055\"]\n\
         [detection.incoming]\npps = 20000\n\
         [ban]\nactions = [\"script\"]\nscript = \"{}\"\n",
        script.display()
    );
    let agent = AgentProcess::start(&pair.agent, &config);

    // An exporter reporting 30 flows x 1000 packets (each over the last second) every 200 ms:
    // the first datagram alone shows 30 kpps, over the 20 kpps threshold.
    let first_sent = common::flood::unix_now();
    NetnsPair::in_ns(&pair.agent, move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..10u32 {
            let d = netflow_v5(i * 30, 10_000 + i * 200, victim, 30, 1000);
            s.send_to(&d, "127.0.0.1:2055").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(" ban\n") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no ban call; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains(&format!("ARGS {victim} incoming ")), "{text}");
    assert!(text.contains("Attack type: ntp_amplification"), "{text}");
    let banned_at: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("AT "))
        .and_then(|t| t.trim().parse().ok())
        .expect("timestamp line");
    let latency = banned_at - first_sent;
    // Within one 250 ms poll of the first datagram showing the flood (plus the script start).
    assert!(latency < 0.6, "ban {latency:.3} s after the first datagram");
    let attacks = agent.get("/api/v1/attacks").unwrap();
    assert_eq!(attacks[0]["threshold"]["rate"], "pps", "{attacks:#}");
    assert_eq!(
        attacks[0]["fingerprint"]["source_port"][0], 123,
        "{attacks:#}"
    );
    let host = agent.get(&format!("/api/v1/hosts/{victim}")).unwrap();
    assert_eq!(host["incoming"]["packets"], 10 * 30 * 1000, "{host:#}");
    assert_eq!(host["incoming"]["bytes"], 10 * 30 * 1000 * 468, "{host:#}");
}

#[test]
fn sflow_flood_is_detected_and_scripted() {
    use std::sync::{atomic::AtomicBool, Arc};
    require_root("flow detection end-to-end tests");
    let pair = NetnsPair::new(97);
    let dir = tempfile::tempdir().unwrap();
    let (script, log) = common::flood::timestamp_script(dir.path());
    let victim = Ipv4Addr::new(10, 10, 0, 11);
    let config = format!(
        "networks = [\"10.10.0.0/16\"]\n[xdp]\nenabled = false\n\
         [sflow]\nlisten = [\"127.0.0.1:6343\"]\n[netflow]\nlisten = []\n\
         [detection.incoming]\nudp_pps = 10000\n\
         [ban]\nactions = [\"script\"]\nscript = \"{}\"\n",
        script.display()
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    // 40 kpps of DNS reflection sampled 1 in 100 by the exporter, for 2 s.
    let report = NetnsPair::in_ns(&pair.agent, move || {
        let stop = Arc::new(AtomicBool::new(false));
        let sender = common::flood::sflow_flood(
            "127.0.0.1:6343".parse().unwrap(),
            Ipv4Addr::new(198, 51, 100, 7),
            std::net::SocketAddrV4::new(victim, 4444),
            40_000.0,
            100,
            stop.clone(),
        );
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        sender.join().unwrap()
    });
    let call = common::flood::script_calls(&log)
        .into_iter()
        .find(|c| c.action == "ban")
        .unwrap_or_else(|| panic!("no ban call; agent log:\n{}", agent.log()));
    assert_eq!(call.ip, victim.to_string());
    let attacks = agent.get("/api/v1/attacks").unwrap();
    assert_eq!(
        attacks[0]["fingerprint"]["attack_type"], "dns_amplification",
        "{attacks:#}"
    );
    agent.settle();
    let host = agent.get(&format!("/api/v1/hosts/{victim}")).unwrap();
    // Sampled 1:100: the packets the samples stand for, exactly.
    assert_eq!(host["incoming"]["packets"], report.packets, "{host:#}");
}
