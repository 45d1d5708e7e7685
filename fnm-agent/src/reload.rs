//! Reloading the configuration of a running agent (SIGHUP, `POST /api/v1/reload`,
//! `fnm-agent reload`) without detaching XDP and without losing counters, bans, mitigations or
//! attacks.
//!
//! A reload reads the file the agent was started with, checks it as `run` would, and hands
//! each part to its owner: the engine takes networks, whitelists, thresholds, hostgroups, stop
//! settings, ban actions and `prometheus.top_hosts` between two ticks (a command, like a host
//! query); the mitigator takes the ban settings, the safety policy and the actions (the notify
//! script, BGP and the web hook are rebuilt only when their settings changed); the XDP program
//! takes the new whitelist, attaches to an added interface and detaches from a removed one; the
//! flow collectors are restarted when `[sflow]` or `[netflow]` changed. What cannot change
//! while running (see [`RESTART_KEYS`]) keeps its running value and is named in the answer.
//!
//! A file that does not parse or check keeps the running configuration whole; so does a change
//! that fails to apply (an interface that cannot be attached, a listen address that cannot be
//! bound), which is undone. Every reload is counted in `fnm_config_reloads_total{result}`.

use crate::{
    actions::Action,
    config::Config,
    dataplane::DataPlaneHandle,
    engine::{input::EngineInput, EngineClient, EngineCommand},
    metrics::MetricsSource,
    mitigator::MitigatorHandle,
    prefix::Prefix,
    sources::flow::FlowSource,
};
use arc_swap::ArcSwap;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;
use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// The configuration in force, as the views read it.
pub type SharedConfig = Arc<ArcSwap<Config>>;

/// Where the API sends reload requests (each with where the outcome goes).
pub type ReloadTrigger = mpsc::Sender<oneshot::Sender<ReloadOutcome>>;

/// Longest wait for the engine or the mitigator to take a reloaded configuration.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys (`section` or `section.key`) that only a restart changes: sizes of kernel maps and
/// tables, the clock, the state directory, the capture backend and the HTTP listeners.
pub const RESTART_KEYS: &[&str] = &[
    "state_dir",
    "poll_interval",
    "rate_window",
    "xdp (every key but interfaces)",
    "accounting",
    "api",
    "prometheus (every key but top_hosts)",
    "capture",
];

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// The new configuration is in force (but for what `restart_needed` lists).
    Success,
    /// The file did not read, parse or check: the running configuration is kept.
    Invalid,
    /// Applying it failed and was undone: the running configuration is kept.
    Failed,
}

impl ReloadResult {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Invalid => "invalid",
            ReloadResult::Failed => "failed",
        }
    }
}

/// The answer to a reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// How it ended.
    pub result: ReloadResult,
    /// The file read.
    pub config: PathBuf,
    /// Keys whose new values are in force.
    pub changed: Vec<String>,
    /// Keys that changed in the file but keep their running value until a restart.
    pub restart_needed: Vec<String>,
    /// What could not be carried over (a route the new BGP backend refused...).
    pub notes: Vec<String>,
    /// Why it failed (`invalid`, `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `fnm_config_reloads_total{result}` and `fnm_config_last_reload_success_timestamp_seconds`.
#[derive(Debug, Default)]
pub struct ReloadStats {
    success: AtomicU64,
    invalid: AtomicU64,
    failed: AtomicU64,
    last_success_unix: AtomicI64,
}

impl ReloadStats {
    /// Counts a reload; a success also sets its time.
    pub fn count(&self, result: ReloadResult) {
        match result {
            ReloadResult::Success => {
                self.success.fetch_add(1, Relaxed);
                self.last_success_unix
                    .store(crate::bans::unix_now() as i64, Relaxed);
            }
            ReloadResult::Invalid => {
                self.invalid.fetch_add(1, Relaxed);
            }
            ReloadResult::Failed => {
                self.failed.fetch_add(1, Relaxed);
            }
        }
    }

    /// Sets the time the running configuration was loaded (at start).
    pub fn loaded_now(&self) {
        self.last_success_unix
            .store(crate::bans::unix_now() as i64, Relaxed);
    }
}

