//! `script`: the notify script, called as FastNetMon calls it:
//! `SCRIPT <ip> <incoming|outgoing|other> <pps> <ban|unban>`, with the attack report on stdin
//! for `ban`. A manual ban passes `other` and `0`, as FastNetMon does. The call is queued to
//! the script runner ([`super::script`]); a full queue is an error of this action.

use super::{
    script::{ScriptCall, ScriptRunner, ScriptStats},
    Action, ActionEnv, ActionError, Applied, LateOutcome, MitigationAction, Target,
};
use crate::{
    config::Config,
    detection::{attack, config::ReportFormat},
};
use std::sync::Arc;

/// The `script` action.
pub struct NotifyScript {
    runner: ScriptRunner,
    format: ReportFormat,
}

impl NotifyScript {
    /// The action when `[ban] script` is set. Must be called inside a Tokio runtime.
    pub fn from_config(config: &Config) -> Option<Self> {
        let path = config.ban.script.clone()?;
        Some(Self {
            runner: ScriptRunner::start(
                path,
                config.ban.script_timeout,
                config.ban.script_parallel,
                config.ban.script_queue,
            ),
            format: config.ban.script_format,
        })
    }

    fn submit(&self, call: ScriptCall) -> Result<(), ActionError> {
        if self.runner.submit(call) {
            Ok(())
        } else {
            Err(ActionError::Unavailable(
                "the notify script's queue is full; call dropped".into(),
            ))
        }
    }
}

#[async_trait::async_trait]
impl MitigationAction for NotifyScript {
    fn action(&self) -> Action {
        Action::Script
    }

    async fn apply(
        &self,
        env: &mut ActionEnv<'_>,
        target: &Target<'_>,
    ) -> Result<Applied, ActionError> {
        let (ip, direction, pps, stdin) = match target {
            Target::Attack { attack, .. } => (
                attack.host,
                attack.direction.as_str(),
                attack.initial_rates.pps as u64,
                match self.format {
                    ReportFormat::Text => attack::text_report(attack),
                    ReportFormat::Json => serde_json::to_string_pretty(attack).unwrap_or_default(),
                },
            ),
            Target::Prefix { prefix, .. } => (
                prefix.addr(),
                crate::mitigator::MANUAL_DIRECTION,
                0,
                String::new(),
            ),
        };
        let outcome = self
            .runner
            .submit_watched(ScriptCall {
                ip,
                direction,
                pps,
                action: "ban",
                stdin,
            })
            .ok_or_else(|| {
                ActionError::Unavailable("the notify script's queue is full; call dropped".into())
            })?;
        // The call runs for up to script_timeout: its outcome is reported when it ends.
        let (late, mitigation) = (env.late.clone(), env.mitigation.to_owned());
        tokio::spawn(async move {
            if let Ok(Err(error)) = outcome.await {
                let _ = late.send(LateOutcome {
                    mitigation,
                    action: Action::Script,
                    error,
                });
            }
        });
        Ok(Applied::Script {
            ip,
            direction: direction.to_owned(),
            pps,
        })
    }

    async fn lift(&self, _env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        let Applied::Script { ip, direction, pps } = applied else {
            return Ok(());
        };
        let direction = match direction.as_str() {
            "incoming" => "incoming",
            "outgoing" => "outgoing",
            _ => crate::mitigator::MANUAL_DIRECTION,
        };
        self.submit(ScriptCall {
            ip: *ip,
            direction,
            pps: *pps,
            action: "unban",
            stdin: String::new(),
        })
    }
}

impl NotifyScript {
    /// The runner's counters.
    pub fn stats(&self) -> Arc<ScriptStats> {
        self.runner.stats.clone()
    }
}
