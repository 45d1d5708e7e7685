//! Checks of a configuration against the machine it is to run on: what `fnm-agent
//! check-config` reports and what `fnm-agent run` checks before it starts anything.
//!
//! [`Config::load`](crate::config::Config::load) checks that a file makes sense on its own;
//! these check what only the machine can tell, so a config that would fail later (at the worst
//! moment: during an attack) fails now instead:
//!
//! * every interface of `xdp.interfaces` (or `capture.interfaces`) exists;
//! * `ban.script` exists and is executable;
//! * the actions fit the backends: the XDP actions need the XDP data plane running;
//! * hostgroup prefixes lie inside `networks` (a warning: hosts outside are never local);
//! * `state_dir` is writable (else a ban could not be saved);
//! * with `--online`, the BGP daemon answers, when an action announces routes.

use crate::{
    actions::{bgp::BgpBackend, Action},
    capture::BackendKind,
    config::Config,
};
use std::{
    fmt,
    path::{Path, PathBuf},
};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The agent must not start with it.
    Error,
    /// The agent starts, but probably not as the operator meant.
    Warning,
    /// Said for information (what an online check found).
    Note,
}

impl Severity {
    /// `error`, `warning`, `ok`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "ok",
        }
    }
}

/// One thing a check found, naming the config key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The config key it is about (`xdp.interfaces`, `ban.script`...).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything the checks found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// In the order found.
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, severity: Severity, key: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            key: key.into(),
            message: message.into(),
        });
    }

    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, key, message);
    }

    fn warning(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, key, message);
    }

    /// The findings of one severity.
    pub fn of(&self, severity: Severity) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.severity == severity)
    }

    /// True when nothing stops the agent from starting.
    pub fn is_ok(&self) -> bool {
        self.of(Severity::Error).next().is_none()
    }

    /// Adds another report's findings.
    pub fn extend(&mut self, other: Report) {
        self.findings.extend(other.findings);
    }
}

/// The checks that need no peer: interfaces, script, actions, hostgroups, state directory.
/// `text` is the config file's TOML, which tells the action lists the operator wrote from the
/// defaults (without it, a list equal to its default counts as the default).
pub fn check(config: &Config, text: Option<&str>) -> Report {
    let mut report = Report::default();
    interfaces(config, &mut report);
    script(config, &mut report);
    actions(config, &Written::new(config, text), &mut report);
    hostgroups(config, &mut report);
    conversations(config, &mut report);
    state_dir(&config.state_dir, &mut report);
    report
}

/// A `conversations_per_second` threshold needs a source that hands over tuples: the XDP data
/// plane counts in the kernel and gives user space per-host sums only.
fn conversations(config: &Config, report: &mut Report) {
    let tuples = config.capture.backend != BackendKind::Xdp
        || !config.sflow.listen.is_empty()
        || !config.netflow.listen.is_empty();
    if crate::engine::core::uses_conversations(config) && !tuples {
        report.warning(
            "detection",
            "conversations_per_second is counted from capture, sFlow, NetFlow and IPFIX \
             records only; the XDP data plane hands over per-host sums without tuples, so with \
             no other source this threshold never fires",
        );
    }
}

/// The checks that ask a peer: the BGP daemon answers when an action announces routes. Must
/// run inside a Tokio runtime.
pub async fn check_online(config: &Config) -> Report {
    let mut report = Report::default();
    if !config.uses_action(Action::BgpBlackhole) && !config.uses_action(Action::BgpFlowspec) {
        report.push(
            Severity::Note,
            "bgp",
            "no action announces routes (bgp_blackhole, bgp_flowspec): BGP not checked",
        );
        return report;
    }
    let key = match config.actions.bgp.backend {
        BgpBackend::Gobgp => "bgp.gobgp_api",
        BgpBackend::Exabgp => "bgp.exabgp_pipe",
    };
    let answer = match crate::actions::bgp::BgpAnnouncer::from_config(&config.actions.bgp) {
        Ok(announcer) => announcer.probe().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(what) => report.push(Severity::Note, key, what),
        Err(e) => report.error(
            key,
            format!(
                "the BGP daemon does not answer, so bgp_blackhole and bgp_flowspec would fail: \
                 {}",
                crate::errors::one_line(&e)
            ),
        ),
    }
    report
}

