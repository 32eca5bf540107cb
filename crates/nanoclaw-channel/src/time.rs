//! Timestamps: RFC 3339 UTC strings with milliseconds (`2026-01-31T13:32:00.000Z`), the
//! exact shape NanoClaw v1 stores, so old and new rows compare correctly as text.

use jiff::Timestamp;

/// Now, in the store's timestamp format.
pub fn now() -> String {
    format_utc(Timestamp::now())
}

pub fn format_utc(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A Unix time in seconds, in the store's format (`None` if out of range).
pub fn from_unix_seconds(seconds: i64) -> Option<String> {
    Timestamp::from_second(seconds).ok().map(format_utc)
}
