//! Typed handles on the XDP program's maps.

use super::{
    hosts::{DenseCounters, HostMaps, SlotArray, TouchedBytes},
    local16::DenseLayout,
    local6::Local6Table,
    networks::{Local16Table, Local24Table},
    XdpError,
};
use crate::prefix::Prefix;
use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, ProgramArray,
        RingBuf,
    },
    Ebpf,
};
use fnm_common::{
    drop16, local6, map_names, setting, stat, table_flag, DropCounter, HostKey, LocalNetV4, RuleSet,
};
use std::{collections::BTreeSet, net::IpAddr};

/// Every map of the program, owned and typed.
pub struct KernelMaps {
    /// Per-host counters (dense IPv4 slots, IPv4 and IPv6 hash tables behind one interface).
    pub hosts: HostMaps,
    /// The per-/16 table in front of `local_v4`, mapped into the agent.
    pub(crate) local16: Local16Table,
    /// The /24 tables of the split /16 blocks, mapped into the agent; `None` for an object
    /// built without them (an older build the benchmark compares).
    pub(crate) local24: Option<Local24Table>,
    /// The IPv6 /32 bits in front of `local_v6` of an object built before the prefilter of
    /// [`Local6Table`] replaced them (`None` for others, and as `local24`).
    pub(crate) local32_v6: Option<Array<MapData, [u64; local6::WORDS]>>,
    /// The IPv6 local networks by prefix length, asked instead of `local_v6` (`None` as
    /// `local24`).
    pub(crate) local6: Option<Local6Table>,
    /// The local networks the kernel counts now.
    pub(crate) networks: Vec<Prefix>,
    /// Entries of each local-network trie (`xdp.max_prefixes`).
    pub(crate) max_prefixes: u32,
    /// Local networks, with the dense slot base of each.
    pub local_v4: LpmTrie<MapData, [u8; 4], LocalNetV4>,
    /// Local networks.
    pub local_v6: LpmTrie<MapData, [u8; 16], u8>,
    /// Never-dropped prefixes.
    pub whitelist_v4: LpmTrie<MapData, [u8; 4], u8>,
    /// Never-dropped prefixes.
    pub whitelist_v6: LpmTrie<MapData, [u8; 16], u8>,
    /// Whitelisted remote sources (`[detection] whitelist_sources`).
    pub source_whitelist_v4: LpmTrie<MapData, [u8; 4], u8>,
    /// Whitelisted remote sources.
    pub source_whitelist_v6: LpmTrie<MapData, [u8; 16], u8>,
    /// Per-/16 bitmap of the IPv4 whitelisted sources.
    pub source_whitelist16_v4: Array<MapData, [u64; drop16::WORDS]>,
    /// What the source whitelist holds now (replaced as a whole by
    /// [`KernelMaps::set_source_whitelist`]).
    source_whitelist: BTreeSet<Prefix>,
    /// Per-/16 bitmaps of the IPv4 drop tables (source, destination).
    pub drop16_v4: Array<MapData, [u64; drop16::WORDS]>,
    /// Drop on source, value = counter slot.
    pub drop_src_v4: LpmTrie<MapData, [u8; 4], u32>,
    /// Drop on source, value = counter slot.
    pub drop_src_v6: LpmTrie<MapData, [u8; 16], u32>,
    /// Drop on destination, value = counter slot.
    pub drop_dst_v4: LpmTrie<MapData, [u8; 4], u32>,
    /// Drop on destination, value = counter slot.
    pub drop_dst_v6: LpmTrie<MapData, [u8; 16], u32>,
    /// Per-slot drop counters.
    pub drop_counters: PerCpuArray<MapData, DropCounter>,
    /// Fingerprint rules per victim.
    pub rules: HashMap<MapData, HostKey, RuleSet>,
    /// Hosts whose packets are sampled (value: 1 in N).
    pub sampled_hosts: HashMap<MapData, HostKey, u32>,
    /// Packet samples.
    pub samples: Option<RingBuf<MapData>>,
    /// Global counters (one entry).
    pub stats: PerCpuArray<MapData, [u64; stat::COUNT as usize]>,
    /// Run-time settings.
    pub settings: Array<MapData, u32>,
    /// The tunnel walk's layer programs (kept open: the kernel empties a program array when
    /// its last file descriptor closes); `None` for an object built without the walk (an
    /// older build the benchmark compares), whose tunnels are counted as the outer packet.
    pub layers: Option<ProgramArray<MapData>>,
    /// The table flags the drop tables last asked for ([`KernelMaps::set_table_flags`]);
    /// the source whitelist's flag is added to them.
    table_flags: u32,
}

