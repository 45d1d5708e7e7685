//! Attack pcap dumps (`[attack_pcap]`, FastNetMon's `collect_attack_pcap_dumps`): the sampled
//! packets of each attack written to `<state_dir>/attacks/<id>.pcap`, linked from the attack
//! record (`pcap_file`) and served by `GET /api/v1/attacks/{id}/pcap`.
//!
//! The engine hands the samples the accounting keeps for the attacked host and direction (what
//! every source samples: the XDP program's ring buffer, the capture backend's packets, flow
//! records) to a writer thread when the attack opens and, while it goes on, the samples that
//! arrived since, after each tick. No source keeps a packet's bytes, so each sample is written
//! as the headers it describes: Ethernet, IPv4 or IPv6 (addresses, protocol, TTL, length) and
//! TCP, UDP or ICMP (ports or type and code, TCP flags), with the packet's original length and
//! no payload (tshark shows it as cut by the snap length). A flow record (many packets) is one
//! such packet of its average size.
//!
//! Bounded: a file stops growing at `max_file_bytes`; at most `max_files` dumps are kept (the
//! oldest is removed when a new attack needs room); the writer's queue holds at most
//! [`QUEUE`] hand-overs (beyond, they are dropped and counted). The engine never touches the
//! disk, but once at start: an attack still ongoing when the agent stopped (carried over by
//! the attack book) goes on being written to the file its record links ([`PcapDumps::resume`],
//! a record cut short by a crash cut off first), within the same bounds.

use crate::{
    accounting::{Accounting, Direction},
    traffic::TrafficRecord,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

/// Hand-overs the writer's queue holds.
pub const QUEUE: usize = 256;

/// Largest `max_file_bytes`.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// `[attack_pcap]`: sampled packets of each attack in a pcap file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttackPcapConfig {
    /// Write `<state_dir>/attacks/<id>.pcap` for each attack. Default: `true`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A dump stops growing at this size. Default: `1048576` (1 MiB, about 10 000 packets).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Most dumps kept; the oldest is removed to make room. Default: `64`.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

impl Default for AttackPcapConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_file_bytes: default_max_file_bytes(),
            max_files: default_max_files(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_max_file_bytes() -> u64 {
    1 << 20
}
fn default_max_files() -> usize {
    64
}

impl AttackPcapConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if !(PCAP_HEADER_BYTES as u64 + 1..=MAX_FILE_BYTES).contains(&self.max_file_bytes) {
            return Err(format!(
                "attack_pcap.max_file_bytes = {}: must be between {} and {MAX_FILE_BYTES}",
                self.max_file_bytes,
                PCAP_HEADER_BYTES + 1
            ));
        }
        if !(1..=100_000).contains(&self.max_files) {
            return Err(format!(
                "attack_pcap.max_files = {}: must be between 1 and 100000",
                self.max_files
            ));
        }
        Ok(())
    }
}

/// The directory of the dumps.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("attacks")
}

/// Bytes of a pcap file's global header.
const PCAP_HEADER_BYTES: usize = 24;
/// Bytes of a pcap record header.
const RECORD_HEADER_BYTES: usize = 16;

/// What the writer thread is asked to do.
struct Job {
    id: String,
    /// (capture time in ms since the UNIX epoch, sample).
    packets: Vec<(u64, TrafficRecord)>,
    limits: AttackPcapConfig,
}

/// An attack whose samples go on being written.
#[derive(Debug)]
struct Tracked {
    host: IpAddr,
    direction: Direction,
    /// The host's sample counter (`SampleBuffer::seen`) already handed over.
    seen: u64,
    /// Bytes handed over so far (the file's size, if the writer wrote them all).
    bytes: u64,
}

/// The engine's side of the dumps: what was handed over per ongoing attack, and the writer.
pub struct PcapDumps {
    dir: PathBuf,
    config: AttackPcapConfig,
    tracked: HashMap<String, Tracked>,
    tx: Option<crossbeam_channel::Sender<Job>>,
    /// Hand-overs dropped (queue full) and files that failed to write.
    pub dropped: Arc<AtomicU64>,
}

