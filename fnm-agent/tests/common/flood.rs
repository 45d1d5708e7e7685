//! Helpers for the detection latency benchmark: paced UDP floods from a namespace (sendmmsg), the
//! same flood described as sFlow v5 datagrams sent to a collector on 127.0.0.1, an sFlow v5
//! encoder, a notify script that timestamps its calls, and runners for `fnm-agent` (with the
//! default poll interval) and the Debian `fastnetmon`.
#![allow(dead_code)]

use super::netns::NetnsPair;
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Most packets one `sendmmsg` call sends.
const MAX_BATCH: usize = 256;
/// Pacing tick of the senders.
const TICK: Duration = Duration::from_micros(500);
/// Flow samples per sFlow datagram (7 samples of a 128-byte header fit in 1500 bytes).
pub const SAMPLES_PER_DATAGRAM: usize = 7;
/// Bytes of the sampled frame copied into a raw packet header record (sFlow's usual default).
pub const SFLOW_HEADER_BYTES: usize = 128;

/// Seconds since the Unix epoch, as the notify script's `date +%s.%N` writes them.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// What a flood did.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    /// Wall-clock time (seconds since the epoch) just before the first packet went out.
    pub started_unix: f64,
    /// Packets sent; for sFlow, packets represented (samples × sampling rate).
    pub packets: u64,
    /// Packets sent within the first second (`packets` when the flood was shorter).
    pub packets_first_second: u64,
    /// How long the flood ran.
    pub elapsed: Duration,
}

impl FloodReport {
    /// Packets per second over the whole flood.
    pub fn achieved_pps(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends at `pps` until `stop`: every tick, `send(n)` is asked to send the `n` packets that are
/// due (at most [`MAX_BATCH`]) and returns how many it sent.
fn paced(pps: f64, stop: &AtomicBool, mut send: impl FnMut(usize) -> usize) -> FloodReport {
    let started_unix = unix_now();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut first_second = None;
    while !stop.load(Ordering::Relaxed) {
        let elapsed = start.elapsed();
        if first_second.is_none() && elapsed >= Duration::from_secs(1) {
            first_second = Some(sent);
        }
        let due = (elapsed.as_secs_f64() * pps) as u64;
        while sent < due {
            let n = (due - sent).min(MAX_BATCH as u64) as usize;
            let done = send(n);
            sent += done as u64;
            if done < n {
                break;
            }
        }
        std::thread::sleep(TICK);
    }
    FloodReport {
        started_unix,
        packets: sent,
        packets_first_second: first_second.unwrap_or(sent),
        elapsed: start.elapsed(),
    }
}

/// Floods `to` from namespace `ns` at `pps`: UDP from source port 53 with a 400-byte payload
/// (a DNS reflection), in `sendmmsg` batches, until `stop`.
pub fn udp_flood(
    ns: &str,
    to: SocketAddrV4,
    pps: f64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<FloodReport> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let socket = UdpSocket::bind("0.0.0.0:53").expect("bind source port 53");
        let payload = [0x42u8; 400];
        let mut dest = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        // SAFETY: an all-zero mmsghdr is a valid empty message.
        let mut msgs: Vec<libc::mmsghdr> = (0..MAX_BATCH)
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for m in &mut msgs {
            m.msg_hdr.msg_name = (&mut dest as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let fd = socket.as_raw_fd();
        paced(pps, &stop, |n| {
            // SAFETY: `msgs` holds MAX_BATCH >= n valid headers pointing at live buffers.
            let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
            rc.max(0) as usize
        })
    })
}

/// Builds an Ethernet/IPv4/UDP frame (without FCS) with a `payload_len`-byte payload.
pub fn udp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload_len);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a]); // destination MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0b]); // source MAC
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total_len = (20 + 8 + payload_len) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = super::frames::checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes()); // no UDP checksum (allowed over IPv4)
    f.extend(std::iter::repeat_n(0x42u8, payload_len));
    f
}

