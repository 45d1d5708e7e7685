//! Traffic counters per configured network and per hostgroup, kept by the accounting as it
//! credits hosts (no walk over the hosts): each host is tagged once with the row of the most
//! specific configured network and of the most specific hostgroup prefix holding it, and every
//! delta credited to the host is credited to those rows as well. Rows close their slot at each
//! tick exactly as hosts do, so a network's rate is the sum of its hosts' rates over the same
//! window.
//!
//! The number of rows is bounded: the first `max_rows` networks (and hostgroups) in config
//! order get their own row; the traffic of the rest is counted together in one row named
//! [`OTHER`]. A host in two overlapping networks counts toward the most specific one only, so
//! the rows of a direction add up to the traffic of every local host.

use super::{
    host::{DirView, Live},
    Direction,
};
use crate::prefix::{Prefix, PrefixMap};
use fnm_common::HostCounters;
use std::net::IpAddr;

/// Name of the row that holds the networks (or hostgroups) beyond the cap.
pub const OTHER: &str = "other";

/// No row (the host is in no hostgroup).
const NONE: u32 = u32::MAX;

/// Rows of a host, valid for one configuration (`epoch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupTag {
    epoch: u32,
    network: u32,
    hostgroup: u32,
}

/// One counted network or hostgroup: both directions, with rates over the rate window.
#[derive(Debug, Clone, Default)]
pub struct GroupRow {
    /// The network (`10.0.0.0/24`), the hostgroup's name, or [`OTHER`].
    pub name: String,
    /// Indexed by [`Direction::index`].
    dirs: [Live; 2],
}

impl GroupRow {
    /// One direction.
    pub fn dir(&self, direction: Direction) -> DirView<'_> {
        self.dirs[direction.index()].view()
    }

    /// Both directions, indexed by [`Direction::index`].
    pub fn dirs(&self) -> [DirView<'_>; 2] {
        [self.dirs[0].view(), self.dirs[1].view()]
    }
}

/// Rows of one kind (networks or hostgroups) and the prefixes leading to them.
#[derive(Debug, Clone, Default)]
struct GroupSet {
    map: PrefixMap<u32>,
    rows: Vec<GroupRow>,
}

impl GroupSet {
    /// Rows for `groups` (a name and its prefixes, in config order), at most `max_rows` named
    /// ones plus [`OTHER`] when some are left over. Rows of `old` with the same name keep
    /// their counters.
    fn new(groups: &[(String, Vec<Prefix>)], max_rows: usize, old: &mut GroupSet) -> Self {
        let mut set = GroupSet::default();
        let mut take = |name: &str, set: &mut GroupSet| -> u32 {
            if let Some(i) = set.rows.iter().position(|r| r.name == name) {
                return i as u32;
            }
            let row = match old.rows.iter_mut().find(|r| r.name == name) {
                Some(r) => std::mem::take(r),
                None => GroupRow {
                    name: name.to_owned(),
                    ..GroupRow::default()
                },
            };
            set.rows.push(row);
            (set.rows.len() - 1) as u32
        };
        let mut named = 0;
        for (name, prefixes) in groups {
            let row = if named < max_rows || set.rows.iter().any(|r| &r.name == name) {
                if !set.rows.iter().any(|r| &r.name == name) {
                    named += 1;
                }
                take(name, &mut set)
            } else {
                take(OTHER, &mut set)
            };
            for p in prefixes {
                set.map.insert(*p, row);
            }
        }
        set
    }

    fn row_of(&self, addr: IpAddr) -> u32 {
        self.map.longest_match(addr).map_or(NONE, |(_, r)| *r)
    }
}

/// What a credit adds to a row's counters.
pub(super) trait Credit {
    /// Adds into `c`.
    fn add_to(&self, c: &mut HostCounters);
}

impl Credit for HostCounters {
    fn add_to(&self, c: &mut HostCounters) {
        c.accumulate(self);
    }
}

/// The per-network and per-hostgroup rows of the accounting.
#[derive(Debug, Clone, Default)]
pub struct TrafficGroups {
    networks: GroupSet,
    hostgroups: GroupSet,
    /// Bumped at each reconfiguration, so hosts tagged before are tagged again.
    epoch: u32,
}

impl TrafficGroups {
    /// Rows for `networks` (each its own row) and `hostgroups` (a name and its prefixes), at
    /// most `max_rows` of each kind plus one [`OTHER`] row.
    pub fn new(networks: &[Prefix], hostgroups: &[(String, Vec<Prefix>)], max_rows: usize) -> Self {
        let mut groups = Self::default();
        groups.reconfigure(networks, hostgroups, max_rows);
        groups
    }

    /// Takes a new configuration (a reload): rows of networks and hostgroups kept keep their
    /// counters; every host is tagged again at its next credit.
    pub fn reconfigure(
        &mut self,
        networks: &[Prefix],
        hostgroups: &[(String, Vec<Prefix>)],
        max_rows: usize,
    ) {
        let networks: Vec<(String, Vec<Prefix>)> =
            networks.iter().map(|p| (p.to_string(), vec![*p])).collect();
        self.networks = GroupSet::new(&networks, max_rows, &mut self.networks);
        self.hostgroups = GroupSet::new(hostgroups, max_rows, &mut self.hostgroups);
        // Never 0, the epoch of a host never tagged.
        self.epoch = self.epoch.wrapping_add(1).max(1);
    }

