//! The XDP data plane: loads `fnm-ebpf`, attaches it, fills its tables and reads its counters.
//!
//! Linux only. [`DataPlane::load`] loads the program and its maps with sizes from the config;
//! [`DataPlane::attach`] attaches it to interfaces; [`DataPlane::poll`] turns the kernel's
//! per-CPU counters into accounting; drop entries and fingerprint rules go through
//! [`tables::DropTables`].

mod counters;
mod maps;
pub mod tables;

pub use counters::XdpStats;
pub use maps::KernelMaps;
pub use tables::{DropMatch, DropTables, RuleSpec};

use crate::config::{XdpConfig, XdpMode};
use crate::prefix::Prefix;
use aya::{
    programs::{xdp::XdpLinkId, ProgramError, TestRun, TestRunOptions, Xdp, XdpMode as AyaMode},
    Ebpf, EbpfLoader,
};
use fnm_common::map_names;
use std::path::Path;

/// The XDP object built by `fnm-ebpf`, embedded at build time (empty with `AYA_BUILD_SKIP=1`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fnm"));

/// Name of the counting/dropping program in the object.
pub const PROGRAM: &str = "fnm_xdp";
/// Name of the do-nothing program (benchmark floor).
pub const PASS_PROGRAM: &str = "fnm_pass";

/// Why the data plane could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The agent was built without the XDP object.
    #[error(
        "this fnm-agent was built without its XDP object (AYA_BUILD_SKIP or a non-Linux build)"
    )]
    NoObject,
    /// Loading the object or a map failed (permissions, verifier, kernel features).
    #[error("loading the XDP object failed: {0}")]
    Load(String),
    /// Attaching to an interface failed.
    #[error("attaching XDP to {interface} in {mode} mode failed: {message}")]
    Attach {
        /// The interface.
        interface: String,
        /// The mode tried.
        mode: &'static str,
        /// The kernel's answer.
        message: String,
    },
    /// A map operation failed.
    #[error("{map}: {message}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What failed.
        message: String,
    },
    /// A table has no room left.
    #[error("{0} is full (raise its size in [xdp])")]
    Full(&'static str),
}

/// A loaded (and possibly attached) XDP program with its maps.
pub struct DataPlane {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId)>,
    /// Typed handles on every map.
    pub maps: KernelMaps,
    /// Drop entries and fingerprint rules.
    pub tables: DropTables,
    poller: counters::Poller,
}

