//! The engine: accounting, detection and the attack book, owned by one thread.
//!
//! ```text
//!  sources ──Batch──▶ [bounded channel] ──▶ engine thread ──Decision──▶ mitigator
//!  (xdp poller,                              │  ingest, tick, detect
//!   collectors,        flush request ◀───────┤  (before each tick)
//!   capture)                                 ▼
//!                                  Snapshot (arc-swap) ──▶ API, /metrics, CLI
//!                    EngineCommand ──────────▶ (host queries, answered between ticks)
//! ```
//!
//! The engine thread owns [`core::EngineCore`] outright: no mutex, so no source ever waits on
//! it and nothing reads half-updated state. Before each tick it asks the sources that buffer
//! (the XDP poller, the capture thread) to hand over what belongs to the closing slot
//! ([`Flush`]), drains the channel, ticks, sends its decisions to the mitigator and publishes
//! a snapshot. Views read the snapshot without blocking the engine; what a snapshot does not
//! hold (one host, an arbitrary top-N) is a [`EngineCommand`] answered between ticks.

pub mod book;
pub mod core;
pub mod decision;
pub mod input;
pub mod snapshot;

use self::{
    core::{EngineCore, HostSort},
    decision::Decision,
    input::{InputReceiver, Queued},
    snapshot::SharedSnapshot,
};
use crate::{accounting::Direction, views::HostView};
use prometheus_client::metrics::histogram::Histogram;
use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

/// The engine, having drained its input, sleeps this long (never past the next tick, and woken
/// early by a source with [`input::WAKE_RECORDS`] waiting) before it waits for more: the
/// hand-overs that arrive meanwhile are taken in one wake-up instead of one each. A hand-over
/// that wakes a waiting engine costs its source a futex wake and the engine a switch; at 160 k
/// sFlow samples/s (a hand-over every 6 ms) the engine switches in 83 times a second instead of
/// 166, and fnm's CPU per sample fell 5–10 % (docs/performance.md). Records wait at most this
/// much longer; the tick drains the channel first, so they still count in their slot. Commands
/// (host queries, reloads) wait at most the rest of a gathering.
pub const GATHER_FOR: Duration = Duration::from_millis(20);

/// A source that buffers and can hand over what it holds on request (before each tick).
pub trait Flush: Send + Sync {
    /// Hands over everything buffered for the closing slot, waiting at most `timeout` for the
    /// source to confirm.
    fn flush(&self, timeout: Duration);

    /// The tick that followed is published. Default: nothing. (The XDP poller mirrors the
    /// engine's watched hosts into the kernel here, so sampling starts at once.)
    fn ticked(&self, _snapshot: &Arc<snapshot::Snapshot>) {}
}

impl Flush for crate::capture::flush_gate::FlushGate {
    fn flush(&self, timeout: Duration) {
        self.request(timeout);
    }
}

/// Something that reads the engine's state after each tick, on the engine thread (an
/// exporter). It must never block: it hands its work over a bounded queue and counts what did
/// not fit.
pub trait TickObserver: Send {
    /// The tick that `view` describes was published.
    fn ticked(&mut self, view: &TickView<'_>);
}

/// What a [`TickObserver`] sees of a tick.
pub struct TickView<'a> {
    /// The engine's state after the tick.
    pub core: &'a EngineCore,
    /// The snapshot published for it.
    pub snapshot: &'a snapshot::Snapshot,
    /// The decisions it made.
    pub decisions: &'a [Decision],
    /// When it closed its slot, ms since the UNIX epoch.
    pub unix_ms: u64,
    /// Length of the slot it closed, ms.
    pub slot_ms: u64,
}

/// A question for the engine, answered between ticks.
#[derive(Debug)]
pub enum EngineCommand {
    /// One local host (`None`: not inside `networks`).
    Host(IpAddr, tokio::sync::oneshot::Sender<Option<HostView>>),
    /// The busiest hosts.
    TopHosts {
        /// Direction.
        direction: Direction,
        /// Sort key.
        sort: HostSort,
        /// How many.
        limit: usize,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Vec<HostView>>,
    },
    /// Take a reloaded configuration (see [`core::EngineCore::reload`]); answered once it is
    /// in force, before the next tick.
    Reload(Box<crate::config::Config>, tokio::sync::oneshot::Sender<()>),
}

