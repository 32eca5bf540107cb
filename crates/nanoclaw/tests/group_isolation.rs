//! SPEC §7 and §15, isolation between groups: no group can exhaust what others need
//! (proxy connections, memory, processes, disk) or reach another sandbox, the host or
//! the LAN under `internet`. Every attack is driven from inside a real sandbox, on
//! bubblewrap and on podman, with nanoclaw as root (this process) and, where the
//! backend applies, as an ordinary user ([`support::ORDINARY_UID`] through `setpriv`).
//!
//! Resource attacks are bounded by small per-group limits (`container_config.limits`),
//! so the suite itself can never take the machine down.

mod support;

use std::time::{Duration, Instant};

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use nanoclaw_test_support::{DEADLINE, wait_for};
use serde_json::json;
use support::{ORDINARY_UID, PublicHost, SandboxRoot, wait_bot_texts};

fn require(tool: &str) {
    assert!(
        nanoclaw::sandbox::which(tool).is_some(),
        "this test needs `{tool}` installed (scripts/setup.sh installs it)"
    );
}

fn require_root() {
    assert!(
        nanoclaw::sandbox::Identity::daemon_is_root(),
        "this test runs nanoclaw as root and as an ordinary user, so it runs as root (as CI does)"
    );
}

/// A model key for the fake API (it accepts any).
fn test_secrets() -> Secrets {
    Secrets {
        anthropic_api_key: Some(Secret::new("sk-test")),
        ..Default::default()
    }
}

fn runtime_name(kind: RuntimeKind) -> &'static str {
    kind.name()
}

// ---------------------------------------------------------------------------------
// Item 1: one group cannot take the credential proxy's connections from the others.

/// Inside the attacking sandbox: open connections to the proxy socket from children
/// that exit at once and hand the sockets to the parent (so the connecting process is
/// gone by the time the proxy looks at it), keep ~1100 open, top them up as the proxy
/// closes them, until `/workspace/group/stop` appears (at most 90 s).
const FLOOD: &str = r#"
import os, select, socket, time
PATH = "/run/nanoclaw/proxy.sock"
TARGET = 1100
held = []
def batch(n):
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(PATH)
            except OSError:
                break
            socks.append(s)
        fds = [s.fileno() for s in socks]
        for i in range(0, len(fds), 100):
            socket.send_fds(b, [b"x"], fds[i:i + 100])
        os._exit(0)
    b.close()
    got = []
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(a, 1, 100)
        except OSError:
            break
        if not msg:
            break
        got += fds
    os.waitpid(pid, 0)
    a.close()
    return got
deadline = time.time() + 90
peak = 0
while time.time() < deadline and not os.path.exists("/workspace/group/stop"):
    p = select.poll()
    for fd in held:
        p.register(fd, select.POLLIN | select.POLLHUP)
    closed = {fd for fd, ev in p.poll(0)}
    for fd in closed:
        os.close(fd)
    held = [fd for fd in held if fd not in closed]
    # What survived since the last round is what the proxy let this sandbox keep.
    alive = len(held)
    peak = max(peak, alive)
    with open("/workspace/group/attack.log", "w") as f:
        f.write(f"held {alive} peak {peak}\n")
    while len(held) < TARGET:
        got = batch(min(100, TARGET - len(held)))
        if not got:
            break
        held += got
    time.sleep(0.5)
print("attack over, peak", peak)
"#;

/// The replies the fake model gives, in the order [`flood_scenario`] asks.
fn flood_script() -> Vec<Reply> {
    let flood = format!("python3 - <<'EOF'\n{FLOOD}\nEOF");
    vec![
        Reply::text("baseline answer"),
        Reply::tool("Bash", json!({"command": flood, "timeout": 120000})),
        Reply::text("a fresh run during the attack"),
        Reply::text("answered during the attack"),
        Reply::text("the attack is over"),
    ]
}

