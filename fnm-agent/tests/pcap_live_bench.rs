//! Live userspace-capture benchmark (not a timed test; run it by hand, as root):
//!
//! ```text
//! cargo test --release -p fnm-agent --test pcap_live_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Two veth pairs, each between two network namespaces this test creates and always removes:
//! one for the real `fnm-agent` binary (`[capture] backend = "pcap"`), one for the Debian
//! `fastnetmon` 1.2.4 in its pcap mode (`pcap = on`, `mirror_afpacket = off`). The capture
//! side has no address; a sender thread in the peer namespace writes prebuilt 60-byte
//! Ethernet/IPv4/UDP frames (1 000 spoofed sources outside the networks, 250 victims inside
//! 10.77.0.0/24) with `sendmmsg` on an `AF_PACKET` socket bound to its veth end, so no frame
//! can leave the pair. Both tools run at the same time, each on its own pair; the rate rises
//! step by step, and at each rate each tool gets its own step in turn (the order alternates
//! from rate to rate), so drift of the machine during the run falls on both alike. The
//! `immediate = true` variant of fnm runs alone afterwards. Per step the test reads
//!
//! - what the kernel delivered: `rx_packets` of the capturing veth end,
//! - what the tool counted: fnm's `fnm_traffic_packets_total{source="pcap"}` (summed) from
//!   /metrics, fastnetmon's `fastnetmon_total_simple_packets_processed` from its Prometheus
//!   endpoint,
//! - the tool's CPU time: user + system time of all its threads, in nanoseconds from a
//!   `cpuacct` cgroup the test creates for it (Debian 12's cgroup v1 hierarchy), or in clock
//!   ticks from `/proc/<pid>/stat` when that hierarchy is missing.
//!
//! `FNM_BENCH_TOOLS` (comma-separated, default `fnm,fnm-immediate,fastnetmon`) picks which
//! tools run, e.g. `FNM_BENCH_TOOLS=fnm` while profiling the agent; the comparisons print
//! when both sides ran. `fnm-fanout2` (not in the default) is the agent with `[capture]
//! threads = 2` (AF_PACKET fanout), interleaved with `fnm` (one thread) on its own pair:
//! `FNM_BENCH_TOOLS=fnm,fnm-fanout2` compares them. `FNM_BENCH_FIRST_RATE` (frames/s, default 25 000) and
//! `FNM_BENCH_MAX_STEPS` (default: until loss or the sender's limit) and
//! `FNM_BENCH_RATE_FACTOR` (default 1.5) narrow the steps, e.g. to repeat one rate for an A/B
//! comparison.
//!
//! A step is lossless when the tool counted at least 99 % of what the kernel delivered. The
//! test prints every step, the highest lossless rate of each tool, packets per CPU-second and
//! the fnm/fastnetmon ratios, and each tool's CPU split into a fixed part (ms per second of
//! running) and a per-packet part (ns), fitted over its lossless steps; it fails when a tool
//! counts nothing at all.

mod common;

