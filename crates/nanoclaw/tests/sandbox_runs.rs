//! Agent runs in real sandboxes (SPEC §7 lifecycle): the host starts a fresh sandbox per
//! run, speaks the stdin/stdout protocol with the program inside, hands follow-ups over
//! as files, closes idle runs, kills runs that hang or flood their output, and writes a
//! run log. The programs in `tests/agents/` stand in for nanoclaw-agent (bubblewrap
//! mounts the agent from the host); the podman test runs the image's real agent.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nanoclaw::config::RuntimeKind;
use nanoclaw::sandbox::{self, runner::SandboxRunner};
use nanoclaw_test_support::DEADLINE;
use support::wait_bot_texts;

fn agent_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/agents")
        .join(name)
}

async fn daemon_with_sandbox(
    kind: RuntimeKind,
    agent: Option<PathBuf>,
    tweak: impl FnOnce(&mut nanoclaw::config::Config),
) -> support::TestDaemon {
    support::start_sandboxed_daemon(kind, agent, Default::default(), tweak).await
}

use support::run_logs;

/// Waits for the main group's first run log.
async fn first_run_log(root: &std::path::Path) -> String {
    let root = root.to_path_buf();
    nanoclaw_test_support::wait_for("a run log", DEADLINE, || {
        let root = root.clone();
        async move { run_logs(&root, "main").pop() }
    })
    .await
}

fn process_count(pattern: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_answered_from_inside_a_bwrap_sandbox_with_follow_ups_and_a_run_log() {
    let d = daemon_with_sandbox(
        RuntimeKind::Bwrap,
        Some(agent_script("protocol-agent.sh")),
        |c| {
            c.idle_timeout = Duration::from_secs(30);
        },
    )
    .await;
    d.api
        .send("web:main", "me", "Me", "hello sandbox")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 1).await,
        ["hello from nanoclaw"]
    );
    // The run is idle and alive: the next message goes in as a follow-up file.
    d.api
        .send("web:main", "me", "Me", "are you still there?")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 2).await,
        ["hello from nanoclaw", "follow-up 1 seen"]
    );
    let root = d.stop().await;
    let logs = run_logs(root.path(), "main");
    assert_eq!(logs.len(), 1, "one sandbox for both messages: {logs:?}");
    let log = &logs[0];
    assert!(log.contains("outcome: ok"), "{log}");
    assert!(
        log.contains("(bwrap)") && log.contains("/workspace/group <- "),
        "{log}"
    );
    assert!(
        log.contains("uid 1000 pwd /workspace/group"),
        "stderr is kept: {log}"
    );
    assert!(
        !log.contains("hello sandbox"),
        "no prompt text in run logs: {log}"
    );
    assert!(
        !root.path().join("data/ipc/main/input/_close").exists(),
        "the agent consumed its close request"
    );
}

/// Runs `agent` with a 1.5 s CONTAINER_TIMEOUT and checks it was stopped for it.
async fn stopped_at_container_timeout(agent: &str) {
    let d = daemon_with_sandbox(RuntimeKind::Bwrap, Some(agent_script(agent)), |c| {
        c.container_timeout = Duration::from_millis(1500);
        c.retry_base = Duration::from_secs(3600);
    })
    .await;
    d.api
        .send("web:main", "me", "Me", "anyone?")
        .await
        .expect("accepted");
    let log = first_run_log(d.root()).await;
    assert!(
        log.contains("no output for 1 s (CONTAINER_TIMEOUT)"),
        "{log}"
    );
    assert_eq!(process_count(agent), 0, "the sandboxed process is gone");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_killed_after_container_timeout() {
    stopped_at_container_timeout("silent-agent.sh").await;
    assert_eq!(process_count("sleep 3601"), 0, "its child is gone too");
}

/// Saying which tool it runs is not progress: an agent that only does that is stopped
/// at CONTAINER_TIMEOUT like a silent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_events_do_not_extend_container_timeout() {
    stopped_at_container_timeout("tool-chatter-agent.sh").await;
}

