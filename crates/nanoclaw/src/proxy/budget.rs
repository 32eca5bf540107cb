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

/// Tokens reserved for each image block: Anthropic's largest (about 4800 for the
/// high-resolution models), above OpenAI's patch-based ones; the base64 bytes are
/// counted too.
const IMAGE_TOKENS: u64 = 4_800;
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
        resets: String,
    },
    Run {
        limit: u64,
        used: u64,
    },
    /// Not spent, but too little left for the request.
    TooLarge {
        need: u64,
        left: u64,
        /// Which ceiling, in words.
        of: String,
    },
}

impl Refusal {
    /// What the chat (and the agent, and the log) is told.
    pub fn message(&self) -> String {
        match self {
            Refusal::Daily {
                limit,
                used,
                resets,
            } => format!(
                "this group's daily budget of {limit} tokens is reached ({used} used or in use today); \
                 it resets at {resets}. Main can raise it: set container_config.budget.dailyTokens \
                 for this group (ask in the main chat), or NANOCLAW_DAILY_TOKEN_BUDGET in .env"
            ),
            Refusal::Run { limit, used } => format!(
                "this run reached its budget of {limit} tokens ({used} used or in use); a new message starts a \
                 new run (container_config.budget.runTokens raises it)"
            ),
            Refusal::TooLarge { need, left, of } => format!(
                "the next model request may need up to {need} tokens and only {left} are left of {of}; \
                 main can raise it with container_config.budget"
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

impl Reservation {
    /// Runs `record` (which stores what the response used) and releases the
    /// reservation in one step under the budget's lock, so a request checked meanwhile
    /// sees the tokens once: reserved or stored, never both and never neither.
    pub fn settle(mut self, record: impl FnOnce()) {
        let spending = Arc::clone(&self.spending);
        let mut guard = spending.lock();
        record();
        self.release(&mut guard);
    }

    fn release(&mut self, st: &mut State) {
        let tokens = std::mem::take(&mut self.tokens);
        for (map, key) in [(&mut st.groups, &self.group), (&mut st.runs, &self.run)] {
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(tokens);
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.tokens == 0 {
            return;
        }
        let spending = Arc::clone(&self.spending);
        let mut guard = spending.lock();
        self.release(&mut guard);
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

/// What a budgeted request may contain: only what its bytes bound. Everything else
/// (documents, whose pages become images; server tools and MCP servers, which make the
/// API read more input on its own; compaction and other context management, whose extra
/// sampling is reported apart; `n` and friends, which multiply the output; server
/// specific output caps such as llama.cpp's `n_predict`) is refused, by allowlist, so a
/// new API feature is refused until it is understood.
const ANTHROPIC_KEYS: [&str; 13] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
];
const OPENAI_KEYS: [&str; 17] = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "stop",
    "response_format",
    "seed",
    "user",
    "frequency_penalty",
    "presence_penalty",
];
/// Content block types: Anthropic's, then OpenAI's content parts.
const ANTHROPIC_BLOCKS: [&str; 6] = [
    "text",
    "image",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
];
const OPENAI_PARTS: [&str; 2] = ["text", "image_url"];

/// Why a budgeted request cannot be bounded, if it cannot.
pub fn unbounded(json: &Value, openai: bool) -> Option<String> {
    let Some(map) = json.as_object() else {
        return Some("is not a JSON object".into());
    };
    let keys: &[&str] = if openai {
        &OPENAI_KEYS
    } else {
        &ANTHROPIC_KEYS
    };
    if let Some(key) = map.keys().find(|k| !keys.contains(&k.as_str())) {
        return Some(format!("sets {key:?}"));
    }
    if let Some(tools) = json.get("tools") {
        let Some(tools) = tools.as_array() else {
            return Some("has tools that are not a list".into());
        };
        for tool in tools {
            let kind = tool.get("type").and_then(Value::as_str);
            let client_tool = if openai {
                kind == Some("function")
            } else {
                matches!(kind, None | Some("custom"))
            };
            if !client_tool {
                return Some(format!("uses the tool type {}", kind.unwrap_or("?")));
            }
        }
    }
    let allowed: &[&str] = if openai {
        &OPENAI_PARTS
    } else {
        &ANTHROPIC_BLOCKS
    };
    let check = |blocks: &Value| -> Option<String> {
        let Some(blocks) = blocks.as_array() else {
            return None; // a plain string
        };
        for block in blocks {
            let kind = block.get("type").and_then(Value::as_str).unwrap_or("?");
            if !allowed.contains(&kind) {
                return Some(format!("has a {kind} block"));
            }
            if kind == "tool_result"
                && let Some(inner) = block.get("content").and_then(Value::as_array)
            {
                for b in inner {
                    let k = b.get("type").and_then(Value::as_str).unwrap_or("?");
                    if !matches!(k, "text" | "image") {
                        return Some(format!("has a {k} block in a tool result"));
                    }
                }
            }
        }
        None
    };
    if let Some(why) = json.get("system").and_then(check) {
        return Some(why);
    }
    for message in json["messages"].as_array().into_iter().flatten() {
        if let Some(why) = check(&message["content"]) {
            return Some(why);
        }
    }
    None
}

/// How many JSON values `bytes` holds at most (its structural characters outside
/// strings), counted without parsing: a cheap guard before a parse that costs memory.
pub fn structure_count(bytes: &[u8]) -> usize {
    let (mut n, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' | b',' | b':' => n += 1,
            _ => {}
        }
    }
    n
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

/// Sets the request's output ceiling to `output`. OpenAI-compatible servers read either
/// field (Ollama `max_tokens`, newer OpenAI `max_completion_tokens`), so both carry it
/// when the request named the newer one.
pub fn set_output(json: &mut Value, output: u64, openai: bool) {
    let Some(map) = json.as_object_mut() else {
        return;
    };
    if openai && map.contains_key("max_completion_tokens") {
        map.insert("max_completion_tokens".into(), output.into());
    }
    map.insert("max_tokens".into(), output.into());
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
            // Spent, or only too little left for this request (which the chat hears
            // about each time; "stopped for today" is for a spent day).
            let refusal = match refusal {
                Refusal::Daily {
                    limit,
                    used,
                    resets,
                    ..
                } if used < limit => Refusal::TooLarge {
                    need,
                    left: limit - used,
                    of: format!(
                        "this group's daily budget of {limit} tokens (it resets at {resets})"
                    ),
                },
                Refusal::Run { limit, used } if used < limit => Refusal::TooLarge {
                    need,
                    left: limit - used,
                    of: format!("this run's budget of {limit} tokens"),
                },
                spent => spent,
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
            why.contains("only 500 are left of this run's budget of 1500 tokens"),
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

    /// A request checked while another's usage is being stored sees those tokens once:
    /// never the stored row and the reservation together (a spurious refusal), never
    /// neither (an overspend).
    #[test]
    fn storing_usage_and_releasing_its_reservation_are_one_step() {
        let Fixture { s, store, _dir, .. } = spending(None);
        let budget = RunBudget {
            daily: None,
            run: Some(5_000),
        };
        let r = s
            .reserve("g", "r", budget, &ask(3_000, Some(1_000)))
            .expect("fits")
            .expect("reserved");
        let (checking, checked) = std::sync::mpsc::channel();
        let checker = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let _ = checked.recv();
                // 3000 stored + 4000 reserved would leave nothing for 1500 in.
                s.reserve("g", "r", budget, &ask(1_500, Some(10)))
                    .map(|r| r.map(|r| r.output))
            })
        };
        r.settle(|| {
            store
                .record_usage(
                    "g",
                    "r",
                    None,
                    &Usage {
                        input_tokens: 2_000,
                        output_tokens: 1_000,
                        ..Usage::default()
                    },
                )
                .expect("record");
            let _ = checking.send(());
            // The checker is waiting on the lock by now; it must get the state after.
            std::thread::sleep(std::time::Duration::from_millis(100));
        });
        let seen = checker.join().expect("checker");
        assert_eq!(seen, Ok(Some(10)), "2000 left after 3000 stored");
        assert!(s.lock().runs.is_empty(), "released");
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
    fn only_what_bytes_bound_is_allowed() {
        let ok = json!({"model": "m", "max_tokens": 5, "stream": true,
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "base64"}}]}]},
            {"role": "assistant", "content": "plain"}],
            "tools": [{"name": "Bash", "input_schema": {"type": "object"}}, {"type": "custom", "name": "x"}]});
        assert_eq!(unbounded(&ok, false), None);
        let openai_ok = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user",
            "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "data:"}}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "stream_options": {"include_usage": true}});
        assert_eq!(unbounded(&openai_ok, true), None);
        for (bad, openai, why) in [
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                false,
                "document",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result",
                "content": [{"type": "search_result"}]}]}]}),
                false,
                "search_result",
            ),
            (
                json!({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                false,
                "web_search",
            ),
            (
                json!({"messages": [], "tools": [{"type": "bash_20250124", "name": "bash"}]}),
                false,
                "bash_20250124",
            ),
            (
                json!({"messages": [], "mcp_servers": []}),
                false,
                "mcp_servers",
            ),
            (
                json!({"messages": [], "context_management": {}}),
                false,
                "context_management",
            ),
            (json!({"messages": [], "n": 8}), true, "\"n\""),
            (json!({"messages": [], "n_predict": 100}), true, "n_predict"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "file"}]}]}),
                true,
                "file",
            ),
            (json!([1, 2]), false, "not a JSON object"),
        ] {
            let got = unbounded(&bad, openai).unwrap_or_default();
            assert!(got.contains(why), "{bad}: {got:?}");
        }
    }

    #[test]
    fn structure_is_counted_outside_strings() {
        assert_eq!(structure_count(br#"{"a":[1,2],"b":"x,y:[{"}"#), 6);
        assert_eq!(structure_count(br#"["a\",",1]"#), 2);
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
        let mut body = json!({"max_completion_tokens": 9, "max_tokens": 1_000_000});
        set_output(&mut body, 3, true);
        assert_eq!(
            (
                body["max_completion_tokens"].as_u64(),
                body["max_tokens"].as_u64()
            ),
            (Some(3), Some(3))
        );
        let mut body = json!({});
        set_output(&mut body, 3, true);
        assert_eq!(body["max_tokens"], 3);
    }
}
