//! Hostgroups end to end, on real traffic over XDP: groups with their own thresholds and
//! actions beside the global `[detection]` thresholds and `[ban] actions`, nested so that the
//! most specific prefix must win for IPv4 (/24 inside /22) and IPv6 (/64 inside /56), and
//! defined in an order (`quiet`, `wide`, `narrow`) where taking the first or the last matching
//! group instead of the most specific one picks the wrong group for some host.
//!
//! | group | prefixes | incoming `udp_pps` | actions |
//! |---|---|---|---|
//! | (global) | | 500, `tcp_syn_pps` 150 | `script` |
//! | `wide` | 10.105.16.0/22, fd69:1::/56 | 100 | `xdp_blackhole` |
//! | `narrow` (inside wide) | 10.105.17.0/24, fd69:1:0:1::/64 | 300 | `xdp_rule`, `script` |
//! | `quiet` (inside wide) | 10.105.18.0/24, fd69:1:0:2::/64 | 100, `report_only` | `xdp_blackhole`, `script` |
//!
//! Per address family, first (alone, so no opening attack can disturb the rates) 200 UDP
//! packets/s to a `narrow` host (over wide's 100, under narrow's 300) and to a host outside
//! every group (over wide's 100, under the global 500) open nothing; then floods open exactly:
//! a `wide` host at 2× (group `wide`, limit 100, blackholed: a dst ban, no script call), a
//! `narrow` host at 2.5× (group `narrow`, limit 300, an XDP rule and a script call, no ban), a
//! `narrow` host's SYN flood over the inherited global `tcp_syn_pps` (group `narrow`, limit
//! 150, narrow's actions), a host outside every group at 2.5× the global limit (no group,
//! global actions: a script call only), and a `quiet` host at 2× (group `quiet`,
//! `report_only`: no mitigation, no ban, no script call although its group lists both).
//! Everything is read from the API (`/api/v1/thresholds/{ip}`, `/attacks`, `/mitigations`,
//! `/bans`) and from the notify script's own log. Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::{
    agent::AgentProcess,
    flood::{script_calls, timestamp_script},
    matrix::Family,
    netns::NetnsPair,
    pktgen::{self, FrameSink, Shape, Sink, Stream, StreamSpec, L4},
    require_root,
};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

const NET: u8 = 105;
/// The quiet phase: the no-attack hosts alone.
const QUIET_PHASE: Duration = Duration::from_secs(4);
/// Then the floods.
const FLOOD_PHASE: Duration = Duration::from_millis(2500);

/// What a host is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `narrow` host at 200 UDP packets/s: nothing opens.
    NarrowUnder,
    /// Outside every group at 200 UDP packets/s: nothing opens.
    OutsideUnder,
    /// `wide` host at 200 UDP packets/s.
    WideFlood,
    /// `narrow` host at 750 UDP packets/s.
    NarrowFlood,
    /// `narrow` host, 375 TCP SYNs/s.
    NarrowSyn,
    /// Outside every group at 1250 UDP packets/s.
    OutsideFlood,
    /// `quiet` host at 200 UDP packets/s.
    QuietFlood,
}

