//! Reads the kernel's per-CPU counters and turns them into accounting deltas.

use super::{maps::map_err, KernelMaps, XdpError};
use crate::{
    accounting::{from16, CounterSink, Direction},
    traffic::Source,
};
use fnm_common::{direction, map_names, proto, stat, HostCounters, HostKey, XdpHostCounters};
use std::collections::HashMap;

pub use crate::engine::snapshot::XdpStatus as XdpStats;

#[derive(Debug, Clone)]
struct Seen {
    counters: XdpHostCounters,
    changed_ms: u64,
}

/// Remembers the last kernel value of every host to compute deltas.
#[derive(Debug, Default)]
pub(super) struct Poller {
    /// Hosts of the hash tables (forgotten when removed from the kernel as idle).
    last: HashMap<HostKey, Seen>,
    /// Dense slots ever touched (kept: a slot's counters are never reset).
    dense: HashMap<u32, Seen>,
    /// Deltas taken when the networks changed ([`Poller::settle`]), handed over by the next
    /// poll.
    pending: Vec<(std::net::IpAddr, Direction, XdpHostCounters)>,
    /// The time of the last poll.
    now_ms: u64,
}

/// Where [`Poller::settle`] puts the deltas it takes.
struct Pending<'a>(&'a mut Vec<(std::net::IpAddr, Direction, XdpHostCounters)>);

impl CounterSink for Pending<'_> {
    fn add_host_counters(
        &mut self,
        host: std::net::IpAddr,
        direction: Direction,
        delta: &XdpHostCounters,
    ) {
        self.0.push((host, direction, *delta));
    }
    fn set_total(&mut self, _: crate::traffic::Source, _: usize, _: usize, _: u64, _: u64) {}
}

impl Poller {
    pub(super) fn poll(
        &mut self,
        maps: &mut KernelMaps,
        accounting: &mut impl CounterSink,
        now_ms: u64,
        idle_ms: u64,
    ) -> Result<XdpStats, XdpError> {
        self.now_ms = now_ms;
        for (host, dir, delta) in self.pending.drain(..) {
            accounting.add_host_counters(host, dir, &delta);
        }
        let active_dense = self.poll_dense(maps, accounting, now_ms, idle_ms)?;
        let mut current: Vec<(HostKey, XdpHostCounters)> = Vec::new();
        for item in maps.hosts.iter_hashed() {
            let (key, values) = match item {
                Ok(kv) => kv,
                // A key removed between get_next_key and lookup: skip it this round.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::HOSTS)(e)),
            };
            let mut sum = XdpHostCounters::default();
            for v in values.iter() {
                sum.accumulate(v);
            }
            current.push((key, sum));
        }
        let mut idle = Vec::new();
        for (key, sum) in &current {
            let dir = direction_of(key);
            let seen = self.last.entry(*key).or_insert(Seen {
                counters: XdpHostCounters::default(),
                changed_ms: now_ms,
            });
            let delta = delta(&seen.counters, sum);
            if has_packets(&delta) {
                accounting.add_host_counters(from16(key.addr), dir, &delta);
                seen.changed_ms = now_ms;
            } else if now_ms.saturating_sub(seen.changed_ms) >= idle_ms {
                idle.push(*key);
            }
            seen.counters = *sum;
        }
        for key in idle {
            // The host gets a fresh entry (from zero) if it sends again; deltas handle that.
            let _ = maps.hosts.remove(&key);
            self.last.remove(&key);
        }
        let present: std::collections::HashSet<HostKey> = current.iter().map(|(k, _)| *k).collect();
        self.last.retain(|k, _| present.contains(k));

        for dir in 0..direction::COUNT as u8 {
            for class in 0..proto::COUNT {
                let packets = maps.stat(stat::total_index(dir, class, false));
                let bytes = maps.stat(stat::total_index(dir, class, true));
                accounting.set_total(Source::Xdp, dir as usize, class, packets, bytes);
            }
        }
        Ok(XdpStats {
            frames: maps.stat(stat::FRAMES),
            non_ip: maps.stat(stat::NON_IP),
            malformed: maps.stat(stat::MALFORMED),
            dropped_src_packets: maps.stat(stat::DROP_SRC_PACKETS),
            dropped_src_bytes: maps.stat(stat::DROP_SRC_BYTES),
            dropped_dst_packets: maps.stat(stat::DROP_DST_PACKETS),
            dropped_dst_bytes: maps.stat(stat::DROP_DST_BYTES),
            dropped_rule_packets: maps.stat(stat::DROP_RULE_PACKETS),
            dropped_rule_bytes: maps.stat(stat::DROP_RULE_BYTES),
            whitelist_passed: maps.stat(stat::WHITELIST_PASSED),
            source_whitelisted_packets: maps.stat(stat::SOURCE_WHITELISTED_PACKETS),
            source_whitelisted_bytes: maps.stat(stat::SOURCE_WHITELISTED_BYTES),
            decapsulated: maps.stat(stat::DECAPSULATED),
            tunnel_outer_counted: maps.stat(stat::TUNNEL_OUTER_COUNTED),
            host_table_full: maps.stat(stat::HOST_TABLE_FULL),
            samples_lost: maps.stat(stat::SAMPLES_LOST),
            kernel_hosts: current.len() as u64 + active_dense,
        })
    }

