//! Reads classic pcap and pcapng capture files without libpcap, for `fnm-agent replay`,
//! tests and benchmarks.
//!
//! Both byte orders, microsecond and nanosecond classic pcap, pcapng sections with several
//! interfaces (`if_tsresol`, `if_tsoffset`), enhanced, simple and obsolete packet blocks.
//! Length fields are checked against [`MAX_BLOCK_LEN`] before anything is allocated, so a
//! corrupt or hostile file gives an error, never a huge allocation.

use super::parse::{LinkType, ParseStats};
use super::{deliver, PacketSink};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Duration;

/// Largest packet record or pcapng block accepted (bytes).
pub const MAX_BLOCK_LEN: usize = 1 << 20;

/// Why a capture file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PcapFileError {
    /// Reading failed.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
    /// The file starts with neither a pcap nor a pcapng magic number.
    #[error("not a pcap or pcapng file (magic number {0:#010x})")]
    NotACaptureFile(u32),
    /// The file is cut short or a length field is inconsistent.
    #[error("corrupt capture file: {0}")]
    Corrupt(String),
}

/// One packet read from a capture file; `data` is valid until the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePacket<'a> {
    /// Capture time since the UNIX epoch.
    pub timestamp: Duration,
    /// The pcap LINKTYPE_* of the interface the packet was captured on.
    pub link_type: u32,
    /// The captured bytes (at most the snap length).
    pub data: &'a [u8],
    /// The length of the packet on the wire.
    pub original_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Classic pcap: byte order, nanosecond timestamps, link type.
    Classic {
        big_endian: bool,
        nanos: bool,
        link_type: u32,
    },
    /// pcapng: byte order of the current section.
    Ng { big_endian: bool },
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    link_type: u32,
    snaplen: u32,
    /// `if_tsresol`: bit 7 clear = 10^-n s, set = 2^-n s.
    tsresol: u8,
    /// `if_tsoffset`: seconds added to every timestamp.
    tsoffset: i64,
}

const PCAPNG_SHB: u32 = 0x0A0D_0D0A;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_OBSOLETE_PB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;
const PCAPNG_BOM: u32 = 0x1A2B_3C4D;

/// Reads packets one at a time from a classic pcap or pcapng stream.
pub struct PcapReader<R> {
    input: R,
    format: Format,
    buf: Vec<u8>,
    interfaces: Vec<Interface>,
    last_timestamp: Duration,
}

impl PcapReader<BufReader<File>> {
    /// Opens a capture file.
    pub fn open(path: &Path) -> Result<Self, PcapFileError> {
        Self::new(BufReader::with_capacity(1 << 16, File::open(path)?))
    }
}

impl<'a> PcapReader<&'a [u8]> {
    /// Reads a capture held in memory.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, PcapFileError> {
        Self::new(bytes)
    }
}

impl<R: Read> PcapReader<R> {
    /// Reads the file header and detects the format.
    pub fn new(mut input: R) -> Result<Self, PcapFileError> {
        let mut head = [0u8; 4];
        input.read_exact(&mut head).map_err(eof_is_corrupt)?;
        let magic_le = u32::from_le_bytes(head);
        let magic_be = u32::from_be_bytes(head);
        let mut reader = Self {
            input,
            format: Format::Ng { big_endian: false },
            buf: Vec::with_capacity(4096),
            interfaces: Vec::new(),
            last_timestamp: Duration::ZERO,
        };
        let classic = match (magic_le, magic_be) {
            (0xA1B2_C3D4, _) => Some((false, false)),
            (0xA1B2_3C4D, _) => Some((false, true)),
            (_, 0xA1B2_C3D4) => Some((true, false)),
            (_, 0xA1B2_3C4D) => Some((true, true)),
            _ => None,
        };
        if let Some((big_endian, nanos)) = classic {
            let mut rest = [0u8; 20];
            reader.input.read_exact(&mut rest).map_err(eof_is_corrupt)?;
            let network = read_u32(&rest[16..20], big_endian);
            reader.format = Format::Classic {
                big_endian,
                nanos,
                link_type: network & 0x0FFF_FFFF,
            };
            return Ok(reader);
        }
        if magic_le != PCAPNG_SHB {
            return Err(PcapFileError::NotACaptureFile(magic_be));
        }
        reader.read_section_header()?;
        Ok(reader)
    }

