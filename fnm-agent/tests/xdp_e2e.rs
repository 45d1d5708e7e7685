//! End to end on a real kernel: the built agent attached to a veth in a network namespace, traffic
//! of known count and size from the peer namespace, exact counts through the API, bans through the
//! CLI that make packets vanish before the receiving socket, and a real Prometheus scraping it.
//! Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, netns::*, require_root};
use serde_json::Value;
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// A UDP socket in the agent namespace counting what reaches it.
struct Receiver {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(ns: &str, bind: SocketAddr) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let sock = UdpSocket::bind(bind).expect("bind receiver");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if sock.recv_from(&mut buf).is_ok() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        rx.recv().unwrap();
        Self { count, stop }
    }

    fn received(&self) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn host(agent: &AgentProcess, ip: IpAddr) -> Value {
    agent
        .get(&format!("/api/v1/hosts/{ip}"))
        .expect("host query")
}

fn config(pair: &NetnsPair, mode: &str) -> String {
    format!(
        "networks = [\"{}/32\", \"{}/128\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"{mode}\"\n",
        pair.agent_v4, pair.agent_v6, pair.veth_agent
    )
}

fn exact_counts_and_bans(mode: &str, net: u8, with_prometheus: bool) {
    require_root("XDP end-to-end tests");
    let pair = NetnsPair::new(net);
    let agent = AgentProcess::start(&pair.agent, &config(&pair, mode));
    assert!(
        agent.log().contains(&format!("in {mode} mode")),
        "agent did not attach in {mode} mode:\n{}",
        agent.log()
    );
    let rx = Receiver::start(&pair.agent, SocketAddr::new(pair.agent_v4, 9999));

    let (v4, v6) = (pair.agent_v4, pair.agent_v6);
    NetnsPair::in_ns(&pair.peer, move || {
        send_udp(SocketAddr::new(v4, 9999), 10, 100);
        send_udp(SocketAddr::new(v6, 9999), 4, 50);
        send_syns(SocketAddr::new(v4, 81), 5);
        let IpAddr::V4(v4) = v4 else { unreachable!() };
        send_icmp_echo(v4, 3, 56);
    });
    assert_eq!(
        rx.received(),
        10,
        "all UDP datagrams reach the socket before any ban"
    );
    agent.settle();

    let h4 = host(&agent, pair.agent_v4);
    let inc = &h4["incoming"];
    assert_eq!(inc["udp"]["packets"], 10, "{h4:#}");
    assert_eq!(inc["udp"]["bytes"], 10 * (20 + 8 + 100), "{h4:#}");
    assert_eq!(inc["tcp"]["packets"], 5, "{h4:#}");
    assert_eq!(inc["tcp_syn_packets"], 5, "{h4:#}");
    assert_eq!(
        inc["tcp"]["bytes"],
        5 * 60,
        "Linux SYN = 20 IP + 40 TCP bytes: {h4:#}"
    );
    assert_eq!(inc["icmp"]["packets"], 3, "{h4:#}");
    assert_eq!(inc["icmp"]["bytes"], 3 * 84, "{h4:#}");
    assert_eq!(inc["packets"], 18, "{h4:#}");
    assert_eq!(inc["bytes"], 1280 + 300 + 252, "{h4:#}");
    assert_eq!(
        inc["flows"],
        1 + 5 + 1,
        "one UDP flow, 5 SYN source ports, one ICMP echo flow (type/code): {h4:#}"
    );

    let h6 = host(&agent, pair.agent_v6);
    assert_eq!(h6["incoming"]["udp"]["packets"], 4, "{h6:#}");
    assert_eq!(h6["incoming"]["udp"]["bytes"], 4 * (40 + 8 + 50), "{h6:#}");

    // A ban through the CLI: the packets vanish before the receiving socket and the drop
    // counter rises by exactly the number sent.
    let out = agent.cli(&["ban", &pair.peer_v4.to_string(), "--match", "src"]);
    assert!(out.contains("banned"), "{out}");
    let bans = agent.cli(&["bans"]);
    assert!(bans.contains(&format!("{}/32", pair.peer_v4)), "{bans}");
    let before = rx.received();
    NetnsPair::in_ns(&pair.peer, move || {
        send_udp(SocketAddr::new(v4, 9999), 20, 100)
    });
    assert_eq!(
        rx.received(),
        before,
        "banned packets must not reach the socket"
    );
    agent.settle();
    let listed = agent.get("/api/v1/bans").unwrap();
    assert_eq!(listed[0]["dropped_packets"], 20, "{listed:#}");
    assert_eq!(listed[0]["dropped_bytes"], 20 * 128, "{listed:#}");
    let metrics = agent.metrics_text();
    assert!(
        metrics.contains("fnm_xdp_dropped_packets_total{match=\"src\"} 20"),
        "{metrics}"
    );
    assert!(metrics.contains("fnm_bans_active 1"), "{metrics}");
    // The polls read the slots the packets above marked.
    let slot_reads = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fnm_xdp_poll_slot_reads_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(slot_reads.is_some_and(|n| n > 0), "{metrics}");
    // Dropped packets still count for the victim (detection keeps seeing the attack).
    assert_eq!(
        host(&agent, pair.agent_v4)["incoming"]["udp"]["packets"],
        30
    );

    let out = agent.cli(&["unban", &pair.peer_v4.to_string(), "--match", "src"]);
    assert!(out.contains("unbanned"), "{out}");
    NetnsPair::in_ns(&pair.peer, move || {
        send_udp(SocketAddr::new(v4, 9999), 5, 100)
    });
    assert_eq!(
        rx.received(),
        before + 5,
        "unbanned packets reach the socket again"
    );

    let hosts = agent.cli(&["hosts", "--top", "5"]);
    assert!(hosts.contains(&pair.agent_v4.to_string()), "{hosts}");

    promtool_check(&metrics);
    if with_prometheus {
        prometheus_scrape(&agent);
    }
}

