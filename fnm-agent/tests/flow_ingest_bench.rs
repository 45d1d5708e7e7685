//! End-to-end ingest benchmark (not a timed test; run it by hand):
//!
//! ```text
//! cargo test -p fnm-agent --release --test flow_ingest_bench -- --ignored --nocapture
//! ```
//!
//! A sender blasts NetFlow v5 datagrams (30 records each) and sFlow v5 datagrams (10 flow
//! samples each) with `sendmmsg` on 127.0.0.1 at increasing rates, first at fnm's collector
//! (in process, feeding the agent's engine thread through its bounded input channel, as
//! `fnm-agent run` does), then at the Debian `fastnetmon` 1.2.4 collector
//! (temporary config: NetFlow and sFlow on 127.0.0.1 ports, nothing else). A step is lossless
//! when every datagram sent was decoded (fnm: datagram counter, and no record dropped at the
//! engine's input; both: the kernel's drop counter of the receiving socket in `/proc/net/udp`
//! stays put). The highest lossless rate of each is
//! printed with the ratio. `FNM_BENCH_LADDER=fnm` climbs the agent's two ladders only.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::flow_bench::{local_host, remote_host, sflow_datagram, SAMPLES_PER_SFLOW_DATAGRAM};
use fnm_agent::{
    config::Config,
    engine::{
        book::AttackBook,
        core::EngineCore,
        input::{EngineInput, InputStats, INPUT_CAPACITY},
        EngineHandle, EngineParts,
    },
    flow::collector::{FlowCollectors, NetflowConfig, SflowConfig, TrafficSink},
    traffic::Source,
};

const STEP: Duration = Duration::from_secs(2);
const RECORDS_PER_V5_DATAGRAM: u32 = 30;
const FIRST_RATE: f64 = 100_000.0;
const RATE_FACTOR: f64 = 1.35;
/// Lowest rate tried when even the first step loses datagrams.
const MIN_RATE: f64 = 2_000.0;

fn netflow5(seed: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(24 + 48 * 30);
    d.extend_from_slice(&5u16.to_be_bytes());
    d.extend_from_slice(&(RECORDS_PER_V5_DATAGRAM as u16).to_be_bytes());
    d.extend_from_slice(&100_000u32.to_be_bytes());
    d.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    d.extend_from_slice(&0u32.to_be_bytes());
    d.extend_from_slice(&(seed * RECORDS_PER_V5_DATAGRAM).to_be_bytes());
    d.extend_from_slice(&[0, 0, 0, 0]);
    for r in 0..RECORDS_PER_V5_DATAGRAM {
        let i = seed * RECORDS_PER_V5_DATAGRAM + r;
        d.extend_from_slice(&remote_host(i).octets());
        d.extend_from_slice(&local_host(i).octets());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&[0, 1, 0, 2]);
        d.extend_from_slice(&(1 + i % 50).to_be_bytes());
        d.extend_from_slice(&(64 * (1 + i % 50)).to_be_bytes());
        d.extend_from_slice(&99_000u32.to_be_bytes());
        d.extend_from_slice(&99_100u32.to_be_bytes());
        d.extend_from_slice(&((i % 60000) as u16).to_be_bytes());
        d.extend_from_slice(&80u16.to_be_bytes());
        d.extend_from_slice(&[0, 0x10, 6, 0]);
        d.extend_from_slice(&[0; 8]);
    }
    d
}

/// The 2 048 distinct datagrams a sender cycles through: sFlow or NetFlow v5.
fn bench_datagrams(sflow: bool) -> Vec<Vec<u8>> {
    (0..2048)
        .map(|seed| {
            if sflow {
                sflow_datagram(seed)
            } else {
                netflow5(seed)
            }
        })
        .collect()
}

/// Sends `datagrams` round-robin to `target` at `rate` datagrams/s for `duration` with
/// `sendmmsg`; returns how many were sent and the achieved rate.
fn blast(target: SocketAddr, datagrams: &[Vec<u8>], rate: f64, duration: Duration) -> (u64, f64) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(target).unwrap();
    common::sender::send_paced(socket.as_raw_fd(), datagrams, rate, duration, 32)
}

