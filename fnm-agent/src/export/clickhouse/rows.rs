//! The rows of the ClickHouse tables (docs/clickhouse/schema.sql), one JSON object per line
//! (`FORMAT JSONEachRow`). Host counters and sampled flows go in as their Kafka records;
//! attack and mitigation events are flattened into the columns a query filters on, with the
//! whole event kept as JSON in `record`.

use crate::{
    accounting::Direction,
    export::records::{AttackEvent, AttackEventKind, MitigationEvent, MitigationEventKind},
};
use serde::Serialize;

/// A row of `attacks`.
#[derive(Debug, Serialize)]
pub struct AttackRow<'a> {
    unix_ms: u64,
    agent: &'a str,
    event: AttackEventKind,
    attack_id: &'a str,
    host: String,
    direction: Direction,
    hostgroup: &'a str,
    /// `syn_flood`, `dns_amplification`, ... (started events).
    attack_type: &'static str,
    /// The rate whose threshold was crossed (started events).
    rate: &'static str,
    value: f64,
    threshold: f64,
    protocol: &'a str,
    /// Packets/s: when detected (started) or now (updated).
    pps: f64,
    bytes_per_second: f64,
    peak_pps: f64,
    peak_bytes_per_second: f64,
    record: String,
}

impl<'a> AttackRow<'a> {
    /// The row of `e`.
    pub fn new(e: &'a AttackEvent) -> Self {
        let mut row = Self {
            unix_ms: e.unix_ms,
            agent: &e.agent,
            event: e.event,
            attack_id: &e.attack_id,
            host: e.host.to_string(),
            direction: e.direction,
            hostgroup: "",
            attack_type: "",
            rate: "",
            value: 0.0,
            threshold: 0.0,
            protocol: "",
            pps: 0.0,
            bytes_per_second: 0.0,
            peak_pps: 0.0,
            peak_bytes_per_second: 0.0,
            record: serde_json::to_string(e).unwrap_or_default(),
        };
        if let Some(a) = &e.attack {
            row.hostgroup = a.hostgroup.as_deref().unwrap_or_default();
            row.attack_type = a.fingerprint.attack_type.as_str();
            row.rate = a.threshold.rate.as_str();
            row.value = a.threshold.value;
            row.threshold = a.threshold.threshold;
            row.protocol = &a.fingerprint.dominant_protocol;
            row.pps = a.initial_rates.pps;
            row.bytes_per_second = a.initial_rates.bytes_per_second;
            row.peak_pps = a.peak_rates.pps;
            row.peak_bytes_per_second = a.peak_rates.bytes_per_second;
        }
        if let Some(c) = &e.current {
            row.pps = c.pps;
            row.bytes_per_second = c.bytes_per_second;
        }
        if let Some(p) = &e.peak {
            row.peak_pps = p.pps;
            row.peak_bytes_per_second = p.bytes_per_second;
        }
        row
    }
}

/// A row of `mitigations`.
#[derive(Debug, Serialize)]
pub struct MitigationRow<'a> {
    unix_ms: u64,
    agent: &'a str,
    event: MitigationEventKind,
    mitigation_id: &'a str,
    host: String,
    prefix: String,
    record: String,
}

impl<'a> MitigationRow<'a> {
    /// The row of `e`.
    pub fn new(e: &'a MitigationEvent) -> Self {
        Self {
            unix_ms: e.unix_ms,
            agent: &e.agent,
            event: e.event,
            mitigation_id: &e.mitigation.id,
            host: e.mitigation.host.to_string(),
            prefix: e.mitigation.prefix.to_string(),
            record: serde_json::to_string(&e.mitigation).unwrap_or_default(),
        }
    }
}
