//! IP prefixes (`10.0.0.0/8`, `2001:db8::/32`) and a longest-match set of them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An address and a prefix length; host bits are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why text is not a prefix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid prefix {text:?}: {reason}")]
pub struct PrefixError {
    text: String,
    reason: &'static str,
}

impl Prefix {
    /// Builds a prefix, zeroing host bits; `None` when `len` exceeds the family's width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let max = max_len(&addr);
        if len > max {
            return None;
        }
        Some(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// The prefix holding exactly one address (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: max_len(&addr),
        }
    }

    /// Network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for 0.0.0.0/0 and ::/0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `addr` lies inside this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.len) == self.addr
    }

    /// True when `other` lies entirely inside this prefix.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| PrefixError {
            text: text.to_owned(),
            reason,
        };
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err("not an IP address"))?;
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .map_err(|_| err("bad prefix length"))?,
            None => max_len(&addr),
        };
        if len > max_len(&addr) {
            return Err(err("prefix length too long for the address family"));
        }
        let prefix = Prefix::new(addr, len).ok_or_else(|| err("bad prefix length"))?;
        if prefix.addr != addr {
            return Err(err("host bits set (did you mean the network address?)"));
        }
        Ok(prefix)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of prefixes answering longest-prefix-match queries, each prefix carrying a value.
///
/// Lookups probe one hash table per distinct prefix length present, longest first, so the cost
/// is bounded by the number of distinct lengths (at most 33 or 129), usually a handful.
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    v4: Vec<LengthTable<u32, V>>,
    v6: Vec<LengthTable<u128, V>>,
}

/// The prefixes of one length, keyed by their network bits. Hashed with foldhash (seeded per
/// process): every classified address probes a table per length, and SipHash made a lookup
/// several times dearer; the keys come from the configuration, not the wire.
type LengthTable<K, V> = (u8, FastMap<K, (Prefix, V)>);

/// A hash map with foldhash's fast hasher.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<V> PrefixMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the value of `prefix`.
    pub fn insert(&mut self, prefix: Prefix, value: V) {
        match prefix.addr {
            IpAddr::V4(a) => {
                let table = table_for(&mut self.v4, prefix.len);
                table.insert(u32::from(a), (prefix, value));
            }
            IpAddr::V6(a) => {
                let table = table_for(&mut self.v6, prefix.len);
                table.insert(u128::from(a), (prefix, value));
            }
        }
    }

    /// Removes `prefix` exactly; returns its value.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<V> {
        match prefix.addr {
            IpAddr::V4(a) => remove_from(&mut self.v4, prefix.len, &u32::from(a)),
            IpAddr::V6(a) => remove_from(&mut self.v6, prefix.len, &u128::from(a)),
        }
    }

    /// The longest prefix containing `addr`, with its value.
    pub fn longest_match(&self, addr: IpAddr) -> Option<(&Prefix, &V)> {
        match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                self.v4.iter().find_map(|(len, t)| {
                    let m = if *len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - *len as u32)
                    };
                    t.get(&(bits & m)).map(|(p, v)| (p, v))
                })
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                self.v6.iter().find_map(|(len, t)| {
                    let m = if *len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - *len as u32)
                    };
                    t.get(&(bits & m)).map(|(p, v)| (p, v))
                })
            }
        }
    }

    /// True when some prefix contains `addr`.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.longest_match(addr).is_some()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.iter().map(|(_, t)| t.len()).sum::<usize>()
            + self.v6.iter().map(|(_, t)| t.len()).sum::<usize>()
    }

    /// True when no prefix is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All prefixes and values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Prefix, &V)> {
        self.v4
            .iter()
            .flat_map(|(_, t)| t.values())
            .chain(self.v6.iter().flat_map(|(_, t)| t.values()))
            .map(|(p, v)| (p, v))
    }
}

/// A set of prefixes answering "is this address inside any of them?".
pub type PrefixSet = PrefixMap<()>;

impl FromIterator<Prefix> for PrefixSet {
    fn from_iter<I: IntoIterator<Item = Prefix>>(iter: I) -> Self {
        let mut set = PrefixSet::new();
        for p in iter {
            set.insert(p, ());
        }
        set
    }
}

/// What the IPv4 /16 index of an [`IndexedPrefixSet`] knows about one /16 block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Block {
    /// No prefix of the set touches the block.
    Outside,
    /// A prefix of /16 or shorter covers the whole block.
    Inside,
    /// Only prefixes longer than /16 touch the block: ask the set.
    Ask,
}

/// A read-only [`PrefixSet`] with an index of the 65 536 IPv4 /16 blocks, so that `contains`
/// answers an IPv4 address with one array read unless a prefix longer than /16 splits its
/// block (the same layout as the XDP program's local-network table). IPv6 goes to the set.
#[derive(Debug, Clone)]
pub struct IndexedPrefixSet {
    set: PrefixSet,
    v4_blocks: Box<[Block]>,
    has_v6: bool,
}

