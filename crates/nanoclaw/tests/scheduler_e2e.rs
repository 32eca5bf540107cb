//! Scheduled tasks end to end (SPEC §12): tasks created by the agent through IPC run as
//! full agent runs in real bubblewrap sandboxes against the fake model API, their output
//! reaches the chat, runs are logged and the next run advances.

mod support;

use std::time::Duration;

use jiff::Timestamp;
use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw::store::ScheduledTask;
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Recorded, Reply};
use nanoclaw_test_support::{DEADLINE, wait_for};
use serde_json::json;
use support::{TestDaemon, open_store, wait_bot_texts};

fn secrets() -> Secrets {
    Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-real")),
        ..Default::default()
    }
}

async fn start(root: tempfile::TempDir, fake: &FakeAnthropic) -> TestDaemon {
    let url = fake.url.clone();
    support::start_sandboxed_daemon_in(root, RuntimeKind::Bwrap, None, secrets(), vec![], |c| {
        c.anthropic_base_url = url;
        // Far longer than any wait below: an idle run only ends early because of a task.
        c.idle_timeout = Duration::from_secs(120);
        c.llm_attempts = 1;
        c.retry_base = Duration::from_millis(50);
        // The tasks below repeat every 1.5 s; real users get a one-minute minimum.
        c.min_task_interval = Duration::from_secs(1);
    })
    .await
}

fn messages_of(r: &Recorded) -> String {
    r.body["messages"].to_string()
}

fn run_logs(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("groups/main/logs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_task_from_ipc_runs_repeatedly_and_closes_the_idle_run() {
    let fake = FakeAnthropic::start(vec![
        Reply::tool(
            "schedule_task",
            json!({"prompt": "water the plants", "schedule_type": "interval", "schedule_value": "1500"}),
        ),
        Reply::text("Scheduled."),
        Reply::text("Plants watered (1)."),
        Reply::text("Plants watered (2)."),
    ])
    .await;
    let d = start(tempfile::tempdir().expect("temp dir"), &fake).await;
    d.api
        .send("web:main", "me", "Me", "water my plants every 1.5 s")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 3).await;
    assert_eq!(
        texts[..3],
        ["Scheduled.", "Plants watered (1).", "Plants watered (2)."]
    );

    let requests = fake.requests();
    assert!(
        messages_of(&requests[2]).contains("water the plants"),
        "the task run got the task's prompt"
    );
    // The idle message run was closed for the task (not left for IDLE_TIMEOUT = 120 s),
    // and every task run had a sandbox of its own.
    let root = d.root().to_path_buf();
    wait_for("three run logs", DEADLINE, || {
        let n = run_logs(&root);
        async move { (n >= 3).then_some(()) }
    })
    .await;

    let store = open_store(d.root());
    let task = store.tasks().expect("tasks").pop().expect("one task");
    assert_eq!(task.group_folder, "main");
    assert_eq!(task.schedule_type, "interval");
    let runs = wait_for("two logged task runs", DEADLINE, || {
        let runs = store.task_runs(&task.id).expect("runs");
        async move { (runs.len() >= 2).then_some(runs) }
    })
    .await;
    assert!(runs.iter().all(|r| r.status == "success"), "{runs:?}");
    assert_eq!(runs[1].result.as_deref(), Some("Plants watered (1)."));
    let task = store.task(&task.id).expect("read").expect("task");
    let next: Timestamp = task
        .next_run
        .as_deref()
        .expect("next run")
        .parse()
        .expect("ts");
    let last: Timestamp = task
        .last_run
        .as_deref()
        .expect("last run")
        .parse()
        .expect("ts");
    assert!(next > last, "next_run advanced past the last run");
    assert!(
        task.last_result
            .as_deref()
            .is_some_and(|r| r.starts_with("Plants watered"))
    );

    // `tasks list` and the API show it.
    let (ok, out, err) = support::cli(d.root(), &["tasks", "list", "--json"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("water the plants") && out.contains("Plants watered"),
        "{out}"
    );
    d.api.get("/api/tasks").await.expect("tasks");
    // Stop it so the test ends quietly.
    let (ok, _, err) = support::cli(d.root(), &["tasks", "cancel", &task.id]).await;
    assert!(ok, "{err}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_tasks_resume_the_groups_session_and_isolated_ones_start_fresh() {
    let past = "2020-01-01T09:00:00";
    let fake = FakeAnthropic::start(vec![
        // Message run 1.
        Reply::tool(
            "schedule_task",
            json!({"prompt": "what is my favourite colour?", "schedule_type": "once", "schedule_value": past, "context_mode": "group"}),
        ),
        Reply::text("Noted."),
        // The group task.
        Reply::text("Your favourite colour is teal."),
        // Message run 2.
        Reply::tool(
            "schedule_task",
            json!({"prompt": "isolated check-in", "schedule_type": "once", "schedule_value": past, "context_mode": "isolated"}),
        ),
        Reply::text("Will do."),
        // The isolated task.
        Reply::text("Checked in."),
        // Message run 3.
        Reply::text("You told me teal."),
    ])
    .await;
    let d = start(tempfile::tempdir().expect("temp dir"), &fake).await;
    d.api
        .send(
            "web:main",
            "me",
            "Me",
            "my favourite colour is teal; ask me later",
        )
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 2).await;
    assert_eq!(texts, ["Noted.", "Your favourite colour is teal."]);
    let group_task = messages_of(&fake.requests()[2]);
    assert!(
        group_task.contains("my favourite colour is teal")
            && group_task.contains("what is my favourite colour?"),
        "a group task continues the group's conversation: {group_task}"
    );

    d.api
        .send("web:main", "me", "Me", "also check in on your own")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 4).await;
    assert_eq!(texts[2..], ["Will do.", "Checked in."]);
    let isolated = messages_of(&fake.requests()[5]);
    assert!(
        isolated.contains("isolated check-in") && !isolated.contains("teal"),
        "an isolated task starts fresh: {isolated}"
    );

    d.api
        .send("web:main", "me", "Me", "what did I tell you?")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 5).await;
    assert_eq!(texts[4], "You told me teal.");
    let later = messages_of(&fake.requests()[6]);
    assert!(
        later.contains("teal") && !later.contains("Checked in."),
        "the group's session continues without the isolated task's turns: {later}"
    );
    // Both one-time tasks are done.
    let store = open_store(d.root());
    let statuses: Vec<String> = store
        .tasks()
        .expect("tasks")
        .into_iter()
        .map(|t| t.status)
        .collect();
    assert_eq!(statuses, ["completed", "completed"]);
    d.stop().await;
}

