//! The wire test (issue 13, test 1): NanoClaw's WhatsApp client, unmodified, against the
//! loopback server and phone of this crate. `whatsapp link` connects, completes the Noise
//! handshake, gets the pair-device refs and renders a QR code that a camera (rqrr) reads
//! back to those refs; the phone scans it and answers with a pair-success; the keys are
//! stored, and a restarted client logs in with them (IK). Then: `unlink` logs out at the
//! server and deletes the keys; and the device removed on the phone stops the channel
//! with what to do, for good.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use nanoclaw_channel::{Channel, ChannelCondition, ChannelHost, ChatMeta, Message};
use nanoclaw_whatsapp::adapter::{Account, WaClient, WaEvent};
use nanoclaw_whatsapp::channel::{Settings, WhatsApp};
use nanoclaw_whatsapp::link::{self, Linked};
use nanoclaw_whatsapp::live::{Live, LiveConfig};
use nanoclaw_whatsapp::store::linked_account;
use nanoclaw_whatsapp_wire::{Command, PHONE_LID_USER, PHONE_USER, PUSH_NAME, Seen, Server};

const REFS: [&str; 2] = [
    "2@Wire+Test/Ref/One/0123456789abcdefABCDEF==",
    "2@Wire+Test/Ref/Two/0123456789abcdefABCDEF==",
];

/// `whatsapp link`'s terminal, shared with the test.
#[derive(Clone, Default)]
struct Terminal(Arc<Mutex<Vec<u8>>>);

