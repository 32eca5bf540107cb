//! Slack end to end (SPEC §13.3): the fake Slack judged by Slack's own client libraries,
//! the adapter with a real bubblewrap sandbox and the fake model API, envelope
//! redelivery and the `message` + `app_mention` pair, refreshes and drops mid-burst,
//! rate limits, refusals and a lost answer on send, bad tokens, and a `kill -9` of the
//! real binary during a burst.

mod support;

use std::collections::HashMap;
use std::io::BufRead;
use std::time::Duration;

use nanoclaw::channels::Channel;
use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use nanoclaw_test_support::fake_slack::{
    BOT_USER_ID, CHANNEL_ID, DM_ID, FakeSlack, OTHER_USER_ID, PRIVATE_ID, PostFailure, USER_ID,
};
use nanoclaw_test_support::{DEADLINE, wait_for};
use serde_json::json;
use support::{
    BinaryDaemon, ScriptedRunner, Step, channel_condition, open_store, pending_replies,
    register_new, stored_user_texts, wait_stored,
};

const APP: &str = "xapp-1-A0NANOCLAW-e2e";
const BOT: &str = "xoxb-1234-e2e-bot";
const JID: &str = "slack:C0GENERAL1";

fn chat(root: &std::path::Path, jid: &str) -> nanoclaw::store::ChatInfo {
    open_store(root)
        .chats()
        .expect("chats")
        .into_iter()
        .find(|c| c.jid == jid)
        .expect("the chat is known")
}

/// The stdout lines of the official-client script, one step each.
struct ClientLines {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl ClientLines {
    async fn next(&mut self, prefix: &str) -> String {
        let line = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.rx.recv().await {
                self.seen.push(line.clone());
                if line.starts_with(prefix) || line.starts_with("FAILED") {
                    return line;
                }
            }
            String::from("(the client exited)")
        })
        .await
        .unwrap_or_else(|_| panic!("no {prefix} line from the client; so far: {:#?}", self.seen));
        assert!(line.starts_with(prefix), "{line}; all: {:#?}", self.seen);
        line
    }
}

/// `@slack/web-api` and `@slack/socket-mode` talk to the fake: who the bot is, the
/// connection, a message acknowledged and answered, an unknown channel refused, a
/// refresh, a mention delivered as `app_mention`. If the official clients cannot talk to
/// the fake, the fake is wrong, and so would be every test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slacks_own_client_libraries_talk_to_the_fake() {
    let modules =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/node/node_modules");
    assert!(
        modules.join("@slack/socket-mode").exists() && modules.join("@slack/web-api").exists(),
        "@slack/socket-mode and @slack/web-api are missing: run ./scripts/test-tools.sh"
    );
    let fake = FakeSlack::start(APP, BOT).await;
    let mut child = std::process::Command::new("node")
        .arg(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/support/slack-official-client.js"),
        )
        .arg(&fake.api_url)
        .env("SLACK_APP_TOKEN", APP)
        .env("SLACK_BOT_TOKEN", BOT)
        .env("NODE_PATH", &modules)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut client = ClientLines {
        rx,
        seen: Vec::new(),
    };
    assert_eq!(
        client.next("AUTH").await,
        format!("AUTH {BOT_USER_ID} Family")
    );
    assert_eq!(client.next("INFO").await, "INFO general");
    client.next("CONNECTED").await;
    fake.user_says(CHANNEL_ID, "ping");
    assert_eq!(
        client.next("MESSAGE").await,
        format!("MESSAGE {USER_ID} channel: ping (retry 0)")
    );
    assert_eq!(
        client.next("REFUSED").await,
        "REFUSED slack_webapi_platform_error channel_not_found"
    );
    assert!(client.next("UPLOADED").await.starts_with("UPLOADED F0FILE"));
    let shared = fake.shared_files();
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert_eq!(
        (
            shared[0].channel.as_str(),
            shared[0].bytes.as_slice(),
            shared[0].comment.as_deref()
        ),
        (CHANNEL_ID, &b"buy milk"[..], Some("the list")),
        "the official client's upload, as the fake took it"
    );
    assert!(client.next("SENT").await.ends_with(" pong & <done>"));
    assert_eq!(client.next("ECHO").await, "ECHO pong & <done>");
    // A refresh: the client opens a new connection.
    fake.disconnect("refresh_requested");
    wait_for("the official client to reconnect", DEADLINE, || async {
        (fake.opens() == 2 && fake.connected()).then_some(())
    })
    .await;
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> hello"));
    client.next("MESSAGE").await;
    assert_eq!(
        client.next("MENTION").await,
        format!("MENTION <@{BOT_USER_ID}> hello")
    );
    let status = child.wait().expect("the client exits");
    assert!(status.success(), "{:#?}", client.seen);
    assert_eq!(
        fake.unacked(),
        0,
        "the official client acknowledged every envelope"
    );
    assert_eq!(fake.posted(CHANNEL_ID), ["pong & <done>"]);
}