impl MetricsSource for ReloadStats {
    fn register(&self, registry: &mut Registry) {
        let reloads = Family::<Vec<(String, String)>, Counter>::default();
        for (result, n) in [
            (ReloadResult::Success, &self.success),
            (ReloadResult::Invalid, &self.invalid),
            (ReloadResult::Failed, &self.failed),
        ] {
            reloads
                .get_or_create(&vec![("result".into(), result.as_str().into())])
                .inc_by(n.load(Relaxed));
        }
        registry.register(
            "fnm_config_reloads",
            "Configuration reloads, by result (success, invalid: file refused, failed: undone)",
            reloads,
        );
        let last = Gauge::<i64>::default();
        last.set(self.last_success_unix.load(Relaxed));
        registry.register(
            "fnm_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (start or last successful reload)",
            last,
        );
    }
}

/// A metrics source that can be replaced (the flow collectors' families after a restart).
#[derive(Default)]
pub struct SwappableMetrics {
    inner: arc_swap::ArcSwapOption<Arc<dyn MetricsSource>>,
}

impl SwappableMetrics {
    /// Renders `source` from now on.
    pub fn set(&self, source: Arc<dyn MetricsSource>) {
        self.inner.store(Some(Arc::new(source)));
    }
}

impl MetricsSource for SwappableMetrics {
    fn register(&self, registry: &mut Registry) {
        if let Some(s) = self.inner.load_full() {
            s.register(registry);
        }
    }
}

