//! The ban list: what is dropped, why, until when; saved to the state directory on every change
//! and read back at start, so bans survive a restart.

use crate::prefix::Prefix;
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

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
    /// I/O on the state file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state file is not a ban list.
    #[error("{path}: not a ban list: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// serde's message.
        message: String,
    },
}

/// Bans keyed by (prefix, match), persisted as JSON.
#[derive(Debug, Default)]
pub struct BanStore {
    bans: BTreeMap<(Prefix, DropMatch), Ban>,
    path: Option<PathBuf>,
}

impl BanStore {
    /// A store persisted at `path` (created on first save); reads existing bans. A corrupt file
    /// is renamed aside (`.corrupt`) and reported, never silently discarded.
    pub fn open(path: &Path) -> Result<Self, BanStoreError> {
        let mut store = Self {
            bans: BTreeMap::new(),
            path: Some(path.to_owned()),
        };
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Ban>>(&bytes) {
                Ok(list) => {
                    for b in list {
                        store.bans.insert((b.prefix, b.match_on), b);
                    }
                }
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    let _ = std::fs::rename(path, &aside);
                    return Err(BanStoreError::Corrupt {
                        path: path.to_owned(),
                        message: format!("{e} (moved to {})", aside.display()),
                    });
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BanStoreError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        Ok(store)
    }

    /// A store kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Adds or replaces a ban and saves. When saving fails the list is left as it was (the
    /// list in memory is always the one on disk) and the error returned.
    pub fn insert(&mut self, ban: Ban) -> Result<(), BanStoreError> {
        let key = (ban.prefix, ban.match_on);
        let previous = self.bans.insert(key, ban);
        if let Err(e) = self.save() {
            match previous {
                Some(old) => self.bans.insert(key, old),
                None => self.bans.remove(&key),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Removes a ban and saves; returns it. When saving fails the ban stays (as on disk) and
    /// the error is returned.
    pub fn remove(&mut self, prefix: Prefix, m: DropMatch) -> Result<Option<Ban>, BanStoreError> {
        let Some(ban) = self.bans.remove(&(prefix, m)) else {
            return Ok(None);
        };
        if let Err(e) = self.save() {
            self.bans.insert((prefix, m), ban);
            return Err(e);
        }
        Ok(Some(ban))
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

    fn save(&self) -> Result<(), BanStoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| BanStoreError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let list: Vec<&Ban> = self.bans.values().collect();
        let json = serde_json::to_vec_pretty(&list).expect("bans serialise");
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, path));
        if written.is_err() {
            // A partial temporary file only takes space from the next attempt.
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)
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
    fn a_failed_save_leaves_the_list_as_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let path = state.join("bans.json");
        let mut s = BanStore::open(&path).unwrap();
        s.insert(ban("198.51.100.7/32", None)).unwrap();
        // The state directory becomes unwritable: a file where the directory was.
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::write(&state, b"not a directory").unwrap();
        let p7 = "198.51.100.7/32".parse().unwrap();
        assert!(s.insert(ban("198.51.100.8/32", None)).is_err());
        assert!(s.insert(ban("198.51.100.7/32", Some(5))).is_err());
        assert!(s.remove(p7, DropMatch::Src).is_err());
        let listed: Vec<_> = s.list().cloned().collect();
        assert_eq!(listed, vec![ban("198.51.100.7/32", None)], "unchanged");
    }

    #[test]
    fn corrupt_state_is_reported_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = BanStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a ban list"), "{err}");
        assert!(dir.path().join("bans.json.corrupt").exists());
        assert!(BanStore::open(&path).unwrap().is_empty());
    }
}
