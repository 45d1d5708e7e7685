//! Flow exporters for the detection matrix, as [`Sink`]s of the scheduler in `pktgen.rs`:
//!
//! - [`SflowSink`]: every packet it is given is one flow sample (the first 128 bytes of its
//!   frame) of an sFlow v5 agent sampling 1 in `rate`, so it stands for `rate` packets;
//! - [`NetflowSink`]: a flow cache that aggregates the packets per 5-tuple (and fragment flag)
//!   and exports one record per flow every [`EXPORT_INTERVAL`] (an active timeout), each
//!   spanning that interval, as NetFlow v5, NetFlow v9 or IPFIX datagrams. v9 and IPFIX
//!   datagrams carry their templates every time, so no datagram depends on another.
//!
//! Datagrams go to a collector on 127.0.0.1 of the calling thread's namespace.
#![allow(dead_code)]

use super::{
    flood::{sflow_datagram, SflowFlowSample, SAMPLES_PER_DATAGRAM, SFLOW_HEADER_BYTES},
    pktgen::{frame, Expect, Pkt, Sink},
};
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// sFlow v5 flow samples of the packets pushed, 1 in `rate`.
pub struct SflowSink {
    socket: UdpSocket,
    to: SocketAddr,
    rate: u32,
    boot: Instant,
    datagram_seq: u32,
    sample_seq: u32,
    /// (frame, host, packet) waiting for a datagram.
    pending: Vec<(Vec<u8>, usize, Pkt)>,
    expect: HashMap<usize, Expect>,
}

impl SflowSink {
    /// An exporter sending to `to` (127.0.0.1) with sampling rate `rate`.
    pub fn new(to: SocketAddr, rate: u32) -> Self {
        assert!(to.ip().is_loopback(), "flow exports go to 127.0.0.1 only");
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").expect("bind sFlow exporter"),
            to,
            rate,
            boot: Instant::now(),
            datagram_seq: 0,
            sample_seq: 0,
            pending: Vec::new(),
            expect: HashMap::new(),
        }
    }

    fn send_pending(&mut self) {
        while !self.pending.is_empty() {
            let take = self.pending.len().min(SAMPLES_PER_DATAGRAM);
            let batch: Vec<_> = self.pending.drain(..take).collect();
            let samples: Vec<SflowFlowSample<'_>> = batch
                .iter()
                .map(|(f, _, _)| {
                    self.sample_seq = self.sample_seq.wrapping_add(1);
                    SflowFlowSample {
                        sequence: self.sample_seq,
                        source_id_index: 3,
                        sampling_rate: self.rate,
                        sample_pool: self.sample_seq.wrapping_mul(self.rate),
                        input_ifindex: 3,
                        output_ifindex: 4,
                        frame_length: f.len() as u32 + 4,
                        stripped: 4,
                        header: &f[..f.len().min(SFLOW_HEADER_BYTES)],
                    }
                })
                .collect();
            self.datagram_seq = self.datagram_seq.wrapping_add(1);
            let d = sflow_datagram(
                Ipv4Addr::LOCALHOST,
                self.datagram_seq,
                self.boot.elapsed().as_millis() as u32,
                &samples,
            );
            self.socket
                .send_to(&d, self.to)
                .expect("send sFlow datagram");
            for (_, host, p) in &batch {
                self.expect
                    .entry(*host)
                    .or_default()
                    .add(p, u64::from(self.rate));
            }
        }
    }
}

impl Sink for SflowSink {
    fn push(&mut self, host: usize, p: &Pkt) {
        self.pending.push((frame(p), host, *p));
        if self.pending.len() >= SAMPLES_PER_DATAGRAM {
            self.send_pending();
        }
    }

    fn flush(&mut self, _now: Instant) {
        self.send_pending();
    }

    fn finish(&mut self) {
        self.send_pending();
    }

    fn expected(&self) -> &HashMap<usize, Expect> {
        &self.expect
    }
}

