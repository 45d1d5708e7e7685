//! Network-wide detection end to end, on 127.0.0.1 with real parts only: three agents fed by
//! three NetFlow exporters each see 40 % of a victim's threshold and publish their host
//! counters to a real Kafka-compatible broker (tansu); an aggregator (`[cluster] role =
//! "aggregator"`) sums them, opens the attack within 2 s of the flood's start and announces
//! the blackhole to a real gobgpd; no agent opens one. Then two aggregators share the consumer
//! group, one is killed, and the other takes its partitions over and detects on its own.
#![cfg(target_os = "linux")]

mod bgp_support;
mod common;

use common::netflow::netflow_v5;

use bgp_support::{free_port, Receiver};
use common::{kafka::Broker, loopback_agent::LoopbackAgent as Agent, require_root};
use std::{
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// One agent on loopback: `body` after the settings every agent here shares.
fn start(dir: &Path, name: &str, body: &str) -> Agent {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    Agent::start(
        &dir,
        &format!(
            "poll_interval = \"250ms\"\nrate_window = \"1s\"\n\
             networks = [\"10.10.0.0/16\"]\n[xdp]\nenabled = false\n[sflow]\nlisten = []\n{body}"
        ),
    )
}

/// An exporter sending `pps` packets/s towards `dst` to a collector on `port`, one datagram
/// every 200 ms, until `stop`.
fn exporter(
    port: u16,
    dst: Ipv4Addr,
    pps: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let per_datagram = pps / 5;
        let (mut seq, mut sent) = (0u32, 0u64);
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let uptime = 10_000 + start.elapsed().as_millis() as u32;
            let d = netflow_v5(seq, uptime, dst, 10, per_datagram / 10);
            let _ = s.send_to(&d, ("127.0.0.1", port));
            seq += 10;
            sent += u64::from(per_datagram / 10 * 10);
            std::thread::sleep(Duration::from_millis(200));
        }
        sent
    })
}

fn agent_body(netflow_port: u16, site: &str, broker: &str) -> String {
    format!(
        "[netflow]\nlisten = [\"127.0.0.1:{netflow_port}\"]\n\
         [detection.incoming]\npps = 20000\n\
         [ban]\nactions = []\n\
         [export]\nkafka = true\nagent_id = \"{site}\"\n\
         [kafka]\nbrokers = [\"{broker}\"]\n"
    )
}

fn aggregator_body(broker: &str, bgp: &str) -> String {
    format!(
        "[netflow]\nlisten = []\n\
         [detection.incoming]\npps = 20000\n\
         {bgp}\
         [kafka]\nbrokers = [\"{broker}\"]\n\
         [cluster]\nrole = \"aggregator\"\n"
    )
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn an_attack_split_over_three_agents_is_opened_by_the_aggregator_alone() {
    require_root("the fleet end-to-end test (gobgpd, loopback ports)");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(None, free_port());
    let mut receiver = Receiver::start(dir.path());
    let api_port = free_port();
    let _speaker = bgp_support::start_gobgp_speaker(dir.path(), receiver.bgp_port, api_port);
    let speaker_log = dir.path().join("speaker.log");
    receiver.wait_established(|| std::fs::read_to_string(&speaker_log).unwrap_or_default());

    let aggregator = start(
        dir.path(),
        "aggregator",
        &aggregator_body(
            &broker.addr,
            &format!(
                "[ban]\nactions = [\"bgp_blackhole\"]\n\
                 [bgp]\nbackend = \"gobgp\"\ngobgp_api = \"127.0.0.1:{api_port}\"\n"
            ),
        ),
    );
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let agents: Vec<Agent> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            start(
                dir.path(),
                &format!("site-{i}"),
                &agent_body(*port, &format!("site-{i}"), &broker.addr),
            )
        })
        .collect();
    wait_for(
        "the aggregator holds the hosts topic",
        Duration::from_secs(30),
        || aggregator.metric("fnm_fleet_partitions_assigned") == Some(3.0),
    );

    // 8 000 packets/s through each of three routers: 40 % of the 20 000 threshold each,
    // 120 % together.
    let victim = Ipv4Addr::new(10, 10, 0, 9);
    let stop = Arc::new(AtomicBool::new(false));
    let started_ms = common::flood::unix_now() * 1000.0;
    let floods: Vec<_> = ports
        .iter()
        .map(|p| exporter(*p, victim, 8_000, stop.clone()))
        .collect();
    wait_for(
        "the aggregator opens the attack",
        Duration::from_secs(10),
        || !aggregator.attacks().is_empty(),
    );
    let attack = aggregator.attacks()[0].clone();
    let detected_after_ms = attack["started_unix_ms"].as_f64().unwrap() - started_ms;
    let line = receiver.wait_route("ipv4", "10.10.0.9/32");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    println!("aggregator opened the attack {detected_after_ms:.0} ms after the flood started");
    assert!(
        detected_after_ms < 2000.0,
        "opened {detected_after_ms:.0} ms after the flood started: {attack:#}\n{}",
        aggregator.log()
    );
    assert_eq!(attack["host"], victim.to_string());
    assert!(
        line.contains("65535:666") || line.contains("blackhole"),
        "{line}"
    );
    let sites = attack["sites"]
        .as_array()
        .expect("sites in the attack record");
    assert_eq!(sites.len(), 3, "{attack:#}");
    for s in sites {
        let share = s["share"].as_f64().unwrap();
        assert!((0.2..0.5).contains(&share), "about a third each: {sites:?}");
    }
    for (i, a) in agents.iter().enumerate() {
        assert!(
            a.attacks().is_empty(),
            "site-{i} saw 40 % and must not open an attack: {:?}",
            a.attacks()
        );
    }
}

