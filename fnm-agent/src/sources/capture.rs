//! Userspace capture (libpcap, netmap, PF_RING) as a source: a thread runs the backend,
//! coalesces packets into records per 5-tuple and hands them to the engine once per poll slot
//! (when the engine's flush request arrives), or at most every two poll intervals when nobody
//! asks.

use super::Source;
use crate::{
    capture::{self, batch, flush_gate::FlushGate, CaptureHealth, StopFlag},
    config::Config,
    engine::input::EngineInput,
    metrics::MetricsSource,
    traffic::{Source as TrafficSource, TrafficRecord},
};
use std::{sync::Arc, time::Duration};

/// Longest a tick waits for the capture thread to hand over its records.
pub const CAPTURE_FLUSH_TIMEOUT: Duration = Duration::from_millis(50);

/// The running capture thread.
pub struct CaptureSource {
    health: Arc<CaptureHealth>,
    stop: StopFlag,
    gate: Arc<FlushGate>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CaptureSource {
    /// Opens the configured backend and starts its thread.
    pub fn start(config: &Config, input: EngineInput) -> anyhow::Result<Self> {
        let mut backend = capture::open(&config.capture)?;
        tracing::info!(
            "capturing with {} on {}",
            backend.name(),
            config.capture.interfaces.join(", ")
        );
        let gate = Arc::new(FlushGate::new()?);
        let stop = StopFlag::new();
        let hold = (config.poll_interval * 2).max(batch::AGENT_MIN_FLUSH_INTERVAL);
        let health = Arc::new(CaptureHealth::default());
        let (g, s, h) = (gate.clone(), stop.clone(), health.clone());
        let thread = std::thread::Builder::new()
            .name("fnm-capture".into())
            .spawn(move || {
                let mut sink = batch::RecordBatcher::new(
                    batch::AGENT_BATCH_CAPACITY,
                    |records: &[TrafficRecord]| {
                        input.send_records(TrafficSource::Pcap, records);
                    },
                )
                .with_min_flush_interval(hold)
                .with_flush_gate(g.clone())
                .with_health(h);
                match backend.run(&mut sink, &s) {
                    Ok(stats) => tracing::info!(
                        "capture stopped: {} frames, {} malformed, {} dropped by the kernel",
                        stats.parse.frames,
                        stats.parse.malformed,
                        stats.dropped
                    ),
                    Err(e) => tracing::error!("capture stopped: {e}"),
                }
                g.detach();
                sink.flush_now();
            })?;
        Ok(Self {
            health,
            stop,
            gate,
            thread: Some(thread),
        })
    }

    /// The backend's live counters, as metric families.
    pub fn metrics(&self) -> Arc<dyn MetricsSource> {
        Arc::new(CaptureMetrics(self.health.clone()))
    }

    /// What the engine asks for the slot's records.
    pub fn flush_handle(&self) -> Arc<FlushGate> {
        self.gate.clone()
    }
}

impl Source for CaptureSource {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn stop(mut self: Box<Self>) {
        self.stop.stop();
        self.gate.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `fnm_capture_*` families from the capture thread's live counters.
struct CaptureMetrics(Arc<CaptureHealth>);

impl MetricsSource for CaptureMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::counter::Counter;
        use std::sync::atomic::Ordering::Relaxed;
        let h = &self.0;
        for (name, help, value) in [
            (
                "fnm_capture_frames",
                "Frames the capture backend read",
                &h.frames,
            ),
            (
                "fnm_capture_not_ip_frames",
                "Captured frames that were not IP",
                &h.not_ip,
            ),
            (
                "fnm_capture_malformed_frames",
                "Captured frames with truncated or inconsistent headers",
                &h.malformed,
            ),
            (
                "fnm_capture_kernel_dropped_packets",
                "Packets the kernel or driver dropped before the capture backend read them",
                &h.kernel_dropped,
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(value.load(Relaxed));
            registry.register(name, help, c);
        }
    }
}
