//! The HTTP JSON API (`api.listen`): hosts, bans, status.
//!
//! Every error is a JSON object `{"error": "..."}` with a 4xx/5xx status; no request can make
//! the agent panic.

use crate::{
    accounting::{Direction, HostDirection},
    agent::{Agent, AgentError},
    bans::{BanOrigin, DropMatch},
    prefix::Prefix,
    views::HostView,
};
use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;
use std::{collections::HashMap, net::IpAddr, sync::Arc};

/// Largest `limit` a host listing returns.
pub const MAX_LIMIT: usize = 10_000;

/// An API error: status and message.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let status = match e {
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::DataPlane(_) | AgentError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The API's routes over the shared agent.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/api/v1/hosts", get(list_hosts))
        .route("/api/v1/hosts/{ip}", get(get_host))
        .route("/api/v1/bans", get(list_bans).post(add_ban))
        .route("/api/v1/bans/{*prefix}", axum::routing::delete(delete_ban))
        .route("/api/v1/status", get(status))
        .route("/api/v1/attacks", get(list_attacks))
        .route("/api/v1/attacks/{id}", get(get_attack))
        .route("/api/v1/mitigations", get(list_mitigations))
        .route("/api/v1/thresholds/{ip}", get(get_thresholds))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(agent)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    agent: Arc<Agent>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(agent))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Sort keys of the host listing.
fn sort_key(name: &str) -> Option<fn(&HostDirection) -> f64> {
    Some(match name {
        "pps" => |d| d.rates.pps,
        "bps" | "bytes_per_second" => |d| d.rates.bytes_per_second,
        "flows" | "flows_per_second" => |d| d.rates.flows_per_second,
        "packets" => |d| d.total.packets as f64,
        "bytes" => |d| d.total.bytes as f64,
        _ => return None,
    })
}

async fn list_hosts(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    for k in q.keys() {
        if !matches!(k.as_str(), "direction" | "sort" | "limit") {
            return Err(bad_request(format!(
                "unknown parameter {k:?} (direction, sort, limit)"
            )));
        }
    }
    let direction: Direction = q
        .get("direction")
        .map(|d| d.parse())
        .transpose()
        .map_err(bad_request)?
        .unwrap_or(Direction::Incoming);
    let sort = q.get("sort").map(String::as_str).unwrap_or("pps");
    let key = sort_key(sort).ok_or_else(|| {
        bad_request(format!(
            "sort must be pps, bps, flows_per_second, packets or bytes, not {sort:?}"
        ))
    })?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| bad_request(format!("limit must be a number, not {l:?}")))?
            .min(MAX_LIMIT),
        None => 100,
    };
    let acc = agent.accounting();
    Ok(Json(
        acc.top(direction, limit, key)
            .into_iter()
            .map(|(ip, h)| HostView::new(ip, h))
            .collect(),
    ))
}

async fn get_host(
    State(agent): State<Arc<Agent>>,
    Path(ip): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| bad_request(format!("{ip:?} is not an IP address")))?;
    let acc = agent.accounting();
    match acc.host(ip) {
        Some(h) => Ok(Json(HostView::new(ip, h))),
        None if acc.is_local(ip) => Ok(Json(HostView::new(ip, &Default::default()))),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{ip} is not inside the configured networks"),
        )),
    }
}

fn ban_json(agent: &Agent, ban: &crate::bans::Ban) -> serde_json::Value {
    let (packets, bytes) = agent
        .ban_counter(ban.prefix, ban.match_on)
        .unwrap_or((0, 0));
    let mut v = serde_json::to_value(ban).unwrap_or_default();
    v["dropped_packets"] = packets.into();
    v["dropped_bytes"] = bytes.into();
    v
}

async fn list_bans(State(agent): State<Arc<Agent>>) -> Json<Vec<serde_json::Value>> {
    let bans: Vec<_> = agent.bans().list().cloned().collect();
    Json(bans.iter().map(|b| ban_json(&agent, b)).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    prefix: String,
    #[serde(rename = "match")]
    match_on: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn add_ban(State(agent): State<Arc<Agent>>, body: Bytes) -> Result<Response, ApiError> {
    let req: BanRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid ban request: {e}")))?;
    let prefix: Prefix = req
        .prefix
        .parse()
        .map_err(|e: crate::prefix::PrefixError| bad_request(e.to_string()))?;
    let match_on: DropMatch = req.match_on.parse().map_err(bad_request)?;
    let duration = req
        .duration
        .map(|d| {
            humantime::parse_duration(&d).map_err(|e| bad_request(format!("duration {d:?}: {e}")))
        })
        .transpose()?;
    let agent2 = agent.clone();
    let ban = tokio::task::spawn_blocking(move || {
        agent2.ban(
            prefix,
            match_on,
            duration,
            BanOrigin::Manual,
            req.reason.unwrap_or_default(),
        )
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((StatusCode::CREATED, Json(ban_json(&agent, &ban))).into_response())
}

async fn delete_ban(
    State(agent): State<Arc<Agent>>,
    Path(prefix): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let prefix: Prefix = prefix
        .trim_start_matches('/')
        .parse()
        .map_err(|e: crate::prefix::PrefixError| bad_request(e.to_string()))?;
    let match_on: DropMatch = q
        .get("match")
        .ok_or_else(|| bad_request("query parameter match=src|dst is required"))?
        .parse()
        .map_err(bad_request)?;
    let ban = tokio::task::spawn_blocking(move || agent.unban(prefix, match_on))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(serde_json::to_value(ban).unwrap_or_default()))
}

async fn status(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    let hosts = agent.accounting().host_count();
    let bans = agent.bans().len();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": agent.now_ms() / 1000,
        "hosts": hosts,
        "bans": bans,
        "xdp": agent.xdp_status(),
    }))
}

async fn list_attacks(
    State(agent): State<Arc<Agent>>,
) -> Json<Vec<crate::detection::attack::Attack>> {
    Json(agent.attacks())
}

async fn get_attack(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Json<crate::detection::attack::Attack>, ApiError> {
    agent
        .attack(&id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no attack {id:?}")))
}

async fn list_mitigations(
    State(agent): State<Arc<Agent>>,
) -> Json<Vec<crate::mitigation::Mitigation>> {
    Json(agent.mitigations())
}

async fn get_thresholds(
    State(agent): State<Arc<Agent>>,
    Path(ip): Path<String>,
) -> Result<Json<crate::detection::thresholds::Effective>, ApiError> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| bad_request(format!("{ip:?} is not an IP address")))?;
    Ok(Json(agent.thresholds(ip)))
}
