//! The HTTP servers of the API and `/metrics`, built for an agent that is itself attacked.
//!
//! Each listener runs its own accept loop around hyper's HTTP/1 connection:
//!
//! - **Connection limits.** At most `max_connections` connections are open at once, and at
//!   most `max_connections_per_ip` from one client address (an IPv6 client's /64), so the
//!   agent's descriptors (state files, collector sockets, the other listener) cannot be
//!   exhausted through a listener. When every slot is taken, a new connection evicts the
//!   connection that has been idle longest (one waiting for a request, not one being
//!   answered): idle and slow connections cannot keep a client that sends its request at once
//!   out. Only when every connection is busy with a request, or the client's address is at
//!   its own limit, is the new one refused: answered `503` with a JSON body if the socket takes
//!   it at once, and closed.
//! - **Accept errors never stop the listener.** When `accept` fails for lack of descriptors or
//!   memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) the loop backs off (10 ms doubling to 1 s),
//!   counts it, warns at most every 10 s, and accepts again.
//! - **Timeouts.** hyper's header-read timeout closes a connection that has not sent a whole
//!   request head within `header_read_timeout` of its start or of its previous answer
//!   (slowloris, idle keep-alive). `request_timeout` bounds each request from head to answer
//!   (body included; 408). `idle_timeout` closes a connection that moved no byte either way
//!   for that long while none of its requests was being handled (a client that stopped
//!   reading its answer).
//! - **Bodies** larger than `max_body_bytes` are answered 413 (from `Content-Length` before
//!   reading, or once the limit is read).
//! - **Memory goes back.** Once a burst of connections is over (the open count fell to a
//!   quarter of its peak of at least 64), the allocator is asked to return its free pages to
//!   the system (glibc `malloc_trim`), so a flood does not leave the agent's resident size
//!   raised.
//! - **Every error is JSON** `{"error": "..."}`, also those of the layers and extractors (only
//!   hyper's own answers to requests that are not HTTP at all are not).
//! - **Authentication** (see [`auth`]): a bearer token, compared in constant time.

pub mod auth;

use crate::config::HttpLimits;
use axum::{
    body::Body,
    extract::{ConnectInfo, DefaultBodyLimit, State},
    http::{header, HeaderValue, Request, StatusCode},
    middleware,
    response::Response,
    Router,
};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};
use tower::ServiceExt as _;

/// Longest a stopping server waits for its connections to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Largest buffer hyper keeps per connection (a request head must fit in it).
pub const MAX_BUF_BYTES: usize = 16 * 1024;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 64;
/// Longest back-off of the accept loop after an accept error.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Counters of one listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at once: `max_connections` reached.
    pub rejected_max: AtomicU64,
    /// Connections closed at once: `max_connections_per_ip` reached.
    pub rejected_per_ip: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// `accept` failures (no descriptors, no memory), each followed by a back-off.
    pub accept_errors: AtomicU64,
    /// Connections closed by the header-read timeout.
    pub header_timeouts: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
}

/// How one listener serves.
#[derive(Clone)]
pub struct ServerOptions {
    /// `api` or `metrics` (the `listener` label, and in logs).
    pub name: &'static str,
    /// Connection limits and timeouts.
    pub limits: HttpLimits,
    /// Who may call what.
    pub auth: auth::Auth,
    /// Its counters.
    pub stats: Arc<HttpStats>,
}

/// Pending connections the kernel queues for a listener (`listen` backlog; capped by
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listener with a [`LISTEN_BACKLOG`] queue, so a burst of connections does not make
/// the kernel drop a client's SYN while the accept loop catches up.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Wraps `router` in the request-level defences: body limit, request timeout, authentication,
/// JSON error bodies.
pub fn harden(router: Router, options: &ServerOptions) -> Router {
    let limits = options.limits;
    router
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.max_body_bytes,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            options.auth.clone(),
            auth::require,
        ))
        .layer(middleware::map_response_with_state(
            limits.max_body_bytes,
            json_errors,
        ))
}

/// Gives every error answer a JSON body `{"error": "..."}`: the extractors', the layers' (413,
/// 408) and the fallback's alike.
async fn json_errors(State(max_body): State<usize>, res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body too large: at most {max_body} bytes")
        }
        StatusCode::REQUEST_TIMEOUT => "the request took too long (request_timeout)".to_owned(),
        _ if !text.is_empty() => text,
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": message }).to_string();
    Response::from_parts(parts, Body::from(body))
}