fn anthropic_secrets() -> Secrets {
    Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-real")),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_mention_runs_a_sandboxed_agent_and_the_reply_goes_back_to_the_channel() {
    let llm = FakeAnthropic::start(vec![
        Reply::text("Cake: Bob. And 1 < 2 & 3 > 2, <@U0CAROL001> stays text."),
        Reply::text("Hello in private."),
        Reply::text("Plans noted."),
    ])
    .await;
    let fake = FakeSlack::start(APP, BOT).await;
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), JID, "slack_family");
    register_new(root.path(), &format!("slack:{DM_ID}"), "slack_bob");
    register_new(root.path(), &format!("slack:{PRIVATE_ID}"), "slack_plans");
    let url = llm.url.clone();
    let d = support::start_sandboxed_daemon_in(
        root,
        RuntimeKind::Bwrap,
        None,
        anthropic_secrets(),
        vec![support::slack(&fake, APP, BOT)],
        |c| {
            c.anthropic_base_url = url;
            c.llm_attempts = 1;
            c.idle_timeout = Duration::from_millis(300);
        },
    )
    .await;
    fake.wait_connected("the app connected").await;

    // Chatter without a mention is stored, decoded, and nothing runs.
    fake.user_says_as(
        OTHER_USER_ID,
        CHANNEL_ID,
        "who brings the cake &amp; candles? ask <@U0BOB00001> in <#C0GENERAL1|general>\n- soon",
    );
    assert_eq!(
        wait_stored(d.root(), JID, 1).await,
        ["who brings the cake & candles? ask @Bob in #general\n- soon"]
    );
    support::assert_no_runs(&d.api, "chatter starts no run").await;

    // A mention arrives twice (message and app_mention): stored once, one run.
    let asked = fake.user_says(
        CHANNEL_ID,
        &format!("<@{BOT_USER_ID}> who brings the cake?"),
    );
    let posted = fake.wait_posted("the reply", |p| !p.is_empty()).await;
    assert_eq!(posted[0].channel, CHANNEL_ID);
    assert_eq!(
        posted[0].text, "Cake: Bob. And 1 < 2 & 3 > 2, <@U0CAROL001> stays text.",
        "escaped on the wire, shown as written"
    );
    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "one run for one mention");
    let prompt = requests[0].all_text();
    assert!(
        prompt.contains("who brings the cake &amp; candles?"),
        "the earlier chatter is part of the prompt (escaped once, for the prompt): {prompt}"
    );
    assert!(prompt.contains("@Andy who brings the cake?"), "{prompt}");
    assert!(prompt.contains(r#"sender=\"Bob\""#), "{prompt}");
    assert_eq!(
        stored_user_texts(d.root(), JID)
            .iter()
            .filter(|t| t.contains("who brings the cake?"))
            .count(),
        1
    );
    // The working reaction went on the mention and came off when the run ended.
    assert!(fake.reactions_added(CHANNEL_ID) >= 1);
    wait_for("the reaction removed", DEADLINE, || async {
        fake.reactions_now().is_empty().then_some(())
    })
    .await;
    assert!(
        fake.calls().iter().any(|c| c == "reactions.remove"),
        "{:?} (the mention was {asked})",
        fake.calls()
    );
    let family = chat(d.root(), JID);
    assert_eq!(family.name.as_deref(), Some("Family #general"));
    assert!(family.is_group);

    // A DM and a private channel.
    fake.user_says(DM_ID, &format!("<@{BOT_USER_ID}> just between us"));
    let posted = fake.wait_posted("the DM reply", |p| p.len() >= 2).await;
    assert_eq!(
        (posted[1].channel.as_str(), posted[1].text.as_str()),
        (DM_ID, "Hello in private.")
    );
    let dm = chat(d.root(), &format!("slack:{DM_ID}"));
    assert_eq!(dm.name.as_deref(), Some("DM with Bob"));
    assert!(!dm.is_group);
    fake.user_says(PRIVATE_ID, &format!("<@{BOT_USER_ID}> note the plan"));
    let posted = fake
        .wait_posted("the private reply", |p| p.len() >= 3)
        .await;
    assert_eq!(posted[2].channel, PRIVATE_ID);
    assert_eq!(
        chat(d.root(), &format!("slack:{PRIVATE_ID}"))
            .name
            .as_deref(),
        Some("Family #secret-plans")
    );
    // The bot's own messages came back as events and were not stored again.
    let bot_texts: Vec<String> = open_store(d.root())
        .chat_messages(JID, None)
        .expect("messages")
        .into_iter()
        .filter(|m| m.message.is_bot_message)
        .map(|m| m.message.content)
        .collect();
    assert_eq!(bot_texts.len(), 1, "{bot_texts:?}");
    // The echo of the bot's last reply may still be on its way: every envelope is
    // acknowledged once it has been handled.
    wait_for("every envelope acknowledged", DEADLINE, || async {
        (fake.unacked() == 0).then_some(())
    })
    .await;
    d.stop().await;
}

/// A redelivered envelope (`retry_attempt` 1) is stored and answered once; a refresh
/// and a dropped connection mid-burst lose and repeat nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_refreshes_and_drops_lose_and_repeat_nothing() {
    let fake = FakeSlack::start(APP, BOT).await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["Once.".into()])]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), JID, "slack_burst");
    let d =
        support::channel_daemon(runner.clone(), vec![support::slack(&fake, APP, BOT)], root).await;
    fake.wait_connected("connected").await;
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> answer once"));
    fake.redeliver_last();
    fake.redeliver_last();
    fake.wait_posted("the reply", |p| !p.is_empty()).await;
    let mut n = 0;
    let mut say = |count: usize| {
        for _ in 0..count {
            fake.user_says(CHANNEL_ID, &format!("burst {n:03}"));
            n += 1;
        }
    };
    say(20);
    fake.disconnect("refresh_requested");
    say(20);
    wait_stored(d.root(), JID, 41).await;
    fake.drop_connection();
    say(20);
    fake.disconnect("warning");
    let texts = wait_stored(d.root(), JID, 61).await;
    fake.user_says(CHANNEL_ID, "marker");
    wait_stored(d.root(), JID, 62).await;
    let texts_after = stored_user_texts(d.root(), JID);
    assert_eq!(texts_after.len(), 62, "nothing stored twice: {texts:?}");
    for (i, text) in texts_after[1..61].iter().enumerate() {
        assert_eq!(text, &format!("burst {i:03}"), "in order");
    }
    assert_eq!(runner.runs().len(), 1, "the redelivered mention ran once");
    assert_eq!(fake.posted(CHANNEL_ID), ["Once."]);
    assert!(
        fake.opens() >= 3,
        "reconnected after the refresh and the drop"
    );
    wait_for("every envelope acknowledged", DEADLINE, || async {
        (fake.unacked() == 0).then_some(())
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refusals_and_lost_answers_on_send() {
    let fake = FakeSlack::start(APP, BOT).await;
    let runner = ScriptedRunner::new(vec![
        Step::ReplyAndEnd(vec!["Slow but sure.".into()]),
        Step::ReplyAndEnd(vec!["Nobody will see this.".into()]),
        Step::ReplyAndEnd(vec!["Posted once.".into()]),
        Step::ReplyAndEnd(vec!["Back again.".into()]),
        Step::ReplyAndEnd(vec!["Back again.".into()]),
    ]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), JID, "slack_limits");
    let d = support::channel_daemon(runner, vec![support::slack(&fake, APP, BOT)], root).await;
    fake.wait_connected("connected").await;

    fake.fail_next_post(PostFailure::RateLimited(2));
    let started = std::time::Instant::now();
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> one"));
    fake.wait_posted("the reply after the limit", |p| !p.is_empty())
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the retry waited Retry-After"
    );
    assert_eq!(fake.post_attempts(), ["ratelimited", "ok"]);

    // not_in_channel: given up at once, and the chat is not blocked.
    fake.fail_next_post(PostFailure::Error("not_in_channel".into()));
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> two"));
    wait_for("the refused reply given up", DEADLINE, || async {
        (fake.post_attempts().len() == 3 && pending_replies(d.root()) == 0).then_some(())
    })
    .await;

    // Posted, but the answer was lost: the retry finds it in the history.
    fake.fail_next_post(PostFailure::PostedThenCut);
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> three"));
    wait_for("the reply settled", DEADLINE, || async {
        (fake.posted(CHANNEL_ID).len() == 2 && pending_replies(d.root()) == 0).then_some(())
    })
    .await;
    assert!(fake.calls().iter().any(|c| c == "conversations.history"));
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> four"));
    fake.wait_posted("the next reply", |p| p.len() >= 3).await;
    // The same text again, rate limited first: a refusal is no sign it went out.
    fake.fail_next_post(PostFailure::RateLimited(1));
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> five"));
    fake.wait_posted("the same text again", |p| p.len() >= 4)
        .await;
    assert_eq!(
        fake.posted(CHANNEL_ID),
        [
            "Slow but sure.",
            "Posted once.",
            "Back again.",
            "Back again."
        ]
    );
    assert_eq!(
        fake.post_attempts(),
        [
            "ratelimited",
            "ok",
            "not_in_channel",
            "ok",
            "ok",
            "ratelimited",
            "ok"
        ],
        "nothing posted twice, nothing refused retried"
    );
    assert!(
        fake.unfurls()
            .iter()
            .all(|u| u == &("false".to_string(), "false".to_string())),
        "link previews are off: Slack must not fetch what an agent links to: {:?}",
        fake.unfurls()
    );
    d.stop().await;
}

