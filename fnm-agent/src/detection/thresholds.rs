//! Effective thresholds of an address: its most specific hostgroup over the global values.

use super::config::{Action, DetectionConfig, HostgroupConfig, Thresholds};
use crate::{
    accounting::Direction,
    prefix::{Prefix, PrefixMap},
};
use serde::Serialize;
use std::net::IpAddr;

/// What applies to one address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effective {
    /// The hostgroup whose prefix matched most specifically, if any.
    pub hostgroup: Option<String>,
    /// The matching prefix of that hostgroup.
    pub prefix: Option<Prefix>,
    /// Incoming thresholds.
    pub incoming: Thresholds,
    /// Outgoing thresholds.
    pub outgoing: Thresholds,
    /// The hostgroup's own actions, when it has them.
    pub actions: Option<Vec<Action>>,
    /// Detect and report only.
    pub report_only: bool,
}

impl Effective {
    /// Thresholds of one direction.
    pub fn of(&self, d: Direction) -> &Thresholds {
        match d {
            Direction::Incoming => &self.incoming,
            Direction::Outgoing => &self.outgoing,
        }
    }
}

/// Hostgroups indexed by prefix, over the global thresholds.
///
/// What applies under each hostgroup prefix is worked out once, here: the detector asks for
/// every active host each tick (81,920 hosts at 4 ticks a second in the poll benchmark), and
/// building the answer per call (a name and actions cloned, the thresholds merged and copied)
/// was the engine thread's largest single cost there.
#[derive(Debug, Clone)]
pub struct ThresholdTable {
    /// Prefix → index into `resolved`.
    index: PrefixMap<usize>,
    /// What applies under each prefix of `index`.
    resolved: Vec<Effective>,
    /// What applies outside every hostgroup.
    outside: Effective,
    /// No threshold is set anywhere (worked out once: the detector asks at every host).
    empty: bool,
}

impl ThresholdTable {
    /// Builds the table.
    pub fn new(global: &DetectionConfig, groups: &[HostgroupConfig]) -> Self {
        let mut index = PrefixMap::new();
        let mut resolved = Vec::new();
        for g in groups {
            for p in &g.networks {
                index.insert(*p, resolved.len());
                resolved.push(Effective {
                    hostgroup: Some(g.name.clone()),
                    prefix: Some(*p),
                    incoming: g.incoming.or(&global.incoming),
                    outgoing: g.outgoing.or(&global.outgoing),
                    actions: g.actions.clone(),
                    report_only: g.report_only,
                });
            }
        }
        let empty = global.incoming.set().is_empty()
            && global.outgoing.set().is_empty()
            && groups
                .iter()
                .all(|g| g.incoming.set().is_empty() && g.outgoing.set().is_empty());
        Self {
            empty,
            index,
            resolved,
            outside: Effective {
                hostgroup: None,
                prefix: None,
                incoming: global.incoming,
                outgoing: global.outgoing,
                actions: None,
                report_only: false,
            },
        }
    }

    /// True when no threshold is set anywhere.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// What applies to `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Effective {
        self.resolve(addr).clone()
    }

    /// What applies to `addr`, without a copy.
    pub fn resolve(&self, addr: IpAddr) -> &Effective {
        match self.index.longest_match(addr) {
            Some((_, &i)) => self.resolved.get(i).unwrap_or(&self.outside),
            None => &self.outside,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_hostgroup_wins_and_inherits_unset_rates() {
        let global: DetectionConfig =
            toml::from_str("[incoming]\npps = 20000\nudp_pps = 10000\n[outgoing]\npps = 1000\n")
                .unwrap();
        let groups: Vec<HostgroupConfig> = vec![
            toml::from_str("name = \"wide\"\nnetworks = [\"10.10.0.0/16\"]\n[incoming]\npps = 30000\n").unwrap(),
            toml::from_str("name = \"vip\"\nnetworks = [\"10.10.99.0/24\", \"2001:db8:99::/48\"]\n[incoming]\npps = 50000\n").unwrap(),
        ];
        let t = ThresholdTable::new(&global, &groups);
        let vip = t.lookup("10.10.99.7".parse().unwrap());
        assert_eq!(vip.hostgroup.as_deref(), Some("vip"));
        assert_eq!(vip.incoming.pps, Some(50000.0));
        assert_eq!(vip.incoming.udp_pps, Some(10000.0));
        assert_eq!(vip.outgoing.pps, Some(1000.0));
        assert_eq!(
            t.lookup("10.10.1.1".parse().unwrap()).incoming.pps,
            Some(30000.0)
        );
        assert_eq!(
            t.lookup("2001:db8:99::1".parse().unwrap())
                .hostgroup
                .as_deref(),
            Some("vip")
        );
        let other = t.lookup("192.0.2.1".parse().unwrap());
        assert_eq!((other.hostgroup, other.incoming.pps), (None, Some(20000.0)));
    }
}
