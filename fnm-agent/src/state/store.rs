//! Durable state files: written so that a crash or power loss leaves either the old or the new
//! content, never a torn file, and read back so that a bad file is an error that names it.
//!
//! # Why
//!
//! Bans, mitigations, attack records and flow templates must survive a restart; a DDoS agent is
//! restarted exactly when things go wrong (OOM, power, a panicking dependency). A plain
//! `write` can leave half a file, and `write` + `rename` without `fsync` can leave an empty
//! one after a power loss (the rename reaches the disk before the data). On the read side, an
//! agent that treats an unreadable bans file as "no bans" silently lifts every mitigation.
//!
//! # Writing
//!
//! [`StateFile::save`] writes through the `atomic-write-file` crate: a temporary file
//! `.<name>.XXXXXX` in the same directory, `fsync` of the file, `rename` over the target,
//! `fsync` of the directory. Readers see the old file or the new one. A crash before the rename
//! leaves the temporary file behind; the next [`StateFile::load`] removes it (load before the
//! first save of a run, and give each file one writer).
//!
//! # Reading
//!
//! [`StateFile::load`] returns [`Loaded::Missing`] when there is no file (first start) and the
//! parsed content otherwise. A file that cannot be read, is larger than the limit, or does not
//! parse is a [`StoreError`] naming the file and saying how to recover. With
//! [`OnBadFile::SetAside`] the caller chooses instead to move the bad file out of the way, to
//! `<name>.corrupt-<unix time>` (kept for inspection, logged), and to go on without it
//! ([`Loaded::SetAside`]): right for state that is rebuilt by itself (flow templates are
//! resent by exporters), wrong for state whose loss changes what the agent enforces.

use std::{
    ffi::OsString,
    fs::File,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{de::DeserializeOwned, Serialize};

/// Default largest state file read ([`StateFile::with_max_bytes`]): 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Length of the random suffix `atomic-write-file` gives its temporary files.
const TEMPORARY_SUFFIX_LEN: usize = 6;

/// Boxed error of a parser given to [`StateFile::load`].
pub type ParseError = Box<dyn std::error::Error + Send + Sync>;

/// Why a state file could not be written, read or set aside. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Writing, syncing or renaming the new content failed; the previous file is unchanged.
    #[error("cannot write state file {}: {source} (the previous content is unchanged)", .path.display())]
    Write {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The value could not be encoded.
    #[error("cannot encode the state for {}: {source}", .path.display())]
    Encode {
        /// The state file.
        path: PathBuf,
        /// The encoder's error.
        source: ParseError,
    },
    /// The file exists but could not be read.
    #[error(
        "cannot read state file {}: {source}; check its permissions and the disk, or move it \
         away to start without it",
        .path.display()
    )]
    Read {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is larger than the reader accepts.
    #[error(
        "state file {} is {size} bytes, more than the {max} accepted; it is not a file this \
         agent wrote: move it away to start without it",
        .path.display()
    )]
    TooLarge {
        /// The state file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// The content does not parse.
    #[error(
        "state file {} is corrupt: {source}; restore it from a backup, or move it away to start \
         without it",
        .path.display()
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What the parser said.
        source: ParseError,
    },
    /// A bad file could not be renamed out of the way.
    #[error("cannot set aside state file {} as {}: {source}", .path.display(), .to.display())]
    SetAside {
        /// The state file.
        path: PathBuf,
        /// The name it was to get.
        to: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl StoreError {
    /// The state file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Write { path, .. }
            | StoreError::Encode { path, .. }
            | StoreError::Read { path, .. }
            | StoreError::TooLarge { path, .. }
            | StoreError::Corrupt { path, .. }
            | StoreError::SetAside { path, .. } => path,
        }
    }
}

/// What [`StateFile::load`] does with a file it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadFile {
    /// Return the error; the file stays where it is.
    Fail,
    /// Rename the file to `<name>.corrupt-<unix time>`, log it, and return
    /// [`Loaded::SetAside`].
    SetAside,
}

/// The outcome of [`StateFile::load`].
#[derive(Debug)]
pub enum Loaded<T> {
    /// There is no file (first start).
    Missing,
    /// The parsed content.
    Found(T),
    /// The file was bad ([`OnBadFile::SetAside`]) and now has the name `to`.
    SetAside {
        /// Where the bad file is now.
        to: PathBuf,
        /// What was wrong with it.
        error: StoreError,
    },
}

impl<T> Loaded<T> {
    /// The content, if a file was loaded.
    pub fn found(self) -> Option<T> {
        match self {
            Loaded::Found(value) => Some(value),
            _ => None,
        }
    }
}

/// One state file: where it is and how large it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    path: PathBuf,
    max_bytes: u64,
}

