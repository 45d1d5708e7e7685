//! The attack book: every attack the engine opened, with a unique id, kept on disk.
//!
//! Ids are UUID v7 (time-ordered, random in their low bits), so they are unique across
//! restarts and never reused: a new attack on a host whose earlier attack is still mitigated
//! gets its own id and its own record (an id built from the time and the host, as before,
//! could collide after a restart and overwrite a record).
//!
//! The book is saved by a writer thread of its own (`fnm-attack-book`), at most once per tick
//! and never on the engine thread: with [`crate::detection::history::MAX_ATTACKS`] records of up to 100 samples each, a
//! save is a few megabytes of JSON, and many attacks opening in one tick (a carpet bombing)
//! would otherwise stall detection for seconds. The file is written through
//! [`crate::state::store`] (temp file, fsync, rename, fsync of the directory).

use crate::{
    accounting::{Direction, Rates},
    detection::{attack::Attack, history::AttackHistory},
    state::store::{OnBadFile, StateFile, StoreError},
};
use std::{collections::VecDeque, net::IpAddr, path::PathBuf, sync::Arc};

/// Why the book could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// The saved history cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread could not start.
    #[error("starting the attack history writer: {0}")]
    Thread(std::io::Error),
}

/// Saves the latest version of the book off the engine thread.
struct Writer {
    tx: Option<crossbeam_channel::Sender<Arc<Vec<Attack>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(file: StateFile) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Arc<Vec<Attack>>>(1);
        let thread = std::thread::Builder::new()
            .name("fnm-attack-book".into())
            .spawn(move || {
                while let Ok(mut latest) = rx.recv() {
                    // Only the newest version matters.
                    while let Ok(newer) = rx.try_recv() {
                        latest = newer;
                    }
                    let oldest_first: Vec<&Attack> = latest.iter().rev().collect();
                    if let Err(e) = file.save_json(&oldest_first) {
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
    unsaved: bool,
    writer: Option<Writer>,
}

impl AttackBook {
    /// Opens the book kept at `path`. A file that cannot be read or parsed stops start-up
    /// with its name (move it aside to start with an empty history).
    pub fn open(path: PathBuf) -> Result<Self, BookError> {
        let file = StateFile::new(path);
        let attacks: VecDeque<Attack> =
            file.load_json(OnBadFile::Fail)?.found().unwrap_or_default();
        let mut book = Self::from_history(AttackHistory::from_attacks(attacks));
        book.writer = Some(Writer::start(file).map_err(BookError::Thread)?);
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
            unsaved: false,
            writer: None,
        };
        book.refresh();
        // What was just loaded is what the file holds.
        book.unsaved = false;
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

    /// Hands the book to its writer thread when it changed (once per tick; never waits: when
    /// the writer is still busy, the next tick hands over the newer version).
    pub fn persist(&mut self) {
        self.refresh();
        if !self.unsaved {
            return;
        }
        let Some(tx) = self.writer.as_ref().and_then(|w| w.tx.as_ref()) else {
            self.unsaved = false;
            return;
        };
        if tx.try_send(self.shared.clone()).is_ok() {
            self.unsaved = false;
        }
    }

    /// Hands the latest version to the writer, waiting for it if it is busy (at shutdown).
    fn flush(&mut self) {
        self.refresh();
        if !self.unsaved {
            return;
        }
        if let Some(tx) = self.writer.as_ref().and_then(|w| w.tx.as_ref()) {
            let _ = tx.send(self.shared.clone());
        }
        self.unsaved = false;
    }

    fn refresh(&mut self) {
        if self.changed {
            self.shared = Arc::new(self.history.list().cloned().collect());
            self.changed = false;
            self.unsaved = true;
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
        let old = r#"[{"id":"1700000000000-10.0.0.1-incoming","host":"10.0.0.1",
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
        let saved: Vec<Attack> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(saved[0].ended_unix_ms, Some(1_700_000_100_000));
    }

    #[test]
    fn a_corrupt_history_stops_the_start_by_name_and_a_good_one_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attacks.json");
        std::fs::write(&path, "[{").unwrap();
        let e = AttackBook::open(path.clone()).err().expect("refused");
        assert!(e.to_string().contains("attacks.json"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let mut book = AttackBook::open(path.clone()).unwrap();
        assert!(book.shared().is_empty());
        drop(book);
        assert!(!path.exists() || std::fs::read(&path).unwrap() == b"[]");
    }
}
