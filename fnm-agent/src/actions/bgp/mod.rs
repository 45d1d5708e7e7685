//! BGP mitigation: announces and withdraws blackhole routes (the victim's /32 or /128 with
//! RFC 7999 `65535:666` or other communities) and flowspec rules (RFC 8955/8956) for an attack's
//! fingerprint, through GoBGP's gRPC API or ExaBGP's text API.
//!
//! [`BgpAnnouncer::from_config`] picks the backend named by [`BgpConfig::backend`]; both backends
//! bound every call by [`BgpConfig::timeout`], so a dead daemon fails a ban instead of blocking it.

pub mod action;
mod config;
pub mod exabgp;
mod flowspec;
pub mod gobgp;
pub mod gobgp_api;

pub use action::{actions, flowspec_for};
pub use config::{BgpAnnounce, BgpBackend, BgpConfig, Community, CommunityError, RouteRole};
pub use exabgp::ExabgpAnnouncer;
pub use flowspec::{
    FlowspecAction, FlowspecError, FlowspecRule, FragmentMatch, TcpFlagsMatch, ValueRange,
    MAX_RANGES,
};
pub use gobgp::GobgpAnnouncer;

use crate::prefix::Prefix;
use std::{path::PathBuf, time::Duration};

/// Why an announcement or withdrawal failed.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// The flowspec rule cannot be encoded.
    #[error(transparent)]
    Flowspec(#[from] FlowspecError),
    /// Opening or writing ExaBGP's command pipe failed (`ENXIO`: exabgp is not running).
    #[error("exabgp command pipe {path}: {}", pipe_reason(source))]
    ExabgpPipe {
        /// The pipe.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An ExaBGP command longer than one atomic pipe write.
    #[error("exabgp command of {0} bytes is longer than an atomic pipe write")]
    CommandTooLong(usize),
    /// The gobgpd API address is not a valid endpoint.
    #[error("gobgp API address {address}: {source}")]
    GobgpEndpoint {
        /// The configured address.
        address: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// gobgpd refused the request or could not be reached.
    #[error("gobgp API: {}", status_text(.0))]
    Gobgp(Box<tonic::Status>),
    /// The daemon did not take the command within the configured timeout.
    #[error("BGP daemon did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// Why the pipe could not be used, with the likely cause of the usual errors.
fn pipe_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENXIO) => format!("nobody reads it, is exabgp running? ({e})"),
        _ if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{e}; create it with mkfifo before starting exabgp")
        }
        _ => e.to_string(),
    }
}

/// A gRPC status as an operator reads it: its code, its message and the transport error
/// behind it, each once (`unavailable: tcp connect error: Connection refused (os error 111)`),
/// not tonic's dump of details and metadata.
pub fn status_text(status: &tonic::Status) -> String {
    let code = status.code().to_string();
    let code = code.strip_suffix(" error").unwrap_or(&code).to_lowercase();
    let mut messages = vec![code, status.message().to_owned()];
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        messages.push(e.to_string());
        cause = e.source();
    }
    crate::errors::join(messages)
}

/// Announces and withdraws through the configured backend.
#[derive(Debug, Clone)]
pub enum BgpAnnouncer {
    /// GoBGP's gRPC API.
    Gobgp(GobgpAnnouncer),
    /// ExaBGP's command pipe.
    Exabgp(ExabgpAnnouncer),
}

impl BgpAnnouncer {
    /// The announcer for `config.backend`; connects on first use. Must be called inside a Tokio
    /// runtime.
    pub fn from_config(config: &BgpConfig) -> Result<Self, BgpError> {
        Ok(match config.backend {
            BgpBackend::Gobgp => BgpAnnouncer::Gobgp(GobgpAnnouncer::new(config)?),
            BgpBackend::Exabgp => BgpAnnouncer::Exabgp(ExabgpAnnouncer::new(config)),
        })
    }

    /// Announces `prefix` (normally the victim's /32 or /128) with the blackhole next hop and
    /// communities.
    pub async fn announce_blackhole(&self, prefix: Prefix) -> Result<(), BgpError> {
        match self {
            BgpAnnouncer::Gobgp(gobgp) => gobgp.announce_blackhole(prefix).await,
            BgpAnnouncer::Exabgp(exabgp) => exabgp.announce_blackhole(prefix).await,
        }
    }

    /// Announces `prefix` with the blackhole next hop and `communities` (a host or subnet
    /// route's own, [`BgpConfig::communities_for`]).
    pub async fn announce_blackhole_with(
        &self,
        prefix: Prefix,
        communities: &[Community],
    ) -> Result<(), BgpError> {
        match self {
            BgpAnnouncer::Gobgp(gobgp) => gobgp.announce_blackhole_with(prefix, communities).await,
            BgpAnnouncer::Exabgp(exabgp) => {
                exabgp.announce_blackhole_with(prefix, communities).await
            }
        }
    }

    /// Withdraws the blackhole route of `prefix`.
    pub async fn withdraw_blackhole(&self, prefix: Prefix) -> Result<(), BgpError> {
        match self {
            BgpAnnouncer::Gobgp(gobgp) => gobgp.withdraw_blackhole(prefix).await,
            BgpAnnouncer::Exabgp(exabgp) => exabgp.withdraw_blackhole(prefix).await,
        }
    }

    /// Announces a flowspec rule.
    pub async fn announce_flowspec(&self, rule: &FlowspecRule) -> Result<(), BgpError> {
        match self {
            BgpAnnouncer::Gobgp(gobgp) => gobgp.announce_flowspec(rule).await,
            BgpAnnouncer::Exabgp(exabgp) => exabgp.announce_flowspec(rule).await,
        }
    }

    /// Withdraws a flowspec rule announced before (the same rule value).
    pub async fn withdraw_flowspec(&self, rule: &FlowspecRule) -> Result<(), BgpError> {
        match self {
            BgpAnnouncer::Gobgp(gobgp) => gobgp.withdraw_flowspec(rule).await,
            BgpAnnouncer::Exabgp(exabgp) => exabgp.withdraw_flowspec(rule).await,
        }
    }

    /// Asks the daemon whether it would take an announcement now, changing nothing; says what
    /// answered (`check-config --online`).
    pub async fn probe(&self) -> Result<String, BgpError> {
        match self {
            BgpAnnouncer::Gobgp(gobgp) => gobgp.probe().await,
            BgpAnnouncer::Exabgp(exabgp) => exabgp.probe().await,
        }
    }
}
