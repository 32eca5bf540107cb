//! whatsapp-rust's key store on our own SQLite (rusqlite): the device's identity, the
//! Signal sessions and keys, app-state sync, and the protocol's small tables, in one
//! database under `store/auth/` (host only, 0600, never mounted into a sandbox).
//!
//! The library's own store uses diesel and another libsqlite3; two SQLite libraries
//! cannot be linked into one program, so this implements its `Backend` instead.
//!
//! - Records the library encodes itself (sessions, pre-keys, sender keys) are kept as
//!   the bytes it gives; structured values (the device, sync keys, app-state versions,
//!   device lists, tokens) as JSON of the library's own serde types.
//! - Every write is committed before it returns (the library treats an `Ok` as durable:
//!   a message is sent only after its ratchet step is stored). Batches are one
//!   transaction each, so a crash leaves all of a batch or none of it.
//! - Calls run on tokio's blocking pool, one connection behind a mutex (SQLite writes
//!   one at a time anyway), WAL and `synchronous=FULL`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use whatsapp_rust::async_trait;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::error::{Result, StoreError};
use whatsapp_rust::wacore::store::traits::*;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, k TEXT NOT NULL, v BLOB NOT NULL,
    PRIMARY KEY (ns, k)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prekeys (
    id INTEGER PRIMARY KEY, record BLOB NOT NULL, uploaded INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mutation_macs (
    name TEXT NOT NULL, index_mac BLOB NOT NULL, version INTEGER NOT NULL,
    value_mac BLOB NOT NULL, PRIMARY KEY (name, index_mac)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sender_key_devices (
    grp TEXT NOT NULL, device TEXT NOT NULL, has_key INTEGER NOT NULL,
    PRIMARY KEY (grp, device)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sender_key_devices_device ON sender_key_devices (device);
CREATE TABLE IF NOT EXISTS lid_pn (
    lid TEXT PRIMARY KEY, pn TEXT NOT NULL, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lid_pn_pn ON lid_pn (pn, updated_at);
CREATE TABLE IF NOT EXISTS tc_tokens (
    jid TEXT PRIMARY KEY, token BLOB NOT NULL, token_ts INTEGER NOT NULL, sender_ts INTEGER
);
CREATE TABLE IF NOT EXISTS sent_messages (
    chat TEXT NOT NULL, id TEXT NOT NULL, payload BLOB NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (chat, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_inbound (
    chat TEXT NOT NULL, sender TEXT NOT NULL, id TEXT NOT NULL, message BLOB NOT NULL,
    ts INTEGER NOT NULL, PRIMARY KEY (chat, sender, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS msg_secrets (
    chat TEXT NOT NULL, sender TEXT NOT NULL, msg_id TEXT NOT NULL, secret BLOB NOT NULL,
    expires_at INTEGER NOT NULL, message_ts INTEGER NOT NULL,
    PRIMARY KEY (chat, sender, msg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
";

/// Most sent messages kept for retries, whatever the keepalive sweep does (the library's
/// in-memory store bounds them the same way).
const MAX_SENT_MESSAGES: i64 = 4096;

// Namespaces of `kv`.
const IDENTITY: &str = "identity";
const SESSION: &str = "session";
const SIGNED_PREKEY: &str = "signed_prekey";
const SENDER_KEY: &str = "sender_key";
const SYNC_KEY: &str = "sync_key";
const LATEST_SYNC_KEY: &str = "latest_sync_key";
const VERSION: &str = "app_state_version";
const BASE_KEY: &str = "base_key";
const DEVICE_LIST: &str = "device_list";
const GROUP_METADATA: &str = "group_metadata";

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(Box::new(e))
}

fn json<T: whatsapp_rust::serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Serialization(Box::new(e)))
}

fn from_json<T: whatsapp_rust::serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Serialization(Box::new(e)))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The WhatsApp key store: one SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Set by [`SqliteStore::wipe`]: every later call fails, so nothing the library
    /// still holds in memory (a device snapshot it flushes at shutdown) comes back.
    wiped: Arc<std::sync::atomic::AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating) the database at `path`, readable by this user only.
    pub fn open(path: &Path) -> std::result::Result<SqliteStore, String> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| format!("cannot open the WhatsApp key store {}: {e}", path.display()))?;
        for file in [
            path.to_path_buf(),
            path.with_extension("db-wal"),
            path.with_extension("db-shm"),
        ] {
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("cannot make {} private: {e}", file.display()))?;
            }
        }
        // `secure_delete`: deleted keys are overwritten, not left in free pages.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;
             PRAGMA secure_delete = ON;",
        )
        .and_then(|()| conn.execute_batch(SCHEMA))
        .map_err(|e| {
            format!(
                "cannot set up the WhatsApp key store {}: {e}",
                path.display()
            )
        })?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            wiped: Arc::default(),
        })
    }

    /// Deletes every key and record (the device was logged out: WhatsApp never takes
    /// these keys again), overwriting them on disk and emptying the write-ahead log.
    /// The file stays, empty (so no other open handle can write into a new store at
    /// this path); every later call on this store fails.
    pub async fn wipe(&self) -> std::result::Result<(), String> {
        self.wiped.store(true, std::sync::atomic::Ordering::SeqCst);
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 DELETE FROM kv; DELETE FROM prekeys; DELETE FROM mutation_macs;
                 DELETE FROM sender_key_devices; DELETE FROM lid_pn; DELETE FROM tc_tokens;
                 DELETE FROM sent_messages; DELETE FROM pending_inbound; DELETE FROM msg_secrets;
                 DELETE FROM device;
                 COMMIT;
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .map_err(|e| format!("cannot delete the WhatsApp keys: {e}"))
        })
        .await
        .map_err(|e| format!("cannot delete the WhatsApp keys: {e}"))?
    }

    /// Runs `f` on the connection, off the async threads.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.wiped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Database(
                "this device was logged out and its keys deleted".into(),
            ));
        }
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Database(Box::new(e)))?
    }

    async fn kv_get(&self, ns: &'static str, k: String) -> Result<Option<Vec<u8>>> {
        self.call(move |c| {
            c.query_row(
                "SELECT v FROM kv WHERE ns = ?1 AND k = ?2",
                params![ns, k],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn kv_put(&self, ns: &'static str, k: String, v: Vec<u8>) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO kv (ns, k, v) VALUES (?1, ?2, ?3)
                 ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v",
                params![ns, k, v],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    /// Puts many entries of one namespace in one transaction.
    async fn kv_put_all(&self, ns: &'static str, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO kv (ns, k, v) VALUES (?1, ?2, ?3)
                         ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v",
                    )
                    .map_err(db)?;
                for (k, v) in entries {
                    stmt.execute(params![ns, k, v]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn kv_delete(&self, ns: &'static str, k: String) -> Result<()> {
        self.call(move |c| {
            c.execute("DELETE FROM kv WHERE ns = ?1 AND k = ?2", params![ns, k])
                .map(|_| ())
                .map_err(db)
        })
        .await
    }
}

#[async_trait]
impl SignalStore for SqliteStore {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        self.kv_put(IDENTITY, address.into(), key.to_vec()).await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        let entries = identities
            .iter()
            .map(|(a, k)| (a.to_string(), k.to_vec()))
            .collect();
        self.kv_put_all(IDENTITY, entries).await
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        match self.kv_get(IDENTITY, address.into()).await? {
            None => Ok(None),
            Some(bytes) => bytes.try_into().map(Some).map_err(|b: Vec<u8>| {
                StoreError::Validation(format!("identity key of {} bytes, not 32", b.len()))
            }),
        }
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        self.kv_delete(IDENTITY, address.into()).await
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        Ok(self.kv_get(SESSION, address.into()).await?.map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        self.kv_put(SESSION, address.into(), session.to_vec()).await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        let entries = sessions
            .iter()
            .map(|(a, s)| (a.to_string(), s.to_vec()))
            .collect();
        self.kv_put_all(SESSION, entries).await
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        self.kv_delete(SESSION, address.into()).await
    }

    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        // Addresses are `user@server` or `user:device@server`; LIKE's wildcards in a
        // user part (digits, in practice) are escaped all the same.
        let escaped = user
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        self.call(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM kv WHERE ns IN (?1, ?2)
                   AND (k LIKE ?3 ESCAPE '\\' OR k LIKE ?4 ESCAPE '\\'))",
                params![
                    SESSION,
                    IDENTITY,
                    format!("{escaped}@%"),
                    format!("{escaped}:%")
                ],
                |r| r.get(0),
            )
            .map_err(db)
        })
        .await
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        self.store_prekeys_batch(&[(id, Bytes::copy_from_slice(record))], uploaded)
            .await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        let keys: Vec<(u32, Vec<u8>)> = keys.iter().map(|(i, r)| (*i, r.to_vec())).collect();
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO prekeys (id, record, uploaded) VALUES (?1, ?2, ?3)
                         ON CONFLICT (id) DO UPDATE SET record = excluded.record,
                           uploaded = excluded.uploaded",
                    )
                    .map_err(db)?;
                for (id, record) in keys {
                    stmt.execute(params![id, record, uploaded]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        self.call(move |c| {
            c.query_row("SELECT record FROM prekeys WHERE id = ?1", [id], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()
            .map(|r| r.map(Bytes::from))
            .map_err(db)
        })
        .await
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        let ids = ids.to_vec();
        self.call(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT record FROM prekeys WHERE id = ?1")
                .map_err(db)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(record) = stmt
                    .query_row([id], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(db)?
                {
                    out.push((id, Bytes::from(record)));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        let ids = ids.to_vec();
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                // UPDATE only: a key removed meanwhile must not come back.
                let mut stmt = tx
                    .prepare_cached("UPDATE prekeys SET uploaded = 1 WHERE id = ?1")
                    .map_err(db)?;
                for id in ids {
                    stmt.execute([id]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.call(move |c| {
            c.execute("DELETE FROM prekeys WHERE id = ?1", [id])
                .map(|_| ())
                .map_err(db)
        })
        .await
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        self.call(|c| {
            c.query_row("SELECT COALESCE(MAX(id), 0) FROM prekeys", [], |r| r.get(0))
                .map_err(db)
        })
        .await
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        self.kv_put(SIGNED_PREKEY, id.to_string(), record.to_vec())
            .await
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.kv_get(SIGNED_PREKEY, id.to_string()).await
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        self.call(|c| {
            let mut stmt = c
                .prepare_cached("SELECT k, v FROM kv WHERE ns = ?1")
                .map_err(db)?;
            let rows = stmt
                .query_map([SIGNED_PREKEY], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (k, v) = row.map_err(db)?;
                if let Ok(id) = k.parse() {
                    out.push((id, v));
                }
            }
            out.sort_by_key(|(id, _)| *id);
            Ok(out)
        })
        .await
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.kv_delete(SIGNED_PREKEY, id.to_string()).await
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        self.kv_put(SENDER_KEY, address.into(), record.to_vec())
            .await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        let entries = sender_keys
            .iter()
            .map(|(a, r)| (a.to_string(), r.to_vec()))
            .collect();
        self.kv_put_all(SENDER_KEY, entries).await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        self.kv_get(SENDER_KEY, address.into()).await
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.kv_delete(SENDER_KEY, address.into()).await
    }
}

#[async_trait]
impl AppSyncStore for SqliteStore {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        match self.kv_get(SYNC_KEY, hex(key_id)).await? {
            None => Ok(None),
            Some(bytes) => from_json(&bytes).map(Some),
        }
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        let (id, value) = (hex(key_id), json(&key)?);
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            for (ns, k, v) in [
                (SYNC_KEY, id.clone(), value),
                (LATEST_SYNC_KEY, String::new(), id.into_bytes()),
            ] {
                tx.execute(
                    "INSERT INTO kv (ns, k, v) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v",
                    params![ns, k, v],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn get_version(&self, name: &str) -> Result<HashState> {
        match self.kv_get(VERSION, name.into()).await? {
            None => Ok(HashState::default()),
            Some(bytes) => from_json(&bytes),
        }
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        self.kv_put(VERSION, name.into(), json(&state)?).await
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> Result<()> {
        let name = name.to_string();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = mutations
            .iter()
            .map(|m| (m.index_mac.clone(), m.value_mac.clone()))
            .collect();
        let version = i64::try_from(version).map_err(|_| {
            StoreError::Validation(format!("app-state version {version} too large"))
        })?;
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO mutation_macs (name, index_mac, version, value_mac)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (name, index_mac) DO UPDATE SET
                           version = excluded.version, value_mac = excluded.value_mac",
                    )
                    .map_err(db)?;
                for (index_mac, value_mac) in rows {
                    stmt.execute(params![name, index_mac, version, value_mac])
                        .map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        let (name, index_mac) = (name.to_string(), index_mac.to_vec());
        self.call(move |c| {
            c.query_row(
                "SELECT value_mac FROM mutation_macs WHERE name = ?1 AND index_mac = ?2",
                params![name, index_mac],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn get_mutation_macs(
        &self,
        name: &str,
        index_macs: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], Vec<u8>>> {
        let (name, index_macs) = (name.to_string(), index_macs.to_vec());
        self.call(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT value_mac FROM mutation_macs WHERE name = ?1 AND index_mac = ?2",
                )
                .map_err(db)?;
            let mut out = HashMap::with_capacity(index_macs.len());
            for index_mac in index_macs {
                if let Some(mac) = stmt
                    .query_row(params![name, index_mac.as_slice()], |r| r.get(0))
                    .optional()
                    .map_err(db)?
                {
                    out.insert(index_mac, mac);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        let (name, index_macs) = (name.to_string(), index_macs.to_vec());
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM mutation_macs WHERE name = ?1 AND index_mac = ?2")
                    .map_err(db)?;
                for index_mac in index_macs {
                    stmt.execute(params![name, index_mac]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.call(move |c| {
            c.execute("DELETE FROM mutation_macs WHERE name = ?1", [name])
                .map(|_| ())
                .map_err(db)
        })
        .await
    }

    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .kv_get(LATEST_SYNC_KEY, String::new())
            .await?
            .and_then(|id| unhex(&String::from_utf8_lossy(&id))))
    }
}

fn lid_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<LidPnMappingEntry> {
    Ok(LidPnMappingEntry {
        lid: r.get(0)?,
        phone_number: r.get(1)?,
        created_at: r.get(2)?,
        updated_at: r.get(3)?,
        learning_source: r.get(4)?,
    })
}

const LID_COLUMNS: &str = "lid, pn, created_at, updated_at, source";

fn put_lid(c: &Connection, e: &LidPnMappingEntry) -> Result<()> {
    c.execute(
        "INSERT INTO lid_pn (lid, pn, created_at, updated_at, source) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (lid) DO UPDATE SET pn = excluded.pn, updated_at = excluded.updated_at,
           source = excluded.source",
        params![
            e.lid,
            e.phone_number,
            e.created_at,
            e.updated_at,
            e.learning_source
        ],
    )
    .map(|_| ())
    .map_err(db)
}

fn tc_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<TcTokenEntry> {
    Ok(TcTokenEntry {
        token: r.get(0)?,
        token_timestamp: r.get(1)?,
        sender_timestamp: r.get(2)?,
    })
}

#[async_trait]
impl ProtocolStore for SqliteStore {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        let group = group_jid.to_string();
        self.call(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT device, has_key FROM sender_key_devices WHERE grp = ?1 ORDER BY device",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([group], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        let group = group_jid.to_string();
        let entries: Vec<(String, bool)> =
            entries.iter().map(|(d, k)| (d.to_string(), *k)).collect();
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO sender_key_devices (grp, device, has_key) VALUES (?1, ?2, ?3)
                         ON CONFLICT (grp, device) DO UPDATE SET has_key = excluded.has_key",
                    )
                    .map_err(db)?;
                for (device, has_key) in entries {
                    stmt.execute(params![group, device, has_key]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        let group = group_jid.to_string();
        self.call(move |c| {
            c.execute("DELETE FROM sender_key_devices WHERE grp = ?1", [group])
                .map(|_| ())
                .map_err(db)
        })
        .await
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        let devices: Vec<String> = device_jids.iter().map(|d| d.to_string()).collect();
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM sender_key_devices WHERE device = ?1")
                    .map_err(db)?;
                for device in devices {
                    stmt.execute([device]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        self.call(|c| {
            c.execute("DELETE FROM sender_key_devices", [])
                .map(|_| ())
                .map_err(db)
        })
        .await
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        let lid = lid.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {LID_COLUMNS} FROM lid_pn WHERE lid = ?1"),
                [lid],
                lid_entry,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        let phone = phone.to_string();
        self.call(move |c| {
            c.query_row(
                &format!(
                    "SELECT {LID_COLUMNS} FROM lid_pn WHERE pn = ?1
                     ORDER BY updated_at DESC, rowid DESC LIMIT 1"
                ),
                [phone],
                lid_entry,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        let entry = entry.clone();
        self.call(move |c| put_lid(c, &entry)).await
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        let entries = entries.to_vec();
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            for entry in &entries {
                put_lid(&tx, entry)?;
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        self.call(|c| {
            let mut stmt = c
                .prepare_cached(&format!("SELECT {LID_COLUMNS} FROM lid_pn ORDER BY lid"))
                .map_err(db)?;
            let rows = stmt.query_map([], lid_entry).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        self.kv_put(
            BASE_KEY,
            format!("{address}\n{message_id}"),
            base_key.to_vec(),
        )
        .await
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> Result<bool> {
        Ok(self
            .kv_get(BASE_KEY, format!("{address}\n{message_id}"))
            .await?
            .is_some_and(|stored| stored == current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        self.kv_delete(BASE_KEY, format!("{address}\n{message_id}"))
            .await
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.kv_put(DEVICE_LIST, record.user.clone(), json(&record)?)
            .await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        let entries = records
            .iter()
            .map(|r| Ok((r.user.clone(), json(r)?)))
            .collect::<Result<Vec<_>>>()?;
        self.kv_put_all(DEVICE_LIST, entries).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        match self.kv_get(DEVICE_LIST, user.into()).await? {
            None => Ok(None),
            Some(bytes) => from_json(&bytes).map(Some),
        }
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        self.kv_delete(DEVICE_LIST, user.into()).await
    }

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        self.kv_get(GROUP_METADATA, group_jid.into()).await
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        self.kv_put(GROUP_METADATA, group_jid.into(), blob.to_vec())
            .await
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        self.kv_delete(GROUP_METADATA, group_jid.into()).await
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        let jid = jid.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT token, token_ts, sender_ts FROM tc_tokens WHERE jid = ?1",
                [jid],
                tc_entry,
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        let (jid, entry) = (jid.to_string(), entry.clone());
        self.call(move |c| {
            c.execute(
                "INSERT INTO tc_tokens (jid, token, token_ts, sender_ts) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (jid) DO UPDATE SET token = excluded.token,
                   token_ts = excluded.token_ts, sender_ts = excluded.sender_ts",
                params![
                    jid,
                    entry.token,
                    entry.token_timestamp,
                    entry.sender_timestamp
                ],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        let jid = jid.to_string();
        self.call(move |c| {
            c.execute("DELETE FROM tc_tokens WHERE jid = ?1", [jid])
                .map(|_| ())
                .map_err(db)
        })
        .await
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut stmt = c
                .prepare_cached("SELECT jid FROM tc_tokens ORDER BY jid")
                .map_err(db)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(db)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
        })
        .await
    }

    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM tc_tokens
                 WHERE (length(token) = 0 OR token_ts < ?1)
                   AND (sender_ts IS NULL OR sender_ts < ?2)",
                params![token_cutoff, sender_cutoff],
            )
            .map(|n| n as u32)
            .map_err(db)
        })
        .await
    }

    async fn touch_tc_token_sender_timestamp(
        &self,
        jid: &str,
        sender_timestamp: i64,
    ) -> Result<()> {
        let jid = jid.to_string();
        // One statement: a placeholder when absent, else the later of the two times;
        // the token bytes are kept.
        self.call(move |c| {
            c.execute(
                "INSERT INTO tc_tokens (jid, token, token_ts, sender_ts) VALUES (?1, x'', ?2, ?2)
                 ON CONFLICT (jid) DO UPDATE SET
                   sender_ts = MAX(COALESCE(tc_tokens.sender_ts, excluded.sender_ts), excluded.sender_ts)",
                params![jid, sender_timestamp],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn store_received_tc_token(
        &self,
        jid: &str,
        token: &[u8],
        token_timestamp: i64,
    ) -> Result<()> {
        let (jid, token) = (jid.to_string(), token.to_vec());
        // Newer wins; a placeholder never blocks the first real token; the sender time
        // is kept.
        self.call(move |c| {
            c.execute(
                "INSERT INTO tc_tokens (jid, token, token_ts, sender_ts) VALUES (?1, ?2, ?3, NULL)
                 ON CONFLICT (jid) DO UPDATE SET token = excluded.token, token_ts = excluded.token_ts
                 WHERE length(tc_tokens.token) = 0 OR excluded.token_ts >= tc_tokens.token_ts",
                params![jid, token, token_timestamp],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn store_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
        payload: &[u8],
    ) -> Result<()> {
        let (chat, id, payload) = (
            chat_jid.to_string(),
            message_id.to_string(),
            payload.to_vec(),
        );
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO sent_messages (chat, id, payload, ts) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (chat, id) DO UPDATE SET payload = excluded.payload, ts = excluded.ts",
                params![chat, id, payload, now_secs()],
            )
            .map_err(db)?;
            // Bounded whatever the sweep does: drop the oldest beyond the cap.
            tx.execute(
                "DELETE FROM sent_messages WHERE (chat, id) IN (
                   SELECT chat, id FROM sent_messages ORDER BY ts DESC LIMIT -1 OFFSET ?1)",
                [MAX_SENT_MESSAGES],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        let (chat, id) = (chat_jid.to_string(), message_id.to_string());
        self.call(move |c| {
            c.query_row(
                "DELETE FROM sent_messages WHERE chat = ?1 AND id = ?2 RETURNING payload",
                params![chat, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM sent_messages WHERE ts < ?1",
                [cutoff_timestamp],
            )
            .map(|n| n as u32)
            .map_err(db)
        })
        .await
    }

    async fn store_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> Result<()> {
        self.store_pending_inbound_batch(&[PendingInboundRow {
            chat,
            sender,
            id,
            message,
        }])
        .await
    }

    async fn get_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>> {
        let (chat, sender, id) = (chat.to_string(), sender.to_string(), id.to_string());
        self.call(move |c| {
            c.query_row(
                "SELECT message FROM pending_inbound WHERE chat = ?1 AND sender = ?2 AND id = ?3",
                params![chat, sender, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.delete_pending_inbound_batch(&[PendingInboundKey { chat, sender, id }])
            .await
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM pending_inbound WHERE ts < ?1",
                [cutoff_timestamp],
            )
            .map(|n| n as u32)
            .map_err(db)
        })
        .await
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        let rows: Vec<(String, String, String, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                (
                    r.chat.into(),
                    r.sender.into(),
                    r.id.into(),
                    r.message.to_vec(),
                )
            })
            .collect();
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO pending_inbound (chat, sender, id, message, ts)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (chat, sender, id) DO UPDATE SET message = excluded.message",
                    )
                    .map_err(db)?;
                let now = now_secs();
                for (chat, sender, id, message) in rows {
                    stmt.execute(params![chat, sender, id, message, now])
                        .map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> Result<()> {
        let keys: Vec<(String, String, String)> = keys
            .iter()
            .map(|k| (k.chat.into(), k.sender.into(), k.id.into()))
            .collect();
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "DELETE FROM pending_inbound WHERE chat = ?1 AND sender = ?2 AND id = ?3",
                    )
                    .map_err(db)?;
                for (chat, sender, id) in keys {
                    stmt.execute(params![chat, sender, id]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }
}

#[async_trait]
impl MsgSecretStore for SqliteStore {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        self.call(move |c| {
            let tx = c.transaction().map_err(db)?;
            let n = entries.len();
            {
                // Merged as merge_msg_secret_expiry and merge_msg_secret_message_ts say:
                // 0 ("never") wins, else the later deadline; the later parent time.
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO msg_secrets (chat, sender, msg_id, secret, expires_at, message_ts)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (chat, sender, msg_id) DO UPDATE SET
                           secret = excluded.secret,
                           expires_at = CASE WHEN msg_secrets.expires_at = 0 OR excluded.expires_at = 0
                                        THEN 0 ELSE MAX(msg_secrets.expires_at, excluded.expires_at) END,
                           message_ts = MAX(msg_secrets.message_ts, excluded.message_ts)",
                    )
                    .map_err(db)?;
                for e in &entries {
                    stmt.execute(params![
                        e.chat.as_ref(),
                        e.sender.as_ref(),
                        e.msg_id.as_ref(),
                        e.secret.as_slice(),
                        e.expires_at,
                        e.message_ts
                    ])
                    .map_err(db)?;
                }
            }
            tx.commit().map_err(db)?;
            Ok(n)
        })
        .await
    }

    async fn get_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_msg_secret_with_ts(chat, sender, msg_id)
            .await?
            .map(|(secret, _)| secret))
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<(Vec<u8>, i64)>> {
        let (chat, sender, msg_id) = (chat.to_string(), sender.to_string(), msg_id.to_string());
        self.call(move |c| {
            c.query_row(
                "SELECT secret, message_ts FROM msg_secrets
                 WHERE chat = ?1 AND sender = ?2 AND msg_id = ?3",
                params![chat, sender, msg_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM msg_secrets WHERE expires_at != 0 AND expires_at <= ?1",
                [cutoff_timestamp],
            )
            .map(|n| n as u32)
            .map_err(db)
        })
        .await
    }
}

/// The one device of this store (the library supports several; NanoClaw links one).
const DEVICE_ID: i32 = 1;

/// The account linked in the key store at `path`, read without opening it for the
/// library (nor creating it): `None` when there is no store or it was never linked.
pub fn linked_account(path: &Path) -> std::result::Result<Option<crate::adapter::Account>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot read the WhatsApp key store {}: {e}", path.display()))?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(10));
    let data: Option<Vec<u8>> = match conn
        .query_row("SELECT data FROM device WHERE id = ?1", [DEVICE_ID], |r| {
            r.get(0)
        })
        .optional()
    {
        Ok(data) => data,
        // A store made before the device row was (or not a store at all).
        Err(e) if e.to_string().contains("no such table") => None,
        Err(e) => {
            return Err(format!(
                "cannot read the WhatsApp key store {}: {e}",
                path.display()
            ));
        }
    };
    let Some(data) = data else {
        return Ok(None);
    };
    let device: Device = from_json(&data).map_err(|e| {
        format!(
            "the WhatsApp key store {} holds a device NanoClaw cannot read ({e}); \
             run `nanoclaw whatsapp unlink` and link again",
            path.display()
        )
    })?;
    Ok(device.pn.map(|pn| crate::adapter::Account {
        pn: pn.to_non_ad_string(),
        lid: device.lid.map(|l| l.to_non_ad_string()),
        push_name: device.push_name.clone(),
    }))
}

/// Deletes the key store at `path` (and its WAL files).
pub fn delete(path: &Path) -> std::result::Result<(), String> {
    for file in [
        path.to_path_buf(),
        path.with_extension("db-wal"),
        path.with_extension("db-shm"),
    ] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot delete {}: {e}", file.display())),
        }
    }
    Ok(())
}

#[async_trait]
impl DeviceStore for SqliteStore {
    async fn save(&self, device: &Device) -> Result<()> {
        let data = json(device)?;
        self.call(move |c| {
            c.execute(
                "INSERT INTO device (id, data) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                params![DEVICE_ID, data],
            )
            .map(|_| ())
            .map_err(db)
        })
        .await
    }

    async fn load(&self) -> Result<Option<Device>> {
        let data: Option<Vec<u8>> = self
            .call(|c| {
                c.query_row("SELECT data FROM device WHERE id = ?1", [DEVICE_ID], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db)
            })
            .await?;
        let Some(data) = data else {
            return Ok(None);
        };
        let mut device: Device = from_json(&data)?;
        // Not serialized: the properties the device registers with.
        device.device_props = Arc::new(whatsapp_rust::wacore::store::device::DEVICE_PROPS.clone());
        Ok(Some(device))
    }

    async fn exists(&self) -> Result<bool> {
        self.call(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM device WHERE id = ?1)",
                [DEVICE_ID],
                |r| r.get(0),
            )
            .map_err(db)
        })
        .await
    }

    async fn create(&self) -> Result<i32> {
        // A fresh identity, stored at once so that `exists` holds.
        if !self.exists().await? {
            self.save(&Device::new()).await?;
        }
        Ok(DEVICE_ID)
    }
}
