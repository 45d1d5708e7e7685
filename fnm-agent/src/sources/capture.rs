//! Userspace capture (libpcap, netmap, PF_RING) as a source: a thread runs the backend,
//! coalesces packets into records per 5-tuple and hands them to the engine once per poll slot
//! (when the engine's flush request arrives), or at most every two poll intervals when nobody
//! asks.

use super::Source;
use crate::{
    capture::{
        self, batch,
        flush_gate::{Asked, FlushGate},
        CaptureHealth, StopFlag,
    },
    config::Config,
    engine::{input::EngineInput, Flush},
    metrics::MetricsSource,
    traffic::{Source as TrafficSource, TrafficRecord},
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Longest time a tick waits for the capture threads to hand over their records.
pub const CAPTURE_FLUSH_TIMEOUT: Duration = Duration::from_millis(50);

/// One capture thread: its flush gate and live counters.
struct Worker {
    health: Arc<CaptureHealth>,
    gate: Arc<FlushGate>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The running capture threads (`capture.threads`, AF_PACKET fanout above 1).
pub struct CaptureSource {
    stop: StopFlag,
    workers: Vec<Worker>,
}

impl CaptureSource {
    /// Opens the configured backend (once per thread) and starts its threads.
    pub fn start(config: &Config, input: EngineInput) -> anyhow::Result<Self> {
        let threads = config.capture.threads.max(1) as usize;
        let fanout = capture::fanout_group(&config.capture);
        // Every socket is open (and in its fanout group) before any thread reads, so no
        // thread starts alone with all the traffic.
        let backends = (0..threads)
            .map(|_| capture::open_in_group(&config.capture, fanout))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(
            "capturing with {} on {}{}{}",
            backends[0].name(),
            config.capture.interfaces.join(", "),
            match fanout {
                Some(group) => format!(", {threads} threads in AF_PACKET fanout group {group}"),
                None => String::new(),
            },
            match config.capture.sampling_rate {
                1 => String::new(),
                n => format!(", each packet counting as {n}"),
            }
        );
        let stop = StopFlag::new();
        let hold = (config.poll_interval * 2).max(batch::AGENT_MIN_FLUSH_INTERVAL);
        let sampling_rate = config.capture.sampling_rate;
        let mut workers = Vec::with_capacity(threads);
        for (i, mut backend) in backends.into_iter().enumerate() {
            let gate = Arc::new(FlushGate::new()?);
            let health = Arc::new(CaptureHealth::default());
            let (g, s, h, input) = (gate.clone(), stop.clone(), health.clone(), input.clone());
            let name = if threads == 1 {
                "fnm-capture".to_string()
            } else {
                format!("fnm-capture-{i}")
            };
            let thread = std::thread::Builder::new().name(name).spawn(move || {
                let mut sink = batch::RecordBatcher::new(
                    batch::AGENT_BATCH_CAPACITY,
                    |records: &[TrafficRecord]| {
                        input.send_records(TrafficSource::Pcap, records);
                    },
                )
                .with_min_flush_interval(hold)
                .with_flush_gate(g.clone())
                .with_health(h)
                .with_sampling_rate(sampling_rate);
                match backend.run(&mut sink, &s) {
                    Ok(stats) => tracing::info!(
                        "capture thread {i} stopped: {} frames, {} malformed, {} dropped by the kernel",
                        stats.parse.frames,
                        stats.parse.malformed,
                        stats.dropped
                    ),
                    Err(e) => tracing::error!("capture thread {i} stopped: {e}"),
                }
                g.detach();
                sink.flush_now();
            })?;
            workers.push(Worker {
                health,
                gate,
                thread: Some(thread),
            });
        }
        Ok(Self { stop, workers })
    }

    /// The backend's live counters, as metric families.
    pub fn metrics(&self) -> Arc<dyn MetricsSource> {
        Arc::new(CaptureMetrics(
            self.workers.iter().map(|w| w.health.clone()).collect(),
        ))
    }

    /// What the engine asks for the slot's records (every thread's).
    pub fn flush_handle(&self) -> Arc<dyn Flush> {
        Arc::new(CaptureGates(
            self.workers.iter().map(|w| w.gate.clone()).collect(),
        ))
    }
}

/// The flush gates of every capture thread: a flush asks them all at once, then waits for
/// each (one shared deadline).
struct CaptureGates(Vec<Arc<FlushGate>>);

impl Flush for CaptureGates {
    fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let asked: Vec<_> = self.0.iter().map(|g| g.ask()).collect();
        for (gate, asked) in self.0.iter().zip(asked) {
            if let Asked::Request(wanted) = asked {
                gate.wait_served(wanted, deadline);
            }
        }
    }
}

impl Source for CaptureSource {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn stop(mut self: Box<Self>) {
        self.stop.stop();
        for w in &self.workers {
            w.gate.wake();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// `fnm_capture_*` families from the capture threads' live counters (summed), and the
/// frames of each thread (`fnm_capture_thread_frames_total{thread}`).
struct CaptureMetrics(Vec<Arc<CaptureHealth>>);

impl MetricsSource for CaptureMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::{counter::Counter, family::Family};
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let sum = |f: fn(&CaptureHealth) -> &AtomicU64| -> u64 {
            self.0.iter().map(|h| f(h).load(Relaxed)).sum()
        };
        for (name, help, value) in [
            (
                "fnm_capture_frames",
                "Frames the capture backend read",
                sum(|h| &h.frames),
            ),
            (
                "fnm_capture_not_ip_frames",
                "Captured frames that were not IP",
                sum(|h| &h.not_ip),
            ),
            (
                "fnm_capture_malformed_frames",
                "Captured frames with truncated or inconsistent headers",
                sum(|h| &h.malformed),
            ),
            (
                "fnm_capture_kernel_dropped_packets",
                "Packets the kernel or driver dropped before the capture backend read them",
                sum(|h| &h.kernel_dropped),
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            registry.register(name, help, c);
        }
        let per_thread = Family::<Vec<(String, String)>, Counter>::default();
        for (i, h) in self.0.iter().enumerate() {
            per_thread
                .get_or_create(&vec![("thread".to_string(), i.to_string())])
                .inc_by(h.frames.load(Relaxed));
        }
        registry.register(
            "fnm_capture_thread_frames",
            "Frames each capture thread read (capture.threads; AF_PACKET fanout spreads them)",
            per_thread,
        );
    }
}
