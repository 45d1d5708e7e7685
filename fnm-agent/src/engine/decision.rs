//! What the engine tells the mitigator: attacks that started and ended. Nothing flows back.

use crate::{
    accounting::Direction,
    detection::{attack::Attack, config::Action},
};
use std::net::IpAddr;

/// One decision of the engine.
#[derive(Debug, Clone)]
pub enum Decision {
    /// An attack opened; `actions` are the ones configured for its host (empty: report only).
    AttackStarted {
        /// The attack record as opened.
        attack: Box<Attack>,
        /// Remote addresses in its samples (sources of an incoming attack, destinations of an
        /// outgoing one), candidates for `xdp_source`.
        remotes: Vec<IpAddr>,
        /// Actions to apply.
        actions: Vec<Action>,
    },
    /// An attack stopped (its rates stayed below `stop_ratio` for `stop_after`).
    AttackEnded {
        /// The attack.
        attack_id: String,
        /// Its host.
        host: IpAddr,
        /// Its direction.
        direction: Direction,
    },
}
