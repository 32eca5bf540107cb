//! The web channel end to end, in-process: a message to `web:main` reaches the runner as
//! exactly the SPEC §5 prompt, and the reply shows up in the chat and on the event stream
//! with `<internal>` parts removed.

mod support;

use std::time::Duration;

use jiff::Timestamp;
use nanoclaw_test_support::DEADLINE;
use support::{ScriptedRunner, Step, start_daemon, wait_bot_texts};

fn local(ts: &str) -> String {
    let ts: Timestamp = ts.parse().expect("stored timestamp parses");
    ts.to_zoned_datetime(jiff::tz::TimeZone::get("Europe/Berlin").expect("zone"))
        .strftime("%b %-d, %Y, %-I:%M %p")
        .to_string()
}

#[tokio::test]
async fn message_to_main_reaches_the_runner_as_the_spec_prompt_and_the_reply_comes_back() {
    let runner = ScriptedRunner::new(vec![Step::Reply(vec![
        "<internal>thinking about it</internal>Hello <b>Jo</b> & all".into(),
    ])]);
    let d = start_daemon(runner.clone()).await;
    let mut events = d.api.events("", None).await.expect("event stream");

    d.api
        .send(
            "web:main",
            "jo-1",
            "Jo \"the\" <Boss> & co",
            "is 1 < 2 && 3 > \"2\"?",
        )
        .await
        .expect("accepted");

    let runs = runner.wait_runs("one run", |r| !r.is_empty()).await;
    let stored = d.api.messages("web:main").await.expect("messages");
    let ts = stored[0]["timestamp"].as_str().expect("timestamp");
    assert_eq!(
        runs[0].prompt,
        format!(
            "<context timezone=\"Europe/Berlin\" />\n<messages>\n\
             <message sender=\"Jo &quot;the&quot; &lt;Boss&gt; &amp; co\" time=\"{}\">\
             is 1 &lt; 2 &amp;&amp; 3 &gt; &quot;2&quot;?</message>\n</messages>",
            local(ts)
        )
    );
    assert_eq!(runs[0].chat_jid, "web:main");
    assert_eq!(runs[0].folder, "main");
    assert_eq!(runs[0].session_id, None);

    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert_eq!(texts, ["Hello <b>Jo</b> & all"]);

    let event = events.next(DEADLINE).await.expect("an event");
    let data: serde_json::Value = serde_json::from_str(&event.data).expect("event JSON");
    assert_eq!(data["chat_jid"], "web:main");
    assert_eq!(data["text"], "Hello <b>Jo</b> & all");
    assert!(data["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(event.id.is_some(), "events carry an id for Last-Event-ID");

    // Oldest first, user then assistant.
    let all = d.api.messages("web:main").await.expect("messages");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["is_bot_message"], false);
    assert_eq!(all[1]["is_bot_message"], true);
    d.stop().await;
}

#[tokio::test]
async fn internal_only_output_sends_nothing_and_the_session_is_resumed() {
    let runner = ScriptedRunner::new(vec![
        Step::Reply(vec!["<internal>nothing to say</internal>".into()]),
        Step::Reply(vec!["second answer".into()]),
    ]);
    let d = start_daemon_short_idle(runner.clone()).await;
    d.api
        .send("web:main", "u", "U", "first")
        .await
        .expect("accepted");
    runner.wait_runs("first run", |r| r.len() == 1).await;
    // The idle run closes after the short idle timeout; the next message starts run 2.
    wait_until_no_active_runs(&d).await;
    d.api
        .send("web:main", "u", "U", "second")
        .await
        .expect("accepted");
    let runs = runner.wait_runs("second run", |r| r.len() == 2).await;
    assert!(runs[1].prompt.contains(">second</message>"));
    assert!(
        !runs[1].prompt.contains(">first</message>"),
        "handled messages are not repeated"
    );
    assert_eq!(
        runs[1].session_id.as_deref(),
        Some("session-1"),
        "the group's session is resumed"
    );
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 1).await,
        ["second answer"]
    );
    d.stop().await;
}

