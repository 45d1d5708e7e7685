//! Mitigation actions: one module per action.

pub mod bgp;
pub mod script;
pub mod xdp;