/// Serves `router` (already [`harden`]ed) on `listener` until `shutdown` resolves, then lets
/// open connections finish their requests for at most [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let name = options.name;
    let limits = options.limits;
    let stats = options.stats.clone();
    let table = Arc::new(ConnTable::new(&limits, stats.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    let mut warned: Option<(Instant, u64)> = None;
    let mut trim = tokio::time::interval(TRIM_CHECK);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
            _ = trim.tick() => {
                let open = stats.open.load(Relaxed);
                if peak >= TRIM_AFTER_PEAK && open <= peak / 4 {
                    tracing::debug!("{name}: {open} connections open after a peak of {peak}; returning free memory");
                    tokio::task::spawn_blocking(release_free_memory);
                    peak = 0;
                }
                continue;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                match ConnTable::admit(&table, peer.ip()) {
                    Ok(slot) => {
                        stats.accepted.fetch_add(1, Relaxed);
                        peak = peak.max(stats.open.load(Relaxed));
                        tokio::spawn(connection(
                            stream,
                            peer,
                            router.clone(),
                            limits,
                            slot,
                            stop_rx.clone(),
                            stats.clone(),
                        ));
                    }
                    Err(why) => refuse(stream, why),
                }
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Relaxed);
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                let now = Instant::now();
                match &mut warned {
                    Some((at, n)) if now.duration_since(*at) < Duration::from_secs(10) => *n += 1,
                    _ => {
                        let more = warned.map_or(0, |(_, n)| n);
                        tracing::warn!(
                            "{name}: accepting a connection failed: {e} ({more} more since the \
                             last warning); retrying in {} ms",
                            backoff.as_millis()
                        );
                        warned = Some((now, 0));
                    }
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while stats.open.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How often the accept loop looks whether a burst of connections is over.
const TRIM_CHECK: Duration = Duration::from_secs(5);
/// Open connections a burst must have reached before its end returns memory.
const TRIM_AFTER_PEAK: u64 = 64;

/// Returns the allocator's free pages to the system (glibc); elsewhere nothing.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heaps; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Errors that concern one connection only (it went away before it was accepted).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Answers a connection over a limit with 503 if its socket takes it at once, and closes it.
fn refuse(stream: TcpStream, why: Limit) {
    let body = serde_json::json!({
        "error": format!("too many connections ({}); try again later", why.key())
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Serves one connection until it ends, times out, or the server stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
    stats: Arc<HttpStats>,
) {
    let _ = stream.set_nodelay(true);
    let activity = slot.activity.clone();
    let evict = slot.evict.clone();
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let busy = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let busy = busy.clone();
        async move {
            let _handling = busy.handling();
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            router.oneshot(req).await
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let check_at = activity.next_check(limits.idle_timeout);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        stats.header_timeouts.fetch_add(1, Relaxed);
                    }
                    tracing::debug!("connection from {peer}: {e}");
                }
                break;
            }
            _ = tokio::time::sleep_until(check_at) => {
                if activity.idle_for(limits.idle_timeout) {
                    stats.idle_timeouts.fetch_add(1, Relaxed);
                    tracing::debug!("connection from {peer}: idle, closed");
                    break;
                }
            }
            _ = evict.notified() => {
                tracing::debug!("connection from {peer}: evicted for a new one");
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(slot);
}

/// The instant connection activity is measured from (milliseconds since it, so that the
/// table can compare connections).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// When a connection last moved a byte, and how many of its requests are being handled.
struct Activity {
    last_ms: AtomicU64,
    handling: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        let a = Self {
            last_ms: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
        };
        a.touch();
        a
    }

    fn touch(&self) {
        self.last_ms
            .store(epoch().elapsed().as_millis() as u64, Relaxed);
    }

    fn last(&self) -> Instant {
        epoch() + Duration::from_millis(self.last_ms.load(Relaxed))
    }

    fn handling(self: &Arc<Self>) -> Handling {
        self.handling.fetch_add(1, Relaxed);
        Handling(self.clone())
    }

    /// True when nothing moved for `idle` and no request is being handled.
    fn idle_for(&self, idle: Duration) -> bool {
        self.handling.load(Relaxed) == 0 && self.last().elapsed() >= idle
    }

    /// When to look again whether the connection is idle.
    fn next_check(&self, idle: Duration) -> Instant {
        let now = Instant::now();
        if self.handling.load(Relaxed) > 0 {
            return now + idle;
        }
        (self.last() + idle).max(now + Duration::from_millis(10))
    }
}

/// A request being handled; the connection is not idle meanwhile.
struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Relaxed);
        self.0.touch();
    }
}

