//! The HTTP JSON API (`api.listen`): hosts, bans, attacks, mitigations, status.
//!
//! Every error is a JSON object `{"error": "..."}` with a 4xx/5xx status (a refused ban adds
//! `"code"`, the check that refused it); no request can make the agent panic. Reads come from
//! the engine's and the mitigator's published snapshots (or, for one host or a top-N, a
//! question the engine answers between ticks); bans and unbans are requests to the mitigator,
//! answered with their real outcome. Connection limits, timeouts, body limit and the bearer
//! token are the [`crate::http`] server's.

use crate::{
    accounting::Direction,
    bans::DropMatch,
    detection::{attack::Attack, thresholds::ThresholdTable},
    engine::{core::HostSort, input::InputStats, EngineClient, EngineCommand},
    http::ServerOptions,
    mitigator::{
        policy::MAX_REASON_BYTES, store::Mitigation, ManualBan, MitigatorError, MitigatorHandle,
        MitigatorView, MAX_BAN_DURATION,
    },
    prefix::Prefix,
    traffic::Source,
    views::HostView,
};
use axum::{
    body::Bytes,
    extract::{ConnectInfo, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::json;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

/// Largest `limit` a host listing returns.
pub const MAX_LIMIT: usize = 10_000;
/// Longest wait for the engine to answer a question.
pub const ENGINE_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    /// The engine's snapshot and command queue.
    pub engine: EngineClient,
    /// The mitigator.
    pub mitigator: MitigatorHandle,
    /// The configuration in force (a reload replaces it).
    pub config: crate::reload::SharedConfig,
    /// Where `POST /api/v1/reload` goes (`None`: reload not offered).
    pub reload: Option<crate::reload::ReloadTrigger>,
    /// The sources' hand-over counters.
    pub inputs: Arc<InputStats>,
    /// Each export sink's counters (empty: nothing exported).
    pub export: Vec<Arc<crate::export::ExportStats>>,
}

/// An API error: status, message, and for a refused ban the check that refused it.
pub struct ApiError(StatusCode, String, Option<&'static str>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.2 {
            Some(code) => json!({ "error": self.1, "code": code }),
            None => json!({ "error": self.1 }),
        };
        (self.0, Json(body)).into_response()
    }
}

impl From<MitigatorError> for ApiError {
    fn from(e: MitigatorError) -> Self {
        let (status, code) = match &e {
            MitigatorError::Refused(r) => (StatusCode::CONFLICT, Some(r.code())),
            MitigatorError::Invalid(_) => (StatusCode::BAD_REQUEST, None),
            MitigatorError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            MitigatorError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
            MitigatorError::Gone => (StatusCode::SERVICE_UNAVAILABLE, None),
        };
        ApiError(status, e.to_string(), code)
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into(), None)
}

fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into(), None)
}

fn engine_busy() -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the engine did not answer in time; try again".into(),
        None,
    )
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/hosts", get(list_hosts))
        .route("/api/v1/hosts/{ip}", get(get_host))
        .route("/api/v1/bans", get(list_bans).post(add_ban))
        .route("/api/v1/bans/{*prefix}", axum::routing::delete(delete_ban))
        .route("/api/v1/status", get(status))
        .route("/api/v1/attacks", get(list_attacks))
        .route("/api/v1/attacks/{id}", get(get_attack))
        .route("/api/v1/attacks/{id}/pcap", get(crate::attack_pcap::serve))
        .route("/api/v1/mitigations", get(list_mitigations))
        .route("/api/v1/networks", get(crate::network_views::list))
        .route("/api/v1/thresholds/{ip}", get(get_thresholds))
        .route("/api/v1/reload", axum::routing::post(reload))
        .fallback(|| async { not_found("no such endpoint") })
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, with the limits, timeouts and
/// authentication of `options`.
pub async fn serve(
    state: ApiState,
    listener: tokio::net::TcpListener,
    options: ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = crate::http::harden(router(state), &options);
    crate::http::serve(listener, app, options, shutdown).await
}

/// Asks the engine and waits for its answer.
async fn ask<T>(
    engine: &EngineClient,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> EngineCommand,
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !engine.command(make(tx)) {
        return Err(engine_busy());
    }
    tokio::time::timeout(ENGINE_ANSWER_TIMEOUT, rx)
        .await
        .map_err(|_| engine_busy())?
        .map_err(|_| engine_busy())
}

