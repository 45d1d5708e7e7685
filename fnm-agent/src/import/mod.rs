//! `fnm-agent import-fastnetmon`: a FastNetMon 1.2.4 configuration (`/etc/fastnetmon.conf`)
//! turned into fnm's, as commented TOML that `fnm-agent check-config` accepts.
//!
//! [`fastnetmon_conf`] reads the file as FastNetMon does; `convert` maps each option with an
//! fnm equivalent (networks and whitelist files, thresholds, directions, hostgroups, ban time,
//! notify script, BGP, collectors, mirror capture, metrics, log level) and lists, at the end of
//! the output, every other option with why it was not carried. The option-by-option table is
//! docs/migrating-from-fastnetmon.md.

mod convert;
pub mod fastnetmon_conf;
mod writer;

pub use convert::{convert, import, ImportOptions, Imported, FLOWS_NOTE, PENDING_KEYS};
use std::path::PathBuf;

/// Why an import could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The FastNetMon configuration could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
