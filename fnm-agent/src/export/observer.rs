//! Builds the export's messages on the engine thread after each tick, and hands them over
//! without ever waiting (see the module doc of [`crate::export`]).

use super::{
    config::ExportConfig,
    records::{
        AttackEvent, AttackEventKind, FlowRecord, HostRecord, MitigationEvent, MitigationEventKind,
        SCHEMA_VERSION,
    },
    DropReason, ExportEvent, ExportStats,
};
use crate::{
    accounting::Direction,
    engine::{decision::Decision, TickObserver, TickView},
    mitigator::store::Mitigation,
};
use std::{collections::HashMap, sync::Arc};

/// One sink's queue and counters, as the observer feeds it.
pub struct SinkQueue {
    /// The sink thread's bounded queue.
    pub tx: crossbeam_channel::Sender<Arc<ExportEvent>>,
    /// Its counters (drops before the queue are counted here too).
    pub stats: Arc<ExportStats>,
}

/// The engine's observer that feeds the export threads (one per sink, each its own queue,
/// so a slow ClickHouse never holds up Kafka or the reverse).
pub struct HostExport {
    agent: String,
    floor_pps: f64,
    max_hosts: usize,
    update_every_ms: u64,
    sinks: Vec<SinkQueue>,
    /// Ongoing attacks: when each was last published.
    published: HashMap<String, u64>,
    /// Mitigations in force as last seen, by id.
    mitigations: HashMap<String, Mitigation>,
    /// The mitigator's view they were read from (unchanged: nothing to compare).
    view: Option<Arc<crate::mitigator::MitigatorView>>,
}

impl HostExport {
    /// An observer sending to every sink of `sinks`.
    pub fn new(config: &ExportConfig, agent: String, sinks: Vec<SinkQueue>) -> Self {
        Self {
            agent,
            floor_pps: config.host_floor_pps,
            max_hosts: config.max_hosts_per_slot,
            update_every_ms: config.attack_update_interval.as_millis() as u64,
            sinks,
            published: HashMap::new(),
            mitigations: HashMap::new(),
            view: None,
        }
    }

    fn send(&self, event: ExportEvent) {
        let messages = match &event {
            ExportEvent::Hosts(h) => h.len() as u64,
            ExportEvent::Flows(f) => f.len() as u64,
            _ => 1,
        };
        let event = Arc::new(event);
        for sink in &self.sinks {
            if sink.tx.try_send(event.clone()).is_err() {
                sink.stats.dropped(DropReason::EngineQueue, messages);
            }
        }
    }

    fn dropped(&self, reason: DropReason, n: u64) {
        for sink in &self.sinks {
            sink.stats.dropped(reason, n);
        }
    }

    fn flows(&self, t: &TickView<'_>) {
        let Some(sampler) = t.core.flow_sampler() else {
            return;
        };
        let (rate, (picked, over)) = (sampler.rate(), sampler.closed());
        if over > 0 {
            self.dropped(DropReason::FlowLimit, over);
        }
        if picked.is_empty() {
            return;
        }
        let records = picked
            .iter()
            .map(|(source, r)| FlowRecord::new(&self.agent, *source, t.unix_ms, rate, r))
            .collect();
        self.send(ExportEvent::Flows(records));
    }

    /// True when no sink has room: the tick's records would only be built to be dropped.
    fn every_queue_full(&self) -> bool {
        self.sinks.iter().all(|s| s.tx.is_full())
    }

    fn hosts(&self, t: &TickView<'_>) {
        let mut records = Vec::new();
        let full = self.every_queue_full();
        let mut skipped = 0u64;
        for (ip, host) in t.core.accounting().hosts() {
            for dir in Direction::ALL {
                let d = host.dir(dir);
                let Some(c) = d.last_slot().filter(|c| c.packets > 0) else {
                    continue;
                };
                // (A last slot with packets is a slot rate above zero.)
                if d.slot_rates().pps < self.floor_pps {
                    continue;
                }
                if full {
                    skipped += 1;
                    continue;
                }
                records.push(HostRecord::new(
                    &self.agent,
                    *ip,
                    dir,
                    t.unix_ms,
                    t.slot_ms,
                    &c,
                ));
            }
        }
        if full {
            let kept = skipped.min(self.max_hosts as u64);
            self.dropped(DropReason::HostLimit, skipped - kept);
            self.dropped(DropReason::EngineQueue, kept);
            return;
        }
        if records.len() > self.max_hosts {
            records.sort_unstable_by_key(|r| std::cmp::Reverse(r.packets));
            let over = records.len() - self.max_hosts;
            records.truncate(self.max_hosts);
            self.dropped(DropReason::HostLimit, over as u64);
        }
        if !records.is_empty() {
            self.send(ExportEvent::Hosts(records));
        }
    }

