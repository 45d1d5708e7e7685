//! What the flow collectors count, per exporter and per socket, and its Prometheus rendering.
//!
//! Workers count into a [`BatchCounts`] while they decode and merge it into the shared
//! [`CollectorMetrics`] when they hand their records over (at most 10 ms apart). The `exporter` label is the exporter's configured name
//! or its address; at most [`MAX_EXPORTER_LABELS`] distinct exporters get their own label, the
//! rest are counted under `other`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{socket, TemplateCache};
use crate::metrics::MetricsSource;

/// Most exporters with their own `exporter` label value; later ones share `other`.
pub const MAX_EXPORTER_LABELS: usize = 1024;
/// Label value of the exporters beyond [`MAX_EXPORTER_LABELS`].
pub const OTHER_EXPORTER: &str = "other";

/// Counters of one exporter and protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExporterCounts {
    /// Datagrams received (decoded or not).
    pub datagrams: u64,
    /// Flow records (NetFlow/IPFIX data records) or flow samples (sFlow) decoded.
    pub records: u64,
    /// Options-data records (NetFlow v9/IPFIX).
    pub options_records: u64,
    /// Data sets that arrived before their template (skipped).
    pub unknown_template_sets: u64,
    /// Templates learned or refreshed.
    pub templates_learned: u64,
    /// Lost datagrams (sFlow, NetFlow v9) or records (NetFlow v5, IPFIX) from sequence gaps.
    pub sequence_lost: u64,
    /// sFlow counter samples.
    pub counter_samples: u64,
}

impl ExporterCounts {
    fn add(&mut self, other: &ExporterCounts) {
        self.datagrams += other.datagrams;
        self.records += other.records;
        self.options_records += other.options_records;
        self.unknown_template_sets += other.unknown_template_sets;
        self.templates_learned += other.templates_learned;
        self.sequence_lost += other.sequence_lost;
        self.counter_samples += other.counter_samples;
    }
}

