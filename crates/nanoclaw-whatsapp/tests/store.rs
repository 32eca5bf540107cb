//! The WhatsApp key store on rusqlite (issue 13, test 3): the library itself creates,
//! saves and finds its device in it; every storage method round-trips and survives a
//! reopen; a process killed in the middle of a pre-key upload leaves a store that opens,
//! passes SQLite's integrity check, and holds whole batches only.

use std::path::Path;
use std::sync::Arc;

use nanoclaw_whatsapp::store::SqliteStore;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::store::persistence_manager::PersistenceManager;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::traits::*;

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("auth/whatsapp.db")).expect("open the store")
}

#[tokio::test]
async fn the_library_creates_its_device_in_our_store_and_finds_it_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let first = {
        let pm = PersistenceManager::new(Arc::new(open(dir.path())))
            .await
            .expect("the library sets up its device");
        pm.modify_device(|d| d.push_name = "Tester".into()).await;
        pm.flush().await.expect("saved");
        serde_json::to_value(&**pm.get_device_snapshot()).expect("device json")
    };
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("auth")), 0o700);
    assert_eq!(mode(&dir.path().join("auth/whatsapp.db")), 0o600);

    let store = open(dir.path());
    assert!(store.exists().await.expect("exists"));
    let pm = PersistenceManager::new(Arc::new(store))
        .await
        .expect("the library finds its device");
    let again = pm.get_device_snapshot();
    assert_eq!(again.push_name, "Tester");
    assert!(
        again.device_props.os.is_some(),
        "the registration properties are set again"
    );
    assert_eq!(
        serde_json::to_value(&**again).expect("device json"),
        first,
        "the same identity, keys and registration id after a reopen"
    );
}

