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
    // A real terminal for `fnm-agent top`'s test (send-keys, capture-pane).
    "tmux",
    // FRR's bgpd receiving fnm's routes with the configuration of docs/bgp-daemons.md.
    "frr",
    // The ClickHouse history sink's test (docs/clickhouse/): Debian's 18.16 server, run with
    // a private configuration (the package's own service is not used).
    "clickhouse-server",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// tansu, the Kafka-compatible broker the export tests publish to (Apache Kafka itself is
/// not installable from the registries these machines reach). `dynostore` gives it in-memory
/// storage.
pub const TANSU_VERSION: &str = "0.6.0";

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
        kafka_broker()?;
    }
    Ok(())
}

/// Where `cargo install` puts tansu (the tests look there, then in PATH).
pub fn tansu_path() -> std::path::PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| "/root/.cargo".into());
    home.join("bin/tansu")
}

/// Installs tansu from crates.io when it is missing (about 10 minutes of build, once).
fn kafka_broker() -> Result<()> {
    let path = tansu_path();
    let installed = Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(TANSU_VERSION))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    println!(
        "xtask setup: installing tansu {TANSU_VERSION} from crates.io into {} (the \
         Kafka-compatible broker of the export tests; about 10 minutes, once)",
        path.display()
    );
    let status = Command::new("cargo")
        .args([
            "install",
            &format!("tansu@{TANSU_VERSION}"),
            "--locked",
            "--features",
            "dynostore",
        ])
        .status()
        .context("cargo install tansu")?;
    if !status.success() {
        bail!("installing tansu {TANSU_VERSION} failed");
    }
    Ok(())
}

/// Targets the agent is built (and linked) for besides Linux: FreeBSD with netmap, macOS.
pub const CROSS_TARGETS: &[&str] = &["x86_64-unknown-freebsd", "x86_64-apple-darwin"];

/// zig, the cross linker (with its own FreeBSD 14 and macOS libc stubs), from PyPI.
const ZIG_VERSION: &str = "0.15.2";
/// cargo-zigbuild, which runs cargo with zig as the linker, from PyPI.
const ZIGBUILD_VERSION: &str = "0.24.1";
/// Where both are installed: a Python virtual environment of the workspace's own.
const CROSS_VENV: &str = "target/xtask/cross/venv";
/// Where the libpcap link stubs are built.
const CROSS_STUBS: &str = "target/xtask/cross";
/// The libpcap version the stubs stand for (FreeBSD 14 and macOS ship 1.10).
pub const CROSS_LIBPCAP_VERSION: &str = "1.10.4";

/// The functions of libpcap the `pcap` crate (2.5) declares: the stub libraries define them
/// (empty), so the linker resolves them to the target's own libpcap at run time.
const LIBPCAP_FUNCTIONS: &[&str] = &[
    "pcap_activate",
    "pcap_breakloop",
    "pcap_can_set_rfmon",
    "pcap_close",
    "pcap_compile",
    "pcap_compile_nopcap",
    "pcap_create",
    "pcap_datalink",
    "pcap_datalink_ext",
    "pcap_datalink_name_to_val",
    "pcap_datalink_val_to_description",
    "pcap_datalink_val_to_name",
    "pcap_dispatch",
    "pcap_dump",
    "pcap_dump_close",
    "pcap_dump_file",
    "pcap_dump_flush",
    "pcap_dump_fopen",
    "pcap_dump_ftell",
    "pcap_dump_open",
    "pcap_dump_open_append",
    "pcap_file",
    "pcap_fileno",
    "pcap_findalldevs",
    "pcap_fopen_offline",
    "pcap_fopen_offline_with_tstamp_precision",
    "pcap_free_datalinks",
    "pcap_free_tstamp_types",
    "pcap_freealldevs",
    "pcap_freecode",
    "pcap_get_selectable_fd",
    "pcap_get_tstamp_precision",
    "pcap_geterr",
    "pcap_getevent",
    "pcap_getnonblock",
    "pcap_inject",
    "pcap_is_swapped",
    "pcap_lib_version",
    "pcap_list_datalinks",
    "pcap_list_tstamp_types",
    "pcap_lookupdev",
    "pcap_lookupnet",
    "pcap_loop",
    "pcap_major_version",
    "pcap_minor_version",
    "pcap_next",
    "pcap_next_ex",
    "pcap_offline_filter",
    "pcap_open_dead",
    "pcap_open_dead_with_tstamp_precision",
    "pcap_open_live",
    "pcap_open_offline",
    "pcap_open_offline_with_tstamp_precision",
    "pcap_perror",
    "pcap_sendpacket",
    "pcap_set_buffer_size",
    "pcap_set_datalink",
    "pcap_set_immediate_mode",
    "pcap_set_promisc",
    "pcap_set_rfmon",
    "pcap_set_snaplen",
    "pcap_set_timeout",
    "pcap_set_tstamp_precision",
    "pcap_set_tstamp_type",
    "pcap_set_want_pktap",
    "pcap_setdirection",
    "pcap_setfilter",
    "pcap_setnonblock",
    "pcap_snapshot",
    "pcap_stats",
    "pcap_statustostr",
    "pcap_strerror",
    "pcap_tstamp_type_name_to_val",
    "pcap_tstamp_type_val_to_description",
    "pcap_tstamp_type_val_to_name",
];

