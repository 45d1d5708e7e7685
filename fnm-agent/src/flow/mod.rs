//! Pure flow-export decoders: sFlow v5, NetFlow v5, NetFlow v9 and IPFIX.
//!
//! Every decoder is a function from the bytes of one UDP payload (plus the exporter address and
//! a [`TemplateCache`] for the template-based protocols) to a decoded datagram. Decoders never
//! panic, never allocate from an unchecked length field (every count is checked against the
//! bytes actually present before anything is reserved) and every loop advances through the
//! datagram, so the work is bounded by its size. Errors carry a stable
//! [`DecodeError::reason`] string for the `fnm_flow_decode_errors_total` metric; partial
//! problems that do not invalidate the whole datagram (data before its template, unknown sample
//! formats, padding) are counted in the datagram's stats instead.
//!
//! # From records to traffic
//!
//! Each decoded datagram offers `traffic_records(default_sampling_rate)`, turning its flow
//! records into [`crate::traffic::TrafficRecord`]s:
//!
//! * Packets and bytes are multiplied by the sampling rate: the sFlow sample's rate; for
//!   NetFlow v5 the header's sampling interval; for NetFlow v9 / IPFIX the record's own
//!   sampling field, else the rate learned from options data for that exporter, observation
//!   domain and sampler ([`TemplateCache::sampling_rate`]). When none is known the caller's
//!   `default_sampling_rate` applies (0 is treated as 1).
//! * Bytes are IP bytes. NetFlow/IPFIX byte counters already count IP bytes. For sFlow see
//!   [`sflow`] for the rule.
//! * **Flows that span seconds**: `duration_ms` is `last switched - first switched` when the
//!   record carries both timestamps (v5/v9 system-uptime milliseconds, IPFIX absolute or delta
//!   times) and they are ordered; 0 otherwise. It is capped at [`MAX_FLOW_DURATION_MS`] (one
//!   hour) so that an uptime wrap or a broken clock cannot spread a record over days. The
//!   accounting spreads a record's packets and bytes evenly over `duration_ms` starting when the
//!   record arrives, instead of crediting the whole flow in the second the record arrives (the
//!   FastNetMon behaviour that produces spikes every active-timeout).
//! * SYN packets: a TCP record whose OR of flags has SYN without ACK counts all its packets as
//!   SYN packets (flow records carry no per-packet flags). Fragments are set for sFlow samples
//!   whose sampled IPv4 header has MF set or a non-zero offset (IPv6: a fragment header), and for
//!   NetFlow v9/IPFIX records whose `fragmentFlags` (IE 197) say so.
//!
//! The direction of a record (in/out of the operator's networks) is not decided here.

pub mod collector;
pub mod collector_metrics;
pub mod error;
pub mod ipfix;
pub mod netflow5;
pub mod netflow9;
pub mod record;
pub mod sflow;
pub mod socket;
pub mod templates;

use std::borrow::Cow;
use std::net::IpAddr;

pub use error::DecodeError;
pub use record::{FlowRecord, RecordKind};
pub use templates::TemplateCache;

/// Longest `duration_ms` a flow record is given (one hour); longer or inverted spans are capped.
pub const MAX_FLOW_DURATION_MS: u64 = 3_600_000;

/// A NetFlow-family datagram: the three protocols share one UDP socket and are told apart by
/// the first 16-bit word (the version). A v5 datagram borrows the received bytes.
#[derive(Debug, Clone)]
pub enum NetflowDatagram<'a> {
    /// NetFlow v5 (a view of the datagram's bytes).
    V5(netflow5::Netflow5Datagram<'a>),
    /// NetFlow v9.
    V9(netflow9::Netflow9Datagram),
    /// IPFIX (version 10).
    Ipfix(ipfix::IpfixDatagram),
}