impl StateFile {
    /// The state file at `path`, read up to [`DEFAULT_MAX_BYTES`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// Sets the largest file [`load`](Self::load) reads; larger files are
    /// [`StoreError::TooLarge`].
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `bytes`, atomically and durably (see the module docs).
    pub fn save(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let mut file = atomic_write_file::AtomicWriteFile::open(&self.path).map_err(write_error)?;
        file.write_all(bytes).map_err(write_error)?;
        // commit: fsync the file, rename it over the target, fsync the directory. On error
        // the temporary file is removed and the previous content stays.
        file.commit().map_err(write_error)
    }

    /// [`save`](Self::save)s `value` as JSON.
    pub fn save_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|error| StoreError::Encode {
            path: self.path.clone(),
            source: error.into(),
        })?;
        self.save(&bytes)
    }

    /// Reads the file and parses it with `parse`. A missing file is [`Loaded::Missing`]; a
    /// file that cannot be read, is too large or does not parse is an error, or with
    /// [`OnBadFile::SetAside`] is renamed out of the way ([`Loaded::SetAside`]); an error
    /// remains when even the rename fails. Temporary files left by an interrupted
    /// [`save`](Self::save) are removed first.
    pub fn load<T, E>(
        &self,
        on_bad: OnBadFile,
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<Loaded<T>, StoreError>
    where
        E: Into<ParseError>,
    {
        self.remove_stale_temporaries();
        let error = match self.read() {
            Ok(None) => return Ok(Loaded::Missing),
            Ok(Some(bytes)) => match parse(&bytes) {
                Ok(value) => return Ok(Loaded::Found(value)),
                Err(error) => StoreError::Corrupt {
                    path: self.path.clone(),
                    source: error.into(),
                },
            },
            Err(error) => error,
        };
        match on_bad {
            OnBadFile::Fail => Err(error),
            OnBadFile::SetAside => {
                let to = self.set_aside()?;
                Ok(Loaded::SetAside { to, error })
            }
        }
    }

    /// [`load`](Self::load)s JSON into `T`.
    pub fn load_json<T: DeserializeOwned>(
        &self,
        on_bad: OnBadFile,
    ) -> Result<Loaded<T>, StoreError> {
        self.load(on_bad, |bytes| serde_json::from_slice::<T>(bytes))
    }

    /// Renames the file to `<name>.corrupt-<unix time>` (with `-1`, `-2`, ... appended if that
    /// name is taken), syncs the directory, logs it, and returns the new path.
    pub fn set_aside(&self) -> Result<PathBuf, StoreError> {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut base = self.path.as_os_str().to_owned();
        base.push(format!(".corrupt-{seconds}"));
        let mut to = PathBuf::from(&base);
        let mut n = 0u32;
        while to.symlink_metadata().is_ok() {
            n += 1;
            let mut name = base.clone();
            name.push(format!("-{n}"));
            to = PathBuf::from(name);
        }
        std::fs::rename(&self.path, &to).map_err(|source| StoreError::SetAside {
            path: self.path.clone(),
            to: to.clone(),
            source,
        })?;
        sync_directory(self.directory());
        tracing::warn!(
            "state file {} set aside as {}",
            self.path.display(),
            to.display()
        );
        Ok(to)
    }

    /// The file's bytes; `None` when it does not exist.
    fn read(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let read_error = |source| StoreError::Read {
            path: self.path.clone(),
            source,
        };
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(read_error(error)),
        };
        let size = file.metadata().map_err(read_error)?.len();
        if size > self.max_bytes {
            return Err(StoreError::TooLarge {
                path: self.path.clone(),
                size,
                max: self.max_bytes,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // One byte more than the limit tells a file that grew since the size was read.
        let read = file
            .take(self.max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if read as u64 > self.max_bytes {
            return Err(StoreError::TooLarge {
                path: self.path.clone(),
                size: read as u64,
                max: self.max_bytes,
            });
        }
        Ok(Some(bytes))
    }

    /// The directory holding the file.
    fn directory(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// Removes `.<name>.XXXXXX` files (the temporaries of `atomic-write-file`) that an
    /// interrupted save left next to the file; returns how many.
    fn remove_stale_temporaries(&self) -> usize {
        let Some(name) = self.path.file_name() else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(self.directory()) else {
            return 0;
        };
        let mut prefix = OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        let prefix = prefix.as_encoded_bytes();
        let mut removed = 0;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let bytes = file_name.as_encoded_bytes();
            let is_temporary = bytes.len() == prefix.len() + TEMPORARY_SUFFIX_LEN
                && bytes.starts_with(prefix)
                && bytes[prefix.len()..].iter().all(u8::is_ascii_alphanumeric)
                && entry.file_type().is_ok_and(|t| t.is_file());
            if is_temporary && std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!(
                    "removed {} left by an interrupted save of {}",
                    entry.path().display(),
                    self.path.display()
                );
                removed += 1;
            }
        }
        removed
    }
}

/// Makes a rename in `dir` durable; failures are only logged (the rename itself happened).
fn sync_directory(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!("syncing directory {}: {error}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Bans {
        prefixes: Vec<String>,
    }

    fn bans(prefixes: &[&str]) -> Bans {
        Bans {
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("bans.json"));
        assert!(matches!(
            file.load_json::<Bans>(OnBadFile::Fail).unwrap(),
            Loaded::Missing
        ));
        file.save_json(&bans(&["198.51.100.7/32"])).unwrap();
        file.save_json(&bans(&["198.51.100.7/32", "2001:db8::1/128"]))
            .unwrap();
        let loaded = file.load_json::<Bans>(OnBadFile::Fail).unwrap().found();
        assert_eq!(loaded, Some(bans(&["198.51.100.7/32", "2001:db8::1/128"])));
        assert_eq!(entries(dir.path()), ["bans.json"], "no temporary left");
    }

    #[test]
    fn an_interrupted_save_leaves_the_old_content_and_its_temporary_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let file = StateFile::new(&path);
        file.save_json(&bans(&["198.51.100.7/32"])).unwrap();
        // A crash between writing and the rename: the process dies without unwinding, so the
        // temporary file is neither committed nor removed.
        let mut torn = atomic_write_file::AtomicWriteFile::open(&path).unwrap();
        torn.write_all(b"{\"prefixes\": [\"203.0.113.").unwrap();
        std::mem::forget(torn);
        let names = entries(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().any(|n| n.starts_with(".bans.json.")));
        assert_eq!(
            file.load_json::<Bans>(OnBadFile::Fail).unwrap().found(),
            Some(bans(&["198.51.100.7/32"])),
            "readers see the old content"
        );
        assert_eq!(entries(dir.path()), ["bans.json"], "temporary removed");

        // A crash during the very first save: no file yet, only the temporary.
        let first = StateFile::new(dir.path().join("attacks.json"));
        let torn = atomic_write_file::AtomicWriteFile::open(first.path()).unwrap();
        std::mem::forget(torn);
        assert!(matches!(
            first.load_json::<Bans>(OnBadFile::Fail).unwrap(),
            Loaded::Missing
        ));
        assert_eq!(entries(dir.path()), ["bans.json"]);
        // Files that only look alike are left alone.
        for name in [
            ".bans.json.toolong7",
            ".bans.json.ab-12!",
            ".other.json.abcdef",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        file.load_json::<Bans>(OnBadFile::Fail).unwrap();
        assert_eq!(entries(dir.path()).len(), 4);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_stays_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        std::fs::write(&path, b"{\"prefixes\": [\"198.51.").unwrap();
        let file = StateFile::new(&path);
        let error = file.load_json::<Bans>(OnBadFile::Fail).unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
        assert_eq!(error.path(), path);
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("move it away"), "{message}");
        assert_eq!(entries(dir.path()), ["bans.json"], "left in place");

        // Unreadable (a directory where the file should be) and too large are errors too.
        let unreadable = StateFile::new(dir.path().join("sub"));
        std::fs::create_dir(unreadable.path()).unwrap();
        let error = unreadable.load_json::<Bans>(OnBadFile::Fail).unwrap_err();
        assert!(matches!(error, StoreError::Read { .. }), "{error:?}");
        assert!(error.to_string().contains("sub"), "{error}");
        let small = StateFile::new(&path).with_max_bytes(8);
        let error = small.load_json::<Bans>(OnBadFile::Fail).unwrap_err();
        assert!(
            matches!(error, StoreError::TooLarge { max: 8, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn set_aside_moves_a_bad_file_out_of_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let file = StateFile::new(&path);
        let mut set_aside = Vec::new();
        for content in [&b"not json"[..], b"{\"prefixes\": 7}"] {
            std::fs::write(&path, content).unwrap();
            let Loaded::SetAside { to, error } =
                file.load_json::<Bans>(OnBadFile::SetAside).unwrap()
            else {
                panic!("not set aside");
            };
            assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
            let name = to.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("bans.json.corrupt-"), "{name}");
            assert_eq!(std::fs::read(&to).unwrap(), content, "kept as it was");
            assert!(!path.exists());
            set_aside.push(to);
        }
        assert_ne!(set_aside[0], set_aside[1], "two bad files, two names");
        // The next start finds no file and saves a good one.
        assert!(matches!(
            file.load_json::<Bans>(OnBadFile::SetAside).unwrap(),
            Loaded::Missing
        ));
        file.save_json(&bans(&[])).unwrap();
        assert_eq!(
            file.load_json::<Bans>(OnBadFile::SetAside).unwrap().found(),
            Some(bans(&[]))
        );
        assert_eq!(entries(dir.path()).len(), 3);
    }

    #[test]
    fn a_failed_save_names_the_file_and_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing_dir = StateFile::new(dir.path().join("no-such-dir/bans.json"));
        let error = missing_dir.save(b"{}").unwrap_err();
        assert!(matches!(error, StoreError::Write { .. }), "{error:?}");
        assert!(
            error.to_string().contains("no-such-dir/bans.json"),
            "{error}"
        );
    }
}
