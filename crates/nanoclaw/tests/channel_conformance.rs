//! The channel conformance kit (test-support `conformance`) run against every channel:
//! the web channel, Telegram (against the fake Bot API), Discord (against the fake
//! gateway and REST API) and Slack (against the fake Web API and Socket Mode). The agent
//! is scripted; the sandboxed end to end runs are in `telegram.rs`, `discord.rs` and
//! `slack.rs`.

mod support;

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use nanoclaw_test_support::Api;
use nanoclaw_test_support::conformance::{self, BotEcho, ChannelHarness, Units};
use nanoclaw_test_support::fake_discord::{self, FakeDiscord};
use nanoclaw_test_support::fake_slack::{self, FakeSlack};
use nanoclaw_test_support::fake_telegram::{Chat, FakeTelegram, User};
use serde_json::json;
use support::{ScriptedRunner, Step, TestDaemon};

const TOKEN: &str = "123456:conformance-token";

fn stored_is_group(root: &std::path::Path, jid: &str) -> Option<bool> {
    let store = nanoclaw::store::Store::open(&root.join("store/messages.db"), "Andy").ok()?;
    store
        .chats()
        .ok()?
        .into_iter()
        .find(|c| c.jid == jid)
        .map(|c| c.is_group)
}

struct WebHarness {
    d: TestDaemon,
    runner: Arc<ScriptedRunner>,
}

