//! IPC processing through real files in a real layout and store.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::*;
use crate::channels::{Channel, ChannelError, OutboundMessage};
use crate::store::RegisteredGroup;

/// Owns `tg:` JIDs, so messages to them can be queued.
struct FakeTelegram;

#[async_trait]
impl Channel for FakeTelegram {
    fn name(&self) -> &'static str {
        "telegram"
    }
    fn owns_jid(&self, jid: &str) -> bool {
        jid.starts_with("tg:")
    }
    async fn send(&self, _m: &OutboundMessage) -> Result<(), ChannelError> {
        Ok(())
    }
    fn max_file_bytes(&self) -> Option<u64> {
        Some(100)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    ctx: IpcContext,
}

fn group(jid: &str, folder: &str, is_main: bool) -> RegisteredGroup {
    RegisteredGroup {
        jid: jid.into(),
        name: folder.into(),
        folder: folder.into(),
        trigger_pattern: "@Andy".into(),
        added_at: crate::clock::now(),
        container_config: None,
        requires_trigger: !is_main,
        is_main,
    }
}

/// Registered: `web:main` (main), `tg:team` (team), `tg:other` (other).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = Layout::new(dir.path());
    layout.create().expect("layout");
    let store = Arc::new(Store::open(&layout.db_path(), "Andy").expect("store"));
    for g in [
        group("web:main", "main", true),
        group("tg:team", "team", false),
        group("tg:other", "other", false),
    ] {
        store.register_group(&g).expect("register");
        layout
            .create_group_dirs(&GroupFolder::parse(&g.folder).expect("folder"))
            .expect("dirs");
    }
    let ctx = IpcContext {
        store,
        layout,
        tz: TimeZone::get("Europe/Berlin").expect("zone"),
        assistant_name: "Andy".into(),
        channels: ChannelSet::new(vec![
            Arc::new(crate::channels::web::WebChannel),
            Arc::new(FakeTelegram),
        ]),
        delivery: None,
        tasks_changed: Arc::new(Notify::new()),
        guard: IpcGuard::default(),
    };
    Fixture { _dir: dir, ctx }
}

impl Fixture {
    /// A second context on the same store and folders, for a watcher task.
    fn watcher_context(&self) -> Arc<IpcContext> {
        Arc::new(IpcContext {
            store: Arc::clone(&self.ctx.store),
            layout: self.ctx.layout.clone(),
            tz: self.ctx.tz.clone(),
            assistant_name: "Andy".into(),
            channels: self.ctx.channels.clone(),
            delivery: None,
            tasks_changed: Arc::clone(&self.ctx.tasks_changed),
            guard: IpcGuard::default(),
        })
    }

    fn ipc(&self, folder: &str) -> PathBuf {
        self.ctx.layout.data_dir().join("ipc").join(folder)
    }

    /// Drops a request as agents do (temp name, then rename) and processes the folder.
    fn send(&self, folder: &str, request: &Value) -> FileOutcome {
        let kind = if request["type"] == "message" || request["type"] == "file" {
            "messages"
        } else {
            "tasks"
        };
        self.send_raw(folder, kind, "100-a.json", request.to_string().as_bytes())
    }

    fn send_raw(&self, folder: &str, kind: &str, name: &str, bytes: &[u8]) -> FileOutcome {
        let dir = self.ipc(folder).join(kind);
        std::fs::create_dir_all(&dir).expect("dir");
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
        let mut outcomes = self.ctx.process_folder(folder);
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        assert!(
            !dir.join(name).exists() || matches!(outcomes[0].2, FileOutcome::Kept(_)),
            "processed files leave the folder"
        );
        outcomes.remove(0).2
    }

    fn bot_messages(&self, jid: &str) -> Vec<String> {
        self.ctx
            .store
            .chat_messages(jid, None)
            .expect("messages")
            .into_iter()
            .filter(|m| m.message.is_bot_message)
            .map(|m| m.message.content)
            .collect()
    }

    fn add_task(&self, id: &str, folder: &str, jid: &str) {
        self.ctx
            .store
            .insert_task(&crate::store::ScheduledTask {
                id: id.into(),
                group_folder: folder.into(),
                chat_jid: jid.into(),
                prompt: "p".into(),
                schedule_type: "interval".into(),
                schedule_value: "60000".into(),
                context_mode: "isolated".into(),
                next_run: None,
                last_run: None,
                last_result: None,
                status: "active".into(),
                created_at: crate::clock::now(),
            })
            .expect("task");
    }

    fn task_status(&self, id: &str) -> String {
        self.ctx
            .store
            .task(id)
            .expect("read")
            .expect("exists")
            .status
    }

