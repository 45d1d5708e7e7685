//! A real ClickHouse server (Debian's `clickhouse-server`, installed by `cargo xtask setup`)
//! of the test's own: private configuration, data directory and free ports on 127.0.0.1.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BINARY: &str = "/usr/sbin/clickhouse-server";

/// A running server.
pub struct ClickHouse {
    child: Option<Child>,
    dir: PathBuf,
    /// Its HTTP port on 127.0.0.1.
    pub http_port: u16,
    tcp_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl ClickHouse {
    /// Starts a server keeping its data under `dir` and waits (at most 60 s) until it answers.
    pub fn start(dir: &Path) -> Self {
        let mut server = Self::prepare(dir);
        server.restart();
        server
    }

    /// A server with its ports chosen, not started yet ([`ClickHouse::restart`] starts it).
    pub fn prepare(dir: &Path) -> Self {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: run `cargo xtask setup` (it installs clickhouse-server)"
        );
        Self {
            child: None,
            dir: dir.to_owned(),
            http_port: free_port(),
            tcp_port: free_port(),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Starts it (again: same ports and data, after [`ClickHouse::stop`]).
    pub fn restart(&mut self) {
        let d = self.dir.display();
        let config = self.dir.join("config.xml");
        std::fs::write(
            &config,
            format!(
                "<yandex>\n<logger><level>warning</level><console>1</console></logger>\n\
                 <http_port>{}</http_port>\n<tcp_port>{}</tcp_port>\n\
                 <listen_host>127.0.0.1</listen_host>\n<path>{d}/data/</path>\n\
                 <tmp_path>{d}/tmp/</tmp_path>\n\
                 <users_config>/etc/clickhouse-server/users.xml</users_config>\n\
                 <default_profile>default</default_profile>\n\
                 <default_database>default</default_database>\n\
                 <mark_cache_size>536870912</mark_cache_size>\n</yandex>\n",
                self.http_port, self.tcp_port
            ),
        )
        .expect("write clickhouse config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("clickhouse log");
        let child = Command::new(BINARY)
            .arg(format!("--config-file={}", config.display()))
            .current_dir(&self.dir)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.query_in("default", "SELECT 1").as_deref() != Ok("1\n") {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("clickhouse-server exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "clickhouse-server never answered:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after 20 s); its data stay.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        super::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(20));
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs `sql` in database `fnm`; the answer's body, or the error ClickHouse gave.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        self.query_in("fnm", sql)
    }

    /// Runs `sql` in `database` over HTTP/1.0.
    pub fn query_in(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "POST /?database={database} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        )
        .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            Ok(body.to_owned())
        } else {
            Err(format!(
                "{}: {body}",
                head.lines().next().unwrap_or_default()
            ))
        }
    }

    /// The first column of the first row of `sql`'s answer, as a number (0 when empty).
    pub fn number(&self, sql: &str) -> f64 {
        self.query(sql)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
