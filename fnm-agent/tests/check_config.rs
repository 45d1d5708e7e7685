//! `fnm-agent check-config` catches, before start-up, what would fail later, and `run` refuses
//! to start on the same findings: each case on a real machine (interfaces in a namespace the
//! test creates, a read-only file system, real gobgpd and FIFOs for `--online`).

mod bgp_support;
mod common;

use common::netns::NetnsPair;
use std::{
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(out: Output) -> Self {
        let run = Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        println!(
            "exit {:?}\n{}{}",
            run.code,
            run.stdout.trim_end(),
            run.stderr.trim_end()
        );
        run
    }

    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Writes `body` (with a state_dir of its own under `dir`) and returns the file.
fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fnm-agent.toml");
    let body = if body.contains("state_dir") {
        body.to_owned()
    } else {
        format!("state_dir = \"{}\"\n{body}", dir.join("state").display())
    };
    std::fs::write(&path, body).unwrap();
    path
}

/// `fnm-agent <args>` on the host, or inside namespace `ns`.
fn agent(ns: Option<&str>, args: &[&str]) -> Run {
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, common::agent::binary()]);
            c
        }
        None => Command::new(common::agent::binary()),
    };
    Run::of(command.args(args).output().expect("run fnm-agent"))
}

fn check(ns: Option<&str>, config: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["check-config"];
    args.extend_from_slice(extra);
    let path = config.to_str().unwrap();
    args.push(path);
    agent(ns, &args)
}

/// No XDP (so no interface is needed) unless a test asks for it.
const NO_XDP: &str = "[xdp]\nenabled = false\n";

#[test]
fn interfaces_must_exist_in_check_config_and_at_run() {
    common::require_root("the interface checks (network namespaces)");
    let pair = NetnsPair::new(131);
    let dir = tempfile::tempdir().unwrap();
    let ns = Some(pair.agent.as_str());

    let good = write_config(
        dir.path(),
        &format!("[xdp]\ninterfaces = [\"{}\"]\n", pair.veth_agent),
    );
    let run = check(ns, &good, &[]);
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.contains(": OK"), "{}", run.text());

    let bad = write_config(
        dir.path(),
        &format!(
            "[xdp]\ninterfaces = [\"{}\", \"fnmnope0\"]\n",
            pair.veth_agent
        ),
    );
    let run = check(ns, &bad, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains(&format!(
            "error: xdp.interfaces: no interface fnmnope0 on this host (this host has: {}, lo)",
            pair.veth_agent
        )),
        "{}",
        run.text()
    );
    assert!(run.stdout.contains("1 error"), "{}", run.text());

    // The capture backends' interfaces too (libpcap's "any" is not an interface).
    let dir2 = tempfile::tempdir().unwrap();
    let capture = write_config(
        dir2.path(),
        "[capture]\nbackend = \"pcap\"\ninterfaces = [\"any\", \"fnmnope1\"]\n",
    );
    let run = check(ns, &capture, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout
            .contains("error: capture.interfaces: no interface fnmnope1"),
        "{}",
        run.text()
    );
    assert!(!run.stdout.contains("no interface any"), "{}", run.text());

    // `run` stops on the same finding at once, attaching nothing.
    let started = Instant::now();
    let run = agent(ns, &["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        run.stderr.contains("no interface fnmnope0 on this host"),
        "{}",
        run.text()
    );
    assert!(!xdp_attached(&pair.agent, &pair.veth_agent));
}

/// True when `ip link` shows an XDP program on the interface.
fn xdp_attached(ns: &str, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "link", "show", "dev", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("xdp") || text.contains("prog/xdp")
}

