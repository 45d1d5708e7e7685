//! The XDP data plane as the agent's threads share it.
//!
//! Two parties touch the loaded program's maps: the XDP poller (a source: reads the counter
//! maps, drains samples, mirrors the engine's watched hosts into the sampling map) and the
//! mitigator (writes drop entries and fingerprint rules, reads their counters). They share it
//! behind one mutex, the agent's only lock on the data path: it is a leaf (nothing else is
//! locked while it is held, and it never guards engine state), held for single map operations
//! by the mitigator and for one poll by the poller. Off Linux, or with XDP disabled, the
//! handle is empty and every call says so.

use crate::{
    accounting::Direction,
    bans::{DropMatch, RuleSpec},
    prefix::Prefix,
};
use std::net::IpAddr;
#[cfg(target_os = "linux")]
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a data-plane operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataPlaneError {
    /// The agent runs without XDP.
    #[error("no XDP data plane (xdp.enabled = false, or not Linux)")]
    Absent,
    /// The kernel refused (table full, map error).
    #[error("{0}")]
    Kernel(String),
}

/// A shared handle on the loaded XDP program (or on nothing).
#[derive(Clone, Default)]
pub struct DataPlaneHandle {
    #[cfg(target_os = "linux")]
    inner: Option<Arc<Mutex<crate::xdp::DataPlane>>>,
    /// `ban.sample_one_in`: the XDP poller samples newly watched hosts at this rate; a reload
    /// changes it.
    sample_one_in: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for DataPlaneHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_present() {
            "DataPlaneHandle(xdp)"
        } else {
            "DataPlaneHandle(none)"
        })
    }
}

impl DataPlaneHandle {
    /// A handle on nothing.
    pub fn absent() -> Self {
        Self::default()
    }

    /// A handle on a loaded program.
    #[cfg(target_os = "linux")]
    pub fn new(dp: crate::xdp::DataPlane) -> Self {
        Self {
            inner: Some(Arc::new(Mutex::new(dp))),
            sample_one_in: Default::default(),
        }
    }

    /// 1 in how many packets of a watched host XDP samples.
    pub fn sample_one_in(&self) -> u32 {
        self.sample_one_in
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets [`DataPlaneHandle::sample_one_in`] (at start, and on a reload).
    pub fn set_sample_one_in(&self, n: u32) {
        self.sample_one_in
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// True when a program is loaded.
    pub fn is_present(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.inner.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Locks the program (a leaf lock: see the module doc).
    #[cfg(target_os = "linux")]
    pub fn lock(&self) -> Option<MutexGuard<'_, crate::xdp::DataPlane>> {
        self.inner
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Replaces the XDP whitelist `old` by `new` (a reload); nothing to do without XDP.
    pub fn replace_whitelist(
        &self,
        _old: &[Prefix],
        _new: &[Prefix],
    ) -> Result<(), DataPlaneError> {
        #[cfg(target_os = "linux")]
        if let Some(mut dp) = self.lock() {
            return dp
                .maps
                .replace_whitelist(_old, _new)
                .map_err(|e| DataPlaneError::Kernel(e.to_string()));
        }
        Ok(())
    }

    /// Makes the XDP program count `networks` from now on (a reload), without detaching it
    /// and without losing any host's counters; returns the added IPv4 networks that count in
    /// the hash table for want of free dense slots. Nothing to do without XDP.
    pub fn set_networks(&self, _networks: &[Prefix]) -> Result<Vec<Prefix>, DataPlaneError> {
        #[cfg(target_os = "linux")]
        if let Some(mut dp) = self.lock() {
            return dp
                .set_networks(_networks)
                .map(|change| change.hashed)
                .map_err(|e| DataPlaneError::Kernel(e.to_string()));
        }
        Ok(Vec::new())
    }

    /// Replaces the whitelisted remote sources in the kernel (a reload); nothing to do
    /// without XDP.
    pub fn set_whitelist_sources(&self, _sources: &[Prefix]) -> Result<(), DataPlaneError> {
        #[cfg(target_os = "linux")]
        if let Some(mut dp) = self.lock() {
            return dp
                .set_whitelist_sources(_sources)
                .map_err(|e| DataPlaneError::Kernel(e.to_string()));
        }
        Ok(())
    }

    /// Adds a drop entry.
    pub fn add_drop(&self, _prefix: Prefix, _m: DropMatch) -> Result<(), DataPlaneError> {
        #[cfg(target_os = "linux")]
        if let Some(mut dp) = self.lock() {
            let dp = &mut *dp;
            return dp
                .tables
                .add(&mut dp.maps, _prefix, _m)
                .map_err(|e| DataPlaneError::Kernel(e.to_string()));
        }
        Err(DataPlaneError::Absent)
    }

    /// Removes a drop entry.
    pub fn remove_drop(&self, _prefix: Prefix, _m: DropMatch) -> Result<(), DataPlaneError> {
        #[cfg(target_os = "linux")]
        if let Some(mut dp) = self.lock() {
            let dp = &mut *dp;
            return dp
                .tables
                .remove(&mut dp.maps, _prefix, _m)
                .map(|_| ())
                .map_err(|e| DataPlaneError::Kernel(e.to_string()));
        }
        Err(DataPlaneError::Absent)
    }

    /// Sets (or, with no rules, clears) the fingerprint rules of a host.
    pub fn set_rules(
        &self,
        _host: IpAddr,
        _direction: Direction,
        _rules: &[RuleSpec],
    ) -> Result<(), DataPlaneError> {
        #[cfg(target_os = "linux")]
        if let Some(mut dp) = self.lock() {
            let dp = &mut *dp;
            return dp
                .tables
                .set_rules(&mut dp.maps, _host, _direction, _rules)
                .map_err(|e| DataPlaneError::Kernel(e.to_string()));
        }
        Err(DataPlaneError::Absent)
    }

    /// What a drop entry dropped so far (packets, bytes).
    pub fn drop_counter(&self, _prefix: Prefix, _m: DropMatch) -> Option<(u64, u64)> {
        #[cfg(target_os = "linux")]
        if let Some(dp) = self.lock() {
            return dp
                .tables
                .counter(&dp.maps, _prefix, _m)
                .map(|c| (c.packets, c.bytes));
        }
        None
    }
}