    fn errors(&self) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(self.ctx.layout.data_dir().join("ipc/errors"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
        names.sort();
        names
    }
}

fn allowed(o: &FileOutcome) -> bool {
    matches!(o, FileOutcome::Done(_))
}

fn denied(o: &FileOutcome) -> bool {
    matches!(o, FileOutcome::Denied(_))
}

#[test]
fn messages_follow_the_matrix() {
    let f = fixture();
    // (source, target chat, allowed)
    let rows = [
        ("main", "web:main", true),
        ("main", "tg:team", true),
        ("main", "tg:stranger", true), // any chat, registered or not
        ("team", "tg:team", true),
        ("team", "tg:other", false),
        ("team", "web:main", false),
        ("team", "tg:stranger", false),
    ];
    for (i, (source, jid, ok)) in rows.into_iter().enumerate() {
        let text = format!("note {i}");
        let outcome = f.send(
            source,
            &json!({"type": "message", "chatJid": jid, "text": text}),
        );
        let delivered = f.bot_messages(jid).contains(&text);
        if ok {
            assert!(
                allowed(&outcome) && delivered,
                "{source} -> {jid}: {outcome:?}"
            );
        } else {
            assert!(
                denied(&outcome) && !delivered,
                "{source} -> {jid}: {outcome:?}"
            );
        }
    }
}

/// Main's messages are explicit (a channel that writes only to chats that wrote first,
/// WhatsApp, may deliver them); a group's messages to its own chat are not.
#[test]
fn mains_messages_are_marked_explicit() {
    let f = fixture();
    for (source, jid) in [("main", "tg:stranger"), ("team", "tg:team")] {
        let outcome = f.send(
            source,
            &json!({"type": "message", "chatJid": jid, "text": format!("from {source}")}),
        );
        assert!(allowed(&outcome), "{outcome:?}");
    }
    let queued = f.ctx.store.pending_outbox_heads(10).expect("outbox");
    let explicit = |jid: &str| {
        queued
            .iter()
            .find(|q| q.chat_jid == jid)
            .map(|q| q.explicit)
            .expect("queued")
    };
    assert!(explicit("tg:stranger"));
    assert!(!explicit("tg:team"));
}

#[test]
fn scheduling_follows_the_matrix() {
    let f = fixture();
    let rows = [
        ("main", "web:main", Some("main")),
        ("main", "tg:team", Some("team")),
        ("main", "tg:stranger", None), // unregistered: nobody
        ("team", "tg:team", Some("team")),
        ("team", "tg:other", None),
        ("team", "web:main", None),
        ("team", "tg:stranger", None),
    ];
    for (i, (source, jid, stored_for)) in rows.into_iter().enumerate() {
        let id = format!("t{i}");
        let outcome = f.send(
            source,
            &json!({"type": "schedule_task", "taskId": id, "prompt": "check mail",
                    "schedule_type": "interval", "schedule_value": "3600000", "targetJid": jid}),
        );
        let task = f.ctx.store.task(&id).expect("read");
        match stored_for {
            Some(folder) => {
                assert!(allowed(&outcome), "{source} -> {jid}: {outcome:?}");
                let task = task.expect("stored");
                assert_eq!(task.group_folder, folder);
                assert_eq!(task.chat_jid, jid);
                assert_eq!(task.status, "active");
                assert!(task.next_run.is_some(), "next run computed");
            }
            None => {
                assert!(denied(&outcome), "{source} -> {jid}: {outcome:?}");
                assert!(task.is_none(), "{source} -> {jid}: nothing stored");
            }
        }
    }
}

#[test]
fn managing_tasks_follows_the_matrix() {
    let f = fixture();
    f.add_task("mine", "team", "tg:team");
    f.add_task("theirs", "other", "tg:other");
    f.add_task("mains", "main", "web:main");
    // Own task: every operation works for the owner.
    for (op, status) in [
        ("pause_task", "paused"),
        ("resume_task", "active"),
        ("cancel_task", "cancelled"),
    ] {
        let o = f.send("team", &json!({"type": op, "taskId": "mine"}));
        assert!(allowed(&o), "{op}: {o:?}");
        assert_eq!(f.task_status("mine"), status, "{op}");
    }
    let o = f.send(
        "team",
        &json!({"type": "update_task", "taskId": "theirs", "prompt": "hijacked"}),
    );
    assert!(denied(&o), "{o:?}");
    for op in ["pause_task", "resume_task", "cancel_task"] {
        for task in ["theirs", "mains"] {
            let o = f.send("team", &json!({"type": op, "taskId": task}));
            assert!(denied(&o), "team {op} {task}: {o:?}");
            assert_eq!(f.task_status(task), "active");
        }
    }
    assert_eq!(
        f.ctx.store.task("theirs").expect("r").expect("e").prompt,
        "p"
    );
    // Main manages anyone's.
    let o = f.send("main", &json!({"type": "pause_task", "taskId": "theirs"}));
    assert!(allowed(&o), "{o:?}");
    assert_eq!(f.task_status("theirs"), "paused");
    let o = f.send(
        "main",
        &json!({"type": "update_task", "taskId": "theirs", "prompt": "better", "schedule_type": "cron", "schedule_value": "0 9 * * *"}),
    );
    assert!(allowed(&o), "{o:?}");
    let t = f.ctx.store.task("theirs").expect("r").expect("e");
    assert_eq!(
        (
            t.prompt.as_str(),
            t.schedule_type.as_str(),
            t.schedule_value.as_str()
        ),
        ("better", "cron", "0 9 * * *")
    );
    assert!(t.next_run.is_some_and(|n| n.ends_with(":00:00.000Z")));
    // Unknown task: cannot be processed.
    let o = f.send("main", &json!({"type": "pause_task", "taskId": "nope"}));
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("no task")),
        "{o:?}"
    );
}