/// Wrong tokens and Socket Mode switched off stop the channel with what to fix, without
/// a retry loop; a token of the wrong kind is refused before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_say_what_to_fix_without_retrying() {
    let cases = [
        (APP, "xoxb-wrong", "OAuth & Permissions", "auth.test"),
        (
            "xapp-1-wrong",
            BOT,
            "App-Level Tokens",
            "apps.connections.open",
        ),
    ];
    for (app, bot, fix, method) in cases {
        let fake = FakeSlack::start(APP, BOT).await;
        let d = support::channel_daemon(
            ScriptedRunner::new(vec![]),
            vec![support::slack(&fake, app, bot)],
            tempfile::tempdir().expect("temp dir"),
        )
        .await;
        let c = wait_for("the bad token noticed", DEADLINE, || async {
            let c = channel_condition(&d.api, "slack").await;
            (c["state"] == "needs_attention").then_some(c)
        })
        .await;
        let reason = c["reason"].as_str().unwrap_or("");
        assert!(reason.contains(fix), "{c}");
        assert!(!reason.contains("wrong"), "the token is never shown: {c}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            fake.calls().iter().filter(|c| *c == method).count(),
            1,
            "no retry loop: {:?}",
            fake.calls()
        );
        d.stop().await;
    }

    let fake = FakeSlack::start(APP, BOT).await;
    let d = support::channel_daemon(
        ScriptedRunner::new(vec![]),
        vec![support::slack(&fake, APP, BOT)],
        tempfile::tempdir().expect("temp dir"),
    )
    .await;
    fake.wait_connected("connected").await;
    fake.disconnect("link_disabled");
    let c = wait_for("link_disabled noticed", DEADLINE, || async {
        let c = channel_condition(&d.api, "slack").await;
        (c["state"] == "needs_attention").then_some(c)
    })
    .await;
    assert!(
        c["reason"].as_str().unwrap_or("").contains("Socket Mode"),
        "{c}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.opens(), 1, "no reconnect loop");
    d.stop().await;

    let swapped = nanoclaw::channels::slack::Slack::new(
        nanoclaw::channels::slack::SlackConfig {
            api_url: fake.api_url.clone(),
            assistant_name: "Andy".into(),
        },
        BOT,
        APP,
    )
    .err()
    .unwrap_or_default();
    assert!(
        swapped.contains("SLACK_APP_TOKEN must be the token starting with xapp-"),
        "{swapped}"
    );
}

