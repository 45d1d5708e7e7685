//! Attack detection: thresholds, the detector, attack records and their history.

pub mod attack;
pub mod config;
pub mod detector;
pub mod history;
pub mod thresholds;
