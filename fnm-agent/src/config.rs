//! The agent's configuration: TOML, typed with serde, unknown keys rejected.
//!
//! Every default is written in the doc comment of its field and in
//! `config/fnm-agent.toml`, which is exactly what `fnm-agent print-default-config` prints.

use crate::prefix::Prefix;
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, path::Path, path::PathBuf, time::Duration};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (a missing one names the command that writes the default).
    #[error("cannot read {path}: {source}{}", missing_hint(path, source))]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has an unknown or mistyped key (the message names key and line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// What to do about a configuration file that does not exist.
fn missing_hint(path: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            " (write the default one with `fnm-agent print-default-config > {}`, then edit it)",
            path.display()
        )
    } else {
        String::new()
    }
}

/// Root of `fnm-agent.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The operator's own networks: traffic to them is `incoming`, from them `outgoing`.
    /// Default: `["10.10.0.0/16", "2001:db8::/32"]` (documentation ranges: replace them).
    #[serde(default = "default_networks")]
    pub networks: Vec<Prefix>,
    /// Prefixes that are never dropped and never banned. Default: empty.
    #[serde(default)]
    pub whitelist: Vec<Prefix>,
    /// A file of more networks, one prefix per line (FastNetMon's `networks_list` format: blank
    /// lines and `#` comments allowed, IPv4 and IPv6), merged into `networks` at start and on
    /// every reload; a relative path is relative to the configuration file. Without a
    /// `networks` key, the default networks give way to the file's. See [`crate::prefix_lists`].
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks_file: Option<PathBuf>,
    /// A file of more whitelist prefixes, in the same format, merged into `whitelist`.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whitelist_file: Option<PathBuf>,
    /// Add this host's own interface addresses (as /32 and /128; not loopback or IPv6
    /// link-local) to `networks`, read at start and on every reload. Default: `false`.
    #[serde(default)]
    pub monitor_local_addresses: bool,
    /// Where bans, templates and attack history are kept across restarts.
    /// Default: `/var/lib/fnm`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often counters are polled, rates recomputed and thresholds checked.
    /// Default: `250ms` (at most 1 s allowed).
    #[serde(default = "default_poll_interval", with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    /// Rates are measured over this sliding window, made of poll intervals. Default: `1s`.
    #[serde(default = "default_rate_window", with = "humantime_serde_compat")]
    pub rate_window: Duration,
    /// XDP data plane.
    #[serde(default)]
    pub xdp: XdpConfig,
    /// The userspace host table: its size and the budgets of sources and flow exporters.
    #[serde(default)]
    pub accounting: AccountingConfig,
    /// HTTP JSON API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Prometheus exporter.
    #[serde(default)]
    pub prometheus: PrometheusConfig,
    /// Attack detection thresholds and source whitelist.
    #[serde(default)]
    pub detection: crate::detection::config::DetectionConfig,
    /// Hostgroups with their own thresholds and actions (`[[hostgroup]]`).
    #[serde(default)]
    pub hostgroup: Vec<crate::detection::config::HostgroupConfig>,
    /// What a ban does.
    #[serde(default)]
    pub ban: crate::detection::config::BanConfig,
    /// Userspace capture (`backend = "pcap" | "netmap" | "pfring"`) instead of XDP.
    #[serde(default)]
    pub capture: crate::capture::CaptureConfig,
    /// sFlow v5 collector. Default: listens on `0.0.0.0:6343`.
    #[serde(default)]
    pub sflow: crate::flow::collector::SflowConfig,
    /// NetFlow v5 / v9 / IPFIX collector. Default: listens on `0.0.0.0:2055`.
    #[serde(default)]
    pub netflow: crate::flow::collector::NetflowConfig,
    /// The actions' own sections (`[bgp]`, `[webhook]`, ...), at the top level.
    #[serde(flatten)]
    pub actions: crate::actions::ActionSections,
    /// `[export]`: what this agent publishes to the fleet (Kafka).
    #[serde(default)]
    pub export: crate::export::ExportConfig,
    /// `[kafka]`: brokers and topics.
    #[serde(default)]
    pub kafka: crate::export::KafkaConfig,
    /// `[cluster]`: agent, or aggregator of the agents' exports.
    #[serde(default)]
    pub cluster: crate::cluster::ClusterConfig,
    /// The agent's log: level and format.
    #[serde(default)]
    pub log: crate::logging::LogConfig,
    /// Each attack's sampled packets in `<state_dir>/attacks/<id>.pcap`.
    #[serde(default)]
    pub attack_pcap: crate::attack_pcap::AttackPcapConfig,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode.
    Skb,
}