/// One sFlow v5 flow sample (format 1) holding one raw packet header record (format 1).
#[derive(Debug, Clone, Copy)]
pub struct SflowFlowSample<'a> {
    /// Sample sequence number (per source id).
    pub sequence: u32,
    /// Source id index (ifIndex; source id type 0).
    pub source_id_index: u32,
    /// 1 in N sampling rate.
    pub sampling_rate: u32,
    /// Packets that could have been sampled so far.
    pub sample_pool: u32,
    /// Input ifIndex.
    pub input_ifindex: u32,
    /// Output ifIndex.
    pub output_ifindex: u32,
    /// Length of the sampled frame on the wire, FCS included.
    pub frame_length: u32,
    /// Bytes stripped from the end of the frame before `header` (the 4-byte FCS).
    pub stripped: u32,
    /// The first bytes of the frame, starting at the Ethernet header.
    pub header: &'a [u8],
}

/// Encodes an sFlow v5 datagram from an IPv4 agent holding `samples` (RFC-less but per
/// sflow.org's sFlow version 5 specification: XDR, big-endian, opaque data padded to 4 bytes).
pub fn sflow_datagram(
    agent: Ipv4Addr,
    sequence: u32,
    uptime_ms: u32,
    samples: &[SflowFlowSample<'_>],
) -> Vec<u8> {
    let mut d = Vec::with_capacity(28 + samples.len() * (64 + SFLOW_HEADER_BYTES));
    let put = |d: &mut Vec<u8>, v: u32| d.extend_from_slice(&v.to_be_bytes());
    put(&mut d, 5); // version
    put(&mut d, 1); // agent address type: IPv4
    d.extend_from_slice(&agent.octets());
    put(&mut d, 0); // sub-agent id
    put(&mut d, sequence);
    put(&mut d, uptime_ms);
    put(&mut d, samples.len() as u32);
    for s in samples {
        let padded = s.header.len().div_ceil(4) * 4;
        let record_len = 16 + padded;
        let sample_len = 32 + 8 + record_len;
        put(&mut d, 1); // enterprise 0, format 1: flow sample
        put(&mut d, sample_len as u32);
        put(&mut d, s.sequence);
        put(&mut d, s.source_id_index); // source id type 0 (ifIndex) in the top byte
        put(&mut d, s.sampling_rate);
        put(&mut d, s.sample_pool);
        put(&mut d, 0); // drops
        put(&mut d, s.input_ifindex);
        put(&mut d, s.output_ifindex);
        put(&mut d, 1); // one flow record
        put(&mut d, 1); // enterprise 0, format 1: raw packet header
        put(&mut d, record_len as u32);
        put(&mut d, 1); // header protocol: Ethernet (ISO 8802-3)
        put(&mut d, s.frame_length);
        put(&mut d, s.stripped);
        put(&mut d, s.header.len() as u32);
        d.extend_from_slice(s.header);
        d.extend(std::iter::repeat_n(0u8, padded - s.header.len()));
    }
    d
}

/// The flood [`udp_flood`] sends, as an sFlow agent sampling 1 in `sampling_rate` packets would
/// export it to `collector` (on 127.0.0.1): `pps / sampling_rate` flow samples per second, in
/// datagrams of [`SAMPLES_PER_DATAGRAM`] samples, until `stop`. `packets` in the report are the
/// packets represented (samples × rate).
pub fn sflow_flood(
    collector: SocketAddr,
    attacker: Ipv4Addr,
    victim: SocketAddrV4,
    pps: f64,
    sampling_rate: u32,
    stop: Arc<AtomicBool>,
) -> JoinHandle<FloodReport> {
    assert!(collector.ip().is_loopback(), "sFlow goes to 127.0.0.1 only");
    std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind sFlow sender");
        let frame = udp_frame(attacker, *victim.ip(), 53, victim.port(), 400);
        let header = &frame[..frame.len().min(SFLOW_HEADER_BYTES)];
        let frame_length = frame.len() as u32 + 4; // + FCS
        let agent = Ipv4Addr::LOCALHOST;
        let boot = Instant::now();
        let mut datagram_seq = 0u32;
        let mut sample_seq = 0u32;
        let rate = sampling_rate.max(1);
        let mut report = paced(pps / f64::from(rate), &stop, |n| {
            let mut sent = 0;
            while sent < n {
                let take = (n - sent).min(SAMPLES_PER_DATAGRAM);
                let samples: Vec<SflowFlowSample<'_>> = (0..take)
                    .map(|i| {
                        let seq = sample_seq.wrapping_add(i as u32 + 1);
                        SflowFlowSample {
                            sequence: seq,
                            source_id_index: 3,
                            sampling_rate: rate,
                            sample_pool: seq.wrapping_mul(rate),
                            input_ifindex: 3,
                            output_ifindex: 4,
                            frame_length,
                            stripped: 4,
                            header,
                        }
                    })
                    .collect();
                datagram_seq = datagram_seq.wrapping_add(1);
                let d = sflow_datagram(
                    agent,
                    datagram_seq,
                    boot.elapsed().as_millis() as u32,
                    &samples,
                );
                if socket.send_to(&d, collector).is_err() {
                    break;
                }
                sample_seq = sample_seq.wrapping_add(take as u32);
                sent += take;
            }
            sent
        });
        report.packets *= u64::from(rate);
        report.packets_first_second *= u64::from(rate);
        report
    })
}

