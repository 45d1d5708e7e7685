//! The `[export]` and `[kafka]` sections.

use crate::config::humantime_serde_compat;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

/// `[export]`: what an agent publishes to the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Publish to the brokers of `[kafka]`. Default: false.
    #[serde(default)]
    pub kafka: bool,
    /// This agent's name in every message (`agent`), e.g. its site. Default: the host name.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// A host's counters are published for a poll slot when it had at least this many
    /// packets per second in it, either direction on its own. Default: 0 (every host with
    /// traffic in the slot).
    #[serde(default)]
    pub host_floor_pps: f64,
    /// Most host records per poll slot (the busiest first); the rest are counted as dropped
    /// (`host_limit`). Default: 50 000.
    #[serde(default = "default_max_hosts")]
    pub max_hosts_per_slot: usize,
    /// How often an ongoing attack is published again with its current and peak rates.
    /// Default: "5s".
    #[serde(default = "default_attack_update", with = "humantime_serde_compat")]
    pub attack_update_interval: Duration,
    /// Publish one in this many flow records (sFlow samples, NetFlow/IPFIX records, captured
    /// packets) as they were decoded (`<prefix>.flows`, ClickHouse `flows`), for "who talked
    /// to this host" questions. 0: none. Default: 0.
    #[serde(default)]
    pub flow_sample_rate: u32,
    /// Most sampled flow records per poll slot; the rest are counted as dropped
    /// (`flow_limit`). Default: 10 000.
    #[serde(default = "default_max_flows")]
    pub max_flows_per_slot: usize,
    /// `[export.clickhouse]`: history in ClickHouse over its HTTP interface. Default: off.
    #[serde(default)]
    pub clickhouse: Option<super::clickhouse::ClickHouseConfig>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            kafka: false,
            agent_id: None,
            host_floor_pps: 0.0,
            max_hosts_per_slot: default_max_hosts(),
            attack_update_interval: default_attack_update(),
            flow_sample_rate: 0,
            max_flows_per_slot: default_max_flows(),
            clickhouse: None,
        }
    }
}

impl ExportConfig {
    /// `agent_id`, or the host name, or "fnm-agent".
    pub fn agent_id(&self) -> String {
        if let Some(id) = &self.agent_id {
            return id.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "fnm-agent".into())
    }

    /// Errors a config check reports.
    pub fn validate(&self, kafka: &KafkaConfig) -> Result<(), String> {
        if self.kafka && kafka.brokers.is_empty() {
            return Err("[export] kafka = true needs [kafka] brokers".into());
        }
        if !self.host_floor_pps.is_finite() || self.host_floor_pps < 0.0 {
            return Err("[export] host_floor_pps must be a number >= 0".into());
        }
        if self.attack_update_interval.is_zero() {
            return Err("[export] attack_update_interval must be above zero".into());
        }
        if let Some(ch) = &self.clickhouse {
            ch.validate()?;
        }
        Ok(())
    }
}

fn default_max_hosts() -> usize {
    50_000
}

fn default_max_flows() -> usize {
    10_000
}

fn default_attack_update() -> Duration {
    Duration::from_secs(5)
}

/// `[kafka]`: the brokers an agent publishes to (and, later, an aggregator reads from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`. Default: none.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// Topics are `<topic_prefix>.hosts`, `.attacks`, `.mitigations` and `.flows`.
    /// Default: "fnm".
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// A message not delivered within this time is dropped (counted as `delivery`).
    /// Default: "30s".
    #[serde(default = "default_message_timeout", with = "humantime_serde_compat")]
    pub message_timeout: Duration,
    /// Most messages librdkafka holds while brokers are slow or away; beyond it new messages
    /// are dropped (counted as `queue_full`). Default: 100 000.
    #[serde(default = "default_queue_max")]
    pub queue_max_messages: usize,
    /// Further librdkafka properties, e.g. `"security.protocol" = "ssl"`. Default: none.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            topic_prefix: default_prefix(),
            message_timeout: default_message_timeout(),
            queue_max_messages: default_queue_max(),
            options: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The topic of `kind` (`hosts`, `attacks`, `mitigations`, `flows`).
    pub fn topic(&self, kind: &str) -> String {
        format!("{}.{kind}", self.topic_prefix)
    }
}

fn default_prefix() -> String {
    "fnm".into()
}

fn default_message_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_queue_max() -> usize {
    100_000
}