impl PcapDumps {
    /// Dumps under `<state_dir>/attacks`, written by a thread of their own.
    pub fn new(state_dir: &Path, config: AttackPcapConfig) -> Self {
        let dir = dir(state_dir);
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let (d, failed) = (dir.clone(), dropped.clone());
        let spawned = std::thread::Builder::new()
            .name("fnm-pcap".into())
            .spawn(move || {
                for job in rx {
                    if let Err(e) = append(&d, &job) {
                        failed.fetch_add(1, Relaxed);
                        tracing::warn!("attack pcap {}: {e}", job.id);
                    }
                }
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!("attack pcap writer not started: {e}");
                None
            }
        };
        Self {
            dir,
            config,
            tracked: HashMap::new(),
            tx,
            dropped,
        }
    }

    /// Dumps that write nothing (replay, tests).
    pub fn disabled() -> Self {
        Self {
            dir: PathBuf::new(),
            config: AttackPcapConfig {
                enabled: false,
                ..AttackPcapConfig::default()
            },
            tracked: HashMap::new(),
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Takes reloaded limits (attacks being written go on under them).
    pub fn reconfigure(&mut self, config: &AttackPcapConfig) {
        self.config = config.clone();
    }

    /// An attack opened on (`host`, `direction`): hands over the samples kept so far and
    /// returns the file its record links to (`None` when dumps are off). `offset_ms` turns the
    /// accounting's clock into UNIX time.
    pub fn open(
        &mut self,
        id: &str,
        host: IpAddr,
        direction: Direction,
        acc: &Accounting,
        offset_ms: i128,
    ) -> Option<PathBuf> {
        if !self.config.enabled || self.tx.is_none() {
            return None;
        }
        self.tracked.insert(
            id.to_owned(),
            Tracked {
                host,
                direction,
                seen: 0,
                bytes: PCAP_HEADER_BYTES as u64,
            },
        );
        self.hand_over(id, acc, offset_ms, true);
        Some(self.dir.join(format!("{id}.pcap")))
    }

    /// At start, before the first tick: carries on the dump of attack `id` on (`host`,
    /// `direction`), ongoing when the agent stopped, whose record links `file`. Later samples
    /// are appended to that file, which counts toward `max_file_bytes` with what it holds. A
    /// record a crash cut short is cut off first, so tshark reads the file to its end. Nothing
    /// is resumed when dumps are off, the record links no file, the file is not this
    /// attack's dump under the current `state_dir`, or it is no pcap file (left as it is).
    pub fn resume(&mut self, id: &str, host: IpAddr, direction: Direction, file: Option<&Path>) {
        if !self.config.enabled || self.tx.is_none() {
            return;
        }
        let own = self.dir.join(format!("{id}.pcap"));
        if file != Some(own.as_path()) {
            return;
        }
        let bytes = match repair(&own) {
            Ok(bytes) => bytes,
            // Removed to make room, or never written: the writer starts it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PCAP_HEADER_BYTES as u64,
            Err(e) => {
                tracing::warn!(
                    "attack pcap {}: not carried on after the restart: {e}",
                    own.display()
                );
                return;
            }
        };
        tracing::info!(
            "attack pcap {}: carried on after the restart ({bytes} bytes so far)",
            own.display()
        );
        self.tracked.insert(
            id.to_owned(),
            Tracked {
                host,
                direction,
                seen: 0,
                bytes,
            },
        );
    }

    /// After a tick: hands over the samples of each ongoing attack that arrived since the last
    /// hand-over; forgets the attacks no longer in `ongoing`.
    pub fn tick<'a>(
        &mut self,
        acc: &Accounting,
        ongoing: impl Iterator<Item = &'a str>,
        offset_ms: i128,
    ) {
        if self.tracked.is_empty() {
            return;
        }
        let ongoing: std::collections::HashSet<&str> = ongoing.collect();
        self.tracked.retain(|id, _| ongoing.contains(id.as_str()));
        let ids: Vec<String> = self.tracked.keys().cloned().collect();
        for id in ids {
            self.hand_over(&id, acc, offset_ms, false);
        }
    }

    fn hand_over(&mut self, id: &str, acc: &Accounting, offset_ms: i128, first: bool) {
        let Some(t) = self.tracked.get_mut(id) else {
            return;
        };
        if t.bytes >= self.config.max_file_bytes {
            return;
        }
        let Some(samples) = acc.samples(t.host, t.direction) else {
            return;
        };
        let new = samples.seen.saturating_sub(t.seen) as usize;
        t.seen = samples.seen;
        if new == 0 && !first {
            return;
        }
        let kept = samples.records.len();
        let mut packets = Vec::new();
        for (ms, r) in samples.records.iter().skip(kept.saturating_sub(new)) {
            let size = (RECORD_HEADER_BYTES + frame(r).len()) as u64;
            if t.bytes + size > self.config.max_file_bytes {
                break;
            }
            t.bytes += size;
            let unix = (i128::from(*ms) + offset_ms).max(0) as u64;
            packets.push((unix, r.clone()));
        }
        let job = Job {
            id: id.to_owned(),
            packets,
            limits: self.config.clone(),
        };
        if let Some(tx) = &self.tx {
            if tx.try_send(job).is_err() {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Appends `job`'s packets to its file, creating it (and making room among the dumps) first.
fn append(dir: &Path, job: &Job) -> std::io::Result<()> {
    let path = dir.join(format!("{}.pcap", job.id));
    let mut size = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(_) => {
            std::fs::create_dir_all(dir)?;
            prune(dir, job.limits.max_files.saturating_sub(1))?;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&global_header())?;
            PCAP_HEADER_BYTES as u64
        }
    };
    let mut out = Vec::new();
    for (unix_ms, r) in &job.packets {
        let frame = frame(r);
        let total = (RECORD_HEADER_BYTES + frame.len()) as u64;
        if size + total > job.limits.max_file_bytes {
            break;
        }
        size += total;
        let orig = 14 + per_packet_len(r);
        out.extend_from_slice(&((unix_ms / 1000) as u32).to_le_bytes());
        out.extend_from_slice(&(((unix_ms % 1000) * 1000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(orig.max(frame.len()) as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    if out.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
    f.write_all(&out)
}

/// Checks a dump written before a restart: its global header, then record by record; cuts off
/// a last record the agent did not finish writing. Returns the size kept. A file that does not
/// start with this writer's header is an error (and left alone).
fn repair(path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut header = [0u8; PCAP_HEADER_BYTES];
    if len < PCAP_HEADER_BYTES as u64 {
        // Cut short before its header was whole: start it again.
        f.set_len(0)?;
        f.write_all(&global_header())?;
        return Ok(PCAP_HEADER_BYTES as u64);
    }
    f.read_exact(&mut header)?;
    if header != global_header() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an attack pcap dump of this agent (unexpected header)",
        ));
    }
    let mut pos = PCAP_HEADER_BYTES as u64;
    let mut record = [0u8; RECORD_HEADER_BYTES];
    while pos + RECORD_HEADER_BYTES as u64 <= len {
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut record)?;
        let captured = u32::from_le_bytes([record[8], record[9], record[10], record[11]]);
        let end = pos + RECORD_HEADER_BYTES as u64 + u64::from(captured);
        if end > len {
            break;
        }
        pos = end;
    }
    if pos < len {
        f.set_len(pos)?;
    }
    Ok(pos)
}

/// Removes the oldest dumps until at most `keep` remain.
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut dumps: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "pcap"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if dumps.len() <= keep {
        return Ok(());
    }
    dumps.sort();
    let excess = dumps.len() - keep;
    for (_, path) in dumps.into_iter().take(excess) {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

/// A classic pcap global header: microsecond timestamps, Ethernet.
fn global_header() -> [u8; PCAP_HEADER_BYTES] {
    let mut h = [0u8; PCAP_HEADER_BYTES];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&65_535u32.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h
}

/// IP bytes of one packet of `r` (a flow record's average), at least its headers.
fn per_packet_len(r: &TrafficRecord) -> usize {
    let avg = r.bytes / r.packets.max(1);
    let min = ip_header_len(r) + l4_header_len(r.protocol);
    (avg as usize).clamp(min, 65_535)
}

fn ip_header_len(r: &TrafficRecord) -> usize {
    if r.dst.is_ipv4() && r.src.is_ipv4() {
        20
    } else {
        40
    }
}

fn l4_header_len(protocol: u8) -> usize {
    match protocol {
        6 => 20,
        17 => 8,
        1 | 58 => 8,
        _ => 0,
    }
}

/// The headers of one packet of `r`: Ethernet, IP, TCP/UDP/ICMP (no payload).
pub fn frame(r: &TrafficRecord) -> Vec<u8> {
    let ip_len = per_packet_len(r);
    let mut f = Vec::with_capacity(14 + 40 + 20);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
    let ttl = if r.ttl == 0 { 64 } else { r.ttl };
    match (r.src, r.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let start = f.len();
            f.push(0x45);
            f.push(0);
            f.extend_from_slice(&(ip_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            let frag = if r.fragments > 0 { 0x2000u16 } else { 0 };
            f.extend_from_slice(&frag.to_be_bytes());
            f.push(ttl);
            f.push(r.protocol);
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            let sum = checksum(&f[start..start + 20]);
            f[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((ip_len.saturating_sub(40)) as u16).to_be_bytes());
            f.push(r.protocol);
            f.push(ttl);
            f.extend_from_slice(&v6(s));
            f.extend_from_slice(&v6(d));
        }
    }
    let l4_len = ip_len.saturating_sub(ip_header_len(r)) as u16;
    match r.protocol {
        6 => {
            f.extend_from_slice(&r.src_port.to_be_bytes());
            f.extend_from_slice(&r.dst_port.to_be_bytes());
            f.extend_from_slice(&[0; 8]);
            f.push(0x50);
            f.push(r.tcp_flags);
            f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        }
        17 => {
            f.extend_from_slice(&r.src_port.to_be_bytes());
            f.extend_from_slice(&r.dst_port.to_be_bytes());
            f.extend_from_slice(&l4_len.to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        1 | 58 => {
            f.push(r.src_port as u8);
            f.push(r.dst_port as u8);
            f.extend_from_slice(&[0; 6]);
        }
        _ => {}
    }
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Registers `fnm_attack_pcap_dropped_total`.
pub fn register(
    registry: &mut prometheus_client::registry::Registry,
    snap: &crate::engine::snapshot::Snapshot,
) {
    let c = prometheus_client::metrics::counter::Counter::<u64>::default();
    c.inc_by(snap.attack_pcap_dropped);
    registry.register(
        "fnm_attack_pcap_dropped",
        "Attack pcap hand-overs dropped (writer queue full) or that failed to write",
        c,
    );
}

/// `GET /api/v1/attacks/{id}/pcap`: the attack's dump (`application/vnd.tcpdump.pcap`).
pub async fn serve(
    axum::extract::State(st): axum::extract::State<crate::api::ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse};
    let not_found = |msg: String| {
        (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": msg })),
        )
            .into_response()
    };
    let snap = st.engine.snapshot();
    let Some(attack) = snap.attacks.iter().find(|a| a.id == id) else {
        return not_found(format!("no attack {id:?}"));
    };
    let Some(path) = attack.pcap_file.clone() else {
        return not_found(format!(
            "attack {id} has no pcap dump (attack_pcap.enabled)"
        ));
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/vnd.tcpdump.pcap".to_string(),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}.pcap\""),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => not_found(format!(
            "attack {id}: {} cannot be read ({e}; removed to make room for newer dumps?)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(src: &str, dst: &str, protocol: u8, bytes: u64) -> TrafficRecord {
        TrafficRecord {
            src_port: 53,
            dst_port: 4444,
            ttl: 57,
            ..TrafficRecord::packet(src.parse().unwrap(), dst.parse().unwrap(), protocol, bytes)
        }
    }

    #[test]
    fn frames_carry_the_sampled_headers() {
        let f = frame(&rec("192.0.2.1", "10.0.0.1", 17, 428));
        assert_eq!(f.len(), 14 + 20 + 8);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 428);
        assert_eq!(checksum(&f[14..34]), 0, "valid IPv4 header checksum");
        assert_eq!((f[22], f[23]), (57, 17));
        assert_eq!(&f[26..30], &[192, 0, 2, 1]);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 53);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 408);
        let f = frame(&rec("2001:db8::1", "2001:db8::2", 6, 60));
        assert_eq!(f.len(), 14 + 40 + 20);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 20);
    }

    #[test]
    fn files_are_bounded_in_size_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let limits = AttackPcapConfig {
            enabled: true,
            max_file_bytes: 24 + 10 * (16 + 42),
            max_files: 3,
        };
        let packets: Vec<_> = (0..50)
            .map(|i| (1_700_000_000_000 + i, rec("192.0.2.1", "10.0.0.1", 17, 100)))
            .collect();
        for n in 0..5 {
            let job = Job {
                id: format!("a{n}"),
                packets: packets.clone(),
                limits: limits.clone(),
            };
            append(dir.path(), &job).unwrap();
            // Appending again never goes past the cap.
            append(dir.path(), &job).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a2.pcap", "a3.pcap", "a4.pcap"]);
        let len = std::fs::metadata(dir.path().join("a4.pcap")).unwrap().len();
        assert_eq!(len, limits.max_file_bytes);
    }

    /// Record count of a dump, checking each record lies wholly inside the file.
    fn records(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes[..PCAP_HEADER_BYTES], global_header());
        let (mut pos, mut n) = (PCAP_HEADER_BYTES, 0);
        while pos < bytes.len() {
            let cap = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
            pos += RECORD_HEADER_BYTES + cap;
            assert!(pos <= bytes.len(), "record cut short");
            n += 1;
        }
        n
    }

    #[test]
    fn an_attack_carried_over_a_restart_goes_on_in_its_file_within_bounds() {
        let state = tempfile::tempdir().unwrap();
        let dir = super::dir(state.path());
        let per_packet = (RECORD_HEADER_BYTES + 42) as u64;
        let limits = AttackPcapConfig {
            enabled: true,
            max_file_bytes: PCAP_HEADER_BYTES as u64 + 12 * per_packet,
            max_files: 4,
        };
        let victim: IpAddr = "10.0.0.1".parse().unwrap();
        let flood = |n: u64| -> Vec<(u64, TrafficRecord)> {
            (0..n)
                .map(|i| (1_700_000_000_000 + i, rec("192.0.2.1", "10.0.0.1", 17, 100)))
                .collect()
        };
        // Before the restart: 5 packets, then a crash in the middle of the sixth.
        let id = "0193a0b4-7c2e-7d1a-9f3e-2b1c4d5e6f70";
        let path = dir.join(format!("{id}.pcap"));
        let job = Job {
            id: id.into(),
            packets: flood(5),
            limits: limits.clone(),
        };
        append(&dir, &job).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[1, 2, 3, 4, 5, 6, 7, 8, 42, 0, 0, 0, 9])
            .unwrap();
        drop(f);

        // After it: the record links the file; the new agent carries it on.
        let mut dumps = PcapDumps::new(state.path(), limits.clone());
        dumps.resume(id, victim, Direction::Incoming, Some(&path));
        let kept = PCAP_HEADER_BYTES as u64 + 5 * per_packet;
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            kept,
            "cut record gone"
        );
        assert_eq!(records(&path), 5);
        // A link elsewhere (another state_dir) or to no file of this agent: not carried on.
        dumps.resume(
            "other",
            victim,
            Direction::Incoming,
            Some(Path::new("/x.pcap")),
        );
        let foreign = dir.join("foreign.pcap");
        std::fs::write(&foreign, b"not a pcap at all, but long enough").unwrap();
        dumps.resume("foreign", victim, Direction::Incoming, Some(&foreign));
        assert_eq!(dumps.tracked.len(), 1);
        assert_eq!(
            std::fs::read(&foreign).unwrap(),
            b"not a pcap at all, but long enough"
        );

        // The flood goes on: 20 new samples, of which 7 fit under max_file_bytes.
        let nets: crate::prefix::PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let mut acc = Accounting::new(nets, 10, 100, 250);
        acc.watch(victim, Direction::Incoming);
        for (_, r) in flood(20) {
            acc.add_sample(victim, Direction::Incoming, r);
        }
        dumps.tick(&acc, [id].into_iter(), 1_700_000_000_000);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() == kept {
            assert!(std::time::Instant::now() < deadline, "nothing appended");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(records(&path), 12);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            limits.max_file_bytes
        );
        // Removed meanwhile (room for newer dumps): started again.
        std::fs::remove_file(&path).unwrap();
        let mut again = PcapDumps::new(state.path(), limits);
        again.resume(id, victim, Direction::Incoming, Some(&path));
        assert_eq!(again.tracked[id].bytes, PCAP_HEADER_BYTES as u64);
    }
}