/// One call of the timestamping notify script.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptCall {
    /// When the script started (seconds since the epoch, `date +%s.%N`).
    pub at_unix: f64,
    /// The address argument.
    pub ip: String,
    /// `incoming` or `outgoing`.
    pub direction: String,
    /// The reported attack power in packets/s.
    pub pps: u64,
    /// `ban`, `unban`, or another action (FastNetMon's `attack_details`).
    pub action: String,
}

/// Writes `dir/notify.sh`: it appends `<date +%s.%N> <ip> <direction> <pps> <action>` to
/// `dir/calls.log` first thing, then drains stdin. Returns (script, log).
pub fn timestamp_script(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("notify.sh");
    let log = dir.join("calls.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nnow=$(date +%s.%N)\necho \"$now $1 $2 $3 $4\" >> {}\ncat > /dev/null\n",
            log.display()
        ),
    )
    .expect("write notify script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("chmod notify script");
    (script, log)
}

/// The calls the script recorded so far (none when the log does not exist yet).
pub fn script_calls(log: &Path) -> Vec<ScriptCall> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [at, ip, direction, pps, action] = f.as_slice() else {
                return None;
            };
            Some(ScriptCall {
                at_unix: at.parse().ok()?,
                ip: (*ip).to_owned(),
                direction: (*direction).to_owned(),
                pps: pps.parse().unwrap_or(0),
                action: (*action).to_owned(),
            })
        })
        .collect()
}

/// Waits up to `timeout` for the `nth` (0-based) call with `action`; returns it.
pub fn wait_for_call(
    log: &Path,
    action: &str,
    nth: usize,
    timeout: Duration,
) -> Option<ScriptCall> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(call) = script_calls(log)
            .into_iter()
            .filter(|c| c.action == action)
            .nth(nth)
        {
            return Some(call);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Counts the calls with `action`.
pub fn count_calls(log: &Path, action: &str) -> usize {
    script_calls(log)
        .iter()
        .filter(|c| c.action == action)
        .count()
}

/// min / median / p90 / max of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Distribution {
    /// Number of values.
    pub n: usize,
    /// Smallest value.
    pub min: f64,
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// 90th percentile, nearest rank (the ⌈0.9·n⌉-th smallest value).
    pub p90: f64,
    /// Largest value.
    pub max: f64,
}

impl Distribution {
    /// The distribution of `values` (None when empty).
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
        Some(Self {
            n,
            min: v[0],
            median,
            p90: v[rank - 1],
            max: v[n - 1],
        })
    }
}

/// Pseudo-random fraction in [0, 1) from the clock's nanoseconds: spreads flood starts over the
/// detectors' tick phases.
pub fn phase_fraction() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    // Mix the low bits so that consecutive calls are not correlated with the sleep lengths.
    let mixed = (u64::from(nanos).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f64;
    mixed / (1u64 << 24) as f64
}

