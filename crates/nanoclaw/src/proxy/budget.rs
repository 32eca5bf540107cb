//! Spending ceilings (SPEC §15): a group's tokens per day and per run, kept by the
//! credential proxy, the only way a sandbox reaches the model.
//!
//! Counting only what responses report would let concurrent requests overshoot (each
//! sees the budget before any of them is charged), so every budgeted request first
//! *reserves* an upper bound of what it can cost: its input estimated from the request
//! body (never fewer tokens than bytes of text, plus a fixed amount per image), and its
//! output exactly, because the proxy lowers `max_tokens` to what is left. The check of
//! the stored usage plus the reservations in flight and the new reservation happen under
//! one lock. A reservation is released only after the response's usage is stored; a
//! response that ends before reporting its usage (a client that hangs up mid-stream) is
//! charged its whole reservation, so hanging up early saves nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::Value;

use crate::store::{Store, Usage};

/// Tokens reserved for each image block (Anthropic resizes images to about 1.15
/// megapixels, ~1600 tokens; the base64 bytes are counted too).
const IMAGE_TOKENS: u64 = 1_600;
/// Tokens reserved on top of the body: the system prompt the API adds for tools.
const OVERHEAD_TOKENS: u64 = 1_024;

/// The ceilings that apply to one run (from its group's `container_config.budget` and
/// `NANOCLAW_DAILY_TOKEN_BUDGET`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunBudget {
    pub daily: Option<u64>,
    pub run: Option<u64>,
}

impl RunBudget {
    pub fn of(group: &crate::mounts::GroupBudget, default_daily: Option<u64>) -> RunBudget {
        RunBudget {
            daily: group.daily_tokens.or(default_daily),
            run: group.run_tokens,
        }
    }

    pub fn is_limited(&self) -> bool {
        self.daily.is_some() || self.run.is_some()
    }
}

/// Which ceiling stopped a request or a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Daily {
        limit: u64,
        used: u64,
        /// What the refused request would have needed (none: refused before a run).
        need: Option<u64>,
        resets: String,
    },
    Run {
        limit: u64,
        used: u64,
    },
}

impl Refusal {
    /// What the chat (and the agent, and the log) is told.
    pub fn message(&self) -> String {
        match self {
            Refusal::Daily {
                limit,
                used,
                need,
                resets,
            } => format!(
                "this group's daily budget of {limit} tokens is reached ({used} used or in use today{}); \
                 it resets at {resets}. Main can raise it: set container_config.budget.dailyTokens \
                 for this group (ask in the main chat), or NANOCLAW_DAILY_TOKEN_BUDGET in .env",
                need.map(|n| format!(", the next model request needs up to {n}"))
                    .unwrap_or_default()
            ),
            Refusal::Run { limit, used } => format!(
                "this run reached its budget of {limit} tokens ({used} used); a new message starts a \
                 new run (container_config.budget.runTokens raises it)"
            ),
        }
    }

    pub fn is_daily(&self) -> bool {
        matches!(self, Refusal::Daily { .. })
    }
}

/// The reservations in flight, and the refusals each run met.
#[derive(Default)]
pub struct Spending {
    state: Mutex<State>,
    /// Where usage is stored, and the zone whose midnight starts a day; absent when no
    /// proxy runs in this process (nothing is checked then).
    source: Mutex<Option<Source>>,
}

#[derive(Clone)]
struct Source {
    store: Arc<Store>,
    tz: TimeZone,
    /// The zone's name as the user set it (`TZ`).
    zone: String,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, u64>,
    runs: HashMap<String, u64>,
    refused: HashMap<String, Refusal>,
}