/// NetFlow / IPFIX version a [`NetflowSink`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFormat {
    /// NetFlow v5 (IPv4 only, no fragment information).
    V5,
    /// NetFlow v9 (RFC 3954), templates 300 (IPv4) and 301 (IPv6), source id 9.
    V9,
    /// IPFIX (RFC 7011), templates 400 (IPv4) and 401 (IPv6) with fragmentFlags, domain 10.
    Ipfix,
}

/// How often the flow cache exports (and how long each record spans).
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(100);

/// Key of the flow cache.
type FlowKey = (IpAddr, IpAddr, u16, u16, u8, bool);

/// A flow of the cache: packets, bytes and the OR of TCP flags since the last export.
#[derive(Debug, Clone, Copy, Default)]
struct FlowAgg {
    packets: u64,
    bytes: u64,
    flags: u8,
}

/// One exported record.
#[derive(Debug, Clone, Copy)]
struct FlowOut {
    key: FlowKey,
    agg: FlowAgg,
    /// Start and end, ms since the exporter booted.
    first_ms: u32,
    last_ms: u32,
}

/// A flow cache exporting NetFlow v5, v9 or IPFIX.
pub struct NetflowSink {
    format: FlowFormat,
    socket: UdpSocket,
    to: SocketAddr,
    boot: Instant,
    /// Uptime the exporter claims at `boot` (so no timestamp is near 0).
    uptime_base_ms: u32,
    /// Unix time in ms at `boot`.
    unix_base_ms: u64,
    interval_start: Instant,
    cache: HashMap<FlowKey, FlowAgg>,
    sequence: u32,
    expect: HashMap<usize, Expect>,
}

impl NetflowSink {
    /// An exporter of `format` sending to `to` (127.0.0.1).
    pub fn new(format: FlowFormat, to: SocketAddr) -> Self {
        assert!(to.ip().is_loopback(), "flow exports go to 127.0.0.1 only");
        let now = Instant::now();
        Self {
            format,
            socket: UdpSocket::bind("127.0.0.1:0").expect("bind NetFlow exporter"),
            to,
            boot: now,
            uptime_base_ms: 3_600_000,
            unix_base_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_millis() as u64,
            interval_start: now,
            cache: HashMap::new(),
            sequence: 0,
            expect: HashMap::new(),
        }
    }

    fn uptime_ms(&self, at: Instant) -> u32 {
        self.uptime_base_ms + (at - self.boot).as_millis() as u32
    }

    fn export(&mut self, now: Instant) {
        let first_ms = self.uptime_ms(self.interval_start);
        let last_ms = self.uptime_ms(now).max(first_ms);
        self.interval_start = now;
        let mut flows: Vec<FlowOut> = self
            .cache
            .drain()
            .map(|(key, agg)| FlowOut {
                key,
                agg,
                first_ms,
                last_ms,
            })
            .collect();
        // IPv4 and IPv6 records go in separate datagrams (v5 has no IPv6 at all).
        flows.sort_by_key(|f| f.key.0.is_ipv6());
        let (v4, v6): (Vec<FlowOut>, Vec<FlowOut>) =
            flows.into_iter().partition(|f| f.key.0.is_ipv4());
        let per_datagram = match self.format {
            FlowFormat::V5 => 30,
            _ => 20,
        };
        for chunk in v4.chunks(per_datagram).chain(v6.chunks(per_datagram)) {
            let d = match self.format {
                FlowFormat::V5 => self.v5(chunk, now),
                FlowFormat::V9 => self.v9(chunk, now),
                FlowFormat::Ipfix => self.ipfix(chunk),
            };
            self.socket
                .send_to(&d, self.to)
                .expect("send flow datagram");
            self.sequence = self.sequence.wrapping_add(match self.format {
                FlowFormat::V9 => 1,
                _ => chunk.len() as u32,
            });
        }
    }

    fn unix_ms(&self, uptime_ms: u32) -> u64 {
        self.unix_base_ms + u64::from(uptime_ms - self.uptime_base_ms)
    }

    /// ICMP type and code as NetFlow exporters put them: in the destination port.
    fn ports(key: &FlowKey) -> (u16, u16) {
        match key.4 {
            1 | 58 => (0, (key.2 << 8) | key.3),
            _ => (key.2, key.3),
        }
    }

