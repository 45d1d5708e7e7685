//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod frames;

/// Field `field` of `/proc/<pid>/status` (this process's when `pid` is `None`), a size in kB
/// there, in bytes: `VmRSS`, `RssAnon`, `VmHWM`... `None` when the process or field is gone.
pub fn proc_status_bytes(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let kib = status.lines().find_map(|l| {
        let value = l.strip_prefix(field)?.strip_prefix(':')?;
        value
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    })?;
    Some(kib * 1024)
}

/// Fails loudly unless running as root: privileged tests never pass silently.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "\n\n*** {what} needs root (BPF, XDP, network namespaces). Run `cargo xtask test` as root. ***\n"
    );
}
/// Sends `signal` to `child` (the test's own, not yet reaped) and waits up to `grace` for it
/// to exit; kills it after that.
pub fn stop_child(child: &mut std::process::Child, signal: i32, grace: std::time::Duration) {
    // SAFETY: signalling our own, not yet reaped, child by pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `ok` every 100 ms until it holds; after `timeout` fails with `what` and `log()`.
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    mut ok: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}; log:\n{}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub mod agent;
pub mod bpffs;
pub mod bpftool;
pub mod clickhouse;
pub mod exporters;
pub mod flood;
pub mod flow_bench;
pub mod kafka;
pub mod loopback_agent;
pub mod matrix;
pub mod netflow;
pub mod netns;
pub mod pktgen;
pub mod sender;
pub mod tmpfs;
pub mod udp_counter;

/// The per-CPU counters of one host and direction in the XDP program's map, summed: the
/// counters its rates come from.
#[cfg(target_os = "linux")]
pub fn kernel_host(
    dp: &fnm_agent::xdp::DataPlane,
    addr: std::net::IpAddr,
    direction: u8,
) -> fnm_common::HostCounters {
    kernel_host_all(dp, addr, direction).counted
}

/// The per-CPU value of one host and direction in the XDP program's map, summed, with the
/// whitelisted sources' counters.
#[cfg(target_os = "linux")]
pub fn kernel_host_all(
    dp: &fnm_agent::xdp::DataPlane,
    addr: std::net::IpAddr,
    direction: u8,
) -> fnm_common::XdpHostCounters {
    let key = fnm_common::HostKey {
        addr: fnm_agent::accounting::to16(addr),
        direction,
        _pad: [0; 3],
    };
    dp.maps.hosts.sum(&key).unwrap_or_default()
}
