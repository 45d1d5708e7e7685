//! GoBGP v3 backend: adds and deletes paths in gobgpd's global RIB through its gRPC API.
//!
//! Pinned to GoBGP's v3 API (Debian 12's gobgpd 3.10.0; definitions in `fnm-agent/proto/gobgp/`).
//! Blackholes are IPv4/IPv6 unicast paths with ORIGIN IGP, NEXT_HOP and COMMUNITIES /
//! LARGE_COMMUNITIES; flowspec rules are IPv4/IPv6 flowspec (SAFI 133) paths whose NLRI lists the
//! rule's components and whose traffic-rate extended community carries the action (0 = discard).
//! gobgpd then sends them to whichever neighbours its policy allows.
//!
//! The channel connects lazily and reconnects by itself; every call is bounded by the configured
//! timeout, so a dead gobgpd fails announcements instead of blocking the agent.

use super::{
    flowspec::{self, FlowspecAction},
    gobgp_api::apipb::{
        self, family::Afi, family::Safi, gobgp_api_client::GobgpApiClient, AddPathRequest,
        DeletePathRequest, Family, TableType,
    },
    BgpConfig, BgpError, Community, FlowspecRule,
};
use crate::prefix::Prefix;
use prost::Message;
use std::{
    future::Future,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};
use tonic::transport::{Channel, Endpoint};

/// RFC 8955 component types.
mod component {
    pub const DESTINATION_PREFIX: u32 = 1;
    pub const SOURCE_PREFIX: u32 = 2;
    pub const IP_PROTOCOL: u32 = 3;
    pub const DESTINATION_PORT: u32 = 5;
    pub const SOURCE_PORT: u32 = 6;
    pub const TCP_FLAGS: u32 = 9;
    pub const PACKET_LENGTH: u32 = 10;
    pub const FRAGMENT: u32 = 12;
}

/// RFC 8955 operator bits (the value length bits are filled in by gobgpd).
mod op {
    pub const END_OF_LIST: u32 = 0x80;
    pub const AND: u32 = 0x40;
    pub const LESS: u32 = 0x04;
    pub const GREATER: u32 = 0x02;
    pub const EQUAL: u32 = 0x01;
    pub const NOT: u32 = 0x02;
    pub const MATCH: u32 = 0x01;
}

/// Announces through gobgpd's gRPC API.
#[derive(Debug, Clone)]
pub struct GobgpAnnouncer {
    client: GobgpApiClient<Channel>,
    next_hop: Ipv4Addr,
    next_hop_v6: Ipv6Addr,
    communities: Vec<Community>,
    timeout: Duration,
}

impl GobgpAnnouncer {
    /// A client of the gobgpd API at `config.gobgp_api`; connects on first use. Must be called
    /// inside a Tokio runtime (the channel's connection task is spawned on it).
    pub fn new(config: &BgpConfig) -> Result<Self, BgpError> {
        let endpoint = Endpoint::from_shared(format!("http://{}", config.gobgp_api))
            .map_err(|source| BgpError::GobgpEndpoint {
                address: config.gobgp_api.to_string(),
                source,
            })?
            .connect_timeout(config.timeout)
            .timeout(config.timeout);
        Ok(Self {
            client: GobgpApiClient::new(endpoint.connect_lazy()),
            next_hop: config.next_hop,
            next_hop_v6: config.next_hop_v6,
            communities: config.communities.clone(),
            timeout: config.timeout,
        })
    }

    /// Announces `prefix` with the blackhole next hop and communities.
    pub async fn announce_blackhole(&self, prefix: Prefix) -> Result<(), BgpError> {
        self.announce_blackhole_with(prefix, &self.communities)
            .await
    }

    /// Announces `prefix` with the blackhole next hop and `communities`.
    pub async fn announce_blackhole_with(
        &self,
        prefix: Prefix,
        communities: &[Community],
    ) -> Result<(), BgpError> {
        let path = self.blackhole_path(prefix, communities);
        self.add(path).await
    }

    /// Withdraws the blackhole route of `prefix`.
    pub async fn withdraw_blackhole(&self, prefix: Prefix) -> Result<(), BgpError> {
        let path = self.blackhole_path(prefix, &self.communities);
        self.delete(path).await
    }

