//! The mitigator: runs the configured actions for each attack the engine reports and for each
//! manual ban, records every action's real outcome, retries what a peer refused, lifts what
//! expired, and reinstates what was in force after a restart.
//!
//! It is one Tokio task that owns the ban list, the mitigation store and the actions, and
//! takes messages in order: the engine's [`Decision`]s and the API's [`MitigatorRequest`]s.
//! Nothing else writes the drop tables or announces routes, so no two parties can disagree
//! about what is in force. Views read the [`MitigatorView`] it publishes after each change.
//!
//! An action that fails because a peer did not answer (a BGP daemon down, a web hook
//! unreachable) is marked `retrying` and tried again after 1 s, 2 s, 4 s ... up to
//! [`MAX_RETRY_DELAY`], so a route appears once the daemon is back without anyone acting.
//! Other failures (no XDP, kernel refused) are `failed` for good. Every outcome is counted in
//! `fnm_actions_total{action,result}`.

pub mod bans;
pub mod policy;
pub mod store;

use self::{
    bans::BanManager,
    policy::{BanCheck, BanPolicy, BanRefusal, MAX_REASON_BYTES},
    store::{ActionResult, ActionState, Mitigation, MitigationStore},
};
use crate::{
    accounting::Direction,
    actions::{Action, ActionEnv, ActionError, Applied, LateOutcome, MitigationAction, Target},
    bans::{unix_now, Ban, BanOrigin, DropMatch},
    config::Config,
    engine::{decision::Decision, unix_ms},
    prefix::Prefix,
};
use arc_swap::ArcSwap;
use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::Serialize;
use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot};

/// Longest wait between two retries of a failed action.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How often the mitigator checks expiries and retries and refreshes its view.
pub const MITIGATOR_TICK: Duration = Duration::from_millis(250);
/// How often it wakes when no ban or mitigation is in force.
pub const IDLE_TICK: Duration = Duration::from_secs(5);
/// Decisions queued for the mitigator before the engine counts them as dropped.
pub const DECISION_QUEUE: usize = 1024;

/// A ban with what its drop entry dropped so far.
#[derive(Debug, Clone, Serialize)]
pub struct BanView {
    /// The ban.
    #[serde(flatten)]
    pub ban: Ban,
    /// Packets dropped by its XDP entry.
    pub dropped_packets: u64,
    /// IP bytes dropped by its XDP entry.
    pub dropped_bytes: u64,
}

/// What the mitigator has in force, as the views see it.
#[derive(Debug, Clone, Default)]
pub struct MitigatorView {
    /// Drop entries in force (manual bans and detection drops).
    pub bans: Vec<BanView>,
    /// Active mitigations.
    pub active: Vec<Mitigation>,
    /// Recently lifted mitigations.
    pub recent: Arc<Vec<Mitigation>>,
}

impl MitigatorView {
    /// The action outcomes of a mitigation (active or recently lifted) by id.
    pub fn actions_of(&self, id: &str) -> Option<&[ActionState]> {
        self.active
            .iter()
            .chain(self.recent.iter())
            .find(|m| m.id == id)
            .map(|m| m.actions.as_slice())
    }
}

