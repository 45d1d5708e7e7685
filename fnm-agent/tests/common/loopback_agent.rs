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
    child: Option<Child>,
    /// Its API address.
    pub api: SocketAddr,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
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
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let config = dir.join("fnm.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\n{body}\n[api]\nlisten = \"{api}\"\n\
                 [prometheus]\nlisten = \"{metrics}\"\n",
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
        let mut agent = Self {
            child: Some(child),
            api,
            metrics,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while fnm_agent::client::request(api, "GET", "/api/v1/status", None).is_err() {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(Child::try_wait) {
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

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// GET `path` on its API.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        fnm_agent::client::request(self.api, "GET", path, None).map_err(|e| e.to_string())
    }

    /// Its attacks (none when the API does not answer).
    pub fn attacks(&self) -> Vec<serde_json::Value> {
        self.get("/api/v1/attacks")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The value of the first `/metrics` line that starts with `name`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Kills it outright (SIGKILL): no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LoopbackAgent {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        super::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10));
    }
}
