//! Per-network and per-hostgroup traffic counters against a real agent (XDP in a namespace)
//! under a real paced UDP flood (root): `GET /api/v1/networks` and the `fnm_network_*` /
//! `fnm_hostgroup_*` metrics show the flood's rate on the network and hostgroup of its victim,
//! their packet totals equal what was sent, and the rows stay within
//! `accounting.max_network_counters` (the rest counted under `other`).
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, netns::NetnsPair, require_root};
use std::{
    net::{IpAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const FLOOD_PPS: f64 = 4000.0;

/// The value of `series` (name and labels exactly as exported) in a scrape.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Series of a family in a scrape.
fn series_of<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    let with_labels = format!("{family}{{");
    text.lines()
        .filter(|l| l.starts_with(&with_labels))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn network_and_hostgroup_rates_match_the_flood_and_stay_bounded() {
    require_root("per-network counters end-to-end test");
    let pair = NetnsPair::new(77);
    let IpAddr::V4(victim) = pair.agent_v4 else {
        unreachable!()
    };
    let net = "10.77.0.0/24";
    // Three networks for two rows: the third (never sent to) is counted under `other`.
    let body = format!(
        "networks = [\"{net}\", \"192.0.2.0/24\", \"198.51.100.0/24\"]\n\
         [accounting]\nmax_network_counters = 2\n\
         [xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [[hostgroup]]\nname = \"lab\"\nnetworks = [\"{victim}/32\"]\n",
        pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &body);

    let stop = Arc::new(AtomicBool::new(false));
    let flood = common::flood::udp_flood(
        &pair.peer,
        SocketAddrV4::new(victim, 9999),
        FLOOD_PPS,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));
    // Samples of the rate while the flood runs: API and metrics.
    let (mut api_pps, mut metric_pps, mut group_pps) = (Vec::new(), Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let v = agent.get("/api/v1/networks").expect("GET /api/v1/networks");
        let rows = v["networks"].as_array().expect("networks");
        let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, [net, "192.0.2.0/24", "other"], "{v}");
        api_pps.push(rows[0]["incoming"]["pps"].as_f64().unwrap());
        assert_eq!(rows[1]["incoming"]["packets"], 0, "{v}");
        assert_eq!(rows[2]["incoming"]["packets"], 0, "{v}");
        assert_eq!(v["hostgroups"][0]["name"], "lab");

        let text = agent.metrics_text();
        let net_pps = metric(
            &text,
            &format!("fnm_network_packets_per_second{{network=\"{net}\",direction=\"incoming\"}}"),
        )
        .expect("network series");
        // The one host of the network: its rate is the network's, in the same snapshot.
        let host_pps = metric(
            &text,
            &format!("fnm_host_packets_per_second{{host=\"{victim}\",direction=\"incoming\"}}"),
        )
        .expect("host series");
        assert_eq!(net_pps, host_pps, "network = its only host");
        let lab = metric(
            &text,
            "fnm_hostgroup_packets_per_second{hostgroup=\"lab\",direction=\"incoming\"}",
        )
        .expect("hostgroup series");
        assert_eq!(lab, net_pps);
        let bps = metric(
            &text,
            &format!("fnm_network_bytes_per_second{{network=\"{net}\",direction=\"incoming\"}}"),
        )
        .unwrap();
        // 400 bytes of payload + 8 UDP + 20 IP per packet.
        if net_pps > 0.0 {
            assert!((bps / net_pps - 428.0).abs() < 0.5, "{bps} / {net_pps}");
        }
        metric_pps.push(net_pps);
        group_pps.push(lab);
        // Bounded: 3 rows × 2 directions per network family, 1 × 2 per hostgroup family.
        assert_eq!(series_of(&text, "fnm_network_packets_per_second").len(), 6);
        assert_eq!(
            series_of(&text, "fnm_hostgroup_packets_per_second").len(),
            2
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    let report = flood.join().expect("flood");
    let sent_pps = report.achieved_pps();
    for (what, samples) in [("api", api_pps), ("metrics", metric_pps)] {
        let m = median(samples.clone());
        println!(
            "{what}: median {m:.0} pps over {} samples, {sent_pps:.0} pps sent",
            samples.len()
        );
        assert!(
            (m / sent_pps - 1.0).abs() < 0.05,
            "{what}: median {m:.0} pps vs {sent_pps:.0} sent: {samples:?}"
        );
    }

    // Every packet sent is in the network's total (XDP counts them exactly).
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = loop {
        let v = agent.get("/api/v1/networks").unwrap();
        let packets = v["networks"][0]["incoming"]["packets"].as_u64().unwrap();
        let pps = v["networks"][0]["incoming"]["pps"].as_f64().unwrap();
        if (packets >= report.packets && pps == 0.0) || Instant::now() > deadline {
            assert_eq!(v["hostgroups"][0]["incoming"]["packets"], packets);
            break packets;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(total, report.packets, "network total vs packets sent");
    println!("network total {total} packets = {} sent", report.packets);

    // The CLI's `networks` shows the same rows: a table in human units, and the API's JSON.
    let table = agent.cli(&["networks"]);
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "incoming traffic", "{table}");
    assert!(
        lines[1].starts_with("KIND") && lines[1].contains("PACKETS"),
        "{table}"
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row {name}: {table}"))
            .to_string()
    };
    assert!(row(net).starts_with("network"), "{table}");
    assert!(row("other").starts_with("network"), "{table}");
    assert!(row("lab").starts_with("hostgroup"), "{table}");
    // ... PACKETS BYTES: the flood's packets (in k), then bytes with their unit.
    let packets_cell = |name: &str| {
        let cells: Vec<String> = row(name).split_whitespace().map(str::to_owned).collect();
        cells[cells.len() - 3].clone()
    };
    assert!(packets_cell(net).ends_with('k'), "packets {total}: {table}");
    assert_eq!(packets_cell("other"), "0", "{table}");
    let out = agent.cli(&["networks", "--direction", "outgoing"]);
    assert!(out.starts_with("outgoing traffic\n"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&agent.cli(&["networks", "--json"])).expect("networks --json");
    assert_eq!(json["networks"][0]["name"], net);
    assert_eq!(json["networks"][0]["incoming"]["packets"], total);
    assert_eq!(json["hostgroups"][0]["name"], "lab");
    assert_eq!(json["hostgroups"][0]["incoming"]["packets"], total);
    let text = agent.metrics_text();
    assert_eq!(
        metric(
            &text,
            &format!("fnm_network_packets_total{{network=\"{net}\",direction=\"incoming\"}}")
        ),
        Some(report.packets as f64)
    );
}
