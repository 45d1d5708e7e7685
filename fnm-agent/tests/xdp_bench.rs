//! `cargo xtask bench`: ns/packet of the XDP program with BPF_PROG_TEST_RUN, against the empty
//! program (the harness floor) and Debian xdp-tools' xdp-filter objects, in the same run.
//! Ignored in the normal test run (it is a benchmark, not a timed test).
#![cfg(target_os = "linux")]

mod common;

use common::frames::*;
use fnm_agent::{bans::DropMatch, config::XdpConfig, xdp::DataPlane};
use std::net::Ipv4Addr;

const REPEAT: u32 = 2_000_000;
/// Rounds; every round measures every case once, so a burst of load on this shared machine
/// hits all cases alike, and the median over rounds drops it.
const ROUNDS: usize = 7;
const XDP_FILTER_DIR: &str = "/usr/lib/x86_64-linux-gnu/bpf";

fn frame_v4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    // 64-byte frame: 14 Ethernet + 20 IPv4 + 8 UDP + 22 payload.
    eth(ETH_IPV4, &ipv4(src, dst, 17, &[], 0, &udp(1234, 53, 22)))
}

fn frame_v6() -> Vec<u8> {
    let src = "2001:db9::1".parse().unwrap();
    let dst = "2001:db8::5".parse().unwrap();
    eth(ETH_IPV6, &ipv6(src, dst, 17, &udp(1234, 53, 2)))
}

/// A named measurement: one call runs the program REPEAT times and returns ns per run.
type Case<'a> = (&'static str, Box<dyn Fn() -> f64 + 'a>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One xdp-filter object, loaded with its maps pinned in a bpffs directory of its own.
struct XdpFilter {
    ebpf: aya::Ebpf,
    name: String,
    _pins: Cleanup,
}

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl XdpFilter {
    fn load(object: &str) -> Result<Self, String> {
        use aya::programs::Xdp;
        let path = format!("{XDP_FILTER_DIR}/{object}.o");
        fnm_agent::xdp::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))
            .map_err(|e| e.to_string())?;
        let pin_dir = format!("/sys/fs/bpf/fnm-bench-{}-{object}", std::process::id());
        std::fs::create_dir_all(&pin_dir).map_err(|e| e.to_string())?;
        let pins = Cleanup(pin_dir.clone());
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load_file(&path)
            .map_err(|e| format!("loading {path}: {e}"))?;
        let name = ebpf
            .programs()
            .map(|(n, _)| n.to_owned())
            .next()
            .ok_or("no program in object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(&name)
            .ok_or("program vanished")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load().map_err(|e| format!("load {name}: {e}"))?;
        Ok(Self {
            ebpf,
            name,
            _pins: pins,
        })
    }

    fn run(&self, frame: &[u8]) -> f64 {
        use aya::programs::{TestRun, TestRunOptions, Xdp};
        let Some(Ok(prog)) = self.ebpf.program(&self.name).map(<&Xdp>::try_from) else {
            return f64::NAN;
        };
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..TestRunOptions::new()
        })
        .map(|r| r.duration.as_nanos() as f64)
        .unwrap_or(f64::NAN)
    }
}

/// Ethernet, IPv4 between two tunnel endpoints (neither local) carrying `payload` with
/// `protocol`.
fn over4(protocol: u8, payload: &[u8]) -> Vec<u8> {
    let a = Ipv4Addr::new(192, 0, 2, 200);
    let b = Ipv4Addr::new(192, 0, 2, 201);
    eth(ETH_IPV4, &ipv4(a, b, protocol, &[], 0, payload))
}

/// `FNM_BENCH_BASELINE=path[:path...]`: other builds of the XDP object (say, main's) whose
/// count path is measured in the same rounds, so builds are compared on one machine state.
fn load_baselines(networks: &[fnm_agent::prefix::Prefix]) -> Vec<(String, DataPlane)> {
    let Some(paths) = std::env::var_os("FNM_BENCH_BASELINE") else {
        return Vec::new();
    };
    std::env::split_paths(&paths)
        .map(|path| {
            let object = std::fs::read(&path).expect("FNM_BENCH_BASELINE readable");
            let dp = DataPlane::load_object(&object, &XdpConfig::default(), networks, &[])
                .expect("baseline object loads");
            (path.display().to_string(), dp)
        })
        .collect()
}

