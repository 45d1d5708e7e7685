//! `[detection]`, `[[hostgroup]]` and `[ban]`: thresholds, hostgroups and what a ban does.

pub use crate::actions::Action;
use crate::{accounting::RateKind, config::humantime_serde_compat, prefix::Prefix};
use serde::{Deserialize, Serialize};
use std::{path::PathBuf, time::Duration};

/// Rate thresholds for one direction. An omitted rate has no threshold (in a hostgroup: the
/// global value applies).
///
/// Byte rates may also be written in megabits per second, as operators (and FastNetMon's
/// `threshold_mbps`) think of them: `mbps`, `tcp_mbps`, `udp_mbps` and `icmp_mbps` set
/// `bytes_per_second` and its per-protocol variants to `mbps × 1,000,000 / 8` (1 Mbit/s =
/// 125,000 bytes/s). One rate given in both units is an error. Thresholds are kept, compared
/// and shown by the API in bytes per second; detection is the same whichever unit was used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ThresholdsInput")]
pub struct Thresholds {
    /// Packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pps: Option<f64>,
    /// IP bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<f64>,
    /// New flows per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_per_second: Option<f64>,
    /// TCP packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_pps: Option<f64>,
    /// TCP bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_bytes_per_second: Option<f64>,
    /// UDP packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_pps: Option<f64>,
    /// UDP bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_bytes_per_second: Option<f64>,
    /// ICMP packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_pps: Option<f64>,
    /// ICMP bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_bytes_per_second: Option<f64>,
    /// TCP SYN (without ACK) packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_syn_pps: Option<f64>,
    /// Fragments per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragments_pps: Option<f64>,
    /// Distinct TCP and UDP conversations per second (FastNetMon's "flows").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversations_per_second: Option<f64>,
}

/// Bytes per second in one megabit per second.
pub const BYTES_PER_SECOND_PER_MBPS: f64 = 1_000_000.0 / 8.0;

/// [`Thresholds`] as written in a configuration: every rate, and the byte rates in Mbit/s too.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdsInput {
    pps: Option<f64>,
    bytes_per_second: Option<f64>,
    mbps: Option<f64>,
    flows_per_second: Option<f64>,
    tcp_pps: Option<f64>,
    tcp_bytes_per_second: Option<f64>,
    tcp_mbps: Option<f64>,
    udp_pps: Option<f64>,
    udp_bytes_per_second: Option<f64>,
    udp_mbps: Option<f64>,
    icmp_pps: Option<f64>,
    icmp_bytes_per_second: Option<f64>,
    icmp_mbps: Option<f64>,
    tcp_syn_pps: Option<f64>,
    fragments_pps: Option<f64>,
    conversations_per_second: Option<f64>,
}

/// One byte rate from its bytes/s and Mbit/s keys (at most one of them).
fn bytes_or_mbps(
    bytes: Option<f64>,
    mbps: Option<f64>,
    bytes_key: &str,
    mbps_key: &str,
) -> Result<Option<f64>, String> {
    match (bytes, mbps) {
        (Some(_), Some(_)) => Err(format!(
            "{bytes_key} and {mbps_key} set the same threshold; keep one"
        )),
        (b, None) => Ok(b),
        (None, Some(m)) => Ok(Some(m * BYTES_PER_SECOND_PER_MBPS)),
    }
}

impl TryFrom<ThresholdsInput> for Thresholds {
    type Error = String;
    fn try_from(i: ThresholdsInput) -> Result<Self, String> {
        Ok(Thresholds {
            pps: i.pps,
            bytes_per_second: bytes_or_mbps(
                i.bytes_per_second,
                i.mbps,
                "bytes_per_second",
                "mbps",
            )?,
            flows_per_second: i.flows_per_second,
            tcp_pps: i.tcp_pps,
            tcp_bytes_per_second: bytes_or_mbps(
                i.tcp_bytes_per_second,
                i.tcp_mbps,
                "tcp_bytes_per_second",
                "tcp_mbps",
            )?,
            udp_pps: i.udp_pps,
            udp_bytes_per_second: bytes_or_mbps(
                i.udp_bytes_per_second,
                i.udp_mbps,
                "udp_bytes_per_second",
                "udp_mbps",
            )?,
            icmp_pps: i.icmp_pps,
            icmp_bytes_per_second: bytes_or_mbps(
                i.icmp_bytes_per_second,
                i.icmp_mbps,
                "icmp_bytes_per_second",
                "icmp_mbps",
            )?,
            tcp_syn_pps: i.tcp_syn_pps,
            fragments_pps: i.fragments_pps,
            conversations_per_second: i.conversations_per_second,
        })
    }
}

