//! SPEC §6 and §5.5 through the real daemon: the concurrency cap with FIFO order,
//! follow-ups into live runs, retries with backoff, and no retry after a reply was sent.

mod support;

use support::{ScriptedRunner, Step, register, start_daemon_with, wait_bot_texts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_of_two_with_five_triggered_groups_runs_all_in_arrival_order() {
    let (runner, gate) = ScriptedRunner::gated(vec![]);
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join("store")).expect("store dir");
    for i in 1..=5 {
        register(root.path(), &format!("web:g{i}"), &format!("g{i}"), true);
    }
    let d = start_daemon_with(runner.clone(), root, |c| c.max_concurrent_containers = 2).await;
    for i in 1..=5 {
        d.api
            .send(&format!("web:g{i}"), "u", "U", "@Andy go")
            .await
            .expect("accepted");
    }
    runner.wait_runs("two runs", |r| r.len() == 2).await;
    let (_, status) = d.api.get("/api/status").await.expect("status");
    assert_eq!(
        status["queue"]["waiting"],
        serde_json::json!(["web:g3", "web:g4", "web:g5"])
    );

    // A message for a running group goes to that run, not to a new one.
    d.api
        .send("web:g1", "u", "U", "@Andy and also this")
        .await
        .expect("accepted");

    // One permit lets one run answer; it goes idle, and because groups are waiting it is
    // closed at once, so exactly one waiting group starts. The next group must be g3,
    // then g4, then g5.
    for n in 3..=5 {
        gate.add_permits(1);
        runner
            .wait_runs("the next waiting group to start", |r| r.len() == n)
            .await;
    }
    gate.add_permits(2);
    let runs = runner.runs();
    let order: Vec<&str> = runs.iter().map(|r| r.chat_jid.as_str()).collect();
    assert_eq!(order, ["web:g1", "web:g2", "web:g3", "web:g4", "web:g5"]);
    assert!(
        runner.max_running() <= 2,
        "never more than 2 at once (saw {})",
        runner.max_running()
    );
    for i in 1..=5 {
        wait_bot_texts(&d.api, &format!("web:g{i}"), 1).await;
    }
    let g1 = runner
        .runs()
        .into_iter()
        .find(|r| r.chat_jid == "web:g1")
        .expect("g1 ran");
    let all_g1_input = format!("{}{}", g1.prompt, g1.follow_ups.join(""));
    assert!(
        all_g1_input.contains("and also this"),
        "the extra message reached g1's run"
    );
    assert_eq!(
        runs.iter().filter(|r| r.chat_jid == "web:g1").count(),
        1,
        "no second run for g1"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_is_retried_with_the_same_messages() {
    let runner = ScriptedRunner::new(vec![
        Step::Fail("sandbox crashed".into()),
        Step::Fail("sandbox crashed again".into()),
        Step::Reply(vec!["finally".into()]),
    ]);
    let d = start_daemon_with(
        runner.clone(),
        tempfile::tempdir().expect("temp dir"),
        |_| {},
    )
    .await;
    d.api
        .send("web:main", "u", "U", "please answer")
        .await
        .expect("accepted");
    let runs = runner.wait_runs("two retries", |r| r.len() == 3).await;
    assert_eq!(
        runs[0].prompt, runs[1].prompt,
        "the retry sees the same messages"
    );
    assert_eq!(runs[1].prompt, runs[2].prompt);
    assert_eq!(wait_bot_texts(&d.api, "web:main", 1).await, ["finally"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_already_replied_is_not_retried() {
    let runner = ScriptedRunner::new(vec![
        Step::ReplyThenFail("here is your answer".into(), "then it crashed".into()),
        Step::Reply(vec!["second run".into()]),
    ]);
    let d = start_daemon_with(
        runner.clone(),
        tempfile::tempdir().expect("temp dir"),
        |_| {},
    )
    .await;
    d.api
        .send("web:main", "u", "U", "question")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 1).await,
        ["here is your answer"]
    );
    // A new message is the proof: its run must contain only the new message, and no
    // run in between may have repeated the answered one.
    d.api
        .send("web:main", "u", "U", "next question")
        .await
        .expect("accepted");
    let runs = runner.wait_runs("the next run", |r| r.len() == 2).await;
    assert!(
        !runs[1].prompt.contains(">question<"),
        "answered message not retried: {}",
        runs[1].prompt
    );
    assert!(runs[1].prompt.contains(">next question<"));
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 2).await,
        ["here is your answer", "second run"],
        "no duplicate reply"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_all_retries_fail_the_user_is_told_and_the_message_stays_pending() {
    let failures = (0..6)
        .map(|_| Step::Fail("no sandbox available".into()))
        .collect();
    let runner = ScriptedRunner::new(failures);
    let d = start_daemon_with(
        runner.clone(),
        tempfile::tempdir().expect("temp dir"),
        |c| {
            c.retry_base = std::time::Duration::from_millis(10);
        },
    )
    .await;
    d.api
        .send("web:main", "u", "U", "hello?")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(
        texts[0].contains("could not answer") && texts[0].contains("no sandbox available"),
        "{texts:?}"
    );
    assert_eq!(runner.runs().len(), 6, "one run and five retries");
    // The message was never answered, so the next message brings it along.
    d.api
        .send("web:main", "u", "U", "anyone?")
        .await
        .expect("accepted");
    let runs = runner
        .wait_runs("run after giving up", |r| r.len() == 7)
        .await;
    assert!(runs[6].prompt.contains(">hello?<") && runs[6].prompt.contains(">anyone?<"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_the_agent_never_read_is_retried_after_a_crash() {
    let (runner, gate) = ScriptedRunner::gated(vec![
        Step::ReplyToFirstThenCrash("answer to q1".into()),
        Step::Reply(vec!["answer to q2".into()]),
    ]);
    let d = start_daemon_with(
        runner.clone(),
        tempfile::tempdir().expect("temp dir"),
        |_| {},
    )
    .await;
    d.api
        .send("web:main", "u", "U", "q1")
        .await
        .expect("accepted");
    runner.wait_runs("the first run", |r| r.len() == 1).await;
    d.api
        .send("web:main", "u", "U", "q2")
        .await
        .expect("accepted");
    gate.add_permits(2);
    let runs = runner.wait_runs("the retry", |r| r.len() == 2).await;
    assert!(
        runs[1].prompt.contains(">q2</message>"),
        "q2 retried: {}",
        runs[1].prompt
    );
    assert!(
        !runs[1].prompt.contains(">q1</message>"),
        "q1 was answered: {}",
        runs[1].prompt
    );
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 2).await,
        ["answer to q1", "answer to q2"]
    );
    d.stop().await;
}
