//! Telegram end to end (SPEC §13): the adapter against the fake Bot API with a real
//! bubblewrap sandbox and the fake model API, a `kill -9` of the real binary in the middle
//! of a stream of updates, 429 handling, and the third-party `telegram-test-api`
//! emulator as a second opinion on the wire format.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use nanoclaw::channels::telegram::Telegram;
use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use nanoclaw_test_support::fake_telegram::{BOT_USERNAME, Chat, FakeTelegram, SendFailure, User};
use nanoclaw_test_support::{DEADLINE, free_port, wait_for};
use support::{
    BinaryDaemon, ScriptedRunner, Step, open_store, pending_replies, register_new,
    stored_user_texts, wait_stored,
};

const TOKEN: &str = "123456:telegram-e2e-token";

fn anthropic_secrets() -> Secrets {
    Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-real")),
        ..Default::default()
    }
}

/// A daemon with the Telegram channel on `tg` and real bwrap agents on `llm`, `jid`
/// registered as `folder` (trigger required).
async fn sandboxed_telegram_daemon(
    llm: &FakeAnthropic,
    tg: &FakeTelegram,
    jid: &str,
    folder: &str,
) -> support::TestDaemon {
    let telegram = Telegram::new(&tg.url, TOKEN, "Andy").expect("telegram");
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), jid, folder);
    let url = llm.url.clone();
    support::start_sandboxed_daemon_in(
        root,
        RuntimeKind::Bwrap,
        None,
        anthropic_secrets(),
        vec![telegram],
        |c| {
            c.anthropic_base_url = url;
            c.llm_attempts = 1;
            c.idle_timeout = Duration::from_millis(300);
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_mention_runs_a_sandboxed_agent_and_the_reply_goes_back_to_the_chat() {
    let llm = FakeAnthropic::start(vec![
        Reply::text("Hello from the sandbox."),
        Reply::text("And hello again."),
    ])
    .await;
    let tg = FakeTelegram::start(TOKEN).await;
    let d = sandboxed_telegram_daemon(&llm, &tg, "tg:-100777", "tg_family").await;
    let chat = Chat::group(-100_777, "Family");
    let jo = User::new(31, "Jo");

    // Chatter without the trigger is stored, and nothing runs.
    tg.user_says(&chat, &jo, "who is bringing the cake on sunday?");
    let stored = wait_for("the chatter stored", DEADLINE, || {
        let root = d.root().to_path_buf();
        async move {
            let texts = stored_user_texts(&root, "tg:-100777");
            (!texts.is_empty()).then_some(texts)
        }
    })
    .await;
    assert_eq!(stored, ["who is bringing the cake on sunday?"]);

    // The bot's @username is the trigger.
    tg.user_says(&chat, &jo, &format!("@{BOT_USERNAME} can you remind us?"));
    let sent = tg.wait_sent(-100_777, 1).await;
    assert_eq!(sent, ["Hello from the sandbox."]);
    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "one run for one trigger");
    let prompt = requests[0].all_text();
    assert!(
        prompt.contains("who is bringing the cake on sunday?"),
        "the earlier chatter is part of the prompt: {prompt}"
    );
    assert!(
        prompt.contains("@Andy can you remind us?"),
        "the mention became the assistant trigger: {prompt}"
    );
    assert!(
        prompt.contains(r#"sender=\"Jo\""#),
        "the sender's name is in the prompt: {prompt}"
    );
    assert!(
        tg.typing_actions(-100_777) >= 1,
        "typing shown during the run"
    );

    // `@Andy` works too, once the first run is over.
    support::wait_first_run(d.root(), "tg_family").await;
    tg.user_says(&chat, &jo, "@Andy and the candles?");
    let sent = tg.wait_sent(-100_777, 2).await;
    assert_eq!(sent[1], "And hello again.");
    assert_eq!(llm.requests().len(), 2);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_telegram_is_honoured_and_the_reply_arrives() {
    let tg = FakeTelegram::start(TOKEN).await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["Slow but sure.".into()])]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), "tg:-100888", "tg_slow");
    let d = support::telegram_daemon(runner, &tg.url, TOKEN, root).await;
    tg.fail_next_sends_with_429(2, 1);
    let chat = Chat::group(-100_888, "Slow");
    tg.user_says(&chat, &User::new(5, "Sam"), "@Andy hi");
    let sent = tg.wait_sent(-100_888, 1).await;
    assert_eq!(sent, ["Slow but sure."], "sent once, after the wait");
    let attempts = tg.send_attempts();
    assert_eq!(
        attempts.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [429, 200]
    );
    let waited = attempts[1].0.duration_since(attempts[0].0);
    assert!(
        waited >= Duration::from_secs(2),
        "the retry waited retry_after (2 s), not {waited:?}"
    );
    d.stop().await;
}