    /// True when there is no row at all (nothing to credit).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.networks.rows.is_empty() && self.hostgroups.rows.is_empty()
    }

    /// The rows of `addr`, from `tag` when it is current, else looked up (and `tag` updated).
    #[inline]
    pub fn tag(&self, tag: &mut GroupTag, addr: IpAddr) -> GroupTag {
        if tag.epoch != self.epoch {
            *tag = self.lookup(addr);
        }
        *tag
    }

    /// The rows of `addr`, looked up.
    pub fn lookup(&self, addr: IpAddr) -> GroupTag {
        GroupTag {
            epoch: self.epoch,
            network: self.networks.row_of(addr),
            hostgroup: self.hostgroups.row_of(addr),
        }
    }

    /// Credits the rows of `tag` in direction `dir`: `window` to the slot being measured (it
    /// joins their cumulative counters when it closes), `beyond` to their cumulative counters.
    #[inline]
    pub(super) fn credit<C: Credit>(
        &mut self,
        tag: GroupTag,
        dir: usize,
        window: &C,
        beyond: Option<&C>,
    ) {
        for (set, row) in [
            (&mut self.networks, tag.network),
            (&mut self.hostgroups, tag.hostgroup),
        ] {
            if let Some(r) = set.rows.get_mut(row as usize) {
                let d = &mut r.dirs[dir];
                window.add_to(&mut d.window.current);
                if let Some(beyond) = beyond {
                    beyond.add_to(&mut d.quiet.total);
                }
            }
        }
    }

    /// Closes every row's slot (as hosts close theirs; a row's window stays allocated).
    pub(super) fn close(&mut self, slots: usize, slot_ms: u64, window_ms: u64) {
        for set in [&mut self.networks, &mut self.hostgroups] {
            for row in &mut set.rows {
                for d in &mut row.dirs {
                    d.close_slot(slots, slot_ms, window_ms, false);
                }
            }
        }
    }

    /// The network rows, in config order ([`OTHER`] where the first network beyond the cap
    /// was).
    pub fn networks(&self) -> &[GroupRow] {
        &self.networks.rows
    }

    /// The hostgroup rows, in config order.
    pub fn hostgroups(&self) -> &[GroupRow] {
        &self.hostgroups.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn names(rows: &[GroupRow]) -> Vec<&str> {
        rows.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn rows_are_capped_and_the_rest_counts_as_other() {
        let nets = [
            p("10.0.0.0/24"),
            p("10.0.1.0/24"),
            p("10.0.2.0/24"),
            p("10.0.3.0/24"),
        ];
        let g = TrafficGroups::new(&nets, &[], 2);
        assert_eq!(names(g.networks()), ["10.0.0.0/24", "10.0.1.0/24", OTHER]);
        let row = |a: &str| g.lookup(a.parse().unwrap()).network;
        assert_eq!(row("10.0.1.7"), 1);
        assert_eq!(row("10.0.2.7"), 2);
        assert_eq!(row("10.0.3.7"), 2);
        assert_eq!(row("192.0.2.1"), NONE);
    }

    #[test]
    fn the_most_specific_network_and_hostgroup_win() {
        let hg = vec![
            ("wide".to_string(), vec![p("10.0.0.0/8")]),
            (
                "dns".to_string(),
                vec![p("10.1.0.0/16"), p("2001:db8::/64")],
            ),
        ];
        let g = TrafficGroups::new(&[p("10.0.0.0/8"), p("10.1.2.0/24")], &hg, 256);
        let t = g.lookup("10.1.2.3".parse().unwrap());
        assert_eq!((t.network, t.hostgroup), (1, 1));
        let t = g.lookup("10.9.2.3".parse().unwrap());
        assert_eq!((t.network, t.hostgroup), (0, 0));
        let t = g.lookup("2001:db8::1".parse().unwrap());
        assert_eq!((t.network, t.hostgroup), (NONE, 1));
    }

    #[test]
    fn a_reload_keeps_the_counters_of_rows_kept_and_retags_hosts() {
        let mut g = TrafficGroups::new(&[p("10.0.0.0/24"), p("10.0.1.0/24")], &[], 8);
        let mut tag = GroupTag::default();
        let t = g.tag(&mut tag, "10.0.1.1".parse().unwrap());
        let c = HostCounters {
            packets: 5,
            ..Default::default()
        };
        g.credit(t, 0, &c, None);
        assert_eq!(g.networks()[1].dir(Direction::Incoming).total().packets, 5);
        g.reconfigure(&[p("10.0.1.0/24")], &[], 8);
        assert_eq!(names(g.networks()), ["10.0.1.0/24"]);
        assert_eq!(g.networks()[0].dir(Direction::Incoming).total().packets, 5);
        // The old tag (row 1) is stale: the host is tagged again (row 0).
        assert_eq!(g.tag(&mut tag, "10.0.1.1".parse().unwrap()).network, 0);
    }
}
