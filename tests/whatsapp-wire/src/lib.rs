//! A loopback stand-in for WhatsApp's server and the user's phone, for the wire test.
//!
//! It speaks the real protocol to the unmodified whatsapp-rust client: a WebSocket on
//! 127.0.0.1, the Noise handshakes (XX for registration and the first login, IK after),
//! frames encrypted with the split keys, and binary nodes; it issues `pair-device`
//! refs, plays the phone's `pair-success` (an ADV identity signed with an account key
//! of its own and the HMAC of the client's ADV secret, read from the QR code the test
//! scanned), checks the client's device signature, restarts the stream (515), logs the
//! client in (`success`, the passive IQ, the offline marker, the app-state sync), and
//! can log it out (a 401 stream error) or take its logout IQ.
//!
//! Built from the crate's Noise primitives; the client must be built with
//! `danger-skip-cert-chain-verify`, since no test can sign with WhatsApp's root key.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use whatsapp_rust::buffa::{self, Message as _};
use whatsapp_rust::wacore::framing::{FrameDecoder, encode_frame};
use whatsapp_rust::wacore::handshake::NoiseHandshake;
use whatsapp_rust::wacore::libsignal::protocol::{KeyPair, PublicKey};
use whatsapp_rust::wacore::noise::NoiseCipher;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::consts::{NOISE_PATTERN_IK, NOISE_PATTERN_XX, WA_CONN_HEADER};
use whatsapp_rust::wacore_binary::marshal::{marshal, unmarshal_ref};
use whatsapp_rust::wacore_binary::util::unpack;
use whatsapp_rust::wacore_binary::{Node, NodeContent};
use whatsapp_rust::waproto::whatsapp as wa;

/// The account the phone links the client to.
pub const PHONE_USER: &str = "15551234567";
pub const PHONE_LID_USER: &str = "100000000000001";
pub const PUSH_NAME: &str = "Wire Test";

/// What the server saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A handshake completed: its pattern, and the phone user of a login (`None`: a
    /// registration, i.e. an unlinked device).
    Handshake {
        pattern: &'static str,
        login: Option<u64>,
    },
    /// An unlinked device registered under this name (its `DeviceProps.os`, what the
    /// phone lists it as).
    Registered { device_name: String },
    /// The client acknowledged the pair-device refs.
    RefsAcked,
    /// The client answered pair-success with a device signature that verifies.
    DeviceSigned,
    /// The client was logged in (`success` sent).
    LoggedIn,
    /// The client's app-state sync was answered: it is connected now.
    Synced,
    /// The client asked to be removed as a companion device (`logout`).
    RemoveCompanion,
    /// The client asked for a pairing code for this phone number, to be shown on the
    /// phone as this device.
    PairCodeRequested { jid: String, display: String },
}