/// `[xdp]`: the XDP data plane.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// Turn the XDP data plane on. Default: `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Interfaces to attach to. Default: `["eth0"]`.
    #[serde(default = "default_interfaces")]
    pub interfaces: Vec<String>,
    /// `auto` | `native` | `skb`. Default: `auto`.
    #[serde(default)]
    pub mode: XdpMode,
    /// Local hosts counted per direction and per address family (one kernel LRU hash table for
    /// IPv4, one for IPv6: when full, the least recently touched hosts make room, so spoofed
    /// destinations cannot lock a real victim out). Default: `65536`.
    #[serde(default = "default_max_hosts")]
    pub max_hosts: u32,
    /// IPv4 addresses of the local networks whose counters are preallocated in a per-CPU array
    /// (no hash lookup per packet, never full). Networks get them in the order of `networks`
    /// while they fit; the others use the `max_hosts` hash table. Kernel memory: 256 bytes ×
    /// addresses × CPUs, only for addresses of networks that fit (sized at start: a reload
    /// keeps the slots of the networks that stay and gives added ones the free ranges left).
    /// At most 2^29. Default: `65536` (a /16).
    #[serde(default = "default_dense_v4_addresses")]
    pub dense_v4_addresses: u32,
    /// IPv4 /16 blocks that local prefixes longer than /16 split, and that get a table of
    /// their 256 /24s (1 KiB each, shared by the CPUs): the kernel finds such a block's
    /// addresses with two array reads instead of a trie lookup (a /24 holding a prefix longer
    /// than /24 still asks the trie). Blocks beyond this number ask the trie; at most 65,536.
    /// Default: `4096` (4 MiB).
    #[serde(default = "default_local24_tables")]
    pub local24_tables: u32,
    /// 5-tuples remembered to count new flows (LRU). Default: `262144`.
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
    /// Entries of each drop table (source and destination). Default: `65536`.
    #[serde(default = "default_max_drops")]
    pub max_drop_entries: u32,
    /// Entries of the local-network and whitelist tables, and of the source whitelist
    /// (`[detection] whitelist_sources`). Default: `16384`.
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes: u32,
    /// Hosts idle this long are removed from the kernel table (their totals stay in the agent),
    /// found at their next read: a host without new packets is read once in eight polls.
    /// Default: `10m`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde_compat")]
    pub host_idle_timeout: Duration,
    /// Pin each XDP link under `pin_path` so the program keeps counting and dropping if the
    /// agent dies; a restarted agent takes the link over without a gap, once the agent that
    /// pinned it is gone (its owner record names it: see `ownership`). A clean stop
    /// (SIGTERM/SIGINT) detaches and unpins; after a crash `fnm-agent detach` removes the pin.
    /// bpffs is mounted at /sys/fs/bpf when missing.
    /// Default: `true`.
    #[serde(default = "yes")]
    pub pin_links: bool,
    /// Directory on bpffs for the pinned links. Default: `/sys/fs/bpf/fnm`.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: default_interfaces(),
            mode: XdpMode::Auto,
            max_hosts: default_max_hosts(),
            dense_v4_addresses: default_dense_v4_addresses(),
            local24_tables: default_local24_tables(),
            max_flows: default_max_flows(),
            max_drop_entries: default_max_drops(),
            max_prefixes: default_max_prefixes(),
            host_idle_timeout: default_idle_timeout(),
            pin_links: true,
            pin_path: default_pin_path(),
        }
    }
}

