//! The networks and the whitelist kept outside the configuration file.
//!
//! `networks_file` and `whitelist_file` name files in FastNetMon's `networks_list` /
//! `networks_whitelist` format: one prefix per line (IPv4 or IPv6; a bare address is its /32 or
//! /128), blank lines and `#` comments (whole-line or trailing) allowed. With
//! `monitor_local_addresses = true` this host's own interface addresses join the networks, each
//! as a /32 or /128. [`resolve`] merges all of them into the configuration's `networks` and
//! `whitelist` when it is loaded, so they are read at start and again on every reload; a line
//! that is not a prefix is an error naming the file and the line, and the configuration (the
//! start, or the reload) is refused.
//!
//! When the configuration sets `networks_file` or `monitor_local_addresses` but no `networks`
//! key, the built-in default networks (documentation ranges) are not used: the networks are
//! then exactly the file's and the local addresses.

use crate::prefix::{Prefix, PrefixError};
use std::{
    io::Read as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

/// Largest prefix file read, in bytes (64 MiB: about three million IPv6 prefixes).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Most prefixes one file may hold.
pub const MAX_PREFIXES: usize = 1 << 20;

/// Why a prefix file or the local addresses could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrefixFileError {
    /// The file could not be opened or read.
    #[error("{key} {}: cannot read it: {source}", path.display())]
    Read {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is a directory, a FIFO or a device, not a regular file.
    #[error("{key} {}: not a regular file", path.display())]
    NotAFile {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_FILE_BYTES`] or holds more than [`MAX_PREFIXES`] prefixes.
    #[error(
        "{key} {}: too large (at most {MAX_FILE_BYTES} bytes and {MAX_PREFIXES} prefixes)",
        path.display()
    )]
    TooLarge {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A line is not a prefix.
    #[error(
        "{key} {} line {line}: {source} (one prefix per line, e.g. 192.0.2.0/24 or \
         2001:db8::/32; blank lines and # comments are allowed)",
        path.display()
    )]
    Line {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// What is wrong with it.
        source: PrefixError,
    },
    /// This host's addresses could not be listed.
    #[error("monitor_local_addresses: cannot list this host's addresses: {0}")]
    LocalAddresses(String),
}

/// The prefixes of a prefix file's text; on a bad line, its number (from 1) and the error.
pub fn parse(text: &str) -> Result<Vec<Prefix>, (usize, PrefixError)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        out.push(line.parse::<Prefix>().map_err(|e| (i + 1, e))?);
    }
    Ok(out)
}

/// Reads the prefix file `path`, named by configuration key `key` in errors.
///
/// Opens without blocking (a FIFO in its place is refused, never waited on) and reads at most
/// [`MAX_FILE_BYTES`].
pub fn read(key: &'static str, path: &Path) -> Result<Vec<Prefix>, PrefixFileError> {
    let read_err = |source| PrefixFileError::Read {
        key,
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(PrefixFileError::NotAFile {
            key,
            path: path.to_owned(),
        });
    }
    let too_large = || PrefixFileError::TooLarge {
        key,
        path: path.to_owned(),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let text = String::from_utf8_lossy(&bytes);
    let prefixes = parse(&text).map_err(|(line, source)| PrefixFileError::Line {
        key,
        path: path.to_owned(),
        line,
        source,
    })?;
    if prefixes.len() > MAX_PREFIXES {
        return Err(too_large());
    }
    Ok(prefixes)
}

/// This host's own addresses, each as a /32 or /128: every address of every interface but the
/// loopback ones (`127.0.0.0/8`, `::1`) and the IPv6 link-local ones (`fe80::/10`, the same on
/// every link), in the order the system lists them, without duplicates.
pub fn local_addresses() -> Result<Vec<Prefix>, PrefixFileError> {
    let addrs =
        nix::ifaddrs::getifaddrs().map_err(|e| PrefixFileError::LocalAddresses(e.to_string()))?;
    let mut out = Vec::new();
    for ifa in addrs {
        let Some(storage) = ifa.address else { continue };
        let ip = if let Some(v4) = storage.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = storage.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if is_local_candidate(ip) {
            push_new(&mut out, Prefix::host(ip));
        }
    }
    Ok(out)
}

/// True for an address `monitor_local_addresses` adds.
fn is_local_candidate(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Appends `p` unless `list` holds it already.
fn push_new(list: &mut Vec<Prefix>, p: Prefix) {
    if !list.contains(&p) {
        list.push(p);
    }
}

/// `path` as written, or, when relative, relative to the directory of the configuration file.
pub fn beside(config_path: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// What [`resolve`] reads, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ListSources<'a> {
    /// `networks_file`.
    pub networks_file: Option<&'a Path>,
    /// `whitelist_file`.
    pub whitelist_file: Option<&'a Path>,
    /// `monitor_local_addresses`.
    pub monitor_local_addresses: bool,
    /// True when the configuration sets `networks` itself (else the defaults are dropped when
    /// a file or the local addresses provide the networks).
    pub inline_networks: bool,
}

/// Merges the files and the local addresses into `networks` and `whitelist`: the inline
/// prefixes first, then the file's, then (networks) the local addresses not already inside a
/// network; each prefix once.
pub fn resolve(
    sources: ListSources<'_>,
    local: &dyn Fn() -> Result<Vec<Prefix>, PrefixFileError>,
    networks: &mut Vec<Prefix>,
    whitelist: &mut Vec<Prefix>,
) -> Result<(), PrefixFileError> {
    if !sources.inline_networks
        && (sources.networks_file.is_some() || sources.monitor_local_addresses)
    {
        networks.clear();
    }
    if let Some(path) = sources.networks_file {
        for p in read("networks_file", path)? {
            push_new(networks, p);
        }
    }
    if sources.monitor_local_addresses {
        for p in local()? {
            if !networks.iter().any(|n| n.covers(&p)) {
                networks.push(p);
            }
        }
    }
    if let Some(path) = sources.whitelist_file {
        for p in read("whitelist_file", path)? {
            push_new(whitelist, p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn fastnetmon_lists_parse_with_comments_blank_lines_and_both_families() {
        let text = "# our networks\n10.10.0.0/16\n\n  192.0.2.7  \n2001:db8::/32 # v6\r\n\
                    \t\n198.51.100.0/24\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                p("10.10.0.0/16"),
                p("192.0.2.7/32"),
                p("2001:db8::/32"),
                p("198.51.100.0/24")
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("# nothing\n\n").unwrap(), vec![]);
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        for (text, line) in [
            ("10.0.0.0/8\n\n10.0.0.0/33\n", 3),
            ("10.0.0.1/8\n", 1),
            ("# x\nnot-a-prefix\n", 2),
            ("10.0.0.0/8 10.1.0.0/16\n", 1),
            ("2001:db8::/129\n", 1),
        ] {
            let (n, _) = parse(text).unwrap_err();
            assert_eq!(n, line, "{text:?}");
        }
    }

    #[test]
    fn read_names_the_file_and_line_and_refuses_what_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("networks_list");
        std::fs::write(&path, "10.0.0.0/8\n# fine\n10.1.2.3/16\n").unwrap();
        let e = read("networks_file", &path).unwrap_err().to_string();
        assert!(e.contains("networks_file"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("10.1.2.3/16"), "{e}");

        let missing = dir.path().join("missing");
        let e = read("whitelist_file", &missing).unwrap_err().to_string();
        assert!(
            e.contains("whitelist_file") && e.contains("cannot read"),
            "{e}"
        );

        let e = read("networks_file", dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");

        // A FIFO is refused at once, never waited on.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read("networks_file", &fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");

        // Invalid UTF-8 is a bad line, not a panic.
        std::fs::write(&path, b"10.0.0.0/8\n\xff\xfe\n").unwrap();
        let e = read("networks_file", &path).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn resolve_merges_in_order_and_drops_the_defaults_without_inline_networks() {
        let dir = tempfile::tempdir().unwrap();
        let nets = dir.path().join("networks_list");
        let white = dir.path().join("networks_whitelist");
        std::fs::write(&nets, "10.20.0.0/16\n10.10.0.0/16\n2001:db8:1::/48\n").unwrap();
        std::fs::write(&white, "10.20.0.9\n").unwrap();
        let local = || -> Result<Vec<Prefix>, PrefixFileError> {
            Ok(vec![p("10.20.0.1/32"), p("192.0.2.1/32"), p("fd00::1/128")])
        };
        let sources = ListSources {
            networks_file: Some(&nets),
            whitelist_file: Some(&white),
            monitor_local_addresses: true,
            inline_networks: true,
        };
        let mut networks = vec![p("10.10.0.0/16")];
        let mut whitelist = vec![p("10.10.0.1/32")];
        resolve(sources, &local, &mut networks, &mut whitelist).unwrap();
        assert_eq!(
            networks,
            vec![
                p("10.10.0.0/16"),
                p("10.20.0.0/16"),
                p("2001:db8:1::/48"),
                p("192.0.2.1/32"),
                p("fd00::1/128")
            ]
        );
        assert_eq!(whitelist, vec![p("10.10.0.1/32"), p("10.20.0.9/32")]);

        // No `networks` key: the defaults give way to the file.
        let mut networks = vec![p("10.10.0.0/16"), p("2001:db8::/32")];
        let mut whitelist = vec![];
        let sources = ListSources {
            inline_networks: false,
            monitor_local_addresses: false,
            ..sources
        };
        resolve(sources, &local, &mut networks, &mut whitelist).unwrap();
        assert_eq!(
            networks,
            vec![p("10.20.0.0/16"), p("10.10.0.0/16"), p("2001:db8:1::/48")]
        );
    }

    #[test]
    fn a_configuration_reads_its_files_beside_itself_and_names_a_bad_line() {
        use crate::config::Config;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fnm-agent.toml");
        let nets = dir.path().join("networks_list");
        std::fs::write(&nets, "# ours\n10.30.0.0/16\n").unwrap();
        std::fs::write(dir.path().join("white"), "10.30.0.7\n").unwrap();
        let c = Config::parse(
            "networks_file = \"networks_list\"\nwhitelist_file = \"white\"\n",
            &config,
        )
        .unwrap();
        assert_eq!(c.networks, vec![p("10.30.0.0/16")]);
        assert_eq!(c.whitelist, vec![p("10.30.0.7/32")]);
        assert_eq!(c.networks_file.as_deref(), Some(nets.as_path()));
        let c = Config::parse(
            "networks = [\"10.40.0.0/16\"]\nnetworks_file = \"networks_list\"\n",
            &config,
        )
        .unwrap();
        assert_eq!(c.networks, vec![p("10.40.0.0/16"), p("10.30.0.0/16")]);

        std::fs::write(&nets, "10.30.0.0/16\n\n10.30.0.0/99\n").unwrap();
        let e = Config::parse("networks_file = \"networks_list\"\n", &config)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{} line 3", nets.display())), "{e}");
        std::fs::remove_file(&nets).unwrap();
        let e = Config::parse("networks_file = \"networks_list\"\n", &config)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("networks_file") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&nets, "# nothing yet\n").unwrap();
        let e = Config::parse("networks_file = \"networks_list\"\n", &config)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one local network"), "{e}");
    }

    #[test]
    fn the_local_addresses_leave_out_loopback_and_link_local() {
        let own = local_addresses().expect("getifaddrs works here");
        for a in &own {
            assert!(is_local_candidate(a.addr()), "{a}");
            assert!(a.len() == 32 || a.len() == 128, "{a}");
        }
        assert!(!is_local_candidate("127.0.0.1".parse().unwrap()));
        assert!(!is_local_candidate("::1".parse().unwrap()));
        assert!(!is_local_candidate("fe80::1".parse().unwrap()));
        assert!(is_local_candidate("192.0.2.1".parse().unwrap()));
        assert!(is_local_candidate("2001:db8::1".parse().unwrap()));
    }
}