fn task(id: &str, status: &str, next_run: Timestamp) -> ScheduledTask {
    ScheduledTask {
        id: id.into(),
        group_folder: "main".into(),
        chat_jid: "web:main".into(),
        prompt: format!("task {id}"),
        schedule_type: "interval".into(),
        schedule_value: "60000".into(),
        context_mode: "isolated".into(),
        next_run: Some(nanoclaw::clock::format_utc(next_run)),
        last_run: None,
        last_result: None,
        status: status.into(),
        created_at: nanoclaw::clock::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_an_overdue_task_runs_once_and_a_paused_one_never() {
    let fake = FakeAnthropic::start(vec![
        Reply::text("Caught up."),
        Reply::text("Resumed and ran."),
    ])
    .await;
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    // Missed 60 one-minute slots while the daemon was down.
    let due = Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(3600))
        .expect("time");
    {
        let store = open_store(root.path());
        let main = nanoclaw::store::RegisteredGroup {
            jid: "web:main".into(),
            name: "main".into(),
            folder: "main".into(),
            trigger_pattern: "@Andy".into(),
            added_at: nanoclaw::clock::now(),
            container_config: None,
            requires_trigger: false,
            is_main: true,
        };
        store.register_group(&main).expect("main");
        store
            .insert_task(&task("overdue", "active", due))
            .expect("task");
        store
            .insert_task(&task("paused", "paused", due))
            .expect("task");
        let mut orphan = task("orphan", "active", due);
        orphan.group_folder = "gone".into();
        orphan.chat_jid = "tg:gone".into();
        store.insert_task(&orphan).expect("task");
    }
    let d = start(root, &fake).await;
    assert_eq!(wait_bot_texts(&d.api, "web:main", 1).await, ["Caught up."]);
    let store = open_store(d.root());
    let runs = wait_for("the overdue task's run is logged", DEADLINE, || {
        let runs = store.task_runs("overdue").expect("runs");
        async move { (!runs.is_empty()).then_some(runs) }
    })
    .await;
    assert_eq!(runs.len(), 1, "run once, not once per missed slot");
    let overdue = store.task("overdue").expect("r").expect("task");
    let next: Timestamp = overdue
        .next_run
        .as_deref()
        .expect("next")
        .parse()
        .expect("ts");
    assert!(next > Timestamp::now(), "continues on schedule from now");
    // Stored with millisecond precision.
    let due: Timestamp = nanoclaw::clock::format_utc(due).parse().expect("ts");
    let offset = next.duration_since(due).as_millis();
    assert_eq!(offset % 60_000, 0, "still on its original one-minute grid");
    assert_eq!(fake.requests().len(), 1, "the paused task did not run");
    assert!(store.task_runs("paused").expect("runs").is_empty());
    let orphan = store.task("orphan").expect("r").expect("task");
    assert_eq!(
        orphan.status, "paused",
        "a task whose group is gone is paused"
    );
    assert!(
        orphan
            .last_result
            .as_deref()
            .is_some_and(|r| r.contains("not registered")),
        "{orphan:?}"
    );

    // Resuming through the CLI reaches the running daemon, whose scheduler runs the
    // (overdue) task at once rather than at its next wake-up (up to 5 minutes away).
    let (ok, out, err) = support::cli(d.root(), &["tasks", "resume", "paused"]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 2).await[1],
        "Resumed and ran."
    );
    d.stop().await;
}
