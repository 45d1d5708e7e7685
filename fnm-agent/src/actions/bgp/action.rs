//! `bgp_blackhole` and `bgp_flowspec`: routes announced through the configured BGP daemon
//! (see [`super`]). `bgp_blackhole` announces the host route, its subnet or both (`[bgp]
//! announce`), with the communities of each kind of route. A daemon that does not answer fails
//! the action with a retryable error, so the mitigator announces the route once the daemon is
//! back.

use super::{BgpAnnouncer, BgpConfig, FlowspecRule, RouteRole};
use crate::{
    accounting::Direction,
    actions::{Action, ActionEnv, ActionError, Applied, MitigationAction, Target},
    bans::RuleSpec,
    config::Config,
    mitigator::policy::OwnAddresses,
    prefix::Prefix,
};
use std::{net::IpAddr, sync::Arc};

/// The BGP actions of `config`, sharing one announcer. Must be called inside a Tokio runtime.
pub fn actions(config: &Config) -> anyhow::Result<Vec<Box<dyn MitigationAction>>> {
    let bgp = Arc::new(BgpAnnouncer::from_config(&config.actions.bgp)?);
    Ok(vec![
        Box::new(BgpBlackhole::new(
            bgp.clone(),
            config,
            Arc::new(crate::mitigator::policy::host_addresses),
        )),
        Box::new(BgpFlowspec { bgp }),
    ])
}

fn peer(e: super::BgpError) -> ActionError {
    ActionError::Peer(e.to_string())
}

/// `bgp_blackhole`: the target's host route (or the banned prefix) and, as `[bgp] announce`
/// says, its subnet, each with its own communities.
///
/// A subnet route is never announced when it would cover a whitelisted prefix or one of this
/// machine's addresses (it would cut the agent and its BGP sessions off): the host route still
/// goes out, and the refusal is logged.
pub struct BgpBlackhole {
    bgp: Arc<BgpAnnouncer>,
    config: BgpConfig,
    whitelist: Vec<Prefix>,
    own_addresses: OwnAddresses,
}

impl BgpBlackhole {
    /// The action of `config`, announcing through `bgp`; `own_addresses` reads this machine's
    /// addresses (getifaddrs, or a stand-in in tests).
    pub fn new(bgp: Arc<BgpAnnouncer>, config: &Config, own_addresses: OwnAddresses) -> Self {
        Self {
            bgp,
            config: config.actions.bgp.clone(),
            whitelist: config.whitelist.clone(),
            own_addresses,
        }
    }

    /// Why `subnet` must not be announced, if it must not.
    fn subnet_refusal(&self, subnet: Prefix) -> Option<String> {
        if let Some(w) = self
            .whitelist
            .iter()
            .find(|w| subnet.covers(w) || w.covers(&subnet))
        {
            return Some(format!("it covers whitelisted {w}"));
        }
        if subnet.addr().is_loopback() {
            // Never reaches a network interface: nothing to cut off.
            return None;
        }
        match (self.own_addresses)() {
            Ok(own) => own
                .iter()
                .find(|o| !o.prefix.addr().is_loopback() && subnet.covers(&o.prefix))
                .map(|o| format!("it covers {}, {} of this host", o.prefix, o.what)),
            Err(e) => Some(format!("this host's addresses cannot be read: {e}")),
        }
    }

    /// The routes for `target`: (host route, subnet route).
    fn routes(&self, target: &Target<'_>) -> (Option<Prefix>, Option<Prefix>, Vec<String>) {
        let Target::Attack { attack, .. } = target else {
            let (prefix, _) = target.prefix_and_side();
            return (Some(prefix), None, Vec::new());
        };
        let announce = self.config.announce_for(attack.host.is_ipv6());
        let host = announce.host().then(|| Prefix::host(attack.host));
        let mut notes = Vec::new();
        let subnet = if announce.subnet() {
            match self.config.subnet_of(attack.host, attack.network) {
                None => {
                    notes.push(format!("no subnet known for {}", attack.host));
                    None
                }
                Some(subnet) => match self.subnet_refusal(subnet) {
                    Some(why) => {
                        notes.push(format!("subnet route {subnet} not announced: {why}"));
                        None
                    }
                    None => Some(subnet),
                },
            }
        } else {
            None
        };
        (host, subnet, notes)
    }

