//! Drop entries (prefixes matched on source or destination) and fingerprint rules, with their
//! per-CPU counter slots.

use super::{maps::map_err, maps::LpmKey, KernelMaps, XdpError};
pub use crate::bans::{DropMatch, RuleSpec};
use crate::{accounting::Direction, prefix::Prefix};
use aya::maps::{MapError, PerCpuValues};
use fnm_common::{
    drop16, map_names, table_flag, DropCounter, DropRule, HostKey, RuleSet, MAX_RULES_PER_HOST,
};
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// Drop entries and rules known to the kernel, with their counter slots.
pub struct DropTables {
    free_slots: Vec<u32>,
    entries: BTreeMap<(Prefix, DropMatch), u32>,
    rules: HashMap<(IpAddr, Direction), Vec<(RuleSpec, u32)>>,
}

impl DropTables {
    /// Tables with `slots` counter slots.
    pub fn new(slots: u32) -> Self {
        Self {
            free_slots: (0..slots).rev().collect(),
            entries: BTreeMap::new(),
            rules: HashMap::new(),
        }
    }

    fn take_slot(&mut self, maps: &mut KernelMaps) -> Result<u32, XdpError> {
        let slot = self
            .free_slots
            .pop()
            .ok_or(XdpError::Full(map_names::DROP_COUNTERS))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| XdpError::Map {
            map: map_names::DROP_COUNTERS,
            message: e.to_string(),
        })?;
        let zeros = PerCpuValues::try_from(vec![DropCounter::default(); cpus]).map_err(|e| {
            XdpError::Map {
                map: map_names::DROP_COUNTERS,
                message: e.to_string(),
            }
        })?;
        maps.drop_counters
            .set(slot, zeros, 0)
            .map_err(map_err(map_names::DROP_COUNTERS))?;
        Ok(slot)
    }

    /// Installs a drop entry (idempotent). On failure nothing changed: no entry, no slot
    /// taken, flags as before.
    pub fn add(
        &mut self,
        maps: &mut KernelMaps,
        prefix: Prefix,
        m: DropMatch,
    ) -> Result<(), XdpError> {
        if self.entries.contains_key(&(prefix, m)) {
            return Ok(());
        }
        let slot = self.take_slot(maps)?;
        let key = LpmKey::of(&prefix);
        let result = match (&key, m) {
            (LpmKey::V4(k), DropMatch::Src) => maps.drop_src_v4.insert(k, slot, 0),
            (LpmKey::V6(k), DropMatch::Src) => maps.drop_src_v6.insert(k, slot, 0),
            (LpmKey::V4(k), DropMatch::Dst) => maps.drop_dst_v4.insert(k, slot, 0),
            (LpmKey::V6(k), DropMatch::Dst) => maps.drop_dst_v6.insert(k, slot, 0),
        };
        if let Err(e) = result {
            self.free_slots.push(slot);
            return Err(map_err(table_name(&key, m))(e));
        }
        self.entries.insert((prefix, m), slot);
        // The program only looks an address up when the flags and the /16 bitmap say so: an
        // entry they do not announce drops nothing, so it is taken out again.
        if let Err(e) = self.sync_flags(maps) {
            let _ = remove_key(maps, &key, m);
            self.entries.remove(&(prefix, m));
            self.free_slots.push(slot);
            let _ = self.sync_flags(maps);
            return Err(e);
        }
        Ok(())
    }

    /// Removes a drop entry; false when there was none. The kernel goes first: if it refuses,
    /// the entry stays known with its slot and flags, since it still drops, and the error is
    /// returned. An entry the kernel no longer has (deleted by someone else) counts as
    /// removed: nothing matches it any more, which is what removing it asks for.
    pub fn remove(
        &mut self,
        maps: &mut KernelMaps,
        prefix: Prefix,
        m: DropMatch,
    ) -> Result<bool, XdpError> {
        let Some(&slot) = self.entries.get(&(prefix, m)) else {
            return Ok(false);
        };
        let key = LpmKey::of(&prefix);
        match remove_key(maps, &key, m) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => tracing::warn!(
                "drop entry {prefix} ({}) was not in the kernel any more (deleted behind the \
                 agent's back?); forgetting it",
                m.as_str()
            ),
            Err(e) => return Err(map_err(table_name(&key, m))(e)),
        }
        self.entries.remove(&(prefix, m));
        self.free_slots.push(slot);
        // With the entry gone a stale flag or bitmap bit costs a lookup that misses, no more.
        if let Err(e) = self.sync_flags(maps) {
            tracing::warn!("updating the drop table flags after removing {prefix}: {e}");
        }
        Ok(true)
    }

    /// What an entry dropped so far.
    pub fn counter(&self, maps: &KernelMaps, prefix: Prefix, m: DropMatch) -> Option<DropCounter> {
        self.entries
            .get(&(prefix, m))
            .map(|slot| maps.drop_counter(*slot))
    }

    /// Every entry with what it dropped.
    pub fn entries(&self, maps: &KernelMaps) -> Vec<(Prefix, DropMatch, DropCounter)> {
        self.entries
            .iter()
            .map(|((p, m), slot)| (*p, *m, maps.drop_counter(*slot)))
            .collect()
    }

    /// Replaces the fingerprint rules of `host` in `direction` (empty slice: removes them).
    pub fn set_rules(
        &mut self,
        maps: &mut KernelMaps,
        host: IpAddr,
        direction: Direction,
        specs: &[RuleSpec],
    ) -> Result<(), XdpError> {
        if specs.len() > MAX_RULES_PER_HOST {
            return Err(XdpError::Map {
                map: map_names::RULES,
                message: format!("at most {MAX_RULES_PER_HOST} rules per host"),
            });
        }
        let key = HostKey {
            addr: crate::accounting::to16(host),
            direction: direction.index() as u8,
            _pad: [0; 3],
        };
        if let Some(old) = self.rules.remove(&(host, direction)) {
            self.free_slots.extend(old.iter().map(|(_, s)| *s));
        }
        if specs.is_empty() {
            let _ = maps.rules.remove(&key);
            return self.sync_flags(maps);
        }
        let mut set = RuleSet::default();
        let mut installed = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let slot = self.take_slot(maps)?;
            set.rules[i] = DropRule {
                protocol: spec.protocol,
                tcp_flags_value: spec.tcp_flags_value,
                tcp_flags_mask: spec.tcp_flags_mask,
                match_fragments: spec.fragments as u8,
                src_port: spec.src_port,
                dst_port: spec.dst_port,
                slot,
            };
            installed.push((*spec, slot));
        }
        set.count = specs.len() as u32;
        maps.rules
            .insert(key, set, 0)
            .map_err(map_err(map_names::RULES))?;
        self.rules.insert((host, direction), installed);
        self.sync_flags(maps)
    }

    /// The rules of every host with what each dropped.
    pub fn rules(&self, maps: &KernelMaps) -> Vec<(IpAddr, Direction, RuleSpec, DropCounter)> {
        let mut out = Vec::new();
        for ((host, dir), list) in &self.rules {
            for (spec, slot) in list {
                out.push((*host, *dir, *spec, maps.drop_counter(*slot)));
            }
        }
        out
    }

    /// Starts (`Some(one_in)`) or stops (`None`) sampling the packets of `host` in `direction`
    /// into the ring buffer.
    pub fn set_sampling(
        &mut self,
        maps: &mut KernelMaps,
        host: IpAddr,
        direction: Direction,
        one_in: Option<u32>,
    ) -> Result<(), XdpError> {
        let key = HostKey {
            addr: crate::accounting::to16(host),
            direction: direction.index() as u8,
            _pad: [0; 3],
        };
        match one_in {
            Some(n) => maps
                .sampled_hosts
                .insert(key, n.max(1), 0)
                .map_err(map_err(map_names::SAMPLED_HOSTS))?,
            None => {
                let _ = maps.sampled_hosts.remove(&key);
            }
        }
        self.sync_flags(maps)
    }

    /// Number of drop entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True without drop entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Rewrites the per-/16 bitmaps of the IPv4 drop tables from the entries.
    fn sync_drop16(&self, maps: &mut KernelMaps) -> Result<(), XdpError> {
        for (m, index) in [(DropMatch::Src, drop16::SRC), (DropMatch::Dst, drop16::DST)] {
            let prefixes = self.entries.keys().filter(|(_, e)| *e == m).map(|(p, _)| p);
            maps.drop16_v4
                .set(index, drop16_bitmap(prefixes), 0)
                .map_err(map_err(map_names::DROP16_V4))?;
        }
        Ok(())
    }

    fn sync_flags(&self, maps: &mut KernelMaps) -> Result<(), XdpError> {
        self.sync_drop16(maps)?;
        let mut flags = 0;
        if self.entries.keys().any(|(_, m)| *m == DropMatch::Src) {
            flags |= table_flag::DROP_SRC;
        }
        if self.entries.keys().any(|(_, m)| *m == DropMatch::Dst) {
            flags |= table_flag::DROP_DST;
        }
        if !self.rules.is_empty() {
            flags |= table_flag::RULES;
        }
        let sampling = maps.sampled_hosts.keys().next().is_some();
        if sampling {
            flags |= table_flag::SAMPLING;
        }
        maps.set_table_flags(flags)
    }
}

