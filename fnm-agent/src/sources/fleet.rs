//! The aggregator's source: other agents' host records from `<prefix>.hosts`, read as a
//! member of the `[cluster] group_id` consumer group, handed to the engine as counter deltas
//! (see [`crate::cluster`]).
//!
//! Records are handed over within 50 ms of arrival (no flush needed before a tick: what
//! arrives late counts in the next slot, like a late flow record). A record whose slot ended
//! more than `max_lag` ago is dropped (`stale`): after an outage the backlog is history.

use crate::{
    cluster::Sites,
    config::Config,
    engine::input::{Batch, EngineInput},
    export::records::HostRecord,
    metrics::MetricsSource,
    traffic::Source as TrafficSource,
};
use rdkafka::{
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
    Message,
};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Most records in one hand-over.
const BATCH: usize = 4096;
/// Longest a record waits in the source before it is handed over.
const HAND_OVER: Duration = Duration::from_millis(50);

/// Counters of the fleet source.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Records handed to the engine.
    pub accepted: AtomicU64,
    /// Records older than `max_lag`.
    pub stale: AtomicU64,
    /// Messages that are not host records.
    pub malformed: AtomicU64,
    /// Partitions of `<prefix>.hosts` this aggregator holds now.
    pub partitions: AtomicU64,
}

impl MetricsSource for FleetStats {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
        let records = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        for (result, c) in [
            ("accepted", &self.accepted),
            ("stale", &self.stale),
            ("malformed", &self.malformed),
        ] {
            records
                .get_or_create(&vec![("result", result)])
                .inc_by(c.load(Relaxed));
        }
        registry.register(
            "fnm_fleet_records",
            "Host records an aggregator read from Kafka, by result",
            records,
        );
        let partitions = Gauge::<i64>::default();
        partitions.set(self.partitions.load(Relaxed) as i64);
        registry.register(
            "fnm_fleet_partitions_assigned",
            "Partitions of the hosts topic this aggregator holds",
            partitions,
        );
    }
}

/// The running consumer.
pub struct FleetSource {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Its counters.
    pub stats: Arc<FleetStats>,
}

impl FleetSource {
    /// Joins the consumer group and starts handing records to `input`; `sites` keeps who
    /// reported what.
    pub fn start(config: &Config, input: EngineInput, sites: Arc<Sites>) -> anyhow::Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", config.kafka.brokers.join(","))
            .set("group.id", &config.cluster.group_id)
            .set("client.id", "fnm-aggregator")
            .set("enable.auto.commit", "true")
            // A new group member starts at the end: old records are not current traffic.
            .set("auto.offset.reset", "latest")
            // A dead aggregator's partitions move after 6 s without heartbeats.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000");
        for (k, v) in &config.kafka.options {
            client.set(k, v);
        }
        let consumer: BaseConsumer = client
            .create()
            .map_err(|e| anyhow::anyhow!("Kafka consumer: {e}"))?;
        let topic = config.kafka.topic("hosts");
        consumer
            .subscribe(&[&topic])
            .map_err(|e| anyhow::anyhow!("subscribing to {topic}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FleetStats::default());
        let max_lag_ms = config.cluster.max_lag.as_millis() as u64;
        let thread = std::thread::Builder::new()
            .name("fnm-fleet".into())
            .spawn({
                let (stop, stats) = (stop.clone(), stats.clone());
                move || run(consumer, input, sites, stats, stop, max_lag_ms)
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            stats,
        })
    }

    /// Its metric families.
    pub fn metrics(&self) -> Arc<dyn MetricsSource> {
        self.stats.clone()
    }
}

impl super::Source for FleetSource {
    fn name(&self) -> &'static str {
        "fleet"
    }

    fn stop(mut self: Box<Self>) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    consumer: BaseConsumer,
    input: EngineInput,
    sites: Arc<Sites>,
    stats: Arc<FleetStats>,
    stop: Arc<AtomicBool>,
    max_lag_ms: u64,
) {
    let mut pending = Vec::with_capacity(BATCH);
    let mut oldest: Option<Instant> = None;
    let mut agents: HashMap<String, Arc<str>> = HashMap::new();
    let mut last_housekeeping = Instant::now();
    while !stop.load(Relaxed) {
        let wait = oldest.map_or(Duration::from_millis(100), |t| {
            HAND_OVER.saturating_sub(t.elapsed())
        });
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                let record: Option<HostRecord> =
                    m.payload().and_then(|p| serde_json::from_slice(p).ok());
                match record {
                    Some(r) => {
                        let now = crate::engine::unix_ms();
                        if now.saturating_sub(r.end_unix_ms) > max_lag_ms {
                            stats.stale.fetch_add(1, Relaxed);
                        } else {
                            if agents.len() < 10_000 || agents.contains_key(&r.agent) {
                                let agent = agents
                                    .entry(r.agent.clone())
                                    .or_insert_with(|| Arc::from(r.agent.as_str()));
                                sites.add(r.host, r.direction, agent, r.packets, now);
                            }
                            pending.push((r.host, r.direction, r.counters()));
                            oldest.get_or_insert_with(Instant::now);
                        }
                    }
                    None => {
                        stats.malformed.fetch_add(1, Relaxed);
                    }
                }
            }
            Some(Err(e)) => {
                tracing::debug!("fleet consumer: {e}");
            }
            None => {}
        }
        let due = oldest.is_some_and(|t| t.elapsed() >= HAND_OVER);
        if pending.len() >= BATCH || (due && !pending.is_empty()) {
            let n = pending.len() as u64;
            if input.send(
                TrafficSource::Fleet,
                Batch::Fleet(std::mem::take(&mut pending)),
            ) {
                stats.accepted.fetch_add(n, Relaxed);
            }
            oldest = None;
        }
        if last_housekeeping.elapsed() >= Duration::from_secs(1) {
            last_housekeeping = Instant::now();
            sites.prune(crate::engine::unix_ms());
            let held = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            stats.partitions.store(held as u64, Relaxed);
        }
    }
    consumer.unsubscribe();
}
