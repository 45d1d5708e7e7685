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
#[derive(Debug, Clone)]
pub struct ThresholdTable {
    global: DetectionConfig,
    groups: Vec<HostgroupConfig>,
    index: PrefixMap<usize>,
}

impl ThresholdTable {
    /// Builds the table.
    pub fn new(global: &DetectionConfig, groups: &[HostgroupConfig]) -> Self {
        let mut index = PrefixMap::new();
        for (i, g) in groups.iter().enumerate() {
            for p in &g.networks {
                index.insert(*p, i);
            }
        }
        Self {
            global: global.clone(),
            groups: groups.to_vec(),
            index,
        }
    }

    /// True when no threshold is set anywhere.
    pub fn is_empty(&self) -> bool {
        self.global.incoming.set().is_empty()
            && self.global.outgoing.set().is_empty()
            && self
                .groups
                .iter()
                .all(|g| g.incoming.set().is_empty() && g.outgoing.set().is_empty())
    }

    /// What applies to `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Effective {
        match self.index.longest_match(addr) {
            Some((prefix, i)) => {
                let g = &self.groups[*i];
                Effective {
                    hostgroup: Some(g.name.clone()),
                    prefix: Some(*prefix),
                    incoming: g.incoming.or(&self.global.incoming),
                    outgoing: g.outgoing.or(&self.global.outgoing),
                    actions: g.actions.clone(),
                    report_only: g.report_only,
                }
            }
            None => Effective {
                hostgroup: None,
                prefix: None,
                incoming: self.global.incoming,
                outgoing: self.global.outgoing,
                actions: None,
                report_only: false,
            },
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
