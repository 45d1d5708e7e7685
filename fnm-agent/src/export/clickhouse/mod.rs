//! The ClickHouse sink (`[export.clickhouse]`): a thread that turns export events into rows
//! of the tables in docs/clickhouse/schema.sql and sends them over ClickHouse's HTTP
//! interface, `INSERT ... FORMAT JSONEachRow`, once per `flush_interval` (sooner when a
//! table holds `batch_rows`).
//!
//! Rows wait in a bounded buffer (`max_buffered_rows`, about 250 bytes a row): while
//! ClickHouse is away or busy they are kept and sent again (backing off from 1 s to 30 s);
//! past the bound new rows are dropped (`queue_full`); rows ClickHouse refuses (a request it
//! would refuse again) are dropped (`delivery`). A missing database or table is created again
//! when `create_schema` is on. A retried INSERT whose answer was lost may be stored twice:
//! MergeTree tables do not deduplicate.

pub mod client;
pub mod config;
pub mod rows;
pub mod schema;

pub use config::ClickHouseConfig;

use super::{
    stats::{
        topic::{ATTACKS, FLOWS, HOSTS, MITIGATIONS},
        DropReason, ExportStats, TOPICS,
    },
    thread::{stop_requested, SinkThread},
    ExportError, ExportEvent,
};
use client::{Client, Failure};
use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

/// How often old partitions are looked for.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// The longest wait between two tries while ClickHouse is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The table each topic index goes to.
const TABLES: [&str; 4] = TOPICS;

/// The running sink.
pub struct ClickHouseSink {
    thread: SinkThread,
}

impl ClickHouseSink {
    /// Builds the client and starts the thread that feeds ClickHouse from `rx`.
    pub fn spawn(
        config: &ClickHouseConfig,
        rx: crossbeam_channel::Receiver<Arc<ExportEvent>>,
        stats: Arc<ExportStats>,
    ) -> Result<Self, ExportError> {
        let client = Client::new(config).map_err(ExportError::ClickHouse)?;
        let config = config.clone();
        let thread = SinkThread::spawn("fnm-clickhouse", move |stop| {
            Writer::new(config, client, stats).run(&rx, &stop)
        })?;
        Ok(Self { thread })
    }

    /// Sends what is buffered, at most `timeout`, and stops.
    pub fn stop(self, timeout: Duration) {
        self.thread.stop(timeout);
    }
}

/// Rows of one table waiting to be sent, in INSERTs of at most `batch_rows`.
#[derive(Default)]
struct Pending {
    chunks: VecDeque<(Vec<u8>, usize)>,
}

/// The sink's state on its thread.
struct Writer {
    config: ClickHouseConfig,
    client: Client,
    stats: Arc<ExportStats>,
    pending: [Pending; 4],
    rows: usize,
    /// The schema was created (or need not be).
    schema_ready: bool,
    /// No request before this (backing off).
    retry_at: Option<Instant>,
    backoff: Duration,
    next_retention: Instant,
    /// When a refusal or an outage was last logged (once a minute at most).
    last_log: Option<Instant>,
}

impl Writer {
    fn new(config: ClickHouseConfig, client: Client, stats: Arc<ExportStats>) -> Self {
        Self {
            schema_ready: !config.create_schema,
            config,
            client,
            stats,
            pending: Default::default(),
            rows: 0,
            retry_at: None,
            backoff: Duration::from_secs(1),
            next_retention: Instant::now(),
            last_log: None,
        }
    }

