//! `cargo xtask package`: the Debian package, built with cargo-deb.
//!
//! The release agent (its XDP object is built into it), then the man page and shell
//! completions it generates from its own command line (`fnm-agent manpage`, `fnm-agent
//! completions SHELL`), then `cargo deb --no-build` with `[package.metadata.deb]` of
//! fnm-agent/Cargo.toml: /usr/sbin/fnm-agent, /etc/fnm/fnm-agent.toml (a conffile), the systemd
//! unit and maintainer scripts of fnm-agent/debian/.

use anyhow::{bail, Context as _, Result};
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The cargo-deb release installed when none is (`cargo install --locked`).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// True where a Debian package can be built and installed (dpkg is there).
pub fn can_package() -> bool {
    Command::new("dpkg-deb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds the package; returns its path under target/debian/.
pub fn run() -> Result<PathBuf> {
    crate::setup::run(false)?;
    cargo_deb()?;
    crate::build()?;
    let target = target_dir();
    let release = target.join("release");
    let agent = release.join("fnm-agent");
    let assets = release.join("fnm-package");
    std::fs::create_dir_all(&assets).with_context(|| format!("creating {}", assets.display()))?;
    let man = capture(&agent, &["manpage"])?;
    write(&assets.join("fnm-agent.8.gz"), &gzip(&man)?)?;
    for (shell, file) in [
        ("bash", "fnm-agent.bash"),
        ("zsh", "_fnm-agent"),
        ("fish", "fnm-agent.fish"),
    ] {
        write(
            &assets.join(file),
            &capture(&agent, &["completions", shell])?,
        )?;
    }
    let out = Command::new("cargo")
        .args(["deb", "-p", "fnm-agent", "--no-build"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo deb")?;
    if !out.status.success() {
        bail!(
            "`cargo deb -p fnm-agent --no-build` failed ({})",
            out.status
        );
    }
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if !deb.is_file() {
        bail!(
            "cargo deb did not name the package it wrote (it printed '{}')",
            deb.display()
        );
    }
    println!("xtask: package {}", deb.display());
    Ok(deb)
}

/// Installs cargo-deb from crates.io when it is missing, saying so.
fn cargo_deb() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    println!(
        "xtask package: installing cargo-deb {CARGO_DEB_VERSION} from crates.io (builds .deb \
         packages; a few minutes)"
    );
    crate::run(
        "cargo",
        &[
            "install",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
            "--locked",
        ],
    )
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// A command's standard output; fails with its standard error.
fn capture(program: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot start {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// `gzip -9n`: the man page as Debian ships it (no name or time stamp inside).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start gzip")?;
    child
        .stdin
        .take()
        .context("gzip's stdin")?
        .write_all(data)
        .context("writing to gzip")?;
    let out = child.wait_with_output().context("gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}
