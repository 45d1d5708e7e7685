//! Compares every host's sliding-window rates with its thresholds after each poll.
//!
//! The trigger uses the true rate over the last window (no exponential smoothing), so a flood
//! is detected as soon as one window shows it. An attack stops when every set rate has stayed
//! below `stop_ratio` × its threshold for `stop_after` (hysteresis). Hosts above `WATCH_RATIO` of
//! a threshold are watched (their records or XDP packets sampled) so that the attack record has
//! samples the moment it opens.

use super::thresholds::ThresholdTable;
use crate::{
    accounting::{Accounting, Direction, Host, RateKind, Rates},
    prefix::PrefixSet,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    net::IpAddr,
};

/// Hosts above this share of a threshold are watched.
pub const WATCH_RATIO: f64 = 0.5;
/// A watched host below the watch ratio for this long is no longer watched.
const UNWATCH_AFTER_MS: u64 = 10_000;

/// The threshold an attack crossed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crossing {
    /// The rate (`pps`, `udp_pps`, ... in JSON).
    pub rate: RateKind,
    /// Its value when the attack was reported: the same rate as the attack's
    /// `initial_rates` (the higher of the window's and the last slot's).
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
}

/// What the detector knows when an attack opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Opening {
    /// The local host.
    pub host: IpAddr,
    /// Its direction.
    pub direction: Direction,
    /// The first threshold crossed (largest overshoot).
    pub crossing: Crossing,
    /// All its rates at that moment.
    pub rates: Rates,
    /// Its hostgroup.
    pub hostgroup: Option<String>,
    /// Detect and report only.
    pub report_only: bool,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub enum DetectorEvent {
    /// A host crossed a threshold.
    Started(Opening),
    /// An attack stopped (hysteresis passed).
    Stopped {
        /// The local host.
        host: IpAddr,
        /// Its direction.
        direction: Direction,
    },
    /// Start sampling a host.
    Watch(IpAddr, Direction),
    /// Stop sampling a host.
    Unwatch(IpAddr, Direction),
}

#[derive(Debug, Clone)]
struct Ongoing {
    peak: Rates,
    below_since_ms: Option<u64>,
}

/// Detection state.
#[derive(Debug)]
pub struct Detector {
    table: ThresholdTable,
    whitelist: PrefixSet,
    stop_ratio: f64,
    stop_after_ms: u64,
    ongoing: HashMap<(IpAddr, Direction), Ongoing>,
    watched: HashMap<(IpAddr, Direction), u64>,
    /// Starts held back one check because the host was not watched yet (no samples).
    deferred: Vec<DetectorEvent>,
    /// What the visits of the check under way found, in order.
    visited: Vec<Visited>,
    /// Ongoing attacks whose host the check under way visited.
    seen: HashSet<(IpAddr, Direction)>,
}

/// What a visit found.
#[derive(Debug)]
enum Visited {
    /// An event, as it is.
    Event(DetectorEvent),
    /// An attack on a host watched only from this check on: reported now or held back a
    /// check, as [`Detector::finish`] decides.
    NewlyWatched(Opening),
}

