//! Real BGP daemons for the BGP integration tests: a receiving gobgpd on 127.0.0.1 with free
//! ports, process guards that kill what they started, and bounded polling of the receiver's RIB.
//!
//! Needs Debian's `gobgpd` (gobgpd and the gobgp CLI) and, for the ExaBGP test, `exabgp`. A
//! missing binary fails the test with the package to install.

#![allow(dead_code)]

use std::{
    ffi::CString,
    fs::{self, OpenOptions},
    net::TcpListener,
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Longest wait for a session to come up or a route to arrive or leave.
pub const WAIT: Duration = Duration::from_secs(30);

/// AS of the receiving gobgpd.
pub const RECEIVER_AS: u32 = 65002;
/// AS of the announcing speaker (gobgpd or exabgp).
pub const SENDER_AS: u32 = 65001;

/// Absolute path of a daemon binary; panics naming the Debian package when it is missing.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    let path_var = std::env::var("PATH").unwrap_or_default();
    let dirs = path_var
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` not found: this test needs the Debian package `{package}` (apt-get install {package})");
}

/// A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range
/// (32768 and up): a port from that range may still be held by a connection in TIME_WAIT from
/// an earlier test, which daemons that bind without SO_REUSEADDR (BIRD) then cannot take.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() * 131) % 12_000;
    for _ in 0..12_000 {
        let port = 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free TCP port between 20000 and 32000 on 127.0.0.1")
}

/// A daemon started in its own process group; dropping it kills the group and reaps the child.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command` with stdout and stderr in `log`, as the leader of a new process group.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Self {
        let out = fs::File::create(log).expect("create daemon log");
        let err = out.try_clone().expect("clone log handle");
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    /// Panics with the log when the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// The daemon's output so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: signals only the process group this guard created (pgid = child pid).
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                // Children of the daemon (exabgp's helpers) may outlive it briefly.
                // SAFETY: as above.
                unsafe { libc::kill(-group, libc::SIGKILL) };
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 200 ms until it returns `Some`, for at most [`WAIT`]; panics with `what`
/// and the last diagnostic text otherwise.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last state:\n{last}")
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The receiving gobgpd: listens for BGP on 127.0.0.1:`bgp_port`, accepts (passively) one
/// neighbour 127.0.0.1 of AS [`SENDER_AS`] with IPv4/IPv6 unicast and flowspec, and serves its
/// API on 127.0.0.1:`api_port` for the gobgp CLI.
pub struct Receiver {
    /// The daemon guard.
    pub daemon: Daemon,
    /// gRPC API port (gobgp CLI `-p`).
    pub api_port: u16,
    /// BGP port it listens on.
    pub bgp_port: u16,
}

/// The four address families every test session negotiates, as gobgpd config text.
pub const GOBGP_FAMILIES: &str = r#"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-flowspec"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-flowspec"
"#;

impl Receiver {
    /// Starts the receiver in `dir`.
    pub fn start(dir: &Path) -> Self {
        let gobgpd = require_binary("gobgpd", "gobgpd");
        require_binary("gobgp", "gobgpd");
        let api_port = free_port();
        let bgp_port = free_port();
        let config = format!(
            r#"[global.config]
  as = {RECEIVER_AS}
  router-id = "10.255.0.2"
  port = {bgp_port}
  local-address-list = ["127.0.0.1"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.1"
    peer-as = {SENDER_AS}
  [neighbors.transport.config]
    passive-mode = true
{GOBGP_FAMILIES}"#
        );
        let path = dir.join("receiver.toml");
        fs::write(&path, config).expect("write receiver config");
        let mut command = Command::new(gobgpd);
        command
            .arg("-f")
            .arg(&path)
            .arg(format!("--api-hosts=127.0.0.1:{api_port}"))
            .arg("--pprof-disable")
            .arg("--log-plain");
        let daemon = Daemon::spawn("receiving gobgpd", command, &dir.join("receiver.log"));
        let mut receiver = Self {
            daemon,
            api_port,
            bgp_port,
        };
        wait_for("the receiving gobgpd's API", || {
            receiver.daemon.assert_running();
            receiver.cli(&["global"])
        });
        receiver
    }

    /// Runs the gobgp CLI against this receiver; `Err` carries its stderr.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        gobgp_cli(self.api_port, args)
    }

    /// Waits until the session with 127.0.0.1 is established.
    pub fn wait_established(&mut self, sender_log: impl Fn() -> String) {
        wait_for("the BGP session to be established", || {
            self.daemon.assert_running();
            let text = self.cli(&["neighbor"])?;
            if text.contains("Establ") {
                Ok(())
            } else {
                Err(format!(
                    "{text}\nreceiver log:\n{}\nsender log:\n{}",
                    self.daemon.log_text(),
                    sender_log()
                ))
            }
        })
    }

    /// The RIB line of `family` ("ipv4", "ipv6", "ipv4-flowspec", "ipv6-flowspec") holding
    /// `needle`, if any.
    pub fn rib_line(&self, family: &str, needle: &str) -> Result<Option<String>, String> {
        let text = self.cli(&["global", "rib", "-a", family])?;
        Ok(text
            .lines()
            .find(|line| line.contains(needle))
            .map(str::to_owned))
    }

    /// Waits until a RIB line of `family` holds `needle` and returns it.
    pub fn wait_route(&self, family: &str, needle: &str) -> String {
        wait_for(
            &format!("{needle} in the receiver's {family} RIB"),
            || match self.rib_line(family, needle)? {
                Some(line) => Ok(line),
                None => Err(self.cli(&["global", "rib", "-a", family])?),
            },
        )
    }

    /// Waits until no RIB line of `family` holds `needle`.
    pub fn wait_gone(&self, family: &str, needle: &str) {
        wait_for(
            &format!("{needle} to leave the receiver's {family} RIB"),
            || match self.rib_line(family, needle)? {
                Some(line) => Err(line),
                None => Ok(()),
            },
        )
    }
}

/// A receiving BIRD 2: listens for BGP on 127.0.0.1:`bgp_port` (passive), accepts neighbour
/// 127.0.0.1 of AS [`SENDER_AS`] with ipv4/ipv6 (recursive next hops, so unreachable blackhole
/// next hops are kept) and flow4/flow6 into tables `flowtab4`/`flowtab6`; queried with birdc
/// on a control socket in the test's directory.
pub struct BirdReceiver {
    /// The daemon guard.
    pub daemon: Daemon,
    /// BGP port it listens on.
    pub bgp_port: u16,
    socket: PathBuf,
}

impl BirdReceiver {
    /// Starts BIRD in `dir`, importing everything.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "", "all", "all")
    }

    /// Starts BIRD in `dir` with `definitions` (filters, static routes) and the IPv4 and IPv6
    /// unicast imports of the session (`all`, `filter NAME`).
    pub fn start_with(dir: &Path, definitions: &str, import4: &str, import6: &str) -> Self {
        let bird = require_binary("bird", "bird2");
        require_binary("birdc", "bird2");
        let bgp_port = free_port();
        let config = format!(
            r#"router id 10.255.0.4;
log stderr all;
ipv4 table master4;
ipv6 table master6;
flow4 table flowtab4;
flow6 table flowtab6;
protocol device {{}}
{definitions}
protocol bgp sender {{
  local 127.0.0.1 port {bgp_port} as {RECEIVER_AS};
  neighbor 127.0.0.1 as {SENDER_AS};
  passive on;
  multihop;
  ipv4 {{ import {import4}; export none; gateway recursive; }};
  ipv6 {{ import {import6}; export none; gateway recursive; }};
  flow4 {{ table flowtab4; import all; export none; }};
  flow6 {{ table flowtab6; import all; export none; }};
}}
"#
        );
        let config_path = dir.join("bird.conf");
        fs::write(&config_path, config).expect("write bird config");
        let socket = dir.join("bird.ctl");
        let mut command = Command::new(bird);
        command
            .arg("-f")
            .arg("-c")
            .arg(&config_path)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"));
        let daemon = Daemon::spawn("bird", command, &dir.join("bird.log"));
        let mut receiver = Self {
            daemon,
            bgp_port,
            socket,
        };
        wait_for("bird's control socket", || {
            receiver.daemon.assert_running();
            receiver.birdc(&["show", "status"])
        });
        receiver
    }

    /// Runs `birdc -s <socket> <args>`; `Err` carries its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(require_binary("birdc", "bird2"))
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| format!("run birdc: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Waits until the BGP session is established.
    pub fn wait_established(&mut self, sender_log: impl Fn() -> String) {
        wait_for("bird's BGP session to be established", || {
            self.daemon.assert_running();
            let text = self.birdc(&["show", "protocols", "sender"])?;
            if text.contains("Established") {
                Ok(())
            } else {
                Err(format!(
                    "{text}\nbird log:\n{}\nsender log:\n{}",
                    self.daemon.log_text(),
                    sender_log()
                ))
            }
        })
    }

    /// `show route all table <table>`.
    pub fn table(&self, table: &str) -> Result<String, String> {
        self.birdc(&["show", "route", "all", "table", table])
    }

    /// Waits until `table` shows every one of `parts` and returns the table text.
    pub fn wait_table_has(&self, table: &str, parts: &[&str]) -> String {
        wait_for(&format!("{parts:?} in bird's table {table}"), || {
            let text = self.table(table)?;
            if parts.iter().all(|part| text.contains(part)) {
                Ok(text)
            } else {
                Err(text)
            }
        })
    }

    /// Waits until `table` no longer shows `needle`.
    pub fn wait_table_lacks(&self, table: &str, needle: &str) {
        wait_for(&format!("{needle} to leave bird's table {table}"), || {
            let text = self.table(table)?;
            if text.contains(needle) {
                Err(text)
            } else {
                Ok(())
            }
        })
    }
}

/// Runs `gobgp -u 127.0.0.1 -p <api_port> <args>`.
pub fn gobgp_cli(api_port: u16, args: &[&str]) -> Result<String, String> {
    let output = Command::new(require_binary("gobgp", "gobgpd"))
        .args(["-u", "127.0.0.1", "-p", &api_port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("run gobgp: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "gobgp {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The blackholes and flowspec rules every backend test announces, and what the receiving gobgpd
/// must show for each.
pub mod scenario {
    use super::{BirdReceiver, Receiver};
    use fnm_agent::actions::bgp::{
        BgpAnnouncer, Community, FlowspecAction, FlowspecRule, FragmentMatch, TcpFlagsMatch,
        ValueRange,
    };
    use fnm_agent::prefix::Prefix;

    /// Communities configured on blackholes: RFC 7999 plus a large one.
    pub fn communities() -> Vec<Community> {
        vec![
            Community::BLACKHOLE,
            Community::Large {
                global: 64512,
                local1: 1,
                local2: 2,
            },
        ]
    }

    fn prefix(text: &str) -> Prefix {
        text.parse().expect("prefix")
    }

    /// A DNS amplification fingerprint towards an IPv4 victim, dropped.
    pub fn dns_rule() -> FlowspecRule {
        let mut rule =
            FlowspecRule::to_destination(prefix("198.51.100.7/32"), FlowspecAction::Discard);
        rule.source = Some(prefix("203.0.113.0/24"));
        rule.protocol = Some(17);
        rule.source_ports = vec![
            ValueRange::single(53),
            ValueRange {
                first: 1000,
                last: 2000,
            },
        ];
        rule.packet_length = Some(ValueRange {
            first: 512,
            last: 1500,
        });
        rule.fragment = Some(FragmentMatch::IsFragment);
        rule
    }

    /// What gobgp shows for [`dns_rule`].
    pub const DNS_RULE_NLRI: &str = "[destination: 198.51.100.7/32][source: 203.0.113.0/24]\
        [protocol: ==udp][source-port: ==53 >=1000&<=2000][packet-length: >=512&<=1500]\
        [fragment: is-fragment]";

    /// A SYN flood fingerprint towards an IPv6 victim, rate-limited.
    pub fn syn_rule_v6() -> FlowspecRule {
        let mut rule = FlowspecRule::to_destination(
            prefix("2001:db8::7/128"),
            FlowspecAction::RateLimit {
                bytes_per_second: 125_000,
            },
        );
        rule.protocol = Some(6);
        rule.destination_ports = vec![ValueRange::single(80)];
        rule.tcp_flags = Some(TcpFlagsMatch {
            set: 0x02,
            clear: 0x10,
        });
        rule
    }

    /// What gobgp shows for [`syn_rule_v6`].
    pub const SYN_RULE_V6_NLRI: &str =
        "[destination: 2001:db8::7/128/0][protocol: ==tcp][destination-port: ==80][tcp-flags: =S&!A]";

    fn assert_has(line: &str, parts: &[&str]) {
        for part in parts {
            assert!(
                line.contains(part),
                "expected {part:?} in RIB line {line:?}"
            );
        }
    }

    /// What bird shows for [`dns_rule`].
    pub const DNS_RULE_BIRD: &str = "flow4 { dst 198.51.100.7/32; src 203.0.113.0/24; proto 17; \
        sport 53,1000..2000; length 512..1500; fragment !!is_fragment; }";

    /// What bird shows for [`syn_rule_v6`].
    pub const SYN_RULE_V6_BIRD: &str = "flow6 { dst 2001:db8::7/128; next header 6; dport 80; \
        tcp flags 0x2/0x2 && 0x0/0x10; }";

    /// The same announcements checked in a receiving BIRD 2, an independent BGP implementation.
    pub async fn announce_and_withdraw_to_bird(announcer: &BgpAnnouncer, bird: &BirdReceiver) {
        let v4 = prefix("198.51.100.7/32");
        let v6 = prefix("2001:db8::7/128");
        announcer
            .announce_blackhole(v4)
            .await
            .expect("announce IPv4 blackhole");
        announcer
            .announce_blackhole(v6)
            .await
            .expect("announce IPv6 blackhole");
        announcer
            .announce_flowspec(&dns_rule())
            .await
            .expect("announce IPv4 flowspec");
        announcer
            .announce_flowspec(&syn_rule_v6())
            .await
            .expect("announce IPv6 flowspec");
        bird.wait_table_has(
            "master4",
            &[
                "198.51.100.7/32",
                "BGP.origin: IGP",
                "BGP.next_hop: 192.0.2.254",
                "BGP.community: (65535,666)",
                "BGP.large_community: (64512, 1, 2)",
            ],
        );
        bird.wait_table_has(
            "master6",
            &[
                "2001:db8::7/128",
                "BGP.next_hop: 100::1",
                "BGP.community: (65535,666)",
            ],
        );
        // Traffic-rate extended community (type 0x80, subtype 0x06, AS 0): rate 0 = discard.
        bird.wait_table_has(
            "flowtab4",
            &[
                DNS_RULE_BIRD,
                "BGP.ext_community: (generic, 0x80060000, 0x0)",
            ],
        );
        // 0x47f42400 is 125000.0 as an IEEE 754 single.
        bird.wait_table_has(
            "flowtab6",
            &[
                SYN_RULE_V6_BIRD,
                "BGP.ext_community: (generic, 0x80060000, 0x47f42400)",
            ],
        );
        announcer
            .withdraw_blackhole(v4)
            .await
            .expect("withdraw IPv4 blackhole");
        announcer
            .withdraw_blackhole(v6)
            .await
            .expect("withdraw IPv6 blackhole");
        announcer
            .withdraw_flowspec(&dns_rule())
            .await
            .expect("withdraw IPv4 flowspec");
        announcer
            .withdraw_flowspec(&syn_rule_v6())
            .await
            .expect("withdraw IPv6 flowspec");
        bird.wait_table_lacks("master4", "198.51.100.7/32");
        bird.wait_table_lacks("master6", "2001:db8::7/128");
        bird.wait_table_lacks("flowtab4", "198.51.100.7/32");
        bird.wait_table_lacks("flowtab6", "2001:db8::7/128");
    }

    /// Announces two blackholes and two flowspec rules, checks the receiver's RIB, withdraws them
    /// one by one and checks each leaves (and only it).
    pub async fn announce_and_withdraw(announcer: &BgpAnnouncer, receiver: &Receiver) {
        let v4 = prefix("198.51.100.7/32");
        let v6 = prefix("2001:db8::7/128");
        announcer
            .announce_blackhole(v4)
            .await
            .expect("announce IPv4 blackhole");
        announcer
            .announce_blackhole(v6)
            .await
            .expect("announce IPv6 blackhole");
        announcer
            .announce_flowspec(&dns_rule())
            .await
            .expect("announce IPv4 flowspec");
        announcer
            .announce_flowspec(&syn_rule_v6())
            .await
            .expect("announce IPv6 flowspec");

        let line = receiver.wait_route("ipv4", "198.51.100.7/32");
        assert_has(
            &line,
            &[
                "192.0.2.254",
                "{Origin: i}",
                "{Communities: blackhole}",
                "{LargeCommunity: [ 64512:1:2]}",
            ],
        );
        let line = receiver.wait_route("ipv6", "2001:db8::7/128");
        assert_has(&line, &["100::1", "{Communities: blackhole}"]);
        let line = receiver.wait_route("ipv4-flowspec", DNS_RULE_NLRI);
        assert_has(&line, &["{Extcomms: [discard]}"]);
        let line = receiver.wait_route("ipv6-flowspec", SYN_RULE_V6_NLRI);
        assert_has(&line, &["{Extcomms: [rate: 125000.000000]}"]);

        announcer
            .withdraw_blackhole(v4)
            .await
            .expect("withdraw IPv4 blackhole");
        receiver.wait_gone("ipv4", "198.51.100.7/32");
        assert!(receiver
            .rib_line("ipv6", "2001:db8::7/128")
            .expect("rib")
            .is_some());
        announcer
            .withdraw_blackhole(v6)
            .await
            .expect("withdraw IPv6 blackhole");
        receiver.wait_gone("ipv6", "2001:db8::7/128");

        announcer
            .withdraw_flowspec(&dns_rule())
            .await
            .expect("withdraw IPv4 flowspec");
        receiver.wait_gone("ipv4-flowspec", "[destination: 198.51.100.7/32]");
        assert!(receiver
            .rib_line("ipv6-flowspec", SYN_RULE_V6_NLRI)
            .expect("rib")
            .is_some());
        announcer
            .withdraw_flowspec(&syn_rule_v6())
            .await
            .expect("withdraw IPv6 flowspec");
        receiver.wait_gone("ipv6-flowspec", "[destination: 2001:db8::7/128");

        // Withdrawing again (e.g. an unban replayed after a restart) is harmless, and
        // announcing again after a withdrawal works.
        announcer
            .withdraw_blackhole(v4)
            .await
            .expect("repeated withdrawal");
        announcer
            .withdraw_flowspec(&dns_rule())
            .await
            .expect("repeated flowspec withdrawal");
        announcer
            .announce_blackhole(v4)
            .await
            .expect("announce again");
        announcer
            .announce_blackhole(v4)
            .await
            .expect("announce twice");
        receiver.wait_route("ipv4", "198.51.100.7/32");
        announcer
            .withdraw_blackhole(v4)
            .await
            .expect("withdraw again");
        receiver.wait_gone("ipv4", "198.51.100.7/32");
    }
}

/// Starts the speaker gobgpd that fnm talks to: no BGP listener, one active neighbour
/// 127.0.0.1:`receiver_port`.
pub fn start_gobgp_speaker(dir: &std::path::Path, receiver_port: u16, api_port: u16) -> Daemon {
    let config = format!(
        r#"[global.config]
  as = {SENDER_AS}
  router-id = "10.255.0.1"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.1"
    peer-as = {RECEIVER_AS}
  [neighbors.transport.config]
    remote-port = {receiver_port}
    local-address = "127.0.0.1"
  [neighbors.timers.config]
    connect-retry = 1
{GOBGP_FAMILIES}"#
    );
    let path = dir.join("speaker.toml");
    fs::write(&path, config).expect("write speaker config");
    let mut command = Command::new(require_binary("gobgpd", "gobgpd"));
    command
        .arg("-f")
        .arg(&path)
        .arg(format!("--api-hosts=127.0.0.1:{api_port}"))
        .arg("--pprof-disable")
        .arg("--log-plain");
    Daemon::spawn("speaker gobgpd", command, &dir.join("speaker.log"))
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: `c_path` is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Starts exabgp with one neighbour, the receiver at 127.0.0.1:`receiver_port`; returns the
/// daemon and the command pipe fnm writes to.
pub fn start_exabgp(dir: &Path, receiver_port: u16) -> (Daemon, std::path::PathBuf) {
    let exabgp = require_binary("exabgp", "exabgp");
    let root = dir.join("root");
    fs::create_dir_all(root.join("run")).expect("exabgp run dir");
    let pipename = format!("fnm-test-{}-{receiver_port}", std::process::id());
    let pipe_in = root.join("run").join(format!("{pipename}.in"));
    mkfifo(&pipe_in);
    mkfifo(&root.join("run").join(format!("{pipename}.out")));
    let config = format!(
        "neighbor 127.0.0.1 {{
  router-id 10.255.0.3;
  local-address 127.0.0.1;
  local-as {SENDER_AS};
  peer-as {RECEIVER_AS};
  connect {receiver_port};
  family {{
    ipv4 unicast;
    ipv6 unicast;
    ipv4 flow;
    ipv6 flow;
  }}
}}
"
    );
    let config_path = dir.join("exabgp.conf");
    fs::write(&config_path, config).expect("write exabgp config");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let mut command = Command::new(exabgp);
    command
        .arg("--root")
        .arg(&root)
        .arg(&config_path)
        .env("exabgp.api.cli", "true")
        .env("exabgp.api.pipename", &pipename)
        .env("exabgp.daemon.drop", "false")
        .env("exabgp.daemon.user", user)
        .env("exabgp.daemon.daemonize", "false")
        .env("exabgp.tcp.bind", "")
        .env("exabgp.log.destination", "stdout");
    (
        Daemon::spawn("exabgp", command, &dir.join("exabgp.log")),
        pipe_in,
    )
}

/// Waits until exabgp's CLI helper has opened the command pipe for reading; until then a
/// non-blocking open for writing fails with ENXIO (what fnm reports while exabgp is down).
pub fn wait_pipe_ready(exabgp: &mut Daemon, pipe: &Path) {
    wait_for("exabgp's CLI helper to open the command pipe", || {
        exabgp.assert_running();
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(pipe)
            .map(drop)
            .map_err(|e| format!("{e}\nexabgp log:\n{}", exabgp.log_text()))
    });
}