/// Counters of the engine loop, for `/metrics`.
#[derive(Debug)]
pub struct EngineStats {
    /// Time from a tick's flush request to its published snapshot (`fnm_poll_duration_seconds`).
    pub poll_duration: Histogram,
    /// Ticks that took longer than the poll interval.
    pub overruns: AtomicU64,
    /// Decisions the mitigator could not take (its queue was full).
    pub decisions_dropped: AtomicU64,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            poll_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            overruns: AtomicU64::new(0),
            decisions_dropped: AtomicU64::new(0),
        }
    }
}

/// A source to flush before each tick, with how long to wait for it.
pub struct Flusher {
    /// Name, for the overrun warning.
    pub name: &'static str,
    /// The source.
    pub source: Arc<dyn Flush>,
    /// Longest wait.
    pub timeout: Duration,
}

/// What the engine thread is started with.
pub struct EngineParts {
    /// The state it owns.
    pub core: EngineCore,
    /// Receiving side of the sources' channel.
    pub input: InputReceiver,
    /// Sources to flush before each tick.
    pub flushers: Vec<Flusher>,
    /// Readers of each tick (exporters).
    pub observers: Vec<Box<dyn TickObserver>>,
    /// Where decisions go.
    pub decisions: tokio::sync::mpsc::Sender<Decision>,
    /// How often to tick.
    pub interval: Duration,
}

/// What the views hold of the engine: its snapshot and its command queue.
#[derive(Clone)]
pub struct EngineClient {
    commands: crossbeam_channel::Sender<EngineCommand>,
    /// The latest snapshot.
    pub snapshot: SharedSnapshot,
    /// Loop counters.
    pub stats: Arc<EngineStats>,
}

impl EngineClient {
    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<snapshot::Snapshot> {
        self.snapshot.load_full()
    }

    /// Sends a command; false when the engine is gone or its queue is full.
    pub fn command(&self, c: EngineCommand) -> bool {
        self.commands.try_send(c).is_ok()
    }
}

/// The running engine thread, as the rest of the agent holds it.
pub struct EngineHandle {
    commands: crossbeam_channel::Sender<EngineCommand>,
    stop: crossbeam_channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The latest snapshot.
    pub snapshot: SharedSnapshot,
    /// Loop counters.
    pub stats: Arc<EngineStats>,
}

impl EngineHandle {
    /// Starts the engine thread.
    pub fn spawn(parts: EngineParts) -> std::io::Result<Self> {
        Self::spawn_with(parts, snapshot::shared())
    }

    /// Starts the engine thread publishing to `snapshot` (which sources may already hold).
    pub fn spawn_with(parts: EngineParts, snapshot: SharedSnapshot) -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(256);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let stats = Arc::new(EngineStats::default());
        let (snap, st) = (snapshot.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("fnm-engine".into())
            .spawn(move || run(parts, cmd_rx, stop_rx, snap, st))?;
        Ok(Self {
            commands: cmd_tx,
            stop: stop_tx,
            thread: Some(thread),
            snapshot,
            stats,
        })
    }

    /// A handle for the views.
    pub fn client(&self) -> EngineClient {
        EngineClient {
            commands: self.commands.clone(),
            snapshot: self.snapshot.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Stops the thread after its current step and waits for it.
    pub fn stop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            // A gathering engine sees the stop at once.
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Milliseconds since the UNIX epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn run(
    parts: EngineParts,
    commands: crossbeam_channel::Receiver<EngineCommand>,
    stop: crossbeam_channel::Receiver<()>,
    snapshot: SharedSnapshot,
    stats: Arc<EngineStats>,
) {
    let EngineParts {
        mut core,
        input,
        flushers,
        observers,
        decisions,
        interval,
    } = parts;
    let started = Instant::now();
    let mut around = Around {
        flushers,
        observers,
    };
    // The views see the saved attacks from the start, not an empty list until the first tick.
    snapshot.store(Arc::new(core.snapshot(0)));
    let mut next = started + interval;
    let never = crossbeam_channel::never();
    let mut input_open = true;
    loop {
        let now = Instant::now();
        if now >= next {
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tick(
                    &mut core,
                    &input,
                    &mut around,
                    &decisions,
                    &snapshot,
                    &stats,
                    Clock { started, interval },
                )
            }));
            if step.is_err() {
                tracing::error!("engine tick panicked; the engine goes on");
            }
            let took = now.elapsed();
            stats.poll_duration.observe(took.as_secs_f64());
            if took > interval {
                stats.overruns.fetch_add(1, Relaxed);
                tracing::warn!(
                    "poll took {} ms, longer than poll_interval ({} ms); rates use the measured time",
                    took.as_millis(),
                    interval.as_millis()
                );
            }
            next += interval;
            let now = Instant::now();
            if next < now {
                next = now + interval;
            }
            continue;
        }
        let input_rx = if input_open { &*input } else { &never };
        crossbeam_channel::select! {
            recv(input_rx) -> batch => match batch {
                Ok(q) => {
                    ingest(&mut core, q);
                    if input.is_empty() {
                        // Drained: let the next hand-overs gather (see `GATHER_FOR`).
                        let until_tick = next.saturating_duration_since(Instant::now());
                        input.gather(GATHER_FOR.min(until_tick));
                    }
                }
                Err(_) => input_open = false,
            },
            recv(commands) -> c => match c {
                Ok(c) => answer(&mut core, c),
                Err(_) => return,
            },
            recv(stop) -> _ => return,
            default(next.saturating_duration_since(now)) => {}
        }
    }
}

