//! The WhatsApp channel through the whole host (issue 13, test 2), over the fake client
//! of `nanoclaw-whatsapp` (no WhatsApp server can run here): the conformance kit with a
//! scripted agent, and end to end with the real agent in a real bwrap sandbox: the
//! self-chat as main, whose prefixed reply never triggers again; a group mention
//! answered; the `@lid` and phone-number forms of one person in one chat.

mod support;

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use nanoclaw::channels::Channel;
use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::Api;
use nanoclaw_test_support::conformance::{self, BotEcho, ChannelHarness, Units};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use nanoclaw_whatsapp::adapter::{Account, Body, FakeClient, Sent, WaEvent, WaMessage};
use nanoclaw_whatsapp::channel::{MAX_MESSAGE, Settings, WhatsApp};
use support::{ScriptedRunner, Step, TestDaemon};

const ME: &str = "15550001111@s.whatsapp.net";
const ALICE: &str = "15552223333@s.whatsapp.net";
const ALICE_LID: &str = "80000000000002@lid";
const TEAM: &str = "120363000000000001@g.us";
const PREFIX: &str = "Andy: ";

fn channel() -> (Arc<FakeClient>, Arc<WhatsApp>) {
    let (client, events) = FakeClient::new();
    let channel = Arc::new(WhatsApp::new(
        client.clone(),
        events,
        Settings {
            assistant_name: "Andy".into(),
            read_receipts: false,
        },
    ));
    client.event(WaEvent::Connected {
        account: Account {
            pn: ME.into(),
            lid: Some("90000000000001@lid".into()),
            push_name: "Sam".into(),
        },
    });
    (client, channel)
}

fn message(id: &str, chat: &str, sender: &str, from_me: bool, text: &str) -> WaMessage {
    WaMessage {
        push_name: if from_me {
            "Sam".into()
        } else {
            "Alice".into()
        },
        ..WaMessage::text(id, chat, sender, from_me, text)
    }
}

struct WhatsAppHarness {
    d: TestDaemon,
    runner: Arc<ScriptedRunner>,
    client: Arc<FakeClient>,
    last: std::sync::Mutex<Option<WaMessage>>,
    ids: std::sync::atomic::AtomicU32,
}

impl WhatsAppHarness {
    fn next_id(&self) -> String {
        let n = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("3EB0{n:012X}")
    }

    fn push(&self, m: WaMessage) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
        self.client.event(WaEvent::Message(m));
    }
}

