//! Mitigations when something goes wrong, end to end with the real agent binary, a real kernel
//! and real daemons (issues 11, 12 and 13). Each test proves one thing:
//!
//! * **A restart in the middle of a mitigation** (defect 4): a flood over XDP opens attack A and
//!   its `xdp_rule`; the agent is SIGKILLed and restarted while A's mitigation is active; a new
//!   flood opens attack B with a new UUID v7 id and its own record (A's is unchanged), B's rule
//!   is applied and drops the flood, and it keeps dropping after A's mitigation expires.
//! * **A restart in the middle of an attack**: killed while A goes on, the restarted agent
//!   carries on with A (no second record or mitigation for the same flood); killed again and
//!   the flood stopping meanwhile, A ends after the restart and its mitigation is lifted
//!   instead of staying ongoing, and in force, for ever.
//! * **An announcement while gobgpd is down** (defect 3, attack path): the attack record and
//!   `/api/v1/mitigations` show `bgp_blackhole` as `retrying` with its error; once a gobgpd
//!   speaker and a receiver start, the /32 reaches the receiver's RIB with no operator action,
//!   the action turns `ok`, and `fnm_actions_total` counts the failures and the one success.
//! * **A full disk** (issue 12 item 6, issue 13 item 7): with the state directory on a full
//!   tmpfs a manual ban is refused with a JSON error naming the state file, is not listed and
//!   drops nothing; an unban (one short journal line, which may still fit in the journal's
//!   last page) either goes through durably or is refused and stays listed and dropping; after
//!   a restart the API, the saved list (bans.json + bans.journal) and the kernel's drop table
//!   agree.
//! * **Data-plane errors on unban**: an entry deleted behind the agent's back (`bpftool map
//!   delete`) unbans cleanly, since what the operator asked for (nothing dropped) holds; a drop
//!   table the kernel refuses to change (`bpftool map freeze`) makes the unban fail, and the ban
//!   stays listed, saved and dropping; after a restart the unban goes through.
//!
//! Network traffic only in namespaces the tests create or on the loopback; every port free,
//! every namespace and mount the tests' own. Needs root, bpftool, gobgpd.
#![cfg(target_os = "linux")]

mod bgp_support;
mod common;

use common::{
    agent::AgentProcess, bpftool, flood::udp_flood, netns::*, require_root, tmpfs::SmallTmpfs,
    udp_counter::UdpCounter,
};
use serde_json::{json, Value};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Where the tests' UDP goes on the victim.
const PORT: u16 = 9999;

/// Polls `probe` every 100 ms until it returns `Ok`, for at most `timeout`; panics with `what`,
/// the last state and `context()` (the agent's log) otherwise.
fn wait_until<T>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last state:\n{last}\n{}",
                    context()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The value of one sample line of a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn xdp_config(pair: &NetnsPair, extra: &str) -> String {
    format!(
        "networks = [\"{}/32\"]\n{extra}\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\npin_links = false\n",
        pair.agent_v4, pair.veth_agent
    )
}

fn v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => unreachable!("the pair's IPv4 address"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Restart with an active mitigation, then a new attack.

fn mitigation<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|m| m["id"] == id)
}

/// What of an attack record must not change once it ended (`actions` is filled in from the
/// mitigator when shown).
fn without_actions(mut record: Value) -> Value {
    record.as_object_mut().unwrap().remove("actions");
    record
}

fn uuid_v7(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 7)
}

/// The victim's socket receives almost nothing of a flood for a second.
fn assert_flood_dropped(victim: &UdpCounter, what: &str) {
    let before = victim.count();
    std::thread::sleep(Duration::from_secs(1));
    let got = victim.count() - before;
    assert!(
        got < 50,
        "{what}: {got} flood packets reached the victim in 1 s"
    );
}

