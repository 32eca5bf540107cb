//! NanoClaw host: everything that runs outside the sandbox.
//!
//! Data flows one way: `channels` → `store` → `router` → `queue` → `runner` →
//! `router::run` (replies) → `store` outbox → `delivery` → `channels`. See ARCHITECTURE.md
//! for the code map and the invariants each module keeps.

pub mod channels;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod egress;
pub mod http;
pub mod ids;
pub mod ipc;
pub mod layout;
pub mod metrics;
pub mod mounts;
pub mod proxy;
pub mod queue;
pub mod router;
pub mod runner;
pub mod sandbox;
pub mod schedule;
pub mod scheduler;
pub mod store;
pub mod tls;
pub mod transcribe;

#[cfg(test)]
mod fuzz_targets;
