//! The engine's state and its step functions: ingest a batch, tick, answer a query. Plain
//! synchronous code with no lock and no thread, so the live agent (on its engine thread),
//! `replay` (driven by pcap timestamps) and unit tests run exactly the same detection.

use super::{
    book::AttackBook,
    decision::Decision,
    input::{Batch, XdpBatch},
    snapshot::{OngoingAttack, Snapshot, TotalRow, XdpStatus},
};
use crate::attack_pcap::PcapDumps;
use crate::export::sampler::FlowSampler;
use crate::{
    accounting::{Accounting, DirView, Direction, RateKind},
    config::Config,
    detection::{
        attack::{Attack, AttackType},
        config::Action,
        detector::{Detector, DetectorEvent, Opening},
        thresholds::ThresholdTable,
    },
    mitigator::MitigatorView,
    traffic::{Source, TrafficRecord},
    views::HostView,
};
use arc_swap::ArcSwap;
use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

/// Hosts forgotten by the accounting after this long without traffic.
pub const FORGET_HOSTS_AFTER_MS: u64 = 3_600_000;

/// What a host listing is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostSort {
    /// Packets per second.
    Pps,
    /// IP bytes per second.
    BytesPerSecond,
    /// New flows per second.
    FlowsPerSecond,
    /// Distinct conversations per second (0 unless a threshold uses them).
    ConversationsPerSecond,
    /// Packets since start.
    Packets,
    /// IP bytes since start.
    Bytes,
}

impl HostSort {
    /// Parses the API's `sort` parameter. Bits and bytes per second sort alike: `bits`,
    /// `bits_per_second`, `mbps`, `bytes_per_second` and the old `bps` are one order.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pps" => HostSort::Pps,
            "bps" | "bytes_per_second" | "bits" | "bits_per_second" | "mbps" => {
                HostSort::BytesPerSecond
            }
            "flows" | "flows_per_second" => HostSort::FlowsPerSecond,
            "conversations" | "conversations_per_second" => HostSort::ConversationsPerSecond,
            "packets" => HostSort::Packets,
            "bytes" => HostSort::Bytes,
            _ => return None,
        })
    }

    /// The key of one host direction.
    pub fn key(self, d: &DirView<'_>) -> f64 {
        match self {
            HostSort::Pps => d.rate(RateKind::Pps),
            HostSort::BytesPerSecond => d.rate(RateKind::BytesPerSecond),
            HostSort::FlowsPerSecond => d.rate(RateKind::FlowsPerSecond),
            HostSort::ConversationsPerSecond => d.rate(RateKind::ConversationsPerSecond),
            HostSort::Packets => d.total().packets as f64,
            HostSort::Bytes => d.total().bytes as f64,
        }
    }
}

/// Who reported how much of a host's traffic (an aggregator's fleet source keeps it).
pub trait SiteShares: Send + Sync {
    /// Each agent's part of `host`'s traffic in `direction` over the recent window, largest
    /// first.
    fn shares(
        &self,
        host: IpAddr,
        direction: Direction,
    ) -> Vec<crate::detection::attack::SiteShare>;
}

/// Accounting, detection and the attack book, owned by whoever drives them.
pub struct EngineCore {
    acc: Accounting,
    detector: Detector,
    book: AttackBook,
    ban_actions: Vec<Action>,
    max_source_drops: usize,
    top_hosts: usize,
    xdp: Option<XdpStatus>,
    ticks: u64,
    last_tick_ms: u64,
    forget_after_ms: u64,
    /// The mitigator's published state: its mitigated hosts are never evicted.
    mitigations: Option<Arc<ArcSwap<MitigatorView>>>,
    /// On an aggregator: who reported how much of each host's traffic.
    sites: Option<Arc<dyn SiteShares>>,
    /// Attacks opened since start, by direction and type (`fnm_attacks_total`).
    started: [[u64; AttackType::ALL.len()]; 2],
    /// Attack pcap dumps (off unless [`EngineCore::with_attack_pcap`]).
    pcap: PcapDumps,
    /// Flow records picked for the export (off unless [`EngineCore::with_flow_sampling`]).
    flow_sampler: Option<FlowSampler>,
}