fn rusqlite_conn(root: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(root.join("store/messages.db")).expect("open the database")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_telegram_refuses_for_good_does_not_block_the_chat() {
    let tg = FakeTelegram::start(TOKEN).await;
    let runner = ScriptedRunner::new(vec![
        Step::ReplyAndEnd(vec!["You blocked me.".into()]),
        Step::ReplyAndEnd(vec!["Group moved.".into()]),
        Step::ReplyAndEnd(vec!["Back again.".into()]),
    ]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), "tg:-100321", "tg_blocked");
    let d = support::telegram_daemon(runner.clone(), &tg.url, TOKEN, root).await;
    let chat = Chat::group(-100_321, "Blocked");
    let sam = User::new(5, "Sam");

    tg.fail_next_sends(
        SendFailure::new(403, "Forbidden: bot was blocked by the user"),
        1,
    );
    tg.user_says(&chat, &sam, "@Andy one");
    let mut moved = SendFailure::new(
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
    );
    moved.migrate_to_chat_id = Some(-100_999_000);
    wait_for("the first reply given up", DEADLINE, || async {
        (tg.send_attempts().len() == 1 && pending_replies(d.root()) == 0).then_some(())
    })
    .await;
    tg.fail_next_sends(moved, 1);
    tg.user_says(&chat, &sam, "@Andy two");
    wait_for("the second reply given up", DEADLINE, || async {
        (tg.send_attempts().len() == 2 && pending_replies(d.root()) == 0).then_some(())
    })
    .await;
    tg.user_says(&chat, &sam, "@Andy three");
    let sent = tg.wait_sent(-100_321, 1).await;
    assert_eq!(sent, ["Back again."], "later replies are not held back");
    assert_eq!(
        tg.send_attempts()
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        [403, 400, 200],
        "refused replies are not retried"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_reply_waits_for_the_channel_instead_of_being_given_up() {
    let tg = FakeTelegram::start(TOKEN).await;
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), "tg:-100246", "tg_weekend");
    {
        // Written before a long downtime, never sent.
        let store = nanoclaw::store::Store::open(&root.path().join("store/messages.db"), "Andy")
            .expect("open store");
        store
            .commit_reply("tg:-100246", "Sorry for the delay.", "Andy", None)
            .expect("commit");
        let conn = rusqlite_conn(root.path());
        conn.execute(
            "UPDATE outbox SET created_at = '2020-01-01T00:00:00.000Z'",
            [],
        )
        .expect("age the reply");
    }
    // Telegram is unreachable for the first start-up attempts.
    tg.fail_next_get_me(2);
    let d = support::telegram_daemon(ScriptedRunner::new(vec![]), &tg.url, TOKEN, root).await;
    assert_eq!(
        tg.wait_sent(-100_246, 1).await,
        ["Sorry for the delay."],
        "sent once Telegram was reachable, not given up for its age"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_cut_off_by_a_restart_resumes_without_repeating_pieces() {
    let tg = FakeTelegram::start(TOKEN).await;
    let long: String = (0..3)
        .map(|i| format!("{}\n\n", format!("part{i} ").repeat(700)))
        .collect();
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec![long.clone()])]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), "tg:-100654", "tg_long");
    let d = support::telegram_daemon(runner, &tg.url, TOKEN, root).await;
    // The first piece goes out, the second fails (a Telegram outage), then we restart.
    tg.fail_next_sends(SendFailure::new(200, "through"), 1);
    tg.fail_next_sends(SendFailure::new(502, "Bad Gateway"), 1);
    let chat = Chat::group(-100_654, "Long");
    tg.user_says(&chat, &User::new(5, "Sam"), "@Andy tell me everything");
    wait_for("the second piece to fail", DEADLINE, || async {
        tg.send_attempts()
            .iter()
            .any(|(_, status)| *status == 502)
            .then_some(())
    })
    .await;
    let sent_before = tg.sent(-100_654);
    let root = d.stop().await;
    let d = support::telegram_daemon(ScriptedRunner::new(vec![]), &tg.url, TOKEN, root).await;
    wait_for("the rest of the reply", DEADLINE, || async {
        (pending_replies(d.root()) == 0).then_some(())
    })
    .await;
    let sent = tg.sent(-100_654);
    assert_eq!(sent_before.len(), 1, "one piece was out before the restart");
    // Every word exactly once, in order: no piece was sent twice or skipped.
    let words = |t: &str| t.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let got = words(&sent.join(" "));
    let want = words(&long);
    assert!(
        got == want,
        "{} words sent in {} pieces, {} in the reply",
        got.len(),
        sent.len(),
        want.len()
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_starts_a_group_with_its_own_trigger() {
    let tg = FakeTelegram::start(TOKEN).await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec![
        "Custom trigger works.".into(),
    ])]);
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    nanoclaw::store::Store::open(&root.path().join("store/messages.db"), "Andy")
        .expect("open store")
        .register_group(&nanoclaw::store::RegisteredGroup {
            jid: "tg:-100432".into(),
            name: "AI club".into(),
            folder: "tg_ai".into(),
            trigger_pattern: "!ai".into(),
            added_at: nanoclaw::clock::now(),
            container_config: None,
            requires_trigger: true,
            is_main: false,
        })
        .expect("register");
    let d = support::telegram_daemon(runner, &tg.url, TOKEN, root).await;
    let chat = Chat::group(-100_432, "AI club");
    tg.user_says(
        &chat,
        &User::new(8, "Ada"),
        &format!("@{BOT_USERNAME} summarise please"),
    );
    assert_eq!(tg.wait_sent(-100_432, 1).await, ["Custom trigger works."]);
    assert_eq!(
        stored_user_texts(d.root(), "tg:-100432"),
        ["!ai summarise please"],
        "the mention became this group's trigger"
    );
    d.stop().await;
}

