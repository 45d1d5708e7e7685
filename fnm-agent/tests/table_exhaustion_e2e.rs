//! Blinding by host-table exhaustion (issue 12, item 1), reproduced against the real agent.
//!
//! A spoofed NetFlow v5/v9 stream names a million distinct local destinations, one packet
//! each, as fast as the test can send it. Before the bounded table, that filled the agent's
//! host table within seconds and every new host was then ignored for an hour: a real victim
//! flooded from another exporter showed 0 packets and no attack. Here the victim's attack must
//! be detected within 2 s of its flood's start, the agent's peak RSS must stay under a bound
//! (64 MiB + 2 KiB per host the table may hold + twice the engine's input bound, see
//! `Scenario::rss_bound`), and the eviction metrics must show the churn. Two shapes of the
//! attack:
//!
//! * one spoofed exporter address: it churns inside its own budget
//!   (`accounting.max_hosts_per_exporter`), the rest of the table is untouched;
//! * sixteen spoofed exporter addresses, together four times the table: the whole table is under
//!   pressure, and one-packet hosts churn through probation and the idle queue while the
//!   victim, with real traffic, gets in and stays.
//!
//! Runs the agent in a network namespace (root); all traffic is on that namespace's loopback.
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, flood::unix_now, netns::NetnsPair, require_root};
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The agent's NetFlow collector (inside the namespace).
const COLLECTOR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2055);
/// Distinct local destinations the spoofed stream names (10.0.0.0 upwards, then again).
const SPOOFED_HOSTS: u32 = 1_000_000;
/// Records per datagram, v5 and v9.
const RECORDS: usize = 30;
/// Datagrams per `sendmmsg`.
const BURST: usize = 64;
/// The real victim: never named by the spoofed stream.
const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The real exporter.
const REAL_EXPORTER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// The victim's threshold.
const THRESHOLD_PPS: u64 = 20_000;
/// The victim's flood: 300 000 pps, 15 times the threshold, reported every 10 ms in records
/// that each cover those 10 ms (so it shows at its true rate even if most of its datagrams were
/// lost in the collector's socket, which the spoofed stream overflows).
const VICTIM_PACKETS_PER_RECORD: u32 = 100;
const VICTIM_EVERY: Duration = Duration::from_millis(10);
/// Longest the spoofed stream runs.
const SPOOF_FOR: Duration = Duration::from_secs(25);
/// Detection bound from the flood's first datagram.
const DETECT_WITHIN_S: f64 = 2.0;

/// A NetFlow v5 datagram: `records` flows, each to `dst(i)` with `packets` packets over the
/// `duration_ms` before `uptime_ms`.
fn netflow_v5(
    seq: u32,
    uptime_ms: u32,
    dst: impl Fn(usize) -> Ipv4Addr,
    packets: u32,
    duration_ms: u32,
) -> Vec<u8> {
    let mut d = Vec::with_capacity(24 + RECORDS * 48);
    d.extend_from_slice(&5u16.to_be_bytes());
    d.extend_from_slice(&(RECORDS as u16).to_be_bytes());
    d.extend_from_slice(&uptime_ms.to_be_bytes());
    d.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 0]); // engine type/id, sampling (none)
    for i in 0..RECORDS {
        d.extend_from_slice(&[198, 51, 100, 1 + i as u8]);
        d.extend_from_slice(&dst(i).octets());
        d.extend_from_slice(&[0; 4]); // next hop
        d.extend_from_slice(&[0, 1, 0, 2]); // input, output
        d.extend_from_slice(&packets.to_be_bytes());
        d.extend_from_slice(&(packets * 100).to_be_bytes());
        d.extend_from_slice(&(uptime_ms - duration_ms).to_be_bytes()); // first
        d.extend_from_slice(&uptime_ms.to_be_bytes()); // last
        d.extend_from_slice(&123u16.to_be_bytes());
        d.extend_from_slice(&40000u16.to_be_bytes());
        d.extend_from_slice(&[0, 0, 17, 0]); // pad, tcp flags, protocol, tos
        d.extend_from_slice(&[0; 8]); // AS numbers, masks, pad
    }
    d
}

/// NetFlow v9 template 300: source, destination, packets, bytes, protocol (17 bytes a record).
const V9_FIELDS: [(u16, u16); 5] = [(8, 4), (12, 4), (2, 4), (1, 4), (4, 1)];
const V9_RECORD: usize = 17;

fn netflow_v9_header(d: &mut Vec<u8>, count: u16, seq: u32) {
    d.extend_from_slice(&9u16.to_be_bytes());
    d.extend_from_slice(&count.to_be_bytes());
    d.extend_from_slice(&10_000u32.to_be_bytes());
    d.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&7u32.to_be_bytes()); // source id
}

