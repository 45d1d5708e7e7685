//! Append-only state: one JSON value per line, each append made durable before it returns.
//!
//! # Why
//!
//! Rewriting a whole state file for every change costs in proportion to the state: with
//! 10,000 bans each new ban rewrote 1 MB (0.56 → 4 ms per ban), and a carpet-bombing attack
//! would rewrite the whole attack history for every victim. A journal costs one short write and
//! one `fdatasync` per change, whatever the size of the state; it is compacted (rewritten
//! through [`crate::state::store`]) only once it holds much more than the state it describes.
//!
//! # Crashes and faults
//!
//! - A crash in the middle of an append leaves a last line without its newline: [`Journal::open`]
//!   drops it with a warning (the change it held was never acknowledged: `append` had not
//!   returned) and truncates the file to the last whole line.
//! - A failed append (disk full) truncates the file back to its length before the append, so
//!   a partial line never glues itself to the next one; if even that fails, the journal refuses
//!   further appends until it is [`reset`](Journal::reset) (the caller compacts).
//! - A whole line that does not parse, anywhere before the end, is corruption: an error that
//!   names the file and the line, never a silent start without what followed it.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    marker::PhantomData,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};

/// Largest journal read at start: 256 MiB.
pub const MAX_JOURNAL_BYTES: u64 = 256 << 20;

/// Why a journal could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Opening, reading, writing or syncing failed.
    #[error("journal {}: {source}", .path.display())]
    Io {
        /// The journal.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A whole line does not parse.
    #[error(
        "journal {} is corrupt at line {line}: {message}; restore it from a backup, or move it \
         away to start without the changes it holds",
        .path.display()
    )]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// Larger than [`MAX_JOURNAL_BYTES`].
    #[error("journal {} is {size} bytes, more than the {MAX_JOURNAL_BYTES} accepted; it is not a file this agent wrote", .path.display())]
    TooLarge {
        /// The journal.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// An earlier failed append could not be undone; the journal must be reset first.
    #[error("journal {} has a partial entry from a failed write; it is compacted at the next change", .path.display())]
    Poisoned {
        /// The journal.
        path: PathBuf,
    },
}

/// An open journal of `T` entries.
#[derive(Debug)]
pub struct Journal<T> {
    path: PathBuf,
    file: File,
    /// Length of the whole lines written so far.
    len: u64,
    entries: usize,
    poisoned: bool,
    _entry: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (or creates) the journal at `path` and returns its entries, oldest first.
    pub fn open(path: impl Into<PathBuf>) -> Result<(Self, Vec<T>), JournalError> {
        let path = path.into();
        let io_error = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        let metadata = file.metadata().map_err(io_error)?;
        if !metadata.is_file() {
            return Err(io_error(io::Error::other("not a regular file")));
        }
        let size = metadata.len();
        if size > MAX_JOURNAL_BYTES {
            return Err(JournalError::TooLarge { path, size });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        (&mut file)
            .take(MAX_JOURNAL_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut entries = Vec::new();
        for (i, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let entry = serde_json::from_slice(line).map_err(|e| JournalError::Corrupt {
                path: path.clone(),
                line: i + 1,
                message: e.to_string(),
            })?;
            entries.push(entry);
        }
        if whole < bytes.len() {
            tracing::warn!(
                "journal {}: dropped an unfinished last entry ({} bytes) left by a crash",
                path.display(),
                bytes.len() - whole
            );
            file.set_len(whole as u64).map_err(io_error)?;
            file.sync_data().map_err(io_error)?;
        }
        file.seek(SeekFrom::Start(whole as u64)).map_err(io_error)?;
        let journal = Self {
            path,
            file,
            len: whole as u64,
            entries: entries.len(),
            poisoned: false,
            _entry: PhantomData,
        };
        Ok((journal, entries))
    }

    /// Appends `entries` and syncs them to the disk. On error nothing of them stays in the
    /// file.
    pub fn append(&mut self, entries: &[T]) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned {
                path: self.path.clone(),
            });
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut bytes, entry).map_err(|e| JournalError::Io {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?;
            bytes.push(b'\n');
        }
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Undo a partial write so the next entry starts on a line of its own.
            let undone = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(drop));
            if undone.is_err() {
                self.poisoned = true;
            }
            return Err(JournalError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += bytes.len() as u64;
        self.entries += entries.len();
        Ok(())
    }

    /// Empties the journal (after its entries were written elsewhere, e.g. compacted into a
    /// snapshot) and clears a poisoned state.
    pub fn reset(&mut self) -> Result<(), JournalError> {
        let io_error = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(io_error)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        self.file.sync_data().map_err(io_error)?;
        self.len = 0;
        self.entries = 0;
        self.poisoned = false;
        Ok(())
    }

    /// True after a failed append that could not be undone: appends fail until
    /// [`reset`](Journal::reset).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Entries in the file.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes in the file.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (mut j, found) = Journal::<u32>::open(&path).unwrap();
        assert!(found.is_empty());
        j.append(&[1, 2]).unwrap();
        j.append(&[3]).unwrap();
        assert_eq!(j.entries(), 3);
        drop(j);
        let (j, found) = Journal::<u32>::open(&path).unwrap();
        assert_eq!(found, vec![1, 2, 3]);
        assert_eq!(j.bytes(), 6);
    }

    #[test]
    fn an_unfinished_last_line_is_dropped_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, b"1\n2\n3").unwrap();
        let (mut j, found) = Journal::<u32>::open(&path).unwrap();
        assert_eq!(found, vec![1, 2]);
        j.append(&[4]).unwrap();
        drop(j);
        assert_eq!(std::fs::read(&path).unwrap(), b"1\n2\n4\n");
    }

    #[test]
    fn a_bad_whole_line_is_corruption_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, b"1\nnope\n3\n").unwrap();
        let err = Journal::<u32>::open(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("j.jsonl"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"1\nnope\n3\n",
            "left as it was"
        );
    }

    #[test]
    fn reset_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (mut j, _) = Journal::<u32>::open(&path).unwrap();
        j.append(&[1, 2]).unwrap();
        j.reset().unwrap();
        j.append(&[9]).unwrap();
        drop(j);
        assert_eq!(Journal::<u32>::open(&path).unwrap().1, vec![9]);
    }
}
