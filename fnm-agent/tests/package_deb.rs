//! The Debian package that `cargo xtask package` builds (`cargo xtask test` builds it before
//! the tests, the run's one release build): installed with dpkg, its systemd unit verified by
//! `systemd-analyze verify`, every file and the conffile checked, the installed agent started
//! as the unit starts it (its capability bounding set, NOTIFY_SOCKET and a watchdog) with XDP
//! in a namespace, each capability shown to be needed, then purged without a trace.
//!
//! Set `FNM_DEB=path` to test another package file.

mod common;

use common::netns::NetnsPair;
use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const UNIT: &str = "/usr/lib/systemd/system/fnm-agent.service";
const CONFFILE: &str = "/etc/fnm/fnm-agent.toml";

/// Every file the package installs (besides directories), with its mode.
const FILES: &[(&str, u32)] = &[
    ("/usr/sbin/fnm-agent", 0o755),
    (CONFFILE, 0o644),
    (UNIT, 0o644),
    ("/usr/share/man/man8/fnm-agent.8.gz", 0o644),
    ("/usr/share/bash-completion/completions/fnm-agent", 0o644),
    ("/usr/share/zsh/vendor-completions/_fnm-agent", 0o644),
    ("/usr/share/fish/vendor_completions.d/fnm-agent.fish", 0o644),
    ("/usr/share/doc/fnm-agent/copyright", 0o644),
    ("/usr/share/doc/fnm-agent/README.md", 0o644),
    ("/usr/share/doc/fnm-agent/operations.md", 0o644),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The package under test: $FNM_DEB, else the newest target/debian/fnm-agent_*.deb, which must
/// be newer than what it packs from the source tree.
fn package() -> PathBuf {
    if let Some(path) = std::env::var_os("FNM_DEB") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let newest = std::fs::read_dir(target.join("debian"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("fnm-agent_") && name.ends_with(".deb")
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    let Some(deb) = newest else {
        panic!(
            "\n\n*** no package in {}/debian: run `cargo xtask package` (`cargo xtask test` \
             does it before the tests) ***\n",
            target.display()
        );
    };
    let built = deb.metadata().unwrap().modified().unwrap();
    let ws = workspace();
    for input in [
        ws.join("fnm-agent/debian/fnm-agent.service"),
        ws.join("fnm-agent/debian/postrm"),
        ws.join("fnm-agent/debian/prerm"),
        ws.join("fnm-agent/Cargo.toml"),
        ws.join("config/fnm-agent.toml"),
    ] {
        let changed = input.metadata().unwrap().modified().unwrap();
        assert!(
            changed <= built,
            "{} is older than {}: run `cargo xtask package` again",
            deb.display(),
            input.display()
        );
    }
    deb
}

fn sh(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, text) = sh(program, args);
    assert!(ok, "`{program} {}` failed:\n{text}", args.join(" "));
    text
}

fn installed() -> bool {
    sh("dpkg-query", &["-W", "-f=${Status}", "fnm-agent"])
        .1
        .contains("install ok installed")
}

/// Purges the package when the test ends, whatever happened.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = sh("dpkg", &["--purge", "fnm-agent"]);
        }
    }
}

