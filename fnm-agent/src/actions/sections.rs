//! The config sections that belong to actions (`[bgp]`, `[webhook]`, ...).
//!
//! They are flattened into the top level of [`crate::config::Config`], so an action adds its
//! section here, next to its module, without touching the config module.

use super::{bgp::BgpConfig, webhook::WebhookConfig, Action};
use serde::{Deserialize, Serialize};

/// Every action's own section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionSections {
    /// BGP announcements (`bgp_blackhole`, `bgp_flowspec` actions).
    #[serde(default)]
    pub bgp: BgpConfig,
    /// The `webhook` action.
    #[serde(default)]
    pub webhook: WebhookConfig,
}

impl ActionSections {
    /// Checks each section, and that every action the config uses (`uses`) has what it
    /// needs.
    pub fn validate(&self, uses: &dyn Fn(Action) -> bool) -> Result<(), String> {
        self.bgp.validate()?;
        self.webhook.validate(uses(Action::Webhook))?;
        Ok(())
    }
}