/// A socket that records when it last moved a byte.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Total,
    PerIp,
}

impl Limit {
    fn key(self) -> &'static str {
        match self {
            Limit::Total => "max_connections",
            Limit::PerIp => "max_connections_per_ip",
        }
    }
}

/// Open connections, in total and per client address.
struct ConnTable {
    max: usize,
    max_per_ip: usize,
    inner: Mutex<TableInner>,
    stats: Arc<HttpStats>,
}

#[derive(Default)]
struct TableInner {
    per_ip: HashMap<IpAddr, usize>,
    conns: HashMap<u64, Entry>,
    /// Connections told to close that have not closed yet.
    evicting: usize,
    next_id: u64,
}

/// What the table knows of one open connection.
struct Entry {
    activity: Arc<Activity>,
    evict: Arc<tokio::sync::Notify>,
    evicting: bool,
}

impl ConnTable {
    fn new(limits: &HttpLimits, stats: Arc<HttpStats>) -> Self {
        Self {
            max: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            inner: Mutex::new(TableInner::default()),
            stats,
        }
    }

    /// A slot for a connection from `ip` (evicting the longest idle connection when the table
    /// is full), or the limit that refuses it.
    fn admit(table: &Arc<Self>, ip: IpAddr) -> Result<Slot, Limit> {
        let key = client_key(ip);
        let mut inner = table.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.per_ip.get(&key).copied().unwrap_or(0) >= table.max_per_ip {
            table.stats.rejected_per_ip.fetch_add(1, Relaxed);
            return Err(Limit::PerIp);
        }
        if inner.conns.len() - inner.evicting >= table.max {
            // Evictions not yet done still hold descriptors: never more than a quarter over.
            let room = inner.conns.len() < table.max + table.max.div_ceil(4);
            let victim = inner
                .conns
                .iter()
                .filter(|(_, e)| !e.evicting && e.activity.handling.load(Relaxed) == 0)
                .min_by_key(|(_, e)| e.activity.last_ms.load(Relaxed))
                .map(|(id, _)| *id);
            match victim {
                Some(id) if room => {
                    let e = inner.conns.get_mut(&id).expect("victim is in the table");
                    e.evicting = true;
                    e.evict.notify_one();
                    inner.evicting += 1;
                    table.stats.evicted.fetch_add(1, Relaxed);
                }
                _ => {
                    table.stats.rejected_max.fetch_add(1, Relaxed);
                    return Err(Limit::Total);
                }
            }
        }
        *inner.per_ip.entry(key).or_insert(0) += 1;
        let id = inner.next_id;
        inner.next_id += 1;
        let activity = Arc::new(Activity::new());
        let evict = Arc::new(tokio::sync::Notify::new());
        inner.conns.insert(
            id,
            Entry {
                activity: activity.clone(),
                evict: evict.clone(),
                evicting: false,
            },
        );
        table.stats.open.store(inner.conns.len() as u64, Relaxed);
        Ok(Slot {
            table: table.clone(),
            key,
            id,
            activity,
            evict,
        })
    }
}

/// An open connection's place in the [`ConnTable`]; given back on drop.
struct Slot {
    table: Arc<ConnTable>,
    key: IpAddr,
    id: u64,
    activity: Arc<Activity>,
    evict: Arc<tokio::sync::Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.table.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = inner.per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                inner.per_ip.remove(&self.key);
            }
        }
        if let Some(e) = inner.conns.remove(&self.id) {
            if e.evicting {
                inner.evicting -= 1;
            }
        }
        self.table
            .stats
            .open
            .store(inner.conns.len() as u64, Relaxed);
    }
}

/// The address a per-client limit counts against: an IPv4 address (also IPv4-mapped), or an
/// IPv6 address's /64 (one subscriber's or host's network).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & (u128::MAX << 64);
                IpAddr::V6(bits.into())
            }
        },
    }
}

type Labels = Vec<(String, String)>;