async fn list_hosts(
    State(st): State<ApiState>,
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
    let sort = HostSort::parse(sort).ok_or_else(|| {
        bad_request(format!(
            "sort must be pps, bits_per_second (or mbps, bytes_per_second), flows_per_second, \
             conversations_per_second, packets or bytes, not {sort:?}"
        ))
    })?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| bad_request(format!("limit must be a number, not {l:?}")))?
            .min(MAX_LIMIT),
        None => 100,
    };
    let hosts = ask(&st.engine, |reply| EngineCommand::TopHosts {
        direction,
        sort,
        limit,
        reply,
    })
    .await?;
    Ok(Json(hosts))
}

async fn get_host(
    State(st): State<ApiState>,
    Path(ip): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| bad_request(format!("{ip:?} is not an IP address")))?;
    match ask(&st.engine, |reply| EngineCommand::Host(ip, reply)).await? {
        Some(h) => Ok(Json(h)),
        None => Err(not_found(format!(
            "{ip} is not inside the configured networks"
        ))),
    }
}

async fn list_bans(State(st): State<ApiState>) -> Json<Vec<crate::mitigator::BanView>> {
    Json(st.mitigator.view().bans.clone())
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
    #[serde(default)]
    force: bool,
}

async fn add_ban(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: BanRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid ban request: {e}")))?;
    let reason = req.reason.unwrap_or_default();
    if reason.len() > MAX_REASON_BYTES {
        return Err(bad_request(format!(
            "reason is {} bytes long; at most {MAX_REASON_BYTES} are allowed",
            reason.len()
        )));
    }
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
    if duration.is_some_and(|d| d > MAX_BAN_DURATION) {
        return Err(bad_request(
            "duration is longer than ten years; leave it out to ban until unbanned",
        ));
    }
    let (ban, actions) = st
        .mitigator
        .ban(ManualBan {
            prefix,
            match_on,
            duration,
            reason,
            force: req.force,
            requester: Some(peer.ip()),
        })
        .await?;
    let mut body = serde_json::to_value(&ban).unwrap_or_default();
    body["actions"] = serde_json::to_value(&actions).unwrap_or_default();
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn delete_ban(
    State(st): State<ApiState>,
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
    let ban = st.mitigator.unban(prefix, match_on).await?;
    Ok(Json(serde_json::to_value(ban).unwrap_or_default()))
}

async fn status(State(st): State<ApiState>) -> Json<serde_json::Value> {
    let snap = st.engine.snapshot();
    let view = st.mitigator.view();
    let sources: serde_json::Map<String, serde_json::Value> = Source::ALL
        .iter()
        .filter(|s| **s != Source::Replay)
        .map(|s| {
            let c = st.inputs.of(*s);
            (
                s.as_str().to_owned(),
                json!({
                    "batches": c.batches.load(Relaxed),
                    "records": c.records.load(Relaxed),
                    "dropped_batches": c.dropped_batches.load(Relaxed),
                    "dropped_records": c.dropped_records.load(Relaxed),
                }),
            )
        })
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": snap.uptime_ms / 1000,
        "hosts": snap.hosts_known,
        "hosts_capacity": snap.hosts_capacity,
        "hosts_table_full": Source::ALL
            .iter()
            .filter(|s| **s != Source::Replay)
            .map(|s| (s.as_str().to_owned(), json!(snap.table.full[s.index()])))
            .collect::<serde_json::Map<_, _>>(),
        "hosts_evicted": crate::accounting::EvictReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), json!(snap.table.evicted[r.index()])))
            .collect::<serde_json::Map<_, _>>(),
        "bans": view.bans.len(),
        "mitigations": view.active.len(),
        "attacks_ongoing": snap.ongoing.len(),
        "xdp": snap.xdp,
        "sources": sources,
        "engine": {
            "ticks": snap.ticks,
            "overruns": st.engine.stats.overruns.load(Relaxed),
            "decisions_dropped": st.engine.stats.decisions_dropped.load(Relaxed),
        },
        "export": (!st.export.is_empty()).then(|| {
            st.export
                .iter()
                .map(|e| (e.sink.as_str(), e.status()))
                .collect::<std::collections::BTreeMap<_, _>>()
        }),
    }))
}