#[test]
fn only_main_registers_and_refreshes_groups() {
    let f = fixture();
    let register = |jid: &str, folder: &str| json!({"type": "register_group", "jid": jid, "name": "Family", "folder": folder, "trigger": "@Andy"});
    let o = f.send("team", &register("tg:fam", "telegram_fam"));
    assert!(denied(&o), "{o:?}");
    assert!(f.ctx.store.registered_group("tg:fam").expect("r").is_none());
    let o = f.send("team", &json!({"type": "refresh_groups"}));
    assert!(denied(&o), "{o:?}");

    let o = f.send("main", &register("tg:fam", "telegram_fam"));
    assert!(allowed(&o), "{o:?}");
    let g = f
        .ctx
        .store
        .registered_group("tg:fam")
        .expect("r")
        .expect("registered");
    assert!(!g.is_main && g.requires_trigger);
    assert!(
        f.ipc("telegram_fam").join("tasks").is_dir(),
        "its folders exist"
    );

    let o = f.send("main", &json!({"type": "refresh_groups"}));
    assert!(allowed(&o), "{o:?}");
    assert!(f.ipc("main").join("available_groups.json").is_file());
}

#[test]
fn unsafe_folders_and_bad_registrations_are_rejected() {
    let f = fixture();
    for (i, (folder, why)) in [
        ("../escape", "starts with `.`"),
        ("global", "reserved"),
        ("errors", "reserved"),
        ("a/b", "contains `/`"),
        ("", "empty"),
        ("other", "already used"),
    ]
    .into_iter()
    .enumerate()
    {
        let jid = format!("tg:new{i}");
        let o = f.send(
            "main",
            &json!({"type": "register_group", "jid": jid, "name": "N", "folder": folder, "trigger": "@Andy"}),
        );
        assert!(
            matches!(o, FileOutcome::Rejected(ref r) if r.contains(why)),
            "{folder}: {o:?}"
        );
        assert!(f.ctx.store.registered_group(&jid).expect("r").is_none());
    }
    let o = f.send(
        "main",
        &json!({"type": "register_group", "jid": "tg:x", "name": "N", "folder": "x", "trigger": "@Andy",
                "containerConfig": {"network": "everything"}}),
    );
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("containerConfig")),
        "{o:?}"
    );
    // An agent cannot add an HTTP MCP server (the host would send requests, and
    // secrets, where it says); a stdio one runs in the group's own sandbox and may.
    let o = f.send(
        "main",
        &json!({"type": "register_group", "jid": "tg:h", "name": "N", "folder": "h", "trigger": "@Andy",
                "containerConfig": {"mcpServers": {"x": {"type": "http", "url": "https://collect.example.com"}}}}),
    );
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("added by the user")),
        "{o:?}"
    );
    assert!(f.ctx.store.registered_group("tg:h").expect("r").is_none());
    let o = f.send(
        "main",
        &json!({"type": "register_group", "jid": "tg:s", "name": "N", "folder": "s", "trigger": "@Andy",
                "containerConfig": {"mcpServers": {"x": {"command": "python3"}}}}),
    );
    assert!(allowed(&o), "{o:?}");
    let o = f.send(
        "main",
        &json!({"type": "register_group", "jid": "tg:y", "name": "N", "folder": "y", "trigger": "@Andy", "isMain": true}),
    );
    assert!(allowed(&o), "{o:?}");
    assert!(
        !f.ctx
            .store
            .registered_group("tg:y")
            .expect("r")
            .expect("e")
            .is_main,
        "never a second main"
    );
}

#[test]
fn invalid_schedules_and_missing_fields_are_rejected() {
    let f = fixture();
    let cases = [
        (
            json!({"type": "schedule_task", "prompt": "p", "schedule_type": "cron", "schedule_value": "0 9 * *", "targetJid": "tg:team"}),
            "5 fields",
        ),
        (
            json!({"type": "schedule_task", "prompt": "p", "schedule_type": "interval", "schedule_value": "0", "targetJid": "tg:team"}),
            "positive",
        ),
        (
            json!({"type": "schedule_task", "prompt": "p", "schedule_type": "interval", "schedule_value": "-60000", "targetJid": "tg:team"}),
            "positive",
        ),
        (
            json!({"type": "schedule_task", "prompt": "p", "schedule_type": "once", "schedule_value": "next tuesday", "targetJid": "tg:team"}),
            "date and time",
        ),
        (
            json!({"type": "schedule_task", "prompt": "p", "schedule_type": "weekly", "schedule_value": "x", "targetJid": "tg:team"}),
            "cron, interval or once",
        ),
        (
            json!({"type": "schedule_task", "prompt": "  ", "schedule_type": "interval", "schedule_value": "3600000", "targetJid": "tg:team"}),
            "prompt",
        ),
        (
            json!({"type": "schedule_task", "taskId": "../x", "prompt": "p", "schedule_type": "interval", "schedule_value": "3600000", "targetJid": "tg:team"}),
            "taskId",
        ),
        (
            json!({"type": "schedule_task", "prompt": "p", "schedule_type": "interval", "schedule_value": "1000", "targetJid": "tg:team"}),
            "shorter than the minimum",
        ),
        (
            json!({"type": "schedule_task", "prompt": "p", "schedule_type": "interval", "targetJid": "tg:team"}),
            "schedule_value",
        ),
        (json!({"type": "message", "text": "no target"}), "chatJid"),
        (json!({"type": "pause_task"}), "taskId"),
        (json!({"type": "launch_missiles"}), "unknown variant"),
        (
            json!({"type": "update_task", "taskId": "nothing-to-change"}),
            "no task",
        ),
    ];
    let n = cases.len();
    for (request, why) in cases {
        let o = f.send("team", &request);
        assert!(
            matches!(o, FileOutcome::Rejected(ref r) if r.contains(why)),
            "{request}: {o:?}"
        );
    }
    assert!(
        f.ctx
            .store
            .tasks_for_folder("team")
            .expect("tasks")
            .is_empty()
    );
    assert_eq!(f.errors().len(), n * 2, "each file and its reason kept");
}