/// `[accounting]`: the userspace host table every source feeds.
///
/// It is bounded, and a flood of new addresses cannot fill it for good: each flow exporter and
/// each other source may bring in at most its budget of hosts (beyond it, its own least busy
/// hosts make room), and when the whole table is full, idle, then unproven, then the least busy
/// hosts make room; watched, attacked and mitigated hosts never do. See `docs/security.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccountingConfig {
    /// Most local hosts tracked (each with both directions). Memory: at most about 0.75 kB per
    /// host seen one way (as in a spoofed flood) and 1.4 kB seen both ways while it has traffic
    /// in the rate window, 0.3 kB once its window is empty (measured by
    /// `tests/host_memory.rs`), so at most about 370 MB at the default. Default: `262144`.
    #[serde(default = "default_accounting_max_hosts")]
    pub max_hosts: u32,
    /// Most hosts one flow exporter (a UDP source address of the sFlow or NetFlow collector)
    /// may bring into the table. Default: `65536`.
    #[serde(default = "default_max_hosts_per_exporter")]
    pub max_hosts_per_exporter: u32,
    /// Most hosts the XDP data plane, and the capture backend, may bring into the table (each).
    /// The default is what the XDP program's default tables can report (2 × 65536 hashed
    /// host-directions and a /16 of dense addresses), leaving a quarter of the table to flows.
    /// Default: `196608`.
    #[serde(default = "default_max_hosts_per_source")]
    pub max_hosts_per_source: u32,
    /// Most networks, and most hostgroups, with their own traffic counters
    /// (`GET /api/v1/networks`, `fnm_network_*` and `fnm_hostgroup_*` metrics): the first ones
    /// in config order; the traffic of the rest is counted together under `other`. Each
    /// costs 2 series per metric family and direction. Default: `256`.
    #[serde(default = "default_max_network_counters")]
    pub max_network_counters: u32,
}

fn default_max_network_counters() -> u32 {
    256
}

impl Default for AccountingConfig {
    fn default() -> Self {
        Self {
            max_hosts: default_accounting_max_hosts(),
            max_hosts_per_exporter: default_max_hosts_per_exporter(),
            max_hosts_per_source: default_max_hosts_per_source(),
            max_network_counters: default_max_network_counters(),
        }
    }
}

impl AccountingConfig {
    /// The limits of the accounting's host table.
    pub fn limits(&self) -> crate::accounting::HostLimits {
        crate::accounting::HostLimits {
            max_hosts: self.max_hosts as usize,
            per_exporter: self.max_hosts_per_exporter as usize,
            per_source: self.max_hosts_per_source as usize,
        }
    }

    fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("accounting.max_hosts", self.max_hosts),
            (
                "accounting.max_hosts_per_exporter",
                self.max_hosts_per_exporter,
            ),
            ("accounting.max_hosts_per_source", self.max_hosts_per_source),
        ] {
            if value == 0 {
                return Err(format!("{key} must be above 0"));
            }
            if value > self.max_hosts {
                return Err(format!(
                    "{key} ({value}) is above accounting.max_hosts ({})",
                    self.max_hosts
                ));
            }
        }
        Ok(())
    }
}

