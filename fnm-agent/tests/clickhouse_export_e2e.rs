//! ClickHouse history end to end: the real agent (NetFlow on loopback) writes to a real
//! ClickHouse server (Debian's clickhouse-server 18.16, private config and ports) through
//! `[export.clickhouse]`, and the documented queries of docs/clickhouse/README.md are run
//! against what it wrote.
//!
//! - Every packet the exporter reported is in `hosts` (and the rollup), exactly; every flow
//!   record in `flows`; the attack and its mitigation in `attacks` and `mitigations`;
//!   partitions older than the retention are dropped at start.
//! - A ClickHouse that is not there yet, goes away and comes back never holds up detection:
//!   rows wait (none lost while the buffer holds them), overflow is counted, and the sink
//!   resumes on its own.
#![cfg(target_os = "linux")]

mod common;

use common::{
    clickhouse::ClickHouse, loopback_agent::LoopbackAgent, netflow::netflow_v5, wait_until,
};
use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The host the documented queries name.
const DOC_HOST: &str = "'192.0.2.10'";

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
}

/// Sends `datagrams` datagrams of `records` × `packets` towards `dst`, `gap` apart; returns
/// the packets reported.
fn send_flows(
    port: u16,
    dst: Ipv4Addr,
    datagrams: u32,
    records: u8,
    packets: u32,
    gap: Duration,
) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..datagrams {
        let d = netflow_v5(i * 30, 10_000 + i * 200, dst, records, packets);
        s.send_to(&d, ("127.0.0.1", port)).unwrap();
        std::thread::sleep(gap);
    }
    u64::from(datagrams) * u64::from(records) * u64::from(packets)
}

fn config(netflow: u16, clickhouse: &str, extra: &str) -> String {
    format!(
        "networks = [\"10.10.0.0/16\"]\n[xdp]\nenabled = false\n\
         [sflow]\nlisten = []\n[netflow]\nlisten = [\"127.0.0.1:{netflow}\"]\n\
         [detection.incoming]\npps = 20000\n\
         [ban]\nactions = [\"script\"]\nscript = \"/bin/true\"\n\
         [export]\nagent_id = \"site-a\"\nattack_update_interval = \"1s\"\n{extra}\n\
         [export.clickhouse]\nurl = \"{clickhouse}\"\nflush_interval = \"300ms\"\n"
    )
}

/// The `sql` blocks of docs/clickhouse/README.md, in order.
fn documented_queries() -> Vec<String> {
    let path = format!(
        "{}/../docs/clickhouse/README.md",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut queries = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(q), "```") => {
                queries.push(std::mem::take(q));
                current = None;
            }
            (Some(q), _) => {
                q.push_str(line);
                q.push('\n');
            }
            _ => {}
        }
    }
    queries
}

