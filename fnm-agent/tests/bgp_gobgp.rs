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

/// The BIRD definitions of docs/bgp-daemons.md (own prefixes, discard routes, the filters that
/// take only own host routes with the blackhole community), taken from the guide itself.
fn bird_guide_definitions() -> String {
    let guide = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/bgp-daemons.md"
    ))
    .expect("docs/bgp-daemons.md");
    let start = guide
        .find("define OWN4")
        .expect("the guide's BIRD definitions");
    let end = start
        + guide[start..]
            .find("protocol bgp fnm")
            .expect("the guide's BIRD session");
    guide[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bird_guide_takes_own_blackholes_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bird = BirdReceiver::start_with(
        dir.path(),
        &bird_guide_definitions(),
        "filter fnm_in4",
        "filter fnm_in6",
    );
    let api_port = free_port();
    let mut speaker = bgp_support::start_gobgp_speaker(dir.path(), bird.bgp_port, api_port);
    let speaker_log = dir.path().join("speaker.log");
    bird.wait_established(|| fs::read_to_string(&speaker_log).unwrap_or_default());
    let announcer = BgpAnnouncer::from_config(&BgpConfig {
        backend: BgpBackend::Gobgp,
        gobgp_api: ([127, 0, 0, 1], api_port).into(),
        ..BgpConfig::default()
    })
    .expect("gobgp announcer");
    // Own host routes (the guide's 203.0.113.0/24 and 2001:db8::/32) and one outside them.
    for p in ["198.51.100.7/32", "203.0.113.7/32", "2001:db8::7/128"] {
        announcer
            .announce_blackhole(p.parse().unwrap())
            .await
            .expect("announce");
    }
    let v4 = bird.wait_table_has(
        "master4",
        &[
            "203.0.113.7/32",
            "BGP.community: (65535,666)",
            "BGP.next_hop: 192.0.2.254",
        ],
    );
    bird.wait_table_has(
        "master6",
        &["2001:db8::7/128", "BGP.community: (65535,666)"],
    );
    assert!(
        !v4.contains("198.51.100.7"),
        "a host route outside the own prefixes is refused:\n{v4}"
    );
    // The next hop resolves through the guide's discard route: the victim's traffic is dropped.
    let route = bird
        .birdc(&["show", "route", "203.0.113.7/32", "all"])
        .expect("birdc");
    assert!(route.contains("blackhole"), "{route}");
    announcer
        .withdraw_blackhole("203.0.113.7/32".parse().unwrap())
        .await
        .expect("withdraw");
    bird.wait_table_lacks("master4", "203.0.113.7/32");
    speaker.assert_running();
}

/// The bgpd part of the FRR configuration of docs/bgp-daemons.md (prefix and community lists,
/// route maps, the session), with the session's addresses and AS numbers made the test's.
fn frr_guide_bgpd_config() -> String {
    let guide = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/bgp-daemons.md"
    ))
    .expect("docs/bgp-daemons.md");
    let start = guide
        .find("ip prefix-list OWN4")
        .expect("the guide's FRR lists");
    let end = start
        + guide[start..]
            .find("```")
            .expect("the end of the FRR block");
    guide[start..end]
        .replace("192.0.2.10", "127.0.0.1")
        .replace(
            "remote-as 64512",
            &format!("remote-as {}", bgp_support::SENDER_AS),
        )
        .replace(
            "router bgp 64500",
            &format!("router bgp {}", bgp_support::RECEIVER_AS),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frr_guide_takes_own_blackholes_only() {
    let bgpd = bgp_support::require_binary("/usr/lib/frr/bgpd", "frr");
    let vtysh = bgp_support::require_binary("vtysh", "frr");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let conf = dir.path().join("bgpd.conf");
    fs::write(&conf, frr_guide_bgpd_config()).unwrap();
    let mut command = std::process::Command::new(bgpd);
    command
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("bgpd.pid"))
        .arg("--vty_socket")
        .arg(dir.path())
        .args(["-Z", "-S", "-l", "127.0.0.1", "-P", "0", "--log", "stdout"])
        .args(["-p", &port.to_string()]);
    let mut frr = bgp_support::Daemon::spawn("frr bgpd", command, &dir.path().join("bgpd.log"));
    let show = |what: &str| -> Result<String, String> {
        let out = std::process::Command::new(&vtysh)
            .arg("--vty_socket")
            .arg(dir.path())
            .args(["-d", "bgpd", "-c", what])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    let api_port = free_port();
    let _speaker = bgp_support::start_gobgp_speaker(dir.path(), port, api_port);
    bgp_support::wait_for("FRR's session with the speaker", || {
        frr.assert_running();
        let text = show("show bgp neighbors 127.0.0.1")?;
        if text.contains("BGP state = Established") {
            Ok(())
        } else {
            Err(format!("{text}\nbgpd log:\n{}", frr.log_text()))
        }
    });
    let announcer = BgpAnnouncer::from_config(&BgpConfig {
        backend: BgpBackend::Gobgp,
        gobgp_api: ([127, 0, 0, 1], api_port).into(),
        ..BgpConfig::default()
    })
    .expect("gobgp announcer");
    for p in ["198.51.100.7/32", "203.0.113.7/32", "2001:db8::7/128"] {
        announcer
            .announce_blackhole(p.parse().unwrap())
            .await
            .expect("announce");
    }
    let v4 = bgp_support::wait_for("the own blackhole in FRR", || {
        let text = show("show bgp ipv4 unicast 203.0.113.7/32")?;
        if text.contains("65535:666") || text.contains("blackhole") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(v4.contains("192.0.2.254"), "{v4}");
    bgp_support::wait_for("the own IPv6 blackhole in FRR", || {
        let text = show("show bgp ipv6 unicast 2001:db8::7/128")?;
        if text.contains("2001:db8::7/128") && text.contains("100::1") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    let table = show("show bgp ipv4 unicast").expect("vtysh");
    assert!(
        table.contains("203.0.113.7/32") && !table.contains("198.51.100.7"),
        "a host route outside the own prefixes is refused:\n{table}"
    );
    announcer
        .withdraw_blackhole("203.0.113.7/32".parse().unwrap())
        .await
        .expect("withdraw");
    bgp_support::wait_for("the withdrawal in FRR", || {
        let text = show("show bgp ipv4 unicast")?;
        if text.contains("203.0.113.7") {
            Err(text)
        } else {
            Ok(())
        }
    });
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