    fn run(
        mut self,
        rx: &crossbeam_channel::Receiver<Arc<ExportEvent>>,
        stop: &crossbeam_channel::Receiver<Duration>,
    ) {
        let mut next_flush = Instant::now() + self.config.flush_interval;
        let timeout = loop {
            if let Some(timeout) = stop_requested(stop) {
                break timeout;
            }
            let wait = next_flush
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match rx.recv_timeout(wait) {
                Ok(event) => self.add(&event),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    break Duration::from_secs(2)
                }
            }
            let now = Instant::now();
            if now >= next_flush || self.has_full_batch() {
                if self.retry_at.is_none_or(|t| now >= t) {
                    self.flush(None);
                }
                next_flush = now + self.config.flush_interval;
            }
            if self.retry_at.is_none() && now >= self.next_retention {
                self.retention();
            }
        };
        while let Ok(event) = rx.try_recv() {
            self.add(&event);
        }
        self.flush(Some(Instant::now() + timeout));
        if self.rows > 0 {
            tracing::warn!("ClickHouse export: {} rows not stored at stop", self.rows);
            self.stats.dropped(DropReason::Delivery, self.rows as u64);
        }
    }

    fn has_full_batch(&self) -> bool {
        self.pending.iter().any(|p| p.chunks.len() > 1)
    }

    /// Appends the rows of `event`.
    fn add(&mut self, event: &ExportEvent) {
        match event {
            ExportEvent::Hosts(records) => {
                for r in records {
                    self.row(HOSTS, r);
                }
            }
            ExportEvent::Flows(records) => {
                for r in records {
                    self.row(FLOWS, r);
                }
            }
            ExportEvent::Attack(a) => self.row(ATTACKS, &rows::AttackRow::new(a)),
            ExportEvent::Mitigation(m) => self.row(MITIGATIONS, &rows::MitigationRow::new(m)),
        }
        self.stats.in_flight.store(self.rows as u64, Relaxed);
    }

    fn row<T: serde::Serialize>(&mut self, table: usize, row: &T) {
        if self.rows >= self.config.max_buffered_rows {
            self.stats.dropped(DropReason::QueueFull, 1);
            return;
        }
        let chunks = &mut self.pending[table].chunks;
        if chunks
            .back()
            .is_none_or(|(_, n)| *n >= self.config.batch_rows)
        {
            chunks.push_back((Vec::new(), 0));
        }
        let Some((body, n)) = chunks.back_mut() else {
            return;
        };
        let len = body.len();
        if serde_json::to_writer(&mut *body, row).is_err() {
            body.truncate(len);
            self.stats.dropped(DropReason::Produce, 1);
            return;
        }
        body.push(b'\n');
        *n += 1;
        self.rows += 1;
        self.stats.produced(table, 1);
    }

    /// Sends every pending batch, oldest first, table by table; stops at the first outage.
    /// `deadline`: the agent is stopping; give up then.
    fn flush(&mut self, deadline: Option<Instant>) {
        if !self.schema_ready && !self.create_schema(deadline) {
            return;
        }
        let mut recreated = false;
        for (table, name) in TABLES.iter().enumerate() {
            while let Some((body, n)) = self.pending[table].chunks.pop_front() {
                let timeout = match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()),
                    None => self.config.timeout,
                };
                if timeout.is_zero() {
                    self.pending[table].chunks.push_front((body, n));
                    return;
                }
                let body = bytes::Bytes::from(body);
                match self.client.insert(name, body.clone(), timeout) {
                    Ok(()) => {
                        self.stats.delivered(table, n as u64);
                        self.sent(n);
                        self.up();
                    }
                    Err(Failure::Refused(e)) => {
                        self.log(&format!("ClickHouse refused {n} rows of {name}: {e}"));
                        self.stats.dropped(DropReason::Delivery, n as u64);
                        self.sent(n);
                        self.up();
                    }
                    Err(Failure::Missing(e)) if self.config.create_schema && !recreated => {
                        self.log(&format!("ClickHouse: {e}; creating the schema again"));
                        recreated = true;
                        self.pending[table].chunks.push_front((body.into(), n));
                        self.schema_ready = false;
                        if !self.create_schema(deadline) {
                            return;
                        }
                    }
                    Err(e) => {
                        self.pending[table].chunks.push_front((body.into(), n));
                        self.down(&e);
                        return;
                    }
                }
            }
        }
    }

    fn create_schema(&mut self, deadline: Option<Instant>) -> bool {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        match schema::create(&self.client, &self.config.database) {
            Ok(()) => {
                tracing::info!(
                    "ClickHouse export: schema ready in database {}",
                    self.config.database
                );
                self.schema_ready = true;
                self.up();
                true
            }
            Err(e) => {
                self.down(&e);
                false
            }
        }
    }

    fn retention(&mut self) {
        self.next_retention = Instant::now() + RETENTION_EVERY;
        let (days, rollup) = (
            self.config.retention_days,
            self.config.rollup_retention_days,
        );
        if days == 0 && rollup == 0 {
            return;
        }
        match schema::apply_retention(&self.client, &self.config.database, days, rollup) {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!("ClickHouse export: dropped old partitions {dropped:?}")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("ClickHouse export: retention: {e}");
                // Tried again within a minute.
                self.next_retention = Instant::now() + Duration::from_secs(60);
            }
        }
    }

    fn sent(&mut self, n: usize) {
        self.rows = self.rows.saturating_sub(n);
        self.stats.in_flight.store(self.rows as u64, Relaxed);
    }

    fn up(&mut self) {
        self.stats.connected.store(true, Relaxed);
        self.retry_at = None;
        self.backoff = Duration::from_secs(1);
    }

    fn down(&mut self, e: &Failure) {
        let was_up = self.stats.connected.swap(false, Relaxed);
        if was_up {
            self.last_log = None;
        }
        self.log(&format!(
            "ClickHouse export: {e}; {} rows wait (retry in {:?})",
            self.rows, self.backoff
        ));
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn log(&mut self, message: &str) {
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_log = Some(Instant::now());
            tracing::warn!("{message}");
        }
    }
}
