//! The real `nanoclaw` binary: a fresh root, the token, auth, a clean SIGTERM, one
//! daemon per root, `status`, and `chat` against a live daemon.

mod support;

use std::os::unix::fs::PermissionsExt;

use nanoclaw_test_support::DEADLINE;
use support::{BinaryDaemon, ScriptedRunner, Step, cli, start_daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_root_creates_layout_token_and_main_group_and_guards_every_route() {
    let root = tempfile::tempdir().expect("temp dir");
    let d = BinaryDaemon::spawn(root.path(), &[]).await;

    for dir in [
        "store",
        "store/auth",
        "groups/global",
        "groups/main/logs",
        "data/ipc/errors",
        "data/ipc/main/input",
        "data/sessions/main/.claude",
        "logs",
    ] {
        assert!(root.path().join(dir).is_dir(), "{dir} exists");
    }
    assert!(root.path().join("store/messages.db").is_file());
    let token = root.path().join("data/http-token");
    assert_eq!(
        std::fs::metadata(&token)
            .expect("token")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(root.path().join("store/auth"))
            .expect("auth dir")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    let (status, groups) = d.api.get("/api/groups").await.expect("groups");
    assert_eq!(status, 200);
    let groups = groups.as_array().expect("array");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["jid"], "web:main");
    assert_eq!(groups[0]["folder"], "main");
    assert_eq!(groups[0]["is_main"], true);

    let client = nanoclaw::tls::client().build().expect("client");
    let base = format!("http://127.0.0.1:{}", d.port);
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200, "healthz needs no token");
    assert_eq!(
        health.json::<serde_json::Value>().await.expect("json"),
        serde_json::json!({"status": "ok"})
    );

    let routes = [
        ("GET", "/api/groups"),
        ("GET", "/api/tasks"),
        ("GET", "/api/status"),
        ("GET", "/api/events"),
        ("GET", "/api/chats/web:main/messages"),
        ("POST", "/api/messages"),
        ("GET", "/metrics"),
    ];
    for (method, path) in routes {
        for auth in [
            None,
            Some("Bearer wrong-token-0123456789"),
            Some("Basic abc"),
        ] {
            let mut req = client.request(method.parse().expect("method"), format!("{base}{path}"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.expect("request");
            assert_eq!(resp.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap_or("")),
                Some("Bearer")
            );
            let body: serde_json::Value = resp.json().await.expect("json error");
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("data/http-token")),
                "{body}"
            );
        }
    }

    // One daemon per root.
    let (ok, _, err) = cli(root.path(), &["run"]).await;
    assert!(
        !ok && err.contains("already running"),
        "second daemon refused: {err}"
    );

    let (ok, out, _) = cli(root.path(), &["status"]).await;
    assert!(ok && out.contains("is running"), "{out}");

    let status = d.terminate().await;
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        !root.path().join("data/daemon.json").exists(),
        "daemon info removed on exit"
    );

    let (ok, out, _) = cli(root.path(), &["status"]).await;
    assert!(ok && out.contains("not running"), "{out}");

    // The token survives restarts.
    let before = std::fs::read_to_string(&token).expect("token");
    let d = BinaryDaemon::spawn(root.path(), &[]).await;
    assert_eq!(std::fs::read_to_string(&token).expect("token"), before);
    assert!(d.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_working_sandbox_the_daemon_says_so_instead_of_pretending() {
    let root = tempfile::tempdir().expect("temp dir");
    // No Docker engine runs here, so this backend cannot work.
    let env = [
        ("NANOCLAW_RETRY_BASE_MS", "10"),
        ("CONTAINER_RUNTIME", "docker"),
    ];
    let d = BinaryDaemon::spawn(root.path(), &env).await;
    d.api
        .send("web:main", "me", "Me", "hello")
        .await
        .expect("accepted");
    let texts = support::wait_bot_texts(&d.api, "web:main", 1).await;
    assert!(
        texts[0].contains("could not answer")
            && texts[0].contains("CONTAINER_RUNTIME=docker does not work here"),
        "{texts:?}"
    );
    let (_, status) = d.api.get("/api/status").await.expect("status");
    assert_eq!(status["runner"]["available"], false);
    assert!(d.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_chat_sends_a_line_and_prints_the_reply() {
    let runner = ScriptedRunner::new(vec![Step::Reply(vec![
        "<internal>x</internal>Hi from Andy".into(),
    ])]);
    let d = start_daemon(runner.clone()).await;
    let mut child = tokio::process::Command::new(support::nanoclaw_bin())
        .args(["chat", "--name", "Tester", "--root"])
        .arg(d.root())
        .envs(support::test_env(d.root()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chat starts");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"hello there\n").await.expect("write");
    }
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("chat exits after the reply")
        .expect("chat output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Andy: Hi from Andy"), "{stdout}");
    let runs = runner.runs();
    assert!(
        runs[0].prompt.contains("sender=\"Tester\"") && runs[0].prompt.contains(">hello there<")
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_which_sandbox_backends_work_and_why_not() {
    let root = tempfile::tempdir().expect("temp dir");
    let (ok, _, err) = cli(
        root.path(),
        &[
            "groups", "add", "--jid", "web:x", "--name", "X", "--folder", "x",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (_, out, _) = cli(root.path(), &["doctor"]).await;
    for backend in ["docker", "podman", "bwrap"] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(backend))
            .unwrap_or_else(|| panic!("no {backend} line in:\n{out}"));
        assert!(line.starts_with("ok") || line.starts_with("warn"), "{line}");
        if line.starts_with("warn") {
            assert!(
                line.len() > 20,
                "a backend that does not work says why: {line}"
            );
        }
    }
    assert!(out.lines().any(|l| l.starts_with("ok    bwrap")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("ok    sandbox")), "{out}");
    // Where Claude Code comes from for the claude-code harness: the image's copy for
    // podman, the host's for bwrap.
    let podman = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("podman"))
        .unwrap_or_default();
    if podman.contains("image holds this agent") {
        assert!(podman.contains("and Claude Code 2.1.197"), "{podman}");
    }
    let claude = support::claude_code_binary();
    std::fs::write(
        root.path().join(".env"),
        format!("CLAUDE_CODE_PATH={}\n", claude.display()),
    )
    .expect(".env");
    let (_, out, _) = cli(root.path(), &["doctor"]).await;
    let expected = format!("Claude Code harness: {} (2.1.197)", claude.display());
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains(&expected)),
        "{out}"
    );
    std::fs::write(
        root.path().join(".env"),
        "CLAUDE_CODE_PATH=/nonexistent/claude\n",
    )
    .expect(".env");
    let (_, out, _) = cli(root.path(), &["doctor"]).await;
    assert!(
        out.lines().any(|l| l.starts_with("warn")
            && l.contains(
                "Claude Code harness: CLAUDE_CODE_PATH=/nonexistent/claude is not a file"
            )),
        "{out}"
    );
}

/// SPEC §14 sign-in: `nanoclaw ui --print` prints a one-time link; its code becomes an
/// HttpOnly, SameSite=Strict session cookie once, within its lifetime; the cookie works
/// for reading, and for changes only from the daemon's own origin; requests for another
/// Host are refused (DNS rebinding); no CORS headers, ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_signs_in_once_and_refuses_foreign_hosts_and_origins() {
    let root = tempfile::tempdir().expect("temp dir");
    let d = BinaryDaemon::spawn(root.path(), &[]).await;
    let base = format!("http://127.0.0.1:{}", d.port);
    let origin = base.clone();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // The app itself: served without a session, with a strict policy, all from here.
    let page = http.get(format!("{base}/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.expect("html");
    assert!(
        html.contains("/assets/app.js") && !html.contains("http"),
        "no remote assets: {html}"
    );
    for asset in ["/assets/app.js", "/assets/app.css", "/login"] {
        let r = http
            .get(format!("{base}{asset}"))
            .send()
            .await
            .expect("asset");
        assert_eq!(r.status(), 200, "{asset}");
    }

    // Another Host is refused, whatever the credentials.
    for path in ["/", "/healthz", "/api/status"] {
        let r = http
            .get(format!("{base}{path}"))
            .header("host", format!("rebind.example:{}", d.port))
            .bearer_auth(&d.api.token)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 421, "{path}");
    }

    // Two Host headers, or an absolute-form target for another host: refused too.
    for raw in [
        format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            p = d.port
        ),
        format!(
            "GET http://evil.example/healthz HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nConnection: close\r\n\r\n",
            p = d.port
        ),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
            .await
            .expect("connect");
        sock.write_all(raw.as_bytes()).await.expect("send");
        let mut answer = String::new();
        let _ = sock.read_to_string(&mut answer).await;
        assert!(
            answer.starts_with("HTTP/1.1 421") || answer.starts_with("HTTP/1.1 400"),
            "{raw:?}: {answer}"
        );
    }

    // `nanoclaw ui` talks to the daemon directly even when a proxy is configured (the
    // proxy would see the bearer token): this one does not even listen.
    let out = std::process::Command::new(support::nanoclaw_bin())
        .args(["ui", "--print", "--root"])
        .arg(root.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(support::test_env(root.path()))
        .env("http_proxy", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .output()
        .expect("nanoclaw ui");
    let (ok, out, err) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(ok, "{out}{err}");
    let link = out.lines().next().unwrap_or_default().to_string();
    let prefix = format!("{base}/login#");
    assert!(link.starts_with(&prefix), "{out}");
    let code = link.trim_start_matches(&prefix).to_string();
    let sign_in = |code: String, origin: Option<String>| {
        let mut r = http
            .post(format!("{base}/api/session"))
            .json(&serde_json::json!({ "code": code }));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    // From another site, the code is not taken (and stays usable).
    let r = sign_in(code.clone(), Some("http://evil.example".into()))
        .await
        .expect("sign in");
    assert_eq!(r.status(), 403);
    let r = sign_in(code.clone(), Some(origin.clone()))
        .await
        .expect("sign in");
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        cookie.starts_with("nanoclaw_session=")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap_or_default().to_string();
    let secret = r.json::<serde_json::Value>().await.expect("JSON")["session"]
        .as_str()
        .expect("the page's secret")
        .to_string();
    let r = sign_in(code, Some(origin.clone())).await.expect("again");
    assert_eq!(r.status(), 401, "a link works once");
    assert!(r.text().await.unwrap_or_default().contains("nanoclaw ui"));

    // The browser sends the cookie to every port of 127.0.0.1, so the cookie alone (or
    // with a wrong secret) opens nothing; the secret lives in this origin's storage.
    for wrong in [None, Some("0".repeat(64))] {
        let mut r = http
            .get(format!("{base}/api/chats"))
            .header("cookie", &session);
        if let Some(w) = &wrong {
            r = r.header("x-nanoclaw-session", w);
        }
        assert_eq!(r.send().await.expect("chats").status(), 401, "{wrong:?}");
    }
    // A cookie another local page tossed beside ours does not lock the user out.
    let tossed = format!("nanoclaw_session=tossed; {session}");
    let r = http
        .get(format!("{base}/api/chats"))
        .header("cookie", &tossed)
        .header("x-nanoclaw-session", &secret)
        .send()
        .await
        .expect("chats");
    assert_eq!(r.status(), 200);
    // With both, it reads; it changes things only from this origin.
    let r = http
        .get(format!("{base}/api/chats"))
        .header("cookie", &session)
        .header("x-nanoclaw-session", &secret)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("chats");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "no CORS: {:?}",
        r.headers()
    );
    let message = serde_json::json!({"chat_jid": "web:main", "sender": "web-ui", "sender_name": "You", "text": "from the page"});
    for foreign in [None, Some("http://evil.example"), Some("null")] {
        let mut r = http
            .post(format!("{base}/api/messages"))
            .header("cookie", &session)
            .header("x-nanoclaw-session", &secret)
            .json(&message);
        if let Some(o) = foreign {
            r = r.header("origin", o);
        }
        let r = r.send().await.expect("post");
        assert_eq!(r.status(), 403, "{foreign:?}");
    }
    assert!(
        d.api
            .messages("web:main")
            .await
            .expect("messages")
            .is_empty(),
        "nothing stored from a cross-site request"
    );
    let r = http
        .post(format!("{base}/api/messages"))
        .header("cookie", &session)
        .header("x-nanoclaw-session", &secret)
        .header("origin", &origin)
        .json(&message)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    // Codes are minted with the bearer token only, never with the cookie.
    let r = http
        .post(format!("{base}/api/login-codes"))
        .header("cookie", &session)
        .header("x-nanoclaw-session", &secret)
        .header("origin", &origin)
        .send()
        .await
        .expect("codes");
    assert_eq!(r.status(), 401);
    // An open event stream ends with the session.
    let mut events = http
        .get(format!("{base}/api/events"))
        .header("cookie", &session)
        .header("x-nanoclaw-session", &secret)
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), 200);
    // Signed out, the session is worth nothing.
    let r = http
        .post(format!("{base}/api/logout"))
        .header("cookie", &session)
        .header("x-nanoclaw-session", &secret)
        .header("origin", &origin)
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/chats"))
        .header("cookie", &session)
        .header("x-nanoclaw-session", &secret)
        .send()
        .await
        .expect("chats");
    assert_eq!(r.status(), 401);
    // A reply after the logout ends the stream instead of reaching it.
    d.api
        .send("web:main", "me", "Me", "after logout")
        .await
        .expect("accepted");
    let mut seen = String::new();
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(chunk)) = events.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");
    assert!(
        !seen.contains("data:"),
        "nothing delivered after the logout: {seen}"
    );
    d.terminate().await;
}