#[tokio::test]
async fn event_stream_replays_what_a_reconnecting_client_missed() {
    let runner = ScriptedRunner::new(vec![Step::Reply(vec![
        "one".into(),
        "two".into(),
        "three".into(),
    ])]);
    let d = start_daemon(runner.clone()).await;
    let mut events = d
        .api
        .events("?chat_jid=web:main", None)
        .await
        .expect("stream");
    d.api
        .send("web:main", "u", "U", "count")
        .await
        .expect("accepted");
    let first = events.next(DEADLINE).await.expect("first event");
    wait_bot_texts(&d.api, "web:main", 3).await;
    drop(events);
    let mut again = d
        .api
        .events("?chat_jid=web:main", first.id.as_deref())
        .await
        .expect("reconnect");
    let texts: Vec<String> = [
        again.next(DEADLINE).await.expect("replayed"),
        again.next(DEADLINE).await.expect("replayed"),
    ]
    .iter()
    .map(|e| serde_json::from_str::<serde_json::Value>(&e.data).expect("json")["text"].to_string())
    .collect();
    assert_eq!(texts, ["\"two\"", "\"three\""]);
    assert!(
        again.next(Duration::from_millis(200)).await.is_err(),
        "nothing is replayed twice"
    );
    d.stop().await;
}

async fn start_daemon_short_idle(runner: std::sync::Arc<ScriptedRunner>) -> support::TestDaemon {
    support::start_daemon_with(runner, tempfile::tempdir().expect("temp dir"), |c| {
        c.idle_timeout = Duration::from_millis(100);
    })
    .await
}

