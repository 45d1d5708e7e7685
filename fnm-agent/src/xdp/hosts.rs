//! The per-host counter tables: IPv4 hosts of networks with dense slots in `HOSTS_DENSE_V4`
//! (a per-CPU array, see [`DenseLayout`]), other IPv4 hosts in `HOSTS_V4` (8-byte key), IPv6
//! hosts in `HOSTS`, presented to the agent as one table keyed by [`HostKey`].

use super::local16::DenseLayout;
use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use fnm_common::{v4_mapped, HostCounters, HostKey, HostKeyV4};
use std::net::Ipv4Addr;

/// Every per-host counter table of the XDP program.
pub struct HostMaps {
    /// Dense IPv4 slots.
    pub(crate) dense: PerCpuArray<MapData, HostCounters>,
    /// Touched bit per dense slot, 64 slots per entry.
    pub(crate) touched: PerCpuArray<MapData, u64>,
    /// Which address and direction each dense slot counts.
    pub(crate) layout: DenseLayout,
    /// IPv4 hosts.
    pub(crate) v4: PerCpuHashMap<MapData, HostKeyV4, HostCounters>,
    /// IPv6 hosts.
    pub(crate) v6: PerCpuHashMap<MapData, HostKey, HostCounters>,
}

/// The IPv4 key of an IPv4-mapped [`HostKey`]; `None` for an IPv6 host.
fn as_v4(key: &HostKey) -> Option<HostKeyV4> {
    let a = key.addr;
    (v4_mapped([a[12], a[13], a[14], a[15]]) == a).then_some(HostKeyV4 {
        addr: [a[12], a[13], a[14], a[15]],
        direction: key.direction,
        _pad: [0; 3],
    })
}

fn from_v4(key: HostKeyV4) -> HostKey {
    HostKey {
        addr: v4_mapped(key.addr),
        direction: key.direction,
        _pad: [0; 3],
    }
}

impl HostMaps {
    /// The dense slot of a host and direction, if its network has dense slots.
    fn dense_slot(&self, key: &HostKeyV4) -> Option<u32> {
        let incoming = self.layout.slot_of(Ipv4Addr::from(key.addr))?;
        Some(incoming + (key.direction & 1) as u32)
    }

    /// The per-CPU counters of one host and direction.
    pub fn get(&self, key: &HostKey, flags: u64) -> Result<PerCpuValues<HostCounters>, MapError> {
        match as_v4(key) {
            Some(k) => match self.dense_slot(&k) {
                Some(slot) => self.dense.get(&slot, flags),
                None => self.v4.get(&k, flags),
            },
            None => self.v6.get(key, flags),
        }
    }

    /// Entries of the touched bitmap (64 dense slots each).
    pub(crate) fn touched_words(&self) -> u32 {
        self.layout.slots().div_ceil(64)
    }

    /// The touched bits of 64 dense slots from `word * 64`, over all CPUs.
    pub(crate) fn touched(&self, word: u32) -> Result<u64, MapError> {
        Ok(self.touched.get(&word, 0)?.iter().fold(0, |a, b| a | b))
    }

    /// Clears `bits` of touched word `word` on every CPU. A bit the kernel sets between the
    /// read and the write of this call is lost (its slot's counts stay in the slot and are read
    /// at the slot's next packet).
    pub(crate) fn clear_touched(&mut self, word: u32, bits: u64) -> Result<(), MapError> {
        let now = self.touched.get(&word, 0)?;
        let cleared: Vec<u64> = now.iter().map(|w| w & !bits).collect();
        self.touched.set(word, PerCpuValues::try_from(cleared)?, 0)
    }

    /// The summed counters of one dense slot, with its host and direction.
    pub(crate) fn dense_slot_sum(
        &self,
        slot: u32,
    ) -> Result<Option<(HostKey, HostCounters)>, MapError> {
        let Some((addr, direction)) = self.layout.host_of(slot) else {
            return Ok(None);
        };
        let mut sum = HostCounters::default();
        for v in self.dense.get(&slot, 0)?.iter() {
            sum.accumulate(v);
        }
        let key = HostKey {
            addr: v4_mapped(addr.octets()),
            direction,
            _pad: [0; 3],
        };
        Ok(Some((key, sum)))
    }

    /// Every host and direction with counters in the kernel: dense slots touched since their
    /// last idle clear (one read per 64 slots), then the hash tables.
    pub fn keys(&self) -> impl Iterator<Item = Result<HostKey, MapError>> + '_ {
        let mut dense = Vec::new();
        for word in 0..self.touched_words() {
            match self.touched(word) {
                Ok(mut bits) => {
                    while bits != 0 {
                        let slot = word * 64 + bits.trailing_zeros();
                        bits &= bits - 1;
                        if let Some((addr, direction)) = self.layout.host_of(slot) {
                            dense.push(Ok(HostKey {
                                addr: v4_mapped(addr.octets()),
                                direction,
                                _pad: [0; 3],
                            }));
                        }
                    }
                }
                Err(e) => dense.push(Err(e)),
            }
        }
        dense
            .into_iter()
            .chain(self.v4.keys().map(|k| k.map(from_v4)))
            .chain(self.v6.keys())
    }

    /// Every host and direction of the hash tables with its per-CPU counters.
    pub fn iter_hashed(
        &self,
    ) -> impl Iterator<Item = Result<(HostKey, PerCpuValues<HostCounters>), MapError>> + '_ {
        self.v4
            .iter()
            .map(|item| item.map(|(k, v)| (from_v4(k), v)))
            .chain(self.v6.iter())
    }

    /// Removes one host and direction from the hash tables.
    pub fn remove(&mut self, key: &HostKey) -> Result<(), MapError> {
        match as_v4(key) {
            Some(k) => self.v4.remove(&k),
            None => self.v6.remove(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_keys_round_trip_and_v6_keys_stay_v6() {
        let k = HostKey {
            addr: v4_mapped([10, 10, 0, 5]),
            direction: 1,
            _pad: [0; 3],
        };
        let v4 = as_v4(&k).expect("mapped address is IPv4");
        assert_eq!(v4.addr, [10, 10, 0, 5]);
        assert_eq!(from_v4(v4), k);
        let mut v6 = k;
        v6.addr[0] = 0x20;
        assert!(as_v4(&v6).is_none());
    }
}
