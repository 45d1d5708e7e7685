//! The agent's log: `[log] level` and `format`, readable on a terminal, in a file and in the
//! journal.
//!
//! * Colour only on a terminal (and never with `NO_COLOR` set).
//! * Under systemd (`JOURNAL_STREAM` names our standard output), text lines carry no timestamp
//!   (the journal stamps every line) and start with the syslog priority (`<3>` error, `<4>`
//!   warning, `<6>` info, `<7>` debug), which journald turns into the entry's priority.
//! * `format = "json"`: one JSON object per line (`timestamp`, `level`, `target`, `fields`).
//! * `RUST_LOG`, when set, overrides `level` (e.g. `RUST_LOG=info,fnm_agent::flow=debug`).

use serde::{Deserialize, Serialize};
use std::io::IsTerminal as _;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
    EnvFilter,
};

/// `[log]`: what the agent logs and how.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Least severe level logged: `error` | `warn` | `info` | `debug` | `trace`. `RUST_LOG`,
    /// when set, overrides it. Default: `info`.
    #[serde(default)]
    pub level: LogLevel,
    /// `text` (one line per event) | `json` (one JSON object per line). Default: `text`.
    #[serde(default)]
    pub format: LogFormat,
}

/// A log level as written in the config.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// What the agent does (start-up, attacks, bans), warnings and errors.
    #[default]
    Info,
    /// Everything above and the details of each source and action.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The name as written in the config (and understood by `RUST_LOG`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-05T00:00:00.000000Z  INFO fnm_agent: message`.
    #[default]
    Text,
    /// `{"timestamp": ..., "level": "INFO", "fields": {"message": ...}, "target": ...}`.
    Json,
}

/// True when standard output is a stream of the journal: systemd sets `JOURNAL_STREAM` to
/// `DEVICE:INODE` of the socket it gave us, which is how sd-journal says to recognise it.
pub fn under_journald() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    #[cfg(unix)]
    {
        // SAFETY: fstat writes into the zeroed struct we pass and has no other effect.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(1, &mut st) } != 0 {
            return false;
        }
        // st_dev and st_ino are of different widths on different platforms.
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let (our_dev, our_ino) = (st.st_dev as u64, st.st_ino as u64);
        dev.parse() == Ok(our_dev) && ino.parse() == Ok(our_ino)
    }
    #[cfg(not(unix))]
    {
        let _ = (dev, ino);
        true
    }
}

/// True when log lines may carry colour: standard output is a terminal and `NO_COLOR` is unset.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber for `config` (once; later calls do nothing).
pub fn init(config: &LogConfig) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("RUST_LOG {spec}: {e}; logging at {}", config.level.as_str());
            EnvFilter::new(config.level.as_str())
        }),
        _ => EnvFilter::new(config.level.as_str()),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (config.format, under_journald()) {
        (LogFormat::Json, _) => builder.json().with_ansi(false).try_init(),
        (LogFormat::Text, true) => builder
            .with_ansi(false)
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
        (LogFormat::Text, false) => builder.with_ansi(colour()).try_init(),
    };
    let _ = result;
}

/// The `<N>` prefix journald reads as a line's priority (sd-daemon.h's SD_ERR ... SD_DEBUG).
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Writes an event's syslog priority, then the event as `F` formats it.
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_parses_and_defaults_to_info_text() {
        let c: LogConfig = toml::from_str("").unwrap();
        assert_eq!(c.level, LogLevel::Info);
        assert_eq!(c.format, LogFormat::Text);
        let c: LogConfig = toml::from_str("level = \"debug\"\nformat = \"json\"\n").unwrap();
        assert_eq!((c.level, c.format), (LogLevel::Debug, LogFormat::Json));
        let err = toml::from_str::<LogConfig>("format = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("xml"), "{err}");
    }

    #[test]
    fn a_journal_stream_that_is_not_our_stdout_is_ignored() {
        // The variable of a parent started by systemd, inherited by a shell: not our stream.
        std::env::set_var("JOURNAL_STREAM", "1:1");
        assert!(!under_journald());
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!under_journald());
    }
}