/// A photo a user sends is saved into the group's inbox, named in the prompt, and shown
/// to the model as an image block; a document is saved and named (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_reaches_the_model_as_an_image_and_files_land_in_the_inbox() {
    use base64::Engine;
    let llm = FakeAnthropic::start(vec![
        Reply::text("A red square."),
        Reply::text("Got the notes."),
    ])
    .await;
    let tg = FakeTelegram::start(TOKEN).await;
    let d = sandboxed_telegram_daemon(&llm, &tg, "tg:-100778", "tg_pics").await;
    let chat = Chat::group(-100_778, "Pictures");
    let jo = User::new(32, "Jo");
    // A JPEG's first bytes and some body: what the agent sends is what the user sent.
    let mut photo = vec![0xFF, 0xD8, 0xFF, 0xE0];
    photo.extend((0..5000u32).map(|i| (i % 251) as u8));
    let id = tg.user_sends_photo(&chat, &jo, &photo, Some("@Andy what is this?"));
    assert_eq!(tg.wait_sent(-100_778, 1).await, ["A red square."]);
    let saved = d
        .root()
        .join(format!("groups/tg_pics/inbox/photo-{id}.jpg"));
    assert_eq!(std::fs::read(&saved).expect("saved in the inbox"), photo);
    let request = &llm.requests()[0];
    let blocks = request.body["messages"][0]["content"]
        .as_array()
        .expect("blocks");
    let text = blocks[0]["text"].as_str().unwrap_or("");
    assert!(
        text.contains("@Andy what is this? [Photo]")
            && text.contains(&format!("/workspace/group/inbox/photo-{id}.jpg (5 KB)")),
        "{text}"
    );
    let image = blocks
        .iter()
        .find(|b| b["type"] == "image")
        .expect("an image block");
    assert_eq!(image["source"]["media_type"], "image/jpeg");
    assert_eq!(
        image["source"]["data"],
        base64::engine::general_purpose::STANDARD.encode(&photo)
    );
    assert_eq!(tg.downloads(), 1, "the largest size only");

    support::wait_first_run(d.root(), "tg_pics").await;
    tg.user_sends_document(&chat, &jo, "notes.txt", b"buy milk");
    tg.user_says(&chat, &jo, "@Andy read my notes");
    assert_eq!(tg.wait_sent(-100_778, 2).await[1], "Got the notes.");
    assert_eq!(
        std::fs::read(d.root().join("groups/tg_pics/inbox/notes.txt")).expect("document saved"),
        b"buy milk"
    );
    let prompt = llm.requests()[1].all_text();
    assert!(
        prompt.contains("/workspace/group/inbox/notes.txt"),
        "{prompt}"
    );
    d.stop().await;
}

