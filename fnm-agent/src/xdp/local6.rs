//! The IPv6 local networks by prefix length: the table the XDP program asks instead of the
//! `LOCAL_V6` trie ([`fnm_common::local6`]).
//!
//! Per distinct prefix length of the IPv6 local networks (at most [`local6::LENGTHS`],
//! longest first) the table has a power-of-two range of buckets of [`local6::KEYS`] masked
//! prefixes; the program masks the address with each length's masks, hashes it with the
//! generation's seed and compares the prefixes of one bucket in place. A bucket with fewer
//! prefixes repeats one of its length's prefixes (every key is a local prefix: there is no
//! "empty" value an address could match). When the networks do not fit (more lengths, more
//! buckets than a generation has, or a bucket overflowing under every seed tried), the head
//! says `ask_trie` and the program asks the trie, which always holds every network.
//!
//! In front of the table, the prefilter `LOCAL6_BITS` answers most remote addresses with one
//! bit: per generation, a mask keeping an address's top `L` bits (`L` the shortest IPv6 local
//! prefix length, within [`local6::PREFILTER_MIN`]..=[`local6::PREFILTER_MAX`]: all-/48
//! layouts hash /48s) and 65,536 bits, set at [`local6::prefilter_bit`] of every `/L` a local
//! network overlaps. The prefilter is one array entry the kernel rewrites in place (a reader
//! may see some bytes old and some new); a reload that keeps `L` writes the new bits at once
//! (as the `LOCAL32_V6` bits before it: a network in both the old and the new networks keeps
//! its bit set throughout), one that changes `L` goes through [`prefilter_steps`]: all bits
//! set under the old `L`, then under the new `L`, then the new bits, so a packet that reads
//! the shift of one write and words of the next still passes every address local before and
//! after on to the exact table (which a bit never overrules: the prefilter only ever turns
//! addresses away). The generation index costs 1 to 2 ns per IPv6 packet in the prefilter;
//! this costs nothing outside a reload that changes `L`.
//!
//! A reload writes the generation not in force (its buckets, then its head), then switches
//! `LOCAL6_GEN` (one bit changes, so a reader sees the old or the new generation, never a
//! mix). The generation rewritten went out of force at the previous reload, so only a program
//! run that read the generation index before that reload (sub-microsecond) and is still
//! running during this one could read it half-written.

use super::{
    maps::{map_err, take},
    XdpError,
};
use crate::prefix::Prefix;
use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use fnm_common::{local6, map_names, Local6Bits, Local6Bucket, Local6Head, Local6Length};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
};

/// Seeds tried per bucket spread before the table gives up on a layout.
const SEED_TRIES: usize = 8;
/// Buckets per prefix tried, most first: fewer collisions, then less memory.
const SPREADS: [usize; 3] = [4, 2, 1];

/// One generation's content, its bucket numbers relative to the generation's first bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Local6Plan {
    /// The head (bases relative).
    pub(crate) head: Local6Head,
    /// The buckets in use, from the generation's first.
    pub(crate) buckets: Vec<Local6Bucket>,
    /// The prefilter.
    pub(crate) bits: Local6Bits,
}

/// The prefilter of `networks` (IPv4 ones are ignored): the mask of the shortest IPv6 prefix
/// length within [`local6::PREFILTER_MIN`]..=[`local6::PREFILTER_MAX`], and the bit of every
/// prefix of that length a network overlaps (all bits for a network shorter than /16).
pub(crate) fn prefilter<'a>(networks: impl Iterator<Item = &'a Prefix> + Clone) -> Local6Bits {
    let v6 = networks.filter_map(|p| match p.addr() {
        IpAddr::V6(a) => Some((words(a).0, p.len())),
        IpAddr::V4(_) => None,
    });
    let len = local6::prefilter_len(v6.clone().map(|(_, l)| l).min());
    let shift = 64 - u64::from(len);
    let mut bits = Local6Bits {
        shift,
        words: [0; local6::WORDS],
    };
    let mut set = |hi: u64| {
        let bit = local6::prefilter_bit(hi, shift) as usize;
        bits.words[bit / 64] |= 1 << (bit % 64);
    };
    for (hi, plen) in v6 {
        if plen >= len {
            set(hi);
        } else if plen < 16 {
            // Shorter than /16: more /32s than bits.
            return Local6Bits {
                shift,
                words: [u64::MAX; local6::WORDS],
            };
        } else {
            // Shorter than `len`, so `len` is /32: every /32 of the network.
            let count = 1u64 << (u32::from(len) - u32::from(plen));
            let first = hi & local6::masks(plen).0;
            for i in 0..count {
                set(first + (i << (64 - u32::from(len))));
            }
        }
    }
    bits
}