/// The changed keys between two configurations: `section.key` inside a table, `key` at the
/// top level (arrays of tables, such as `hostgroup`, as a whole).
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["(the configuration)".into()];
    };
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        match (x.and_then(|v| v.as_object()), y.and_then(|v| v.as_object())) {
            (Some(x), Some(y)) => {
                let sub: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                out.extend(
                    sub.into_iter()
                        .filter(|s| x.get(*s) != y.get(*s))
                        .map(|s| format!("{k}.{s}")),
                );
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

/// True when a changed key (from [`changed_keys`]) needs a restart.
pub fn needs_restart(key: &str) -> bool {
    let (section, sub) = key.split_once('.').unwrap_or((key, ""));
    match section {
        "state_dir" | "poll_interval" | "rate_window" | "accounting" | "api" | "capture"
        | "export" | "kafka" | "cluster" => true,
        "xdp" => sub != "interfaces",
        "prometheus" => sub != "top_hosts",
        _ => false,
    }
}

/// `new` with the running values of what needs a restart, so the configuration in force says
/// what really runs (and the next reload still names them).
pub fn carry_over(old: &Config, new: Config) -> Config {
    let mut eff = new;
    eff.state_dir = old.state_dir.clone();
    eff.poll_interval = old.poll_interval;
    eff.rate_window = old.rate_window;
    eff.accounting = old.accounting.clone();
    eff.api = old.api.clone();
    eff.capture = old.capture.clone();
    eff.export = old.export.clone();
    eff.kafka = old.kafka.clone();
    eff.cluster = old.cluster.clone();
    let top_hosts = eff.prometheus.top_hosts;
    eff.prometheus = old.prometheus.clone();
    eff.prometheus.top_hosts = top_hosts;
    let interfaces = std::mem::take(&mut eff.xdp.interfaces);
    eff.xdp = old.xdp.clone();
    eff.xdp.interfaces = interfaces;
    eff
}

/// Actions whose running objects a reload keeps: the script when its settings did not change,
/// the BGP actions when `[bgp]` and their use did not (nor the whitelist, when subnets are
/// announced).
pub fn keep_actions(old: &Config, new: &Config) -> BTreeSet<Action> {
    let mut keep = BTreeSet::new();
    let (a, b) = (&old.ban, &new.ban);
    if a.script.is_some()
        && a.script == b.script
        && a.script_format == b.script_format
        && a.script_timeout == b.script_timeout
        && a.script_parallel == b.script_parallel
        && a.script_queue == b.script_queue
    {
        keep.insert(Action::Script);
    }
    let uses_bgp =
        |c: &Config| c.uses_action(Action::BgpBlackhole) || c.uses_action(Action::BgpFlowspec);
    // The blackhole action keeps the whitelist its subnet routes must not cover.
    if uses_bgp(old)
        && uses_bgp(new)
        && old.actions.bgp == new.actions.bgp
        && (!new.actions.bgp.announces_subnets() || old.whitelist == new.whitelist)
    {
        keep.insert(Action::BgpBlackhole);
        keep.insert(Action::BgpFlowspec);
    }
    keep
}

/// Everything a reload hands the new configuration to.
pub struct Reloader {
    path: PathBuf,
    /// The configuration in force.
    pub config: SharedConfig,
    /// The networks the XDP program was loaded with (its local-network table is fixed).
    xdp_networks: Vec<Prefix>,
    engine: EngineClient,
    mitigator: MitigatorHandle,
    dataplane: DataPlaneHandle,
    input: EngineInput,
    flows: Option<FlowSource>,
    flow_metrics: Arc<SwappableMetrics>,
    /// Reload counters.
    pub stats: Arc<ReloadStats>,
}

/// What a [`Reloader`] is made of.
pub struct ReloaderParts {
    /// The configuration file to read again.
    pub path: PathBuf,
    /// The configuration in force.
    pub config: SharedConfig,
    /// The engine.
    pub engine: EngineClient,
    /// The mitigator.
    pub mitigator: MitigatorHandle,
    /// The XDP program (absent without XDP).
    pub dataplane: DataPlaneHandle,
    /// The engine's input, for restarted collectors.
    pub input: EngineInput,
    /// The running flow collectors.
    pub flows: Option<FlowSource>,
    /// Where the collectors' metric families are rendered from.
    pub flow_metrics: Arc<SwappableMetrics>,
    /// Reload counters.
    pub stats: Arc<ReloadStats>,
}

impl Reloader {
    /// A reloader over the running parts.
    pub fn new(p: ReloaderParts) -> Self {
        let xdp_networks = p.config.load().networks.clone();
        Self {
            path: p.path,
            config: p.config,
            xdp_networks,
            engine: p.engine,
            mitigator: p.mitigator,
            dataplane: p.dataplane,
            input: p.input,
            flows: p.flows,
            flow_metrics: p.flow_metrics,
            stats: p.stats,
        }
    }

    /// The flow collectors, to stop them at shutdown.
    pub fn take_flows(&mut self) -> Option<FlowSource> {
        self.flows.take()
    }

    /// Reads the configuration file again and puts it in force; logs and counts the outcome.
    pub async fn reload(&mut self) -> ReloadOutcome {
        let outcome = self.try_reload().await;
        self.stats.count(outcome.result);
        match outcome.result {
            ReloadResult::Success => {
                tracing::info!(
                    "configuration reloaded from {}: {}",
                    outcome.config.display(),
                    if outcome.changed.is_empty() {
                        "nothing changed".to_owned()
                    } else {
                        format!("changed {}", outcome.changed.join(", "))
                    }
                );
                if !outcome.restart_needed.is_empty() {
                    tracing::warn!(
                        "reload: restart needed for {} (the running values stay until then)",
                        outcome.restart_needed.join(", ")
                    );
                }
            }
            _ => tracing::error!(
                "reload of {} {}: {}; the running configuration is kept",
                outcome.config.display(),
                outcome.result.as_str(),
                outcome.error.as_deref().unwrap_or("?")
            ),
        }
        outcome
    }

    fn outcome(&self, result: ReloadResult, error: Option<String>) -> ReloadOutcome {
        ReloadOutcome {
            result,
            config: self.path.clone(),
            changed: Vec::new(),
            restart_needed: Vec::new(),
            notes: Vec::new(),
            error,
        }
    }

    async fn try_reload(&mut self) -> ReloadOutcome {
        let new = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => return self.outcome(ReloadResult::Invalid, Some(e.to_string())),
        };
        let old = self.config.load_full();
        let keys = changed_keys(&old, &new);
        let mut restart_needed: Vec<String> =
            keys.iter().filter(|k| needs_restart(k)).cloned().collect();
        let changed: Vec<String> = keys.into_iter().filter(|k| !needs_restart(k)).collect();
        let new = carry_over(&old, new);
        if let Err(e) = new.validate() {
            return self.outcome(ReloadResult::Invalid, Some(e));
        }
        // The checks `run` makes at start (interfaces exist, the script is executable ...):
        // a file that would not start the agent does not reload it either.
        let text = std::fs::read_to_string(&self.path).ok();
        let errors: Vec<String> = crate::preflight::check(&new, text.as_deref())
            .of(crate::preflight::Severity::Error)
            .map(|f| f.to_string())
            .collect();
        if !errors.is_empty() {
            return self.outcome(ReloadResult::Invalid, Some(errors.join("; ")));
        }
        if self.dataplane.is_present() && new.networks != self.xdp_networks {
            restart_needed.push(
                "networks on the XDP data plane (its local-network table is fixed at load; \
                 flows and capture count the new networks now)"
                    .into(),
            );
        }
        let keep = keep_actions(&old, &new);
        let registry = match crate::actions::registry_except(&new, &keep) {
            Ok(r) => r,
            Err(e) => return self.outcome(ReloadResult::Invalid, Some(format!("{e:#}"))),
        };

        // What can fail comes first, and is undone if a later step fails.
        let attached = match self.attach_added(&old, &new).await {
            Ok(a) => a,
            Err(e) => return self.outcome(ReloadResult::Failed, Some(e)),
        };
        if old.sflow != new.sflow || old.netflow != new.netflow {
            if let Err(e) = self.restart_collectors(&old, &new).await {
                self.detach(&new, attached).await;
                return self.outcome(ReloadResult::Failed, Some(e));
            }
        }

        // The rest cannot fail but for a stalled engine or mitigator.
        let mut notes = Vec::new();
        let removed: Vec<String> = old
            .xdp
            .interfaces
            .iter()
            .filter(|i| !new.xdp.interfaces.contains(i))
            .cloned()
            .collect();
        if self.dataplane.is_present() {
            self.dataplane.set_sample_one_in(new.ban.sample_one_in);
            self.detach(&new, removed).await;
            if old.whitelist != new.whitelist {
                if let Err(e) = self
                    .dataplane
                    .replace_whitelist(&old.whitelist, &new.whitelist)
                {
                    notes.push(format!("XDP whitelist: {e}"));
                }
            }
            if old.detection.whitelist_sources != new.detection.whitelist_sources {
                if let Err(e) = self
                    .dataplane
                    .set_whitelist_sources(&new.detection.whitelist_sources)
                {
                    notes.push(format!("XDP source whitelist: {e}"));
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        if !self
            .engine
            .command(EngineCommand::Reload(Box::new(new.clone()), tx))
        {
            notes.push("the engine's command queue is full: it keeps the old settings".into());
        } else if tokio::time::timeout(APPLY_TIMEOUT, rx).await.is_err() {
            notes.push("the engine did not confirm the new settings in time".into());
        }
        match tokio::time::timeout(
            APPLY_TIMEOUT,
            self.mitigator.reload(new.clone(), registry, keep),
        )
        .await
        {
            Ok(Ok(n)) => notes.extend(n),
            Ok(Err(e)) => notes.push(format!("mitigator: {e}")),
            Err(_) => notes.push("the mitigator did not confirm the new settings in time".into()),
        }
        self.config.store(Arc::new(new));
        ReloadOutcome {
            result: ReloadResult::Success,
            config: self.path.clone(),
            changed,
            restart_needed,
            notes,
            error: None,
        }
    }

    /// Attaches to the interfaces `new` adds; on a failure detaches those just attached.
    async fn attach_added(&self, old: &Config, new: &Config) -> Result<Vec<String>, String> {
        if !self.dataplane.is_present() {
            return Ok(Vec::new());
        }
        let added: Vec<String> = new
            .xdp
            .interfaces
            .iter()
            .filter(|i| !old.xdp.interfaces.contains(i))
            .cloned()
            .collect();
        if added.is_empty() {
            return Ok(added);
        }
        let (dp, config) = (self.dataplane.clone(), new.clone());
        tokio::task::spawn_blocking(move || {
            let mut done = Vec::new();
            for interface in added {
                match crate::attach::attach(&dp, &config, &interface) {
                    Ok(mode) => {
                        tracing::info!("reload: XDP attached to {interface} ({})", mode.as_str());
                        done.push(interface);
                    }
                    Err(e) => {
                        for i in &done {
                            crate::attach::detach(&dp, &config, i);
                        }
                        return Err(e.to_string());
                    }
                }
            }
            Ok(done)
        })
        .await
        .map_err(|e| format!("attaching: {e}"))?
    }

    async fn detach(&self, config: &Config, interfaces: Vec<String>) {
        if interfaces.is_empty() {
            return;
        }
        let (dp, config) = (self.dataplane.clone(), config.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for i in &interfaces {
                crate::attach::detach(&dp, &config, i);
                tracing::info!("reload: XDP detached from {i}");
            }
        })
        .await;
    }

    /// Stops the collectors and starts them with the new settings; when that fails, starts
    /// them again with the old ones.
    async fn restart_collectors(&mut self, old: &Config, new: &Config) -> Result<(), String> {
        let running = self.flows.take();
        let (old, new, input) = (old.clone(), new.clone(), self.input.clone());
        let (flows, result) = tokio::task::spawn_blocking(move || {
            if let Some(f) = running {
                crate::sources::Source::stop(Box::new(f));
            }
            match FlowSource::start(&new, input.clone()) {
                Ok(f) => (Some(f), Ok(())),
                Err(e) => {
                    let error = format!("starting the flow collectors: {e:#}");
                    match FlowSource::start(&old, input) {
                        Ok(f) => (Some(f), Err(error)),
                        Err(e2) => (
                            None,
                            Err(format!(
                                "{error}; restarting them with the old settings failed too: \
                                 {e2:#}"
                            )),
                        ),
                    }
                }
            }
        })
        .await
        .map_err(|e| format!("restarting the flow collectors: {e}"))?;
        if let Some(f) = &flows {
            self.flow_metrics.set(f.metrics());
        }
        self.flows = flows;
        result
    }
}

/// A reload answer (the API's JSON) as the CLI prints it.
pub fn describe(outcome: &serde_json::Value) -> String {
    let list = |k: &str| -> Vec<String> {
        outcome[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let mut out = format!("reloaded {}", outcome["config"].as_str().unwrap_or("?"));
    let changed = list("changed");
    out.push_str(&if changed.is_empty() {
        ": nothing changed".to_owned()
    } else {
        format!(": changed {}", changed.join(", "))
    });
    for r in list("restart_needed") {
        out.push_str(&format!("\nrestart needed for {r}"));
    }
    for n in list("notes") {
        out.push_str(&format!("\nnote: {n}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("x.toml")).unwrap()
    }

    #[test]
    fn changed_keys_name_the_section_and_key() {
        let old = parse("networks = [\"10.0.0.0/8\"]\n");
        let new = parse(
            "networks = [\"10.0.0.0/8\"]\npoll_interval = \"500ms\"\n[detection.incoming]\n\
             pps = 1000\n[xdp]\ninterfaces = [\"eth1\"]\nmax_hosts = 1024\n\
             [prometheus]\ntop_hosts = 5\n",
        );
        let keys = changed_keys(&old, &new);
        assert_eq!(
            keys,
            vec![
                "detection.incoming",
                "poll_interval",
                "prometheus.top_hosts",
                "xdp.interfaces",
                "xdp.max_hosts"
            ],
            "{keys:?}"
        );
        let restart: Vec<_> = keys.iter().filter(|k| needs_restart(k)).collect();
        assert_eq!(restart, vec!["poll_interval", "xdp.max_hosts"]);
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn what_needs_a_restart_keeps_its_running_value() {
        let old = parse("networks = [\"10.0.0.0/8\"]\n");
        let new = parse(
            "networks = [\"10.1.0.0/16\"]\npoll_interval = \"500ms\"\n[xdp]\n\
             interfaces = [\"eth1\"]\nmax_hosts = 1024\n[prometheus]\ntop_hosts = 5\n\
             listen = \"127.0.0.1:1\"\n",
        );
        let eff = carry_over(&old, new);
        assert_eq!(eff.poll_interval, old.poll_interval);
        assert_eq!(eff.xdp.max_hosts, old.xdp.max_hosts);
        assert_eq!(eff.prometheus.listen, old.prometheus.listen);
        assert_eq!(eff.xdp.interfaces, vec!["eth1".to_owned()]);
        assert_eq!(eff.prometheus.top_hosts, 5);
        assert_eq!(eff.networks, vec!["10.1.0.0/16".parse().unwrap()]);
    }

    #[test]
    fn unchanged_script_and_bgp_keep_running() {
        let script = "[ban]\nactions = [\"script\"]\nscript = \"/bin/true\"\n";
        let old = parse(script);
        assert!(keep_actions(&old, &parse(script)).contains(&Action::Script));
        let other = "[ban]\nactions = [\"script\"]\nscript = \"/bin/false\"\n";
        assert!(!keep_actions(&old, &parse(other)).contains(&Action::Script));
        assert!(keep_actions(&parse(""), &parse("")).is_empty());
    }

    #[test]
    fn reload_metrics_render() {
        let stats = ReloadStats::default();
        stats.count(ReloadResult::Success);
        stats.count(ReloadResult::Invalid);
        stats.count(ReloadResult::Invalid);
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("fnm_config_reloads_total{result=\"invalid\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("fnm_config_reloads_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fnm_config_last_reload_success_timestamp_seconds "),
            "{text}"
        );
    }
}
