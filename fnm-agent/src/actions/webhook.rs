//! `webhook`: POSTs the attack record as JSON to `[webhook] url` when a mitigation starts, and
//! `{"event": "unban", ...}` when it is lifted. A server that does not answer within `timeout`
//! or answers with an error status fails the attempt; the mitigator tries again with back-off,
//! `retries` times at most.
//!
//! The body of a ban: `{"event": "ban", "attack": <the attack record>}` for an attack, or
//! `{"event": "ban", "prefix": ..., "match": ...}` for a manual ban; of an unban:
//! `{"event": "unban", "id": ..., "prefix": ..., "match": ...}`.

use super::{Action, ActionEnv, ActionError, Applied, MitigationAction, Target};
use crate::config::{humantime_serde_compat, Config};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// `[webhook]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (`http://`, or `https://` on Linux builds). Default: none (the action is
    /// not available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Longest wait for an answer. Default: `5s`.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Attempts after the first failed one (with back-off: 1 s, 2 s, 4 s ...). Default: `3`.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retries() -> u32 {
    3
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout: default_timeout(),
            retries: default_retries(),
        }
    }
}

impl WebhookConfig {
    /// Checks the URL, and that there is one when the action is `used`.
    pub fn validate(&self, used: bool) -> Result<(), String> {
        if used && self.url.is_none() {
            return Err("the webhook action is used but webhook.url is not set".into());
        }
        if let Some(url) = &self.url {
            let parsed =
                reqwest::Url::parse(url).map_err(|e| format!("webhook.url {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("webhook.url {url:?}: must be http:// or https://"));
            }
        }
        Ok(())
    }
}

/// The `webhook` action.
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    retries: u32,
}

impl Webhook {
    /// The action when `[webhook] url` is set.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(url) = config.actions.webhook.url.clone() else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(config.actions.webhook.timeout)
            .user_agent(concat!("fnm-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Self {
            client,
            url,
            retries: config.actions.webhook.retries,
        }))
    }

    async fn post(&self, body: serde_json::Value) -> Result<(), ActionError> {
        let answer = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                ActionError::Peer(format!(
                    "webhook {}: {}",
                    self.url,
                    crate::errors::chain(&e)
                ))
            })?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ActionError::Peer(format!(
                "webhook {} answered {status}",
                self.url
            )))
        }
    }
}

#[async_trait::async_trait]
impl MitigationAction for Webhook {
    fn action(&self) -> Action {
        Action::Webhook
    }

    fn max_attempts(&self) -> Option<u32> {
        Some(self.retries.saturating_add(1))
    }

    async fn apply(
        &self,
        env: &mut ActionEnv<'_>,
        target: &Target<'_>,
    ) -> Result<Applied, ActionError> {
        let body = match target {
            Target::Attack { attack, .. } => json!({"event": "ban", "attack": attack}),
            Target::Prefix { prefix, match_on } => json!({
                "event": "ban",
                "id": env.reason,
                "prefix": prefix,
                "match": match_on,
            }),
        };
        self.post(body).await?;
        Ok(Applied::Webhook {
            url: self.url.clone(),
        })
    }

    async fn lift(&self, env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        if let Applied::Webhook { .. } = applied {
            self.post(json!({"event": "unban", "id": env.reason}))
                .await?;
        }
        Ok(())
    }
}