pub(crate) fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, XdpError> {
    let map = ebpf.take_map(name).ok_or(XdpError::Map {
        map: name,
        message: "missing from the XDP object".into(),
    })?;
    T::try_from(map).map_err(|e| XdpError::Map {
        map: name,
        message: e.to_string(),
    })
}

/// Maps the touched bytes of the dense slots (`touched_len` bytes) into the agent.
fn touched_bytes(ebpf: &mut Ebpf, touched_len: usize) -> Result<TouchedBytes, XdpError> {
    let name = map_names::DENSE_TOUCHED_V4;
    let err = |message: String| XdpError::Map { map: name, message };
    match ebpf.take_map(name) {
        Some(aya::maps::Map::Array(data)) => {
            TouchedBytes::map(data, touched_len).map_err(|e| err(format!("mmap: {e}")))
        }
        Some(_) => Err(err("not an array".into())),
        None => Err(err("missing from the XDP object".into())),
    }
}

/// The dense counters: mapped into the agent (`slots` × `cpus` entries), or the per-CPU array
/// of an older object.
fn dense_counters(ebpf: &mut Ebpf, slots: usize, cpus: usize) -> Result<DenseCounters, XdpError> {
    let name = map_names::HOSTS_DENSE_V4;
    let err = |message: String| XdpError::Map { map: name, message };
    match ebpf.take_map(name) {
        Some(aya::maps::Map::Array(data)) => SlotArray::map(data, slots, cpus)
            .map(DenseCounters::Mapped)
            .map_err(|e| err(format!("mmap: {e}"))),
        Some(map @ aya::maps::Map::PerCpuArray(_)) => PerCpuArray::try_from(map)
            .map(DenseCounters::PerCpu)
            .map_err(|e| err(e.to_string())),
        Some(_) => Err(err("neither an array nor a per-CPU array".into())),
        None => Err(err("missing from the XDP object".into())),
    }
}

/// Maps the per-/16 local-network table into the agent.
fn local16_table(ebpf: &mut Ebpf) -> Result<Local16Table, XdpError> {
    let name = map_names::LOCAL16_V4;
    let err = |message: String| XdpError::Map { map: name, message };
    match ebpf.take_map(name) {
        Some(aya::maps::Map::Array(data)) => {
            Local16Table::map(data).map_err(|e| err(format!("mmap: {e}")))
        }
        Some(_) => Err(err("not an array".into())),
        None => Err(err("missing from the XDP object".into())),
    }
}

/// Maps the /24 tables of the split /16 blocks into the agent (`None` when the object has
/// none).
fn local24_table(ebpf: &mut Ebpf, tables: u32) -> Result<Option<Local24Table>, XdpError> {
    let name = map_names::LOCAL24_V4;
    let err = |message: String| XdpError::Map { map: name, message };
    match ebpf.take_map(name) {
        Some(aya::maps::Map::Array(data)) => Local24Table::map(data, tables)
            .map(Some)
            .map_err(|e| err(format!("mmap: {e}"))),
        Some(_) => Err(err("not an array".into())),
        None => Ok(None),
    }
}

/// A map error named after its map.
pub(crate) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |e| XdpError::Map {
        map,
        message: crate::errors::chain(&e),
    }
}

/// The LPM keys of a prefix, by family.
pub(crate) enum LpmKey {
    /// IPv4 key.
    V4(Key<[u8; 4]>),
    /// IPv6 key.
    V6(Key<[u8; 16]>),
}

impl LpmKey {
    /// The key of `prefix`.
    pub(crate) fn of(prefix: &Prefix) -> Self {
        match prefix.addr() {
            IpAddr::V4(a) => LpmKey::V4(Key::new(prefix.len() as u32, a.octets())),
            IpAddr::V6(a) => LpmKey::V6(Key::new(prefix.len() as u32, a.octets())),
        }
    }
}

