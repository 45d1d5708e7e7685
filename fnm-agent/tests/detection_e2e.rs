//! Detection and mitigation end to end on the XDP path, in network namespaces: a flood from the
//! peer crosses a threshold, the notify script is called with FastNetMon's arguments and a report
//! on stdin, the XDP rule drops the flood while a TCP exchange with the same victim keeps working,
//! and after the flood stops and the ban time passes the rule is gone and `unban` runs.
//! Needs root.
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, netns::*, require_root};
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

fn join_ns(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: setns on the calling thread only.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
}

/// A UDP socket and a TCP echo server on the victim, counting what reaches them.
struct Victim {
    udp_received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Victim {
    fn start(ns: &str, ip: IpAddr) -> Self {
        let udp_received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, ns1) = (udp_received.clone(), stop.clone(), ns.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            join_ns(&ns1);
            let sock = UdpSocket::bind(SocketAddr::new(ip, 9999)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
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
        let (s, ns2, tx2) = (stop.clone(), ns.to_owned(), {
            let (tx, rx) = std::sync::mpsc::channel();
            (tx, rx)
        });
        let (tx2, rx2) = tx2;
        std::thread::spawn(move || {
            join_ns(&ns2);
            let l = TcpListener::bind(SocketAddr::new(ip, 8080)).unwrap();
            l.set_nonblocking(true).unwrap();
            tx2.send(()).unwrap();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 65536];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        rx2.recv().unwrap();
        Self { udp_received, stop }
    }

    fn udp(&self) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        self.udp_received.load(Ordering::SeqCst)
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Floods from the peer: UDP from source port 53 (a DNS reflection) at about `pps`.
fn flood(
    peer: &str,
    to: SocketAddr,
    pps: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let peer = peer.to_owned();
    std::thread::spawn(move || {
        join_ns(&peer);
        let s = UdpSocket::bind("0.0.0.0:53").expect("bind source port 53");
        let payload = [0x42u8; 400];
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
            while sent < due {
                let _ = s.send_to(&payload, to);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    })
}

/// One TCP echo exchange with the victim from the peer; true when it round-trips.
fn tcp_exchange(peer: &str, to: SocketAddr) -> bool {
    let peer = peer.to_owned();
    NetnsPair::in_ns(&peer, move || {
        let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let msg = b"hello through the flood";
        if c.write_all(msg).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < msg.len() {
            match c.read(&mut buf[got..]) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got += n,
            }
        }
        &buf[..got] == msg
    })
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn flood_is_detected_scripted_dropped_surgically_and_unbanned() {
    require_root("detection end-to-end tests");
    let pair = NetnsPair::new(81);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("script.log");
    let script = dir.path().join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"ARGS $1 $2 $3 $4\" >> {log}\ncat >> {log}\necho END >> {log}\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "networks = [\"{}/32\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [detection.incoming]\nudp_pps = 2000\ntcp_syn_pps = 1000\n\
         [ban]\ntime = \"3s\"\nstop_after = \"1s\"\nactions = [\"xdp_rule\", \"script\"]\nscript = \"{}\"\n",
        pair.agent_v4,
        pair.veth_agent,
        script.display()
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let victim = Victim::start(&pair.agent, pair.agent_v4);
    let udp_target = SocketAddr::new(pair.agent_v4, 9999);
    let tcp_target = SocketAddr::new(pair.agent_v4, 8080);
    assert!(
        tcp_exchange(&pair.peer, tcp_target),
        "TCP works before the flood"
    );

    // 10000 pps = 5x the UDP threshold.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sender = flood(&pair.peer, udp_target, 10_000, stop.clone());

    let ban_line = wait_for(
        "the notify script's ban call",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains(" ban\n"))
        },
    );
    let detection = started.elapsed();
    assert!(
        ban_line.contains(&format!("ARGS {} incoming ", pair.agent_v4)),
        "FastNetMon-style arguments: {ban_line}"
    );
    assert!(
        ban_line.contains("Attack type: dns_amplification"),
        "report on stdin: {ban_line}"
    );
    assert!(
        detection < Duration::from_secs(3),
        "detected after {detection:?}"
    );

    // The rule drops the flood: the victim's UDP socket stops receiving...
    std::thread::sleep(Duration::from_millis(500));
    let before = victim.udp();
    std::thread::sleep(Duration::from_secs(1));
    let after = victim.udp();
    assert!(
        after - before < 50,
        "flood still reaching the socket: {before} -> {after}"
    );
    // ...while a legitimate TCP exchange with the same victim keeps working.
    assert!(
        tcp_exchange(&pair.peer, tcp_target),
        "TCP through the flood"
    );

    let attacks = agent.get("/api/v1/attacks").unwrap();
    let a = &attacks[0];
    assert_eq!(
        a["fingerprint"]["attack_type"], "dns_amplification",
        "{a:#}"
    );
    assert_eq!(a["threshold"]["rate"], "udp_pps", "{a:#}");
    assert!(
        a["peak_rates"]["udp_pps"].as_f64().unwrap() > 5000.0,
        "true peak rate: {a:#}"
    );
    assert!(!a["top_flows"].as_array().unwrap().is_empty(), "{a:#}");
    assert!(
        !a["samples"].as_array().unwrap().is_empty(),
        "kernel samples: {a:#}"
    );
    let mitigations = agent.get("/api/v1/mitigations").unwrap();
    assert_eq!(
        mitigations[0]["actions"][0]["applied"]["rules"][0]["src_port"], 53,
        "{mitigations:#}"
    );
    let metrics = agent.metrics_text();
    assert!(
        !metrics.contains("fnm_xdp_dropped_packets_total{match=\"rule\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fnm_script_calls_total{result=\"succeeded\"} 1"),
        "the ban call is counted: {metrics}"
    );

    // Flood stops; after ban time (3 s) and the stop hysteresis (1 s), unban.
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().unwrap();
    assert!(sent > 10_000);
    wait_for("the unban call", Duration::from_secs(15), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains(" unban\n"))
    });
    wait_for(
        "the mitigation to be lifted",
        Duration::from_secs(5),
        || {
            let m = agent.get("/api/v1/mitigations").unwrap();
            m.as_array().unwrap().is_empty().then_some(())
        },
    );
    // UDP from port 53 passes again.
    let before = victim.udp();
    let stop2 = Arc::new(AtomicBool::new(false));
    let s2 = flood(&pair.peer, udp_target, 200, stop2.clone());
    std::thread::sleep(Duration::from_millis(500));
    stop2.store(true, Ordering::SeqCst);
    let sent2 = s2.join().unwrap();
    assert!(
        victim.udp() - before >= sent2 - 5,
        "after unban the packets pass"
    );
    let attacks = agent.get("/api/v1/attacks").unwrap();
    assert!(attacks[0]["ended_unix_ms"].is_u64(), "{attacks:#}");
}

#[test]
fn tcp_transfer_under_thresholds_never_bans() {
    require_root("detection end-to-end tests");
    let pair = NetnsPair::new(82);
    let config = format!(
        "networks = [\"{}/32\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [detection.incoming]\nudp_pps = 2000\ntcp_syn_pps = 1000\nflows_per_second = 500\n\
         [ban]\nactions = [\"xdp_blackhole\"]\n",
        pair.agent_v4, pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let _victim = Victim::start(&pair.agent, pair.agent_v4);
    let to = SocketAddr::new(pair.agent_v4, 8080);
    // A bulk transfer: tens of thousands of TCP packets per second, one flow, one SYN.
    let moved = NetnsPair::in_ns(&pair.peer, move || {
        let mut c = TcpStream::connect(to).unwrap();
        let mut r = c.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            total
        });
        let chunk = vec![7u8; 1 << 16];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            c.write_all(&chunk).unwrap();
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        reader.join().unwrap()
    });
    assert!(moved > 10_000_000, "moved only {moved} bytes");
    agent.settle();
    let attacks = agent.get("/api/v1/attacks").unwrap();
    assert_eq!(attacks.as_array().unwrap().len(), 0, "{attacks:#}");
    assert_eq!(
        agent.get("/api/v1/bans").unwrap().as_array().unwrap().len(),
        0
    );
    let host = agent
        .get(&format!("/api/v1/hosts/{}", pair.agent_v4))
        .unwrap();
    assert!(
        host["incoming"]["tcp"]["packets"].as_u64().unwrap() > 1000,
        "{host:#}"
    );
}

/// Sends `count` UDP packets per source from the current namespace with spoofed source
/// addresses (raw socket, IP_HDRINCL) to `to`.
fn send_spoofed(sources: &[Ipv4Addr], to: SocketAddrV4, count: usize) {
    use common::frames::{ipv4, udp};
    // SAFETY: plain socket calls with valid arguments; the fd is closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        for _ in 0..count {
            for src in sources {
                let pkt = ipv4(*src, *to.ip(), 17, &[], 0, &udp(123, to.port(), 200));
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
            }
        }
        libc::close(fd);
    }
}