#[test]
fn context_mode_defaults_to_isolated() {
    let f = fixture();
    for (id, mode, want) in [
        ("a", Some("group"), "group"),
        ("b", Some("isolated"), "isolated"),
        ("c", Some("shared"), "isolated"),
        ("d", None, "isolated"),
    ] {
        let mut request = json!({"type": "schedule_task", "taskId": id, "prompt": "p",
            "schedule_type": "once", "schedule_value": "2030-01-01T09:00:00", "targetJid": "tg:team"});
        if let Some(mode) = mode {
            request["context_mode"] = json!(mode);
        }
        assert!(allowed(&f.send("team", &request)));
        let t = f.ctx.store.task(id).expect("r").expect("stored");
        assert_eq!(t.context_mode, want, "{mode:?}");
        if id == "a" {
            assert_eq!(
                t.next_run.as_deref(),
                Some("2030-01-01T08:00:00.000Z"),
                "once is local time"
            );
        }
    }
}

#[test]
fn the_source_is_the_folder_never_the_content() {
    let f = fixture();
    let o = f.send(
        "team",
        &json!({"type": "message", "chatJid": "web:main", "text": "I am main, trust me",
                "groupFolder": "main", "isMain": true, "sourceGroup": "main", "chatJidOfSender": "web:main"}),
    );
    assert!(denied(&o), "{o:?}");
    assert!(f.bot_messages("web:main").is_empty());
    let o = f.send(
        "team",
        &json!({"type": "register_group", "jid": "tg:evil", "name": "E", "folder": "evil", "trigger": "@A", "groupFolder": "main"}),
    );
    assert!(denied(&o), "{o:?}");
    // A folder named like main that is not the registered main group has no privilege.
    f.ctx
        .store
        .register_group(&group("tg:mainlike", "Main2", false))
        .expect("register");
    let o = f.send(
        "Main2",
        &json!({"type": "message", "chatJid": "web:main", "text": "x"}),
    );
    assert!(denied(&o), "{o:?}");
}

#[test]
fn unreadable_files_go_to_errors_with_a_reason() {
    let f = fixture();
    let o = f.send_raw("team", "messages", "1-bad.json", b"{not json");
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("not a valid IPC request")),
        "{o:?}"
    );
    assert_eq!(f.errors(), ["team-1-bad.json", "team-1-bad.json.reason"]);
    let reason = std::fs::read_to_string(
        f.ctx
            .layout
            .data_dir()
            .join("ipc/errors/team-1-bad.json.reason"),
    )
    .expect("reason");
    assert!(reason.contains("not a valid IPC request"), "{reason}");
    // Same name again: the first is kept.
    let o = f.send_raw("team", "messages", "1-bad.json", b"[]");
    assert!(matches!(o, FileOutcome::Rejected(_)));
    assert!(
        f.errors().contains(&"team-1-bad.json.1".to_string()),
        "{:?}",
        f.errors()
    );

    // A request in the wrong folder.
    let o = f.send_raw(
        "team",
        "messages",
        "2-wrong.json",
        br#"{"type":"pause_task","taskId":"x"}"#,
    );
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("belongs in tasks/")),
        "{o:?}"
    );

    // Too large: refused unread.
    let big = vec![b' '; (MAX_FILE_BYTES + 1) as usize];
    let o = f.send_raw("team", "messages", "3-big.json", &big);
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("at most")),
        "{o:?}"
    );
}

#[test]
fn symlinks_are_never_followed() {
    let f = fixture();
    let secret = f.ctx.layout.root().join("secret.json");
    std::fs::write(
        &secret,
        r#"{"type":"message","chatJid":"tg:team","text":"leaked"}"#,
    )
    .expect("write");
    let dir = f.ipc("team").join("messages");
    std::os::unix::fs::symlink(&secret, dir.join("1-link.json")).expect("symlink");
    let outcomes = f.ctx.process_folder("team");
    assert!(
        matches!(&outcomes[..], [(_, _, FileOutcome::Rejected(r))] if r.contains("symlink")),
        "{outcomes:?}"
    );
    assert!(
        f.bot_messages("tg:team").is_empty(),
        "the target was not read"
    );
    assert!(secret.exists(), "the target is untouched");

    // A request folder replaced by a symlink to another group's folder is not entered.
    let team_tasks = f.ipc("team").join("tasks");
    std::fs::remove_dir_all(&team_tasks).expect("rm");
    std::os::unix::fs::symlink(f.ipc("other").join("tasks"), &team_tasks).expect("symlink");
    std::fs::write(
        f.ipc("other").join("tasks/1-x.json"),
        r#"{"type":"pause_task","taskId":"x"}"#,
    )
    .expect("write");
    assert!(f.ctx.process_folder("team").is_empty());
    assert!(
        f.ipc("other").join("tasks/1-x.json").exists(),
        "other's file is not processed as team's"
    );
}

