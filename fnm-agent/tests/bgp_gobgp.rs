//! GoBGP backend against real daemons: fnm drives a gobgpd (the "speaker") through its gRPC API;
//! the speaker peers over 127.0.0.1 with a second gobgpd (the "receiver"), whose RIB must show the
//! blackholes with their communities and the flowspec rules, and then lose them on withdrawal.
//!
//! Needs Debian's `gobgpd` package. Runs unprivileged on 127.0.0.1 with free ports.

mod bgp_support;

use bgp_support::{free_port, scenario, BirdReceiver, Receiver};
use fnm_agent::actions::bgp::{BgpAnnouncer, BgpBackend, BgpConfig};
use std::{fs, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_announces_and_withdraws_blackholes_and_flowspec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = Receiver::start(dir.path());
    let api_port = free_port();
    let mut speaker = bgp_support::start_gobgp_speaker(dir.path(), receiver.bgp_port, api_port);
    let speaker_log = dir.path().join("speaker.log");
    receiver.wait_established(|| fs::read_to_string(&speaker_log).unwrap_or_default());
    speaker.assert_running();

    let config = BgpConfig {
        backend: BgpBackend::Gobgp,
        gobgp_api: ([127, 0, 0, 1], api_port).into(),
        communities: scenario::communities(),
        timeout: Duration::from_secs(5),
        ..BgpConfig::default()
    };
    let announcer = BgpAnnouncer::from_config(&config).expect("gobgp announcer");
    scenario::announce_and_withdraw(&announcer, &receiver).await;
    speaker.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_announcements_reach_bird2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bird = BirdReceiver::start(dir.path());
    let api_port = free_port();
    let mut speaker = bgp_support::start_gobgp_speaker(dir.path(), bird.bgp_port, api_port);
    let speaker_log = dir.path().join("speaker.log");
    bird.wait_established(|| fs::read_to_string(&speaker_log).unwrap_or_default());
    let config = BgpConfig {
        backend: BgpBackend::Gobgp,
        gobgp_api: ([127, 0, 0, 1], api_port).into(),
        communities: scenario::communities(),
        ..BgpConfig::default()
    };
    let announcer = BgpAnnouncer::from_config(&config).expect("gobgp announcer");
    scenario::announce_and_withdraw_to_bird(&announcer, &bird).await;
    speaker.assert_running();
}

#[tokio::test]
async fn gobgp_announcement_fails_fast_when_gobgpd_is_down() {
    let config = BgpConfig {
        gobgp_api: ([127, 0, 0, 1], free_port()).into(),
        timeout: Duration::from_secs(2),
        ..BgpConfig::default()
    };
    let announcer = BgpAnnouncer::from_config(&config).expect("gobgp announcer");
    let started = std::time::Instant::now();
    let result = announcer.announce_flowspec(&scenario::dns_rule()).await;
    assert!(result.is_err(), "announcing to a closed port must fail");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}
