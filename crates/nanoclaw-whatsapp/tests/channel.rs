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
use nanoclaw_whatsapp::adapter::{
    Account, Body, FakeClient, Media, MediaKind, Sent, WaEvent, WaMessage,
};
use nanoclaw_whatsapp::channel::{HISTORY, MAX_FILE, MAX_MESSAGE, Settings, WhatsApp};

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
    /// Files saved into inboxes: (chat, name, bytes).
    files: Mutex<Vec<(String, String, Vec<u8>)>>,
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
    async fn has_message(&self, jid: &str, id: &str) -> bool {
        self.stored()
            .iter()
            .any(|m| m.chat_jid == jid && m.id == id)
    }
    async fn save_file(
        &self,
        jid: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<Option<String>, String> {
        if !self.registered.lock().unwrap().contains_key(jid) {
            return Ok(None);
        }
        self.files
            .lock()
            .unwrap()
            .push((jid.into(), name.into(), bytes.to_vec()));
        Ok(Some(format!("/workspace/group/inbox/{name}")))
    }
    async fn transcribe(&self, name: &str, _bytes: &[u8]) -> Result<Option<String>, String> {
        Ok(name
            .starts_with("voice-")
            .then(|| "bring the charts".to_string()))
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
        media: None,
    };
    r.says(mention, 1).await;
    let plain = text("C2", TEAM, ALICE, false, "anyone?");
    r.says(plain, 2).await;
    let mut reply = text("C3", TEAM, ALICE_LID, false, "this one");
    reply.body = Body::Text {
        text: "this one".into(),
        quoted: Some("Saturday at nine".into()),
        mentions: vec![ME_LID.into()],
        media: None,
    };
    r.says(reply, 3).await;
    // A reply to one of the assistant's messages (they carry its prefix) is a trigger
    // too; a reply to anyone else's is not.
    let mut to_bot = text("C4", TEAM, ALICE, false, "and the tide?");
    to_bot.body = Body::Text {
        text: "and the tide?".into(),
        quoted: Some("Andy: Saturday at nine.".into()),
        mentions: vec![],
        media: None,
    };
    r.says(to_bot, 4).await;
    let mut to_bea = text("C5", TEAM, ALICE, false, "agreed");
    to_bea.body = Body::Text {
        text: "agreed".into(),
        quoted: Some("Bea: Andy: is a name".into()),
        mentions: vec![],
        media: None,
    };
    r.says(to_bea, 5).await;
    let stored = r.host.stored();
    assert_eq!(
        stored[3].content,
        "@Andy and the tide?\n[replying to: Andy: Saturday at nine.]"
    );
    assert_eq!(
        stored[4].content,
        "agreed\n[replying to: Bea: Andy: is a name]"
    );
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

fn media(kind: MediaKind, name: &str, size: u64) -> Media {
    Media {
        kind,
        name: name.into(),
        mime: "image/jpeg".into(),
        size,
        direct_path: format!("/v/{name}"),
        media_key: vec![9; 32],
        file_sha256: vec![1; 32],
        file_enc_sha256: vec![2; 32],
    }
}

fn with_file(mut m: WaMessage, caption: &str, file: Media) -> WaMessage {
    m.body = Body::Text {
        text: caption.into(),
        quoted: None,
        mentions: vec![],
        media: Some(Box::new(file)),
    };
    m
}

#[tokio::test]
async fn files_in_registered_chats_land_in_the_inbox_never_from_history_or_the_assistant() {
    let r = rig().await;
    for chat in [TEAM, ME] {
        r.host
            .registered
            .lock()
            .unwrap()
            .insert(chat.into(), "@Andy".into());
    }
    let photo = media(MediaKind::Image, "photo-F1.jpg", 5_000);
    let bytes: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
    r.client.serve_media(&photo, &bytes);
    let from_alice = with_file(text("F1", TEAM, ALICE, false, ""), "", photo.clone());
    r.says(from_alice.clone(), 1).await;
    assert_eq!(
        r.host.stored()[0].content,
        "[Photo]\n[attachment: /workspace/group/inbox/photo-F1.jpg (5 KB)]"
    );
    assert_eq!(
        *r.host.files.lock().unwrap(),
        vec![(TEAM.to_string(), "photo-F1.jpg".to_string(), bytes.clone())]
    );
    // The user's voice note to themselves, transcribed; a caption is kept.
    let voice = media(MediaKind::Voice, "voice-F2.ogg", 800);
    r.client.serve_media(&voice, &[0x4F; 800]);
    r.says(with_file(text("F2", ME, ME, true, ""), "", voice), 2)
        .await;
    assert_eq!(
        r.host.stored()[1].content,
        "[Voice note]\n[attachment: /workspace/group/inbox/voice-F2.ogg (1 KB), transcript: bring the charts]"
    );
    // Handed again: stored once, fetched once.
    r.client.event(WaEvent::Message(from_alice));
    let marker = text("F3", TEAM, ALICE, false, "marker");
    r.says(marker, 3).await;
    assert_eq!(r.client.downloads(), 2);

    // Not fetched: the history sync, the assistant's own file, an unregistered chat,
    // a file larger than NanoClaw takes, and one the server does not have.
    let old = with_file(text("H1", TEAM, ALICE, false, ""), "", photo.clone());
    r.client.event(WaEvent::History(vec![old]));
    let own = with_file(
        text("F4", TEAM, ME, true, ""),
        "Andy: chart.png",
        media(MediaKind::Image, "photo-F4.jpg", 10),
    );
    r.client.event(WaEvent::Message(own));
    let elsewhere = with_file(
        text("F5", ALICE, ALICE, false, ""),
        "look",
        media(MediaKind::Image, "photo-F5.jpg", 10),
    );
    r.client.event(WaEvent::Message(elsewhere));
    let huge = with_file(
        text("F6", TEAM, ALICE, false, ""),
        "the film",
        media(MediaKind::Video, "video-F6.mp4", MAX_FILE + 1),
    );
    r.client.event(WaEvent::Message(huge));
    let missing = with_file(
        text("F7", TEAM, ALICE, false, ""),
        "",
        media(MediaKind::Document, "minutes.pdf", 100),
    );
    r.says(missing, 8).await;
    let stored = r.host.stored();
    let content = |id: &str| {
        stored
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.content.clone())
            .unwrap_or_default()
    };
    assert_eq!(content("H1"), "[Photo]");
    assert_eq!(content("F4"), "Andy: chart.png [Photo]");
    assert!(stored.iter().any(|m| m.id == "F4" && m.is_bot_message));
    assert_eq!(content("F5"), "look [Photo]");
    assert!(
        content("F6").starts_with("the film [Video]\n[attachment: video-F6.mp4 (32.0 MB), not saved: NanoClaw takes WhatsApp files up to 32.0 MB"),
        "{}",
        content("F6")
    );
    assert_eq!(
        content("F7"),
        "[Document]\n[attachment: minutes.pdf, could not be downloaded]"
    );
    // Only the missing document was asked for, and failed.
    assert_eq!(r.client.downloads(), 3);
    assert_eq!(r.host.files.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_file_goes_once_with_a_prefixed_caption_and_long_text_follows_it() {
    let r = rig().await;
    r.host
        .registered
        .lock()
        .unwrap()
        .insert(TEAM.into(), "@Andy".into());
    assert_eq!(r.channel.max_file_bytes(), Some(MAX_FILE));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chart.png");
    std::fs::write(&path, b"\x89PNG chart").expect("file");
    let send = |id: i64, text: &str, size: u64| {
        let message = OutboundMessage {
            outbox_id: id,
            chat_jid: TEAM.into(),
            text: text.into(),
            timestamp: "2026-12-03T00:00:00.000Z".into(),
            file: Some(nanoclaw_channel::OutboundFile {
                name: "chart.png".into(),
                path: path.clone(),
                size,
            }),
            explicit: false,
        };
        let channel = r.channel.clone();
        async move { channel.send(&message).await }
    };
    send(1, "the chart", 11).await.expect("sent");
    assert_eq!(
        r.client.sent(),
        vec![Sent::File {
            jid: TEAM.into(),
            name: "chart.png".into(),
            mime: "image/png".into(),
            bytes: b"\x89PNG chart".to_vec(),
            caption: "Andy: the chart".into(),
        }]
    );
    // No text: the caption is the prefix and the name, so the echo is the assistant's.
    r.client.clear_sent();
    send(2, "", 11).await.expect("sent");
    assert!(matches!(
        &r.client.sent()[..],
        [Sent::File { caption, .. }] if caption == "Andy: chart.png"
    ));
    // Text too long for a caption follows the file as messages.
    r.client.clear_sent();
    let long = "word ".repeat(400);
    send(3, &long, 11).await.expect("sent");
    let sent = r.client.sent();
    assert!(
        matches!(&sent[0], Sent::File { caption, .. } if caption == "Andy: chart.png"),
        "{sent:?}"
    );
    let texts = r.client.texts_to(TEAM);
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0], format!("Andy: {}", long.trim()));
    // A file over the limit is refused for good, nothing sent.
    r.client.clear_sent();
    let big = send(4, "too big", MAX_FILE + 1)
        .await
        .expect_err("too large");
    assert_eq!(big.retry, nanoclaw_channel::SendRetry::Never);
    assert!(big.message.contains("up to"), "{big}");
    assert!(r.client.sent().is_empty());
}
