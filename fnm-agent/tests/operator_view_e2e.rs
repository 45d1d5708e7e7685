//! The operator's view against a real agent under a real flood, in network namespaces (root):
//! - `fnm-agent top` in a real terminal (tmux): the pane shows the victim with its rate and the
//!   attack, keys switch direction and sort, `q` quits and gives the terminal back;
//! - the listing commands' tables (headers, human units, empty listings say so) and their
//!   `--json` parsed back; `--api` as host:port, name and URL; `thresholds IP` in and out of
//!   `networks`; one attack reports one rate (log, record, crossing).
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, netns::NetnsPair, require_root};
use serde_json::Value;
use std::{
    net::{IpAddr, SocketAddrV4},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The flood's rate and the threshold it crosses.
const FLOOD_PPS: f64 = 5000.0;
const THRESHOLD_PPS: u32 = 2000;

fn config(pair: &NetnsPair, actions: &str) -> String {
    format!(
        "networks = [\"{}/32\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [detection.incoming]\npps = {THRESHOLD_PPS}\n\
         [ban]\nactions = [{actions}]\n",
        pair.agent_v4, pair.veth_agent
    )
}

/// A UDP flood from the peer namespace to the agent's address, stopped on drop.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<common::flood::FloodReport>>,
}

impl Flood {
    fn start(pair: &NetnsPair) -> Self {
        let IpAddr::V4(victim) = pair.agent_v4 else {
            unreachable!()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = common::flood::udp_flood(
            &pair.peer,
            SocketAddrV4::new(victim, 9999),
            FLOOD_PPS,
            stop.clone(),
        );
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits for the attack on the agent's address; returns its record.
fn wait_for_attack(agent: &AgentProcess) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Value::Array(list)) = agent.get("/api/v1/attacks") {
            if let Some(a) = list.into_iter().find(|a| a["ended_unix_ms"].is_null()) {
                return a;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no attack detected:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A tmux server of its own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str) -> Self {
        let socket = format!("fnm-{tag}-{}", std::process::id());
        Self { socket }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (Debian package tmux) must be installed: cargo xtask setup --test-peers");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Waits until the pane shows every one of `wanted`; returns the screen.
    fn wait_for(&self, wanted: &[&str], what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if wanted.iter().all(|w| screen.contains(w)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the pane never showed {wanted:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "top", keys]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn top_shows_the_flood_live_in_a_real_terminal_and_quits_cleanly() {
    require_root("operator view end-to-end tests");
    let pair = NetnsPair::new(141);
    let agent = AgentProcess::start(&pair.agent, &config(&pair, "\"xdp_rule\""));
    let tmux = Tmux::new("top");
    let victim = pair.agent_v4.to_string();
    let command = format!(
        "ip netns exec {} {} top --api {} --interval 0.5; echo TOP-EXITED-$?; sleep 60",
        pair.agent,
        common::agent::binary(),
        agent.api
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "40",
        &command,
    ]);
    tmux.wait_for(
        &[
            "fnm-agent top",
            "Top hosts: incoming (sorted by packets/s)",
            "no active attacks",
        ],
        "before the flood",
    );
    assert_eq!(
        tmux.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"])
            .trim(),
        "1",
        "top runs on the alternate screen"
    );

    let flood = Flood::start(&pair);
    let screen = tmux.wait_for(
        &[
            &victim,
            "ACTIVE ATTACK",
            "dns_amplification",
            "Mbit/s",
            "xdp_rule",
        ],
        "during the flood",
    );
    eprintln!("top during the flood:\n{screen}");
    // The victim's line: its packet rate in thousands near the flood's (once the one-second
    // window is full of flood; the attack opens as soon as the rate crosses 2,000), and its bit
    // rate.
    let host_pps = |screen: &str| -> Option<f64> {
        let line = screen
            .lines()
            .find(|l| l.contains(&victim) && l.contains("Mbit/s") && !l.contains("peak"))?;
        line.split_whitespace()
            .find_map(|w| w.strip_suffix('k').and_then(|n| n.parse().ok()))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let screen = loop {
        let screen = tmux.screen();
        if host_pps(&screen).is_some_and(|p| (4.0..=6.0).contains(&p)) {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "the host line never showed about {FLOOD_PPS} pps:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // The sources' health: the XDP poller hands over records.
    assert!(
        screen
            .lines()
            .any(|l| l.contains("xdp ") && l.contains("rec/s")),
        "{screen}"
    );

    tmux.keys("o");
    tmux.wait_for(&["Top hosts: outgoing (sorted by packets/s)"], "after o");
    tmux.keys("b");
    tmux.wait_for(&["Top hosts: outgoing (sorted by bits/s)"], "after b");
    tmux.keys("Tab");
    let screen = tmux.wait_for(&["Top hosts: incoming (sorted by bits/s)"], "after Tab");
    assert!(screen.contains(&victim), "{screen}");
    tmux.keys("f");
    tmux.wait_for(&["(sorted by flows/s)"], "after f");

    tmux.keys("q");
    let screen = tmux.wait_for(&["TOP-EXITED-0"], "after q");
    assert!(
        !screen.contains("Top hosts"),
        "the main screen is back after quitting:\n{screen}"
    );
    assert_eq!(
        tmux.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"])
            .trim(),
        "0",
        "the alternate screen is left"
    );
    drop(flood);
}

/// Runs `fnm-agent ARGS` in the agent's namespace: (exit success, stdout, stderr).
fn cli_raw(agent: &AgentProcess, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &agent.ns, common::agent::binary()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn listings_are_readable_tables_and_json_reads_back() {
    require_root("operator view end-to-end tests");
    let pair = NetnsPair::new(142);
    let agent = AgentProcess::start(&pair.agent, &config(&pair, "\"xdp_rule\""));
    let victim = pair.agent_v4.to_string();

    // Empty listings say so.
    assert_eq!(agent.cli(&["attacks"]), "no attacks recorded\n");
    assert_eq!(agent.cli(&["attacks", "--ongoing"]), "no active attacks\n");
    assert_eq!(agent.cli(&["mitigations"]), "no active mitigations\n");
    assert_eq!(agent.cli(&["bans"]), "no active bans or mitigations\n");
    assert_eq!(
        json_of(&agent.cli(&["attacks", "--json"])),
        Value::Array(vec![])
    );
    assert_eq!(
        json_of(&agent.cli(&["bans", "--json"])),
        Value::Array(vec![])
    );

    let flood = Flood::start(&pair);
    let attack = wait_for_attack(&agent);
    let id = attack["id"].as_str().unwrap().to_owned();
    agent.settle();

    // One attack, one rate: the crossing is the record's rate at detection, and the log says so.
    let crossed = &attack["threshold"];
    assert_eq!(crossed["rate"], "pps", "{attack:#}");
    let value = crossed["value"].as_f64().unwrap();
    assert_eq!(
        value,
        attack["initial_rates"]["pps"].as_f64().unwrap(),
        "{attack:#}"
    );
    let logged = format!("pps {value:.0} > {THRESHOLD_PPS}");
    assert!(
        agent.log().contains(&logged),
        "the log reports {logged:?}:\n{}",
        agent.log()
    );

    // hosts: a table with units, and its JSON.
    let hosts = agent.cli(&["hosts", "--top", "5"]);
    eprintln!("$ fnm-agent hosts --top 5\n{hosts}");
    let mut lines = hosts.lines();
    let header = lines.next().unwrap();
    for col in [
        "HOST", "PPS", "BITS/S", "FLOWS/S", "UDP PPS", "PACKETS", "BYTES",
    ] {
        assert!(header.contains(col), "{hosts}");
    }
    let row = lines
        .find(|l| l.starts_with(&victim))
        .unwrap_or_else(|| panic!("{hosts}"));
    assert!(row.contains("Mbit/s") && row.contains('k'), "{hosts}");
    // Columns line up: every right-aligned header ends where its cells end.
    let end = header.find("PPS").unwrap() + 3;
    assert!(
        row[..end].ends_with(|c: char| c.is_ascii_digit() || c == 'k'),
        "PPS column misaligned:\n{hosts}"
    );
    let list = json_of(&agent.cli(&["hosts", "--top", "5", "--sort", "bits", "--json"]));
    assert_eq!(list[0]["ip"], victim.as_str(), "{list:#}");
    let inc = &list[0]["incoming"];
    assert_eq!(
        inc["bits_per_second"].as_f64().unwrap(),
        inc["bytes_per_second"].as_f64().unwrap() * 8.0,
        "{list:#}"
    );
    assert!(inc["udp_pps"].as_f64().unwrap() > 1000.0, "{list:#}");

    // attacks and attacks show.
    let table = agent.cli(&["attacks"]);
    eprintln!("$ fnm-agent attacks\n{table}");
    assert!(table.starts_with("ID "), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{table}"));
    for want in [
        victim.as_str(),
        "incoming",
        "dns_amplification",
        "ongoing",
        "xdp_rule ok",
    ] {
        assert!(row.contains(want), "{want:?} missing: {table}");
    }
    assert!(
        row.contains("  pps ") && row.contains(" > 2.00k  "),
        "{table}"
    );
    assert!(!table.contains("ActionState"), "no Debug output: {table}");
    let listed = json_of(&agent.cli(&["attacks", "--ongoing", "--json"]));
    assert_eq!(listed[0]["id"], id.as_str());
    let report = agent.cli(&["attacks", "show", &id]);
    eprintln!("$ fnm-agent attacks show ID\n{report}");
    for want in [
        "Attack:",
        "Detected at:",
        "AT DETECTION",
        "PEAK",
        "Fingerprint:",
        "source port        53",
        "Top flows (sampled):",
        "xdp_rule",
        "Started:",
    ] {
        assert!(report.contains(want), "{want:?} missing:\n{report}");
    }
    let shown = json_of(&agent.cli(&["attacks", "show", &id, "--json"]));
    assert_eq!(shown["id"], id.as_str());
    let (ok, _, err) = cli_raw(
        &agent,
        &[
            "attacks",
            "show",
            "no-such-id",
            "--api",
            &agent.api.to_string(),
        ],
    );
    assert!(!ok && err.contains("no attack no-such-id"), "{err}");

    // mitigations, then bans with a manual ban beside the automatic mitigation.
    let mitigations = agent.cli(&["mitigations"]);
    eprintln!("$ fnm-agent mitigations\n{mitigations}");
    let row = mitigations
        .lines()
        .find(|l| l.contains(&format!("{victim}/32 dst")))
        .unwrap_or_else(|| panic!("{mitigations}"));
    assert!(
        row.contains("detection") && row.contains("xdp_rule ok"),
        "{mitigations}"
    );
    assert!(
        row.contains("in 29m") || row.contains("in 30m"),
        "{mitigations}"
    );
    let m = json_of(&agent.cli(&["mitigations", "--json"]));
    assert_eq!(m[0]["id"], id.as_str(), "{m:#}");

    let out = agent.cli(&["ban", "198.51.100.77", "--match", "src", "--duration", "2h"]);
    assert!(out.contains("banned"), "{out}");
    let bans = agent.cli(&["bans"]);
    eprintln!("$ fnm-agent bans\n{bans}");
    assert!(bans.starts_with("PREFIX "), "{bans}");
    let manual = bans
        .lines()
        .find(|l| l.contains("198.51.100.77/32"))
        .unwrap_or_else(|| panic!("{bans}"));
    assert!(
        manual.contains("src")
            && manual.contains("manual")
            && (manual.contains("in 1h 59m") || manual.contains("in 2h 00m")),
        "{bans}"
    );
    let auto = bans
        .lines()
        .find(|l| l.contains(&format!("{victim}/32")))
        .unwrap_or_else(|| panic!("the automatic mitigation is a ban too:\n{bans}"));
    assert!(
        auto.contains("detection") && auto.contains("xdp_rule ok"),
        "{bans}"
    );
    // An xdp_rule has no drop entry of its own: its drops are not shown as 0.
    assert!(auto.contains("  -  "), "{bans}");
    assert!(!bans.contains("1800s"), "{bans}");
    let rows = json_of(&agent.cli(&["bans", "--json"]));
    let mut origins: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["origin"].as_str().unwrap())
        .collect();
    origins.sort();
    assert_eq!(origins, ["detection", "manual"], "{rows:#}");

    // --api as a URL and as a host name.
    for api in [
        format!("http://{}/", agent.api),
        format!("localhost:{}", agent.api.port()),
    ] {
        let (ok, out, err) = cli_raw(&agent, &["mitigations", "--api", &api]);
        assert!(ok && out.contains(&id), "--api {api}: {out}{err}");
    }
    let (ok, _, err) = cli_raw(&agent, &["mitigations", "--api", "https://127.0.0.1:1"]);
    assert!(!ok && err.contains("plain HTTP"), "{err}");

    // thresholds IP: inside and outside networks.
    let cfg = agent.config_path.display().to_string();
    let (ok, out, err) = cli_raw(&agent, &["thresholds", &victim, "--config", &cfg]);
    assert!(ok, "{err}");
    eprintln!("$ fnm-agent thresholds {victim}\n{out}");
    assert!(out.contains("monitored (in networks"), "{out}");
    assert!(
        out.contains("packets/s") && out.contains("2.00k pps"),
        "{out}"
    );
    assert!(out.contains("actions: xdp_rule"), "{out}");
    let (ok, out, _) = cli_raw(&agent, &["thresholds", "192.0.2.1", "--config", &cfg]);
    assert!(ok && out.contains("NOT in networks"), "{out}");
    let (ok, out, _) = cli_raw(
        &agent,
        &["thresholds", "192.0.2.1", "--config", &cfg, "--json"],
    );
    assert!(ok);
    let t = json_of(&out);
    assert!(t["network"].is_null(), "{t:#}");
    assert_eq!(t["incoming"]["pps"], f64::from(THRESHOLD_PPS));
    drop(flood);
}
