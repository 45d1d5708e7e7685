//! sFlow v5 decoder: any bytes must give a datagram or an error, never a panic or a hang; and
//! the collector's `decode_traffic` must give exactly what `decode` + `traffic_records` give.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut streamed = Vec::new();
    let summary = fnm_agent::flow::sflow::decode_traffic(data, 0, &mut streamed);
    match fnm_agent::flow::sflow::decode(data) {
        Ok(decoded) => {
            let records: Vec<_> = decoded.traffic_records(0).collect();
            assert_eq!(records, streamed);
            assert_eq!(
                summary.map(|s| s.flow_samples as usize).ok(),
                Some(decoded.flows.len())
            );
        }
        Err(error) => {
            assert_eq!(summary.err(), Some(error));
            assert!(streamed.is_empty());
        }
    }
});
