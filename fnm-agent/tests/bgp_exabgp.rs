//! ExaBGP backend against real daemons: fnm writes text API commands to the CLI pipe of Debian's
//! exabgp 4.2, which peers over 127.0.0.1 with a receiving gobgpd whose RIB must show the
//! blackholes with their communities and the flowspec rules, and then lose them on withdrawal.
//!
//! exabgp finds its CLI pipes as `<root>/run/<pipename>.{in,out}` (FIFOs made before it starts);
//! the test uses its own `--root` and a unique `exabgp.api.pipename`, so it never touches
//! `/run`. Needs Debian's `exabgp` and `gobgpd` packages. Runs unprivileged on 127.0.0.1.

mod bgp_support;

use bgp_support::{
    require_binary, scenario, wait_for, BirdReceiver, Daemon, Receiver, RECEIVER_AS, SENDER_AS,
};
use fnm_agent::actions::bgp::{BgpAnnouncer, BgpBackend, BgpConfig, BgpError};
use std::{
    ffi::CString,
    fs::{self, OpenOptions},
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    path::Path,
    process::Command,
    time::Duration,
};

fn mkfifo(path: &Path) {
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
fn start_exabgp(dir: &Path, receiver_port: u16) -> (Daemon, std::path::PathBuf) {
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
fn wait_pipe_ready(exabgp: &mut Daemon, pipe: &Path) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exabgp_announces_and_withdraws_blackholes_and_flowspec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = Receiver::start(dir.path());
    let (mut exabgp, pipe) = start_exabgp(dir.path(), receiver.bgp_port);
    let exabgp_log = dir.path().join("exabgp.log");
    receiver.wait_established(|| fs::read_to_string(&exabgp_log).unwrap_or_default());
    exabgp.assert_running();
    wait_pipe_ready(&mut exabgp, &pipe);

    let config = BgpConfig {
        backend: BgpBackend::Exabgp,
        exabgp_pipe: pipe.clone(),
        communities: scenario::communities(),
        timeout: Duration::from_secs(5),
        ..BgpConfig::default()
    };
    let announcer = BgpAnnouncer::from_config(&config).expect("exabgp announcer");
    scenario::announce_and_withdraw(&announcer, &receiver).await;
    exabgp.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exabgp_announcements_reach_bird2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bird = BirdReceiver::start(dir.path());
    let (mut exabgp, pipe) = start_exabgp(dir.path(), bird.bgp_port);
    let exabgp_log = dir.path().join("exabgp.log");
    bird.wait_established(|| fs::read_to_string(&exabgp_log).unwrap_or_default());
    wait_pipe_ready(&mut exabgp, &pipe);
    let config = BgpConfig {
        backend: BgpBackend::Exabgp,
        exabgp_pipe: pipe,
        communities: scenario::communities(),
        ..BgpConfig::default()
    };
    let announcer = BgpAnnouncer::from_config(&config).expect("exabgp announcer");
    scenario::announce_and_withdraw_to_bird(&announcer, &bird).await;
    exabgp.assert_running();
}

#[tokio::test]
async fn exabgp_announcement_fails_fast_when_exabgp_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipe = dir.path().join("exabgp.in");
    mkfifo(&pipe);
    let config = BgpConfig {
        backend: BgpBackend::Exabgp,
        exabgp_pipe: pipe,
        timeout: Duration::from_secs(5),
        ..BgpConfig::default()
    };
    let announcer = BgpAnnouncer::from_config(&config).expect("exabgp announcer");
    let started = std::time::Instant::now();
    let result = announcer.announce_flowspec(&scenario::dns_rule()).await;
    assert!(
        matches!(result, Err(BgpError::ExabgpPipe { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}