#[test]
fn the_package_installs_runs_as_its_unit_says_and_purges_cleanly() {
    common::require_root("the package test (dpkg -i, XDP)");
    let deb = package();
    println!("package: {}", deb.display());
    assert!(
        !installed(),
        "fnm-agent is installed on this machine: the test would remove it"
    );
    for path in ["/etc/fnm", "/var/lib/fnm", "/usr/sbin/fnm-agent"] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists and is not the package's: the test would clobber it"
        );
    }
    // What the package says about itself.
    let info = must("dpkg-deb", &["--info", deb.to_str().unwrap()]);
    for field in ["Package: fnm-agent", "Section: net", "Depends:", "libc6"] {
        assert!(info.contains(field), "{field}:\n{info}");
    }
    println!("{info}");

    let _purge = Purge;
    let started = Instant::now();
    must("dpkg", &["--install", deb.to_str().unwrap()]);
    println!("installed in {:.1}s", started.elapsed().as_secs_f64());

    // Every file, at its place with its mode, and nothing else.
    let listed = must("dpkg", &["--listfiles", "fnm-agent"]);
    let listed_files: Vec<&str> = listed.lines().filter(|l| Path::new(l).is_file()).collect();
    for (path, mode) in FILES {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{path}");
        assert!(listed_files.contains(path), "{path} not in dpkg -L");
    }
    for file in &listed_files {
        assert!(
            FILES.iter().any(|(p, _)| p == file),
            "unexpected file in the package: {file}"
        );
    }

    // The conffile: the shipped default config, registered as a conffile.
    assert_eq!(
        std::fs::read_to_string(CONFFILE).unwrap(),
        std::fs::read_to_string(workspace().join("config/fnm-agent.toml")).unwrap()
    );
    let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", "fnm-agent"]);
    assert!(conffiles.contains(CONFFILE), "{conffiles}");
    assert!(
        must("/usr/sbin/fnm-agent", &["--version"]).starts_with("fnm-agent "),
        "--version"
    );

    // The man page renders; the completions name the subcommands and load in bash.
    let man = Command::new("man")
        .args(["-l", "/usr/share/man/man8/fnm-agent.8.gz"])
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let man_text = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.status.success(),
        "{}",
        String::from_utf8_lossy(&man.stderr)
    );
    for needle in ["fnm-agent", "check-config", "print-default-config"] {
        assert!(man_text.contains(needle), "man page lacks {needle}");
    }
    let bash = must(
        "bash",
        &[
            "-c",
            ". /usr/share/bash-completion/completions/fnm-agent && complete -p fnm-agent",
        ],
    );
    assert!(bash.contains("fnm-agent"), "{bash}");
    for file in [
        "/usr/share/zsh/vendor-completions/_fnm-agent",
        "/usr/share/fish/vendor_completions.d/fnm-agent.fish",
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains("check-config"), "{file}");
    }

    // The unit: what systemd would say of it, and what it asks for.
    let (ok, verify) = sh("systemd-analyze", &["verify", UNIT]);
    println!("systemd-analyze verify: {}", verify.trim());
    assert!(ok, "systemd-analyze verify failed:\n{verify}");
    let about_us: Vec<&str> = verify.lines().filter(|l| l.contains("fnm-agent")).collect();
    assert!(about_us.is_empty(), "{about_us:?}");
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/sbin/fnm-agent run --config /etc/fnm/fnm-agent.toml",
        "ExecReload=/usr/sbin/fnm-agent reload --config /etc/fnm/fnm-agent.toml",
        "Restart=on-failure",
        "WatchdogSec=",
        "StateDirectory=fnm",
        "NoNewPrivileges=yes",
        "ProtectSystem=",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "unit lacks {line}"
        );
    }
    let (_, security) = sh(
        "systemd-analyze",
        &["security", "--offline=yes", "--no-pager", UNIT],
    );
    let exposure: f64 = security
        .lines()
        .filter(|l| l.contains("Overall exposure level"))
        .find_map(|l| l.split("fnm-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    println!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= 3.0,
        "the unit's exposure rose to {exposure}:\n{security}"
    );
    let caps = bounding_set(&unit);
    println!("CapabilityBoundingSet: {}", caps.join(" "));

    // The installed agent, started as the unit starts it.
    installed_agent_runs_with(&caps);

    // A changed conffile survives a reinstall and a remove; a purge takes it and the state.
    let mut edited = std::fs::read_to_string(CONFFILE).unwrap();
    edited.push_str("\n# edited by the operator\n");
    std::fs::write(CONFFILE, &edited).unwrap();
    must(
        "dpkg",
        &["--force-confold", "--install", deb.to_str().unwrap()],
    );
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), edited);
    std::fs::create_dir_all("/var/lib/fnm").unwrap();
    std::fs::write("/var/lib/fnm/bans.json", "[]").unwrap();
    must("dpkg", &["--remove", "fnm-agent"]);
    assert!(!Path::new("/usr/sbin/fnm-agent").exists());
    assert!(!Path::new(UNIT).exists());
    assert_eq!(
        std::fs::read_to_string(CONFFILE).unwrap(),
        edited,
        "remove keeps the conffile"
    );
    must("dpkg", &["--purge", "fnm-agent"]);
    for (path, _) in FILES {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
    for dir in ["/etc/fnm", "/var/lib/fnm", "/usr/share/doc/fnm-agent"] {
        assert!(!Path::new(dir).exists(), "{dir} left after purge");
    }
    let (known, _) = sh("dpkg-query", &["-W", "fnm-agent"]);
    assert!(!known, "dpkg still knows fnm-agent after purge");
}

/// The capabilities of `CapabilityBoundingSet=`, lower case without `CAP_` (setpriv's names).
fn bounding_set(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// What the agent told systemd, read from a NOTIFY_SOCKET the test owns.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self { socket, path }
    }

    /// Waits for a message holding `what` (e.g. `READY=1`).
    fn wait_for(&self, what: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]);
                if message.lines().any(|l| l == what) {
                    return true;
                }
            }
        }
        false
    }
}