/// The prefilters to write, in order, to go from `now` to `next`: `next` alone when the length
/// hashed stays; else all bits under `now`'s length, all bits under `next`'s, then `next`
/// (a reader that mixes two consecutive writes passes every address both pass).
pub(crate) fn prefilter_steps(now: &Local6Bits, next: &Local6Bits) -> Vec<Local6Bits> {
    if now.shift == next.shift {
        return vec![*next];
    }
    let all = |shift| Local6Bits {
        shift,
        words: [u64::MAX; local6::WORDS],
    };
    vec![all(now.shift), all(next.shift), *next]
}

/// The `[hi, lo]` words of `a` (bytes 0..8 and 8..16, big-endian), as the program reads them.
fn words(a: Ipv6Addr) -> (u64, u64) {
    let v = u128::from(a);
    ((v >> 64) as u64, v as u64)
}

impl Local6Plan {
    /// The table for the IPv6 networks of `networks` (IPv4 ones are ignored), hashed with
    /// seeds from `seed`.
    pub(crate) fn of<'a>(
        networks: impl Iterator<Item = &'a Prefix> + Clone,
        mut seed: impl FnMut() -> u64,
    ) -> Self {
        let bits = prefilter(networks.clone());
        Self {
            bits,
            ..Self::table(networks, &mut seed)
        }
    }

    /// The table alone (the default prefilter).
    fn table<'a>(
        networks: impl Iterator<Item = &'a Prefix>,
        seed: &mut impl FnMut() -> u64,
    ) -> Self {
        // Masked prefixes by length, longest first.
        let mut by_len: BTreeMap<std::cmp::Reverse<u8>, BTreeSet<(u64, u64)>> = BTreeMap::new();
        for p in networks {
            let IpAddr::V6(a) = p.addr() else { continue };
            let (hi_mask, lo_mask) = local6::masks(p.len());
            let (hi, lo) = words(a);
            by_len
                .entry(std::cmp::Reverse(p.len()))
                .or_default()
                .insert((hi & hi_mask, lo & lo_mask));
        }
        if by_len.is_empty() {
            return Self::default();
        }
        if by_len.len() <= local6::LENGTHS {
            let lengths: Vec<(u8, Vec<(u64, u64)>)> = by_len
                .into_iter()
                .map(|(len, keys)| (len.0, keys.into_iter().collect()))
                .collect();
            for spread in SPREADS {
                let sizes: Vec<usize> = lengths
                    .iter()
                    .map(|(_, keys)| (keys.len() * spread).next_power_of_two())
                    .collect();
                if sizes.iter().sum::<usize>() > local6::BUCKETS as usize {
                    continue;
                }
                for _ in 0..SEED_TRIES {
                    if let Some(plan) = Self::fill(&lengths, &sizes, seed()) {
                        return plan;
                    }
                }
            }
        }
        Self {
            head: Local6Head {
                ask_trie: 1,
                ..Local6Head::default()
            },
            ..Self::default()
        }
    }

    /// The table with `sizes[i]` buckets for the prefixes of `lengths[i]`, or `None` when a
    /// bucket would hold more than [`local6::KEYS`] prefixes under `seed`.
    fn fill(lengths: &[(u8, Vec<(u64, u64)>)], sizes: &[usize], seed: u64) -> Option<Self> {
        let mut head = Local6Head {
            seed,
            lengths: lengths.len() as u32,
            ..Local6Head::default()
        };
        let mut buckets = Vec::with_capacity(sizes.iter().sum());
        for (i, ((len, keys), &size)) in lengths.iter().zip(sizes).enumerate() {
            let (hi_mask, lo_mask) = local6::masks(*len);
            let base = buckets.len();
            let mask = size as u32 - 1;
            let mut fill: Vec<Vec<[u64; 2]>> = vec![Vec::new(); size];
            for &(hi, lo) in keys {
                let slot = &mut fill[(local6::hash(seed, hi, lo) & mask) as usize];
                if slot.len() == local6::KEYS {
                    return None;
                }
                slot.push([hi, lo]);
            }
            // A free key repeats a prefix of the length (the first one).
            let spare = [keys[0].0, keys[0].1];
            buckets.extend(fill.into_iter().map(|slot| Local6Bucket {
                keys: std::array::from_fn(|k| slot.get(k).copied().unwrap_or(spare)),
            }));
            head.length[i] = Local6Length {
                hi_mask,
                lo_mask,
                base: base as u32,
                mask,
            };
        }
        Some(Self {
            head,
            buckets,
            ..Self::default()
        })
    }

    /// What the program answers for `a` from this table; `None` when it asks the trie.
    /// Panics when the prefilter turns away an address the table holds.
    #[cfg(test)]
    pub(crate) fn contains(&self, a: Ipv6Addr) -> Option<bool> {
        if self.head.ask_trie != 0 {
            return None;
        }
        let (hi, lo) = words(a);
        let bit = local6::prefilter_bit(hi, self.bits.shift) as usize;
        let passes = self.bits.words[bit / 64] & (1 << (bit % 64)) != 0;
        let held = self.head.length[..self.head.lengths as usize]
            .iter()
            .any(|l| {
                let (hi, lo) = (hi & l.hi_mask, lo & l.lo_mask);
                let b = l.base + (local6::hash(self.head.seed, hi, lo) & l.mask);
                self.buckets[b as usize].keys.contains(&[hi, lo])
            });
        assert!(passes || !held, "the prefilter turns away {a}");
        Some(passes && held)
    }
}