/// `[api]`: the HTTP JSON API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address. Default: `127.0.0.1:9210`.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// A file holding the API's bearer token (one line, at least 16 characters). With a token,
    /// every call that changes something (`POST`, `DELETE`) needs `Authorization: Bearer
    /// <token>`, and every call does when `listen` is not a loopback address. The CLI reads the
    /// same file. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Allow a `listen` address beyond loopback without `token_file`: anyone who reaches it can
    /// ban and unban. Without this the agent refuses to start that way. Default: `false`.
    #[serde(default)]
    pub insecure: bool,
    /// Connections open at once; one more is answered 503 and closed at once. Default: `256`.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 client: its /64).
    /// Default: `32`.
    #[serde(default = "default_api_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Longest time a client may take to send a request's headers, counted from the
    /// connection's start or from the previous answer: a slow (slowloris) or idle keep-alive
    /// connection is closed then. Default: `10s`.
    #[serde(
        default = "default_header_read_timeout",
        with = "humantime_serde_compat"
    )]
    pub header_read_timeout: Duration,
    /// Longest time a request may take from its headers to its answer, reading the body
    /// included; answered 408 then. Default: `30s`.
    #[serde(default = "default_request_timeout", with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// A connection that moves no byte either way for this long while none of its requests is
    /// being handled (a client that stopped reading its answer) is closed. Default: `60s`.
    #[serde(default = "default_http_idle_timeout", with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Largest request body; a larger one is answered 413. Default: `65536`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        toml::from_str("").expect("empty [api] is valid")
    }
}

/// `[prometheus]`: the metrics exporter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Listen address of `/metrics`. Default: `127.0.0.1:9209`.
    #[serde(default = "default_prometheus_listen")]
    pub listen: SocketAddr,
    /// Per-host series are exported only for this many top hosts per direction (by packets/s),
    /// plus banned hosts. Default: `20`.
    #[serde(default = "default_top_hosts")]
    pub top_hosts: usize,
    /// A file holding a bearer token that `/metrics` then requires (Prometheus:
    /// `authorization: {credentials_file: ...}` in the scrape config). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Allow a `listen` address beyond loopback without `token_file` (the metrics name the
    /// hosts under attack). Without this the agent refuses to start that way. Default: `false`.
    #[serde(default)]
    pub insecure: bool,
    /// Connections open at once; one more is answered 503 and closed at once. Default: `32`.
    #[serde(default = "default_metrics_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 client: its /64).
    /// Default: `8`.
    #[serde(default = "default_metrics_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Longest time a client may take to send a request's headers, counted from the
    /// connection's start or from the previous answer: a slow (slowloris) or idle keep-alive
    /// connection is closed then. Default: `10s`.
    #[serde(
        default = "default_header_read_timeout",
        with = "humantime_serde_compat"
    )]
    pub header_read_timeout: Duration,
    /// Longest time a request may take from its headers to its answer, reading the body
    /// included; answered 408 then. Default: `30s`.
    #[serde(default = "default_request_timeout", with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// A connection that moves no byte either way for this long while none of its requests is
    /// being handled (a client that stopped reading its answer) is closed. Default: `60s`.
    #[serde(default = "default_http_idle_timeout", with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        toml::from_str("").expect("empty [prometheus] is valid")
    }
}

/// Connection limits and timeouts of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: its /64).
    pub max_connections_per_ip: usize,
    /// Longest wait for a request's headers.
    pub header_read_timeout: Duration,
    /// Longest time from a request's headers to its answer.
    pub request_timeout: Duration,
    /// Longest time without a byte either way while no request is handled.
    pub idle_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
}

/// Largest request body `/metrics` accepts (it takes none).
pub const METRICS_MAX_BODY_BYTES: usize = 4096;

impl ApiConfig {
    /// The listener's limits.
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

impl PrometheusConfig {
    /// The listener's limits.
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            max_body_bytes: METRICS_MAX_BODY_BYTES,
        }
    }
}

impl HttpLimits {
    fn validate(&self, section: &str) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err(format!(
                "{section}.max_connections and {section}.max_connections_per_ip must be above 0"
            ));
        }
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value < Duration::from_millis(100) || value > Duration::from_secs(3600) {
                return Err(format!("{section}.{key} must be between 100ms and 1h"));
            }
        }
        if !(1024..=16 << 20).contains(&self.max_body_bytes) {
            return Err(format!(
                "{section}.max_body_bytes must be between 1024 and 16777216"
            ));
        }
        Ok(())
    }
}

