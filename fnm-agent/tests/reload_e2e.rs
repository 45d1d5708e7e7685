//! Reloading a running agent on a real kernel, under a steady flow: not one packet is lost from
//! the counters across four reloads (CLI, API, SIGHUP), a lowered threshold opens an attack at
//! the first poll after the reload, an added interface is attached and a removed one detached
//! without touching the other, the collectors move, bans stay, and an invalid file keeps the
//! running configuration and says why, as does one that fails to apply. A BGP reload moves the
//! routes in force to the new settings (through real gobgpd). Needs root.
#![cfg(target_os = "linux")]

mod bgp_support;
mod common;

use common::{
    agent::{write_config, AgentProcess},
    bpffs::BpffsDir,
    netns::*,
    require_root,
};
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// The steady flow: datagrams per second.
const RATE: u64 = 2000;

struct Setup<'a> {
    pair: &'a NetnsPair,
    pins: &'a BpffsDir,
    dummy: &'a str,
}

/// The config body: threshold `pps`, interfaces, sFlow listen addresses and anything `extra`.
fn body(s: &Setup, pps: u64, with_dummy: bool, sflow: &str, extra: &str) -> String {
    let interfaces = if with_dummy {
        format!("\"{}\", \"{}\"", s.pair.veth_agent, s.dummy)
    } else {
        format!("\"{}\"", s.pair.veth_agent)
    };
    format!(
        "networks = [\"{}/32\"]\n[xdp]\ninterfaces = [{interfaces}]\nmode = \"skb\"\n\
         pin_path = \"{}\"\n{extra}\n[sflow]\nlisten = [{sflow}]\n[netflow]\nlisten = []\n\
         [detection.incoming]\npps = {pps}\n[ban]\nactions = []\n",
        s.pair.agent_v4,
        s.pins.path().display()
    )
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn has_xdp(ns: &str, dev: &str) -> bool {
    NetnsPair::exec(ns, &["ip", "-d", "link", "show", "dev", dev]).contains("prog/xdp")
}

fn udp_listening(ns: &str, port: u16) -> bool {
    NetnsPair::exec(ns, &["ss", "-Hluna"]).contains(&format!(":{port} "))
}

#[test]
fn reload_under_a_steady_flow_loses_nothing_and_applies_at_once() {
    require_root("reload end-to-end tests");
    let pair = NetnsPair::new(133);
    let pins = BpffsDir::mount(&pair.veth_agent);
    // A second interface to add and remove: a veth pair inside the agent's namespace.
    let dummy = format!("fdm{}", &pair.veth_agent[3..]);
    let dummy_peer = format!("fdn{}", &pair.veth_agent[3..]);
    NetnsPair::exec(
        &pair.agent,
        &[
            "ip",
            "link",
            "add",
            &dummy,
            "type",
            "veth",
            "peer",
            "name",
            &dummy_peer,
        ],
    );
    NetnsPair::exec(&pair.agent, &["ip", "link", "set", &dummy, "up"]);
    NetnsPair::exec(&pair.agent, &["ip", "link", "set", &dummy_peer, "up"]);
    let s = Setup {
        pair: &pair,
        pins: &pins,
        dummy: &dummy,
    };
    // 2000 pps against 3000: watched (above half of it), not an attack.
    let agent = AgentProcess::start(&pair.agent, &body(&s, 3000, false, "", ""));
    let log = agent.log();
    for line in [
        "counting 1 network",
        "thresholds: incoming pps 3000",
        "actions on an attack: none",
        "XDP maps take",
    ] {
        assert!(
            log.contains(line),
            "start-up summary lacks {line:?}:\n{log}"
        );
    }
    let metrics = agent.metrics_text();
    let map_bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fnm_xdp_map_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(map_bytes > 1 << 20, "map memory reported: {map_bytes}");
    let out = agent.cli(&["ban", "192.0.2.55", "--match", "src"]);
    assert!(out.contains("banned"), "{out}");

    // The steady flow, until told to stop; it returns how many datagrams it sent.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, to) = (stop.clone(), SocketAddr::new(pair.agent_v4, 9999));
        let peer = pair.peer.clone();
        std::thread::spawn(move || {
            NetnsPair::in_ns(&peer, move || {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                let (start, mut sent) = (Instant::now(), 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let due = (start.elapsed().as_secs_f64() * RATE as f64) as u64;
                    while sent < due {
                        sock.send_to(&[0x5a; 64], to).expect("send");
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                sent
            })
        })
    };
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        agent
            .get("/api/v1/attacks")
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty(),
        "no attack at 3000 pps"
    );

    // 1. Through the CLI: threshold lowered, an interface and a collector added, a key that
    //    needs a restart changed.
    let cfg = |pps, dummy, sflow: &str, extra: &str| {
        write_config(
            &agent.config_path,
            &agent.state_path,
            &body(&s, pps, dummy, sflow, extra),
            agent.api,
            agent.metrics,
        )
    };
    cfg(1000, true, "\"127.0.0.1:16343\"", "max_hosts = 4096");
    let out = agent.cli(&["reload"]);
    let reloaded_ms = unix_ms();
    // The engine took the reload between two ticks, before the CLI heard back: by the tick the
    // status shows now at the latest. The next one must open the attack (the host was already
    // watched, so nothing holds it back).
    let in_force_by = agent.get("/api/v1/status").unwrap()["engine"]["ticks"]
        .as_u64()
        .unwrap();
    for part in [
        "reloaded",
        "detection.incoming",
        "xdp.interfaces",
        "sflow.listen",
        "restart needed for xdp.max_hosts",
    ] {
        assert!(out.contains(part), "{part:?} missing from:\n{out}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let opened_at = loop {
        let status = agent.get("/api/v1/status").unwrap();
        if status["attacks_ongoing"].as_u64() == Some(1) {
            break status["engine"]["ticks"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no attack after the reload");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        opened_at <= in_force_by + 1,
        "the attack showed at tick {opened_at}; the reload was in force by tick {in_force_by}"
    );
    let attack = agent.get("/api/v1/attacks").unwrap()[0].clone();
    assert_eq!(attack["threshold"]["threshold"], 1000.0, "{attack:#}");
    let started = attack["started_unix_ms"].as_u64().unwrap();
    assert!(
        has_xdp(&pair.agent, &dummy),
        "the added interface is attached"
    );
    assert!(
        has_xdp(&pair.agent, &pair.veth_agent),
        "the other one still is"
    );
    assert!(
        udp_listening(&pair.agent, 16343),
        "the new collector listens"
    );

    // 2. An invalid file, through the API: refused, with the reason; nothing changes.
    std::fs::write(
        &agent.config_path,
        format!(
            "bogus_key = 1\n{}",
            std::fs::read_to_string(&agent.config_path).unwrap()
        ),
    )
    .unwrap();
    let err = agent
        .request("POST", "/api/v1/reload", None)
        .expect_err("an invalid file is refused");
    assert!(err.contains("bogus_key"), "{err}");
    assert!(err.contains("running configuration is kept"), "{err}");
    let t = agent
        .get(&format!("/api/v1/thresholds/{}", pair.agent_v4))
        .unwrap();
    assert_eq!(t["incoming"]["pps"], 1000.0, "{t:#}");
    assert!(agent.log().contains("bogus_key"), "logged");

    // 3a. A file naming an interface this host has not got: refused by the checks `run`
    //     makes at start (check-config's), before anything is applied.
    let missing = body(&s, 999, true, "\"127.0.0.1:16343\"", "max_hosts = 4096").replace(
        &format!("\"{dummy}\"]"),
        &format!("\"{dummy}\", \"fnmnosuch0\"]"),
    );
    write_config(
        &agent.config_path,
        &agent.state_path,
        &missing,
        agent.api,
        agent.metrics,
    );
    let err = agent
        .request("POST", "/api/v1/reload", None)
        .expect_err("a missing interface is refused");
    assert!(
        err.starts_with("400") && err.contains("fnmnosuch0"),
        "{err}"
    );

    // 3b. A change that fails to apply (a collector address another socket holds, which no
    //     check can see coming): undone, nothing else of it applied either.
    let mut holder = std::process::Command::new("ip")
        .args(["netns", "exec", &pair.agent, "python3", "-c"])
        .arg(
            "import socket,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('127.0.0.1',16399))\nprint('bound',flush=True)\ntime.sleep(120)",
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 holding a port");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "bound");
    }
    let failing = body(
        &s,
        999,
        true,
        "\"127.0.0.1:16343\", \"127.0.0.1:16399\"",
        "max_hosts = 4096",
    );
    write_config(
        &agent.config_path,
        &agent.state_path,
        &failing,
        agent.api,
        agent.metrics,
    );
    let err = agent
        .request("POST", "/api/v1/reload", None)
        .expect_err("a collector address that cannot be bound fails the reload");
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(err.starts_with("500") && err.contains("16399"), "{err}");
    assert!(err.contains("running configuration is kept"), "{err}");
    let t = agent
        .get(&format!("/api/v1/thresholds/{}", pair.agent_v4))
        .unwrap();
    assert_eq!(t["incoming"]["pps"], 1000.0, "{t:#}");
    assert!(has_xdp(&pair.agent, &dummy) && has_xdp(&pair.agent, &pair.veth_agent));

    // 4. SIGHUP: the added interface and collector go again.
    cfg(1000, false, "", "");
    agent.signal(libc::SIGHUP);
    agent.wait_log("configuration reloaded", 2);
    assert!(
        !has_xdp(&pair.agent, &dummy),
        "the removed interface is detached"
    );
    assert!(has_xdp(&pair.agent, &pair.veth_agent));
    assert!(!udp_listening(&pair.agent, 16343), "the collector is gone");

    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().unwrap();
    agent.settle();
    let h = agent
        .get(&format!("/api/v1/hosts/{}", pair.agent_v4))
        .unwrap();
    assert_eq!(
        h["incoming"]["packets"].as_u64().unwrap(),
        sent,
        "every packet of the flow counted across the reloads: {h:#}"
    );
    eprintln!(
        "{sent} datagrams sent and counted across four reloads; the attack opened {} ms \
         after the reload answer",
        started as i64 - reloaded_ms as i64
    );
    // It ran 2 s before the first reload and on through the three.
    assert!(sent > 2 * RATE, "a steady flow of {sent} datagrams");
    let bans = agent.get("/api/v1/bans").unwrap();
    assert_eq!(bans[0]["prefix"], "192.0.2.55/32", "{bans:#}");
    let attacks = agent.get("/api/v1/attacks").unwrap();
    assert_eq!(
        attacks.as_array().unwrap().len(),
        1,
        "the same attack: {attacks:#}"
    );

    let metrics = agent.metrics_text();
    for line in [
        "fnm_config_reloads_total{result=\"success\"} 2",
        "fnm_config_reloads_total{result=\"invalid\"} 2",
        "fnm_config_reloads_total{result=\"failed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let last: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fnm_config_last_reload_success_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        last * 1000 + 1000 >= reloaded_ms,
        "last success after the first reload"
    );
}

#[test]
fn a_bgp_reload_moves_the_routes_in_force_to_the_new_settings() {
    use bgp_support::{free_port, Receiver};
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path());
    let speaker_api = free_port();
    let _speaker = bgp_support::start_gobgp_speaker(dir.path(), receiver.bgp_port, speaker_api);
    let speaker_log = dir.path().join("speaker.log");
    receiver.wait_established(|| std::fs::read_to_string(&speaker_log).unwrap_or_default());

    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config_path = dir.path().join("fnm.toml");
    let write = |community: &str| {
        write_config(
            &config_path,
            &dir.path().join("state"),
            &format!(
                "networks = [\"10.0.0.0/8\"]\n[xdp]\nenabled = false\n[sflow]\nlisten = []\n\
                 [netflow]\nlisten = []\n[ban]\nmanual_actions = [\"bgp_blackhole\"]\n\
                 [bgp]\nbackend = \"gobgp\"\ngobgp_api = \"127.0.0.1:{speaker_api}\"\n\
                 communities = [\"{community}\"]\n"
            ),
            api,
            metrics,
        )
    };
    write("65535:666");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = std::process::Command::new(common::agent::binary())
        .args(["run", "--config"])
        .arg(&config_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        }
    }
    let _stop = Stop(agent.id());
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    bgp_support::wait_for("the agent's API", || {
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("the agent exited ({status}):\n{}", agent_log());
        }
        fnm_agent::client::request(api, "GET", "/api/v1/status", None).map_err(|e| e.to_string())
    });
    let ban = serde_json::json!({"prefix": "198.51.100.7/32", "match": "src"});
    fnm_agent::client::request(api, "POST", "/api/v1/bans", Some(&ban)).unwrap();
    let line = receiver.wait_route("ipv4", "198.51.100.7/32");
    assert!(
        line.contains("65535:666") || line.contains("blackhole"),
        "{line}\n{}",
        agent_log()
    );

    // New communities: the route in force is announced again with them.
    write("65000:999");
    let outcome = fnm_agent::client::request(api, "POST", "/api/v1/reload", None).unwrap();
    assert_eq!(
        outcome["changed"],
        serde_json::json!(["bgp.communities"]),
        "{outcome:#}"
    );
    assert_eq!(outcome["notes"], serde_json::json!([]), "{outcome:#}");
    bgp_support::wait_for("the route with the new community", || {
        match receiver.rib_line("ipv4", "198.51.100.7/32")? {
            Some(l) if l.contains("65000:999") => Ok(l),
            other => Err(format!("{other:?}\n{}", agent_log())),
        }
    });
    // Lifting the ban withdraws it through the new session.
    fnm_agent::client::request(
        api,
        "DELETE",
        "/api/v1/bans/198.51.100.7%2F32?match=src",
        None,
    )
    .unwrap();
    receiver.wait_gone("ipv4", "198.51.100.7/32");
    drop(_stop);
    let _ = agent.wait();
}
