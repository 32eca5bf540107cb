//! Task schedules (SPEC §12), validated the same way by the agent (before writing an IPC
//! file) and the host (before storing a task): `cron` (5 fields), `interval` (a positive
//! number of milliseconds), `once` (a local date-time without offset, or one with an
//! explicit offset).

/// A parsed 5-field cron expression: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    pub minutes: u64,
    pub hours: u32,
    pub days_of_month: u32,
    pub months: u16,
    /// Bit 0 = Sunday … bit 6 = Saturday (7 is folded into 0).
    pub days_of_week: u8,
    /// Day-of-month and day-of-week both restricted: cron then fires when either matches.
    pub day_or: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, min: u32, max: u32, names: &[&str], names_from: u32) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + names_from);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if v < min || v > max {
        return Err(format!("{v} is outside {min}-{max}"));
    }
    Ok(v)
}

/// The longest interval accepted: ten years (longer ones overflow time arithmetic and
/// are never what was meant).
pub const MAX_INTERVAL_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

/// Parses one field into a bit set; also says whether it was `*` (unrestricted).
fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    names_from: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let star = text == "*" || text == "?";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step `{s}` is not a number"))?;
                if step == 0 {
                    return Err("a step of 0 never matches".into());
                }
                if step > max {
                    return Err(format!(
                        "step {step} is larger than the field's maximum {max}"
                    ));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (
                value(a, min, max, names, names_from)?,
                value(b, min, max, names, names_from)?,
            );
            if a > b {
                return Err(format!("range {a}-{b} is backwards"));
            }
            (a, b)
        } else {
            let v = value(range, min, max, names, names_from)?;
            (v, if part.contains('/') { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            match v.checked_add(step) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    if bits == 0 {
        return Err(format!("`{text}` matches nothing"));
    }
    Ok((bits, star))
}

impl Cron {
    pub fn parse(expression: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week), `{expression}` has {}",
                fields.len()
            ));
        }
        let named = |i: usize, r: Result<(u64, bool), String>| {
            let name = ["minute", "hour", "day-of-month", "month", "day-of-week"][i];
            r.map_err(|e| format!("cron {name} field: {e}"))
        };
        let (minutes, _) = named(0, field(fields[0], 0, 59, &[], 0))?;
        let (hours, _) = named(1, field(fields[1], 0, 23, &[], 0))?;
        let (dom, dom_star) = named(2, field(fields[2], 1, 31, &[], 0))?;
        let (months, _) = named(3, field(fields[3], 1, 12, &MONTHS, 1))?;
        let (dow, dow_star) = named(4, field(fields[4], 0, 7, &DAYS, 0))?;
        let dow = ((dow | (dow >> 7)) & 0x7f) as u8;
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days_of_month: dom as u32,
            months: (months >> 1) as u16,
            days_of_week: dow,
            day_or: !dom_star && !dow_star,
        })
    }
}

/// Checks a schedule as NanoClaw does. `once` accepts `2026-02-01T09:00:00` (local time,
/// the usual form) and RFC 3339 with an offset.
pub fn validate(schedule_type: &str, value: &str) -> Result<(), String> {
    match schedule_type {
        "cron" => Cron::parse(value).map(|_| ()),
        "interval" => match value.trim().parse::<u64>() {
            Ok(ms) if ms > MAX_INTERVAL_MS => Err(format!(
                "an interval of {ms} ms is more than ten years; use a cron or once schedule"
            )),
            Ok(ms) if ms > 0 => Ok(()),
            _ => Err(format!(
                "interval must be a positive whole number of milliseconds, not `{value}`"
            )),
        },
        "once" => {
            let v = value.trim();
            if v.parse::<jiff::civil::DateTime>().is_ok() || v.parse::<jiff::Timestamp>().is_ok() {
                Ok(())
            } else {
                Err(format!(
                    "once needs a date and time like 2026-02-01T09:00:00 (local time), not `{value}`"
                ))
            }
        }
        other => Err(format!(
            "schedule_type must be cron, interval or once, not `{other}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_fields() {
        let c = Cron::parse("*/15 9-17 * * mon-fri").expect("valid");
        assert_eq!(c.minutes, (1 << 0) | (1 << 15) | (1 << 30) | (1 << 45));
        assert_eq!(c.hours, (9..=17).fold(0, |b, h| b | (1 << h)));
        assert_eq!(c.days_of_week, 0b0111110);
        assert!(!c.day_or);
        let sunday = Cron::parse("0 0 * * 7").expect("7 is Sunday");
        assert_eq!(sunday.days_of_week, 1);
        let both = Cron::parse("0 0 1,15 * 1").expect("valid");
        assert!(both.day_or);
        assert_eq!(
            Cron::parse("0 0 1 JAN,dec *").expect("names").months,
            1 | (1 << 11)
        );
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
            "* * * 13 *",
            "*/4294967295 * * * *",
            "0 */4294967290 * * *",
            "*/60 * * * *",
            "5/4294967295 * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedule_validation() {
        assert!(validate("cron", "0 9 * * *").is_ok());
        assert!(validate("interval", "60000").is_ok());
        for bad in [
            "0",
            "-5",
            "1.5",
            "soon",
            "18446744073709551615",
            "316224000001",
        ] {
            assert!(validate("interval", bad).is_err(), "{bad}");
        }
        assert!(validate("once", "2026-02-01T09:00:00").is_ok());
        assert!(validate("once", "2026-02-01T09:00:00+01:00").is_ok());
        assert!(validate("once", "2026-02-01T09:00:00Z").is_ok());
        assert!(validate("once", "tomorrow").is_err());
        assert!(validate("weekly", "x").is_err());
    }
}
