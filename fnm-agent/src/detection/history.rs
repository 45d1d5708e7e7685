//! Bounded attack history, kept on disk (`<state_dir>/attacks.json`) across restarts.

use super::attack::Attack;
use std::{collections::VecDeque, path::PathBuf};

/// Attacks kept (oldest dropped first).
pub const MAX_ATTACKS: usize = 1000;

/// Recent attacks, newest last.
#[derive(Debug, Default)]
pub struct AttackHistory {
    attacks: VecDeque<Attack>,
    path: Option<PathBuf>,
}

impl AttackHistory {
    /// Opens the history at `path`; an unreadable file is reported and set aside.
    pub fn open(path: PathBuf) -> Self {
        let attacks = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<VecDeque<Attack>>(&bytes) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!("{}: not an attack history ({e}); set aside", path.display());
                    let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                    VecDeque::new()
                }
            },
            Err(_) => VecDeque::new(),
        };
        Self {
            attacks,
            path: Some(path),
        }
    }

    /// Adds or replaces (by id) an attack and saves.
    pub fn upsert(&mut self, attack: Attack) {
        if let Some(a) = self.attacks.iter_mut().find(|a| a.id == attack.id) {
            *a = attack;
        } else {
            if self.attacks.len() >= MAX_ATTACKS {
                self.attacks.pop_front();
            }
            self.attacks.push_back(attack);
        }
        self.save();
    }

    /// One attack by id.
    pub fn get(&self, id: &str) -> Option<&Attack> {
        self.attacks.iter().find(|a| a.id == id)
    }

    /// Mutable attack by id (call [`AttackHistory::save`] after changing it).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Attack> {
        self.attacks.iter_mut().find(|a| a.id == id)
    }

    /// All attacks, newest first.
    pub fn list(&self) -> impl Iterator<Item = &Attack> {
        self.attacks.iter().rev()
    }

    /// Writes the history (atomically); failures are logged.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec(&self.attacks)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!("saving attack history to {}: {e}", path.display());
        }
    }
}