#[async_trait]
impl ChannelHarness for WebHarness {
    fn api(&self) -> &Api {
        &self.d.api
    }
    fn chat_jid(&self) -> String {
        "web:team".into()
    }
    fn trigger(&self) -> String {
        "@Andy".into()
    }
    fn user(&self) -> (String, String) {
        ("u-1".into(), "Una".into())
    }
    fn is_group(&self) -> bool {
        false
    }
    async fn user_says(&self, text: &str) -> Result<()> {
        self.d
            .api
            .send("web:team", "u-1", "Una", text)
            .await
            .map(|_| ())
    }
    async fn bot_says(&self, _: &str) -> Result<BotEcho> {
        Ok(BotEcho::NeverShown)
    }
    async fn redeliver_last(&self) -> Result<bool> {
        Ok(false)
    }
    async fn delivered(&self) -> Vec<String> {
        self.d.api.bot_texts("web:team").await.unwrap_or_default()
    }
    async fn typing_shown(&self) -> Option<usize> {
        None
    }
    async fn fail_typing(&self, _: bool) -> bool {
        false
    }
    fn max_message(&self) -> Option<(usize, Units)> {
        None
    }
    async fn drop_connection(&self) -> bool {
        false
    }
    async fn send_malformed(&self) -> Result<bool> {
        let (status, body) = self
            .d
            .api
            .post_raw("/api/messages", "{\"chat_jid\": ")
            .await?;
        assert_eq!(status, 400, "{body}");
        Ok(true)
    }
    fn next_reply(&self, text: &str) {
        self.runner.push(Step::ReplyAndEnd(vec![text.into()]));
    }
    async fn stored_is_group(&self) -> Option<bool> {
        stored_is_group(self.d.root(), "web:team")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_channel_conforms() {
    let runner = ScriptedRunner::new(vec![]);
    let d = support::start_daemon(runner.clone()).await;
    support::register(d.root(), "web:team", "team", true);
    let h = WebHarness { d, runner };
    conformance::run_all(&h).await;
    h.d.stop().await;
}

struct TelegramHarness {
    d: TestDaemon,
    runner: Arc<ScriptedRunner>,
    fake: FakeTelegram,
    chat: Chat,
    user: User,
}

#[async_trait]
impl ChannelHarness for TelegramHarness {
    fn api(&self) -> &Api {
        &self.d.api
    }
    fn chat_jid(&self) -> String {
        format!("tg:{}", self.chat.id)
    }
    fn trigger(&self) -> String {
        "@Andy".into()
    }
    fn user(&self) -> (String, String) {
        (self.user.id.to_string(), self.user.first_name.clone())
    }
    fn is_group(&self) -> bool {
        true
    }
    async fn user_says(&self, text: &str) -> Result<()> {
        self.fake.user_says(&self.chat, &self.user, text);
        Ok(())
    }
    async fn bot_says(&self, text: &str) -> Result<BotEcho> {
        self.fake.bot_says(&self.chat, text);
        Ok(BotEcho::StoredAsBot)
    }
    async fn redeliver_last(&self) -> Result<bool> {
        self.fake.redeliver_last();
        Ok(true)
    }
    async fn delivered(&self) -> Vec<String> {
        self.fake.sent(self.chat.id)
    }
    async fn typing_shown(&self) -> Option<usize> {
        Some(self.fake.typing_actions(self.chat.id))
    }
    async fn fail_typing(&self, fail: bool) -> bool {
        self.fake.fail_typing(fail);
        true
    }
    fn max_message(&self) -> Option<(usize, Units)> {
        Some((4096, Units::Utf16))
    }
    async fn drop_connection(&self) -> bool {
        self.fake.drop_connections().await;
        true
    }
    async fn send_malformed(&self) -> Result<bool> {
        self.fake
            .raw_update(json!({"message": {"chat": "not an object", "text": 5}}));
        self.fake
            .raw_update(json!({"message": {"message_id": "x"}}));
        self.fake.raw_update(json!({"something_new": {"id": 1}}));
        Ok(true)
    }
    fn next_reply(&self, text: &str) {
        self.runner.push(Step::ReplyAndEnd(vec![text.into()]));
    }
    async fn stored_is_group(&self) -> Option<bool> {
        stored_is_group(self.d.root(), &self.chat_jid())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_telegram_channel_conforms() {
    let fake = FakeTelegram::start(TOKEN).await;
    let runner = ScriptedRunner::new(vec![]);
    let d = support::telegram_daemon(
        runner.clone(),
        &fake.url,
        &fake.token,
        tempfile::tempdir().expect("temp dir"),
    )
    .await;
    let chat = Chat::group(-100_500, "Team");
    support::register(d.root(), "tg:-100500", "telegram_team", true);
    let h = TelegramHarness {
        d,
        runner,
        fake,
        chat,
        user: User::new(4242, "Jo"),
    };
    conformance::run_all(&h).await;
    h.d.stop().await;
}

struct DiscordHarness {
    d: TestDaemon,
    runner: Arc<ScriptedRunner>,
    fake: FakeDiscord,
}

#[async_trait]
impl ChannelHarness for DiscordHarness {
    fn api(&self) -> &Api {
        &self.d.api
    }
    fn chat_jid(&self) -> String {
        format!("dc:{}", fake_discord::CHANNEL_ID)
    }
    fn trigger(&self) -> String {
        "@Andy".into()
    }
    fn user(&self) -> (String, String) {
        (fake_discord::USER_ID.into(), "Bob".into())
    }
    fn is_group(&self) -> bool {
        true
    }
    async fn user_says(&self, text: &str) -> Result<()> {
        self.fake.user_says(fake_discord::CHANNEL_ID, text);
        Ok(())
    }
    async fn bot_says(&self, text: &str) -> Result<BotEcho> {
        self.fake.bot_says(fake_discord::CHANNEL_ID, text);
        Ok(BotEcho::Ignored)
    }
    async fn redeliver_last(&self) -> Result<bool> {
        self.fake.redeliver_last();
        Ok(true)
    }
    async fn delivered(&self) -> Vec<String> {
        self.fake
            .sent()
            .into_iter()
            .filter(|s| s.channel_id == fake_discord::CHANNEL_ID)
            .map(|s| s.content)
            .collect()
    }
    async fn typing_shown(&self) -> Option<usize> {
        Some(self.fake.typing_count(fake_discord::CHANNEL_ID))
    }
    async fn fail_typing(&self, fail: bool) -> bool {
        self.fake.fail_typing(fail);
        true
    }
    fn max_message(&self) -> Option<(usize, Units)> {
        Some((2000, Units::Chars))
    }
    async fn drop_connection(&self) -> bool {
        self.fake.drop_connection();
        true
    }
    async fn send_malformed(&self) -> Result<bool> {
        self.fake.send_raw("this is not JSON");
        self.fake
            .send_raw(r#"{"op": 0, "t": "MESSAGE_CREATE", "s": 9000, "d": "not an object"}"#);
        self.fake.send_raw(
            r#"{"op": 0, "t": "MESSAGE_CREATE", "d": {"id": 5, "channel_id": null, "author": []}}"#,
        );
        self.fake
            .send_raw(r#"{"op": 0, "t": "SOMETHING_NEW", "d": {"id": "1"}}"#);
        self.fake.send_raw(r#"[1, 2, 3]"#);
        Ok(true)
    }
    fn next_reply(&self, text: &str) {
        self.runner.push(Step::ReplyAndEnd(vec![text.into()]));
    }
    async fn stored_is_group(&self) -> Option<bool> {
        stored_is_group(self.d.root(), &self.chat_jid())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_discord_channel_conforms() {
    let fake = FakeDiscord::start("conformance.discord.token").await;
    let runner = ScriptedRunner::new(vec![]);
    let d = support::channel_daemon(
        runner.clone(),
        vec![support::discord(&fake, "conformance.discord.token")],
        tempfile::tempdir().expect("temp dir"),
    )
    .await;
    support::register(
        d.root(),
        &format!("dc:{}", fake_discord::CHANNEL_ID),
        "discord_team",
        true,
    );
    fake.wait_connected("the bot connected").await;
    let h = DiscordHarness { d, runner, fake };
    conformance::run_all(&h).await;
    h.d.stop().await;
}

const SLACK_APP: &str = "xapp-1-A0NANOCLAW-conformance";
const SLACK_BOT: &str = "xoxb-conformance-bot";

struct SlackHarness {
    d: TestDaemon,
    runner: Arc<ScriptedRunner>,
    fake: FakeSlack,
}

#[async_trait]
impl ChannelHarness for SlackHarness {
    fn api(&self) -> &Api {
        &self.d.api
    }
    fn chat_jid(&self) -> String {
        format!("slack:{}", fake_slack::CHANNEL_ID)
    }
    fn trigger(&self) -> String {
        "@Andy".into()
    }
    fn user(&self) -> (String, String) {
        (
            fake_slack::USER_ID.into(),
            fake_slack::USER_DISPLAY_NAME.into(),
        )
    }
    fn is_group(&self) -> bool {
        true
    }
    async fn user_says(&self, text: &str) -> Result<()> {
        // Slack escapes what people type.
        let escaped = text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        self.fake.user_says(fake_slack::CHANNEL_ID, &escaped);
        Ok(())
    }
    async fn bot_says(&self, text: &str) -> Result<BotEcho> {
        self.fake.bot_says(fake_slack::CHANNEL_ID, text);
        Ok(BotEcho::Ignored)
    }
    async fn redeliver_last(&self) -> Result<bool> {
        self.fake.redeliver_last();
        Ok(true)
    }
    async fn delivered(&self) -> Vec<String> {
        self.fake.posted(fake_slack::CHANNEL_ID)
    }
    async fn typing_shown(&self) -> Option<usize> {
        // Slack has no typing indicator for bots: a reaction stands in.
        Some(self.fake.reactions_added(fake_slack::CHANNEL_ID))
    }
    async fn fail_typing(&self, fail: bool) -> bool {
        self.fake.fail_reactions(fail.then_some("internal_error"));
        true
    }
    fn max_message(&self) -> Option<(usize, Units)> {
        Some((4000, Units::Chars))
    }
    async fn drop_connection(&self) -> bool {
        self.fake.drop_connection();
        true
    }
    async fn send_malformed(&self) -> Result<bool> {
        self.fake.send_raw("this is not JSON");
        self.fake
            .send_raw(r#"{"type": "events_api", "payload": {"event": {}}}"#);
        self.fake.send_raw(
            r#"{"envelope_id": "e-1", "type": "events_api", "payload": "not an object"}"#,
        );
        self.fake
            .send_event(serde_json::json!({"type": "message", "text": 5}));
        self.fake.send_event(
            serde_json::json!({"type": "message", "channel": "C0GENERAL1",
            "user": "U0BOB00001", "ts": "oops", "text": "strange ts"}),
        );
        self.fake
            .send_raw(r#"{"envelope_id": "e-2", "type": "slash_commands", "payload": {}}"#);
        Ok(true)
    }
    fn next_reply(&self, text: &str) {
        self.runner.push(Step::ReplyAndEnd(vec![text.into()]));
    }
    async fn stored_is_group(&self) -> Option<bool> {
        stored_is_group(self.d.root(), &self.chat_jid())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slack_channel_conforms() {
    let fake = FakeSlack::start(SLACK_APP, SLACK_BOT).await;
    let runner = ScriptedRunner::new(vec![]);
    let d = support::channel_daemon(
        runner.clone(),
        vec![support::slack(&fake, SLACK_APP, SLACK_BOT)],
        tempfile::tempdir().expect("temp dir"),
    )
    .await;
    support::register(
        d.root(),
        &format!("slack:{}", fake_slack::CHANNEL_ID),
        "slack_team",
        true,
    );
    fake.wait_connected("the app connected").await;
    let h = SlackHarness { d, runner, fake };
    conformance::run_all(&h).await;
    // Every envelope was acknowledged, each within Slack's 3 seconds.
    nanoclaw_test_support::wait_for(
        "every envelope acknowledged",
        nanoclaw_test_support::DEADLINE,
        || async { (h.fake.unacked() == 0).then_some(()) },
    )
    .await;
    let acks = h.fake.acks();
    assert!(acks.len() >= 15, "{} acknowledgements", acks.len());
    assert!(
        acks.iter()
            .all(|(_, took)| *took < std::time::Duration::from_secs(3)),
        "{acks:?}"
    );
    h.d.stop().await;
}

struct EmailHarness {
    d: TestDaemon,
    runner: Arc<ScriptedRunner>,
    servers: nanoclaw_test_support::mail_servers::MailServers,
    sent: std::sync::Mutex<(usize, Option<(String, String)>)>,
}

const ASSISTANT_MAIL: &str = "assistant@nanoclaw.test";
const ALICE_MAIL: &str = "alice@trusted.test";

impl EmailHarness {
    /// Sends a mail (envelope and From `from`) into the MX; remembers it for redelivery.
    fn mail(&self, from: &str, text: &str) {
        let raw = {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            sent.0 += 1;
            let from_header = if from == ALICE_MAIL {
                format!("Alice <{ALICE_MAIL}>")
            } else {
                from.to_string()
            };
            let raw = format!(
                "From: {from_header}\nTo: Alice <{ALICE_MAIL}>, {ASSISTANT_MAIL}\nMessage-ID: <conf-{}-{}@trusted.test>\n\n{text}\n",
                sent.0,
                std::process::id()
            );
            sent.1 = Some((from.to_string(), raw.clone()));
            raw
        };
        self.servers.deliver(from, ASSISTANT_MAIL, &raw);
    }
}

#[async_trait]
impl ChannelHarness for EmailHarness {
    fn api(&self) -> &Api {
        &self.d.api
    }
    fn chat_jid(&self) -> String {
        format!("mail:{ALICE_MAIL}")
    }
    fn trigger(&self) -> String {
        "@Andy".into()
    }
    fn user(&self) -> (String, String) {
        (ALICE_MAIL.into(), "Alice".into())
    }
    fn is_group(&self) -> bool {
        false
    }
    async fn user_says(&self, text: &str) -> Result<()> {
        self.mail(ALICE_MAIL, text);
        Ok(())
    }
    async fn bot_says(&self, text: &str) -> Result<BotEcho> {
        // Mail from the assistant's own address (a copy of what it sent, say).
        self.mail(ASSISTANT_MAIL, text);
        Ok(BotEcho::StoredAsBot)
    }
    async fn redeliver_last(&self) -> Result<bool> {
        let last = self
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        if let Some((from, raw)) = last {
            // The same mail (same Message-ID) arrives a second time.
            self.servers.deliver(&from, ASSISTANT_MAIL, &raw);
        }
        Ok(true)
    }
    async fn delivered(&self) -> Vec<String> {
        self.servers
            .mailbox(ALICE_MAIL)
            .await
            .iter()
            .map(|raw| {
                let raw = raw.replace("\r\n", "\n");
                raw.split_once("\n\n")
                    .map(|(_, body)| body.trim().to_string())
                    .unwrap_or_default()
            })
            .collect()
    }
    async fn typing_shown(&self) -> Option<usize> {
        None
    }
    async fn fail_typing(&self, _fail: bool) -> bool {
        false
    }
    fn max_message(&self) -> Option<(usize, Units)> {
        None
    }
    async fn drop_connection(&self) -> bool {
        self.servers.restart("dovecot");
        true
    }
    async fn send_malformed(&self) -> Result<bool> {
        let garbage = format!(
            "From: Alice <{ALICE_MAIL}>\nTo: {ASSISTANT_MAIL}\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\nContent-Transfer-Encoding: base64\nMessage-ID: <garbage-{}@trusted.test>\n\n--\n=?utf-8?q?=ZZ?= \u{0}\u{1}\u{7f} ===== not base64 !!!\n--\n",
            std::process::id()
        );
        self.servers.deliver(ALICE_MAIL, ASSISTANT_MAIL, &garbage);
        Ok(true)
    }
    fn next_reply(&self, text: &str) {
        self.runner.push(Step::ReplyAndEnd(vec![text.into()]));
    }
    async fn stored_is_group(&self) -> Option<bool> {
        stored_is_group(self.d.root(), &self.chat_jid())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_email_channel_conforms() {
    let servers = nanoclaw_test_support::mail_servers::MailServers::start();
    let runner = ScriptedRunner::new(vec![]);
    let d = support::channel_daemon(
        runner.clone(),
        vec![support::email(&servers, &[])],
        tempfile::tempdir().expect("temp dir"),
    )
    .await;
    support::register(d.root(), &format!("mail:{ALICE_MAIL}"), "mail_alice", true);
    nanoclaw_test_support::wait_for(
        "the email channel connected",
        nanoclaw_test_support::DEADLINE,
        || async {
            (support::channel_condition(&d.api, "email").await["state"] == "connected")
                .then_some(())
        },
    )
    .await;
    let h = EmailHarness {
        d,
        runner,
        servers,
        sent: Default::default(),
    };
    conformance::run_all(&h).await;
    h.d.stop().await;
}
