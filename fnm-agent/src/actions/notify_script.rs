//! `script`: the notify script, called as FastNetMon calls it:
//! `SCRIPT <ip> <incoming|outgoing|other> <pps> <ban|unban>`, with the attack report on stdin
//! for `ban`. A manual ban passes `other` and `0`, as FastNetMon does. The call is queued to
//! the script runner ([`super::script`]); a full queue is an error of this action.
//!
//! With `script_format = "fastnetmon"` the report is FastNetMon 1.2.4's
//! ([`super::fastnetmon_report`]), and once the `ban` call has ended the script is called again
//! as FastNetMon does, `SCRIPT <ip> <direction> <pps> attack_details`, with the packet samples
//! on stdin (when the attack has any). The calls for an attack (`ban`, `attack_details`,
//! `unban`) carry its id in `FNM_ATTACK_ID`.

use super::{
    fastnetmon_report,
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
        let (ip, direction, pps, stdin, env_vars, details) = match target {
            Target::Attack { attack, .. } => {
                let (stdin, details) = match self.format {
                    ReportFormat::Text => (attack::text_report(attack), None),
                    ReportFormat::Json => (
                        serde_json::to_string_pretty(attack).unwrap_or_default(),
                        None,
                    ),
                    ReportFormat::Fastnetmon => (
                        fastnetmon_report::ban_report(attack),
                        fastnetmon_report::details_report(attack),
                    ),
                };
                (
                    attack.host,
                    attack.direction.as_str(),
                    attack.initial_rates.pps as u64,
                    stdin,
                    vec![("FNM_ATTACK_ID", attack.id.clone())],
                    details,
                )
            }
            Target::Prefix { prefix, .. } => (
                prefix.addr(),
                crate::mitigator::MANUAL_DIRECTION,
                0,
                String::new(),
                Vec::new(),
                None,
            ),
        };
        let details = details.map(|stdin| ScriptCall {
            ip,
            direction,
            pps,
            action: "attack_details",
            stdin,
            env: env_vars.clone(),
        });
        let outcome = self
            .runner
            .submit_watched(ScriptCall {
                ip,
                direction,
                pps,
                action: "ban",
                stdin,
                env: env_vars,
            })
            .ok_or_else(|| {
                ActionError::Unavailable("the notify script's queue is full; call dropped".into())
            })?;
        // The call runs for up to script_timeout: its outcome is reported when it ends. The
        // `attack_details` call follows it, as in FastNetMon (its failure is the runner's to
        // count and log; the ban stands).
        let (late, mitigation) = (env.late.clone(), env.mitigation.to_owned());
        let runner = self.runner.clone();
        tokio::spawn(async move {
            if let Ok(Err(error)) = outcome.await {
                let _ = late.send(LateOutcome {
                    mitigation,
                    action: Action::Script,
                    error,
                });
            }
            if let Some(call) = details {
                runner.submit(call);
            }
        });
        Ok(Applied::Script {
            ip,
            direction: direction.to_owned(),
            pps,
        })
    }

    async fn lift(&self, env: &mut ActionEnv<'_>, applied: &Applied) -> Result<(), ActionError> {
        let Applied::Script { ip, direction, pps } = applied else {
            return Ok(());
        };
        let direction = match direction.as_str() {
            "incoming" => "incoming",
            "outgoing" => "outgoing",
            _ => crate::mitigator::MANUAL_DIRECTION,
        };
        // The mitigation of a detected attack has the attack's id.
        let env_vars = if direction == crate::mitigator::MANUAL_DIRECTION {
            Vec::new()
        } else {
            vec![("FNM_ATTACK_ID", env.mitigation.to_owned())]
        };
        self.submit(ScriptCall {
            ip: *ip,
            direction,
            pps: *pps,
            action: "unban",
            stdin: String::new(),
            env: env_vars,
        })
    }
}

impl NotifyScript {
    /// The runner's counters.
    pub fn stats(&self) -> Arc<ScriptStats> {
        self.runner.stats.clone()
    }
}