/// `steady` (main, or another chat) answers once; `evil` then floods the proxy from its
/// sandbox while `bystander` starts a new run and `steady` answers a follow-up, both at
/// their usual pace.
async fn flood_scenario(
    api: &nanoclaw_test_support::Api,
    root: &std::path::Path,
    label: &str,
    steady: &str,
) {
    let started = Instant::now();
    api.send(steady, "me", "Me", "hello").await.expect("202");
    // Only printed, never compared: a first run may wait on the backend's storage (one
    // rootless account's podman is shared by the tests running beside this one; CI saw
    // it take over 20 s), which is not what this test is about.
    assert_eq!(
        support::wait_bot_texts_within(api, steady, 1, Duration::from_secs(180)).await,
        ["baseline answer"]
    );
    let baseline = started.elapsed();

    api.send("web:evil", "mallory", "Mallory", "run this script")
        .await
        .expect("202");
    let log = root.join("groups/evil/attack.log");
    // Two rounds: it has opened its ~1100 connections at least once.
    let held = wait_for("the attack to hold connections", DEADLINE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { (text.contains("held") && !text.contains("peak 0")).then_some(text) }
    })
    .await;

    // A new run (a sandbox started while the attack goes on) and a live one.
    let started = Instant::now();
    api.send("web:bystander", "ann", "Ann", "hello too")
        .await
        .expect("202");
    let fresh = tokio::time::timeout(
        Duration::from_secs(60),
        wait_bot_texts(api, "web:bystander", 1),
    )
    .await
    .expect("another group's new run completes while one group floods the proxy");
    assert_eq!(fresh, ["a fresh run during the attack"]);
    let fresh_run = started.elapsed();
    let started = Instant::now();
    api.send(steady, "me", "Me", "are you still there?")
        .await
        .expect("202");
    let during = tokio::time::timeout(Duration::from_secs(60), wait_bot_texts(api, steady, 2))
        .await
        .expect("main is answered while another group floods the proxy");
    let under_attack = started.elapsed();
    assert_eq!(during[1], "answered during the attack");
    let still = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !root.join("groups/evil/stop").exists() && still.contains("held"),
        "the attack was still running: {still}"
    );
    let peak: usize = still
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(
        peak <= nanoclaw::proxy::MAX_CONNECTIONS_PER_RUN + 16,
        "[{label}] the attacker keeps at most its own share: {still} (first seen: {held})"
    );
    println!(
        "[{label}] a fresh run: {baseline:?} before the attack, {fresh_run:?} during it; \
         a live run's answer during it: {under_attack:?} ({})",
        still.trim()
    );
    std::fs::write(root.join("groups/evil/stop"), "").expect("stop the attack");
    assert_eq!(
        wait_bot_texts(api, "web:evil", 1).await,
        ["the attack is over"]
    );
}

