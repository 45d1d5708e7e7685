//! The sFlow and NetFlow/IPFIX collector service: UDP sockets, worker threads, decoding, and
//! the hand-off of traffic records to the accounting.
//!
//! Each listen address gets `workers` sockets bound with `SO_REUSEPORT` (Linux; the kernel
//! spreads exporters over them by source address and port, so one exporter's datagrams stay
//! in order on one socket) and one thread per socket. Elsewhere one socket and thread per
//! address is used. A thread receives a batch of datagrams (`recvmmsg`) and decodes each
//! straight into its buffer of [`TrafficRecord`]s (no per-datagram allocation); once it holds
//! [`HAND_OVER_RECORDS`] records or the oldest waited [`HAND_OVER_AFTER`], it hands the buffer
//! to the sink (the engine's input, which takes the buffer itself rather than a copy when it is
//! at least half full) and merges its counters into the shared [`CollectorMetrics`].
//!
//! NetFlow v9 and IPFIX templates live in one [`TemplateCache`] shared by the NetFlow workers;
//! it is loaded from `<state_dir>/flow-templates.json` at start, saved every
//! [`TEMPLATE_SAVE_INTERVAL`] when it changed, and saved on stop, through the durable
//! [`StateFile`] store (a file that cannot be loaded is set aside, see `load_templates`).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::collector_metrics::{BatchCounts, CollectorMetrics, SocketInfo};
use super::socket::{self, BatchReceiver};
use super::{decode_netflow_family, sflow, DecodeError, NetflowDatagram, TemplateCache};
use crate::{
    accounting::Accounting,
    prefix::{Prefix, PrefixSet},
    state::store::{Loaded, OnBadFile, StateFile},
    traffic::{ExporterSpan, Source, TrafficRecord},
};

/// How often a changed template cache is written to the state directory.
pub const TEMPLATE_SAVE_INTERVAL: Duration = Duration::from_secs(30);
/// File name of the template cache in the state directory.
pub const TEMPLATE_FILE: &str = "flow-templates.json";
/// Datagrams taken per receive call.
pub const RECEIVE_BATCH: usize = 64;

/// A worker hands its decoded records to the sink once it holds this many (checked after
/// each datagram)...
pub const HAND_OVER_RECORDS: usize = 1024;
/// Records a worker's buffer is made for: the engine's input takes a buffer at least half
/// full as it is instead of copying it (so a hand-over of [`HAND_OVER_RECORDS`] moves and a
/// small one is copied, and a buffer in the engine's channel is never more than half empty),
/// and a datagram's records rarely make it grow.
const RECORDS_CAPACITY: usize = 2 * HAND_OVER_RECORDS;

/// ... or once its oldest record waited this long: one hand-over (a copy and a channel send;
/// then also the engine's wake-up, which a gathering engine now spares most hand-overs, see
/// `engine::GATHER_FOR`) per thousand records instead of one per datagram, which at 10 000
/// datagrams/s halved the collectors' and the engine's CPU per record (docs/performance.md),
/// for at most this much delay.
pub const HAND_OVER_AFTER: Duration = Duration::from_millis(10);
/// A worker that drained its socket while it holds records sleeps up to this long before the
/// next receive, so that at moderate rates one wake-up takes many datagrams rather than one or
/// two (a wake-up and a system call cost more than decoding a datagram). The socket buffer
/// holds what arrives meanwhile (see [`gather_time`]: never more than a quarter of it); at
/// rates that keep a receive batch full it never sleeps. 3 ms: at 16 000 datagrams/s a
/// wake-up takes about 48 datagrams, three quarters of a [`RECEIVE_BATCH`] (1 ms took about
/// 16, and switching in and out was ~14 % of the sFlow thread in a profile). 8 ms cut the
/// wake-ups from ~320/s to ~120/s but not measurably the thread's CPU, and the lossless
/// ladder's top step was lost in the one run made with it (docs/performance.md).
pub const GATHER_FOR: Duration = Duration::from_millis(3);
/// The gathering sleep after an idle spell, before the arrival rate is measured.
const FIRST_GATHER: Duration = Duration::from_millis(1);
/// What a datagram is assumed to take of the socket's receive buffer beyond its payload (the
/// kernel charges the whole buffer it was received into, up to a page on many NIC drivers):
/// generous, so the gathering sleep errs short.
const DATAGRAM_OVERHEAD_BYTES: u64 = 4096;

