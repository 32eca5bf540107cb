//! The `Browser` tool end to end (issue 17): a real Chromium inside a real sandbox,
//! driven by the agent as the fake model asks, against a site served inside the same
//! sandbox (a link, a button that changes the page, a form). The group's profile keeps
//! its cookies across its runs; another group's profile never has them.

mod support;

use std::path::Path;

use nanoclaw::config::{RuntimeKind, Secret, Secrets};
use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Recorded, Reply};
use serde_json::{Value, json};
use support::wait_bot_texts;

const INDEX: &str = r#"<!doctype html><html><head><title>Test home</title></head><body>
<h1 id="greet">Hello</h1>
<script>
  if (document.cookie.includes('seen=1')) document.getElementById('greet').textContent = 'Welcome back';
  else { document.getElementById('greet').textContent = 'First visit'; document.cookie = 'seen=1; max-age=86400; path=/'; }
</script>
<a href="about.html">About us</a>
<button onclick="document.getElementById('status').textContent = 'Changed by the button'">Change it</button>
<p id="status">Not changed</p>
<form action="result.html" method="get"><input name="q" placeholder="Search"><button type="submit">Go</button></form>
</body></html>"#;
const RESULT: &str = r#"<!doctype html><title>Result</title><p id="r"></p>
<script>document.getElementById('r').textContent = 'You searched: ' + new URLSearchParams(location.search).get('q');</script>"#;
const ABOUT: &str = "<!doctype html><title>About</title><p>About page</p>";
const ALERT: &str = "<!doctype html><title>Alert</title><script>alert('hello'); confirm('sure?');</script><p>After the alert</p>";

/// Starts the site inside the sandbox: a Python web server on its own loopback.
fn serve_site() -> Reply {
    Reply::tool(
        "Bash",
        json!({"command": "setsid python3 -m http.server 8765 --bind 127.0.0.1 --directory site \
               >/dev/null 2>&1 < /dev/null & for i in $(seq 50); do \
               python3 -c 'import urllib.request as u; u.urlopen(\"http://127.0.0.1:8765/\")' 2>/dev/null && break; sleep 0.1; done"}),
    )
}

fn browse(action: &str, extra: Value) -> Reply {
    let mut input = json!({"action": action});
    if let (Some(i), Some(e)) = (input.as_object_mut(), extra.as_object()) {
        i.extend(e.clone());
    }
    Reply::tool("Browser", input)
}

/// The text of the tool result the request `r` carries last.
fn result(r: &Recorded) -> String {
    let block = support::last_tool_result(r);
    assert_eq!(block["is_error"], false, "{block}");
    block["content"].as_str().unwrap_or("").to_string()
}

fn register(root: &Path, folder: &str) {
    support::register_web_group(root, folder, None);
    let site = root.join("groups").join(folder).join("site");
    std::fs::create_dir_all(&site).expect("site");
    for (name, html) in [
        ("index.html", INDEX),
        ("result.html", RESULT),
        ("about.html", ABOUT),
        ("alert.html", ALERT),
    ] {
        std::fs::write(site.join(name), html).expect("page");
    }
}