#[test]
fn native_mode_exact_counts_bans_and_prometheus() {
    exact_counts_and_bans("native", 71, true);
}

#[test]
fn skb_mode_exact_counts_and_bans() {
    exact_counts_and_bans("skb", 72, false);
}

#[test]
fn api_rejects_bad_requests_with_json_errors() {
    require_root("XDP end-to-end tests");
    let pair = NetnsPair::new(73);
    let agent = AgentProcess::start(&pair.agent, &config(&pair, "skb"));
    for (method, path, body, status) in [
        (
            "POST",
            "/api/v1/bans",
            Some(serde_json::json!({"prefix": "nonsense", "match": "src"})),
            "400",
        ),
        (
            "POST",
            "/api/v1/bans",
            Some(serde_json::json!({"prefix": "10.0.0.0/8", "match": "sideways"})),
            "400",
        ),
        (
            "POST",
            "/api/v1/bans",
            Some(serde_json::json!({"prefix": "10.0.0.0/8"})),
            "400",
        ),
        ("DELETE", "/api/v1/bans/10.0.0.0%2F8?match=src", None, "404"),
        ("DELETE", "/api/v1/bans/10.0.0.0%2F8", None, "400"),
        ("GET", "/api/v1/hosts?sort=bogus", None, "400"),
        ("GET", "/api/v1/hosts/not-an-ip", None, "400"),
        ("GET", "/api/v1/nope", None, "404"),
    ] {
        let err = agent.request(method, path, body).expect_err(path);
        assert!(err.starts_with(status), "{method} {path}: {err}");
    }
    // The agent is still alive and well.
    assert!(agent.get("/api/v1/status").is_ok());
}

fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: run `cargo xtask setup --test-peers`");
    use std::io::Write;
    // promtool reads the classic text format; OpenMetrics' trailing # EOF is accepted.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn prometheus_scrape(agent: &AgentProcess) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fnm\n    static_configs:\n      - targets: ['{}']\n",
            agent.metrics
        ),
    )
    .unwrap();
    let listen = "127.0.0.1:19090";
    let mut prom = Command::new("ip")
        .args(["netns", "exec", &agent.ns, "prometheus"])
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package) must be installed");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut prom);
    let query = "/api/v1/query?query=fnm_traffic_packets_total%7Bdirection%3D%22incoming%22%2Cprotocol%3D%22udp%22%2Csource%3D%22xdp%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let ns = agent.ns.clone();
    loop {
        let q = query.to_owned();
        let ns2 = ns.clone();
        let answer = NetnsPair::in_ns(&ns2, move || {
            fnm_agent::client::request(listen.parse().unwrap(), "GET", &q, None).ok()
        });
        if let Some(v) = answer {
            if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
                // IPv4: 10 before the ban + 20 dropped + 5 after the unban; IPv6: 4.
                assert_eq!(value, "39", "Prometheus sees the agent's UDP total: {v:#}");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the agent"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn bans_keep_dropping_across_an_agent_kill_and_restart() {
    require_root("XDP end-to-end tests");
    let pair = NetnsPair::new(74);
    // `ip netns exec` gives the agent its own mount namespace (and a fresh /sys), so the test
    // mounts a bpffs of its own in the root mount namespace, where pins outlive the agent.
    let pin_dir = format!("/run/fnm-test-pins-{}", pair.veth_agent);
    std::fs::create_dir_all(&pin_dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", &pin_dir])
        .status()
        .unwrap();
    assert!(mounted.success(), "mount bpffs at {pin_dir}");
    struct RemovePins(String);
    impl Drop for RemovePins {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _pins = RemovePins(pin_dir.clone());
    let cfg = format!("{}pin_path = \"{pin_dir}\"\n", config(&pair, "skb"));
    let agent = AgentProcess::start(&pair.agent, &cfg);
    let rx = Receiver::start(&pair.agent, SocketAddr::new(pair.agent_v4, 9999));
    let v4 = pair.agent_v4;
    let send = |n| {
        NetnsPair::in_ns(&pair.peer, move || {
            send_udp(SocketAddr::new(v4, 9999), n, 100)
        })
    };

    let out = agent.cli(&[
        "ban",
        &pair.peer_v4.to_string(),
        "--match",
        "src",
        "--duration",
        "20s",
    ]);
    assert!(out.contains("banned"), "{out}");
    // 20 s: the kill and the restart must fit in it on a loaded machine (with 8 s the ban
    // expired once before the restarted agent was asked for it).
    let banned_at = Instant::now();
    send(10);
    assert_eq!(rx.received(), 0, "banned");

    // SIGKILL: no clean-up at all. The pinned program keeps dropping.
    let state = agent.kill();
    send(10);
    assert_eq!(rx.received(), 0, "still dropped while no agent runs");

    let agent = AgentProcess::start_with_state(&pair.agent, &cfg, state);
    assert!(
        agent.log().contains("took over the pinned link"),
        "{}",
        agent.log()
    );
    let bans = agent.get("/api/v1/bans").unwrap();
    assert_eq!(
        bans[0]["prefix"],
        format!("{}/32", pair.peer_v4),
        "{bans:#}"
    );
    send(10);
    assert_eq!(rx.received(), 0, "dropped after the restart");

    // The ban expires on time (20 s after it was made), then traffic passes.
    let deadline = banned_at + Duration::from_secs(30);
    while !agent
        .get("/api/v1/bans")
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the ban never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    send(10);
    assert_eq!(rx.received(), 10, "passes after the ban expired");
    let state = agent.stop();
    let left: Vec<_> = std::fs::read_dir(&pin_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("link-"))
                .collect()
        })
        .unwrap_or_default();
    let log = std::fs::read_to_string(state.path().join("agent.log")).unwrap_or_default();
    assert!(
        left.is_empty(),
        "a clean stop removes the pinned link: {left:?}\n{log}"
    );
}
