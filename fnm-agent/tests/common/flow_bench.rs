//! The traffic of the flow ingest benchmark (`tests/flow_ingest_bench.rs`), shared with the
//! decoder benchmark (`benches/decoders.rs`, by path) so both measure the same datagrams.

use std::net::Ipv4Addr;

/// Flow samples in each sFlow datagram.
pub const SAMPLES_PER_SFLOW_DATAGRAM: u32 = 10;

/// Local host `i` of the benchmark: 4 000 of them in 10.10.0.0/16.
pub fn local_host(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a0a_0000 + (i % 4000))
}

/// Remote host `i`: 200 of them in 198.51.100.0/24.
pub fn remote_host(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xc633_6400 + (i % 200))
}

/// sFlow datagram `seed`: [`SAMPLES_PER_SFLOW_DATAGRAM`] compact flow samples, each one raw
/// header record of a 46-byte Ethernet/IPv4/UDP header (DNS from a remote host to a local one).
pub fn sflow_datagram(seed: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(1200);
    for word in [
        5u32,
        1,
        0x7f00_0001,
        0,
        seed,
        1000,
        SAMPLES_PER_SFLOW_DATAGRAM,
    ] {
        d.extend_from_slice(&word.to_be_bytes());
    }
    for s in 0..SAMPLES_PER_SFLOW_DATAGRAM {
        let i = seed * SAMPLES_PER_SFLOW_DATAGRAM + s;
        let mut header = Vec::new();
        header.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let ip_len: u16 = 28 + 100;
        header.extend_from_slice(&[0x45, 0]);
        header.extend_from_slice(&ip_len.to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        header.extend_from_slice(&remote_host(i).octets());
        header.extend_from_slice(&local_host(i).octets());
        header.extend_from_slice(&((i % 60000) as u16).to_be_bytes());
        header.extend_from_slice(&53u16.to_be_bytes());
        header.extend_from_slice(&(8u16 + 100).to_be_bytes());
        header.extend_from_slice(&[0, 0]);
        let header_len = header.len() as u32;
        while header.len() % 4 != 0 {
            header.push(0);
        }
        let mut record = Vec::new();
        for word in [1u32, 14 + u32::from(ip_len) + 4, 4, header_len] {
            record.extend_from_slice(&word.to_be_bytes());
        }
        record.extend_from_slice(&header);
        let mut sample = Vec::new();
        for word in [i, 3, 1, i * 1000, 0, 3, 4, 1] {
            sample.extend_from_slice(&word.to_be_bytes());
        }
        sample.extend_from_slice(&1u32.to_be_bytes());
        sample.extend_from_slice(&(record.len() as u32).to_be_bytes());
        sample.extend_from_slice(&record);
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&(sample.len() as u32).to_be_bytes());
        d.extend_from_slice(&sample);
    }
    d
}