#[test]
fn run_binds_its_ports_before_attaching_xdp() {
    common::require_root("the port-before-XDP check (namespace, XDP)");
    let pair = NetnsPair::new(132);
    let dir = tempfile::tempdir().unwrap();
    // Another process holds the API port inside the namespace.
    let holder = NetnsPair::in_ns(&pair.agent, || {
        std::net::TcpListener::bind("127.0.0.1:19210").expect("hold the API port")
    });
    let pin = format!("/sys/fs/bpf/fnm-test-ports-{}", std::process::id());
    let config = write_config(
        dir.path(),
        &format!(
            "networks = [\"10.132.0.0/24\"]\n[xdp]\ninterfaces = [\"{}\"]\npin_path = \"{pin}\"\n\
             [api]\nlisten = \"127.0.0.1:19210\"\n[prometheus]\nlisten = \"127.0.0.1:19209\"\n",
            pair.veth_agent
        ),
    );
    let run = agent(
        Some(&pair.agent),
        &["run", "--config", config.to_str().unwrap()],
    );
    drop(holder);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("api.listen 127.0.0.1:19210: Address already in use"),
        "{}",
        run.text()
    );
    assert!(
        !xdp_attached(&pair.agent, &pair.veth_agent),
        "XDP was attached before the port was found taken"
    );
    assert!(
        std::fs::read_dir(&pin).map_or(true, |mut d| d.next().is_none()),
        "a link was pinned under {pin}"
    );
    let _ = std::fs::remove_dir(&pin);
}

#[test]
fn the_notify_script_must_exist_and_be_executable() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("notify.sh");
    let body = |path: &Path| {
        format!(
            "{NO_XDP}[ban]\nactions = [\"script\"]\nscript = \"{}\"\n",
            path.display()
        )
    };
    let config = write_config(dir.path(), &body(&script));

    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains(&format!(
            "error: ban.script: {}: no such file or directory",
            script.display()
        )),
        "{}",
        run.text()
    );

    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains(&format!(
            "error: ban.script: {}: not executable (chmod +x {})",
            script.display(),
            script.display()
        )),
        "{}",
        run.text()
    );

    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(0), "{}", run.text());

    let config = write_config(dir.path(), &body(dir.path()));
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.contains("not a file"), "{}", run.text());

    // A script no action runs is worth a warning, not a refusal.
    let config = write_config(
        dir.path(),
        &format!("{NO_XDP}[ban]\nscript = \"{}\"\n", script.display()),
    );
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(0));
    assert!(
        run.stdout.contains("warning: ban.script:") && run.stdout.contains("no action runs it"),
        "{}",
        run.text()
    );
}

#[test]
fn xdp_actions_need_the_xdp_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{NO_XDP}[ban]\nactions = [\"xdp_rule\", \"script\"]\nscript = \"/bin/true\"\n\
             manual_actions = [\"xdp_blackhole\"]\n\
             [[hostgroup]]\nname = \"web\"\nnetworks = [\"10.10.1.0/24\"]\nactions = [\"xdp_source\"]\n"
        ),
    );
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    for expected in [
        "error: ban.actions: xdp_rule drops in the XDP program, which does not run here (xdp.enabled = false)",
        "error: hostgroup \"web\".actions: xdp_source drops in the XDP program",
        // xdp_blackhole still records the ban in the ban list: a warning.
        "warning: ban.manual_actions: xdp_blackhole only records the ban in the ban list",
        "2 errors (1 warning)",
    ] {
        assert!(run.stdout.contains(expected), "{expected}\n{}", run.text());
    }

    // The default actions (xdp_rule, xdp_blackhole) of a flow-only config: warnings, so a
    // config that leaves [ban] alone still starts and says what will not happen.
    let config = write_config(dir.path(), NO_XDP);
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(0));
    assert!(
        run.stdout
            .contains("warning: ban.actions (default): xdp_rule drops in the XDP program"),
        "{}",
        run.text()
    );

    // XDP enabled but a userspace capture backend in use: XDP does not run either.
    let config = write_config(
        dir.path(),
        "[capture]\nbackend = \"pcap\"\ninterfaces = [\"lo\"]\n[ban]\nactions = [\"xdp_rule\"]\n",
    );
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains("(capture.backend = \"pcap\")"),
        "{}",
        run.text()
    );
}

