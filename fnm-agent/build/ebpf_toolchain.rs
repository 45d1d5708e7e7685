//! The pinned eBPF toolchain: which rustup toolchain builds `fnm-ebpf`, and the check that its
//! LLVM is the one bpf-linker links.
//!
//! Shared, as a `#[path]` module, by fnm-agent's build script and by xtask, so the pin is
//! written once. Nothing here downloads: `cargo xtask setup` installs the pinned nightly when it
//! is missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The nightly that builds the XDP program. Its LLVM is 22, the LLVM of bpf-linker 0.13.0
/// built against Debian's llvm-22: the two must agree, or the object fails to link or load.
/// Changing it: install the new nightly, check `rustc +NEW -vV` says LLVM 22 (or rebuild
/// bpf-linker against the new LLVM), run `cargo xtask test`.
pub const PINNED_NIGHTLY: &str = "nightly-2026-05-20";

/// The LLVM major version the pinned nightly, bpf-linker and Debian's llvm package share.
pub const LLVM_MAJOR: u32 = 22;

/// Environment variable naming another rustup toolchain for the eBPF crate (at one's own risk:
/// the LLVM check still applies).
pub const TOOLCHAIN_ENV: &str = "FNM_EBPF_TOOLCHAIN";

/// The toolchain to build the eBPF crate with, and why it was chosen.
pub struct Selected {
    /// A rustup toolchain name, for `rustup run NAME` or `cargo +NAME`.
    pub name: String,
    /// How it was chosen, for messages.
    pub how: String,
}

/// Why no usable toolchain was found.
#[derive(Debug)]
pub struct ToolchainError(pub String);

impl std::fmt::Display for ToolchainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ToolchainError {}

fn err(message: impl Into<String>) -> ToolchainError {
    ToolchainError(message.into())
}

/// `$FNM_EBPF_TOOLCHAIN` when set; else the pinned nightly when it is installed under its dated
/// name; else the `nightly` toolchain when it is that very nightly (the date in its channel
/// manifest), which is how a machine set up before the pin has it.
pub fn select() -> Result<Selected, ToolchainError> {
    if let Some(name) = std::env::var(TOOLCHAIN_ENV).ok().filter(|n| !n.is_empty()) {
        return Ok(Selected {
            name,
            how: format!("from ${TOOLCHAIN_ENV}"),
        });
    }
    let installed = installed_toolchains()?;
    if installed
        .iter()
        .any(|t| t == PINNED_NIGHTLY || t.starts_with(&format!("{PINNED_NIGHTLY}-")))
    {
        return Ok(Selected {
            name: PINNED_NIGHTLY.into(),
            how: "the pinned nightly".into(),
        });
    }
    let pinned_date = PINNED_NIGHTLY.trim_start_matches("nightly-");
    if installed.iter().any(|t| is_plain_nightly(t)) {
        match manifest_date("nightly") {
            Some(date) if date == pinned_date => {
                return Ok(Selected {
                    name: "nightly".into(),
                    how: format!("`nightly`, which is {PINNED_NIGHTLY}"),
                })
            }
            Some(date) => {
                return Err(err(format!(
                    "the eBPF crate is built with {PINNED_NIGHTLY} (LLVM {LLVM_MAJOR}); it is not \
                     installed and the `nightly` toolchain is nightly-{date}. Run `cargo xtask \
                     setup` (it runs `rustup toolchain install {PINNED_NIGHTLY} --profile minimal \
                     --component rust-src,clippy`); never `rustup update`"
                )))
            }
            None => {}
        }
    }
    Err(err(format!(
        "the eBPF crate is built with {PINNED_NIGHTLY} (LLVM {LLVM_MAJOR}), which is not \
         installed. Run `cargo xtask setup` (it runs `rustup toolchain install {PINNED_NIGHTLY} \
         --profile minimal --component rust-src,clippy`), or set ${TOOLCHAIN_ENV}"
    )))
}

