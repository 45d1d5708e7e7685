//! Userspace capture (libpcap, netmap, PF_RING) as a source: a thread runs the backend,
//! coalesces packets into records per 5-tuple and hands them to the engine once per poll slot
//! (when the engine's flush request arrives), or at most every two poll intervals when nobody
//! asks.

use super::Source;
use crate::{
    capture::{self, batch, flush_gate::FlushGate, StopFlag},
    config::Config,
    engine::input::EngineInput,
    traffic::{Source as TrafficSource, TrafficRecord},
};
use std::{sync::Arc, time::Duration};

/// Longest a tick waits for the capture thread to hand over its records.
pub const CAPTURE_FLUSH_TIMEOUT: Duration = Duration::from_millis(50);

/// The running capture thread.
pub struct CaptureSource {
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
        let (g, s) = (gate.clone(), stop.clone());
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
                .with_flush_gate(g.clone());
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
            stop,
            gate,
            thread: Some(thread),
        })
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
