//! The web app in a real headless Chromium (SPEC §14): sign in with the link `nanoclaw
//! ui` prints, send a message in the web chat and see the agent's reply arrive live
//! (real bwrap sandbox, fake model API), add a group, open a run log, pause a task,
//! read usage and status; the link is
//! refused on second use. Screenshots of every page at 1280 and 360 px go to
//! `target/ui-screenshots/`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use nanoclaw_test_support::webdriver::{self, Browser};
use serde_json::json;

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots")
}

async fn login_link(d: &support::TestDaemon) -> String {
    let v: serde_json::Value = d
        .api
        .client()
        .post(format!("{}/api/login-codes", d.api.base))
        .bearer_auth(&d.api.token)
        .send()
        .await
        .expect("login code")
        .json()
        .await
        .expect("JSON");
    let url = v["url"].as_str().expect("url").to_string();
    // The link names 127.0.0.1 and the daemon's port, as the API base does.
    assert!(url.starts_with(&format!("{}/login#", d.api.base)), "{url}");
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_chats_with_a_sandboxed_agent_and_pauses_a_task() {
    assert!(
        webdriver::available(),
        "chromium and chromium-driver are needed (scripts/test-tools.sh installs them)"
    );
    // The agent runs a tool first, long enough for the page's status poll (every 3 s)
    // to show it at least twice.
    let fake = FakeAnthropic::start(vec![
        Reply::tool("Bash", json!({"command": "sleep 7"})),
        Reply::text("Hello from the sandbox."),
    ])
    .await;
    let url = fake.url.clone();
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-web")),
        ..Default::default()
    };
    let d = support::start_sandboxed_daemon(RuntimeKind::Bwrap, None, secrets, |c| {
        c.anthropic_base_url = url;
        // The run ends soon after its reply, so its log is there for the runs page.
        c.idle_timeout = Duration::from_millis(500);
    })
    .await;
    support::open_store(d.root())
        .insert_task(&nanoclaw::store::ScheduledTask {
            id: "task-plants".into(),
            group_folder: "main".into(),
            chat_jid: "web:main".into(),
            prompt: "Remind me to water the plants".into(),
            schedule_type: "cron".into(),
            schedule_value: "0 9 * * *".into(),
            context_mode: "group".into(),
            next_run: Some("2099-01-01T09:00:00.000Z".into()),
            last_run: None,
            last_result: None,
            status: "active".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
        })
        .expect("task");

    let browser = Browser::start(1280, 900).await;
    let link = login_link(&d).await;
    browser.goto(&link).await;
    browser
        .wait_text("#chat-title", "the web chat open", |t| {
            t.contains("web:main")
        })
        .await;
    // What the first page load cost, from the browser's own timing.
    let timing = browser
        .eval(
            "const n = performance.getEntriesByType('navigation')[0];
             const r = performance.getEntriesByType('resource');
             return { bytes: n.transferSize + r.reduce((a, e) => a + e.transferSize, 0),
                      body: n.encodedBodySize + r.reduce((a, e) => a + e.encodedBodySize, 0),
                      interactive_ms: n.domInteractive, loaded_ms: n.loadEventEnd,
                      remote: r.filter(e => !e.name.startsWith(location.origin)).length };",
            json!([]),
        )
        .await;
    println!("first page load: {timing}");
    assert_eq!(
        timing["remote"], 0,
        "nothing fetched from elsewhere: {timing}"
    );

    browser.type_into("#compose-text", "hi from chromium").await;
    browser.click("#compose button[type=submit]").await;
    browser
        .wait_text("#chat-working", "the tool shown while it runs", |t| {
            t.contains("running Bash")
        })
        .await;
    let messages = browser
        .wait_text("#messages", "the agent's reply, live", |t| {
            t.contains("Hello from the sandbox.")
        })
        .await;
    assert!(messages.contains("hi from chromium"), "{messages}");
    let prompt = fake.wait_requests(1).await[0].all_text();
    assert!(
        prompt.contains("hi from chromium"),
        "the message reached the agent: {prompt}"
    );

    let logs = d.root().join("groups/main/logs");
    nanoclaw_test_support::wait_for("the run's log", nanoclaw_test_support::DEADLINE, || {
        let logs = logs.clone();
        async move {
            let n = std::fs::read_dir(&logs).ok()?.count();
            (n > 0).then_some(())
        }
    })
    .await;
    for width in [1280, 360] {
        browser.set_size(width, 900).await;
        browser.goto(&format!("{}/#/chat", d.api.base)).await;
        browser
            .wait_text("#messages", "the chat", |t| {
                t.contains("Hello from the sandbox.")
            })
            .await;
        browser
            .screenshot(&screenshots().join(format!("chat-{width}.png")))
            .await;
        browser.goto(&format!("{}/#/tasks", d.api.base)).await;
        browser
            .wait_text("#task-rows", "the task", |t| t.contains("water the plants"))
            .await;
        browser
            .screenshot(&screenshots().join(format!("tasks-{width}.png")))
            .await;
        browser.goto(&format!("{}/#/groups", d.api.base)).await;
        browser
            .wait_text("#group-rows", "the groups", |t| t.contains("web:main"))
            .await;
        browser
            .screenshot(&screenshots().join(format!("groups-{width}.png")))
            .await;
        browser.goto(&format!("{}/#/usage", d.api.base)).await;
        browser
            .wait_text("#usage-rows", "the usage", |t| t.contains("main"))
            .await;
        browser
            .screenshot(&screenshots().join(format!("usage-{width}.png")))
            .await;
        browser.goto(&format!("{}/#/runs", d.api.base)).await;
        browser
            .wait_text("#run-rows", "the runs", |t| t.contains("main"))
            .await;
        browser
            .screenshot(&screenshots().join(format!("runs-{width}.png")))
            .await;
        browser.goto(&format!("{}/#/status", d.api.base)).await;
        browser
            .wait_text("#status-list", "the status", |t| t.contains("bwrap"))
            .await;
        browser
            .screenshot(&screenshots().join(format!("status-{width}.png")))
            .await;
    }

    // Add a group from its page, with the CLI's validation: a bad folder is refused
    // with the rule, a good one is registered.
    browser.set_size(1280, 900).await;
    browser.goto(&format!("{}/#/groups", d.api.base)).await;
    browser.type_into("#g-jid", "web:kitchen").await;
    browser.type_into("#g-name", "Kitchen").await;
    browser.type_into("#g-folder", "../escape").await;
    browser.click("#group-save").await;
    let refused = browser
        .wait_text("#notice", "the refusal", |t| t.starts_with("Not saved"))
        .await;
    assert!(refused.contains("starts with `.`"), "{refused}");
    browser
        .eval(
            "document.getElementById('g-folder').value = ''; return null;",
            json!([]),
        )
        .await;
    browser.type_into("#g-folder", "kitchen").await;
    browser.click("#group-save").await;
    browser
        .wait_text("#group-rows", "the new group", |t| {
            t.contains("web:kitchen")
        })
        .await;
    let kitchen = support::open_store(d.root())
        .registered_group("web:kitchen")
        .expect("read")
        .expect("registered");
    assert_eq!(kitchen.folder, "kitchen");
    // A run's log opens from the runs page.
    browser.goto(&format!("{}/#/runs", d.api.base)).await;
    browser.click("#run-rows button").await;
    browser
        .wait_text("#run-log", "the run log", |t| t.contains("outcome:"))
        .await;

    // Pause the task from its page; the store says so.
    browser.goto(&format!("{}/#/tasks", d.api.base)).await;
    browser
        .click("button[aria-label='pause task task-plants']")
        .await;
    browser
        .wait_text("#task-rows", "the task paused", |t| t.contains("paused"))
        .await;
    let task = support::open_store(d.root())
        .task("task-plants")
        .expect("read")
        .expect("task");
    assert_eq!(task.status, "paused");

    // The link again, in a fresh browser: used already.
    let second = Browser::start(1280, 900).await;
    second.goto(&link).await;
    let notice = second
        .wait_text("#notice", "the refusal", |t| !t.is_empty())
        .await;
    assert!(notice.contains("used already"), "{notice}");
    second.goto(&format!("{}/#/chat", d.api.base)).await;
    second
        .wait_text("#page-signin", "the sign-in page", |t| {
            t.contains("nanoclaw ui")
        })
        .await;
    d.stop().await;
}

