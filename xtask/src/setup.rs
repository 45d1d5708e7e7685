//! Installs what is missing on a Debian 12 machine, saying what it installs.

use anyhow::{bail, Context as _, Result};
use std::process::Command;

/// Packages the agent needs to build and run (LLVM 22 for bpf-linker, libpcap for capture).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libpcap-dev",
    "iproute2",
    "bpftool",
];

/// Real peers the tests use.
const TEST_PACKAGES: &[&str] = &[
    "xdp-tools",
    "prometheus",
    "tshark",
    "softflowd",
    "pmacct",
    "python3-scapy",
    "gobgpd",
    "exabgp",
    "bird2",
    "fastnetmon",
    "tcpdump",
    // The package test: `systemd-analyze verify` on the unit (which checks its man page).
    "systemd",
    "man-db",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs what is missing; with `test_peers`, also the test peers.
pub fn run(test_peers: bool) -> Result<()> {
    let mut wanted: Vec<&str> = BUILD_PACKAGES.to_vec();
    if test_peers {
        wanted.extend_from_slice(TEST_PACKAGES);
    }
    apt_install(&wanted)?;
    let toolchain = ebpf_toolchain()?;
    rust_src(&toolchain)?;
    bpf_linker(&toolchain)?;
    crate::ebpf_toolchain::check_llvm(&toolchain)?;
    if test_peers {
        cross_targets()?;
    }
    Ok(())
}

/// Targets the agent is checked for (FreeBSD with netmap, macOS), with the Linux parts out.
pub const CROSS_TARGETS: &[&str] = &["x86_64-unknown-freebsd", "x86_64-apple-darwin"];

fn cross_targets() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup target list")?;
    let installed = String::from_utf8_lossy(&out.stdout).to_string();
    for target in CROSS_TARGETS {
        if !installed.lines().any(|l| l.trim() == *target) {
            println!("xtask setup: adding the {target} standard library (cross-platform check)");
            crate::run("rustup", &["target", "add", target])?;
        }
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("missing Debian packages {missing:?} and no apt-get here: install them by hand");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        bail!(
            "missing Debian packages {missing:?}: run as root (or `sudo apt-get install {}`)",
            missing.join(" ")
        );
    }
    println!(
        "xtask setup: installing Debian packages: {}",
        missing.join(" ")
    );
    crate::run("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    // Debian starts some services on install; the tests run their own instances.
    for service in [
        "prometheus",
        "fastnetmon",
        "gobgpd",
        "exabgp",
        "bird",
        "pmacct",
    ] {
        let _ = Command::new("sh")
            .args(["-c", &format!("command -v systemctl >/dev/null && systemctl stop {service} 2>/dev/null; pkill -x {service} 2>/dev/null; true")])
            .status();
    }
    Ok(())
}

/// The pinned eBPF nightly (`fnm-agent/build/ebpf_toolchain.rs`), installed when missing.
pub fn ebpf_toolchain() -> Result<String> {
    use crate::ebpf_toolchain::{select, PINNED_NIGHTLY};
    match select() {
        Ok(selected) => Ok(selected.name),
        Err(why) => {
            println!("xtask setup: {why}");
            println!(
                "xtask setup: installing the pinned eBPF toolchain {PINNED_NIGHTLY} (rustc, cargo, \
                 rust-src, clippy; never `rustup update`)"
            );
            crate::run(
                "rustup",
                &[
                    "toolchain",
                    "install",
                    PINNED_NIGHTLY,
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src,clippy",
                ],
            )
            .with_context(|| format!("installing {PINNED_NIGHTLY}"))?;
            Ok(select()?.name)
        }
    }
}

fn rust_src(toolchain: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .context("rustup is needed (the eBPF crate is built with `rustup run <nightly>`)")?;
    if !out.status.success() {
        bail!("the `{toolchain}` toolchain is not installed (never run `rustup update`)");
    }
    if String::from_utf8_lossy(&out.stdout).contains("rust-src") {
        return Ok(());
    }
    println!("xtask setup: installing rust-src for the {toolchain} toolchain (eBPF build-std)");
    crate::run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", toolchain],
    )
}

fn bpf_linker(toolchain: &str) -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = &version {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    let llvm = std::path::Path::new("/usr/lib/llvm-22/bin/llvm-config");
    if !llvm.exists() {
        bail!("bpf-linker needs LLVM 22 (llvm-22-dev): /usr/lib/llvm-22/bin/llvm-config not found");
    }
    let rustc = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .output()
        .context("rustc -vV")?;
    let rustc = String::from_utf8_lossy(&rustc.stdout).to_string();
    if !rustc.contains("LLVM version: 22") {
        bail!(
            "the {toolchain} rustc is not LLVM 22 (bpf-linker 0.13 + llvm-22 needs it):\n{rustc}"
        );
    }
    println!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (a few minutes)");
    let status = Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .status()
        .context("cargo install bpf-linker")?;
    if !status.success() {
        bail!("installing bpf-linker failed");
    }
    Ok(())
}

extern "C" {
    fn geteuid() -> u32;
}
