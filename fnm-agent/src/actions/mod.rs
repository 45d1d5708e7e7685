//! Mitigation actions.

pub mod bgp;
