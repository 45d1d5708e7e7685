//! fnm agent: turns traffic from XDP, flow collectors and capture backends into per-host
//! accounting, detects attacks and mitigates them.

pub mod accounting;
pub mod actions;
pub mod api;
pub mod attach;
pub mod attack_pcap;
pub mod bans;
pub mod capture;
pub mod cli;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod detection;
pub mod engine;
pub mod errors;
pub mod flow;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod mitigator;
pub mod network_views;
pub mod ownership;
pub mod prefix;
pub mod preflight;
pub mod reload;
pub mod replay;
pub mod service;
pub mod sources;
pub mod state;
pub mod summary;
pub mod traffic;
pub mod views;
#[cfg(target_os = "linux")]
pub mod xdp;