#[async_trait]
impl ChannelHarness for WhatsAppHarness {
    fn api(&self) -> &Api {
        &self.d.api
    }
    fn chat_jid(&self) -> String {
        TEAM.into()
    }
    fn trigger(&self) -> String {
        "@Andy".into()
    }
    fn user(&self) -> (String, String) {
        (ALICE.into(), "Alice".into())
    }
    fn is_group(&self) -> bool {
        true
    }
    async fn user_says(&self, text: &str) -> Result<()> {
        self.push(message(&self.next_id(), TEAM, ALICE, false, text));
        Ok(())
    }
    async fn bot_says(&self, text: &str) -> Result<BotEcho> {
        // The assistant writes from the user's account: its messages come back as the
        // account's own, with the prefix.
        self.push(message(
            &self.next_id(),
            TEAM,
            ME,
            true,
            &format!("{PREFIX}{text}"),
        ));
        Ok(BotEcho::StoredAsBot)
    }
    async fn redeliver_last(&self) -> Result<bool> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(m) = last {
            self.client.event(WaEvent::Message(m));
        }
        Ok(true)
    }
    async fn delivered(&self) -> Vec<String> {
        // What the chat shows, without the prefix every message of the assistant has
        // (its own tests check the prefix).
        self.client
            .texts_to(TEAM)
            .into_iter()
            .map(|t| t.strip_prefix(PREFIX).map(str::to_string).unwrap_or(t))
            .collect()
    }
    async fn typing_shown(&self) -> Option<usize> {
        Some(
            self.client
                .sent()
                .iter()
                .filter(|s| matches!(s, Sent::Composing { jid, on: true } if jid == TEAM))
                .count(),
        )
    }
    async fn fail_typing(&self, fail: bool) -> bool {
        self.client.fail_composing(fail);
        true
    }
    fn max_message(&self) -> Option<(usize, Units)> {
        Some((MAX_MESSAGE - PREFIX.len(), Units::Chars))
    }
    async fn drop_connection(&self) -> bool {
        self.client.event(WaEvent::Disconnected {
            reason: "stream ended".into(),
        });
        self.client.event(WaEvent::Connected {
            account: Account {
                pn: ME.into(),
                lid: None,
                push_name: "Sam".into(),
            },
        });
        true
    }
    async fn send_malformed(&self) -> Result<bool> {
        // The client library parses the wire; what reaches the channel can still be odd.
        for (chat, sender) in [("", ""), ("not-a-jid", "x"), ("@g.us", "@s.whatsapp.net")] {
            self.client.event(WaEvent::Message(message(
                &self.next_id(),
                chat,
                sender,
                false,
                "odd",
            )));
        }
        let mut poll = message(&self.next_id(), TEAM, ALICE, false, "");
        poll.body = Body::Other("poll".into());
        self.client.event(WaEvent::Message(poll));
        Ok(true)
    }
    fn next_reply(&self, text: &str) {
        self.runner.push(Step::ReplyAndEnd(vec![text.into()]));
    }
    async fn stored_is_group(&self) -> Option<bool> {
        let store =
            nanoclaw::store::Store::open(&self.d.root().join("store/messages.db"), "Andy").ok()?;
        store
            .chats()
            .ok()?
            .into_iter()
            .find(|c| c.jid == TEAM)
            .map(|c| c.is_group)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whatsapp_channel_conforms() {
    let (client, channel) = channel();
    let runner = ScriptedRunner::new(vec![]);
    let d = support::channel_daemon(
        runner.clone(),
        vec![channel as Arc<dyn Channel>],
        tempfile::tempdir().expect("temp dir"),
    )
    .await;
    support::register(d.root(), TEAM, "wa_team", true);
    let h = WhatsAppHarness {
        d,
        runner,
        client,
        last: Default::default(),
        ids: Default::default(),
    };
    conformance::run_all(&h).await;
    h.d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_end_to_end_in_a_real_sandbox() {
    let fake = FakeAnthropic::start(vec![]).await;
    fake.respond_with(|body| {
        let text = body["messages"].to_string();
        Reply::text(if text.contains("when do we sail") {
            "Saturday at nine."
        } else if text.contains("the plan") {
            "The plan is sailing."
        } else {
            "ok"
        })
    });
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    // The self-chat is the main group; the team group needs the trigger.
    support::open_store(root.path())
        .register_group(&nanoclaw::store::RegisteredGroup {
            jid: ME.into(),
            name: "Sam (you)".into(),
            folder: "main".into(),
            trigger_pattern: "@Andy".into(),
            added_at: nanoclaw::clock::now(),
            container_config: None,
            requires_trigger: false,
            is_main: true,
        })
        .expect("main");
    support::register(root.path(), TEAM, "wa_team", true);
    let (client, channel) = channel();
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-whatsapp-e2e")),
        ..Default::default()
    };
    let url = fake.url.clone();
    let d = support::start_sandboxed_daemon_in(
        root,
        RuntimeKind::Bwrap,
        None,
        secrets,
        vec![channel as Arc<dyn Channel>],
        move |c| c.anthropic_base_url = url,
    )
    .await;
    let wait = |jid: &'static str, n: usize| {
        let client = client.clone();
        async move {
            nanoclaw_test_support::wait_for(
                &format!("{n} messages sent to {jid}"),
                nanoclaw_test_support::DEADLINE,
                || {
                    let texts = client.texts_to(jid);
                    async move { (texts.len() >= n).then_some(texts) }
                },
            )
            .await
        }
    };

    // The user writes to themselves: the assistant answers there, prefixed.
    client.event(WaEvent::Message(message(
        "S1",
        ME,
        ME,
        true,
        "what's the plan?",
    )));
    assert_eq!(wait(ME, 1).await, ["Andy: The plan is sailing."]);
    // WhatsApp shows the assistant's message as the account's own: it is stored as the
    // bot's and starts nothing.
    client.event(WaEvent::Message(message(
        "S2",
        ME,
        ME,
        true,
        "Andy: The plan is sailing.",
    )));
    // A marker after it: once the marker is answered, the echo was handled.
    client.event(WaEvent::Message(message(
        "S3",
        ME,
        ME,
        true,
        "and the plan for later?",
    )));
    assert_eq!(wait(ME, 2).await.len(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        client.texts_to(ME).len(),
        2,
        "the echo did not trigger a run"
    );
    let runs = fake.requests().len();

    // A group mention is answered; chatter without one is not.
    let mut mention = message("G1", TEAM, ALICE, false, "@15550001111 when do we sail?");
    mention.body = Body::Text {
        text: "@15550001111 when do we sail?".into(),
        quoted: None,
        mentions: vec![ME.into()],
    };
    client.event(WaEvent::Message(mention));
    assert_eq!(wait(TEAM, 1).await, ["Andy: Saturday at nine."]);
    assert_eq!(fake.requests().len(), runs + 1);

    // One person, two forms, one chat.
    let mut both = message("P1", ALICE_LID, ALICE_LID, false, "hi from the lid form");
    both.sender_alt = Some(ALICE.into());
    both.chat_alt = Some(ALICE.into());
    client.event(WaEvent::Message(both));
    client.event(WaEvent::Message(message(
        "P2", ALICE_LID, ALICE_LID, false, "lid only",
    )));
    client.event(WaEvent::Message(message(
        "P3",
        ALICE,
        ALICE,
        false,
        "number form",
    )));
    let store = support::open_store(d.root());
    nanoclaw_test_support::wait_for(
        "Alice's three messages in one chat",
        nanoclaw_test_support::DEADLINE,
        || {
            let n = store
                .chat_messages(ALICE, None)
                .map(|m| m.len())
                .unwrap_or(0);
            async move { (n == 3).then_some(()) }
        },
    )
    .await;
    let lid_chats = store
        .chats()
        .expect("chats")
        .into_iter()
        .filter(|c| c.jid.ends_with("@lid"))
        .count();
    assert_eq!(lid_chats, 0, "no second chat for the lid form");
    d.stop().await;
}
