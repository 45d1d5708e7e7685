//! NetFlow v5 datagrams for the end-to-end tests that feed a collector by hand.
#![allow(dead_code)]

use std::net::Ipv4Addr;

/// One NetFlow v5 datagram: `records` flows of `packets` packets each (468 bytes a packet)
/// from 198.51.100.N:123 towards `dst`:40000 over UDP, each spanning the last second
/// before `uptime_ms` (an NTP reflection, as exporters report one).
pub fn netflow_v5(seq: u32, uptime_ms: u32, dst: Ipv4Addr, records: u8, packets: u32) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&5u16.to_be_bytes());
    d.extend_from_slice(&u16::from(records).to_be_bytes());
    d.extend_from_slice(&uptime_ms.to_be_bytes());
    d.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 0]);
    for i in 0..records {
        d.extend_from_slice(&[198, 51, 100, i + 1]);
        d.extend_from_slice(&dst.octets());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&[0, 1, 0, 2]);
        d.extend_from_slice(&packets.to_be_bytes());
        d.extend_from_slice(&(packets * 468).to_be_bytes());
        d.extend_from_slice(&(uptime_ms - 1000).to_be_bytes());
        d.extend_from_slice(&uptime_ms.to_be_bytes());
        d.extend_from_slice(&123u16.to_be_bytes());
        d.extend_from_slice(&40000u16.to_be_bytes());
        d.extend_from_slice(&[0, 0, 17, 0]);
        d.extend_from_slice(&[0; 8]);
    }
    d
}
