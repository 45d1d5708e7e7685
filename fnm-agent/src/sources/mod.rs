//! Sources: everything that observes traffic and hands it to the engine.
//!
//! One module per input: [`xdp`] (the XDP map poller), [`flow`] (the sFlow and NetFlow/IPFIX
//! collectors) and [`capture`] (libpcap, netmap, PF_RING). Each hands batches to the engine
//! through an [`EngineInput`] (never waiting for it; what a full channel drops is counted per
//! source), and [`from_config`] starts what the configuration asks for. A source that buffers
//! what belongs to a poll slot also gives the engine a [`Flush`](crate::engine::Flush) to ask for it before each
//! tick.

pub mod capture;
#[cfg(target_os = "linux")]
pub mod fleet;
pub mod flow;
#[cfg(target_os = "linux")]
pub mod xdp;

use crate::{
    config::Config,
    dataplane::DataPlaneHandle,
    engine::{input::EngineInput, Flusher},
    metrics::MetricsSource,
};
use std::sync::Arc;

/// A running source.
pub trait Source: Send {
    /// Its name (`xdp`, `flow collectors`, `pcap`...).
    fn name(&self) -> &'static str;
    /// Stops it and waits for its threads.
    fn stop(self: Box<Self>);
}

/// The sources of a configuration, started.
pub struct Sources {
    /// Each source.
    pub running: Vec<Box<dyn Source>>,
    /// What the engine asks for a hand-over before each tick.
    pub flushers: Vec<Flusher>,
    /// Metric families the sources contribute (the flow collectors' are theirs:
    /// [`flow::FlowSource::metrics`]).
    pub metrics: Vec<Arc<dyn MetricsSource>>,
    /// The flow collectors (started last; apart, so a reload can restart them alone).
    pub flows: Option<flow::FlowSource>,
}

impl Sources {
    /// Stops every source, in reverse start order.
    pub fn stop(self) {
        if let Some(flows) = self.flows {
            Box::new(flows).stop();
            tracing::debug!("flow collectors stopped");
        }
        for s in self.running.into_iter().rev() {
            let name = s.name();
            s.stop();
            tracing::debug!("{name} stopped");
        }
    }
}

/// Starts every source `config` asks for, handing batches to `input`. `dataplane` is the
/// loaded XDP program (absent without XDP).
pub fn from_config(
    config: &Config,
    input: &EngineInput,
    dataplane: &DataPlaneHandle,
) -> anyhow::Result<Sources> {
    let mut sources = Sources {
        running: Vec::new(),
        flushers: Vec::new(),
        metrics: Vec::new(),
        flows: None,
    };
    #[cfg(target_os = "linux")]
    if dataplane.is_present() {
        let poller = xdp::XdpPoller::start(config, dataplane.clone(), input.clone())?;
        sources.flushers.push(Flusher {
            name: "the XDP poller",
            source: poller.flush_handle(),
            // The poll is the XDP clock: wait for it (a slow one is warned about and its
            // rates use the measured time).
            timeout: config.poll_interval * 2,
        });
        sources.metrics.push(poller.metrics());
        sources.running.push(Box::new(poller));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = dataplane;
    if config.capture.backend != crate::capture::BackendKind::Xdp {
        let capture = capture::CaptureSource::start(config, input.clone())?;
        sources.flushers.push(Flusher {
            name: "the capture thread",
            source: capture.flush_handle(),
            timeout: capture::CAPTURE_FLUSH_TIMEOUT,
        });
        sources.metrics.push(capture.metrics());
        sources.running.push(Box::new(capture));
    }
    let collectors = flow::FlowSource::start(config, input.clone())?;
    sources.flows = Some(collectors);
    Ok(sources)
}

/// Starts the aggregator's Kafka consumer when `[cluster] role = "aggregator"`; returns the
/// site shares the engine names in attack records.
pub fn start_fleet(
    config: &Config,
    input: &EngineInput,
    sources: &mut Sources,
) -> anyhow::Result<Option<Arc<crate::cluster::Sites>>> {
    if config.cluster.role != crate::cluster::Role::Aggregator {
        return Ok(None);
    }
    #[cfg(target_os = "linux")]
    {
        let sites = Arc::new(crate::cluster::Sites::new(
            config.rate_window,
            config.cluster.max_site_hosts,
        ));
        let fleet = fleet::FleetSource::start(config, input.clone(), sites.clone())?;
        sources.metrics.push(fleet.metrics());
        sources.running.push(Box::new(fleet));
        Ok(Some(sites))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (input, sources);
        anyhow::bail!("[cluster] role = \"aggregator\" is built on Linux only (Kafka client)")
    }
}