#[tokio::test]
async fn every_storage_method_round_trips_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path());
    let addr = "5511999990000:2@s.whatsapp.net";

    // Signal: identities, sessions, pre-keys, signed pre-keys, sender keys.
    s.put_identity(addr, [7; 32]).await.expect("identity");
    s.put_identities_batch(&[(Arc::from("1@lid"), [8; 32])])
        .await
        .expect("batch");
    assert_eq!(s.load_identity(addr).await.expect("load"), Some([7; 32]));
    assert_eq!(s.load_identity("1@lid").await.expect("load"), Some([8; 32]));
    s.put_session(addr, b"session-1").await.expect("session");
    s.put_sessions_batch(&[(Arc::from("9@s.whatsapp.net"), Bytes::from_static(b"s9"))])
        .await
        .expect("batch");
    assert_eq!(
        s.get_session(addr).await.expect("get").as_deref(),
        Some(&b"session-1"[..])
    );
    assert!(s.has_session("9@s.whatsapp.net").await.expect("has"));
    assert!(
        s.has_signal_state_for_user("5511999990000")
            .await
            .expect("user")
    );
    assert!(
        !s.has_signal_state_for_user("551199999")
            .await
            .expect("a prefix is not the user")
    );
    s.store_prekey(5, b"pk5", false).await.expect("prekey");
    s.store_prekeys_batch(
        &[
            (6, Bytes::from_static(b"pk6")),
            (7, Bytes::from_static(b"pk7")),
        ],
        false,
    )
    .await
    .expect("batch");
    assert_eq!(s.get_max_prekey_id().await.expect("max"), 7);
    assert_eq!(
        s.load_prekey(6).await.expect("load").as_deref(),
        Some(&b"pk6"[..])
    );
    let some = s.load_prekeys_batch(&[5, 7, 99]).await.expect("batch");
    assert_eq!(some.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5, 7]);
    s.remove_prekey(7).await.expect("remove");
    s.mark_prekeys_uploaded(&[5, 7]).await.expect("mark");
    assert_eq!(
        s.load_prekey(7).await.expect("load"),
        None,
        "marking never brings a key back"
    );
    s.store_signed_prekey(3, b"spk3").await.expect("signed");
    s.store_signed_prekey(1, b"spk1").await.expect("signed");
    assert_eq!(
        s.load_all_signed_prekeys().await.expect("all"),
        [(1, b"spk1".to_vec()), (3, b"spk3".to_vec())]
    );
    s.remove_signed_prekey(1).await.expect("remove");
    assert_eq!(s.load_signed_prekey(1).await.expect("load"), None);
    s.put_sender_key("g@g.us::a", b"sk")
        .await
        .expect("sender key");
    s.put_sender_keys_batch(&[(Arc::from("g@g.us::b"), Bytes::from_static(b"sk2"))])
        .await
        .expect("batch");
    assert_eq!(
        s.get_sender_key("g@g.us::b").await.expect("get"),
        Some(b"sk2".to_vec())
    );
    s.delete_sender_key("g@g.us::b").await.expect("delete");
    assert_eq!(s.get_sender_key("g@g.us::b").await.expect("get"), None);

    // App-state sync.
    let key = AppStateSyncKey {
        key_data: vec![1, 2, 3],
        fingerprint: vec![4],
        timestamp: 42,
    };
    s.set_sync_key(&[0xAB, 0x01], key).await.expect("sync key");
    assert_eq!(
        s.get_latest_sync_key_id().await.expect("latest"),
        Some(vec![0xAB, 0x01])
    );
    assert_eq!(
        s.get_sync_key(&[0xAB, 0x01])
            .await
            .expect("get")
            .map(|k| k.timestamp),
        Some(42)
    );
    assert_eq!(s.get_version("regular").await.expect("default").version, 0);
    let state = HashState {
        version: 9,
        ..Default::default()
    };
    s.set_version("regular", state).await.expect("version");
    let macs = [
        AppStateMutationMAC {
            index_mac: vec![1; 32],
            value_mac: b"v1".to_vec(),
        },
        AppStateMutationMAC {
            index_mac: vec![2; 32],
            value_mac: b"v2".to_vec(),
        },
    ];
    s.put_mutation_macs("regular", 9, &macs)
        .await
        .expect("macs");
    assert_eq!(
        s.get_mutation_mac("regular", &[1; 32]).await.expect("get"),
        Some(b"v1".to_vec())
    );
    let found = s
        .get_mutation_macs("regular", &[[2; 32], [3; 32]])
        .await
        .expect("batch");
    assert_eq!(found.len(), 1);
    s.delete_mutation_macs("regular", &[vec![1; 32]])
        .await
        .expect("delete");
    assert_eq!(
        s.get_mutation_mac("regular", &[1; 32]).await.expect("get"),
        None
    );

    // Protocol tables.
    s.set_sender_key_status("g@g.us", &[("a:1@lid", true), ("b:0@lid", false)])
        .await
        .expect("status");
    assert_eq!(
        s.get_sender_key_devices("g@g.us").await.expect("devices"),
        [
            ("a:1@lid".to_string(), true),
            ("b:0@lid".to_string(), false)
        ]
    );
    s.delete_sender_key_device_rows(&["a:1@lid"])
        .await
        .expect("rows");
    assert_eq!(
        s.get_sender_key_devices("g@g.us")
            .await
            .expect("devices")
            .len(),
        1
    );
    let mapping = |lid: &str, pn: &str, at: i64| LidPnMappingEntry {
        lid: lid.into(),
        phone_number: pn.into(),
        created_at: at,
        updated_at: at,
        learning_source: "usync".into(),
    };
    s.put_lid_mapping(&mapping("100", "5511", 10))
        .await
        .expect("mapping");
    s.put_lid_mappings(&[mapping("200", "5511", 20), mapping("300", "5522", 5)])
        .await
        .expect("mappings");
    assert_eq!(
        s.get_lid_mapping("100")
            .await
            .expect("lid")
            .map(|m| m.phone_number),
        Some("5511".into())
    );
    assert_eq!(
        s.get_pn_mapping("5511").await.expect("pn").map(|m| m.lid),
        Some("200".into()),
        "the most recent mapping of a number"
    );
    assert_eq!(s.get_all_lid_mappings().await.expect("all").len(), 3);
    s.save_base_key(addr, "m1", b"base")
        .await
        .expect("base key");
    assert!(
        s.has_same_base_key(addr, "m1", b"base")
            .await
            .expect("same")
    );
    assert!(
        !s.has_same_base_key(addr, "m1", b"other")
            .await
            .expect("other")
    );
    s.delete_base_key(addr, "m1").await.expect("delete");
    assert!(
        !s.has_same_base_key(addr, "m1", b"base")
            .await
            .expect("gone")
    );
    let record = DeviceListRecord {
        user: "5511".into(),
        devices: vec![DeviceInfo {
            device_id: 0,
            key_index: None,
            is_hosted: false,
        }],
        timestamp: 1,
        phash: Some("h".into()),
        raw_id: Some(3),
    };
    s.update_device_list(record).await.expect("device list");
    assert_eq!(
        s.get_devices("5511").await.expect("get").map(|r| r.raw_id),
        Some(Some(3))
    );
    s.put_group_metadata("g@g.us", b"meta").await.expect("meta");
    assert_eq!(
        s.get_group_metadata("g@g.us").await.expect("meta"),
        Some(b"meta".to_vec())
    );

    // Trusted-contact tokens: newer wins, the sender time only moves forward.
    s.touch_tc_token_sender_timestamp("c@s.whatsapp.net", 100)
        .await
        .expect("touch");
    s.store_received_tc_token("c@s.whatsapp.net", b"tok", 50)
        .await
        .expect("first real token");
    s.store_received_tc_token("c@s.whatsapp.net", b"old", 40)
        .await
        .expect("stale");
    s.touch_tc_token_sender_timestamp("c@s.whatsapp.net", 90)
        .await
        .expect("earlier");
    let t = s
        .get_tc_token("c@s.whatsapp.net")
        .await
        .expect("get")
        .expect("token");
    assert_eq!(
        (t.token.as_slice(), t.token_timestamp, t.sender_timestamp),
        (&b"tok"[..], 50, Some(100))
    );
    assert_eq!(
        s.get_all_tc_token_jids().await.expect("jids"),
        ["c@s.whatsapp.net"]
    );
    assert_eq!(
        s.delete_expired_tc_tokens(60, 50).await.expect("keep"),
        0,
        "its sender time is recent"
    );
    assert_eq!(
        s.delete_expired_tc_tokens(60, 200).await.expect("expire"),
        1
    );

    // Sent messages (taken once), pending inbound messages, message secrets.
    s.store_sent_message("c@s.whatsapp.net", "m1", b"payload")
        .await
        .expect("sent");
    assert_eq!(
        s.take_sent_message("c@s.whatsapp.net", "m1")
            .await
            .expect("take"),
        Some(b"payload".to_vec())
    );
    assert_eq!(
        s.take_sent_message("c@s.whatsapp.net", "m1")
            .await
            .expect("twice"),
        None
    );
    s.store_pending_inbound("c", "s", "i", b"msg")
        .await
        .expect("pending");
    assert_eq!(
        s.get_pending_inbound("c", "s", "i").await.expect("get"),
        Some(b"msg".to_vec())
    );
    s.delete_pending_inbound("c", "s", "i")
        .await
        .expect("delete");
    assert_eq!(
        s.get_pending_inbound("c", "s", "i").await.expect("get"),
        None
    );
    let secret = |expires_at, message_ts| MsgSecretEntry {
        chat: Arc::from("c@s.whatsapp.net"),
        sender: Arc::from("c@s.whatsapp.net"),
        msg_id: Arc::from("m2"),
        secret: [5; 32],
        expires_at,
        message_ts,
    };
    s.put_msg_secrets(vec![secret(100, 7)])
        .await
        .expect("secret");
    s.put_msg_secrets(vec![secret(50, 0)])
        .await
        .expect("a shorter window never wins");
    assert_eq!(
        s.get_msg_secret_with_ts("c@s.whatsapp.net", "c@s.whatsapp.net", "m2")
            .await
            .expect("get"),
        Some((vec![5; 32], 7))
    );
    assert_eq!(s.delete_expired_msg_secrets(99).await.expect("not yet"), 0);
    s.put_msg_secrets(vec![secret(0, 0)])
        .await
        .expect("never expires");
    assert_eq!(s.delete_expired_msg_secrets(1_000).await.expect("kept"), 0);

    // All of it is on disk.
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.load_identity(addr).await.expect("load"), Some([7; 32]));
    assert_eq!(
        s.get_session(addr).await.expect("get").as_deref(),
        Some(&b"session-1"[..])
    );
    assert_eq!(s.get_max_prekey_id().await.expect("max"), 6);
    assert_eq!(s.get_version("regular").await.expect("version").version, 9);
    assert_eq!(
        s.get_mutation_mac("regular", &[2; 32]).await.expect("mac"),
        Some(b"v2".to_vec())
    );
    assert_eq!(
        s.get_pn_mapping("5522").await.expect("pn").map(|m| m.lid),
        Some("300".into())
    );
    assert!(
        s.get_msg_secret("c@s.whatsapp.net", "c@s.whatsapp.net", "m2")
            .await
            .expect("secret")
            .is_some()
    );
}

