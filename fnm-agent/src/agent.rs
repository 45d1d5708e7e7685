//! The running agent: shared state, the poll loop, and ban operations.

use crate::{
    accounting::{Accounting, Direction},
    actions::{
        bgp::BgpAnnouncer,
        script::{ScriptCall, ScriptRunner},
    },
    bans::{unix_now, Ban, BanOrigin, BanStore, BanStoreError, DropMatch},
    capture::flush_gate::FlushGate,
    config::Config,
    detection::{
        attack::{self, Attack},
        config::{Action, ReportFormat},
        detector::{Detector, DetectorEvent, Opening},
        history::AttackHistory,
        thresholds::ThresholdTable,
    },
    mitigation::{Mitigation, MitigationStore},
    prefix::{Prefix, PrefixSet},
    traffic::TrafficRecord,
};
use std::net::IpAddr;
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
    detector: Mutex<Detector>,
    history: Mutex<AttackHistory>,
    mitigations: Mutex<MitigationStore>,
    script: Option<ScriptRunner>,
    bgp: Option<Arc<BgpAnnouncer>>,
    runtime: Option<tokio::runtime::Handle>,
    /// Asks the capture thread (when one runs) for its buffered records before each tick.
    capture_flush: Arc<FlushGate>,
}

/// Longest a poll waits for the capture thread to hand over its records before it ticks.
const CAPTURE_FLUSH_TIMEOUT: Duration = Duration::from_millis(50);

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
            (config.xdp.max_hosts as usize)
                .saturating_mul(2)
                .saturating_add(config.xdp.dense_v4_addresses as usize)
                .max(1024),
            config.xdp.max_flows as usize,
            config.poll_interval.as_millis() as u64,
        )
        .with_rate_window(config.rate_window.as_millis() as u64)
        .with_ignored_sources(config.detection.whitelist_sources.iter().copied().collect());
        let detector = Detector::new(
            ThresholdTable::new(&config.detection, &config.hostgroup),
            config.whitelist.iter().copied().collect(),
            config.ban.stop_ratio,
            config.ban.stop_after.as_millis() as u64,
        );
        let runtime = tokio::runtime::Handle::try_current().ok();
        let script = match (&config.ban.script, &runtime) {
            (Some(path), Some(rt)) => {
                let _guard = rt.enter();
                Some(ScriptRunner::start(
                    path.clone(),
                    config.ban.script_timeout,
                    config.ban.script_parallel,
                    config.ban.script_queue,
                ))
            }
            _ => None,
        };
        let uses_bgp = config
            .ban
            .actions
            .iter()
            .chain(
                config
                    .hostgroup
                    .iter()
                    .flat_map(|g| g.actions.iter().flatten()),
            )
            .any(|a| matches!(a, Action::BgpBlackhole | Action::BgpFlowspec));
        let bgp = match (&runtime, uses_bgp) {
            (Some(rt), true) => {
                let _guard = rt.enter();
                Some(Arc::new(BgpAnnouncer::from_config(&config.bgp)?))
            }
            _ => None,
        };
        let history = AttackHistory::open(config.state_dir.join("attacks.json"));
        let mitigations = MitigationStore::open(config.state_dir.join("mitigations.json"));
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
            detector: Mutex::new(detector),
            history: Mutex::new(history),
            mitigations: Mutex::new(mitigations),
            script,
            bgp,
            runtime,
            capture_flush: Arc::new(FlushGate::new()?),
        }))
    }

    /// The gate through which each poll asks the capture thread for its buffered records
    /// (see [`crate::capture::flush_gate`]); the capture thread's sink holds a clone.
    pub fn capture_flush_gate(&self) -> Arc<FlushGate> {
        self.capture_flush.clone()
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
        let mitigations: Vec<Mitigation> = lock(&self.mitigations).list().to_vec();
        for m in &mitigations {
            if !m.rules.is_empty() {
                dp.tables
                    .set_rules(&mut dp.maps, m.host, m.direction, &m.rules)
                    .with_context(|| format!("reinstating XDP rules of attack {}", m.attack_id))?;
            }
        }
        if !mitigations.is_empty() {
            tracing::info!("reinstated {} active mitigations", mitigations.len());
        }
        // Attach last: a link pinned by a previous agent is taken over only once this program
        // already holds every ban and rule, so nothing passes in between.
        let pin_dir = if cfg.xdp.pin_links {
            crate::xdp::ensure_bpffs(&cfg.xdp.pin_path)
                .context("mounting bpffs for pinned links")?;
            std::fs::create_dir_all(&cfg.xdp.pin_path)
                .with_context(|| format!("creating {}", cfg.xdp.pin_path.display()))?;
            Some(cfg.xdp.pin_path.as_path())
        } else {
            None
        };
        for interface in &cfg.xdp.interfaces {
            let mode = dp.attach(interface, cfg.xdp.mode, pin_dir)?;
            if mode == "pinned" {
                tracing::info!("XDP on {interface}: took over the pinned link (no gap)");
            } else {
                tracing::info!("XDP attached to {interface} in {mode} mode");
            }
        }
        *lock(&self.dataplane) = Some(dp);
        for m in &mitigations {
            self.bgp_announce(m);
        }
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
        // The packets captured in the closing slot belong in it: take them over first.
        self.capture_flush.request(CAPTURE_FLUSH_TIMEOUT);
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
        #[cfg(target_os = "linux")]
        self.collect_xdp_samples();
        self.accounting().tick(now_ms, 3_600_000);
        self.detect(now_ms);
        self.expire_mitigations();
        let expired = self.bans().expired(unix_now());
        for ban in expired {
            if let Err(e) = self.unban(ban.prefix, ban.match_on) {
                tracing::warn!("expiring ban {}: {e}", ban.prefix);
            } else {
                tracing::info!("ban {} ({}) expired", ban.prefix, ban.match_on.as_str());
            }
        }
    }

    /// Starts the poll thread: [`Agent::poll_once`] every `poll_interval` (a late poll delays
    /// the next ones rather than bunching them), until `stop`'s sender is dropped or sends.
    ///
    /// A plain thread rather than a tokio task handing each poll to the blocking pool: an idle
    /// agent then wakes once per poll, with no thread hand-off.
    pub fn spawn_poll_thread(
        self: Arc<Self>,
        stop: std::sync::mpsc::Receiver<()>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("fnm-poll".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                let interval = self.config.poll_interval;
                let mut next = std::time::Instant::now() + interval;
                loop {
                    let wait = next.saturating_duration_since(std::time::Instant::now());
                    match stop.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                    let agent = &self;
                    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        agent.poll_once()
                    }));
                    if polled.is_err() {
                        tracing::error!("poll failed (panicked); polling goes on");
                    }
                    next += interval;
                    let now = std::time::Instant::now();
                    if next < now {
                        next = now + interval;
                    }
                }
            })
    }

    /// Moves XDP packet samples of watched hosts into the accounting.
    #[cfg(target_os = "linux")]
    fn collect_xdp_samples(&self) {
        let Some(samples) = self.with_dataplane(|dp| dp.drain_samples(100_000)) else {
            return;
        };
        if samples.is_empty() {
            return;
        }
        let mut acc = self.accounting();
        for p in samples {
            let (src, dst) = (
                crate::accounting::from16(p.src),
                crate::accounting::from16(p.dst),
            );
            let dir = if p.direction == 1 {
                Direction::Outgoing
            } else {
                Direction::Incoming
            };
            let host = if dir == Direction::Incoming { dst } else { src };
            let record = TrafficRecord {
                src_port: p.src_port,
                dst_port: p.dst_port,
                tcp_flags: p.tcp_flags,
                ttl: p.ttl,
                fragments: u64::from(p.fragment),
                tcp_syn_packets: u64::from(p.protocol == 6 && p.tcp_flags & 0x12 == 0x02),
                ..TrafficRecord::packet(src, dst, p.protocol, u64::from(p.ip_len))
            };
            acc.add_sample(host, dir, record);
        }
    }

    /// Checks thresholds and acts on what the detector found.
    fn detect(&self, now_ms: u64) {
        let events = {
            let acc = self.accounting();
            lock(&self.detector).check(&acc, now_ms)
        };
        for event in events {
            match event {
                DetectorEvent::Watch(host, dir) => {
                    self.accounting().watch(host, dir);
                    self.set_sampling(host, dir, Some(self.config.ban.sample_one_in));
                }
                DetectorEvent::Unwatch(host, dir) => {
                    if lock(&self.mitigations).get(host, dir).is_none() {
                        self.accounting().unwatch(host, dir);
                        self.set_sampling(host, dir, None);
                    }
                }
                DetectorEvent::Started(opening) => self.on_attack(opening),
                DetectorEvent::Stopped { host, direction } => {
                    tracing::info!("attack on {host} ({}) stopped", direction.as_str());
                    self.end_attack_record(host, direction);
                }
            }
        }
    }

    fn set_sampling(&self, _host: IpAddr, _dir: Direction, _one_in: Option<u32>) {
        #[cfg(target_os = "linux")]
        if let Some(Err(e)) =
            self.with_dataplane(|dp| dp.tables.set_sampling(&mut dp.maps, _host, _dir, _one_in))
        {
            tracing::warn!("XDP sampling of {_host}: {e}");
        }
    }

    fn end_attack_record(&self, host: IpAddr, direction: Direction) {
        let peak = lock(&self.detector).peak(host, direction);
        let mut history = lock(&self.history);
        let ids: Vec<String> = history
            .list()
            .filter(|a| a.host == host && a.direction == direction && a.ended_unix_ms.is_none())
            .map(|a| a.id.clone())
            .collect();
        for id in ids {
            if let Some(a) = history.get_mut(&id) {
                a.ended_unix_ms = Some(unix_ms());
                if let Some(p) = peak {
                    a.peak_rates = a.peak_rates.max(&p);
                }
            }
        }
        history.save();
    }

    fn on_attack(&self, opening: Opening) {
        let (host, direction) = (opening.host, opening.direction);
        let started = unix_ms();
        tracing::warn!(
            "attack on {host} ({}): {} {:.0} > {:.0}",
            direction.as_str(),
            opening.crossing.rate,
            opening.crossing.value,
            opening.crossing.threshold
        );
        let already = lock(&self.mitigations).get(host, direction).cloned();
        let id = already
            .as_ref()
            .map(|m| m.attack_id.clone())
            .unwrap_or_else(|| format!("{started}-{host}-{}", direction.as_str()));
        let report_only = opening.report_only;
        let (mut record, records) = {
            let acc = self.accounting();
            Attack::open(
                id,
                started,
                opening,
                acc.samples(host, direction),
                self.config.ban.max_source_drops,
            )
        };
        let effective = lock(&self.detector).table().lookup(host);
        let actions: Vec<Action> = if report_only || already.is_some() {
            Vec::new()
        } else {
            effective
                .actions
                .clone()
                .unwrap_or_else(|| self.config.ban.actions.clone())
        };
        if !actions.is_empty() {
            let m = self.mitigate(&mut record, &records, &actions);
            lock(&self.mitigations).insert(m);
        }
        lock(&self.history).upsert(record);
    }

    /// Applies `actions` to an attack; returns what was done.
    fn mitigate(
        &self,
        a: &mut Attack,
        records: &[TrafficRecord],
        actions: &[Action],
    ) -> Mitigation {
        let now = unix_now();
        let mut m = Mitigation {
            attack_id: a.id.clone(),
            host: a.host,
            direction: a.direction,
            started: now,
            expires: now + self.config.ban.time.as_secs().max(1),
            pps: a.initial_rates.pps as u64,
            actions: actions.to_vec(),
            rules: Vec::new(),
            bans: Vec::new(),
            flowspec: None,
            blackhole: None,
        };
        let host_prefix = Prefix::host(a.host);
        let host_match = match a.direction {
            Direction::Incoming => DropMatch::Dst,
            Direction::Outgoing => DropMatch::Src,
        };
        let rules = crate::actions::xdp::rules_for(&a.fingerprint);
        for action in actions {
            match action {
                Action::XdpRule => {
                    if rules.is_empty() {
                        tracing::warn!(
                            "attack {}: no fingerprint specific enough for an XDP rule",
                            a.id
                        );
                        continue;
                    }
                    #[cfg(target_os = "linux")]
                    match self.with_dataplane(|dp| {
                        dp.tables
                            .set_rules(&mut dp.maps, a.host, a.direction, &rules)
                    }) {
                        Some(Ok(())) => {
                            m.rules = rules.clone();
                            a.actions.push(format!("xdp_rule {rules:?}"));
                        }
                        Some(Err(e)) => tracing::error!("attack {}: XDP rule: {e}", a.id),
                        None => {
                            tracing::warn!("attack {}: xdp_rule without an XDP data plane", a.id)
                        }
                    }
                }
                Action::XdpBlackhole => match self.ban(
                    host_prefix,
                    host_match,
                    None,
                    BanOrigin::Detection,
                    a.id.clone(),
                ) {
                    Ok(_) => {
                        m.bans.push((host_prefix, host_match));
                        a.actions.push("xdp_blackhole".into());
                    }
                    Err(e) => tracing::error!("attack {}: blackhole: {e}", a.id),
                },
                Action::XdpSource => {
                    let fp = &a.fingerprint;
                    // Only for attacks from few real sources: a spoofed flood has thousands.
                    if fp.top_sources_share < 0.9
                        || fp.distinct_sources > self.config.ban.max_source_drops
                    {
                        tracing::info!("attack {}: sources look spoofed; no source drops", a.id);
                        continue;
                    }
                    let mut sources: Vec<IpAddr> = records
                        .iter()
                        .map(|r| {
                            if a.direction == Direction::Incoming {
                                r.src
                            } else {
                                r.dst
                            }
                        })
                        .collect();
                    sources.sort();
                    sources.dedup();
                    for src in sources.into_iter().take(self.config.ban.max_source_drops) {
                        if self.is_whitelisted(src) || self.accounting().is_local(src) {
                            continue;
                        }
                        let p = Prefix::host(src);
                        let match_on = if a.direction == Direction::Incoming {
                            DropMatch::Src
                        } else {
                            DropMatch::Dst
                        };
                        if self
                            .ban(p, match_on, None, BanOrigin::Detection, a.id.clone())
                            .is_ok()
                        {
                            m.bans.push((p, match_on));
                        }
                    }
                    a.actions
                        .push(format!("xdp_source {} sources", m.bans.len()));
                }
                Action::Script => {
                    if let Some(runner) = &self.script {
                        a.actions.push("script".into());
                        let stdin = match self.config.ban.script_format {
                            ReportFormat::Text => attack::text_report(a),
                            ReportFormat::Json => {
                                serde_json::to_string_pretty(a).unwrap_or_default()
                            }
                        };
                        runner.submit(ScriptCall {
                            ip: a.host,
                            direction: a.direction.as_str(),
                            pps: a.initial_rates.pps as u64,
                            action: "ban",
                            stdin,
                        });
                    }
                }
                Action::BgpBlackhole => {
                    m.blackhole = Some(host_prefix);
                    a.actions.push("bgp_blackhole".into());
                }
                Action::BgpFlowspec => {
                    m.flowspec = crate::mitigation::flowspec_for(a.host, a.direction, &rules);
                    if m.flowspec.is_some() {
                        a.actions.push("bgp_flowspec".into());
                    }
                }
            }
        }
        self.bgp_announce(&m);
        m
    }

    fn bgp_announce(&self, m: &Mitigation) {
        let (Some(bgp), Some(rt)) = (self.bgp.clone(), self.runtime.clone()) else {
            return;
        };
        let (blackhole, flowspec, id) = (m.blackhole, m.flowspec.clone(), m.attack_id.clone());
        rt.spawn(async move {
            if let Some(p) = blackhole {
                if let Err(e) = bgp.announce_blackhole(p).await {
                    tracing::error!("attack {id}: BGP blackhole {p}: {e}");
                }
            }
            if let Some(rule) = flowspec {
                if let Err(e) = bgp.announce_flowspec(&rule).await {
                    tracing::error!("attack {id}: BGP flowspec: {e}");
                }
            }
        });
    }

    /// Lifts mitigations whose time has come (and whose attack stopped, if so configured).
    fn expire_mitigations(&self) {
        let now = unix_now();
        let due: Vec<Mitigation> = lock(&self.mitigations)
            .list()
            .iter()
            .filter(|m| m.expires <= now)
            .cloned()
            .collect();
        for m in due {
            if self.config.ban.unban_only_when_stopped
                && lock(&self.detector).is_ongoing(m.host, m.direction)
            {
                continue;
            }
            self.lift(&m);
        }
    }

    /// Removes everything a mitigation put in place.
    pub fn lift(&self, m: &Mitigation) {
        tracing::info!(
            "lifting the mitigation of attack {} on {}",
            m.attack_id,
            m.host
        );
        #[cfg(target_os = "linux")]
        if !m.rules.is_empty() {
            if let Some(Err(e)) = self
                .with_dataplane(|dp| dp.tables.set_rules(&mut dp.maps, m.host, m.direction, &[]))
            {
                tracing::error!("removing XDP rules of {}: {e}", m.host);
            }
        }
        for (p, match_on) in &m.bans {
            let _ = self.unban(*p, *match_on);
        }
        if let (Some(bgp), Some(rt)) = (self.bgp.clone(), self.runtime.clone()) {
            let (blackhole, flowspec) = (m.blackhole, m.flowspec.clone());
            rt.spawn(async move {
                if let Some(p) = blackhole {
                    let _ = bgp.withdraw_blackhole(p).await;
                }
                if let Some(rule) = flowspec {
                    let _ = bgp.withdraw_flowspec(&rule).await;
                }
            });
        }
        if m.actions.contains(&Action::Script) {
            if let Some(runner) = &self.script {
                runner.submit(ScriptCall {
                    ip: m.host,
                    direction: m.direction.as_str(),
                    pps: m.pps,
                    action: "unban",
                    stdin: String::new(),
                });
            }
        }
        lock(&self.mitigations).remove(m.host, m.direction);
        self.accounting().unwatch(m.host, m.direction);
        self.set_sampling(m.host, m.direction, None);
        self.end_attack_record(m.host, m.direction);
    }

    /// Attacks, newest first.
    pub fn attacks(&self) -> Vec<Attack> {
        let list: Vec<Attack> = lock(&self.history).list().cloned().collect();
        list.into_iter().map(|a| self.with_live_peak(a)).collect()
    }

    /// One attack.
    pub fn attack(&self, id: &str) -> Option<Attack> {
        let a = lock(&self.history).get(id).cloned();
        a.map(|a| self.with_live_peak(a))
    }

    /// An ongoing attack's record with the detector's current peak rates.
    fn with_live_peak(&self, mut a: Attack) -> Attack {
        if a.ended_unix_ms.is_none() {
            if let Some(p) = lock(&self.detector).peak(a.host, a.direction) {
                a.peak_rates = a.peak_rates.max(&p);
            }
        }
        a
    }

    /// Active mitigations.
    pub fn mitigations(&self) -> Vec<Mitigation> {
        lock(&self.mitigations).list().to_vec()
    }

    /// Effective thresholds of an address.
    pub fn thresholds(&self, addr: IpAddr) -> crate::detection::thresholds::Effective {
        lock(&self.detector).table().lookup(addr)
    }

    /// Counters of the notify script, when configured.
    pub fn script_stats(&self) -> Option<Arc<crate::actions::script::ScriptStats>> {
        self.script.as_ref().map(|s| s.stats.clone())
    }
}

/// Milliseconds since the UNIX epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