/// How long a worker that drained its socket may sleep: [`GATHER_FOR`], shortened so that
/// datagrams arriving at the rate of the last `arrived_bytes` (payload plus
/// [`DATAGRAM_OVERHEAD_BYTES`] each) over `over` fill at most a quarter of a
/// `receive_buffer_bytes` socket buffer meanwhile: a buffer the kernel did not grant in full
/// must not overflow while the worker sleeps.
pub fn gather_time(arrived_bytes: u64, over: Duration, receive_buffer_bytes: usize) -> Duration {
    let quarter = receive_buffer_bytes as u64 / 4;
    if arrived_bytes == 0 {
        return GATHER_FOR;
    }
    // quarter / (arrived_bytes / over), in nanoseconds, without overflow.
    let nanos = u128::from(quarter).saturating_mul(over.as_nanos()) / u128::from(arrived_bytes);
    GATHER_FOR.min(Duration::from_nanos(
        u64::try_from(nanos).unwrap_or(u64::MAX),
    ))
}
/// Largest forward jump of a sequence number counted as loss; larger jumps (and going
/// backwards by more than this) are taken as an exporter restart.
const MAX_PLAUSIBLE_GAP: u32 = 1 << 20;
/// Most sequence streams (exporter, sub-agent / source id / domain) tracked per worker.
const MAX_SEQUENCE_STREAMS: usize = 65_536;

/// `[sflow]`: the sFlow v5 collector (listen default `0.0.0.0:6343`).
pub type SflowConfig = CollectorConfig<6343>;
/// `[netflow]`: the NetFlow v5 / v9 / IPFIX collector (listen default `0.0.0.0:2055`); the
/// three are told apart by the version field on the same sockets.
pub type NetflowConfig = CollectorConfig<2055>;

/// Settings shared by the `[sflow]` and `[netflow]` collectors; `PORT` is the default port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig<const PORT: u16> {
    /// Addresses to receive on; `[]` turns the collector off. Default: `["0.0.0.0:6343"]` for
    /// sFlow, `["0.0.0.0:2055"]` for NetFlow/IPFIX.
    #[serde(default = "default_listen::<PORT>")]
    pub listen: Vec<SocketAddr>,
    /// Receive buffer asked for each socket (`SO_RCVBUFFORCE`, else `SO_RCVBUF` capped by
    /// `net.core.rmem_max`); the granted size is exported as
    /// `fnm_flow_socket_receive_buffer_bytes`. Default: `33554432` (32 MiB).
    #[serde(default = "default_receive_buffer")]
    pub receive_buffer_bytes: usize,
    /// Sockets (`SO_REUSEPORT`) and threads per listen address; `0` = one per CPU core. Only
    /// Linux spreads datagrams over several sockets; elsewhere one is used. Default: `0`.
    #[serde(default)]
    pub workers: usize,
    /// When not empty, only exporters inside these prefixes are accepted; datagrams from
    /// others are counted in `fnm_flow_datagrams_dropped_total{reason="not_allowed"}`.
    /// Flow datagrams are UDP: without a list, anyone who reaches the port can feed the
    /// accounting (each exporter address only up to `accounting.max_hosts_per_exporter`
    /// hosts), so the agent warns at start when a listening collector has none.
    /// Default: `[]` (every exporter).
    #[serde(default)]
    pub allowed_exporters: Vec<Prefix>,
    /// 1-in-N sampling rate assumed for exporters that announce none. Default: `1`.
    #[serde(default = "default_sampling_rate")]
    pub default_sampling_rate: u32,
    /// Per-exporter overrides (`[[sflow.exporter]]` / `[[netflow.exporter]]`). Default: none.
    #[serde(default, rename = "exporter", skip_serializing_if = "Vec::is_empty")]
    pub exporters: Vec<ExporterOverride>,
}

/// One `[[sflow.exporter]]` / `[[netflow.exporter]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExporterOverride {
    /// The exporter's source address (as the UDP datagrams arrive from it).
    pub address: IpAddr,
    /// Label used in metrics instead of the address. Default: the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 1-in-N sampling rate for this exporter's records that announce none (replaces
    /// `default_sampling_rate` for it). Default: `default_sampling_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<u32>,
}

fn default_listen<const PORT: u16>() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], PORT))]
}
fn default_receive_buffer() -> usize {
    32 << 20
}
fn default_sampling_rate() -> u32 {
    1
}

impl<const PORT: u16> Default for CollectorConfig<PORT> {
    fn default() -> Self {
        Self {
            listen: default_listen::<PORT>(),
            receive_buffer_bytes: default_receive_buffer(),
            workers: 0,
            allowed_exporters: Vec::new(),
            default_sampling_rate: default_sampling_rate(),
            exporters: Vec::new(),
        }
    }
}

