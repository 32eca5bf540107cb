//! The HTTP API's answers to bad input: clear 400s, 413 for oversized bodies, JSON 404s,
//! and nothing stored when a request is refused.

mod support;

use support::{ScriptedRunner, start_daemon};

#[tokio::test]
async fn bad_bodies_get_400_saying_what_is_wrong_and_store_nothing() {
    let d = start_daemon(ScriptedRunner::new(vec![])).await;
    let cases = [
        ("not json", "JSON object"),
        ("[]", "JSON object"),
        (
            r#"{"chat_jid":"web:main","sender":"u","sender_name":"U"}"#,
            "missing field `text`",
        ),
        (
            r#"{"chat_jid":"web:main","sender":"u","sender_name":"U","text":5}"#,
            "invalid type",
        ),
        (
            r#"{"chat_jid":"tg:1","sender":"u","sender_name":"U","text":"hi"}"#,
            "only web: chats",
        ),
        (
            r#"{"chat_jid":"web:","sender":"u","sender_name":"U","text":"hi"}"#,
            "1 to 128",
        ),
        (
            r#"{"chat_jid":"web:main","sender":"","sender_name":"U","text":"hi"}"#,
            "`sender` must not be empty",
        ),
        (
            r#"{"chat_jid":"web:main","sender":"u","sender_name":"U","text":"   "}"#,
            "`text` must not be empty",
        ),
        (
            r#"{"chat_jid":"web:main","sender":"u","sender_name":"a\u0007b","text":"x"}"#,
            "control characters",
        ),
    ];
    for (body, needle) in cases {
        let (status, v) = d.api.post_raw("/api/messages", body).await.expect("post");
        assert_eq!(status, 400, "{body}: {v}");
        let error = v["error"].as_str().expect("error message");
        assert!(error.contains(needle), "{body}: {error}");
    }
    let big = format!(
        r#"{{"chat_jid":"web:main","sender":"u","sender_name":"U","text":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let (status, v) = d.api.post_raw("/api/messages", big).await.expect("post");
    assert_eq!(status, 413, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("larger than")),
        "{v}"
    );

    assert!(
        d.api
            .messages("web:main")
            .await
            .expect("messages")
            .is_empty(),
        "nothing stored"
    );
    d.stop().await;
}

#[tokio::test]
async fn unknown_routes_get_json_404_and_views_answer() {
    let d = start_daemon(ScriptedRunner::new(vec![])).await;
    let (status, v) = d.api.get("/api/nope").await.expect("get");
    assert_eq!(status, 404);
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("/api/nope")),
        "{v}"
    );

    let (status, tasks) = d.api.get("/api/tasks").await.expect("tasks");
    assert_eq!((status, tasks), (200, serde_json::json!([])));
    let (status, v) = d.api.get("/api/status").await.expect("status");
    assert_eq!(status, 200);
    assert_eq!(v["assistant_name"], "Andy");
    assert_eq!(v["timezone"], "Europe/Berlin");
    assert_eq!(v["queue"]["max_concurrent"], 5);

    let resp = d
        .api
        .client()
        .get(format!("{}/metrics", d.api.base))
        .bearer_auth(&d.api.token)
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    assert!(
        text.contains("# TYPE nanoclaw_runs_started_total counter"),
        "{text}"
    );
    assert!(text.contains("nanoclaw_runs_active 0"), "{text}");
    d.stop().await;
}