fn load_plane(networks: &[fnm_agent::prefix::Prefix]) -> DataPlane {
    // FNM_BENCH_OBJECT=path measures another build of the XDP object (same maps) with this
    // harness, to compare program variants without rebuilding the agent.
    match std::env::var_os("FNM_BENCH_OBJECT") {
        Some(path) => {
            let object = std::fs::read(&path).expect("FNM_BENCH_OBJECT readable");
            DataPlane::load_object(&object, &XdpConfig::default(), networks, &[])
        }
        None => DataPlane::load(&XdpConfig::default(), networks, &[]),
    }
    .expect("load")
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn xdp_ns_per_packet() {
    common::require_root("the XDP benchmark");
    let networks = vec![
        "10.10.0.0/16".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let dp = load_plane(&networks);
    for (name, count) in dp.verified_instructions() {
        println!("verifier: {name} {count} instructions");
    }
    // The same program with one banned source /24, for the drop path and the count path with a
    // non-empty drop table.
    let mut banned_dp = load_plane(&networks);
    {
        let DataPlane { maps, tables, .. } = &mut banned_dp;
        tables
            .add(maps, "203.0.113.0/24".parse().unwrap(), DropMatch::Src)
            .unwrap();
    }
    // The same program with a source whitelist: the measured remote source shares no /16
    // with it (the common case: one bit answers), or is in it.
    let mut whitelist_dp = load_plane(&networks);
    whitelist_dp
        .set_whitelist_sources(&["198.51.100.0/24".parse().unwrap()])
        .unwrap();
    let remote = Ipv4Addr::new(192, 0, 2, 1);
    let local = Ipv4Addr::new(10, 10, 0, 5);
    let incoming = frame_v4(remote, local);
    let v6 = frame_v6();
    let transit = frame_v4(remote, Ipv4Addr::new(192, 0, 2, 99));
    let banned = frame_v4(Ipv4Addr::new(203, 0, 113, 9), local);
    let from_whitelisted = frame_v4(Ipv4Addr::new(198, 51, 100, 9), local);
    // A mirror port's tunnels, each carrying the 64-byte frame's IPv4/UDP packet to the local
    // host: GRE (4-byte header), ERSPAN type II in GRE (the mirrored Ethernet frame), and
    // L2TPv2 data (UDP 1701, PPP).
    let inner = ipv4(remote, local, 17, &[], 0, &udp(1234, 53, 22));
    let gre_frame = over4(47, &gre(0, ETH_IPV4, &[], &inner));
    let erspan_frame = over4(
        47,
        &gre(
            0x1000,
            0x88BE,
            &[0, 0, 0, 1],
            &erspan2(1, &eth(ETH_IPV4, &inner)),
        ),
    );
    let l2tp_frame = over4(
        17,
        &udp_with(
            1701,
            1701,
            &l2tp(0x0002, 0, &ppp(true, &[0x00, 0x21], &inner)),
        ),
    );
    for frame in [&gre_frame, &erspan_frame, &l2tp_frame] {
        let before = dp.maps.stat(fnm_common::stat::DECAPSULATED);
        dp.test_run(frame).expect("test run");
        assert_eq!(
            dp.maps.stat(fnm_common::stat::DECAPSULATED),
            before + 1,
            "the bench's tunnel frames are decapsulated"
        );
    }
    let baselines = load_baselines(&networks);
    let alw_ip = XdpFilter::load("xdpfilt_alw_ip");
    let alw_all = XdpFilter::load("xdpfilt_alw_all");

    let fnm = |dp: &DataPlane, prog: &str, f: &[u8]| {
        dp.test_run_repeat(prog, f, REPEAT)
            .map(|r| r.1)
            .unwrap_or(f64::NAN)
    };
    let prog = fnm_agent::xdp::PROGRAM;
    let cases: Vec<Case> = vec![
        (
            "floor",
            Box::new(|| fnm(&dp, fnm_agent::xdp::PASS_PROGRAM, &incoming)),
        ),
        ("count_v4", Box::new(|| fnm(&dp, prog, &incoming))),
        ("gre", Box::new(|| fnm(&dp, prog, &gre_frame))),
        ("erspan", Box::new(|| fnm(&dp, prog, &erspan_frame))),
        ("l2tp", Box::new(|| fnm(&dp, prog, &l2tp_frame))),
        ("count_v6", Box::new(|| fnm(&dp, prog, &v6))),
        (
            "count_v4_whitelist",
            Box::new(|| fnm(&whitelist_dp, prog, &incoming)),
        ),
        (
            "whitelisted",
            Box::new(|| fnm(&whitelist_dp, prog, &from_whitelisted)),
        ),
        ("non_local", Box::new(|| fnm(&dp, prog, &transit))),
        ("drop", Box::new(|| fnm(&banned_dp, prog, &banned))),
        (
            "count_v4_drop_table",
            Box::new(|| fnm(&banned_dp, prog, &incoming)),
        ),
        (
            "alw_ip",
            Box::new(|| {
                alw_ip
                    .as_ref()
                    .map(|f| f.run(&incoming))
                    .unwrap_or(f64::NAN)
            }),
        ),
        (
            "alw_all",
            Box::new(|| {
                alw_all
                    .as_ref()
                    .map(|f| f.run(&incoming))
                    .unwrap_or(f64::NAN)
            }),
        ),
    ];
    let mut cases = cases;
    for (_, b) in &baselines {
        cases.push(("baseline", Box::new(|| fnm(b, prog, &incoming))));
    }
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, run)) in cases.iter().enumerate() {
            samples[i].push(run());
        }
    }
    let result: Vec<f64> = samples.into_iter().map(median).collect();
    let get = |name: &str| result[cases.iter().position(|(n, _)| *n == name).unwrap()];
    let floor = get("floor");
    let count_v4 = get("count_v4");
    let count_v6 = get("count_v6");
    let count_v4_whitelist = get("count_v4_whitelist");
    let whitelisted = get("whitelisted");
    let non_local = get("non_local");
    let drop_path = get("drop");
    let count_v4_with_drop_table = get("count_v4_drop_table");
    let alw_ip = alw_ip
        .as_ref()
        .map(|_| get("alw_ip"))
        .map_err(String::clone);
    let alw_all = alw_all
        .as_ref()
        .map(|_| get("alw_all"))
        .map_err(String::clone);

    println!(
        "\nXDP ns/packet (BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} interleaved rounds, median):"
    );
    println!("  floor (fnm_pass, empty program)          {floor:7.1}");
    for (name, v) in [
        ("fnm count path IPv4/UDP 64 B", count_v4),
        ("fnm count path IPv6/UDP", count_v6),
        ("fnm GRE, inner IPv4/UDP counted", get("gre")),
        ("fnm ERSPAN II, inner IPv4/UDP counted", get("erspan")),
        ("fnm L2TPv2, inner IPv4/UDP counted", get("l2tp")),
        ("fnm count path, source whitelist set", count_v4_whitelist),
        ("fnm whitelisted source (counted apart)", whitelisted),
        ("fnm non-local (totals only)", non_local),
        ("fnm drop path (banned source)", drop_path),
        (
            "fnm count path, drop table non-empty",
            count_v4_with_drop_table,
        ),
    ] {
        println!("  {name:<40} {v:7.1}   above floor {:7.1}", v - floor);
    }
    let first_baseline = cases.len() - baselines.len();
    for (i, (path, _)) in baselines.iter().enumerate() {
        let v = result[first_baseline + i];
        println!("  count path IPv4/UDP 64 B of {path}");
        println!("  {:<40} {v:7.1}   above floor {:7.1}", "", v - floor);
    }
    for (name, v) in [
        ("xdp-filter xdpfilt_alw_ip", &alw_ip),
        ("xdp-filter xdpfilt_alw_all", &alw_all),
    ] {
        match v {
            Ok(v) => println!("  {name:<40} {v:7.1}   above floor {:7.1}", v - floor),
            Err(e) => println!("  {name:<40} not measured: {e}"),
        }
    }
    if let Ok(ip) = alw_ip {
        println!(
            "  ratio fnm count path / xdpfilt_alw_ip, above floor: {:.2}",
            (count_v4 - floor) / (ip - floor)
        );
    }
    assert!(count_v4.is_finite() && floor.is_finite());

    // Agent side: one poll of the counters (the /16 has dense slots, so a poll reads its
    // touched bitmap, 2048 words, and the slots touched).
    drop(cases);
    let mut dp = dp;
    let mut accounting = fnm_agent::accounting::Accounting::new(
        networks.iter().copied().collect(),
        1 << 17,
        1024,
        1000,
    );
    let mut poll_ms = Vec::new();
    for (i, hosts) in [1u32, 1, 1, 1000, 1000, 1000].into_iter().enumerate() {
        for h in 0..hosts {
            let dst = Ipv4Addr::from(u32::from(local) + h);
            dp.test_run(&frame_v4(remote, dst)).expect("test run");
        }
        let t = std::time::Instant::now();
        dp.poll(&mut accounting, 1000 * (i as u64 + 1), 600_000)
            .expect("poll");
        poll_ms.push((hosts, t.elapsed().as_secs_f64() * 1e3));
    }
    for (hosts, ms) in poll_ms {
        println!("  agent poll, {hosts:>4} hosts with new packets: {ms:6.2} ms");
    }
}

