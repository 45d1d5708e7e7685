//! NetFlow v5 decoder: any bytes must give a datagram or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = fnm_agent::flow::netflow5::decode(data) {
        for record in decoded.traffic_records(0) {
            std::hint::black_box(record);
        }
        for record in decoded.flow_records() {
            std::hint::black_box(record);
        }
    }
});
