//! Sandbox faults (issue 18): the agent's binary gone, its sandbox killed from outside,
//! podman stuck before the agent starts, the agent image deleted while the daemon runs.
//! Each ends with a clear message in the chat or the run log, and the group is not
//! stuck: its next message gets a run of its own.

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

/// The podman tests of this file take podman's storage away (its lock, the image), so
/// they run one at a time.
static PODMAN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn podman_secrets() -> nanoclaw::config::Secrets {
    nanoclaw::config::Secrets {
        anthropic_api_key: Some(nanoclaw::config::Secret::new("sk-ant-sandbox-faults")),
        ..Default::default()
    }
}

/// Holds podman's storage lock (as a podman stuck on it would) until dropped.
struct StorageLock(std::process::Child);

impl StorageLock {
    fn take() -> StorageLock {
        use std::io::BufRead;
        let out = std::process::Command::new("podman")
            .args(["info", "--format", "{{.Store.GraphRoot}}"])
            .output()
            .expect("podman info");
        let lock =
            std::path::Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("storage.lock");
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, os, sys, time\n\
                 fd = os.open(sys.argv[1], os.O_RDWR)\n\
                 fcntl.lockf(fd, fcntl.LOCK_EX)\n\
                 print('locked', flush=True)\n\
                 time.sleep(3600)",
                &lock.display().to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "locked", "{}", lock.display());
        StorageLock(child)
    }
}

impl Drop for StorageLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backend that hangs before the agent starts (here podman waiting on its storage
/// lock) is given up after NANOCLAW_SANDBOX_START_TIMEOUT_MS, not CONTAINER_TIMEOUT;
/// the run is retried and answered once the backend works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_stuck_on_start_is_given_up_and_the_group_goes_on() {
    let _one = PODMAN.lock().await;
    let fake = nanoclaw_test_support::fake_anthropic::FakeAnthropic::start(vec![]).await;
    let url = fake.url.clone();
    let d = support::start_sandboxed_daemon(RuntimeKind::Podman, None, podman_secrets(), |c| {
        c.anthropic_base_url = url;
        c.llm_attempts = 1;
        c.retry_base = Duration::from_millis(200);
        c.idle_timeout = Duration::from_millis(300);
        c.sandbox_start_timeout = Duration::from_secs(3);
    })
    .await;
    d.api
        .send("web:main", "me", "Me", "first")
        .await
        .expect("accepted");
    wait_bot_texts(&d.api, "web:main", 1).await;
    no_active_runs(&d.api).await;

    let lock = StorageLock::take();
    let sent = std::time::Instant::now();
    d.api
        .send("web:main", "me", "Me", "second")
        .await
        .expect("accepted");
    // Past the start limit the stuck attempt is stopped (its clean-up waits on the
    // lock too, so the backend is let go a little later).
    tokio::time::sleep(Duration::from_secs(6)).await;
    drop(lock);
    let texts = wait_bot_texts(&d.api, "web:main", 2).await;
    assert_eq!(texts[1], "ok", "{texts:?}");
    let waited = sent.elapsed();
    no_active_runs(&d.api).await;
    let root = d.stop().await;
    let logs = support::run_logs(root.path(), "main");
    assert!(
        logs.iter()
            .any(|l| l.contains("did not start the agent within 3 s")),
        "{logs:?}"
    );
    eprintln!("stuck backend: answered {waited:?} after the message");
}

/// The agent image deleted while a run uses it. Root podman runs a group under its own
/// uid from the image's mounted root, so the run in flight goes on; the next run finds
/// the image gone, builds it again and is answered (never "cannot mount the image" for
/// ever after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_image_deleted_while_running_is_built_again_and_the_group_goes_on() {
    let _one = PODMAN.lock().await;
    // An image of its own (a distinct agent build, so a distinct image), never the
    // shared one other tests use.
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = dir.path().join("nanoclaw-agent");
    let mut bytes = std::fs::read(
        std::path::PathBuf::from(support::nanoclaw_bin()).with_file_name("nanoclaw-agent"),
    )
    .expect("agent");
    bytes.extend_from_slice(format!("\nfault-image-{}\n", std::process::id()).as_bytes());
    std::fs::write(&agent, bytes).expect("agent copy");
    let image = format!(
        "localhost/nanoclaw-fault-image-{}:latest",
        std::process::id()
    );
    let fake = nanoclaw_test_support::fake_anthropic::FakeAnthropic::start(vec![
        nanoclaw_test_support::fake_anthropic::Reply::tool(
            "Bash",
            serde_json::json!({"command": "sleep 4"}),
        ),
        nanoclaw_test_support::fake_anthropic::Reply::text("first answer"),
        nanoclaw_test_support::fake_anthropic::Reply::text("second answer"),
    ])
    .await;
    let url = fake.url.clone();
    let image_for_config = image.clone();
    let d = support::start_sandboxed_daemon(
        RuntimeKind::Podman,
        Some(agent),
        podman_secrets(),
        move |c| {
            c.anthropic_base_url = url;
            c.container_image = image_for_config;
            c.llm_attempts = 1;
            c.retry_base = Duration::from_millis(200);
            c.idle_timeout = Duration::from_millis(300);
            // Shorter than building the image again: the run that waits for the build
            // must get the whole limit once it is built.
            c.sandbox_start_timeout = Duration::from_secs(3);
        },
    )
    .await;
    let exists = || {
        std::process::Command::new("podman")
            .args(["image", "exists", &image])
            .status()
            .is_ok_and(|s| s.success())
    };
    d.api
        .send("web:main", "me", "Me", "take your time")
        .await
        .expect("accepted");
    // The first model turn asked for the Bash call; it is running now.
    fake.wait_requests(1).await;
    let removed = std::process::Command::new("podman")
        .args(["rmi", "-f", &image])
        .output()
        .expect("podman rmi");
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(!exists(), "deleted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert_eq!(texts, ["first answer"]);
    no_active_runs(&d.api).await;
    d.api
        .send("web:main", "me", "Me", "and again")
        .await
        .expect("accepted");
    // Building the image again takes a while (seconds with the base at hand).
    let texts =
        support::wait_bot_texts_within(&d.api, "web:main", 2, Duration::from_secs(300)).await;
    assert_eq!(texts[1], "second answer", "{texts:?}");
    assert!(exists(), "built again");
    no_active_runs(&d.api).await;
    let root = d.stop().await;
    let logs = support::run_logs(root.path(), "main");
    assert_eq!(logs.len(), 2, "no failed run between: {logs:?}");
    assert!(logs.iter().all(|l| l.contains("outcome: ok")), "{logs:?}");
    let _ = std::process::Command::new("podman")
        .args(["rmi", "-f", &image])
        .output();
}