/// Kernel drops of the UDP socket bound to 127.0.0.1:`port` (from /proc/net/udp).
fn proc_drops(port: u16) -> u64 {
    let wanted = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&wanted.as_str()))
                .then(|| fields.get(12)?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// Bytes waiting in the receive queue of 127.0.0.1:`port`.
fn proc_rx_queue(port: u16) -> u64 {
    let wanted = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&wanted.as_str()) {
                return None;
            }
            let queues = fields.get(4)?;
            u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
        })
        .sum()
}

/// One collector under test: how to read its counters.
trait Target {
    fn name(&self) -> &'static str;
    fn addr(&self, sflow: bool) -> SocketAddr;
    /// (datagrams decoded or None if unknown, kernel drops) so far.
    fn counters(&self, sflow: bool) -> (Option<u64>, u64);
}

struct Fnm {
    collectors: FlowCollectors,
    /// The engine's input counters, when the collectors feed an engine.
    input: Option<Arc<InputStats>>,
}

impl Target for Fnm {
    fn name(&self) -> &'static str {
        "fnm"
    }
    fn addr(&self, sflow: bool) -> SocketAddr {
        if sflow {
            self.collectors.sflow_addrs()[0]
        } else {
            self.collectors.netflow_addrs()[0]
        }
    }
    fn counters(&self, sflow: bool) -> (Option<u64>, u64) {
        let metrics = self.collectors.metrics();
        let protocol = if sflow { "sflow" } else { "netflow5" };
        let collector = if sflow { "sflow" } else { "netflow" };
        let drops: u64 = metrics
            .sockets()
            .iter()
            .zip(metrics.socket_drops())
            .filter(|(info, _)| info.collector == collector)
            .map(|(_, d)| d)
            .sum();
        let source = if sflow {
            Source::Sflow
        } else {
            Source::Netflow
        };
        let engine_drops = self.input.as_ref().map_or(0, |input| {
            input
                .of(source)
                .dropped_records
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        (
            Some(metrics.protocol_total(protocol).datagrams),
            drops + engine_drops,
        )
    }
}

struct FastNetMon {
    child: Child,
    netflow_port: u16,
    sflow_port: u16,
    _dir: tempfile::TempDir,
}

/// Sets a `/proc/sys` value and returns the previous one.
fn set_sysctl(path: &str, value: usize) -> Option<String> {
    let previous = std::fs::read_to_string(path).ok()?;
    std::fs::write(path, value.to_string()).ok()?;
    Some(previous.trim().to_owned())
}

impl FastNetMon {
    /// Starts fastnetmon; with `receive_buffer`, `net.core.rmem_default` is raised to it while
    /// fastnetmon creates its sockets (1.2.4 has no setting for it) and restored right after.
    fn start(receive_buffer: Option<usize>) -> Self {
        let binary = "/usr/sbin/fastnetmon";
        assert!(
            std::path::Path::new(binary).is_file(),
            "\n\n*** this benchmark needs the Debian package `fastnetmon` ***\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let free = || {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (netflow_port, sflow_port) = (free(), free());
        std::fs::write(dir.path().join("networks"), "10.10.0.0/16\n").unwrap();
        std::fs::write(dir.path().join("whitelist"), "").unwrap();
        let config = dir.path().join("fastnetmon.conf");
        std::fs::write(
            &config,
            format!(
                "logging_level = info\nnetworks_list_path = {d}/networks\nwhite_list_path = {d}/whitelist\n\
                 enable_ban = off\nenable_ban_ipv6 = off\nprocess_incoming_traffic = on\nprocess_outgoing_traffic = on\n\
                 netflow = on\nnetflow_host = 127.0.0.1\nnetflow_port = {netflow_port}\nnetflow_sampling_ratio = 1\n\
                 sflow = on\nsflow_host = 127.0.0.1\nsflow_port = {sflow_port}\n\
                 enable_api = off\nprometheus = off\npid_path = {d}/fastnetmon.pid\nmirror_afpacket = off\npcap = off\n\
                 disable_usage_report = on\ncli_stats_file_path = {d}/fastnetmon.dat\ncli_stats_ipv6_file_path = {d}/fastnetmon_ipv6.dat\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let restore =
            receive_buffer.and_then(|bytes| set_sysctl("/proc/sys/net/core/rmem_default", bytes));
        let child = Command::new(binary)
            .arg("--configuration_file")
            .arg(&config)
            .arg("--log_file")
            .arg(dir.path().join("fastnetmon.log"))
            .arg("--disable_pid_logic")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fastnetmon");
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening = |port: u16| {
            let wanted = format!("0100007F:{port:04X}");
            std::fs::read_to_string("/proc/net/udp")
                .unwrap_or_default()
                .contains(&wanted)
        };
        while !(listening(netflow_port) && listening(sflow_port)) {
            assert!(Instant::now() < deadline, "fastnetmon never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(previous) = restore {
            std::fs::write("/proc/sys/net/core/rmem_default", previous)
                .expect("restore rmem_default");
        }
        Self {
            child,
            netflow_port,
            sflow_port,
            _dir: dir,
        }
    }
}

impl Drop for FastNetMon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target for FastNetMon {
    fn name(&self) -> &'static str {
        "fastnetmon"
    }
    fn addr(&self, sflow: bool) -> SocketAddr {
        let port = if sflow {
            self.sflow_port
        } else {
            self.netflow_port
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }
    fn counters(&self, sflow: bool) -> (Option<u64>, u64) {
        let port = if sflow {
            self.sflow_port
        } else {
            self.netflow_port
        };
        (None, proc_drops(port))
    }
}

/// Steps the rate up until two steps in a row lose datagrams or the sender saturates;
/// returns the highest lossless rate (records or samples per second) and the sender's best.
fn find_lossless(target: &dyn Target, sflow: bool) -> (f64, f64) {
    let per_datagram = f64::from(if sflow {
        SAMPLES_PER_SFLOW_DATAGRAM
    } else {
        RECORDS_PER_V5_DATAGRAM
    });
    let datagrams = bench_datagrams(sflow);
    let unit = if sflow { "samples/s" } else { "records/s" };
    let mut rate = FIRST_RATE;
    let mut best = 0.0f64;
    let mut sender_best = 0.0f64;
    let mut lossy_in_a_row = 0;
    while lossy_in_a_row < 2 {
        let (decoded_before, drops_before) = target.counters(sflow);
        let (sent, achieved) = blast(target.addr(sflow), &datagrams, rate / per_datagram, STEP);
        // Let the collector drain its queue.
        let port = target.addr(sflow).port();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = target.counters(sflow);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = target.counters(sflow);
            let drained = proc_rx_queue(port) == 0;
            if (now == last && drained) || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let (decoded_after, drops_after) = target.counters(sflow);
        let drops = drops_after - drops_before;
        let lost = match (decoded_before, decoded_after) {
            (Some(before), Some(after)) => sent.saturating_sub(after - before).max(drops),
            _ => drops,
        };
        let achieved_records = achieved * per_datagram;
        sender_best = sender_best.max(achieved_records);
        println!(
            "{:>10} {:>6}: target {:>10.0} {unit}, sent {:>10.0} {unit} ({sent} datagrams), lost {lost} datagrams (kernel drops {drops})",
            target.name(),
            if sflow { "sflow" } else { "nfv5" },
            rate,
            achieved_records
        );
        if lost == 0 {
            best = best.max(achieved_records);
            lossy_in_a_row = 0;
        } else if best == 0.0 && rate > MIN_RATE {
            // Lossy from the start: search downwards instead.
            rate /= 2.0;
            continue;
        } else {
            lossy_in_a_row += 1;
        }
        if achieved_records < rate * 0.9 {
            println!("  (sender saturated at {achieved_records:.0} {unit})");
            break;
        }
        rate *= RATE_FACTOR;
    }
    (best, sender_best)
}

/// A sink that only counts what it is handed.
#[derive(Default)]
struct CountingSink(std::sync::atomic::AtomicU64);

impl TrafficSink for CountingSink {
    fn ingest_batch(
        &self,
        _source: fnm_agent::traffic::Source,
        records: &[fnm_agent::traffic::TrafficRecord],
    ) {
        self.0
            .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The agent's own path (collectors → bounded input channel → the engine thread), with
/// `observers` reading each tick (the Kafka export when given).
fn fnm_engine(
    observers: Vec<Box<dyn fnm_agent::engine::TickObserver>>,
) -> (Fnm, EngineHandle, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let config = Config::parse(
        "networks = [\"10.10.0.0/16\"]\n[xdp]\nenabled = false\n",
        std::path::Path::new("bench.toml"),
    )
    .expect("bench config");
    let book = AttackBook::open(state.path().join("attacks.json")).expect("attack book");
    let (input, input_rx) = EngineInput::channel(INPUT_CAPACITY);
    let input_stats = input.stats();
    let (decisions, decisions_rx) =
        tokio::sync::mpsc::channel::<fnm_agent::engine::decision::Decision>(1024);
    std::mem::forget(decisions_rx);
    let engine = EngineHandle::spawn(EngineParts {
        core: EngineCore::new(&config, book),
        input: input_rx,
        flushers: Vec::new(),
        observers,
        decisions,
        interval: config.poll_interval,
    })
    .expect("engine thread");
    let sink: Arc<dyn TrafficSink> = Arc::new(input);
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let collectors = FlowCollectors::start(
        &SflowConfig::listening_on(vec![local]),
        &NetflowConfig::listening_on(vec![local]),
        None,
        sink,
    )
    .expect("fnm collectors");
    (
        Fnm {
            collectors,
            input: Some(input_stats),
        },
        engine,
        state,
    )
}

/// `FNM_BENCH_EXPORT=1`: the lossless NetFlow v5 rate with the Kafka export off and on
/// (a real tansu broker on 127.0.0.1), alternated over `FNM_BENCH_ROUNDS` rounds (default 2),
/// then the aggregator's fleet source: host records per second from the broker into an
/// engine.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture --release"]
fn kafka_export_bench() {
    if std::env::var("FNM_BENCH_EXPORT").is_err() {
        println!("set FNM_BENCH_EXPORT=1 to run the export benchmark");
        return;
    }
    let rounds: usize = std::env::var("FNM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let broker = common::kafka::Broker::start(None, port);
    let kafka: fnm_agent::export::KafkaConfig =
        toml::from_str(&format!("brokers = [\"{}\"]", broker.addr)).unwrap();
    let export: fnm_agent::export::ExportConfig =
        toml::from_str("kafka = true\nagent_id = \"bench\"").unwrap();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        println!("\nround {}: export off", round + 1);
        let (fnm, engine, _state) = fnm_engine(Vec::new());
        off.push(find_lossless(&fnm, false).0);
        drop(fnm);
        drop(engine);
        println!("round {}: export on", round + 1);
        let (mut exporter, observer) = fnm_agent::export::Exporter::start(&export, &kafka)
            .expect("exporter")
            .expect("export on");
        let (fnm, engine, _state) = fnm_engine(vec![Box::new(observer)]);
        on.push(find_lossless(&fnm, false).0);
        drop(fnm);
        drop(engine);
        exporter.stop(Duration::from_secs(10));
        let st = exporter.stats[0].status();
        println!(
            "  export: {:?} delivered, {:?} dropped",
            st.delivered, st.dropped
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (m_off, m_on) = (median(&mut off), median(&mut on));
    println!(
        "\nNetFlow v5 lossless records/s: export off {off:?} (median {m_off:.0}), on {on:?} (median {m_on:.0}): on/off {:.2}x",
        m_on / m_off
    );
    aggregator_throughput(&broker.addr);
}

/// Produces host records as fast as one producer can and measures how fast the aggregator's
/// fleet source hands them to its engine.
fn aggregator_throughput(broker: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    const RECORDS: u64 = 1_000_000;
    let state = tempfile::tempdir().expect("state dir");
    let config = Config::parse(
        &format!(
            "networks = [\"10.0.0.0/8\"]\n[xdp]\nenabled = false\n\
             [kafka]\nbrokers = [\"{broker}\"]\n[cluster]\nrole = \"aggregator\"\n\
             max_lag = \"1h\"\n"
        ),
        std::path::Path::new("bench.toml"),
    )
    .expect("aggregator config");
    let book = AttackBook::open(state.path().join("attacks.json")).expect("attack book");
    let (input, input_rx) = EngineInput::channel(INPUT_CAPACITY);
    let (decisions, decisions_rx) =
        tokio::sync::mpsc::channel::<fnm_agent::engine::decision::Decision>(1024);
    std::mem::forget(decisions_rx);
    let mut sources = fnm_agent::sources::Sources {
        running: Vec::new(),
        flushers: Vec::new(),
        metrics: Vec::new(),
        flows: None,
    };
    let sites = fnm_agent::sources::start_fleet(&config, &input, &mut sources)
        .expect("fleet source")
        .expect("aggregator");
    let engine = EngineHandle::spawn(EngineParts {
        core: EngineCore::new(&config, book).with_site_shares(sites),
        input: input_rx,
        flushers: Vec::new(),
        observers: Vec::new(),
        decisions,
        interval: config.poll_interval,
    })
    .expect("engine");
    let stats = input.stats();
    let taken = || {
        stats
            .of(Source::Fleet)
            .records
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Joined once it holds partitions; give the group a moment.
    std::thread::sleep(Duration::from_secs(8));
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let start = Instant::now();
    let now_ms = fnm_agent::engine::unix_ms();
    for i in 0..RECORDS {
        let host = std::net::Ipv4Addr::from(0x0a00_0000 + (i % 65_536) as u32);
        let r = fnm_agent::export::records::HostRecord::new(
            &format!("site-{}", i % 3),
            host.into(),
            fnm_agent::accounting::Direction::Incoming,
            now_ms,
            250,
            &fnm_common::HostCounters {
                packets: 10,
                bytes: 1000,
                ..Default::default()
            },
        );
        let payload = serde_json::to_vec(&r).unwrap();
        let key = host.to_string();
        loop {
            match producer.send(BaseRecord::to("fnm.hosts").key(&key).payload(&payload)) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let produced_in = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while taken() < RECORDS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let consumed_in = start.elapsed();
    println!(
        "aggregator: {} of {RECORDS} host records into the engine in {:.2} s ({:.0} records/s); \
         the producer took {:.2} s ({:.0} records/s)",
        taken(),
        consumed_in.as_secs_f64(),
        taken() as f64 / consumed_in.as_secs_f64(),
        produced_in.as_secs_f64(),
        RECORDS as f64 / produced_in.as_secs_f64()
    );
    sources.stop();
    drop(engine);
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture --release"]
fn flow_ingest_bench() {
    // The agent's own path: collectors → bounded input channel → the engine thread (host
    // table, rates, detection without thresholds), ticking every 250 ms.
    let (fnm, engine, _state) = fnm_engine(Vec::new());
    let input_stats = fnm.input.clone().expect("engine input");
    let buffers: Vec<usize> = fnm
        .collectors
        .metrics()
        .sockets()
        .iter()
        .map(|s| s.receive_buffer_bytes)
        .collect();
    println!(
        "fnm sockets: {} (receive buffers {buffers:?})",
        buffers.len()
    );
    let (fnm_v5, sender_v5) = find_lossless(&fnm, false);
    let (fnm_sflow, sender_sflow) = find_lossless(&fnm, true);
    drop(fnm);
    drop(engine);
    if std::env::var("FNM_BENCH_LADDER").is_ok_and(|v| v == "fnm") {
        // The agent's ladders only (a collector change checked against the sender's limit).
        println!(
            "fnm lossless: nfv5 {fnm_v5:.0} records/s (sender {sender_v5:.0}), sflow {fnm_sflow:.0} samples/s (sender {sender_sflow:.0})"
        );
        return;
    }

    // The same collectors with a sink that only counts records: the ceiling of the receive and
    // decode path alone, without the per-host accounting.
    let null_sink: Arc<dyn TrafficSink> = Arc::new(CountingSink::default());
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let collectors = FlowCollectors::start(
        &SflowConfig::listening_on(vec![local]),
        &NetflowConfig::listening_on(vec![local]),
        None,
        null_sink,
    )
    .expect("fnm collectors");
    let fnm = Fnm {
        collectors,
        input: None,
    };
    let (bare_v5, _) = find_lossless(&fnm, false);
    let (bare_sflow, _) = find_lossless(&fnm, true);
    drop(fnm);

    let fastnetmon = FastNetMon::start(None);
    let (fast_v5, _) = find_lossless(&fastnetmon, false);
    let (fast_sflow, _) = find_lossless(&fastnetmon, true);
    drop(fastnetmon);

    // fastnetmon again with the receive buffer fnm gets (its sustained rate, not its burst
    // tolerance). rmem_max must allow it.
    let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap_or_default();
    let big = 32usize << 20;
    let restore_max = (max.trim().parse::<usize>().unwrap_or(0) < big)
        .then(|| set_sysctl("/proc/sys/net/core/rmem_max", big))
        .flatten();
    let fastnetmon = FastNetMon::start(Some(big));
    if let Some(previous) = restore_max {
        std::fs::write("/proc/sys/net/core/rmem_max", previous).expect("restore rmem_max");
    }
    let (big_v5, _) = find_lossless(&fastnetmon, false);
    let (big_sflow, _) = find_lossless(&fastnetmon, true);
    drop(fastnetmon);

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    println!("\nhighest lossless rate (sender and collector on this machine, 127.0.0.1):");
    println!(
        "  NetFlow v5: fnm {fnm_v5:.0} records/s, fastnetmon {fast_v5:.0} records/s, ratio {:.1}x (sender best {sender_v5:.0})",
        ratio(fnm_v5, fast_v5)
    );
    println!(
        "  sFlow v5:   fnm {fnm_sflow:.0} samples/s, fastnetmon {fast_sflow:.0} samples/s, ratio {:.1}x (sender best {sender_sflow:.0})",
        ratio(fnm_sflow, fast_sflow)
    );
    println!(
        "  fastnetmon with a 32 MiB receive buffer: {big_v5:.0} NetFlow v5 records/s (fnm {:.1}x), {big_sflow:.0} sFlow samples/s (fnm {:.1}x)",
        ratio(fnm_v5, big_v5),
        ratio(fnm_sflow, big_sflow)
    );
    println!(
        "  fnm receive+decode only (counting sink): {bare_v5:.0} NetFlow v5 records/s, {bare_sflow:.0} sFlow samples/s"
    );
    let taken = |source| {
        input_stats
            .of(source)
            .records
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(
        taken(Source::Netflow) > 0 && taken(Source::Sflow) > 0,
        "the engine was handed nothing"
    );
}

/// Nanoseconds on CPU of the tasks of process `pid` (its threads' schedstat), and of its
/// children when `children` (pmacct runs its plugins as child processes).
fn process_cpu_ns(pid: u32, children: bool) -> u64 {
    let tasks = |pid: u32| -> u64 {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        dir.flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    let mut total = tasks(pid);
    if children {
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: state, ppid, ...
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(pid) {
                total += tasks(child);
            }
        }
    }
    total
}

/// Reads a collector's CPU time so far, in nanoseconds.
type CpuReader = Box<dyn Fn() -> u64>;

/// Nanoseconds on CPU of this process's `fnm-*` threads (collectors and engine).
fn fnm_threads_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("fnm-"))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Nanoseconds on CPU of this process's threads whose name starts with `prefix`.
fn fnm_thread_cpu_ns(prefix: &str) -> u64 {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// pmacct's collector (`nfacctd` or `sfacctd`), aggregating per destination host in memory
/// (the `memory` plugin), with a 32 MiB socket buffer.
struct Pmacct {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Pmacct {
    fn start(sflow: bool) -> Self {
        let (daemon, prefix) = if sflow {
            ("/usr/sbin/sfacctd", "sfacctd")
        } else {
            ("/usr/sbin/nfacctd", "nfacctd")
        };
        assert!(
            std::path::Path::new(daemon).is_file(),
            "\n\n*** this benchmark needs the Debian package `pmacct` ***\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("pmacct.conf");
        std::fs::write(
            &config,
            format!(
                "daemonize: false\n{prefix}_ip: 127.0.0.1\n{prefix}_port: {port}\n\
                 {prefix}_pipe_size: 33554432\nplugins: memory\naggregate: dst_host\n\
                 imt_path: {d}/collect.pipe\nplugin_pipe_size: 67108864\nplugin_buffer_size: 65536\n\
                 logfile: {d}/pmacct.log\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap_or_default();
        if max.trim().parse::<usize>().unwrap_or(0) < 32 << 20 {
            set_sysctl("/proc/sys/net/core/rmem_max", 32 << 20);
        }
        let child = Command::new(daemon)
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pmacct");
        let wanted = format!("0100007F:{port:04X}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string("/proc/net/udp")
            .unwrap_or_default()
            .contains(&wanted)
        {
            assert!(Instant::now() < deadline, "{daemon} never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Pmacct {
    fn drop(&mut self) {
        common::stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
    }
}

/// CPU-seconds per million records of fnm (its collector and engine threads), FastNetMon
/// 1.2.4 (32 MiB receive buffer) and pmacct (`nfacctd` / `sfacctd`, per-host aggregation in
/// memory), each fed the same datagrams at one fixed rate all of them handle, interleaved over
/// `FNM_BENCH_ROUNDS` rounds (default 3) of 8 s; medians and ratios. Set `FNM_BENCH_CPU=1`
/// (`FNM_BENCH_ONLY=netflow` or `sflow` runs one of the two, `FNM_BENCH_RATE` sets the rate).
#[test]
#[ignore = "benchmark: run with --ignored --nocapture --release"]
fn flow_cpu_per_record_bench() {
    if std::env::var("FNM_BENCH_CPU").is_err() {
        println!("set FNM_BENCH_CPU=1 to run the CPU-per-record benchmark");
        return;
    }
    let rounds: usize = std::env::var("FNM_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let step = Duration::from_secs(8);
    let only = std::env::var("FNM_BENCH_ONLY").ok();
    // `FNM_BENCH_RATE` (records or samples per second) overrides the rates below; a value
    // that is not a positive number is ignored, as a zero rate would send nothing.
    let rate_override: Option<f64> = std::env::var("FNM_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|r: &f64| r.is_finite() && *r > 0.0);
    for (sflow, rate) in [(false, 300_000.0), (true, 160_000.0)] {
        let rate = rate_override.unwrap_or(rate);
        let kind = if sflow { "sflow" } else { "netflow" };
        if only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        let per_datagram = f64::from(if sflow {
            SAMPLES_PER_SFLOW_DATAGRAM
        } else {
            RECORDS_PER_V5_DATAGRAM
        });
        let datagrams = bench_datagrams(sflow);
        let (fnm, engine, _state) = fnm_engine(Vec::new());
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap_or_default();
        if max.trim().parse::<usize>().unwrap_or(0) < 32 << 20 {
            set_sysctl("/proc/sys/net/core/rmem_max", 32 << 20);
        }
        let fastnetmon = FastNetMon::start(Some(32 << 20));
        let pmacct = Pmacct::start(sflow);
        let pmacct_name = if sflow { "sfacctd" } else { "nfacctd" };
        let targets: [(&str, SocketAddr, CpuReader); 3] = [
            ("fnm", fnm.addr(sflow), Box::new(fnm_threads_cpu_ns)),
            ("fastnetmon", fastnetmon.addr(sflow), {
                let pid = fastnetmon.child.id();
                Box::new(move || process_cpu_ns(pid, false))
            }),
            (
                pmacct_name,
                SocketAddr::from(([127, 0, 0, 1], pmacct.port)),
                {
                    let pid = pmacct.child.id();
                    Box::new(move || process_cpu_ns(pid, true))
                },
            ),
        ];
        let mut per_million: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        for round in 0..rounds {
            for (i, (name, addr, cpu)) in targets.iter().enumerate() {
                let drops_before = proc_drops(addr.port());
                let before = cpu();
                let (sent, _) = blast(*addr, &datagrams, rate / per_datagram, step);
                std::thread::sleep(Duration::from_millis(700));
                let used = cpu() - before;
                let drops = proc_drops(addr.port()) - drops_before;
                let records = sent as f64 * per_datagram;
                let v = used as f64 / 1e9 / (records / 1e6);
                println!(
                    "  round {} {name:>10}: {v:.3} CPU-s per million {} ({sent} datagrams, kernel drops {drops})",
                    round + 1,
                    if sflow { "samples" } else { "records" }
                );
                per_million[i].push(v);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let medians: Vec<f64> = per_million.iter_mut().map(median).collect();
        println!(
            "{} at {rate:.0}/s, median CPU-s per million: fnm {:.3}, fastnetmon {:.3} ({:.2}x fnm), {pmacct_name} {:.3} ({:.2}x fnm)",
            if sflow { "sFlow" } else { "NetFlow v5" },
            medians[0],
            medians[1],
            medians[1] / medians[0],
            medians[2],
            medians[2] / medians[0],
        );
        drop(targets);
        drop(fnm);
        drop(engine);
    }
}

/// `FNM_BENCH_FEED=netflow|sflow`: feeds only fnm (collectors and engine, as in
/// [`flow_cpu_per_record_bench`]) at that benchmark's rate for `FNM_BENCH_SECONDS` (default
/// 20) and prints its CPU-s per million records, for profiling the collector and engine
/// threads (e.g. `perf record -g` on this test, then `perf report --comm fnm-engine`).
#[test]
#[ignore = "benchmark: run with --ignored --nocapture --release"]
fn fnm_flow_feed_for_profile() {
    let Ok(kind) = std::env::var("FNM_BENCH_FEED") else {
        println!("set FNM_BENCH_FEED=netflow or sflow to feed fnm alone");
        return;
    };
    let sflow = kind == "sflow";
    let seconds: u64 = std::env::var("FNM_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (rate, per_datagram) = if sflow {
        (160_000.0, f64::from(SAMPLES_PER_SFLOW_DATAGRAM))
    } else {
        (300_000.0, f64::from(RECORDS_PER_V5_DATAGRAM))
    };
    let datagrams = bench_datagrams(sflow);
    let (fnm, engine, _state) = fnm_engine(Vec::new());
    let before = fnm_threads_cpu_ns();
    let engine_before = fnm_thread_cpu_ns("fnm-engine");
    let (sent, _) = blast(
        fnm.addr(sflow),
        &datagrams,
        rate / per_datagram,
        Duration::from_secs(seconds),
    );
    std::thread::sleep(Duration::from_millis(700));
    let used = fnm_threads_cpu_ns() - before;
    let engine_used = fnm_thread_cpu_ns("fnm-engine") - engine_before;
    let (decoded, drops) = fnm.counters(sflow);
    let millions = sent as f64 * per_datagram / 1e6;
    println!(
        "fnm alone, {kind} at {rate:.0}/s for {seconds} s: {:.3} CPU-s per million (collectors {:.3}, engine {:.3}; {sent} datagrams sent, {decoded:?} decoded, drops {drops})",
        used as f64 / 1e9 / millions,
        (used - engine_used) as f64 / 1e9 / millions,
        engine_used as f64 / 1e9 / millions,
    );
    drop(fnm);
    drop(engine);
}