#[test]
fn temp_names_are_left_alone() {
    let f = fixture();
    let dir = f.ipc("team").join("messages");
    for name in [".1.json.tmp", "1.json.tmp", ".hidden.json", "notes.txt"] {
        std::fs::write(dir.join(name), "{}").expect("write");
    }
    assert!(f.ctx.process_folder("team").is_empty());
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 4);
}

#[test]
fn snapshots_show_each_group_what_it_may_see() {
    let f = fixture();
    f.add_task("mine", "team", "tg:team");
    f.add_task("theirs", "other", "tg:other");
    f.ctx
        .store
        .upsert_chat(&crate::store::ChatMeta {
            jid: "tg:fam".into(),
            name: Some("Family".into()),
            timestamp: crate::clock::now(),
            channel: Some("telegram".into()),
            is_group: Some(true),
        })
        .expect("chat");
    f.ctx
        .store
        .upsert_chat(&crate::store::ChatMeta {
            jid: "tg:team".into(),
            name: Some("Team".into()),
            timestamp: crate::clock::now(),
            channel: Some("telegram".into()),
            is_group: Some(true),
        })
        .expect("chat");
    // An agent's symlink in place of a snapshot is replaced, not written through.
    let victim = f.ctx.layout.root().join("victim");
    std::fs::write(&victim, "keep").expect("write");
    std::os::unix::fs::symlink(&victim, f.ipc("team").join("current_tasks.json")).expect("symlink");

    snapshot::write_all(&f.ctx, "team", false).expect("team");
    snapshot::write_all(&f.ctx, "main", true).expect("main");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");

    let read = |folder: &str, name: &str| -> Value {
        let path = f.ipc(folder).join(name);
        let meta = std::fs::symlink_metadata(&path).expect("exists");
        assert!(meta.is_file(), "{name} is a regular file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o644,
            "readable by the sandbox user"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
    };
    let team_tasks = read("team", "current_tasks.json");
    let ids: Vec<&str> = team_tasks
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, ["mine"]);
    assert_eq!(team_tasks[0]["groupFolder"], "team");
    let main_tasks = read("main", "current_tasks.json");
    assert_eq!(
        main_tasks.as_array().expect("array").len(),
        2,
        "main sees all"
    );
    assert_eq!(read("team", "available_groups.json")["groups"], json!([]));
    let groups = read("main", "available_groups.json");
    let groups = groups["groups"].as_array().expect("groups");
    let fam = groups
        .iter()
        .find(|g| g["jid"] == "tg:fam")
        .expect("fam listed");
    assert_eq!(fam["isRegistered"], false);
    assert_eq!(fam["name"], "Family");
    let team = groups
        .iter()
        .find(|g| g["jid"] == "tg:team")
        .expect("team listed");
    assert_eq!(team["isRegistered"], true);
}

#[test]
fn a_task_change_refreshes_the_task_snapshot() {
    let f = fixture();
    let o = f.send(
        "team",
        &json!({"type": "schedule_task", "taskId": "fresh", "prompt": "p", "schedule_type": "interval",
                "schedule_value": "60000", "targetJid": "tg:team"}),
    );
    assert!(allowed(&o));
    for folder in ["team", "main"] {
        let text =
            std::fs::read_to_string(f.ipc(folder).join("current_tasks.json")).expect("snapshot");
        assert!(text.contains("\"fresh\""), "{folder}: {text}");
    }
}

#[tokio::test]
async fn the_watcher_picks_up_files_in_new_and_existing_folders() {
    let f = Arc::new(fixture());
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = f.watcher_context();
    // A file written before the watcher starts is processed by the first sweep.
    std::fs::write(
        f.ipc("team").join("messages/1-early.json"),
        r#"{"type":"message","chatJid":"tg:team","text":"early"}"#,
    )
    .expect("write");
    let task = tokio::spawn(watch(ctx, stop_rx));
    let wait_text = |text: &'static str, jid: &'static str| {
        let f = Arc::clone(&f);
        async move {
            nanoclaw_test_support::wait_for(text, nanoclaw_test_support::DEADLINE, || {
                let found = f.bot_messages(jid).iter().any(|m| m == text);
                async move { found.then_some(()) }
            })
            .await
        }
    };
    wait_text("early", "tg:team").await;

    let drop_file = |folder: &str, text: &str, jid: &str| {
        let dir = f.ipc(folder).join("messages");
        std::fs::create_dir_all(&dir).expect("dir");
        let tmp = dir.join(".x.tmp");
        std::fs::write(
            &tmp,
            json!({"type": "message", "chatJid": jid, "text": text}).to_string(),
        )
        .expect("write");
        std::fs::rename(
            &tmp,
            dir.join(format!("{}.json", crate::clock::millis_now())),
        )
        .expect("rename");
    };
    drop_file("team", "while running", "tg:team");
    wait_text("while running", "tg:team").await;

    // A group registered after start: its folder appears later.
    f.ctx
        .store
        .register_group(&group("tg:late", "late", false))
        .expect("register");
    drop_file("late", "from a new folder", "tg:late");
    wait_text("from a new folder", "tg:late").await;

    stop_tx.send(true).expect("stop");
    tokio::time::timeout(nanoclaw_test_support::DEADLINE, task)
        .await
        .expect("the watcher stops")
        .expect("joined");
}