async fn browser_runs(kind: RuntimeKind) {
    let llm = FakeAnthropic::start(vec![
        // Run 1, group `team`.
        serve_site(),
        browse("navigate", json!({"url": "http://127.0.0.1:8765/"})),
        // The browser is running: what listens on the sandbox's TCP ports?
        Reply::tool(
            "Bash",
            json!({"command": "awk '$4 == \"0A\" {print $2}' /proc/net/tcp /proc/net/tcp6 | sort -u"}),
        ),
        browse("click", json!({"ref": 2})),
        browse(
            "type",
            json!({"ref": 3, "text": "hello world", "submit": true}),
        ),
        browse("back", json!({})),
        browse("click", json!({"ref": 1})),
        browse("navigate", json!({"url": "http://127.0.0.1:8765/alert.html"})),
        browse("screenshot", json!({})),
        Reply::text("Browsed."),
        // Run 2, `team` again: its cookie is still there.
        serve_site(),
        browse("navigate", json!({"url": "http://127.0.0.1:8765/"})),
        Reply::text("Back again."),
        // Run 3, group `other`: its own profile, no cookie.
        serve_site(),
        browse("navigate", json!({"url": "http://127.0.0.1:8765/"})),
        Reply::text("Elsewhere."),
    ])
    .await;
    let root = tempfile::tempdir().expect("temp dir");
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    register(root.path(), "team");
    register(root.path(), "other");
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-ant-browser-test")),
        ..Default::default()
    };
    let url = llm.url.clone();
    let d = support::start_sandboxed_daemon_in(root, kind, None, secrets, vec![], move |c| {
        c.anthropic_base_url = url;
        c.idle_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    d.api
        .send("web:team", "me", "Me", "look at the site")
        .await
        .expect("accepted");
    assert_eq!(wait_bot_texts(&d.api, "web:team", 1).await, ["Browsed."]);
    let requests = llm.requests();
    let tools = requests[0].tool_names();
    assert!(tools.iter().any(|t| t == "Browser"), "{tools:?}");

    let home = result(&requests[2]);
    assert!(
        home.contains("Title: Test home") && home.contains("First visit"),
        "{home}"
    );
    for element in [
        "[1] link \"About us\" -> about.html",
        "[2] button \"Change it\"",
        "[3] input[text] \"Search\" name=q placeholder=\"Search\"",
        "[4] button \"Go\"",
    ] {
        assert!(home.contains(element), "{element} in {home}");
    }
    // DevTools goes over pipes: nothing listens but the site's server (127.0.0.1:8765)
    // and the egress bridge of the `internet` policy (127.0.0.1:3128); a DevTools port
    // would be open to the host when a sandbox shares its network.
    let listening = result(&requests[3]);
    assert_eq!(
        listening.lines().collect::<Vec<_>>(),
        ["0100007F:0C38", "0100007F:223D"],
        "{listening}"
    );
    let clicked = result(&requests[4]);
    assert!(clicked.contains("Changed by the button"), "{clicked}");
    let searched = result(&requests[5]);
    assert!(
        searched.contains("Title: Result") && searched.contains("You searched: hello world"),
        "{searched}"
    );
    let back = result(&requests[6]);
    assert!(back.contains("Title: Test home"), "{back}");
    let about = result(&requests[7]);
    assert!(
        about.contains("About page") && about.contains("about.html"),
        "{about}"
    );
    // A page's alert and confirm are dismissed; they do not block the tool.
    let alerted = result(&requests[8]);
    assert!(alerted.contains("After the alert"), "{alerted}");
    let shot = result(&requests[9]);
    let saved = shot
        .split_whitespace()
        .find(|w| w.starts_with("/workspace/group/screenshots/"))
        .unwrap_or_else(|| panic!("no path in {shot}"));
    let png = std::fs::read(
        d.root()
            .join("groups/team")
            .join(saved.trim_start_matches("/workspace/group/")),
    )
    .expect("the screenshot is in the group folder");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    support::wait_first_run(d.root(), "team").await;

    d.api
        .send("web:team", "me", "Me", "again")
        .await
        .expect("accepted");
    assert_eq!(
        wait_bot_texts(&d.api, "web:team", 2).await,
        ["Browsed.", "Back again."]
    );
    let again = result(&llm.requests()[12]);
    assert!(
        again.contains("Welcome back"),
        "the group's cookie persisted: {again}"
    );

    d.api
        .send("web:other", "me", "Me", "and you")
        .await
        .expect("accepted");
    assert_eq!(wait_bot_texts(&d.api, "web:other", 1).await, ["Elsewhere."]);
    let other = result(&llm.requests()[15]);
    assert!(
        other.contains("First visit"),
        "another group has no cookie: {other}"
    );
    assert!(d.root().join("groups/team/.browser-profile").is_dir());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_agents_browse_with_the_hosts_chromium_and_a_profile_per_group() {
    browser_runs(RuntimeKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_agents_browse_with_the_images_chromium_and_a_profile_per_group() {
    browser_runs(RuntimeKind::Podman).await;
}
