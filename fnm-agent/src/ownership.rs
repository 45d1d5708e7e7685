//! One agent per state directory and per interface.
//!
//! Two agents sharing a state directory would overwrite each other's ban list and attack
//! history; two agents on one interface would take the XDP link from each other (the second
//! replaces the first's program, then detaches it when it stops, leaving the first one blind
//! while it looks healthy). So:
//!
//! - [`StateLock`]: an advisory lock (`flock`) on `<state_dir>/fnm-agent.lock`, held for the
//!   agent's life; the file names the holder (pid and process start time).
//! - [`LinkOwners`]: beside each pinned link `<pin_path>/link-<iface>`, an owner record naming
//!   the agent that holds it. bpffs holds only BPF objects and directories, and no name with a
//!   dot, so the record is an empty directory named `link-<iface>-owner-<pid>-<start>`; it
//!   goes away with the pins (a reboot, `fnm-agent detach`). A pinned link is taken over only when its owner is dead: the
//!   pid no longer runs, or runs a process started at another time (a recycled pid).

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    path::{Path, PathBuf},
};

/// Between an interface's pin name and its owner: `link-<iface>-owner-<pid>-<start>`.
const OWNER_INFIX: &str = "-owner-";

/// The name of an interface's pinned link: `link-<iface>`, with `%` and `.` written `%25` and
/// `%2e` (bpffs refuses names with a dot, and VLAN interfaces such as `eth0.100` have one).
pub fn pin_name(interface: &str) -> String {
    format!("link-{}", interface.replace('%', "%25").replace('.', "%2e"))
}

/// The interface of a pinned link's name ([`pin_name`]'s inverse).
fn interface_of(pin: &str) -> Option<String> {
    let encoded = pin.strip_prefix("link-")?;
    Some(encoded.replace("%2e", ".").replace("%25", "%"))
}

/// File name of the state directory's lock.
pub const LOCK_FILE: &str = "fnm-agent.lock";

/// Why this agent may not run (or may not take an interface).
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// Another agent holds the state directory's lock.
    #[error(
        "another fnm-agent ({holder}) uses the state directory {dir}: stop it first, or give \
         this one its own state_dir"
    )]
    StateDirBusy {
        /// Who holds it, as `pid N` (or `pid unknown`).
        holder: String,
        /// The state directory.
        dir: PathBuf,
    },
    /// A live agent owns the pinned XDP link of an interface.
    #[error(
        "another fnm-agent (pid {pid}) owns {interface} (its XDP link is pinned at {pin}): stop \
         it first; `fnm-agent detach {interface}` removes the link once it is gone"
    )]
    InterfaceOwned {
        /// The owner's pid.
        pid: u32,
        /// The interface.
        interface: String,
        /// The pinned link.
        pin: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OwnershipError {
    let what = what.into();
    move |source| OwnershipError::Io { what, source }
}

/// A process as it is told apart from a later one with the same pid: its pid and its start
/// time (clock ticks after boot, field 22 of `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start: u64,
}