    /// Takes the deltas of every touched dense slot under the layout in force (before the
    /// networks change: the last ones of the hosts that lose their slots); the next poll hands
    /// them over.
    pub(super) fn settle(&mut self, maps: &mut KernelMaps) -> Result<(), XdpError> {
        let mut pending = std::mem::take(&mut self.pending);
        let result = self.poll_dense(maps, &mut Pending(&mut pending), self.now_ms, u64::MAX);
        self.pending = pending;
        result.map(drop)
    }

    /// Takes what the touched dense slots that no network owns hold as their baseline
    /// (packets counted there under an older table: nobody's) and clears their touched byte;
    /// a slot handed out later starts from that value.
    pub(super) fn absorb_unowned(&mut self, maps: &KernelMaps) -> Result<(), XdpError> {
        let err = map_err(map_names::HOSTS_DENSE_V4);
        for slot in maps.hosts.touched_slots() {
            if maps.hosts.layout.host_of(slot).is_some() {
                continue;
            }
            // Cleared first: a packet counted after the read sets it again.
            maps.hosts.clear_touched(slot);
            let counters = maps.hosts.dense_slot_raw(slot).map_err(&err)?;
            self.dense.insert(
                slot,
                Seen {
                    counters,
                    changed_ms: self.now_ms,
                },
            );
        }
        Ok(())
    }

    /// Reads the dense slots whose touched byte is set; clears the bytes of slots idle for
    /// `idle_ms` so they cost nothing until their next packet. Returns the active slots.
    fn poll_dense(
        &mut self,
        maps: &mut KernelMaps,
        accounting: &mut impl CounterSink,
        now_ms: u64,
        idle_ms: u64,
    ) -> Result<u64, XdpError> {
        let err = map_err(map_names::HOSTS_DENSE_V4);
        let mut active = 0;
        for slot in maps.hosts.touched_slots() {
            let Some((key, mut sum)) = maps.hosts.dense_slot_sum(slot).map_err(&err)? else {
                continue;
            };
            let seen = self.dense.entry(slot).or_insert(Seen {
                counters: XdpHostCounters::default(),
                changed_ms: now_ms,
            });
            let mut delta = delta(&seen.counters, &sum);
            if !has_packets(&delta)
                && now_ms.saturating_sub(seen.changed_ms) >= idle_ms
                && maps.hosts.clear_touched(slot)
            {
                // Idle: no reads until its next packet. One more read catches a packet counted
                // just before the clear.
                if let Some((_, again)) = maps.hosts.dense_slot_sum(slot).map_err(&err)? {
                    delta = super::counters::delta(&seen.counters, &again);
                    sum = again;
                }
            }
            if has_packets(&delta) {
                accounting.add_host_counters(from16(key.addr), direction_of(&key), &delta);
                seen.changed_ms = now_ms;
                active += 1;
            } else if now_ms.saturating_sub(seen.changed_ms) < idle_ms {
                active += 1;
            }
            seen.counters = sum;
        }
        Ok(active)
    }
}

fn direction_of(key: &HostKey) -> Direction {
    if key.direction == direction::OUTGOING {
        Direction::Outgoing
    } else {
        Direction::Incoming
    }
}

/// True when `delta` holds packets: counted ones, or whitelisted ones (a host only a
/// whitelisted source talks to still shows them, and stays in the kernel table meanwhile).
fn has_packets(delta: &XdpHostCounters) -> bool {
    delta.counted.packets > 0 || delta.whitelisted.packets > 0
}

/// `now - before`, field by field; when a packet counter went backwards (entry re-created)
/// everything counts from zero.
fn delta(before: &XdpHostCounters, now: &XdpHostCounters) -> XdpHostCounters {
    if now.counted.packets < before.counted.packets
        || now.whitelisted.packets < before.whitelisted.packets
    {
        return *now;
    }
    let d = |a: u64, b: u64| b.wrapping_sub(a);
    XdpHostCounters {
        counted: counted_delta(&before.counted, &now.counted),
        whitelisted: fnm_common::WhitelistedCounters {
            packets: d(before.whitelisted.packets, now.whitelisted.packets),
            bytes: d(before.whitelisted.bytes, now.whitelisted.bytes),
        },
    }
}

/// `now - before` of the counters the rates come from, field by field.
fn counted_delta(before: &HostCounters, now: &HostCounters) -> HostCounters {
    let d = |a: u64, b: u64| b.wrapping_sub(a);
    let mut out = HostCounters {
        packets: d(before.packets, now.packets),
        bytes: d(before.bytes, now.bytes),
        flows: d(before.flows, now.flows),
        tcp_syn_packets: d(before.tcp_syn_packets, now.tcp_syn_packets),
        fragments: d(before.fragments, now.fragments),
        ..Default::default()
    };
    for i in 0..proto::COUNT {
        out.proto_packets[i] = d(before.proto_packets[i], now.proto_packets[i]);
        out.proto_bytes[i] = d(before.proto_bytes[i], now.proto_bytes[i]);
    }
    out
}