/// Grabs a free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind ephemeral");
    s.local_addr().expect("local addr").port()
}

/// True once some socket is bound to UDP `127.0.0.1:port` or `0.0.0.0:port` (host namespace).
fn udp_port_bound(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    table.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|local| wanted.iter().any(|w| w == local))
    })
}

/// The Debian FastNetMon daemon, fed by sFlow on 127.0.0.1; killed on drop.
pub struct FastNetMon {
    child: Child,
    /// Where it listens for sFlow.
    pub sflow: SocketAddr,
    /// Its log file.
    pub log_path: PathBuf,
}

/// Path of the Debian FastNetMon binary.
pub const FASTNETMON: &str = "/usr/sbin/fastnetmon";

/// FastNetMon's version line (`Version: 1.2.4`); panics loudly when it is not installed.
pub fn fastnetmon_version() -> String {
    assert!(
        Path::new(FASTNETMON).exists(),
        "\n\n*** {FASTNETMON} is missing: install the Debian package `fastnetmon` \
         (`cargo xtask setup --test-peers`). ***\n"
    );
    let out = Command::new(FASTNETMON)
        .arg("--version")
        .output()
        .expect("run fastnetmon --version");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim().to_owned()
}

impl FastNetMon {
    /// Starts FastNetMon in `dir` with sFlow on a free 127.0.0.1 port, `victim/32` as its only
    /// network, a pps threshold of `threshold_pps` (bandwidth and flow thresholds off), bans on,
    /// `script` as notify script, its shipped averaging (`average_calculation_time = 5`,
    /// `check_period = 1`), and everything that talks to the outside (usage report, API,
    /// Prometheus, BGP, databases) off. Returns once its sFlow socket is bound.
    pub fn start(dir: &Path, victim: Ipv4Addr, threshold_pps: u64, script: &Path) -> Self {
        Self::start_with(dir, &[&format!("{victim}/32")], threshold_pps, script, &[])
    }