/// A file a user sends counts against the group's disk quota (over it, it is named, not
/// saved), and nothing is downloaded for a chat no group is registered for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_respect_the_quota_and_strangers_files_are_not_downloaded() {
    let tg = FakeTelegram::start(TOKEN).await;
    let runner = ScriptedRunner::new(vec![]);
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    open_store(root.path())
        .register_group(&nanoclaw::store::RegisteredGroup {
            jid: "tg:-100434".into(),
            name: "Small".into(),
            folder: "tg_small".into(),
            trigger_pattern: "@Andy".into(),
            added_at: nanoclaw::clock::now(),
            container_config: Some(r#"{"limits": {"diskMb": 16}}"#.into()),
            requires_trigger: true,
            is_main: false,
        })
        .expect("register");
    let d = support::telegram_daemon(runner, &tg.url, TOKEN, root).await;
    let ada = User::new(8, "Ada");
    let small = Chat::group(-100_434, "Small");
    tg.user_sends_document(&small, &ada, "big.bin", &vec![7u8; 17 << 20]);
    let stranger = Chat::private(555);
    tg.user_sends_document(&stranger, &User::new(9, "Eve"), "spam.bin", &[1u8; 4096]);
    tg.user_says(&small, &ada, "after the file");
    let stored = wait_stored(d.root(), "tg:-100434", 2).await;
    assert_eq!(
        stored[0],
        "[Document: big.bin]\n[attachment: big.bin (17.0 MB), not saved: the group's folders would be over its disk quota of 16 MiB]"
    );
    assert!(!d.root().join("groups/tg_small/inbox/big.bin").exists());
    assert_eq!(
        tg.downloads(),
        0,
        "over the quota by its announced size, and a stranger's: neither downloaded"
    );
    d.stop().await;
}

/// A photo whose caption starts with the trigger is answered in a group that needs one
/// (issue 17: it used to be stored as "[Photo] @Andy …", which does not start with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captioned_photo_that_starts_with_the_trigger_is_answered() {
    let tg = FakeTelegram::start(TOKEN).await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["A cat.".into()])]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), "tg:-100433", "tg_photos");
    let d = support::telegram_daemon(runner, &tg.url, TOKEN, root).await;
    let chat = Chat::group(-100_433, "Photos");
    let ada = User::new(8, "Ada");
    let first = tg.user_sends_photo(&chat, &ada, &[0xFF, 0xD8, 0xFF, 1], Some("no trigger here"));
    // A file the Bot API no longer has is named, not fatal.
    let now = nanoclaw::clock::millis_now() / 1000;
    tg.raw_update(serde_json::json!({"message": {
        "message_id": 41, "date": now,
        "chat": {"id": -100_433, "type": "supergroup", "title": "Photos"},
        "from": {"id": 8, "is_bot": false, "first_name": "Ada"},
        "photo": [{"file_id": "gone", "file_unique_id": "u1", "width": 90, "height": 90, "file_size": 1200}],
        "caption": "@Andy what is this?",
    }}));
    assert_eq!(tg.wait_sent(-100_433, 1).await, ["A cat."]);
    assert_eq!(
        stored_user_texts(d.root(), "tg:-100433"),
        [
            format!(
                "no trigger here [Photo]\n[attachment: /workspace/group/inbox/photo-{first}.jpg (1 KB)]"
            ),
            "@Andy what is this? [Photo]\n[attachment: photo-41.jpg, could not be downloaded]"
                .to_string()
        ]
    );
    d.stop().await;
}