/// The realistic layout of issue 17 (target 1): 200 IPv4 prefixes from /19 to /24 in 50 /16s
/// (four per /16: a /19, a /20, a /22 and a /24, 13,568 addresses each, 678,400 in all) and 50
/// IPv6 /48s of one /32.
fn isp_networks() -> Vec<fnm_agent::prefix::Prefix> {
    let mut out = Vec::new();
    for block in 0..50u8 {
        for (third, len) in [(0u8, 19u8), (32, 20), (48, 22), (52, 24)] {
            out.push(
                format!("100.{}.{third}.0/{len}", 64 + block)
                    .parse()
                    .unwrap(),
            );
        }
    }
    for i in 0..50u16 {
        out.push(format!("2001:db8:{:x}::/48", 0x100 + i).parse().unwrap());
    }
    out
}

/// The kernel-map sizes the realistic layout is measured with: the configuration
/// docs/performance.md gives for 1 GiB of kernel maps at 64 CPUs.
fn isp_config() -> XdpConfig {
    XdpConfig {
        dense_v4_addresses: 32_768,
        max_hosts: 8_192,
        max_drop_entries: 16_384,
        ..XdpConfig::default()
    }
}

fn frame_v6_between(src: &str, dst: &str) -> Vec<u8> {
    let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
    eth(ETH_IPV6, &ipv6(src, dst, 17, &udp(1234, 53, 2)))
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn xdp_ns_per_packet_isp_layout() {
    common::require_root("the XDP benchmark");
    let networks = isp_networks();
    let config = isp_config();
    let load = |object: Option<Vec<u8>>| match object {
        Some(o) => DataPlane::load_object(&o, &config, &networks, &[]),
        None => DataPlane::load(&config, &networks, &[]),
    };
    // This build (or FNM_BENCH_OBJECT's), then FNM_BENCH_BASELINE's builds (main's, say),
    // measured in the same rounds.
    let object = std::env::var_os("FNM_BENCH_OBJECT")
        .map(|path| std::fs::read(path).expect("FNM_BENCH_OBJECT readable"));
    let mut planes = vec![("this build".to_owned(), load(object).expect("load"))];
    if let Some(paths) = std::env::var_os("FNM_BENCH_BASELINE") {
        for path in std::env::split_paths(&paths) {
            let object = std::fs::read(&path).expect("FNM_BENCH_BASELINE readable");
            planes.push((
                path.display().to_string(),
                load(Some(object)).expect("load"),
            ));
        }
    }
    for (name, count) in planes[0].1.verified_instructions() {
        println!("verifier: {name} {count} instructions");
    }
    let remote = Ipv4Addr::new(198, 18, 5, 5);
    // 100.64/16 holds the first dense prefixes; 100.113/16, the last block, counts hashed.
    let dense22 = Ipv4Addr::new(100, 64, 49, 7);
    let dense24 = Ipv4Addr::new(100, 64, 52, 9);
    let hashed22 = Ipv4Addr::new(100, 113, 50, 7);
    let hashed24 = Ipv4Addr::new(100, 113, 52, 9);
    // In a local /16, in none of its prefixes.
    let in16 = Ipv4Addr::new(100, 70, 200, 1);
    let paths: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 remote -> /22 host (dense)", frame_v4(remote, dense22)),
        ("IPv4 remote -> /24 host (dense)", frame_v4(remote, dense24)),
        (
            "IPv4 remote -> /22 host (hashed)",
            frame_v4(remote, hashed22),
        ),
        (
            "IPv4 remote -> /24 host (hashed)",
            frame_v4(remote, hashed24),
        ),
        (
            "IPv4 local /16 -> /22 host (dense)",
            frame_v4(in16, dense22),
        ),
        (
            "IPv4 local /16 -> /22 host (hashed)",
            frame_v4(in16, hashed22),
        ),
        ("IPv4 /24 host (dense) -> remote", frame_v4(dense24, remote)),
        ("IPv4 remote -> remote (transit)", frame_v4(remote, in16)),
        (
            "IPv6 remote -> /48 host",
            frame_v6_between("2a00:1450:4001::5", "2001:db8:105::7"),
        ),
        (
            "IPv6 /48 host -> remote",
            frame_v6_between("2001:db8:131::9", "2a00:1450:4001::5"),
        ),
        (
            "IPv6 same /32, not local -> /48 host",
            frame_v6_between("2001:db8:ffff::5", "2001:db8:105::7"),
        ),
    ];
    for (name, frame) in &paths {
        assert_eq!(
            planes[0].1.test_run(frame).expect("test run"),
            2, // XDP_PASS
            "{name}"
        );
    }
    let alw_ip = XdpFilter::load("xdpfilt_alw_ip");
    let fnm = |dp: &DataPlane, prog: &str, f: &[u8]| {
        dp.test_run_repeat(prog, f, REPEAT)
            .map(|r| r.1)
            .unwrap_or(f64::NAN)
    };
    let filter = |f: &[u8]| alw_ip.as_ref().map(|x| x.run(f)).unwrap_or(f64::NAN);
    let v6_frame = &paths[8].1;
    let v4_frame = &paths[0].1;
    let mut cases: Vec<(String, Box<dyn Fn() -> f64 + '_>)> = vec![
        (
            "floor".into(),
            Box::new(|| fnm(&planes[0].1, fnm_agent::xdp::PASS_PROGRAM, v4_frame)),
        ),
        (
            "xdp-filter alw_ip IPv4".into(),
            Box::new(|| filter(v4_frame)),
        ),
        (
            "xdp-filter alw_ip IPv6".into(),
            Box::new(|| filter(v6_frame)),
        ),
    ];
    for (plane, dp) in &planes {
        for (name, frame) in &paths {
            cases.push((
                format!("{plane}: {name}"),
                Box::new(move || fnm(dp, fnm_agent::xdp::PROGRAM, frame)),
            ));
        }
    }
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, run)) in cases.iter().enumerate() {
            samples[i].push(run());
        }
    }
    let result: Vec<f64> = samples.into_iter().map(median).collect();
    let floor = result[0];
    println!(
        "\nXDP ns/packet, realistic layout: 200 IPv4 prefixes /19-/24 in 50 /16s (678,400 \
         addresses), 50 IPv6 /48s; dense_v4_addresses {}, max_hosts {} \
         (BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} interleaved rounds, median):",
        config.dense_v4_addresses, config.max_hosts
    );
    println!("  {:<60} {floor:7.1}", "floor (fnm_pass, empty program)");
    for ((name, _), v) in cases.iter().zip(&result).skip(1) {
        println!("  {name:<60} {v:7.1}   above floor {:7.1}", v - floor);
    }
    assert!(floor.is_finite() && result[3].is_finite());

    // Kernel memory of the maps: what the kernel charges on this machine against the estimate
    // of `xdp::memory` (the formula docs/performance.md states), and that estimate at 64 CPUs.
    drop(cases);
    let dp = &planes[0].1;
    let measured: u64 = dp.map_memory().iter().map(|m| m.bytes).sum();
    let cpus = aya::util::nr_cpus().expect("CPUs") as u64;
    let estimate = fnm_agent::xdp::memory::KernelMemory::of(&config, 32_768);
    println!(
        "  kernel maps: {} MiB measured on {cpus} CPUs (memlock), {} MiB estimated; estimate          {:.1} MiB per CPU + {:.1} MiB shared, {} MiB at 64 CPUs",
        measured >> 20,
        estimate.at(cpus) >> 20,
        estimate.per_cpu as f64 / (1 << 20) as f64,
        estimate.shared as f64 / (1 << 20) as f64,
        estimate.at(64) >> 20
    );
    for m in dp.map_memory().iter().take(6) {
        println!(
            "    {:<24} {:>8.1} MiB",
            m.name,
            m.bytes as f64 / (1 << 20) as f64
        );
    }
}

/// Prints the verifier's instruction count of each program of this build (or of
/// `FNM_BENCH_OBJECT`'s) on the ISP layout: the quick loop when reshaping the count path.
#[test]
#[ignore = "benchmark helper: run with `--ignored`"]
fn verified_instructions_isp_layout() {
    common::require_root("the XDP verifier count");
    let object = std::env::var_os("FNM_BENCH_OBJECT")
        .map(|path| std::fs::read(path).expect("FNM_BENCH_OBJECT readable"));
    let networks = isp_networks();
    let plane = match object {
        Some(o) => DataPlane::load_object(&o, &isp_config(), &networks, &[]),
        None => DataPlane::load(&isp_config(), &networks, &[]),
    }
    .expect("load");
    for (name, count) in plane.verified_instructions() {
        println!("verifier: {name} {count} instructions");
    }
}
