//! FastNetMon 1.2.4's configuration file, read as FastNetMon reads it
//! (`load_configuration_file` in its `fastnetmon.cpp`).
//!
//! Each line is trimmed; empty lines and lines starting with `#` are skipped; the rest is split
//! at `=` (runs of `=` count as one) and must give exactly a key and a value, both trimmed,
//! else FastNetMon logs the line and skips it. A key given twice keeps its last value. Every
//! `hostgroup = name:prefix,prefix...` line defines a hostgroup (a second definition of a name is
//! ignored), whose settings are the keys `<name>_<setting>`. Switches are on only when their
//! value is exactly `on`; numbers are read as C's `atoi` reads them (leading digits, else 0).

use std::collections::BTreeMap;

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Line number, from 1.
    pub line: usize,
    /// The key.
    pub key: String,
    /// The value (may be empty).
    pub value: String,
}

/// One `hostgroup = name:prefixes` definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostgroup {
    /// Line number, from 1.
    pub line: usize,
    /// The group's name (the prefix of its settings' keys).
    pub name: String,
    /// Its prefixes, as written (comma-separated in the file, trimmed, empty ones dropped).
    pub prefixes: Vec<String>,
}

/// A parsed FastNetMon configuration.
#[derive(Debug, Clone, Default)]
pub struct FastnetmonConf {
    /// Each key with its last entry, by key.
    last: BTreeMap<String, Entry>,
    /// The keys in the order of their first line.
    order: Vec<String>,
    /// The hostgroups, in file order (the first definition of each name).
    pub hostgroups: Vec<Hostgroup>,
    /// `hostgroup` lines FastNetMon could not use (no `:`, or a name defined before), with why.
    pub bad_hostgroups: Vec<(Entry, &'static str)>,
    /// Lines that are not `key = value` (FastNetMon logs and skips them): number and text.
    pub bad_lines: Vec<(usize, String)>,
}

/// Splits `text` at `sep` as boost's `split` with `token_compress_on` does: a run of
/// separators is one separator (an empty first or last token stays).
fn split_compressed(text: &str, sep: char) -> Vec<&str> {
    let parts: Vec<&str> = text.split(sep).collect();
    let last = parts.len().saturating_sub(1);
    parts
        .into_iter()
        .enumerate()
        .filter(|(i, p)| !p.is_empty() || *i == 0 || *i == last)
        .map(|(_, p)| p)
        .collect()
}

impl FastnetmonConf {
    /// Reads configuration text as FastNetMon 1.2.4 does.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts = split_compressed(line, '=');
            let [key, value] = parts.as_slice() else {
                conf.bad_lines.push((i + 1, line.to_owned()));
                continue;
            };
            let entry = Entry {
                line: i + 1,
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            };
            if entry.key == "hostgroup" {
                conf.add_hostgroup(&entry);
            }
            if !conf.last.contains_key(&entry.key) {
                conf.order.push(entry.key.clone());
            }
            conf.last.insert(entry.key.clone(), entry);
        }
        conf
    }

    fn add_hostgroup(&mut self, entry: &Entry) {
        let parts = split_compressed(&entry.value, ':');
        let [name, prefixes] = parts.as_slice() else {
            self.bad_hostgroups
                .push((entry.clone(), "not `name:prefix,prefix...`"));
            return;
        };
        let name = name.trim();
        if self.hostgroups.iter().any(|g| g.name == name) {
            self.bad_hostgroups
                .push((entry.clone(), "a second definition of the same name"));
            return;
        }
        self.hostgroups.push(Hostgroup {
            line: entry.line,
            name: name.to_owned(),
            prefixes: prefixes
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        });
    }

    /// The last entry of `key`.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.last.get(key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.last.get(key).map(|e| e.value.as_str())
    }

    /// A switch: `Some(true)` only for exactly `on`, `None` when absent.
    pub fn switch(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| v == "on")
    }

    /// A switch with FastNetMon's default when absent.
    pub fn on(&self, key: &str, default: bool) -> bool {
        self.switch(key).unwrap_or(default)
    }

    /// A number as FastNetMon reads it (C `atoi`: leading digits, else 0), `None` when absent.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.get(key).map(atoi)
    }

    /// Every key, each once, in the order of its first line, with its last entry.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.order.iter().filter_map(|k| self.last.get(k))
    }
}

/// C's `atoi` on a non-negative number: the leading digits (after blanks and a `+`), else 0;
/// saturating instead of overflowing.
pub fn atoi(text: &str) -> u64 {
    let t = text.trim_start();
    let t = t.strip_prefix('+').unwrap_or(t);
    t.bytes().take_while(u8::is_ascii_digit).fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_as_fastnetmon_reads_them() {
        let conf = FastnetmonConf::parse(
            "# comment\n  ban_time = 1900  \n\nthreshold_pps=20000\nthreshold_pps = 30000\n\
             a == b\nbroken line\nx = y = z\nempty =\n   # indented comment\n",
        );
        assert_eq!(conf.get("ban_time"), Some("1900"));
        assert_eq!(conf.entry("ban_time").unwrap().line, 2);
        assert_eq!(
            conf.get("threshold_pps"),
            Some("30000"),
            "the last one wins"
        );
        assert_eq!(conf.entry("threshold_pps").unwrap().line, 5);
        assert_eq!(conf.get("a"), Some("b"), "a run of = is one");
        assert_eq!(conf.get("empty"), Some(""));
        assert_eq!(
            conf.bad_lines,
            vec![(7, "broken line".to_owned()), (8, "x = y = z".to_owned())]
        );
        let keys: Vec<&str> = conf.entries().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["ban_time", "threshold_pps", "a", "empty"]);
    }

    #[test]
    fn switches_and_numbers_follow_fastnetmon() {
        let conf = FastnetmonConf::parse("a = on\nb = On\nc = yes\nn = 12abc\nm = abc\n");
        assert_eq!(conf.switch("a"), Some(true));
        assert_eq!(conf.switch("b"), Some(false), "only exactly `on`");
        assert_eq!(conf.switch("c"), Some(false));
        assert_eq!(conf.switch("d"), None);
        assert!(conf.on("d", true));
        assert_eq!(conf.number("n"), Some(12));
        assert_eq!(conf.number("m"), Some(0));
        assert_eq!(atoi("99999999999999999999999"), u64::MAX);
    }

    #[test]
    fn every_hostgroup_line_counts_once_per_name() {
        let conf = FastnetmonConf::parse(
            "hostgroup = web:10.0.0.0/24, 10.0.1.0/24\nhostgroup = dns:10.0.2.53/32\n\
             hostgroup = web:10.9.0.0/16\nhostgroup = nocolon\n",
        );
        assert_eq!(conf.hostgroups.len(), 2);
        assert_eq!(conf.hostgroups[0].name, "web");
        assert_eq!(conf.hostgroups[0].prefixes, ["10.0.0.0/24", "10.0.1.0/24"]);
        assert_eq!(conf.hostgroups[1].name, "dns");
        assert_eq!(conf.bad_hostgroups.len(), 2);
        assert_eq!(conf.bad_hostgroups[0].0.line, 3);
    }
}
