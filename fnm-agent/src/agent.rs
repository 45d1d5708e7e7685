//! The running agent: shared state, the poll loop, and ban operations.

use crate::{
    accounting::Accounting,
    bans::{unix_now, Ban, BanOrigin, BanStore, BanStoreError, DropMatch},
    config::Config,
    prefix::{Prefix, PrefixSet},
};
use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Why an agent operation failed; the API maps each kind to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request contradicts the configuration (e.g. banning a whitelisted prefix).
    #[error("{0}")]
    Conflict(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The data plane refused (table full, kernel error).
    #[error("data plane: {0}")]
    DataPlane(String),
    /// The state directory could not be written.
    #[error("state: {0}")]
    State(#[from] BanStoreError),
}

/// Counters of the XDP data plane as last polled, platform-neutral.
pub type XdpStatus = serde_json::Value;

/// Everything the API, the metrics and the poll loop share.
pub struct Agent {
    /// The configuration the agent runs with.
    pub config: Config,
    accounting: Mutex<Accounting>,
    bans: Mutex<BanStore>,
    whitelist: PrefixSet,
    #[cfg(target_os = "linux")]
    dataplane: Mutex<Option<crate::xdp::DataPlane>>,
    xdp_status: Mutex<Option<XdpStatus>>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock must not take the whole agent down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Agent {
    /// Builds the agent's state; opens the ban list in the state directory.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let networks: PrefixSet = config.networks.iter().copied().collect();
        let accounting = Accounting::new(
            networks,
            (config.xdp.max_hosts as usize).saturating_mul(2).max(1024),
            config.xdp.max_flows as usize,
            config.poll_interval.as_millis() as u64,
        );
        let bans_path = config.state_dir.join("bans.json");
        let bans = match BanStore::open(&bans_path) {
            Ok(b) => b,
            Err(e @ BanStoreError::Corrupt { .. }) => {
                tracing::error!("{e}; starting with no bans");
                BanStore::open(&bans_path)?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Arc::new(Self {
            whitelist: config.whitelist.iter().copied().collect(),
            config,
            accounting: Mutex::new(accounting),
            bans: Mutex::new(bans),
            #[cfg(target_os = "linux")]
            dataplane: Mutex::new(None),
            xdp_status: Mutex::new(None),
            started: Instant::now(),
        }))
    }

    /// Milliseconds since the agent started (the accounting clock).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Locks the accounting.
    pub fn accounting(&self) -> MutexGuard<'_, Accounting> {
        lock(&self.accounting)
    }

    /// Locks the ban list.
    pub fn bans(&self) -> MutexGuard<'_, BanStore> {
        lock(&self.bans)
    }

    /// The XDP counters as last polled (`None` without XDP).
    pub fn xdp_status(&self) -> Option<XdpStatus> {
        lock(&self.xdp_status).clone()
    }

    /// Loads and attaches the XDP program per config and reinstates saved bans.
    #[cfg(target_os = "linux")]
    pub fn start_dataplane(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let cfg = &self.config;
        let mut dp = crate::xdp::DataPlane::load(&cfg.xdp, &cfg.networks, &cfg.whitelist)
            .context("loading the XDP program (are you root?)")?;
        for interface in &cfg.xdp.interfaces {
            let mode = dp.attach(interface, cfg.xdp.mode)?;
            tracing::info!("XDP attached to {interface} in {mode} mode");
        }
        let bans: Vec<Ban> = self.bans().list().cloned().collect();
        for ban in &bans {
            dp.tables
                .add(&mut dp.maps, ban.prefix, ban.match_on)
                .with_context(|| {
                    format!("reinstating ban {} {}", ban.prefix, ban.match_on.as_str())
                })?;
        }
        if !bans.is_empty() {
            tracing::info!("reinstated {} saved bans", bans.len());
        }
        *lock(&self.dataplane) = Some(dp);
        Ok(())
    }

    /// Not available off Linux.
    #[cfg(not(target_os = "linux"))]
    pub fn start_dataplane(&self) -> anyhow::Result<()> {
        anyhow::bail!("the XDP data plane needs Linux; set xdp.enabled = false and use [capture]")
    }

    /// Detaches the XDP program from every interface.
    pub fn stop_dataplane(&self) {
        #[cfg(target_os = "linux")]
        if let Some(mut dp) = lock(&self.dataplane).take() {
            dp.detach_all();
        }
    }

    /// Runs `f` on the data plane when there is one.
    #[cfg(target_os = "linux")]
    pub fn with_dataplane<R>(&self, f: impl FnOnce(&mut crate::xdp::DataPlane) -> R) -> Option<R> {
        lock(&self.dataplane).as_mut().map(f)
    }

    /// Bans `prefix` on `match_on` for `duration` (`None`: until unbanned).
    pub fn ban(
        &self,
        prefix: Prefix,
        match_on: DropMatch,
        duration: Option<Duration>,
        origin: BanOrigin,
        reason: String,
    ) -> Result<Ban, AgentError> {
        if let Some(w) = self.config.whitelist.iter().find(|w| w.covers(&prefix)) {
            return Err(AgentError::Conflict(format!(
                "{prefix} is inside whitelisted {w} and is never banned"
            )));
        }
        let now = unix_now();
        let ban = Ban {
            prefix,
            match_on,
            created: now,
            expires: duration.map(|d| now + d.as_secs().max(1)),
            origin,
            reason,
        };
        #[cfg(target_os = "linux")]
        if let Some(result) =
            self.with_dataplane(|dp| dp.tables.add(&mut dp.maps, prefix, match_on))
        {
            result.map_err(|e| AgentError::DataPlane(e.to_string()))?;
        }
        self.bans().insert(ban.clone())?;
        tracing::info!("banned {prefix} ({}) {:?}", match_on.as_str(), ban.expires);
        Ok(ban)
    }

    /// Lifts a ban.
    pub fn unban(&self, prefix: Prefix, match_on: DropMatch) -> Result<Ban, AgentError> {
        let removed = self.bans().remove(prefix, match_on)?;
        let Some(ban) = removed else {
            return Err(AgentError::NotFound(format!(
                "no ban for {prefix} on {}",
                match_on.as_str()
            )));
        };
        #[cfg(target_os = "linux")]
        if let Some(result) =
            self.with_dataplane(|dp| dp.tables.remove(&mut dp.maps, prefix, match_on))
        {
            result.map_err(|e| AgentError::DataPlane(e.to_string()))?;
        }
        tracing::info!("unbanned {prefix} ({})", match_on.as_str());
        Ok(ban)
    }

    /// What a ban's entry dropped so far (packets, bytes), when the data plane has it.
    pub fn ban_counter(&self, _prefix: Prefix, _match_on: DropMatch) -> Option<(u64, u64)> {
        #[cfg(target_os = "linux")]
        {
            self.with_dataplane(|dp| dp.tables.counter(&dp.maps, _prefix, _match_on))
                .flatten()
                .map(|c| (c.packets, c.bytes))
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// True when `prefix` is whitelisted.
    pub fn is_whitelisted(&self, addr: std::net::IpAddr) -> bool {
        self.whitelist.contains(addr)
    }

    /// One poll: read the data plane, close the accounting window, expire bans.
    pub fn poll_once(&self) {
        let now_ms = self.now_ms();
        #[cfg(target_os = "linux")]
        {
            let idle = self.config.xdp.host_idle_timeout.as_millis() as u64;
            let mut acc = lock(&self.accounting);
            if let Some(result) = self.with_dataplane(|dp| dp.poll(&mut acc, now_ms, idle)) {
                match result {
                    Ok(stats) => {
                        *lock(&self.xdp_status) = serde_json::to_value(stats).ok();
                    }
                    Err(e) => tracing::warn!("polling XDP counters: {e}"),
                }
            }
        }
        self.accounting().tick(now_ms, 3_600_000);
        let expired = self.bans().expired(unix_now());
        for ban in expired {
            if let Err(e) = self.unban(ban.prefix, ban.match_on) {
                tracing::warn!("expiring ban {}: {e}", ban.prefix);
            } else {
                tracing::info!("ban {} ({}) expired", ban.prefix, ban.match_on.as_str());
            }
        }
    }

    /// Polls every `poll_interval` until `shutdown` resolves.
    pub async fn run_poll_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.config.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let agent = self.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || agent.poll_once()).await {
                        tracing::error!("poll task failed: {e}");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}
