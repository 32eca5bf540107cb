//! When scheduled tasks run (SPEC §12): `cron` (5 fields, in `TZ`), `interval`
//! (milliseconds, anchored to the scheduled time, missed slots skipped in one step) and
//! `once` (a local time unless it carries an offset).
//!
//! Daylight saving: a cron time that does not exist on a spring-forward day runs at the
//! first valid instant after the gap (02:30 in Europe/Berlin → 03:30); a time that occurs
//! twice on a fall-back day runs once, at its first occurrence.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use nanoclaw_protocol::schedule::Cron;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Cron(Cron),
    /// Milliseconds, > 0.
    Interval(u64),
    Once(Timestamp),
}

/// How far ahead a cron expression is searched (a `0 0 29 2 1` may be years away).
const CRON_SEARCH_DAYS: usize = 366 * 30;

impl Schedule {
    /// Parses a stored or requested schedule; the error says what is wrong.
    pub fn parse(schedule_type: &str, value: &str, tz: &TimeZone) -> Result<Schedule, String> {
        nanoclaw_protocol::schedule::validate(schedule_type, value)?;
        let value = value.trim();
        match schedule_type {
            "cron" => Cron::parse(value).map(Schedule::Cron),
            "interval" => value
                .parse::<u64>()
                .map(Schedule::Interval)
                .map_err(|e| format!("interval `{value}`: {e}")),
            "once" => parse_once(value, tz).map(Schedule::Once),
            other => Err(format!(
                "schedule_type must be cron, interval or once, not `{other}`"
            )),
        }
    }

    /// The first run of a task created at `now`. A `once` time in the past is due at once.
    pub fn first_run(&self, now: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Cron(c) => next_cron(c, now, tz),
            Schedule::Interval(ms) => now
                .checked_add(SignedDuration::from_millis(*ms as i64))
                .ok(),
            Schedule::Once(at) => Some(*at),
        }
    }

    /// The run after the one that was due at `scheduled`, computed at `now` (when that run
    /// started or finished). Always later than `now`, so a task that was overdue for many
    /// slots runs once and then continues on its schedule; `None` when nothing follows.
    pub fn next_after(
        &self,
        scheduled: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
    ) -> Option<Timestamp> {
        match self {
            Schedule::Cron(c) => next_cron(c, scheduled.max(now), tz),
            Schedule::Interval(ms) => {
                let step = *ms as i128 * 1_000_000;
                let anchor = scheduled.as_nanosecond();
                let elapsed = now.as_nanosecond() - anchor;
                // The first slot anchor + k·step strictly after now (k ≥ 1).
                let k = if elapsed < 0 { 1 } else { elapsed / step + 1 };
                Timestamp::from_nanosecond(anchor + k * step).ok()
            }
            Schedule::Once(_) => None,
        }
    }
}

/// `2026-02-01T09:00:00` is local time in `tz`; with `Z` or an offset it is that instant.
fn parse_once(value: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    if let Ok(ts) = value.parse::<Timestamp>() {
        return Ok(ts);
    }
    let civil: DateTime = value.parse().map_err(|_| {
        format!("once needs a date and time like 2026-02-01T09:00:00, not `{value}`")
    })?;
    tz.to_ambiguous_zoned_datetime(civil)
        .compatible()
        .map(|z| z.timestamp())
        .map_err(|e| format!("`{value}` is not a valid local time: {e}"))
}

fn day_matches(c: &Cron, day: Date) -> bool {
    let month = c.months & (1 << (day.month() as u16 - 1)) != 0;
    let dom = c.days_of_month & (1 << day.day() as u32) != 0;
    let dow = c.days_of_week & (1 << day.weekday().to_sunday_zero_offset()) != 0;
    month && if c.day_or { dom || dow } else { dom && dow }
}