    /// Announces a flowspec rule.
    pub async fn announce_flowspec(&self, rule: &FlowspecRule) -> Result<(), BgpError> {
        rule.validate()?;
        self.add(flowspec_path(rule)).await
    }

    /// Withdraws a flowspec rule announced before.
    pub async fn withdraw_flowspec(&self, rule: &FlowspecRule) -> Result<(), BgpError> {
        rule.validate()?;
        self.delete(flowspec_path(rule)).await
    }

    /// Asks gobgpd for its global configuration (`GetBgp`): it answers once its BGP server
    /// runs. Returns its AS and router id.
    pub async fn probe(&self) -> Result<String, BgpError> {
        let mut client = self.client.clone();
        let call = async move { client.get_bgp(apipb::GetBgpRequest {}).await };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|status| BgpError::Gobgp(Box::new(status)))?,
            Err(_) => return Err(BgpError::Timeout(self.timeout)),
        };
        Ok(match answer.into_inner().global {
            Some(g) => format!("gobgpd answers: AS {}, router id {}", g.asn, g.router_id),
            None => "gobgpd answers".to_owned(),
        })
    }

    async fn add(&self, path: apipb::Path) -> Result<(), BgpError> {
        let mut client = self.client.clone();
        let request = AddPathRequest {
            table_type: TableType::Global as i32,
            vrf_id: String::new(),
            path: Some(path),
        };
        self.bounded(async move { client.add_path(request).await.map(drop) })
            .await
    }

    async fn delete(&self, path: apipb::Path) -> Result<(), BgpError> {
        let mut client = self.client.clone();
        // The path must always be set: a DeletePath without path or uuid deletes the whole family.
        let request = DeletePathRequest {
            table_type: TableType::Global as i32,
            vrf_id: String::new(),
            family: path.family,
            path: Some(path),
            uuid: Vec::new(),
        };
        self.bounded(async move { client.delete_path(request).await.map(drop) })
            .await
    }

    async fn bounded(
        &self,
        call: impl Future<Output = Result<(), tonic::Status>>,
    ) -> Result<(), BgpError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|status| BgpError::Gobgp(Box::new(status))),
            Err(_) => Err(BgpError::Timeout(self.timeout)),
        }
    }

    fn blackhole_path(&self, prefix: Prefix, communities: &[Community]) -> apipb::Path {
        let (afi, next_hop) = if prefix.is_ipv4() {
            (Afi::Ip, self.next_hop.to_string())
        } else {
            (Afi::Ip6, self.next_hop_v6.to_string())
        };
        let nlri = any(
            "IPAddressPrefix",
            &apipb::IpAddressPrefix {
                prefix_len: u32::from(prefix.len()),
                prefix: prefix.addr().to_string(),
            },
        );
        let mut attributes = vec![
            origin_igp(),
            any("NextHopAttribute", &apipb::NextHopAttribute { next_hop }),
        ];
        let standard: Vec<u32> = communities
            .iter()
            .filter_map(|community| match *community {
                Community::Standard { asn, value } => {
                    Some((u32::from(asn) << 16) | u32::from(value))
                }
                Community::Large { .. } => None,
            })
            .collect();
        if !standard.is_empty() {
            attributes.push(any(
                "CommunitiesAttribute",
                &apipb::CommunitiesAttribute {
                    communities: standard,
                },
            ));
        }
        let large: Vec<apipb::LargeCommunity> = communities
            .iter()
            .filter_map(|community| match *community {
                Community::Large {
                    global,
                    local1,
                    local2,
                } => Some(apipb::LargeCommunity {
                    global_admin: global,
                    local_data1: local1,
                    local_data2: local2,
                }),
                Community::Standard { .. } => None,
            })
            .collect();
        if !large.is_empty() {
            attributes.push(any(
                "LargeCommunitiesAttribute",
                &apipb::LargeCommunitiesAttribute { communities: large },
            ));
        }
        path(afi, Safi::Unicast, nlri, attributes)
    }
}

