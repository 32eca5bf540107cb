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

/// A Unix time in milliseconds, in the store's format (`None` if out of range).
pub fn from_unix_millis(millis: i64) -> Option<String> {
    Timestamp::from_millisecond(millis).ok().map(format_utc)
}

/// An RFC 3339 timestamp from a platform (`2026-01-31T13:32:00.123000+00:00`) in the
/// store's format (`None` if it cannot be read).
pub fn from_rfc3339(text: &str) -> Option<String> {
    text.parse::<Timestamp>().ok().map(format_utc)
}

#[cfg(test)]
mod tests {
    #[test]
    fn platform_times_become_store_times() {
        assert_eq!(
            super::from_rfc3339("2026-01-31T13:32:00.123000+00:00").as_deref(),
            Some("2026-01-31T13:32:00.123Z")
        );
        assert_eq!(super::from_rfc3339("yesterday"), None);
        assert_eq!(
            super::from_unix_seconds(1_769_866_320).as_deref(),
            Some("2026-01-31T13:32:00.000Z")
        );
        assert_eq!(
            super::from_unix_millis(1_769_866_320_123).as_deref(),
            Some("2026-01-31T13:32:00.123Z")
        );
    }
}
