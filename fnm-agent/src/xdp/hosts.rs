//! The per-host counter tables: IPv4 hosts in `HOSTS_V4` (8-byte key, cheaper in the kernel),
//! IPv6 hosts in `HOSTS`, presented to the agent as one table keyed by [`HostKey`].

use aya::maps::{MapData, MapError, PerCpuHashMap, PerCpuValues};
use fnm_common::{v4_mapped, HostCounters, HostKey, HostKeyV4};

/// Both per-host counter tables of the XDP program.
pub struct HostMaps {
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
    /// The per-CPU counters of one host and direction.
    pub fn get(&self, key: &HostKey, flags: u64) -> Result<PerCpuValues<HostCounters>, MapError> {
        match as_v4(key) {
            Some(k) => self.v4.get(&k, flags),
            None => self.v6.get(key, flags),
        }
    }

    /// Every host and direction in the kernel tables.
    pub fn keys(&self) -> impl Iterator<Item = Result<HostKey, MapError>> + '_ {
        self.v4.keys().map(|k| k.map(from_v4)).chain(self.v6.keys())
    }

    /// Every host and direction with its per-CPU counters.
    pub fn iter(
        &self,
    ) -> impl Iterator<Item = Result<(HostKey, PerCpuValues<HostCounters>), MapError>> + '_ {
        self.v4
            .iter()
            .map(|item| item.map(|(k, v)| (from_v4(k), v)))
            .chain(self.v6.iter())
    }

    /// Removes one host and direction.
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
