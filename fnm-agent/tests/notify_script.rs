//! The notify script runner against hostile scripts: a script that writes 1 GiB to stderr (the
//! runner's memory must stay bounded: measured in a child process, so other tests do not blur
//! the peak), a script that times out with children of its own, a script that exits leaving
//! children on its output pipes, and one whose child leaves the process group holding the pipes.
//! Linux only (`/proc`); every process a test starts is gone at its end.
#![cfg(target_os = "linux")]

use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use fnm_agent::actions::script::{ScriptCall, ScriptRunner, ScriptStats};

/// The tests of this file run one at a time: a script written while another thread forks can
/// fail to start with ETXTBSY, and the memory test wants the machine to itself.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes an executable shell script `name` with `body` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Shell line prefix that writes the script's process group id to the file named after it.
const PGID_TO: &str = "read -r _ _ _ _ pgid _ < /proc/$$/stat; echo $pgid >";

fn call() -> ScriptCall {
    ScriptCall {
        ip: IpAddr::V4(Ipv4Addr::new(10, 10, 1, 1)),
        direction: "incoming",
        pps: 123_456,
        action: "ban",
        stdin: "report\n".into(),
        env: Vec::new(),
    }
}

/// Calls that finished one way or another.
fn finished(stats: &ScriptStats) -> u64 {
    stats.succeeded.load(Ordering::Relaxed)
        + stats.failed.load(Ordering::Relaxed)
        + stats.timed_out.load(Ordering::Relaxed)
}

