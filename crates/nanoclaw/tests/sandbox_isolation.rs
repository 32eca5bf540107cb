//! SPEC §7, §8, §15, proven from inside real sandboxes, on bubblewrap and on podman:
//! what a main and a non-main sandbox can see, who they run as, that the real API key is
//! nowhere inside, and the mount allowlist rules.
//!
//! Everything runs through `nanoclaw sandbox exec`, which builds sandboxes exactly as
//! agent runs do. The podman test builds the agent image on first use (debootstrap when
//! no registry is reachable), so it needs podman, runc and debootstrap installed.

mod support;

use std::path::PathBuf;

use nanoclaw::store::{RegisteredGroup, Store};

const REAL_KEY: &str = "sk-ant-api03-REALKEY-must-never-enter-a-sandbox-0123456789";

struct Root {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
}

fn group(jid: &str, folder: &str, main: bool, container_config: Option<&str>) -> RegisteredGroup {
    RegisteredGroup {
        jid: jid.into(),
        name: folder.into(),
        folder: folder.into(),
        trigger_pattern: "@Andy".into(),
        added_at: nanoclaw::clock::now(),
        container_config: container_config.map(str::to_string),
        requires_trigger: !main,
        is_main: main,
    }
}

/// A root with groups `main`, `team`, `other`, secrets in `.env`, markers in every place
/// a non-main sandbox must not see, and a home with a mount allowlist and test folders.
fn setup() -> Root {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let home = dir.path().join("home");
    for d in [
        "projects/rw",
        "projects/credentials-dir",
        "readonly/data",
        ".ssh",
        "elsewhere",
        ".config/nanoclaw",
    ] {
        std::fs::create_dir_all(home.join(d)).expect("mkdir");
    }
    std::os::unix::fs::symlink(home.join(".ssh"), home.join("projects/sneaky")).expect("symlink");
    std::fs::write(home.join(".ssh/id_ed25519"), "marker-ssh-key").expect("ssh key");
    std::fs::write(
        home.join(".config/nanoclaw/mount-allowlist.json"),
        r#"{"allowedRoots": [{"path": "~/projects", "allowReadWrite": true},
                             {"path": "~/readonly", "allowReadWrite": false}],
            "blockedPatterns": [], "nonMainReadOnly": true}"#,
    )
    .expect("allowlist");
    std::fs::write(
        home.join(".config/nanoclaw/sender-allowlist.json"),
        r#"{"default": {"allow": "*", "mode": "trigger"}}"#,
    )
    .expect("sender allowlist");

    std::fs::create_dir_all(root.join("store")).expect("store dir");
    let store = Store::open(&root.join("store/messages.db"), "Andy").expect("store");
    if nanoclaw::sandbox::Identity::daemon_is_root() {
        // As root, main's sandboxes run as main's own host id: a folder they may write
        // must be theirs.
        let id = store
            .sandbox_host_id("main", support::SANDBOX_ID_BASE)
            .expect("main's id");
        std::os::unix::fs::chown(home.join("projects/rw"), Some(id), Some(id)).expect("chown");
    }
    let extra = |mounts: &str| format!(r#"{{"additionalMounts": {mounts}}}"#);
    let main_mounts = extra(
        r#"[{"hostPath": "~/projects/rw", "readonly": false},
            {"hostPath": "~/readonly/data", "containerPath": "ro-data", "readonly": false},
            {"hostPath": "~/projects/sneaky"},
            {"hostPath": "~/projects/credentials-dir"},
            {"hostPath": "~/elsewhere"},
            {"hostPath": "~/projects/rw", "containerPath": "../escape"},
            {"hostPath": "~/projects/rw", "containerPath": "/abs"},
            {"hostPath": "~/projects/missing"}]"#,
    );
    let team_mounts = extra(r#"[{"hostPath": "~/projects/rw", "readonly": false}]"#);
    store
        .register_group(&group("web:main", "main", true, Some(&main_mounts)))
        .expect("main");
    store
        .register_group(&group("tg:1", "team", false, Some(&team_mounts)))
        .expect("team");
    store
        .register_group(&group("tg:2", "other", false, None))
        .expect("other");
    store
        .register_group(&group(
            "tg:3",
            "offline",
            false,
            Some(r#"{"network": "none"}"#),
        ))
        .expect("offline");
    drop(store);

    std::fs::write(root.join(".env"), format!("ANTHROPIC_API_KEY={REAL_KEY}\n")).expect(".env");
    std::fs::create_dir_all(root.join("store/auth")).expect("auth");
    std::fs::write(root.join("store/auth/creds.json"), "marker-channel-auth").expect("auth file");
    for (dir, file) in [
        ("groups/other", "marker-other-group"),
        ("data/sessions/other/.claude", "marker-other-session"),
        ("data/ipc/other", "marker-other-ipc"),
        ("groups/global", "CLAUDE.md"),
    ] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        std::fs::write(root.join(dir).join(file), "x").expect("marker");
    }
    Root {
        _dir: dir,
        root,
        home,
    }
}

