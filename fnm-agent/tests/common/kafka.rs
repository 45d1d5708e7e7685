//! A real Kafka-compatible broker for the export and fleet tests: tansu with in-memory
//! storage (installed by `cargo xtask setup`).
#![allow(dead_code)]

use super::netns::NetnsPair;
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The topics fnm uses with the default prefix.
pub const TOPICS: [&str; 4] = ["fnm.hosts", "fnm.attacks", "fnm.mitigations", "fnm.flows"];
/// Partitions of each topic the tests create.
pub const PARTITIONS: i32 = 3;

/// The tansu binary: where `cargo xtask setup` installs it, else PATH.
pub fn tansu() -> String {
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let installed = format!("{home}/bin/tansu");
    if std::path::Path::new(&installed).exists() {
        installed
    } else {
        "tansu".into()
    }
}

/// A tansu broker on 127.0.0.1:`port` (inside `ns` when given), with fnm's topics created.
pub struct Broker {
    child: Child,
    /// `127.0.0.1:port`.
    pub addr: String,
}

impl Broker {
    /// Starts it and creates [`TOPICS`].
    pub fn start(ns: Option<&str>, port: u16) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let command = |args: &[&str]| {
            let mut c = match ns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, &tansu()]);
                    c
                }
                None => Command::new(tansu()),
            };
            c.args(args);
            c
        };
        let child = command(&[
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(match std::env::var("FNM_TANSU_LOG") {
            Ok(path) => Stdio::from(std::fs::File::create(format!("{path}.out")).unwrap()),
            Err(_) => Stdio::null(),
        })
        .stderr(match std::env::var("FNM_TANSU_LOG") {
            Ok(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            Err(_) => Stdio::null(),
        })
        .spawn()
        .expect("start tansu (cargo xtask setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = {
            let addr = addr.clone();
            move || std::net::TcpStream::connect(&addr).is_ok()
        };
        loop {
            let up = match ns {
                Some(ns) => NetnsPair::in_ns(ns, probe.clone()),
                None => probe(),
            };
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "tansu never listened on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        for topic in TOPICS {
            let out = command(&["topic", "create", topic, "--broker", &url])
                .args(["--partitions", &PARTITIONS.to_string()])
                .output()
                .expect("tansu topic create");
            assert!(
                out.status.success(),
                "creating {topic}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self { child, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
