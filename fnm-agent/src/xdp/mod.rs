//! The XDP data plane: loads `fnm-ebpf`, attaches it, fills its tables and reads its counters.
//!
//! Linux only. [`DataPlane::load`] loads the program and its maps with sizes from the config;
//! [`DataPlane::attach`] attaches it to interfaces; [`DataPlane::poll`] turns the kernel's
//! per-CPU counters into accounting; drop entries and fingerprint rules go through
//! [`tables::DropTables`].

mod batch;
mod counters;
mod hosts;
mod local16;
mod local6;
mod maps;
pub mod memory;
mod mmap;
mod networks;
mod slots;
pub mod tables;

pub use counters::XdpStats;
pub use hosts::{HostMaps, REREAD_POLLS};
pub use maps::KernelMaps;
pub use networks::NetworksChange;
pub use tables::{DropMatch, DropTables, RuleSpec};

use crate::config::{XdpConfig, XdpMode};
use crate::prefix::Prefix;
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode as AyaMode,
    },
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

/// True when the ELF `object` names `symbol` (a global or map it declares).
fn has_symbol(object: &[u8], symbol: &str) -> bool {
    let mut needle = Vec::with_capacity(symbol.len() + 2);
    needle.push(0);
    needle.extend_from_slice(symbol.as_bytes());
    needle.push(0);
    object.windows(needle.len()).any(|w| w == needle)
}

/// How the program ended up attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Skb,
    /// A link pinned by a previous agent, taken over (its mode unchanged).
    TakenOver,
}

impl AttachMode {
    /// `native`, `skb` or `taken over`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
            AttachMode::TakenOver => "taken over",
        }
    }
}

/// How the agent holds an attachment.
enum Attachment {
    /// Managed by the program object (detached when it is dropped).
    Managed(XdpLinkId),
    /// Pinned on bpffs: survives the agent; removed on a clean detach.
    Pinned(PinnedLink),
    /// A pinned link taken over from a previous agent (managed now, pin file still present).
    TakenOver(XdpLinkId, std::path::PathBuf),
}