struct Host {
    role: Role,
    ip: IpAddr,
    /// Group expected to apply.
    group: Option<&'static str>,
    /// Rate it sends, packets/s.
    rate: f64,
    /// The crossing expected, when it floods: (rate kind, limit).
    crossing: Option<(&'static str, f64)>,
}

fn ip(family: Family, v4: &str, v6: &str) -> IpAddr {
    match family {
        Family::V4 => format!("10.{NET}.{v4}").parse().unwrap(),
        Family::V6 => format!("fd{NET:02x}:1:0:{v6}").parse().unwrap(),
    }
}

fn hosts() -> Vec<Host> {
    let mut out = Vec::new();
    for family in Family::ALL {
        let h = |role, v4, v6, group, rate, crossing| Host {
            role,
            ip: ip(family, v4, v6),
            group,
            rate,
            crossing,
        };
        out.extend([
            h(
                Role::NarrowUnder,
                "17.10",
                "1::10",
                Some("narrow"),
                200.0,
                None,
            ),
            h(Role::OutsideUnder, "20.10", "100::10", None, 200.0, None),
            h(
                Role::WideFlood,
                "16.10",
                "0::10",
                Some("wide"),
                200.0,
                Some(("udp_pps", 100.0)),
            ),
            h(
                Role::NarrowFlood,
                "17.11",
                "1::11",
                Some("narrow"),
                750.0,
                Some(("udp_pps", 300.0)),
            ),
            h(
                Role::NarrowSyn,
                "17.12",
                "1::12",
                Some("narrow"),
                375.0,
                Some(("tcp_syn_pps", 150.0)),
            ),
            h(
                Role::OutsideFlood,
                "20.11",
                "100::11",
                None,
                1250.0,
                Some(("udp_pps", 500.0)),
            ),
            h(
                Role::QuietFlood,
                "18.10",
                "2::10",
                Some("quiet"),
                200.0,
                Some(("udp_pps", 100.0)),
            ),
        ]);
    }
    out
}

fn config(veth: &str, script: &std::path::Path) -> String {
    format!(
        "networks = [\"10.{NET}.16.0/20\", \"fd{NET:02x}:1::/48\"]\n\
         [xdp]\ninterfaces = [\"{veth}\"]\nmode = \"skb\"\npin_links = false\n\
         [detection.incoming]\nudp_pps = 500\ntcp_syn_pps = 150\n\
         [ban]\nactions = [\"script\"]\nscript = \"{}\"\ntime = \"1h\"\n\
         [[hostgroup]]\nname = \"quiet\"\nnetworks = [\"10.{NET}.18.0/24\", \"fd{NET:02x}:1:0:2::/64\"]\n\
         report_only = true\nactions = [\"xdp_blackhole\", \"script\"]\n\
         [hostgroup.incoming]\nudp_pps = 100\n\
         [[hostgroup]]\nname = \"wide\"\nnetworks = [\"10.{NET}.16.0/22\", \"fd{NET:02x}:1::/56\"]\n\
         actions = [\"xdp_blackhole\"]\n[hostgroup.incoming]\nudp_pps = 100\n\
         [[hostgroup]]\nname = \"narrow\"\nnetworks = [\"10.{NET}.17.0/24\", \"fd{NET:02x}:1:0:1::/64\"]\n\
         actions = [\"xdp_rule\", \"script\"]\n[hostgroup.incoming]\nudp_pps = 300\n",
        script.display()
    )
}

fn streams(hosts: &[Host]) -> Vec<Stream> {
    hosts
        .iter()
        .enumerate()
        .map(|(k, h)| {
            let (mix, distinct): (&'static [L4], bool) = if h.role == Role::NarrowSyn {
                (&[L4::TcpSyn], true)
            } else {
                (&[L4::Udp], false)
            };
            let (from, until) = if h.crossing.is_none() {
                (Duration::ZERO, QUIET_PHASE)
            } else {
                (QUIET_PHASE, QUIET_PHASE + FLOOD_PHASE)
            };
            Stream {
                host: k,
                spec: StreamSpec {
                    shape: Shape {
                        mix,
                        ip_len: 64,
                        distinct,
                    },
                    local: h.ip,
                    outgoing: false,
                    remote_block: k as u32,
                },
                rate: h.rate,
                sink: 0,
                from,
                until,
            }
        })
        .collect()
}

fn list(agent: &AgentProcess, path: &str) -> Vec<Value> {
    agent
        .get(path)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .as_array()
        .unwrap_or_else(|| panic!("{path} is not a list"))
        .clone()
}

fn for_host(items: &[Value], ip: IpAddr) -> Vec<&Value> {
    let ip = ip.to_string();
    items
        .iter()
        .filter(|a| a["host"].as_str() == Some(ip.as_str()))
        .collect()
}

#[test]
fn hostgroups_most_specific_prefix_thresholds_actions_and_report_only() {
    require_root("the hostgroups end-to-end test");
    let started = Instant::now();
    let pair = NetnsPair::new(NET);
    let dir = tempfile::tempdir().unwrap();
    let (script, calls_log) = timestamp_script(dir.path());
    let agent = AgentProcess::start(&pair.agent, &config(&pair.veth_agent, &script));
    let hosts = hosts();
    let mut failures = Vec::new();

    // What applies to each host, as the API reports it.
    for h in &hosts {
        let t = agent
            .get(&format!("/api/v1/thresholds/{}", h.ip))
            .expect("GET /api/v1/thresholds");
        let limit = match h.group {
            Some("narrow") => 300.0,
            Some(_) => 100.0,
            None => 500.0,
        };
        if t["hostgroup"].as_str() != h.group
            || t["incoming"]["udp_pps"].as_f64() != Some(limit)
            || t["incoming"]["tcp_syn_pps"].as_f64() != Some(150.0)
        {
            failures.push(format!(
                "{:?} {}: thresholds {t}, want group {:?}, udp_pps {limit} and the global \
                 tcp_syn_pps 150",
                h.role, h.ip, h.group
            ));
        }
    }

    let plan = streams(&hosts);
    let dev = pair.veth_peer.clone();
    let (reports, expected) = NetnsPair::in_ns(&pair.peer, move || {
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(FrameSink::open(&dev))];
        pktgen::run(&plan, &mut sinks)
    });

