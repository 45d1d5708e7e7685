//! The libpcap backend live on a veth pair between two network namespaces this test creates
//! (and always removes): UDP, TCP and ICMP over IPv4 and IPv6 of known count and size are sent
//! from one namespace, captured in the other, and must arrive at the sink exactly.
//!
//! Needs root and iproute2 (`ip`), and python3 for the sender; fails loudly without them.
//! Neither namespace has a route out, the capture side has no address, and the sender has
//! static neighbour entries, so no packet can leave the namespaces.
#![cfg(all(target_os = "linux", feature = "pcap"))]

use fnm_agent::capture::{self, BackendKind, CaptureConfig, StopFlag};
use fnm_agent::traffic::TrafficRecord;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

const SENDER_V4: &str = "10.200.0.1";
const TARGET_V4: &str = "10.200.0.2";
const SENDER_V6: &str = "2001:db8:200::1";
const TARGET_V6: &str = "2001:db8:200::2";
const TARGET_MAC: &str = "02:00:00:00:c8:02";
/// Packets per kind, and the payload sizes used (packet i carries BASE + i bytes).
const PER_KIND: u64 = 7;
const BASE: u64 = 100;

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; removed on drop, even when the test panics.
struct Namespaces {
    capture_ns: String,
    sender_ns: String,
    capture_if: String,
}

impl Namespaces {
    fn create() -> Self {
        let id = std::process::id() % 100_000;
        let ns = Self {
            capture_ns: format!("fnm-capt-{id}-a"),
            sender_ns: format!("fnm-capt-{id}-b"),
            capture_if: format!("fncap{id}a"),
        };
        let sender_if = format!("fncap{id}b");
        // Leftovers of an earlier crashed run with the same pid are removed first.
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.capture_ns])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.sender_ns])
            .output();
        run(&["ip", "netns", "add", &ns.capture_ns]);
        run(&["ip", "netns", "add", &ns.sender_ns]);
        run(&[
            "ip",
            "link",
            "add",
            &ns.capture_if,
            "netns",
            &ns.capture_ns,
            "address",
            TARGET_MAC,
            "type",
            "veth",
            "peer",
            "name",
            &sender_if,
            "netns",
            &ns.sender_ns,
        ]);
        let a = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &ns.capture_ns];
            v.extend_from_slice(args);
            run(&v);
        };
        a(&["ip", "link", "set", "lo", "up"]);
        a(&["ip", "link", "set", &ns.capture_if, "up"]);
        let b = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &ns.sender_ns];
            v.extend_from_slice(args);
            run(&v);
        };
        b(&["ip", "link", "set", "lo", "up"]);
        b(&[
            "ip",
            "addr",
            "add",
            &format!("{SENDER_V4}/24"),
            "dev",
            &sender_if,
        ]);
        b(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{SENDER_V6}/64"),
            "dev",
            &sender_if,
            "nodad",
        ]);
        b(&["ip", "link", "set", &sender_if, "up"]);
        b(&[
            "ip",
            "neigh",
            "replace",
            TARGET_V4,
            "lladdr",
            TARGET_MAC,
            "dev",
            &sender_if,
            "nud",
            "permanent",
        ]);
        b(&[
            "ip",
            "-6",
            "neigh",
            "replace",
            TARGET_V6,
            "lladdr",
            TARGET_MAC,
            "dev",
            &sender_if,
            "nud",
            "permanent",
        ]);
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.capture_ns, &self.sender_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Sends PER_KIND packets of each kind from the sender namespace with python3 sockets.
fn send_traffic(sender_ns: &str) {
    let script = format!(
        r#"
import socket, struct
N, BASE = {PER_KIND}, {BASE}
d4, d6 = "{TARGET_V4}", "{TARGET_V6}"
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
t4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
t6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
i4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
i6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
for i in range(N):
    body = b"p" * (BASE + i)
    u4.sendto(body, (d4, 9000 + i))
    u6.sendto(body, (d6, 9000 + i))
    syn = struct.pack("!HHIIBBHHH", 40000 + i, 80, 1, 0, 0x50, 0x02, 65535, 0, 0)
    t4.sendto(syn, (d4, 0))
    t6.sendto(syn, (d6, 0))
    i4.sendto(struct.pack("!BBHHH", 8, 0, 0, 1, i) + body, (d4, 0))
    i6.sendto(struct.pack("!BBHHH", 128, 0, 0, 1, i) + body, (d6, 0))
"#
    );
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    run(&["ip", "netns", "exec", sender_ns, python, "-c", &script]);
}

