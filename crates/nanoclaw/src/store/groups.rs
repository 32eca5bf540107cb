//! Registered groups and their agent sessions.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, StoreError, WithContext};
use crate::layout::{GroupFolder, GroupFolderError};

/// A row of `registered_groups`.
///
/// `folder` is kept as stored: an old database may hold a folder that fails today's
/// rules, and such a group must stay visible (so the user can fix it) but never run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegisteredGroup {
    pub jid: String,
    pub name: String,
    pub folder: String,
    pub trigger_pattern: String,
    pub added_at: String,
    /// Raw JSON (`additionalMounts`, `network`, …); interpreted by the sandbox.
    pub container_config: Option<String>,
    pub requires_trigger: bool,
    pub is_main: bool,
}

impl RegisteredGroup {
    pub fn folder(&self) -> Result<GroupFolder, GroupFolderError> {
        GroupFolder::parse(&self.folder)
    }

    /// The JSON shape shown by `GET /api/groups` and `groups list --json`.
    pub fn view(&self) -> serde_json::Value {
        let container_config = self.container_config.as_deref().map(|raw| {
            serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_string()))
        });
        serde_json::json!({
            "jid": self.jid,
            "name": self.name,
            "folder": self.folder,
            "folder_valid": self.folder().is_ok(),
            "trigger": self.trigger_pattern,
            "requires_trigger": self.requires_trigger,
            "is_main": self.is_main,
            "added_at": self.added_at,
            "container_config": container_config,
        })
    }

    /// Main never needs a trigger; other groups unless registered with `requires_trigger=0`.
    pub fn needs_trigger(&self) -> bool {
        !self.is_main && self.requires_trigger
    }
}

/// A registration as an entry point received it (`nanoclaw groups add`, IPC
/// `register_group`): every entry point checks it here, so the same input gets the same
/// verdict wherever it comes from. Nothing is trimmed into validity: `" padded "` is
/// refused as a folder, not registered as `padded`.
#[derive(Debug, Clone, Default)]
pub struct GroupRequest<'a> {
    pub jid: &'a str,
    pub name: &'a str,
    pub folder: &'a str,
    /// `None` or empty: the default trigger.
    pub trigger: Option<&'a str>,
    pub requires_trigger: bool,
    /// Raw JSON, checked by [`crate::mounts::ContainerConfig::parse`].
    pub container_config: Option<String>,
    pub is_main: bool,
}

impl GroupRequest<'_> {
    /// The group to store, or what is wrong with the request (naming the field).
    pub fn check(&self, default_trigger: &str) -> Result<RegisteredGroup, String> {
        let jid = self.jid;
        if jid.is_empty()
            || jid.chars().any(|c| c.is_whitespace() || c.is_control())
            || !jid.contains(':') && !jid.contains('@')
        {
            return Err(format!(
                "jid {jid:?} is not a chat id: it needs its channel's form without spaces, like tg:-1001234567890, web:kitchen or mail:alice@example.org"
            ));
        }
        let name = self.name.trim();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err("name must not be empty or hold control characters".into());
        }
        let folder = GroupFolder::parse(self.folder).map_err(|e| e.to_string())?;
        let trigger = match self.trigger.map(str::trim) {
            None | Some("") => default_trigger.to_string(),
            Some(t) if t.chars().any(char::is_control) => {
                return Err("trigger must not hold control characters".into());
            }
            Some(t) => t.to_string(),
        };
        if let Some(raw) = &self.container_config {
            crate::mounts::ContainerConfig::parse(Some(raw))
                .map_err(|e| format!("containerConfig: {e}"))?;
        }
        Ok(RegisteredGroup {
            jid: jid.to_string(),
            name: name.to_string(),
            folder: folder.as_str().to_string(),
            trigger_pattern: trigger,
            added_at: crate::clock::now(),
            container_config: self.container_config.clone(),
            requires_trigger: self.requires_trigger && !self.is_main,
            is_main: self.is_main,
        })
    }
}