/// The flowspec path of `rule`: components in ascending type order, as RFC 8955 requires.
fn flowspec_path(rule: &FlowspecRule) -> apipb::Path {
    let ipv4 = rule.destination.is_ipv4();
    let mut rules = vec![prefix_component(
        component::DESTINATION_PREFIX,
        rule.destination,
    )];
    if let Some(source) = rule.source {
        rules.push(prefix_component(component::SOURCE_PREFIX, source));
    }
    if let Some(protocol) = rule.protocol {
        rules.push(items_component(
            component::IP_PROTOCOL,
            vec![(op::EQUAL, u64::from(protocol))],
        ));
    }
    if !rule.destination_ports.is_empty() {
        rules.push(numeric_component(
            component::DESTINATION_PORT,
            &flowspec::range_terms(&rule.destination_ports),
        ));
    }
    if !rule.source_ports.is_empty() {
        rules.push(numeric_component(
            component::SOURCE_PORT,
            &flowspec::range_terms(&rule.source_ports),
        ));
    }
    if let Some(flags) = rule.tcp_flags {
        let items = flowspec::tcp_flag_terms(flags)
            .into_iter()
            .enumerate()
            .map(|(index, term)| {
                let and = if index == 0 { 0 } else { op::AND };
                let operator = if term.set { op::MATCH } else { op::NOT };
                (and | operator, u64::from(term.flag))
            })
            .collect();
        rules.push(items_component(component::TCP_FLAGS, items));
    }
    if let Some(range) = rule.packet_length {
        rules.push(numeric_component(
            component::PACKET_LENGTH,
            &flowspec::range_terms(&[range]),
        ));
    }
    if let Some(fragment) = rule.fragment {
        rules.push(items_component(
            component::FRAGMENT,
            vec![(0, u64::from(fragment.bit()))],
        ));
    }
    let nlri = any("FlowSpecNLRI", &apipb::FlowSpecNlri { rules });
    let (afi, next_hop) = if ipv4 {
        (Afi::Ip, Ipv4Addr::UNSPECIFIED.to_string())
    } else {
        (Afi::Ip6, Ipv6Addr::UNSPECIFIED.to_string())
    };
    let rate = match rule.action {
        FlowspecAction::Discard => 0.0,
        FlowspecAction::RateLimit { bytes_per_second } => bytes_per_second as f32,
    };
    let attributes = vec![
        origin_igp(),
        any("NextHopAttribute", &apipb::NextHopAttribute { next_hop }),
        any(
            "ExtendedCommunitiesAttribute",
            &apipb::ExtendedCommunitiesAttribute {
                communities: vec![any(
                    "TrafficRateExtended",
                    &apipb::TrafficRateExtended { asn: 0, rate },
                )],
            },
        ),
    ];
    path(afi, Safi::FlowSpecUnicast, nlri, attributes)
}

fn prefix_component(kind: u32, prefix: Prefix) -> prost_types::Any {
    any(
        "FlowSpecIPPrefix",
        &apipb::FlowSpecIpPrefix {
            r#type: kind,
            prefix_len: u32::from(prefix.len()),
            prefix: prefix.addr().to_string(),
            offset: 0,
        },
    )
}

fn numeric_component(kind: u32, terms: &[flowspec::NumericTerm]) -> prost_types::Any {
    let items = terms
        .iter()
        .map(|term| {
            let and = if term.and { op::AND } else { 0 };
            let comparison = match term.comparison {
                flowspec::Comparison::Equal => op::EQUAL,
                flowspec::Comparison::AtLeast => op::GREATER | op::EQUAL,
                flowspec::Comparison::AtMost => op::LESS | op::EQUAL,
            };
            (and | comparison, u64::from(term.value))
        })
        .collect();
    items_component(kind, items)
}

/// A component from `(operator, value)` items; marks the last item as the end of the list.
fn items_component(kind: u32, mut items: Vec<(u32, u64)>) -> prost_types::Any {
    if let Some(last) = items.last_mut() {
        last.0 |= op::END_OF_LIST;
    }
    any(
        "FlowSpecComponent",
        &apipb::FlowSpecComponent {
            r#type: kind,
            items: items
                .into_iter()
                .map(|(op, value)| apipb::FlowSpecComponentItem { op, value })
                .collect(),
        },
    )
}

fn origin_igp() -> prost_types::Any {
    any("OriginAttribute", &apipb::OriginAttribute { origin: 0 })
}