/// Tokens held for one request until it is charged (dropped).
pub struct Reservation {
    spending: Arc<Spending>,
    group: String,
    run: String,
    tokens: u64,
    /// The input bound and the output allowed, charged for a response that reports no
    /// usage.
    pub input: u64,
    pub output: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut guard = self.spending.lock();
        let st = &mut *guard;
        for (map, key) in [(&mut st.groups, &self.group), (&mut st.runs, &self.run)] {
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(self.tokens);
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

/// What a budgeted request asks for, read from its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// Upper bound of its input tokens.
    pub input: u64,
    /// Its `max_tokens` (or OpenAI's `max_completion_tokens`), if it set one.
    pub output: Option<u64>,
    /// Anthropic's `thinking.budget_tokens`, which must stay below `max_tokens`.
    pub thinking: Option<u64>,
}

impl Ask {
    pub fn read(body: &[u8], json: &Value) -> Ask {
        let output = ["max_tokens", "max_completion_tokens"]
            .iter()
            .find_map(|k| json[*k].as_u64());
        Ask {
            input: body.len() as u64 + OVERHEAD_TOKENS + IMAGE_TOKENS * count_images(json),
            output,
            thinking: json["thinking"]["budget_tokens"].as_u64(),
        }
    }
}

/// Content whose cost the request's bytes do not bound: documents (a PDF's pages become
/// images), results fetched by the API itself, and server-side tools and MCP servers
/// that make the API read more input on its own.
const UNBOUNDED_BLOCKS: [&str; 4] = [
    "document",
    "search_result",
    "container_upload",
    "web_fetch_tool_result",
];
const SERVER_TOOLS: [&str; 3] = ["web_search", "web_fetch", "code_execution"];

/// Why a budgeted request cannot be bounded, if it cannot.
pub fn unbounded(json: &Value) -> Option<String> {
    if json.get("mcp_servers").is_some() {
        return Some("uses mcp_servers".into());
    }
    if let Some(tools) = json["tools"].as_array() {
        for tool in tools {
            if let Some(kind) = tool["type"].as_str()
                && SERVER_TOOLS.iter().any(|s| kind.starts_with(s))
            {
                return Some(format!("uses the server tool {kind}"));
            }
        }
    }
    fn walk(v: &Value) -> Option<String> {
        match v {
            Value::Object(map) => {
                if let Some(kind) = map.get("type").and_then(Value::as_str)
                    && UNBOUNDED_BLOCKS.contains(&kind)
                {
                    return Some(format!("has a {kind} block"));
                }
                map.values().find_map(walk)
            }
            Value::Array(items) => items.iter().find_map(walk),
            _ => None,
        }
    }
    walk(&json["messages"]).or_else(|| walk(&json["system"]))
}

/// Image blocks anywhere in the request (Anthropic `{"type":"image"}`, OpenAI
/// `{"type":"image_url"}`).
fn count_images(v: &Value) -> u64 {
    match v {
        Value::Object(map) => {
            let own = matches!(
                map.get("type").and_then(Value::as_str),
                Some("image" | "image_url" | "input_image")
            ) as u64;
            own + map.values().map(count_images).sum::<u64>()
        }
        Value::Array(items) => items.iter().map(count_images).sum(),
        _ => 0,
    }
}

/// Sets the request's output ceiling to `output` (both API shapes).
pub fn set_output(json: &mut Value, output: u64, openai: bool) {
    let Some(map) = json.as_object_mut() else {
        return;
    };
    if openai && map.contains_key("max_completion_tokens") {
        map.insert("max_completion_tokens".into(), output.into());
    } else {
        map.insert("max_tokens".into(), output.into());
    }
}

impl Spending {
    /// Turns checking on: usage is read from `store`, days start at midnight in `tz`
    /// (named `zone`).
    pub fn attach(&self, store: Arc<Store>, tz: TimeZone, zone: &str) {
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(Source {
            store,
            tz,
            zone: zone.to_string(),
        });
    }