    fn v5(&self, flows: &[FlowOut], now: Instant) -> Vec<u8> {
        let mut d = Vec::with_capacity(24 + 48 * flows.len());
        let unix = self.unix_ms(self.uptime_ms(now));
        d.extend_from_slice(&5u16.to_be_bytes());
        d.extend_from_slice(&(flows.len() as u16).to_be_bytes());
        d.extend_from_slice(&self.uptime_ms(now).to_be_bytes());
        d.extend_from_slice(&((unix / 1000) as u32).to_be_bytes());
        d.extend_from_slice(&(((unix % 1000) * 1_000_000) as u32).to_be_bytes());
        d.extend_from_slice(&self.sequence.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0, 0]); // engine type/id, no sampling
        for f in flows {
            let (IpAddr::V4(src), IpAddr::V4(dst)) = (f.key.0, f.key.1) else {
                panic!("NetFlow v5 carries IPv4 only");
            };
            let (sport, dport) = Self::ports(&f.key);
            d.extend_from_slice(&src.octets());
            d.extend_from_slice(&dst.octets());
            d.extend_from_slice(&[0; 4]); // next hop
            d.extend_from_slice(&[0, 3, 0, 4]); // input, output
            d.extend_from_slice(&(f.agg.packets as u32).to_be_bytes());
            d.extend_from_slice(&(f.agg.bytes as u32).to_be_bytes());
            d.extend_from_slice(&f.first_ms.to_be_bytes());
            d.extend_from_slice(&f.last_ms.to_be_bytes());
            d.extend_from_slice(&sport.to_be_bytes());
            d.extend_from_slice(&dport.to_be_bytes());
            d.extend_from_slice(&[0, f.agg.flags, f.key.4, 0]); // pad, flags, protocol, tos
            d.extend_from_slice(&[0; 8]); // AS numbers, masks, pad
        }
        d
    }

    /// Template fields (id, length) of v9 template 300/301 and IPFIX 400/401.
    fn fields(format: FlowFormat, v6: bool) -> Vec<(u16, u16)> {
        let (src, dst, addr_len) = if v6 { (27, 28, 16) } else { (8, 12, 4) };
        let mut fields = vec![
            (src, addr_len),
            (dst, addr_len),
            (4, 1),  // protocolIdentifier
            (7, 2),  // sourceTransportPort
            (11, 2), // destinationTransportPort
            (6, 1),  // tcpControlBits
        ];
        match format {
            FlowFormat::V9 => fields.extend([
                (2, 4),  // IN_PKTS
                (1, 4),  // IN_BYTES
                (22, 4), // FIRST_SWITCHED (uptime ms)
                (21, 4), // LAST_SWITCHED
            ]),
            FlowFormat::Ipfix => fields.extend([
                (2, 8),   // packetDeltaCount
                (1, 8),   // octetDeltaCount
                (152, 8), // flowStartMilliseconds
                (153, 8), // flowEndMilliseconds
                (197, 1), // fragmentFlags
            ]),
            FlowFormat::V5 => unreachable!("v5 has no templates"),
        }
        fields
    }

    fn template_set(format: FlowFormat) -> Vec<u8> {
        let (set_id, base) = match format {
            FlowFormat::V9 => (0u16, 300u16),
            _ => (2u16, 400u16),
        };
        let mut body = Vec::new();
        for (k, v6) in [false, true].into_iter().enumerate() {
            let fields = Self::fields(format, v6);
            body.extend_from_slice(&(base + k as u16).to_be_bytes());
            body.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (id, len) in fields {
                body.extend_from_slice(&id.to_be_bytes());
                body.extend_from_slice(&len.to_be_bytes());
            }
        }
        set(set_id, body)
    }

    fn record(&self, f: &FlowOut, out: &mut Vec<u8>) {
        let (sport, dport) = Self::ports(&f.key);
        for addr in [f.key.0, f.key.1] {
            match addr {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        out.push(f.key.4);
        out.extend_from_slice(&sport.to_be_bytes());
        out.extend_from_slice(&dport.to_be_bytes());
        out.push(f.agg.flags);
        match self.format {
            FlowFormat::V9 => {
                out.extend_from_slice(&(f.agg.packets as u32).to_be_bytes());
                out.extend_from_slice(&(f.agg.bytes as u32).to_be_bytes());
                out.extend_from_slice(&f.first_ms.to_be_bytes());
                out.extend_from_slice(&f.last_ms.to_be_bytes());
            }
            FlowFormat::Ipfix => {
                out.extend_from_slice(&f.agg.packets.to_be_bytes());
                out.extend_from_slice(&f.agg.bytes.to_be_bytes());
                out.extend_from_slice(&self.unix_ms(f.first_ms).to_be_bytes());
                out.extend_from_slice(&self.unix_ms(f.last_ms).to_be_bytes());
                // fragmentFlags: "More Fragments" is IANA's bit 2 counted from the most
                // significant bit, 0x20 (every fragment the generator makes has MF set); a
                // non-fragment carries "Don't Fragment", 0x40, which must not count.
                out.push(if f.key.5 { 0x20 } else { 0x40 });
            }
            FlowFormat::V5 => unreachable!("v5 records are built in v5()"),
        }
    }

    fn data_set(&self, flows: &[FlowOut]) -> Vec<u8> {
        let base = if self.format == FlowFormat::V9 {
            300
        } else {
            400
        };
        let id = base + u16::from(flows[0].key.0.is_ipv6());
        let mut body = Vec::new();
        for f in flows {
            self.record(f, &mut body);
        }
        set(id, body)
    }

    fn v9(&self, flows: &[FlowOut], now: Instant) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&9u16.to_be_bytes());
        d.extend_from_slice(&(2 + flows.len() as u16).to_be_bytes()); // 2 templates + records
        d.extend_from_slice(&self.uptime_ms(now).to_be_bytes());
        let unix = self.unix_ms(self.uptime_ms(now));
        d.extend_from_slice(&((unix / 1000) as u32).to_be_bytes());
        d.extend_from_slice(&self.sequence.to_be_bytes());
        d.extend_from_slice(&9u32.to_be_bytes()); // source id
        d.extend(Self::template_set(FlowFormat::V9));
        d.extend(self.data_set(flows));
        d
    }

    fn ipfix(&self, flows: &[FlowOut]) -> Vec<u8> {
        let mut body = Self::template_set(FlowFormat::Ipfix);
        body.extend(self.data_set(flows));
        let now_s = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()) as u32;
        let mut d = Vec::with_capacity(16 + body.len());
        d.extend_from_slice(&10u16.to_be_bytes());
        d.extend_from_slice(&((16 + body.len()) as u16).to_be_bytes());
        d.extend_from_slice(&now_s.to_be_bytes());
        d.extend_from_slice(&self.sequence.to_be_bytes());
        d.extend_from_slice(&10u32.to_be_bytes()); // observation domain
        d.extend(body);
        d
    }
}

/// A v9 flowset / IPFIX set: id, length, body padded to 4 bytes.
fn set(id: u16, mut body: Vec<u8>) -> Vec<u8> {
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
    let mut s = Vec::with_capacity(4 + body.len());
    s.extend_from_slice(&id.to_be_bytes());
    s.extend_from_slice(&((4 + body.len()) as u16).to_be_bytes());
    s.extend(body);
    s
}

impl Sink for NetflowSink {
    fn push(&mut self, host: usize, p: &Pkt) {
        let t = p.tuple();
        let agg = self
            .cache
            .entry((t.0, t.1, t.2, t.3, t.4, p.is_fragment()))
            .or_default();
        agg.packets += 1;
        agg.bytes += u64::from(p.ip_len);
        agg.flags |= p.tcp_flags;
        self.expect.entry(host).or_default().add(p, 1);
    }

    fn flush(&mut self, now: Instant) {
        if now - self.interval_start >= EXPORT_INTERVAL {
            self.export(now);
        }
    }

    fn finish(&mut self) {
        self.export(Instant::now());
    }

    fn expected(&self) -> &HashMap<usize, Expect> {
        &self.expect
    }
}
