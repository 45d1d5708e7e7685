//! `[ban]`: ban time, unban, actions, the notify script; `[attack_pcap]`.

use super::{atoi, pending, Converter};

/// The action a ban runs, as fnm names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Script,
    BgpBlackhole,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Script => "script",
            Act::BgpBlackhole => "bgp_blackhole",
        }
    }
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file()
}

impl Converter<'_> {
    /// `[ban]`: time, unban, actions, script.
    pub(super) fn ban(&mut self) {
        self.w.table("ban");
        let time = self.take("ban_time").map_or(1800, |v| atoi(&v));
        if time == 0 {
            self.w.key(
                "time",
                "never",
                "ban_time = 0: no automatic unban (lift bans by hand: fnm-agent unban, or the \
                 API), as in FastNetMon",
            );
        } else {
            self.w.key(
                "time",
                format!("{time}s"),
                &format!(
                    "{}. FastNetMon checks for expired bans every 60 s (or ban_time / 2); fnm \
                     on the second.",
                    self.shown("ban_time", "1800")
                ),
            );
        }
        let only_finished = self.take_on("unban_only_if_attack_finished", true);
        self.w.key(
            "unban_only_when_stopped",
            only_finished,
            &format!(
                "{}. FastNetMon keeps the ban while the host is over a threshold when the ban \
                 expires; fnm while the attack has not stopped (every rate under stop_ratio x \
                 its threshold for stop_after, 0.7 and 30 s by default).",
                self.shown("unban_only_if_attack_finished", "on")
            ),
        );

        let enable_ban = self.take_on("enable_ban", false);
        let mut actions: Vec<Act> = Vec::new();
        let script_path = self
            .take("notify_script_path")
            .unwrap_or_else(|| "/usr/local/bin/notify_about_attack.sh".into());
        let script_from = self.shown(
            "notify_script_path",
            "/usr/local/bin/notify_about_attack.sh",
        );
        let script_ok = match std::fs::metadata(&script_path) {
            Err(_) => {
                self.w.comment(&format!(
                    "{script_from}: the file does not exist, so FastNetMon runs no script; \
                     neither does fnm. Once it exists: add \"script\" to actions and set \
                     script = \"{script_path}\"."
                ));
                false
            }
            Ok(m) if !is_executable(&m) => {
                let t = format!(
                    "{script_path} is not executable: FastNetMon's calls fail, fnm refuses it; \
                     chmod +x it, then add \"script\" to actions and set script = \
                     \"{script_path}\""
                );
                self.w.comment(&t);
                self.warn(t);
                false
            }
            Ok(_) => true,
        };
        if script_ok {
            actions.push(Act::Script);
        }
        if self.bgp_announces() {
            actions.push(Act::BgpBlackhole);
        }
        let names: Vec<String> = actions.iter().map(|a| a.name().to_owned()).collect();
        let actions_note = if enable_ban {
            format!(
                "enable_ban = on: a ban runs the notify script and announces the BGP routes \
                 FastNetMon would ({}). FastNetMon drops nothing itself; fnm can: add \
                 \"xdp_rule\" with the XDP data plane on.",
                if names.is_empty() {
                    "here: none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        } else {
            "enable_ban is off (FastNetMon's default when absent): attacks are detected and \
             recorded, nothing is run"
                .to_owned()
        };
        let names = if enable_ban { names } else { Vec::new() };
        self.w.key("actions", names.clone(), &actions_note);
        self.w.key(
            "manual_actions",
            names,
            "a ban by hand (fnm-agent ban, the API) runs the same actions",
        );
        if script_ok {
            self.w.key("script", script_path, &script_from);
            self.maybe_pending(
                "ban.script_format = \"fastnetmon\"",
                "script_format",
                "fastnetmon",
                "FastNetMon's report on the script's stdin, line for line, for scripts written \
                 for it",
            );
        }
        self.not_carried(
            "ban_details_records_count",
            "fnm keeps up to 100 packet samples and the top flows in every attack record \
             (fnm-agent attacks show ID); not configurable",
        );
    }

    /// True when FastNetMon's BGP settings announce anything (so a ban runs bgp_blackhole).
    fn bgp_announces(&self) -> bool {
        let gobgp = self.conf.on("gobgp", false)
            && (self.conf.on("gobgp_announce_host", false)
                || self.conf.on("gobgp_announce_whole_subnet", false)
                || self.conf.on("gobgp_announce_host_ipv6", false));
        let exabgp = self.conf.on("exabgp", false)
            && !self.conf.get("exabgp_next_hop").unwrap_or("").is_empty()
            && (self.conf.on("exabgp_announce_host", false)
                || self.conf.on("exabgp_announce_whole_subnet", false));
        gobgp || exabgp
    }

    /// `[attack_pcap]` from `collect_attack_pcap_dumps`.
    pub(super) fn attack_pcap(&mut self) {
        let on = self.take_on("collect_attack_pcap_dumps", false);
        let note = format!(
            "{}: each attack's packets in a pcap file, fnm's in <state_dir>/attacks/<id>.pcap \
             (the sampled packets' headers; FastNetMon's hold whole packets)",
            self.shown("collect_attack_pcap_dumps", "off")
        );
        if pending("attack_pcap.enabled") {
            self.w.blank();
            self.w.comment("[attack_pcap]");
            self.w.commented_key(
                "enabled",
                on,
                &format!("{note} (this fnm version has no [attack_pcap] yet: set it by hand once it has)"),
            );
        } else {
            self.w.table("attack_pcap");
            self.w.key("enabled", on, &note);
        }
    }
}
