//! The ban list: what is dropped, why, until when; saved to the state directory on every change
//! (through [`crate::state`]: a durable snapshot plus an append-only journal) and read back at
//! start, so bans survive a restart.

use crate::{
    prefix::Prefix,
    state::{Journal, JournalError, OnBadFile, StateFile, StoreError},
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::Path};

/// Which address of a packet a drop entry is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropMatch {
    /// The source address.
    Src,
    /// The destination address.
    Dst,
}

impl DropMatch {
    /// `src` or `dst`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropMatch::Src => "src",
            DropMatch::Dst => "dst",
        }
    }
}

impl std::str::FromStr for DropMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "src" => Ok(DropMatch::Src),
            "dst" => Ok(DropMatch::Dst),
            _ => Err(format!("match must be src or dst, not {s:?}")),
        }
    }
}

/// A fingerprint rule: traffic of a victim matching every set field is dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// IP protocol number; 0 = any.
    #[serde(default)]
    pub protocol: u8,
    /// Source port; 0 = any.
    #[serde(default)]
    pub src_port: u16,
    /// Destination port; 0 = any.
    #[serde(default)]
    pub dst_port: u16,
    /// TCP flags that must equal `tcp_flags_value` after masking.
    #[serde(default)]
    pub tcp_flags_mask: u8,
    /// Expected TCP flags after masking.
    #[serde(default)]
    pub tcp_flags_value: u8,
    /// Match fragments only (including later fragments, which carry no ports).
    #[serde(default)]
    pub fragments: bool,
}

/// Who asked for a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BanOrigin {
    /// The API or CLI.
    Manual,
    /// Attack detection.
    Detection,
}

/// One ban: a prefix dropped on source or destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    /// The banned prefix.
    pub prefix: Prefix,
    /// `src` or `dst`.
    #[serde(rename = "match")]
    pub match_on: DropMatch,
    /// When it was created, seconds since the UNIX epoch.
    pub created: u64,
    /// When it ends, seconds since the UNIX epoch; `None` = until removed.
    pub expires: Option<u64>,
    /// Who asked for it.
    pub origin: BanOrigin,
    /// Free text: the attack id, or the operator's note.
    #[serde(default)]
    pub reason: String,
}

/// Why the ban list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BanStoreError {
    /// The saved list (`bans.json`).
    #[error(transparent)]
    Snapshot(#[from] StoreError),
    /// The changes since (`bans.journal`).
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// One change to the list, as the journal records it. Replaying is idempotent, so a change
/// found both in the snapshot and in the journal (a crash while compacting) is harmless.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum BanChange {
    /// A ban was added or replaced.
    Add {
        /// The ban.
        ban: Ban,
    },
    /// A ban was removed.
    Remove {
        /// Its prefix.
        prefix: Prefix,
        /// Its side.
        #[serde(rename = "match")]
        match_on: DropMatch,
    },
}

/// Where the list is kept: a snapshot and a journal of the changes since.
#[derive(Debug)]
struct Persisted {
    snapshot: StateFile,
    journal: Journal<BanChange>,
}

/// The journal is folded into the snapshot once it holds this many changes and more than
/// twice as many as there are bans.
const COMPACT_AFTER: usize = 1024;

/// Bans keyed by (prefix, match), persisted as a JSON snapshot (`bans.json`) plus a journal
/// of the changes since (`bans.journal`, JSON lines): a ban or unban costs one appended line
/// and one `fdatasync`, not a rewrite of the whole list.
#[derive(Debug, Default)]
pub struct BanStore {
    bans: BTreeMap<(Prefix, DropMatch), Ban>,
    persisted: Option<Persisted>,
}

impl BanStore {
    /// A store persisted at `path` (the snapshot; the journal is next to it, `bans.journal`
    /// for `bans.json`); reads the saved bans. A file that cannot be read or parsed is an
    /// error that names it and how to recover: starting without it would silently lift bans.
    pub fn open(path: &Path) -> Result<Self, BanStoreError> {
        let snapshot = StateFile::new(path);
        let saved: Vec<Ban> = snapshot
            .load_json(OnBadFile::Fail)?
            .found()
            .unwrap_or_default();
        let (journal, changes) = Journal::open(path.with_extension("journal"))?;
        let mut store = Self {
            bans: BTreeMap::new(),
            persisted: None,
        };
        for b in saved {
            store.bans.insert((b.prefix, b.match_on), b);
        }
        for change in changes {
            store.apply(change);
        }
        store.persisted = Some(Persisted { snapshot, journal });
        Ok(store)
    }

    /// A store kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Adds or replaces a ban and saves. When saving fails the list is left as it was (the
    /// list in memory is always the one on disk) and the error returned.
    pub fn insert(&mut self, ban: Ban) -> Result<(), BanStoreError> {
        self.record(BanChange::Add { ban: ban.clone() })?;
        self.bans.insert((ban.prefix, ban.match_on), ban);
        self.compact_if_due();
        Ok(())
    }