async fn wait_finished(stats: &ScriptStats, calls: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    while finished(stats) < calls {
        assert!(
            start.elapsed() < limit,
            "{calls} calls not finished after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Live (not zombie) processes whose process group is `pgid`, from `/proc`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            members.push(pid);
        }
    }
    members
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').map(|i| !stat[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// Waits up to `limit` for `pgid` to have no live member; returns how long it took.
async fn wait_group_gone(pgid: i32, limit: Duration) -> Result<Duration, Vec<i32>> {
    let start = Instant::now();
    loop {
        let members = group_members(pgid);
        if members.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(members);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Fails (after killing the script's child) unless the script got a process group of its own:
/// otherwise its group is the test's, and the group checks below would be meaningless.
fn own_group(pgid: i32, child: i32) {
    // SAFETY: getpgrp has no preconditions.
    if pgid == unsafe { libc::getpgrp() } {
        kill_leftovers(&[child]);
        panic!("the script runs in the runner's own process group {pgid}");
    }
}

/// Reads a pid a script wrote into `file`.
async fn read_pid(file: &Path) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no {file:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Kills what a test started and is still running (a failed assertion must not leave
/// `sleep 300` behind).
fn kill_leftovers(pids: &[i32]) {
    for &pid in pids {
        if alive(pid) {
            // SAFETY: a process this test started (through its script).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_script_is_killed_with_its_whole_process_group() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // The script and its two children (a background and a foreground sleep) share its pipes.
    let path = script(
        dir.path(),
        "hang.sh",
        &format!("{PGID_TO} {d}/pgid\nsleep 300 &\necho $! > {d}/child\nsleep 300"),
    );
    let timeout = Duration::from_secs(1);
    let runner = ScriptRunner::start(path, timeout, 1, 4);
    let submitted = Instant::now();
    assert!(runner.submit(call()));
    let pgid = read_pid(&dir.path().join("pgid")).await;
    let child = read_pid(&dir.path().join("child")).await;
    own_group(pgid, child);
    let elapsed = wait_finished(&runner.stats, 1, Duration::from_secs(20)).await;
    let call_ended = submitted.elapsed();
    let gone = wait_group_gone(pgid, Duration::from_secs(5)).await;
    let members = group_members(pgid);
    kill_leftovers(&[child]);
    kill_leftovers(&members);
    let stats = &runner.stats;
    assert_eq!(stats.timed_out.load(Ordering::Relaxed), 1);
    assert_eq!(stats.leftovers_killed.load(Ordering::Relaxed), 0);
    let gone = gone.unwrap_or_else(|left| panic!("left running in group {pgid}: {left:?}"));
    println!(
        "GROUP_KILL call ended {call_ended:?} after submit (timeout {timeout:?}), group empty \
         {gone:?} after that: {:?} from the deadline to an empty group",
        (call_ended + gone).saturating_sub(timeout)
    );
    assert!(!alive(child), "the background child outlived the timeout");
    assert!(
        elapsed < timeout + Duration::from_secs(2),
        "the runner took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_left_on_the_pipes_after_exit_neither_block_nor_outlive_the_call() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // The script succeeds at once but leaves a child holding stdout and stderr.
    let path = script(
        dir.path(),
        "leave.sh",
        &format!("{PGID_TO} {d}/pgid\nsleep 300 &\necho $! > {d}/child\nexit 0"),
    );
    let timeout = Duration::from_secs(1);
    let runner = ScriptRunner::start(path, timeout, 1, 4);
    assert!(runner.submit(call()));
    let pgid = read_pid(&dir.path().join("pgid")).await;
    let child = read_pid(&dir.path().join("child")).await;
    own_group(pgid, child);
    let elapsed = wait_finished(&runner.stats, 1, Duration::from_secs(20)).await;
    let gone = wait_group_gone(pgid, Duration::from_secs(5)).await;
    let members = group_members(pgid);
    kill_leftovers(&[child]);
    kill_leftovers(&members);
    let stats = &runner.stats;
    assert_eq!(
        (
            stats.succeeded.load(Ordering::Relaxed),
            stats.timed_out.load(Ordering::Relaxed)
        ),
        (1, 0),
        "the script exited 0 in time: a success, whatever its children do"
    );
    assert_eq!(stats.leftovers_killed.load(Ordering::Relaxed), 1);
    println!("LEFTOVERS call ended {elapsed:?} after the pids were read (timeout {timeout:?})");
    assert!(gone.is_ok(), "left running in group {pgid}: {gone:?}");
    assert!(!alive(child), "the background child outlived the call");
    assert!(
        elapsed < timeout + Duration::from_secs(2),
        "the runner took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_held_outside_the_group_does_not_block_the_runner() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // setsid puts the child in a session (and group) of its own, out of the runner's reach;
    // it still holds the script's stdout and stderr.
    let path = script(
        dir.path(),
        "escape.sh",
        &format!("setsid sleep 300 &\necho $! > {d}/escaped\nexit 0"),
    );
    let timeout = Duration::from_secs(10);
    let runner = ScriptRunner::start(path, timeout, 1, 4);
    assert!(runner.submit(call()));
    let escaped = read_pid(&dir.path().join("escaped")).await;
    let elapsed = wait_finished(&runner.stats, 1, Duration::from_secs(30)).await;
    kill_leftovers(&[escaped]);
    let stats = &runner.stats;
    assert_eq!(stats.succeeded.load(Ordering::Relaxed), 1);
    assert_eq!(stats.leftovers_killed.load(Ordering::Relaxed), 0);
    println!("ESCAPED call ended {elapsed:?} after the pid was read (timeout {timeout:?})");
    assert!(
        elapsed < Duration::from_secs(3),
        "the runner waited {elapsed:?} for a pipe held by a process it cannot kill"
    );
}

/// Environment variable that makes [`memory_child`] run (in a process of its own).
const MEMORY_CHILD: &str = "FNM_TEST_SCRIPT_MEMORY_CHILD";

/// Peak resident set of this process (`VmHWM`), KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Runs the chatty script through the runner and prints the peak RSS before and after; only
/// when started by [`a_script_writing_1_gib_to_stderr_keeps_memory_bounded`].
#[test]
#[ignore = "run by a_script_writing_1_gib_to_stderr_keeps_memory_bounded in a child process"]
fn memory_child() {
    let Ok(dir) = std::env::var(MEMORY_CHILD) else {
        return;
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let path = script(
        Path::new(&dir),
        "chatty.sh",
        "head -c 1073741824 /dev/zero >&2\nhead -c 268435456 /dev/zero\nexit 3",
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let before = vm_hwm_kib();
        let runner = ScriptRunner::start(path, Duration::from_secs(120), 1, 4);
        let start = Instant::now();
        assert!(runner.submit(call()));
        wait_finished(&runner.stats, 1, Duration::from_secs(150)).await;
        let after = vm_hwm_kib();
        println!(
            "MEMORY before_kib={before} after_kib={after} seconds={:.2} failed={} truncated={}",
            start.elapsed().as_secs_f64(),
            runner.stats.failed.load(Ordering::Relaxed),
            runner.stats.output_truncated.load(Ordering::Relaxed)
        );
    });
}

#[test]
fn a_script_writing_1_gib_to_stderr_keeps_memory_bounded() {
    let _serial = SERIAL.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "memory_child", "--ignored", "--nocapture"])
        .env(MEMORY_CHILD, dir.path())
        .output()
        .expect("run the memory child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|line| line.starts_with("MEMORY "))
        .unwrap_or_else(|| panic!("no MEMORY line: {stdout}\n{stderr}"));
    println!("{line}");
    let value = |key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    assert_eq!(value("failed"), 1.0, "{stderr}");
    assert_eq!(value("truncated"), 1.0, "{stderr}");
    // The log says how much was written and how much was kept.
    assert!(
        stderr.contains("output truncated (stdout 268435456 bytes, stderr 1073741824 bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("[truncated: 1073741824 bytes, first 65536 kept]"));
    let grown_mib = (value("after_kib") - value("before_kib")) / 1024.0;
    assert!(
        grown_mib < 32.0,
        "peak RSS grew by {grown_mib:.0} MiB while the script wrote 1 GiB to stderr"
    );
}
