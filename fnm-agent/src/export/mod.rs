//! Export of what the engine sees to the rest of a fleet: per-host counters of every poll
//! slot, attack events and mitigation events, as JSON messages on Kafka topics
//! (`[export] kafka = true`, brokers in `[kafka]`).
//!
//! ```text
//!  engine thread ── after each tick ──▶ HostExport (builds events, never blocks)
//!                                          │ bounded channel (EXPORT_QUEUE batches; full → dropped, counted)
//!                                          ▼
//!                                   fnm-export thread ──▶ librdkafka queue (bounded) ──▶ brokers
//! ```
//!
//! A slow or unreachable broker never stalls accounting or detection: the engine only
//! `try_send`s, librdkafka's own queue is bounded (`[kafka] queue_max_messages`), messages it
//! cannot deliver within `message_timeout` are dropped, and every drop is counted by reason in
//! `fnm_export_dropped_total`. librdkafka reconnects on its own; the broker state is in
//! `/api/v1/status` and `fnm_export_connected`.

pub mod config;
#[cfg(target_os = "linux")]
pub mod kafka;
pub mod observer;
pub mod records;
pub mod stats;

pub use config::{ExportConfig, KafkaConfig};
pub use observer::HostExport;
pub use stats::{DropReason, ExportStats};

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
}

/// The export as the agent runs it: the thread and what the views read.
pub struct Exporter {
    /// Counters for metrics and status.
    pub stats: std::sync::Arc<ExportStats>,
    #[cfg(target_os = "linux")]
    sink: Option<kafka::KafkaSink>,
}

impl Exporter {
    /// Starts the Kafka sink when `[export] kafka = true`; returns the engine's observer with
    /// it. `None` when nothing is exported.
    pub fn start(
        export: &ExportConfig,
        kafka: &KafkaConfig,
    ) -> Result<Option<(Self, HostExport)>, ExportError> {
        if !export.kafka {
            return Ok(None);
        }
        let stats = std::sync::Arc::new(ExportStats::default());
        let (tx, rx) = crossbeam_channel::bounded::<ExportEvent>(EXPORT_QUEUE);
        let agent = export.agent_id();
        #[cfg(target_os = "linux")]
        {
            let sink = kafka::KafkaSink::spawn(kafka, rx, stats.clone())?;
            let observer = HostExport::new(export, agent, tx, stats.clone());
            Ok(Some((
                Self {
                    stats,
                    sink: Some(sink),
                },
                observer,
            )))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (kafka, rx, tx, agent, stats);
            Err(ExportError::Unsupported)
        }
    }

    /// Hands over what is queued (at most `timeout`) and stops the thread.
    pub fn stop(&mut self, timeout: std::time::Duration) {
        #[cfg(target_os = "linux")]
        if let Some(sink) = self.sink.take() {
            sink.stop(timeout);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = timeout;
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
}