/// The table's maps in the kernel and the generation in force.
pub(crate) struct Local6Table {
    generation: Array<MapData, u32>,
    heads: Array<MapData, Local6Head>,
    buckets: Array<MapData, Local6Bucket>,
    /// The prefilter (`None` for an object with `LOCAL32_V6` instead, as `take` says).
    prefilter: Option<Array<MapData, Local6Bits>>,
    /// What the prefilter holds.
    bits: Box<Local6Bits>,
    in_force: u32,
    /// The plan in force (what the kernel answers from).
    plan: Local6Plan,
}

impl Local6Table {
    /// Takes the maps out of a freshly loaded object (generation 0, empty, in force); `None`
    /// for an object built without them (an older build the benchmark compares). An object
    /// with some of them, or of other types, is an error: its program would find no IPv6
    /// address local. The prefilter is `None` for an object built before it (with the
    /// `LOCAL32_V6` bits instead, which the caller fills).
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Option<Self>, XdpError> {
        if ebpf.map(map_names::LOCAL6_GEN).is_none() {
            return Ok(None);
        }
        let prefilter = match ebpf.map(map_names::LOCAL6_BITS) {
            None => None,
            Some(_) => Some(take(ebpf, map_names::LOCAL6_BITS)?),
        };
        Ok(Some(Self {
            generation: take(ebpf, map_names::LOCAL6_GEN)?,
            heads: take(ebpf, map_names::LOCAL6_HEAD)?,
            buckets: take(ebpf, map_names::LOCAL6_BUCKETS)?,
            prefilter,
            // All zero, as the kernel's entry after load: no bit set.
            bits: Box::default(),
            in_force: 0,
            plan: Local6Plan::default(),
        }))
    }

