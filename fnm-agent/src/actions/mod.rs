//! Mitigation actions: one trait, one module per action.
//!
//! The mitigator runs the configured list of actions for each attack (and each manual ban).
//! Every action implements [`MitigationAction`]: `apply` does the work and returns what it put
//! in place as an [`Applied`] value, which the mitigator persists; `lift` takes that value back
//! out. An action owns its config section and its errors; adding one touches only this folder:
//! a new module, a variant of [`Action`] (`kind.rs`) and of [`Applied`], its section in
//! [`ActionSections`] (`sections.rs`) and a line in [`registry`].

pub mod bgp;
pub mod fastnetmon_report;
mod kind;
pub mod notify_script;
pub mod script;
mod sections;
pub mod webhook;
pub mod xdp;

pub use kind::Action;
pub use sections::ActionSections;

use crate::{
    accounting::Direction,
    actions::bgp::FlowspecRule,
    bans::{DropMatch, RuleSpec},
    config::Config,
    detection::attack::Attack,
    mitigator::bans::BanManager,
    prefix::Prefix,
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, net::IpAddr};

/// What an action is applied to.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A detected attack.
    Attack {
        /// Its record.
        attack: &'a Attack,
        /// Remote addresses in its samples.
        remotes: &'a [IpAddr],
    },
    /// A manual ban of a prefix on one side.
    Prefix {
        /// The prefix.
        prefix: Prefix,
        /// Which address of a packet it is matched against.
        match_on: DropMatch,
    },
}

impl Target<'_> {
    /// The prefix a whole-target drop or route covers, and the side it matches: the victim's
    /// host route on the destination for an incoming attack (source, outgoing).
    pub fn prefix_and_side(&self) -> (Prefix, DropMatch) {
        match self {
            Target::Attack { attack, .. } => (
                Prefix::host(attack.host),
                match attack.direction {
                    Direction::Incoming => DropMatch::Dst,
                    Direction::Outgoing => DropMatch::Src,
                },
            ),
            Target::Prefix { prefix, match_on } => (*prefix, *match_on),
        }
    }
}

/// What one action put in place, enough to take it back (persisted in the mitigation store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Applied {
    /// XDP fingerprint rules for a host.
    XdpRules {
        /// The host.
        host: IpAddr,
        /// Its direction.
        direction: Direction,
        /// The rules.
        rules: Vec<RuleSpec>,
    },
    /// XDP drop entries (recorded in the ban list too).
    XdpDrops {
        /// (prefix, side) of each entry.
        entries: Vec<(Prefix, DropMatch)>,
    },
    /// The notify script was called with `ban`.
    Script {
        /// First argument.
        ip: IpAddr,
        /// Second argument (`incoming`, `outgoing`, `other`).
        direction: String,
        /// Third argument.
        pps: u64,
    },
    /// BGP blackhole routes.
    BgpBlackhole {
        /// The host route, or a manual ban's prefix; absent when only the subnet was announced
        /// (records of earlier versions always have it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<Prefix>,
        /// The host's subnet route, when announced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subnet: Option<Prefix>,
    },
    /// A BGP flowspec rule.
    BgpFlowspec {
        /// The announced rule.
        rule: FlowspecRule,
    },
    /// The attack was posted to a webhook.
    Webhook {
        /// Where.
        url: String,
    },
    /// Nothing was needed or possible (the reason says why); nothing to lift.
    Nothing {
        /// Why.
        reason: String,
    },
}

/// Why an action failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActionError {
    /// It cannot run in this configuration (no XDP, no BGP backend...); not retried.
    #[error("{0}")]
    Unavailable(String),
    /// The kernel refused (table full, map error); not retried.
    #[error("data plane: {0}")]
    DataPlane(String),
    /// A peer (BGP daemon, web hook) did not answer or refused; retried with back-off.
    #[error("{0}")]
    Peer(String),
    /// The ban list could not be saved; the change was rolled back.
    #[error("state: {0}")]
    State(String),
}

