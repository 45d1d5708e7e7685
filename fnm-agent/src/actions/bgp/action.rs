//! `bgp_blackhole` and `bgp_flowspec`: routes announced through the configured BGP daemon
//! (see [`super`]). A daemon that does not answer fails the action with a retryable error, so
//! the mitigator announces the route once the daemon is back.

use super::{BgpAnnouncer, FlowspecRule};
use crate::{
    accounting::Direction,
    actions::{Action, ActionEnv, ActionError, Applied, MitigationAction, Target},
    bans::RuleSpec,
    config::Config,
    prefix::Prefix,
};
use std::{net::IpAddr, sync::Arc};

/// The BGP actions of `config`, sharing one announcer. Must be called inside a Tokio runtime.
pub fn actions(config: &Config) -> anyhow::Result<Vec<Box<dyn MitigationAction>>> {
    let bgp = Arc::new(BgpAnnouncer::from_config(&config.actions.bgp)?);
    Ok(vec![
        Box::new(BgpBlackhole { bgp: bgp.clone() }),
        Box::new(BgpFlowspec { bgp }),
    ])
}

fn peer(e: super::BgpError) -> ActionError {
    ActionError::Peer(e.to_string())
}

/// `bgp_blackhole`: the target's host route (or the banned prefix) with the blackhole
/// communities.
pub struct BgpBlackhole {
    bgp: Arc<BgpAnnouncer>,
}

#[async_trait::async_trait]
impl MitigationAction for BgpBlackhole {
    fn action(&self) -> Action {
        Action::BgpBlackhole
    }

    async fn apply(
        &self,
        _env: &mut ActionEnv<'_>,
        target: &Target<'_>,
    ) -> Result<Applied, ActionError> {
        let (prefix, _) = target.prefix_and_side();
        self.bgp.announce_blackhole(prefix).await.map_err(peer)?;
        Ok(Applied::BgpBlackhole { prefix })
    }

    async fn lift(&self, _env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        if let Applied::BgpBlackhole { prefix } = applied {
            self.bgp.withdraw_blackhole(*prefix).await.map_err(peer)?;
        }
        Ok(())
    }

    async fn reinstate(
        &self,
        _env: &mut ActionEnv<'_>,
        applied: &Applied,
    ) -> Result<(), ActionError> {
        if let Applied::BgpBlackhole { prefix } = applied {
            self.bgp.announce_blackhole(*prefix).await.map_err(peer)?;
        }
        Ok(())
    }
}

/// `bgp_flowspec`: a flowspec rule for the attack's fingerprint.
pub struct BgpFlowspec {
    bgp: Arc<BgpAnnouncer>,
}

#[async_trait::async_trait]
impl MitigationAction for BgpFlowspec {
    fn action(&self) -> Action {
        Action::BgpFlowspec
    }

    async fn apply(
        &self,
        _env: &mut ActionEnv<'_>,
        target: &Target<'_>,
    ) -> Result<Applied, ActionError> {
        let Target::Attack { attack, .. } = target else {
            return Err(ActionError::Unavailable(
                "bgp_flowspec needs an attack fingerprint; a manual ban has none".into(),
            ));
        };
        let rules = crate::actions::xdp::rules_for(&attack.fingerprint);
        let Some(rule) = flowspec_for(attack.host, attack.direction, &rules) else {
            return Ok(Applied::Nothing {
                reason: "no fingerprint specific enough for a flowspec rule".into(),
            });
        };
        self.bgp.announce_flowspec(&rule).await.map_err(peer)?;
        Ok(Applied::BgpFlowspec { rule })
    }

    async fn lift(&self, _env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        if let Applied::BgpFlowspec { rule } = applied {
            self.bgp.withdraw_flowspec(rule).await.map_err(peer)?;
        }
        Ok(())
    }

    async fn reinstate(
        &self,
        _env: &mut ActionEnv<'_>,
        applied: &Applied,
    ) -> Result<(), ActionError> {
        if let Applied::BgpFlowspec { rule } = applied {
            self.bgp.announce_flowspec(rule).await.map_err(peer)?;
        }
        Ok(())
    }
}

/// A single-port match, or none for port 0 (any).
fn ports(port: u16) -> Vec<super::ValueRange> {
    if port == 0 {
        Vec::new()
    } else {
        vec![super::ValueRange::single(port)]
    }
}

/// The flowspec rule matching a fingerprint's XDP rules towards `host`.
pub fn flowspec_for(
    host: IpAddr,
    direction: Direction,
    rules: &[RuleSpec],
) -> Option<FlowspecRule> {
    use super::{FlowspecAction, FragmentMatch, TcpFlagsMatch};
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