fn interfaces(config: &Config, report: &mut Report) {
    let (key, names): (&str, Vec<&str>) = if config.xdp_active() {
        (
            "xdp.interfaces",
            config.xdp.interfaces.iter().map(String::as_str).collect(),
        )
    } else {
        match config.capture.backend {
            BackendKind::Xdp => return,
            // libpcap's "any" captures on every interface.
            BackendKind::Pcap => (
                "capture.interfaces",
                config
                    .capture
                    .interfaces
                    .iter()
                    .map(String::as_str)
                    .filter(|n| *n != "any")
                    .collect(),
            ),
            BackendKind::Pfring => (
                "capture.interfaces",
                config
                    .capture
                    .interfaces
                    .iter()
                    .map(String::as_str)
                    .collect(),
            ),
            // netmap names ports that are not interfaces (vale switches, pipes `eth0{1`, host
            // rings `eth0^`): only a plain name is checked.
            BackendKind::Netmap => (
                "capture.interfaces",
                config
                    .capture
                    .interfaces
                    .iter()
                    .map(String::as_str)
                    .filter(|n| {
                        n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    })
                    .filter(|n| !n.starts_with("vale"))
                    .collect(),
            ),
        }
    };
    let present = interface_names();
    for name in names {
        if !interface_exists(name) {
            let known = if present.is_empty() {
                String::new()
            } else {
                format!(" (this host has: {})", present.join(", "))
            };
            report.error(key, format!("no interface {name} on this host{known}"));
        }
    }
}

/// True when the kernel knows an interface of that name.
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads the NUL-terminated string we pass and nothing else.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// The host's interface names, sorted (for the message naming what exists).
fn interface_names() -> Vec<String> {
    let mut names: Vec<String> = nix::ifaddrs::getifaddrs()
        .map(|addrs| addrs.map(|a| a.interface_name).collect())
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

fn script(config: &Config, report: &mut Report) {
    let Some(path) = &config.ban.script else {
        return;
    };
    if !config.uses_action(Action::Script) {
        report.warning(
            "ban.script",
            format!(
                "{} is set but no action runs it: add \"script\" to ban.actions, \
                 ban.manual_actions or a hostgroup's actions",
                path.display()
            ),
        );
    }
    match std::fs::metadata(path) {
        Err(e) => report.error(
            "ban.script",
            format!(
                "{}: {}",
                path.display(),
                crate::errors::one_line(&e).to_lowercase()
            ),
        ),
        Ok(meta) if !meta.is_file() => {
            report.error("ban.script", format!("{}: not a file", path.display()))
        }
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                if meta.permissions().mode() & 0o111 == 0 || !executable_by_us(path) {
                    report.error(
                        "ban.script",
                        format!(
                            "{}: not executable (chmod +x {})",
                            path.display(),
                            path.display()
                        ),
                    );
                }
            }
            #[cfg(not(unix))]
            let _ = meta;
        }
    }
    if path.is_relative() {
        report.warning(
            "ban.script",
            format!(
                "{} is a relative path: it is looked up from the agent's working directory \
                 (/ under systemd); write the full path",
                path.display()
            ),
        );
    }
}

#[cfg(unix)]
fn executable_by_us(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access reads the NUL-terminated path we pass and nothing else.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Which of `[ban]`'s action lists the operator wrote (a hostgroup's are always written).
struct Written {
    actions: bool,
    manual_actions: bool,
}

impl Written {
    fn new(config: &Config, text: Option<&str>) -> Self {
        let ban = text
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| t.get("ban").and_then(|b| b.as_table()).cloned());
        match ban {
            Some(ban) => Self {
                actions: ban.contains_key("actions"),
                manual_actions: ban.contains_key("manual_actions"),
            },
            None => {
                let defaults = crate::detection::config::BanConfig::default();
                Self {
                    actions: config.ban.actions != defaults.actions,
                    manual_actions: config.ban.manual_actions != defaults.manual_actions,
                }
            }
        }
    }
}