    /// The next packet, or `None` at the end of the file.
    pub fn next_packet(&mut self) -> Result<Option<FilePacket<'_>>, PcapFileError> {
        match self.format {
            Format::Classic {
                big_endian,
                nanos,
                link_type,
            } => self.next_classic(big_endian, nanos, link_type),
            Format::Ng { .. } => self.next_ng(),
        }
    }

    fn next_classic(
        &mut self,
        big_endian: bool,
        nanos: bool,
        link_type: u32,
    ) -> Result<Option<FilePacket<'_>>, PcapFileError> {
        let mut h = [0u8; 16];
        if !read_or_eof(&mut self.input, &mut h)? {
            return Ok(None);
        }
        let secs = read_u32(&h[0..4], big_endian);
        let frac = read_u32(&h[4..8], big_endian);
        let incl = read_u32(&h[8..12], big_endian) as usize;
        let orig = read_u32(&h[12..16], big_endian);
        if incl > MAX_BLOCK_LEN {
            return Err(PcapFileError::Corrupt(format!(
                "packet record of {incl} bytes (more than {MAX_BLOCK_LEN})"
            )));
        }
        let nanos_part = if nanos {
            frac
        } else {
            frac.saturating_mul(1000)
        };
        let timestamp = Duration::new(u64::from(secs), 0) + Duration::from_nanos(nanos_part.into());
        self.buf.resize(incl, 0);
        self.input
            .read_exact(&mut self.buf)
            .map_err(eof_is_corrupt)?;
        Ok(Some(FilePacket {
            timestamp,
            link_type,
            data: &self.buf,
            original_len: orig,
        }))
    }

    fn big_endian(&self) -> bool {
        match self.format {
            Format::Classic { big_endian, .. } | Format::Ng { big_endian } => big_endian,
        }
    }

    /// Reads the rest of a section header block whose type was already consumed.
    fn read_section_header(&mut self) -> Result<(), PcapFileError> {
        let mut h = [0u8; 8];
        self.input.read_exact(&mut h).map_err(eof_is_corrupt)?;
        let big_endian = match u32::from_le_bytes([h[4], h[5], h[6], h[7]]) {
            PCAPNG_BOM => false,
            0x4D3C_2B1A => true,
            other => {
                return Err(PcapFileError::Corrupt(format!(
                    "pcapng byte-order magic {other:#010x}"
                )))
            }
        };
        let total = read_u32(&h[0..4], big_endian) as usize;
        self.format = Format::Ng { big_endian };
        self.interfaces.clear();
        check_block_len(total, 28)?;
        // Body after type, length and byte-order magic.
        self.read_body(total - 12)?;
        Ok(())
    }

    /// Reads `len` bytes of block body into `buf`.
    fn read_body(&mut self, len: usize) -> Result<(), PcapFileError> {
        self.buf.resize(len, 0);
        self.input.read_exact(&mut self.buf).map_err(eof_is_corrupt)
    }

    fn next_ng(&mut self) -> Result<Option<FilePacket<'_>>, PcapFileError> {
        loop {
            let mut h = [0u8; 4];
            if !read_or_eof(&mut self.input, &mut h)? {
                return Ok(None);
            }
            if u32::from_le_bytes(h) == PCAPNG_SHB {
                self.read_section_header()?;
                continue;
            }
            let be = self.big_endian();
            let block_type = read_u32(&h, be);
            let mut l = [0u8; 4];
            self.input.read_exact(&mut l).map_err(eof_is_corrupt)?;
            let total = read_u32(&l, be) as usize;
            check_block_len(total, 12)?;
            self.read_body(total - 8)?;
            // `buf` is the body followed by the trailing length (4 bytes).
            let body_len = total - 12;
            match block_type {
                PCAPNG_IDB => self.add_interface(body_len)?,
                PCAPNG_EPB => {
                    let (if_id, ts, caplen, orig) = {
                        let b = &self.buf[..body_len];
                        let need = |n: usize| {
                            if b.len() < n {
                                Err(PcapFileError::Corrupt(
                                    "enhanced packet block too short".into(),
                                ))
                            } else {
                                Ok(())
                            }
                        };
                        need(20)?;
                        let if_id = read_u32(&b[0..4], be) as usize;
                        let ts = (u64::from(read_u32(&b[4..8], be)) << 32)
                            | u64::from(read_u32(&b[8..12], be));
                        let caplen = read_u32(&b[12..16], be) as usize;
                        let orig = read_u32(&b[16..20], be);
                        need(20 + caplen)?;
                        (if_id, ts, caplen, orig)
                    };
                    let iface = self.interface(if_id)?;
                    let timestamp = ng_timestamp(ts, iface.tsresol, iface.tsoffset)?;
                    self.last_timestamp = timestamp;
                    return Ok(Some(FilePacket {
                        timestamp,
                        link_type: iface.link_type,
                        data: &self.buf[20..20 + caplen],
                        original_len: orig,
                    }));
                }
                PCAPNG_OBSOLETE_PB => {
                    if body_len < 20 {
                        return Err(PcapFileError::Corrupt("packet block too short".into()));
                    }
                    let b = &self.buf[..body_len];
                    let if_id = usize::from(read_u16(&b[0..2], be));
                    let ts = (u64::from(read_u32(&b[4..8], be)) << 32)
                        | u64::from(read_u32(&b[8..12], be));
                    let caplen = read_u32(&b[12..16], be) as usize;
                    let orig = read_u32(&b[16..20], be);
                    if 20 + caplen > body_len {
                        return Err(PcapFileError::Corrupt("packet block too short".into()));
                    }
                    let iface = self.interface(if_id)?;
                    let timestamp = ng_timestamp(ts, iface.tsresol, iface.tsoffset)?;
                    self.last_timestamp = timestamp;
                    return Ok(Some(FilePacket {
                        timestamp,
                        link_type: iface.link_type,
                        data: &self.buf[20..20 + caplen],
                        original_len: orig,
                    }));
                }
                PCAPNG_SPB => {
                    if body_len < 4 {
                        return Err(PcapFileError::Corrupt(
                            "simple packet block too short".into(),
                        ));
                    }
                    let orig = read_u32(&self.buf[0..4], be);
                    let iface = self.interface(0)?;
                    let mut caplen = (orig as usize).min(body_len - 4);
                    if iface.snaplen != 0 {
                        caplen = caplen.min(iface.snaplen as usize);
                    }
                    return Ok(Some(FilePacket {
                        // Simple packet blocks carry no time: reuse the last one seen.
                        timestamp: self.last_timestamp,
                        link_type: iface.link_type,
                        data: &self.buf[4..4 + caplen],
                        original_len: orig,
                    }));
                }
                _ => {} // name resolution, statistics, custom, ...: skipped
            }
        }
    }

    fn interface(&self, id: usize) -> Result<Interface, PcapFileError> {
        self.interfaces.get(id).copied().ok_or_else(|| {
            PcapFileError::Corrupt(format!("packet refers to undeclared interface {id}"))
        })
    }

    fn add_interface(&mut self, body_len: usize) -> Result<(), PcapFileError> {
        let be = self.big_endian();
        let b = &self.buf[..body_len];
        if b.len() < 8 {
            return Err(PcapFileError::Corrupt("interface block too short".into()));
        }
        let mut iface = Interface {
            link_type: u32::from(read_u16(&b[0..2], be)),
            snaplen: read_u32(&b[4..8], be),
            tsresol: 6,
            tsoffset: 0,
        };
        let mut off = 8;
        while off + 4 <= b.len() {
            let code = read_u16(&b[off..off + 2], be);
            let len = usize::from(read_u16(&b[off + 2..off + 4], be));
            let value = b.get(off + 4..off + 4 + len).ok_or_else(|| {
                PcapFileError::Corrupt("interface option runs past its block".into())
            })?;
            match (code, len) {
                (0, _) => break,
                (9, 1) => iface.tsresol = value[0],
                (14, 8) => {
                    let raw: [u8; 8] = value.try_into().unwrap_or_default();
                    iface.tsoffset = if be {
                        i64::from_be_bytes(raw)
                    } else {
                        i64::from_le_bytes(raw)
                    };
                }
                _ => {}
            }
            off += 4 + len.div_ceil(4) * 4;
        }
        self.interfaces.push(iface);
        Ok(())
    }
}

