//! Crash safety: a message answered with 202 is in the store, and after `kill -9` of the
//! real daemon and a restart, pending messages of registered groups are processed.

mod support;

use support::{BinaryDaemon, ScriptedRunner, Step, register, start_daemon_with, wait_bot_texts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_accepted_before_kill_9_is_processed_after_restart() {
    let root = tempfile::tempdir().expect("temp dir");
    // The real binary has no runner, so nothing can answer before the kill; a long retry
    // backoff keeps it from giving up (and saying so in the chat) first.
    let d = BinaryDaemon::spawn(root.path(), &[("NANOCLAW_RETRY_BASE_MS", "600000")]).await;
    register(root.path(), "web:team", "team", true);
    d.api
        .send("web:main", "me", "Me", "remember the milk")
        .await
        .expect("202");
    d.api
        .send("web:team", "bob", "Bob", "just chatting")
        .await
        .expect("202");
    d.api
        .send("web:team", "bob", "Bob", "@Andy what did we say?")
        .await
        .expect("202");
    d.api
        .send("web:stranger", "x", "X", "@Andy unregistered")
        .await
        .expect("202");
    d.kill9().await;

    let runner = ScriptedRunner::new(vec![
        Step::Reply(vec!["answer one".into()]),
        Step::Reply(vec!["answer two".into()]),
    ]);
    let restarted = start_daemon_with(runner.clone(), root, |_| {}).await;
    let runs = runner
        .wait_runs("both registered chats", |r| r.len() == 2)
        .await;
    let main = runs
        .iter()
        .find(|r| r.chat_jid == "web:main")
        .expect("main ran");
    assert!(
        main.prompt.contains(">remember the milk</message>"),
        "{}",
        main.prompt
    );
    let team = runs
        .iter()
        .find(|r| r.chat_jid == "web:team")
        .expect("team ran");
    assert!(
        team.prompt.contains(">just chatting</message>")
            && team.prompt.contains("what did we say?")
    );
    assert!(
        runs.iter().all(|r| r.chat_jid != "web:stranger"),
        "unregistered chats never run"
    );
    let replies = [
        wait_bot_texts(&restarted.api, "web:main", 1).await,
        wait_bot_texts(&restarted.api, "web:team", 1).await,
    ]
    .concat();
    let mut sorted = replies.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["answer one", "answer two"],
        "only the agent's answers: {replies:?}"
    );

    // Answered messages stay answered across another restart: no duplicate runs.
    let root = restarted.stop().await;
    let runner2 = ScriptedRunner::new(vec![]);
    let again = start_daemon_with(runner2.clone(), root, |_| {}).await;
    again
        .api
        .send("web:main", "me", "Me", "new message")
        .await
        .expect("202");
    let runs = runner2
        .wait_runs("the new message", |r| !r.is_empty())
        .await;
    assert_eq!(runs.len(), 1);
    assert!(
        !runs[0].prompt.contains("remember the milk"),
        "{}",
        runs[0].prompt
    );
    again.stop().await;
}