impl Detector {
    /// A detector over `table`; hosts in `whitelist` are never reported.
    pub fn new(
        table: ThresholdTable,
        whitelist: PrefixSet,
        stop_ratio: f64,
        stop_after_ms: u64,
    ) -> Self {
        Self {
            table,
            whitelist,
            stop_ratio,
            stop_after_ms,
            ongoing: HashMap::new(),
            watched: HashMap::new(),
            deferred: Vec::new(),
            visited: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Takes new thresholds, whitelist and stop settings (a configuration reload). Ongoing
    /// attacks and watched hosts are kept: an attack ends under the new thresholds.
    pub fn reconfigure(
        &mut self,
        table: ThresholdTable,
        whitelist: PrefixSet,
        stop_ratio: f64,
        stop_after_ms: u64,
    ) {
        self.table = table;
        self.whitelist = whitelist;
        self.stop_ratio = stop_ratio;
        self.stop_after_ms = stop_after_ms;
    }

    /// The thresholds table.
    pub fn table(&self) -> &ThresholdTable {
        &self.table
    }

    /// Peak rates of an ongoing attack.
    pub fn peak(&self, host: IpAddr, direction: Direction) -> Option<Rates> {
        self.ongoing.get(&(host, direction)).map(|o| o.peak)
    }

    /// Hosts with an attack in progress (in either direction).
    pub fn ongoing_hosts(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ongoing.keys().map(|(ip, _)| *ip)
    }

    /// Carries on with an attack opened before a restart: (host, direction) is under attack
    /// with `peak` so far, and ends like any other once its rates stay under the stop ratio
    /// for `stop_after`, instead of opening a second attack for the same flood.
    pub fn resume(&mut self, host: IpAddr, direction: Direction, peak: Rates) {
        self.ongoing
            .entry((host, direction))
            .and_modify(|o| o.peak = o.peak.max(&peak))
            .or_insert(Ongoing {
                peak,
                below_since_ms: None,
            });
    }

    /// True while an attack on (host, direction) is ongoing.
    pub fn is_ongoing(&self, host: IpAddr, direction: Direction) -> bool {
        self.ongoing.contains_key(&(host, direction))
    }

    /// Checks every host of `acc` at `now_ms`: [`Detector::visit`] for each, then
    /// [`Detector::finish`].
    pub fn check(&mut self, acc: &Accounting, now_ms: u64) -> Vec<DetectorEvent> {
        for (ip, host) in acc.hosts() {
            self.visit(*ip, host, now_ms);
        }
        self.finish(acc, now_ms)
    }

    /// Checks one host of the accounting at `now_ms`, after its slot closed. The engine calls
    /// it from the tick's pass over the host table ([`Accounting::tick_visiting`]), while
    /// the host's window is still in the cache: as a second pass over 81,920 hosts it was
    /// 30 % of the engine thread, most of it a cache miss per host. Every host of the table
    /// must be visited once per check, then [`Detector::finish`] called.
    pub fn visit(&mut self, ip: IpAddr, host: &Host, now_ms: u64) {
        if self.table.is_empty() || self.whitelist.contains(ip) {
            return;
        }
        let mut effective = None;
        for dir in Direction::ALL {
            let d = host.dir(dir);
            let key = (ip, dir);
            if d.pps() == 0.0
                && !self.ongoing.contains_key(&key)
                && !self.watched.contains_key(&key)
            {
                continue;
            }
            let eff = *effective.get_or_insert_with(|| self.table.resolve(ip));
            let mut worst: Option<(f64, Crossing)> = None;
            let mut max_share = 0.0f64;
            for (name, limit) in eff.of(dir).iter() {
                let value = d.rate(name);
                let share = value / limit;
                max_share = max_share.max(share);
                if value >= limit && worst.as_ref().is_none_or(|(s, _)| share > *s) {
                    worst = Some((
                        share,
                        Crossing {
                            rate: name,
                            value,
                            threshold: limit,
                        },
                    ));
                }
            }
            // Reported rates: the window's, or the last slot's when higher (a flood younger
            // than the window shows its true rate there). Worked out only for a host under
            // attack or crossing a threshold.
            let reported = || d.rates().max(&d.slot_rates());
            match self.ongoing.get_mut(&key) {
                Some(o) => {
                    o.peak = o.peak.max(&reported());
                    if max_share < self.stop_ratio {
                        let since = *o.below_since_ms.get_or_insert(now_ms);
                        if now_ms.saturating_sub(since) >= self.stop_after_ms {
                            self.ongoing.remove(&key);
                            self.visited.push(Visited::Event(DetectorEvent::Stopped {
                                host: ip,
                                direction: dir,
                            }));
                        }
                    } else {
                        o.below_since_ms = None;
                    }
                }
                None => {
                    if let Some((_, mut crossing)) = worst {
                        // One rate per attack (docs/detection.md): the crossing, the record's
                        // initial rates, the log and the script's argument all read the
                        // reported rates, never the bare window's.
                        let reported = reported();
                        crossing.value = reported.get(crossing.rate);
                        self.ongoing.insert(
                            key,
                            Ongoing {
                                peak: reported,
                                below_since_ms: None,
                            },
                        );
                        let opening = Opening {
                            host: ip,
                            direction: dir,
                            crossing,
                            rates: reported,
                            hostgroup: eff.hostgroup.clone(),
                            report_only: eff.report_only,
                        };
                        match self.watched.entry(key) {
                            Entry::Occupied(_) => self
                                .visited
                                .push(Visited::Event(DetectorEvent::Started(opening))),
                            Entry::Vacant(v) => {
                                // Watched from now on; reported now if flow records of it
                                // were just seen (watching seeds the samples), else a check
                                // later: decided in `finish`, which sees the accounting.
                                v.insert(now_ms);
                                self.visited
                                    .push(Visited::Event(DetectorEvent::Watch(ip, dir)));
                                self.visited.push(Visited::NewlyWatched(opening));
                            }
                        }
                    }
                }
            }
            if max_share >= WATCH_RATIO && self.watched.insert(key, now_ms).is_none() {
                self.visited
                    .push(Visited::Event(DetectorEvent::Watch(ip, dir)));
            }
            // Only ongoing attacks are looked up below: a set of every host with traffic
            // would cost an insertion per active host and tick.
            if self.ongoing.contains_key(&key) {
                self.seen.insert(key);
            }
        }
    }

    /// Ends a check: the events of the visits, in order, after the starts held back at the
    /// last check; then the attacks of hosts not visited, and the watches that expired.
    pub fn finish(&mut self, acc: &Accounting, now_ms: u64) -> Vec<DetectorEvent> {
        // Starts held back last time are released now that their hosts have samples.
        let mut events: Vec<DetectorEvent> = std::mem::take(&mut self.deferred)
            .into_iter()
            .map(|e| match e {
                DetectorEvent::Started(mut o) => {
                    if let Some(h) = acc.host(o.host) {
                        let d = h.dir(o.direction);
                        o.rates = d.rates().max(&d.slot_rates()).max(&o.rates);
                    }
                    // The one rate of the attack: the crossing reads the reported rates.
                    o.crossing.value = o.rates.get(o.crossing.rate);
                    DetectorEvent::Started(o)
                }
                other => other,
            })
            .collect();
        if self.table.is_empty() {
            // Without thresholds nothing is an attack (one resumed after a restart ends).
            self.visited.clear();
            self.seen.clear();
            for (host, direction) in std::mem::take(&mut self.ongoing).into_keys() {
                events.push(DetectorEvent::Stopped { host, direction });
            }
            return events;
        }
        for v in self.visited.drain(..) {
            match v {
                Visited::Event(e) => events.push(e),
                Visited::NewlyWatched(opening) => {
                    let recent = acc.has_recent(opening.host, opening.direction);
                    let start = DetectorEvent::Started(opening);
                    if recent {
                        // Flow records just seen: watching now seeded the samples.
                        events.push(start);
                    } else {
                        // A sudden flood on the XDP path: report one check later, with
                        // kernel samples for the fingerprint.
                        self.deferred.push(start);
                    }
                }
            }
        }
        // Hosts not checked above (forgotten by the accounting, without traffic since a
        // restart, whitelisted since) are below the stop ratio: their attacks end after
        // `stop_after` like the others.
        let absent: Vec<_> = self
            .ongoing
            .keys()
            .filter(|k| !self.seen.contains(k))
            .copied()
            .collect();
        self.seen.clear();
        for key in absent {
            let Some(o) = self.ongoing.get_mut(&key) else {
                continue;
            };
            let since = *o.below_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= self.stop_after_ms {
                self.ongoing.remove(&key);
                events.push(DetectorEvent::Stopped {
                    host: key.0,
                    direction: key.1,
                });
            }
        }
        let stale: Vec<_> = self
            .watched
            .iter()
            .filter(|(k, since)| {
                !self.ongoing.contains_key(k) && now_ms.saturating_sub(**since) >= UNWATCH_AFTER_MS
            })
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            // Refreshed above while still over the watch ratio; only idle watches expire.
            let still_hot = acc
                .host(key.0)
                .map(|h| {
                    let eff = self.table.lookup(key.0);
                    eff.of(key.1)
                        .set()
                        .iter()
                        .any(|(n, l)| h.dir(key.1).rate(*n) / l >= WATCH_RATIO)
                })
                .unwrap_or(false);
            if still_hot {
                self.watched.insert(key, now_ms);
            } else {
                self.watched.remove(&key);
                events.push(DetectorEvent::Unwatch(key.0, key.1));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detection::config::DetectionConfig,
        traffic::{Source, TrafficRecord},
    };

    fn setup() -> (Accounting, Detector) {
        let nets: PrefixSet = ["10.0.0.0/8".parse().unwrap()].into_iter().collect();
        let acc = Accounting::new(nets, 1000, 1000, 250).with_rate_window(1000);
        let global: DetectionConfig =
            toml::from_str("[incoming]\npps = 1000\nudp_pps = 800\n").unwrap();
        let white: PrefixSet = ["10.0.0.99/32".parse().unwrap()].into_iter().collect();
        let det = Detector::new(ThresholdTable::new(&global, &[]), white, 0.7, 1000);
        (acc, det)
    }

    fn flood(acc: &mut Accounting, dst: &str, packets: u64) {
        acc.ingest(
            &TrafficRecord {
                packets,
                bytes: packets * 100,
                ..TrafficRecord::packet("192.0.2.1".parse().unwrap(), dst.parse().unwrap(), 17, 0)
            },
            Source::Sflow,
        );
    }

    #[test]
    fn flood_at_2_5x_starts_within_half_a_second_and_stops_with_hysteresis() {
        let (mut acc, mut det) = setup();
        let mut started_at = None;
        // 2500 pps = 625 packets per 250 ms slot.
        for t in 1..=8u64 {
            flood(&mut acc, "10.0.0.1", 625);
            acc.tick(t * 250, u64::MAX);
            for e in det.check(&acc, t * 250) {
                if let DetectorEvent::Started(Opening {
                    crossing, rates, ..
                }) = e
                {
                    assert_eq!(
                        crossing.value,
                        rates.get(crossing.rate),
                        "one rate per attack: the crossing reads the reported rates"
                    );
                    started_at.get_or_insert((t * 250, crossing));
                }
            }
        }
        let (at, crossing) = started_at.expect("detected");
        assert!(at <= 500, "detected after {at} ms");
        assert_eq!(
            crossing.rate,
            RateKind::UdpPps,
            "the larger overshoot is reported"
        );
        assert!(
            det.peak("10.0.0.1".parse().unwrap(), Direction::Incoming)
                .unwrap()
                .pps
                >= 2500.0
        );
        let mut stopped = None;
        for t in 9..=20u64 {
            acc.tick(t * 250, u64::MAX);
            if det
                .check(&acc, t * 250)
                .iter()
                .any(|e| matches!(e, DetectorEvent::Stopped { .. }))
            {
                stopped.get_or_insert(t * 250);
            }
        }
        assert!(stopped.is_some());
    }

    #[test]
    fn a_resumed_attack_goes_on_with_its_flood_and_ends_without_it() {
        let (mut acc, mut det) = setup();
        let host: IpAddr = "10.0.0.1".parse().unwrap();
        det.resume(host, Direction::Incoming, Rates::default());
        // The flood goes on: no second start.
        for t in 1..=8u64 {
            flood(&mut acc, "10.0.0.1", 625);
            acc.tick(t * 250, u64::MAX);
            assert_eq!(
                det.check(&acc, t * 250)
                    .iter()
                    .filter(|e| matches!(e, DetectorEvent::Started(_)))
                    .count(),
                0
            );
        }
        assert!(det.peak(host, Direction::Incoming).unwrap().pps >= 2500.0);
        // A host that never shows up again ends its attack after `stop_after`, not at once.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        det.resume(other, Direction::Incoming, Rates::default());
        let stopped = |events: &[DetectorEvent]| {
            events
                .iter()
                .any(|e| matches!(e, DetectorEvent::Stopped { host, .. } if *host == other))
        };
        acc.tick(9 * 250, u64::MAX);
        assert!(!stopped(&det.check(&acc, 9 * 250)));
        acc.tick(12 * 250, u64::MAX);
        assert!(!stopped(&det.check(&acc, 12 * 250)));
        acc.tick(13 * 250, u64::MAX);
        assert!(stopped(&det.check(&acc, 13 * 250)));
        assert!(det.is_ongoing(host, Direction::Incoming));
    }

    #[test]
    fn visiting_during_the_tick_finds_what_a_check_after_it_finds() {
        // Two accountings fed alike: one checked after its tick, the other visited during it.
        // Floods from nothing with flow records (reported at once) and with XDP counters
        // alone (held back a check), a rising flood (watched first), floods that stop, a
        // host that goes idle and is forgotten, a whitelisted flood: the same events at
        // every tick.
        let (mut after, mut checked) = setup();
        let (mut during, mut visited) = setup();
        let xdp = |acc: &mut Accounting, dst: &str, packets: u64| {
            let mut d = fnm_common::XdpHostCounters::default();
            d.counted.packets = packets;
            d.counted.bytes = packets * 100;
            d.counted.proto_packets[fnm_common::proto::UDP] = packets;
            d.counted.proto_bytes[fnm_common::proto::UDP] = packets * 100;
            acc.add_host_counters(dst.parse().unwrap(), Direction::Incoming, &d);
        };
        let mut kinds = HashSet::new();
        let (mut watched_at, mut started_at) = (HashMap::new(), HashMap::new());
        for t in 1..=100u64 {
            for acc in [&mut after, &mut during] {
                if t <= 12 {
                    flood(acc, "10.0.0.1", 625);
                }
                if (5..=20).contains(&t) {
                    xdp(acc, "10.0.0.2", 3000);
                }
                if (3..=10).contains(&t) {
                    flood(acc, "10.0.0.4", 3000);
                }
                if t < 30 {
                    flood(acc, "10.0.0.3", 100 + t);
                }
                flood(acc, "10.0.0.99", 5000);
            }
            after.tick(t * 250, 3_000);
            let expected = checked.check(&after, t * 250);
            let det = &mut visited;
            during.tick_visiting(t * 250, 3_000, |ip, h| det.visit(ip, h, t * 250));
            let got = visited.finish(&during, t * 250);
            assert_eq!(got, expected, "tick {t}");
            kinds.extend(expected.iter().map(std::mem::discriminant));
            for e in &got {
                let (host, at) = match e {
                    DetectorEvent::Watch(h, _) => (*h, &mut watched_at),
                    DetectorEvent::Started(o) => (o.host, &mut started_at),
                    _ => continue,
                };
                at.entry(host).or_insert(t);
            }
        }
        assert_eq!(
            kinds.len(),
            4,
            "started, stopped, watched and unwatched hosts"
        );
        let ticks = |at: &HashMap<IpAddr, u64>, h: &str| at.get(&h.parse().unwrap()).copied();
        // A flood from nothing: with flow records, watched and reported at once; with XDP
        // counters alone, reported a check later. A rising one: watched first.
        let a = ticks(&watched_at, "10.0.0.4");
        assert!(a.is_some() && a == ticks(&started_at, "10.0.0.4"));
        assert!(ticks(&watched_at, "10.0.0.1") < ticks(&started_at, "10.0.0.1"));
        let b = ticks(&watched_at, "10.0.0.2").expect("watched");
        assert_eq!(ticks(&started_at, "10.0.0.2"), Some(b + 1));
        assert_eq!(ticks(&started_at, "10.0.0.99"), None);
    }

    #[test]
    fn traffic_under_thresholds_and_whitelisted_hosts_never_start_attacks() {
        let (mut acc, mut det) = setup();
        for t in 1..=20u64 {
            flood(&mut acc, "10.0.0.1", 150); // 600 pps, under both thresholds
            flood(&mut acc, "10.0.0.99", 5000);
            acc.tick(t * 250, u64::MAX);
            assert!(!det
                .check(&acc, t * 250)
                .iter()
                .any(|e| matches!(e, DetectorEvent::Started(_))));
        }
    }
}
