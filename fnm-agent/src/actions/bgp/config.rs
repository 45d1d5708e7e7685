//! The `[bgp]` configuration section and BGP communities.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

/// Which BGP daemon fnm drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BgpBackend {
    /// GoBGP v3 (`gobgpd`), through its gRPC API.
    #[default]
    Gobgp,
    /// ExaBGP 4.x, through its text API on a named pipe.
    Exabgp,
}

/// Which routes `bgp_blackhole` announces for an attack on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BgpAnnounce {
    /// The host's /32 or /128 (FastNetMon's `*_announce_host`).
    #[default]
    Host,
    /// The host's subnet (FastNetMon's `*_announce_whole_subnet`): see
    /// [`BgpConfig::subnet_length_v4`].
    Subnet,
    /// Both routes.
    Both,
    /// Nothing (for one address family).
    None,
}

impl BgpAnnounce {
    /// True when the host route is announced.
    pub fn host(self) -> bool {
        matches!(self, BgpAnnounce::Host | BgpAnnounce::Both)
    }

    /// True when the subnet route is announced.
    pub fn subnet(self) -> bool {
        matches!(self, BgpAnnounce::Subnet | BgpAnnounce::Both)
    }
}

/// What a blackhole route stands for, which picks its communities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRole {
    /// The attacked host's /32 or /128, or a manual ban's prefix.
    Host,
    /// The attacked host's subnet.
    Subnet,
}

/// `[bgp]`: how blackhole routes and flowspec rules are announced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BgpConfig {
    /// Daemon that announces the routes: `"gobgp"` or `"exabgp"`. Default `"gobgp"`.
    pub backend: BgpBackend,
    /// Address of gobgpd's gRPC API (its `--api-hosts`). Default `"127.0.0.1:50051"`.
    pub gobgp_api: SocketAddr,
    /// ExaBGP's command pipe: the `exabgp.in` FIFO its CLI control reads (`mkfifo
    /// /run/exabgp.{in,out}` before starting exabgp, `exabgp.api.cli=true`). Default
    /// `"/run/exabgp.in"`.
    pub exabgp_pipe: PathBuf,
    /// Next hop of IPv4 blackhole routes. Default `"192.0.2.254"`.
    pub next_hop: Ipv4Addr,
    /// Next hop of IPv6 blackhole routes. Default `"100::1"` (RFC 6666 discard prefix).
    pub next_hop_v6: Ipv6Addr,
    /// Communities attached to blackhole routes: `"asn:value"` (RFC 1997) or `"global:local1:local2"`
    /// (RFC 8092 large community). Default `["65535:666"]` (RFC 7999 BLACKHOLE).
    pub communities: Vec<Community>,
    /// Longest time one announcement or withdrawal may take before it fails, so a dead daemon
    /// never blocks the agent. Default `"5s"`.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub timeout: Duration,
    /// What `bgp_blackhole` announces for an attack on an IPv4 host: `"host"` (its /32),
    /// `"subnet"`, `"both"` or `"none"`. Default `"host"`.
    pub announce: BgpAnnounce,
    /// The same for an IPv6 host (`"host"`: its /128). Default: as `announce`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce_v6: Option<BgpAnnounce>,
    /// Length of an IPv4 subnet route: the host's address masked to it. Unset (default): the
    /// most specific hostgroup prefix holding the host, else its `networks` entry (as
    /// FastNetMon announces the `networks_list` entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_length_v4: Option<u8>,
    /// Length of an IPv6 subnet route; unset as above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_length_v6: Option<u8>,
    /// Communities of IPv4 host routes (and manual bans). Default: `communities`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_communities: Option<Vec<Community>>,
    /// Communities of IPv4 subnet routes. Default: `communities`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_communities: Option<Vec<Community>>,
    /// Communities of IPv6 host routes. Default: `host_communities`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_communities_v6: Option<Vec<Community>>,
    /// Communities of IPv6 subnet routes. Default: `subnet_communities`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_communities_v6: Option<Vec<Community>>,
}

impl Default for BgpConfig {
    fn default() -> Self {
        Self {
            backend: BgpBackend::Gobgp,
            gobgp_api: SocketAddr::from(([127, 0, 0, 1], 50051)),
            exabgp_pipe: PathBuf::from("/run/exabgp.in"),
            next_hop: Ipv4Addr::new(192, 0, 2, 254),
            next_hop_v6: Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1),
            communities: vec![Community::BLACKHOLE],
            timeout: Duration::from_secs(5),
            announce: BgpAnnounce::Host,
            announce_v6: None,
            subnet_length_v4: None,
            subnet_length_v6: None,
            host_communities: None,
            subnet_communities: None,
            host_communities_v6: None,
            subnet_communities_v6: None,
        }
    }
}