/// Converts a pcapng timestamp in interface units to time since the epoch.
fn ng_timestamp(ts: u64, tsresol: u8, tsoffset: i64) -> Result<Duration, PcapFileError> {
    let exponent = u32::from(tsresol & 0x7f);
    let units_per_sec: u128 = if tsresol & 0x80 != 0 {
        if exponent > 63 {
            return Err(PcapFileError::Corrupt(format!("if_tsresol {tsresol:#x}")));
        }
        1u128 << exponent
    } else {
        if exponent > 19 {
            return Err(PcapFileError::Corrupt(format!("if_tsresol {tsresol:#x}")));
        }
        10u128.pow(exponent)
    };
    let nanos = u128::from(ts) * 1_000_000_000 / units_per_sec;
    let base = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
    Ok(if tsoffset >= 0 {
        base.saturating_add(Duration::from_secs(tsoffset.unsigned_abs()))
    } else {
        base.saturating_sub(Duration::from_secs(tsoffset.unsigned_abs()))
    })
}

fn check_block_len(total: usize, min: usize) -> Result<(), PcapFileError> {
    if total < min || !total.is_multiple_of(4) || total > MAX_BLOCK_LEN {
        return Err(PcapFileError::Corrupt(format!(
            "pcapng block length {total}"
        )));
    }
    Ok(())
}