    fn attack(&self, event: AttackEventKind, unix_ms: u64, fill: impl FnOnce(&mut AttackEvent)) {
        let mut e = AttackEvent {
            v: SCHEMA_VERSION,
            agent: self.agent.clone(),
            event,
            unix_ms,
            attack_id: String::new(),
            host: std::net::Ipv4Addr::UNSPECIFIED.into(),
            direction: Direction::Incoming,
            current: None,
            peak: None,
            attack: None,
        };
        fill(&mut e);
        self.send(ExportEvent::Attack(Box::new(e)));
    }

    fn attacks(&mut self, t: &TickView<'_>) {
        for d in t.decisions {
            match d {
                Decision::AttackStarted { attack, .. } => {
                    self.published.insert(attack.id.clone(), t.unix_ms);
                    self.attack(AttackEventKind::Started, t.unix_ms, |e| {
                        e.attack_id = attack.id.clone();
                        e.host = attack.host;
                        e.direction = attack.direction;
                        e.attack = Some((**attack).clone());
                    });
                }
                Decision::AttackEnded {
                    attack_id,
                    host,
                    direction,
                } => {
                    self.published.remove(attack_id);
                    self.attack(AttackEventKind::Stopped, t.unix_ms, |e| {
                        e.attack_id = attack_id.clone();
                        e.host = *host;
                        e.direction = *direction;
                    });
                }
            }
        }
        for o in &t.snapshot.ongoing {
            let last = self.published.entry(o.id.clone()).or_insert(t.unix_ms);
            if t.unix_ms.saturating_sub(*last) < self.update_every_ms {
                continue;
            }
            *last = t.unix_ms;
            self.attack(AttackEventKind::Updated, t.unix_ms, |e| {
                e.attack_id = o.id.clone();
                e.host = o.host;
                e.direction = o.direction;
                e.current = Some(o.current);
                e.peak = Some(o.peak);
            });
        }
        // Attacks that ended without a decision this tick (e.g. reloaded away) are forgotten.
        if self.published.len() > t.snapshot.ongoing.len() {
            let ongoing: std::collections::HashSet<&str> =
                t.snapshot.ongoing.iter().map(|o| o.id.as_str()).collect();
            self.published.retain(|id, _| ongoing.contains(id.as_str()));
        }
    }

    fn mitigations(&mut self, t: &TickView<'_>) {
        let Some(view) = t.core.mitigator_view() else {
            return;
        };
        if self.view.as_ref().is_some_and(|v| Arc::ptr_eq(v, &view)) {
            return;
        }
        self.view = Some(view.clone());
        let mut now: HashMap<String, Mitigation> = HashMap::with_capacity(view.active.len());
        for m in &view.active {
            if !self.mitigations.contains_key(&m.id) {
                self.mitigation(MitigationEventKind::Applied, t.unix_ms, m.clone());
            }
            now.insert(m.id.clone(), m.clone());
        }
        for (id, old) in std::mem::take(&mut self.mitigations) {
            if !now.contains_key(&id) {
                let lifted = view.recent.iter().find(|m| m.id == id).cloned();
                self.mitigation(
                    MitigationEventKind::Lifted,
                    t.unix_ms,
                    lifted.unwrap_or(old),
                );
            }
        }
        self.mitigations = now;
    }

    fn mitigation(&self, event: MitigationEventKind, unix_ms: u64, mitigation: Mitigation) {
        self.send(ExportEvent::Mitigation(Box::new(MitigationEvent {
            v: SCHEMA_VERSION,
            agent: self.agent.clone(),
            event,
            unix_ms,
            mitigation,
        })));
    }
}

