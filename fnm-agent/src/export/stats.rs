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
    /// librdkafka's queue was full (`[kafka] queue_max_messages`).
    QueueFull,
    /// Not delivered within `[kafka] message_timeout`, or refused by the broker.
    Delivery,
    /// Refused when produced (e.g. larger than the broker's limit).
    Produce,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 5] = [
        DropReason::EngineQueue,
        DropReason::HostLimit,
        DropReason::QueueFull,
        DropReason::Delivery,
        DropReason::Produce,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::EngineQueue => "engine_queue",
            DropReason::HostLimit => "host_limit",
            DropReason::QueueFull => "queue_full",
            DropReason::Delivery => "delivery",
            DropReason::Produce => "produce",
        }
    }
}

/// Topics, as counters index them.
pub const TOPICS: [&str; 3] = ["hosts", "attacks", "mitigations"];

/// Live counters of the export.
#[derive(Debug, Default)]
pub struct ExportStats {
    dropped: [AtomicU64; 5],
    produced: [AtomicU64; 3],
    delivered: [AtomicU64; 3],
    /// At least one broker connection is up (librdkafka's statistics, every second).
    pub connected: AtomicBool,
    /// Messages librdkafka holds, not yet delivered.
    pub in_flight: AtomicU64,
}

/// A picture of [`ExportStats`] for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct ExportStatus {
    /// Sink (`kafka`).
    pub sink: &'static str,
    /// A broker connection is up.
    pub connected: bool,
    /// Messages handed to librdkafka, by topic.
    pub produced: std::collections::BTreeMap<&'static str, u64>,
    /// Messages the brokers acknowledged, by topic.
    pub delivered: std::collections::BTreeMap<&'static str, u64>,
    /// Messages dropped, by reason.
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
    /// Messages not yet delivered.
    pub in_flight: u64,
}

impl ExportStats {
    /// Counts `n` dropped messages.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Relaxed);
    }

    /// Counts a message handed to librdkafka for topic index `topic` ([`TOPICS`]).
    pub fn produced(&self, topic: usize) {
        self.produced[topic].fetch_add(1, Relaxed);
    }

    /// Counts a message the broker acknowledged.
    pub fn delivered(&self, topic: usize) {
        self.delivered[topic].fetch_add(1, Relaxed);
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
            sink: "kafka",
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

impl crate::metrics::MetricsSource for ExportStats {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
        type L = Vec<(&'static str, &'static str)>;
        let dropped = Family::<L, Counter>::default();
        for r in DropReason::ALL {
            dropped
                .get_or_create(&vec![("sink", "kafka"), ("reason", r.as_str())])
                .inc_by(self.dropped_count(r));
        }
        registry.register(
            "fnm_export_dropped",
            "Export messages dropped, by sink and reason",
            dropped,
        );
        let produced = Family::<L, Counter>::default();
        let delivered = Family::<L, Counter>::default();
        for (i, t) in TOPICS.iter().enumerate() {
            let l = vec![("sink", "kafka"), ("topic", *t)];
            produced
                .get_or_create(&l)
                .inc_by(self.produced[i].load(Relaxed));
            delivered.get_or_create(&l).inc_by(self.delivered_count(i));
        }
        registry.register(
            "fnm_export_produced",
            "Export messages handed to the client library, by sink and topic",
            produced,
        );
        registry.register(
            "fnm_export_delivered",
            "Export messages the brokers acknowledged, by sink and topic",
            delivered,
        );
        let connected = Family::<L, Gauge>::default();
        connected
            .get_or_create(&vec![("sink", "kafka")])
            .set(i64::from(self.connected.load(Relaxed)));
        registry.register(
            "fnm_export_connected",
            "1 while a broker connection is up",
            connected,
        );
        let in_flight = Family::<L, Gauge>::default();
        in_flight
            .get_or_create(&vec![("sink", "kafka")])
            .set(self.in_flight.load(Relaxed) as i64);
        registry.register(
            "fnm_export_in_flight_messages",
            "Export messages not yet delivered",
            in_flight,
        );
    }
}