const GROUP_COLUMNS: &str =
    "jid, name, folder, trigger_pattern, added_at, container_config, requires_trigger, is_main";

fn group(row: &Row<'_>) -> rusqlite::Result<RegisteredGroup> {
    Ok(RegisteredGroup {
        jid: row.get(0)?,
        name: row.get(1)?,
        folder: row.get(2)?,
        trigger_pattern: row.get(3)?,
        added_at: row.get(4)?,
        container_config: row.get(5)?,
        // v1: NULL means "default", which is true.
        requires_trigger: row.get::<_, Option<bool>>(6)?.unwrap_or(true),
        is_main: row.get::<_, Option<bool>>(7)?.unwrap_or(false),
    })
}

impl Store {
    pub fn registered_group(&self, jid: &str) -> Result<Option<RegisteredGroup>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {GROUP_COLUMNS} FROM registered_groups WHERE jid = ?1"),
                params![jid],
                group,
            )
            .optional()
            .ctx("reading a registered group")
    }

    pub fn registered_group_by_folder(
        &self,
        folder: &str,
    ) -> Result<Option<RegisteredGroup>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {GROUP_COLUMNS} FROM registered_groups WHERE folder = ?1"),
                params![folder],
                group,
            )
            .optional()
            .ctx("reading a registered group")
    }

    pub fn registered_groups(&self) -> Result<Vec<RegisteredGroup>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {GROUP_COLUMNS} FROM registered_groups ORDER BY is_main DESC, added_at, jid"
            ))
            .ctx("preparing the groups query")?;
        let rows = stmt.query_map([], group).ctx("reading registered groups")?;
        rows.collect::<Result<_, _>>()
            .ctx("reading registered groups")
    }

    pub fn main_group(&self) -> Result<Option<RegisteredGroup>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {GROUP_COLUMNS} FROM registered_groups WHERE is_main = 1 ORDER BY added_at LIMIT 1"),
                [],
                group,
            )
            .optional()
            .ctx("reading the main group")
    }

    /// Registers a group. Refuses (with a message saying what to do) a JID that is
    /// already registered, a folder another group uses, a second main group, or an
    /// unsafe folder name.
    pub fn register_group(&self, g: &RegisteredGroup) -> Result<(), StoreError> {
        GroupFolder::parse(&g.folder).map_err(|e| StoreError::Conflict(e.to_string()))?;
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to register a group")?;
        let by_jid: Option<String> = tx
            .query_row(
                "SELECT folder FROM registered_groups WHERE jid = ?1",
                params![g.jid],
                |r| r.get(0),
            )
            .optional()
            .ctx("checking the group's JID")?;
        if let Some(folder) = by_jid {
            return Err(StoreError::Conflict(format!(
                "{} is already registered (folder `{folder}`); remove it first with `nanoclaw groups remove --jid {}`",
                g.jid, g.jid
            )));
        }
        let by_folder: Option<String> = tx
            .query_row(
                "SELECT jid FROM registered_groups WHERE folder = ?1 COLLATE NOCASE",
                params![g.folder],
                |r| r.get(0),
            )
            .optional()
            .ctx("checking the group's folder")?;
        if let Some(jid) = by_folder {
            return Err(StoreError::Conflict(format!(
                "folder `{}` is already used by {jid}; choose another --folder",
                g.folder
            )));
        }
        if g.is_main {
            let main: Option<String> = tx
                .query_row(
                    "SELECT jid FROM registered_groups WHERE is_main = 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .ctx("checking for a main group")?;
            if let Some(jid) = main {
                return Err(StoreError::Conflict(format!(
                    "{jid} is already the main group; there can be only one (remove it first)"
                )));
            }
        }
        tx.execute(
            &format!("INSERT INTO registered_groups ({GROUP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
            params![
                g.jid,
                g.name,
                g.folder,
                g.trigger_pattern,
                g.added_at,
                g.container_config,
                g.requires_trigger,
                g.is_main
            ],
        )
        .ctx("registering a group")?;
        tx.commit().ctx("committing a group registration")?;
        Ok(())
    }

    /// Unregisters a group; its messages, folder and sessions are kept.
    pub fn remove_group(&self, jid: &str) -> Result<Option<RegisteredGroup>, StoreError> {
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to remove a group")?;
        let existing = tx
            .query_row(
                &format!("DELETE FROM registered_groups WHERE jid = ?1 RETURNING {GROUP_COLUMNS}"),
                params![jid],
                group,
            )
            .optional()
            .ctx("removing a group")?;
        tx.commit().ctx("committing a group removal")?;
        Ok(existing)
    }

    /// Moves the main group from chat `from` to chat `to` (named `name`), keeping its
    /// folder (memory, files, sessions) and settings. `to` must not be registered.
    pub fn move_main(&self, from: &str, to: &str, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to move the main group")?;
        let taken: Option<String> = tx
            .query_row(
                "SELECT jid FROM registered_groups WHERE jid = ?1",
                params![to],
                |r| r.get(0),
            )
            .optional()
            .ctx("checking the new main chat")?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "{to} is registered already; remove it first to make it the main group"
            )));
        }
        let moved = tx
            .execute(
                "UPDATE registered_groups SET jid = ?2, name = ?3 WHERE jid = ?1 AND is_main = 1",
                params![from, to, name],
            )
            .ctx("moving the main group")?;
        if moved != 1 {
            return Err(StoreError::Conflict(format!(
                "{from} is not the main group"
            )));
        }
        tx.commit().ctx("committing the main group's move")?;
        Ok(())
    }

    /// The host id (uid and gid) of `folder`'s sandboxes: the one allocated before, else
    /// the next free one from `base` (the highest allocated + 1), stored for good.
    pub fn sandbox_host_id(&self, folder: &str, base: u32) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let tx = Store::write_tx(&mut conn, "starting to allocate a sandbox id")?;
        let existing: Option<i64> = tx
            .query_row(
                "SELECT host_id FROM sandbox_ids WHERE folder = ?1",
                params![folder],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading a sandbox id")?;
        let id = match existing {
            Some(id) => id,
            None => {
                let next: i64 = tx
                    .query_row(
                        "SELECT MAX(COALESCE(MAX(host_id) + 1, ?1), ?1) FROM sandbox_ids",
                        params![i64::from(base)],
                        |r| r.get(0),
                    )
                    .ctx("choosing a sandbox id")?;
                tx.execute(
                    "INSERT INTO sandbox_ids (folder, host_id, created_at) VALUES (?1, ?2, ?3)",
                    params![folder, next, crate::clock::now()],
                )
                .ctx("storing a sandbox id")?;
                next
            }
        };
        tx.commit().ctx("committing a sandbox id")?;
        u32::try_from(id).map_err(|_| {
            StoreError::Conflict(format!(
                "the sandbox id {id} of folder `{folder}` is out of range; set NANOCLAW_SANDBOX_ID_BASE lower"
            ))
        })
    }

    /// Every allocated sandbox host id, by folder.
    pub fn sandbox_host_ids(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT folder, host_id FROM sandbox_ids ORDER BY host_id")
            .ctx("reading sandbox ids")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                ))
            })
            .ctx("reading sandbox ids")?;
        rows.collect::<Result<_, _>>().ctx("reading sandbox ids")
    }

    pub fn session(&self, folder: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT session_id FROM sessions WHERE group_folder = ?1",
                params![folder],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading a session")
    }

    pub fn set_session(&self, folder: &str, session_id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO sessions (group_folder, session_id) VALUES (?1, ?2)
                 ON CONFLICT(group_folder) DO UPDATE SET session_id = excluded.session_id",
                params![folder, session_id],
            )
            .ctx("storing a session")?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::test_support::open_temp;
    use super::*;

    pub(crate) fn group(jid: &str, folder: &str, main: bool) -> RegisteredGroup {
        RegisteredGroup {
            jid: jid.into(),
            name: folder.into(),
            folder: folder.into(),
            trigger_pattern: "@Andy".into(),
            added_at: "2026-01-01T00:00:00.000Z".into(),
            container_config: None,
            requires_trigger: true,
            is_main: main,
        }
    }

    #[test]
    fn register_list_and_remove() {
        let (_d, store) = open_temp();
        store
            .register_group(&group("web:main", "main", true))
            .expect("register main");
        store
            .register_group(&group("tg:1", "telegram_family", false))
            .expect("register");
        let all = store.registered_groups().expect("list");
        assert_eq!(all.len(), 2);
        assert!(all[0].is_main, "main is listed first");
        assert_eq!(
            store.main_group().expect("main").map(|g| g.jid),
            Some("web:main".into())
        );
        assert!(store.remove_group("tg:1").expect("remove").is_some());
        assert!(store.remove_group("tg:1").expect("remove").is_none());
    }

    #[test]
    fn the_main_group_moves_to_another_chat_with_its_folder() {
        let (_d, store) = open_temp();
        store
            .register_group(&group("web:main", "main", true))
            .expect("register main");
        store
            .register_group(&group("tg:1", "family", false))
            .expect("register");
        let refused = store
            .move_main("web:main", "tg:1", "x")
            .expect_err("taken")
            .to_string();
        assert!(refused.contains("registered already"), "{refused}");
        let refused = store
            .move_main("tg:1", "15550001111@s.whatsapp.net", "x")
            .expect_err("not main")
            .to_string();
        assert!(refused.contains("not the main group"), "{refused}");
        store
            .move_main("web:main", "15550001111@s.whatsapp.net", "WhatsApp (me)")
            .expect("moved");
        let main = store.main_group().expect("read").expect("a main group");
        assert_eq!(
            (main.jid.as_str(), main.folder.as_str(), main.name.as_str()),
            ("15550001111@s.whatsapp.net", "main", "WhatsApp (me)")
        );
        assert_eq!(store.registered_groups().expect("list").len(), 2);
    }

    #[test]
    fn conflicts_are_refused_with_a_way_out() {
        let (_d, store) = open_temp();
        store
            .register_group(&group("web:main", "main", true))
            .expect("register");
        let cases = [
            (group("web:main", "other", false), "already registered"),
            (group("tg:2", "MAIN", false), "already used by web:main"),
            (group("tg:3", "second", true), "already the main group"),
            (group("tg:4", "../x", false), "invalid group folder"),
        ];
        for (g, needle) in cases {
            let e = store.register_group(&g).expect_err(&g.jid).to_string();
            assert!(e.contains(needle), "{}: {e}", g.jid);
        }
        assert_eq!(store.registered_groups().expect("list").len(), 1);
    }

    #[test]
    fn sandbox_ids_are_stable_and_never_shared() {
        let (_d, store) = open_temp();
        let a = store.sandbox_host_id("main", 1_900_000_000).expect("a");
        let b = store.sandbox_host_id("team", 1_900_000_000).expect("b");
        assert_eq!(a, 1_900_000_000);
        assert_eq!(b, 1_900_000_001);
        assert_eq!(
            store.sandbox_host_id("TEAM", 1_900_000_000).expect("again"),
            b
        );
        // A higher base later starts above it; earlier ids stay.
        assert_eq!(
            store.sandbox_host_id("x", 2_000_000_000).expect("x"),
            2_000_000_000
        );
        assert_eq!(store.sandbox_host_id("main", 2_000_000_000).expect("a"), a);
        assert_eq!(store.sandbox_host_id("y", 1_000).expect("y"), 2_000_000_001);
    }

    #[test]
    fn sessions_are_per_folder() {
        let (_d, store) = open_temp();
        assert_eq!(store.session("main").expect("read"), None);
        store.set_session("main", "s1").expect("set");
        store.set_session("main", "s2").expect("set");
        assert_eq!(store.session("main").expect("read").as_deref(), Some("s2"));
        assert_eq!(store.session("other").expect("read"), None);
    }
}