#[test]
fn hostgroup_prefixes_outside_networks_are_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "networks = [\"10.10.0.0/16\"]\n{NO_XDP}\
             [[hostgroup]]\nname = \"web\"\nnetworks = [\"10.10.1.0/24\", \"192.0.2.0/24\"]\n"
        ),
    );
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(0), "a warning does not fail the check");
    assert!(
        run.stdout
            .contains("warning: hostgroup \"web\".networks: 192.0.2.0/24 is outside networks"),
        "{}",
        run.text()
    );
    assert!(!run.stdout.contains("10.10.1.0/24"), "{}", run.text());
    assert!(run.stdout.contains(": OK ("), "{}", run.text());
}

#[test]
fn the_state_dir_must_be_writable() {
    common::require_root("the read-only state directory (mount)");
    let dir = tempfile::tempdir().unwrap();
    let readonly = dir.path().join("ro");
    std::fs::create_dir(&readonly).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1M", "fnm-test-ro"])
        .arg(&readonly)
        .output()
        .unwrap();
    assert!(
        mount.status.success(),
        "{}",
        String::from_utf8_lossy(&mount.stderr)
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(readonly.clone());

    let config = write_config(
        dir.path(),
        &format!("state_dir = \"{}\"\n{NO_XDP}", readonly.display()),
    );
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains(&format!(
            "error: state_dir: {} is not writable (read-only file system",
            readonly.display()
        )),
        "{}",
        run.text()
    );
    // A state directory still to be created, under a read-only one.
    let config = write_config(
        dir.path(),
        &format!(
            "state_dir = \"{}\"\n{NO_XDP}",
            readonly.join("fnm").display()
        ),
    );
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains("cannot be created in"),
        "{}",
        run.text()
    );
    // `run` refuses too, before serving a ban it could not save.
    let run = agent(None, &["run", "--config", config.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("state_dir"), "{}", run.text());

    // A directory this user may not write (root may write anywhere: check as nobody).
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(
        dir.path(),
        &format!("state_dir = \"{}\"\n{NO_XDP}", private.display()),
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::agent::binary())
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let run = Run::of(out);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains("is not writable (permission denied"),
        "{}",
        run.text()
    );
}

#[test]
fn online_asks_the_bgp_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let api_port = bgp_support::free_port();
    let body = format!(
        "{NO_XDP}[ban]\nactions = [\"bgp_blackhole\"]\n[bgp]\nbackend = \"gobgp\"\n\
         gobgp_api = \"127.0.0.1:{api_port}\"\ntimeout = \"2s\"\n"
    );
    let config = write_config(dir.path(), &body);

    // Offline, nobody is asked.
    assert_eq!(check(None, &config, &[]).code, Some(0));

    // No gobgpd: one line, no gRPC dump.
    let run = check(None, &config, &["--online"]);
    assert_eq!(run.code, Some(1));
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("error: bgp.gobgp_api:"))
        .unwrap_or_else(|| panic!("{}", run.text()))
        .to_owned();
    assert!(line.contains("does not answer"), "{line}");
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    for dump in ["metadata", "MetadataMap", "details:", "Status {", "Some("] {
        assert!(!line.contains(dump), "Debug formatting in: {line}");
    }

    // A real gobgpd answers with its AS and router id.
    let _speaker = bgp_support::start_gobgp_speaker(dir.path(), bgp_support::free_port(), api_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let run = check(None, &config, &["--online"]);
        if run.code == Some(0) || Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert!(
        run.stdout
            .contains("ok: bgp.gobgp_api: gobgpd answers: AS 65001, router id 10.255.0.1"),
        "{}",
        run.text()
    );

    // ExaBGP: the FIFO must exist and be read.
    let fifo = dir.path().join("exabgp.in");
    let body = format!(
        "{NO_XDP}[ban]\nactions = [\"bgp_blackhole\"]\n[bgp]\nbackend = \"exabgp\"\n\
         exabgp_pipe = \"{}\"\ntimeout = \"2s\"\n",
        fifo.display()
    );
    let config = write_config(dir.path(), &body);
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(0));
    assert!(
        run.stdout.contains("warning: bgp.exabgp_pipe:") && run.stdout.contains("mkfifo"),
        "{}",
        run.text()
    );
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let run = check(None, &config, &["--online"]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains("nobody reads it, is exabgp running?"),
        "{}",
        run.text()
    );
    // A reader (as exabgp holds it open).
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let run = check(None, &config, &["--online"]);
    drop(reader);
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert!(
        run.stdout.contains(&format!(
            "ok: bgp.exabgp_pipe: exabgp reads {}",
            fifo.display()
        )),
        "{}",
        run.text()
    );
}

