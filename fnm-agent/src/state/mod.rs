//! State the agent keeps across restarts, and how it is written and read back.
//!
//! [`store`] is the one way to write a state file: atomically and durably, with a load side
//! that never turns a bad file into a silent empty start. [`journal`] is the append-only
//! companion for state that changes one entry at a time (bans, attack history).

pub mod journal;
pub mod store;

pub use journal::{Journal, JournalError};
pub use store::{Loaded, OnBadFile, StateFile, StoreError};