impl ProcessId {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self::of(pid).unwrap_or(Self { pid, start: 0 })
    }

    /// The process running as `pid` now, if any.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Self {
            pid,
            start: parse_start_time(&stat)?,
        })
    }

    /// True while this very process runs (its pid runs a process started at the same time).
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now.start == self.start)
    }

    /// `<pid>-<start>`.
    pub fn encode(&self) -> String {
        format!("{}-{}", self.pid, self.start)
    }

    /// Reads [`ProcessId::encode`]'s text (surrounding white space ignored).
    pub fn decode(text: &str) -> Option<Self> {
        let (pid, start) = text.trim().split_once('-')?;
        Some(Self {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })
    }
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted after the
/// last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: starttime is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The state directory's lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock of `state_dir` (created if missing) without waiting, and writes this
    /// process into it. Fails with [`OwnershipError::StateDirBusy`] naming the holder.
    pub fn acquire(state_dir: &Path) -> Result<Self, OwnershipError> {
        std::fs::create_dir_all(state_dir).map_err(io(format!(
            "creating the state directory {}",
            state_dir.display()
        )))?;
        let path = state_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        if !try_lock(&file).map_err(io(format!("locking {}", path.display())))? {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = ProcessId::decode(&text)
                .map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {}", p.pid));
            return Err(OwnershipError::StateDirBusy {
                holder,
                dir: state_dir.to_owned(),
            });
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", ProcessId::current().encode())?;
            file.sync_all()
        };
        write(&mut file).map_err(io(format!("writing {}", path.display())))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file description holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The owner records of the pinned links in one pin directory.
#[derive(Debug, Clone)]
pub struct LinkOwners {
    dir: PathBuf,
}

impl LinkOwners {
    /// The records in `pin_dir`.
    pub fn new(pin_dir: &Path) -> Self {
        Self {
            dir: pin_dir.to_owned(),
        }
    }

    /// Where the link of `interface` is pinned.
    pub fn pin(&self, interface: &str) -> PathBuf {
        self.dir.join(pin_name(interface))
    }

    fn record_prefix(interface: &str) -> String {
        format!("{}{OWNER_INFIX}", pin_name(interface))
    }

    /// Every recorded owner of `interface`'s link (normally one).
    pub fn owners(&self, interface: &str) -> Vec<ProcessId> {
        let prefix = Self::record_prefix(interface);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                ProcessId::decode(name.strip_prefix(&prefix)?)
            })
            .collect()
    }

    /// The live agent other than this one that owns `interface`'s pinned link, if any. A link
    /// pinned without a record, or whose owner is dead, has no live owner.
    pub fn live_owner(&self, interface: &str) -> Option<ProcessId> {
        let me = ProcessId::current();
        if !self.pin(interface).exists() {
            return None;
        }
        self.owners(interface)
            .into_iter()
            .find(|o| *o != me && o.is_alive())
    }

    /// Fails when a live agent other than this one owns `interface`'s pinned link.
    pub fn check(&self, interface: &str) -> Result<(), OwnershipError> {
        match self.live_owner(interface) {
            Some(owner) => Err(OwnershipError::InterfaceOwned {
                pid: owner.pid,
                interface: interface.to_owned(),
                pin: self.pin(interface),
            }),
            None => Ok(()),
        }
    }

    /// Records this process as the owner of `interface`'s link (dead owners' records go).
    pub fn claim(&self, interface: &str) -> Result<(), OwnershipError> {
        self.check(interface)?;
        let me = ProcessId::current();
        self.remove_records(interface, Some(me));
        let record = self
            .dir
            .join(format!("{}{}", Self::record_prefix(interface), me.encode()));
        match std::fs::create_dir(&record) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io(format!("writing the owner record {}", record.display()))(e)),
        }
    }

    /// Removes every owner record of `interface`.
    pub fn release(&self, interface: &str) {
        self.remove_records(interface, None);
    }

    fn remove_records(&self, interface: &str, keep: Option<ProcessId>) {
        let prefix = Self::record_prefix(interface);
        for owner in self.owners(interface) {
            if Some(owner) != keep {
                let path = self.dir.join(format!("{prefix}{}", owner.encode()));
                let _ = std::fs::remove_dir(path);
            }
        }
    }

    /// The interfaces with a link pinned here.
    pub fn pinned_interfaces(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains(OWNER_INFIX) {
                    return None;
                }
                interface_of(&name)
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_after_the_command_name() {
        // A name with spaces and parentheses must not shift the fields.
        let stat = "4242 (fnm (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 \
                    987654 1000 50 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (a) S 1"), None);
        let me = ProcessId::current();
        assert!(me.start > 0);
        assert!(me.is_alive());
    }

    #[test]
    fn pin_names_have_no_dot() {
        assert_eq!(pin_name("eth0"), "link-eth0");
        assert_eq!(pin_name("eth0.100"), "link-eth0%2e100");
        for i in ["eth0", "eth0.100", "a%2eb", "x.y.z"] {
            assert!(!pin_name(i).contains('.'));
            assert_eq!(interface_of(&pin_name(i)).as_deref(), Some(i));
        }
    }

    #[test]
    fn a_recycled_pid_is_not_the_owner() {
        let me = ProcessId::current();
        let older = ProcessId {
            pid: me.pid,
            start: me.start - 1,
        };
        assert!(!older.is_alive(), "same pid, other start time: dead");
        assert_eq!(ProcessId::decode(&me.encode()), Some(me));
        assert_eq!(ProcessId::decode("12-x"), None);
        assert_eq!(ProcessId::decode(""), None);
    }

    #[test]
    fn a_second_lock_on_the_state_dir_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("another fnm-agent (pid {})", std::process::id())),
            "{err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        drop(first);
        let again = StateLock::acquire(dir.path()).expect("free once released");
        assert!(again.path().exists());
    }

    /// A child process that has exited: its pid and start time, dead for sure.
    fn dead_process() -> ProcessId {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!id.is_alive());
        id
    }

    #[test]
    fn a_link_is_taken_only_from_a_dead_owner() {
        let dir = tempfile::tempdir().unwrap();
        let owners = LinkOwners::new(dir.path());
        // No pin: nobody owns it, whatever the records say.
        assert!(owners.check("eth0").is_ok());
        std::fs::write(owners.pin("eth0"), b"").unwrap();
        assert!(owners.check("eth0").is_ok(), "pinned without a record");

        // A live owner (a running child) keeps it.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = ProcessId::of(child.id()).unwrap();
        let record = dir
            .path()
            .join(format!("link-eth0-owner-{}", live.encode()));
        std::fs::create_dir(&record).unwrap();
        let err = owners.claim("eth0").unwrap_err().to_string();
        assert!(
            err.contains(&format!("another fnm-agent (pid {}) owns eth0", live.pid)),
            "{err}"
        );
        assert!(err.contains("fnm-agent detach eth0"), "{err}");
        assert!(owners.check("eth1").is_ok(), "other interfaces are free");
        child.kill().unwrap();
        child.wait().unwrap();

        // Once it is dead (and for a recycled pid) the link is taken over.
        let dead = dead_process();
        std::fs::create_dir(
            dir.path()
                .join(format!("link-eth0-owner-{}", dead.encode())),
        )
        .unwrap();
        owners.claim("eth0").unwrap();
        assert_eq!(owners.owners("eth0"), vec![ProcessId::current()]);
        owners.claim("eth0").unwrap();
        assert!(owners.check("eth0").is_ok(), "our own link");
        assert_eq!(owners.pinned_interfaces(), vec!["eth0".to_owned()]);
        owners.release("eth0");
        assert!(owners.owners("eth0").is_empty());
    }
}