impl BgpConfig {
    /// Checks values serde cannot: a zero timeout, or an empty ExaBGP pipe path when ExaBGP is
    /// the backend.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err("bgp.timeout must be above zero".into());
        }
        if self.backend == BgpBackend::Exabgp && self.exabgp_pipe.as_os_str().is_empty() {
            return Err("bgp.exabgp_pipe must name ExaBGP's command pipe".into());
        }
        if let Some(len) = self.subnet_length_v4.filter(|l| !(8..=32).contains(l)) {
            return Err(format!(
                "bgp.subnet_length_v4 = {len}: must be between 8 and 32"
            ));
        }
        if let Some(len) = self.subnet_length_v6.filter(|l| !(16..=128).contains(l)) {
            return Err(format!(
                "bgp.subnet_length_v6 = {len}: must be between 16 and 128"
            ));
        }
        Ok(())
    }

    /// True when some attack may get a subnet route.
    pub fn announces_subnets(&self) -> bool {
        self.announce_for(false).subnet() || self.announce_for(true).subnet()
    }

    /// What to announce for an attack on an IPv4 (`v6` false) or IPv6 host.
    pub fn announce_for(&self, v6: bool) -> BgpAnnounce {
        if v6 {
            self.announce_v6.unwrap_or(self.announce)
        } else {
            self.announce
        }
    }

    /// The communities of a route of `role` and family.
    pub fn communities_for(&self, role: RouteRole, v6: bool) -> &[Community] {
        let (v4, v6_own) = match role {
            RouteRole::Host => (&self.host_communities, &self.host_communities_v6),
            RouteRole::Subnet => (&self.subnet_communities, &self.subnet_communities_v6),
        };
        let v4 = v4.as_deref().unwrap_or(self.communities.as_slice());
        if v6 {
            v6_own.as_deref().unwrap_or(v4)
        } else {
            v4
        }
    }

    /// The subnet route of `host`: its address masked to the configured length, else
    /// `network` (its hostgroup prefix or `networks` entry).
    pub fn subnet_of(
        &self,
        host: std::net::IpAddr,
        network: Option<crate::prefix::Prefix>,
    ) -> Option<crate::prefix::Prefix> {
        let length = if host.is_ipv4() {
            self.subnet_length_v4
        } else {
            self.subnet_length_v6
        };
        match length {
            Some(len) => crate::prefix::Prefix::new(host, len),
            None => network.filter(|n| n.contains(host)),
        }
    }
}

/// A BGP community: standard (RFC 1997) or large (RFC 8092).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Community {
    /// `asn:value`, two 16-bit halves.
    Standard {
        /// High 16 bits (usually the AS number).
        asn: u16,
        /// Low 16 bits.
        value: u16,
    },
    /// `global:local1:local2`, three 32-bit parts.
    Large {
        /// Global administrator (usually the AS number).
        global: u32,
        /// First local data part.
        local1: u32,
        /// Second local data part.
        local2: u32,
    },
}

impl Community {
    /// RFC 7999 BLACKHOLE, `65535:666`.
    pub const BLACKHOLE: Community = Community::Standard {
        asn: 65535,
        value: 666,
    };
}

/// Why text is not a community.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid BGP community {0:?}: expected \"asn:value\" (16-bit parts) or \"global:local1:local2\" (32-bit parts)")]
pub struct CommunityError(String);

impl FromStr for Community {
    type Err = CommunityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || CommunityError(text.to_owned());
        let parts: Vec<&str> = text.trim().splitn(4, ':').collect();
        match parts.as_slice() {
            [asn, value] => Ok(Community::Standard {
                asn: asn.parse().map_err(|_| err())?,
                value: value.parse().map_err(|_| err())?,
            }),
            [global, local1, local2] => Ok(Community::Large {
                global: global.parse().map_err(|_| err())?,
                local1: local1.parse().map_err(|_| err())?,
                local2: local2.parse().map_err(|_| err())?,
            }),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard { asn, value } => write!(f, "{asn}:{value}"),
            Community::Large {
                global,
                local1,
                local2,
            } => write!(f, "{global}:{local1}:{local2}"),
        }
    }
}