/// The child's job in the crash test: upload pre-keys in batches of 100, as the library
/// does (store, then mark uploaded), until it is killed.
const CHILD: &str = "NANOCLAW_WA_STORE_CRASH_CHILD";
const BATCH: u32 = 100;

#[tokio::test]
async fn a_crash_in_the_middle_of_a_prekey_upload_leaves_a_usable_store() {
    if let Ok(dir) = std::env::var(CHILD) {
        let s = open(Path::new(&dir));
        let record = Bytes::from(vec![9u8; 400]);
        for batch in 0.. {
            let ids: Vec<u32> = (batch * BATCH + 1..=(batch + 1) * BATCH).collect();
            let keys: Vec<(u32, Bytes)> = ids.iter().map(|i| (*i, record.clone())).collect();
            s.store_prekeys_batch(&keys, false).await.expect("store");
            s.mark_prekeys_uploaded(&ids).await.expect("mark");
        }
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // Make the store first, so the child only writes.
    drop(open(dir.path()));
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "a_crash_in_the_middle_of_a_prekey_upload_leaves_a_usable_store",
                "--nocapture",
            ])
            .env(CHILD, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child");
        // Let it write for a while (a different moment each round), then kill it.
        std::thread::sleep(std::time::Duration::from_millis(300 + 170 * round));
        child.kill().expect("kill");
        child.wait().expect("reaped");

        let conn =
            rusqlite::Connection::open(dir.path().join("auth/whatsapp.db")).expect("raw open");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity check");
        assert_eq!(check, "ok", "round {round}");
        let (count, max, pending): (u32, u32, u32) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(uploaded = 0), 0) FROM prekeys",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("counts");
        drop(conn);
        assert!(count > 0, "round {round}: the child wrote something");
        assert_eq!(
            count % BATCH,
            0,
            "round {round}: whole batches only ({count})"
        );
        assert_eq!(count, max, "round {round}: no gaps");
        assert!(
            pending == 0 || pending == BATCH,
            "round {round}: at most the last batch awaits its upload ({pending})"
        );

        // The store opens and works: the library's next step would store the next batch.
        let s = open(dir.path());
        assert_eq!(s.get_max_prekey_id().await.expect("max"), max);
        s.store_prekey(max + 1, b"next", false)
            .await
            .expect("usable");
        s.remove_prekey(max + 1).await.expect("usable");
    }
}