    /// Removes a ban and saves; returns it. When saving fails the ban stays (as on disk) and
    /// the error is returned.
    pub fn remove(&mut self, prefix: Prefix, m: DropMatch) -> Result<Option<Ban>, BanStoreError> {
        if !self.bans.contains_key(&(prefix, m)) {
            return Ok(None);
        }
        self.record(BanChange::Remove {
            prefix,
            match_on: m,
        })?;
        let removed = self.bans.remove(&(prefix, m));
        self.compact_if_due();
        Ok(removed)
    }

    /// One ban.
    pub fn get(&self, prefix: Prefix, m: DropMatch) -> Option<&Ban> {
        self.bans.get(&(prefix, m))
    }

    /// All bans.
    pub fn list(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    /// Number of bans.
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    /// True without bans.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// Bans whose end has come at `now` (seconds since the epoch).
    pub fn expired(&self, now: u64) -> Vec<Ban> {
        self.bans
            .values()
            .filter(|b| b.expires.is_some_and(|e| e <= now))
            .cloned()
            .collect()
    }

    fn apply(&mut self, change: BanChange) {
        match change {
            BanChange::Add { ban } => {
                self.bans.insert((ban.prefix, ban.match_on), ban);
            }
            BanChange::Remove { prefix, match_on } => {
                self.bans.remove(&(prefix, match_on));
            }
        }
    }

    /// Makes `change` durable before the list in memory takes it. A journal poisoned by a
    /// failed write is compacted first (the list in memory is still the one on disk).
    fn record(&mut self, change: BanChange) -> Result<(), BanStoreError> {
        if self
            .persisted
            .as_ref()
            .is_some_and(|p| p.journal.is_poisoned())
        {
            self.compact()?;
        }
        let Some(p) = self.persisted.as_mut() else {
            return Ok(());
        };
        p.journal.append(&[change])?;
        Ok(())
    }

    fn compact_if_due(&mut self) {
        let Some(p) = &self.persisted else { return };
        let changes = p.journal.entries();
        if changes >= COMPACT_AFTER && changes > 2 * self.bans.len() {
            if let Err(e) = self.compact() {
                // The journal still holds every change: nothing is lost, the next change
                // tries again.
                tracing::warn!("compacting the ban list: {e}");
            }
        }
    }

    /// Writes the whole list as the snapshot, then empties the journal.
    fn compact(&mut self) -> Result<(), BanStoreError> {
        let Some(p) = self.persisted.as_mut() else {
            return Ok(());
        };
        let list: Vec<&Ban> = self.bans.values().collect();
        p.snapshot.save_json(&list)?;
        p.journal.reset()?;
        Ok(())
    }
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(p: &str, expires: Option<u64>) -> Ban {
        Ban {
            prefix: p.parse().unwrap(),
            match_on: DropMatch::Src,
            created: 100,
            expires,
            origin: BanOrigin::Manual,
            reason: String::new(),
        }
    }

    #[test]
    fn bans_survive_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let mut s = BanStore::open(&path).unwrap();
        s.insert(ban("198.51.100.7/32", Some(200))).unwrap();
        s.insert(ban("2001:db8::/64", None)).unwrap();
        let s = BanStore::open(&path).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.expired(199).len(), 0);
        assert_eq!(s.expired(200).len(), 1);
    }

    #[test]
    fn corrupt_state_stops_start_up_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = BanStore::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("bans.json") && err.contains("corrupt"),
            "{err}"
        );
        assert!(path.exists(), "left in place for the operator");
        std::fs::write(&path, b"[]").unwrap();
        std::fs::write(dir.path().join("bans.journal"), b"{\"op\":\"nope\"}\n").unwrap();
        let err = BanStore::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("bans.journal") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn a_ban_appends_one_line_and_the_journal_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let journal = dir.path().join("bans.journal");
        let mut s = BanStore::open(&path).unwrap();
        s.insert(ban("198.51.100.7/32", None)).unwrap();
        assert!(!path.exists(), "no snapshot rewrite for one ban");
        assert_eq!(
            std::fs::read_to_string(&journal).unwrap().lines().count(),
            1
        );
        let p7: Prefix = "198.51.100.7/32".parse().unwrap();
        // Ban and unban the same prefix until the journal is due for compaction.
        for i in 0..COMPACT_AFTER {
            if i % 2 == 0 {
                s.remove(p7, DropMatch::Src).unwrap();
            } else {
                s.insert(ban("198.51.100.7/32", None)).unwrap();
            }
        }
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert!(lines < COMPACT_AFTER, "compacted: {lines} lines");
        let reopened = BanStore::open(&path).unwrap();
        let want: Vec<Ban> = s.list().cloned().collect();
        assert_eq!(reopened.list().cloned().collect::<Vec<_>>(), want);
        // Unbanning what is not banned writes nothing.
        let before = std::fs::read(&journal).unwrap();
        let mut s = reopened;
        let other: Prefix = "203.0.113.1/32".parse().unwrap();
        assert!(s.remove(other, DropMatch::Dst).unwrap().is_none());
        assert_eq!(std::fs::read(&journal).unwrap(), before);
    }
}