impl Serialize for Community {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Community {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_example_parses() {
        let text = r#"
            backend = "exabgp"
            gobgp_api = "127.0.0.1:50051"
            exabgp_pipe = "/run/exabgp.in"
            next_hop = "192.0.2.254"
            communities = ["65535:666", "64512:1:2"]
        "#;
        let config: BgpConfig = toml::from_str(text).expect("contract example");
        assert_eq!(config.backend, BgpBackend::Exabgp);
        assert_eq!(
            config.communities,
            vec![
                Community::BLACKHOLE,
                Community::Large {
                    global: 64512,
                    local1: 1,
                    local2: 2
                }
            ]
        );
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.next_hop_v6, "100::1".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn empty_section_is_the_default() {
        let config: BgpConfig = toml::from_str("").expect("empty");
        assert_eq!(config, BgpConfig::default());
        assert_eq!(config.communities, vec![Community::BLACKHOLE]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(toml::from_str::<BgpConfig>("nexthop = \"192.0.2.1\"").is_err());
        assert!(toml::from_str::<BgpConfig>("backend = \"bird\"").is_err());
        assert!(toml::from_str::<BgpConfig>("communities = [\"65536:1\"]").is_err());
        assert!(toml::from_str::<BgpConfig>("communities = [\"1:2:3:4\"]").is_err());
        assert!(toml::from_str::<BgpConfig>("communities = [\"blackhole\"]").is_err());
    }

    #[test]
    fn validation_rejects_zero_timeout_and_empty_pipe() {
        assert_eq!(BgpConfig::default().validate(), Ok(()));
        let zero: BgpConfig = toml::from_str("timeout = \"0s\"").expect("parses");
        assert!(zero.validate().is_err());
        let no_pipe: BgpConfig =
            toml::from_str("backend = \"exabgp\"\nexabgp_pipe = \"\"").expect("parses");
        assert!(no_pipe.validate().is_err());
    }

    #[test]
    fn route_communities_fall_back_to_the_general_ones() {
        let plain: BgpConfig = toml::from_str("communities = [\"65001:666\"]").unwrap();
        let c = |t: &str| -> Community { t.parse().unwrap() };
        for role in [RouteRole::Host, RouteRole::Subnet] {
            for v6 in [false, true] {
                assert_eq!(plain.communities_for(role, v6), [c("65001:666")]);
            }
        }
        assert_eq!(plain.announce_for(false), BgpAnnounce::Host);
        assert_eq!(plain.announce_for(true), BgpAnnounce::Host);
        let split: BgpConfig = toml::from_str(
            "announce = \"both\"\nannounce_v6 = \"none\"\n\
             host_communities = [\"65001:666\"]\nsubnet_communities = [\"65001:777\"]\n\
             host_communities_v6 = [\"65001:6666\", \"64512:1:2\"]",
        )
        .unwrap();
        assert_eq!(
            split.communities_for(RouteRole::Host, false),
            [c("65001:666")]
        );
        assert_eq!(
            split.communities_for(RouteRole::Subnet, false),
            [c("65001:777")]
        );
        assert_eq!(
            split.communities_for(RouteRole::Host, true),
            [c("65001:6666"), c("64512:1:2")]
        );
        // No IPv6 subnet communities: the IPv4 subnet ones.
        assert_eq!(
            split.communities_for(RouteRole::Subnet, true),
            [c("65001:777")]
        );
        assert!(split.announce_for(false).host() && split.announce_for(false).subnet());
        assert_eq!(split.announce_for(true), BgpAnnounce::None);
        assert!(toml::from_str::<BgpConfig>("announce = \"all\"").is_err());
    }

    #[test]
    fn subnets_come_from_the_length_or_the_network() {
        let host: std::net::IpAddr = "203.0.113.77".parse().unwrap();
        let network: crate::prefix::Prefix = "203.0.112.0/23".parse().unwrap();
        let config = BgpConfig::default();
        assert_eq!(config.subnet_of(host, Some(network)), Some(network));
        assert_eq!(config.subnet_of(host, None), None);
        let elsewhere: crate::prefix::Prefix = "198.51.100.0/24".parse().unwrap();
        assert_eq!(config.subnet_of(host, Some(elsewhere)), None);
        let by_length: BgpConfig = toml::from_str("subnet_length_v4 = 28").unwrap();
        assert_eq!(
            by_length.subnet_of(host, Some(network)),
            Some("203.0.113.64/28".parse().unwrap())
        );
        let v6: std::net::IpAddr = "2001:db8:1:2::7".parse().unwrap();
        assert_eq!(by_length.subnet_of(v6, None), None);
        assert!(toml::from_str::<BgpConfig>("subnet_length_v4 = 4")
            .unwrap()
            .validate()
            .is_err());
        assert!(toml::from_str::<BgpConfig>("subnet_length_v6 = 129")
            .unwrap()
            .validate()
            .is_err());
    }

    #[test]
    fn communities_round_trip_through_text() {
        for text in ["65535:666", "0:0", "4200000000:1:4294967295"] {
            let community: Community = text.parse().expect(text);
            assert_eq!(community.to_string(), text);
        }
    }
}
