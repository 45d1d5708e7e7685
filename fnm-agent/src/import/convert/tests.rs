//! The importer on Debian's real `/etc/fastnetmon.conf` and on variants covering every option
//! group; each output is loaded as fnm loads a configuration and checked as `check-config`
//! checks it.

use super::*;
use crate::{accounting::RateKind, actions::Action, config::Config, preflight};
use std::{os::unix::fs::PermissionsExt as _, time::Duration};

/// Debian's FastNetMon configuration, installed by the `fastnetmon` package.
const DEBIAN_CONF: &str = "/etc/fastnetmon.conf";

/// A FastNetMon setup in a temporary directory: its conf, networks list, whitelist, script.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(networks: &str, whitelist: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("networks_list"), networks).unwrap();
        std::fs::write(dir.path().join("networks_whitelist"), whitelist).unwrap();
        let script = dir.path().join("notify.sh");
        std::fs::write(&script, "#!/bin/sh\ncat > /dev/null\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The lists and script of this setup, then `body`.
    fn conf(&self, body: &str) -> String {
        format!(
            "networks_list_path = {}\nwhite_list_path = {}\nnotify_script_path = {}\n\
             monitor_local_ip_addresses = off\n{body}",
            self.path("networks_list"),
            self.path("networks_whitelist"),
            self.path("notify.sh")
        )
    }

    /// Imports `conf`, loads the result and checks it as check-config does (state_dir in the
    /// temporary directory); returns the TOML and the configuration.
    fn import(&self, conf: &str) -> (Imported, Config) {
        let path = self.dir.path().join("fastnetmon.conf");
        std::fs::write(&path, conf).unwrap();
        let imported = import(&path, &ImportOptions::default()).unwrap();
        let config = load_and_check(&imported.toml, self.dir.path());
        (imported, config)
    }
}

