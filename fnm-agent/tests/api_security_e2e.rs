//! The agent's own defences, end to end with the real binary on 127.0.0.1 (issue 12, items 4
//! and 5): unsafe manual bans are refused, force needs the configuration, a listener beyond
//! loopback needs a token, a token guards mutating calls (and the CLI reads it), 20 000 idle
//! connections neither stop `/metrics` nor a ban from being saved, the listener survives
//! running out of descriptors, slowloris and non-reading clients are cut off, and automatic
//! bans beyond the cap are reported not applied.
//!
//! The connection flood needs root (it raises this process's descriptor limit); the agent runs
//! under `prlimit --nofile=4096`, as a systemd unit would give it.
#![cfg(target_os = "linux")]

mod common;

use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const TOKEN: &str = "e2e-token-0123456789abcdef";

/// The tests of this file run one at a time: they measure latencies and timeouts, and two
/// floods at once would measure each other.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// A config: `top` are top-level keys; `sections` add lines to `[xdp]`, `[api]` ...
fn config_text(
    state: &Path,
    api: SocketAddr,
    metrics: SocketAddr,
    top: &str,
    sections: &[(&str, &str)],
) -> String {
    let mut tables: BTreeMap<&str, String> = BTreeMap::new();
    tables.insert("xdp", "enabled = false\n".into());
    tables.insert("sflow", String::new());
    tables.insert("netflow", "listen = []\n".into());
    tables.insert("api", format!("listen = \"{api}\"\n"));
    tables.insert("prometheus", format!("listen = \"{metrics}\"\n"));
    for (name, lines) in sections {
        let t = tables.entry(name).or_default();
        t.push_str(lines);
        t.push('\n');
    }
    if !tables["sflow"].contains("listen") {
        tables.get_mut("sflow").unwrap().push_str("listen = []\n");
    }
    let mut text = format!(
        "state_dir = \"{}\"\npoll_interval = \"200ms\"\nnetworks = [\"10.99.0.0/16\"]\n{top}\n",
        state.display()
    );
    for (name, lines) in tables {
        text.push_str(&format!("[{name}]\n{lines}"));
    }
    text
}

/// The real agent on 127.0.0.1, stopped with SIGTERM on drop.
struct Agent {
    child: Child,
    api: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(top: &str, sections: &[(&str, &str)]) -> Self {
        Self::start_limited(top, sections, None)
    }

    /// Starts the agent, under `prlimit --nofile=N` when `nofile` is given, and waits for its
    /// API (with the token when the config has one).
    fn start_limited(top: &str, sections: &[(&str, &str)], nofile: Option<u64>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("fnm.toml");
        std::fs::write(
            &config,
            config_text(&dir.path().join("state"), api, metrics, top, sections),
        )
        .unwrap();
        let log = dir.path().join("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(common::agent::binary());
                c
            }
            None => Command::new(common::agent::binary()),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fnm-agent");
        let mut agent = Self {
            child,
            api,
            metrics,
            dir,
            config,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("fnm-agent exited early ({status}):\n{}", agent.log());
            }
            if matches!(
                agent.call("GET", "/api/v1/status", Some(TOKEN), None),
                Ok((200, _))
            ) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the API never came up:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        http(self.api, method, path, token, body.map(Value::to_string))
    }

    fn metrics_text(&self, token: Option<&str>) -> std::io::Result<(u16, String)> {
        let (status, _, body) = raw_http(self.metrics, "GET", "/metrics", token, None)?;
        Ok((status, body))
    }

    /// The value of one series of `/metrics` (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.metrics_text(Some(TOKEN)).expect("scrape");
        metric_value(&text, series)
    }

    /// Resident memory of the agent, KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors of the agent.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        Command::new(common::agent::binary())
            .args(args)
            .env_remove("FNM_API")
            .env_remove("FNM_API_TOKEN_FILE")
            .env_remove("FNM_CONFIG")
            .env_remove("RUST_BACKTRACE")
            .envs(env.iter().copied())
            .output()
            .expect("run the CLI")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One HTTP/1.1 request; returns status, headers and body.
fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: fnm\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, head.to_owned(), body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A request whose answer must be JSON; returns status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> std::io::Result<(u16, Value)> {
    let (status, head, body) = raw_http(addr, method, path, token, body)?;
    let json: Value = serde_json::from_str(&body).map_err(|e| {
        std::io::Error::other(format!(
            "{status}: body is not JSON ({e}): {head}\n{body:?}"
        ))
    })?;
    Ok((status, json))
}

fn ban(prefix: &str, side: &str) -> Value {
    json!({"prefix": prefix, "match": side})
}

/// A non-loopback IPv4 address of this host, from `ip -o -4 addr`.
fn host_address() -> Option<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let addr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
        let ip = addr.split('/').next()?;
        (!ip.starts_with("127.")).then(|| ip.to_owned())
    })
}

#[test]
fn unsafe_bans_are_refused_and_force_needs_the_config() {
    let _serial = serial();
    let agent = Agent::start("whitelist = [\"203.0.113.0/24\"]", &[]);
    let refused = |body: Value| {
        let (status, answer) = agent
            .call("POST", "/api/v1/bans", None, Some(&body))
            .unwrap();
        assert_eq!(status, 409, "{body} -> {answer}");
        assert!(answer["error"].as_str().is_some(), "{answer}");
        answer["code"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(refused(ban("0.0.0.0/0", "src")), "prefix_too_short");
    assert_eq!(refused(ban("::/0", "src")), "prefix_too_short");
    assert_eq!(refused(ban("0.0.0.0/0", "dst")), "outside_networks");
    assert_eq!(refused(ban("198.51.100.0/24", "dst")), "outside_networks");
    // A covering supernet of the whitelisted 203.0.113.0/24, and a prefix inside it.
    assert_eq!(refused(ban("203.0.0.0/16", "src")), "covers_whitelist");
    assert_eq!(refused(ban("203.0.113.7/32", "src")), "inside_whitelist");
    // This host: loopback, an interface address, and the caller (127.0.0.1 here: loopback).
    assert_eq!(refused(ban("127.0.0.0/8", "src")), "own_address");
    assert_eq!(refused(ban("127.0.0.1/32", "src")), "own_address");
    assert_eq!(refused(ban("::1/128", "src")), "own_address");
    match host_address() {
        Some(ip) => assert_eq!(refused(ban(&format!("{ip}/32"), "src")), "own_address"),
        None => eprintln!("no non-loopback IPv4 address on this host; that check is skipped"),
    }
    // Force is refused unless the config allows it.
    let mut forced = ban("0.0.0.0/0", "src");
    forced["force"] = true.into();
    assert_eq!(refused(forced.clone()), "force_not_allowed");
    // Reason and body limits, answered in JSON.
    let mut long = ban("198.51.100.7/32", "src");
    long["reason"] = "x".repeat(1025).into();
    let (status, answer) = agent
        .call("POST", "/api/v1/bans", None, Some(&long))
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("1024"),
        "{answer}"
    );
    long["reason"] = "x".repeat(100_000).into();
    let (status, answer) = agent
        .call("POST", "/api/v1/bans", None, Some(&long))
        .unwrap();
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("65536"),
        "{answer}"
    );
    // Other errors are JSON too.
    let (status, answer) = agent.call("GET", "/api/v1/hosts/x", None, None).unwrap();
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = agent.call("GET", "/nothing", None, None).unwrap();
    assert_eq!(status, 404, "{answer}");
    // The CLI gets the same answer and fails.
    let out = agent.cli(
        &[
            "ban",
            "0.0.0.0/0",
            "--match",
            "src",
            "--api",
            &agent.api.to_string(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("too wide"),
        "{stderr}"
    );
    // A safe ban goes through; nothing refused is in the list.
    let (status, answer) = agent
        .call(
            "POST",
            "/api/v1/bans",
            None,
            Some(&ban("198.51.100.7/32", "src")),
        )
        .unwrap();
    assert_eq!(status, 201, "{answer}");
    let (_, bans) = agent.call("GET", "/api/v1/bans", None, None).unwrap();
    assert_eq!(bans.as_array().unwrap().len(), 1, "{bans}");
    // 0.0.0.0/0 and ::/0 through the API, 0.0.0.0/0 through the CLI.
    assert_eq!(
        agent.metric("fnm_manual_bans_refused_total{check=\"prefix_too_short\"}"),
        3.0
    );
    drop(agent);

    // With ban.allow_force the same forced ban is accepted (and logged).
    let agent = Agent::start(
        "whitelist = [\"203.0.113.0/24\"]",
        &[("ban", "allow_force = true")],
    );
    let (status, answer) = agent
        .call("POST", "/api/v1/bans", None, Some(&forced))
        .unwrap();
    assert_eq!(status, 201, "{answer}");
    assert!(
        agent.log().contains("forced ban of 0.0.0.0/0"),
        "{}",
        agent.log()
    );
    // Never inside the whitelist, forced or not.
    let mut inside = ban("203.0.113.7/32", "src");
    inside["force"] = true.into();
    let (status, answer) = agent
        .call("POST", "/api/v1/bans", None, Some(&inside))
        .unwrap();
    assert_eq!(status, 409, "{answer}");
}

/// Runs the agent inside `pair.agent` with `api.listen = 0.0.0.0:<port>` and `api_lines`;
/// returns the child, the API address as the peer namespace reaches it, and the log path.
fn start_in_namespace(
    pair: &common::netns::NetnsPair,
    dir: &Path,
    api_lines: &str,
) -> (Child, SocketAddr, PathBuf) {
    let port = free_port();
    let api: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.join("fnm.toml");
    std::fs::write(
        &config,
        config_text(&dir.join("state"), api, metrics, "", &[("api", api_lines)]),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &pair.agent, common::agent::binary()])
        .args(["run", "--config"])
        .arg(&config)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let reach: SocketAddr = format!("{}:{port}", pair.agent_v4).parse().unwrap();
    (child, reach, log)
}

/// GET `path` from the peer namespace, retrying until the agent listens.
fn get_from_peer(
    pair: &common::netns::NetnsPair,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let (path, token) = (path.to_owned(), token.map(str::to_owned));
    common::netns::NetnsPair::in_ns(&pair.peer, move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match http(addr, "GET", &path, token.as_deref(), None) {
                Ok(answer) => return answer,
                Err(e) => assert!(Instant::now() < deadline, "{addr}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

fn stop(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

#[test]
fn a_listener_beyond_loopback_needs_a_token() {
    let _serial = serial();
    // Refused before anything is bound: exit code 1 and the keys to set.
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("0.0.0.0:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("fnm.toml");
    std::fs::write(
        &config,
        config_text(&dir.path().join("state"), api, metrics, "", &[]),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(common::agent::binary())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("refused start: {}", stderr.trim());
    assert!(
        stderr.contains("api.listen 0.0.0.0") && stderr.contains("api.token_file"),
        "{stderr}"
    );
    let out = Command::new(common::agent::binary())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Beyond loopback (in a namespace this test creates), with a token: every call needs it.
    common::require_root("the namespace part of the exposure test");
    let pair = common::netns::NetnsPair::new(121);
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let d = tempfile::tempdir().unwrap();
    let (child, reach, _) = start_in_namespace(
        &pair,
        d.path(),
        &format!("token_file = \"{}\"", token_file.display()),
    );
    let (status, answer) = get_from_peer(&pair, reach, "/api/v1/status", None);
    assert_eq!(status, 401, "{answer}");
    let (status, _) = get_from_peer(&pair, reach, "/api/v1/status", Some(TOKEN));
    assert_eq!(status, 200);
    stop(child);

    // With insecure = true it starts without a token and says so loudly.
    let d = tempfile::tempdir().unwrap();
    let (child, reach, log) = start_in_namespace(&pair, d.path(), "insecure = true");
    let (status, _) = get_from_peer(&pair, reach, "/api/v1/status", None);
    assert_eq!(status, 200);
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INSECURE"), "{text}");
}

#[test]
fn mutating_calls_need_the_token_and_the_cli_reads_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let api_section = format!("token_file = \"{}\"", token_file.display());
    let agent = Agent::start(
        "",
        &[
            ("api", &api_section),
            (
                "prometheus",
                &format!("token_file = \"{}\"", token_file.display()),
            ),
        ],
    );
    let body = ban("198.51.100.9/32", "src");
    let (status, answer) = agent
        .call("POST", "/api/v1/bans", None, Some(&body))
        .unwrap();
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("Bearer"),
        "{answer}"
    );
    let (status, _) = agent
        .call(
            "POST",
            "/api/v1/bans",
            Some("e2e-token-0123456789abcdeX"),
            Some(&body),
        )
        .unwrap();
    assert_eq!(status, 401);
    let (status, answer) = agent
        .call("POST", "/api/v1/bans", Some(TOKEN), Some(&body))
        .unwrap();
    assert_eq!(status, 201, "{answer}");
    // Reads need no token on loopback; unbans do.
    let (status, bans) = agent.call("GET", "/api/v1/bans", None, None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(bans.as_array().unwrap().len(), 1);
    let (status, _) = agent
        .call(
            "DELETE",
            "/api/v1/bans/198.51.100.9%2F32?match=src",
            None,
            None,
        )
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = agent
        .call(
            "DELETE",
            "/api/v1/bans/198.51.100.9%2F32?match=src",
            Some(TOKEN),
            None,
        )
        .unwrap();
    assert_eq!(status, 200);
    // /metrics wants the token on every scrape once it has one.
    assert_eq!(agent.metrics_text(None).unwrap().0, 401);
    let (status, text) = agent.metrics_text(Some(TOKEN)).unwrap();
    assert_eq!(status, 200);
    assert!(
        metric_value(
            &text,
            "fnm_http_unauthorized_requests_total{listener=\"api\"}"
        ) >= 3.0,
        "{text}"
    );

    // The CLI: without a token it is refused, with --token-file, FNM_API_TOKEN_FILE or the
    // config's token_file it works.
    let api = agent.api.to_string();
    let out = agent.cli(
        &["ban", "198.51.100.10", "--match", "src", "--api", &api],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let tf = token_file.to_str().unwrap();
    let out = agent.cli(
        &[
            "ban",
            "198.51.100.10",
            "--match",
            "src",
            "--api",
            &api,
            "--token-file",
            tf,
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let out = agent.cli(
        &["ban", "198.51.100.11", "--match", "src", "--api", &api],
        &[("FNM_API_TOKEN_FILE", tf)],
    );
    assert!(out.status.success(), "{out:?}");
    let cfg = agent.config.to_str().unwrap();
    let out = agent.cli(
        &["unban", "198.51.100.11", "--match", "src", "--config", cfg],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let out = agent.cli(&["bans", "--config", cfg], &[]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("198.51.100.10/32"), "{listed}");
    assert!(!listed.contains("198.51.100.11/32"), "{listed}");
}

#[test]
fn slow_and_stalled_clients_are_cut_off() {
    let _serial = serial();
    let agent = Agent::start(
        "",
        &[
            ("api", "header_read_timeout = \"1s\""),
            (
                "prometheus",
                "idle_timeout = \"1s\"\nheader_read_timeout = \"5s\"",
            ),
        ],
    );
    // Slowloris: a header line every 300 ms never completes the request.
    let mut s = TcpStream::connect(agent.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    s.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: fnm\r\n")
        .unwrap();
    let dripper = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..30 {
                std::thread::sleep(Duration::from_millis(300));
                if s.write_all(format!("X-Slow-{i}: x\r\n").as_bytes())
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let closed_after = start.elapsed();
    dripper.join().unwrap();
    println!("slowloris connection closed after {closed_after:.2?} (header_read_timeout 1s)");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "{closed_after:?}"
    );
    // A connection that sends nothing, and one idle after an answer, go the same way.
    for first in [
        &b""[..],
        &b"GET /api/v1/status HTTP/1.1\r\nHost: fnm\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(agent.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let start = Instant::now();
        s.write_all(first).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
    assert!(
        agent.metric("fnm_http_connections_timed_out_total{listener=\"api\",timeout=\"header\"}")
            >= 3.0
    );

    // A client that asks for many answers and never reads them: once the socket buffers are
    // full nothing moves, and the idle timeout closes it.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&agent.metrics.into()).unwrap();
    let mut s: TcpStream = s.into();
    let request = "GET /metrics HTTP/1.1\r\nHost: fnm\r\n\r\n".repeat(3000);
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent
        .metric("fnm_http_connections_timed_out_total{listener=\"metrics\",timeout=\"idle\"}")
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the stalled reader was never closed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Opens and holds TCP connections to `target` from source addresses 127.0.0.2, .3 ...;
/// whenever the agent closes one, opens another. The sockets live in helper processes (this
/// test binary again, running [`flood_helper_process`]) of at most [`SOCKETS_PER_HELPER`]
/// each, so the flood is not bound by one process's descriptor limit.
struct Flood {
    helpers: Vec<Helper>,
}

struct Helper {
    child: Child,
    open: Arc<std::sync::atomic::AtomicUsize>,
    done: Arc<std::sync::Mutex<Option<FloodCounts>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Most sockets one helper process holds.
const SOCKETS_PER_HELPER: usize = 10_000;

#[derive(Debug, Default, Clone, Copy)]
struct FloodCounts {
    connects: u64,
    closed_by_agent: u64,
}

impl Flood {
    fn start(target: SocketAddr, connections: usize, sources: u8) -> Self {
        let n = connections.div_ceil(SOCKETS_PER_HELPER);
        let helpers: Vec<Helper> = (0..n)
            .map(|j| {
                let count = (connections - j * SOCKETS_PER_HELPER).min(SOCKETS_PER_HELPER);
                let first = 2 + j * sources as usize;
                assert!(first + sources as usize <= 255, "too many source addresses");
                Helper::spawn(target, count, sources, first as u8)
            })
            .collect();
        let flood = Self { helpers };
        let deadline = Instant::now() + Duration::from_secs(60);
        while flood.open() < connections {
            assert!(
                Instant::now() < deadline,
                "could not open {connections} sockets ({} open)",
                flood.open()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        flood
    }

    /// Sockets the helpers hold now.
    fn open(&self) -> usize {
        self.helpers
            .iter()
            .map(|h| h.open.load(Ordering::Relaxed))
            .sum()
    }

    fn stop(self) -> FloodCounts {
        let mut total = FloodCounts::default();
        for mut h in self.helpers {
            drop(h.child.stdin.take());
            let _ = h.child.wait();
            if let Some(r) = h.reader.take() {
                let _ = r.join();
            }
            let c = h.done.lock().unwrap().unwrap_or_default();
            total.connects += c.connects;
            total.closed_by_agent += c.closed_by_agent;
        }
        total
    }
}

impl Helper {
    fn spawn(target: SocketAddr, count: usize, sources: u8, first: u8) -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "flood_helper_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "FNM_E2E_FLOOD",
                format!("{target},{count},{sources},{first}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a flood helper");
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(std::sync::Mutex::new(None));
        let out = child.stdout.take().unwrap();
        let (o, d) = (open.clone(), done.clone());
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["FLOOD-OPEN", n] => o.store(n.parse().unwrap_or(0), Ordering::Relaxed),
                    ["FLOOD-DONE", c, x] => {
                        *d.lock().unwrap() = Some(FloodCounts {
                            connects: c.parse().unwrap_or(0),
                            closed_by_agent: x.parse().unwrap_or(0),
                        })
                    }
                    _ => {}
                }
            }
        });
        Self {
            child,
            open,
            done,
            reader: Some(reader),
        }
    }
}

/// The flood helper: does nothing as a normal test; run by [`Flood`] with `FNM_E2E_FLOOD`
/// set, it holds the sockets until its stdin closes.
#[test]
fn flood_helper_process() {
    let Ok(spec) = std::env::var("FNM_E2E_FLOOD") else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let target: SocketAddr = parts[0].parse().unwrap();
    let count: usize = parts[1].parse().unwrap();
    let sources: u8 = parts[2].parse().unwrap();
    let first: u8 = parts[3].parse().unwrap();
    raise_nofile_to_hard(count as u64 + 64);
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::Relaxed);
        });
    }
    {
        let (stop, open) = (stop.clone(), open.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                println!("FLOOD-OPEN {}", open.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    let counts = flood(target, count, sources, first, &stop, &open);
    println!("FLOOD-DONE {} {}", counts.connects, counts.closed_by_agent);
}

fn connect_from(target: SocketAddr, source: Ipv4Addr) -> Option<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    s.set_nonblocking(true).ok()?;
    s.bind(&SocketAddrV4::new(source, 0).into()).ok()?;
    match s.connect(&target.into()) {
        Ok(()) => Some(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Some(s),
        Err(_) => None,
    }
}

fn flood(
    target: SocketAddr,
    connections: usize,
    sources: u8,
    first: u8,
    stop: &AtomicBool,
    open: &std::sync::atomic::AtomicUsize,
) -> FloodCounts {
    let mut counts = FloodCounts::default();
    let source = |i: usize| Ipv4Addr::new(127, 0, 0, first + (i % sources as usize) as u8);
    let mut socks: Vec<Option<socket2::Socket>> = (0..connections)
        .map(|i| {
            counts.connects += 1;
            connect_from(target, source(i))
        })
        .collect();
    open.store(socks.iter().flatten().count(), Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        // Leave the agent some of this machine's CPU: the attacker is elsewhere in real life.
        std::thread::sleep(Duration::from_millis(10));
        for (i, p) in fds.iter().enumerate() {
            // Any event: the agent answered (503) or closed the connection. Replace it.
            let dead = socks[i].is_none() || p.revents != 0;
            if dead {
                if socks[i].is_some() {
                    counts.closed_by_agent += 1;
                }
                counts.connects += 1;
                socks[i] = connect_from(target, source(i));
            }
        }
        open.store(socks.iter().flatten().count(), Ordering::Relaxed);
    }
    counts
}

/// Raises this process's soft descriptor limit to its hard limit, which must allow `needed`.
fn raise_nofile_to_hard(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= needed,
        "the hard descriptor limit {} is below {needed}",
        lim.rlim_max
    );
}

/// Times `n` scrapes of `/metrics`; returns the latencies sorted, and how many failed.
fn scrape_latencies(agent: &Agent, n: usize) -> (Vec<Duration>, usize) {
    let mut ok = Vec::new();
    let mut failed = 0;
    for _ in 0..n {
        let start = Instant::now();
        match agent.metrics_text(None) {
            Ok((200, text)) if text.contains("fnm_build_info") => ok.push(start.elapsed()),
            _ => failed += 1,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok.sort();
    (ok, failed)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn twenty_thousand_idle_connections_leave_metrics_and_bans_working() {
    let _serial = serial();
    let agent = Agent::start_limited("", &[], Some(4096));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains("4096")),
        "{limits}"
    );
    let (base, _) = scrape_latencies(&agent, 20);
    let rss_before = agent.rss_kib();
    let fds_before = agent.fds();

    let flood = Flood::start(agent.api, 20_000, 50);
    std::thread::sleep(Duration::from_secs(2));
    let held = agent.metric("fnm_http_connections{listener=\"api\"}");
    let fds_during = agent.fds();
    let rss_during = agent.rss_kib();
    let (during, failed) = scrape_latencies(&agent, 40);
    // A ban through the API: connections are refused while the limit is full, so retry.
    let ban_start = Instant::now();
    let mut attempts = 0;
    let saved = loop {
        attempts += 1;
        if let Ok((201, answer)) = agent.call(
            "POST",
            "/api/v1/bans",
            None,
            Some(&ban("198.51.100.77/32", "src")),
        ) {
            break answer;
        }
        assert!(
            ban_start.elapsed() < Duration::from_secs(30),
            "no ban within 30 s ({attempts} attempts):\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ban_after = ban_start.elapsed();
    // The ban is saved: a line of the ban journal (folded into bans.json later).
    let bans_file =
        std::fs::read_to_string(agent.dir.path().join("state").join("bans.journal")).unwrap();
    assert!(
        bans_file.contains("198.51.100.77/32"),
        "{saved}\n{bans_file}"
    );
    let rejected = agent.metric(
        "fnm_http_connections_rejected_total{listener=\"api\",reason=\"max_connections\"}",
    ) + agent.metric(
        "fnm_http_connections_rejected_total{listener=\"api\",reason=\"max_connections_per_ip\"}",
    );
    let accept_errors = agent.metric("fnm_http_accept_errors_total{listener=\"api\"}");
    let counts = flood.stop();
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = agent.rss_kib();
    let fds_after = agent.fds();
    // The connections the kernel still queued are accepted and time out; then the burst is
    // over and the agent hands its free memory back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.metric("fnm_http_connections{listener=\"api\"}") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "API connections never went back to 0"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(6));
    let (rss_settled, fds_settled) = (agent.rss_kib(), agent.fds());
    let (after, _) = scrape_latencies(&agent, 10);
    assert!(agent.child_alive(), "{}", agent.log());

    println!(
        "flood: 20000 sockets held by the attacker ({} connects, {} closed by the agent)",
        counts.connects, counts.closed_by_agent
    );
    println!(
        "agent (nofile 4096): {held} API connections held, {rejected} refused at once, \
         {accept_errors} accept errors; descriptors {fds_before} before, {fds_during} during, \
         {fds_after} after"
    );
    println!(
        "/metrics latency: before p50 {:.2?} max {:.2?}; during p50 {:.2?} p95 {:.2?} max {:.2?} \
         ({failed} failed of 40); after p50 {:.2?}",
        pct(&base, 0.5),
        pct(&base, 1.0),
        pct(&during, 0.5),
        pct(&during, 0.95),
        pct(&during, 1.0),
        pct(&after, 0.5)
    );
    println!(
        "ban saved {ban_after:.2?} after the first attempt ({attempts} attempts); RSS {} KiB \
         before, {} KiB during, {} KiB 3 s after, {rss_settled} KiB once settled \
         ({fds_settled} descriptors)",
        rss_before, rss_during, rss_after
    );
    assert_eq!(failed, 0, "/metrics failed during the flood");
    assert!(pct(&during, 1.0) < Duration::from_secs(1), "{during:?}");
    // max_connections, plus at most a quarter more evicted ones not closed yet.
    assert!(held <= 320.0, "{held}");
    assert!(fds_during < 1024, "{fds_during} descriptors");
    assert_eq!(accept_errors, 0.0);
    assert!(
        rss_during < rss_before + 64 * 1024,
        "{rss_before} -> {rss_during} KiB"
    );
}

impl Agent {
    fn child_alive(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.pid())).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
                .unwrap_or_default()
                .contains(") Z ")
    }
}

#[test]
fn the_listener_survives_running_out_of_descriptors() {
    let _serial = serial();
    // Misconfigured on purpose: more connections allowed than descriptors.
    let agent = Agent::start_limited(
        "",
        &[(
            "api",
            "max_connections = 5000\nmax_connections_per_ip = 5000\nheader_read_timeout = \"30s\"",
        )],
        Some(512),
    );
    let flood = Flood::start(agent.api, 3000, 10);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fds = agent.fds();
        if fds >= 500 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors never ran out ({fds})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    flood.stop();
    // The flood's connections are gone; the listener accepts again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(
        agent.call("GET", "/api/v1/status", None, None),
        Ok((200, _))
    ) {
        assert!(
            Instant::now() < deadline,
            "the API never answered again:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let errors = agent.metric("fnm_http_accept_errors_total{listener=\"api\"}");
    println!("accept errors while out of descriptors: {errors}");
    assert!(errors >= 1.0, "{}", agent.log());
    assert!(
        agent.log().contains("accepting a connection failed"),
        "{}",
        agent.log()
    );
    let (status, _) = agent
        .call(
            "POST",
            "/api/v1/bans",
            None,
            Some(&ban("198.51.100.78/32", "src")),
        )
        .unwrap();
    assert_eq!(status, 201);
}

#[test]
fn automatic_bans_beyond_the_cap_are_reported_not_applied() {
    let _serial = serial();
    let port = common::flood::free_udp_port();
    let sflow = format!("listen = [\"127.0.0.1:{port}\"]");
    let agent = Agent::start(
        "",
        &[
            ("sflow", &sflow),
            ("detection.incoming", "udp_pps = 10000"),
            (
                "ban",
                "actions = [\"xdp_blackhole\"]\nmax_active_auto_bans = 2",
            ),
        ],
    );
    let collector: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let victims: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(10, 99, 0, i)).collect();
    let senders: Vec<_> = victims
        .iter()
        .enumerate()
        .map(|(i, v)| {
            common::flood::sflow_flood(
                collector,
                Ipv4Addr::new(198, 51, 100, 20 + i as u8),
                SocketAddrV4::new(*v, 4444),
                40_000.0,
                100,
                stop.clone(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let attacks = loop {
        let (_, attacks) = agent.call("GET", "/api/v1/attacks", None, None).unwrap();
        let with_actions = attacks
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| !a["actions"].as_array().unwrap().is_empty())
            .count();
        if with_actions >= 3 {
            break attacks;
        }
        assert!(Instant::now() < deadline, "{attacks:#}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let results: Vec<(String, String, String)> = attacks
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let action = &a["actions"][0];
            (
                a["host"].as_str().unwrap().to_owned(),
                action["result"].as_str().unwrap().to_owned(),
                action["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let applied = results.iter().filter(|r| r.1 == "ok").count();
    let not_applied: Vec<_> = results.iter().filter(|r| r.1 == "not_applied").collect();
    assert_eq!(applied, 2, "{results:?}");
    assert_eq!(not_applied.len(), 1, "{results:?}");
    assert!(
        not_applied[0].2.contains("ban.max_active_auto_bans"),
        "{results:?}"
    );
    println!(
        "capped attack on {}: {}",
        not_applied[0].0, not_applied[0].2
    );
    let (_, bans) = agent.call("GET", "/api/v1/bans", None, None).unwrap();
    assert_eq!(bans.as_array().unwrap().len(), 2, "{bans}");
    assert_eq!(
        agent.metric("fnm_auto_bans_not_applied_total{reason=\"max_active\"}"),
        1.0
    );
    assert!(
        agent.log().contains("actions not applied"),
        "{}",
        agent.log()
    );
}