/// What the test asks of the server's connections.
#[derive(Debug, Clone)]
pub enum Command {
    /// The phone scanned this QR code: pair the client.
    Scan(String),
    /// End every connection with this stream error code (401: the device was removed).
    StreamError(&'static str),
    /// End every connection with a `<failure reason=…>` (403: the account is locked).
    Failure(&'static str),
    /// End every connection with a `<conflict type="replaced"/>`: another connection
    /// took the device's stream over.
    Replaced,
}

struct Identity {
    static_kp: KeyPair,
    static_pub: [u8; 32],
    cert_chain: Vec<u8>,
}

struct Shared {
    id: Identity,
    refs: Vec<String>,
    seen: Mutex<Vec<Seen>>,
    commands: broadcast::Sender<Command>,
    /// The last ending command: a client that reconnects after it gets it too, as a
    /// removed device keeps getting its 401 (cleared by [`Server::clear_ending`]).
    ending: Mutex<Option<Command>>,
}

/// The running server.
pub struct Server {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| anyhow!("{what} is {} bytes, not 32", bytes.len()))
}

/// The Noise certificate chain the client checks (serials and the leaf key; the
/// signatures only without the test feature).
fn cert_chain(server_static_pub: &[u8; 32]) -> Vec<u8> {
    use wa::cert_chain::{NoiseCertificate, noise_certificate::Details};
    let intermediate = Details {
        serial: Some(1),
        issuer_serial: Some(0),
        key: Some(vec![0xCC; 32]),
        not_before: Some(1_700_000_000),
        not_after: Some(1_900_000_000),
    }
    .encode_to_vec();
    let leaf = Details {
        serial: Some(2),
        issuer_serial: Some(1),
        key: Some(server_static_pub.to_vec()),
        not_before: Some(1_700_000_500),
        not_after: Some(1_899_999_500),
    }
    .encode_to_vec();
    wa::CertChain {
        leaf: buffa::MessageField::some(NoiseCertificate {
            details: Some(leaf),
            signature: Some(vec![0; 64]),
        }),
        intermediate: buffa::MessageField::some(NoiseCertificate {
            details: Some(intermediate),
            signature: Some(vec![0; 64]),
        }),
    }
    .encode_to_vec()
}

impl Server {
    /// Listens on 127.0.0.1 (a free port); `refs` are the pair-device refs it issues.
    pub async fn start(refs: &[&str]) -> Result<Server> {
        let static_kp = whatsapp_rust::wacore::crypto::generate_curve_key_pair();
        let static_pub = key32(static_kp.public_key.public_key_bytes(), "the static key")?;
        let (commands, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            id: Identity {
                cert_chain: cert_chain(&static_pub),
                static_kp,
                static_pub,
            },
            refs: refs.iter().map(|r| r.to_string()).collect(),
            seen: Mutex::new(Vec::new()),
            commands,
            ending: Mutex::new(None),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = Arc::clone(&accepting);
                tokio::spawn(async move {
                    if let Err(e) = serve(shared, tcp).await {
                        eprintln!("wire server: a connection ended: {e:#}");
                    }
                });
            }
        });
        Ok(Server { addr, shared, task })
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws/chat", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets clients connect again after an ending command.
    pub fn clear_ending(&self) {
        *self.shared.ending.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn command(&self, command: Command) {
        if !matches!(command, Command::Scan(_)) {
            *self.shared.ending.lock().unwrap_or_else(|p| p.into_inner()) = Some(command.clone());
        }
        let _ = self.shared.commands.send(command);
    }

    /// Waits until the server has seen `what` (up to `secs`).
    pub async fn wait_for(&self, what: &Seen, secs: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !self.seen().contains(what) {
            if tokio::time::Instant::now() > deadline {
                bail!("the server never saw {what:?}; it saw {:?}", self.seen());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Shared {
    fn saw(&self, seen: Seen) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(seen);
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn next_binary(ws: &mut Ws) -> Result<Vec<u8>> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(data))) => return Ok(data.to_vec()),
            Some(Ok(WsMessage::Close(_))) | None => bail!("the client closed the connection"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// One connection after its handshake: the transport ciphers and their counters.
struct Conn {
    ws: Ws,
    read: NoiseCipher,
    write: NoiseCipher,
    rc: u32,
    wc: u32,
    frames: FrameDecoder,
}

impl Conn {
    /// Both counters start at 0 on every connection.
    fn new(ws: Ws, read: NoiseCipher, write: NoiseCipher, frames: FrameDecoder) -> Conn {
        Conn {
            ws,
            read,
            write,
            rc: 0,
            wc: 0,
            frames,
        }
    }

    async fn send(&mut self, node: &Node) -> Result<()> {
        let plain = marshal(node)?;
        let sealed = self
            .write
            .encrypt_with_counter(self.wc, &plain)
            .map_err(|e| anyhow!("encrypting a frame: {e}"))?;
        self.wc += 1;
        self.ws
            .send(WsMessage::Binary(encode_frame(&sealed, None)?.into()))
            .await?;
        Ok(())
    }

    /// The nodes of one WebSocket message (it may hold several frames).
    fn open(&mut self, data: &[u8]) -> Result<Vec<Node>> {
        self.frames.feed(data);
        let mut nodes = Vec::new();
        while let Some(mut frame) = self.frames.decode_frame() {
            self.read
                .decrypt_in_place_with_counter(self.rc, &mut frame)
                .map_err(|e| anyhow!("decrypting frame {}: {e}", self.rc))?;
            self.rc += 1;
            let data = unpack(&frame)?;
            nodes.push(unmarshal_ref(&data)?.to_owned());
        }
        Ok(nodes)
    }
}

/// Sends the ServerHello, alone in its message: the client reads exactly one frame
/// from it.
async fn send_server_hello(
    ws: &mut Ws,
    ephemeral: &[u8; 32],
    encrypted_static: Option<Vec<u8>>,
    encrypted_cert: Vec<u8>,
) -> Result<()> {
    let hello = wa::HandshakeMessage {
        server_hello: buffa::MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(ephemeral.to_vec()),
            r#static: encrypted_static,
            payload: Some(encrypted_cert),
            ..Default::default()
        }),
        ..Default::default()
    };
    ws.send(WsMessage::Binary(
        encode_frame(&hello.encode_to_vec(), None)?.into(),
    ))
    .await?;
    Ok(())
}

/// The server's half of the handshake the client opened with `first`.
async fn handshake(
    id: &Identity,
    mut ws: Ws,
    first: &[u8],
) -> Result<(Conn, wa::ClientPayload, &'static str)> {
    ensure!(
        first.starts_with(&WA_CONN_HEADER),
        "the client's first message does not start with WhatsApp's header"
    );
    let mut frames = FrameDecoder::new();
    frames.feed(&first[WA_CONN_HEADER.len()..]);
    let hello = frames
        .decode_frame()
        .context("the first message holds no whole ClientHello")?;
    let hello = wa::HandshakeMessage::decode_from_slice(&hello)?
        .client_hello
        .into_option()
        .context("no client_hello")?;
    let c_eph = key32(
        hello.ephemeral.as_deref().unwrap_or_default(),
        "the client's ephemeral key",
    )?;
    let eph = whatsapp_rust::wacore::crypto::generate_curve_key_pair();
    let eph_pub = key32(eph.public_key.public_key_bytes(), "our ephemeral key")?;
    let noise_err = |e| anyhow!("noise: {e}");

    if let (Some(enc_static), Some(enc_payload)) = (&hello.r#static, &hello.payload) {
        // IK: the client knows our static key from the chain it cached.
        let mut n = NoiseHandshake::new(NOISE_PATTERN_IK, &WA_CONN_HEADER).map_err(noise_err)?;
        n.authenticate(&id.static_pub);
        n.authenticate(&c_eph);
        n.mix_shared_secret(id.static_kp.private_key.serialize(), &c_eph)
            .map_err(noise_err)?;
        let c_static = key32(
            &n.decrypt(enc_static).map_err(noise_err)?,
            "the client's static key",
        )?;
        n.mix_shared_secret(id.static_kp.private_key.serialize(), &c_static)
            .map_err(noise_err)?;
        let payload =
            wa::ClientPayload::decode_from_slice(&n.decrypt(enc_payload).map_err(noise_err)?)?;
        n.authenticate(&eph_pub);
        n.mix_shared_secret(eph.private_key.serialize(), &c_eph)
            .map_err(noise_err)?;
        n.mix_shared_secret(eph.private_key.serialize(), &c_static)
            .map_err(noise_err)?;
        let enc_cert = n.encrypt(&id.cert_chain).map_err(noise_err)?;
        // No static key: the client goes on with IK.
        send_server_hello(&mut ws, &eph_pub, None, enc_cert).await?;
        let (read, write) = n.finish().map_err(noise_err)?;
        return Ok((Conn::new(ws, read, write, frames), payload, "IK"));
    }

    // XX.
    let mut n = NoiseHandshake::new(NOISE_PATTERN_XX, &WA_CONN_HEADER).map_err(noise_err)?;
    n.authenticate(&c_eph);
    n.authenticate(&eph_pub);
    n.mix_shared_secret(eph.private_key.serialize(), &c_eph)
        .map_err(noise_err)?;
    let enc_static = n.encrypt(&id.static_pub).map_err(noise_err)?;
    n.mix_shared_secret(id.static_kp.private_key.serialize(), &c_eph)
        .map_err(noise_err)?;
    let enc_cert = n.encrypt(&id.cert_chain).map_err(noise_err)?;
    send_server_hello(&mut ws, &eph_pub, Some(enc_static), enc_cert).await?;
    let finish = loop {
        if let Some(frame) = frames.decode_frame() {
            break frame;
        }
        frames.feed(&next_binary(&mut ws).await?);
    };
    let finish = wa::HandshakeMessage::decode_from_slice(&finish)?
        .client_finish
        .into_option()
        .context("no client_finish")?;
    let c_static = key32(
        &n.decrypt(finish.r#static.as_deref().unwrap_or_default())
            .map_err(noise_err)?,
        "the client's static key",
    )?;
    n.mix_shared_secret(eph.private_key.serialize(), &c_static)
        .map_err(noise_err)?;
    let payload = wa::ClientPayload::decode_from_slice(
        &n.decrypt(finish.payload.as_deref().unwrap_or_default())
            .map_err(noise_err)?,
    )?;
    let (read, write) = n.finish().map_err(noise_err)?;
    Ok((Conn::new(ws, read, write, frames), payload, "XX"))
}

fn attr(node: &Node, key: &str) -> Option<String> {
    node.attrs().optional_string(key).map(|v| v.to_string())
}

fn bytes_of(node: &Node) -> Option<&[u8]> {
    match &node.content {
        Some(NodeContent::Bytes(b)) => Some(b),
        _ => None,
    }
}

fn result(id: &str) -> Node {
    NodeBuilder::new("iq")
        .attr("from", "s.whatsapp.net")
        .attr("id", id.to_string())
        .attr("type", "result")
        .build()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The phone's half of linking: what it reads from the QR code, and the pair-success.
struct Phone {
    identity_pub: [u8; 32],
    account: KeyPair,
}

impl Phone {
    /// Reads the QR code as WhatsApp's app does: `ref,noise,identity,adv,type`.
    fn scan(code: &str, expected_refs: &[String]) -> Result<(Phone, Node)> {
        let fields: Vec<&str> = code.split(',').collect();
        ensure!(
            fields.len() == 5,
            "the QR code has {} fields, not 5: {code}",
            fields.len()
        );
        ensure!(
            expected_refs.iter().any(|r| r == fields[0]),
            "the QR code carries ref {:?}, not one the server issued",
            fields[0]
        );
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s);
        let identity_pub = key32(&b64(fields[2])?, "the identity key")?;
        let adv_secret = key32(&b64(fields[3])?, "the ADV secret")?;
        let account = whatsapp_rust::wacore::crypto::generate_curve_key_pair();
        let inner = wa::ADVDeviceIdentity {
            raw_id: Some(1),
            timestamp: Some(now_secs()),
            key_index: Some(1),
            account_type: Some(wa::ADVEncryptionType::E2EE),
            device_type: Some(wa::ADVEncryptionType::E2EE),
        }
        .encode_to_vec();
        let to_sign = [&[6u8, 0][..], &inner, &identity_pub].concat();
        let signature = whatsapp_rust::wacore::crypto::calculate_curve_signature(
            &account.private_key,
            &to_sign,
        )
        .map_err(|e| anyhow!("signing: {e}"))?;
        let signed = wa::ADVSignedDeviceIdentity {
            details: Some(inner),
            account_signature_key: Some(account.public_key.public_key_bytes().to_vec()),
            account_signature: Some(signature.to_vec()),
            device_signature: None,
        }
        .encode_to_vec();
        let hmac = whatsapp_rust::wacore::libsignal::crypto::hmac_sha256(&adv_secret, &signed);
        let container = wa::ADVSignedDeviceIdentityHMAC {
            details: Some(signed),
            hmac: Some(hmac.to_vec()),
            account_type: Some(wa::ADVEncryptionType::E2EE),
        }
        .encode_to_vec();
        let pair_success = NodeBuilder::new("iq")
            .attr("from", "s.whatsapp.net")
            .attr("type", "set")
            .attr("id", "ps-1")
            .attr("xmlns", "md")
            .attr("t", now_secs().to_string())
            .children([NodeBuilder::new("pair-success")
                .children([
                    NodeBuilder::new("device-identity").bytes(container).build(),
                    NodeBuilder::new("platform").attr("name", "android").build(),
                    NodeBuilder::new("biz").attr("name", PUSH_NAME).build(),
                    NodeBuilder::new("device")
                        .attr("jid", format!("{PHONE_USER}:7@s.whatsapp.net"))
                        .attr("lid", format!("{PHONE_LID_USER}:7@lid"))
                        .build(),
                ])
                .build()])
            .build();
        Ok((
            Phone {
                identity_pub,
                account,
            },
            pair_success,
        ))
    }

    /// Whether the client's `pair-device-sign` carries a device signature by its
    /// identity key over our account's identity.
    fn device_signature_verifies(&self, sign: &Node) -> Result<bool> {
        let identity = sign
            .get_optional_child("pair-device-sign")
            .and_then(|n| n.get_optional_child("device-identity"))
            .and_then(bytes_of)
            .context("no device identity in pair-device-sign")?;
        let signed = wa::ADVSignedDeviceIdentity::decode_from_slice(identity)?;
        let inner = signed.details.unwrap_or_default();
        let device_signature = signed.device_signature.unwrap_or_default();
        let message = [
            &[6u8, 1][..],
            &inner,
            &self.identity_pub,
            self.account.public_key.public_key_bytes(),
        ]
        .concat();
        let key = PublicKey::from_djb_public_key_bytes(&self.identity_pub)
            .map_err(|e| anyhow!("identity key: {e}"))?;
        Ok(key.verify_signature(&message, &device_signature))
    }
}

/// One client connection, handshake to close.
async fn serve(shared: Arc<Shared>, tcp: tokio::net::TcpStream) -> Result<()> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let mut commands = shared.commands.subscribe();
    let first = next_binary(&mut ws).await?;
    let (mut conn, payload, pattern) = handshake(&shared.id, ws, &first).await?;
    let login = payload.username;
    shared.saw(Seen::Handshake { pattern, login });
    if let Some(registration) = payload.device_pairing_data.as_option() {
        let props = wa::DeviceProps::decode_from_slice(
            registration.device_props.as_deref().unwrap_or_default(),
        )?;
        shared.saw(Seen::Registered {
            device_name: props.os.unwrap_or_default(),
        });
    }
    let mut phone: Option<Phone> = None;
    if login.is_none() {
        // Registration: issue the refs for the QR codes.
        let refs = shared
            .refs
            .iter()
            .map(|r| NodeBuilder::new("ref").bytes(r.as_bytes().to_vec()).build());
        conn.send(
            &NodeBuilder::new("iq")
                .attr("from", "s.whatsapp.net")
                .attr("type", "set")
                .attr("id", "pd-1")
                .attr("xmlns", "md")
                .children([NodeBuilder::new("pair-device").children(refs).build()])
                .build(),
        )
        .await?;
    } else {
        conn.send(
            &NodeBuilder::new("success")
                .attr("t", now_secs().to_string())
                .attr("lid", format!("{PHONE_LID_USER}:7@lid"))
                .build(),
        )
        .await?;
        shared.saw(Seen::LoggedIn);
        let ending = shared
            .ending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(command) = ending {
            return end(conn, &command).await;
        }
    }
    loop {
        tokio::select! {
            data = next_binary(&mut conn.ws) => {
                let data = data?;
                for node in conn.open(&data)? {
                    if let Some(reply) = answer(&shared, &mut phone, &node)? {
                        for n in reply {
                            conn.send(&n).await?;
                        }
                    }
                }
            }
            command = commands.recv() => match command {
                Ok(Command::Scan(code)) if login.is_none() => {
                    let (p, pair_success) = Phone::scan(&code, &shared.refs)?;
                    phone = Some(p);
                    conn.send(&pair_success).await?;
                }
                Ok(Command::Scan(_)) => {}
                Ok(ending) => return end(conn, &ending).await,
                Err(_) => return Ok(()),
            },
        }
    }
}

/// Ends a connection as `command` says.
async fn end(mut conn: Conn, command: &Command) -> Result<()> {
    let node = match command {
        Command::StreamError(code) => NodeBuilder::new("stream:error").attr("code", *code).build(),
        Command::Replaced => NodeBuilder::new("stream:error")
            .children([NodeBuilder::new("conflict")
                .attr("type", "replaced")
                .build()])
            .build(),
        Command::Failure(reason) => NodeBuilder::new("failure").attr("reason", *reason).build(),
        Command::Scan(_) => return Ok(()),
    };
    conn.send(&node).await?;
    let _ = conn.ws.close(None).await;
    Ok(())
}

/// The server's answer to one node from the client (`None`: nothing to say).
fn answer(shared: &Shared, phone: &mut Option<Phone>, node: &Node) -> Result<Option<Vec<Node>>> {
    if node.tag != "iq" {
        return Ok(None);
    }
    let id = attr(node, "id").unwrap_or_default();
    let kind = attr(node, "type").unwrap_or_default();
    let xmlns = attr(node, "xmlns").unwrap_or_default();
    if kind == "result" || kind == "error" {
        if id == "pd-1" {
            shared.saw(Seen::RefsAcked);
        }
        if id == "ps-1" {
            let verified = match phone {
                Some(p) => p.device_signature_verifies(node)?,
                None => false,
            };
            ensure!(verified, "the client's device signature does not verify");
            shared.saw(Seen::DeviceSigned);
            // Linked: restart the stream, as WhatsApp does.
            return Ok(Some(vec![
                NodeBuilder::new("stream:error").attr("code", "515").build(),
            ]));
        }
        return Ok(None);
    }
    match xmlns.as_str() {
        "passive" => Ok(Some(vec![
            result(&id),
            NodeBuilder::new("ib")
                .attr("from", "s.whatsapp.net")
                .children([NodeBuilder::new("offline").attr("count", "0").build()])
                .build(),
        ])),
        "w:sync:app:state" => {
            // Nothing to sync: every collection is "conflict", which counts as synced.
            let names: Vec<String> = node
                .get_optional_child("sync")
                .and_then(|s| s.children())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| attr(c, "name"))
                .collect();
            let critical = names.iter().any(|n| n.starts_with("critical"));
            let collections = names.into_iter().map(|n| {
                NodeBuilder::new("collection")
                    .attr("name", n)
                    .attr("type", "error")
                    .children([NodeBuilder::new("error")
                        .attr("code", "409")
                        .attr("text", "conflict")
                        .build()])
                    .build()
            });
            if critical {
                shared.saw(Seen::Synced);
            }
            Ok(Some(vec![
                NodeBuilder::new("iq")
                    .attr("from", "s.whatsapp.net")
                    .attr("id", id)
                    .attr("type", "result")
                    .children([NodeBuilder::new("sync").children(collections).build()])
                    .build(),
            ]))
        }
        "md" if node.get_optional_child("link_code_companion_reg").is_some() => {
            let reg = node
                .get_optional_child("link_code_companion_reg")
                .context("checked")?;
            let display = reg
                .get_optional_child("companion_platform_display")
                .and_then(bytes_of)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            shared.saw(Seen::PairCodeRequested {
                jid: attr(reg, "jid").unwrap_or_default(),
                display,
            });
            Ok(Some(vec![
                NodeBuilder::new("iq")
                    .attr("from", "s.whatsapp.net")
                    .attr("id", id)
                    .attr("type", "result")
                    .children([NodeBuilder::new("link_code_companion_reg")
                        .children([NodeBuilder::new("link_code_pairing_ref")
                            .bytes(b"wire-test-pairing-ref".to_vec())
                            .build()])
                        .build()])
                    .build(),
            ]))
        }
        "md" if node.get_optional_child("remove-companion-device").is_some() => {
            shared.saw(Seen::RemoveCompanion);
            Ok(Some(vec![result(&id)]))
        }
        _ => Ok(Some(vec![result(&id)])),
    }
}