/// The first instant strictly after `after` whose local time in `tz` matches `c`.
fn next_cron(c: &Cron, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
    let mut day = after.to_zoned_datetime(tz.clone()).date();
    // A spring-forward gap can push the previous day's last slot past midnight; start a
    // day early so that slot is not missed.
    day = day.yesterday().unwrap_or(day);
    for _ in 0..CRON_SEARCH_DAYS {
        if day_matches(c, day) {
            let mut best: Option<Timestamp> = None;
            for hour in (0..24).filter(|h| c.hours & (1 << h) != 0) {
                for minute in (0..60).filter(|m| c.minutes & (1 << m) != 0) {
                    let civil = day.at(hour as i8, minute as i8, 0, 0);
                    let Ok(zoned) = tz.to_ambiguous_zoned_datetime(civil).compatible() else {
                        continue;
                    };
                    let ts = zoned.timestamp();
                    if ts > after && best.is_none_or(|b| ts < b) {
                        best = Some(ts);
                    }
                }
            }
            if best.is_some() {
                return best;
            }
        }
        day = day.tomorrow().ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").expect("zone")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn cron(expr: &str) -> Schedule {
        Schedule::parse("cron", expr, &berlin()).expect("cron")
    }

    #[test]
    fn cron_runs_at_local_time() {
        let c = cron("0 9 * * *");
        // 08:00 UTC on Jan 10 is 09:00 in Berlin (UTC+1): strictly after, so the next day.
        assert_eq!(
            c.first_run(ts("2026-01-10T08:00:00Z"), &berlin()),
            Some(ts("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            c.first_run(ts("2026-01-10T07:59:00Z"), &berlin()),
            Some(ts("2026-01-10T08:00:00Z"))
        );
        // Summer: 09:00 Berlin is 07:00 UTC.
        assert_eq!(
            c.first_run(ts("2026-07-01T00:00:00Z"), &berlin()),
            Some(ts("2026-07-01T07:00:00Z"))
        );
        let weekdays = cron("30 8 * * mon-fri");
        // Saturday 2026-01-10 → Monday 2026-01-12 08:30 local.
        assert_eq!(
            weekdays.first_run(ts("2026-01-10T12:00:00Z"), &berlin()),
            Some(ts("2026-01-12T07:30:00Z"))
        );
        let leap = cron("0 0 29 2 *");
        assert_eq!(
            leap.first_run(ts("2026-03-01T00:00:00Z"), &berlin()),
            Some(ts("2028-02-28T23:00:00Z"))
        );
        // Day of month OR day of week when both are restricted (cron's rule).
        let either = cron("0 12 1 * fri");
        assert_eq!(
            either.first_run(ts("2026-01-01T12:00:00Z"), &berlin()),
            Some(ts("2026-01-02T11:00:00Z")),
            "Friday Jan 2 comes before Feb 1"
        );
    }

    #[test]
    fn cron_across_daylight_saving_changes_in_berlin() {
        // Spring forward: 2026-03-29, 02:00 → 03:00 local. 02:30 does not exist.
        let c = cron("30 2 * * *");
        let first = c
            .first_run(ts("2026-03-28T12:00:00Z"), &berlin())
            .expect("next");
        assert_eq!(
            first,
            ts("2026-03-29T01:30:00Z"),
            "runs at 03:30 CEST, right after the gap"
        );
        assert_eq!(
            c.next_after(first, first, &berlin()),
            Some(ts("2026-03-30T00:30:00Z")),
            "then 02:30 CEST the next day"
        );
        // Fall back: 2026-10-25, 03:00 CEST → 02:00 CET; 02:30 happens twice, runs once.
        let first = c
            .first_run(ts("2026-10-24T12:00:00Z"), &berlin())
            .expect("next");
        assert_eq!(first, ts("2026-10-25T00:30:00Z"), "the first 02:30 (CEST)");
        assert_eq!(
            c.next_after(first, first, &berlin()),
            Some(ts("2026-10-26T01:30:00Z")),
            "not again at the second 02:30; next day 02:30 CET"
        );
        // An hourly job keeps its local minute across the change.
        let hourly = cron("0 * * * *");
        assert_eq!(
            hourly.next_after(
                ts("2026-03-29T00:00:00Z"),
                ts("2026-03-29T00:00:00Z"),
                &berlin()
            ),
            Some(ts("2026-03-29T01:00:00Z")),
            "01:00 CET is followed by 03:00 CEST, one real hour later"
        );
    }

    #[test]
    fn interval_is_anchored_to_the_schedule_not_the_finish() {
        let every_minute = Schedule::parse("interval", "60000", &berlin()).expect("interval");
        let due = ts("2026-01-10T10:00:00Z");
        // The run took 20 s: the next slot is still 10:01:00, not 10:01:20.
        assert_eq!(
            every_minute.next_after(due, ts("2026-01-10T10:00:20Z"), &berlin()),
            Some(ts("2026-01-10T10:01:00Z"))
        );
        // No drift over many runs.
        let mut at = due;
        for _ in 0..1000 {
            at = every_minute
                .next_after(
                    at,
                    at.checked_add(SignedDuration::from_millis(1234))
                        .expect("t"),
                    &berlin(),
                )
                .expect("next");
        }
        assert_eq!(at, ts("2026-01-11T02:40:00Z"), "exactly 1000 minutes later");
    }

    #[test]
    fn many_missed_intervals_are_skipped_in_one_step() {
        let every_second = Schedule::parse("interval", "1000", &berlin()).expect("interval");
        let due = ts("2026-01-10T10:00:00Z");
        // Down for 30 days: one step lands on the first slot after now.
        let now = ts("2026-02-09T10:00:00.500Z");
        assert_eq!(
            every_second.next_after(due, now, &berlin()),
            Some(ts("2026-02-09T10:00:01Z"))
        );
        // Exactly on a slot: the next one, never now.
        let now = ts("2026-02-09T10:00:00Z");
        assert_eq!(
            every_second.next_after(due, now, &berlin()),
            Some(ts("2026-02-09T10:00:01Z"))
        );
        assert_eq!(
            every_second.first_run(now, &berlin()),
            Some(ts("2026-02-09T10:00:01Z"))
        );
    }

    #[test]
    fn once_is_local_time_unless_it_has_an_offset() {
        let local = Schedule::parse("once", "2026-07-01T09:00:00", &berlin()).expect("once");
        assert_eq!(local, Schedule::Once(ts("2026-07-01T07:00:00Z")));
        let utc = Schedule::parse("once", "2026-07-01T09:00:00Z", &berlin()).expect("once");
        assert_eq!(utc, Schedule::Once(ts("2026-07-01T09:00:00Z")));
        let offset = Schedule::parse("once", "2026-07-01T09:00:00+05:00", &berlin()).expect("once");
        assert_eq!(offset, Schedule::Once(ts("2026-07-01T04:00:00Z")));
        let Schedule::Once(at) = local else {
            panic!("once")
        };
        assert_eq!(
            local.first_run(ts("2026-08-01T00:00:00Z"), &berlin()),
            Some(at),
            "a past time is due at once"
        );
        assert_eq!(local.next_after(at, at, &berlin()), None);
    }

    #[test]
    fn invalid_schedules_say_why() {
        for (kind, value, needle) in [
            ("cron", "0 9 * *", "5 fields"),
            ("cron", "61 * * * *", "minute"),
            ("interval", "0", "positive"),
            ("interval", "-5", "positive"),
            ("interval", "soon", "positive"),
            ("once", "tomorrow", "date and time"),
            ("weekly", "x", "cron, interval or once"),
        ] {
            let e = Schedule::parse(kind, value, &berlin()).expect_err(value);
            assert!(e.contains(needle), "{kind} {value}: {e}");
        }
    }
}
