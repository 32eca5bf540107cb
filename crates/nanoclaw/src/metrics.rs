//! Counters for `GET /metrics` (Prometheus text format). Plain atomics: no registry,
//! no labels beyond what is written here.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub messages_stored: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub runs_started: AtomicU64,
    pub runs_failed: AtomicU64,
    pub replies_committed: AtomicU64,
    pub replies_delivered: AtomicU64,
    pub delivery_failures: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the counters plus the gauges passed in.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "nanoclaw_messages_stored_total",
                "Inbound messages stored.",
                &self.messages_stored,
            ),
            (
                "nanoclaw_messages_dropped_total",
                "Inbound messages dropped by the sender allowlist.",
                &self.messages_dropped,
            ),
            (
                "nanoclaw_runs_started_total",
                "Agent runs started.",
                &self.runs_started,
            ),
            (
                "nanoclaw_runs_failed_total",
                "Agent runs that failed.",
                &self.runs_failed,
            ),
            (
                "nanoclaw_replies_committed_total",
                "Assistant replies committed to the outbox.",
                &self.replies_committed,
            ),
            (
                "nanoclaw_replies_delivered_total",
                "Assistant replies delivered to their channel.",
                &self.replies_delivered,
            ),
            (
                "nanoclaw_delivery_failures_total",
                "Failed delivery attempts.",
                &self.delivery_failures,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
