//! Prometheus exporter (`prometheus.listen`, path `/metrics`), with the `prometheus-client` crate.
//!
//! Metrics are gathered from the agent's state at scrape time. Per-host series exist only for
//! the top `prometheus.top_hosts` hosts per direction and for banned hosts, never one series per
//! address seen.

use crate::{
    accounting::{protocol_label, total_direction_label, Direction},
    agent::Agent,
};
use axum::{http::header, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{atomic::AtomicU64, Arc},
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Extra metric families contributed by other parts of the agent (collectors, detection…):
/// each renders its own families into the scrape's registry.
pub trait MetricsSource: Send + Sync {
    /// Registers this part's current values.
    fn register(&self, registry: &mut Registry);
}

/// Renders the text exposition of every metric.
pub fn render(agent: &Agent, extra: &[Arc<dyn MetricsSource>]) -> String {
    let mut registry = Registry::default();

    // A gauge rather than an OpenMetrics info metric, so classic text parsers (promtool) read it.
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    registry.register("fnm_build_info", "fnm build information", build);

    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let top_hosts = agent.config.prometheus.top_hosts;
    let (hosts_known, host_rates) = {
        let acc = agent.accounting();
        for ((source, dir, class), (p, b)) in acc.totals().iter() {
            let l = labels(&[
                ("direction", total_direction_label(dir)),
                ("protocol", protocol_label(class)),
                ("source", source.as_str()),
            ]);
            packets.get_or_create(&l).inc_by(p);
            bytes.get_or_create(&l).inc_by(b);
        }
        let banned: BTreeSet<IpAddr> = agent
            .bans()
            .list()
            .filter(|b| b.prefix.len() == if b.prefix.is_ipv4() { 32 } else { 128 })
            .map(|b| b.prefix.addr())
            .collect();
        let mut chosen: BTreeSet<(IpAddr, Direction)> = BTreeSet::new();
        for dir in Direction::ALL {
            for (ip, _) in acc.top(dir, top_hosts, |d| d.rates.pps) {
                chosen.insert((ip, dir));
            }
            for ip in &banned {
                if acc.host(*ip).is_some() {
                    chosen.insert((*ip, dir));
                }
            }
        }
        let rates: Vec<_> = chosen
            .into_iter()
            .filter_map(|(ip, dir)| acc.host(ip).map(|h| (ip, dir, h.dirs[dir.index()].rates)))
            .collect();
        (acc.host_count(), rates)
    };
    registry.register(
        "fnm_traffic_packets",
        "Packets seen, by direction, protocol and source",
        packets,
    );
    registry.register(
        "fnm_traffic_bytes",
        "IP bytes seen, by direction, protocol and source",
        bytes,
    );

    let pps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let bps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let fps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (ip, dir, r) in host_rates {
        let l = labels(&[("host", &ip.to_string()), ("direction", dir.as_str())]);
        pps.get_or_create(&l).set(r.pps);
        bps.get_or_create(&l).set(r.bytes_per_second);
        fps.get_or_create(&l).set(r.flows_per_second);
    }
    registry.register(
        "fnm_host_packets_per_second",
        "Packets/s of the top hosts and banned hosts",
        pps,
    );
    registry.register(
        "fnm_host_bytes_per_second",
        "IP bytes/s of the top hosts and banned hosts",
        bps,
    );
    registry.register(
        "fnm_host_flows_per_second",
        "New flows/s of the top hosts and banned hosts",
        fps,
    );

    let hosts_gauge = Gauge::<i64>::default();
    hosts_gauge.set(hosts_known as i64);
    registry.register(
        "fnm_hosts",
        "Local hosts with traffic known to the agent",
        hosts_gauge,
    );

    let bans_gauge = Gauge::<i64>::default();
    bans_gauge.set(agent.bans().len() as i64);
    registry.register("fnm_bans_active", "Bans in force", bans_gauge);

    let dropped = Family::<Labels, Counter>::default();
    let dropped_bytes = Family::<Labels, Counter>::default();
    let xdp = agent.xdp_status();
    for m in ["src", "dst", "rule"] {
        let l = labels(&[("match", m)]);
        let get = |k: &str| {
            xdp.as_ref()
                .and_then(|s| s.get(format!("dropped_{m}_{k}")))
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
        };
        dropped.get_or_create(&l).inc_by(get("packets"));
        dropped_bytes.get_or_create(&l).inc_by(get("bytes"));
    }
    registry.register(
        "fnm_xdp_dropped_packets",
        "Packets dropped in XDP, by what matched",
        dropped,
    );
    registry.register(
        "fnm_xdp_dropped_bytes",
        "IP bytes dropped in XDP, by what matched",
        dropped_bytes,
    );
    if let Some(s) = &xdp {
        for (key, name, help) in [
            ("frames", "fnm_xdp_frames", "Frames seen by the XDP program"),
            (
                "non_ip",
                "fnm_xdp_non_ip_frames",
                "Frames that were not IPv4/IPv6",
            ),
            (
                "malformed",
                "fnm_xdp_malformed_frames",
                "Truncated or malformed frames",
            ),
            (
                "whitelist_passed",
                "fnm_xdp_whitelist_passed_packets",
                "Packets a drop entry matched but the whitelist let through",
            ),
            (
                "host_table_full",
                "fnm_xdp_host_table_full",
                "New hosts not counted because the kernel host table was full",
            ),
            (
                "samples_lost",
                "fnm_xdp_samples_lost",
                "Packet samples lost to a full ring buffer",
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(s.get(key).and_then(|v| v.as_u64()).unwrap_or(0));
            registry.register(name, help, c);
        }
    }
    if let Some(stats) = agent.script_stats() {
        use std::sync::atomic::Ordering::Relaxed;
        let calls = Family::<Labels, Counter>::default();
        for (result, n) in [
            ("succeeded", stats.succeeded.load(Relaxed)),
            ("failed", stats.failed.load(Relaxed)),
            ("timed_out", stats.timed_out.load(Relaxed)),
            ("dropped", stats.dropped.load(Relaxed)),
        ] {
            calls
                .get_or_create(&labels(&[("result", result)]))
                .inc_by(n);
        }
        registry.register(
            "fnm_script_calls",
            "Notify script calls by result (dropped: the queue was full)",
            calls,
        );
    }
    for source in extra {
        source.register(&mut registry);
    }

    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        out.clear();
    }
    to_classic_text(&out)
}

/// Rewrites OpenMetrics text into the classic Prometheus text format (0.0.4), which every
/// Prometheus and `promtool check metrics` read: counter families are named with their `_total`
/// suffix in HELP/TYPE, and the `# EOF` and `# UNIT` lines go.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    agent: Arc<Agent>,
    extra: Vec<Arc<dyn MetricsSource>>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let extra = Arc::new(extra);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let agent = agent.clone();
            let extra = extra.clone();
            async move {
                let body = tokio::task::spawn_blocking(move || render(&agent, &extra))
                    .await
                    .unwrap_or_default();
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
