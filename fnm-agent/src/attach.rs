//! Attaching the XDP program to an interface and detaching it, with the owner record of its
//! pinned link ([`crate::ownership::LinkOwners`]): at start, on a reload that adds or removes
//! an interface, and at a clean stop.

use crate::{config::Config, dataplane::DataPlaneHandle, ownership::OwnershipError};
use std::path::PathBuf;

/// Why an interface could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A live agent owns the interface's pinned link.
    #[error(transparent)]
    Owned(#[from] OwnershipError),
    /// The kernel refused.
    #[error(
        "{error} (does another XDP program hold {interface}? `ip link show dev {interface}` \
         shows it; a link left pinned by an fnm-agent that crashed is removed with \
         `fnm-agent detach {interface}`)"
    )]
    Kernel {
        /// The interface.
        interface: String,
        /// What the kernel said.
        error: String,
    },
    /// The pin directory could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No XDP program is loaded.
    #[error("no XDP data plane is loaded")]
    Absent,
}

/// The directory of the pinned links (bpffs mounted and the directory made), or `None` when
/// links are not pinned.
pub fn pin_dir(config: &Config) -> Result<Option<PathBuf>, AttachError> {
    if !config.xdp.pin_links {
        return Ok(None);
    }
    let dir = config.xdp.pin_path.clone();
    #[cfg(target_os = "linux")]
    crate::xdp::ensure_bpffs(&dir).map_err(|source| AttachError::Io {
        what: format!("mounting bpffs for {}", dir.display()),
        source,
    })?;
    std::fs::create_dir_all(&dir).map_err(|source| AttachError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    Ok(Some(dir))
}

/// Fails when a live agent other than this one owns one of `interfaces` (checked before
/// anything is loaded or bound, so a second agent leaves the first one alone).
pub fn check_owners(config: &Config) -> Result<(), OwnershipError> {
    if !config.xdp_active() || !config.xdp.pin_links {
        return Ok(());
    }
    let owners = crate::ownership::LinkOwners::new(&config.xdp.pin_path);
    for interface in &config.xdp.interfaces {
        owners.check(interface)?;
    }
    Ok(())
}

/// Attaches the loaded program to `interface` (taking over a link pinned by a dead agent) and
/// records this agent as its owner.
#[cfg(target_os = "linux")]
pub fn attach(
    dp: &DataPlaneHandle,
    config: &Config,
    interface: &str,
) -> Result<crate::xdp::AttachMode, AttachError> {
    let pins = pin_dir(config)?;
    let owners = pins.as_deref().map(crate::ownership::LinkOwners::new);
    if let Some(o) = &owners {
        o.check(interface)?;
    }
    let mode = dp
        .lock()
        .ok_or(AttachError::Absent)?
        .attach(interface, config.xdp.mode, pins.as_deref())
        .map_err(|e| AttachError::Kernel {
            interface: interface.to_owned(),
            error: e.to_string(),
        })?;
    if let Some(o) = &owners {
        // Without its record a later agent would take the link from this one: give it up.
        if let Err(e) = o.claim(interface) {
            if let Some(mut d) = dp.lock() {
                d.detach(interface);
            }
            return Err(e.into());
        }
    }
    Ok(mode)
}

/// Without Linux there is no XDP program to attach.
#[cfg(not(target_os = "linux"))]
pub fn attach(dp: &DataPlaneHandle, config: &Config, interface: &str) -> Result<Mode, AttachError> {
    let _ = (dp, config, interface);
    Err(AttachError::Absent)
}

/// Stand-in for the XDP attach mode off Linux.
#[cfg(not(target_os = "linux"))]
#[derive(Debug, Clone, Copy)]
pub struct Mode;

#[cfg(not(target_os = "linux"))]
impl Mode {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        "none"
    }
}

/// Detaches the program from `interface` (removing its pin) and its owner record.
pub fn detach(dp: &DataPlaneHandle, config: &Config, interface: &str) {
    #[cfg(target_os = "linux")]
    if let Some(mut d) = dp.lock() {
        d.detach(interface);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = dp;
    if config.xdp.pin_links {
        crate::ownership::LinkOwners::new(&config.xdp.pin_path).release(interface);
    }
}

/// Detaches from every interface (a clean stop) and removes their owner records.
pub fn detach_all(dp: &DataPlaneHandle, config: &Config) {
    #[cfg(target_os = "linux")]
    if let Some(mut d) = dp.lock() {
        let attached: Vec<String> = d.attached().map(str::to_owned).collect();
        d.detach_all();
        if config.xdp.pin_links {
            let owners = crate::ownership::LinkOwners::new(&config.xdp.pin_path);
            for i in attached {
                owners.release(&i);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (dp, config);
}

/// What `fnm-agent detach` did for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detached {
    /// The pinned link was removed: the program is off the interface.
    Removed,
    /// Nothing was pinned for it.
    NothingPinned,
}

/// `fnm-agent detach`: removes the links pinned under `xdp.pin_path` for `interfaces` (every
/// pinned one when empty) and their owner records, refusing those a live agent owns. Each
/// interface gets its own result.
pub fn detach_pinned(
    config: &Config,
    interfaces: &[String],
) -> Vec<(String, Result<Detached, AttachError>)> {
    let dir = &config.xdp.pin_path;
    let owners = crate::ownership::LinkOwners::new(dir);
    let interfaces = if interfaces.is_empty() {
        owners.pinned_interfaces()
    } else {
        interfaces.to_vec()
    };
    interfaces
        .into_iter()
        .map(|interface| {
            let result = owners
                .check(&interface)
                .map_err(AttachError::from)
                .and_then(|()| {
                    #[cfg(target_os = "linux")]
                    let removed = crate::xdp::detach_pinned(dir, &interface).map_err(|e| {
                        AttachError::Kernel {
                            interface: interface.clone(),
                            error: e.to_string(),
                        }
                    })?;
                    #[cfg(not(target_os = "linux"))]
                    let removed = false;
                    owners.release(&interface);
                    Ok(if removed {
                        Detached::Removed
                    } else {
                        Detached::NothingPinned
                    })
                });
            (interface, result)
        })
        .collect()
}
