//! The WhatsApp channel's rules against the fake client (issue 13, test 2, the
//! channel's part): the self-chat and the prefix, `@lid` and phone-number forms of one
//! person, mentions as the trigger, what is not user input, the history sync, replies
//! only to known chats and in pieces, read receipts, and being unlinked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nanoclaw_channel::{
    Channel, ChannelCondition, ChannelHost, ChatMeta, Message, OutboundMessage,
};
use nanoclaw_whatsapp::adapter::{Account, Body, FakeClient, Sent, WaEvent, WaMessage};
use nanoclaw_whatsapp::channel::{HISTORY, MAX_MESSAGE, Settings, WhatsApp};

const ME: &str = "15550001111@s.whatsapp.net";
const ME_LID: &str = "90000000000001@lid";
const ALICE: &str = "15552223333@s.whatsapp.net";
const ALICE_LID: &str = "80000000000002@lid";
const TEAM: &str = "120363000000000001@g.us";

/// The host's side: what was stored, and the channel's state.
#[derive(Default)]
struct Host {
    messages: Mutex<Vec<(ChatMeta, Message)>>,
    state: Mutex<HashMap<String, String>>,
    registered: Mutex<HashMap<String, String>>,
}

#[async_trait]
impl ChannelHost for Host {
    async fn deliver(&self, chat: ChatMeta, message: Message) -> Result<(), String> {
        self.messages.lock().unwrap().push((chat, message));
        Ok(())
    }
    async fn chat_seen(&self, _chat: ChatMeta) -> Result<(), String> {
        Ok(())
    }
    async fn load_state(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self.state.lock().unwrap().get(key).cloned())
    }
    async fn save_state(&self, key: &str, value: &str) -> Result<(), String> {
        self.state.lock().unwrap().insert(key.into(), value.into());
        Ok(())
    }
    async fn trigger_for(&self, jid: &str) -> Option<String> {
        self.registered.lock().unwrap().get(jid).cloned()
    }
}

impl Host {
    fn stored(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }
}

struct Rig {
    client: Arc<FakeClient>,
    channel: Arc<WhatsApp>,
    host: Arc<Host>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

async fn rig_with(host: Arc<Host>, read_receipts: bool) -> Rig {
    let (client, events) = FakeClient::new();
    let channel = Arc::new(WhatsApp::new(
        client.clone(),
        events,
        Settings {
            assistant_name: "Andy".into(),
            read_receipts,
        },
    ));
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(Arc::clone(&channel).run(host.clone(), rx));
    client.event(WaEvent::Connected {
        account: Account {
            pn: ME.into(),
            lid: Some(ME_LID.into()),
            push_name: "Sam".into(),
        },
    });
    let rig = Rig {
        client,
        channel,
        host,
        _shutdown: tx,
    };
    rig.until(|r| r.channel.is_connected()).await;
    rig
}

async fn rig() -> Rig {
    rig_with(Arc::new(Host::default()), false).await
}

impl Rig {
    async fn until(&self, done: impl Fn(&Rig) -> bool) {
        for _ in 0..200 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out");
    }

    /// Feeds a message and waits until the host stored `n` messages in all.
    async fn says(&self, m: WaMessage, n: usize) {
        self.client.event(WaEvent::Message(m));
        self.until(|r| r.host.stored().len() >= n).await;
    }

    async fn reply(&self, jid: &str, text: &str) -> Result<(), nanoclaw_channel::ChannelError> {
        self.send(jid, text, false).await
    }

