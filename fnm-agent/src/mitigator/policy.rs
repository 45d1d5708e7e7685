//! Safety checks on manual bans: what an operator (or whoever holds the API) may not ban.
//!
//! A manual ban drops or blackholes a whole prefix, so a slip (or a hostile caller) can cut the
//! network off, or the agent itself. Before any action runs, [`BanPolicy::check`] refuses:
//!
//! - a prefix inside a whitelisted one (never banned, not even forced);
//! - a source ban shorter than `ban.min_source_prefix_v4` / `_v6` (`0.0.0.0/0`, `::/0`, a /4);
//! - a destination ban outside `networks` (only the operator's own hosts are destinations);
//! - a ban covering a whitelisted prefix (a supernet of it);
//! - a ban covering one of this host's addresses (every interface's, read with getifaddrs at
//!   each ban, plus `127.0.0.0/8` and `::1`), or the address the request came from;
//!
//! unless the request says `force` and `ban.allow_force` allows it; a forced ban logs each check
//! it skipped.

use crate::{bans::DropMatch, config::Config, prefix::Prefix};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

/// Longest reason a manual ban may carry, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// Why a manual ban is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanRefusal {
    /// The prefix lies inside a whitelisted prefix.
    #[error("{prefix} is inside whitelisted {whitelisted} and is never banned")]
    InsideWhitelist {
        /// The ban's prefix.
        prefix: Prefix,
        /// The whitelisted prefix.
        whitelisted: Prefix,
    },
    /// The request asked for `force`, which the configuration does not allow.
    #[error(
        "force is not allowed by this agent's configuration (set ban.allow_force = true to let \
         a forced ban skip the safety checks)"
    )]
    ForceNotAllowed,
    /// A source ban shorter than the configured minimum.
    #[error(
        "{prefix} is too wide: a source ban must be /{min} or longer (ban.{key}); force it if \
         you really mean it"
    )]
    TooShort {
        /// The ban's prefix.
        prefix: Prefix,
        /// The shortest length allowed.
        min: u8,
        /// The config key.
        key: &'static str,
    },
    /// A destination ban outside the configured networks.
    #[error(
        "{prefix} is not inside the configured networks: a destination ban may only cover your \
         own hosts"
    )]
    OutsideNetworks {
        /// The ban's prefix.
        prefix: Prefix,
    },
    /// The prefix covers a whitelisted prefix.
    #[error("{prefix} covers whitelisted {whitelisted}, which is never banned")]
    CoversWhitelist {
        /// The ban's prefix.
        prefix: Prefix,
        /// The whitelisted prefix.
        whitelisted: Prefix,
    },
    /// The prefix covers an address of this host.
    #[error("{prefix} covers {own}, {what} of this host: the ban could cut the agent off")]
    OwnAddress {
        /// The ban's prefix.
        prefix: Prefix,
        /// The host's address or prefix.
        own: Prefix,
        /// Where it is from (`an address of eth0`, `the loopback network`).
        what: String,
    },
    /// The prefix covers the address the request came from.
    #[error("{prefix} covers {requester}, the address this request comes from: you would lock yourself out")]
    Requester {
        /// The ban's prefix.
        prefix: Prefix,
        /// The caller's address.
        requester: IpAddr,
    },
    /// This host's addresses could not be read, so the ban cannot be checked against them.
    #[error("cannot read this host's addresses to check the ban against them: {0}")]
    AddressesUnknown(String),
}

impl BanRefusal {
    /// A short machine-readable name of the check (the API's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            BanRefusal::InsideWhitelist { .. } => "inside_whitelist",
            BanRefusal::ForceNotAllowed => "force_not_allowed",
            BanRefusal::TooShort { .. } => "prefix_too_short",
            BanRefusal::OutsideNetworks { .. } => "outside_networks",
            BanRefusal::CoversWhitelist { .. } => "covers_whitelist",
            BanRefusal::OwnAddress { .. } => "own_address",
            BanRefusal::Requester { .. } => "requester_address",
            BanRefusal::AddressesUnknown(_) => "own_addresses_unknown",
        }
    }
}

/// One address (or network) of this host and where it is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnAddress {
    /// The address as a host prefix, or a network (`127.0.0.0/8`).
    pub prefix: Prefix,
    /// `an address of eth0`, `the loopback network` ...
    pub what: String,
}

/// Reads this host's addresses.
pub type OwnAddresses = Arc<dyn Fn() -> Result<Vec<OwnAddress>, String> + Send + Sync>;

/// A manual ban to check.
#[derive(Debug, Clone, Copy)]
pub struct BanCheck {
    /// The prefix.
    pub prefix: Prefix,
    /// Its side.
    pub match_on: DropMatch,
    /// The request asked to skip the checks.
    pub force: bool,
    /// Where the request came from, when known (API calls).
    pub requester: Option<IpAddr>,
}

/// The checks, with what they need from the configuration.
#[derive(Clone)]
pub struct BanPolicy {
    networks: Vec<Prefix>,
    whitelist: Vec<Prefix>,
    min_v4: u8,
    min_v6: u8,
    allow_force: bool,
    own_addresses: OwnAddresses,
}

