//! The XDP actions: `xdp_rule` (drop the attack's fingerprint towards the victim),
//! `xdp_source` (drop the few real sources of a non-spoofed attack) and `xdp_blackhole` (drop
//! everything to or from the target). Drop entries go through the ban manager, so they are
//! listed with the bans and survive a restart; fingerprint rules are persisted by the mitigator.

use super::{Action, ActionEnv, ActionError, Applied, MitigationAction, Target};
use crate::{
    accounting::Direction,
    bans::{BanOrigin, DropMatch, RuleSpec},
    config::Config,
    dataplane::DataPlaneError,
    detection::attack::{AttackType, Fingerprint},
    prefix::{Prefix, PrefixSet},
};
use std::sync::Arc;

/// Share of sampled packets the top sources must carry for `xdp_source` to act: below it the
/// sources look spoofed and dropping a few of them would change nothing.
pub const MIN_TOP_SOURCES_SHARE: f64 = 0.9;

fn data_plane_error(e: DataPlaneError) -> ActionError {
    match e {
        DataPlaneError::Absent => ActionError::Unavailable(e.to_string()),
        DataPlaneError::Kernel(m) => ActionError::DataPlane(m),
    }
}

/// The XDP actions of `config`, sharing the data plane the mitigator was given.
pub fn actions(config: &Config) -> Vec<Box<dyn MitigationAction>> {
    let never: Arc<PrefixSet> = Arc::new(
        config
            .whitelist
            .iter()
            .chain(&config.networks)
            .copied()
            .collect(),
    );
    vec![
        Box::new(XdpRule),
        Box::new(XdpBlackhole),
        Box::new(XdpSource {
            max_sources: config.ban.max_source_drops,
            never,
        }),
    ]
}

/// `xdp_rule`: fingerprint rules for the victim (see [`rules_for`]).
pub struct XdpRule;

#[async_trait::async_trait]
impl MitigationAction for XdpRule {
    fn action(&self) -> Action {
        Action::XdpRule
    }

    async fn apply(
        &self,
        env: &mut ActionEnv<'_>,
        target: &Target<'_>,
    ) -> Result<Applied, ActionError> {
        let Target::Attack { attack, .. } = target else {
            return Err(ActionError::Unavailable(
                "xdp_rule needs an attack fingerprint; a manual ban has none".into(),
            ));
        };
        let rules = rules_for(&attack.fingerprint);
        if rules.is_empty() {
            return Ok(Applied::Nothing {
                reason: "no fingerprint specific enough for an XDP rule".into(),
            });
        }
        env.bans
            .dataplane()
            .set_rules(attack.host, attack.direction, &rules)
            .map_err(data_plane_error)?;
        Ok(Applied::XdpRules {
            host: attack.host,
            direction: attack.direction,
            rules,
        })
    }

    async fn lift(&self, env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        if let Applied::XdpRules {
            host, direction, ..
        } = applied
        {
            env.bans
                .dataplane()
                .set_rules(*host, *direction, &[])
                .map_err(data_plane_error)?;
        }
        Ok(())
    }

    async fn reinstate(
        &self,
        env: &mut ActionEnv<'_>,
        applied: &Applied,
    ) -> Result<(), ActionError> {
        if let Applied::XdpRules {
            host,
            direction,
            rules,
        } = applied
        {
            env.bans
                .dataplane()
                .set_rules(*host, *direction, rules)
                .map_err(data_plane_error)?;
        }
        Ok(())
    }
}

/// `xdp_blackhole`: a drop entry for the whole target.
pub struct XdpBlackhole;

#[async_trait::async_trait]
impl MitigationAction for XdpBlackhole {
    fn action(&self) -> Action {
        Action::XdpBlackhole
    }

    async fn apply(
        &self,
        env: &mut ActionEnv<'_>,
        target: &Target<'_>,
    ) -> Result<Applied, ActionError> {
        let (prefix, side) = target.prefix_and_side();
        let origin = match target {
            Target::Attack { .. } => BanOrigin::Detection,
            Target::Prefix { .. } => BanOrigin::Manual,
        };
        env.bans
            .add(prefix, side, env.expires, origin, env.reason.to_owned())?;
        Ok(Applied::XdpDrops {
            entries: vec![(prefix, side)],
        })
    }

    async fn lift(&self, env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        lift_drops(env, applied)
    }
}