/// Files both ways in the browser (issue 17): a file picked in the compose form is
/// uploaded into the group's inbox and shown in the chat; a file the agent sends
/// (`send_file`, here its IPC file) comes with a download button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_both_ways_in_the_web_app() {
    assert!(
        webdriver::available(),
        "chromium and chromium-driver are needed (scripts/test-tools.sh installs them)"
    );
    let runner = support::ScriptedRunner::new(vec![support::Step::ReplyAndEnd(vec![
        "Thanks for the file.".into(),
    ])]);
    let d = support::start_daemon(runner.clone()).await;
    let browser = Browser::start(1280, 900).await;
    browser.goto(&login_link(&d).await).await;
    browser
        .wait_text("#chat-title", "the web chat open", |t| {
            t.contains("web:main")
        })
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let picked = dir.path().join("shopping list.txt");
    std::fs::write(&picked, "eggs, bread").expect("write");
    browser
        .type_into("#compose-file", &picked.display().to_string())
        .await;
    browser.type_into("#compose-text", "what do I need?").await;
    browser.click("#compose button[type=submit]").await;
    browser
        .wait_text("#messages", "the upload shown", |t| {
            t.contains("[attachment: /workspace/group/inbox/shopping_list.txt]")
        })
        .await;
    let runs = runner.wait_runs("one run", |r| !r.is_empty()).await;
    assert!(
        runs[0].prompt.contains("what do I need?")
            && runs[0]
                .prompt
                .contains("/workspace/group/inbox/shopping_list.txt"),
        "{}",
        runs[0].prompt
    );
    assert_eq!(
        std::fs::read_to_string(d.root().join("groups/main/inbox/shopping_list.txt"))
            .expect("saved"),
        "eggs, bread"
    );

    std::fs::write(d.root().join("groups/main/report.csv"), "a,b\n1,2\n").expect("write");
    let ipc = d.root().join("data/ipc/main/messages");
    std::fs::create_dir_all(&ipc).expect("ipc");
    let request = json!({"type": "file", "chatJid": "web:main", "path": "report.csv", "caption": "your report"});
    std::fs::write(ipc.join(".r.tmp"), request.to_string()).expect("write");
    std::fs::rename(ipc.join(".r.tmp"), ipc.join("2-r.json")).expect("rename");
    let button = browser
        .wait_text("#messages button.file", "the download button", |t| {
            t.contains("report.csv")
        })
        .await;
    assert_eq!(button, "Download report.csv (1 KB)");
    // After a reload the history shows it too.
    browser.goto(&format!("{}/#/chat", d.api.base)).await;
    let again = browser
        .wait_text(
            "#messages button.file",
            "the download button from the history",
            |t| t.contains("report.csv"),
        )
        .await;
    assert_eq!(again, "Download report.csv (1 KB)");
    browser
        .screenshot(&screenshots().join("chat-files-1280.png"))
        .await;
    d.stop().await;
}
