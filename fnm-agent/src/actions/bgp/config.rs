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
        Ok(())
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
    fn communities_round_trip_through_text() {
        for text in ["65535:666", "0:0", "4200000000:1:4294967295"] {
            let community: Community = text.parse().expect(text);
            assert_eq!(community.to_string(), text);
        }
    }
}