impl<const PORT: u16> CollectorConfig<PORT> {
    /// A collector listening on `listen` with every other setting at its default.
    pub fn listening_on(listen: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            ..Self::default()
        }
    }

    /// Checks ranges and duplicates; `section` names the TOML table in messages.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.receive_buffer_bytes == 0 {
            return Err(format!("{section}.receive_buffer_bytes must be above 0"));
        }
        if self.workers > 1024 {
            return Err(format!("{section}.workers must be at most 1024"));
        }
        if self.default_sampling_rate == 0 {
            return Err(format!(
                "{section}.default_sampling_rate must be at least 1"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for exporter in &self.exporters {
            if !seen.insert(exporter.address) {
                return Err(format!(
                    "{section}.exporter: {} is listed twice",
                    exporter.address
                ));
            }
            if exporter.sampling_rate == Some(0) {
                return Err(format!(
                    "{section}.exporter {}: sampling_rate must be at least 1",
                    exporter.address
                ));
            }
            if let Some(name) = &exporter.name {
                if name.is_empty() || name.len() > 128 {
                    return Err(format!(
                        "{section}.exporter {}: name must be 1 to 128 characters",
                        exporter.address
                    ));
                }
            }
        }
        Ok(())
    }

    /// Worker threads per listen address on this system.
    fn effective_workers(&self) -> usize {
        if !cfg!(target_os = "linux") {
            return 1;
        }
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Where decoded traffic goes: once per hand-over (see [`HAND_OVER_RECORDS`]).
pub trait TrafficSink: Send + Sync + 'static {
    /// Accounts a batch of records from `source`.
    fn ingest_batch(&self, source: Source, records: &[TrafficRecord]);

    /// Accounts a batch of records from `source` with the exporters that sent them (`spans`,
    /// in order), so the hosts they bring in count against each exporter's budget. Default:
    /// [`TrafficSink::ingest_batch`], ignoring the exporters.
    fn ingest_exported(&self, source: Source, records: &[TrafficRecord], spans: &[ExporterSpan]) {
        let _ = spans;
        self.ingest_batch(source, records);
    }

    /// Hands over what a collector worker gathered, `records` and their `spans`, leaving
    /// both empty. A sink may take the `records` buffer itself instead of copying it (the
    /// worker then starts a new one). Default: [`TrafficSink::ingest_exported`], then clear.
    fn hand_over(
        &self,
        source: Source,
        records: &mut Vec<TrafficRecord>,
        spans: &mut Vec<ExporterSpan>,
    ) {
        self.ingest_exported(source, records, spans);
        records.clear();
        spans.clear();
    }
}

impl TrafficSink for Mutex<Accounting> {
    fn ingest_batch(&self, source: Source, records: &[TrafficRecord]) {
        lock(self).ingest_batch(records, source);
    }

    fn ingest_exported(&self, source: Source, records: &[TrafficRecord], spans: &[ExporterSpan]) {
        lock(self).ingest_exported(records, source, spans);
    }
}

/// Why the collectors could not start.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// A listen address could not be bound.
    #[error("{collector}: cannot listen on {address}: {source}")]
    Bind {
        /// `sflow` or `netflow`.
        collector: &'static str,
        /// The address.
        address: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("starting a collector thread: {0}")]
    Thread(std::io::Error),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Per-exporter settings resolved from the config.
#[derive(Debug, Clone)]
struct ExporterPolicy {
    allowed: PrefixSet,
    restrict: bool,
    default_sampling_rate: u32,
    sampling: HashMap<IpAddr, u32>,
}

impl ExporterPolicy {
    fn new<const PORT: u16>(config: &CollectorConfig<PORT>) -> Self {
        Self {
            allowed: config.allowed_exporters.iter().copied().collect(),
            restrict: !config.allowed_exporters.is_empty(),
            default_sampling_rate: config.default_sampling_rate.max(1),
            sampling: config
                .exporters
                .iter()
                .filter_map(|e| e.sampling_rate.map(|rate| (e.address, rate)))
                .collect(),
        }
    }

    fn allows(&self, exporter: IpAddr) -> bool {
        !self.restrict || self.allowed.contains(exporter)
    }

    fn sampling_rate(&self, exporter: IpAddr) -> u32 {
        self.sampling
            .get(&exporter)
            .copied()
            .unwrap_or(self.default_sampling_rate)
    }
}

/// The running sFlow and NetFlow collectors. Dropping it stops them (and saves templates).
pub struct FlowCollectors {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    templates: Arc<Mutex<TemplateCache>>,
    templates_dirty: Arc<AtomicBool>,
    template_path: Option<PathBuf>,
    metrics: Arc<CollectorMetrics>,
    sflow_addrs: Vec<SocketAddr>,
    netflow_addrs: Vec<SocketAddr>,
}

impl FlowCollectors {
    /// Binds every listen address and starts the workers. Templates are loaded from (and
    /// saved to) `<state_dir>/flow-templates.json` when `state_dir` is given; a missing file
    /// starts an empty cache, and so does one that cannot be used, after it is set aside as
    /// `flow-templates.json.corrupt-<unix time>` and the reason logged.
    pub fn start(
        sflow: &SflowConfig,
        netflow: &NetflowConfig,
        state_dir: Option<&Path>,
        sink: Arc<dyn TrafficSink>,
    ) -> Result<Self, CollectorError> {
        let template_path = state_dir.map(|dir| dir.join(TEMPLATE_FILE));
        let templates = Arc::new(Mutex::new(load_templates(template_path.as_deref())));
        let names: HashMap<IpAddr, String> = sflow
            .exporters
            .iter()
            .chain(&netflow.exporters)
            .filter_map(|e| e.name.clone().map(|name| (e.address, name)))
            .collect();
        let mut collectors = Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            metrics: Arc::new(CollectorMetrics::new(names, templates.clone())),
            templates,
            templates_dirty: Arc::new(AtomicBool::new(false)),
            template_path,
            sflow_addrs: Vec::new(),
            netflow_addrs: Vec::new(),
        };
        collectors.sflow_addrs = collectors.spawn_collector(Kind::Sflow, sflow, &sink)?;
        collectors.netflow_addrs = collectors.spawn_collector(Kind::Netflow, netflow, &sink)?;
        if collectors.template_path.is_some() && !collectors.netflow_addrs.is_empty() {
            collectors.spawn_template_saver()?;
        }
        Ok(collectors)
    }

    /// The bound sFlow addresses (port 0 resolved), one per listen address.
    pub fn sflow_addrs(&self) -> &[SocketAddr] {
        &self.sflow_addrs
    }

    /// The bound NetFlow/IPFIX addresses (port 0 resolved), one per listen address.
    pub fn netflow_addrs(&self) -> &[SocketAddr] {
        &self.netflow_addrs
    }

    /// The collectors' counters; register them with `metrics::serve` as a `MetricsSource`.
    pub fn metrics(&self) -> Arc<CollectorMetrics> {
        self.metrics.clone()
    }

    /// Number of NetFlow v9 / IPFIX templates known.
    pub fn templates_known(&self) -> usize {
        lock(&self.templates).len()
    }

    /// Writes the template cache to the state directory now (no-op without one).
    pub fn save_templates(&self) -> Result<(), super::templates::TemplateStateError> {
        match &self.template_path {
            Some(path) => {
                self.templates_dirty.store(false, Ordering::Relaxed);
                let snapshot = lock(&self.templates).clone();
                snapshot.save(path)
            }
            None => Ok(()),
        }
    }

    /// Stops every worker, waits for them, and saves the templates.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Err(error) = self.save_templates() {
            tracing::warn!("saving flow templates: {error}");
        }
    }

    fn spawn_collector<const PORT: u16>(
        &mut self,
        kind: Kind,
        config: &CollectorConfig<PORT>,
        sink: &Arc<dyn TrafficSink>,
    ) -> Result<Vec<SocketAddr>, CollectorError> {
        let workers = config.effective_workers();
        let policy = Arc::new(ExporterPolicy::new(config));
        if !config.listen.is_empty() && config.allowed_exporters.is_empty() {
            tracing::warn!(
                "{0}: no allowed_exporters: datagrams from any address are accounted (flow \
                 datagrams are UDP and easily spoofed; each exporter address can bring in at \
                 most accounting.max_hosts_per_exporter hosts). Set {0}.allowed_exporters to \
                 your exporters' addresses",
                kind.label()
            );
        }
        let mut bound_addrs = Vec::new();
        for address in &config.listen {
            let mut address_to_bind = *address;
            for worker in 0..workers {
                let bound = socket::bind(address_to_bind, workers > 1, config.receive_buffer_bytes)
                    .map_err(|source| CollectorError::Bind {
                        collector: kind.label(),
                        address: *address,
                        source,
                    })?;
                // Port 0: the other workers join the port the first one got.
                address_to_bind = bound.local;
                if worker == 0 {
                    bound_addrs.push(bound.local);
                    tracing::info!(
                        "{} collector on {} ({} workers, receive buffer {} bytes)",
                        kind.label(),
                        bound.local,
                        workers,
                        bound.receive_buffer_bytes
                    );
                }
                if bound.receive_buffer_bytes < config.receive_buffer_bytes {
                    tracing::warn!(
                        "{} {}: receive buffer is {} bytes, {} asked (raise net.core.rmem_max or grant CAP_NET_ADMIN)",
                        kind.label(), bound.local, bound.receive_buffer_bytes, config.receive_buffer_bytes
                    );
                }
                self.metrics.add_socket(SocketInfo {
                    collector: kind.label(),
                    listen: bound.local,
                    worker,
                    receive_buffer_bytes: bound.receive_buffer_bytes,
                    inode: bound.inode,
                });
                let mut worker_state = Worker {
                    kind,
                    receiver: BatchReceiver::new(bound.socket, RECEIVE_BATCH),
                    policy: policy.clone(),
                    sink: sink.clone(),
                    metrics: self.metrics.clone(),
                    templates: self.templates.clone(),
                    templates_dirty: self.templates_dirty.clone(),
                    sequences: SequenceTracker::default(),
                    counts: BatchCounts::default(),
                    records: Vec::with_capacity(RECORDS_CAPACITY),
                    spans: Vec::with_capacity(RECEIVE_BATCH),
                    pending_since: None,
                    short_wait: false,
                    receive_buffer_bytes: bound.receive_buffer_bytes,
                    arrived_bytes: 0,
                    drained_at: None,
                };
                let stop = self.stop.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("fnm-{}-{worker}", kind.label()))
                    .spawn(move || worker_state.run(&stop))
                    .map_err(CollectorError::Thread)?;
                self.threads.push(thread);
            }
        }
        Ok(bound_addrs)
    }

    fn spawn_template_saver(&mut self) -> Result<(), CollectorError> {
        let stop = self.stop.clone();
        let dirty = self.templates_dirty.clone();
        let templates = self.templates.clone();
        let Some(path) = self.template_path.clone() else {
            return Ok(());
        };
        let thread = std::thread::Builder::new()
            .name("fnm-flow-templates".into())
            .spawn(move || {
                let mut last_save = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    if last_save.elapsed() >= TEMPLATE_SAVE_INTERVAL
                        && dirty.swap(false, Ordering::Relaxed)
                    {
                        last_save = Instant::now();
                        let snapshot = lock(&templates).clone();
                        if let Err(error) = snapshot.save(&path) {
                            tracing::warn!("saving flow templates: {error}");
                        }
                    }
                }
            })
            .map_err(CollectorError::Thread)?;
        self.threads.push(thread);
        Ok(())
    }
}

