//! The detection matrix shared by `detection_matrix_*.rs`: cases (direction × rate kind ×
//! address family × traffic source), the traffic that proves each one, the agent
//! configuration that gives every case host its own threshold, and the verdicts, read from the
//! HTTP API only (`GET /api/v1/attacks`, `GET /api/v1/hosts`), so the matrix outlives rewrites
//! of the engine behind it.
//!
//! Every case gets two local hosts, each in a `[[hostgroup]]` of its own (a /32 or /128) that
//! sets only the case's rate kind, at threshold `T`, in both directions:
//!
//! - the *under* host gets traffic that feeds the kind at 0.8 × T for 5 s (the 2 s rate
//!   window fills, then 3 s steady), beside *decoy* traffic at 2 × T that feeds other counters
//!   without feeding the kind (for `udp_pps`: TCP, ICMP and ESP on new flows; for
//!   `tcp_syn_pps`: bare ACKs on new flows; for `fragments_pps`: whole datagrams; for
//!   `flows_per_second`: many packets on four flows). No attack may open, in either direction;
//! - then the *flood* host gets the same traffic at 2.5 × T for 2.5 s: exactly one attack must
//!   open, in the case's direction, whose crossing (`threshold.rate`) is the kind and whose
//!   limit is `T`.
//!
//! A kind computed from any other single counter fails at least one of its cases: either that
//! counter is below `T` in the flood (the `pps` and `bytes_per_second` floods mix UDP, TCP
//! ACKs, ICMP and ESP on single flows, so no protocol class reaches 0.63 × T; the single-class
//! floods carry nothing of the other classes), or the decoy lifts it to at least 1.47 × T on
//! the under host. Counters of the other unit (bytes for a packet rate, packets for a byte
//! rate) are off by a factor of 64 or more. Demonstrated by reading `fragments_pps` from the
//! packet counter, then from the SYN counter, and `tcp_syn_pps` from the TCP packet counter:
//! exactly the cases of that kind fail, on every source.
//!
//! Rates are in generated packets per second: the flood sends 2.5 × `unit` packets per second
//! of its shape (1000-byte packets for byte kinds, so `T` is `unit` × 1000 bytes/s), and each
//! generated packet stands for `weight` packets (an sFlow sample's sampling rate).
//!
//! For every host, the counter of its case's kind from `GET /api/v1/hosts` must equal what was
//! sent (× `weight`), so an "under" verdict is never vacuous, and the scheduler must have kept
//! its pace (the under host really ran at 0.8 × T).
#![allow(dead_code)]

use super::{
    agent::AgentProcess,
    netns::NetnsPair,
    pktgen::{Expect, FrameSink, Shape, Sink, Stream, StreamReport, StreamSpec, L4},
};
use serde_json::Value;
use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