#[test]
fn a_missing_config_says_how_to_write_one() {
    let run = agent(None, &["check-config", "/nonexistent/fnm/fnm-agent.toml"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert!(
        run.stderr
            .contains("fnm-agent print-default-config > /nonexistent/fnm/fnm-agent.toml"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("No such file or directory").count(),
        1,
        "the cause once: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("Caused by"), "{}", run.stderr);
    let run = agent(
        None,
        &["run", "--config", "/nonexistent/fnm/fnm-agent.toml"],
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("fnm-agent print-default-config >"),
        "{}",
        run.stderr
    );
}

#[test]
fn networks_and_whitelist_files_must_be_readable_and_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let networks = dir.path().join("networks_list");
    let whitelist = dir.path().join("networks_whitelist");
    let config = write_config(
        dir.path(),
        &format!("{NO_XDP}[ban]\nactions = []\nmanual_actions = []\n",).replace(
            "[xdp]",
            &format!(
                "networks_file = \"{}\"\nwhitelist_file = \"{}\"\n[xdp]",
                networks.display(),
                whitelist.display()
            ),
        ),
    );
    // Missing: named with its key, in check-config and at run.
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!(
            "networks_file {}: cannot read it",
            networks.display()
        )),
        "{}",
        run.stderr
    );
    let run = agent(None, &["run", "--config", config.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("networks_file"), "{}", run.stderr);

    // Present, with comments and both families; the whitelist still missing.
    std::fs::write(&networks, "# ours\n192.0.2.0/24\n\n2001:db8:5::/48\n").unwrap();
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("whitelist_file") && run.stderr.contains("cannot read"),
        "{}",
        run.stderr
    );
    // Unreadable (a directory in its place).
    std::fs::create_dir(&whitelist).unwrap();
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("not a regular file"), "{}", run.stderr);
    std::fs::remove_dir(&whitelist).unwrap();
    // A bad line: the file and the line.
    std::fs::write(&whitelist, "192.0.2.7\n192.0.2.300\n").unwrap();
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains(&format!("whitelist_file {} line 2", whitelist.display())),
        "{}",
        run.stderr
    );
    std::fs::write(&whitelist, "192.0.2.7\n").unwrap();
    let run = check(None, &config, &[]);
    assert_eq!(run.code, Some(0), "{}", run.text());
    // `thresholds` reads the same lists: the file's networks and whitelist.
    let report = |ip: &str| -> serde_json::Value {
        let run = agent(
            None,
            &[
                "thresholds",
                ip,
                "--config",
                config.to_str().unwrap(),
                "--json",
            ],
        );
        assert_eq!(run.code, Some(0), "{}", run.text());
        serde_json::from_str(&run.stdout).unwrap()
    };
    let r = report("192.0.2.9");
    assert_eq!(r["network"], "192.0.2.0/24", "{r:#}");
    assert_eq!(r["whitelisted"], false, "{r:#}");
    assert_eq!(report("192.0.2.7")["whitelisted"], true);
    assert_eq!(report("2001:db8:5::1")["network"], "2001:db8:5::/48");
    assert!(
        report("10.10.0.1")["network"].is_null(),
        "no default networks"
    );
}
