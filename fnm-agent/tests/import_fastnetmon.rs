//! `fnm-agent import-fastnetmon`: Debian's real `/etc/fastnetmon.conf` and variants covering
//! every option group (hostgroups, per-protocol thresholds, GoBGP, ExaBGP, collectors, mirror
//! capture) import into configurations `fnm-agent check-config` accepts; and, side by side,
//! Debian's FastNetMon 1.2.4 and fnm run with the configuration imported from FastNetMon's
//! detect the same sFlow flood and leave the same quiet host alone. The side-by-side test needs
//! root and the Debian package `fastnetmon`.
#![cfg(target_os = "linux")]

mod common;

use common::{
    agent::{binary, AgentProcess},
    flood::{fastnetmon_version, free_udp_port, sflow_flood, FASTNETMON},
    netns::NetnsPair,
    require_root,
};
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

/// `fnm-agent import-fastnetmon <args>`: (exit code, stdout, stderr).
fn import(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary())
        .arg("import-fastnetmon")
        .args(args)
        .output()
        .expect("run fnm-agent import-fastnetmon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `toml` (with a state_dir in `dir`) and runs `fnm-agent check-config` on it.
fn check_config(dir: &Path, toml: &str) -> (Option<i32>, String) {
    let path = dir.join("fnm-agent.toml");
    std::fs::write(
        &path,
        format!("state_dir = \"{}\"\n{toml}", dir.join("state").display()),
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run fnm-agent check-config");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn debians_fastnetmon_conf_imports_into_a_config_check_config_accepts() {
    assert!(
        Path::new("/etc/fastnetmon.conf").exists(),
        "\n\n*** /etc/fastnetmon.conf is missing: install the Debian package `fastnetmon` \
         (cargo xtask setup --test-peers). ***\n"
    );
    // The default path is Debian's.
    let (code, toml, stderr) = import(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        toml.contains("imported from /etc/fastnetmon.conf"),
        "{toml}"
    );
    assert!(
        toml.contains("networks_file = \"/etc/networks_list\""),
        "{toml}"
    );
    assert!(
        toml.contains("FastNetMon options not carried, and why:"),
        "{toml}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check_config(dir.path(), &toml);
    assert_eq!(code, Some(0), "{out}\n---\n{toml}");
    // --networks and --whitelist replace the file's lists.
    let nets = dir.path().join("nets");
    std::fs::write(&nets, "# ours\n198.51.100.0/24\n2001:db8:1::/48\n").unwrap();
    let white = dir.path().join("white");
    std::fs::write(&white, "198.51.100.7\n").unwrap();
    let (code, toml, stderr) = import(&[
        "/etc/fastnetmon.conf",
        "--networks",
        nets.to_str().unwrap(),
        "--whitelist",
        white.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(toml.contains(&format!("networks_file = \"{}\"", nets.display())));
    assert!(toml.contains(&format!("whitelist_file = \"{}\"", white.display())));
    let (code, out) = check_config(dir.path(), &toml);
    assert_eq!(code, Some(0), "{out}\n---\n{toml}");
    // A file that is not there: a clear error.
    let (code, _, stderr) = import(&["/nonexistent/fastnetmon.conf"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot read /nonexistent/fastnetmon.conf"),
        "{stderr}"
    );
}

/// A variant of FastNetMon's configuration in `dir`, with its lists and an executable script.
fn variant(dir: &Path, body: &str) -> PathBuf {
    std::fs::write(
        dir.join("networks_list"),
        "10.10.0.0/16\n10.20.0.0/24\n2001:db8::/32\n",
    )
    .unwrap();
    std::fs::write(dir.join("networks_whitelist"), "10.10.0.9/32\n").unwrap();
    let script = dir.join("notify.sh");
    std::fs::write(&script, "#!/bin/sh\ncat > /dev/null\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.join("fastnetmon.conf");
    std::fs::write(
        &conf,
        format!(
            "networks_list_path = {}\nwhite_list_path = {}\nnotify_script_path = {}\n\
             monitor_local_ip_addresses = on\nenable_ban = on\n{body}",
            dir.join("networks_list").display(),
            dir.join("networks_whitelist").display(),
            script.display()
        ),
    )
    .unwrap();
    conf
}

#[test]
fn every_option_group_imports_into_a_config_check_config_accepts() {
    let variants = [
        (
            "hostgroups and per-protocol thresholds, outgoing off",
            "process_outgoing_traffic = off\nban_for_pps = on\nthreshold_pps = 20000\n\
             ban_for_udp_pps = on\nthreshold_udp_pps = 10000\nban_for_tcp_bandwidth = on\n\
             threshold_tcp_mbps = 500\nban_for_icmp_pps = on\nthreshold_icmp_pps = 500\n\
             ban_for_flows = on\nthreshold_flows = 3500\n\
             hostgroup = web:10.20.0.0/24\nweb_enable_ban = off\nweb_ban_for_pps = on\n\
             web_threshold_pps = 90000\nweb_ban_for_udp_bandwidth = on\nweb_threshold_udp_mbps = 100\n\
             ban_time = 0\n",
            &["[[hostgroup]]", "name = \"web\"", "report_only = true", "time = \"never\""][..],
        ),
        (
            "GoBGP, sFlow and NetFlow",
            "ban_for_bandwidth = on\nthreshold_mbps = 1000\ngobgp = on\n\
             gobgp_next_hop = 192.0.2.254\ngobgp_announce_host = on\n\
             gobgp_community_host = 65001:666\ngobgp_announce_whole_subnet = on\n\
             gobgp_community_subnet = 65001:777\nsflow = on\nsflow_port = 16343\n\
             sflow_host = 127.0.0.1\nnetflow = on\nnetflow_port = 12055,12056\n\
             netflow_sampling_ratio = 10\n",
            &["backend = \"gobgp\"", "\"bgp_blackhole\"", "\"127.0.0.1:16343\""][..],
        ),
        (
            "ExaBGP and enable_ban_ipv6 off",
            "ban_for_pps = on\nthreshold_pps = 20000\nenable_ban_ipv6 = off\nexabgp = on\n\
             exabgp_command_pipe = /var/run/exabgp.cmd\nexabgp_community = [65001:666 65001:777]\n\
             exabgp_next_hop = 10.0.3.114\nexabgp_announce_host = on\n",
            &["backend = \"exabgp\"", "communities = [\"65001:666\", \"65001:777\"]", "ipv6_no_ban"][..],
        ),
        (
            "mirror capture over AF_PACKET",
            "ban_for_pps = on\nthreshold_pps = 20000\nmirror_afpacket = on\ninterfaces = lo\n\
             mirror_af_packet_custom_sampling_rate = 4\nmirror_af_packet_fanout_mode = hash\n",
            &["backend = \"pcap\"", "interfaces = [\"lo\"]"][..],
        ),
        (
            "AF_XDP",
            "ban_for_pps = on\nthreshold_pps = 20000\nmirror_afxdp = on\ninterfaces = lo\n\
             force_native_mode_xdp = off\n",
            &["[xdp]\n", "enabled = true", "mode = \"auto\""][..],
        ),
    ];
    for (what, body, wanted) in variants {
        let dir = tempfile::tempdir().unwrap();
        let conf = variant(dir.path(), body);
        let (code, toml, stderr) = import(&[conf.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{what}: {stderr}");
        for w in wanted {
            assert!(toml.contains(w), "{what}: {w:?} missing:\n{toml}");
        }
        let (code, out) = check_config(dir.path(), &toml);
        assert_eq!(code, Some(0), "{what}: {out}\n---\n{toml}");
        println!("{what}: check-config OK");
    }
}

/// Debian's FastNetMon started on `conf` (sFlow on `sflow`, host loopback); killed on drop.
struct FastNetMon {
    child: Child,
    log: PathBuf,
}

impl FastNetMon {
    fn start(dir: &Path, conf: &Path, sflow: SocketAddr) -> Self {
        let log = dir.join("fastnetmon.log");
        let out = std::fs::File::create(dir.join("fastnetmon.out")).unwrap();
        let child = Command::new(FASTNETMON)
            .arg("--configuration_file")
            .arg(conf)
            .arg("--log_file")
            .arg(&log)
            .arg("--disable_pid_logic")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start fastnetmon");
        let mut me = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        let wanted = format!("0100007F:{:04X}", sflow.port());
        loop {
            let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
            if table
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&wanted))
            {
                return me;
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("fastnetmon exited early ({status}):\n{}", me.log());
            }
            assert!(
                Instant::now() < deadline,
                "fastnetmon never bound {sflow}:\n{}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FastNetMon {
    fn drop(&mut self) {
        // Our own child, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The calls the script logged: (network namespace, ip, direction, pps, action).
fn calls(log: &Path) -> Vec<(String, String, String, u64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [ns, ip, dir, pps, action] = f.as_slice() else {
                return None;
            };
            Some((
                (*ns).to_owned(),
                (*ip).to_owned(),
                (*dir).to_owned(),
                pps.parse().unwrap_or(0),
                (*action).to_owned(),
            ))
        })
        .collect()
}

#[test]
fn fastnetmon_and_fnm_with_the_imported_config_detect_the_same_flood() {
    require_root("the FastNetMon side-by-side test");
    println!("{}", fastnetmon_version());
    let dir = tempfile::tempdir().unwrap();
    let victim = Ipv4Addr::new(10, 60, 0, 5);
    let quiet = Ipv4Addr::new(10, 60, 0, 6);
    let attacker = Ipv4Addr::new(198, 51, 100, 77);
    std::fs::write(
        dir.path().join("networks_list"),
        format!("{victim}/32\n{quiet}/32\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("networks_whitelist"), "").unwrap();
    // The script logs which network namespace called it: FastNetMon runs on the host, fnm in
    // its own namespace.
    let log = dir.path().join("calls.log");
    let script = dir.path().join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$(readlink /proc/self/ns/net) $1 $2 $3 $4\" >> {}\ncat > /dev/null\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let host_ns = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string();

    // FastNetMon's configuration: sFlow on a free loopback port, a 5000 pps threshold, bans
    // on through the script, everything that talks to the outside off.
    let port = free_udp_port();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let conf = dir.path().join("fastnetmon.conf");
    std::fs::write(
        &conf,
        format!(
            "logging_level = info\nlogging_local_syslog_logging = off\n\
             logging_remote_syslog_logging = off\ndisable_usage_report = on\nenable_ban = on\n\
             enable_ban_ipv6 = on\nprocess_incoming_traffic = on\nprocess_outgoing_traffic = on\n\
             ban_details_records_count = 20\nban_time = 60\nunban_only_if_attack_finished = on\n\
             networks_list_path = {}\nwhite_list_path = {}\ncheck_period = 1\n\
             enable_connection_tracking = off\nban_for_pps = on\nban_for_bandwidth = off\n\
             ban_for_flows = off\nthreshold_pps = 5000\nthreshold_mbps = 100000\n\
             threshold_flows = 1000000\nmirror_afpacket = off\nmirror_afxdp = off\n\
             mirror_netmap = off\npcap = off\nnetflow = off\nsflow = on\nsflow_port = {port}\n\
             sflow_host = 127.0.0.1\naverage_calculation_time = 5\nspeed_calculation_delay = 1\n\
             notify_script_path = {}\ncollect_attack_pcap_dumps = off\nredis_enabled = off\n\
             mongodb_enabled = off\nexabgp = off\ngobgp = off\ninfluxdb = off\ngraphite = off\n\
             monitor_local_ip_addresses = off\nmonitor_openvz_vps_ip_addresses = off\n\
             cli_stats_file_path = {}\ncli_stats_ipv6_file_path = {}\npid_path = {}\n\
             enable_api = off\nkafka_traffic_export = off\nprometheus = off\n",
            p("networks_list"),
            p("networks_whitelist"),
            script.display(),
            p("fastnetmon.dat"),
            p("fastnetmon_ipv6.dat"),
            p("fastnetmon.pid"),
        ),
    )
    .unwrap();

    // fnm's, imported from it.
    let (code, toml, stderr) = import(&[conf.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    println!("{toml}");
    assert!(
        toml.contains(&format!("listen = [\"127.0.0.1:{port}\"]")),
        "{toml}"
    );

    let sflow = SocketAddr::from(([127, 0, 0, 1], port));
    let fastnetmon = FastNetMon::start(dir.path(), &conf, sflow);
    // fnm in a namespace, so both listen on 127.0.0.1:<port> as configured.
    let pair = NetnsPair::new(152);
    let agent = AgentProcess::start(&pair.agent, &toml);
    let agent_ns = NetnsPair::in_ns(&pair.agent, || {
        // This thread's namespace (/proc/self is the main thread's).
        std::fs::read_link("/proc/thread-self/ns/net")
            .unwrap()
            .display()
            .to_string()
    });
    assert_ne!(agent_ns, host_ns);
    // Let FastNetMon's speed thread run a couple of ticks.
    std::thread::sleep(Duration::from_secs(2));

    // The same floods to both: 20 kpps (4x the threshold) at the victim, 2 kpps at the quiet
    // host, sampled 1 in 10.
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (target, pps) in [(victim, 20_000.0), (quiet, 2_000.0)] {
        let to = SocketAddrV4::new(target, 7777);
        senders.push(sflow_flood(sflow, attacker, to, pps, 10, stop.clone()));
        let stop2 = stop.clone();
        senders.push(NetnsPair::in_ns(&pair.agent, move || {
            sflow_flood(sflow, attacker, to, pps, 10, stop2)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let banned = |ns: &str| {
        calls(&log)
            .into_iter()
            .filter(|c| c.0 == ns && c.4 == "ban")
            .collect::<Vec<_>>()
    };
    while (banned(&host_ns).is_empty() || banned(&agent_ns).is_empty()) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // A few more seconds: the quiet host must stay quiet on both sides.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for s in senders {
        let report = s.join().unwrap();
        assert!(report.packets > 0);
    }
    let all = calls(&log);
    println!("script calls: {all:#?}");
    let fastnetmon_bans = banned(&host_ns);
    let fnm_bans = banned(&agent_ns);
    assert!(
        !fastnetmon_bans.is_empty(),
        "FastNetMon did not detect the flood; its log:\n{}",
        fastnetmon.log()
    );
    assert!(
        !fnm_bans.is_empty(),
        "fnm did not detect the flood; its log:\n{}",
        agent.log()
    );
    for (who, bans) in [("FastNetMon", &fastnetmon_bans), ("fnm", &fnm_bans)] {
        assert!(
            bans.iter()
                .all(|b| b.1 == victim.to_string() && b.2 == "incoming"),
            "{who} banned something else: {bans:?}"
        );
        assert!(
            bans.iter().all(|b| b.3 >= 5000),
            "{who} reported a rate under the threshold: {bans:?}"
        );
    }
    let a = agent.get("/api/v1/attacks").unwrap();
    assert_eq!(a.as_array().unwrap().len(), 1, "{a:#}");
    assert_eq!(a[0]["host"], victim.to_string());
}