#[test]
fn a_new_attack_after_a_restart_gets_its_own_id_record_and_actions() {
    require_root("XDP end-to-end tests");
    let started = Instant::now();
    let pair = NetnsPair::new(111);
    let cfg = xdp_config(
        &pair,
        "[detection.incoming]\nudp_pps = 2000\n\
         [ban]\ntime = \"12s\"\nstop_after = \"1s\"\nactions = [\"xdp_rule\"]",
    );
    let agent = AgentProcess::start(&pair.agent, &cfg);
    let to = SocketAddrV4::new(v4(pair.agent_v4), PORT);
    let victim = UdpCounter::start(&pair.agent, to.into());

    // Attack A: 10 000 pps of DNS-like UDP, 5x the threshold; its rule goes in.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = udp_flood(&pair.peer, to, 10_000.0, stop.clone());
    let a = wait_until(
        "attack A's mitigation",
        Duration::from_secs(10),
        || agent.log(),
        || {
            let m = agent.get("/api/v1/mitigations")?;
            match m.as_array().and_then(|l| l.first()) {
                Some(x) if x["actions"][0]["result"] == "ok" => {
                    Ok(x["id"].as_str().unwrap().to_owned())
                }
                _ => Err(format!("{m:#}")),
            }
        },
    );
    assert_flood_dropped(&victim, "A's rule");
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    // A ends (stop_after 1 s); its mitigation stays for the ban time (12 s).
    let a_record = wait_until(
        "attack A to end",
        Duration::from_secs(10),
        || agent.log(),
        || {
            let r = agent.get(&format!("/api/v1/attacks/{a}"))?;
            if r["ended_unix_ms"].is_u64() {
                Ok(r)
            } else {
                Err(format!("{r:#}"))
            }
        },
    );
    // The engine publishes the ended attack before the mitigator hears of it: wait for both.
    wait_until(
        "A's mitigation to see its attack ended",
        Duration::from_secs(5),
        || agent.log(),
        || {
            let m = agent.get("/api/v1/mitigations")?;
            let ma = mitigation(&m, &a).ok_or_else(|| format!("A's mitigation: {m:#}"))?;
            if ma["attack_ongoing"] == false {
                Ok(())
            } else {
                Err(format!("{m:#}"))
            }
        },
    );

    // SIGKILL: no clean-up; the state directory is kept. Restart while A is still mitigated.
    let state = agent.kill();
    let agent = AgentProcess::start_with_state(&pair.agent, &cfg, state);
    let m = agent.get("/api/v1/mitigations").unwrap();
    let ma = mitigation(&m, &a).unwrap_or_else(|| panic!("A survived the restart: {m:#}"));
    assert_eq!(
        ma["actions"][0]["result"], "ok",
        "A's rule reinstated: {m:#}"
    );

    // Attack B: a new flood on the same victim.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = udp_flood(&pair.peer, to, 10_000.0, stop.clone());
    let b = wait_until(
        "attack B's mitigation",
        Duration::from_secs(10),
        || agent.log(),
        || {
            let m = agent.get("/api/v1/mitigations")?;
            m.as_array()
                .into_iter()
                .flatten()
                .find(|x| x["id"] != a.as_str() && x["actions"][0]["result"] == "ok")
                .map(|x| x["id"].as_str().unwrap().to_owned())
                .ok_or_else(|| format!("{m:#}"))
        },
    );
    assert!(
        uuid_v7(&a) && uuid_v7(&b),
        "attack ids are UUID v7: {a} {b}"
    );
    assert!(b > a, "v7 ids are time-ordered: {a} then {b}");

    // Two records; A's is unchanged, B's is its own and ongoing.
    let attacks = agent.get("/api/v1/attacks").unwrap();
    let ids: Vec<&str> = attacks
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![b.as_str(), a.as_str()],
        "newest first: {attacks:#}"
    );
    let a_now = agent.get(&format!("/api/v1/attacks/{a}")).unwrap();
    assert_eq!(
        without_actions(a_now),
        without_actions(a_record),
        "A's record is not overwritten"
    );
    let b_record = agent.get(&format!("/api/v1/attacks/{b}")).unwrap();
    assert!(b_record["ended_unix_ms"].is_null(), "{b_record:#}");
    assert_eq!(b_record["host"], pair.agent_v4.to_string(), "{b_record:#}");
    assert_eq!(b_record["actions"][0]["action"], "xdp_rule", "{b_record:#}");
    assert_eq!(b_record["actions"][0]["result"], "ok", "{b_record:#}");

    // Both mitigations are listed; B's applied its own rule.
    let m = agent.get("/api/v1/mitigations").unwrap();
    assert_eq!(m.as_array().unwrap().len(), 2, "{m:#}");
    let mb = mitigation(&m, &b).unwrap();
    assert_eq!(mb["attack_ongoing"], true, "{m:#}");
    assert_eq!(mb["actions"][0]["applied"]["kind"], "xdp_rules", "{m:#}");
    assert_eq!(
        mb["actions"][0]["applied"]["rules"][0]["src_port"], 53,
        "{m:#}"
    );

    // The rule is in force: the flood does not reach the victim, the rule counter rises.
    let rule_drops = || {
        metric(
            &agent.metrics_text(),
            "fnm_xdp_dropped_packets_total{match=\"rule\"}",
        )
        .unwrap_or(0.0)
    };
    let before = rule_drops();
    assert_flood_dropped(&victim, "B's rule");
    assert!(rule_drops() > before + 1000.0, "the rule drops the flood");

    // A's mitigation expires (12 s after A); B's rule stays and keeps dropping.
    wait_until(
        "A's mitigation to expire",
        Duration::from_secs(20),
        || agent.log(),
        || {
            let m = agent.get("/api/v1/mitigations")?;
            if mitigation(&m, &a).is_none() {
                Ok(())
            } else {
                Err(format!("{m:#}"))
            }
        },
    );
    let m = agent.get("/api/v1/mitigations").unwrap();
    assert_eq!(m.as_array().unwrap().len(), 1, "{m:#}");
    assert_eq!(m[0]["id"], b.as_str(), "{m:#}");
    assert_eq!(m[0]["actions"][0]["result"], "ok", "{m:#}");
    assert_flood_dropped(&victim, "B's rule after A's mitigation expired");
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    assert!(
        agent.get(&format!("/api/v1/attacks/{a}")).is_ok(),
        "A's record is kept"
    );
    eprintln!("restart test took {:?}", started.elapsed());
}

