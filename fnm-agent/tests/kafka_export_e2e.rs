//! Kafka export end to end: the real agent (flow source on loopback) publishes to a real
//! Kafka-compatible broker (tansu, installed by `cargo xtask setup`), and a real Kafka client
//! (librdkafka, through `rdkafka`) reads the topics back. Runs in a network namespace (root).
//!
//! - Every packet the exporter reported is in `<prefix>.hosts`, exactly, keyed by host, with
//!   the attack and the mitigation it caused on their topics.
//! - A broker that is not there, goes away and comes back never holds up detection: attacks
//!   open while it is away, drops are counted, and export resumes on its own.
#![cfg(target_os = "linux")]

mod common;

use common::netflow::netflow_v5;

use common::{
    agent::AgentProcess,
    kafka::{Broker, PARTITIONS, TOPICS},
    netns::NetnsPair,
    require_root, wait_until,
};
use rdkafka::{
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};
use std::{
    collections::HashMap,
    net::{Ipv4Addr, UdpSocket},
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

const BROKER: &str = "127.0.0.1:9092";

/// Everything read from the three topics so far.
#[derive(Default, Debug)]
struct Seen {
    /// (host, direction) → packets summed over its host records.
    packets: HashMap<(String, String), u64>,
    attacks: Vec<serde_json::Value>,
    mitigations: Vec<serde_json::Value>,
    flows: Vec<serde_json::Value>,
    /// Messages whose key was not their host.
    bad_keys: Vec<String>,
}

impl Seen {
    fn packets(&self, host: Ipv4Addr) -> u64 {
        self.packets
            .get(&(host.to_string(), "incoming".into()))
            .copied()
            .unwrap_or(0)
    }
}

/// Reads the topics from their beginning inside `ns` until `done` holds or `timeout` passes;
/// returns what it read.
fn consume(ns: &str, timeout: Duration, done: fn(&Seen) -> bool) -> Seen {
    NetnsPair::in_ns(ns, move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BROKER)
            .set("group.id", "fnm-test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for topic in TOPICS {
            for p in 0..PARTITIONS {
                list.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&list).expect("assign");
        let mut seen = Seen::default();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !done(&seen) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON message");
            let host = v["host"]
                .as_str()
                .or(v["mitigation"]["host"].as_str())
                .or(v["dst"].as_str())
                .unwrap_or_default()
                .to_owned();
            if key != host {
                seen.bad_keys.push(format!("{key} for {v}"));
            }
            match m.topic() {
                "fnm.hosts" => {
                    assert_eq!(v["agent"], "site-a", "{v}");
                    let dir = v["direction"].as_str().unwrap().to_owned();
                    *seen.packets.entry((host, dir)).or_default() += v["packets"].as_u64().unwrap();
                }
                "fnm.attacks" => seen.attacks.push(v),
                "fnm.flows" => seen.flows.push(v),
                _ => seen.mitigations.push(v),
            }
        }
        seen
    })
}