#[test]
fn source_drops_spare_whitelisted_and_skip_spoofed_floods() {
    require_root("detection end-to-end tests");
    let pair = NetnsPair::new(83);
    let IpAddr::V4(victim) = pair.agent_v4 else {
        unreachable!()
    };
    let config = format!(
        "networks = [\"{}/32\"]\nwhitelist = [\"198.51.100.0/24\"]\n\
         [xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [detection.incoming]\nudp_pps = 2000\n\
         [ban]\nactions = [\"xdp_source\"]\nmax_source_drops = 8\nsample_one_in = 1\n",
        pair.agent_v4, pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let to = SocketAddrV4::new(victim, 9999);

    // A reflection from three real sources, one of them whitelisted: 3 x 2000 packets in 1 s.
    let few = [
        Ipv4Addr::new(203, 0, 113, 1),
        Ipv4Addr::new(203, 0, 113, 2),
        Ipv4Addr::new(198, 51, 100, 9),
    ];
    for _ in 0..10 {
        NetnsPair::in_ns(&pair.peer, move || send_spoofed(&few, to, 200));
        std::thread::sleep(Duration::from_millis(100));
    }
    let bans = wait_for("source drops", Duration::from_secs(10), || {
        let b = agent.get("/api/v1/bans").unwrap();
        (!b.as_array().unwrap().is_empty()).then_some(b)
    });
    let banned: Vec<String> = bans
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["prefix"].as_str().unwrap().to_owned())
        .collect();
    assert!(banned.contains(&"203.0.113.1/32".to_owned()), "{bans:#}");
    assert!(banned.contains(&"203.0.113.2/32".to_owned()), "{bans:#}");
    assert!(
        !banned.iter().any(|p| p.starts_with("198.51.100.")),
        "a whitelisted source was dropped: {bans:#}"
    );
    drop(agent);

    // A spoofed flood (hundreds of sources, the whitelisted range among them): no source drops.
    let pair2 = NetnsPair::new(84);
    let IpAddr::V4(victim2) = pair2.agent_v4 else {
        unreachable!()
    };
    let config2 = config
        .replace(&pair.agent_v4.to_string(), &pair2.agent_v4.to_string())
        .replace(&pair.veth_agent, &pair2.veth_agent);
    let agent2 = AgentProcess::start(&pair2.agent, &config2);
    let to2 = SocketAddrV4::new(victim2, 9999);
    let spoofed: Vec<Ipv4Addr> = (0..400u32)
        .map(|i| Ipv4Addr::new(198, 51, (100 + i / 250) as u8, (i % 250) as u8 + 1))
        .collect();
    for _ in 0..10 {
        let s = spoofed.clone();
        NetnsPair::in_ns(&pair2.peer, move || send_spoofed(&s, to2, 1));
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("the attack record", Duration::from_secs(10), || {
        let a = agent2.get("/api/v1/attacks").unwrap();
        (!a.as_array().unwrap().is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let bans = agent2.get("/api/v1/bans").unwrap();
    assert!(
        bans.as_array().unwrap().is_empty(),
        "spoofed flood caused source drops: {bans:#}"
    );
}

/// The value of one series in a `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn whitelisted_source_flood_over_xdp_opens_no_attack_and_another_source_does() {
    require_root("detection end-to-end tests");
    let pair = NetnsPair::new(86);
    let IpAddr::V4(victim) = pair.agent_v4 else {
        unreachable!()
    };
    let config = format!(
        "networks = [\"{}/32\"]\n\
         [xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [detection]\nwhitelist_sources = [\"198.51.100.0/24\", \"2001:db8:5::/48\"]\n\
         [detection.incoming]\npps = 2000\n",
        pair.agent_v4, pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let to = SocketAddrV4::new(victim, 9999);
    // About 4000 packets/s for 2 s (twice the threshold) from one source.
    let flood_from = |source: Ipv4Addr| {
        for _ in 0..20 {
            NetnsPair::in_ns(&pair.peer, move || send_spoofed(&[source], to, 400));
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // The whitelisted source: counted apart, no attack.
    flood_from(Ipv4Addr::new(198, 51, 100, 9));
    agent.settle();
    let attacks = agent.get("/api/v1/attacks").unwrap();
    assert!(
        attacks.as_array().unwrap().is_empty(),
        "a whitelisted source opened an attack: {attacks:#}"
    );
    let host = agent
        .get(&format!("/api/v1/hosts/{}", pair.agent_v4))
        .unwrap();
    let incoming = &host["incoming"];
    let white = incoming["whitelisted_packets"].as_u64().unwrap();
    assert!(white >= 7000, "{host:#}");
    assert_eq!(
        incoming["whitelisted_bytes"].as_u64().unwrap(),
        white * 228,
        "{host:#}"
    );
    assert!(incoming["packets"].as_u64().unwrap() < 100, "{host:#}");
    assert!(incoming["pps"].as_f64().unwrap() < 100.0, "{host:#}");
    // The totals still count it, and so does the global counter.
    let metrics = agent.metrics_text();
    let udp_in = metric(
        &metrics,
        "fnm_traffic_packets_total{direction=\"incoming\",protocol=\"udp\",source=\"xdp\"}",
    );
    assert!(udp_in >= white, "{udp_in} < {white}: {metrics}");
    let counted = metric(&metrics, "fnm_xdp_source_whitelisted_packets_total");
    assert!(counted >= white, "{counted} < {white}: {metrics}");
    assert!(
        metric(&metrics, "fnm_xdp_source_whitelisted_bytes_total") >= white * 228,
        "{metrics}"
    );

    // The same flood from a source that is not whitelisted opens an attack on the victim.
    flood_from(Ipv4Addr::new(203, 0, 113, 9));
    let attacks = wait_for("the attack record", Duration::from_secs(10), || {
        let a = agent.get("/api/v1/attacks").unwrap();
        (!a.as_array().unwrap().is_empty()).then_some(a)
    });
    let a = &attacks[0];
    assert_eq!(a["host"], pair.agent_v4.to_string(), "{a:#}");
    assert_eq!(a["direction"], "incoming", "{a:#}");
    assert_eq!(attacks.as_array().unwrap().len(), 1, "{attacks:#}");
    // Its packets counted toward the rates, not as whitelisted.
    let host = agent
        .get(&format!("/api/v1/hosts/{}", pair.agent_v4))
        .unwrap();
    assert!(
        host["incoming"]["packets"].as_u64().unwrap() >= 7000,
        "{host:#}"
    );
    assert_eq!(
        host["incoming"]["whitelisted_packets"].as_u64().unwrap(),
        white,
        "{host:#}"
    );
}
