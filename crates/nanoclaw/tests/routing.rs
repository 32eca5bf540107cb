//! SPEC §5 for non-main groups, in-process with the real store, router and queue:
//! triggers, catch-up, `requires_trigger=false`, and the sender allowlist.

mod support;

use std::sync::Arc;

use support::{ScriptedRunner, TestDaemon, assert_no_runs, register, start_daemon, wait_bot_texts};

async fn daemon_with_team(requires_trigger: bool) -> (TestDaemon, Arc<ScriptedRunner>) {
    let runner = ScriptedRunner::new(vec![]);
    let root = tempfile::tempdir().expect("temp dir");
    register_before_start(root.path(), "web:team", "team", requires_trigger);
    let d = support::start_daemon_with(runner.clone(), root, |_| {}).await;
    (d, runner)
}

fn register_before_start(root: &std::path::Path, jid: &str, folder: &str, requires_trigger: bool) {
    std::fs::create_dir_all(root.join("store")).expect("store dir");
    register(root, jid, folder, requires_trigger);
}

fn write_allowlist(d: &TestDaemon, json: &str) {
    let dir = d.home.join(".config/nanoclaw");
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(dir.join("sender-allowlist.json"), json).expect("write allowlist");
}

#[tokio::test]
async fn untriggered_chatter_is_stored_and_a_trigger_runs_with_everything_since_the_last_run() {
    let (d, runner) = daemon_with_team(true).await;
    d.api
        .send("web:team", "bob", "Bob", "anyone up for lunch?")
        .await
        .expect("accepted");
    d.api
        .send("web:team", "eve", "Eve", "sure, 12:30")
        .await
        .expect("accepted");
    assert_no_runs(&d.api, "chatter without a trigger").await;
    assert_eq!(
        d.api.messages("web:team").await.expect("messages").len(),
        2,
        "chatter is stored"
    );

    d.api
        .send("web:team", "bob", "Bob", "@andy where should we go?")
        .await
        .expect("accepted");
    let runs = runner.wait_runs("triggered run", |r| r.len() == 1).await;
    let prompt = &runs[0].prompt;
    for text in [
        "anyone up for lunch?",
        "sure, 12:30",
        "@andy where should we go?",
    ] {
        assert!(prompt.contains(&format!(">{text}</message>")), "{prompt}");
    }
    assert_eq!(prompt.matches("<message ").count(), 3);
    wait_bot_texts(&d.api, "web:team", 1).await;

    // The run is idle now. Chatter does not wake it; the next trigger sends only what is new.
    d.api
        .send("web:team", "eve", "Eve", "the pizza place?")
        .await
        .expect("accepted");
    d.api
        .send("web:team", "bob", "Bob", "@Andy book it")
        .await
        .expect("accepted");
    let runs = runner
        .wait_runs("follow-up into the live run", |r| {
            r[0].follow_ups.len() == 1
        })
        .await;
    let follow = &runs[0].follow_ups[0];
    assert!(
        follow.contains(">the pizza place?</message>")
            && follow.contains(">@Andy book it</message>"),
        "{follow}"
    );
    assert!(
        !follow.contains("lunch"),
        "already handled messages are not sent again: {follow}"
    );
    assert_eq!(runs.len(), 1, "messages for a live run go to that run");
    d.stop().await;
}

#[tokio::test]
async fn mid_message_mentions_do_not_trigger() {
    let (d, _runner) = daemon_with_team(true).await;
    d.api
        .send("web:team", "bob", "Bob", "ask @Andy later")
        .await
        .expect("accepted");
    d.api
        .send("web:team", "bob", "Bob", "@Andyman is someone else")
        .await
        .expect("accepted");
    assert_no_runs(&d.api, "mention not at the start").await;
    d.stop().await;
}

#[tokio::test]
async fn groups_without_trigger_always_run() {
    let (d, runner) = daemon_with_team(false).await;
    d.api
        .send("web:team", "bob", "Bob", "plain message")
        .await
        .expect("accepted");
    let runs = runner.wait_runs("a run", |r| r.len() == 1).await;
    assert!(runs[0].prompt.contains(">plain message</message>"));
    d.stop().await;
}

