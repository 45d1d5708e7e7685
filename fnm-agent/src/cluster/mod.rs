//! Network-wide detection: the `[cluster]` section and the site shares an aggregator keeps.
//!
//! An agent (`role = "agent"`, the default) counts its own traffic and, with `[export] kafka`,
//! publishes each host's counters per poll slot. An aggregator (`role = "aggregator"`) reads
//! those records from `<prefix>.hosts` as a member of a Kafka consumer group
//! (`group_id`: partitions, hence hosts, spread over the group's aggregators and move when one
//! leaves) and runs the same engine on their sum: the thresholds, hostgroups and actions of
//! its own configuration, so an attack split over several routers is seen whole.

use crate::{accounting::Direction, config::humantime_serde_compat, detection::attack::SiteShare};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// What this process is in the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Counts traffic of its own sources.
    #[default]
    Agent,
    /// Detects on the sum of the counters agents publish to Kafka.
    Aggregator,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `agent` (default) or `aggregator`.
    #[serde(default)]
    pub role: Role,
    /// The aggregators' Kafka consumer group. Default: "fnm-aggregators".
    #[serde(default = "default_group")]
    pub group_id: String,
    /// A record whose slot ended longer ago than this is dropped (`stale`): a backlog after
    /// an outage is history, not current traffic. Default: "5s".
    #[serde(default = "default_max_lag", with = "humantime_serde_compat")]
    pub max_lag: Duration,
    /// Most host-directions whose per-agent shares are kept (for attack records). Default:
    /// 100 000.
    #[serde(default = "default_max_site_hosts")]
    pub max_site_hosts: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            role: Role::Agent,
            group_id: default_group(),
            max_lag: default_max_lag(),
            max_site_hosts: default_max_site_hosts(),
        }
    }
}

impl ClusterConfig {
    /// Errors a config check reports.
    pub fn validate(
        &self,
        kafka: &crate::export::KafkaConfig,
        export: &crate::export::ExportConfig,
    ) -> Result<(), String> {
        if self.role == Role::Aggregator && kafka.brokers.is_empty() {
            return Err("[cluster] role = \"aggregator\" needs [kafka] brokers".into());
        }
        if self.role == Role::Aggregator && export.kafka {
            return Err(
                "an aggregator must not export (it would read its own host records back): \
                 set [export] kafka = false"
                    .into(),
            );
        }
        if self.group_id.is_empty() {
            return Err("[cluster] group_id must not be empty".into());
        }
        Ok(())
    }
}

fn default_group() -> String {
    "fnm-aggregators".into()
}

fn default_max_lag() -> Duration {
    Duration::from_secs(5)
}

fn default_max_site_hosts() -> usize {
    100_000
}

/// Per host and direction, the packets each agent reported in the current and the previous
/// window (`window`, the rate window): shares over the last one to two windows.
#[derive(Debug)]
pub struct Sites {
    window_ms: u64,
    max_hosts: usize,
    inner: Mutex<HashMap<(IpAddr, Direction), HostSites>>,
}

#[derive(Debug, Default)]
struct HostSites {
    epoch: u64,
    /// (agent, packets this epoch, packets the epoch before).
    agents: Vec<(Arc<str>, u64, u64)>,
}

impl Sites {
    /// Shares over windows of `window`, for at most `max_hosts` host-directions.
    pub fn new(window: Duration, max_hosts: usize) -> Self {
        Self {
            window_ms: (window.as_millis() as u64).max(1),
            max_hosts,
            inner: Mutex::new(HashMap::new()),
        }
    }

    /// Counts `packets` reported by `agent` at `now_ms` (UNIX ms).
    pub fn add(&self, host: IpAddr, dir: Direction, agent: &Arc<str>, packets: u64, now_ms: u64) {
        let epoch = now_ms / self.window_ms;
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max_hosts && !map.contains_key(&(host, dir)) {
            return;
        }
        let h = map.entry((host, dir)).or_default();
        if h.epoch != epoch {
            let gap = epoch.saturating_sub(h.epoch);
            for a in &mut h.agents {
                a.2 = if gap == 1 { a.1 } else { 0 };
                a.1 = 0;
            }
            h.epoch = epoch;
        }
        match h.agents.iter_mut().find(|a| *a.0 == **agent) {
            Some(a) => a.1 += packets,
            None => h.agents.push((agent.clone(), packets, 0)),
        }
    }

    /// Forgets host-directions not reported for two windows.
    pub fn prune(&self, now_ms: u64) {
        let epoch = now_ms / self.window_ms;
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, h| epoch.saturating_sub(h.epoch) < 2);
    }
}

impl crate::engine::core::SiteShares for Sites {
    fn shares(&self, host: IpAddr, direction: Direction) -> Vec<SiteShare> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = map.get(&(host, direction)) else {
            return Vec::new();
        };
        let total: u64 = h.agents.iter().map(|a| a.1 + a.2).sum();
        let mut out: Vec<SiteShare> = h
            .agents
            .iter()
            .map(|(agent, now, before)| SiteShare {
                agent: agent.to_string(),
                packets: now + before,
                share: if total == 0 {
                    0.0
                } else {
                    (now + before) as f64 / total as f64
                },
            })
            .filter(|s| s.packets > 0)
            .collect();
        out.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.agent.cmp(&b.agent)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::core::SiteShares;

    #[test]
    fn shares_cover_the_last_windows_and_forget_older_ones() {
        let sites = Sites::new(Duration::from_secs(1), 10);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let h: IpAddr = "10.0.0.1".parse().unwrap();
        sites.add(h, Direction::Incoming, &a, 100, 500);
        sites.add(h, Direction::Incoming, &b, 300, 900);
        sites.add(h, Direction::Incoming, &a, 100, 1_200);
        let s = sites.shares(h, Direction::Incoming);
        assert_eq!(s[0].agent, "b");
        assert_eq!((s[0].packets, s[1].packets), (300, 200));
        assert!((s[0].share - 0.6).abs() < 1e-9);
        // Two windows later only what came since counts.
        sites.add(h, Direction::Incoming, &a, 50, 3_100);
        let s = sites.shares(h, Direction::Incoming);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].agent.as_str(), s[0].packets), ("a", 50));
        assert!(sites.shares(h, Direction::Outgoing).is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let sites = Sites::new(Duration::from_secs(1), 2);
        let a: Arc<str> = "a".into();
        for i in 1..=5u8 {
            sites.add(IpAddr::from([10, 0, 0, i]), Direction::Incoming, &a, 1, 0);
        }
        assert!(sites
            .shares("10.0.0.3".parse().unwrap(), Direction::Incoming)
            .is_empty());
        sites.prune(5_000);
        sites.add(
            "10.0.0.3".parse().unwrap(),
            Direction::Incoming,
            &a,
            1,
            5_000,
        );
        assert_eq!(
            sites
                .shares("10.0.0.3".parse().unwrap(), Direction::Incoming)
                .len(),
            1
        );
    }
}
