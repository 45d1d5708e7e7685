//! The `[export.clickhouse]` section.

use crate::config::humantime_serde_compat;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[export.clickhouse]`: history in ClickHouse, written over its HTTP interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// The HTTP interface. Default: "http://127.0.0.1:8123".
    #[serde(default = "default_url")]
    pub url: String,
    /// The database of the tables (letters, digits and `_`). Default: "fnm".
    #[serde(default = "default_database")]
    pub database: String,
    /// User (HTTP basic authentication). Default: none (ClickHouse's `default`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password of `user`. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// Create the database and the tables of docs/clickhouse/schema.sql when they are
    /// missing (never alters or drops one that exists). Default: true.
    #[serde(default = "yes")]
    pub create_schema: bool,
    /// Rows are sent at least this often. Default: "1s".
    #[serde(default = "default_flush", with = "humantime_serde_compat")]
    pub flush_interval: Duration,
    /// Most rows in one INSERT. Default: 100 000.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Rows held while ClickHouse is slow or away (about 250 bytes each); beyond it new rows
    /// are dropped (counted as `queue_full`). Default: 250 000.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_rows: usize,
    /// Timeout of one HTTP request. Default: "10s".
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Days of per-slot host rows and sampled flows kept (whole days, by the table's daily
    /// partitions; the agent drops older ones every hour). 0: keep all (e.g. a TTL of your
    /// own). Default: 7.
    #[serde(default = "default_retention")]
    pub retention_days: u32,
    /// Days of the per-minute rollup, attacks and mitigations kept (whole months). 0: keep
    /// all. Default: 400.
    #[serde(default = "default_rollup_retention")]
    pub rollup_retention_days: u32,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: default_url(),
            database: default_database(),
            user: None,
            password: None,
            create_schema: true,
            flush_interval: default_flush(),
            batch_rows: default_batch_rows(),
            max_buffered_rows: default_max_buffered(),
            timeout: default_timeout(),
            retention_days: default_retention(),
            rollup_retention_days: default_rollup_retention(),
        }
    }
}

impl ClickHouseConfig {
    /// Errors a config check reports.
    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("[export.clickhouse] url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "[export.clickhouse] url {:?}: only http and https",
                self.url
            ));
        }
        if self.database.is_empty()
            || !self
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "[export.clickhouse] database {:?}: letters, digits and _ only",
                self.database
            ));
        }
        if self.flush_interval.is_zero() || self.timeout.is_zero() {
            return Err("[export.clickhouse] flush_interval and timeout must be above zero".into());
        }
        if self.batch_rows == 0 || self.max_buffered_rows < self.batch_rows {
            return Err(
                "[export.clickhouse] batch_rows must be above zero and at most max_buffered_rows"
                    .into(),
            );
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn default_url() -> String {
    "http://127.0.0.1:8123".into()
}

fn default_database() -> String {
    "fnm".into()
}

fn default_flush() -> Duration {
    Duration::from_secs(1)
}

fn default_batch_rows() -> usize {
    100_000
}

fn default_max_buffered() -> usize {
    250_000
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retention() -> u32 {
    7
}

fn default_rollup_retention() -> u32 {
    400
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClickHouseConfig, String> {
        let c: ClickHouseConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn defaults_validate_and_bad_values_say_which_key() {
        assert_eq!(parse("").unwrap(), ClickHouseConfig::default());
        for (text, key) in [
            ("url = \"ftp://x\"", "url"),
            ("url = \"not a url\"", "url"),
            ("database = \"fnm; DROP\"", "database"),
            ("batch_rows = 0", "batch_rows"),
            ("max_buffered_rows = 10\nbatch_rows = 11", "batch_rows"),
            ("flush_interval = \"0s\"", "flush_interval"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse("colour = 1").unwrap_err().contains("unknown field"));
    }
}