fn label(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Registers the counters of each `(listener, stats)` in `registry`.
pub fn register_metrics(registry: &mut Registry, listeners: &[(&str, &HttpStats)]) {
    let open = Family::<Labels, Gauge>::default();
    let accepted = Family::<Labels, Counter>::default();
    let rejected = Family::<Labels, Counter>::default();
    let accept_errors = Family::<Labels, Counter>::default();
    let timed_out = Family::<Labels, Counter>::default();
    let evicted = Family::<Labels, Counter>::default();
    let unauthorized = Family::<Labels, Counter>::default();
    for (name, s) in listeners {
        let l = label(&[("listener", name)]);
        open.get_or_create(&l).set(s.open.load(Relaxed) as i64);
        accepted.get_or_create(&l).inc_by(s.accepted.load(Relaxed));
        accept_errors
            .get_or_create(&l)
            .inc_by(s.accept_errors.load(Relaxed));
        unauthorized
            .get_or_create(&l)
            .inc_by(s.unauthorized.load(Relaxed));
        evicted.get_or_create(&l).inc_by(s.evicted.load(Relaxed));
        for (reason, n) in [
            ("max_connections", &s.rejected_max),
            ("max_connections_per_ip", &s.rejected_per_ip),
        ] {
            rejected
                .get_or_create(&label(&[("listener", name), ("reason", reason)]))
                .inc_by(n.load(Relaxed));
        }
        for (timeout, n) in [("header", &s.header_timeouts), ("idle", &s.idle_timeouts)] {
            timed_out
                .get_or_create(&label(&[("listener", name), ("timeout", timeout)]))
                .inc_by(n.load(Relaxed));
        }
    }
    registry.register(
        "fnm_http_connections",
        "HTTP connections open, by listener (api, metrics)",
        open,
    );
    registry.register(
        "fnm_http_connections_accepted",
        "HTTP connections accepted and served",
        accepted,
    );
    registry.register(
        "fnm_http_connections_rejected",
        "HTTP connections closed at once because a connection limit was reached",
        rejected,
    );
    registry.register(
        "fnm_http_connections_evicted",
        "Idle HTTP connections closed to make room for a new one when the limit was reached",
        evicted,
    );
    registry.register(
        "fnm_http_accept_errors",
        "Failed accepts (no file descriptors or memory); the listener backs off and retries",
        accept_errors,
    );
    registry.register(
        "fnm_http_connections_timed_out",
        "HTTP connections closed by the header-read or idle timeout",
        timed_out,
    );
    registry.register(
        "fnm_http_unauthorized_requests",
        "HTTP requests refused for a missing or wrong bearer token",
        unauthorized,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a = client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = client_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = client_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_table_enforces_both_limits_and_frees_slots() {
        let limits = HttpLimits {
            max_connections: 3,
            max_connections_per_ip: 2,
            header_read_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_body_bytes: 1024,
        };
        let stats = Arc::new(HttpStats::default());
        let t = Arc::new(ConnTable::new(&limits, stats.clone()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let s1 = ConnTable::admit(&t, a).unwrap();
        let s2 = ConnTable::admit(&t, a).unwrap();
        assert_eq!(ConnTable::admit(&t, a).err(), Some(Limit::PerIp));
        let s3 = ConnTable::admit(&t, b).unwrap();
        // Full: every connection is busy with a request, so the next one is refused.
        let busy: Vec<Handling> = [&s1, &s2, &s3]
            .iter()
            .map(|s| s.activity.handling())
            .collect();
        assert_eq!(ConnTable::admit(&t, c).err(), Some(Limit::Total));
        drop(s1);
        assert_eq!(stats.open.load(Relaxed), 2);
        let s4 = ConnTable::admit(&t, a).unwrap();
        assert_eq!(stats.rejected_per_ip.load(Relaxed), 1);
        assert_eq!(stats.rejected_max.load(Relaxed), 1);
        // Full again, but s2 is idle now: it is evicted (told to close) for the newcomer.
        drop(busy);
        s3.activity.handling.fetch_add(1, Relaxed);
        s4.activity.handling.fetch_add(1, Relaxed);
        let _s5 = ConnTable::admit(&t, c).unwrap();
        assert_eq!(stats.evicted.load(Relaxed), 1);
        assert!(t.inner.lock().unwrap().conns[&s2.id].evicting);
        drop(s2);
        assert_eq!(t.inner.lock().unwrap().evicting, 0);
    }
}
