//! `[bgp]` from FastNetMon's GoBGP or ExaBGP settings.

use super::{pending, Converter};
use crate::actions::bgp::Community;

impl Converter<'_> {
    /// `[bgp]` from the GoBGP or ExaBGP settings.
    pub(super) fn bgp(&mut self) {
        let gobgp = self.take_on("gobgp", false);
        let exabgp = self.take_on("exabgp", false);
        let gobgp_keys = [
            "gobgp_next_hop",
            "gobgp_next_hop_ipv6",
            "gobgp_announce_host",
            "gobgp_announce_whole_subnet",
            "gobgp_announce_host_ipv6",
            "gobgp_announce_whole_subnet_ipv6",
            "gobgp_community_host",
            "gobgp_community_subnet",
            "gobgp_community_host_ipv6",
            "gobgp_community_subnet_ipv6",
        ];
        let exabgp_keys = [
            "exabgp_command_pipe",
            "exabgp_next_hop",
            "exabgp_community",
            "exabgp_community_host",
            "exabgp_community_subnet",
            "exabgp_announce_host",
            "exabgp_announce_whole_subnet",
        ];
        if !gobgp {
            self.not_carried("gobgp", "nothing is announced through GoBGP");
        }
        if !exabgp {
            self.not_carried("exabgp", "nothing is announced through ExaBGP");
        }
        if gobgp {
            self.gobgp();
            if exabgp {
                self.not_carried("exabgp", "fnm announces through one BGP daemon: GoBGP here");
                let t = "gobgp and exabgp are both on: FastNetMon announces through both, fnm \
                         through one daemon: GoBGP kept, the exabgp_* options are not carried"
                    .to_owned();
                self.w.comment(&t);
                self.warn(t);
                for k in exabgp_keys {
                    self.not_carried(k, "fnm announces through one BGP daemon: GoBGP here");
                }
            } else {
                for k in exabgp_keys {
                    self.not_carried(k, "exabgp is off");
                }
            }
        } else if exabgp {
            self.exabgp();
            for k in gobgp_keys {
                self.not_carried(k, "gobgp is off");
            }
        } else {
            for k in gobgp_keys {
                self.not_carried(k, "gobgp is off");
            }
            for k in exabgp_keys {
                self.not_carried(k, "exabgp is off");
            }
        }
    }

    /// Communities in FastNetMon's syntax (`65001:666` or `[65001:666 65001:777]`).
    fn communities(&mut self, key: &str, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for word in text
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split([' ', ','])
            .filter(|w| !w.is_empty())
        {
            match word.parse::<Community>() {
                Ok(c) => out.push(c.to_string()),
                Err(e) => {
                    let t = format!("{key}: {e}; left out");
                    self.w.comment(&t);
                    self.warn(t);
                }
            }
        }
        out
    }

    fn gobgp(&mut self) {
        self.w.table("bgp");
        self.w.key(
            "backend",
            "gobgp",
            "gobgp = on (FastNetMon talks to gobgpd's gRPC API on localhost:50051)",
        );
        self.w.key("gobgp_api", "127.0.0.1:50051", "");
        let next_hop = self
            .take("gobgp_next_hop")
            .unwrap_or_else(|| "0.0.0.0".into());
        match next_hop.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => self.w.key(
                "next_hop",
                ip.to_string(),
                &self.shown("gobgp_next_hop", "0.0.0.0"),
            ),
            Err(_) => {
                let t = format!("gobgp_next_hop = {next_hop}: not an IPv4 address, not carried");
                self.w.comment(&t);
                self.warn(t);
            }
        }
        let v6 = self
            .take("gobgp_next_hop_ipv6")
            .unwrap_or_else(|| "100::1".into());
        match v6.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => self.w.key(
                "next_hop_v6",
                ip.to_string(),
                &self.shown("gobgp_next_hop_ipv6", "100::1"),
            ),
            Err(_) => {
                let t = format!("gobgp_next_hop_ipv6 = {v6}: not an IPv6 address, not carried");
                self.w.comment(&t);
                self.warn(t);
            }
        }
        let host = self.take_on("gobgp_announce_host", false);
        let subnet = self.take_on("gobgp_announce_whole_subnet", false);
        let host6 = self.take_on("gobgp_announce_host_ipv6", false);
        let subnet6 = self.take_on("gobgp_announce_whole_subnet_ipv6", false);
        let community = |c: &mut Self, key: &str| {
            let v = c.take(key).unwrap_or_else(|| "65001:666".into());
            c.communities(key, &v)
        };
        let host_c = community(self, "gobgp_community_host");
        let subnet_c = community(self, "gobgp_community_subnet");
        let host6_c = community(self, "gobgp_community_host_ipv6");
        let _subnet6_c = community(self, "gobgp_community_subnet_ipv6");
        self.not_carried(
            "gobgp_community_subnet_ipv6",
            "FastNetMon 1.2.4 announces no IPv6 subnet",
        );
        if !subnet {
            self.not_carried(
                "gobgp_community_subnet",
                "gobgp_announce_whole_subnet is off",
            );
        }
        if !host6 {
            self.not_carried(
                "gobgp_community_host_ipv6",
                "gobgp_announce_host_ipv6 is off",
            );
        }
        let note = format!(
            "{}, on host routes",
            self.shown("gobgp_community_host", "65001:666")
        );
        self.w.key("communities", host_c, &note);
        self.announce_mode(host, subnet, "gobgp", subnet_c);
        let v6_note = format!(
            "{}: FastNetMon {} IPv6 hosts",
            self.shown("gobgp_announce_host_ipv6", "off"),
            if host6 { "announces" } else { "announces no" }
        );
        self.maybe_pending(
            "bgp.announce_v6",
            "announce_v6",
            if host6 { "host" } else { "none" },
            &v6_note,
        );
        if !host6 && pending("bgp.announce_v6") && (host || subnet) {
            let t = "gobgp_announce_host_ipv6 is off: FastNetMon announces no IPv6 host, but \
                     this fnm's bgp_blackhole announces IPv6 hosts too (a report_only hostgroup \
                     of the IPv6 networks keeps them unbanned)"
                .to_owned();
            self.w.comment(&t);
            self.warn(t);
        }
        if host6 {
            let note = self.shown("gobgp_community_host_ipv6", "65001:666");
            self.maybe_pending(
                "bgp.host_communities_v6",
                "host_communities_v6",
                host6_c,
                &note,
            );
        }
        if !subnet6 {
            self.not_carried("gobgp_announce_whole_subnet_ipv6", "off");
        }
        if subnet6 {
            self.w.comment(
                "gobgp_announce_whole_subnet_ipv6 = on: FastNetMon 1.2.4 logs that it does not \
                 support it and announces nothing for it; not carried.",
            );
        }
    }

    /// `announce` (host, subnet, both, none) and the subnet routes' communities.
    fn announce_mode(&mut self, host: bool, subnet: bool, daemon: &str, subnet_c: Vec<String>) {
        let mode = match (host, subnet) {
            (true, false) => "host",
            (false, true) => "subnet",
            (true, true) => "both",
            (false, false) => "none",
        };
        let what = match mode {
            "host" => "the host's /32",
            "subnet" => "the host's subnet, not the host",
            "both" => "the host's /32 and its subnet",
            _ => "nothing for IPv4 hosts",
        };
        let note = format!(
            "{daemon}_announce_host = {}, {daemon}_announce_whole_subnet = {}: FastNetMon \
             announces {what} (its subnet: the networks-list prefix the host is in; fnm's: the \
             host's most specific hostgroup prefix, else its networks prefix)",
            if host { "on" } else { "off" },
            if subnet { "on" } else { "off" },
        );
        self.maybe_pending("bgp.announce", "announce", mode, &note);
        if subnet {
            self.maybe_pending(
                "bgp.subnet_communities",
                "subnet_communities",
                subnet_c,
                &format!("{daemon}_community_subnet, on subnet routes"),
            );
        }
        if pending("bgp.announce") && mode != "host" {
            let t = format!(
                "{daemon}: FastNetMon announces {what}; this fnm's bgp_blackhole announces \
                 the host's /32 until it has subnet announces"
            );
            self.w.comment(&t);
            self.warn(t);
        }
    }

    fn exabgp(&mut self) {
        self.w.table("bgp");
        self.w.key(
            "backend",
            "exabgp",
            "exabgp = on. fnm writes the same kind of text command (announce route ... \
             next-hop ... community [...]) to the pipe, one line per write, as FastNetMon \
             does: a `process` reading it or ExaBGP's own CLI pipe (docs/bgp-daemons.md) both \
             work.",
        );
        let pipe = self
            .take("exabgp_command_pipe")
            .unwrap_or_else(|| "/var/run/exabgp.cmd".into());
        self.w.key(
            "exabgp_pipe",
            pipe,
            &self.shown("exabgp_command_pipe", "/var/run/exabgp.cmd"),
        );
        let next_hop = self.take("exabgp_next_hop").unwrap_or_default();
        match next_hop.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => self.w.key("next_hop", ip.to_string(), "exabgp_next_hop"),
            Err(_) => {
                let t = format!(
                    "exabgp_next_hop = {next_hop:?}: not an IPv4 address (FastNetMon turns \
                     ExaBGP off without one): fnm's default next hop stays; set [bgp] next_hop"
                );
                self.w.comment(&t);
                self.warn(t);
            }
        }
        let base = self.take("exabgp_community").unwrap_or_default();
        let host_given = self.conf.get("exabgp_community_host").is_some();
        let subnet_given = self.conf.get("exabgp_community_subnet").is_some();
        let host_text = self.take("exabgp_community_host").unwrap_or(base.clone());
        let subnet_text = self.take("exabgp_community_subnet").unwrap_or(base);
        let subnet_on = self.conf.on("exabgp_announce_whole_subnet", false);
        if !subnet_on {
            self.not_carried(
                "exabgp_community_subnet",
                "exabgp_announce_whole_subnet is off",
            );
        }
        if host_given && (subnet_given || !subnet_on) {
            self.not_carried(
                "exabgp_community",
                "exabgp_community_host and exabgp_community_subnet replace it",
            );
        }
        let host_c = self.communities("exabgp_community_host", &host_text);
        let subnet_c = self.communities("exabgp_community_subnet", &subnet_text);
        self.w.key(
            "communities",
            host_c,
            "exabgp_community_host, else exabgp_community, on host announces",
        );
        let host = self.take_on("exabgp_announce_host", false);
        let subnet = self.take_on("exabgp_announce_whole_subnet", false);
        self.announce_mode(host, subnet, "exabgp", subnet_c);
        self.maybe_pending(
            "bgp.announce_v6",
            "announce_v6",
            "none",
            "FastNetMon 1.2.4 announces IPv4 hosts only through ExaBGP",
        );
        if pending("bgp.announce_v6") {
            self.w.comment(
                "(This fnm's bgp_blackhole announces IPv6 hosts too, with next_hop_v6, 100::1 \
                 by default.)",
            );
        }
    }
}
