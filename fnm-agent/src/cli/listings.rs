//! The listing commands' tables: hosts, attacks, one attack's report, mitigations, bans and an
//! address's thresholds. Each renderer is a pure function of the API's answer and the time, so
//! the tables are tested as text.

use super::{
    tables::{Align, Table},
    units,
};
use crate::{
    accounting::{Direction, RateKind},
    bans::{BanOrigin, DropMatch},
    detection::{attack::Attack, config::Thresholds},
    mitigator::store::{ActionResult, ActionState, Mitigation},
    prefix::Prefix,
    views::{DirectionView, HostView},
};
use serde::{Deserialize, Serialize};
use std::{fmt::Write as _, net::IpAddr};

/// `manual` or `detection`.
pub fn origin_str(o: BanOrigin) -> &'static str {
    match o {
        BanOrigin::Manual => "manual",
        BanOrigin::Detection => "detection",
    }
}

fn result_str(r: ActionResult) -> &'static str {
    match r {
        ActionResult::Ok => "ok",
        ActionResult::Retrying => "retrying",
        ActionResult::Failed => "failed",
        ActionResult::Lifted => "lifted",
        ActionResult::NotApplied => "not applied",
    }
}

/// `xdp_rule ok, script failed`.
pub fn actions_summary(actions: &[ActionState]) -> String {
    if actions.is_empty() {
        return "none".into();
    }
    actions
        .iter()
        .map(|a| format!("{} {}", a.action.as_str(), result_str(a.result)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rate of a given kind with its unit: `12.0k pps`, `95.0 Mbit/s`, `300 flows/s`.
pub fn rate_with_unit(kind: RateKind, value: f64) -> String {
    match kind {
        RateKind::BytesPerSecond
        | RateKind::TcpBytesPerSecond
        | RateKind::UdpBytesPerSecond
        | RateKind::IcmpBytesPerSecond => units::bits_per_second(value),
        RateKind::FlowsPerSecond => format!("{} flows/s", units::si(value)),
        RateKind::ConversationsPerSecond => format!("{} conversations/s", units::si(value)),
        _ => format!("{} pps", units::si(value)),
    }
}

/// A rate's name for people: `pps`, `Mbit/s`, `UDP pps`, `TCP SYN pps`.
pub fn rate_label(kind: RateKind) -> &'static str {
    match kind {
        RateKind::Pps => "packets/s",
        RateKind::BytesPerSecond => "bits/s",
        RateKind::FlowsPerSecond => "flows/s",
        RateKind::TcpPps => "TCP packets/s",
        RateKind::TcpBytesPerSecond => "TCP bits/s",
        RateKind::UdpPps => "UDP packets/s",
        RateKind::UdpBytesPerSecond => "UDP bits/s",
        RateKind::IcmpPps => "ICMP packets/s",
        RateKind::IcmpBytesPerSecond => "ICMP bits/s",
        RateKind::TcpSynPps => "TCP SYN packets/s",
        RateKind::FragmentsPps => "fragments/s",
        RateKind::ConversationsPerSecond => "conversations/s",
    }
}

fn other_pps(d: &DirectionView) -> f64 {
    (d.pps - d.tcp_pps - d.udp_pps - d.icmp_pps).max(0.0)
}

/// `hosts`: the busiest hosts of one direction.
pub fn hosts(hosts: &[HostView], direction: Direction) -> String {
    if hosts.is_empty() {
        return format!("no {} traffic seen yet\n", direction.as_str());
    }
    let side = |h: &HostView| match direction {
        Direction::Incoming => h.incoming.clone(),
        Direction::Outgoing => h.outgoing.clone(),
    };
    // Conversations (FastNetMon's flows) only when counted: some threshold uses them.
    let conversations = hosts.iter().any(|h| side(h).conversations > 0);
    let mut columns = vec![
        ("HOST", Align::Left),
        ("PPS", Align::Right),
        ("BITS/S", Align::Right),
        ("FLOWS/S", Align::Right),
    ];
    if conversations {
        columns.push(("CONV/S", Align::Right));
    }
    columns.extend([
        ("TCP PPS", Align::Right),
        ("UDP PPS", Align::Right),
        ("ICMP PPS", Align::Right),
        ("OTHER PPS", Align::Right),
        ("PACKETS", Align::Right),
        ("BYTES", Align::Right),
    ]);
    let mut t = Table::new(&columns);
    for h in hosts {
        let d = &side(h);
        let mut cells = vec![
            h.ip.to_string(),
            units::pps(d.pps),
            units::bits_per_second(d.bytes_per_second),
            units::si(d.flows_per_second),
        ];
        if conversations {
            cells.push(units::si(d.conversations_per_second));
        }
        cells.extend([
            units::pps(d.tcp_pps),
            units::pps(d.udp_pps),
            units::pps(d.icmp_pps),
            units::pps(other_pps(d)),
            units::si(d.packets as f64),
            units::bytes(d.bytes),
        ]);
        t.row(cells);
    }
    t.render()
}

fn attack_status(a: &Attack, now: u64) -> (String, String) {
    let started = a.started_unix_ms / 1000;
    match a.ended_unix_ms {
        None => (
            "ongoing".into(),
            units::duration(now.saturating_sub(started)),
        ),
        Some(end) => (
            "ended".into(),
            units::duration((end / 1000).saturating_sub(started)),
        ),
    }
}

/// A rate's value without its name: `12.0k` (packets or flows per second), `95.0 Mbit/s`.
fn rate_value(kind: RateKind, value: f64) -> String {
    match kind {
        RateKind::BytesPerSecond
        | RateKind::TcpBytesPerSecond
        | RateKind::UdpBytesPerSecond
        | RateKind::IcmpBytesPerSecond => units::bits_per_second(value),
        _ => units::si(value),
    }
}

/// The crossing as read, with the rate's configuration name: `pps 12.0k > 2.00k`,
/// `udp_bytes_per_second 95.0 Mbit/s > 80.0 Mbit/s`.
fn crossing(a: &Attack) -> String {
    format!(
        "{} {} > {}",
        a.threshold.rate,
        rate_value(a.threshold.rate, a.threshold.value),
        rate_value(a.threshold.rate, a.threshold.threshold)
    )
}

/// `attacks`: newest first.
pub fn attacks(list: &[Attack], now: u64, only_ongoing: bool) -> String {
    let shown: Vec<&Attack> = list
        .iter()
        .filter(|a| !only_ongoing || a.ended_unix_ms.is_none())
        .collect();
    if shown.is_empty() {
        return if only_ongoing {
            "no active attacks\n".into()
        } else {
            "no attacks recorded\n".into()
        };
    }
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("HOST", Align::Left),
        ("DIRECTION", Align::Left),
        ("TYPE", Align::Left),
        ("STARTED", Align::Left),
        ("STATUS", Align::Left),
        ("DURATION", Align::Right),
        ("DETECTED AT", Align::Left),
        ("PEAK PPS", Align::Right),
        ("PEAK BITS/S", Align::Right),
        ("ACTIONS", Align::Left),
    ]);
    for a in shown {
        let (status, took) = attack_status(a, now);
        let status = if a.report_only {
            format!("{status} (report only)")
        } else {
            status
        };
        t.row(vec![
            a.id.clone(),
            a.host.to_string(),
            a.direction.as_str().into(),
            a.fingerprint.attack_type.as_str().into(),
            units::local_time_ms(a.started_unix_ms),
            status,
            took,
            crossing(a),
            units::pps(a.peak_rates.pps),
            units::bits_per_second(a.peak_rates.bytes_per_second),
            actions_summary(&a.actions),
        ]);
    }
    t.render()
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// `attacks show ID`: the whole report.
pub fn attack_report(a: &Attack, now: u64) -> String {
    let mut s = String::new();
    let (status, took) = attack_status(a, now);
    let f = &a.fingerprint;
    let kv = |s: &mut String, k: &str, v: &str| {
        let _ = writeln!(s, "{:<18} {v}", format!("{k}:"));
    };
    kv(&mut s, "Attack", &a.id);
    kv(&mut s, "Host", &a.host.to_string());
    kv(&mut s, "Direction", a.direction.as_str());
    kv(
        &mut s,
        "Hostgroup",
        a.hostgroup.as_deref().unwrap_or("none"),
    );
    kv(&mut s, "Type", f.attack_type.as_str());
    kv(
        &mut s,
        "Status",
        &if a.report_only {
            format!("{status} (report only: no action)")
        } else {
            status
        },
    );
    kv(&mut s, "Started", &units::local_time_ms(a.started_unix_ms));
    if let Some(end) = a.ended_unix_ms {
        kv(&mut s, "Ended", &units::local_time_ms(end));
    }
    kv(&mut s, "Duration", &took);
    kv(&mut s, "Detected at", &crossing(a));
    s.push('\n');

    let mut rates = Table::new(&[
        ("RATE", Align::Left),
        ("AT DETECTION", Align::Right),
        ("PEAK", Align::Right),
    ]);
    for kind in RateKind::ALL {
        let (i, p) = (a.initial_rates.get(kind), a.peak_rates.get(kind));
        if i == 0.0 && p == 0.0 && kind != RateKind::Pps && kind != RateKind::BytesPerSecond {
            continue;
        }
        rates.row(vec![
            rate_label(kind).into(),
            rate_with_unit(kind, i),
            rate_with_unit(kind, p),
        ]);
    }
    s.push_str(&rates.render());
    s.push('\n');

    s.push_str("Fingerprint:\n");
    let _ = writeln!(s, "  protocol           {}", f.dominant_protocol);
    if let Some((port, share)) = f.source_port {
        let _ = writeln!(
            s,
            "  source port        {port} ({:.0}% of packets)",
            share * 100.0
        );
    }
    if let Some((port, share)) = f.destination_port {
        let _ = writeln!(
            s,
            "  destination port   {port} ({:.0}% of packets)",
            share * 100.0
        );
    }
    if let Some((lo, hi)) = f.packet_size {
        let _ = writeln!(s, "  packet size        {lo} to {hi} bytes");
    }
    let _ = writeln!(
        s,
        "  TCP SYN share      {:.0}%\n  fragment share     {:.0}%",
        f.syn_share * 100.0,
        f.fragment_share * 100.0
    );
    let _ = writeln!(
        s,
        "  sources            {} distinct in the samples, top ones carry {:.0}%",
        f.distinct_sources,
        f.top_sources_share * 100.0
    );
    s.push('\n');

    if a.top_flows.is_empty() {
        s.push_str("Top flows: none sampled\n");
    } else {
        s.push_str("Top flows (sampled):\n");
        let mut t = Table::new(&[
            ("SOURCE", Align::Left),
            ("DESTINATION", Align::Left),
            ("PROTO", Align::Left),
            ("PACKETS", Align::Right),
            ("BYTES", Align::Right),
        ]);
        for fl in &a.top_flows {
            let ep = |ip: IpAddr, port: u16| match ip {
                IpAddr::V4(_) => format!("{ip}:{port}"),
                IpAddr::V6(_) => format!("[{ip}]:{port}"),
            };
            t.row(vec![
                ep(fl.src, fl.src_port),
                ep(fl.dst, fl.dst_port),
                proto_name(fl.protocol),
                units::si(fl.packets as f64),
                units::bytes(fl.bytes),
            ]);
        }
        s.push_str(&t.render());
    }
    let _ = writeln!(s, "Samples kept: {}", a.samples.len());
    s.push('\n');

    if !a.sites.is_empty() {
        s.push_str("Sites (agents that reported it, last rate window):\n");
        let mut t = Table::new(&[
            ("AGENT", Align::Left),
            ("PACKETS", Align::Right),
            ("SHARE", Align::Right),
        ]);
        for site in &a.sites {
            t.row(vec![
                site.agent.clone(),
                site.packets.to_string(),
                format!("{:.0} %", site.share * 100.0),
            ]);
        }
        s.push_str(&t.render());
        s.push('\n');
    }

    if a.actions.is_empty() {
        s.push_str("Actions: none\n");
    } else {
        s.push_str("Actions:\n");
        let mut t = Table::new(&[
            ("ACTION", Align::Left),
            ("RESULT", Align::Left),
            ("ATTEMPTS", Align::Right),
            ("ERROR", Align::Left),
        ]);
        for st in &a.actions {
            t.row(vec![
                st.action.as_str().into(),
                result_str(st.result).into(),
                st.attempts.to_string(),
                st.error.clone().unwrap_or_default(),
            ]);
        }
        s.push_str(&t.render());
    }
    s
}

/// When a mitigation ends, as read: `in 29m 12s`, `never`, `in 0s (when the attack stops)`.
fn mitigation_expiry(m: &Mitigation, now: u64) -> String {
    let e = units::expiry(m.expires, now);
    if m.attack_ongoing && m.expires.is_some_and(|x| x <= now) {
        "when the attack stops".into()
    } else {
        e
    }
}

fn target(prefix: &Prefix, m: DropMatch) -> String {
    format!("{prefix} {}", m.as_str())
}

/// `mitigations`: what is in force, automatic and manual.
pub fn mitigations(list: &[Mitigation], now: u64) -> String {
    if list.is_empty() {
        return "no active mitigations\n".into();
    }
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("ORIGIN", Align::Left),
        ("TARGET", Align::Left),
        ("DIRECTION", Align::Left),
        ("STARTED", Align::Left),
        ("EXPIRES", Align::Left),
        ("ATTACK", Align::Left),
        ("ACTIONS", Align::Left),
        ("REASON", Align::Left),
    ]);
    for m in list {
        t.row(vec![
            m.id.clone(),
            origin_str(m.origin).into(),
            target(&m.prefix, m.match_on),
            m.direction.map_or("-", |d| d.as_str()).into(),
            units::local_time(m.started),
            mitigation_expiry(m, now),
            match m.origin {
                BanOrigin::Manual => "-".into(),
                BanOrigin::Detection if m.attack_ongoing => "ongoing".into(),
                BanOrigin::Detection => "ended".into(),
            },
            actions_summary(&m.actions),
            m.reason.clone(),
        ]);
    }
    t.render()
}

