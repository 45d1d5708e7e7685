//! Manual bans through the mitigator, end to end against real gobgpd daemons on 127.0.0.1:
//! a ban with `bgp_blackhole` and `script` in `[ban] manual_actions` puts the /32 in the
//! receiving gobgpd's RIB and calls the notify script as FastNetMon does
//! (`SCRIPT <ip> other 0 ban`); the unban withdraws it and calls `unban`. With gobgpd down, the
//! ban answers with the action `retrying` and its error, and once gobgpd starts the route
//! appears with no operator action. No XDP, no root needed.
#![cfg(target_os = "linux")]

mod bgp_support;
mod common;

use bgp_support::{free_port, Receiver};
use fnm_agent::client::request;
use serde_json::json;
use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The tests pick free ports and start daemons on them later; run one at a time so that one
/// test's "nothing listens here" port is never taken by the other's gobgpd in between.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Agent {
    child: Child,
    api: SocketAddr,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(dir: &Path, api_port: u16, script: &Path) -> Self {
        let (api, metrics) = (free_port(), free_port());
        let config = dir.join("fnm.toml");
        std::fs::write(
            &config,
            format!(
                "networks = [\"10.99.0.0/16\"]\nstate_dir = \"{}\"\n\
                 [xdp]\nenabled = false\n[sflow]\nlisten = []\n[netflow]\nlisten = []\n\
                 [ban]\nmanual_actions = [\"xdp_blackhole\", \"bgp_blackhole\", \"script\"]\n\
                 script = \"{}\"\n\
                 [bgp]\nbackend = \"gobgp\"\ngobgp_api = \"127.0.0.1:{api_port}\"\ntimeout = \"1s\"\n\
                 [api]\nlisten = \"127.0.0.1:{api}\"\n[prometheus]\nlisten = \"127.0.0.1:{metrics}\"\n",
                dir.join("state").display(),
                script.display()
            ),
        )
        .unwrap();
        let log = dir.join("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(common::agent::binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Self {
            child,
            api: format!("127.0.0.1:{api}").parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while request(agent.api, "GET", "/api/v1/status", None).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent did not start:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn script(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = dir.join("script.log");
    let path = dir.join("notify.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$1 $2 $3 $4\" >> {}\ncat > /dev/null\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, log)
}

fn wait_file_has(path: &Path, needle: &str) {
    bgp_support::wait_for(&format!("{needle:?} in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            Ok(())
        } else {
            Err(text)
        }
    });
}

#[test]
fn manual_ban_announces_the_blackhole_and_calls_the_script() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(dir.path());
    let api_port = free_port();
    let _speaker = bgp_support::start_gobgp_speaker(dir.path(), receiver.bgp_port, api_port);
    let speaker_log = dir.path().join("speaker.log");
    receiver.wait_established(|| std::fs::read_to_string(&speaker_log).unwrap_or_default());
    let (path, script_log) = script(dir.path());
    let agent = Agent::start(dir.path(), api_port, &path);

    let ban = request(
        agent.api,
        "POST",
        "/api/v1/bans",
        Some(&json!({"prefix": "10.99.0.7/32", "match": "dst", "reason": "test"})),
    )
    .unwrap_or_else(|e| panic!("ban: {e}\n{}", agent.log()));
    let results: Vec<_> = ban["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].clone(), a["result"].clone()))
        .collect();
    assert_eq!(
        results,
        vec![
            (json!("xdp_blackhole"), json!("ok")),
            (json!("bgp_blackhole"), json!("ok")),
            (json!("script"), json!("ok")),
        ],
        "{ban:#}"
    );
    let line = receiver.wait_route("ipv4", "10.99.0.7/32");
    assert!(
        line.contains("blackhole") || line.contains("65535:666"),
        "{line}"
    );
    wait_file_has(&script_log, "10.99.0.7 other 0 ban\n");
    let m = request(agent.api, "GET", "/api/v1/mitigations", None).unwrap();
    assert_eq!(m[0]["origin"], "manual", "{m:#}");

    request(
        agent.api,
        "DELETE",
        "/api/v1/bans/10.99.0.7%2F32?match=dst",
        None,
    )
    .unwrap_or_else(|e| panic!("unban: {e}\n{}", agent.log()));
    receiver.wait_gone("ipv4", "10.99.0.7/32");
    wait_file_has(&script_log, "10.99.0.7 other 0 unban\n");
    let m = request(agent.api, "GET", "/api/v1/mitigations", None).unwrap();
    assert_eq!(m, json!([]));
    let metrics = std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(!metrics.contains("panicked"), "{metrics}");
}

#[test]
fn an_announcement_refused_while_gobgpd_is_down_is_retried_until_it_appears() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let api_port = free_port();
    let (path, _script_log) = script(dir.path());
    // The agent starts first: nothing listens on the gobgp API port yet.
    let agent = Agent::start(dir.path(), api_port, &path);
    let ban = request(
        agent.api,
        "POST",
        "/api/v1/bans",
        Some(&json!({"prefix": "10.99.0.9/32", "match": "dst"})),
    )
    .unwrap_or_else(|e| panic!("ban: {e}\n{}", agent.log()));
    let bgp = &ban["actions"][1];
    assert_eq!(bgp["action"], "bgp_blackhole", "{ban:#}");
    assert_eq!(bgp["result"], "retrying", "{ban:#}");
    assert!(
        bgp["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{ban:#}"
    );
    let m = request(agent.api, "GET", "/api/v1/mitigations", None).unwrap();
    assert_eq!(m[0]["actions"][1]["result"], "retrying", "{m:#}");

    // gobgpd comes up; the route appears without anyone acting.
    let mut receiver = Receiver::start(dir.path());
    let _speaker = bgp_support::start_gobgp_speaker(dir.path(), receiver.bgp_port, api_port);
    let speaker_log = dir.path().join("speaker.log");
    receiver.wait_established(|| std::fs::read_to_string(&speaker_log).unwrap_or_default());
    receiver.wait_route("ipv4", "10.99.0.9/32");
    let m = request(agent.api, "GET", "/api/v1/mitigations", None).unwrap();
    assert_eq!(m[0]["actions"][1]["result"], "ok", "{m:#}");
    assert!(
        m[0]["actions"][1]["attempts"].as_u64().unwrap() >= 2,
        "{m:#}"
    );
}
