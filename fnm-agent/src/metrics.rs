//! Prometheus exporter (`prometheus.listen`, path `/metrics`), with the `prometheus-client` crate.
//!
//! Metrics are rendered at scrape time from the engine's and the mitigator's published
//! snapshots (no lock on either). Per-host series exist only for the top
//! `prometheus.top_hosts` hosts per direction and for hosts under attack, never one series per
//! address seen.

use crate::{
    accounting::{protocol_label, total_direction_label, Direction, EvictReason},
    engine::{input::InputStats, EngineClient},
    mitigator::MitigatorHandle,
    traffic::Source,
};
use axum::{
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
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

/// What `/metrics` renders from.
#[derive(Clone)]
pub struct MetricsState {
    /// The engine.
    pub engine: EngineClient,
    /// The mitigator.
    pub mitigator: MitigatorHandle,
    /// The sources' hand-over counters.
    pub inputs: Arc<InputStats>,
    /// Families of the sources.
    pub extra: Arc<Vec<Arc<dyn MetricsSource>>>,
    /// The HTTP listeners' counters, by listener name (`api`, `metrics`).
    pub http: Arc<Vec<(&'static str, Arc<crate::http::HttpStats>)>>,
}

/// Renders the text exposition of every metric.
pub fn render(st: &MetricsState) -> String {
    let mut registry = Registry::default();
    let snap = st.engine.snapshot();
    let view = st.mitigator.view();

    // A gauge rather than an OpenMetrics info metric, so classic text parsers (promtool) read it.
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    registry.register("fnm_build_info", "fnm build information", build);

    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    for t in &snap.totals {
        let l = labels(&[
            ("direction", total_direction_label(t.direction)),
            ("protocol", protocol_label(t.class)),
            ("source", t.source.as_str()),
        ]);
        packets.get_or_create(&l).inc_by(t.packets);
        bytes.get_or_create(&l).inc_by(t.bytes);
    }
    let mut host_rates: BTreeMap<(IpAddr, Direction), crate::accounting::Rates> = BTreeMap::new();
    for (dir, hosts) in Direction::ALL.iter().zip(&snap.top_by_pps) {
        for h in hosts {
            let d = if *dir == Direction::Incoming {
                &h.incoming
            } else {
                &h.outgoing
            };
            host_rates.insert(
                (h.ip, *dir),
                crate::accounting::Rates {
                    pps: d.pps,
                    bytes_per_second: d.bytes_per_second,
                    flows_per_second: d.flows_per_second,
                    ..Default::default()
                },
            );
        }
    }
    for o in &snap.ongoing {
        host_rates.insert((o.host, o.direction), o.current);
    }
    let hosts_known = snap.hosts_known;
    let host_rates: Vec<_> = host_rates
        .into_iter()
        .map(|((ip, dir), r)| (ip, dir, r))
        .collect();
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
        "Packets/s of the top hosts and hosts under attack",
        pps,
    );
    registry.register(
        "fnm_host_bytes_per_second",
        "IP bytes/s of the top hosts and hosts under attack",
        bps,
    );
    registry.register(
        "fnm_host_flows_per_second",
        "New flows/s of the top hosts and hosts under attack",
        fps,
    );

    crate::network_views::register(&mut registry, &snap);
    crate::attack_pcap::register(&mut registry, &snap);
    crate::accounting::register_conversation_metrics(&mut registry, &snap);

    let hosts_gauge = Gauge::<i64>::default();
    hosts_gauge.set(hosts_known as i64);
    registry.register(
        "fnm_hosts",
        "Local hosts with traffic known to the agent",
        hosts_gauge,
    );

    let bans_gauge = Gauge::<i64>::default();
    bans_gauge.set(view.bans.len() as i64);
    registry.register("fnm_bans_active", "Bans in force", bans_gauge);

    let dropped = Family::<Labels, Counter>::default();
    let dropped_bytes = Family::<Labels, Counter>::default();
    let x = snap.xdp.unwrap_or_default();
    for (m, p, b) in [
        ("src", x.dropped_src_packets, x.dropped_src_bytes),
        ("dst", x.dropped_dst_packets, x.dropped_dst_bytes),
        ("rule", x.dropped_rule_packets, x.dropped_rule_bytes),
    ] {
        let l = labels(&[("match", m)]);
        dropped.get_or_create(&l).inc_by(p);
        dropped_bytes.get_or_create(&l).inc_by(b);
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
    if let Some(s) = &snap.xdp {
        for (value, name, help) in [
            (s.frames, "fnm_xdp_frames", "Frames seen by the XDP program"),
            (
                s.non_ip,
                "fnm_xdp_non_ip_frames",
                "Frames that were not IPv4/IPv6",
            ),
            (
                s.malformed,
                "fnm_xdp_malformed_frames",
                "Truncated or malformed frames",
            ),
            (
                s.whitelist_passed,
                "fnm_xdp_whitelist_passed_packets",
                "Packets a drop entry matched but the whitelist let through",
            ),
            (
                s.source_whitelisted_packets,
                "fnm_xdp_source_whitelisted_packets",
                "Packets from or to a whitelisted source (detection.whitelist_sources), \
                 counted apart from the hosts' rates",
            ),
            (
                s.source_whitelisted_bytes,
                "fnm_xdp_source_whitelisted_bytes",
                "IP bytes from or to a whitelisted source, counted apart from the hosts' rates",
            ),
            (
                s.decapsulated,
                "fnm_xdp_decapsulated_frames",
                "Frames counted as the packet found inside a tunnel (GRE, ERSPAN, L2TPv2, \
                 IP-in-IP)",
            ),
            (
                s.tunnel_outer_counted,
                "fnm_xdp_tunnel_outer_counted_frames",
                "Frames carrying a tunnel whose payload was not a readable IP packet (the \
                 packet around it was counted)",
            ),
            (
                s.host_table_full,
                "fnm_xdp_host_table_full",
                "New hosts not counted because the kernel host table was full",
            ),
            (
                s.samples_lost,
                "fnm_xdp_samples_lost",
                "Packet samples lost to a full ring buffer",
            ),
            (
                s.slot_reads,
                "fnm_xdp_poll_slot_reads",
                "Per-host counter slots the polls read in the kernel's memory: those with \
                 packets since the poll before, and every other one once in eight polls",
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            registry.register(name, help, c);
        }
    }
    if let Some(stats) = st.mitigator.script_stats.load_full() {
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
        for (name, help, n) in [
            (
                "fnm_script_leftovers_killed",
                "Script calls whose leftover processes were killed at the timeout",
                stats.leftovers_killed.load(Relaxed),
            ),
            (
                "fnm_script_output_truncated",
                "Script calls whose stdout or stderr was longer than the 64 KiB kept",
                stats.output_truncated.load(Relaxed),
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(n);
            registry.register(name, help, c);
        }
    }
    register_alerting(&mut registry, &snap, &view);
    // The mitigator's counters get every label value at zero before their first event, so
    // `increase()` (the alert rules) sees the first failure or cap.
    for action in crate::actions::Action::ALL {
        for result in ["ok", "failed", "lifted", "lift_failed", "not_applied"] {
            let _ = st.mitigator.stats.actions.get_or_create(&vec![
                ("action".into(), action.as_str().into()),
                ("result".into(), result.into()),
            ]);
        }
    }
    for reason in ["max_active", "per_minute"] {
        let _ = st
            .mitigator
            .stats
            .auto_bans_not_applied
            .get_or_create(&vec![("reason".into(), reason.into())]);
    }
    registry.register(
        "fnm_actions",
        "Mitigation action outcomes, by action and result (ok, failed, lifted, lift_failed, \
         not_applied)",
        st.mitigator.stats.actions.clone(),
    );
    registry.register(
        "fnm_auto_bans_not_applied",
        "Detected attacks whose actions were not applied because a cap was reached \
         (max_active: ban.max_active_auto_bans, per_minute: ban.max_auto_bans_per_minute)",
        st.mitigator.stats.auto_bans_not_applied.clone(),
    );
    registry.register(
        "fnm_manual_bans_refused",
        "Manual bans refused by a safety check, by check",
        st.mitigator.stats.manual_bans_refused.clone(),
    );
    let http: Vec<(&str, &crate::http::HttpStats)> =
        st.http.iter().map(|(n, s)| (*n, s.as_ref())).collect();
    crate::http::register_metrics(&mut registry, &http);
    let handed = Family::<Labels, Counter>::default();
    let dropped_records = Family::<Labels, Counter>::default();
    for s in Source::ALL.iter().filter(|s| **s != Source::Replay) {
        let c = st.inputs.of(*s);
        let l = labels(&[("source", s.as_str())]);
        handed.get_or_create(&l).inc_by(c.records.load(Relaxed));
        dropped_records
            .get_or_create(&l)
            .inc_by(c.dropped_records.load(Relaxed));
    }
    registry.register(
        "fnm_source_records",
        "Records (or XDP host deltas) a source handed to the engine",
        handed,
    );
    registry.register(
        "fnm_source_dropped_records",
        "Records a source dropped because the engine's input was full",
        dropped_records,
    );
    registry.register(
        "fnm_poll_duration_seconds",
        "Time from a poll's flush request to its published snapshot",
        st.engine.stats.poll_duration.clone(),
    );
    let overruns = Counter::<u64>::default();
    overruns.inc_by(st.engine.stats.overruns.load(Relaxed));
    registry.register(
        "fnm_poll_overruns",
        "Polls that took longer than poll_interval",
        overruns,
    );
    let capacity = Gauge::<i64>::default();
    capacity.set(snap.hosts_capacity as i64);
    registry.register(
        "fnm_hosts_capacity",
        "Most local hosts the agent keeps (accounting.max_hosts)",
        capacity,
    );
    let table_full = Family::<Labels, Counter>::default();
    for s in Source::ALL.iter().filter(|s| **s != Source::Replay) {
        table_full
            .get_or_create(&labels(&[("source", s.as_str())]))
            .inc_by(snap.table.full[s.index()]);
    }
    registry.register(
        "fnm_hosts_table_full",
        "New hosts not counted because neither their origin's budget nor the host table had a \
         host they could replace (all busier or protected), by source",
        table_full,
    );
    let evicted = Family::<Labels, Counter>::default();
    for reason in EvictReason::ALL {
        evicted
            .get_or_create(&labels(&[("reason", reason.as_str())]))
            .inc_by(snap.table.evicted[reason.index()]);
    }
    registry.register(
        "fnm_hosts_evicted",
        "Hosts removed from the host table, by reason: idle, low_rate (made room for a new \
         host), budget (made room for a new host of the same exporter or source), expired \
         (an hour without traffic)",
        evicted,
    );
    for source in st.extra.iter() {
        source.register(&mut registry);
    }

    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        out.clear();
    }
    to_classic_text(&out)
}

/// The series to alert on, each family with every label value present from the start (zeros
/// included), so `increase()` sees a first attack and no query finds nothing: attacks by
/// direction and type (2 × 13 series each), mitigations by action and origin (7 × 2), actions
/// failing by action (7).
fn register_alerting(
    registry: &mut Registry,
    snap: &crate::engine::snapshot::Snapshot,
    view: &crate::mitigator::MitigatorView,
) {
    use crate::{
        actions::Action, bans::BanOrigin, detection::attack::AttackType,
        mitigator::store::ActionResult,
    };
    let started = Family::<Labels, Counter>::default();
    let active = Family::<Labels, Gauge>::default();
    for dir in Direction::ALL {
        for kind in AttackType::ALL {
            let l = labels(&[("direction", dir.as_str()), ("type", kind.as_str())]);
            started
                .get_or_create(&l)
                .inc_by(snap.attacks_started[dir.index()][kind.index()]);
            let n = snap
                .ongoing
                .iter()
                .filter(|o| o.direction == dir && o.attack_type == kind)
                .count();
            active.get_or_create(&l).set(n as i64);
        }
    }
    registry.register(
        "fnm_attacks",
        "Attacks detected since the agent started, by direction and type",
        started,
    );
    registry.register(
        "fnm_attacks_active",
        "Attacks in progress, by direction and type",
        active,
    );
    let in_force = Family::<Labels, Gauge>::default();
    let failing = Family::<Labels, Gauge>::default();
    for action in Action::ALL {
        for (origin, name) in [
            (BanOrigin::Detection, "detection"),
            (BanOrigin::Manual, "manual"),
        ] {
            let n = view
                .active
                .iter()
                .filter(|m| m.origin == origin)
                .filter(|m| {
                    m.actions
                        .iter()
                        .any(|a| a.action == action && a.result == ActionResult::Ok)
                })
                .count();
            in_force
                .get_or_create(&labels(&[("action", action.as_str()), ("origin", name)]))
                .set(n as i64);
        }
        let n = view
            .active
            .iter()
            .flat_map(|m| m.actions.iter())
            .filter(|a| {
                a.action == action
                    && matches!(a.result, ActionResult::Failed | ActionResult::Retrying)
            })
            .count();
        failing
            .get_or_create(&labels(&[("action", action.as_str())]))
            .set(n as i64);
    }
    registry.register(
        "fnm_mitigations_active",
        "Mitigations in force, by action and origin (detection, manual); a mitigation with \
         two actions in force counts under both",
        in_force,
    );
    registry.register(
        "fnm_mitigation_actions_failing",
        "Actions of mitigations in force that failed or are being retried, by action",
        failing,
    );
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

/// Serves `/metrics` on `listener` until `shutdown` resolves, with the limits, timeouts and
/// authentication of `options`.
pub async fn serve(
    state: MetricsState,
    listener: tokio::net::TcpListener,
    options: crate::http::ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let state = state.clone();
            async move {
                // Rendered on the worker: a scrape costs ~0.1-0.2 ms (bounded: top hosts,
                // ongoing attacks, configured networks), less than handing it to a blocking
                // thread and back, which doubled its CPU on this 2-core VM.
                let body = render(&state);
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
    let app = app.fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such endpoint (try /metrics)" })),
        )
    });
    let app = crate::http::harden(app, &options);
    crate::http::serve(listener, app, options, shutdown).await
}