/// A drop entry as `GET /api/v1/bans` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanEntry {
    /// The prefix.
    pub prefix: Prefix,
    /// `src` or `dst`.
    #[serde(rename = "match")]
    pub match_on: DropMatch,
    /// Created, seconds since the epoch.
    pub created: u64,
    /// Ends, seconds since the epoch.
    pub expires: Option<u64>,
    /// Who asked for it.
    pub origin: BanOrigin,
    /// The attack id or the operator's note.
    #[serde(default)]
    pub reason: String,
    /// Packets its XDP entry dropped.
    #[serde(default)]
    pub dropped_packets: u64,
    /// Bytes its XDP entry dropped.
    #[serde(default)]
    pub dropped_bytes: u64,
}

/// One line of `bans`: a manual ban or an automatic mitigation, or a drop entry of one (the
/// sources an `xdp_source` action drops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanRow {
    /// The prefix.
    pub prefix: Prefix,
    /// `src` or `dst`.
    #[serde(rename = "match")]
    pub match_on: DropMatch,
    /// `manual` or `detection`.
    pub origin: BanOrigin,
    /// Its mitigation's id (the attack id, or `manual-...`), when it has one.
    pub mitigation: Option<String>,
    /// Actions in force and their results (a lone drop entry: `xdp_drop`).
    pub actions: Vec<String>,
    /// Started, seconds since the epoch.
    pub started: u64,
    /// Ends, seconds since the epoch (`None`: never, or when lifted).
    pub expires: Option<u64>,
    /// Its attack goes on (an automatic mitigation then outlives `expires`).
    pub attack_ongoing: bool,
    /// Packets its XDP drop entry dropped (`None` without a drop entry of its own: an
    /// `xdp_rule` mitigation's drops are counted for all rules together, in
    /// `fnm_xdp_dropped_packets_total{match="rule"}`).
    pub dropped_packets: Option<u64>,
    /// Bytes its XDP drop entry dropped.
    pub dropped_bytes: Option<u64>,
    /// The operator's note or the attack id.
    pub reason: String,
}

