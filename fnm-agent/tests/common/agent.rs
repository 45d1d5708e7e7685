//! Runs the real `fnm-agent` binary inside a namespace, and talks to its API from there.
#![allow(dead_code)]

use super::netns::NetnsPair;
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running agent; stopped with SIGTERM on drop.
pub struct AgentProcess {
    child: Option<Child>,
    /// Namespace it runs in.
    pub ns: String,
    /// Its API address (inside `ns`).
    pub api: SocketAddr,
    /// Its metrics address (inside `ns`).
    pub metrics: SocketAddr,
    /// The directory of its config file and log (and, unless placed elsewhere, its state).
    pub state_dir: tempfile::TempDir,
    /// Its `state_dir` (bans.json, bans.journal, mitigations.json, attacks.jsonl).
    pub state_path: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
    log_path: PathBuf,
}

/// Writes an agent configuration: `config_body` (TOML without state_dir/api/prometheus) with
/// `state_path`, a 200 ms poll, and the API and metrics on `api` / `metrics`.
pub fn write_config(
    path: &std::path::Path,
    state_path: &std::path::Path,
    config_body: &str,
    api: SocketAddr,
    metrics: SocketAddr,
) {
    let config = format!(
        "state_dir = \"{}\"\npoll_interval = \"200ms\"\n{config_body}\n[api]\nlisten = \"{api}\"\n[prometheus]\nlisten = \"{metrics}\"\n",
        state_path.display()
    );
    std::fs::write(path, config).unwrap();
}

/// Runs `fnm-agent run --config <config_path>` in `ns` and waits (at most `timeout`) for it
/// to exit; returns whether it succeeded and what it printed. Panics if it is still running
/// then (it is killed first).
pub fn run_to_exit(ns: &str, config_path: &std::path::Path, timeout: Duration) -> (bool, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, binary(), "run", "--config"])
        .arg(config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start fnm-agent");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "fnm-agent still running after {timeout:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Path of the agent binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fnm-agent")
}

impl AgentProcess {
    /// Starts the agent in `ns` with `config_body` (TOML without state_dir/api/prometheus,
    /// which are filled in here).
    pub fn start(ns: &str, config_body: &str) -> Self {
        let state_dir = tempfile::tempdir().expect("tempdir");
        Self::start_with_state(ns, config_body, state_dir)
    }

    /// Starts the agent with an existing state directory (restart tests).
    pub fn start_with_state(ns: &str, config_body: &str, state_dir: tempfile::TempDir) -> Self {
        let state_path = state_dir.path().join("state");
        Self::start_with_state_at(ns, config_body, state_dir, &state_path)
    }

    /// Starts the agent with its config and log in `dir` and its `state_dir` at `state_path`
    /// (a small file system the test fills, say).
    pub fn start_with_state_at(
        ns: &str,
        config_body: &str,
        state_dir: tempfile::TempDir,
        state_path: &std::path::Path,
    ) -> Self {
        let api: SocketAddr = "127.0.0.1:19210".parse().unwrap();
        let metrics: SocketAddr = "127.0.0.1:19209".parse().unwrap();
        let config_path = state_dir.path().join("fnm-agent.toml");
        write_config(&config_path, state_path, config_body, api, metrics);
        let log_path = state_dir.path().join("agent.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, binary(), "run", "--config"])
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fnm-agent");
        let mut agent = Self {
            child: Some(child),
            ns: ns.to_owned(),
            api,
            metrics,
            state_dir,
            state_path: state_path.to_owned(),
            config_path,
            log_path,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("fnm-agent exited early ({status}):\n{}", self.log());
                }
            }
            if self.get("/api/v1/status").is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "fnm-agent API never came up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` to the agent (SIGHUP: reload).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Waits (at most 10 s) until the log contains `text` `count` times; returns the log.
    pub fn wait_log(&self, text: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.matches(text).count() >= count {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} never appeared {count} times in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's process id (`ip netns exec` runs it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET `path` on the API from inside the namespace.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        self.request("GET", path, None)
    }

    /// Any API request from inside the namespace.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let api = self.api;
        let (method, path) = (method.to_owned(), path.to_owned());
        NetnsPair::in_ns(&self.ns, move || {
            fnm_agent::client::request(api, &method, &path, body.as_ref())
                .map_err(|e| e.to_string())
        })
    }

    /// The raw text of /metrics, fetched from inside the namespace.
    pub fn metrics_text(&self) -> String {
        let addr = self.metrics;
        NetnsPair::in_ns(&self.ns, move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).expect("metrics connect");
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default()
        })
    }

    /// Runs the CLI (`fnm-agent <args> --api ...`) inside the namespace; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let api = self.api.to_string();
        let mut full = vec![binary()];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--api", &api]);
        NetnsPair::exec(&self.ns, &full)
    }

    /// Waits until the agent has polled at least twice more.
    pub fn settle(&self) {
        std::thread::sleep(Duration::from_millis(700));
    }

    /// Stops the agent with SIGTERM (clean detach) and waits; returns the state directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.terminate(libc::SIGTERM);
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.state_dir, dir)
    }

    /// Kills the agent with SIGKILL (no clean-up); returns the state directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        self.terminate(libc::SIGKILL);
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.state_dir, dir)
    }

    fn terminate(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            super::stop_child(&mut child, signal, Duration::from_secs(10));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.terminate(libc::SIGTERM);
    }
}