impl Drop for FlowCollectors {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Loads the template cache of the state directory. Templates are soft state (exporters
/// resend them), so a file that cannot be used does not stop the agent: it is set aside as
/// `<name>.corrupt-<unix time>` for inspection, the reason is logged, and the cache starts
/// empty. The file is never just overwritten by the next save.
fn load_templates(path: Option<&Path>) -> TemplateCache {
    let Some(path) = path else {
        return TemplateCache::default();
    };
    match StateFile::new(path).load(OnBadFile::SetAside, TemplateCache::from_json) {
        Ok(Loaded::Missing) => TemplateCache::default(),
        Ok(Loaded::Found(cache)) => {
            tracing::info!(
                "restored {} flow templates from {}",
                cache.len(),
                path.display()
            );
            cache
        }
        Ok(Loaded::SetAside { to, error }) => {
            tracing::error!(
                "{error}; set aside as {}; starting with no flow templates (exporters resend \
                 them; until then their data sets count as unknown_template_sets)",
                to.display()
            );
            TemplateCache::default()
        }
        Err(error) => {
            tracing::error!("{error}; starting with no flow templates");
            TemplateCache::default()
        }
    }
}

/// Which collector a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sflow,
    Netflow,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Sflow => "sflow",
            Kind::Netflow => "netflow",
        }
    }

    fn source(self) -> Source {
        match self {
            Kind::Sflow => Source::Sflow,
            Kind::Netflow => Source::Netflow,
        }
    }
}

