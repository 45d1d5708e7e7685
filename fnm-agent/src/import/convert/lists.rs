//! The networks list, the whitelist and the local addresses.

use super::{Converter, ImportOptions};
use crate::{prefix::Prefix, prefix_lists};
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

/// A networks-list line as FastNetMon 1.2.4 takes it: `a.b.c.d/len` with the host bits
/// masked, a bare IPv4 address (whitelist) as /32, an IPv6 prefix as written; `None` when it
/// skips the line.
fn fastnetmon_prefix(line: &str) -> Option<Prefix> {
    let (addr, len) = match line.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (line, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let len = match len {
        Some(l) => l.parse::<u8>().ok()?,
        None => {
            if ip.is_ipv4() {
                32
            } else {
                128
            }
        }
    };
    Prefix::new(ip, len)
}

impl Converter<'_> {
    /// `networks_file`, `whitelist_file`, `monitor_local_addresses` (top-level keys).
    pub(super) fn lists(&mut self, options: &ImportOptions) {
        let networks = match &options.networks {
            Some(p) => (p.clone(), "--networks".to_owned()),
            None => {
                let p = self
                    .take("networks_list_path")
                    .unwrap_or_else(|| "/etc/networks_list".into());
                (
                    PathBuf::from(p),
                    self.shown("networks_list_path", "/etc/networks_list"),
                )
            }
        };
        self.used.insert("networks_list_path".into());
        let nets = self.list_file("networks", &networks.0, &networks.1);
        self.networks = nets.unwrap_or_default();

        let local = self.take_on("monitor_local_ip_addresses", true);
        let note = format!(
            "{}: this host's addresses join the networks. FastNetMon adds the IPv4 addresses of \
             every interface but lo (only when /sbin/ip exists); fnm adds IPv4 and IPv6 \
             addresses but loopback and IPv6 link-local.",
            self.shown("monitor_local_ip_addresses", "on")
        );
        self.w.key("monitor_local_addresses", local, &note);
        if !local && self.networks.is_empty() {
            let t = "no networks: FastNetMon's networks list gave none and \
                     monitor_local_ip_addresses is off, so FastNetMon monitored no host; fnm \
                     refuses to start without a network: add prefixes to the networks file"
                .to_owned();
            self.w.comment(&format!("WARNING: {t}"));
            if !self.networks_inline {
                // Else fnm's default networks (documentation ranges) would stand in.
                self.w.key("networks", Vec::<String>::new(), "");
            }
            self.warn(t);
        }

        let whitelist = match &options.whitelist {
            Some(p) => (p.clone(), "--whitelist".to_owned()),
            None => {
                let p = self
                    .take("white_list_path")
                    .unwrap_or_else(|| "/etc/networks_whitelist".into());
                (
                    PathBuf::from(p),
                    self.shown("white_list_path", "/etc/networks_whitelist"),
                )
            }
        };
        self.used.insert("white_list_path".into());
        if let Some(white) = self.list_file("whitelist", &whitelist.0, &whitelist.1) {
            if white.iter().any(|p| !p.is_ipv4()) {
                let t = format!(
                    "{}: FastNetMon 1.2.4 skips the IPv6 lines of its whitelist; fnm honours \
                     them (those hosts are never reported or banned)",
                    whitelist.0.display()
                );
                self.w.comment(&t);
                self.warn(t);
            }
        }
    }

    /// Writes `<what>_file` for a FastNetMon list, or the list inline when fnm would refuse
    /// lines FastNetMon took (host bits set: FastNetMon masks them) or skipped (not a prefix).
    /// Returns the prefixes FastNetMon used, `None` when the file does not exist.
    fn list_file(&mut self, what: &str, path: &Path, from: &str) -> Option<Vec<Prefix>> {
        let key = format!("{what}_file");
        let text = match std::fs::read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                self.w.comment(&format!(
                    "{from}: {} cannot be read ({e}); FastNetMon goes on without it, fnm would \
                     refuse to start: no {key} set",
                    path.display()
                ));
                self.warn(format!(
                    "{} cannot be read: {e}; no {key} written",
                    path.display()
                ));
                return None;
            }
        };
        match prefix_lists::parse(&text) {
            Ok(prefixes) => {
                self.w.key(
                    &key,
                    path.display().to_string(),
                    &format!(
                        "{from} ({} prefixes now): read at start and on every reload, as \
                         FastNetMon reads it at start.",
                        prefixes.len()
                    ),
                );
                Some(prefixes)
            }
            Err(_) => {
                // What FastNetMon made of each line: a prefix (host bits masked), or nothing.
                let mut used = Vec::new();
                let mut problems = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    let l = line.trim();
                    if l.is_empty() {
                        continue;
                    }
                    match fastnetmon_prefix(l) {
                        Some(p) if p.to_string() == l || format!("{}", p.addr()) == l => {
                            used.push(p)
                        }
                        Some(p) => {
                            problems.push(format!("line {}: {l} (FastNetMon used {p})", i + 1));
                            used.push(p);
                        }
                        None => {
                            problems.push(format!("line {}: {l} (FastNetMon skipped it)", i + 1))
                        }
                    }
                }
                let note = format!(
                    "{from}: fnm refuses lines of {} that FastNetMon took or skipped: {}. These \
                     are the prefixes FastNetMon used; fix those lines and use `{key} = \"{}\"` \
                     instead to keep editing the file.",
                    path.display(),
                    problems.join("; "),
                    path.display()
                );
                let values: Vec<String> = used.iter().map(|p| p.to_string()).collect();
                self.w.key(what, values, &note);
                if what == "networks" {
                    self.networks_inline = true;
                }
                self.warn(format!(
                    "{}: {} line(s) fnm would refuse, written inline instead: {}",
                    path.display(),
                    problems.len(),
                    problems.join("; ")
                ));
                Some(used)
            }
        }
    }
}