#[tokio::test]
async fn unregistered_chats_are_stored_but_never_processed() {
    let runner = ScriptedRunner::new(vec![]);
    let d = start_daemon(runner.clone()).await;
    d.api
        .send("web:stranger", "x", "X", "@Andy hello?")
        .await
        .expect("accepted");
    assert_no_runs(&d.api, "unregistered chat").await;
    assert_eq!(
        d.api
            .messages("web:stranger")
            .await
            .expect("messages")
            .len(),
        1
    );
    d.stop().await;
}

#[tokio::test]
async fn sender_allowlist_drop_mode_discards_and_trigger_mode_stores_without_triggering() {
    let (d, runner) = daemon_with_team(true).await;
    register(d.root(), "web:club", "club", true);
    write_allowlist(
        &d,
        r#"{"default": {"allow": "*", "mode": "trigger"},
            "chats": {"web:team": {"allow": ["alice"], "mode": "drop"},
                      "web:club": {"allow": ["alice"], "mode": "trigger"}}}"#,
    );
    let (status, body) = d
        .api
        .post_raw(
            "/api/messages",
            r#"{"chat_jid":"web:team","sender":"mallory","sender_name":"M","text":"@Andy obey me"}"#,
        )
        .await
        .expect("post");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("allowlist")),
        "{body}"
    );
    assert!(
        d.api
            .messages("web:team")
            .await
            .expect("messages")
            .is_empty(),
        "dropped, not stored"
    );

    d.api
        .send("web:club", "mallory", "M", "@Andy obey me")
        .await
        .expect("stored");
    assert_no_runs(&d.api, "trigger from a sender who may not trigger").await;
    assert_eq!(
        d.api.messages("web:club").await.expect("messages").len(),
        1,
        "trigger mode stores"
    );

    d.api
        .send("web:club", "alice", "Alice", "@Andy hi")
        .await
        .expect("stored");
    let runs = runner.wait_runs("alice's trigger", |r| r.len() == 1).await;
    assert!(
        runs[0].prompt.contains("obey me") && runs[0].prompt.contains(">@Andy hi<"),
        "context included"
    );
    d.stop().await;
}

#[tokio::test]
async fn an_invalid_allowlist_blocks_triggers_is_reported_and_main_still_works() {
    let (d, runner) = daemon_with_team(true).await;
    write_allowlist(&d, r#"{"default": {"allow": "*", "mode": "sometimes"}}"#);
    d.api
        .send("web:team", "bob", "Bob", "@Andy help")
        .await
        .expect("stored");
    assert_no_runs(&d.api, "invalid allowlist fails closed").await;
    assert_eq!(
        d.api.messages("web:team").await.expect("messages").len(),
        1,
        "nothing dropped"
    );

    let (_, status) = d.api.get("/api/status").await.expect("status");
    assert_eq!(status["sender_allowlist"]["valid"], false);
    let description = status["sender_allowlist"]["description"]
        .as_str()
        .expect("description");
    assert!(
        description.contains("default.mode") && description.contains("invalid"),
        "{description}"
    );

    let doctor = tokio::process::Command::new(support::nanoclaw_bin())
        .args(["doctor", "--root"])
        .arg(d.root())
        .envs(support::test_env(d.root()))
        .output()
        .await
        .expect("doctor runs");
    let out = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        !doctor.status.success(),
        "doctor fails on an invalid allowlist: {out}"
    );
    assert!(
        out.contains("FAIL  senders") && out.contains("default.mode"),
        "{out}"
    );

    d.api
        .send("web:main", "me", "Me", "still there?")
        .await
        .expect("stored");
    let runs = runner.wait_runs("main runs", |r| r.len() == 1).await;
    assert_eq!(runs[0].chat_jid, "web:main");
    d.stop().await;
}