    /// Puts the table for `networks` in force: writes the other generation, then switches.
    pub(crate) fn write(&mut self, networks: &[Prefix]) -> Result<(), XdpError> {
        let plan = Local6Plan::of(networks.iter(), super::random_seed);
        if plan.head.ask_trie != 0 && self.plan.head.ask_trie == 0 {
            tracing::info!(
                "the IPv6 networks do not fit the XDP table by prefix length (more than {} \
                 distinct lengths, or more than {} buckets): the kernel asks its trie, about \
                 20 ns more per IPv6 packet that passes the prefilter",
                local6::LENGTHS,
                local6::BUCKETS
            );
        }
        let next = self.in_force ^ 1;
        let first = next * local6::BUCKETS;
        for (i, bucket) in plan.buckets.iter().enumerate() {
            self.buckets
                .set(first + i as u32, bucket, 0)
                .map_err(map_err(map_names::LOCAL6_BUCKETS))?;
        }
        let mut head = plan.head;
        for length in &mut head.length[..head.lengths as usize] {
            length.base += first;
        }
        self.heads
            .set(next, head, 0)
            .map_err(map_err(map_names::LOCAL6_HEAD))?;
        if let Some(prefilter) = self.prefilter.as_mut() {
            for step in prefilter_steps(&self.bits, &plan.bits) {
                prefilter
                    .set(0, step, 0)
                    .map_err(map_err(map_names::LOCAL6_BITS))?;
            }
            *self.bits = plan.bits;
        }
        self.generation
            .set(0, next, 0)
            .map_err(map_err(map_names::LOCAL6_GEN))?;
        self.in_force = next;
        self.plan = plan;
        Ok(())
    }

    /// Whether the table in force sends every lookup to the trie (the networks do not fit).
    pub(crate) fn asks_trie(&self) -> bool {
        self.plan.head.ask_trie != 0
    }