/// What one worker counted in one batch, merged into [`CollectorMetrics`] afterwards.
#[derive(Debug, Default)]
pub struct BatchCounts {
    /// Per (exporter address, protocol label), but for `current`'s.
    exporters: HashMap<(IpAddr, &'static str), ExporterCounts>,
    /// The counters of the exporter and protocol counted last, added to `exporters` when
    /// another one comes or the batch is merged: consecutive datagrams mostly come from the
    /// same exporter, and this spares them a hash-map lookup each.
    current: Option<((IpAddr, &'static str), ExporterCounts)>,
    /// Decode errors per (exporter address, protocol label, reason).
    errors: HashMap<(IpAddr, &'static str, &'static str), u64>,
    /// Datagrams dropped before decoding, per (collector, reason).
    dropped: HashMap<(&'static str, &'static str), u64>,
}

impl BatchCounts {
    /// The counters of one exporter and protocol.
    #[inline]
    pub fn exporter(&mut self, exporter: IpAddr, protocol: &'static str) -> &mut ExporterCounts {
        let key = (exporter, protocol);
        if self.current.as_ref().is_none_or(|(k, _)| *k != key) {
            self.settle();
            self.current = Some((key, ExporterCounts::default()));
        }
        let (_, counts) = self.current.get_or_insert((key, ExporterCounts::default()));
        counts
    }

    /// Adds `current` to the per-exporter map.
    fn settle(&mut self) {
        if let Some((key, counts)) = self.current.take() {
            self.exporters.entry(key).or_default().add(&counts);
        }
    }

    /// Counts a decode error.
    pub fn error(&mut self, exporter: IpAddr, protocol: &'static str, reason: &'static str) {
        *self.errors.entry((exporter, protocol, reason)).or_default() += 1;
    }

    /// Counts a datagram dropped before decoding.
    pub fn drop_datagram(&mut self, collector: &'static str, reason: &'static str) {
        *self.dropped.entry((collector, reason)).or_default() += 1;
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.current.is_none()
            && self.exporters.is_empty()
            && self.errors.is_empty()
            && self.dropped.is_empty()
    }
}

/// One bound socket, for the socket-level metrics.
#[derive(Debug, Clone)]
pub struct SocketInfo {
    /// `sflow` or `netflow`.
    pub collector: &'static str,
    /// The listen address.
    pub listen: SocketAddr,
    /// Worker number on that address.
    pub worker: usize,
    /// The receive buffer the kernel granted.
    pub receive_buffer_bytes: usize,
    /// Socket inode (Linux), for its drop counter.
    pub inode: u64,
}

#[derive(Debug, Default)]
struct Totals {
    labels: HashMap<IpAddr, Arc<str>>,
    exporters: HashMap<(Arc<str>, &'static str), ExporterCounts>,
    errors: HashMap<(Arc<str>, &'static str, &'static str), u64>,
    dropped: HashMap<(&'static str, &'static str), u64>,
}

/// The collectors' shared counters; a [`MetricsSource`] for `/metrics`.
#[derive(Debug)]
pub struct CollectorMetrics {
    totals: Mutex<Totals>,
    names: HashMap<IpAddr, String>,
    sockets: Mutex<Vec<SocketInfo>>,
    templates: Arc<Mutex<TemplateCache>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CollectorMetrics {
    /// Metrics with exporter `names` (address → configured name) and the NetFlow template cache
    /// (for the templates-known gauge).
    pub fn new(names: HashMap<IpAddr, String>, templates: Arc<Mutex<TemplateCache>>) -> Self {
        Self {
            totals: Mutex::default(),
            names,
            sockets: Mutex::default(),
            templates,
        }
    }

    /// Registers a bound socket.
    pub fn add_socket(&self, info: SocketInfo) {
        lock(&self.sockets).push(info);
    }

    /// The bound sockets.
    pub fn sockets(&self) -> Vec<SocketInfo> {
        lock(&self.sockets).clone()
    }

    /// Merges a worker's batch counts and clears them.
    pub fn merge(&self, batch: &mut BatchCounts) {
        if batch.is_empty() {
            return;
        }
        batch.settle();
        let mut totals = lock(&self.totals);
        for ((exporter, protocol), counts) in batch.exporters.drain() {
            let label = self.label(&mut totals, exporter);
            totals
                .exporters
                .entry((label, protocol))
                .or_default()
                .add(&counts);
        }
        for ((exporter, protocol, reason), count) in batch.errors.drain() {
            let label = self.label(&mut totals, exporter);
            *totals.errors.entry((label, protocol, reason)).or_default() += count;
        }
        for (key, count) in batch.dropped.drain() {
            *totals.dropped.entry(key).or_default() += count;
        }
    }

    fn label(&self, totals: &mut Totals, exporter: IpAddr) -> Arc<str> {
        if let Some(label) = totals.labels.get(&exporter) {
            return label.clone();
        }
        if totals.labels.len() >= MAX_EXPORTER_LABELS {
            return Arc::from(OTHER_EXPORTER);
        }
        let label: Arc<str> = match self.names.get(&exporter) {
            Some(name) => Arc::from(name.as_str()),
            None => Arc::from(exporter.to_string()),
        };
        totals.labels.insert(exporter, label.clone());
        label
    }

    /// The counters of one exporter label and protocol (zero when never seen).
    pub fn exporter(&self, label: &str, protocol: &'static str) -> ExporterCounts {
        lock(&self.totals)
            .exporters
            .iter()
            .filter(|((l, p), _)| &**l == label && *p == protocol)
            .fold(ExporterCounts::default(), |mut acc, (_, c)| {
                acc.add(c);
                acc
            })
    }

    /// Sum of every exporter's counters of `protocol`.
    pub fn protocol_total(&self, protocol: &'static str) -> ExporterCounts {
        lock(&self.totals)
            .exporters
            .iter()
            .filter(|((_, p), _)| *p == protocol)
            .fold(ExporterCounts::default(), |mut acc, (_, c)| {
                acc.add(c);
                acc
            })
    }

    /// Decode errors per (protocol, reason), summed over exporters.
    pub fn errors_by_reason(&self) -> HashMap<(&'static str, &'static str), u64> {
        let mut out = HashMap::new();
        for ((_, protocol, reason), count) in &lock(&self.totals).errors {
            *out.entry((*protocol, *reason)).or_default() += count;
        }
        out
    }

    /// Datagrams dropped before decoding, per (collector, reason).
    pub fn dropped(&self) -> HashMap<(&'static str, &'static str), u64> {
        lock(&self.totals).dropped.clone()
    }

    /// Number of exporters with their own label.
    pub fn exporter_labels(&self) -> usize {
        lock(&self.totals).labels.len()
    }

    /// Kernel drops per socket, in the order of [`sockets`](Self::sockets) (0 where unknown).
    pub fn socket_drops(&self) -> Vec<u64> {
        let sockets = self.sockets();
        let inodes: Vec<u64> = sockets.iter().map(|s| s.inode).filter(|i| *i > 0).collect();
        let drops = socket::socket_drops(&inodes);
        sockets
            .iter()
            .map(|s| {
                drops
                    .iter()
                    .find(|(inode, _)| *inode == s.inode)
                    .map_or(0, |(_, d)| *d)
            })
            .collect()
    }
}

type Labels = Vec<(&'static str, String)>;
/// A per-exporter counter family: name, help, and which counter it shows.
type CounterFamily = (&'static str, &'static str, fn(&ExporterCounts) -> u64);

impl MetricsSource for CollectorMetrics {
    fn register(&self, registry: &mut Registry) {
        let families: [CounterFamily; 7] = [
            (
                "fnm_flow_datagrams",
                "Flow datagrams received, per exporter and protocol",
                |c| c.datagrams,
            ),
            (
                "fnm_flow_records",
                "Flow records (NetFlow/IPFIX) or flow samples (sFlow) decoded",
                |c| c.records,
            ),
            (
                "fnm_flow_options_records",
                "NetFlow v9 / IPFIX options-data records decoded",
                |c| c.options_records,
            ),
            (
                "fnm_flow_unknown_template_sets",
                "NetFlow v9 / IPFIX data sets skipped because their template was unknown",
                |c| c.unknown_template_sets,
            ),
            (
                "fnm_flow_templates_learned",
                "NetFlow v9 / IPFIX templates learned or refreshed",
                |c| c.templates_learned,
            ),
            (
                "fnm_flow_sequence_lost",
                "Lost datagrams (sFlow, NetFlow v9) or records (NetFlow v5, IPFIX) seen as sequence gaps",
                |c| c.sequence_lost,
            ),
            (
                "fnm_flow_sflow_counter_samples",
                "sFlow counter samples received",
                |c| c.counter_samples,
            ),
        ];
        let totals = lock(&self.totals);
        for (name, help, get) in families {
            let family = Family::<Labels, Counter>::default();
            for ((exporter, protocol), counts) in &totals.exporters {
                let value = get(counts);
                if name == "fnm_flow_sflow_counter_samples" && *protocol != "sflow" {
                    continue;
                }
                family
                    .get_or_create(&vec![
                        ("exporter", exporter.to_string()),
                        ("protocol", (*protocol).to_string()),
                    ])
                    .inc_by(value);
            }
            registry.register(name, help, family);
        }

        let errors = Family::<Labels, Counter>::default();
        for ((exporter, protocol, reason), count) in &totals.errors {
            errors
                .get_or_create(&vec![
                    ("exporter", exporter.to_string()),
                    ("protocol", (*protocol).to_string()),
                    ("reason", (*reason).to_string()),
                ])
                .inc_by(*count);
        }
        registry.register(
            "fnm_flow_decode_errors",
            "Flow datagrams rejected by the decoders, by reason",
            errors,
        );

        let dropped = Family::<Labels, Counter>::default();
        for ((collector, reason), count) in &totals.dropped {
            dropped
                .get_or_create(&vec![
                    ("collector", (*collector).to_string()),
                    ("reason", (*reason).to_string()),
                ])
                .inc_by(*count);
        }
        registry.register(
            "fnm_flow_datagrams_dropped",
            "Flow datagrams dropped before decoding (not_allowed: sender outside allowed_exporters)",
            dropped,
        );

        let templates = Family::<Labels, Gauge>::default();
        {
            let cache = lock(&self.templates);
            for (address, label) in &totals.labels {
                let known = cache.templates_of(*address);
                if known > 0 {
                    templates
                        .get_or_create(&vec![("exporter", label.to_string())])
                        .inc_by(known as i64);
                }
            }
        }
        drop(totals);
        registry.register(
            "fnm_flow_templates",
            "NetFlow v9 / IPFIX templates known, per exporter",
            templates,
        );

        let socket_drops = Family::<Labels, Counter>::default();
        let buffers = Family::<Labels, Gauge>::default();
        let sockets = self.sockets();
        for (info, drops) in sockets.iter().zip(self.socket_drops()) {
            let labels = vec![
                ("collector", info.collector.to_string()),
                ("listen", info.listen.to_string()),
                ("worker", info.worker.to_string()),
            ];
            socket_drops.get_or_create(&labels).inc_by(drops);
            buffers
                .get_or_create(&labels)
                .set(i64::try_from(info.receive_buffer_bytes).unwrap_or(i64::MAX));
        }
        registry.register(
            "fnm_flow_socket_drops",
            "Datagrams the kernel dropped on a collector socket (receive buffer full)",
            socket_drops,
        );
        registry.register(
            "fnm_flow_socket_receive_buffer_bytes",
            "Receive buffer the kernel granted to a collector socket",
            buffers,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn counts_of_interleaved_exporters_add_up() {
        let metrics = CollectorMetrics::new(HashMap::new(), Arc::default());
        let mut batch = BatchCounts::default();
        let (a, b) = (
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        );
        for (exporter, protocol) in [
            (a, "sflow"),
            (a, "sflow"),
            (b, "sflow"),
            (a, "sflow"),
            (a, "netflow5"),
            (b, "sflow"),
        ] {
            let counts = batch.exporter(exporter, protocol);
            counts.datagrams += 1;
            counts.records += 10;
        }
        assert!(!batch.is_empty());
        metrics.merge(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(metrics.exporter("192.0.2.1", "sflow").datagrams, 3);
        assert_eq!(metrics.exporter("192.0.2.1", "sflow").records, 30);
        assert_eq!(metrics.exporter("192.0.2.2", "sflow").datagrams, 2);
        assert_eq!(metrics.exporter("192.0.2.1", "netflow5").datagrams, 1);
        // Counted again after a merge: added to what was merged.
        batch.exporter(b, "sflow").datagrams += 1;
        metrics.merge(&mut batch);
        assert_eq!(metrics.exporter("192.0.2.2", "sflow").datagrams, 3);
    }

    #[test]
    fn exporter_labels_are_bounded() {
        let metrics = CollectorMetrics::new(HashMap::new(), Arc::default());
        let mut batch = BatchCounts::default();
        for i in 0..(MAX_EXPORTER_LABELS as u32 + 10) {
            batch
                .exporter(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), "sflow")
                .datagrams += 1;
        }
        metrics.merge(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(metrics.exporter_labels(), MAX_EXPORTER_LABELS);
        assert_eq!(metrics.exporter(OTHER_EXPORTER, "sflow").datagrams, 10);
        assert_eq!(
            metrics.protocol_total("sflow").datagrams,
            MAX_EXPORTER_LABELS as u64 + 10
        );
    }

    #[test]
    fn configured_names_label_exporters() {
        let address = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let names = HashMap::from([(address, "edge-1".to_string())]);
        let metrics = CollectorMetrics::new(names, Arc::default());
        let mut batch = BatchCounts::default();
        batch.exporter(address, "netflow5").records += 30;
        batch.error(address, "netflow5", "truncated");
        metrics.merge(&mut batch);
        assert_eq!(metrics.exporter("edge-1", "netflow5").records, 30);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                "fnm_flow_decode_errors_total{exporter=\"edge-1\",protocol=\"netflow5\",reason=\"truncated\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("fnm_flow_records_total{exporter=\"edge-1\",protocol=\"netflow5\"} 30")
        );
    }
}
