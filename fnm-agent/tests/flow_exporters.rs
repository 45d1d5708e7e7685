//! Real exporters against the collector: a pcap with known per-host traffic (made with scapy)
//! is exported by `softflowd` as NetFlow v5, v9 and IPFIX and by `pmacctd` (sfprobe plugin,
//! unsampled) as sFlow v5, to collectors on 127.0.0.1 feeding a real `Accounting`; the per-host
//! packets and IP bytes must equal the pcap's exactly.
//!
//! Needs the Debian packages `softflowd`, `pmacct` and `python3-scapy`; fails loudly without.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fnm_agent::{
    accounting::{Accounting, Direction},
    flow::collector::{FlowCollectors, NetflowConfig, SflowConfig, TrafficSink},
};

/// One flow of the synthetic capture.
struct FlowSpec {
    src: &'static str,
    dst: &'static str,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    count: u64,
    payload: u64,
}

const FLOWS: &[FlowSpec] = &[
    FlowSpec {
        src: "198.51.100.1",
        dst: "10.10.0.1",
        protocol: 6,
        src_port: 40000,
        dst_port: 80,
        count: 40,
        payload: 100,
    },
    FlowSpec {
        src: "10.10.0.1",
        dst: "198.51.100.1",
        protocol: 6,
        src_port: 80,
        dst_port: 40000,
        count: 25,
        payload: 1200,
    },
    FlowSpec {
        src: "198.51.100.2",
        dst: "10.10.0.2",
        protocol: 17,
        src_port: 5353,
        dst_port: 53,
        count: 33,
        payload: 60,
    },
    FlowSpec {
        src: "203.0.113.9",
        dst: "10.10.0.2",
        protocol: 17,
        src_port: 123,
        dst_port: 123,
        count: 11,
        payload: 48,
    },
    FlowSpec {
        src: "10.10.0.3",
        dst: "203.0.113.5",
        protocol: 1,
        src_port: 0,
        dst_port: 0,
        count: 20,
        payload: 56,
    },
    FlowSpec {
        src: "10.10.7.7",
        dst: "10.10.0.1",
        protocol: 17,
        src_port: 9999,
        dst_port: 514,
        count: 7,
        payload: 300,
    },
    FlowSpec {
        src: "2001:db8::5",
        dst: "2001:db8:ffff::1",
        protocol: 17,
        src_port: 4000,
        dst_port: 4001,
        count: 9,
        payload: 500,
    },
    FlowSpec {
        src: "2001:db9::1",
        dst: "2001:db8::6",
        protocol: 6,
        src_port: 443,
        dst_port: 50000,
        count: 12,
        payload: 900,
    },
    // Filler between two non-local hosts, last in the capture: pmacctd 1.7.7 exits without
    // sending its last, partly filled sFlow datagram, so the capture ends with traffic no
    // host is credited for (it only adds to the totals).
    FlowSpec {
        src: "192.0.2.1",
        dst: "192.0.2.2",
        protocol: 17,
        src_port: 1,
        dst_port: 2,
        count: FILLER_PACKETS,
        payload: 10,
    },
];

/// Packets of the trailing non-local filler flow.
const FILLER_PACKETS: u64 = 40;

const GENERATOR: &str = r#"
import json, sys
from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP, Raw, wrpcap
spec = json.load(open(sys.argv[1]))
packets, index = [], 0
for flow in spec:
    for k in range(flow["count"]):
        size = flow["payload"] + (k % 7)
        if ":" in flow["src"]:
            l3 = IPv6(src=flow["src"], dst=flow["dst"])
        else:
            l3 = IP(src=flow["src"], dst=flow["dst"])
        if flow["proto"] == 6:
            l4 = TCP(sport=flow["sport"], dport=flow["dport"], flags="S" if k == 0 else "A")
        elif flow["proto"] == 17:
            l4 = UDP(sport=flow["sport"], dport=flow["dport"])
        else:
            l4 = ICMP(type=8, code=0)
        packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / l4 / Raw(b"x" * size)
        packet.time = 1700000000.0 + index * 0.002
        index += 1
        packets.append(packet)
wrpcap(sys.argv[2], packets)
"#;

/// Expected (host, direction) → (packets, IP bytes), for IPv4 only or both families.
fn expected(include_ipv6: bool) -> BTreeMap<(IpAddr, Direction), (u64, u64)> {
    let local = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets()[..2] == [10, 10],
        IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0xdb8],
    };
    let mut out = BTreeMap::new();
    for flow in FLOWS {
        let (src, dst): (IpAddr, IpAddr) = (flow.src.parse().unwrap(), flow.dst.parse().unwrap());
        if src.is_ipv6() && !include_ipv6 {
            continue;
        }
        let l3 = if src.is_ipv6() { 40 } else { 20 };
        let l4 = if flow.protocol == 6 { 20 } else { 8 };
        let bytes: u64 = (0..flow.count)
            .map(|k| l3 + l4 + flow.payload + k % 7)
            .sum();
        for (host, direction) in [(dst, Direction::Incoming), (src, Direction::Outgoing)] {
            if local(host) {
                let entry = out.entry((host, direction)).or_insert((0, 0));
                entry.0 += flow.count;
                entry.1 += bytes;
            }
        }
    }
    out
}

fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file();
    assert!(
        found,
        "\n\n*** this test needs `{tool}` (Debian package `{package}`): apt-get install {package} ***\n"
    );
}

/// The Python with scapy (Debian's `python3-scapy` lives in /usr/bin/python3).
fn scapy_python() -> &'static str {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import scapy.all"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return python;
        }
    }
    panic!("\n\n*** this test needs scapy (Debian package `python3-scapy`) ***\n");
}

