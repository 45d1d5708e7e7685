//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod frames;

/// Fails loudly unless running as root: privileged tests never pass silently.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "\n\n*** {what} needs root (BPF, XDP, network namespaces). Run `cargo xtask test` as root. ***\n"
    );
}
pub mod agent;
pub mod flood;
pub mod netns;
