//! The alert rules and the Grafana dashboard against a real agent and a real Prometheus
//! (namespaces, root):
//! - `promtool check rules` and `promtool test rules` pass on deploy/prometheus/;
//! - the dashboard is valid JSON and every metric it or the rules query exists in the agent's
//!   /metrics;
//! - with the agent under a real flood (XDP) whose webhook action cannot reach its server, and
//!   a few sFlow datagrams, a Prometheus scraping it and loading the rules: every dashboard
//!   panel returns data, FnmAttackStarted and FnmMitigationActionFailed fire, FnmAttackInProgress
//!   is pending, the other alerts evaluate and stay quiet, and FnmAgentDown turns pending once
//!   the agent stops.
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, netns::NetnsPair, require_root};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool() {
    promtool(&["check", "rules", "fnm-alerts.yml"]);
    promtool(&["test", "rules", "fnm-alerts.test.yml"]);
}

/// Every `(panel title, [expr])` of the dashboard.
fn dashboard_panels() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(deploy("grafana/fnm-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "fnm-agent");
    dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let exprs: Vec<String> = p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(|t| t["expr"].as_str().expect("expr").to_owned())
                .collect();
            assert!(!exprs.is_empty(), "panel {} has no query", p["title"]);
            (p["title"].as_str().unwrap().to_owned(), exprs)
        })
        .collect()
}

/// Every alert `(name, expr)` of the rules file.
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("prometheus/fnm-alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l.strip_prefix("- alert: ") {
            name = Some(n.to_owned());
        } else if let Some(e) = l.strip_prefix("expr: ") {
            out.push((name.take().expect("alert before expr"), e.to_owned()));
        }
    }
    assert!(out.len() >= 8, "{out:?}");
    out
}

