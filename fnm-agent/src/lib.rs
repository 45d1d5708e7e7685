//! fnm agent: turns traffic from XDP, flow collectors and capture backends into per-host
//! accounting, detects attacks and mitigates them.

pub mod accounting;
pub mod config;
pub mod prefix;
pub mod traffic;
#[cfg(target_os = "linux")]
pub mod xdp;