    // Every flood's attack (opening several at once can hold the poll thread up a while).
    let floods: Vec<&Host> = hosts.iter().filter(|h| h.crossing.is_some()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let attacks = list(&agent, "/api/v1/attacks");
        if floods.iter().all(|h| !for_host(&attacks, h.ip).is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The script runs asynchronously: wait for the calls expected (narrow x2 and outside, per
    // family), then a little longer for any that should not come.
    let want_calls = 2 * 3;
    let deadline = Instant::now() + Duration::from_secs(10);
    while script_calls(&calls_log).len() < want_calls && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.settle();

    let attacks = list(&agent, "/api/v1/attacks");
    let mitigations = list(&agent, "/api/v1/mitigations");
    let bans = list(&agent, "/api/v1/bans");
    let calls = script_calls(&calls_log);
    let views = list(&agent, "/api/v1/hosts?direction=incoming&limit=10000");
    let banned: BTreeSet<String> = bans
        .iter()
        .map(|b| format!("{} {}", b["prefix"].as_str().unwrap_or("?"), b["match"]))
        .collect();

    for (k, h) in hosts.iter().enumerate() {
        let mut problems = Vec::new();
        let ip = h.ip.to_string();
        let prefix = format!("{ip}/{}", if h.ip.is_ipv4() { 32 } else { 128 });
        // The traffic arrived, at its rate.
        let sent = expected.get(&k).map_or(0, |e| e.packets);
        let counted = views
            .iter()
            .find(|v| v["ip"].as_str() == Some(ip.as_str()))
            .and_then(|v| v["incoming"]["packets"].as_u64());
        if counted != Some(sent) || sent == 0 {
            problems.push(format!("counted {counted:?} packets, sent {sent}"));
        }
        let length = plan_length(h);
        if (reports[k].sent as f64) < 0.9 * h.rate * length.as_secs_f64() {
            problems.push(format!("sender fell behind: {} sent", reports[k].sent));
        }

        let mine = for_host(&attacks, h.ip);
        let mitigation = for_host(&mitigations, h.ip);
        let host_calls: Vec<_> = calls.iter().filter(|c| c.ip == ip).collect();
        let blackholed = banned.contains(&format!("{prefix} \"dst\""));
        match (h.crossing, mine.as_slice()) {
            (None, []) => {}
            (None, found) => problems.push(format!("opened {} attack(s): {found:?}", found.len())),
            (Some(_), []) => problems.push("no attack".into()),
            (Some((rate, limit)), [a]) => {
                if a["direction"] != "incoming"
                    || a["threshold"]["rate"] != rate
                    || a["threshold"]["threshold"].as_f64() != Some(limit)
                {
                    problems.push(format!(
                        "attack {} crossed {} at limit {}, want incoming {rate} {limit}",
                        a["direction"], a["threshold"]["rate"], a["threshold"]["threshold"]
                    ));
                }
                if a["hostgroup"].as_str() != h.group {
                    problems.push(format!(
                        "attack in group {}, want {:?}",
                        a["hostgroup"], h.group
                    ));
                }
                let quiet = h.role == Role::QuietFlood;
                if a["report_only"].as_bool() != Some(quiet) {
                    problems.push(format!("report_only {}", a["report_only"]));
                }
            }
            (Some(_), found) => problems.push(format!("{} attacks: {found:?}", found.len())),
        }
        // The actions of the group that applies, and only those.
        let (want_actions, want_ban, want_call): (&[&str], bool, bool) = match h.role {
            Role::NarrowUnder | Role::OutsideUnder | Role::QuietFlood => (&[], false, false),
            Role::WideFlood => (&["xdp_blackhole"], true, false),
            Role::NarrowFlood | Role::NarrowSyn => (&["xdp_rule", "script"], false, true),
            Role::OutsideFlood => (&["script"], false, true),
        };
        let got_actions: Vec<String> = mitigation.iter().flat_map(|m| action_names(m)).collect();
        if got_actions != want_actions || mitigation.len() > 1 {
            problems.push(format!(
                "mitigation actions {got_actions:?}, want {want_actions:?}"
            ));
        }
        if let Some(failed) = mitigation.iter().find_map(|m| failed_action(m)) {
            problems.push(format!("action failed: {failed}"));
        }
        if (h.role == Role::NarrowFlood || h.role == Role::NarrowSyn)
            && mitigation.iter().map(|m| xdp_rules(m)).sum::<usize>() == 0
        {
            problems.push(format!("no XDP rule in {mitigation:?}"));
        }
        if blackholed != want_ban {
            problems.push(format!("blackhole ban {blackholed}, want {want_ban}"));
        }
        let bans_called = host_calls.iter().filter(|c| c.action == "ban").count();
        if bans_called != usize::from(want_call)
            || host_calls.iter().any(|c| c.direction != "incoming")
        {
            problems.push(format!(
                "script calls {host_calls:?}, want {}",
                u8::from(want_call)
            ));
        }

        let line = format!(
            "{:?} {ip}: group {:?}, {} attack(s), actions {got_actions:?}, ban {blackholed}, \
             {bans_called} script call(s)",
            h.role,
            h.group,
            mine.len()
        );
        println!(
            "{} {line}",
            if problems.is_empty() { "ok  " } else { "FAIL" }
        );
        if !problems.is_empty() {
            failures.push(format!("{line}: {}", problems.join("; ")));
        }
    }
    let known: BTreeSet<String> = hosts.iter().map(|h| h.ip.to_string()).collect();
    for a in &attacks {
        if !known.contains(a["host"].as_str().unwrap_or_default()) {
            failures.push(format!("attack on an unexpected host: {a}"));
        }
    }
    for b in &bans {
        let prefix = b["prefix"].as_str().unwrap_or_default();
        if !known.iter().any(|ip| prefix.starts_with(&format!("{ip}/"))) {
            failures.push(format!("unexpected ban: {b}"));
        }
    }
    println!("hostgroups end to end in {:.1?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} hostgroup checks failed:\n  {}\nagent log:\n{}",
        failures.len(),
        failures.join("\n  "),
        agent.log()
    );
}

/// The action names of a `GET /api/v1/mitigations` entry. The API has spelt them two ways: as
/// strings (`"actions": ["xdp_rule", "script"]`, the XDP rules in `"rules"` beside them), and,
/// since the engine rewrite on main (1f3515f), as objects `{"action": "xdp_rule", "applied":
/// {"rules": [...], ...}, "result": "ok", ...}`. Both are read, so the test checks which
/// actions were applied, not how they are written down.
fn action_names(m: &Value) -> Vec<String> {
    m["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().or_else(|| a["action"].as_str()))
        .map(str::to_owned)
        .collect()
}

/// The first action of a mitigation entry whose `result` says it did not succeed, if any (only
/// the object spelling has results).
fn failed_action(m: &Value) -> Option<String> {
    m["actions"].as_array().into_iter().flatten().find_map(|a| {
        let result = a.get("result")?.as_str().unwrap_or("?");
        (result != "ok").then(|| a.to_string())
    })
}

/// XDP rules a mitigation entry installed, in either spelling.
fn xdp_rules(m: &Value) -> usize {
    let beside = m["rules"].as_array().map_or(0, Vec::len);
    let inside: usize = m["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["applied"]["rules"].as_array())
        .map(Vec::len)
        .sum();
    beside + inside
}

/// How long a host's stream runs.
fn plan_length(h: &Host) -> Duration {
    if h.crossing.is_none() {
        QUIET_PHASE
    } else {
        FLOOD_PHASE
    }
}