    async fn announce(&self, prefix: Prefix, role: RouteRole) -> Result<(), ActionError> {
        let communities = self.config.communities_for(role, !prefix.is_ipv4());
        self.bgp
            .announce_blackhole_with(prefix, communities)
            .await
            .map_err(peer)
    }
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
        let (host, subnet, notes) = self.routes(target);
        for note in &notes {
            tracing::warn!("bgp_blackhole: {note}");
        }
        if host.is_none() && subnet.is_none() {
            if notes.is_empty() {
                return Ok(Applied::Nothing {
                    reason: "[bgp] announce(_v6) = \"none\" for this address family".into(),
                });
            }
            return Err(ActionError::Unavailable(notes.join("; ")));
        }
        if let Some(subnet) = subnet {
            self.announce(subnet, RouteRole::Subnet).await?;
        }
        if let Some(prefix) = host {
            self.announce(prefix, RouteRole::Host).await?;
        }
        Ok(Applied::BgpBlackhole {
            prefix: host,
            subnet,
        })
    }

    async fn lift(&self, _env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        if let Applied::BgpBlackhole { prefix, subnet } = applied {
            for route in prefix.iter().chain(subnet) {
                self.bgp.withdraw_blackhole(*route).await.map_err(peer)?;
            }
        }
        Ok(())
    }

    async fn reinstate(
        &self,
        _env: &mut ActionEnv<'_>,
        applied: &Applied,
    ) -> Result<(), ActionError> {
        if let Applied::BgpBlackhole { prefix, subnet } = applied {
            if let Some(subnet) = subnet {
                self.announce(*subnet, RouteRole::Subnet).await?;
            }
            if let Some(prefix) = prefix {
                self.announce(*prefix, RouteRole::Host).await?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bans::DropMatch,
        detection::{
            attack::Attack,
            detector::{Crossing, Opening},
        },
        mitigator::policy::OwnAddress,
    };

    /// The action of `bgp` (the `[bgp]` body; ExaBGP, which opens nothing until used) with
    /// `own` as this machine's only address.
    fn action(bgp: &str, whitelist: &str, own: &'static str) -> BgpBlackhole {
        let config: Config = toml::from_str(&format!(
            "networks = [\"203.0.113.0/24\", \"2001:db8:7::/48\"]\nwhitelist = [{whitelist}]\n\
             [bgp]\nbackend = \"exabgp\"\n{bgp}"
        ))
        .unwrap();
        let announcer = Arc::new(BgpAnnouncer::from_config(&config.actions.bgp).unwrap());
        let own_addresses: OwnAddresses = Arc::new(move || {
            Ok(vec![OwnAddress {
                prefix: own.parse().unwrap(),
                what: "an address of eth0".into(),
            }])
        });
        BgpBlackhole::new(announcer, &config, own_addresses)
    }

    fn attack(host: &str, network: &str) -> Attack {
        let (mut a, _) = Attack::open(
            "id".into(),
            0,
            Opening {
                host: host.parse().unwrap(),
                direction: Direction::Incoming,
                crossing: Crossing {
                    rate: crate::accounting::RateKind::Pps,
                    value: 2.0,
                    threshold: 1.0,
                },
                rates: Default::default(),
                hostgroup: None,
                report_only: false,
            },
            None,
            32,
        );
        a.network = Some(network.parse().unwrap());
        a
    }

    fn routes(action: &BgpBlackhole, a: &Attack) -> (Option<String>, Option<String>, usize) {
        let (host, subnet, notes) = action.routes(&Target::Attack {
            attack: a,
            remotes: &[],
        });
        (
            host.map(|p| p.to_string()),
            subnet.map(|p| p.to_string()),
            notes.len(),
        )
    }

    fn some(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    #[test]
    fn host_subnet_or_both_as_configured() {
        let a = attack("203.0.113.77", "203.0.113.64/26");
        let far = "192.0.2.1/32";
        assert_eq!(
            routes(&action("", "", far), &a),
            (some("203.0.113.77/32"), None, 0)
        );
        assert_eq!(
            routes(&action("announce = \"both\"", "", far), &a),
            (some("203.0.113.77/32"), some("203.0.113.64/26"), 0)
        );
        assert_eq!(
            routes(
                &action("announce = \"subnet\"\nsubnet_length_v4 = 28", "", far),
                &a
            ),
            (None, some("203.0.113.64/28"), 0)
        );
        let v6 = attack("2001:db8:7:1::7", "2001:db8:7::/48");
        assert_eq!(
            routes(
                &action("announce = \"both\"\nsubnet_length_v6 = 64", "", far),
                &v6
            ),
            (some("2001:db8:7:1::7/128"), some("2001:db8:7:1::/64"), 0)
        );
        assert_eq!(
            routes(
                &action("announce = \"both\"\nannounce_v6 = \"none\"", "", far),
                &v6
            ),
            (None, None, 0)
        );
        // A manual ban announces its prefix, whatever `announce` says.
        let manual = Target::Prefix {
            prefix: "203.0.113.0/28".parse().unwrap(),
            match_on: DropMatch::Dst,
        };
        let (host, subnet, _) = action("announce = \"subnet\"", "", far).routes(&manual);
        assert_eq!(
            (host, subnet),
            (Some("203.0.113.0/28".parse().unwrap()), None)
        );
    }

    #[test]
    fn a_subnet_covering_the_agent_or_the_whitelist_is_not_announced() {
        let a = attack("203.0.113.77", "203.0.113.64/26");
        let own = action("announce = \"both\"", "", "203.0.113.100/32");
        assert_eq!(routes(&own, &a), (some("203.0.113.77/32"), None, 1));
        let white = action("announce = \"both\"", "\"203.0.113.80/30\"", "192.0.2.1/32");
        assert_eq!(routes(&white, &a), (some("203.0.113.77/32"), None, 1));
        // Nothing left to announce: the action fails with the reason.
        let only_subnet = action("announce = \"subnet\"", "", "203.0.113.100/32");
        assert_eq!(routes(&only_subnet, &a), (None, None, 1));
    }
}