/// The action lists of the config, each with its key and whether the operator wrote it.
fn action_lists<'a>(config: &'a Config, written: &Written) -> Vec<(String, &'a [Action], bool)> {
    let mut lists = vec![
        (
            "ban.actions".to_owned(),
            config.ban.actions.as_slice(),
            written.actions,
        ),
        (
            "ban.manual_actions".to_owned(),
            config.ban.manual_actions.as_slice(),
            written.manual_actions,
        ),
    ];
    for g in &config.hostgroup {
        if let Some(actions) = &g.actions {
            lists.push((
                format!("hostgroup \"{}\".actions", g.name),
                actions.as_slice(),
                true,
            ));
        }
    }
    lists
}

/// The XDP actions need the XDP program running. `xdp_rule` and `xdp_source` then fail at
/// every attack: an error where the operator wrote them, a warning where they are the default.
/// `xdp_blackhole` still records the ban in the ban list (the API, the CLI and
/// `fnm_bans_active` show it) but drops nothing: a warning.
fn actions(config: &Config, written: &Written, report: &mut Report) {
    let why_no_xdp = if !config.xdp.enabled {
        "xdp.enabled = false".to_owned()
    } else {
        format!("capture.backend = \"{}\"", config.capture.backend.as_str())
    };
    if !config.xdp_active() {
        for (key, list, written) in action_lists(config, written) {
            for action in list {
                let message = match action {
                    Action::XdpRule | Action::XdpSource => format!(
                        "{} drops in the XDP program, which does not run here ({why_no_xdp}): \
                         use script, bgp_blackhole, bgp_flowspec or webhook, or enable XDP",
                        action.as_str()
                    ),
                    Action::XdpBlackhole => format!(
                        "xdp_blackhole only records the ban in the ban list here: the XDP \
                         program does not run ({why_no_xdp}), so nothing is dropped; use \
                         bgp_blackhole, script or webhook to act on it"
                    ),
                    _ => continue,
                };
                let written_rule = written && *action != Action::XdpBlackhole;
                let key = if written {
                    key.clone()
                } else {
                    format!("{key} (default)")
                };
                if written_rule {
                    report.error(key, message);
                } else {
                    report.warning(key, message);
                }
            }
        }
    }
    let announces =
        config.uses_action(Action::BgpBlackhole) || config.uses_action(Action::BgpFlowspec);
    if announces && config.actions.bgp.backend == BgpBackend::Exabgp {
        match std::fs::metadata(&config.actions.bgp.exabgp_pipe) {
            Err(_) => report.warning(
                "bgp.exabgp_pipe",
                format!(
                    "{} does not exist: create it (mkfifo) before exabgp starts, or BGP \
                     announcements fail",
                    config.actions.bgp.exabgp_pipe.display()
                ),
            ),
            #[cfg(unix)]
            Ok(meta) => {
                use std::os::unix::fs::FileTypeExt as _;
                if !meta.file_type().is_fifo() {
                    report.error(
                        "bgp.exabgp_pipe",
                        format!(
                            "{} is not a named pipe (exabgp reads its commands from a FIFO)",
                            config.actions.bgp.exabgp_pipe.display()
                        ),
                    );
                }
            }
            #[cfg(not(unix))]
            Ok(_) => {}
        }
    }
}

fn hostgroups(config: &Config, report: &mut Report) {
    for g in &config.hostgroup {
        for prefix in &g.networks {
            if config.networks.iter().any(|n| n.covers(prefix)) {
                continue;
            }
            let partly = config.networks.iter().any(|n| prefix.covers(n));
            report.warning(
                format!("hostgroup \"{}\".networks", g.name),
                format!(
                    "{prefix} is {} networks: traffic of hosts outside networks is never \
                     counted per host, so the hostgroup's thresholds never apply to them; add \
                     it to networks or narrow it",
                    if partly {
                        "not wholly inside"
                    } else {
                        "outside"
                    }
                ),
            );
        }
    }
}

