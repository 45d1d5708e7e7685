//! `networks`: traffic per configured network and per hostgroup (`GET /api/v1/networks`).

use super::{
    json,
    tables::{Align, Table},
    units, ApiClient, CliError,
};
use crate::{
    accounting::Direction,
    network_views::{NetworkView, NetworksView},
    views::DirectionView,
};

/// `networks`: fetches `GET /api/v1/networks` and shows one direction of every row (or the
/// API's JSON as is).
pub fn networks(api: &ApiClient, direction: Direction, as_json: bool) -> Result<String, CliError> {
    let view: NetworksView = api.get("/api/v1/networks")?;
    if as_json {
        return json(&view);
    }
    Ok(render(&view, direction))
}

/// The table: networks in config order (`other` last, when rows were capped), then
/// hostgroups; rates in human units.
pub fn render(view: &NetworksView, direction: Direction) -> String {
    if view.networks.is_empty() && view.hostgroups.is_empty() {
        return "no networks configured\n".into();
    }
    let mut t = Table::new(&[
        ("KIND", Align::Left),
        ("NAME", Align::Left),
        ("PPS", Align::Right),
        ("BITS/S", Align::Right),
        ("FLOWS/S", Align::Right),
        ("TCP PPS", Align::Right),
        ("UDP PPS", Align::Right),
        ("ICMP PPS", Align::Right),
        ("PACKETS", Align::Right),
        ("BYTES", Align::Right),
    ]);
    let rows = view
        .networks
        .iter()
        .map(|r| ("network", r))
        .chain(view.hostgroups.iter().map(|r| ("hostgroup", r)));
    for (kind, row) in rows {
        let d = side(row, direction);
        t.row(vec![
            kind.to_owned(),
            row.name.clone(),
            units::pps(d.pps),
            units::bits_per_second(d.bytes_per_second),
            units::si(d.flows_per_second),
            units::pps(d.tcp_pps),
            units::pps(d.udp_pps),
            units::pps(d.icmp_pps),
            units::si(d.packets as f64),
            units::bytes(d.bytes),
        ]);
    }
    format!("{} traffic\n{}", direction.as_str(), t.render())
}

fn side(row: &NetworkView, direction: Direction) -> &DirectionView {
    match direction {
        Direction::Incoming => &row.incoming,
        Direction::Outgoing => &row.outgoing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> NetworksView {
        let dir = |pps: f64, packets: u64| -> DirectionView {
            serde_json::from_value(serde_json::json!({
                "packets": packets, "bytes": packets * 428, "flows": 1,
                "tcp": {"packets": 0, "bytes": 0},
                "udp": {"packets": packets, "bytes": packets * 428},
                "icmp": {"packets": 0, "bytes": 0},
                "other": {"packets": 0, "bytes": 0},
                "tcp_syn_packets": 0, "fragments": 0,
                "pps": pps, "bytes_per_second": pps * 428.0, "flows_per_second": 0.0,
                "udp_pps": pps,
            }))
            .unwrap()
        };
        NetworksView {
            networks: vec![
                NetworkView {
                    name: "10.77.0.0/24".into(),
                    incoming: dir(4000.0, 24_000),
                    outgoing: dir(0.0, 0),
                },
                NetworkView {
                    name: "other".into(),
                    incoming: dir(0.0, 0),
                    outgoing: dir(0.0, 0),
                },
            ],
            hostgroups: vec![NetworkView {
                name: "lab".into(),
                incoming: dir(4000.0, 24_000),
                outgoing: dir(0.0, 0),
            }],
        }
    }

    #[test]
    fn shows_networks_then_hostgroups_in_human_units() {
        let text = render(&view(), Direction::Incoming);
        println!("{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "incoming traffic");
        assert!(lines[1].starts_with("KIND"), "{text}");
        assert!(lines[1].contains("BITS/S") && lines[1].contains("PACKETS"));
        assert!(lines[2].starts_with("network    10.77.0.0/24"), "{text}");
        assert!(
            lines[2].contains("4.00k") && lines[2].contains("13.7 Mbit/s"),
            "{text}"
        );
        assert!(lines[3].starts_with("network    other"), "{text}");
        assert!(lines[4].starts_with("hostgroup  lab"), "{text}");
        assert_eq!(lines.len(), 5);
        let out = render(&view(), Direction::Outgoing);
        assert!(out.starts_with("outgoing traffic\n"));
        assert!(!out.contains("4.00k"), "{out}");
    }

    #[test]
    fn says_when_there_is_nothing_to_show() {
        assert_eq!(
            render(&NetworksView::default(), Direction::Incoming),
            "no networks configured\n"
        );
    }
}