/// Refuses a listener beyond loopback that has no token, unless `insecure` allows it.
fn check_exposure(
    section: &str,
    listen: SocketAddr,
    token: &Option<PathBuf>,
    insecure: bool,
    who: &str,
) -> Result<(), String> {
    if listen.ip().is_loopback() || token.is_some() || insecure {
        return Ok(());
    }
    Err(format!(
        "{section}.listen {listen} is reachable beyond this host and {section}.token_file is not \
         set: {who}. Set {section}.token_file (see docs/security.md), listen on 127.0.0.1, or \
         set {section}.insecure = true to accept that"
    ))
}

fn yes() -> bool {
    true
}
fn default_networks() -> Vec<Prefix> {
    vec![
        "10.10.0.0/16".parse().expect("valid prefix"),
        "2001:db8::/32".parse().expect("valid prefix"),
    ]
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/fnm")
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_rate_window() -> Duration {
    Duration::from_secs(1)
}
fn default_interfaces() -> Vec<String> {
    vec!["eth0".into()]
}
fn default_max_hosts() -> u32 {
    65_536
}
fn default_dense_v4_addresses() -> u32 {
    65_536
}
/// Most `xdp.dense_v4_addresses`: their slots (two per address, after the /16 table's
/// markers) stay well below its `SPLIT` bit 31.
const MAX_DENSE_V4_ADDRESSES: u32 = 1 << 29;
/// Most `xdp.local24_tables`: one per IPv4 /16.
const MAX_LOCAL24_TABLES: u32 = 65_536;

fn default_local24_tables() -> u32 {
    4_096
}
fn default_accounting_max_hosts() -> u32 {
    262_144
}
fn default_max_hosts_per_exporter() -> u32 {
    65_536
}
fn default_max_hosts_per_source() -> u32 {
    196_608
}
fn default_max_flows() -> u32 {
    262_144
}
fn default_max_drops() -> u32 {
    65_536
}
fn default_max_prefixes() -> u32 {
    16_384
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_pin_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/fnm")
}
fn default_api_listen() -> SocketAddr {
    "127.0.0.1:9210".parse().expect("valid address")
}
fn default_prometheus_listen() -> SocketAddr {
    "127.0.0.1:9209".parse().expect("valid address")
}
fn default_top_hosts() -> usize {
    20
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_http_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_body_bytes() -> usize {
    65_536
}
fn default_api_max_connections() -> usize {
    256
}
fn default_api_max_connections_per_ip() -> usize {
    32
}
fn default_metrics_max_connections() -> usize {
    32
}
fn default_metrics_max_connections_per_ip() -> usize {
    8
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("the empty config is valid")
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: locate_unknown_key(text, e),
        })?;
        config
            .read_prefix_lists(text, path)
            .map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Merges `networks_file`, `whitelist_file` and `monitor_local_addresses` into `networks`
    /// and `whitelist` (see [`crate::prefix_lists`]); relative file paths become relative to
    /// the configuration file `path`.
    fn read_prefix_lists(
        &mut self,
        text: &str,
        path: &Path,
    ) -> Result<(), crate::prefix_lists::PrefixFileError> {
        use crate::prefix_lists::{beside, local_addresses, resolve, ListSources};
        if self.networks_file.is_none()
            && self.whitelist_file.is_none()
            && !self.monitor_local_addresses
        {
            return Ok(());
        }
        self.networks_file = self.networks_file.as_deref().map(|f| beside(path, f));
        self.whitelist_file = self.whitelist_file.as_deref().map(|f| beside(path, f));
        let inline_networks = toml::from_str::<toml::Table>(text)
            .map(|t| t.contains_key("networks"))
            .unwrap_or(true);
        let sources = ListSources {
            networks_file: self.networks_file.as_deref(),
            whitelist_file: self.whitelist_file.as_deref(),
            monitor_local_addresses: self.monitor_local_addresses,
            inline_networks,
        };
        let (mut networks, mut whitelist) = (self.networks.clone(), self.whitelist.clone());
        resolve(sources, &local_addresses, &mut networks, &mut whitelist)?;
        self.networks = networks;
        self.whitelist = whitelist;
        Ok(())
    }

    /// Checks what serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), String> {
        if self.poll_interval.is_zero() || self.poll_interval > Duration::from_secs(1) {
            return Err("poll_interval must be between 1ms and 1s".into());
        }
        if self.rate_window < self.poll_interval || self.rate_window > Duration::from_secs(60) {
            return Err("rate_window must be between poll_interval and 60s".into());
        }
        crate::detection::config::validate(&self.detection, &self.hostgroup, &self.ban)?;
        self.capture.validate().map_err(|e| e.to_string())?;
        self.attack_pcap.validate()?;
        self.actions.validate(&|action| self.uses_action(action))?;
        self.export.validate(&self.kafka)?;
        self.cluster.validate(&self.kafka, &self.export)?;
        if self.networks.is_empty() {
            return Err(
                "networks: at least one local network is needed (from networks, \
                        networks_file or monitor_local_addresses)"
                    .into(),
            );
        }
        if self.xdp_active() && self.xdp.interfaces.is_empty() {
            return Err("xdp.interfaces: empty while xdp.enabled = true".into());
        }
        for (key, value) in [
            ("xdp.max_hosts", self.xdp.max_hosts),
            ("xdp.max_flows", self.xdp.max_flows),
            ("xdp.max_drop_entries", self.xdp.max_drop_entries),
            ("xdp.max_prefixes", self.xdp.max_prefixes),
        ] {
            if value == 0 {
                return Err(format!("{key} must be above 0"));
            }
        }
        // Two counter slots per address, numbered below the kernel's `local16::SPLIT` flag.
        if self.xdp.dense_v4_addresses > MAX_DENSE_V4_ADDRESSES {
            return Err(format!(
                "xdp.dense_v4_addresses = {}: at most {MAX_DENSE_V4_ADDRESSES} (and 256 bytes \
                 each per CPU)",
                self.xdp.dense_v4_addresses
            ));
        }
        if self.xdp.local24_tables > MAX_LOCAL24_TABLES {
            return Err(format!(
                "xdp.local24_tables = {}: at most {MAX_LOCAL24_TABLES}, one per IPv4 /16",
                self.xdp.local24_tables
            ));
        }
        self.accounting.validate()?;
        self.sflow.validate("sflow")?;
        self.netflow.validate("netflow")?;
        self.api.limits().validate("api")?;
        self.prometheus.limits().validate("prometheus")?;
        check_exposure(
            "api",
            self.api.listen,
            &self.api.token_file,
            self.api.insecure,
            "anyone who can reach it could ban, unban and read every host's traffic",
        )?;
        check_exposure(
            "prometheus",
            self.prometheus.listen,
            &self.prometheus.token_file,
            self.prometheus.insecure,
            "anyone who can reach it could read which hosts are under attack and load the agent",
        )?;
        Ok(())
    }

    /// True when any attack, hostgroup or manual ban uses `action`.
    pub fn uses_action(&self, action: crate::actions::Action) -> bool {
        self.ban.actions.contains(&action)
            || self.ban.manual_actions.contains(&action)
            || self
                .hostgroup
                .iter()
                .any(|g| g.actions.as_ref().is_some_and(|a| a.contains(&action)))
    }

    /// True when the XDP data plane runs: `xdp.enabled` and `capture.backend = "xdp"`.
    pub fn xdp_active(&self) -> bool {
        self.xdp.enabled && self.capture.backend == crate::capture::BackendKind::Xdp
    }

    /// The default configuration as commented TOML (what `print-default-config` prints).
    pub fn default_toml() -> &'static str {
        include_str!("../../config/fnm-agent.toml")
    }
}

