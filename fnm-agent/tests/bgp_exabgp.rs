//! ExaBGP backend against real daemons: fnm writes text API commands to the CLI pipe of Debian's
//! exabgp 4.2, which peers over 127.0.0.1 with a receiving gobgpd whose RIB must show the
//! blackholes with their communities and the flowspec rules, and then lose them on withdrawal.
//!
//! exabgp finds its CLI pipes as `<root>/run/<pipename>.{in,out}` (FIFOs made before it starts);
//! the test uses its own `--root` and a unique `exabgp.api.pipename`, so it never touches
//! `/run`. Needs Debian's `exabgp` and `gobgpd` packages. Runs unprivileged on 127.0.0.1.

mod bgp_support;

use bgp_support::{mkfifo, scenario, start_exabgp, wait_pipe_ready, BirdReceiver, Receiver};
use fnm_agent::actions::bgp::{BgpAnnouncer, BgpBackend, BgpConfig, BgpError};
use std::{fs, time::Duration};

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
