//! IPFIX decoder. The input is decoded twice with one template cache, so templates learned
//! from the input decode its own data sets on the second pass.
#![no_main]

use std::net::{IpAddr, Ipv6Addr};

use fnm_agent::flow::{ipfix, TemplateCache};
use libfuzzer_sys::fuzz_target;

const EXPORTER: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fuzz_target!(|data: &[u8]| {
    let mut cache = TemplateCache::with_limits(64, 64);
    for _ in 0..2 {
        if let Ok(decoded) = ipfix::decode(data, EXPORTER, &mut cache) {
            for record in decoded.traffic_records(0) {
                std::hint::black_box(record);
            }
        }
    }
});
