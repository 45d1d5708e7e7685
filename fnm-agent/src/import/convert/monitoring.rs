//! `[prometheus]` and `[log]`.

use super::{atoi, Converter};
use std::net::IpAddr;

impl Converter<'_> {
    /// `[prometheus]`.
    pub(super) fn prometheus(&mut self) {
        let on = self.take_on("prometheus", false);
        let host = self
            .take("prometheus_host")
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = self.take("prometheus_port").map_or(9209, |v| atoi(&v));
        if !on {
            for key in ["prometheus_host", "prometheus_port"] {
                self.not_carried(key, "prometheus is off");
            }
            self.w.comment(
                "prometheus is off: fnm serves /metrics anyway, on 127.0.0.1:9209 \
                 ([prometheus] listen).",
            );
            return;
        }
        let addr = host
            .parse::<IpAddr>()
            .ok()
            .filter(|_| (1..=65535).contains(&port))
            .map(|ip| std::net::SocketAddr::new(ip, port as u16));
        self.w.table("prometheus");
        match addr {
            Some(a) if a.ip().is_loopback() => self.w.key(
                "listen",
                a.to_string(),
                "prometheus = on, prometheus_host, prometheus_port (fnm's metric names differ: \
                 docs/monitoring.md)",
            ),
            Some(a) => {
                let t = format!(
                    "prometheus_host = {host}: beyond loopback fnm asks for a bearer token: set \
                     token_file (docs/security.md), then listen = \"{a}\""
                );
                self.w.comment(&t);
                self.warn(t);
            }
            None => {
                let t = format!("prometheus_host/port = {host}:{port}: not an address");
                self.w.comment(&t);
                self.warn(t);
            }
        }
    }

    /// `[log]`.
    pub(super) fn log(&mut self) {
        let level = self.take("logging_level");
        self.w.table("log");
        let (value, note) = match level.as_deref() {
            Some("debug") => ("debug", "logging_level = debug"),
            Some("info") | None => ("info", "logging_level (info)"),
            Some(_) => ("info", "logging_level is neither info nor debug: info"),
        };
        self.w.key("level", value, note);
        for k in [
            "logging_local_syslog_logging",
            "logging_remote_syslog_logging",
            "logging_remote_syslog_server",
            "logging_remote_syslog_port",
        ] {
            self.not_carried(
                k,
                "fnm logs to stderr, which systemd's journal keeps; forward the journal to a \
                 local or remote syslog (journald's ForwardToSyslog, rsyslog)",
            );
        }
    }
}