impl NetflowDatagram<'_> {
    /// The traffic records of the datagram, scaled by sampling; see the module docs.
    pub fn traffic_records(
        &self,
        default_sampling_rate: u32,
    ) -> Box<dyn Iterator<Item = crate::traffic::TrafficRecord> + '_> {
        match self {
            NetflowDatagram::V5(d) => Box::new(d.traffic_records(default_sampling_rate)),
            NetflowDatagram::V9(d) => Box::new(d.traffic_records(default_sampling_rate)),
            NetflowDatagram::Ipfix(d) => Box::new(d.traffic_records(default_sampling_rate)),
        }
    }

    /// Appends the datagram's traffic records to `out`, scaled by sampling (same records as
    /// [`traffic_records`](Self::traffic_records), without the boxed iterator).
    #[inline]
    pub fn extend_traffic(
        &self,
        default_sampling_rate: u32,
        out: &mut Vec<crate::traffic::TrafficRecord>,
    ) {
        match self {
            NetflowDatagram::V5(d) => out.extend(d.traffic_records(default_sampling_rate)),
            NetflowDatagram::V9(d) => out.extend(d.traffic_records(default_sampling_rate)),
            NetflowDatagram::Ipfix(d) => out.extend(d.traffic_records(default_sampling_rate)),
        }
    }

    /// The decoded records (flow and options records) in datagram order. v9 and IPFIX lend
    /// their records; v5 records are read from the datagram into a new `Vec` (the collector
    /// uses [`extend_traffic`](Self::extend_traffic) instead, which does not).
    pub fn records(&self) -> Cow<'_, [FlowRecord]> {
        match self {
            NetflowDatagram::V5(d) => Cow::Owned(d.flow_records().collect()),
            NetflowDatagram::V9(d) => Cow::Borrowed(&d.records),
            NetflowDatagram::Ipfix(d) => Cow::Borrowed(&d.records),
        }
    }

    /// Number of decoded records (flow and options records), without materialising them.
    pub fn record_count(&self) -> usize {
        match self {
            NetflowDatagram::V5(d) => d.len(),
            NetflowDatagram::V9(d) => d.records.len(),
            NetflowDatagram::Ipfix(d) => d.records.len(),
        }
    }

    /// The protocol version from the header (5, 9 or 10).
    pub fn version(&self) -> u16 {
        match self {
            NetflowDatagram::V5(_) => 5,
            NetflowDatagram::V9(_) => 9,
            NetflowDatagram::Ipfix(_) => 10,
        }
    }
}

/// Decodes a datagram received on the NetFlow socket as NetFlow v5, v9 or IPFIX according to
/// its version field.
pub fn decode_netflow_family<'a>(
    datagram: &'a [u8],
    exporter: IpAddr,
    cache: &mut TemplateCache,
) -> Result<NetflowDatagram<'a>, DecodeError> {
    let reader = Reader::new(datagram);
    let version = reader.peek_u16(0)?;
    match version {
        5 => netflow5::decode(datagram).map(NetflowDatagram::V5),
        9 => netflow9::decode(datagram, exporter, cache).map(NetflowDatagram::V9),
        10 => ipfix::decode(datagram, exporter, cache).map(NetflowDatagram::Ipfix),
        other => Err(DecodeError::BadVersion(u32::from(other))),
    }
}

/// A bounds-checked big-endian reader over a byte slice. Every read either returns the value
/// and advances, or returns [`DecodeError::Truncated`] and leaves the position unchanged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    #[inline]
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Bytes not yet read.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Current offset from the start.
    #[inline]
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The unread bytes.
    #[inline]
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    /// Takes the next `len` bytes.
    #[inline(always)]
    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(truncated(len, self.remaining()));
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    /// Skips `len` bytes.
    #[inline(always)]
    pub(crate) fn skip(&mut self, len: usize) -> Result<(), DecodeError> {
        self.take(len).map(|_| ())
    }

    /// Reads a fixed-size array.
    #[inline(always)]
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    /// Reads a big-endian u16.
    #[inline(always)]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    #[inline(always)]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    #[inline(always)]
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u16 at `offset` from the current position without advancing.
    #[inline]
    pub(crate) fn peek_u16(&self, offset: usize) -> Result<u16, DecodeError> {
        let mut copy = *self;
        copy.skip(offset)?;
        copy.u16()
    }
}

/// The error of a read past the end, out of line: decoders inline every read, and only the
/// bounds check stays on their path.
#[cold]
#[inline(never)]
fn truncated(needed: usize, available: usize) -> DecodeError {
    DecodeError::Truncated { needed, available }
}

/// Reads an unsigned big-endian integer of 1 to 8 bytes (NetFlow v9/IPFIX reduced-size
/// encoding); longer fields keep their last 8 bytes, an empty field is 0.
#[inline]
pub(crate) fn be_uint(bytes: &[u8]) -> u64 {
    let tail = if bytes.len() > 8 {
        &bytes[bytes.len() - 8..]
    } else {
        bytes
    };
    tail.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}