/// Joins the mitigations with the drop entries: one row per mitigation (with its entry's drop
/// counters), then the entries no mitigation covers as a whole.
pub fn ban_rows(mitigations: &[Mitigation], bans: &[BanEntry]) -> Vec<BanRow> {
    let mut rows: Vec<BanRow> = mitigations
        .iter()
        .map(|m| {
            let entry = bans
                .iter()
                .find(|b| b.prefix == m.prefix && b.match_on == m.match_on);
            BanRow {
                prefix: m.prefix,
                match_on: m.match_on,
                origin: m.origin,
                mitigation: Some(m.id.clone()),
                actions: m
                    .actions
                    .iter()
                    .filter(|a| a.result != ActionResult::Lifted)
                    .map(|a| format!("{} {}", a.action.as_str(), result_str(a.result)))
                    .collect(),
                started: m.started,
                expires: m.expires,
                attack_ongoing: m.attack_ongoing,
                dropped_packets: entry.map(|b| b.dropped_packets),
                dropped_bytes: entry.map(|b| b.dropped_bytes),
                reason: if m.reason.is_empty() && m.origin == BanOrigin::Detection {
                    format!("attack {}", m.id)
                } else {
                    m.reason.clone()
                },
            }
        })
        .collect();
    for b in bans {
        if mitigations
            .iter()
            .any(|m| m.prefix == b.prefix && m.match_on == b.match_on)
        {
            continue;
        }
        rows.push(BanRow {
            prefix: b.prefix,
            match_on: b.match_on,
            origin: b.origin,
            mitigation: None,
            actions: vec!["xdp_drop".into()],
            started: b.created,
            expires: b.expires,
            attack_ongoing: false,
            dropped_packets: Some(b.dropped_packets),
            dropped_bytes: Some(b.dropped_bytes),
            reason: b.reason.clone(),
        });
    }
    rows
}

