//! NetFlow v9 decoder. The input is decoded twice with one template cache, so templates
//! learned from the input decode its own data sets on the second pass.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use fnm_agent::flow::{netflow9, TemplateCache};
use libfuzzer_sys::fuzz_target;

const EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

fuzz_target!(|data: &[u8]| {
    let mut cache = TemplateCache::with_limits(64, 64);
    for _ in 0..2 {
        if let Ok(decoded) = netflow9::decode(data, EXPORTER, &mut cache) {
            for record in decoded.traffic_records(0) {
                std::hint::black_box(record);
            }
        }
    }
});