fn state_dir(dir: &Path, report: &mut Report) {
    // The nearest directory that exists: the state directory itself, or the parent it is to
    // be created in.
    let mut existing: PathBuf = dir.to_owned();
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent.to_owned(),
            None => break,
        }
    }
    if !existing.is_dir() {
        report.error(
            "state_dir",
            format!(
                "{}: {} is not a directory",
                dir.display(),
                existing.display()
            ),
        );
        return;
    }
    if let Err(e) = try_write(&existing) {
        let what = if existing == dir {
            format!("{} is not writable", dir.display())
        } else {
            format!(
                "{} cannot be created in {}",
                dir.display(),
                existing.display()
            )
        };
        report.error(
            "state_dir",
            format!(
                "{what} ({}): bans, mitigations and attacks could not be saved",
                crate::errors::one_line(&e).to_lowercase()
            ),
        );
    }
}

/// Creates and removes a file in `dir`, as saving state does.
fn try_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".fnm-check-config.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    fn keys(report: &Report, severity: Severity) -> Vec<String> {
        report.of(severity).map(|f| f.to_string()).collect()
    }

    #[test]
    fn xdp_actions_need_xdp() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "state_dir = \"{}\"\n[xdp]\nenabled = false\n[ban]\nactions = [\"xdp_rule\"]\n",
            dir.path().display()
        );
        let c = config(&text);
        let report = check(&c, Some(&text));
        let errors = keys(&report, Severity::Error);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("ban.actions: xdp_rule"), "{errors:?}");
        assert!(errors[0].contains("xdp.enabled = false"), "{errors:?}");
        // The default manual_actions (xdp_blackhole): a warning.
        let warnings = keys(&report, Severity::Warning);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("ban.manual_actions (default): xdp_blackhole only records"),
            "{warnings:?}"
        );
        // Without the text, a list equal to its default counts as the default: a warning.
        let report = check(&c, None);
        assert!(report.is_ok(), "{:?}", report.findings);
    }

    #[test]
    fn conversations_with_only_xdp_are_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let text = |sources: &str| {
            format!(
                "state_dir = \"{}\"\nnetworks = [\"10.0.0.0/8\"]\n[xdp]\nenabled = false\n{sources}\
                 [ban]\nactions = []\nmanual_actions = []\n\
                 [[hostgroup]]\nname = \"web\"\nnetworks = [\"10.0.1.0/24\"]\n\
                 [hostgroup.incoming]\nconversations_per_second = 3500\n",
                dir.path().display()
            )
        };
        let t = text("[sflow]\nlisten = []\n[netflow]\nlisten = []\n");
        let warnings = keys(&check(&config(&t), Some(&t)), Severity::Warning);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("conversations_per_second"),
            "{warnings:?}"
        );
        let t = text("[netflow]\nlisten = []\n");
        let warnings = keys(&check(&config(&t), Some(&t)), Severity::Warning);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_hostgroup_outside_networks_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&format!(
            "state_dir = \"{}\"\nnetworks = [\"10.0.0.0/16\"]\n[xdp]\nenabled = false\n\
             [[hostgroup]]\nname = \"web\"\nnetworks = [\"10.0.1.0/24\", \"192.0.2.0/24\", \"10.0.0.0/8\"]\n",
            dir.path().display()
        ));
        let report = check(&c, None);
        assert!(report.is_ok(), "{:?}", report.findings);
        let warnings: Vec<String> = keys(&report, Severity::Warning)
            .into_iter()
            .filter(|w| w.starts_with("hostgroup"))
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("192.0.2.0/24 is outside networks"));
        assert!(warnings[1].contains("10.0.0.0/8 is not wholly inside networks"));
    }

    #[test]
    fn a_state_dir_to_be_created_is_fine_and_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = Report::default();
        state_dir(&dir.path().join("a/b"), &mut report);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        state_dir(&file.join("x"), &mut report);
        assert_eq!(report.of(Severity::Error).count(), 1);
    }
}
