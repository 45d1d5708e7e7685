//! Active mitigations: what each attack's ban put in place, persisted in
//! `<state_dir>/mitigations.json` so rules, drops and BGP announcements are reinstated after a
//! restart and lifted on time.

use crate::{
    accounting::Direction,
    actions::bgp::FlowspecRule,
    bans::{DropMatch, RuleSpec},
    detection::config::Action,
    prefix::Prefix,
};
use serde::{Deserialize, Serialize};
use std::{net::IpAddr, path::PathBuf};

/// What one attack's ban did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mitigation {
    /// The attack.
    pub attack_id: String,
    /// The victim (or the attacking local host, outgoing).
    pub host: IpAddr,
    /// Direction of the attack.
    pub direction: Direction,
    /// When it started, seconds since the epoch.
    pub started: u64,
    /// When it may end, seconds since the epoch (later while the attack goes on, if configured).
    pub expires: u64,
    /// Attack packets/s (for the script's unban call).
    pub pps: u64,
    /// Actions configured for it.
    pub actions: Vec<Action>,
    /// XDP fingerprint rules installed for (host, direction).
    pub rules: Vec<RuleSpec>,
    /// Drop entries added for it (blackhole, sources).
    pub bans: Vec<(Prefix, DropMatch)>,
    /// Flowspec rule announced.
    pub flowspec: Option<FlowspecRule>,
    /// Blackhole route announced.
    pub blackhole: Option<Prefix>,
}

/// The active mitigations.
#[derive(Debug, Default)]
pub struct MitigationStore {
    list: Vec<Mitigation>,
    path: Option<PathBuf>,
}

impl MitigationStore {
    /// Opens the store at `path`; an unreadable file is reported and set aside.
    pub fn open(path: PathBuf) -> Self {
        let list = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!("{}: not a mitigation list ({e}); set aside", path.display());
                let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        Self {
            list,
            path: Some(path),
        }
    }

    /// The mitigation of (host, direction).
    pub fn get(&self, host: IpAddr, direction: Direction) -> Option<&Mitigation> {
        self.list
            .iter()
            .find(|m| m.host == host && m.direction == direction)
    }

    /// Adds one and saves.
    pub fn insert(&mut self, m: Mitigation) {
        self.list
            .retain(|x| !(x.host == m.host && x.direction == m.direction));
        self.list.push(m);
        self.save();
    }

    /// Removes one and saves.
    pub fn remove(&mut self, host: IpAddr, direction: Direction) -> Option<Mitigation> {
        let i = self
            .list
            .iter()
            .position(|m| m.host == host && m.direction == direction)?;
        let m = self.list.remove(i);
        self.save();
        Some(m)
    }

    /// All of them.
    pub fn list(&self) -> &[Mitigation] {
        &self.list
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec_pretty(&self.list)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::error!("saving mitigations to {}: {e}", path.display());
        }
    }
}

/// A single-port match, or none for port 0 (any).
fn ports(port: u16) -> Vec<crate::actions::bgp::ValueRange> {
    if port == 0 {
        Vec::new()
    } else {
        vec![crate::actions::bgp::ValueRange::single(port)]
    }
}

/// The flowspec rule matching a fingerprint's XDP rules towards `host`.
pub fn flowspec_for(
    host: IpAddr,
    direction: Direction,
    rules: &[RuleSpec],
) -> Option<FlowspecRule> {
    use crate::actions::bgp::{FlowspecAction, FragmentMatch, TcpFlagsMatch};
    let rule = rules.first()?;
    let me = Prefix::host(host);
    let (destination, source) = match direction {
        Direction::Incoming => (me, None),
        Direction::Outgoing => {
            let any = if host.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            (any.parse().expect("valid prefix"), Some(me))
        }
    };
    Some(FlowspecRule {
        destination,
        source,
        protocol: (rule.protocol != 0).then_some(rule.protocol),
        source_ports: ports(rule.src_port),
        destination_ports: ports(rule.dst_port),
        tcp_flags: (rule.tcp_flags_mask != 0).then_some(TcpFlagsMatch {
            set: rule.tcp_flags_value,
            clear: rule.tcp_flags_mask & !rule.tcp_flags_value,
        }),
        packet_length: None,
        fragment: rule.fragments.then_some(FragmentMatch::IsFragment),
        action: FlowspecAction::Discard,
    })
}