impl KernelMaps {
    /// Takes every map out of a freshly loaded object; `layout` is the dense slot layout the
    /// object was loaded with, `cpus` the CPUs its slot arrays are laid out for, `dense_slots`
    /// their slots, `host_slots` the hashed hosts' slots (`xdp.max_hosts`), `max_prefixes` the size of its local-network tries, `local24_tables` the
    /// entries of its /24 tables (the layout hands out no more).
    pub fn take(
        ebpf: &mut Ebpf,
        layout: DenseLayout,
        cpus: usize,
        dense_slots: usize,
        host_slots: usize,
        max_prefixes: u32,
        local24_tables: u32,
    ) -> Result<Self, XdpError> {
        let local24 = local24_table(ebpf, local24_tables)?;
        let layout = layout.with_split_tables(local24.as_ref().map_or(0, |t| t.tables()));
        Ok(Self {
            local16: local16_table(ebpf)?,
            local24,
            local32_v6: take(ebpf, map_names::LOCAL32_V6).ok(),
            local6: Local6Table::take(ebpf)?,
            networks: Vec::new(),
            max_prefixes,
            hosts: HostMaps {
                dense: dense_counters(ebpf, dense_slots, cpus)?,
                touched: touched_bytes(ebpf, dense_slots)?,
                layout,
                slots: super::slots::HostSlots::take(ebpf, host_slots, cpus)?,
                v4: take::<PerCpuHashMap<_, _, _>>(ebpf, map_names::HOSTS_V4).ok(),
                v6: take::<PerCpuHashMap<_, _, _>>(ebpf, map_names::HOSTS).ok(),
            },
            local_v4: take(ebpf, map_names::LOCAL_V4)?,
            local_v6: take(ebpf, map_names::LOCAL_V6)?,
            whitelist_v4: take(ebpf, map_names::WHITELIST_V4)?,
            whitelist_v6: take(ebpf, map_names::WHITELIST_V6)?,
            source_whitelist_v4: take(ebpf, map_names::SOURCE_WHITELIST_V4)?,
            source_whitelist_v6: take(ebpf, map_names::SOURCE_WHITELIST_V6)?,
            source_whitelist16_v4: take(ebpf, map_names::SOURCE_WHITELIST16_V4)?,
            source_whitelist: BTreeSet::new(),
            drop16_v4: take(ebpf, map_names::DROP16_V4)?,
            drop_src_v4: take(ebpf, map_names::DROP_SRC_V4)?,
            drop_src_v6: take(ebpf, map_names::DROP_SRC_V6)?,
            drop_dst_v4: take(ebpf, map_names::DROP_DST_V4)?,
            drop_dst_v6: take(ebpf, map_names::DROP_DST_V6)?,
            drop_counters: take(ebpf, map_names::DROP_COUNTERS)?,
            rules: take(ebpf, map_names::RULES)?,
            sampled_hosts: take(ebpf, map_names::SAMPLED_HOSTS)?,
            samples: take(ebpf, map_names::SAMPLES).ok(),
            stats: take(ebpf, map_names::STATS)?,
            settings: take(ebpf, map_names::SETTINGS)?,
            layers: take(ebpf, map_names::LAYERS).ok(),
            table_flags: 0,
        })
    }

    /// Writes the local networks (tries and the /16 table, laid out as the dense slots were
    /// at load) and the whitelist into a freshly loaded program.
    pub fn fill_prefixes(
        &mut self,
        networks: &[Prefix],
        whitelist: &[Prefix],
    ) -> Result<(), XdpError> {
        let layout = self.hosts.layout.clone();
        self.insert_networks(networks, &layout)?;
        self.write_local_tables(networks, &layout)?;
        self.networks = networks.to_vec();
        self.insert_whitelist(whitelist)
    }

    /// Puts the tunnel walk's programs (loaded) into `LAYERS`, each at its index.
    pub fn fill_layers(&mut self, ebpf: &Ebpf) -> Result<(), XdpError> {
        let err = |message: String| XdpError::Map {
            map: map_names::LAYERS,
            message,
        };
        let Some(layers) = self.layers.as_mut() else {
            return Ok(());
        };
        for (index, name) in fnm_common::tunnel_layer::PROGRAMS.iter().enumerate() {
            let program = ebpf
                .program(name)
                .ok_or_else(|| err(format!("program {name} missing from the object")))?;
            let fd = program.fd().map_err(|e| err(format!("{name}: {e}")))?;
            layers
                .set(index as u32, fd, 0)
                .map_err(map_err(map_names::LAYERS))?;
        }
        Ok(())
    }

    fn insert_whitelist(&mut self, whitelist: &[Prefix]) -> Result<(), XdpError> {
        for p in whitelist {
            match LpmKey::of(p) {
                LpmKey::V4(k) => self
                    .whitelist_v4
                    .insert(&k, 1, 0)
                    .map_err(map_err(map_names::WHITELIST_V4))?,
                LpmKey::V6(k) => self
                    .whitelist_v6
                    .insert(&k, 1, 0)
                    .map_err(map_err(map_names::WHITELIST_V6))?,
            }
        }
        Ok(())
    }

    /// Replaces the whitelist `old` by `new` (a configuration reload): new entries first, then
    /// the ones no longer listed go, so a prefix in both is never missing.
    pub fn replace_whitelist(&mut self, old: &[Prefix], new: &[Prefix]) -> Result<(), XdpError> {
        self.insert_whitelist(new)?;
        for p in old.iter().filter(|p| !new.contains(p)) {
            let result = match LpmKey::of(p) {
                LpmKey::V4(k) => self.whitelist_v4.remove(&k),
                LpmKey::V6(k) => self.whitelist_v6.remove(&k),
            };
            if let Err(e) = result {
                if !matches!(e, aya::maps::MapError::KeyNotFound) {
                    return Err(map_err(map_names::WHITELIST_V4)(e));
                }
            }
        }
        Ok(())
    }