/// A loaded (and possibly attached) XDP program with its maps.
pub struct DataPlane {
    ebpf: Ebpf,
    links: Vec<(String, Attachment)>,
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
        Self::load_object(OBJECT, config, networks, whitelist)
    }

    /// [`DataPlane::load`] with another build of the XDP object (benchmarks compare builds).
    pub fn load_object(
        object: &[u8],
        config: &XdpConfig,
        networks: &[Prefix],
        whitelist: &[Prefix],
    ) -> Result<Self, XdpError> {
        if object.is_empty() {
            return Err(XdpError::NoObject);
        }
        raise_memlock_limit();
        let counters_slots = config.max_drop_entries.saturating_mul(2).saturating_add(
            config.max_drop_entries.min(4096) * fnm_common::MAX_RULES_PER_HOST as u32,
        );
        let layout = local16::DenseLayout::new(networks, config.dense_v4_addresses);
        let dense_slots = layout.capacity();
        let memory = memory::KernelMemory::of(config, dense_slots as u64 / 2);
        let cpus = aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1);
        tracing::info!(
            "XDP kernel maps: about {} MiB per CPU + {} MiB shared, {} MiB on {cpus} CPUs ({}              MiB at 64 CPUs; see [xdp] in config/fnm-agent.toml)",
            memory.per_cpu >> 20,
            memory.shared >> 20,
            memory.at(cpus) >> 20,
            memory.at(64) >> 20,
        );
        let seed = random_seed();
        // This build's slot arrays hold an entry per slot and CPU; an older object (which the
        // benchmarks load beside this one) has a per-CPU array of one entry per slot.
        let slot_arrays = has_symbol(object, map_names::CPUS);
        let cpus32 = cpus as u32;
        let dense_entries = if slot_arrays {
            dense_slots.checked_mul(cpus32).ok_or_else(|| {
                XdpError::Load(format!(
                    "{dense_slots} dense slots × {cpus} CPUs do not fit in one map: lower \
                     xdp.dense_v4_addresses"
                ))
            })?
        } else {
            dense_slots
        };
        // The hashed hosts' open-addressed table: `SLOT_WAYS` host slots a bucket, twice
        // `max_hosts` slots (two buckets per host, so that `max_hosts` hosts fit:
        // docs/security.md); two counter slots per host slot, a multiple of 64 (whole
        // touched words).
        let buckets = host_buckets(config.max_hosts);
        let host_slots = buckets * fnm_common::SLOT_WAYS as u32;
        let host_counter_slots = (2 * host_slots).next_multiple_of(64);
        let host_entries = host_counter_slots.checked_mul(cpus32).ok_or_else(|| {
            XdpError::Load(format!(
                "{host_counter_slots} host counter slots × {cpus} CPUs do not fit in one map: \
                 lower xdp.max_hosts"
            ))
        })?;
        let mut ebpf = EbpfLoader::new()
            .override_global(map_names::FLOW_SEED, &seed, true)
            .override_global(map_names::CPUS, &cpus32, false)
            .map_max_entries(map_names::HOSTS_DENSE_V4, dense_entries)
            .map_max_entries(map_names::DENSE_TOUCHED_V4, dense_slots / 8)
            .map_max_entries(map_names::HOSTS, config.max_hosts)
            .map_max_entries(map_names::HOSTS_V4, config.max_hosts)
            .override_global(map_names::SLOT_BUCKETS, &buckets, false)
            .map_max_entries(map_names::SLOT_OWNER, buckets)
            .map_max_entries(
                map_names::SLOTS_TOUCHED,
                host_counter_slots.div_ceil(8).max(1),
            )
            .map_max_entries(map_names::HOSTS_SLOTS, host_entries)
            .map_max_entries(map_names::FLOWS, config.max_flows)
            .map_max_entries(map_names::LOCAL24_V4, config.local24_tables.max(1))
            .map_max_entries(map_names::LOCAL_V4, config.max_prefixes)
            .map_max_entries(map_names::LOCAL_V6, config.max_prefixes)
            .map_max_entries(map_names::WHITELIST_V4, config.max_prefixes)
            .map_max_entries(map_names::WHITELIST_V6, config.max_prefixes)
            .map_max_entries(map_names::SOURCE_WHITELIST_V4, config.max_prefixes)
            .map_max_entries(map_names::SOURCE_WHITELIST_V6, config.max_prefixes)
            .map_max_entries(map_names::DROP_SRC_V4, config.max_drop_entries)
            .map_max_entries(map_names::DROP_SRC_V6, config.max_drop_entries)
            .map_max_entries(map_names::DROP_DST_V4, config.max_drop_entries)
            .map_max_entries(map_names::DROP_DST_V6, config.max_drop_entries)
            .map_max_entries(map_names::RULES, config.max_drop_entries.min(4096))
            .map_max_entries(map_names::DROP_COUNTERS, counters_slots)
            .load(object)
            .map_err(|e| XdpError::Load(crate::errors::chain(&e)))?;
        // The tunnel walk's programs, unless the object predates them (see `KernelMaps::layers`).
        let walk = ebpf
            .program(fnm_common::tunnel_layer::PROGRAMS[0])
            .is_some();
        let programs = [PROGRAM, PASS_PROGRAM].into_iter().chain(
            fnm_common::tunnel_layer::PROGRAMS
                .into_iter()
                .filter(|_| walk),
        );
        for name in programs {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| XdpError::Load(format!("program {name} missing from object")))?
                .try_into()
                .map_err(|e: ProgramError| XdpError::Load(e.to_string()))?;
            program
                .load()
                .map_err(|e| XdpError::Load(format!("{name}: {}", verifier_error(&e))))?;
        }
        let mut maps = KernelMaps::take(
            &mut ebpf,
            layout,
            cpus as usize,
            dense_slots as usize,
            host_slots as usize,
            config.max_prefixes,
            config.local24_tables,
        )?;
        maps.fill_prefixes(networks, whitelist)?;
        maps.fill_layers(&ebpf)?;
        let tables = DropTables::new(counters_slots);
        Ok(Self {
            ebpf,
            links: Vec::new(),
            maps,
            tables,
            poller: counters::Poller::default(),
        })
    }

    /// Sets the whitelisted remote sources (`[detection] whitelist_sources`), replacing the
    /// previous list: their packets count in the totals and in each host's whitelisted
    /// counters, never toward its rates, so they never open an attack. The agent calls it
    /// right after [`DataPlane::load`].
    pub fn set_whitelist_sources(&mut self, sources: &[Prefix]) -> Result<(), XdpError> {
        self.maps.set_source_whitelist(sources)
    }

    /// Attaches the counting program to `interface`. `auto` tries native mode and falls back to
    /// generic (skb) mode with a warning; returns the mode used. With `pin_dir`, the link is
    /// pinned there, and a link pinned by a previous agent is taken over atomically (its program
    /// replaced by this one, no moment without XDP).
    pub fn attach(
        &mut self,
        interface: &str,
        mode: XdpMode,
        pin_dir: Option<&Path>,
    ) -> Result<AttachMode, XdpError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| XdpError::Load(format!("program {PROGRAM} missing")))?
            .try_into()
            .map_err(|e: ProgramError| XdpError::Load(e.to_string()))?;
        let pin_file = pin_dir.map(|d| d.join(crate::ownership::pin_name(interface)));
        if let Some(path) = pin_file.as_ref().filter(|p| p.exists()) {
            let taken = PinnedLink::from_pin(path)
                .map_err(|e| crate::errors::chain(&e))
                .and_then(|pinned| {
                    let fd: FdLink = pinned.into();
                    XdpLink::try_from(fd).map_err(|e| crate::errors::chain(&e))
                })
                .and_then(|link| {
                    program
                        .attach_to_link(link)
                        .map_err(|e| crate::errors::chain(&e))
                });
            match taken {
                Ok(id) => {
                    self.links.push((
                        interface.to_owned(),
                        Attachment::TakenOver(id, path.clone()),
                    ));
                    return Ok(AttachMode::TakenOver);
                }
                Err(e) => {
                    tracing::warn!(
                        "stale pinned XDP link {} ({e}); attaching anew",
                        path.display()
                    );
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let try_mode = |program: &mut Xdp, m: AyaMode, label: &'static str| {
            program.attach(interface, m).map_err(|e| XdpError::Attach {
                interface: interface.to_owned(),
                mode: label,
                message: crate::errors::chain(&e),
            })
        };
        let (link, used) = match mode {
            XdpMode::Native => (
                try_mode(program, AyaMode::Driver, "native")?,
                AttachMode::Native,
            ),
            XdpMode::Skb => (try_mode(program, AyaMode::Skb, "skb")?, AttachMode::Skb),
            XdpMode::Auto => match try_mode(program, AyaMode::Driver, "native") {
                Ok(link) => (link, AttachMode::Native),
                Err(e) => {
                    tracing::warn!("{e}; falling back to generic (skb) mode");
                    (try_mode(program, AyaMode::Skb, "skb")?, AttachMode::Skb)
                }
            },
        };
        let attachment = match pin_file {
            Some(path) => {
                let pinned = program
                    .take_link(link)
                    .map_err(|e| crate::errors::chain(&e))
                    .and_then(|l| FdLink::try_from(l).map_err(|e| crate::errors::chain(&e)))
                    .and_then(|fd| fd.pin(&path).map_err(|e| crate::errors::chain(&e)));
                match pinned {
                    Ok(p) => Attachment::Pinned(p),
                    Err(e) => {
                        return Err(XdpError::Attach {
                            interface: interface.to_owned(),
                            mode: used.as_str(),
                            message: format!("pinning the link at {}: {e}", path.display()),
                        })
                    }
                }
            }
            None => Attachment::Managed(link),
        };
        self.links.push((interface.to_owned(), attachment));
        Ok(used)
    }

    /// Detaches from every interface (and removes the pins).
    pub fn detach_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        self.detach_links(links);
    }

    /// Detaches from one interface (and removes its pin); false when not attached there.
    pub fn detach(&mut self, interface: &str) -> bool {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|(i, _)| i == interface);
        self.links = kept;
        let found = !gone.is_empty();
        self.detach_links(gone);
        found
    }

    /// Kernel memory of each of the program's maps (`memlock` of `/proc/self/fdinfo`, which
    /// counts every CPU's copy of a per-CPU map), largest first.
    pub fn map_memory(&self) -> Vec<MapMemory> {
        let mut ids = std::collections::BTreeSet::new();
        for name in [PROGRAM, PASS_PROGRAM] {
            if let Some(Ok(Some(m))) = self
                .ebpf
                .program(name)
                .map(|p| p.info().and_then(|i| i.map_ids()))
            {
                ids.extend(m);
            }
        }
        let mut out: Vec<MapMemory> = ids
            .into_iter()
            .filter_map(|id| {
                use std::os::fd::{AsFd as _, AsRawFd as _};
                let info = aya::maps::MapInfo::from_id(id).ok()?;
                let fd = info.fd().ok()?;
                let text = std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    fd.as_fd().as_raw_fd()
                ))
                .ok()?;
                let bytes = text
                    .lines()
                    .find_map(|l| l.strip_prefix("memlock:"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(MapMemory {
                    name: info.name_as_str().unwrap_or("?").to_owned(),
                    bytes,
                })
            })
            .collect();
        out.sort_by_key(|m| std::cmp::Reverse(m.bytes));
        out
    }

    fn detach_links(&mut self, links: Vec<(String, Attachment)>) {
        let mut program = self
            .ebpf
            .program_mut(PROGRAM)
            .and_then(|p| <&mut Xdp>::try_from(p).ok());
        for (interface, attachment) in links {
            let result = match attachment {
                Attachment::Pinned(pinned) => {
                    pinned.unpin().map_err(|e| e.to_string()).and_then(|fd| {
                        use aya::programs::links::Link as _;
                        fd.detach().map_err(|e| e.to_string())
                    })
                }
                Attachment::TakenOver(id, path) => {
                    let _ = std::fs::remove_file(&path);
                    match program.as_mut() {
                        Some(p) => p.detach(id).map_err(|e| e.to_string()),
                        None => Ok(()),
                    }
                }
                Attachment::Managed(id) => match program.as_mut() {
                    Some(p) => p.detach(id).map_err(|e| e.to_string()),
                    None => Ok(()),
                },
            };
            if let Err(e) = result {
                tracing::warn!("detaching XDP from {interface}: {e}");
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
        accounting: &mut impl crate::accounting::CounterSink,
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

    /// Instructions the kernel's verifier processed for each loaded program
    /// (`bpf_prog_info.verified_insns`, of its limit of 1,000,000), by program name.
    pub fn verified_instructions(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let count = p.info().ok()?.verified_instruction_count()?;
                Some((name.to_owned(), count))
            })
            .collect();
        out.sort();
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
            .map_err(|e| {
                XdpError::Load(format!("BPF_PROG_TEST_RUN: {}", crate::errors::chain(&e)))
            })?;
        Ok((result.return_value, result.duration.as_nanos() as f64))
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Kernel memory taken by one map of the XDP program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMemory {
    /// The map's name (as the kernel keeps it: at most 15 bytes).
    pub name: String,
    /// Bytes, every CPU's copy included.
    pub bytes: u64,
}

/// Removes the link pinned at `<pin_dir>/link-<interface>` ([`crate::ownership::pin_name`])
/// by an agent that is gone: unpins
/// it and closes it, which detaches the program from the interface. Returns false when
/// nothing is pinned there. The caller checks first that no live agent owns it.
pub fn detach_pinned(pin_dir: &Path, interface: &str) -> Result<bool, XdpError> {
    let path = pin_dir.join(crate::ownership::pin_name(interface));
    if !path.exists() {
        return Ok(false);
    }
    let fail = |message: String| XdpError::Attach {
        interface: interface.to_owned(),
        mode: "pinned",
        message,
    };
    match PinnedLink::from_pin(&path) {
        Ok(pinned) => {
            let fd = pinned
                .unpin()
                .map_err(|e| fail(format!("removing {}: {e}", path.display())))?;
            drop(fd);
        }
        Err(e) => {
            // Not a link (a stale file): remove it all the same.
            tracing::warn!(
                "{} is not a usable link ({}); removing it",
                path.display(),
                crate::errors::chain(&e)
            );
            std::fs::remove_file(&path)
                .map_err(|e| fail(format!("removing {}: {e}", path.display())))?;
        }
    }
    Ok(true)
}

/// Makes sure `pin_path` lies on a bpffs: when the closest mount above it is not bpf, mounts
/// bpffs at /sys/fs/bpf (for paths under it) or at `pin_path` itself, and says so.
pub fn ensure_bpffs(pin_path: &Path) -> std::io::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let on_bpffs = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            Some((point.to_owned(), fstype == "bpf"))
        })
        .filter(|(point, _)| pin_path.starts_with(point))
        .max_by_key(|(point, _)| point.len())
        .is_some_and(|(_, bpf)| bpf);
    if on_bpffs {
        return Ok(());
    }
    let sys_bpf = Path::new("/sys/fs/bpf");
    let target = if pin_path.starts_with(sys_bpf) {
        sys_bpf
    } else {
        pin_path
    };
    std::fs::create_dir_all(target)?;
    tracing::info!(
        "mounting bpffs at {} (it was not mounted)",
        target.display()
    );
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(target)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "mount -t bpf bpf {} failed",
            target.display()
        )))
    }
}

/// A seed nobody outside this process knows (std's per-process random hasher keys).
/// Buckets of the hashed hosts' table for `xdp.max_hosts`: twice as many host slots as
/// hosts, `SLOT_WAYS` a bucket.
pub(crate) fn host_buckets(max_hosts: u32) -> u32 {
    (2 * max_hosts.max(1) as u64).div_ceil(fnm_common::SLOT_WAYS as u64) as u32
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; failure is harmless on kernels using memcg.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
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
        other => crate::errors::chain(other),
    }
}
