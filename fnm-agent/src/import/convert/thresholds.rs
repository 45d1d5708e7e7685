//! Averaging, thresholds, directions and hostgroups.

use super::{atoi, Converter, FLOWS_NOTE};
use crate::prefix::Prefix;
use std::collections::BTreeSet;

/// An fnm threshold key, its value and the comment saying where it came from.
type RateLine = (String, f64, String);

/// A threshold of FastNetMon and its fnm key.
struct Rate {
    /// FastNetMon's switch (`ban_for_pps`).
    switch: &'static str,
    /// FastNetMon's threshold (`threshold_pps`).
    threshold: &'static str,
    /// fnm's key in `[detection.incoming]` and the others.
    fnm: &'static str,
}

/// FastNetMon 1.2.4's nine thresholds (`read_ban_settings`).
const RATES: [Rate; 9] = [
    Rate {
        switch: "ban_for_pps",
        threshold: "threshold_pps",
        fnm: "pps",
    },
    Rate {
        switch: "ban_for_bandwidth",
        threshold: "threshold_mbps",
        fnm: "mbps",
    },
    Rate {
        switch: "ban_for_flows",
        threshold: "threshold_flows",
        fnm: "conversations_per_second",
    },
    Rate {
        switch: "ban_for_tcp_pps",
        threshold: "threshold_tcp_pps",
        fnm: "tcp_pps",
    },
    Rate {
        switch: "ban_for_udp_pps",
        threshold: "threshold_udp_pps",
        fnm: "udp_pps",
    },
    Rate {
        switch: "ban_for_icmp_pps",
        threshold: "threshold_icmp_pps",
        fnm: "icmp_pps",
    },
    Rate {
        switch: "ban_for_tcp_bandwidth",
        threshold: "threshold_tcp_mbps",
        fnm: "tcp_mbps",
    },
    Rate {
        switch: "ban_for_udp_bandwidth",
        threshold: "threshold_udp_mbps",
        fnm: "udp_mbps",
    },
    Rate {
        switch: "ban_for_icmp_bandwidth",
        threshold: "threshold_icmp_mbps",
        fnm: "icmp_mbps",
    },
];

/// A threshold fnm's hostgroups cannot turn off (they inherit what they omit): set this high,
/// it is never reached.
pub const OUT_OF_REACH: f64 = 1e15;

/// The group name of a hostgroup setting key (`web_threshold_pps` → `web`).
fn hostgroup_setting(key: &str) -> Option<&str> {
    const SUFFIXES: &[&str] = &[
        "enable_ban_ipv6",
        "enable_ban",
        "ban_for_pps",
        "ban_for_bandwidth",
        "ban_for_flows",
        "ban_for_tcp_pps",
        "ban_for_udp_pps",
        "ban_for_icmp_pps",
        "ban_for_tcp_bandwidth",
        "ban_for_udp_bandwidth",
        "ban_for_icmp_bandwidth",
        "threshold_pps",
        "threshold_mbps",
        "threshold_flows",
        "threshold_tcp_pps",
        "threshold_udp_pps",
        "threshold_icmp_pps",
        "threshold_tcp_mbps",
        "threshold_udp_mbps",
        "threshold_icmp_mbps",
    ];
    SUFFIXES.iter().find_map(|s| {
        key.strip_suffix(s)
            .and_then(|k| k.strip_suffix('_'))
            .filter(|g| !g.is_empty())
    })
}