/// The drop table of a key's family and side.
fn table_name(key: &LpmKey, m: DropMatch) -> &'static str {
    match (key, m) {
        (LpmKey::V4(_), DropMatch::Src) => map_names::DROP_SRC_V4,
        (LpmKey::V6(_), DropMatch::Src) => map_names::DROP_SRC_V6,
        (LpmKey::V4(_), DropMatch::Dst) => map_names::DROP_DST_V4,
        (LpmKey::V6(_), DropMatch::Dst) => map_names::DROP_DST_V6,
    }
}

fn remove_key(maps: &mut KernelMaps, key: &LpmKey, m: DropMatch) -> Result<(), MapError> {
    match (key, m) {
        (LpmKey::V4(k), DropMatch::Src) => maps.drop_src_v4.remove(k),
        (LpmKey::V6(k), DropMatch::Src) => maps.drop_src_v6.remove(k),
        (LpmKey::V4(k), DropMatch::Dst) => maps.drop_dst_v4.remove(k),
        (LpmKey::V6(k), DropMatch::Dst) => maps.drop_dst_v6.remove(k),
    }
}

/// True when the kernel answered that the key is not in the map.
pub(super) fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// One bit per IPv4 /16 holding an address of one of `prefixes` (IPv6 ones are ignored): the
/// layout of the drop tables' and the source whitelist's per-/16 bitmaps.
pub(super) fn drop16_bitmap<'a>(
    prefixes: impl Iterator<Item = &'a Prefix>,
) -> [u64; drop16::WORDS] {
    let mut bits = [0u64; drop16::WORDS];
    for p in prefixes {
        let IpAddr::V4(a) = p.addr() else { continue };
        let first = (u32::from(a) >> 16) as usize;
        let count = 1usize << 16u32.saturating_sub(p.len() as u32);
        let first = first & !(count - 1);
        for block in first..first + count {
            bits[block / 64] |= 1 << (block % 64);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(bits: &[u64; drop16::WORDS], a: u8, b: u8) -> bool {
        let block = ((a as usize) << 8) | b as usize;
        bits[block / 64] & (1 << (block % 64)) != 0
    }

    #[test]
    fn drop16_bits_cover_exactly_the_blocks_of_the_prefixes() {
        let prefixes: Vec<Prefix> = ["203.0.113.0/24", "10.0.0.0/15", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let bits = drop16_bitmap(prefixes.iter());
        assert!(bit(&bits, 203, 0));
        assert!(!bit(&bits, 203, 1));
        assert!(bit(&bits, 10, 0) && bit(&bits, 10, 1));
        assert!(!bit(&bits, 10, 2));
        assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 3);
        let all = drop16_bitmap(["0.0.0.0/0".parse::<Prefix>().unwrap()].iter());
        assert!(all.iter().all(|w| *w == u64::MAX));
    }
}