/// The `protocol` label of a NetFlow-socket datagram, from its version field.
fn netflow_protocol(datagram: &[u8]) -> &'static str {
    match datagram {
        [0, 5, ..] => "netflow5",
        [0, 9, ..] => "netflow9",
        [0, 10, ..] => "ipfix",
        _ => "netflow",
    }
}

/// One socket's receive-decode-account loop.
struct Worker {
    kind: Kind,
    receiver: BatchReceiver,
    policy: Arc<ExporterPolicy>,
    sink: Arc<dyn TrafficSink>,
    metrics: Arc<CollectorMetrics>,
    templates: Arc<Mutex<TemplateCache>>,
    templates_dirty: Arc<AtomicBool>,
    sequences: SequenceTracker,
    counts: BatchCounts,
    records: Vec<TrafficRecord>,
    /// Which exporter sent which of `records`.
    spans: Vec<ExporterSpan>,
    /// When the oldest of `records` was decoded.
    pending_since: Option<Instant>,
    /// The socket waits [`HAND_OVER_AFTER`] for a datagram (not [`socket::RECEIVE_POLL`]): set
    /// while records wait and kept while datagrams keep coming, so a busy worker does not
    /// change it twice per hand-over.
    short_wait: bool,
    /// The socket's granted receive buffer (bounds the gathering sleep, see [`gather_time`]).
    receive_buffer_bytes: usize,
    /// Bytes received (payload plus [`DATAGRAM_OVERHEAD_BYTES`] each) since `drained_at`.
    arrived_bytes: u64,
    /// When the socket was last found drained while records waited (`None` after an idle
    /// spell: no arrival rate is known yet).
    drained_at: Option<Instant>,
}