async fn wait_until_no_active_runs(d: &support::TestDaemon) {
    nanoclaw_test_support::wait_for("the idle run to close", DEADLINE, || async {
        let (_, v) = d.api.get("/api/status").await.ok()?;
        (v["queue"]["active"] == serde_json::json!([])).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_replay_past_many_other_chats_reaches_live_events() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join("store")).expect("store dir");
    {
        let store = nanoclaw::store::Store::open(&root.path().join("store/messages.db"), "Andy")
            .expect("store");
        for i in 0..600 {
            let c = store
                .commit_reply("web:other", &format!("other {i}"), "Andy", None)
                .expect("commit");
            store.mark_delivered(c.outbox_id).expect("delivered");
        }
    }
    let runner = ScriptedRunner::new(vec![Step::Reply(vec!["for main".into()])]);
    let d = support::start_daemon_with(runner, root, |_| {}).await;
    let mut events = d
        .api
        .events("?chat_jid=web:main", Some("0"))
        .await
        .expect("stream");
    d.api
        .send("web:main", "u", "U", "hello")
        .await
        .expect("accepted");
    let event = events.next(DEADLINE).await.expect("the live event arrives");
    let data: serde_json::Value = serde_json::from_str(&event.data).expect("json");
    assert_eq!(data["text"], "for main");
    assert_eq!(event.id.as_deref(), Some("601"), "ids are delivery numbers");
    d.stop().await;
}

/// A file an agent sends to a web chat (`send_file`, here the IPC file it writes) comes
/// on the event stream with a download link; the download is the host's copy, always an
/// attachment that the browser never renders in this origin, and only with the token.
#[tokio::test]
async fn a_file_sent_to_a_web_chat_is_downloaded_as_an_attachment() {
    let d = start_daemon(ScriptedRunner::new(vec![])).await;
    let mut events = d.api.events("", None).await.expect("event stream");
    let html = b"<html><script>alert(document.cookie)</script></html>";
    std::fs::write(d.root().join("groups/main/page \"x\".html"), html).expect("write");
    let ipc = d.root().join("data/ipc/main/messages");
    std::fs::create_dir_all(&ipc).expect("ipc");
    let request = serde_json::json!({"type": "file", "chatJid": "web:main",
        "path": "page \"x\".html", "caption": "the page"});
    std::fs::write(ipc.join(".1.tmp"), request.to_string()).expect("write");
    std::fs::rename(ipc.join(".1.tmp"), ipc.join("1-a.json")).expect("rename");

    let event = events.next(DEADLINE).await.expect("an event");
    let data: serde_json::Value = serde_json::from_str(&event.data).expect("event JSON");
    assert_eq!(data["text"], "the page");
    assert_eq!(data["file"]["name"], "page \"x\".html");
    assert_eq!(data["file"]["size"], html.len());
    let url = data["file"]["url"].as_str().expect("url");
    assert!(url.starts_with("/api/files/"), "{url}");
    // The group changing its file afterwards does not change what is downloaded.
    std::fs::write(d.root().join("groups/main/page \"x\".html"), "changed").expect("write");

    let response = d
        .api
        .client()
        .get(format!("{}{url}", d.api.base))
        .bearer_auth(&d.api.token)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(header("content-type"), "application/octet-stream");
    assert_eq!(
        header("content-disposition"),
        "attachment; filename=\"page _x_.html\"; filename*=UTF-8''page%20%22x%22.html"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-security-policy").starts_with("sandbox"));
    assert_eq!(response.bytes().await.expect("body").as_ref(), html);

    let anonymous = d
        .api
        .client()
        .get(format!("{}{url}", d.api.base))
        .send()
        .await
        .expect("download");
    assert_eq!(anonymous.status(), 401);
    let (status, v) = d.api.get("/api/files/999999").await.expect("get");
    assert_eq!(status, 404, "{v}");
    let (status, _) = d.api.get("/api/files/..%2F..%2Fetc").await.expect("get");
    assert_eq!(status, 400);
    let stored = d.api.messages("web:main").await.expect("messages");
    assert_eq!(stored[0]["content"], "[file: page \"x\".html] the page");
    // The history carries the same download link as the event did.
    assert_eq!(stored[0]["file"]["url"], url);
    assert_eq!(stored[0]["file"]["name"], "page \"x\".html");
    d.stop().await;
}

/// A file a user sends from the web app lands in the group's inbox and the agent is
/// told where; a chat without a group, an empty or oversized file and a missing name
/// get clear errors and store nothing (issue 17).
#[tokio::test]
async fn a_file_sent_from_the_web_app_lands_in_the_inbox() {
    let runner = ScriptedRunner::new(vec![Step::ReplyAndEnd(vec!["Got it.".into()])]);
    let d = start_daemon(runner.clone()).await;
    let upload = |jid: &str, query: &str, body: Vec<u8>| {
        d.api
            .client()
            .post(format!("{}/api/chats/{jid}/files?{query}", d.api.base))
            .bearer_auth(&d.api.token)
            .body(body)
            .send()
    };
    let ok = "name=notes%20today.txt&sender=jo&sender_name=Jo&text=read%20this";
    let response = upload("web:main", ok, b"buy milk".to_vec())
        .await
        .expect("upload");
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.expect("json");
    assert_eq!(answer["path"], "/workspace/group/inbox/notes_today.txt");
    let runs = runner.wait_runs("one run", |r| !r.is_empty()).await;
    assert!(
        runs[0]
            .prompt
            .contains("read this\n[attachment: /workspace/group/inbox/notes_today.txt (1 KB)]"),
        "{}",
        runs[0].prompt
    );
    assert_eq!(
        std::fs::read(d.root().join("groups/main/inbox/notes_today.txt")).expect("saved"),
        b"buy milk"
    );
    assert_eq!(wait_bot_texts(&d.api, "web:main", 1).await, ["Got it."]);

    for (jid, query, body, status, words) in [
        (
            "web:nobody",
            ok,
            b"x".to_vec(),
            404,
            "no group is registered for web:nobody",
        ),
        ("web:main", ok, Vec::new(), 400, "the file is empty"),
        (
            "web:main",
            "sender=jo&sender_name=Jo",
            b"x".to_vec(),
            400,
            "give the file's name",
        ),
        ("tg:1", ok, b"x".to_vec(), 400, "must be a web chat"),
        (
            "web:main",
            ok,
            vec![0u8; (25 << 20) + 1],
            413,
            "larger than 25 MB",
        ),
    ] {
        let response = upload(jid, query, body).await.expect("upload");
        assert_eq!(response.status(), status, "{jid} {query}");
        let v: serde_json::Value = response.json().await.unwrap_or_default();
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(words)),
            "{words}: {v}"
        );
    }
    assert_eq!(
        std::fs::read_dir(d.root().join("groups/main/inbox"))
            .expect("inbox")
            .count(),
        1,
        "nothing else was saved"
    );
    d.stop().await;
}
