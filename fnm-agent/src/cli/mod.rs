//! The operator's command-line views of a running agent, all through its HTTP API: tables with
//! human units (and `--json` for scripts), and the live `top` screen.
//!
//! `main.rs` parses the arguments; the commands here fetch, render and print.

pub mod endpoint;
pub mod listings;
pub mod networks;
pub mod tables;
pub mod top;
pub mod units;

use crate::{
    accounting::Direction,
    client::{self, ClientError},
    config::Config,
    detection::{attack::Attack, thresholds::ThresholdTable},
    mitigator::store::Mitigation,
    views::HostView,
};
use listings::{BanEntry, ThresholdsReport};
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};

/// Why a CLI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The agent answered with something this CLI does not read (a different version?).
    #[error(
        "unexpected answer from {path}: {message} (is the agent the same version as this CLI?)"
    )]
    Decode {
        /// The API path.
        path: String,
        /// serde's message.
        message: String,
    },
    /// Printing JSON failed.
    #[error("encoding JSON: {0}")]
    Encode(String),
}

/// A running agent's API as the CLI reaches it.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// Its address.
    pub addr: SocketAddr,
    /// Its bearer token.
    pub token: Option<String>,
}

impl ApiClient {
    /// One request, the JSON answer as is.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        client::request_with_token(self.addr, self.token.as_deref(), method, path, body)
    }

    /// A GET read into `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let v = self.request("GET", path, None)?;
        serde_json::from_value(v).map_err(|e| CliError::Decode {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| CliError::Encode(e.to_string()))
}

/// The API's `sort` name for what the CLI accepts: `pps`, `bits` (or `mbps`, `bps`,
/// `bytes_per_second`), `flows`, `conversations`, `packets`, `bytes`.
pub fn sort_param(sort: &str) -> Option<&'static str> {
    Some(match sort {
        "pps" => "pps",
        "bits" | "bits_per_second" | "mbps" | "bps" | "bytes_per_second" => "bytes_per_second",
        "flows" | "flows_per_second" => "flows_per_second",
        "conversations" | "conversations_per_second" => "conversations_per_second",
        "packets" => "packets",
        "bytes" => "bytes",
        _ => return None,
    })
}

/// `hosts`.
pub fn hosts(
    api: &ApiClient,
    top: usize,
    direction: Direction,
    sort: &str,
    as_json: bool,
) -> Result<String, CliError> {
    let sort = sort_param(sort).unwrap_or("pps");
    let path = format!(
        "/api/v1/hosts?direction={}&sort={sort}&limit={top}",
        direction.as_str()
    );
    let list: Vec<HostView> = api.get(&path)?;
    if as_json {
        return json(&list);
    }
    Ok(listings::hosts(&list, direction))
}

/// `attacks`.
pub fn attacks(api: &ApiClient, ongoing: bool, as_json: bool) -> Result<String, CliError> {
    let list: Vec<Attack> = api.get(if ongoing {
        "/api/v1/attacks?ongoing=true"
    } else {
        "/api/v1/attacks"
    })?;
    if as_json {
        return json(&list);
    }
    Ok(listings::attacks(&list, units::now(), ongoing))
}

/// `attacks show ID`.
pub fn attack_show(api: &ApiClient, id: &str, as_json: bool) -> Result<String, CliError> {
    let path = format!("/api/v1/attacks/{}", client::encode_segment(id));
    let a: Attack = api.get(&path)?;
    if as_json {
        return json(&a);
    }
    Ok(listings::attack_report(&a, units::now()))
}

/// `mitigations`.
pub fn mitigations(api: &ApiClient, as_json: bool) -> Result<String, CliError> {
    let list: Vec<Mitigation> = api.get("/api/v1/mitigations")?;
    if as_json {
        return json(&list);
    }
    Ok(listings::mitigations(&list, units::now()))
}

/// `bans`: manual bans and automatic mitigations, with their drop entries.
pub fn bans(api: &ApiClient, as_json: bool) -> Result<String, CliError> {
    let mitigations: Vec<Mitigation> = api.get("/api/v1/mitigations")?;
    let entries: Vec<BanEntry> = api.get("/api/v1/bans")?;
    let rows = listings::ban_rows(&mitigations, &entries);
    if as_json {
        return json(&rows);
    }
    Ok(listings::bans(&rows, units::now()))
}

/// What applies to `ip` under `config`.
pub fn thresholds_report(config: &Config, ip: IpAddr) -> ThresholdsReport {
    let table = ThresholdTable::new(&config.detection, &config.hostgroup);
    let effective = table.lookup(ip);
    let actions = effective
        .actions
        .clone()
        .unwrap_or_else(|| config.ban.actions.clone());
    ThresholdsReport {
        ip,
        network: config
            .networks
            .iter()
            .filter(|n| n.contains(ip))
            .max_by_key(|n| n.len())
            .copied(),
        hostgroup: effective.hostgroup,
        prefix: effective.prefix,
        incoming: effective.incoming,
        outgoing: effective.outgoing,
        actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
        report_only: effective.report_only,
        whitelisted: config.whitelist.iter().any(|w| w.contains(ip)),
    }
}

/// `thresholds IP`.
pub fn thresholds(config: &Config, ip: IpAddr, as_json: bool) -> Result<String, CliError> {
    let r = thresholds_report(config, ip);
    if as_json {
        return json(&r);
    }
    Ok(listings::thresholds(&r))
}
