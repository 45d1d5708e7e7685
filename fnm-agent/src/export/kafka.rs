//! The Kafka sink: a thread that turns export events into JSON messages for librdkafka
//! (the `rdkafka` crate with its bundled librdkafka).
//!
//! librdkafka owns the connections: it reconnects on its own, batches, and retries until
//! `message.timeout.ms`. Its queue is bounded (`queue.buffering.max.messages`): when brokers
//! are away for long, new messages are refused at once (`queue_full`), never waited for, so
//! the thread keeps draining the engine's queue and nothing upstream slows down.

use super::{
    config::KafkaConfig,
    records::{AttackEvent, MitigationEvent},
    stats::{
        topic::{ATTACKS, FLOWS, HOSTS, MITIGATIONS},
        DropReason, ExportStats, TOPICS,
    },
    thread::{stop_requested, SinkThread},
    ExportError, ExportEvent,
};
use rdkafka::{
    config::ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
    statistics::Statistics,
    ClientContext, Message,
};
use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

/// Counts deliveries and reads librdkafka's statistics for the connection state.
struct Context {
    stats: Arc<ExportStats>,
    /// The last "all brokers down" was logged at (ms since start), to log it once a minute.
    last_down_log: std::sync::Mutex<Option<Instant>>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        self.stats.connected.store(up, Relaxed);
        self.stats.in_flight.store(statistics.msg_cnt, Relaxed);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!("librdkafka {level:?} {fac}: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let mut last = self.last_down_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!("Kafka export: {reason} ({error}); messages wait in a bounded queue");
        }
    }
}

impl ProducerContext for Context {
    /// The topic's index.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, topic: usize) {
        match result {
            Ok(_) => self.stats.delivered(topic, 1),
            Err((e, m)) => {
                tracing::debug!("Kafka export: {} not delivered: {e}", m.topic());
                self.stats.dropped(DropReason::Delivery, 1);
            }
        }
    }
}

/// The running sink.
pub struct KafkaSink {
    thread: SinkThread,
}

impl KafkaSink {
    /// Creates the producer and starts the thread that feeds it from `rx`.
    pub fn spawn(
        config: &KafkaConfig,
        rx: crossbeam_channel::Receiver<Arc<ExportEvent>>,
        stats: Arc<ExportStats>,
    ) -> Result<Self, ExportError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", config.brokers.join(","))
            .set("client.id", "fnm-agent")
            .set(
                "message.timeout.ms",
                config.message_timeout.as_millis().to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                config.queue_max_messages.to_string(),
            )
            .set("linger.ms", "50")
            .set("statistics.interval.ms", "1000")
            // Acknowledged by the partition leader: counters every slot need no more.
            .set("acks", "1");
        for (k, v) in &config.options {
            client.set(k, v);
        }
        let context = Context {
            stats: stats.clone(),
            last_down_log: std::sync::Mutex::new(None),
        };
        let producer: BaseProducer<Context> = client
            .create_with_context(context)
            .map_err(|e| ExportError::Kafka(e.to_string()))?;
        let topics = TOPICS.map(|t| config.topic(t));
        let thread = SinkThread::spawn("fnm-export", move |stop| {
            run(producer, rx, stats, topics, stop)
        })?;
        Ok(Self { thread })
    }

    /// Delivers what is queued, at most `timeout`, and stops.
    pub fn stop(self, timeout: Duration) {
        self.thread.stop(timeout);
    }
}

fn run(
    producer: BaseProducer<Context>,
    rx: crossbeam_channel::Receiver<Arc<ExportEvent>>,
    stats: Arc<ExportStats>,
    topics: [String; 4],
    stop: crossbeam_channel::Receiver<Duration>,
) {
    let mut out = Output {
        producer: &producer,
        stats: &stats,
        topics: &topics,
        buf: Vec::with_capacity(512),
    };
    let timeout = loop {
        if let Some(timeout) = stop_requested(&stop) {
            break timeout;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(event) => out.event(&event),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break Duration::from_secs(2),
        }
        // Delivery reports and statistics.
        producer.poll(Duration::ZERO);
    };
    while let Ok(event) = rx.try_recv() {
        out.event(&event);
    }
    if let Err(e) = producer.flush(timeout) {
        let left = producer.in_flight_count();
        tracing::warn!("Kafka export: {left} messages not delivered at stop ({e})");
        stats.dropped(DropReason::Delivery, left.max(0) as u64);
    }
}

/// Writes events as messages.
struct Output<'a> {
    producer: &'a BaseProducer<Context>,
    stats: &'a ExportStats,
    topics: &'a [String; 4],
    buf: Vec<u8>,
}

impl Output<'_> {
    fn event(&mut self, event: &ExportEvent) {
        match event {
            ExportEvent::Hosts(records) => {
                for r in records {
                    self.message(HOSTS, r.host, r);
                    // Serve delivery reports while a big batch goes in, so the queue moves.
                    self.producer.poll(Duration::ZERO);
                }
            }
            ExportEvent::Flows(records) => {
                for r in records {
                    // Keyed by destination: one partition holds what reached a host.
                    self.message(FLOWS, r.dst, r);
                    self.producer.poll(Duration::ZERO);
                }
            }
            ExportEvent::Attack(a) => self.message(ATTACKS, a.host, &**a as &AttackEvent),
            ExportEvent::Mitigation(m) => {
                let host = m.mitigation.host;
                self.message(MITIGATIONS, host, &**m as &MitigationEvent)
            }
        }
    }

    fn message<T: serde::Serialize>(&mut self, topic: usize, host: std::net::IpAddr, value: &T) {
        self.buf.clear();
        if serde_json::to_writer(&mut self.buf, value).is_err() {
            self.stats.dropped(DropReason::Produce, 1);
            return;
        }
        let key = host.to_string();
        let record = BaseRecord::with_opaque_to(&self.topics[topic], topic)
            .key(&key)
            .payload(&self.buf);
        match self.producer.send(record) {
            Ok(()) => self.stats.produced(topic, 1),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.stats.dropped(DropReason::QueueFull, 1)
            }
            Err((e, _)) => {
                tracing::debug!("Kafka export: producing to {}: {e}", self.topics[topic]);
                self.stats.dropped(DropReason::Produce, 1)
            }
        }
    }
}