/// serde helpers for durations written as `"1s"`, `"30m"`, `"250ms"`.
pub mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes a duration as humantime text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads humantime text such as `"1s"` or `"30m"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// The parser's message, or, for an unknown top-level key (which serde reports against the
/// whole document, because the action sections are flattened into the top level), the line
/// that holds it.
fn locate_unknown_key(text: &str, error: toml::de::Error) -> String {
    let message = error.to_string();
    let Some(name) = error
        .message()
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    else {
        return message;
    };
    let mut in_top_level = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let header = line.trim_start_matches('[').trim_end_matches(']');
        let is_header = line.starts_with('[');
        let names_key = if is_header {
            header == name || header.starts_with(&format!("{name}."))
        } else {
            in_top_level
                && line
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        };
        if names_key {
            return format!(
                "line {}: unknown key `{name}` (`fnm-agent print-default-config` lists every \
                 setting)\n  |\n{} | {line}",
                i + 1,
                i + 1
            );
        }
        if is_header {
            in_top_level = false;
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_config_equals_builtin_defaults() {
        let shipped = Config::parse(Config::default_toml(), Path::new("config/fnm-agent.toml"))
            .expect("shipped config parses");
        assert_eq!(shipped, Config::default());
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name_and_line() {
        let err = Config::parse(
            "networks = [\"10.0.0.0/8\"]\nbogus = 1\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn action_sections_are_read_at_the_top_level_and_checked() {
        let config = Config::parse(
            "networks = [\"10.0.0.0/8\"]\n[ban]\nactions = [\"webhook\"]\n\
             [webhook]\nurl = \"http://127.0.0.1:9/hook\"\nretries = 1\n\
             [bgp]\ntimeout = \"2s\"\n",
            Path::new("x.toml"),
        )
        .expect("parses");
        assert_eq!(config.actions.webhook.retries, 1);
        assert_eq!(config.actions.bgp.timeout, Duration::from_secs(2));
        for (text, wanted) in [
            ("[webhook]\nurl = \"http://x/\"\nbogus = 1\n", "bogus"),
            ("[ban]\nactions = [\"webhook\"]\n", "webhook.url is not set"),
            ("[webhook]\nurl = \"ftp://x/\"\n", "http:// or https://"),
        ] {
            let err = Config::parse(
                &format!("networks = [\"10.0.0.0/8\"]\n{text}"),
                Path::new("x.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn bad_prefix_is_rejected() {
        let err = Config::parse("networks = [\"10.0.0.0/33\"]\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn a_listener_beyond_loopback_needs_a_token_or_insecure() {
        let err = Config::parse("[api]\nlisten = \"0.0.0.0:9210\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.token_file"), "{err}");
        assert!(err.contains("api.insecure"), "{err}");
        for ok in [
            "[api]\nlisten = \"0.0.0.0:9210\"\ntoken_file = \"/etc/fnm/api.token\"\n",
            "[api]\nlisten = \"0.0.0.0:9210\"\ninsecure = true\n",
            "[api]\nlisten = \"[::1]:9210\"\n",
        ] {
            Config::parse(ok, Path::new("x.toml")).unwrap();
        }
        let err = Config::parse(
            "[prometheus]\nlisten = \"192.0.2.1:9209\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("prometheus.token_file"), "{err}");
    }

    #[test]
    fn connection_limits_and_timeouts_are_checked() {
        for (bad, key) in [
            ("[api]\nmax_connections = 0\n", "api.max_connections"),
            (
                "[prometheus]\nheader_read_timeout = \"0s\"\n",
                "prometheus.header_read_timeout",
            ),
            ("[api]\nmax_body_bytes = 10\n", "api.max_body_bytes"),
            ("[ban]\nmin_source_prefix_v4 = 33\n", "min_source_prefix_v4"),
            ("[ban]\nmax_active_auto_bans = 0\n", "max_active_auto_bans"),
            ("[xdp]\nlocal24_tables = 65537\n", "xdp.local24_tables"),
            (
                "[xdp]\ndense_v4_addresses = 2000000000\n",
                "xdp.dense_v4_addresses",
            ),
        ] {
            let err = Config::parse(bad, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn poll_interval_over_a_second_is_rejected() {
        let err = Config::parse("poll_interval = \"2s\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_interval"), "{err}");
    }
}