    /// Replaces the whitelisted remote sources (`[detection] whitelist_sources`): a packet
    /// whose remote side is in them still counts in the totals and in its local host's
    /// whitelisted counters, never in the counters its rates come from. New entries go in
    /// before the old ones leave, so a source in both lists is whitelisted throughout.
    pub fn set_source_whitelist(&mut self, sources: &[Prefix]) -> Result<(), XdpError> {
        let wanted: BTreeSet<Prefix> = sources.iter().copied().collect();
        let coming: Vec<Prefix> = wanted.difference(&self.source_whitelist).copied().collect();
        for p in &coming {
            match LpmKey::of(p) {
                LpmKey::V4(k) => self
                    .source_whitelist_v4
                    .insert(&k, 1, 0)
                    .map_err(map_err(map_names::SOURCE_WHITELIST_V4))?,
                LpmKey::V6(k) => self
                    .source_whitelist_v6
                    .insert(&k, 1, 0)
                    .map_err(map_err(map_names::SOURCE_WHITELIST_V6))?,
            }
            self.source_whitelist.insert(*p);
        }
        // Both lists' blocks while the old entries are still in the trie.
        self.source_whitelist16_v4
            .set(
                0,
                super::tables::drop16_bitmap(self.source_whitelist.iter()),
                0,
            )
            .map_err(map_err(map_names::SOURCE_WHITELIST16_V4))?;
        self.write_table_flags()?;
        let leaving: Vec<Prefix> = self.source_whitelist.difference(&wanted).copied().collect();
        for p in leaving {
            let removed = match LpmKey::of(&p) {
                LpmKey::V4(k) => self
                    .source_whitelist_v4
                    .remove(&k)
                    .map_err(map_err(map_names::SOURCE_WHITELIST_V4)),
                LpmKey::V6(k) => self
                    .source_whitelist_v6
                    .remove(&k)
                    .map_err(map_err(map_names::SOURCE_WHITELIST_V6)),
            };
            removed?;
            self.source_whitelist.remove(&p);
        }
        self.source_whitelist16_v4
            .set(0, super::tables::drop16_bitmap(wanted.iter()), 0)
            .map_err(map_err(map_names::SOURCE_WHITELIST16_V4))?;
        self.write_table_flags()
    }

    /// The whitelisted remote sources in the kernel now.
    pub fn source_whitelist(&self) -> impl Iterator<Item = &Prefix> {
        self.source_whitelist.iter()
    }

    /// Sets the bit set of non-empty drop, rule and sampling tables (the source whitelist's
    /// bit is kept as [`KernelMaps::set_source_whitelist`] left it).
    pub fn set_table_flags(&mut self, flags: u32) -> Result<(), XdpError> {
        self.table_flags = flags & !table_flag::SOURCE_WHITELIST;
        self.write_table_flags()
    }

    fn write_table_flags(&mut self) -> Result<(), XdpError> {
        let mut flags = self.table_flags;
        if !self.source_whitelist.is_empty() {
            flags |= table_flag::SOURCE_WHITELIST;
        }
        self.settings
            .set(setting::TABLE_FLAGS, flags, 0)
            .map_err(map_err(map_names::SETTINGS))
    }

    /// Sum over CPUs of one global counter.
    pub fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&0, 0)
            .map(|v| {
                v.iter().fold(0u64, |a, b| {
                    a.wrapping_add(b.get(index as usize).copied().unwrap_or(0))
                })
            })
            .unwrap_or(0)
    }

    /// Every global counter, summed over the CPUs, in one read (zeros if the read fails).
    pub fn stats_sum(&self) -> [u64; stat::COUNT as usize] {
        let mut sum = [0u64; stat::COUNT as usize];
        if let Ok(values) = self.stats.get(&0, 0) {
            for cpu in values.iter() {
                for (s, v) in sum.iter_mut().zip(cpu.iter()) {
                    *s = s.wrapping_add(*v);
                }
            }
        }
        sum
    }

    /// Sum over CPUs of one drop-counter slot.
    pub fn drop_counter(&self, slot: u32) -> DropCounter {
        self.drop_counters
            .get(&slot, 0)
            .map(|v| {
                v.iter().fold(DropCounter::default(), |a, b| DropCounter {
                    packets: a.packets.wrapping_add(b.packets),
                    bytes: a.bytes.wrapping_add(b.bytes),
                })
            })
            .unwrap_or_default()
    }
}