#[test]
fn an_attack_cut_short_by_a_kill_is_resumed_after_the_restart_and_ends() {
    require_root("XDP end-to-end tests");
    let started = Instant::now();
    let pair = NetnsPair::new(114);
    let cfg = xdp_config(
        &pair,
        "[detection.incoming]\nudp_pps = 2000\n\
         [ban]\ntime = \"6s\"\nstop_after = \"1s\"\nactions = [\"xdp_rule\"]",
    );
    let agent = AgentProcess::start(&pair.agent, &cfg);
    let to = SocketAddrV4::new(v4(pair.agent_v4), PORT);
    let victim = UdpCounter::start(&pair.agent, to.into());
    let stop = Arc::new(AtomicBool::new(false));
    let flood = udp_flood(&pair.peer, to, 10_000.0, stop.clone());
    let a = wait_until(
        "attack A's mitigation",
        Duration::from_secs(10),
        || agent.log(),
        || {
            let m = agent.get("/api/v1/mitigations")?;
            match m.as_array().and_then(|l| l.first()) {
                Some(x) if x["actions"][0]["result"] == "ok" => {
                    Ok(x["id"].as_str().unwrap().to_owned())
                }
                _ => Err(format!("{m:#}")),
            }
        },
    );

    // Killed in the middle of the attack; the flood goes on through the restart. It is still
    // attack A: no second record, no second mitigation, and A's rule drops it.
    let agent = AgentProcess::start_with_state(&pair.agent, &cfg, agent.kill());
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let attacks = agent.get("/api/v1/attacks").unwrap();
        assert_eq!(attacks.as_array().unwrap().len(), 1, "{attacks:#}");
        assert!(attacks[0]["ended_unix_ms"].is_null(), "{attacks:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = agent.get("/api/v1/mitigations").unwrap();
    assert_eq!(m.as_array().unwrap().len(), 1, "{m:#}");
    assert_eq!(m[0]["id"], a.as_str(), "{m:#}");
    assert_flood_dropped(&victim, "A's rule after the restart");

    // Killed again; the flood stops while no agent runs. After the restart A ends (nothing
    // comes any more) and its mitigation is lifted once the ban time passed.
    let dir = agent.kill();
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    let agent = AgentProcess::start_with_state(&pair.agent, &cfg, dir);
    wait_until(
        "A to end and its mitigation to be lifted",
        Duration::from_secs(15),
        || agent.log(),
        || {
            let r = agent.get(&format!("/api/v1/attacks/{a}"))?;
            let m = agent.get("/api/v1/mitigations")?;
            if r["ended_unix_ms"].is_u64() && m == json!([]) {
                Ok(())
            } else {
                Err(format!("{r:#}\n{m:#}"))
            }
        },
    );
    let attacks = agent.get("/api/v1/attacks").unwrap();
    assert_eq!(attacks.as_array().unwrap().len(), 1, "{attacks:#}");
    let status = agent.get("/api/v1/status").unwrap();
    assert_eq!(status["attacks_ongoing"], 0, "{status:#}");
    // The rule is gone: the same UDP passes again.
    let before = victim.settled();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = udp_flood(&pair.peer, to, 200.0, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let sent = flood.join().unwrap().packets;
    assert_eq!(
        victim.wait_for(before + sent, Duration::from_secs(5)) - before,
        sent
    );
    eprintln!("kill-mid-attack test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. A BGP announcement for an attack while gobgpd is down.

/// The agent on the host (no namespace: it captures on the loopback, where gobgpd listens).
struct LocalAgent {
    child: Child,
    api: SocketAddr,
    metrics: SocketAddr,
    log: std::path::PathBuf,
}

impl LocalAgent {
    fn start(dir: &Path, body: &str) -> Self {
        let (api, metrics) = (bgp_support::free_port(), bgp_support::free_port());
        let config = dir.join("fnm.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\npoll_interval = \"200ms\"\n{body}\n\
                 [api]\nlisten = \"127.0.0.1:{api}\"\n[prometheus]\nlisten = \"127.0.0.1:{metrics}\"\n",
                dir.join("state").display()
            ),
        )
        .unwrap();
        let log = dir.join("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(common::agent::binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fnm-agent");
        let mut agent = Self {
            child,
            api: format!("127.0.0.1:{api}").parse().unwrap(),
            metrics: format!("127.0.0.1:{metrics}").parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.get("/api/v1/status").is_err() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("fnm-agent exited ({status}):\n{}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "the agent's API never came up:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Result<Value, String> {
        fnm_agent::client::request(self.api, "GET", path, None).map_err(|e| e.to_string())
    }

    fn metrics_text(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).expect("metrics connect");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A loopback address of this test process alone (any 127/8 address is the loopback's), so a
/// capture on `lo` sees no other test's traffic.
fn own_loopback_address() -> Ipv4Addr {
    let [_, _, hi, lo] = std::process::id().to_be_bytes();
    Ipv4Addr::new(127, 66, hi, lo)
}

#[test]
fn an_attack_announced_while_gobgpd_is_down_is_retried_until_the_route_appears() {
    require_root("capturing on the loopback");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let victim = own_loopback_address();
    // gobgpd's API port: nothing listens on it when the attack opens.
    let gobgp_api = bgp_support::free_port();
    let agent = LocalAgent::start(
        dir.path(),
        &format!(
            "networks = [\"{victim}/32\"]\n\
             [xdp]\nenabled = false\n[sflow]\nlisten = []\n[netflow]\nlisten = []\n\
             [capture]\nbackend = \"pcap\"\ninterfaces = [\"lo\"]\nbpf_filter = \"udp and dst host {victim}\"\n\
             [detection.incoming]\nudp_pps = 500\n\
             [ban]\ntime = \"60s\"\nstop_after = \"1s\"\nactions = [\"bgp_blackhole\"]\n\
             [bgp]\nbackend = \"gobgp\"\ngobgp_api = \"127.0.0.1:{gobgp_api}\"\ntimeout = \"1s\"\n"
        ),
    );

    // 5000 pps of UDP towards the victim until the attack opens (at most 10 s).
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let payload = [0u8; 200];
    let flood_start = Instant::now();
    let mut sent = 0u64;
    let mut last_look = Instant::now();
    let id = loop {
        let due = (flood_start.elapsed().as_secs_f64() * 5000.0) as u64;
        while sent < due {
            let _ = sock.send_to(&payload, (victim, PORT));
            sent += 1;
        }
        if last_look.elapsed() >= Duration::from_millis(200) {
            last_look = Instant::now();
            let attacks = agent.get("/api/v1/attacks").unwrap();
            if let Some(id) = attacks[0]["id"].as_str() {
                break id.to_owned();
            }
        }
        assert!(
            flood_start.elapsed() < Duration::from_secs(10),
            "no attack opened:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    drop(sock);

    // The record and the mitigation show the announcement retrying, with its error.
    let record = wait_until(
        "bgp_blackhole to be tried",
        Duration::from_secs(10),
        || agent.log(),
        || {
            let r = agent.get(&format!("/api/v1/attacks/{id}"))?;
            if r["actions"][0]["result"].is_string() {
                Ok(r)
            } else {
                Err(format!("{r:#}"))
            }
        },
    );
    let action = &record["actions"][0];
    assert_eq!(action["action"], "bgp_blackhole", "{record:#}");
    assert_eq!(action["result"], "retrying", "{record:#}");
    assert!(
        action["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{record:#}"
    );
    let m = agent.get("/api/v1/mitigations").unwrap();
    assert_eq!(m[0]["id"], id.as_str(), "{m:#}");
    assert_eq!(m[0]["actions"][0]["result"], "retrying", "{m:#}");
    assert!(
        m[0]["actions"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{m:#}"
    );

    // gobgpd comes up: a receiver, and the speaker fnm talks to on the port it was given.
    let mut receiver = bgp_support::Receiver::start(dir.path());
    let _speaker = bgp_support::start_gobgp_speaker(dir.path(), receiver.bgp_port, gobgp_api);
    let speaker_log = dir.path().join("speaker.log");
    receiver.wait_established(|| std::fs::read_to_string(&speaker_log).unwrap_or_default());
    // The route appears with no operator action.
    let line = receiver.wait_route("ipv4", &format!("{victim}/32"));
    assert!(
        line.contains("65535:666") || line.contains("blackhole"),
        "blackhole community: {line}"
    );
    let record = wait_until(
        "the action to turn ok",
        Duration::from_secs(10),
        || agent.log(),
        || {
            let r = agent.get(&format!("/api/v1/attacks/{id}"))?;
            if r["actions"][0]["result"] == "ok" {
                Ok(r)
            } else {
                Err(format!("{r:#}"))
            }
        },
    );
    assert!(
        record["actions"][0]["attempts"].as_u64().unwrap() >= 2,
        "{record:#}"
    );
    assert!(record["actions"][0]["error"].is_null(), "{record:#}");
    let m = agent.get("/api/v1/mitigations").unwrap();
    assert_eq!(m[0]["actions"][0]["result"], "ok", "{m:#}");

    let text = agent.metrics_text();
    let failed = metric(
        &text,
        "fnm_actions_total{action=\"bgp_blackhole\",result=\"failed\"}",
    );
    let ok = metric(
        &text,
        "fnm_actions_total{action=\"bgp_blackhole\",result=\"ok\"}",
    );
    assert!(
        failed.is_some_and(|f| f >= 1.0),
        "failed attempts counted:\n{text}"
    );
    assert_eq!(ok, Some(1.0), "one success:\n{text}");
    eprintln!("BGP retry test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. Manual bans against a full disk and a kernel that refuses.

/// A victim, a banned source and the agent between them.
struct BanBench<'a> {
    pair: &'a NetnsPair,
    rx: UdpCounter,
}

impl<'a> BanBench<'a> {
    fn new(pair: &'a NetnsPair) -> Self {
        let rx = UdpCounter::start(&pair.agent, SocketAddr::new(pair.agent_v4, PORT));
        Self { pair, rx }
    }

    /// The peer's /32, the prefix the tests ban on `src`.
    fn prefix(&self) -> String {
        format!("{}/32", self.pair.peer_v4)
    }

    fn send(&self, n: usize) {
        let to = SocketAddr::new(self.pair.agent_v4, PORT);
        NetnsPair::in_ns(&self.pair.peer, move || send_udp(to, n, 100));
    }

    fn src_drops(agent: &AgentProcess) -> u64 {
        agent.get("/api/v1/status").unwrap()["xdp"]["dropped_src_packets"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Sends `n` datagrams from the peer; all of them reach the victim and XDP drops none.
    fn assert_passes(&self, agent: &AgentProcess, what: &str) {
        let n = 10;
        let before = self.rx.settled();
        let dropped = Self::src_drops(agent);
        self.send(n);
        let got = self.rx.wait_for(before + n as u64, Duration::from_secs(5)) - before;
        assert_eq!(got, n as u64, "{what}: {got} of {n} datagrams passed");
        assert_eq!(Self::src_drops(agent), dropped, "{what}: XDP dropped some");
    }

    /// Sends `n` datagrams from the peer; XDP drops every one and none reaches the victim.
    fn assert_dropped(&self, agent: &AgentProcess, what: &str) {
        let n = 10;
        let before = self.rx.settled();
        let dropped = Self::src_drops(agent);
        self.send(n);
        let now = wait_until(
            &format!("{what}: the drops to be counted"),
            Duration::from_secs(5),
            || agent.log(),
            || {
                let d = Self::src_drops(agent);
                if d >= dropped + n as u64 {
                    Ok(d)
                } else {
                    Err(format!("dropped {} of {n}", d - dropped))
                }
            },
        );
        assert_eq!(
            now,
            dropped + n as u64,
            "{what}: exactly the datagrams sent"
        );
        assert_eq!(self.rx.settled(), before, "{what}: some reached the victim");
    }

    fn ban(&self, agent: &AgentProcess) -> Result<Value, String> {
        agent.request(
            "POST",
            "/api/v1/bans",
            Some(json!({"prefix": self.prefix(), "match": "src"})),
        )
    }

    fn unban(&self, agent: &AgentProcess) -> Result<Value, String> {
        agent.request(
            "DELETE",
            &format!("/api/v1/bans/{}%2F32?match=src", self.pair.peer_v4),
            None,
        )
    }

    /// The prefixes the API lists as banned.
    fn listed(agent: &AgentProcess) -> Vec<String> {
        agent
            .get("/api/v1/bans")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["prefix"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The prefixes saved: bans.json with the changes of bans.journal replayed (none when
    /// neither was written).
    fn saved(agent: &AgentProcess) -> Vec<String> {
        saved_bans(&agent.state_path)
    }

    /// The prefixes in the kernel's IPv4 source drop table.
    fn in_kernel(&self) -> Vec<String> {
        let map = bpftool::agent_map_id(&self.pair.agent, &self.pair.veth_agent, "FNM_DROP_SRC_V4");
        bpftool::lpm_v4_prefixes(map)
    }

    /// The API, the saved list and the kernel all hold the peer's ban (`true`) or none of them do.
    fn assert_agree(&self, agent: &AgentProcess, banned: bool, what: &str) {
        let want: Vec<String> = if banned {
            vec![self.prefix()]
        } else {
            Vec::new()
        };
        assert_eq!(Self::listed(agent), want, "{what}: the API's list");
        assert_eq!(Self::saved(agent), want, "{what}: the saved list");
        assert_eq!(self.in_kernel(), want, "{what}: the kernel's drop table");
        let mitigations = agent.get("/api/v1/mitigations").unwrap();
        assert_eq!(
            mitigations.as_array().unwrap().len(),
            banned as usize,
            "{what}: mitigations {mitigations:#}"
        );
        if banned {
            self.assert_dropped(agent, what);
        } else {
            self.assert_passes(agent, what);
        }
    }
}

/// The status of an API error (`"500: message"`), checked to be a server error.
fn server_error(result: Result<Value, String>, what: &str) -> String {
    let err = match result {
        Ok(v) => panic!("{what} was accepted: {v:#}"),
        Err(e) => e,
    };
    let status: u16 = err
        .split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: not an HTTP error: {err}"));
    assert!((500..600).contains(&status), "{what}: {err}");
    err
}

#[test]
fn a_full_disk_refuses_bans_and_the_kernel_agrees() {
    require_root("XDP end-to-end tests");
    let started = Instant::now();
    let pair = NetnsPair::new(112);
    let disk = SmallTmpfs::mount("1M");
    let cfg = xdp_config(&pair, "");
    let agent = AgentProcess::start_with_state_at(
        &pair.agent,
        &cfg,
        tempfile::tempdir().unwrap(),
        disk.path(),
    );
    let bench = BanBench::new(&pair);
    bench.assert_agree(&agent, false, "before anything");

    // Disk full: the ban is refused, names the state file, lists nothing, drops nothing.
    disk.fill();
    let err = server_error(bench.ban(&agent), "a ban on a full disk");
    assert!(
        err.contains("bans.journal") && err.contains("No space left on device"),
        "the error names the state problem: {err}"
    );
    bench.assert_agree(&agent, false, "after a ban refused for a full disk");

    // Space again: the ban goes through.
    disk.free();
    bench.ban(&agent).expect("a ban with space on the disk");
    bench.assert_agree(&agent, true, "after a ban");

    // Disk full again. An unban appends one short line to the journal, which may still fit in
    // the page the journal already holds (tmpfs hands out whole pages): then it goes through
    // and is durable; otherwise it is refused, naming the state problem, and the ban stays
    // listed, saved and dropping. Either way API, saved list and kernel agree.
    disk.fill();
    let banned = match bench.unban(&agent) {
        Ok(_) => false,
        Err(e) => {
            let err = server_error(Err(e), "an unban on a full disk");
            assert!(
                err.contains("bans.journal") && err.contains("No space left on device"),
                "the error names the state problem: {err}"
            );
            true
        }
    };
    bench.assert_agree(&agent, banned, "after an unban on a full disk");

    // A restart (the disk still full) reads the same.
    let dir = agent.stop();
    let agent = AgentProcess::start_with_state_at(&pair.agent, &cfg, dir, disk.path());
    bench.assert_agree(&agent, banned, "after a restart on a full disk");

    // Space again: the unban goes through (if it had not), and a restart agrees.
    disk.free();
    if banned {
        bench
            .unban(&agent)
            .expect("an unban with space on the disk");
    }
    bench.assert_agree(&agent, false, "after the unban");
    let dir = agent.stop();
    let agent = AgentProcess::start_with_state_at(&pair.agent, &cfg, dir, disk.path());
    bench.assert_agree(&agent, false, "after the last restart");
    drop(agent);
    eprintln!("full-disk test took {:?}", started.elapsed());
}

#[test]
fn data_plane_errors_on_unban_leave_list_file_and_kernel_in_agreement() {
    require_root("XDP end-to-end tests");
    let started = Instant::now();
    let pair = NetnsPair::new(113);
    let cfg = xdp_config(&pair, "");
    let agent = AgentProcess::start(&pair.agent, &cfg);
    let bench = BanBench::new(&pair);
    bench.ban(&agent).expect("ban");
    bench.assert_agree(&agent, true, "after the ban");

    // The entry vanishes from the kernel behind the agent's back: the source passes though
    // the agent still lists the ban.
    let map = bpftool::agent_map_id(&pair.agent, &pair.veth_agent, "FNM_DROP_SRC_V4");
    bpftool::lpm_v4_delete(map, v4(pair.peer_v4), 32).expect("bpftool map delete");
    bench.assert_passes(&agent, "with the entry deleted behind the agent's back");
    // Unbanning asks for "nothing dropped", which holds: it succeeds and all agree.
    let lifted = bench
        .unban(&agent)
        .unwrap_or_else(|e| panic!("unban of an entry already gone: {e}\n{}", agent.log()));
    assert_eq!(lifted["prefix"], bench.prefix(), "{lifted:#}");
    bench.assert_agree(&agent, false, "after unbanning an entry already gone");
    assert!(
        agent.log().contains("was not in the kernel"),
        "the drift is logged:\n{}",
        agent.log()
    );

    // The kernel refuses to change the table (frozen map: EPERM on every delete).
    bench.ban(&agent).expect("ban again");
    bench.assert_agree(&agent, true, "after banning again");
    bpftool::freeze(map);
    let err = server_error(bench.unban(&agent), "an unban the kernel refuses");
    assert!(
        err.contains("data plane") && err.contains("FNM_DROP_SRC_V4"),
        "the error names the data plane: {err}"
    );
    assert!(
        err.contains("Operation not permitted"),
        "the error carries the kernel's answer: {err}"
    );
    bench.assert_agree(&agent, true, "after an unban the kernel refused");

    // A restart loads fresh maps: the saved ban is reinstated, and the unban goes through.
    let dir = agent.stop();
    let agent = AgentProcess::start_with_state(&pair.agent, &cfg, dir);
    bench.assert_agree(&agent, true, "after a restart");
    bench.unban(&agent).expect("unban after the restart");
    bench.assert_agree(&agent, false, "after the unban");
    eprintln!("data-plane test took {:?}", started.elapsed());
}

/// The prefixes saved in `state`: `bans.json` with the changes in `bans.journal` replayed.
fn saved_bans(state: &std::path::Path) -> Vec<String> {
    let mut bans: Vec<String> = match std::fs::read(state.join("bans.json")) {
        Ok(bytes) => serde_json::from_slice::<Vec<Value>>(&bytes)
            .expect("bans.json is a ban list")
            .iter()
            .map(|b| b["prefix"].as_str().unwrap().to_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading bans.json: {e}"),
    };
    let journal = std::fs::read_to_string(state.join("bans.journal")).unwrap_or_default();
    for line in journal.lines() {
        let change: Value = serde_json::from_str(line).expect("a journal line is JSON");
        match change["op"].as_str() {
            Some("add") => {
                let prefix = change["ban"]["prefix"].as_str().unwrap().to_owned();
                if !bans.contains(&prefix) {
                    bans.push(prefix);
                }
            }
            Some("remove") => {
                let prefix = change["prefix"].as_str().unwrap();
                bans.retain(|p| p != prefix);
            }
            other => panic!("unknown journal op {other:?}: {line}"),
        }
    }
    bans
}

// ---------------------------------------------------------------------------------------------
// More saved bans than the drop tables hold.

#[test]
fn more_saved_bans_than_the_tables_hold_start_with_the_important_ones_dropping() {
    require_root("XDP end-to-end tests");
    let pair = NetnsPair::new(117);
    // Six saved source bans, four table entries: the three manual bans and the newest
    // automatic one must be in the kernel, the other two listed but reported.
    let ban = |last: u8, origin: &str, created: u64| {
        json!({"prefix": format!("198.51.100.{last}/32"), "match": "src", "created": created,
               "expires": null, "origin": origin, "reason": "saved"})
    };
    let saved = json!([
        ban(1, "detection", 100),
        ban(2, "manual", 50),
        ban(3, "detection", 300),
        ban(4, "manual", 60),
        ban(5, "detection", 200),
        ban(6, "manual", 70),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("bans.json"), saved.to_string()).unwrap();
    let cfg = xdp_config(&pair, "").replace("[xdp]\n", "[xdp]\nmax_drop_entries = 4\n");
    let agent = AgentProcess::start_with_state(&pair.agent, &cfg, dir);
    let listed = agent.get("/api/v1/bans").unwrap();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(6),
        "all listed: {listed:#}"
    );
    let map = bpftool::agent_map_id(&pair.agent, &pair.veth_agent, "FNM_DROP_SRC_V4");
    let mut in_kernel = bpftool::lpm_v4_prefixes(map);
    in_kernel.sort();
    assert_eq!(
        in_kernel,
        [
            "198.51.100.2/32",
            "198.51.100.3/32",
            "198.51.100.4/32",
            "198.51.100.6/32"
        ],
        "manual bans and the newest automatic one:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("2 of 6 saved bans are NOT dropping"),
        "reported loudly:\n{}",
        agent.log()
    );
}
