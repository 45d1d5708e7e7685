//! Attack pcap dumps against the real agent (XDP in a namespace) under a real UDP flood (root):
//! the attack opens, its record links `<state_dir>/attacks/<id>.pcap`, `tshark -r` reads the
//! file and finds the flood's packets to the victim (source port 53, the flood's length), the
//! file stays within `attack_pcap.max_file_bytes`, and `GET /api/v1/attacks/{id}/pcap` serves
//! the same bytes.
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, netns::NetnsPair, require_root};
use serde_json::Value;
use std::{
    net::{IpAddr, SocketAddrV4},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// GET `path` on the API as raw bytes (status, body), from inside the namespace.
fn get_raw(agent: &AgentProcess, path: &str) -> (u16, Vec<u8>) {
    let (api, path) = (agent.api, path.to_owned());
    NetnsPair::in_ns(&agent.ns, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(api).expect("api connect");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("headers");
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        let status = head[9..12].parse().unwrap();
        (status, out[split + 4..].to_vec())
    })
}

#[test]
fn an_attack_writes_a_pcap_of_its_samples_that_tshark_reads() {
    require_root("attack pcap end-to-end test");
    let pair = NetnsPair::new(94);
    let IpAddr::V4(victim) = pair.agent_v4 else {
        unreachable!()
    };
    let max_bytes = 64 * 1024;
    let body = format!(
        "networks = [\"{victim}/32\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [detection.incoming]\npps = 2000\n[ban]\nactions = []\n\
         [attack_pcap]\nmax_file_bytes = {max_bytes}\nmax_files = 4\n",
        pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &body);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = common::flood::udp_flood(
        &pair.peer,
        SocketAddrV4::new(victim, 9999),
        5000.0,
        stop.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let attack: Value = loop {
        if let Ok(Value::Array(list)) = agent.get("/api/v1/attacks") {
            if let Some(a) = list.into_iter().find(|a| a["ended_unix_ms"].is_null()) {
                break a;
            }
        }
        assert!(Instant::now() < deadline, "no attack:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    // Samples keep coming while the attack goes on.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    let id = attack["id"].as_str().unwrap();
    let path = attack["pcap_file"]
        .as_str()
        .expect("pcap_file in the record");
    assert_eq!(
        std::path::Path::new(path),
        agent.state_path.join("attacks").join(format!("{id}.pcap"))
    );
    let len = std::fs::metadata(path).expect("the dump exists").len();
    assert!(len > 24 && len <= max_bytes, "{len} bytes");

    let out = Command::new("tshark")
        .args(["-r", path, "-T", "fields", "-e", "ip.src", "-e", "ip.dst"])
        .args(["-e", "udp.srcport", "-e", "udp.dstport", "-e", "ip.len"])
        .output()
        .expect("tshark (Debian package tshark) must be installed");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("{}\t{victim}\t53\t9999\t428", pair.peer_v4);
    let lines: Vec<&str> = text.lines().collect();
    println!(
        "{}: {len} bytes, {} packets read by tshark, e.g. {:?}",
        path,
        lines.len(),
        lines.first()
    );
    assert!(lines.len() >= 10, "few packets:\n{text}");
    assert!(
        lines.iter().all(|l| *l == want),
        "every packet is the flood's ({want:?}):\n{text}"
    );

    let (status, bytes) = get_raw(&agent, &format!("/api/v1/attacks/{id}/pcap"));
    assert_eq!(status, 200);
    let file = std::fs::read(path).unwrap();
    assert!(
        bytes.len() <= file.len() && file.starts_with(&bytes) && bytes.len() > 24,
        "API {} bytes vs file {}",
        bytes.len(),
        file.len()
    );
    let (status, _) = get_raw(&agent, "/api/v1/attacks/no-such-attack/pcap");
    assert_eq!(status, 404);
}

/// tshark's reading of a dump: one line per packet, `epoch<TAB>src<TAB>dst<TAB>sport<TAB>dport`.
fn tshark_lines(path: &str) -> Vec<String> {
    let out = Command::new("tshark")
        .args([
            "-r",
            path,
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.src",
        ])
        .args(["-e", "ip.dst", "-e", "udp.srcport", "-e", "udp.dstport"])
        .output()
        .expect("tshark (Debian package tshark) must be installed");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_attack_carried_over_a_restart_keeps_writing_its_pcap() {
    require_root("attack pcap across a restart");
    let pair = NetnsPair::new(189);
    let IpAddr::V4(victim) = pair.agent_v4 else {
        unreachable!()
    };
    let max_bytes = 1 << 20;
    let body = format!(
        "networks = [\"{victim}/32\"]\n[xdp]\ninterfaces = [\"{}\"]\nmode = \"skb\"\n\
         [detection.incoming]\npps = 2000\n[ban]\nactions = []\n\
         [attack_pcap]\nmax_file_bytes = {max_bytes}\nmax_files = 4\n",
        pair.veth_agent
    );
    let agent = AgentProcess::start(&pair.agent, &body);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = common::flood::udp_flood(
        &pair.peer,
        SocketAddrV4::new(victim, 9999),
        5000.0,
        stop.clone(),
    );
    let ongoing = |agent: &AgentProcess| -> Vec<Value> {
        match agent.get("/api/v1/attacks") {
            Ok(Value::Array(list)) => list
                .into_iter()
                .filter(|a| a["ended_unix_ms"].is_null())
                .collect(),
            _ => Vec::new(),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let attack = loop {
        if let Some(a) = ongoing(&agent).pop() {
            break a;
        }
        assert!(Instant::now() < deadline, "no attack:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    let id = attack["id"].as_str().unwrap().to_owned();
    let path = attack["pcap_file"].as_str().expect("pcap_file").to_owned();

    // Restart under the flood; the attack is carried over with its dump.
    let state = agent.stop();
    let before = tshark_lines(&path);
    let size_before = std::fs::metadata(&path).unwrap().len();
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let agent = AgentProcess::start_with_state(&pair.agent, &body, state);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let grown = std::fs::metadata(&path).map_or(0, |m| m.len()) > size_before + 10 * 58;
        if grown {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dump did not grow after the restart ({size_before} bytes):\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let still = ongoing(&agent);
    assert_eq!(still.len(), 1, "one attack, carried over: {still:?}");
    assert_eq!(still[0]["id"], id.as_str());
    assert_eq!(still[0]["pcap_file"], path.as_str(), "the same link");
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    agent.settle();

    let after = tshark_lines(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    let want = format!("{}\t{victim}\t53\t9999", pair.peer_v4);
    let after_restart = after
        .iter()
        .filter(|l| l.split('\t').next().and_then(|t| t.parse::<f64>().ok()) > Some(restarted_at))
        .count();
    println!(
        "{path}: {} packets before the restart ({size_before} bytes), {} after it \
         ({after_restart} sampled since), {len} bytes",
        before.len(),
        after.len()
    );
    assert!(len <= max_bytes, "{len} bytes");
    assert!(
        after.len() > before.len() + 10,
        "few packets after the restart"
    );
    assert_eq!(
        after[..before.len()],
        before[..],
        "the earlier packets stay as they were"
    );
    assert!(after_restart >= 10, "few samples after the restart");
    assert!(
        after
            .iter()
            .all(|l| l.split_once('\t').map(|(_, rest)| rest) == Some(want.as_str())),
        "every packet is the flood's ({want:?})"
    );
    let (status, bytes) = get_raw(&agent, &format!("/api/v1/attacks/{id}/pcap"));
    assert_eq!(status, 200);
    assert_eq!(bytes.len() as u64, len, "the API serves the whole dump");
}
