//! FastNetMon 1.2.4's options turned into fnm's configuration, section by section.
//!
//! Every option of the file is either carried (a key of the output, with a comment naming the
//! FastNetMon option it came from and, where the meaning differs, how) or listed at the end of
//! the output with why it was not. What FastNetMon does with an absent option (its defaults,
//! from its source) is what is carried for it.

use super::{
    fastnetmon_conf::{atoi, FastnetmonConf},
    writer::TomlWriter,
    ImportError,
};
use crate::prefix::Prefix;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

mod ban;
mod bgp;
mod lists;
mod monitoring;
mod sources;
mod thresholds;

#[cfg(test)]
use thresholds::OUT_OF_REACH;

/// Keys of fnm that exist on another branch only (being added while this importer was
/// written): the importer writes them as comments, so the output always loads. Remove a key
/// from here once fnm has it, and the importer sets it.
pub const PENDING_KEYS: &[&str] = &[];

/// True when fnm does not have `key` yet (see [`PENDING_KEYS`]).
fn pending(key: &str) -> bool {
    PENDING_KEYS.contains(&key)
}

/// What FastNetMon 1.2.4's flows count, and how fnm's differ (written next to the key).
pub const FLOWS_NOTE: &str = "FastNetMon 1.2.4's threshold_flows counts, per IPv4 host and \
    direction, the distinct TCP and UDP conversations (remote address, source port, \
    destination port) seen in each second; fnm's conversations_per_second counts the same \
    over the rate window (IPv4 and IPv6; not on the XDP data plane, which sees no tuples in \
    user space). fnm's flows_per_second is another rate: new 5-tuples per second. See \
    docs/migrating-from-fastnetmon.md.";

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The networks list to use instead of the file's `networks_list_path`.
    pub networks: Option<PathBuf>,
    /// The whitelist to use instead of the file's `white_list_path`.
    pub whitelist: Option<PathBuf>,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// fnm's configuration, commented TOML.
    pub toml: String,
    /// What needs the operator's eye (also written in the TOML), one line each.
    pub warnings: Vec<String>,
}

/// Reads FastNetMon's configuration file `path` and converts it.
pub fn import(path: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let conf = FastnetmonConf::parse(&String::from_utf8_lossy(&bytes));
    Ok(convert(&conf, path, options))
}

/// Converts a parsed FastNetMon configuration (read from `source`, named in the header).
pub fn convert(conf: &FastnetmonConf, source: &Path, options: &ImportOptions) -> Imported {
    let mut c = Converter {
        conf,
        w: TomlWriter::default(),
        used: BTreeSet::new(),
        not_carried: Vec::new(),
        warnings: Vec::new(),
        networks: Vec::new(),
        networks_inline: false,
    };
    c.header(source);
    c.lists(options);
    c.averaging();
    c.capture();
    c.thresholds();
    c.hostgroups();
    c.ipv6_bans();
    c.ban();
    c.bgp();
    c.collectors();
    c.prometheus();
    c.attack_pcap();
    c.log();
    c.rest();
    Imported {
        toml: c.w.finish(),
        warnings: c.warnings,
    }
}

struct Converter<'a> {
    conf: &'a FastnetmonConf,
    w: TomlWriter,
    /// FastNetMon keys carried (or explained where they were used).
    used: BTreeSet<String>,
    /// Options not carried: key, value, why.
    not_carried: Vec<(String, String, String)>,
    warnings: Vec<String>,
    /// The networks as FastNetMon's list gave them (for hostgroups and IPv6 bans).
    networks: Vec<Prefix>,
    /// True once `networks = [...]` is written.
    networks_inline: bool,
}