impl Converter<'_> {
    /// `rate_window` from `average_calculation_time`.
    pub(super) fn averaging(&mut self) {
        let secs = self
            .take("average_calculation_time")
            .map(|v| atoi(&v))
            .unwrap_or(15);
        let window = secs.clamp(1, 60);
        let mut note = format!(
            "{}: FastNetMon averages each rate exponentially over this time; fnm averages over a \
             sliding window of it. fnm's own default is 1s (faster detection): lower it once \
             the thresholds are checked against fnm's rates.",
            self.shown("average_calculation_time", "15")
        );
        if window != secs {
            note.push_str(&format!(" ({secs} s is outside 1..60 s: {window} s used.)"));
        }
        self.w.key("rate_window", format!("{window}s"), &note);
        self.not_carried(
            "speed_calculation_delay",
            "fnm recomputes every rate each poll_interval (250 ms by default, at most 1 s)",
        );
    }

    /// The rates of one FastNetMon ban settings block (`prefix` "" or `name_`): (fnm key,
    /// value, note) for the thresholds that are on, and the ones that are off, as comments.
    fn rate_lines(&mut self, prefix: &str) -> (Vec<RateLine>, Vec<RateLine>) {
        let conntrack = self.conf.on("enable_connection_tracking", true);
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for r in &RATES {
            let switch = format!("{prefix}{}", r.switch);
            let threshold = format!("{prefix}{}", r.threshold);
            self.use_keys(&[&switch, &threshold]);
            let enabled = self.conf.on(&switch, false);
            let value = self.conf.number(&threshold);
            let shown = format!(
                "{} ({})",
                self.shown(&threshold, "0"),
                self.shown(&switch, "off")
            );
            let mut note = shown.clone();
            if r.fnm == "conversations_per_second" {
                if !conntrack {
                    note.push_str(
                        "; enable_connection_tracking = off, so FastNetMon never counted flows \
                         and this threshold never fired",
                    );
                    off.push((r.fnm.to_owned(), value.unwrap_or(0) as f64, note));
                    continue;
                }
                let tracking = self.shown("enable_connection_tracking", "on");
                note.push_str(&format!("; {tracking}. {FLOWS_NOTE}"));
            }
            match (enabled, value) {
                (true, Some(v)) if v > 0 => on.push((r.fnm.to_owned(), v as f64, note)),
                (true, _) => {
                    note.push_str(
                        ": FastNetMon's threshold 0 fires on any traffic; fnm needs a positive \
                         one, 1 is the closest",
                    );
                    on.push((r.fnm.to_owned(), 1.0, note));
                }
                (false, v) => off.push((r.fnm.to_owned(), v.unwrap_or(0) as f64, note)),
            }
        }
        (on, off)
    }

    /// `[detection.incoming]` and `[detection.outgoing]`.
    pub(super) fn thresholds(&mut self) {
        self.used.insert("enable_connection_tracking".into());
        let (on, off) = self.rate_lines("");
        for (dir, key) in [
            ("incoming", "process_incoming_traffic"),
            ("outgoing", "process_outgoing_traffic"),
        ] {
            let processed = self.take_on(key, true);
            self.w.table(&format!("detection.{dir}"));
            if !processed {
                self.w.comment(&format!(
                    "{key} = off: FastNetMon does not count {dir} traffic; fnm counts it but \
                     sets no {dir} threshold."
                ));
                continue;
            }
            self.w.comment(&format!(
                "{key} = on: FastNetMon's thresholds apply to incoming and outgoing traffic \
                 alike."
            ));
            // The flows note once, at its first place.
            let brief = |note: &String| {
                if dir == "incoming" {
                    note.clone()
                } else {
                    note.replace(FLOWS_NOTE, "See the flows note in [detection.incoming].")
                }
            };
            for (k, v, note) in &on {
                self.w.key(k, *v, &brief(note));
            }
            for (k, v, note) in &off {
                self.w.commented_key(k, *v, &brief(note));
            }
        }
    }

    /// `[[hostgroup]]` for each `hostgroup` line.
    pub(super) fn hostgroups(&mut self) {
        self.used.insert("hostgroup".into());
        let groups = self.conf.hostgroups.clone();
        let global: Vec<String> = {
            let (on, _) = self.rate_lines("");
            on.into_iter().map(|(k, _, _)| k).collect()
        };
        for (entry, why) in self.conf.bad_hostgroups.clone() {
            let t = format!(
                "hostgroup line {} ({}): {why}; FastNetMon ignores it too",
                entry.line, entry.value
            );
            self.w.comment(&t);
            self.warn(t);
        }
        let mut names = BTreeSet::new();
        for g in groups {
            names.insert(g.name.clone());
            let mut prefixes = Vec::new();
            let mut notes = Vec::new();
            for text in &g.prefixes {
                match text.parse::<Prefix>() {
                    Ok(p) => {
                        if !self.networks.contains(&p) {
                            notes.push(format!(
                                "{p} is not a line of the networks list: FastNetMon 1.2.4 finds \
                                 a host's hostgroup by the networks-list prefix the host is in, \
                                 so it never applied this one; fnm applies it to every host \
                                 inside {p}"
                            ));
                        }
                        prefixes.push(p.to_string());
                    }
                    Err(e) => notes.push(format!("{text} left out: {e}")),
                }
            }
            if prefixes.is_empty() {
                let t = format!(
                    "hostgroup {} (line {}): no usable prefix, not carried",
                    g.name, g.line
                );
                self.w.comment(&t);
                self.warn(t);
                continue;
            }
            self.w.array_table("hostgroup");
            self.w.key(
                "name",
                g.name.clone(),
                &format!("hostgroup line {}", g.line),
            );
            for n in &notes {
                self.w.comment(n);
                self.warn(format!("hostgroup {}: {n}", g.name));
            }
            self.w.key("networks", prefixes, "");
            let ban_key = format!("{}_enable_ban", g.name);
            self.used.insert(ban_key.clone());
            if self.conf.switch(&ban_key) == Some(true) {
                self.w
                    .comment(&format!("{ban_key} = on: banned like the other hosts."));
            }
            if self.conf.switch(&ban_key) == Some(false) {
                self.w.key(
                    "report_only",
                    true,
                    &format!(
                        "{ban_key} = off: detect and report, never ban. (FastNetMon 1.2.4 reads \
                         but does not honour a hostgroup's enable_ban: it banned these hosts.)"
                    ),
                );
            }
            self.not_carried(
                &format!("{}_enable_ban_ipv6", g.name),
                "FastNetMon's hostgroups hold IPv4 prefixes only, and it does not read this",
            );
            let (on, off) = self.rate_lines(&format!("{}_", g.name));
            let mut lines: Vec<(String, f64, String, bool)> = Vec::new();
            for (k, v, note) in on {
                lines.push((k, v, note, true));
            }
            for (k, v, note) in off {
                if global.contains(&k) {
                    lines.push((
                        k,
                        OUT_OF_REACH,
                        format!(
                            "{note}: off for this group in FastNetMon (its hostgroups inherit \
                             nothing), but fnm's hostgroups inherit the [detection] thresholds \
                             they omit, so this one is set out of reach"
                        ),
                        true,
                    ));
                } else {
                    lines.push((k, v, note, false));
                }
            }
            for dir in ["incoming", "outgoing"] {
                if !self.conf.on(&format!("process_{dir}_traffic"), true) {
                    continue;
                }
                self.w.table(&format!("hostgroup.{dir}"));
                for (k, v, note, set) in &lines {
                    let note =
                        &note.replace(FLOWS_NOTE, "See the flows note in [detection.incoming].");
                    if *set {
                        self.w.key(k, *v, note);
                    } else {
                        self.w.commented_key(k, *v, note);
                    }
                }
            }
        }
        // Settings of groups no `hostgroup` line defines: FastNetMon ignores them too.
        let orphans: Vec<(String, String)> = self
            .conf
            .entries()
            .filter(|e| !self.used.contains(&e.key))
            .filter_map(|e| {
                hostgroup_setting(&e.key)
                    .filter(|group| !names.contains(*group))
                    .map(|group| (e.key.clone(), group.to_owned()))
            })
            .collect();
        for (key, group) in orphans {
            self.not_carried(
                &key,
                format!("a setting of hostgroup {group}, which no hostgroup line defines (FastNetMon ignores it too)"),
            );
        }
    }

    /// `enable_ban_ipv6 = off`: a report-only hostgroup of the IPv6 networks.
    pub(super) fn ipv6_bans(&mut self) {
        let enable_ban = self.conf.on("enable_ban", false);
        let v6 = self.take_on("enable_ban_ipv6", false);
        if !enable_ban {
            self.not_carried("enable_ban_ipv6", "enable_ban is off: nothing is banned");
            return;
        }
        if v6 {
            let t = format!(
                "{}: IPv6 hosts are banned like IPv4 ones, as fnm does.",
                self.shown("enable_ban_ipv6", "off")
            );
            self.w.comment(&t);
            return;
        }
        let shown = self.shown("enable_ban_ipv6", "off");
        let v6_networks: Vec<String> = self
            .networks
            .iter()
            .filter(|p| !p.is_ipv4())
            .map(|p| p.to_string())
            .collect();
        if v6_networks.is_empty() {
            self.w.comment(&format!(
                "{shown}: FastNetMon bans no IPv6 host; the networks list has no IPv6 prefix, \
                 so there is nothing to carry (fnm bans IPv6 hosts too: put IPv6 prefixes in a \
                 report_only hostgroup to keep them unbanned)."
            ));
            return;
        }
        self.w.array_table("hostgroup");
        self.w.key(
            "name",
            "ipv6_no_ban",
            &format!(
                "{shown}: FastNetMon detects but never bans IPv6 hosts; this group makes the \
                 IPv6 networks report only."
            ),
        );
        self.w.key("networks", v6_networks, "");
        self.w.key("report_only", true, "");
    }
}