    async fn send(
        &self,
        jid: &str,
        text: &str,
        explicit: bool,
    ) -> Result<(), nanoclaw_channel::ChannelError> {
        self.channel
            .send(&OutboundMessage {
                outbox_id: 1,
                chat_jid: jid.into(),
                text: text.into(),
                timestamp: "2026-12-03T00:00:00.000Z".into(),
                file: None,
                explicit,
            })
            .await
    }
}

fn text(id: &str, chat: &str, sender: &str, from_me: bool, text: &str) -> WaMessage {
    WaMessage {
        push_name: if from_me {
            "Sam".into()
        } else {
            "Alice".into()
        },
        timestamp: 1_796_000_000,
        ..WaMessage::text(id, chat, sender, from_me, text)
    }
}

#[tokio::test]
async fn the_self_chat_is_the_users_and_the_assistant_speaks_there_with_its_prefix() {
    let r = rig().await;
    r.says(
        text(
            "A1",
            ME,
            &format!("{}:3", &ME[..11]),
            true,
            "what is on today?",
        ),
        1,
    )
    .await;
    let m = &r.host.stored()[0];
    assert_eq!(m.chat_jid, ME, "the self-chat is the account's own JID");
    assert!(
        m.is_from_me && !m.is_bot_message,
        "the user's own message is user input"
    );
    assert_eq!(m.sender_name, "Sam");

    r.reply(ME, "Nothing until noon.").await.expect("sent");
    assert_eq!(r.client.texts_to(ME), ["Andy: Nothing until noon."]);
    // The assistant's message comes back as the account's own: it is the bot's.
    r.says(text("A2", ME, ME, true, "Andy: Nothing until noon."), 2)
        .await;
    let echo = &r.host.stored()[1];
    assert!(
        echo.is_bot_message,
        "a prefixed message of the account is the assistant's"
    );
    // The self-chat's `@lid` form is the same chat.
    r.says(text("A3", ME_LID, ME_LID, true, "and tomorrow?"), 3)
        .await;
    assert_eq!(
        r.host.stored()[2].chat_jid,
        ME_LID,
        "no mapping known for the account's lid yet"
    );
}

#[tokio::test]
async fn the_lid_and_phone_number_forms_of_one_person_are_one_chat_across_restarts() {
    let host = Arc::new(Host::default());
    let r = rig_with(Arc::clone(&host), false).await;
    // First a message that carries both forms (WhatsApp's `sender_alt`).
    let mut first = text("B1", ALICE_LID, ALICE_LID, false, "hi, it's Alice");
    first.chat_alt = Some(format!("{}:0@s.whatsapp.net", &ALICE[..11]));
    first.sender_alt = Some(ALICE.into());
    r.says(first, 1).await;
    // Then the lid form alone, and the phone-number form.
    r.says(text("B2", ALICE_LID, ALICE_LID, false, "still me"), 2)
        .await;
    r.says(text("B3", ALICE, ALICE, false, "me again"), 3).await;
    let chats: Vec<String> = r.host.stored().iter().map(|m| m.chat_jid.clone()).collect();
    assert_eq!(chats, [ALICE, ALICE, ALICE]);
    let senders: Vec<String> = r.host.stored().iter().map(|m| m.sender.clone()).collect();
    assert_eq!(senders, [ALICE, ALICE, ALICE]);

    // A new channel (a restart) still knows the mapping from the host's state.
    let again = rig_with(host, false).await;
    again
        .says(
            text("B4", ALICE_LID, ALICE_LID, false, "after a restart"),
            4,
        )
        .await;
    assert_eq!(again.host.stored()[3].chat_jid, ALICE);
    // And may answer her: she wrote first.
    again.reply(ALICE_LID, "hello Alice").await.expect("sent");
    assert_eq!(again.client.texts_to(ALICE), ["Andy: hello Alice"]);
}

#[tokio::test]
async fn a_mention_of_the_account_is_the_groups_trigger_and_replies_carry_their_quote() {
    let r = rig().await;
    r.host
        .registered
        .lock()
        .unwrap()
        .insert(TEAM.into(), "@Andy".into());
    r.client.set_group_name(TEAM, "Boat club");
    let mut mention = text("C1", TEAM, ALICE, false, "@15550001111 when do we sail?");
    mention.body = Body::Text {
        text: "@15550001111 when do we sail?".into(),
        quoted: None,
        mentions: vec![format!("{}:0@s.whatsapp.net", &ME[..11])],
    };
    r.says(mention, 1).await;
    let plain = text("C2", TEAM, ALICE, false, "anyone?");
    r.says(plain, 2).await;
    let mut reply = text("C3", TEAM, ALICE_LID, false, "this one");
    reply.body = Body::Text {
        text: "this one".into(),
        quoted: Some("Saturday at nine".into()),
        mentions: vec![ME_LID.into()],
    };
    r.says(reply, 3).await;
    let stored = r.host.stored();
    assert_eq!(stored[0].content, "@Andy when do we sail?");
    assert_eq!(stored[1].content, "anyone?", "no mention, no trigger");
    assert_eq!(
        stored[2].content,
        "@Andy this one\n[replying to: Saturday at nine]"
    );
    let meta = &r.host.messages.lock().unwrap()[0].0;
    assert_eq!(meta.name.as_deref(), Some("Boat club"));
    assert_eq!(meta.is_group, Some(true));
}

#[tokio::test]
async fn reactions_protocol_messages_status_and_history_never_start_anything() {
    let r = rig().await;
    let mut reaction = text("D1", ALICE, ALICE, false, "");
    reaction.body = Body::Reaction;
    let mut protocol = text("D2", ALICE, ALICE, false, "");
    protocol.body = Body::Protocol;
    let status = text("D3", "status@broadcast", ALICE, false, "my holiday");
    for m in [reaction, protocol, status] {
        r.client.event(WaEvent::Message(m));
    }
    r.client.event(WaEvent::History(vec![
        text("H1", ALICE, ALICE, false, "@Andy from last year"),
        text("H2", ALICE, ME, true, "an old answer"),
    ]));
    r.says(text("D4", ALICE, ALICE, false, "a live one"), 3)
        .await;
    let stored = r.host.stored();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(stored[0].flagged.as_deref(), Some(HISTORY));
    assert_eq!(stored[1].flagged.as_deref(), Some(HISTORY));
    assert_eq!(stored[2].flagged, None);
    assert_eq!(stored[2].content, "a live one");
}

#[tokio::test]
async fn replies_go_only_to_known_chats_in_prefixed_pieces() {
    let r = rig().await;
    let stranger = "15559990000@s.whatsapp.net";
    let refused = r
        .reply(stranger, "hello")
        .await
        .expect_err("never written to us");
    assert_eq!(refused.retry, nanoclaw_channel::SendRetry::Never);
    assert!(
        refused
            .message
            .contains("only when the main group sends to it on purpose"),
        "{refused}"
    );
    assert!(r.client.sent().is_empty());
    // Main's explicit IPC message is the one way to start a chat.
    r.send(stranger, "hello from main", true)
        .await
        .expect("main may start a chat");
    assert_eq!(
        r.client.texts_to(stranger),
        vec!["Andy: hello from main".to_string()]
    );
    // The chat is known now; new ones are capped per day.
    r.send(stranger, "and again", true)
        .await
        .expect("a known chat");
    for n in 1..nanoclaw_whatsapp::channel::MAX_NEW_CHATS_PER_DAY {
        r.send(&format!("1555900{n:04}@s.whatsapp.net"), "hi", true)
            .await
            .expect("under the cap");
    }
    let capped = r
        .send("15559999999@s.whatsapp.net", "one too many", true)
        .await
        .expect_err("over the cap");
    assert_eq!(capped.retry, nanoclaw_channel::SendRetry::Never);
    assert!(
        capped.message.contains("new WhatsApp chats today"),
        "{capped}"
    );
    assert!(r.client.texts_to("15559999999@s.whatsapp.net").is_empty());
    // A registered group may be written to before anyone in it spoke.
    r.host
        .registered
        .lock()
        .unwrap()
        .insert(TEAM.into(), "@Andy".into());
    let long = "word ".repeat(2000);
    r.reply(TEAM, &long).await.expect("sent");
    let pieces = r.client.texts_to(TEAM);
    assert!(pieces.len() >= 3, "{}", pieces.len());
    for piece in &pieces {
        assert!(
            piece.starts_with("Andy: ") && piece.chars().count() <= MAX_MESSAGE,
            "{piece}"
        );
    }
    // Typing shows while a run works.
    r.channel.set_typing(TEAM, true).await.expect("typing");
    assert!(r.client.sent().contains(&Sent::Composing {
        jid: TEAM.into(),
        on: true
    }));
}

#[tokio::test]
async fn read_receipts_only_when_asked_for() {
    let r = rig().await;
    r.says(text("E1", ALICE, ALICE, false, "hello"), 1).await;
    assert!(
        !r.client
            .sent()
            .iter()
            .any(|s| matches!(s, Sent::Read { .. }))
    );
    let r = rig_with(Arc::new(Host::default()), true).await;
    r.says(text("E2", ALICE, ALICE, false, "hello"), 1).await;
    r.until(|r| {
        r.client
            .sent()
            .iter()
            .any(|s| matches!(s, Sent::Read { .. }))
    })
    .await;
    assert!(r.client.sent().contains(&Sent::Read {
        chat: ALICE.into(),
        ids: vec!["E2".into()]
    }));
}

#[tokio::test]
async fn being_unlinked_on_the_phone_is_final_and_says_what_to_do() {
    let r = rig().await;
    r.client.event(WaEvent::Disconnected {
        reason: "stream ended".into(),
    });
    r.until(|r| matches!(r.channel.condition(), ChannelCondition::Reconnecting { .. }))
        .await;
    r.client.event(WaEvent::LoggedOut {
        reason: "401".into(),
    });
    r.until(|r| {
        matches!(
            r.channel.condition(),
            ChannelCondition::NeedsAttention { .. }
        )
    })
    .await;
    let ChannelCondition::NeedsAttention { reason } = r.channel.condition() else {
        unreachable!()
    };
    assert!(
        reason.contains("unlinked") && reason.contains("nanoclaw whatsapp link"),
        "{reason}"
    );
    // Nothing is handled after that.
    r.client
        .event(WaEvent::Message(text("F1", ALICE, ALICE, false, "hello?")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(r.host.stored().is_empty());
}
