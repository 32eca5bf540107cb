//! Upstream faults (issue 18): the model API fails under the real agent in a real bwrap
//! sandbox, through the credential proxy. A server error, a stream cut in the middle of
//! a tool call and a stream that goes silent each end the attempt cleanly; what follows
//! is SPEC §5.5: with nothing sent to the chat the run's messages are retried, and the
//! answer arrives once. A half-received tool call is never run.

mod support;

use std::time::{Duration, Instant};

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use serde_json::json;
use support::{TestDaemon, run_logs, wait_bot_texts};

async fn daemon(
    fake: &FakeAnthropic,
    tweak: impl FnOnce(&mut nanoclaw::config::Config),
) -> TestDaemon {
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-upstream-faults")),
        ..Default::default()
    };
    let url = fake.url.clone();
    support::start_sandboxed_daemon(RuntimeKind::Bwrap, None, secrets, move |c| {
        c.anthropic_base_url = url;
        c.retry_base = Duration::from_millis(50);
        c.llm_attempts = 1;
        tweak(c);
    })
    .await
}

/// The user's words reached the model in `request` (the prompt of a run).
fn asks(request: &nanoclaw_test_support::fake_anthropic::Recorded, words: &str) -> bool {
    request.body["messages"].to_string().contains(words)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_fails_the_run_and_its_messages_are_retried() {
    let fake = FakeAnthropic::start(vec![
        Reply::HttpError {
            status: 500,
            kind: "api_error".into(),
            message: "Internal server error".into(),
            retry_after: None,
        },
        Reply::text("answered on the retry"),
    ])
    .await;
    let d = daemon(&fake, |_| {}).await;
    d.api
        .send("web:main", "me", "Me", "what is the weather")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert_eq!(texts, vec!["answered on the retry".to_string()]);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "one failed attempt, one retry");
    assert!(requests.iter().all(|r| asks(r, "what is the weather")));
    let root = d.stop().await;
    let logs = run_logs(root.path(), "main");
    assert_eq!(logs.len(), 2, "the failed run and its retry, each logged");
    assert!(logs[0].contains("HTTP 500"), "{}", logs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_tool_call_runs_no_tool_and_the_messages_are_retried() {
    let fake = FakeAnthropic::start(vec![
        Reply::cut_mid_tool(
            "Bash",
            json!({"command": "touch /workspace/group/half-received"}),
        ),
        Reply::text("done, properly this time"),
    ])
    .await;
    let d = daemon(&fake, |_| {}).await;
    d.api
        .send("web:main", "me", "Me", "make the file")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert_eq!(texts, vec!["done, properly this time".to_string()]);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    // The retry starts from the user's message: no trace of the cut tool call.
    let retry = requests[1].body["messages"].to_string();
    assert!(asks(&requests[1], "make the file"), "{retry}");
    assert!(
        !retry.contains("tool_use") && !retry.contains("tool_result"),
        "{retry}"
    );
    let root = d.stop().await;
    assert!(
        !root.path().join("groups/main/half-received").exists(),
        "the half-received tool call was never run"
    );
    let logs = run_logs(root.path(), "main");
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs[0].contains("ended early"), "{}", logs[0]);
}

/// A stream silent for longer than `NANOCLAW_LLM_STREAM_IDLE_MS` is given up; with a
/// second attempt allowed the agent retries inside the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_given_up_and_retried() {
    let fake = FakeAnthropic::start(vec![
        Reply::stalled("this never finish", Duration::from_secs(120)),
        Reply::text("back after the silence"),
    ])
    .await;
    let d = daemon(&fake, |c| {
        c.llm_attempts = 2;
        c.llm_stream_idle = Duration::from_secs(1);
    })
    .await;
    let sent = Instant::now();
    d.api
        .send("web:main", "me", "Me", "are you there")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    let waited = sent.elapsed();
    assert_eq!(texts, vec!["back after the silence".to_string()]);
    assert!(
        waited < Duration::from_secs(60),
        "given up long before the fake's 120 s of silence: {waited:?}"
    );
    assert_eq!(fake.requests().len(), 2);
    let root = d.stop().await;
    let logs = run_logs(root.path(), "main");
    assert_eq!(logs.len(), 1, "retried inside the run: {logs:?}");
    assert!(
        logs[0].contains("the model API sent nothing for 1 s"),
        "{}",
        logs[0]
    );
    eprintln!("silent stream: answered {waited:?} after the message");
}

/// Every attempt silent: the run ends (it does not sit until CONTAINER_TIMEOUT), is
/// retried as SPEC §5.5 says, and after the last retry the chat is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_api_that_stays_silent_is_reported_to_the_chat() {
    let fake = FakeAnthropic::start(vec![]).await;
    fake.respond_with(|_| Reply::stalled("never", Duration::from_secs(300)));
    let d = daemon(&fake, |c| {
        c.llm_stream_idle = Duration::from_millis(500);
        c.retry_base = Duration::from_millis(10);
    })
    .await;
    d.api
        .send("web:main", "me", "Me", "hello?")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(
        texts[0].contains("could not answer") && texts[0].contains("sent nothing"),
        "{texts:?}"
    );
    support::assert_no_runs(&d.api, "the group is not stuck").await;
    let root = d.stop().await;
    assert_eq!(
        run_logs(root.path(), "main").len(),
        6,
        "one run, five retries"
    );
}