/// The real binary is killed with SIGKILL while updates keep coming; after a restart
/// every message is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_stream_loses_and_repeats_nothing() {
    const TOTAL: usize = 120;
    let tg = FakeTelegram::start(TOKEN).await;
    let root = tempfile::tempdir().expect("temp dir");
    // Triggers are required, so nothing runs: this is about intake only.
    register_new(root.path(), "tg:-100999", "tg_stream");
    let env = [
        ("TELEGRAM_BOT_TOKEN", TOKEN),
        ("TELEGRAM_API_URL", tg.url.as_str()),
    ];
    let d = BinaryDaemon::spawn(root.path(), &env).await;
    let chat = Chat::group(-100_999, "Stream");
    let ana = User::new(77, "Ana");
    let mut next = 0;
    // A steady stream; the kill lands while the daemon is busy storing it.
    while next < TOTAL / 2 {
        tg.user_says(&chat, &ana, &format!("message {next:03}"));
        next += 1;
        if next % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_for("some of the stream stored", DEADLINE, || {
        let root = root.path().to_path_buf();
        async move { (stored_user_texts(&root, "tg:-100999").len() >= 20).then_some(()) }
    })
    .await;
    for _ in 0..10 {
        tg.user_says(&chat, &ana, &format!("message {next:03}"));
        next += 1;
    }
    let pushed_at_kill = next;
    d.kill9().await;
    let before_restart = stored_user_texts(root.path(), "tg:-100999").len();
    while next < TOTAL {
        tg.user_says(&chat, &ana, &format!("message {next:03}"));
        next += 1;
    }
    let d = BinaryDaemon::spawn(root.path(), &env).await;
    let texts = wait_for("the whole stream stored", DEADLINE, || {
        let root = root.path().to_path_buf();
        async move {
            let texts = stored_user_texts(&root, "tg:-100999");
            (texts.len() >= TOTAL).then_some(texts)
        }
    })
    .await;
    // Give a duplicate, if any, the chance to show up.
    wait_for("the offset confirmed", DEADLINE, || async {
        (tg.pending_updates() == 0).then_some(())
    })
    .await;
    let texts_after = stored_user_texts(root.path(), "tg:-100999");
    assert_eq!(texts_after.len(), TOTAL, "nothing stored twice");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &texts {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    for i in 0..TOTAL {
        let text = format!("message {i:03}");
        assert_eq!(counts.get(text.as_str()), Some(&1), "{text}");
    }
    eprintln!(
        "{before_restart} of the {pushed_at_kill} messages sent before the kill were stored by then"
    );
    d.terminate().await;
}

/// `.tools/node/node_modules/telegram-test-api`, installed by scripts/test-tools.sh.
fn emulator_script() -> std::path::PathBuf {
    let tools = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/node");
    assert!(
        tools.join("node_modules/telegram-test-api").exists(),
        "telegram-test-api is missing: run ./scripts/test-tools.sh"
    );
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/telegram-test-api.js")
}

/// The third-party emulator in its own process.
struct Emulator {
    child: tokio::process::Child,
    url: String,
}

impl Emulator {
    async fn start() -> Emulator {
        let port = free_port();
        let tools = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/node");
        let child = tokio::process::Command::new("node")
            .arg(emulator_script())
            .arg(port.to_string())
            .env("NODE_PATH", tools.join("node_modules"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let url = format!("http://127.0.0.1:{port}");
        let client = nanoclaw_test_support::http_client();
        wait_for("telegram-test-api to listen", DEADLINE, || {
            let (client, url) = (client.clone(), format!("{url}/bot1:x/getMe"));
            async move { client.get(url).send().await.ok().map(|_| ()) }
        })
        .await;
        Emulator { child, url }
    }

    /// A user message through the emulator's client API.
    async fn user_says(&self, chat_id: i64, chat_type: &str, text: &str) {
        let body = serde_json::json!({
            "botToken": TOKEN,
            "from": {"id": 42, "first_name": "Kim", "username": "kim", "is_bot": false},
            "chat": {"id": chat_id, "title": "Club", "type": chat_type},
            "date": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "text": text,
        });
        let response = nanoclaw_test_support::http_client()
            .post(format!("{}/sendMessage", self.url))
            .json(&body)
            .send()
            .await
            .expect("emulator answers");
        assert!(response.status().is_success(), "{response:?}");
    }

    /// The bot's messages to `chat_id` not yet fetched.
    async fn bot_messages(&self, chat_id: i64) -> Vec<String> {
        let response: serde_json::Value = nanoclaw_test_support::http_client()
            .post(format!("{}/getUpdates", self.url))
            .json(&serde_json::json!({"token": TOKEN, "chatId": chat_id}))
            .send()
            .await
            .expect("emulator answers")
            .json()
            .await
            .expect("json");
        response["result"]
            .as_array()
            .map(|updates| {
                updates
                    .iter()
                    .filter_map(|u| u["message"]["text"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_works_against_the_telegram_test_api_emulator() {
    let emulator = Emulator::start().await;
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["Pong from Andy.".into()])]);
    let root = tempfile::tempdir().expect("temp dir");
    register_new(root.path(), "tg:-4242", "tg_club");
    let d = support::telegram_daemon(runner, &emulator.url, TOKEN, root).await;
    emulator.user_says(-4242, "group", "just chatting").await;
    // The emulator's getMe names the bot TestNameBot.
    emulator
        .user_says(-4242, "group", "@TestNameBot ping")
        .await;
    let replies = wait_for("the reply in the emulator", DEADLINE, || async {
        let got = emulator.bot_messages(-4242).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(replies, ["Pong from Andy."]);
    let texts = stored_user_texts(d.root(), "tg:-4242");
    assert_eq!(texts, ["just chatting", "@Andy ping"]);
    let store = nanoclaw::store::Store::open(&d.root().join("store/messages.db"), "Andy")
        .expect("open store");
    let chat = store
        .chats()
        .expect("chats")
        .into_iter()
        .find(|c| c.jid == "tg:-4242")
        .expect("the chat is known");
    assert_eq!(
        chat.name.as_deref(),
        Some("Club"),
        "the chat title is the chat's name"
    );
    assert!(chat.is_group);
    d.stop().await;
    drop(emulator.child);
}

/// `send_file` from a real bwrap sandbox: a file of the group's folder arrives at the chat
/// as a document with its caption; a symlink, a path outside the folder, `..`, a FIFO and
/// an oversized file are refused by the tool with a clear error; and a group writing the
/// IPC file itself (past the tool's checks) for a symlink gets it refused by the host,
/// which tells the chat (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sends_a_file_and_bad_paths_are_refused() {
    let setup = "printf 'quarterly numbers' > report.txt && ln -s /etc/passwd pw \
        && mkfifo pipe && truncate -s 51M big.bin && mkdir -p out && printf x > out/ok.txt";
    let forged = r#"printf '{"type":"file","chatJid":"tg:-100779","path":"pw"}' > /workspace/ipc/messages/.f.tmp && mv /workspace/ipc/messages/.f.tmp /workspace/ipc/messages/f.json"#;
    let llm = FakeAnthropic::start(vec![
        Reply::tool("Bash", serde_json::json!({"command": setup})),
        Reply::tool(
            "send_file",
            serde_json::json!({"path": "report.txt", "caption": "Here are the numbers."}),
        ),
        Reply::tool("send_file", serde_json::json!({"path": "pw"})),
        Reply::tool("send_file", serde_json::json!({"path": "/etc/passwd"})),
        Reply::tool("send_file", serde_json::json!({"path": "out/../../x"})),
        Reply::tool("send_file", serde_json::json!({"path": "pipe"})),
        Reply::tool("send_file", serde_json::json!({"path": "big.bin"})),
        Reply::tool("Bash", serde_json::json!({"command": forged})),
        Reply::text("Sent."),
    ])
    .await;
    let tg = FakeTelegram::start(TOKEN).await;
    let d = sandboxed_telegram_daemon(&llm, &tg, "tg:-100779", "tg_files").await;
    let chat = Chat::group(-100_779, "Files");
    tg.user_says(&chat, &User::new(33, "Jo"), "@Andy send me the report");
    let files = tg.wait_files(-100_779, 1).await;
    assert_eq!(files[0].method, "sendDocument");
    assert_eq!(files[0].file_name, "report.txt");
    assert_eq!(files[0].media_type, "text/plain");
    assert_eq!(files[0].bytes, b"quarterly numbers");
    assert_eq!(files[0].caption.as_deref(), Some("Here are the numbers."));
    let texts = tg.wait_sent(-100_779, 2).await;
    assert!(
        texts.contains(&"Sent.".to_string())
            && texts
                .iter()
                .any(|t| t.contains("A file could not be sent: pw is a symbolic link")),
        "{texts:?}"
    );
    assert_eq!(
        tg.sent_files(-100_779).len(),
        1,
        "nothing else was uploaded"
    );
    let results = llm.requests()[8].all_text();
    for refusal in [
        "goes through a symbolic link (pw)",
        "outside /workspace/group",
        "contains `..`",
        "not a regular file",
        "at most 50.0 MB can be sent",
    ] {
        assert!(results.contains(refusal), "{refusal}: {results}");
    }
    assert!(
        results.contains("report.txt (17 bytes) handed to the host"),
        "{results}"
    );
    // Delivered to a channel that does not serve files later: the host's copy is gone.
    let copies = d.root().join("data/outbox-files/tg_files");
    let left = std::fs::read_dir(&copies).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        left,
        0,
        "the copy in {} was removed after delivery",
        copies.display()
    );
    d.stop().await;
}