impl Write for Terminal {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Terminal {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// Reads the first QR code on the terminal as a phone's camera would: the half-block
/// characters drawn as pixels, then a QR decoder.
fn read_qr(terminal: &str) -> Option<String> {
    let plain = terminal.replace("\x1b[30;107m", "").replace("\x1b[0m", "");
    let rows: Vec<Vec<char>> = plain
        .lines()
        .skip_while(|l| !l.starts_with('█'))
        .take_while(|l| l.chars().all(|c| "█▀▄ ".contains(c)) && !l.is_empty())
        .map(|l| l.chars().collect())
        .collect();
    let width = rows.first()?.len();
    let scale = 4;
    let light = |x: usize, y: usize| match (rows[y / 2].get(x), y % 2) {
        (Some('█'), _) | (Some('▀'), 0) | (Some('▄'), 1) => 255,
        _ => 0,
    };
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(
        width * scale,
        rows.len() * 2 * scale,
        |x, y| light(x / scale, y / scale),
    );
    let grids = image.detect_grids();
    grids.first()?.decode().ok().map(|(_, text)| text)
}

fn config(server: &Server, root: &std::path::Path) -> LiveConfig {
    LiveConfig {
        ws_url: server.url(),
        store: root.join("store/auth/whatsapp.db"),
        // No version lookup: the only host it may reach is the test server's anyway.
        version: Some((2, 3000, 1_023_456_789)),
    }
}

fn account() -> Account {
    Account {
        pn: format!("{PHONE_USER}@s.whatsapp.net"),
        lid: Some(format!("{PHONE_LID_USER}@lid")),
        push_name: PUSH_NAME.into(),
    }
}

/// Runs `whatsapp link` until the phone has scanned its QR code and it returns.
async fn link_through(server: &Server, config: &LiveConfig) -> Result<(Linked, String)> {
    let terminal = Terminal::default();
    let linking = tokio::spawn({
        let (config, mut terminal) = (config.clone(), terminal.clone());
        async move { link::link(config, None, true, Duration::from_secs(120), &mut terminal).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(code) = read_qr(&terminal.text()) {
            break code;
        }
        if tokio::time::Instant::now() > deadline || linking.is_finished() {
            bail!("no readable QR code on the terminal:\n{}", terminal.text());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        code.starts_with(&format!("{},", REFS[0])),
        "the first QR code carries the first ref: {code}"
    );
    server.wait_for(&Seen::RefsAcked, 10).await?;
    server.command(Command::Scan(code));
    let linked = tokio::time::timeout(Duration::from_secs(90), linking)
        .await
        .context("link did not finish")??
        .map_err(anyhow::Error::msg)?;
    Ok((linked, terminal.text()))
}

async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<WaEvent>,
    want: impl Fn(&WaEvent) -> bool,
) -> Result<WaEvent> {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(e) = events.recv().await {
            if want(&e) {
                return Ok(e);
            }
        }
        bail!("the client stopped")
    })
    .await
    .context("no such event within 60 s")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_scan_store_restart_and_unlink_over_the_real_protocol() -> Result<()> {
    let server = Server::start(&REFS).await?;
    let root = tempfile::tempdir()?;
    let config = config(&server, root.path());
    assert_eq!(linked_account(&config.store), Ok(None));

    let (linked, terminal) = link_through(&server, &config).await?;
    assert_eq!(linked, Linked::New(account()));
    assert!(terminal.contains("Connecting to WhatsApp"), "{terminal}");
    assert!(terminal.contains("Link a device"), "{terminal}");
    assert!(
        terminal.contains(&format!("Linked as {PHONE_USER}@s.whatsapp.net")),
        "{terminal}"
    );
    let login = Some(PHONE_USER.parse::<u64>()?);
    assert_eq!(
        server.seen(),
        vec![
            // The unlinked device registers, gets its refs, and signs the identity the
            // phone gave it; then it logs in with it.
            Seen::Handshake {
                pattern: "XX",
                login: None
            },
            Seen::Registered {
                device_name: "NanoClaw".into()
            },
            Seen::RefsAcked,
            Seen::DeviceSigned,
            Seen::Handshake {
                pattern: "XX",
                login
            },
            Seen::LoggedIn,
            Seen::Synced,
        ]
    );
    // Stored, and read back as `whatsapp status` and the daemon read it.
    assert_eq!(linked_account(&config.store), Ok(Some(account())));
    // `link` again does nothing.
    let again = link::link(
        config.clone(),
        None,
        false,
        Duration::from_secs(5),
        &mut Terminal::default(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(again, Linked::Already(account()));

    // A restart: a new client from the stored keys logs straight in, now with IK.
    let (client, mut events) = Live::new(config.clone(), None);
    client.start().await.map_err(anyhow::Error::msg)?;
    let connected = next_event(&mut events, |e| matches!(e, WaEvent::Connected { .. })).await?;
    assert_eq!(connected, WaEvent::Connected { account: account() });
    assert!(
        server.seen().contains(&Seen::Handshake {
            pattern: "IK",
            login
        }),
        "{:?}",
        server.seen()
    );
    client.stop().await;

    // Unlink: WhatsApp is told, and the keys are gone.
    let told = link::unlink(config.clone(), Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(told, "the server was told");
    server.wait_for(&Seen::RemoveCompanion, 5).await?;
    assert!(!config.store.exists(), "the keys are deleted");
    assert_eq!(linked_account(&config.store), Ok(None));
    Ok(())
}

/// The daemon's side: only the channel's state matters here.
#[derive(Default)]
struct Host {
    state: Mutex<std::collections::HashMap<String, String>>,
}

#[async_trait]
impl ChannelHost for Host {
    async fn deliver(&self, _chat: ChatMeta, _message: Message) -> Result<(), String> {
        Ok(())
    }
    async fn chat_seen(&self, _chat: ChatMeta) -> Result<(), String> {
        Ok(())
    }
    async fn load_state(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }
    async fn save_state(&self, key: &str, value: &str) -> Result<(), String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.into(), value.into());
        Ok(())
    }
}

async fn wait_condition(
    server: &Server,
    channel: &WhatsApp,
    want: impl Fn(&ChannelCondition) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want(&channel.condition()) {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the channel is {:?}; the server saw {:?}",
                channel.condition(),
                server.seen()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits for the channel's run to end (it does when the channel stops for good).
async fn ended(run: tokio::task::JoinHandle<()>) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .context("the channel's run did not end")??;
    Ok(())
}

/// The daemon's channel over the real client, as `channels::configured` builds it,
/// running until it is connected.
async fn connected_channel(
    server: &Server,
    config: &LiveConfig,
) -> Result<(
    Arc<WhatsApp>,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Sender<bool>,
)> {
    let (client, events) = Live::new(config.clone(), None);
    let channel = Arc::new(
        WhatsApp::new(
            client,
            events,
            Settings {
                assistant_name: "Andy".into(),
                read_receipts: false,
            },
        )
        .with_account(account()),
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(Arc::clone(&channel).run(Arc::new(Host::default()), stop_rx));
    wait_condition(server, &channel, |c| {
        matches!(c, ChannelCondition::Connected { .. })
    })
    .await?;
    assert!(channel.is_connected());
    Ok((channel, run, stop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_removed_on_the_phone_stops_the_channel_for_good() -> Result<()> {
    let server = Server::start(&REFS).await?;
    let root = tempfile::tempdir()?;
    let config = config(&server, root.path());
    link_through(&server, &config).await?;
    let (channel, run, _stop) = connected_channel(&server, &config).await?;

    let handshakes = |s: &[Seen]| {
        s.iter()
            .filter(|x| matches!(x, Seen::Handshake { .. }))
            .count()
    };
    let before = handshakes(&server.seen());
    server.command(Command::StreamError("401"));
    wait_condition(&server, &channel, |c| {
        matches!(c, ChannelCondition::NeedsAttention { reason } if reason == "unlinked: run `nanoclaw whatsapp link`")
    })
    .await?;
    ended(run).await?;
    assert_eq!(
        linked_account(&config.store),
        Ok(None),
        "the dead keys are gone"
    );
    // No retry loop: nothing connects again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(handshakes(&server.seen()), before, "{:?}", server.seen());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_with_a_phone_number_shows_the_pairing_code_instead_of_a_qr_code() -> Result<()> {
    let server = Server::start(&REFS).await?;
    let root = tempfile::tempdir()?;
    let config = config(&server, root.path());
    let terminal = Terminal::default();
    let linking = tokio::spawn({
        let (config, mut terminal) = (config.clone(), terminal.clone());
        async move {
            link::link(
                config,
                Some("+1 (555) 123-4567".into()),
                false,
                Duration::from_secs(60),
                &mut terminal,
            )
            .await
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let code = loop {
        let text = terminal.text();
        if let Some(rest) = text.split("Pairing code: ").nth(1) {
            break rest.lines().next().unwrap_or_default().to_string();
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no pairing code on the terminal:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        code.chars().filter(char::is_ascii_alphanumeric).count(),
        8,
        "{code}"
    );
    let text = terminal.text();
    assert!(text.contains("Link with phone number instead"), "{text}");
    assert!(
        read_qr(&text).is_none() && !text.contains('█'),
        "no QR code: {text}"
    );
    let requested = server.seen().into_iter().find_map(|s| match s {
        Seen::PairCodeRequested { jid, display } => Some((jid, display)),
        _ => None,
    });
    let (jid, display) = requested.context("the client asked for a pairing code")?;
    assert_eq!(
        jid,
        format!("{PHONE_USER}@s.whatsapp.net"),
        "the number, normalized"
    );
    // WhatsApp refuses a pairing-code request whose display is not a real browser and
    // OS, so the library sends its safe form there (the QR path shows "NanoClaw").
    assert_eq!(display, "Chrome (Linux)");
    linking.abort();
    Ok(())
}

/// Runs the daemon's channel until the server ends it with `command`; checks that it
/// stops with a reason containing `says` and that the keys stay.
async fn stops_keeping_the_keys(
    server: &Server,
    config: &LiveConfig,
    command: Command,
    says: &str,
) -> Result<()> {
    server.clear_ending();
    let (channel, run, _stop) = connected_channel(server, config).await?;
    server.command(command);
    wait_condition(
        server,
        &channel,
        |c| matches!(c, ChannelCondition::NeedsAttention { reason } if reason.contains(says)),
    )
    .await?;
    ended(run).await?;
    assert_eq!(linked_account(&config.store), Ok(Some(account())));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn being_replaced_or_locked_stops_the_channel_and_keeps_the_keys() -> Result<()> {
    let server = Server::start(&REFS).await?;
    let root = tempfile::tempdir()?;
    let config = config(&server, root.path());
    link_through(&server, &config).await?;
    // Another connection took the stream over: the library stops reconnecting, and the
    // channel says so instead of "reconnecting" for ever.
    stops_keeping_the_keys(&server, &config, Command::Replaced, "took over").await?;
    // A lock can be lifted in the app: the device's keys stay.
    stops_keeping_the_keys(
        &server,
        &config,
        Command::Failure("403"),
        "locked the account",
    )
    .await
}