impl EngineCore {
    /// An engine for `config`, recording attacks in `book`.
    pub fn new(config: &Config, book: AttackBook) -> Self {
        let limits = config.accounting.limits();
        let acc = Accounting::new(
            config.networks.iter().copied().collect(),
            limits.max_hosts,
            config.xdp.max_flows as usize,
            config.poll_interval.as_millis() as u64,
        )
        .with_limits(limits)
        .with_rate_window(config.rate_window.as_millis() as u64)
        .with_ignored_sources(config.detection.whitelist_sources.iter().copied().collect());
        Self::with_accounting(config, acc, book)
    }

    /// An engine over a given accounting (replay sizes its own). Attacks the book holds as
    /// ongoing (the agent stopped or died during them) are carried on: they end when their
    /// traffic stays low for `stop_after`, and the same flood does not open a second attack.
    pub fn with_accounting(config: &Config, mut acc: Accounting, book: AttackBook) -> Self {
        set_groups(&mut acc, config);
        acc.rank_by_pps(config.prometheus.top_hosts);
        let mut detector = Detector::new(
            ThresholdTable::new(&config.detection, &config.hostgroup),
            config.whitelist.iter().copied().collect(),
            config.ban.stop_ratio,
            config.ban.stop_after.as_millis() as u64,
        );
        for a in book.ongoing() {
            tracing::info!(
                "attack {} on {} ({}) was ongoing before the restart; carrying on with it",
                a.id,
                a.host,
                a.direction.as_str()
            );
            detector.resume(a.host, a.direction, a.peak_rates);
        }
        Self {
            acc,
            detector,
            book,
            ban_actions: config.ban.actions.clone(),
            max_source_drops: config.ban.max_source_drops,
            top_hosts: config.prometheus.top_hosts,
            xdp: None,
            ticks: 0,
            last_tick_ms: 0,
            forget_after_ms: FORGET_HOSTS_AFTER_MS,
            mitigations: None,
            sites: None,
            started: [[0; AttackType::ALL.len()]; 2],
            pcap: PcapDumps::disabled(),
            flow_sampler: None,
        }
    }

    /// Picks one in `[export] flow_sample_rate` flow records for the export's observer.
    pub fn with_flow_sampling(mut self, export: &crate::export::ExportConfig) -> Self {
        self.flow_sampler = FlowSampler::new(export.flow_sample_rate, export.max_flows_per_slot);
        self
    }

    /// The flow sampler, holding the records picked in the slot the last tick closed
    /// (`None`: no flow sampling).
    pub fn flow_sampler(&self) -> Option<&FlowSampler> {
        self.flow_sampler.as_ref()
    }

    /// Writes each attack's sampled packets to `<state_dir>/attacks/<id>.pcap` as
    /// `[attack_pcap]` says (the live agent; replay and tests write none).
    pub fn with_attack_pcap(mut self, config: &Config) -> Self {
        // The writer is started even when off, so a reload can turn dumps on.
        self.pcap = PcapDumps::new(&config.state_dir, config.attack_pcap.clone());
        // Attacks carried over a restart go on writing the dumps their records link.
        for a in self.book.ongoing() {
            self.pcap
                .resume(&a.id, a.host, a.direction, a.pcap_file.as_deref());
        }
        self
    }

    /// Takes a reloaded configuration between two ticks: networks, whitelists, thresholds,
    /// hostgroups, stop settings, ban actions and `prometheus.top_hosts`. Counters, watched
    /// hosts and ongoing attacks are kept; the next tick checks the new thresholds.
    pub fn reload(&mut self, config: &Config) {
        self.acc
            .set_networks(config.networks.iter().copied().collect());
        self.acc
            .set_ignored_sources(config.detection.whitelist_sources.iter().copied().collect());
        set_groups(&mut self.acc, config);
        self.detector.reconfigure(
            ThresholdTable::new(&config.detection, &config.hostgroup),
            config.whitelist.iter().copied().collect(),
            config.ban.stop_ratio,
            config.ban.stop_after.as_millis() as u64,
        );
        self.ban_actions = config.ban.actions.clone();
        self.max_source_drops = config.ban.max_source_drops;
        self.top_hosts = config.prometheus.top_hosts;
        self.acc.rank_by_pps(self.top_hosts);
        self.pcap.reconfigure(&config.attack_pcap);
    }