impl Thresholds {
    /// `self` with every unset rate taken from `fallback`.
    pub fn or(&self, fallback: &Thresholds) -> Thresholds {
        Thresholds {
            pps: self.pps.or(fallback.pps),
            bytes_per_second: self.bytes_per_second.or(fallback.bytes_per_second),
            flows_per_second: self.flows_per_second.or(fallback.flows_per_second),
            tcp_pps: self.tcp_pps.or(fallback.tcp_pps),
            tcp_bytes_per_second: self.tcp_bytes_per_second.or(fallback.tcp_bytes_per_second),
            udp_pps: self.udp_pps.or(fallback.udp_pps),
            udp_bytes_per_second: self.udp_bytes_per_second.or(fallback.udp_bytes_per_second),
            icmp_pps: self.icmp_pps.or(fallback.icmp_pps),
            icmp_bytes_per_second: self
                .icmp_bytes_per_second
                .or(fallback.icmp_bytes_per_second),
            tcp_syn_pps: self.tcp_syn_pps.or(fallback.tcp_syn_pps),
            fragments_pps: self.fragments_pps.or(fallback.fragments_pps),
            conversations_per_second: self
                .conversations_per_second
                .or(fallback.conversations_per_second),
        }
    }

    /// The threshold of one rate, if set.
    pub fn get(&self, kind: RateKind) -> Option<f64> {
        match kind {
            RateKind::Pps => self.pps,
            RateKind::BytesPerSecond => self.bytes_per_second,
            RateKind::FlowsPerSecond => self.flows_per_second,
            RateKind::TcpPps => self.tcp_pps,
            RateKind::TcpBytesPerSecond => self.tcp_bytes_per_second,
            RateKind::UdpPps => self.udp_pps,
            RateKind::UdpBytesPerSecond => self.udp_bytes_per_second,
            RateKind::IcmpPps => self.icmp_pps,
            RateKind::IcmpBytesPerSecond => self.icmp_bytes_per_second,
            RateKind::TcpSynPps => self.tcp_syn_pps,
            RateKind::FragmentsPps => self.fragments_pps,
            RateKind::ConversationsPerSecond => self.conversations_per_second,
        }
    }

    /// Every set threshold as (rate, limit), in config order.
    pub fn set(&self) -> Vec<(RateKind, f64)> {
        self.iter().collect()
    }

    /// [`Self::set`] without collecting it (the detector walks it for every active host).
    pub fn iter(&self) -> impl Iterator<Item = (RateKind, f64)> + '_ {
        RateKind::ALL
            .into_iter()
            .filter_map(|k| self.get(k).map(|v| (k, v)))
    }

    fn validate(&self, key: &str) -> Result<(), String> {
        for (name, v) in self.set() {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{key}.{name} must be a positive number"));
            }
        }
        Ok(())
    }
}

/// `[detection]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    /// Remote source prefixes whose traffic never counts toward an attack (a CDN, a speed-test
    /// server): the source of incoming, the destination of outgoing traffic. It still counts
    /// in the totals; XDP counts it per host in `whitelisted_packets`/`whitelisted_bytes`
    /// (kernel tries sized by `[xdp] max_prefixes`), flows and capture leave it out of the
    /// host. Default: empty.
    #[serde(default)]
    pub whitelist_sources: Vec<Prefix>,
    /// Thresholds for traffic towards local hosts. Default: none (no detection).
    #[serde(default)]
    pub incoming: Thresholds,
    /// Thresholds for traffic from local hosts. Default: none.
    #[serde(default)]
    pub outgoing: Thresholds,
}