impl ActionError {
    /// True when trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, ActionError::Peer(_))
    }
}

/// What an action may use besides its own state.
pub struct ActionEnv<'a> {
    /// The ban list and the XDP drop tables behind it.
    pub bans: &'a mut BanManager,
    /// When drop entries made for this mitigation end (seconds since the epoch; `None`: when
    /// lifted).
    pub expires: Option<u64>,
    /// Recorded with drop entries: the attack id or the operator's reason.
    pub reason: &'a str,
    /// The mitigation's id.
    pub mitigation: &'a str,
    /// Where an action that finishes after `apply` returned (the script) reports a failure.
    pub late: &'a tokio::sync::mpsc::UnboundedSender<LateOutcome>,
}

/// A failure reported after `apply` had returned success (the script exited non-zero or timed
/// out); the mitigator marks the action `failed`.
#[derive(Debug, Clone)]
pub struct LateOutcome {
    /// The mitigation.
    pub mitigation: String,
    /// The action.
    pub action: Action,
    /// What went wrong.
    pub error: String,
}

/// One mitigation action.
#[async_trait::async_trait]
pub trait MitigationAction: Send + Sync {
    /// Which action this is.
    fn action(&self) -> Action;
    /// Most attempts of a retryable failure before it counts as failed for good (`None`: keep
    /// trying while the mitigation lasts, as for a BGP route).
    fn max_attempts(&self) -> Option<u32> {
        None
    }
    /// Puts the mitigation in place for `target`.
    async fn apply(
        &self,
        env: &mut ActionEnv<'_>,
        target: &Target<'_>,
    ) -> Result<Applied, ActionError>;
    /// Takes back what [`MitigationAction::apply`] put in place.
    async fn lift(&self, env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError>;
    /// Puts back after a restart what [`MitigationAction::apply`] had put in place (kernel
    /// rules and routes do not survive the agent; drop entries come back with the ban list,
    /// and a script or web hook is not called again). Default: nothing to do.
    async fn reinstate(
        &self,
        _env: &mut ActionEnv<'_>,
        _applied: &Applied,
    ) -> Result<(), ActionError> {
        Ok(())
    }
}

/// The actions a configuration can run, by name.
pub struct Registry {
    /// Each action.
    pub actions: BTreeMap<Action, Box<dyn MitigationAction>>,
    /// The notify script's counters, when it is configured.
    pub script_stats: Option<std::sync::Arc<script::ScriptStats>>,
}

/// Every action this configuration can run. Must be called inside a Tokio runtime (the script
/// runner and BGP clients start on it).
pub fn registry(config: &Config) -> anyhow::Result<Registry> {
    registry_except(config, &std::collections::BTreeSet::new())
}

/// [`registry`] without the actions in `keep` (a reload keeps their running objects): the
/// script is not started when `keep` holds it, nor the BGP clients when it holds either BGP
/// action.
pub fn registry_except(
    config: &Config,
    keep: &std::collections::BTreeSet<Action>,
) -> anyhow::Result<Registry> {
    let mut actions: BTreeMap<Action, Box<dyn MitigationAction>> = BTreeMap::new();
    for a in xdp::actions(config) {
        actions.insert(a.action(), a);
    }
    let mut script_stats = None;
    if !keep.contains(&Action::Script) {
        if let Some(a) = notify_script::NotifyScript::from_config(config) {
            script_stats = Some(a.stats());
            actions.insert(Action::Script, Box::new(a));
        }
    }
    let keep_bgp = keep.contains(&Action::BgpBlackhole) || keep.contains(&Action::BgpFlowspec);
    if !keep_bgp
        && (config.uses_action(Action::BgpBlackhole) || config.uses_action(Action::BgpFlowspec))
    {
        for a in bgp::actions(config)? {
            actions.insert(a.action(), a);
        }
    }
    if let Some(a) = webhook::Webhook::from_config(config)? {
        actions.insert(Action::Webhook, Box::new(a));
    }
    Ok(Registry {
        actions,
        script_stats,
    })
}