/// `bans`: manual bans and automatic mitigations.
pub fn bans(rows: &[BanRow], now: u64) -> String {
    if rows.is_empty() {
        return "no active bans or mitigations\n".into();
    }
    let mut t = Table::new(&[
        ("PREFIX", Align::Left),
        ("MATCH", Align::Left),
        ("ORIGIN", Align::Left),
        ("ACTIONS", Align::Left),
        ("STARTED", Align::Left),
        ("EXPIRES", Align::Left),
        ("DROPPED", Align::Right),
        ("DROPPED BYTES", Align::Right),
        ("REASON", Align::Left),
    ]);
    for r in rows {
        let expires = if r.attack_ongoing && r.expires.is_some_and(|x| x <= now) {
            "when the attack stops".into()
        } else {
            units::expiry(r.expires, now)
        };
        t.row(vec![
            r.prefix.to_string(),
            r.match_on.as_str().into(),
            origin_str(r.origin).into(),
            if r.actions.is_empty() {
                "none".into()
            } else {
                r.actions.join(", ")
            },
            units::local_time(r.started),
            expires,
            r.dropped_packets
                .map_or_else(|| "-".into(), |p| units::si(p as f64)),
            r.dropped_bytes.map_or_else(|| "-".into(), units::bytes),
            r.reason.clone(),
        ]);
    }
    t.render()
}