/// An agent that ignores `_close` (and keeps saying it is idle) does not keep its slot:
/// its sandbox is stopped once the close grace has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_ignoring_close_is_stopped_after_the_grace() {
    let d = daemon_with_sandbox(
        RuntimeKind::Bwrap,
        Some(agent_script("deaf-agent.sh")),
        |c| {
            c.idle_timeout = Duration::from_millis(500);
            c.close_grace = Duration::from_secs(1);
            c.retry_base = Duration::from_secs(3600);
        },
    )
    .await;
    d.api
        .send("web:main", "me", "Me", "hello")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:main", 1).await,
        ["answered, and not leaving"]
    );
    let log = first_run_log(d.root()).await;
    assert!(
        log.contains("did not end within 1 s of being asked to close"),
        "{log}"
    );
    nanoclaw_test_support::wait_for("the slot to be free", DEADLINE, || async {
        let (_, status) = d.api.get("/api/status").await.ok()?;
        status["queue"]["active"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            .then_some(())
    })
    .await;
    assert_eq!(
        process_count("deaf-agent"),
        0,
        "the sandboxed process is gone"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_flooding_its_output_is_stopped_at_the_cap() {
    // stderr, and stdout without any newline (which must not pile up in the daemon).
    for (script, sleeper) in [
        ("noisy-agent.sh", "sleep 3602"),
        ("stdout-flood-agent.sh", "sleep 3603"),
    ] {
        let d = daemon_with_sandbox(RuntimeKind::Bwrap, Some(agent_script(script)), |c| {
            c.container_max_output_size = 100_000;
            c.container_timeout = Duration::from_secs(600);
            c.retry_base = Duration::from_secs(3600);
        })
        .await;
        d.api
            .send("web:main", "me", "Me", "talk to me")
            .await
            .expect("accepted");
        let log = first_run_log(d.root()).await;
        assert!(
            log.contains("more than 100000 bytes of output"),
            "{script}: {log}"
        );
        assert!(
            log.len() < 100_000,
            "{script}: the log keeps only a tail of stderr"
        );
        assert_eq!(
            process_count(sleeper),
            0,
            "{script}: the sandboxed process is gone"
        );
        d.stop().await;
    }
}

/// With no credentials configured, the proxy refuses the agent's request, the agent
/// reports a permanent error, and the user is told what to set, once (no retries).
async fn missing_credentials_are_reported_once(kind: RuntimeKind) {
    let d = daemon_with_sandbox(kind, None, |c| {
        c.retry_base = Duration::from_millis(10);
        c.llm_attempts = 1;
    })
    .await;
    d.api
        .send("web:main", "me", "Me", "hi")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(
        texts[0].contains("could not answer")
            && texts[0].contains("no model credentials configured")
            && texts[0].contains("ANTHROPIC_API_KEY"),
        "[{}] {texts:?}",
        kind.name()
    );
    let root = d.stop().await;
    let logs = run_logs(root.path(), "main");
    assert_eq!(logs.len(), 1, "[{}] not retried: {logs:?}", kind.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_runs_the_agent_binary_and_relays_its_error() {
    missing_credentials_are_reported_once(RuntimeKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_runs_the_image_agent_and_relays_its_error() {
    missing_credentials_are_reported_once(RuntimeKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_model_api_is_retried_then_reported() {
    // The proxy holds a key but its upstream is down: a transient failure, so the run
    // is retried with backoff (five times) and the user is told after the last one.
    let secrets = nanoclaw::config::Secrets {
        anthropic_api_key: Some(nanoclaw::config::Secret::new("sk-ant-unused")),
        ..Default::default()
    };
    let closed = nanoclaw_test_support::free_port();
    let d = support::start_sandboxed_daemon(RuntimeKind::Bwrap, None, secrets, |c| {
        c.retry_base = Duration::from_millis(10);
        c.llm_attempts = 1;
        c.anthropic_base_url = format!("http://127.0.0.1:{closed}");
    })
    .await;
    d.api
        .send("web:main", "me", "Me", "hi")
        .await
        .expect("accepted");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(
        texts[0].contains("could not answer") && texts[0].contains("the model API is unavailable"),
        "{texts:?}"
    );
    let root = d.stop().await;
    let logs = run_logs(root.path(), "main");
    assert_eq!(logs.len(), 6, "one run and five retries, each logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_orphans_are_removed_and_the_image_knows_its_agent() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut config = support::test_config(root.path());
    config.agent_bin =
        Some(PathBuf::from(support::nanoclaw_bin()).with_file_name("nanoclaw-agent"));
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    let backend = sandbox::backend(RuntimeKind::Podman, &config);
    let runner = SandboxRunner::new(
        Arc::new(config.clone()),
        Arc::clone(&backend),
        Default::default(),
    );
    runner
        .prepare()
        .await
        .expect("podman and the image are ready");
    let ours = sandbox::root_label(root.path());
    let start = |name: &str, label: &str| {
        let status = std::process::Command::new("podman")
            .args([
                "run",
                "-d",
                "--rm",
                "--runtime",
                "runc",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args([
                "--name",
                name,
                "--label",
                &format!("org.nanoclaw.root={label}"),
            ])
            .args([&config.container_image, "sleep", "600"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("podman run");
        assert!(status.success(), "could not start {name}");
    };
    let suffix = std::process::id();
    let (mine, theirs) = (
        format!("nanoclaw-test-{suffix}-1"),
        format!("nanoclaw-test-{suffix}-2"),
    );
    start(&mine, &ours);
    start(&theirs, "some-other-root");
    runner.remove_orphans().await;
    let names = String::from_utf8_lossy(
        &std::process::Command::new("podman")
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output()
            .expect("podman ps")
            .stdout,
    )
    .into_owned();
    assert!(
        !names.contains(&mine),
        "this root's orphan is gone: {names}"
    );
    assert!(
        names.contains(&theirs),
        "another root's container is left alone: {names}"
    );
    backend.stop(&theirs).await;

    // The image carries the agent build it contains; any other build makes it stale.
    let oci = sandbox::oci::Oci::new(sandbox::oci::Flavor::Podman, &config);
    let agent = sandbox::agent_binary(&config).expect("agent");
    let build = sandbox::image::agent_build_id(&agent).expect("hash");
    assert_eq!(
        sandbox::image::state(&oci, &build).await.expect("state"),
        sandbox::image::ImageState::Current
    );
    assert_eq!(
        sandbox::image::state(&oci, "some-other-build")
            .await
            .expect("state"),
        sandbox::image::ImageState::Stale { found: build }
    );
}

/// A bwrap left behind by a daemon that died is killed at the next start, with the
/// sandbox it forked, when it carries this root's mark: wherever it was reparented (to
/// init, or to a subreaper such as `systemd --user`). Another root's, a live owner's
/// (`nanoclaw sandbox exec`), any bwrap without a mark, and any process that is not
/// bwrap whatever its environment says, are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_orphans_of_this_root_are_removed_at_start() {
    let root = tempfile::tempdir().expect("temp dir");
    let config = support::test_config(root.path());
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    let runner = SandboxRunner::new(
        Arc::new(config.clone()),
        sandbox::backend(RuntimeKind::Bwrap, &config),
        Default::default(),
    );
    let ours = sandbox::root_label(root.path());
    // An owner is a lock file its process holds in this root's owners folder (named
    // with the folder's device and inode): one that no process holds is gone.
    let owners = nanoclaw::layout::Layout::new(root.path()).sandbox_owners_dir();
    let gone = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&owners).expect("owners folder");
        format!("{}-{}-4242-0123abcd", meta.dev(), meta.ino())
    };
    let live = nanoclaw::sandbox::orphans::Owner::take(&owners).expect("owner");
    let me = live.name.clone();
    // Each is a real bwrap started from a shell that exits at once, so it is orphaned:
    // under init, or under a subreaper that stays.
    let mut subreapers = Vec::new();
    let mut orphan = |env: &[(&str, &str)], seconds: u32, subreaper: bool| {
        let pid_file = root.path().join(format!("{seconds}.pid"));
        let script = format!(
            "bwrap --ro-bind / / --dev /dev --unshare-pid --clearenv sleep {seconds} & echo $! > {}",
            pid_file.display()
        );
        let mut cmd = std::process::Command::new("setsid");
        if subreaper {
            cmd.args([
                "python3",
                "-c",
                "import ctypes, subprocess, sys, time\n\
                 ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n\
                 subprocess.run(['sh', '-c', sys.argv[1]])\n\
                 time.sleep(3600)",
                &script,
            ]);
        } else {
            cmd.args(["sh", "-c", &script]);
        }
        // Not the test's own output: a leftover must not hold the harness's pipes.
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .env_remove("NANOCLAW_SANDBOX_OF")
            .env_remove("NANOCLAW_SANDBOX_OWNER")
            .envs(env.iter().copied());
        if subreaper {
            subreapers.push(cmd.spawn().expect("subreaper"));
        } else {
            assert!(cmd.status().expect("setsid").success());
        }
        pid_file
    };
    let files = [
        (
            orphan(
                &[
                    ("NANOCLAW_SANDBOX_OF", &ours),
                    ("NANOCLAW_SANDBOX_OWNER", &gone),
                ],
                3701,
                false,
            ),
            3701,
        ),
        (
            orphan(
                &[
                    ("NANOCLAW_SANDBOX_OF", &ours),
                    ("NANOCLAW_SANDBOX_OWNER", &gone),
                ],
                3704,
                true,
            ),
            3704,
        ),
        (orphan(&[("NANOCLAW_SANDBOX_OF", &ours)], 3706, false), 3706),
        (
            orphan(
                &[
                    ("NANOCLAW_SANDBOX_OF", &ours),
                    ("NANOCLAW_SANDBOX_OWNER", &me),
                ],
                3705,
                false,
            ),
            3705,
        ),
        (
            orphan(
                &[
                    ("NANOCLAW_SANDBOX_OF", "some-other-root"),
                    ("NANOCLAW_SANDBOX_OWNER", &gone),
                ],
                3702,
                false,
            ),
            3702,
        ),
        (orphan(&[], 3703, false), 3703),
    ];
    // Not a bwrap: its environment is never a reason to kill it, whatever it says.
    let impostor = std::process::Command::new("setsid")
        .args(["sleep", "3707"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .env("NANOCLAW_SANDBOX_OF", &ours)
        .env("NANOCLAW_SANDBOX_OWNER", &gone)
        .spawn()
        .expect("impostor");
    // Orphaned once the shell that started it has exited.
    let mut pids = std::collections::HashMap::new();
    for (file, seconds) in files {
        let pid = nanoclaw_test_support::wait_for("an orphaned bwrap", DEADLINE, || {
            let file = file.clone();
            async move {
                let pid: i32 = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let parent = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
                let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
                (comm.trim() != "sh").then_some(pid)
            }
        })
        .await;
        pids.insert(seconds, pid);
    }
    eprintln!("orphaned bwraps by their sleep: {pids:?}");
    runner.remove_orphans().await;
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    };
    // The sandbox (the bwrap it forked and what runs inside) goes with it.
    let sandboxed = |seconds: u32| {
        let out = std::process::Command::new("pgrep")
            .args(["-x", "-f", &format!("sleep {seconds}")])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|pid| alive(*pid))
            .count()
    };
    nanoclaw_test_support::wait_for("this root's orphans to die", DEADLINE, || async {
        [3701, 3704, 3706]
            .iter()
            .all(|s| !alive(pids[s]) && sandboxed(*s) == 0)
            .then_some(())
    })
    .await;
    for (seconds, why) in [
        (3705, "a sandbox of a live owner is left alone"),
        (3702, "another root's bwrap is left alone"),
        (3703, "a bwrap without a mark is left alone"),
    ] {
        assert!(alive(pids[&seconds]) && sandboxed(seconds) == 1, "{why}");
    }
    assert_eq!(
        sandboxed(3707),
        1,
        "a process that is not bwrap is left alone"
    );
    drop(live);
    for seconds in [3702, 3703, 3705, 3707] {
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-f", &format!("sleep {seconds}")])
            .status();
    }
    let mut impostor = impostor;
    let _ = impostor.wait();
    for mut subreaper in subreapers {
        let _ = subreaper.kill();
        let _ = subreaper.wait();
    }
}

/// `podman` with `args`, its stdout trimmed; panics with its stderr when it fails.
fn podman(args: &[&str]) -> String {
    let out = std::process::Command::new("podman")
        .args(args)
        .output()
        .expect("run podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every rebuild leaves the image before it untagged (about a gigabyte): they are
/// removed, but never an image of the user's, a tagged one, or one a sandbox runs from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_a_rebuild_removes_earlier_agent_images_but_not_one_in_use() {
    let root = tempfile::tempdir().expect("temp dir");
    let config = support::test_config(root.path());
    let oci = sandbox::oci::Oci::new(sandbox::oci::Flavor::Podman, &config);
    let pid = std::process::id();
    // A label of this test's own stands for the agent-build label, so concurrent builds
    // of the real image are not touched.
    let label = format!("org.nanoclaw.test-cleanup-{pid}");
    let ours = format!("localhost/nanoclaw-cleanup-test:{pid}");
    let tagged = format!("localhost/nanoclaw-cleanup-kept:{pid}");
    let users = format!("localhost/nanoclaw-cleanup-users:{pid}");
    // Whatever happens, the test's images go (by label and by tag) when it ends.
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let listed = std::process::Command::new("podman")
                .args(["images", "--all", "--quiet", "--filter", &self.0])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in listed.split_whitespace().chain([self.1.as_str()]) {
                let _ = std::process::Command::new("podman")
                    .args(["rmi", "--force", id])
                    .output();
            }
        }
    }
    let _cleanup = Cleanup(format!("label={label}"), users.clone());
    let context = root.path().join("context");
    std::fs::create_dir_all(&context).expect("context");
    std::fs::write(
        context.join("Containerfile"),
        format!("FROM {}\nCOPY x /x\n", sandbox::image::LOCAL_BASE),
    )
    .expect("Containerfile");
    let build = |content: &str, tag: &str, labelled: bool| {
        std::fs::write(context.join("x"), content).expect("x");
        let mut args = vec!["build", "--quiet", "-t", tag];
        let l = format!("{label}={content}");
        if labelled {
            args.extend(["--label", &l]);
        }
        let ctx = context.display().to_string();
        args.push(&ctx);
        podman(&args);
        podman(&["image", "inspect", "--format", "{{.Id}}", tag])
    };
    let first = build("first", &ours, true);
    let second = build("second", &ours, true);
    let kept = build("tagged", &tagged, true);
    let unlabelled = build("users-1", &users, false);
    build("users-2", &users, false);
    let current = build("current", &ours, true);
    // `first` is mounted but unused; a container's rootfs is `second`'s mount.
    podman(&["image", "mount", &first]);
    let second_at = podman(&["image", "mount", &second]);
    let container = podman(&["create", "--rootfs", &format!("{second_at}:O"), "/bin/true"]);

    let lines = sandbox::image::remove_stale(&oci, &label).await;
    let exists = |id: &str| {
        std::process::Command::new("podman")
            .args(["image", "exists", id])
            .status()
            .expect("podman image exists")
            .success()
    };
    assert!(
        !exists(&first),
        "the unused earlier image is removed: {lines:?}"
    );
    assert!(
        exists(&second),
        "the one a sandbox runs from stays: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&second[..12]) && l.contains("a sandbox runs from it")),
        "and says why: {lines:?}"
    );
    assert!(
        exists(&current) && exists(&kept),
        "tagged images stay: {lines:?}"
    );
    assert!(
        exists(&unlabelled),
        "an image without the label is not ours: {lines:?}"
    );

    // Once the sandbox is gone, the next cleanup takes it.
    podman(&["rm", &container]);
    let lines = sandbox::image::remove_stale(&oci, &label).await;
    assert!(!exists(&second), "removed once unused: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&second[..12]) && l.starts_with("removed")),
        "{lines:?}"
    );
    let _ = std::process::Command::new("podman")
        .args(["rmi", "--force", &unlabelled])
        .output();
}