/// `whatsapp status` and the daemon read whether the store is linked without opening it
/// for the library (nor creating it).
#[tokio::test]
async fn the_linked_account_is_read_from_the_store_and_unlinking_deletes_it() {
    use nanoclaw_whatsapp::store::{delete, linked_account};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("auth/whatsapp.db");
    assert_eq!(linked_account(&path), Ok(None), "no store");
    assert!(!path.exists(), "looking does not create it");
    {
        let pm = PersistenceManager::new(Arc::new(open(dir.path())))
            .await
            .expect("device");
        pm.flush().await.expect("saved");
        assert_eq!(
            linked_account(&path),
            Ok(None),
            "a device that never paired"
        );
        pm.modify_device(|d| {
            d.pn = Some("15551230000:3@s.whatsapp.net".parse().expect("jid"));
            d.lid = Some("100000000000001:3@lid".parse().expect("jid"));
            d.push_name = "Ana".into();
        })
        .await;
        pm.flush().await.expect("saved");
    }
    let account = linked_account(&path).expect("read").expect("linked");
    assert_eq!(account.pn, "15551230000@s.whatsapp.net");
    assert_eq!(account.lid.as_deref(), Some("100000000000001@lid"));
    assert_eq!(account.push_name, "Ana");

    std::fs::write(dir.path().join("not-a-store.db"), b"garbage, not SQLite").expect("write");
    let e = linked_account(&dir.path().join("not-a-store.db")).expect_err("refused");
    assert!(e.contains("cannot read the WhatsApp key store"), "{e}");

    delete(&path).expect("deleted");
    assert!(!path.exists() && !path.with_extension("db-wal").exists());
    assert_eq!(linked_account(&path), Ok(None));
    delete(&path).expect("deleting nothing is fine");
}