/// Writes the synthetic capture into `dir` and returns its path.
fn make_pcap(dir: &Path) -> std::path::PathBuf {
    let spec: Vec<serde_json::Value> = FLOWS
        .iter()
        .map(|f| {
            serde_json::json!({"src": f.src, "dst": f.dst, "proto": f.protocol,
                "sport": f.src_port, "dport": f.dst_port, "count": f.count, "payload": f.payload})
        })
        .collect();
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let script = dir.join("generate.py");
    std::fs::write(&script, GENERATOR).unwrap();
    let pcap = dir.join("traffic.pcap");
    let output = Command::new(scapy_python())
        .arg(&script)
        .arg(&spec_path)
        .arg(&pcap)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "pcap generation failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    pcap
}

struct Harness {
    accounting: Arc<Mutex<Accounting>>,
    collectors: FlowCollectors,
    _dir: tempfile::TempDir,
    pcap: std::path::PathBuf,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let pcap = make_pcap(dir.path());
    let networks = ["10.10.0.0/16", "2001:db8::/32"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let accounting = Arc::new(Mutex::new(Accounting::new(networks, 10_000, 10_000, 1000)));
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut sflow = SflowConfig::listening_on(vec![localhost]);
    sflow.workers = 2;
    let mut netflow = NetflowConfig::listening_on(vec![localhost]);
    netflow.workers = 2;
    let sink: Arc<dyn TrafficSink> = accounting.clone();
    let collectors =
        FlowCollectors::start(&sflow, &netflow, Some(dir.path()), sink).expect("collectors start");
    Harness {
        accounting,
        collectors,
        _dir: dir,
        pcap,
    }
}

impl Harness {
    fn per_host(&self) -> BTreeMap<(IpAddr, Direction), (u64, u64)> {
        let accounting = self.accounting.lock().unwrap();
        let mut out = BTreeMap::new();
        for (ip, host) in accounting.hosts() {
            for direction in Direction::ALL {
                let total = &host.dirs()[direction.index()].total();
                if total.packets > 0 {
                    out.insert((*ip, direction), (total.packets, total.bytes));
                }
            }
        }
        out
    }

    /// Waits until the accounting equals `want` (or times out) and asserts it.
    fn assert_accounts(&self, want: &BTreeMap<(IpAddr, Direction), (u64, u64)>, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.per_host();
            if &got == want {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: per-host accounting differs from the pcap\n got:  {got:?}\n want: {want:?}\n decode errors: {:?}",
                    self.collectors.metrics().errors_by_reason()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn run_softflowd(version: &str, expect_protocol: &'static str, include_ipv6: bool) {
    require_tool("softflowd", "softflowd");
    let harness = harness();
    let target = harness.collectors.netflow_addrs()[0];
    let output = Command::new("softflowd")
        .args(["-d", "-r"])
        .arg(&harness.pcap)
        .args(["-n", &target.to_string(), "-v", version])
        .output()
        .expect("run softflowd");
    let log = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "softflowd failed: {log}");
    harness.assert_accounts(&expected(include_ipv6), &format!("softflowd -v {version}"));
    let metrics = harness.collectors.metrics();
    let counts = metrics.protocol_total(expect_protocol);
    assert!(counts.datagrams > 0, "{log}");
    assert!(metrics.errors_by_reason().is_empty());
    assert_eq!(counts.unknown_template_sets, 0);
    assert_eq!(counts.sequence_lost, 0);
}

#[test]
fn softflowd_netflow_v5_matches_the_pcap() {
    // NetFlow v5 carries IPv4 only: the IPv6 hosts must not appear.
    run_softflowd("5", "netflow5", false);
}

#[test]
fn softflowd_netflow_v9_matches_the_pcap() {
    run_softflowd("9", "netflow9", true);
}

#[test]
fn softflowd_ipfix_matches_the_pcap() {
    run_softflowd("10", "ipfix", true);
}

#[test]
fn pmacct_sflow_matches_the_pcap() {
    require_tool("pmacctd", "pmacct");
    let harness = harness();
    let target = harness.collectors.sflow_addrs()[0];
    let config = harness._dir.path().join("pmacctd.conf");
    std::fs::write(
        &config,
        format!(
            "daemonize: false\npcap_savefile: {}\nplugins: sfprobe\nsfprobe_receiver: {target}\nsfprobe_agentip: 127.0.0.1\nsampling_rate: 1\n",
            harness.pcap.display()
        ),
    )
    .unwrap();
    let output = Command::new("pmacctd")
        .arg("-f")
        .arg(&config)
        .output()
        .expect("run pmacctd");
    let log = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    // At the end of a savefile pmacctd's core and its sfprobe plugin race to shut down; when
    // the plugin goes first the core logs "connection lost" and exits non-zero although every
    // sample was sent (seen under load in CI). What was exported decides, below.
    let clean_end =
        log.contains("Shutting down on user request") || log.contains("no more plugins active");
    assert!(
        output.status.success() || clean_end,
        "pmacctd failed ({}): {log}",
        output.status
    );
    if !output.status.success() {
        eprintln!("note: pmacctd exited with {}:\n{log}", output.status);
    }
    harness.assert_accounts(&expected(true), "pmacctd sfprobe");
    let metrics = harness.collectors.metrics();
    let counts = metrics.protocol_total("sflow");
    let packets: u64 = FLOWS.iter().map(|f| f.count).sum();
    assert!(
        counts.records > packets - FILLER_PACKETS && counts.records <= packets,
        "one flow sample per packet at 1:1: {} samples for {packets} packets",
        counts.records
    );
    assert!(metrics.errors_by_reason().is_empty());
    assert_eq!(counts.sequence_lost, 0);
}