    /// Names each agent's part in the attacks it opens (an aggregator's fleet source).
    pub fn with_site_shares(mut self, sites: Arc<dyn SiteShares>) -> Self {
        self.sites = Some(sites);
        self
    }

    /// Reads the mitigator's published state after each tick: the hosts of its active
    /// mitigations are kept in the accounting (never evicted), like watched and attacked
    /// hosts. A read of a snapshot; nothing is asked of the mitigator.
    pub fn with_mitigations(mut self, view: Arc<ArcSwap<MitigatorView>>) -> Self {
        self.mitigations = Some(view);
        self
    }

    /// Forgets hosts idle this long (default [`FORGET_HOSTS_AFTER_MS`]; replay: never).
    pub fn with_forget_after(mut self, ms: u64) -> Self {
        self.forget_after_ms = ms;
        self
    }

    /// Accounts one batch.
    pub fn ingest(&mut self, batch: Batch) {
        match batch {
            Batch::Records {
                source,
                records,
                exporters,
            } => {
                if let Some(s) = &mut self.flow_sampler {
                    s.offer(&records, source);
                }
                self.acc.ingest_owned(records, source, &exporters);
            }
            Batch::Xdp(b) => self.ingest_xdp(*b),
            Batch::Fleet(counters) => {
                for (host, dir, c) in &counters {
                    self.acc.add_fleet_counters(*host, *dir, c);
                }
            }
        }
    }

    /// Accounts one record (replay).
    pub fn ingest_record(&mut self, record: &TrafficRecord, source: Source) {
        self.acc.ingest(record, source);
    }

    fn ingest_xdp(&mut self, b: XdpBatch) {
        self.acc.add_host_counters_batch(&b.deltas);
        for (dir, class, packets, bytes) in b.totals {
            self.acc.set_total(Source::Xdp, dir, class, packets, bytes);
        }
        for (host, dir, record) in b.samples {
            self.acc.add_sample(host, dir, record);
        }
        if b.stats.is_some() {
            self.xdp = b.stats;
        }
    }

    /// Closes the poll slot at `now_ms` (the engine's monotonic clock), checks thresholds and
    /// returns what the mitigator must act on. `unix_ms` stamps the attack records.
    pub fn tick(&mut self, now_ms: u64, unix_ms: u64) -> Vec<Decision> {
        self.ticks += 1;
        self.last_tick_ms = now_ms;
        let detector = &mut self.detector;
        self.acc
            .tick_visiting(now_ms, self.forget_after_ms, |ip, host| {
                detector.visit(ip, host, now_ms)
            });
        if let Some(s) = &mut self.flow_sampler {
            s.close_slot();
        }
        let events = self.detector.finish(&self.acc, now_ms);
        let mut decisions = Vec::new();
        for event in events {
            match event {
                DetectorEvent::Watch(host, dir) => self.acc.watch(host, dir),
                DetectorEvent::Unwatch(host, dir) => {
                    self.acc.unwatch(host, dir);
                }
                DetectorEvent::Started(opening) => {
                    decisions.push(self.open_attack(opening, unix_ms));
                }
                DetectorEvent::Stopped { host, direction } => {
                    let peak = self.detector.peak(host, direction);
                    for attack_id in self.book.end(host, direction, unix_ms, peak) {
                        tracing::info!(
                            "attack {attack_id} on {host} ({}) stopped",
                            direction.as_str()
                        );
                        decisions.push(Decision::AttackEnded {
                            attack_id,
                            host,
                            direction,
                        });
                    }
                }
            }
        }
        self.protect();
        let offset = i128::from(unix_ms) - i128::from(now_ms);
        self.pcap.tick(
            &self.acc,
            self.book.ongoing().map(|a| a.id.as_str()),
            offset,
        );
        self.book.persist();
        decisions
    }

