//! `fnm-agent replay FILE.pcap`: runs a capture file through the same parser, accounting and
//! detection as live traffic, with the file's timestamps driving the clock, and reports the
//! per-host summary and the attacks found. Nothing is banned. It runs the agent's engine
//! ([`EngineCore`]) itself, so a replay detects exactly what the live agent would.

use crate::{
    accounting::Accounting,
    capture::{pcap_file, PacketSink},
    config::Config,
    detection::attack::Attack,
    engine::{book::AttackBook, core::EngineCore},
    traffic::{Source, TrafficRecord},
    views::HostView,
};
use serde::Serialize;
use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

/// What a replay found.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    /// Per local host, the same fields as `GET /api/v1/hosts/{ip}` (without `ip`).
    pub hosts: BTreeMap<IpAddr, HostDirections>,
    /// Attacks detected, in order.
    pub attacks: Vec<Attack>,
    /// Frames read, counted, not IP, malformed.
    pub frames: FrameCounts,
}

/// Both directions of a host.
#[derive(Debug, Serialize)]
pub struct HostDirections {
    /// Towards the host.
    pub incoming: crate::views::DirectionView,
    /// From the host.
    pub outgoing: crate::views::DirectionView,
}

/// Frame counters of the file.
#[derive(Debug, Default, Serialize)]
pub struct FrameCounts {
    /// Frames in the file.
    pub total: u64,
    /// Frames counted as IP packets.
    pub ip: u64,
    /// Frames that were not IP.
    pub not_ip: u64,
    /// Truncated or malformed frames.
    pub malformed: u64,
}

struct ReplaySink {
    engine: EngineCore,
    interval_ms: u64,
    next_tick_ms: Option<u64>,
}

impl ReplaySink {
    fn tick_until(&mut self, t_ms: u64) {
        let mut next = *self.next_tick_ms.get_or_insert(t_ms + self.interval_ms);
        while t_ms >= next {
            // The pcap clock is both the engine's clock and the attack records' time.
            self.engine.tick(next, next);
            next += self.interval_ms;
        }
        self.next_tick_ms = Some(next);
    }
}

impl PacketSink for ReplaySink {
    fn packet(&mut self, timestamp: Duration, record: TrafficRecord) {
        self.tick_until(timestamp.as_millis() as u64);
        self.engine.ingest_record(&record, Source::Replay);
    }
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read as pcap or pcapng.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The reader's error.
        source: pcap_file::PcapFileError,
    },
}

/// Replays `path` with `config`'s networks, thresholds and hostgroups.
pub fn replay(path: &Path, config: &Config) -> Result<ReplayReport, ReplayError> {
    let file_err = |source| ReplayError::File {
        path: path.display().to_string(),
        source,
    };
    let interval_ms = config.poll_interval.as_millis().max(1) as u64;
    let acc = Accounting::new(
        config.networks.iter().copied().collect(),
        usize::MAX,
        config.xdp.max_flows as usize,
        interval_ms,
    )
    .with_rate_window(config.rate_window.as_millis() as u64)
    .with_ignored_sources(config.detection.whitelist_sources.iter().copied().collect());
    let engine = EngineCore::with_accounting(config, acc, AttackBook::in_memory())
        .with_forget_after(u64::MAX);
    let mut sink = ReplaySink {
        engine,
        interval_ms,
        next_tick_ms: None,
    };
    let mut reader = pcap_file::PcapReader::open(path).map_err(file_err)?;
    let stats = pcap_file::replay(&mut reader, &mut sink).map_err(file_err)?;
    // Close the last window so rates and open attacks reflect the end of the file.
    if let Some(next) = sink.next_tick_ms {
        sink.engine.tick(next, next);
    }
    let engine = &mut sink.engine;
    let snap = engine.snapshot(0);
    let mut attacks: Vec<Attack> = engine.book().shared().iter().rev().cloned().collect();
    for a in attacks.iter_mut().filter(|a| a.ended_unix_ms.is_none()) {
        if let Some(p) = snap.live_peak(&a.id) {
            a.peak_rates = a.peak_rates.max(&p);
        }
    }
    let mut hosts = BTreeMap::new();
    for (ip, h) in engine.accounting().hosts() {
        let v = HostView::new(*ip, h);
        hosts.insert(
            *ip,
            HostDirections {
                incoming: v.incoming,
                outgoing: v.outgoing,
            },
        );
    }
    Ok(ReplayReport {
        hosts,
        attacks,
        frames: FrameCounts {
            total: stats.frames,
            ip: stats.records,
            not_ip: stats.not_ip,
            malformed: stats.malformed,
        },
    })
}