/// The real binary is killed with SIGKILL while messages, some of them mentions, keep
/// coming; after a restart every message is stored once and every reply posted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_and_repeats_nothing() {
    const TOTAL: usize = 60;
    let replies: Vec<Reply> = (0..40)
        .map(|i| Reply::text(&format!("reply {i:02}")))
        .collect();
    let llm = FakeAnthropic::start(replies).await;
    let fake = FakeSlack::start(APP, BOT).await;
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), JID, "slack_stream");
    let env = [
        ("SLACK_APP_TOKEN", APP),
        ("SLACK_BOT_TOKEN", BOT),
        ("SLACK_API_URL", fake.api_url.as_str()),
        ("ANTHROPIC_BASE_URL", llm.url.as_str()),
        ("ANTHROPIC_API_KEY", "sk-test"),
        ("IDLE_TIMEOUT", "300"),
    ];
    let d = BinaryDaemon::spawn(root.path(), &env).await;
    fake.wait_connected("connected").await;
    let mention = format!("<@{BOT_USER_ID}>");
    let text = |i: usize| support::burst_message(i, &mention);
    let stored_text = |i: usize| support::burst_message(i, "@Andy");
    let mut next = 0;
    while next < TOTAL / 2 {
        fake.user_says(CHANNEL_ID, &text(next));
        next += 1;
        if next % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_stored(root.path(), JID, 15).await;
    wait_for("a reply on its way", DEADLINE, || async {
        (!llm.requests().is_empty()).then_some(())
    })
    .await;
    for _ in 0..5 {
        fake.user_says(CHANNEL_ID, &text(next));
        next += 1;
    }
    d.kill9().await;
    let before_restart = stored_user_texts(root.path(), JID).len();
    // The socket of the killed process is gone: Slack keeps the rest for the next one.
    wait_for("the dead connection noticed", DEADLINE, || async {
        (!fake.connected()).then_some(())
    })
    .await;
    while next < TOTAL {
        fake.user_says(CHANNEL_ID, &text(next));
        next += 1;
    }
    let d = BinaryDaemon::spawn(root.path(), &env).await;
    wait_stored(root.path(), JID, TOTAL).await;
    wait_for(
        "every run over and every reply out",
        Duration::from_secs(60),
        || async {
            let (_, status) = d.api.get("/api/status").await.ok()?;
            let idle =
                status["queue"]["active"] == json!([]) && status["queue"]["waiting"] == json!([]);
            (idle && pending_replies(root.path()) == 0).then_some(())
        },
    )
    .await;
    fake.user_says(CHANNEL_ID, "marker");
    wait_stored(root.path(), JID, TOTAL + 1).await;
    let texts = stored_user_texts(root.path(), JID);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &texts {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    for i in 0..TOTAL {
        assert_eq!(
            counts.get(stored_text(i).as_str()),
            Some(&1),
            "{}",
            stored_text(i)
        );
    }
    assert_eq!(texts.len(), TOTAL + 1, "nothing stored twice");
    let mut committed: Vec<String> = open_store(root.path())
        .chat_messages(JID, None)
        .expect("messages")
        .into_iter()
        .filter(|m| m.message.is_bot_message)
        .map(|m| m.message.content)
        .collect();
    let mut posted = fake.posted(CHANNEL_ID);
    committed.sort();
    posted.sort();
    assert!(!posted.is_empty(), "the mentions were answered");
    assert_eq!(posted, committed, "each committed reply posted once");
    eprintln!(
        "{before_restart} of the {} messages sent before the kill were stored by then; {} replies",
        TOTAL / 2 + 5,
        posted.len()
    );
    d.terminate().await;
}

/// The working reaction needs `reactions:write`; without it replies still go out, and
/// the adapter stops asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_reactions_scope_replies_still_go_out() {
    let fake = FakeSlack::start(APP, BOT).await;
    fake.fail_reactions(Some("missing_scope"));
    let runner = ScriptedRunner::new(vec![
        Step::ReplyAndEnd(vec!["First.".into()]),
        Step::ReplyAndEnd(vec!["Second.".into()]),
    ]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), JID, "slack_scopes");
    let slack = support::slack(&fake, APP, BOT);
    let d = support::channel_daemon(runner, vec![slack.clone()], root).await;
    fake.wait_connected("connected").await;
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> one"));
    fake.wait_posted("the first reply", |p| !p.is_empty()).await;
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> two"));
    fake.wait_posted("the second reply", |p| p.len() >= 2).await;
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.starts_with("reactions."))
            .count(),
        1,
        "asked once, then stopped: {:?}",
        fake.calls()
    );
    assert!(slack.is_connected());
    d.stop().await;
}

