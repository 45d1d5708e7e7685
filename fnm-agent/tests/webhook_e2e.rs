//! The `webhook` action end to end: an sFlow-fed flood opens an attack in the real agent, which
//! POSTs the attack record to an HTTP server this test runs (inside the agent's namespace, on
//! 127.0.0.1), then posts the unban when the mitigation is lifted; the mitigation records the
//! action `ok` and `fnm_actions_total{action="webhook",result="ok"}` counts it. Root (netns).
#![cfg(target_os = "linux")]

mod common;

use common::{agent::AgentProcess, netns::NetnsPair, require_root};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

/// A one-thread HTTP/1.1 server that answers 200 to every POST and hands over the bodies.
fn hook_server(ns: &str) -> (u16, mpsc::Receiver<serde_json::Value>) {
    let (tx, rx) = mpsc::channel();
    let (port_tx, port_rx) = mpsc::channel();
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        NetnsPair::in_ns(&ns, move || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok() {
                    let _ = tx.send(serde_json::from_slice(&body).unwrap_or_default());
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        })
    });
    (port_rx.recv().unwrap(), rx)
}

#[test]
fn a_flood_is_posted_to_the_webhook_and_so_is_its_unban() {
    require_root("webhook end-to-end test");
    let pair = NetnsPair::new(113);
    let (port, posts) = hook_server(&pair.agent);
    let victim = Ipv4Addr::new(10, 10, 0, 21);
    let config = format!(
        "networks = [\"10.10.0.0/16\"]\n[xdp]\nenabled = false\n\
         [sflow]\nlisten = [\"127.0.0.1:6343\"]\n[netflow]\nlisten = []\n\
         [detection.incoming]\nudp_pps = 10000\n\
         [ban]\nactions = [\"webhook\"]\ntime = \"1s\"\nstop_after = \"1s\"\n\
         [webhook]\nurl = \"http://127.0.0.1:{port}/fnm\"\ntimeout = \"2s\"\n"
    );
    let agent = AgentProcess::start(&pair.agent, &config);
    NetnsPair::in_ns(&pair.agent, move || {
        let stop = Arc::new(AtomicBool::new(false));
        let sender = common::flood::sflow_flood(
            "127.0.0.1:6343".parse().unwrap(),
            Ipv4Addr::new(198, 51, 100, 7),
            std::net::SocketAddrV4::new(victim, 4444),
            40_000.0,
            100,
            stop.clone(),
        );
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
        sender.join().unwrap()
    });
    let ban = posts
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("no ban posted; agent log:\n{}", agent.log()));
    assert_eq!(ban["event"], "ban", "{ban:#}");
    assert_eq!(ban["attack"]["host"], victim.to_string(), "{ban:#}");
    assert_eq!(ban["attack"]["direction"], "incoming", "{ban:#}");
    assert_eq!(ban["attack"]["threshold"]["rate"], "udp_pps", "{ban:#}");
    let id = ban["attack"]["id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = agent.get("/api/v1/mitigations").unwrap();
        if m[0]["actions"][0]["result"] == "ok" || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(m[0]["id"], id.as_str(), "{m:#}");
    assert_eq!(m[0]["actions"][0]["action"], "webhook", "{m:#}");
    assert_eq!(m[0]["actions"][0]["result"], "ok", "{m:#}");

    // The flood stopped: the attack ends after stop_after, the ban time passes, and the lift
    // posts the unban.
    let unban = posts
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("no unban posted; agent log:\n{}", agent.log()));
    assert_eq!(unban["event"], "unban", "{unban:#}");
    assert_eq!(unban["id"], id.as_str(), "{unban:#}");
    // The post goes out during the lift; the record says `lifted` once the lift is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    let attack = loop {
        let a = agent.get(&format!("/api/v1/attacks/{id}")).unwrap();
        if a["actions"][0]["result"] == "lifted" || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(attack["actions"][0]["result"], "lifted", "{attack:#}");
    let metrics = agent.metrics_text();
    assert!(
        metrics.contains("fnm_actions_total{action=\"webhook\",result=\"ok\"} 1"),
        "{metrics}"
    );
}
