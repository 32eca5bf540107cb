//! Sandbox faults (issue 18): the agent's binary gone, its sandbox killed from outside.
//! Each ends with a clear message in the chat, and the group is not stuck: its next
//! message gets a run of its own.

mod support;

use std::time::Duration;

use nanoclaw::config::RuntimeKind;
use nanoclaw_test_support::{DEADLINE, wait_for};
use support::wait_bot_texts;

fn agent_script(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/agents")
        .join(name)
}

async fn no_active_runs(api: &nanoclaw_test_support::Api) {
    wait_for("the group's slot to be free", DEADLINE, || async {
        let (_, status) = api.get("/api/status").await.ok()?;
        status["queue"]["active"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_agent_binary_is_told_to_the_chat_and_the_group_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = dir.path().join("agent.sh");
    std::fs::copy(agent_script("fault-agent.sh"), &agent).expect("agent copy");
    let d = support::start_sandboxed_daemon(
        RuntimeKind::Bwrap,
        Some(agent.clone()),
        Default::default(),
        |c| {
            c.retry_base = Duration::from_millis(20);
            c.idle_timeout = Duration::from_millis(300);
        },
    )
    .await;
    // Removed after the start (an upgrade gone wrong, a cleaned-up directory).
    std::fs::remove_file(&agent).expect("remove the agent");
    d.api
        .send("web:main", "me", "Me", "are you there?")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(
        texts[0].contains("could not answer")
            && texts[0].contains("agent binary")
            && texts[0].contains("is missing"),
        "{texts:?}"
    );
    no_active_runs(&d.api).await;
    // Put back, the next message is answered.
    std::fs::copy(agent_script("fault-agent.sh"), &agent).expect("agent back");
    d.api
        .send("web:main", "me", "Me", "and now?")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 2).await;
    assert_eq!(texts[1], "answered after the fault", "{texts:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_killed_from_outside_is_told_to_the_chat_and_the_group_goes_on() {
    let d = support::start_sandboxed_daemon(
        RuntimeKind::Bwrap,
        Some(agent_script("fault-agent.sh")),
        Default::default(),
        |c| {
            c.retry_base = Duration::from_millis(200);
            c.idle_timeout = Duration::from_millis(300);
        },
    )
    .await;
    d.api
        .send("web:main", "me", "Me", "hang-now")
        .await
        .expect("accepted");
    // The sandbox's own process (bwrap) is killed, as an OOM killer or an admin would.
    let bwrap = wait_for("the hanging sandbox", DEADLINE, || async {
        let out = std::process::Command::new("pgrep")
            .args(["-x", "-f", "sleep 3602"])
            .output()
            .ok()?;
        let sleeper: i32 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        outermost_bwrap(sleeper)
    })
    .await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &bwrap.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // The run failed; it is tried again after the backoff, and this time answered.
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 1).await,
        ["answered after the fault"]
    );
    let log_dir = d.root().join("groups/main/logs");
    let failed = wait_for("the failed run's log", DEADLINE, || {
        let log_dir = log_dir.clone();
        async move {
            std::fs::read_dir(&log_dir)
                .ok()?
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .find(|l| l.contains("outcome: failed"))
        }
    })
    .await;
    assert!(
        failed.contains("signal") || failed.contains("exited"),
        "{failed}"
    );
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 3602"])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "nothing of the killed sandbox is left"
    );
    d.stop().await;
}

/// The outermost `bwrap` above `pid` (its arguments come through a descriptor, so they
/// are not on its command line to match).
fn outermost_bwrap(pid: i32) -> Option<i32> {
    let parent_of = |pid: i32| -> Option<(String, i32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
        Some((comm, ppid))
    };
    let mut found = None;
    let mut at = pid;
    while at > 1 {
        let (comm, ppid) = parent_of(at)?;
        if comm == "bwrap" {
            found = Some(at);
        } else if found.is_some() {
            break;
        }
        at = ppid;
    }
    found
}