/// Notes that `records` up to its current end came from `exporter` (extending the last span
/// when it is the same exporter's).
fn mark_exporter(spans: &mut Vec<ExporterSpan>, records: &[TrafficRecord], exporter: IpAddr) {
    let end = records.len();
    match spans.last_mut() {
        Some(last) if last.end == end => {}
        Some(last) if last.exporter == exporter => last.end = end,
        _ => spans.push(ExporterSpan { end, exporter }),
    }
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let received = match self.receiver.receive() {
                Ok(n) => n,
                Err(error) => {
                    tracing::warn!("{} receive: {error}", self.kind.label());
                    std::thread::sleep(Duration::from_millis(10));
                    0
                }
            };
            if received > 0 {
                self.arrived_bytes += (0..received)
                    .map(|i| self.receiver.datagram(i).0.len() as u64 + DATAGRAM_OVERHEAD_BYTES)
                    .sum::<u64>();
                self.process_batch(received);
            }
            if self.records.is_empty() {
                if received == 0 {
                    self.drained_at = None;
                    self.arrived_bytes = 0;
                }
                if received == 0 && self.short_wait {
                    // Idle: wake up only to check for a stop.
                    let _ = self.receiver.set_wait(socket::RECEIVE_POLL);
                    self.short_wait = false;
                }
                continue;
            }
            if !self.short_wait {
                // Wait no longer than the hand-over may be late.
                let _ = self.receiver.set_wait(HAND_OVER_AFTER);
                self.short_wait = true;
            }
            let since = *self.pending_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= HAND_OVER_AFTER {
                self.hand_over();
            } else if received < RECEIVE_BATCH {
                // The queue is drained: let the next datagrams gather in the socket buffer
                // instead of waking up for each one, without delaying the hand-over.
                let arrived = std::mem::take(&mut self.arrived_bytes);
                let gather = match self.drained_at.replace(Instant::now()) {
                    Some(last) => gather_time(arrived, last.elapsed(), self.receive_buffer_bytes),
                    // The first drain after an idle spell: the rate is not known yet.
                    None => FIRST_GATHER,
                };
                std::thread::sleep(gather.min(HAND_OVER_AFTER.saturating_sub(since.elapsed())));
            }
        }
        self.hand_over();
    }

    /// Gives what was decoded to the sink, and the batch's counts to the metrics.
    fn hand_over(&mut self) {
        self.send_records();
        self.spans.clear();
        self.metrics.merge(&mut self.counts);
    }

    /// Gives the records decoded so far to the sink (which may take the buffer).
    fn send_records(&mut self) {
        if self.records.is_empty() {
            return;
        }
        self.sink
            .hand_over(self.kind.source(), &mut self.records, &mut self.spans);
        self.records.clear();
        self.spans.clear();
        if self.records.capacity() < RECORDS_CAPACITY {
            self.records
                .reserve_exact(RECORDS_CAPACITY - self.records.len());
        }
        self.pending_since = None;
    }

    /// Decodes a received batch, appending to what waits for the hand-over.
    fn process_batch(&mut self, received: usize) {
        match self.kind {
            Kind::Sflow => {
                for index in 0..received {
                    if index + 1 < received {
                        prefetch_datagram(self.receiver.datagram(index + 1).0);
                    }
                    let (datagram, from) = self.receiver.datagram(index);
                    let Some(from) = from else { continue };
                    handle_sflow(
                        datagram,
                        from.ip(),
                        &self.policy,
                        &mut self.sequences,
                        &mut self.counts,
                        &mut self.records,
                    );
                    mark_exporter(&mut self.spans, &self.records, from.ip());
                    if self.records.len() >= HAND_OVER_RECORDS {
                        self.send_records();
                    }
                }
            }
            Kind::Netflow => {
                let templates = self.templates.clone();
                let mut cache = lock(&templates);
                let mut changed = false;
                for index in 0..received {
                    let (datagram, from) = self.receiver.datagram(index);
                    let Some(from) = from else { continue };
                    changed |= handle_netflow(
                        datagram,
                        from.ip(),
                        &self.policy,
                        &mut cache,
                        &mut self.sequences,
                        &mut self.counts,
                        &mut self.records,
                    );
                    mark_exporter(&mut self.spans, &self.records, from.ip());
                    if self.records.len() >= HAND_OVER_RECORDS {
                        self.send_records();
                    }
                }
                drop(cache);
                if changed {
                    self.templates_dirty.store(true, Ordering::Relaxed);
                }
            }
        }
        if self.records.is_empty() {
            // Datagrams without records (templates, counters, refusals): counted at once.
            self.spans.clear();
            self.metrics.merge(&mut self.counts);
        }
    }
}

/// Bytes of the next datagram prefetched while one is decoded: an sFlow datagram's samples
/// are read front to back, a sample or two per cache line.
const PREFETCH_BYTES: usize = 1536;

/// Starts loading the first [`PREFETCH_BYTES`] of `datagram` (the kernel copied it a batch
/// ago; its lines may have left L1 since).
#[inline(always)]
fn prefetch_datagram(datagram: &[u8]) {
    let end = datagram.len().min(PREFETCH_BYTES);
    for offset in (0..end).step_by(64) {
        crate::capture::prefetch_line(datagram[offset..].as_ptr());
    }
}