fn export_status(agent: &LoopbackAgent) -> serde_json::Value {
    agent.get("/api/v1/status").unwrap()["export"]["clickhouse"].clone()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn history_lands_exactly_and_the_documented_queries_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ch = ClickHouse::start(dir.path());
    // The shipped schema, made by hand as an operator would, with rows older than the
    // retention (10 days; 500 days for an attack) and some within it (2 days).
    ch.query_in("default", "CREATE DATABASE fnm").unwrap();
    for statement in fnm_agent::export::clickhouse::schema::statements() {
        ch.query(&statement).unwrap();
    }
    let day = 86_400_000;
    for (table, age_ms, host) in [
        ("hosts", 10 * day, "10.10.9.1"),
        ("hosts", 2 * day, "10.10.9.2"),
        ("attacks", 500 * day, "10.10.9.3"),
    ] {
        let column = if table == "hosts" {
            "end_unix_ms"
        } else {
            "unix_ms"
        };
        ch.query(&format!(
            "INSERT INTO {table} ({column}, agent, host, direction) VALUES ({}, 'old', '{host}', 'incoming')",
            now_ms() - age_ms
        ))
        .unwrap();
    }

    let netflow = free_udp_port();
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = LoopbackAgent::start(
        agent_dir.path(),
        &config(netflow, &ch.url(), "flow_sample_rate = 1"),
    );
    let log = || format!("{}\n--- clickhouse:\n{}", agent.log(), ch.log());
    wait_until(
        "the old partitions dropped at start",
        Duration::from_secs(20),
        || ch.number("SELECT count() FROM hosts WHERE agent = 'old'") == 1.0,
        log,
    );
    assert_eq!(
        ch.number("SELECT count() FROM attacks WHERE agent = 'old'"),
        0.0
    );
    assert_eq!(
        ch.query("SELECT host FROM hosts WHERE agent = 'old'")
            .unwrap(),
        "10.10.9.2\n",
        "the 2-day-old partition stays"
    );

    // 300 000 packets in 2 s from 30 sources (150 kpps, over the 20 kpps threshold); then
    // 20 000 more from the first two sources, and 100 packets towards a quiet host.
    let victim = Ipv4Addr::new(10, 10, 0, 9);
    let quiet = Ipv4Addr::new(10, 10, 0, 20);
    let sent_at = Instant::now();
    let gap = Duration::from_millis(200);
    let flood = send_flows(netflow, victim, 10, 30, 1000, gap)
        + send_flows(netflow, victim, 10, 2, 1000, gap);
    let small = send_flows(netflow, quiet, 10, 1, 10, gap);
    let packets_of = |host: Ipv4Addr| {
        ch.number(&format!(
            "SELECT sum(packets) FROM hosts WHERE host = '{host}' AND direction = 'incoming'"
        )) as u64
    };
    wait_until(
        "every packet in hosts",
        Duration::from_secs(30),
        || packets_of(victim) == flood && packets_of(quiet) == small,
        log,
    );
    let landed = sent_at.elapsed();
    wait_until(
        "the attack and its mitigation in their tables",
        Duration::from_secs(30),
        || {
            ch.number("SELECT count() FROM attacks WHERE event = 'updated'") >= 1.0
                && ch.number("SELECT count() FROM mitigations WHERE event = 'applied'") == 1.0
        },
        log,
    );
    assert_eq!(packets_of(victim), flood, "exactly, no slot twice");
    assert_eq!(
        ch.number(&format!(
            "SELECT sum(packets) FROM hosts_1m WHERE host = '{victim}'"
        )) as u64,
        flood,
        "the rollup holds the same"
    );
    assert_eq!(
        ch.number(&format!(
            "SELECT sum(packets * sample_rate) FROM flows WHERE dst = '{victim}'"
        )) as u64,
        flood,
        "every flow record (sample rate 1)"
    );
    let attack_id = agent.attacks()[0]["id"].as_str().unwrap().to_owned();
    let started = ch
        .query("SELECT attack_id, host, direction, attack_type, rate, threshold, agent FROM attacks WHERE event = 'started' FORMAT TSV")
        .unwrap();
    assert_eq!(
        started,
        format!("{attack_id}\t{victim}\tincoming\tntp_amplification\tpps\t20000\tsite-a\n")
    );
    let mitigation = ch
        .query("SELECT mitigation_id, host, prefix FROM mitigations FORMAT TSV")
        .unwrap();
    assert_eq!(mitigation, format!("{attack_id}\t{victim}\t{victim}/32\n"));

    // The documented queries, on the victim.
    let queries = documented_queries();
    assert_eq!(queries.len(), 5, "{queries:?}");
    let run = |i: usize| {
        let sql = queries[i].replace(DOC_HOST, &format!("'{victim}'"));
        ch.query(&format!("{sql} FORMAT TSV"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    let talkers: Vec<Vec<String>> = run(0)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(talkers.len(), 10, "{talkers:?}");
    assert_eq!(
        (
            &talkers[0][0],
            &talkers[0][1],
            &talkers[1][0],
            &talkers[1][1],
            &talkers[2][1]
        ),
        (
            &"198.51.100.1".into(),
            &"20000".into(),
            &"198.51.100.2".into(),
            &"20000".into(),
            &"10000".into()
        ),
        "{talkers:?}"
    );
    let busiest = run(1);
    assert!(
        busiest.starts_with(&format!("{victim}\tincoming\t{flood}\t{}\n", flood * 468)),
        "{busiest}"
    );
    let seconds = run(2);
    let pps_sum: u64 = seconds
        .lines()
        .map(|l| l.split('\t').nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(pps_sum, flood, "{seconds}");
    let peak = seconds
        .lines()
        .map(|l| l.split('\t').nth(2).unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(
        (120_000..=180_000).contains(&peak),
        "about 150 kpps in its busiest second: {seconds}"
    );
    let minutes = run(3);
    assert!(!minutes.is_empty(), "{minutes}");
    let history = run(4);
    let row: Vec<&str> = history.lines().next().unwrap().split('\t').collect();
    assert_eq!(history.lines().count(), 1, "{history}");
    assert_eq!(
        (row[0], row[1], row[5], row[6]),
        (
            attack_id.as_str(),
            victim.to_string().as_str(),
            "ntp_amplification",
            "pps"
        ),
        "{history}"
    );

    let status = export_status(&agent);
    assert_eq!(status["connected"], true, "{status}");
    for (reason, n) in status["dropped"].as_object().unwrap() {
        assert_eq!(n, 0, "dropped as {reason}: {status}");
    }
    assert_eq!(status["in_flight"], 0, "{status}");
    let connected = agent.metric("fnm_export_connected{sink=\"clickhouse\"}");
    assert_eq!(connected, Some(1.0));
    eprintln!("rows of the flood all in ClickHouse {landed:?} after its first datagram");
}

#[test]
fn clickhouse_away_and_back_never_holds_up_detection() {
    let dir = tempfile::tempdir().unwrap();
    let mut ch = ClickHouse::prepare(dir.path());
    let netflow = free_udp_port();
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = LoopbackAgent::start(
        agent_dir.path(),
        &format!(
            "{}max_buffered_rows = 40\nbatch_rows = 40\n",
            config(netflow, &ch.url(), "")
        ),
    );
    let gap = Duration::from_millis(200);

    // 1. No ClickHouse yet: the flood is detected as fast as ever; its rows wait.
    let victim = Ipv4Addr::new(10, 10, 0, 1);
    let t = Instant::now();
    let flood = send_flows(netflow, victim, 10, 30, 1000, gap);
    wait_until(
        "the attack detected with ClickHouse away",
        Duration::from_secs(5),
        || !agent.attacks().is_empty(),
        || agent.log(),
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "detection held up: {:?}",
        t.elapsed()
    );
    let status = export_status(&agent);
    assert_eq!(status["connected"], false, "{status}");
    assert!(status["in_flight"].as_u64().unwrap() > 0, "{status}");

    // 2. ClickHouse comes: the sink creates the schema and every waiting row lands.
    ch.restart();
    let packets = || {
        ch.number(&format!(
            "SELECT sum(packets) FROM hosts WHERE host = '{victim}'"
        )) as u64
    };
    wait_until(
        "the waiting rows stored once ClickHouse is there",
        Duration::from_secs(40),
        || packets() == flood,
        || agent.log(),
    );
    assert_eq!(export_status(&agent)["dropped"]["queue_full"], 0);

    // 3. ClickHouse goes away under traffic to many hosts: more rows than the buffer holds;
    // the overflow is counted, detection goes on, and the sink resumes after a restart.
    ch.stop();
    let spread = std::thread::spawn(move || {
        for i in 0..60u8 {
            send_flows(
                netflow,
                Ipv4Addr::new(10, 10, 1, i),
                1,
                1,
                10,
                Duration::ZERO,
            );
        }
    });
    let second = Ipv4Addr::new(10, 10, 0, 2);
    send_flows(netflow, second, 10, 30, 1000, gap);
    spread.join().unwrap();
    wait_until(
        "the second flood detected with ClickHouse down",
        Duration::from_secs(5),
        || {
            agent
                .attacks()
                .iter()
                .any(|a| a["host"] == second.to_string())
        },
        || agent.log(),
    );
    wait_until(
        "overflow counted",
        Duration::from_secs(10),
        || {
            export_status(&agent)["dropped"]["queue_full"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
        || agent.log(),
    );
    let status = export_status(&agent);
    assert_eq!(status["connected"], false, "{status}");
    assert!(
        status["in_flight"].as_u64().unwrap() <= 40,
        "bounded: {status}"
    );
    ch.restart();
    wait_until(
        "the sink reconnected and stored the rows it kept",
        Duration::from_secs(60),
        || {
            let s = export_status(&agent);
            s["connected"] == true && s["in_flight"] == 0
        },
        || agent.log(),
    );
    assert!(
        ch.number(&format!(
            "SELECT count() FROM hosts WHERE host = '{second}'"
        )) > 0.0
            || ch.number("SELECT count() FROM hosts WHERE host LIKE '10.10.1.%'") > 0.0,
        "rows kept through the outage are stored"
    );
}