impl TickObserver for HostExport {
    fn ticked(&mut self, t: &TickView<'_>) {
        self.hosts(t);
        self.flows(t);
        self.attacks(t);
        self.mitigations(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        engine::{book::AttackBook, core::EngineCore, input::Batch},
        traffic::{Source, TrafficRecord},
    };

    fn core() -> EngineCore {
        let cfg: Config = toml::from_str(
            "networks = [\"10.0.0.0/8\"]\npoll_interval = \"250ms\"\n\
             [detection.incoming]\npps = 1000\n[ban]\nstop_after = \"1s\"\n",
        )
        .unwrap();
        EngineCore::new(&cfg, AttackBook::in_memory())
    }

    fn packets(dst: &str, packets: u64) -> Batch {
        Batch::Records {
            source: Source::Sflow,
            exporters: Vec::new(),
            records: vec![TrafficRecord {
                packets,
                bytes: packets * 100,
                ..TrafficRecord::packet("192.0.2.1".parse().unwrap(), dst.parse().unwrap(), 17, 0)
            }],
        }
    }

    /// Ticks `core` at `t` × 250 ms and lets `export` see it; returns what it queued.
    fn tick(
        core: &mut EngineCore,
        export: &mut HostExport,
        rx: &crossbeam_channel::Receiver<Arc<ExportEvent>>,
        t: u64,
    ) -> Vec<ExportEvent> {
        let slot_ms = t * 250 - core.last_tick_ms();
        let made = core.tick(t * 250, 1_700_000_000_000 + t * 250);
        let snap = core.snapshot(t * 250);
        export.ticked(&TickView {
            core,
            snapshot: &snap,
            decisions: &made,
            unix_ms: 1_700_000_000_000 + t * 250,
            slot_ms,
        });
        rx.try_iter()
            .map(|e| Arc::try_unwrap(e).unwrap_or_else(|e| (*e).clone()))
            .collect()
    }

    fn exporter(
        config: &str,
    ) -> (
        HostExport,
        crossbeam_channel::Receiver<Arc<ExportEvent>>,
        Arc<ExportStats>,
    ) {
        let cfg: ExportConfig = toml::from_str(config).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(crate::export::EXPORT_QUEUE);
        let stats = Arc::new(ExportStats::new(crate::export::Sink::Kafka));
        let sinks = vec![SinkQueue {
            tx,
            stats: stats.clone(),
        }];
        (HostExport::new(&cfg, "site-a".into(), sinks), rx, stats)
    }

    #[test]
    fn one_in_n_flow_records_is_exported_with_its_slot_and_rate() {
        let cfg: Config = toml::from_str(
            "networks = [\"10.0.0.0/8\"]\npoll_interval = \"250ms\"\n\
             [export]\nflow_sample_rate = 4\nmax_flows_per_slot = 3\n",
        )
        .unwrap();
        let mut core =
            EngineCore::new(&cfg, AttackBook::in_memory()).with_flow_sampling(&cfg.export);
        let (mut export, rx, stats) = exporter("flow_sample_rate = 4\nmax_flows_per_slot = 3");
        let batch = |n: u16| Batch::Records {
            source: Source::Netflow,
            exporters: Vec::new(),
            records: (0..n)
                .map(|i| TrafficRecord {
                    src_port: i,
                    ..TrafficRecord::packet(
                        "192.0.2.7".parse().unwrap(),
                        "10.0.0.1".parse().unwrap(),
                        6,
                        40,
                    )
                })
                .collect(),
        };
        core.ingest(batch(10)); // picks records 3 and 7
        let events = tick(&mut core, &mut export, &rx, 1);
        let flows: Vec<&FlowRecord> = events
            .iter()
            .filter_map(|e| match e {
                ExportEvent::Flows(f) => Some(f),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(flows.iter().map(|f| f.src_port).collect::<Vec<_>>(), [3, 7]);
        assert!(flows
            .iter()
            .all(|f| f.sample_rate == 4 && f.end_unix_ms == 1_700_000_000_250));
        core.ingest(batch(20)); // 5 picks, 3 exported
        let events = tick(&mut core, &mut export, &rx, 2);
        let n: usize = events
            .iter()
            .map(|e| match e {
                ExportEvent::Flows(f) => f.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(n, 3);
        assert_eq!(stats.dropped_count(DropReason::FlowLimit), 2);
    }

    #[test]
    fn every_slot_of_every_host_is_exported_exactly_once() {
        let mut core = core();
        let (mut export, rx, _) = exporter("kafka = true");
        let mut sum = 0;
        let mut slots_with_traffic = 0;
        for t in 1..=12u64 {
            if t <= 8 {
                core.ingest(packets("10.0.0.1", 100 + t));
                core.ingest(packets("10.0.0.2", 5));
            }
            for e in tick(&mut core, &mut export, &rx, t) {
                if let ExportEvent::Hosts(records) = e {
                    for r in records {
                        assert_eq!(r.agent, "site-a");
                        assert_eq!(r.duration_ms, 250);
                        assert_eq!(r.direction, Direction::Incoming);
                        if r.host.to_string() == "10.0.0.1" {
                            sum += r.packets;
                            slots_with_traffic += 1;
                            assert_eq!(r.udp_packets, r.packets);
                            assert_eq!(r.bytes, r.packets * 100);
                        }
                    }
                }
            }
        }
        assert_eq!(sum, (1..=8).map(|t| 100 + t).sum::<u64>());
        assert_eq!(slots_with_traffic, 8, "one record per slot with traffic");
    }

    #[test]
    fn the_floor_and_the_host_limit_bound_the_records() {
        let mut core = core();
        let (mut export, rx, stats) =
            exporter("kafka = true\nhost_floor_pps = 100\nmax_hosts_per_slot = 2\n");
        for i in 0..5 {
            core.ingest(packets(&format!("10.0.0.{}", i + 1), 50 * (i + 1)));
        }
        core.ingest(packets("10.0.0.9", 10)); // 40 pps: under the floor
        let events = tick(&mut core, &mut export, &rx, 1);
        let [ExportEvent::Hosts(records)] = events.as_slice() else {
            panic!("{events:?}");
        };
        let hosts: Vec<String> = records.iter().map(|r| r.host.to_string()).collect();
        assert_eq!(hosts, ["10.0.0.5", "10.0.0.4"], "the busiest first");
        assert_eq!(stats.dropped_count(DropReason::HostLimit), 3);
    }

    #[test]
    fn attacks_are_started_updated_and_stopped() {
        let mut core = core();
        let (mut export, rx, _) = exporter("kafka = true\nattack_update_interval = \"1s\"\n");
        let mut kinds = Vec::new();
        for t in 1..=30u64 {
            if t <= 12 {
                core.ingest(packets("10.0.0.1", 1000)); // 4000 pps
            }
            for e in tick(&mut core, &mut export, &rx, t) {
                if let ExportEvent::Attack(a) = e {
                    assert_eq!(a.host.to_string(), "10.0.0.1");
                    assert_eq!(a.event == AttackEventKind::Started, a.attack.is_some());
                    assert_eq!(a.event == AttackEventKind::Updated, a.peak.is_some());
                    kinds.push(a.event);
                }
            }
        }
        assert_eq!(kinds.first(), Some(&AttackEventKind::Started), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&AttackEventKind::Stopped), "{kinds:?}");
        let updates = kinds
            .iter()
            .filter(|k| **k == AttackEventKind::Updated)
            .count();
        assert!((1..=4).contains(&updates), "about one a second: {kinds:?}");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let mut core = core();
        let (mut export, _rx, stats) = exporter("kafka = true");
        for t in 1..=(crate::export::EXPORT_QUEUE as u64 + 3) {
            core.ingest(packets("10.0.0.1", 10));
            core.ingest(packets("10.0.0.2", 10));
            let made = core.tick(t * 250, t * 250);
            let snap = core.snapshot(t * 250);
            export.ticked(&TickView {
                core: &core,
                snapshot: &snap,
                decisions: &made,
                unix_ms: t * 250,
                slot_ms: 250,
            });
        }
        // Nobody reads: the first EXPORT_QUEUE batches wait, the next three (2 records each)
        // are dropped.
        assert_eq!(stats.dropped_count(DropReason::EngineQueue), 6);
    }
}