/// Sends `datagrams` datagrams of `records` × `packets` towards `dst`, 200 ms apart; returns
/// the packets reported.
fn send_flows(ns: &str, dst: Ipv4Addr, datagrams: u32, records: u8, packets: u32) -> u64 {
    NetnsPair::in_ns(ns, move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..datagrams {
            let d = netflow_v5(i * 30, 10_000 + i * 200, dst, records, packets);
            s.send_to(&d, "127.0.0.1:2055").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    u64::from(datagrams) * u64::from(records) * u64::from(packets)
}

fn config(script: &std::path::Path, kafka_extra: &str) -> String {
    format!(
        "networks = [\"10.10.0.0/16\"]\n[xdp]\nenabled = false\n\
         [sflow]\nlisten = []\n[netflow]\nlisten = [\"127.0.0.1:2055\"]\n\
         [detection.incoming]\npps = 20000\n\
         [ban]\nactions = [\"script\"]\nscript = \"{}\"\n\
         [export]\nkafka = true\nagent_id = \"site-a\"\nattack_update_interval = \"1s\"\n\
         [kafka]\nbrokers = [\"{BROKER}\"]\n{kafka_extra}",
        script.display()
    )
}

fn script(dir: &std::path::Path) -> std::path::PathBuf {
    let script = dir.join("notify.sh");
    std::fs::write(&script, "#!/bin/sh\ncat >/dev/null\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn export_status(agent: &AgentProcess) -> serde_json::Value {
    agent.get("/api/v1/status").unwrap()["export"]["kafka"].clone()
}

#[test]
fn a_flood_reaches_kafka_exactly_with_its_attack_and_mitigation() {
    require_root("Kafka export end-to-end tests");
    let pair = NetnsPair::new(150);
    let _broker = Broker::start(Some(&pair.agent), 9092);
    let dir = tempfile::tempdir().unwrap();
    // One in ten flow records goes to fnm.flows.
    let config = config(&script(dir.path()), "").replace(
        "attack_update_interval = \"1s\"\n",
        "attack_update_interval = \"1s\"\nflow_sample_rate = 10\n",
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let victim = Ipv4Addr::new(10, 10, 0, 9);
    let quiet = Ipv4Addr::new(10, 10, 0, 20);
    // 300 000 packets in 2 s (150 kpps, over the 20 kpps threshold), and 100 packets of a host
    // that stays far below it.
    let flood = send_flows(&pair.agent, victim, 10, 30, 1000);
    let small = send_flows(&pair.agent, quiet, 10, 1, 10);

    let seen = consume(&pair.agent, Duration::from_secs(30), |s| {
        s.packets(Ipv4Addr::new(10, 10, 0, 9)) >= 300_000
            && s.packets(Ipv4Addr::new(10, 10, 0, 20)) >= 100
            && s.attacks.iter().any(|a| a["event"] == "updated")
            && !s.mitigations.is_empty()
            && s.flows.len() >= 31
    });
    assert_eq!(seen.packets(victim), flood, "{seen:?}\n{}", agent.log());
    assert_eq!(seen.packets(quiet), small, "{seen:?}");
    assert!(seen.bad_keys.is_empty(), "{:?}", seen.bad_keys);
    // 310 records (300 of the flood, 10 of the quiet host): every tenth, keyed by destination.
    assert_eq!(seen.flows.len(), 31, "{:?}", seen.flows);
    for f in &seen.flows {
        assert_eq!(
            (&f["source"], &f["sample_rate"]),
            (&"netflow".into(), &10.into()),
            "{f}"
        );
        assert_eq!(f["src_port"], 123, "{f}");
    }
    let started = seen
        .attacks
        .iter()
        .find(|a| a["event"] == "started")
        .unwrap_or_else(|| panic!("no started event: {seen:?}"));
    assert_eq!(started["host"], victim.to_string());
    assert_eq!(started["agent"], "site-a");
    assert_eq!(started["attack"]["threshold"]["rate"], "pps", "{started}");
    let id = started["attack_id"].as_str().unwrap();
    assert_eq!(agent.get("/api/v1/attacks").unwrap()[0]["id"], id);
    let applied = &seen.mitigations[0];
    assert_eq!(applied["event"], "applied", "{applied}");
    assert_eq!(applied["mitigation"]["id"], id, "{applied}");
    assert_eq!(applied["mitigation"]["host"], victim.to_string());

    let status = export_status(&agent);
    assert_eq!(status["connected"], true, "{status}");
    for (reason, n) in status["dropped"].as_object().unwrap() {
        assert_eq!(n, 0, "dropped as {reason}: {status}");
    }
    let metrics = agent.metrics_text();
    assert!(
        metrics.contains("fnm_export_connected{sink=\"kafka\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fnm_export_dropped_total{sink=\"kafka\",reason=\"queue_full\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_broker_away_and_back_never_holds_up_detection() {
    require_root("Kafka export end-to-end tests");
    let pair = NetnsPair::new(151);
    let dir = tempfile::tempdir().unwrap();
    // No broker yet. Undelivered messages are dropped after 2 s.
    let agent = AgentProcess::start(
        &pair.agent,
        &config(
            &script(dir.path()),
            "message_timeout = \"2s\"\nqueue_max_messages = 1000\n",
        ),
    );
    let attacks = |agent: &AgentProcess| agent.get("/api/v1/attacks").unwrap();

    // 1. Broker never seen: the flood is detected as fast as ever, the messages are dropped.
    let t = Instant::now();
    send_flows(&pair.agent, Ipv4Addr::new(10, 10, 0, 1), 10, 30, 1000);
    assert_eq!(attacks(&agent)[0]["host"], "10.10.0.1", "{}", agent.log());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the API answered late"
    );
    assert_eq!(export_status(&agent)["connected"], false);
    wait_until(
        "messages for a missing broker are counted as dropped",
        Duration::from_secs(15),
        || {
            export_status(&agent)["dropped"]["delivery"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
        || agent.log(),
    );

    // 2. The broker comes: export starts on its own and is exact from then on.
    let broker = Broker::start(Some(&pair.agent), 9092);
    wait_until(
        "the agent connects to the broker that came",
        Duration::from_secs(30),
        || export_status(&agent)["connected"] == true,
        || agent.log(),
    );
    let sent = send_flows(&pair.agent, Ipv4Addr::new(10, 10, 0, 2), 5, 1, 10);
    let seen = consume(&pair.agent, Duration::from_secs(20), |s| {
        s.packets(Ipv4Addr::new(10, 10, 0, 2)) >= 50
    });
    assert_eq!(seen.packets(Ipv4Addr::new(10, 10, 0, 2)), sent, "{seen:?}");

    // 3. The broker dies under traffic: detection goes on, nothing blocks.
    drop(broker);
    let t = Instant::now();
    send_flows(&pair.agent, Ipv4Addr::new(10, 10, 0, 3), 10, 30, 1000);
    let list = attacks(&agent);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["host"] == "10.10.0.3"),
        "{list:#}\n{}",
        agent.log()
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the API answered late"
    );
    wait_until(
        "the agent sees the broker gone",
        Duration::from_secs(15),
        || export_status(&agent)["connected"] == false,
        || agent.log(),
    );

    // 4. Back again (a new, empty broker): export resumes without a restart.
    let _broker = Broker::start(Some(&pair.agent), 9092);
    wait_until(
        "the agent reconnects",
        Duration::from_secs(30),
        || export_status(&agent)["connected"] == true,
        || agent.log(),
    );
    let sent = send_flows(&pair.agent, Ipv4Addr::new(10, 10, 0, 4), 5, 1, 10);
    let seen = consume(&pair.agent, Duration::from_secs(20), |s| {
        s.packets(Ipv4Addr::new(10, 10, 0, 4)) >= 50
    });
    assert_eq!(seen.packets(Ipv4Addr::new(10, 10, 0, 4)), sent, "{seen:?}");
    assert!(
        agent.get("/api/v1/status").is_ok(),
        "the agent is still up:\n{}",
        agent.log()
    );
}
