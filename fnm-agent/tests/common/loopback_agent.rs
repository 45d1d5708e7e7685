//! The real `fnm-agent` on 127.0.0.1 of the test's own namespace, fed by flow collectors on
//! loopback ports (no XDP, no capture): for tests that pair it with daemons listening on
//! 127.0.0.1 (FastNetMon, gobgpd, exabgp). Stopped with SIGTERM on drop.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running agent.
pub struct LoopbackAgent {
    child: Child,
    /// Its API address.
    pub api: SocketAddr,
    log: PathBuf,
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl LoopbackAgent {
    /// Writes `dir/fnm.toml` (`state_dir` in `dir/state`, `body`, the API and metrics on free
    /// ports), starts the agent and waits (at most 30 s) for its API. `body` is TOML without
    /// `state_dir`, `[api]` and `[prometheus]`.
    pub fn start(dir: &Path, body: &str) -> Self {
        let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let metrics = free_tcp_port();
        let config = dir.join("fnm.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\n{body}\n[api]\nlisten = \"{api}\"\n\
                 [prometheus]\nlisten = \"127.0.0.1:{metrics}\"\n",
                dir.join("state").display()
            ),
        )
        .expect("write agent config");
        let log = dir.join("agent.log");
        let out = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(super::agent::binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fnm-agent");
        let mut agent = Self { child, api, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while fnm_agent::client::request(api, "GET", "/api/v1/status", None).is_err() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("fnm-agent exited early ({status}):\n{}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "fnm-agent API never came up:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` on its API.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        fnm_agent::client::request(self.api, "GET", path, None).map_err(|e| e.to_string())
    }
}

impl Drop for LoopbackAgent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
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