/// (packets, IP bytes) per host the sender's traffic must produce.
fn expected() -> BTreeMap<String, (u64, u64)> {
    let mut v4 = (0, 0);
    let mut v6 = (0, 0);
    for i in 0..PER_KIND {
        let body = BASE + i;
        // UDP, TCP SYN (20-byte header), ICMP echo (8-byte header + body).
        for ip_bytes in [20 + 8 + body, 20 + 20, 20 + 8 + body] {
            v4.0 += 1;
            v4.1 += ip_bytes;
        }
        for ip_bytes in [40 + 8 + body, 40 + 20, 40 + 8 + body] {
            v6.0 += 1;
            v6.1 += ip_bytes;
        }
    }
    [
        (SENDER_V4, v4),
        (TARGET_V4, v4),
        (SENDER_V6, v6),
        (TARGET_V6, v6),
    ]
    .into_iter()
    .map(|(h, c)| (h.parse::<std::net::IpAddr>().unwrap().to_string(), c))
    .collect()
}

#[derive(Default)]
struct Seen {
    hosts: BTreeMap<String, (u64, u64)>,
    syn: u64,
    by_protocol: BTreeMap<u8, u64>,
}

#[test]
fn pcap_backend_counts_veth_traffic_exactly() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "capture_pcap_live needs root (network namespaces, packet capture); run it as root"
    );
    let ns = Namespaces::create();
    let netns = File::open(format!("/var/run/netns/{}", ns.capture_ns))
        .expect("open the capture namespace");
    let config = CaptureConfig {
        backend: BackendKind::Pcap,
        interfaces: vec![ns.capture_if.clone()],
        bpf_filter: Some(format!("host {SENDER_V4} or host {SENDER_V6}")),
        ..CaptureConfig::default()
    };
    let stop = StopFlag::new();
    let (opened_tx, opened_rx) = mpsc::channel();
    let capture_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: moves only this thread into the capture namespace.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let mut backend = match capture::open(&config) {
                Ok(b) => b,
                Err(e) => {
                    let _ = opened_tx.send(Err(e.to_string()));
                    return None;
                }
            };
            let _ = opened_tx.send(Ok(()));
            let mut seen = Seen::default();
            let mut sink = |_ts: Duration, r: TrafficRecord| {
                for ip in [r.src, r.dst] {
                    let e = seen.hosts.entry(ip.to_string()).or_default();
                    e.0 += r.packets;
                    e.1 += r.bytes;
                }
                seen.syn += r.tcp_syn_packets;
                *seen.by_protocol.entry(r.protocol).or_default() += 1;
            };
            let stats = backend.run(&mut sink, &stop).expect("capture runs");
            Some((seen, stats))
        })
    };
    opened_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("capture thread reports")
        .expect("pcap backend opens the veth");
    std::thread::sleep(Duration::from_millis(200));
    send_traffic(&ns.sender_ns);
    std::thread::sleep(Duration::from_millis(700));
    stop.stop();
    let (seen, stats) = capture_thread
        .join()
        .expect("capture thread")
        .expect("capture opened");
    drop(ns);

    assert_eq!(
        seen.hosts,
        expected(),
        "per-host packets and IP bytes; stats {stats:?}"
    );
    assert_eq!(seen.syn, 2 * PER_KIND, "SYN packets");
    let expected_protocols: BTreeMap<u8, u64> = [
        (1, PER_KIND),
        (6, 2 * PER_KIND),
        (17, 2 * PER_KIND),
        (58, PER_KIND),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen.by_protocol, expected_protocols);
    assert_eq!(stats.parse.malformed, 0, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
}
