//! Export of what the engine sees to the rest of a fleet: per-host counters of every poll
//! slot, attack events, mitigation events and (optionally) one in N decoded flow records, as
//! JSON messages on Kafka topics (`[export] kafka = true`, brokers in `[kafka]`) and as rows
//! of ClickHouse tables (`[export.clickhouse]`, schema in docs/clickhouse/).
//!
//! ```text
//!  engine thread ── after each tick ──▶ HostExport (builds events once, never blocks)
//!                                          │ one bounded channel per sink (EXPORT_QUEUE batches;
//!                                          │ full → dropped, counted)
//!                      ┌───────────────────┴────────────────────┐
//!                      ▼                                        ▼
//!      fnm-export thread ──▶ librdkafka queue        fnm-clickhouse thread ──▶ row buffer
//!                      (bounded) ──▶ brokers                (bounded) ──▶ HTTP INSERTs
//! ```
//!
//! A slow or unreachable sink never stalls accounting or detection, nor the other sink: the
//! engine only `try_send`s, each sink's own queue is bounded (`[kafka] queue_max_messages`,
//! `[export.clickhouse] max_buffered_rows`), and every drop is counted by sink and reason in
//! `fnm_export_dropped_total`. Both reconnect on their own; their state is in
//! `/api/v1/status` (`export`, by sink) and `fnm_export_connected`.

pub mod clickhouse;
pub mod config;
#[cfg(target_os = "linux")]
pub mod kafka;
pub mod observer;
pub mod records;
pub mod sampler;
pub mod stats;
mod thread;

pub use config::{ExportConfig, KafkaConfig};
pub use observer::{HostExport, SinkQueue};
pub use stats::{DropReason, ExportMetrics, ExportStats, Sink};
use std::sync::Arc;

/// Batches the engine may have handed over and the export thread not yet taken (about two
/// seconds of ticks at the default interval); beyond it a tick's batch is dropped and counted.
pub const EXPORT_QUEUE: usize = 8;

/// What the engine hands to the export thread after a tick.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportEvent {
    /// Counters of every host above the floor for the slot that just closed.
    Hosts(Vec<records::HostRecord>),
    /// An attack started, was updated or stopped.
    Attack(Box<records::AttackEvent>),
    /// A mitigation was applied or lifted.
    Mitigation(Box<records::MitigationEvent>),
    /// The flow records sampled in the slot that just closed.
    Flows(Vec<records::FlowRecord>),
}

/// The export as the agent runs it: its sink threads and what the views read.
pub struct Exporter {
    /// Each running sink's counters, for metrics and status.
    pub stats: Vec<Arc<ExportStats>>,
    #[cfg(target_os = "linux")]
    kafka: Option<kafka::KafkaSink>,
    clickhouse: Option<clickhouse::ClickHouseSink>,
}

impl Exporter {
    /// Starts the sinks the config turns on (`[export] kafka = true`, `[export.clickhouse]`);
    /// returns the engine's observer with them. `None` when nothing is exported.
    pub fn start(
        export: &ExportConfig,
        kafka: &KafkaConfig,
    ) -> Result<Option<(Self, HostExport)>, ExportError> {
        if !export.kafka && export.clickhouse.is_none() {
            return Ok(None);
        }
        let agent = export.agent_id();
        let mut exporter = Self {
            stats: Vec::new(),
            #[cfg(target_os = "linux")]
            kafka: None,
            clickhouse: None,
        };
        let mut queues = Vec::new();
        let mut queue = |sink: Sink| {
            let stats = Arc::new(ExportStats::new(sink));
            let (tx, rx) = crossbeam_channel::bounded::<Arc<ExportEvent>>(EXPORT_QUEUE);
            queues.push(SinkQueue {
                tx,
                stats: stats.clone(),
            });
            (rx, stats)
        };
        if export.kafka {
            let (rx, stats) = queue(Sink::Kafka);
            #[cfg(target_os = "linux")]
            {
                exporter.kafka = Some(kafka::KafkaSink::spawn(kafka, rx, stats.clone())?);
                exporter.stats.push(stats);
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = (kafka, rx, stats);
                return Err(ExportError::Unsupported);
            }
        }
        if let Some(config) = &export.clickhouse {
            let (rx, stats) = queue(Sink::Clickhouse);
            exporter.clickhouse = Some(clickhouse::ClickHouseSink::spawn(
                config,
                rx,
                stats.clone(),
            )?);
            exporter.stats.push(stats);
        }
        let observer = HostExport::new(export, agent, queues);
        Ok(Some((exporter, observer)))
    }

    /// Hands over what is queued (at most `timeout` per sink) and stops the threads.
    pub fn stop(&mut self, timeout: std::time::Duration) {
        #[cfg(target_os = "linux")]
        if let Some(sink) = self.kafka.take() {
            sink.stop(timeout);
        }
        if let Some(sink) = self.clickhouse.take() {
            sink.stop(timeout);
        }
    }
}

/// Errors starting the export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// librdkafka refused the configuration.
    #[error("Kafka producer: {0}")]
    Kafka(String),
    /// Starting the export thread failed.
    #[error("starting the export thread: {0}")]
    Thread(#[from] std::io::Error),
    /// This build has no Kafka client.
    #[error("Kafka export is built on Linux only")]
    Unsupported,
    /// The ClickHouse client could not be built.
    #[error("ClickHouse client: {0}")]
    ClickHouse(String),
}