/// Decodes one sFlow datagram: counts it and appends its traffic.
fn handle_sflow(
    datagram: &[u8],
    exporter: IpAddr,
    policy: &ExporterPolicy,
    sequences: &mut SequenceTracker,
    counts: &mut BatchCounts,
    out: &mut Vec<TrafficRecord>,
) {
    if !policy.allows(exporter) {
        counts.drop_datagram("sflow", "not_allowed");
        return;
    }
    let decoded = sflow::decode_traffic(datagram, policy.sampling_rate(exporter), out);
    let stats = counts.exporter(exporter, "sflow");
    stats.datagrams += 1;
    match decoded {
        Ok(d) => {
            stats.records += u64::from(d.flow_samples);
            stats.counter_samples += u64::from(d.counter_samples);
            let key = StreamKey {
                exporter: d.agent,
                protocol: 0,
                domain: u64::from(d.sub_agent_id),
            };
            stats.sequence_lost += sequences.observe(key, d.sequence, 1);
        }
        Err(error) => count_error(counts, exporter, "sflow", &error),
    }
}

/// Decodes one NetFlow v5/v9/IPFIX datagram: counts it and appends its traffic. True when the
/// template cache changed.
fn handle_netflow(
    datagram: &[u8],
    exporter: IpAddr,
    policy: &ExporterPolicy,
    cache: &mut TemplateCache,
    sequences: &mut SequenceTracker,
    counts: &mut BatchCounts,
    out: &mut Vec<TrafficRecord>,
) -> bool {
    if !policy.allows(exporter) {
        counts.drop_datagram("netflow", "not_allowed");
        return false;
    }
    let protocol = netflow_protocol(datagram);
    let decoded = decode_netflow_family(datagram, exporter, cache);
    let stats = counts.exporter(exporter, protocol);
    stats.datagrams += 1;
    let decoded = match decoded {
        Ok(d) => d,
        Err(error) => {
            count_error(counts, exporter, protocol, &error);
            return false;
        }
    };
    let mut changed = false;
    match &decoded {
        NetflowDatagram::V5(d) => {
            stats.records += d.len() as u64;
            let key = StreamKey {
                exporter,
                protocol: 5,
                domain: u64::from(d.header.engine_type) << 8 | u64::from(d.header.engine_id),
            };
            let count = u32::from(d.header.count);
            stats.sequence_lost += sequences.observe(key, d.header.flow_sequence, count);
        }
        NetflowDatagram::V9(d) => {
            add_template_stats(stats, &d.stats);
            changed = template_cache_changed(&d.stats);
            let key = StreamKey {
                exporter,
                protocol: 9,
                domain: u64::from(d.header.source_id),
            };
            stats.sequence_lost += sequences.observe(key, d.header.sequence, 1);
        }
        NetflowDatagram::Ipfix(d) => {
            add_template_stats(stats, &d.stats);
            changed = template_cache_changed(&d.stats);
            let key = StreamKey {
                exporter,
                protocol: 10,
                domain: u64::from(d.header.observation_domain),
            };
            let data_records = d.stats.flow_records + d.stats.options_records;
            stats.sequence_lost += sequences.observe(key, d.header.sequence, data_records);
        }
    }
    decoded.extend_traffic(policy.sampling_rate(exporter), out);
    changed
}

fn add_template_stats(
    stats: &mut super::collector_metrics::ExporterCounts,
    t: &super::templates::TemplateStats,
) {
    stats.records += u64::from(t.flow_records);
    stats.options_records += u64::from(t.options_records);
    stats.unknown_template_sets += u64::from(t.sets_without_template);
    stats.templates_learned += u64::from(t.templates_learned);
}

fn template_cache_changed(t: &super::templates::TemplateStats) -> bool {
    t.templates_learned > 0 || t.templates_withdrawn > 0 || t.sampling_rates_learned > 0
}

fn count_error(
    counts: &mut BatchCounts,
    exporter: IpAddr,
    protocol: &'static str,
    e: &DecodeError,
) {
    counts.error(exporter, protocol, e.reason());
}

/// One sequence-numbered stream: an sFlow agent and sub-agent, a NetFlow v5 engine, a v9
/// source id or an IPFIX observation domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StreamKey {
    exporter: IpAddr,
    protocol: u8,
    domain: u64,
}

/// Expected next sequence number per stream; gaps are losses. Looked up once per datagram
/// (seeded foldhash: the keys come from the network).
#[derive(Debug, Default)]
struct SequenceTracker {
    expected: HashMap<StreamKey, u32, foldhash::fast::RandomState>,
}