fn netflow_v9_template(seq: u32) -> Vec<u8> {
    let mut d = Vec::new();
    netflow_v9_header(&mut d, 1, seq);
    d.extend_from_slice(&0u16.to_be_bytes());
    d.extend_from_slice(&((8 + 4 * V9_FIELDS.len()) as u16).to_be_bytes());
    d.extend_from_slice(&300u16.to_be_bytes());
    d.extend_from_slice(&(V9_FIELDS.len() as u16).to_be_bytes());
    for (id, len) in V9_FIELDS {
        d.extend_from_slice(&id.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
    }
    d
}

fn netflow_v9_data(seq: u32, dst: impl Fn(usize) -> Ipv4Addr) -> Vec<u8> {
    let mut d = Vec::new();
    netflow_v9_header(&mut d, RECORDS as u16, seq);
    let body = RECORDS * V9_RECORD;
    let padded = (4 + body).div_ceil(4) * 4;
    d.extend_from_slice(&300u16.to_be_bytes());
    d.extend_from_slice(&(padded as u16).to_be_bytes());
    for i in 0..RECORDS {
        d.extend_from_slice(&[198, 51, 100, 1 + i as u8]);
        d.extend_from_slice(&dst(i).octets());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&64u32.to_be_bytes());
        d.push(17);
    }
    d.resize(20 + padded, 0);
    d
}

/// The `n`-th spoofed destination.
fn spoofed(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + n % SPOOFED_HOSTS)
}

/// Sends `datagrams` on the connected socket `fd` in one `sendmmsg`; how many went.
fn send_burst(fd: i32, datagrams: &[Vec<u8>]) -> usize {
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data.
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; datagrams.len()];
    for (h, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at iovecs over buffers that outlive the call.
    let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as u32, 0) };
    n.max(0) as usize
}

/// What the spoofed stream did.
#[derive(Debug, Default, Clone, Copy)]
struct SpoofReport {
    datagrams: u64,
    records: u64,
    elapsed: Duration,
}

/// Starts the spoofed stream from `exporters` (round robin, a socket each), alternating bursts
/// of v5 and v9, as fast as it can until `stop` or [`SPOOF_FOR`].
fn spoof(ns: &str, exporters: Vec<Ipv4Addr>, stop: Arc<AtomicBool>) -> JoinHandle<SpoofReport> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let sockets: Vec<UdpSocket> = exporters
            .iter()
            .map(|a| {
                let s = UdpSocket::bind(SocketAddrV4::new(*a, 0)).expect("bind spoofer");
                s.connect(COLLECTOR).expect("connect");
                s
            })
            .collect();
        let start = Instant::now();
        let mut report = SpoofReport::default();
        let mut next = 0u32;
        let mut seq = vec![(0u32, 0u32); sockets.len()];
        let mut burst = 0usize;
        let mut buffers: Vec<Vec<u8>> = Vec::with_capacity(BURST);
        while !stop.load(Ordering::Relaxed) && start.elapsed() < SPOOF_FOR {
            let which = burst % sockets.len();
            let v9 = (burst / sockets.len()) % 2 == 1;
            let (v5_seq, v9_seq) = &mut seq[which];
            buffers.clear();
            if v9 && (burst / sockets.len()) % 64 == 1 {
                buffers.push(netflow_v9_template(*v9_seq));
                *v9_seq += 1;
            }
            while buffers.len() < BURST {
                let base = next;
                next = next.wrapping_add(RECORDS as u32);
                if v9 {
                    buffers.push(netflow_v9_data(*v9_seq, |i| spoofed(base + i as u32)));
                    *v9_seq += 1;
                } else {
                    let uptime = 10_000 + start.elapsed().as_millis() as u32;
                    buffers.push(netflow_v5(
                        *v5_seq,
                        uptime,
                        |i| spoofed(base + i as u32),
                        1,
                        0,
                    ));
                    *v5_seq += RECORDS as u32;
                }
            }
            let sent = send_burst(sockets[which].as_raw_fd(), &buffers);
            report.datagrams += sent as u64;
            report.records += (sent * RECORDS) as u64;
            burst += 1;
        }
        report.elapsed = start.elapsed();
        report
    })
}

/// What the victim's exporter did.
#[derive(Debug, Clone, Copy)]
struct VictimReport {
    started_unix: f64,
    datagrams: u64,
}