#[test]
fn rejected_files_are_copied_not_moved_and_capped_per_group() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    let dir = f.ipc("team").join("messages");
    std::fs::write(dir.join("1-bad.json"), b"{not json").expect("write");
    // A second link keeps the agent's inode alive so it can be compared.
    std::fs::hard_link(dir.join("1-bad.json"), dir.join("keep")).expect("link");
    let agent_inode = std::fs::metadata(dir.join("keep")).expect("meta").ino();
    f.ctx.process_folder("team");
    let kept = f.ctx.layout.data_dir().join("ipc/errors/team-1-bad.json");
    assert_eq!(std::fs::read(&kept).expect("kept"), b"{not json");
    assert_ne!(
        std::fs::metadata(&kept).expect("meta").ino(),
        agent_inode,
        "errors/ holds a copy the agent has no handle on"
    );
    assert!(!dir.join("1-bad.json").exists());

    // A flood of bad files: each is deleted, at most MAX_ERRORS_PER_FOLDER are kept.
    for i in 0..(MAX_ERRORS_PER_FOLDER + 20) {
        std::fs::write(dir.join(format!("{i:04}-flood.json")), b"[]").expect("write");
    }
    while !f.ctx.process_folder("team").is_empty() {}
    let kept = f
        .errors()
        .iter()
        .filter(|n| n.starts_with("team-") && !n.ends_with(".reason"))
        .count();
    assert_eq!(kept, MAX_ERRORS_PER_FOLDER);
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        1,
        "only the unrelated link is left"
    );
}

#[test]
fn directories_named_like_requests_are_left_alone() {
    let f = fixture();
    let dir = f.ipc("team").join("messages/1-dir.json");
    std::fs::create_dir(&dir).expect("mkdir");
    assert!(f.ctx.process_folder("team").is_empty());
    assert!(dir.is_dir());
    assert!(f.errors().is_empty());
}

#[test]
fn a_flooded_folder_is_handled_a_slice_at_a_time() {
    let f = fixture();
    let dir = f.ipc("team").join("tasks");
    let n = FILES_PER_PASS * 2 + 7;
    for i in 0..n {
        std::fs::write(
            dir.join(format!("{i:04}.json")),
            r#"{"type":"pause_task","taskId":"none"}"#,
        )
        .expect("write");
    }
    let (first, more) = f.ctx.process_folder_pass("team");
    assert_eq!((first.len(), more), (FILES_PER_PASS, true));
    let (second, more) = f.ctx.process_folder_pass("team");
    assert_eq!((second.len(), more), (FILES_PER_PASS, true));
    let (last, more) = f.ctx.process_folder_pass("team");
    assert_eq!((last.len(), more), (7, false));
    assert_eq!(first[0].1, "0000.json", "oldest first");
}

#[test]
fn chat_messages_are_limited_per_group_per_minute() {
    let f = fixture();
    let limit = f.ctx.guard.limits.messages_per_minute;
    let mut outcomes = Vec::new();
    for i in 0..limit + 3 {
        outcomes.push(f.send(
            "team",
            &json!({"type": "message", "chatJid": "tg:team", "text": format!("m{i}")}),
        ));
    }
    assert!(
        outcomes[..limit]
            .iter()
            .all(|o| matches!(o, FileOutcome::Done(_)))
    );
    for o in &outcomes[limit..] {
        assert!(
            matches!(o, FileOutcome::Denied(r) if r.contains("in a minute")),
            "{o:?}"
        );
    }
    assert_eq!(f.bot_messages("tg:team").len(), limit);
    // Another group has its own budget.
    let o = f.send(
        "other",
        &json!({"type": "message", "chatJid": "tg:other", "text": "hi"}),
    );
    assert!(matches!(o, FileOutcome::Done(_)), "{o:?}");
}

#[test]
fn a_group_may_keep_only_so_many_tasks() {
    let f = fixture();
    let max = f.ctx.guard.limits.max_tasks_per_group;
    for i in 0..max {
        f.add_task(&format!("t{i}"), "team", "tg:team");
    }
    let o = f.send(
        "team",
        &json!({"type": "schedule_task", "prompt": "p", "schedule_type": "interval",
                "schedule_value": "3600000", "targetJid": "tg:team"}),
    );
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("the most a group may have")),
        "{o:?}"
    );
    // Cancelled tasks do not count.
    f.ctx
        .store
        .set_task_status("t0", crate::store::TaskStatus::Cancelled)
        .expect("cancel");
    let o = f.send(
        "team",
        &json!({"type": "schedule_task", "prompt": "p", "schedule_type": "interval",
                "schedule_value": "3600000", "targetJid": "tg:team"}),
    );
    assert!(matches!(o, FileOutcome::Done(_)), "{o:?}");
    // Updating to a too-short interval is refused as well.
    let o = f.send(
        "team",
        &json!({"type": "update_task", "taskId": "t1", "schedule_value": "10"}),
    );
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("shorter than the minimum")),
        "{o:?}"
    );
}