/// What `thresholds IP` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdsReport {
    /// The address.
    pub ip: IpAddr,
    /// The `networks` prefix holding it (`None`: the agent does not count it).
    pub network: Option<Prefix>,
    /// Its hostgroup.
    pub hostgroup: Option<String>,
    /// The hostgroup prefix that matched.
    pub prefix: Option<Prefix>,
    /// Incoming thresholds.
    pub incoming: Thresholds,
    /// Outgoing thresholds.
    pub outgoing: Thresholds,
    /// What a ban of its attacks does.
    pub actions: Vec<String>,
    /// Detect and report only.
    pub report_only: bool,
    /// In the whitelist: never reported.
    pub whitelisted: bool,
}

/// `thresholds IP`.
pub fn thresholds(r: &ThresholdsReport) -> String {
    let mut s = String::new();
    match r.network {
        Some(n) => {
            let _ = writeln!(s, "{}: monitored (in networks, {n})", r.ip);
        }
        None => {
            let _ = writeln!(
                s,
                "{}: NOT in networks: the agent does not count its traffic, so none of these \
                 thresholds applies to it",
                r.ip
            );
        }
    }
    let _ = writeln!(
        s,
        "hostgroup: {}",
        match (&r.hostgroup, &r.prefix) {
            (Some(g), Some(p)) => format!("{g} ({p})"),
            (Some(g), None) => g.clone(),
            _ => "none (global [detection] thresholds)".into(),
        }
    );
    let _ = writeln!(
        s,
        "actions: {}{}",
        if r.actions.is_empty() {
            "none".into()
        } else {
            r.actions.join(", ")
        },
        if r.report_only {
            " (report only: never applied)"
        } else {
            ""
        }
    );
    if r.whitelisted {
        s.push_str("whitelisted: yes (never reported or banned)\n");
    }
    s.push('\n');
    let set: Vec<RateKind> = RateKind::ALL
        .into_iter()
        .filter(|k| r.incoming.get(*k).is_some() || r.outgoing.get(*k).is_some())
        .collect();
    if set.is_empty() {
        s.push_str("no thresholds set: nothing is ever detected for this address\n");
        return s;
    }
    let mut t = Table::new(&[
        ("RATE", Align::Left),
        ("INCOMING", Align::Right),
        ("OUTGOING", Align::Right),
    ]);
    for k in set {
        let cell = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| rate_with_unit(k, v));
        t.row(vec![
            rate_label(k).into(),
            cell(r.incoming.get(k)),
            cell(r.outgoing.get(k)),
        ]);
    }
    s.push_str(&t.render());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        accounting::Rates,
        actions::Action,
        detection::{
            attack::{AttackType, Fingerprint, FlowSummary},
            detector::Crossing,
        },
    };

    const NOW: u64 = 1_800_000_000;

    fn state(action: Action, result: ActionResult, error: Option<&str>) -> ActionState {
        ActionState {
            action,
            result,
            applied: None,
            error: error.map(str::to_owned),
            attempts: 1,
            next_retry_unix_ms: None,
        }
    }

    fn attack() -> Attack {
        let rates = Rates {
            pps: 12_000.0,
            bytes_per_second: 5_136_000.0,
            flows_per_second: 3.0,
            udp_pps: 12_000.0,
            udp_bytes_per_second: 5_136_000.0,
            ..Rates::default()
        };
        Attack {
            id: "0193a0b4-7c2e-7d1a-9f3e-2b1c4d5e6f70".into(),
            host: "10.10.0.9".parse().unwrap(),
            direction: Direction::Incoming,
            hostgroup: None,
            network: None,
            started_unix_ms: (NOW - 29 * 60 - 12) * 1000,
            ended_unix_ms: None,
            threshold: Crossing {
                rate: RateKind::Pps,
                value: 12_000.0,
                threshold: 2000.0,
            },
            initial_rates: rates,
            peak_rates: Rates {
                pps: 15_500.0,
                bytes_per_second: 6_634_000.0,
                ..rates
            },
            opposite_rates: Rates::default(),
            top_flows: vec![FlowSummary {
                src: "198.51.100.7".parse().unwrap(),
                dst: "10.10.0.9".parse().unwrap(),
                protocol: 17,
                src_port: 53,
                dst_port: 4444,
                packets: 16_000,
                bytes: 6_848_000,
            }],
            samples: Vec::new(),
            fingerprint: Fingerprint {
                dominant_protocol: "udp".into(),
                protocol: 17,
                source_port: Some((53, 1.0)),
                destination_port: Some((4444, 1.0)),
                packet_size: Some((428, 428)),
                distinct_sources: 1,
                top_sources_share: 1.0,
                attack_type: AttackType::DnsAmplification,
                ..Fingerprint::default()
            },
            actions: vec![
                state(Action::XdpRule, ActionResult::Ok, None),
                state(
                    Action::Webhook,
                    ActionResult::Retrying,
                    Some("webhook http://127.0.0.1:9/: connection refused"),
                ),
            ],
            report_only: false,
            pcap_file: None,
            sites: Vec::new(),
        }
    }

    fn mitigation(id: &str, origin: BanOrigin, prefix: &str, m: DropMatch) -> Mitigation {
        Mitigation {
            id: id.into(),
            origin,
            host: prefix.split('/').next().unwrap().parse().unwrap(),
            direction: (origin == BanOrigin::Detection).then_some(Direction::Incoming),
            prefix: prefix.parse().unwrap(),
            match_on: m,
            started: NOW - 60,
            expires: Some(NOW + 29 * 60 + 12),
            pps: 12_000,
            reason: if origin == BanOrigin::Manual {
                "abuse ticket 42".into()
            } else {
                String::new()
            },
            attack_ongoing: origin == BanOrigin::Detection,
            actions: vec![state(
                if origin == BanOrigin::Manual {
                    Action::XdpBlackhole
                } else {
                    Action::XdpRule
                },
                ActionResult::Ok,
                None,
            )],
            lifted: None,
            attack: None,
        }
    }

    #[test]
    fn the_hosts_table_has_units_and_aligned_columns() {
        let mut h: HostView = serde_json::from_value(serde_json::json!({
            "ip": "10.10.0.9",
            "incoming": {"packets": 1_234_567, "bytes": 528_000_000u64, "flows": 3,
                "tcp": {"packets": 0, "bytes": 0}, "udp": {"packets": 0, "bytes": 0},
                "icmp": {"packets": 0, "bytes": 0}, "other": {"packets": 0, "bytes": 0},
                "tcp_syn_packets": 0, "fragments": 0, "pps": 12000.0,
                "bytes_per_second": 5_136_000.0, "flows_per_second": 1.0},
            "outgoing": {"packets": 0, "bytes": 0, "flows": 0,
                "tcp": {"packets": 0, "bytes": 0}, "udp": {"packets": 0, "bytes": 0},
                "icmp": {"packets": 0, "bytes": 0}, "other": {"packets": 0, "bytes": 0},
                "tcp_syn_packets": 0, "fragments": 0, "pps": 0.0,
                "bytes_per_second": 0.0, "flows_per_second": 0.0},
        }))
        .unwrap();
        h.incoming.udp_pps = 11_900.0;
        h.incoming.icmp_pps = 50.0;
        assert_eq!(
            hosts(&[h.clone()], Direction::Incoming),
            "HOST         PPS       BITS/S  FLOWS/S  TCP PPS  UDP PPS  ICMP PPS  OTHER PPS  PACKETS   BYTES\n\
             10.10.0.9  12.0k  41.1 Mbit/s        1        0    11.9k        50         50    1.23M  528 MB\n"
        );
        // Conversations counted (a threshold uses them): their column too.
        h.incoming.conversations = 40;
        h.incoming.conversations_per_second = 3_500.0;
        let text = hosts(&[h], Direction::Incoming);
        assert!(
            text.starts_with("HOST         PPS       BITS/S  FLOWS/S  CONV/S  TCP PPS"),
            "{text}"
        );
        assert!(text.contains("        1   3.50k        0"), "{text}");
        assert_eq!(
            hosts(&[], Direction::Outgoing),
            "no outgoing traffic seen yet\n"
        );
    }

    #[test]
    fn the_attacks_table_reads_as_text_not_debug() {
        let a = attack();
        let started = units::local_time_ms(a.started_unix_ms);
        let expected = format!(
            "ID                                    HOST       DIRECTION  TYPE               STARTED              STATUS   DURATION  DETECTED AT        PEAK PPS  PEAK BITS/S  ACTIONS\n\
             0193a0b4-7c2e-7d1a-9f3e-2b1c4d5e6f70  10.10.0.9  incoming   dns_amplification  {started}  ongoing   29m 12s  pps 12.0k > 2.00k     15.5k  53.1 Mbit/s  xdp_rule ok, webhook retrying\n"
        );
        assert_eq!(attacks(std::slice::from_ref(&a), NOW, false), expected);
        let mut ended = a;
        ended.ended_unix_ms = Some(ended.started_unix_ms + 90_000);
        let text = attacks(&[ended.clone()], NOW, false);
        assert!(text.contains("  ended     1m 30s  "), "{text}");
        assert_eq!(attacks(&[ended], NOW, true), "no active attacks\n");
        assert_eq!(attacks(&[], NOW, false), "no attacks recorded\n");
    }

    #[test]
    fn the_attack_report_has_every_section() {
        let r = attack_report(&attack(), NOW);
        for line in [
            "Attack:            0193a0b4-7c2e-7d1a-9f3e-2b1c4d5e6f70\n",
            "Type:              dns_amplification\n",
            "Status:            ongoing\n",
            "Duration:          29m 12s\n",
            "Detected at:       pps 12.0k > 2.00k\n",
            "RATE           AT DETECTION         PEAK\n",
            "packets/s         12.0k pps    15.5k pps\n",
            "bits/s          41.1 Mbit/s  53.1 Mbit/s\n",
            "UDP packets/s     12.0k pps    12.0k pps\n",
            "  source port        53 (100% of packets)\n",
            "  packet size        428 to 428 bytes\n",
            "SOURCE           DESTINATION     PROTO  PACKETS    BYTES\n",
            "198.51.100.7:53  10.10.0.9:4444  udp      16.0k  6.85 MB\n",
            "ACTION    RESULT    ATTEMPTS  ERROR\n",
            "webhook   retrying         1  webhook http://127.0.0.1:9/: connection refused\n",
        ] {
            assert!(r.contains(line), "{line:?} missing from:\n{r}");
        }
        assert!(
            !r.contains("TCP packets/s"),
            "unset rates are left out:\n{r}"
        );
    }

    #[test]
    fn mitigations_and_bans_show_origin_expiry_and_drops() {
        let auto = mitigation(
            "0193a0b4-7c2e-7d1a-9f3e-2b1c4d5e6f70",
            BanOrigin::Detection,
            "10.10.0.9/32",
            DropMatch::Dst,
        );
        let manual = mitigation(
            "manual-1",
            BanOrigin::Manual,
            "198.51.100.7/32",
            DropMatch::Src,
        );
        let started = units::local_time(NOW - 60);
        assert_eq!(
            mitigations(&[auto.clone(), manual.clone()], NOW),
            format!(
                "ID                                    ORIGIN     TARGET               DIRECTION  STARTED              EXPIRES     ATTACK   ACTIONS           REASON\n\
                 0193a0b4-7c2e-7d1a-9f3e-2b1c4d5e6f70  detection  10.10.0.9/32 dst     incoming   {started}  in 29m 12s  ongoing  xdp_rule ok\n\
                 manual-1                              manual     198.51.100.7/32 src  -          {started}  in 29m 12s  -        xdp_blackhole ok  abuse ticket 42\n"
            )
        );
        assert_eq!(mitigations(&[], NOW), "no active mitigations\n");

        let entries = vec![
            BanEntry {
                prefix: "198.51.100.7/32".parse().unwrap(),
                match_on: DropMatch::Src,
                created: NOW - 60,
                expires: Some(NOW + 29 * 60 + 12),
                origin: BanOrigin::Manual,
                reason: "abuse ticket 42".into(),
                dropped_packets: 29_412,
                dropped_bytes: 12_588_336,
            },
            BanEntry {
                prefix: "203.0.113.5/32".parse().unwrap(),
                match_on: DropMatch::Src,
                created: NOW - 60,
                expires: None,
                origin: BanOrigin::Detection,
                reason: "0193a0b4".into(),
                dropped_packets: 0,
                dropped_bytes: 0,
            },
        ];
        let mut kept = auto;
        kept.expires = Some(NOW - 5); // past its time, its attack goes on
        let rows = ban_rows(&[kept, manual], &entries);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            bans(&rows, NOW),
            format!(
                "PREFIX           MATCH  ORIGIN     ACTIONS           STARTED              EXPIRES                DROPPED  DROPPED BYTES  REASON\n\
                 10.10.0.9/32     dst    detection  xdp_rule ok       {started}  when the attack stops        -              -  attack 0193a0b4-7c2e-7d1a-9f3e-2b1c4d5e6f70\n\
                 198.51.100.7/32  src    manual     xdp_blackhole ok  {started}  in 29m 12s               29.4k        12.6 MB  abuse ticket 42\n\
                 203.0.113.5/32   src    detection  xdp_drop          {started}  never                        0            0 B  0193a0b4\n"
            )
        );
        // The JSON rows read back as they were.
        let text = serde_json::to_string(&rows).unwrap();
        assert_eq!(serde_json::from_str::<Vec<BanRow>>(&text).unwrap(), rows);
        assert_eq!(bans(&[], NOW), "no active bans or mitigations\n");
    }

    #[test]
    fn thresholds_say_whether_the_address_is_monitored() {
        let t: Thresholds = toml::from_str("pps = 20000\nmbps = 1000\nudp_pps = 10000\n").unwrap();
        let r = ThresholdsReport {
            ip: "10.10.0.9".parse().unwrap(),
            network: Some("10.10.0.0/16".parse().unwrap()),
            hostgroup: Some("vip".into()),
            prefix: Some("10.10.0.0/24".parse().unwrap()),
            incoming: t,
            outgoing: Thresholds {
                pps: Some(1000.0),
                ..Thresholds::default()
            },
            actions: vec!["xdp_rule".into(), "script".into()],
            report_only: false,
            whitelisted: false,
        };
        assert_eq!(
            thresholds(&r),
            "10.10.0.9: monitored (in networks, 10.10.0.0/16)\n\
             hostgroup: vip (10.10.0.0/24)\n\
             actions: xdp_rule, script\n\
             \n\
             RATE              INCOMING   OUTGOING\n\
             packets/s        20.0k pps  1.00k pps\n\
             bits/s         1.00 Gbit/s          -\n\
             UDP packets/s    10.0k pps          -\n"
        );
        let outside = ThresholdsReport {
            ip: "192.0.2.1".parse().unwrap(),
            network: None,
            hostgroup: None,
            prefix: None,
            incoming: Thresholds::default(),
            outgoing: Thresholds::default(),
            actions: vec![],
            report_only: false,
            whitelisted: true,
        };
        let text = thresholds(&outside);
        assert!(text.starts_with("192.0.2.1: NOT in networks"), "{text}");
        assert!(
            text.contains("hostgroup: none (global [detection] thresholds)"),
            "{text}"
        );
        assert!(text.contains("whitelisted: yes"), "{text}");
        assert!(text.contains("no thresholds set"), "{text}");
    }
}