    fn source(&self) -> Option<Source> {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves what `ask` may cost for `group`'s run `run`; the output it may use is
    /// the reservation's `output` (lower than asked when little is left). Refused when
    /// even the input would not fit. A store that cannot be read refuses too: the
    /// ceiling must hold.
    pub fn reserve(
        self: &Arc<Self>,
        group: &str,
        run: &str,
        budget: RunBudget,
        ask: &Ask,
    ) -> Result<Option<Reservation>, String> {
        if !budget.is_limited() {
            return Ok(None);
        }
        let Some(source) = self.source() else {
            return Ok(None);
        };
        let mut st = self.lock();
        let (day_left, run_left) = left(&st, &source, group, run, budget)?;
        let left = day_left
            .as_ref()
            .map_or(u64::MAX, |(l, _)| *l)
            .min(run_left.as_ref().map_or(u64::MAX, |(l, _)| *l));
        let room = left.saturating_sub(ask.input);
        let output = ask.output.map_or(room, |o| o.min(room));
        let refused = output == 0 || ask.thinking.is_some_and(|t| t >= output);
        if refused {
            // The ceiling that leaves less is the one that stopped it.
            let refusal = match (day_left, run_left) {
                (Some((d, daily)), Some((r, _))) if d <= r => daily,
                (Some((_, daily)), None) => daily,
                (_, Some((_, run))) => run,
                (None, None) => return Ok(None),
            };
            let need = ask.input.saturating_add(ask.thinking.map_or(1, |t| t + 1));
            let refusal = match refusal {
                Refusal::Daily {
                    limit,
                    used,
                    resets,
                    ..
                } => Refusal::Daily {
                    limit,
                    used,
                    need: Some(need),
                    resets,
                },
                run => run,
            };
            st.refused.insert(run.to_string(), refusal.clone());
            return Err(refusal.message());
        }
        let tokens = ask.input.saturating_add(output);
        *st.groups.entry(group.to_string()).or_default() += tokens;
        *st.runs.entry(run.to_string()).or_default() += tokens;
        Ok(Some(Reservation {
            spending: Arc::clone(self),
            group: group.to_string(),
            run: run.to_string(),
            tokens,
            input: ask.input,
            output,
        }))
    }

    /// Before a run starts: refused when the group's day is already spent.
    pub fn refuse_start(&self, group: &str, budget: RunBudget) -> Option<Refusal> {
        let daily = budget.daily?;
        let source = self.source()?;
        let st = self.lock();
        let reserved = st.groups.get(group).copied().unwrap_or(0);
        let used = match source
            .store
            .group_tokens_since(group, &day_start(&source.tz))
        {
            Ok(n) => n.saturating_add(reserved),
            Err(e) => {
                tracing::error!(group, "cannot read the group's token usage: {e}");
                return None;
            }
        };
        (used >= daily).then(|| Refusal::Daily {
            limit: daily,
            used,
            need: None,
            resets: resets_at(&source.zone),
        })
    }

    /// The refusal `run` met, if any (taken once, when the run ends).
    pub fn take_refusal(&self, run: &str) -> Option<Refusal> {
        self.lock().refused.remove(run)
    }
}

/// What is left of one ceiling, with the refusal it would give.
type Left = Option<(u64, Refusal)>;

/// What is left of the day's and the run's ceilings.
fn left(
    st: &State,
    source: &Source,
    group: &str,
    run: &str,
    budget: RunBudget,
) -> Result<(Left, Left), String> {
    let unreadable = |e| {
        tracing::error!(group, "cannot read token usage to check the budget: {e}");
        "nanoclaw cannot read this group's token usage to check its budget; see the daemon's log"
            .to_string()
    };
    let day = match budget.daily {
        Some(limit) => {
            let used = source
                .store
                .group_tokens_since(group, &day_start(&source.tz))
                .map_err(unreadable)?
                .saturating_add(st.groups.get(group).copied().unwrap_or(0));
            Some((
                limit.saturating_sub(used),
                Refusal::Daily {
                    limit,
                    used,
                    need: None,
                    resets: resets_at(&source.zone),
                },
            ))
        }
        None => None,
    };
    let this_run = match budget.run {
        Some(limit) => {
            let used = source
                .store
                .run_tokens(run)
                .map_err(unreadable)?
                .saturating_add(st.runs.get(run).copied().unwrap_or(0));
            Some((limit.saturating_sub(used), Refusal::Run { limit, used }))
        }
        None => None,
    };
    Ok((day, this_run))
}

/// What to charge for a response: what it reported, or, when it ended before reporting
/// its output (or reported nothing), the reservation's bound.
pub fn charge(seen: Usage, complete: bool, reservation: &Reservation) -> Usage {
    if complete && !seen.is_empty() {
        return seen;
    }
    let mut usage = seen;
    let input_seen = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens;
    if input_seen == 0 {
        usage.input_tokens = reservation.input as i64;
    }
    usage.output_tokens = usage.output_tokens.max(reservation.output as i64);
    usage
}

/// Midnight today in `tz`, as a stored timestamp.
pub fn day_start(tz: &TimeZone) -> String {
    let today = Timestamp::now().to_zoned_datetime(tz.clone()).date();
    match today.to_zoned_datetime(tz.clone()) {
        Ok(z) => crate::clock::format_utc(z.timestamp()),
        // A zone without a midnight today (never in practice): the last 24 hours.
        Err(_) => crate::clock::format_utc(
            Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_hours(24))
                .unwrap_or(Timestamp::UNIX_EPOCH),
        ),
    }
}

/// When the day's budget resets, as the user reads it ("00:00 Europe/Berlin").
fn resets_at(zone: &str) -> String {
    format!("00:00 ({zone})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixture {
        s: Arc<Spending>,
        store: Arc<Store>,
        budget: RunBudget,
        _dir: tempfile::TempDir,
    }

    fn spending(daily: Option<u64>) -> Fixture {
        let (dir, store) = crate::store::test_support::open_temp();
        let store = Arc::new(store);
        let s = Arc::new(Spending::default());
        s.attach(Arc::clone(&store), TimeZone::UTC, "UTC");
        Fixture {
            s,
            store,
            budget: RunBudget { daily, run: None },
            _dir: dir,
        }
    }

    fn ask(input: u64, output: Option<u64>) -> Ask {
        Ask {
            input,
            output,
            thinking: None,
        }
    }

    #[test]
    fn the_input_bound_counts_bytes_overhead_and_images() {
        let body = json!({"max_tokens": 500, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
        ]}], "thinking": {"type": "enabled", "budget_tokens": 100}});
        let bytes = serde_json::to_vec(&body).expect("json");
        let a = Ask::read(&bytes, &body);
        assert_eq!(a.input, bytes.len() as u64 + OVERHEAD_TOKENS + IMAGE_TOKENS);
        assert_eq!(a.output, Some(500));
        assert_eq!(a.thinking, Some(100));
        let openai = json!({"max_completion_tokens": 7, "messages": []});
        assert_eq!(Ask::read(b"{}", &openai).output, Some(7));
    }

    #[test]
    fn the_output_is_lowered_to_what_is_left_and_nothing_is_left_for_more() {
        let Fixture {
            s, budget, _dir, ..
        } = spending(Some(10_000));
        let first = s
            .reserve("g", "r1", budget, &ask(2_000, Some(3_000)))
            .expect("fits")
            .expect("reserved");
        assert_eq!(first.output, 3_000);
        // 5000 held; 5000 left; an ask of 2000 in + 8000 out gets 3000 out.
        let second = s
            .reserve("g", "r2", budget, &ask(2_000, Some(8_000)))
            .expect("fits")
            .expect("reserved");
        assert_eq!(second.output, 3_000);
        // Nothing is left while both are in flight.
        let refused = s.reserve("g", "r3", budget, &ask(10, Some(10)));
        let why = refused.err().expect("refused");
        assert!(why.contains("daily budget of 10000 tokens"), "{why}");
        assert!(s.take_refusal("r3").is_some_and(|r| r.is_daily()));
        assert!(s.take_refusal("r3").is_none(), "taken once");
        // Another group has its own budget.
        assert!(s.reserve("other", "r4", budget, &ask(10, Some(10))).is_ok());
        drop(first);
        let third = s
            .reserve("g", "r3", budget, &ask(1_000, None))
            .expect("fits again")
            .expect("reserved");
        assert_eq!(third.output, 4_000, "no max_tokens: all that is left");
    }

    #[test]
    fn stored_usage_counts_and_a_run_ceiling_is_its_own() {
        let Fixture { s, store, _dir, .. } = spending(None);
        store
            .record_usage(
                "g",
                "r1",
                None,
                &Usage {
                    input_tokens: 600,
                    output_tokens: 300,
                    cache_read_tokens: 50,
                    cache_write_tokens: 50,
                },
            )
            .expect("record");
        let budget = RunBudget {
            daily: Some(2_000),
            run: Some(1_500),
        };
        // The run has used 1000 of 1500: 500 left, and it is the tighter ceiling.
        let why = s
            .reserve("g", "r1", budget, &ask(600, Some(10)))
            .err()
            .expect("refused");
        assert!(
            why.contains("this run reached its budget of 1500 tokens"),
            "{why}"
        );
        // A new run of the same group has the day's 1000 left.
        let r = s
            .reserve("g", "r2", budget, &ask(600, Some(1_000)))
            .expect("fits")
            .expect("reserved");
        assert_eq!(r.output, 400);
        assert!(
            s.refuse_start("g", budget).is_some(),
            "the day is spent while it is held"
        );
        drop(r);
        assert!(s.refuse_start("g", budget).is_none());
        assert!(s.refuse_start("g", RunBudget::default()).is_none());
    }

    #[test]
    fn thinking_that_no_longer_fits_is_refused() {
        let Fixture {
            s, budget, _dir, ..
        } = spending(Some(5_000));
        let a = Ask {
            input: 1_000,
            output: Some(8_000),
            thinking: Some(4_000),
        };
        assert!(s.reserve("g", "r", budget, &a).is_err());
    }

    #[test]
    fn an_incomplete_response_is_charged_its_reservation() {
        let Fixture {
            s, budget, _dir, ..
        } = spending(Some(100_000));
        let r = s
            .reserve("g", "r", budget, &ask(3_000, Some(2_000)))
            .expect("fits")
            .expect("reserved");
        let seen = Usage {
            input_tokens: 120,
            output_tokens: 7,
            ..Usage::default()
        };
        assert_eq!(charge(seen.clone(), true, &r), seen);
        let cut = charge(seen, false, &r);
        assert_eq!((cut.input_tokens, cut.output_tokens), (120, 2_000));
        let nothing = charge(Usage::default(), true, &r);
        assert_eq!(
            (nothing.input_tokens, nothing.output_tokens),
            (3_000, 2_000)
        );
    }

    #[test]
    fn content_whose_cost_is_unbounded_is_named() {
        let ok = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
            {"type": "tool_result", "content": [{"type": "image", "source": {}}]}]}],
            "tools": [{"name": "Bash", "input_schema": {"type": "object"}}, {"type": "custom", "name": "x"}]});
        assert_eq!(unbounded(&ok), None);
        for (bad, why) in [
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                "document",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result",
                "content": [{"type": "search_result"}]}]}]}),
                "search_result",
            ),
            (
                json!({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "web_search",
            ),
            (json!({"messages": [], "mcp_servers": []}), "mcp_servers"),
        ] {
            let got = unbounded(&bad).unwrap_or_default();
            assert!(got.contains(why), "{bad}: {got:?}");
        }
    }

    #[test]
    fn unlimited_runs_reserve_nothing() {
        let Fixture { s, _dir, .. } = spending(None);
        assert!(matches!(
            s.reserve("g", "r", RunBudget::default(), &ask(1, None)),
            Ok(None)
        ));
        let mut body = json!({"max_tokens": 9});
        set_output(&mut body, 3, false);
        assert_eq!(body["max_tokens"], 3);
        let mut body = json!({"max_completion_tokens": 9});
        set_output(&mut body, 3, true);
        assert_eq!(body["max_completion_tokens"], 3);
        let mut body = json!({});
        set_output(&mut body, 3, true);
        assert_eq!(body["max_tokens"], 3);
    }
}
