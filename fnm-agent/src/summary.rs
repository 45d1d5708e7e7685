//! The start-up summary: what the agent counts, what it detects, what it does about it, what it
//! listens to, and the kernel memory its XDP maps take (also `fnm_xdp_map_memory_bytes`).
//!
//! A default configuration counts traffic and detects nothing; the summary says so in as many
//! words, so nobody takes silence for protection.

use crate::{config::Config, detection::thresholds::ThresholdTable, metrics::MetricsSource};
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The line logged when no threshold is set anywhere.
pub const NO_THRESHOLDS: &str = "no thresholds set: counting only, no attack will be detected \
     (set [detection.incoming] pps, bytes_per_second... or a hostgroup's)";

/// Most networks named one by one in the summary.
const NETWORKS_SHOWN: usize = 8;

/// One map's kernel memory, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapBytes {
    /// The kernel's name of the map (at most 15 bytes).
    pub name: String,
    /// Bytes, every CPU's copy included.
    pub bytes: u64,
}

/// The `[xdp]` key that sizes a map, by the map's kernel name.
pub fn sizing_key(map: &str) -> Option<&'static str> {
    use fnm_common::map_names as n;
    // The kernel keeps 15 bytes of a name: a 15-byte name may be the start of a longer one.
    let is = |full: &str| full == map || (map.len() == 15 && full.starts_with(map));
    if is(n::HOSTS_DENSE_V4) || is(n::DENSE_TOUCHED_V4) {
        Some("xdp.dense_v4_addresses")
    } else if is(n::HOSTS_V4) || is(n::HOSTS) {
        Some("xdp.max_hosts")
    } else if is(n::FLOWS) {
        Some("xdp.max_flows")
    } else if map.starts_with("FNM_DROP") || is(n::RULES) {
        Some("xdp.max_drop_entries")
    } else if map.starts_with("FNM_LOCAL_") || map.starts_with("FNM_WHITELIST") {
        Some("xdp.max_prefixes")
    } else {
        None
    }
}