/// A logged-out device's keys are overwritten in place (no file is removed under an open
/// handle), and nothing the library still holds can write them back.
#[tokio::test]
async fn wiping_overwrites_the_keys_and_refuses_later_writes() {
    use nanoclaw_whatsapp::store::linked_account;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("auth/whatsapp.db");
    let store = open(dir.path());
    let pm = PersistenceManager::new(Arc::new(store.clone()))
        .await
        .expect("device");
    pm.modify_device(|d| d.pn = Some("15551230000@s.whatsapp.net".parse().expect("jid")))
        .await;
    pm.flush().await.expect("saved");
    // The identity key pair as the store holds it (the device is JSON).
    let device = serde_json::to_value(&**pm.get_device_snapshot()).expect("device json");
    let secret = serde_json::to_vec(&device["identity_key"]).expect("key json");
    assert!(secret.len() > 40, "{}", String::from_utf8_lossy(&secret));
    let on_disk = |secret: &[u8]| {
        ["", "-wal"].iter().any(|suffix| {
            let file = std::fs::read(format!("{}{suffix}", path.display())).unwrap_or_default();
            file.windows(secret.len()).any(|w| w == secret)
        })
    };
    assert!(
        on_disk(&secret),
        "the identity key is stored (or the check proves nothing)"
    );
    assert!(linked_account(&path).expect("read").is_some());

    store.wipe().await.expect("wiped");
    assert!(path.exists(), "the file stays, empty");
    assert_eq!(linked_account(&path), Ok(None));
    assert!(
        !on_disk(&secret),
        "the identity key is overwritten, in the file and its log"
    );
    // The library flushing its snapshot at shutdown writes nothing back.
    pm.modify_device(|d| d.push_name = "late".into()).await;
    let _ = pm.flush().await;
    assert!(
        store.load().await.is_err(),
        "a wiped store refuses every call"
    );
    assert_eq!(linked_account(&path), Ok(None));
    // `link` later starts afresh on the same path.
    let again = open(dir.path());
    assert!(!again.exists().await.expect("exists"), "no device");
}

/// The shipped build checks WhatsApp's certificate chain against WhatsApp's root key:
/// a chain signed with zeros (what the wire test's server sends, accepted there only
/// because that separate build turns the check off) is refused here.
#[test]
fn a_certificate_chain_not_signed_by_whatsapp_is_refused() {
    use whatsapp_rust::buffa::{Message, MessageField};
    use whatsapp_rust::wacore::handshake::HandshakeUtils;
    use whatsapp_rust::waproto::whatsapp::{
        CertChain,
        cert_chain::{NoiseCertificate, noise_certificate::Details},
    };
    let server_static = [7u8; 32];
    let details = |serial, issuer, key: Vec<u8>| {
        Details {
            serial: Some(serial),
            issuer_serial: Some(issuer),
            key: Some(key),
            not_before: Some(1_700_000_000),
            not_after: Some(1_900_000_000),
        }
        .encode_to_vec()
    };
    let chain = CertChain {
        leaf: MessageField::some(NoiseCertificate {
            details: Some(details(2, 1, server_static.to_vec())),
            signature: Some(vec![0; 64]),
        }),
        intermediate: MessageField::some(NoiseCertificate {
            details: Some(details(1, 0, vec![0xCC; 32])),
            signature: Some(vec![0; 64]),
        }),
    }
    .encode_to_vec();
    let e = HandshakeUtils::verify_server_cert(&chain, &server_static)
        .expect_err("a forged chain must be refused");
    assert!(e.to_string().contains("signature"), "{e}");
}