/// An attack as shown: the live peak while it goes on, and its actions' outcomes.
fn shown(a: &Attack, snap: &crate::engine::snapshot::Snapshot, view: &MitigatorView) -> Attack {
    let mut a = a.clone();
    if a.ended_unix_ms.is_none() {
        if let Some(p) = snap.live_peak(&a.id) {
            a.peak_rates = a.peak_rates.max(&p);
        }
    }
    if let Some(states) = view.actions_of(&a.id) {
        a.actions = states.to_vec();
    }
    a
}

/// `GET /api/v1/attacks[?ongoing=true][&limit=N]`: newest first; `ongoing` keeps the attacks
/// in progress (what `top` polls every second, without the whole book).
async fn list_attacks(
    State(st): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Attack>>, ApiError> {
    let mut ongoing = false;
    let mut limit = usize::MAX;
    for (k, v) in &q {
        match k.as_str() {
            "ongoing" => {
                ongoing = v
                    .parse()
                    .map_err(|_| bad_request(format!("ongoing must be true or false, not {v:?}")))?
            }
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| bad_request(format!("limit must be a number, not {v:?}")))?
            }
            _ => {
                return Err(bad_request(format!(
                    "unknown parameter {k:?} (ongoing, limit)"
                )))
            }
        }
    }
    let (snap, view) = (st.engine.snapshot(), st.mitigator.view());
    Ok(Json(
        snap.attacks
            .iter()
            .filter(|a| !ongoing || a.ended_unix_ms.is_none())
            .take(limit)
            .map(|a| shown(a, &snap, &view))
            .collect(),
    ))
}

async fn get_attack(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Attack>, ApiError> {
    let (snap, view) = (st.engine.snapshot(), st.mitigator.view());
    snap.attacks
        .iter()
        .find(|a| a.id == id)
        .map(|a| Json(shown(a, &snap, &view)))
        .ok_or_else(|| not_found(format!("no attack {id}")))
}

async fn list_mitigations(State(st): State<ApiState>) -> Json<Vec<Mitigation>> {
    let mut active = st.mitigator.view().active.clone();
    for m in &mut active {
        m.attack = None;
    }
    Json(active)
}

/// What applies to an address, and `network`: the `networks` prefix holding it (`null`: the
/// agent does not count its traffic, so no threshold applies).
async fn get_thresholds(
    State(st): State<ApiState>,
    Path(ip): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| bad_request(format!("{ip:?} is not an IP address")))?;
    let config = st.config.load();
    let table = ThresholdTable::new(&config.detection, &config.hostgroup);
    let mut answer = serde_json::to_value(table.lookup(ip)).unwrap_or_default();
    answer["network"] = json!(crate::cli::thresholds_report(&config, ip).network);
    Ok(Json(answer))
}

/// Longest wait for a reload to be applied.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// `POST /api/v1/reload`: reads the configuration file again and puts it in force (see
/// [`crate::reload`]). 200 with what changed and what needs a restart; 400 (`"code":
/// "invalid"`) when the file is refused, 500 (`"code": "failed"`) when applying it failed and
/// was undone: either way the running configuration is kept.
async fn reload(
    State(st): State<ApiState>,
) -> Result<Json<crate::reload::ReloadOutcome>, ApiError> {
    use crate::reload::ReloadResult;
    let unavailable = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent does not offer reloads".into(),
            None,
        )
    };
    let trigger = st.reload.as_ref().ok_or_else(unavailable)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    trigger.send(tx).await.map_err(|_| unavailable())?;
    let outcome = tokio::time::timeout(RELOAD_TIMEOUT, rx)
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the reload did not finish in time; see the agent's log".into(),
                None,
            )
        })?
        .map_err(|_| unavailable())?;
    let kept = |status, code| {
        ApiError(
            status,
            format!(
                "{}: the running configuration is kept",
                outcome.error.as_deref().unwrap_or("?")
            ),
            Some(code),
        )
    };
    match outcome.result {
        ReloadResult::Success => Ok(Json(outcome)),
        ReloadResult::Invalid => Err(kept(StatusCode::BAD_REQUEST, "invalid")),
        ReloadResult::Failed => Err(kept(StatusCode::INTERNAL_SERVER_ERROR, "failed")),
    }
}