fn lift_drops(env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
    let Applied::XdpDrops { entries } = applied else {
        return Ok(());
    };
    let mut first_error = None;
    for (prefix, side) in entries {
        if let Err(e) = env.bans.remove(*prefix, *side) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `xdp_source`: drop entries for the attack's top sources, when they are few and real.
pub struct XdpSource {
    max_sources: usize,
    /// Whitelisted and local addresses: never dropped as sources.
    never: Arc<PrefixSet>,
}

#[async_trait::async_trait]
impl MitigationAction for XdpSource {
    fn action(&self) -> Action {
        Action::XdpSource
    }

    async fn apply(
        &self,
        env: &mut ActionEnv<'_>,
        target: &Target<'_>,
    ) -> Result<Applied, ActionError> {
        let Target::Attack { attack, remotes } = target else {
            return Err(ActionError::Unavailable(
                "xdp_source needs an attack's sources; a manual ban has none".into(),
            ));
        };
        let fp = &attack.fingerprint;
        if fp.top_sources_share < MIN_TOP_SOURCES_SHARE || fp.distinct_sources > self.max_sources {
            return Ok(Applied::Nothing {
                reason: format!(
                    "{} sources, top share {:.2}: they look spoofed",
                    fp.distinct_sources, fp.top_sources_share
                ),
            });
        }
        let side = match attack.direction {
            Direction::Incoming => DropMatch::Src,
            Direction::Outgoing => DropMatch::Dst,
        };
        let mut entries = Vec::new();
        let mut failed = None;
        for remote in remotes
            .iter()
            .filter(|r| !self.never.contains(**r))
            .take(self.max_sources)
        {
            let p = Prefix::host(*remote);
            match env.bans.add(
                p,
                side,
                env.expires,
                BanOrigin::Detection,
                env.reason.to_owned(),
            ) {
                Ok(()) => entries.push((p, side)),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match (entries.is_empty(), failed) {
            (true, Some(e)) => Err(e),
            _ => Ok(Applied::XdpDrops { entries }),
        }
    }

    async fn lift(&self, env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        lift_drops(env, applied)
    }
}

/// Surgical rules dropping the attack's fingerprint towards the victim, so that its other
/// traffic still passes. Empty when the fingerprint has nothing specific enough.
pub fn rules_for(fp: &Fingerprint) -> Vec<RuleSpec> {
    let rule = |protocol: u8| RuleSpec {
        protocol,
        ..Default::default()
    };
    match fp.attack_type {
        AttackType::FragmentFlood => vec![RuleSpec {
            protocol: fp.protocol,
            fragments: true,
            ..Default::default()
        }],
        // SYN without ACK: established connections (and their handshakes' SYN-ACKs) pass.
        AttackType::SynFlood => vec![RuleSpec {
            protocol: 6,
            tcp_flags_mask: 0x12,
            tcp_flags_value: 0x02,
            dst_port: fp.destination_port.map(|(p, _)| p).unwrap_or(0),
            ..Default::default()
        }],
        // Bare ACKs (no SYN/FIN/RST/PSH) towards the flooded port when one dominates.
        AttackType::AckFlood => vec![RuleSpec {
            protocol: 6,
            tcp_flags_mask: 0x1f,
            tcp_flags_value: 0x10,
            dst_port: fp.destination_port.map(|(p, _)| p).unwrap_or(0),
            ..Default::default()
        }],
        AttackType::IcmpFlood => vec![rule(fp.protocol)],
        _ if fp.protocol == 17 => match (fp.source_port, fp.destination_port) {
            (Some((sport, _)), _) => vec![RuleSpec {
                protocol: 17,
                src_port: sport,
                ..Default::default()
            }],
            (None, Some((dport, _))) => vec![RuleSpec {
                protocol: 17,
                dst_port: dport,
                ..Default::default()
            }],
            (None, None) => vec![rule(17)],
        },
        _ if fp.protocol != 0 => vec![rule(fp.protocol)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amplification_drops_only_the_reflected_service() {
        let fp = Fingerprint {
            attack_type: AttackType::DnsAmplification,
            protocol: 17,
            source_port: Some((53, 0.99)),
            ..Default::default()
        };
        assert_eq!(
            rules_for(&fp),
            vec![RuleSpec {
                protocol: 17,
                src_port: 53,
                ..Default::default()
            }]
        );
        let syn = Fingerprint {
            attack_type: AttackType::SynFlood,
            protocol: 6,
            ..Default::default()
        };
        let r = rules_for(&syn);
        assert_eq!((r[0].tcp_flags_mask, r[0].tcp_flags_value), (0x12, 0x02));
    }
}