use common::require_root;
use std::{
    fs::File,
    net::SocketAddr,
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Length of each rate step (long enough that the tools' CPU time is resolved to a few per
/// cent even when it is read in 10 ms clock ticks).
const STEP: Duration = Duration::from_secs(5);
/// First rate tried, frames per second.
const FIRST_RATE: f64 = 25_000.0;
/// Factor between consecutive steps.
const RATE_FACTOR: f64 = 1.5;
/// Largest fraction of delivered frames a tool may miss for a step to count as lossless.
const MAX_LOSS: f64 = 0.01;
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
const CAPTURE_MAC: [u8; 6] = [2, 0, 0, 0, 0x4d, 0x0a];
const SENDER_MAC: [u8; 6] = [2, 0, 0, 0, 0x4d, 0x0b];

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A capture namespace and a sender namespace joined by a veth pair; removed on drop.
struct BenchPair {
    capture_ns: String,
    sender_ns: String,
    capture_if: String,
    sender_if: String,
}

impl BenchPair {
    fn new(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let pair = Self {
            capture_ns: format!("pcb{tag}{id}c"),
            sender_ns: format!("pcb{tag}{id}s"),
            capture_if: format!("pcb{tag}{id}c"),
            sender_if: format!("pcb{tag}{id}s"),
        };
        for ns in [&pair.capture_ns, &pair.sender_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip",
            "link",
            "add",
            &pair.capture_if,
            "netns",
            &pair.capture_ns,
            "type",
            "veth",
            "peer",
            "name",
            &pair.sender_if,
            "netns",
            &pair.sender_ns,
        ]);
        for (ns, dev, mac) in [
            (&pair.capture_ns, &pair.capture_if, CAPTURE_MAC),
            (&pair.sender_ns, &pair.sender_if, SENDER_MAC),
        ] {
            let mac = mac.map(|b| format!("{b:02x}")).join(":");
            sh(&["ip", "-n", ns, "link", "set", dev, "address", &mac]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// Frames the kernel delivered to the capturing veth end so far.
    fn delivered(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/rx_packets", self.capture_if);
        sh(&["ip", "netns", "exec", &self.capture_ns, "cat", &path])
            .trim()
            .parse()
            .expect("rx_packets is a number")
    }
}

impl Drop for BenchPair {
    fn drop(&mut self) {
        for ns in [&self.capture_ns, &self.sender_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that joined network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// GET `path` over plain HTTP/1.1 from inside `ns`; the body, or an empty string.
fn http_get(ns: &str, addr: SocketAddr, path: &str) -> String {
    let path = path.to_owned();
    in_ns(ns, move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out).into_owned();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    })
}

/// 60-byte Ethernet/IPv4/UDP frame `i`: source 10.200.x.y (outside the networks), victim
/// 10.77.0.(1 + i % 250), 18 bytes of payload.
fn frame(i: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&CAPTURE_MAC);
    f.extend_from_slice(&SENDER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let src = [10, 200, ((i / 250) % 4) as u8, (i % 250) as u8];
    let dst = [10, 77, 0, 1 + (i % 250) as u8];
    let mut ip = vec![0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = common::frames::checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&(10_000 + (i % 5000) as u16).to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&26u16.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x5a; 18]);
    f
}

/// Writes frames from namespace `ns` out of `dev` at `rate` frames/s for `duration`, with
/// `sendmmsg` on an `AF_PACKET` socket that bypasses the qdisc; returns (frames sent,
/// achieved rate).
fn blast(ns: &str, dev: &str, rate: f64, duration: Duration) -> (u64, f64) {
    let dev = dev.to_owned();
    in_ns(ns, move || {
        let frames: Vec<Vec<u8>> = (0..1000).map(frame).collect();
        // SAFETY: plain socket calls with valid arguments; the fd is closed at the end.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            )
        };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(dev.clone()).expect("interface name");
        // SAFETY: valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no interface {dev}");
        // SAFETY: sockaddr_ll is plain old data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: binding with a valid sockaddr_ll of the right length.
        let rc = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let one: i32 = 1;
        // SAFETY: setting an int option. Failure only means the qdisc is not bypassed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const i32).cast(),
                4,
            )
        };
        let result = common::sender::send_paced(fd, &frames, rate, duration, BATCH);
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
        result
    })
}

/// CPU seconds (user + system, all threads) used by process `pid` so far, from
/// `/proc/<pid>/stat` (10 ms clock ticks).
fn cpu_seconds_from_ticks(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// Where the cgroup v1 `cpuacct` hierarchy is mounted on Debian 12 (hybrid layout).
const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";

/// CPU time of one tool process, in nanoseconds from a `cpuacct` cgroup of its own when the
/// hierarchy is there (every thread, including threads that already exited), else in clock
/// ticks from `/proc`. The cgroup is removed on drop.
struct CpuMeter {
    pid: u32,
    cgroup: Option<std::path::PathBuf>,
}

impl CpuMeter {
    fn new(tool: &dyn Tool) -> Self {
        let pid = tool.pid();
        let dir = std::path::Path::new(CPUACCT).join(format!("fnm-bench-{}-{pid}", tool.name()));
        let cgroup = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()))
            .map(|()| dir.clone())
            .map_err(|e| {
                println!(
                    "  (no cpuacct cgroup at {}: {e}; CPU time from /proc in 10 ms ticks)",
                    dir.display()
                );
                let _ = std::fs::remove_dir(&dir);
            })
            .ok();
        Self { pid, cgroup }
    }

    /// CPU seconds used so far.
    fn seconds(&self) -> f64 {
        let from_cgroup = self.cgroup.as_ref().and_then(|dir| {
            std::fs::read_to_string(dir.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        });
        match from_cgroup {
            Some(ns) => ns as f64 / 1e9,
            None => cpu_seconds_from_ticks(self.pid),
        }
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        if let Some(dir) = &self.cgroup {
            // Back to the root group, so the (now empty) group can be removed.
            let _ = std::fs::write(
                std::path::Path::new(CPUACCT).join("cgroup.procs"),
                self.pid.to_string(),
            );
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A capture tool under test.
trait Tool {
    fn name(&self) -> &'static str;
    /// Packets it has counted so far.
    fn counted(&self) -> u64;
    /// Its process id (for CPU time).
    fn pid(&self) -> u32;
}

/// Sums the samples of every line of `metric` in Prometheus text whose labels contain `filter`.
fn metric_sum(text: &str, metric: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit([' ', '}']).next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The real `fnm-agent` binary with the pcap backend, inside its capture namespace.
struct Fnm {
    name: &'static str,
    child: Child,
    ns: String,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Fnm {
    /// Starts the agent; `immediate` sets `[capture.pcap] immediate` (`None`: the default,
    /// `false`).
    fn start(pair: &BenchPair, immediate: Option<bool>) -> Self {
        Self::start_binary(pair, immediate, env!("CARGO_BIN_EXE_fnm-agent"), None, "")
    }

    /// Starts the agent with `capture` (lines of `[capture]`, e.g. `threads = 2`), named
    /// `name`.
    fn start_with(pair: &BenchPair, capture: &str, name: &'static str) -> Self {
        Self::start_binary(
            pair,
            None,
            env!("CARGO_BIN_EXE_fnm-agent"),
            Some(name),
            capture,
        )
    }

    /// Starts `binary` as the agent (another build, for an A/B run), named `name` when given.
    fn start_binary(
        pair: &BenchPair,
        immediate: Option<bool>,
        binary: &str,
        name: Option<&'static str>,
        capture: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let api: SocketAddr = "127.0.0.1:19310".parse().unwrap();
        let metrics: SocketAddr = "127.0.0.1:19309".parse().unwrap();
        let config = dir.path().join("fnm-agent.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{state}\"\nnetworks = [\"10.77.0.0/24\"]\n\
                 [xdp]\nenabled = false\n\
                 [capture]\nbackend = \"pcap\"\ninterfaces = [\"{dev}\"]\n{capture}\n\
                 {pcap}\
                 [sflow]\nlisten = []\n[netflow]\nlisten = []\n\
                 [api]\nlisten = \"{api}\"\n[prometheus]\nlisten = \"{metrics}\"\n",
                state = dir.path().join("state").display(),
                dev = pair.capture_if,
                pcap = immediate
                    .map(|i| format!("[capture.pcap]\nimmediate = {i}\n"))
                    .unwrap_or_default(),
            ),
        )
        .unwrap();
        let log = File::create(dir.path().join("agent.log")).unwrap();
        // `ip netns exec` execs the agent, so the child's pid is the agent's.
        let child = Command::new("ip")
            .args(["netns", "exec", &pair.capture_ns])
            .arg(binary)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fnm-agent");
        let mut fnm = Self {
            name: match immediate {
                _ if name.is_some() => name.unwrap_or_default(),
                None => "fnm",
                Some(true) => "fnm-immediate",
                Some(false) => "fnm-batch",
            },
            child,
            ns: pair.capture_ns.clone(),
            metrics,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_get(&fnm.ns, metrics, "/metrics").contains("fnm_") {
            if let Ok(Some(status)) = fnm.child.try_wait() {
                panic!("fnm-agent exited ({status}):\n{}", fnm.log());
            }
            assert!(
                Instant::now() < deadline,
                "fnm-agent never served /metrics:\n{}",
                fnm.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        fnm
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Tool for Fnm {
    fn name(&self) -> &'static str {
        self.name
    }
    fn counted(&self) -> u64 {
        let text = http_get(&self.ns, self.metrics, "/metrics");
        metric_sum(&text, "fnm_traffic_packets_total", "source=\"pcap\"")
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Fnm {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `fastnetmon` 1.2.4 in pcap mode, inside its capture namespace.
struct FastNetMon {
    child: Child,
    ns: String,
    prometheus: SocketAddr,
    _dir: tempfile::TempDir,
}

const FASTNETMON: &str = "/usr/sbin/fastnetmon";

impl FastNetMon {
    fn start(pair: &BenchPair) -> Self {
        assert!(
            std::path::Path::new(FASTNETMON).is_file(),
            "\n\n*** this benchmark needs the Debian package `fastnetmon` ***\n"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let prometheus: SocketAddr = "127.0.0.1:19409".parse().unwrap();
        std::fs::write(dir.path().join("networks"), "10.77.0.0/24\n").unwrap();
        std::fs::write(dir.path().join("whitelist"), "").unwrap();
        let config = dir.path().join("fastnetmon.conf");
        std::fs::write(
            &config,
            format!(
                "logging_level = info\nnetworks_list_path = {d}/networks\nwhite_list_path = {d}/whitelist\n\
                 enable_ban = off\nenable_ban_ipv6 = off\nprocess_incoming_traffic = on\nprocess_outgoing_traffic = on\n\
                 mirror_afpacket = off\nmirror_afxdp = off\nmirror_netmap = off\npcap = on\ninterfaces = {dev}\n\
                 pcap_buffer_size_mbytes = 16\nnetflow = off\nsflow = off\n\
                 enable_api = off\nprometheus = on\nprometheus_host = {host}\nprometheus_port = {port}\n\
                 pid_path = {d}/fastnetmon.pid\ndisable_usage_report = on\n\
                 cli_stats_file_path = {d}/fastnetmon.dat\ncli_stats_ipv6_file_path = {d}/fastnetmon_ipv6.dat\n",
                d = dir.path().display(),
                dev = pair.capture_if,
                host = prometheus.ip(),
                port = prometheus.port(),
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &pair.capture_ns, FASTNETMON])
            .arg("--configuration_file")
            .arg(&config)
            .arg("--log_file")
            .arg(dir.path().join("fastnetmon.log"))
            .arg("--disable_pid_logic")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("start fastnetmon");
        let mut tool = Self {
            child,
            ns: pair.capture_ns.clone(),
            prometheus,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_get(&tool.ns, prometheus, "/metrics")
            .contains("fastnetmon_total_simple_packets_processed")
        {
            if let Ok(Some(status)) = tool.child.try_wait() {
                panic!("fastnetmon exited ({status}):\n{}", tool.log());
            }
            assert!(
                Instant::now() < deadline,
                "fastnetmon never served its Prometheus endpoint:\n{}",
                tool.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        tool
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("fastnetmon.log")).unwrap_or_default()
    }
}

impl Tool for FastNetMon {
    fn name(&self) -> &'static str {
        "fastnetmon"
    }
    fn counted(&self) -> u64 {
        let text = http_get(&self.ns, self.prometheus, "/metrics");
        metric_sum(&text, "fastnetmon_total_simple_packets_processed", "")
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FastNetMon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One rate step of one tool.
#[derive(Debug, Clone, Copy)]
struct Step {
    target: f64,
    sent: u64,
    delivered: u64,
    counted: u64,
    cpu: f64,
    /// Wall-clock seconds of the step and its drain (what `cpu` was measured over).
    wall: f64,
}

impl Step {
    fn seconds(&self) -> f64 {
        STEP.as_secs_f64()
    }
    fn loss(&self) -> f64 {
        if self.delivered == 0 {
            return 1.0;
        }
        self.delivered.saturating_sub(self.counted) as f64 / self.delivered as f64
    }
    fn lossless(&self) -> bool {
        self.delivered > 0 && self.loss() < MAX_LOSS
    }
    /// Packets counted per CPU-second of the tool.
    fn per_cpu_second(&self) -> f64 {
        self.counted as f64 / self.cpu.max(0.01)
    }
}

/// Waits until the tool's counter has not moved for two reads in a row, 1.2 s apart (it
/// drained its capture buffer, including partly filled libpcap blocks).
fn settle(tool: &dyn Tool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = tool.counted();
    let mut unchanged = 0;
    loop {
        std::thread::sleep(Duration::from_millis(1200));
        let now = tool.counted();
        unchanged = if now == last { unchanged + 1 } else { 0 };
        if unchanged >= 2 || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// One tool's side of a run: its veth pair, CPU meter and steps so far.
struct Runner<'a> {
    tool: &'a dyn Tool,
    pair: &'a BenchPair,
    meter: CpuMeter,
    counted_before: u64,
    lossy_in_a_row: u32,
    steps: Vec<Step>,
}

impl<'a> Runner<'a> {
    fn new(tool: &'a dyn Tool, pair: &'a BenchPair) -> Self {
        let meter = CpuMeter::new(tool);
        let counted_before = settle(tool);
        Self {
            tool,
            pair,
            meter,
            counted_before,
            lossy_in_a_row: 0,
            steps: Vec::new(),
        }
    }

    /// Still raising the rate: fewer than two lossy steps in a row.
    fn going(&self) -> bool {
        self.lossy_in_a_row < 2
    }

    /// One step at `rate`; returns the rate the sender achieved.
    fn step(&mut self, rate: f64) -> f64 {
        let (tool, pair) = (self.tool, self.pair);
        let delivered_before = pair.delivered();
        let cpu_before = self.meter.seconds();
        let started = Instant::now();
        let (sent, achieved) = blast(&pair.sender_ns, &pair.sender_if, rate, STEP);
        let counted_after = settle(tool);
        // CPU over the step and the drain: what it cost to count these frames.
        let cpu = self.meter.seconds() - cpu_before;
        let step = Step {
            target: rate,
            sent,
            delivered: pair.delivered() - delivered_before,
            counted: counted_after - self.counted_before,
            cpu,
            wall: started.elapsed().as_secs_f64(),
        };
        self.counted_before = counted_after;
        println!(
            "{:>10}: target {:>9.0}/s sent {:>9.0}/s delivered {:>9} counted {:>9} loss {:>6.2}% cpu {:>6.3}s ({:>4.0}% of a core) {:>10.0} pkts/cpu-s",
            tool.name(),
            rate,
            achieved,
            step.delivered,
            step.counted,
            step.loss() * 100.0,
            step.cpu,
            step.cpu / step.seconds() * 100.0,
            step.per_cpu_second()
        );
        self.steps.push(step);
        assert!(step.sent > 0, "the sender wrote nothing");
        if step.lossless() {
            self.lossy_in_a_row = 0;
        } else {
            self.lossy_in_a_row += 1;
        }
        achieved
    }
}

/// Raises the rate step by step until every tool lost more than 1 % in two steps in a row or
/// the sender saturates. At each rate every tool still going gets its own step, one after the
/// other, in an order that alternates from rate to rate, so that a slow drift of the machine
/// (other tenants, caches, frequency) falls on all tools alike. Returns each tool's steps.
fn run_interleaved(tools: &[(&dyn Tool, &BenchPair)]) -> Vec<Vec<Step>> {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
    let mut rate = env("FNM_BENCH_FIRST_RATE").unwrap_or(FIRST_RATE);
    let max_steps = env("FNM_BENCH_MAX_STEPS").map_or(usize::MAX, |n| n as usize);
    let factor = env("FNM_BENCH_RATE_FACTOR").unwrap_or(RATE_FACTOR);
    let mut runners: Vec<Runner> = tools
        .iter()
        .map(|&(tool, pair)| Runner::new(tool, pair))
        .collect();
    for round in 0..max_steps {
        let mut order: Vec<usize> = (0..runners.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut saturated = None;
        for i in order {
            if runners[i].going() {
                let achieved = runners[i].step(rate);
                if achieved < rate * 0.9 {
                    saturated = Some(achieved);
                }
            }
        }
        if let Some(achieved) = saturated {
            println!("  (sender saturated at {achieved:.0} frames/s)");
            break;
        }
        if !runners.iter().any(Runner::going) {
            break;
        }
        rate *= factor;
    }
    runners.into_iter().map(|r| r.steps).collect()
}

/// Splits a tool's CPU into a fixed part and a per-packet part: the least-squares fit of
/// `cpu = fixed × wall + per_packet × counted` over its lossless steps. Packets per CPU-second
/// mixes both (a step at a low rate is mostly idle cost: ticks, the benchmark's own `/metrics`
/// reads); the fit tells the cost of a packet from the cost of running. `None` with fewer
/// than two lossless steps.
fn fit(steps: &[Step]) -> Option<(f64, f64)> {
    let ok: Vec<&Step> = steps.iter().filter(|s| s.lossless()).collect();
    if ok.len() < 2 {
        return None;
    }
    let (mut ww, mut wc, mut cc, mut wy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for s in ok {
        let (w, c, y) = (s.wall, s.counted as f64, s.cpu);
        ww += w * w;
        wc += w * c;
        cc += c * c;
        wy += w * y;
        cy += c * y;
    }
    let det = ww * cc - wc * wc;
    if det.abs() < f64::EPSILON {
        return None;
    }
    Some(((wy * cc - cy * wc) / det, (ww * cy - wc * wy) / det))
}

/// Prints each tool's fixed and per-packet CPU (see [`fit`]).
fn print_fits(named: &[(&str, &[Step])]) {
    println!(
        "
CPU split (least squares over lossless steps: cpu = fixed x wall + per-packet x packets):"
    );
    for (name, steps) in named {
        match fit(steps) {
            Some((fixed, per_packet)) => println!(
                "  {name:>13}: fixed {:>7.3} ms/s, per packet {:>6.1} ns ({:.1} M packets per CPU-second at the margin)",
                fixed * 1e3,
                per_packet * 1e9,
                1e-6 / per_packet.max(1e-12)
            ),
            None => println!("  {name:>13}: fewer than two lossless steps"),
        }
    }
}

/// The highest lossless step (by delivered rate).
fn best(steps: &[Step]) -> Option<Step> {
    steps
        .iter()
        .filter(|s| s.lossless())
        .max_by(|a, b| a.delivered.cmp(&b.delivered))
        .copied()
}

#[test]
#[ignore = "benchmark: run as root with --release --ignored --nocapture --test-threads=1"]
fn pcap_live_bench() {
    require_root("the live capture benchmark");
    let tools =
        std::env::var("FNM_BENCH_TOOLS").unwrap_or_else(|_| "fnm,fnm-immediate,fastnetmon".into());
    let wanted = |name: &str| tools.split(',').any(|t| t.trim() == name);
    let fnm_pair = BenchPair::new("f");
    let fast_pair = BenchPair::new("n");

    // The agent with its default knobs (`[capture.pcap] immediate = false`: libpcap hands
    // over blocks of packets, as for fastnetmon) and fastnetmon, both running, measured in
    // interleaved steps.
    let fnm = wanted("fnm").then(|| Fnm::start(&fnm_pair, None));
    // FNM_BENCH_BASE_AGENT=path: another build of the agent (e.g. the previous commit's) as a
    // third tool in the same interleaved steps, for an A/B comparison in one run.
    let base_pair = std::env::var("FNM_BENCH_BASE_AGENT")
        .ok()
        .map(|bin| (BenchPair::new("b"), bin));
    let base = base_pair
        .as_ref()
        .map(|(pair, bin)| Fnm::start_binary(pair, None, bin, Some("fnm-base"), ""));
    // `fnm-fanout2`: the agent with `[capture] threads = 2` (two capture threads in an
    // AF_PACKET fanout group), in the same interleaved steps as `fnm` (one thread).
    let fanout_pair = BenchPair::new("t");
    let fanout =
        wanted("fnm-fanout2").then(|| Fnm::start_with(&fanout_pair, "threads = 2", "fnm-fanout2"));
    let fastnetmon = wanted("fastnetmon").then(|| FastNetMon::start(&fast_pair));
    let mut tools: Vec<(&dyn Tool, &BenchPair)> = Vec::new();
    if let Some(fnm) = &fnm {
        println!("fnm-agent pid {}", fnm.pid());
        tools.push((fnm, &fnm_pair));
    }
    if let (Some(base), Some((pair, bin))) = (&base, &base_pair) {
        println!("fnm-base ({bin}) pid {}", base.pid());
        tools.push((base, pair));
    }
    if let Some(fanout) = &fanout {
        println!("fnm-fanout2 pid {}", fanout.pid());
        tools.push((fanout, &fanout_pair));
    }
    if let Some(fastnetmon) = &fastnetmon {
        tools.push((fastnetmon, &fast_pair));
    }
    let mut results = run_interleaved(&tools).into_iter();
    let fnm_steps = match &fnm {
        Some(fnm) => {
            let steps = results.next().unwrap_or_default();
            assert!(
                steps.iter().any(|s| s.counted > 0),
                "fnm counted nothing:\n{}",
                fnm.log()
            );
            steps
        }
        None => Vec::new(),
    };
    let base_steps = match &base {
        Some(_) => results.next().unwrap_or_default(),
        None => Vec::new(),
    };
    let fanout_steps = match &fanout {
        Some(f) => {
            let steps = results.next().unwrap_or_default();
            assert!(
                steps.iter().any(|s| s.counted > 0),
                "fnm-fanout2 counted nothing:\n{}",
                f.log()
            );
            steps
        }
        None => Vec::new(),
    };
    let fast_steps = match &fastnetmon {
        Some(_) => {
            let steps = results.next().unwrap_or_default();
            assert!(
                steps.iter().any(|s| s.counted > 0),
                "fastnetmon counted nothing"
            );
            steps
        }
        None => Vec::new(),
    };
    drop(fnm);
    drop(base);
    drop(fanout);
    drop(fastnetmon);
    if !fnm_steps.is_empty() && !fanout_steps.is_empty() {
        compare_fanout(&fnm_steps, &fanout_steps);
    }

    // The same agent with `[capture.pcap] immediate = true`: woken for every frame (alone,
    // after the others; compared with fastnetmon's steps above).
    let mut immediate_steps = Vec::new();
    if wanted("fnm-immediate") {
        let fnm = Fnm::start(&fnm_pair, Some(true));
        immediate_steps = run_interleaved(&[(&fnm, &fnm_pair)])
            .pop()
            .unwrap_or_default();
        drop(fnm);
    }

    print_fits(&[
        ("fnm", &fnm_steps),
        ("fnm-base", &base_steps),
        ("fastnetmon", &fast_steps),
        ("fnm-immediate", &immediate_steps),
    ]);
    if fast_steps.is_empty() {
        return;
    }
    if !fnm_steps.is_empty() {
        compare("fnm", &fnm_steps, &fast_steps);
    }
    if !base_steps.is_empty() {
        compare("fnm-base", &base_steps, &fast_steps);
    }
    if !immediate_steps.is_empty() {
        compare("fnm-immediate", &immediate_steps, &fast_steps);
    }
}

/// Prints the per-step comparison of two capture threads in a fanout group against one.
fn compare_fanout(one: &[Step], two: &[Step]) {
    println!("\nfnm-fanout2 (capture.threads = 2) against fnm (one thread), per step:");
    println!(
        "{:>10} | {:>28} | {:>28}",
        "rate/s", "1 thread: counted/s (loss) cpu", "2 threads: counted/s (loss) cpu"
    );
    for (a, b) in one.iter().zip(two) {
        println!(
            "{:>10.0} | {:>9.0} ({:>5.2}%) {:>6.0}% | {:>9.0} ({:>5.2}%) {:>6.0}%",
            a.target,
            a.counted as f64 / a.seconds(),
            a.loss() * 100.0,
            a.cpu / a.seconds() * 100.0,
            b.counted as f64 / b.seconds(),
            b.loss() * 100.0,
            b.cpu / b.seconds() * 100.0,
        );
    }
    match (best(one), best(two)) {
        (Some(a), Some(b)) => println!(
            "  highest rate with <1% loss: 1 thread {:.0}/s, 2 threads {:.0}/s: ratio {:.2}x; \
             packets per CPU-second there {:.0} and {:.0}",
            a.delivered as f64 / a.seconds(),
            b.delivered as f64 / b.seconds(),
            (b.delivered as f64 / b.seconds()) / (a.delivered as f64 / a.seconds()),
            a.per_cpu_second(),
            b.per_cpu_second()
        ),
        (a, b) => println!(
            "  lossless steps: 1 thread {}, 2 threads {}",
            a.is_some(),
            b.is_some()
        ),
    }
}

/// Prints the per-step comparison and the summary of one fnm run against fastnetmon.
fn compare(name: &str, fnm_steps: &[Step], fast_steps: &[Step]) {
    println!("\n{name} against fastnetmon, per-step comparison at the same offered rate (tool CPU = utime+stime over step and drain):");
    println!(
        "{:>10} | {:>22} | {:>22} | {:>6}",
        "rate/s", "fnm pkts/cpu-s (loss)", "fastnetmon (loss)", "ratio"
    );
    for (a, b) in fnm_steps.iter().zip(fast_steps) {
        println!(
            "{:>10.0} | {:>13.0} ({:>5.2}%) | {:>13.0} ({:>5.2}%) | {:>5.1}x",
            a.target,
            a.per_cpu_second(),
            a.loss() * 100.0,
            b.per_cpu_second(),
            b.loss() * 100.0,
            a.per_cpu_second() / b.per_cpu_second()
        );
    }
    let show = |name: &str, s: Option<Step>| {
        match s {
        Some(s) => println!(
            "  {name:>10}: highest rate with <1% loss {:.0} pkts/s (delivered), {:.0} pkts per CPU-second there",
            s.delivered as f64 / s.seconds(),
            s.per_cpu_second()
        ),
        None => println!("  {name:>10}: no step with <1% loss"),
    }
    };
    let total = |steps: &[Step]| {
        let n = steps.len().min(fnm_steps.len()).min(fast_steps.len());
        let counted: u64 = steps[..n].iter().map(|s| s.counted).sum();
        let cpu: f64 = steps[..n].iter().map(|s| s.cpu).sum();
        (counted, cpu)
    };
    let ((fc, fcpu), (nc, ncpu)) = (total(fnm_steps), total(fast_steps));
    println!("\nsummary ({name}):");
    println!(
        "  over the {} common steps: {name} {fc} pkts in {fcpu:.2} CPU-s ({:.0} pkts/cpu-s), fastnetmon {nc} pkts in {ncpu:.2} CPU-s ({:.0} pkts/cpu-s): ratio {:.2}x",
        fnm_steps.len().min(fast_steps.len()),
        fc as f64 / fcpu.max(0.01),
        nc as f64 / ncpu.max(0.01),
        (fc as f64 / fcpu.max(0.01)) / (nc as f64 / ncpu.max(0.01)),
    );
    let (f, n) = (best(fnm_steps), best(fast_steps));
    show(name, f);
    show("fastnetmon", n);
    if let (Some(f), Some(n)) = (f, n) {
        println!(
            "  ratio fnm/fastnetmon: lossless rate {:.2}x, packets per CPU-second {:.2}x",
            f.delivered as f64 / n.delivered as f64,
            f.per_cpu_second() / n.per_cpu_second()
        );
    }
}