/// Who a tick involves besides the engine: sources flushed before it, observers after.
struct Around {
    flushers: Vec<Flusher>,
    observers: Vec<Box<dyn TickObserver>>,
}

/// The engine loop's start and tick interval.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
    interval: Duration,
}

fn tick(
    core: &mut EngineCore,
    input: &crossbeam_channel::Receiver<Queued>,
    around: &mut Around,
    decisions: &tokio::sync::mpsc::Sender<Decision>,
    snapshot: &SharedSnapshot,
    stats: &EngineStats,
    clock: Clock,
) {
    let Clock { started, interval } = clock;
    // The slot closes when its hand-over is asked for: the XDP poller reads the kernel right
    // after the request, and capture hands over what it held up to it. Timed after the flush
    // instead, a poll slower than the one before would shorten the measured slot while the
    // counters still covered the whole interval (a steady host was read 9.5 % high beside a
    // random-destination flood that made polls take 50 to 300 ms).
    let now_ms = started.elapsed().as_millis() as u64;
    for f in &around.flushers {
        let t = Instant::now();
        f.source.flush(f.timeout);
        if t.elapsed() >= f.timeout {
            tracing::warn!(
                "{} did not hand over its slot within {} ms",
                f.name,
                f.timeout.as_millis()
            );
        }
    }
    // What is queued now belongs to the closing slot; later batches wait for the next one.
    // A backlog (the engine behind a flood) is drained for at most a quarter of the interval,
    // the rest between ticks, so ticks stay on time and detection with them.
    let draining = Instant::now();
    let drain_for = interval / 4;
    for _ in 0..input.len() {
        if draining.elapsed() >= drain_for {
            break;
        }
        match input.try_recv() {
            Ok(q) => ingest(core, q),
            Err(_) => break,
        }
    }
    let slot_ms = now_ms.saturating_sub(core.last_tick_ms());
    let unix_now = unix_ms();
    let made = core.tick(now_ms, unix_now);
    // Published before the decisions go out: whoever hears of an attack finds it in the views.
    let published = Arc::new(core.snapshot(now_ms));
    snapshot.store(published.clone());
    // The mitigator first: an observer (the export) must never delay a mitigation.
    let kept = if around.observers.is_empty() {
        Vec::new()
    } else {
        made.clone()
    };
    for d in made {
        if decisions.try_send(d).is_err() {
            stats.decisions_dropped.fetch_add(1, Relaxed);
            tracing::error!("the mitigator is not taking decisions (queue full or gone)");
        }
    }
    for o in around.observers.iter_mut() {
        o.ticked(&TickView {
            core,
            snapshot: &published,
            decisions: &kept,
            unix_ms: unix_now,
            slot_ms,
        });
    }
    for f in &around.flushers {
        f.source.ticked(&published);
    }
}

/// Accounts a queued batch, then gives its records back to its source's queue bound.
fn ingest(core: &mut EngineCore, q: Queued) {
    let Queued { batch, release } = q;
    core.ingest(batch);
    drop(release);
}

fn answer(core: &mut EngineCore, c: EngineCommand) {
    match c {
        EngineCommand::Host(ip, reply) => {
            let _ = reply.send(core.host(ip));
        }
        EngineCommand::TopHosts {
            direction,
            sort,
            limit,
            reply,
        } => {
            let _ = reply.send(core.top_hosts(direction, sort, limit));
        }
        EngineCommand::Reload(config, reply) => {
            core.reload(&config);
            let _ = reply.send(());
        }
    }
}