/// What links the cross builds: the directory holding `cargo-zigbuild` and zig's Python, and
/// per target a directory with a libpcap stub.
pub struct CrossLinker {
    /// The virtual environment's `bin`: put first in `PATH` for `cargo zigbuild`.
    pub bin: std::path::PathBuf,
}

impl CrossLinker {
    /// The directory of `target`'s libpcap stub (`LIBPCAP_LIBDIR`).
    pub fn libpcap_dir(&self, target: &str) -> std::path::PathBuf {
        std::path::Path::new(CROSS_STUBS).join(format!("libpcap-{target}"))
    }
}

/// Installs zig and cargo-zigbuild (PyPI wheels, into a virtual environment of the workspace)
/// when missing, and builds the libpcap link stubs of the cross targets.
pub fn cross_linker() -> Result<CrossLinker> {
    cross_targets()?;
    let venv = std::path::Path::new(CROSS_VENV);
    let bin = venv.join("bin");
    let python = bin.join("python3");
    let zigbuild = bin.join("cargo-zigbuild");
    let ready = || {
        let zig = Command::new(&python)
            .args(["-m", "ziglang", "version"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == ZIG_VERSION)
            .unwrap_or(false);
        let cargo_zigbuild = Command::new(&zigbuild)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(ZIGBUILD_VERSION))
            .unwrap_or(false);
        zig && cargo_zigbuild
    };
    if !ready() {
        // Debian's python3 makes virtual environments only with python3-venv.
        apt_install(&["python3-venv"])?;
        println!(
            "xtask setup: installing zig {ZIG_VERSION} and cargo-zigbuild {ZIGBUILD_VERSION} \
             from PyPI into {CROSS_VENV} (they link the FreeBSD and macOS builds)"
        );
        let venv_str = venv.to_str().context("non-UTF-8 path")?;
        crate::run("/usr/bin/python3", &["-m", "venv", "--clear", venv_str])?;
        let pip = bin.join("pip");
        crate::run(
            pip.to_str().context("non-UTF-8 path")?,
            &[
                "install",
                "--quiet",
                &format!("ziglang=={ZIG_VERSION}"),
                &format!("cargo-zigbuild=={ZIGBUILD_VERSION}"),
            ],
        )?;
        if !ready() {
            bail!("zig {ZIG_VERSION} / cargo-zigbuild {ZIGBUILD_VERSION} not usable after installing them into {CROSS_VENV}");
        }
    }
    let linker = CrossLinker { bin };
    for target in CROSS_TARGETS {
        libpcap_stub(&python, target, &linker.libpcap_dir(target))?;
    }
    Ok(linker)
}

/// Builds the libpcap link stub of `target` in `dir` (once): a shared library that defines
/// every function of [`LIBPCAP_FUNCTIONS`] and names the library the target's base system
/// ships (`libpcap.so.8` on FreeBSD, `/usr/lib/libpcap.A.dylib` on macOS), so the agent links
/// as it would there and loads the real libpcap at run time.
fn libpcap_stub(python: &std::path::Path, target: &str, dir: &std::path::Path) -> Result<()> {
    let (zig_target, file, name_flag) = if target.contains("freebsd") {
        ("x86_64-freebsd", "libpcap.so", "-Wl,-soname,libpcap.so.8")
    } else {
        (
            "x86_64-macos",
            "libpcap.dylib",
            "-Wl,-install_name,/usr/lib/libpcap.A.dylib",
        )
    };
    let out = dir.join(file);
    if out.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = dir.join("libpcap_stub.c");
    let mut c = String::from("/* Link stub generated by `cargo xtask`: never run. */\n");
    for f in LIBPCAP_FUNCTIONS {
        c.push_str(&format!("void {f}(void) {{}}\n"));
    }
    std::fs::write(&source, c).with_context(|| format!("writing {}", source.display()))?;
    println!(
        "xtask setup: building the libpcap link stub for {target} ({})",
        out.display()
    );
    let status = Command::new(python)
        .args([
            "-m", "ziglang", "cc", "-target", zig_target, "-shared", name_flag, "-o",
        ])
        .arg(&out)
        .arg(&source)
        .status()
        .context("zig cc")?;
    if !status.success() {
        bail!("building the libpcap stub for {target} failed");
    }
    Ok(())
}

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
        "frr",
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
