//! Mitigations and what each of their actions did, persisted in
//! `<state_dir>/mitigations.json` so that drops, rules and routes are reinstated after a
//! restart, lifted on time, and their outcomes stay visible in the attack records.

use crate::{
    accounting::Direction,
    actions::{Action, Applied},
    bans::{BanOrigin, DropMatch},
    detection::attack::Attack,
    prefix::Prefix,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::VecDeque,
    net::IpAddr,
    path::{Path, PathBuf},
};

/// Lifted mitigations kept (for the attack records' action outcomes), oldest dropped first.
pub const RECENT_LIFTED: usize = 1000;

/// Where an action stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionResult {
    /// Applied.
    Ok,
    /// Failed; retried with back-off (a peer did not answer).
    Retrying,
    /// Failed for good (not available in this configuration, kernel refused).
    Failed,
    /// Applied, then taken back.
    Lifted,
    /// Never tried: the caps on automatic mitigations held it back (the error says which).
    NotApplied,
}

/// One action of a mitigation and its real outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionState {
    /// The action.
    pub action: Action,
    /// Its outcome.
    pub result: ActionResult,
    /// What it put in place (present once applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next retry is due, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_unix_ms: Option<u64>,
}

/// What a mitigation protects against: an attack, or a prefix an operator banned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mitigation {
    /// Unique id: the attack's id, or `manual-<uuid>`.
    pub id: String,
    /// Who asked for it.
    pub origin: BanOrigin,
    /// The attack's host (or the banned prefix's address).
    pub host: IpAddr,
    /// The attack's direction (`None` for a manual ban).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// The prefix and side a whole-target drop or route covers.
    pub prefix: Prefix,
    /// See `prefix`.
    #[serde(rename = "match")]
    pub match_on: DropMatch,
    /// When it started, seconds since the epoch.
    pub started: u64,
    /// When it may end, seconds since the epoch (`None`: when lifted by hand).
    pub expires: Option<u64>,
    /// Attack packets/s when detected (the script's third argument).
    pub pps: u64,
    /// The operator's reason (manual bans).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// False once the engine reported the attack stopped (always false for manual bans).
    pub attack_ongoing: bool,
    /// Its actions, in configured order.
    pub actions: Vec<ActionState>,
    /// When it was lifted, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted: Option<u64>,
    /// The attack record as opened (kept to retry actions after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<Box<Attack>>,
}

/// Why the mitigation file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}; move it aside to start without its mitigations (their drops and routes will not be lifted by fnm)")]
pub struct MitigationStoreError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    active: Vec<Mitigation>,
    #[serde(default)]
    recent: VecDeque<Mitigation>,
}

/// Active and recently lifted mitigations.
#[derive(Debug, Default)]
pub struct MitigationStore {
    active: Vec<Mitigation>,
    recent: VecDeque<Mitigation>,
    path: Option<PathBuf>,
}

impl MitigationStore {
    /// Opens the store at `path` (missing: empty). An unreadable or corrupt file is an error
    /// that names it: starting without it would leave its drops and routes in place forever.
    pub fn open(path: &Path) -> Result<Self, MitigationStoreError> {
        let err = |message: String| MitigationStoreError {
            path: path.to_owned(),
            message,
        };
        let file = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f,
                Err(e) => match serde_json::from_slice::<Vec<LegacyMitigation>>(&bytes) {
                    Ok(old) => {
                        tracing::info!(
                            "{}: converted {} mitigations from the previous format",
                            path.display(),
                            old.len()
                        );
                        File {
                            active: old.into_iter().map(LegacyMitigation::convert).collect(),
                            recent: VecDeque::new(),
                        }
                    }
                    Err(_) => return Err(err(format!("not a mitigation list ({e})"))),
                },
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Self {
            active: file.active,
            recent: file.recent,
            path: Some(path.to_owned()),
        })
    }

    /// A store kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Active mitigations.
    pub fn active(&self) -> &[Mitigation] {
        &self.active
    }

    /// Active mitigations, to change (call [`MitigationStore::save`] after).
    pub fn active_mut(&mut self) -> &mut Vec<Mitigation> {
        &mut self.active
    }

    /// Recently lifted mitigations, newest last.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &Mitigation> {
        self.recent.iter()
    }

    /// Adds an active mitigation and saves.
    pub fn insert(&mut self, m: Mitigation) {
        self.active.push(m);
        self.save();
    }

    /// Moves the active mitigation `id` to the recent list and saves.
    pub fn retire(&mut self, id: &str, lifted: u64) -> Option<Mitigation> {
        let i = self.active.iter().position(|m| m.id == id)?;
        let mut m = self.active.remove(i);
        m.lifted = Some(lifted);
        m.attack = None;
        if self.recent.len() >= RECENT_LIFTED {
            self.recent.pop_front();
        }
        self.recent.push_back(m.clone());
        self.save();
        Some(m)
    }

    /// Records a mitigation none of whose actions was applied (the caps on automatic
    /// mitigations held it back) among the recent ones, so its attack record shows why, and
    /// saves.
    pub fn record_not_applied(&mut self, m: Mitigation) {
        if self.recent.len() >= RECENT_LIFTED {
            self.recent.pop_front();
        }
        self.recent.push_back(m);
        self.save();
    }

    /// Writes the file through [`crate::state::store`] (temp file, fsync, rename, fsync of
    /// the directory); failures are logged.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = FileRef {
            active: &self.active,
            recent: &self.recent,
        };
        if let Err(e) = crate::state::StateFile::new(path).save_json(&file) {
            tracing::error!("saving mitigations: {e}");
        }
    }
}