#[tokio::test]
async fn replacing_a_request_folder_over_and_over_does_not_pile_up_watches() {
    let f = fixture();
    let mut watcher = Watcher::new(f.ctx.layout.data_dir().join("ipc")).expect("inotify");
    let before = watcher.watches.len();
    let team = f.ipc("team");
    for i in 0..30 {
        std::fs::rename(team.join("messages"), team.join(format!("old-{i}"))).expect("rename");
        std::fs::create_dir(team.join("messages")).expect("mkdir");
        tokio::time::timeout(nanoclaw_test_support::DEADLINE, watcher.next())
            .await
            .expect("the new folder is noticed");
    }
    assert_eq!(
        watcher.watches.len(),
        before,
        "the moved-away folders' watches were removed"
    );
    assert_eq!(watcher.by_path.len(), before);
}

/// `chattr +i` on a folder: even root cannot delete from it, as an agent running as the
/// daemon's own user can arrange with `chmod`.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &std::path::Path) -> Immutable {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .expect("chattr runs (e2fsprogs)");
        assert!(ok.success(), "chattr +i needs an ext4-like /tmp");
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn requests_that_cannot_be_deleted_are_never_carried_out() {
    let f = fixture();
    let dir = f.ipc("team").join("messages");
    for i in 0..3 {
        std::fs::write(
            dir.join(format!("{i}.json")),
            json!({"type": "message", "chatJid": "tg:team", "text": format!("m{i}")}).to_string(),
        )
        .expect("write");
    }
    let guard = Immutable::set(&dir);
    for _ in 0..3 {
        let (outcomes, more) = f.ctx.process_folder_pass("team");
        assert_eq!(outcomes.len(), 1, "the pass stops at the first stuck file");
        assert!(
            matches!(outcomes[0].2, FileOutcome::Kept(_)),
            "{outcomes:?}"
        );
        assert!(!more, "no busy loop over a stuck folder");
    }
    assert!(
        f.bot_messages("tg:team").is_empty(),
        "nothing was sent, let alone three times over"
    );
    drop(guard);
    f.ctx.process_folder("team");
    assert_eq!(
        f.bot_messages("tg:team").len(),
        3,
        "handled once writable again"
    );
}

#[tokio::test]
async fn a_flooded_folder_does_not_starve_the_others() {
    let f = Arc::new(fixture());
    let flood = f.ipc("team").join("tasks");
    let n = FILES_PER_PASS * 12;
    for i in 0..n {
        std::fs::write(flood.join(format!("{i:05}.json")), b"[]").expect("write");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = f.watcher_context();
    let task = tokio::spawn(watch(ctx, stop_rx));
    // Wait until the flood is being worked through, then another group writes.
    nanoclaw_test_support::wait_for(
        "the flood to shrink",
        nanoclaw_test_support::DEADLINE,
        || {
            let left = std::fs::read_dir(&flood).map(|d| d.count()).unwrap_or(n);
            async move { (left < n).then_some(()) }
        },
    )
    .await;
    std::fs::write(
        f.ipc("other").join("messages/1.json"),
        r#"{"type":"message","chatJid":"tg:other","text":"not starved"}"#,
    )
    .expect("write");
    let left_when_done = nanoclaw_test_support::wait_for(
        "the other group's message",
        nanoclaw_test_support::DEADLINE,
        || {
            let done = !f.bot_messages("tg:other").is_empty();
            let left = std::fs::read_dir(&flood).map(|d| d.count()).unwrap_or(0);
            async move { done.then_some(left) }
        },
    )
    .await;
    assert!(
        left_when_done > 0,
        "handled while the flood was still being worked through"
    );
    nanoclaw_test_support::wait_for(
        "the flood to drain",
        nanoclaw_test_support::DEADLINE,
        || {
            let left = std::fs::read_dir(&flood).map(|d| d.count()).unwrap_or(n);
            async move { (left == 0).then_some(()) }
        },
    )
    .await;
    stop_tx.send(true).expect("stop");
    tokio::time::timeout(nanoclaw_test_support::DEADLINE, task)
        .await
        .expect("the watcher stops")
        .expect("joined");
}

#[test]
fn cron_schedules_respect_the_minimum_interval_too() {
    let mut f = fixture();
    f.ctx.guard = IpcGuard::new(IpcLimits {
        min_task_interval: std::time::Duration::from_secs(3600),
        ..Default::default()
    });
    let schedule = |value: &str| {
        json!({"type": "schedule_task", "prompt": "p", "schedule_type": "cron",
               "schedule_value": value, "targetJid": "tg:team"})
    };
    for too_often in ["* * * * *", "*/30 * * * *", "0,59 9 * * *"] {
        let o = f.send("team", &schedule(too_often));
        assert!(
            matches!(o, FileOutcome::Rejected(ref r) if r.contains("shorter than the minimum")),
            "{too_often}: {o:?}"
        );
    }
    for fine in ["0 * * * *", "0 9 * * 1-5"] {
        let o = f.send("team", &schedule(fine));
        assert!(matches!(o, FileOutcome::Done(_)), "{fine}: {o:?}");
    }
}

#[test]
fn task_creation_and_message_size_are_limited() {
    let mut f = fixture();
    f.ctx.guard = IpcGuard::new(IpcLimits {
        tasks_per_hour: 2,
        ..Default::default()
    });
    let once = json!({"type": "schedule_task", "prompt": "p", "schedule_type": "once",
                      "schedule_value": "2030-01-01T09:00:00", "targetJid": "tg:team"});
    for _ in 0..2 {
        let o = f.send("team", &once);
        assert!(matches!(o, FileOutcome::Done(_)), "{o:?}");
    }
    let o = f.send("team", &once);
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("in the last hour")),
        "{o:?}"
    );

    let long = "x".repeat(f.ctx.guard.limits.max_message_bytes + 1);
    let o = f.send(
        "team",
        &json!({"type": "message", "chatJid": "tg:team", "text": long}),
    );
    assert!(
        matches!(o, FileOutcome::Rejected(ref r) if r.contains("at most")),
        "{o:?}"
    );
    assert!(f.bot_messages("tg:team").is_empty());
}

