//! What the XDP program's maps cost in kernel memory, per CPU and shared, from the `[xdp]`
//! sizes: the formula docs/performance.md states, logged at load.
//!
//! Per CPU (per-CPU maps, and the slot arrays' entry per CPU, hold one value per possible CPU):
//! - dense IPv4 counters: 2 directions × 128 bytes × `dense_v4_addresses` (the slots of the
//!   networks that fit, at most that; 120 bytes of counters padded to two cache lines so no
//!   two CPUs write one line);
//! - the hashed hosts' slots (IPv4 and IPv6 together): 2 directions × 128 bytes × 2 ×
//!   `max_hosts` (the open table has twice the slots of the hosts it must hold);
//! - drop and rule counters: 16 bytes × (2 × `max_drop_entries` + 4 × min(`max_drop_entries`,
//!   4096));
//! - the flow cache (128 KiB) and the global counters.
//!
//! Shared: the hashed hosts' table (32 bytes and two touched bytes per host slot), the flow
//! table (about 72 bytes per 5-tuple), the tries (about 64 bytes per entry), the /16 table
//! (512 KiB), the /24 tables (1 KiB each), the IPv6 table by prefix length (two generations of
//! 4,096 buckets of 64 bytes: 512 KiB), the touched bytes (one per dense slot) and the sample
//! ring (1 MiB).

use crate::config::XdpConfig;
use fnm_common::{
    local16, local6, stat, FLOW_CACHE_SLOTS, MAX_RULES_PER_HOST, SLOT_COUNTERS_BYTES,
};

/// Bytes of one slot's counters per CPU in a slot array (cache-line padded).
const SLOT_VALUE: u64 = SLOT_COUNTERS_BYTES as u64;
/// Bytes of the IPv6 table by prefix length (both generations' buckets) and its prefilter.
const LOCAL6_TABLE: u64 = (local6::GENERATIONS * local6::BUCKETS) as u64
    * std::mem::size_of::<fnm_common::Local6Bucket>() as u64
    + std::mem::size_of::<fnm_common::Local6Bits>() as u64;
/// Kernel hash-table element around a key and value (list links, hash, padding), roughly.
const HASH_ELEMENT: u64 = 56;
/// LPM trie node around a key and value, roughly.
const TRIE_NODE: u64 = 48;

/// Kernel memory of the maps: `per_cpu` bytes for each CPU plus `shared` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelMemory {
    /// Bytes per CPU (the per-CPU maps).
    pub per_cpu: u64,
    /// Bytes once, whatever the CPUs.
    pub shared: u64,
}

impl KernelMemory {
    /// The maps of a program loaded with `config` and `dense_addresses` dense IPv4 addresses
    /// (at most `config.dense_v4_addresses`: the addresses of the networks that fit).
    pub fn of(config: &XdpConfig, dense_addresses: u64) -> Self {
        let drops = config.max_drop_entries as u64;
        let drop_slots = 2 * drops + drops.min(4096) * MAX_RULES_PER_HOST as u64;
        let host_slots =
            super::host_buckets(config.max_hosts) as u64 * fnm_common::SLOT_WAYS as u64;
        let per_cpu = 2 * SLOT_VALUE * dense_addresses
            + 2 * SLOT_VALUE * host_slots
            + 16 * drop_slots
            + 8 * FLOW_CACHE_SLOTS as u64
            + 8 * stat::COUNT as u64
            + 512;
        let prefixes = config.max_prefixes as u64;
        let shared = host_slots * (fnm_common::SLOT_OWNER_BYTES as u64 + 2)
            + config.max_flows as u64 * (HASH_ELEMENT + 16)
            + 6 * prefixes * (TRIE_NODE + 16)
            + 4 * drops * (TRIE_NODE + 20)
            + drops.min(4096) * (HASH_ELEMENT + 80)
            + 8 * local16::BLOCKS as u64
            + 1024 * config.local24_tables as u64
            + LOCAL6_TABLE
            + 2 * dense_addresses
            + (1 << 20);
        Self { per_cpu, shared }
    }

    /// Bytes on a machine with `cpus` CPUs.
    pub fn at(&self, cpus: u64) -> u64 {
        self.shared + self.per_cpu * cpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// The configuration docs/performance.md and config/fnm-agent.toml give for 1 GiB at 64
    /// CPUs (the realistic layout's bench runs with it).
    fn one_gib_at_64() -> XdpConfig {
        XdpConfig {
            dense_v4_addresses: 32_768,
            max_hosts: 8_192,
            max_drop_entries: 16_384,
            ..XdpConfig::default()
        }
    }

    #[test]
    fn the_documented_configuration_fits_one_gib_at_64_cpus() {
        let c = one_gib_at_64();
        let m = KernelMemory::of(&c, c.dense_v4_addresses as u64);
        eprintln!("{m:?}: {} MiB at 64 CPUs", m.at(64) >> 20);
        assert!(m.at(64) < GIB, "{m:?}: {} MiB", m.at(64) >> 20);
        // The dense counters are most of it: 256 bytes per address and CPU.
        assert_eq!(2 * SLOT_VALUE, 256);
    }

    #[test]
    fn the_defaults_need_about_three_gib_at_64_cpus_and_little_at_two() {
        let c = XdpConfig::default();
        let m = KernelMemory::of(&c, c.dense_v4_addresses as u64);
        eprintln!(
            "{m:?}: {} MiB at 64 CPUs, {} MiB at 2",
            m.at(64) >> 20,
            m.at(2) >> 20
        );
        assert!(m.at(64) > 5 * GIB / 2 && m.at(64) < 4 * GIB, "{m:?}");
        assert!(m.at(2) < 192 << 20, "{m:?}");
    }
}