fn read_u32(b: &[u8], big_endian: bool) -> u32 {
    let raw = [b[0], b[1], b[2], b[3]];
    if big_endian {
        u32::from_be_bytes(raw)
    } else {
        u32::from_le_bytes(raw)
    }
}

fn read_u16(b: &[u8], big_endian: bool) -> u16 {
    let raw = [b[0], b[1]];
    if big_endian {
        u16::from_be_bytes(raw)
    } else {
        u16::from_le_bytes(raw)
    }
}

/// Fills `buf`; `false` on a clean end of input before the first byte.
fn read_or_eof<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<bool, PcapFileError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(PcapFileError::Corrupt("file ends inside a record".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn eof_is_corrupt(e: std::io::Error) -> PcapFileError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        PcapFileError::Corrupt("file ends inside a record".into())
    } else {
        PcapFileError::Io(e)
    }
}

/// Parses every packet of `reader` into `sink`, timestamps taken from the file, flushes the
/// sink at the end; returns the frame counters.
pub fn replay<R: Read>(
    reader: &mut PcapReader<R>,
    sink: &mut dyn PacketSink,
) -> Result<ParseStats, PcapFileError> {
    let mut stats = ParseStats::default();
    while let Some(packet) = reader.next_packet()? {
        deliver(
            LinkType::from_pcap(packet.link_type),
            packet.timestamp,
            packet.data,
            sink,
            &mut stats,
        );
    }
    sink.flush();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classic(big_endian: bool, nanos: bool, packets: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let w32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend(w32(if nanos { 0xA1B2_3C4D } else { 0xA1B2_C3D4 }));
        out.extend(w16(2));
        out.extend(w16(4));
        out.extend(w32(0));
        out.extend(w32(0));
        out.extend(w32(65535));
        out.extend(w32(1));
        for (secs, frac, data) in packets {
            out.extend(w32(*secs));
            out.extend(w32(*frac));
            out.extend(w32(data.len() as u32));
            out.extend(w32(data.len() as u32 + 10));
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn classic_both_byte_orders_and_resolutions() {
        for big_endian in [false, true] {
            for nanos in [false, true] {
                let file = classic(big_endian, nanos, &[(10, 5, b"abc"), (11, 7, b"")]);
                let mut r = PcapReader::from_bytes(&file).unwrap();
                let p = r.next_packet().unwrap().unwrap();
                let frac_ns = if nanos { 5 } else { 5000 };
                assert_eq!(p.timestamp, Duration::new(10, frac_ns));
                assert_eq!(p.data, b"abc");
                assert_eq!(p.link_type, 1);
                assert_eq!(p.original_len, 13);
                let p = r.next_packet().unwrap().unwrap();
                assert_eq!(p.data, b"");
                assert!(r.next_packet().unwrap().is_none());
            }
        }
    }

    #[test]
    fn truncated_and_oversized_records_are_errors() {
        let file = classic(false, false, &[(1, 0, b"abcdef")]);
        let cut = &file[..file.len() - 2];
        let mut r = PcapReader::from_bytes(cut).unwrap();
        assert!(matches!(r.next_packet(), Err(PcapFileError::Corrupt(_))));

        let mut huge = classic(false, false, &[]);
        huge.extend(1u32.to_le_bytes());
        huge.extend(0u32.to_le_bytes());
        huge.extend(u32::MAX.to_le_bytes());
        huge.extend(u32::MAX.to_le_bytes());
        let mut r = PcapReader::from_bytes(&huge).unwrap();
        let err = r.next_packet().unwrap_err().to_string();
        assert!(err.contains("packet record of"), "{err}");

        assert!(matches!(
            PcapReader::from_bytes(b"GIF89a..."),
            Err(PcapFileError::NotACaptureFile(_))
        ));
        assert!(PcapReader::from_bytes(b"").is_err());
    }

    fn block(t: u32, body: &[u8]) -> Vec<u8> {
        let padded = body.len().div_ceil(4) * 4;
        let total = (12 + padded) as u32;
        let mut b = Vec::new();
        b.extend(t.to_le_bytes());
        b.extend(total.to_le_bytes());
        b.extend_from_slice(body);
        b.resize(8 + padded, 0);
        b.extend(total.to_le_bytes());
        b
    }

    fn shb() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(PCAPNG_BOM.to_le_bytes());
        body.extend(1u16.to_le_bytes());
        body.extend(0u16.to_le_bytes());
        body.extend((-1i64).to_le_bytes());
        block(PCAPNG_SHB, &body)
    }

    fn idb(link: u16, tsresol: Option<u8>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(link.to_le_bytes());
        body.extend(0u16.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        if let Some(r) = tsresol {
            body.extend(9u16.to_le_bytes());
            body.extend(1u16.to_le_bytes());
            body.extend([r, 0, 0, 0]);
            body.extend([0, 0, 0, 0]);
        }
        block(PCAPNG_IDB, &body)
    }

    fn epb(if_id: u32, ts: u64, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(if_id.to_le_bytes());
        body.extend(((ts >> 32) as u32).to_le_bytes());
        body.extend((ts as u32).to_le_bytes());
        body.extend((data.len() as u32).to_le_bytes());
        body.extend((data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        block(PCAPNG_EPB, &body)
    }

    #[test]
    fn pcapng_interfaces_resolutions_and_unknown_blocks() {
        let mut file = shb();
        file.extend(idb(1, None));
        file.extend(idb(101, Some(9)));
        file.extend(block(5, b"statistics"));
        file.extend(epb(0, 1_500_000, b"eth"));
        file.extend(epb(1, 2_000_000_123, b"raw-ip"));
        let mut spb = Vec::new();
        spb.extend(3u32.to_le_bytes());
        spb.extend(b"xyz");
        file.extend(block(PCAPNG_SPB, &spb));
        let mut r = PcapReader::from_bytes(&file).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (p.link_type, p.data, p.timestamp),
            (1, &b"eth"[..], Duration::from_millis(1500))
        );
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.link_type, 101);
        assert_eq!(p.data, b"raw-ip");
        assert_eq!(p.timestamp, Duration::new(2, 123));
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!((p.link_type, p.data), (1, &b"xyz"[..]));
        assert!(r.next_packet().unwrap().is_none());
    }

    #[test]
    fn pcapng_bad_lengths_and_interfaces_are_errors() {
        let mut file = shb();
        file.extend(epb(0, 0, b"x"));
        let mut r = PcapReader::from_bytes(&file).unwrap();
        let err = r.next_packet().unwrap_err().to_string();
        assert!(err.contains("undeclared interface 0"), "{err}");

        let mut file = shb();
        file.extend(PCAPNG_EPB.to_le_bytes());
        file.extend(0x7fff_fff0u32.to_le_bytes());
        let mut r = PcapReader::from_bytes(&file).unwrap();
        let err = r.next_packet().unwrap_err().to_string();
        assert!(err.contains("block length"), "{err}");

        // An EPB whose captured length exceeds its block.
        let mut file = shb();
        file.extend(idb(1, None));
        let mut bad = epb(0, 0, b"abcd");
        bad[20..24].copy_from_slice(&1000u32.to_le_bytes());
        file.extend(bad);
        let mut r = PcapReader::from_bytes(&file).unwrap();
        assert!(matches!(r.next_packet(), Err(PcapFileError::Corrupt(_))));
    }

    #[test]
    fn timestamp_resolutions() {
        assert_eq!(
            ng_timestamp(1_000_000, 6, 0).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(ng_timestamp(1024, 0x8a, 0).unwrap(), Duration::from_secs(1));
        assert_eq!(ng_timestamp(5, 0, 10).unwrap(), Duration::from_secs(15));
        assert!(ng_timestamp(5, 20, 0).is_err());
    }
}
