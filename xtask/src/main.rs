//! `cargo xtask`: set-up, build, run, test, package and bench for fnm.
//!
//! `setup` installs exactly what is missing on Debian 12 and says what it installs: apt
//! packages (LLVM 22 for bpf-linker, libpcap, and the real peers the tests use), the pinned
//! nightly (`fnm-agent/build/ebpf_toolchain.rs`) with its rust-src (aya-build builds the eBPF
//! crate with `rustup run <nightly>` and `-Z build-std=core`), and bpf-linker 0.13.0 built
//! against Debian's LLVM 22; it stops when the nightly's LLVM and bpf-linker's differ. `test`
//! also installs the FreeBSD and macOS standard libraries and zig with cargo-zigbuild (PyPI, in
//! a virtual environment under `target/xtask/`) to link the agent for those systems, builds
//! and tests the `pfring` feature, and builds the Debian package for the package test.
//! `package` builds the Debian package with cargo-deb (installed when missing).

#[path = "../../fnm-agent/build/ebpf_toolchain.rs"]
#[allow(dead_code)]
mod ebpf_toolchain;
mod package;
mod setup;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::Command};

#[derive(Parser)]
#[command(name = "xtask", about = "fnm developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (apt packages, rust-src, bpf-linker).
    Setup {
        /// Also install the peers the tests use.
        #[arg(long)]
        test_peers: bool,
    },
    /// Build the agent (release) with its XDP object.
    Build,
    /// Set up, build and run the agent on config/fnm-agent.toml.
    Run {
        /// Another config file.
        #[arg(long, default_value = "config/fnm-agent.toml")]
        config: PathBuf,
    },
    /// Set up and run every test: formatting, clippy, unit, privileged and end-to-end tests
    /// (the package test with the package `package` builds).
    Test,
    /// Build the Debian package (agent with its XDP object, config, systemd unit, man page,
    /// completions) into target/debian/ with cargo-deb, installing cargo-deb when missing.
    Package,
    /// Benchmarks (XDP ns/packet with BPF_PROG_TEST_RUN against xdp-filter, on a /16 and on the
    /// realistic layout of issue 17).
    Bench,
    /// Build and link the agent for FreeBSD (netmap) and macOS (zig from PyPI links them).
    Cross,
    /// Detection latency benchmark: fnm on XDP against FastNetMon 1.2.4 fed by sFlow, 20 floods
    /// at 2.5× and at 10× a packets/s threshold (needs root).
    BenchLatency,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::env::set_current_dir(workspace_root()).context("cd to the workspace root")?;
    match cli.command {
        Task::Setup { test_peers } => setup::run(test_peers),
        Task::Build => build(),
        Task::Run { config } => {
            setup::run(false)?;
            build()?;
            let state = "/var/lib/fnm";
            std::fs::create_dir_all(state).with_context(|| format!("creating {state}"))?;
            let cfg = config.display().to_string();
            run("target/release/fnm-agent", &["check-config", &cfg])?;
            println!(
                "xtask: running target/release/fnm-agent run --config {cfg} (Ctrl-C stops it)"
            );
            run("target/release/fnm-agent", &["run", "--config", &cfg])
        }
        Task::Test => test(),
        Task::Package => package::run().map(drop),
        Task::Cross => cross(),
        Task::BenchLatency => {
            setup::run(true)?;
            run(
                "cargo",
                &[
                    "test",
                    "--release",
                    "-p",
                    "fnm-agent",
                    "--test",
                    "detection_latency_bench",
                    "--",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ],
            )
        }
        Task::Bench => {
            setup::run(true)?;
            run(
                "cargo",
                &[
                    "test",
                    "--release",
                    "-p",
                    "fnm-agent",
                    "--test",
                    "xdp_bench",
                    "--",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ],
            )
        }
    }
}

/// Builds and links the agent for FreeBSD (with netmap) and macOS, the Linux-only parts left
/// out: zig links against its own FreeBSD 14 and macOS libc stubs, and a libpcap stub naming the
/// library those systems ship.
fn cross() -> Result<()> {
    let linker = setup::cross_linker()?;
    let path = format!(
        "{}:{}",
        std::fs::canonicalize(&linker.bin)?.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for target in setup::CROSS_TARGETS {
        let mut args = vec!["zigbuild", "-p", "fnm-agent", "--target", target];
        if target.contains("freebsd") {
            args.extend(["--features", "netmap"]);
        }
        let libpcap = std::fs::canonicalize(linker.libpcap_dir(target))?;
        let libpcap = libpcap.to_str().context("non-UTF-8 path")?;
        run_with_env(
            "cargo",
            &args,
            &[
                ("AYA_BUILD_SKIP", "1"),
                ("PATH", &path),
                ("LIBPCAP_LIBDIR", libpcap),
                ("LIBPCAP_VER", setup::CROSS_LIBPCAP_VERSION),
            ],
        )?;
        let binary = format!("target/{target}/debug/fnm-agent");
        let file = std::process::Command::new("file")
            .arg(&binary)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        println!("xtask: linked {file}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command, echoing it; fails with its exit status.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    run_with_env(program, args, &[])
}

/// Runs a command with extra environment variables, echoing it; fails with its exit status.
pub fn run_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("xtask: $ {} {program} {}", shown.join(" "), args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn build() -> Result<()> {
    run("cargo", &["build", "--release", "-p", "fnm-agent"])
}

fn test() -> Result<()> {
    setup::run(true)?;
    // One build of everything, run once: incremental state would only add ~3 GiB to a clean
    // checkout's target/ (a CI run filled its disk before). Set CARGO_INCREMENTAL to keep it.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        println!("\n*** xtask test: NOT ROOT: the privileged tests (XDP, namespaces) will FAIL. Run as root. ***\n");
    }
    let ebpf_toolchain = format!("+{}", setup::ebpf_toolchain()?);
    run("cargo", &["fmt", "--all", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "fnm-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The PF_RING backend too: it loads libpfring at run time, so it builds without it.
    run(
        "cargo",
        &[
            "clippy",
            "-p",
            "fnm-agent",
            "--features",
            "pfring",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The eBPF crate is linted on its own, for its own target, as aya-template does.
    run(
        "cargo",
        &[
            &ebpf_toolchain,
            "clippy",
            "-p",
            "fnm-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cross()?;
    // The package test (fnm-agent/tests/package_deb.rs) installs what this builds: the one
    // release build of the run.
    if package::can_package() {
        package::run()?;
    }
    // Every test binary runs even when an earlier one fails, so one run shows every failure.
    // With the `pfring` feature, so its tests (a clear error without libpfring) run too.
    run(
        "cargo",
        &[
            "test",
            "--workspace",
            "--exclude",
            "fnm-ebpf",
            "--features",
            "fnm-agent/pfring",
            "--no-fail-fast",
            "--",
            "--test-threads=2",
        ],
    )
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