/// One `[[hostgroup]]`: prefixes with their own thresholds and actions. The most specific prefix
/// of all hostgroups wins; omitted rates fall back to `[detection]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostgroupConfig {
    /// Name, used in reports and metrics.
    pub name: String,
    /// Member prefixes (IPv4 and IPv6).
    pub networks: Vec<Prefix>,
    /// Incoming thresholds (override `[detection.incoming]` rate by rate).
    #[serde(default)]
    pub incoming: Thresholds,
    /// Outgoing thresholds.
    #[serde(default)]
    pub outgoing: Thresholds,
    /// Actions for this group's attacks; default: `[ban] actions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<Action>>,
    /// Never ban hosts of this group (detect and report only). Default: false.
    #[serde(default)]
    pub report_only: bool,
}

/// Format of the report a ban writes to the script's stdin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    /// fnm's own text report: attack id, fnm's attack type, the threshold crossed, rates,
    /// top flows and packet samples (one call per ban).
    #[default]
    Text,
    /// The attack record as JSON.
    Json,
    /// FastNetMon 1.2.4's report, line for line, with its attack-type names, and its
    /// `attack_details` call with packet samples after the `ban` call
    /// ([`crate::actions::fastnetmon_report`]).
    Fastnetmon,
}

/// `[ban]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanConfig {
    /// How long an automatic mitigation lasts; `"never"` (or `"0"`, as FastNetMon's
    /// `ban_time = 0`) for no automatic unban (lift it by hand or through the API).
    /// Default: `30m`.
    #[serde(default = "default_ban_time", with = "ban_time_serde")]
    pub time: Duration,
    /// What a ban does: a list of [`Action`]s by their config names (`xdp_rule`,
    /// `xdp_source`, `xdp_blackhole`, `script`, `bgp_blackhole`, ...). Default: `["xdp_rule"]`.
    #[serde(default = "default_actions")]
    pub actions: Vec<Action>,
    /// What a manual ban (API, CLI) does, to the banned prefix on its side: the [`Action`]s
    /// that need no attack (`xdp_blackhole`: the XDP drop entry; `script`: called as
    /// `SCRIPT <ip> other 0 ban`, as FastNetMon does; ...). Default: `["xdp_blackhole"]`.
    #[serde(default = "default_manual_actions")]
    pub manual_actions: Vec<Action>,
    /// Keep a ban past `time` while its attack goes on; unban only once it has stopped.
    /// Default: `true`.
    #[serde(default = "yes")]
    pub unban_only_when_stopped: bool,
    /// An attack has stopped when every rate stayed below `stop_ratio` × its threshold for
    /// `stop_after`. Default: `0.7`.
    #[serde(default = "default_stop_ratio")]
    pub stop_ratio: f64,
    /// See `stop_ratio`. Default: `30s`.
    #[serde(default = "default_stop_after", with = "humantime_serde_compat")]
    pub stop_after: Duration,
    /// Notify script, called as FastNetMon's: `SCRIPT <ip> <incoming|outgoing> <pps> <ban|unban>`
    /// with the report on stdin for `ban`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<PathBuf>,
    /// Report format on the script's stdin: `text`, `json` or `fastnetmon` (FastNetMon
    /// 1.2.4's report and calls, for scripts written for FastNetMon). Default: `text`.
    #[serde(default)]
    pub script_format: ReportFormat,
    /// A script running longer is killed (and counted as failed). Default: `30s`.
    #[serde(default = "default_script_timeout", with = "humantime_serde_compat")]
    pub script_timeout: Duration,
    /// Scripts running at once. Default: `4`.
    #[serde(default = "default_script_parallel")]
    pub script_parallel: usize,
    /// Script calls waiting beyond this are dropped and counted. Default: `256`.
    #[serde(default = "default_script_queue")]
    pub script_queue: usize,
    /// Most sources an `xdp_source` ban drops. Default: `32`.
    #[serde(default = "default_max_sources")]
    pub max_source_drops: usize,
    /// XDP samples 1 in N packets of a host under attack. Default: `16`.
    #[serde(default = "default_sample_one_in")]
    pub sample_one_in: u32,
    /// Shortest IPv4 prefix a manual source ban may cover (`/8`: never `0.0.0.0/0` or a
    /// `/4`). Default: `8`.
    #[serde(default = "default_min_source_prefix_v4")]
    pub min_source_prefix_v4: u8,
    /// Shortest IPv6 prefix a manual source ban may cover. Default: `32`.
    #[serde(default = "default_min_source_prefix_v6")]
    pub min_source_prefix_v6: u8,
    /// Let a manual ban with `"force": true` (`fnm-agent ban --force`) skip the safety checks
    /// (shortest prefix, destination inside `networks`, covering a whitelisted prefix, this
    /// host's own addresses or the caller's). A prefix inside the whitelist is never banned.
    /// Default: `false`.
    #[serde(default)]
    pub allow_force: bool,
    /// Most mitigations of detected attacks in force at once; the actions of one more attack
    /// are not applied (its record says so, `fnm_auto_bans_not_applied_total` counts it).
    /// Default: `1000`.
    #[serde(default = "default_max_active_auto_bans")]
    pub max_active_auto_bans: usize,
    /// Most mitigations of detected attacks started in any 60 s; as above beyond it.
    /// Default: `100`.
    #[serde(default = "default_max_auto_bans_per_minute")]
    pub max_auto_bans_per_minute: usize,
}

