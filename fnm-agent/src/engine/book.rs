//! The attack book: every attack the engine opened, with a unique id, kept on disk.
//!
//! Ids are UUID v7 (time-ordered, random in their low bits), so they are unique across
//! restarts and never reused: a new attack on a host whose earlier attack is still mitigated
//! gets its own id and its own record (an id built from the time and the host, as before,
//! could collide after a restart and overwrite a record).
//!
//! The book is kept as a journal, `attacks.jsonl` (one JSON attack record per line, the later
//! line of an id winning), written by a thread of its own (`fnm-attack-book`) and never on the
//! engine thread: a new attack appends its record, its end appends it again, so a carpet
//! bombing opening 104 attacks in one tick costs 104 short lines and one `fdatasync`, not a
//! rewrite of [`crate::detection::history::MAX_ATTACKS`] records of up to 100 samples each
//! (a few megabytes; it used to stall detection for seconds). Once the journal passes
//! [`ROTATE_BYTES`] it is rotated: the old file becomes `attacks.jsonl.1` (one generation
//! kept) and the new one starts with the book as it stands. A history saved by earlier
//! versions (`attacks.json`, one JSON array) is read once, written into the journal and kept
//! as `attacks.json.old`.

use crate::{
    accounting::{Direction, Rates},
    detection::{attack::Attack, history::AttackHistory},
    state::{
        store::{OnBadFile, StateFile, StoreError},
        Journal, JournalError,
    },
};
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

/// Size at which the journal is rotated.
pub const ROTATE_BYTES: u64 = 16 << 20;

/// Why the book could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// A history saved by an earlier version cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal cannot be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The writer thread could not start.
    #[error("starting the attack history writer: {0}")]
    Thread(std::io::Error),
}

/// What the writer is handed: the records that changed, and the whole book for a rotation.
struct Save {
    changed: Vec<Attack>,
    all: Arc<Vec<Attack>>,
}

