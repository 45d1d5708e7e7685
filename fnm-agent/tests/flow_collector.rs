//! The collector service on 127.0.0.1: hostile datagrams are counted by reason and never stop
//! it, templates survive a restart (of the collector object and of the `fnm-agent` binary),
//! the allow-list drops strangers, and the binary exports the collector metrics.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fnm_agent::{
    accounting::{Accounting, Direction},
    flow::collector::{FlowCollectors, NetflowConfig, SflowConfig, TrafficSink},
};

const LOCAL_HOST: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const REMOTE_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A NetFlow v5 datagram of `records` (src, dst, packets, bytes) with `sequence`.
fn netflow5(sequence: u32, records: &[(Ipv4Addr, Ipv4Addr, u32, u32)]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&5u16.to_be_bytes());
    d.extend_from_slice(&(records.len() as u16).to_be_bytes());
    d.extend_from_slice(&100_000u32.to_be_bytes()); // uptime
    d.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&sequence.to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 0]); // engine type/id, sampling 0
    for (src, dst, packets, bytes) in records {
        d.extend_from_slice(&src.octets());
        d.extend_from_slice(&dst.octets());
        d.extend_from_slice(&[0; 4]); // next hop
        d.extend_from_slice(&[0, 1, 0, 2]); // input/output ifIndex
        d.extend_from_slice(&packets.to_be_bytes());
        d.extend_from_slice(&bytes.to_be_bytes());
        d.extend_from_slice(&99_000u32.to_be_bytes()); // first
        d.extend_from_slice(&99_500u32.to_be_bytes()); // last
        d.extend_from_slice(&[0x1f, 0x90, 0x00, 0x50]); // ports
        d.extend_from_slice(&[0, 0x10, 17, 0]); // pad, flags, proto, tos
        d.extend_from_slice(&[0; 8]); // AS, masks, pad
    }
    d
}

/// NetFlow v9 header with `count` records.
fn netflow9_header(sequence: u32, count: u16) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&9u16.to_be_bytes());
    d.extend_from_slice(&count.to_be_bytes());
    d.extend_from_slice(&100_000u32.to_be_bytes());
    d.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    d.extend_from_slice(&sequence.to_be_bytes());
    d.extend_from_slice(&42u32.to_be_bytes()); // source id
    d
}