/// Whatever a non-main group's agent writes, it reaches nothing outside its own group:
/// no group registered or changed, no other group's task touched, no task or message
/// aimed at another chat (SPEC §10), and no panic.
/// `send_file` follows the message matrix, and a path always names a file of the
/// sending group's own folder; a file that cannot go is refused and the chat told.
#[test]
fn files_follow_the_message_matrix_from_the_senders_own_folder() {
    let f = fixture();
    let groups = f.ctx.layout.groups_dir();
    std::fs::write(groups.join("team/a.txt"), "team's").expect("write");
    std::fs::write(groups.join("team/big.bin"), [0u8; 101]).expect("write");
    std::fs::write(groups.join("other/o.txt"), "other's").expect("write");
    let file = |jid: &str, path: &str| json!({"type": "file", "chatJid": jid, "path": path, "caption": "here"});
    let outcome = f.send("team", &file("tg:team", "a.txt"));
    assert!(allowed(&outcome), "{outcome:?}");
    let queued = f.ctx.store.pending_outbox_heads(10).expect("outbox");
    let sent = queued
        .iter()
        .find_map(|i| i.file.clone().filter(|_| i.chat_jid == "tg:team"))
        .expect("a file queued for tg:team");
    assert_eq!(
        (sent.name.as_str(), std::fs::read(&sent.path).expect("copy")),
        ("a.txt", b"team's".to_vec())
    );
    assert_eq!(f.bot_messages("tg:team"), ["[file: a.txt] here"]);
    assert!(denied(&f.send("team", &file("tg:other", "a.txt"))));
    assert!(denied(&f.send("team", &file("web:main", "a.txt"))));
    // Paths are the sender's own: `..` and absolute paths elsewhere never leave it.
    for path in ["../other/o.txt", "/workspace/project/o.txt", "/etc/passwd"] {
        let outcome = f.send("team", &file("tg:team", path));
        assert!(
            matches!(outcome, FileOutcome::Rejected(_)),
            "{path}: {outcome:?}"
        );
    }
    let outcome = f.send("main", &file("tg:team", "a.txt"));
    assert!(
        matches!(&outcome, FileOutcome::Rejected(r) if r.contains("a.txt does not exist")),
        "main's path is in main's folder: {outcome:?}"
    );
    let outcome = f.send("team", &file("tg:team", "big.bin"));
    assert!(
        matches!(&outcome, FileOutcome::Rejected(r) if r.contains("takes files up to")),
        "{outcome:?}"
    );
    let told = f.bot_messages("tg:team");
    assert!(
        told.iter()
            .any(|t| t.starts_with("(A file could not be sent: big.bin is")),
        "the chat hears why: {told:?}"
    );
    assert!(f.bot_messages("tg:other").is_empty());
}

#[test]
fn fuzz_a_non_main_group_cannot_reach_outside_itself() {
    let f = fixture();
    f.add_task("task-other", "other", "tg:other");
    let groups_before = f.ctx.store.registered_groups().expect("groups");
    let other_before = f.ctx.store.task("task-other").expect("read");
    let team = Source {
        folder: "team".into(),
        is_main: false,
    };
    nanoclaw_fuzz::fuzz(
        "ipc_process",
        nanoclaw_fuzz::Shape::Json,
        &[
            "type",
            "message",
            "file",
            "path",
            "../other/o.txt",
            "schedule_task",
            "register_group",
            "update_task",
            "pause_task",
            "cancel_task",
            "refresh_groups",
            "chatJid",
            "targetJid",
            "taskId",
            "task-other",
            "tg:other",
            "web:main",
            "tg:team",
            "folder",
            "other",
            "main",
            "containerConfig",
            "additionalMounts",
            "schedule_type",
            "schedule_value",
            "cron",
            "interval",
            "once",
            "prompt",
            "text",
            "isolated",
        ],
        |input| {
            let Ok(request) = serde_json::from_slice::<IpcRequest>(input) else {
                return;
            };
            let _ = process::process(&f.ctx, &team, request);
            assert_eq!(
                f.ctx.store.registered_groups().expect("groups"),
                groups_before,
                "the groups changed"
            );
            assert_eq!(
                f.ctx.store.task("task-other").expect("read"),
                other_before,
                "another group's task changed"
            );
            for task in f.ctx.store.tasks().expect("tasks") {
                if task.id != "task-other" {
                    assert_eq!(
                        (task.group_folder.as_str(), task.chat_jid.as_str()),
                        ("team", "tg:team"),
                        "{task:?}"
                    );
                }
            }
            for jid in ["web:main", "tg:other"] {
                assert!(f.bot_messages(jid).is_empty(), "a message reached {jid}");
            }
        },
    );
}
