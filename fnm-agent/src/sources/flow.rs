//! The sFlow and NetFlow/IPFIX collectors as a source: their workers hand each received
//! batch of records to the engine's input.

use super::Source;
use crate::{
    config::Config,
    engine::input::EngineInput,
    flow::collector::{FlowCollectors, TrafficSink},
    metrics::MetricsSource,
};
use std::sync::Arc;

/// The running collectors.
pub struct FlowSource {
    collectors: FlowCollectors,
}

impl FlowSource {
    /// Binds every listen address of `[sflow]` and `[netflow]` and starts the workers.
    pub fn start(config: &Config, input: EngineInput) -> anyhow::Result<Self> {
        let sink: Arc<dyn TrafficSink> = Arc::new(input);
        let collectors = FlowCollectors::start(
            &config.sflow,
            &config.netflow,
            Some(&config.state_dir),
            sink,
        )?;
        Ok(Self { collectors })
    }

    /// The collectors' metric families.
    pub fn metrics(&self) -> Arc<dyn MetricsSource> {
        self.collectors.metrics()
    }
}

impl Source for FlowSource {
    fn name(&self) -> &'static str {
        "flow collectors"
    }

    fn stop(self: Box<Self>) {
        self.collectors.stop();
    }
}