    /// The prefix length the prefilter in force hashes; `None` for an object without it.
    pub(crate) fn prefilter_len(&self) -> Option<u8> {
        self.prefilter.as_ref().map(|_| 64 - self.bits.shift as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Prefix> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn counter_seeds() -> impl FnMut() -> u64 {
        let mut n = 0x1234_5678_u64;
        move || {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            n
        }
    }

    /// Random addresses and the edges of every network (first, last, one below, one above),
    /// checked against the prefixes themselves.
    fn agrees(networks: &[Prefix], plan: &Local6Plan, rounds: usize) {
        let mut rng = counter_seeds();
        let mut addrs: Vec<Ipv6Addr> = Vec::new();
        for p in networks {
            let IpAddr::V6(a) = p.addr() else { continue };
            let v = u128::from(a);
            let host = u128::MAX.checked_shr(p.len() as u32).unwrap_or(0);
            let first = v & !host;
            let last = first | host;
            for x in [
                first,
                last,
                first.wrapping_sub(1),
                last.wrapping_add(1),
                first | (rng() as u128 & host),
            ] {
                addrs.push(Ipv6Addr::from(x));
            }
            // Random addresses near the network (its /32, its /16, and 8 bits above it).
            let above = u128::MAX
                .checked_shr(p.len().saturating_sub(8) as u32)
                .unwrap_or(0);
            for _ in 0..rounds {
                let r = ((rng() as u128) << 64) | rng() as u128;
                addrs.push(Ipv6Addr::from((first & !above) | (r & above)));
                addrs.push(Ipv6Addr::from((first & !(u128::MAX >> 32)) | (r >> 32)));
                addrs.push(Ipv6Addr::from((first & !(u128::MAX >> 16)) | (r >> 16)));
            }
        }
        for _ in 0..rounds {
            addrs.push(Ipv6Addr::from(((rng() as u128) << 64) | rng() as u128));
        }
        addrs.extend([Ipv6Addr::UNSPECIFIED, Ipv6Addr::from(u128::MAX)]);
        for a in addrs {
            let want = networks.iter().any(|p| p.contains(IpAddr::V6(a)));
            assert_eq!(plan.contains(a), Some(want), "{a}");
        }
    }

    #[test]
    fn fifty_48s_of_one_32_answer_as_the_prefixes_do() {
        let networks: Vec<Prefix> = (0..50)
            .map(|i| format!("2001:db8:{:x}::/48", 0x100 + i).parse().unwrap())
            .collect();
        let plan = Local6Plan::of(networks.iter(), counter_seeds());
        assert_eq!(plan.head.lengths, 1);
        assert_eq!(plan.head.ask_trie, 0);
        // 50 prefixes spread over 256 buckets.
        assert_eq!(plan.buckets.len(), 256);
        agrees(&networks, &plan, 2000);
    }

    #[test]
    fn nested_and_edge_lengths_answer_as_the_prefixes_do() {
        let networks = nets(&[
            "2a02:1000::/28",
            "2001:db8::/32",
            "2001:db8:105::/48",
            "2001:db8:ffff:1::/64",
            "::/8",
            "::1/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
            "10.0.0.0/8",
        ]);
        let plan = Local6Plan::of(networks.iter(), counter_seeds());
        assert_eq!(plan.head.ask_trie, 1, "six lengths do not fit in four");
        let fit = nets(&[
            "2001:db8::/32",
            "2001:db8:105::/48",
            "::/8",
            "::1/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        ]);
        let plan = Local6Plan::of(fit.iter(), counter_seeds());
        assert_eq!(plan.head.ask_trie, 0);
        assert_eq!(plan.head.lengths, 4);
        agrees(&fit, &plan, 500);
        let all = nets(&["::/0"]);
        let plan = Local6Plan::of(all.iter(), counter_seeds());
        assert_eq!(plan.contains(Ipv6Addr::from(0x42u128)), Some(true));
        agrees(&all, &plan, 100);
    }

    #[test]
    fn the_prefilter_hashes_the_shortest_length_within_32_to_64() {
        let len = |list: &[&str]| 64 - prefilter(nets(list).iter()).shift;
        assert_eq!(len(&["2001:db8:1::/48", "2001:db8:2::/48"]), 48);
        assert_eq!(len(&["2001:db8:1::/48", "2001:db8:100::/40"]), 40);
        assert_eq!(len(&["2001:db8:1::/48", "2a02:1000::/28"]), 32);
        assert_eq!(len(&["2001:db8::1/128", "2001:db8:0:1::/80"]), 64);
        assert_eq!(len(&["10.0.0.0/8"]), 64);
        // All /48s: one bit per /48, and a neighbour /48 of the same /32 mostly turned away.
        let isp = spaced_48s();
        let bits = prefilter(isp.iter());
        assert!(bits.words.iter().map(|w| w.count_ones()).sum::<u32>() <= 50);
        let plan = Local6Plan::of(isp.iter(), counter_seeds());
        let passing = (0..0x10000u32)
            .filter(|n| {
                let (hi, _) = words(format!("2001:db8:{n:x}::1").parse().unwrap());
                let bit = local6::prefilter_bit(hi, bits.shift) as usize;
                bits.words[bit / 64] & (1 << (bit % 64)) != 0
            })
            .count();
        assert!(passing < 200, "{passing} /48s of the /32 pass");
        agrees(&isp, &plan, 500);
        // A /28 sets its sixteen /32s; below /16 every bit.
        let bits = prefilter(nets(&["2a02:1000::/28"]).iter());
        assert_eq!(bits.words.iter().map(|w| w.count_ones()).sum::<u32>(), 16);
        let bits = prefilter(nets(&["2a00::/12", "2001:db8::/48"]).iter());
        assert!(bits.words.iter().all(|w| *w == u64::MAX));
    }

    #[test]
    fn a_prefilter_changing_length_never_turns_away_an_address_local_before_and_after() {
        let isp = spaced_48s();
        let mut with_40 = isp.clone();
        with_40.extend(nets(&["2001:db8:4200::/40", "2a02:1000::/28"]));
        let long = nets(&["2001:db8:10c:7::/64", "2001:db8:10f:0:1::/80"]);
        let passes = |b: &Local6Bits, a: Ipv6Addr| {
            let bit = local6::prefilter_bit(words(a).0, b.shift) as usize;
            b.words[bit / 64] & (1 << (bit % 64)) != 0
        };
        let mut rng = counter_seeds();
        for (old, new) in [
            (&isp, &with_40),
            (&with_40, &isp),
            (&isp, &long),
            (&long, &isp),
        ] {
            let (from, to) = (prefilter(old.iter()), prefilter(new.iter()));
            assert_ne!(from.shift, to.shift);
            let mut states = vec![from];
            states.extend(prefilter_steps(&from, &to));
            assert_eq!(states.last(), Some(&to));
            // Addresses local before and after (the /48s; the /64 and /80 inside them).
            let local =
                |nets: &[Prefix], a: Ipv6Addr| nets.iter().any(|p| p.contains(IpAddr::V6(a)));
            let both: Vec<Ipv6Addr> = old
                .iter()
                .chain(new.iter())
                .flat_map(|p| {
                    let IpAddr::V6(a) = p.addr() else {
                        unreachable!()
                    };
                    let host = u128::MAX.checked_shr(p.len() as u32).unwrap_or(0);
                    let first = u128::from(a) & !host;
                    [first, first | host, first | (rng() as u128 & host)]
                })
                .map(Ipv6Addr::from)
                .filter(|a| local(old, *a) && local(new, *a))
                .collect();
            assert!(both.len() >= 6, "{}", both.len());
            // Two consecutive writes mixed: either's shift, words no more set than in both.
            for pair in states.windows(2) {
                for shift in [pair[0].shift, pair[1].shift] {
                    let mut mixed = Local6Bits { shift, ..pair[0] };
                    for (w, v) in mixed.words.iter_mut().zip(pair[1].words) {
                        *w &= v;
                    }
                    for a in &both {
                        assert!(passes(&mixed, *a), "{a} turned away");
                    }
                }
            }
        }
        // The same length: the new bits at once.
        let same = prefilter(isp[1..].iter());
        assert_eq!(prefilter_steps(&prefilter(isp.iter()), &same), vec![same]);
    }

    /// An ISP's 50 /48s of 2001:db8::/32, two /48s apart (neighbours that are not local).
    fn spaced_48s() -> Vec<Prefix> {
        (0..50)
            .map(|i| {
                format!("2001:db8:{:x}::/48", 0x100 + 3 * i)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    /// `n` consecutive /64s of 2001:db8::/32.
    fn sixty_fours(n: u32) -> Vec<Prefix> {
        (0..n)
            .map(|i| {
                format!("2001:db8:{:x}:{:x}::/64", i >> 8, i & 0xff)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn no_ipv6_networks_is_an_empty_table_and_too_many_prefixes_ask_the_trie() {
        let plan = Local6Plan::of(nets(&["10.0.0.0/8"]).iter(), counter_seeds());
        assert_eq!(plan, Local6Plan::default());
        assert_eq!(plan.contains("2001:db8::1".parse().unwrap()), Some(false));
        // 2,048 /64s need 2,048 buckets at one per prefix; 4,097 do not fit in 4,096.
        let many = sixty_fours(2048);
        let plan = Local6Plan::of(many.iter(), counter_seeds());
        assert_eq!(plan.head.ask_trie, 0);
        agrees(&many, &plan, 10);
        let too_many = sixty_fours(4097);
        let plan = Local6Plan::of(too_many.iter(), counter_seeds());
        assert_eq!(plan.head.ask_trie, 1);
        assert_eq!(plan.contains("2001:db8::1".parse().unwrap()), None);
    }
}
