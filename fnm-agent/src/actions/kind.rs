//! The names of the actions, as the config writes them.

use serde::{Deserialize, Serialize};

/// What a ban does; the serde names are the config names (`[ban] actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// XDP rule dropping the attack's fingerprint towards the victim.
    XdpRule,
    /// XDP drop of the attack's top sources (non-spoofed attacks only).
    XdpSource,
    /// XDP drop of everything to the victim.
    XdpBlackhole,
    /// The notify script.
    Script,
    /// BGP blackhole route for the victim.
    BgpBlackhole,
    /// BGP flowspec rule for the fingerprint.
    BgpFlowspec,
    /// POST the attack to `[webhook] url`.
    Webhook,
}

impl Action {
    /// Every action, in config order.
    pub const ALL: [Action; 7] = [
        Action::XdpRule,
        Action::XdpSource,
        Action::XdpBlackhole,
        Action::Script,
        Action::BgpBlackhole,
        Action::BgpFlowspec,
        Action::Webhook,
    ];

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::XdpRule => "xdp_rule",
            Action::XdpSource => "xdp_source",
            Action::XdpBlackhole => "xdp_blackhole",
            Action::Script => "script",
            Action::BgpBlackhole => "bgp_blackhole",
            Action::BgpFlowspec => "bgp_flowspec",
            Action::Webhook => "webhook",
        }
    }

    /// True when the action drops or diverts everything to or from the host, not only the
    /// attack (never automatic for the agent's own addresses).
    pub fn blackholes_the_host(self) -> bool {
        matches!(self, Action::XdpBlackhole | Action::BgpBlackhole)
    }

    /// True when the action needs an attack's fingerprint or sources, so a manual ban (a
    /// prefix only) cannot run it.
    pub fn needs_attack(self) -> bool {
        matches!(
            self,
            Action::XdpRule | Action::XdpSource | Action::BgpFlowspec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_action_once_by_its_serde_name() {
        let mut names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        for (a, name) in Action::ALL.iter().zip(&names) {
            let parsed: Action = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(parsed, *a);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
    }
}