/// Loads `toml` as fnm does and asserts check-config's machine checks find no error.
fn load_and_check(toml: &str, dir: &Path) -> Config {
    let mut config = Config::parse(toml, &dir.join("fnm-agent.toml"))
        .unwrap_or_else(|e| panic!("{e}\n---\n{toml}"));
    config.state_dir = dir.join("state");
    let report = preflight::check(&config, Some(toml));
    let errors: Vec<String> = report
        .of(preflight::Severity::Error)
        .map(|f| f.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n---\n{toml}");
    config
}

/// Every option of `conf` is named in the output: carried, or listed with why not.
fn assert_every_option_named(conf: &str, toml: &str) {
    for e in FastnetmonConf::parse(conf).entries() {
        assert!(
            toml.contains(&e.key),
            "{} is neither carried nor listed:\n{toml}",
            e.key
        );
    }
}

/// The entry of the not-carried list (`key = value; key = value: why`, unwrapped) naming
/// `key`.
fn not_carried_line(toml: &str, key: &str) -> Option<String> {
    let list = toml
        .split("# FastNetMon options not carried, and why:\n")
        .nth(1)?;
    let mut entries: Vec<String> = Vec::new();
    for line in list.lines() {
        if let Some(more) = line.strip_prefix("#     ") {
            let last = entries.last_mut()?;
            last.push(' ');
            last.push_str(more);
        } else if let Some(entry) = line.strip_prefix("#   ") {
            entries.push(entry.to_owned());
        }
    }
    entries
        .into_iter()
        .find(|e| e.starts_with(&format!("{key} = ")) || e.contains(&format!("; {key} = ")))
}

/// `toml` with wrapped comments joined, to find a phrase of a comment.
fn flat(toml: &str) -> String {
    toml.replace("\n# ", " ")
}

fn rate(t: &crate::detection::config::Thresholds, kind: RateKind) -> Option<f64> {
    t.get(kind)
}

#[test]
fn debians_real_fastnetmon_conf_imports_and_checks() {
    let text = std::fs::read_to_string(DEBIAN_CONF).unwrap_or_else(|e| {
        panic!(
            "\n\n*** {DEBIAN_CONF}: {e}: install the Debian package `fastnetmon` (cargo xtask \
             setup --test-peers) ***\n"
        )
    });
    let imported = import(Path::new(DEBIAN_CONF), &ImportOptions::default()).unwrap();
    let toml = &imported.toml;
    println!("{toml}");
    let dir = tempfile::tempdir().unwrap();
    let config = load_and_check(toml, dir.path());
    assert_every_option_named(&text, toml);

    // Its networks list (empty in the package) and this host's addresses.
    assert_eq!(
        config.networks_file.as_deref(),
        Some(Path::new("/etc/networks_list"))
    );
    assert!(config.monitor_local_addresses);
    assert_eq!(
        config.whitelist_file.as_deref(),
        Some(Path::new("/etc/networks_whitelist"))
    );
    // average_calculation_time = 5, ban_time = 1900, unban_only_if_attack_finished = on.
    assert_eq!(config.rate_window, Duration::from_secs(5));
    assert_eq!(config.ban.time, Duration::from_secs(1900));
    assert!(config.ban.unban_only_when_stopped);
    // ban_for_pps and ban_for_bandwidth on, flows and per-protocol off: both directions.
    for t in [&config.detection.incoming, &config.detection.outgoing] {
        assert_eq!(rate(t, RateKind::Pps), Some(20000.0));
        assert_eq!(rate(t, RateKind::BytesPerSecond), Some(1000.0 * 125_000.0));
        assert_eq!(rate(t, RateKind::ConversationsPerSecond), None);
        assert_eq!(rate(t, RateKind::UdpPps), None);
        assert_eq!(rate(t, RateKind::TcpBytesPerSecond), None);
    }
    assert!(toml.contains("# conversations_per_second = 3500"), "{toml}");
    assert!(toml.contains("# udp_pps = 100000"), "{toml}");
    // No capture on, no collector on: nothing listens.
    assert!(!config.xdp.enabled);
    assert!(config.sflow.listen.is_empty() && config.netflow.listen.is_empty());
    // The notify script does not exist, exabgp and gobgp are off: no action.
    if !Path::new("/usr/local/bin/notify_about_attack.sh").exists() {
        assert!(config.ban.actions.is_empty(), "{:?}", config.ban.actions);
        assert!(config.ban.script.is_none());
    }
    assert_eq!(config.prometheus.listen, "127.0.0.1:9209".parse().unwrap());
    assert_eq!(config.log.level, crate::logging::LogLevel::Info);
    // The hostgroup is commented out in the package: its settings are listed, not carried.
    assert!(config.hostgroup.is_empty());
    let line = not_carried_line(toml, "my_hosts_threshold_pps").expect(toml);
    assert!(line.contains("no hostgroup line defines"), "{line}");
    for key in [
        "redis_enabled",
        "influxdb",
        "kafka_traffic_export",
        "pid_path",
        "enable_api",
    ] {
        assert!(not_carried_line(toml, key).is_some(), "{key}:\n{toml}");
    }
}

#[test]
fn thresholds_directions_hostgroups_and_ban_settings() {
    let s = Setup::new(
        "10.10.0.0/16\n10.20.0.0/24\n10.30.0.7/32\n2001:db8::/32\n",
        "10.10.0.9/32\n",
    );
    let conf = s.conf(
        "enable_ban = on\nenable_ban_ipv6 = on\nprocess_incoming_traffic = on\n\
         process_outgoing_traffic = off\nban_time = 0\nunban_only_if_attack_finished = off\n\
         average_calculation_time = 120\nenable_connection_tracking = on\n\
         ban_for_pps = on\nthreshold_pps = 50000\nban_for_bandwidth = on\nthreshold_mbps = 900\n\
         ban_for_flows = on\nthreshold_flows = 2000\n\
         ban_for_tcp_pps = on\nthreshold_tcp_pps = 40000\nban_for_udp_pps = on\n\
         threshold_udp_pps = 30000\nban_for_icmp_pps = on\nthreshold_icmp_pps = 1000\n\
         ban_for_tcp_bandwidth = on\nthreshold_tcp_mbps = 800\nban_for_udp_bandwidth = on\n\
         threshold_udp_mbps = 500\nban_for_icmp_bandwidth = on\nthreshold_icmp_mbps = 10\n\
         hostgroup = web:10.20.0.0/24\nweb_enable_ban = on\nweb_ban_for_bandwidth = on\n\
         web_threshold_mbps = 5000\nweb_ban_for_udp_pps = on\nweb_threshold_udp_pps = 90000\n\
         hostgroup = vip:10.30.0.7/32,10.99.0.0/16\nvip_enable_ban = off\nvip_ban_for_pps = on\n\
         vip_threshold_pps = 1000\nhostgroup = broken\nlogging_level = debug\n\
         this line is broken\nmystery_option = 1\n",
    );
    let (imported, config) = s.import(&conf);
    let toml = &imported.toml;
    println!("{toml}");
    assert_every_option_named(&conf, toml);
    assert_eq!(config.networks.len(), 4);
    assert_eq!(config.whitelist, vec!["10.10.0.9/32".parse().unwrap()]);
    assert_eq!(config.ban.time_limit(), None, "ban_time = 0: never");
    assert!(!config.ban.unban_only_when_stopped);
    assert_eq!(config.rate_window, Duration::from_secs(60), "clamped");
    let i = &config.detection.incoming;
    for (kind, v) in [
        (RateKind::Pps, 50000.0),
        (RateKind::BytesPerSecond, 900.0 * 125_000.0),
        (RateKind::ConversationsPerSecond, 2000.0),
        (RateKind::TcpPps, 40000.0),
        (RateKind::UdpPps, 30000.0),
        (RateKind::IcmpPps, 1000.0),
        (RateKind::TcpBytesPerSecond, 800.0 * 125_000.0),
        (RateKind::UdpBytesPerSecond, 500.0 * 125_000.0),
        (RateKind::IcmpBytesPerSecond, 10.0 * 125_000.0),
    ] {
        assert_eq!(rate(i, kind), Some(v), "{kind:?}");
    }
    assert!(config.detection.outgoing.set().is_empty(), "outgoing off");
    assert!(toml.contains(FLOWS_NOTE.split_whitespace().next().unwrap()));
    assert!(
        flat(toml).contains("distinct TCP and UDP conversations"),
        "{toml}"
    );
    // Hostgroups: their own rates; the global ones they leave off are out of reach.
    let web = config.hostgroup.iter().find(|g| g.name == "web").unwrap();
    assert_eq!(web.networks, vec!["10.20.0.0/24".parse().unwrap()]);
    assert!(!web.report_only);
    assert_eq!(
        rate(&web.incoming, RateKind::BytesPerSecond),
        Some(5000.0 * 125_000.0)
    );
    assert_eq!(rate(&web.incoming, RateKind::UdpPps), Some(90000.0));
    assert_eq!(rate(&web.incoming, RateKind::Pps), Some(OUT_OF_REACH));
    assert_eq!(rate(&web.incoming, RateKind::TcpPps), Some(OUT_OF_REACH));
    // threshold_flows is FastNetMon's conversations: on globally, off in the group.
    assert_eq!(
        rate(&web.incoming, RateKind::ConversationsPerSecond),
        Some(OUT_OF_REACH)
    );
    assert_eq!(rate(&web.incoming, RateKind::FlowsPerSecond), None);
    assert_eq!(rate(i, RateKind::FlowsPerSecond), None);
    let vip = config.hostgroup.iter().find(|g| g.name == "vip").unwrap();
    assert!(vip.report_only, "vip_enable_ban = off");
    assert_eq!(vip.networks.len(), 2);
    assert_eq!(rate(&vip.incoming, RateKind::Pps), Some(1000.0));
    assert!(
        flat(toml).contains("10.99.0.0/16 is not a line of the networks list"),
        "{toml}"
    );
    assert!(imported.warnings.iter().any(|w| w.contains("broken")));
    assert!(flat(toml).contains("this line is broken"), "{toml}");
    assert!(not_carried_line(toml, "mystery_option")
        .unwrap()
        .contains("not an option of FastNetMon 1.2.4"));
    assert_eq!(config.log.level, crate::logging::LogLevel::Debug);
    // The script exists: it is run, with FastNetMon's report format when fnm has it.
    assert_eq!(config.ban.actions, vec![Action::Script]);
    assert_eq!(config.ban.manual_actions, vec![Action::Script]);
    assert_eq!(
        config.ban.script.as_deref(),
        Some(Path::new(&s.path("notify.sh")))
    );
}

#[test]
fn gobgp_collectors_and_mirror_capture() {
    let s = Setup::new("10.10.0.0/16\n", "");
    let conf = s.conf(
        "enable_ban = on\nban_for_pps = on\nthreshold_pps = 20000\n\
         gobgp = on\ngobgp_next_hop = 192.0.2.254\ngobgp_next_hop_ipv6 = 100::1\n\
         gobgp_announce_host = on\ngobgp_announce_whole_subnet = on\n\
         gobgp_community_host = 65001:666\ngobgp_community_subnet = 65001:777\n\
         gobgp_announce_host_ipv6 = on\ngobgp_community_host_ipv6 = 65001:668\n\
         exabgp = off\nsflow = on\nsflow_port = 6343,6344\nsflow_host = 127.0.0.1\n\
         netflow = on\nnetflow_port = 2055\nnetflow_host = ::\nnetflow_sampling_ratio = 100\n\
         mirror_afpacket = on\ninterfaces = lo\nmirror_af_packet_custom_sampling_rate = 10\n\
         mirror_af_packet_fanout_mode = cpu\nprometheus = on\nprometheus_host = 127.0.0.1\n\
         prometheus_port = 9300\n",
    );
    let (imported, config) = s.import(&conf);
    let toml = &imported.toml;
    println!("{toml}");
    assert_every_option_named(&conf, toml);
    use crate::actions::bgp::BgpBackend;
    let bgp = &config.actions.bgp;
    assert_eq!(bgp.backend, BgpBackend::Gobgp);
    assert_eq!(bgp.gobgp_api, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(
        bgp.next_hop,
        "192.0.2.254".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(bgp.communities, vec!["65001:666".parse().unwrap()]);
    assert_eq!(
        config.ban.actions,
        vec![Action::Script, Action::BgpBlackhole]
    );
    assert_eq!(
        config.sflow.listen,
        vec![
            "127.0.0.1:6343".parse().unwrap(),
            "127.0.0.1:6344".parse().unwrap()
        ]
    );
    assert_eq!(config.netflow.listen, vec!["[::]:2055".parse().unwrap()]);
    assert_eq!(config.netflow.default_sampling_rate, 100);
    assert_eq!(config.capture.backend, crate::capture::BackendKind::Pcap);
    assert_eq!(config.capture.interfaces, vec!["lo".to_owned()]);
    assert!(!config.xdp.enabled);
    assert_eq!(config.prometheus.listen, "127.0.0.1:9300".parse().unwrap());
    // Keys fnm has on another branch only are shown, not set.
    for (pending_key, line) in [
        ("capture.sampling_rate", "sampling_rate = 10"),
        ("bgp.announce", "announce = \"both\""),
        ("bgp.announce_v6", "announce_v6 = \"host\""),
        (
            "bgp.subnet_communities",
            "subnet_communities = [\"65001:777\"]",
        ),
        (
            "bgp.host_communities_v6",
            "host_communities_v6 = [\"65001:668\"]",
        ),
        (
            "ban.script_format = \"fastnetmon\"",
            "script_format = \"fastnetmon\"",
        ),
    ] {
        let commented = format!("# {line}");
        if pending(pending_key) {
            assert!(toml.contains(&commented), "{commented}:\n{toml}");
        } else {
            assert!(toml.contains(&format!("\n{line}")), "{line}:\n{toml}");
        }
    }
}

#[test]
fn exabgp_with_communities_and_af_xdp() {
    let s = Setup::new("10.10.0.0/16\n", "");
    let conf = s.conf(
        "enable_ban = on\nban_for_bandwidth = on\nthreshold_mbps = 1000\n\
         exabgp = on\nexabgp_command_pipe = /var/run/exabgp.cmd\n\
         exabgp_community = [65001:666 65001:777]\nexabgp_community_subnet = 65001:667\n\
         exabgp_next_hop = 10.0.3.114\nexabgp_announce_host = on\n\
         exabgp_announce_whole_subnet = off\ngobgp = off\ngobgp_next_hop = 0.0.0.0\n\
         mirror_afxdp = on\ninterfaces = lo\nforce_native_mode_xdp = off\nzero_copy_xdp = off\n",
    );
    let (imported, config) = s.import(&conf);
    let toml = &imported.toml;
    println!("{toml}");
    assert_every_option_named(&conf, toml);
    use crate::actions::bgp::BgpBackend;
    let bgp = &config.actions.bgp;
    assert_eq!(bgp.backend, BgpBackend::Exabgp);
    assert_eq!(bgp.exabgp_pipe, Path::new("/var/run/exabgp.cmd"));
    assert_eq!(
        bgp.next_hop,
        "10.0.3.114".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(
        bgp.communities,
        vec!["65001:666".parse().unwrap(), "65001:777".parse().unwrap()],
        "the host community falls back to exabgp_community"
    );
    assert_eq!(
        config.ban.actions,
        vec![Action::Script, Action::BgpBlackhole]
    );
    assert!(config.xdp.enabled);
    assert_eq!(config.xdp.interfaces, vec!["lo".to_owned()]);
    assert!(not_carried_line(toml, "gobgp_next_hop")
        .unwrap()
        .contains("gobgp is off"));
    assert!(not_carried_line(toml, "zero_copy_xdp").is_some());
}

#[test]
fn lists_fnm_would_refuse_are_written_as_fastnetmon_used_them() {
    // Host bits set (FastNetMon masks them), a line it skips, an IPv6 network.
    let s = Setup::new(
        "10.10.0.1/16\nnot a prefix\n192.0.2.0/24\n2001:db8::/32\n",
        "10.10.0.9\n2001:db8::9/128\n",
    );
    let conf =
        s.conf("enable_ban = on\nenable_ban_ipv6 = off\nban_for_pps = on\nthreshold_pps = 1\n");
    let (imported, config) = s.import(&conf);
    let toml = &imported.toml;
    println!("{toml}");
    assert_eq!(config.networks_file, None);
    assert_eq!(
        config.networks,
        vec![
            "10.10.0.0/16".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap()
        ]
    );
    let warning = imported
        .warnings
        .iter()
        .find(|w| w.contains("written inline"))
        .expect("a warning");
    assert!(
        warning.contains("line 1: 10.10.0.1/16 (FastNetMon used 10.10.0.0/16)"),
        "{warning}"
    );
    assert!(
        warning.contains("line 2: not a prefix (FastNetMon skipped it)"),
        "{warning}"
    );
    // The same in the comment above the list (wrapped).
    assert!(
        flat(toml).contains("line 2: not a prefix (FastNetMon skipped it)"),
        "{toml}"
    );
    // The whitelist parses: kept as a file, with the IPv6 difference said.
    assert!(config.whitelist_file.is_some());
    assert!(
        flat(toml).contains("skips the IPv6 lines of its whitelist"),
        "{toml}"
    );
    // enable_ban_ipv6 = off: the IPv6 networks only report.
    let g = config
        .hostgroup
        .iter()
        .find(|g| g.name == "ipv6_no_ban")
        .expect(toml);
    assert!(g.report_only);
    assert_eq!(g.networks, vec!["2001:db8::/32".parse().unwrap()]);
}

#[test]
fn a_missing_or_unexecutable_script_and_no_networks_are_said() {
    let s = Setup::new("", "");
    std::fs::set_permissions(
        s.dir.path().join("notify.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let conf = s.conf("enable_ban = on\n");
    let path = s.dir.path().join("fastnetmon.conf");
    std::fs::write(&path, &conf).unwrap();
    let imported = import(&path, &ImportOptions::default()).unwrap();
    assert!(imported
        .warnings
        .iter()
        .any(|w| w.contains("not executable")));
    assert!(imported.warnings.iter().any(|w| w.contains("no networks")));
    // fnm refuses a configuration without networks, as said.
    let e = Config::parse(&imported.toml, &s.dir.path().join("x.toml")).unwrap_err();
    assert!(e.to_string().contains("at least one local network"), "{e}");
    // With --networks, a list elsewhere.
    let other = s.dir.path().join("other_list");
    std::fs::write(&other, "198.51.100.0/24\n").unwrap();
    let imported = import(
        &path,
        &ImportOptions {
            networks: Some(other.clone()),
            whitelist: None,
        },
    )
    .unwrap();
    let config = load_and_check(&imported.toml, s.dir.path());
    assert_eq!(config.networks_file.as_deref(), Some(other.as_path()));
    assert!(config.ban.actions.is_empty());
    assert!(imported.toml.contains("--networks"), "{}", imported.toml);
    // An unreadable FastNetMon file is an error naming it.
    let e = import(&s.dir.path().join("nope.conf"), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.conf"), "{e}");
}