/// `doctor` names a half-configured Slack (and says how to turn the others on), daemon
/// running or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_half_configured_channel() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::write(root.path().join(".env"), "SLACK_APP_TOKEN=xapp-1-A0-only\n").expect(".env");
    let (ok, stdout, stderr) = support::cli(root.path(), &["doctor"]).await;
    assert!(
        !ok,
        "a channel that cannot start fails doctor: {stdout}{stderr}"
    );
    assert!(
        stdout.contains("slack: off: SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN is not"),
        "{stdout}"
    );
    assert!(
        stdout.contains("discord: off (set DISCORD_BOT_TOKEN"),
        "{stdout}"
    );
    assert!(!stdout.contains("xapp-1-A0-only"), "tokens are never shown");
}

/// Messages Slack gave up redelivering while the daemon was down are fetched from each
/// registered channel's history on the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_slack_gave_up_on_are_fetched_from_the_history() {
    let fake = FakeSlack::start(APP, BOT).await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["Caught up.".into()])]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), JID, "slack_gap");
    let d =
        support::channel_daemon(runner.clone(), vec![support::slack(&fake, APP, BOT)], root).await;
    fake.wait_connected("connected").await;
    fake.user_says(CHANNEL_ID, "before the gap");
    wait_stored(d.root(), JID, 1).await;
    let root = d.stop().await;
    wait_for("the connection closed", DEADLINE, || async {
        (!fake.connected()).then_some(())
    })
    .await;
    fake.user_says(CHANNEL_ID, "while down &amp; away");
    fake.user_says(CHANNEL_ID, &format!("<@{BOT_USER_ID}> did you miss this?"));
    fake.expire_pending();
    fake.fail_history(1);
    let d =
        support::channel_daemon(runner.clone(), vec![support::slack(&fake, APP, BOT)], root).await;
    assert_eq!(
        wait_stored(d.root(), JID, 3).await,
        [
            "before the gap",
            "while down & away",
            "@Andy did you miss this?"
        ]
    );
    fake.wait_posted("the reply to the missed mention", |p| !p.is_empty())
        .await;
    assert_eq!(fake.posted(CHANNEL_ID), ["Caught up."]);
    assert!(
        fake.calls()
            .iter()
            .filter(|c| *c == "conversations.history")
            .count()
            >= 2,
        "tried again after a failure"
    );
    d.stop().await;
}

