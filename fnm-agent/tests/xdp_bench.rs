//! `cargo xtask bench`: ns/packet of the XDP program with BPF_PROG_TEST_RUN, against the empty
//! program (the harness floor) and Debian xdp-tools' xdp-filter objects, in the same run.
//! Ignored in the normal test run (it is a benchmark, not a timed test).
#![cfg(target_os = "linux")]

mod common;

use common::frames::*;
use fnm_agent::{bans::DropMatch, config::XdpConfig, xdp::DataPlane};
use std::net::Ipv4Addr;

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 5;
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

/// Median over rounds of the kernel's mean ns per run.
fn measure(run: impl Fn() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..ROUNDS).map(|_| run()).collect();
    v.sort_by(f64::total_cmp);
    v[ROUNDS / 2]
}

fn xdp_filter(object: &str, frame: &[u8]) -> Result<f64, String> {
    use aya::programs::{TestRun, TestRunOptions, Xdp};
    let path = format!("{XDP_FILTER_DIR}/{object}.o");
    // xdp-filter's maps ask to be pinned: give them a bpffs directory of their own.
    fnm_agent::xdp::ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).map_err(|e| e.to_string())?;
    let pin_dir = format!("/sys/fs/bpf/fnm-bench-{}-{object}", std::process::id());
    std::fs::create_dir_all(&pin_dir).map_err(|e| e.to_string())?;
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(pin_dir.clone());
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
        .unwrap()
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("load {name}: {e}"))?;
    Ok(measure(|| {
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..TestRunOptions::new()
        })
        .map(|r| r.duration.as_nanos() as f64)
        .unwrap_or(f64::NAN)
    }))
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn xdp_ns_per_packet() {
    common::require_root("the XDP benchmark");
    let networks = vec![
        "10.10.0.0/16".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let mut dp = DataPlane::load(&XdpConfig::default(), &networks, &[]).expect("load");
    let remote = Ipv4Addr::new(192, 0, 2, 1);
    let local = Ipv4Addr::new(10, 10, 0, 5);
    let incoming = frame_v4(remote, local);
    let v6 = frame_v6();
    let transit = frame_v4(remote, Ipv4Addr::new(192, 0, 2, 99));
    let banned = frame_v4(Ipv4Addr::new(203, 0, 113, 9), local);

    let run = |dp: &DataPlane, prog: &str, f: &[u8]| {
        measure(|| {
            dp.test_run_repeat(prog, f, REPEAT)
                .map(|r| r.1)
                .unwrap_or(f64::NAN)
        })
    };
    let floor = run(&dp, fnm_agent::xdp::PASS_PROGRAM, &incoming);
    let count_v4 = run(&dp, fnm_agent::xdp::PROGRAM, &incoming);
    let count_v6 = run(&dp, fnm_agent::xdp::PROGRAM, &v6);
    let non_local = run(&dp, fnm_agent::xdp::PROGRAM, &transit);
    {
        let DataPlane { maps, tables, .. } = &mut dp;
        tables
            .add(maps, "203.0.113.0/24".parse().unwrap(), DropMatch::Src)
            .unwrap();
    }
    let drop_path = run(&dp, fnm_agent::xdp::PROGRAM, &banned);
    let count_v4_with_drop_table = run(&dp, fnm_agent::xdp::PROGRAM, &incoming);

    let alw_ip = xdp_filter("xdpfilt_alw_ip", &incoming);
    let alw_all = xdp_filter("xdpfilt_alw_all", &incoming);

    println!("\nXDP ns/packet (BPF_PROG_TEST_RUN, {REPEAT} runs x {ROUNDS} rounds, median):");
    println!("  floor (fnm_pass, empty program)          {floor:7.1}");
    for (name, v) in [
        ("fnm count path IPv4/UDP 64 B", count_v4),
        ("fnm count path IPv6/UDP", count_v6),
        ("fnm non-local (totals only)", non_local),
        ("fnm drop path (banned source)", drop_path),
        (
            "fnm count path, drop table non-empty",
            count_v4_with_drop_table,
        ),
    ] {
        println!("  {name:<40} {v:7.1}   above floor {:7.1}", v - floor);
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
}