    /// [`FastNetMon::start`] with `networks` as its networks list and `overrides` replacing
    /// (or adding) settings of its configuration file.
    pub fn start_with(
        dir: &Path,
        networks_list: &[&str],
        threshold_pps: u64,
        script: &Path,
        overrides: &[(&str, &str)],
    ) -> Self {
        fastnetmon_version();
        let port = free_udp_port();
        let networks = dir.join("networks_list");
        let whitelist = dir.join("networks_whitelist");
        let list: String = networks_list.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(&networks, list).expect("networks list");
        std::fs::write(&whitelist, "").expect("whitelist");
        let conf = dir.join("fastnetmon.conf");
        let settings = [
            ("logging_level", "info".to_owned()),
            ("logging_local_syslog_logging", "off".into()),
            ("logging_remote_syslog_logging", "off".into()),
            ("disable_usage_report", "on".into()),
            ("enable_ban", "on".into()),
            ("enable_ban_ipv6", "off".into()),
            ("process_incoming_traffic", "on".into()),
            ("process_outgoing_traffic", "on".into()),
            ("ban_details_records_count", "20".into()),
            // Restarted per flood, so the ban never expires during a run; a ban time under 2 s would
            // make its unban thread spin (it sleeps ban_time / 2 whole seconds).
            ("ban_time", "60".into()),
            ("unban_only_if_attack_finished", "on".into()),
            ("networks_list_path", networks.display().to_string()),
            ("white_list_path", whitelist.display().to_string()),
            ("check_period", "1".into()),
            ("enable_connection_tracking", "off".into()),
            ("ban_for_pps", "on".into()),
            ("ban_for_bandwidth", "off".into()),
            ("ban_for_flows", "off".into()),
            ("threshold_pps", threshold_pps.to_string()),
            ("threshold_mbps", "100000".into()),
            ("threshold_flows", "1000000".into()),
            ("mirror_afpacket", "off".into()),
            ("mirror_afxdp", "off".into()),
            ("mirror_netmap", "off".into()),
            ("pcap", "off".into()),
            ("netflow", "off".into()),
            ("sflow", "on".into()),
            ("sflow_port", port.to_string()),
            ("sflow_host", "127.0.0.1".into()),
            ("average_calculation_time", "5".into()),
            ("speed_calculation_delay", "1".into()),
            ("notify_script_path", script.display().to_string()),
            ("collect_attack_pcap_dumps", "off".into()),
            ("redis_enabled", "off".into()),
            ("mongodb_enabled", "off".into()),
            ("exabgp", "off".into()),
            ("gobgp", "off".into()),
            ("influxdb", "off".into()),
            ("graphite", "off".into()),
            ("monitor_local_ip_addresses", "off".into()),
            ("monitor_openvz_vps_ip_addresses", "off".into()),
            (
                "cli_stats_file_path",
                dir.join("fastnetmon.dat").display().to_string(),
            ),
            (
                "cli_stats_ipv6_file_path",
                dir.join("fastnetmon_ipv6.dat").display().to_string(),
            ),
            ("pid_path", dir.join("fastnetmon.pid").display().to_string()),
            ("enable_api", "off".into()),
            ("kafka_traffic_export", "off".into()),
            ("prometheus", "off".into()),
        ];
        let mut settings: Vec<(&str, String)> = settings.to_vec();
        for &(key, value) in overrides {
            match settings.iter_mut().find(|setting| setting.0 == key) {
                Some(setting) => setting.1 = value.to_owned(),
                None => settings.push((key, value.to_owned())),
            }
        }
        let body: String = settings
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        std::fs::write(&conf, body).expect("fastnetmon.conf");
        let log_path = dir.join("fastnetmon.log");
        let out = std::fs::File::create(dir.join("fastnetmon.out")).expect("stdout file");
        let child = Command::new(FASTNETMON)
            .arg("--configuration_file")
            .arg(&conf)
            .arg("--log_file")
            .arg(&log_path)
            .arg("--disable_pid_logic")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start fastnetmon");
        let mut me = Self {
            child,
            sflow: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !udp_port_bound(port) {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("fastnetmon exited early ({status}):\n{}", me.log());
            }
            assert!(
                Instant::now() < deadline,
                "fastnetmon never bound 127.0.0.1:{port}:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FastNetMon {
    fn drop(&mut self) {
        // Our own child, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `fnm-agent` in a namespace with the config as given (no `poll_interval` added, so
/// the default applies unless the body sets it); stopped with SIGTERM on drop.
pub struct BenchAgent {
    child: Option<Child>,
    /// Its log file.
    pub log_path: PathBuf,
}

impl BenchAgent {
    /// Writes `dir/fnm-agent.toml` (state dir, API and metrics addresses, then `body`), starts
    /// the agent in `ns` and waits for its API.
    pub fn start(ns: &str, dir: &Path, body: &str) -> Self {
        Self::start_binary(ns, dir, body, super::agent::binary())
    }

    /// [`BenchAgent::start`] with another build of the agent (`FNM_BENCH_BASE_AGENT`).
    pub fn start_binary(ns: &str, dir: &Path, body: &str, binary: &str) -> Self {
        let api: SocketAddr = "127.0.0.1:19210".parse().expect("address");
        let config_path = dir.join("fnm-agent.toml");
        std::fs::write(
            &config_path,
            format!(
                "state_dir = \"{}\"\n{body}\n[api]\nlisten = \"{api}\"\n[prometheus]\nlisten = \"127.0.0.1:19209\"\n",
                dir.join("state").display()
            ),
        )
        .expect("write agent config");
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path).expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, binary, "run", "--config"])
            .arg(&config_path)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fnm-agent");
        let mut me = Self {
            child: Some(child),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = me.child.as_mut().map(|c| c.try_wait()) {
                panic!("fnm-agent exited early ({status}):\n{}", me.log());
            }
            let ns1 = ns.to_owned();
            let up = NetnsPair::in_ns(&ns1, move || {
                fnm_agent::client::request(api, "GET", "/api/v1/status", None).is_ok()
            });
            if up {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "fnm-agent API never came up:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its process id (`ip netns exec` runs it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10));
        }
    }
}