/// The metric names an expression reads (`fnm_*`, and `up`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if expr[i..].starts_with("fnm_")
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| i + e);
            names.insert(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Queries Prometheus (in `ns`) with `expr`; the result vector.
fn query(ns: &str, prom: SocketAddr, expr: &str) -> Vec<Value> {
    let path = format!(
        "/api/v1/query?query={}",
        fnm_agent::client::encode_segment(expr)
    );
    let answer = NetnsPair::in_ns(ns, move || {
        fnm_agent::client::request(prom, "GET", &path, None).map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("query {expr}: {e}"));
    assert_eq!(answer["status"], "success", "{expr}: {answer:#}");
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn alerts(ns: &str, prom: SocketAddr) -> Vec<Value> {
    let answer = NetnsPair::in_ns(ns, move || {
        fnm_agent::client::request(prom, "GET", "/api/v1/alerts", None).ok()
    });
    answer
        .and_then(|a| a["data"]["alerts"].as_array().cloned())
        .unwrap_or_default()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            None => return,
            Some(why) => last = why,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: {last}");
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_panel_and_alert_works_against_a_real_agent_and_prometheus() {
    require_root("monitoring end-to-end test");
    let pair = NetnsPair::new(143);
    let IpAddr::V4(victim) = pair.agent_v4 else {
        unreachable!()
    };
    // The webhook's server is not there: the action fails and is retried.
    let config = format!(
        "networks = [\"{}/32\", \"10.143.9.0/24\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [sflow]\nlisten = [\"127.0.0.1:6343\"]\n[netflow]\nlisten = []\n\
         [detection.incoming]\npps = 2000\n\
         [ban]\nactions = [\"xdp_rule\", \"webhook\"]\n\
         [webhook]\nurl = \"http://127.0.0.1:9/fnm\"\ntimeout = \"1s\"\n",
        pair.agent_v4, pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &config);

    let metrics = agent.metrics_text();
    let panels = dashboard_panels();
    let rules = alert_rules();
    for line in [
        "fnm_attacks_active{direction=\"incoming\",type=\"dns_amplification\"} 0",
        "fnm_attacks_total{direction=\"outgoing\",type=\"syn_flood\"} 0",
        "fnm_mitigations_active{action=\"xdp_rule\",origin=\"detection\"} 0",
        "fnm_mitigation_actions_failing{action=\"webhook\"} 0",
    ] {
        assert!(
            metrics.contains(line),
            "{line} missing before any attack:\n{metrics}"
        );
    }

    // A real Prometheus scraping the agent every second and evaluating the rules.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: fnm\n    static_configs:\n      - targets: ['{}']\n",
            deploy("prometheus/fnm-alerts.yml").display(),
            agent.metrics
        ),
    )
    .unwrap();
    let prom: SocketAddr = "127.0.0.1:19090".parse().unwrap();
    let _prometheus = Killed(
        Command::new("ip")
            .args(["netns", "exec", &pair.agent, "prometheus"])
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package) must be installed"),
    );
    let ns = pair.agent.clone();
    wait_until("Prometheus scrapes the agent", 60, || {
        let up = NetnsPair::in_ns(&ns, move || {
            fnm_agent::client::request(
                prom,
                "GET",
                "/api/v1/query?query=up%7Bjob%3D%22fnm%22%7D",
                None,
            )
            .ok()
        });
        match up
            .as_ref()
            .and_then(|v| v["data"]["result"][0]["value"][1].as_str())
        {
            Some("1") => None,
            other => Some(format!("up = {other:?}")),
        }
    });

    // A flood (XDP) and a little sFlow (for the flow collector's series).
    let stop = Arc::new(AtomicBool::new(false));
    let flood = common::flood::udp_flood(
        &pair.peer,
        SocketAddrV4::new(victim, 9999),
        5000.0,
        stop.clone(),
    );
    let sflow_stop = stop.clone();
    let sflow = std::thread::spawn({
        let ns = pair.agent.clone();
        move || {
            NetnsPair::in_ns(&ns, move || {
                common::flood::sflow_flood(
                    "127.0.0.1:6343".parse().unwrap(),
                    Ipv4Addr::new(198, 51, 100, 9),
                    SocketAddrV4::new(Ipv4Addr::new(10, 143, 9, 9), 53),
                    200.0,
                    10,
                    sflow_stop,
                )
                .join()
                .unwrap()
            })
        }
    });

    let firing = |name: &'static str, label: (&'static str, &'static str)| {
        let ns = pair.agent.clone();
        move || {
            let all = alerts(&ns, prom);
            let found = all
                .iter()
                .find(|a| a["labels"]["alertname"] == name && a["labels"][label.0] == label.1);
            match found.map(|a| a["state"].as_str().unwrap_or("")) {
                Some("firing") => None,
                other => Some(format!("{name} is {other:?}; alerts: {all:#?}")),
            }
        }
    };
    wait_until(
        "FnmAttackStarted fires",
        60,
        firing("FnmAttackStarted", ("type", "dns_amplification")),
    );
    wait_until(
        "FnmMitigationActionFailed fires for the webhook",
        60,
        firing("FnmMitigationActionFailed", ("action", "webhook")),
    );
    let all = alerts(&pair.agent, prom);
    assert!(
        all.iter()
            .any(|a| a["labels"]["alertname"] == "FnmAttackInProgress" && a["state"] == "pending"),
        "FnmAttackInProgress is pending (for: 5m): {all:#?}"
    );

    // Every panel returns data, every rule evaluates.
    let ns = pair.agent.clone();
    wait_until("every dashboard panel returns data", 30, || {
        for (title, exprs) in &panels {
            let has_data = exprs.iter().any(|e| {
                let e = e.replace("$job", "fnm").replace("$instance", ".*");
                !query(&ns, prom, &e).is_empty()
            });
            if !has_data {
                return Some(format!("panel {title:?} ({exprs:?}) returns nothing"));
            }
        }
        None
    });
    let quiet = [
        "FnmAgentDown",
        "FnmCollectorDroppingDatagrams",
        "FnmSourceDroppingRecords",
        "FnmXdpHostTableFull",
        "FnmHostTableFull",
        "FnmAutoBansCapped",
    ];
    for (name, expr) in &rules {
        let result = query(&pair.agent, prom, expr);
        if quiet.contains(&name.as_str()) {
            assert!(
                result.is_empty(),
                "{name} ({expr}) should be quiet: {result:#?}"
            );
        } else {
            assert!(!result.is_empty(), "{name} ({expr}) should return data");
        }
    }
    // Every metric the dashboard and the rules read is one the agent exports (with traffic,
    // attacks and a failing action in the books, every family but the conditional ones has
    // series by now).
    let metrics = agent.metrics_text();
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Families that have series only once what they count happened.
    let conditional = [
        // A datagram from outside allowed_exporters.
        "fnm_flow_datagrams_dropped_total",
        // Hostgroups configured (this agent has none; the panel shows its networks).
        "fnm_hostgroup_packets_per_second",
        "fnm_hostgroup_bytes_per_second",
    ];
    for expr in panels
        .iter()
        .flat_map(|(_, e)| e.iter())
        .chain(rules.iter().map(|(_, e)| e))
    {
        for name in metric_names(expr) {
            let family = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                exported.contains(family) || conditional.contains(&family),
                "{name} (in {expr}) is not exported by the agent:\n{metrics}"
            );
        }
    }
    let m = agent.metrics_text();
    assert!(
        m.contains("fnm_attacks_total{direction=\"incoming\",type=\"dns_amplification\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("fnm_mitigations_active{action=\"xdp_rule\",origin=\"detection\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("fnm_mitigation_actions_failing{action=\"webhook\"} 1"),
        "{m}"
    );

    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    sflow.join().unwrap();

    // The agent goes away: FnmAgentDown's expression turns true (pending for its minute).
    drop(agent);
    wait_until("FnmAgentDown is pending once the agent is gone", 30, || {
        let all = alerts(&pair.agent, prom);
        if all
            .iter()
            .any(|a| a["labels"]["alertname"] == "FnmAgentDown" && a["state"] == "pending")
        {
            None
        } else {
            Some(format!("{all:#?}"))
        }
    });
}