/// Starts the victim's flood, reported by [`REAL_EXPORTER`], for `duration`.
fn victim_flood(ns: &str, duration: Duration) -> JoinHandle<VictimReport> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let s = UdpSocket::bind(SocketAddrV4::new(REAL_EXPORTER, 0)).expect("bind exporter");
        s.connect(COLLECTOR).expect("connect");
        let every_ms = VICTIM_EVERY.as_millis() as u32;
        let started_unix = unix_now();
        let start = Instant::now();
        let mut datagrams = 0u64;
        while start.elapsed() < duration {
            let uptime = 50_000 + start.elapsed().as_millis() as u32;
            let d = netflow_v5(
                datagrams as u32 * RECORDS as u32,
                uptime,
                |_| VICTIM,
                VICTIM_PACKETS_PER_RECORD,
                every_ms,
            );
            s.send(&d).expect("send");
            datagrams += 1;
            let due = VICTIM_EVERY * datagrams as u32;
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        VictimReport {
            started_unix,
            datagrams,
        }
    })
}

/// The value of the sample `series` (name and labels exactly as exposed) in /metrics text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `VmRSS` or `VmHWM` of `pid` in bytes.
fn proc_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct Scenario {
    net: u8,
    /// Spoofed exporter addresses.
    exporters: Vec<Ipv4Addr>,
    max_hosts: u32,
    per_exporter: u32,
    /// Eviction reasons that must show the churn.
    churn: &'static [&'static str],
}

impl Scenario {
    /// The peak RSS allowed: 64 MiB for the agent itself (about 25 MiB at rest, plus the
    /// collectors' receive buffers and allocator slack under load), 2 KiB for every host the
    /// table may hold (`tests/host_memory.rs` measures at most 1,360 bytes), and twice the
    /// engine input's bound of queued records (262,144 of about 90 bytes). It depends on the
    /// configuration only, never on how many destinations the flood names.
    fn rss_bound(&self) -> u64 {
        (64 << 20) + u64::from(self.max_hosts) * 2048 + 2 * 262_144 * 96
    }
}

