//! Per-network and per-hostgroup traffic as the views show it: `GET /api/v1/networks` and the
//! `fnm_network_*` / `fnm_hostgroup_*` metric families. The engine computes the rows
//! ([`crate::accounting::TrafficGroups`]) and publishes them in its snapshot; the views only
//! read them.

use crate::{
    accounting::{GroupRow, TrafficGroups},
    engine::snapshot::Snapshot,
    views::DirectionView,
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;

/// One configured network (or hostgroup) with both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkView {
    /// The network (`10.0.0.0/24`), the hostgroup's name, or `other` (those beyond
    /// `accounting.max_network_counters`).
    pub name: String,
    /// Traffic towards its hosts.
    pub incoming: DirectionView,
    /// Traffic from its hosts.
    pub outgoing: DirectionView,
}

impl From<&GroupRow> for NetworkView {
    fn from(r: &GroupRow) -> Self {
        Self {
            name: r.name.clone(),
            incoming: r.dirs()[0].into(),
            outgoing: r.dirs()[1].into(),
        }
    }
}

/// What `GET /api/v1/networks` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworksView {
    /// One row per configured network, in config order.
    pub networks: Vec<NetworkView>,
    /// One row per hostgroup, in config order.
    pub hostgroups: Vec<NetworkView>,
}

impl NetworksView {
    /// The rows of `groups`, as the engine publishes them after a tick.
    pub fn new(groups: &TrafficGroups) -> Self {
        Self {
            networks: groups.networks().iter().map(Into::into).collect(),
            hostgroups: groups.hostgroups().iter().map(Into::into).collect(),
        }
    }
}

/// `GET /api/v1/networks`.
pub async fn list(
    axum::extract::State(st): axum::extract::State<crate::api::ApiState>,
) -> axum::Json<NetworksView> {
    axum::Json(NetworksView::clone(&st.engine.snapshot().networks))
}

type Labels = Vec<(String, String)>;

/// Registers the per-network and per-hostgroup families of `snap`.
pub fn register(registry: &mut Registry, snap: &Snapshot) {
    for (kind, rows) in [
        ("network", &snap.networks.networks),
        ("hostgroup", &snap.networks.hostgroups),
    ] {
        let pps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let bps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let fps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let packets = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        for row in rows.iter() {
            for (direction, d) in [("incoming", &row.incoming), ("outgoing", &row.outgoing)] {
                let l = vec![
                    (kind.to_string(), row.name.clone()),
                    ("direction".to_string(), direction.to_string()),
                ];
                pps.get_or_create(&l).set(d.pps);
                bps.get_or_create(&l).set(d.bytes_per_second);
                fps.get_or_create(&l).set(d.flows_per_second);
                packets.get_or_create(&l).inc_by(d.packets);
                bytes.get_or_create(&l).inc_by(d.bytes);
            }
        }
        let what = if kind == "network" {
            "configured network (most specific one holding the host)"
        } else {
            "hostgroup"
        };
        registry.register(
            format!("fnm_{kind}_packets_per_second"),
            format!("Packets/s of the local hosts of each {what}, by direction"),
            pps,
        );
        registry.register(
            format!("fnm_{kind}_bytes_per_second"),
            format!("IP bytes/s of the local hosts of each {what}, by direction"),
            bps,
        );
        registry.register(
            format!("fnm_{kind}_flows_per_second"),
            format!("New flows/s of the local hosts of each {what}, by direction"),
            fps,
        );
        registry.register(
            format!("fnm_{kind}_packets"),
            format!("Packets of the local hosts of each {what}, by direction"),
            packets,
        );
        registry.register(
            format!("fnm_{kind}_bytes"),
            format!("IP bytes of the local hosts of each {what}, by direction"),
            bytes,
        );
    }
}