/// A reply Slack posted but delivery never noted (a crash right after, or a send that
/// timed out at our end) is not posted again when delivery retries it; another reply
/// with the same text is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_again_is_posted_once() {
    let fake = FakeSlack::start(APP, BOT).await;
    let slack = support::slack(&fake, APP, BOT);
    let d = support::channel_daemon(
        ScriptedRunner::new(vec![]),
        vec![slack.clone()],
        tempfile::tempdir().expect("temp dir"),
    )
    .await;
    fake.wait_connected("connected").await;
    let message = nanoclaw::channels::OutboundMessage {
        outbox_id: 7,
        chat_jid: JID.into(),
        text: "Done.".into(),
        timestamp: "2026-01-31T13:32:00.000Z".into(),
        file: None,
        explicit: false,
    };
    slack.send(&message).await.expect("sent");
    slack.send(&message).await.expect("sent again");
    let other = nanoclaw::channels::OutboundMessage {
        outbox_id: 8,
        ..message.clone()
    };
    slack.send(&other).await.expect("another reply");
    assert_eq!(fake.posted(CHANNEL_ID), ["Done.", "Done."]);
    assert_eq!(
        fake.post_attempts(),
        ["ok", "ok"],
        "the repeat was not posted"
    );
    d.stop().await;
}