#[derive(Serialize)]
struct FileRef<'a> {
    active: &'a [Mitigation],
    recent: &'a VecDeque<Mitigation>,
}

/// A mitigation as fnm saved it before the mitigator kept per-action outcomes: what was put in
/// place, without outcomes (everything listed was applied).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyMitigation {
    attack_id: String,
    host: IpAddr,
    direction: Direction,
    started: u64,
    expires: u64,
    pps: u64,
    actions: Vec<Action>,
    rules: Vec<crate::bans::RuleSpec>,
    bans: Vec<(Prefix, DropMatch)>,
    flowspec: Option<crate::actions::bgp::FlowspecRule>,
    blackhole: Option<Prefix>,
}

impl LegacyMitigation {
    fn convert(self) -> Mitigation {
        let host_prefix = Prefix::host(self.host);
        let host_side = match self.direction {
            Direction::Incoming => DropMatch::Dst,
            Direction::Outgoing => DropMatch::Src,
        };
        let ok = |action: Action, applied: Applied| ActionState {
            action,
            result: ActionResult::Ok,
            applied: Some(applied),
            error: None,
            attempts: 1,
            next_retry_unix_ms: None,
        };
        let mut actions = Vec::new();
        if !self.rules.is_empty() {
            actions.push(ok(
                Action::XdpRule,
                Applied::XdpRules {
                    host: self.host,
                    direction: self.direction,
                    rules: self.rules,
                },
            ));
        }
        let (whole, sources): (Vec<_>, Vec<_>) = self
            .bans
            .into_iter()
            .partition(|(p, m)| *p == host_prefix && *m == host_side);
        if !whole.is_empty() {
            actions.push(ok(
                Action::XdpBlackhole,
                Applied::XdpDrops { entries: whole },
            ));
        }
        if !sources.is_empty() {
            actions.push(ok(
                Action::XdpSource,
                Applied::XdpDrops { entries: sources },
            ));
        }
        if self.actions.contains(&Action::Script) {
            actions.push(ok(
                Action::Script,
                Applied::Script {
                    ip: self.host,
                    direction: self.direction.as_str().to_owned(),
                    pps: self.pps,
                },
            ));
        }
        if let Some(prefix) = self.blackhole {
            actions.push(ok(
                Action::BgpBlackhole,
                Applied::BgpBlackhole {
                    prefix: Some(prefix),
                    subnet: None,
                },
            ));
        }
        if let Some(rule) = self.flowspec {
            actions.push(ok(Action::BgpFlowspec, Applied::BgpFlowspec { rule }));
        }
        Mitigation {
            id: self.attack_id,
            origin: BanOrigin::Detection,
            host: self.host,
            direction: Some(self.direction),
            prefix: host_prefix,
            match_on: host_side,
            started: self.started,
            expires: Some(self.expires),
            pps: self.pps,
            reason: String::new(),
            attack_ongoing: false,
            actions,
            lifted: None,
            attack: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_format_is_converted_with_what_it_had_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mitigations.json");
        std::fs::write(
            &path,
            r#"[{"attack_id":"1700000000000-10.0.0.1-incoming","host":"10.0.0.1",
                "direction":"incoming","started":1700000000,"expires":1700001800,"pps":5000,
                "actions":["xdp_rule","script","bgp_blackhole"],
                "rules":[{"protocol":17,"src_port":53}],
                "bans":[],"flowspec":null,"blackhole":"10.0.0.1/32"}]"#,
        )
        .unwrap();
        let store = MitigationStore::open(&path).unwrap();
        let m = &store.active()[0];
        assert_eq!(m.id, "1700000000000-10.0.0.1-incoming");
        let kinds: Vec<Action> = m.actions.iter().map(|a| a.action).collect();
        assert_eq!(
            kinds,
            vec![Action::XdpRule, Action::Script, Action::BgpBlackhole]
        );
        assert!(m.actions.iter().all(|a| a.result == ActionResult::Ok));
    }

    #[test]
    fn garbage_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mitigations.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = MitigationStore::open(&path).unwrap_err();
        assert!(e.to_string().contains("mitigations.json"), "{e}");
    }
}