/// The installed agent under `caps` (as the unit's bounding set leaves root), with XDP on a veth
/// in a namespace: READY=1, watchdog pings, the API, XDP attached, STOPPING=1 on SIGTERM; and a
/// libpcap capture with the API on port 80 the same way. Then each capability is shown to be
/// needed: without it, one of the two does not start.
fn installed_agent_runs_with(caps: &[String]) {
    let pair = NetnsPair::new(135);
    let dir = tempfile::tempdir().unwrap();
    // A bpffs already mounted, as systemd mounts /sys/fs/bpf at boot: the unit's capabilities
    // do not allow mounting one (a host without systemd has none at /sys/fs/bpf).
    let pins = common::bpffs::BpffsDir::mount("deb-135");
    let pin = pins.path().join("fnm");
    let state = dir.path().join("state");
    let xdp = dir.path().join("xdp.toml");
    std::fs::write(
        &xdp,
        format!(
            "state_dir = \"{}\"\nnetworks = [\"10.135.0.0/24\"]\n\
             [xdp]\ninterfaces = [\"{}\"]\npin_path = \"{pin}\"\n[sflow]\nlisten = []\n\
             [netflow]\nlisten = []\n",
            state.display(),
            pair.veth_agent,
            pin = pin.display(),
        ),
    )
    .unwrap();
    // Raw sockets (libpcap) and a port below 1024.
    let pcap = dir.path().join("pcap.toml");
    std::fs::write(
        &pcap,
        format!(
            "state_dir = \"{}\"\nnetworks = [\"10.135.0.0/24\"]\n\
             [capture]\nbackend = \"pcap\"\ninterfaces = [\"{}\"]\n[sflow]\nlisten = []\n\
             [netflow]\nlisten = []\n[ban]\nactions = [\"webhook\"]\nmanual_actions = [\"webhook\"]\n\
             [webhook]\nurl = \"http://127.0.0.1:9/\"\n[api]\nlisten = \"127.0.0.1:80\"\n",
            state.display(),
            pair.veth_agent
        ),
    )
    .unwrap();
    let mut started = 0;
    let mut start = |config: &Path, caps: &[String]| {
        started += 1;
        let notify = NotifySocket::new(dir.path(), &format!("notify{started}.sock"));
        let log = dir.path().join(format!("agent{started}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let bounding = format!(
            "-all,{}",
            caps.iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        // nsenter, not `ip netns exec`: only the network namespace changes, and the agent sees
        // the bpffs mounted above (ip netns exec remounts /sys).
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", pair.agent))
            .arg("setpriv")
            .arg(format!("--bounding-set={bounding}"))
            .args([
                "--inh-caps=-all",
                "--no-new-privs",
                "/usr/sbin/fnm-agent",
                "run",
                "--config",
            ])
            .arg(config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", "1000000")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        (child, notify, log)
    };
    let read = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();

    for (config, api) in [(&xdp, "127.0.0.1:9210"), (&pcap, "127.0.0.1:80")] {
        let (mut child, notify, log) = start(config, caps);
        let ready = notify.wait_for("READY=1", Duration::from_secs(30));
        assert!(ready, "no READY=1 from the agent:\n{}", read(&log));
        assert!(
            notify.wait_for("WATCHDOG=1", Duration::from_secs(3)),
            "no watchdog ping within 3s (WATCHDOG_USEC = 1s):\n{}",
            read(&log)
        );
        let addr: std::net::SocketAddr = api.parse().unwrap();
        let status = NetnsPair::in_ns(&pair.agent, move || {
            fnm_agent::client::request(addr, "GET", "/api/v1/status", None)
                .map_err(|e| e.to_string())
        });
        assert!(status.is_ok(), "{status:?}");
        if config == &xdp {
            let link = must(
                "ip",
                &["-n", &pair.agent, "link", "show", "dev", &pair.veth_agent],
            );
            assert!(link.contains("xdp"), "XDP not attached:\n{link}");
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(
            notify.wait_for("STOPPING=1", Duration::from_secs(10)),
            "no STOPPING=1:\n{}",
            read(&log)
        );
        let exit = child.wait().unwrap();
        assert!(exit.success(), "{exit}:\n{}", read(&log));
        let text = read(&log);
        assert!(!text.contains("not pinging"), "{text}");
        println!("installed agent under the unit's capabilities:\n{text}");
    }

    // Each capability is needed: without it, the agent stops at start with a clear error.
    for (needed, config) in [
        ("bpf", &xdp),
        ("perfmon", &xdp),
        ("net_admin", &xdp),
        ("net_raw", &pcap),
        ("net_bind_service", &pcap),
    ] {
        assert!(caps.iter().any(|c| c == needed), "{needed} not in the unit");
        let fewer: Vec<String> = caps.iter().filter(|c| *c != needed).cloned().collect();
        let (mut child, _notify, log) = start(config, &fewer);
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the agent ran without CAP_{}:\n{}",
                    needed.to_uppercase(),
                    read(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = read(&log);
        // The error line (a verifier refusal is followed by the verifier's log).
        let error = text
            .lines()
            .find(|l| l.starts_with("fnm-agent: "))
            .unwrap_or_else(|| panic!("no error line:\n{text}"));
        println!("without CAP_{}: {exit}: {error}", needed.to_uppercase());
        assert!(!exit.success());
    }
    assert_eq!(
        caps.len(),
        5,
        "a capability no test shows to be needed: {caps:?}"
    );
    let _ = std::fs::remove_dir_all(&pin);
}