/// A threshold kind (a rate of `[detection.incoming]` / `[detection.outgoing]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Pps,
    BytesPerSecond,
    FlowsPerSecond,
    TcpPps,
    TcpBytesPerSecond,
    UdpPps,
    UdpBytesPerSecond,
    IcmpPps,
    IcmpBytesPerSecond,
    TcpSynPps,
    FragmentsPps,
    /// Not in [`Kind::ALL`]: the XDP data plane cannot count it (`detection_conversations.rs`).
    ConversationsPerSecond,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 11] = [
        Kind::Pps,
        Kind::BytesPerSecond,
        Kind::FlowsPerSecond,
        Kind::TcpPps,
        Kind::TcpBytesPerSecond,
        Kind::UdpPps,
        Kind::UdpBytesPerSecond,
        Kind::IcmpPps,
        Kind::IcmpBytesPerSecond,
        Kind::TcpSynPps,
        Kind::FragmentsPps,
    ];

    /// Its name in the config and in `threshold.rate`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pps => "pps",
            Kind::BytesPerSecond => "bytes_per_second",
            Kind::FlowsPerSecond => "flows_per_second",
            Kind::TcpPps => "tcp_pps",
            Kind::TcpBytesPerSecond => "tcp_bytes_per_second",
            Kind::UdpPps => "udp_pps",
            Kind::UdpBytesPerSecond => "udp_bytes_per_second",
            Kind::IcmpPps => "icmp_pps",
            Kind::IcmpBytesPerSecond => "icmp_bytes_per_second",
            Kind::TcpSynPps => "tcp_syn_pps",
            Kind::FragmentsPps => "fragments_pps",
            Kind::ConversationsPerSecond => "conversations_per_second",
        }
    }

    /// True for the bytes/s kinds.
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            Kind::BytesPerSecond
                | Kind::TcpBytesPerSecond
                | Kind::UdpBytesPerSecond
                | Kind::IcmpBytesPerSecond
        )
    }

    /// The traffic that feeds this kind (flood and under hosts).
    pub fn shape(self) -> Shape {
        const MIX: &[L4] = &[L4::Udp, L4::TcpAck, L4::Icmp, L4::Esp];
        let (mix, ip_len, distinct): (&'static [L4], u16, bool) = match self {
            Kind::Pps => (MIX, SMALL, false),
            Kind::BytesPerSecond => (MIX, LARGE, false),
            Kind::FlowsPerSecond => (MIX, SMALL, true),
            Kind::TcpPps => (&[L4::TcpAck], SMALL, false),
            Kind::TcpBytesPerSecond => (&[L4::TcpAck], LARGE, false),
            Kind::UdpPps => (&[L4::Udp], SMALL, false),
            Kind::UdpBytesPerSecond => (&[L4::Udp], LARGE, false),
            Kind::IcmpPps => (&[L4::Icmp], SMALL, false),
            Kind::IcmpBytesPerSecond => (&[L4::Icmp], LARGE, false),
            Kind::TcpSynPps => (&[L4::TcpSyn], SMALL, true),
            Kind::FragmentsPps => (&[L4::UdpFragment], 200, false),
            Kind::ConversationsPerSecond => (&[L4::Udp, L4::TcpAck], SMALL, true),
        };
        Shape {
            mix,
            ip_len,
            distinct,
        }
    }

    /// Traffic beside the under host's 0.8 × T that feeds the other counters but not this
    /// kind; `None` when every counter of the kind's unit is a part of it anyway (`pps`,
    /// `bytes_per_second`).
    pub fn decoy(self) -> Option<Shape> {
        let (mix, ip_len, distinct): (&'static [L4], u16, bool) = match self {
            Kind::Pps | Kind::BytesPerSecond => return None,
            Kind::FlowsPerSecond => (&[L4::Udp, L4::TcpAck, L4::Icmp, L4::Esp], SMALL, false),
            Kind::TcpPps => (&[L4::Udp, L4::Icmp, L4::Esp], SMALL, true),
            Kind::TcpBytesPerSecond => (&[L4::Udp, L4::Icmp, L4::Esp], LARGE, true),
            Kind::UdpPps => (&[L4::TcpAck, L4::Icmp, L4::Esp], SMALL, true),
            Kind::UdpBytesPerSecond => (&[L4::TcpAck, L4::Icmp, L4::Esp], LARGE, true),
            Kind::IcmpPps => (&[L4::TcpAck, L4::Udp, L4::Esp], SMALL, true),
            Kind::IcmpBytesPerSecond => (&[L4::TcpAck, L4::Udp, L4::Esp], LARGE, true),
            Kind::TcpSynPps => (&[L4::TcpAck, L4::Udp, L4::Icmp], SMALL, true),
            Kind::FragmentsPps => (&[L4::Udp, L4::TcpAck, L4::Icmp], SMALL, true),
            // New 5-tuples (flows_per_second at 2 × T) that are no TCP or UDP conversation.
            Kind::ConversationsPerSecond => (&[L4::Icmp, L4::Esp], SMALL, true),
        };
        Some(Shape {
            mix,
            ip_len,
            distinct,
        })
    }

    /// The cumulative counter of this kind in a direction of `GET /api/v1/hosts/{ip}`.
    pub fn counted(self, view: &Value) -> Option<u64> {
        let v = match self {
            Kind::Pps => &view["packets"],
            Kind::BytesPerSecond => &view["bytes"],
            Kind::FlowsPerSecond => &view["flows"],
            Kind::TcpPps => &view["tcp"]["packets"],
            Kind::TcpBytesPerSecond => &view["tcp"]["bytes"],
            Kind::UdpPps => &view["udp"]["packets"],
            Kind::UdpBytesPerSecond => &view["udp"]["bytes"],
            Kind::IcmpPps => &view["icmp"]["packets"],
            Kind::IcmpBytesPerSecond => &view["icmp"]["bytes"],
            Kind::TcpSynPps => &view["tcp_syn_packets"],
            Kind::FragmentsPps => &view["fragments"],
            Kind::ConversationsPerSecond => &view["conversations"],
        };
        v.as_u64()
    }

    /// The same counter from what was sent.
    pub fn expected(self, e: &Expect) -> u64 {
        const TCP: usize = 0;
        const UDP: usize = 1;
        const ICMP: usize = 2;
        match self {
            Kind::Pps => e.packets,
            Kind::BytesPerSecond => e.bytes,
            Kind::FlowsPerSecond => e.tuples.len() as u64,
            Kind::TcpPps => e.class_packets[TCP],
            Kind::TcpBytesPerSecond => e.class_bytes[TCP],
            Kind::UdpPps => e.class_packets[UDP],
            Kind::UdpBytesPerSecond => e.class_bytes[UDP],
            Kind::IcmpPps => e.class_packets[ICMP],
            Kind::IcmpBytesPerSecond => e.class_bytes[ICMP],
            Kind::TcpSynPps => e.syn,
            Kind::FragmentsPps => e.fragments,
            Kind::ConversationsPerSecond => {
                e.tuples.iter().filter(|t| t.4 == 6 || t.4 == 17).count() as u64
            }
        }
    }
}

