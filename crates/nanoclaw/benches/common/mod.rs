//! Helpers the benches share (each bench includes this file with `mod common;`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use async_trait::async_trait;
use nanoclaw::runner::{AgentEvent, AgentRunner, RunError, RunIo, RunRequest};
use tokio::sync::mpsc;

/// A runner that notes the moment it is called and answers "ok" at once.
pub struct StampingRunner {
    pub invoked: mpsc::UnboundedSender<Instant>,
}

#[async_trait]
impl AgentRunner for StampingRunner {
    async fn run(&self, _request: RunRequest, io: RunIo) -> Result<(), RunError> {
        let _ = self.invoked.send(Instant::now());
        let _ = io.events.send(AgentEvent::Result {
            text: "ok".into(),
            inputs: 0,
        });
        Ok(())
    }
    fn describe(&self) -> String {
        "bench runner".into()
    }
}

/// The `p` quantile (0 to 1) of sorted durations; `sorted` must not be empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A number from a `/proc/{pid}/status` line such as `VmRSS:` or `Threads:` (0 when
/// the process or the line is gone).
pub fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}
