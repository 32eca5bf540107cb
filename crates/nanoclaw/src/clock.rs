//! Timestamps: stored as RFC 3339 UTC strings with milliseconds (`2026-01-31T13:32:00.000Z`),
//! the exact shape NanoClaw v1 stores, so old and new rows compare correctly as text.

use jiff::Timestamp;
use jiff::tz::TimeZone;

pub use nanoclaw_channel::time::{format_utc, now};

/// Milliseconds since the Unix epoch (for file names that sort by time).
pub fn millis_now() -> i64 {
    Timestamp::now().as_millisecond()
}

/// `20260131-143200` in UTC, for log file names.
pub fn compact_now() -> String {
    Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string()
}

/// A stored timestamp shown in the user's zone, as in SPEC §5: `Jan 31, 2026, 2:32 PM`.
/// Unparseable values (possible in old databases) are shown as they are.
pub fn format_local(stored: &str, tz: &TimeZone) -> String {
    match stored.parse::<Timestamp>() {
        Ok(ts) => ts
            .to_zoned_datetime(tz.clone())
            .strftime("%b %-d, %Y, %-I:%M %p")
            .to_string(),
        Err(_) => stored.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_format_matches_nanoclaw_v1() {
        let ts: Timestamp = "2026-01-31T13:32:05.123456Z".parse().expect("valid");
        assert_eq!(format_utc(ts), "2026-01-31T13:32:05.123Z");
        let whole: Timestamp = "2026-01-31T13:32:05Z".parse().expect("valid");
        assert_eq!(format_utc(whole), "2026-01-31T13:32:05.000Z");
        assert_eq!(now().len(), "2026-01-31T13:32:05.123Z".len());
    }

    #[test]
    fn local_time_is_shown_in_the_configured_zone() {
        let berlin = TimeZone::get("Europe/Berlin").expect("zone");
        assert_eq!(
            format_local("2026-01-31T13:32:00.000Z", &berlin),
            "Jan 31, 2026, 2:32 PM"
        );
        // Summer time, morning, single-digit day.
        assert_eq!(
            format_local("2026-07-04T07:05:00.000Z", &berlin),
            "Jul 4, 2026, 9:05 AM"
        );
        // Midnight and noon use 12, as en-US does.
        assert_eq!(
            format_local("2026-03-01T00:00:00Z", &TimeZone::UTC),
            "Mar 1, 2026, 12:00 AM"
        );
        assert_eq!(
            format_local("2026-03-01T12:00:00Z", &TimeZone::UTC),
            "Mar 1, 2026, 12:00 PM"
        );
        assert_eq!(format_local("not a time", &TimeZone::UTC), "not a time");
    }
}