async fn flood_does_not_slow_other_groups(kind: RuntimeKind) {
    let fake = FakeAnthropic::start(flood_script()).await;
    let url = fake.url.clone();
    let secrets = test_secrets();
    let d = support::start_sandboxed_daemon(kind, None, secrets, move |c| {
        c.anthropic_base_url = url;
        c.idle_timeout = Duration::from_secs(300);
    })
    .await;
    support::register(d.root(), "web:evil", "evil", false);
    support::register(d.root(), "web:bystander", "bystander", false);
    flood_scenario(&d.api, d.root(), runtime_name(kind), "web:main").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_a_proxy_flood_does_not_slow_other_groups() {
    require("bwrap");
    flood_does_not_slow_other_groups(RuntimeKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_a_proxy_flood_does_not_slow_other_groups() {
    require("podman");
    flood_does_not_slow_other_groups(RuntimeKind::Podman).await;
}

/// The flood with `nanoclaw run` as an ordinary user: `uid` runs the daemon with
/// `runtime`, `home` as its HOME.
async fn flood_as_ordinary_user(runtime: &str, uid: u32, home: Option<&std::path::Path>) {
    let fake = FakeAnthropic::start(flood_script()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let home = home.map_or_else(|| root.join("home"), std::path::Path::to_path_buf);
    let home_text = home.display().to_string();
    let d = support::BinaryDaemon::spawn_as(
        Some(uid),
        &root,
        &[
            ("ANTHROPIC_BASE_URL", fake.url.as_str()),
            ("ANTHROPIC_API_KEY", "sk-test"),
            ("IDLE_TIMEOUT", "300000"),
            ("CONTAINER_RUNTIME", runtime),
            ("HOME", home_text.as_str()),
        ],
    )
    .await;
    let groups = [
        ("web:evil", "evil"),
        ("web:bystander", "bystander"),
        ("web:steady", "steady"),
    ];
    for (jid, folder) in groups {
        let out = std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
                support::nanoclaw_bin(),
                "--root",
            ])
            .arg(&root)
            .args([
                "groups",
                "add",
                "--jid",
                jid,
                "--name",
                folder,
                "--folder",
                folder,
                "--no-trigger",
            ])
            .env_clear()
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/")
            .output()
            .expect("groups add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Not main: its default `full` network needs /dev/net/tun for rootless podman,
    // which some hosts (this CI machine) do not open to ordinary users.
    flood_scenario(
        &d.api,
        &root,
        &format!("{runtime}, ordinary user"),
        "web:steady",
    )
    .await;
    d.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_a_proxy_flood_does_not_slow_other_groups_for_an_ordinary_user() {
    require("bwrap");
    require_root();
    flood_as_ordinary_user("bwrap", ORDINARY_UID, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_a_proxy_flood_does_not_slow_other_groups_for_an_ordinary_user() {
    require("podman");
    require_root();
    let (uid, home) = support::rootless_podman_account();
    flood_as_ordinary_user("podman", uid, Some(&home)).await;
}

// ---------------------------------------------------------------------------------
// Items 2 and 4: memory and processes, per sandbox.

const SMALL: &str = r#"{"limits": {"memoryMb": 256, "pids": 64, "diskMb": 64}}"#;

/// /tmp and the home are tmpfs of a size (a quarter and an eighth of the memory), and
/// filling one stops at its size; the whole sandbox is held to its memory where the host
/// has cgroups (root here: four processes of 100 MiB each do not all survive in 256 MiB),
/// and a single process is held to it everywhere (RLIMIT_DATA).
fn memory_is_bounded(r: &SandboxRoot, runtime: &str) {
    r.register("web:small", "small", false, Some(SMALL));
    let out = r.exec_ok(
        runtime,
        "small",
        "df -B1 --output=size /tmp /home/node | tail -n 2; \
         dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>/dev/null; stat -c %s /tmp/fill; \
         ulimit -d",
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines[0],
        (64u64 << 20).to_string(),
        "[{runtime}] /tmp: {out}"
    );
    assert_eq!(
        lines[1],
        (32u64 << 20).to_string(),
        "[{runtime}] home: {out}"
    );
    assert!(
        lines[2].parse::<u64>().unwrap_or(u64::MAX) <= 64 << 20,
        "[{runtime}] filling /tmp stops at its size: {out}"
    );
    assert_eq!(
        lines[3],
        (256u64 << 10).to_string(),
        "[{runtime}] RLIMIT_DATA in KiB: {out}"
    );

    let one_big = r.exec(
        runtime,
        "small",
        "python3 -c 'b = bytearray(400 << 20); print(\"allocated\")'",
    );
    assert!(
        !one_big.1.contains("allocated"),
        "[{runtime}] one process cannot take 400 MiB: {one_big:?}"
    );

    // Four processes of 100 MiB: each within RLIMIT_DATA, 400 MiB together.
    let (_, out, err) = r.exec(
        runtime,
        "small",
        "for i in 1 2 3 4; do python3 -c 'import time; b = bytearray(100 << 20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(3); print(\"survived\")' & done; wait",
    );
    let survived = out.matches("survived").count();
    // Root here has cgroups (bwrap: ours; podman: its own); an ordinary user has none.
    if r.user.is_none() {
        assert!(
            survived < 4,
            "[{runtime}] the sandbox as a whole is held to 256 MiB: {out} {err}"
        );
    } else {
        // No cgroup for an ordinary user on this host: said plainly by doctor.
        assert_eq!(survived, 4, "[{runtime}] as an ordinary user: {out} {err}");
    }
}

/// A group that forks until it cannot (at most 1200 processes) takes nothing from
/// another group: the other still forks 50 processes.
fn processes_do_not_add_up(r: &SandboxRoot, runtime: &str) {
    r.register("web:forker", "forker", false, Some(SMALL));
    r.register("web:other", "other", false, None);
    let fork_bomb = "python3 - <<'EOF'
import os, time
n = fails = 0
while n < 1200 and fails < 5:
    try:
        pid = os.fork()
    except OSError:
        fails += 1
        time.sleep(0.05)
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
open('/workspace/group/forks', 'w').write(str(n))
time.sleep(60)
EOF";
    let attacker = r.spawn_exec(runtime, "forker", fork_bomb);
    let marker = r.root.join("groups/forker/forks");
    let deadline = Instant::now() + DEADLINE;
    while std::fs::read_to_string(&marker).map_or(true, |t| t.is_empty()) {
        if Instant::now() > deadline {
            let out = attacker.wait_output_after_term();
            panic!(
                "[{runtime}] the fork loop did not finish: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let forked: u64 = std::fs::read_to_string(&marker)
        .expect("count")
        .trim()
        .parse()
        .expect("number");
    assert!(
        forked < 64,
        "[{runtime}] the forker is held to its 64 processes: {forked}"
    );
    let out = r.exec_ok(
        runtime,
        "other",
        "n=0; for i in $(seq 50); do sleep 5 & n=$((n+1)); done; wait; echo forked $n",
    );
    assert!(out.contains("forked 50"), "[{runtime}] {out}");
    drop(attacker);
}

fn resource_suite(runtime: &str, user: Option<u32>) {
    let r = SandboxRoot::new(user);
    memory_is_bounded(&r, runtime);
    processes_do_not_add_up(&r, runtime);
}

#[test]
fn bwrap_memory_and_processes_are_per_sandbox() {
    require("bwrap");
    resource_suite("bwrap", None);
}

#[test]
fn podman_memory_and_processes_are_per_sandbox() {
    require("podman");
    resource_suite("podman", None);
}

#[test]
fn bwrap_memory_and_processes_are_per_sandbox_for_an_ordinary_user() {
    require("bwrap");
    require_root();
    resource_suite("bwrap", Some(ORDINARY_UID));
}

#[test]
fn podman_memory_and_processes_are_per_sandbox_for_an_ordinary_user() {
    require("podman");
    require_root();
    let r = SandboxRoot::rootless_podman();
    memory_is_bounded(&r, "podman");
    processes_do_not_add_up(&r, "podman");
}

// ---------------------------------------------------------------------------------
// Item 3: disk.

/// One file cannot outgrow the quota (RLIMIT_FSIZE): `fallocate -l 20G` fails at once.
fn a_file_cannot_outgrow_the_quota(r: &SandboxRoot, runtime: &str) {
    r.register("web:disk", "disk", false, Some(SMALL));
    let (code, _, _) = r.exec(runtime, "disk", "fallocate -l 20G /workspace/group/big");
    assert_ne!(code, 0, "[{runtime}] a 20 GiB file is refused");
    let size = std::fs::metadata(r.root.join("groups/disk/big"))
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0);
    assert!(size <= 64 << 20, "[{runtime}] {size} bytes allocated");
    let _ = std::fs::remove_file(r.root.join("groups/disk/big"));
}

#[test]
fn bwrap_one_file_cannot_outgrow_the_disk_quota() {
    require("bwrap");
    a_file_cannot_outgrow_the_quota(&SandboxRoot::new(None), "bwrap");
    a_file_cannot_outgrow_the_quota(&SandboxRoot::new(Some(ORDINARY_UID)), "bwrap");
}

#[test]
fn podman_one_file_cannot_outgrow_the_disk_quota() {
    require("podman");
    require_root();
    a_file_cannot_outgrow_the_quota(&SandboxRoot::new(None), "podman");
    a_file_cannot_outgrow_the_quota(&SandboxRoot::rootless_podman(), "podman");
}

/// An agent that writes past its group's quota in many files is stopped and the chat is
/// told; a disk below the free-space floor refuses runs, and doctor and status say so.
async fn quota_stops_a_run(kind: RuntimeKind) {
    let write = "for i in 1 2 3; do head -c 40000000 /dev/zero > part$i; done; sleep 60";
    let fake = FakeAnthropic::start(vec![
        Reply::tool("Bash", json!({"command": write, "timeout": 120000})),
        Reply::text("wrote them"),
    ])
    .await;
    let url = fake.url.clone();
    let secrets = test_secrets();
    let d = support::start_sandboxed_daemon(kind, None, secrets, move |c| {
        c.anthropic_base_url = url;
    })
    .await;
    let store =
        nanoclaw::store::Store::open(&d.root().join("store/messages.db"), "Andy").expect("store");
    store
        .register_group(&nanoclaw::store::RegisteredGroup {
            jid: "web:hog".into(),
            name: "hog".into(),
            folder: "hog".into(),
            trigger_pattern: "@Andy".into(),
            added_at: nanoclaw::clock::now(),
            container_config: Some(SMALL.into()),
            requires_trigger: false,
            is_main: false,
        })
        .expect("register");
    let started = Instant::now();
    d.api
        .send("web:hog", "bob", "Bob", "write three big files")
        .await
        .expect("202");
    let texts = wait_bot_texts(&d.api, "web:hog", 1).await;
    assert!(
        texts[0].contains("disk quota of 64 MiB"),
        "[{}] the chat is told why: {texts:?}",
        runtime_name(kind)
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "stopped, not left to finish its 60 s sleep"
    );
    // Over quota, the next message is refused before any sandbox starts.
    d.api
        .send("web:hog", "bob", "Bob", "and now?")
        .await
        .expect("202");
    let texts = wait_bot_texts(&d.api, "web:hog", 2).await;
    assert!(texts[1].contains("over its disk quota"), "{texts:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_a_run_over_its_disk_quota_is_stopped_and_the_chat_told() {
    require("bwrap");
    quota_stops_a_run(RuntimeKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_a_run_over_its_disk_quota_is_stopped_and_the_chat_told() {
    require("podman");
    quota_stops_a_run(RuntimeKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_refused_when_the_disk_is_nearly_full() {
    require("bwrap");
    let fake = FakeAnthropic::start(vec![Reply::text("never sent")]).await;
    let url = fake.url.clone();
    let secrets = test_secrets();
    let d = support::start_sandboxed_daemon(RuntimeKind::Bwrap, None, secrets, move |c| {
        c.anthropic_base_url = url;
        // More than any disk has free.
        c.min_free_disk_bytes = u64::MAX / 2;
    })
    .await;
    d.api.send("web:main", "me", "Me", "hi").await.expect("202");
    let texts = wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(texts[0].contains("NANOCLAW_MIN_FREE_DISK_MB"), "{texts:?}");
    assert!(fake.requests().is_empty(), "no sandbox ran");
    let root = d.root().to_path_buf();
    let env = [("NANOCLAW_MIN_FREE_DISK_MB", "999999999999")];
    for args in [&["doctor"][..], &["status"][..]] {
        let out = std::process::Command::new(support::nanoclaw_bin())
            .args(args)
            .arg("--root")
            .arg(&root)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", root.join("home"))
            .envs(env)
            .output()
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NANOCLAW_MIN_FREE_DISK_MB") && text.contains("free"),
            "{args:?} warns: {text}"
        );
    }
    d.stop().await;
}

// ---------------------------------------------------------------------------------
// Items 5 and 6: networks.

/// Under `internet`, sandboxes have no interface but loopback; through the egress proxy
/// only public addresses answer, whatever name or address the agent uses. Neither the
/// host (its loopback or its own addresses), a private address, nor another sandbox is
/// reachable; `allowedDomains` narrows further. Denials are logged with group and
/// reason.
fn internet_policy(r: &SandboxRoot, runtime: &str, public: &PublicHost) {
    r.register("web:net", "net", false, None);
    r.register(
        "web:narrow",
        "narrow",
        false,
        Some(r#"{"allowedDomains": ["example.com"]}"#),
    );
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let any = std::net::TcpListener::bind("0.0.0.0:0").expect("listener");
    let (lp, ap) = (
        loopback.local_addr().expect("addr").port(),
        any.local_addr().expect("addr").port(),
    );
    let host_ip = nanoclaw::egress::host_addresses()
        .into_iter()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .expect("the host has a non-loopback address");
    let url = public.url();
    let script = format!(
        "c() {{ curl -s -m 5 -o /dev/null -w '%{{http_code}}' \"$@\"; echo \" $?\"; }}; \
         echo \"ifaces $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')\"; \
         echo \"direct-public $(c --noproxy '*' {url})\"; \
         echo \"direct-host $(c --noproxy '*' http://{host_ip}:{ap}/)\"; \
         echo \"proxy-loopback $(c --noproxy '' http://127.0.0.1:{lp}/)\"; \
         echo \"proxy-localhost $(c --noproxy '' http://localhost:{lp}/)\"; \
         echo \"proxy-host $(c --noproxy '' http://{host_ip}:{ap}/)\"; \
         echo \"proxy-lan $(c --noproxy '' http://192.168.1.1/)\"; \
         echo \"proxy-metadata $(c --noproxy '' http://169.254.169.254/)\"; \
         echo \"connect-host $(c --noproxy '' -p http://{host_ip}:{ap}/)\"; \
         echo \"socks-host $(c --noproxy '' -x socks5h://127.0.0.1:3128 http://{host_ip}:{ap}/)\"; \
         echo \"proxy-public $(curl -s -m 5 --noproxy '' {url})\"; \
         echo \"connect-public $(curl -s -m 5 --noproxy '' -p {url})\"; \
         echo \"socks-public $(curl -s -m 5 --noproxy '' -x socks5h://127.0.0.1:3128 {url})\"",
    );
    let (code, out, err) = r.exec(runtime, "net", &script);
    assert_eq!(code, 0, "[{runtime}] {out} {err}");
    let line = |key: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(line("ifaces"), "lo", "[{runtime}] {out}");
    for key in ["direct-public", "direct-host"] {
        assert!(
            line(key).ends_with(" 7"),
            "[{runtime}] {key}: no route: {out}"
        );
    }
    for key in [
        "proxy-loopback",
        "proxy-localhost",
        "proxy-host",
        "proxy-lan",
        "proxy-metadata",
    ] {
        assert!(
            line(key).starts_with("403"),
            "[{runtime}] {key} refused: {out}"
        );
    }
    assert!(
        !line("connect-host").starts_with("200"),
        "[{runtime}] {out}"
    );
    assert!(!line("socks-host").starts_with("200"), "[{runtime}] {out}");
    for key in ["proxy-public", "connect-public", "socks-public"] {
        assert_eq!(line(key), PublicHost::BODY, "[{runtime}] {key}: {out}");
    }
    assert!(
        err.contains("egress refused") && err.contains("group=net") && err.contains("private"),
        "[{runtime}] denials are logged with group and reason: {err}"
    );
    let narrow = r.exec_ok(
        runtime,
        "narrow",
        &format!("curl -s -m 5 --noproxy '' {url}; echo; curl -s -m 5 --noproxy '' http://example.com/ ; echo"),
    );
    assert!(
        narrow.contains("not in the group's allowedDomains") || narrow.contains("allowedDomains"),
        "[{runtime}] {narrow}"
    );
    assert!(!narrow.contains(PublicHost::BODY), "[{runtime}] {narrow}");
    drop((loopback, any));
}

#[test]
fn bwrap_internet_reaches_only_the_public_internet() {
    require("bwrap");
    require_root();
    let public = PublicHost::start();
    internet_policy(&SandboxRoot::new(None), "bwrap", &public);
    internet_policy(&SandboxRoot::new(Some(ORDINARY_UID)), "bwrap", &public);
}

#[test]
fn podman_internet_reaches_only_the_public_internet() {
    require("podman");
    require_root();
    let public = PublicHost::start();
    internet_policy(&SandboxRoot::new(None), "podman", &public);
    internet_policy(&SandboxRoot::rootless_podman(), "podman", &public);
}

/// Two groups' sandboxes, both on `full`: one listens on every address it has, the
/// other cannot reach it by any of them (podman gives each a slirp4netns network of its
/// own, never the shared bridge).
fn sandboxes_cannot_reach_each_other(r: &SandboxRoot, runtime: &str) {
    let full = Some(r#"{"network": "full"}"#);
    r.register("web:server", "server", false, full);
    r.register("web:client", "client", false, full);
    let listener = r.spawn_exec(
        runtime,
        "server",
        "hostname -I > /workspace/group/addrs; exec python3 -m http.server 8099 --bind 0.0.0.0",
    );
    let addrs = r.root.join("groups/server/addrs");
    let deadline = Instant::now() + DEADLINE;
    while std::fs::read_to_string(&addrs).map_or(true, |t| t.trim().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "[{runtime}] the server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let list = std::fs::read_to_string(&addrs).expect("addrs");
    let mut script = String::new();
    for ip in list.split_whitespace() {
        script.push_str(&format!(
            "curl -s -m 3 -o /dev/null http://{ip}:8099/ && echo REACHED {ip}; "
        ));
    }
    script.push_str("ip -4 addr 2>/dev/null | grep -c 10.88. || true");
    let out = r.exec_ok(runtime, "client", &script);
    assert!(!out.contains("REACHED"), "[{runtime}] {list}: {out}");
    drop(listener);
}

#[test]
fn podman_sandboxes_share_no_network() {
    require("podman");
    sandboxes_cannot_reach_each_other(&SandboxRoot::new(None), "podman");
}

#[test]
fn bwrap_sandboxes_share_no_network() {
    require("bwrap");
    sandboxes_cannot_reach_each_other(&SandboxRoot::new(None), "bwrap");
}

// ---------------------------------------------------------------------------------
// Item 7: no user namespaces inside sandboxes (nor vsock, found by the security review).

fn no_user_namespaces(r: &SandboxRoot, runtime: &str) {
    r.register("web:ns", "ns", false, None);
    let out = r.exec_ok(
        runtime,
        "ns",
        "unshare -Ur true 2>/dev/null && echo UNSHARE; unshare -Urp true 2>/dev/null && echo PIDNS; \
         python3 -c 'import os; os.unshare(os.CLONE_NEWUSER); print(\"PYTHON\")' 2>/dev/null; \
         python3 -c 'import socket; socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); print(\"VSOCK\")' 2>/dev/null; \
         python3 -c 'import socket; socket.socket(socket.AF_INET6); socket.socket(socket.AF_UNIX); print(\"usual-ok\")'",
    );
    assert_eq!(
        out.trim(),
        "usual-ok",
        "[{runtime}] only the usual socket families, and no namespace: {out}"
    );
}

#[test]
fn podman_sandboxes_cannot_create_user_namespaces() {
    require("podman");
    require_root();
    no_user_namespaces(&SandboxRoot::new(None), "podman");
    no_user_namespaces(&SandboxRoot::rootless_podman(), "podman");
}

#[test]
fn bwrap_sandboxes_cannot_create_user_namespaces() {
    require("bwrap");
    no_user_namespaces(&SandboxRoot::new(None), "bwrap");
    no_user_namespaces(&SandboxRoot::new(Some(ORDINARY_UID)), "bwrap");
}

// ---------------------------------------------------------------------------------
// Item 8: no uid a sandbox or another host account uses can act as another group.

/// As root, every group's sandboxes run as a host id of their own (1000 inside), and
/// nothing else can use another group's folders: not the host's real uid 1000 (an
/// unrelated account on many hosts), not another group's id.
fn ids_are_per_group(runtime: &str) {
    let r = SandboxRoot::new(None);
    r.register("web:main", "main", true, None);
    r.register("web:team", "team", false, None);
    for group in ["main", "team"] {
        let out = r.exec_ok(
            runtime,
            group,
            "id -u; id -g; echo hi > /workspace/ipc/probe",
        );
        assert_eq!(
            out.lines().take(2).collect::<Vec<_>>(),
            ["1000", "1000"],
            "{out}"
        );
    }
    let (main_id, team_id) = (r.host_id("main"), r.host_id("team"));
    assert_ne!(main_id, team_id);
    for (folder, id) in [("main", main_id), ("team", team_id)] {
        let meta =
            std::fs::metadata(r.root.join(format!("data/ipc/{folder}/probe"))).expect("probe");
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), id, "{folder}");
    }
    let try_as = |uid: u32, what: &str| -> bool {
        std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
                "sh",
                "-c",
                what,
            ])
            .status()
            .expect("setpriv")
            .success()
    };
    let main_ipc = r.root.join("data/ipc/main/messages/evil.json");
    let store = r.root.join("store/messages.db");
    for (who, uid) in [
        ("the host's uid 1000", 1000),
        ("team's sandbox id", team_id),
    ] {
        assert!(
            !try_as(uid, &format!("echo '{{}}' > {}", main_ipc.display())),
            "[{runtime}] {who} cannot write main's IPC folder"
        );
        assert!(
            !try_as(uid, &format!("cat {} > /dev/null", store.display())),
            "[{runtime}] {who} cannot read the store"
        );
        assert!(
            !try_as(uid, &format!("ls {}", r.root.join("groups/team").display())),
            "[{runtime}] {who} cannot list a group's folder (the root is closed to it)"
        );
    }
    assert!(!main_ipc.exists());
    let doctor = r.command(&["doctor"], &[]).output().expect("doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("host uid of its own"),
        "doctor says how sandboxes run: {text}"
    );
}

#[test]
fn bwrap_groups_run_as_host_ids_of_their_own() {
    require("bwrap");
    require_root();
    ids_are_per_group("bwrap");
}

#[test]
fn podman_groups_run_as_host_ids_of_their_own() {
    require("podman");
    require_root();
    ids_are_per_group("podman");
}

// ---------------------------------------------------------------------------------
// Visibility: what is enforced can be seen.

#[test]
fn sandbox_exec_and_doctor_show_the_limits_and_mechanisms() {
    require("bwrap");
    let r = SandboxRoot::new(None);
    r.register("web:small", "small", false, Some(SMALL));
    let (code, out, err) = r.exec("bwrap", "small", "ulimit -a; df -h /tmp");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("memory 256 MiB, 64 processes")
            && err.contains("disk 64 MiB")
            && err.contains("network internet"),
        "sandbox exec prints what it enforces: {err}"
    );
    assert!(out.contains("64M"), "{out}");
    let doctor = r.command(&["doctor"], &[]).output().expect("doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    for needle in [
        "cgroup",
        "RLIMIT_NPROC",
        "seccomp",
        "egress proxy",
        "free under",
    ] {
        assert!(text.contains(needle), "doctor mentions {needle}: {text}");
    }
}

// ---------------------------------------------------------------------------------
// Found by the security review (an attacker inside real sandboxes).

/// A mount checked and then mounted by path can be swapped for a symlink in between by
/// whoever can write its parent: a group's mount inside another group's writable mount
/// is refused, whatever the backend.
fn nested_mounts_are_refused(runtime: &str) {
    let r = SandboxRoot::new(None);
    for d in ["projects/shared/sub", "secret"] {
        std::fs::create_dir_all(r.home.join(d)).expect("mkdir");
    }
    std::fs::write(r.home.join("secret/key"), "not for team").expect("secret");
    std::fs::write(
        r.home.join(".config/nanoclaw/mount-allowlist.json"),
        r#"{"allowedRoots": [{"path": "~/projects", "allowReadWrite": true}], "nonMainReadOnly": false}"#,
    )
    .expect("allowlist");
    r.register(
        "web:main",
        "main",
        true,
        Some(r#"{"additionalMounts": [{"hostPath": "~/projects/shared", "readonly": false}]}"#),
    );
    r.register(
        "web:team",
        "team",
        false,
        Some(r#"{"additionalMounts": [{"hostPath": "~/projects/shared/sub"}]}"#),
    );
    let (code, out, err) = r.exec(runtime, "team", "ls /workspace/extra 2>/dev/null | wc -l");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "0", "[{runtime}] no extra mount: {out}");
    assert!(
        err.contains("which a group's sandboxes may write"),
        "[{runtime}] says why: {err}"
    );
    let out = r.exec_ok(runtime, "main", "ls /workspace/extra");
    assert_eq!(
        out.trim(),
        "shared",
        "[{runtime}] main keeps its own mount: {out}"
    );
}

#[test]
fn bwrap_a_mount_inside_another_groups_writable_mount_is_refused() {
    require("bwrap");
    nested_mounts_are_refused("bwrap");
}

#[test]
fn podman_a_mount_inside_another_groups_writable_mount_is_refused() {
    require("podman");
    nested_mounts_are_refused("podman");
}

/// Global memory is mounted into every sandbox; a socket main leaves there (read-only
/// mounts do not stop `connect`) is removed before any sandbox starts.
#[test]
fn no_socket_in_global_memory_links_two_sandboxes() {
    require("bwrap");
    let r = SandboxRoot::new(None);
    r.register("web:main", "main", true, None);
    r.register("web:team", "team", false, None);
    r.exec_ok(
        "bwrap",
        "main",
        "python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind(\"/workspace/global/relay.sock\")'; mkfifo /workspace/global/pipe; ls /workspace/global",
    );
    let out = r.exec_ok("bwrap", "team", "ls -A /workspace/global");
    assert!(
        !out.contains("relay.sock") && !out.contains("pipe"),
        "removed before team's sandbox started: {out}"
    );
}

/// Killing `sandbox exec` (no clean-up at all) ends the slirp4netns of a `full` sandbox
/// too: it exits when the daemon's end of its exit pipe closes.
#[test]
fn slirp4netns_dies_with_the_process_that_started_it() {
    require("bwrap");
    require("slirp4netns");
    require_root();
    let r = SandboxRoot::new(None);
    r.register("web:main", "main", true, None);
    let exec = r.spawn_exec("bwrap", "main", "echo up > /workspace/group/up; sleep 60");
    let pid = exec.0.as_ref().expect("child").id();
    let deadline = Instant::now() + DEADLINE;
    while !r.root.join("groups/main/up").exists() {
        assert!(Instant::now() < deadline, "the sandbox did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let slirps = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .expect("proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let comm_ok = stat.contains("(slirp4netns)");
                let ppid = stat
                    .rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u32>().ok());
                comm_ok && ppid == Some(pid)
            })
            .collect()
    };
    let mine = slirps();
    assert_eq!(mine.len(), 1, "one slirp4netns for the sandbox");
    let mut child = exec;
    if let Some(c) = child.0.as_mut() {
        c.kill().expect("SIGKILL");
        let _ = c.wait();
    }
    let deadline = Instant::now() + DEADLINE;
    while std::path::Path::new(&format!("/proc/{}", mine[0])).exists() {
        let state = std::fs::read_to_string(format!("/proc/{}/stat", mine[0])).unwrap_or_default();
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slirp4netns outlived the killed exec"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
