//! The bounded list of attacks the attack book keeps (oldest dropped first). Persistence is the
//! book's ([`crate::engine::book`]).

use super::attack::Attack;
use std::collections::VecDeque;

/// Attacks kept (oldest dropped first).
pub const MAX_ATTACKS: usize = 1000;

/// Recent attacks, newest last.
#[derive(Debug, Default)]
pub struct AttackHistory {
    attacks: VecDeque<Attack>,
}

impl AttackHistory {
    /// A history holding `attacks` (oldest first; only the newest [`MAX_ATTACKS`] are kept).
    pub fn from_attacks(mut attacks: VecDeque<Attack>) -> Self {
        while attacks.len() > MAX_ATTACKS {
            attacks.pop_front();
        }
        Self { attacks }
    }

    /// Adds or replaces (by id) an attack.
    pub fn upsert(&mut self, attack: Attack) {
        if let Some(a) = self.attacks.iter_mut().find(|a| a.id == attack.id) {
            *a = attack;
        } else {
            if self.attacks.len() >= MAX_ATTACKS {
                self.attacks.pop_front();
            }
            self.attacks.push_back(attack);
        }
    }

    /// One attack by id.
    pub fn get(&self, id: &str) -> Option<&Attack> {
        self.attacks.iter().find(|a| a.id == id)
    }

    /// Mutable attack by id.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Attack> {
        self.attacks.iter_mut().find(|a| a.id == id)
    }

    /// All attacks, newest first.
    pub fn list(&self) -> impl Iterator<Item = &Attack> {
        self.attacks.iter().rev()
    }
}
