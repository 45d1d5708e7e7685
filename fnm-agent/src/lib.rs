//! fnm agent: turns traffic from XDP, flow collectors and capture backends into per-host
//! accounting, detects attacks and mitigates them.

pub mod accounting;
pub mod actions;
pub mod agent;
pub mod api;
pub mod bans;
pub mod capture;
pub mod client;
pub mod config;
pub mod detection;
pub mod flow;
pub mod metrics;
pub mod mitigation;
pub mod prefix;
pub mod replay;
pub mod state;
pub mod traffic;
pub mod views;
#[cfg(target_os = "linux")]
pub mod xdp;