impl Default for IndexedPrefixSet {
    fn default() -> Self {
        Self::new(PrefixSet::new())
    }
}

impl IndexedPrefixSet {
    /// Indexes `set`.
    pub fn new(set: PrefixSet) -> Self {
        let mut v4_blocks = vec![Block::Outside; 1 << 16].into_boxed_slice();
        let mut has_v6 = false;
        for (prefix, ()) in set.iter() {
            match prefix.addr() {
                IpAddr::V4(a) => {
                    let first = (u32::from(a) >> 16) as usize;
                    if prefix.len() <= 16 {
                        let count = 1usize << (16 - prefix.len());
                        v4_blocks[first..first + count].fill(Block::Inside);
                    } else if v4_blocks[first] == Block::Outside {
                        v4_blocks[first] = Block::Ask;
                    }
                }
                IpAddr::V6(_) => has_v6 = true,
            }
        }
        Self {
            set,
            v4_blocks,
            has_v6,
        }
    }

    /// The most specific prefix containing `addr`.
    pub fn longest_match(&self, addr: IpAddr) -> Option<Prefix> {
        self.set.longest_match(addr).map(|(prefix, ())| *prefix)
    }

    /// True when some prefix contains `addr`.
    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => match self.v4_blocks[(u32::from(a) >> 16) as usize] {
                Block::Outside => false,
                Block::Inside => true,
                Block::Ask => self.set.contains(addr),
            },
            IpAddr::V6(_) => self.has_v6 && self.set.contains(addr),
        }
    }
}

fn table_for<K, V>(tables: &mut Vec<(u8, FastMap<K, V>)>, len: u8) -> &mut FastMap<K, V> {
    let pos = match tables.iter().position(|(l, _)| *l <= len) {
        Some(i) if tables[i].0 == len => i,
        Some(i) => {
            tables.insert(i, (len, FastMap::default()));
            i
        }
        None => {
            tables.push((len, FastMap::default()));
            tables.len() - 1
        }
    };
    &mut tables[pos].1
}

fn remove_from<K: std::hash::Hash + Eq, V>(
    tables: &mut Vec<LengthTable<K, V>>,
    len: u8,
    key: &K,
) -> Option<V> {
    let i = tables.iter().position(|(l, _)| *l == len)?;
    let value = tables[i].1.remove(key).map(|(_, v)| v);
    if tables[i].1.is_empty() {
        tables.remove(i);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("198.51.100.7").to_string(), "198.51.100.7/32");
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert!("10.0.0.1/8".parse::<Prefix>().is_err());
        assert!("10.0.0.0/40".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
    }

    #[test]
    fn longest_match_wins() {
        let mut m = PrefixMap::new();
        m.insert(p("10.0.0.0/8"), "wide");
        m.insert(p("10.1.0.0/16"), "narrow");
        m.insert(p("2001:db8::/32"), "v6");
        fn hit(m: &PrefixMap<&'static str>, a: &str) -> Option<&'static str> {
            m.longest_match(a.parse().unwrap()).map(|(_, v)| *v)
        }
        assert_eq!(hit(&m, "10.1.2.3"), Some("narrow"));
        assert_eq!(hit(&m, "10.2.2.3"), Some("wide"));
        assert_eq!(hit(&m, "11.0.0.1"), None);
        assert_eq!(hit(&m, "2001:db8::1"), Some("v6"));
        assert_eq!(hit(&m, "::ffff:10.1.2.3"), None);
        assert_eq!(m.remove(&p("10.1.0.0/16")), Some("narrow"));
        assert_eq!(hit(&m, "10.1.2.3"), Some("wide"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn indexed_set_agrees_with_the_set() {
        let set: PrefixSet = [
            "10.0.0.0/8",
            "192.168.1.0/24",
            "192.168.1.128/25",
            "172.16.5.7/32",
            "2001:db8::/32",
            "100.64.0.0/16",
        ]
        .into_iter()
        .map(p)
        .collect();
        let indexed = IndexedPrefixSet::new(set.clone());
        let mut probes: Vec<IpAddr> = [
            "10.255.255.255",
            "11.0.0.0",
            "9.255.255.255",
            "192.168.1.5",
            "192.168.1.200",
            "192.168.2.1",
            "192.168.0.255",
            "172.16.5.7",
            "172.16.5.8",
            "100.64.255.1",
            "100.65.0.0",
            "2001:db8::1",
            "2001:db9::1",
            "::ffff:10.0.0.1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            probes.push(IpAddr::V4(Ipv4Addr::from(x)));
        }
        for a in probes {
            assert_eq!(indexed.contains(a), set.contains(a), "{a}");
        }
        assert!(!IndexedPrefixSet::default().contains("10.0.0.1".parse().unwrap()));
        let everything: PrefixSet = [p("0.0.0.0/0")].into_iter().collect();
        assert!(IndexedPrefixSet::new(everything).contains("203.0.113.9".parse().unwrap()));
    }
}