/// `nightly-<host>`: the undated nightly channel.
fn is_plain_nightly(name: &str) -> bool {
    name == "nightly"
        || name
            .strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The names `rustup toolchain list` prints (without "(default)" and the like).
pub fn installed_toolchains() -> Result<Vec<String>, ToolchainError> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|e| {
            err(format!(
                "rustup is needed to build the eBPF crate with {PINNED_NIGHTLY}: {e}"
            ))
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// The date in a toolchain's channel manifest (`date = "2026-05-20"`): the nightly's name.
pub fn manifest_date(toolchain: &str) -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let manifest =
        std::fs::read_to_string(sysroot.join("lib/rustlib/multirust-channel-manifest.toml"))
            .ok()?;
    manifest.lines().find_map(|l| {
        let value = l.strip_prefix("date")?.trim_start().strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// `LLVM version: 22.1.4` of a toolchain's rustc.
pub fn rustc_llvm(toolchain: &str) -> Result<String, ToolchainError> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .map_err(|e| err(format!("rustup run {toolchain} rustc -vV: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version:").map(|v| v.trim().to_owned()))
        .ok_or_else(|| {
            err(format!(
                "`rustup run {toolchain} rustc -vV` names no LLVM version: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
}

/// The bpf-linker on PATH (or in ~/.cargo/bin).
pub fn bpf_linker_path() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// The LLVM major version a dynamically linked bpf-linker loads (`libLLVM.so.22.1`,
/// `libLLVM-22.so`), from `ldd`; `None` when it links LLVM statically.
pub fn linked_llvm_major(binary: &Path) -> Option<u32> {
    let out = Command::new("ldd").arg(binary).output().ok()?;
    ldd_llvm_major(&String::from_utf8_lossy(&out.stdout))
}

/// The LLVM major version in `ldd` output.
fn ldd_llvm_major(text: &str) -> Option<u32> {
    text.split_whitespace().find_map(|word| {
        let name = word.rsplit('/').next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// Fails with a clear message when the toolchain's LLVM and bpf-linker's differ (or are not
/// the pinned LLVM major): an object built by one LLVM and linked by another fails to link, or
/// worse, links into something the verifier rejects.
pub fn check_llvm(toolchain: &str) -> Result<(), ToolchainError> {
    let rustc = rustc_llvm(toolchain)?;
    let Some(linker) = bpf_linker_path() else {
        return Err(err(
            "bpf-linker is not installed: run `cargo xtask setup` (bpf-linker 0.13.0 against \
             Debian's llvm-22)",
        ));
    };
    let linked = linked_llvm_major(&linker);
    compare_llvm(toolchain, &rustc, &linker, linked)
}

/// The check of [`check_llvm`] on what it found: the toolchain's LLVM version (`22.1.4`) and
/// the LLVM major bpf-linker links, if known.
pub fn compare_llvm(
    toolchain: &str,
    rustc: &str,
    linker: &Path,
    linked: Option<u32>,
) -> Result<(), ToolchainError> {
    let rustc_major: u32 = rustc
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| err(format!("cannot read rustc's LLVM version {rustc}")))?;
    let fix = format!(
        "rebuild bpf-linker against Debian's llvm-{LLVM_MAJOR} (`cargo xtask setup` does: cargo \
         install bpf-linker@0.13.0 --locked --force --no-default-features --features \
         llvm-{LLVM_MAJOR}, with LLVM_PREFIX=/usr/lib/llvm-{LLVM_MAJOR}) and build with \
         {PINNED_NIGHTLY}"
    );
    if rustc_major != LLVM_MAJOR {
        return Err(err(format!(
            "LLVM versions differ: the eBPF toolchain {toolchain} uses LLVM {rustc}, but fnm's \
             eBPF build chain is LLVM {LLVM_MAJOR} (bpf-linker, Debian's llvm-{LLVM_MAJOR}): \
             {fix}"
        )));
    }
    if let Some(linker_major) = linked {
        if linker_major != rustc_major {
            return Err(err(format!(
                "LLVM versions differ: the eBPF toolchain {toolchain} uses LLVM {rustc} but \
                 {} links LLVM {linker_major}: {fix}",
                linker.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llvm_of_a_dynamically_linked_bpf_linker_is_read_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007fd4)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fd3)\n";
        assert_eq!(ldd_llvm_major(ldd), Some(22));
        assert_eq!(
            ldd_llvm_major("libLLVM-19.so => /usr/lib/libLLVM-19.so (0x1)"),
            Some(19)
        );
        assert_eq!(ldd_llvm_major("\tlibc.so.6 => /lib/libc.so.6 (0x1)"), None);
    }

    #[test]
    fn differing_llvm_versions_stop_the_build_with_both_named() {
        let linker = Path::new("/root/.cargo/bin/bpf-linker");
        compare_llvm(PINNED_NIGHTLY, "22.1.4", linker, Some(22)).unwrap();
        compare_llvm(PINNED_NIGHTLY, "22.1.4", linker, None).unwrap();
        let e = compare_llvm(PINNED_NIGHTLY, "22.1.4", linker, Some(21))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("LLVM versions differ"), "{e}");
        assert!(
            e.contains("LLVM 22.1.4") && e.contains("links LLVM 21"),
            "{e}"
        );
        assert!(e.contains("cargo xtask setup"), "{e}");
        let e = compare_llvm("nightly", "23.0.0", linker, Some(23))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("uses LLVM 23.0.0") && e.contains("LLVM 22"),
            "{e}"
        );
    }

    #[test]
    fn dated_and_undated_nightlies_are_told_apart() {
        assert!(is_plain_nightly("nightly"));
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly(
            "nightly-2026-05-20-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_plain_nightly("stable-x86_64-unknown-linux-gnu"));
    }

    #[test]
    fn this_machine_has_the_pinned_toolchain_and_matching_llvm() {
        let selected = select().unwrap_or_else(|e| panic!("{e}"));
        println!("eBPF toolchain: {} ({})", selected.name, selected.how);
        check_llvm(&selected.name).unwrap_or_else(|e| panic!("{e}"));
    }
}