/// A v9 datagram carrying only template 300 (src, dst, protocol, packets, bytes).
fn netflow9_template(sequence: u32) -> Vec<u8> {
    let mut d = netflow9_header(sequence, 1);
    let fields: [(u16, u16); 5] = [(8, 4), (12, 4), (4, 1), (2, 4), (1, 4)];
    d.extend_from_slice(&0u16.to_be_bytes());
    d.extend_from_slice(&(4 + 4 + 4 * fields.len() as u16).to_be_bytes());
    d.extend_from_slice(&300u16.to_be_bytes());
    d.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (id, len) in fields {
        d.extend_from_slice(&id.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
    }
    d
}

/// A v9 datagram carrying only data of template 300.
fn netflow9_data(sequence: u32, records: &[(Ipv4Addr, Ipv4Addr, u32, u32)]) -> Vec<u8> {
    let mut d = netflow9_header(sequence, records.len() as u16);
    let mut body = Vec::new();
    for (src, dst, packets, bytes) in records {
        body.extend_from_slice(&src.octets());
        body.extend_from_slice(&dst.octets());
        body.push(6);
        body.extend_from_slice(&packets.to_be_bytes());
        body.extend_from_slice(&bytes.to_be_bytes());
    }
    while body.len() % 4 != 0 {
        body.push(0);
    }
    d.extend_from_slice(&300u16.to_be_bytes());
    d.extend_from_slice(&(4 + body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    d
}

/// An IPFIX message from observation domain 42 (the v9 source id above) with template 300 in
/// another layout than the v9 one (src, dst, packets as 8 bytes, bytes as 1 byte: 17 bytes, as
/// long as a v9 record) and/or data records through it.
fn ipfix_300(template: bool, records: &[(Ipv4Addr, Ipv4Addr, u64, u8)]) -> Vec<u8> {
    let mut sets = Vec::new();
    if template {
        let fields: [(u16, u16); 4] = [(8, 4), (12, 4), (2, 8), (1, 1)];
        sets.extend_from_slice(&2u16.to_be_bytes());
        sets.extend_from_slice(&(4 + 4 + 4 * fields.len() as u16).to_be_bytes());
        sets.extend_from_slice(&300u16.to_be_bytes());
        sets.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        for (id, len) in fields {
            sets.extend_from_slice(&id.to_be_bytes());
            sets.extend_from_slice(&len.to_be_bytes());
        }
    }
    if !records.is_empty() {
        sets.extend_from_slice(&300u16.to_be_bytes());
        sets.extend_from_slice(&(4 + 17 * records.len() as u16).to_be_bytes());
        for (src, dst, packets, bytes) in records {
            sets.extend_from_slice(&src.octets());
            sets.extend_from_slice(&dst.octets());
            sets.extend_from_slice(&packets.to_be_bytes());
            sets.push(*bytes);
        }
    }
    let mut m = Vec::new();
    m.extend_from_slice(&10u16.to_be_bytes());
    m.extend_from_slice(&(16 + sets.len() as u16).to_be_bytes());
    m.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes()); // sequence
    m.extend_from_slice(&42u32.to_be_bytes()); // observation domain
    m.extend(sets);
    m
}

fn accounting() -> Arc<Mutex<Accounting>> {
    let networks = ["10.10.0.0/16"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    Arc::new(Mutex::new(Accounting::new(networks, 10_000, 10_000, 1000)))
}

fn start(
    accounting: &Arc<Mutex<Accounting>>,
    state_dir: Option<&Path>,
    netflow: NetflowConfig,
) -> FlowCollectors {
    let sflow = SflowConfig::listening_on(vec!["127.0.0.1:0".parse().unwrap()]);
    let sink: Arc<dyn TrafficSink> = accounting.clone();
    FlowCollectors::start(&sflow, &netflow, state_dir, sink).expect("collectors start")
}

fn local_netflow() -> NetflowConfig {
    NetflowConfig::listening_on(vec!["127.0.0.1:0".parse().unwrap()])
}

fn incoming(accounting: &Arc<Mutex<Accounting>>, host: Ipv4Addr) -> (u64, u64) {
    let accounting = accounting.lock().unwrap();
    accounting
        .host(IpAddr::V4(host))
        .map(|h| {
            let t = &h.dirs()[Direction::Incoming.index()].total();
            (t.packets, t.bytes)
        })
        .unwrap_or((0, 0))
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raw corpus payloads shipped with the project (copyleft files excluded).
fn corpus_payloads() -> Vec<(bool, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flows");
    let mut out = Vec::new();
    for protocol in ["sflow", "netflow5", "netflow9", "ipfix"] {
        let Ok(entries) = std::fs::read_dir(root.join(protocol)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let raw = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("dat" | "bin")
            );
            if raw {
                out.push((protocol == "sflow", std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// A small deterministic generator (xorshift) for the random datagrams.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn malformed_datagrams_are_counted_by_reason_and_never_stop_the_collector() {
    let accounting = accounting();
    let collectors = start(&accounting, None, local_netflow());
    let (sflow_addr, netflow_addr) = (collectors.sflow_addrs()[0], collectors.netflow_addrs()[0]);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent_sflow = 0u64;
    let mut sent_netflow = 0u64;
    let mut send = |sflow: bool, bytes: &[u8]| {
        let target = if sflow { sflow_addr } else { netflow_addr };
        sender.send_to(bytes, target).unwrap();
        if sflow {
            sent_sflow += 1;
        } else {
            sent_netflow += 1;
        }
        // Keep well under the receive buffer: this test is about decoding, not load.
        if (sent_sflow + sent_netflow).is_multiple_of(200) {
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    let corpus = corpus_payloads();
    assert!(corpus.len() > 20, "the project corpus is missing");
    for (is_sflow, payload) in &corpus {
        for cut in [
            0,
            1,
            3,
            4,
            8,
            16,
            20,
            24,
            27,
            28,
            40,
            64,
            100,
            payload.len() / 2,
        ] {
            if cut < payload.len() {
                send(*is_sflow, &payload[..cut]);
            }
        }
        // Flip bytes in the header and body.
        let mut mangled = payload.clone();
        for index in (0..mangled.len()).step_by(7) {
            mangled[index] ^= 0xA5;
        }
        send(*is_sflow, &mangled);
    }
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in 0..4000 {
        let len = (rng.next() % 1500) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Plausible headers make the decoders go deeper than the version check.
        match i % 4 {
            0 if len >= 4 => bytes[..4].copy_from_slice(&5u32.to_be_bytes()),
            1 if len >= 2 => bytes[..2].copy_from_slice(&9u16.to_be_bytes()),
            2 if len >= 2 => bytes[..2].copy_from_slice(&10u16.to_be_bytes()),
            3 if len >= 2 => bytes[..2].copy_from_slice(&5u16.to_be_bytes()),
            _ => {}
        }
        send(i % 4 == 0, &bytes);
    }

    let metrics = collectors.metrics();
    let received = |protocols: &[&'static str]| -> u64 {
        protocols
            .iter()
            .map(|p| metrics.protocol_total(p).datagrams)
            .sum()
    };
    let netflow_protocols = ["netflow", "netflow5", "netflow9", "ipfix"];
    wait_for("every hostile datagram to be counted", || {
        let drops: u64 = metrics.socket_drops().iter().sum();
        received(&["sflow"]) + received(&netflow_protocols) + drops == sent_sflow + sent_netflow
    });
    let drops: u64 = metrics.socket_drops().iter().sum();
    assert_eq!(drops, 0, "the kernel dropped datagrams at this low rate");
    assert_eq!(received(&["sflow"]), sent_sflow);
    assert_eq!(received(&netflow_protocols), sent_netflow);

    let errors = metrics.errors_by_reason();
    let total_errors: u64 = errors.values().sum();
    assert!(total_errors > 3000, "{errors:?}");
    for (protocol, reason) in [
        ("sflow", "truncated"),
        ("sflow", "bad_version"),
        ("netflow", "bad_version"),
        ("netflow5", "truncated"),
        ("netflow9", "truncated"),
        ("ipfix", "truncated"),
    ] {
        assert!(
            errors.get(&(protocol, reason)).copied().unwrap_or(0) > 0,
            "no {protocol}/{reason} error counted: {errors:?}"
        );
    }

    // Still alive and accounting: a valid datagram after all that is credited.
    let before = incoming(&accounting, LOCAL_HOST);
    sender
        .send_to(
            &netflow5(1, &[(REMOTE_HOST, LOCAL_HOST, 10, 1500)]),
            netflow_addr,
        )
        .unwrap();
    wait_for("the valid datagram to be accounted", || {
        incoming(&accounting, LOCAL_HOST) == (before.0 + 10, before.1 + 1500)
    });
    collectors.stop();
}

#[test]
fn templates_learned_before_a_restart_decode_data_after_it() {
    let state = tempfile::tempdir().unwrap();
    let accounting = accounting();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();

    let first = start(&accounting, Some(state.path()), local_netflow());
    let addr = first.netflow_addrs()[0];
    sender.send_to(&netflow9_template(1), addr).unwrap();
    wait_for("the template", || first.templates_known() == 1);
    first.stop();
    assert!(state.path().join("flow-templates.json").is_file());

    // Data only, after the restart: decodable only with the saved template.
    let second = start(&accounting, Some(state.path()), local_netflow());
    assert_eq!(second.templates_known(), 1);
    let addr = second.netflow_addrs()[0];
    sender
        .send_to(
            &netflow9_data(
                2,
                &[
                    (REMOTE_HOST, LOCAL_HOST, 7, 700),
                    (REMOTE_HOST, LOCAL_HOST, 3, 300),
                ],
            ),
            addr,
        )
        .unwrap();
    wait_for("data decoded through the restored template", || {
        incoming(&accounting, LOCAL_HOST) == (10, 1000)
    });
    let counts = second.metrics().protocol_total("netflow9");
    assert_eq!((counts.records, counts.unknown_template_sets), (2, 0));
    second.stop();

    // Without the state file the same data is counted as "no template" and not accounted.
    let empty = tempfile::tempdir().unwrap();
    let fresh_accounting = self::accounting();
    let third = start(&fresh_accounting, Some(empty.path()), local_netflow());
    sender
        .send_to(
            &netflow9_data(3, &[(REMOTE_HOST, LOCAL_HOST, 7, 700)]),
            third.netflow_addrs()[0],
        )
        .unwrap();
    let metrics = third.metrics();
    wait_for("the set without template to be counted", || {
        metrics.protocol_total("netflow9").unknown_template_sets == 1
    });
    assert_eq!(incoming(&fresh_accounting, LOCAL_HOST), (0, 0));
}

#[test]
fn v9_and_ipfix_templates_with_one_id_from_one_exporter_do_not_collide() {
    let state = tempfile::tempdir().unwrap();
    let accounting = accounting();
    let collectors = start(&accounting, Some(state.path()), local_netflow());
    let addr = collectors.netflow_addrs()[0];
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    // One exporter (one address and port, source id = observation domain = 42) announces
    // template 300 in NetFlow v9 and then, with another layout, in IPFIX.
    sender.send_to(&netflow9_template(1), addr).unwrap();
    sender.send_to(&ipfix_300(true, &[]), addr).unwrap();
    let metrics = collectors.metrics();
    wait_for("both templates", || {
        metrics.protocol_total("netflow9").templates_learned == 1
            && metrics.protocol_total("ipfix").templates_learned == 1
    });

    // v9 data must go through the v9 template. Through the IPFIX one, the protocol, packets
    // and bytes fields read as one 8-byte packet counter: 4.3e17 packets, a false attack.
    sender
        .send_to(
            &netflow9_data(2, &[(REMOTE_HOST, LOCAL_HOST, 7, 700)]),
            addr,
        )
        .unwrap();
    wait_for("the v9 record", || {
        metrics.protocol_total("netflow9").records == 1
    });
    assert_eq!(
        incoming(&accounting, LOCAL_HOST),
        (7, 700),
        "v9 data decoded through the IPFIX template"
    );
    assert_eq!(collectors.templates_known(), 2, "one template per protocol");

    // IPFIX data goes through the IPFIX template.
    sender
        .send_to(
            &ipfix_300(false, &[(REMOTE_HOST, LOCAL_HOST, 5, 250)]),
            addr,
        )
        .unwrap();
    wait_for("the IPFIX record", || {
        incoming(&accounting, LOCAL_HOST) != (7, 700)
    });
    assert_eq!(incoming(&accounting, LOCAL_HOST), (12, 950));
    collectors.stop();

    // Both survive a restart, still apart.
    let restarted = start(&accounting, Some(state.path()), local_netflow());
    assert_eq!(restarted.templates_known(), 2);
    let addr = restarted.netflow_addrs()[0];
    sender
        .send_to(
            &netflow9_data(3, &[(REMOTE_HOST, LOCAL_HOST, 1, 100)]),
            addr,
        )
        .unwrap();
    sender
        .send_to(&ipfix_300(false, &[(REMOTE_HOST, LOCAL_HOST, 2, 20)]), addr)
        .unwrap();
    wait_for("both records after the restart", || {
        incoming(&accounting, LOCAL_HOST) != (12, 950)
            && restarted.metrics().protocol_total("ipfix").records == 1
            && restarted.metrics().protocol_total("netflow9").records == 1
    });
    assert_eq!(incoming(&accounting, LOCAL_HOST), (15, 1070));
    restarted.stop();
}

#[test]
fn a_corrupt_or_old_template_file_is_set_aside_and_the_collector_starts() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("flow-templates.json");
    let accounting = accounting();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let set_aside = |dir: &Path| -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("flow-templates.json.corrupt-")
            })
            .collect();
        found.sort();
        found
    };
    // A torn file, then a version-1 file (keys without the protocol).
    let version_1 = br#"{"version":1,"templates":[{"key":{"exporter":"127.0.0.1","domain":42,"template_id":300},"options":false,"scope_fields":0,"fields":[{"id":2,"length":4,"enterprise":0}]}],"sampling":[]}"#;
    for (round, content) in [&b"{\"version\":2,\"templ"[..], version_1]
        .iter()
        .enumerate()
    {
        std::fs::write(&file, content).unwrap();
        let collectors = start(&accounting, Some(state.path()), local_netflow());
        assert_eq!(collectors.templates_known(), 0);
        let kept = set_aside(state.path());
        assert_eq!(kept.len(), round + 1, "{kept:?}");
        assert!(kept.iter().any(|p| std::fs::read(p).unwrap() == *content));
        assert!(
            !file.exists(),
            "the bad file is moved, not left to be overwritten"
        );
        // The collector works and saves a good file again.
        sender
            .send_to(&netflow9_template(1), collectors.netflow_addrs()[0])
            .unwrap();
        wait_for("the template", || collectors.templates_known() == 1);
        collectors.stop();
        assert_eq!(
            fnm_agent::flow::TemplateCache::load(&file).unwrap().len(),
            1
        );
        std::fs::remove_file(&file).unwrap();
    }
}

#[test]
fn sequence_gaps_and_strangers_are_counted() {
    let accounting = accounting();
    let mut netflow = local_netflow();
    netflow.allowed_exporters = vec!["127.0.0.0/8".parse().unwrap()];
    netflow.exporters = vec![fnm_agent::flow::collector::ExporterOverride {
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        name: Some("lab-router".into()),
        sampling_rate: Some(100),
    }];
    let collectors = start(&accounting, None, netflow);
    let addr = collectors.netflow_addrs()[0];
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let record = [(REMOTE_HOST, LOCAL_HOST, 2, 200)];
    // Sequences 0, 1, then 5: three datagrams (records) lost in between.
    for sequence in [0, 1, 5] {
        sender.send_to(&netflow5(sequence, &record), addr).unwrap();
    }
    let metrics = collectors.metrics();
    wait_for("three datagrams", || {
        metrics.exporter("lab-router", "netflow5").datagrams == 3
    });
    assert_eq!(metrics.exporter("lab-router", "netflow5").sequence_lost, 3);
    // The exporter's override rate scales records that announce no sampling.
    wait_for("scaled traffic", || {
        incoming(&accounting, LOCAL_HOST) == (3 * 2 * 100, 3 * 200 * 100)
    });
    collectors.stop();

    // An exporter outside allowed_exporters is dropped and counted.
    let mut netflow = local_netflow();
    netflow.allowed_exporters = vec!["192.0.2.0/24".parse().unwrap()];
    let collectors = start(&accounting, None, netflow);
    sender
        .send_to(&netflow5(0, &record), collectors.netflow_addrs()[0])
        .unwrap();
    let metrics = collectors.metrics();
    wait_for("the stranger to be dropped", || {
        metrics.dropped().get(&("netflow", "not_allowed")) == Some(&1)
    });
    assert_eq!(metrics.protocol_total("netflow5").datagrams, 0);
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `fnm-agent` binary with XDP off and the collectors on 127.0.0.1.
struct AgentBinary {
    child: Child,
    api: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl AgentBinary {
    fn start(state: &Path, netflow: SocketAddr, sflow: SocketAddr) -> Self {
        let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let config = state.join("fnm-agent.toml");
        std::fs::write(
            &config,
            format!(
                "networks = [\"10.10.0.0/16\"]\nstate_dir = \"{}\"\npoll_interval = \"200ms\"\n\
                 [xdp]\nenabled = false\n[api]\nlisten = \"{api}\"\n[prometheus]\nlisten = \"{metrics}\"\n\
                 [sflow]\nlisten = [\"{sflow}\"]\nworkers = 2\n[netflow]\nlisten = [\"{netflow}\"]\nworkers = 2\n",
                state.join("state").display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(state.join("state")).unwrap();
        let log = state.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fnm-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fnm-agent");
        let mut agent = Self {
            child,
            api,
            metrics,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while fnm_agent::client::request(api, "GET", "/api/v1/status", None).is_err() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("fnm-agent exited ({status}): {}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent never came up: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn incoming(&self, host: Ipv4Addr) -> (u64, u64) {
        let hosts = fnm_agent::client::request(
            self.api,
            "GET",
            "/api/v1/hosts?direction=incoming&sort=packets&limit=100",
            None,
        )
        .expect("hosts");
        hosts
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["ip"] == host.to_string())
            .map(|h| {
                (
                    h["incoming"]["packets"].as_u64().unwrap_or(0),
                    h["incoming"]["bytes"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0))
    }

    fn metrics_text(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.metrics).expect("metrics");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("fnm-agent did not stop on SIGTERM: {}", self.log());
    }
}

impl Drop for AgentBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn agent_binary_collects_exports_metrics_and_keeps_templates_across_restarts() {
    let state = tempfile::tempdir().unwrap();
    let netflow: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let sflow: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();

    let agent = AgentBinary::start(state.path(), netflow, sflow);
    sender
        .send_to(&netflow5(0, &[(REMOTE_HOST, LOCAL_HOST, 4, 400)]), netflow)
        .unwrap();
    sender.send_to(&netflow9_template(1), netflow).unwrap();
    sender.send_to(b"garbage", sflow).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.incoming(LOCAL_HOST) != (4, 400) {
        assert!(Instant::now() < deadline, "not accounted: {}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut expected = BTreeMap::new();
    expected.insert(
        "fnm_flow_datagrams_total{exporter=\"127.0.0.1\",protocol=\"netflow5\"} 1",
        (),
    );
    expected.insert(
        "fnm_flow_records_total{exporter=\"127.0.0.1\",protocol=\"netflow5\"} 1",
        (),
    );
    expected.insert(
        "fnm_flow_decode_errors_total{exporter=\"127.0.0.1\",protocol=\"sflow\",reason=\"bad_version\"} 1",
        (),
    );
    expected.insert("fnm_flow_templates{exporter=\"127.0.0.1\"} 1", ());
    // Traffic totals come from the engine's snapshot, published at its next tick.
    expected.insert(
        "fnm_traffic_packets_total{direction=\"incoming\",protocol=\"udp\",source=\"netflow\"} 4",
        (),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = agent.metrics_text();
    while !expected.keys().all(|line| text.contains(line)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        text = agent.metrics_text();
    }
    for line in expected.keys() {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        text.contains("fnm_flow_socket_drops_total{collector=\"netflow\""),
        "{text}"
    );
    assert!(
        text.contains("fnm_flow_socket_receive_buffer_bytes{"),
        "{text}"
    );
    assert!(
        text.contains("fnm_traffic_packets_total{direction=\"incoming\",protocol=\"udp\",source=\"netflow\"} 4"),
        "{text}"
    );
    agent.stop();
    assert!(state.path().join("state/flow-templates.json").is_file());

    // The restarted agent decodes data sent without its template.
    let agent = AgentBinary::start(state.path(), netflow, sflow);
    sender
        .send_to(
            &netflow9_data(2, &[(REMOTE_HOST, LOCAL_HOST, 6, 600)]),
            netflow,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.incoming(LOCAL_HOST) != (6, 600) {
        assert!(
            Instant::now() < deadline,
            "not decoded after restart: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
}
