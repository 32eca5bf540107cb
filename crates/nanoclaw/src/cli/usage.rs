//! `nanoclaw usage`: model tokens per group and day (in `TZ`), from what the credential
//! proxy recorded.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Result, bail};
use jiff::{Timestamp, ToSpan};

use super::{open_existing_store, print_table};
use crate::config::Config;
use crate::store::{Store, Usage, UsageRow};

/// Totals per (local day, group), days oldest first.
pub fn totals(
    rows: &[UsageRow],
    tz: &jiff::tz::TimeZone,
) -> BTreeMap<(String, String), (Usage, usize)> {
    let mut out: BTreeMap<(String, String), (Usage, usize)> = BTreeMap::new();
    for r in rows {
        let day = r
            .created_at
            .parse::<Timestamp>()
            .map(|ts| ts.to_zoned_datetime(tz.clone()).date().to_string())
            .unwrap_or_else(|_| r.created_at.chars().take(10).collect());
        let (t, responses) = out.entry((day, r.group_folder.clone())).or_default();
        t.input_tokens += r.usage.input_tokens;
        t.output_tokens += r.usage.output_tokens;
        t.cache_read_tokens += r.usage.cache_read_tokens;
        t.cache_write_tokens += r.usage.cache_write_tokens;
        *responses += 1;
    }
    out
}

/// Each registered group's daily token ceiling (its `container_config.budget`, else
/// `NANOCLAW_DAILY_TOKEN_BUDGET`), by folder; groups without one are absent.
pub(crate) fn daily_budgets(config: &Config, store: &Store) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for g in store.registered_groups()? {
        let own = crate::mounts::ContainerConfig::parse(g.container_config.as_deref())
            .map(|c| c.budget)
            .unwrap_or_default();
        if let Some(daily) = crate::proxy::RunBudget::of(&own, config.daily_token_budget).daily {
            out.insert(g.folder.to_string(), daily);
        }
    }
    Ok(out)
}

/// One line per group with a daily ceiling: what it used today, of how much.
pub(crate) fn budget_lines(config: &Config, store: &Store) -> Result<Vec<String>> {
    let since = crate::proxy::day_start(&config.zone.tz);
    let mut lines = Vec::new();
    for (folder, daily) in daily_budgets(config, store)? {
        let used = store.group_tokens_since(&folder, &since)?;
        let state = if used >= daily {
            format!("REACHED, resets at 00:00 ({})", config.zone.name)
        } else {
            format!("{} left", daily - used)
        };
        lines.push(format!(
            "{folder}: {used} of {daily} tokens today ({state})"
        ));
    }
    Ok(lines)
}

/// The last `days` local days, today included: today, the first day, and the stored
/// timestamp of the first day's midnight.
pub(crate) fn window(
    tz: &jiff::tz::TimeZone,
    days: u32,
) -> Result<(jiff::civil::Date, jiff::civil::Date, String)> {
    let today = Timestamp::now().to_zoned_datetime(tz.clone()).date();
    let first_day = today.checked_sub((i64::from(days.max(1)) - 1).days())?;
    let since = first_day
        .to_zoned_datetime(tz.clone())
        .map(|z| crate::clock::format_utc(z.timestamp()))?;
    Ok((today, first_day, since))
}

/// One (day, group) total as JSON, as `usage --json` and the web app show it.
pub(crate) fn row_json(day: &str, group: &str, u: &Usage, responses: usize) -> serde_json::Value {
    serde_json::json!({
        "day": day, "group": group, "responses": responses,
        "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens, "cache_write_tokens": u.cache_write_tokens,
        "total_tokens": total(u),
    })
}

pub fn usage(config: &Config, days: u32, json: bool) -> Result<ExitCode> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let store = open_existing_store(config)?;
    let (today, first_day, since) = window(&config.zone.tz, days)?;
    let rows = store.usage_since(&since)?;
    let totals = totals(&rows, &config.zone.tz);
    let budgets = daily_budgets(config, &store)?;
    let today = today.to_string();
    // A day's ceiling is shown on today's rows only (earlier days may have had another).
    let budget_of = |day: &str, group: &str| {
        budgets
            .get(group)
            .copied()
            .filter(|_| day == today.as_str())
    };
    if json {
        let view: Vec<_> = totals
            .iter()
            .map(|((day, group), (u, responses))| {
                let mut row = row_json(day, group, u, *responses);
                row["daily_budget"] = serde_json::json!(budget_of(day, group));
                row
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else if totals.is_empty() {
        println!("No model usage recorded since {first_day}.");
    } else {
        let rows: Vec<Vec<String>> = totals
            .iter()
            .map(|((day, group), (u, responses))| {
                vec![
                    day.clone(),
                    group.clone(),
                    responses.to_string(),
                    u.input_tokens.to_string(),
                    u.output_tokens.to_string(),
                    u.cache_read_tokens.to_string(),
                    u.cache_write_tokens.to_string(),
                    total(u).to_string(),
                    budget_of(day, group).map_or("-".into(), |b| b.to_string()),
                ]
            })
            .collect();
        print_table(
            &[
                "DAY",
                "GROUP",
                "RESPONSES",
                "INPUT",
                "OUTPUT",
                "CACHE READ",
                "CACHE WRITE",
                "TOTAL",
                "DAILY BUDGET",
            ],
            &rows,
        );
        for line in budget_lines(config, &store)? {
            println!("budget {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every kind of token, as budgets count them.
fn total(u: &Usage) -> i64 {
    u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &str, at: &str, input: i64, output: i64) -> UsageRow {
        UsageRow {
            group_folder: group.into(),
            run_id: "r".into(),
            model: None,
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                cache_read_tokens: 1,
                cache_write_tokens: 2,
            },
            created_at: at.into(),
        }
    }

    #[test]
    fn totals_are_per_local_day_and_group() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").expect("zone");
        let rows = [
            row("main", "2026-01-10T10:00:00.000Z", 10, 1),
            row("main", "2026-01-10T22:30:00.000Z", 5, 1), // 23:30 in Berlin: same day
            row("main", "2026-01-10T23:30:00.000Z", 7, 1), // 00:30 on the 11th in Berlin
            row("team", "2026-01-10T10:00:00.000Z", 100, 9),
        ];
        let t = totals(&rows, &berlin);
        let keys: Vec<_> = t.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                ("2026-01-10".to_string(), "main".to_string()),
                ("2026-01-10".to_string(), "team".to_string()),
                ("2026-01-11".to_string(), "main".to_string()),
            ]
        );
        let (u, n) = &t[&("2026-01-10".to_string(), "main".to_string())];
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                *n
            ),
            (15, 2, 2, 4, 2)
        );
    }
}