impl DataPlane {
    /// Loads the program with map sizes from `config`, and fills the local-network and
    /// whitelist tables.
    pub fn load(
        config: &XdpConfig,
        networks: &[Prefix],
        whitelist: &[Prefix],
    ) -> Result<Self, XdpError> {
        if OBJECT.is_empty() {
            return Err(XdpError::NoObject);
        }
        raise_memlock_limit();
        let counters_slots = config.max_drop_entries.saturating_mul(2).saturating_add(
            config.max_drop_entries.min(4096) * fnm_common::MAX_RULES_PER_HOST as u32,
        );
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::HOSTS, config.max_hosts)
            .map_max_entries(map_names::FLOWS, config.max_flows)
            .map_max_entries(map_names::LOCAL_V4, config.max_prefixes)
            .map_max_entries(map_names::LOCAL_V6, config.max_prefixes)
            .map_max_entries(map_names::WHITELIST_V4, config.max_prefixes)
            .map_max_entries(map_names::WHITELIST_V6, config.max_prefixes)
            .map_max_entries(map_names::DROP_SRC_V4, config.max_drop_entries)
            .map_max_entries(map_names::DROP_SRC_V6, config.max_drop_entries)
            .map_max_entries(map_names::DROP_DST_V4, config.max_drop_entries)
            .map_max_entries(map_names::DROP_DST_V6, config.max_drop_entries)
            .map_max_entries(map_names::RULES, config.max_drop_entries.min(4096))
            .map_max_entries(map_names::DROP_COUNTERS, counters_slots)
            .load(OBJECT)
            .map_err(|e| XdpError::Load(format!("{e:#}")))?;
        for name in [PROGRAM, PASS_PROGRAM] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| XdpError::Load(format!("program {name} missing from object")))?
                .try_into()
                .map_err(|e: ProgramError| XdpError::Load(e.to_string()))?;
            program
                .load()
                .map_err(|e| XdpError::Load(verifier_error(&e)))?;
        }
        let mut maps = KernelMaps::take(&mut ebpf)?;
        maps.fill_prefixes(networks, whitelist)?;
        let tables = DropTables::new(counters_slots);
        Ok(Self {
            ebpf,
            links: Vec::new(),
            maps,
            tables,
            poller: counters::Poller::default(),
        })
    }

    /// Attaches the counting program to `interface`. `auto` tries native mode and falls back to
    /// generic (skb) mode with a warning; returns the mode used.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<&'static str, XdpError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| XdpError::Load(format!("program {PROGRAM} missing")))?
            .try_into()
            .map_err(|e: ProgramError| XdpError::Load(e.to_string()))?;
        let try_mode = |program: &mut Xdp, m: AyaMode, label: &'static str| {
            program.attach(interface, m).map_err(|e| XdpError::Attach {
                interface: interface.to_owned(),
                mode: label,
                message: error_chain(&e),
            })
        };
        let (link, used) = match mode {
            XdpMode::Native => (try_mode(program, AyaMode::Driver, "native")?, "native"),
            XdpMode::Skb => (try_mode(program, AyaMode::Skb, "skb")?, "skb"),
            XdpMode::Auto => match try_mode(program, AyaMode::Driver, "native") {
                Ok(link) => (link, "native"),
                Err(e) => {
                    tracing::warn!("{e}; falling back to generic (skb) mode");
                    (try_mode(program, AyaMode::Skb, "skb")?, "skb")
                }
            },
        };
        self.links.push((interface.to_owned(), link));
        Ok(used)
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        if let Some(Ok(program)) = self.ebpf.program_mut(PROGRAM).map(<&mut Xdp>::try_from) {
            for (interface, link) in links {
                if let Err(e) = program.detach(link) {
                    tracing::warn!("detaching XDP from {interface}: {e}");
                }
            }
        }
    }

    /// Interfaces the program is attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|(i, _)| i.as_str())
    }

    /// Reads the kernel counters into `accounting`; removes hosts idle for `idle_ms` from the
    /// kernel table (their totals stay in the accounting).
    pub fn poll(
        &mut self,
        accounting: &mut crate::accounting::Accounting,
        now_ms: u64,
        idle_ms: u64,
    ) -> Result<XdpStats, XdpError> {
        self.poller
            .poll(&mut self.maps, accounting, now_ms, idle_ms)
    }

    /// Takes up to `max` packet samples from the ring buffer.
    pub fn drain_samples(&mut self, max: usize) -> Vec<fnm_common::PacketSample> {
        let mut out = Vec::new();
        let Some(ring) = self.maps.samples.as_mut() else {
            return out;
        };
        while out.len() < max {
            let Some(item) = ring.next() else { break };
            if item.len() >= std::mem::size_of::<fnm_common::PacketSample>() {
                // SAFETY: the kernel wrote a whole PacketSample (repr(C), plain integers).
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        out
    }

    /// Runs the counting program once on `frame` with BPF_PROG_TEST_RUN; returns the verdict.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        Ok(self.test_run_repeat(PROGRAM, frame, 1)?.0)
    }

    /// Runs `program` `repeat` times on `frame`; returns the verdict and the kernel's mean
    /// duration per run in nanoseconds.
    pub fn test_run_repeat(
        &self,
        program: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, f64), XdpError> {
        let program: &Xdp = self
            .ebpf
            .program(program)
            .ok_or_else(|| XdpError::Load(format!("program {program} missing")))?
            .try_into()
            .map_err(|e: ProgramError| XdpError::Load(e.to_string()))?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::new()
            })
            .map_err(|e| XdpError::Load(format!("BPF_PROG_TEST_RUN: {}", error_chain(&e))))?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted (needed to pin maps); says so.
pub fn ensure_bpffs(path: &Path) -> std::io::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let target = path.to_string_lossy();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*target) && l.contains(" bpf "))
    {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    tracing::info!("mounting bpffs at {target} (it was not mounted)");
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", &target])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "mount -t bpf bpf {target} failed"
        )))
    }
}

fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; failure is harmless on kernels using memcg.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn verifier_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{io_error}; verifier log (tail):\n{}", tail.join("\n"))
        }
        other => error_chain(other),
    }
}