/// Bytes as `12.3 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The summary's lines, in order: networks, thresholds, actions, sources and backends, and
/// with `maps` the XDP maps' memory.
pub fn lines(config: &Config, maps: Option<&[MapBytes]>) -> Vec<String> {
    let mut out = Vec::new();
    let nets: Vec<String> = config.networks.iter().map(|p| p.to_string()).collect();
    let more = nets.len().saturating_sub(NETWORKS_SHOWN);
    out.push(format!(
        "counting {} network{}: {}{}",
        nets.len(),
        if nets.len() == 1 { "" } else { "s" },
        nets[..nets.len().min(NETWORKS_SHOWN)].join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ));

    let table = ThresholdTable::new(&config.detection, &config.hostgroup);
    if table.is_empty() {
        out.push(NO_THRESHOLDS.to_owned());
    } else {
        let describe = |t: &crate::detection::config::Thresholds| {
            let set = t.set();
            if set.is_empty() {
                "none".to_owned()
            } else {
                set.iter()
                    .map(|(k, v)| format!("{} {v}", k.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut line = format!(
            "thresholds: incoming {}; outgoing {}",
            describe(&config.detection.incoming),
            describe(&config.detection.outgoing)
        );
        if !config.hostgroup.is_empty() {
            let names: Vec<&str> = config.hostgroup.iter().map(|g| g.name.as_str()).collect();
            line.push_str(&format!(
                "; {} hostgroup{} with their own ({})",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            ));
        }
        out.push(line);
    }

    let names = |a: &[crate::actions::Action]| {
        if a.is_empty() {
            "none".to_owned()
        } else {
            a.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    let mut line = format!(
        "actions on an attack: {}{}; on a manual ban: {}",
        names(&config.ban.actions),
        if config.ban.actions.is_empty() {
            " (attacks are reported only)"
        } else {
            ""
        },
        names(&config.ban.manual_actions)
    );
    if let Some(script) = &config.ban.script {
        line.push_str(&format!("; notify script {}", script.display()));
    }
    out.push(line);

    let mut sources = Vec::new();
    if config.xdp_active() {
        sources.push(format!(
            "XDP on {} ({} mode{})",
            config.xdp.interfaces.join(", "),
            match config.xdp.mode {
                crate::config::XdpMode::Auto => "auto",
                crate::config::XdpMode::Native => "native",
                crate::config::XdpMode::Skb => "skb",
            },
            if config.xdp.pin_links {
                ", links pinned"
            } else {
                ""
            }
        ));
    } else if config.capture.backend != crate::capture::BackendKind::Xdp {
        sources.push(format!(
            "{} capture on {}",
            config.capture.backend.as_str(),
            config.capture.interfaces.join(", ")
        ));
    }
    let listen = |l: &[std::net::SocketAddr]| {
        l.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !config.sflow.listen.is_empty() {
        sources.push(format!("sFlow on {}", listen(&config.sflow.listen)));
    }
    if !config.netflow.listen.is_empty() {
        sources.push(format!(
            "NetFlow/IPFIX on {}",
            listen(&config.netflow.listen)
        ));
    }
    if sources.is_empty() {
        sources.push("none".into());
    }
    let mut line = format!("sources: {}", sources.join("; "));
    use crate::actions::Action;
    if config.uses_action(Action::BgpBlackhole) || config.uses_action(Action::BgpFlowspec) {
        line.push_str(&match config.actions.bgp.backend {
            crate::actions::bgp::BgpBackend::Gobgp => {
                format!("; BGP through GoBGP at {}", config.actions.bgp.gobgp_api)
            }
            crate::actions::bgp::BgpBackend::Exabgp => {
                format!(
                    "; BGP through ExaBGP's pipe {}",
                    config.actions.bgp.exabgp_pipe.display()
                )
            }
        });
    }
    out.push(line);

    if let Some(maps) = maps {
        let total: u64 = maps.iter().map(|m| m.bytes).sum();
        let largest: Vec<String> = maps
            .iter()
            .take(4)
            .map(|m| {
                format!(
                    "{} {}{}",
                    m.name,
                    human_bytes(m.bytes),
                    sizing_key(&m.name).map_or(String::new(), |k| format!(" ({k})"))
                )
            })
            .collect();
        out.push(format!(
            "XDP maps take {} of kernel memory ({} possible CPUs; per-CPU maps grow with them); \
             largest: {}",
            human_bytes(total),
            possible_cpus().map_or_else(|| "?".to_owned(), |n| n.to_string()),
            largest.join(", ")
        ));
    }
    out
}

/// CPUs the kernel may bring up (per-CPU maps hold a copy for each).
pub fn possible_cpus() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?;
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1,
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// Physical memory in bytes (`MemTotal` of `/proc/meminfo`).
pub fn memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A warning when the maps take more than a tenth of the machine's memory, naming the keys
/// that size them down.
pub fn memory_warning(total: u64, memory: Option<u64>) -> Option<String> {
    let memory = memory?;
    (total > memory / 10).then(|| {
        format!(
            "the XDP maps take {} of this machine's {}: lower xdp.dense_v4_addresses and \
             xdp.max_hosts (per-CPU maps: one copy per CPU), or xdp.max_flows",
            human_bytes(total),
            human_bytes(memory)
        )
    })
}

/// `fnm_xdp_map_memory_bytes`: the kernel memory of the XDP maps (0 without XDP).
#[derive(Debug, Default)]
pub struct MapMemoryMetric {
    bytes: AtomicU64,
}

impl MapMemoryMetric {
    /// Sets the total.
    pub fn set(&self, bytes: u64) {
        self.bytes.store(bytes, Relaxed);
    }
}

impl MetricsSource for MapMemoryMetric {
    fn register(&self, registry: &mut Registry) {
        let g = Gauge::<i64>::default();
        g.set(self.bytes.load(Relaxed).min(i64::MAX as u64) as i64);
        registry.register(
            "fnm_xdp_map_memory_bytes",
            "Kernel memory taken by the XDP program's maps (every CPU's copy of per-CPU maps)",
            g,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("x.toml")).unwrap()
    }

    #[test]
    fn the_default_configuration_says_it_detects_nothing() {
        let l = lines(&Config::default(), None);
        assert!(
            l[0].starts_with("counting 2 networks: 10.10.0.0/16, 2001:db8::/32"),
            "{l:?}"
        );
        assert_eq!(l[1], NO_THRESHOLDS);
        assert!(l[2].contains("actions on an attack: xdp_rule"), "{l:?}");
        assert!(
            l[3].contains("XDP on eth0 (auto mode, links pinned)"),
            "{l:?}"
        );
        assert!(l[3].contains("sFlow on 0.0.0.0:6343"), "{l:?}");
        assert_eq!(l.len(), 4);
    }

    #[test]
    fn thresholds_hostgroups_and_map_memory_are_named() {
        let c = parse(
            "networks = [\"10.0.0.0/8\"]\n[detection.incoming]\npps = 1000\n\
             [[hostgroup]]\nname = \"web\"\nnetworks = [\"10.1.0.0/16\"]\n\
             [hostgroup.incoming]\npps = 50\n",
        );
        let maps = [
            MapBytes {
                name: "FNM_HOSTS_D4".into(),
                bytes: 3 << 20,
            },
            MapBytes {
                name: "FNM_STATS".into(),
                bytes: 512,
            },
        ];
        let l = lines(&c, Some(&maps));
        assert!(l[1].contains("incoming pps 1000; outgoing none"), "{l:?}");
        assert!(l[1].contains("1 hostgroup with their own (web)"), "{l:?}");
        assert!(l[4].contains("XDP maps take 3.0 MiB"), "{l:?}");
        assert!(
            l[4].contains("FNM_HOSTS_D4 3.0 MiB (xdp.dense_v4_addresses)"),
            "{l:?}"
        );
        assert_eq!(sizing_key("FNM_WHITELIST_V"), Some("xdp.max_prefixes"));
        assert_eq!(sizing_key("FNM_HOSTS"), Some("xdp.max_hosts"));
        assert_eq!(sizing_key("FNM_DROP_COUNTE"), Some("xdp.max_drop_entries"));
        assert_eq!(sizing_key("FNM_HOSTS_V4"), Some("xdp.max_hosts"));
        assert_eq!(sizing_key(""), None);
    }

    #[test]
    fn helpers() {
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(96_468_992), "92.0 MiB");
        assert!(possible_cpus().unwrap() >= 1);
        assert!(memory_warning(1 << 30, Some(4 << 30)).is_some());
        assert!(memory_warning(1 << 20, Some(4 << 30)).is_none());
    }
}