impl SequenceTracker {
    /// Notes a datagram with `sequence` that advances the stream by `advance` (1 for
    /// per-datagram sequences, the record count for per-record ones); returns how many were
    /// lost just before it. Duplicates, reordering and restarts count nothing.
    fn observe(&mut self, key: StreamKey, sequence: u32, advance: u32) -> u64 {
        let next = sequence.wrapping_add(advance);
        let Some(expected) = self.expected.get_mut(&key) else {
            if self.expected.len() >= MAX_SEQUENCE_STREAMS {
                self.expected.clear();
            }
            self.expected.insert(key, next);
            return 0;
        };
        let ahead = sequence.wrapping_sub(*expected);
        let behind = expected.wrapping_sub(sequence);
        if ahead == 0 {
            *expected = next;
            0
        } else if ahead < MAX_PLAUSIBLE_GAP {
            *expected = next;
            u64::from(ahead)
        } else if behind < MAX_PLAUSIBLE_GAP {
            // Late or duplicate datagram: already counted as lost, keep the expectation.
            0
        } else {
            // Restart or wild jump.
            *expected = next;
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_gathering_sleep_never_fills_more_than_a_quarter_of_the_buffer() {
        // 16 000 datagrams/s of 1 200 bytes: 84 MB/s counted with the overhead.
        let per_ms = 16 * (1200 + DATAGRAM_OVERHEAD_BYTES);
        let over = Duration::from_millis(10);
        // A 32 MiB buffer: the full sleep.
        assert_eq!(gather_time(per_ms * 10, over, 32 << 20), GATHER_FOR);
        // Linux's default 212 992 bytes (reported doubled): 425 984 / 4 at 84 MB/s, ~1.3 ms.
        let short = gather_time(per_ms * 10, over, 425_984);
        assert!(short < Duration::from_micros(1300) && short > Duration::from_micros(1200));
        // What arrives meanwhile at that rate stays within a quarter.
        assert!(per_ms as f64 * short.as_secs_f64() * 1000.0 <= 425_984.0 / 4.0);
        // Nothing measured: the full sleep; a huge rate: no sleep; no overflow at extremes.
        assert_eq!(gather_time(0, over, 425_984), GATHER_FOR);
        assert_eq!(gather_time(u64::MAX, over, 425_984), Duration::ZERO);
        assert_eq!(gather_time(1, Duration::MAX, usize::MAX), GATHER_FOR);
    }

    fn key() -> StreamKey {
        StreamKey {
            exporter: IpAddr::V4(Ipv4Addr::LOCALHOST),
            protocol: 9,
            domain: 0,
        }
    }

    #[test]
    fn sequence_gaps_count_losses_but_not_reorders_or_restarts() {
        let mut tracker = SequenceTracker::default();
        assert_eq!(tracker.observe(key(), 10, 1), 0);
        assert_eq!(tracker.observe(key(), 11, 1), 0);
        assert_eq!(tracker.observe(key(), 15, 1), 3);
        assert_eq!(tracker.observe(key(), 13, 1), 0, "late datagram");
        assert_eq!(tracker.observe(key(), 16, 1), 0);
        assert_eq!(tracker.observe(key(), 3_000_000_000, 1), 0, "restart");
        assert_eq!(tracker.observe(key(), 3_000_000_001, 30), 0);
        assert_eq!(tracker.observe(key(), 3_000_000_041, 30), 10);
        // Wrap-around.
        let mut tracker = SequenceTracker::default();
        tracker.observe(key(), u32::MAX, 1);
        assert_eq!(tracker.observe(key(), 0, 1), 0);
    }

    #[test]
    fn config_defaults_and_validation() {
        let sflow = SflowConfig::default();
        assert_eq!(sflow.listen, vec!["0.0.0.0:6343".parse().unwrap()]);
        assert_eq!(
            NetflowConfig::default().listen,
            vec!["0.0.0.0:2055".parse().unwrap()]
        );
        let parsed: NetflowConfig = toml::from_str(
            "listen = []\nallowed_exporters = [\"192.0.2.0/24\"]\n[[exporter]]\naddress = \"192.0.2.1\"\nname = \"edge\"\nsampling_rate = 100\n",
        )
        .expect("parses");
        assert!(parsed.listen.is_empty());
        assert!(parsed.validate("netflow").is_ok());
        let policy = ExporterPolicy::new(&parsed);
        assert!(policy.allows("192.0.2.9".parse().unwrap()));
        assert!(!policy.allows("198.51.100.1".parse().unwrap()));
        assert_eq!(policy.sampling_rate("192.0.2.1".parse().unwrap()), 100);
        assert_eq!(policy.sampling_rate("192.0.2.2".parse().unwrap()), 1);
        assert!(toml::from_str::<NetflowConfig>("bogus = 1").is_err());
        let mut bad = parsed.clone();
        bad.exporters.push(bad.exporters[0].clone());
        assert!(bad.validate("netflow").unwrap_err().contains("twice"));
        let bad = NetflowConfig {
            default_sampling_rate: 0,
            ..NetflowConfig::default()
        };
        assert!(bad.validate("netflow").is_err());
    }

    #[test]
    fn protocol_label_follows_the_version_field() {
        assert_eq!(netflow_protocol(&[0, 5, 1]), "netflow5");
        assert_eq!(netflow_protocol(&[0, 9]), "netflow9");
        assert_eq!(netflow_protocol(&[0, 10]), "ipfix");
        assert_eq!(netflow_protocol(&[1]), "netflow");
    }
}
