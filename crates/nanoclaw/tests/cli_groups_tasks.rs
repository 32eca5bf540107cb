//! `nanoclaw groups add|list|remove` and `tasks pause|resume|cancel` on a real store.

mod support;

use rusqlite::Connection;
use support::cli;

#[tokio::test]
async fn groups_add_rejects_unsafe_folders_with_the_rule() {
    let root = tempfile::tempdir().expect("temp dir");
    let too_long = "x".repeat(65);
    let cases = [
        ("../x", "starts with `.`"),
        ("global", "reserved"),
        ("Global", "reserved"),
        ("errors", "reserved for rejected IPC files"),
        (too_long.as_str(), "65 characters"),
        ("a/b", "contains `/`"),
        ("bad name", "contains ` `"),
        ("", "empty"),
        ("-x", "starts with `-`"),
    ];
    for (folder, why) in cases {
        let flag = format!("--folder={folder}");
        let (ok, _, err) = cli(
            root.path(),
            &["groups", "add", "--jid", "tg:1", "--name", "G", &flag],
        )
        .await;
        assert!(!ok, "{folder:?} must be rejected");
        assert!(err.contains(why), "{folder:?}: {err}");
        assert!(
            err.contains("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
            "the rule is quoted: {err}"
        );
    }
    assert!(!root.path().join("groups/x").exists() && !root.path().join("x").exists());
}

#[tokio::test]
async fn groups_add_list_remove() {
    let root = tempfile::tempdir().expect("temp dir");
    let (ok, out, err) = cli(
        root.path(),
        &[
            "groups",
            "add",
            "--jid",
            "tg:-100",
            "--name",
            "Family",
            "--folder",
            "telegram_family",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("@Andy"), "{out}");
    assert!(root.path().join("groups/telegram_family/logs").is_dir());
    assert!(
        root.path()
            .join("data/ipc/telegram_family/messages")
            .is_dir()
    );

    let (ok, _, err) = cli(
        root.path(),
        &[
            "groups",
            "add",
            "--jid",
            "tg:-200",
            "--name",
            "Other",
            "--folder",
            "telegram_family",
        ],
    )
    .await;
    assert!(!ok && err.contains("already used by tg:-100"), "{err}");

    let (ok, _, err) = cli(
        root.path(),
        &[
            "groups",
            "add",
            "--jid",
            "tg:-300",
            "--name",
            "Solo",
            "--folder",
            "solo",
            "--no-trigger",
            "--trigger",
            "@Bot",
        ],
    )
    .await;
    assert!(ok, "{err}");

    let (ok, out, _) = cli(root.path(), &["groups", "list", "--json"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let solo = v
        .as_array()
        .expect("array")
        .iter()
        .find(|g| g["jid"] == "tg:-300")
        .expect("solo");
    assert_eq!(solo["requires_trigger"], false);
    assert_eq!(solo["trigger"], "@Bot");

    let (ok, out, _) = cli(root.path(), &["groups", "list"]).await;
    assert!(
        ok && out.contains("telegram_family") && out.contains("tg:-300"),
        "{out}"
    );

    let (ok, out, _) = cli(root.path(), &["groups", "remove", "--jid", "tg:-100"]).await;
    assert!(ok && out.contains("kept"), "{out}");
    let (ok, _, err) = cli(root.path(), &["groups", "remove", "--jid", "tg:-100"]).await;
    assert!(!ok && err.contains("not registered"), "{err}");
    assert!(
        root.path().join("groups/telegram_family").is_dir(),
        "the folder is kept"
    );
}

#[tokio::test]
async fn read_commands_on_a_root_without_a_store_say_what_to_do() {
    let root = tempfile::tempdir().expect("temp dir");
    let (ok, _, err) = cli(root.path(), &["groups", "list"]).await;
    assert!(!ok && err.contains("nanoclaw run --root"), "{err}");
    assert!(
        !root.path().join("store/messages.db").exists(),
        "a read does not create a store"
    );
}

#[tokio::test]
async fn tasks_pause_resume_cancel() {
    let root = tempfile::tempdir().expect("temp dir");
    let (ok, _, err) = cli(
        root.path(),
        &[
            "groups", "add", "--jid", "tg:1", "--name", "G", "--folder", "g",
        ],
    )
    .await;
    assert!(ok, "{err}");
    Connection::open(root.path().join("store/messages.db"))
        .expect("open")
        .execute(
            "INSERT INTO scheduled_tasks (id, group_folder, chat_jid, prompt, schedule_type, schedule_value, status, created_at)
             VALUES ('t1', 'g', 'tg:1', 'standup', 'cron', '0 9 * * 1-5', 'active', '2026-01-01T00:00:00.000Z')",
            [],
        )
        .expect("insert");
    let status = |out: String| -> String {
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v[0]["status"].as_str().expect("status").to_string()
    };
    let (ok, _, err) = cli(root.path(), &["tasks", "pause", "t1"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        status(cli(root.path(), &["tasks", "list", "--json"]).await.1),
        "paused"
    );
    assert!(cli(root.path(), &["tasks", "resume", "t1"]).await.0);
    assert_eq!(
        status(cli(root.path(), &["tasks", "list", "--json"]).await.1),
        "active"
    );
    assert!(cli(root.path(), &["tasks", "cancel", "t1"]).await.0);
    assert_eq!(
        status(cli(root.path(), &["tasks", "list", "--json"]).await.1),
        "cancelled"
    );
    let (ok, _, err) = cli(root.path(), &["tasks", "resume", "t1"]).await;
    assert!(!ok && err.contains("cancelled"), "{err}");
    let (ok, _, err) = cli(root.path(), &["tasks", "pause", "nope"]).await;
    assert!(!ok && err.contains("tasks list"), "{err}");
}

/// NanoClaw v1's registration cases, and ours: `groups add` and IPC `register_group`
/// (from main) go through one validation and must agree on every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_add_and_ipc_register_group_agree_on_every_case() {
    use std::sync::Arc;
    // (jid, name, folder, trigger)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("tg:-100123", "Family", "telegram_family", "@Andy"),
        ("tg:-100124", "Padded", " padded ", "@Andy"),
        ("tg:-100125", "Trailing", "trailing ", "@Andy"),
        ("tg:-100126", "Slash", "a/b", "@Andy"),
        ("tg:-100127", "Dots", "..", "@Andy"),
        ("tg:-100128", "Global", "Global", "@Andy"),
        ("tg:-100129", "Errors", "errors", "@Andy"),
        ("tg:-100130", "Dash", "-lead", "@Andy"),
        ("tg:-100131", "Long", &"x".repeat(65), "@Andy"),
        ("tg:-100132", "Max", &"y".repeat(64), "@Andy"),
        ("tg:-100133", "Unicode", "família", "@Andy"),
        ("tg:-100134", "", "empty_name", "@Andy"),
        ("tg:-100135", "   ", "blank_name", "@Andy"),
        ("", "No jid", "no_jid", "@Andy"),
        ("tg 1", "Space", "space_jid", "@Andy"),
        (" tg:-100136", "Lead", "lead_jid", "@Andy"),
        ("nochannel", "Bare", "bare_jid", "@Andy"),
        ("120363@g.us", "WhatsApp", "whatsapp_family", "@Andy"),
        ("mail:alice@example.org", "Alice", "mail_alice", "@Andy"),
        ("tg:-100137", "Trigger", "own_trigger", "  @Bot  "),
        ("tg:-100138", "Ctl", "ctl_trigger", "@A\u{7}"),
    ];
    for (jid, name, folder, trigger) in cases {
        let root = tempfile::tempdir().expect("temp dir");
        let (cli_ok, _, cli_err) = cli(
            root.path(),
            &[
                "groups",
                "add",
                "--jid",
                jid,
                "--name",
                name,
                "--folder",
                folder,
                "--trigger",
                trigger,
            ],
        )
        .await;

        let root = tempfile::tempdir().expect("temp dir");
        let layout = nanoclaw::layout::Layout::new(root.path());
        layout.create().expect("layout");
        let ctx = nanoclaw::ipc::IpcContext {
            store: Arc::new(
                nanoclaw::store::Store::open(&layout.db_path(), "Andy").expect("store"),
            ),
            layout,
            tz: jiff::tz::TimeZone::UTC,
            assistant_name: "Andy".into(),
            channels: nanoclaw::channels::ChannelSet::new(vec![]),
            delivery: None,
            tasks_changed: Arc::new(tokio::sync::Notify::new()),
            guard: nanoclaw::ipc::IpcGuard::default(),
        };
        let request: nanoclaw_protocol::ipc::IpcRequest = serde_json::from_value(serde_json::json!({
            "type": "register_group", "jid": jid, "name": name, "folder": folder, "trigger": trigger,
        }))
        .expect("a register_group request");
        let main = nanoclaw::ipc::authorize::Source {
            folder: "main".into(),
            is_main: true,
        };
        let ipc = nanoclaw::ipc::process::process(&ctx, &main, request);
        assert_eq!(
            cli_ok,
            ipc.is_ok(),
            "{jid:?} {name:?} {folder:?} {trigger:?}: CLI {cli_err:?}, IPC {ipc:?}"
        );
        if let Ok(stored) = &ipc {
            let g = ctx
                .store
                .registered_group(jid)
                .expect("read")
                .expect("registered");
            assert_eq!(
                g.folder, *folder,
                "{stored}: stored as given, never trimmed"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_without_a_model_credential_and_says_which_to_set() {
    let root = tempfile::tempdir().expect("temp dir");
    let (ok, out, _) = cli(root.path(), &["doctor"]).await;
    assert!(!ok, "no credential is a failure: {out}");
    let line = out
        .lines()
        .find(|l| l.contains("model"))
        .unwrap_or_else(|| panic!("no model line in:\n{out}"));
    assert!(
        line.starts_with("FAIL")
            && line.contains("ANTHROPIC_API_KEY")
            && line.contains("OPENAI_BASE_URL"),
        "{line}"
    );
    // A key the API accepts, one it refuses, and --offline, which asks nothing.
    let fake = nanoclaw_test_support::fake_anthropic::FakeAnthropic::start(vec![]).await;
    fake.require_key("sk-ant-doctor-test");
    let lines = |out: &str| -> Vec<String> {
        let lines: Vec<&str> = out.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.contains("model"))
            .unwrap_or_else(|| panic!("no model line in:\n{out}"));
        lines[at..(at + 2).min(lines.len())]
            .iter()
            .map(|l| l.to_string())
            .collect()
    };
    for (key, flag, verdict, says, asked) in [
        (
            "sk-ant-doctor-test",
            None,
            "ok",
            "accepts the credential",
            1,
        ),
        (
            "sk-ant-wrong",
            None,
            "FAIL",
            "refused the credential (HTTP 401, authentication_error): check ANTHROPIC_API_KEY",
            2,
        ),
        (
            "sk-ant-wrong",
            Some("--offline"),
            "ok",
            "not asked (--offline)",
            2,
        ),
    ] {
        std::fs::write(
            root.path().join(".env"),
            format!("ANTHROPIC_API_KEY={key}\nANTHROPIC_BASE_URL={}\n", fake.url),
        )
        .expect(".env");
        let mut args = vec!["doctor"];
        args.extend(flag);
        let (ok, out, _) = cli(root.path(), &args).await;
        let model = lines(&out);
        assert!(
            model[0].starts_with("ok") && model[0].contains("ANTHROPIC_API_KEY set"),
            "{model:?}"
        );
        assert!(
            model[1].starts_with(verdict) && model[1].contains(says),
            "{key} {flag:?}: {model:?}"
        );
        assert_eq!(fake.model_lists(), asked, "{key} {flag:?}");
        if verdict == "FAIL" {
            assert!(!ok, "a refused key fails doctor");
        }
        assert!(!out.contains(key), "the key is never shown: {out}");
    }
}

/// `nanoclaw service …` with a fake `systemctl` first on PATH that records its calls
/// (`state` is what it answers to `is-system-running`; empty: no systemctl at all).
fn service(
    root: &std::path::Path,
    units: &std::path::Path,
    state: &str,
    args: &[&str],
) -> (bool, String, String, Vec<String>) {
    let bin = root.join("fake-bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let log = root.join("systemctl.log");
    let fake = bin.join("systemctl");
    if state.is_empty() {
        let _ = std::fs::remove_file(&fake);
    } else {
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> '{}'\ncase \"$*\" in\n  *is-system-running*) echo {state}; exit 0;;\n  *is-active*) echo active;;\n  *is-enabled*) echo enabled;;\nesac\nexit 0\n",
                log.display()
            ),
        )
        .expect("fake systemctl");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let _ = std::fs::remove_file(&log);
    let out = std::process::Command::new(support::nanoclaw_bin())
        .args(["service"])
        .args(args)
        .arg("--root")
        .arg(root)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .envs(support::test_env(root))
        .env("NANOCLAW_UNIT_DIR", units)
        .output()
        .expect("nanoclaw runs");
    let calls = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        calls,
    )
}

#[test]
fn service_install_writes_a_unit_that_runs_this_root_and_starts_it() {
    let root = tempfile::tempdir().expect("temp dir");
    let units = root.path().join("units");
    let (ok, out, err, calls) = service(root.path(), &units, "running", &["install"]);
    assert!(ok, "{out}{err}");
    let unit = std::fs::read_to_string(units.join("nanoclaw.service")).expect("the unit");
    let binary = std::fs::canonicalize(support::nanoclaw_bin()).expect("binary");
    assert!(
        unit.contains(&format!(
            "ExecStart={} run --root {}\n",
            binary.display(),
            root.path().display()
        )),
        "{unit}"
    );
    assert!(unit.contains("Restart=on-failure"), "{unit}");
    assert!(
        unit.contains("WantedBy=multi-user.target"),
        "as root, a system unit: {unit}"
    );
    assert!(!unit.contains("NoNewPrivileges"), "{unit}");
    assert_eq!(
        calls,
        [
            "is-system-running",
            "daemon-reload",
            "enable --now nanoclaw.service"
        ],
        "{out}"
    );
    assert!(out.contains("enabled and running"), "{out}");

    let (ok, out, _, calls) = service(root.path(), &units, "running", &["status"]);
    assert!(ok);
    assert!(out.contains("active, enabled"), "{out}");
    assert!(
        calls.iter().any(|c| c == "is-active nanoclaw.service"),
        "{calls:?}"
    );
    let doctor = std::process::Command::new(support::nanoclaw_bin())
        .args(["doctor", "--root"])
        .arg(root.path())
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", root.path().join("fake-bin").display()),
        )
        .envs(support::test_env(root.path()))
        .env("NANOCLAW_UNIT_DIR", &units)
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("service") && l.contains("active, enabled")),
        "{text}"
    );

    let (ok, out, _, calls) = service(root.path(), &units, "running", &["uninstall"]);
    assert!(ok, "{out}");
    assert!(!units.join("nanoclaw.service").exists());
    assert!(
        calls.iter().any(|c| c == "disable --now nanoclaw.service"),
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| c == "daemon-reload"), "{calls:?}");
}

#[test]
fn without_systemd_the_unit_is_written_and_the_commands_printed() {
    let root = tempfile::tempdir().expect("temp dir");
    let units = root.path().join("units");
    for state in ["", "offline"] {
        let (ok, out, err, calls) = service(root.path(), &units, state, &["install"]);
        assert!(ok, "{out}{err}");
        assert!(units.join("nanoclaw.service").exists());
        assert!(out.contains("systemctl daemon-reload"), "{out}");
        assert!(
            out.contains("systemctl enable --now nanoclaw.service"),
            "{out}"
        );
        assert!(
            calls.iter().all(|c| c == "is-system-running"),
            "nothing started: {calls:?}"
        );
        let (_, out, _, _) = service(root.path(), &units, state, &["status"]);
        assert!(out.contains("state is unknown"), "{out}");
    }
}