/// Appends changed records off the engine thread.
struct Writer {
    tx: Option<crossbeam_channel::Sender<Save>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(mut journal: Journal<Attack>) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Save>(64);
        let thread = std::thread::Builder::new()
            .name("fnm-attack-book".into())
            .spawn(move || {
                while let Ok(save) = rx.recv() {
                    if journal.bytes() >= ROTATE_BYTES || journal.is_poisoned() {
                        match rotate(journal.path(), &save.all) {
                            Ok(fresh) => {
                                journal = fresh;
                                continue;
                            }
                            Err(e) => tracing::error!("rotating the attack history: {e}"),
                        }
                    }
                    if let Err(e) = journal.append(&save.changed) {
                        tracing::error!("saving the attack history: {e}");
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

/// Moves the journal at `path` to `<path>.1` and starts a new one holding `all` (newest
/// first, as the book lists them).
fn rotate(path: &Path, all: &[Attack]) -> Result<Journal<Attack>, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::rename(path, previous_generation(path)).map_err(io)?;
    let (mut journal, _) = Journal::open(path)?;
    let oldest_first: Vec<Attack> = all.iter().rev().cloned().collect();
    journal.append(&oldest_first)?;
    Ok(journal)
}

fn previous_generation(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The latest version of each attack in `versions`, oldest attack first.
fn latest_versions(versions: Vec<Attack>) -> VecDeque<Attack> {
    let mut order: Vec<String> = Vec::new();
    let mut latest: HashMap<String, Attack> = HashMap::new();
    for a in versions {
        if !latest.contains_key(&a.id) {
            order.push(a.id.clone());
        }
        latest.insert(a.id.clone(), a);
    }
    order
        .into_iter()
        .filter_map(|id| latest.remove(&id))
        .collect()
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel lets the thread write what it holds and end.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Attacks, ongoing and past, newest first in views.
pub struct AttackBook {
    history: AttackHistory,
    shared: Arc<Vec<Attack>>,
    changed: bool,
    /// Ids whose records changed since they were last handed to the writer.
    unsaved: BTreeSet<String>,
    writer: Option<Writer>,
}

impl AttackBook {
    /// Opens the book kept next to `path` (`attacks.json` names the journal
    /// `attacks.jsonl`). A journal or earlier history that cannot be read stops start-up
    /// with its name (move it aside to start with an empty history).
    pub fn open(path: PathBuf) -> Result<Self, BookError> {
        let journal_path = path.with_extension("jsonl");
        let (mut journal, versions) = Journal::<Attack>::open(&journal_path)?;
        let mut attacks = latest_versions(versions);
        if attacks.is_empty() {
            // A crash between the two steps of a rotation leaves an empty journal and the
            // previous generation; an earlier version left one JSON array.
            let previous = previous_generation(&journal_path);
            let legacy = StateFile::new(&path);
            let (mut found, from) = if previous.exists() {
                let (_, versions) = Journal::<Attack>::open(&previous)?;
                (latest_versions(versions), None)
            } else if let Some(list) = legacy
                .load_json::<VecDeque<Attack>>(OnBadFile::Fail)?
                .found()
            {
                (list, Some(&path))
            } else {
                (VecDeque::new(), None)
            };
            if !found.is_empty() {
                journal.append(found.make_contiguous())?;
            }
            if let Some(old) = from {
                let kept = old.with_extension("json.old");
                std::fs::rename(old, &kept).map_err(|source| JournalError::Io {
                    path: old.clone(),
                    source,
                })?;
                tracing::info!(
                    "attack history converted to {} ({} attacks); the old file is {}",
                    journal_path.display(),
                    found.len(),
                    kept.display()
                );
            }
            attacks = found;
        }
        let mut book = Self::from_history(AttackHistory::from_attacks(attacks));
        book.writer = Some(Writer::start(journal).map_err(BookError::Thread)?);
        Ok(book)
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
            unsaved: BTreeSet::new(),
            writer: None,
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

    /// Records a new attack (saved at the next [`AttackBook::persist`]).
    pub fn insert(&mut self, attack: Attack) {
        self.unsaved.insert(attack.id.clone());
        self.history.upsert(attack);
        self.changed = true;
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
            self.changed = true;
            self.unsaved.extend(ids.iter().cloned());
        }
        ids
    }

    /// Attacks not ended yet.
    pub fn ongoing(&self) -> impl Iterator<Item = &Attack> {
        self.history.list().filter(|a| a.ended_unix_ms.is_none())
    }

    /// Every attack, newest first, shared with the snapshots (rebuilt only when it changed).
    pub fn shared(&mut self) -> Arc<Vec<Attack>> {
        self.refresh();
        self.shared.clone()
    }

    /// Hands the records that changed to the writer thread (once per tick; never waits: when
    /// the writer is still busy, the next tick hands them over with any newer ones).
    pub fn persist(&mut self) {
        self.hand_over(false);
    }

    /// Hands the changed records to the writer, waiting for room (at shutdown).
    fn flush(&mut self) {
        self.hand_over(true);
    }

    fn hand_over(&mut self, wait: bool) {
        self.refresh();
        if self.unsaved.is_empty() {
            return;
        }
        let Some(tx) = self.writer.as_ref().and_then(|w| w.tx.as_ref()) else {
            self.unsaved.clear();
            return;
        };
        let save = Save {
            changed: self
                .unsaved
                .iter()
                .filter_map(|id| self.history.get(id).cloned())
                .collect(),
            all: self.shared.clone(),
        };
        let sent = if wait {
            tx.send(save).is_ok()
        } else {
            tx.try_send(save).is_ok()
        };
        if sent {
            self.unsaved.clear();
        }
    }

    fn refresh(&mut self) {
        if self.changed {
            self.shared = Arc::new(self.history.list().cloned().collect());
            self.changed = false;
        }
    }
}

impl Drop for AttackBook {
    fn drop(&mut self) {
        // The last version reaches the disk before the writer (dropped next) ends.
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history as an earlier version saved it.
    const OLD_HISTORY: &str = r#"[{"id":"1700000000000-10.0.0.1-incoming","host":"10.0.0.1",
            "direction":"incoming","hostgroup":null,"started_unix_ms":1700000000000,
            "ended_unix_ms":null,
            "threshold":{"rate":"udp_pps","value":5000.0,"threshold":2000.0},
            "initial_rates":{"pps":5000.0,"bytes_per_second":0.0,"flows_per_second":0.0,
              "tcp_pps":0.0,"tcp_bytes_per_second":0.0,"udp_pps":5000.0,
              "udp_bytes_per_second":0.0,"icmp_pps":0.0,"icmp_bytes_per_second":0.0,
              "tcp_syn_pps":0.0,"fragments_pps":0.0},
            "peak_rates":{"pps":5000.0,"bytes_per_second":0.0,"flows_per_second":0.0,
              "tcp_pps":0.0,"tcp_bytes_per_second":0.0,"udp_pps":5000.0,
              "udp_bytes_per_second":0.0,"icmp_pps":0.0,"icmp_bytes_per_second":0.0,
              "tcp_syn_pps":0.0,"fragments_pps":0.0},
            "top_flows":[],"samples":[],
            "fingerprint":{"dominant_protocol":"udp","protocol":17,"source_port":[53,0.99],
              "destination_port":null,"packet_size":null,"tcp_flags":0,"syn_share":0.0,
              "fragment_share":0.0,"distinct_sources":1,"top_sources_share":1.0,
              "attack_type":"dns_amplification"},
            "actions":["xdp_rule [RuleSpec { protocol: 17 }]","script"],
            "report_only":false}]"#;

    #[test]
    fn ids_are_unique_even_in_the_same_millisecond() {
        let book = AttackBook::in_memory();
        let a = book.new_id(1_700_000_000_000);
        let b = book.new_id(1_700_000_000_000);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn a_history_saved_by_the_previous_version_loads_and_is_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attacks.json");
        let old = OLD_HISTORY;
        std::fs::write(&path, old).unwrap();
        let mut book = AttackBook::open(path.clone()).unwrap();
        assert_eq!(book.shared().len(), 1);
        assert!(book.shared()[0].actions.is_empty());
        book.end(
            "10.0.0.1".parse().unwrap(),
            Direction::Incoming,
            1_700_000_100_000,
            None,
        );
        book.persist();
        drop(book);
        assert!(!path.exists(), "the old file is kept aside");
        assert!(dir.path().join("attacks.json.old").exists());
        let (_, saved) = Journal::<Attack>::open(dir.path().join("attacks.jsonl")).unwrap();
        assert_eq!(saved.len(), 2, "converted, then its end appended");
        assert_eq!(saved[1].ended_unix_ms, Some(1_700_000_100_000));
        let book = AttackBook::open(path).unwrap();
        assert_eq!(book.ongoing().count(), 0, "the end is read back");
    }

    #[test]
    fn a_corrupt_history_stops_the_start_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attacks.json");
        std::fs::write(&path, "[{").unwrap();
        let e = AttackBook::open(path.clone()).err().expect("refused");
        assert!(e.to_string().contains("attacks.json"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.path().join("attacks.jsonl"), "{\"id\":1}\n").unwrap();
        let e = AttackBook::open(path.clone()).err().expect("refused");
        assert!(e.to_string().contains("attacks.jsonl"), "{e}");
    }

    #[test]
    fn records_are_appended_and_rotation_keeps_the_book() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attacks.json");
        let journal = dir.path().join("attacks.jsonl");
        let (_, versions) = Journal::<Attack>::open(&journal).unwrap();
        assert!(versions.is_empty());
        let mut book = AttackBook::open(path.clone()).unwrap();
        let template = sample_attack();
        for i in 0..3u8 {
            let mut a = template.clone();
            a.id = book.new_id(1_700_000_000_000 + u64::from(i));
            a.host = IpAddr::from([10, 0, 0, i]);
            book.insert(a);
        }
        book.persist();
        book.end(
            IpAddr::from([10, 0, 0, 1]),
            Direction::Incoming,
            1_700_000_009_000,
            None,
        );
        drop(book);
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert_eq!(lines, 4, "three records and one end");
        // Rotation: the journal moves to .1 and the new one holds the whole book.
        let all: Vec<Attack> = {
            let book = AttackBook::open(path.clone()).unwrap();
            book.history.list().cloned().collect()
        };
        let fresh = rotate(&journal, &all).unwrap();
        drop(fresh);
        assert!(previous_generation(&journal).exists());
        let book = AttackBook::open(path.clone()).unwrap();
        assert_eq!(book.history.list().count(), 3);
        assert_eq!(book.ongoing().count(), 2);
        // A crash between the rename and the first append leaves an empty journal: the
        // previous generation is read.
        drop(book);
        std::fs::write(&journal, "").unwrap();
        let book = AttackBook::open(path).unwrap();
        assert_eq!(book.history.list().count(), 3);
    }

    fn sample_attack() -> Attack {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attacks.json");
        std::fs::write(&path, OLD_HISTORY).unwrap();
        let book = AttackBook::open(path).unwrap();
        let first = book.history.list().next().unwrap().clone();
        first
    }
}
