//! The agent's log as an operator reads it: no colour codes when stdout is not a terminal,
//! `[log] format = "json"` lines that parse as JSON, and under systemd (`JOURNAL_STREAM`
//! naming its stdout) lines with the syslog priority journald reads and no timestamps.

mod common;

use common::netns::NetnsPair;
use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A config that starts without XDP and warns once at start (a hostgroup outside networks).
fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("fnm-agent.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\nnetworks = [\"10.133.0.0/24\"]\n\
             [xdp]\nenabled = false\n\
             [[hostgroup]]\nname = \"far\"\nnetworks = [\"192.0.2.0/24\"]\n{extra}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

/// Runs the agent in `ns` with stdout and stderr to `log` (a file: not a terminal) and the
/// extra environment; waits for its API, stops it with SIGTERM; returns the log.
fn run_agent(ns: &str, config: &Path, log: &Path, env: &[(&str, String)]) -> String {
    let file = std::fs::File::create(log).unwrap();
    let mut command = Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            ns,
            common::agent::binary(),
            "run",
            "--config",
        ])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "agent exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let up = NetnsPair::in_ns(ns, || {
            fnm_agent::client::request(
                "127.0.0.1:9210".parse().unwrap(),
                "GET",
                "/api/v1/status",
                None,
            )
            .is_ok()
        });
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "the agent's API never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(log).unwrap();
    println!("{text}");
    text
}

#[test]
fn text_logs_carry_no_colour_off_a_terminal_and_json_logs_parse() {
    common::require_root("the log tests (network namespace)");
    let pair = NetnsPair::new(133);
    let dir = tempfile::tempdir().unwrap();

    let text = run_agent(
        &pair.agent,
        &config(dir.path(), ""),
        &dir.path().join("text.log"),
        &[],
    );
    assert!(!text.contains('\u{1b}'), "escape codes in a log file");
    assert!(text.contains("WARN"), "{text}");
    assert!(
        text.contains("hostgroup \"far\".networks: 192.0.2.0/24 is outside networks"),
        "{text}"
    );
    assert!(text.contains("shutting down"), "{text}");
    // Timestamps on a plain stdout (no journal to add them).
    assert!(
        text.lines().all(|l| l.starts_with("20")),
        "a line without its timestamp: {text}"
    );

    let json = run_agent(
        &pair.agent,
        &config(dir.path(), "[log]\nformat = \"json\"\n"),
        &dir.path().join("json.log"),
        &[],
    );
    let mut levels = Vec::new();
    for line in json.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        levels.push(v["level"].as_str().unwrap().to_owned());
    }
    assert!(levels.iter().any(|l| l == "WARN"), "{levels:?}");
    assert!(levels.iter().any(|l| l == "INFO"), "{levels:?}");
    assert!(!json.contains('\u{1b}'));

    // `level = "warn"` leaves the info lines out.
    let quiet = run_agent(
        &pair.agent,
        &config(dir.path(), "[log]\nlevel = \"warn\"\n"),
        &dir.path().join("warn.log"),
        &[],
    );
    assert!(quiet.contains("WARN"), "{quiet}");
    assert!(!quiet.contains("INFO"), "{quiet}");
}

#[test]
fn under_the_journal_lines_carry_priorities_and_no_timestamps() {
    common::require_root("the log tests (network namespace)");
    let pair = NetnsPair::new(134);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("journal.log");
    // systemd sets JOURNAL_STREAM to the device and inode of the stream it hands the service;
    // here the stream is the log file, created first so its inode is known.
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    drop(file);
    // run_agent re-creates the file (same inode: File::create truncates in place).
    let text = run_agent(
        &pair.agent,
        &config(dir.path(), ""),
        &log,
        &[("JOURNAL_STREAM", stream)],
    );
    assert_eq!(std::fs::metadata(&log).unwrap().ino(), meta.ino());
    assert!(!text.contains('\u{1b}'));
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "no priority: {line}"
        );
        assert!(!line[3..].starts_with("20"), "a timestamp: {line}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("outside networks")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>") && l.contains("shutting down")),
        "{text}"
    );
}

#[test]
fn an_error_is_one_line_with_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    // A state directory that is a file: start-up stops with one line.
    let state = dir.path().join("state");
    std::fs::write(&state, "").unwrap();
    let path = dir.path().join("fnm-agent.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[xdp]\nenabled = false\n",
            state.join("inner").display()
        ),
    )
    .unwrap();
    let out = Command::new(common::agent::binary())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("fnm-agent: "), "{stderr}");
    assert!(stderr.contains("is not a directory"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'));
    for dump in ["Caused by", "Os {", "kind:", "Some("] {
        assert!(!stderr.contains(dump), "{dump} in {stderr}");
    }
}