impl Converter<'_> {
    /// Marks `keys` as carried.
    fn use_keys(&mut self, keys: &[&str]) {
        for k in keys {
            self.used.insert((*k).to_owned());
        }
    }

    /// The value of `key`, marking it carried.
    fn take(&mut self, key: &str) -> Option<String> {
        self.used.insert(key.to_owned());
        self.conf.get(key).map(str::to_owned)
    }

    /// A switch with FastNetMon's default, marking it carried.
    fn take_on(&mut self, key: &str, default: bool) -> bool {
        self.used.insert(key.to_owned());
        self.conf.on(key, default)
    }

    /// `key = value` as FastNetMon wrote it, for comments (`key (absent: default)`).
    fn shown(&self, key: &str, default: &str) -> String {
        match self.conf.get(key) {
            Some(v) => format!("{key} = {v}"),
            None => format!("{key} absent (FastNetMon's default: {default})"),
        }
    }

    /// Lists `key` among the options not carried.
    fn not_carried(&mut self, key: &str, why: impl Into<String>) {
        self.used.insert(key.to_owned());
        if let Some(e) = self.conf.entry(key) {
            self.not_carried
                .push((e.key.clone(), e.value.clone(), why.into()));
        }
    }

    fn warn(&mut self, text: String) {
        self.warnings.push(text);
    }

    /// Writes a key fnm has only on another branch as a comment (see [`PENDING_KEYS`]).
    fn maybe_pending(
        &mut self,
        pending_name: &str,
        key: &str,
        value: impl Into<toml::Value>,
        note: &str,
    ) {
        if pending(pending_name) {
            self.w.commented_key(
                key,
                value,
                &format!("{note} (this fnm version has no {key} yet: set it by hand once it has)"),
            );
        } else {
            self.w.key(key, value, note);
        }
    }

    fn header(&mut self, source: &Path) {
        self.w.comment(&format!(
            "fnm-agent configuration imported from {} (FastNetMon 1.2.4) by `fnm-agent \
             import-fastnetmon`.",
            source.display()
        ));
        self.w.comment(
            "Each key says which FastNetMon option it comes from and, where fnm's meaning \
             differs, how. The options that could not be carried are listed at the end with \
             why. Check the result with `fnm-agent check-config FILE`; see \
             docs/migrating-from-fastnetmon.md.",
        );
        for (line, text) in &self.conf.bad_lines {
            let t = format!(
                "line {line} of the FastNetMon file is not `key = value` (FastNetMon skipped \
                 it too): {text}"
            );
            self.w.comment(&t);
            self.warnings.push(t);
        }
        self.w.blank();
    }

    /// The options left, listed with why they were not carried.
    fn rest(&mut self) {
        let left: Vec<(String, String)> = self
            .conf
            .entries()
            .filter(|e| !self.used.contains(&e.key))
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        for (key, value) in left {
            let why = why_not(&key);
            self.not_carried.push((key, value, why));
        }
        // Every option is named in the output: one that was read but changed nothing (its
        // feature is off) is listed too.
        let silent: Vec<(String, String)> = self
            .conf
            .entries()
            .filter(|e| {
                !self.w.mentions(&e.key) && !self.not_carried.iter().any(|(k, _, _)| *k == e.key)
            })
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        for (key, value) in silent {
            self.not_carried
                .push((key, value, "no effect with the settings above".to_owned()));
        }
        self.w.blank();
        if self.not_carried.is_empty() {
            self.w.comment("Every FastNetMon option was carried.");
            return;
        }
        self.w.comment("FastNetMon options not carried, and why:");
        // One entry per reason, in the order the reasons came up.
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for (key, value, why) in std::mem::take(&mut self.not_carried) {
            let option = format!("{key} = {value}");
            match groups.iter_mut().find(|(w, _)| *w == why) {
                Some((_, options)) => options.push(option),
                None => groups.push((why, vec![option])),
            }
        }
        for (why, options) in groups {
            self.w.comment(&format!("  {}: {why}", options.join("; ")));
        }
    }
}

/// Why an option no section used is not carried.
fn why_not(key: &str) -> String {
    let reason = match key {
        "disable_usage_report" => "fnm sends no usage report",
        "dump_all_traffic" | "dump_other_traffic" => {
            "fnm writes no packet log; `fnm-agent top`, `fnm-agent hosts` and the totals in \
             /metrics show the traffic (what is outside the networks counts as other)"
        }
        "check_period" => "fastnetmon_client's refresh; `fnm-agent top --interval`",
        "sort_parameter" | "max_ips_in_list" => {
            "fastnetmon_client's sort and length; `fnm-agent hosts --sort ... --top N` and \
             `fnm-agent top`"
        }
        "pid_path" => {
            "fnm needs no pid file: one agent per box is enforced through its state_dir, and \
             systemd tracks the process"
        }
        "cli_stats_file_path" | "cli_stats_ipv6_file_path" => {
            "fastnetmon_client's files; fnm's CLI asks the agent's API"
        }
        "enable_api" => {
            "fnm's HTTP API is always on ([api] listen, 127.0.0.1:9210); FastNetMon's gRPC API \
             (fastnetmon_api_client) has no equivalent"
        }
        "monitor_openvz_vps_ip_addresses" => {
            "OpenVZ's /proc/vz/veip is not read: list those addresses in the networks file"
        }
        k if k.starts_with("redis_") || k.starts_with("mongodb_") => {
            "fnm keeps attack records in <state_dir>/attacks.jsonl and serves them at \
             /api/v1/attacks; the webhook action can POST each one to a store"
        }
        k if k.starts_with("influxdb") || k.starts_with("graphite") => {
            "fnm exports metrics in Prometheus format (/metrics), no InfluxDB or Graphite push \
             (Telegraf's prometheus input can scrape it)"
        }
        k if k.starts_with("kafka_") => {
            "FastNetMon exports every packet to one Kafka topic; fnm's Kafka export ([export] \
             kafka, [kafka] brokers, docs/fleet.md) publishes per-host counters of each poll and \
             attack and mitigation events instead, not packets: set it up by hand if wanted"
        }
        _ => "not an option of FastNetMon 1.2.4 (it ignores it too)",
    };
    reason.to_owned()
}

#[cfg(test)]
mod tests;
