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
                let thread = CaptureThread {
                    hold,
                    gate: g,
                    health: h,
                    sampling_rate,
                };
                let outcome = thread.run(backend.as_mut(), &s, |records| {
                    input.send_records(TrafficSource::Pcap, records);
                });
                match outcome {
                    Ok(stats) => tracing::info!(
                        "capture thread {i} stopped: {} frames, {} malformed, {} dropped by the kernel",
                        stats.parse.frames,
                        stats.parse.malformed,
                        stats.dropped
                    ),
                    Err(e) => tracing::error!("capture thread {i} stopped: {e}"),
                }
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

/// What one capture thread runs, whichever backend it was given (libpcap, netmap, PF_RING):
/// the backend delivers its frames to one [`batch::RecordBatcher`], which coalesces them,
/// applies `capture.sampling_rate` and hands the records on. So every backend's packets are
/// multiplied the same way, in this one place.
struct CaptureThread {
    hold: Duration,
    gate: Arc<FlushGate>,
    health: Arc<CaptureHealth>,
    sampling_rate: u32,
}

impl CaptureThread {
    /// Runs `backend` until `stop` or a fatal error; hands the records to `consume`, the last
    /// ones when the backend returns.
    fn run(
        self,
        backend: &mut dyn capture::CaptureBackend,
        stop: &StopFlag,
        consume: impl FnMut(&[TrafficRecord]),
    ) -> Result<capture::CaptureStats, capture::CaptureError> {
        let mut sink = batch::RecordBatcher::new(batch::AGENT_BATCH_CAPACITY, consume)
            .with_min_flush_interval(self.hold)
            .with_flush_gate(self.gate.clone())
            .with_health(self.health)
            .with_sampling_rate(self.sampling_rate);
        let outcome = backend.run(&mut sink, stop);
        self.gate.detach();
        sink.flush_now();
        outcome
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{deliver, parse::LinkType, CaptureBackend, CaptureStats, PacketSink};

    /// A backend that hands its frames over as netmap and PF_RING do: through
    /// [`capture::deliver`] into the sink, then `flush` and `progress`.
    struct RingLike {
        frames: Vec<Vec<u8>>,
    }

    impl CaptureBackend for RingLike {
        fn name(&self) -> &'static str {
            "ring-like"
        }
        fn run(
            &mut self,
            sink: &mut dyn PacketSink,
            _stop: &StopFlag,
        ) -> Result<CaptureStats, capture::CaptureError> {
            let mut stats = CaptureStats::default();
            for f in &self.frames {
                deliver(
                    Some(LinkType::Ethernet),
                    Duration::ZERO,
                    f,
                    sink,
                    &mut stats.parse,
                );
            }
            sink.flush();
            sink.progress(&stats);
            Ok(stats)
        }
    }

    /// An Ethernet frame: IPv4 (`v6` false) or IPv6, UDP or a TCP SYN, from port `sport`.
    fn frame(v6: bool, tcp_syn: bool, sport: u16) -> Vec<u8> {
        let l4: Vec<u8> = if tcp_syn {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&443u16.to_be_bytes());
            t[12] = 0x50;
            t[13] = 0x02;
            t
        } else {
            let mut u = vec![0u8; 8 + 100];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&53u16.to_be_bytes());
            u[4..6].copy_from_slice(&108u16.to_be_bytes());
            u
        };
        let proto = if tcp_syn { 6 } else { 17 };
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if v6 {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(
                &"2001:db8::7"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            f.extend_from_slice(
                &"2001:db8:1::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
        } else {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + l4.len()) as u16;
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
            f.extend_from_slice(&[192, 0, 2, 7, 10, 0, 0, 1]);
        }
        f.extend_from_slice(&l4);
        f
    }

    #[test]
    fn the_sampling_rate_applies_to_whatever_backend_the_thread_runs() {
        let frames = vec![
            frame(false, false, 1000),
            frame(false, false, 1000),
            frame(false, true, 2000),
            frame(true, false, 3000),
            frame(true, true, 4000),
        ];
        let thread = CaptureThread {
            hold: Duration::from_secs(60),
            gate: Arc::new(FlushGate::new().unwrap()),
            health: Arc::new(CaptureHealth::default()),
            sampling_rate: 25,
        };
        let mut seen: Vec<TrafficRecord> = Vec::new();
        let stats = thread
            .run(
                &mut RingLike { frames },
                &StopFlag::new(),
                |rs: &[TrafficRecord]| seen.extend_from_slice(rs),
            )
            .unwrap();
        assert_eq!(stats.parse.frames, 5);
        let by_port = |p: u16| seen.iter().find(|r| r.src_port == p).expect("record");
        assert_eq!(seen.len(), 4, "one record per tuple: {seen:?}");
        let udp4 = by_port(1000);
        assert_eq!((udp4.packets, udp4.bytes), (2 * 25, 2 * 128 * 25));
        let syn4 = by_port(2000);
        assert_eq!((syn4.packets, syn4.tcp_syn_packets), (25, 25));
        let udp6 = by_port(3000);
        assert_eq!((udp6.packets, udp6.bytes), (25, 148 * 25));
        let syn6 = by_port(4000);
        assert_eq!((syn6.packets, syn6.tcp_syn_packets), (25, 25));
    }
}
