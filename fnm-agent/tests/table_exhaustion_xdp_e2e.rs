//! Blinding by host-table exhaustion on the XDP path (issue 12, item 1): a flood to random
//! local destinations beside a steady 3,000 pps host. The kernel and userspace tables fill
//! and churn (XDP's userspace budget is smaller than what the kernel reports), and the steady
//! host must stay counted and never be reported above its real rate by more than 10 %.
//!
//! The XDP program runs in skb mode on a veth pair in namespaces this test creates (root).
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, flood, netns::NetnsPair, require_root};
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The steady host's real rate.
const STEADY_PPS: f64 = 3_000.0;
/// Random destinations are drawn from this /10 (4 M addresses, hashed in the kernel).
const RANDOM_NET: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
/// Datagrams per `sendmmsg` of the random flood.
const BURST: usize = 256;

/// Floods random destinations of [`RANDOM_NET`]/10 from namespace `ns` at `pps` until `stop`;
/// returns how many datagrams went.
fn random_flood(ns: &str, pps: f64, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let payload = [0x42u8; 64];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        // SAFETY: all-zero sockaddr_in and mmsghdr are valid empty values.
        let mut dests: Vec<libc::sockaddr_in> =
            (0..BURST).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BURST).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut x: u32 = 0x9E37_79B9;
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * pps) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            let n = ((due - sent) as usize).min(BURST);
            for (d, m) in dests.iter_mut().zip(msgs.iter_mut()).take(n) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let ip = u32::from(RANDOM_NET) | (x & 0x003f_ffff);
                d.sin_family = libc::AF_INET as u16;
                d.sin_port = 9u16.to_be();
                d.sin_addr.s_addr = ip.to_be();
                m.msg_hdr.msg_name = (d as *mut libc::sockaddr_in).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the first n headers point at live addresses and the payload.
            let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            sent += rc.max(0) as u64;
        }
        sent
    })
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[test]
fn a_random_destination_xdp_flood_never_inflates_a_steady_host() {
    require_root("the XDP table exhaustion end-to-end test");
    let pair = NetnsPair::new(100);
    // The peer routes the random /10 to the agent's side of the veth.
    NetnsPair::exec(
        &pair.peer,
        &[
            "ip",
            "route",
            "add",
            &format!("{RANDOM_NET}/10"),
            "via",
            &pair.agent_v4.to_string(),
        ],
    );
    let config = format!(
        "networks = [\"{}/32\", \"{RANDOM_NET}/10\"]\n\
         [xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\nmax_hosts = 16384\n\
         dense_v4_addresses = 1\npin_links = false\n\
         [accounting]\nmax_hosts = 8192\nmax_hosts_per_exporter = 1024\nmax_hosts_per_source = 4096\n\
         [sflow]\nlisten = []\n[netflow]\nlisten = []\n",
        pair.agent_v4, pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    let steady = pair.agent_v4;
    let std::net::IpAddr::V4(steady_v4) = steady else {
        unreachable!()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let steady_flood = flood::udp_flood(
        &pair.peer,
        SocketAddrV4::new(steady_v4, 9999),
        STEADY_PPS,
        stop.clone(),
    );
    // Let the steady host's window fill before the random flood starts.
    std::thread::sleep(Duration::from_secs(2));
    let random = random_flood(&pair.peer, 40_000.0, stop.clone());
    let flood_start = Instant::now();
    let max_rate = AtomicU64::new(0);
    let mut samples = 0;
    let mut missing = 0;
    while flood_start.elapsed() < Duration::from_secs(8) {
        match agent.get(&format!("/api/v1/hosts/{steady}")) {
            Ok(h) => {
                let pps = h["incoming"]["pps"].as_f64().unwrap_or(0.0);
                if flood_start.elapsed() > Duration::from_secs(1) && pps == 0.0 {
                    missing += 1;
                }
                max_rate.fetch_max(pps as u64, Ordering::Relaxed);
                samples += 1;
            }
            Err(e) => panic!("API: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = agent.metrics_text();
    stop.store(true, Ordering::Relaxed);
    let real = steady_flood.join().unwrap();
    let random_sent = random.join().unwrap();
    let real_pps = real.achieved_pps();
    let max_pps = max_rate.load(Ordering::Relaxed) as f64;
    let evicted: f64 = ["idle", "low_rate", "budget"]
        .iter()
        .map(|r| metric(&text, &format!("fnm_hosts_evicted_total{{reason=\"{r}\"}}")))
        .sum();
    println!(
        "steady host: real {real_pps:.0} pps, highest reported {max_pps:.0} pps over {samples} \
         samples ({missing} showed it idle); random flood: {random_sent} datagrams; hosts {} \
         (XDP budget 4096); evicted {evicted}; kernel table full {}; polls over the interval {}",
        metric(&text, "fnm_hosts"),
        metric(&text, "fnm_xdp_host_table_full_total"),
        metric(&text, "fnm_poll_overruns_total"),
    );
    assert!(
        max_pps <= real_pps * 1.1,
        "steady host reported at {max_pps} pps, real {real_pps:.0}"
    );
    assert_eq!(
        missing, 0,
        "the steady host stays counted through the flood"
    );
    assert!(
        evicted > 0.0,
        "the random destinations churn in the table:\n{text}"
    );
    assert!(metric(&text, "fnm_hosts") <= 4096.0);
}