/// Runs `script` with `sh -c` in `group`'s sandbox; returns (exit code, stdout, stderr).
fn exec(r: &Root, runtime: &str, group: &str, script: &str) -> (i32, String, String) {
    let out = std::process::Command::new(support::nanoclaw_bin())
        .args(["sandbox", "exec", "--root"])
        .arg(&r.root)
        .args([
            "--group",
            group,
            "--runtime",
            runtime,
            "--",
            "sh",
            "-c",
            script,
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &r.home)
        .env("TZ", "Europe/Berlin")
        .env("ANTHROPIC_API_KEY", REAL_KEY)
        .output()
        .expect("nanoclaw sandbox exec runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(r: &Root, runtime: &str, group: &str, script: &str) -> String {
    let (code, out, err) = exec(r, runtime, group, script);
    assert_eq!(
        code, 0,
        "[{runtime}/{group}] `{script}` failed:\n{out}\n{err}"
    );
    out
}

fn check_identity(r: &Root, runtime: &str, group: &str) {
    let out = ok(
        r,
        runtime,
        group,
        "id -u; id -g; grep -E '^(CapEff|NoNewPrivs):' /proc/self/status; echo HOME=$HOME",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000", "[{runtime}/{group}] uid: {out}");
    assert_eq!(lines[1], "1000", "[{runtime}/{group}] gid: {out}");
    assert!(
        out.contains("CapEff:\t0000000000000000"),
        "[{runtime}/{group}] {out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "[{runtime}/{group}] {out}");
    assert!(out.contains("HOME=/home/node"), "[{runtime}/{group}] {out}");
    if runtime == "bwrap" {
        // Our seccomp filter: no new (user) namespaces, so no capability set to play with.
        let (code, _, err) = exec(r, runtime, group, "unshare -U -r true");
        assert_ne!(code, 0, "[{runtime}/{group}] unshare must fail: {err}");
    }
}

/// The real key in no environment variable, no process environment or command line,
/// and no file the sandbox can read outside the system directories. The key is put
/// together inside the shell, so the probe's own command line never contains it.
fn check_no_real_key(r: &Root, runtime: &str, group: &str) {
    let (head, tail) = REAL_KEY.split_at(20);
    let script = format!(
        "K='{head}''{tail}';          env | while IFS= read -r l; do case \"$l\" in *\"$K\"*) echo hit;; esac; done | wc -l;          for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do            c=$(tr '\\0' ' ' < \"$f\" 2>/dev/null); case \"$c\" in *\"$K\"*) echo \"$f\";; esac;          done | wc -l;          printf '%s\\n' \"$K\" | grep -rslF -f - /workspace /home /tmp /etc /opt /run /var /root /srv 2>/dev/null | wc -l;          printf '%s' \"$ANTHROPIC_API_KEY\" | wc -c; t=\"$ANTHROPIC_API_KEY\"; for f in /proc/[0-9]*/cmdline; do c=$(tr '\\0' ' ' < \"$f\" 2>/dev/null); case \"$c\" in *\"$t\"*) echo \"$f\";; esac; done | wc -l"
    );
    let (_, out, err) = exec(r, runtime, group, &script);
    let counts: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        counts.len(),
        5,
        "[{runtime}/{group}] probe output: {out} {err}"
    );
    assert_eq!(
        &counts[..3],
        ["0", "0", "0"],
        "[{runtime}/{group}] key visible: {out} {err}"
    );
    assert_eq!(
        counts[3], "61",
        "[{runtime}/{group}] a per-run token (nanoclaw-run- and 48 hex) stands in for the key"
    );
    assert_eq!(
        counts[4], "0",
        "[{runtime}/{group}] the run token is on no command line: {out}"
    );
}

fn run_isolation_suite(runtime: &str) {
    let r = setup();

    // Non-main: its own folders, nothing else.
    check_identity(&r, runtime, "team");
    check_no_real_key(&r, runtime, "team");
    ok(
        &r,
        runtime,
        "team",
        "echo from-team > /workspace/group/written.txt",
    );
    assert_eq!(
        std::fs::read_to_string(r.root.join("groups/team/written.txt")).expect("file on host"),
        "from-team\n"
    );
    ok(
        &r,
        runtime,
        "team",
        "touch /workspace/ipc/messages/m.json /home/node/.claude/s.json",
    );
    assert!(r.root.join("data/ipc/team/messages/m.json").exists());
    assert!(r.root.join("data/sessions/team/.claude/s.json").exists());
    let (code, _, _) = exec(&r, runtime, "team", "touch /workspace/global/nope");
    assert_ne!(
        code, 0,
        "[{runtime}] global memory is read-only for non-main"
    );
    ok(&r, runtime, "team", "test -f /workspace/global/CLAUDE.md");
    let visible = ok(
        &r,
        runtime,
        "team",
        "test -e /workspace/project && echo PROJECT; \
         find / \\( -path /proc -o -path /sys -o -path /dev -o -path /usr \\) -prune -o \
           \\( -name 'marker-*' -o -name messages.db -o -name .env -o -name '*allowlist*' -o -name id_ed25519 -o -name http-token \\) -print 2>/dev/null; true",
    );
    assert!(
        visible.trim().is_empty(),
        "[{runtime}] a non-main sandbox sees: {visible}"
    );

    // Main: the project read-only with secrets shadowed, global memory writable.
    check_identity(&r, runtime, "main");
    check_no_real_key(&r, runtime, "main");
    let out = ok(
        &r,
        runtime,
        "main",
        "test -d /workspace/project/groups && echo PROJECT; \
         wc -c < /workspace/project/.env; \
         ls -A /workspace/project/store/auth 2>/dev/null | wc -l; \
         wc -c < /workspace/project/data/http-token 2>/dev/null || echo no-token; \
         touch /workspace/project/x 2>/dev/null && echo PROJECT-WRITABLE; \
         touch /workspace/global/from-main && echo GLOBAL-OK; \
         test -r /workspace/project/store/messages.db && echo STORE-READABLE",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "PROJECT", "[{runtime}] {out}");
    assert_eq!(
        lines[1].trim(),
        "0",
        "[{runtime}] .env is shadowed by an empty file: {out}"
    );
    assert_eq!(
        lines[2].trim(),
        "0",
        "[{runtime}] store/auth is hidden: {out}"
    );
    assert!(
        ["0", "no-token"].contains(&lines[3].trim()),
        "[{runtime}] http-token hidden: {out}"
    );
    assert!(
        !out.contains("PROJECT-WRITABLE"),
        "[{runtime}] the project is read-only: {out}"
    );
    assert!(
        out.contains("GLOBAL-OK"),
        "[{runtime}] main writes global memory: {out}"
    );
    assert!(
        out.contains("STORE-READABLE"),
        "[{runtime}] main reads the store: {out}"
    );
    assert!(r.root.join("groups/global/from-main").exists());

    // Additional mounts.
    let (code, out, err) = exec(
        &r,
        runtime,
        "main",
        "ls /workspace/extra; echo rw > /workspace/extra/rw/main.txt && echo RW-OK; \
         touch /workspace/extra/ro-data/x 2>/dev/null && echo RO-WRITABLE; true",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines()
            .take_while(|l| !l.starts_with("RW"))
            .collect::<Vec<_>>(),
        ["ro-data", "rw"],
        "[{runtime}] only the two valid mounts appear: {out}"
    );
    assert!(
        out.contains("RW-OK"),
        "[{runtime}] allowed read-write mount: {out}"
    );
    assert!(
        !out.contains("RO-WRITABLE"),
        "[{runtime}] a root without allowReadWrite forces read-only"
    );
    assert_eq!(
        std::fs::read_to_string(r.home.join("projects/rw/main.txt")).expect("written"),
        "rw\n"
    );
    for reason in [
        "matches the blocked pattern \".ssh\"",
        "matches the blocked pattern \"credentials\"",
        "not under any allowed root",
        "may not contain `..`",
        "must be relative",
        "does not exist",
    ] {
        assert!(
            err.contains(reason),
            "[{runtime}] rejection {reason:?} reported: {err}"
        );
    }
    let (_, out, _) = exec(
        &r,
        runtime,
        "team",
        "test -r /workspace/extra/rw && echo SEEN; touch /workspace/extra/rw/t 2>/dev/null && echo WROTE; true",
    );
    assert!(
        out.contains("SEEN") && !out.contains("WROTE"),
        "[{runtime}] nonMainReadOnly: {out}"
    );

    // Network policy: `none` and `internet` (the non-main default) leave only the
    // loopback interface; `full` (main's default) has more.
    let interfaces = |group: &str| -> Vec<String> {
        ok(
            &r,
            runtime,
            group,
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        )
        .lines()
        .map(str::to_string)
        .collect()
    };
    assert_eq!(interfaces("offline"), ["lo"], "[{runtime}] network none");
    assert_eq!(interfaces("team"), ["lo"], "[{runtime}] network internet");
    assert!(
        interfaces("main").iter().any(|i| i != "lo"),
        "[{runtime}] network full"
    );
    // Neither is the host's network: services on the host's loopback stay out of reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    for group in ["main", "team"] {
        let reach = ok(
            &r,
            runtime,
            group,
            &format!("curl -s -m 5 -o /dev/null http://127.0.0.1:{port}/; echo $?"),
        );
        assert_eq!(
            reach.trim(),
            "7",
            "[{runtime}/{group}] connecting to the host's loopback must fail"
        );
    }
    drop(listener);

    // Without a valid allowlist, every additional mount is refused.
    let allowlist = r.home.join(".config/nanoclaw/mount-allowlist.json");
    for (content, reason) in [
        (None, "no mount allowlist"),
        (Some("{ not json"), "is invalid"),
    ] {
        match content {
            None => std::fs::remove_file(&allowlist).expect("remove"),
            Some(text) => std::fs::write(&allowlist, text).expect("write"),
        }
        let (code, out, err) = exec(
            &r,
            runtime,
            "main",
            "ls /workspace/extra 2>/dev/null | wc -l",
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), "0", "[{runtime}] no extra mounts: {out}");
        assert!(err.contains(reason), "[{runtime}] says why: {err}");
    }
}

fn require(tool: &str) {
    assert!(
        nanoclaw::sandbox::which(tool).is_some(),
        "this test needs `{tool}` installed (scripts/setup.sh installs it)"
    );
}

#[test]
fn bwrap_sandboxes_see_only_what_they_were_given() {
    require("bwrap");
    run_isolation_suite("bwrap");
}

#[test]
fn podman_sandboxes_see_only_what_they_were_given() {
    require("podman");
    run_isolation_suite("podman");
}

/// As an ordinary user, uid 1000 inside a bwrap sandbox is that user outside (a user
/// namespace): same isolation, files owned by the user.
#[test]
fn bwrap_sandboxes_of_an_ordinary_user() {
    require("bwrap");
    require("setpriv");
    assert!(
        nanoclaw::sandbox::Identity::daemon_is_root(),
        "this test switches to an unprivileged user, so it runs as root (as CI does)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path();
    std::fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let (uid, gid) = (65534u32, 65534u32);
    std::os::unix::fs::chown(base, Some(uid), Some(gid)).expect("chown");
    let as_user = |args: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
            ])
            .arg(support::nanoclaw_bin())
            .arg("--root")
            .arg(base.join("root"))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", base)
            .env("TZ", "UTC")
            .output()
            .expect("nanoclaw runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (jid, folder) in [("tg:1", "team"), ("tg:2", "other")] {
        let (ok, _, err) = as_user(&[
            "groups", "add", "--jid", jid, "--name", folder, "--folder", folder,
        ]);
        assert!(ok, "{err}");
    }
    std::fs::write(base.join("root/groups/other/marker-other-group"), "x").expect("marker");
    let script = "id -u; grep -E '^(CapEff|NoNewPrivs):' /proc/self/status; echo x > /workspace/group/f; \
                  find / \\( -path /proc -o -path /sys -o -path /dev -o -path /usr \\) -prune -o -name 'marker-*' -print 2>/dev/null; \
                  unshare -U true 2>/dev/null && echo USERNS; true";
    let (ok, out, err) = as_user(&[
        "sandbox",
        "exec",
        "--group",
        "team",
        "--runtime",
        "bwrap",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(ok, "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000", "{out}");
    assert!(
        out.contains("CapEff:\t0000000000000000") && out.contains("NoNewPrivs:\t1"),
        "{out}"
    );
    assert!(!out.contains("marker-") && !out.contains("USERNS"), "{out}");
    let meta = std::fs::metadata(base.join("root/groups/team/f")).expect("file written");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        uid,
        "the user's file, not root's"
    );
}