fn path(
    afi: Afi,
    safi: Safi,
    nlri: prost_types::Any,
    attributes: Vec<prost_types::Any>,
) -> apipb::Path {
    apipb::Path {
        nlri: Some(nlri),
        pattrs: attributes,
        family: Some(Family {
            afi: afi as i32,
            safi: safi as i32,
        }),
        ..Default::default()
    }
}

/// Packs `message` as the `google.protobuf.Any` GoBGP expects for its type `apipb.<name>`.
fn any(name: &str, message: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/apipb.{name}"),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::bgp::ValueRange;

    fn decode_component(any: &prost_types::Any) -> apipb::FlowSpecComponent {
        assert_eq!(any.type_url, "type.googleapis.com/apipb.FlowSpecComponent");
        apipb::FlowSpecComponent::decode(any.value.as_slice()).expect("component")
    }

    #[test]
    fn flowspec_nlri_orders_components_and_ends_lists() {
        let mut rule = FlowspecRule::to_destination(
            "198.51.100.7/32".parse().expect("prefix"),
            FlowspecAction::Discard,
        );
        rule.protocol = Some(17);
        rule.source_ports = vec![
            ValueRange::single(53),
            ValueRange {
                first: 1000,
                last: 2000,
            },
        ];
        rule.destination_ports = vec![ValueRange::single(80)];
        let path = flowspec_path(&rule);
        let family = path.family.expect("family");
        assert_eq!(family.safi, Safi::FlowSpecUnicast as i32);
        let nlri =
            apipb::FlowSpecNlri::decode(path.nlri.expect("nlri").value.as_slice()).expect("nlri");
        assert_eq!(nlri.rules.len(), 4);
        let protocol = decode_component(&nlri.rules[1]);
        assert_eq!(protocol.r#type, component::IP_PROTOCOL);
        assert_eq!(protocol.items[0].op, op::EQUAL | op::END_OF_LIST);
        let destination_port = decode_component(&nlri.rules[2]);
        assert_eq!(destination_port.r#type, component::DESTINATION_PORT);
        let source_port = decode_component(&nlri.rules[3]);
        assert_eq!(source_port.r#type, component::SOURCE_PORT);
        let ops: Vec<u32> = source_port.items.iter().map(|item| item.op).collect();
        assert_eq!(
            ops,
            vec![
                op::EQUAL,
                op::GREATER | op::EQUAL,
                op::AND | op::LESS | op::EQUAL | op::END_OF_LIST
            ]
        );
    }

    #[tokio::test]
    async fn blackhole_path_packs_communities() {
        let config = BgpConfig {
            communities: vec![
                Community::BLACKHOLE,
                Community::Large {
                    global: 64512,
                    local1: 1,
                    local2: 2,
                },
            ],
            ..BgpConfig::default()
        };
        let announcer = GobgpAnnouncer::new(&config).expect("client");
        let path = announcer.blackhole_path(
            "2001:db8::7/128".parse().expect("prefix"),
            &config.communities,
        );
        let names: Vec<&str> = path.pattrs.iter().map(|a| a.type_url.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "type.googleapis.com/apipb.OriginAttribute",
                "type.googleapis.com/apipb.NextHopAttribute",
                "type.googleapis.com/apipb.CommunitiesAttribute",
                "type.googleapis.com/apipb.LargeCommunitiesAttribute",
            ]
        );
        let communities = apipb::CommunitiesAttribute::decode(path.pattrs[2].value.as_slice())
            .expect("communities");
        assert_eq!(communities.communities, vec![0xFFFF_029A]);
        let next_hop =
            apipb::NextHopAttribute::decode(path.pattrs[1].value.as_slice()).expect("next hop");
        assert_eq!(next_hop.next_hop, "100::1");
    }

    #[tokio::test]
    async fn unreachable_daemon_fails_within_the_timeout() {
        // Bind a port, then close it: nothing listens there, so the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let config = BgpConfig {
            gobgp_api: ([127, 0, 0, 1], port).into(),
            timeout: Duration::from_secs(2),
            ..BgpConfig::default()
        };
        let announcer = GobgpAnnouncer::new(&config).expect("client");
        let started = std::time::Instant::now();
        let result = announcer
            .announce_blackhole("198.51.100.7/32".parse().expect("prefix"))
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