/// One scenario at a time: two agents and two spoofed streams at once on two cores would
/// measure the machine, not the agent.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(sc: Scenario) {
    require_root("the table exhaustion end-to-end test");
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetnsPair::new(sc.net);
    let config = format!(
        "networks = [\"10.0.0.0/8\"]\n[xdp]\nenabled = false\n\
         [accounting]\nmax_hosts = {}\nmax_hosts_per_exporter = {}\nmax_hosts_per_source = {}\n\
         [sflow]\nlisten = []\n[netflow]\nlisten = [\"{COLLECTOR}\"]\n\
         [detection.incoming]\npps = {THRESHOLD_PPS}\n[ban]\nactions = []\n",
        sc.max_hosts, sc.per_exporter, sc.max_hosts
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let pid = agent.pid();
    assert!(
        agent.log().contains("no allowed_exporters"),
        "the agent warns when no exporter allow-list is set:\n{}",
        agent.log()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(proc_memory(pid, "VmRSS"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let spoofer = spoof(&pair.agent, sc.exporters.clone(), stop.clone());

    // Wait until the spoofed hosts press on the table (the churn has begun).
    let pressed = Instant::now();
    let evicted = |text: &str| -> f64 {
        sc.churn
            .iter()
            .map(|r| metric(text, &format!("fnm_hosts_evicted_total{{reason=\"{r}\"}}")))
            .sum()
    };
    loop {
        if evicted(&agent.metrics_text()) > 0.0 {
            break;
        }
        assert!(
            pressed.elapsed() < Duration::from_secs(15),
            "the spoofed stream never filled the table:\n{}",
            agent.metrics_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pressed_after = pressed.elapsed();
    let before = agent.metrics_text();

    let victim = victim_flood(&pair.agent, Duration::from_secs(4));
    let deadline = Instant::now() + Duration::from_secs(6);
    let (attack, seen_at) = loop {
        let attacks = agent.get("/api/v1/attacks").unwrap_or_default();
        if let Some(a) = attacks.as_array().and_then(|list| {
            list.iter()
                .find(|a| a["host"] == VICTIM.to_string())
                .cloned()
        }) {
            break (a, unix_now());
        }
        assert!(
            Instant::now() < deadline,
            "no attack on the victim; metrics:\n{}\nlog:\n{}",
            agent.metrics_text(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let victim = victim.join().unwrap();
    let after = agent.metrics_text();
    stop.store(true, Ordering::Relaxed);
    let spoofed = spoofer.join().unwrap();
    sampler.join().unwrap();
    let peak_rss = peak_rss
        .load(Ordering::Relaxed)
        .max(proc_memory(pid, "VmHWM"));
    let host = agent.get(&format!("/api/v1/hosts/{VICTIM}")).unwrap();

    let detected = attack["started_unix_ms"].as_f64().unwrap() / 1000.0 - victim.started_unix;
    let seen = seen_at - victim.started_unix;
    let exporter = |text: &str, who: &str| {
        ["netflow5", "netflow9"]
            .iter()
            .map(|p| {
                metric(
                    text,
                    &format!("fnm_flow_datagrams_total{{exporter=\"{who}\",protocol=\"{p}\"}}"),
                )
            })
            .sum::<f64>()
    };
    let spoofed_received: f64 = sc
        .exporters
        .iter()
        .map(|e| exporter(&after, &e.to_string()))
        .sum();
    println!(
        "spoofed stream from {} exporter(s): {} datagrams ({} records, {:.0} records/s) in {:.1} s, \
         {:.0} % decoded by the agent; table under pressure after {:.2} s",
        sc.exporters.len(),
        spoofed.datagrams,
        spoofed.records,
        spoofed.records as f64 / spoofed.elapsed.as_secs_f64(),
        spoofed.elapsed.as_secs_f64(),
        100.0 * spoofed_received / spoofed.datagrams.max(1) as f64,
        pressed_after.as_secs_f64(),
    );
    println!(
        "victim: attack started {detected:.3} s after the flood's first datagram (seen by the \
         API after {seen:.3} s); its exporter's datagrams decoded: {:.0} of {}; victim packets \
         counted {}",
        exporter(&after, &REAL_EXPORTER.to_string()),
        victim.datagrams,
        host["incoming"]["packets"]
    );
    let reasons: Vec<String> = ["idle", "low_rate", "budget", "expired"]
        .iter()
        .map(|r| {
            let series = format!("fnm_hosts_evicted_total{{reason=\"{r}\"}}");
            format!(
                "{r} {:.0} (+{:.0} during the flood)",
                metric(&after, &series),
                metric(&after, &series) - metric(&before, &series)
            )
        })
        .collect();
    let full = metric(&after, "fnm_hosts_table_full_total{source=\"netflow\"}");
    let ticks = |t: &str| {
        (
            metric(t, "fnm_poll_duration_seconds_sum"),
            metric(t, "fnm_poll_duration_seconds_count"),
        )
    };
    let ((s0, n0), (s1, n1)) = (ticks(&before), ticks(&after));
    println!(
        "engine during the flood: {:.0} ticks of {:.0} ms on average, {:.0} overruns; records \
         the netflow source dropped (engine behind): {:.0}",
        n1 - n0,
        1000.0 * (s1 - s0) / (n1 - n0).max(1.0),
        metric(&after, "fnm_poll_overruns_total") - metric(&before, "fnm_poll_overruns_total"),
        metric(
            &after,
            "fnm_source_dropped_records_total{source=\"netflow\"}"
        ),
    );
    println!(
        "hosts {} of {}; evicted: {}; refused (table full): {full}; peak RSS {:.1} MiB (bound {:.0} MiB)",
        metric(&after, "fnm_hosts"),
        sc.max_hosts,
        reasons.join(", "),
        peak_rss as f64 / 1048576.0,
        sc.rss_bound() as f64 / 1048576.0
    );

    assert!(
        detected <= DETECT_WITHIN_S && seen <= DETECT_WITHIN_S + 0.5,
        "victim detected {detected:.3} s (seen {seen:.3} s) after its flood started"
    );
    assert_eq!(attack["threshold"]["rate"], "pps", "{attack:#}");
    assert!(host["incoming"]["packets"].as_u64().unwrap() > 0);
    for series in [
        "# TYPE fnm_hosts_evicted_total counter",
        "fnm_hosts_evicted_total{reason=\"budget\"}",
        "# TYPE fnm_hosts_table_full_total counter",
        "fnm_hosts_table_full_total{source=\"netflow\"}",
        "fnm_hosts_capacity ",
    ] {
        assert!(after.contains(series), "{series} missing from:\n{after}");
    }
    assert!(metric(&after, "fnm_hosts") <= f64::from(sc.max_hosts));
    assert!(
        evicted(&after) > evicted(&before),
        "the spoofed hosts churn while the victim is flooded"
    );
    assert!(
        spoofed.records >= u64::from(SPOOFED_HOSTS),
        "the stream named {} destinations, fewer than {SPOOFED_HOSTS}",
        spoofed.records
    );
    assert!(
        peak_rss < sc.rss_bound(),
        "peak RSS {peak_rss} bytes over the bound {}",
        sc.rss_bound()
    );
}

#[test]
fn one_spoofed_exporter_churns_inside_its_budget() {
    run(Scenario {
        net: 98,
        exporters: vec![Ipv4Addr::new(127, 0, 0, 2)],
        max_hosts: 65_536,
        per_exporter: 16_384,
        churn: &["budget"],
    });
}

#[test]
fn spoofed_exporters_beyond_the_table_cannot_starve_a_victim() {
    run(Scenario {
        net: 99,
        exporters: (1..=16).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect(),
        max_hosts: 32_768,
        per_exporter: 8_192,
        churn: &["idle", "low_rate"],
    });
}
