//! The attack book: every attack the engine opened, with a unique id, kept on disk.
//!
//! Ids are UUID v7 (time-ordered, random in their low bits), so they are unique across
//! restarts and never reused: a new attack on a host whose earlier attack is still mitigated
//! gets its own id and its own record (an id built from the time and the host, as before,
//! could collide after a restart and overwrite a record).

use crate::{
    accounting::{Direction, Rates},
    detection::{attack::Attack, history::AttackHistory},
};
use std::{net::IpAddr, path::PathBuf, sync::Arc};

/// Attacks, ongoing and past, newest first in views.
pub struct AttackBook {
    history: AttackHistory,
    shared: Arc<Vec<Attack>>,
    changed: bool,
}

impl AttackBook {
    /// Opens the book kept at `path` (see [`AttackHistory::open`]).
    pub fn open(path: PathBuf) -> Self {
        Self::from_history(AttackHistory::open(path))
    }

    /// A book kept in memory only (replay, tests).
    pub fn in_memory() -> Self {
        Self::from_history(AttackHistory::default())
    }

    fn from_history(history: AttackHistory) -> Self {
        let mut book = Self {
            history,
            shared: Arc::new(Vec::new()),
            changed: true,
        };
        book.refresh();
        book
    }

    /// A new attack id, never given before.
    pub fn new_id(&self, unix_ms: u64) -> String {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            unix_ms / 1000,
            ((unix_ms % 1000) * 1_000_000) as u32,
        );
        uuid::Uuid::new_v7(ts).to_string()
    }

    /// Records a new attack.
    pub fn insert(&mut self, attack: Attack) {
        self.history.upsert(attack);
        self.changed = true;
        self.refresh();
    }

    /// Ends the ongoing attacks of (host, direction) at `unix_ms` with their `peak` rates;
    /// returns their ids.
    pub fn end(
        &mut self,
        host: IpAddr,
        direction: Direction,
        unix_ms: u64,
        peak: Option<Rates>,
    ) -> Vec<String> {
        let ids: Vec<String> = self
            .history
            .list()
            .filter(|a| a.host == host && a.direction == direction && a.ended_unix_ms.is_none())
            .map(|a| a.id.clone())
            .collect();
        for id in &ids {
            if let Some(a) = self.history.get_mut(id) {
                a.ended_unix_ms = Some(unix_ms);
                if let Some(p) = peak {
                    a.peak_rates = a.peak_rates.max(&p);
                }
            }
        }
        if !ids.is_empty() {
            self.history.save();
            self.changed = true;
            self.refresh();
        }
        ids
    }

    /// Attacks not ended yet.
    pub fn ongoing(&self) -> impl Iterator<Item = &Attack> {
        self.history.list().filter(|a| a.ended_unix_ms.is_none())
    }

    /// Every attack, newest first, shared with the snapshots (rebuilt only when it changes).
    pub fn shared(&self) -> Arc<Vec<Attack>> {
        self.shared.clone()
    }

    fn refresh(&mut self) {
        if self.changed {
            self.shared = Arc::new(self.history.list().cloned().collect());
            self.changed = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_even_in_the_same_millisecond() {
        let book = AttackBook::in_memory();
        let a = book.new_id(1_700_000_000_000);
        let b = book.new_id(1_700_000_000_000);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }
}
