//! The XDP map poller: a source thread that reads the kernel counters on the engine's
//! request (just before each tick), turns them into an [`XdpBatch`] of per-host deltas, and
//! mirrors the engine's watched hosts into the kernel's sampling map.
//!
//! It holds no engine state while it walks the maps (batched reads: a few thousand hosts per
//! system call), so flow workers and the capture thread never stall behind a poll; it takes
//! only the data plane's leaf lock ([`crate::dataplane`]). Each poll is timed in
//! `fnm_xdp_poll_duration_seconds`.

use super::Source;
use crate::{
    accounting::{from16, Direction},
    config::Config,
    dataplane::DataPlaneHandle,
    engine::{
        input::{Batch, EngineInput, XdpBatch},
        snapshot::Snapshot,
        Flush,
    },
    traffic::{is_tcp_syn, Source as TrafficSource, TrafficRecord},
};
use prometheus_client::metrics::histogram::Histogram;
use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

/// Most packet samples taken from the ring buffer per poll.
pub const MAX_SAMPLES_PER_POLL: usize = 100_000;

/// Asks the poller thread for a poll and waits for it to be handed over.
pub struct PollRequest {
    request: crossbeam_channel::Sender<()>,
    done: crossbeam_channel::Receiver<()>,
    ticked: crossbeam_channel::Sender<Arc<Snapshot>>,
}

impl Flush for PollRequest {
    fn flush(&self, timeout: Duration) {
        // A confirmation left over from a request that timed out is not this one's.
        while self.done.try_recv().is_ok() {}
        if self.request.try_send(()).is_ok() {
            let _ = self.done.recv_timeout(timeout);
        }
    }

    fn ticked(&self, snapshot: &Arc<Snapshot>) {
        let _ = self.ticked.try_send(snapshot.clone());
    }
}

/// `fnm_xdp_poll_duration_seconds`: how long each read of the kernel maps took (the map
/// walk, the deltas and the packet samples; the rest of the tick is in
/// `fnm_poll_duration_seconds`).
#[derive(Debug)]
pub struct XdpPollMetrics {
    duration: Histogram,
}

impl Default for XdpPollMetrics {
    fn default() -> Self {
        Self {
            duration: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        }
    }
}

impl crate::metrics::MetricsSource for XdpPollMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "fnm_xdp_poll_duration_seconds",
            "Time one poll of the XDP kernel maps took (read, deltas, packet samples)",
            self.duration.clone(),
        );
    }
}

/// The running poller.
pub struct XdpPoller {
    flush: Arc<PollRequest>,
    metrics: Arc<XdpPollMetrics>,
    stop: crossbeam_channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl XdpPoller {
    /// Starts the poller thread over `dataplane`.
    pub fn start(
        config: &Config,
        dataplane: DataPlaneHandle,
        input: EngineInput,
    ) -> std::io::Result<Self> {
        let (req_tx, req_rx) = crossbeam_channel::bounded(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (ticked_tx, ticked_rx) = crossbeam_channel::bounded::<Arc<Snapshot>>(1);
        let idle_ms = config.xdp.host_idle_timeout.as_millis() as u64;
        dataplane.set_sample_one_in(config.ban.sample_one_in);
        let metrics = Arc::new(XdpPollMetrics::default());
        let observed = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("fnm-xdp-poll".into())
            .spawn(move || {
                let started = Instant::now();
                let mut sampled: HashSet<(IpAddr, Direction)> = HashSet::new();
                loop {
                    crossbeam_channel::select! {
                        recv(req_rx) -> r => if r.is_err() { return },
                        recv(ticked_rx) -> s => {
                            if let Ok(s) = s {
                                let one_in = dataplane.sample_one_in();
                                sync_sampling(&dataplane, &s, &mut sampled, one_in);
                            }
                            continue;
                        }
                        recv(stop_rx) -> _ => return,
                    }
                    let now_ms = started.elapsed().as_millis() as u64;
                    let took = Instant::now();
                    let batch = poll(&dataplane, now_ms, idle_ms);
                    observed.duration.observe(took.elapsed().as_secs_f64());
                    if let Some(b) = batch {
                        input.send(TrafficSource::Xdp, Batch::Xdp(Box::new(b)));
                    }
                    let _ = done_tx.try_send(());
                }
            })?;
        Ok(Self {
            flush: Arc::new(PollRequest {
                request: req_tx,
                done: done_rx,
                ticked: ticked_tx,
            }),
            metrics,
            stop: stop_tx,
            thread: Some(thread),
        })
    }

    /// `fnm_xdp_poll_duration_seconds`, for `/metrics`.
    pub fn metrics(&self) -> Arc<XdpPollMetrics> {
        self.metrics.clone()
    }

    /// What the engine calls before each tick.
    pub fn flush_handle(&self) -> Arc<dyn Flush> {
        self.flush.clone()
    }
}

impl Source for XdpPoller {
    fn name(&self) -> &'static str {
        "xdp poller"
    }

    fn stop(mut self: Box<Self>) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One poll of the kernel maps into a batch.
fn poll(dataplane: &DataPlaneHandle, now_ms: u64, idle_ms: u64) -> Option<XdpBatch> {
    let mut dp = dataplane.lock()?;
    let mut batch = XdpBatch::default();
    match dp.poll(&mut batch, now_ms, idle_ms) {
        Ok(stats) => batch.stats = Some(stats),
        Err(e) => tracing::warn!("polling XDP counters: {e}"),
    }
    for p in dp.drain_samples(MAX_SAMPLES_PER_POLL) {
        let (src, dst) = (from16(p.src), from16(p.dst));
        let dir = if p.direction == fnm_common::direction::OUTGOING {
            Direction::Outgoing
        } else {
            Direction::Incoming
        };
        let host = if dir == Direction::Incoming { dst } else { src };
        let record = TrafficRecord {
            src_port: p.src_port,
            dst_port: p.dst_port,
            tcp_flags: p.tcp_flags,
            ttl: p.ttl,
            fragments: u64::from(p.fragment),
            tcp_syn_packets: u64::from(is_tcp_syn(p.protocol, p.tcp_flags)),
            ..TrafficRecord::packet(src, dst, p.protocol, u64::from(p.ip_len))
        };
        batch.samples.push((host, dir, record));
    }
    Some(batch)
}

/// Makes the kernel sample exactly the hosts the engine watches.
fn sync_sampling(
    dataplane: &DataPlaneHandle,
    snap: &Snapshot,
    sampled: &mut HashSet<(IpAddr, Direction)>,
    one_in: u32,
) {
    let watched: HashSet<(IpAddr, Direction)> = snap.watched.iter().copied().collect();
    if watched == *sampled {
        return;
    }
    let Some(mut dp) = dataplane.lock() else {
        return;
    };
    let dp = &mut *dp;
    for (host, dir) in watched.difference(sampled) {
        if let Err(e) = dp
            .tables
            .set_sampling(&mut dp.maps, *host, *dir, Some(one_in))
        {
            tracing::warn!("XDP sampling of {host}: {e}");
        }
    }
    for (host, dir) in sampled.difference(&watched) {
        if let Err(e) = dp.tables.set_sampling(&mut dp.maps, *host, *dir, None) {
            tracing::warn!("XDP sampling of {host}: {e}");
        }
    }
    *sampled = watched;
}