/// Longest manual ban: ten years.
pub const MAX_BAN_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Why a request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MitigatorError {
    /// A safety check refused the ban (see [`policy`]).
    #[error(transparent)]
    Refused(#[from] BanRefusal),
    /// The request itself is malformed (reason too long, duration too long).
    #[error("{0}")]
    Invalid(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Nothing could be put in place or taken back; the error says why.
    #[error("{0}")]
    Failed(String),
    /// The mitigator is not running.
    #[error("the mitigator is not running")]
    Gone,
}

/// A manual ban as asked for.
#[derive(Debug, Clone)]
pub struct ManualBan {
    /// The prefix.
    pub prefix: Prefix,
    /// Its side.
    pub match_on: DropMatch,
    /// How long (`None`: until unbanned); at most [`MAX_BAN_DURATION`].
    pub duration: Option<Duration>,
    /// The operator's note, at most [`MAX_REASON_BYTES`] bytes.
    pub reason: String,
    /// Skip the safety checks, if `ban.allow_force` allows it.
    pub force: bool,
    /// Where the request came from (a ban covering it is refused).
    pub requester: Option<IpAddr>,
}

impl ManualBan {
    /// A ban of `prefix` on `match_on` until unbanned, no reason, not forced.
    pub fn new(prefix: Prefix, match_on: DropMatch) -> Self {
        Self {
            prefix,
            match_on,
            duration: None,
            reason: String::new(),
            force: false,
            requester: None,
        }
    }
}

/// What the API asks of the mitigator.
#[derive(Debug)]
pub enum MitigatorRequest {
    /// Ban a prefix on one side with `[ban] manual_actions`.
    Ban {
        /// The ban.
        ban: ManualBan,
        /// The answer: the ban and its action outcomes.
        reply: oneshot::Sender<Result<(BanView, Vec<ActionState>), MitigatorError>>,
    },
    /// Take a reloaded configuration (see [`Reconfigure`]).
    Reload(Box<Reconfigure>),
    /// Lift a ban.
    Unban {
        /// The prefix.
        prefix: Prefix,
        /// Its side.
        match_on: DropMatch,
        /// The answer: the ban lifted.
        reply: oneshot::Sender<Result<Ban, MitigatorError>>,
    },
}

/// A reloaded configuration for the mitigator: ban settings, the safety policy and the
/// actions. Mitigations in force are kept. An action in `keep` keeps its running object (a BGP
/// session, the script runner with its queue and counters) when the reload did not change its
/// settings; a BGP action that is replaced withdraws what the old one announced and announces
/// it again through the new one.
pub struct Reconfigure {
    /// The new configuration.
    pub config: Config,
    /// The actions built from it (those in `keep` are left out or ignored).
    pub registry: crate::actions::Registry,
    /// Actions whose running object stays.
    pub keep: std::collections::BTreeSet<Action>,
    /// The answer: what the mitigator could not carry over (each a sentence), once in force.
    pub reply: oneshot::Sender<Vec<String>>,
}

/// [`Reconfigure`] without its reply.
struct ReconfigureParts {
    config: Config,
    registry: crate::actions::Registry,
    keep: std::collections::BTreeSet<Action>,
}

impl Reconfigure {
    fn config_and_actions(&mut self) -> Box<ReconfigureParts> {
        Box::new(ReconfigureParts {
            config: std::mem::take(&mut self.config),
            registry: std::mem::replace(
                &mut self.registry,
                crate::actions::Registry {
                    actions: BTreeMap::new(),
                    script_stats: None,
                },
            ),
            keep: std::mem::take(&mut self.keep),
        })
    }
}

impl std::fmt::Debug for Reconfigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconfigure")
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// Counters of the mitigator, for `/metrics`.
#[derive(Debug, Default)]
pub struct MitigatorStats {
    /// `fnm_actions_total{action,result}`.
    pub actions: Family<Vec<(String, String)>, Counter>,
    /// `fnm_auto_bans_not_applied_total{reason}`: attacks whose actions the caps held back.
    pub auto_bans_not_applied: Family<Vec<(String, String)>, Counter>,
    /// `fnm_manual_bans_refused_total{check}`: manual bans a safety check refused.
    pub manual_bans_refused: Family<Vec<(String, String)>, Counter>,
}

impl MitigatorStats {
    fn count(&self, action: Action, result: &str) {
        self.actions
            .get_or_create(&vec![
                ("action".into(), action.as_str().into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }
}

/// The running mitigator as the rest of the agent holds it.
#[derive(Clone)]
pub struct MitigatorHandle {
    requests: mpsc::Sender<MitigatorRequest>,
    /// What is in force.
    pub view: Arc<ArcSwap<MitigatorView>>,
    /// Counters.
    pub stats: Arc<MitigatorStats>,
    /// Counters of the notify script, when one is configured (a reload may replace it).
    pub script_stats: Arc<arc_swap::ArcSwapOption<crate::actions::script::ScriptStats>>,
}

impl MitigatorHandle {
    /// Sends a ban and waits for its answer.
    pub async fn ban(&self, ban: ManualBan) -> Result<(BanView, Vec<ActionState>), MitigatorError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(MitigatorRequest::Ban { ban, reply })
            .await
            .map_err(|_| MitigatorError::Gone)?;
        rx.await.map_err(|_| MitigatorError::Gone)?
    }

    /// Lifts a ban and waits for the answer.
    pub async fn unban(&self, prefix: Prefix, match_on: DropMatch) -> Result<Ban, MitigatorError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(MitigatorRequest::Unban {
                prefix,
                match_on,
                reply,
            })
            .await
            .map_err(|_| MitigatorError::Gone)?;
        rx.await.map_err(|_| MitigatorError::Gone)?
    }

    /// Hands the mitigator a reloaded configuration and waits until it is in force; returns
    /// what could not be carried over.
    pub async fn reload(
        &self,
        config: Config,
        registry: crate::actions::Registry,
        keep: std::collections::BTreeSet<Action>,
    ) -> Result<Vec<String>, MitigatorError> {
        let (reply, rx) = oneshot::channel();
        if let Some(stats) = &registry.script_stats {
            if !keep.contains(&Action::Script) {
                self.script_stats.store(Some(stats.clone()));
            }
        } else if !keep.contains(&Action::Script) {
            self.script_stats.store(None);
        }
        self.requests
            .send(MitigatorRequest::Reload(Box::new(Reconfigure {
                config,
                registry,
                keep,
                reply,
            })))
            .await
            .map_err(|_| MitigatorError::Gone)?;
        rx.await.map_err(|_| MitigatorError::Gone)
    }

    /// What is in force now.
    pub fn view(&self) -> Arc<MitigatorView> {
        self.view.load_full()
    }
}

struct Mitigator {
    actions: BTreeMap<Action, Box<dyn MitigationAction>>,
    bans: BanManager,
    store: MitigationStore,
    ban_time: Option<Duration>,
    unban_only_when_stopped: bool,
    manual_actions: Vec<Action>,
    policy: BanPolicy,
    max_active_auto: usize,
    max_auto_per_minute: usize,
    /// When the automatic mitigations of the last minute were applied.
    auto_started: VecDeque<Instant>,
    view: Arc<ArcSwap<MitigatorView>>,
    stats: Arc<MitigatorStats>,
    dirty: bool,
    /// Where actions that finish later (the script) report a failure.
    late_tx: mpsc::UnboundedSender<LateOutcome>,
}

/// Starts the mitigator on the current Tokio runtime with the actions of `config`, the ban
/// list and mitigations in `bans` / `store`, enforcing through `bans`' data plane. Returns once
/// the rules and routes of the saved mitigations are reinstated (the ban list's drop entries
/// are the caller's: [`BanManager::reinstate`]), with the handle and the sender the engine's
/// decisions go to.
pub async fn spawn(
    config: &Config,
    bans: BanManager,
    store: MitigationStore,
) -> anyhow::Result<(MitigatorHandle, mpsc::Sender<Decision>)> {
    spawn_with_policy(config, bans, store, BanPolicy::from_config(config)).await
}

/// [`spawn`] with another ban policy (tests: the host's addresses given).
pub async fn spawn_with_policy(
    config: &Config,
    bans: BanManager,
    store: MitigationStore,
    policy: BanPolicy,
) -> anyhow::Result<(MitigatorHandle, mpsc::Sender<Decision>)> {
    let crate::actions::Registry {
        actions,
        script_stats,
    } = crate::actions::registry(config)?;
    let (req_tx, req_rx) = mpsc::channel(64);
    let (dec_tx, dec_rx) = mpsc::channel(DECISION_QUEUE);
    let view = Arc::new(ArcSwap::from_pointee(MitigatorView::default()));
    let stats = Arc::new(MitigatorStats::default());
    let (late_tx, late_rx) = mpsc::unbounded_channel();
    let mut m = Mitigator {
        actions,
        bans,
        store,
        ban_time: config.ban.time_limit(),
        unban_only_when_stopped: config.ban.unban_only_when_stopped,
        manual_actions: config.ban.manual_actions.clone(),
        policy,
        max_active_auto: config.ban.max_active_auto_bans,
        max_auto_per_minute: config.ban.max_auto_bans_per_minute,
        auto_started: VecDeque::new(),
        view: view.clone(),
        stats: stats.clone(),
        dirty: true,
        late_tx,
    };
    m.reinstate().await;
    tokio::spawn(async move {
        m.run(dec_rx, req_rx, late_rx).await;
    });
    Ok((
        MitigatorHandle {
            requests: req_tx,
            view,
            stats,
            script_stats: Arc::new(arc_swap::ArcSwapOption::new(script_stats)),
        },
        dec_tx,
    ))
}

fn retry_delay(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(MAX_RETRY_DELAY)
}

impl Mitigator {
    async fn run(
        &mut self,
        mut decisions: mpsc::Receiver<Decision>,
        mut requests: mpsc::Receiver<MitigatorRequest>,
        mut late: mpsc::UnboundedReceiver<LateOutcome>,
    ) {
        // With nothing in force there is nothing to expire, retry or refresh: the loop then
        // wakes every IDLE_TICK only (each wake-up costs 50-70 µs of CPU on a small VM; four
        // a second were most of an idle agent's CPU).
        // The first round runs at once: the view is published before the first request.
        let mut next_tick = tokio::time::Instant::now();
        let mut refreshes = 0u32;
        loop {
            let idle = self.store.active().is_empty() && self.bans.list().next().is_none();
            if !idle {
                next_tick = next_tick.min(tokio::time::Instant::now() + MITIGATOR_TICK);
            }
            tokio::select! {
                d = decisions.recv() => match d {
                    Some(d) => self.decide(d).await,
                    None => break,
                },
                r = requests.recv() => match r {
                    Some(r) => self.request(r).await,
                    None => break,
                },
                Some(o) = late.recv() => self.late_failure(o),
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick = tokio::time::Instant::now()
                        + if idle { IDLE_TICK } else { MITIGATOR_TICK };
                    self.expire().await;
                    self.retry().await;
                    refreshes += 1;
                    // Drop counters change without the mitigator acting: refresh them each second.
                    if refreshes.is_multiple_of(4) {
                        self.dirty = true;
                    }
                }
            }
            if self.dirty {
                self.publish();
            }
        }
    }

    fn publish(&mut self) {
        let dp = self.bans.dataplane().clone();
        let bans = self
            .bans
            .list()
            .map(|b| {
                let (p, by) = dp.drop_counter(b.prefix, b.match_on).unwrap_or((0, 0));
                BanView {
                    ban: b.clone(),
                    dropped_packets: p,
                    dropped_bytes: by,
                }
            })
            .collect();
        let recent: Vec<Mitigation> = self.store.recent().rev().cloned().collect();
        self.view.store(Arc::new(MitigatorView {
            bans,
            active: self.store.active().to_vec(),
            recent: Arc::new(recent),
        }));
        self.dirty = false;
    }

    /// Puts back what the saved state says is in force.
    async fn reinstate(&mut self) {
        self.reconcile_drops();
        let mut reinstated = 0;
        for mi in 0..self.store.active().len() {
            for ai in 0..self.store.active()[mi].actions.len() {
                let state = self.store.active()[mi].actions[ai].clone();
                let (Some(applied), ActionResult::Ok) = (&state.applied, state.result) else {
                    continue;
                };
                let Some(action) = self.actions.get(&state.action) else {
                    continue;
                };
                let id = self.store.active()[mi].id.clone();
                let mut env = ActionEnv {
                    bans: &mut self.bans,
                    expires: None,
                    reason: "",
                    mitigation: &id,
                    late: &self.late_tx,
                };
                if let Err(e) = action.reinstate(&mut env, applied).await {
                    tracing::error!(
                        "mitigation {}: reinstating {}: {e}",
                        self.store.active()[mi].id,
                        state.action.as_str()
                    );
                    let s = &mut self.store.active_mut()[mi].actions[ai];
                    s.result = if e.retryable() {
                        ActionResult::Retrying
                    } else {
                        ActionResult::Failed
                    };
                    s.error = Some(e.to_string());
                    s.next_retry_unix_ms = Some(unix_ms());
                } else {
                    reinstated += 1;
                }
            }
        }
        if reinstated > 0 {
            tracing::info!(
                "reinstated {reinstated} actions of {} active mitigations",
                self.store.active().len()
            );
        }
        self.store.save();
        self.dirty = true;
    }

    /// An action that reported success when started failed later: record it.
    fn late_failure(&mut self, o: LateOutcome) {
        self.stats.count(o.action, "failed");
        let Some(m) = self
            .store
            .active_mut()
            .iter_mut()
            .find(|m| m.id == o.mitigation)
        else {
            return;
        };
        if let Some(s) = m
            .actions
            .iter_mut()
            .find(|s| s.action == o.action && s.result == ActionResult::Ok)
        {
            s.result = ActionResult::Failed;
            s.error = Some(o.error);
        }
        self.store.save();
        self.dirty = true;
    }

    async fn decide(&mut self, d: Decision) {
        match d {
            Decision::AttackStarted {
                attack,
                remotes,
                actions,
            } => {
                if actions.is_empty() {
                    return;
                }
                let now = unix_now();
                let target = Target::Attack {
                    attack: &attack,
                    remotes: &remotes,
                };
                let (prefix, match_on) = target.prefix_and_side();
                let expires = self.ban_time.map(|t| now + t.as_secs().max(1));
                // The record of this attack's mitigation, whatever its actions did.
                let mitigation = |actions| Mitigation {
                    id: attack.id.clone(),
                    origin: BanOrigin::Detection,
                    host: attack.host,
                    direction: Some(attack.direction),
                    prefix,
                    match_on,
                    started: now,
                    expires,
                    pps: attack.initial_rates.pps as u64,
                    reason: String::new(),
                    attack_ongoing: true,
                    actions,
                    lifted: None,
                    attack: None,
                };
                if let Some((label, why)) = self.auto_cap() {
                    tracing::warn!(
                        "attack {} on {} ({}): actions not applied: {why}",
                        attack.id,
                        attack.host,
                        attack.direction.as_str()
                    );
                    self.stats
                        .auto_bans_not_applied
                        .get_or_create(&vec![("reason".into(), label.into())])
                        .inc();
                    let states = actions.iter().map(|a| self.not_applied(*a, &why)).collect();
                    self.store.record_not_applied(mitigation(states));
                    self.dirty = true;
                    return;
                }
                self.auto_started.push_back(Instant::now());
                // A blackhole of one of this machine's own addresses would cut the agent (and
                // its BGP sessions) off: those actions are held back, the others apply.
                let own = self.policy.own_address(attack.host);
                let (held, runnable): (Vec<Action>, Vec<Action>) = actions
                    .iter()
                    .partition(|a| own.is_some() && a.blackholes_the_host());
                let mut states = self
                    .apply_all(&runnable, &target, None, &attack.id, &attack.id)
                    .await;
                if let Some(what) = &own {
                    let why = format!(
                        "not applied: {} is {what} of this host; a blackhole would cut the \
                         agent off",
                        attack.host
                    );
                    tracing::warn!("attack {} on {}: {why}", attack.id, attack.host);
                    for a in held {
                        states.push(self.not_applied(a, &why));
                    }
                }
                let nothing_applied = states.iter().all(|s| s.result == ActionResult::NotApplied);
                let mitigation = mitigation(states);
                if nothing_applied {
                    self.store.record_not_applied(mitigation);
                } else {
                    self.store.insert(Mitigation {
                        attack: Some(attack),
                        ..mitigation
                    });
                }
                self.dirty = true;
            }
            Decision::AttackEnded { attack_id, .. } => {
                if let Some(m) = self
                    .store
                    .active_mut()
                    .iter_mut()
                    .find(|m| m.id == attack_id)
                {
                    m.attack_ongoing = false;
                    self.store.save();
                    self.dirty = true;
                }
            }
        }
    }

    /// The record of `action` held back for `why`, counted.
    fn not_applied(&self, action: Action, why: &str) -> ActionState {
        self.stats.count(action, "not_applied");
        ActionState {
            action,
            result: ActionResult::NotApplied,
            applied: None,
            error: Some(why.to_owned()),
            attempts: 0,
            next_retry_unix_ms: None,
        }
    }

    /// When the caps on automatic mitigations hold the next one back: the metric label and the
    /// reason shown in the attack record.
    fn auto_cap(&mut self) -> Option<(&'static str, String)> {
        let active = self
            .store
            .active()
            .iter()
            .filter(|m| m.origin == BanOrigin::Detection)
            .filter(|m| {
                m.actions
                    .iter()
                    .any(|s| matches!(s.result, ActionResult::Ok | ActionResult::Retrying))
            })
            .count();
        if active >= self.max_active_auto {
            return Some((
                "max_active",
                format!(
                    "not applied: {active} automatic mitigations are in force, the most \
                     ban.max_active_auto_bans allows"
                ),
            ));
        }
        let minute_ago = Instant::now().checked_sub(Duration::from_secs(60));
        while let (Some(first), Some(cut)) = (self.auto_started.front(), minute_ago) {
            if *first > cut {
                break;
            }
            self.auto_started.pop_front();
        }
        if self.auto_started.len() >= self.max_auto_per_minute {
            return Some((
                "per_minute",
                format!(
                    "not applied: {} automatic mitigations started in the last minute, the most \
                     ban.max_auto_bans_per_minute allows",
                    self.auto_started.len()
                ),
            ));
        }
        None
    }

    /// Applies `actions` in order to `target`; returns each one's outcome.
    async fn apply_all(
        &mut self,
        actions: &[Action],
        target: &Target<'_>,
        expires: Option<u64>,
        reason: &str,
        id: &str,
    ) -> Vec<ActionState> {
        let mut states = Vec::with_capacity(actions.len());
        for action in actions {
            let mut state = ActionState {
                action: *action,
                result: ActionResult::Failed,
                applied: None,
                error: None,
                attempts: 0,
                next_retry_unix_ms: None,
            };
            self.attempt(&mut state, target, expires, reason, id).await;
            states.push(state);
        }
        states
    }

    async fn attempt(
        &mut self,
        state: &mut ActionState,
        target: &Target<'_>,
        expires: Option<u64>,
        reason: &str,
        id: &str,
    ) {
        state.attempts += 1;
        let Some(action) = self.actions.get(&state.action) else {
            state.result = ActionResult::Failed;
            state.error = Some(format!(
                "{} is not configured (see its section in the config)",
                state.action.as_str()
            ));
            self.stats.count(state.action, "failed");
            return;
        };
        let mut env = ActionEnv {
            bans: &mut self.bans,
            expires,
            reason,
            mitigation: id,
            late: &self.late_tx,
        };
        match action.apply(&mut env, target).await {
            Ok(applied) => {
                if let Applied::Nothing { reason } = &applied {
                    tracing::info!("{}: nothing to do: {reason}", state.action.as_str());
                }
                state.result = ActionResult::Ok;
                state.applied = Some(applied);
                state.error = None;
                state.next_retry_unix_ms = None;
                self.stats.count(state.action, "ok");
            }
            Err(e) => {
                tracing::error!("{} for {reason}: {e}", state.action.as_str());
                state.error = Some(e.to_string());
                let exhausted = action
                    .max_attempts()
                    .is_some_and(|max| state.attempts >= max);
                if e.retryable() && !exhausted {
                    state.result = ActionResult::Retrying;
                    state.next_retry_unix_ms =
                        Some(unix_ms() + retry_delay(state.attempts).as_millis() as u64);
                } else {
                    state.result = ActionResult::Failed;
                    state.next_retry_unix_ms = None;
                }
                self.stats.count(state.action, "failed");
            }
        }
    }

    /// Answers an API request. The view is published before the answer goes out, so a client
    /// that got its answer reads the change (`GET /api/v1/bans` lists the ban just made).
    async fn request(&mut self, r: MitigatorRequest) {
        match r {
            MitigatorRequest::Ban { ban, reply } => {
                let result = self.manual_ban(ban).await;
                self.publish();
                let _ = reply.send(result);
            }
            MitigatorRequest::Reload(mut r) => {
                let notes = self.reconfigure(*r.config_and_actions()).await;
                self.publish();
                let _ = r.reply.send(notes);
            }
            MitigatorRequest::Unban {
                prefix,
                match_on,
                reply,
            } => {
                let result = self.manual_unban(prefix, match_on).await;
                self.publish();
                let _ = reply.send(result);
            }
        }
    }

    /// Takes a reloaded configuration: ban settings, policy and actions (see [`Reconfigure`]).
    /// Returns what could not be carried over.
    async fn reconfigure(&mut self, r: ReconfigureParts) -> Vec<String> {
        let ReconfigureParts {
            config,
            mut registry,
            keep,
        } = r;
        let mut notes = Vec::new();
        let mut old = std::mem::take(&mut self.actions);
        let mut replaced: BTreeMap<Action, Box<dyn MitigationAction>> = BTreeMap::new();
        for action in keep {
            if let Some(a) = old.remove(&action) {
                registry.actions.insert(action, a);
            }
        }
        for (action, a) in old {
            if matches!(action, Action::BgpBlackhole | Action::BgpFlowspec) {
                replaced.insert(action, a);
            }
        }
        self.actions = registry.actions;
        // Routes announced through a replaced BGP backend: withdrawn there, announced again
        // through the new one, so what is in force stays in force.
        for mi in 0..self.store.active().len() {
            for ai in 0..self.store.active()[mi].actions.len() {
                let state = self.store.active()[mi].actions[ai].clone();
                let (Some(applied), ActionResult::Ok) = (&state.applied, state.result) else {
                    continue;
                };
                let Some(old) = replaced.get(&state.action) else {
                    continue;
                };
                let id = self.store.active()[mi].id.clone();
                let mut env = ActionEnv {
                    bans: &mut self.bans,
                    expires: None,
                    reason: "",
                    mitigation: &id,
                    late: &self.late_tx,
                };
                if let Err(e) = old.lift(&mut env, applied).await {
                    notes.push(format!(
                        "mitigation {id}: withdrawing {} through the old backend: {e}",
                        state.action.as_str()
                    ));
                }
                let result = match self.actions.get(&state.action) {
                    Some(new) => new.reinstate(&mut env, applied).await,
                    None => Err(ActionError::Unavailable(format!(
                        "{} is no longer configured",
                        state.action.as_str()
                    ))),
                };
                if let Err(e) = result {
                    notes.push(format!(
                        "mitigation {id}: announcing {} through the new backend: {e}",
                        state.action.as_str()
                    ));
                    let s = &mut self.store.active_mut()[mi].actions[ai];
                    s.result = if e.retryable() {
                        ActionResult::Retrying
                    } else {
                        ActionResult::Failed
                    };
                    s.error = Some(e.to_string());
                    s.next_retry_unix_ms = Some(unix_ms());
                }
            }
        }
        self.ban_time = config.ban.time_limit();
        self.unban_only_when_stopped = config.ban.unban_only_when_stopped;
        self.manual_actions = config.ban.manual_actions.clone();
        self.policy = self.policy.reconfigured(&config);
        self.max_active_auto = config.ban.max_active_auto_bans;
        self.max_auto_per_minute = config.ban.max_auto_bans_per_minute;
        self.store.save();
        self.dirty = true;
        for n in &notes {
            tracing::warn!("reload: {n}");
        }
        notes
    }

    /// Checks a manual ban: its reason and duration, then the safety policy.
    fn check_manual(&self, ban: &ManualBan) -> Result<(), MitigatorError> {
        if ban.reason.len() > MAX_REASON_BYTES {
            return Err(MitigatorError::Invalid(format!(
                "reason is {} bytes long; at most {MAX_REASON_BYTES} are allowed",
                ban.reason.len()
            )));
        }
        if ban.reason.chars().any(char::is_control) {
            return Err(MitigatorError::Invalid(
                "reason must not contain control characters (line breaks, escapes)".into(),
            ));
        }
        if ban.duration.is_some_and(|d| d > MAX_BAN_DURATION) {
            return Err(MitigatorError::Invalid(
                "duration is longer than ten years; leave it out to ban until unbanned".into(),
            ));
        }
        let check = BanCheck {
            prefix: ban.prefix,
            match_on: ban.match_on,
            force: ban.force,
            requester: ban.requester,
        };
        match self.policy.check(&check) {
            Ok(skipped) => {
                for r in skipped {
                    tracing::warn!(
                        "forced ban of {} ({}) skips a safety check: {r}",
                        ban.prefix,
                        ban.match_on.as_str()
                    );
                }
                Ok(())
            }
            Err(r) => {
                tracing::warn!(
                    "refused the ban of {} ({}): {r}",
                    ban.prefix,
                    ban.match_on.as_str()
                );
                self.stats
                    .manual_bans_refused
                    .get_or_create(&vec![("check".into(), r.code().into())])
                    .inc();
                Err(r.into())
            }
        }
    }

    async fn manual_ban(
        &mut self,
        ban: ManualBan,
    ) -> Result<(BanView, Vec<ActionState>), MitigatorError> {
        self.check_manual(&ban)?;
        let ManualBan {
            prefix,
            match_on,
            duration,
            reason,
            ..
        } = ban;
        let now = unix_now();
        let expires = duration.map(|d| now.saturating_add(d.as_secs().max(1)));
        // Banning again renews: the old manual mitigation is lifted first.
        if let Some(old) = self.manual_of(prefix, match_on) {
            self.lift(&old).await.map_err(|e| {
                MitigatorError::Failed(format!("renewing the ban of {prefix}: {e}"))
            })?;
        }
        let id = format!("manual-{}", uuid::Uuid::now_v7());
        let target = Target::Prefix { prefix, match_on };
        let actions = self.manual_actions.clone();
        let label = if reason.is_empty() {
            id.clone()
        } else {
            reason.clone()
        };
        let states = self
            .apply_all(&actions, &target, expires, &label, &id)
            .await;
        if !states.is_empty() && states.iter().all(|s| s.result == ActionResult::Failed) {
            let why: Vec<String> = states
                .iter()
                .map(|s| {
                    format!(
                        "{}: {}",
                        s.action.as_str(),
                        s.error.as_deref().unwrap_or("failed")
                    )
                })
                .collect();
            return Err(MitigatorError::Failed(format!(
                "nothing was banned: {}",
                why.join("; ")
            )));
        }
        let m = Mitigation {
            id,
            origin: BanOrigin::Manual,
            host: prefix.addr(),
            direction: None,
            prefix,
            match_on,
            started: now,
            expires,
            pps: 0,
            reason: reason.clone(),
            attack_ongoing: false,
            actions: states.clone(),
            lifted: None,
            attack: None,
        };
        self.store.insert(m);
        tracing::info!("banned {prefix} ({}) by hand", match_on.as_str());
        let ban = self.bans.get(prefix, match_on).cloned().unwrap_or(Ban {
            prefix,
            match_on,
            created: now,
            expires,
            origin: BanOrigin::Manual,
            reason,
        });
        let (p, b) = self
            .bans
            .dataplane()
            .drop_counter(prefix, match_on)
            .unwrap_or((0, 0));
        Ok((
            BanView {
                ban,
                dropped_packets: p,
                dropped_bytes: b,
            },
            states,
        ))
    }

    fn manual_of(&self, prefix: Prefix, match_on: DropMatch) -> Option<Mitigation> {
        self.store
            .active()
            .iter()
            .find(|m| m.origin == BanOrigin::Manual && m.prefix == prefix && m.match_on == match_on)
            .cloned()
    }

    async fn manual_unban(
        &mut self,
        prefix: Prefix,
        match_on: DropMatch,
    ) -> Result<Ban, MitigatorError> {
        let listed = self.bans.get(prefix, match_on).cloned();
        if let Some(m) = self.manual_of(prefix, match_on) {
            self.lift(&m)
                .await
                .map_err(|e| MitigatorError::Failed(e.to_string()))?;
            tracing::info!("unbanned {prefix} ({})", match_on.as_str());
            return Ok(listed.unwrap_or(Ban {
                prefix,
                match_on,
                created: m.started,
                expires: m.expires,
                origin: BanOrigin::Manual,
                reason: m.reason,
            }));
        }
        match self.bans.remove(prefix, match_on) {
            Ok(Some(ban)) => {
                tracing::info!("unbanned {prefix} ({})", match_on.as_str());
                Ok(ban)
            }
            Ok(None) => Err(MitigatorError::NotFound(format!(
                "no ban for {prefix} on {}",
                match_on.as_str()
            ))),
            Err(e) => Err(MitigatorError::Failed(e.to_string())),
        }
    }

    /// Lifts every applied action of `m` and retires it. On the first failure the mitigation
    /// stays active (what was lifted is marked so) and the error is returned.
    async fn lift(&mut self, m: &Mitigation) -> Result<(), ActionError> {
        let Some(mi) = self.store.active().iter().position(|x| x.id == m.id) else {
            return Ok(());
        };
        let reason = m.id.clone();
        for ai in 0..self.store.active()[mi].actions.len() {
            let state = self.store.active()[mi].actions[ai].clone();
            let (Some(applied), ActionResult::Ok) = (&state.applied, state.result) else {
                continue;
            };
            let Some(applied) = self.not_held_elsewhere(&m.id, applied) else {
                continue;
            };
            let applied = &applied;
            let Some(action) = self.actions.get(&state.action) else {
                continue;
            };
            let mut env = ActionEnv {
                bans: &mut self.bans,
                expires: None,
                reason: &reason,
                mitigation: &m.id,
                late: &self.late_tx,
            };
            match action.lift(&mut env, applied).await {
                Ok(()) => {
                    self.store.active_mut()[mi].actions[ai].result = ActionResult::Lifted;
                    self.stats.count(state.action, "lifted");
                }
                Err(e) => {
                    self.stats.count(state.action, "lift_failed");
                    self.store.save();
                    return Err(e);
                }
            }
        }
        tracing::info!("lifted mitigation {} of {}", m.id, m.prefix);
        self.store.retire(&m.id, unix_now());
        self.dirty = true;
        Ok(())
    }

    /// The ban list is the saved truth about drop entries (each change is journaled before it
    /// is acknowledged). A mitigation whose drop entries are all gone from it was lifted, but
    /// the mitigations file could not be saved after (a full disk): it is retired now rather
    /// than brought back, so the unban that was answered holds.
    fn reconcile_drops(&mut self) {
        let mut lifted = Vec::new();
        for m in self.store.active_mut().iter_mut() {
            for s in m.actions.iter_mut() {
                if let (Some(Applied::XdpDrops { entries }), ActionResult::Ok) =
                    (&s.applied, s.result)
                {
                    if !entries.is_empty()
                        && entries
                            .iter()
                            .all(|(p, side)| self.bans.get(*p, *side).is_none())
                    {
                        s.result = ActionResult::Lifted;
                    }
                }
            }
            let in_force = m
                .actions
                .iter()
                .any(|s| matches!(s.result, ActionResult::Ok | ActionResult::Retrying));
            if !in_force {
                lifted.push(m.id.clone());
            }
        }
        for id in lifted {
            tracing::warn!(
                "mitigation {id}: its drop entries are no longer in the ban list; recorded as \
                 lifted"
            );
            self.store.retire(&id, unix_now());
        }
    }

    /// What lifting `applied` of mitigation `id` may take back: all of it, or for blackhole
    /// routes those no other active mitigation holds (two attacks in one subnet share its
    /// route); `None` when another mitigation still needs all of it.
    fn not_held_elsewhere(&self, id: &str, applied: &Applied) -> Option<Applied> {
        let Applied::BgpBlackhole { prefix, subnet } = applied else {
            return (!self.still_needed(id, applied)).then(|| applied.clone());
        };
        let held = |route: &Prefix| {
            self.store.active().iter().filter(|m| m.id != id).any(|m| {
                m.actions.iter().any(|s| {
                    s.result == ActionResult::Ok
                        && matches!(&s.applied, Some(Applied::BgpBlackhole { prefix: p, subnet: n })
                            if p.as_ref() == Some(route) || n.as_ref() == Some(route))
                })
            })
        };
        let prefix = prefix.filter(|p| !held(p));
        let subnet = subnet.filter(|s| !held(s));
        (prefix.is_some() || subnet.is_some()).then_some(Applied::BgpBlackhole { prefix, subnet })
    }

    /// True when another active mitigation holds the same thing in place (the same host's
    /// rules, drop entry or route): lifting it now would undo that one too.
    fn still_needed(&self, id: &str, applied: &Applied) -> bool {
        let same = |other: &Applied| match (applied, other) {
            (
                Applied::XdpRules {
                    host, direction, ..
                },
                Applied::XdpRules {
                    host: h,
                    direction: d,
                    ..
                },
            ) => host == h && direction == d,
            (Applied::XdpDrops { entries }, Applied::XdpDrops { entries: e }) => {
                entries.iter().any(|x| e.contains(x))
            }
            (
                Applied::BgpBlackhole { prefix, subnet },
                Applied::BgpBlackhole {
                    prefix: p,
                    subnet: s,
                },
            ) => prefix == p && subnet == s,
            (Applied::BgpFlowspec { rule }, Applied::BgpFlowspec { rule: r }) => rule == r,
            _ => false,
        };
        self.store.active().iter().filter(|m| m.id != id).any(|m| {
            m.actions
                .iter()
                .any(|s| s.result == ActionResult::Ok && s.applied.as_ref().is_some_and(&same))
        })
    }

    /// Lifts mitigations whose time has come (and whose attack stopped, when configured), and
    /// drop entries that expired without a mitigation.
    async fn expire(&mut self) {
        let now = unix_now();
        let due: Vec<Mitigation> = self
            .store
            .active()
            .iter()
            .filter(|m| m.expires.is_some_and(|e| e <= now))
            .filter(|m| !(self.unban_only_when_stopped && m.attack_ongoing))
            .cloned()
            .collect();
        for m in due {
            if let Err(e) = self.lift(&m).await {
                tracing::error!("lifting mitigation {}: {e}; trying again", m.id);
            }
        }
        let owned = |b: &Ban, ms: &[Mitigation]| {
            ms.iter().any(|m| {
                m.actions.iter().any(|s| {
                    matches!(&s.applied, Some(Applied::XdpDrops { entries })
                        if entries.contains(&(b.prefix, b.match_on)))
                        && s.result == ActionResult::Ok
                })
            })
        };
        for ban in self.bans.expired(now) {
            if owned(&ban, self.store.active()) {
                continue;
            }
            match self.bans.remove(ban.prefix, ban.match_on) {
                Ok(_) => {
                    tracing::info!("ban {} ({}) expired", ban.prefix, ban.match_on.as_str());
                    self.dirty = true;
                }
                Err(e) => tracing::warn!("expiring ban {}: {e}", ban.prefix),
            }
        }
    }

    /// Tries again the actions whose retry is due.
    async fn retry(&mut self) {
        let now = unix_ms();
        let mut due = Vec::new();
        for (mi, m) in self.store.active().iter().enumerate() {
            for (ai, s) in m.actions.iter().enumerate() {
                if s.result == ActionResult::Retrying
                    && s.next_retry_unix_ms.is_some_and(|t| t <= now)
                {
                    due.push((mi, ai));
                }
            }
        }
        for (mi, ai) in due {
            let m = self.store.active()[mi].clone();
            let mut state = m.actions[ai].clone();
            let remotes: Vec<IpAddr> = Vec::new();
            let target = match &m.attack {
                Some(attack) => Target::Attack {
                    attack,
                    remotes: &remotes,
                },
                None => Target::Prefix {
                    prefix: m.prefix,
                    match_on: m.match_on,
                },
            };
            let reason = if m.reason.is_empty() {
                m.id.clone()
            } else {
                m.reason.clone()
            };
            self.attempt(&mut state, &target, m.expires, &reason, &m.id)
                .await;
            if state.result == ActionResult::Ok {
                tracing::info!(
                    "mitigation {}: {} applied after {} attempts",
                    m.id,
                    state.action.as_str(),
                    state.attempts
                );
            }
            self.store.active_mut()[mi].actions[ai] = state;
            self.dirty = true;
        }
        if self.dirty {
            self.store.save();
        }
    }
}

/// The direction argument of a manual ban's script call, as FastNetMon passes it.
pub const MANUAL_DIRECTION: &str = "other";

/// Direction label for logs.
pub fn direction_label(d: Option<Direction>) -> &'static str {
    d.map_or(MANUAL_DIRECTION, Direction::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bans::BanStore, dataplane::DataPlaneHandle, detection::attack::Attack};
    use std::sync::Mutex;

    async fn start(extra: &str) -> (MitigatorHandle, mpsc::Sender<Decision>) {
        let config: Config = toml::from_str(&format!(
            "networks = [\"10.0.0.0/8\"]\nwhitelist = [\"192.0.2.0/24\"]\n{extra}"
        ))
        .unwrap();
        let bans = BanManager::new(BanStore::in_memory(), DataPlaneHandle::absent());
        // This host's addresses: 10.0.0.1 only, whatever the machine running the test has.
        let policy = BanPolicy::with_addresses(
            &config,
            Arc::new(|| {
                Ok(vec![policy::OwnAddress {
                    prefix: "10.0.0.1/32".parse().unwrap(),
                    what: "an address of eth0".into(),
                }])
            }),
        );
        spawn_with_policy(&config, bans, MitigationStore::in_memory(), policy)
            .await
            .unwrap()
    }

    fn manual(prefix: &str, match_on: DropMatch) -> ManualBan {
        ManualBan::new(prefix.parse().unwrap(), match_on)
    }

    fn attack(host: &str) -> Box<Attack> {
        use crate::detection::detector::{Crossing, Opening};
        let rates = crate::accounting::Rates {
            pps: 50_000.0,
            ..Default::default()
        };
        let (a, _) = Attack::open(
            format!("attack-{host}"),
            unix_ms(),
            Opening {
                host: host.parse().unwrap(),
                direction: Direction::Incoming,
                crossing: Crossing {
                    rate: crate::accounting::RateKind::Pps,
                    value: 50_000.0,
                    threshold: 10_000.0,
                },
                rates,
                hostgroup: None,
                report_only: false,
            },
            None,
            32,
        );
        Box::new(a)
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn manual_ban_and_unban_go_through_the_manual_actions() {
        let (m, _decisions) = start("").await;
        let p: Prefix = "198.51.100.7/32".parse().unwrap();
        let (ban, actions) = m
            .ban(ManualBan {
                reason: "test".into(),
                ..ManualBan::new(p, DropMatch::Src)
            })
            .await
            .unwrap();
        assert_eq!(ban.ban.prefix, p);
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].action, Action::XdpBlackhole);
        assert_eq!(actions[0].result, ActionResult::Ok);
        wait_for("ban listed", || m.view().bans.len() == 1).await;
        assert_eq!(m.view().active.len(), 1);
        m.unban(p, DropMatch::Src).await.unwrap();
        wait_for("ban gone", || m.view().bans.is_empty()).await;
        assert!(m.view().active.is_empty());
        assert!(matches!(
            m.unban(p, DropMatch::Src).await,
            Err(MitigatorError::NotFound(_))
        ));
        assert!(matches!(
            m.ban(manual("192.0.2.9/32", DropMatch::Src)).await,
            Err(MitigatorError::Refused(BanRefusal::InsideWhitelist { .. }))
        ));
    }

    #[tokio::test]
    async fn a_reload_keeps_what_is_in_force_and_applies_the_new_policy_and_actions() {
        let (m, _decisions) = start("").await;
        m.ban(manual("198.51.100.7/32", DropMatch::Src))
            .await
            .unwrap();
        assert!(m.script_stats.load().is_none());
        let config: Config = toml::from_str(
            "networks = [\"10.0.0.0/8\"]\nwhitelist = [\"198.51.100.0/24\"]\n\
             [ban]\nmanual_actions = [\"script\"]\nscript = \"/bin/true\"\n",
        )
        .unwrap();
        let keep = crate::reload::keep_actions(&Config::default(), &config);
        let registry = crate::actions::registry_except(&config, &keep).unwrap();
        let notes = m.reload(config, registry, keep).await.unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        // The ban made before stays in force...
        assert_eq!(m.view().bans.len(), 1);
        assert_eq!(m.view().active.len(), 1);
        // ...while new bans meet the new whitelist, and run the new manual actions.
        assert!(matches!(
            m.ban(manual("198.51.100.8/32", DropMatch::Src)).await,
            Err(MitigatorError::Refused(BanRefusal::InsideWhitelist { .. }))
        ));
        let (_, actions) = m
            .ban(manual("203.0.113.9/32", DropMatch::Src))
            .await
            .unwrap();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].action, Action::Script);
        assert!(m.script_stats.load().is_some(), "the new script's counters");
        // Lifting the old ban goes through the action that made it.
        m.unban("198.51.100.7/32".parse().unwrap(), DropMatch::Src)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answered_ban_or_unban_is_already_in_the_view() {
        let (m, _decisions) = start("").await;
        let p: Prefix = "198.51.100.7/32".parse().unwrap();
        for _ in 0..200 {
            m.ban(manual("198.51.100.7/32", DropMatch::Src))
                .await
                .unwrap();
            assert_eq!(m.view().bans.len(), 1, "listed once banned");
            assert_eq!(m.view().active.len(), 1);
            m.unban(p, DropMatch::Src).await.unwrap();
            assert!(m.view().bans.is_empty(), "gone once unbanned");
            assert!(m.view().active.is_empty());
        }
    }

    #[tokio::test]
    async fn unsafe_manual_bans_are_refused_before_any_action() {
        let (m, _decisions) = start("").await;
        let refused = |r: Result<(BanView, Vec<ActionState>), MitigatorError>| match r {
            Err(MitigatorError::Refused(r)) => r.code(),
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            refused(m.ban(manual("0.0.0.0/0", DropMatch::Src)).await),
            "prefix_too_short"
        );
        assert_eq!(
            refused(m.ban(manual("192.0.0.0/16", DropMatch::Src)).await),
            "covers_whitelist"
        );
        assert_eq!(
            refused(m.ban(manual("10.0.0.0/24", DropMatch::Dst)).await),
            "own_address"
        );
        assert_eq!(
            refused(m.ban(manual("203.0.113.9/32", DropMatch::Dst)).await),
            "outside_networks"
        );
        assert_eq!(
            refused(
                m.ban(ManualBan {
                    requester: Some("198.51.100.9".parse().unwrap()),
                    ..manual("198.51.100.0/24", DropMatch::Src)
                })
                .await
            ),
            "requester_address"
        );
        assert_eq!(
            refused(
                m.ban(ManualBan {
                    force: true,
                    ..manual("0.0.0.0/0", DropMatch::Src)
                })
                .await
            ),
            "force_not_allowed"
        );
        assert!(matches!(
            m.ban(ManualBan {
                reason: "x".repeat(MAX_REASON_BYTES + 1),
                ..manual("198.51.100.7/32", DropMatch::Src)
            })
            .await,
            Err(MitigatorError::Invalid(_))
        ));
        assert!(matches!(
            m.ban(ManualBan {
                duration: Some(Duration::from_secs(u64::MAX)),
                ..manual("198.51.100.7/32", DropMatch::Src)
            })
            .await,
            Err(MitigatorError::Invalid(_))
        ));
        tokio::time::sleep(MITIGATOR_TICK * 2).await;
        assert!(m.view().bans.is_empty());
        assert!(m.view().active.is_empty());
        let (m, _decisions) = start("[ban]\nallow_force = true\n").await;
        let (b, _) = m
            .ban(ManualBan {
                force: true,
                ..manual("0.0.0.0/0", DropMatch::Src)
            })
            .await
            .unwrap();
        assert_eq!(b.ban.prefix.to_string(), "0.0.0.0/0");
    }

    #[tokio::test]
    async fn automatic_mitigations_beyond_the_cap_are_recorded_not_applied() {
        let (m, decisions) =
            start("[ban]\nactions = [\"xdp_blackhole\"]\nmax_active_auto_bans = 2\n").await;
        for host in ["10.1.0.1", "10.1.0.2", "10.1.0.3"] {
            decisions
                .send(Decision::AttackStarted {
                    attack: attack(host),
                    remotes: Vec::new(),
                    actions: vec![Action::XdpBlackhole],
                })
                .await
                .unwrap();
        }
        wait_for("three mitigations recorded", || {
            let v = m.view();
            v.active.len() + v.recent.len() == 3
        })
        .await;
        let v = m.view();
        assert_eq!(v.active.len(), 2);
        assert_eq!(v.bans.len(), 2);
        let third = v.actions_of("attack-10.1.0.3").expect("third recorded");
        assert_eq!(third[0].result, ActionResult::NotApplied);
        let why = third[0].error.as_deref().unwrap_or_default();
        assert!(why.contains("max_active_auto_bans"), "{why}");
        let capped = m
            .stats
            .auto_bans_not_applied
            .get_or_create(&vec![("reason".into(), "max_active".into())])
            .get();
        assert_eq!(capped, 1);
    }

    #[tokio::test]
    async fn an_attack_on_an_own_address_gets_no_blackhole_but_its_other_actions() {
        let (m, decisions) = start("[ban]\nactions = [\"xdp_blackhole\", \"xdp_rule\"]\n").await;
        decisions
            .send(Decision::AttackStarted {
                attack: attack("10.0.0.1"),
                remotes: Vec::new(),
                actions: vec![Action::XdpBlackhole, Action::XdpRule],
            })
            .await
            .unwrap();
        wait_for("the mitigation recorded", || {
            m.view().actions_of("attack-10.0.0.1").is_some()
        })
        .await;
        let view = m.view();
        let actions = view.actions_of("attack-10.0.0.1").unwrap();
        let blackhole = actions
            .iter()
            .find(|s| s.action == Action::XdpBlackhole)
            .expect("listed");
        assert_eq!(blackhole.result, ActionResult::NotApplied);
        let why = blackhole.error.as_deref().unwrap_or_default();
        assert!(why.contains("an address of eth0"), "{why}");
        assert!(
            m.view().bans.is_empty(),
            "no drop of the agent's own address"
        );
        let rule = actions
            .iter()
            .find(|s| s.action == Action::XdpRule)
            .unwrap();
        assert_ne!(rule.result, ActionResult::NotApplied, "{rule:?}");
        // Another host's attack is blackholed as configured.
        decisions
            .send(Decision::AttackStarted {
                attack: attack("10.0.0.2"),
                remotes: Vec::new(),
                actions: vec![Action::XdpBlackhole],
            })
            .await
            .unwrap();
        wait_for("the other host dropped", || m.view().bans.len() == 1).await;
    }

    #[tokio::test]
    async fn automatic_mitigations_per_minute_are_capped() {
        let (m, decisions) =
            start("[ban]\nactions = [\"xdp_blackhole\"]\nmax_auto_bans_per_minute = 1\n").await;
        for host in ["10.2.0.1", "10.2.0.2"] {
            decisions
                .send(Decision::AttackStarted {
                    attack: attack(host),
                    remotes: Vec::new(),
                    actions: vec![Action::XdpBlackhole],
                })
                .await
                .unwrap();
        }
        wait_for("two mitigations recorded", || {
            let v = m.view();
            v.active.len() + v.recent.len() == 2
        })
        .await;
        let second = m.view().actions_of("attack-10.2.0.2").unwrap().to_vec();
        assert_eq!(second[0].result, ActionResult::NotApplied);
        assert!(second[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("max_auto_bans_per_minute"));
    }

    /// A web hook server that records what it was sent.
    async fn hook_server(listener: tokio::net::TcpListener) -> Arc<Mutex<Vec<serde_json::Value>>> {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let g = g.clone();
                async move {
                    g.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or_default());
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        got
    }

    #[tokio::test]
    async fn a_failed_peer_is_retried_until_it_answers() {
        // A port nobody listens on yet.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (m, _decisions) = start(&format!(
            "[ban]\nmanual_actions = [\"webhook\"]\n[webhook]\nurl = \"http://127.0.0.1:{port}/hook\"\n\
             timeout = \"1s\"\nretries = 10\n"
        ))
        .await;
        let p: Prefix = "10.9.9.8/32".parse().unwrap();
        let (_, actions) = m.ban(ManualBan::new(p, DropMatch::Dst)).await.unwrap();
        assert_eq!(actions[0].result, ActionResult::Retrying, "{actions:?}");
        assert!(actions[0].error.is_some());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let got = hook_server(listener).await;
        wait_for("the retry to reach the server", || {
            m.view().active[0].actions[0].result == ActionResult::Ok
        })
        .await;
        assert_eq!(got.lock().unwrap()[0]["event"], "ban");
        assert!(m.view().active[0].actions[0].attempts >= 2);
        m.unban(p, DropMatch::Dst).await.unwrap();
        wait_for("the unban post", || got.lock().unwrap().len() == 2).await;
        assert_eq!(got.lock().unwrap()[1]["event"], "unban");
    }

    #[tokio::test]
    async fn a_script_that_fails_later_is_recorded_as_failed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fail.sh");
        std::fs::write(&script, "#!/bin/sh\necho boom >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (m, _decisions) = start(&format!(
            "[ban]\nmanual_actions = [\"script\"]\nscript = \"{}\"\n",
            script.display()
        ))
        .await;
        let (_, actions) = m
            .ban(manual("198.51.100.9/32", DropMatch::Src))
            .await
            .unwrap();
        assert_eq!(actions[0].result, ActionResult::Ok, "queued");
        wait_for("the script's failure to be recorded", || {
            m.view().active[0].actions[0].result == ActionResult::Failed
        })
        .await;
        let error = m.view().active[0].actions[0].error.clone().unwrap();
        assert!(error.contains("boom"), "{error}");
    }
}