impl BanConfig {
    /// How long a mitigation lasts (`None`: until lifted by hand).
    pub fn time_limit(&self) -> Option<Duration> {
        (!self.time.is_zero()).then_some(self.time)
    }
}

impl Default for BanConfig {
    fn default() -> Self {
        toml::from_str("").expect("empty [ban] is valid")
    }
}

fn yes() -> bool {
    true
}
/// `[ban] time`: a humantime duration, or `"never"` (kept as zero: no automatic unban).
mod ban_time_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.is_zero() {
            s.serialize_str("never")
        } else {
            s.serialize_str(&humantime::format_duration(*d).to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "never" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

fn default_ban_time() -> Duration {
    Duration::from_secs(1800)
}
fn default_actions() -> Vec<Action> {
    vec![Action::XdpRule]
}
fn default_manual_actions() -> Vec<Action> {
    vec![Action::XdpBlackhole]
}
fn default_stop_ratio() -> f64 {
    0.7
}
fn default_stop_after() -> Duration {
    Duration::from_secs(30)
}
fn default_script_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_script_parallel() -> usize {
    4
}
fn default_script_queue() -> usize {
    256
}
fn default_max_sources() -> usize {
    32
}
fn default_sample_one_in() -> u32 {
    16
}
fn default_min_source_prefix_v4() -> u8 {
    8
}
fn default_min_source_prefix_v6() -> u8 {
    32
}
fn default_max_active_auto_bans() -> usize {
    1000
}
fn default_max_auto_bans_per_minute() -> usize {
    100
}

/// Checks the detection-related sections.
pub fn validate(
    detection: &DetectionConfig,
    hostgroups: &[HostgroupConfig],
    ban: &BanConfig,
) -> Result<(), String> {
    detection.incoming.validate("detection.incoming")?;
    detection.outgoing.validate("detection.outgoing")?;
    let mut names = std::collections::HashSet::new();
    for g in hostgroups {
        if !names.insert(g.name.as_str()) {
            return Err(format!("hostgroup {:?} is defined twice", g.name));
        }
        if g.networks.is_empty() {
            return Err(format!("hostgroup {:?}: networks is empty", g.name));
        }
        g.incoming
            .validate(&format!("hostgroup {:?}.incoming", g.name))?;
        g.outgoing
            .validate(&format!("hostgroup {:?}.outgoing", g.name))?;
    }
    let uses_script = ban.actions.contains(&Action::Script)
        || hostgroups.iter().any(|g| {
            g.actions
                .as_ref()
                .is_some_and(|a| a.contains(&Action::Script))
        });
    for a in &ban.manual_actions {
        if a.needs_attack() {
            let usable: Vec<&str> = Action::ALL
                .iter()
                .filter(|a| !a.needs_attack())
                .map(|a| a.as_str())
                .collect();
            return Err(format!(
                "ban.manual_actions: {} needs an attack's fingerprint or sources; a manual ban \
                 has only a prefix (use {})",
                a.as_str(),
                usable.join(", ")
            ));
        }
    }
    let uses_script = uses_script || ban.manual_actions.contains(&Action::Script);
    if uses_script && ban.script.is_none() {
        return Err("ban.actions has \"script\" but ban.script is not set".into());
    }
    if !(0.0..=1.0).contains(&ban.stop_ratio) {
        return Err("ban.stop_ratio must be between 0 and 1".into());
    }
    if ban.script_parallel == 0 || ban.script_queue == 0 {
        return Err("ban.script_parallel and ban.script_queue must be above 0".into());
    }
    if ban.min_source_prefix_v4 > 32 || ban.min_source_prefix_v6 > 128 {
        return Err(
            "ban.min_source_prefix_v4 must be at most 32 and ban.min_source_prefix_v6 at most 128"
                .into(),
        );
    }
    if ban.max_active_auto_bans == 0 || ban.max_auto_bans_per_minute == 0 {
        return Err(
            "ban.max_active_auto_bans and ban.max_auto_bans_per_minute must be above 0 (use \
             report_only on a hostgroup to detect without acting)"
                .into(),
        );
    }
    if ban.sample_one_in == 0 {
        return Err("ban.sample_one_in must be above 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_thresholds_may_be_written_in_mbps() {
        let t: Thresholds = toml::from_str(
            "pps = 20000\nmbps = 100\nudp_mbps = 0.8\ntcp_bytes_per_second = 5000\nicmp_mbps = 1\n",
        )
        .unwrap();
        assert_eq!(t.pps, Some(20000.0));
        assert_eq!(t.bytes_per_second, Some(12_500_000.0));
        assert_eq!(t.udp_bytes_per_second, Some(100_000.0));
        assert_eq!(t.tcp_bytes_per_second, Some(5000.0));
        assert_eq!(t.icmp_bytes_per_second, Some(125_000.0));
        // Kept and shown in bytes per second: the serialized form reads back the same.
        let text = toml::to_string(&t).unwrap();
        assert!(text.contains("bytes_per_second = 12500000.0"), "{text}");
        assert!(!text.contains("mbps"), "{text}");
        assert_eq!(toml::from_str::<Thresholds>(&text).unwrap(), t);
    }

    #[test]
    fn one_rate_in_two_units_or_an_unknown_key_is_refused() {
        let e = toml::from_str::<Thresholds>("mbps = 100\nbytes_per_second = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bytes_per_second and mbps"), "{e}");
        let e = toml::from_str::<Thresholds>("udp_mbps = 1\nudp_bytes_per_second = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("udp_bytes_per_second and udp_mbps"), "{e}");
        assert!(toml::from_str::<Thresholds>("gbps = 1\n").is_err());
        assert!(toml::from_str::<Thresholds>("threshold_mbps = 1\n").is_err());
    }

    #[test]
    fn mbps_thresholds_are_validated_like_the_others() {
        let d: DetectionConfig = toml::from_str("[incoming]\nmbps = -1\n").unwrap();
        let e = validate(&d, &[], &BanConfig::default()).unwrap_err();
        assert!(e.contains("detection.incoming.bytes_per_second"), "{e}");
    }

    #[test]
    fn ban_time_never_or_zero_means_no_automatic_unban() {
        for text in ["time = \"never\"", "time = \"0\"", "time = \"0s\""] {
            let ban: BanConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(ban.time_limit(), None, "{text}");
            let back = toml::to_string(&ban).unwrap();
            assert!(back.contains("time = \"never\""), "{back}");
        }
        let ban: BanConfig = toml::from_str("time = \"90s\"").unwrap();
        assert_eq!(ban.time_limit(), Some(Duration::from_secs(90)));
        assert!(toml::from_str::<BanConfig>("time = \"sometimes\"").is_err());
    }
}
