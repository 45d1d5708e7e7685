//! The engine's state as the views see it: an immutable [`Snapshot`] published after every
//! tick. The API and `/metrics` load the current one (an `arc-swap` pointer load: no lock,
//! never waiting for the engine) and read it as long as they like.

use crate::{
    accounting::{Direction, Rates, TableStats},
    detection::attack::{Attack, AttackType},
    traffic::Source,
    views::HostView,
};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::{net::IpAddr, sync::Arc};

/// Global counters of the XDP program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct XdpStatus {
    /// Frames seen.
    pub frames: u64,
    /// Frames that were not IP.
    pub non_ip: u64,
    /// Truncated or malformed frames.
    pub malformed: u64,
    /// Packets dropped by source entries.
    pub dropped_src_packets: u64,
    /// Bytes dropped by source entries.
    pub dropped_src_bytes: u64,
    /// Packets dropped by destination entries.
    pub dropped_dst_packets: u64,
    /// Bytes dropped by destination entries.
    pub dropped_dst_bytes: u64,
    /// Packets dropped by fingerprint rules.
    pub dropped_rule_packets: u64,
    /// Bytes dropped by fingerprint rules.
    pub dropped_rule_bytes: u64,
    /// Packets a drop entry matched but the whitelist let through.
    pub whitelist_passed: u64,
    /// Packets whose remote side is a whitelisted source (`[detection] whitelist_sources`),
    /// counted apart from every host's rates.
    pub source_whitelisted_packets: u64,
    /// IP bytes of those packets.
    pub source_whitelisted_bytes: u64,
    /// Frames counted as a packet found inside a tunnel (GRE, ERSPAN, L2TPv2, IP-in-IP).
    pub decapsulated: u64,
    /// Frames carrying a tunnel whose payload was not a readable IP packet (the packet
    /// around it was counted).
    pub tunnel_outer_counted: u64,
    /// New hosts that found the kernel host table full.
    pub host_table_full: u64,
    /// Packet samples lost to a full ring buffer.
    pub samples_lost: u64,
    /// Host-directions with counters in the kernel, less those the polls found idle (a host
    /// without new packets is checked once in eight polls).
    pub kernel_hosts: u64,
    /// Counter slots the polls have read in the kernel's memory so far: those with packets
    /// since the poll before, and each other one once every eight polls.
    pub slot_reads: u64,
}

/// Totals of one source, direction and protocol class.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TotalRow {
    /// Who observed it.
    pub source: Source,
    /// 0 incoming, 1 outgoing, 2 neither side local.
    pub direction: usize,
    /// Protocol class (tcp, udp, icmp, other).
    pub class: usize,
    /// Packets.
    pub packets: u64,
    /// IP bytes.
    pub bytes: u64,
}

/// An attack in progress with its live rates.
#[derive(Debug, Clone, Serialize)]
pub struct OngoingAttack {
    /// Attack id.
    pub id: String,
    /// Local host.
    pub host: IpAddr,
    /// Direction.
    pub direction: Direction,
    /// Its type.
    pub attack_type: AttackType,
    /// Highest rates so far.
    pub peak: Rates,
    /// Rates over the last window.
    pub current: Rates,
}

/// The engine's state after one tick.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Engine clock at the tick, ms since start.
    pub uptime_ms: u64,
    /// Ticks so far.
    pub ticks: u64,
    /// Local hosts known to the accounting.
    pub hosts_known: usize,
    /// Most hosts the accounting keeps.
    pub hosts_capacity: usize,
    /// Evictions and refused newcomers of the accounting's host table.
    pub table: TableStats,
    /// Records from whitelisted sources (counted in totals only).
    pub ignored_records: u64,
    /// Traffic totals.
    pub totals: Vec<TotalRow>,
    /// The top hosts by packets/s, per direction (`prometheus.top_hosts` each).
    pub top_by_pps: [Vec<HostView>; 2],
    /// The XDP program's counters as last polled.
    pub xdp: Option<XdpStatus>,
    /// Attacks in progress.
    pub ongoing: Vec<OngoingAttack>,
    /// Every attack in the book, newest first.
    pub attacks: Arc<Vec<Attack>>,
    /// Hosts being sampled (the XDP poller mirrors this into the kernel).
    pub watched: Arc<Vec<(IpAddr, Direction)>>,
    /// Attacks opened since start, by direction index and [`AttackType::index`].
    pub attacks_started: [[u64; AttackType::ALL.len()]; 2],
    /// Traffic per configured network and per hostgroup (bounded).
    pub networks: Arc<crate::network_views::NetworksView>,
    /// Attack pcap hand-overs dropped (writer queue full) or failed to write.
    pub attack_pcap_dropped: u64,
    /// The conversation budget's counters (`None` while no threshold uses conversations).
    pub conversations: Option<crate::accounting::ConversationStats>,
}

impl Snapshot {
    /// An ongoing attack's live peak, if it is ongoing.
    pub fn live_peak(&self, id: &str) -> Option<Rates> {
        self.ongoing.iter().find(|o| o.id == id).map(|o| o.peak)
    }
}

/// Where the engine publishes and the views read.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// A new publication point holding an empty snapshot.
pub fn shared() -> SharedSnapshot {
    Arc::new(ArcSwap::from_pointee(Snapshot::default()))
}