    /// Tells the accounting which hosts must never be evicted: under attack, mitigated (and,
    /// on its own, watched).
    fn protect(&mut self) {
        let mut hosts: Vec<IpAddr> = self.book.ongoing().map(|a| a.host).collect();
        hosts.extend(self.detector.ongoing_hosts());
        if let Some(view) = &self.mitigations {
            hosts.extend(view.load().active.iter().map(|m| m.host));
        }
        self.acc.set_protected(hosts);
    }

    fn open_attack(&mut self, opening: Opening, unix_ms: u64) -> Decision {
        let (host, direction) = (opening.host, opening.direction);
        let id = self.book.new_id(unix_ms);
        let crossing = opening.crossing.clone();
        let report_only = opening.report_only;
        let (mut attack, records) = Attack::open(
            id,
            unix_ms,
            opening,
            self.acc.samples(host, direction),
            self.max_source_drops,
        );
        let offset = i128::from(unix_ms) - i128::from(self.last_tick_ms);
        attack.pcap_file = self
            .pcap
            .open(&attack.id, host, direction, &self.acc, offset);
        let opposite = match direction {
            Direction::Incoming => Direction::Outgoing,
            Direction::Outgoing => Direction::Incoming,
        };
        if let Some(h) = self.acc.host(host) {
            let d = h.dir(opposite);
            attack.opposite_rates = d.rates().max(&d.slot_rates());
        }
        attack.network = self
            .detector
            .table()
            .lookup(host)
            .prefix
            .or_else(|| self.acc.network_of(host));
        if let Some(sites) = &self.sites {
            attack.sites = sites.shares(host, direction);
        }
        let kind = attack.fingerprint.attack_type;
        self.started[direction.index()][kind.index()] += 1;
        tracing::warn!(
            "attack {} on {host} ({}, {kind}): {} {:.0} > {:.0}",
            attack.id,
            direction.as_str(),
            crossing.rate,
            crossing.value,
            crossing.threshold
        );
        let actions = if report_only {
            Vec::new()
        } else {
            self.detector
                .table()
                .lookup(host)
                .actions
                .unwrap_or_else(|| self.ban_actions.clone())
        };
        let remotes: BTreeSet<IpAddr> = records
            .iter()
            .map(|r| match direction {
                Direction::Incoming => r.src,
                Direction::Outgoing => r.dst,
            })
            .collect();
        self.book.insert(attack.clone());
        Decision::AttackStarted {
            attack: Box::new(attack),
            remotes: remotes.into_iter().collect(),
            actions,
        }
    }

    /// When the last tick closed its slot (the engine's monotonic clock, ms).
    pub fn last_tick_ms(&self) -> u64 {
        self.last_tick_ms
    }

    /// The mitigator's latest published state, when the engine was given it.
    pub fn mitigator_view(&self) -> Option<Arc<MitigatorView>> {
        self.mitigations.as_ref().map(|v| v.load_full())
    }

    /// The accounting (read-only).
    pub fn accounting(&self) -> &Accounting {
        &self.acc
    }