impl BanPolicy {
    /// The policy of `config`, reading this host's addresses with getifaddrs.
    pub fn from_config(config: &Config) -> Self {
        Self::with_addresses(config, Arc::new(host_addresses))
    }

    /// The policy of `config` with another source of the host's addresses (tests).
    pub fn with_addresses(config: &Config, own_addresses: OwnAddresses) -> Self {
        Self {
            networks: config.networks.clone(),
            whitelist: config.whitelist.clone(),
            min_v4: config.ban.min_source_prefix_v4,
            min_v6: config.ban.min_source_prefix_v6,
            allow_force: config.ban.allow_force,
            own_addresses,
        }
    }

    /// The policy of a reloaded `config`, with the same source of the host's addresses.
    pub fn reconfigured(&self, config: &Config) -> Self {
        Self::with_addresses(config, self.own_addresses.clone())
    }

    /// Checks a manual ban. `Ok` holds what a (permitted) force skipped, for the log.
    pub fn check(&self, ban: &BanCheck) -> Result<Vec<BanRefusal>, BanRefusal> {
        let prefix = ban.prefix;
        if let Some(w) = self.whitelist.iter().find(|w| w.covers(&prefix)) {
            return Err(BanRefusal::InsideWhitelist {
                prefix,
                whitelisted: *w,
            });
        }
        if ban.force && !self.allow_force {
            return Err(BanRefusal::ForceNotAllowed);
        }
        let refusals = self.refusals(ban);
        if ban.force {
            return Ok(refusals);
        }
        match refusals.into_iter().next() {
            Some(r) => Err(r),
            None => Ok(Vec::new()),
        }
    }

    /// What `host` is of this machine (`an address of eth0` ...), when it is one of its own
    /// addresses: an automatic blackhole of it would cut the agent off. Addresses that cannot
    /// be read count as not ours (the manual path refuses then; an attack is not held back).
    pub fn own_address(&self, host: IpAddr) -> Option<String> {
        let host = canonical(host);
        if host.is_loopback() {
            // Never reaches a network interface: nothing to cut off.
            return None;
        }
        let own = (self.own_addresses)().ok()?;
        own.into_iter()
            .find(|o| o.prefix.contains(host))
            .map(|o| o.what)
    }

    /// Every check `ban` fails, in order of importance.
    fn refusals(&self, ban: &BanCheck) -> Vec<BanRefusal> {
        let prefix = ban.prefix;
        let mut out = Vec::new();
        match ban.match_on {
            DropMatch::Src => {
                let (min, key) = if prefix.is_ipv4() {
                    (self.min_v4, "min_source_prefix_v4")
                } else {
                    (self.min_v6, "min_source_prefix_v6")
                };
                if prefix.len() < min {
                    out.push(BanRefusal::TooShort { prefix, min, key });
                }
            }
            DropMatch::Dst => {
                if !self.networks.iter().any(|n| n.covers(&prefix)) {
                    out.push(BanRefusal::OutsideNetworks { prefix });
                }
            }
        }
        if let Some(w) = self.whitelist.iter().find(|w| prefix.covers(w)) {
            out.push(BanRefusal::CoversWhitelist {
                prefix,
                whitelisted: *w,
            });
        }
        match (self.own_addresses)() {
            Ok(own) => {
                if let Some(o) = own.iter().find(|o| overlaps(&prefix, &o.prefix)) {
                    out.push(BanRefusal::OwnAddress {
                        prefix,
                        own: o.prefix,
                        what: o.what.clone(),
                    });
                }
            }
            Err(e) => out.push(BanRefusal::AddressesUnknown(e)),
        }
        if let Some(requester) = ban.requester.map(canonical) {
            if prefix.contains(requester) {
                out.push(BanRefusal::Requester { prefix, requester });
            }
        }
        out
    }
}

/// True when one prefix lies inside the other.
fn overlaps(a: &Prefix, b: &Prefix) -> bool {
    a.covers(b) || b.covers(a)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The loopback networks, always this host's: `127.0.0.0/8`, `::1`, and `127.0.0.0/8` mapped
/// into IPv6.
fn loopback() -> Vec<OwnAddress> {
    let what = "the loopback network".to_owned();
    [
        Prefix::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        Some(Prefix::host(IpAddr::V6(Ipv6Addr::LOCALHOST))),
        Prefix::new(
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 0).to_ipv6_mapped()),
            104,
        ),
    ]
    .into_iter()
    .flatten()
    .map(|prefix| OwnAddress {
        prefix,
        what: what.clone(),
    })
    .collect()
}