/// IP bytes of the packets of packet-rate kinds.
const SMALL: u16 = 64;
/// IP bytes of the packets of byte-rate kinds.
pub const LARGE: u16 = 1000;

/// Flood rate and under rate, as multiples of the threshold.
pub const FLOOD: f64 = 2.5;
pub const UNDER: f64 = 0.8;
/// Decoy rate beside the under traffic, as a multiple of the threshold.
pub const DECOY: f64 = 2.0;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `IPv4` / `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Incoming (towards the local host) or outgoing (from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Incoming,
    Outgoing,
}

impl Dir {
    /// Both.
    pub const ALL: [Dir; 2] = [Dir::Incoming, Dir::Outgoing];

    /// `incoming` / `outgoing`, as the API and config spell them.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Incoming => "incoming",
            Dir::Outgoing => "outgoing",
        }
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The threshold kind.
    pub kind: Kind,
    /// Direction.
    pub dir: Dir,
    /// Address family.
    pub family: Family,
    /// Index of the sink (traffic source) that carries it.
    pub sink: usize,
    /// Name of that source, for the report.
    pub via: &'static str,
}

impl Case {
    /// Every (kind, direction, family) of `kinds` and `families`, through one sink.
    pub fn all(kinds: &[Kind], families: &[Family], sink: usize, via: &'static str) -> Vec<Case> {
        let mut cases = Vec::new();
        for &dir in &Dir::ALL {
            for &family in families {
                for &kind in kinds {
                    cases.push(Case {
                        kind,
                        dir,
                        family,
                        sink,
                        via,
                    });
                }
            }
        }
        cases
    }

    fn label(&self) -> String {
        format!(
            "{:<8} {:<21} {} via {}",
            self.dir.name(),
            self.kind.name(),
            self.family.name(),
            self.via
        )
    }
}

/// A case host: flood or under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Flood,
    Under,
}

/// One local host of the plan.
#[derive(Debug, Clone)]
pub struct HostPlan {
    /// Its case.
    pub case: Case,
    /// Flood or under.
    pub role: Role,
    /// Its address.
    pub ip: IpAddr,
    /// Its threshold (agent units).
    pub threshold: f64,
    /// Index of its main stream in [`Plan::streams`].
    pub main_stream: usize,
}

/// Cases laid out on hosts and streams, for one agent.
pub struct Plan {
    /// The hosts, two per case (flood first).
    pub hosts: Vec<HostPlan>,
    /// The streams for the scheduler.
    pub streams: Vec<Stream>,
    /// Threshold in generated packets per second.
    pub unit: f64,
    /// Packets each generated packet stands for.
    pub weight: u32,
    net: u8,
}

/// The agents' rate window (the default is 1 s). Today's accounting divides a window's
/// counts by its nominal length, so a poll that comes late (the poll or capture thread held up
/// on a loaded machine) overstates that window's rates: over 1 s with the tests' 200 ms polls,
/// one poll a slot late lifts a steady 0.8 × T to exactly T, which was seen on an overloaded
/// box. Over 2 s, a window can hold 2.5 s of traffic before 0.8 × T reaches T: polls 0.4 s
/// late, or 0.3 s late plus a [`MAX_LAG`](super::pktgen::MAX_LAG) catch-up of the sender.
pub const RATE_WINDOW: Duration = Duration::from_secs(2);
/// The under hosts' traffic runs first, alone: the rate window fills, then three seconds at
/// a steady rate.
pub const UNDER_PHASE: Duration = Duration::from_secs(5);
/// Then the floods, long enough to be detected within a few polls on a loaded machine.
///
/// The phases are apart because opening dozens of attacks at once holds the agent's poll
/// thread up (each opening rewrites the attack history), and the late poll that follows
/// overstates every rate of its window (see [`RATE_WINDOW`]): steady traffic at 0.8 × T next
/// to 44 opening attacks was seen at 1.26 × T.
pub const FLOOD_PHASE: Duration = Duration::from_millis(2500);
/// Longest wait after the traffic for every flood's attack to be listed.
pub const FLOOD_WAIT: Duration = Duration::from_secs(30);

impl Plan {
    /// Lays `cases` out on hosts of `10.<net>.16.0/20` and `fd<net>:1::/48`; thresholds are
    /// `unit` generated packets per second (× 1000 bytes for byte kinds) × `weight`.
    pub fn new(net: u8, cases: &[Case], unit: f64, weight: u32) -> Self {
        let mut hosts = Vec::new();
        let mut streams = Vec::new();
        for case in cases {
            for role in [Role::Flood, Role::Under] {
                let h = hosts.len();
                let ip = victim(net, h, case.family);
                let unit_bytes = if case.kind.is_bytes() {
                    f64::from(LARGE)
                } else {
                    1.0
                };
                let threshold = unit * unit_bytes * f64::from(weight);
                let spec = |shape, block| StreamSpec {
                    shape,
                    local: ip,
                    outgoing: case.dir == Dir::Outgoing,
                    remote_block: block,
                };
                let (factor, from, until) = match role {
                    Role::Under => (UNDER, Duration::ZERO, UNDER_PHASE),
                    Role::Flood => (FLOOD, UNDER_PHASE, UNDER_PHASE + FLOOD_PHASE),
                };
                let main_stream = streams.len();
                streams.push(Stream {
                    host: h,
                    spec: spec(case.kind.shape(), 2 * h as u32),
                    rate: factor * unit,
                    sink: case.sink,
                    from,
                    until,
                });
                if role == Role::Under {
                    if let Some(decoy) = case.kind.decoy() {
                        streams.push(Stream {
                            host: h,
                            spec: spec(decoy, 2 * h as u32 + 1),
                            rate: DECOY * unit,
                            sink: case.sink,
                            from,
                            until,
                        });
                    }
                }
                hosts.push(HostPlan {
                    case: *case,
                    role,
                    ip,
                    threshold,
                    main_stream,
                });
            }
        }
        Self {
            hosts,
            streams,
            unit,
            weight,
            net,
        }
    }

    /// The top-level keys of the agent config: the networks and [`RATE_WINDOW`].
    pub fn top_level_toml(&self) -> String {
        format!(
            "networks = [\"10.{0}.16.0/20\", \"fd{0:02x}:1::/48\"]\nrate_window = \"{1}ms\"\n",
            self.net,
            RATE_WINDOW.as_millis()
        )
    }

    /// One `[[hostgroup]]` per host, setting only its case's kind, in both directions.
    pub fn hostgroups_toml(&self) -> String {
        let mut out = String::new();
        for (h, host) in self.hosts.iter().enumerate() {
            let prefix = match host.ip {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            let name = host.case.kind.name();
            let _ = write!(
                out,
                "[[hostgroup]]\nname = \"m{h}\"\nnetworks = [\"{}/{prefix}\"]\n\
                 [hostgroup.incoming]\n{name} = {t}\n[hostgroup.outgoing]\n{name} = {t}\n",
                host.ip,
                t = host.threshold
            );
        }
        out
    }

    /// The attack list once every flood host has an attack (or [`FLOOD_WAIT`] has passed),
    /// and two more polls.
    ///
    /// Waiting matters: opening dozens of attacks at once holds today's poll thread up for
    /// seconds (each opening rewrites the whole attack history; about 2.8 s for 104 attacks
    /// in a debug build), and the last floods are only checked once it is free again.
    fn wait_for_floods(&self, agent: &AgentProcess) -> Vec<Value> {
        let start = Instant::now();
        let floods: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.role == Role::Flood)
            .map(|h| h.ip.to_string())
            .collect();
        loop {
            let attacks = agent.get("/api/v1/attacks").expect("GET /api/v1/attacks");
            let attacks = attacks.as_array().expect("attack list").clone();
            let open = floods
                .iter()
                .filter(|ip| attacks.iter().any(|a| a["host"].as_str() == Some(ip)))
                .count();
            if open == floods.len() || start.elapsed() > FLOOD_WAIT {
                println!(
                    "{open} of {} flood attacks open {:.1?} after the traffic",
                    floods.len(),
                    start.elapsed()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        agent.settle();
        let attacks = agent.get("/api/v1/attacks").expect("GET /api/v1/attacks");
        attacks.as_array().expect("attack list").clone()
    }

    /// Checks every host against the agent's API after the traffic; returns one line per
    /// host and the failures.
    pub fn verdicts(
        &self,
        agent: &AgentProcess,
        reports: &[StreamReport],
        expected: &HashMap<usize, Expect>,
    ) -> (Vec<String>, Vec<String>) {
        let attacks = self.wait_for_floods(agent);
        let views = agent
            .get("/api/v1/hosts?direction=incoming&limit=10000")
            .expect("GET /api/v1/hosts");
        let views: HashMap<String, Value> = views
            .as_array()
            .expect("host list")
            .iter()
            .map(|v| (v["ip"].as_str().unwrap_or_default().to_owned(), v.clone()))
            .collect();
        let mut lines = Vec::new();
        let mut failures = Vec::new();
        let mut known = std::collections::HashSet::new();
        for (h, host) in self.hosts.iter().enumerate() {
            let ip = host.ip.to_string();
            known.insert(ip.clone());
            let case = &host.case;
            let kind = case.kind;
            let mine: Vec<&Value> = attacks
                .iter()
                .filter(|a| a["host"].as_str() == Some(ip.as_str()))
                .collect();
            let mut problems = Vec::new();

            // What the agent counted for the case's kind equals what was sent.
            let sent = expected.get(&h).map(|e| kind.expected(e)).unwrap_or(0);
            let view = views.get(&ip).map(|v| &v[case.dir.name()]);
            let counted = view.and_then(|v| kind.counted(v));
            match counted {
                Some(c) if c == sent && sent > 0 => {}
                other => problems.push(format!(
                    "counted {} {} (sent {sent})",
                    kind.name(),
                    other.map_or("nothing".into(), |c| c.to_string())
                )),
            }
            // The sender kept its pace, so the rate really was 2.5x / 0.8x the threshold.
            let stream = &self.streams[host.main_stream];
            let achieved = reports[host.main_stream].sent as f64 / stream.length().as_secs_f64();
            if achieved < 0.9 * stream.rate {
                problems.push(format!(
                    "sender fell behind: {achieved:.0} of {:.0} packets/s, {} skipped",
                    stream.rate, reports[host.main_stream].skipped
                ));
            }

            let outcome = match (host.role, mine.as_slice()) {
                (Role::Flood, [a]) => {
                    let crossing = &a["threshold"];
                    let rate = crossing["rate"].as_str().unwrap_or("?");
                    let limit = crossing["threshold"].as_f64().unwrap_or(f64::NAN);
                    let value = crossing["value"].as_f64().unwrap_or(f64::NAN);
                    if a["direction"].as_str() != Some(case.dir.name()) {
                        problems.push(format!("attack direction {}", a["direction"]));
                    }
                    if rate != kind.name() {
                        problems.push(format!("attack crossed {rate}, not {}", kind.name()));
                    }
                    if (limit - host.threshold).abs() > 0.5 {
                        problems.push(format!("threshold {limit}, not {}", host.threshold));
                    }
                    format!(
                        "attack {} {rate} {value:.0} > {limit:.0} ({})",
                        a["direction"].as_str().unwrap_or("?"),
                        a["fingerprint"]["attack_type"].as_str().unwrap_or("?")
                    )
                }
                (Role::Flood, []) => {
                    problems.push("no attack".into());
                    "no attack".into()
                }
                (Role::Under, []) => "no attack".into(),
                (_, found) => {
                    let list: Vec<String> = found
                        .iter()
                        .map(|a| {
                            format!(
                                "{} {} {:.0} > {:.0}",
                                a["direction"].as_str().unwrap_or("?"),
                                a["threshold"]["rate"].as_str().unwrap_or("?"),
                                a["threshold"]["value"].as_f64().unwrap_or(f64::NAN),
                                a["threshold"]["threshold"].as_f64().unwrap_or(f64::NAN),
                            )
                        })
                        .collect();
                    let text = format!("{} attack(s): {}", found.len(), list.join("; "));
                    problems.push(text.clone());
                    text
                }
            };
            let role = match host.role {
                Role::Flood => "flood 2.5x",
                Role::Under => "under 0.8x",
            };
            let line = format!(
                "{} {} {role} {:<24} {outcome}; counted {}",
                if problems.is_empty() { "ok  " } else { "FAIL" },
                case.label(),
                ip,
                counted.map_or("-".into(), |c| c.to_string()),
            );
            if !problems.is_empty() {
                failures.push(format!(
                    "{} {role} {ip}: {}",
                    case.label(),
                    problems.join("; ")
                ));
            }
            lines.push(line);
        }
        for a in &attacks {
            let host = a["host"].as_str().unwrap_or_default();
            if !known.contains(host) {
                failures.push(format!("attack on a host of no case: {a}"));
            }
        }
        (lines, failures)
    }
}

/// Host `h` of the plan: `10.<net>.(16 + h / 200).(10 + h % 200)` or `fd<net>:1::<h>:1`.
pub fn victim(net: u8, h: usize, family: Family) -> IpAddr {
    assert!(h < 3000, "too many hosts for one /20");
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(
            10,
            net,
            16 + (h / 200) as u8,
            10 + (h % 200) as u8,
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(
            0xfd00 | u16::from(net),
            1,
            0,
            0,
            0,
            0,
            h as u16,
            1,
        )),
    }
}

/// Prints the verdict lines and fails with the failures, if any.
pub fn conclude(title: &str, lines: &[String], failures: &[String], took: Duration) {
    println!("{title}: {} checks in {took:.1?}", lines.len());
    for l in lines {
        println!("  {l}");
    }
    assert!(
        failures.is_empty(),
        "{title}: {} of {} matrix checks failed:\n  {}",
        failures.len(),
        lines.len(),
        failures.join("\n  ")
    );
}

/// Runs the plan's streams as frames out of `dev` in namespace `ns`.
pub fn run_frames(ns: &str, dev: &str, plan: &Plan) -> (Vec<StreamReport>, HashMap<usize, Expect>) {
    let streams = plan.streams.clone();
    let dev = dev.to_owned();
    NetnsPair::in_ns(ns, move || {
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(FrameSink::open(&dev))];
        super::pktgen::run(&streams, &mut sinks)
    })
}

/// Runs the plan's streams through the sinks `make_sinks` builds, on a thread inside
/// namespace `ns` (flow exporters sending to the agent's collectors on 127.0.0.1).
pub fn run_sinks(
    ns: &str,
    plan: &Plan,
    make_sinks: impl FnOnce() -> Vec<Box<dyn Sink>> + Send + 'static,
) -> (Vec<StreamReport>, HashMap<usize, Expect>) {
    let streams = plan.streams.clone();
    NetnsPair::in_ns(ns, move || {
        let mut sinks = make_sinks();
        super::pktgen::run(&streams, &mut sinks)
    })
}