#[test]
fn when_one_of_two_aggregators_stops_the_other_takes_over() {
    failover(Stop::Term);
}

/// With the aggregator killed outright, tansu 0.6.0 evicts it after the session timeout
/// ("missed heartbeat ... after 6162ms" in its log) and answers the survivor's heartbeat with
/// REBALANCE_IN_PROGRESS, but its group stays "formed" (the administrator's second
/// `missed_heartbeat` finds nobody left to evict), so the survivor's rejoin gets its old
/// assignment back and the dead member's partitions stay unread. A broker bug, not fnm's:
/// run it against Apache Kafka or Redpanda with `--ignored`.
#[test]
#[ignore = "tansu 0.6.0 never reassigns a crashed member's partitions (see docs/fleet.md)"]
fn when_one_of_two_aggregators_is_killed_the_other_takes_over() {
    failover(Stop::Kill);
}

/// How the first aggregator goes.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGTERM: it leaves the consumer group on its way out.
    Term,
    /// SIGKILL: the broker finds out by the missing heartbeats.
    Kill,
}

fn failover(how: Stop) {
    require_root("the fleet end-to-end test (loopback ports)");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(None, free_port());
    let mut first = start(dir.path(), "agg-1", &aggregator_body(&broker.addr, ""));
    let second = start(dir.path(), "agg-2", &aggregator_body(&broker.addr, ""));
    let port = free_port();
    let _site = start(dir.path(), "site", &agent_body(port, "site", &broker.addr));
    let assigned = |a: &Agent| a.metric("fnm_fleet_partitions_assigned").unwrap_or(0.0);
    wait_for(
        "the group spreads the 3 partitions",
        Duration::from_secs(60),
        || {
            assigned(&first) + assigned(&second) == 3.0
                && assigned(&first) > 0.0
                && assigned(&second) > 0.0
        },
    );
    // Steady traffic on many hosts, so both aggregators have work.
    let stop = Arc::new(AtomicBool::new(false));
    let steady: Vec<_> = (1..=6u8)
        .map(|i| exporter(port, Ipv4Addr::new(10, 10, 1, i), 500, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    match how {
        Stop::Term => drop(first),
        Stop::Kill => first.kill(),
    }
    let took_over = wait_for(
        "the survivor holds every partition",
        Duration::from_secs(60),
        || assigned(&second) == 3.0,
    );
    println!("the surviving aggregator held every partition {took_over:?} after the {how:?}");
    // A flood on any host is now the survivor's to detect.
    let flood_stop = Arc::new(AtomicBool::new(false));
    let flood = exporter(
        port,
        Ipv4Addr::new(10, 10, 2, 1),
        30_000,
        flood_stop.clone(),
    );
    let detected = wait_for("the survivor detects", Duration::from_secs(10), || {
        second.attacks().iter().any(|a| a["host"] == "10.10.2.1")
    });
    println!("detected {detected:?} after the flood started");
    flood_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    for s in steady {
        s.join().unwrap();
    }
    assert!(detected < Duration::from_secs(2), "{}", second.log());
}