/// A reply with a file (`send_file`) is shared the way Slack takes uploads: an upload
/// URL, the bytes there without the bot token, then completion in the channel with the
/// caption as its comment; a caption longer than one message follows as messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reply_is_shared_in_the_channel() {
    use nanoclaw::channels::{Channel, OutboundFile};
    let fake = FakeSlack::start(APP, BOT).await;
    let slack = support::slack(&fake, APP, BOT);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("copy");
    std::fs::write(&path, b"a,b\n1,2\n").expect("write");
    let file = OutboundFile {
        name: "table.csv".into(),
        path,
        size: 8,
    };
    let message = nanoclaw::channels::OutboundMessage {
        outbox_id: 9,
        chat_jid: JID.into(),
        text: "Numbers <here> & there".into(),
        timestamp: "2026-01-31T13:32:00.000Z".into(),
        file: Some(file),
        explicit: false,
    };
    slack.send(&message).await.expect("shared");
    let shared = fake.shared_files();
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert_eq!(shared[0].channel, CHANNEL_ID);
    assert_eq!(shared[0].title, "table.csv");
    assert_eq!(shared[0].bytes, b"a,b\n1,2\n");
    assert_eq!(shared[0].comment.as_deref(), Some("Numbers <here> & there"));
    assert!(
        !shared[0].upload_had_token,
        "the bot token stays with Slack's API"
    );
    assert!(
        fake.posted(CHANNEL_ID).is_empty(),
        "the caption went with the file"
    );

    let long = nanoclaw::channels::OutboundMessage {
        outbox_id: 10,
        text: format!("{} end", "word ".repeat(1000)),
        ..message
    };
    slack.send(&long).await.expect("shared");
    let shared = fake.shared_files();
    assert_eq!((shared.len(), shared[1].comment.as_deref()), (2, None));
    let posted = fake.posted(CHANNEL_ID);
    assert!(
        posted.len() >= 2 && posted.last().is_some_and(|p| p.ends_with(" end")),
        "{posted:?}"
    );
}

/// A file a person shares lands in the group's inbox and is named in the prompt; it is
/// fetched with the bot token, which Slack's file host needs, and a file shared in a
/// chat no group is registered for is never downloaded (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_file_lands_in_the_inbox() {
    let fake = FakeSlack::start(APP, BOT).await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["Read it.".into()])]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), JID, "slack_files");
    let slack = support::slack(&fake, APP, BOT);
    let d = support::channel_daemon(runner.clone(), vec![slack.clone()], root).await;
    fake.wait_connected("connected").await;
    // Nobody registered the DM: its file is stored as a message, never fetched.
    fake.user_shares_file(
        nanoclaw_test_support::fake_slack::DM_ID,
        "",
        "secret.txt",
        b"nope",
    );
    fake.user_shares_file(
        CHANNEL_ID,
        &format!("<@{BOT_USER_ID}> read this"),
        "notes.txt",
        b"buy milk",
    );
    fake.wait_posted("the reply", |p| !p.is_empty()).await;
    let runs = runner.wait_runs("one run", |r| !r.is_empty()).await;
    assert!(
        runs[0].prompt.contains("[File: notes.txt]")
            && runs[0]
                .prompt
                .contains("/workspace/group/inbox/notes.txt (1 KB)"),
        "{}",
        runs[0].prompt
    );
    assert_eq!(
        std::fs::read(d.root().join("groups/slack_files/inbox/notes.txt")).expect("saved"),
        b"buy milk"
    );
    let downloads = fake.file_downloads();
    assert_eq!(
        downloads.len(),
        1,
        "only the registered chat's file: {downloads:?}"
    );
    assert!(downloads[0].1, "with the bot token");
    d.stop().await;
}