/// This host's addresses: every address of every interface (getifaddrs), an IPv4 one also as
/// IPv4-mapped IPv6, and the loopback networks.
pub fn host_addresses() -> Result<Vec<OwnAddress>, String> {
    let mut out = loopback();
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
    for ifa in addrs {
        let Some(storage) = ifa.address else { continue };
        let ip = if let Some(v4) = storage.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = storage.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let what = format!("an address of {}", ifa.interface_name);
        if let IpAddr::V4(v4) = ip {
            out.push(OwnAddress {
                prefix: Prefix::host(IpAddr::V6(v4.to_ipv6_mapped())),
                what: what.clone(),
            });
        }
        out.push(OwnAddress {
            prefix: Prefix::host(ip),
            what,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> BanPolicy {
        let config: Config = toml::from_str(&format!(
            "networks = [\"10.10.0.0/16\", \"2001:db8::/32\"]\n\
             whitelist = [\"192.0.2.0/24\"]\n{extra}"
        ))
        .unwrap();
        BanPolicy::with_addresses(
            &config,
            Arc::new(|| {
                let mut own = loopback();
                own.push(OwnAddress {
                    prefix: "10.10.0.1/32".parse().unwrap(),
                    what: "an address of eth0".into(),
                });
                Ok(own)
            }),
        )
    }

    fn check(p: &BanPolicy, prefix: &str, m: DropMatch, force: bool) -> Result<(), &'static str> {
        p.check(&BanCheck {
            prefix: prefix.parse().unwrap(),
            match_on: m,
            force,
            requester: Some("198.51.100.50".parse().unwrap()),
        })
        .map(|_| ())
        .map_err(|r| r.code())
    }

    #[test]
    fn wide_sources_own_addresses_and_whitelist_supernets_are_refused() {
        let p = policy("");
        use DropMatch::*;
        assert_eq!(check(&p, "0.0.0.0/0", Src, false), Err("prefix_too_short"));
        assert_eq!(check(&p, "::/0", Src, false), Err("prefix_too_short"));
        assert_eq!(check(&p, "16.0.0.0/4", Src, false), Err("prefix_too_short"));
        assert_eq!(check(&p, "2a00::/16", Src, false), Err("prefix_too_short"));
        assert_eq!(check(&p, "203.0.0.0/8", Src, false), Ok(()));
        assert_eq!(check(&p, "2a00::/32", Src, false), Ok(()));
        assert_eq!(check(&p, "198.51.100.7/32", Src, false), Ok(()));
        // Destinations only inside the networks.
        assert_eq!(
            check(&p, "198.51.100.7/32", Dst, false),
            Err("outside_networks")
        );
        assert_eq!(check(&p, "10.10.5.0/24", Dst, false), Ok(()));
        assert_eq!(check(&p, "0.0.0.0/0", Dst, false), Err("outside_networks"));
        // The whitelist: inside is never banned, a supernet is refused.
        assert_eq!(
            check(&p, "192.0.2.9/32", Src, false),
            Err("inside_whitelist")
        );
        assert_eq!(
            check(&p, "192.0.0.0/16", Src, false),
            Err("covers_whitelist")
        );
        // This host: interface addresses, loopback, mapped loopback; and the caller.
        assert_eq!(check(&p, "10.10.0.0/24", Dst, false), Err("own_address"));
        assert_eq!(check(&p, "10.10.0.1/32", Src, false), Err("own_address"));
        assert_eq!(check(&p, "127.0.0.0/8", Src, false), Err("own_address"));
        assert_eq!(check(&p, "127.1.2.3/32", Src, false), Err("own_address"));
        assert_eq!(check(&p, "::1/128", Src, false), Err("own_address"));
        assert_eq!(
            check(&p, "::ffff:127.0.0.1/128", Src, false),
            Err("own_address")
        );
        assert_eq!(
            check(&p, "198.51.100.0/24", Src, false),
            Err("requester_address")
        );
    }

    #[test]
    fn force_needs_the_config_and_never_reaches_inside_the_whitelist() {
        let p = policy("");
        assert_eq!(
            check(&p, "198.51.100.7/32", DropMatch::Src, true),
            Err("force_not_allowed")
        );
        let p = policy("[ban]\nallow_force = true\n");
        assert_eq!(check(&p, "0.0.0.0/0", DropMatch::Src, true), Ok(()));
        let skipped = p
            .check(&BanCheck {
                prefix: "10.10.0.0/24".parse().unwrap(),
                match_on: DropMatch::Dst,
                force: true,
                requester: None,
            })
            .unwrap();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(
            check(&p, "192.0.2.9/32", DropMatch::Src, true),
            Err("inside_whitelist")
        );
        // Without force the checks still apply.
        assert_eq!(
            check(&p, "0.0.0.0/0", DropMatch::Src, false),
            Err("prefix_too_short")
        );
    }

    #[test]
    fn shorter_minimums_are_configurable() {
        let p = policy("[ban]\nmin_source_prefix_v4 = 24\nmin_source_prefix_v6 = 64\n");
        assert_eq!(
            check(&p, "203.0.112.0/23", DropMatch::Src, false),
            Err("prefix_too_short")
        );
        assert_eq!(check(&p, "203.0.113.0/24", DropMatch::Src, false), Ok(()));
        assert_eq!(
            check(&p, "2a00::/48", DropMatch::Src, false),
            Err("prefix_too_short")
        );
    }

    #[test]
    fn the_host_addresses_include_loopback() {
        let own = host_addresses().expect("getifaddrs works here");
        let lo: Prefix = "127.0.0.1/32".parse().unwrap();
        assert!(own.iter().any(|o| o.prefix.covers(&lo)), "{own:?}");
    }
}
