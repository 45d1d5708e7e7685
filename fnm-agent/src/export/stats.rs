//! The export's counters, read by `/metrics` and `/api/v1/status`.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The export thread was behind: the engine's batch did not fit its queue.
    EngineQueue,
    /// More hosts in a slot than `[export] max_hosts_per_slot`.
    HostLimit,
    /// More sampled flow records in a slot than `[export] max_flows_per_slot`.
    FlowLimit,
    /// The sink's queue was full (`[kafka] queue_max_messages`, `[export.clickhouse]
    /// max_buffered_rows`).
    QueueFull,
    /// Not delivered within `[kafka] message_timeout`, or refused by the broker or by
    /// ClickHouse.
    Delivery,
    /// Refused when produced (e.g. larger than the broker's limit).
    Produce,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 6] = [
        DropReason::EngineQueue,
        DropReason::HostLimit,
        DropReason::FlowLimit,
        DropReason::QueueFull,
        DropReason::Delivery,
        DropReason::Produce,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::EngineQueue => "engine_queue",
            DropReason::HostLimit => "host_limit",
            DropReason::FlowLimit => "flow_limit",
            DropReason::QueueFull => "queue_full",
            DropReason::Delivery => "delivery",
            DropReason::Produce => "produce",
        }
    }
}

/// Topics (Kafka) and tables (ClickHouse), as counters index them.
pub const TOPICS: [&str; 4] = ["hosts", "attacks", "mitigations", "flows"];

/// Index of each topic in [`TOPICS`].
pub mod topic {
    /// Host counters.
    pub const HOSTS: usize = 0;
    /// Attack events.
    pub const ATTACKS: usize = 1;
    /// Mitigation events.
    pub const MITIGATIONS: usize = 2;
    /// Sampled flow records.
    pub const FLOWS: usize = 3;
}

/// Where an export goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    /// Kafka brokers (`[export] kafka`).
    Kafka,
    /// ClickHouse (`[export.clickhouse]`).
    Clickhouse,
}

impl Sink {
    /// The metric label and status key.
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Kafka => "kafka",
            Sink::Clickhouse => "clickhouse",
        }
    }
}

/// Live counters of one sink.
#[derive(Debug)]
pub struct ExportStats {
    /// The sink they count.
    pub sink: Sink,
    dropped: [AtomicU64; 6],
    produced: [AtomicU64; 4],
    delivered: [AtomicU64; 4],
    /// The sink is reachable: a Kafka broker connection is up (librdkafka's statistics,
    /// every second), or ClickHouse answered the last request.
    pub connected: AtomicBool,
    /// Messages (rows) the sink holds, not yet delivered.
    pub in_flight: AtomicU64,
}

/// A picture of [`ExportStats`] for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct ExportStatus {
    /// Sink (`kafka`, `clickhouse`).
    pub sink: Sink,
    /// The sink is reachable.
    pub connected: bool,
    /// Messages (rows) handed to the sink, by topic (table).
    pub produced: std::collections::BTreeMap<&'static str, u64>,
    /// Messages the brokers acknowledged (rows ClickHouse stored), by topic (table).
    pub delivered: std::collections::BTreeMap<&'static str, u64>,
    /// Messages dropped, by reason.
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
    /// Messages not yet delivered.
    pub in_flight: u64,
}

impl ExportStats {
    /// Zeroed counters of `sink`.
    pub fn new(sink: Sink) -> Self {
        Self {
            sink,
            dropped: Default::default(),
            produced: Default::default(),
            delivered: Default::default(),
            connected: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
        }
    }

    /// Counts `n` dropped messages.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Relaxed);
    }

    /// Counts `n` messages handed to the sink for topic index `topic` ([`TOPICS`]).
    pub fn produced(&self, topic: usize, n: u64) {
        self.produced[topic].fetch_add(n, Relaxed);
    }

    /// Counts `n` messages the sink acknowledged.
    pub fn delivered(&self, topic: usize, n: u64) {
        self.delivered[topic].fetch_add(n, Relaxed);
    }

    /// Dropped so far for `reason`.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    /// Acknowledged so far on topic index `topic`.
    pub fn delivered_count(&self, topic: usize) -> u64 {
        self.delivered[topic].load(Relaxed)
    }

    /// The status API's picture.
    pub fn status(&self) -> ExportStatus {
        ExportStatus {
            sink: self.sink,
            connected: self.connected.load(Relaxed),
            produced: TOPICS
                .iter()
                .zip(&self.produced)
                .map(|(t, c)| (*t, c.load(Relaxed)))
                .collect(),
            delivered: TOPICS
                .iter()
                .zip(&self.delivered)
                .map(|(t, c)| (*t, c.load(Relaxed)))
                .collect(),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.dropped_count(*r)))
                .collect(),
            in_flight: self.in_flight.load(Relaxed),
        }
    }
}

/// Every sink's counters, as `/metrics` shows them (one family per metric, a `sink` label).
pub struct ExportMetrics(pub Vec<std::sync::Arc<ExportStats>>);

impl crate::metrics::MetricsSource for ExportMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
        type L = Vec<(&'static str, &'static str)>;
        let dropped = Family::<L, Counter>::default();
        let produced = Family::<L, Counter>::default();
        let delivered = Family::<L, Counter>::default();
        let connected = Family::<L, Gauge>::default();
        let in_flight = Family::<L, Gauge>::default();
        for s in &self.0 {
            let sink = s.sink.as_str();
            for r in DropReason::ALL {
                dropped
                    .get_or_create(&vec![("sink", sink), ("reason", r.as_str())])
                    .inc_by(s.dropped_count(r));
            }
            for (i, t) in TOPICS.iter().enumerate() {
                let l = vec![("sink", sink), ("topic", *t)];
                produced
                    .get_or_create(&l)
                    .inc_by(s.produced[i].load(Relaxed));
                delivered.get_or_create(&l).inc_by(s.delivered_count(i));
            }
            connected
                .get_or_create(&vec![("sink", sink)])
                .set(i64::from(s.connected.load(Relaxed)));
            in_flight
                .get_or_create(&vec![("sink", sink)])
                .set(s.in_flight.load(Relaxed) as i64);
        }
        registry.register(
            "fnm_export_dropped",
            "Export messages dropped, by sink and reason",
            dropped,
        );
        registry.register(
            "fnm_export_produced",
            "Export messages (ClickHouse: rows) handed to the sink, by sink and topic",
            produced,
        );
        registry.register(
            "fnm_export_delivered",
            "Export messages the brokers acknowledged (ClickHouse: rows stored), by sink and topic",
            delivered,
        );
        registry.register(
            "fnm_export_connected",
            "1 while the sink is reachable (a broker connection is up; ClickHouse answered)",
            connected,
        );
        registry.register(
            "fnm_export_in_flight_messages",
            "Export messages (rows) held by the sink, not yet delivered",
            in_flight,
        );
    }
}
