//! Schedule checks of the `schedule_task` / `update_task` tools: the shared rules, plus
//! NanoClaw's rule that a `once` time given by the model is local time, without `Z` or an
//! offset (models tend to write UTC by mistake).

pub fn check(schedule_type: &str, value: &str) -> Result<(), String> {
    if schedule_type == "once" {
        let v = value.trim();
        let has_offset = v.ends_with(['Z', 'z'])
            || v.len() >= 6 && {
                let tail = &v.as_bytes()[v.len() - 6..];
                (tail[0] == b'+' || tail[0] == b'-') && tail[3] == b':'
            };
        if has_offset {
            return Err(format!(
                "the time must be local time without a timezone suffix; got `{value}`, use a form like 2026-02-01T15:30:00"
            ));
        }
    }
    nanoclaw_protocol::schedule::validate(schedule_type, value)
}

#[cfg(test)]
mod tests {
    #[test]
    fn once_must_be_local() {
        assert!(super::check("once", "2026-02-01T15:30:00").is_ok());
        assert!(super::check("once", "2026-02-01T15:30:00Z").is_err());
        assert!(super::check("once", "2026-02-01T15:30:00+01:00").is_err());
        assert!(super::check("cron", "0 9 * * *").is_ok());
        assert!(super::check("cron", "0 9 * *").is_err());
    }
}
