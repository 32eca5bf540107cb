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
        media: None,
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

/// Files both ways through the whole host and a real bwrap sandbox: a photo the user
/// sends to the self-chat lands in main's inbox and reaches the model as an image; the
/// agent's `send_file` of it comes back to the chat as a photo with a prefixed caption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_files_in_and_out_of_a_real_sandbox() {
    use base64::Engine;
    use nanoclaw_whatsapp::adapter::{Media, MediaKind};
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "send_file",
            serde_json::json!({"path": "inbox/photo-W1.jpg", "caption": "Your photo, back."}),
        ),
        Reply::text("Done."),
    ])
    .await;
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
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
    let url = fake.url.clone();
    let d = support::start_sandboxed_daemon_in(
        root,
        RuntimeKind::Bwrap,
        None,
        Secrets {
            anthropic_api_key: Some(Secret::new("sk-ant-whatsapp-files")),
            ..Default::default()
        },
        vec![channel as Arc<dyn Channel>],
        move |c| c.anthropic_base_url = url,
    )
    .await;
    let mut photo = vec![0xFF, 0xD8, 0xFF, 0xE0];
    photo.extend((0..3000u32).map(|i| (i % 241) as u8));
    let media = Media {
        kind: MediaKind::Image,
        name: "photo-W1.jpg".into(),
        mime: "image/jpeg".into(),
        size: photo.len() as u64,
        direct_path: "/v/t62/W1".into(),
        media_key: vec![5; 32],
        file_sha256: vec![6; 32],
        file_enc_sha256: vec![7; 32],
    };
    client.serve_media(&media, &photo);
    let mut m = message("W1", ME, ME, true, "what is in this one?");
    m.body = Body::Text {
        text: "what is in this one?".into(),
        quoted: None,
        mentions: vec![],
        media: Some(Box::new(media)),
    };
    client.event(WaEvent::Message(m));
    let sent = nanoclaw_test_support::wait_for(
        "the photo sent back",
        nanoclaw_test_support::DEADLINE,
        || {
            let files: Vec<Sent> = client
                .sent()
                .into_iter()
                .filter(|s| matches!(s, Sent::File { .. }))
                .collect();
            async move { (!files.is_empty()).then_some(files) }
        },
    )
    .await;
    assert_eq!(
        sent,
        vec![Sent::File {
            jid: ME.into(),
            name: "photo-W1.jpg".into(),
            mime: "image/jpeg".into(),
            bytes: photo.clone(),
            caption: "Andy: Your photo, back.".into(),
        }]
    );
    assert_eq!(
        std::fs::read(d.root().join("groups/main/inbox/photo-W1.jpg")).expect("in the inbox"),
        photo
    );
    let request = &fake.requests()[0];
    let blocks = request.body["messages"][0]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let text = blocks
        .first()
        .and_then(|b| b["text"].as_str())
        .unwrap_or("");
    assert!(
        text.contains("what is in this one? [Photo]")
            && text.contains("/workspace/group/inbox/photo-W1.jpg (3 KB)"),
        "{text}"
    );
    let image = blocks
        .iter()
        .find(|b| b["type"] == "image")
        .expect("an image block");
    assert_eq!(
        image["source"]["data"],
        base64::engine::general_purpose::STANDARD.encode(&photo)
    );
    nanoclaw_test_support::wait_for("the closing text", nanoclaw_test_support::DEADLINE, || {
        let texts = client.texts_to(ME);
        async move { texts.contains(&"Andy: Done.".to_string()).then_some(()) }
    })
    .await;

    // A sender the team's allowlist drops: their file is not fetched, not saved.
    let config = d.home.join(".config/nanoclaw");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("sender-allowlist.json"),
        format!(
            r#"{{"default": {{"allow": "*", "mode": "trigger"}},
                "chats": {{"{TEAM}": {{"allow": ["{ALICE}"], "mode": "drop"}}}}}}"#
        ),
    )
    .expect("allowlist");
    let mallory = "15557770000@s.whatsapp.net";
    let dropped = Media {
        kind: MediaKind::Document,
        name: "orders.pdf".into(),
        mime: "application/pdf".into(),
        size: 4,
        direct_path: "/v/t62/M1".into(),
        media_key: vec![5; 32],
        file_sha256: vec![6; 32],
        file_enc_sha256: vec![7; 32],
    };
    client.serve_media(&dropped, b"%PDF");
    let mut m = message("M1", TEAM, mallory, false, "");
    m.body = Body::Text {
        text: String::new(),
        quoted: None,
        mentions: vec![],
        media: Some(Box::new(dropped)),
    };
    client.event(WaEvent::Message(m));
    client.event(WaEvent::Message(message(
        "M2", TEAM, ALICE, false, "marker",
    )));
    let store = support::open_store(d.root());
    nanoclaw_test_support::wait_for(
        "Alice's marker stored",
        nanoclaw_test_support::DEADLINE,
        || {
            let n = store
                .chat_messages(TEAM, None)
                .map(|m| m.len())
                .unwrap_or(0);
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(client.downloads(), 1, "only main's photo was fetched");
    assert!(!d.root().join("groups/wa_team/inbox/orders.pdf").exists());
    let team = store.chat_messages(TEAM, None).expect("messages");
    assert_eq!(team.len(), 1, "mallory's message is dropped: {team:?}");
    d.stop().await;
}