    /// The attack book.
    pub fn book(&mut self) -> &mut AttackBook {
        &mut self.book
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// One local host's view; `None` when the address is not inside `networks`.
    pub fn host(&self, ip: IpAddr) -> Option<HostView> {
        match self.acc.host(ip) {
            Some(h) => Some(HostView::new(ip, h)),
            None if self.acc.is_local(ip) => Some(HostView::new(ip, &Default::default())),
            None => None,
        }
    }

    /// The `limit` busiest hosts in `direction` by `sort`.
    pub fn top_hosts(&self, direction: Direction, sort: HostSort, limit: usize) -> Vec<HostView> {
        let top = match sort {
            // Ranked at the tick for the snapshot (`prometheus.top_hosts` of them).
            HostSort::Pps => self.acc.top_by_pps(direction, limit),
            _ => self.acc.top(direction, limit, |d| sort.key(d)),
        };
        top.into_iter()
            .map(|(ip, h)| HostView::new(ip, h))
            .collect()
    }

    /// An immutable picture of the state for the views, taken after a tick.
    pub fn snapshot(&mut self, uptime_ms: u64) -> Snapshot {
        let totals = self
            .acc
            .totals()
            .iter()
            .map(|((source, dir, class), (packets, bytes))| TotalRow {
                source,
                direction: dir,
                class,
                packets,
                bytes,
            })
            .collect();
        let top = Direction::ALL.map(|d| self.top_hosts(d, HostSort::Pps, self.top_hosts));
        let ongoing = self
            .book
            .ongoing()
            .map(|a| OngoingAttack {
                id: a.id.clone(),
                host: a.host,
                direction: a.direction,
                attack_type: a.fingerprint.attack_type,
                peak: self
                    .detector
                    .peak(a.host, a.direction)
                    .map_or(a.peak_rates, |p| p.max(&a.peak_rates)),
                current: self
                    .acc
                    .host(a.host)
                    .map(|h| h.dir(a.direction).rates())
                    .unwrap_or_default(),
            })
            .collect();
        Snapshot {
            uptime_ms,
            ticks: self.ticks,
            hosts_known: self.acc.host_count(),
            hosts_capacity: self.acc.limits().max_hosts,
            table: self.acc.table_stats(),
            ignored_records: self.acc.ignored_records,
            totals,
            top_by_pps: top,
            xdp: self.xdp,
            ongoing,
            attacks: self.book.shared(),
            watched: Arc::new(self.acc.watched_hosts().collect()),
            attacks_started: self.started,
            networks: Arc::new(crate::network_views::NetworksView::new(self.acc.groups())),
            attack_pcap_dropped: self.pcap.dropped.load(std::sync::atomic::Ordering::Relaxed),
            conversations: self.acc.conversation_stats(),
        }
    }
}

/// Gives the accounting the per-network and per-hostgroup rows of `config`.
fn set_groups(acc: &mut Accounting, config: &Config) {
    let hostgroups: Vec<_> = config
        .hostgroup
        .iter()
        .map(|g| (g.name.clone(), g.networks.clone()))
        .collect();
    let max = config.accounting.max_network_counters as usize;
    acc.set_groups(|g| g.reconfigure(&config.networks, &hostgroups, max));
    acc.set_conversation_tracking(uses_conversations(config));
}

/// True when a threshold (global or a hostgroup's) is on `conversations_per_second`, the one
/// rate that is counted only when used.
pub fn uses_conversations(config: &Config) -> bool {
    let d = &config.detection;
    [&d.incoming, &d.outgoing]
        .into_iter()
        .chain(
            config
                .hostgroup
                .iter()
                .flat_map(|g| [&g.incoming, &g.outgoing]),
        )
        .any(|t| t.conversations_per_second.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{accounting::RateKind, engine::input::EngineInput};

    fn config(extra: &str) -> Config {
        toml::from_str(&format!(
            "networks = [\"10.0.0.0/8\"]\npoll_interval = \"250ms\"\n{extra}\n\
             [detection.incoming]\npps = 1000\n[ban]\nstop_after = \"1s\"\n"
        ))
        .unwrap()
    }

    fn flood(packets: u64) -> Batch {
        Batch::Records {
            source: Source::Sflow,
            exporters: Vec::new(),
            records: vec![TrafficRecord {
                packets,
                bytes: packets * 100,
                ..TrafficRecord::packet(
                    "192.0.2.1".parse().unwrap(),
                    "10.0.0.1".parse().unwrap(),
                    17,
                    0,
                )
            }],
        }
    }

    #[test]
    fn a_host_under_attack_or_watched_stays_in_a_full_table_and_goes_after() {
        let cfg = config(
            "[accounting]\nmax_hosts = 8\nmax_hosts_per_exporter = 8\nmax_hosts_per_source = 8\n",
        );
        let mut core = EngineCore::new(&cfg, AttackBook::in_memory());
        let victim: IpAddr = "10.0.0.1".parse().unwrap();
        let mut next = 0u32;
        let (mut protected_slots, mut ended) = (0, false);
        for t in 1..=60u64 {
            if t <= 8 {
                core.ingest(flood(625)); // 2500 pps for 2 s
            }
            // 20 new one-packet hosts per slot: the 8-host table churns all along.
            let records = (0..20)
                .map(|_| {
                    next += 1;
                    TrafficRecord::packet(
                        "192.0.2.9".parse().unwrap(),
                        IpAddr::V4((0x0a01_0000 + next).into()),
                        17,
                        60,
                    )
                })
                .collect();
            core.ingest(Batch::Records {
                source: Source::Sflow,
                exporters: Vec::new(),
                records,
            });
            for d in core.tick(t * 250, t * 250) {
                ended |= matches!(d, Decision::AttackEnded { .. });
            }
            let ongoing = core.detector().is_ongoing(victim, Direction::Incoming);
            let watched = core.accounting().watched_hosts().any(|(h, _)| h == victim);
            if ongoing || watched {
                protected_slots += 1;
                assert!(core.accounting().host(victim).is_some(), "slot {t}");
            }
        }
        assert!(ended, "the attack ended");
        assert!(
            protected_slots > 12,
            "protected well after its flood: {protected_slots}"
        );
        assert!(
            core.accounting().host(victim).is_none(),
            "evicted once no longer attacked nor watched"
        );
        assert!(core.accounting().host_count() <= 8);
    }

    #[test]
    fn a_flood_opens_one_attack_with_the_configured_actions_and_ends_it() {
        let mut core = EngineCore::new(&config(""), AttackBook::in_memory());
        let mut started = Vec::new();
        let mut ended = Vec::new();
        for t in 1..=40u64 {
            if t <= 8 {
                core.ingest(flood(625)); // 2500 pps
            }
            for d in core.tick(t * 250, 1_700_000_000_000 + t * 250) {
                match d {
                    Decision::AttackStarted {
                        attack, actions, ..
                    } => started.push((attack, actions)),
                    Decision::AttackEnded { attack_id, .. } => ended.push(attack_id),
                }
            }
        }
        assert_eq!(started.len(), 1, "one attack");
        let (attack, actions) = &started[0];
        assert_eq!(attack.threshold.rate, RateKind::Pps);
        assert_eq!(actions, &vec![Action::XdpRule]);
        assert_eq!(ended, vec![attack.id.clone()], "ended with the same id");
        assert!(core.book().ongoing().next().is_none());
        let snap = core.snapshot(10_000);
        assert_eq!(snap.attacks.len(), 1);
        assert!(snap.attacks[0].ended_unix_ms.is_some());
    }

    #[test]
    fn an_attack_ongoing_in_a_reopened_book_is_carried_on_not_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attacks.json");
        let run = |core: &mut EngineCore, ticks: std::ops::RangeInclusive<u64>, packets| {
            let mut decisions = Vec::new();
            for t in ticks {
                if packets > 0 {
                    core.ingest(flood(packets));
                }
                decisions.extend(core.tick(t * 250, 1_700_000_000_000 + t * 250));
            }
            decisions
        };
        // The first agent opens an attack and dies during it.
        let mut core = EngineCore::new(&config(""), AttackBook::open(path.clone()).unwrap());
        let first = run(&mut core, 1..=8, 625);
        let Some(Decision::AttackStarted { attack, .. }) = first
            .iter()
            .find(|d| matches!(d, Decision::AttackStarted { .. }))
        else {
            panic!("no attack: {first:?}");
        };
        let id = attack.id.clone();
        drop(core);
        // The next one sees the same flood: the same attack, no second one...
        let mut core = EngineCore::new(&config(""), AttackBook::open(path.clone()).unwrap());
        assert_eq!(core.snapshot(0).ongoing.len(), 1);
        let during = run(&mut core, 1..=8, 625);
        assert!(during.is_empty(), "{during:?}");
        // ...which ends once the flood stops.
        let after = run(&mut core, 9..=20, 0);
        assert!(
            matches!(&after[..], [Decision::AttackEnded { attack_id, .. }] if *attack_id == id),
            "{after:?}"
        );
        assert_eq!(core.snapshot(0).attacks.len(), 1);
    }

    #[test]
    fn a_reload_keeps_counters_and_attacks_and_applies_new_thresholds_at_the_next_tick() {
        // 2000 pps (500 per 250 ms slot) under a 3000 pps threshold: watched, no attack.
        let mut core = EngineCore::new(&config(""), AttackBook::in_memory());
        let cfg = |pps| {
            toml::from_str::<Config>(&format!(
                "networks = [\"10.0.0.0/8\"]\n[detection.incoming]\npps = {pps}\n"
            ))
            .unwrap()
        };
        core.reload(&cfg(3000));
        let mut t = 0u64;
        let mut step = |core: &mut EngineCore| {
            t += 1;
            core.ingest(flood(500));
            core.tick(t * 250, t * 250)
        };
        for _ in 0..8 {
            assert!(step(&mut core).is_empty());
        }
        let victim: IpAddr = "10.0.0.1".parse().unwrap();
        let before = core.accounting().host(victim).unwrap().dirs()[0]
            .total()
            .packets;
        assert_eq!(before, 8 * 500);
        // Lowered to 1000: the very next tick opens the attack; nothing counted is lost.
        core.reload(&cfg(1000));
        let d = step(&mut core);
        assert!(
            matches!(&d[..], [Decision::AttackStarted { attack, .. }] if attack.threshold.threshold == 1000.0),
            "{d:?}"
        );
        assert_eq!(
            core.accounting().host(victim).unwrap().dirs()[0]
                .total()
                .packets,
            9 * 500
        );
        // Raised again: the attack carries on (it ends by the stop rules, not by the reload).
        core.reload(&cfg(100_000));
        assert!(step(&mut core).is_empty());
        assert_eq!(core.snapshot(0).ongoing.len(), 1);
    }

    #[test]
    fn a_report_only_hostgroup_opens_an_attack_with_no_actions() {
        let cfg = config(
            "[[hostgroup]]\nname = \"lab\"\nnetworks = [\"10.0.0.0/24\"]\nreport_only = true\n",
        );
        let mut core = EngineCore::new(&cfg, AttackBook::in_memory());
        let mut actions = None;
        for t in 1..=6u64 {
            core.ingest(flood(625));
            for d in core.tick(t * 250, t * 250) {
                if let Decision::AttackStarted { actions: a, .. } = d {
                    actions = Some(a);
                }
            }
        }
        assert_eq!(actions, Some(Vec::new()));
    }

    #[test]
    fn the_engine_thread_ingests_ticks_and_publishes() {
        let cfg = config("");
        let (input, rx) = EngineInput::channel(16);
        let (dec_tx, mut dec_rx) = tokio::sync::mpsc::channel(16);
        let mut engine = crate::engine::EngineHandle::spawn(crate::engine::EngineParts {
            core: EngineCore::new(&cfg, AttackBook::in_memory()),
            input: rx,
            flushers: Vec::new(),
            observers: Vec::new(),
            decisions: dec_tx,
            interval: std::time::Duration::from_millis(50),
        })
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let decision = loop {
            input.send(Source::Sflow, flood(500)); // 10 000 pps at 50 ms slots
            std::thread::sleep(std::time::Duration::from_millis(50));
            if let Ok(d) = dec_rx.try_recv() {
                break d;
            }
            assert!(std::time::Instant::now() < deadline, "no decision");
        };
        assert!(matches!(decision, Decision::AttackStarted { .. }));
        // The decision goes out just before the tick's snapshot is published.
        let snap = loop {
            let snap = engine.client().snapshot();
            if !snap.ongoing.is_empty() || std::time::Instant::now() > deadline {
                break snap;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(snap.ticks > 0);
        assert_eq!(snap.ongoing.len(), 1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(engine.client().command(crate::engine::EngineCommand::Host(
            "10.0.0.1".parse().unwrap(),
            tx
        )));
        let host = rx.blocking_recv().unwrap().unwrap();
        assert!(host.incoming.packets > 0);
        engine.stop();
    }
}
